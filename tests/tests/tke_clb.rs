//! The TKE CLB domain end to end: knit's two controllers on the real API
//! server, the strict fake CLB API behind them, and pods made by the test
//! with their status IPs set (there is no kubelet).
//!
//! Every knit started here manages every `DedicatedCLBService` of the API
//! server, so the tests take turns (`SERIAL`). Each knit runs on a runtime
//! of its own, so dropping it stops all of it at once, as a crash would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use knit::domains::tke_clb::cloud::TkeSettings;
use knit::domains::tke_clb::types::{
    CLBListenerConfig, DedicatedCLBListener, DedicatedCLBService, ListenerState,
};
use knit_tests::fake_clb::FakeClb;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::Knit;

const REGION: &str = "ap-chengdu";
const SECRET_ID: &str = "AKIDknitE2eKey0001";
const SECRET_KEY: &str = "knit-e2e-secret-key";
const WAIT: Duration = Duration::from_secs(90);
/// The cluster's VPC and ID, as the seed's values.yaml gives them to the chart.
const VPC: &str = "vpc-knite2e1";
const CLUSTER: &str = "cls-knite2e1";
mod support;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: its turn, a client, a namespace holding the
/// credentials Secret, and a fake CLB API that knows the key.
struct World {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    client: Client,
    namespace: String,
    fake: FakeClb,
}

impl World {
    async fn new(prefix: &str) -> World {
        World::in_namespace(prefix, None).await
    }

