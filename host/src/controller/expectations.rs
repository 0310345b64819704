//! Read-your-writes over a lagging watch cache (the "expectations" of
//! Kubernetes' own controllers). A pass right after a write may plan from a
//! cache that does not show it yet: a pod would get a second address, a
//! port a second listener. Each parent (a pool, a service) records the
//! children it wrote or deleted; later passes either plan on the cache
//! corrected by those writes (`overlay`) or wait until it shows them
//! (`pending`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt};

/// What one parent wrote, by child name.
pub struct Expectations<P, K> {
    parents: Mutex<HashMap<P, HashMap<String, Write<K>>>>,
    /// A cache that lags longer than this has lost its watch; its relist
    /// brings the truth, so the write is forgotten.
    forget_after: Duration,
}

enum Write<K> {
    /// The object as written, and the resourceVersion the cache held
    /// before (none for a creation).
    Written {
        object: K,
        before: Option<String>,
        at: Instant,
    },
    /// Deleted: the UID that was.
    Deleted { uid: Option<String>, at: Instant },
}

impl<K> Write<K> {
    fn at(&self) -> Instant {
        match self {
            Write::Written { at, .. } | Write::Deleted { at, .. } => *at,
        }
    }
}

impl<P: Hash + Eq, K: Resource + Clone> Expectations<P, K> {
    pub fn new(forget_after: Duration) -> Self {
        Expectations {
            parents: Mutex::default(),
            forget_after,
        }
    }

    /// `object` was written (the API server's answer); `before` is the
    /// object the write replaced, as the cache showed it. A write that
    /// changed nothing is not waited for: the cache already shows it.
    pub fn written(&self, parent: P, object: &K, before: Option<&K>) {
        let before = before.and_then(|b| b.resource_version());
        if before.is_some() && before == object.resource_version() {
            return;
        }
        let write = Write::Written {
            object: object.clone(),
            before,
            at: Instant::now(),
        };
        self.record(parent, object.name_any(), write);
    }

    pub fn deleted(&self, parent: P, object: &K) {
        let write = Write::Deleted {
            uid: object.uid(),
            at: Instant::now(),
        };
        self.record(parent, object.name_any(), write);
    }

    fn record(&self, parent: P, name: String, write: Write<K>) {
        let mut parents = self.parents.lock().expect("expectations lock");
        parents.entry(parent).or_default().insert(name, write);
    }

    /// The parent's children: the cache's, corrected by the writes it does
    /// not show yet. Writes it shows are forgotten.
    pub fn overlay(&self, parent: &P, mut cached: Vec<K>) -> Vec<K> {
        self.settle(parent, |name, write| {
            let at = cached.iter().position(|c| c.name_any() == name);
            let shown = at.is_some_and(|i| shows(&cached[i], write));
            if shown {
                return false;
            }
            match (write, at) {
                (Write::Written { object, .. }, Some(i)) => cached[i] = object.clone(),
                (Write::Written { object, .. }, None) => cached.push(object.clone()),
                (Write::Deleted { .. }, Some(i)) => {
                    cached.remove(i);
                }
                (Write::Deleted { .. }, None) => return false,
            }
            true
        });
        cached
    }

    /// Whether the cache does not show some of the parent's writes yet.
    pub fn pending(&self, parent: &P, cached: &[Arc<K>]) -> bool {
        let mut pending = false;
        self.settle(parent, |name, write| {
            let current = cached.iter().find(|c| c.name_any() == name);
            let waiting = match write {
                Write::Deleted { .. } => current.is_some_and(|c| !shows(&**c, write)),
                Write::Written { .. } => !current.is_some_and(|c| shows(&**c, write)),
            };
            pending |= waiting;
            waiting
        });
        pending
    }

    /// Keeps the writes for which `still_expected` says so (and are not too
    /// old); drops the parent when none is left.
    fn settle(&self, parent: &P, mut still_expected: impl FnMut(&str, &Write<K>) -> bool) {
        let mut parents = self.parents.lock().expect("expectations lock");
        let Some(writes) = parents.get_mut(parent) else {
            return;
        };
        writes.retain(|name, write| {
            write.at().elapsed() < self.forget_after && still_expected(name, write)
        });
        if writes.is_empty() {
            parents.remove(parent);
        }
    }

