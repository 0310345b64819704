//! What ADD and VERSION print, shaped for the requested spec version like
//! host-local's output.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::config::Route;
use super::protocol::CniVersion;

/// One address handed to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    /// Prefix length of the subnet the address is in.
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// One interface of the result: the host's end has no `sandbox`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

/// The ADD result of an IPAM plugin: `ips`, `routes` (left out when none,
/// as host-local does) and an empty `dns`. Before 1.0.0 each IP also says
/// its `version`.
pub fn add_result(version: CniVersion, ips: &[IpConfig], routes: &[Route]) -> Value {
    interface_result(
        version,
        &[],
        &ips.iter().map(|ip| (ip, None)).collect::<Vec<_>>(),
        routes,
        json!({}),
    )
}

/// The ADD result of a main plugin: its `interfaces`, and each IP with the
/// index of the interface it is on.
pub fn interface_result(
    version: CniVersion,
    interfaces: &[Interface],
    ips: &[(&IpConfig, Option<usize>)],
    routes: &[Route],
    dns: Value,
) -> Value {
    let ips: Vec<Value> = ips
        .iter()
        .map(|(ip, interface)| {
            let mut entry = serde_json::Map::new();
            if version < CniVersion::V1_0_0 {
                let family = if ip.address.is_ipv4() { "4" } else { "6" };
                entry.insert("version".into(), family.into());
            }
            entry.insert(
                "address".into(),
                format!("{}/{}", ip.address, ip.prefix).into(),
            );
            if let Some(gateway) = ip.gateway {
                entry.insert("gateway".into(), gateway.to_string().into());
            }
            if let Some(interface) = interface {
                entry.insert("interface".into(), (*interface).into());
            }
            Value::Object(entry)
        })
        .collect();
    let mut result = json!({ "cniVersion": version.as_str() });
    if !interfaces.is_empty() {
        let interfaces: Vec<Value> = interfaces
            .iter()
            .map(|interface| {
                let mut entry = json!({ "name": interface.name, "mac": interface.mac });
                if let Some(sandbox) = &interface.sandbox {
                    entry["sandbox"] = sandbox.clone().into();
                }
                entry
            })
            .collect();
        result["interfaces"] = interfaces.into();
    }
    result["ips"] = ips.into();
    if !routes.is_empty() {
        result["routes"] = json!(routes);
    }
    result["dns"] = dns;
    result
}

pub fn version_result() -> Value {
    json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": CniVersion::supported(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_version() {
        let ips = [
            IpConfig {
                address: "10.1.2.3".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.1.2.1".parse().unwrap()),
            },
            IpConfig {
                address: "fd00::3".parse().unwrap(),
                prefix: 120,
                gateway: None,
            },
        ];
        let routes = [Route {
            dst: "0.0.0.0/0".into(),
            gw: None,
        }];
        assert_eq!(
            add_result(CniVersion::V1_0_0, &ips, &routes),
            json!({
                "cniVersion": "1.0.0",
                "ips": [
                    {"address": "10.1.2.3/24", "gateway": "10.1.2.1"},
                    {"address": "fd00::3/120"},
                ],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {},
            })
        );
        assert_eq!(
            add_result(CniVersion::V0_4_0, &ips[..1], &[]),
            json!({
                "cniVersion": "0.4.0",
                "ips": [{"version": "4", "address": "10.1.2.3/24", "gateway": "10.1.2.1"}],
                "dns": {},
            })
        );
    }
}
