//! What a decision is asked and what it answers: the tunnel, its sources
//! and their routes, the mapper's configuration, and the mapping with a
//! verdict per source. Shared by the mapper, the host's check and the WIT
//! glue.

use std::fmt;

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

/// How cloudflared speaks to the backend, from the Service port's
/// `appProtocol` or name (the host decides). `Tcp`, `Ssh` and `Rdp` are
/// proxied as TCP over WebSocket, for clients running `cloudflared access`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
    Tcp,
    Ssh,
    Rdp,
}

impl Scheme {
    pub const ALL: [Scheme; 5] = [
        Scheme::Http,
        Scheme::Https,
        Scheme::Tcp,
        Scheme::Ssh,
        Scheme::Rdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tcp => "tcp",
            Scheme::Ssh => "ssh",
            Scheme::Rdp => "rdp",
        }
    }
}

/// cloudflared's settings for reaching an origin (`originRequest`), those
/// knit passes on; `None` leaves cloudflared's default. Durations are whole
/// seconds, as cloudflared reads them from the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OriginRequest {
    pub no_tls_verify: Option<bool>,
    pub origin_server_name: Option<String>,
    pub ca_pool: Option<String>,
    pub http_host_header: Option<String>,
    pub connect_timeout: Option<u32>,
    pub tls_timeout: Option<u32>,
    pub keep_alive_timeout: Option<u32>,
    pub http2_origin: Option<bool>,
    pub disable_chunked_encoding: Option<bool>,
}

impl OriginRequest {
    /// The settings by cloudflared's names, as annotations and the CRD
    /// spell them.
    pub const KEYS: [&str; 9] = [
        "noTLSVerify",
        "originServerName",
        "caPool",
        "httpHostHeader",
        "connectTimeout",
        "tlsTimeout",
        "keepAliveTimeout",
        "http2Origin",
        "disableChunkedEncoding",
    ];

    /// Sets the setting cloudflared calls `key` from its text: `true` or
    /// `false`, a duration such as `30s`, `2m` or `1h`, or a string.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let flag = || match value {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            other => Err(format!("{key} {other:?}: expected true or false")),
        };
        let text = || {
            if value.is_empty() || value.chars().any(char::is_control) {
                Err(format!(
                    "{key} {value:?}: expected a non-empty line of text"
                ))
            } else {
                Ok(Some(value.to_owned()))
            }
        };
        let seconds = || {
            parse_seconds(value)
                .map(Some)
                .map_err(|why| format!("{key} {value:?}: {why}"))
        };
        match key {
            "noTLSVerify" => self.no_tls_verify = flag()?,
            "originServerName" => self.origin_server_name = text()?,
            "caPool" => self.ca_pool = text()?,
            "httpHostHeader" => self.http_host_header = text()?,
            "connectTimeout" => self.connect_timeout = seconds()?,
            "tlsTimeout" => self.tls_timeout = seconds()?,
            "keepAliveTimeout" => self.keep_alive_timeout = seconds()?,
            "http2Origin" => self.http2_origin = flag()?,
            "disableChunkedEncoding" => self.disable_chunked_encoding = flag()?,
            other => {
                return Err(format!(
                    "unknown origin setting {other:?}: expected one of {}",
                    Self::KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The settings that are set, by cloudflared's names, each written as
    /// `set` reads it.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let flag = |v: Option<bool>| v.map(|v| v.to_string());
        let seconds = |v: Option<u32>| v.map(|v| format!("{v}s"));
        let values = [
            flag(self.no_tls_verify),
            self.origin_server_name.clone(),
            self.ca_pool.clone(),
            self.http_host_header.clone(),
            seconds(self.connect_timeout),
            seconds(self.tls_timeout),
            seconds(self.keep_alive_timeout),
            flag(self.http2_origin),
            flag(self.disable_chunked_encoding),
        ];
        Self::KEYS
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
    }
}

/// `noTLSVerify="true", connectTimeout="30s"`, by cloudflared's names,
/// values quoted; `none` when nothing is set.
impl fmt::Display for OriginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: Vec<String> = self
            .entries()
            .into_iter()
            .map(|(key, value)| format!("{key}={value:?}"))
            .collect();
        if set.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&set.join(", "))
        }
    }
}

/// The longest duration knit passes to cloudflared: a day.
pub const MAX_ORIGIN_SECONDS: u32 = 86_400;

/// A duration of whole seconds written `<n>s`, `<n>m` or `<n>h`, at most a
/// day (cloudflared reads durations from the API as whole seconds).
pub fn parse_seconds(text: &str) -> Result<u32, String> {
    let expected = "expected a whole number of seconds, minutes or hours, such as 30s, 2m or 1h";
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(expected.into()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected.into());
    }
    number
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .filter(|&seconds| seconds <= MAX_ORIGIN_SECONDS)
        .ok_or_else(|| format!("at most a day ({MAX_ORIGIN_SECONDS}s)"))
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
    /// How cloudflared reaches its backends: each of its rules carries it.
    pub origin: OriginRequest,
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

/// One cloudflared ingress rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressRule {
    /// `None` only on the last, catch-all rule.
    pub hostname: Option<String>,
    /// A cloudflared (Go) regular expression; `None` matches every path.
    pub path: Option<String>,
    /// `http://svc.ns.svc.cluster.local:80`, or the fallback target.
    pub service: String,
    /// Its source's origin settings; the default on the fallback rule.
    pub origin: OriginRequest,
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
    let parts = url_parts(backend, namespace, cluster_domain, &port);
    let mut url = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| url.push_str(part));
    url
}

/// A service URL's pieces, in order: built by `service_url`, matched by
/// `is_service_url`.
fn url_parts<'a>(
    backend: &'a Backend,
    namespace: &'a str,
    cluster_domain: &'a str,
    port: &'a str,
) -> [&'a str; 9] {
    [
        backend.scheme.name(),
        "://",
        &backend.service,
        ".",
        namespace,
        ".svc.",
        cluster_domain,
        ":",
        port,
    ]
}

/// Whether `url` is `service_url(backend, namespace, cluster_domain)`,
/// without building it.
pub(crate) fn is_service_url(
    url: &str,
    backend: &Backend,
    namespace: &str,
    cluster_domain: &str,
) -> bool {
    let port = backend.port.to_string();
    let mut rest = url;
    for part in url_parts(backend, namespace, cluster_domain, &port) {
        match rest.strip_prefix(part) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

pub(crate) fn tunnel_identity(tunnel: &Tunnel) -> String {
    match &tunnel.namespace {
        Some(namespace) => format!("Tunnel {namespace}/{}", tunnel.name),
        None => format!("ClusterTunnel {}", tunnel.name),
    }
}

#[cfg(test)]
mod tests;
