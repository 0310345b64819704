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
//! - `gateway`: the Gateway API kinds; which HTTPRoutes attach to which of
//!   knit's Gateways and tunnels, and the status of routes, Gateways and
//!   GatewayClasses (pure);
//! - `gateway_controller`: `Gateway` and `GatewayClass` status;
//! - `source_status`: Ingress and HTTPRoute status and Events;
//! - `warp_controller`: `WARPConnector` → connector tunnel, cloudflared,
//!   Zero Trust routes; `VirtualNetwork` → virtual network;
//! - `route_controller`: `NetworkRoute` → one Zero Trust route through a
//!   tunnel object's tunnel;
//! - `dns_record` (pure) and `dns_controller`: `DNSRecord` → DNS records
//!   with static content or a Service's, Ingress's or Node's addresses;
//! - `objects`: what the controllers of single objects share;
//! - `watches`: one watch per kind, shared by the controllers that need it;
//! - `account`: settings, credentials and clients.

pub mod account;
pub mod context;
pub mod dns_controller;
pub mod dns_record;
pub mod dns_sync;
pub mod error;
pub mod gateway;
pub mod gateway_controller;
pub mod objects;
pub mod plan;
pub mod route_controller;
pub mod source_status;
pub mod sources;
pub mod tunnel_controller;
pub mod tunnel_plan;
pub mod types;
pub mod warp_controller;
pub mod watches;
pub mod workload;

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use watches::{Watch, Watched, Watches};

use crate::controller::{Failed, refs_where};
use crate::runtime::Registry;
use crate::telemetry::ReconcileMetrics;
use account::{Accounts, CloudflareSettings};
use context::Context;
use gateway::{Gateway, GatewayClass, HttpRoute};
use sources::{SourceKindKey, SourceRef, TunnelKey};
use types::{
    ClusterTunnel, DNSRecord, NetworkRoute, Tunnel, TunnelObject, TunnelRefKind, VirtualNetwork,
    WARPConnector,
};

/// Runs the Cloudflare controllers until `shutdown` resolves (then finishes
/// the passes in flight). Each kind is watched once (`watches`) and shared
/// by the controllers that need it.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    settings: CloudflareSettings,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown: Shutdown = {
        let shutdown: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(shutdown);
        shutdown.shared()
    };
    let watches = Watches::new(&client).await;
    let accounts = Arc::new(Accounts::new(client.clone(), settings));
    let objects = Objects {
        client: client.clone(),
        context: Arc::new(objects::Context {
            client: client.clone(),
            accounts: accounts.clone(),
        }),
        reconciles: reconciles.clone(),
        shutdown: shutdown.clone(),
    };
    let connectors = run_connectors(&objects, &watches);
    let networks = objects.run(
        Controller::for_shared_stream(watches.networks.applied(), watches.networks.store.clone()),
        "VirtualNetwork",
        warp_controller::reconcile_network,
    );
    let network_routes = run_network_routes(&objects, &watches);
    let dns_records = run_dns_records(&objects, &watches);

    let gateway_api = watches.gateway_api_stores();
    let context = Arc::new(Context {
        client: client.clone(),
        registry: registry.clone(),
        accounts,
        tunnels: watches.tunnels.store.clone(),
        cluster_tunnels: watches.cluster_tunnels.store.clone(),
        ingresses: watches.ingresses.store.clone(),
        routes: gateway_api.routes,
        gateways: gateway_api.gateways,
        gateway_classes: gateway_api.classes,
        namespaces: gateway_api.namespaces,
        services: watches.services.store.clone(),
        slices: watches.slices.store.clone(),
        recorder: crate::controller::recorder(client.clone()),
        caches: watches.caches.clone(),
        bindings: Default::default(),
        told: Default::default(),
        dns_synced: Default::default(),
        config_checked: Default::default(),
    });
    // Which tunnels a change of a source or a backend wakes: the one it
    // names now and the one it was bound to.
    let wake = Arc::new(Waker {
        context: context.clone(),
    });
    let namespaced = run_controller(
        tunnel_controller(&watches.tunnels, &watches, wake.clone(), Waker::namespaced),
        context.clone(),
        reconciles.clone(),
        "Tunnel",
        &registry,
        shutdown.clone(),
    );
    let cluster = run_controller(
        tunnel_controller(&watches.cluster_tunnels, &watches, wake, Waker::cluster),
        context.clone(),
        reconciles.clone(),
        "ClusterTunnel",
        &registry,
        shutdown.clone(),
    );
    let gateways = run_gateways(&watches, context, reconciles, shutdown);

    tokio::select! {
        _ = async { tokio::join!(namespaced, cluster, connectors, networks, network_routes, dns_records, gateways) } => {}
        _ = watches.run() => {}
    }
}

