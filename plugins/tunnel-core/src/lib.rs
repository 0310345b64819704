//! Which Ingress or HTTPRoute serves which hostname and path of a Cloudflare
//! tunnel: the decision behind a `Tunnel` or `ClusterTunnel`, pure so that it
//! runs natively in tests and inside the `tunnel-mapper` plugin, and so the
//! host can check any plugin's answer ([`check_mapping`]).
//!
//! [`map`] applies these rules, in order:
//! 1. a namespaced `Tunnel` accepts only sources in its own namespace; the
//!    others are `NamespaceNotAllowed`. A `ClusterTunnel` accepts any;
//! 2. a source is `Invalid` when it has no routes, or when a route's host is
//!    empty, not a valid DNS name, or not inside the tunnel's domain (the
//!    domain itself, a name under it, or `*.` and such a name), or when a
//!    `Prefix`/`Exact` path does not start with `/`;
//! 3. sources are considered oldest first (`created`, then kind, namespace,
//!    name). A source any of whose (host, path) keys an older, not refused
//!    source already holds is refused whole, as a `Conflict` naming the
//!    holder: a source is never half applied. A key is the host and the
//!    cloudflared path regex ([`path_regex`]), so `Prefix /`, `Prefix ""` and
//!    no path are one key, as are `Prefix /api` and `Prefix /api/`;
//! 4. a route whose backend is not ready is withheld (as the cloudflare-warp
//!    ingress did: no endpoints, no tunnel route) and the source is
//!    `NoReadyEndpoints`, naming every withheld backend; its other routes are
//!    published. With `withhold-unready=false` a backend without ready
//!    endpoints is published anyway; a missing one never is. A
//!    `NoReadyEndpoints` source keeps its hosts (its keys and DNS names), so a
//!    rolling restart neither drops the record nor hands the host to another
//!    source. Within one source, the first route of a key wins;
//! 5. one cloudflared rule per published route, ordered so that no rule
//!    hides a later one: exact hosts before wildcards (wildcards with more
//!    labels first), then by host, then longer paths first (no path last),
//!    then `Exact` before `Prefix` before regex; the fallback rule (no
//!    hostname, no path, the tunnel's fallback target) comes last. `dns` is
//!    every host of every source not refused, wildcards included;
//! 6. each source's status lists the hosts it holds; a refused one holds none.
//!
//! cloudflared matches a rule's `hostname` exactly, or, for `*.name`, any host
//! ending in `.name` (at any depth); its `path` is a Go regular expression
//! searched anywhere in the request path, hence the anchors.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[cfg(target_arch = "wasm32")]
pub mod component;

/// The `Tunnel` or `ClusterTunnel` being mapped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub name: String,
    /// `Some` for a namespaced `Tunnel` (sources in its own namespace only);
    /// `None` for a `ClusterTunnel` (sources in any namespace).
    pub namespace: Option<String>,
    /// The zone every host must be inside, e.g. `example.com`.
    pub domain: String,
    /// What the last, catch-all rule serves, e.g. `http_status:404`.
    pub fallback_target: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    Ingress,
    HttpRoute,
}

impl SourceKind {
    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Ingress => "Ingress",
            SourceKind::HttpRoute => "HTTPRoute",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a route's path matches. Ingress `Prefix` and `ImplementationSpecific`
/// are `Prefix`; HTTPRoute's `PathPrefix`, `Exact` and `RegularExpression`
/// map one to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMatch {
    /// Kubernetes element-wise prefix: `/api` matches `/api` and `/api/x`,
    /// not `/apix`.
    Prefix,
    Exact,
    /// A Go (RE2) regular expression, anchored at the start.
    RegularExpression,
}

/// Whether cloudflared speaks HTTP or HTTPS to the backend, from the Service
/// port's `appProtocol` or name (the host decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// The Service has ready endpoints.
    Ready,
    /// The Service exists but no endpoint is ready (e.g. a rolling restart).
    NoReadyEndpoints,
    /// The backend cannot be served, and why, e.g. `service app1-service not
    /// found` or `service x has no port named web`.
    Missing(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The Service's name, in the source's namespace.
    pub service: String,
    /// The resolved port number; 0 when `Missing`.
    pub port: u16,
    pub scheme: Scheme,
    pub state: BackendState,
}

/// One (host, path) → backend of a source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// May be empty (no host, refused) or a wildcard such as `*.example.com`.
    pub host: String,
    /// `None` matches every path, as does `Prefix /`.
    pub path: Option<(PathMatch, String)>,
    pub backend: Backend,
}

