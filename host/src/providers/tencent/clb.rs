//! The CLB actions a per-pod listener controller uses, with only the fields
//! it needs. Field names are the API's (PascalCase); absent optional
//! request fields are left out of the body, and the API's `null` lists read
//! as empty.
//!
//! Writes are asynchronous on the CLB side: each returns the `TaskId` to
//! pass to `ClbClient::wait_task`, and the LB refuses other writes
//! (`FailedOperation.ResourceInOperating`) until the task ends.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ClbClient, Error, TaskId};

/// A listener protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Http,
    Https,
    TcpSsl,
    Quic,
}

/// A CLB instance.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoadBalancer {
    pub load_balancer_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub load_balancer_name: String,
    /// The addresses clients connect to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub load_balancer_vips: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<Tag>,
}

/// A tag of a CLB (`TagInfo`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub tag_key: String,
    pub tag_value: String,
}

/// A listener: one protocol and port of an LB.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listener {
    pub listener_id: String,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub listener_name: String,
    /// Its settings as `DescribeListeners` reports them.
    #[serde(flatten)]
    pub settings: ListenerSettings,
}

/// The settings of a layer-4 listener that `CreateListener` and
/// `ModifyListener` take and `DescribeListeners` reports, by the API's
/// names; `None` is the API's default (on create) or unchanged (on modify).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListenerSettings {
    pub health_check: Option<HealthCheck>,
    pub session_expire_time: Option<i64>,
    pub scheduler: Option<String>,
    pub session_type: Option<String>,
    pub deregister_target_rst: Option<bool>,
    pub max_conn: Option<i64>,
    pub max_cps: Option<i64>,
    pub idle_connect_timeout: Option<i64>,
}

impl ListenerSettings {
    /// Whether `live` has every setting this one sets (what it leaves unset
    /// is not compared): a listener whose live settings do not is modified.
    pub fn held_by(&self, live: &ListenerSettings) -> bool {
        let wanted = serde_json::to_value(self).expect("settings serialize");
        let live = serde_json::to_value(live).expect("settings serialize");
        contains(&live, &wanted)
    }
}

/// Whether `outer` has every field `inner` has, with the same value.
fn contains(outer: &serde_json::Value, inner: &serde_json::Value) -> bool {
    match (outer, inner) {
        (serde_json::Value::Object(outer), serde_json::Value::Object(inner)) => inner
            .iter()
            .all(|(key, value)| outer.get(key).is_some_and(|o| contains(o, value))),
        (outer, inner) => outer == inner,
    }
}

/// A listener's health check, by the API's names (`HealthCheck`).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub health_switch: Option<i64>,
    pub time_out: Option<i64>,
    pub interval_time: Option<i64>,
    pub health_num: Option<i64>,
    pub un_health_num: Option<i64>,
    pub http_code: Option<i64>,
    pub http_check_path: Option<String>,
    pub http_check_domain: Option<String>,
    pub http_check_method: Option<String>,
    pub check_port: Option<i64>,
    pub context_type: Option<String>,
    pub send_context: Option<String>,
    pub recv_context: Option<String>,
    pub check_type: Option<String>,
    pub http_version: Option<String>,
    pub source_ip_type: Option<i64>,
    pub extended_code: Option<String>,
}

/// A backend to register on a layer-4 listener: a CVM instance (its primary
/// IP) or any private IP, such as a pod's ENI IP, and the port on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni_ip: Option<String>,
    pub port: u16,
    /// 0-100; the API's default (10) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
}

impl Target {
    /// A private IP (ENI IP) and port: how a pod is a backend.
    pub fn ip(ip: impl Into<String>, port: u16) -> Self {
        Target {
            instance_id: None,
            eni_ip: Some(ip.into()),
            port,
            weight: None,
        }
    }

    /// A CVM instance's primary IP and a port on it.
    pub fn instance(instance_id: impl Into<String>, port: u16) -> Self {
        Target {
            instance_id: Some(instance_id.into()),
            eni_ip: None,
            port,
            weight: None,
        }
    }
}

