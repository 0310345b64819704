//! The Gateway API, as knit serves it through tunnels (pure: the
//! controllers and `knit simulate` pass what they hold).
//!
//! - A `GatewayClass` is knit's when its `controllerName` is
//!   `CONTROLLER_NAME`; knit accepts it.
//! - A `Gateway` of such a class names its tunnel with
//!   `cf-operator.io/tunnel`, as a source does (a bare name is the `Tunnel`
//!   of its namespace, else the `ClusterTunnel`). Its listeners speak HTTP
//!   or HTTPS (the edge ends TLS); its status counts the routes attached to
//!   each listener.
//! - An `HTTPRoute` attaches through `parentRefs` by the Gateway API's
//!   rules: `sectionName` and `port` pick listeners, each listener's
//!   `allowedRoutes` must admit the route's namespace and kind, and the
//!   route's hostnames are narrowed to the listeners'. A route is served by
//!   one tunnel (a hostname's DNS record points at one), and the
//!   `cf-operator.io/tunnel` annotation still binds a route on its own.
//! - knit writes a `status.parents` entry only for a parent it controls.
//!   Per the Gateway API, a reference to a Gateway that does not exist or
//!   that another controller runs gets none, and is not served; only a
//!   route bound by the annotation (the seed's example) gets an entry for a
//!   Gateway that does not exist.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::sources::{Bound, TUNNEL_ANNOTATION};
use super::sources::{TunnelKey, TunnelNames, TunnelRequest, resolve_tunnel, route_tunnel};

/// The `controllerName` of knit's GatewayClasses, and of the route parent
/// status it writes.
pub const CONTROLLER_NAME: &str = "knit.dev/cloudflare-tunnel";
pub const GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway API kind kept as JSON: knit reads the few fields it serves
/// and writes its own status, without a Gateway API crate.
macro_rules! gateway_api_kind {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[serde_with::skip_serializing_none]
        #[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
        pub struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: Value,
            pub status: Option<Value>,
        }

        impl kube::Resource for $name {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_api_kind!(
    /// `HTTPRoute` (`gateway.networking.k8s.io/v1`).
    HttpRoute,
    "HTTPRoute",
    "httproutes",
    k8s_openapi::NamespaceResourceScope
);
gateway_api_kind!(
    /// `Gateway` (`gateway.networking.k8s.io/v1`).
    Gateway,
    "Gateway",
    "gateways",
    k8s_openapi::NamespaceResourceScope
);
gateway_api_kind!(
    /// `GatewayClass` (`gateway.networking.k8s.io/v1`).
    GatewayClass,
    "GatewayClass",
    "gatewayclasses",
    k8s_openapi::ClusterResourceScope
);

/// Whether knit runs the Gateways of `class`.
pub fn is_knit_class(class: &GatewayClass) -> bool {
    class.spec["controllerName"] == CONTROLLER_NAME
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GatewaySpec {
    #[serde(default)]
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    hostname: Option<String>,
    port: i32,
    protocol: String,
    #[serde(default)]
    allowed_routes: AllowedRoutes,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct AllowedRoutes {
    #[serde(default)]
    namespaces: RouteNamespaces,
    kinds: Option<Vec<RouteGroupKind>>,
}

#[derive(Deserialize, Clone, Debug)]
struct RouteNamespaces {
    #[serde(default = "same")]
    from: String,
    selector: Option<LabelSelector>,
}

impl Default for RouteNamespaces {
    fn default() -> Self {
        RouteNamespaces {
            from: same(),
            selector: None,
        }
    }
}

fn same() -> String {
    "Same".into()
}

#[derive(Deserialize, Clone, Debug)]
struct RouteGroupKind {
    group: Option<String>,
    kind: String,
}

impl RouteGroupKind {
    fn is_http_route(&self) -> bool {
        self.kind == "HTTPRoute" && self.group.as_deref().unwrap_or(GROUP) == GROUP
    }
}

impl Listener {
    /// Why knit cannot serve this listener, as the Gateway API names it.
    fn unsupported(&self) -> Option<(&'static str, String)> {
        (!matches!(self.protocol.as_str(), "HTTP" | "HTTPS")).then(|| {
            (
                "UnsupportedProtocol",
                format!(
                    "protocol {} is not served: a tunnel carries HTTP and HTTPS (the edge ends TLS)",
                    self.protocol
                ),
            )
        })
    }

    /// The route kinds asked for that knit does not serve.
    fn invalid_kinds(&self) -> Vec<String> {
        self.allowed_routes
            .kinds
            .iter()
            .flatten()
            .filter(|k| !k.is_http_route())
            .map(|k| k.kind.clone())
            .collect()
    }

    fn allows_http_routes(&self) -> bool {
        self.allowed_routes
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(RouteGroupKind::is_http_route))
    }

    fn allows_namespace(&self, gateway_namespace: &str, namespace: &str, labels: &Labels) -> bool {
        let allowed = &self.allowed_routes.namespaces;
        match allowed.from.as_str() {
            "All" => true,
            "Selector" => allowed
                .selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| s.matches(&labels.of_namespace(namespace))),
            _ => namespace == gateway_namespace,
        }
    }
}

/// The labels of each namespace (each has `kubernetes.io/metadata.name`,
/// as the API server sets it).
#[derive(Clone, Debug, Default)]
pub struct Labels(BTreeMap<String, BTreeMap<String, String>>);

impl Labels {
    pub fn of<'a>(namespaces: impl IntoIterator<Item = &'a Namespace>) -> Labels {
        Labels(
            namespaces
                .into_iter()
                .map(|ns| (ns.name_any(), ns.labels().clone()))
                .collect(),
        )
    }

    fn of_namespace(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self.0.get(namespace).cloned().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
        labels
    }
}

