//! `cargo bench`: the ipam-sequential strategy called natively, through a warm
//! instance and through a fresh instance per call (what the controller does),
//! in one run, reported as ratios to the native figure; and how long a changed
//! plugin file takes to serve.
//!
//! Targets: fresh-instance median ≤ 20 µs on a /24; a changed file serving
//! within 1 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use knit::runtime::{
    PluginSettings, PluginSource, Registry, Runtime, RuntimeConfig, RuntimeMetrics, dir_source,
};

const ITERATIONS: usize = 5_000;

fn median(mut timings: Vec<Duration>) -> Duration {
    timings.sort();
    timings[timings.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let bytes = knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(name, _)| *name == "ipam-sequential")
        .expect("ipam-sequential is built in")
        .1;
    let runtime = Runtime::new(
        RuntimeConfig::default(),
        Arc::new(RuntimeMetrics::default()),
    )
    .unwrap();
    let registry = Registry::new(runtime);
    let plugin = registry
        .load(
            PluginSource::BuiltIn,
            "ipam-sequential",
            bytes,
            PluginSettings::default(),
            None,
        )
        .unwrap();
    let request = knit::bench_fixtures::bench_request();

    let native: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let started = Instant::now();
            let offsets =
                knit_ipam_core::allocate(knit_ipam_core::Strategy::Sequential, &request, &[]);
            std::hint::black_box(offsets).unwrap();
            started.elapsed()
        })
        .collect();
    let warm = plugin.time_warm_allocate(&request, ITERATIONS).unwrap();
    let fresh: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let started = Instant::now();
            plugin.allocate(&request, &[]).unwrap().unwrap();
            started.elapsed()
        })
        .collect();
    let (native, warm, fresh) = (median(native), median(warm), median(fresh));
    println!("ipam-sequential, /24 with 100 allocated, median of {ITERATIONS} calls:");
    println!("  native                {:>9.2} µs", micros(native));
    println!(
        "  wasm, warm instance   {:>9.2} µs   {:>6.1}x native",
        micros(warm),
        warm.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  wasm, fresh instance  {:>9.2} µs   {:>6.1}x native   (target ≤ 20 µs)",
        micros(fresh),
        fresh.as_secs_f64() / native.as_secs_f64()
    );

    let swap = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(hot_swap_latency(&registry, bytes));
    println!(
        "changed plugin file to serving, median of {} swaps: {:.0} ms   (target ≤ 1000 ms)",
        swap.1,
        swap.0.as_secs_f64() * 1e3
    );
}

/// Rewrites `<dir>/bench.wasm` (alternating two builds that differ only by a
/// custom section, so the digest changes) and times until the new digest
/// serves, debounce and compilation included.
async fn hot_swap_latency(registry: &Arc<Registry>, bytes: &[u8]) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.wasm");
    std::fs::write(&path, bytes).unwrap();
    let _watch = dir_source::watch(
        registry.clone(),
        dir.path().to_path_buf(),
        PluginSettings::default(),
    )
    .await
    .unwrap();
    let mut timings = Vec::new();
    for round in 0..7u8 {
        let mut variant = bytes.to_vec();
        // A custom section (id 0): name "knit-bench", one payload byte.
        variant.extend_from_slice(&[0, 12, 10]);
        variant.extend_from_slice(b"knit-bench");
        variant.push(round);
        let digest = knit::runtime::digest_of(&variant);
        let temp = dir.path().join(".bench.tmp");
        std::fs::write(&temp, &variant).unwrap();
        let started = Instant::now();
        std::fs::rename(&temp, &path).unwrap();
        while registry
            .get("bench")
            .map(|p| p.digest != digest)
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "swap never happened"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        timings.push(started.elapsed());
    }
    let count = timings.len();
    (median(timings), count)
}
