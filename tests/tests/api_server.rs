//! knit's CRDs and examples against the real API server.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

#[tokio::test]
async fn every_crd_is_accepted_and_established() {
    let client = knit_tests::admin_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for (file, crd) in knit::crds::all() {
        let name = crd.metadata.name.unwrap();
        let served = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{file}: {name} not installed: {e}"));
        let established = served
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
    }
}

#[tokio::test]
async fn examples_pass_server_side_dry_run() {
    let client = knit_tests::admin_client().await;
    // The namespaces the examples name: `demo` for the pods, those of the
    // Cloudflare seed (its operator namespace and its apps'), and the
    // Gateway API example's.
    for name in [
        "demo",
        "cloudflare-operator-system",
        "app-namespace-1",
        "app-namespace-2",
        "api-namespace",
        "production",
        "edge-gateways",
        "shop",
    ] {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let _ = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await;
    }
    // Every manifest under examples/; the install files beside them (a Helm
    // values file, a CAM policy) are not Kubernetes objects.
    let mut args = vec!["apply".to_owned(), "--dry-run=server".to_owned()];
    for file in manifests(&knit_tests::repo().join("examples")) {
        args.extend(["-f".to_owned(), file]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = knit_tests::kubectl(&args, None);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("httproute.gateway.networking.k8s.io/api-route created")
            && printed
                .contains("warpconnector.networking.cloudflare-operator.io/ha-connector created"),
        "{printed}"
    );
    // The seed's misspelled version is served, with a warning.
    assert!(
        printed.contains("v1apha1 is a misspelling"),
        "no deprecation warning in: {printed}"
    );
}

/// The files below `dir` that hold Kubernetes objects, sorted, as paths
/// relative to the repository.
fn manifests(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(manifests(&path));
        } else if std::fs::read_to_string(&path).is_ok_and(|text| text.contains("apiVersion:")) {
            let relative = path.strip_prefix(knit_tests::repo()).unwrap();
            found.push(relative.to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

/// Bad input is refused by the API server itself, with a message naming the
/// field.
#[tokio::test]
async fn bad_manifests_are_rejected_with_a_clear_message() {
    let cases = [
        (
            "apiVersion: knit.dev/v1alpha1\nkind: Plugin\nmetadata: {name: too-much-memory}\nspec:\n  source: {configMap: {name: p, key: p.wasm}}\n  limits: {memoryMebibytes: 100000}\n",
            "spec.limits.memoryMebibytes",
        ),
        (
            "apiVersion: knit.dev/v1alpha1\nkind: Plugin\nmetadata: {name: no-source}\nspec: {}\n",
            "spec.source: Required value",
        ),
        (
            "apiVersion: knit.dev/v1alpha1\nkind: Plugin\nmetadata: {name: bad-world}\nspec:\n  world: quantum-router\n  source: {configMap: {name: p, key: p.wasm}}\n",
            "spec.world: Unsupported value",
        ),
    ];
    let pool = |spec: &str| {
        format!(
            "apiVersion: knit.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: bad}}\nspec: {spec}\n"
        )
    };
    let pools = [
        (
            pool("{cidrs: [10.44.0.0/33]}"),
            "every entry must be a CIDR",
        ),
        (pool("{cidrs: [not-a-cidr]}"), "every entry must be a CIDR"),
        (pool("{cidrs: [10.44.0.1/24]}"), "without host bits"),
        (
            pool("{cidrs: [10.44.0.0/24, 'fd00::/120']}"),
            "one address family",
        ),
        (
            pool("{cidrs: [10.44.0.0/24], gateway: 10.45.0.1}"),
            "gateway must be inside one of the pool's CIDRs",
        ),
        (
            pool("{cidrs: [10.44.0.0/24], gateway: banana}"),
            "gateway must be an IP address",
        ),
        (
            pool("{cidrs: [10.44.0.0/24], exclude: [10.44.0.5-]}"),
            "each exclusion must be an address, a CIDR, or a range",
        ),
        (pool("{cidrs: []}"), "spec.cidrs"),
    ];
    let clb_service = |spec: &str| {
        format!(
            "apiVersion: networking.cloud.tencent.com/v1alpha1\nkind: DedicatedCLBService\nmetadata: {{name: bad, namespace: default}}\nspec: {spec}\n"
        )
    };
    let clb_services = [
        (
            clb_service("{minPort: 600, maxPort: 501, ports: [{protocol: TCP, targetPort: 80}]}"),
            "minPort must not be greater than maxPort",
        ),
        (
            clb_service("{minPort: 1, maxPort: 70000, ports: [{protocol: TCP, targetPort: 80}]}"),
            "spec.maxPort",
        ),
        (
            clb_service("{minPort: 1, maxPort: 9, ports: [{protocol: SCTP, targetPort: 80}]}"),
            "spec.ports[0].protocol: Unsupported value",
        ),
        (
            clb_service(
                "{minPort: 1, maxPort: 9, ports: [{protocol: TCP, targetPort: 80}, {protocol: TCP, targetPort: 80}]}",
            ),
            "each (protocol, targetPort) pair may appear only once",
        ),
        (
            clb_service(
                "{minPort: 1, maxPort: 9, ports: [{protocol: TCP, targetPort: 80}], existedLbIds: [my-lb]}",
            ),
            "spec.existedLbIds[0]",
        ),
    ];
    // cloudflared refuses a whole configuration whose fallback has a path.
    let tunnel = |fallback: &str| {
        format!(
            "apiVersion: networking.cloudflare-operator.io/v1alpha2\nkind: ClusterTunnel\nmetadata: {{name: bad}}\nspec: {{newTunnel: {{name: t}}, cloudflare: {{accountId: a, domain: example.com, secret: s}}, fallbackTarget: '{fallback}'}}\n"
        )
    };
    let tunnels = [
        (tunnel("http://web.default.svc:80/"), "spec.fallbackTarget"),
        (
            tunnel("https://origin.example.net/oops"),
            "spec.fallbackTarget",
        ),
    ];
    let cases = cases
        .iter()
        .map(|(manifest, expected)| (manifest.to_string(), *expected))
        .chain(pools)
        .chain(clb_services)
        .chain(tunnels);
    for (manifest, expected) in cases {
        let manifest = manifest.as_str();
        let output = knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(manifest));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted:\n{manifest}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
    // An origin without a path is still a fallback.
    let fine = tunnel("http://web.default.svc:80");
    let output = knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&fine));
    assert!(
        output.status.success(),
        "refused:\n{fine}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A listener's identity (CLB, port, protocol, region) cannot change.
#[tokio::test]
async fn listener_identity_is_immutable() {
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, "clb-immutable").await;
    let listener = |port: u16, region: &str| {
        format!(
            "apiVersion: networking.cloud.tencent.com/v1alpha1\nkind: DedicatedCLBListener\nmetadata: {{name: l, namespace: {namespace}}}\nspec: {{lbId: lb-abc, lbPort: {port}, protocol: TCP{region}, backendPod: {{podName: p, port: 80}}}}\n"
        )
    };
    let created = knit_tests::kubectl(&["apply", "-f", "-"], Some(&listener(501, "")));
    assert!(created.status.success(), "{created:?}");
    for (changed, expected) in [
        (listener(502, ""), "lbPort is immutable"),
        (
            listener(501, ", lbRegion: ap-chengdu"),
            "lbRegion is immutable",
        ),
    ] {
        let output = knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&changed));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted:\n{changed}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
    // The pod it forwards to may change.
    let rebound = listener(501, "").replace("podName: p", "podName: q");
    let output = knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rebound));
    assert!(output.status.success(), "{output:?}");
}
