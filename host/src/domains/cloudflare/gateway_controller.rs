//! `GatewayClass` and `Gateway` status, for the classes whose
//! `controllerName` is knit's: a class is accepted; a Gateway says whether
//! it names a tunnel (`Accepted`), whether that tunnel serves
//! (`Programmed`), its address, and how many routes attach to each
//! listener. The tunnel controller serves the routes; this only reports.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::context::Context;
use super::error::Error;
use super::gateway::{self, Gateway, GatewayClass, TunnelStanding};
use super::plan;
use super::sources::TunnelKey;
use super::types::{TunnelObject, TunnelStatus};
use crate::controller::Failed;

pub async fn reconcile_gateway(
    object: Arc<Gateway>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    ctx.caches.wait().await;
    let tunnels = ctx.tunnel_names();
    let gateways = ctx.gateways(&tunnels);
    let namespace = object.namespace().unwrap_or_default();
    let Some(knit) = gateways.get(&namespace, &object.name_any()) else {
        return Ok(Action::await_change());
    };
    let attached: Vec<_> = ctx
        .routes
        .state()
        .iter()
        .flat_map(|route| gateway::attachments(route, &gateways))
        .collect();
    let standing = match &knit.tunnel {
        Ok(key) => standing(&ctx, key),
        Err(_) => TunnelStanding {
            ready: None,
            address: None,
        },
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = gateway::gateway_status(
        knit,
        object.metadata.generation,
        &attached,
        &standing,
        object.status.as_ref(),
        &now,
    );
    let api = Api::<Gateway>::namespaced(ctx.client.clone(), &namespace);
    write(&api, &object.name_any(), object.status.as_ref(), status)
        .await
        .map_err(Failed::pass)?;
    Ok(Action::requeue(ctx.accounts.settings().resync))
}

pub async fn reconcile_class(
    object: Arc<GatewayClass>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    if !gateway::is_knit_class(&object) {
        return Ok(Action::await_change());
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = gateway::class_status(object.metadata.generation, object.status.as_ref(), &now);
    let api = Api::<GatewayClass>::all(ctx.client.clone());
    write(&api, &object.name_any(), object.status.as_ref(), status)
        .await
        .map_err(Failed::pass)?;
    Ok(Action::await_change())
}

/// Merges `status` in when it says something new.
async fn write<K>(
    api: &Api<K>,
    name: &str,
    current: Option<&Value>,
    status: Value,
) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if gateway::same_status(&status, current) {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// How the tunnel `key` stands in the caches.
fn standing(ctx: &Context, key: &TunnelKey) -> TunnelStanding {
    let status: Option<Option<TunnelStatus>> = match key {
        TunnelKey::Namespaced { namespace, name } => ctx
            .tunnels
            .get(&ObjectRef::new(name).within(namespace))
            .map(|t| t.tunnel_status().cloned()),
        TunnelKey::Cluster { name } => ctx
            .cluster_tunnels
            .get(&ObjectRef::new(name))
            .map(|t| t.tunnel_status().cloned()),
    };
    let Some(status) = status else {
        return TunnelStanding {
            ready: None,
            address: None,
        };
    };
    let status = status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status == "True", c.message.clone()))
        .unwrap_or((false, "not yet reconciled".into()));
    TunnelStanding {
        ready: Some(ready),
        address: status.tunnel_id.as_deref().map(plan::cname_target),
    }
}
