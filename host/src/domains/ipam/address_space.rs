//! Addresses as offsets: a pool's CIDRs laid end to end, so strategies see a
//! line `0 .. size` whatever the family.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::types::IPPoolSpec;

/// One CIDR of the pool: its first address and how many offsets it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    first: u128,
    len: u64,
    ipv6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    blocks: Vec<Block>,
    /// Offsets never handed out: network, broadcast, gateway, `exclude`.
    pub excluded: Vec<RangeInclusive<u64>>,
}

impl AddressSpace {
    pub fn from_spec(spec: &IPPoolSpec) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for cidr in &spec.cidrs {
            let (first, prefix, ipv6) = parse_cidr(cidr)?;
            let host_bits = if ipv6 { 128 - prefix } else { 32 - prefix };
            // Pools larger than 2^63 offsets (an IPv6 /64 and wider) use the
            // first 2^63: far more than any pod network needs.
            let len = if host_bits >= 63 {
                1u64 << 63
            } else {
                1u64 << host_bits
            };
            blocks.push(Block { first, len, ipv6 });
        }
        if blocks.iter().any(|b| b.ipv6 != blocks[0].ipv6) {
            return Err("all CIDRs of a pool must be of one address family".into());
        }
        let mut space = AddressSpace {
            blocks,
            excluded: Vec::new(),
        };
        let mut base = 0u64;
        for block in space.blocks.clone() {
            // IPv4 network and broadcast addresses are not usable (except in
            // /31 and /32, RFC 3021).
            if !block.ipv6 && block.len > 2 {
                space.excluded.push(base..=base);
                space
                    .excluded
                    .push(base + block.len - 1..=base + block.len - 1);
            }
            base += block.len;
        }
        if let Some(gateway) = &spec.gateway {
            let address: IpAddr = gateway
                .parse()
                .map_err(|_| format!("gateway {gateway:?} is not an IP address"))?;
            let offset = space
                .offset_of(&address)
                .ok_or_else(|| format!("gateway {gateway} is outside the pool"))?;
            space.excluded.push(offset..=offset);
        }
        for exclusion in &spec.exclude {
            let range = space.parse_exclusion(exclusion)?;
            space.excluded.push(range);
        }
        Ok(space)
    }

    pub fn size(&self) -> u64 {
        self.blocks.iter().map(|b| b.len).sum()
    }

    /// Offsets handed out are usable addresses: size minus exclusions.
    pub fn address_of(&self, mut offset: u64) -> Option<IpAddr> {
        for block in &self.blocks {
            if offset < block.len {
                return Some(to_ip(block.first + u128::from(offset), block.ipv6));
            }
            offset -= block.len;
        }
        None
    }

    /// The offset of an address as written in a resource (`"10.0.0.5"`).
    pub fn offset_of_text(&self, address: &str) -> Option<u64> {
        self.offset_of(&address.parse().ok()?)
    }

    pub fn offset_of(&self, address: &IpAddr) -> Option<u64> {
        let (value, ipv6) = from_ip(address);
        let mut base = 0u64;
        for block in &self.blocks {
            if ipv6 == block.ipv6
                && value >= block.first
                && value - block.first < u128::from(block.len)
            {
                return Some(base + (value - block.first) as u64);
            }
            base += block.len;
        }
        None
    }

    /// True when some address belongs to both spaces.
    pub fn overlaps(&self, other: &AddressSpace) -> bool {
        self.blocks.iter().any(|a| {
            other.blocks.iter().any(|b| {
                a.ipv6 == b.ipv6
                    && a.first < b.first + u128::from(b.len)
                    && b.first < a.first + u128::from(a.len)
            })
        })
    }

    fn parse_exclusion(&self, text: &str) -> Result<RangeInclusive<u64>, String> {
        let outside = || format!("excluded {text:?} is outside the pool");
        let offset = |address: &str| -> Result<u64, String> {
            let ip: IpAddr = address
                .trim()
                .parse()
                .map_err(|_| format!("excluded {text:?} is not an address, CIDR or range"))?;
            self.offset_of(&ip).ok_or_else(outside)
        };
        if let Some((first, last)) = text.split_once('-') {
            let (first, last) = (offset(first)?, offset(last)?);
            if first > last {
                return Err(format!("excluded range {text:?} is reversed"));
            }
            return Ok(first..=last);
        }
        if text.contains('/') {
            let (first, prefix, ipv6) = parse_cidr(text)?;
            let host_bits = if ipv6 { 128 - prefix } else { 32 - prefix };
            let start = self.offset_of(&to_ip(first, ipv6)).ok_or_else(outside)?;
            let len = if host_bits >= 63 {
                1u64 << 63
            } else {
                1u64 << host_bits
            };
            return Ok(start..=start + len - 1);
        }
        let single = offset(text)?;
        Ok(single..=single)
    }
}