/// An Ingress or HTTPRoute bound to the tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub kind: SourceKind,
    pub namespace: String,
    pub name: String,
    /// Creation time in unix seconds: the older source wins a contested key.
    pub created: i64,
    pub routes: Vec<Route>,
}

impl Source {
    /// `Ingress ns/name`, as messages name a source.
    pub fn identity(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Everything one decision looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub tunnel: Tunnel,
    pub sources: Vec<Source>,
    /// The cluster's DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
}

/// The mapper's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Withhold routes to backends without ready endpoints (default true).
    pub withhold_unready: bool,
}

/// Routes to a backend without ready endpoints are withheld unless the
/// configuration says `withhold-unready: "false"`.
pub const DEFAULT_WITHHOLD_UNREADY: bool = true;

impl Default for Config {
    fn default() -> Self {
        Config {
            withhold_unready: DEFAULT_WITHHOLD_UNREADY,
        }
    }
}

/// Reads the mapper's configuration: `withhold-unready` (`true`, the default,
/// or `false`). Any other key is an error, so a typo is not silently ignored;
/// a later entry overrides an earlier one.
pub fn parse_config(entries: &[(String, String)]) -> Result<Config, String> {
    let mut config = Config::default();
    for (key, value) in entries {
        match key.as_str() {
            "withhold-unready" => {
                config.withhold_unready = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(format!(
                            "withhold-unready {other:?}: expected true or false"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown configuration key {other:?}: expected withhold-unready"
                ));
            }
        }
    }
    Ok(config)
}

/// Refuses a request no mapping can answer sensibly: a tunnel domain that is
/// not a DNS name, an empty fallback target, or two sources of one identity.
/// The plugin answers these with `invalid-request`; [`map`] itself is total.
pub fn validate_request(request: &Request) -> Result<(), String> {
    let tunnel = &request.tunnel;
    let domain = normal_domain(&tunnel.domain);
    if domain.starts_with("*.") || !is_dns_name(&domain) {
        return Err(format!(
            "the domain {:?} of {} is not a DNS name",
            tunnel.domain,
            tunnel_identity(tunnel)
        ));
    }
    if tunnel.fallback_target.is_empty() {
        return Err(format!(
            "{} has an empty fallback target",
            tunnel_identity(tunnel)
        ));
    }
    let mut seen = BTreeSet::new();
    for source in &request.sources {
        if !seen.insert((source.kind, &source.namespace, &source.name)) {
            return Err(format!("{} is listed twice", source.identity()));
        }
    }
    Ok(())
}

/// One cloudflared ingress rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressRule {
    /// `None` only on the last, catch-all rule.
    pub hostname: Option<String>,
    /// A cloudflared (Go) regular expression; `None` matches every path.
    pub path: Option<String>,
    /// `http://svc.ns.svc.cluster.local:80`, or the fallback target.
    pub service: String,
}

impl fmt::Display for IngressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hostname.as_deref().unwrap_or("(any host)"))?;
        if let Some(path) = &self.path {
            write!(f, " path {path}")?;
        }
        write!(f, " -> {}", self.service)
    }
}

/// What became of a source; the text says why, for its status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Every route is published.
    Accepted,
    /// An older source holds one of its keys; nothing of it is published.
    Conflict(String),
    /// The namespaced Tunnel does not serve its namespace.
    NamespaceNotAllowed(String),
    /// Some routes are withheld (their backends are not ready or missing);
    /// the rest are published and the source keeps its hosts.
    NoReadyEndpoints(String),
    /// The source cannot be served as written.
    Invalid(String),
}

