//! The records knit reads and writes, with only the fields it uses. Field
//! names are the API's: snake_case for the v4 objects, and cloudflared's own
//! spelling inside a tunnel configuration (`originRequest`, `warp-routing`).
//! Answers may carry more fields than these; they are ignored.

use serde::{Deserialize, Deserializer, Serialize};

/// A Cloudflare Tunnel (`cfd_tunnel`) or WARP connector (`warp_connector`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Tunnel {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub account_tag: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Set once the tunnel is deleted; deleted tunnels stay readable.
    #[serde(default)]
    pub deleted_at: Option<String>,
    /// `cfd_tunnel` or `warp_connector`.
    #[serde(default)]
    pub tun_type: Option<String>,
    /// `inactive` (never run), `healthy`, `degraded` or `down`.
    #[serde(default)]
    pub status: Option<String>,
    /// Whether the configuration is managed through the API (config_src
    /// `cloudflare`) rather than a file beside cloudflared.
    #[serde(default)]
    pub remote_config: Option<bool>,
    #[serde(default)]
    pub config_src: Option<String>,
    #[serde(default)]
    pub conns_active_at: Option<String>,
}

/// The configuration of a remotely managed tunnel, as cloudflared reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelConfig {
    /// Tried in order; the last rule must match everything (no hostname, no
    /// path).
    #[serde(default, deserialize_with = "null_as_default")]
    pub ingress: Vec<IngressRule>,
    #[serde(
        rename = "warp-routing",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub warp_routing: Option<WarpRouting>,
    /// Defaults for every rule; cloudflared's own keys, passed through.
    #[serde(
        rename = "originRequest",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub origin_request: Option<serde_json::Value>,
}

/// `warp-routing`: whether the tunnel carries private network traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarpRouting {
    pub enabled: bool,
}

/// One cloudflared ingress rule.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngressRule {
    pub hostname: Option<String>,
    /// A regular expression on the request path.
    pub path: Option<String>,
    /// `http://host:port`, `https://...`, `tcp://...`, `http_status:404`, ...
    pub service: String,
    #[serde(rename = "originRequest", default, deserialize_with = "empty_as_none")]
    pub origin_request: Option<serde_json::Value>,
}

impl IngressRule {
    /// A rule for `hostname` (any path).
    pub fn host(hostname: impl Into<String>, service: impl Into<String>) -> Self {
        IngressRule {
            hostname: Some(hostname.into()),
            path: None,
            service: service.into(),
            origin_request: None,
        }
    }

    /// The catch-all rule every configuration ends with.
    pub fn catch_all(service: impl Into<String>) -> Self {
        IngressRule {
            hostname: None,
            path: None,
            service: service.into(),
            origin_request: None,
        }
    }
}

/// A stored tunnel configuration and its version (it grows by one per PUT).
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelConfiguration {
    pub version: u64,
    pub config: TunnelConfig,
}

/// A DNS record as the API reports it. Names are fully qualified.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DnsRecord {
    pub id: String,
    pub name: String,
    pub r#type: String,
    pub content: String,
    #[serde(default)]
    pub proxied: bool,
    pub ttl: u32,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A DNS record to create, or to overwrite one with (PUT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewDnsRecord {
    /// Fully qualified, inside the zone.
    pub name: String,
    pub r#type: String,
    pub content: String,
    pub proxied: bool,
    /// Seconds; 1 means automatic (and is what proxied records use).
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// DNS changes made in one atomic call (`POST /zones/{id}/dns_records/batch`):
/// all of them or none. Cloudflare runs deletes, then puts, then posts,
/// whatever order the body lists them in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsBatch {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<RecordId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub puts: Vec<RecordPut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub posts: Vec<NewDnsRecord>,
}

impl DnsBatch {
    /// Operations in the batch: what a plan's batch size limits.
    pub fn len(&self) -> usize {
        self.deletes.len() + self.puts.len() + self.posts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordId {
    pub id: String,
}

/// An overwrite (PUT) of record `id` inside a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordPut {
    pub id: String,
    #[serde(flatten)]
    pub record: NewDnsRecord,
}

/// What a batch did: the records it wrote, in the order of the batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DnsBatchResult {
    #[serde(default)]
    pub puts: Vec<DnsRecord>,
    #[serde(default)]
    pub posts: Vec<DnsRecord>,
}

/// Which DNS records to list; `None` fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsFilter {
    /// Exact, fully qualified name.
    pub name: Option<String>,
    pub r#type: Option<String>,
    /// Records whose comment starts with this (knit's ownership marker).
    pub comment_startswith: Option<String>,
}

/// A Zero Trust virtual network.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VirtualNetwork {
    pub id: String,
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub comment: String,
    #[serde(default)]
    pub is_default_network: bool,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

/// A virtual network to create, or the fields to set on one (PATCH).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewVirtualNetwork {
    pub name: String,
    pub comment: String,
    pub is_default_network: bool,
}

