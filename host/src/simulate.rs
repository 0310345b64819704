//! `knit simulate`: the controller's planning over manifests, with no cluster.
//! Prints a YAML stream of what the controller would do: children to apply,
//! each parent with the status it would write, and cloud operations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::domains::cloudflare::gateway;
use crate::domains::cloudflare::sources::{self as tunnel_sources, Backends, TunnelKey};
use crate::domains::cloudflare::tunnel_plan::{self, Observed, plan_tunnel};
use crate::domains::cloudflare::types::{
    ClusterTunnel, GROUP as CLOUDFLARE_GROUP, Tunnel, TunnelObject,
};
use crate::domains::ipam::plan::{overlapping_pool, plan_pool};
use crate::domains::ipam::types::{ADDRESS_ANNOTATION, IPAllocation, IPPool};
use crate::domains::tke_clb::cloud::TkeSettings;
use crate::domains::tke_clb::lb_queue::LbView;
use crate::domains::tke_clb::plan as clb_plan;
use crate::domains::tke_clb::types::{
    DedicatedCLBListener, DedicatedCLBListenerStatus, DedicatedCLBService, ListenerState,
    MISSPELLED_VERSION,
};
use crate::runtime::Registry;

/// The manifests read: known kinds parsed, the rest named so the user sees
/// what was ignored.
#[derive(Default)]
pub struct Manifests {
    pub pools: Vec<IPPool>,
    pub allocations: Vec<IPAllocation>,
    pub pods: Vec<Pod>,
    pub clb_services: Vec<DedicatedCLBService>,
    pub clb_listeners: Vec<DedicatedCLBListener>,
    pub tunnels: Vec<Tunnel>,
    pub cluster_tunnels: Vec<ClusterTunnel>,
    pub ingresses: Vec<k8s_openapi::api::networking::v1::Ingress>,
    pub http_routes: Vec<gateway::HttpRoute>,
    pub gateways: Vec<gateway::Gateway>,
    pub gateway_classes: Vec<gateway::GatewayClass>,
    pub namespaces: Vec<k8s_openapi::api::core::v1::Namespace>,
    pub services: Vec<k8s_openapi::api::core::v1::Service>,
    pub ignored: Vec<String>,
}

/// Reads files and directories (their `*.yaml`/`*.yml`, recursively, sorted).
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            manifests
                .add_stream(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
    }
    Ok(manifests)
}

impl Manifests {
    /// Adds every document of a YAML stream.
    pub fn add_stream(&mut self, text: &str) -> anyhow::Result<()> {
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            if !value.is_null() {
                self.add(value)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, value: Value) -> anyhow::Result<()> {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("knit.dev/v1alpha1", "IPPool") => self.pools.push(serde_json::from_value(value)?),
            ("knit.dev/v1alpha1", "IPAllocation") => {
                self.allocations.push(serde_json::from_value(value)?)
            }
            ("v1", "Pod") => self.pods.push(serde_json::from_value(value)?),
            (version, "DedicatedCLBService") if is_clb(version) => {
                self.clb_services.push(serde_json::from_value(value)?)
            }
            (version, "DedicatedCLBListener") if is_clb(version) => {
                self.clb_listeners.push(serde_json::from_value(value)?)
            }
            (version, "Tunnel") if version == format!("{CLOUDFLARE_GROUP}/v1alpha2") => {
                self.tunnels.push(serde_json::from_value(value)?)
            }
            (version, "ClusterTunnel") if version == format!("{CLOUDFLARE_GROUP}/v1alpha2") => {
                self.cluster_tunnels.push(serde_json::from_value(value)?)
            }
            ("networking.k8s.io/v1", "Ingress") => {
                self.ingresses.push(serde_json::from_value(value)?)
            }
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
                self.http_routes.push(serde_json::from_value(value)?)
            }
            ("gateway.networking.k8s.io/v1", "Gateway") => {
                self.gateways.push(serde_json::from_value(value)?)
            }
            ("gateway.networking.k8s.io/v1", "GatewayClass") => {
                self.gateway_classes.push(serde_json::from_value(value)?)
            }
            ("v1", "Service") => self.services.push(serde_json::from_value(value)?),
            ("v1", "Namespace") => self.namespaces.push(serde_json::from_value(value)?),
            _ => self.ignored.push(format!(
                "{api_version} {kind} {}",
                value["metadata"]["name"].as_str().unwrap_or("<unnamed>")
            )),
        }
        Ok(())
    }
}

