//! The Cloudflare kinds (`networking.cloudflare-operator.io/v1alpha2`), with
//! the fields and status of the seeds (cloudflare-operator's `Tunnel`,
//! `ClusterTunnel`, `WARPConnector`, `VirtualNetwork`,
//! `CloudflareCredentials`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Client, CustomResource, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sources::TunnelKey;

pub const GROUP: &str = "networking.cloudflare-operator.io";
pub const VERSION: &str = "v1alpha2";
pub const DEFAULT_FALLBACK_TARGET: &str = "http_status:404";
pub const DEFAULT_CLOUDFLARED_IMAGE: &str = "cloudflare/cloudflared:latest";

/// `Tunnel` and `ClusterTunnel` have the same spec (the seed: "ClusterTunnel
/// uses the same spec as Tunnel"); the macro writes it once for both kinds.
macro_rules! tunnel_specs {
    ($($(#[$field_attr:meta])* pub $field:ident: $ty:ty,)*) => {
        /// A Cloudflare tunnel for the Ingresses and HTTPRoutes of its own
        /// namespace, and the cloudflared Deployment that runs it.
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
        #[kube(
            group = "networking.cloudflare-operator.io",
            version = "v1alpha2",
            kind = "Tunnel",
            namespaced,
            status = "TunnelStatus",
            shortname = "tun",
            category = "knit",
            category = "cloudflare",
            printcolumn = r#"{"name":"TunnelID","type":"string","jsonPath":".status.tunnelId"}"#,
            printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
            printcolumn = r#"{"name":"Config","type":"integer","jsonPath":".status.configVersion"}"#,
            printcolumn = r#"{"name":"Routes","type":"integer","jsonPath":".status.routes"}"#,
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = Rule::new("has(self.newTunnel) != has(self.existingTunnel)")
            .message("set exactly one of newTunnel and existingTunnel"))]
        #[x_kube(validation = Rule::new("has(self.cloudflare.domain)")
            .message("cloudflare.domain is required: the DNS records of the tunnel's hosts are made in it")
            .field_path(".cloudflare"))]
        pub struct TunnelSpec {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        /// A Cloudflare tunnel shared by the Ingresses and HTTPRoutes of
        /// every namespace. Its credentials Secret is in knit's namespace.
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
        #[kube(
            group = "networking.cloudflare-operator.io",
            version = "v1alpha2",
            kind = "ClusterTunnel",
            status = "TunnelStatus",
            shortname = "ctun",
            category = "knit",
            category = "cloudflare",
            printcolumn = r#"{"name":"TunnelID","type":"string","jsonPath":".status.tunnelId"}"#,
            printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
            printcolumn = r#"{"name":"Config","type":"integer","jsonPath":".status.configVersion"}"#,
            printcolumn = r#"{"name":"Routes","type":"integer","jsonPath":".status.routes"}"#,
            printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        #[serde(rename_all = "camelCase")]
        #[x_kube(validation = Rule::new("has(self.newTunnel) != has(self.existingTunnel)")
            .message("set exactly one of newTunnel and existingTunnel"))]
        #[x_kube(validation = Rule::new("has(self.cloudflare.domain)")
            .message("cloudflare.domain is required: the DNS records of the tunnel's hosts are made in it")
            .field_path(".cloudflare"))]
        pub struct ClusterTunnelSpec {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        impl From<ClusterTunnelSpec> for TunnelSpec {
            fn from(spec: ClusterTunnelSpec) -> TunnelSpec {
                TunnelSpec { $($field: spec.$field,)* }
            }
        }
    };
}

tunnel_specs! {
    /// Create a tunnel with this name (and delete it with this object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("newTunnel is immutable: a renamed tunnel is a new Tunnel object"))]
    pub new_tunnel: Option<NewTunnel>,
    /// Adopt a tunnel that already exists (it is kept when this object goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_tunnel: Option<ExistingTunnel>,
    /// The account, the DNS zone and the API credentials.
    pub cloudflare: CloudflareDetails,
    /// Writes `warp-routing.enabled` into the tunnel's configuration. cloudflared
    /// 2023.9 and later ignore it: private networks are reached through the
    /// `NetworkRoute`s pointing at the tunnel either way.
    #[serde(default)]
    pub enable_warp_routing: bool,
    /// cloudflared's transport to the edge.
    #[serde(default)]
    pub protocol: TunnelProtocol,
    /// What cloudflared answers when no rule matches: `http_status:NNN`,
    /// `hello_world` or an origin URL without a path (cloudflared refuses
    /// one, even `/`: it proxies to the request's own path).
    #[serde(default = "default_fallback_target")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^(http_status:[1-5][0-9][0-9]|hello_world|[a-z][a-z0-9+.-]*://[^/\s]+)$")
    )]
    pub fallback_target: String,
    /// cloudflared's defaults for reaching every origin of the tunnel (its
    /// top-level `originRequest`). A source's `origin.cf-operator.io/<setting>`
    /// annotations override them for its own routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_request: Option<OriginRequestSpec>,
    /// A JSON merge patch (RFC 7386) applied to the generated cloudflared
    /// Deployment, e.g. replicas or affinity.
    #[serde(default = "default_deploy_patch")]
    #[schemars(length(max = 65536))]
    pub deploy_patch: String,
}