impl Verdict {
    /// Refused sources hold no host and contribute no rule or DNS name.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Verdict::Conflict(_) | Verdict::NamespaceNotAllowed(_) | Verdict::Invalid(_)
        )
    }

    /// The variant's name, e.g. `Conflict`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accepted => "Accepted",
            Verdict::Conflict(_) => "Conflict",
            Verdict::NamespaceNotAllowed(_) => "NamespaceNotAllowed",
            Verdict::NoReadyEndpoints(_) => "NoReadyEndpoints",
            Verdict::Invalid(_) => "Invalid",
        }
    }

    /// The human message; empty for `Accepted`.
    pub fn message(&self) -> &str {
        match self {
            Verdict::Accepted => "",
            Verdict::Conflict(m)
            | Verdict::NamespaceNotAllowed(m)
            | Verdict::NoReadyEndpoints(m)
            | Verdict::Invalid(m) => m,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceStatus {
    pub kind: SourceKind,
    pub namespace: String,
    pub name: String,
    pub verdict: Verdict,
    /// The hosts the source holds, sorted, without duplicates; none when
    /// refused.
    pub hosts: Vec<String>,
}

/// The answer: what the tunnel's configuration and DNS should be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// In cloudflared's order; the fallback rule last.
    pub rules: Vec<IngressRule>,
    /// Hostnames that get a CNAME to the tunnel, sorted, without duplicates.
    pub dns: Vec<String>,
    /// One per request source, in the request's order.
    pub sources: Vec<SourceStatus>,
}

/// Where cloudflared sends a backend's traffic:
/// `{scheme}://{service}.{namespace}.svc.{cluster_domain}:{port}`.
pub fn service_url(backend: &Backend, namespace: &str, cluster_domain: &str) -> String {
    // Built by hand: this runs for every route, and `format!` is several
    // times slower.
    let port = backend.port.to_string();
    let parts = [
        backend.scheme.name(),
        "://",
        &backend.service,
        ".",
        namespace,
        ".svc.",
        cluster_domain,
        ":",
        &port,
    ];
    let mut url = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| url.push_str(part));
    url
}

/// Whether `url` is `service_url(backend, namespace, cluster_domain)`,
/// without building it.
fn is_service_url(url: &str, backend: &Backend, namespace: &str, cluster_domain: &str) -> bool {
    let port = backend.port.to_string();
    let parts = [
        backend.scheme.name(),
        "://",
        &backend.service,
        ".",
        namespace,
        ".svc.",
        cluster_domain,
        ":",
        &port,
    ];
    let mut rest = url;
    for part in parts {
        match rest.strip_prefix(part) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The cloudflared `path` regex of a route's path; `None` matches every path.
///
/// - `Prefix` is Kubernetes' element-wise prefix, trailing slashes ignored:
///   `/` (or empty) is `None`, `/api` is `^/api(/.*)?$`;
/// - `Exact /x` is `^/x$`;
/// - a regular expression is anchored at the start with `^` unless it is
///   already (cloudflared searches anywhere in the path otherwise).
///
/// Literal paths are escaped, so `/v1.0` does not match `/v1x0`.
pub fn path_regex(path: &(PathMatch, String)) -> Option<String> {
    let (kind, value) = path;
    let anchored = |body: &str, tail: &str| {
        let mut regex = String::with_capacity(1 + body.len() + tail.len());
        regex.push('^');
        regex.push_str(body);
        regex.push_str(tail);
        regex
    };
    match kind {
        PathMatch::Prefix => {
            let prefix = value.trim_end_matches('/');
            (!prefix.is_empty()).then(|| anchored(&escape(prefix), PREFIX_TAIL))
        }
        PathMatch::Exact => Some(anchored(&escape(value), "$")),
        PathMatch::RegularExpression if value.starts_with('^') => Some(value.clone()),
        PathMatch::RegularExpression => Some(anchored(value, "")),
    }
}

/// What follows the literal in a prefix regex: the end, or a `/` and more.
const PREFIX_TAIL: &str = "(/.*)?$";

/// The characters with a meaning in a Go regular expression.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
    )
}

fn escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 4);
    for c in literal.chars() {
        if is_meta(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The inverse of `escape`: `None` when the text has a regex operator.
fn unescape(escaped: &str) -> Option<String> {
    let mut literal = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next()?;
            if !is_meta(next) {
                return None;
            }
            literal.push(next);
        } else if is_meta(c) {
            return None;
        } else {
            literal.push(c);
        }
    }
    Some(literal)
}

/// The rule a route becomes when published.
pub fn route_rule(route: &Route, namespace: &str, cluster_domain: &str) -> IngressRule {
    IngressRule {
        hostname: Some(route.host.clone()),
        path: route.path.as_ref().and_then(path_regex),
        service: service_url(&route.backend, namespace, cluster_domain),
    }
}

/// What two sources contend for: a host and a cloudflared path regex.
type RouteKey = (String, Option<String>);

fn route_key(route: &Route) -> RouteKey {
    (route.host.clone(), route.path.as_ref().and_then(path_regex))
}

