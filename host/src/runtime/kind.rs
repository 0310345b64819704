//! The `Plugin` kind: a plugin delivered through the Kubernetes API.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WebAssembly plugin whose bytes live in a ConfigMap key in knit's own
/// namespace. It is compiled, checked and swapped in while knit runs; a
/// version that fails to load is reported here and the previous one keeps
/// serving.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "knit.dev",
    version = "v1alpha1",
    kind = "Plugin",
    status = "PluginStatus",
    shortname = "kplugin",
    category = "knit",
    printcolumn = r#"{"name":"World","type":"string","jsonPath":".spec.world"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","priority":1,"jsonPath":".status.digest"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// The world the component must implement; a component of another world is
    /// refused. When omitted, the world is read from the component.
    pub world: Option<PluginWorld>,
    pub source: PluginSourceSpec,
    pub limits: Option<PluginLimits>,
    /// Passed to every call, before the configuration of the policy that
    /// selected the plugin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PluginWorld {
    IpamStrategy,
    ClbAllocator,
    TunnelMapper,
}

impl From<PluginWorld> for super::World {
    fn from(world: PluginWorld) -> Self {
        match world {
            PluginWorld::IpamStrategy => super::World::IpamStrategy,
            PluginWorld::ClbAllocator => super::World::ClbAllocator,
            PluginWorld::TunnelMapper => super::World::TunnelMapper,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginSourceSpec {
    pub config_map: ConfigMapKey,
}

/// A key of a ConfigMap in knit's namespace, under `binaryData` (preferred for
/// .wasm) or `data`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginLimits {
    /// Longest a single call may run, instantiation included; default 250.
    #[schemars(range(min = 1, max = 60000))]
    pub deadline_milliseconds: Option<u32>,
    /// Largest linear memory an instance may grow to; default 64.
    #[schemars(range(min = 1, max = 512))]
    pub memory_mebibytes: Option<u32>,
}

impl PluginLimits {
    pub fn to_limits(&self) -> super::Limits {
        let defaults = super::Limits::default();
        super::Limits {
            deadline: self
                .deadline_milliseconds
                .map(|ms| std::time::Duration::from_millis(ms.into()))
                .unwrap_or(defaults.deadline),
            memory_bytes: self
                .memory_mebibytes
                .map(|mib| (mib as usize) << 20)
                .unwrap_or(defaults.memory_bytes),
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub state: Option<PluginState>,
    /// Version and digest of the build that serves now (which, after a failed
    /// update, is the previous one).
    pub version: Option<String>,
    pub digest: Option<String>,
    pub loaded_at: Option<Time>,
    pub message: Option<String>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PluginState {
    Active,
    Failed,
}
