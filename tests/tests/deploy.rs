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
use knit::domains::cloudflare::types::{DNSRecord, NetworkRoute, Tunnel, WARPConnector};
use knit::domains::tke_clb::types::{DedicatedCLBListener, DedicatedCLBService, ListenerState};
use knit::runtime::kind::{Plugin, PluginState};
use knit_tests::fake_clb::FakeClb;
use knit_tests::fake_cloudflare::FakeCloudflare;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NAMESPACE: &str = "knit-system";
const WAIT: Duration = Duration::from_secs(90);
const CF_ACCOUNT: &str = "deploy-account";
const CF_TOKEN: &str = "deploy-cloudflare-token";

fn helm_template(values: &[String]) -> String {
    helm_template_from(None, values)
}

/// `helm template` with a values file (relative to the repository) first.
fn helm_template_from(file: Option<&str>, values: &[String]) -> String {
    let mut command = std::process::Command::new(knit_tests::tool("helm"));
    command
        .args(["template", "knit", "deploy/knit", "--namespace", NAMESPACE])
        .current_dir(knit_tests::repo());
    if let Some(file) = file {
        command.args(["-f", file]);
    }
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
    assert!(all.contains(&"dnsrecords".to_owned()) && all.contains(&"secrets".to_owned()));
    // Without Cloudflare, no cluster-wide Secret rule and no Cloudflare kind.
    let without_cloudflare = rules(&["domains.cloudflare=false".into()]);
    assert!(
        !without_cloudflare
            .iter()
            .any(|r| r == "secrets" || r == "deployments" || r.starts_with("tunnels")),
        "{without_cloudflare:?}"
    );
    // Namespaces: listed and watched (a Gateway listener may select them by
    // label); got by name only for kube-system's UID, and not with a
    // cluster ID given.
    let namespace_verbs = |values: &[String]| -> Vec<String> {
        documents(&helm_template(values))
            .into_iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["resources"] == json!(["namespaces"]))
            .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(namespace_verbs(&[]), ["list", "watch", "get"]);
    assert_eq!(
        namespace_verbs(&["cloudflare.clusterId=prod-eu".into()]),
        ["list", "watch"]
    );
    // No wildcard anywhere.
    assert!(!helm_template(&[]).contains("\"*\""));
}

/// The seed's values file installs knit as it installed
/// tke-extend-network-controller: the region reaches knit, the key pair
/// becomes the credentials Secret knit reads, and nothing else is needed.
#[test]
fn the_seeds_values_file_installs_the_tke_domain() {
    let documents = documents(&helm_template_from(
        Some("examples/tke-clb/values.yaml"),
        &[],
    ));
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--tke-region=ap-guangzhou"), "{args:?}");
    assert!(
        documents.iter().any(|d| d["kind"] == "Secret"
            && d["stringData"]["secretId"] == "AKIDxxxxxxxxxxxxxxxx"
            && d["stringData"]["secretKey"] == "xxxxxxxxxxxxxxxxxxxx"),
        "no credentials Secret from the values file"
    );
}