/// A registered backend as `DescribeTargets` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Backend {
    /// `CVM` or `ENI`.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_id: String,
    pub port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub weight: u8,
    #[serde(default, deserialize_with = "null_as_default")]
    pub private_ip_addresses: Vec<String>,
}

/// A listener and the backends registered on it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListenerTargets {
    pub listener_id: String,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub targets: Vec<Backend>,
}

/// A target of a batch (de)registration: the listener goes with each one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchTarget {
    pub listener_id: String,
    #[serde(flatten)]
    pub target: Target,
}

/// What `CreateListener` answered: the new listeners' IDs (in the order of
/// the ports) exist as soon as it answers; they work once `task` succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedListeners {
    pub listener_ids: Vec<String>,
    pub task: TaskId,
}

/// What a batch (de)registration answered: listeners it could not change,
/// and the task doing the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    pub failed_listener_ids: Vec<String>,
    pub task: TaskId,
}

/// Which listeners to describe; the default is all of the LB's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerFilter {
    pub listener_ids: Vec<String>,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
}

// Request bodies. `Option`s and empty lists are left out: the API reads an
// absent filter as "any".

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeLoadBalancersRequest<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    load_balancer_ids: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    filters: &'a [Filter],
    offset: u32,
    limit: u32,
}

