//! `cargo bench -p knit-tests --bench tunnel_scale` (after `tests/run` has
//! built the test environment): 1,000 Ingresses across 20 namespaces on one
//! `ClusterTunnel`, on the real API server with the fake Cloudflare API
//! answering after 20 ms. Reports the time until the tunnel's configuration
//! holds every host and every DNS record exists, and the configuration PUTs
//! it took, against one Ingress on its own measured in the same run (the
//! floor: one pass, one PUT). A controller putting per Ingress would make
//! 1,000 PUTs. Then 100 of the Ingresses move to new hosts at once: the
//! time and the calls until Cloudflare serves the new hosts only. DNS
//! changes go in batches of 200 (the Free plan's limit), which the fake
//! enforces.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use knit::domains::cloudflare::account::CloudflareSettings;
use knit::domains::cloudflare::types::ClusterTunnel;
use knit_tests::fake_cloudflare::FakeCloudflare;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[path = "../tests/support/mod.rs"]
mod support;
use support::Knit;

const ACCOUNT: &str = "bench-account";
const TOKEN: &str = "bench-token";
const NAMESPACES: usize = 20;

/// 1,000 unless `KNIT_BENCH_INGRESSES` says otherwise (for a quick look).
fn ingress_count() -> usize {
    std::env::var("KNIT_BENCH_INGRESSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

struct Outcome {
    elapsed: Duration,
    puts: usize,
    calls: usize,
    /// After convergence, `CHANGED` Ingresses move to new hosts: the time
    /// and calls until Cloudflare serves the new hosts and not the old.
    change_elapsed: Duration,
    change_calls: usize,
}

/// Hosts changed at once in the second phase.
const CHANGED: usize = 100;

async fn run(ingresses: usize) -> Outcome {
    let client = knit_tests::admin_client().await;
    let knit_namespace = knit_tests::fresh_namespace(&client, "cf-bench").await;
    let fake = FakeCloudflare::start().await;
    fake.add_account(ACCOUNT);
    fake.add_token(TOKEN, ACCOUNT);
    let zone = fake.add_zone(ACCOUNT, "bench.example");
    fake.set_latency(Duration::from_millis(20));
    // Cloudflare's own limit: a run past it would be refused, not just slow.
    fake.set_rate_budget(1200, Duration::from_secs(300));
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cloudflare"},
        "stringData": {"CLOUDFLARE_API_TOKEN": TOKEN},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &knit_namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let tunnel_name = format!("{knit_namespace}-tunnel");
    let settings = CloudflareSettings {
        endpoint: fake.endpoint().into(),
        cluster_id: "bench".into(),
        namespace: knit_namespace.clone(),
        cloudflared_image: "cloudflare/cloudflared:latest".into(),
        resync: Duration::from_secs(600),
        api_budget: CloudflareSettings::API_BUDGET,
        dns_batch_size: CloudflareSettings::DNS_BATCH_SIZE,
        budget_left: Default::default(),
    };
    let knit = Knit::start(knit_tests::env(), move |client, registry| {
        knit::domains::cloudflare::run(
            client,
            registry,
            settings,
            Default::default(),
            std::future::pending(),
        )
    });

    // The backends first: every namespace has a ready Service.
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES.min(ingresses) {
        let namespace = knit_tests::fresh_namespace(&client, "cf-bench-app").await;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap();
        Api::<EndpointSlice>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &slice)
            .await
            .unwrap();
        namespaces.push(namespace);
    }
    let tunnel: ClusterTunnel = serde_json::from_value(json!({
        "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
        "kind": "ClusterTunnel",
        "metadata": {"name": tunnel_name},
        "spec": {
            "newTunnel": {"name": tunnel_name},
            "cloudflare": {"accountId": ACCOUNT, "domain": "bench.example", "secret": "cloudflare"},
        },
    }))
    .unwrap();
    let tunnels = Api::<ClusterTunnel>::all(client.clone());
    tunnels
        .create(&PostParams::default(), &tunnel)
        .await
        .unwrap();
    knit_tests::eventually("the tunnel", Duration::from_secs(60), || async {
        tunnels.get(&tunnel_name).await.ok()?.status?.tunnel_id
    })
    .await;
    fake.reset_calls();

    let host = |i: usize, version: u32| format!("app-{i}-v{version}.bench.example");
    let started = Instant::now();
    for i in 0..ingresses {
        let namespace = &namespaces[i % namespaces.len()];
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": format!("app-{i}"), "annotations": {"cf-operator.io/tunnel": tunnel_name}},
            "spec": {
                "ingressClassName": "cloudflare-tunnel",
                "rules": [{"host": host(i, 1), "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}},
                }]}}],
            },
        }))
        .unwrap();
        Api::<Ingress>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &ingress)
            .await
            .unwrap();
    }
    // Served: the configuration and the zone hold exactly these hosts.
    let served = |version_of: &dyn Fn(usize) -> u32| {
        let wanted: std::collections::BTreeSet<String> =
            (0..ingresses).map(|i| host(i, version_of(i))).collect();
        let id = fake
            .tunnels()
            .into_iter()
            .find(|t| t.name == tunnel_name && !t.deleted)
            .map(|t| t.id);
        let rules: std::collections::BTreeSet<String> = id
            .and_then(|id| fake.tunnel_configuration(&id))
            .and_then(|c| c.config["ingress"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|rule| rule["hostname"].as_str().map(str::to_owned))
            .collect();
        let records: std::collections::BTreeSet<String> = fake
            .dns_records(&zone)
            .into_iter()
            .map(|r| r.name)
            .collect();
        rules == wanted && records == wanted
    };
    knit_tests::eventually("every host served", Duration::from_secs(600), || {
        std::future::ready(served(&|_| 1).then_some(()))
    })
    .await;
    let elapsed = started.elapsed();
    let puts = fake.count("PUT", "cfd_tunnel/{id}/configurations");
    let calls = fake.calls().len();

    // Phase two: CHANGED Ingresses (or all, when fewer) get new hosts.
    let changed = CHANGED.min(ingresses);
    fake.reset_calls();
    let started = Instant::now();
    for i in 0..changed {
        let namespace = &namespaces[i % namespaces.len()];
        Api::<Ingress>::namespaced(client.clone(), namespace)
            .patch(
                &format!("app-{i}"),
                &PatchParams::default(),
                &Patch::Json::<()>(
                    serde_json::from_value(json!([{
                        "op": "replace", "path": "/spec/rules/0/host", "value": host(i, 2),
                    }]))
                    .unwrap(),
                ),
            )
            .await
            .unwrap();
    }
    knit_tests::eventually("the changed hosts served", Duration::from_secs(600), || {
        std::future::ready(served(&|i| if i < changed { 2 } else { 1 }).then_some(()))
    })
    .await;
    let outcome = Outcome {
        elapsed,
        puts,
        calls,
        change_elapsed: started.elapsed(),
        change_calls: fake.calls().len(),
    };
    tunnels
        .delete(&tunnel_name, &DeleteParams::default())
        .await
        .unwrap();
    knit_tests::eventually("the tunnel deleted", Duration::from_secs(120), || async {
        tunnels
            .get_opt(&tunnel_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    drop(knit);
    outcome
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ingresses = ingress_count();
    let one = runtime.block_on(run(1));
    let many = runtime.block_on(run(ingresses));
    println!(
        "one Ingress (baseline): {:.2} s, {} configuration PUT(s), {} API calls",
        one.elapsed.as_secs_f64(),
        one.puts,
        one.calls
    );
    println!(
        "{ingresses} Ingresses in {NAMESPACES} namespaces: {:.2} s ({:.1}× the baseline), {} configuration PUT(s) ({:.3} per Ingress), {} API calls ({:.3} per Ingress)",
        many.elapsed.as_secs_f64(),
        many.elapsed.as_secs_f64() / one.elapsed.as_secs_f64(),
        many.puts,
        many.puts as f64 / ingresses as f64,
        many.calls,
        many.calls as f64 / ingresses as f64,
    );
    println!(
        "then {} of them moved to new hosts: {:.2} s, {} API calls (one Ingress alone: {:.2} s, {} calls)",
        CHANGED.min(ingresses),
        many.change_elapsed.as_secs_f64(),
        many.change_calls,
        one.change_elapsed.as_secs_f64(),
        one.change_calls,
    );
}
