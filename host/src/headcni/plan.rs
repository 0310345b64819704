//! What HeadCNI sets up for one attachment, decided before anything is
//! touched: from the configuration and the addresses the IPAM plugin handed
//! out, the pod's end of a veth pair (addresses, routes, MTU) and the host's
//! (the gateways as host addresses, a route to each pod address). Also the
//! result ADD prints, what CHECK compares with the kernel, and which host
//! veths GC removes. Pure.
//!
//! The layout is point-to-point, like containernetworking's `ptp`: each pod
//! reaches its gateway over its own veth, the gateway address sits on every
//! host end, and the host routes each pod address to its veth. Pods of one
//! subnet therefore talk through the host, which keeps pod traffic routable
//! (and, in part 2, routable over the tailnet) with no bridge.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::config::{Dns, HeadCniConf};
use crate::cni::cidr::Cidr;
use crate::cni::config::{Attachment, Route};
use crate::cni::error::{CniError, Code};
use crate::cni::protocol::CniVersion;
use crate::cni::result::{Interface, IpConfig, interface_result};

/// Host veths are named `hcni` and 11 hex digits of a hash of the network,
/// container and interface: the same name at ADD, DEL and GC without any
/// state, within Linux's 15 characters.
const HOST_VETH_PREFIX: &str = "hcni";
const HOST_VETH_HASH_DIGITS: usize = 11;
/// The host veth's alias says which network it belongs to, so GC of one
/// network never touches another's. The kernel keeps at most 255 bytes.
const ALIAS_PREFIX: &str = "headcni:";
const MAX_ALIAS: usize = 255;

/// What the delegated IPAM plugin handed out, in any result version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamResult {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<PlannedRoute>,
    pub dns: Dns,
}

/// A route in the pod: to `dst` through `gw`, or on the link when `gw` is
/// `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRoute {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

/// One attachment's network, as it will be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub host_veth: String,
    pub alias: String,
    pub ifname: String,
    pub mtu: u32,
    /// On the pod's interface, each with its gateway.
    pub addresses: Vec<IpConfig>,
    pub routes: Vec<PlannedRoute>,
    pub dns: Dns,
}

impl PodNetwork {
    /// The gateways, each put on the host's end as a one-address prefix.
    pub fn host_addresses(&self) -> Vec<IpAddr> {
        let gateways: BTreeSet<IpAddr> =
            self.addresses.iter().filter_map(|ip| ip.gateway).collect();
        gateways.into_iter().collect()
    }

    /// The pod's addresses, each routed to the host's end.
    pub fn host_routes(&self) -> Vec<Cidr> {
        self.addresses
            .iter()
            .map(|ip| Cidr::host(ip.address))
            .collect()
    }
}

pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let digest = Sha256::new()
        .chain_update(network)
        .chain_update([0])
        .chain_update(container_id)
        .chain_update([0])
        .chain_update(ifname)
        .finalize();
    let mut name = String::from(HOST_VETH_PREFIX);
    name.push_str(&hex::encode(digest)[..HOST_VETH_HASH_DIGITS]);
    name
}

pub fn host_veth_alias(network: &str) -> String {
    let mut alias = format!("{ALIAS_PREFIX}{network}");
    // Network names are ASCII (the header's rule), so any cut is on a character.
    alias.truncate(MAX_ALIAS);
    alias
}

/// Reads an IPAM plugin's result: `ips` (with `version` before 1.0.0),
/// `routes`, `dns`.
pub fn parse_ipam_result(result: &Value) -> Result<IpamResult, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        ips: Vec<RawIp>,
        #[serde(default)]
        routes: Vec<RawRoute>,
        #[serde(default)]
        dns: Option<Value>,
    }
    #[derive(Deserialize)]
    struct RawIp {
        address: String,
        gateway: Option<IpAddr>,
    }
    #[derive(Deserialize)]
    struct RawRoute {
        dst: String,
        gw: Option<IpAddr>,
    }
    let raw: Raw = serde_json::from_value(result.clone()).map_err(|error| error.to_string())?;
    let mut ips = Vec::with_capacity(raw.ips.len());
    for ip in raw.ips {
        let (address, prefix) = address_prefix(&ip.address)?;
        ips.push(IpConfig {
            address,
            prefix,
            gateway: ip.gateway,
        });
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for route in raw.routes {
        let (address, prefix) = address_prefix(&route.dst)?;
        routes.push(PlannedRoute {
            dst: Cidr::containing(address, prefix),
            gw: route.gw,
        });
    }
    // An IPAM plugin's dns is informational; one HeadCNI cannot read is dropped.
    let dns = raw
        .dns
        .and_then(|dns| serde_json::from_value(dns).ok())
        .unwrap_or_default();
    Ok(IpamResult { ips, routes, dns })
}