/// A Gateway of one of knit's classes.
#[derive(Clone, Debug)]
pub struct KnitGateway {
    pub namespace: String,
    pub name: String,
    pub listeners: Vec<Listener>,
    /// The tunnel it names, or why it names none.
    pub tunnel: Result<TunnelKey, String>,
}

/// The Gateways in a pass: knit's, parsed, and the names of the others.
/// Made once per pass, then read for every route.
#[derive(Clone, Debug, Default)]
pub struct Gateways {
    knit: BTreeMap<(String, String), KnitGateway>,
    others: BTreeSet<(String, String)>,
    labels: Labels,
}

impl Gateways {
    pub fn of<'a>(
        classes: impl IntoIterator<Item = &'a GatewayClass>,
        gateways: impl IntoIterator<Item = &'a Gateway>,
        labels: Labels,
        tunnels: &TunnelNames,
    ) -> Gateways {
        let knit_classes: BTreeSet<String> = classes
            .into_iter()
            .filter(|c| is_knit_class(c))
            .map(|c| c.name_any())
            .collect();
        let mut index = Gateways {
            labels,
            ..Default::default()
        };
        for gateway in gateways {
            let namespace = gateway.namespace().unwrap_or_default();
            let name = gateway.name_any();
            let spec: Result<GatewaySpec, _> = serde_json::from_value(gateway.spec.clone());
            let class = spec.as_ref().map(|s| s.gateway_class_name.as_str());
            if !class.is_ok_and(|class| knit_classes.contains(class)) {
                index.others.insert((namespace, name));
                continue;
            }
            let knit = match spec {
                Ok(spec) => KnitGateway {
                    tunnel: gateway_tunnel(gateway, tunnels),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    listeners: spec.listeners,
                },
                Err(e) => KnitGateway {
                    tunnel: Err(format!("spec: {e}")),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    listeners: Vec::new(),
                },
            };
            index.knit.insert((namespace, name), knit);
        }
        index
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&KnitGateway> {
        self.knit.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The Gateways of knit's classes.
    pub fn knit(&self) -> impl Iterator<Item = &KnitGateway> {
        self.knit.values()
    }
}

/// The tunnel a Gateway names by `cf-operator.io/tunnel`.
pub fn gateway_tunnel(gateway: &Gateway, tunnels: &TunnelNames) -> Result<TunnelKey, String> {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway
        .annotations()
        .get(TUNNEL_ANNOTATION)
        .ok_or_else(|| format!("annotation {TUNNEL_ANNOTATION} names no tunnel"))?;
    resolve_tunnel(TunnelRequest::Named(name), &namespace, tunnels)
        .ok_or_else(|| format!("annotation {TUNNEL_ANNOTATION} names no tunnel"))
}

/// A route's `parentRefs` entry, as knit reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

impl ParentRef {
    fn is_gateway(&self) -> bool {
        self.group.as_deref().unwrap_or(GROUP) == GROUP
            && self.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }
}

/// A route's parentRefs as written, each read (`None`: unreadable).
fn parent_refs(route: &HttpRoute) -> Vec<(Value, Option<ParentRef>)> {
    route.spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|value| (value.clone(), ParentRef::deserialize(value).ok()))
        .collect()
}

/// The `(namespace, name)` of every Gateway a route names as a parent.
pub fn parent_gateways(route: &HttpRoute) -> Vec<(String, String)> {
    let namespace = route.namespace().unwrap_or_default();
    parent_refs(route)
        .into_iter()
        .filter_map(|(_, parent)| parent.filter(ParentRef::is_gateway))
        .map(|p| (p.namespace.unwrap_or_else(|| namespace.clone()), p.name))
        .collect()
}

