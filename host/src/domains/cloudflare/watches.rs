//! One watch per kind, shared by every Cloudflare controller that needs it:
//! kube-runtime's shared reflector (`store_shared` + `reflect_shared`)
//! fills one store and feeds the controller of the kind, and the same
//! watch wakes the controllers that depend on the kind.
//!
//! A shared reflector's subscribers see applied objects only, which is what
//! a controller of the kind runs on (`Controller::new` does the same); a
//! controller woken by another kind also needs its deletions
//! (`Controller::watches` sees them). So the watch also fans the objects it
//! touched (applied or deleted) out on a broadcast channel. A receiver that
//! falls more than `BUFFER` objects behind misses the oldest wakes: the
//! objects they concern are reconciled again at the next resync.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::gateway::{Gateway, GatewayClass, HttpRoute};
use super::types::{ClusterTunnel, Tunnel, VirtualNetwork};
use crate::controller::{CachesReady, mark_listed};

/// Objects a watch holds for a slow subscriber before it waits (applied)
/// or drops the oldest (touched).
const BUFFER: usize = 1024;

/// One kind's watch: its store, its streams, and the future that drives it.
pub struct Watch<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    applied: ReflectHandle<K>,
    touched: broadcast::Sender<Arc<K>>,
    run: BoxFuture<'static, ()>,
}

/// A kind a controller can watch (and run on).
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync
{
}

impl<K: Watched> Watch<K> {
    /// Watches every object of `api`; raises `listed` (when given) once the
    /// store holds a full list.
    pub fn new(api: Api<K>, listed: Option<tokio::sync::watch::Sender<bool>>) -> Self {
        let (store, writer) = reflector::store_shared(BUFFER);
        let applied = writer.subscribe().expect("a shared store");
        let (touched, _) = broadcast::channel(BUFFER);
        let sender = touched.clone();
        let mut mark = listed.map(mark_listed);
        let run = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect_shared(writer)
            .inspect(move |event| {
                if let Some(mark) = &mut mark {
                    mark(event);
                }
                if sender.receiver_count() == 0 {
                    return;
                }
                if let Ok(
                    watcher::Event::Apply(object)
                    | watcher::Event::InitApply(object)
                    | watcher::Event::Delete(object),
                ) = event
                {
                    let _ = sender.send(Arc::new(object.clone()));
                }
            })
            .for_each(|_| async {});
        Watch {
            store,
            applied,
            touched,
            run: Box::pin(run),
        }
    }

    /// The objects applied (listed, created, changed): what a controller of
    /// the kind runs on.
    pub fn applied(&self) -> ReflectHandle<K> {
        self.applied.clone()
    }

    /// The objects applied or deleted, for a controller this kind wakes.
    pub fn touched(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::unfold(self.touched.subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(object) => return Some((object, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Drives the watch; call once every stream was taken.
    pub fn run(self) -> BoxFuture<'static, ()> {
        self.run
    }
}

/// The watches of the Cloudflare controllers, one per kind. `caches`
/// tracks the lists the tunnel controller reads.
pub struct Watches {
    pub tunnels: Watch<Tunnel>,
    pub cluster_tunnels: Watch<ClusterTunnel>,
    pub networks: Watch<VirtualNetwork>,
    pub ingresses: Watch<Ingress>,
    pub services: Watch<Service>,
    pub slices: Watch<EndpointSlice>,
    /// Only when the Gateway API is installed.
    pub gateway_api: Option<GatewayApiWatches>,
    pub caches: CachesReady,
}

/// The Gateway API's kinds, and the Namespaces whose labels a listener's
/// `allowedRoutes` may select.
pub struct GatewayApiWatches {
    pub routes: Watch<HttpRoute>,
    pub gateways: Watch<Gateway>,
    pub classes: Watch<GatewayClass>,
    pub namespaces: Watch<Namespace>,
}

/// The stores of the Gateway API's watches (empty without the API).
pub struct GatewayApiStores {
    pub routes: Store<HttpRoute>,
    pub gateways: Store<Gateway>,
    pub classes: Store<GatewayClass>,
    pub namespaces: Store<Namespace>,
}

impl Watches {
    pub async fn new(client: &Client) -> Self {
        let mut caches = CachesReady::default();
        let mut tracked = || Some(caches.track());
        let tunnels = Watch::new(Api::all(client.clone()), tracked());
        let cluster_tunnels = Watch::new(Api::all(client.clone()), tracked());
        let ingresses = Watch::new(Api::all(client.clone()), tracked());
        let services = Watch::new(Api::all(client.clone()), tracked());
        let slices = Watch::new(Api::all(client.clone()), tracked());
        let gateway_api = if gateway_api_installed(client).await {
            Some(GatewayApiWatches {
                routes: Watch::new(Api::all(client.clone()), tracked()),
                gateways: Watch::new(Api::all(client.clone()), tracked()),
                classes: Watch::new(Api::all(client.clone()), tracked()),
                namespaces: Watch::new(Api::all(client.clone()), tracked()),
            })
        } else {
            tracing::info!("the Gateway API is not installed: HTTPRoutes are not served");
            None
        };
        Watches {
            tunnels,
            cluster_tunnels,
            networks: Watch::new(Api::all(client.clone()), None),
            ingresses,
            services,
            slices,
            gateway_api,
            caches,
        }
    }

    /// The Gateway API's stores: empty without the API.
    pub fn gateway_api_stores(&self) -> GatewayApiStores {
        match &self.gateway_api {
            Some(w) => GatewayApiStores {
                routes: w.routes.store.clone(),
                gateways: w.gateways.store.clone(),
                classes: w.classes.store.clone(),
                namespaces: w.namespaces.store.clone(),
            },
            None => GatewayApiStores {
                routes: reflector::store_shared(1).0,
                gateways: reflector::store_shared(1).0,
                classes: reflector::store_shared(1).0,
                namespaces: reflector::store_shared(1).0,
            },
        }
    }

    /// Drives every watch; call once every stream was taken.
    pub async fn run(self) {
        let mut runs = vec![
            self.tunnels.run(),
            self.cluster_tunnels.run(),
            self.networks.run(),
            self.ingresses.run(),
            self.services.run(),
            self.slices.run(),
        ];
        if let Some(w) = self.gateway_api {
            runs.extend([
                w.routes.run(),
                w.gateways.run(),
                w.classes.run(),
                w.namespaces.run(),
            ]);
        }
        // A watch ends only when its stream does (never, but for shutdown).
        futures::future::select_all(runs).await;
    }
}

async fn gateway_api_installed(client: &Client) -> bool {
    client
        .list_api_group_resources("gateway.networking.k8s.io/v1")
        .await
        .is_ok_and(|list| {
            ["httproutes", "gateways", "gatewayclasses"]
                .iter()
                .all(|kind| list.resources.iter().any(|r| r.name == *kind))
        })
}
