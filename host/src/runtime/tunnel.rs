//! Calls into the `tunnel-mapper` world.

use knit_tunnel_core::{
    BackendState, IngressRule, Mapping, OriginRequest, PathMatch, Request, Scheme, SourceKind,
    SourceStatus, Verdict, check_mapping,
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
                                    Scheme::Tcp => tunnel::Scheme::Tcp,
                                    Scheme::Ssh => tunnel::Scheme::Ssh,
                                    Scheme::Rdp => tunnel::Scheme::Rdp,
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
                    origin: wit_origin(&source.origin),
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
                    origin: native_origin(rule.origin)?,
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

fn wit_origin(origin: &OriginRequest) -> tunnel::OriginRequest {
    let o = origin.clone();
    tunnel::OriginRequest {
        no_tls_verify: o.no_tls_verify,
        origin_server_name: o.origin_server_name,
        ca_pool: o.ca_pool,
        http_host_header: o.http_host_header,
        connect_timeout: o.connect_timeout,
        tls_timeout: o.tls_timeout,
        keep_alive_timeout: o.keep_alive_timeout,
        http2_origin: o.http2_origin,
        disable_chunked_encoding: o.disable_chunked_encoding,
    }
}

/// A rule's origin settings, their strings bounded like the rule's own.
fn native_origin(o: tunnel::OriginRequest) -> Result<OriginRequest, String> {
    let value = |what: &str, v: Option<String>| {
        v.map(|v| text::identifier(what, v, text::VALUE_LIMIT))
            .transpose()
    };
    Ok(OriginRequest {
        no_tls_verify: o.no_tls_verify,
        origin_server_name: value("a rule's originServerName", o.origin_server_name)?,
        ca_pool: value("a rule's caPool", o.ca_pool)?,
        http_host_header: value("a rule's httpHostHeader", o.http_host_header)?,
        connect_timeout: o.connect_timeout,
        tls_timeout: o.tls_timeout,
        keep_alive_timeout: o.keep_alive_timeout,
        http2_origin: o.http2_origin,
        disable_chunked_encoding: o.disable_chunked_encoding,
    })
}
