//! The IPAM controller on the real API server.
//!
//! Every controller started here manages every pool, so the tests take turns
//! (`SERIAL`) and each uses its own CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use knit::domains::ipam::metrics::IpamMetrics;
use knit::domains::ipam::types::{IPAllocation, IPPool, IPPoolStatus};
use knit::runtime::{Registry, dir_source};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this file's turn, then gives the test a client and a fresh
/// namespace; the turn lasts as long as the guard.
async fn take_turn(prefix: &str) -> (tokio::sync::MutexGuard<'static, ()>, Client, String) {
    let turn = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, prefix).await;
    (turn, client, namespace)
}

fn builtin_registry() -> Arc<Registry> {
    knit::registry_setup::builtin_registry(None, Arc::default()).unwrap()
}

/// A controller on its own client, as a separate replica would be.
async fn start_controller(registry: Arc<Registry>, metrics: Arc<IpamMetrics>) -> JoinHandle<()> {
    let client = knit_tests::admin_client().await;
    tokio::spawn(knit::domains::ipam::controller::run(
        client,
        registry,
        metrics,
        Arc::default(),
        std::future::pending(),
    ))
}

async fn create_pool(client: &Client, name: &str, spec: serde_json::Value) {
    let pool: IPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "knit.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<IPPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
}

async fn patch_pool(client: &Client, name: &str, spec: serde_json::Value) {
    Api::<IPPool>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

async fn create_pod(client: &Client, namespace: &str, name: &str, pool: &str) -> String {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "annotations": { "knit.dev/ippool": pool } },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app" }] },
    }))
    .unwrap();
    Api::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .uid()
        .unwrap()
}

