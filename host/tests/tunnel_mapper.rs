//! The built-in tunnel-mapper through the runtime: its answers are the
//! native `knit_tunnel_core::map`, its refusals come back as text, and a
//! lying mapping is refused by the host.

mod common;

use std::sync::Arc;

use knit::runtime::{CallError, Plugin, PluginSettings, PluginSource, Registry, World};
use knit_tunnel_core::{
    Backend, BackendState, Mapping, OriginRequest, PathMatch, Request, Route, Scheme, Source,
    SourceKind, Tunnel, Verdict,
};

fn load(registry: &Registry, name: &str, bytes: &[u8], config: &[(&str, &str)]) -> Arc<Plugin> {
    registry
        .load(
            PluginSource::BuiltIn,
            name,
            bytes,
            PluginSettings {
                config: pairs(config),
                ..PluginSettings::default()
            },
            None,
        )
        .unwrap()
}

fn builtin_bytes() -> &'static [u8] {
    knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(name, _)| *name == "tunnel-mapper")
        .expect("tunnel-mapper is built in")
        .1
}

fn builtin(registry: &Registry) -> Arc<Plugin> {
    load(registry, "tunnel-mapper", builtin_bytes(), &[])
}

fn pairs(config: &[(&str, &str)]) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tunnel(namespace: Option<&str>) -> Tunnel {
    Tunnel {
        name: "edge".into(),
        namespace: namespace.map(str::to_string),
        domain: "example.com".into(),
        fallback_target: "http_status:404".into(),
    }
}

fn route(host: &str, path: Option<(PathMatch, &str)>, service: &str, state: BackendState) -> Route {
    Route {
        host: host.into(),
        path: path.map(|(kind, p)| (kind, p.to_string())),
        backend: Backend {
            service: service.into(),
            port: 80,
            scheme: Scheme::Http,
            state,
        },
    }
}

fn source(
    kind: SourceKind,
    namespace: &str,
    name: &str,
    created: i64,
    routes: Vec<Route>,
) -> Source {
    Source {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        created,
        routes,
        origin: OriginRequest::default(),
    }
}

fn request(tunnel: Tunnel, sources: Vec<Source>) -> Request {
    Request {
        tunnel,
        sources,
        cluster_domain: "cluster.local".into(),
    }
}

/// What the native code maps with this configuration.
fn native(request: &Request, config: &[(String, String)]) -> Mapping {
    let config = knit_tunnel_core::parse_config(config).unwrap();
    knit_tunnel_core::map(request, &config)
}

/// Asks the plugin and the native code; they must agree. Returns the mapping.
fn same_as_native(plugin: &Plugin, request: &Request, config: &[(&str, &str)]) -> Mapping {
    let config = pairs(config);
    let expected = native(request, &config);
    let answer = plugin.map_tunnel(request, &config).unwrap();
    assert_eq!(answer, Ok(expected.clone()), "config {config:?}");
    expected
}

/// A namespaced Tunnel with an accepted Ingress (a prefix and an exact
/// path), a younger one contesting its prefix, and one from another
/// namespace.
fn shop() -> Request {
    request(
        tunnel(Some("shop")),
        vec![
            source(
                SourceKind::Ingress,
                "shop",
                "web",
                1,
                vec![
                    route(
                        "www.example.com",
                        Some((PathMatch::Prefix, "/api")),
                        "api",
                        BackendState::Ready,
                    ),
                    route(
                        "www.example.com",
                        Some((PathMatch::Exact, "/api/v1")),
                        "v1",
                        BackendState::Ready,
                    ),
                ],
            ),
            source(
                SourceKind::Ingress,
                "shop",
                "late",
                2,
                vec![route(
                    "www.example.com",
                    Some((PathMatch::Prefix, "/api")),
                    "late",
                    BackendState::Ready,
                )],
            ),
            source(
                SourceKind::Ingress,
                "blog",
                "foreign",
                0,
                vec![route("blog.example.com", None, "blog", BackendState::Ready)],
            ),
        ],
    )
}

