//! The service controller: for a `DedicatedCLBService`, observes its pods,
//! the listener objects and its CLBs, plans with `plan::plan_service` (the
//! `clb-allocator` plugin decides, the host checks), and acts: writes the
//! `DedicatedCLBListener`s (the listener controller does the CLB side),
//! each bound address into the pod annotation the service names, Events
//! and the status. Deleting the service deletes its listeners first,
//! through a finalizer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::created_lbs::{self, ClusterPlacement};
use super::lb_queue::{LbQueues, QueueError};
use super::plan::{self, Observed, SERVICE_FINALIZER, SERVICE_LABEL, ServicePlan, plan_service};
use super::types::{DedicatedCLBListener, DedicatedCLBService, DedicatedCLBServiceStatus};
use crate::controller::{Expectations, Failed, Told, reconcile_finalized};
use crate::runtime::Registry;

pub struct Context {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub queues: Arc<LbQueues>,
    pub pods: Store<Pod>,
    pub listeners: Store<DedicatedCLBListener>,
    pub recorder: Recorder,
    pub caches: crate::controller::CachesReady,
    /// Per service, the listener objects its last pass wrote: the next
    /// pass waits until the cache shows them.
    pub expected: Expectations<ObjectRef<DedicatedCLBService>, DedicatedCLBListener>,
    /// Per service, the pods last told (by an Event) that no port is left.
    pub told: Told<ObjectRef<DedicatedCLBService>, BTreeSet<String>>,
}

/// How long to wait for the cache to show a pass's writes before planning
/// anyway (someone else may have changed the objects since).
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("waiting for {0} listener(s) to be deleted from their CLBs")]
    ListenersRemain(usize),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("deleting the CLBs knit created: {0}")]
    Cloud(#[from] QueueError),
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(5);

    fn waiting(&self) -> Option<Duration> {
        matches!(self, Error::ListenersRemain(_)).then_some(Duration::from_secs(2))
    }
}

pub async fn reconcile(
    service: Arc<DedicatedCLBService>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<DedicatedCLBService> = Api::namespaced(ctx.client.clone(), &namespace);
    reconcile_finalized(&api, SERVICE_FINALIZER, service, &*ctx, apply, cleanup).await
}

/// Observe, plan, act.
async fn apply(service: &DedicatedCLBService, ctx: &Context) -> Result<Action, Error> {
    let service = Arc::new(service.clone());
    ctx.caches.wait().await;
    let key = ObjectRef::from_obj(&*service);
    let listeners = ctx.listeners.state();
    // A plan made before the cache shows the last pass's writes would
    // place the same pods again (and with a uniform or random spread,
    // elsewhere): wait for them.
    let same_namespace: Vec<Arc<DedicatedCLBListener>> = listeners
        .iter()
        .filter(|l| l.namespace() == service.namespace())
        .cloned()
        .collect();
    if ctx.expected.pending(&key, &same_namespace) {
        tracing::debug!(service = %key, "waiting for the listener cache");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let observed = match observe(&service, listeners, ctx).await {
        Ok(observed) => observed,
        Err((reason, message, retry)) => {
            return report_failure(&service, ctx, reason, &message, retry).await;
        }
    };
    let plan = {
        let registry = ctx.registry.clone();
        crate::runtime::spawn_call(move || plan_service(&observed, &registry)).await?
    };
    act(&service, plan, ctx).await
}

/// What `plan_service` needs: the pods, the listener objects, and the
/// service's CLBs as read a little while ago at most. A CLB that cannot be
/// read stops the pass: taking it for missing would delete its listeners.
async fn observe(
    service: &Arc<DedicatedCLBService>,
    listeners: Vec<Arc<DedicatedCLBListener>>,
    ctx: &Context,
) -> Result<Observed, (&'static str, String, Duration)> {
    let cloud = ctx.queues.cloud();
    let settings = cloud.settings();
    let region = cloud
        .region(service.spec.lb_region.as_deref())
        .map_err(|error| {
            let error = QueueError::from(error);
            (error.reason(), error.to_string(), Duration::from_secs(60))
        })?;
    let mut lbs = Vec::new();
    for id in plan::lb_ids(service) {
        match ctx.queues.view(&region, id, settings.view_max_age()).await {
            Ok(view) => lbs.push((id.clone(), view.found.then_some(view))),
            Err(error) => {
                let retry = match &error {
                    QueueError::Cloud {
                        retryable: true, ..
                    } => Duration::from_secs(5),
                    _ => Duration::from_secs(30),
                };
                return Err((error.reason(), error.to_string(), retry));
            }
        }
    }
    let pods = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| plan::selects(service, p))
        .collect();
    Ok(Observed {
        service: service.clone(),
        pods,
        seed: plan::seed_for(service, &listeners),
        listeners,
        lbs,
        region,
        listener_quota: settings.listener_quota,
        resync: settings.resync,
        view_max_age: settings.view_max_age(),
        now: Time(k8s_openapi::jiff::Timestamp::now()),
        placement: ClusterPlacement {
            vpc_id: settings.vpc_id.clone(),
            cluster_id: settings.cluster_id.clone(),
        },
    })
}

