//! The plugin-decision step every domain takes: which plugin decides for
//! an object and with what configuration (read here, for every kind), the
//! plugin's answer or a typed `Refusal`, and the status naming the plugin.
//! The domains build the request and run the call on the blocking pool
//! (`runtime::spawn_call`), inside their plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;

use crate::domains::cloudflare::types::TunnelObject;
use crate::domains::ipam::types::IPPool;
use crate::domains::tke_clb::types::DedicatedCLBService;
use crate::runtime::{CallError, Plugin, Registry, World};

/// On a `DedicatedCLBService`: the `clb-allocator` plugin that decides.
pub const ALLOCATOR_ANNOTATION: &str = "knit.dev/clb-allocator";
pub const DEFAULT_ALLOCATOR: &str = "clb-allocator";
/// On a service: `clb.knit.dev/<key>: <value>` is passed to the allocator
/// as configuration, e.g. `clb.knit.dev/spread: uniform`.
pub const ALLOCATOR_CONFIG_PREFIX: &str = "clb.knit.dev/";
/// On a `Tunnel` or `ClusterTunnel`: the `tunnel-mapper` plugin.
pub const MAPPER_ANNOTATION: &str = "knit.dev/tunnel-mapper";
pub const DEFAULT_MAPPER: &str = "tunnel-mapper";
/// On a tunnel: `tunnel.knit.dev/<key>: <value>` is the mapper's config.
pub const MAPPER_CONFIG_PREFIX: &str = "tunnel.knit.dev/";

/// The condition reasons of a decision that was not made.
pub const PLUGIN_UNAVAILABLE: &str = "PluginUnavailable";
pub const INVALID_CONFIG: &str = "InvalidConfig";
pub const PLUGIN_ERROR: &str = "PluginError";

/// An object whose decisions a plugin makes.
pub trait Decided {
    /// The world its plugin implements.
    const WORLD: World;
    /// The plugin's name.
    fn plugin_name(&self) -> &str;
    /// The plugin's configuration: `(key, value)` pairs.
    fn plugin_config(&self) -> Vec<(String, String)>;
}

impl Decided for IPPool {
    const WORLD: World = World::IpamStrategy;
    fn plugin_name(&self) -> &str {
        &self.spec.strategy.plugin
    }
    fn plugin_config(&self) -> Vec<(String, String)> {
        self.spec.strategy.config.clone().into_iter().collect()
    }
}

impl Decided for DedicatedCLBService {
    const WORLD: World = World::ClbAllocator;
    fn plugin_name(&self) -> &str {
        annotated(self.annotations(), ALLOCATOR_ANNOTATION, DEFAULT_ALLOCATOR)
    }
    fn plugin_config(&self) -> Vec<(String, String)> {
        prefixed(self.annotations(), ALLOCATOR_CONFIG_PREFIX)
    }
}

/// `Tunnel` and `ClusterTunnel` alike.
impl<T: TunnelObject> Decided for T {
    const WORLD: World = World::TunnelMapper;
    fn plugin_name(&self) -> &str {
        annotated(self.annotations(), MAPPER_ANNOTATION, DEFAULT_MAPPER)
    }
    fn plugin_config(&self) -> Vec<(String, String)> {
        prefixed(self.annotations(), MAPPER_CONFIG_PREFIX)
    }
}

fn annotated<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
    default: &'a str,
) -> &'a str {
    annotations.get(key).map_or(default, String::as_str)
}

fn prefixed(annotations: &BTreeMap<String, String>, prefix: &str) -> Vec<(String, String)> {
    annotations
        .iter()
        .filter_map(|(key, value)| {
            key.strip_prefix(prefix)
                .map(|key| (key.to_owned(), value.clone()))
        })
        .collect()
}

/// Why no decision was made: `reason` is the `Ready` condition's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// A plugin's refusal of a request, as its world types it.
pub trait Refused: std::fmt::Display {
    /// The condition reason: the configuration, unless the world says more.
    fn reason(&self) -> &'static str {
        INVALID_CONFIG
    }
}

/// The CLB and tunnel worlds refuse with a message: their configuration.
impl Refused for String {}

impl Refused for knit_ipam_core::AllocateError {
    fn reason(&self) -> &'static str {
        match self {
            knit_ipam_core::AllocateError::Exhausted(_) => "Exhausted",
            knit_ipam_core::AllocateError::InvalidConfig(_) => INVALID_CONFIG,
            knit_ipam_core::AllocateError::InvalidRequest(_) => "InvalidRequest",
        }
    }
}

/// The plugin chosen for an object, with its configuration.
#[derive(Clone)]
pub struct Chosen {
    pub plugin: Arc<Plugin>,
    pub config: Vec<(String, String)>,
}

/// The plugin that decides for `object`, or why there is none.
pub fn choose<O: Decided>(registry: &Registry, object: &O) -> Result<Chosen, Refusal> {
    match registry.get_world(object.plugin_name(), O::WORLD) {
        Ok(plugin) => Ok(Chosen {
            plugin,
            config: object.plugin_config(),
        }),
        Err(error) => Err(Refusal::new(PLUGIN_UNAVAILABLE, error.to_string())),
    }
}

