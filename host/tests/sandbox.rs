//! The sandbox's promises against hostile components: a call returns by its
//! deadline even when the plugin waits instead of computing, and every
//! string a plugin returns is bounded and printable before anyone shows it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use knit::runtime::{
    CallError, Limits, LoadError, Plugin, PluginSettings, Runtime, RuntimeConfig, RuntimeMetrics,
    text,
};

const DEADLINE: Duration = Duration::from_millis(250);
/// How far past its deadline a call may return: the bound.
const MARGIN: Duration = Duration::from_millis(100);

fn load(runtime: &Runtime, lib_name: &str) -> Result<Plugin, LoadError> {
    let settings = PluginSettings {
        limits: Limits {
            deadline: DEADLINE,
            ..Limits::default()
        },
        config: vec![],
    };
    runtime.load(
        lib_name,
        &knit_tests::built_plugin(lib_name),
        settings,
        None,
    )
}

/// The hostile fixture's misbehaviour, chosen per call.
fn mode(mode: &str) -> [(String, String); 1] {
    [("mode".into(), mode.into())]
}

fn ipam_request() -> knit_ipam_core::Request {
    knit_ipam_core::Request {
        size: 256,
        count: 1,
        ..Default::default()
    }
}

fn runtime(cache_dir: Option<std::path::PathBuf>) -> Arc<Runtime> {
    Runtime::new(
        RuntimeConfig {
            cache_dir,
            ..RuntimeConfig::default()
        },
        Arc::new(RuntimeMetrics::default()),
    )
    .unwrap()
}

/// Runs `call` and fails unless it returned by its deadline (plus the
/// margin). Whether it answered or ran out of time does not matter: the
/// clock's waits are instant, so a sleeping plugin may well answer.
fn returns_in_time<T: std::fmt::Debug>(what: &str, call: impl FnOnce() -> T) {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    assert!(
        took < DEADLINE + MARGIN,
        "{what} returned after {took:?}, past its deadline of {DEADLINE:?} + {MARGIN:?}: {result:?}"
    );
}

#[test]
fn a_plugin_sleeping_in_a_decision_returns_by_its_deadline() {
    let runtime = runtime(None);

    let ipam = load(&runtime, "fixture_hostile").unwrap();
    returns_in_time("ipam allocate", || {
        ipam.allocate(&ipam_request(), &mode("sleep"))
    });

    let clb = load(&runtime, "fixture_sleeper_clb").unwrap();
    let request = knit_clb_core::Request {
        service: knit_clb_core::Service {
            min_port: 501,
            max_port: 503,
            ports: vec![knit_clb_core::PortSpec {
                protocol: knit_clb_core::Protocol::Tcp,
                target_port: 9000,
            }],
            spread: knit_clb_core::DEFAULT_SPREAD,
            cooldown_seconds: knit_clb_core::DEFAULT_COOLDOWN_SECONDS,
            seed: 1,
        },
        lbs: vec![knit_clb_core::LoadBalancer {
            id: "lb-a".into(),
            listener_quota: 50,
            foreign_ports: vec![],
        }],
        pods: vec![knit_clb_core::Pod {
            name: "gs-0".into(),
            serving: true,
        }],
        listeners: vec![],
    };
    returns_in_time("clb allocate", || clb.allocate_listeners(&request, &[]));

    let tunnel = load(&runtime, "fixture_sleeper_tunnel").unwrap();
    let request = knit_tunnel_core::Request {
        tunnel: knit_tunnel_core::Tunnel {
            name: "edge".into(),
            namespace: None,
            domain: "example.com".into(),
            fallback_target: "http_status:404".into(),
        },
        sources: vec![],
        cluster_domain: "cluster.local".into(),
    };
    returns_in_time("tunnel map", || tunnel.map_tunnel(&request, &[]));
}

#[test]
fn a_plugin_sleeping_in_describe_loads_by_its_deadline() {
    // The first load compiles (not part of the deadline) and caches; the
    // second maps the cached build, so its time is the describe call's.
    let cache = tempfile::tempdir().unwrap();
    let runtime = runtime(Some(cache.path().to_path_buf()));
    let _ = load(&runtime, "fixture_describe_sleeps");
    returns_in_time("describe", || {
        load(&runtime, "fixture_describe_sleeps").map(|p| p.info)
    });
}

fn printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

#[test]
fn refusal_texts_are_bounded_and_printable() {
    let plugin = load(&runtime(None), "fixture_hostile").unwrap();
    for name in ["long-refusal", "escape-refusal"] {
        let refusal = match plugin.allocate(&ipam_request(), &mode(name)) {
            Ok(Err(knit_ipam_core::AllocateError::InvalidConfig(why))) => why,
            other => panic!("{name}: {other:?}"),
        };
        assert!(
            refusal.len() <= text::MESSAGE_LIMIT + 32,
            "{name}: a refusal of {} bytes",
            refusal.len()
        );
        assert!(printable(&refusal), "{name}: {refusal:?}");
    }
}

#[test]
fn describe_must_give_a_plugin_name() {
    let runtime = runtime(None);
    // 40 MiB is past what one answer may carry, so it never reaches a name check.
    let long = load(&runtime, "fixture_describe_long_name").unwrap_err();
    assert!(
        matches!(long, LoadError::Describe(CallError::OutputBudget { .. })),
        "{long}"
    );
    let escapes = load(&runtime, "fixture_describe_escapes").unwrap_err();
    let shown = escapes.to_string();
    assert!(
        matches!(escapes, LoadError::Describe(CallError::BadOutput { .. }))
            && shown.contains("control characters")
            && printable(&shown),
        "{shown:?}"
    );
}

#[test]
fn copying_more_than_the_transfer_limit_is_an_output_budget_error() {
    let plugin = load(&runtime(None), "fixture_hostile").unwrap();
    for name in ["huge-refusal", "huge-log", "huge-answer"] {
        let error = plugin.allocate(&ipam_request(), &mode(name)).unwrap_err();
        assert_eq!(error.kind(), "output_budget", "{name}: {error}");
        assert!(
            error.to_string().contains("bytes one answer may take"),
            "{error}"
        );
    }
}
