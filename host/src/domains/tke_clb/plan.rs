//! The pure half of the service controller: from a `DedicatedCLBService`,
//! its pods, the listener objects and what its CLBs hold, `plan_service`
//! asks the allocator and says what to write: listener objects, pod
//! addresses, the status, when to look again. No I/O here (but the plugin
//! call), so `knit simulate` and the tests use the same code as the
//! controller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use knit_clb_core as clb;
use kube::{Resource, ResourceExt};

use super::created_lbs::{self, ClusterPlacement};
use super::lb_queue::LbView;
use super::types::{
    BackendPod, DedicatedCLBListener, DedicatedCLBListenerSpec, DedicatedCLBService,
    DedicatedCLBServiceStatus, ListenerState, LoadBalancerStatus, Protocol,
};
use crate::controller::PluginStatus;
use crate::controller::decision::{self, INVALID_CONFIG, Refusal};
use crate::runtime::Registry;

/// On every listener object: the service it belongs to.
pub const SERVICE_LABEL: &str = "networking.cloud.tencent.com/dedicated-clb-service";
/// On a listener object: the pod port it serves, kept while it is unbound
/// so it goes back to the same port of another pod.
pub const TARGET_PORT_ANNOTATION: &str = "knit.dev/clb-target-port";
/// On an unbound listener object: the pod it served last and since when,
/// for the cooldown and for a replaced pod to get its address back.
pub const LAST_POD_ANNOTATION: &str = "knit.dev/clb-last-pod";
pub const UNBOUND_AT_ANNOTATION: &str = "knit.dev/clb-unbound-at";
pub const SERVICE_FINALIZER: &str = "knit.dev/dedicated-clb-service";
pub const LISTENER_FINALIZER: &str = "knit.dev/clb-listener";

/// What the service controller observed for one service, or what `knit
/// simulate` read from manifests.
pub struct Observed {
    pub service: Arc<DedicatedCLBService>,
    /// The pods the service selects.
    pub pods: Vec<Arc<Pod>>,
    /// Every listener object: the service's, and others' (whose ports on
    /// its CLBs count as taken).
    pub listeners: Vec<Arc<DedicatedCLBListener>>,
    /// Each of the service's CLBs once, as read; `None`: it does not exist.
    pub lbs: Vec<(String, Option<Arc<LbView>>)>,
    pub region: String,
    pub listener_quota: u32,
    /// How often to look again when nothing changes, and how old a CLB
    /// read may be.
    pub resync: Duration,
    pub view_max_age: Duration,
    pub now: Time,
    /// For a random spread; see `seed_for`.
    pub seed: u64,
    /// Where a CLB knit creates goes, and the cluster it is tagged with.
    pub placement: ClusterPlacement,
}

/// What to write for one service.
#[derive(Debug, Default)]
pub struct ServicePlan {
    /// Listener objects to apply (server-side, so fields left out go),
    /// before the deletions.
    pub apply: Vec<DedicatedCLBListener>,
    /// Listener objects to delete, by name.
    pub delete: Vec<String>,
    /// `(pod, annotation, address)` to write on the pods.
    pub pod_addresses: Vec<(String, String, String)>,
    /// Pods left without a listener, and why (told once, by an Event).
    pub waiting: Vec<(String, String)>,
    /// Why the allocator made no decision, when it did not (the status
    /// says so too; nothing else is written).
    pub refusal: Option<Refusal>,
    /// `CreateLoadBalancer`'s parameters, when the service needs a CLB
    /// (`created_lbs`); its ID goes into `status.createdLbIds`.
    pub create_lb: Option<serde_json::Map<String, serde_json::Value>>,
    pub status: DedicatedCLBServiceStatus,
    pub requeue: Duration,
}