    async fn in_namespace(prefix: &str, namespace: Option<&str>) -> World {
        let turn = SERIAL.lock().await;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let client = knit_tests::admin_client().await;
        // What earlier tests left goes, so that this test's knit does not
        // spend its time on CLBs its fake never had.
        for service in Api::<DedicatedCLBService>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            let api = Api::<DedicatedCLBService>::namespaced(
                client.clone(),
                &service.namespace().unwrap(),
            );
            let _ = api
                .delete(&service.name_any(), &DeleteParams::default())
                .await;
        }
        let namespace = match namespace {
            Some(namespace) => {
                let _ = knit_tests::kubectl(&["create", "namespace", namespace], None);
                namespace.to_owned()
            }
            None => knit_tests::fresh_namespace(&client, prefix).await,
        };
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "tke-credentials"},
            "stringData": {"secretId": SECRET_ID, "secretKey": SECRET_KEY},
        }))
        .unwrap();
        let _ = Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await;
        let fake = FakeClb::start().await;
        fake.add_credentials(SECRET_ID, SECRET_KEY);
        fake.set_task_delay(Duration::from_millis(50));
        World {
            _turn: turn,
            client,
            namespace,
            fake,
        }
    }

    fn settings(&self) -> TkeSettings {
        TkeSettings {
            region: Some(REGION.into()),
            credentials_secret: (self.namespace.clone(), "tke-credentials".into()),
            endpoint: Some(self.fake.endpoint().into()),
            listener_quota: TkeSettings::DEFAULT_LISTENER_QUOTA,
            resync: Duration::from_secs(2),
            vpc_id: Some(VPC.into()),
            cluster_id: Some(CLUSTER.into()),
        }
    }

    fn knit(&self) -> Knit {
        let settings = self.settings();
        Knit::start(knit_tests::env(), move |client, registry| {
            knit::domains::tke_clb::run(
                client,
                registry,
                settings,
                Default::default(),
                std::future::pending(),
            )
        })
    }

    async fn create_service(&self, name: &str, spec: serde_json::Value) {
        let service: DedicatedCLBService = serde_json::from_value(json!({
            "apiVersion": "networking.cloud.tencent.com/v1alpha1",
            "kind": "DedicatedCLBService",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        Api::<DedicatedCLBService>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }

    /// A pod as the kubelet would leave it: running, with an IP.
    async fn create_pod(&self, name: &str, app: &str, ip: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "game", "image": "registry.invalid/game"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
            ),
        )
        .await
        .unwrap();
    }

    async fn delete_pod(&self, name: &str) {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        knit_tests::eventually(&format!("{name} gone"), WAIT, || async {
            let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
                .get_opt(name)
                .await
                .unwrap();
            pod.is_none().then_some(())
        })
        .await;
    }

    async fn listeners(&self) -> Vec<DedicatedCLBListener> {
        Api::<DedicatedCLBListener>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits until `check` holds for the namespace's listeners.
    async fn wait_listeners(
        &self,
        what: &str,
        check: impl Fn(&[DedicatedCLBListener]) -> bool,
    ) -> Vec<DedicatedCLBListener> {
        knit_tests::eventually(what, WAIT, || async {
            let listeners = self.listeners().await;
            check(&listeners).then_some(listeners)
        })
        .await
    }

    /// Waits for exactly `count` listeners, all `Bound`.
    async fn wait_bound(&self, count: usize) -> Vec<DedicatedCLBListener> {
        self.wait_listeners(&format!("{count} Bound listeners"), |listeners| {
            listeners.len() == count
                && listeners
                    .iter()
                    .all(|l| state(l) == Some(ListenerState::Bound))
        })
        .await
    }

    async fn service(&self, name: &str) -> Option<DedicatedCLBService> {
        Api::<DedicatedCLBService>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    async fn wait_service_reason(&self, name: &str, reason: &str) -> DedicatedCLBService {
        knit_tests::eventually(&format!("{name} Ready reason {reason}"), WAIT, || async {
            let service = self.service(name).await?;
            let condition = service.status.as_ref()?.conditions.first()?.clone();
            (condition.reason == reason).then_some(service)
        })
        .await
    }

    async fn annotation(&self, pod: &str, key: &str) -> Option<String> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get(pod)
            .await
            .unwrap();
        pod.annotations().get(key).cloned()
    }

    async fn wait_annotation(&self, pod: &str, key: &str, value: &str) {
        knit_tests::eventually(&format!("{pod}'s {key} = {value}"), WAIT, || async {
            (self.annotation(pod, key).await.as_deref() == Some(value)).then_some(())
        })
        .await
    }

    /// The fake's listeners over all LBs, with the IP:port of each target.
    fn clb_state(&self) -> BTreeMap<(String, String, u16), Vec<String>> {
        let mut state = BTreeMap::new();
        for (lb, listeners) in self.fake.all_listeners() {
            for listener in listeners {
                let targets = self
                    .fake
                    .targets(&listener.id)
                    .iter()
                    .map(|t| format!("{}:{}", t.eni_ip.clone().unwrap_or_default(), t.port))
                    .collect();
                state.insert(
                    (lb.clone(), listener.protocol.clone(), listener.port),
                    targets,
                );
            }
        }
        state
    }
}

/// What `examples/tke-clb/clblistenerconfig-sample.yaml` sets, as the
/// fake's `DescribeListeners` reports it.
fn sample_settings() -> serde_json::Value {
    json!({
        "HealthCheck": {"HealthSwitch": 1, "TimeOut": 3, "IntervalTime": 10, "HealthNum": 2,
                        "UnHealthNum": 3},
        "Scheduler": "LEAST_CONN",
        "SessionExpireTime": 60,
        "DeregisterTargetRst": true,
    })
}

/// Whether every field of `wanted` is in `held`, with its value.
fn holds(held: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    match (held, wanted) {
        (serde_json::Value::Object(held), serde_json::Value::Object(wanted)) => wanted
            .iter()
            .all(|(k, v)| held.get(k).is_some_and(|h| holds(h, v))),
        _ => held == wanted,
    }
}

impl World {
    /// Waits until the listener on `lb`'s `port` has the settings `wanted`.
    async fn wait_settings(&self, lb: &str, port: u16, wanted: &serde_json::Value) {
        knit_tests::eventually(&format!("{lb}:{port} with {wanted}"), WAIT, || async {
            let listener = self
                .fake
                .listeners(lb)
                .into_iter()
                .find(|l| l.port == port)?;
            holds(&listener.settings.clone().into(), wanted).then_some(())
        })
        .await
    }
}

/// A `CLBListenerConfig`: its listeners are created with it (no
/// `ModifyListener`), follow a change of it, and get it back after a change
/// on the CLB; values the CLB API refuses are refused at admission.
#[tokio::test]
async fn listener_configs_apply_on_creation_on_change_and_after_drift() {
    let world = World::new("clb-config").await;
    let lb = world.fake.add_lb(REGION, &["139.135.64.60"]);
    let _knit = world.knit();
    let configs = Api::<CLBListenerConfig>::all(world.client.clone());
    let config = |scheduler: &str, timeout: i64| -> CLBListenerConfig {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloud.tencent.com/v1alpha1",
            "kind": "CLBListenerConfig",
            "metadata": {"name": "e2e-tuned"},
            "spec": {
                "healthcheck": {"healthSwitch": 1, "timeOut": timeout, "intervalTime": 10},
                "scheduler": scheduler,
            },
        }))
        .unwrap()
    };
    let refused = configs
        .create(&PostParams::default(), &config("RANDOM", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("timeOut") && refused.contains("scheduler"),
        "{refused}"
    );
    let _ = configs.delete("e2e-tuned", &DeleteParams::default()).await;
    configs
        .create(&PostParams::default(), &config("WRR", 4))
        .await
        .unwrap();
    let listener: DedicatedCLBListener = serde_json::from_value(json!({
        "apiVersion": "networking.cloud.tencent.com/v1alpha1",
        "kind": "DedicatedCLBListener",
        "metadata": {"name": "tuned"},
        "spec": {"lbId": lb, "lbPort": 7001, "protocol": "TCP", "listenerConfig": "e2e-tuned"},
    }))
    .unwrap();
    Api::<DedicatedCLBListener>::namespaced(world.client.clone(), &world.namespace)
        .create(&PostParams::default(), &listener)
        .await
        .unwrap();
    let tuned = |scheduler: &str, timeout: i64| {
        json!({"HealthCheck": {"HealthSwitch": 1, "TimeOut": timeout, "IntervalTime": 10},
               "Scheduler": scheduler})
    };
    world.wait_settings(&lb, 7001, &tuned("WRR", 4)).await;
    world
        .wait_listeners("the listener Available", |l| {
            l.len() == 1 && state(&l[0]) == Some(ListenerState::Available)
        })
        .await;
    let calls = world.fake.calls_by_action();
    assert_eq!(calls.get("ModifyListener"), None, "{calls:?}");

    // The configuration changes: the listener follows.
    configs
        .patch(
            "e2e-tuned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scheduler": "LEAST_CONN"}})),
        )
        .await
        .unwrap();
    world
        .wait_settings(&lb, 7001, &tuned("LEAST_CONN", 4))
        .await;

    // Changed on the CLB: put back at the next resync.
    let id = world.fake.listeners(&lb)[0].id.clone();
    world
        .fake
        .modify_listener_out_of_band(&id, json!({"HealthCheck": {"TimeOut": 8}}));
    world
        .wait_settings(&lb, 7001, &tuned("LEAST_CONN", 4))
        .await;
    assert!(world.fake.calls_by_action()["ModifyListener"] >= 2);
    assert_policy_grants(&world);

    Api::<DedicatedCLBListener>::namespaced(world.client.clone(), &world.namespace)
        .delete("tuned", &DeleteParams::default())
        .await
        .unwrap();
    world.wait_listeners("no listeners", |l| l.is_empty()).await;
    configs
        .delete("e2e-tuned", &DeleteParams::default())
        .await
        .unwrap();
}

