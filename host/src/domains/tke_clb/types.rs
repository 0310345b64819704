//! The TKE CLB kinds, as the seed (tke-extend-network-controller) defines
//! them: a `DedicatedCLBService` gives every selected pod its own public
//! `IP:port` on a Tencent CLB, one `DedicatedCLBListener` per pod and port.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "networking.cloud.tencent.com";
/// The seed's examples say `v1apha1`; it is served, deprecated, beside the
/// correctly spelled `v1alpha1`, so they apply unchanged.
pub const MISSPELLED_VERSION: &str = "v1apha1";

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// Every pod matched by `selector` gets, for each of `ports`, a listener of
/// its own on one of the service's CLBs, at a port in `minPort..=maxPort`.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloud.tencent.com",
    version = "v1alpha1",
    kind = "DedicatedCLBService",
    namespaced,
    status = "DedicatedCLBServiceStatus",
    shortname = "dcs",
    category = "knit",
    printcolumn = r#"{"name":"MinPort","type":"integer","jsonPath":".spec.minPort"}"#,
    printcolumn = r#"{"name":"MaxPort","type":"integer","jsonPath":".spec.maxPort"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minPort <= self.maxPort")
    .message("minPort must not be greater than maxPort").field_path(".minPort"))]
pub struct DedicatedCLBServiceSpec {
    /// The CLBs' region; the controller's region when unset.
    #[schemars(length(min = 1, max = 64))]
    pub lb_region: Option<String>,
    /// The lowest listener port handed out.
    #[schemars(range(min = 1, max = 65535))]
    pub min_port: u16,
    /// The highest listener port handed out.
    #[schemars(range(min = 1, max = 65535))]
    pub max_port: u16,
    /// Pod labels that select the pods served.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Each port of each pod gets a listener; `(protocol, targetPort)` pairs
    /// are unique.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new(
        "self.all(p, self.exists_one(q, q.protocol == p.protocol && q.targetPort == p.targetPort))"
    ).message("each (protocol, targetPort) pair may appear only once"))]
    pub ports: Vec<ServicePort>,
    /// Existing CLB instances to create the listeners on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 64), regex(pattern = r"^lb-[a-z0-9]+$"))
    )]
    pub existed_lb_ids: Vec<String>,
    /// For the CLBs knit creates when a pod finds no free port: a JSON
    /// object of `CreateLoadBalancer` parameters, by the API's names (e.g.
    /// `{"VipIsp":"CTCC"}`). With no `existedLbIds`, knit creates CLBs as
    /// pods need them; with some, only when this is set and all are full.
    /// knit sets one CLB, `LoadBalancerType: OPEN` and the cluster's VPC
    /// unless given, and adds its own tags; it deletes only the CLBs it
    /// created, with the service.
    #[schemars(length(max = 4096))]
    pub extensive_parameters: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The listener's protocol.
    pub protocol: Protocol,
    /// The port the pod listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: u16,
    /// The pod annotation the public `IP:port` is written into.
    #[schemars(length(min = 1, max = 253))]
    pub address_pod_annotation: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DedicatedCLBServiceStatus {
    /// The CLBs in use, with the ports each has handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancers: Vec<LoadBalancerStatus>,
    /// The CLBs knit created for this service (tagged as its own): used
    /// after `existedLbIds`, and deleted with the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created_lb_ids: Vec<String>,
    /// Listener ports handed out, over all CLBs.
    #[serde(default)]
    pub allocated: u64,
    /// Listener ports still free, over all CLBs.
    #[serde(default)]
    pub free: u64,
    /// The allocator that made the last decision (`plugin`, `pluginDigest`,
    /// `pluginSource`).
    #[serde(flatten)]
    pub decided_by: crate::controller::PluginStatus,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    pub lb_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<String>,
    #[serde(default)]
    pub allocated: u64,
}

