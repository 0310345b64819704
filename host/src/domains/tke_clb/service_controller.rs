//! The service controller: for a `DedicatedCLBService`, asks its
//! `clb-allocator` plugin which listener each selected pod's port gets,
//! checks the answer, writes the `DedicatedCLBListener`s (the listener
//! controller does the CLB side), writes each bound address into the pod
//! annotation the service names, and reports. Deleting the service deletes
//! its listeners first, through a finalizer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use knit_clb_core as clb;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use crate::controller::{Failed, reconcile_finalized};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::lb_queue::{LbQueues, QueueError};
use super::plan::{
    self, ALLOCATOR_ANNOTATION, DEFAULT_ALLOCATOR, SERVICE_FINALIZER, SERVICE_LABEL,
};
use super::types::{
    DedicatedCLBListener, DedicatedCLBService, DedicatedCLBServiceStatus, ListenerState,
    LoadBalancerStatus,
};
use crate::runtime::{Registry, World};

pub struct Context {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub queues: Arc<LbQueues>,
    pub pods: Store<Pod>,
    pub listeners: Store<DedicatedCLBListener>,
    pub recorder: Recorder,
    pub caches: crate::controller::CachesReady,
    /// Per service, the listener objects it last wrote and the pod each
    /// should name; see `cache_caught_up`.
    pub expected: std::sync::Mutex<HashMap<ObjectRef<DedicatedCLBService>, Expected>>,
    /// Per service, the pods last told (by an Event) that no port is left.
    pub told: std::sync::Mutex<HashMap<ObjectRef<DedicatedCLBService>, BTreeSet<String>>>,
}

/// What a service's last pass wrote, and when.
pub struct Expected {
    listeners: Vec<(String, Option<String>)>,
    written: std::time::Instant,
}

/// How long to wait for the cache to show a pass's writes before planning
/// anyway (someone else may have changed the objects since).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("waiting for {0} listener(s) to be deleted from their CLBs")]
    ListenersRemain(usize),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn reconcile(
    service: Arc<DedicatedCLBService>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<DedicatedCLBService> = Api::namespaced(ctx.client.clone(), &namespace);
    let ctx = &*ctx;
    reconcile_finalized(
        &api,
        SERVICE_FINALIZER,
        service,
        |service| async move { apply(&service, ctx).await },
        |service| async move { cleanup(&service, ctx).await },
    )
    .await
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(5);

    fn waiting(&self) -> Option<Duration> {
        matches!(self, Error::ListenersRemain(_)).then_some(Duration::from_secs(2))
    }
}

/// The service's listener objects: labelled with its name and owned by
/// this very object (a new service of the same name does not inherit).
fn owned_by<'a>(
    service: &'a DedicatedCLBService,
    listeners: &'a [Arc<DedicatedCLBListener>],
) -> impl Iterator<Item = &'a Arc<DedicatedCLBListener>> + 'a {
    let uid = service.uid();
    listeners.iter().filter(move |l| {
        l.namespace() == service.namespace()
            && l.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
    })
}

impl Context {
    /// Whether the listener cache shows what this service's last pass
    /// wrote (each object there, naming the pod written), or it has waited
    /// long enough.
    fn cache_caught_up(
        &self,
        service: &DedicatedCLBService,
        cached: &[Arc<DedicatedCLBListener>],
    ) -> bool {
        let key = ObjectRef::from_obj(service);
        let mut expected = self.expected.lock().expect("expectations lock");
        let Some(last) = expected.get(&key) else {
            return true;
        };
        let seen = last.listeners.iter().all(|(name, pod)| {
            cached.iter().any(|l| {
                l.namespace() == service.namespace()
                    && &l.name_any() == name
                    && l.spec.backend_pod.as_ref().map(|b| &b.pod_name) == pod.as_ref()
            })
        });
        if seen || last.written.elapsed() > EXPECTATION_TIMEOUT {
            expected.remove(&key);
            return true;
        }
        false
    }

