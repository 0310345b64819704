//! `knit-ipam` in cluster mode, and the `claim` it is built on, against the
//! real API server: concurrent allocators never share an address, ADD is
//! idempotent, DEL, CHECK and GC, and pools that cannot serve.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use knit::domains::ipam::claim::{self, ClaimError};
use knit::domains::ipam::types::{AllocationOwner, IPAllocation, IPPool};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The binary `cargo build -p knit` makes, beside this test's directory.
fn knit_ipam() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("knit-ipam");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p knit` (tests/run does)",
        path.display()
    );
    path
}

/// What one `knit-ipam` call printed and how it exited.
#[derive(Debug)]
struct Reply {
    ok: bool,
    stdout: Option<Value>,
    stderr: String,
}

impl Reply {
    fn address(&self) -> String {
        assert!(self.ok, "expected success: {self:?}");
        self.stdout.as_ref().unwrap()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn error(&self) -> (u64, String) {
        assert!(!self.ok, "expected failure: {self:?}");
        let error = self.stdout.as_ref().expect("an error on stdout");
        (
            error["code"].as_u64().unwrap(),
            error["msg"].as_str().unwrap().to_string(),
        )
    }
}

/// Runs `knit-ipam` off the async runtime, so many can run at once.
async fn call(command: &str, container: &str, config: &Value, cni_args: &str) -> Reply {
    let (command, container, stdin, cni_args) = (
        command.to_string(),
        container.to_string(),
        serde_json::to_vec(config).unwrap(),
        cni_args.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(knit_ipam())
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &container)
            .env("CNI_NETNS", format!("/var/run/netns/{container}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", &cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting knit-ipam");
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        Reply {
            ok: output.status.success(),
            stdout: (!stdout.trim().is_empty()).then(|| serde_json::from_str(&stdout).unwrap()),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// The network config of cluster mode, with the admin kubeconfig and a
/// compile cache shared by the tests (the first call compiles).
fn config(pool: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "pods",
        "type": "bridge",
        "ipam": {
            "type": "knit-ipam",
            "mode": "cluster",
            "pool": pool,
            "kubeconfig": knit_tests::env().admin_kubeconfig,
            "cacheDir": PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("knit-ipam-cache"),
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
}

async fn create_pool(client: &Client, name: &str, spec: Value) -> IPPool {
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "knit.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<IPPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap()
}

fn container(id: &str) -> AllocationOwner {
    AllocationOwner {
        container_id: Some(id.into()),
        interface: Some("eth0".into()),
        ..AllocationOwner::default()
    }
}

/// Pools are cluster-scoped: named after the test's namespace so runs and
/// tests never share one.
async fn unique_name(client: &Client, prefix: &str) -> String {
    knit_tests::fresh_namespace(client, prefix).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_never_share_an_address() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = knit_tests::admin_client().await;
    let pool_name = unique_name(&client, "cni-race").await;
    create_pool(
        &client,
        &pool_name,
        json!({ "cidrs": ["10.90.0.0/24"], "gateway": "10.90.0.1" }),
    )
    .await;
    let config = config(&pool_name);
    // STATUS loads the strategy: the cache is warm before the race starts.
    let status = call("STATUS", "", &config, "").await;
    assert!(status.ok, "{status:?}");

    let registry = knit::registry_setup::builtin_registry(None, Arc::default()).unwrap();
    let processes: Vec<_> = (0..8)
        .map(|i| {
            let config = config.clone();
            tokio::spawn(async move { call("ADD", &format!("process-{i}"), &config, "").await })
        })
        .collect();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (client, registry, pool_name) =
                (client.clone(), registry.clone(), pool_name.clone());
            tokio::spawn(async move {
                claim::claim(
                    &client,
                    &*registry,
                    &pool_name,
                    container(&format!("task-{i}")),
                )
                .await
                .map(|allocation| allocation.spec.address)
            })
        })
        .collect();

    let mut addresses = BTreeSet::new();
    for process in processes {
        let reply = process.await.unwrap();
        let address = reply.address();
        let (address, prefix) = address.split_once('/').unwrap();
        assert_eq!(prefix, "24");
        assert!(
            addresses.insert(address.to_string()),
            "{address} handed out twice"
        );
    }
    for task in tasks {
        let address = task.await.unwrap().unwrap();
        assert!(
            addresses.insert(address.clone()),
            "{address} handed out twice"
        );
    }
    assert_eq!(addresses.len(), 32);
    assert!(!addresses.contains("10.90.0.0") && !addresses.contains("10.90.0.1"));
    let held: BTreeSet<String> = claim::allocations(&client, &pool_name)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.spec.address)
        .collect();
    assert_eq!(held, addresses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_is_idempotent_and_del_check_gc_work() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = knit_tests::admin_client().await;
    let pool_name = unique_name(&client, "cni-add").await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool = create_pool(
        &client,
        &pool_name,
        json!({ "cidrs": ["10.91.0.0/24"], "gateway": "10.91.0.1" }),
    )
    .await;
    // A status as the controller writes it, saying where the last claim
    // stopped: sequential goes on from there.
    pools
        .patch_status(
            &pool_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": {
                "capacity": 253, "allocated": 0, "free": 253, "utilization": "0.0",
                "lastAllocated": "10.91.0.20",
            }})),
        )
        .await
        .unwrap();
    let config = config(&pool_name);
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=web-0;K8S_POD_UID=uid-0";

    let first = call("ADD", "c1", &config, args).await;
    assert_eq!(
        first.stdout.as_ref().unwrap(),
        &json!({
            "cniVersion": "1.1.0",
            "ips": [{ "address": "10.91.0.21/24", "gateway": "10.91.0.1" }],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dns": {},
        })
    );
    let again = call("ADD", "c1", &config, args).await;
    assert_eq!(again.stdout, first.stdout, "{again:?}");
    let held = claim::allocations(&client, &pool_name).await.unwrap();
    assert_eq!(held.len(), 1);
    // The allocation names the strategy that chose the address.
    let decided_by = &held[0].spec.decided_by;
    assert!(
        decided_by
            .plugin
            .as_deref()
            .is_some_and(|p| p.contains('@'))
            && decided_by
                .plugin_digest
                .as_deref()
                .is_some_and(|d| d.starts_with("sha256:")),
        "{decided_by:?}"
    );
    let owner = &held[0].spec.owner;
    assert_eq!(
        (owner.container_id.as_deref(), owner.interface.as_deref()),
        (Some("c1"), Some("eth0"))
    );
    assert_eq!(
        (
            owner.pod_namespace.as_deref(),
            owner.pod_name.as_deref(),
            owner.pod_uid.as_deref()
        ),
        (Some("web"), Some("web-0"), Some("uid-0"))
    );
    let status = pools.get_status(&pool_name).await.unwrap().status.unwrap();
    assert_eq!(status.last_allocated.as_deref(), Some("10.91.0.21"));

    assert!(call("CHECK", "c1", &config, "").await.ok);
    let (code, msg) = call("CHECK", "c2", &config, "").await.error();
    assert_eq!(code, 103);
    assert!(msg.contains("c2") && msg.contains(&pool_name), "{msg}");

    // A resting allocation (released, cooling down) is held by nobody: not
    // handed out, not returned to its former owner, left alone by DEL and GC.
    let mut resting = IPAllocation::of(
        &pool,
        &"10.91.0.22".parse().unwrap(),
        container("c0"),
        Default::default(),
    );
    resting.spec.released_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let allocations: Api<IPAllocation> = Api::all(client.clone());
    allocations
        .create(&PostParams::default(), &resting)
        .await
        .unwrap();
    assert_eq!(
        call("ADD", "c0", &config, "").await.address(),
        "10.91.0.23/24"
    );
    assert!(call("DEL", "c0", &config, "").await.ok);

    assert!(call("DEL", "c1", &config, "").await.ok);
    assert!(call("DEL", "c1", &config, "").await.ok);
    call("CHECK", "c1", &config, "").await.error();

    // GC: c3 is still attached, c4 is gone; the controller's pod
    // allocations (no container) are not the CNI plugin's to collect.
    assert_eq!(
        call("ADD", "c3", &config, "").await.address(),
        "10.91.0.24/24"
    );
    assert_eq!(
        call("ADD", "c4", &config, "").await.address(),
        "10.91.0.25/24"
    );
    let pod_owned = IPAllocation::of(
        &pool,
        &"10.91.0.100".parse().unwrap(),
        AllocationOwner {
            pod_namespace: Some("web".into()),
            pod_name: Some("web-9".into()),
            pod_uid: Some("uid-9".into()),
            ..AllocationOwner::default()
        },
        Default::default(),
    );
    allocations
        .create(&PostParams::default(), &pod_owned)
        .await
        .unwrap();
    let mut gc_config = config.clone();
    gc_config["cni.dev/valid-attachments"] = json!([{ "containerID": "c3", "ifname": "eth0" }]);
    let gc = call("GC", "", &gc_config, "").await;
    assert!(gc.ok, "{gc:?}");
    let left: BTreeSet<String> = claim::allocations(&client, &pool_name)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.spec.address)
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([
            "10.91.0.22".into(),
            "10.91.0.24".into(),
            "10.91.0.100".into()
        ])
    );

    // With a reuse cooldown, DEL lets the address rest instead of freeing it.
    pools
        .patch(
            &pool_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "reuseCooldownSeconds": 600 } })),
        )
        .await
        .unwrap();
    assert_eq!(
        call("ADD", "c5", &config, "").await.address(),
        "10.91.0.26/24"
    );
    assert!(call("DEL", "c5", &config, "").await.ok);
    let rested = allocations
        .get(&format!("{pool_name}-10-91-0-26"))
        .await
        .unwrap();
    assert!(rested.is_resting());
    call("CHECK", "c5", &config, "").await.error();
    assert_eq!(
        call("ADD", "c6", &config, "").await.address(),
        "10.91.0.27/24"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_that_cannot_serve_are_clear_errors() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = knit_tests::admin_client().await;
    let registry = knit::registry_setup::builtin_registry(None, Arc::default()).unwrap();

    // Missing.
    let missing = unique_name(&client, "cni-missing").await;
    let (code, msg) = call("ADD", "c1", &config(&missing), "").await.error();
    assert_eq!(
        (code, msg),
        (102, format!("IPPool {missing} does not exist"))
    );
    let error = claim::claim(&client, &*registry, &missing, container("c1"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClaimError::PoolNotFound(_)), "{error}");
    // DEL has nothing to release: success.
    assert!(call("DEL", "c1", &config(&missing), "").await.ok);
    let (code, _) = call("STATUS", "", &config(&missing), "").await.error();
    assert_eq!(code, 50);

    // Being deleted: a finalizer keeps it visible with a deletionTimestamp.
    let deleting = unique_name(&client, "cni-deleting").await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create_pool(&client, &deleting, json!({ "cidrs": ["10.92.0.0/24"] })).await;
    let hold = json!({ "metadata": { "finalizers": ["knit.dev/test-hold"] } });
    pools
        .patch(&deleting, &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    pools
        .delete(&deleting, &DeleteParams::default())
        .await
        .unwrap();
    let (code, msg) = call("ADD", "c1", &config(&deleting), "").await.error();
    assert_eq!(
        (code, msg),
        (
            102,
            format!("IPPool {deleting} is being deleted and hands out no more addresses")
        )
    );
    let error = claim::claim(&client, &*registry, &deleting, container("c1"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClaimError::PoolDeleting(_)), "{error}");
    let release = json!({ "metadata": { "finalizers": null } });
    pools
        .patch(&deleting, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();

    // Exhausted: a /30 less network, broadcast and gateway is one address.
    let tiny = unique_name(&client, "cni-tiny").await;
    create_pool(
        &client,
        &tiny,
        json!({ "cidrs": ["10.93.0.0/30"], "gateway": "10.93.0.1" }),
    )
    .await;
    assert_eq!(
        call("ADD", "c1", &config(&tiny), "").await.address(),
        "10.93.0.2/30"
    );
    let (code, msg) = call("ADD", "c2", &config(&tiny), "").await.error();
    assert_eq!(
        (code, msg),
        (100, format!("IPPool {tiny} has no free address"))
    );
    let (code, _) = call("STATUS", "", &config(&tiny), "").await.error();
    assert_eq!(code, 50);

    // A kubeconfig that is not one: named, never quoted.
    let bad = tempfile_with(b"token: s3cr3t-value\n  - [");
    let mut with_bad = config(&tiny);
    with_bad["ipam"]["kubeconfig"] = json!(bad);
    let reply = call("ADD", "c3", &with_bad, "").await;
    let (code, msg) = reply.error();
    assert_eq!(code, 7);
    assert!(msg.contains("ipam.kubeconfig"), "{msg}");
    assert!(
        !msg.contains("s3cr3t") && !reply.stderr.contains("s3cr3t"),
        "{reply:?}"
    );
    let _ = std::fs::remove_file(bad);
}

fn tempfile_with(bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bad-kubeconfig-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}
