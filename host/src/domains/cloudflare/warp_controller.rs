//! `WARPConnector` and `VirtualNetwork`: a `warp_connector` tunnel run by a
//! Deployment of the WARP client in connector mode, advertising the
//! connector's networks as Zero Trust routes in its virtual network. Routes
//! and virtual networks knit made carry its ownership mark in their comment;
//! nothing else is touched.

use std::sync::Arc;

use crate::controller::{Failed, reconcile_finalized};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::error::Error;
use super::objects::{
    Context, Refusal, delete_owned_routes, marked_comment, readiness, sync_routes,
    virtual_network_id,
};
use super::plan::{self, OwnerMarker};
use super::types::{
    TunnelState, VirtualNetwork, VirtualNetworkStatus, WARPConnector, WARPConnectorSpec,
    WARPConnectorStatus,
};
use crate::providers::cloudflare::{self as api, TunnelKind};

pub const WARP_FINALIZER: &str = "knit.dev/warp-connector";
pub const VNET_FINALIZER: &str = "knit.dev/virtual-network";
const MANAGER: &str = "knit";

/// The name of a connector's `warp_connector` tunnel: unique per cluster,
/// namespace and object, so a connector is adopted by its own object only.
pub fn connector_name(cluster_id: &str, namespace: &str, name: &str) -> String {
    let marker = OwnerMarker::new(cluster_id, "cluster");
    let cluster = &marker.prefix["knit:".len().."knit:".len() + 8];
    format!("{namespace}-{name}-{cluster}")
}

fn state(ready: &super::objects::Readiness) -> TunnelState {
    if ready.ready {
        TunnelState::Active
    } else {
        TunnelState::Error
    }
}

pub async fn reconcile_connector(
    connector: Arc<WARPConnector>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let api: Api<WARPConnector> = Api::namespaced(
        ctx.client.clone(),
        &connector.namespace().unwrap_or_default(),
    );
    reconcile_finalized(
        &api,
        WARP_FINALIZER,
        connector,
        &*ctx,
        apply_connector,
        cleanup_connector,
    )
    .await
}

async fn apply_connector(connector: &WARPConnector, ctx: &Context) -> Result<Action, Error> {
    let mut status = connector.status.clone().unwrap_or_default();
    let outcome = serve_connector(connector, ctx, &mut status).await;
    let ready = readiness(outcome, &status.conditions, connector.metadata.generation)?;
    status.state = Some(state(&ready));
    status.observed_generation = connector.metadata.generation;
    let image_condition = image_condition(connector, &status.conditions);
    status.conditions = ready.conditions.clone();
    super::tunnel_plan::put_condition(&mut status.conditions, image_condition);
    let api: Api<WARPConnector> = Api::namespaced(
        ctx.client.clone(),
        &connector.namespace().unwrap_or_default(),
    );
    crate::controller::write_status(&api, connector, connector.status.as_ref(), &status).await?;
    Ok(ready.requeue(ctx))
}

