//! CLBs knit creates on demand (pure): when a service needs one, what
//! `CreateLoadBalancer` is asked, and the tags that mark a CLB as knit's
//! for that service, the only proof that lets knit delete it.
//!
//! A service gets a new CLB when a pod port finds no free port on the CLBs
//! it has: when it lists none (`existedLbIds` empty), or when every one is
//! full and it says how to buy more (`extensiveParameters`; a service that
//! lists its CLBs and says nothing more is not billed for new ones). One
//! at a time: the next pass sees the new CLB and places the pods waiting.

use serde_json::{Map, Value, json};

use super::types::DedicatedCLBService;
use kube::ResourceExt;

/// The tag whose value is the UID of the service a CLB was created for:
/// knit deletes a CLB only when it carries this tag with the service's UID.
pub const OWNER_TAG: &str = "knit.dev/owner";
/// The service, as `namespace/name`, for people reading the console.
pub const SERVICE_TAG: &str = "knit.dev/service";
/// The cluster's ID, when knit knows it.
pub const CLUSTER_TAG: &str = "knit.dev/cluster";

/// The parameters knit sets itself and a service may not.
const KNIT_SETS: [&str; 2] = ["Number", "ClientToken"];

/// Whether knit creates a CLB for the service now: it may (it lists no
/// CLB, or gives `extensiveParameters`), a pod port waits, no port is free
/// on any CLB it has, and every CLB it lists exists (a missing one is a
/// mistake to fix, not a reason to buy another).
pub fn wanted(
    service: &DedicatedCLBService,
    waiting: usize,
    free: u64,
    missing_listed: usize,
) -> bool {
    let may = service.spec.existed_lb_ids.is_empty() || service.spec.extensive_parameters.is_some();
    may && waiting > 0 && free == 0 && missing_listed == 0
}

