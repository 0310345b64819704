//! IPAM metrics, exported on `/metrics` next to the runtime's.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::types::IPPoolStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pool: String,
    reason: String,
}

pub struct IpamMetrics {
    allocations: Family<PoolLabels, Counter>,
    releases: Family<ReasonLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    durations: Family<PoolLabels, Histogram, fn() -> Histogram>,
    capacity: Family<PoolLabels, Gauge>,
    allocated: Family<PoolLabels, Gauge>,
    utilization: Family<PoolLabels, Gauge<f64, AtomicU64>>,
}

impl Default for IpamMetrics {
    fn default() -> Self {
        IpamMetrics {
            allocations: Family::default(),
            releases: Family::default(),
            errors: Family::default(),
            // 100 µs .. ~26 s: a plugin call plus an API write, up to a slow server.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-4, 4.0, 10))
            }),
            capacity: Family::default(),
            allocated: Family::default(),
            utilization: Family::default(),
        }
    }
}

impl IpamMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "knit_ipam_allocations",
            "Addresses handed out",
            self.allocations.clone(),
        );
        registry.register(
            "knit_ipam_releases",
            "Addresses given back, by reason (owner-gone, duplicate, cooled-down, pool-deleted)",
            self.releases.clone(),
        );
        registry.register(
            "knit_ipam_errors",
            "Pods refused an address, by reason",
            self.errors.clone(),
        );
        registry.register(
            "knit_ipam_allocation_duration_seconds",
            "From the strategy call to the recorded IPAllocation",
            self.durations.clone(),
        );
        registry.register(
            "knit_ipam_pool_capacity",
            "Usable addresses of a pool",
            self.capacity.clone(),
        );
        registry.register(
            "knit_ipam_pool_allocated",
            "Addresses of a pool held by owners",
            self.allocated.clone(),
        );
        registry.register(
            "knit_ipam_pool_utilization_ratio",
            "Allocated share of a pool's capacity, 0..1",
            self.utilization.clone(),
        );
    }

    pub fn allocated(&self, pool: &str, took: Duration) {
        let labels = PoolLabels { pool: pool.into() };
        self.allocations.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn released(&self, pool: &str, reason: &str) {
        self.releases
            .get_or_create(&ReasonLabels {
                pool: pool.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A pod refused an address, counted by the refusal's label
    /// (`exhausted`, `invalid-config`, …; see `refusal_label`).
    pub fn refused(&self, pool: &str, condition_reason: &str) {
        self.errors
            .get_or_create(&ReasonLabels {
                pool: pool.into(),
                reason: refusal_label(condition_reason).into(),
            })
            .inc();
    }

    pub fn pool_status(&self, pool: &str, status: &IPPoolStatus) {
        let labels = PoolLabels { pool: pool.into() };
        self.capacity
            .get_or_create(&labels)
            .set(i64::try_from(status.capacity).unwrap_or(i64::MAX));
        self.allocated
            .get_or_create(&labels)
            .set(i64::try_from(status.allocated).unwrap_or(i64::MAX));
        let ratio = if status.capacity == 0 {
            0.0
        } else {
            status.allocated as f64 / status.capacity as f64
        };
        self.utilization.get_or_create(&labels).set(ratio);
    }

    /// A deleted pool stops being reported.
    pub fn pool_gone(&self, pool: &str) {
        let labels = PoolLabels { pool: pool.into() };
        self.capacity.remove(&labels);
        self.allocated.remove(&labels);
        self.utilization.remove(&labels);
    }

    /// For tests: addresses handed out from a pool so far.
    pub fn allocations_of(&self, pool: &str) -> u64 {
        self.allocations
            .get_or_create(&PoolLabels { pool: pool.into() })
            .get()
    }
}

/// The metric label of a refusal's condition reason: the labels the
/// dashboards know, a plugin that is missing or failed being `plugin-error`.
pub fn refusal_label(condition_reason: &str) -> &'static str {
    match condition_reason {
        "Exhausted" => "exhausted",
        "InvalidConfig" => "invalid-config",
        "InvalidRequest" => "invalid-request",
        "Deleting" => "deleting",
        "Overlapping" => "overlapping",
        _ => "plugin-error",
    }
}
