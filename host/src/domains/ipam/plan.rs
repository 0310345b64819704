//! What a pool's allocations and status should be, given what was observed:
//! pure apart from the plugin call, shared by the controller and `simulate`.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use knit_ipam_core::{FreeSpace, OffsetSet, Request};
use kube::ResourceExt;

use super::address_space::AddressSpace;
use super::types::{
    ADDRESS_ANNOTATION, AllocationOwner, IPAllocation, IPPool, IPPoolStatus, POOL_ANNOTATION,
};
use crate::controller::PluginStatus;
use crate::controller::decision::{self, Chosen, Refusal};
use crate::runtime::Registry;

/// A pod that gets an address.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedAllocation {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub address: IpAddr,
    /// The strategy that chose it, recorded on the allocation; `None` for a
    /// lost record's address taken back, which is no strategy decision and
    /// leaves the pool's cursor where it is.
    pub decided_by: Option<PluginStatus>,
}

impl PlannedAllocation {
    /// The `IPAllocation` that records it.
    pub fn record(&self, pool: &IPPool) -> IPAllocation {
        IPAllocation::of(
            pool,
            &self.address,
            AllocationOwner {
                pod_namespace: Some(self.pod_namespace.clone()),
                pod_name: Some(self.pod_name.clone()),
                pod_uid: Some(self.pod_uid.clone()),
                ..AllocationOwner::default()
            },
            self.decided_by.clone().unwrap_or_default(),
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub allocations: Vec<PlannedAllocation>,
    /// Pods that asked and got nothing, with why.
    pub refused: Vec<PodRefusal>,
    pub status: IPPoolStatus,
}

/// A pod that asked and got nothing, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRefusal {
    /// `namespace/name`.
    pub pod: String,
    pub refusal: Refusal,
}

/// Plans addresses for the pods that ask `pool` for one and have none yet.
/// `existing` may hold other pools' allocations (they are skipped);
/// `overlapping` names an older pool sharing addresses with this one, which
/// stops this one from handing out anything.
pub fn plan_pool(
    pool: &IPPool,
    existing: &[IPAllocation],
    pods: &[Pod],
    overlapping: Option<&str>,
    registry: &Registry,
    seed: u64,
    now: Time,
) -> PoolPlan {
    let pool_name = pool.name_any();
    let mut plan = PoolPlan {
        allocations: vec![],
        refused: vec![],
        status: IPPoolStatus {
            observed_generation: pool.metadata.generation,
            last_allocated: pool.status.as_ref().and_then(|s| s.last_allocated.clone()),
            ..IPPoolStatus::default()
        },
    };
    let space = match AddressSpace::from_spec(&pool.spec) {
        Ok(space) => space,
        Err(error) => {
            let (reason, message) = (error.reason(), error.to_string());
            plan.status.conditions = vec![condition("Ready", false, reason, &message, pool, &now)];
            return plan;
        }
    };
    let mine: Vec<&IPAllocation> = existing
        .iter()
        .filter(|a| a.spec.pool == pool_name)
        .collect();
    let mut request = Request {
        seed,
        ..pool_request(pool, &space, mine.iter().copied())
    };
    let capacity = FreeSpace::new(&Request {
        allocated: OffsetSet::default(),
        ..request.clone()
    })
    .map(|s| s.free_count())
    .unwrap_or(0);

    let chosen = decision::choose(registry, pool);
    let stopped = if pool.metadata.deletion_timestamp.is_some() {
        Some(Refusal::new("Deleting", "the pool is being deleted"))
    } else {
        overlapping.map(|other| {
            let message = format!("the pool overlaps the older pool {other}");
            Refusal::new("Overlapping", message)
        })
    };
    for pod in waiting_pods(&pool_name, pods, &mine) {
        let answer = match &stopped {
            Some(refusal) => Err(refusal.clone()),
            None => allocate(pod, &space, &mut request, &chosen),
        };
        match answer {
            Ok(addresses) => plan.allocations.extend(addresses),
            Err(refusal) => plan.refused.push(PodRefusal {
                pod: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                refusal,
            }),
        }
    }
    if let Some(last) = plan
        .allocations
        .iter()
        .rev()
        .find(|a| a.decided_by.is_some())
    {
        plan.status.last_allocated = Some(last.address.to_string());
    }
    let cooling = mine
        .iter()
        .filter(|a| a.is_resting() && space.offset_of_text(&a.spec.address).is_some())
        .count() as u64;
    let counts = Counts {
        capacity,
        held: request.allocated.len(),
        cooling,
    };
    fill_status(&mut plan, pool, overlapping, &chosen, counts, &now);
    plan
}

/// The pods that ask the pool for an address and hold none of it, oldest
/// first.
fn waiting_pods<'a>(pool_name: &str, pods: &'a [Pod], mine: &[&IPAllocation]) -> Vec<&'a Pod> {
    let mut waiting: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.annotations().get(POOL_ANNOTATION).map(String::as_str) == Some(pool_name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !mine.iter().any(|a| {
                !a.is_resting() && a.spec.owner.pod_uid.as_deref() == p.metadata.uid.as_deref()
            })
        })
        .collect();
    waiting.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.namespace(),
            p.name_any(),
        )
    });
    waiting
}