/// `10.244.0.10/24`: an address and a prefix that fits its family.
fn address_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{text:?} is not an address/prefix");
    let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    if prefix > bits {
        return Err(bad());
    }
    Ok((address, prefix))
}

/// The attachment's network from the IPAM plugin's answer, or why that
/// answer does not fit the configuration.
pub fn plan(
    conf: &HeadCniConf,
    container_id: &str,
    ifname: &str,
    ipam: &IpamResult,
) -> Result<PodNetwork, CniError> {
    let refuse = |msg: String| CniError::config(msg);
    if ipam.ips.is_empty() {
        return Err(refuse(format!(
            "ipam: {} returned no address",
            conf.ipam_type
        )));
    }
    for ip in &ipam.ips {
        let shown = format!("{}/{}", ip.address, ip.prefix);
        if ip.address.is_ipv6() && !conf.enable_ipv6 {
            return Err(refuse(format!(
                "enable_ipv6: {} handed out {shown}, but enable_ipv6 is false",
                conf.ipam_type
            )));
        }
        let family_cidr = conf
            .pod_cidr
            .iter()
            .find(|cidr| cidr.network.is_ipv6() == ip.address.is_ipv6());
        if !family_cidr.is_some_and(|cidr| cidr.contains(&ip.address)) {
            return Err(refuse(format!(
                "pod_cidr: {} handed out {shown}, outside pod_cidr {}",
                conf.ipam_type,
                conf.pod_cidr
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        match ip.gateway {
            None => {
                return Err(refuse(format!(
                    "ipam: {shown} came without a gateway; set ipam.gateway"
                )));
            }
            Some(gateway) if gateway == ip.address || gateway.is_ipv6() != ip.address.is_ipv6() => {
                return Err(refuse(format!(
                    "ipam: {gateway} cannot be the gateway of {shown}"
                )));
            }
            Some(_) => {}
        }
    }
    if conf.enable_ipv6 && !ipam.ips.iter().any(|ip| ip.address.is_ipv6()) {
        return Err(refuse(format!(
            "enable_ipv6: {} handed out no IPv6 address; give its ranges an IPv6 subnet",
            conf.ipam_type
        )));
    }
    let mut routes: Vec<PlannedRoute> = Vec::new();
    let mut add = |route: PlannedRoute| {
        if !routes.iter().any(|known| known.dst == route.dst) {
            routes.push(route);
        }
    };
    for ip in &ipam.ips {
        let gateway = ip.gateway.expect("checked above");
        let same_family = |cidr: &&Cidr| cidr.network.is_ipv6() == ip.address.is_ipv6();
        add(PlannedRoute {
            dst: Cidr::host(gateway),
            gw: None,
        });
        let subnet = Cidr::containing(ip.address, ip.prefix);
        if subnet != Cidr::host(ip.address) {
            add(PlannedRoute {
                dst: subnet,
                gw: Some(gateway),
            });
        }
        for route in ipam.routes.iter().filter(|route| same_family(&&route.dst)) {
            add(PlannedRoute {
                dst: route.dst,
                gw: Some(route.gw.unwrap_or(gateway)),
            });
        }
        for service in conf.service_cidr.iter().filter(same_family) {
            add(PlannedRoute {
                dst: *service,
                gw: Some(gateway),
            });
        }
        add(PlannedRoute {
            dst: Cidr::containing(ip.address, 0),
            gw: Some(gateway),
        });
    }
    Ok(PodNetwork {
        host_veth: host_veth_name(&conf.name, container_id, ifname),
        alias: host_veth_alias(&conf.name),
        ifname: ifname.to_string(),
        mtu: conf.mtu,
        addresses: ipam.ips.clone(),
        routes,
        dns: if conf.dns.is_empty() {
            ipam.dns.clone()
        } else {
            conf.dns.clone()
        },
    })
}

/// The two ends as made: MAC addresses, and the pod's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub host_mac: String,
    pub pod_mac: String,
    pub netns: String,
}

/// The ADD result: the host end (index 0), the pod end (index 1) that the
/// addresses are on, the pod's routes and DNS.
pub fn add_result(version: CniVersion, network: &PodNetwork, attached: &Attached) -> Value {
    let interfaces = [
        Interface {
            name: network.host_veth.clone(),
            mac: attached.host_mac.clone(),
            sandbox: None,
        },
        Interface {
            name: network.ifname.clone(),
            mac: attached.pod_mac.clone(),
            sandbox: Some(attached.netns.clone()),
        },
    ];
    let ips: Vec<(&IpConfig, Option<usize>)> =
        network.addresses.iter().map(|ip| (ip, Some(1))).collect();
    let routes: Vec<Route> = network
        .routes
        .iter()
        .map(|route| Route {
            dst: route.dst.to_string(),
            gw: route.gw,
        })
        .collect();
    interface_result(version, &interfaces, &ips, &routes, json!(network.dns))
}

/// A link as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
}

/// What CHECK reads from the kernel for one attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `None` when the pod's netns has no interface of that name.
    pub pod_link: Option<LinkState>,
    pub pod_addresses: Vec<(IpAddr, u8)>,
    pub pod_routes: Vec<PlannedRoute>,
    pub host_link: Option<LinkState>,
    /// Destinations routed to the host veth.
    pub host_routes: Vec<Cidr>,
}

/// CHECK: the attachment still looks as ADD left it (`prevResult`).
pub fn check(
    conf: &HeadCniConf,
    container_id: &str,
    ifname: &str,
    prev_result: &Value,
    observed: &Observed,
) -> Result<(), CniError> {
    let mismatch = |msg: String| CniError::new(Code::NetworkMismatch, msg);
    let prev = parse_ipam_result(prev_result)
        .map_err(|why| CniError::config(format!("prevResult: {why}")))?;
    let recorded_mac = prev_result["interfaces"]
        .as_array()
        .and_then(|interfaces| {
            interfaces
                .iter()
                .find(|interface| interface["name"] == ifname && interface["sandbox"].is_string())
        })
        .and_then(|interface| interface["mac"].as_str())
        .ok_or_else(|| {
            CniError::config(format!("prevResult: no interface {ifname:?} in a sandbox"))
        })?;
    let pod = observed.pod_link.as_ref().ok_or_else(|| {
        mismatch(format!(
            "{ifname} is missing from the pod's network namespace"
        ))
    })?;
    if !pod.mac.eq_ignore_ascii_case(recorded_mac) {
        return Err(mismatch(format!(
            "{ifname} has MAC {}, prevResult says {recorded_mac}",
            pod.mac
        )));
    }
    if pod.mtu != conf.mtu {
        return Err(mismatch(format!(
            "{ifname} has MTU {}, the config says {}",
            pod.mtu, conf.mtu
        )));
    }
    if !pod.up {
        return Err(mismatch(format!("{ifname} is down")));
    }
    for ip in &prev.ips {
        if !observed.pod_addresses.contains(&(ip.address, ip.prefix)) {
            return Err(mismatch(format!(
                "{ifname} lacks {}/{} of prevResult",
                ip.address, ip.prefix
            )));
        }
    }
    for route in &prev.routes {
        if !observed.pod_routes.contains(route) {
            return Err(mismatch(format!(
                "the pod lacks the route to {}{} of prevResult",
                route.dst,
                route.gw.map(|gw| format!(" via {gw}")).unwrap_or_default()
            )));
        }
    }
    let host_veth = host_veth_name(&conf.name, container_id, ifname);
    let host = observed
        .host_link
        .as_ref()
        .ok_or_else(|| mismatch(format!("the host end {host_veth} is missing")))?;
    if !host.up {
        return Err(mismatch(format!("the host end {host_veth} is down")));
    }
    for ip in &prev.ips {
        if !observed.host_routes.contains(&Cidr::host(ip.address)) {
            return Err(mismatch(format!(
                "the host has no route to {} over {host_veth}",
                ip.address
            )));
        }
    }
    Ok(())
}

/// GC: the host veths of this network whose attachment the runtime no
/// longer lists. `links` are the host's links as (name, alias).
pub fn stale_host_veths(
    network: &str,
    links: &[(String, Option<String>)],
    valid: &[Attachment],
) -> Vec<String> {
    let alias = host_veth_alias(network);
    let kept: BTreeSet<String> = valid
        .iter()
        .map(|attachment| host_veth_name(network, &attachment.container_id, &attachment.ifname))
        .collect();
    links
        .iter()
        .filter(|(name, link_alias)| {
            link_alias.as_deref() == Some(alias.as_str())
                && name.starts_with(HOST_VETH_PREFIX)
                && !kept.contains(name)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headcni::config::parse;
    use rstest::rstest;

    fn seed(ipam: Value, extra: &[(&str, Value)]) -> HeadCniConf {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "tailscale-cni",
            "type": "headcni",
            "pod_cidr": "10.244.0.0/24",
            "service_cidr": "10.96.0.0/16",
            "ipam": ipam,
            "dns": {"nameservers": ["10.96.0.10"]},
        });
        for (key, value) in extra {
            conf[*key] = value.clone();
        }
        parse(&serde_json::to_vec(&conf).unwrap()).unwrap()
    }

    fn host_local() -> HeadCniConf {
        seed(json!({"type": "host-local"}), &[])
    }

    fn ipam(result: Value) -> IpamResult {
        parse_ipam_result(&result).unwrap()
    }

    fn route(dst: &str, gw: Option<&str>) -> PlannedRoute {
        PlannedRoute {
            dst: Cidr::parse(dst).unwrap(),
            gw: gw.map(|gw| gw.parse().unwrap()),
        }
    }

    #[test]
    fn host_local_answer_becomes_a_point_to_point_pod() {
        let network = plan(
            &host_local(),
            "c1",
            "eth0",
            &ipam(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.10/24", "gateway": "10.244.0.1"}]})),
        )
        .unwrap();
        assert_eq!(
            network.routes,
            [
                route("10.244.0.1/32", None),
                route("10.244.0.0/24", Some("10.244.0.1")),
                route("10.96.0.0/16", Some("10.244.0.1")),
                route("0.0.0.0/0", Some("10.244.0.1")),
            ]
        );
        assert_eq!(
            network.host_addresses(),
            ["10.244.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            network.host_routes(),
            [Cidr::parse("10.244.0.10/32").unwrap()]
        );
        assert_eq!(network.mtu, 1420);
        assert_eq!(network.host_veth.len(), 15);
        assert_eq!(
            network.host_veth,
            host_veth_name("tailscale-cni", "c1", "eth0")
        );
        assert_eq!(network.dns.nameservers.len(), 1);
    }

    #[test]
    fn ipam_routes_keep_their_gateway_and_are_not_repeated() {
        let network = plan(
            &host_local(),
            "c1",
            "eth0",
            &ipam(json!({
                "cniVersion": "0.4.0",
                "ips": [{"version": "4", "address": "10.244.0.10/24", "gateway": "10.244.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "192.168.7.9/16"}],
            })),
        )
        .unwrap();
        assert_eq!(
            network.routes,
            [
                route("10.244.0.1/32", None),
                route("10.244.0.0/24", Some("10.244.0.1")),
                route("0.0.0.0/0", Some("10.244.0.1")),
                route("192.168.0.0/16", Some("10.244.0.1")),
                route("10.96.0.0/16", Some("10.244.0.1")),
            ]
        );
    }

    #[test]
    fn dual_stack_routes_each_family_through_its_gateway() {
        let conf = seed(
            json!({"type": "headcni-ipam"}),
            &[
                ("enable_ipv6", json!(true)),
                ("pod_cidr", json!("10.244.0.0/24,fd00:244::/64")),
                ("service_cidr", json!("10.96.0.0/16")),
            ],
        );
        let network = plan(
            &conf,
            "c1",
            "eth0",
            &ipam(json!({"ips": [
                {"address": "10.244.0.10/24", "gateway": "10.244.0.1"},
                {"address": "fd00:244::a/64", "gateway": "fd00:244::1"},
            ]})),
        )
        .unwrap();
        assert!(network.routes.contains(&route("::/0", Some("fd00:244::1"))));
        assert!(network.routes.contains(&route("fd00:244::1/128", None)));
        assert!(
            !network
                .routes
                .contains(&route("10.96.0.0/16", Some("fd00:244::1")))
        );
        assert_eq!(network.host_addresses().len(), 2);
    }

    #[rstest]
    #[case::no_address(json!({"ips": []}), &[], "ipam: host-local returned no address")]
    #[case::outside_the_pod_cidr(
        json!({"ips": [{"address": "10.9.0.5/24", "gateway": "10.9.0.1"}]}), &[],
        "pod_cidr: host-local handed out 10.9.0.5/24, outside pod_cidr 10.244.0.0/24",
    )]
    #[case::ipv6_without_enable_ipv6(
        json!({"ips": [{"address": "fd00::5/64", "gateway": "fd00::1"}]}), &[],
        "enable_ipv6: host-local handed out fd00::5/64, but enable_ipv6 is false",
    )]
    #[case::no_ipv6_with_enable_ipv6(
        json!({"ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1"}]}),
        &[("enable_ipv6", json!(true)), ("pod_cidr", json!("10.244.0.0/24,fd00::/64")), ("mtu", json!(1420))],
        "enable_ipv6: host-local handed out no IPv6 address; give its ranges an IPv6 subnet",
    )]
    #[case::no_gateway(
        json!({"ips": [{"address": "10.244.0.5/24"}]}), &[],
        "ipam: 10.244.0.5/24 came without a gateway; set ipam.gateway",
    )]
    #[case::gateway_is_the_address(
        json!({"ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.5"}]}), &[],
        "ipam: 10.244.0.5 cannot be the gateway of 10.244.0.5/24",
    )]
    fn answers_that_do_not_fit_are_refused(
        #[case] result: Value,
        #[case] extra: &[(&str, Value)],
        #[case] expected: &str,
    ) {
        let conf = seed(json!({"type": "host-local"}), extra);
        let error = plan(&conf, "c1", "eth0", &ipam(result)).unwrap_err();
        assert_eq!(error.code, Code::InvalidConfig);
        assert_eq!(error.msg, expected);
    }

    fn attached() -> Attached {
        Attached {
            host_mac: "aa:aa:aa:aa:aa:01".into(),
            pod_mac: "aa:aa:aa:aa:aa:02".into(),
            netns: "/var/run/netns/p1".into(),
        }
    }

    fn seed_network() -> PodNetwork {
        plan(
            &host_local(),
            "c1",
            "eth0",
            &ipam(json!({"ips": [{"address": "10.244.0.10/24", "gateway": "10.244.0.1"}]})),
        )
        .unwrap()
    }

    #[test]
    fn the_result_names_both_ends_and_puts_the_address_on_the_pods() {
        let result = add_result(CniVersion::V1_0_0, &seed_network(), &attached());
        assert_eq!(result["interfaces"][1]["sandbox"], "/var/run/netns/p1");
        assert_eq!(result["interfaces"][0].get("sandbox"), None);
        assert_eq!(
            result["ips"][0],
            json!({"address": "10.244.0.10/24", "gateway": "10.244.0.1", "interface": 1})
        );
        assert_eq!(result["routes"][0], json!({"dst": "10.244.0.1/32"}));
        assert_eq!(result["dns"], json!({"nameservers": ["10.96.0.10"]}));
        let old = add_result(CniVersion::V0_3_1, &seed_network(), &attached());
        assert_eq!(old["ips"][0]["version"], "4");
    }

    /// What the kernel shows right after a good ADD of `seed_network`.
    fn as_made() -> Observed {
        let network = seed_network();
        Observed {
            pod_link: Some(LinkState {
                mac: "AA:AA:AA:AA:AA:02".into(),
                mtu: 1420,
                up: true,
            }),
            pod_addresses: vec![("10.244.0.10".parse().unwrap(), 24)],
            pod_routes: network.routes.clone(),
            host_link: Some(LinkState {
                mac: "aa:aa:aa:aa:aa:01".into(),
                mtu: 1420,
                up: true,
            }),
            host_routes: network.host_routes(),
        }
    }

    #[rstest]
    #[case::as_made(|_: &mut Observed| {}, None)]
    #[case::pod_interface_gone(|o: &mut Observed| o.pod_link = None, Some("eth0 is missing"))]
    #[case::mtu_changed(|o: &mut Observed| o.pod_link.as_mut().unwrap().mtu = 1500, Some("eth0 has MTU 1500, the config says 1420"))]
    #[case::mac_changed(|o: &mut Observed| o.pod_link.as_mut().unwrap().mac = "aa:aa:aa:aa:aa:03".into(), Some("eth0 has MAC"))]
    #[case::pod_down(|o: &mut Observed| o.pod_link.as_mut().unwrap().up = false, Some("eth0 is down"))]
    #[case::address_removed(|o: &mut Observed| o.pod_addresses.clear(), Some("eth0 lacks 10.244.0.10/24"))]
    #[case::default_route_removed(|o: &mut Observed| { o.pod_routes.pop(); }, Some("the pod lacks the route to 0.0.0.0/0 via 10.244.0.1"))]
    #[case::host_end_gone(|o: &mut Observed| o.host_link = None, Some("the host end hcni"))]
    #[case::host_route_gone(|o: &mut Observed| o.host_routes.clear(), Some("the host has no route to 10.244.0.10"))]
    fn check_compares_the_kernel_with_prev_result(
        #[case] change: fn(&mut Observed),
        #[case] expected: Option<&str>,
    ) {
        let prev = add_result(CniVersion::V1_0_0, &seed_network(), &attached());
        let mut observed = as_made();
        change(&mut observed);
        match (
            check(&host_local(), "c1", "eth0", &prev, &observed),
            expected,
        ) {
            (Ok(()), None) => {}
            (Err(error), Some(expected)) => {
                assert_eq!(error.code, Code::NetworkMismatch);
                assert!(
                    error.msg.contains(expected),
                    "{:?} lacks {expected:?}",
                    error.msg
                );
            }
            (outcome, expected) => panic!("got {outcome:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn gc_removes_only_this_networks_unlisted_veths() {
        let ours = |container: &str| host_veth_name("net", container, "eth0");
        let alias = Some(host_veth_alias("net"));
        let links = vec![
            (ours("kept"), alias.clone()),
            (ours("gone"), alias.clone()),
            (
                host_veth_name("other", "gone", "eth0"),
                Some(host_veth_alias("other")),
            ),
            ("eth0".to_string(), None),
            ("hcni-by-hand".to_string(), None),
        ];
        let valid = [Attachment {
            container_id: "kept".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(stale_host_veths("net", &links, &valid), [ours("gone")]);
    }

    #[test]
    fn names_differ_by_network_container_and_interface() {
        let names: BTreeSet<String> = [
            host_veth_name("a", "c", "eth0"),
            host_veth_name("b", "c", "eth0"),
            host_veth_name("a", "d", "eth0"),
            host_veth_name("a", "c", "eth1"),
            host_veth_name("a", "c\0eth0", ""),
        ]
        .into();
        assert_eq!(names.len(), 5);
        assert!(host_veth_alias(&"n".repeat(300)).len() <= MAX_ALIAS);
    }
}
