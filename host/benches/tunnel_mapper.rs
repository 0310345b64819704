//! `cargo bench --bench tunnel_mapper`: the built-in tunnel-mapper on a
//! large `ClusterTunnel`, natively and through a fresh instance per call
//! (what the controller does), in one run, reported as a ratio to the native
//! figure. The WASM figure is what a reconcile pays: converting the request,
//! instantiating, mapping, and the host's check of the mapping; the host's
//! check alone is timed too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knit_tunnel_core::{Config, check_mapping, map};

const ITERATIONS: usize = 100;

fn median(mut timings: Vec<Duration>) -> Duration {
    timings.sort();
    timings[timings.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn time(mut f: impl FnMut()) -> Duration {
    median(
        (0..ITERATIONS)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let plugin = knit::registry_setup::builtin_registry(None, Arc::default())
        .unwrap()
        .get("tunnel-mapper")
        .expect("tunnel-mapper is built in");
    let request = knit::bench_fixtures::tunnel_bench_request();
    let config = Config::default();

    // Once, outside the timings: the sandboxed answer is the native one, and
    // the request is the mix it claims to be.
    let expected = map(&request, &config);
    assert_eq!(
        plugin.map_tunnel(&request, &[]).unwrap(),
        Ok(expected.clone())
    );
    let routes: usize = request.sources.iter().map(|s| s.routes.len()).sum();
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    for status in &expected.sources {
        *verdicts.entry(status.verdict.name()).or_default() += 1;
    }
    assert_eq!(routes, 2126);
    assert_eq!(
        verdicts.into_iter().collect::<Vec<_>>(),
        [
            ("Accepted", 873),
            ("Conflict", 40),
            ("NoReadyEndpoints", 87)
        ]
    );

    let native = time(|| {
        std::hint::black_box(map(&request, &config));
    });
    let check = time(|| check_mapping(&request, &expected).unwrap());
    let fresh = time(|| {
        plugin.map_tunnel(&request, &[]).unwrap().unwrap();
    });
    println!(
        "tunnel-mapper, {}: {} rules, {} DNS names; median of {ITERATIONS} calls:",
        knit::bench_fixtures::TUNNEL_BENCH_SHAPE,
        expected.rules.len(),
        expected.dns.len()
    );
    println!("  native map            {:>9.2} µs", micros(native));
    println!(
        "  host check alone      {:>9.2} µs   {:>6.1}x native",
        micros(check),
        check.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  wasm, fresh instance  {:>9.2} µs   {:>6.1}x native (map + check)",
        micros(fresh),
        fresh.as_secs_f64() / native.as_secs_f64()
    );
}
