//! Addresses as offsets: a pool's CIDRs laid end to end, so strategies see a
//! line `0 .. size` whatever the family.
//!
//! Offsets cross the WIT as u64. A CIDR contributes at most
//! [`MAX_OFFSETS_PER_CIDR`] offsets (its first addresses), so the widest pool
//! the CRD allows (16 IPv6 /64s or wider) still fits; every sum is checked and
//! what still does not fit is refused, naming the CIDR. Address arithmetic
//! compares inclusive last addresses: `first + len` overflows at the top of
//! the IPv6 space.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::types::IPPoolSpec;

/// The most offsets one CIDR contributes: 2^48, an IPv6 /80, far more than
/// any pod network needs. A wider CIDR hands out its first 2^48 addresses.
pub const MAX_OFFSETS_PER_CIDR: u64 = 1 << 48;
/// [`MAX_OFFSETS_PER_CIDR`] as messages and docs write it.
pub const MAX_OFFSETS_PER_CIDR_TEXT: &str = "2^48";

/// Why a pool's spec gives no address space.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    /// Two of the pool's own CIDRs share addresses: counted twice, they
    /// would be handed out twice.
    #[error("{0}")]
    OverlappingCidrs(String),
}

impl SpecError {
    /// The `Ready` condition's reason for a pool refused for this.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Invalid(_) => "InvalidSpec",
            SpecError::OverlappingCidrs(_) => "OverlappingCIDRs",
        }
    }
}

impl From<String> for SpecError {
    fn from(message: String) -> Self {
        SpecError::Invalid(message)
    }
}

impl From<SpecError> for String {
    fn from(error: SpecError) -> Self {
        error.to_string()
    }
}

/// One CIDR of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    first: u128,
    /// The CIDR's last address, also when its offsets stop short of it.
    last: u128,
    /// How many offsets it covers: its size, at most `MAX_OFFSETS_PER_CIDR`.
    len: u64,
    ipv6: bool,
}

impl Block {
    fn parse(cidr: &str) -> Result<Block, String> {
        let (first, prefix, ipv6) = parse_cidr(cidr)?;
        let host_bits = if ipv6 { 128 } else { 32 } - prefix;
        let len = 1u64
            .checked_shl(host_bits)
            .filter(|len| *len <= MAX_OFFSETS_PER_CIDR)
            .unwrap_or(MAX_OFFSETS_PER_CIDR);
        Ok(Block {
            first,
            last: first | host_mask(host_bits),
            len,
            ipv6,
        })
    }

    fn contains(&self, value: u128, ipv6: bool) -> bool {
        ipv6 == self.ipv6 && self.first <= value && value <= self.last
    }

    fn overlaps(&self, other: &Block) -> bool {
        self.ipv6 == other.ipv6 && self.first <= other.last && other.first <= self.last
    }

