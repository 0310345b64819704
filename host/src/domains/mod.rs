//! One folder per domain: its kinds, its pure planning, and (as each domain
//! lands) its controller.

pub mod cloudflare;
pub mod ipam;
pub mod tke_clb;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};

/// Plugin changes as a stream of "replan everything" (a lagging receiver
/// missed some, which means the same): any plugin change may change any
/// decision.
pub fn plugin_changes(
    receiver: tokio::sync::broadcast::Receiver<crate::runtime::PluginEvent>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            _ => Some(((), receiver)),
        }
    })
}

/// A finalizer write that lost a race nobody needs to hear about: the
/// object is already gone (404), was changed meanwhile (409) or is being
/// deleted (422). The next pass, from the watch, settles it.
pub(crate) fn lost_finalizer_race<E: std::error::Error + 'static>(
    error: &kube::runtime::finalizer::Error<E>,
) -> bool {
    use kube::runtime::finalizer::Error;
    match error {
        Error::AddFinalizer(kube::Error::Api(e)) | Error::RemoveFinalizer(kube::Error::Api(e)) => {
            matches!(e.code, 404 | 409 | 422)
        }
        _ => false,
    }
}

/// The `Ready` condition as of now.
pub(crate) fn ready_condition(
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
pub(crate) async fn write_status<K, S>(
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

/// Publishes an Event; failing to is logged, never an error.
pub(crate) async fn publish_event(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::debug!(%error, "publishing an Event");
    }
}

/// Whether a controller's watch caches each hold a full list: planning on a
/// half-filled one would undo what the objects not seen yet hold. Signalled
/// from the watch streams rather than `Store::wait_until_ready`, which wakes
/// only one of several waiters (and a `Controller` already waits on its
/// store that way).
#[derive(Clone, Default)]
pub struct CachesReady(Vec<tokio::sync::watch::Receiver<bool>>);

impl CachesReady {
    /// One more cache to wait for; raise the flag with `mark_listed`.
    pub fn track(&mut self) -> tokio::sync::watch::Sender<bool> {
        let (listed, receiver) = tokio::sync::watch::channel(false);
        self.0.push(receiver);
        listed
    }

    pub async fn wait(&self) {
        for listed in &self.0 {
            let _ = listed.clone().wait_for(|listed| *listed).await;
        }
    }
}

/// Raises `listed` when a watch stream reports its first full list.
pub fn mark_listed<K>(
    listed: &tokio::sync::watch::Sender<bool>,
    event: Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
) -> std::future::Ready<()> {
    if let Ok(kube::runtime::watcher::Event::InitDone) = event {
        listed.send_replace(true);
    }
    std::future::ready(())
}