fn state(listener: &DedicatedCLBListener) -> Option<ListenerState> {
    listener.status.as_ref().and_then(|s| s.state)
}

fn backend(listener: &DedicatedCLBListener) -> Option<String> {
    listener
        .spec
        .backend_pod
        .as_ref()
        .map(|b| b.pod_name.clone())
}

fn one_port_service(lbs: &[&str], min_port: u16, max_port: u16) -> serde_json::Value {
    json!({
        "minPort": min_port,
        "maxPort": max_port,
        "selector": {"app": "game"},
        "ports": [{"protocol": "TCP", "targetPort": 9000, "addressPodAnnotation": "example.com/address"}],
        "existedLbIds": lbs,
    })
}

fn two_port_service(lbs: &[&str], min_port: u16, max_port: u16) -> serde_json::Value {
    json!({
        "minPort": min_port,
        "maxPort": max_port,
        "selector": {"app": "game"},
        "ports": [{"protocol": "TCP", "targetPort": 9000}, {"protocol": "UDP", "targetPort": 9001}],
        "existedLbIds": lbs,
    })
}

/// Every listener object's CLB listener exists in the fake with the
/// object's pod as its only target, and the fake holds nothing else.
async fn assert_clb_matches(world: &World, pods: &BTreeMap<&str, &str>) {
    let listeners = world.listeners().await;
    let mut expected = BTreeMap::new();
    for listener in &listeners {
        // Each a service made names the allocator whose decision it applies
        // (the seed's own listener is written by hand, with none).
        let decided_by = &listener.spec.decided_by;
        let made_by_a_service = !listener.owner_references().is_empty();
        assert!(
            !made_by_a_service
                || decided_by
                    .plugin
                    .as_deref()
                    .is_some_and(|p| p.starts_with("clb-allocator@"))
                    && decided_by
                        .plugin_digest
                        .as_deref()
                        .is_some_and(|d| d.starts_with("sha256:")),
            "{}: {decided_by:?}",
            listener.name_any()
        );
        let protocol = serde_json::to_value(listener.spec.protocol).unwrap();
        let targets = match backend(listener) {
            Some(pod) => vec![format!(
                "{}:{}",
                pods[pod.as_str()],
                listener.spec.backend_pod.as_ref().unwrap().port
            )],
            None => vec![],
        };
        expected.insert(
            (
                listener.spec.lb_id.clone(),
                protocol.as_str().unwrap().to_owned(),
                listener.spec.lb_port,
            ),
            targets,
        );
    }
    assert_eq!(world.clb_state(), expected);
}

