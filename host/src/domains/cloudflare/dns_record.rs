//! The pure part of a `DNSRecord`: its fully qualified name, the addresses
//! of its source, which of them are published, and the writes that bring
//! the records it owns there.

use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;

use super::plan::{DnsChanges, OwnerMarker};
use super::types::{
    AddressSelection, DNSRecordSpec, DnsRecordType, NodeAddressType, ServiceAddressType,
};
use crate::providers::cloudflare::{DnsRecord, NewDnsRecord};

/// The record's name inside `zone`: `@` is the apex, a name already in the
/// zone stays, anything else is relative to it.
pub fn fqdn(name: &str, zone: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    if name == "@" || name == zone {
        zone
    } else if name.ends_with(&format!(".{zone}")) {
        name
    } else {
        format!("{name}.{zone}")
    }
}

/// The addresses a Service offers, of the kind asked for, in its order.
pub fn service_addresses(service: &Service, kind: ServiceAddressType) -> Vec<String> {
    let spec = service.spec.clone().unwrap_or_default();
    let balancer = || {
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default()
    };
    match kind {
        ServiceAddressType::LoadBalancerIP => balancer().into_iter().filter_map(|i| i.ip).collect(),
        ServiceAddressType::LoadBalancerHostname => {
            balancer().into_iter().filter_map(|i| i.hostname).collect()
        }
        ServiceAddressType::ExternalIP => spec.external_ips.unwrap_or_default(),
        ServiceAddressType::ExternalName => spec.external_name.into_iter().collect(),
        ServiceAddressType::ClusterIP => spec
            .cluster_ips
            .or(spec.cluster_ip.map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            // A headless Service has no address.
            .filter(|ip| ip != "None")
            .collect(),
    }
}

/// The addresses an Ingress's load balancer reports: IPs, then host names.
pub fn ingress_addresses(ingress: &Ingress) -> Vec<String> {
    let entries = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let ips = entries.iter().filter_map(|i| i.ip.clone());
    let hostnames = entries.iter().filter_map(|i| i.hostname.clone());
    ips.chain(hostnames).collect()
}

pub fn node_addresses(node: &Node, kind: NodeAddressType) -> Vec<String> {
    let wanted = match kind {
        NodeAddressType::ExternalIP => "ExternalIP",
        NodeAddressType::InternalIP => "InternalIP",
    };
    node.status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == wanted)
        .map(|a| a.address)
        .collect()
}

/// The record type an address is published as.
pub fn address_type(address: &str) -> DnsRecordType {
    if address.parse::<Ipv4Addr>().is_ok() {
        DnsRecordType::A
    } else if address.parse::<Ipv6Addr>().is_ok() {
        DnsRecordType::AAAA
    } else {
        DnsRecordType::CNAME
    }
}

/// Which addresses become records, each with its type. `only` keeps the
/// addresses of one type (the spec's `type`). Duplicates count once.
pub fn select(
    addresses: &[String],
    selection: AddressSelection,
    only: Option<DnsRecordType>,
) -> Vec<(DnsRecordType, String)> {
    let mut candidates: Vec<(DnsRecordType, String)> = Vec::new();
    for address in addresses {
        let address = address.trim_end_matches('.').to_ascii_lowercase();
        let kind = address_type(&address);
        if only.is_none_or(|t| t == kind) && !candidates.iter().any(|(_, a)| *a == address) {
            candidates.push((kind, address));
        }
    }
    let first_of = |kind: DnsRecordType| candidates.iter().find(|(t, _)| *t == kind).cloned();
    let first = candidates.first().cloned();
    match selection {
        AddressSelection::First => first.into_iter().collect(),
        AddressSelection::PreferIPv4 => first_of(DnsRecordType::A).or(first).into_iter().collect(),
        AddressSelection::PreferIPv6 => first_of(DnsRecordType::AAAA)
            .or(first)
            .into_iter()
            .collect(),
        // A CNAME stands alone: every IP, or else one host name.
        AddressSelection::All => {
            let ips: Vec<_> = candidates
                .iter()
                .filter(|(t, _)| *t != DnsRecordType::CNAME)
                .cloned()
                .collect();
            if ips.is_empty() {
                first.into_iter().collect()
            } else {
                ips
            }
        }
    }
}