/// What one parentRef is to knit.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Parent {
    /// Through these listeners of a Gateway of knit's, to its tunnel, for
    /// these hostnames (none: the route's own, all of them).
    Attached {
        tunnel: TunnelKey,
        listeners: Vec<String>,
        hostnames: Vec<String>,
    },
    /// A Gateway of knit's that does not take the route, and why.
    Refused {
        tunnel: Option<TunnelKey>,
        reason: &'static str,
        message: String,
    },
    /// A Gateway that does not exist.
    Missing,
    /// Another controller's parent.
    Elsewhere,
}

/// The hostname a listener and a route hostname both match, by the Gateway
/// API's rules (`*.example.com` matches any name under `example.com`).
fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_owned());
    };
    let under = |name: &str, wildcard: &str| {
        name.strip_suffix(wildcard)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1)
    };
    match (listener.strip_prefix('*'), route.strip_prefix('*')) {
        _ if listener == route => Some(route.to_owned()),
        (Some(suffix), None) => under(route, &suffix[1..]).then(|| route.to_owned()),
        (None, Some(suffix)) => under(listener, &suffix[1..]).then(|| listener.to_owned()),
        (Some(l), Some(r)) if l.ends_with(r) => Some(listener.to_owned()),
        (Some(l), Some(r)) if r.ends_with(l) => Some(route.to_owned()),
        _ => None,
    }
}

/// What `parent` is to a route in `namespace` with `hostnames`.
fn attach(
    namespace: &str,
    hostnames: &[String],
    parent: &ParentRef,
    gateways: &Gateways,
) -> Parent {
    if !parent.is_gateway() {
        return Parent::Elsewhere;
    }
    let gateway_namespace = parent.namespace.as_deref().unwrap_or(namespace);
    let key = (gateway_namespace.to_owned(), parent.name.clone());
    let Some(gateway) = gateways.knit.get(&key) else {
        return if gateways.others.contains(&key) {
            Parent::Elsewhere
        } else {
            Parent::Missing
        };
    };
    let named = format!("Gateway {gateway_namespace}/{}", parent.name);
    let tunnel = match &gateway.tunnel {
        Ok(tunnel) => tunnel.clone(),
        Err(why) => {
            return Parent::Refused {
                tunnel: None,
                reason: "NoMatchingParent",
                message: format!("{named}: {why}"),
            };
        }
    };
    let refused = |reason, message: String| Parent::Refused {
        tunnel: Some(tunnel.clone()),
        reason,
        message: format!("{named}: {message}"),
    };
    let picked: Vec<&Listener> = gateway
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if picked.is_empty() {
        let mut wanted = Vec::new();
        wanted.extend(parent.section_name.as_ref().map(|s| format!("named {s}")));
        wanted.extend(parent.port.map(|p| format!("on port {p}")));
        return refused(
            "NoMatchingParent",
            format!("no listener {}", wanted.join(" ")),
        );
    }
    let allowing: Vec<&Listener> = picked
        .iter()
        .copied()
        .filter(|l| l.unsupported().is_none() && l.allows_http_routes())
        .filter(|l| l.allows_namespace(&gateway.namespace, namespace, &gateways.labels))
        .collect();
    if allowing.is_empty() {
        let names: Vec<&str> = picked.iter().map(|l| l.name.as_str()).collect();
        return refused(
            "NotAllowedByListeners",
            format!(
                "listener(s) {} do not allow HTTPRoutes from namespace {namespace}",
                names.join(", ")
            ),
        );
    }
    let mut listeners = Vec::new();
    let mut narrowed = BTreeSet::new();
    for listener in allowing {
        let hostname = listener.hostname.as_deref();
        if hostnames.is_empty() {
            listeners.push(listener.name.clone());
            narrowed.extend(hostname.map(str::to_owned));
            continue;
        }
        let matched: Vec<String> = hostnames
            .iter()
            .filter_map(|h| intersect(hostname, h))
            .collect();
        if !matched.is_empty() {
            listeners.push(listener.name.clone());
            narrowed.extend(matched);
        }
    }
    if listeners.is_empty() {
        return refused(
            "NoMatchingListenerHostname",
            format!("no listener's hostname matches {}", hostnames.join(", ")),
        );
    }
    Parent::Attached {
        tunnel,
        listeners,
        hostnames: narrowed.into_iter().collect(),
    }
}

