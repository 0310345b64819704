//! The `knit` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn knit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_knit"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running knit")
}

fn repo() -> PathBuf {
    knit_tests::repo()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "knit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `crds/` must be exactly what `knit crds` prints, file by file.
#[test]
fn crds_directory_is_up_to_date() {
    let printed = stdout(&knit(&["crds"]));
    let mut expected = String::new();
    for (file, crd) in knit::crds::all() {
        let yaml = knit::crds::to_yaml(&crd);
        let on_disk = std::fs::read_to_string(repo().join("crds").join(file)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{file} is stale: regenerate with `cargo run -p knit -- crds --output-dir crds`\n{}",
            similar::TextDiff::from_lines(&on_disk, &yaml)
                .unified_diff()
                .header("on disk", "generated")
        );
        expected.push_str(&yaml);
    }
    assert_eq!(printed, expected);
}

#[test]
fn simulate_default_example_allocates_sequentially() {
    let output = stdout(&knit(&["simulate"]));
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&output)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let addresses: Vec<&str> = documents
        .iter()
        .filter(|d| d["kind"] == "IPAllocation")
        .map(|d| d["spec"]["address"].as_str().unwrap())
        .collect();
    // Gateway .1 and the excluded .2-.9 are skipped.
    assert_eq!(addresses, ["10.44.0.10", "10.44.0.11", "10.44.0.12"]);
    let pool = documents.iter().find(|d| d["kind"] == "IPPool").unwrap();
    // 256 less network, broadcast, gateway and the eight excluded.
    assert_eq!(pool["status"]["capacity"], 245);
    assert_eq!(pool["status"]["allocated"], 3);
    assert_eq!(pool["status"]["free"], 242);
    assert_eq!(
        pool["status"]["plugin"],
        format!("ipam-sequential@{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(stdout(&knit(&["simulate", "-f", "examples/ipam"])), output);
}

#[test]
fn simulate_plans_the_seed_clb_service_over_three_pods() {
    let output = stdout(&knit(&["simulate", "-f", "examples/tke-clb"]));
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&output)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let listeners: Vec<(String, u64, String)> = documents
        .iter()
        .filter(|d| d["kind"] == "DedicatedCLBListener")
        .map(|d| {
            (
                d["spec"]["protocol"].as_str().unwrap().to_owned(),
                d["spec"]["lbPort"].as_u64().unwrap(),
                d["spec"]["backendPod"]["podName"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    // In order: the first CLB, the lowest ports, TCP and UDP apart.
    let expected: Vec<(String, u64, String)> = (0..3)
        .flat_map(|i| ["TCP", "UDP"].map(|p| (p.to_owned(), 501 + i, format!("gameserver-{i}"))))
        .collect();
    assert_eq!(listeners, expected);
    let annotations: Vec<&serde_json::Value> = documents
        .iter()
        .filter(|d| d["kind"] == "Pod")
        .map(|d| &d["metadata"]["annotations"])
        .collect();
    assert_eq!(annotations.len(), 6);
    assert_eq!(
        annotations[0]["networking.cloud.tencent.com/external-address-9000"],
        "<VIP of lb-xxx>:501"
    );
    let service = documents
        .iter()
        .find(|d| d["kind"] == "DedicatedCLBService")
        .unwrap();
    assert_eq!(service["status"]["allocated"], 6);
    // The listener quota (50 per CLB) binds before the range (100 ports
    // per protocol): lb-xxx holds the 6 new ones and the hand-made 8088.
    assert_eq!(service["status"]["free"], 43 + 50 + 50);
}

/// The status `simulate` prints is the controller's, conditions included:
/// a service with more pods than ports says `NoPortAvailable`.
#[test]
fn simulate_prints_the_clb_status_the_controller_would_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = String::from(
        "apiVersion: networking.cloud.tencent.com/v1alpha1
kind: DedicatedCLBService
metadata: {name: small, namespace: demo}
spec:
  minPort: 501
  maxPort: 502
  selector: {app: gs}
  ports: [{protocol: TCP, targetPort: 9000}]
  existedLbIds: [lb-a]
",
    );
    for i in 0..4 {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: gs-{i}, namespace: demo, labels: {{app: gs}}}}\n"
        ));
    }
    let path = dir.path().join("small.yaml");
    std::fs::write(&path, manifest).unwrap();
    let output = stdout(&knit(&["simulate", "-f", path.to_str().unwrap()]));
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&output)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let service = documents
        .iter()
        .find(|d| d["kind"] == "DedicatedCLBService")
        .unwrap();
    let status = &service["status"];
    assert_eq!(
        (&status["allocated"], &status["free"]),
        (&2.into(), &0.into())
    );
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (&"Ready".into(), &"False".into(), &"NoPortAvailable".into()),
        "{output}"
    );
    // With room for every pod, the same service is Ready once bound.
    let roomy = std::fs::read_to_string(&path)
        .unwrap()
        .replace("maxPort: 502", "maxPort: 510");
    std::fs::write(&path, roomy).unwrap();
    let output = stdout(&knit(&["simulate", "-f", path.to_str().unwrap()]));
    assert!(output.contains("reason: AllBound"), "{output}");
}

