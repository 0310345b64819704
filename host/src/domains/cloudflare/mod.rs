//! Cloudflare tunnels: Ingresses and HTTPRoutes served through cloudflared.
//!
//! - `types`: the kinds (`Tunnel`, `ClusterTunnel`, `WARPConnector`,
//!   `VirtualNetwork`, `CloudflareCredentials`);
//! - `sources`: which Ingresses and HTTPRoutes bind to which tunnel, read
//!   into the `tunnel-mapper` plugin's request (pure);
//! - `plan`: the cloudflared configuration, DNS changes, Deployment and what
//!   each source is told (pure);
//! - `tunnel_plan`: one pass over a tunnel object, planned: `plan_tunnel`
//!   → `TunnelPlan` (the mapper's decision through the controller kit, the
//!   configuration, DNS names, what each source is told, the status); the
//!   controller and `knit simulate` both use it (pure);
//! - `tunnel_controller`: `Tunnel`/`ClusterTunnel` → observe (the tunnel
//!   found or made, the bound sources), `plan_tunnel`, act (token,
//!   cloudflared, configuration, DNS, source status, status);
//! - `context`: the tunnel controller's `Context` and `Bindings`;
//! - `error`: the Cloudflare controllers' `Error` and `failure_reason`;
//! - `workload`: cloudflared's token Secret and the deletion of its
//!   Deployment and Secret (tunnels and WARP connectors);
//! - `dns_sync`: a tunnel's owned DNS records, synced and deleted;
//! - `source_status`: Ingress and HTTPRoute status and Events;
//! - `warp_controller`: `WARPConnector` → connector tunnel, cloudflared,
//!   Zero Trust routes; `VirtualNetwork` → virtual network;
//! - `route_controller`: `NetworkRoute` → one Zero Trust route through a
//!   tunnel object's tunnel;
//! - `dns_record` (pure) and `dns_controller`: `DNSRecord` → DNS records
//!   with static content or a Service's, Ingress's or Node's addresses;
//! - `objects`: what the controllers of single objects share;
//! - `account`: settings, credentials and clients.

pub mod account;
pub mod context;
pub mod dns_controller;
pub mod dns_record;
pub mod dns_sync;
pub mod error;
pub mod objects;
pub mod plan;
pub mod route_controller;
pub mod source_status;
pub mod sources;
pub mod tunnel_controller;
pub mod tunnel_plan;
pub mod types;
pub mod warp_controller;
pub mod workload;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::{CachesReady, mark_listed};
use crate::runtime::Registry;
use crate::telemetry::ReconcileMetrics;
use account::{Accounts, CloudflareSettings};
use context::Context;
use sources::{HttpRoute, SourceKindKey, SourceRef, TunnelKey};
use types::{
    ClusterTunnel, DNSRecord, NetworkRoute, Tunnel, TunnelObject, TunnelRefKind, VirtualNetwork,
    WARPConnector,
};

