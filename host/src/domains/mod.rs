//! One folder per domain: its kinds, its pure planning, and (as each domain
//! lands) its controller.

pub mod cloudflare;
pub mod ipam;
pub mod tke_clb;

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
