//! Plugin runtime metrics, exported on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    plugin: String,
    result: String,
}

pub struct RuntimeMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<CallLabels, Histogram>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            calls: Family::default(),
            errors: Family::default(),
            // 5 µs .. ~1.3 s: plugin calls range from microseconds to deadlines.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(5e-6, 4.0, 10))
            }),
            reloads: Family::default(),
        }
    }
}

impl RuntimeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("knit_plugin_calls", "Plugin calls", self.calls.clone());
        registry.register(
            "knit_plugin_errors",
            "Plugin calls that failed, by kind",
            self.errors.clone(),
        );
        registry.register(
            "knit_plugin_call_duration_seconds",
            "Plugin call duration, instantiation included",
            self.durations.clone(),
        );
        registry.register(
            "knit_plugin_reloads",
            "Plugin loads by result (loaded, unchanged, rejected, removed)",
            self.reloads.clone(),
        );
    }

    pub(super) fn observe_call(
        &self,
        plugin: &str,
        function: &str,
        duration: Duration,
        error_kind: Option<&str>,
    ) {
        let labels = CallLabels {
            plugin: plugin.to_string(),
            function: function.to_string(),
        };
        self.calls.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if let Some(kind) = error_kind {
            self.errors
                .get_or_create(&ErrorLabels {
                    plugin: plugin.to_string(),
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    pub(super) fn observe_reload(&self, plugin: &str, result: &str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Calls counted so far for a plugin, all functions together (for tests).
    pub fn calls_of(&self, plugin: &str, function: &str) -> u64 {
        self.calls
            .get_or_create(&CallLabels {
                plugin: plugin.to_string(),
                function: function.to_string(),
            })
            .get()
    }

    /// Loads of a plugin with this result (`loaded`, `unchanged`, `rejected`,
    /// `removed`) counted so far (for tests).
    pub fn reloads_of(&self, plugin: &str, result: &str) -> u64 {
        self.reloads
            .get_or_create(&ReloadLabels {
                plugin: plugin.to_string(),
                result: result.to_string(),
            })
            .get()
    }
}
