//! `tunnel-mapper` cases:
//!
//! ```yaml
//! description: the older Ingress keeps a contested path
//! input:
//!   tunnel: {name: edge, namespace: shop, domain: example.com, fallbackTarget: "http_status:404"}
//!   clusterDomain: cluster.local     # the default
//!   config: {withhold-unready: "false"}
//!   sources:
//!     - kind: Ingress                # or HTTPRoute
//!       namespace: shop
//!       name: web
//!       created: 100                 # unix seconds: the older wins
//!       origin: {noTLSVerify: "true", connectTimeout: 30s}   # none by default
//!       routes:
//!         - host: www.example.com
//!           path: /api               # none: every path
//!           pathType: Prefix         # the default; Exact, RegularExpression
//!           service: api
//!           port: 80
//!           scheme: http             # the default; https, tcp, ssh, rdp
//!           state: ready             # the default; no-ready-endpoints, {missing: why}
//! expect:
//!   rules:
//!     - {hostname: www.example.com, path: "^/api(?s:/.*)?$", service: "http://api.shop.svc.cluster.local:80",
//!        origin: {noTLSVerify: "true", connectTimeout: 30s}}
//!     - {service: "http_status:404"}
//!   dns: [www.example.com]
//!   sources:
//!     - {source: Ingress shop/web, verdict: Accepted, hosts: [www.example.com]}
//!     - {source: Ingress shop/late, verdict: Conflict, message: "host www.example.com ..."}
//!   # or error: "<the refusal's text>"
//! ```
//!
//! Of `rules`, `dns` and `sources`, one left out is not compared (unless the
//! case expects an `error`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use knit_tunnel_core::{
    Backend, BackendState, IngressRule, OriginRequest, PathMatch, Request, Route, Scheme, Source,
    SourceKind, Tunnel,
};

use super::Outcome;
use crate::runtime::Plugin;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    description: String,
    input: Input,
    expect: Expected,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Input {
    tunnel: TunnelSpec,
    #[serde(default = "default_cluster_domain")]
    cluster_domain: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    sources: Vec<SourceSpec>,
}

fn default_cluster_domain() -> String {
    "cluster.local".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TunnelSpec {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    domain: String,
    fallback_target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    kind: KindSpec,
    namespace: String,
    name: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    /// cloudflared's origin settings by its names, as the annotations write
    /// them.
    #[serde(default)]
    origin: BTreeMap<String, String>,
}

#[derive(Deserialize)]
enum KindSpec {
    Ingress,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteSpec {
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    path_type: PathTypeSpec,
    service: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    scheme: SchemeSpec,
    #[serde(default)]
    state: StateSpec,
}

#[derive(Deserialize, Default)]
enum PathTypeSpec {
    #[default]
    Prefix,
    Exact,
    RegularExpression,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum SchemeSpec {
    #[default]
    Http,
    Https,
    Tcp,
    Ssh,
    Rdp,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StateSpec {
    Named(NamedState),
    Missing { missing: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum NamedState {
    Ready,
    NoReadyEndpoints,
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec::Named(NamedState::Ready)
    }
}

/// What the plugin should answer: the mapping, or an error's text.
#[serde_with::skip_serializing_none]
#[derive(Deserialize, Serialize, PartialEq, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Expected {
    rules: Option<Vec<RuleSpec>>,
    dns: Option<Vec<String>>,
    sources: Option<Vec<StatusSpec>>,
    error: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Deserialize, Serialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    hostname: Option<String>,
    path: Option<String>,
    service: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    origin: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct StatusSpec {
    /// `Ingress ns/name`.
    source: String,
    verdict: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
}

fn request(input: Input) -> anyhow::Result<Request> {
    Ok(Request {
        tunnel: Tunnel {
            name: input.tunnel.name,
            namespace: input.tunnel.namespace,
            domain: input.tunnel.domain,
            fallback_target: input.tunnel.fallback_target,
        },
        sources: input
            .sources
            .into_iter()
            .map(|source| {
                let mut origin = OriginRequest::default();
                for (key, value) in &source.origin {
                    origin.set(key, value).map_err(|why| {
                        anyhow::anyhow!("{} {}: {why}", source.namespace, source.name)
                    })?;
                }
                Ok(Source {
                    origin,
                    kind: match source.kind {
                        KindSpec::Ingress => SourceKind::Ingress,
                        KindSpec::HttpRoute => SourceKind::HttpRoute,
                    },
                    namespace: source.namespace,
                    name: source.name,
                    created: source.created,
                    routes: source
                        .routes
                        .into_iter()
                        .map(|route| Route {
                            host: route.host,
                            path: route.path.map(|path| {
                                let kind = match route.path_type {
                                    PathTypeSpec::Prefix => PathMatch::Prefix,
                                    PathTypeSpec::Exact => PathMatch::Exact,
                                    PathTypeSpec::RegularExpression => PathMatch::RegularExpression,
                                };
                                (kind, path)
                            }),
                            backend: Backend {
                                service: route.service,
                                port: route.port,
                                scheme: match route.scheme {
                                    SchemeSpec::Http => Scheme::Http,
                                    SchemeSpec::Https => Scheme::Https,
                                    SchemeSpec::Tcp => Scheme::Tcp,
                                    SchemeSpec::Ssh => Scheme::Ssh,
                                    SchemeSpec::Rdp => Scheme::Rdp,
                                },
                                state: match route.state {
                                    StateSpec::Named(NamedState::Ready) => BackendState::Ready,
                                    StateSpec::Named(NamedState::NoReadyEndpoints) => {
                                        BackendState::NoReadyEndpoints
                                    }
                                    StateSpec::Missing { missing } => {
                                        BackendState::Missing(missing)
                                    }
                                },
                            },
                        })
                        .collect(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        cluster_domain: input.cluster_domain,
    })
}

fn rule_spec(rule: IngressRule) -> RuleSpec {
    RuleSpec {
        hostname: rule.hostname,
        path: rule.path,
        service: rule.service,
        origin: rule
            .origin
            .entries()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    }
}

pub(super) fn run_case(plugin: &Plugin, text: &str) -> anyhow::Result<Outcome> {
    let case: Case = serde_yaml::from_str(text)?;
    let config: Vec<(String, String)> = case.input.config.clone().into_iter().collect();
    let request = request(case.input)?;
    let expect = case.expect;
    let mut actual = match plugin.map_tunnel(&request, &config) {
        Ok(Ok(mapping)) => Expected {
            rules: Some(mapping.rules.into_iter().map(rule_spec).collect()),
            dns: Some(mapping.dns),
            sources: Some(
                mapping
                    .sources
                    .into_iter()
                    .map(|status| StatusSpec {
                        source: format!("{} {}/{}", status.kind, status.namespace, status.name),
                        verdict: status.verdict.name().into(),
                        message: status.verdict.message().into(),
                        hosts: status.hosts,
                    })
                    .collect(),
            ),
            error: None,
        },
        Ok(Err(refusal)) => Expected {
            error: Some(refusal),
            ..Expected::default()
        },
        Err(error) => Expected {
            error: Some(error.to_string()),
            ..Expected::default()
        },
    };
    if expect.error.is_none() {
        // A part the case leaves out is not compared.
        if expect.rules.is_none() {
            actual.rules = None;
        }
        if expect.dns.is_none() {
            actual.dns = None;
        }
        if expect.sources.is_none() {
            actual.sources = None;
        }
    }
    Ok(Outcome::new(case.description, &expect, &actual))
}
