//! The network configuration on stdin: host-local's `ipam` fields (`ranges`
//! or the legacy `subnet`, `rangeStart`, `rangeEnd`, `gateway`, `routes`,
//! `dataDir`) plus knit's (`strategy`, `pluginsDir`, `cacheDir`, `mode`,
//! `pool`, `kubeconfig`), and HeadCNI's `allocation_strategy` when it runs as
//! `headcni-ipam`. The `ipam` section is parsed strictly: an unknown field or
//! a bad value is an error that names the field.
//!
//! Only parsing and checking live here; the address shapes it produces
//! (`Cidr`, `Range`, `RangeSet`) and their arithmetic are in `cidr`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::cidr::{Cidr, Range, RangeSet, beyond_offsets, bits_of, ip_value};
use super::error::{CniError, Code, quoted};
use super::protocol::CniVersion;
use crate::domains::ipam::address_space::MAX_OFFSETS_PER_CIDR;
use crate::domains::ipam::types::{MAX_PLUGIN_NAME, is_plugin_name};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Where `headcni-ipam` keeps its allocations: under HeadCNI's state
/// directory, which the seed's troubleshooting lists.
pub const HEADCNI_DATA_DIR: &str = "/var/lib/headcni/networks";
/// The `ipam.type` under which this plugin speaks HeadCNI's dialect.
pub const HEADCNI_IPAM: &str = "headcni-ipam";
pub const DEFAULT_PLUGINS_DIR: &str = "/opt/knit/plugins";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/knit";
pub const DEFAULT_STRATEGY: &str = "ipam-sequential";

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub ipam: Ipam,
    /// GC only: the attachments the runtime still uses.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ipam {
    pub routes: Vec<Route>,
    pub plugins_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Allocations in a state file on this node, as host-local keeps them.
    Local {
        ranges: Vec<RangeSet>,
        data_dir: PathBuf,
        strategy: StrategyConf,
    },
    /// Allocations as `IPAllocation` objects of an `IPPool`.
    Cluster { pool: String, kubeconfig: PathBuf },
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StrategyConf {
    #[serde(default = "default_strategy")]
    pub plugin: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_strategy() -> String {
    DEFAULT_STRATEGY.into()
}

impl Default for StrategyConf {
    fn default() -> Self {
        StrategyConf {
            plugin: default_strategy(),
            config: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A route added to the result as configured.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(deserialize_with = "ip_prefix")]
    pub dst: String,
    pub gw: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    kind: String,
    ranges: Option<Vec<Vec<RawRange>>>,
    subnet: Option<Cidr>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    data_dir: Option<PathBuf>,
    strategy: Option<StrategyConf>,
    /// HeadCNI's name for the strategy: `sequential`, `random`, `dense-pack`,
    /// or the name of a custom strategy plugin.
    #[serde(rename = "allocation_strategy")]
    allocation_strategy: Option<String>,
    plugins_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    mode: ModeName,
    pool: Option<String>,
    kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    #[default]
    Local,
    Cluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRange {
    subnet: Cidr,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

/// The network configuration as a JSON object, or a decoding error.
pub fn json_object(stdin: &[u8]) -> Result<serde_json::Map<String, Value>, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|error| {
        CniError::new(
            Code::Decode,
            format!("decoding the network config: {error}"),
        )
    })?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(CniError::new(
            Code::Decode,
            "the network config must be a JSON object",
        )),
    }
}

/// What every network configuration carries: a `cniVersion` this plugin
/// speaks and a `name` that can be a directory name.
pub fn network_header(
    object: &serde_json::Map<String, Value>,
) -> Result<(CniVersion, String), CniError> {
    let cni_version = version(object)?;
    let name = match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | None => {
            return Err(CniError::config("name: required (the network name)"));
        }
        Some(_) => return Err(CniError::config("name: must be a string")),
    };
    // The name is a directory under dataDir: the spec's rule keeps it one,
    // and a directory name has at most 255 bytes.
    if !is_safe_name(&name) || name.len() > 255 {
        return Err(CniError::config(format!(
            "name: {} is not a valid network name (at most 255 letters, digits, '_', '.', '-')",
            quoted(&name)
        )));
    }
    Ok((cni_version, name))
}