/// A tunnel controller of kind `K`, woken by its own objects and by the
/// sources and backends of its tunnels; `of_kind` keeps the tunnels of
/// kind `K`.
fn tunnel_controller<K: TunnelObject>(
    own: &Watch<K>,
    watches: &Watches,
    wake: Arc<Waker>,
    of_kind: fn(Vec<TunnelKey>) -> Vec<ObjectRef<K>>,
) -> Controller<K> {
    let config = kube::runtime::controller::Config::default()
        // Sources created together make one configuration PUT, not one each.
        .debounce(std::time::Duration::from_millis(500));
    let mut controller = Controller::for_shared_stream(own.applied(), own.store.clone())
        .with_config(config)
        .watches_shared_stream(watches.ingresses.applied(), {
            let wake = wake.clone();
            move |ingress: Arc<Ingress>| of_kind(wake.for_ingress(&ingress))
        })
        .watches_shared_stream(watches.services.applied(), {
            let wake = wake.clone();
            move |service: Arc<Service>| of_kind(wake.for_service(&service))
        })
        .watches_shared_stream(watches.slices.applied(), {
            let wake = wake.clone();
            move |slice: Arc<EndpointSlice>| of_kind(wake.for_slice(&slice))
        });
    if let Some(api) = &watches.gateway_api {
        let every_route = {
            let wake = wake.clone();
            move || of_kind(wake.for_routes(|_| true))
        };
        controller = controller
            .watches_shared_stream(api.routes.applied(), {
                let wake = wake.clone();
                move |route: Arc<HttpRoute>| of_kind(wake.for_route(&route))
            })
            .watches_shared_stream(api.gateways.touched(), move |gateway: Arc<Gateway>| {
                let named = (gateway.namespace().unwrap_or_default(), gateway.name_any());
                of_kind(wake.for_routes(|route| gateway::parent_gateways(route).contains(&named)))
            })
            // Rare: a class or a namespace's labels change.
            .watches_shared_stream(api.classes.touched(), {
                let every_route = every_route.clone();
                move |_: Arc<GatewayClass>| every_route()
            })
            .watches_shared_stream(api.namespaces.touched(), move |_: Arc<Namespace>| {
                every_route()
            });
    }
    controller
}

/// The status of knit's GatewayClasses and Gateways (only with the Gateway
/// API): a Gateway is woken by its routes, its class, its tunnel, and
/// namespace labels.
fn run_gateways(
    watches: &Watches,
    context: Arc<Context>,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: Shutdown,
) -> BoxFuture<'static, ()> {
    let Some(api) = &watches.gateway_api else {
        return futures::future::ready(()).boxed();
    };
    let store = api.gateways.store.clone();
    let gateways_where = move |named: &dyn Fn(&Gateway) -> bool| refs_where(&store, named);
    let names_tunnel = {
        let context = context.clone();
        move |gateway: &Gateway, key: &TunnelKey| {
            let tunnels = context.tunnel_names();
            gateway::gateway_tunnel(gateway, &tunnels).as_ref() == Ok(key)
        }
    };
    let gateways =
        Controller::for_shared_stream(api.gateways.applied(), api.gateways.store.clone())
            .watches_shared_stream(api.routes.touched(), {
                let gateways_where = gateways_where.clone();
                move |route: Arc<HttpRoute>| {
                    let parents = gateway::parent_gateways(&route);
                    gateways_where(&|g| {
                        parents.contains(&(g.namespace().unwrap_or_default(), g.name_any()))
                    })
                }
            })
            .watches_shared_stream(api.classes.touched(), {
                let gateways_where = gateways_where.clone();
                move |class: Arc<GatewayClass>| {
                    gateways_where(&|g| g.spec["gatewayClassName"] == class.name_any().as_str())
                }
            })
            .watches_shared_stream(watches.tunnels.touched(), {
                let (gateways_where, names_tunnel) = (gateways_where.clone(), names_tunnel.clone());
                move |tunnel: Arc<Tunnel>| {
                    let key = tunnel.key();
                    gateways_where(&|g| names_tunnel(g, &key))
                }
            })
            .watches_shared_stream(watches.cluster_tunnels.touched(), {
                let gateways_where = gateways_where.clone();
                move |tunnel: Arc<ClusterTunnel>| {
                    let key = tunnel.key();
                    gateways_where(&|g| names_tunnel(g, &key))
                }
            })
            .watches_shared_stream(api.namespaces.touched(), move |_: Arc<Namespace>| {
                gateways_where(&|_| true)
            });
    let gateways = crate::controller::run(
        gateways,
        "Gateway",
        gateway_controller::reconcile_gateway,
        context.clone(),
        &reconciles,
        shutdown.clone(),
    );
    let classes = crate::controller::run(
        Controller::for_shared_stream(api.classes.applied(), api.classes.store.clone()),
        "GatewayClass",
        gateway_controller::reconcile_class,
        context,
        &reconciles,
        shutdown,
    );
    async move {
        tokio::join!(gateways, classes);
    }
    .boxed()
}