/// The service's CLBs, each once: those it lists, in its order (the
/// allocator fills the first first), then those knit created for it.
pub fn lb_ids(service: &DedicatedCLBService) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    let created = service.status.iter().flat_map(|s| &s.created_lb_ids);
    let ids = service.spec.existed_lb_ids.iter().chain(created);
    ids.filter(|id| seen.insert(*id)).collect()
}

/// The seed for a random spread: stable for a service in a given state, so
/// a replay with `knit simulate` gives the same answer.
pub fn seed_for(service: &DedicatedCLBService, listeners: &[Arc<DedicatedCLBListener>]) -> u64 {
    let own = own_listeners(service, listeners).0.len();
    crate::controller::replay_seed(&[&service.uid().unwrap_or_default(), &own.to_string()])
}

/// Plans one pass over a service.
pub fn plan_service(observed: &Observed, registry: &Registry) -> ServicePlan {
    let service = &*observed.service;
    let now = &observed.now;
    let pods: Vec<&Pod> = observed.pods.iter().map(|p| &**p).collect();
    let (own, refused) = own_listeners(service, &observed.listeners);
    let (lbs, lb_statuses, missing) = load_balancers(observed, &own);

    let new_lb = match created_lbs::parameters(service, &observed.placement, now.0.as_second()) {
        Ok(parameters) => parameters,
        Err(why) => return refused_plan(observed, Refusal::new("InvalidSpec", why)),
    };
    // A CLB knit created that is gone (deleted outside knit) is dropped: a
    // new one is made when needed. One the service lists stays missing.
    let created_before = service.status.iter().flat_map(|s| &s.created_lb_ids);
    let created: Vec<String> = created_before
        .filter(|id| !missing.contains(id))
        .cloned()
        .collect();
    let missing: Vec<String> = missing
        .into_iter()
        .filter(|id| service.spec.existed_lb_ids.contains(id))
        .collect();
    let chosen = match decision::choose(registry, service) {
        Ok(chosen) => chosen,
        Err(refusal) => return refused_plan(observed, refusal),
    };
    let request = request(service, lbs.clone(), &pods, &own, now, observed.seed);
    let decision = match chosen.answer(chosen.plugin.allocate_listeners(&request, &chosen.config)) {
        Ok(decision) => decision,
        Err(refusal) => return refused_plan(observed, refusal),
    };
    tracing::debug!(
        service = %kube::runtime::reflector::ObjectRef::from_obj(service),
        plugin = %chosen.plugin.name_version(),
        create = decision.create.len(),
        bind = decision.bind.len(),
        unbind = decision.unbind.len(),
        delete = decision.delete.len(),
        no_port = decision.messages.len(),
        "planned"
    );

    let changed = !decision.create.is_empty()
        || !decision.bind.is_empty()
        || !decision.unbind.is_empty()
        || !decision.delete.is_empty();
    let (ready, reason, message) = readiness(
        service,
        &pods,
        &own,
        &missing,
        &observed.region,
        &decision,
        changed,
    );
    let decided_by = chosen.status();
    let free = free_ports(service, &lbs, &own);
    let create_lb = created_lbs::wanted(service, decision.messages.len(), free, missing.len())
        .then_some(new_lb);
    let status = DedicatedCLBServiceStatus {
        load_balancers: lb_statuses,
        created_lb_ids: created,
        allocated: own.len() as u64,
        free,
        observed_generation: service.metadata.generation,
        conditions: vec![ready_condition(service, ready, reason, &message, now)],
        decided_by: decided_by.clone(),
    };

    // Come back when a resting listener may serve a waiting pod, soon while
    // listeners are being bound, and now and then to notice CLB changes.
    let cooldown =
        clb::parse_config(&chosen.config).map_or(clb::DEFAULT_COOLDOWN_SECONDS, |(_, c)| c);
    let mut requeue = observed.resync;
    if !decision.messages.is_empty()
        && let Some(seconds) = next_rest_end(&own, cooldown, now)
    {
        requeue = requeue.min(Duration::from_secs(seconds.max(1)));
    }
    if !missing.is_empty() || !decision.messages.is_empty() {
        requeue = requeue.min(observed.view_max_age);
    }
    if create_lb.is_some() {
        // The new CLB's pods are placed on the next pass.
        requeue = requeue.min(Duration::from_secs(1));
    }

    ServicePlan {
        apply: intents(service, &own, &decision, now)
            .iter()
            .map(|intent| listener_object(service, intent, &decided_by))
            .collect(),
        delete: decision
            .delete
            .iter()
            .cloned()
            .chain(refused.iter().map(|l| l.name_any()))
            .collect(),
        pod_addresses: pod_addresses(service, &pods, &own),
        waiting: decision.messages,
        refusal: None,
        create_lb,
        status,
        requeue,
    }
}

