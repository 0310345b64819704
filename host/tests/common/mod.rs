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

/// Asks `ask(mode)` for each `(mode, reason)` of a lying fixture: every
/// answer must be refused as a bad output with exactly that reason. All
/// modes are tried before failing, so one run shows every check that does
/// not hold.
// Each test binary compiles this module; not all of them have liars.
#[allow(dead_code)]
pub fn assert_refused<T: std::fmt::Debug>(
    modes: &[(&str, &str)],
    ask: impl Fn(&str) -> Result<T, knit::runtime::CallError>,
) {
    use knit::runtime::CallError;
    let wrong: Vec<String> = modes
        .iter()
        .filter_map(|&(mode, reason)| match ask(mode) {
            Err(error @ CallError::BadOutput { .. }) => {
                let said = error.to_string();
                let refused = matches!(&error, CallError::BadOutput { reason: r, .. } if r == reason)
                    && said.contains("returned an answer the host refuses");
                (!refused).then(|| format!("{mode}: {said}"))
            }
            other => Some(format!("{mode}: {other:?}")),
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}
