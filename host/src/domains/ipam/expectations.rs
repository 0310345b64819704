//! What the IPAM controller wrote that its watch caches may not show yet.
//! Allocations go through the kit's `Expectations` (a pass right after a
//! write would otherwise see a pod without the allocation just made and
//! give it a second address). The pool's cursor is IPAM's own: it lives in
//! the pool's status, which the generic tracker (children by name) does
//! not cover; planning from the status before the last pass's write would
//! hand out an address again too early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::types::{IPAllocation, IPPool};

/// A cache that lags longer than this has lost its watch; its relist will
/// bring the truth, so stop correcting it.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Per pool, the allocations its passes wrote.
pub type Allocations = crate::controller::Expectations<String, IPAllocation>;

/// Per pool, the cursor the last pass wrote, and the pool's
/// resourceVersion after that write.
#[derive(Default)]
pub struct Cursors {
    pools: Mutex<HashMap<String, CursorWritten>>,
}

/// The cursor written, the pool's resourceVersion after the write, when.
type CursorWritten = (Option<String>, Option<String>, Instant);

impl Cursors {
    /// A pass wrote `last_allocated`; `written` is the pool the write
    /// returned.
    pub fn written(&self, written: &IPPool, last_allocated: Option<String>) {
        let entry = (last_allocated, written.resource_version(), Instant::now());
        self.pools.lock().unwrap().insert(written.name_any(), entry);
    }

    /// The cursor to plan with: the one the last pass wrote until the cache
    /// shows that write (resourceVersions only compare for equality, so an
    /// older version in the cache looks like any other); then the pool's own.
    pub fn cursor(&self, pool: &IPPool) -> Option<String> {
        let from_status = pool.status.as_ref().and_then(|s| s.last_allocated.clone());
        let mut pools = self.pools.lock().unwrap();
        match pools.get(&pool.name_any()) {
            Some((written, version, at))
                if *version != pool.resource_version() && at.elapsed() < FORGET_AFTER =>
            {
                written.clone()
            }
            _ => {
                pools.remove(&pool.name_any());
                from_status
            }
        }
    }

    /// A deleted pool's cursor goes with it.
    pub fn forget(&self, pool: &str) {
        self.pools.lock().unwrap().remove(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::ipam::types::{AllocationOwner, IPPoolStatus};

    fn allocation(address: &str, uid: &str, version: &str) -> IPAllocation {
        let pool: IPPool = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" }, "spec": { "cidrs": ["10.0.0.0/24"] },
        }))
        .unwrap();
        let mut allocation = IPAllocation::of(
            &pool,
            &address.parse().unwrap(),
            AllocationOwner::default(),
            Default::default(),
        );
        allocation.metadata.uid = Some(uid.into());
        allocation.metadata.resource_version = Some(version.into());
        allocation
    }

    fn addresses(allocations: &[IPAllocation]) -> Vec<String> {
        let mut addresses: Vec<String> =
            allocations.iter().map(|a| a.spec.address.clone()).collect();
        addresses.sort();
        addresses
    }

    fn allocations() -> Allocations {
        Allocations::new(FORGET_AFTER)
    }

    #[test]
    fn writes_show_until_the_cache_does() {
        let expectations = allocations();
        let pool = "p".to_string();
        let old = allocation("10.0.0.2", "u2", "1");
        let created = allocation("10.0.0.3", "u3", "2");
        expectations.written(pool.clone(), &created, None);
        expectations.deleted(pool.clone(), &old);
        // The cache lags: still the deleted one, not yet the new one.
        let seen = expectations.overlay(&pool, vec![old.clone()]);
        assert_eq!(addresses(&seen), ["10.0.0.3"]);
        // Caught up: nothing left to correct, even if the cache later
        // holds a new allocation of the deleted address (another UID).
        let seen = expectations.overlay(&pool, vec![created.clone()]);
        assert_eq!(addresses(&seen), ["10.0.0.3"]);
        let reused = allocation("10.0.0.2", "u9", "5");
        let seen = expectations.overlay(&pool, vec![created, reused]);
        assert_eq!(addresses(&seen), ["10.0.0.2", "10.0.0.3"]);
    }

    #[test]
    fn a_written_change_overrides_the_stale_object() {
        let expectations = allocations();
        let held = allocation("10.0.0.2", "u2", "1");
        let mut resting = held.clone();
        resting.spec.released_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        resting.metadata.resource_version = Some("2".into());
        expectations.written("p".into(), &resting, Some(&held));
        let seen = expectations.overlay(&"p".into(), vec![held]);
        assert!(seen[0].is_resting());
    }

    #[test]
    fn the_cursor_written_wins_until_the_cache_shows_the_write() {
        let cursors = Cursors::default();
        let pool = |version: &str, last: &str| -> IPPool {
            let mut pool: IPPool = serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p", "resourceVersion": version },
                "spec": { "cidrs": ["10.0.0.0/24"] },
            }))
            .unwrap();
            pool.status = Some(IPPoolStatus {
                last_allocated: Some(last.into()),
                ..IPPoolStatus::default()
            });
            pool
        };
        cursors.written(&pool("9", "10.0.0.9"), Some("10.0.0.9".into()));
        // Older versions of the pool, in any order, do not count.
        assert_eq!(
            cursors.cursor(&pool("7", "10.0.0.2")).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(cursors.cursor(&pool("8", "")).as_deref(), Some("10.0.0.9"));
        // The write seen: the pool's status is the truth again, also later.
        assert_eq!(
            cursors.cursor(&pool("9", "10.0.0.9")).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            cursors.cursor(&pool("12", "10.0.0.11")).as_deref(),
            Some("10.0.0.11")
        );
    }
}
