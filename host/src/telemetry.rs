//! Logs, traces over OTLP, and the HTTP endpoints for metrics and health.

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
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, the
/// spans that pass the same filter are also exported over OTLP; the returned
/// guard flushes them when dropped, so hold it until the program ends.
pub fn init_logging(format: &str) -> Telemetry {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let traces = otlp::TraceExport::from_env();
    let layer = match &traces {
        Ok(Some(export)) => Some(export.layer()),
        _ => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(layer)
        .init();
    // Reported once logging works.
    match traces {
        Ok(Some(export)) => {
            tracing::info!(endpoint = %export.endpoint, "exporting traces over OTLP/HTTP");
            Telemetry {
                traces: Some(export),
            }
        }
        Ok(None) => Telemetry { traces: None },
        Err(why) => {
            tracing::warn!("not exporting traces: {why}");
            Telemetry { traces: None }
        }
    }
}

/// What `init_logging` started beyond the logs. Dropping it flushes and
/// stops the trace export, waiting at most [`otlp::SHUTDOWN_GRACE`].
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    traces: Option<otlp::TraceExport>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

mod otlp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing::Subscriber;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    /// How long the end of the program waits for the last spans to go out.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// The tracer provider and the runtime its batch exporter runs on. The
    /// runtime is its own (one thread) because the logs start before knit's
    /// runtime exists, most subcommands have none, and an export never
    /// competes with the controllers for a worker.
    pub struct TraceExport {
        pub endpoint: String,
        provider: SdkTracerProvider,
        runtime: tokio::runtime::Runtime,
    }

    fn env(name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    }

    impl TraceExport {
        /// `Ok(None)` unless an OTLP endpoint is configured; `Err` says why a
        /// configured export does not start.
        pub fn from_env() -> Result<Option<TraceExport>, String> {
            let endpoint = match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(endpoint) => endpoint,
                None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                    None => return Ok(None),
                },
            };
            if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
                || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
            {
                return Ok(None);
            }
            let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .unwrap_or_else(|| "http/protobuf".to_string());
            if protocol != "http/protobuf" {
                return Err(format!(
                    "OTLP protocol {protocol:?} is not built into knit, only \"http/protobuf\" \
                     (a collector serves it on port 4318); set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
                     and point OTEL_EXPORTER_OTLP_ENDPOINT at that port"
                ));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("knit-otlp")
                .enable_all()
                .build()
                .map_err(|error| format!("starting the export thread: {error}"))?;
            // The exporter's HTTP client and the batch processor's task
            // belong to that runtime.
            let entered = runtime.enter();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&endpoint)
                .build()
                .map_err(|error| format!("OTLP exporter for {endpoint}: {error}"))?;
            let processor = BatchSpanProcessor::builder(
                WarnOnFailure::new(exporter),
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource())
                .build();
            drop(entered);
            Ok(Some(TraceExport {
                endpoint,
                provider,
                runtime,
            }))
        }

        /// Spans to OpenTelemetry, leaving out those of the export's own
        /// HTTP stack (at `RUST_LOG=debug` each export would make more).
        pub fn layer<S>(&self) -> impl Layer<S> + use<S>
        where
            S: Subscriber + for<'span> LookupSpan<'span>,
        {
            tracing_opentelemetry::layer()
                .with_tracer(self.provider.tracer("knit"))
                .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                    let target = metadata.target();
                    !["hyper", "h2", "reqwest", "tower", "opentelemetry"]
                        .iter()
                        .any(|prefix| target.starts_with(prefix))
                }))
        }

        /// Exports what is still queued, then stops; gives up after
        /// `SHUTDOWN_GRACE` (a collector that accepts connections but never
        /// answers must not hold the exit up).
        pub fn shutdown(self) {
            let TraceExport {
                endpoint,
                provider,
                runtime,
            } = self;
            let (done, finished) = std::sync::mpsc::channel();
            // The provider blocks on the batch task, which runs on `runtime`.
            let flushing = std::thread::Builder::new()
                .name("knit-otlp-shutdown".into())
                .spawn(move || {
                    let _ = done.send(provider.shutdown());
                });
            match flushing.map(|_| finished.recv_timeout(SHUTDOWN_GRACE)) {
                // Export failures were already reported by `WarnOnFailure`.
                Ok(Ok(result)) => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "trace export shutdown");
                    }
                }
                Ok(Err(_)) => tracing::warn!(
                    %endpoint,
                    "gave up sending the last traces after {}s",
                    SHUTDOWN_GRACE.as_secs()
                ),
                Err(error) => tracing::warn!(%error, "could not flush the last traces"),
            }
            runtime.shutdown_background();
        }
    }

    /// `service.name` is `knit` unless `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES` say otherwise (the SDK's own default would
    /// be `unknown_service`).
    fn resource() -> Resource {
        // Later attributes win: the environment over knit's defaults.
        let mut builder = Resource::builder_empty()
            .with_service_name("knit")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_detectors(&[
                Box::new(TelemetryResourceDetector),
                Box::new(EnvResourceDetector::new()),
            ]);
        if let Some(name) = env("OTEL_SERVICE_NAME") {
            builder = builder.with_service_name(name);
        }
        builder.build()
    }

    /// Export errors as one warning per outage, not one per batch (the SDK's
    /// own would be an error every few seconds); recovery is logged too.
    #[derive(Debug)]
    struct WarnOnFailure<E> {
        inner: E,
        failing: AtomicBool,
    }

    impl<E> WarnOnFailure<E> {
        fn new(inner: E) -> Self {
            WarnOnFailure {
                inner,
                failing: AtomicBool::new(false),
            }
        }
    }

    impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let spans = batch.len();
            let result = self.inner.export(batch).await;
            match &result {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("exporting traces again");
                    }
                }
                Err(error) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %error,
                            dropped_spans = spans,
                            "could not export traces; further failures are not logged until an export succeeds"
                        );
                    }
                }
            }
            result
        }

        fn shutdown(&mut self) -> OTelSdkResult {
            self.inner.shutdown()
        }

        fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
            self.inner.shutdown_with_timeout(timeout)
        }

        fn force_flush(&mut self) -> OTelSdkResult {
            self.inner.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.inner.set_resource(resource);
        }
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

/// Serves the metrics at `metrics_path` (`/metrics`), `/healthz` and
/// `/readyz` until the future is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics_path: &str,
    metrics: Arc<Registry>,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            metrics_path,
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
    tracing::info!(%addr, "serving {metrics_path}, /healthz, /readyz");
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

    /// `reconcile` as a controller runs it, every pass counted for `kind`.
    pub fn measured<K, C, T, E, R, Fut>(
        self: &Arc<Self>,
        kind: &'static str,
        reconcile: R,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> futures::future::BoxFuture<'static, Result<T, E>>
    + use<K, C, T, E, R, Fut>
    where
        R: Fn(Arc<K>, Arc<C>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: 'static,
        E: 'static,
    {
        let metrics = self.clone();
        move |object, ctx| {
            let metrics = metrics.clone();
            let pass = reconcile(object, ctx);
            Box::pin(async move { metrics.measure(kind, pass).await })
        }
    }

    /// Runs one pass of a controller for `kind` and counts it.
    async fn measure<T, E>(
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