#[tokio::test]
async fn the_seed_example_reconciles_unchanged() {
    let world = World::in_namespace("seed", Some("demo")).await;
    world
        .fake
        .add_lb_with_id("lb-xxx", REGION, &["139.135.64.53"]);
    world
        .fake
        .add_lb_with_id("lb-yyy", REGION, &["139.135.64.54"]);
    world
        .fake
        .add_lb_with_id("lb-zzz", REGION, &["139.135.64.55"]);
    let _knit = world.knit();
    for i in 0..3 {
        let ip = format!("10.0.0.{}", 10 + i);
        world
            .create_pod(&format!("gameserver-{i}"), "gameserver", &ip)
            .await;
    }
    // The seed's manifests, as they are: the service (at the seed's
    // misspelled version) and a listener made by hand.
    for (file, namespace) in [
        ("examples/tke-clb/dedicated-clb-service.yaml", None),
        ("examples/tke-clb/dedicated-clb-listener.yaml", Some("demo")),
    ] {
        let mut args = vec!["apply", "-f", file];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        knit_tests::kubectl_ok(&args);
    }

    // Three pods × two ports from the service, plus the hand-made one.
    let listeners = world.wait_bound(7).await;
    let hand_made = listeners
        .iter()
        .find(|l| l.name_any() == "gameserver-0")
        .unwrap();
    let status = hand_made.status.as_ref().unwrap();
    assert_eq!(status.address.as_deref(), Some("139.135.64.53:8088"));
    assert!(status.listener_id.as_deref().unwrap().starts_with("lbl-"));
    let mut from_service: Vec<(String, String, u16, String)> = listeners
        .iter()
        .filter(|l| l.name_any() != "gameserver-0")
        .map(|l| {
            let protocol = serde_json::to_value(l.spec.protocol).unwrap();
            (
                l.spec.lb_id.clone(),
                protocol.as_str().unwrap().to_owned(),
                l.spec.lb_port,
                backend(l).unwrap(),
            )
        })
        .collect();
    from_service.sort();
    // In order: the first CLB, lowest ports first, TCP and UDP apart.
    let ports: BTreeSet<(String, String, u16)> = from_service
        .iter()
        .map(|(lb, protocol, port, _)| (lb.clone(), protocol.clone(), *port))
        .collect();
    let expected: BTreeSet<(String, String, u16)> = ["TCP", "UDP"]
        .iter()
        .flat_map(|p| (501..=503).map(move |port| ("lb-xxx".to_owned(), p.to_string(), port)))
        .collect();
    assert_eq!(ports, expected);
    let pods = BTreeMap::from([
        ("gameserver-0", "10.0.0.10"),
        ("gameserver-1", "10.0.0.11"),
        ("gameserver-2", "10.0.0.12"),
    ]);
    assert_clb_matches(&world, &pods).await;
    for listener in listeners.iter().filter(|l| l.name_any() != "gameserver-0") {
        let pod = backend(listener).unwrap();
        let annotation = match listener.spec.backend_pod.as_ref().unwrap().port {
            9000 => "networking.cloud.tencent.com/external-address-9000",
            _ => "networking.cloud.tencent.com/external-address-8080",
        };
        let address = format!("139.135.64.53:{}", listener.spec.lb_port);
        world.wait_annotation(&pod, annotation, &address).await;
    }
    // The listener configuration it names did not exist: the CLB's
    // defaults, said so; once it exists, its settings are put.
    let ready = &hand_made.status.as_ref().unwrap().conditions[0];
    assert!(
        ready
            .message
            .contains("CLBListenerConfig clblistenerconfig-sample does not exist"),
        "{}",
        ready.message
    );
    knit_tests::kubectl_ok(&[
        "apply",
        "-f",
        "examples/tke-clb/clblistenerconfig-sample.yaml",
    ]);
    world
        .wait_settings("lb-xxx", 8088, &sample_settings())
        .await;

    let service = world.wait_service_reason("gameserver", "AllBound").await;
    let status = service.status.unwrap();
    assert_eq!(status.allocated, 6);
    assert_eq!(status.load_balancers.len(), 3);
    assert!(
        status
            .decided_by
            .plugin
            .unwrap()
            .starts_with("clb-allocator@")
    );

    // Clean up the fixed namespace for a rerun against the same server.
    knit_tests::kubectl_ok(&[
        "delete",
        "-f",
        "examples/tke-clb/clblistenerconfig-sample.yaml",
    ]);
    Api::<DedicatedCLBService>::namespaced(world.client.clone(), "demo")
        .delete("gameserver", &DeleteParams::default())
        .await
        .unwrap();
    Api::<DedicatedCLBListener>::namespaced(world.client.clone(), "demo")
        .delete("gameserver-0", &DeleteParams::default())
        .await
        .unwrap();
    world.wait_listeners("no listeners", |l| l.is_empty()).await;
    assert!(world.clb_state().is_empty(), "{:?}", world.clb_state());
}

#[tokio::test]
async fn scaling_up_binds_new_pods_and_scaling_down_frees_their_listeners() {
    let world = World::new("clb-scale").await;
    let lb = world.fake.add_lb(REGION, &["1.1.1.1"]);
    let _knit = world.knit();
    world
        .create_service("game", two_port_service(&[&lb], 1000, 1100))
        .await;
    let mut pods = BTreeMap::new();
    for (name, ip) in [("game-a", "10.1.0.1"), ("game-b", "10.1.0.2")] {
        world.create_pod(name, "game", ip).await;
        pods.insert(name, ip);
    }
    world.wait_bound(4).await;
    assert_clb_matches(&world, &pods).await;

    for (name, ip) in [("game-c", "10.1.0.3"), ("game-d", "10.1.0.4")] {
        world.create_pod(name, "game", ip).await;
        pods.insert(name, ip);
    }
    world.wait_bound(8).await;
    assert_clb_matches(&world, &pods).await;

    world.delete_pod("game-a").await;
    world.delete_pod("game-c").await;
    let listeners = world
        .wait_listeners("game-a's and game-c's listeners Available", |listeners| {
            listeners.len() == 8
                && listeners
                    .iter()
                    .filter(|l| state(l) == Some(ListenerState::Available))
                    .count()
                    == 4
                && listeners
                    .iter()
                    .filter(|l| state(l) == Some(ListenerState::Bound))
                    .count()
                    == 4
        })
        .await;
    for listener in &listeners {
        match state(listener) {
            Some(ListenerState::Bound) => {
                assert!(matches!(
                    backend(listener).as_deref(),
                    Some("game-b" | "game-d")
                ))
            }
            _ => assert_eq!(backend(listener), None),
        }
    }
    // Unbound listeners stay on the CLB, without targets, for reuse.
    assert_clb_matches(&world, &pods).await;
    let service = world.wait_service_reason("game", "AllBound").await;
    assert_eq!(service.status.unwrap().allocated, 8);
}

