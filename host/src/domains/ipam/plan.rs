//! What a pool's allocations and status should be, given what was observed:
//! pure apart from the plugin call, shared by the controller and `simulate`.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use knit_ipam_core::{FreeSpace, OffsetSet, Request};
use kube::ResourceExt;

use super::address_space::AddressSpace;
use super::types::{IPAllocation, IPPool, IPPoolStatus, POOL_ANNOTATION};
use crate::runtime::{Registry, World};

/// A pod that gets an address.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedAllocation {
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub address: std::net::IpAddr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    pub allocations: Vec<PlannedAllocation>,
    /// Pods that asked and got nothing, with why.
    pub refused: Vec<(String, String)>,
    pub status: IPPoolStatus,
}

/// Plans addresses for the pods that ask `pool` for one and have none yet.
pub fn plan_pool(
    pool: &IPPool,
    existing: &[IPAllocation],
    pods: &[Pod],
    registry: &Registry,
    seed: u64,
    now: Time,
) -> PoolPlan {
    let pool_name = pool.name_any();
    let mut status = IPPoolStatus {
        observed_generation: pool.metadata.generation,
        ..IPPoolStatus::default()
    };
    let space = match AddressSpace::from_spec(&pool.spec) {
        Ok(space) => space,
        Err(error) => {
            status.conditions = vec![condition("Ready", false, "InvalidSpec", &error, pool, &now)];
            return PoolPlan {
                allocations: vec![],
                refused: vec![],
                status,
            };
        }
    };
    let mine: Vec<&IPAllocation> = existing
        .iter()
        .filter(|a| a.spec.pool == pool_name)
        .collect();
    let mut request = Request {
        size: space.size(),
        allocated: mine
            .iter()
            .filter_map(|a| a.spec.address.parse().ok())
            .filter_map(|ip| space.offset_of(&ip))
            .collect::<OffsetSet>(),
        excluded: space.excluded.clone(),
        cursor: None,
        count: 1,
        seed,
    };
    let capacity = FreeSpace::new(&Request {
        allocated: OffsetSet::default(),
        ..request.clone()
    })
    .map(|s| s.free_count())
    .unwrap_or(0);

    let mut waiting: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.annotations().get(POOL_ANNOTATION) == Some(&pool_name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !mine
                .iter()
                .any(|a| a.spec.owner.pod_uid.as_deref() == p.metadata.uid.as_deref())
        })
        .collect();
    waiting.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.namespace(),
            p.name_any(),
        )
    });

    let mut plan = PoolPlan {
        allocations: vec![],
        refused: vec![],
        status,
    };
    let plugin = registry.get_world(&pool.spec.strategy.plugin, World::IpamStrategy);
    let config: Vec<(String, String)> = pool.spec.strategy.config.clone().into_iter().collect();
    for pod in waiting {
        let pod_ref = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let answer = match &plugin {
            Ok(plugin) => plugin
                .allocate(&request, &config)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(Ok(offsets)) => {
                for offset in offsets {
                    request.allocated.insert(offset);
                    request.cursor = Some(offset);
                    if let Some(address) = space.address_of(offset) {
                        plan.allocations.push(PlannedAllocation {
                            pod_namespace: pod.namespace().unwrap_or_default(),
                            pod_name: pod.name_any(),
                            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                            address,
                        });
                    }
                }
            }
            Ok(Err(refusal)) => plan.refused.push((pod_ref, refusal.to_string())),
            Err(error) => plan.refused.push((pod_ref, error)),
        }
        request.seed = request.seed.wrapping_add(1);
    }

    let allocated = request.allocated.len();
    let status = &mut plan.status;
    status.capacity = capacity;
    status.allocated = allocated;
    status.free = capacity.saturating_sub(allocated);
    status.utilization = if capacity == 0 {
        "0.0".into()
    } else {
        format!("{:.1}", allocated as f64 * 100.0 / capacity as f64)
    };
    if let Ok(plugin) = &plugin {
        status.plugin = Some(plugin.name_version());
        status.plugin_digest = Some(plugin.digest.clone());
    }
    let exhausted = status.free == 0;
    let (ready, reason, message) = match (&plugin, plan.refused.first()) {
        (Err(error), _) => (false, "PluginUnavailable", error.to_string()),
        (Ok(_), Some((pod, why))) => (
            false,
            "AllocationFailed",
            format!(
                "{} pod(s) without an address; {pod}: {why}",
                plan.refused.len()
            ),
        ),
        (Ok(_), None) => (
            true,
            "Allocating",
            format!("{allocated} of {capacity} addresses allocated"),
        ),
    };
    plan.status.conditions = vec![
        condition("Ready", ready, reason, &message, pool, &now),
        condition(
            "Exhausted",
            exhausted,
            if exhausted {
                "NoFreeAddresses"
            } else {
                "FreeAddresses"
            },
            &format!("{} free", plan.status.free),
            pool,
            &now,
        ),
    ];
    plan
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    pool: &IPPool,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // Keep the transition time while the condition's status holds.
    let last_transition_time = pool
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        })
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: pool.metadata.generation,
        last_transition_time,
    }
}