/// Settings for the listeners that name it in `listenerConfig`
/// (tke-extend-network-controller's kind, with the fields that apply to
/// layer-4 listeners): they are created with them, and put back when the
/// CLB's differ or this object changes.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloud.tencent.com",
    version = "v1alpha1",
    kind = "CLBListenerConfig",
    shortname = "clblc",
    category = "knit",
    printcolumn = r#"{"name":"Scheduler","type":"string","jsonPath":".spec.scheduler"}"#,
    printcolumn = r#"{"name":"HealthCheck","type":"integer","jsonPath":".spec.healthcheck.healthSwitch"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CLBListenerConfigSpec {
    pub healthcheck: Option<CLBHealthcheck>,
    /// Session persistence, seconds: 0 (off) or 30-3600.
    #[x_kube(validation = Rule::new("self == 0 || (self >= 30 && self <= 3600)")
        .message("sessionExpireTime is 0 (off) or 30-3600 seconds"))]
    pub session_expire_time: Option<i64>,
    #[schemars(regex(pattern = "^(WRR|LEAST_CONN)$"))]
    pub scheduler: Option<String>,
    #[schemars(regex(pattern = "^(NORMAL|QUIC_CID)$"))]
    pub session_type: Option<String>,
    /// Reset connections to a backend when it is deregistered.
    pub deregister_target_rst: Option<bool>,
    /// Connections at most; -1 for no limit.
    #[schemars(range(min = -1))]
    pub max_conn: Option<i64>,
    /// New connections a second at most; -1 for no limit.
    #[schemars(range(min = -1))]
    pub max_cps: Option<i64>,
    /// Seconds an idle connection is kept.
    #[schemars(range(min = 1, max = 900))]
    pub idle_connect_timeout: Option<i64>,
}

/// The listeners' health check, by tke-extend's names.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CLBHealthcheck {
    /// 1 (on) or 0 (off).
    #[schemars(range(min = 0, max = 1))]
    pub health_switch: Option<i64>,
    /// Seconds, 2-60.
    #[schemars(range(min = 2, max = 60))]
    pub time_out: Option<i64>,
    /// Seconds between checks, 2-300.
    #[schemars(range(min = 2, max = 300))]
    pub interval_time: Option<i64>,
    /// Successes before healthy, 2-10.
    #[schemars(range(min = 2, max = 10))]
    pub health_num: Option<i64>,
    /// Failures before unhealthy, 2-10.
    #[schemars(range(min = 2, max = 10))]
    pub un_health_num: Option<i64>,
    /// The HTTP codes that pass, a bit mask of 1xx-5xx (1-31).
    #[schemars(range(min = 1, max = 31))]
    pub http_code: Option<i64>,
    #[schemars(length(min = 1, max = 200))]
    pub http_check_path: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub http_check_domain: Option<String>,
    #[schemars(regex(pattern = "^(HEAD|GET)$"))]
    pub http_check_method: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub check_port: Option<i64>,
    #[schemars(regex(pattern = "^(HEX|TEXT)$"))]
    pub context_type: Option<String>,
    #[schemars(length(max = 500))]
    pub send_context: Option<String>,
    #[schemars(length(max = 500))]
    pub recv_context: Option<String>,
    #[schemars(regex(pattern = "^(TCP|HTTP|CUSTOM|PING|GRPC)$"))]
    pub check_type: Option<String>,
    #[schemars(regex(pattern = "^HTTP/1\\.[01]$"))]
    pub http_version: Option<String>,
    /// 0 (the VIP) or 1 (the 100.64.0.0/10 range).
    #[schemars(range(min = 0, max = 1))]
    pub source_ip_type: Option<i64>,
    #[schemars(length(max = 64))]
    pub extended_code: Option<String>,
}

impl CLBListenerConfigSpec {
    /// The settings as the CLB API names them: tke-extend's names are the
    /// API's with a lower-case first letter (and `healthcheck` is
    /// `HealthCheck`).
    pub fn settings(&self) -> crate::providers::tencent::ListenerSettings {
        fn api_names(value: serde_json::Value) -> serde_json::Value {
            match value {
                serde_json::Value::Object(fields) => fields
                    .into_iter()
                    .map(|(key, value)| {
                        let key = match key.as_str() {
                            "healthcheck" => "HealthCheck".to_owned(),
                            _ => key[..1].to_ascii_uppercase() + &key[1..],
                        };
                        (key, api_names(value))
                    })
                    .collect(),
                other => other,
            }
        }
        let spec = serde_json::to_value(self).expect("a listener config serializes");
        serde_json::from_value(api_names(spec)).expect("the same fields under the API's names")
    }
}

