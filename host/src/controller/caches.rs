//! The caches-ready gate: planning on a half-filled watch cache would undo
//! what the objects not seen yet hold.

/// Whether a controller's watch caches each hold a full list. Signalled
/// from the watch streams rather than `Store::wait_until_ready`, which wakes
/// only one of several waiters (kube-runtime 5's DelayedInit keeps one
/// waker; a `Controller` already waits on its own store that way).
#[derive(Clone, Default)]
pub struct CachesReady(Vec<tokio::sync::watch::Receiver<bool>>);

impl CachesReady {
    /// One more cache to wait for; raise the flag with `mark_listed`.
    pub fn track(&mut self) -> tokio::sync::watch::Sender<bool> {
        let (listed, receiver) = tokio::sync::watch::channel(false);
        self.0.push(receiver);
        listed
    }

    pub async fn wait(&self) {
        for listed in &self.0 {
            let _ = listed.clone().wait_for(|listed| *listed).await;
        }
    }
}

/// For `inspect` on a watch stream, after its reflector: raises `listed`
/// when the stream reports its first full list.
pub fn mark_listed<K>(
    listed: tokio::sync::watch::Sender<bool>,
) -> impl FnMut(&Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>) {
    move |event| {
        if let Ok(kube::runtime::watcher::Event::InitDone) = event {
            listed.send_replace(true);
        }
    }
}
