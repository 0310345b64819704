//! HeadCNI's network configuration: the seed's top-level fields
//! (`headscale_url`, `tailscale_socket`, `pod_cidr`, `service_cidr`, `mtu`,
//! `enable_ipv6`, `enable_network_policy`, `dns`) and the `ipam` section,
//! which belongs to the delegated IPAM plugin and is only checked for its
//! `type` here. Parsed strictly: an unknown top-level field or a bad value is
//! an error that names the field. Pure.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::cidr::Cidr;
use crate::cni::config::{Attachment, check_plugin_name, json_object, network_header, suffix};
use crate::cni::error::{CniError, quoted};
use crate::cni::protocol::CniVersion;

pub const DEFAULT_TAILSCALE_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";
pub const DEFAULT_MTU: u32 = 1420;
/// The smallest MTU IPv4 allows, and IPv6's (RFC 8200).
const MIN_MTU_V4: u32 = 68;
const MIN_MTU_V6: u32 = 1280;
/// The most a veth takes (`ETH_MAX_MTU`).
const MAX_MTU: u32 = 65535;

#[derive(Clone, Debug, PartialEq)]
pub struct HeadCniConf {
    pub cni_version: CniVersion,
    pub name: String,
    /// Read and checked here; the node agent joins it (HeadCNI part 2).
    pub headscale_url: Option<String>,
    pub tailscale_socket: PathBuf,
    /// One CIDR per address family, IPv4 first.
    pub pod_cidr: Vec<Cidr>,
    pub service_cidr: Vec<Cidr>,
    /// The delegated IPAM plugin: an executable in `CNI_PATH`.
    pub ipam_type: String,
    pub dns: Dns,
    pub mtu: u32,
    pub enable_ipv6: bool,
    /// Read and reported; knit does not enforce NetworkPolicy (README).
    pub enable_network_policy: bool,
    /// CHECK, and the chained plugins after this one: what ADD returned.
    pub prev_result: Option<Value>,
    /// GC only: the attachments the runtime still uses.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The result's `dns`, as the CNI spec names its fields.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// Every top-level field a HeadCNI configuration may have: the seed's, the
/// spec's, and those libcni adds (`args`, `runtimeConfig`, `prevResult`,
/// `cni.dev/valid-attachments` and its old name `cni.dev/attachments`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    _cni_version: Value,
    #[serde(rename = "name")]
    _name: Value,
    #[serde(rename = "type")]
    _type: String,
    headscale_url: Option<String>,
    tailscale_socket: Option<PathBuf>,
    pod_cidr: Option<String>,
    service_cidr: Option<String>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    mtu: Option<u32>,
    enable_ipv6: Option<bool>,
    enable_network_policy: Option<bool>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    /// What libcni also sends the list as (the spec's first name for it).
    #[serde(rename = "cni.dev/attachments")]
    _attachments: Option<Value>,
    #[serde(rename = "args")]
    _args: Option<Value>,
    #[serde(rename = "runtimeConfig")]
    _runtime_config: Option<Value>,
    #[serde(rename = "capabilities")]
    _capabilities: Option<Value>,
}

/// Of `ipam`, only `type` is HeadCNI's to read; the rest is the IPAM
/// plugin's, which checks it.
#[derive(Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    kind: String,
}

