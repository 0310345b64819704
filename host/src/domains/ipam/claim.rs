//! Claiming one address from an `IPPool` for a container interface, as
//! `knit-ipam` does in cluster mode, and releasing it.
//!
//! Claims race: many containers start at once, on one node or many. An
//! allocation's name is derived from pool and address, so when two claims
//! pick the same address the API server lets exactly one create it; the
//! other gets 409 AlreadyExists, counts the address as taken and asks the
//! strategy again.

use std::net::IpAddr;
use std::sync::Arc;

use knit_ipam_core::{AllocateError, FreeSpace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};

use super::address_space::AddressSpace;
use super::plan::pool_request;
use super::types::{AllocationOwner, IPAllocation, IPPool};
use crate::controller::{PluginStatus, replay_seed};
use crate::runtime::{Plugin, Registry, World};

/// Creates tried before giving up; each failed one means another claim won
/// that address, so this bounds how many concurrent claims one can lose to.
pub const MAX_ATTEMPTS: u32 = 64;

/// Where a claim finds the pool's strategy plugin: the controller's registry,
/// or the CNI plugin's loader, which loads only the one plugin it needs.
pub trait StrategySource {
    fn strategy(&self, name: &str) -> Result<Arc<Plugin>, String>;
}

impl StrategySource for Registry {
    fn strategy(&self, name: &str) -> Result<Arc<Plugin>, String> {
        self.get_world(name, World::IpamStrategy)
            .map_err(|error| error.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("IPPool {0} does not exist")]
    PoolNotFound(String),
    #[error("IPPool {0} is being deleted and hands out no more addresses")]
    PoolDeleting(String),
    #[error("IPPool {pool} is invalid: {reason}")]
    InvalidPool { pool: String, reason: String },
    #[error("IPPool {pool}: strategy {plugin}: {reason}")]
    Strategy {
        pool: String,
        plugin: String,
        reason: String,
    },
    #[error("IPPool {pool} has no free address")]
    Exhausted { pool: String },
    #[error(
        "IPPool {pool}: concurrent allocators took every address tried ({attempts} attempts); try again"
    )]
    Contended { pool: String, attempts: u32 },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The pool, if it exists and is not being deleted.
pub async fn get_pool(client: &Client, name: &str) -> Result<IPPool, ClaimError> {
    let pool = Api::<IPPool>::all(client.clone())
        .get_opt(name)
        .await?
        .ok_or_else(|| ClaimError::PoolNotFound(name.to_string()))?;
    if pool.metadata.deletion_timestamp.is_some() {
        return Err(ClaimError::PoolDeleting(name.to_string()));
    }
    Ok(pool)
}

/// An address from `pool_name` for `owner`: the one it already holds, or a
/// new one chosen by the pool's strategy.
pub async fn claim(
    client: &Client,
    strategies: &impl StrategySource,
    pool_name: &str,
    owner: AllocationOwner,
) -> Result<IPAllocation, ClaimError> {
    let pool = get_pool(client, pool_name).await?;
    claim_from(client, strategies, &pool, owner).await
}

