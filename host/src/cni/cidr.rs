//! The netconf's address shapes, as host-local has them: a `Cidr`, a
//! `Range` (a subnet, `rangeStart ..= rangeEnd` and a gateway) and a
//! `RangeSet` (the ranges one address per ADD comes from), with the
//! arithmetic on them.
//!
//! They are CNI-only (an `IPPool` says `cidrs`, `exclude` and `gateway`
//! instead), so they live here rather than in the IPAM domain; the number
//! work underneath (parsing a CIDR, addresses as numbers, host masks) is
//! `address_space`'s, and a `RangeSet` becomes an `AddressSpace` for the
//! strategy plugins, so the CNI plugin and the controller count offsets
//! the same way.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::domains::ipam::address_space::{
    self, AddressSpace, MAX_OFFSETS_PER_CIDR_TEXT, host_mask, parse_cidr,
};
use crate::domains::ipam::types::IPPoolSpec;

/// A subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (network, prefix, ipv6) = parse_cidr(text)?;
        Ok(Cidr {
            network: address_space::to_ip(network, ipv6),
            prefix: prefix as u8,
        })
    }

    /// The subnet of `prefix` bits that holds `address`.
    pub fn containing(address: IpAddr, prefix: u8) -> Cidr {
        let host_bits = bits_of(&address).saturating_sub(u32::from(prefix));
        Cidr {
            network: address_space::to_ip(
                ip_value(&address) & !host_mask(host_bits),
                address.is_ipv6(),
            ),
            prefix,
        }
    }

    /// A prefix that is one address.
    pub fn host(address: IpAddr) -> Cidr {
        Cidr {
            network: address,
            prefix: bits_of(&address) as u8,
        }
    }

    pub(super) fn host_bits(&self) -> u32 {
        bits_of(&self.network) - u32::from(self.prefix)
    }

    pub fn contains(&self, address: &IpAddr) -> bool {
        let network_bits = |value: u128| value & !host_mask(self.host_bits());
        address.is_ipv6() == self.network.is_ipv6()
            && network_bits(ip_value(address)) == network_bits(ip_value(&self.network))
    }

    /// The address `n` after the network address.
    pub(super) fn nth(&self, n: u128) -> IpAddr {
        address_space::to_ip(ip_value(&self.network) + n, self.network.is_ipv6())
    }

    /// host-local's default range end: the broadcast address is not usable
    /// in IPv4, IPv6 has none.
    pub(super) fn last_usable(&self) -> IpAddr {
        let last = self.nth(host_mask(self.host_bits()));
        if last.is_ipv4() {
            address_space::to_ip(ip_value(&last) - 1, false)
        } else {
            last
        }
    }

    pub(super) fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(&other.network) || other.contains(&self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One range of a range set, with host-local's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: Cidr,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, address: &IpAddr) -> bool {
        address.is_ipv6() == self.start.is_ipv6()
            && ip_value(address) >= ip_value(&self.start)
            && ip_value(address) <= ip_value(&self.end)
    }
}

/// The ranges one address per ADD comes from (one family), in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    /// The range an address belongs to, if any.
    pub fn range_of(&self, address: &IpAddr) -> Option<&Range> {
        self.0.iter().find(|range| range.contains(address))
    }

    /// The set as a pool's offsets: the subnets laid end to end (each counts
    /// at most its first 2^48 addresses), everything outside
    /// `rangeStart ..= rangeEnd` and each range's gateway excluded.
    pub fn address_space(&self) -> Result<AddressSpace, String> {
        let spec = IPPoolSpec {
            cidrs: self.0.iter().map(|r| r.subnet.to_string()).collect(),
            ..IPPoolSpec::default()
        };
        let mut space = AddressSpace::from_spec(&spec)?;
        let base_of = |space: &AddressSpace, range: &Range| {
            space
                .offset_of(&range.subnet.network)
                .ok_or_else(|| format!("{} has no offset", range.subnet))
        };
        for (index, range) in self.0.iter().enumerate() {
            let first = base_of(&space, range)?;
            let last = match self.0.get(index + 1) {
                Some(next) => base_of(&space, next)? - 1,
                None => space.size() - 1,
            };
            // `range` refused a start past the subnet's offsets; an end
            // past them ends with them.
            let start = space
                .offset_of(&range.start)
                .ok_or_else(|| beyond_offsets(&range.start, &range.subnet))?;
            let end = space.offset_of(&range.end).unwrap_or(last);
            if start > first {
                space.excluded.push(first..=start - 1);
            }
            if end < last {
                space.excluded.push(end + 1..=last);
            }
            if range.subnet.contains(&range.gateway)
                && let Some(gateway) = space.offset_of(&range.gateway)
            {
                space.excluded.push(gateway..=gateway);
            }
        }
        Ok(space)
    }

    /// `first-last` of each range, for messages.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(super) fn beyond_offsets(address: &IpAddr, subnet: &Cidr) -> String {
    format!(
        "{address} is beyond the first {MAX_OFFSETS_PER_CIDR_TEXT} addresses of {subnet}, the most one subnet hands out"
    )
}