/// Decides one tunnel: its rules, DNS names and a verdict per source, by the
/// rules of the crate doc. Total: a source that cannot be served gets a
/// verdict saying why, never an error.
pub fn map(request: &Request, config: &Config) -> Mapping {
    let tunnel = &request.tunnel;
    let domain = normal_domain(&tunnel.domain);
    let sources = &request.sources;
    let mut verdicts: Vec<Option<Verdict>> = sources
        .iter()
        .map(|source| refusal(tunnel, &domain, source))
        .collect();

    // Oldest first: each source either takes all its keys or is refused.
    let mut by_age: Vec<usize> = (0..sources.len()).collect();
    by_age.sort_by_key(|&i| {
        let s = &sources[i];
        (s.created, s.kind, s.namespace.as_str(), s.name.as_str())
    });
    let mut held: BTreeMap<RouteKey, usize> = BTreeMap::new();
    // Each route's key, for the sources that take theirs.
    let mut keys: Vec<Vec<RouteKey>> = vec![Vec::new(); sources.len()];
    for i in by_age {
        if verdicts[i].is_some() {
            continue;
        }
        let source = &sources[i];
        let own: Vec<RouteKey> = source.routes.iter().map(route_key).collect();
        let taken = source
            .routes
            .iter()
            .zip(&own)
            .find_map(|(route, key)| held.get(key).map(|&holder| (route, holder)));
        if let Some((route, holder)) = taken {
            verdicts[i] = Some(Verdict::Conflict(format!(
                "host {} {} is served by {}",
                route.host,
                describe_path(&route.path),
                sources[holder].identity()
            )));
            continue;
        }
        for key in &own {
            held.entry(key.clone()).or_insert(i);
        }
        keys[i] = own;
    }

    let mut ranked: Vec<RankedRule> = Vec::new();
    let mut dns: BTreeSet<&str> = BTreeSet::new();
    let mut statuses = Vec::with_capacity(sources.len());
    for ((source, verdict), keys) in sources.iter().zip(verdicts).zip(keys) {
        let status = |verdict: Verdict, hosts: Vec<String>| SourceStatus {
            kind: source.kind,
            namespace: source.namespace.clone(),
            name: source.name.clone(),
            verdict,
            hosts,
        };
        if let Some(refused) = verdict {
            statuses.push(status(refused, Vec::new()));
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut withheld: Vec<String> = Vec::new();
        for (route, (host, path)) in source.routes.iter().zip(keys) {
            if !seen.insert((route.host.as_str(), path.clone())) {
                continue;
            }
            let backend = &route.backend;
            let why = match &backend.state {
                BackendState::Ready => None,
                BackendState::NoReadyEndpoints if !config.withhold_unready => None,
                BackendState::NoReadyEndpoints => Some(format!(
                    "backend {}:{} has no ready endpoints",
                    backend.service, backend.port
                )),
                BackendState::Missing(reason) => Some(reason.clone()),
            };
            match why {
                Some(why) if !withheld.contains(&why) => withheld.push(why),
                Some(_) => {}
                None => ranked.push(RankedRule::new(IngressRule {
                    hostname: Some(host),
                    path,
                    service: service_url(backend, &source.namespace, &request.cluster_domain),
                })),
            }
        }
        let hosts: BTreeSet<&str> = source.routes.iter().map(|r| r.host.as_str()).collect();
        dns.extend(&hosts);
        let verdict = if withheld.is_empty() {
            Verdict::Accepted
        } else {
            Verdict::NoReadyEndpoints(withheld.join("; "))
        };
        statuses.push(status(
            verdict,
            hosts.into_iter().map(String::from).collect(),
        ));
    }

    ranked.sort_by(RankedRule::cmp);
    let mut rules: Vec<IngressRule> = ranked.into_iter().map(|r| r.rule).collect();
    rules.dedup();
    rules.push(IngressRule {
        hostname: None,
        path: None,
        service: tunnel.fallback_target.clone(),
    });
    Mapping {
        rules,
        dns: dns.into_iter().map(String::from).collect(),
        sources: statuses,
    }
}

/// A published rule with what orders it (see rule 5 of the crate doc).
struct RankedRule {
    wildcard: bool,
    labels: usize,
    /// The length of the literal path (a prefix without its trailing
    /// slashes), or of the regex; `None` for every path.
    path_len: Option<usize>,
    /// `Exact`, `Prefix`, regex.
    kind_rank: u8,
    rule: IngressRule,
}

impl RankedRule {
    fn new(rule: IngressRule) -> Self {
        // Ranked by what the regex means, as the host's check reads it, so a
        // regex written as a prefix sorts as one.
        let (path_len, kind_rank) = match PathShape::of(rule.path.as_deref()) {
            PathShape::All => (None, 0),
            PathShape::Exact(path) => (Some(path.len()), 0),
            PathShape::Prefix(path) => (Some(path.len()), 1),
            PathShape::Unknown => (rule.path.as_ref().map(String::len), 2),
        };
        let host = rule.hostname.as_deref().unwrap_or_default();
        RankedRule {
            wildcard: host.starts_with("*."),
            labels: host.split('.').count(),
            path_len,
            kind_rank,
            rule,
        }
    }

    fn cmp(a: &Self, b: &Self) -> Ordering {
        let labels = |r: &Self| if r.wildcard { r.labels } else { 0 };
        a.wildcard
            .cmp(&b.wildcard)
            .then_with(|| labels(b).cmp(&labels(a)))
            .then_with(|| a.rule.hostname.cmp(&b.rule.hostname))
            .then_with(|| a.path_len.is_none().cmp(&b.path_len.is_none()))
            .then_with(|| b.path_len.cmp(&a.path_len))
            .then_with(|| a.kind_rank.cmp(&b.kind_rank))
            .then_with(|| a.rule.path.cmp(&b.rule.path))
            .then_with(|| a.rule.service.cmp(&b.rule.service))
    }
}

fn describe_path(path: &Option<(PathMatch, String)>) -> String {
    match path {
        None => "path /".into(),
        Some((PathMatch::Prefix, p)) if p.is_empty() => "path /".into(),
        Some((PathMatch::Prefix, p)) => format!("path {p}"),
        Some((PathMatch::Exact, p)) => format!("exact path {p}"),
        Some((PathMatch::RegularExpression, p)) => format!("path regex {p}"),
    }
}

fn tunnel_identity(tunnel: &Tunnel) -> String {
    match &tunnel.namespace {
        Some(namespace) => format!("Tunnel {namespace}/{}", tunnel.name),
        None => format!("ClusterTunnel {}", tunnel.name),
    }
}

/// Rules 1 and 2: why a source is refused before any conflict is looked at.
fn refusal(tunnel: &Tunnel, domain: &str, source: &Source) -> Option<Verdict> {
    if let Some(namespace) = &tunnel.namespace
        && *namespace != source.namespace
    {
        return Some(Verdict::NamespaceNotAllowed(format!(
            "Tunnel {namespace}/{} only accepts sources in namespace {namespace}",
            tunnel.name
        )));
    }
    if source.routes.is_empty() {
        return Some(Verdict::Invalid("no rules".into()));
    }
    for route in &source.routes {
        if let Err(why) = check_host(&route.host, domain) {
            return Some(Verdict::Invalid(why));
        }
        match &route.path {
            Some((PathMatch::Exact, path)) if !path.starts_with('/') => {
                return Some(Verdict::Invalid(format!(
                    "exact path {path:?} of host {} does not start with /",
                    route.host
                )));
            }
            Some((PathMatch::Prefix, path)) if !path.is_empty() && !path.starts_with('/') => {
                return Some(Verdict::Invalid(format!(
                    "path {path:?} of host {} does not start with /",
                    route.host
                )));
            }
            Some((PathMatch::RegularExpression, path)) if path.is_empty() => {
                return Some(Verdict::Invalid(format!(
                    "an empty path regex for host {}",
                    route.host
                )));
            }
            _ => {}
        }
    }
    None
}

/// A host a route may have: a DNS name (or `*.` and one) inside the domain.
fn check_host(host: &str, domain: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!(
            "a rule has no host: every host must be inside {domain}"
        ));
    }
    if !is_dns_name(host) {
        return Err(format!("host {host:?} is not a valid DNS name"));
    }
    if !in_domain(host, domain) {
        return Err(format!(
            "host {host} is not inside the tunnel's domain {domain}"
        ));
    }
    Ok(())
}