    /// The last address an offset reaches (never past `last`).
    fn last_reached(&self) -> u128 {
        self.first + u128::from(self.len - 1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    blocks: Vec<Block>,
    size: u64,
    /// Offsets never handed out: IPv4 network and broadcast, IPv6
    /// subnet-router anycast, gateway, `exclude`.
    pub excluded: Vec<RangeInclusive<u64>>,
}

impl AddressSpace {
    pub fn from_spec(spec: &IPPoolSpec) -> Result<Self, SpecError> {
        let mut blocks: Vec<Block> = Vec::with_capacity(spec.cidrs.len());
        let mut size = 0u64;
        for (index, cidr) in spec.cidrs.iter().enumerate() {
            let block = Block::parse(cidr)?;
            if blocks.first().is_some_and(|first| first.ipv6 != block.ipv6) {
                return Err("all CIDRs of a pool must be of one address family"
                    .to_string()
                    .into());
            }
            size = size.checked_add(block.len).ok_or_else(|| {
                format!(
                    "cidrs[{index}] {cidr} does not fit: the pool's CIDRs together exceed 2^64 addresses (each counts at most {MAX_OFFSETS_PER_CIDR_TEXT})"
                )
            })?;
            blocks.push(block);
        }
        if let Some((a, b)) = overlapping_pair(&blocks) {
            return Err(SpecError::OverlappingCidrs(format!(
                "cidrs[{b}] {} overlaps cidrs[{a}] {}: a pool's CIDRs must be disjoint",
                spec.cidrs[b], spec.cidrs[a]
            )));
        }
        let mut space = AddressSpace {
            blocks,
            size,
            excluded: Vec::new(),
        };
        let mut base = 0u64;
        for block in &space.blocks {
            // Not usable, except in the two-address blocks of point-to-point
            // links (IPv4 /31, RFC 3021; IPv6 /127, RFC 6164) and single
            // addresses: IPv4 network and broadcast, IPv6 subnet-router
            // anycast (RFC 4291 2.6.1; routers answer it).
            if block.len > 2 {
                space.excluded.push(base..=base);
                if !block.ipv6 {
                    let broadcast = base + (block.len - 1);
                    space.excluded.push(broadcast..=broadcast);
                }
            }
            base += block.len;
        }
        if let Some(gateway) = &spec.gateway {
            let address: IpAddr = gateway
                .parse()
                .map_err(|_| format!("gateway {gateway:?} is not an IP address"))?;
            let (value, ipv6) = from_ip(&address);
            if !space.blocks.iter().any(|b| b.contains(value, ipv6)) {
                return Err(format!("gateway {gateway} is outside the pool").into());
            }
            // Beyond the offsets of a wide CIDR it is never handed out anyway.
            space
                .excluded
                .extend(space.offsets_between(value, value, ipv6));
        }
        for exclusion in &spec.exclude {
            let (first, last, ipv6) = space.parse_exclusion(exclusion)?;
            let ranges = space.offsets_between(first, last, ipv6);
            space.excluded.extend(ranges);
        }
        Ok(space)
    }

    pub fn size(&self) -> u64 {
        self.size
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
            if block.contains(value, ipv6) && value <= block.last_reached() {
                return Some(base + (value - block.first) as u64);
            }
            base += block.len;
        }
        None
    }

    /// True when some address belongs to both spaces' CIDRs.
    pub fn overlaps(&self, other: &AddressSpace) -> bool {
        self.blocks
            .iter()
            .any(|a| other.blocks.iter().any(|b| a.overlaps(b)))
    }

    /// The offsets of the addresses `first ..= last`, one range per block
    /// they reach.
    fn offsets_between(&self, first: u128, last: u128, ipv6: bool) -> Vec<RangeInclusive<u64>> {
        let mut ranges = Vec::new();
        let mut base = 0u64;
        for block in &self.blocks {
            let (low, high) = (first.max(block.first), last.min(block.last_reached()));
            if block.ipv6 == ipv6 && low <= high {
                let offset = |value: u128| base + (value - block.first) as u64;
                ranges.push(offset(low)..=offset(high));
            }
            base += block.len;
        }
        ranges
    }

    /// An exclusion as addresses `(first, last, is IPv6)`; it must start
    /// (and a range end) inside the pool.
    fn parse_exclusion(&self, text: &str) -> Result<(u128, u128, bool), String> {
        let outside = || format!("excluded {text:?} is outside the pool");
        let inside = |value: u128, ipv6: bool| self.blocks.iter().any(|b| b.contains(value, ipv6));
        let address = |address: &str| -> Result<(u128, bool), String> {
            let ip: IpAddr = address
                .trim()
                .parse()
                .map_err(|_| format!("excluded {text:?} is not an address, CIDR or range"))?;
            let (value, ipv6) = from_ip(&ip);
            if inside(value, ipv6) {
                Ok((value, ipv6))
            } else {
                Err(outside())
            }
        };
        if let Some((first, last)) = text.split_once('-') {
            let ((first, ipv6), (last, last_ipv6)) = (address(first)?, address(last)?);
            if ipv6 != last_ipv6 {
                return Err(outside());
            }
            if first > last {
                return Err(format!("excluded range {text:?} is reversed"));
            }
            return Ok((first, last, ipv6));
        }
        if text.contains('/') {
            let (first, prefix, ipv6) = parse_cidr(text)?;
            if !inside(first, ipv6) {
                return Err(outside());
            }
            let host_bits = if ipv6 { 128 } else { 32 } - prefix;
            return Ok((first, first | host_mask(host_bits), ipv6));
        }
        let (single, ipv6) = address(text)?;
        Ok((single, single, ipv6))
    }
}

/// Two blocks sharing addresses, as indexes `(a, b)` with `a < b`. Sorted by
/// first address, an overlap always shows between neighbours.
fn overlapping_pair(blocks: &[Block]) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&i| (blocks[i].first, i));
    order
        .windows(2)
        .find(|pair| blocks[pair[0]].overlaps(&blocks[pair[1]]))
        .map(|pair| (pair[0].min(pair[1]), pair[0].max(pair[1])))
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
    if value & host_mask(bits - prefix) != 0 {
        return Err(format!("{cidr:?} has host bits set"));
    }
    Ok((value, prefix, ipv6))
}