/// `WARPConnector`s, woken when their cloudflared Deployment or their
/// virtual network changes.
fn run_connectors(objects: &Objects, watches: &Watches) -> BoxFuture<'static, ()> {
    let (controller, store) = objects.controller::<WARPConnector>();
    let controller = controller
        .owns(
            Api::<k8s_openapi::api::apps::v1::Deployment>::all(objects.client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/name=cloudflared-warp-connector"),
        )
        .watches_shared_stream(
            watches.networks.touched(),
            move |vnet: Arc<VirtualNetwork>| {
                in_network(&store, &vnet, |c| c.spec.virtual_network_ref.as_ref())
            },
        );
    objects.run(
        controller,
        "WARPConnector",
        warp_controller::reconcile_connector,
    )
}

/// The shutdown signal, shared by every controller.
type Shutdown = Shared<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>;

/// What the controllers of single objects (WARPConnector, VirtualNetwork,
/// NetworkRoute, DNSRecord) run with.
struct Objects {
    client: Client,
    context: Arc<objects::Context>,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: Shutdown,
}

impl Objects {
    /// A controller of every `K` (its own watch), and its store.
    fn controller<K: Watched>(&self) -> (Controller<K>, Store<K>) {
        let controller = Controller::new(
            Api::<K>::all(self.client.clone()),
            watcher::Config::default(),
        );
        let store = controller.store();
        (controller, store)
    }

    /// Runs `controller` until shutdown, every pass measured as `kind`.
    fn run<K, R, Fut, E>(
        &self,
        controller: Controller<K>,
        kind: &'static str,
        reconcile: R,
    ) -> BoxFuture<'static, ()>
    where
        K: Watched,
        R: Fn(Arc<K>, Arc<objects::Context>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<kube::runtime::controller::Action, Failed<E>>> + Send + 'static,
        E: crate::controller::Retry + std::error::Error + Send + 'static,
    {
        crate::controller::run(
            controller,
            kind,
            reconcile,
            self.context.clone(),
            &self.reconciles,
            self.shutdown.clone(),
        )
        .boxed()
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
    refs_where(store, |object| {
        reference(object).is_some_and(|r| r.name == vnet.name_any())
    })
}

/// `NetworkRoute`s, woken when the tunnel object or virtual network they
/// name changes.
fn run_network_routes(objects: &Objects, watches: &Watches) -> BoxFuture<'static, ()> {
    let (controller, store) = objects.controller::<NetworkRoute>();
    let vnet_store = store.clone();
    let routes_of = move |kind: TunnelRefKind, namespace: Option<String>, name: String| {
        refs_where(&store, |r| {
            route_controller::uses_tunnel(r, kind, namespace.as_deref(), &name)
        })
    };
    let controller = controller
        .watches_shared_stream(watches.tunnels.touched(), {
            let routes_of = routes_of.clone();
            move |tunnel: Arc<Tunnel>| {
                routes_of(TunnelRefKind::Tunnel, tunnel.namespace(), tunnel.name_any())
            }
        })
        .watches_shared_stream(
            watches.cluster_tunnels.touched(),
            move |tunnel: Arc<ClusterTunnel>| {
                routes_of(TunnelRefKind::ClusterTunnel, None, tunnel.name_any())
            },
        )
        .watches_shared_stream(
            watches.networks.touched(),
            move |vnet: Arc<VirtualNetwork>| {
                in_network(&vnet_store, &vnet, |r| r.spec.virtual_network_ref.as_ref())
            },
        );
    objects.run(controller, "NetworkRoute", route_controller::reconcile)
}

/// `DNSRecord`s, woken when their Service, Ingress or Node changes.
fn run_dns_records(objects: &Objects, watches: &Watches) -> BoxFuture<'static, ()> {
    let (controller, store) = objects.controller::<DNSRecord>();
    let records_of = move |source: dns_controller::Source| {
        refs_where(&store, |r| dns_controller::uses_source(r, &source))
    };
    let controller = controller
        .watches_shared_stream(watches.services.applied(), {
            let records_of = records_of.clone();
            move |service: Arc<Service>| {
                records_of(dns_controller::Source::Service {
                    namespace: service.namespace().unwrap_or_default(),
                    name: service.name_any(),
                })
            }
        })
        .watches_shared_stream(watches.ingresses.applied(), {
            let records_of = records_of.clone();
            move |ingress: Arc<Ingress>| {
                records_of(dns_controller::Source::Ingress {
                    namespace: ingress.namespace().unwrap_or_default(),
                    name: ingress.name_any(),
                })
            }
        })
        .watches(
            Api::<k8s_openapi::api::core::v1::Node>::all(objects.client.clone()),
            watcher::Config::default(),
            move |node: k8s_openapi::api::core::v1::Node| {
                records_of(dns_controller::Source::Node {
                    name: node.name_any(),
                })
            },
        );
    objects.run(controller, "DNSRecord", dns_controller::reconcile)
}