/// One CLB listener, optionally bound to one pod's port.
#[serde_with::skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[kube(
    group = "networking.cloud.tencent.com",
    version = "v1alpha1",
    kind = "DedicatedCLBListener",
    namespaced,
    status = "DedicatedCLBListenerStatus",
    shortname = "dcl",
    category = "knit",
    printcolumn = r#"{"name":"LbId","type":"string","jsonPath":".spec.lbId"}"#,
    printcolumn = r#"{"name":"LbPort","type":"integer","jsonPath":".spec.lbPort"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.backendPod.podName"}"#,
    printcolumn = r#"{"name":"Plugin","type":"string","priority":1,"jsonPath":".spec.plugin"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// Which listener this object is never changes: a new one is a new object.
#[x_kube(validation = Rule::new(
    "has(self.lbRegion) == has(oldSelf.lbRegion) && (!has(self.lbRegion) || self.lbRegion == oldSelf.lbRegion)"
).message("lbRegion is immutable").field_path(".lbRegion"))]
pub struct DedicatedCLBListenerSpec {
    /// The CLB instance.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^lb-[a-z0-9]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("lbId is immutable"))]
    pub lb_id: String,
    /// The CLB's region; the controller's region when unset.
    #[schemars(length(min = 1, max = 64))]
    pub lb_region: Option<String>,
    /// The listener's port.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("lbPort is immutable"))]
    pub lb_port: u16,
    /// The listener's protocol.
    #[x_kube(validation = Rule::new("self == oldSelf").message("protocol is immutable"))]
    pub protocol: Protocol,
    /// The listener configuration to create it with.
    #[schemars(length(min = 1, max = 253))]
    pub listener_config: Option<String>,
    /// The pod (in this namespace) and port to forward to; unset, the
    /// listener waits, `Available`.
    pub backend_pod: Option<BackendPod>,
    /// The allocator whose decision this listener applies (`plugin`,
    /// `pluginDigest`, `pluginSource`); set by the service controller.
    #[serde(flatten)]
    pub decided_by: crate::controller::PluginStatus,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendPod {
    #[schemars(length(min = 1, max = 253))]
    pub pod_name: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ListenerState {
    /// Being created on the CLB.
    Pending,
    /// Created and forwarding to its pod.
    Bound,
    /// Created, bound to no pod: ready for reuse.
    Available,
    /// Being deleted from the CLB.
    Deleting,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DedicatedCLBListenerStatus {
    pub listener_id: Option<String>,
    pub state: Option<ListenerState>,
    /// The public `IP:port`.
    pub address: Option<String>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of a `CLBListenerConfig` reaches the CLB API under the
    /// API's name: none is dropped on the way.
    #[test]
    fn every_listener_config_field_becomes_an_api_setting() {
        let spec: CLBListenerConfigSpec = serde_json::from_value(serde_json::json!({
            "healthcheck": {
                "healthSwitch": 1, "timeOut": 3, "intervalTime": 10, "healthNum": 2,
                "unHealthNum": 4, "httpCode": 2, "httpCheckPath": "/healthz",
                "httpCheckDomain": "game.example.com", "httpCheckMethod": "GET",
                "checkPort": 8080, "contextType": "TEXT", "sendContext": "ping",
                "recvContext": "pong", "checkType": "CUSTOM", "httpVersion": "HTTP/1.1",
                "sourceIpType": 1, "extendedCode": "200",
            },
            "sessionExpireTime": 60, "scheduler": "LEAST_CONN", "sessionType": "NORMAL",
            "deregisterTargetRst": true, "maxConn": 100, "maxCps": 10,
            "idleConnectTimeout": 60,
        }))
        .unwrap();
        let api = serde_json::to_value(spec.settings()).unwrap();
        let fields = |value: &serde_json::Value| value.as_object().unwrap().len();
        assert_eq!(fields(&api), 8, "{api}");
        assert_eq!(fields(&api["HealthCheck"]), 17, "{api}");
        assert_eq!(api["HealthCheck"]["UnHealthNum"], 4);
        assert_eq!(api["HealthCheck"]["SourceIpType"], 1);
        assert_eq!(api["IdleConnectTimeout"], 60);
    }
}
