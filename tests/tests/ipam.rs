//! The IPAM controller on the real API server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use knit::domains::ipam::types::{IPAllocation, IPPool};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

const WAIT: Duration = Duration::from_secs(60);

async fn create_pod(client: &Client, namespace: &str, name: &str, pool: &str) -> Pod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "annotations": { "knit.dev/ippool": pool } },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app" }] },
    }))
    .unwrap();
    Api::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
}

async fn address_of(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    pod.annotations().get("knit.dev/ip").cloned()
}

async fn allocations_of(client: &Client, pool: &str) -> Vec<IPAllocation> {
    let all = Api::<IPAllocation>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    all.items
        .into_iter()
        .filter(|a| a.spec.pool == pool)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_addresses_and_release_them_by_uid() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, "ipam").await;
    let pool_name = format!("pool-{namespace}");
    let pool: IPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "knit.dev/v1alpha1",
        "kind": "IPPool",
        "metadata": { "name": pool_name },
        "spec": { "cidrs": ["10.77.0.0/28"], "gateway": "10.77.0.1" },
    }))
    .unwrap();
    Api::<IPPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
    let registry = knit::cli::builtin_registry(None, Arc::default()).unwrap();
    let controller = tokio::spawn(knit::domains::ipam::controller::run(
        client.clone(),
        registry,
    ));

    let mut uids = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        uids.push(
            create_pod(&client, &namespace, name, &pool_name)
                .await
                .uid()
                .unwrap(),
        );
    }
    let mut addresses = BTreeSet::new();
    for name in ["web-0", "web-1", "web-2"] {
        let address = knit_tests::eventually(&format!("{name}'s address"), WAIT, || {
            address_of(&client, &namespace, name)
        })
        .await;
        addresses.insert(address);
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
    let pools: Api<IPPool> = Api::all(client.clone());
    let status = knit_tests::eventually("pool status", WAIT, || async {
        let status = pools.get(&pool_name).await.ok()?.status?;
        (status.allocated == 3).then_some(status)
    })
    .await;
    // A /28 less network, broadcast and gateway.
    assert_eq!((status.capacity, status.free), (13, 10));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Delete web-1 and create a new pod of the same name: the old allocation
    // is freed because its UID is gone, the new pod gets its own.
    let old_address = address_of(&client, &namespace, "web-1").await.unwrap();
    let old_uid = uids[1].clone();
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .delete("web-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let new_uid = create_pod(&client, &namespace, "web-1", &pool_name)
        .await
        .uid()
        .unwrap();
    let new_address = knit_tests::eventually("the new web-1's address", WAIT, || {
        address_of(&client, &namespace, "web-1")
    })
    .await;
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
    // The other pods kept their addresses throughout.
    assert_eq!(
        address_of(&client, &namespace, "web-0").await.unwrap(),
        "10.77.0.2"
    );
    assert_eq!(
        address_of(&client, &namespace, "web-2").await.unwrap(),
        "10.77.0.4"
    );
    eprintln!("web-1: {old_address} -> {new_address}");
    controller.abort();
}