/// Runs the tunnel controllers until `shutdown` resolves (then finishes the
/// passes in flight). Ingresses, HTTPRoutes, Services and EndpointSlices are
/// watched once and shared by both.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    settings: CloudflareSettings,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let recorder = crate::controller::recorder(client.clone());
    let mut caches = CachesReady::default();

    let (ingresses, ingress_events, ingress_watch) =
        shared_watch(Api::<Ingress>::all(client.clone()), &mut caches);
    let (services, service_events, service_watch) =
        shared_watch(Api::<Service>::all(client.clone()), &mut caches);
    let (slices, slice_events, slice_watch) =
        shared_watch(Api::<EndpointSlice>::all(client.clone()), &mut caches);
    // HTTPRoutes only when the Gateway API is installed.
    let gateway_api = gateway_api_installed(&client).await;
    if !gateway_api {
        tracing::info!("the Gateway API is not installed: HTTPRoutes are not served");
    }
    let (routes, route_events, route_watch) = if gateway_api {
        let (routes, events, watch) =
            shared_watch(Api::<HttpRoute>::all(client.clone()), &mut caches);
        (routes, Some(events), Some(watch))
    } else {
        let (reader, _) = reflector::store_shared::<HttpRoute>(1);
        (reader, None, None)
    };

    let tunnel_controller = Controller::new(
        Api::<Tunnel>::all(client.clone()),
        watcher::Config::default(),
    );
    let tunnels = tunnel_controller.store();
    let cluster_controller = Controller::new(
        Api::<ClusterTunnel>::all(client.clone()),
        watcher::Config::default(),
    );
    let cluster_tunnels = cluster_controller.store();

    let accounts = Arc::new(Accounts::new(client.clone(), settings));
    let warp_context = Arc::new(objects::Context {
        client: client.clone(),
        accounts: accounts.clone(),
    });
    let connectors = Controller::new(
        Api::<WARPConnector>::all(client.clone()),
        watcher::Config::default(),
    );
    let connector_store = connectors.store();
    let connectors = connectors
        .owns(
            Api::<k8s_openapi::api::apps::v1::Deployment>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/name=cloudflared-warp-connector"),
        )
        .watches(
            Api::<VirtualNetwork>::all(client.clone()),
            watcher::Config::default(),
            move |vnet: VirtualNetwork| {
                in_network(&connector_store, &vnet, |c| {
                    c.spec.virtual_network_ref.as_ref()
                })
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconciles.measured("WARPConnector", warp_controller::reconcile_connector),
            crate::controller::error_policy,
            warp_context.clone(),
        )
        .for_each(|_| async {});
    let networks = Controller::new(
        Api::<VirtualNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(
        reconciles.measured("VirtualNetwork", warp_controller::reconcile_network),
        crate::controller::error_policy,
        warp_context.clone(),
    )
    .for_each(|_| async {});
    let network_routes = run_network_routes(
        &client,
        warp_context.clone(),
        reconciles.clone(),
        shutdown.clone(),
    );
    let dns_records = run_dns_records(
        &client,
        warp_context,
        reconciles.clone(),
        ingress_events.clone(),
        service_events.clone(),
        shutdown.clone(),
    );

    let context = Arc::new(Context {
        client: client.clone(),
        registry: registry.clone(),
        accounts,
        tunnels: tunnels.clone(),
        cluster_tunnels,
        ingresses: ingresses.clone(),
        routes: routes.clone(),
        services: services.clone(),
        slices: slices.clone(),
        recorder,
        caches,
        bindings: Default::default(),
        told: Default::default(),
        dns_synced: Default::default(),
    });

    // Which tunnels a change of a source or a backend wakes: the one it
    // names now and the one it was bound to.
    let wake = Arc::new(Waker {
        context: context.clone(),
    });
    let config = kube::runtime::controller::Config::default()
        // Sources created together make one configuration PUT, not one each.
        .debounce(std::time::Duration::from_millis(500));

    let namespaced = {
        let mut controller = tunnel_controller
            .with_config(config.clone())
            .watches_shared_stream(ingress_events.clone(), {
                let wake = wake.clone();
                move |ingress: Arc<Ingress>| wake.namespaced(wake.for_ingress(&ingress))
            })
            .watches_shared_stream(service_events.clone(), {
                let wake = wake.clone();
                move |service: Arc<Service>| wake.namespaced(wake.for_service(&service))
            })
            .watches_shared_stream(slice_events.clone(), {
                let wake = wake.clone();
                move |slice: Arc<EndpointSlice>| wake.namespaced(wake.for_slice(&slice))
            });
        if let Some(events) = route_events.clone() {
            let wake = wake.clone();
            controller = controller.watches_shared_stream(events, move |route: Arc<HttpRoute>| {
                wake.namespaced(wake.for_route(&route))
            });
        }
        run_controller(
            controller,
            context.clone(),
            reconciles.clone(),
            "Tunnel",
            &registry,
            shutdown.clone(),
        )
    };
    let cluster = {
        let mut controller = cluster_controller
            .with_config(config)
            .watches_shared_stream(ingress_events, {
                let wake = wake.clone();
                move |ingress: Arc<Ingress>| wake.cluster(wake.for_ingress(&ingress))
            })
            .watches_shared_stream(service_events, {
                let wake = wake.clone();
                move |service: Arc<Service>| wake.cluster(wake.for_service(&service))
            })
            .watches_shared_stream(slice_events, {
                let wake = wake.clone();
                move |slice: Arc<EndpointSlice>| wake.cluster(wake.for_slice(&slice))
            });
        if let Some(events) = route_events {
            let wake = wake.clone();
            controller = controller.watches_shared_stream(events, move |route: Arc<HttpRoute>| {
                wake.cluster(wake.for_route(&route))
            });
        }
        run_controller(
            controller,
            context,
            reconciles,
            "ClusterTunnel",
            &registry,
            shutdown,
        )
    };

    let route_watch = async {
        match route_watch {
            Some(watch) => watch.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = async { tokio::join!(namespaced, cluster, connectors, networks, network_routes, dns_records) } => {}
        _ = ingress_watch => {}
        _ = service_watch => {}
        _ = slice_watch => {}
        _ = route_watch => {}
    }
}

/// The objects of `store` that name `vnet`, woken when it changes.
fn in_network<K>(
    store: &Store<K>,
    vnet: &VirtualNetwork,
    reference: impl Fn(&K) -> Option<&types::VirtualNetworkRef>,
) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|object| reference(object).is_some_and(|r| r.name == vnet.name_any()))
        .map(|object| ObjectRef::from_obj(&**object))
        .collect()
}

