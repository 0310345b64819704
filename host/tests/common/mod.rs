//! Shared by the host's integration tests.

use std::sync::Arc;

use knit::runtime::{Registry, Runtime, RuntimeConfig, RuntimeMetrics};

pub use knit_tests::built_plugin;

pub fn registry() -> Arc<Registry> {
    let runtime = Runtime::new(
        RuntimeConfig::default(),
        Arc::new(RuntimeMetrics::default()),
    )
    .expect("runtime");
    Registry::new(runtime)
}
