//! Running a controller: the one way every domain does it.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};

use super::finalize::{Failed, Retry, error_policy};
use crate::telemetry::ReconcileMetrics;

/// Runs `controller` until `shutdown` (then finishes the passes in
/// flight): each pass of `reconcile` measured as `kind`, a failed one
/// retried by `error_policy`.
pub fn run<K, C, R, Fut, E, S>(
    controller: Controller<K>,
    kind: &'static str,
    reconcile: R,
    context: Arc<C>,
    reconciles: &Arc<ReconcileMetrics>,
    shutdown: S,
) -> impl Future<Output = ()> + Send + use<K, C, R, Fut, E, S>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    R: Fn(Arc<K>, Arc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, Failed<E>>> + Send + 'static,
    E: Retry + std::error::Error + Send + 'static,
    S: Future<Output = ()> + Send + Sync + 'static,
{
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconciles.measured(kind, reconcile), error_policy, context)
        .for_each(|_| async {})
}