async fn serve_connector(
    connector: &WARPConnector,
    ctx: &Context,
    status: &mut WARPConnectorStatus,
) -> Result<Result<String, Refusal>, Error> {
    let spec = &connector.spec;
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let client = ctx
        .accounts
        .client_for(&spec.cloudflare, Some(&namespace))
        .await?;
    let account = spec.cloudflare.account_id.as_str();
    status.account_id = Some(account.to_owned());

    // Its virtual network, once that has one.
    let vnet_id =
        match virtual_network_id(ctx, &client, account, spec.virtual_network_ref.as_ref()).await? {
            Ok(id) => id,
            Err(refusal) => return Ok(Err(refusal)),
        };
    status.virtual_network_id = vnet_id.clone();

    let tunnel_name = connector_name(&ctx.accounts.settings().cluster_id, &namespace, &name);
    let id = status.connector_id.as_deref();
    let tunnel = connector_tunnel(&client, account, id, &tunnel_name).await?;
    status.connector_id = Some(tunnel.id.clone());

    // The WARP client in connector mode, with the connector's token.
    let owner = connector
        .controller_owner_ref(&())
        .expect("a stored object has a name and a UID");
    let workload = format!("warp-{name}");
    let labels = plan::cloudflared_labels("cloudflared-warp-connector", &workload);
    super::workload::ensure_token_secret(
        &ctx.client,
        &namespace,
        &workload,
        &labels,
        &tunnel.id,
        &owner,
        client.tunnel_token(TunnelKind::WarpConnector, account, &tunnel.id),
    )
    .await?;
    let deployment = connector_deployment(spec, &namespace, &workload, &labels, &owner);
    let applied = Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &workload,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    let deployment_status = applied.status.unwrap_or_default();
    status.replicas = Some(deployment_status.replicas.unwrap_or(0));
    status.ready_replicas = Some(deployment_status.ready_replicas.unwrap_or(0));

    // Its routes, owned through their comment.
    let owner_name = format!("WARPConnector {namespace}/{name}");
    let marker = ctx.marker(&owner_name);
    let existing = client
        .list_routes(
            account,
            &api::RouteFilter {
                tunnel_id: Some(tunnel.id.clone()),
                ..Default::default()
            },
        )
        .await?;
    let wanted: Vec<api::NewRoute> = spec
        .routes
        .iter()
        .map(|r| api::NewRoute {
            network: r.network.clone(),
            tunnel_id: tunnel.id.clone(),
            comment: marked_comment(&marker, &owner_name, r.comment.as_deref()),
            virtual_network_id: vnet_id.clone(),
        })
        .collect();
    let refused: Vec<String> = sync_routes(&client, account, &marker, &existing, &wanted)
        .await?
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if !refused.is_empty() {
        return Ok(Err(("RouteRefused", refused.join(", "))));
    }
    Ok(Ok(format!(
        "connector {tunnel_name} advertises {} route(s)",
        spec.routes.len()
    )))
}

/// The connector tunnel: the one in status, else adopted by name, else new.
async fn connector_tunnel(
    client: &api::CloudflareClient,
    account: &str,
    id: Option<&str>,
    name: &str,
) -> Result<api::Tunnel, Error> {
    let existing = match id {
        Some(id) => {
            client
                .get_tunnel(TunnelKind::WarpConnector, account, id)
                .await?
        }
        None => None,
    };
    Ok(match existing {
        Some(tunnel) => tunnel,
        None => match client
            .find_tunnel(TunnelKind::WarpConnector, account, name)
            .await?
        {
            Some(tunnel) => tunnel,
            None => {
                client
                    .create_tunnel(TunnelKind::WarpConnector, account, name)
                    .await?
            }
        },
    })
}

/// `ImageCanServe`: False for a cloudflared image, which cannot serve a
/// WARP Connector (the seed's default is one); Unknown otherwise, as knit
/// cannot look inside an image for the WARP client.
fn image_condition(connector: &WARPConnector, previous: &[Condition]) -> Condition {
    let image = connector_image(&connector.spec);
    let (status, reason, message) = if plan::is_cloudflared_image(&image) {
        (
            Some(false),
            "CloudflaredImage",
            format!(
                "{image} is cloudflared, which cannot serve a WARP Connector: set spec.image to an image with the WARP client (warp-svc, warp-cli)"
            ),
        )
    } else {
        (
            None,
            "NotInspected",
            format!("{image} must provide the WARP client (warp-svc, warp-cli, dbus-daemon)"),
        )
    };
    crate::conditions::condition_status(
        previous,
        "ImageCanServe",
        status,
        reason,
        &message,
        connector.metadata.generation,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    )
}

fn connector_image(spec: &WARPConnectorSpec) -> String {
    spec.image
        .clone()
        .unwrap_or_else(|| super::types::DEFAULT_CLOUDFLARED_IMAGE.into())
}

