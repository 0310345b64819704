//! The IPAM controller: pods annotated `knit.dev/ippool: <pool>` get an
//! address, recorded as an `IPAllocation` (named after pool and address, so the
//! API server refuses a second holder) and written back as `knit.dev/ip`.
//! Allocations are freed only when their owner's UID no longer exists; with a
//! reuse cooldown they rest, still held, before the address is free again.
//! A finalizer keeps a pool while any of its addresses is in use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::expectations::Expectations;
use super::metrics::IpamMetrics;
use super::plan::{cooled_down, overlapping_pool, plan_pool, pod_addresses};
use super::types::{
    ADDRESS_ANNOTATION, AllocationOwner, IPAllocation, IPPool, POOL_ANNOTATION, POOL_FINALIZER,
    allocation_name,
};
use crate::controller::replay_seed;
use crate::runtime::Registry;
use crate::telemetry::ReconcileMetrics;

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
    metrics: Arc<IpamMetrics>,
    reconciles: Arc<ReconcileMetrics>,
    recorder: Recorder,
    pools: Store<IPPool>,
    pods: Store<PartialObjectMeta<Pod>>,
    allocations: Store<IPAllocation>,
    synced: tokio::sync::OnceCell<()>,
    expectations: Expectations,
}

/// Runs until `shutdown` resolves (then finishes the passes in flight) or
/// the future is dropped.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    metrics: Arc<IpamMetrics>,
    reconciles: Arc<ReconcileMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
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
    let plugin_changes = crate::controller::plugin_changes(registry.subscribe());
    let controller = Controller::new(pools, watcher::Config::default());
    let recorder = crate::controller::recorder(client.clone());
    let context = Arc::new(Context {
        client,
        registry,
        metrics,
        reconciles,
        recorder,
        pools: controller.store(),
        pods,
        allocations,
        synced: tokio::sync::OnceCell::new(),
        expectations: Expectations::default(),
    });
    controller
        .watches_stream(pod_changes, |pod: PartialObjectMeta<Pod>| {
            pod.annotations()
                .get(POOL_ANNOTATION)
                .map(|pool| ObjectRef::new(pool))
        })
        .watches_stream(allocation_changes, |allocation: IPAllocation| {
            Some(ObjectRef::new(&allocation.spec.pool))
        })
        .reconcile_all_on(plugin_changes)
        .graceful_shutdown_on(shutdown)
        .run(
            context.reconciles.measured("IPPool", reconcile),
            error_policy,
            context,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "IPPool reconcile");
            }
        })
        .await;
}