    /// A parent that is gone takes its writes with it.
    pub fn forget(&self, parent: &P) {
        self.parents
            .lock()
            .expect("expectations lock")
            .remove(parent);
    }
}

/// Whether the cached object shows the write: the written object itself
/// or a later change of it (resourceVersions only compare for equality, so
/// "not the one before" is what can be known); for a deletion, that the
/// deleted object is no longer there.
fn shows<K: Resource>(cached: &K, write: &Write<K>) -> bool {
    match write {
        Write::Written { object, before, .. } => {
            cached.uid() == object.uid() && cached.resource_version() != *before
        }
        Write::Deleted { uid, .. } => cached.uid() != *uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str, uid: &str, version: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object.metadata.uid = Some(uid.into());
        object.metadata.resource_version = Some(version.into());
        object
    }

    fn names(objects: &[ConfigMap]) -> Vec<(String, String)> {
        objects
            .iter()
            .map(|o| (o.name_any(), o.resource_version().unwrap_or_default()))
            .collect()
    }

    fn expectations() -> Expectations<&'static str, ConfigMap> {
        Expectations::new(Duration::from_secs(60))
    }

    #[test]
    fn a_creation_is_overlaid_until_the_cache_shows_it() {
        let expectations = expectations();
        let created = object("a", "u1", "5");
        expectations.written("p", &created, None);
        assert_eq!(
            names(&expectations.overlay(&"p", vec![])),
            [("a".into(), "5".into())]
        );
        assert!(expectations.pending(&"p", &[]));
        // Shown: forgotten, and the cache (even a later version) is trusted.
        let later = object("a", "u1", "7");
        assert!(!expectations.pending(&"p", &[Arc::new(later.clone())]));
        assert_eq!(
            names(&expectations.overlay(&"p", vec![later])),
            [("a".into(), "7".into())]
        );
        assert_eq!(names(&expectations.overlay(&"p", vec![])), []);
    }

    #[test]
    fn an_update_is_overlaid_while_the_cache_holds_the_version_before() {
        let expectations = expectations();
        let before = object("a", "u1", "5");
        expectations.written("p", &object("a", "u1", "6"), Some(&before));
        assert_eq!(
            names(&expectations.overlay(&"p", vec![before.clone()])),
            [("a".into(), "6".into())]
        );
        assert!(expectations.pending(&"p", &[Arc::new(before)]));
        assert!(!expectations.pending(&"p", &[Arc::new(object("a", "u1", "9"))]));
    }

    #[test]
    fn a_write_that_changed_nothing_is_not_waited_for() {
        let expectations = expectations();
        let same = object("a", "u1", "5");
        expectations.written("p", &same, Some(&same));
        assert!(!expectations.pending(&"p", &[Arc::new(same)]));
    }

    #[test]
    fn an_older_object_of_the_same_name_does_not_show_a_creation() {
        let expectations = expectations();
        expectations.written("p", &object("a", "u2", "8"), None);
        let old = object("a", "u1", "5");
        assert!(expectations.pending(&"p", &[Arc::new(old.clone())]));
        assert_eq!(
            names(&expectations.overlay(&"p", vec![old])),
            [("a".into(), "8".into())]
        );
    }

    #[test]
    fn a_deletion_hides_the_object_until_the_cache_drops_it() {
        let expectations = expectations();
        let gone = object("a", "u1", "5");
        expectations.deleted("p", &gone);
        assert!(expectations.pending(&"p", &[Arc::new(gone.clone())]));
        assert_eq!(names(&expectations.overlay(&"p", vec![gone])), []);
        // A new object of that name is not hidden.
        let new = object("a", "u2", "9");
        assert_eq!(
            names(&expectations.overlay(&"p", vec![new])),
            [("a".into(), "9".into())]
        );
        assert!(!expectations.pending(&"p", &[]));
    }

    #[test]
    fn writes_are_forgotten_after_the_timeout_and_with_their_parent() {
        let quick = Expectations::new(Duration::ZERO);
        quick.written("p", &object("a", "u1", "5"), None);
        assert!(!quick.pending(&"p", &[]));
        let expectations = expectations();
        expectations.written("p", &object("a", "u1", "5"), None);
        expectations.forget(&"p");
        assert!(!expectations.pending(&"p", &[]));
    }
}
