//! The listener controller: each `DedicatedCLBListener` becomes a listener
//! on its CLB with its pod registered as the one target (`Bound`), or with
//! none (`Available`); a deleted object's listener is deleted first, through
//! a finalizer. The CLB work goes through the LB's queue (`lb_queue`), which
//! serializes and batches it; this controller only says what should be,
//! including the settings of the `CLBListenerConfig` it names.

use std::sync::Arc;
use std::time::Duration;

use crate::controller::{Failed, reconcile_finalized};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::lb_queue::{Desired, LbQueues, ListenerKey, QueueError};
use super::plan::{LISTENER_FINALIZER, clb_listener_name, pod_ip};
use super::types::{
    CLBListenerConfig, DedicatedCLBListener, DedicatedCLBListenerStatus, ListenerState, Protocol,
};
use crate::providers::tencent;

pub struct Context {
    pub client: Client,
    pub queues: Arc<LbQueues>,
    pub pods: Store<Pod>,
    pub configs: Store<CLBListenerConfig>,
    pub recorder: Recorder,
    pub caches: crate::controller::CachesReady,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Queue(#[from] QueueError),
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(5);
}

pub async fn reconcile(
    listener: Arc<DedicatedCLBListener>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let namespace = listener.namespace().unwrap_or_default();
    let api: Api<DedicatedCLBListener> = Api::namespaced(ctx.client.clone(), &namespace);
    reconcile_finalized(&api, LISTENER_FINALIZER, listener, &*ctx, apply, cleanup).await
}

fn key(listener: &DedicatedCLBListener) -> ListenerKey {
    ListenerKey {
        name: clb_listener_name(listener),
        listener_id: listener.status.as_ref().and_then(|s| s.listener_id.clone()),
        protocol: match listener.spec.protocol {
            Protocol::Tcp => tencent::Protocol::Tcp,
            Protocol::Udp => tencent::Protocol::Udp,
        },
        port: listener.spec.lb_port,
    }
}

async fn apply(listener: &DedicatedCLBListener, ctx: &Context) -> Result<Action, Error> {
    // Without the pods, every backend would look gone.
    ctx.caches.wait().await;
    let region = match ctx
        .queues
        .cloud()
        .region(listener.spec.lb_region.as_deref())
    {
        Ok(region) => region,
        Err(error) => {
            let error = QueueError::from(error);
            write_status(listener, ctx, failed_status(listener, &error)).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    // The backend: the named pod in this namespace, once it has an IP and
    // while it is not being deleted.
    let backend = listener.spec.backend_pod.as_ref().and_then(|backend| {
        let pod = ctx.pods.get(
            &ObjectRef::new(&backend.pod_name).within(&listener.namespace().unwrap_or_default()),
        )?;
        pod_ip(&pod).map(|ip| (ip.to_owned(), backend.port))
    });
    let current = listener.status.clone().unwrap_or_default();
    // As tke-extend does, a configuration that does not exist means the
    // CLB's defaults; knit says so, and applies it once it exists (its
    // creation wakes this listener).
    let (settings, missing_config) = match &listener.spec.listener_config {
        None => (tencent::ListenerSettings::default(), None),
        Some(name) => match ctx.configs.get(&ObjectRef::new(name)) {
            Some(config) => (config.spec.settings(), None),
            None => (
                tencent::ListenerSettings::default(),
                Some(format!(
                    "CLBListenerConfig {name} does not exist: the listener has the CLB's default settings"
                )),
            ),
        },
    };
    if current.listener_id.is_none() && current.state != Some(ListenerState::Pending) {
        let pending = DedicatedCLBListenerStatus {
            state: Some(ListenerState::Pending),
            ..current.clone()
        };
        write_status(listener, ctx, pending).await?;
    }
    let desired = Desired {
        listener: key(listener),
        backend: backend.clone(),
        settings: Arc::new(settings),
    };
    match ctx
        .queues
        .ensure(&region, &listener.spec.lb_id, desired)
        .await
    {
        Ok(ensured) => {
            let state = if backend.is_some() {
                ListenerState::Bound
            } else {
                ListenerState::Available
            };
            let (reason, message) = match (&listener.spec.backend_pod, state) {
                (Some(pod), ListenerState::Bound) => (
                    "Bound",
                    format!("forwarding to {}:{}", pod.pod_name, pod.port),
                ),
                (Some(pod), _) => (
                    "BackendNotReady",
                    format!(
                        "pod {} does not exist, has no IP yet or is being deleted",
                        pod.pod_name
                    ),
                ),
                (None, _) => ("Available", "no backend pod: waiting to be bound".into()),
            };
            if current.state != Some(state) {
                publish(ctx, listener, EventType::Normal, reason, &message).await;
            }
            let message = match missing_config {
                Some(missing) => {
                    if !current
                        .conditions
                        .iter()
                        .any(|c| c.message.contains(&missing))
                    {
                        let reason = "ListenerConfigNotFound";
                        publish(ctx, listener, EventType::Warning, reason, &missing).await;
                    }
                    format!("{message}; {missing}")
                }
                None => message,
            };
            let status = DedicatedCLBListenerStatus {
                listener_id: Some(ensured.listener_id),
                state: Some(state),
                address: ensured
                    .vip
                    .map(|vip| format!("{vip}:{}", listener.spec.lb_port)),
                observed_generation: listener.metadata.generation,
                // In place on the CLB, but not forwarding to the pod it names.
                conditions: vec![condition(
                    listener,
                    &current,
                    reason != "BackendNotReady",
                    reason,
                    &message,
                )],
            };
            write_status(listener, ctx, status).await?;
            Ok(Action::requeue(ctx.queues.cloud().settings().resync))
        }
        Err(error) => {
            if current.conditions.first().map(|c| c.reason.as_str()) != Some(error.reason()) {
                publish(
                    ctx,
                    listener,
                    EventType::Warning,
                    error.reason(),
                    &error.to_string(),
                )
                .await;
            }
            write_status(listener, ctx, failed_status(listener, &error)).await?;
            let retry = match &error {
                QueueError::Cloud {
                    retryable: true, ..
                } => Duration::from_secs(5),
                QueueError::Cloud { .. } => Duration::from_secs(30),
                _ => Duration::from_secs(60),
            };
            Ok(Action::requeue(retry))
        }
    }
}

fn failed_status(
    listener: &DedicatedCLBListener,
    error: &QueueError,
) -> DedicatedCLBListenerStatus {
    let current = listener.status.clone().unwrap_or_default();
    DedicatedCLBListenerStatus {
        // The listener is not known to be in place.
        state: Some(ListenerState::Pending),
        address: None,
        observed_generation: listener.metadata.generation,
        conditions: vec![condition(
            listener,
            &current,
            false,
            error.reason(),
            &error.to_string(),
        )],
        ..current
    }
}

async fn cleanup(listener: &DedicatedCLBListener, ctx: &Context) -> Result<Action, Error> {
    let current = listener.status.clone().unwrap_or_default();
    if current.state != Some(ListenerState::Deleting) {
        let deleting = DedicatedCLBListenerStatus {
            state: Some(ListenerState::Deleting),
            ..current
        };
        write_status(listener, ctx, deleting).await?;
    }
    // Without a region there was never a listener to delete.
    if let Ok(region) = ctx
        .queues
        .cloud()
        .region(listener.spec.lb_region.as_deref())
    {
        ctx.queues
            .delete(&region, &listener.spec.lb_id, key(listener))
            .await?;
    }
    Ok(Action::await_change())
}

async fn write_status(
    listener: &DedicatedCLBListener,
    ctx: &Context,
    status: DedicatedCLBListenerStatus,
) -> Result<(), Error> {
    crate::controller::write_status(
        &Api::namespaced(
            ctx.client.clone(),
            &listener.namespace().unwrap_or_default(),
        ),
        listener,
        listener.status.as_ref(),
        &status,
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    listener: &DedicatedCLBListener,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    crate::controller::publish_event(
        &ctx.recorder,
        &listener.object_ref(&()),
        type_,
        reason,
        note,
        "Reconcile",
    )
    .await;
}

fn condition(
    listener: &DedicatedCLBListener,
    current: &DedicatedCLBListenerStatus,
    ready: bool,
    reason: &str,
    message: &str,
) -> Condition {
    crate::controller::ready_condition(
        &current.conditions,
        listener.metadata.generation,
        ready,
        reason,
        message,
    )
}
