//! cloudflared's side of a tunnel or connector: its token Secret, and the
//! deletion of its Deployment and Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::error::Error;
use super::plan::{TOKEN_SECRET_KEY, TUNNEL_ID_ANNOTATION};
use crate::providers::cloudflare as api;

/// The field manager of knit's server-side applies.
pub(super) const MANAGER: &str = "knit";

/// The token Secret `name` beside a cloudflared Deployment. `fetch` (a
/// token request, lazy like every future) runs only when the Secret is
/// missing or holds another tunnel's token. The token never reaches a log
/// or a plugin.
pub(super) async fn ensure_token_secret(
    kube: &Client,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    tunnel_id: &str,
    owner: &OwnerReference,
    fetch: impl std::future::Future<Output = Result<api::TunnelToken, api::Error>>,
) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(kube.clone(), namespace);
    if let Some(existing) = secrets.get_opt(name).await?
        && existing
            .annotations()
            .get(TUNNEL_ID_ANNOTATION)
            .map(String::as_str)
            == Some(tunnel_id)
        && existing
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(TOKEN_SECRET_KEY))
    {
        return Ok(());
    }
    let token = fetch.await?;
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": { TUNNEL_ID_ANNOTATION: tunnel_id },
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "stringData": { TOKEN_SECRET_KEY: token.expose() },
    });
    secrets
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Deletes a cloudflared Deployment (its pods first, so the tunnel's
/// connections end) and its token Secret, both named `name`; gone is fine.
pub(super) async fn delete_workload(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let ignore_missing = |result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    };
    ignore_missing(
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .delete(name, &DeleteParams::foreground())
            .await
            .map(|_| ()),
    )?;
    ignore_missing(
        Api::<Secret>::namespaced(client.clone(), namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}