/// `claim` for a pool the caller already read.
pub async fn claim_from(
    client: &Client,
    strategies: &impl StrategySource,
    pool: &IPPool,
    owner: AllocationOwner,
) -> Result<IPAllocation, ClaimError> {
    let pool_name = pool.name_any();
    if pool.metadata.deletion_timestamp.is_some() {
        return Err(ClaimError::PoolDeleting(pool_name));
    }
    let space = AddressSpace::from_spec(&pool.spec).map_err(|error| ClaimError::InvalidPool {
        pool: pool_name.clone(),
        reason: error.to_string(),
    })?;
    let existing = allocations(client, &pool_name).await?;
    if let Some(held) = existing
        .iter()
        .find(|a| !a.is_resting() && same_owner(&a.spec.owner, &owner))
    {
        return Ok(held.clone());
    }
    let plugin_name = &pool.spec.strategy.plugin;
    let strategy_error = |reason: String| ClaimError::Strategy {
        pool: pool_name.clone(),
        plugin: plugin_name.clone(),
        reason,
    };
    let plugin = strategies.strategy(plugin_name).map_err(strategy_error)?;
    let config: Vec<(String, String)> = pool.spec.strategy.config.clone().into_iter().collect();
    let mut request = pool_request(pool, &space, &existing);
    let api: Api<IPAllocation> = Api::all(client.clone());
    for attempt in 0..MAX_ATTEMPTS {
        request.seed = replay_seed(&[
            owner.container_id.as_deref().unwrap_or_default(),
            owner.interface.as_deref().unwrap_or_default(),
            owner.pod_uid.as_deref().unwrap_or_default(),
            &attempt.to_string(),
        ]);
        // A strategy call takes microseconds: no thread hop for it.
        let offsets = match plugin.allocate(&request, &config) {
            Ok(Ok(offsets)) => offsets,
            Ok(Err(AllocateError::Exhausted(_))) => {
                return Err(ClaimError::Exhausted { pool: pool_name });
            }
            Ok(Err(refusal)) => return Err(strategy_error(refusal.to_string())),
            Err(error) => return Err(strategy_error(error.to_string())),
        };
        // `Plugin::allocate` checked: exactly one offset, inside the pool.
        let Some((offset, address)) = offsets
            .first()
            .and_then(|&offset| Some((offset, space.address_of(offset)?)))
        else {
            return Err(strategy_error(format!("answered {offsets:?}")));
        };
        let allocation = IPAllocation::of(pool, &address, owner.clone(), PluginStatus::of(&plugin));
        match api.create(&PostParams::default(), &allocation).await {
            Ok(created) => {
                record_last_allocated(client, &pool_name, &address).await;
                return Ok(created);
            }
            // Another claim created it since we listed: taken.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                request.allocated.insert(offset);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ClaimError::Contended {
        pool: pool_name,
        attempts: MAX_ATTEMPTS,
    })
}

/// Deletes what `container_id`/`ifname` holds in the pool; returns how many.
/// Nothing held (or no such pool) is not an error.
pub async fn release(
    client: &Client,
    pool_name: &str,
    container_id: &str,
    ifname: &str,
) -> Result<usize, kube::Error> {
    release_where(client, pool_name, |a| held_by(a, container_id, ifname)).await
}

/// CNI GC: deletes the container-held allocations of the pool whose
/// (container ID, interface) `is_attached` does not know; returns how many.
pub async fn release_unattached(
    client: &Client,
    pool_name: &str,
    is_attached: impl Fn(&str, &str) -> bool,
) -> Result<usize, kube::Error> {
    release_where(client, pool_name, |a| {
        match (&a.spec.owner.container_id, &a.spec.owner.interface) {
            (Some(id), Some(ifname)) => !is_attached(id, ifname),
            _ => false,
        }
    })
    .await
}