    fn expect(&self, service: &DedicatedCLBService, written: &[(String, Option<String>)]) {
        if written.is_empty() {
            return;
        }
        self.expected.lock().expect("expectations lock").insert(
            ObjectRef::from_obj(service),
            Expected {
                listeners: written.to_vec(),
                written: std::time::Instant::now(),
            },
        );
    }
}

async fn apply(service: &DedicatedCLBService, ctx: &Context) -> Result<Action, Error> {
    ctx.caches.wait().await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let namespace = service.namespace().unwrap_or_default();
    let all_pods = ctx.pods.state();
    let pods: Vec<&Pod> = all_pods
        .iter()
        .map(|p| &**p)
        .filter(|p| plan::selects(service, p))
        .collect();
    let all_listeners = ctx.listeners.state();
    // A plan made before the cache shows the last pass's writes would
    // place the same pods again (and with a uniform or random spread,
    // elsewhere): wait for them.
    if !ctx.cache_caught_up(service, &all_listeners) {
        tracing::debug!(service = %ObjectRef::from_obj(service), "waiting for the listener cache");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    // Listeners on their way out are not planned with; their ports count
    // as taken below until they are gone. Nor are those the CLB refused
    // (quota, a port taken outside knit): they are deleted, and the
    // allocator, seeing the CLB full or the port taken, places them again.
    let (own, refused): (Vec<&DedicatedCLBListener>, Vec<&DedicatedCLBListener>) =
        owned_by(service, &all_listeners)
            .map(|l| &**l)
            .filter(|l| l.metadata.deletion_timestamp.is_none())
            .partition(|l| !plan::refused_by_clb(l));

    let settings = ctx.queues.cloud().settings();
    let region = match ctx.queues.cloud().region(service.spec.lb_region.as_deref()) {
        Ok(region) => region,
        Err(error) => {
            let error = QueueError::from(error);
            return report_failure(
                service,
                ctx,
                error.reason(),
                &error.to_string(),
                Duration::from_secs(60),
            )
            .await;
        }
    };

    let own_uids: BTreeSet<Option<String>> = own.iter().map(|l| l.uid()).collect();
    // The CLBs, as read a little while ago at most. One that cannot be read
    // stops planning: taking it for missing would delete its listeners.
    let mut lbs = Vec::new();
    let mut lb_statuses = Vec::new();
    let mut missing = Vec::new();
    let lb_ids: Vec<&String> = {
        let mut seen = BTreeSet::new();
        service
            .spec
            .existed_lb_ids
            .iter()
            .filter(|id| seen.insert(*id))
            .collect()
    };
    for id in lb_ids {
        match ctx.queues.view(&region, id, settings.view_max_age()).await {
            Ok(view) if view.found => {
                // Ports other objects hold on this CLB: other services', and
                // this one's on their way out.
                let others: Vec<&DedicatedCLBListener> = all_listeners
                    .iter()
                    .map(|l| &**l)
                    .filter(|l| l.spec.lb_id == *id && !own_uids.contains(&l.uid()))
                    .collect();
                lbs.push(plan::load_balancer(
                    id,
                    &view,
                    &own,
                    &others,
                    settings.listener_quota,
                ));
                lb_statuses.push(LoadBalancerStatus {
                    lb_id: id.clone(),
                    vips: view.vips.clone(),
                    allocated: own.iter().filter(|l| l.spec.lb_id == *id).count() as u64,
                });
            }
            Ok(_) => missing.push(id.clone()),
            Err(error) => {
                let retry = match &error {
                    QueueError::Cloud {
                        retryable: true, ..
                    } => Duration::from_secs(5),
                    _ => Duration::from_secs(30),
                };
                return report_failure(service, ctx, error.reason(), &error.to_string(), retry)
                    .await;
            }
        }
    }

    let plugin_name = service
        .annotations()
        .get(ALLOCATOR_ANNOTATION)
        .map_or(DEFAULT_ALLOCATOR, String::as_str);
    let plugin = match ctx.registry.get_world(plugin_name, World::ClbAllocator) {
        Ok(plugin) => plugin,
        Err(error) => {
            return report_failure(
                service,
                ctx,
                "PluginUnavailable",
                &error.to_string(),
                Duration::from_secs(30),
            )
            .await;
        }
    };
    let config = plan::allocator_config(service);
    let seed = seed_for(service, own.len());
    let request = plan::request(service, lbs.clone(), &pods, &own, &now, seed);
    let decision = {
        let plugin = plugin.clone();
        let config = config.clone();
        crate::runtime::spawn_call(move || plugin.allocate_listeners(&request, &config)).await?
    };
    let decision = match decision {
        Ok(Ok(decision)) => decision,
        Ok(Err(why)) => {
            let message = format!("{}: {why}", plugin.name_version());
            return report_failure(
                service,
                ctx,
                "InvalidConfig",
                &message,
                Duration::from_secs(60),
            )
            .await;
        }
        Err(error) => {
            return report_failure(
                service,
                ctx,
                "PluginError",
                &error.to_string(),
                Duration::from_secs(30),
            )
            .await;
        }
    };

    tracing::debug!(
        service = %ObjectRef::from_obj(service),
        plugin = %plugin.name_version(),
        create = decision.create.len(),
        bind = decision.bind.len(),
        unbind = decision.unbind.len(),
        delete = decision.delete.len(),
        no_port = decision.messages.len(),
        "planned"
    );
    // Apply: listener objects first, then the pods' annotations.
    let listeners: Api<DedicatedCLBListener> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = PatchParams::apply("knit").force();
    let mut written = Vec::new();
    for intent in plan::intents(service, &own, &decision, &now) {
        let object = plan::listener_object(service, &intent);
        listeners
            .patch(&intent.name, &apply, &Patch::Apply(&object))
            .await?;
        written.push((intent.name, intent.pod));
    }
    let refused: Vec<String> = refused.iter().map(|l| l.name_any()).collect();
    for name in decision.delete.iter().chain(&refused) {
        match listeners.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.expect(service, &written);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for (pod, annotation, address) in plan::pod_addresses(service, &pods, &own) {
        let patch = json!({"metadata": {"annotations": {annotation: address}}});
        match pods_api
            .patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Each pod is told once while it waits, not on every pass.
    let waiting: BTreeSet<String> = decision
        .messages
        .iter()
        .map(|(pod, _)| pod.clone())
        .collect();
    let told = ctx
        .told
        .lock()
        .expect("told lock")
        .insert(ObjectRef::from_obj(service), waiting.clone())
        .unwrap_or_default();
    for (pod, message) in decision
        .messages
        .iter()
        .filter(|(pod, _)| !told.contains(pod))
    {
        if let Some(pod) = pods.iter().find(|p| &p.name_any() == pod) {
            publish(
                ctx,
                &pod.object_ref(&()),
                EventType::Warning,
                "NoPortAvailable",
                message,
            )
            .await;
        }
    }

    // Report.
    let serving: Vec<&&Pod> = pods.iter().filter(|p| plan::pod_ip(p).is_some()).collect();
    let wanted = serving.len() * service.spec.ports.len();
    let bound = own
        .iter()
        .filter(|l| {
            l.status.as_ref().and_then(|s| s.state) == Some(ListenerState::Bound)
                && l.spec
                    .backend_pod
                    .as_ref()
                    .is_some_and(|b| serving.iter().any(|p| p.name_any() == b.pod_name))
        })
        .count();
    let changed = !decision.create.is_empty()
        || !decision.bind.is_empty()
        || !decision.unbind.is_empty()
        || !decision.delete.is_empty();
    let (ready, reason, message) = if !missing.is_empty() {
        (
            false,
            "LoadBalancerNotFound",
            format!("CLB(s) {} do not exist in {region}", missing.join(", ")),
        )
    } else if !decision.messages.is_empty() {
        (
            false,
            "NoPortAvailable",
            format!(
                "{} pod port(s) without a listener: {}",
                decision.messages.len(),
                decision.messages[0].1
            ),
        )
    } else if bound < wanted || changed {
        (
            false,
            "Binding",
            format!("{bound} of {wanted} pod port(s) bound"),
        )
    } else {
        (
            true,
            "AllBound",
            format!("{bound} of {wanted} pod port(s) bound"),
        )
    };
    let status = DedicatedCLBServiceStatus {
        load_balancers: lb_statuses,
        allocated: own.len() as u64,
        free: plan::free_ports(service, &lbs, &own),
        observed_generation: service.metadata.generation,
        conditions: vec![condition(service, ready, reason, &message)],
        decided_by: crate::controller::PluginStatus::of(&plugin),
    };
    write_status(service, ctx, status).await?;

    // Come back when a resting listener may serve a waiting pod, soon while
    // listeners are being bound, and now and then to notice CLB changes.
    let cooldown = clb::parse_config(&config).map_or(clb::DEFAULT_COOLDOWN_SECONDS, |(_, c)| c);
    let mut requeue = settings.resync;
    if !decision.messages.is_empty()
        && let Some(seconds) = plan::next_rest_end(&own, cooldown, &now)
    {
        requeue = requeue.min(Duration::from_secs(seconds.max(1)));
    }
    if !missing.is_empty() || !decision.messages.is_empty() {
        requeue = requeue.min(settings.view_max_age());
    }
    Ok(Action::requeue(requeue))
}

/// The seed for a random spread: stable for a service in a given state, so
/// a replay with `knit simulate` gives the same answer.
fn seed_for(service: &DedicatedCLBService, listeners: usize) -> u64 {
    crate::controller::replay_seed(&[&service.uid().unwrap_or_default(), &listeners.to_string()])
}

async fn cleanup(service: &DedicatedCLBService, ctx: &Context) -> Result<Action, Error> {
    ctx.expected
        .lock()
        .expect("expectations lock")
        .remove(&ObjectRef::from_obj(service));
    ctx.told
        .lock()
        .expect("told lock")
        .remove(&ObjectRef::from_obj(service));
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
    let remaining: Vec<&Arc<DedicatedCLBListener>> = owned_by(service, &found).collect();
    if remaining.is_empty() {
        return Ok(Action::await_change());
    }
    for listener in &remaining {
        if listener.metadata.deletion_timestamp.is_none() {
            match listeners
                .delete(&listener.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(Error::ListenersRemain(remaining.len()))
}

async fn report_failure(
    service: &DedicatedCLBService,
    ctx: &Context,
    reason: &str,
    message: &str,
    retry: Duration,
) -> Result<Action, Error> {
    let current = service.status.clone().unwrap_or_default();
    if current.conditions.first().map(|c| c.reason.as_str()) != Some(reason) {
        publish(
            ctx,
            &service.object_ref(&()),
            EventType::Warning,
            reason,
            message,
        )
        .await;
    }
    let status = DedicatedCLBServiceStatus {
        observed_generation: service.metadata.generation,
        conditions: vec![condition(service, false, reason, message)],
        ..current
    };
    write_status(service, ctx, status).await?;
    Ok(Action::requeue(retry))
}

fn condition(service: &DedicatedCLBService, ready: bool, reason: &str, message: &str) -> Condition {
    let previous = service
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    crate::controller::ready_condition(
        previous,
        service.metadata.generation,
        ready,
        reason,
        message,
    )
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

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    crate::controller::publish_event(&ctx.recorder, reference, type_, reason, note, "Reconcile")
        .await;
}