/// The service's listener objects, not being deleted: those to plan with,
/// and those the CLB refused (quota, a port taken outside knit), to be
/// deleted so the allocator, seeing the CLB full or the port taken, places
/// them again. Listeners on their way out count as others' ports until
/// they are gone.
pub fn own_listeners<'a>(
    service: &'a DedicatedCLBService,
    listeners: &'a [Arc<DedicatedCLBListener>],
) -> (Vec<&'a DedicatedCLBListener>, Vec<&'a DedicatedCLBListener>) {
    owned_by(service, listeners)
        .map(|l| &**l)
        .filter(|l| l.metadata.deletion_timestamp.is_none())
        .partition(|l| !refused_by_clb(l))
}

/// The service's listener objects: owned by this very object (a new
/// service of the same name does not inherit). Offline (`knit simulate`)
/// the service has no UID: its label says whose a listener is.
pub fn owned_by<'a>(
    service: &'a DedicatedCLBService,
    listeners: &'a [Arc<DedicatedCLBListener>],
) -> impl Iterator<Item = &'a Arc<DedicatedCLBListener>> + 'a {
    let uid = service.uid();
    listeners.iter().filter(move |l| {
        l.namespace() == service.namespace()
            && match &uid {
                Some(uid) => l
                    .owner_references()
                    .iter()
                    .any(|o| &o.uid == uid && o.controller == Some(true)),
                None => l.labels().get(SERVICE_LABEL) == Some(&service.name_any()),
            }
    })
}

