//! What the controller wrote that its watch caches may not show yet (the
//! "expectations" of Kubernetes' own controllers). Without this, a pass
//! right after a write would see a pod without the allocation just made and
//! give it a second address, or read the pool's cursor from before the last
//! pass and hand out an address again too early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::types::{IPAllocation, IPPool};

/// A cache that lags longer than this has lost its watch; its relist will
/// bring the truth, so stop correcting it.
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Expectations {
    pools: Mutex<HashMap<String, PoolWrites>>,
}

#[derive(Default)]
struct PoolWrites {
    /// By allocation name: the object written, or `None` once deleted (with
    /// the UID that was deleted).
    allocations: HashMap<String, (Option<IPAllocation>, Option<String>, Instant)>,
    /// The cursor the last pass wrote, and the pool's resourceVersion
    /// after that write.
    cursor: Option<(Option<String>, Option<String>, Instant)>,
}

impl Expectations {
    pub fn written(&self, allocation: &IPAllocation) {
        self.with(&allocation.spec.pool, |writes| {
            writes.allocations.insert(
                allocation.name_any(),
                (Some(allocation.clone()), allocation.uid(), Instant::now()),
            );
        });
    }

    pub fn deleted(&self, allocation: &IPAllocation) {
        self.with(&allocation.spec.pool, |writes| {
            writes.allocations.insert(
                allocation.name_any(),
                (None, allocation.uid(), Instant::now()),
            );
        });
    }

    /// A pass wrote `last_allocated`; `written` is the pool the write
    /// returned.
    pub fn cursor_written(&self, written: &IPPool, last_allocated: Option<String>) {
        self.with(&written.name_any(), |writes| {
            writes.cursor = Some((last_allocated, written.resource_version(), Instant::now()));
        });
    }

    /// The pool's allocations: the cache's, corrected by recent writes.
    /// Writes the cache now shows are forgotten.
    pub fn allocations(&self, pool: &str, mut cached: Vec<IPAllocation>) -> Vec<IPAllocation> {
        self.with(pool, |writes| {
            writes.allocations.retain(|name, (written, uid, at)| {
                let in_cache = cached.iter().position(|a| a.name_any() == *name);
                match written {
                    // Caught up: the cache holds exactly what we wrote.
                    Some(object)
                        if in_cache.is_some_and(|i| {
                            cached[i].resource_version() == object.resource_version()
                        }) =>
                    {
                        false
                    }
                    Some(object) => {
                        if at.elapsed() >= FORGET_AFTER {
                            return false;
                        }
                        match in_cache {
                            Some(i) => cached[i] = object.clone(),
                            None => cached.push(object.clone()),
                        }
                        true
                    }
                    None => match in_cache {
                        Some(i) if cached[i].uid() == *uid && at.elapsed() < FORGET_AFTER => {
                            cached.remove(i);
                            true
                        }
                        // Gone from the cache too (or replaced by a new object).
                        _ => false,
                    },
                }
            });
        });
        cached
    }

    /// The cursor to plan with: the one the last pass wrote until the cache
    /// shows that write (resourceVersions only compare for equality, so an
    /// older version in the cache looks like any other); then the pool's own.
    pub fn cursor(&self, pool: &IPPool) -> Option<String> {
        let from_status = pool.status.as_ref().and_then(|s| s.last_allocated.clone());
        self.with(&pool.name_any(), |writes| match &writes.cursor {
            Some((written, version, at))
                if *version != pool.resource_version() && at.elapsed() < FORGET_AFTER =>
            {
                written.clone()
            }
            _ => {
                writes.cursor = None;
                from_status
            }
        })
    }

    /// A deleted pool's bookkeeping goes with it.
    pub fn forget_pool(&self, pool: &str) {
        self.pools.lock().unwrap().remove(pool);
    }

    fn with<R>(&self, pool: &str, f: impl FnOnce(&mut PoolWrites) -> R) -> R {
        let mut pools = self.pools.lock().unwrap();
        f(pools.entry(pool.to_string()).or_default())
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
        let mut allocation =
            IPAllocation::of(&pool, &address.parse().unwrap(), AllocationOwner::default());
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

    #[test]
    fn writes_show_until_the_cache_does() {
        let expectations = Expectations::default();
        let old = allocation("10.0.0.2", "u2", "1");
        let created = allocation("10.0.0.3", "u3", "2");
        expectations.written(&created);
        expectations.deleted(&old);
        // The cache lags: still the deleted one, not yet the new one.
        let seen = expectations.allocations("p", vec![old.clone()]);
        assert_eq!(addresses(&seen), ["10.0.0.3"]);
        // Caught up: nothing left to correct, even if the cache later
        // holds a new allocation of the deleted address (another UID).
        let seen = expectations.allocations("p", vec![created.clone()]);
        assert_eq!(addresses(&seen), ["10.0.0.3"]);
        let reused = allocation("10.0.0.2", "u9", "5");
        let seen = expectations.allocations("p", vec![created, reused]);
        assert_eq!(addresses(&seen), ["10.0.0.2", "10.0.0.3"]);
    }

    #[test]
    fn a_written_change_overrides_the_stale_object() {
        let expectations = Expectations::default();
        let held = allocation("10.0.0.2", "u2", "1");
        let mut resting = held.clone();
        resting.spec.released_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        resting.metadata.resource_version = Some("2".into());
        expectations.written(&resting);
        let seen = expectations.allocations("p", vec![held]);
        assert!(seen[0].is_resting());
    }

    #[test]
    fn the_cursor_written_wins_until_the_cache_shows_the_write() {
        let expectations = Expectations::default();
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
        expectations.cursor_written(&pool("9", "10.0.0.9"), Some("10.0.0.9".into()));
        // Older versions of the pool, in any order, do not count.
        assert_eq!(
            expectations.cursor(&pool("7", "10.0.0.2")).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            expectations.cursor(&pool("8", "")).as_deref(),
            Some("10.0.0.9")
        );
        // The write seen: the pool's status is the truth again, also later.
        assert_eq!(
            expectations.cursor(&pool("9", "10.0.0.9")).as_deref(),
            Some("10.0.0.9")
        );
        assert_eq!(
            expectations.cursor(&pool("12", "10.0.0.11")).as_deref(),
            Some("10.0.0.11")
        );
    }
}
