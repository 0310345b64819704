//! The plugin inputs the benchmarks time, one per world, shaped like a
//! controller's real requests. `knit plugin bench`, `cargo bench` and the
//! tests that compare a built plugin with its native twin at scale all take
//! them from here, so every number is measured on the same input.

/// A /24 as the controller would send it: 100 addresses taken.
pub fn bench_request() -> knit_ipam_core::Request {
    knit_ipam_core::Request {
        size: 256,
        allocated: (2..102).collect(),
        excluded: vec![0..=1, 255..=255],
        cursor: Some(101),
        count: 1,
        seed: 1,
    }
}

/// What `clb_bench_request` is, for the benchmarks' output.
pub const CLB_BENCH_SHAPE: &str =
    "3 CLBs x ports 1-1000, 1,500 pods x 2 ports (TCP+UDP): 50 new pods, 20 gone";

/// A steady-state reconcile of a large `DedicatedCLBService`, with the
/// built-in allocator's defaults (in-order, 60 s cooldown): 3 CLBs with
/// ports 1-1000 and a few foreign ports each; 1,500 serving pods with a TCP
/// and a UDP port, of which 1,450 hold their listeners and 50 are new; 20
/// pods gone whose 40 listeners are unbound; 10 free listeners, half still
/// resting and half reusable.
pub fn clb_bench_request() -> knit_clb_core::Request {
    use knit_clb_core::{
        DEFAULT_COOLDOWN_SECONDS, DEFAULT_SPREAD, Listener, LoadBalancer, Pod, PortSpec, Protocol,
        Request, Service,
    };
    const LBS: usize = 3;
    let ports = [(Protocol::Tcp, 7777), (Protocol::Udp, 7778)];
    let service = Service {
        min_port: 1,
        max_port: 1000,
        ports: ports
            .iter()
            .map(|&(protocol, target_port)| PortSpec {
                protocol,
                target_port,
            })
            .collect(),
        spread: DEFAULT_SPREAD,
        cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
        seed: 1,
    };
    let lbs = (0..LBS)
        .map(|i| LoadBalancer {
            id: format!("lb-{i:08x}"),
            listener_quota: 3000,
            foreign_ports: (996..=1000).map(|port| (Protocol::Tcp, port)).collect(),
        })
        .collect();
    let pods: Vec<Pod> = (0..1500)
        .map(|i| Pod {
            name: format!("game-server-{i:04}"),
            serving: true,
        })
        .collect();
    // Listener slots are laid out round-robin over the CLBs; slot `n` has
    // port `n / 3 + 1` on CLB `n % 3`, for each protocol.
    let mut listeners = Vec::new();
    let mut add =
        |slot: usize, pod: Option<String>, last_pod: Option<String>, rest: Option<u64>| {
            for &(protocol, target_port) in &ports {
                listeners.push(Listener {
                    name: format!("svc-{slot:05}-{target_port}"),
                    lb_id: format!("lb-{:08x}", slot % LBS),
                    port: (slot / LBS + 1) as u16,
                    protocol,
                    target_port,
                    pod: pod.clone(),
                    last_pod: last_pod.clone(),
                    unbound_for_seconds: rest,
                });
            }
        };
    let mut slot = 0;
    for pod in &pods[..1450] {
        add(slot, Some(pod.name.clone()), None, None);
        slot += 1;
    }
    for gone in 0..20 {
        add(
            slot,
            Some(format!("game-server-gone-{gone:02}")),
            None,
            None,
        );
        slot += 1;
    }
    for free in 0..10u64 {
        let rest = if free % 2 == 0 { 30 } else { 300 };
        add(
            slot,
            None,
            Some(format!("game-server-old-{free:02}")),
            Some(rest),
        );
        slot += 1;
    }
    Request {
        service,
        lbs,
        pods,
        listeners,
    }
}

/// What `tunnel_bench_request` is, for the benchmarks' output.
pub const TUNNEL_BENCH_SHAPE: &str = "a ClusterTunnel with 1,000 Ingresses in 20 namespaces, 2,126 routes: shared hosts, wildcards, exact and prefix paths, 40 conflicts, 67 unready and 20 missing backends";

/// A large `ClusterTunnel`: 1,000 Ingresses in 20 namespaces, created one
/// second apart. Most have a host of their own with a root and an `/api`
/// route, every 7th an exact `/healthz` too; every 10th adds versioned paths
/// to the previous one's host; every 25th contests an older one's root (a
/// conflict); every 100th (from the 50th) is a wildcard; every 15th (from
/// the 7th) has an `/api` backend without ready endpoints and every 50th
/// (from the 13th) a missing root backend.
pub fn tunnel_bench_request() -> knit_tunnel_core::Request {
    use knit_tunnel_core::{
        Backend, BackendState, PathMatch, Request, Route, Scheme, Source, SourceKind, Tunnel,
    };
    let route = |host: &str, path: Option<(PathMatch, String)>, service: String, state| Route {
        host: host.to_string(),
        path,
        backend: Backend {
            service,
            port: 80,
            scheme: Scheme::Http,
            state,
        },
    };
    let sources = (0..1000usize)
        .map(|i| {
            let own = if i % 100 == 50 {
                format!("*.apps-{i:04}.example.com")
            } else {
                format!("app-{i:04}.example.com")
            };
            let routes = if i % 25 == 24 {
                let older = format!("app-{:04}.example.com", i - 4);
                vec![
                    route(&own, None, format!("web-{i:04}"), BackendState::Ready),
                    route(&older, None, format!("late-{i:04}"), BackendState::Ready),
                ]
            } else if i % 10 == 9 {
                let shared = format!("app-{:04}.example.com", i - 1);
                vec![
                    route(
                        &shared,
                        Some((PathMatch::Prefix, format!("/v{i}"))),
                        format!("v{i}"),
                        BackendState::Ready,
                    ),
                    route(
                        &shared,
                        Some((PathMatch::Exact, format!("/v{i}/healthz"))),
                        format!("v{i}"),
                        BackendState::Ready,
                    ),
                ]
            } else {
                let root = if i % 50 == 13 {
                    BackendState::Missing(format!("service web-{i:04} not found"))
                } else {
                    BackendState::Ready
                };
                let api = if i % 15 == 7 {
                    BackendState::NoReadyEndpoints
                } else {
                    BackendState::Ready
                };
                let mut routes = vec![
                    route(&own, None, format!("web-{i:04}"), root),
                    route(
                        &own,
                        Some((PathMatch::Prefix, "/api".into())),
                        format!("api-{i:04}"),
                        api,
                    ),
                ];
                if i % 7 == 0 {
                    routes.push(route(
                        &own,
                        Some((PathMatch::Exact, "/healthz".into())),
                        format!("web-{i:04}"),
                        BackendState::Ready,
                    ));
                }
                routes
            };
            Source {
                kind: SourceKind::Ingress,
                namespace: format!("team-{:02}", i % 20),
                name: format!("app-{i:04}"),
                created: 1_700_000_000 + i as i64,
                routes,
                origin: Default::default(),
            }
        })
        .collect();
    Request {
        tunnel: Tunnel {
            name: "edge".into(),
            namespace: None,
            domain: "example.com".into(),
            fallback_target: "http_status:404".into(),
        },
        sources,
        cluster_domain: "cluster.local".into(),
    }
}