/// The CLBs that exist as the allocator sees them, their status, and the
/// IDs of those that do not exist.
fn load_balancers(
    observed: &Observed,
    own: &[&DedicatedCLBListener],
) -> (Vec<clb::LoadBalancer>, Vec<LoadBalancerStatus>, Vec<String>) {
    let (mut lbs, mut statuses, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for (id, view) in &observed.lbs {
        let Some(view) = view else {
            missing.push(id.clone());
            continue;
        };
        // Ports other objects hold on this CLB: other services', and this
        // one's on their way out.
        let others: Vec<&DedicatedCLBListener> = observed
            .listeners
            .iter()
            .map(|l| &**l)
            .filter(|l| l.spec.lb_id == *id && !own.iter().any(|o| std::ptr::eq(*o, *l)))
            .collect();
        lbs.push(load_balancer(
            id,
            view,
            own,
            &others,
            observed.listener_quota,
        ));
        statuses.push(LoadBalancerStatus {
            lb_id: id.clone(),
            vips: view.vips.clone(),
            allocated: own.iter().filter(|l| l.spec.lb_id == *id).count() as u64,
        });
    }
    (lbs, statuses, missing)
}

/// `Ready`: every serving pod's ports bound, with nothing left to change.
fn readiness(
    service: &DedicatedCLBService,
    pods: &[&Pod],
    own: &[&DedicatedCLBListener],
    missing: &[String],
    region: &str,
    decision: &clb::Plan,
    changed: bool,
) -> (bool, &'static str, String) {
    let serving: Vec<&&Pod> = pods.iter().filter(|p| pod_ip(p).is_some()).collect();
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
    if !missing.is_empty() {
        (
            false,
            "LoadBalancerNotFound",
            format!("CLB(s) {} do not exist in {region}", missing.join(", ")),
        )
    } else if let Some((_, first)) = decision.messages.first() {
        (
            false,
            "NoPortAvailable",
            format!(
                "{} pod port(s) without a listener: {first}",
                decision.messages.len()
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
    }
}

/// A pass with no decision: the status says why, nothing else changes; a
/// configuration the allocator refused waits longer than a failed call.
fn refused_plan(observed: &Observed, refusal: Refusal) -> ServicePlan {
    let service = &*observed.service;
    let status = DedicatedCLBServiceStatus {
        observed_generation: service.metadata.generation,
        conditions: vec![ready_condition(
            service,
            false,
            refusal.reason,
            &refusal.message,
            &observed.now,
        )],
        ..service.status.clone().unwrap_or_default()
    };
    let requeue = if refusal.reason == INVALID_CONFIG {
        60
    } else {
        30
    };
    ServicePlan {
        refusal: Some(refusal),
        status,
        requeue: Duration::from_secs(requeue),
        ..ServicePlan::default()
    }
}

/// The service's `Ready` condition.
pub fn ready_condition(
    service: &DedicatedCLBService,
    ready: bool,
    reason: &str,
    message: &str,
    now: &Time,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let previous = service
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let generation = service.metadata.generation;
    crate::conditions::condition(previous, "Ready", ready, reason, message, generation, now)
}

/// The listener object for one (LB, protocol, port): a fixed name, so a
/// restart half-way through creating it finds it instead of adding another.
pub fn listener_object_name(
    service: &str,
    lb_id: &str,
    protocol: clb::Protocol,
    port: u16,
) -> String {
    let protocol = match protocol {
        clb::Protocol::Tcp => "tcp",
        clb::Protocol::Udp => "udp",
    };
    // Object names are at most 253 characters; the suffix is at most 80.
    let service: String = service.chars().take(170).collect();
    format!("{service}-{lb_id}-{protocol}-{port}")
}

/// The listener's name on the CLB: how knit recognises its own listeners
/// there (and adopts one it created just before a restart).
pub fn clb_listener_name(listener: &DedicatedCLBListener) -> String {
    format!(
        "knit/{}/{}",
        listener.namespace().unwrap_or_default(),
        listener.name_any()
    )
}

pub fn to_clb(protocol: Protocol) -> clb::Protocol {
    match protocol {
        Protocol::Tcp => clb::Protocol::Tcp,
        Protocol::Udp => clb::Protocol::Udp,
    }
}

fn from_clb(protocol: clb::Protocol) -> Protocol {
    match protocol {
        clb::Protocol::Tcp => Protocol::Tcp,
        clb::Protocol::Udp => Protocol::Udp,
    }
}

/// Whether a pod is selected by the service: same namespace, every
/// selector label. An empty selector selects nothing, as for a Service.
pub fn selects(service: &DedicatedCLBService, pod: &Pod) -> bool {
    let selector = &service.spec.selector;
    !selector.is_empty()
        && pod.namespace() == service.namespace()
        && selector
            .iter()
            .all(|(key, value)| pod.labels().get(key) == Some(value))
}

/// A pod that can be a backend: it has an IP and is not going away.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// One CLB as the allocator sees it. Foreign ports are the CLB's listeners
/// that are not this service's, and the ports of other services' listener
/// objects that may not exist on the CLB yet.
pub fn load_balancer(
    id: &str,
    view: &LbView,
    own: &[&DedicatedCLBListener],
    others: &[&DedicatedCLBListener],
    quota: u32,
) -> clb::LoadBalancer {
    let own_ports: BTreeSet<(clb::Protocol, u16)> = own
        .iter()
        .filter(|l| l.spec.lb_id == id)
        .map(|l| (to_clb(l.spec.protocol), l.spec.lb_port))
        .collect();
    let mut foreign: BTreeSet<(clb::Protocol, u16)> = BTreeSet::new();
    for listener in &view.listeners {
        let protocol = match listener.protocol {
            crate::providers::tencent::Protocol::Udp
            | crate::providers::tencent::Protocol::Quic => clb::Protocol::Udp,
            _ => clb::Protocol::Tcp,
        };
        if !own_ports.contains(&(protocol, listener.port)) {
            foreign.insert((protocol, listener.port));
        }
    }
    for other in others.iter().filter(|l| l.spec.lb_id == id) {
        foreign.insert((to_clb(other.spec.protocol), other.spec.lb_port));
    }
    clb::LoadBalancer {
        id: id.to_owned(),
        listener_quota: view.quota_reached_at.map_or(quota, |full| full.min(quota)),
        foreign_ports: foreign.into_iter().collect(),
    }
}

/// The allocator's request. `own` are the service's listener objects that
/// are not being deleted; `lbs` the service's CLBs that exist.
pub fn request(
    service: &DedicatedCLBService,
    lbs: Vec<clb::LoadBalancer>,
    pods: &[&Pod],
    own: &[&DedicatedCLBListener],
    now: &Time,
    seed: u64,
) -> clb::Request {
    let spec = &service.spec;
    clb::Request {
        service: clb::Service {
            min_port: spec.min_port,
            max_port: spec.max_port,
            ports: spec
                .ports
                .iter()
                .map(|p| clb::PortSpec {
                    protocol: to_clb(p.protocol),
                    target_port: p.target_port,
                })
                .collect(),
            // The plugin reads these from its configuration.
            spread: clb::DEFAULT_SPREAD,
            cooldown_seconds: clb::DEFAULT_COOLDOWN_SECONDS,
            seed,
        },
        lbs,
        pods: pods
            .iter()
            .map(|pod| clb::Pod {
                name: pod.name_any(),
                serving: pod_ip(pod).is_some(),
            })
            .collect(),
        listeners: own.iter().map(|l| listener_input(l, now)).collect(),
    }
}

fn listener_input(listener: &DedicatedCLBListener, now: &Time) -> clb::Listener {
    let annotations = listener.annotations();
    let unbound_at = annotations
        .get(UNBOUND_AT_ANNOTATION)
        .and_then(|at| at.parse::<k8s_openapi::jiff::Timestamp>().ok());
    clb::Listener {
        name: listener.name_any(),
        lb_id: listener.spec.lb_id.clone(),
        port: listener.spec.lb_port,
        protocol: to_clb(listener.spec.protocol),
        target_port: target_port(listener).unwrap_or(0),
        pod: listener
            .spec
            .backend_pod
            .as_ref()
            .map(|b| b.pod_name.clone()),
        last_pod: annotations.get(LAST_POD_ANNOTATION).cloned(),
        unbound_for_seconds: unbound_at
            .map(|at| u64::try_from(now.0.duration_since(at).as_secs()).unwrap_or(0)),
    }
}

/// A listener object whose CLB listener could not be created and will not
/// be by waiting: the CLB is at its listener quota, or its port is held
/// by a listener knit does not own.
pub fn refused_by_clb(listener: &DedicatedCLBListener) -> bool {
    listener.status.as_ref().is_some_and(|status| {
        status.listener_id.is_none()
            && status.conditions.iter().any(|c| {
                c.status == "False" && matches!(c.reason.as_str(), "QuotaExceeded" | "PortConflict")
            })
    })
}

/// The pod port a listener object serves.
pub fn target_port(listener: &DedicatedCLBListener) -> Option<u16> {
    listener
        .spec
        .backend_pod
        .as_ref()
        .map(|b| b.port)
        .or_else(|| {
            listener
                .annotations()
                .get(TARGET_PORT_ANNOTATION)
                .and_then(|p| p.parse().ok())
        })
}

/// What one listener object should be; written with server-side apply, so
/// fields left out (a backend pod after unbinding) are removed.
pub struct ListenerIntent {
    pub name: String,
    pub lb_id: String,
    pub port: u16,
    pub protocol: clb::Protocol,
    pub target_port: u16,
    pub pod: Option<String>,
    /// For an unbound listener: who had it and since when.
    pub unbound: Option<(String, String)>,
}

/// The objects to apply for a plan: new listeners, and existing ones whose
/// binding changes. Deletions are returned apart, by name.
pub fn intents(
    service: &DedicatedCLBService,
    own: &[&DedicatedCLBListener],
    plan: &clb::Plan,
    now: &Time,
) -> Vec<ListenerIntent> {
    let mut intents = Vec::new();
    let service_name = service.name_any();
    for new in &plan.create {
        intents.push(ListenerIntent {
            name: listener_object_name(&service_name, &new.lb_id, new.protocol, new.port),
            lb_id: new.lb_id.clone(),
            port: new.port,
            protocol: new.protocol,
            target_port: new.target_port,
            pod: Some(new.pod.clone()),
            unbound: None,
        });
    }
    let existing = |name: &str| own.iter().find(|l| l.name_any() == name);
    let intent = |listener: &DedicatedCLBListener| ListenerIntent {
        name: listener.name_any(),
        lb_id: listener.spec.lb_id.clone(),
        port: listener.spec.lb_port,
        protocol: to_clb(listener.spec.protocol),
        target_port: target_port(listener).unwrap_or(0),
        pod: None,
        unbound: None,
    };
    for (name, pod) in &plan.bind {
        if let Some(listener) = existing(name) {
            intents.push(ListenerIntent {
                pod: Some(pod.clone()),
                ..intent(listener)
            });
        }
    }
    for name in &plan.unbind {
        if let Some(listener) = existing(name) {
            let last_pod = listener
                .spec
                .backend_pod
                .as_ref()
                .map(|b| b.pod_name.clone())
                .unwrap_or_default();
            intents.push(ListenerIntent {
                unbound: Some((last_pod, now.0.to_string())),
                ..intent(listener)
            });
        }
    }
    intents
}

/// The listener object for an intent, owned by the service, naming the
/// allocator whose decision it applies.
pub fn listener_object(
    service: &DedicatedCLBService,
    intent: &ListenerIntent,
    decided_by: &PluginStatus,
) -> DedicatedCLBListener {
    let mut annotations = BTreeMap::from([(
        TARGET_PORT_ANNOTATION.to_owned(),
        intent.target_port.to_string(),
    )]);
    if let Some((last_pod, at)) = &intent.unbound {
        annotations.insert(LAST_POD_ANNOTATION.to_owned(), last_pod.clone());
        annotations.insert(UNBOUND_AT_ANNOTATION.to_owned(), at.clone());
    }
    let owner = OwnerReference {
        api_version: DedicatedCLBService::api_version(&()).into_owned(),
        kind: DedicatedCLBService::kind(&()).into_owned(),
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    DedicatedCLBListener {
        metadata: ObjectMeta {
            name: Some(intent.name.clone()),
            namespace: service.namespace(),
            labels: Some(BTreeMap::from([(
                SERVICE_LABEL.to_owned(),
                service.name_any(),
            )])),
            annotations: Some(annotations),
            // Offline (`knit simulate`) the service has no UID to own by.
            owner_references: service.uid().map(|_| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: DedicatedCLBListenerSpec {
            lb_id: intent.lb_id.clone(),
            lb_region: service.spec.lb_region.clone(),
            lb_port: intent.port,
            protocol: from_clb(intent.protocol),
            listener_config: None,
            backend_pod: intent.pod.as_ref().map(|pod| BackendPod {
                pod_name: pod.clone(),
                port: intent.target_port,
            }),
            decided_by: decided_by.clone(),
        },
        status: None,
    }
}

/// Pod annotations to write: for each port with `addressPodAnnotation`, the
/// address of the pod's bound listener. `(pod, annotation, address)`.
pub fn pod_addresses(
    service: &DedicatedCLBService,
    pods: &[&Pod],
    own: &[&DedicatedCLBListener],
) -> Vec<(String, String, String)> {
    let mut writes = Vec::new();
    for pod in pods.iter().filter(|p| pod_ip(p).is_some()) {
        let pod_name = pod.name_any();
        for port in &service.spec.ports {
            let Some(annotation) = &port.address_pod_annotation else {
                continue;
            };
            let address = own.iter().find_map(|l| {
                let status = l.status.as_ref()?;
                let backend = l.spec.backend_pod.as_ref()?;
                (backend.pod_name == pod_name
                    && backend.port == port.target_port
                    && l.spec.protocol == port.protocol
                    && status.state == Some(ListenerState::Bound))
                .then(|| status.address.clone())
                .flatten()
            });
            if let Some(address) = address
                && pod.annotations().get(annotation) != Some(&address)
            {
                writes.push((pod_name.clone(), annotation.clone(), address));
            }
        }
    }
    writes
}

/// Listener ports the service could still open: on each CLB that exists,
/// the free ports of its range for the service's protocols, capped by the
/// listeners its quota still allows.
pub fn free_ports(
    service: &DedicatedCLBService,
    lbs: &[clb::LoadBalancer],
    own: &[&DedicatedCLBListener],
) -> u64 {
    let protocols: BTreeSet<clb::Protocol> = service
        .spec
        .ports
        .iter()
        .map(|p| to_clb(p.protocol))
        .collect();
    let range = service.spec.min_port..=service.spec.max_port;
    lbs.iter()
        .map(|lb| {
            let mut taken: BTreeSet<(clb::Protocol, u16)> =
                lb.foreign_ports.iter().copied().collect();
            for listener in own.iter().filter(|l| l.spec.lb_id == lb.id) {
                taken.insert((to_clb(listener.spec.protocol), listener.spec.lb_port));
            }
            let held = taken.len() as u64;
            let room = u64::from(lb.listener_quota).saturating_sub(held);
            let free: u64 = protocols
                .iter()
                .map(|protocol| {
                    let used = taken
                        .iter()
                        .filter(|(p, port)| p == protocol && range.contains(port))
                        .count() as u64;
                    (range.clone().count() as u64).saturating_sub(used)
                })
                .sum();
            free.min(room)
        })
        .sum()
}

/// Seconds until the first resting listener of the service may serve
/// another pod, if one rests.
pub fn next_rest_end(
    own: &[&DedicatedCLBListener],
    cooldown_seconds: u64,
    now: &Time,
) -> Option<u64> {
    own.iter()
        .filter(|l| l.spec.backend_pod.is_none())
        .filter_map(|l| listener_input(l, now).unbound_for_seconds)
        .filter(|rested| *rested < cooldown_seconds)
        .map(|rested| cooldown_seconds - rested)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::tke_clb::lb_queue::ClbListener;
    use crate::domains::tke_clb::types::{DedicatedCLBServiceSpec, ServicePort};

    fn service() -> DedicatedCLBService {
        let mut service = DedicatedCLBService::new(
            "gameserver",
            DedicatedCLBServiceSpec {
                lb_region: None,
                min_port: 501,
                max_port: 510,
                selector: BTreeMap::from([("app".into(), "gameserver".into())]),
                ports: vec![ServicePort {
                    protocol: Protocol::Tcp,
                    target_port: 9000,
                    address_pod_annotation: Some("example.com/address".into()),
                }],
                existed_lb_ids: vec!["lb-a".into()],
                extensive_parameters: None,
            },
        );
        service.metadata.namespace = Some("demo".into());
        service.metadata.uid = Some("uid-1".into());
        service
    }

    fn now() -> Time {
        Time("2026-11-21T10:00:00Z".parse().unwrap())
    }

    #[test]
    fn a_plan_becomes_owned_listener_objects_and_unbinding_remembers_the_pod() {
        let service = service();
        let plan = clb::Plan {
            create: vec![clb::NewListener {
                lb_id: "lb-a".into(),
                port: 501,
                protocol: clb::Protocol::Tcp,
                pod: "gs-0".into(),
                target_port: 9000,
            }],
            ..clb::Plan::default()
        };
        let allocator = PluginStatus {
            plugin: Some("clb-allocator@1.0.0".into()),
            plugin_digest: Some("sha256:ab".into()),
            plugin_source: Some("built-in".into()),
        };
        let creating = intents(&service, &[], &plan, &now());
        let created = listener_object(&service, &creating[0], &allocator);
        assert_eq!(created.spec.decided_by, allocator);
        assert_eq!(created.name_any(), "gameserver-lb-a-tcp-501");
        assert_eq!(created.namespace().as_deref(), Some("demo"));
        assert_eq!(created.owner_references()[0].uid, "uid-1");
        assert_eq!(created.spec.backend_pod.as_ref().unwrap().pod_name, "gs-0");

        let unbind = clb::Plan {
            unbind: vec![created.name_any()],
            ..clb::Plan::default()
        };
        let unbinding = intents(&service, &[&created], &unbind, &now());
        let unbound = listener_object(&service, &unbinding[0], &allocator);
        assert!(unbound.spec.backend_pod.is_none());
        assert_eq!(unbound.annotations()[LAST_POD_ANNOTATION], "gs-0");
        assert_eq!(target_port(&unbound), Some(9000));
        // Back through the request: the rest is counted from the annotation.
        let later = Time("2026-11-21T10:00:30Z".parse().unwrap());
        let input = listener_input(&unbound, &later);
        assert_eq!(input.unbound_for_seconds, Some(30));
        assert_eq!(input.last_pod.as_deref(), Some("gs-0"));
        assert_eq!(next_rest_end(&[&unbound], 60, &later), Some(30));
    }

    #[test]
    fn foreign_ports_are_the_clbs_others_and_other_services_objects() {
        let service = service();
        let mine = listener_object(
            &service,
            &ListenerIntent {
                name: "mine".into(),
                lb_id: "lb-a".into(),
                port: 501,
                protocol: clb::Protocol::Tcp,
                target_port: 9000,
                pod: None,
                unbound: None,
            },
            &PluginStatus::default(),
        );
        let mut theirs = mine.clone();
        theirs.spec.lb_port = 505;
        let view = LbView {
            found: true,
            vips: vec!["1.2.3.4".into()],
            listeners: vec![
                ClbListener {
                    id: "lbl-1".into(),
                    protocol: crate::providers::tencent::Protocol::Tcp,
                    port: 501,
                    name: String::new(),
                },
                ClbListener {
                    id: "lbl-2".into(),
                    protocol: crate::providers::tencent::Protocol::Http,
                    port: 80,
                    name: "by hand".into(),
                },
            ],
            quota_reached_at: None,
        };
        let lb = load_balancer("lb-a", &view, &[&mine], &[&theirs], 50);
        assert_eq!(
            lb.foreign_ports,
            [(clb::Protocol::Tcp, 80), (clb::Protocol::Tcp, 505)]
        );
        assert_eq!(lb.listener_quota, 50);
        let full = LbView {
            quota_reached_at: Some(2),
            ..view
        };
        assert_eq!(load_balancer("lb-a", &full, &[], &[], 50).listener_quota, 2);
        // 10 ports in range, 2 taken (501 mine, 505 theirs); quota room 47.
        assert_eq!(free_ports(&service, &[lb], &[&mine]), 8);
    }
}
