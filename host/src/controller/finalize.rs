//! Finalizer wrapping and the one error policy every controller uses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource};

/// A controller's error, as the error policy treats it.
pub trait Retry: std::error::Error + Send + Sync + 'static {
    /// How long after a failure to try again.
    const FAILURE_RETRY: Duration;

    /// An expected wait rather than a failure (children still being
    /// deleted, say): logged quietly and retried after the duration given.
    fn waiting(&self) -> Option<Duration> {
        None
    }
}

/// A failed pass of a finalized object: its own error, or the finalizer's.
#[derive(Debug)]
pub struct Failed<E: std::error::Error + 'static>(pub Box<finalizer::Error<E>>);

impl<E: std::error::Error + 'static> fmt::Display for Failed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Failed<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl<E: std::error::Error + 'static> Failed<E> {
    /// A pass of a controller that holds no finalizer failed.
    pub fn pass(error: E) -> Self {
        Failed(Box::new(finalizer::Error::ApplyFailed(error)))
    }

    /// The controller's own error, when the pass (not the finalizer write)
    /// failed.
    pub fn inner(&self) -> Option<&E> {
        match &*self.0 {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => Some(e),
            _ => None,
        }
    }

    /// A finalizer write that lost a race nobody needs to hear about: the
    /// object is already gone (404), was changed meanwhile (409) or is
    /// being deleted (422). The next pass, from the watch, settles it.
    pub fn lost_finalizer_race(&self) -> bool {
        match &*self.0 {
            finalizer::Error::AddFinalizer(kube::Error::Api(e))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(e)) => {
                matches!(e.code, 404 | 409 | 422)
            }
            _ => false,
        }
    }
}

/// One pass over an object that holds `finalizer_name` while it lives:
/// `apply` while it does, `cleanup` once it is being deleted (the
/// finalizer goes when `cleanup` succeeds).
pub async fn reconcile_finalized<K, C, E>(
    api: &Api<K>,
    finalizer_name: &str,
    object: Arc<K>,
    ctx: &C,
    apply: impl AsyncFn(&K, &C) -> Result<Action, E>,
    cleanup: impl AsyncFn(&K, &C) -> Result<Action, E>,
) -> Result<Action, Failed<E>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
    E: std::error::Error + Send + 'static,
{
    finalizer(api, finalizer_name, object, |event| async move {
        match event {
            Event::Apply(object) => apply(&object, ctx).await,
            Event::Cleanup(object) => cleanup(&object, ctx).await,
        }
    })
    .await
    .map_err(|e| Failed(Box::new(e)))
}

use finalizer::finalizer;

/// The error policy of every finalized controller: a lost finalizer race
/// is retried at once, an expected wait after its duration, a failure
/// after the error's `FAILURE_RETRY` (and logged as a warning).
pub fn error_policy<K, E, C>(object: Arc<K>, error: &Failed<E>, _: Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    E: Retry,
{
    let object = ObjectRef::from_obj(&*object);
    if error.lost_finalizer_race() {
        tracing::debug!(%object, %error, "finalizer race");
        return Action::requeue(Duration::from_secs(1));
    }
    if let Some(wait) = error.inner().and_then(Retry::waiting) {
        tracing::debug!(%object, %error, "waiting");
        return Action::requeue(wait);
    }
    tracing::warn!(%object, %error, "reconcile failed");
    Action::requeue(E::FAILURE_RETRY)
}
