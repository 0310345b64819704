//! What each source bound to a tunnel is told: Ingress
//! `status.loadBalancer`, HTTPRoute parent status, and an Event when its
//! verdict changes.

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::context::Context;
use super::gateway::{self, RouteVerdict};
use super::sources::{HttpRoute, SourceKindKey, SourceRef, TunnelKey};
use super::tunnel_plan::SourceStatus;

/// Ingress `status.loadBalancer`, HTTPRoute parent status, and an Event
/// when a source's verdict changes.
pub(super) async fn tell_sources(
    ctx: &Context,
    key: &TunnelKey,
    sources: &[SourceStatus],
    hostname: &str,
) {
    for source in sources {
        let (accepted, reason, message) = (source.accepted, source.reason, &source.message);
        let result = match source.reference.kind {
            SourceKindKey::Ingress => {
                let ingress = if accepted {
                    json!([{ "hostname": hostname }])
                } else {
                    json!([])
                };
                set_ingress_status(ctx, &source.reference, ingress).await
            }
            SourceKindKey::HttpRoute => set_route_status(ctx, source).await,
        };
        if let Err(error) = result {
            tracing::debug!(source = %source.reference, %error, "source status");
        }
        let told = format!("{reason}: {message}");
        let changed = ctx
            .told
            .lock()
            .expect("told lock")
            .insert(source.reference.clone(), told.clone())
            .as_ref()
            != Some(&told);
        if changed {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(match source.reference.kind {
                    SourceKindKey::Ingress => "networking.k8s.io/v1".into(),
                    SourceKindKey::HttpRoute => "gateway.networking.k8s.io/v1".into(),
                }),
                kind: Some(match source.reference.kind {
                    SourceKindKey::Ingress => "Ingress".into(),
                    SourceKindKey::HttpRoute => "HTTPRoute".into(),
                }),
                namespace: Some(source.reference.namespace.clone()),
                name: Some(source.reference.name.clone()),
                uid: source.uid.clone(),
                ..Default::default()
            };
            let type_ = if reason == "Accepted" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            crate::controller::publish_event(
                &ctx.recorder,
                &reference,
                type_,
                reason,
                &format!("{key}: {message}"),
                "Reconcile",
            )
            .await;
        }
    }
}

pub(super) async fn set_ingress_status(
    ctx: &Context,
    source: &SourceRef,
    ingress: serde_json::Value,
) -> Result<(), kube::Error> {
    let api = Api::<Ingress>::namespaced(ctx.client.clone(), &source.namespace);
    let current = ctx
        .ingresses
        .get(&ObjectRef::new(&source.name).within(&source.namespace))
        .and_then(|i| i.status.clone())
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    if serde_json::to_value(&current).ok().as_ref() == Some(&ingress) {
        return Ok(());
    }
    api.patch_status(
        &source.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": ingress } } })),
    )
    .await
    .map(|_| ())
}

/// Takes back what a source no longer bound to a tunnel was told: an
/// Ingress's address, an HTTPRoute's parent entries of knit's. (The tunnel
/// it is bound to now, if any, tells it again.)
pub(super) async fn untell(ctx: &Context, source: &SourceRef) {
    let result = match source.kind {
        SourceKindKey::Ingress => set_ingress_status(ctx, source, json!([])).await,
        SourceKindKey::HttpRoute => {
            let status = SourceStatus {
                reference: source.clone(),
                uid: None,
                generation: None,
                accepted: false,
                reason: "",
                message: String::new(),
                parents: Vec::new(),
                backend_missing: None,
            };
            set_route_status(ctx, &status).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%source, %error, "source status");
    }
    ctx.told.lock().expect("told lock").remove(source);
}

/// knit's `status.parents` entries of an HTTPRoute (`gateway::route_parents`),
/// written when they changed.
async fn set_route_status(ctx: &Context, source: &SourceStatus) -> Result<(), kube::Error> {
    let reference = &source.reference;
    let Some(route) = ctx
        .routes
        .get(&ObjectRef::new(&reference.name).within(&reference.namespace))
    else {
        return Ok(());
    };
    let current = route
        .status
        .as_ref()
        .and_then(|s| s["parents"].as_array())
        .cloned()
        .unwrap_or_default();
    let verdict = RouteVerdict {
        accepted: source.accepted,
        reason: source.reason,
        message: &source.message,
        backend_missing: source.backend_missing.as_deref(),
        generation: source.generation,
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let Some(parents) = gateway::route_parents(&current, &source.parents, &verdict, &now) else {
        return Ok(());
    };
    Api::<HttpRoute>::namespaced(ctx.client.clone(), &reference.namespace)
        .patch_status(
            &reference.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "parents": parents } })),
        )
        .await
        .map(|_| ())
}