/// The TKE CLB group, at its version or at the seed's misspelling of it.
fn is_clb(api_version: &str) -> bool {
    api_version == "networking.cloud.tencent.com/v1alpha1"
        || api_version == format!("networking.cloud.tencent.com/{MISSPELLED_VERSION}")
}

fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
        let entry = entry?.path();
        if entry.is_dir() {
            files.extend(yaml_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(entry);
        }
    }
    files.sort();
    Ok(files)
}

/// Plans every parent in `manifests`; returns the documents to print, each
/// with a comment saying what it is.
pub fn simulate(manifests: &Manifests, registry: &Registry, seed: u64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    // A fixed time keeps the output reproducible.
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    for pool in &manifests.pools {
        let plan = plan_pool(
            pool,
            &manifests.allocations,
            &manifests.pods,
            overlapping_pool(pool, &manifests.pools).as_deref(),
            registry,
            seed,
            now.clone(),
        );
        for allocation in &plan.allocations {
            out.push((
                format!(
                    "apply: address for pod {}/{}",
                    allocation.pod_namespace, allocation.pod_name
                ),
                serde_json::to_value(allocation.record(pool)).expect("allocations serialize"),
            ));
            out.push((
                format!(
                    "patch: pod {}/{} annotation",
                    allocation.pod_namespace, allocation.pod_name
                ),
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": allocation.pod_name,
                        "namespace": allocation.pod_namespace,
                        "annotations": { ADDRESS_ANNOTATION: allocation.address.to_string() },
                    },
                }),
            ));
        }
        for refusal in &plan.refused {
            tracing::warn!(pool = %pool.name_any(), pod = %refusal.pod, "no address: {}", refusal.refusal.message);
        }
        out.push((
            format!("status: IPPool {}", pool.name_any()),
            json!({
                "apiVersion": "knit.dev/v1alpha1",
                "kind": "IPPool",
                "metadata": { "name": pool.name_any() },
                "status": plan.status,
            }),
        ));
    }
    for service in &manifests.clb_services {
        out.extend(simulate_clb(service, manifests, registry, seed, &now));
    }
    for tunnel in &manifests.tunnels {
        let key = TunnelKey::Namespaced {
            namespace: tunnel.namespace().unwrap_or_else(|| "default".into()),
            name: tunnel.name_any(),
        };
        out.extend(simulate_tunnel(&key, tunnel, manifests, registry, &now));
    }
    for tunnel in &manifests.cluster_tunnels {
        let key = TunnelKey::Cluster {
            name: tunnel.name_any(),
        };
        out.extend(simulate_tunnel(&key, tunnel, manifests, registry, &now));
    }
    out
}

/// A tunnel planned by the controller's own `plan_tunnel` over the
/// Ingresses and HTTPRoutes of the input, as if its Cloudflare tunnel
/// existed (`<id of tunnel …>`, as IDs are only known to Cloudflare): the
/// cloudflared configuration it would put, the DNS records it would make,
/// each source's verdict, and the status it would write. Backends are taken
/// as ready (no endpoints are known offline); a Service the input lacks is
/// taken to exist.
fn simulate_tunnel<K: TunnelObject>(
    key: &TunnelKey,
    object: &K,
    manifests: &Manifests,
    registry: &Registry,
    now: &Time,
) -> Vec<(String, Value)> {
    let spec = object.tunnel_spec();
    let tunnel_name = spec
        .new_tunnel
        .as_ref()
        .map(|t| t.name.clone())
        .or_else(|| {
            spec.existing_tunnel
                .as_ref()
                .and_then(|t| t.name.clone().or(t.id.clone()))
        })
        .unwrap_or_default();
    let tunnel_id = format!("<id of tunnel {tunnel_name}>");
    let mut status = object.tunnel_status().cloned().unwrap_or_default();
    tunnel_plan::serving(
        &mut status,
        &tunnel_id,
        &tunnel_name,
        &spec.cloudflare.account_id,
    );
    let observed = Observed {
        object: Arc::new(object.clone()),
        key: key.clone(),
        tunnel_id,
        tunnel_name: tunnel_name.clone(),
        status,
        bound: bind_offline(key, manifests),
        live_digest: None,
        resync: std::time::Duration::ZERO,
        now: now.clone(),
    };
    let plan = plan_tunnel(&observed, registry);
    let mut metadata = json!({ "name": key.name() });
    if let Some(namespace) = key.namespace() {
        metadata["namespace"] = json!(namespace);
    }
    let kind = K::kind(&());
    let status = (
        format!("status: {key}"),
        json!({"apiVersion": format!("{CLOUDFLARE_GROUP}/v1alpha2"), "kind": kind,
               "metadata": metadata, "status": plan.status}),
    );
    if let Some(refusal) = &plan.refusal {
        tracing::warn!(tunnel = %key, reason = refusal.reason, "not planned: {}", refusal.message);
        return vec![status];
    }
    let records = plan
        .dns
        .iter()
        .map(|name| json!({"name": name, "type": "CNAME", "content": plan.cname_target, "proxied": true}))
        .collect();
    let sources = plan
        .sources
        .iter()
        .map(|s| json!({"source": s.reference.to_string(), "accepted": s.accepted, "reason": s.reason, "message": s.message}))
        .collect();
    vec![
        (
            format!("cloudflare: configuration of {key} (tunnel {tunnel_name})"),
            json!({ "config": plan.config }),
        ),
        (
            format!(
                "cloudflare: DNS records in {}",
                spec.cloudflare.domain.clone().unwrap_or_default()
            ),
            Value::Array(records),
        ),
        (format!("sources of {key}"), Value::Array(sources)),
        status,
    ]
}

