//! One queue per CLB. A CLB refuses a write while one of its tasks runs
//! (`ResourceInOperating`), so writes to one LB go through one worker, one
//! at a time; and because each write costs a task of a second or so, the
//! worker takes everything queued while the last task ran as one round and
//! batches it: one `CreateListener` per protocol for up to 20 ports, one
//! `BatchRegisterTargets` for up to 500 targets, one delete for up to 20
//! listeners. Different LBs proceed in parallel.
//!
//! Requests are declarative ("this listener, with this backend"), checked
//! against a fresh read of the LB at the start of each round, so a listener
//! or target changed outside knit is put back, a listener created just
//! before a restart is adopted by its name instead of created twice, and a
//! port held by something else is reported, not fought over. What a round
//! changes is decided purely in `clb_diff`; this file does the calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::clb_diff::{self, Existing, Placement, Snapshot, TargetChanges};
pub use super::clb_diff::{Desired, ListenerKey};
use super::cloud::{CloudError, TencentCloud};
use crate::providers::tencent::{
    self, ClbClient, ListenerFilter, ListenerSettings, ListenerTargets, Protocol, Target,
};

/// A listener in place, with its backend registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    pub listener_id: String,
    /// The LB's first VIP, for the `IP:port` address.
    pub vip: Option<String>,
}

/// What a round read of an LB, for the service controller's planning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbView {
    pub found: bool,
    pub vips: Vec<String>,
    /// Every listener on the LB, knit's or not.
    pub listeners: Vec<ClbListener>,
    /// The LB refused a listener for its quota at this many listeners.
    pub quota_reached_at: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClbListener {
    pub id: String,
    pub protocol: Protocol,
    pub port: u16,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("CLB {lb} does not exist in region {region}")]
    LbNotFound { lb: String, region: String },
    #[error(
        "{protocol:?} port {port} on {lb} is held by listener {by}, which this object does not own"
    )]
    PortTaken {
        lb: String,
        protocol: Protocol,
        port: u16,
        by: String,
    },
    #[error("{lb} refused a new listener: its listener quota is reached")]
    QuotaReached { lb: String },
    #[error("{message}")]
    Cloud { message: String, retryable: bool },
    #[error(transparent)]
    Setup(#[from] CloudError),
}