fn normal_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// A lowercase RFC 1123 name, optionally with a leading `*.` label.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// The domain itself or a name under it, wildcard or not.
fn in_domain(host: &str, domain: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

/// What the host can tell of a rule's path regex.
#[derive(Debug, PartialEq, Eq)]
enum PathShape {
    /// No path: every path.
    All,
    /// `^literal$`.
    Exact(String),
    /// `^literal(/.*)?$`: the literal and everything under it.
    Prefix(String),
    /// Any other regex: not reasoned about.
    Unknown,
}

impl PathShape {
    fn of(path: Option<&str>) -> PathShape {
        let Some(regex) = path else {
            return PathShape::All;
        };
        let Some(body) = regex.strip_prefix('^') else {
            return PathShape::Unknown;
        };
        if let Some(prefix) = body.strip_suffix(PREFIX_TAIL).and_then(unescape) {
            return PathShape::Prefix(prefix);
        }
        if let Some(exact) = body.strip_suffix('$').and_then(unescape) {
            return PathShape::Exact(exact);
        }
        PathShape::Unknown
    }

    /// Whether every path `later` matches, this matches too.
    fn covers(&self, later: &PathShape) -> bool {
        let under = |prefix: &str, path: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        match (self, later) {
            (PathShape::All, _) => true,
            (PathShape::Prefix(p), PathShape::Exact(q) | PathShape::Prefix(q)) => under(p, q),
            (PathShape::Exact(p), PathShape::Exact(q)) => p == q,
            _ => false,
        }
    }
}

/// A route: the index of its source, its index in the source, the route
/// and its path regex.
type SourceRoute<'a> = (usize, usize, &'a Route, Option<&'a str>);

/// A plugin's rule in a refusal: every string it wrote quoted with `{:?}`,
/// so none can forge a line of a log or an Event.
struct Quoted<'a>(&'a IngressRule);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = self.0;
        match &rule.hostname {
            Some(hostname) => write!(f, "{hostname:?}")?,
            None => f.write_str("(any host)")?,
        }
        if let Some(path) = &rule.path {
            write!(f, " path {path:?}")?;
        }
        write!(f, " -> {:?}", rule.service)
    }
}