/// The sources bound to a tunnel in the input.
fn bind_offline(key: &TunnelKey, manifests: &Manifests) -> Vec<tunnel_sources::Bound> {
    let tunnels = tunnel_sources::TunnelNames::of(&manifests.tunnels);
    let service = |namespace: &str, name: &str| {
        manifests
            .services
            .iter()
            .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
            .cloned()
            .map(std::sync::Arc::new)
    };
    let ready = manifests
        .services
        .iter()
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect();
    let backends = Backends {
        service: &service,
        ready: &ready,
        assume_missing_ready: true,
    };
    tunnel_sources::bind(
        key,
        manifests.ingresses.iter(),
        manifests.http_routes.iter(),
        &tunnels,
        &gateway::Gateways::of(
            &manifests.gateway_classes,
            &manifests.gateways,
            gateway::Labels::of(&manifests.namespaces),
            &tunnels,
        ),
        &backends,
    )
}

/// A `DedicatedCLBService` planned by the controller's own `plan_service`,
/// as if its CLBs were empty and every pod it selects were running, and
/// the listener controller bound each listener as planned
/// (`<VIP of lb-…>:port`, as VIPs are only known to the cloud): passes run
/// until nothing changes. Prints the listeners applied and deleted, the
/// addresses written on the pods, and the status of the last pass.
fn simulate_clb(
    service: &DedicatedCLBService,
    manifests: &Manifests,
    registry: &Registry,
    seed: u64,
    now: &Time,
) -> Vec<(String, Value)> {
    let name = service.name_any();
    let namespace = service.namespace();
    let pods: Vec<Arc<Pod>> = manifests
        .pods
        .iter()
        .filter(|p| clb_plan::selects(service, p))
        .map(|pod| {
            let mut pod = pod.clone();
            let status = pod.status.get_or_insert_default();
            if status.pod_ip.is_none() {
                status.pod_ip = Some("<pod IP>".into());
            }
            Arc::new(pod)
        })
        .collect();
    let empty = Arc::new(LbView {
        found: true,
        ..LbView::default()
    });
    let observed = clb_plan::Observed {
        service: Arc::new(service.clone()),
        pods,
        listeners: manifests
            .clb_listeners
            .iter()
            .cloned()
            .map(Arc::new)
            .collect(),
        lbs: clb_plan::lb_ids(service)
            .into_iter()
            .map(|id| (id.clone(), Some(empty.clone())))
            .collect(),
        region: service.spec.lb_region.clone().unwrap_or_default(),
        listener_quota: TkeSettings::DEFAULT_LISTENER_QUOTA,
        resync: TkeSettings::DEFAULT_RESYNC,
        view_max_age: TkeSettings::DEFAULT_RESYNC,
        now: now.clone(),
        seed,
        placement: Default::default(),
    };
    let (plan, applied, deleted, created) = settle_clb(observed, registry);
    if let Some(refusal) = &plan.refusal {
        tracing::warn!(service = %name, reason = refusal.reason, "{}", refusal.message);
    }
    for (pod, message) in &plan.waiting {
        tracing::warn!(service = %name, %pod, "{message}");
    }

    let mut out: Vec<(String, Value)> = created
        .into_iter()
        .map(|(id, parameters)| {
            (
                format!("create: CLB {id} (CreateLoadBalancer)"),
                Value::Object(parameters),
            )
        })
        .collect();
    out.extend(applied.iter().map(|listener| {
        let pod = listener.spec.backend_pod.as_ref();
        let comment = format!(
            "apply: listener {}:{}/{:?} for {}",
            listener.spec.lb_id,
            listener.spec.lb_port,
            listener.spec.protocol,
            pod.map_or("no pod (Available)", |b| b.pod_name.as_str())
        );
        (
            comment,
            serde_json::to_value(listener).expect("listeners serialize"),
        )
    }));
    for gone in &deleted {
        out.push((
            format!("delete: listener {gone}"),
            json!({"apiVersion": "networking.cloud.tencent.com/v1alpha1", "kind": "DedicatedCLBListener",
                   "metadata": {"name": gone, "namespace": namespace}}),
        ));
    }
    for (pod, annotation, address) in &plan.pod_addresses {
        out.push((
            format!("patch: pod {pod} address"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod, "namespace": namespace, "annotations": {annotation: address}}}),
        ));
    }
    out.push((
        format!("status: DedicatedCLBService {name}"),
        json!({"apiVersion": "networking.cloud.tencent.com/v1alpha1", "kind": "DedicatedCLBService",
               "metadata": {"name": name, "namespace": namespace}, "status": plan.status}),
    ));
    out
}