fn connector_deployment(
    spec: &WARPConnectorSpec,
    namespace: &str,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> serde_json::Value {
    let image = connector_image(spec);
    let mut pod = plan::warp_connector_pod(&image, name);
    if let Some(resources) = &spec.resources {
        pod["containers"][0]["resources"] = json!(resources);
    }
    if !spec.node_selector.is_empty() {
        pod["nodeSelector"] = json!(spec.node_selector);
    }
    if !spec.tolerations.is_empty() {
        pod["tolerations"] = json!(spec.tolerations);
    }
    if let Some(affinity) = &spec.affinity {
        pod["affinity"] = json!(affinity);
    }
    match &spec.service_account_name {
        Some(account) => pod["serviceAccountName"] = json!(account),
        None => pod["automountServiceAccountToken"] = json!(false),
    }
    plan::cloudflared_deployment(name, namespace, labels, &json!(owner), spec.replicas, pod)
}

async fn cleanup_connector(connector: &WARPConnector, ctx: &Context) -> Result<Action, Error> {
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let workload = format!("warp-{name}");
    super::workload::delete_workload(&ctx.client, &namespace, &workload).await?;
    let Some(id) = connector
        .status
        .as_ref()
        .and_then(|s| s.connector_id.clone())
    else {
        return Ok(Action::await_change());
    };
    let spec = &connector.spec;
    let client = ctx
        .accounts
        .client_for_cleanup(&spec.cloudflare, Some(&namespace))
        .await?;
    let account = spec.cloudflare.account_id.as_str();
    let marker = ctx.marker(&format!("WARPConnector {namespace}/{name}"));
    delete_owned_routes(&client, account, &marker, Some(&id)).await?;
    client
        .delete_tunnel(TunnelKind::WarpConnector, account, &id)
        .await?;
    Ok(Action::await_change())
}

pub async fn reconcile_network(
    vnet: Arc<VirtualNetwork>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let api: Api<VirtualNetwork> = Api::all(ctx.client.clone());
    reconcile_finalized(
        &api,
        VNET_FINALIZER,
        vnet,
        &*ctx,
        apply_network,
        cleanup_network,
    )
    .await
}

fn network_name(vnet: &VirtualNetwork) -> String {
    vnet.spec.name.clone().unwrap_or_else(|| vnet.name_any())
}

async fn apply_network(vnet: &VirtualNetwork, ctx: &Context) -> Result<Action, Error> {
    let mut status: VirtualNetworkStatus = vnet.status.clone().unwrap_or_default();
    let result: Result<String, Error> = async {
        let client = ctx.accounts.client_for(&vnet.spec.cloudflare, None).await?;
        let account = vnet.spec.cloudflare.account_id.as_str();
        status.account_id = Some(account.to_owned());
        let owner = format!("VirtualNetwork {}", vnet.name_any());
        let marker = ctx.marker(&owner);
        let wanted = api::NewVirtualNetwork {
            name: network_name(vnet),
            comment: marked_comment(&marker, &owner, vnet.spec.comment.as_deref()),
            is_default_network: vnet.spec.is_default_network,
        };
        let networks = client.list_virtual_networks(account).await?;
        let found = networks
            .iter()
            .find(|n| Some(&n.id) == status.virtual_network_id.as_ref())
            .or_else(|| networks.iter().find(|n| n.name == wanted.name));
        let id = match found {
            Some(network) => {
                if network.name != wanted.name
                    || network.comment != wanted.comment
                    || network.is_default_network != wanted.is_default_network
                {
                    client
                        .update_virtual_network(account, &network.id, &wanted)
                        .await?;
                }
                network.id.clone()
            }
            None => client.create_virtual_network(account, &wanted).await?.id,
        };
        status.virtual_network_id = Some(id.clone());
        Ok(format!("virtual network {} ({id})", wanted.name))
    }
    .await;
    let ready = readiness(result.map(Ok), &status.conditions, vnet.metadata.generation)?;
    status.state = Some(state(&ready));
    status.observed_generation = vnet.metadata.generation;
    status.conditions = ready.conditions.clone();
    let api: Api<VirtualNetwork> = Api::all(ctx.client.clone());
    crate::controller::write_status(&api, vnet, vnet.status.as_ref(), &status).await?;
    Ok(ready.requeue(ctx))
}

/// Deletes the network when knit made it (its comment carries the mark).
async fn cleanup_network(vnet: &VirtualNetwork, ctx: &Context) -> Result<Action, Error> {
    let Some(id) = vnet
        .status
        .as_ref()
        .and_then(|s| s.virtual_network_id.clone())
    else {
        return Ok(Action::await_change());
    };
    let client = ctx
        .accounts
        .client_for_cleanup(&vnet.spec.cloudflare, None)
        .await?;
    let account = vnet.spec.cloudflare.account_id.as_str();
    let marker = ctx.marker(&format!("VirtualNetwork {}", vnet.name_any()));
    let networks = client.list_virtual_networks(account).await?;
    if let Some(network) = networks.iter().find(|n| n.id == id)
        && marker.owns(Some(&network.comment))
    {
        client.delete_virtual_network(account, &id).await?;
    }
    Ok(Action::await_change())
}