#[tokio::test]
async fn a_replaced_pod_gets_its_listener_back_and_others_wait_for_the_cooldown() {
    let world = World::new("clb-replace").await;
    let lb = world.fake.add_lb(REGION, &["2.2.2.2"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 2000, 2010))
        .await;
    world.create_pod("game-0", "game", "10.2.0.1").await;
    let first = world.wait_bound(1).await.remove(0);
    let address = first.status.as_ref().unwrap().address.clone().unwrap();
    world
        .wait_annotation("game-0", "example.com/address", &address)
        .await;

    world.delete_pod("game-0").await;
    world
        .wait_listeners("the listener Available", |l| {
            l.len() == 1 && state(&l[0]) == Some(ListenerState::Available)
        })
        .await;
    // Another pod does not take a listener that is resting (60 s by
    // default): it gets one of its own.
    world.create_pod("game-1", "game", "10.2.0.2").await;
    let listeners = world
        .wait_listeners("game-1 bound", |l| {
            l.iter().any(|l| {
                backend(l).as_deref() == Some("game-1") && state(l) == Some(ListenerState::Bound)
            })
        })
        .await;
    let game_1 = listeners
        .iter()
        .find(|l| backend(l).as_deref() == Some("game-1"))
        .unwrap();
    assert_ne!(game_1.name_any(), first.name_any());

    // game-0 comes back (new IP, same name): same listener, same address.
    world.create_pod("game-0", "game", "10.2.0.9").await;
    let listeners = world.wait_bound(2).await;
    let again = listeners
        .iter()
        .find(|l| backend(l).as_deref() == Some("game-0"))
        .unwrap();
    assert_eq!(again.name_any(), first.name_any());
    assert_eq!(
        again.status.as_ref().unwrap().listener_id,
        first.status.as_ref().unwrap().listener_id
    );
    world
        .wait_annotation("game-0", "example.com/address", &address)
        .await;
    let pods = BTreeMap::from([("game-0", "10.2.0.9"), ("game-1", "10.2.0.2")]);
    assert_clb_matches(&world, &pods).await;
}

#[tokio::test]
async fn an_exhausted_range_says_which_pod_got_no_port() {
    let world = World::new("clb-full").await;
    let lb = world.fake.add_lb(REGION, &["3.3.3.3"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 3000, 3002))
        .await;
    for i in 0..4 {
        world
            .create_pod(&format!("game-{i}"), "game", &format!("10.3.0.{i}"))
            .await;
    }
    world.wait_bound(3).await;
    let service = world.wait_service_reason("game", "NoPortAvailable").await;
    let condition = &service.status.as_ref().unwrap().conditions[0];
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("3000-3002"),
        "{}",
        condition.message
    );
    assert_eq!(service.status.as_ref().unwrap().free, 0);
    // The pod left out is told, with an Event.
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.namespace);
    let event = knit_tests::eventually("a NoPortAvailable Event", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NoPortAvailable"))
    })
    .await;
    let pod = event.regarding.unwrap().name.unwrap();
    assert_eq!(world.annotation(&pod, "example.com/address").await, None);
    assert_eq!(world.fake.listeners(&lb).len(), 3);
}

/// A listener deleted on the CLB behind knit's back (in the console, say) is
/// created again at the same port and bound to the same pod.
#[tokio::test]
async fn a_listener_deleted_on_the_clb_is_recreated_and_rebound() {
    let world = World::new("clb-out-of-band").await;
    let lb = world.fake.add_lb(REGION, &["5.5.5.5"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 5000, 5009))
        .await;
    world.create_pod("game-0", "game", "10.5.0.1").await;
    world.wait_bound(1).await;
    let before = world.fake.listeners(&lb);
    assert_eq!(before.len(), 1);

    world.fake.delete_listener(&lb, &before[0].id);
    assert!(world.fake.listeners(&lb).is_empty());
    let after = knit_tests::eventually("the listener created again", WAIT, || async {
        let listeners = world.fake.listeners(&lb);
        let listener = listeners.first()?.clone();
        (!world.fake.targets(&listener.id).is_empty()).then_some(listener)
    })
    .await;
    assert_eq!(
        (after.port, &after.protocol),
        (before[0].port, &before[0].protocol)
    );
    assert_ne!(after.id, before[0].id);
    let pods = BTreeMap::from([("game-0", "10.5.0.1")]);
    knit_tests::eventually(
        "the listener object bound to the new listener",
        WAIT,
        || async {
            let listeners = world.listeners().await;
            let status = listeners.first()?.status.clone()?;
            (status.listener_id.as_deref() == Some(after.id.as_str())
                && state(&listeners[0]) == Some(ListenerState::Bound))
            .then_some(())
        },
    )
    .await;
    assert_clb_matches(&world, &pods).await;
}