#[test]
fn the_built_in_mapper_maps_as_the_native_code_does() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    assert_eq!(plugin.world, World::TunnelMapper);
    assert_eq!(plugin.world.name(), "tunnel-mapper");
    assert_eq!(plugin.info.name, "tunnel-mapper");
    assert_eq!(plugin.info.version, env!("CARGO_PKG_VERSION"));

    let shop = same_as_native(&plugin, &shop(), &[]);
    let verdicts: Vec<&str> = shop.sources.iter().map(|s| s.verdict.name()).collect();
    assert_eq!(verdicts, ["Accepted", "Conflict", "NamespaceNotAllowed"]);
    assert_eq!(shop.dns, ["www.example.com"]);
    assert_eq!(shop.rules.len(), 3);

    // A rolling restart, an HTTPRoute with a regex and a wildcard; the
    // unready backend is withheld by default and published when configured.
    let restart = request(
        tunnel(None),
        vec![
            source(
                SourceKind::HttpRoute,
                "media",
                "images",
                10,
                vec![
                    route(
                        "*.cdn.example.com",
                        Some((PathMatch::RegularExpression, "/img/.*\\.png")),
                        "images",
                        BackendState::Ready,
                    ),
                    route(
                        "cdn.example.com",
                        None,
                        "cdn",
                        BackendState::NoReadyEndpoints,
                    ),
                ],
            ),
            source(
                SourceKind::Ingress,
                "shop",
                "gone",
                5,
                vec![route(
                    "gone.example.com",
                    None,
                    "gone",
                    BackendState::Missing("service gone not found".into()),
                )],
            ),
        ],
    );
    let withheld = same_as_native(&plugin, &restart, &[]);
    assert_eq!(withheld.rules.len(), 2);
    assert_eq!(
        withheld.sources[0].verdict,
        Verdict::NoReadyEndpoints("backend cdn:80 has no ready endpoints".into())
    );
    assert_eq!(
        withheld.dns,
        ["*.cdn.example.com", "cdn.example.com", "gone.example.com"]
    );
    let published = same_as_native(&plugin, &restart, &[("withhold-unready", "false")]);
    assert_eq!(published.rules.len(), 3);
    assert_eq!(published.sources[0].verdict, Verdict::Accepted);

    // The benchmark's thousand Ingresses.
    let big = same_as_native(&plugin, &knit::bench_fixtures::tunnel_bench_request(), &[]);
    assert!(big.rules.len() > 1500, "{}", big.rules.len());

    // Generated requests: whatever the mix, the sandbox agrees.
    let mut rng = SplitMix64(3);
    for _ in 0..150 {
        let request = random_request(&mut rng);
        same_as_native(&plugin, &request, &[]);
        same_as_native(&plugin, &request, &[("withhold-unready", "false")]);
    }
}

#[test]
fn settings_come_first_and_the_call_config_wins() {
    let registry = common::registry();
    let publish = load(
        &registry,
        "tunnel-publish-unready",
        builtin_bytes(),
        &[("withhold-unready", "false")],
    );
    let restarting = request(
        tunnel(None),
        vec![source(
            SourceKind::Ingress,
            "a",
            "app",
            1,
            vec![route(
                "app.example.com",
                None,
                "app",
                BackendState::NoReadyEndpoints,
            )],
        )],
    );
    let mapping = publish.map_tunnel(&restarting, &[]).unwrap().unwrap();
    assert_eq!(mapping.rules.len(), 2);
    let mapping = publish
        .map_tunnel(&restarting, &pairs(&[("withhold-unready", "true")]))
        .unwrap()
        .unwrap();
    assert_eq!(mapping.rules.len(), 1);
}

#[test]
fn bad_config_and_bad_requests_are_the_plugins_answer_not_a_failure() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    for (config, says) in [
        (
            ("withhold-unready", "maybe"),
            "invalid config: withhold-unready \"maybe\": expected true or false",
        ),
        (
            ("withold-unready", "true"),
            "invalid config: unknown configuration key \"withold-unready\": expected withhold-unready",
        ),
    ] {
        let refusal = plugin
            .map_tunnel(&shop(), &pairs(&[config]))
            .unwrap()
            .unwrap_err();
        assert_eq!(refusal, says);
    }
    let mut twice = shop();
    twice.sources.push(twice.sources[0].clone());
    assert_eq!(
        plugin.map_tunnel(&twice, &[]).unwrap(),
        Err("invalid request: Ingress shop/web is listed twice".into())
    );
    let mut no_domain = shop();
    no_domain.tunnel.domain = "not a domain".into();
    assert!(
        plugin
            .map_tunnel(&no_domain, &[])
            .unwrap()
            .unwrap_err()
            .starts_with("invalid request: the domain \"not a domain\" of Tunnel shop/edge")
    );
}

