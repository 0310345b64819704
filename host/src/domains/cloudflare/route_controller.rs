//! `NetworkRoute`: one private network routed through a `Tunnel` or a
//! `ClusterTunnel`, as a Zero Trust route owned through its comment. When
//! the tunnel object goes (or is being deleted), the route goes with it, so
//! the tunnel can be deleted in Cloudflare.

use std::sync::Arc;

use crate::controller::{Failed, reconcile_finalized};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::error::Error;
use super::objects::{
    Context, Refusal, delete_owned_routes, marked_comment, readiness, sync_routes,
    virtual_network_id,
};
use super::types::{
    ClusterTunnel, NetworkRoute, NetworkRouteStatus, Tunnel, TunnelRef, TunnelRefKind, TunnelState,
    TunnelStatus,
};
use crate::providers::cloudflare as api;

pub const FINALIZER: &str = "knit.dev/network-route";

pub async fn reconcile(
    route: Arc<NetworkRoute>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let api: Api<NetworkRoute> = Api::all(ctx.client.clone());
    reconcile_finalized(&api, FINALIZER, route, &*ctx, apply, cleanup).await
}

fn owner(route: &NetworkRoute) -> String {
    format!("NetworkRoute {}", route.name_any())
}

/// How the user names the tunnel, for messages.
pub fn tunnel_ref_name(reference: &TunnelRef) -> String {
    match (&reference.kind, &reference.namespace) {
        (TunnelRefKind::Tunnel, Some(namespace)) => {
            format!("Tunnel {namespace}/{}", reference.name)
        }
        (TunnelRefKind::Tunnel, None) => format!("Tunnel {}", reference.name),
        (TunnelRefKind::ClusterTunnel, _) => format!("ClusterTunnel {}", reference.name),
    }
}

/// Whether the referenced tunnel object is being deleted, and its status;
/// `None` when it does not exist.
async fn tunnel_status(
    ctx: &Context,
    reference: &TunnelRef,
) -> Result<Option<(bool, Option<TunnelStatus>)>, kube::Error> {
    Ok(match reference.kind {
        TunnelRefKind::ClusterTunnel => Api::<ClusterTunnel>::all(ctx.client.clone())
            .get_opt(&reference.name)
            .await?
            .map(|t| (t.metadata.deletion_timestamp.is_some(), t.status)),
        TunnelRefKind::Tunnel => Api::<Tunnel>::namespaced(
            ctx.client.clone(),
            reference.namespace.as_deref().unwrap_or_default(),
        )
        .get_opt(&reference.name)
        .await?
        .map(|t| (t.metadata.deletion_timestamp.is_some(), t.status)),
    })
}

async fn apply(route: &NetworkRoute, ctx: &Context) -> Result<Action, Error> {
    let mut status = route.status.clone().unwrap_or_default();
    let outcome = serve(route, ctx, &mut status).await;
    let ready = readiness(outcome, &status.conditions, route.metadata.generation)?;
    status.state = Some(match ready.reason {
        _ if ready.ready => TunnelState::Active,
        "TunnelNotReady" | "VirtualNetworkNotReady" => TunnelState::Pending,
        _ => TunnelState::Error,
    });
    status.observed_generation = route.metadata.generation;
    status.conditions = ready.conditions.clone();
    let api: Api<NetworkRoute> = Api::all(ctx.client.clone());
    crate::controller::write_status(&api, route, route.status.as_ref(), &status).await?;
    Ok(ready.requeue(ctx))
}

/// Everything but the status write; fills `status` as it goes.
async fn serve(
    route: &NetworkRoute,
    ctx: &Context,
    status: &mut NetworkRouteStatus,
) -> Result<Result<String, Refusal>, Error> {
    let spec = &route.spec;
    let client = ctx.accounts.client_for(&spec.cloudflare, None).await?;
    let account = spec.cloudflare.account_id.as_str();
    status.account_id = Some(account.to_owned());
    status.network = Some(spec.network.clone());
    let marker = ctx.marker(&owner(route));
    let tunnel = tunnel_ref_name(&spec.tunnel_ref);

    let tunnel_id = match tunnel_status(ctx, &spec.tunnel_ref).await? {
        None | Some((true, _)) => {
            delete_owned_routes(&client, account, &marker, None).await?;
            status.route_id = None;
            return Ok(Err((
                "TunnelNotFound",
                format!("{tunnel} does not exist or is being deleted; the route is withdrawn"),
            )));
        }
        Some((false, tunnel_status)) => {
            let tunnel_status = tunnel_status.unwrap_or_default();
            if let Some(other) = tunnel_status
                .account_id
                .as_deref()
                .filter(|a| *a != account)
            {
                return Ok(Err((
                    "AccountMismatch",
                    format!("{tunnel} is in account {other}, not {account}"),
                )));
            }
            let Some(id) = tunnel_status.tunnel_id else {
                return Ok(Err((
                    "TunnelNotReady",
                    format!("{tunnel} has no Cloudflare tunnel yet"),
                )));
            };
            status.tunnel_name = tunnel_status.tunnel_name;
            id
        }
    };
    status.tunnel_id = Some(tunnel_id.clone());

    let vnet_id =
        match virtual_network_id(ctx, &client, account, spec.virtual_network_ref.as_ref()).await? {
            Ok(id) => id,
            Err(refusal) => return Ok(Err(refusal)),
        };
    status.virtual_network_id = vnet_id.clone();

    let wanted = api::NewRoute {
        network: spec.network.clone(),
        tunnel_id,
        comment: marked_comment(&marker, &owner(route), spec.comment.as_deref()),
        virtual_network_id: vnet_id,
    };
    let existing = client
        .list_routes(account, &api::RouteFilter::default())
        .await?;
    let outcome = sync_routes(&client, account, &marker, &existing, &[wanted])
        .await?
        .pop()
        .expect("one outcome per wanted route");
    match outcome {
        Ok(id) => status.route_id = Some(id),
        Err(refused) => {
            status.route_id = None;
            return Ok(Err(("RouteRefused", refused)));
        }
    }
    Ok(Ok(format!("{} routed through {tunnel}", spec.network)))
}

async fn cleanup(route: &NetworkRoute, ctx: &Context) -> Result<Action, Error> {
    if route
        .status
        .as_ref()
        .and_then(|s| s.account_id.as_ref())
        .is_none()
    {
        return Ok(Action::await_change());
    }
    let client = ctx
        .accounts
        .client_for_cleanup(&route.spec.cloudflare, None)
        .await?;
    let marker = ctx.marker(&owner(route));
    delete_owned_routes(&client, &route.spec.cloudflare.account_id, &marker, None).await?;
    Ok(Action::await_change())
}

/// Whether `route` goes through this tunnel object.
pub fn uses_tunnel(
    route: &NetworkRoute,
    kind: TunnelRefKind,
    namespace: Option<&str>,
    name: &str,
) -> bool {
    let reference = &route.spec.tunnel_ref;
    reference.kind == kind && reference.name == name && reference.namespace.as_deref() == namespace
}