fn default_fallback_target() -> String {
    DEFAULT_FALLBACK_TARGET.into()
}

fn default_deploy_patch() -> String {
    "{}".into()
}

/// cloudflared's settings for reaching an origin, by its names. Durations
/// are whole seconds, minutes or hours (`30s`, `2m`, `1h`), at most a day.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OriginRequestSpec {
    /// Accept any certificate from an HTTPS origin.
    #[serde(rename = "noTLSVerify")]
    pub no_tls_verify: Option<bool>,
    /// The name expected on the origin's certificate.
    #[schemars(length(min = 1, max = 253))]
    pub origin_server_name: Option<String>,
    /// A CA bundle file in cloudflared's filesystem (mount it with
    /// `deployPatch`).
    #[schemars(length(min = 1, max = 4096))]
    pub ca_pool: Option<String>,
    /// The Host header sent to the origin.
    #[schemars(length(min = 1, max = 253))]
    pub http_host_header: Option<String>,
    #[schemars(regex(pattern = r"^[0-9]{1,5}[smh]$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("at most a day"))]
    pub connect_timeout: Option<String>,
    #[schemars(regex(pattern = r"^[0-9]{1,5}[smh]$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("at most a day"))]
    pub tls_timeout: Option<String>,
    #[schemars(regex(pattern = r"^[0-9]{1,5}[smh]$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("at most a day"))]
    pub keep_alive_timeout: Option<String>,
    /// Try HTTP/2 to the origin.
    pub http2_origin: Option<bool>,
    pub disable_chunked_encoding: Option<bool>,
}

impl OriginRequestSpec {
    /// The settings as the mapper's sources carry them, read by the same
    /// rules as the annotations.
    pub fn to_origin(&self) -> Result<knit_tunnel_core::OriginRequest, String> {
        let flag = |v: Option<bool>| v.map(|v| v.to_string());
        let entries = [
            ("noTLSVerify", flag(self.no_tls_verify)),
            ("originServerName", self.origin_server_name.clone()),
            ("caPool", self.ca_pool.clone()),
            ("httpHostHeader", self.http_host_header.clone()),
            ("connectTimeout", self.connect_timeout.clone()),
            ("tlsTimeout", self.tls_timeout.clone()),
            ("keepAliveTimeout", self.keep_alive_timeout.clone()),
            ("http2Origin", flag(self.http2_origin)),
            (
                "disableChunkedEncoding",
                flag(self.disable_chunked_encoding),
            ),
        ];
        let mut origin = knit_tunnel_core::OriginRequest::default();
        for (key, value) in entries {
            if let Some(value) = value {
                origin.set(key, &value)?;
            }
        }
        Ok(origin)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewTunnel {
    /// The tunnel's name in Cloudflare, unique in the account.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) || has(self.name)")
    .message("existingTunnel needs its id or its name"))]
pub struct ExistingTunnel {
    #[schemars(length(min = 1, max = 64))]
    pub id: Option<String>,
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
}

/// The Cloudflare account and the credentials to reach it.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.secret) && has(self.credentialsRef))")
    .message("set secret or credentialsRef, not both"))]
pub struct CloudflareDetails {
    #[schemars(length(min = 1, max = 64))]
    pub account_id: String,
    /// The DNS zone the tunnel's hosts live in.
    #[schemars(length(min = 1, max = 253))]
    pub domain: Option<String>,
    /// A Secret with `CLOUDFLARE_API_TOKEN`: in the object's namespace, or
    /// knit's for cluster-scoped kinds.
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// A `CloudflareCredentials` object. Without `secret` or
    /// `credentialsRef`, the one marked `isDefault` is used.
    pub credentials_ref: Option<CredentialsRef>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    #[default]
    Auto,
    Quic,
    Http2,
}

