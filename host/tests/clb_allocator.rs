//! The built-in clb-allocator through the runtime: its answers are the native
//! `knit_clb_core::plan`, its refusals come back as text, and a lying plan is
//! refused by the host.

mod common;

use std::sync::Arc;

use knit::runtime::{CallError, Plugin, PluginSettings, PluginSource, Registry, World};
use knit_clb_core::{
    DEFAULT_COOLDOWN_SECONDS, DEFAULT_SPREAD, Listener, LoadBalancer, Plan, Pod, PortSpec,
    Protocol, Request, Service,
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

fn builtin(registry: &Registry) -> Arc<Plugin> {
    let bytes = knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(name, _)| *name == "clb-allocator")
        .expect("clb-allocator is built in")
        .1;
    load(registry, "clb-allocator", bytes, &[])
}

fn pairs(config: &[(&str, &str)]) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Ports 501-503 on two CLBs, one TCP port per pod.
fn request(pods: &[&str], listeners: Vec<Listener>) -> Request {
    Request {
        service: Service {
            min_port: 501,
            max_port: 503,
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                target_port: 9000,
            }],
            spread: DEFAULT_SPREAD,
            cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
            seed: 7,
        },
        lbs: ["lb-a", "lb-b"]
            .iter()
            .map(|id| LoadBalancer {
                id: id.to_string(),
                listener_quota: 50,
                foreign_ports: vec![],
            })
            .collect(),
        pods: pods
            .iter()
            .map(|name| Pod {
                name: name.to_string(),
                serving: true,
            })
            .collect(),
        listeners,
    }
}

fn pods(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("gs-{i}")).collect()
}

fn listener(name: &str, port: u16, pod: Option<&str>) -> Listener {
    Listener {
        name: name.into(),
        lb_id: "lb-a".into(),
        port,
        protocol: Protocol::Tcp,
        target_port: 9000,
        pod: pod.map(str::to_string),
        last_pod: None,
        unbound_for_seconds: None,
    }
}

/// What the native code plans with this configuration, read the way the
/// plugin reads it.
fn native(request: &Request, config: &[(String, String)]) -> Plan {
    let (spread, cooldown_seconds) = knit_clb_core::parse_config(config).unwrap();
    let service = Service {
        spread,
        cooldown_seconds,
        ..request.service.clone()
    };
    knit_clb_core::plan(&service, &request.lbs, &request.pods, &request.listeners)
}

/// Asks the plugin and the native code; they must agree. Returns the plan.
fn same_as_native(plugin: &Plugin, request: &Request, config: &[(&str, &str)]) -> Plan {
    let config = pairs(config);
    let expected = native(request, &config);
    let answer = plugin.allocate_listeners(request, &config).unwrap();
    assert_eq!(answer, Ok(expected.clone()), "config {config:?}");
    expected
}

#[test]
fn the_built_in_allocator_plans_as_the_native_code_does() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    assert_eq!(plugin.world, World::ClbAllocator);
    assert_eq!(plugin.world.name(), "clb-allocator");
    assert_eq!(plugin.info.name, "clb-allocator");
    assert_eq!(plugin.info.version, env!("CARGO_PKG_VERSION"));

    let names = pods(5);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fresh = request(&names, vec![]);
    let in_order = same_as_native(&plugin, &fresh, &[]);
    let lbs: Vec<&str> = in_order.create.iter().map(|c| c.lb_id.as_str()).collect();
    assert_eq!(lbs, ["lb-a", "lb-a", "lb-a", "lb-b", "lb-b"]);
    let uniform = same_as_native(&plugin, &fresh, &[("spread", "uniform")]);
    let lbs: Vec<&str> = uniform.create.iter().map(|c| c.lb_id.as_str()).collect();
    assert_eq!(lbs, ["lb-a", "lb-b", "lb-a", "lb-b", "lb-a"]);

    // Random replays from the seed; another seed may place differently,
    // but always as the native code does.
    let random = same_as_native(&plugin, &fresh, &[("spread", "random")]);
    assert_eq!(random.create.len(), 5);
    for seed in [0, 1, 2, 99, u64::MAX] {
        let mut seeded = fresh.clone();
        seeded.service.seed = seed;
        same_as_native(&plugin, &seeded, &[("spread", "random")]);
    }

    // Seven pods, six ports in all: the last gets a message.
    let names = pods(7);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let full = same_as_native(&plugin, &request(&names, vec![]), &[]);
    assert_eq!(full.create.len(), 6);
    assert_eq!(full.messages.len(), 1);
    assert_eq!(full.messages[0].0, "gs-6");
    assert!(full.messages[0].1.contains("no port available"));

    // A gone pod's listener is unbound; listeners outside the range go.
    let churn = request(
        &["gs-1"],
        vec![
            listener("l-gone", 501, Some("gs-0")),
            listener("l-outside", 999, None),
        ],
    );
    let plan = same_as_native(&plugin, &churn, &[]);
    assert_eq!(plan.unbind, ["l-gone"]);
    assert_eq!(plan.delete, ["l-outside"]);
    assert_eq!(plan.create.len(), 1, "l-gone is resting: {plan:?}");
}

