//! `cargo bench -p knit-tests --bench clb_scale` (after `tests/run` has
//! built the test environment): 300 pods × 2 ports behind one
//! `DedicatedCLBService` on three CLBs, on the real API server with the
//! fake CLB API. Reports the time until all 600 listeners are `Bound` and
//! the CLB API calls per pod, with the CLB's tasks taking 200 ms, and the
//! same run with instant tasks as the baseline measured alongside (what the
//! API server and knit cost on their own).
//!
//! For scale: one listener at a time, as a naive controller does it, is
//! 600 × (create + register) = 1,200 tasks, at least 240 s at 200 ms each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use knit::domains::tke_clb::cloud::TkeSettings;
use knit::domains::tke_clb::types::{DedicatedCLBListener, DedicatedCLBService, ListenerState};
use knit_tests::fake_clb::FakeClb;

#[path = "../tests/support/mod.rs"]
mod support;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::Knit;

/// 300 unless `KNIT_BENCH_PODS` says otherwise (for a quick look).
fn pod_count() -> usize {
    std::env::var("KNIT_BENCH_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}
const REGION: &str = "ap-guangzhou";

struct Outcome {
    elapsed: Duration,
    calls: BTreeMap<String, u64>,
}

impl Outcome {
    fn per_pod(&self) -> f64 {
        self.calls.values().sum::<u64>() as f64 / pod_count() as f64
    }
}

async fn run(task_delay: Duration) -> Outcome {
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, "clb-bench").await;
    let fake = FakeClb::start().await;
    fake.add_credentials("AKIDbench", "bench-key");
    fake.set_task_delay(task_delay);
    let lbs: Vec<String> = (0..3)
        .map(|i| fake.add_lb(REGION, &[&format!("9.9.9.{i}")]))
        .collect();
    for lb in &lbs {
        fake.set_listener_quota(lb, 1000);
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tke-credentials"},
        "stringData": {"secretId": "AKIDbench", "secretKey": "bench-key"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for i in 0..pod_count() {
        let name = format!("game-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "game"}},
            "spec": {"containers": [{"name": "game", "image": "registry.invalid/game"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let ip = format!("10.{}.{}.{}", 100, i / 250, i % 250 + 1);
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip}})),
        )
        .await
        .unwrap();
    }

    let settings = TkeSettings {
        region: Some(REGION.into()),
        credentials_secret: (namespace.clone(), "tke-credentials".into()),
        endpoint: Some(fake.endpoint().into()),
        listener_quota: 1000,
        resync: TkeSettings::DEFAULT_RESYNC,
        vpc_id: None,
        cluster_id: None,
    };
    let knit = Knit::start(knit_tests::env(), move |client, registry| {
        knit::domains::tke_clb::run(
            client,
            registry,
            settings,
            Default::default(),
            std::future::pending(),
        )
    });

    let calls_before = fake.calls_by_action();
    let started = Instant::now();
    let service: DedicatedCLBService = serde_json::from_value(json!({
        "apiVersion": "networking.cloud.tencent.com/v1alpha1",
        "kind": "DedicatedCLBService",
        "metadata": {"name": "game", "annotations": {"clb.knit.dev/spread": "uniform"}},
        "spec": {
            "minPort": 10000, "maxPort": 10999, "selector": {"app": "game"},
            "ports": [{"protocol": "TCP", "targetPort": 9000}, {"protocol": "UDP", "targetPort": 9001}],
            "existedLbIds": lbs,
        },
    }))
    .unwrap();
    Api::<DedicatedCLBService>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let listeners: Api<DedicatedCLBListener> = Api::namespaced(client.clone(), &namespace);
    knit_tests::eventually("600 Bound listeners", Duration::from_secs(600), || async {
        let all = listeners.list(&ListParams::default()).await.ok()?.items;
        let bound = all
            .iter()
            .filter(|l| l.status.as_ref().and_then(|s| s.state) == Some(ListenerState::Bound))
            .count();
        (bound == pod_count() * 2).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let calls = fake
        .calls_by_action()
        .into_iter()
        .map(|(action, n)| {
            let before = calls_before.get(&action).copied().unwrap_or(0);
            (action, n - before)
        })
        .collect();
    let on_clb: usize = lbs.iter().map(|lb| fake.listeners(lb).len()).sum();
    assert_eq!(
        on_clb,
        pod_count() * 2,
        "every listener exists once on the CLBs"
    );
    // Tear down with knit still running, so the next run's knit does not
    // inherit 600 listeners on CLBs its fake never had.
    Api::<DedicatedCLBService>::namespaced(client.clone(), &namespace)
        .delete("game", &Default::default())
        .await
        .unwrap();
    knit_tests::eventually(
        "the listeners deleted",
        Duration::from_secs(600),
        || async {
            let left = listeners
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
            (left == 0).then_some(())
        },
    )
    .await;
    drop(knit);
    Outcome { elapsed, calls }
}

#[tokio::main]
async fn main() {
    let pods = pod_count();
    let baseline = run(Duration::ZERO).await;
    let measured = run(Duration::from_millis(200)).await;
    // The floor for one listener at a time: a create and a register task
    // per listener, 200 ms each.
    let serial = (pods * 2 * 2) as f64 * 0.2;
    println!("clb_scale: {pods} pods × 2 ports on 3 CLBs");
    for (label, outcome) in [
        ("tasks instant (baseline)", &baseline),
        ("tasks 200 ms", &measured),
    ] {
        println!(
            "  {label:<25} {:>7.2} s to all Bound, {:>5.2} CLB API calls per pod",
            outcome.elapsed.as_secs_f64(),
            outcome.per_pod()
        );
        println!("    calls: {:?}", outcome.calls);
    }
    println!(
        "  ratio 200 ms / baseline:  {:>7.2}×; one listener at a time: ≥ {serial:.0} s ({:.1}× this run)",
        measured.elapsed.as_secs_f64() / baseline.elapsed.as_secs_f64(),
        serial / measured.elapsed.as_secs_f64()
    );
}