/// What `settle_clb` ends with: the last plan, the listener objects applied
/// (each as last applied), those deleted, and the CLBs created with their
/// `CreateLoadBalancer` parameters.
type Settled = (
    clb_plan::ServicePlan,
    Vec<DedicatedCLBListener>,
    Vec<String>,
    Vec<(String, serde_json::Map<String, Value>)>,
);

/// Plans passes over a service until nothing changes, binding each pass's
/// listeners as the listener controller would, and creating each CLB it
/// asks for (empty, named `<created CLB n>`).
fn settle_clb(mut observed: clb_plan::Observed, registry: &Registry) -> Settled {
    let mut applied: Vec<DedicatedCLBListener> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut created = Vec::new();
    // A handful of passes settle any service (the second pass of a fresh
    // one changes nothing; each CLB created takes one more).
    let mut plan = clb_plan::plan_service(&observed, registry);
    for _ in 0..8 {
        if let Some(parameters) = plan.create_lb.take() {
            let id = format!("<created CLB {}>", created.len() + 1);
            let mut service = (*observed.service).clone();
            let mut status = plan.status.clone();
            status.created_lb_ids.push(id.clone());
            service.status = Some(status);
            observed.service = Arc::new(service);
            let empty = LbView {
                found: true,
                ..LbView::default()
            };
            observed.lbs.push((id.clone(), Some(Arc::new(empty))));
            created.push((id, parameters));
        } else if plan.apply.is_empty() && plan.delete.is_empty() {
            break;
        }
        for mut listener in std::mem::take(&mut plan.apply) {
            listener.status = Some(DedicatedCLBListenerStatus {
                state: Some(if listener.spec.backend_pod.is_some() {
                    ListenerState::Bound
                } else {
                    ListenerState::Available
                }),
                address: Some(format!(
                    "<VIP of {}>:{}",
                    listener.spec.lb_id, listener.spec.lb_port
                )),
                ..Default::default()
            });
            let same = |l: &DedicatedCLBListener| l.name_any() == listener.name_any();
            observed.listeners.retain(|l| !same(l));
            applied.retain(|l| !same(l));
            observed.listeners.push(Arc::new(listener.clone()));
            applied.push(listener);
        }
        for gone in std::mem::take(&mut plan.delete) {
            observed.listeners.retain(|l| l.name_any() != gone);
            applied.retain(|l| l.name_any() != gone);
            deleted.push(gone);
        }
        plan = clb_plan::plan_service(&observed, registry);
    }
    (plan, applied, deleted, created)
}

/// The YAML stream `simulate` prints.
pub fn render(documents: &[(String, Value)]) -> String {
    let mut text = String::new();
    for (comment, document) in documents {
        text.push_str(&format!("---\n# {comment}\n"));
        text.push_str(&serde_yaml::to_string(document).expect("JSON values serialize"));
    }
    text
}
