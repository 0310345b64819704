//! What the controllers of single Cloudflare objects share (`WARPConnector`,
//! `VirtualNetwork`, `NetworkRoute`, `DNSRecord`): their context, their
//! ownership marks, how a pass's outcome becomes `Ready`, and the error
//! policy.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::account::Accounts;
use super::error::Error;
use super::plan::OwnerMarker;
use super::types::{VirtualNetwork, VirtualNetworkRef};
use crate::providers::cloudflare::{self as api, CloudflareClient};

pub struct Context {
    pub client: Client,
    pub accounts: Arc<Accounts>,
}

impl Context {
    /// The mark on what `owner` (e.g. `NetworkRoute office`) made in
    /// Cloudflare: unique to this cluster and owner.
    pub fn marker(&self, owner: &str) -> OwnerMarker {
        OwnerMarker::new(&self.accounts.settings().cluster_id, owner)
    }
}

/// A comment knit writes on a route, virtual network or DNS record: the
/// ownership mark, the owner (so a refusal can name who holds a thing), then
/// the user's words, within Cloudflare's 100 characters.
pub fn marked_comment(marker: &OwnerMarker, owner: &str, comment: Option<&str>) -> String {
    let mut text = format!("{} {owner}", marker.prefix);
    if let Some(comment) = comment {
        text = format!("{text}: {comment}");
    }
    let mut end = text.len().min(100);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Why a pass did not make the object ready, when the cause is the user's
/// to fix (a reason and a message for `Ready=False`), not an error to retry.
pub type Refusal = (&'static str, String);

/// A pass's outcome as status: `Ready`, its reason, and when to look again.
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub conditions: Vec<Condition>,
}

impl Readiness {
    pub fn requeue(&self, ctx: &Context) -> Action {
        if self.ready {
            Action::requeue(ctx.accounts.settings().resync)
        } else {
            Action::requeue(Duration::from_secs(10))
        }
    }
}

/// Cloudflare and credentials failures, and refusals, become `Ready=False`
/// with their reason; Kubernetes errors are returned, to be retried.
pub fn readiness(
    outcome: Result<Result<String, Refusal>, Error>,
    previous: &[Condition],
    generation: Option<i64>,
) -> Result<Readiness, Error> {
    let (ready, reason, message) = match outcome {
        Ok(Ok(message)) => (true, "Active", message),
        Ok(Err((reason, message))) => (false, reason, message),
        Err(error) => {
            let (reason, message) = super::error::failure_reason(error)?;
            (false, reason, message)
        }
    };
    Ok(Readiness {
        ready,
        reason,
        conditions: vec![crate::controller::ready_condition(
            previous, generation, ready, reason, &message,
        )],
    })
}

/// The ID of the virtual network routes go into: the referenced
/// `VirtualNetwork`'s once it has one, else the account's default network
/// (named, so routes compare exactly).
pub async fn virtual_network_id(
    ctx: &Context,
    client: &CloudflareClient,
    account: &str,
    reference: Option<&VirtualNetworkRef>,
) -> Result<Result<Option<String>, Refusal>, Error> {
    let Some(reference) = reference else {
        let networks = client.list_virtual_networks(account).await?;
        return Ok(Ok(networks
            .into_iter()
            .find(|n| n.is_default_network)
            .map(|n| n.id)));
    };
    let vnet = Api::<VirtualNetwork>::all(ctx.client.clone())
        .get_opt(&reference.name)
        .await?;
    Ok(
        match vnet
            .and_then(|v| v.status)
            .and_then(|s| s.virtual_network_id)
        {
            Some(id) => Ok(Some(id)),
            None => Err((
                "VirtualNetworkNotReady",
                format!("VirtualNetwork {} has no network yet", reference.name),
            )),
        },
    )
}

/// Cloudflare's words refusing a write of `what`, as `what: message; message`.
pub fn refusal(what: &str, errors: &[api::ApiMessage]) -> String {
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    format!("{what}: {}", messages.join("; "))
}

/// Brings the routes `marker` owns among `existing` to `wanted`: owned
/// routes not wanted as they are go, wanted routes missing are created.
/// Per wanted route: its ID, or Cloudflare's words refusing it (a network
/// already routed in that virtual network).
pub async fn sync_routes(
    client: &CloudflareClient,
    account: &str,
    marker: &OwnerMarker,
    existing: &[api::Route],
    wanted: &[api::NewRoute],
) -> Result<Vec<Result<String, String>>, Error> {
    let same = |have: &api::Route, want: &api::NewRoute| {
        have.network.eq_ignore_ascii_case(&want.network)
            && have.tunnel_id == want.tunnel_id
            && have.comment == want.comment
            && have.virtual_network_id == want.virtual_network_id
    };
    let owned: Vec<&api::Route> = existing
        .iter()
        .filter(|r| marker.owns(Some(&r.comment)))
        .collect();
    for route in &owned {
        if !wanted.iter().any(|w| same(route, w)) {
            client.delete_route(account, &route.id).await?;
        }
    }
    let mut outcomes = Vec::new();
    for want in wanted {
        if let Some(route) = owned.iter().find(|r| same(r, want)) {
            outcomes.push(Ok(route.id.clone()));
            continue;
        }
        outcomes.push(match client.create_route(account, want).await {
            Ok(route) => Ok(route.id),
            Err(api::Error::Api { errors, .. }) => Err(refusal(&want.network, &errors)),
            Err(e) => return Err(e.into()),
        });
    }
    Ok(outcomes)
}

/// Deletes the routes `marker` owns (through `tunnel_id` only, when given).
pub async fn delete_owned_routes(
    client: &CloudflareClient,
    account: &str,
    marker: &OwnerMarker,
    tunnel_id: Option<&str>,
) -> Result<(), Error> {
    let routes = client
        .list_routes(
            account,
            &api::RouteFilter {
                tunnel_id: tunnel_id.map(str::to_owned),
                ..Default::default()
            },
        )
        .await?;
    for route in routes.iter().filter(|r| marker.owns(Some(&r.comment))) {
        client.delete_route(account, &route.id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_comment_keeps_the_mark_and_fits_cloudflares_limit() {
        let marker = OwnerMarker::new("cluster", "NetworkRoute office");
        let comment = marked_comment(&marker, "NetworkRoute office", Some(&"é".repeat(80)));
        assert!(comment.len() <= 100, "{}", comment.len());
        assert!(marker.owns(Some(&comment)));
        assert_eq!(
            marked_comment(&marker, "NetworkRoute office", Some("LAN")),
            format!("{} NetworkRoute office: LAN", marker.prefix)
        );
        assert_eq!(
            marked_comment(&marker, "NetworkRoute office", None),
            format!("{} NetworkRoute office", marker.prefix)
        );
    }
}