/// HeadCNI from the seed's own install command: the DaemonSet, the auth
/// key's Secret, and a configuration the agent accepts as it stands.
#[test]
fn the_seeds_helm_command_installs_headcni() {
    let seeds_command = documents(&helm_template(&[
        "config.headscale.url=https://headscale.company.com".into(),
        "config.headscale.authKey=YOUR_AUTH_KEY".into(),
        "config.ipam.type=headcni-ipam".into(),
    ]));
    let find = |kind: &str| {
        seeds_command
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.contains("head"))
            })
            .unwrap_or_else(|| panic!("no HeadCNI {kind}"))
    };
    let conf = find("ConfigMap")["data"]["headcni.conf"].as_str().unwrap();
    let list = knit::headcni::agent::conflist(conf.as_bytes()).unwrap_or_else(|error| {
        panic!(
            "the agent refuses the chart's configuration: {}\n{conf}",
            error.msg
        )
    });
    let plugin = &list["plugins"][0];
    assert_eq!(plugin["type"], "headcni");
    assert_eq!(plugin["headscale_url"], "https://headscale.company.com");
    assert_eq!(plugin["mtu"], 1420);
    assert_eq!(plugin["ipam"]["type"], "headcni-ipam");
    assert_eq!(plugin["ipam"]["allocation_strategy"], "sequential");
    assert_eq!(find("Secret")["stringData"]["authKey"], "YOUR_AUTH_KEY");
    assert!(
        !conf.contains("YOUR_AUTH_KEY"),
        "the auth key stays out of the CNI configuration"
    );
    let pod = &find("DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    assert_eq!(agent["args"][0], "headcni-agent");
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN"])
    );
    assert_eq!(
        agent["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    // Without the seed's values, no HeadCNI.
    assert!(!helm_template(&[]).contains("headcni-agent"));

    // The example values file: the seed's second configuration, to the field.
    let from_file = documents(&helm_template_from(
        Some("examples/headcni/values.yaml"),
        &[],
    ));
    let conf = from_file
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["headcni.conf"].is_string())
        .expect("HeadCNI's ConfigMap")["data"]["headcni.conf"]
        .as_str()
        .unwrap();
    let rendered: Value = serde_json::from_str(conf).unwrap();
    let seed: Value = serde_json::from_slice(
        &std::fs::read(knit_tests::repo().join("examples/headcni/10-headcni-headcni-ipam.conf"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rendered, seed, "the chart renders the seed's configuration");
}

/// Plugin ConfigMaps are mounted together, read-only, where `--plugins-dir`
/// points (a ConfigMap volume's `..data` swap is what `host/tests/hot_swap.rs`
/// reproduces on disk).
#[test]
fn plugin_config_maps_are_mounted_as_the_plugins_directory() {
    let deployment = |values: &[String]| -> Value {
        documents(&helm_template(values))
            .into_iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap()
    };
    let with = deployment(&["plugins.configMaps={ipam-mine,clb-mine}".into()]);
    let pod = &with["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--plugins-dir="))
        .expect("--plugins-dir");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("a volume mounted at the plugins directory");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let names: Vec<&str> = volume["projected"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["configMap"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ipam-mine", "clb-mine"]);
    // Without plugin ConfigMaps: no flag, no volume.
    let without = deployment(&[]);
    assert!(!without.to_string().contains("--plugins-dir"));
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
    let cloudflare = FakeCloudflare::start().await;
    cloudflare.add_account(CF_ACCOUNT);
    cloudflare.add_token(CF_TOKEN, CF_ACCOUNT);
    let zone = cloudflare.add_zone(CF_ACCOUNT, "deploy.example");

    // The chart, with the seed's TKE values, applied as cluster admin.
    let manifest = helm_template(&[
        "region=ap-chengdu".into(),
        "secretID=AKIDdeploy".into(),
        "secretKey=deploy-secret-key".into(),
        format!("tke.endpoint={}", fake.endpoint()),
        "tke.resyncSeconds=5".into(),
        format!("cloudflare.accountId={CF_ACCOUNT}"),
        format!("cloudflare.apiToken={CF_TOKEN}"),
        format!("cloudflare.endpoint={}", cloudflare.endpoint()),
        "cloudflare.resyncSeconds=5".into(),
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
    assert_eq!(
        run.domains,
        [Domain::Ipam, Domain::TkeClb, Domain::Cloudflare]
    );
    assert!(run.leader_elect);
    let settings = run.tke.settings(NAMESPACE);
    assert_eq!(settings.region.as_deref(), Some("ap-chengdu"));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // knit, as the chart's ServiceAccount.
    let client = knit_tests::knit_client().await;
    let registry = knit::registry_setup::builtin_registry(None, Arc::default()).unwrap();
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
    // The cluster's identity, read as knit reads it without --cluster-id.
    let cluster_id = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .expect("the chart lets knit read kube-system")
        .uid()
        .unwrap();
    tokio::spawn(knit::domains::cloudflare::run(
        client.clone(),
        registry.clone(),
        run.cloudflare
            .settings(NAMESPACE, cluster_id, Default::default()),
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
               "spec": {"cidrs": ["10.77.0.0/24"], "reuseCooldownSeconds": 1}}),
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
    // The pod gone, its address rests for the cooldown, then is released.
    let allocations = Api::<knit::domains::ipam::types::IPAllocation>::all(admin.clone());
    Api::<Pod>::namespaced(admin.clone(), &namespace)
        .delete(
            "ipam-pod",
            &kube::api::DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    knit_tests::eventually("the address released", WAIT, || async {
        let left = allocations.list(&ListParams::default()).await.ok()?.items;
        (!left.iter().any(|a| a.spec.pool == "deploy-pool")).then_some(())
    })
    .await;

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
    // The service deleted: its listeners and their CLB listeners go.
    Api::<DedicatedCLBService>::namespaced(admin.clone(), &namespace)
        .delete("game", &Default::default())
        .await
        .unwrap();
    knit_tests::eventually("the CLB listeners deleted", WAIT, || {
        std::future::ready(fake.listeners(&lb).is_empty().then_some(()))
    })
    .await;

    cloudflare_scenario(&admin, &namespace, &cloudflare, &zone).await;

    // No excess: every rule the chart grants was used by a request the API
    // server allowed, as its audit log of knit's identity shows.
    let granted = granted_rules(&manifest);
    knit_tests::eventually("every granted rule used", Duration::from_secs(10), || {
        let used = audited_requests();
        let unused: Vec<_> = granted
            .iter()
            .filter(|rule| !used.contains(*rule) && !checked_without_a_request(rule, &used))
            .collect();
        if !unused.is_empty() {
            eprintln!("granted but not used yet: {unused:?}");
        }
        std::future::ready(unused.is_empty().then_some(()))
    })
    .await;

    // Every kind's passes were counted.
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &prometheus).unwrap();
    for kind in [
        "IPPool",
        "DedicatedCLBService",
        "DedicatedCLBListener",
        "Tunnel",
        "WARPConnector",
        "NetworkRoute",
        "DNSRecord",
    ] {
        let line = format!(r#"knit_reconciles_total{{kind="{kind}",result="success"}}"#);
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }

    // And what it may not do: list or watch Secrets anywhere (it reads and
    // writes them by name only), or get a namespace by name but
    // kube-system.
    let forbidden = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Namespace>::all(client.clone())
            .get("default")
            .await
            .map(|_| ())
    ));
}

/// `(apiGroup, resource[/subresource], verb)`.
type Rule = (String, String, String);

/// Every rule of the chart's ClusterRole and Role, one verb each.
fn granted_rules(manifest: &str) -> std::collections::BTreeSet<Rule> {
    let mut granted = std::collections::BTreeSet::new();
    for role in documents(manifest)
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_array().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        granted.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    granted
}

/// The requests knit's identity made that the API server did not forbid.
fn audited_requests() -> std::collections::BTreeSet<Rule> {
    let log = std::fs::read_to_string(&knit_tests::env().knit_audit_log).unwrap_or_default();
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["responseStatus"]["code"] != 403)
        .filter_map(|event| {
            let object = &event["objectRef"];
            let mut resource = object["resource"].as_str()?.to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            Some((
                object["apiGroup"].as_str().unwrap_or_default().to_owned(),
                resource,
                event["verb"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Rules a test scenario cannot show in the audit log, each with why: the
/// API server checks some without a request of their own, and a few serve
/// paths only a race reaches.
fn checked_without_a_request(rule: &Rule, used: &std::collections::BTreeSet<Rule>) -> bool {
    let (group, resource, verb) = rule;
    match (group.as_str(), resource.as_str(), verb.as_str()) {
        // A server-side apply (a `patch`) that creates its object.
        (_, _, "create") => used.contains(&(group.clone(), resource.clone(), "patch".into())),
        // Checked by OwnerReferencesPermissionEnforcement when knit sets
        // `blockOwnerDeletion` on what it owns.
        (_, finalizers, "update") => finalizers.ends_with("/finalizers"),
        // kube's event recorder patches an Event that recurs (its series).
        ("events.k8s.io", "events", "patch") => true,
        // Before writing a pod's address, the IPAM controller reads the
        // record of an address another allocator wrote first.
        ("knit.dev", "ipallocations", "get") => true,
        _ => false,
    }
}

/// Cloudflare, with the chart's default credentials: a Tunnel serving an
/// Ingress and an HTTPRoute, a WARPConnector, a NetworkRoute and a
/// DNSRecord; then all deleted, their finalizers cleaning Cloudflare.
async fn cloudflare_scenario(admin: &Client, namespace: &str, fake: &FakeCloudflare, zone: &str) {
    let cloudflare = json!({"accountId": CF_ACCOUNT, "domain": "deploy.example"});
    create(
        &Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), namespace),
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    create(
        &Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
            admin.clone(),
            namespace,
        ),
        json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.1.0.10"], "conditions": {"ready": true}}],
               "ports": [{"name": "http", "port": 80}]}),
    )
    .await;
    let tunnels = Api::<Tunnel>::namespaced(admin.clone(), namespace);
    create(
        &tunnels,
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "Tunnel",
               "metadata": {"name": "edge"},
               "spec": {"newTunnel": {"name": format!("{namespace}-edge")}, "cloudflare": cloudflare}}),
    )
    .await;
    let ingresses =
        Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(admin.clone(), namespace);
    create(
        &ingresses,
        json!({"metadata": {"name": "web", "annotations": {"cf-operator.io/tunnel": "edge"}},
               "spec": {"ingressClassName": "cloudflare-tunnel",
                        "rules": [{"host": "web.deploy.example", "http": {"paths": [{
                            "path": "/", "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    )
    .await;
    // knit's HTTPRoute type reads only what it uses: kubectl writes this one.
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "api", "namespace": namespace,
                        "annotations": {"cf-operator.io/tunnel": "edge"}},
           "spec": {"parentRefs": [{"name": "edge-gateway"}], "hostnames": ["api.deploy.example"],
                    "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}});
    let applied = knit_tests::kubectl(&["apply", "-f", "-"], Some(&route.to_string()));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // knit's GatewayClass, and the Gateway the HTTPRoute names as parent.
    let class = format!("{namespace}-tunnels");
    let gateway = json!([
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": class}, "spec": {"controllerName": "knit.dev/cloudflare-tunnel"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "edge-gateway", "namespace": namespace,
                      "annotations": {"cf-operator.io/tunnel": "edge"}},
         "spec": {"gatewayClassName": class,
                  "listeners": [{"name": "web", "protocol": "HTTP", "port": 80}]}},
    ]);
    for object in gateway.as_array().unwrap() {
        let applied = knit_tests::kubectl(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    create(
        &Api::<NetworkRoute>::all(admin.clone()),
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "NetworkRoute",
               "metadata": {"name": format!("{namespace}-lan")},
               "spec": {"network": "10.50.0.0/16",
                        "tunnelRef": {"kind": "Tunnel", "name": "edge", "namespace": namespace},
                        "cloudflare": {"accountId": CF_ACCOUNT}}}),
    )
    .await;
    let records = Api::<DNSRecord>::namespaced(admin.clone(), namespace);
    create(
        &records,
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "DNSRecord",
               "metadata": {"name": "www"},
               "spec": {"name": "www", "type": "A", "content": "203.0.113.5", "cloudflare": cloudflare}}),
    )
    .await;
    // DNSRecords from a Service, an Ingress and a Node, one through the
    // chart's credentials by name.
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone());
    let node = format!("{namespace}-node");
    create(&nodes, json!({"metadata": {"name": node}})).await;
    nodes
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.7"}]}})),
        )
        .await
        .unwrap();
    let by_name = json!({"accountId": CF_ACCOUNT, "domain": "deploy.example",
                         "credentialsRef": {"name": "default"}});
    for (name, source, cloudflare) in [
        (
            "lb",
            json!({"service": {"name": "web", "addressType": "ClusterIP"}}),
            &by_name,
        ),
        ("ing", json!({"ingress": {"name": "web"}}), &cloudflare),
        ("node", json!({"node": {"name": node}}), &cloudflare),
    ] {
        create(
            &records,
            json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "DNSRecord",
                   "metadata": {"name": name},
                   "spec": {"name": name, "sourceRef": source, "cloudflare": cloudflare}}),
        )
        .await;
    }
    // A ClusterTunnel (its cloudflared in knit's namespace) routing a
    // network, and a WARPConnector in a VirtualNetwork.
    let cluster_tunnel = format!("{namespace}-shared");
    create(
        &Api::<knit::domains::cloudflare::types::ClusterTunnel>::all(admin.clone()),
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "ClusterTunnel",
               "metadata": {"name": cluster_tunnel},
               "spec": {"newTunnel": {"name": cluster_tunnel}, "cloudflare": cloudflare}}),
    )
    .await;
    create(
        &Api::<NetworkRoute>::all(admin.clone()),
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "NetworkRoute",
               "metadata": {"name": format!("{namespace}-dc")},
               "spec": {"network": "10.70.0.0/16", "tunnelRef": {"name": cluster_tunnel},
                        "cloudflare": {"accountId": CF_ACCOUNT}}}),
    )
    .await;
    let vnet = format!("{namespace}-vnet");
    create(
        &Api::<knit::domains::cloudflare::types::VirtualNetwork>::all(admin.clone()),
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "VirtualNetwork",
               "metadata": {"name": vnet}, "spec": {"cloudflare": {"accountId": CF_ACCOUNT}}}),
    )
    .await;
    let connectors = Api::<WARPConnector>::namespaced(admin.clone(), namespace);
    create(
        &connectors,
        json!({"apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "WARPConnector",
               "metadata": {"name": "site"},
               "spec": {"routes": [{"network": "10.60.0.0/16"}], "virtualNetworkRef": {"name": vnet},
                        "cloudflare": {"accountId": CF_ACCOUNT}}}),
    )
    .await;

    knit_tests::eventually("the Ingress served through the tunnel", WAIT, || async {
        let ingress = ingresses.get("web").await.ok()?;
        let hostname = ingress
            .status?
            .load_balancer?
            .ingress?
            .first()?
            .hostname
            .clone()?;
        hostname.ends_with(".cfargotunnel.com").then_some(())
    })
    .await;
    // What kubectl prints of the Gateway API objects, as knit wrote them.
    let statuses = [
        (
            "the HTTPRoute's parent status",
            vec!["httproute", "api", "-n", namespace],
            "{.status.parents[*].controllerName}",
            "knit.dev/cloudflare-tunnel",
        ),
        (
            "the Gateway's status, one route attached",
            vec!["gateway", "edge-gateway", "-n", namespace],
            "{.status.listeners[0].attachedRoutes}",
            "1",
        ),
        (
            "knit's GatewayClass accepted",
            vec!["gatewayclass", class.as_str()],
            "{.status.conditions[?(@.type==\"Accepted\")].status}",
            "True",
        ),
    ];
    for (what, object, path, wanted) in statuses {
        let jsonpath = format!("jsonpath={path}");
        let mut args = vec!["get"];
        args.extend(object);
        args.extend(["-o", jsonpath.as_str()]);
        knit_tests::eventually(what, WAIT, || {
            let got = knit_tests::kubectl(&args, None);
            std::future::ready((got.stdout == wanted.as_bytes()).then_some(()))
        })
        .await;
    }
    knit_tests::eventually("the records, routes and connector", WAIT, || {
        let names: std::collections::BTreeSet<String> =
            fake.dns_records(zone).into_iter().map(|r| r.name).collect();
        let networks: std::collections::BTreeSet<String> =
            fake.routes().into_iter().map(|r| r.network).collect();
        std::future::ready(
            (names
                == [
                    "api.deploy.example",
                    "ing.deploy.example",
                    "lb.deploy.example",
                    "node.deploy.example",
                    "web.deploy.example",
                    "www.deploy.example",
                ]
                .map(String::from)
                .into()
                && networks
                    == ["10.50.0.0/16", "10.60.0.0/16", "10.70.0.0/16"]
                        .map(String::from)
                        .into()
                && fake.warp_connectors().len() == 1)
                .then_some(()),
        )
    })
    .await;
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), namespace);
    for name in ["cloudflared-edge", "warp-site"] {
        deployments.get(name).await.unwrap();
    }

    for (kind, name) in [
        ("Tunnel", "edge"),
        ("DNSRecord", "www"),
        ("DNSRecord", "lb"),
        ("DNSRecord", "ing"),
        ("DNSRecord", "node"),
        ("WARPConnector", "site"),
    ] {
        let output = knit_tests::kubectl(
            &["delete", "--wait=false", "-n", namespace, kind, name],
            None,
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (kind, name) in [
        ("NetworkRoute", format!("{namespace}-lan")),
        ("NetworkRoute", format!("{namespace}-dc")),
        ("ClusterTunnel", cluster_tunnel),
        ("GatewayClass", class),
        ("VirtualNetwork", vnet),
        ("Node", node),
    ] {
        let output = knit_tests::kubectl(&["delete", "--wait=false", kind, &name], None);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    knit_tests::eventually("Cloudflare cleaned", WAIT, || {
        std::future::ready(
            (fake.dns_records(zone).is_empty()
                && fake.routes().is_empty()
                && fake.tunnels().iter().all(|t| t.deleted)
                && fake.warp_connectors().iter().all(|t| t.deleted)
                && fake.virtual_networks().iter().all(|n| n.is_default_network))
            .then_some(()),
        )
    })
    .await;
    knit_tests::eventually("cloudflared gone", WAIT, || async {
        let left = deployments.list(&ListParams::default()).await.ok()?.items;
        left.is_empty().then_some(())
    })
    .await;
}