#[test]
fn cooldown_comes_from_the_config_and_settings_go_first() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    let mut resting = listener("l-0", 501, None);
    resting.last_pod = Some("gs-0".into());
    resting.unbound_for_seconds = Some(30);
    let request = request(&["gs-9"], vec![resting]);

    // 30 s of rest is short of the default minute, enough for 10 s.
    let plan = same_as_native(&plugin, &request, &[]);
    assert!(plan.bind.is_empty() && plan.create.len() == 1, "{plan:?}");
    let plan = same_as_native(&plugin, &request, &[("cooldown-seconds", "10")]);
    assert_eq!(plan.bind, [("l-0".to_string(), "gs-9".to_string())]);
    assert!(plan.create.is_empty());

    // The plugin's settings come before the call's configuration, which wins.
    let bytes = knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(name, _)| *name == "clb-allocator")
        .unwrap()
        .1;
    let short = load(
        &registry,
        "clb-short-cooldown",
        bytes,
        &[("cooldown-seconds", "10")],
    );
    let plan = short.allocate_listeners(&request, &[]).unwrap().unwrap();
    assert_eq!(plan.bind.len(), 1);
    let plan = short
        .allocate_listeners(&request, &pairs(&[("cooldown-seconds", "60")]))
        .unwrap()
        .unwrap();
    assert!(plan.bind.is_empty());
}

#[test]
fn bad_config_is_the_plugins_answer_not_a_failure() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    let request = request(&["gs-0"], vec![]);
    for (config, says) in [
        (
            ("spread", "roundrobin"),
            "\"roundrobin\": expected in-order, uniform or random",
        ),
        (("cooldown-seconds", "soon"), "whole number of seconds"),
        (("sprad", "random"), "unknown configuration key"),
    ] {
        let refusal = plugin
            .allocate_listeners(&request, &pairs(&[config]))
            .unwrap()
            .unwrap_err();
        assert!(
            refusal.starts_with("invalid config: ") && refusal.contains(says),
            "{refusal}"
        );
    }
}

/// Asks the liar in each mode of `modes` for an answer to `request`; see
/// `common::assert_refused`.
fn assert_refused(registry: &Registry, liar: &[u8], request: &Request, modes: &[(&str, &str)]) {
    common::assert_refused(modes, |mode| {
        load(registry, &format!("liar-{mode}"), liar, &[("mode", mode)])
            .allocate_listeners(request, &[])
    });
}

