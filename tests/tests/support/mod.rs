//! Support shared by the end-to-end tests and benches that run knit's
//! controllers in-process.

use std::future::Future;
use std::sync::Arc;

use knit::runtime::Registry;

/// knit's controllers on a runtime of their own: dropping it stops all of
/// them at once, as a crash would.
pub struct Knit {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Knit {
    /// Runs `controllers` on the cluster `env` (`knit_tests::env()`, or
    /// `knit_tests::other_cluster()`) with a cluster-admin client and the
    /// built-in plugins.
    pub fn start<F, Fut>(env: &'static knit_tests::TestEnv, controllers: F) -> Knit
    where
        F: FnOnce(kube::Client, Arc<Registry>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let registry = knit::registry_setup::builtin_registry(None, Arc::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let client = knit_tests::client_for(&env.admin_kubeconfig).await;
            controllers(client, registry).await;
        });
        Knit {
            runtime: Some(runtime),
        }
    }
}

impl Drop for Knit {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
