//! What the tunnel controller keeps between passes and reads from: the
//! clients, the watch caches, which tunnel each source was bound to, what
//! each source was told, and when each tunnel's DNS was synced.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use super::account::Accounts;
use super::gateway::{Gateway, GatewayClass, Gateways, Labels};
use super::sources::{Bound, HttpRoute, SourceRef, TunnelKey, TunnelNames};
use super::types::{ClusterTunnel, Tunnel};
use crate::runtime::Registry;

pub struct Context {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub tunnels: Store<Tunnel>,
    pub cluster_tunnels: Store<ClusterTunnel>,
    pub ingresses: Store<Ingress>,
    pub routes: Store<HttpRoute>,
    pub gateways: Store<Gateway>,
    pub gateway_classes: Store<GatewayClass>,
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub recorder: Recorder,
    pub caches: crate::controller::CachesReady,
    /// Which tunnel each source and each backend Service was bound to at
    /// the last pass: a source that moves or goes wakes its old tunnel.
    pub bindings: Mutex<Bindings>,
    /// Per source, the verdict last told by an Event.
    pub told: Mutex<HashMap<SourceRef, String>>,
    /// Per tunnel, the DNS names last synced and when: an unchanged set is
    /// checked again only after the resync period.
    pub dns_synced: Mutex<HashMap<TunnelKey, DnsSynced>>,
    /// Per tunnel, when its live configuration was last compared with the
    /// wanted one: it is read again after the resync period, so an edit made
    /// in the dashboard is put back.
    pub config_checked: Mutex<HashMap<TunnelKey, Instant>>,
}

impl Context {
    /// The names of the cached `Tunnel`s, by namespace.
    pub fn tunnel_names(&self) -> TunnelNames {
        TunnelNames::of(self.tunnels.state().iter().map(|t| &**t))
    }

    /// The cached Gateways, indexed.
    pub fn gateways(&self, tunnels: &TunnelNames) -> Gateways {
        Gateways::of(
            self.gateway_classes.state().iter().map(|c| &**c),
            self.gateways.state().iter().map(|g| &**g),
            Labels::of(self.namespaces.state().iter().map(|n| &**n)),
            tunnels,
        )
    }
}

/// The DNS names last synced for a tunnel, its ID then, and when.
pub type DnsSynced = (Vec<String>, String, Instant);

#[derive(Default)]
pub struct Bindings {
    sources: HashMap<SourceRef, TunnelKey>,
    services: HashMap<(String, String), HashSet<TunnelKey>>,
}

impl Bindings {
    /// The tunnel `source` was bound to.
    pub fn tunnel_of(&self, source: &SourceRef) -> Option<TunnelKey> {
        self.sources.get(source).cloned()
    }

    /// The tunnels with a source whose backend is this Service.
    pub fn tunnels_of_service(&self, namespace: &str, name: &str) -> Vec<TunnelKey> {
        self.services
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Notes the sources bound to `key` now (and their Services); returns
    /// those that were bound to it and are not now.
    pub(super) fn record(&mut self, key: &TunnelKey, bound: &[Bound]) -> Vec<SourceRef> {
        let left = self
            .sources
            .iter()
            .filter(|(source, k)| *k == key && !bound.iter().any(|b| &b.reference == *source))
            .map(|(source, _)| source.clone())
            .collect();
        self.sources.retain(|_, k| k != key);
        for keys in self.services.values_mut() {
            keys.remove(key);
        }
        self.services.retain(|_, keys| !keys.is_empty());
        for source in bound {
            self.sources.insert(source.reference.clone(), key.clone());
            for service in &source.services {
                self.services
                    .entry((source.reference.namespace.clone(), service.clone()))
                    .or_default()
                    .insert(key.clone());
            }
        }
        left
    }
}