/// The same for a tunnel: the status its controller would write, with the
/// counts and the `Ready` condition; a mapper that is not there says so.
#[test]
fn simulate_prints_the_tunnel_status_the_controller_would_write() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "apiVersion: networking.cloudflare-operator.io/v1alpha2
kind: Tunnel
metadata: {name: edge, namespace: web}
spec:
  newTunnel: {name: web-edge}
  cloudflare: {accountId: acc, domain: example.com, secret: cf}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: web, annotations: {cf-operator.io/tunnel: edge}}
spec:
  ingressClassName: cloudflare-tunnel
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
";
    let path = dir.path().join("tunnel.yaml");
    std::fs::write(&path, manifest).unwrap();
    let tunnel_status = |output: &str| {
        let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(output)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        documents
            .into_iter()
            .find(|d| d["kind"] == "Tunnel")
            .unwrap_or_else(|| panic!("no Tunnel status in {output}"))["status"]
            .clone()
    };
    let output = stdout(&knit(&["simulate", "-f", path.to_str().unwrap()]));
    let status = tunnel_status(&output);
    assert_eq!(
        (&status["state"], &status["routes"], &status["sources"]),
        (&"active".into(), &1.into(), &1.into()),
        "{output}"
    );
    assert_eq!(
        status["plugin"],
        format!("tunnel-mapper@{}", env!("CARGO_PKG_VERSION"))
    );
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&"True".into(), &"Active".into()),
        "{output}"
    );
    // A mapper that is not there: no configuration, and the status says why.
    let missing = manifest.replace(
        "metadata: {name: edge, namespace: web}",
        "metadata: {name: edge, namespace: web, annotations: {knit.dev/tunnel-mapper: nowhere}}",
    );
    std::fs::write(&path, missing).unwrap();
    let output = stdout(&knit(&["simulate", "-f", path.to_str().unwrap()]));
    assert!(!output.contains("config:"), "{output}");
    let ready = &tunnel_status(&output)["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (
            &"Ready".into(),
            &"False".into(),
            &"PluginUnavailable".into()
        ),
        "{output}"
    );
}

#[test]
fn simulate_maps_the_seed_ingresses_and_http_route_to_tunnel_rules() {
    let output = stdout(&knit(&["simulate", "-f", "examples/cloudflare"]));
    let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&output)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let configs: Vec<&serde_json::Value> = documents
        .iter()
        .filter_map(|d| d["config"]["ingress"].as_array().map(|_| &d["config"]))
        .collect();
    // One configuration per ClusterTunnel of the seed (five), each ending
    // in the fallback.
    assert_eq!(configs.len(), 5);
    let mut hosts = Vec::new();
    for config in &configs {
        let rules = config["ingress"].as_array().unwrap();
        assert_eq!(rules.last().unwrap()["service"], "http_status:404");
        hosts.extend(rules.iter().filter_map(|r| r["hostname"].as_str()));
    }
    hosts.sort();
    // shop.example.com through knit's Gateway (gateway-api.yaml), beside
    // the seed's api.example.com on the same ClusterTunnel.
    assert_eq!(
        hosts,
        [
            "api.example.com",
            "app1.example.com",
            "app2.example.com",
            "shop.example.com"
        ]
    );
    assert!(output.contains("service: http://api-service.api-namespace.svc.cluster.local:8080"));
    let sources: Vec<&serde_json::Value> = documents
        .iter()
        .filter_map(|d| d.as_array())
        .flatten()
        .filter(|s| s.get("source").is_some())
        .collect();
    assert_eq!(sources.len(), 4);
    assert!(sources.iter().all(|s| s["accepted"] == true), "{sources:?}");
}

#[test]
fn simulate_reports_an_unknown_strategy_in_the_pool_status() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pool.yaml");
    std::fs::write(
        &manifest,
        knit::DEFAULT_EXAMPLE.replace("plugin: ipam-sequential", "plugin: ipam-nonexistent"),
    )
    .unwrap();
    let output = stdout(&knit(&["simulate", "-f", manifest.to_str().unwrap()]));
    assert!(!output.contains("kind: IPAllocation"));
    assert!(
        output.contains("PluginUnavailable")
            && output.contains("no plugin named \"ipam-nonexistent\""),
        "{output}"
    );
}