/// A private network route (teamnet route) through a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub id: String,
    /// CIDR.
    pub network: String,
    pub tunnel_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub comment: String,
    #[serde(default)]
    pub virtual_network_id: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<String>,
}

/// A route to create. Without `virtual_network_id` it goes into the
/// account's default virtual network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewRoute {
    pub network: String,
    pub tunnel_id: String,
    pub comment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<String>,
}

/// Which routes to list; `None` fields do not filter. Deleted routes are
/// never listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFilter {
    pub tunnel_id: Option<String>,
    pub comment: Option<String>,
    pub virtual_network_id: Option<String>,
}

/// A zone as `GET /zones` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(super) struct Zone {
    pub id: String,
    pub name: String,
}

/// `null` reads as the type's default (the API sends `null` for empty
/// lists and comments).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `null` and `{}` read as `None`: the API may echo an empty
/// `originRequest`, which means the same as none, so a configuration read
/// back compares equal to the one written.
fn empty_as_none<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: Deserializer<'de>,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.filter(|value| !matches!(value, serde_json::Value::Object(map) if map.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ingress_rules_have_cloudflareds_shape() {
        let rules = vec![
            IngressRule {
                hostname: Some("app.example.com".into()),
                path: Some("^/api/".into()),
                service: "http://app.default.svc:8080".into(),
                origin_request: Some(json!({"noTLSVerify": true})),
            },
            IngressRule::host("www.example.com", "http://web:80"),
            IngressRule::catch_all("http_status:404"),
        ];
        assert_eq!(
            serde_json::to_value(&rules).unwrap(),
            json!([
                {"hostname": "app.example.com", "path": "^/api/",
                 "service": "http://app.default.svc:8080",
                 "originRequest": {"noTLSVerify": true}},
                {"hostname": "www.example.com", "service": "http://web:80"},
                {"service": "http_status:404"},
            ])
        );
    }

    #[test]
    fn warp_routing_and_origin_request_use_cloudflareds_keys() {
        let config = TunnelConfig {
            ingress: vec![IngressRule::catch_all("http_status:404")],
            warp_routing: Some(WarpRouting { enabled: true }),
            origin_request: Some(json!({"connectTimeout": 30})),
        };
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(
            value,
            json!({
                "ingress": [{"service": "http_status:404"}],
                "warp-routing": {"enabled": true},
                "originRequest": {"connectTimeout": 30},
            })
        );
        let back: TunnelConfig = serde_json::from_value(value).unwrap();
        assert_eq!(back, config);
        let bare = TunnelConfig {
            ingress: vec![IngressRule::catch_all("http_status:404")],
            ..TunnelConfig::default()
        };
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"ingress": [{"service": "http_status:404"}]})
        );
    }

    #[test]
    fn an_echoed_empty_origin_request_reads_as_none() {
        let config: TunnelConfig = serde_json::from_value(json!({
            "ingress": [
                {"hostname": "a.example.com", "service": "http://a", "originRequest": {}},
                {"service": "http_status:404", "originRequest": null, "path": null},
            ],
            "originRequest": {},
        }))
        .unwrap();
        assert_eq!(
            config,
            TunnelConfig {
                ingress: vec![
                    IngressRule::host("a.example.com", "http://a"),
                    IngressRule::catch_all("http_status:404"),
                ],
                ..TunnelConfig::default()
            }
        );
    }

    #[test]
    fn records_read_with_nulls_and_extra_fields() {
        let record: DnsRecord = serde_json::from_value(json!({
            "id": "r1", "zone_id": "z", "name": "a.example.com", "type": "CNAME",
            "content": "t.cfargotunnel.com", "proxied": true, "ttl": 1,
            "comment": null, "tags": [], "meta": {}, "created_on": "2024-01-01T00:00:00Z",
        }))
        .unwrap();
        assert_eq!(record.comment, None);
        assert!(record.proxied);
        let vnet: VirtualNetwork = serde_json::from_value(json!({
            "id": "v1", "name": "default", "comment": null, "is_default_network": true,
            "created_at": "2024-01-01T00:00:00Z", "deleted_at": null,
        }))
        .unwrap();
        assert_eq!(vnet.comment, "");
        let new = NewDnsRecord {
            name: "a.example.com".into(),
            r#type: "CNAME".into(),
            content: "t.cfargotunnel.com".into(),
            proxied: true,
            ttl: 1,
            comment: None,
        };
        assert_eq!(
            serde_json::to_value(&new).unwrap(),
            json!({"name": "a.example.com", "type": "CNAME",
                   "content": "t.cfargotunnel.com", "proxied": true, "ttl": 1})
        );
        let route = NewRoute {
            network: "10.0.0.0/8".into(),
            tunnel_id: "t".into(),
            comment: "knit".into(),
            virtual_network_id: None,
        };
        assert_eq!(
            serde_json::to_value(&route).unwrap(),
            json!({"network": "10.0.0.0/8", "tunnel_id": "t", "comment": "knit"})
        );
    }
}
