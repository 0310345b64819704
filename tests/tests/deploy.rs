//! The Helm chart (`deploy/knit`) on the real API server: rendered with
//! `helm template`, applied with kubectl, its Deployment's arguments parsed
//! by knit's own command line, and knit run with the chart's ServiceAccount
//! identity (RBAC on) through each domain's main scenario. A rule the chart
//! lacks makes a scenario fail here; a few things knit must not be able to
//! do are checked too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use knit::cli::{Cli, Command, Domain};
use knit::domains::tke_clb::types::{DedicatedCLBListener, DedicatedCLBService, ListenerState};
use knit::runtime::kind::{Plugin, PluginState};
use knit_tests::fake_clb::FakeClb;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NAMESPACE: &str = "knit-system";
const WAIT: Duration = Duration::from_secs(90);

fn helm_template(values: &[String]) -> String {
    let mut command = std::process::Command::new(knit_tests::tool("helm"));
    command
        .args(["template", "knit", "deploy/knit", "--namespace", NAMESPACE])
        .current_dir(knit_tests::repo());
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().expect("running helm");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Value| !d.is_null())
        .collect()
}

async fn create<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

async fn pod_with_ip(client: &Client, namespace: &str, name: &str, metadata: Value, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut metadata = metadata;
    metadata["name"] = json!(name);
    create(
        &pods,
        json!({"metadata": metadata,
               "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}]}}),
    )
    .await;
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip}})),
    )
    .await
    .unwrap();
}

async fn annotation(client: &Client, namespace: &str, pod: &str, key: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .ok()?;
    pod.annotations().get(key).cloned()
}