/// One pod's address: the free one of this pool it already carries, else
/// the strategy's. Takes what it hands out from `request`, and moves its
/// seed on.
fn allocate(
    pod: &Pod,
    space: &AddressSpace,
    request: &mut Request,
    chosen: &Result<Chosen, Refusal>,
) -> Result<Vec<PlannedAllocation>, Refusal> {
    let planned = |address, decided_by| PlannedAllocation {
        pod_namespace: pod.namespace().unwrap_or_default(),
        pod_name: pod.name_any(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        address,
        decided_by,
    };
    // A pod that already carries a free address of this pool (its
    // allocation record was lost) keeps it: it may be using it. Not a
    // strategy decision, so the cursor stays.
    if let Some(offset) = reclaimable(pod, space, request) {
        request.allocated.insert(offset);
        return Ok(space
            .address_of(offset)
            .map(|a| planned(a, None))
            .into_iter()
            .collect());
    }
    let chosen = chosen.as_ref().map_err(Clone::clone)?;
    let answer = chosen.answer(chosen.plugin.allocate(request, &chosen.config));
    request.seed = request.seed.wrapping_add(1);
    let mut addresses = Vec::new();
    for offset in answer? {
        request.allocated.insert(offset);
        request.cursor = Some(offset);
        addresses.extend(
            space
                .address_of(offset)
                .map(|a| planned(a, Some(chosen.status()))),
        );
    }
    Ok(addresses)
}

/// A pool's numbers, for its status.
struct Counts {
    capacity: u64,
    held: u64,
    cooling: u64,
}

/// The pool's counts, plugin and conditions (`Ready`, `Exhausted`).
fn fill_status(
    plan: &mut PoolPlan,
    pool: &IPPool,
    overlapping: Option<&str>,
    chosen: &Result<Chosen, Refusal>,
    counts: Counts,
    now: &Time,
) {
    let Counts {
        capacity,
        held,
        cooling,
    } = counts;
    let status = &mut plan.status;
    status.capacity = capacity;
    status.allocated = held - cooling;
    status.cooling = cooling;
    status.free = capacity.saturating_sub(held);
    status.utilization = if capacity == 0 {
        "0.0".into()
    } else {
        format!("{:.1}", status.allocated as f64 * 100.0 / capacity as f64)
    };
    if let Ok(chosen) = chosen {
        status.decided_by = chosen.status();
    }
    let in_use = status.allocated;
    let exhausted = status.free == 0;
    let (ready, reason, message) = if pool.metadata.deletion_timestamp.is_some() {
        (
            false,
            "Deleting",
            format!("waiting for {in_use} address(es) in use to be released"),
        )
    } else if let Some(other) = overlapping {
        (
            false,
            "Overlapping",
            format!(
                "shares addresses with the older pool {other}: nothing is handed out until the CIDRs are disjoint"
            ),
        )
    } else {
        match (chosen, plan.refused.first()) {
            (Err(refusal), _) => (false, refusal.reason, refusal.message.clone()),
            (Ok(_), Some(first)) => (
                false,
                "AllocationFailed",
                format!(
                    "{} pod(s) without an address; {}: {}",
                    plan.refused.len(),
                    first.pod,
                    first.refusal.message
                ),
            ),
            (Ok(_), None) => (
                true,
                "Allocating",
                format!("{in_use} of {capacity} addresses allocated"),
            ),
        }
    };
    let free_message = format!("{} free, {cooling} cooling down", plan.status.free);
    let exhausted_reason = if exhausted {
        "NoFreeAddresses"
    } else {
        "FreeAddresses"
    };
    plan.status.conditions = vec![
        condition("Ready", ready, reason, &message, pool, now),
        condition(
            "Exhausted",
            exhausted,
            exhausted_reason,
            &free_message,
            pool,
            now,
        ),
    ];
}

/// The strategy request for a pool as its allocations stand: every address
/// held is taken (resting ones too: nobody gets them until they are freed),
/// and a sequential strategy goes on from `status.lastAllocated`. One
/// address is asked for; the caller sets the seed.
pub fn pool_request<'a>(
    pool: &IPPool,
    space: &AddressSpace,
    allocations: impl IntoIterator<Item = &'a IPAllocation>,
) -> Request {
    Request {
        size: space.size(),
        allocated: allocations
            .into_iter()
            .filter_map(|a| space.offset_of_text(&a.spec.address))
            .collect(),
        excluded: space.excluded.clone(),
        cursor: pool
            .status
            .as_ref()
            .and_then(|s| s.last_allocated.as_deref())
            .and_then(|a| space.offset_of_text(a)),
        count: 1,
        seed: 0,
    }
}