async fn delete_pod(client: &Client, namespace: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

async fn address_of(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    pod.annotations().get("knit.dev/ip").cloned()
}

async fn wait_for_address(client: &Client, namespace: &str, name: &str) -> String {
    knit_tests::eventually(&format!("{name}'s address"), WAIT, || {
        address_of(client, namespace, name)
    })
    .await
}

async fn allocations_of(client: &Client, pool: &str) -> Vec<IPAllocation> {
    Api::<IPAllocation>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.pool={pool}")))
        .await
        .unwrap()
        .items
}

async fn pool_status(client: &Client, pool: &str) -> Option<IPPoolStatus> {
    Api::<IPPool>::all(client.clone())
        .get_opt(pool)
        .await
        .ok()??
        .status
}

/// Waits until the pool reports decisions by a plugin `name@...`.
async fn wait_for_plugin(client: &Client, pool: &str, prefix: &str) {
    knit_tests::eventually(&format!("{pool} served by {prefix}"), WAIT, || async {
        let plugin = pool_status(client, pool).await?.decided_by.plugin?;
        plugin.starts_with(prefix).then_some(())
    })
    .await
}

/// Waits until the pool's `Ready` condition has `reason`; returns its message.
async fn wait_for_ready_reason(client: &Client, pool: &str, reason: &str) -> String {
    knit_tests::eventually(&format!("{pool} Ready reason {reason}"), WAIT, || async {
        let status = pool_status(client, pool).await?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == reason).then(|| ready.message.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_and_release_them_by_uid() {
    let (_turn, client, namespace) = take_turn("ipam").await;
    let pool_name = format!("pool-{namespace}");
    create_pool(
        &client,
        &pool_name,
        serde_json::json!({ "cidrs": ["10.77.0.0/28"], "gateway": "10.77.0.1" }),
    )
    .await;
    let metrics = Arc::new(IpamMetrics::default());
    let controller = start_controller(builtin_registry(), metrics.clone()).await;

    let mut uids = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        uids.push(create_pod(&client, &namespace, name, &pool_name).await);
    }
    let mut addresses = BTreeSet::new();
    for name in ["web-0", "web-1", "web-2"] {
        addresses.insert(wait_for_address(&client, &namespace, name).await);
    }
    // Gateway .1 and network .0 are never handed out; all distinct.
    assert_eq!(
        addresses,
        BTreeSet::from(["10.77.0.2".into(), "10.77.0.3".into(), "10.77.0.4".into()])
    );
    let allocations = allocations_of(&client, &pool_name).await;
    assert_eq!(allocations.len(), 3);
    for allocation in &allocations {
        assert!(uids.contains(allocation.spec.owner.pod_uid.as_ref().unwrap()));
        assert_eq!(
            allocation.name_any(),
            format!("{pool_name}-{}", allocation.spec.address.replace('.', "-"))
        );
    }
    let status = knit_tests::eventually("pool status", WAIT, || async {
        let status = pool_status(&client, &pool_name).await?;
        (status.allocated == 3).then_some(status)
    })
    .await;
    // A /28 less network, broadcast and gateway.
    assert_eq!((status.capacity, status.free), (13, 10));
    // Each allocation names the strategy that chose it, as the pool does.
    assert!(
        status
            .decided_by
            .plugin
            .as_deref()
            .is_some_and(|p| p.starts_with("ipam-sequential@")),
        "{:?}",
        status.decided_by
    );
    for allocation in &allocations {
        assert_eq!(allocation.spec.decided_by, status.decided_by);
        assert!(
            allocation
                .spec
                .decided_by
                .plugin_digest
                .as_deref()
                .is_some_and(|d| d.starts_with("sha256:"))
        );
    }
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let pool = Api::<IPPool>::all(client.clone())
        .get(&pool_name)
        .await
        .unwrap();
    assert!(
        pool.finalizers()
            .contains(&"knit.dev/ippool-protection".into())
    );
    // Each pod was told, as an Event.
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    knit_tests::eventually("an AddressAllocated event for web-0", WAIT, || async {
        let events = events.list(&ListParams::default()).await.ok()?;
        events
            .items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("AddressAllocated")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web-0")
            })
            .map(|e| assert!(e.note.as_deref().unwrap().contains("10.77.0.")))
    })
    .await;

    // A lost allocation record is recreated for the address the pod has.
    let web0 = allocations
        .iter()
        .find(|a| a.spec.address == "10.77.0.2")
        .unwrap();
    Api::<IPAllocation>::all(client.clone())
        .delete(&web0.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    knit_tests::eventually("web-0's allocation recreated", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        allocations
            .iter()
            .find(|a| a.spec.address == "10.77.0.2" && a.uid() != web0.uid())
            .map(|a| assert_eq!(a.spec.owner.pod_uid, web0.spec.owner.pod_uid))
    })
    .await;

    // Delete web-1 and create a new pod of the same name: the old allocation
    // is freed because its UID is gone, the new pod gets its own.
    let old_uid = uids[1].clone();
    delete_pod(&client, &namespace, "web-1").await;
    let new_uid = create_pod(&client, &namespace, "web-1", &pool_name).await;
    let new_address = wait_for_address(&client, &namespace, "web-1").await;
    knit_tests::eventually("the old web-1's allocation freed", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        let old_held = allocations
            .iter()
            .any(|a| a.spec.owner.pod_uid.as_deref() == Some(old_uid.as_str()));
        let new_held = allocations.iter().any(|a| {
            a.spec.owner.pod_uid.as_deref() == Some(new_uid.as_str())
                && a.spec.address == new_address
        });
        (!old_held && new_held && allocations.len() == 3).then_some(())
    })
    .await;
    // Sequential goes on after the last address handed out.
    assert_eq!(new_address, "10.77.0.5");
    // The other pods kept their addresses throughout.
    assert_eq!(
        address_of(&client, &namespace, "web-0").await.unwrap(),
        "10.77.0.2"
    );
    assert_eq!(
        address_of(&client, &namespace, "web-2").await.unwrap(),
        "10.77.0.4"
    );
    // Three pods, one recreated record, one replacement pod.
    assert_eq!(metrics.allocations_of(&pool_name), 5);
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_controllers_never_hand_out_one_address_twice() {
    let (_turn, client, namespace) = take_turn("ipam-race").await;
    let pool_name = format!("pool-{namespace}");
    create_pool(
        &client,
        &pool_name,
        serde_json::json!({ "cidrs": ["10.78.0.0/26"], "strategy": { "plugin": "ipam-random" } }),
    )
    .await;
    // Three replicas without leader election: the API server's name
    // uniqueness and the conditional pod writes must keep them honest.
    let mut controllers = Vec::new();
    for _ in 0..3 {
        controllers.push(start_controller(builtin_registry(), Arc::default()).await);
    }
    let names: Vec<String> = (0..40).map(|i| format!("pod-{i}")).collect();
    let creations = names
        .iter()
        .map(|name| create_pod(&client, &namespace, name, &pool_name));
    let uids: BTreeMap<String, String> = names
        .iter()
        .cloned()
        .zip(futures::future::join_all(creations).await)
        .collect();

    let settled = knit_tests::eventually("every pod with exactly one address", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        let mut by_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for allocation in &allocations {
            by_pod
                .entry(allocation.spec.owner.pod_uid.clone().unwrap())
                .or_default()
                .push(allocation.spec.address.clone());
        }
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .ok()?;
        let written: BTreeMap<String, String> = pods
            .items
            .iter()
            .filter_map(|p| Some((p.uid()?, p.annotations().get("knit.dev/ip")?.clone())))
            .collect();
        let done = by_pod.len() == 40
            && by_pod.values().all(|held| held.len() == 1)
            && written.len() == 40
            && written.iter().all(|(uid, ip)| by_pod[uid] == [ip.clone()]);
        done.then_some(written)
    })
    .await;
    let distinct: BTreeSet<&String> = settled.values().collect();
    assert_eq!(distinct.len(), 40, "an address was handed out twice");
    assert!(uids.values().all(|uid| settled.contains_key(uid)));
    for controller in controllers {
        controller.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_addresses_rest_for_the_cooldown() {
    let (_turn, client, namespace) = take_turn("ipam-rest").await;
    let pool_name = format!("pool-{namespace}");
    create_pool(
        &client,
        &pool_name,
        serde_json::json!({
            "cidrs": ["10.79.0.0/28"],
            "gateway": "10.79.0.1",
            "reuseCooldownSeconds": 4,
            "strategy": { "plugin": "ipam-dense-pack" },
        }),
    )
    .await;
    let controller = start_controller(builtin_registry(), Arc::default()).await;
    create_pod(&client, &namespace, "a", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "a").await,
        "10.79.0.2"
    );
    create_pod(&client, &namespace, "b", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "b").await,
        "10.79.0.3"
    );

    delete_pod(&client, &namespace, "a").await;
    let resting = knit_tests::eventually("a's address resting", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        allocations
            .into_iter()
            .find(|a| a.spec.address == "10.79.0.2" && a.spec.released_at.is_some())
    })
    .await;
    let status = knit_tests::eventually("cooling counted", WAIT, || async {
        let status = pool_status(&client, &pool_name).await?;
        (status.cooling == 1).then_some(status)
    })
    .await;
    assert_eq!((status.allocated, status.free), (1, 11));
    // Dense-pack takes the lowest free address, and .2 is not free yet.
    create_pod(&client, &namespace, "c", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "c").await,
        "10.79.0.4"
    );

    knit_tests::eventually("the rest over", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        (!allocations.iter().any(|a| a.uid() == resting.uid())).then_some(())
    })
    .await;
    let released = resting.spec.released_at.unwrap().0;
    let rested = k8s_openapi::jiff::Timestamp::now().duration_since(released);
    assert!(rested >= k8s_openapi::jiff::SignedDuration::from_secs(4));
    create_pod(&client, &namespace, "d", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "d").await,
        "10.79.0.2"
    );
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_changes_take_effect_without_a_restart() {
    let (_turn, client, namespace) = take_turn("ipam-swap").await;
    let pool_name = format!("pool-{namespace}");
    create_pool(
        &client,
        &pool_name,
        serde_json::json!({ "cidrs": ["10.80.0.0/28"], "gateway": "10.80.0.1" }),
    )
    .await;
    let plugins_dir = tempfile::tempdir().unwrap();
    let registry = builtin_registry();
    let _watch = dir_source::watch(
        registry.clone(),
        plugins_dir.path().to_path_buf(),
        Default::default(),
    )
    .await
    .unwrap();
    let controller = start_controller(registry, Arc::default()).await;
    for name in ["a", "b", "c"] {
        create_pod(&client, &namespace, name, &pool_name).await;
        wait_for_address(&client, &namespace, name).await;
    }
    // A hole at .3, the cursor at .4.
    delete_pod(&client, &namespace, "b").await;
    knit_tests::eventually("b's address freed", WAIT, || async {
        (allocations_of(&client, &pool_name).await.len() == 2).then_some(())
    })
    .await;

    // Through the pool's spec: dense-pack fills the hole.
    patch_pool(
        &client,
        &pool_name,
        serde_json::json!({ "strategy": { "plugin": "ipam-dense-pack" } }),
    )
    .await;
    wait_for_plugin(&client, &pool_name, "ipam-dense-pack@").await;
    create_pod(&client, &namespace, "d", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "d").await,
        "10.80.0.3"
    );

    // Back to sequential, which goes on after the last address (.3).
    patch_pool(
        &client,
        &pool_name,
        serde_json::json!({ "strategy": { "plugin": "ipam-sequential" } }),
    )
    .await;
    wait_for_plugin(&client, &pool_name, "ipam-sequential@").await;
    delete_pod(&client, &namespace, "a").await;
    knit_tests::eventually("a's address freed", WAIT, || async {
        (allocations_of(&client, &pool_name).await.len() == 2).then_some(())
    })
    .await;
    create_pod(&client, &namespace, "e", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "e").await,
        "10.80.0.5"
    );

    // Through the plugins directory: a file named ipam-sequential.wasm takes
    // over the name from the built-in, here with dense-pack's behaviour.
    let dense_pack = knit_tests::built_plugin("ipam_dense_pack");
    let temp = plugins_dir.path().join(".incoming");
    std::fs::write(&temp, &dense_pack).unwrap();
    std::fs::rename(&temp, plugins_dir.path().join("ipam-sequential.wasm")).unwrap();
    let digest = knit::runtime::digest_of(&dense_pack);
    let source = format!(
        "file {}",
        plugins_dir.path().join("ipam-sequential.wasm").display()
    );
    knit_tests::eventually("the pool served by the new file", WAIT, || async {
        let status = pool_status(&client, &pool_name).await?;
        // The status says which file overrides the built-in.
        (status.decided_by.plugin_digest.as_deref() == Some(digest.as_str())
            && status.decided_by.plugin_source.as_deref() == Some(source.as_str()))
        .then_some(())
    })
    .await;
    create_pod(&client, &namespace, "f", &pool_name).await;
    assert_eq!(
        wait_for_address(&client, &namespace, "f").await,
        "10.80.0.2"
    );
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_in_use_is_deleted_only_once_its_addresses_are_released() {
    let (_turn, client, namespace) = take_turn("ipam-delete").await;
    let pool_name = format!("pool-{namespace}");
    create_pool(
        &client,
        &pool_name,
        serde_json::json!({ "cidrs": ["10.83.0.0/28"], "reuseCooldownSeconds": 3600 }),
    )
    .await;
    let controller = start_controller(builtin_registry(), Arc::default()).await;
    create_pod(&client, &namespace, "a", &pool_name).await;
    create_pod(&client, &namespace, "b", &pool_name).await;
    wait_for_address(&client, &namespace, "a").await;
    wait_for_address(&client, &namespace, "b").await;
    // b's address rests for an hour: that must not hold the pool up.
    delete_pod(&client, &namespace, "b").await;
    knit_tests::eventually("b's address resting", WAIT, || async {
        let allocations = allocations_of(&client, &pool_name).await;
        allocations.iter().any(|a| a.is_resting()).then_some(())
    })
    .await;

    let pools: Api<IPPool> = Api::all(client.clone());
    pools
        .delete(&pool_name, &DeleteParams::default())
        .await
        .unwrap();
    let message = wait_for_ready_reason(&client, &pool_name, "Deleting").await;
    assert!(message.contains("1 address(es) in use"), "{message}");
    assert!(pools.get_opt(&pool_name).await.unwrap().is_some());
    assert_eq!(allocations_of(&client, &pool_name).await.len(), 1);

    delete_pod(&client, &namespace, "a").await;
    knit_tests::eventually("the pool gone", WAIT, || async {
        pools
            .get_opt(&pool_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(allocations_of(&client, &pool_name).await.is_empty());
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_pool_hands_out_nothing_until_fixed() {
    let (_turn, client, namespace) = take_turn("ipam-overlap").await;
    let older = format!("older-{namespace}");
    let younger = format!("younger-{namespace}");
    create_pool(
        &client,
        &older,
        serde_json::json!({ "cidrs": ["10.81.0.0/24"] }),
    )
    .await;
    let controller = start_controller(builtin_registry(), Arc::default()).await;
    wait_for_ready_reason(&client, &older, "Allocating").await;
    create_pool(
        &client,
        &younger,
        serde_json::json!({ "cidrs": ["10.81.0.128/25"] }),
    )
    .await;
    let message = wait_for_ready_reason(&client, &younger, "Overlapping").await;
    assert!(message.contains(&older), "{message}");
    create_pod(&client, &namespace, "a", &younger).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    knit_tests::eventually("a NoAddress event", WAIT, || async {
        let events = events.list(&ListParams::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("NoAddress"))
            .then_some(())
    })
    .await;
    assert_eq!(address_of(&client, &namespace, "a").await, None);

    patch_pool(
        &client,
        &younger,
        serde_json::json!({ "cidrs": ["10.82.0.0/25"] }),
    )
    .await;
    let address = wait_for_address(&client, &namespace, "a").await;
    assert!(address.starts_with("10.82.0."), "{address}");
    wait_for_ready_reason(&client, &younger, "Allocating").await;
    controller.abort();
}

/// The API server refuses pools whose own CIDRs overlap (each address would
/// count twice) and strategy plugins that are paths, naming the field.
#[tokio::test]
async fn the_api_server_refuses_overlapping_cidrs_and_plugin_paths() {
    let pool = |spec: &str| {
        format!(
            "apiVersion: knit.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: refused}}\nspec: {spec}\n"
        )
    };
    let overlap = "the CIDRs of a pool must not overlap or repeat";
    let refused = [
        (pool("{cidrs: [10.2.0.0/30, 10.2.0.0/29]}"), overlap),
        (
            pool("{cidrs: [10.2.0.0/24, 10.3.0.0/24, 10.2.0.0/24]}"),
            overlap,
        ),
        (
            pool("{cidrs: ['ffff::/16', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120']}"),
            overlap,
        ),
        (
            pool("{cidrs: [10.2.0.0/24], strategy: {plugin: ../../tmp/evil}}"),
            "spec.strategy.plugin",
        ),
        (
            pool("{cidrs: [10.2.0.0/24], strategy: {plugin: /opt/evil}}"),
            "spec.strategy.plugin",
        ),
    ];
    for (manifest, expected) in &refused {
        let output = knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(manifest));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted:\n{manifest}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
    // The widest pool allowed: 16 disjoint IPv6 /64s, and adjacent CIDRs.
    let sixteen: Vec<String> = (1..=16).map(|n| format!("'fd00:0:0:{n:x}::/64'")).collect();
    for spec in [
        format!("{{cidrs: [{}]}}", sixteen.join(", ")),
        "{cidrs: [10.2.0.0/30, 10.2.0.4/30], strategy: {plugin: my_plugin.v2}}".to_string(),
    ] {
        let manifest = pool(&spec);
        let output =
            knit_tests::kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifest));
        assert!(output.status.success(), "refused:\n{manifest}\n{output:?}");
    }
}