/// Asks the liar in each mode of `modes` for an answer to `request`; see
/// `common::assert_refused`.
fn assert_refused(registry: &Registry, liar: &[u8], request: &Request, modes: &[(&str, &str)]) {
    common::assert_refused(modes, |mode| {
        load(
            registry,
            &format!("tunnel-liar-{mode}"),
            liar,
            &[("mode", mode)],
        )
        .map_tunnel(request, &[])
    });
}

#[test]
fn the_host_refuses_a_lying_mapping_and_the_wrong_world() {
    let registry = common::registry();
    let liar = common::built_plugin("fixture_tunnel_liar");
    let request = shop();

    // Honest without a mode: the check lets a good mapping through.
    let honest = load(&registry, "tunnel-liar-honest", &liar, &[]);
    assert_eq!(
        honest.map_tunnel(&request, &[]).unwrap(),
        Ok(native(&request, &[]))
    );
    assert_refused(
        &registry,
        &liar,
        &request,
        &[
            (
                "drop-fallback",
                "the last rule must be the fallback ((any host) -> \"http_status:404\"), found \"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://api.shop.svc.cluster.local:80\"",
            ),
            (
                "foreign-namespace",
                "rule 1 (\"blog.example.com\" -> \"http://blog.blog.svc.cluster.local:80\") is for Ingress blog/foreign, which is refused (NamespaceNotAllowed): \"Tunnel shop/edge only accepts sources in namespace shop\"",
            ),
            (
                "shadowing",
                "rule 2 (\"www.example.com\" path \"^/api/v1$\" -> \"http://v1.shop.svc.cluster.local:80\") is never reached: rule 1 (\"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://api.shop.svc.cluster.local:80\") matches its requests first",
            ),
            (
                "refused-source",
                "rule 1 (\"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://late.shop.svc.cluster.local:80\") is for Ingress shop/late, which is refused (Conflict): \"host www.example.com path /api is served by Ingress shop/web\"",
            ),
            (
                "dns-outside-domain",
                "DNS name \"www.not-example.com\" is not inside the tunnel's domain example.com",
            ),
        ],
    );

    // Each world's call refuses a plugin of another world.
    let tunnel_mapper = builtin(&registry);
    let clb = load(
        &registry,
        "clb-allocator",
        &common::built_plugin("clb_allocator"),
        &[],
    );
    let error = clb.map_tunnel(&request, &[]).unwrap_err();
    assert!(
        matches!(
            error,
            CallError::WrongWorld {
                actual: "clb-allocator",
                wanted: "tunnel-mapper",
                ..
            }
        ),
        "{error}"
    );
    let error = tunnel_mapper
        .allocate(&knit_ipam_core::Request::default(), &[])
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallError::WrongWorld {
                actual: "tunnel-mapper",
                wanted: "ipam-strategy",
                ..
            }
        ),
        "{error}"
    );
}