/// `(network address, prefix, is IPv6)`; the address must be the network's.
pub fn parse_cidr(cidr: &str) -> Result<(u128, u32, bool), String> {
    let invalid = || format!("{cidr:?} is not a valid CIDR");
    let (address, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let prefix: u32 = prefix.parse().map_err(|_| invalid())?;
    let (value, ipv6) = from_ip(&address);
    let bits = if ipv6 { 128 } else { 32 };
    if prefix > bits {
        return Err(invalid());
    }
    let host_mask = if prefix == bits {
        0
    } else {
        (1u128 << (bits - prefix)) - 1
    };
    if value & host_mask != 0 {
        return Err(format!("{cidr:?} has host bits set"));
    }
    Ok((value, prefix, ipv6))
}

/// An address as a number, and whether it is IPv6.
pub fn from_ip(address: &IpAddr) -> (u128, bool) {
    match address {
        IpAddr::V4(v4) => (u128::from(u32::from(*v4)), false),
        IpAddr::V6(v6) => (u128::from(*v6), true),
    }
}

pub fn to_ip(value: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(value.into())
    } else {
        IpAddr::V4((value as u32).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cidrs: &[&str], gateway: Option<&str>, exclude: &[&str]) -> IPPoolSpec {
        IPPoolSpec {
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            gateway: gateway.map(str::to_string),
            exclude: exclude.iter().map(|c| c.to_string()).collect(),
            ..IPPoolSpec::default()
        }
    }

    #[test]
    fn ipv4_blocks_laid_end_to_end() {
        let space = AddressSpace::from_spec(&spec(
            &["10.0.0.0/24", "10.0.5.0/30"],
            Some("10.0.0.1"),
            &["10.0.0.10-10.0.0.19", "10.0.0.128/26"],
        ))
        .unwrap();
        assert_eq!(space.size(), 260);
        assert_eq!(space.address_of(256).unwrap().to_string(), "10.0.5.0");
        assert_eq!(space.offset_of(&"10.0.5.2".parse().unwrap()), Some(258));
        assert_eq!(space.address_of(260), None);
        assert_eq!(
            space.excluded,
            vec![
                0..=0,
                255..=255,
                256..=256,
                259..=259,
                1..=1,
                10..=19,
                128..=191
            ]
        );
    }

    #[test]
    fn ipv6_works() {
        let space = AddressSpace::from_spec(&spec(&["fd00::/120"], Some("fd00::1"), &[])).unwrap();
        assert_eq!(space.size(), 256);
        assert_eq!(space.excluded, vec![1..=1]);
        assert_eq!(space.address_of(5).unwrap().to_string(), "fd00::5");
        let huge = AddressSpace::from_spec(&spec(&["fd00::/64"], None, &[])).unwrap();
        assert_eq!(huge.size(), 1 << 63);
    }

    #[test]
    fn overlap_is_per_family_and_per_block() {
        let space = |cidrs: &[&str]| AddressSpace::from_spec(&spec(cidrs, None, &[])).unwrap();
        let pool = space(&["10.0.0.0/24", "10.0.9.0/28"]);
        assert!(pool.overlaps(&space(&["10.0.0.128/25"])));
        assert!(pool.overlaps(&space(&["10.0.9.8/29"])));
        assert!(pool.overlaps(&space(&["10.0.0.0/16"])));
        assert!(!pool.overlaps(&space(&["10.0.1.0/24", "10.0.9.16/28"])));
        assert!(!pool.overlaps(&space(&["::a00:0/120"])));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let error = |s: IPPoolSpec| AddressSpace::from_spec(&s).unwrap_err();
        assert!(error(spec(&["10.0.0.0/33"], None, &[])).contains("not a valid CIDR"));
        assert!(error(spec(&["10.0.0.1/24"], None, &[])).contains("host bits"));
        assert!(error(spec(&["10.0.0.0/24"], Some("10.0.1.1"), &[])).contains("outside the pool"));
        assert!(
            error(spec(&["10.0.0.0/24", "fd00::/120"], None, &[])).contains("one address family")
        );
        assert!(error(spec(&["10.0.0.0/24"], None, &["10.0.0.9-10.0.0.3"])).contains("reversed"));
    }
}
