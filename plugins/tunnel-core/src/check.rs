//! The host's check of any plugin's mapping before acting on it: a plugin
//! is never trusted, so a mapping that would misroute, hide a rule, drop a
//! source's traffic or touch DNS names it may not is refused with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::go_regex::check_go_regex;
use crate::paths::{PathShape, describe_path, in_domain, is_dns_name, normal_domain, path_regex};
use crate::types::{
    BackendState, IngressRule, Mapping, OriginRequest, Request, Route, Verdict, is_service_url,
    tunnel_identity,
};

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
        write!(f, " -> {:?}", rule.service)?;
        if rule.origin != OriginRequest::default() {
            write!(f, " with origin settings {}", rule.origin)?;
        }
        Ok(())
    }
}

/// What the host checks of any plugin's mapping before acting on it:
/// - one status per request source, in order, of the same identity; a
///   namespaced Tunnel refuses every source of another namespace; a refused
///   source holds no host, another holds only hosts of its routes;
/// - the last rule is exactly the fallback, and the only one without a
///   hostname; every other hostname is inside the tunnel's domain;
/// - every other rule is the rule of a route of a source not refused, whose
///   backend is not missing (one without ready endpoints may be published),
///   and carries that source's origin settings, no other;
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
        origin: OriginRequest::default(),
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
        if let Some(path) = &rule.path
            && let Err(why) = check_go_regex(path)
        {
            // cloudflared would refuse the whole configuration for it.
            return Err(format!("rule {number} ({quoted}): path {why}"));
        }
        // The routes this rule is for, whatever its origin settings.
        let same_target: Vec<&SourceRoute> = routes
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
            .collect();
        let givers: Vec<(usize, usize, &BackendState)> = same_target
            .iter()
            .filter(|(i, ..)| rule.origin == sources[*i].origin)
            .map(|&&(i, j, route, _)| (i, j, &route.backend.state))
            .collect();
        let refused = |i: usize| mapping.sources[i].verdict.is_refused();
        let served = givers
            .iter()
            .any(|&(i, _, state)| !refused(i) && !matches!(state, BackendState::Missing(_)));
        if !served {
            let not_refused = givers.iter().find(|&&(i, _, _)| !refused(i));
            return Err(match (givers.first(), not_refused) {
                (None, _) => match same_target.first() {
                    Some((i, ..)) => format!(
                        "rule {number} ({quoted}): {} asks for origin settings {}",
                        sources[*i].identity(),
                        sources[*i].origin
                    ),
                    None => format!(
                        "rule {number} ({quoted}) is not the rule of any route of the tunnel's sources"
                    ),
                },
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