pub(super) fn bits_of(address: &IpAddr) -> u32 {
    if address.is_ipv6() { 128 } else { 32 }
}

pub(super) fn ip_value(address: &IpAddr) -> u128 {
    address_space::from_ip(address).0
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::{Value, json};

    use super::*;
    use crate::cni::config::{self, Mode};
    use crate::domains::ipam::address_space::MAX_OFFSETS_PER_CIDR;

    /// The range sets of an `ipam` section as the netconf parser makes
    /// them: host-local's defaults filled in, the sets checked.
    fn range_sets(ipam: Value) -> Vec<RangeSet> {
        let stdin = json!({"cniVersion": "1.0.0", "name": "net", "ipam": ipam});
        match config::parse(&serde_json::to_vec(&stdin).unwrap())
            .unwrap()
            .ipam
            .mode
        {
            Mode::Local { ranges, .. } => ranges,
            Mode::Cluster { .. } => panic!("local mode expected"),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_range_set_as_offsets() {
        let sets = range_sets(json!({"type": "k", "ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20", "gateway": "10.0.0.15"},
            {"subnet": "10.0.5.0/30"},
        ]]}));
        let set = &sets[0];
        let space = set.address_space().unwrap();
        assert_eq!(space.size(), 260);
        let free: Vec<u64> = (0..space.size())
            .filter(|o| !space.excluded.iter().any(|r| r.contains(o)))
            .collect();
        // .10-.20 less the gateway; .2 of the /30 (.1 is its gateway).
        let mut expected: Vec<u64> = (10..=20).filter(|o| *o != 15).collect();
        expected.push(258);
        assert_eq!(free, expected);
        assert_eq!(set.range_of(&ip("10.0.5.2")).unwrap().subnet.prefix, 30);
        assert!(set.range_of(&ip("10.0.0.21")).is_none());
        assert_eq!(set.describe(), "10.0.0.10-10.0.0.20,10.0.5.1-10.0.5.2");
    }

    #[test]
    fn wide_ipv6_subnets_work() {
        let sets = range_sets(json!({"type": "k", "ranges": [[{"subnet": "fd00::/48"}]]}));
        let space = sets[0].address_space().unwrap();
        assert_eq!(space.size(), MAX_OFFSETS_PER_CIDR);
        assert_eq!(space.address_of(2), Some(ip("fd00::2")));
    }

    /// Before offsets were capped, two /64s summed to 0 (no free address)
    /// and a third wrapped onto the first.
    #[rstest]
    #[case::two_slash_64s(2)]
    #[case::three_slash_64s(3)]
    #[case::sixteen_slash_64s(16)]
    fn range_sets_of_several_wide_ipv6_subnets(#[case] count: u16) {
        let subnets: Vec<Value> = (1..=count)
            .map(|n| json!({"subnet": format!("fd00:0:0:{n:x}::/64")}))
            .collect();
        let sets = range_sets(json!({"type": "k", "ranges": [subnets]}));
        let space = sets[0].address_space().unwrap();
        assert_eq!(space.size(), u64::from(count) * MAX_OFFSETS_PER_CIDR);
        for n in 1..=count {
            let address = ip(&format!("fd00:0:0:{n:x}::2"));
            let offset = space.offset_of(&address).unwrap();
            assert_eq!(offset, u64::from(n - 1) * MAX_OFFSETS_PER_CIDR + 2);
            assert_eq!(space.address_of(offset), Some(address));
            assert!(!space.excluded.iter().any(|r| r.contains(&offset)));
        }
        // The anycast address and the gateway of each are excluded.
        let base = u64::from(count - 1) * MAX_OFFSETS_PER_CIDR;
        for excluded in [base, base + 1] {
            assert!(space.excluded.iter().any(|r| r.contains(&excluded)));
        }
    }

    #[test]
    fn an_explicit_range_never_hands_out_the_ipv6_anycast_address() {
        let sets = range_sets(json!({"type": "k", "ranges": [[
            {"subnet": "fd00::/120", "rangeStart": "fd00::", "gateway": "fd00::ff"},
        ]]}));
        let space = sets[0].address_space().unwrap();
        assert!(space.excluded.iter().any(|r| r.contains(&0)));
        assert!(!space.excluded.iter().any(|r| r.contains(&1)));
    }

    #[test]
    fn cidr_containment_at_the_edges() {
        let cidr = |text: &str| Cidr::parse(text).unwrap();
        assert!(cidr("0.0.0.0/0").contains(&ip("255.255.255.255")));
        assert!(!cidr("0.0.0.0/0").contains(&ip("::1")));
        assert!(cidr("10.0.0.4/32").contains(&ip("10.0.0.4")));
        assert!(!cidr("10.0.0.4/32").contains(&ip("10.0.0.5")));
        assert!(cidr("fd00::/127").contains(&ip("fd00::1")));
        assert!(!cidr("fd00::/127").contains(&ip("fd00::2")));
    }
}