impl Chosen {
    /// The plugin's checked answer, or why there is none: the plugin
    /// refused its configuration (`InvalidConfig`) or failed (trapped, ran
    /// past its deadline, answered something the check refused:
    /// `PluginError`).
    pub fn answer<T, Why: Refused>(
        &self,
        answer: Result<Result<T, Why>, CallError>,
    ) -> Result<T, Refusal> {
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(why)) => Err(Refusal::new(
                why.reason(),
                format!("{}: {why}", self.plugin.name_version()),
            )),
            Err(error) => Err(Refusal::new(PLUGIN_ERROR, error.to_string())),
        }
    }

    pub fn status(&self) -> PluginStatus {
        PluginStatus::of(&self.plugin)
    }
}

// Which plugin made an object's last decision, as every status shows it
// (flattened into the status). Not a doc comment: schemars would give the
// status that includes it this description.
#[serde_with::skip_serializing_none]
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// The plugin that made the last decision: `name@version`.
    pub plugin: Option<String>,
    /// That plugin's digest, `sha256:<hex>` of its bytes.
    pub plugin_digest: Option<String>,
    /// Where that version came from: `built-in`, `file <path>` (the plugins
    /// directory, which overrides a built-in of the same name) or `Plugin
    /// <name>`.
    pub plugin_source: Option<String>,
}

impl PluginStatus {
    pub fn of(plugin: &Plugin) -> Self {
        PluginStatus {
            plugin: Some(plugin.name_version()),
            plugin_digest: Some(plugin.digest.clone()),
            plugin_source: plugin.source.as_ref().map(ToString::to_string),
        }
    }
}

/// Randomness for a plugin, derived from who asks, so a pass can be replayed
/// from what was observed: FNV-1a over the parts, each ended by a NUL byte
/// (so `["ab", ""]` and `["a", "b"]` differ).
pub fn replay_seed(parts: &[&str]) -> u64 {
    fnv1a(parts.iter().flat_map(|part| part.bytes().chain([0])))
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::empty("", 0xcbf2_9ce4_8422_2325)]
    #[case::a("a", 0xaf63_dc4c_8601_ec8c)]
    #[case::foobar("foobar", 0x8594_4171_f739_67e8)]
    fn fnv1a_matches_the_published_vectors(#[case] input: &str, #[case] expected: u64) {
        assert_eq!(fnv1a(input.bytes()), expected);
    }

    /// Pinned: a change here changes which address or port a random
    /// strategy picks for the same observed state, so make it on purpose.
    #[test]
    fn replay_seeds_are_pinned() {
        assert_eq!(replay_seed(&["c1", "eth0", "0"]), 0x1785_4d20_c9e3_3886);
        assert_eq!(replay_seed(&["a", "b"]), replay_seed(&["a", "b"]));
        assert_ne!(replay_seed(&["ab", ""]), replay_seed(&["a", "b"]));
    }

    #[test]
    fn a_service_names_its_allocator_and_its_configuration_by_annotation() {
        let mut service: DedicatedCLBService = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.cloud.tencent.com/v1alpha1",
            "kind": "DedicatedCLBService",
            "metadata": {"name": "s", "namespace": "n"},
            "spec": {"minPort": 500, "maxPort": 510, "selector": {"app": "a"},
                     "ports": [{"protocol": "TCP", "targetPort": 80}], "existedLbIds": ["lb-1"]},
        }))
        .expect("a service");
        assert_eq!(service.plugin_name(), DEFAULT_ALLOCATOR);
        service.metadata.annotations = Some(BTreeMap::from([
            (ALLOCATOR_ANNOTATION.into(), "mine".into()),
            ("clb.knit.dev/spread".into(), "uniform".into()),
            ("tunnel.knit.dev/x".into(), "not mine".into()),
        ]));
        assert_eq!(service.plugin_name(), "mine");
        assert_eq!(
            service.plugin_config(),
            [("spread".to_string(), "uniform".to_string())]
        );
    }

    #[test]
    fn tunnels_of_both_kinds_name_their_mapper_and_its_configuration_by_annotation() {
        use crate::domains::cloudflare::types::{ClusterTunnel, Tunnel};
        let spec = serde_json::json!({"newTunnel": {"name": "t"},
            "cloudflare": {"accountId": "a", "secret": "s"}});
        let annotations = serde_json::json!({
            MAPPER_ANNOTATION: "mine", "tunnel.knit.dev/x": "y", "clb.knit.dev/spread": "no"});
        let tunnel: Tunnel = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "Tunnel",
            "metadata": {"name": "t", "namespace": "n"}, "spec": spec,
        }))
        .expect("a tunnel");
        assert_eq!(tunnel.plugin_name(), DEFAULT_MAPPER);
        let cluster: ClusterTunnel = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2", "kind": "ClusterTunnel",
            "metadata": {"name": "t", "annotations": annotations}, "spec": spec,
        }))
        .expect("a cluster tunnel");
        assert_eq!(cluster.plugin_name(), "mine");
        assert_eq!(
            cluster.plugin_config(),
            [("x".to_string(), "y".to_string())]
        );
    }
}