/// A new pod that gets a deleted pod's IP gets its own listener: the old
/// pod's listener stops forwarding to that IP, which now is someone else's.
#[tokio::test]
async fn a_reused_pod_ip_is_followed_by_the_new_pod_never_the_old() {
    let world = World::new("clb-ip-reuse").await;
    let lb = world.fake.add_lb(REGION, &["6.6.6.6"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 6000, 6009))
        .await;
    world.create_pod("game-0", "game", "10.6.0.1").await;
    let old = world.wait_bound(1).await.remove(0);
    let old_id = old.status.as_ref().unwrap().listener_id.clone().unwrap();

    world.delete_pod("game-0").await;
    world.create_pod("game-1", "game", "10.6.0.1").await;
    world
        .wait_listeners("game-1 bound and game-0's listener resting", |l| {
            l.iter().any(|l| {
                backend(l).as_deref() == Some("game-1") && state(l) == Some(ListenerState::Bound)
            }) && l.iter().any(|l| {
                l.name_any() == old.name_any() && state(l) == Some(ListenerState::Available)
            })
        })
        .await;
    assert!(
        world.fake.targets(&old_id).is_empty(),
        "the old pod's listener still forwards to its IP: {:?}",
        world.fake.targets(&old_id)
    );
    let pods = BTreeMap::from([("game-1", "10.6.0.1")]);
    assert_clb_matches(&world, &pods).await;
}

/// A port held by a listener knit does not own is never taken over or
/// deleted, and the pod is placed on another port: whether the allocator
/// sees the listener first or a create planned from an older view of the
/// CLB meets it (`PortConflict`, then planned again).
#[tokio::test]
async fn a_port_held_by_someone_else_is_left_alone_and_the_pod_placed_elsewhere() {
    let world = World::new("clb-foreign").await;
    let lb = world.fake.add_lb(REGION, &["7.7.7.7"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 7000, 7001))
        .await;
    world.wait_service_reason("game", "AllBound").await;
    let foreign = world.fake.add_foreign_listener(&lb, "TCP", 7000);
    world.create_pod("game-0", "game", "10.7.0.1").await;
    let bound = world.wait_bound(1).await;
    assert_eq!(bound[0].spec.lb_port, 7001);
    let listeners = world.fake.listeners(&lb);
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    assert!(listeners.iter().any(|l| l.id == foreign && l.port == 7000));
    assert!(world.fake.targets(&foreign).is_empty());
}

/// A burst of pods on one CLB: knit sends one write at a time per CLB and
/// waits for its task, so the CLB never refuses a write for a task still
/// running (`ResourceInOperating`), even with slow tasks.
#[tokio::test]
async fn a_burst_keeps_one_write_in_flight_per_clb() {
    let world = World::new("clb-burst").await;
    let lb = world.fake.add_lb(REGION, &["8.8.8.8"]);
    world.fake.set_task_delay(Duration::from_millis(300));
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&lb], 8000, 8099))
        .await;
    let mut pods = BTreeMap::new();
    let names: Vec<String> = (0..20).map(|i| format!("game-{i}")).collect();
    let ips: Vec<String> = (0..20).map(|i| format!("10.8.0.{}", i + 1)).collect();
    for (name, ip) in names.iter().zip(&ips) {
        world.create_pod(name, "game", ip).await;
        pods.insert(name.as_str(), ip.as_str());
    }
    world.wait_bound(20).await;
    assert_clb_matches(&world, &pods).await;
    assert_eq!(
        world.fake.refusals("FailedOperation.ResourceInOperating"),
        0,
        "a write was sent while the CLB's task was running"
    );
    assert!(world.fake.calls("CreateListener") >= 1);
    assert_policy_grants(&world);
}

/// The service's annotations choose its allocator and configure it: an
/// allocator that is not loaded is `PluginUnavailable`, a configuration the
/// allocator refuses is `InvalidConfig`, each named in the condition, and
/// nothing is placed until both are right.
#[tokio::test]
async fn the_allocator_annotations_choose_and_configure_the_plugin() {
    let world = World::new("clb-annotations").await;
    let lb = world.fake.add_lb(REGION, &["4.4.4.4"]);
    let _knit = world.knit();
    let services = Api::<DedicatedCLBService>::namespaced(world.client.clone(), &world.namespace);
    let service: DedicatedCLBService = serde_json::from_value(json!({
        "apiVersion": "networking.cloud.tencent.com/v1alpha1",
        "kind": "DedicatedCLBService",
        "metadata": {"name": "game", "annotations": {"knit.dev/clb-allocator": "no-such-allocator"}},
        "spec": one_port_service(&[&lb], 4000, 4009),
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    world.create_pod("game-0", "game", "10.4.0.1").await;

    let unavailable = world.wait_service_reason("game", "PluginUnavailable").await;
    let message = &unavailable.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("no-such-allocator"), "{message}");

    let annotate = |annotations: serde_json::Value| {
        let services = services.clone();
        async move {
            services
                .patch(
                    "game",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
                )
                .await
                .unwrap();
        }
    };
    annotate(json!({"knit.dev/clb-allocator": "clb-allocator", "clb.knit.dev/spread": "sideways"}))
        .await;
    let refused = world.wait_service_reason("game", "InvalidConfig").await;
    let message = &refused.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("sideways"), "{message}");
    assert!(world.fake.listeners(&lb).is_empty());

    annotate(json!({"clb.knit.dev/spread": "uniform"})).await;
    world.wait_bound(1).await;
    assert_eq!(world.fake.listeners(&lb).len(), 1);
}

#[tokio::test]
async fn a_clb_deleted_outside_knit_is_replaced_by_the_next_one() {
    let world = World::new("clb-gone").await;
    let doomed = world.fake.add_lb(REGION, &["4.4.4.1"]);
    let spare = world.fake.add_lb(REGION, &["4.4.4.2"]);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&doomed, &spare], 4000, 4010))
        .await;
    world.create_pod("game-0", "game", "10.4.0.1").await;
    world.create_pod("game-1", "game", "10.4.0.2").await;
    let listeners = world.wait_bound(2).await;
    assert!(listeners.iter().all(|l| l.spec.lb_id == doomed));

    world.fake.delete_lb(&doomed);
    let listeners = world
        .wait_listeners("both pods bound on the spare CLB", |l| {
            l.len() == 2
                && l.iter()
                    .all(|l| l.spec.lb_id == spare && state(l) == Some(ListenerState::Bound))
        })
        .await;
    for listener in &listeners {
        let address = listener.status.as_ref().unwrap().address.clone().unwrap();
        assert!(address.starts_with("4.4.4.2:"), "{address}");
        world
            .wait_annotation(&backend(listener).unwrap(), "example.com/address", &address)
            .await;
    }
    let service = world
        .wait_service_reason("game", "LoadBalancerNotFound")
        .await;
    assert!(
        service.status.unwrap().conditions[0]
            .message
            .contains(&doomed)
    );
    let pods = BTreeMap::from([("game-0", "10.4.0.1"), ("game-1", "10.4.0.2")]);
    assert_clb_matches(&world, &pods).await;
}