/// What the host checks of any plugin's mapping before acting on it:
/// - one status per request source, in order, of the same identity; a
///   namespaced Tunnel refuses every source of another namespace; a refused
///   source holds no host, another holds only hosts of its routes;
/// - the last rule is exactly the fallback, and the only one without a
///   hostname; every other hostname is inside the tunnel's domain;
/// - every other rule is the rule of a route of a source not refused, whose
///   backend is not missing (one without ready endpoints may be published);
/// - no two rules share a hostname and path, and no rule is hidden by an
///   earlier one (same host or a covering wildcard, with no path, or a prefix
///   or exact path covering the later one's; other regexes are not judged);
/// - a source's verdict agrees with its rules: every host and path of an
///   `Accepted` source has its rule; a `NoReadyEndpoints` one withholds
///   only routes whose backend is not ready (missing, or without ready
///   endpoints), and withholds at least one;
/// - every DNS name is inside the domain, listed once, and a host of a source
///   not refused; every host of a source not refused that is inside the
///   domain has its DNS name (the records not listed are deleted).
///
/// Strings the plugin wrote (rules, DNS names, hosts, statuses' names and
/// messages) are quoted with `{:?}` in refusals.
pub fn check_mapping(request: &Request, mapping: &Mapping) -> Result<(), String> {
    let tunnel = &request.tunnel;
    let domain = normal_domain(&tunnel.domain);
    let sources = &request.sources;

    if mapping.sources.len() != sources.len() {
        return Err(format!(
            "{} source statuses for {} sources",
            mapping.sources.len(),
            sources.len()
        ));
    }
    for (i, (source, status)) in sources.iter().zip(&mapping.sources).enumerate() {
        let same = status.kind == source.kind
            && status.namespace == source.namespace
            && status.name == source.name;
        if !same {
            return Err(format!(
                "source status {} is for {} {:?}, expected {}",
                i + 1,
                status.kind,
                format!("{}/{}", status.namespace, status.name),
                source.identity()
            ));
        }
        let refused = status.verdict.is_refused();
        if let Some(namespace) = &tunnel.namespace
            && *namespace != source.namespace
            && !refused
        {
            return Err(format!(
                "{} is {}, but {} only accepts sources in namespace {namespace}",
                source.identity(),
                status.verdict.name(),
                tunnel_identity(tunnel)
            ));
        }
        if refused && !status.hosts.is_empty() {
            return Err(format!(
                "{} is refused ({}) but holds hosts {:?}",
                source.identity(),
                status.verdict.name(),
                status.hosts
            ));
        }
        if let Some(host) = status
            .hosts
            .iter()
            .find(|host| !source.routes.iter().any(|r| r.host == **host))
        {
            return Err(format!(
                "{} holds host {host:?}, which none of its routes has",
                source.identity()
            ));
        }
    }

    let fallback = IngressRule {
        hostname: None,
        path: None,
        service: tunnel.fallback_target.clone(),
    };
    let Some((last, rules)) = mapping.rules.split_last() else {
        return Err(format!(
            "there are no rules: the fallback rule ({}) must come last",
            Quoted(&fallback)
        ));
    };
    if *last != fallback {
        return Err(format!(
            "the last rule must be the fallback ({}), found {}",
            Quoted(&fallback),
            Quoted(last)
        ));
    }

    // Every route of the request by host, with its path regex: who could
    // give a rule.
    let paths: Vec<Vec<Option<String>>> = sources
        .iter()
        .map(|source| {
            source
                .routes
                .iter()
                .map(|route| route.path.as_ref().and_then(path_regex))
                .collect()
        })
        .collect();
    let mut routes: BTreeMap<&str, Vec<SourceRoute>> = BTreeMap::new();
    for (i, source) in sources.iter().enumerate() {
        for (j, route) in source.routes.iter().enumerate() {
            routes.entry(route.host.as_str()).or_default().push((
                i,
                j,
                route,
                paths[i][j].as_deref(),
            ));
        }
    }
    // Which routes have their rule, by source and route index.
    let mut published: Vec<Vec<bool>> = sources
        .iter()
        .map(|source| vec![false; source.routes.len()])
        .collect();
    let mut seen: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
    // The rules so far, by the hosts they match: names as they are,
    // wildcards by their suffix (`.example.com` for `*.example.com`).
    let mut names: BTreeMap<&str, Vec<(usize, PathShape)>> = BTreeMap::new();
    let mut wildcards: BTreeMap<&str, Vec<(usize, PathShape)>> = BTreeMap::new();
    for (n, rule) in rules.iter().enumerate() {
        let number = n + 1;
        let quoted = Quoted(rule);
        let Some(hostname) = rule.hostname.as_deref() else {
            return Err(format!(
                "rule {number} ({quoted}) has no hostname: only the last, fallback rule may"
            ));
        };
        if !is_dns_name(hostname) || !in_domain(hostname, &domain) {
            return Err(format!(
                "rule {number} ({quoted}): hostname {hostname:?} is not inside the tunnel's domain {domain}"
            ));
        }
        let givers: Vec<(usize, usize, &BackendState)> = routes
            .get(hostname)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|(i, _, route, path)| {
                *path == rule.path.as_deref()
                    && is_service_url(
                        &rule.service,
                        &route.backend,
                        &sources[*i].namespace,
                        &request.cluster_domain,
                    )
            })
            .map(|&(i, j, route, _)| (i, j, &route.backend.state))
            .collect();
        let refused = |i: usize| mapping.sources[i].verdict.is_refused();
        let served = givers
            .iter()
            .any(|&(i, _, state)| !refused(i) && !matches!(state, BackendState::Missing(_)));
        if !served {
            let not_refused = givers.iter().find(|&&(i, _, _)| !refused(i));
            return Err(match (givers.first(), not_refused) {
                (None, _) => format!(
                    "rule {number} ({quoted}) is not the rule of any route of the tunnel's sources"
                ),
                (_, Some((_, _, BackendState::Missing(why)))) => {
                    format!("rule {number} ({quoted}) publishes a missing backend: {why}")
                }
                (Some(&(i, _, _)), _) => {
                    let verdict = &mapping.sources[i].verdict;
                    format!(
                        "rule {number} ({quoted}) is for {}, which is refused ({}): {:?}",
                        sources[i].identity(),
                        verdict.name(),
                        verdict.message()
                    )
                }
            });
        }
        for &(i, j, _) in &givers {
            published[i][j] = true;
        }
        if let Some(first) = seen.insert((hostname, rule.path.as_deref()), number) {
            return Err(format!(
                "rules {first} and {number} both match host {hostname:?} {}",
                rule.path
                    .as_deref()
                    .map_or("on every path".to_string(), |p| format!("path {p:?}"))
            ));
        }
        let shape = PathShape::of(rule.path.as_deref());
        // Earlier rules of this very name, or of a wildcard covering it
        // (which, for a wildcard, includes itself: `*.example.com`'s own
        // suffix is its first).
        let wildcard = hostname.strip_prefix('*');
        let same_name = match wildcard {
            Some(_) => None,
            None => names.get(hostname),
        };
        let covering = hostname
            .match_indices('.')
            .filter_map(|(at, _)| wildcards.get(&hostname[at..]));
        for earlier in same_name.into_iter().chain(covering) {
            if let Some((at, _)) = earlier.iter().find(|(_, e)| e.covers(&shape)) {
                return Err(format!(
                    "rule {number} ({quoted}) is never reached: rule {at} ({}) matches its requests first",
                    Quoted(&rules[at - 1])
                ));
            }
        }
        match wildcard {
            Some(suffix) => wildcards.entry(suffix).or_default().push((number, shape)),
            None => names.entry(hostname).or_default().push((number, shape)),
        }
    }

    // Each verdict agrees with the rules: a source told it is served is
    // served, and one told its backends are not ready is withheld only
    // there. A mapping that drops an accepted source's rules would take its
    // traffic away while its status says all is well.
    for (i, source) in sources.iter().enumerate() {
        let verdict = &mapping.sources[i].verdict;
        if verdict.is_refused() {
            continue;
        }
        // Each host and path of the source: its first route (which decides,
        // as in `map`) and whether any of its routes has its rule.
        let mut keys: BTreeMap<(&str, Option<&str>), (usize, bool)> = BTreeMap::new();
        for (j, route) in source.routes.iter().enumerate() {
            let key = keys
                .entry((route.host.as_str(), paths[i][j].as_deref()))
                .or_insert((j, false));
            key.1 |= published[i][j];
        }
        let mut unpublished: Vec<usize> = keys
            .into_values()
            .filter(|&(_, has_rule)| !has_rule)
            .map(|(j, _)| j)
            .collect();
        unpublished.sort_unstable();
        for &j in &unpublished {
            let route = &source.routes[j];
            let backend = &route.backend;
            if *verdict == Verdict::Accepted {
                return Err(format!(
                    "{} is Accepted, but its host {:?} {} has no rule",
                    source.identity(),
                    route.host,
                    describe_path(&route.path)
                ));
            }
            if backend.state == BackendState::Ready {
                return Err(format!(
                    "{} withholds its host {:?} {}, whose backend {}:{} is ready",
                    source.identity(),
                    route.host,
                    describe_path(&route.path),
                    backend.service,
                    backend.port
                ));
            }
        }
        if unpublished.is_empty() && matches!(verdict, Verdict::NoReadyEndpoints(_)) {
            return Err(format!(
                "{} is NoReadyEndpoints ({:?}), but every route of it has its rule",
                source.identity(),
                verdict.message()
            ));
        }
    }

    let mut held: BTreeSet<&str> = BTreeSet::new();
    let mut refused: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, source) in sources.iter().enumerate() {
        let is_refused = mapping.sources[i].verdict.is_refused();
        for route in &source.routes {
            if is_refused {
                refused.entry(route.host.as_str()).or_insert(i);
            } else {
                held.insert(route.host.as_str());
            }
        }
    }
    let mut listed = BTreeSet::new();
    for name in &mapping.dns {
        if !is_dns_name(name) || !in_domain(name, &domain) {
            return Err(format!(
                "DNS name {name:?} is not inside the tunnel's domain {domain}"
            ));
        }
        if !listed.insert(name.as_str()) {
            return Err(format!("DNS name {name:?} is listed twice"));
        }
        if !held.contains(name.as_str()) {
            return Err(match refused.get(name.as_str()) {
                Some(&i) => format!(
                    "DNS name {name:?} belongs only to {}, which is refused ({})",
                    sources[i].identity(),
                    mapping.sources[i].verdict.name()
                ),
                None => {
                    format!("DNS name {name:?} is not a host of any of the tunnel's sources")
                }
            });
        }
    }
    // A source keeps its hosts' DNS names, even while its backends are not
    // ready: the records of names left out are deleted.
    for (i, source) in sources.iter().enumerate() {
        let verdict = &mapping.sources[i].verdict;
        if verdict.is_refused() {
            continue;
        }
        if let Some(route) = source.routes.iter().find(|route| {
            is_dns_name(&route.host)
                && in_domain(&route.host, &domain)
                && !listed.contains(route.host.as_str())
        }) {
            return Err(format!(
                "{} is {}, but its host {:?} has no DNS name",
                source.identity(),
                verdict.name(),
                route.host
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