/// Parses and checks the network configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let object = json_object(stdin)?;
    let (cni_version, name) = network_header(&object)?;
    let raw: RawIpam = match object.get("ipam") {
        Some(ipam) => serde_path_to_error::deserialize(ipam).map_err(|error| {
            CniError::config(format!("{}: {}", field_path(error.path()), error.inner()))
        })?,
        None => return Err(CniError::config("ipam: required")),
    };
    let valid_attachments = match object.get("cni.dev/valid-attachments") {
        Some(list) => Some(serde_path_to_error::deserialize(list).map_err(|error| {
            CniError::config(format!(
                "cni.dev/valid-attachments{}: {}",
                suffix(error.path()),
                error.inner()
            ))
        })?),
        None => None,
    };
    Ok(NetConf {
        cni_version,
        name,
        ipam: check_ipam(raw)?,
        valid_attachments,
    })
}

/// The config's `cniVersion`, if it is one this plugin speaks; for replies
/// to a config that could not be parsed.
pub fn requested_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    let versioned: Versioned = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(&versioned.cni_version)
}

fn version(object: &serde_json::Map<String, Value>) -> Result<CniVersion, CniError> {
    let text = match object.get("cniVersion") {
        Some(Value::String(text)) => text,
        Some(_) => return Err(CniError::config("cniVersion: must be a string")),
        None => return Err(CniError::config("cniVersion: required")),
    };
    CniVersion::parse(text).ok_or_else(|| {
        CniError::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(format!(
            "config is {text:?}, plugin supports {:?}",
            CniVersion::supported()
        ))
    })
}

fn check_ipam(raw: RawIpam) -> Result<Ipam, CniError> {
    let legacy = [
        ("subnet", raw.subnet.is_some()),
        ("rangeStart", raw.range_start.is_some()),
        ("rangeEnd", raw.range_end.is_some()),
        ("gateway", raw.gateway.is_some()),
    ]
    .into_iter()
    .find_map(|(field, present)| present.then_some(field));
    let mode = match raw.mode {
        ModeName::Local => {
            for (field, present) in [
                ("pool", raw.pool.is_some()),
                ("kubeconfig", raw.kubeconfig.is_some()),
            ] {
                if present {
                    return Err(CniError::config(format!(
                        "ipam.{field}: only used with \"mode\": \"cluster\""
                    )));
                }
            }
            let ranges = match (raw.ranges, raw.subnet) {
                (Some(_), _) if legacy.is_some() => {
                    return Err(CniError::config(format!(
                        "ipam.{}: give either ranges or the legacy subnet/rangeStart/rangeEnd/gateway, not both",
                        legacy.unwrap_or_default()
                    )));
                }
                (Some(sets), _) => {
                    if sets.is_empty() {
                        return Err(CniError::config(
                            "ipam.ranges: needs at least one range set",
                        ));
                    }
                    let mut checked = Vec::with_capacity(sets.len());
                    for (index, set) in sets.into_iter().enumerate() {
                        checked.push(range_set(set, &format!("ipam.ranges[{index}]"))?);
                    }
                    checked
                }
                (None, Some(subnet)) => vec![RangeSet(vec![range(
                    RawRange {
                        subnet,
                        range_start: raw.range_start,
                        range_end: raw.range_end,
                        gateway: raw.gateway,
                    },
                    "ipam",
                )?])],
                (None, None) => {
                    return Err(CniError::config(
                        "ipam.ranges: required in local mode (or the legacy ipam.subnet)",
                    ));
                }
            };
            check_sets_disjoint(&ranges)?;
            let strategy = match (raw.strategy, raw.allocation_strategy) {
                (Some(_), Some(_)) => {
                    return Err(CniError::config(
                        "ipam.allocation_strategy: give either strategy or allocation_strategy, not both",
                    ));
                }
                (Some(strategy), None) => {
                    check_plugin_name("ipam.strategy.plugin", &strategy.plugin)?;
                    strategy
                }
                (None, Some(name)) => StrategyConf {
                    plugin: strategy_plugin("ipam.allocation_strategy", &name)?,
                    config: BTreeMap::new(),
                },
                (None, None) => StrategyConf::default(),
            };
            let default_data_dir = if raw.kind == HEADCNI_IPAM {
                HEADCNI_DATA_DIR
            } else {
                DEFAULT_DATA_DIR
            };
            Mode::Local {
                ranges,
                data_dir: absolute("dataDir", raw.data_dir, default_data_dir)?,
                strategy,
            }
        }
        ModeName::Cluster => {
            let unused = [
                ("ranges", raw.ranges.is_some()),
                (legacy.unwrap_or_default(), legacy.is_some()),
                ("dataDir", raw.data_dir.is_some()),
                ("strategy", raw.strategy.is_some()),
                ("allocation_strategy", raw.allocation_strategy.is_some()),
            ];
            if let Some((field, _)) = unused.iter().find(|(_, present)| *present) {
                return Err(CniError::config(format!(
                    "ipam.{field}: not used in cluster mode: the IPPool defines addresses and strategy"
                )));
            }
            let pool = raw
                .pool
                .filter(|pool| !pool.is_empty())
                .ok_or_else(|| CniError::config("ipam.pool: required in cluster mode"))?;
            if !is_object_name(&pool) {
                return Err(CniError::config(format!(
                    "ipam.pool: {} is not an IPPool name (lowercase letters, digits, '-', '.'; at most 253)",
                    quoted(&pool)
                )));
            }
            let kubeconfig = raw
                .kubeconfig
                .ok_or_else(|| CniError::config("ipam.kubeconfig: required in cluster mode"))?;
            Mode::Cluster { pool, kubeconfig }
        }
    };
    Ok(Ipam {
        routes: raw.routes,
        plugins_dir: absolute("pluginsDir", raw.plugins_dir, DEFAULT_PLUGINS_DIR)?,
        cache_dir: absolute("cacheDir", raw.cache_dir, DEFAULT_CACHE_DIR)?,
        mode,
    })
}

