//! Route sources — Ingresses and Gateway API HTTPRoutes — as the mapper sees
//! them: which tunnel each binds to, and its hosts, paths and backends with
//! their readiness. Pure: the controller passes what its caches hold.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Deserialize;

use super::gateway::{Gateways, ParentEntry, bind_route};
use super::types::Tunnel;
use knit_tunnel_core::{
    Backend, BackendState, OriginRequest, PathMatch, Route, Scheme, Source, SourceKind,
};

/// Names the tunnel a source binds to: `name` (a `Tunnel` of the source's
/// namespace, else the `ClusterTunnel`) or `namespace/name` (a `Tunnel`).
pub const TUNNEL_ANNOTATION: &str = "cf-operator.io/tunnel";
/// Annotations under this prefix set cloudflared's origin settings for
/// every route of the source, by cloudflared's names:
/// `origin.cf-operator.io/noTLSVerify: "true"`,
/// `origin.cf-operator.io/connectTimeout: 30s` (see `OriginRequest::KEYS`).
pub const ORIGIN_ANNOTATION_PREFIX: &str = "origin.cf-operator.io/";
/// The `ingressClassName` knit serves.
pub const INGRESS_CLASS: &str = "cloudflare-tunnel";
/// The old cloudflare-warp ingress controller's class annotation, still
/// honoured.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
pub const LEGACY_CLASS: &str = "cloudflare-warp";

/// A `Tunnel` or a `ClusterTunnel`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelKey {
    Namespaced { namespace: String, name: String },
    Cluster { name: String },
}

impl TunnelKey {
    pub fn name(&self) -> &str {
        match self {
            TunnelKey::Namespaced { name, .. } | TunnelKey::Cluster { name } => name,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            TunnelKey::Namespaced { namespace, .. } => Some(namespace),
            TunnelKey::Cluster { .. } => None,
        }
    }
}

impl std::fmt::Display for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelKey::Namespaced { namespace, name } => write!(f, "Tunnel {namespace}/{name}"),
            TunnelKey::Cluster { name } => write!(f, "ClusterTunnel {name}"),
        }
    }
}

/// How a source asks for its tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelRequest<'a> {
    /// By `cf-operator.io/tunnel`.
    Named(&'a str),
    /// A legacy-class Ingress without the annotation: as with the
    /// cloudflare-warp controller, it is served within its own namespace, by
    /// the namespace's one `Tunnel`.
    OwnNamespace,
}

/// The names of the `Tunnel`s of each namespace, as the caller's cache or
/// input holds them: made once per pass, then read for every source.
#[derive(Clone, Debug, Default)]
pub struct TunnelNames(BTreeMap<String, BTreeSet<String>>);

impl TunnelNames {
    pub fn of<'a>(tunnels: impl IntoIterator<Item = &'a Tunnel>) -> TunnelNames {
        let mut names = TunnelNames::default();
        for tunnel in tunnels {
            names
                .0
                .entry(tunnel.namespace().unwrap_or_default())
                .or_default()
                .insert(tunnel.name_any());
        }
        names
    }

    fn in_namespace(&self, namespace: &str) -> Option<&BTreeSet<String>> {
        self.0.get(namespace)
    }
}

