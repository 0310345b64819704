//! The controller kit: what every controller does the same way, so each
//! domain's controller is only observe → plan → act.
//!
//! - `status`: the `Ready` condition and status writes;
//! - `events`: the one Event recorder, publishing, and `Told` (tell once);
//! - `caches`: the gate that holds planning until every watch cache listed;
//! - `finalize`: finalizer wrapping and the one error policy;
//! - `run`: a controller run until shutdown, its passes measured;
//! - `expectations`: read-your-writes over a lagging watch cache;
//! - `decision`: the plugin-decision step (which plugin, its configuration,
//!   the call's answer or a typed `Refusal`), and the status that names
//!   the plugin.
//!
//! Controllers live in `domains/<domain>/`; their pure plans beside them.

pub mod caches;
pub mod decision;
pub mod events;
pub mod expectations;
pub mod finalize;
pub mod run;
pub mod status;

pub use caches::{CachesReady, mark_listed};
pub use decision::{Chosen, Decided, PluginStatus, Refusal, replay_seed};
pub use events::{Told, publish_event, recorder};
pub use expectations::Expectations;
pub use finalize::{Failed, Retry, error_policy, reconcile_finalized};
pub use run::run;
pub use status::{ready_condition, write_status};

/// Plugin changes as a stream of "replan everything" (a lagging receiver
/// missed some, which means the same): any plugin change may change any
/// decision.
pub fn plugin_changes(
    receiver: tokio::sync::broadcast::Receiver<crate::runtime::PluginEvent>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            _ => Some(((), receiver)),
        }
    })
}

/// The cached objects `keep` selects, as references to reconcile: what a
/// controller woken by another kind maps a change to.
pub fn refs_where<K>(
    store: &kube::runtime::reflector::Store<K>,
    keep: impl Fn(&K) -> bool,
) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|object| keep(object))
        .map(|object| kube::runtime::reflector::ObjectRef::from_obj(&**object))
        .collect()
}
