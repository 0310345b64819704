//! The IPAM kinds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pod annotation that asks for an address from a pool.
pub const POOL_ANNOTATION: &str = "knit.dev/ippool";
/// The pod annotation knit writes the address into.
pub const ADDRESS_ANNOTATION: &str = "knit.dev/ip";
/// Keeps a pool while addresses from it are in use.
pub const POOL_FINALIZER: &str = "knit.dev/ippool-protection";

/// A pool of addresses (IPv4 or IPv6, one or more CIDRs) handed out by a
/// strategy plugin.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "knit.dev",
    version = "v1alpha1",
    kind = "IPPool",
    status = "IPPoolStatus",
    shortname = "ipp",
    category = "knit",
    printcolumn = r#"{"name":"CIDRs","type":"string","jsonPath":".spec.cidrs"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy.plugin"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Cooling","type":"integer","priority":1,"jsonPath":".status.cooling"}"#,
    printcolumn = r#"{"name":"Utilization","type":"string","priority":1,"jsonPath":".status.utilization"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.gateway) || self.cidrs.exists(c, isCIDR(c) && cidr(c).containsIP(self.gateway))"
).message("gateway must be inside one of the pool's CIDRs").field_path(".gateway"))]
pub struct IPPoolSpec {
    /// CIDRs of one address family, laid end to end in this order.
    #[schemars(length(min = 1, max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))")
        .message("every entry must be a CIDR such as 10.44.0.0/24 or fd00:44::/64"))]
    #[x_kube(validation = Rule::new("self.all(c, !isCIDR(c) || cidr(c) == cidr(c).masked())")
        .message("a CIDR must name its network address, without host bits (10.44.0.0/24, not 10.44.0.1/24)"))]
    #[x_kube(validation = Rule::new(
        "self.all(c, !isCIDR(c) || !isCIDR(self[0]) || cidr(c).ip().family() == cidr(self[0]).ip().family())"
    ).message("all CIDRs of a pool must be of one address family"))]
    // Each CIDR overlaps exactly one entry, itself: no overlap, no repeat.
    // Pairwise, which `max = 16` keeps within the API server's cost limit.
    #[x_kube(validation = Rule::new(
        "self.all(a, !isCIDR(a) || self.exists_one(b, isCIDR(b) && (cidr(a).containsCIDR(cidr(b)) || cidr(b).containsCIDR(cidr(a)))))"
    ).message("the CIDRs of a pool must not overlap or repeat: an address would count twice"))]
    pub cidrs: Vec<String>,
    /// Never handed out; must lie inside the pool.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self)").message("gateway must be an IP address"))]
    pub gateway: Option<String>,
    /// Addresses never handed out: single addresses, CIDRs, or `first-last`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 100)))]
    #[x_kube(validation = Rule::new(
        "self.all(e, isIP(e) || isCIDR(e) || (e.split('-').size() == 2 && isIP(e.split('-')[0]) && isIP(e.split('-')[1])))"
    ).message("each exclusion must be an address, a CIDR, or a range first-last"))]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Seconds a released address rests before it is handed out again.
    #[schemars(range(max = 86400))]
    pub reuse_cooldown_seconds: Option<u32>,
}

/// Which plugin chooses addresses, and its configuration.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// A plugin name, never a path: knit-ipam looks for `<plugin>.wasm` in
    /// its plugins directory.
    #[serde(default = "default_strategy_plugin")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
    )]
    pub plugin: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// The longest plugin name accepted.
pub const MAX_PLUGIN_NAME: usize = 128;

/// A plugin name, as `Strategy.plugin`'s schema has it: letters, digits,
/// `-`, `_` and `.`, not leading, at most `MAX_PLUGIN_NAME`. Never a path,
/// so `<plugins dir>/<name>.wasm` stays in the plugins directory.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PLUGIN_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn default_strategy_plugin() -> String {
    "ipam-sequential".into()
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            plugin: default_strategy_plugin(),
            config: BTreeMap::new(),
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    // All optional in the schema: any allocator may record `lastAllocated`
    // before the controller has written a first status.
    #[serde(default)]
    pub capacity: u64,
    #[serde(default)]
    pub allocated: u64,
    #[serde(default)]
    pub free: u64,
    /// Allocated share of capacity, in percent, e.g. "42.5".
    #[serde(default)]
    pub utilization: String,
    /// The strategy that made the last decision (`plugin`, `pluginDigest`,
    /// `pluginSource`).
    #[serde(flatten)]
    pub decided_by: crate::controller::PluginStatus,
    /// The address handed out last: where a sequential strategy goes on
    /// from (host-local's `last_reserved_ip`). Written by every allocator.
    pub last_allocated: Option<String>,
    /// Released addresses resting out their `reuseCooldownSeconds`.
    #[serde(default)]
    pub cooling: u64,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One address handed out. Its name is derived from pool and address, so the
/// API server's name uniqueness forbids handing one address out twice.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "knit.dev",
    version = "v1alpha1",
    kind = "IPAllocation",
    shortname = "ipa",
    // Lets allocators list one pool's allocations: fieldSelector=spec.pool=NAME.
    selectable = ".spec.pool",
    category = "knit",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.owner.podName"}"#,
    printcolumn = r#"{"name":"Container","type":"string","priority":1,"jsonPath":".spec.owner.containerId"}"#,
    printcolumn = r#"{"name":"Released","type":"date","jsonPath":".spec.releasedAt"}"#,
    printcolumn = r#"{"name":"Plugin","type":"string","priority":1,"jsonPath":".spec.plugin"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocationSpec {
    pub pool: String,
    pub address: String,
    pub owner: AllocationOwner,
    /// Set when the owner let go and the pool has a reuse cooldown: the
    /// address rests, still held, until `releasedAt + reuseCooldownSeconds`.
    pub released_at: Option<Time>,
    /// The strategy that chose the address (`plugin`, `pluginDigest`,
    /// `pluginSource`); none for an address taken back from the pod that
    /// already carried it.
    #[serde(flatten)]
    pub decided_by: crate::controller::PluginStatus,
}

impl IPAllocation {
    /// The allocation of `address` from `pool` to `owner`. Deliberately no
    /// owner reference to the pool: a cascading delete must never drop an
    /// address a pod still uses; the pool's finalizer frees them instead.
    pub fn of(
        pool: &IPPool,
        address: &std::net::IpAddr,
        owner: AllocationOwner,
        decided_by: crate::controller::PluginStatus,
    ) -> Self {
        let pool_name = pool.name_any();
        IPAllocation::new(
            &allocation_name(&pool_name, address),
            IPAllocationSpec {
                pool: pool_name,
                address: address.to_string(),
                owner,
                released_at: None,
                decided_by,
            },
        )
    }

    /// Resting after release (see `released_at`), owned by nobody.
    pub fn is_resting(&self) -> bool {
        self.spec.released_at.is_some()
    }
}

/// Who holds the address: a pod (namespace, name, UID) or a container
/// (ID and interface) when allocated by the CNI plugin.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllocationOwner {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub interface: Option<String>,
}

/// `<pool>-<address>` with the address made name-safe (`10-0-0-5`,
/// `fd00--5`).
pub fn allocation_name(pool: &str, address: &std::net::IpAddr) -> String {
    let address = address.to_string().replace(['.', ':'], "-");
    format!("{pool}-{address}")
}
