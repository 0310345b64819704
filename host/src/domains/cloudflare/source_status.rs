//! What each source bound to a tunnel is told: Ingress
//! `status.loadBalancer`, HTTPRoute parent status, and an Event when its
//! verdict changes.

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::context::Context;
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

/// The controller name in HTTPRoute parent status.
pub const CONTROLLER_NAME: &str = "knit.dev/cloudflare-tunnel";

/// One `status.parents` entry per parentRef, written under knit's
/// controller name; entries of other controllers are kept.
async fn set_route_status(ctx: &Context, source: &SourceStatus) -> Result<(), kube::Error> {
    let (accepted, reason, message) = (source.accepted, source.reason, source.message.as_str());
    let reference = &source.reference;
    let Some(route) = ctx
        .routes
        .get(&ObjectRef::new(&reference.name).within(&reference.namespace))
    else {
        return Ok(());
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let parent_refs = route.spec["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = route
        .status
        .as_ref()
        .and_then(|s| s["parents"].as_array())
        .cloned()
        .unwrap_or_default();
    let resolved = !(reason == "NoReadyEndpoints" || reason == "Invalid");
    let condition = |type_: &str, ok: bool, reason: &str, previous: Option<&serde_json::Value>| {
        let status = if ok { "True" } else { "False" };
        // Keep the transition time when the status did not change.
        let since = previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(|| now.clone());
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": source.generation, "lastTransitionTime": since,
        })
    };
    let mut parents: Vec<serde_json::Value> = current
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent_ref in &parent_refs {
        let previous = current
            .iter()
            .find(|p| p["controllerName"] == CONTROLLER_NAME && &p["parentRef"] == parent_ref);
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", accepted, if accepted { "Accepted" } else { reason }, previous),
                condition("ResolvedRefs", resolved, if resolved { "ResolvedRefs" } else { "BackendNotFound" }, previous),
            ],
        }));
    }
    let unchanged = parents.len() == current.len()
        && parents.iter().zip(&current).all(|(a, b)| {
            a["parentRef"] == b["parentRef"]
                && a["controllerName"] == b["controllerName"]
                && a["conditions"]
                    .as_array()
                    .zip(b["conditions"].as_array())
                    .is_some_and(|(x, y)| {
                        x.len() == y.len()
                            && x.iter().zip(y).all(|(c, d)| {
                                c["status"] == d["status"]
                                    && c["reason"] == d["reason"]
                                    && c["message"] == d["message"]
                                    && c["observedGeneration"] == d["observedGeneration"]
                            })
                    })
        });
    if unchanged {
        return Ok(());
    }
    Api::<HttpRoute>::namespaced(ctx.client.clone(), &reference.namespace)
        .patch_status(
            &reference.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "parents": parents } })),
        )
        .await
        .map(|_| ())
}
