//! Shared by the host's integration tests: where the built plugins are.

use std::path::PathBuf;
use std::sync::Arc;

use knit::runtime::{Registry, Runtime, RuntimeConfig, RuntimeMetrics};

/// A plugin or fixture built by the test command
/// (`cargo build --release --target wasm32-wasip2`).
pub fn built_plugin(lib_name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{lib_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins and fixtures first (the README's test command does)",
            path.display()
        )
    })
}

pub fn registry() -> Arc<Registry> {
    let runtime = Runtime::new(
        RuntimeConfig::default(),
        Arc::new(RuntimeMetrics::default()),
    )
    .expect("runtime");
    Registry::new(runtime)
}
