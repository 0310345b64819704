//! Status writing and the `Ready` condition, the same for every kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

/// The `Ready` condition as of now.
pub fn ready_condition(
    previous: &[Condition],
    generation: Option<i64>,
    ready: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    crate::conditions::condition(previous, "Ready", ready, reason, message, generation, &now)
}

/// Writes an object's status when it changed. Fields that became unset are
/// sent as `null`, so the merge patch removes them (an address that is no
/// longer true, say).
pub async fn write_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let (Some(serde_json::Value::Object(old)), Some(new)) = (
        current.and_then(|c| serde_json::to_value(c).ok()),
        value.as_object_mut(),
    ) {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": value })),
    )
    .await?;
    Ok(())
}