/// `NetworkRoute`s, woken when the tunnel object or virtual network they
/// name changes.
fn run_network_routes(
    client: &Client,
    context: Arc<objects::Context>,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> {
    let controller = Controller::new(
        Api::<NetworkRoute>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let vnet_store = store.clone();
    let routes_of = move |kind: TunnelRefKind, namespace: Option<String>, name: String| {
        store
            .state()
            .iter()
            .filter(|r| route_controller::uses_tunnel(r, kind, namespace.as_deref(), &name))
            .map(|r| ObjectRef::from_obj(&**r))
            .collect::<Vec<_>>()
    };
    controller
        .watches(
            Api::<Tunnel>::all(client.clone()),
            watcher::Config::default(),
            {
                let routes_of = routes_of.clone();
                move |tunnel: Tunnel| {
                    routes_of(TunnelRefKind::Tunnel, tunnel.namespace(), tunnel.name_any())
                }
            },
        )
        .watches(
            Api::<ClusterTunnel>::all(client.clone()),
            watcher::Config::default(),
            move |tunnel: ClusterTunnel| {
                routes_of(TunnelRefKind::ClusterTunnel, None, tunnel.name_any())
            },
        )
        .watches(
            Api::<VirtualNetwork>::all(client.clone()),
            watcher::Config::default(),
            move |vnet: VirtualNetwork| {
                in_network(&vnet_store, &vnet, |r| r.spec.virtual_network_ref.as_ref())
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(
            reconciles.measured("NetworkRoute", route_controller::reconcile),
            crate::controller::error_policy,
            context,
        )
        .for_each(|_| async {})
}

/// `DNSRecord`s, woken when their Service, Ingress or Node changes.
fn run_dns_records(
    client: &Client,
    context: Arc<objects::Context>,
    reconciles: Arc<ReconcileMetrics>,
    ingress_events: ReflectHandle<Ingress>,
    service_events: ReflectHandle<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> {
    let controller = Controller::new(
        Api::<DNSRecord>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let records_of = move |source: dns_controller::Source| {
        store
            .state()
            .iter()
            .filter(|r| dns_controller::uses_source(r, &source))
            .map(|r| ObjectRef::from_obj(&**r))
            .collect::<Vec<_>>()
    };
    controller
        .watches_shared_stream(service_events, {
            let records_of = records_of.clone();
            move |service: Arc<Service>| {
                records_of(dns_controller::Source::Service {
                    namespace: service.namespace().unwrap_or_default(),
                    name: service.name_any(),
                })
            }
        })
        .watches_shared_stream(ingress_events, {
            let records_of = records_of.clone();
            move |ingress: Arc<Ingress>| {
                records_of(dns_controller::Source::Ingress {
                    namespace: ingress.namespace().unwrap_or_default(),
                    name: ingress.name_any(),
                })
            }
        })
        .watches(
            Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
            watcher::Config::default(),
            move |node: k8s_openapi::api::core::v1::Node| {
                records_of(dns_controller::Source::Node {
                    name: node.name_any(),
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(
            reconciles.measured("DNSRecord", dns_controller::reconcile),
            crate::controller::error_policy,
            context,
        )
        .for_each(|_| async {})
}

/// A watch shared by both controllers: its store, its event stream, and the
/// future that drives it (which raises its flag in `caches` once listed).
fn shared_watch<K>(
    api: Api<K>,
    caches: &mut CachesReady,
) -> (
    Store<K>,
    ReflectHandle<K>,
    futures::future::BoxFuture<'static, ()>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared(1024);
    let events = writer.subscribe().expect("a shared store");
    let listed = caches.track();
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect_shared(writer)
        .inspect(mark_listed(listed))
        .for_each(|_| async {});
    (store, events, Box::pin(watch))
}

async fn gateway_api_installed(client: &Client) -> bool {
    client
        .list_api_group_resources("gateway.networking.k8s.io/v1")
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == "httproutes"))
}

/// Maps changes of sources and backends to the tunnels they concern.
struct Waker {
    context: Arc<Context>,
}

impl Waker {
    fn for_source(&self, reference: SourceRef, annotation: Option<&str>) -> Vec<TunnelKey> {
        let mut keys = Vec::new();
        if let Some(name) = annotation {
            keys.push(sources::resolve_tunnel(name, &reference.namespace, |k| {
                context::namespaced_tunnel_exists(&self.context.tunnels, k)
            }));
        }
        let bindings = self.context.bindings.lock().expect("bindings lock");
        keys.extend(bindings.tunnel_of(&reference));
        keys
    }

    fn for_ingress(&self, ingress: &Ingress) -> Vec<TunnelKey> {
        let reference = SourceRef {
            kind: SourceKindKey::Ingress,
            namespace: ingress.namespace().unwrap_or_default(),
            name: ingress.name_any(),
        };
        self.for_source(reference, sources::ingress_tunnel(ingress))
    }

    fn for_route(&self, route: &HttpRoute) -> Vec<TunnelKey> {
        let reference = SourceRef {
            kind: SourceKindKey::HttpRoute,
            namespace: route.namespace().unwrap_or_default(),
            name: route.name_any(),
        };
        self.for_source(reference, sources::route_tunnel(route))
    }

    fn for_service(&self, service: &Service) -> Vec<TunnelKey> {
        let bindings = self.context.bindings.lock().expect("bindings lock");
        bindings.tunnels_of_service(
            &service.namespace().unwrap_or_default(),
            &service.name_any(),
        )
    }

    fn for_slice(&self, slice: &EndpointSlice) -> Vec<TunnelKey> {
        let Some(service) = slice.labels().get("kubernetes.io/service-name") else {
            return Vec::new();
        };
        let bindings = self.context.bindings.lock().expect("bindings lock");
        bindings.tunnels_of_service(&slice.namespace().unwrap_or_default(), service)
    }

    fn namespaced(&self, keys: Vec<TunnelKey>) -> Vec<ObjectRef<Tunnel>> {
        keys.into_iter()
            .filter_map(|key| match key {
                TunnelKey::Namespaced { namespace, name } => {
                    Some(ObjectRef::new(&name).within(&namespace))
                }
                TunnelKey::Cluster { .. } => None,
            })
            .collect()
    }

    fn cluster(&self, keys: Vec<TunnelKey>) -> Vec<ObjectRef<ClusterTunnel>> {
        keys.into_iter()
            .filter_map(|key| match key {
                TunnelKey::Cluster { name } => Some(ObjectRef::new(&name)),
                TunnelKey::Namespaced { .. } => None,
            })
            .collect()
    }
}

/// Runs one tunnel controller, measured per kind, replanning everything
/// when a plugin changes.
async fn run_controller<K: TunnelObject>(
    controller: Controller<K>,
    context: Arc<Context>,
    reconciles: Arc<ReconcileMetrics>,
    kind: &'static str,
    registry: &Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K::DynamicType: Default,
{
    controller
        .reconcile_all_on(crate::controller::plugin_changes(registry.subscribe()))
        .graceful_shutdown_on(shutdown)
        .run(
            reconciles.measured(kind, tunnel_controller::reconcile),
            crate::controller::error_policy,
            context,
        )
        .for_each(|_| async {})
        .await;
}