/// Maps changes of sources and backends to the tunnels they concern.
struct Waker {
    context: Arc<Context>,
}

impl Waker {
    /// The tunnel a source binds to now, and the one it was bound to.
    fn for_source(&self, reference: &SourceRef, now: Option<TunnelKey>) -> Vec<TunnelKey> {
        let bindings = self.context.bindings.lock().expect("bindings lock");
        now.into_iter()
            .chain(bindings.tunnel_of(reference))
            .collect()
    }

    fn for_ingress(&self, ingress: &Ingress) -> Vec<TunnelKey> {
        let reference = SourceRef {
            kind: SourceKindKey::Ingress,
            namespace: ingress.namespace().unwrap_or_default(),
            name: ingress.name_any(),
        };
        let tunnels = self.context.tunnel_names();
        let now = sources::ingress_tunnel(ingress)
            .and_then(|r| sources::resolve_tunnel(r, &reference.namespace, &tunnels));
        self.for_source(&reference, now)
    }

    fn for_route(&self, route: &HttpRoute) -> Vec<TunnelKey> {
        self.for_routes_in(std::iter::once(route))
    }

    /// The tunnels of the cached routes `which` selects.
    fn for_routes(&self, which: impl Fn(&HttpRoute) -> bool) -> Vec<TunnelKey> {
        let routes = self.context.routes.state();
        self.for_routes_in(routes.iter().map(|r| &**r).filter(|r| which(r)))
    }

    fn for_routes_in<'a>(&self, routes: impl Iterator<Item = &'a HttpRoute>) -> Vec<TunnelKey> {
        let tunnels = self.context.tunnel_names();
        let gateways = self.context.gateways(&tunnels);
        let mut keys = Vec::new();
        for route in routes {
            let reference = SourceRef {
                kind: SourceKindKey::HttpRoute,
                namespace: route.namespace().unwrap_or_default(),
                name: route.name_any(),
            };
            let now = gateway::bind_route(route, &tunnels, &gateways).tunnel;
            keys.extend(self.for_source(&reference, now));
        }
        keys.sort();
        keys.dedup();
        keys
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

    fn namespaced(keys: Vec<TunnelKey>) -> Vec<ObjectRef<Tunnel>> {
        keys.into_iter()
            .filter_map(|key| match key {
                TunnelKey::Namespaced { namespace, name } => {
                    Some(ObjectRef::new(&name).within(&namespace))
                }
                TunnelKey::Cluster { .. } => None,
            })
            .collect()
    }

    fn cluster(keys: Vec<TunnelKey>) -> Vec<ObjectRef<ClusterTunnel>> {
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
    let controller =
        controller.reconcile_all_on(crate::controller::plugin_changes(registry.subscribe()));
    crate::controller::run(
        controller,
        kind,
        tunnel_controller::reconcile,
        context,
        &reconciles,
        shutdown,
    )
    .await;
}