impl TunnelProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelProtocol::Auto => "auto",
            TunnelProtocol::Quic => "quic",
            TunnelProtocol::Http2 => "http2",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    Pending,
    Creating,
    Active,
    Error,
    Deleting,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    pub tunnel_id: Option<String>,
    pub tunnel_name: Option<String>,
    pub account_id: Option<String>,
    pub state: Option<TunnelState>,
    /// The version Cloudflare gave the configuration knit last put.
    pub config_version: Option<u64>,
    /// A digest of that configuration: an unchanged plan is not put again.
    pub config_digest: Option<String>,
    /// cloudflared ingress rules published, the fallback excluded.
    pub routes: Option<u32>,
    /// Route sources (Ingresses, HTTPRoutes) bound to this tunnel, and how
    /// many of them are refused (conflict, namespace, invalid).
    pub sources: Option<u32>,
    pub refused_sources: Option<u32>,
    /// The mapper that made the last decision (`plugin`, `pluginDigest`,
    /// `pluginSource`).
    #[serde(flatten)]
    pub decided_by: crate::controller::PluginStatus,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A WARP connector: a `warp_connector` tunnel advertising private networks
/// to WARP clients and other sites, and the Deployment of the WARP client
/// (in connector mode) running it.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloudflare-operator.io",
    version = "v1alpha2",
    kind = "WARPConnector",
    namespaced,
    status = "WARPConnectorStatus",
    shortname = "warpc",
    category = "knit",
    category = "cloudflare",
    printcolumn = r#"{"name":"ConnectorID","type":"string","jsonPath":".status.connectorId"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WARPConnectorSpec {
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The connector's image. It must hold the WARP client (`warp-svc`,
    /// `warp-cli`, `dbus-daemon`), which is what serves a WARP Connector:
    /// the default, the seed's cloudflared image, cannot (cloudflared serves
    /// `cfd_tunnel` tunnels only), and `ImageCanServe=False` says so. Build
    /// one from Cloudflare's `cloudflare-warp` package.
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// The `VirtualNetwork` the routes are advertised in; the account's
    /// default network when unset.
    pub virtual_network_ref: Option<VirtualNetworkRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s.network == r.network))")
        .message("each network may be advertised once"))]
    pub routes: Vec<WARPConnectorRoute>,
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The connector pods' affinity, e.g. spread over nodes or zones.
    pub affinity: Option<Affinity>,
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    pub cloudflare: CloudflareDetails,
}