/// A directory field, or its default. Relative paths are refused: they
/// would resolve against whatever working directory the runtime has.
fn absolute(field: &str, path: Option<PathBuf>, default: &str) -> Result<PathBuf, CniError> {
    let path = path.unwrap_or_else(|| default.into());
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(CniError::config(format!(
            "ipam.{field}: {} is not an absolute path",
            quoted(&path.to_string_lossy())
        )))
    }
}

/// A strategy plugin's name, which becomes `<pluginsDir>/<name>.wasm`: a
/// name, never a path.
pub fn check_plugin_name(field: &str, name: &str) -> Result<(), CniError> {
    if is_plugin_name(name) {
        return Ok(());
    }
    Err(CniError::config(format!(
        "{field}: {} is not a plugin name (1 to {MAX_PLUGIN_NAME} letters, digits, '-', '_', '.', not starting with '.')",
        quoted(name)
    )))
}

/// The plugin behind HeadCNI's `allocation_strategy`: its three built-in
/// names are knit's strategies, any other value names a strategy plugin.
fn strategy_plugin(field: &str, name: &str) -> Result<String, CniError> {
    let plugin = match name {
        "sequential" | "random" | "dense-pack" => format!("ipam-{name}"),
        custom => custom.to_string(),
    };
    check_plugin_name(field, &plugin)?;
    Ok(plugin)
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_object_name(name: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '-' | '.'))
}

fn range_set(raw: Vec<RawRange>, path: &str) -> Result<RangeSet, CniError> {
    if raw.is_empty() {
        return Err(CniError::config(format!(
            "{path}: needs at least one range"
        )));
    }
    let mut ranges: Vec<Range> = Vec::with_capacity(raw.len());
    for (index, raw_range) in raw.into_iter().enumerate() {
        let range = range(raw_range, &format!("{path}[{index}]"))?;
        for (other_index, other) in ranges.iter().enumerate() {
            if other.subnet.network.is_ipv6() != range.subnet.network.is_ipv6() {
                return Err(CniError::config(format!(
                    "{path}: mixed address families ({} and {})",
                    other.subnet, range.subnet
                )));
            }
            if other.subnet.overlaps(&range.subnet) {
                return Err(CniError::config(format!(
                    "{path}[{index}].subnet: {} overlaps {} of {path}[{other_index}]; the ranges of a set need disjoint subnets",
                    range.subnet, other.subnet
                )));
            }
        }
        ranges.push(range);
    }
    let set = RangeSet(ranges);
    // Offsets are u64: refuse here what cannot be laid out, not at ADD.
    set.address_space()
        .map_err(|why| CniError::config(format!("{path}: {why}")))?;
    Ok(set)
}

