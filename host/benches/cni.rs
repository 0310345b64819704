//! `cargo bench -p knit --bench cni`, in one run:
//!
//! - `knit-ipam` against the reference `host-local` (containernetworking-
//!   plugins): ADD+DEL cycles per second on the same configuration, each with
//!   its own state, the two measured in alternation, medians over rounds;
//! - one strategy call on a /16 with 60,000 addresses taken, through the WASM
//!   runtime (a fresh instance per call, as every caller makes one) beside
//!   the same strategy run natively.
//!
//! Goals: knit-ipam at least as fast as host-local (ratio ≥ 1.0); the
//! strategy call ≤ 50 µs. Reported, not asserted.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knit::runtime::{PluginSettings, Runtime, RuntimeConfig, RuntimeMetrics, World};
use knit_ipam_core::{Request, Strategy};
use serde_json::json;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const ROUNDS: usize = 15;
const CYCLES_PER_ROUND: usize = 40;
const STRATEGY_CALLS: usize = 2_000;

fn main() {
    assert!(
        Path::new(HOST_LOCAL).exists(),
        "{HOST_LOCAL} is missing: install containernetworking-plugins"
    );
    add_del_cycles();
    strategy_on_a_full_slash16();
}

fn add_del_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let knit = env!("CARGO_BIN_EXE_knit-ipam");
    let config = |plugin: &str| {
        let ipam = json!({
            "type": plugin,
            "dataDir": dir.path().join(plugin),
            "ranges": [[{ "subnet": "10.64.0.0/16" }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        });
        let mut config =
            json!({ "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": ipam });
        if plugin == "knit-ipam" {
            config["ipam"]["cacheDir"] = json!(dir.path().join("cache"));
        }
        serde_json::to_vec(&config).unwrap()
    };
    let plugins = [
        (knit, config("knit-ipam")),
        (HOST_LOCAL, config("host-local")),
    ];
    // The first knit-ipam call compiles the strategy into the cache.
    for (binary, config) in &plugins {
        cycle(binary, config, "warm-up");
    }
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // Alternate who goes first, so neither always runs on a warmer machine.
        for index in [round % 2, 1 - round % 2] {
            let (binary, config) = &plugins[index];
            let started = Instant::now();
            for i in 0..CYCLES_PER_ROUND {
                cycle(binary, config, &format!("c{round}-{i}"));
            }
            rates[index].push(CYCLES_PER_ROUND as f64 / started.elapsed().as_secs_f64());
        }
    }
    let [knit_rate, host_local_rate] = rates.map(median);
    println!(
        "ADD+DEL cycles per second, /16, median of {ROUNDS} rounds of {CYCLES_PER_ROUND} (alternating):"
    );
    println!("  knit-ipam   {knit_rate:>8.1}");
    println!("  host-local  {host_local_rate:>8.1}");
    println!(
        "  ratio       {:>8.2}   (goal ≥ 1.0)",
        knit_rate / host_local_rate
    );
}

/// One ADD and one DEL of `container`, as a runtime would call them.
fn cycle(binary: &str, config: &[u8], container: &str) {
    for command in ["ADD", "DEL"] {
        let mut child = Command::new(binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(config).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{binary} {command}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

fn strategy_on_a_full_slash16() {
    let request = slash16_with_60000_taken();
    println!(
        "one strategy call, /16 with {} taken, median of {STRATEGY_CALLS} (fresh instance per call):",
        request.allocated.len()
    );
    println!(
        "  {:<16} {:>10} {:>12} {:>12}",
        "", "native", "wasm", "wasm (CNI)"
    );
    for (name, strategy) in [
        ("ipam-sequential", Strategy::Sequential),
        ("ipam-random", Strategy::Random),
        ("ipam-dense-pack", Strategy::DensePack),
    ] {
        let native = median_micros(|| {
            std::hint::black_box(knit_ipam_core::allocate(strategy, &request, &[])).unwrap();
        });
        // The controller's runtime (pooling allocator) and knit-ipam's
        // (on demand, as a one-shot process).
        let [pooled, on_demand] = [true, false].map(|pooling_allocator| {
            let plugin = load(name, pooling_allocator);
            median_micros(|| {
                plugin.allocate(&request, &[]).unwrap().unwrap();
            })
        });
        println!(
            "  {name:<16} {native:>8.1}µs {pooled:>10.1}µs {on_demand:>10.1}µs   (goal ≤ 50 µs)"
        );
    }
}

fn load(name: &str, pooling_allocator: bool) -> knit::runtime::Plugin {
    let bytes = knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .unwrap()
        .1;
    let runtime = Runtime::new(
        RuntimeConfig {
            pooling_allocator,
            ..RuntimeConfig::default()
        },
        Arc::new(RuntimeMetrics::default()),
    )
    .unwrap();
    runtime
        .load(
            name,
            bytes,
            PluginSettings::default(),
            Some(World::IpamStrategy),
        )
        .unwrap()
}

/// 65,536 offsets less network, broadcast and gateway, 60,000 of the rest
/// taken, scattered as a long-lived pool ends up; the cursor mid-way.
fn slash16_with_60000_taken() -> Request {
    let mut usable: Vec<u64> = (2..65_535).collect();
    // Fisher-Yates with a fixed xorshift: the same pool every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..usable.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usable.swap(i, (state % (i as u64 + 1)) as usize);
    }
    Request {
        size: 65_536,
        allocated: usable[..60_000].iter().copied().collect(),
        excluded: vec![0..=1, 65_535..=65_535],
        cursor: Some(32_768),
        count: 1,
        seed: 7,
    }
}

fn median_micros(mut call: impl FnMut()) -> f64 {
    let timings: Vec<Duration> = (0..STRATEGY_CALLS)
        .map(|_| {
            let started = Instant::now();
            call();
            started.elapsed()
        })
        .collect();
    median(timings.iter().map(|t| t.as_secs_f64() * 1e6).collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