#[tokio::test]
async fn a_restart_half_way_neither_duplicates_nor_leaks_listeners() {
    let world = World::new("clb-restart").await;
    let lb = world.fake.add_lb(REGION, &["5.5.5.5"]);
    // Tasks long enough to stop knit while listeners are being created.
    world.fake.set_task_delay(Duration::from_millis(1500));
    let knit = world.knit();
    world
        .create_service("game", two_port_service(&[&lb], 5000, 5100))
        .await;
    let mut pods = BTreeMap::new();
    for i in 0..4 {
        let (name, ip) = (format!("game-{i}"), format!("10.5.0.{i}"));
        world.create_pod(&name, "game", &ip).await;
        pods.insert(name, ip);
    }
    knit_tests::eventually("a CreateListener call", WAIT, || async {
        (world.fake.calls("CreateListener") > 0).then_some(())
    })
    .await;
    drop(knit);
    let created_before = world.fake.calls("CreateListener");

    world.fake.set_task_delay(Duration::from_millis(50));
    let _knit = world.knit();
    let listeners = world.wait_bound(8).await;
    let pods: BTreeMap<&str, &str> = pods.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_clb_matches(&world, &pods).await;
    // Each object names the CLB listener the fake holds on its port.
    let on_clb: BTreeMap<(String, u16), String> = world
        .fake
        .listeners(&lb)
        .into_iter()
        .map(|l| ((l.protocol, l.port), l.id))
        .collect();
    for listener in &listeners {
        let protocol = serde_json::to_value(listener.spec.protocol).unwrap();
        let key = (protocol.as_str().unwrap().to_owned(), listener.spec.lb_port);
        assert_eq!(
            listener.status.as_ref().unwrap().listener_id.as_ref(),
            on_clb.get(&key)
        );
    }
    assert!(created_before >= 1);
}

#[tokio::test]
async fn deleting_the_service_deletes_every_listener_from_the_clb() {
    let world = World::new("clb-delete").await;
    let first = world.fake.add_lb(REGION, &["6.6.6.1"]);
    let second = world.fake.add_lb(REGION, &["6.6.6.2"]);
    world.fake.set_listener_quota(&first, 2);
    let _knit = world.knit();
    world
        .create_service("game", one_port_service(&[&first, &second], 6000, 6010))
        .await;
    for i in 0..3 {
        world
            .create_pod(&format!("game-{i}"), "game", &format!("10.6.0.{i}"))
            .await;
    }
    // The first CLB's quota of two spills the third listener over.
    let listeners = world.wait_bound(3).await;
    assert_eq!(
        listeners.iter().filter(|l| l.spec.lb_id == second).count(),
        1
    );
    assert_eq!(world.clb_state().len(), 3);

    Api::<DedicatedCLBService>::namespaced(world.client.clone(), &world.namespace)
        .delete("game", &DeleteParams::default())
        .await
        .unwrap();
    knit_tests::eventually("the service gone", WAIT, || async {
        world.service("game").await.is_none().then_some(())
    })
    .await;
    assert!(world.listeners().await.is_empty());
    assert!(world.clb_state().is_empty(), "{:?}", world.clb_state());
    assert_policy_grants(&world);
}