/// The entry knit writes for a parentRef.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentEntry {
    /// Told the route's verdict from the tunnel.
    Served,
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// How a route binds: its tunnel, its hostnames there, and per parentRef
/// (as written) the entry knit writes, if any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteBinding {
    pub tunnel: Option<TunnelKey>,
    /// Whether the tunnel serves it (else it is only told why not).
    pub served: bool,
    pub hostnames: Vec<String>,
    pub parents: Vec<(Value, Option<ParentEntry>)>,
}

/// A route's hostnames as written.
pub fn route_hostnames(route: &HttpRoute) -> Vec<String> {
    route.spec["hostnames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect()
}

/// How `route` binds: by `cf-operator.io/tunnel`, else through its first
/// parent of knit's that takes it.
pub fn bind_route(route: &HttpRoute, tunnels: &TunnelNames, gateways: &Gateways) -> RouteBinding {
    let namespace = route.namespace().unwrap_or_default();
    let own_hostnames = route_hostnames(route);
    let (written, parents): (Vec<Value>, Vec<Parent>) = parent_refs(route)
        .into_iter()
        .map(|(value, parent)| {
            let parent = match parent {
                Some(parent) => attach(&namespace, &own_hostnames, &parent, gateways),
                None => Parent::Elsewhere,
            };
            (value, parent)
        })
        .unzip();
    let annotated = route_tunnel(route).and_then(|r| resolve_tunnel(r, &namespace, tunnels));
    let attached = parents.iter().find_map(|p| match p {
        Parent::Attached { tunnel, .. } => Some(tunnel.clone()),
        _ => None,
    });
    let refused = parents.iter().find_map(|p| match p {
        Parent::Refused { tunnel, .. } => tunnel.clone(),
        _ => None,
    });
    let tunnel = annotated.clone().or(attached.clone()).or(refused);
    let mut hostnames = BTreeSet::new();
    let entries = parents
        .iter()
        .zip(written)
        .map(|(parent, written)| {
            let entry = match parent {
                Parent::Attached {
                    tunnel: via,
                    hostnames: names,
                    ..
                } if Some(via) == tunnel.as_ref() => {
                    hostnames.extend(names.iter().cloned());
                    Some(ParentEntry::Served)
                }
                Parent::Attached { tunnel: via, .. } => Some(ParentEntry::Refused {
                    reason: "TunnelConflict",
                    message: format!(
                        "the route is served by {}; its Gateway here serves {via}, and a hostname's DNS record points at one tunnel",
                        tunnel.as_ref().map(ToString::to_string).unwrap_or_default()
                    ),
                }),
                Parent::Refused {
                    reason, message, ..
                } => Some(ParentEntry::Refused {
                    reason,
                    message: message.clone(),
                }),
                Parent::Missing if annotated.is_some() => Some(ParentEntry::Served),
                Parent::Missing | Parent::Elsewhere => None,
            };
            (written, entry)
        })
        .collect();
    RouteBinding {
        served: annotated.is_some() || attached.is_some(),
        hostnames: if annotated.is_some() {
            own_hostnames
        } else {
            hostnames.into_iter().collect()
        },
        tunnel,
        parents: entries,
    }
}

/// What a route is told for the parents knit writes.
pub struct RouteVerdict<'a> {
    pub accepted: bool,
    pub reason: &'a str,
    pub message: &'a str,
    /// A backend Service or port that does not exist.
    pub backend_missing: Option<&'a str>,
    pub generation: Option<i64>,
}

/// The route's `status.parents`: knit's entries for `parents`, other
/// controllers' entries kept; `None` when nothing changed.
pub fn route_parents(
    current: &[Value],
    parents: &[(Value, Option<ParentEntry>)],
    verdict: &RouteVerdict,
    now: &str,
) -> Option<Vec<Value>> {
    let mut written: Vec<Value> = current
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    for (parent_ref, entry) in parents {
        let Some(entry) = entry else { continue };
        let previous = current
            .iter()
            .find(|p| p["controllerName"] == CONTROLLER_NAME && &p["parentRef"] == parent_ref);
        let (accepted, reason, message) = match entry {
            ParentEntry::Served if verdict.accepted => (true, "Accepted", verdict.message),
            ParentEntry::Served => (false, verdict.reason, verdict.message),
            ParentEntry::Refused { reason, message } => (false, *reason, message.as_str()),
        };
        let resolved = match verdict.backend_missing {
            None => condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend resolved",
                verdict.generation,
                previous,
                now,
            ),
            Some(why) => condition(
                "ResolvedRefs",
                false,
                "BackendNotFound",
                why,
                verdict.generation,
                previous,
                now,
            ),
        };
        written.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", accepted, reason, message, verdict.generation, previous, now),
                resolved,
            ],
        }));
    }
    let unchanged = same_status(
        &Value::Array(written.clone()),
        Some(&Value::Array(current.to_vec())),
    );
    (!unchanged).then_some(written)
}