impl QueueError {
    /// A short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            QueueError::LbNotFound { .. } => "LoadBalancerNotFound",
            QueueError::PortTaken { .. } => "PortConflict",
            QueueError::QuotaReached { .. } => "QuotaExceeded",
            QueueError::Cloud { .. } => "CloudError",
            QueueError::Setup(CloudError::NoRegion) => "NoRegion",
            QueueError::Setup(CloudError::Credentials(_)) => "CredentialsError",
        }
    }

    pub fn cloud(error: tencent::Error) -> QueueError {
        QueueError::Cloud {
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}

/// The last read of an LB and when it was made, shared by its worker and
/// the planners.
type SharedView = Arc<Mutex<Option<(Arc<LbView>, Instant)>>>;

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

enum Op {
    Ensure(Desired, Reply<Ensured>),
    Delete(ListenerKey, Reply<()>),
    Refresh(Reply<Arc<LbView>>),
}

/// The queues of every CLB knit has touched, by `(region, LB ID)`.
pub struct LbQueues {
    cloud: Arc<TencentCloud>,
    queues: Mutex<HashMap<(String, String), Queue>>,
}

#[derive(Clone)]
struct Queue {
    ops: mpsc::UnboundedSender<Op>,
    view: SharedView,
}

impl LbQueues {
    pub fn new(cloud: Arc<TencentCloud>) -> Self {
        LbQueues {
            cloud,
            queues: Mutex::new(HashMap::new()),
        }
    }

    pub fn cloud(&self) -> &Arc<TencentCloud> {
        &self.cloud
    }

    /// Puts the listener in place with its backend, and answers once the
    /// CLB's tasks for it succeeded.
    pub async fn ensure(
        &self,
        region: &str,
        lb: &str,
        desired: Desired,
    ) -> Result<Ensured, QueueError> {
        ask(&self.queue(region, lb), |reply| Op::Ensure(desired, reply)).await
    }

    /// Deletes the listener if it exists (a missing LB or listener is
    /// success).
    pub async fn delete(
        &self,
        region: &str,
        lb: &str,
        listener: ListenerKey,
    ) -> Result<(), QueueError> {
        ask(&self.queue(region, lb), |reply| Op::Delete(listener, reply)).await
    }

    /// The LB as last read, if that is at most `max_age` old; otherwise a
    /// fresh read, in turn with the LB's writes.
    pub async fn view(
        &self,
        region: &str,
        lb: &str,
        max_age: Duration,
    ) -> Result<Arc<LbView>, QueueError> {
        let queue = self.queue(region, lb);
        if let Some((view, read)) = queue.view.lock().expect("view lock").clone()
            && read.elapsed() <= max_age
        {
            return Ok(view);
        }
        ask(&queue, Op::Refresh).await
    }

    fn queue(&self, region: &str, lb: &str) -> Queue {
        let mut queues = self.queues.lock().expect("queues lock");
        queues
            .entry((region.to_owned(), lb.to_owned()))
            .or_insert_with(|| {
                let (ops, receiver) = mpsc::unbounded_channel();
                let view = SharedView::default();
                let worker = Worker {
                    cloud: self.cloud.clone(),
                    region: region.to_owned(),
                    lb: lb.to_owned(),
                    vips: None,
                    quota_reached_at: None,
                    view: view.clone(),
                };
                tokio::spawn(worker.run(receiver));
                Queue { ops, view }
            })
            .clone()
    }
}

/// Hands an op to an LB's worker and waits for its answer. The worker only
/// stops with the runtime; if it is gone, the answer is a retryable error.
async fn ask<T>(queue: &Queue, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, QueueError> {
    let (reply, answer) = oneshot::channel();
    let _ = queue.ops.send(op(reply));
    answer.await.unwrap_or_else(|_| {
        Err(QueueError::Cloud {
            message: "the CLB queue stopped".into(),
            retryable: true,
        })
    })
}

/// The API's limits per call.
const PORTS_PER_CREATE: usize = 20;
const LISTENERS_PER_DELETE: usize = 20;
const TARGETS_PER_BATCH: usize = 500;

struct Worker {
    cloud: Arc<TencentCloud>,
    region: String,
    lb: String,
    /// Read once; an LB's VIPs do not change while it exists.
    vips: Option<Vec<String>>,
    quota_reached_at: Option<u32>,
    view: SharedView,
}

impl Worker {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        while let Some(first) = ops.recv().await {
            let mut round = vec![first];
            while let Ok(op) = ops.try_recv() {
                round.push(op);
            }
            self.round(round).await;
        }
    }

    async fn round(&mut self, ops: Vec<Op>) {
        let mut ensures = Vec::new();
        let mut deletes = Vec::new();
        let mut refreshes = Vec::new();
        for op in ops {
            match op {
                Op::Ensure(desired, reply) => ensures.push((desired, reply)),
                Op::Delete(key, reply) => deletes.push((key, reply)),
                Op::Refresh(reply) => refreshes.push(reply),
            }
        }
        tracing::debug!(
            lb = %self.lb,
            ensures = ensures.len(),
            deletes = deletes.len(),
            refreshes = refreshes.len(),
            "CLB round"
        );
        let client = match self.cloud.client(&self.region).await {
            Ok(client) => client,
            Err(error) => {
                let error = QueueError::from(error);
                tracing::warn!(lb = %self.lb, %error, "no CLB client");
                reply_all(ensures, deletes, refreshes, &error);
                return;
            }
        };
        let mut snapshot = match self.read(&client, !ensures.is_empty()).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(lb = %self.lb, %error, "reading the CLB");
                reply_all(ensures, deletes, refreshes, &error);
                return;
            }
        };
        if !snapshot.found {
            let error = QueueError::LbNotFound {
                lb: self.lb.clone(),
                region: self.region.clone(),
            };
            for (_, reply) in deletes {
                let _ = reply.send(Ok(()));
            }
            let view = self.publish(&snapshot);
            for reply in refreshes {
                let _ = reply.send(Ok(view.clone()));
            }
            fail(ensures, &error);
            return;
        }

        // Deletes first: a port freed here may be taken again below.
        self.delete(&client, &mut snapshot, deletes).await;
        let placed = self.create(&client, &mut snapshot, ensures).await;
        let failed = self.put_settings(&client, &mut snapshot, &placed).await;
        self.set_targets(&client, &mut snapshot, placed, failed)
            .await;
        let view = self.publish(&snapshot);
        for reply in refreshes {
            let _ = reply.send(Ok(view.clone()));
        }
    }

    /// Reads the LB: its VIPs (once), its listeners, and, when some request
    /// needs them, their targets.
    async fn read(
        &mut self,
        client: &ClbClient,
        with_targets: bool,
    ) -> Result<Snapshot, QueueError> {
        let missing = Snapshot {
            found: false,
            listeners: BTreeMap::new(),
        };
        if self.vips.is_none() {
            let found = client
                .describe_load_balancers(std::slice::from_ref(&self.lb))
                .await
                .map_err(QueueError::cloud)?;
            match found.into_iter().find(|lb| lb.load_balancer_id == self.lb) {
                Some(lb) => self.vips = Some(lb.load_balancer_vips),
                None => return Ok(missing),
            }
        }
        let all = ListenerFilter::default();
        let listeners = match client.describe_listeners(&self.lb, &all).await {
            Ok(listeners) => listeners,
            Err(error) if error.is_not_found() => {
                self.vips = None;
                return Ok(missing);
            }
            Err(error) => return Err(QueueError::cloud(error)),
        };
        let mut targets: HashMap<String, Vec<Target>> = HashMap::new();
        if with_targets {
            match client.describe_targets(&self.lb, &all).await {
                Ok(found) => {
                    for ListenerTargets {
                        listener_id,
                        targets: backends,
                        ..
                    } in found
                    {
                        let registered = backends
                            .into_iter()
                            .filter_map(|b| {
                                match (b.kind.as_str(), b.private_ip_addresses.first()) {
                                    ("CVM", _) if !b.instance_id.is_empty() => {
                                        Some(Target::instance(b.instance_id, b.port))
                                    }
                                    (_, Some(ip)) => Some(Target::ip(ip.clone(), b.port)),
                                    _ => None,
                                }
                            })
                            .collect();
                        targets.insert(listener_id, registered);
                    }
                }
                Err(error) if error.is_not_found() => {
                    self.vips = None;
                    return Ok(missing);
                }
                Err(error) => return Err(QueueError::cloud(error)),
            }
        }
        Ok(Snapshot {
            found: true,
            listeners: listeners
                .into_iter()
                .map(|l| {
                    let existing = Existing {
                        protocol: l.protocol,
                        port: l.port,
                        name: l.listener_name,
                        targets: targets.remove(&l.listener_id).unwrap_or_default(),
                        settings: l.settings,
                    };
                    (l.listener_id, existing)
                })
                .collect(),
        })
    }

    async fn delete(
        &mut self,
        client: &ClbClient,
        snapshot: &mut Snapshot,
        deletes: Vec<(ListenerKey, Reply<()>)>,
    ) {
        let (mut doomed, nothing) = clb_diff::doomed(snapshot, deletes);
        for reply in nothing {
            let _ = reply.send(Ok(()));
        }
        while !doomed.is_empty() {
            let chunk: Vec<_> = doomed
                .drain(..doomed.len().min(LISTENERS_PER_DELETE))
                .collect();
            let mut ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            ids.dedup();
            let result = match client.delete_listeners(&self.lb, &ids).await {
                Ok(Some(task)) => client.wait_task(&task).await.map_err(QueueError::cloud),
                Ok(None) => Ok(()),
                Err(error) if error.is_not_found() => Ok(()),
                Err(error) => Err(QueueError::cloud(error)),
            };
            if result.is_ok() {
                // Room again, up to what the CLB says next time.
                self.quota_reached_at = None;
                for id in &ids {
                    snapshot.listeners.remove(id);
                }
            }
            for (_, reply) in chunk {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Finds or creates each desired listener; answers those that failed,
    /// and hands back the rest with their listener IDs.
    async fn create(
        &mut self,
        client: &ClbClient,
        snapshot: &mut Snapshot,
        ensures: Vec<(Desired, Reply<Ensured>)>,
    ) -> Vec<(Desired, String, Reply<Ensured>)> {
        let Placement {
            mut placed,
            to_create,
            taken,
        } = clb_diff::place(snapshot, ensures);
        for (desired, by, reply) in taken {
            let _ = reply.send(Err(self.port_taken(&desired, by)));
        }
        for ((protocol, settings), mut waiting) in to_create {
            let kind = (protocol, &*settings);
            while !waiting.is_empty() {
                let chunk: Vec<_> = waiting
                    .drain(..waiting.len().min(PORTS_PER_CREATE))
                    .collect();
                let Err((error, chunk)) = self
                    .create_recorded(client, snapshot, kind, chunk, &mut placed)
                    .await
                else {
                    continue;
                };
                if chunk.len() == 1 {
                    fail(chunk, &error);
                    continue;
                }
                // One bad port fails a whole call: try them one by one, so
                // each gets its own answer.
                for one in chunk {
                    if let Err((error, one)) = self
                        .create_recorded(client, snapshot, kind, vec![one], &mut placed)
                        .await
                    {
                        fail(one, &error);
                    }
                }
            }
        }
        placed
    }

    /// Creates a chunk's listeners (of one protocol, with one set of
    /// settings) in one call and records them in the snapshot and in
    /// `placed`; on failure, hands the chunk back.
    async fn create_recorded(
        &mut self,
        client: &ClbClient,
        snapshot: &mut Snapshot,
        (protocol, settings): (Protocol, &ListenerSettings),
        chunk: Vec<(Desired, Reply<Ensured>)>,
        placed: &mut Vec<(Desired, String, Reply<Ensured>)>,
    ) -> Result<(), (QueueError, Vec<(Desired, Reply<Ensured>)>)> {
        let result = self.create_chunk(client, protocol, settings, &chunk).await;
        self.note_quota(&result, snapshot);
        let ids = match result {
            Ok(ids) => ids,
            Err(error) => return Err((error, chunk)),
        };
        for ((desired, reply), id) in chunk.into_iter().zip(ids) {
            let existing = Existing {
                protocol,
                port: desired.listener.port,
                name: desired.listener.name.clone(),
                targets: Vec::new(),
                settings: settings.clone(),
            };
            snapshot.listeners.insert(id.clone(), existing);
            placed.push((desired, id, reply));
        }
        Ok(())
    }

    /// One `CreateListener` and its task; the new IDs in port order.
    async fn create_chunk(
        &mut self,
        client: &ClbClient,
        protocol: Protocol,
        settings: &ListenerSettings,
        chunk: &[(Desired, Reply<Ensured>)],
    ) -> Result<Vec<String>, QueueError> {
        let ports: Vec<u16> = chunk.iter().map(|(d, _)| d.listener.port).collect();
        let names: Vec<String> = chunk.iter().map(|(d, _)| d.listener.name.clone()).collect();
        let created = match client
            .create_listeners(&self.lb, protocol, &ports, &names, settings)
            .await
        {
            Ok(created) => created,
            Err(error) if error.code() == Some("LimitExceeded") => {
                return Err(QueueError::QuotaReached {
                    lb: self.lb.clone(),
                });
            }
            Err(error) if error.is_not_found() => {
                self.vips = None;
                return Err(QueueError::LbNotFound {
                    lb: self.lb.clone(),
                    region: self.region.clone(),
                });
            }
            // The port was free in this round's read: a listener created
            // since (a task that was still running, say) holds it. The
            // next round's read says whose it is.
            Err(error) if error.code() == Some("InvalidParameter.PortCheckFailed") => {
                return Err(QueueError::Cloud {
                    message: error.to_string(),
                    retryable: true,
                });
            }
            Err(error) => return Err(QueueError::cloud(error)),
        };
        client
            .wait_task(&created.task)
            .await
            .map_err(QueueError::cloud)?;
        if created.listener_ids.len() != ports.len() {
            return Err(QueueError::Cloud {
                message: format!(
                    "CreateListener answered {} listener IDs for {} ports",
                    created.listener_ids.len(),
                    ports.len()
                ),
                retryable: true,
            });
        }
        Ok(created.listener_ids)
    }

    /// Puts back the settings of placed listeners whose settings on the CLB
    /// differ from their configuration's, one `ModifyListener` each; the
    /// listeners it failed for, with why.
    async fn put_settings(
        &mut self,
        client: &ClbClient,
        snapshot: &mut Snapshot,
        placed: &[(Desired, String, Reply<Ensured>)],
    ) -> HashMap<String, QueueError> {
        let mut failed = HashMap::new();
        let changes =
            clb_diff::settings_to_put(snapshot, placed.iter().map(|(d, id, _)| (d, id.as_str())));
        for (id, settings) in changes {
            let result = match client.modify_listener(&self.lb, &id, &settings).await {
                Ok(task) => client.wait_task(&task).await.map_err(QueueError::cloud),
                Err(error) => Err(QueueError::cloud(error)),
            };
            match result {
                Ok(()) => {
                    if let Some(listener) = snapshot.listeners.get_mut(&id) {
                        listener.settings = settings;
                    }
                }
                Err(error) => {
                    failed.insert(id, error);
                }
            }
        }
        failed
    }

    /// Deregisters what should not be there, registers what should, and
    /// answers every request (an error for those in `failed`).
    async fn set_targets(
        &mut self,
        client: &ClbClient,
        snapshot: &mut Snapshot,
        placed: Vec<(Desired, String, Reply<Ensured>)>,
        mut failed: HashMap<String, QueueError>,
    ) {
        let TargetChanges {
            deregister,
            register,
        } = clb_diff::target_changes(snapshot, placed.iter().map(|(d, id, _)| (d, id.as_str())));
        for (targets, registering) in [(deregister, false), (register, true)] {
            for chunk in targets.chunks(TARGETS_PER_BATCH) {
                let outcome = if registering {
                    client.batch_register_targets(&self.lb, chunk).await
                } else {
                    client.batch_deregister_targets(&self.lb, chunk).await
                };
                let result = match outcome {
                    Ok(outcome) => {
                        for id in &outcome.failed_listener_ids {
                            failed.insert(
                                id.clone(),
                                QueueError::Cloud {
                                    message: format!(
                                        "the CLB refused to change the targets of listener {id}"
                                    ),
                                    retryable: true,
                                },
                            );
                        }
                        client
                            .wait_task(&outcome.task)
                            .await
                            .map_err(QueueError::cloud)
                    }
                    Err(error) => Err(QueueError::cloud(error)),
                };
                for target in chunk {
                    match &result {
                        Err(error) => {
                            failed
                                .entry(target.listener_id.clone())
                                .or_insert_with(|| error.clone());
                        }
                        Ok(()) if !failed.contains_key(&target.listener_id) => {
                            if let Some(listener) = snapshot.listeners.get_mut(&target.listener_id)
                            {
                                if registering {
                                    listener.targets.push(target.target.clone());
                                } else {
                                    listener.targets.retain(|t| t != &target.target);
                                }
                            }
                        }
                        Ok(()) => {}
                    }
                }
            }
        }
        let vip = self.vips.as_ref().and_then(|vips| vips.first().cloned());
        for (_, id, reply) in placed {
            let answer = match failed.remove(&id) {
                Some(error) => Err(error),
                None => Ok(Ensured {
                    listener_id: id,
                    vip: vip.clone(),
                }),
            };
            let _ = reply.send(answer);
        }
    }

    /// A CLB that refused a listener for its quota is full at what it
    /// holds, whatever the configured quota says.
    fn note_quota<T>(&mut self, result: &Result<T, QueueError>, snapshot: &Snapshot) {
        if let Err(QueueError::QuotaReached { .. }) = result {
            self.quota_reached_at = Some(snapshot.listeners.len() as u32);
        }
    }

    fn port_taken(&self, desired: &Desired, by: String) -> QueueError {
        QueueError::PortTaken {
            lb: self.lb.clone(),
            protocol: desired.listener.protocol,
            port: desired.listener.port,
            by,
        }
    }

    fn publish(&mut self, snapshot: &Snapshot) -> Arc<LbView> {
        if !snapshot.found {
            self.quota_reached_at = None;
        }
        let view = Arc::new(LbView {
            found: snapshot.found,
            vips: self.vips.clone().unwrap_or_default(),
            listeners: snapshot
                .listeners
                .iter()
                .map(|(id, l)| ClbListener {
                    id: id.clone(),
                    protocol: l.protocol,
                    port: l.port,
                    name: l.name.clone(),
                })
                .collect(),
            quota_reached_at: self.quota_reached_at,
        });
        *self.view.lock().expect("view lock") = Some((view.clone(), Instant::now()));
        view
    }
}

/// Answers every request of a chunk with the same error.
fn fail(chunk: Vec<(Desired, Reply<Ensured>)>, error: &QueueError) {
    for (_, reply) in chunk {
        let _ = reply.send(Err(error.clone()));
    }
}

fn reply_all(
    ensures: Vec<(Desired, Reply<Ensured>)>,
    deletes: Vec<(ListenerKey, Reply<()>)>,
    refreshes: Vec<Reply<Arc<LbView>>>,
    error: &QueueError,
) {
    fail(ensures, error);
    for (_, reply) in deletes {
        let _ = reply.send(Err(error.clone()));
    }
    for reply in refreshes {
        let _ = reply.send(Err(error.clone()));
    }
}