/// CLBs created on demand (the seed's `extensiveParameters`): a service
/// that lists no CLB gets one from `CreateLoadBalancer` whenever a pod
/// finds no free port, with its parameters, the cluster's VPC and knit's
/// tags, each listed in `status.createdLbIds`. A service that lists its
/// CLBs gets none when they are full, until it gives `extensiveParameters`.
/// Deleting the services deletes the CLBs knit created, never the listed
/// one.
#[tokio::test]
async fn clbs_are_created_on_demand_and_deleted_with_their_service() {
    let world = World::new("clb-create").await;
    let listed = world.fake.add_lb(REGION, &["6.6.7.1"]);
    let _knit = world.knit();
    // One port per CLB: each pod of `bought` needs a CLB of its own.
    let spec = |app: &str, lbs: &[&str], port: u16| {
        json!({
            "minPort": port, "maxPort": port, "selector": {"app": app},
            "ports": [{"protocol": "TCP", "targetPort": 9000, "addressPodAnnotation": "example.com/address"}],
            "existedLbIds": lbs,
        })
    };
    let mut bought = spec("bought", &[], 7000);
    bought["extensiveParameters"] = json!(r#"{"VipIsp":"CTCC"}"#);
    world.create_service("bought", bought).await;
    world.create_pod("bought-0", "bought", "10.7.0.1").await;
    world.create_pod("bought-1", "bought", "10.7.0.2").await;
    let created = knit_tests::eventually("two CLBs created for bought", WAIT, || async {
        let status = world.service("bought").await?.status?;
        let ready = status.conditions.first()?.reason == "AllBound";
        (ready && status.created_lb_ids.len() == 2).then_some(status.created_lb_ids)
    })
    .await;
    let uid = world.service("bought").await.unwrap().uid().unwrap();
    let tags = world.fake.lb_tags();
    for id in &created {
        let tagged: BTreeSet<(String, String)> = tags[id].iter().cloned().collect();
        let wanted: BTreeSet<(String, String)> = [
            ("knit.dev/owner", uid.as_str()),
            ("knit.dev/service", &format!("{}/bought", world.namespace)),
            ("knit.dev/cluster", CLUSTER),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        assert_eq!(tagged, wanted, "{id}");
    }
    let creates: Vec<serde_json::Value> = world
        .fake
        .request_bodies()
        .into_iter()
        .filter(|(action, _)| action == "CreateLoadBalancer")
        .map(|(_, body)| serde_json::from_str(&body).unwrap())
        .collect();
    // Two CLBs bought: a pass in the same second may ask again with the
    // same ClientToken, which the API answers with the CLB it made.
    let tokens: BTreeSet<&str> = creates
        .iter()
        .map(|c| c["ClientToken"].as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 2, "{creates:?}");
    for create in &creates {
        assert_eq!(
            (
                &create["VipIsp"],
                &create["VpcId"],
                &create["LoadBalancerType"],
                &create["Number"]
            ),
            (&json!("CTCC"), &json!(VPC), &json!("OPEN"), &json!(1)),
            "{create}"
        );
    }
    // Each pod's address is on a CLB of its own, one knit created.
    let on: BTreeSet<String> = world
        .wait_bound(2)
        .await
        .iter()
        .map(|l| l.spec.lb_id.clone())
        .collect();
    assert_eq!(on, created.iter().cloned().collect());

    // A service that lists a full CLB and says nothing of buying: its
    // second pod waits, and nothing is created...
    world
        .create_service("listed", spec("listed", &[&listed], 7100))
        .await;
    world.create_pod("listed-0", "listed", "10.7.1.1").await;
    world.create_pod("listed-1", "listed", "10.7.1.2").await;
    world.wait_service_reason("listed", "NoPortAvailable").await;
    assert_eq!(world.fake.calls("CreateLoadBalancer"), creates.len() as u64);
    // ...until it gives extensiveParameters.
    Api::<DedicatedCLBService>::namespaced(world.client.clone(), &world.namespace)
        .patch(
            "listed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"extensiveParameters": "{}"}})),
        )
        .await
        .unwrap();
    world.wait_service_reason("listed", "AllBound").await;
    let listed_status = world.service("listed").await.unwrap().status.unwrap();
    assert_eq!(listed_status.created_lb_ids.len(), 1);
    assert_eq!(world.fake.lb_tags().len(), 4);

    // The services go: the three CLBs knit created go with them, the listed
    // one stays.
    for name in ["bought", "listed"] {
        Api::<DedicatedCLBService>::namespaced(world.client.clone(), &world.namespace)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    knit_tests::eventually("the services gone", WAIT, || async {
        (world.service("bought").await.is_none() && world.service("listed").await.is_none())
            .then_some(())
    })
    .await;
    assert_eq!(
        world.fake.lb_tags().into_keys().collect::<Vec<_>>(),
        [listed]
    );
    assert_policy_grants(&world);
}

/// Every CLB action knit called is granted by the example CAM policy
/// (`examples/tke-clb/iam-policy.json`): the seed's, plus what knit calls
/// beyond it; and every request it sent decodes with the official SDK.
fn assert_policy_grants(world: &World) {
    world.fake.assert_requests_decode_with_the_sdk();
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(knit_tests::repo().join("examples/tke-clb/iam-policy.json"))
            .unwrap(),
    )
    .unwrap();
    let granted: BTreeSet<&str> = policy["statement"][0]["action"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|action| action.as_str()?.strip_prefix("clb:"))
        .collect();
    let called = world.fake.calls_by_action();
    assert!(called.len() > 3, "{called:?}");
    let missing: Vec<&String> = called
        .keys()
        .filter(|action| !granted.contains(action.as_str()))
        .collect();
    assert!(missing.is_empty(), "the policy does not grant {missing:?}");
}