fn default_replicas() -> i32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNetworkRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WARPConnectorRoute {
    /// A CIDR, e.g. `10.0.0.0/8`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("network must be a CIDR such as 10.0.0.0/8"))]
    pub network: String,
    #[schemars(length(max = 100))]
    pub comment: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WARPConnectorStatus {
    pub connector_id: Option<String>,
    pub account_id: Option<String>,
    pub virtual_network_id: Option<String>,
    pub state: Option<TunnelState>,
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Zero Trust virtual network: routes in different virtual networks may
/// overlap.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloudflare-operator.io",
    version = "v1alpha2",
    kind = "VirtualNetwork",
    status = "VirtualNetworkStatus",
    shortname = "vnet",
    category = "knit",
    category = "cloudflare",
    printcolumn = r#"{"name":"NetworkID","type":"string","jsonPath":".status.virtualNetworkId"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.isDefaultNetwork"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNetworkSpec {
    /// The network's name in Cloudflare; the object's name when unset.
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    #[schemars(length(max = 255))]
    pub comment: Option<String>,
    #[serde(default)]
    pub is_default_network: bool,
    pub cloudflare: CloudflareDetails,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNetworkStatus {
    pub virtual_network_id: Option<String>,
    pub account_id: Option<String>,
    pub state: Option<TunnelState>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// API credentials shared by name (`cloudflare.credentialsRef`): an account
/// and the Secret holding its token.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloudflare-operator.io",
    version = "v1alpha2",
    kind = "CloudflareCredentials",
    plural = "cloudflarecredentials",
    status = "CloudflareCredentialsStatus",
    shortname = "cfcreds",
    category = "knit",
    category = "cloudflare",
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".spec.accountId"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.isDefault"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CloudflareCredentialsSpec {
    #[schemars(length(min = 1, max = 64))]
    pub account_id: String,
    pub secret_ref: SecretKeyRef,
    /// The zone used when an object names none.
    #[schemars(length(min = 1, max = 253))]
    pub default_domain: Option<String>,
    /// Used by objects that give neither `secret` nor `credentialsRef`.
    #[serde(default)]
    pub is_default: bool,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// knit's namespace when unset.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// `CLOUDFLARE_API_TOKEN` when unset.
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudflareCredentialsStatus {
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A private network (CIDR) routed to WARP clients through a `Tunnel` or a
/// `ClusterTunnel`, in a virtual network.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloudflare-operator.io",
    version = "v1alpha2",
    kind = "NetworkRoute",
    status = "NetworkRouteStatus",
    shortname = "nroute",
    category = "knit",
    category = "cloudflare",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"Tunnel","type":"string","jsonPath":".spec.tunnelRef.name"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRouteSpec {
    /// A CIDR written from its first address, e.g. `10.0.0.0/8`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("network must be a CIDR such as 10.0.0.0/8"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()")
        .message("network must start at the network's first address, e.g. 10.0.0.0/8 rather than 10.1.2.3/8"))]
    pub network: String,
    /// The tunnel the network is reached through.
    pub tunnel_ref: TunnelRef,
    /// The `VirtualNetwork` the route is in; the account's default network
    /// when unset.
    pub virtual_network_ref: Option<VirtualNetworkRef>,
    /// Shown in Cloudflare after knit's ownership mark.
    #[schemars(length(max = 78))]
    pub comment: Option<String>,
    /// The account (the tunnel's) and the credentials; a Secret named here is
    /// in knit's namespace.
    pub cloudflare: CloudflareDetails,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'ClusterTunnel' ? !has(self.__namespace__) : has(self.__namespace__)")
    .message("a Tunnel is named with its namespace; a ClusterTunnel without one"))]
pub struct TunnelRef {
    #[serde(default)]
    pub kind: TunnelRefKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TunnelRefKind {
    Tunnel,
    #[default]
    ClusterTunnel,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRouteStatus {
    pub network: Option<String>,
    pub tunnel_id: Option<String>,
    pub tunnel_name: Option<String>,
    pub virtual_network_id: Option<String>,
    pub account_id: Option<String>,
    /// The route's ID in Cloudflare.
    pub route_id: Option<String>,
    pub state: Option<TunnelState>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// DNS records in a Cloudflare zone: static content, or the addresses of a
/// Service, Ingress or Node in the cluster, kept up to date.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloudflare-operator.io",
    version = "v1alpha2",
    kind = "DNSRecord",
    namespaced,
    status = "DNSRecordStatus",
    shortname = "dnsrec",
    category = "knit",
    category = "cloudflare",
    printcolumn = r#"{"name":"FQDN","type":"string","jsonPath":".status.fqdn"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".status.resolvedType"}"#,
    printcolumn = r#"{"name":"Content","type":"string","jsonPath":".status.resolvedContent"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.content) != has(self.sourceRef)")
    .message("set exactly one of content and sourceRef"))]
#[x_kube(validation = Rule::new("!has(self.content) || has(self.type)")
    .message("a record with static content needs its type"))]
#[x_kube(validation = Rule::new("!has(self.sourceRef) || !has(self.type) || self.type != 'TXT'")
    .message("a record from a sourceRef is A, AAAA or CNAME"))]
#[x_kube(validation = Rule::new("!self.proxied || !has(self.type) || self.type != 'TXT'")
    .message("TXT records cannot be proxied"))]
#[x_kube(validation = Rule::new("!has(self.content) || !has(self.type) || self.type != 'A' || (isIP(self.content) && ip(self.content).family() == 4)")
    .message("an A record's content is an IPv4 address"))]
#[x_kube(validation = Rule::new("!has(self.content) || !has(self.type) || self.type != 'AAAA' || (isIP(self.content) && ip(self.content).family() == 6)")
    .message("an AAAA record's content is an IPv6 address"))]
#[x_kube(validation = Rule::new("!self.proxied || self.ttl == 1")
    .message("proxied records have an automatic TTL: leave ttl at 1"))]
#[x_kube(validation = Rule::new("has(self.cloudflare.domain)")
    .message("cloudflare.domain is required: the zone the record is made in")
    .field_path(".cloudflare"))]