#[test]
fn the_chart_renders_only_the_rules_of_enabled_domains() {
    let rules = |values: &[String]| -> Vec<String> {
        documents(&helm_template(values))
            .into_iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    let all = rules(&[]);
    assert!(
        all.contains(&"ippools".to_owned()) && all.contains(&"dedicatedclbservices".to_owned())
    );
    let ipam_only = rules(&["domains.tkeClb=false".into()]);
    assert!(ipam_only.contains(&"ippools".to_owned()));
    assert!(
        !ipam_only.iter().any(|r| r.starts_with("dedicatedclb")),
        "{ipam_only:?}"
    );
    // No wildcard anywhere.
    assert!(!helm_template(&[]).contains("\"*\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knit_runs_every_domain_as_the_charts_service_account() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let admin = knit_tests::admin_client().await;
    let _ = Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap(),
        )
        .await;
    let fake = FakeClb::start().await;
    fake.add_credentials("AKIDdeploy", "deploy-secret-key");
    fake.set_task_delay(Duration::from_millis(50));
    let lb = fake.add_lb("ap-chengdu", &["7.7.7.7"]);

    // The chart, with the seed's TKE values, applied as cluster admin.
    let manifest = helm_template(&[
        "region=ap-chengdu".into(),
        "secretID=AKIDdeploy".into(),
        "secretKey=deploy-secret-key".into(),
        format!("tke.endpoint={}", fake.endpoint()),
        "tke.resyncSeconds=5".into(),
    ]);
    let applied = knit_tests::kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // The Deployment's arguments mean to knit what the chart intends.
    let deployment = documents(&manifest)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let Command::Run(run) = Cli::try_parse_from(std::iter::once("knit").chain(args))
        .unwrap()
        .command
    else {
        panic!("the chart does not run `knit run`");
    };
    assert_eq!(run.domains, [Domain::Ipam, Domain::TkeClb]);
    assert!(run.leader_elect);
    let settings = run.tke.settings(NAMESPACE);
    assert_eq!(settings.region.as_deref(), Some("ap-chengdu"));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // knit, as the chart's ServiceAccount.
    let client = knit_tests::knit_client().await;
    let registry = knit::cli::builtin_registry(None, Arc::default()).unwrap();
    let (mut leading, _election) = knit::leader::spawn(
        client.clone(),
        knit::leader::LeaseConfig::new(NAMESPACE, "knit", "deploy-test"),
        std::future::pending(),
    );
    tokio::time::timeout(WAIT, leading.wait_for(|leading| *leading))
        .await
        .expect("the lease within the wait")
        .unwrap();
    tokio::spawn(knit::runtime::kube_source::run(
        client.clone(),
        NAMESPACE.into(),
        registry.clone(),
    ));
    let reconciles = Arc::new(knit::telemetry::ReconcileMetrics::default());
    let mut prometheus = prometheus_client::registry::Registry::default();
    reconciles.register(&mut prometheus);
    tokio::spawn(knit::domains::ipam::controller::run(
        client.clone(),
        registry.clone(),
        Arc::default(),
        reconciles.clone(),
        std::future::pending(),
    ));
    tokio::spawn(knit::domains::tke_clb::run(
        client.clone(),
        registry.clone(),
        settings,
        reconciles.clone(),
        std::future::pending(),
    ));
    let namespace = knit_tests::fresh_namespace(&admin, "deploy").await;

    // Plugins: a Plugin object whose bytes are a ConfigMap in knit's namespace.
    let configmap = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("deploy-plugin".into()),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            "plugin.wasm".to_owned(),
            ByteString(knit_tests::built_plugin("fixture_swap_v1")),
        )])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &configmap)
        .await
        .unwrap();
    let plugins: Api<Plugin> = Api::all(admin.clone());
    create(
        &plugins,
        json!({"apiVersion": "knit.dev/v1alpha1", "kind": "Plugin",
               "metadata": {"name": "deploy-plugin"},
               "spec": {"source": {"configMap": {"name": "deploy-plugin", "key": "plugin.wasm"}}}}),
    )
    .await;
    knit_tests::eventually("the Plugin Active", WAIT, || async {
        let status = plugins.get("deploy-plugin").await.ok()?.status?;
        (status.state == Some(PluginState::Active)).then_some(())
    })
    .await;

    // IPAM: a pool and a pod asking for an address.
    create(
        &Api::<knit::domains::ipam::types::IPPool>::all(admin.clone()),
        json!({"apiVersion": "knit.dev/v1alpha1", "kind": "IPPool",
               "metadata": {"name": "deploy-pool"},
               "spec": {"cidrs": ["10.77.0.0/24"]}}),
    )
    .await;
    pod_with_ip(
        &admin,
        &namespace,
        "ipam-pod",
        json!({"annotations": {"knit.dev/ippool": "deploy-pool"}}),
        "10.1.1.1",
    )
    .await;
    let address = knit_tests::eventually("the pod's address", WAIT, || {
        annotation(&admin, &namespace, "ipam-pod", "knit.dev/ip")
    })
    .await;
    assert!(address.starts_with("10.77.0."), "{address}");

    // TKE CLB: a service and its pod, bound on the CLB, address on the pod.
    create(
        &Api::<DedicatedCLBService>::namespaced(admin.clone(), &namespace),
        json!({"apiVersion": "networking.cloud.tencent.com/v1alpha1", "kind": "DedicatedCLBService",
               "metadata": {"name": "game"},
               "spec": {"minPort": 7000, "maxPort": 7010, "selector": {"app": "game"},
                        "ports": [{"protocol": "TCP", "targetPort": 9000,
                                   "addressPodAnnotation": "example.com/address"}],
                        "existedLbIds": [lb]}}),
    )
    .await;
    pod_with_ip(
        &admin,
        &namespace,
        "game-0",
        json!({"labels": {"app": "game"}}),
        "10.2.2.2",
    )
    .await;
    let address = knit_tests::eventually("the CLB address on the pod", WAIT, || {
        annotation(&admin, &namespace, "game-0", "example.com/address")
    })
    .await;
    assert_eq!(address, "7.7.7.7:7000");
    let listeners = Api::<DedicatedCLBListener>::namespaced(admin.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(
        listeners[0].status.as_ref().unwrap().state,
        Some(ListenerState::Bound)
    );
    assert_eq!(fake.listeners(&lb).len(), 1);

    // Every kind's passes were counted.
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &prometheus).unwrap();
    for kind in ["IPPool", "DedicatedCLBService", "DedicatedCLBListener"] {
        let line = format!(r#"knit_reconciles_total{{kind="{kind}",result="success"}}"#);
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }

    // And what it may not do: read other Secrets, here or in its namespace.
    let forbidden = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .get("some-other-secret")
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
}