/// The cluster knit runs in, as the CLBs it creates record it.
#[derive(Clone, Debug, Default)]
pub struct ClusterPlacement {
    /// Where CLBs go unless `extensiveParameters` says `VpcId`.
    pub vpc_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// `CreateLoadBalancer`'s parameters for one CLB of `service`: its
/// `extensiveParameters`, then knit's defaults where it sets none
/// (`LoadBalancerType: OPEN`, the cluster's VPC, a name), one CLB, knit's
/// tags after the service's, and `ClientToken` (unique to this pass, so
/// the client's own retries of the call create one CLB). An `Err` says what
/// in `extensiveParameters` cannot be used.
pub fn parameters(
    service: &DedicatedCLBService,
    placement: &ClusterPlacement,
    pass: i64,
) -> Result<Map<String, Value>, String> {
    let mut parameters = match service.spec.extensive_parameters.as_deref() {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("extensiveParameters must be a JSON object".into()),
            Err(e) => return Err(format!("extensiveParameters is not JSON: {e}")),
        },
    };
    if let Some(key) = KNIT_SETS.iter().find(|k| parameters.contains_key(**k)) {
        return Err(format!(
            "extensiveParameters may not set {key}: knit creates one CLB at a time"
        ));
    }
    let mut tags = match parameters.remove("Tags") {
        None => Vec::new(),
        Some(Value::Array(tags)) => tags,
        Some(_) => {
            return Err("extensiveParameters.Tags must be a list of {TagKey, TagValue}".into());
        }
    };
    if let Some(tag) = tags.iter().find(|t| {
        [OWNER_TAG, SERVICE_TAG, CLUSTER_TAG].contains(&t["TagKey"].as_str().unwrap_or_default())
    }) {
        return Err(format!(
            "extensiveParameters.Tags may not set {}: knit marks its CLBs with it",
            tag["TagKey"]
        ));
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    tags.push(tag(OWNER_TAG, &service.uid().unwrap_or_default()));
    tags.push(tag(SERVICE_TAG, &format!("{namespace}/{name}")));
    if let Some(cluster) = &placement.cluster_id {
        tags.push(tag(CLUSTER_TAG, cluster));
    }
    parameters
        .entry("LoadBalancerType")
        .or_insert_with(|| json!("OPEN"));
    if let Some(vpc) = &placement.vpc_id {
        parameters.entry("VpcId").or_insert_with(|| json!(vpc));
    }
    // The API allows 60 characters.
    let mut lb_name = format!("knit-{namespace}-{name}");
    lb_name.truncate(60);
    parameters
        .entry("LoadBalancerName")
        .or_insert_with(|| json!(lb_name));
    parameters.insert("Number".into(), json!(1));
    parameters.insert("Tags".into(), Value::Array(tags));
    let uid = service.uid().unwrap_or_default();
    parameters.insert("ClientToken".into(), json!(format!("knit-{uid}-{pass}")));
    Ok(parameters)
}

fn tag(key: &str, value: &str) -> Value {
    json!({"TagKey": key, "TagValue": value})
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn service(extensive: Option<&str>) -> DedicatedCLBService {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloud.tencent.com/v1alpha1",
            "kind": "DedicatedCLBService",
            "metadata": {"name": "game", "namespace": "demo", "uid": "u-1"},
            "spec": {"minPort": 501, "maxPort": 600, "ports": [{"protocol": "TCP", "targetPort": 9000}],
                     "extensiveParameters": extensive},
        }))
        .expect("a service")
    }

    fn placement() -> ClusterPlacement {
        ClusterPlacement {
            vpc_id: Some("vpc-abc".into()),
            cluster_id: Some("cls-xyz".into()),
        }
    }

    #[rstest]
    #[case::none_listed_a_pod_waits_nothing_free(&[], None, 1, 0, 0, true)]
    #[case::listed_full_with_parameters(&["lb-a"], Some("{}"), 1, 0, 0, true)]
    #[case::listed_full_without_parameters(&["lb-a"], None, 1, 0, 0, false)]
    #[case::nobody_waits(&[], None, 0, 0, 0, false)]
    #[case::ports_are_free(&[], None, 1, 3, 0, false)]
    #[case::a_listed_clb_is_missing(&["lb-a"], Some("{}"), 1, 0, 1, false)]
    fn a_clb_is_created_only_when_allowed_and_a_pod_finds_no_free_port(
        #[case] listed: &[&str],
        #[case] extensive: Option<&str>,
        #[case] waiting: usize,
        #[case] free: u64,
        #[case] missing: usize,
        #[case] expected: bool,
    ) {
        let mut service = service(extensive);
        service.spec.existed_lb_ids = listed.iter().map(|id| id.to_string()).collect();
        assert_eq!(wanted(&service, waiting, free, missing), expected);
    }

    #[test]
    fn the_seeds_parameters_are_kept_and_knits_added() {
        let parameters = parameters(
            &service(Some(
                r#"{"VipIsp":"CTCC","Tags":[{"TagKey":"team","TagValue":"games"}]}"#,
            )),
            &placement(),
            7,
        )
        .expect("parameters");
        assert_eq!(
            Value::Object(parameters),
            json!({
                "VipIsp": "CTCC",
                "LoadBalancerType": "OPEN",
                "VpcId": "vpc-abc",
                "LoadBalancerName": "knit-demo-game",
                "Number": 1,
                "ClientToken": "knit-u-1-7",
                "Tags": [
                    {"TagKey": "team", "TagValue": "games"},
                    {"TagKey": OWNER_TAG, "TagValue": "u-1"},
                    {"TagKey": SERVICE_TAG, "TagValue": "demo/game"},
                    {"TagKey": CLUSTER_TAG, "TagValue": "cls-xyz"},
                ],
            })
        );
        let own_vpc = parameters_of(
            r#"{"VpcId":"vpc-other","LoadBalancerType":"INTERNAL","SubnetId":"subnet-1"}"#,
        );
        assert_eq!(own_vpc["VpcId"], "vpc-other");
        assert_eq!(own_vpc["LoadBalancerType"], "INTERNAL");
    }

    fn parameters_of(extensive: &str) -> Map<String, Value> {
        parameters(&service(Some(extensive)), &placement(), 1).expect("parameters")
    }

    #[rstest]
    #[case::not_json("{VipIsp: CTCC}", "extensiveParameters is not JSON")]
    #[case::not_an_object(r#"["CTCC"]"#, "must be a JSON object")]
    #[case::number(r#"{"Number": 3}"#, "may not set Number")]
    #[case::client_token(r#"{"ClientToken": "x"}"#, "may not set ClientToken")]
    #[case::tags_not_a_list(r#"{"Tags": {"a": "b"}}"#, "must be a list")]
    #[case::knits_tag(
        r#"{"Tags": [{"TagKey": "knit.dev/owner", "TagValue": "someone"}]}"#,
        "may not set \"knit.dev/owner\""
    )]
    fn bad_extensive_parameters_say_what_is_wrong(#[case] extensive: &str, #[case] expected: &str) {
        let error = parameters(&service(Some(extensive)), &placement(), 1).unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
}