#[test]
fn plugin_check_prints_the_world_of_every_built_plugin() {
    let ipam = knit_tests::built_plugin_path("ipam_sequential");
    let clb = knit_tests::built_plugin_path("clb_allocator");
    let tunnel = knit_tests::built_plugin_path("tunnel_mapper");
    let output = stdout(&knit(&[
        "plugin",
        "check",
        ipam.to_str().unwrap(),
        clb.to_str().unwrap(),
        tunnel.to_str().unwrap(),
    ]));
    assert!(output.contains("world:        ipam-strategy"), "{output}");
    assert!(output.contains("name:         ipam-sequential"), "{output}");
    assert!(output.contains("world:        clb-allocator"), "{output}");
    assert!(output.contains("name:         clb-allocator"), "{output}");
    assert!(output.contains("world:        tunnel-mapper"), "{output}");
    assert!(output.contains("name:         tunnel-mapper"), "{output}");
    assert!(output.contains("wasi:cli/"), "imports are listed: {output}");
}

#[test]
fn plugin_test_runs_fixtures_and_shows_a_diff_on_mismatch() {
    let wasm = knit_tests::built_plugin_path("ipam_sequential");
    let output = stdout(&knit(&[
        "plugin",
        "test",
        "plugins/ipam-sequential/fixtures",
        "--plugin",
        wasm.to_str().unwrap(),
    ]));
    assert!(output.contains(" 0 failed"), "{output}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        "description: expects the wrong offsets\ninput: {size: 16, count: 2, excluded: [0]}\nexpect: {offsets: [1, 3]}\n",
    )
    .unwrap();
    let failed = knit(&[
        "plugin",
        "test",
        dir.path().to_str().unwrap(),
        "--plugin",
        wasm.to_str().unwrap(),
    ]);
    assert!(!failed.status.success());
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(
        text.contains("FAIL wrong.yaml") && text.contains("-- 3") && text.contains("+- 2"),
        "diff shows both sides"
    );
    assert!(text.contains("FAIL"), "{text}");
}

#[test]
fn plugin_test_runs_tunnel_fixtures_and_refuses_worlds_without_a_format() {
    let wasm = knit_tests::built_plugin_path("tunnel_mapper");
    let output = stdout(&knit(&[
        "plugin",
        "test",
        "plugins/tunnel-mapper/fixtures",
        "--plugin",
        wasm.to_str().unwrap(),
    ]));
    assert!(
        output.contains("ok   conflict.yaml") && output.contains(" 0 failed"),
        "{output}"
    );

    // Parts a case leaves out are not compared; a wrong verdict is a diff.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        r#"description: expects the younger Ingress to win
input:
  tunnel: {name: edge, domain: example.com, fallbackTarget: "http_status:404"}
  sources:
    - {kind: Ingress, namespace: a, name: old, created: 1, routes: [{host: app.example.com, service: old, port: 80}]}
    - {kind: Ingress, namespace: a, name: new, created: 2, routes: [{host: app.example.com, service: new, port: 80}]}
expect:
  sources:
    - {source: Ingress a/old, verdict: Accepted, hosts: [app.example.com]}
    - {source: Ingress a/new, verdict: Accepted, hosts: [app.example.com]}
"#,
    )
    .unwrap();
    let failed = knit(&[
        "plugin",
        "test",
        dir.path().to_str().unwrap(),
        "--plugin",
        wasm.to_str().unwrap(),
    ]);
    assert!(!failed.status.success());
    let text = String::from_utf8_lossy(&failed.stdout);
    assert!(
        text.contains("FAIL wrong.yaml")
            && text.contains("-  verdict: Accepted")
            && text.contains("+  verdict: Conflict")
            && text.contains("+  message: host app.example.com path / is served by Ingress a/old")
            && !text.contains("rules:"),
        "{text}"
    );

    let clb = knit_tests::built_plugin_path("clb_allocator");
    let refused = knit(&[
        "plugin",
        "test",
        "plugins/tunnel-mapper/fixtures",
        "--plugin",
        clb.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no case format for the clb-allocator world"),
        "{stderr}"
    );
}

#[test]
fn simulate_with_dense_pack_fills_the_hole_an_existing_allocation_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pool.yaml");
    let existing = r#"
---
apiVersion: knit.dev/v1alpha1
kind: IPAllocation
metadata: {name: edge-v4-10-44-0-11}
spec:
  pool: edge-v4
  address: 10.44.0.11
  owner: {podNamespace: demo, podName: old, podUid: 00000000-0000-4000-8000-0000000000aa}
"#;
    let example =
        knit::DEFAULT_EXAMPLE.replace("plugin: ipam-sequential", "plugin: ipam-dense-pack");
    std::fs::write(&manifest, format!("{example}{existing}")).unwrap();
    let output = stdout(&knit(&["simulate", "-f", manifest.to_str().unwrap()]));
    let addresses: Vec<&str> = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("address: "))
        .collect();
    assert_eq!(addresses, ["10.44.0.10", "10.44.0.12", "10.44.0.13"]);
    assert!(output.contains("plugin: ipam-dense-pack@"), "{output}");
}