/// A condition; its transition time is kept from `previous` while its
/// status holds.
fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": since,
    })
}

/// How a tunnel stands, as a Gateway's `Programmed` condition tells it.
pub struct TunnelStanding {
    /// Its `Ready` condition, when it exists.
    pub ready: Option<(bool, String)>,
    /// `<id>.cfargotunnel.com`, once the tunnel exists.
    pub address: Option<String>,
}

/// A Gateway of knit's status: `Accepted` (it names a tunnel), `Programmed`
/// (the tunnel serves), its address, and per listener the routes attached.
/// `attached` are the attachments of every route in the cluster.
pub fn gateway_status(
    gateway: &KnitGateway,
    generation: Option<i64>,
    attached: &[RouteAttachment],
    standing: &TunnelStanding,
    current: Option<&Value>,
    now: &str,
) -> Value {
    let previous = |type_: &str| -> Option<Value> {
        let conditions = current?["conditions"].as_array()?;
        Some(
            json!({"conditions": conditions.iter().filter(|c| c["type"] == type_).cloned().collect::<Vec<_>>()}),
        )
    };
    let (accepted, accepted_reason, accepted_message) = match &gateway.tunnel {
        Ok(tunnel) => (true, "Accepted", format!("served by {tunnel}")),
        Err(why) => (false, "InvalidParameters", why.clone()),
    };
    let (programmed, programmed_reason, programmed_message) =
        match (&gateway.tunnel, &standing.ready) {
            (Err(_), _) => (false, "Invalid", "the Gateway names no tunnel".to_owned()),
            (Ok(tunnel), None) => (false, "Pending", format!("{tunnel} does not exist")),
            (Ok(_), Some((true, _))) => (true, "Programmed", "the tunnel serves".to_owned()),
            (Ok(tunnel), Some((false, why))) => {
                (false, "Pending", format!("{tunnel} is not ready: {why}"))
            }
        };
    let cond = |type_: &str, ok: bool, reason: &str, message: &str, previous: Option<Value>| {
        condition(
            type_,
            ok,
            reason,
            message,
            generation,
            previous.as_ref(),
            now,
        )
    };
    let listeners: Vec<Value> = gateway
        .listeners
        .iter()
        .map(|listener| {
            let previous = current
                .and_then(|c| c["listeners"].as_array())
                .and_then(|ls| ls.iter().find(|l| l["name"] == listener.name.as_str()))
                .cloned();
            let attached = attached
                .iter()
                .filter(|a| {
                    a.namespace == gateway.namespace
                        && a.name == gateway.name
                        && a.listeners.contains(&listener.name)
                })
                .count();
            let invalid_kinds = listener.invalid_kinds();
            let (ok, reason, message) = match listener.unsupported() {
                Some((reason, message)) => (false, reason, message),
                None => (true, "Accepted", "the listener is served".to_owned()),
            };
            let (resolved, resolved_reason, resolved_message) = if invalid_kinds.is_empty() {
                (true, "ResolvedRefs", "every reference resolved".to_owned())
            } else {
                (
                    false,
                    "InvalidRouteKinds",
                    format!("route kinds {} are not served; HTTPRoute is", invalid_kinds.join(", ")),
                )
            };
            let supported = if listener.allows_http_routes() && ok {
                json!([{"group": GROUP, "kind": "HTTPRoute"}])
            } else {
                json!([])
            };
            json!({
                "name": listener.name,
                "supportedKinds": supported,
                "attachedRoutes": attached,
                "conditions": [
                    cond("Accepted", ok, reason, &message, previous.clone()),
                    cond("Programmed", ok && programmed, if ok { programmed_reason } else { "Invalid" }, &programmed_message, previous.clone()),
                    cond("ResolvedRefs", resolved, resolved_reason, &resolved_message, previous.clone()),
                    cond("Conflicted", false, "NoConflicts", "no conflicts", previous),
                ],
            })
        })
        .collect();
    let addresses: Vec<Value> = standing
        .address
        .iter()
        .map(|a| json!({"type": "Hostname", "value": a}))
        .collect();
    json!({
        "addresses": addresses,
        "conditions": [
            cond("Accepted", accepted, accepted_reason, &accepted_message, previous("Accepted")),
            cond("Programmed", programmed, programmed_reason, &programmed_message, previous("Programmed")),
        ],
        "listeners": listeners,
    })
}

/// Through which listeners of which Gateway a route is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAttachment {
    pub namespace: String,
    pub name: String,
    pub listeners: Vec<String>,
}