/// The offset of the address a pod is annotated with, when it is usable and
/// free in this pool.
fn reclaimable(pod: &Pod, space: &AddressSpace, request: &Request) -> Option<u64> {
    let address: IpAddr = pod.annotations().get(ADDRESS_ANNOTATION)?.parse().ok()?;
    let offset = space.offset_of(&address)?;
    let taken = request.allocated.contains(offset)
        || request.excluded.iter().any(|range| range.contains(&offset));
    (!taken).then_some(offset)
}

/// The name of the oldest other pool whose addresses overlap `pool`'s, when
/// `pool` is the younger one (creation time, then name): the older pool keeps
/// working, the younger stops.
pub fn overlapping_pool<'a>(
    pool: &IPPool,
    others: impl IntoIterator<Item = &'a IPPool>,
) -> Option<String> {
    let space = AddressSpace::from_spec(&pool.spec).ok()?;
    let age = |p: &IPPool| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.name_any(),
        )
    };
    others
        .into_iter()
        .filter(|other| other.name_any() != pool.name_any() && age(other) < age(pool))
        .filter(|other| {
            AddressSpace::from_spec(&other.spec).is_ok_and(|other| other.overlaps(&space))
        })
        .min_by_key(|other| age(other))
        .map(|other| other.name_any())
}

/// How the controller's allocations stand against the address written on
/// each pod. The written address is the arbiter when replicas race: the
/// first conditional write wins, and every replica then agrees on it.
#[derive(Debug, Default)]
pub struct PodAddresses<'a> {
    /// Held beside the address written on the pod: to free.
    pub surplus: Vec<&'a IPAllocation>,
    /// Held by pods with no (matching) address written: the one to write,
    /// the oldest.
    pub unwritten: Vec<&'a IPAllocation>,
}