#[test]
fn the_host_refuses_a_lying_plan_and_the_wrong_world() {
    let registry = common::registry();
    let liar = common::built_plugin("fixture_clb_liar");
    let mut request = request(&["gs-0"], vec![listener("l-0", 501, Some("gs-1"))]);
    request.lbs[0].foreign_ports = vec![(Protocol::Tcp, 503)];

    // Honest without a mode: the check lets a good plan through.
    let honest = load(&registry, "liar-honest", &liar, &[]);
    assert_eq!(
        honest.allocate_listeners(&request, &[]).unwrap(),
        Ok(native(&request, &[]))
    );
    assert_refused(
        &registry,
        &liar,
        &request,
        &[
            ("out-of-range", "port 504 is outside 501-503"),
            ("foreign-port", "Tcp port 503 on \"lb-a\" is already in use"),
            (
                "unknown-listener",
                "\"no-such-listener\" is not a listener of the service",
            ),
            // A plugin's names are refused, never quoted whole or raw: the
            // refusal reaches a condition, an Event and the logs.
            (
                "huge-name",
                "a listener name is 4194304 bytes long; the limit is 253",
            ),
            (
                "escape-name",
                "a listener name \"l-0 \u{fffd}[2J\u{fffd}[31mforged\" contains control characters",
            ),
        ],
    );

    // Each world's call refuses a plugin of the other world.
    let clb = builtin(&registry);
    let ipam = load(
        &registry,
        "ipam-sequential",
        &common::built_plugin("ipam_sequential"),
        &[],
    );
    let error = ipam.allocate_listeners(&request, &[]).unwrap_err();
    assert!(
        matches!(
            error,
            CallError::WrongWorld {
                actual: "ipam-strategy",
                wanted: "clb-allocator",
                ..
            }
        ),
        "{error}"
    );
    let error = clb
        .allocate(&knit_ipam_core::Request::default(), &[])
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallError::WrongWorld {
                actual: "clb-allocator",
                wanted: "ipam-strategy",
                ..
            }
        ),
        "{error}"
    );
}

/// A well-formed plan that takes away what serves — a serving pod's
/// listener deleted or unbound, a pod port left without a listener and
/// unexplained, or explained by a full range that is not — is refused
/// through the runtime like any other lie.
#[test]
fn the_host_refuses_a_plan_that_destroys_what_serves() {
    let registry = common::registry();
    let liar = common::built_plugin("fixture_clb_liar");
    // gs-0 and gs-1 serve on lb-a's 501 and 502; gs-2 is new, and 503 is
    // free for it.
    let request = request(
        &["gs-0", "gs-1", "gs-2"],
        vec![
            listener("l-0", 501, Some("gs-0")),
            listener("l-1", 502, Some("gs-1")),
        ],
    );
    let honest = load(&registry, "liar-honest", &liar, &[]);
    let plan = honest.allocate_listeners(&request, &[]).unwrap().unwrap();
    assert_eq!(plan, native(&request, &[]));
    assert_eq!(plan.create.len(), 1, "{plan:?}");
    assert_refused(
        &registry,
        &liar,
        &request,
        &[
            (
                "delete-serving",
                "deletes \"l-0\" (\"lb-a\" port 501 for Tcp/9000), which the service keeps: only listeners outside its range 501-503, its CLBs or its ports may be deleted",
            ),
            (
                "unbind-serving",
                "unbinds \"l-0\" from \"gs-0\", which is serving and has no other listener for Tcp/9000",
            ),
            (
                "drop-pod-port",
                "leaves \"gs-2\" without a listener for Tcp/9000 and gives no message for it",
            ),
            (
                "claim-exhausted",
                "leaves \"gs-2\" without a listener for Tcp/9000 though port 503 on \"lb-a\" is free and under its quota",
            ),
        ],
    );
}

/// The benchmark's large steady state (unbinds, rebinds, new listeners)
/// passes the host's check through the runtime, as does a range too small
/// for every pod.
#[test]
fn the_built_in_plans_pass_the_check_at_scale() {
    let registry = common::registry();
    let plugin = builtin(&registry);
    let bench = knit::bench_fixtures::clb_bench_request();
    let plan = same_as_native(&plugin, &bench, &[]);
    assert!(
        plan.delete.is_empty() && plan.messages.is_empty(),
        "{plan:?}"
    );
    let mut small = bench;
    small.service.max_port = 400;
    let plan = same_as_native(&plugin, &small, &[]);
    assert!(!plan.delete.is_empty() && !plan.messages.is_empty());
}