/// The listeners each parentRef of `route` attached to.
pub fn attachments(route: &HttpRoute, gateways: &Gateways) -> Vec<RouteAttachment> {
    let namespace = route.namespace().unwrap_or_default();
    let hostnames = route_hostnames(route);
    parent_refs(route)
        .into_iter()
        .filter_map(|(_, parent)| parent)
        .filter_map(
            |parent| match attach(&namespace, &hostnames, &parent, gateways) {
                Parent::Attached { listeners, .. } => Some(RouteAttachment {
                    namespace: parent.namespace.unwrap_or_else(|| namespace.clone()),
                    name: parent.name,
                    listeners,
                }),
                _ => None,
            },
        )
        .collect()
}

/// The status of one of knit's GatewayClasses.
pub fn class_status(generation: Option<i64>, current: Option<&Value>, now: &str) -> Value {
    let previous = current.cloned();
    json!({
        "conditions": [condition(
            "Accepted",
            true,
            "Accepted",
            "knit serves this class's Gateways through Cloudflare tunnels",
            generation,
            previous.as_ref(),
            now,
        )],
    })
}

/// The first backend of a bound source that does not exist, if any.
pub fn missing_backend(bound: &Bound) -> Option<String> {
    bound
        .source
        .as_ref()
        .ok()?
        .routes
        .iter()
        .find_map(|r| match &r.backend.state {
            knit_tunnel_core::BackendState::Missing(why) => Some(why.clone()),
            _ => None,
        })
}