/// Which tunnel a source in `namespace` asking by `request` binds to:
/// `ns/name` is always that `Tunnel`; a bare name is the `Tunnel` of the
/// source's namespace when there is one, else the `ClusterTunnel`; a legacy
/// Ingress binds to its namespace's `Tunnel` when there is exactly one, and
/// to none otherwise.
pub fn resolve_tunnel(
    request: TunnelRequest,
    namespace: &str,
    tunnels: &TunnelNames,
) -> Option<TunnelKey> {
    let local = tunnels.in_namespace(namespace);
    let annotation = match request {
        TunnelRequest::Named(annotation) => annotation,
        TunnelRequest::OwnNamespace => {
            let only = local.filter(|names| names.len() == 1)?.first()?;
            return Some(TunnelKey::Namespaced {
                namespace: namespace.into(),
                name: only.clone(),
            });
        }
    };
    if let Some((namespace, name)) = annotation.split_once('/') {
        return Some(TunnelKey::Namespaced {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    Some(if local.is_some_and(|names| names.contains(annotation)) {
        TunnelKey::Namespaced {
            namespace: namespace.into(),
            name: annotation.into(),
        }
    } else {
        TunnelKey::Cluster {
            name: annotation.into(),
        }
    })
}

/// How an Ingress of knit's class asks for its tunnel; `None` for other
/// classes, and for knit's class without the annotation.
pub fn ingress_tunnel(ingress: &Ingress) -> Option<TunnelRequest<'_>> {
    let class = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ingress
        .annotations()
        .get(LEGACY_CLASS_ANNOTATION)
        .map(String::as_str)
        == Some(LEGACY_CLASS);
    if class != Some(INGRESS_CLASS) && !legacy {
        return None;
    }
    match ingress.annotations().get(TUNNEL_ANNOTATION) {
        Some(name) => Some(TunnelRequest::Named(name)),
        None => legacy.then_some(TunnelRequest::OwnNamespace),
    }
}

/// How an HTTPRoute asks for its tunnel.
pub fn route_tunnel(route: &HttpRoute) -> Option<TunnelRequest<'_>> {
    route
        .annotations()
        .get(TUNNEL_ANNOTATION)
        .map(|s| TunnelRequest::Named(s))
}

pub use super::gateway::HttpRoute;

/// Which object a source is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    pub kind: SourceKindKey,
    pub namespace: String,
    pub name: String,
}

/// `SourceKind` as a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKindKey {
    Ingress,
    HttpRoute,
}

impl From<SourceKindKey> for SourceKind {
    fn from(kind: SourceKindKey) -> SourceKind {
        match kind {
            SourceKindKey::Ingress => SourceKind::Ingress,
            SourceKindKey::HttpRoute => SourceKind::HttpRoute,
        }
    }
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            SourceKindKey::Ingress => "Ingress",
            SourceKindKey::HttpRoute => "HTTPRoute",
        };
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

/// What the caches say about backends: Services by namespace and name, and
/// which Services have a ready endpoint.
pub struct Backends<'a> {
    pub service: &'a dyn Fn(&str, &str) -> Option<std::sync::Arc<Service>>,
    pub ready: &'a HashSet<(String, String)>,
    /// `knit simulate`: a Service the input lacks is taken to exist, with
    /// the port asked for and ready endpoints.
    pub assume_missing_ready: bool,
}

/// `(namespace, service)` of every Service with at least one ready endpoint
/// (an endpoint whose `ready` is unset counts as ready, as the API says).
pub fn ready_services<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashSet<(String, String)> {
    slices
        .into_iter()
        .filter(|slice| {
            slice
                .endpoints
                .iter()
                .flatten()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        })
        .filter_map(|slice| {
            let service = slice.labels().get("kubernetes.io/service-name")?;
            Some((slice.namespace()?, service.clone()))
        })
        .collect()
}

/// How cloudflared speaks to a Service port: its `appProtocol`, else its
/// name, when that is `https`, `tcp`, `ssh` or `rdp`; else HTTP.
fn port_scheme(port: &k8s_openapi::api::core::v1::ServicePort) -> Scheme {
    let named = |name: Option<&str>| {
        Scheme::ALL
            .into_iter()
            .find(|scheme| Some(scheme.name()) == name)
    };
    named(port.app_protocol.as_deref())
        .or_else(|| named(port.name.as_deref()))
        .unwrap_or(Scheme::Http)
}

/// A port of a Service, by number or by name.
enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