/// A `DescribeLoadBalancers` filter, e.g. `tag:<key>` with its values.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Filter {
    name: String,
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateLoadBalancerResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    load_balancer_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteLoadBalancerRequest<'a> {
    load_balancer_ids: &'a [String],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeLoadBalancersResponse {
    total_count: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    load_balancer_set: Vec<LoadBalancer>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FilteredRequest<'a> {
    load_balancer_id: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    listener_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl<'a> FilteredRequest<'a> {
    fn new(load_balancer_id: &'a str, filter: &'a ListenerFilter) -> Self {
        FilteredRequest {
            load_balancer_id,
            listener_ids: &filter.listener_ids,
            protocol: filter.protocol,
            port: filter.port,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeListenersResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    listeners: Vec<Listener>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeTargetsResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    listeners: Vec<ListenerTargets>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateListenerRequest<'a> {
    load_balancer_id: &'a str,
    ports: &'a [u16],
    protocol: Protocol,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    listener_names: &'a [String],
    #[serde(flatten)]
    settings: &'a ListenerSettings,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ModifyListenerRequest<'a> {
    load_balancer_id: &'a str,
    listener_id: &'a str,
    #[serde(flatten)]
    settings: &'a ListenerSettings,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateListenerResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    listener_ids: Vec<String>,
    request_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteListenerRequest<'a> {
    load_balancer_id: &'a str,
    listener_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteLoadBalancerListenersRequest<'a> {
    load_balancer_id: &'a str,
    listener_ids: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TargetsRequest<'a> {
    load_balancer_id: &'a str,
    listener_id: &'a str,
    targets: &'a [Target],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchTargetsRequest<'a> {
    load_balancer_id: &'a str,
    targets: &'a [BatchTarget],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchTargetsResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    fail_listener_id_set: Vec<String>,
    request_id: String,
}

/// The answer of a write that only starts a task.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskResponse {
    request_id: String,
}

/// `DescribeLoadBalancers` pages; 100 is the API's largest page.
const PAGE: u32 = 100;

impl ClbClient {
    /// The LBs of this region among `ids` (every LB when `ids` is empty). An
    /// LB that does not exist is simply not in the answer.
    pub async fn describe_load_balancers(
        &self,
        ids: &[String],
    ) -> Result<Vec<LoadBalancer>, Error> {
        self.load_balancers_where(ids, &[]).await
    }

    /// The LBs of this region tagged `key` = `value`.
    pub async fn describe_tagged_load_balancers(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<LoadBalancer>, Error> {
        let tagged = Filter {
            name: format!("tag:{key}"),
            values: vec![value.to_owned()],
        };
        self.load_balancers_where(&[], &[tagged]).await
    }

    async fn load_balancers_where(
        &self,
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<LoadBalancer>, Error> {
        let mut found = Vec::new();
        loop {
            let page: DescribeLoadBalancersResponse = self
                .call(
                    "DescribeLoadBalancers",
                    &DescribeLoadBalancersRequest {
                        load_balancer_ids: ids,
                        filters,
                        offset: found.len() as u32,
                        limit: PAGE,
                    },
                )
                .await?;
            let last = page.load_balancer_set.len() < PAGE as usize;
            found.extend(page.load_balancer_set);
            if last || found.len() >= page.total_count as usize {
                return Ok(found);
            }
        }
    }

    /// Creates CLBs from `parameters` (`CreateLoadBalancer`'s, by the API's
    /// names). Returns their IDs when the API gives them at once; a creation
    /// that is delayed answers none, and is found later by its tags.
    pub async fn create_load_balancer(
        &self,
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<String>, Error> {
        let answer: CreateLoadBalancerResponse =
            self.call("CreateLoadBalancer", parameters).await?;
        Ok(answer.load_balancer_ids)
    }

    /// Deletes CLBs (20 at most per call), their listeners with them.
    pub async fn delete_load_balancers(&self, ids: &[String]) -> Result<TaskId, Error> {
        self.start_task(
            "DeleteLoadBalancer",
            &DeleteLoadBalancerRequest {
                load_balancer_ids: ids,
            },
        )
        .await
    }

    /// A `Describe*` action on the listeners of an LB that match `filter`.
    async fn describe<R: DeserializeOwned>(
        &self,
        action: &'static str,
        load_balancer_id: &str,
        filter: &ListenerFilter,
    ) -> Result<R, Error> {
        self.call(action, &FilteredRequest::new(load_balancer_id, filter))
            .await
    }

    /// The listeners of an LB that match `filter`.
    pub async fn describe_listeners(
        &self,
        load_balancer_id: &str,
        filter: &ListenerFilter,
    ) -> Result<Vec<Listener>, Error> {
        let answer: DescribeListenersResponse = self
            .describe("DescribeListeners", load_balancer_id, filter)
            .await?;
        Ok(answer.listeners)
    }

    /// One listener per port, named in the same order when `names` is not
    /// empty, each with `settings`.
    pub async fn create_listeners(
        &self,
        load_balancer_id: &str,
        protocol: Protocol,
        ports: &[u16],
        names: &[String],
        settings: &ListenerSettings,
    ) -> Result<CreatedListeners, Error> {
        let answer: CreateListenerResponse = self
            .call(
                "CreateListener",
                &CreateListenerRequest {
                    load_balancer_id,
                    ports,
                    protocol,
                    listener_names: names,
                    settings,
                },
            )
            .await?;
        Ok(CreatedListeners {
            listener_ids: answer.listener_ids,
            task: TaskId(answer.request_id),
        })
    }

    /// Changes the settings `settings` sets; the others stay as they are.
    pub async fn modify_listener(
        &self,
        load_balancer_id: &str,
        listener_id: &str,
        settings: &ListenerSettings,
    ) -> Result<TaskId, Error> {
        self.start_task(
            "ModifyListener",
            &ModifyListenerRequest {
                load_balancer_id,
                listener_id,
                settings,
            },
        )
        .await
    }

    pub async fn delete_listener(
        &self,
        load_balancer_id: &str,
        listener_id: &str,
    ) -> Result<TaskId, Error> {
        self.start_task(
            "DeleteListener",
            &DeleteListenerRequest {
                load_balancer_id,
                listener_id,
            },
        )
        .await
    }

    /// Deletes the listed listeners; `None` (and no call) for an empty list,
    /// which the API would take as "every listener of the LB".
    pub async fn delete_listeners(
        &self,
        load_balancer_id: &str,
        listener_ids: &[String],
    ) -> Result<Option<TaskId>, Error> {
        if listener_ids.is_empty() {
            return Ok(None);
        }
        self.start_task(
            "DeleteLoadBalancerListeners",
            &DeleteLoadBalancerListenersRequest {
                load_balancer_id,
                listener_ids,
            },
        )
        .await
        .map(Some)
    }

    /// The backends of an LB's listeners that match `filter`.
    pub async fn describe_targets(
        &self,
        load_balancer_id: &str,
        filter: &ListenerFilter,
    ) -> Result<Vec<ListenerTargets>, Error> {
        let answer: DescribeTargetsResponse = self
            .describe("DescribeTargets", load_balancer_id, filter)
            .await?;
        Ok(answer.listeners)
    }

    /// Registers backends on a layer-4 listener (20 at most per call).
    pub async fn register_targets(
        &self,
        load_balancer_id: &str,
        listener_id: &str,
        targets: &[Target],
    ) -> Result<TaskId, Error> {
        self.start_task(
            "RegisterTargets",
            &TargetsRequest {
                load_balancer_id,
                listener_id,
                targets,
            },
        )
        .await
    }

    pub async fn deregister_targets(
        &self,
        load_balancer_id: &str,
        listener_id: &str,
        targets: &[Target],
    ) -> Result<TaskId, Error> {
        self.start_task(
            "DeregisterTargets",
            &TargetsRequest {
                load_balancer_id,
                listener_id,
                targets,
            },
        )
        .await
    }

    /// Registers backends on several listeners of one LB in one call.
    pub async fn batch_register_targets(
        &self,
        load_balancer_id: &str,
        targets: &[BatchTarget],
    ) -> Result<BatchOutcome, Error> {
        self.batch("BatchRegisterTargets", load_balancer_id, targets)
            .await
    }

    pub async fn batch_deregister_targets(
        &self,
        load_balancer_id: &str,
        targets: &[BatchTarget],
    ) -> Result<BatchOutcome, Error> {
        self.batch("BatchDeregisterTargets", load_balancer_id, targets)
            .await
    }

    async fn batch(
        &self,
        action: &'static str,
        load_balancer_id: &str,
        targets: &[BatchTarget],
    ) -> Result<BatchOutcome, Error> {
        let answer: BatchTargetsResponse = self
            .call(
                action,
                &BatchTargetsRequest {
                    load_balancer_id,
                    targets,
                },
            )
            .await?;
        Ok(BatchOutcome {
            failed_listener_ids: answer.fail_listener_id_set,
            task: TaskId(answer.request_id),
        })
    }

    async fn start_task<Request: Serialize>(
        &self,
        action: &'static str,
        request: &Request,
    ) -> Result<TaskId, Error> {
        let answer: TaskResponse = self.call(action, request).await?;
        Ok(TaskId(answer.request_id))
    }
}

/// The API documents many fields as "may return null": read `null` as the
/// type's empty value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(value: serde_json::Value) -> ListenerSettings {
        serde_json::from_value(value).unwrap()
    }

    /// What a listener's configuration leaves unset is not compared; what
    /// it sets must be there, inside `HealthCheck` too.
    #[rstest::rstest]
    #[case::nothing_wanted(json!({}), json!({"Scheduler": "WRR"}), true)]
    #[case::same(json!({"Scheduler": "WRR"}), json!({"Scheduler": "WRR", "MaxConn": -1}), true)]
    #[case::other_scheduler(json!({"Scheduler": "LEAST_CONN"}), json!({"Scheduler": "WRR"}), false)]
    #[case::part_of_the_health_check(
        json!({"HealthCheck": {"TimeOut": 3}}),
        json!({"HealthCheck": {"TimeOut": 3, "IntervalTime": 5}}),
        true
    )]
    #[case::health_check_differs(
        json!({"HealthCheck": {"TimeOut": 3}}),
        json!({"HealthCheck": {"TimeOut": 2, "IntervalTime": 5}}),
        false
    )]
    #[case::health_check_missing(json!({"HealthCheck": {"TimeOut": 3}}), json!({}), false)]
    fn wanted_settings_are_held_when_the_clb_has_each(
        #[case] wanted: serde_json::Value,
        #[case] live: serde_json::Value,
        #[case] held: bool,
    ) {
        assert_eq!(settings(wanted).held_by(&settings(live)), held);
    }

    /// `DescribeListeners` reports every setting (nulls for those that do
    /// not apply) beside fields knit does not read.
    #[test]
    fn a_described_listener_carries_its_settings() {
        let listener: Listener = serde_json::from_value(json!({
            "ListenerId": "lbl-1", "Protocol": "TCP", "Port": 80, "ListenerName": "n",
            "HealthCheck": {"HealthSwitch": 1, "TimeOut": 2, "HttpCode": null},
            "Scheduler": "WRR", "SessionExpireTime": 0, "Certificate": null, "EndPort": 0,
        }))
        .unwrap();
        assert_eq!(
            listener.settings,
            settings(json!({"HealthCheck": {"HealthSwitch": 1, "TimeOut": 2},
                            "Scheduler": "WRR", "SessionExpireTime": 0}))
        );
    }

    #[test]
    fn requests_use_the_api_field_names_and_leave_out_absent_filters() {
        let filter = ListenerFilter {
            protocol: Some(Protocol::TcpSsl),
            ..ListenerFilter::default()
        };
        assert_eq!(
            serde_json::to_value(FilteredRequest::new("lb-1", &filter)).unwrap(),
            json!({"LoadBalancerId": "lb-1", "Protocol": "TCP_SSL"})
        );
        assert_eq!(
            serde_json::to_value(CreateListenerRequest {
                load_balancer_id: "lb-1",
                ports: &[501, 502],
                protocol: Protocol::Udp,
                listener_names: &[],
                settings: &ListenerSettings::default(),
            })
            .unwrap(),
            json!({"LoadBalancerId": "lb-1", "Ports": [501, 502], "Protocol": "UDP"})
        );
        // Settings sit beside the other fields, only those set.
        let tuned = ListenerSettings {
            scheduler: Some("LEAST_CONN".into()),
            health_check: Some(HealthCheck {
                time_out: Some(3),
                ..HealthCheck::default()
            }),
            ..ListenerSettings::default()
        };
        assert_eq!(
            serde_json::to_value(ModifyListenerRequest {
                load_balancer_id: "lb-1",
                listener_id: "lbl-1",
                settings: &tuned,
            })
            .unwrap(),
            json!({"LoadBalancerId": "lb-1", "ListenerId": "lbl-1",
                   "HealthCheck": {"TimeOut": 3}, "Scheduler": "LEAST_CONN"})
        );
        let targets = [BatchTarget {
            listener_id: "lbl-1".into(),
            target: Target::ip("10.0.0.7", 9000),
        }];
        assert_eq!(
            serde_json::to_value(BatchTargetsRequest {
                load_balancer_id: "lb-1",
                targets: &targets,
            })
            .unwrap(),
            json!({"LoadBalancerId": "lb-1",
                   "Targets": [{"ListenerId": "lbl-1", "EniIp": "10.0.0.7", "Port": 9000}]})
        );
        assert_eq!(
            serde_json::to_value(Target {
                weight: Some(0),
                ..Target::instance("ins-1", 80)
            })
            .unwrap(),
            json!({"InstanceId": "ins-1", "Port": 80, "Weight": 0})
        );
    }

    #[test]
    fn responses_read_null_lists_as_empty_and_ignore_unknown_fields() {
        let answer: DescribeTargetsResponse = serde_json::from_value(json!({
            "Listeners": [{
                "ListenerId": "lbl-1", "Protocol": "TCP", "Port": 501, "EndPort": 0,
                "Rules": null, "Targets": null,
            }, {
                "ListenerId": "lbl-2", "Protocol": "UDP", "Port": 502,
                "Targets": [{"Type": "ENI", "InstanceId": null, "Port": 8000, "Weight": 10,
                             "PrivateIpAddresses": ["10.0.0.7"], "EniId": null}],
            }],
            "RequestId": "r1",
        }))
        .unwrap();
        assert!(answer.listeners[0].targets.is_empty());
        assert_eq!(
            answer.listeners[1].targets[0].private_ip_addresses,
            ["10.0.0.7"]
        );
        let answer: DescribeLoadBalancersResponse = serde_json::from_value(json!({
            "TotalCount": 0, "LoadBalancerSet": null, "RequestId": "r2",
        }))
        .unwrap();
        assert!(answer.load_balancer_set.is_empty());
    }
}
