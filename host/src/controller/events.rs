//! Events: the one recorder, publishing, and telling a thing only once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The recorder every controller publishes with: reported as `knit`, by
/// this replica's pod.
pub fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "knit".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// Publishes an Event; failing to is logged, never an error. `action` is
/// what knit was doing (`Reconcile`, `Allocate`, …).
pub async fn publish_event(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::debug!(%error, "publishing an Event");
    }
}

/// What each object was last told, so a state is told once, not on every
/// pass (a pod waiting for a port, a source's verdict).
pub struct Told<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Told<K, V> {
    fn default() -> Self {
        Told(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq, V: PartialEq> Told<K, V> {
    /// Records `now` as told to `key`; returns what was told before.
    pub fn replace(&self, key: K, now: V) -> Option<V> {
        self.0.lock().expect("told lock").insert(key, now)
    }

    /// Records `now` as told to `key`; true when it differs from what was
    /// told before (so it is news, to be told).
    pub fn is_news(&self, key: K, now: V) -> bool {
        let mut told = self.0.lock().expect("told lock");
        if told.get(&key) == Some(&now) {
            return false;
        }
        told.insert(key, now);
        true
    }

    /// `key` is gone: what it was told goes too.
    pub fn forget(&self, key: &K) {
        self.0.lock().expect("told lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_news_once_and_again_after_a_change_or_forgetting() {
        let told = Told::default();
        assert!(told.is_news("a", 1));
        assert!(!told.is_news("a", 1));
        assert!(told.is_news("a", 2));
        assert!(told.is_news("b", 2));
        told.forget(&"a");
        assert!(told.is_news("a", 2));
        assert_eq!(told.replace("a", 3), Some(2));
    }
}