fn backend(namespace: &str, service_name: &str, port: PortRef<'_>, backends: &Backends) -> Backend {
    let missing = |port: u16, why: String| Backend {
        service: service_name.into(),
        port,
        scheme: Scheme::Http,
        state: BackendState::Missing(why),
    };
    let requested = match port {
        PortRef::Number(n) => u16::try_from(n).unwrap_or(0),
        PortRef::Name(_) => 0,
    };
    let Some(service) = (backends.service)(namespace, service_name) else {
        if backends.assume_missing_ready && requested != 0 {
            return Backend {
                service: service_name.into(),
                port: requested,
                scheme: Scheme::Http,
                state: BackendState::Ready,
            };
        }
        return missing(
            requested,
            format!("service {namespace}/{service_name} not found"),
        );
    };
    let spec = service.spec.clone().unwrap_or_default();
    let found = spec.ports.iter().flatten().find(|p| match port {
        PortRef::Number(n) => p.port == n,
        PortRef::Name(name) => p.name.as_deref() == Some(name),
    });
    let Some(found) = found else {
        let wanted = match port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(name) => format!("named {name}"),
        };
        return missing(
            requested,
            format!("service {namespace}/{service_name} has no port {wanted}"),
        );
    };
    let scheme = port_scheme(found);
    // An ExternalName service has no endpoints: cloudflared resolves it.
    let external = spec.type_.as_deref() == Some("ExternalName");
    Backend {
        service: service_name.into(),
        port: u16::try_from(found.port).unwrap_or(0),
        scheme,
        state: if external
            || backends
                .ready
                .contains(&(namespace.to_owned(), service_name.to_owned()))
        {
            BackendState::Ready
        } else {
            BackendState::NoReadyEndpoints
        },
    }
}

/// The origin settings a source's annotations ask for; an unknown setting or
/// a bad value refuses the source, naming the annotation.
fn origin_settings(meta: &ObjectMeta) -> Result<OriginRequest, String> {
    let mut origin = OriginRequest::default();
    for (key, value) in meta.annotations.iter().flatten() {
        if let Some(setting) = key.strip_prefix(ORIGIN_ANNOTATION_PREFIX) {
            origin
                .set(setting, value)
                .map_err(|why| format!("annotation {key}: {why}"))?;
        }
    }
    Ok(origin)
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// An Ingress as a source; an `Err` says why knit cannot serve it as
/// written (the whole Ingress is refused, never half-applied).
pub fn ingress_source(ingress: &Ingress, backends: &Backends) -> Result<Source, String> {
    let namespace = ingress.namespace().unwrap_or_default();
    let spec = ingress.spec.clone().unwrap_or_default();
    if spec.default_backend.is_some() {
        return Err(
            "defaultBackend is not supported: the tunnel's fallbackTarget answers requests no rule matches"
                .into(),
        );
    }
    let mut routes = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.clone().unwrap_or_default();
        let Some(http) = &rule.http else {
            return Err(format!("the rule for host {host:?} has no http paths"));
        };
        for path in &http.paths {
            let Some(service) = &path.backend.service else {
                return Err(format!(
                    "host {host:?}: resource backends are not supported, only services"
                ));
            };
            let port = match service.port.as_ref() {
                Some(p) if p.number.is_some() => PortRef::Number(p.number.unwrap_or_default()),
                Some(p) if p.name.is_some() => PortRef::Name(p.name.as_deref().unwrap_or_default()),
                _ => {
                    return Err(format!(
                        "host {host:?}: service {} has no port",
                        service.name
                    ));
                }
            };
            let matching = match path.path_type.as_str() {
                "Exact" => PathMatch::Exact,
                _ => PathMatch::Prefix,
            };
            routes.push(Route {
                host: host.clone(),
                path: Some((matching, path.path.clone().unwrap_or_else(|| "/".into()))),
                backend: backend(&namespace, &service.name, port, backends),
            });
        }
    }
    Ok(Source {
        origin: origin_settings(&ingress.metadata)?,
        kind: SourceKind::Ingress,
        namespace,
        name: ingress.name_any(),
        created: created(&ingress.metadata),
        routes,
    })
}

/// A source bound to a tunnel: what the mapper gets, or why the host
/// refused it before asking.
pub struct Bound {
    pub reference: SourceRef,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub source: Result<Source, String>,
    /// Its backend Services (a change of one wakes the tunnel).
    pub services: Vec<String>,
    /// An HTTPRoute's `parentRefs` as written, each with the entry knit
    /// writes for it (`gateway::bind_route`); none for an Ingress.
    pub parents: Vec<(serde_json::Value, Option<ParentEntry>)>,
}

