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
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::expectations::{Allocations, Cursors, FORGET_AFTER};
use super::metrics::IpamMetrics;
use super::plan::{PodRefusal, PoolPlan, cooled_down, overlapping_pool, plan_pool, pod_addresses};
use super::types::{
    ADDRESS_ANNOTATION, AllocationOwner, IPAllocation, IPPool, IPPoolStatus, POOL_ANNOTATION,
    POOL_FINALIZER, allocation_name,
};
use crate::controller::{
    CachesReady, Failed, mark_listed, publish_event, reconcile_finalized, replay_seed,
};
use crate::runtime::Registry;
use crate::telemetry::ReconcileMetrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("waiting for {0} address(es) in use to be released")]
    InUse(usize),
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(5);

    fn waiting(&self) -> Option<Duration> {
        matches!(self, Error::InUse(_)).then_some(Duration::from_secs(10))
    }
}

struct Context {
    client: Client,
    registry: Arc<Registry>,
    metrics: Arc<IpamMetrics>,
    recorder: Recorder,
    pools: Store<IPPool>,
    pods: Store<PartialObjectMeta<Pod>>,
    allocations: Store<IPAllocation>,
    caches: CachesReady,
    expectations: Allocations,
    cursors: Cursors,
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
    let mut caches = CachesReady::default();
    let (pods, pods_writer) = reflector::store();
    let pod_changes = reflector::reflector(
        pods_writer,
        // Metadata only: annotations and UIDs are all IPAM reads from pods.
        watcher(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .inspect(mark_listed(caches.track()))
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
    .inspect(mark_listed(caches.track()))
    .default_backoff()
    .touched_objects();
    // Any plugin change may change a pool's decisions: replan them all.
    let plugin_changes = crate::controller::plugin_changes(registry.subscribe());
    let controller = Controller::new(pools, watcher::Config::default());
    let context = Arc::new(Context {
        recorder: crate::controller::recorder(client.clone()),
        client,
        registry,
        metrics,
        pools: controller.store(),
        pods,
        allocations,
        caches,
        expectations: Allocations::new(FORGET_AFTER),
        cursors: Cursors::default(),
    });
    let controller = controller
        .watches_stream(pod_changes, |pod: PartialObjectMeta<Pod>| {
            pod.annotations()
                .get(POOL_ANNOTATION)
                .map(|pool| ObjectRef::new(pool))
        })
        .watches_stream(allocation_changes, |allocation: IPAllocation| {
            Some(ObjectRef::new(&allocation.spec.pool))
        })
        .reconcile_all_on(plugin_changes);
    crate::controller::run(
        controller,
        "IPPool",
        reconcile,
        context,
        &reconciles,
        shutdown,
    )
    .await;
}

/// A pool holds its finalizer while any of its addresses is in use.
async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Failed<Error>> {
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    reconcile_finalized(&api, POOL_FINALIZER, pool, &*ctx, apply, cleanup).await
}

async fn apply(pool: &IPPool, ctx: &Context) -> Result<Action, Error> {
    let pass = pass(pool, ctx).await?;
    let mut wait = if pass.requeue_soon {
        Duration::from_secs(2)
    } else if pass.overlapping {
        // The older pool changing is not an event of this one: look again.
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    };
    if let Some(rest) = pass.next_rest_ends {
        wait = wait.min(rest + Duration::from_millis(100));
    }
    Ok(Action::requeue(wait))
}

/// A pool being deleted hands out nothing; it goes once every address it
/// holds rests (its pod is gone), taking those with it.
async fn cleanup(pool: &IPPool, ctx: &Context) -> Result<Action, Error> {
    let pass = pass(pool, ctx).await?;
    let in_use = pass.held.iter().filter(|a| !a.is_resting()).count();
    if in_use > 0 {
        return Err(Error::InUse(in_use));
    }
    for allocation in &pass.held {
        ctx.delete(allocation, "pool-deleted").await?;
    }
    let pool_name = pool.name_any();
    ctx.metrics.pool_gone(&pool_name);
    ctx.expectations.forget(&pool_name);
    ctx.cursors.forget(&pool_name);
    Ok(Action::await_change())
}

/// What one pass leaves: the allocations held, and when to look again.
struct Pass {
    held: Vec<IPAllocation>,
    requeue_soon: bool,
    overlapping: bool,
    next_rest_ends: Option<Duration>,
}

/// One pass over a pool: observe; free what is no longer held; plan
/// addresses for the pods waiting (`plan_pool`); act: create them, write
/// them on the pods, report.
async fn pass(pool: &IPPool, ctx: &Context) -> Result<Pass, Error> {
    ctx.caches.wait().await;
    let pool_name = pool.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (mine, pods) = ctx.observe(&pool_name);
    let (mine, next_rest_ends) = ctx.free(pool, mine, &pods, &now).await?;

    let overlapping = overlapping_pool(pool, ctx.pools.state().iter().map(|p| &**p));
    let seed = seed_for(pool, mine.len());
    let started = Instant::now();
    let plan = {
        let mut pool = pool.clone();
        pool.status.get_or_insert_default().last_allocated = ctx.cursors.cursor(&pool);
        let (mine, pods, overlapping, registry) = (
            mine.clone(),
            pods.clone(),
            overlapping.clone(),
            ctx.registry.clone(),
        );
        let now = now.clone();
        crate::runtime::spawn_call(move || {
            let overlapping = overlapping.as_deref();
            plan_pool(&pool, &mine, &pods, overlapping, &registry, seed, now)
        })
        .await?
    };
    let (held, lost_race) = ctx.hand_out(pool, &plan, mine, started).await?;
    ctx.tell_refusals(&pool_name, &plan.refused).await;
    // Every pod holding an address gets it written (also repairs a lost
    // write); the write is conditional, so racing replicas agree on one.
    let mut unwritten_left = false;
    for allocation in pod_addresses(&held.iter().collect::<Vec<_>>(), &pods).unwritten {
        unwritten_left |= !ctx.annotate_pod(allocation).await?;
    }
    ctx.write_status(pool, &plan.status).await?;
    Ok(Pass {
        held,
        requeue_soon: !plan.refused.is_empty() || lost_race || unwritten_left,
        overlapping: overlapping.is_some(),
        next_rest_ends,
    })
}

impl Context {
    /// The pool's allocations (the cache's, corrected by this controller's
    /// writes it does not show yet) and the pods that ask for it.
    fn observe(&self, pool_name: &str) -> (Vec<IPAllocation>, Vec<Pod>) {
        let cached: Vec<IPAllocation> = self
            .allocations
            .state()
            .iter()
            .filter(|a| a.spec.pool == pool_name)
            .map(|a| (**a).clone())
            .collect();
        let mine = self.expectations.overlay(&pool_name.to_owned(), cached);
        let pods = self
            .pods
            .state()
            .iter()
            .filter(|p| p.annotations().get(POOL_ANNOTATION).map(String::as_str) == Some(pool_name))
            .map(|p| Pod {
                metadata: p.metadata.clone(),
                ..Pod::default()
            })
            .collect();
        (mine, pods)
    }

    /// Creates the planned allocations; returns what the pool holds now,
    /// and whether one lost a race (someone else holds its address: our
    /// view was stale, so replan soon).
    async fn hand_out(
        &self,
        pool: &IPPool,
        plan: &PoolPlan,
        mut held: Vec<IPAllocation>,
        started: Instant,
    ) -> Result<(Vec<IPAllocation>, bool), Error> {
        let pool_name = pool.name_any();
        let mut lost_race = false;
        for planned in &plan.allocations {
            let allocation = planned.record(pool);
            match Api::<IPAllocation>::all(self.client.clone())
                .create(&Default::default(), &allocation)
                .await
            {
                Ok(created) => {
                    self.expectations.written(pool_name.clone(), &created, None);
                    self.metrics.allocated(&pool_name, started.elapsed());
                    tracing::info!(pool = %pool_name, address = %planned.address, pod = %planned.pod_name, "allocated");
                    let note = format!("{} from IPPool {pool_name}", planned.address);
                    let owner = &created.spec.owner;
                    self.pod_event(owner, EventType::Normal, "AddressAllocated", note)
                        .await;
                    held.push(created);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => lost_race = true,
                Err(error) => return Err(error.into()),
            }
        }
        Ok((held, lost_race))
    }

    /// Counts each refused pod, and tells it why.
    async fn tell_refusals(&self, pool_name: &str, refused: &[PodRefusal]) {
        for refused in refused {
            self.metrics.refused(pool_name, refused.refusal.reason);
            if let Some((namespace, name)) = refused.pod.split_once('/') {
                let owner = AllocationOwner {
                    pod_namespace: Some(namespace.into()),
                    pod_name: Some(name.into()),
                    ..AllocationOwner::default()
                };
                let note = format!("IPPool {pool_name}: {}", refused.refusal.message);
                self.pod_event(&owner, EventType::Warning, "NoAddress", note)
                    .await;
            }
        }
    }

    /// The pool's status, by server-side apply; remembers the cursor
    /// written until the cache shows it.
    async fn write_status(&self, pool: &IPPool, status: &IPPoolStatus) -> Result<(), Error> {
        let pool_name = pool.name_any();
        self.metrics.pool_status(&pool_name, status);
        let cursor = status.last_allocated.clone();
        let status = serde_json::json!({
            "apiVersion": IPPool::api_version(&()),
            "kind": IPPool::kind(&()),
            "status": status,
        });
        let written = Api::<IPPool>::all(self.client.clone())
            .patch_status(
                &pool_name,
                &PatchParams::apply("knit").force(),
                &Patch::Apply(&status),
            )
            .await?;
        self.cursors.written(&written, cursor);
        Ok(())
    }

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
                let pool = resting.spec.pool.clone();
                self.expectations.written(pool, &resting, Some(allocation));
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
                self.expectations
                    .deleted(allocation.spec.pool.clone(), allocation);
                // A rest that ends was counted as a release when it began.
                if !allocation.is_resting() {
                    self.released(allocation, reason).await;
                }
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                self.expectations
                    .deleted(allocation.spec.pool.clone(), allocation);
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
        let note = format!(
            "{} released from {holder}: {reason}",
            allocation.spec.address
        );
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(IPPool::api_version(&()).into()),
            kind: Some(IPPool::kind(&()).into()),
            name: Some(pool.clone()),
            ..Default::default()
        };
        let normal = EventType::Normal;
        publish_event(
            &self.recorder,
            &reference,
            normal,
            "AddressReleased",
            &note,
            "Release",
        )
        .await;
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
        publish_event(&self.recorder, &reference, type_, reason, &note, "Allocate").await;
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

/// Randomness for strategies that want it: derived from the pool and its
/// state, so a pass can be replayed from what was observed.
fn seed_for(pool: &IPPool, allocated: usize) -> u64 {
    replay_seed(&[
        pool.metadata.uid.as_deref().unwrap_or_default(),
        &allocated.to_string(),
    ])
}
