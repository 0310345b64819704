//! `Plugin` objects on the real API server: bytes from a ConfigMap, hot swap
//! when the ConfigMap changes, a broken version reported while the previous
//! one keeps serving, removal with the object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use knit::runtime::kind::{Plugin, PluginState};
use knit::runtime::{Registry, Runtime, RuntimeConfig, RuntimeMetrics, kube_source};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn configmap(name: &str, bytes: Vec<u8>) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            "plugin.wasm".to_string(),
            ByteString(bytes),
        )])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_objects_load_swap_reject_and_remove() {
    // Shown when the test fails: the controller side's logs.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, "knit-plugins").await;
    let registry = Registry::new(
        Runtime::new(
            RuntimeConfig::default(),
            Arc::new(RuntimeMetrics::default()),
        )
        .unwrap(),
    );
    let source = tokio::spawn(kube_source::run(
        client.clone(),
        namespace.clone(),
        registry.clone(),
    ));

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let plugins: Api<Plugin> = Api::all(client.clone());
    let name = format!("swap-{namespace}");
    configmaps
        .create(
            &PostParams::default(),
            &configmap(&name, knit_tests::built_plugin("fixture_swap_v1")),
        )
        .await
        .unwrap();
    let plugin: Plugin = serde_json::from_value(serde_json::json!({
        "apiVersion": "knit.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": { "name": name },
        "spec": {
            "world": "ipam-strategy",
            "source": { "configMap": { "name": name, "key": "plugin.wasm" } },
            "limits": { "deadlineMilliseconds": 100, "memoryMebibytes": 32 },
        },
    }))
    .unwrap();
    plugins
        .create(&PostParams::default(), &plugin)
        .await
        .unwrap();

    let status_with = |version: &'static str, state: PluginState| {
        let (plugins, name) = (plugins.clone(), name.clone());
        move || {
            let (plugins, name) = (plugins.clone(), name.clone());
            async move {
                let status = plugins.get(&name).await.ok()?.status?;
                (status.state == Some(state) && status.version.as_deref() == Some(version))
                    .then_some(status)
            }
        }
    };
    let active =
        knit_tests::eventually("v1 Active", WAIT, status_with("1.0.0", PluginState::Active)).await;
    assert!(active.digest.unwrap().starts_with("sha256:"));
    assert_eq!(active.conditions[0].type_, "Ready");
    assert_eq!(active.conditions[0].status, "True");
    let serving = registry.get(&name).unwrap();
    assert_eq!(serving.settings.limits.deadline, Duration::from_millis(100));
    assert_eq!(serving.settings.limits.memory_bytes, 32 << 20);

    // A new version in the ConfigMap is swapped in.
    let patch_bytes = |bytes: Vec<u8>| {
        let (configmaps, name) = (configmaps.clone(), name.clone());
        async move {
            configmaps
                .patch(
                    &name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(configmap(&name, bytes)),
                )
                .await
                .unwrap();
        }
    };
    patch_bytes(knit_tests::built_plugin("fixture_swap_v2")).await;
    knit_tests::eventually("v2 Active", WAIT, status_with("2.0.0", PluginState::Active)).await;
    assert_eq!(registry.get(&name).unwrap().info.version, "2.0.0");

    // A broken version: Failed with the reason, v2 keeps serving.
    patch_bytes(b"not wasm at all".to_vec()).await;
    let failed =
        knit_tests::eventually("Failed", WAIT, status_with("2.0.0", PluginState::Failed)).await;
    let message = failed.message.unwrap();
    assert!(
        message.contains("not a valid WebAssembly component") && message.contains("still serving"),
        "{message}"
    );
    assert_eq!(failed.conditions[0].status, "False");
    assert_eq!(registry.get(&name).unwrap().info.version, "2.0.0");

    // Deleting the object removes the plugin.
    plugins
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    knit_tests::eventually("plugin removed", WAIT, || {
        let gone = registry.get(&name).is_err();
        async move { gone.then_some(()) }
    })
    .await;
    source.abort();
}
