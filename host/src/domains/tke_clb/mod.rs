//! TKE CLB: every pod selected by a `DedicatedCLBService` gets its own
//! public `IP:port` on a Tencent CLB, one listener per pod and port.
//!
//! - `plan`: the pure part (allocator request, listener objects, status);
//! - `service_controller`: service → plugin → `DedicatedCLBListener`s and
//!   pod address annotations;
//! - `listener_controller`: `DedicatedCLBListener` → the CLB listener and
//!   its target;
//! - `lb_queue`: per-CLB serialized, batched CLB writes;
//! - `clb_diff`: the pure part of a queue round (what to create, delete,
//!   adopt and (de)register, and which ports are someone else's);
//! - `created_lbs`: the CLBs knit creates when a service has none free:
//!   when, `CreateLoadBalancer`'s parameters, the tags that mark them
//!   (pure);
//! - `cloud`: settings, credentials and clients.

mod clb_diff;
pub mod cloud;
pub mod created_lbs;
pub mod lb_queue;
pub mod listener_controller;
pub mod plan;
pub mod service_controller;
pub mod types;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Controller;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::{CachesReady, mark_listed, refs_where};
use crate::runtime::Registry;
use crate::telemetry::ReconcileMetrics;
use cloud::{TencentCloud, TkeSettings};
use lb_queue::LbQueues;
use types::{CLBListenerConfig, DedicatedCLBListener, DedicatedCLBService};

/// Runs both controllers until `shutdown` resolves (then finishes the
/// passes in flight). Pods and listeners are watched once and shared.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    settings: TkeSettings,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let queues = Arc::new(LbQueues::new(Arc::new(TencentCloud::new(
        client.clone(),
        settings,
    ))));
    let recorder = crate::controller::recorder(client.clone());

    let (pods, pods_writer) = reflector::store_shared(1024);
    let pod_events = pods_writer.subscribe().expect("a shared store");
    let mut caches = CachesReady::default();
    let pods_listed = caches.track();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect_shared(pods_writer)
        .inspect(mark_listed(pods_listed))
        .for_each(|_| async {});
    let (listeners, listeners_writer) = reflector::store_shared(1024);
    let listeners_listed = caches.track();
    let listener_events = listeners_writer.subscribe().expect("a shared store");
    let listener_watch = watcher(
        Api::<DedicatedCLBListener>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect_shared(listeners_writer)
    .inspect(mark_listed(listeners_listed))
    .for_each(|_| async {});

    let (configs, configs_writer) = reflector::store_shared(256);
    let configs_listed = caches.track();
    let config_events = configs_writer.subscribe().expect("a shared store");
    let config_watch = watcher(
        Api::<CLBListenerConfig>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect_shared(configs_writer)
    .inspect(mark_listed(configs_listed))
    .for_each(|_| async {});

    // Listeners: a change of a pod or of a listener configuration reaches
    // the listeners naming it.
    let listener_context = Arc::new(listener_controller::Context {
        client: client.clone(),
        queues: queues.clone(),
        pods: pods.clone(),
        configs,
        recorder: recorder.clone(),
        caches: caches.clone(),
    });
    let listeners_for_pods = listeners.clone();
    let listeners_for_configs = listeners.clone();
    let listener_controller =
        Controller::for_shared_stream(listener_events.clone(), listeners.clone())
            .watches_shared_stream(pod_events.clone(), move |pod: Arc<Pod>| {
                let namespace = pod.namespace();
                let name = pod.name_any();
                refs_where(&listeners_for_pods, |l| {
                    l.namespace() == namespace
                        && l.spec
                            .backend_pod
                            .as_ref()
                            .is_some_and(|b| b.pod_name == name)
                })
            })
            .watches_shared_stream(config_events, move |config: Arc<CLBListenerConfig>| {
                let name = config.name_any();
                refs_where(&listeners_for_configs, |l| {
                    l.spec.listener_config.as_deref() == Some(name.as_str())
                })
            });
    let listener_controller = crate::controller::run(
        listener_controller,
        "DedicatedCLBListener",
        listener_controller::reconcile,
        listener_context,
        &reconciles,
        shutdown.clone(),
    );

    // Services: their listeners and the pods they select.
    let services = Controller::new(
        Api::<DedicatedCLBService>::all(client.clone()),
        watcher::Config::default(),
    );
    let service_store = services.store();
    let service_context = Arc::new(service_controller::Context {
        client,
        registry: registry.clone(),
        queues,
        pods,
        listeners,
        recorder,
        caches,
        expected: crate::controller::Expectations::new(service_controller::EXPECTATION_TIMEOUT),
        told: Default::default(),
    });
    let service_controller = services
        .owns_shared_stream(listener_events)
        .watches_shared_stream(pod_events, move |pod: Arc<Pod>| {
            refs_where(&service_store, |s| plan::selects(s, &pod))
        })
        .reconcile_all_on(crate::controller::plugin_changes(registry.subscribe()));
    let service_controller = crate::controller::run(
        service_controller,
        "DedicatedCLBService",
        service_controller::reconcile,
        service_context,
        &reconciles,
        shutdown,
    );

    // The watches run until the controllers stop.
    tokio::select! {
        _ = async { tokio::join!(listener_controller, service_controller) } => {}
        _ = pod_watch => {}
        _ = listener_watch => {}
        _ = config_watch => {}
    }
}