/// The low `host_bits` bits set (all 128 for `::/0`, where a shift would
/// overflow).
pub fn host_mask(host_bits: u32) -> u128 {
    u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
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

    fn space(cidrs: &[&str]) -> AddressSpace {
        AddressSpace::from_spec(&spec(cidrs, None, &[])).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// `fd00:0:0:<n>::/64` for n in 1..=count.
    fn slash64s(count: u16) -> Vec<String> {
        (1..=count)
            .map(|n| format!("fd00:0:0:{n:x}::/64"))
            .collect()
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
        assert_eq!(space.offset_of(&ip("10.0.5.2")), Some(258));
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
    fn ipv6_excludes_the_subnet_router_anycast_address() {
        let pool = AddressSpace::from_spec(&spec(&["fd00::/120"], Some("fd00::1"), &[])).unwrap();
        assert_eq!(pool.size(), 256);
        assert_eq!(pool.excluded, vec![0..=0, 1..=1]);
        assert_eq!(pool.address_of(5).unwrap().to_string(), "fd00::5");
        // Every CIDR's first address, wherever it lies.
        let two = space(&["fd00::/120", "fd00:1::/126"]);
        assert_eq!(two.excluded, vec![0..=0, 256..=256]);
        // Point-to-point /127 (RFC 6164) and single addresses keep both.
        assert!(space(&["fd00::/127"]).excluded.is_empty());
        assert!(space(&["fd00::/128"]).excluded.is_empty());
    }

    #[test]
    fn wide_ipv6_cidrs_count_their_first_2_to_the_48_addresses_each() {
        // (CIDRs, expected size): before offsets were capped at 2^48, two
        // /64s summed to 0 (2^63 + 2^63 wrapped) and three to 2^63.
        let cases = [
            ("one /64", slash64s(1), MAX_OFFSETS_PER_CIDR),
            ("two /64s", slash64s(2), 2 * MAX_OFFSETS_PER_CIDR),
            ("three /64s", slash64s(3), 3 * MAX_OFFSETS_PER_CIDR),
            ("sixteen /64s", slash64s(16), 16 * MAX_OFFSETS_PER_CIDR),
            (
                "a /48 and a /120",
                vec!["fd01::/48".into(), "fd02::/120".into()],
                MAX_OFFSETS_PER_CIDR + 256,
            ),
            ("all of IPv6", vec!["::/0".into()], MAX_OFFSETS_PER_CIDR),
        ];
        for (name, cidrs, size) in cases {
            let pool = AddressSpace::from_spec(&IPPoolSpec {
                cidrs: cidrs.clone(),
                ..IPPoolSpec::default()
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(pool.size(), size, "{name}");
            // Every CIDR is reachable: an address inside it maps to an
            // offset and back, and so does the last address offsets reach.
            for cidr in &cidrs {
                let (first, _, _) = parse_cidr(cidr).unwrap();
                for value in [first + 1, first + u128::from(MAX_OFFSETS_PER_CIDR - 1)] {
                    let address = to_ip(value, true);
                    if !pool
                        .blocks
                        .iter()
                        .any(|b| value <= b.last_reached() && b.first <= value)
                    {
                        continue; // a CIDR smaller than the cap
                    }
                    let offset = pool
                        .offset_of(&address)
                        .unwrap_or_else(|| panic!("{name}: {address} has no offset"));
                    assert!(offset < pool.size(), "{name}: {address}");
                    assert_eq!(pool.address_of(offset), Some(address), "{name}");
                }
            }
        }
        // Past the cap a wide CIDR's addresses have no offset.
        let wide = space(&["fd00:0:0:1::/64", "fd00:0:0:2::/64"]);
        assert_eq!(wide.offset_of(&ip("fd00:0:0:1:1::")), None);
        assert_eq!(
            wide.offset_of(&ip("fd00:0:0:2::5")),
            Some(MAX_OFFSETS_PER_CIDR + 5)
        );
    }

    #[test]
    fn exclusions_of_wide_cidrs_stay_inside_their_offsets() {
        // A whole /64 excluded: only its reachable offsets, no overflow.
        let cidrs = slash64s(3);
        let pool = AddressSpace::from_spec(&IPPoolSpec {
            cidrs,
            gateway: Some("fd00:0:0:3:ffff::1".into()), // beyond the cap: nothing to exclude
            exclude: vec![
                "fd00:0:0:2::/64".into(),
                "fd00:0:0:1::5-fd00:0:0:3::7".into(),
            ],
            ..IPPoolSpec::default()
        })
        .unwrap();
        let cap = MAX_OFFSETS_PER_CIDR;
        assert_eq!(
            pool.excluded,
            vec![
                0..=0,
                cap..=cap,
                2 * cap..=2 * cap,
                cap..=2 * cap - 1,
                5..=cap - 1,
                cap..=2 * cap - 1,
                2 * cap..=2 * cap + 7,
            ]
        );
    }

    #[test]
    fn overlap_is_per_family_and_per_block() {
        let pool = space(&["10.0.0.0/24", "10.0.9.0/28"]);
        assert!(pool.overlaps(&space(&["10.0.0.128/25"])));
        assert!(pool.overlaps(&space(&["10.0.9.8/29"])));
        assert!(pool.overlaps(&space(&["10.0.0.0/16"])));
        assert!(!pool.overlaps(&space(&["10.0.1.0/24", "10.0.9.16/28"])));
        assert!(!pool.overlaps(&space(&["::a00:0/120"])));
    }

    #[test]
    fn overlap_is_seen_at_the_top_of_the_address_space() {
        // `first + len` overflowed here: 2^128 in u128.
        let top = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120";
        assert!(space(&[top]).overlaps(&space(&[top])));
        assert!(space(&[top]).overlaps(&space(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124"])));
        assert!(space(&["ffff::/16"]).overlaps(&space(&[top])));
        assert!(!space(&[top]).overlaps(&space(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fe00/120"])));
        assert!(space(&["255.255.255.0/24"]).overlaps(&space(&["255.255.255.252/30"])));
        // A wide CIDR overlaps by its addresses, also past its offsets.
        assert!(space(&["fd00::/48"]).overlaps(&space(&["fd00:0:0:ffff::/64"])));
    }

    #[test]
    fn overlapping_cidrs_in_one_pool_are_refused() {
        let cases = [
            (
                "one inside another",
                vec!["10.2.0.0/30", "10.2.0.0/29"],
                "cidrs[1] 10.2.0.0/29 overlaps cidrs[0] 10.2.0.0/30",
            ),
            (
                "the same CIDR twice",
                vec!["10.2.0.0/24", "10.3.0.0/24", "10.2.0.0/24"],
                "cidrs[2] 10.2.0.0/24 overlaps cidrs[0] 10.2.0.0/24",
            ),
            (
                "IPv6 at the top",
                vec!["ffff::/16", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"],
                "cidrs[1] ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120 overlaps cidrs[0] ffff::/16",
            ),
        ];
        for (name, cidrs, expected) in cases {
            let error = AddressSpace::from_spec(&spec(&cidrs, None, &[])).unwrap_err();
            assert_eq!(error.reason(), "OverlappingCIDRs", "{name}");
            assert!(error.to_string().starts_with(expected), "{name}: {error}");
        }
        // Adjacent is not overlapping.
        assert_eq!(space(&["10.2.0.4/30", "10.2.0.0/30"]).size(), 8);
        assert_eq!(space(&["10.2.0.0/30", "10.2.0.4/30"]).size(), 8);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let error = |s: IPPoolSpec| {
            let error = AddressSpace::from_spec(&s).unwrap_err();
            assert_eq!(error.reason(), "InvalidSpec");
            error.to_string()
        };
        assert!(error(spec(&["10.0.0.0/33"], None, &[])).contains("not a valid CIDR"));
        assert!(error(spec(&["10.0.0.1/24"], None, &[])).contains("host bits"));
        assert!(error(spec(&["::1/0"], None, &[])).contains("host bits"));
        assert!(error(spec(&["10.0.0.0/24"], Some("10.0.1.1"), &[])).contains("outside the pool"));
        assert!(
            error(spec(&["10.0.0.0/24", "fd00::/120"], None, &[])).contains("one address family")
        );
        assert!(error(spec(&["10.0.0.0/24"], None, &["10.0.0.9-10.0.0.3"])).contains("reversed"));
        assert!(error(spec(&["10.0.0.0/24"], None, &["10.0.1.0/28"])).contains("outside the pool"));
    }

    #[test]
    fn pools_past_2_to_the_64_addresses_are_refused_naming_the_cidr() {
        // 65,536 CIDRs of 2^48 offsets each: the last one does not fit.
        let cidrs: Vec<String> = (0..=0xffffu32)
            .map(|n| format!("fd00:0:{n:x}::/48"))
            .collect();
        let error = AddressSpace::from_spec(&IPPoolSpec {
            cidrs,
            ..IPPoolSpec::default()
        })
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cidrs[65535] fd00:0:ffff::/48 does not fit"),
            "{error}"
        );
    }
}