/// One pass over a pool: free what is no longer held, hand out addresses to
/// the pods waiting, write them on the pods, report.
async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let pool_name = pool.name_any();
    let pools: Api<IPPool> = Api::all(ctx.client.clone());
    let deleting = pool.metadata.deletion_timestamp.is_some();
    if !deleting && !pool.finalizers().iter().any(|f| f == POOL_FINALIZER) {
        add_finalizer(&pools, &pool).await?;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let cached: Vec<IPAllocation> = ctx
        .allocations
        .state()
        .iter()
        .filter(|a| a.spec.pool == pool_name)
        .map(|a| (**a).clone())
        .collect();
    let mine = ctx.expectations.allocations(&pool_name, cached);
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

    let (mut mine, next_rest_ends) = ctx.free(&pool, mine, &pods, &now).await?;

    // Hand out addresses to the pods that have none.
    let overlapping = overlapping_pool(&pool, ctx.pools.state().iter().map(|p| &**p));
    let seed = seed_for(&pool, mine.len());
    let started = Instant::now();
    let plan = {
        let mut pool = (*pool).clone();
        let cursor = ctx.expectations.cursor(&pool);
        pool.status.get_or_insert_default().last_allocated = cursor;
        let (mine, pods, overlapping, registry) = (
            mine.clone(),
            pods.clone(),
            overlapping.clone(),
            ctx.registry.clone(),
        );
        let now = now.clone();
        crate::runtime::spawn_call(move || {
            plan_pool(
                &pool,
                &mine,
                &pods,
                overlapping.as_deref(),
                &registry,
                seed,
                now,
            )
        })
        .await?
    };
    let mut requeue_soon = !plan.refused.is_empty();
    for planned in &plan.allocations {
        let allocation = planned.record(&pool);
        match Api::<IPAllocation>::all(ctx.client.clone())
            .create(&Default::default(), &allocation)
            .await
        {
            Ok(created) => {
                ctx.expectations.written(&created);
                ctx.metrics.allocated(&pool_name, started.elapsed());
                tracing::info!(pool = %pool_name, address = %planned.address, pod = %planned.pod_name, "allocated");
                ctx.pod_event(
                    &created.spec.owner,
                    EventType::Normal,
                    "AddressAllocated",
                    format!("{} from IPPool {pool_name}", planned.address),
                )
                .await;
                mine.push(created);
            }
            // Someone else holds this address: our view was stale; replan.
            Err(kube::Error::Api(status)) if status.code == 409 => requeue_soon = true,
            Err(error) => return Err(error.into()),
        }
    }
    for refusal in &plan.refused {
        ctx.metrics.refused(&pool_name, refusal.reason);
        if let Some((namespace, name)) = refusal.pod.split_once('/') {
            let owner = AllocationOwner {
                pod_namespace: Some(namespace.into()),
                pod_name: Some(name.into()),
                ..AllocationOwner::default()
            };
            ctx.pod_event(
                &owner,
                EventType::Warning,
                "NoAddress",
                format!("IPPool {pool_name}: {}", refusal.message),
            )
            .await;
        }
    }

    // Every pod holding an address gets it written (also repairs a lost
    // write); the write is conditional, so racing replicas agree on one.
    let unwritten: Vec<IPAllocation> = pod_addresses(&mine.iter().collect::<Vec<_>>(), &pods)
        .unwritten
        .into_iter()
        .cloned()
        .collect();
    for allocation in &unwritten {
        if !ctx.annotate_pod(allocation).await? {
            requeue_soon = true;
        }
    }

    ctx.metrics.pool_status(&pool_name, &plan.status);
    let status = serde_json::json!({
        "apiVersion": IPPool::api_version(&()),
        "kind": IPPool::kind(&()),
        "status": plan.status,
    });
    let written = pools
        .patch_status(
            &pool_name,
            &PatchParams::apply("knit").force(),
            &Patch::Apply(&status),
        )
        .await?;
    ctx.expectations
        .cursor_written(&written, plan.status.last_allocated.clone());

    if deleting {
        if mine.iter().all(|a| a.is_resting()) {
            for allocation in &mine {
                ctx.delete(allocation, "pool-deleted").await?;
            }
            remove_finalizer(&pools, &pool).await?;
            ctx.metrics.pool_gone(&pool_name);
            ctx.expectations.forget_pool(&pool_name);
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let mut wait = if requeue_soon {
        Duration::from_secs(2)
    } else if overlapping.is_some() {
        // The older pool changing is not an event of this one: look again.
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    };
    if let Some(rest) = next_rest_ends {
        wait = wait.min(rest + Duration::from_millis(100));
    }
    Ok(Action::requeue(wait))
}

fn error_policy(pool: Arc<IPPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(pool = %pool.name_any(), %error, "IPPool reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

impl Context {
    /// Frees, in order: second addresses from racing allocators, addresses
    /// of owners that are gone (or starts their rest), and rests that are
    /// over. Returns what is still held, and when the next rest ends.
    async fn free(
        &self,
        pool: &IPPool,
        mut mine: Vec<IPAllocation>,
        pods: &[Pod],
        now: &Time,
    ) -> Result<(Vec<IPAllocation>, Option<Duration>), Error> {
        let extra: Vec<IPAllocation> = pod_addresses(&mine.iter().collect::<Vec<_>>(), pods)
            .surplus
            .into_iter()
            .cloned()
            .collect();
        for allocation in &extra {
            self.delete(allocation, "duplicate").await?;
        }
        mine.retain(|a| !extra.iter().any(|e| e.name_any() == a.name_any()));
        // A pool going away frees at once: no one will be handed its addresses.
        let cooldown = match pool.spec.reuse_cooldown_seconds {
            Some(seconds) if pool.metadata.deletion_timestamp.is_none() => {
                Duration::from_secs(seconds.into())
            }
            _ => Duration::ZERO,
        };
        let mut held = Vec::with_capacity(mine.len());
        for mut allocation in mine {
            if !allocation.is_resting() && self.owner_is_gone(&allocation.spec.owner).await? {
                if cooldown.is_zero() {
                    self.delete(&allocation, "owner-gone").await?;
                    continue;
                }
                self.rest(&mut allocation, now).await?;
            }
            held.push(allocation);
        }
        let (rested, next_rest_ends) = cooled_down(&held.iter().collect::<Vec<_>>(), cooldown, now);
        let rested: Vec<String> = rested.into_iter().map(|a| a.name_any()).collect();
        for allocation in held.iter().filter(|a| rested.contains(&a.name_any())) {
            self.delete(allocation, "cooled-down").await?;
        }
        held.retain(|a| !rested.contains(&a.name_any()));
        Ok((held, next_rest_ends))
    }

    /// Freeing decisions need complete caches. One waiter at a time: a
    /// store's `wait_until_ready` wakes only the last of several concurrent
    /// waiters (kube-runtime 5's DelayedInit keeps one waker), which left
    /// reconciles of other pools hanging.
    async fn caches_ready(&self) {
        self.synced
            .get_or_init(|| async {
                let _ = self.pods.wait_until_ready().await;
                let _ = self.allocations.wait_until_ready().await;
            })
            .await;
    }

    /// True only when the owner pod's UID no longer exists. The cache says
    /// who might be gone; a live read confirms, so a stale cache never frees
    /// an address a running pod holds (the whereabouts #176 failure mode).
    async fn owner_is_gone(&self, owner: &AllocationOwner) -> Result<bool, Error> {
        let (Some(namespace), Some(name), Some(uid)) =
            (&owner.pod_namespace, &owner.pod_name, &owner.pod_uid)
        else {
            // Container-owned allocations (from the CNI plugin) are freed by it.
            return Ok(false);
        };
        let cached = self.pods.get(&ObjectRef::new(name).within(namespace));
        if cached.is_some_and(|p| p.metadata.uid.as_deref() == Some(uid)) {
            return Ok(false);
        }
        let live = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_metadata_opt(name)
            .await?;
        Ok(live.is_none_or(|p| p.metadata.uid.as_deref() != Some(uid)))
    }

    /// Starts the address's rest: it stays held until the cooldown is over.
    async fn rest(&self, allocation: &mut IPAllocation, now: &Time) -> Result<(), Error> {
        let patch = serde_json::json!({
            "metadata": { "uid": allocation.metadata.uid },
            "spec": { "releasedAt": now },
        });
        match Api::<IPAllocation>::all(self.client.clone())
            .patch(
                &allocation.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(resting) => {
                self.expectations.written(&resting);
                *allocation = resting;
                self.released(allocation, "owner-gone").await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn delete(&self, allocation: &IPAllocation, reason: &str) -> Result<(), Error> {
        // The UID precondition makes sure we delete this allocation, not a
        // new one for the same address created since.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: allocation.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match Api::<IPAllocation>::all(self.client.clone())
            .delete(&allocation.name_any(), &params)
            .await
        {
            Ok(_) => {
                self.expectations.deleted(allocation);
                // A rest that ends was counted as a release when it began.
                if !allocation.is_resting() {
                    self.released(allocation, reason).await;
                }
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.expectations.deleted(allocation);
                Ok(())
            }
            // The UID precondition failed: the address has a new holder.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn released(&self, allocation: &IPAllocation, reason: &str) {
        let pool = &allocation.spec.pool;
        let owner = &allocation.spec.owner;
        self.metrics.released(pool, reason);
        let holder = match (&owner.pod_namespace, &owner.pod_name, &owner.pod_uid) {
            (Some(namespace), Some(name), Some(uid)) => format!("pod {namespace}/{name} ({uid})"),
            _ => format!(
                "container {} {}",
                owner.container_id.as_deref().unwrap_or("?"),
                owner.interface.as_deref().unwrap_or("?")
            ),
        };
        tracing::info!(%pool, address = %allocation.spec.address, %holder, %reason, "released");
        let event = Event {
            type_: EventType::Normal,
            reason: "AddressReleased".into(),
            note: Some(format!(
                "{} released from {holder}: {reason}",
                allocation.spec.address
            )),
            action: "Release".into(),
            secondary: None,
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(IPPool::api_version(&()).into()),
            kind: Some(IPPool::kind(&()).into()),
            name: Some(pool.clone()),
            ..Default::default()
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "cannot publish event");
        }
    }

    async fn pod_event(
        &self,
        owner: &AllocationOwner,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let (Some(namespace), Some(name)) = (&owner.pod_namespace, &owner.pod_name) else {
            return;
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            uid: owner.pod_uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "cannot publish event");
        }
    }

    /// Writes the address on its pod. False when the pod changed since the
    /// cache saw it (try again with a fresh view).
    async fn annotate_pod(&self, allocation: &IPAllocation) -> Result<bool, Error> {
        let owner = &allocation.spec.owner;
        let (Some(namespace), Some(name)) = (&owner.pod_namespace, &owner.pod_name) else {
            return Ok(true);
        };
        let Some(cached) = self.pods.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(true);
        };
        if cached.metadata.uid != owner.pod_uid
            || cached.annotations().get(ADDRESS_ANNOTATION) == Some(&allocation.spec.address)
        {
            return Ok(true);
        }
        // Never overwrite an address another allocator wrote and holds for
        // this pod, even while our cache has not seen its record yet: the
        // first write wins, and ours becomes surplus once the cache catches up.
        let written = cached
            .annotations()
            .get(ADDRESS_ANNOTATION)
            .and_then(|written| written.parse().ok());
        if let Some(written) = written {
            let record = Api::<IPAllocation>::all(self.client.clone())
                .get_opt(&allocation_name(&allocation.spec.pool, &written))
                .await?;
            if record.is_some_and(|r| !r.is_resting() && r.spec.owner.pod_uid == owner.pod_uid) {
                return Ok(false);
            }
        }
        // UID and resourceVersion make the write conditional: the pod we saw,
        // unchanged, so two allocators never flip its address back and forth.
        let patch = serde_json::json!({
            "metadata": {
                "uid": owner.pod_uid,
                "resourceVersion": cached.metadata.resource_version,
                "annotations": { ADDRESS_ANNOTATION: allocation.spec.address },
            }
        });
        match Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            // Gone: the next pass frees the allocation.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 422 => Ok(true),
            Err(error) => Err(error.into()),
        }
    }
}

async fn add_finalizer(pools: &Api<IPPool>, pool: &IPPool) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": pool.resource_version(),
            "finalizers": pool.finalizers().iter().cloned().chain([POOL_FINALIZER.to_string()]).collect::<Vec<_>>(),
        }
    });
    pools
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn remove_finalizer(pools: &Api<IPPool>, pool: &IPPool) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": pool.resource_version(),
            "finalizers": pool.finalizers().iter().filter(|f| *f != POOL_FINALIZER).collect::<Vec<_>>(),
        }
    });
    match pools
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Randomness for strategies that want it: derived from the pool and its
/// state, so a pass can be replayed from what was observed.
fn seed_for(pool: &IPPool, allocated: usize) -> u64 {
    replay_seed(&[
        pool.metadata.uid.as_deref().unwrap_or_default(),
        &allocated.to_string(),
    ])
}