/// Every Ingress and HTTPRoute bound to the tunnel `key` (by annotation,
/// or an HTTPRoute through a Gateway), in a stable order, with its
/// backends resolved.
pub fn bind<'a>(
    key: &TunnelKey,
    ingresses: impl Iterator<Item = &'a Ingress>,
    routes: impl Iterator<Item = &'a HttpRoute>,
    tunnels: &TunnelNames,
    gateways: &Gateways,
    backends: &Backends,
) -> Vec<Bound> {
    let mut bound = Vec::new();
    for ingress in ingresses {
        let namespace = ingress.namespace().unwrap_or_default();
        let Some(request) = ingress_tunnel(ingress) else {
            continue;
        };
        if resolve_tunnel(request, &namespace, tunnels).as_ref() != Some(key) {
            continue;
        }
        let source = ingress_source(ingress, backends);
        bound.push(Bound {
            reference: SourceRef {
                kind: SourceKindKey::Ingress,
                namespace,
                name: ingress.name_any(),
            },
            uid: ingress.uid(),
            generation: ingress.metadata.generation,
            services: backend_services(&source),
            source,
            parents: Vec::new(),
        });
    }
    for route in routes {
        let namespace = route.namespace().unwrap_or_default();
        let binding = bind_route(route, tunnels, gateways);
        if binding.tunnel.as_ref() != Some(key) {
            continue;
        }
        let source = if binding.served {
            http_route_source(route, &binding.hostnames, backends)
        } else {
            // Only told why its Gateways here do not take it.
            Err(binding
                .parents
                .iter()
                .find_map(|(_, entry)| match entry {
                    Some(ParentEntry::Refused { message, .. }) => Some(message.clone()),
                    _ => None,
                })
                .unwrap_or_default())
        };
        bound.push(Bound {
            reference: SourceRef {
                kind: SourceKindKey::HttpRoute,
                namespace,
                name: route.name_any(),
            },
            uid: route.uid(),
            generation: route.metadata.generation,
            services: backend_services(&source),
            source,
            parents: binding.parents,
        });
    }
    bound.sort_by(|a, b| a.reference.cmp(&b.reference));
    bound
}

fn backend_services(source: &Result<Source, String>) -> Vec<String> {
    let mut services: Vec<String> = source
        .iter()
        .flat_map(|s| s.routes.iter().map(|r| r.backend.service.clone()))
        .collect();
    services.sort();
    services.dedup();
    services
}