pub fn parse(stdin: &[u8]) -> Result<HeadCniConf, CniError> {
    let object = json_object(stdin)?;
    let (cni_version, name) = network_header(&object)?;
    let raw: RawConf =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|error| {
            let path = suffix(error.path());
            let field = path.trim_start_matches('.');
            let field = if field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            };
            CniError::config(format!("{field}{}", error.inner()))
        })?;
    let enable_ipv6 = raw.enable_ipv6.unwrap_or(false);
    let ipam_type = raw
        .ipam
        .ok_or_else(|| CniError::config("ipam: required (host-local or headcni-ipam)"))?
        .kind;
    // An executable looked up in CNI_PATH: a name, never a path.
    check_plugin_name("ipam.type", &ipam_type)?;
    let pod_cidr = cidrs(
        "pod_cidr",
        raw.pod_cidr
            .as_deref()
            .ok_or_else(|| CniError::config("pod_cidr: required (this node's pod CIDR)"))?,
        enable_ipv6,
        enable_ipv6,
    )?;
    let service_cidr = match raw.service_cidr.as_deref() {
        Some(text) => cidrs("service_cidr", text, enable_ipv6, false)?,
        None => Vec::new(),
    };
    let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
    let min_mtu = if enable_ipv6 { MIN_MTU_V6 } else { MIN_MTU_V4 };
    if !(min_mtu..=MAX_MTU).contains(&mtu) {
        return Err(CniError::config(format!(
            "mtu: {mtu} is out of range ({min_mtu} to {MAX_MTU}{})",
            if enable_ipv6 { " with enable_ipv6" } else { "" }
        )));
    }
    if let Some(url) = &raw.headscale_url {
        check_url(url)?;
    }
    let tailscale_socket = raw
        .tailscale_socket
        .unwrap_or_else(|| DEFAULT_TAILSCALE_SOCKET.into());
    if !tailscale_socket.is_absolute() {
        return Err(CniError::config(format!(
            "tailscale_socket: {} is not an absolute path",
            quoted(&tailscale_socket.to_string_lossy())
        )));
    }
    let dns = raw.dns.unwrap_or_default();
    for (field, values) in [("dns.search", &dns.search), ("dns.options", &dns.options)] {
        if let Some(bad) = values
            .iter()
            .find(|value| value.is_empty() || value.contains(char::is_whitespace))
        {
            return Err(CniError::config(format!(
                "{field}: {} is empty or has whitespace",
                quoted(bad)
            )));
        }
    }
    Ok(HeadCniConf {
        cni_version,
        name,
        headscale_url: raw.headscale_url,
        tailscale_socket,
        pod_cidr,
        service_cidr,
        ipam_type,
        dns,
        mtu,
        enable_ipv6,
        enable_network_policy: raw.enable_network_policy.unwrap_or(true),
        prev_result: raw.prev_result,
        valid_attachments: raw.valid_attachments,
    })
}

/// One CIDR, or an IPv4 and an IPv6 one separated by a comma (dual stack,
/// as `--cluster-cidr` takes them). IPv6 needs `enable_ipv6`; `both` asks
/// for one of each family.
fn cidrs(field: &str, text: &str, enable_ipv6: bool, both: bool) -> Result<Vec<Cidr>, CniError> {
    let mut parsed = Vec::new();
    for part in text.split(',') {
        let cidr =
            Cidr::parse(part.trim()).map_err(|why| CniError::config(format!("{field}: {why}")))?;
        if parsed
            .iter()
            .any(|other: &Cidr| other.network.is_ipv6() == cidr.network.is_ipv6())
        {
            return Err(CniError::config(format!(
                "{field}: at most one CIDR per address family, got {}",
                quoted(text)
            )));
        }
        parsed.push(cidr);
    }
    parsed.sort_by_key(|cidr| cidr.network.is_ipv6());
    let has_v6 = parsed.iter().any(|cidr| cidr.network.is_ipv6());
    let has_v4 = parsed.iter().any(|cidr| cidr.network.is_ipv4());
    if has_v6 && !enable_ipv6 {
        return Err(CniError::config(format!(
            "{field}: {} has an IPv6 CIDR but enable_ipv6 is false",
            quoted(text)
        )));
    }
    if both && !(has_v4 && has_v6) {
        return Err(CniError::config(format!(
            "{field}: enable_ipv6 needs an IPv4 and an IPv6 CIDR (\"10.244.0.0/24,fd00:10:244::/64\"), got {}",
            quoted(text)
        )));
    }
    Ok(parsed)
}

