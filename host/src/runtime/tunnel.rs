//! Calls into the `tunnel-mapper` world.

use knit_tunnel_core::{
    BackendState, IngressRule, Mapping, PathMatch, Request, Scheme, SourceKind, SourceStatus,
    Verdict, check_mapping,
};

use super::bindings::tunnel_mapper::exports::knit::plugin::tunnel;
use super::plugin::Pre;
use super::{CallError, Plugin, World, text};

impl Plugin {
    /// Asks the mapper for the cloudflared rules, DNS names and source
    /// verdicts of one tunnel. The outer error is the plugin failing (or a
    /// mapping the host refuses); the inner one is the plugin's own refusal
    /// of its configuration or of the request, as text.
    ///
    /// The configuration passed is this plugin's settings, then `config`.
    /// Every mapping is checked with `knit_tunnel_core::check_mapping`
    /// before it is returned.
    pub fn map_tunnel(
        &self,
        request: &Request,
        config: &[(String, String)],
    ) -> Result<Result<Mapping, String>, CallError> {
        let Pre::TunnelMapper(pre) = &self.pre else {
            return Err(self.wrong_world(World::TunnelMapper));
        };
        let wit_request = self.tunnel_request(request, config);
        let answer = self.call("map", |store, _| {
            let instance = pre.instantiate(&mut *store)?;
            instance
                .knit_plugin_tunnel()
                .call_map(&mut *store, &wit_request)
        })?;
        match answer {
            Ok(mapping) => {
                let mapping = native_mapping(mapping).map_err(|reason| self.bad_output(reason))?;
                check_mapping(request, &mapping).map_err(|reason| self.bad_output(reason))?;
                Ok(Ok(mapping))
            }
            Err(tunnel::MapError::InvalidConfig(why)) => {
                Ok(Err(text::refusal("invalid config", &why)))
            }
            Err(tunnel::MapError::InvalidRequest(why)) => {
                Ok(Err(text::refusal("invalid request", &why)))
            }
        }
    }

    fn tunnel_request(&self, request: &Request, config: &[(String, String)]) -> tunnel::MapRequest {
        let t = &request.tunnel;
        tunnel::MapRequest {
            tunnel: tunnel::Tunnel {
                name: t.name.clone(),
                namespace: t.namespace.clone(),
                domain: t.domain.clone(),
                fallback_target: t.fallback_target.clone(),
            },
            sources: request
                .sources
                .iter()
                .map(|source| tunnel::Source {
                    kind: wit_kind(source.kind),
                    namespace: source.namespace.clone(),
                    name: source.name.clone(),
                    created: source.created,
                    routes: source
                        .routes
                        .iter()
                        .map(|route| tunnel::Route {
                            host: route.host.clone(),
                            path: route.path.as_ref().map(|(kind, value)| tunnel::Path {
                                kind: match kind {
                                    PathMatch::Prefix => tunnel::PathMatch::Prefix,
                                    PathMatch::Exact => tunnel::PathMatch::Exact,
                                    PathMatch::RegularExpression => {
                                        tunnel::PathMatch::RegularExpression
                                    }
                                },
                                value: value.clone(),
                            }),
                            backend: tunnel::Backend {
                                service: route.backend.service.clone(),
                                port: route.backend.port,
                                scheme: match route.backend.scheme {
                                    Scheme::Http => tunnel::Scheme::Http,
                                    Scheme::Https => tunnel::Scheme::Https,
                                },
                                state: match &route.backend.state {
                                    BackendState::Ready => tunnel::BackendState::Ready,
                                    BackendState::NoReadyEndpoints => {
                                        tunnel::BackendState::NoReadyEndpoints
                                    }
                                    BackendState::Missing(why) => {
                                        tunnel::BackendState::Missing(why.clone())
                                    }
                                },
                            },
                        })
                        .collect(),
                })
                .collect(),
            cluster_domain: request.cluster_domain.clone(),
            config: self.config_entries(config),
        }
    }
}

/// The mapping in the core's types, its names and values bounded and its
/// messages cleaned (see `text`).
fn native_mapping(mapping: tunnel::Mapping) -> Result<Mapping, String> {
    let name = |what: &str, value: String| text::identifier(what, value, text::NAME_LIMIT);
    let value = |what: &str, value: String| text::identifier(what, value, text::VALUE_LIMIT);
    let message = |m: String| text::clean(&m, text::MESSAGE_LIMIT);
    let names = |what: &str, values: Vec<String>| {
        values
            .into_iter()
            .map(|v| name(what, v))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(Mapping {
        rules: mapping
            .rules
            .into_iter()
            .map(|rule| {
                Ok(IngressRule {
                    hostname: rule
                        .hostname
                        .map(|h| name("a rule's hostname", h))
                        .transpose()?,
                    path: rule.path.map(|p| value("a rule's path", p)).transpose()?,
                    service: value("a rule's service", rule.service)?,
                })
            })
            .collect::<Result<_, String>>()?,
        dns: names("a DNS name", mapping.dns)?,
        sources: mapping
            .sources
            .into_iter()
            .map(|status| {
                Ok(SourceStatus {
                    kind: match status.kind {
                        tunnel::SourceKind::Ingress => SourceKind::Ingress,
                        tunnel::SourceKind::HttpRoute => SourceKind::HttpRoute,
                    },
                    namespace: name("a source namespace", status.namespace)?,
                    name: name("a source name", status.name)?,
                    verdict: match status.verdict {
                        tunnel::Verdict::Accepted => Verdict::Accepted,
                        tunnel::Verdict::Conflict(m) => Verdict::Conflict(message(m)),
                        tunnel::Verdict::NamespaceNotAllowed(m) => {
                            Verdict::NamespaceNotAllowed(message(m))
                        }
                        tunnel::Verdict::NoReadyEndpoints(m) => {
                            Verdict::NoReadyEndpoints(message(m))
                        }
                        tunnel::Verdict::Invalid(m) => Verdict::Invalid(message(m)),
                    },
                    hosts: names("a source's host", status.hosts)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

fn wit_kind(kind: SourceKind) -> tunnel::SourceKind {
    match kind {
        SourceKind::Ingress => tunnel::SourceKind::Ingress,
        SourceKind::HttpRoute => tunnel::SourceKind::HttpRoute,
    }
}
