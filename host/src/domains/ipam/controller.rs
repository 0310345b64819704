//! The IPAM controller: pods annotated `knit.dev/ippool: <pool>` get an
//! address, recorded as an `IPAllocation` (named after pool and address, so the
//! API server refuses a second holder) and written back as `knit.dev/ip`.
//! Allocations are freed only when their owner's UID no longer exists.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::plan::plan_pool;
use super::types::{ADDRESS_ANNOTATION, AllocationOwner, IPAllocation, IPPool, POOL_ANNOTATION};
use crate::runtime::Registry;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

struct Context {
    client: Client,
    registry: Arc<Registry>,
    pods: Store<PartialObjectMeta<Pod>>,
    allocations: Store<IPAllocation>,
}

/// Runs until the future is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let pools: Api<IPPool> = Api::all(client.clone());
    let (pods, pods_writer) = reflector::store();
    let pod_changes = reflector::reflector(
        pods_writer,
        // Metadata only: annotations and UIDs are all IPAM reads from pods.
        watcher(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (allocations, allocations_writer) = reflector::store();
    let allocation_changes = reflector::reflector(
        allocations_writer,
        watcher(
            Api::<IPAllocation>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    // Any plugin change may change a pool's decisions: replan them all.
    let plugin_changes = plugin_changes(registry.subscribe());
    let context = Arc::new(Context {
        client,
        registry,
        pods,
        allocations,
    });
    Controller::new(pools, watcher::Config::default())
        .watches_stream(pod_changes, |pod: PartialObjectMeta<Pod>| {
            pod.annotations()
                .get(POOL_ANNOTATION)
                .map(|pool| ObjectRef::new(pool))
        })
        .watches_stream(allocation_changes, |allocation: IPAllocation| {
            Some(ObjectRef::new(&allocation.spec.pool))
        })
        .reconcile_all_on(plugin_changes)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "IPPool reconcile");
            }
        })
        .await;
}

/// Plugin changes as a stream of "replan everything"; a lagging receiver
/// missed some, which means the same.
fn plugin_changes(
    receiver: tokio::sync::broadcast::Receiver<crate::runtime::PluginEvent>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            _ => Some(((), receiver)),
        }
    })
}

async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Freeing decisions need complete caches.
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.allocations.wait_until_ready().await;
    let pool_name = pool.name_any();
    let allocations_api: Api<IPAllocation> = Api::all(ctx.client.clone());

    // Free what belongs to pods that are gone: only by UID, checked live.
    let mine: Vec<Arc<IPAllocation>> = ctx
        .allocations
        .state()
        .into_iter()
        .filter(|a| a.spec.pool == pool_name)
        .collect();
    let mut kept: Vec<IPAllocation> = Vec::with_capacity(mine.len());
    for allocation in mine {
        if owner_is_gone(&ctx, &allocation.spec.owner).await? {
            release(&allocations_api, &allocation).await?;
        } else {
            kept.push((*allocation).clone());
        }
    }

    // Plan addresses for the pods that have none.
    let pods: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.annotations().get(POOL_ANNOTATION) == Some(&pool_name))
        .map(|p| Pod {
            metadata: p.metadata.clone(),
            ..Pod::default()
        })
        .collect();
    let seed = seed_for(&pool, kept.len());
    let plan = {
        let (pool, kept, pods, registry) = (
            pool.clone(),
            kept.clone(),
            pods.clone(),
            ctx.registry.clone(),
        );
        tokio::task::spawn_blocking(move || {
            plan_pool(
                &pool,
                &kept,
                &pods,
                &registry,
                seed,
                Time(k8s_openapi::jiff::Timestamp::now()),
            )
        })
        .await?
    };
    let mut requeue_soon = !plan.refused.is_empty();
    for planned in &plan.allocations {
        let allocation = IPAllocation::of(
            &pool,
            &planned.address,
            AllocationOwner {
                pod_namespace: Some(planned.pod_namespace.clone()),
                pod_name: Some(planned.pod_name.clone()),
                pod_uid: Some(planned.pod_uid.clone()),
                ..AllocationOwner::default()
            },
        );
        match allocations_api
            .create(&PostParams::default(), &allocation)
            .await
        {
            Ok(created) => {
                tracing::info!(pool = %pool_name, address = %planned.address, pod = %planned.pod_name, "allocated");
                kept.push(created);
            }
            // Someone else holds this address: our view was stale; replan.
            Err(kube::Error::Api(status)) if status.code == 409 => requeue_soon = true,
            Err(error) => return Err(error.into()),
        }
    }

    // Every held address is written on its pod (also repairs a lost write).
    for allocation in &kept {
        annotate_pod(&ctx, allocation).await?;
    }

    let status = serde_json::json!({
        "apiVersion": IPPool::api_version(&()),
        "kind": IPPool::kind(&()),
        "status": plan.status,
    });
    Api::<IPPool>::all(ctx.client.clone())
        .patch_status(
            &pool_name,
            &PatchParams::apply("knit").force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(if requeue_soon {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

fn error_policy(pool: Arc<IPPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "IPPool reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// True only when the owner pod's UID no longer exists. The cache says who
/// might be gone; a live read confirms, so a stale cache never frees an
/// address a running pod holds (the whereabouts #176 failure mode).
async fn owner_is_gone(ctx: &Context, owner: &AllocationOwner) -> Result<bool, Error> {
    let (Some(namespace), Some(name), Some(uid)) =
        (&owner.pod_namespace, &owner.pod_name, &owner.pod_uid)
    else {
        // Container-owned allocations (from the CNI plugin) are freed by it.
        return Ok(false);
    };
    let cached = ctx.pods.get(&ObjectRef::new(name).within(namespace));
    if cached.is_some_and(|p| p.metadata.uid.as_deref() == Some(uid)) {
        return Ok(false);
    }
    let live = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .get_metadata_opt(name)
        .await?;
    Ok(live.is_none_or(|p| p.metadata.uid.as_deref() != Some(uid)))
}

async fn release(api: &Api<IPAllocation>, allocation: &IPAllocation) -> Result<(), Error> {
    // The UID precondition makes sure we delete this allocation, not a new one
    // for the same address created since.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: allocation.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&allocation.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(pool = %allocation.spec.pool, address = %allocation.spec.address, "released");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn annotate_pod(ctx: &Context, allocation: &IPAllocation) -> Result<(), Error> {
    let owner = &allocation.spec.owner;
    let (Some(namespace), Some(name)) = (&owner.pod_namespace, &owner.pod_name) else {
        return Ok(());
    };
    let cached = ctx.pods.get(&ObjectRef::new(name).within(namespace));
    if cached
        .is_some_and(|p| p.annotations().get(ADDRESS_ANNOTATION) == Some(&allocation.spec.address))
    {
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {
            "uid": owner.pod_uid,
            "annotations": { ADDRESS_ANNOTATION: allocation.spec.address },
        }
    });
    match Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or replaced by a pod of the same name (the UID in the patch
        // does not match): the next pass frees the allocation.
        Err(kube::Error::Api(status))
            if status.code == 404 || status.code == 409 || status.code == 422 =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Randomness for strategies that want it: derived from the pool and its
/// state, so a pass can be replayed from what was observed.
fn seed_for(pool: &IPPool, allocated: usize) -> u64 {
    let uid = pool.metadata.uid.as_deref().unwrap_or_default();
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x1000_0000_01b3)
    }) ^ allocated as u64
}
