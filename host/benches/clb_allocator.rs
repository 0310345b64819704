//! `cargo bench --bench clb_allocator`: the built-in clb-allocator on a
//! large steady-state reconcile, natively and through a fresh instance per
//! call (what the controller does), in one run, reported as a ratio to the
//! native figure. The WASM figure is what a reconcile pays: converting the
//! request, instantiating, planning, and the host's check of the plan.

use std::sync::Arc;
use std::time::{Duration, Instant};

const ITERATIONS: usize = 100;

fn median(mut timings: Vec<Duration>) -> Duration {
    timings.sort();
    timings[timings.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let plugin = knit::registry_setup::builtin_registry(None, Arc::default())
        .unwrap()
        .get("clb-allocator")
        .expect("clb-allocator is built in");
    let request = knit::bench_fixtures::clb_bench_request();
    let native_plan = || {
        knit_clb_core::plan(
            &request.service,
            &request.lbs,
            &request.pods,
            &request.listeners,
        )
    };

    // Once, outside the timings: the sandboxed answer is the native one, and
    // the request is the steady state it claims to be.
    let expected = native_plan();
    assert_eq!(
        plugin.allocate_listeners(&request, &[]).unwrap(),
        Ok(expected.clone())
    );
    assert_eq!(
        (
            expected.create.len(),
            expected.bind.len(),
            expected.unbind.len(),
            expected.messages.len()
        ),
        (90, 10, 40, 0)
    );

    let native: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(native_plan());
            started.elapsed()
        })
        .collect();
    let fresh: Vec<Duration> = (0..ITERATIONS)
        .map(|_| {
            let started = Instant::now();
            plugin.allocate_listeners(&request, &[]).unwrap().unwrap();
            started.elapsed()
        })
        .collect();
    let (native, fresh) = (median(native), median(fresh));
    println!(
        "clb-allocator, {}, median of {ITERATIONS} calls:",
        knit::bench_fixtures::CLB_BENCH_SHAPE
    );
    println!("  native                {:>9.2} µs", micros(native));
    println!(
        "  wasm, fresh instance  {:>9.2} µs   {:>6.1}x native",
        micros(fresh),
        fresh.as_secs_f64() / native.as_secs_f64()
    );
}