pub fn pod_addresses<'a>(mine: &[&'a IPAllocation], pods: &[Pod]) -> PodAddresses<'a> {
    let mut result = PodAddresses::default();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            continue;
        };
        let mut held: Vec<&IPAllocation> = mine
            .iter()
            .copied()
            // Container-held addresses (the CNI plugin's) are in use by that
            // container whatever the pod says: never surplus.
            .filter(|a| a.spec.owner.container_id.is_none())
            .filter(|a| !a.is_resting() && a.spec.owner.pod_uid.as_deref() == Some(uid))
            .collect();
        let written = pod.annotations().get(ADDRESS_ANNOTATION);
        if held.iter().any(|a| Some(&a.spec.address) == written) {
            result.surplus.extend(
                held.into_iter()
                    .filter(|a| Some(&a.spec.address) != written),
            );
        } else {
            held.sort_by_key(|a| {
                (
                    a.metadata.creation_timestamp.clone().map(|t| t.0),
                    a.name_any(),
                )
            });
            result.unwritten.extend(held.first());
        }
    }
    result
}

/// Resting allocations whose cooldown is over, and how long until the next
/// one's is.
pub fn cooled_down<'a>(
    mine: &[&'a IPAllocation],
    cooldown: Duration,
    now: &Time,
) -> (Vec<&'a IPAllocation>, Option<Duration>) {
    let mut done = Vec::new();
    let mut next: Option<Duration> = None;
    for allocation in mine {
        let Some(released) = &allocation.spec.released_at else {
            continue;
        };
        let rested = now.0.duration_since(released.0);
        let rested = Duration::try_from(rested).unwrap_or_default();
        match cooldown.checked_sub(rested) {
            Some(left) if !left.is_zero() => {
                next = Some(next.map_or(left, |next| next.min(left)));
            }
            _ => done.push(*allocation),
        }
    }
    (done, next)
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    pool: &IPPool,
    now: &Time,
) -> Condition {
    let previous = pool.status.as_ref().map_or(&[][..], |s| &s.conditions);
    crate::conditions::condition(
        previous,
        type_,
        status,
        reason,
        message,
        pool.metadata.generation,
        now,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domains::ipam::types::AllocationOwner;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn pool(name: &str, cidr: &str, created: i64) -> IPPool {
        let mut pool: IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "knit.dev/v1alpha1",
            "kind": "IPPool",
            "metadata": { "name": name },
            "spec": { "cidrs": [cidr], "gateway": null },
        }))
        .unwrap();
        pool.metadata.creation_timestamp = Some(time(created));
        pool
    }

    fn pod(name: &str, uid: &str, annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some(uid.into());
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod
    }

    fn allocation(pool: &IPPool, address: &str, uid: &str, created: i64) -> IPAllocation {
        let mut allocation = IPAllocation::of(
            pool,
            &address.parse().unwrap(),
            AllocationOwner {
                pod_namespace: Some("default".into()),
                pod_name: Some(format!("pod-{uid}")),
                pod_uid: Some(uid.into()),
                ..AllocationOwner::default()
            },
            PluginStatus::default(),
        );
        allocation.metadata.creation_timestamp = Some(time(created));
        allocation
    }

    fn names(allocations: Vec<&IPAllocation>) -> Vec<String> {
        allocations.iter().map(|a| a.name_any()).collect()
    }

    fn registry() -> Arc<Registry> {
        crate::cli::builtin_registry(None, Arc::default()).unwrap()
    }

    #[test]
    fn sequential_goes_on_after_the_last_address_and_resting_ones_stay_held() {
        let mut pool = pool("p", "10.0.0.0/29", 0);
        pool.status = Some(IPPoolStatus {
            last_allocated: Some("10.0.0.3".into()),
            ..IPPoolStatus::default()
        });
        let mut resting = allocation(&pool, "10.0.0.4", "gone", 0);
        resting.spec.released_at = Some(time(10));
        let existing = [allocation(&pool, "10.0.0.2", "a", 0), resting];
        let pods = [
            pod("a", "a", &[(POOL_ANNOTATION, "p")]),
            pod("b", "b", &[(POOL_ANNOTATION, "p")]),
        ];
        let plan = plan_pool(&pool, &existing, &pods, None, &registry(), 1, time(20));
        let addresses: Vec<String> = plan
            .allocations
            .iter()
            .map(|a| a.address.to_string())
            .collect();
        // .1 is free, but the cursor is at .3 and .4 rests: .5 is next.
        assert_eq!(addresses, ["10.0.0.5"]);
        let status = &plan.status;
        assert_eq!(
            (
                status.capacity,
                status.allocated,
                status.cooling,
                status.free
            ),
            (6, 2, 1, 3)
        );
        assert_eq!(status.last_allocated.as_deref(), Some("10.0.0.5"));
    }

    #[test]
    fn a_pod_keeps_the_address_written_on_it_when_its_record_is_lost() {
        let pool = pool("p", "10.0.0.0/29", 0);
        let pods = [pod(
            "a",
            "a",
            &[(POOL_ANNOTATION, "p"), (ADDRESS_ANNOTATION, "10.0.0.6")],
        )];
        let plan = plan_pool(&pool, &[], &pods, None, &registry(), 1, time(0));
        assert_eq!(plan.allocations[0].address.to_string(), "10.0.0.6");
        // Not when someone else holds it: then the strategy decides.
        let existing = [allocation(&pool, "10.0.0.6", "other", 0)];
        let plan = plan_pool(&pool, &existing, &pods, None, &registry(), 1, time(0));
        assert_eq!(plan.allocations[0].address.to_string(), "10.0.0.1");
    }

    #[test]
    fn an_overlapping_or_deleting_pool_hands_out_nothing() {
        let older = pool("older", "10.0.0.0/24", 0);
        let younger = pool("younger", "10.0.0.128/25", 5);
        let pools = [
            older.clone(),
            younger.clone(),
            pool("apart", "10.1.0.0/24", 1),
        ];
        assert_eq!(overlapping_pool(&older, &pools), None);
        assert_eq!(overlapping_pool(&younger, &pools).as_deref(), Some("older"));
        let pods = [pod("a", "a", &[(POOL_ANNOTATION, "younger")])];
        let plan = plan_pool(&younger, &[], &pods, Some("older"), &registry(), 1, time(0));
        assert!(plan.allocations.is_empty());
        assert_eq!(plan.refused[0].refusal.reason, "Overlapping");
        let ready = &plan.status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Overlapping")
        );

        let mut deleting = pool("older", "10.0.0.0/24", 0);
        deleting.metadata.deletion_timestamp = Some(time(9));
        let pods = [pod("a", "a", &[(POOL_ANNOTATION, "older")])];
        let plan = plan_pool(&deleting, &[], &pods, None, &registry(), 1, time(10));
        assert!(plan.allocations.is_empty());
        assert_eq!(plan.status.conditions[0].reason, "Deleting");
    }

    fn pool_of(name: &str, spec: serde_json::Value, created: i64) -> IPPool {
        let mut pool: IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "knit.dev/v1alpha1",
            "kind": "IPPool",
            "metadata": { "name": name },
            "spec": spec,
        }))
        .unwrap();
        pool.metadata.creation_timestamp = Some(time(created));
        pool
    }

    fn asking(pool: &str, count: usize) -> Vec<Pod> {
        (0..count)
            .map(|i| {
                pod(
                    &format!("{pool}-{i}"),
                    &format!("{pool}-{i}"),
                    &[(POOL_ANNOTATION, pool)],
                )
            })
            .collect()
    }

    fn addresses(plan: &PoolPlan) -> Vec<String> {
        plan.allocations
            .iter()
            .map(|a| a.address.to_string())
            .collect()
    }

    #[test]
    fn pools_of_several_wide_ipv6_cidrs_plan_from_every_cidr() {
        use crate::domains::ipam::address_space::MAX_OFFSETS_PER_CIDR;
        // (name, /64s, how many leading /64s are excluded, first address).
        // Before offsets were capped, two /64s had capacity 0 ("pool
        // exhausted") and three wrapped onto the first.
        let cases = [
            ("two /64s", 2, 0, "fd00:0:0:1::1"),
            ("two /64s, the first excluded", 2, 1, "fd00:0:0:2::1"),
            ("three /64s, two excluded", 3, 2, "fd00:0:0:3::1"),
            ("sixteen /64s, fifteen excluded", 16, 15, "fd00:0:0:10::1"),
        ];
        let registry = registry();
        for (name, count, excluded, first) in cases {
            let cidrs: Vec<String> = (1..=count)
                .map(|n| format!("fd00:0:0:{n:x}::/64"))
                .collect();
            let exclude = cidrs[..excluded].to_vec();
            let pool = pool_of(
                "wide",
                serde_json::json!({ "cidrs": cidrs, "exclude": exclude }),
                0,
            );
            let plan = plan_pool(&pool, &[], &asking("wide", 2), None, &registry, 1, time(0));
            assert!(plan.refused.is_empty(), "{name}: {:?}", plan.refused);
            let next = first.replace("::1", "::2");
            assert_eq!(addresses(&plan), [first, next.as_str()], "{name}");
            // Each usable /64 counts 2^48 addresses, less its anycast one.
            let usable = (count - excluded) as u64;
            assert_eq!(
                plan.status.capacity,
                usable * (MAX_OFFSETS_PER_CIDR - 1),
                "{name}"
            );
            assert_eq!(plan.status.free, plan.status.capacity - 2, "{name}");
        }
    }

    #[test]
    fn a_pool_with_overlapping_cidrs_hands_out_nothing() {
        // Counted twice, 10.2.0.1 was planned for two pods.
        let pool = pool_of(
            "twice",
            serde_json::json!({ "cidrs": ["10.2.0.0/30", "10.2.0.0/29"] }),
            0,
        );
        let plan = plan_pool(
            &pool,
            &[],
            &asking("twice", 3),
            None,
            &registry(),
            1,
            time(0),
        );
        assert!(plan.allocations.is_empty(), "{:?}", addresses(&plan));
        let ready = &plan.status.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "False", "OverlappingCIDRs")
        );
        assert!(
            ready
                .message
                .contains("cidrs[1] 10.2.0.0/29 overlaps cidrs[0] 10.2.0.0/30"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn pools_at_the_top_of_ipv6_are_seen_to_overlap() {
        let top = serde_json::json!({ "cidrs": ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"] });
        let older = pool_of("older", top.clone(), 0);
        let younger = pool_of("younger", top, 5);
        let pools = [older.clone(), younger.clone()];
        assert_eq!(overlapping_pool(&older, &pools), None);
        assert_eq!(overlapping_pool(&younger, &pools).as_deref(), Some("older"));
    }

    #[test]
    fn ipv6_pools_never_hand_out_the_subnet_router_anycast_address() {
        let pool = pool_of(
            "v6",
            serde_json::json!({ "cidrs": ["fd00::/64", "fd01::/120"] }),
            0,
        );
        let registry = registry();
        let plan = plan_pool(&pool, &[], &asking("v6", 1), None, &registry, 1, time(0));
        assert_eq!(addresses(&plan), ["fd00::1"]);
        // Not even when a pod asks for it by annotation.
        let pods = [pod(
            "a",
            "a",
            &[(POOL_ANNOTATION, "v6"), (ADDRESS_ANNOTATION, "fd01::")],
        )];
        let plan = plan_pool(&pool, &[], &pods, None, &registry, 1, time(0));
        assert_eq!(addresses(&plan), ["fd00::1"]);
    }

    /// `knit simulate` over pools that once gave two pods one address.
    #[test]
    fn simulate_never_plans_one_address_twice() {
        let pod = |name: &str, pool: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, uid: {name}, annotations: {{knit.dev/ippool: {pool}}}}}\nspec: {{containers: [{{name: c, image: i}}]}}\n"
            )
        };
        let pool = |name: &str, cidrs: &str| {
            format!(
                "---\napiVersion: knit.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {{cidrs: {cidrs}}}\n"
            )
        };
        let top = "['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120']";
        let cases = [
            (
                "overlapping CIDRs in one pool",
                [
                    pool("p", "[10.2.0.0/30, 10.2.0.0/29]"),
                    pod("a", "p"),
                    pod("b", "p"),
                    pod("c", "p"),
                ]
                .concat(),
            ),
            (
                "two pools at the top of IPv6",
                [pool("p", top), pool("q", top), pod("a", "p"), pod("b", "q")].concat(),
            ),
        ];
        let registry = registry();
        for (name, stream) in cases {
            let mut manifests = crate::simulate::Manifests::default();
            manifests.add_stream(&stream).unwrap();
            let planned: Vec<String> = crate::simulate::simulate(&manifests, &registry, 1)
                .into_iter()
                .filter(|(what, _)| what.starts_with("apply: address"))
                .map(|(_, allocation)| allocation["spec"]["address"].as_str().unwrap().to_string())
                .collect();
            let distinct: std::collections::BTreeSet<&String> = planned.iter().collect();
            assert_eq!(distinct.len(), planned.len(), "{name}: {planned:?}");
        }
    }

    #[test]
    fn the_written_address_decides_which_one_a_pod_keeps() {
        let pool = pool("p", "10.0.0.0/24", 0);
        let (a, b, c) = (
            allocation(&pool, "10.0.0.5", "x", 2),
            allocation(&pool, "10.0.0.9", "x", 1),
            allocation(&pool, "10.0.0.7", "y", 1),
        );
        let mine = [&a, &b, &c];
        // Nothing written yet: nothing freed, the oldest gets written.
        let unwritten = [pod("x", "x", &[]), pod("y", "y", &[])];
        let result = pod_addresses(&mine, &unwritten);
        assert!(result.surplus.is_empty());
        assert_eq!(names(result.unwritten), names(vec![&b, &c]));
        // Written: the other one goes.
        let written = [pod("x", "x", &[(ADDRESS_ANNOTATION, "10.0.0.5")])];
        let result = pod_addresses(&mine, &written);
        assert_eq!(names(result.surplus), names(vec![&b]));
        assert!(result.unwritten.is_empty());
        // Written, but not an address the pod holds: write one it holds.
        let stale = [pod("y", "y", &[(ADDRESS_ANNOTATION, "10.0.0.200")])];
        let result = pod_addresses(&mine, &stale);
        assert_eq!(names(result.unwritten), names(vec![&c]));
    }

    #[test]
    fn rests_end_after_the_cooldown() {
        let pool = pool("p", "10.0.0.0/24", 0);
        let mut early = allocation(&pool, "10.0.0.5", "x", 0);
        early.spec.released_at = Some(time(100));
        let mut late = allocation(&pool, "10.0.0.6", "y", 0);
        late.spec.released_at = Some(time(130));
        let held = allocation(&pool, "10.0.0.7", "z", 0);
        let mine = [&early, &late, &held];
        let (done, next) = cooled_down(&mine, Duration::from_secs(60), &time(170));
        assert_eq!(names(done), names(vec![&early]));
        assert_eq!(next, Some(Duration::from_secs(20)));
        let (done, next) = cooled_down(&mine, Duration::ZERO, &time(170));
        assert_eq!((done.len(), next), (2, None));
    }
}