/// Whether two statuses say the same, transition times aside.
pub fn same_status(a: &Value, b: Option<&Value>) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        let mut stack = vec![&mut v];
        while let Some(node) = stack.pop() {
            match node {
                Value::Object(map) => {
                    map.remove("lastTransitionTime");
                    stack.extend(map.values_mut());
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                _ => {}
            }
        }
        v
    };
    b.is_some_and(|b| strip(a) == strip(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::no_listener_hostname(None, "api.example.com", Some("api.example.com"))]
    #[case::equal("api.example.com", "api.example.com", Some("api.example.com"))]
    #[case::listener_wildcard_takes_a_subdomain(
        "*.example.com",
        "api.example.com",
        Some("api.example.com")
    )]
    #[case::listener_wildcard_takes_deeper_names(
        "*.example.com",
        "a.b.example.com",
        Some("a.b.example.com")
    )]
    #[case::listener_wildcard_not_the_apex("*.example.com", "example.com", None)]
    #[case::listener_wildcard_not_a_lookalike("*.example.com", "badexample.com", None)]
    #[case::route_wildcard_takes_the_listeners_name(
        "api.example.com",
        "*.example.com",
        Some("api.example.com")
    )]
    #[case::narrower_wildcard_wins("*.example.com", "*.api.example.com", Some("*.api.example.com"))]
    #[case::narrower_listener_wildcard_wins(
        "*.api.example.com",
        "*.example.com",
        Some("*.api.example.com")
    )]
    #[case::different_names("api.example.com", "www.example.com", None)]
    fn hostnames_intersect_by_the_gateway_api_rules(
        #[case] listener: impl Into<Option<&'static str>>,
        #[case] route: &str,
        #[case] expected: Option<&str>,
    ) {
        assert_eq!(intersect(listener.into(), route).as_deref(), expected);
    }

    fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
        serde_json::from_value(value).expect("an object")
    }

    /// Classes `knit` (knit's) and `other`; in namespace `edge`: `web`
    /// (knit's, on ClusterTunnel `shared`: listener `http` on port 80 for
    /// `*.example.com` from every namespace, `local` on 8080 from its own,
    /// `tcp` on 9000, `team` on 8443 from namespaces labelled `team: a`),
    /// `nameless` (knit's, naming no tunnel), `theirs` (class `other`).
    /// Namespace `app` is labelled `team: a`.
    fn gateways() -> Gateways {
        let classes: Vec<GatewayClass> = vec![
            object(
                json!({"metadata": {"name": "knit"}, "spec": {"controllerName": CONTROLLER_NAME}}),
            ),
            object(
                json!({"metadata": {"name": "other"}, "spec": {"controllerName": "example.com/other"}}),
            ),
        ];
        let listeners = json!([
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "local", "port": 8080, "protocol": "HTTP"},
            {"name": "tcp", "port": 9000, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "team", "port": 8443, "protocol": "HTTPS",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}},
        ]);
        let gateway = |name: &str, class: &str, tunnel: Option<&str>| -> Gateway {
            let annotations: BTreeMap<&str, &str> =
                tunnel.map(|t| (TUNNEL_ANNOTATION, t)).into_iter().collect();
            object(json!({
                "metadata": {"name": name, "namespace": "edge", "annotations": annotations},
                "spec": {"gatewayClassName": class, "listeners": listeners},
            }))
        };
        let gateways = [
            gateway("web", "knit", Some("shared")),
            gateway("nameless", "knit", None),
            gateway("theirs", "other", Some("shared")),
        ];
        let namespaces: Vec<Namespace> = vec![object(
            json!({"metadata": {"name": "app", "labels": {"team": "a"}}}),
        )];
        Gateways::of(
            &classes,
            &gateways,
            Labels::of(&namespaces),
            &TunnelNames::default(),
        )
    }

    fn route(annotation: Option<&str>, hostnames: &[&str], parents: Value) -> HttpRoute {
        let annotations: BTreeMap<&str, &str> = annotation
            .map(|t| (TUNNEL_ANNOTATION, t))
            .into_iter()
            .collect();
        object(json!({
            "metadata": {"name": "r", "namespace": "app", "annotations": annotations},
            "spec": {"hostnames": hostnames, "parentRefs": parents},
        }))
    }

    #[rstest]
    #[case::attached_through_a_listener(None, &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "http"}]),
        Some("shared"), true, &["api.example.com"], &["Served"])]
    #[case::hostnames_narrowed_to_the_listeners(None, &["api.example.com", "api.example.org"],
        json!([{"name": "web", "namespace": "edge", "port": 80}]),
        Some("shared"), true, &["api.example.com"], &["Served"])]
    #[case::no_hostnames_take_the_listeners(None, &[],
        json!([{"name": "web", "namespace": "edge", "sectionName": "http"}]),
        Some("shared"), true, &["*.example.com"], &["Served"])]
    #[case::namespace_selected_by_labels(None, &["team.example.net"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "team"}]),
        Some("shared"), true, &["team.example.net"], &["Served"])]
    #[case::namespace_not_allowed(None, &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "local"}]),
        Some("shared"), false, &[], &["NotAllowedByListeners"])]
    #[case::protocol_not_served(None, &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "tcp"}]),
        Some("shared"), false, &[], &["NotAllowedByListeners"])]
    #[case::no_such_section(None, &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "grpc"}]),
        Some("shared"), false, &[], &["NoMatchingParent"])]
    #[case::no_such_port(None, &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "port": 443}]),
        Some("shared"), false, &[], &["NoMatchingParent"])]
    #[case::no_hostname_in_common(None, &["api.example.org"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "http"}]),
        Some("shared"), false, &[], &["NoMatchingListenerHostname"])]
    #[case::gateway_names_no_tunnel(None, &["api.example.com"],
        json!([{"name": "nameless", "namespace": "edge"}]),
        None, false, &[], &["NoMatchingParent"])]
    #[case::another_controllers_gateway(None, &["api.example.com"],
        json!([{"name": "theirs", "namespace": "edge"}]),
        None, false, &[], &["-"])]
    #[case::gateway_missing(None, &["api.example.com"],
        json!([{"name": "gone", "namespace": "edge"}]),
        None, false, &[], &["-"])]
    #[case::gateway_missing_but_annotated(Some("shared"), &["api.example.com"],
        json!([{"name": "cloudflare-gateway", "kind": "Gateway"}]),
        Some("shared"), true, &["api.example.com"], &["Served"])]
    #[case::annotated_and_attached_elsewhere(Some("mine"), &["api.example.com"],
        json!([{"name": "web", "namespace": "edge", "sectionName": "http"}, {"name": "theirs", "namespace": "edge"}]),
        Some("mine"), true, &["api.example.com"], &["TunnelConflict", "-"])]
    #[case::not_a_gateway(None, &["api.example.com"],
        json!([{"name": "svc", "kind": "Service", "group": ""}]),
        None, false, &[], &["-"])]
    /// Expected: the tunnel, whether it serves the route, the hostnames
    /// served, and per parent its entry (a reason, `Served`, or `-`: none).
    fn routes_attach_by_the_gateway_api_rules(
        #[case] annotation: Option<&str>,
        #[case] hostnames: &[&str],
        #[case] parents: Value,
        #[case] tunnel: Option<&str>,
        #[case] served: bool,
        #[case] names: &[&str],
        #[case] entries: &[&str],
    ) {
        let binding = bind_route(
            &route(annotation, hostnames, parents),
            &TunnelNames::default(),
            &gateways(),
        );
        assert_eq!(binding.tunnel.as_ref().map(TunnelKey::name), tunnel);
        assert_eq!(binding.served, served);
        if served {
            assert_eq!(binding.hostnames, names);
        }
        let got: Vec<&str> = binding
            .parents
            .iter()
            .map(|(_, entry)| match entry {
                None => "-",
                Some(ParentEntry::Served) => "Served",
                Some(ParentEntry::Refused { reason, .. }) => reason,
            })
            .collect();
        assert_eq!(got, entries);
    }

    fn verdict(backend_missing: Option<&str>) -> RouteVerdict<'_> {
        RouteVerdict {
            accepted: true,
            reason: "Accepted",
            message: "served by the tunnel",
            backend_missing,
            generation: Some(2),
        }
    }

    #[test]
    fn route_parents_keep_other_controllers_entries_and_report_missing_backends() {
        let theirs = json!({"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []});
        let parent = json!({"name": "web", "namespace": "edge"});
        let parents = [
            (parent.clone(), Some(ParentEntry::Served)),
            (json!({"name": "y"}), None),
        ];
        let written = route_parents(
            std::slice::from_ref(&theirs),
            &parents,
            &verdict(Some("service app/api not found")),
            "t1",
        )
        .expect("a change");
        assert_eq!(written.len(), 2);
        assert_eq!(written[0], theirs);
        assert_eq!(written[1]["parentRef"], parent);
        let conditions = &written[1]["conditions"];
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(
            (
                conditions[1]["status"].as_str(),
                conditions[1]["reason"].as_str()
            ),
            (Some("False"), Some("BackendNotFound"))
        );
        // Said again: nothing to write.
        assert_eq!(
            route_parents(
                &written,
                &parents,
                &verdict(Some("service app/api not found")),
                "t2"
            ),
            None
        );
        // Resolved: the Accepted condition keeps its transition time.
        let resolved = route_parents(&written, &parents, &verdict(None), "t3").expect("a change");
        assert_eq!(resolved[1]["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(resolved[1]["conditions"][1]["lastTransitionTime"], "t3");
        assert_eq!(resolved[1]["conditions"][1]["reason"], "ResolvedRefs");
        // No longer knit's: only the other controller's entry stays.
        assert_eq!(
            route_parents(&resolved, &[], &verdict(None), "t4"),
            Some(vec![theirs])
        );
    }

    #[test]
    fn gateway_status_counts_attached_routes_and_follows_its_tunnel() {
        let gateways = gateways();
        let web = gateways.get("edge", "web").expect("web");
        let routes = [
            route(
                None,
                &["a.example.com"],
                json!([{"name": "web", "namespace": "edge", "sectionName": "http"}]),
            ),
            route(
                None,
                &["b.example.com"],
                json!([{"name": "web", "namespace": "edge"}]),
            ),
            route(
                None,
                &["c.example.com"],
                json!([{"name": "web", "namespace": "edge", "sectionName": "local"}]),
            ),
        ];
        let attached: Vec<RouteAttachment> = routes
            .iter()
            .flat_map(|r| attachments(r, &gateways))
            .collect();
        let serving = TunnelStanding {
            ready: Some((true, "ok".into())),
            address: Some("id.cfargotunnel.com".into()),
        };
        let status = gateway_status(web, Some(1), &attached, &serving, None, "t");
        let listener = |name: &str| {
            status["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == name)
                .unwrap()
                .clone()
        };
        // Two routes through `http`; one through `team` (the second route
        // names no section and `team` admits `app`); `local` admits none.
        assert_eq!(listener("http")["attachedRoutes"], 2);
        assert_eq!(listener("team")["attachedRoutes"], 1);
        assert_eq!(listener("local")["attachedRoutes"], 0);
        assert_eq!(
            listener("tcp")["conditions"][0]["reason"],
            "UnsupportedProtocol"
        );
        assert_eq!(listener("tcp")["supportedKinds"], json!([]));
        assert_eq!(status["conditions"][1]["status"], "True");
        assert_eq!(
            status["addresses"],
            json!([{"type": "Hostname", "value": "id.cfargotunnel.com"}])
        );

        let missing = TunnelStanding {
            ready: None,
            address: None,
        };
        let pending = gateway_status(web, Some(1), &attached, &missing, Some(&status), "t2");
        assert_eq!(
            (
                pending["conditions"][1]["status"].as_str(),
                pending["conditions"][1]["reason"].as_str()
            ),
            (Some("False"), Some("Pending"))
        );
        let nameless = gateway_status(
            gateways.get("edge", "nameless").unwrap(),
            Some(1),
            &[],
            &missing,
            None,
            "t",
        );
        assert_eq!(nameless["conditions"][0]["reason"], "InvalidParameters");
        assert!(same_status(
            &status,
            Some(&gateway_status(
                web,
                Some(1),
                &attached,
                &serving,
                Some(&status),
                "t9"
            ))
        ));
    }
}