/// host-local's canonical range: gateway and rangeStart default to the
/// address after the network's, rangeEnd to the last usable one.
fn range(raw: RawRange, path: &str) -> Result<Range, CniError> {
    let subnet = raw.subnet;
    if subnet.host_bits() < 2 {
        return Err(CniError::config(format!(
            "{path}.subnet: {subnet} is too small to allocate from"
        )));
    }
    let inside = |field: &str, address: Option<IpAddr>, default: IpAddr| {
        let address = address.unwrap_or(default);
        if subnet.contains(&address) {
            Ok(address)
        } else {
            Err(CniError::config(format!(
                "{path}.{field}: {address} is not in subnet {subnet}"
            )))
        }
    };
    let start = inside("rangeStart", raw.range_start, subnet.nth(1))?;
    if ip_value(&start) - ip_value(&subnet.network) >= u128::from(MAX_OFFSETS_PER_CIDR) {
        return Err(CniError::config(format!(
            "{path}.rangeStart: {}",
            beyond_offsets(&start, &subnet)
        )));
    }
    let end = inside("rangeEnd", raw.range_end, subnet.last_usable())?;
    if ip_value(&start) > ip_value(&end) {
        return Err(CniError::config(format!(
            "{path}.rangeStart: {start} is after rangeEnd {end}"
        )));
    }
    let gateway = raw.gateway.unwrap_or(subnet.nth(1));
    if gateway.is_ipv6() != subnet.network.is_ipv6() {
        return Err(CniError::config(format!(
            "{path}.gateway: {gateway} is not of the address family of {subnet}"
        )));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

/// An address may belong to one range set only (host-local's rule):
/// `rangeStart ..= rangeEnd` of ranges in different sets are disjoint.
fn check_sets_disjoint(sets: &[RangeSet]) -> Result<(), CniError> {
    for (index, set) in sets.iter().enumerate() {
        for (range_index, a) in set.0.iter().enumerate() {
            for (other_index, other) in sets[..index].iter().enumerate() {
                // Inclusive bounds: no `end + 1` to overflow at the top.
                if let Some((other_range, b)) = other.0.iter().enumerate().find(|(_, b)| {
                    a.contains(&b.start) || a.contains(&b.end) || b.contains(&a.start)
                }) {
                    return Err(CniError::config(format!(
                        "ipam.ranges[{index}][{range_index}]: {}-{} overlaps {}-{} of ipam.ranges[{other_index}][{other_range}]; an address may belong to one range set only",
                        a.start, a.end, b.start, b.end
                    )));
                }
            }
        }
    }
    Ok(())
}

fn is_safe_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `dst` of a route: an address and a prefix length (host bits allowed, as
/// in host-local).
fn ip_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    let valid = text.split_once('/').is_some_and(|(address, prefix)| {
        match (address.parse::<IpAddr>(), prefix.parse::<u32>()) {
            (Ok(address), Ok(prefix)) => prefix <= bits_of(&address),
            _ => false,
        }
    });
    if valid {
        Ok(text)
    } else {
        Err(serde::de::Error::custom(format!(
            "{text:?} is not an address/prefix such as 10.0.0.0/8"
        )))
    }
}

/// `ipam.ranges[0][1].subnet` from serde_path_to_error's path.
fn field_path(path: &serde_path_to_error::Path) -> String {
    format!("ipam{}", suffix(path))
}

/// `.ranges[0].subnet`: a path as the error names it, after its section.
pub fn suffix(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Seq { index } => format!("[{index}]"),
            Segment::Map { key } => format!(".{key}"),
            Segment::Enum { variant } => format!(".{variant}"),
            Segment::Unknown => String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn parse_ipam(ipam: Value) -> Result<NetConf, CniError> {
        parse(
            &serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "net", "ipam": ipam}))
                .unwrap(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ranges(conf: &NetConf) -> &[RangeSet] {
        match &conf.ipam.mode {
            Mode::Local { ranges, .. } => ranges,
            Mode::Cluster { .. } => panic!("local mode expected"),
        }
    }

    #[test]
    fn host_local_defaults() {
        let conf = parse_ipam(json!({"type": "knit-ipam", "subnet": "10.9.0.0/24"})).unwrap();
        assert_eq!(
            ranges(&conf),
            [RangeSet(vec![Range {
                subnet: Cidr {
                    network: ip("10.9.0.0"),
                    prefix: 24
                },
                start: ip("10.9.0.1"),
                end: ip("10.9.0.254"),
                gateway: ip("10.9.0.1"),
            }])]
        );
        assert_eq!(conf.ipam.plugins_dir, PathBuf::from(DEFAULT_PLUGINS_DIR));
        assert_eq!(conf.ipam.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        let Mode::Local {
            data_dir, strategy, ..
        } = &conf.ipam.mode
        else {
            unreachable!()
        };
        assert_eq!(data_dir, &PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(strategy, &StrategyConf::default());
        // IPv6 has no broadcast: the last address is usable.
        let v6 = parse_ipam(json!({"type": "k", "ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        assert_eq!(ranges(&v6)[0].0[0].end, ip("fd00::ff"));
    }

    /// The seed's `headcni-ipam` section, verbatim but for the strategy.
    #[rstest]
    #[case::sequential("sequential", "ipam-sequential")]
    #[case::random("random", "ipam-random")]
    #[case::dense_pack("dense-pack", "ipam-dense-pack")]
    #[case::custom_plugin_by_name("ipam-mine", "ipam-mine")]
    fn headcni_ipam_names_its_strategy(#[case] allocation: &str, #[case] plugin: &str) {
        let conf = parse_ipam(json!({
            "type": "headcni-ipam",
            "subnet": "10.244.0.0/24",
            "gateway": "10.244.0.1",
            "allocation_strategy": allocation,
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
        }))
        .unwrap();
        let Mode::Local {
            data_dir, strategy, ..
        } = &conf.ipam.mode
        else {
            unreachable!()
        };
        assert_eq!(strategy.plugin, plugin);
        assert_eq!(data_dir, &PathBuf::from(HEADCNI_DATA_DIR));
        assert_eq!(conf.ipam.routes.len(), 1);
    }

    #[rstest]
    #[case::no_ranges(json!({"type": "k"}), "ipam.ranges: required")]
    #[case::no_range_sets(
        json!({"type": "k", "ranges": []}),
        "ipam.ranges: needs at least one range set",
    )]
    #[case::an_empty_range_set(
        json!({"type": "k", "ranges": [[]]}),
        "ipam.ranges[0]: needs at least one range",
    )]
    #[case::ranges_and_a_legacy_field(
        json!({"type": "k", "ranges": [[{"subnet": "10.0.0.0/24"}]], "gateway": "10.0.0.1"}),
        "ipam.gateway: give either ranges or the legacy",
    )]
    #[case::mixed_families_in_a_set(
        json!({"type": "k", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
        "ipam.ranges[0]: mixed address families",
    )]
    #[case::overlapping_subnets_in_a_set(
        json!({"type": "k", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}),
        "ipam.ranges[0][1].subnet: 10.0.0.0/25 overlaps 10.0.0.0/24",
    )]
    #[case::overlapping_sets(
        json!({"type": "k", "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}),
        "ipam.ranges[1][0]: 10.0.0.1-10.0.0.126 overlaps 10.0.0.1-10.0.0.254 of ipam.ranges[0][0]",
    )]
    #[case::sets_sharing_one_address(
        json!({"type": "k", "ranges": [
            [{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99"}],
            [{"subnet": "10.1.0.0/24"}, {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.99"}],
        ]}),
        "ipam.ranges[1][1]: 10.0.0.99-10.0.0.254 overlaps 10.0.0.1-10.0.0.99 of ipam.ranges[0][0]",
    )]
    #[case::overlapping_sets_at_the_top_of_ipv6(
        json!({"type": "k", "ranges": [
            [{"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"}],
            [{"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"}],
        ]}),
        "ipam.ranges[1][0]: ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff01-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff overlaps",
    )]
    #[case::overlapping_ipv6_subnets_in_a_set(
        json!({"type": "k", "ranges": [[{"subnet": "fd00::/64"}, {"subnet": "fd00::/120"}]]}),
        "ipam.ranges[0][1].subnet: fd00::/120 overlaps fd00::/64",
    )]
    #[case::range_start_beyond_the_offsets(
        json!({"type": "k", "ranges": [[{"subnet": "fd00::/64", "rangeStart": "fd00::1:0:0:0"}]]}),
        "ipam.ranges[0][0].rangeStart: fd00::1:0:0:0 is beyond the first 2^48 addresses of fd00::/64",
    )]
    #[case::range_start_after_range_end(
        json!({"type": "k", "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}),
        "ipam.rangeStart: 10.0.0.9 is after rangeEnd 10.0.0.8",
    )]
    #[case::subnet_with_host_bits(
        json!({"type": "k", "subnet": "10.0.0.5/24"}),
        "ipam.subnet: \"10.0.0.5/24\" has host bits set",
    )]
    #[case::pool_in_local_mode(
        json!({"type": "k", "subnet": "10.0.0.0/24", "pool": "p"}),
        "ipam.pool: only used with",
    )]
    #[case::subnet_in_cluster_mode(
        json!({"type": "k", "mode": "cluster", "pool": "p", "kubeconfig": "/k", "subnet": "10.0.0.0/24"}),
        "ipam.subnet: not used in cluster mode",
    )]
    #[case::cluster_mode_without_pool(
        json!({"type": "k", "mode": "cluster", "kubeconfig": "/k"}),
        "ipam.pool: required",
    )]
    #[case::empty_plugin_name(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": ""}}),
        "ipam.strategy.plugin",
    )]
    #[case::unknown_strategy_field(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"name": "x"}}),
        "ipam.strategy.name: unknown field",
    )]
    #[case::no_type(
        json!({"subnet": "10.0.0.0/24"}),
        "ipam: missing field `type`",
    )]
    #[case::plugin_name_that_is_an_absolute_path(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": "/opt/evil/x"}}),
        "ipam.strategy.plugin: \"/opt/evil/x\" is not a plugin name",
    )]
    #[case::plugin_name_that_climbs_out(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": "../../tmp/x"}}),
        "ipam.strategy.plugin: \"../../tmp/x\" is not a plugin name",
    )]
    #[case::plugin_name_dot_dot(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": ".."}}),
        "ipam.strategy.plugin: \"..\" is not a plugin name",
    )]
    #[case::plugin_name_starting_with_a_dot(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": ".hidden"}}),
        "ipam.strategy.plugin",
    )]
    #[case::plugin_name_too_long(
        json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": "x".repeat(129)}}),
        "ipam.strategy.plugin",
    )]
    #[case::relative_data_dir(
        json!({"type": "k", "subnet": "10.0.0.0/24", "dataDir": "state"}),
        "ipam.dataDir: \"state\" is not an absolute path",
    )]
    #[case::relative_plugins_dir(
        json!({"type": "k", "subnet": "10.0.0.0/24", "pluginsDir": "./plugins"}),
        "ipam.pluginsDir: \"./plugins\" is not an absolute path",
    )]
    #[case::empty_cache_dir(
        json!({"type": "k", "subnet": "10.0.0.0/24", "cacheDir": ""}),
        "ipam.cacheDir: \"\" is not an absolute path",
    )]
    #[case::allocation_strategy_beside_strategy(
        json!({"type": "headcni-ipam", "subnet": "10.0.0.0/24", "allocation_strategy": "random", "strategy": {}}),
        "ipam.allocation_strategy: give either strategy or allocation_strategy, not both",
    )]
    #[case::allocation_strategy_that_is_a_path(
        json!({"type": "headcni-ipam", "subnet": "10.0.0.0/24", "allocation_strategy": "../x"}),
        "ipam.allocation_strategy: \"../x\" is not a plugin name",
    )]
    #[case::allocation_strategy_that_is_not_a_string(
        json!({"type": "headcni-ipam", "subnet": "10.0.0.0/24", "allocation_strategy": 3}),
        "ipam.allocation_strategy: invalid type",
    )]
    #[case::allocation_strategy_in_cluster_mode(
        json!({"type": "k", "mode": "cluster", "pool": "p", "kubeconfig": "/k", "allocation_strategy": "random"}),
        "ipam.allocation_strategy: not used in cluster mode",
    )]
    #[case::pool_that_is_not_an_object_name(
        json!({"type": "k", "mode": "cluster", "pool": "../pods", "kubeconfig": "/k"}),
        "ipam.pool: \"../pods\" is not an IPPool name",
    )]
    fn cross_field_rules_name_the_field(#[case] ipam: Value, #[case] expected: &str) {
        let msg = parse_ipam(ipam.clone()).unwrap_err().msg;
        assert!(msg.starts_with(expected), "{ipam}: {msg}");
    }

    #[rstest]
    #[case::built_in("ipam-sequential")]
    #[case::underscore_and_dot("my_plugin.v2")]
    #[case::short_mixed_case("A1")]
    #[case::at_the_length_limit(&"x".repeat(128))]
    fn plugin_names_that_are_names_are_accepted(#[case] plugin: &str) {
        let conf = parse_ipam(
            json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": plugin}}),
        )
        .unwrap();
        let Mode::Local { strategy, .. } = conf.ipam.mode else {
            unreachable!()
        };
        assert_eq!(strategy.plugin, plugin);
    }

    #[test]
    fn long_names_are_echoed_only_in_part() {
        let long = "n".repeat(10_000);
        let stdin = json!({"cniVersion": "1.0.0", "name": long, "ipam": {"type": "k", "subnet": "10.0.0.0/24"}});
        let error = parse(&serde_json::to_vec(&stdin).unwrap()).unwrap_err();
        assert!(error.msg.len() < 300, "{}", error.msg);
        assert!(
            error.msg.contains(&format!("\"{}\"…", "n".repeat(128))),
            "{}",
            error.msg
        );
        let plugin = format!("../{}", "p".repeat(10_000));
        let error = parse_ipam(
            json!({"type": "k", "subnet": "10.0.0.0/24", "strategy": {"plugin": plugin}}),
        )
        .unwrap_err();
        assert!(error.msg.len() < 300, "{}", error.msg);
        assert!(error.msg.ends_with(')'), "{}", error.msg);
    }

    #[test]
    fn cluster_mode_and_gc_attachments() {
        let stdin = json!({
            "cniVersion": "1.1.0", "name": "net",
            "ipam": {"type": "k", "mode": "cluster", "pool": "pods", "kubeconfig": "/etc/knit/kubeconfig"},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        });
        let conf = parse(&serde_json::to_vec(&stdin).unwrap()).unwrap();
        assert_eq!(
            conf.ipam.mode,
            Mode::Cluster {
                pool: "pods".into(),
                kubeconfig: "/etc/knit/kubeconfig".into()
            }
        );
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn network_name_and_version() {
        let with = |value: Value| parse(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        let ipam = json!({"type": "k", "subnet": "10.0.0.0/24"});
        let error = with(json!({"cniVersion": "1.0.0", "name": "../etc", "ipam": ipam}));
        assert_eq!(
            (error.code, error.msg.starts_with("name: \"../etc\"")),
            (Code::InvalidConfig, true)
        );
        let error = with(json!({"name": "n", "ipam": ipam}));
        assert_eq!(error.msg, "cniVersion: required");
        let error = with(json!({"cniVersion": "0.2.0", "name": "n", "ipam": ipam}));
        assert_eq!(error.code, Code::IncompatibleVersion);
        assert_eq!(
            requested_version(br#"{"cniVersion": "0.4.0", "name": 5}"#),
            Some(CniVersion::V0_4_0)
        );
        assert_eq!(parse(b"[1]").unwrap_err().code, Code::Decode);
    }
}
