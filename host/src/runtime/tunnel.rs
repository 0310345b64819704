//! Calls into the `tunnel-mapper` world.

use knit_tunnel_core::{
    BackendState, IngressRule, Mapping, PathMatch, Request, Scheme, SourceKind, SourceStatus,
    Verdict, check_mapping,
};

use super::bindings::tunnel_mapper::exports::knit::plugin::tunnel;
use super::bindings::types::ConfigEntry;
use super::plugin::Pre;
use super::{CallError, Plugin, World};

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
                let mapping = native_mapping(mapping);
                check_mapping(request, &mapping).map_err(|reason| CallError::BadOutput {
                    plugin: self.reference(),
                    reason,
                })?;
                Ok(Ok(mapping))
            }
            Err(tunnel::MapError::InvalidConfig(why)) => Ok(Err(format!("invalid config: {why}"))),
            Err(tunnel::MapError::InvalidRequest(why)) => {
                Ok(Err(format!("invalid request: {why}")))
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
            config: self
                .settings
                .config
                .iter()
                .chain(config)
                .map(|(key, value)| ConfigEntry {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

fn native_mapping(mapping: tunnel::Mapping) -> Mapping {
    Mapping {
        rules: mapping
            .rules
            .into_iter()
            .map(|rule| IngressRule {
                hostname: rule.hostname,
                path: rule.path,
                service: rule.service,
            })
            .collect(),
        dns: mapping.dns,
        sources: mapping
            .sources
            .into_iter()
            .map(|status| SourceStatus {
                kind: match status.kind {
                    tunnel::SourceKind::Ingress => SourceKind::Ingress,
                    tunnel::SourceKind::HttpRoute => SourceKind::HttpRoute,
                },
                namespace: status.namespace,
                name: status.name,
                verdict: match status.verdict {
                    tunnel::Verdict::Accepted => Verdict::Accepted,
                    tunnel::Verdict::Conflict(m) => Verdict::Conflict(m),
                    tunnel::Verdict::NamespaceNotAllowed(m) => Verdict::NamespaceNotAllowed(m),
                    tunnel::Verdict::NoReadyEndpoints(m) => Verdict::NoReadyEndpoints(m),
                    tunnel::Verdict::Invalid(m) => Verdict::Invalid(m),
                },
                hosts: status.hosts,
            })
            .collect(),
    }
}

fn wit_kind(kind: SourceKind) -> tunnel::SourceKind {
    match kind {
        SourceKind::Ingress => tunnel::SourceKind::Ingress,
        SourceKind::HttpRoute => tunnel::SourceKind::HttpRoute,
    }
}