pub struct DNSRecordSpec {
    /// The record's name: fully qualified inside the zone, relative to it, or
    /// `@` for the zone's apex.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Required with `content`; with `sourceRef`, detected from the addresses
    /// (an IPv4 address gives A, IPv6 AAAA, a host name CNAME) unless set.
    pub r#type: Option<DnsRecordType>,
    /// Static content: an address, a host name or text.
    #[schemars(length(min = 1, max = 2048))]
    pub content: Option<String>,
    /// The object whose addresses become the record's content.
    pub source_ref: Option<DnsSourceRef>,
    /// Which of the source's addresses are published.
    #[serde(default)]
    pub address_selection: AddressSelection,
    /// What happens to the records when the source is deleted.
    #[serde(default)]
    pub source_deletion_policy: SourceDeletionPolicy,
    /// Seconds; 1 means automatic.
    #[serde(default = "default_ttl")]
    #[x_kube(validation = Rule::new("self == 1 || (self >= 60 && self <= 86400)")
        .message("ttl is 1 (automatic) or between 60 and 86400 seconds"))]
    pub ttl: u32,
    /// Through Cloudflare's proxy (orange cloud).
    #[serde(default)]
    pub proxied: bool,
    /// Shown in Cloudflare after knit's ownership mark.
    #[schemars(length(max = 78))]
    pub comment: Option<String>,
    pub cloudflare: CloudflareDetails,
}

fn default_ttl() -> u32 {
    1
}

#[derive(
    Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum DnsRecordType {
    A,
    AAAA,
    CNAME,
    TXT,
}

impl DnsRecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsRecordType::A => "A",
            DnsRecordType::AAAA => "AAAA",
            DnsRecordType::CNAME => "CNAME",
            DnsRecordType::TXT => "TXT",
        }
    }
}

/// Exactly one source, in the DNSRecord's namespace (Nodes are cluster-wide).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.service), has(self.ingress), has(self.node)].filter(x, x).size() == 1")
    .message("set exactly one of service, ingress and node"))]
pub struct DnsSourceRef {
    pub service: Option<ServiceDnsSource>,
    pub ingress: Option<NamedSource>,
    pub node: Option<NodeDnsSource>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDnsSource {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub address_type: ServiceAddressType,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ServiceAddressType {
    /// `status.loadBalancer.ingress[].ip`
    #[default]
    LoadBalancerIP,
    /// `status.loadBalancer.ingress[].hostname`
    LoadBalancerHostname,
    /// `spec.externalIPs`
    ExternalIP,
    /// `spec.externalName`
    ExternalName,
    /// `spec.clusterIPs`
    ClusterIP,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamedSource {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDnsSource {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default)]
    pub address_type: NodeAddressType,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum NodeAddressType {
    #[default]
    ExternalIP,
    InternalIP,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AddressSelection {
    /// The first address the source lists.
    #[default]
    First,
    /// Every address, one record each (round robin); a host name only when
    /// the source has no address.
    All,
    PreferIPv4,
    PreferIPv6,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum SourceDeletionPolicy {
    /// The records go with the source.
    #[default]
    Delete,
    /// The records stay as they were.
    Orphan,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DnsRecordState {
    Active,
    Pending,
    Orphaned,
    Error,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DNSRecordStatus {
    /// The fully qualified name published.
    pub fqdn: Option<String>,
    pub zone_id: Option<String>,
    /// The first of `managedRecordIds`.
    pub record_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_record_ids: Vec<String>,
    pub resolved_type: Option<String>,
    /// The first of `resolvedAddresses`.
    pub resolved_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_addresses: Vec<String>,
    pub state: Option<DnsRecordState>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `Tunnel` or `ClusterTunnel`: the one reconcile serves both.
pub trait TunnelObject:
    Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn key(&self) -> TunnelKey;
    fn tunnel_spec(&self) -> TunnelSpec;
    fn tunnel_status(&self) -> Option<&TunnelStatus>;
    fn api(client: Client, key: &TunnelKey) -> Api<Self>;
}

impl TunnelObject for Tunnel {
    fn key(&self) -> TunnelKey {
        TunnelKey::Namespaced {
            namespace: self.namespace().unwrap_or_default(),
            name: self.name_any(),
        }
    }
    fn tunnel_spec(&self) -> TunnelSpec {
        self.spec.clone()
    }
    fn tunnel_status(&self) -> Option<&TunnelStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, key: &TunnelKey) -> Api<Self> {
        Api::namespaced(client, key.namespace().unwrap_or_default())
    }
}

impl TunnelObject for ClusterTunnel {
    fn key(&self) -> TunnelKey {
        TunnelKey::Cluster {
            name: self.name_any(),
        }
    }
    fn tunnel_spec(&self) -> TunnelSpec {
        self.spec.clone().into()
    }
    fn tunnel_status(&self) -> Option<&TunnelStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _: &TunnelKey) -> Api<Self> {
        Api::all(client)
    }
}
