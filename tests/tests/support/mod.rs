//! Support shared by the TKE CLB tests and the `clb_scale` bench.

use std::sync::Arc;

use knit::domains::tke_clb::cloud::TkeSettings;

/// A knit running the TKE controllers on its own runtime.
pub struct Knit {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Knit {
    pub fn start(settings: TkeSettings) -> Knit {
        let registry = knit::cli::builtin_registry(None, Arc::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let client = knit_tests::admin_client().await;
            knit::domains::tke_clb::run(
                client,
                registry,
                settings,
                Arc::default(),
                std::future::pending(),
            )
            .await;
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