/// A mapping whose verdicts say a source is served while its rules or DNS
/// names are gone, or that withholds ready backends, is refused through the
/// runtime like any other lie.
#[test]
fn the_host_refuses_a_mapping_that_drops_what_serves() {
    let registry = common::registry();
    let liar = common::built_plugin("fixture_tunnel_liar");
    // The shop, and a source whose root backend is restarting.
    let mut request = shop();
    request.sources.push(source(
        SourceKind::Ingress,
        "shop",
        "restarting",
        3,
        vec![
            route(
                "app.example.com",
                None,
                "app",
                BackendState::NoReadyEndpoints,
            ),
            route(
                "app.example.com",
                Some((PathMatch::Prefix, "/static")),
                "static",
                BackendState::Ready,
            ),
        ],
    ));
    let honest = load(&registry, "tunnel-liar-honest", &liar, &[]);
    let mapping = honest.map_tunnel(&request, &[]).unwrap().unwrap();
    assert_eq!(mapping, native(&request, &[]));
    assert!(matches!(
        mapping.sources[3].verdict,
        Verdict::NoReadyEndpoints(_)
    ));
    assert_refused(
        &registry,
        &liar,
        &request,
        &[
            (
                "drop-accepted-rules",
                "Ingress shop/web is Accepted, but its host \"www.example.com\" path /api has no rule",
            ),
            (
                "accepted-without-rules",
                "Ingress shop/restarting is Accepted, but its host \"app.example.com\" path / has no rule",
            ),
            (
                "withhold-ready",
                "Ingress shop/web withholds its host \"www.example.com\" path /api, whose backend api:80 is ready",
            ),
            (
                "unready-without-withholding",
                "Ingress shop/web is NoReadyEndpoints (\"no endpoint is ready\"), but every route of it has its rule",
            ),
            (
                "drop-dns",
                "Ingress shop/web is Accepted, but its host \"www.example.com\" has no DNS name",
            ),
            (
                "skip-tls-verify",
                "rule 1 (\"app.example.com\" path \"^/static(?s:/.*)?$\" -> \"http://static.shop.svc.cluster.local:80\" with origin settings noTLSVerify=\"true\"): Ingress shop/restarting asks for origin settings none",
            ),
        ],
    );
}

/// The benchmark's large tunnel (conflicts, wildcards, withheld backends)
/// passes the host's check through the runtime, withholding or not.
#[test]
fn the_built_in_mappings_pass_the_check_at_scale() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    let bench = knit::bench_fixtures::tunnel_bench_request();
    same_as_native(&plugin, &bench, &[]);
    same_as_native(&plugin, &bench, &[("withhold-unready", "false")]);
}

/// A small generator: a seed replays.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Sources over a few hosts, paths and namespaces, so conflicts, wildcards,
/// refusals and unready backends all happen.
fn random_request(rng: &mut SplitMix64) -> Request {
    const HOSTS: &[&str] = &[
        "app.example.com",
        "api.example.com",
        "*.example.com",
        "*.dev.example.com",
        "x.dev.example.com",
        "example.com",
        "elsewhere.org",
        "",
    ];
    let paths = [
        None,
        Some((PathMatch::Prefix, "/")),
        Some((PathMatch::Prefix, "/api")),
        Some((PathMatch::Prefix, "/api/v1/")),
        Some((PathMatch::Exact, "/api")),
        Some((PathMatch::Exact, "/v1.0")),
        Some((PathMatch::RegularExpression, "/static/.*")),
    ];
    let namespaces = ["a", "b", "c"];
    let tunnel_of = tunnel((rng.below(3) == 0).then_some("a"));
    let sources = (0..rng.below(10))
        .map(|i| {
            let routes = (0..rng.below(4))
                .map(|_| {
                    let state = match rng.below(6) {
                        0 => BackendState::NoReadyEndpoints,
                        1 => BackendState::Missing("service gone not found".into()),
                        _ => BackendState::Ready,
                    };
                    let host = HOSTS[rng.below(HOSTS.len())];
                    let mut r = route(
                        host,
                        paths[rng.below(paths.len())],
                        ["web", "api"][rng.below(2)],
                        state,
                    );
                    if rng.below(3) == 0 {
                        r.backend.scheme = Scheme::ALL[rng.below(Scheme::ALL.len())];
                    }
                    r
                })
                .collect();
            let kind = if rng.below(2) == 0 {
                SourceKind::Ingress
            } else {
                SourceKind::HttpRoute
            };
            let mut source = source(
                kind,
                namespaces[rng.below(namespaces.len())],
                &format!("s{i}"),
                rng.below(4) as i64,
                routes,
            );
            // Every setting crosses the plugin boundary both ways.
            if rng.below(3) == 0 {
                source.origin = OriginRequest {
                    no_tls_verify: Some(rng.below(2) == 0),
                    origin_server_name: Some(format!("s{i}.internal")),
                    ca_pool: Some("/etc/ca.pem".into()),
                    http_host_header: Some("www.example.com".into()),
                    connect_timeout: Some(rng.below(60) as u32),
                    tls_timeout: Some(10),
                    keep_alive_timeout: Some(90),
                    http2_origin: Some(true),
                    disable_chunked_encoding: Some(false),
                };
            }
            source
        })
        .collect();
    request(tunnel_of, sources)
}
