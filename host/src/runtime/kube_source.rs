//! `Plugin` objects as a plugin source: bytes from a ConfigMap key in knit's
//! namespace, hot-swapped when the ConfigMap or the object changes.
//!
//! Plugins are few, so any change to a `Plugin` or a ConfigMap resyncs them
//! all; unchanged bytes and settings cost one hash each.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::kind::{Plugin, PluginState, PluginStatus};
use super::{PluginSettings, PluginSource, Registry};

/// Follows `Plugin` objects and the ConfigMaps of `namespace` until the
/// future is dropped or a watch fails for good.
pub async fn run(client: Client, namespace: String, registry: Arc<Registry>) -> anyhow::Result<()> {
    let plugins_api: Api<Plugin> = Api::all(client.clone());
    let configmaps_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let (plugins, plugins_writer) = reflector::store();
    let (configmaps, configmaps_writer) = reflector::store();
    let plugin_changes = reflector::reflector(
        plugins_writer,
        watcher(plugins_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| report_watch_error("Plugins", event))
    .boxed();
    let configmap_changes = reflector::reflector(
        configmaps_writer,
        watcher(configmaps_api, watcher::Config::default()),
    )
    .default_backoff()
    .map(|event| report_watch_error("ConfigMaps", event))
    .boxed();
    let mut changes = futures::stream::select(plugin_changes, configmap_changes);
    // The watches fill the caches only while polled, so they run in their own
    // task and signal "something changed" (coalesced) to the sync loop.
    let (changed, mut on_change) = mpsc::channel::<()>(1);
    let _watches = AbortOnDrop(tokio::spawn(async move {
        while changes.next().await.is_some() {
            let _ = changed.try_send(());
        }
    }));

    let recorder = crate::controller::recorder(client);
    let sync = PluginSync {
        api: plugins_api,
        plugins,
        configmaps,
        namespace,
        registry,
        recorder,
    };
    sync.plugins.wait_until_ready().await?;
    sync.configmaps.wait_until_ready().await?;
    loop {
        sync.sync_all().await;
        if on_change.recv().await.is_none() {
            return Ok(());
        }
        // Let a burst of changes (an update touching both kinds) settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while on_change.try_recv().is_ok() {}
    }
}

/// Watches retry with backoff by themselves; say why while they do.
fn report_watch_error<T>(what: &str, event: Result<T, watcher::Error>) {
    if let Err(error) = event {
        tracing::warn!(%error, "watching {what} failed; retrying");
    }
}

/// Stops the watch task when `run` ends or is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct PluginSync {
    api: Api<Plugin>,
    plugins: Store<Plugin>,
    configmaps: Store<ConfigMap>,
    namespace: String,
    registry: Arc<Registry>,
    recorder: Recorder,
}

impl PluginSync {
    async fn sync_all(&self) {
        let objects = self.plugins.state();
        for plugin in &objects {
            if let Err(error) = self.sync_one(plugin).await {
                tracing::warn!(plugin = %plugin.name_any(), %error, "cannot update Plugin status");
            }
        }
        let is_object = |source: &PluginSource| matches!(source, PluginSource::Object(_));
        for (name, source) in self.registry.names_from(is_object) {
            if !objects.iter().any(|p| p.name_any() == name) {
                self.registry.remove(&source, &name);
            }
        }
    }

    async fn sync_one(&self, plugin: &Plugin) -> Result<(), kube::Error> {
        let name = plugin.name_any();
        let source = PluginSource::Object(name.clone());
        let settings = PluginSettings {
            limits: plugin.spec.limits.clone().unwrap_or_default().to_limits(),
            config: plugin.spec.config.clone().into_iter().collect(),
        };
        let loaded = match self.bytes_of(plugin) {
            Ok(bytes) => self
                .registry
                .load_async(
                    source.clone(),
                    name.clone(),
                    bytes,
                    settings,
                    plugin.spec.world.map(Into::into),
                )
                .await
                .map_err(|error| error.to_string()),
            Err(missing) => Err(missing),
        };
        let serving = self.registry.provided_by(&name, &source);
        let mut status = PluginStatus {
            observed_generation: plugin.metadata.generation,
            version: serving.as_ref().map(|p| p.info.version.clone()),
            digest: serving.as_ref().map(|p| p.digest.clone()),
            loaded_at: serving
                .as_ref()
                .map(|p| Time(p.loaded_at.try_into().unwrap_or_default())),
            ..PluginStatus::default()
        };
        let previous = plugin.status.clone().unwrap_or_default();
        let (state, reason, message) = match &loaded {
            Ok(p) => (
                PluginState::Active,
                "Loaded",
                format!("serving {} {}", p.name_version(), p.digest),
            ),
            Err(error) => {
                let still = serving
                    .as_ref()
                    .map(|p| format!("; still serving {} {}", p.name_version(), p.digest))
                    .unwrap_or_default();
                (PluginState::Failed, "LoadFailed", format!("{error}{still}"))
            }
        };
        status.state = Some(state);
        status.message = Some(message.clone());
        status.conditions = vec![ready_condition(
            &previous,
            state,
            reason,
            &message,
            plugin.metadata.generation,
        )];
        if previous == status {
            return Ok(());
        }
        if previous.state != status.state
            || previous.digest != status.digest
            || previous.message != status.message
        {
            let type_ = if state == PluginState::Active {
                EventType::Normal
            } else {
                EventType::Warning
            };
            crate::controller::publish_event(
                &self.recorder,
                &plugin.object_ref(&()),
                type_,
                reason,
                &message,
                "Load",
            )
            .await;
        }
        let patch = serde_json::json!({
            "apiVersion": Plugin::api_version(&()),
            "kind": Plugin::kind(&()),
            "status": status,
        });
        self.api
            .patch_status(
                &name,
                &PatchParams::apply("knit").force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    fn bytes_of(&self, plugin: &Plugin) -> Result<Vec<u8>, String> {
        let key = &plugin.spec.source.config_map;
        let reference = ObjectRef::<ConfigMap>::new(&key.name).within(&self.namespace);
        let configmap = self
            .configmaps
            .get(&reference)
            .ok_or_else(|| format!("ConfigMap {}/{} not found", self.namespace, key.name))?;
        if let Some(bytes) = configmap.binary_data.as_ref().and_then(|d| d.get(&key.key)) {
            return Ok(bytes.0.clone());
        }
        if let Some(text) = configmap.data.as_ref().and_then(|d| d.get(&key.key)) {
            return Ok(text.clone().into_bytes());
        }
        Err(format!(
            "ConfigMap {}/{} has no key {:?}",
            self.namespace, key.name, key.key
        ))
    }
}

/// The `Ready` condition: true while the plugin is `Active`.
fn ready_condition(
    previous: &PluginStatus,
    state: PluginState,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    crate::conditions::condition(
        &previous.conditions,
        "Ready",
        state == PluginState::Active,
        reason,
        message,
        generation,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    )
}