/// Writes the plan: listener objects first, then the pods' addresses, the
/// Events of pods left waiting, and the status.
async fn act(
    service: &DedicatedCLBService,
    mut plan: ServicePlan,
    ctx: &Context,
) -> Result<Action, Error> {
    if let Some(parameters) = plan.create_lb.take() {
        match create_lb(service, &plan.status.created_lb_ids, &parameters, ctx).await {
            // The API answered a ClientToken it has seen (another pass in
            // the same second) with a CLB already recorded: nothing new.
            // The next pass has a new token.
            Ok(ids) if ids.iter().all(|id| plan.status.created_lb_ids.contains(id)) => {
                plan.requeue = plan.requeue.min(Duration::from_secs(1));
            }
            Ok(ids) => {
                let ids: Vec<String> = ids
                    .into_iter()
                    .filter(|id| !plan.status.created_lb_ids.contains(id))
                    .collect();
                let note = format!("created CLB(s) {} for this service's pods", ids.join(", "));
                let reference = service.object_ref(&());
                crate::controller::publish_event(
                    &ctx.recorder,
                    &reference,
                    EventType::Normal,
                    "LoadBalancerCreated",
                    &note,
                    "Reconcile",
                )
                .await;
                plan.status.created_lb_ids.extend(ids);
            }
            Err(error) => {
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let (reason, message) = ("CreateLoadBalancerFailed", error.to_string());
                tell_failure(service, ctx, reason, &message).await;
                plan.status.conditions = vec![plan::ready_condition(
                    service, false, reason, &message, &now,
                )];
                plan.requeue = plan.requeue.min(Duration::from_secs(30));
            }
        }
    }
    if let Some(refusal) = &plan.refusal {
        tell_failure(service, ctx, refusal.reason, &refusal.message).await;
        write_status(service, ctx, plan.status).await?;
        return Ok(Action::requeue(plan.requeue));
    }
    let key = ObjectRef::from_obj(service);
    let namespace = service.namespace().unwrap_or_default();
    let listeners: Api<DedicatedCLBListener> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = PatchParams::apply("knit").force();
    for object in &plan.apply {
        let name = object.name_any();
        let before = ctx.listeners.get(&ObjectRef::new(&name).within(&namespace));
        let written = listeners
            .patch(&name, &apply, &Patch::Apply(object))
            .await?;
        ctx.expected
            .written(key.clone(), &written, before.as_deref());
    }
    for name in &plan.delete {
        ignore_not_found(listeners.delete(name, &DeleteParams::default()).await)?;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for (pod, annotation, address) in &plan.pod_addresses {
        let patch = json!({"metadata": {"annotations": {annotation: address}}});
        ignore_not_found(
            pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    // Each pod is told once while it waits, not on every pass.
    let waiting: BTreeSet<String> = plan.waiting.iter().map(|(pod, _)| pod.clone()).collect();
    let told = ctx.told.replace(key, waiting).unwrap_or_default();
    for (pod, message) in plan.waiting.iter().filter(|(pod, _)| !told.contains(pod)) {
        let cached = ctx.pods.get(&ObjectRef::new(pod).within(&namespace));
        if let Some(pod) = cached {
            publish(ctx, &pod.object_ref(&()), "NoPortAvailable", message).await;
        }
    }
    write_status(service, ctx, plan.status).await?;
    Ok(Action::requeue(plan.requeue))
}

/// A CLB for the service: one knit created for it before but did not
/// record (found by its owner tag: a pass that failed after the create),
/// else a new one. Returns the IDs to record; none when a delayed creation
/// has not said its ID yet (the next pass finds it by its tag).
async fn create_lb(
    service: &DedicatedCLBService,
    recorded: &[String],
    parameters: &serde_json::Map<String, serde_json::Value>,
    ctx: &Context,
) -> Result<Vec<String>, QueueError> {
    let cloud = ctx.queues.cloud();
    let region = cloud.region(service.spec.lb_region.as_deref())?;
    let client = cloud.client(&region).await?;
    let uid = service.uid().unwrap_or_default();
    let tagged = client
        .describe_tagged_load_balancers(created_lbs::OWNER_TAG, &uid)
        .await
        .map_err(QueueError::cloud)?;
    let unrecorded: Vec<String> = tagged
        .into_iter()
        .map(|lb| lb.load_balancer_id)
        .filter(|id| !recorded.contains(id))
        .collect();
    if !unrecorded.is_empty() {
        return Ok(unrecorded);
    }
    let created = client
        .create_load_balancer(parameters)
        .await
        .map_err(QueueError::cloud)?;
    tracing::info!(service = %ObjectRef::from_obj(service), ids = ?created, "CLB created");
    Ok(created)
}

/// Deletes the CLBs knit created for the service: those tagged with its
/// UID (never one it lists in `existedLbIds`, never one without the tag).
async fn delete_created_lbs(service: &DedicatedCLBService, ctx: &Context) -> Result<(), Error> {
    let cloud = ctx.queues.cloud();
    let region = cloud
        .region(service.spec.lb_region.as_deref())
        .map_err(QueueError::from)?;
    let client = cloud.client(&region).await.map_err(QueueError::from)?;
    let uid = service.uid().unwrap_or_default();
    let ours: Vec<String> = client
        .describe_tagged_load_balancers(created_lbs::OWNER_TAG, &uid)
        .await
        .map_err(QueueError::cloud)?
        .into_iter()
        .filter(|lb| {
            lb.tags
                .iter()
                .any(|t| t.tag_key == created_lbs::OWNER_TAG && t.tag_value == uid)
        })
        .map(|lb| lb.load_balancer_id)
        .filter(|id| !service.spec.existed_lb_ids.contains(id))
        .collect();
    // The API takes 20 per call.
    for batch in ours.chunks(20) {
        let task = client
            .delete_load_balancers(batch)
            .await
            .map_err(QueueError::cloud)?;
        client.wait_task(&task).await.map_err(QueueError::cloud)?;
        tracing::info!(service = %ObjectRef::from_obj(service), ids = ?batch, "CLBs knit created deleted");
    }
    Ok(())
}

fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn cleanup(service: &DedicatedCLBService, ctx: &Context) -> Result<Action, Error> {
    ctx.expected.forget(&ObjectRef::from_obj(service));
    ctx.told.forget(&ObjectRef::from_obj(service));
    // A live list: the service may go only when no listener is left.
    let listeners: Api<DedicatedCLBListener> =
        Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default());
    let selector = format!("{SERVICE_LABEL}={}", service.name_any());
    let found: Vec<Arc<DedicatedCLBListener>> = listeners
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let remaining: Vec<&Arc<DedicatedCLBListener>> = plan::owned_by(service, &found).collect();
    if remaining.is_empty() {
        // Its listeners are gone from the CLBs: the CLBs knit made go too.
        delete_created_lbs(service, ctx).await?;
        return Ok(Action::await_change());
    }
    for listener in &remaining {
        if listener.metadata.deletion_timestamp.is_none() {
            ignore_not_found(
                listeners
                    .delete(&listener.name_any(), &DeleteParams::default())
                    .await,
            )?;
        }
    }
    Err(Error::ListenersRemain(remaining.len()))
}

/// A pass that could not plan (no region, a CLB that cannot be read):
/// `Ready=False` with why, told once by an Event.
async fn report_failure(
    service: &DedicatedCLBService,
    ctx: &Context,
    reason: &str,
    message: &str,
    retry: Duration,
) -> Result<Action, Error> {
    tell_failure(service, ctx, reason, message).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = DedicatedCLBServiceStatus {
        observed_generation: service.metadata.generation,
        conditions: vec![plan::ready_condition(service, false, reason, message, &now)],
        ..service.status.clone().unwrap_or_default()
    };
    write_status(service, ctx, status).await?;
    Ok(Action::requeue(retry))
}

/// An Event for a failure the service was not already failing with.
async fn tell_failure(service: &DedicatedCLBService, ctx: &Context, reason: &str, message: &str) {
    let current = service.status.as_ref().and_then(|s| s.conditions.first());
    if current.map(|c| c.reason.as_str()) != Some(reason) {
        publish(ctx, &service.object_ref(&()), reason, message).await;
    }
}

async fn write_status(
    service: &DedicatedCLBService,
    ctx: &Context,
    status: DedicatedCLBServiceStatus,
) -> Result<(), Error> {
    crate::controller::write_status(
        &Api::namespaced(ctx.client.clone(), &service.namespace().unwrap_or_default()),
        service,
        service.status.as_ref(),
        &status,
    )
    .await?;
    Ok(())
}

/// A Warning Event: every Event of this controller is one.
async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    note: &str,
) {
    let warning = EventType::Warning;
    crate::controller::publish_event(&ctx.recorder, reference, warning, reason, note, "Reconcile")
        .await;
}
