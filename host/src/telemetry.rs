//! Logs, and the HTTP endpoints for metrics and health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Logs to stderr, as text or JSON; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Readiness: false until the plugins are loaded and the controllers started.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the future is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Registry>,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &metrics) {
                        Ok(()) => (StatusCode::OK, text),
                        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.0.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Every controller's passes, by the kind reconciled:
/// `knit_reconciles_total{kind,result=success|error}` and
/// `knit_reconcile_duration_seconds{kind}`.
pub struct ReconcileMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<KindLabels, Histogram, fn() -> Histogram>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        ReconcileMetrics {
            reconciles: Family::default(),
            // 1 ms .. ~4 min: from a cached no-op to a pass waiting on CLB tasks.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-3, 4.0, 10))
            }),
        }
    }
}

impl ReconcileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "knit_reconciles",
            "Reconcile passes by kind and result",
            self.reconciles.clone(),
        );
        registry.register(
            "knit_reconcile_duration_seconds",
            "How long a reconcile pass took, by kind",
            self.durations.clone(),
        );
    }

    /// Runs one pass of a controller for `kind` and counts it.
    pub async fn measure<T, E>(
        &self,
        kind: &'static str,
        pass: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = pass.await;
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind,
                result: outcome,
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels { kind })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