/// The records wanted: static content, or the selected addresses.
pub fn wanted_records(
    spec: &DNSRecordSpec,
    fqdn: &str,
    contents: &[(DnsRecordType, String)],
    marker: &OwnerMarker,
    owner: &str,
) -> Vec<NewDnsRecord> {
    let comment = super::objects::marked_comment(marker, owner, spec.comment.as_deref());
    contents
        .iter()
        .map(|(kind, content)| NewDnsRecord {
            name: fqdn.to_owned(),
            r#type: kind.as_str().to_owned(),
            content: content.clone(),
            proxied: spec.proxied,
            ttl: spec.ttl,
            comment: Some(comment.clone()),
        })
        .collect()
}

/// The static record of a spec with `content`.
pub fn static_content(spec: &DNSRecordSpec) -> Vec<(DnsRecordType, String)> {
    match (spec.r#type, &spec.content) {
        (Some(kind), Some(content)) => vec![(kind, content.clone())],
        _ => Vec::new(),
    }
}

/// A record at the name that knit does not own and that the wanted records
/// cannot live beside: a CNAME on either side, or another owner's record of
/// the same address type, or an identical record.
pub fn blocking<'a>(foreign: &'a [DnsRecord], wanted: &[NewDnsRecord]) -> Option<&'a DnsRecord> {
    foreign.iter().find(|other| {
        wanted.iter().any(|want| {
            other.name == want.name
                && (other.r#type == "CNAME"
                    || want.r#type == "CNAME"
                    || (other.r#type == want.r#type && want.r#type != "TXT")
                    || (other.r#type == want.r#type && other.content == want.content))
        })
    })
}

/// The writes that turn `owned` (the records this object's mark owns,
/// anywhere in the zone) into `wanted`. A record already right stays; a
/// wrong one is rewritten in place while there are wanted records left, so
/// an address change keeps its record's ID; the rest are deleted.
pub fn record_changes(owned: &[DnsRecord], wanted: &[NewDnsRecord]) -> DnsChanges {
    let same = |have: &DnsRecord, want: &NewDnsRecord| {
        have.name == want.name
            && have.r#type == want.r#type
            && have.content.eq_ignore_ascii_case(&want.content)
            && have.proxied == want.proxied
            && have.ttl == want.ttl
            && have.comment == want.comment
    };
    let mut left: Vec<&DnsRecord> = owned.iter().collect();
    let mut missing = Vec::new();
    for want in wanted {
        match left.iter().position(|have| same(have, want)) {
            Some(i) => {
                left.remove(i);
            }
            None => missing.push(want.clone()),
        }
    }
    let mut changes = DnsChanges::default();
    let mut stale = left.into_iter();
    for want in missing {
        match stale.next() {
            Some(have) => changes.update.push((have.id.clone(), want)),
            None => changes.create.push(want),
        }
    }
    changes.delete = stale.cloned().collect();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeStatus, ServiceSpec,
        ServiceStatus,
    };

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_made_fully_qualified_in_the_zone() {
        assert_eq!(fqdn("@", "example.com"), "example.com");
        assert_eq!(fqdn("www", "example.com"), "www.example.com");
        assert_eq!(fqdn("WWW.Example.com.", "example.com"), "www.example.com");
        assert_eq!(fqdn("api.example.com", "example.com"), "api.example.com");
        // Only a real suffix counts: notexample.com is not in example.com.
        assert_eq!(
            fqdn("notexample.com", "example.com"),
            "notexample.com.example.com"
        );
    }

    #[test]
    fn a_service_offers_the_addresses_of_the_kind_asked_for() {
        let service = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                external_ips: Some(strings(&["198.51.100.7"])),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![
                        LoadBalancerIngress {
                            ip: Some("203.0.113.5".into()),
                            ..Default::default()
                        },
                        LoadBalancerIngress {
                            hostname: Some("lb.elb.example.net".into()),
                            ..Default::default()
                        },
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let of = |kind| service_addresses(&service, kind);
        assert_eq!(
            of(ServiceAddressType::LoadBalancerIP),
            strings(&["203.0.113.5"])
        );
        assert_eq!(
            of(ServiceAddressType::LoadBalancerHostname),
            strings(&["lb.elb.example.net"])
        );
        assert_eq!(
            of(ServiceAddressType::ExternalIP),
            strings(&["198.51.100.7"])
        );
        assert_eq!(of(ServiceAddressType::ClusterIP), strings(&["10.96.0.10"]));
        assert!(of(ServiceAddressType::ExternalName).is_empty());
    }

    #[test]
    fn a_node_offers_its_addresses_of_one_type() {
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "10.0.0.4".into(),
                    },
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "203.0.113.9".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            node_addresses(&node, NodeAddressType::ExternalIP),
            strings(&["203.0.113.9"])
        );
        assert_eq!(
            node_addresses(&node, NodeAddressType::InternalIP),
            strings(&["10.0.0.4"])
        );
    }

    #[test]
    fn selection_picks_addresses_and_their_types() {
        use DnsRecordType::*;
        let mixed = strings(&[
            "lb.example.net",
            "2001:db8::1",
            "203.0.113.5",
            "203.0.113.6",
        ]);
        let pick = |selection, only| select(&mixed, selection, only);
        assert_eq!(
            pick(AddressSelection::First, None),
            vec![(CNAME, "lb.example.net".into())]
        );
        assert_eq!(
            pick(AddressSelection::PreferIPv4, None),
            vec![(A, "203.0.113.5".into())]
        );
        assert_eq!(
            pick(AddressSelection::PreferIPv6, None),
            vec![(AAAA, "2001:db8::1".into())]
        );
        // Every IP, never a CNAME beside them.
        assert_eq!(
            pick(AddressSelection::All, None),
            vec![
                (AAAA, "2001:db8::1".into()),
                (A, "203.0.113.5".into()),
                (A, "203.0.113.6".into())
            ]
        );
        assert_eq!(
            pick(AddressSelection::All, Some(A)),
            vec![(A, "203.0.113.5".into()), (A, "203.0.113.6".into())]
        );
        assert_eq!(
            select(
                &strings(&["a.example.net", "b.example.net"]),
                AddressSelection::All,
                None
            ),
            vec![(CNAME, "a.example.net".into())]
        );
        // Preferences fall back to the first address.
        assert_eq!(
            select(
                &strings(&["203.0.113.5"]),
                AddressSelection::PreferIPv6,
                None
            ),
            vec![(A, "203.0.113.5".into())]
        );
        assert!(select(&[], AddressSelection::First, None).is_empty());
        assert!(pick(AddressSelection::First, Some(TXT)).is_empty());
    }

    fn record(id: &str, kind: &str, content: &str, comment: &str) -> DnsRecord {
        let NewDnsRecord {
            name,
            r#type,
            content,
            proxied,
            ttl,
            comment,
        } = want(kind, content, comment);
        DnsRecord {
            id: id.into(),
            name,
            r#type,
            content,
            proxied,
            ttl,
            comment,
        }
    }

    fn want(kind: &str, content: &str, comment: &str) -> NewDnsRecord {
        NewDnsRecord {
            name: "www.example.com".into(),
            r#type: kind.into(),
            content: content.into(),
            proxied: false,
            ttl: 1,
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn changes_keep_what_is_right_rewrite_in_place_and_delete_the_rest() {
        let owned = vec![
            record("1", "A", "203.0.113.5", "m"),
            record("2", "A", "203.0.113.6", "m"),
            record("3", "A", "203.0.113.7", "m"),
        ];
        // .5 stays, .6 becomes .8 in place, .7 goes.
        let changes = record_changes(
            &owned,
            &[want("A", "203.0.113.5", "m"), want("A", "203.0.113.8", "m")],
        );
        assert!(changes.create.is_empty());
        assert_eq!(
            changes.update,
            vec![("2".into(), want("A", "203.0.113.8", "m"))]
        );
        assert_eq!(changes.delete, vec![owned[2].clone()]);
        // Nothing owned: everything is created; nothing wanted: all goes.
        assert_eq!(
            record_changes(&[], &[want("TXT", "x", "m")]).create.len(),
            1
        );
        assert_eq!(record_changes(&owned, &[]).delete.len(), 3);
        // Up to date: no write.
        assert!(record_changes(&owned[..1], &[want("A", "203.0.113.5", "m")]).is_empty());
    }

    #[test]
    fn foreign_records_block_only_what_cannot_live_beside_them() {
        let foreign = [record("9", "TXT", "v=spf1 -all", "someone")];
        assert!(blocking(&foreign, &[want("TXT", "verify-123", "m")]).is_none());
        assert!(blocking(&foreign, &[want("TXT", "v=spf1 -all", "m")]).is_some());
        assert!(blocking(&foreign, &[want("CNAME", "lb.example.net", "m")]).is_some());
        let a = [record("8", "A", "198.51.100.1", "someone")];
        assert!(blocking(&a, &[want("A", "203.0.113.5", "m")]).is_some());
        assert!(blocking(&a, &[want("AAAA", "2001:db8::1", "m")]).is_none());
        let cname = [record("7", "CNAME", "x.example.net", "someone")];
        assert!(blocking(&cname, &[want("TXT", "t", "m")]).is_some());
        assert!(blocking(&cname, &[]).is_none());
    }
}
