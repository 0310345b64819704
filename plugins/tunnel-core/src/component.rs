//! The WIT glue of the tunnel-mapper plugin: converts the `knit:plugin/tunnel`
//! records to this crate's types and back. The plugin crate is one
//! `tunnel_plugin!` line.

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tunnel-mapper",
        pub_export_macro: true,
        default_bindings_module: "knit_tunnel_core::component::bindings",
    });
}

use bindings::exports::knit::plugin::tunnel;
use bindings::knit::plugin::types::ConfigEntry;

/// Reads the configuration, checks the request, then maps, on a WIT request.
pub fn map(request: tunnel::MapRequest) -> Result<tunnel::Mapping, tunnel::MapError> {
    let (request, config) = native_request(request);
    let config = crate::parse_config(&config).map_err(tunnel::MapError::InvalidConfig)?;
    crate::validate_request(&request).map_err(tunnel::MapError::InvalidRequest)?;
    Ok(wit_mapping(crate::map(&request, &config)))
}

/// The request as this crate's types, and its configuration entries.
pub fn native_request(request: tunnel::MapRequest) -> (crate::Request, Vec<(String, String)>) {
    let config = request
        .config
        .into_iter()
        .map(|ConfigEntry { key, value }| (key, value))
        .collect();
    let native = crate::Request {
        tunnel: crate::Tunnel {
            name: request.tunnel.name,
            namespace: request.tunnel.namespace,
            domain: request.tunnel.domain,
            fallback_target: request.tunnel.fallback_target,
        },
        sources: request
            .sources
            .into_iter()
            .map(|source| crate::Source {
                kind: kind(source.kind),
                namespace: source.namespace,
                name: source.name,
                created: source.created,
                routes: source
                    .routes
                    .into_iter()
                    .map(|route| crate::Route {
                        host: route.host,
                        path: route.path.map(|p| {
                            let kind = match p.kind {
                                tunnel::PathMatch::Prefix => crate::PathMatch::Prefix,
                                tunnel::PathMatch::Exact => crate::PathMatch::Exact,
                                tunnel::PathMatch::RegularExpression => {
                                    crate::PathMatch::RegularExpression
                                }
                            };
                            (kind, p.value)
                        }),
                        backend: crate::Backend {
                            service: route.backend.service,
                            port: route.backend.port,
                            scheme: match route.backend.scheme {
                                tunnel::Scheme::Http => crate::Scheme::Http,
                                tunnel::Scheme::Https => crate::Scheme::Https,
                                tunnel::Scheme::Tcp => crate::Scheme::Tcp,
                                tunnel::Scheme::Ssh => crate::Scheme::Ssh,
                                tunnel::Scheme::Rdp => crate::Scheme::Rdp,
                            },
                            state: match route.backend.state {
                                tunnel::BackendState::Ready => crate::BackendState::Ready,
                                tunnel::BackendState::NoReadyEndpoints => {
                                    crate::BackendState::NoReadyEndpoints
                                }
                                tunnel::BackendState::Missing(why) => {
                                    crate::BackendState::Missing(why)
                                }
                            },
                        },
                    })
                    .collect(),
                origin: origin(source.origin),
            })
            .collect(),
        cluster_domain: request.cluster_domain,
    };
    (native, config)
}

/// A mapping as the WIT records.
pub fn wit_mapping(mapping: crate::Mapping) -> tunnel::Mapping {
    tunnel::Mapping {
        rules: mapping
            .rules
            .into_iter()
            .map(|rule| tunnel::IngressRule {
                hostname: rule.hostname,
                path: rule.path,
                service: rule.service,
                origin: wit_origin(rule.origin),
            })
            .collect(),
        dns: mapping.dns,
        sources: mapping
            .sources
            .into_iter()
            .map(|status| tunnel::SourceStatus {
                kind: match status.kind {
                    crate::SourceKind::Ingress => tunnel::SourceKind::Ingress,
                    crate::SourceKind::HttpRoute => tunnel::SourceKind::HttpRoute,
                },
                namespace: status.namespace,
                name: status.name,
                verdict: match status.verdict {
                    crate::Verdict::Accepted => tunnel::Verdict::Accepted,
                    crate::Verdict::Conflict(m) => tunnel::Verdict::Conflict(m),
                    crate::Verdict::NamespaceNotAllowed(m) => {
                        tunnel::Verdict::NamespaceNotAllowed(m)
                    }
                    crate::Verdict::NoReadyEndpoints(m) => tunnel::Verdict::NoReadyEndpoints(m),
                    crate::Verdict::Invalid(m) => tunnel::Verdict::Invalid(m),
                },
                hosts: status.hosts,
            })
            .collect(),
    }
}

fn origin(o: tunnel::OriginRequest) -> crate::OriginRequest {
    crate::OriginRequest {
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

fn wit_origin(o: crate::OriginRequest) -> tunnel::OriginRequest {
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

fn kind(kind: tunnel::SourceKind) -> crate::SourceKind {
    match kind {
        tunnel::SourceKind::Ingress => crate::SourceKind::Ingress,
        tunnel::SourceKind::HttpRoute => crate::SourceKind::HttpRoute,
    }
}

/// Defines and exports the tunnel-mapper component, named and versioned from
/// the calling crate's manifest.
#[macro_export]
macro_rules! tunnel_plugin {
    () => {
        struct Plugin;

        impl $crate::component::bindings::exports::knit::plugin::describe::Guest for Plugin {
            fn describe() -> $crate::component::bindings::knit::plugin::types::PluginInfo {
                $crate::component::bindings::knit::plugin::types::PluginInfo {
                    name: env!("CARGO_PKG_NAME").into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: env!("CARGO_PKG_DESCRIPTION").into(),
                }
            }
        }

        impl $crate::component::bindings::exports::knit::plugin::tunnel::Guest for Plugin {
            fn map(
                request: $crate::component::bindings::exports::knit::plugin::tunnel::MapRequest,
            ) -> Result<
                $crate::component::bindings::exports::knit::plugin::tunnel::Mapping,
                $crate::component::bindings::exports::knit::plugin::tunnel::MapError,
            > {
                $crate::component::map(request)
            }
        }

        $crate::component::bindings::export!(Plugin);
    };
}