/// The parts of an HTTPRoute's spec knit reads; anything cloudflared cannot
/// express (header, query or method matches, filters, weighted or
/// cross-namespace backends) refuses the route with a message.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpRouteSpec {
    #[serde(default)]
    rules: Vec<HttpRouteRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRouteRule {
    #[serde(default)]
    matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    #[serde(default)]
    filters: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRouteMatch {
    path: Option<HttpPathMatch>,
    #[serde(default)]
    headers: Vec<serde_json::Value>,
    #[serde(default)]
    query_params: Vec<serde_json::Value>,
    method: Option<String>,
}

#[derive(Deserialize)]
struct HttpPathMatch {
    #[serde(rename = "type", default = "path_prefix")]
    type_: String,
    #[serde(default = "root")]
    value: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

fn root() -> String {
    "/".into()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRef {
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
    kind: Option<String>,
    group: Option<String>,
}

/// An HTTPRoute as a source for `hostnames` (its own, or those its
/// Gateway's listeners narrowed them to); an `Err` says why knit cannot
/// serve it.
pub fn http_route_source(
    route: &HttpRoute,
    hostnames: &[String],
    backends: &Backends,
) -> Result<Source, String> {
    let namespace = route.namespace().unwrap_or_default();
    let spec: HttpRouteSpec = match &route.spec {
        serde_json::Value::Null => HttpRouteSpec::default(),
        spec => serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?,
    };
    if hostnames.is_empty() {
        return Err(
            "an HTTPRoute served by a tunnel needs hostnames (its own or its listener's)".into(),
        );
    }
    let mut routes = Vec::new();
    for (index, rule) in spec.rules.iter().enumerate() {
        if !rule.filters.is_empty() {
            return Err(format!(
                "rules[{index}]: filters are not supported by cloudflared"
            ));
        }
        let [reference] = rule.backend_refs.as_slice() else {
            return Err(format!(
                "rules[{index}]: cloudflared sends a rule to one service; {} backendRefs given",
                rule.backend_refs.len()
            ));
        };
        let is_service = reference.kind.as_deref().unwrap_or("Service") == "Service"
            && reference.group.as_deref().unwrap_or("").is_empty();
        if !is_service {
            return Err(format!(
                "rules[{index}]: only Service backends are supported"
            ));
        }
        if reference
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            return Err(format!(
                "rules[{index}]: backendRefs in another namespace are not supported"
            ));
        }
        let Some(port) = reference.port else {
            return Err(format!("rules[{index}]: backendRefs[0] needs a port"));
        };
        let target = backend(&namespace, &reference.name, PortRef::Number(port), backends);
        let matches: Vec<(PathMatch, String)> = if rule.matches.is_empty() {
            vec![(PathMatch::Prefix, "/".into())]
        } else {
            let mut paths = Vec::new();
            for m in &rule.matches {
                if !m.headers.is_empty() || !m.query_params.is_empty() || m.method.is_some() {
                    return Err(format!(
                        "rules[{index}]: header, query and method matches are not supported by cloudflared"
                    ));
                }
                let path = match &m.path {
                    None => (PathMatch::Prefix, "/".into()),
                    Some(p) => {
                        let matching = match p.type_.as_str() {
                            "Exact" => PathMatch::Exact,
                            "RegularExpression" => PathMatch::RegularExpression,
                            _ => PathMatch::Prefix,
                        };
                        (matching, p.value.clone())
                    }
                };
                paths.push(path);
            }
            paths
        };
        for host in hostnames {
            for path in &matches {
                routes.push(Route {
                    host: host.clone(),
                    path: Some(path.clone()),
                    backend: target.clone(),
                });
            }
        }
    }
    Ok(Source {
        origin: origin_settings(&route.metadata)?,
        kind: SourceKind::HttpRoute,
        namespace,
        name: route.name_any(),
        created: created(&route.metadata),
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use rstest::rstest;
    use std::sync::Arc;

    fn service(name: &str, ports: &[(&str, i32)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: Some((*n).into()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn ingress(yaml: &str) -> Ingress {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn namespaced(namespace: &str, name: &str) -> Option<TunnelKey> {
        Some(TunnelKey::Namespaced {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    fn cluster(name: &str) -> Option<TunnelKey> {
        Some(TunnelKey::Cluster { name: name.into() })
    }

    /// Namespace `a` has one Tunnel `t`; `b` has none; `c` has two.
    fn tunnels() -> TunnelNames {
        let tunnel = |namespace: &str, name: &str| -> Tunnel {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
                "kind": "Tunnel",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"newTunnel": {"name": name},
                         "cloudflare": {"accountId": "acc", "domain": "example.com"}},
            }))
            .unwrap()
        };
        let all = [tunnel("a", "t"), tunnel("c", "t"), tunnel("c", "u")];
        TunnelNames::of(&all)
    }

    #[rstest]
    #[case::bare_name_is_the_local_tunnel(TunnelRequest::Named("t"), "a", namespaced("a", "t"))]
    #[case::bare_name_without_a_local_tunnel_is_the_cluster_tunnel(
        TunnelRequest::Named("t"),
        "b",
        cluster("t")
    )]
    #[case::qualified_name_is_that_tunnel(TunnelRequest::Named("a/t"), "b", namespaced("a", "t"))]
    #[case::legacy_ingress_takes_its_namespaces_one_tunnel(
        TunnelRequest::OwnNamespace,
        "a",
        namespaced("a", "t")
    )]
    #[case::legacy_ingress_without_a_local_tunnel_is_unbound(
        TunnelRequest::OwnNamespace,
        "b",
        None
    )]
    #[case::legacy_ingress_among_two_tunnels_is_unbound(TunnelRequest::OwnNamespace, "c", None)]
    fn tunnel_requests_resolve(
        #[case] request: TunnelRequest,
        #[case] namespace: &str,
        #[case] expected: Option<TunnelKey>,
    ) {
        assert_eq!(resolve_tunnel(request, namespace, &tunnels()), expected);
    }

    #[test]
    fn ingress_class_and_legacy_annotation_select_knit() {
        let ours = ingress(
            "metadata: {name: i, namespace: app, annotations: {cf-operator.io/tunnel: t}}\nspec: {ingressClassName: cloudflare-tunnel}",
        );
        assert_eq!(ingress_tunnel(&ours), Some(TunnelRequest::Named("t")));
        let legacy = ingress(
            "metadata: {name: i, namespace: app, annotations: {cf-operator.io/tunnel: t, kubernetes.io/ingress.class: cloudflare-warp}}",
        );
        assert_eq!(ingress_tunnel(&legacy), Some(TunnelRequest::Named("t")));
        let legacy_alone = ingress(
            "metadata: {name: i, namespace: app, annotations: {kubernetes.io/ingress.class: cloudflare-warp}}",
        );
        assert_eq!(
            ingress_tunnel(&legacy_alone),
            Some(TunnelRequest::OwnNamespace)
        );
        let ours_alone = ingress(
            "metadata: {name: i, namespace: app}\nspec: {ingressClassName: cloudflare-tunnel}",
        );
        assert_eq!(ingress_tunnel(&ours_alone), None);
        let other = ingress(
            "metadata: {name: i, namespace: app, annotations: {cf-operator.io/tunnel: t}}\nspec: {ingressClassName: nginx}",
        );
        assert_eq!(ingress_tunnel(&other), None);
    }

    #[test]
    fn ingress_backends_are_resolved_with_their_readiness() {
        let services = |ns: &str, name: &str| {
            (ns == "app" && name == "web").then(|| service("web", &[("http", 80), ("https", 443)]))
        };
        let ready: HashSet<_> = [("app".to_string(), "web".to_string())].into();
        let backends = Backends {
            service: &services,
            ready: &ready,
            assume_missing_ready: false,
        };
        let source = ingress_source(
            &ingress(
                r#"
metadata: {name: i, namespace: app}
spec:
  rules:
  - host: a.example.com
    http:
      paths:
      - {path: /api, pathType: Exact, backend: {service: {name: web, port: {name: https}}}}
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 81}}}}
      - {pathType: ImplementationSpecific, backend: {service: {name: gone, port: {number: 80}}}}
"#,
            ),
            &backends,
        )
        .unwrap();
        let got: Vec<_> = source
            .routes
            .iter()
            .map(|r| {
                (
                    r.path.clone().unwrap(),
                    r.backend.port,
                    r.backend.scheme,
                    r.backend.state.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    (PathMatch::Exact, "/api".into()),
                    443,
                    Scheme::Https,
                    BackendState::Ready
                ),
                (
                    (PathMatch::Prefix, "/".into()),
                    81,
                    Scheme::Http,
                    BackendState::Missing("service app/web has no port 81".into())
                ),
                (
                    (PathMatch::Prefix, "/".into()),
                    80,
                    Scheme::Http,
                    BackendState::Missing("service app/gone not found".into())
                ),
            ]
        );
    }

    fn port(name: Option<&str>, app_protocol: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(String::from),
            app_protocol: app_protocol.map(String::from),
            port: 22,
            ..Default::default()
        }
    }

    #[rstest]
    #[case::unnamed(port(None, None), Scheme::Http)]
    #[case::named_https(port(Some("https"), None), Scheme::Https)]
    #[case::app_protocol_https(port(Some("web"), Some("https")), Scheme::Https)]
    #[case::named_ssh(port(Some("ssh"), None), Scheme::Ssh)]
    #[case::app_protocol_rdp(port(None, Some("rdp")), Scheme::Rdp)]
    #[case::app_protocol_tcp(port(Some("db"), Some("tcp")), Scheme::Tcp)]
    #[case::app_protocol_wins_over_the_name(port(Some("https"), Some("http")), Scheme::Http)]
    #[case::unknown_app_protocol_falls_back_to_the_name(
        port(Some("ssh"), Some("kubernetes.io/h2c")),
        Scheme::Ssh
    )]
    fn service_ports_choose_the_scheme(#[case] port: ServicePort, #[case] expected: Scheme) {
        assert_eq!(port_scheme(&port), expected);
    }

    fn annotated(annotations: &[(&str, &str)]) -> Ingress {
        let mut ingress = ingress(
            "metadata: {name: i, namespace: app}\nspec: {rules: [{host: a.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]}",
        );
        ingress.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ingress
    }

    #[rstest]
    #[case::none(&[], Ok(OriginRequest::default()))]
    #[case::other_annotations_are_not_read(&[("cf-operator.io/tunnel", "t"), ("example.com/noTLSVerify", "maybe")], Ok(OriginRequest::default()))]
    #[case::settings(
        &[("origin.cf-operator.io/noTLSVerify", "true"), ("origin.cf-operator.io/connectTimeout", "2m"), ("origin.cf-operator.io/originServerName", "web.internal")],
        Ok(OriginRequest { no_tls_verify: Some(true), connect_timeout: Some(120), origin_server_name: Some("web.internal".into()), ..OriginRequest::default() })
    )]
    #[case::bad_value(&[("origin.cf-operator.io/keepAliveTimeout", "90")], Err("annotation origin.cf-operator.io/keepAliveTimeout: keepAliveTimeout \"90\": expected a whole number of seconds, minutes or hours, such as 30s, 2m or 1h"))]
    #[case::unknown_setting(&[("origin.cf-operator.io/proxyType", "socks")], Err("annotation origin.cf-operator.io/proxyType: unknown origin setting \"proxyType\": expected one of noTLSVerify, originServerName, caPool, httpHostHeader, connectTimeout, tlsTimeout, keepAliveTimeout, http2Origin, disableChunkedEncoding"))]
    fn origin_annotations_set_the_sources_origin(
        #[case] annotations: &[(&str, &str)],
        #[case] expected: Result<OriginRequest, &str>,
    ) {
        let services = |_: &str, name: &str| Some(service(name, &[("http", 80)]));
        let ready = HashSet::new();
        let backends = Backends {
            service: &services,
            ready: &ready,
            assume_missing_ready: false,
        };
        let source = ingress_source(&annotated(annotations), &backends);
        assert_eq!(source.map(|s| s.origin), expected.map_err(String::from));
    }

    #[test]
    fn http_routes_expand_hostnames_by_matches_and_refuse_what_cloudflared_cannot_do() {
        let services = |_: &str, name: &str| Some(service(name, &[("http", 8080)]));
        let ready = HashSet::new();
        let backends = Backends {
            service: &services,
            ready: &ready,
            assume_missing_ready: false,
        };
        let route = |spec: serde_json::Value| HttpRoute {
            metadata: ObjectMeta {
                name: Some("r".into()),
                namespace: Some("api".into()),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let hosts = |spec: &serde_json::Value| -> Vec<String> {
            serde_json::from_value(spec["hostnames"].clone()).unwrap_or_default()
        };
        let spec = serde_json::json!({
            "hostnames": ["api.example.com", "www.example.com"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": [{"name": "api-service", "port": 8080}]}]
        });
        let ok = http_route_source(&route(spec.clone()), &hosts(&spec), &backends).unwrap();
        assert_eq!(ok.routes.len(), 2);
        assert_eq!(ok.routes[0].backend.state, BackendState::NoReadyEndpoints);
        let refused = |spec: serde_json::Value| {
            http_route_source(&route(spec.clone()), &hosts(&spec), &backends).unwrap_err()
        };
        assert!(refused(serde_json::json!({"rules": []})).contains("needs hostnames"));
        assert!(
            refused(
                serde_json::json!({"hostnames": ["a.example.com"], "rules": [
                {"backendRefs": [{"name": "a", "port": 1}, {"name": "b", "port": 1}]}]})
            )
            .contains("2 backendRefs")
        );
        assert!(
            refused(
                serde_json::json!({"hostnames": ["a.example.com"], "rules": [
                {"matches": [{"headers": [{"name": "x", "value": "y"}]}],
                 "backendRefs": [{"name": "a", "port": 1}]}]})
            )
            .contains("header")
        );
    }
}
