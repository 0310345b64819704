//! Builders the tests of every module share.

use crate::*;

pub(crate) fn cluster_tunnel() -> Tunnel {
    Tunnel {
        name: "edge".into(),
        namespace: None,
        domain: "example.com".into(),
        fallback_target: "http_status:404".into(),
    }
}

pub(crate) fn tunnel_in(namespace: &str) -> Tunnel {
    Tunnel {
        namespace: Some(namespace.into()),
        ..cluster_tunnel()
    }
}

pub(crate) fn backend(service: &str, port: u16, state: BackendState) -> Backend {
    Backend {
        service: service.into(),
        port,
        scheme: Scheme::Http,
        state,
    }
}

pub(crate) fn ready(service: &str) -> Backend {
    backend(service, 80, BackendState::Ready)
}

pub(crate) fn route(host: &str, path: Option<(PathMatch, &str)>, backend: Backend) -> Route {
    Route {
        host: host.into(),
        path: path.map(|(kind, p)| (kind, p.to_string())),
        backend,
    }
}

pub(crate) fn prefix(p: &str) -> Option<(PathMatch, &str)> {
    Some((PathMatch::Prefix, p))
}

pub(crate) fn exact(p: &str) -> Option<(PathMatch, &str)> {
    Some((PathMatch::Exact, p))
}

pub(crate) fn ingress(namespace: &str, name: &str, created: i64, routes: Vec<Route>) -> Source {
    Source {
        kind: SourceKind::Ingress,
        namespace: namespace.into(),
        name: name.into(),
        created,
        routes,
        origin: OriginRequest::default(),
    }
}

pub(crate) fn request(tunnel: Tunnel, sources: Vec<Source>) -> Request {
    Request {
        tunnel,
        sources,
        cluster_domain: "cluster.local".into(),
    }
}

pub(crate) fn rule(host: &str, path: Option<&str>, service: &str) -> IngressRule {
    IngressRule {
        hostname: Some(host.into()),
        path: path.map(str::to_string),
        service: service.into(),
        origin: OriginRequest::default(),
    }
}

pub(crate) fn fallback() -> IngressRule {
    IngressRule {
        hostname: None,
        path: None,
        service: "http_status:404".into(),
        origin: OriginRequest::default(),
    }
}

pub(crate) fn mapped(request: &Request) -> Mapping {
    let mapping = map(request, &Config::default());
    check_mapping(request, &mapping).unwrap();
    mapping
}

pub(crate) fn verdicts(mapping: &Mapping) -> Vec<&Verdict> {
    mapping.sources.iter().map(|s| &s.verdict).collect()
}
