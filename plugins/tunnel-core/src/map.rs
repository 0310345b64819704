//! The mapper: [`map`] applies these rules, in order:
//! 1. a namespaced `Tunnel` accepts only sources in its own namespace; the
//!    others are `NamespaceNotAllowed`. A `ClusterTunnel` accepts any;
//! 2. a source is `Invalid` when it has no routes, or when a route's host is
//!    empty, not a valid DNS name, or not inside the tunnel's domain (the
//!    domain itself, a name under it, or `*.` and such a name), or when a
//!    `Prefix`/`Exact` path does not start with `/`, or a path regex is one
//!    cloudflared (Go's RE2) would not compile ([`crate::go_regex`]);
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

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::go_regex::check_go_regex;
use crate::paths::{
    PathShape, RouteKey, describe_path, in_domain, is_dns_name, normal_domain, path_regex,
    route_key,
};
use crate::types::{
    BackendState, Config, IngressRule, Mapping, OriginRequest, PathMatch, Request, Route, Source,
    SourceStatus, Tunnel, Verdict, service_url, tunnel_identity,
};

/// Refuses a request no mapping can answer sensibly: a tunnel domain that is
/// not a DNS name, an empty fallback target or one with a path, or two
/// sources of one identity.
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
    // cloudflared proxies to the eyeball's own path and refuses the whole
    // configuration for an origin URL with one, even `/`.
    if let Some((_, rest)) = tunnel.fallback_target.split_once("://")
        && rest.contains('/')
    {
        return Err(format!(
            "the fallback target {:?} of {} has a path; cloudflared proxies to the request's own path and refuses one",
            tunnel.fallback_target,
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

/// The rule a route of `source` becomes when published.
pub fn route_rule(source: &Source, route: &Route, cluster_domain: &str) -> IngressRule {
    IngressRule {
        hostname: Some(route.host.clone()),
        path: route.path.as_ref().and_then(path_regex),
        service: service_url(&route.backend, &source.namespace, cluster_domain),
        origin: source.origin.clone(),
    }
}

/// Decides one tunnel: its rules, DNS names and a verdict per source, by the
/// rules of the module doc. Total: a source that cannot be served gets a
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
                    origin: source.origin.clone(),
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
        origin: OriginRequest::default(),
    });
    Mapping {
        rules,
        dns: dns.into_iter().map(String::from).collect(),
        sources: statuses,
    }
}

/// A published rule with what orders it (see rule 5 of the module doc).
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
            Some(path @ (PathMatch::RegularExpression, pattern)) => {
                // cloudflared refuses the whole configuration for one
                // pattern Go cannot compile: refuse this source alone.
                let regex = path_regex(path).unwrap_or_default();
                if let Err(why) = check_go_regex(&regex) {
                    return Some(Verdict::Invalid(format!(
                        "path regex {pattern:?} of host {} {why}",
                        route.host
                    )));
                }
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

#[cfg(test)]
mod tests;