async fn release_where(
    client: &Client,
    pool_name: &str,
    matches: impl Fn(&IPAllocation) -> bool,
) -> Result<usize, kube::Error> {
    let api: Api<IPAllocation> = Api::all(client.clone());
    // With a reuse cooldown the address rests (still held, owned by nobody)
    // and the controller frees it once the cooldown is over.
    let pool = Api::<IPPool>::all(client.clone())
        .get_opt(pool_name)
        .await?;
    let rest = pool.is_some_and(|pool| {
        pool.metadata.deletion_timestamp.is_none()
            && pool.spec.reuse_cooldown_seconds.unwrap_or(0) > 0
    });
    let mut released = 0;
    for allocation in allocations(client, pool_name).await? {
        // A resting allocation belongs to nobody: the controller frees it.
        if allocation.is_resting() || !matches(&allocation) {
            continue;
        }
        // The UID precondition acts on this allocation, never a newer one of
        // the same name (address) made since we listed.
        let result = if rest {
            let patch = serde_json::json!({
                "metadata": { "uid": allocation.metadata.uid },
                "spec": { "releasedAt": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now()
                ) },
            });
            api.patch(
                &allocation.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
        } else {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: allocation.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            api.delete(&allocation.name_any(), &params)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => released += 1,
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(released)
}

/// The allocations of one pool (resting ones included).
pub async fn allocations(
    client: &Client,
    pool_name: &str,
) -> Result<Vec<IPAllocation>, kube::Error> {
    let list = Api::<IPAllocation>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.pool={pool_name}")))
        .await?;
    Ok(list.items)
}

/// True when `allocation` is this container interface's and not resting.
pub fn held_by(allocation: &IPAllocation, container_id: &str, ifname: &str) -> bool {
    let owner = &allocation.spec.owner;
    !allocation.is_resting()
        && owner.container_id.as_deref() == Some(container_id)
        && owner.interface.as_deref() == Some(ifname)
}

/// How many addresses of the pool nobody holds, resting ones counted as held.
pub fn free_addresses(pool: &IPPool, allocations: &[IPAllocation]) -> Result<u64, String> {
    let space = AddressSpace::from_spec(&pool.spec)?;
    Ok(FreeSpace::new(&pool_request(pool, &space, allocations))?.free_count())
}

/// A container interface is identified by container ID and interface name,
/// a pod (the controller's allocations) by UID.
fn same_owner(a: &AllocationOwner, b: &AllocationOwner) -> bool {
    match (&a.container_id, &b.container_id) {
        (Some(a_id), Some(b_id)) => a_id == b_id && a.interface == b.interface,
        (None, None) => a.pod_uid.is_some() && a.pod_uid == b.pod_uid,
        _ => false,
    }
}

/// Best effort: the next sequential claim starts after this address, but a
/// claim that could not record it has still succeeded.
async fn record_last_allocated(client: &Client, pool_name: &str, address: &IpAddr) {
    let patch = serde_json::json!({ "status": { "lastAllocated": address.to_string() } });
    if let Err(error) = Api::<IPPool>::all(client.clone())
        .patch_status(pool_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(pool = pool_name, %address, %error, "could not record status.lastAllocated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(container: Option<&str>, ifname: Option<&str>, uid: Option<&str>) -> AllocationOwner {
        AllocationOwner {
            container_id: container.map(str::to_string),
            interface: ifname.map(str::to_string),
            pod_uid: uid.map(str::to_string),
            ..AllocationOwner::default()
        }
    }

    #[test]
    fn owners_are_containers_or_pods() {
        let c1 = owner(Some("c1"), Some("eth0"), Some("u1"));
        assert!(same_owner(&c1, &owner(Some("c1"), Some("eth0"), None)));
        assert!(!same_owner(
            &c1,
            &owner(Some("c1"), Some("eth1"), Some("u1"))
        ));
        assert!(!same_owner(&c1, &owner(None, None, Some("u1"))));
        assert!(same_owner(
            &owner(None, None, Some("u1")),
            &owner(None, None, Some("u1"))
        ));
        assert!(!same_owner(
            &owner(None, None, None),
            &owner(None, None, None)
        ));
    }

    #[test]
    fn resting_allocations_count_as_taken() {
        let pool: IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "knit.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidrs": ["10.0.0.0/29"], "gateway": "10.0.0.1"},
        }))
        .unwrap();
        let mut held = IPAllocation::of(
            &pool,
            &"10.0.0.2".parse().unwrap(),
            owner(Some("c"), Some("eth0"), None),
            PluginStatus::default(),
        );
        let mut resting = IPAllocation::of(
            &pool,
            &"10.0.0.3".parse().unwrap(),
            owner(Some("d"), Some("eth0"), None),
            PluginStatus::default(),
        );
        resting.spec.released_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        // 8 less network, broadcast, gateway: 5, two of them taken.
        assert_eq!(
            free_addresses(&pool, &[held.clone(), resting.clone()]),
            Ok(3)
        );
        assert!(held_by(&held, "c", "eth0"));
        assert!(!held_by(&resting, "d", "eth0"));
        held.spec.owner.interface = Some("eth1".into());
        assert!(!held_by(&held, "c", "eth0"));
    }
}