/// `headscale_url`: an http(s) URL with a host, nothing after the path.
fn check_url(text: &str) -> Result<(), CniError> {
    let bad = |why: &str| CniError::config(format!("headscale_url: {} {why}", quoted(text)));
    let url = reqwest::Url::parse(text).map_err(|error| bad(&format!("is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("may not carry a query, fragment or user"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::Code;
    use rstest::rstest;
    use serde_json::json;

    /// The seed's first conflist (host-local), verbatim.
    pub(crate) fn seed_host_local() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "tailscale-cni",
            "type": "headcni",
            "headscale_url": "https://headscale.company.com",
            "tailscale_socket": "/var/run/tailscale/tailscaled.sock",
            "pod_cidr": "10.244.0.0/24",
            "service_cidr": "10.96.0.0/16",
            "ipam": {
                "type": "host-local",
                "subnet": "10.244.0.0/24",
                "rangeStart": "10.244.0.10",
                "rangeEnd": "10.244.0.254",
                "gateway": "10.244.0.1"
            },
            "dns": {
                "nameservers": ["10.96.0.10"],
                "search": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                "options": ["ndots:5"]
            },
            "mtu": 1420,
            "enable_ipv6": false,
            "enable_network_policy": true
        })
    }

    fn parse_value(value: &Value) -> Result<HeadCniConf, CniError> {
        parse(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn the_seed_conflist_is_read_whole() {
        let conf = parse_value(&seed_host_local()).unwrap();
        assert_eq!(conf.name, "tailscale-cni");
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.pod_cidr, [Cidr::parse("10.244.0.0/24").unwrap()]);
        assert_eq!(conf.service_cidr, [Cidr::parse("10.96.0.0/16").unwrap()]);
        assert_eq!(conf.ipam_type, "host-local");
        assert_eq!(conf.mtu, 1420);
        assert_eq!(
            conf.dns.nameservers,
            ["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(conf.dns.options, ["ndots:5"]);
        assert!(conf.enable_network_policy);
        assert!(!conf.enable_ipv6);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let mut seed = seed_host_local();
        for field in [
            "mtu",
            "tailscale_socket",
            "enable_network_policy",
            "headscale_url",
            "dns",
            "service_cidr",
        ] {
            seed.as_object_mut().unwrap().remove(field);
        }
        let conf = parse_value(&seed).unwrap();
        assert_eq!(conf.mtu, DEFAULT_MTU);
        assert_eq!(
            conf.tailscale_socket,
            PathBuf::from(DEFAULT_TAILSCALE_SOCKET)
        );
        assert!(conf.enable_network_policy);
        assert!(conf.dns.is_empty());
        assert!(conf.service_cidr.is_empty());
    }

    #[test]
    fn dual_stack_takes_one_cidr_per_family_ipv4_first() {
        let mut seed = seed_host_local();
        seed["enable_ipv6"] = json!(true);
        seed["pod_cidr"] = json!("fd00:10:244::/64, 10.244.0.0/24");
        seed["service_cidr"] = json!("10.96.0.0/16,fd00:10:96::/112");
        let conf = parse_value(&seed).unwrap();
        assert!(conf.pod_cidr[0].network.is_ipv4() && conf.pod_cidr[1].network.is_ipv6());
        assert_eq!(conf.service_cidr.len(), 2);
    }

    #[rstest]
    #[case::unknown_field("podCidr", json!("10.0.0.0/8"), "unknown field `podCidr`")]
    #[case::mtu_not_a_number("mtu", json!("1420"), "mtu: invalid type: string \"1420\"")]
    #[case::mtu_too_small("mtu", json!(60), "mtu: 60 is out of range (68 to 65535)")]
    #[case::mtu_too_large("mtu", json!(70000), "mtu: 70000 is out of range")]
    #[case::negative_mtu("mtu", json!(-1), "mtu: invalid value: integer `-1`")]
    #[case::pod_cidr_not_a_cidr("pod_cidr", json!("10.244.0.0"), "pod_cidr: ")]
    #[case::pod_cidr_with_host_bits("pod_cidr", json!("10.244.0.1/24"), "pod_cidr: ")]
    #[case::pod_cidr_ipv6_without_enable("pod_cidr", json!("fd00::/64"), "pod_cidr: \"fd00::/64\" has an IPv6 CIDR but enable_ipv6 is false")]
    #[case::pod_cidr_two_of_a_family("pod_cidr", json!("10.1.0.0/24,10.2.0.0/24"), "pod_cidr: at most one CIDR per address family")]
    #[case::service_cidr_not_a_cidr("service_cidr", json!("services"), "service_cidr: ")]
    #[case::enable_ipv6_not_a_bool("enable_ipv6", json!("yes"), "enable_ipv6: invalid type")]
    #[case::enable_ipv6_without_an_ipv6_cidr("enable_ipv6", json!(true), "pod_cidr: enable_ipv6 needs an IPv4 and an IPv6 CIDR")]
    #[case::network_policy_not_a_bool("enable_network_policy", json!(1), "enable_network_policy: invalid type")]
    #[case::headscale_url_not_a_url("headscale_url", json!("headscale"), "headscale_url: \"headscale\" is not a URL")]
    #[case::headscale_url_not_http("headscale_url", json!("ftp://h.example"), "headscale_url: \"ftp://h.example\" is not an http or https URL")]
    #[case::headscale_url_with_a_query("headscale_url", json!("https://h.example/?key=1"), "may not carry a query")]
    #[case::tailscale_socket_relative("tailscale_socket", json!("tailscaled.sock"), "tailscale_socket: \"tailscaled.sock\" is not an absolute path")]
    #[case::dns_unknown_field("dns", json!({"servers": []}), "dns.servers: unknown field `servers`")]
    #[case::dns_nameserver_not_an_address("dns", json!({"nameservers": ["dns.local"]}), "dns.nameservers[0]: invalid IP address syntax")]
    #[case::dns_search_with_a_space("dns", json!({"search": ["a b"]}), "dns.search: \"a b\" is empty or has whitespace")]
    #[case::ipam_missing("ipam", Value::Null, "ipam: required")]
    #[case::ipam_type_a_path("ipam", json!({"type": "../../bin/sh"}), "ipam.type: \"../../bin/sh\" is not a plugin name")]
    #[case::ipam_without_type("ipam", json!({"subnet": "10.244.0.0/24"}), "ipam: missing field `type`")]
    fn a_bad_field_is_named(#[case] field: &str, #[case] value: Value, #[case] expected: &str) {
        let mut seed = seed_host_local();
        if value.is_null() {
            seed.as_object_mut().unwrap().remove(field);
        } else {
            seed[field] = value;
        }
        let error = parse_value(&seed).unwrap_err();
        assert_eq!(error.code, Code::InvalidConfig, "{error:?}");
        assert!(
            error.msg.contains(expected),
            "{:?} does not contain {expected:?}",
            error.msg
        );
    }

    #[test]
    fn pod_cidr_is_required() {
        let mut seed = seed_host_local();
        seed.as_object_mut().unwrap().remove("pod_cidr");
        assert_eq!(
            parse_value(&seed).unwrap_err().msg,
            "pod_cidr: required (this node's pod CIDR)"
        );
    }

    #[test]
    fn libcni_fields_are_accepted() {
        let mut seed = seed_host_local();
        seed["prevResult"] = json!({"cniVersion": "1.0.0", "ips": []});
        seed["runtimeConfig"] = json!({"portMappings": []});
        seed["args"] = json!({"cni": {}});
        seed["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        seed["cni.dev/attachments"] = seed["cni.dev/valid-attachments"].clone();
        let conf = parse_value(&seed).unwrap();
        assert!(conf.prev_result.is_some());
        assert_eq!(conf.valid_attachments.unwrap().len(), 1);
    }
}
