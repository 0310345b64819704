//! Traces over OTLP/HTTP: the real `knit` binary, `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at a fake collector (`knit_tests::fake_otlp`) that decodes what
//! arrives. `knit simulate` calls plugins without a cluster; `knit run`
//! against the test API server reconciles. Both exit before the spans are
//! read, so what was received is what the shutdown flushed: nothing here
//! waits on a clock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use knit_tests::fake_otlp::{FakeOtlp, ReceivedSpan};

/// The variables that configure OpenTelemetry, cleared so that only what a
/// test sets applies.
const OTEL_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
];

/// Compiled plugins shared by every run in this file (simulate compiles all
/// five built-ins, which is slow without a cache).
fn plugin_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("traces-plugin-cache")
}

fn knit(args: &[&str], otel: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_knit"));
    command
        .args(args)
        .current_dir(knit_tests::repo())
        .env("RUST_LOG", "info")
        .env("KNIT_PLUGIN_CACHE", plugin_cache());
    for variable in OTEL_VARIABLES {
        command.env_remove(variable);
    }
    command.envs(otel.iter().copied());
    command
}

/// `knit simulate` of the default example, off the test's runtime (the fake
/// collector answers on it meanwhile).
async fn simulate(otel: &[(&str, &str)]) -> Output {
    let mut command = knit(&["simulate"], otel);
    tokio::task::spawn_blocking(move || command.output().expect("running knit"))
        .await
        .unwrap()
}

fn succeeded(output: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "knit failed: {stderr}");
    (String::from_utf8(output.stdout.clone()).unwrap(), stderr)
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// A plugin call of `function` by `plugin`, if one arrived.
fn plugin_call<'a>(
    spans: &'a [ReceivedSpan],
    plugin: &str,
    function: &str,
) -> Option<&'a ReceivedSpan> {
    named(spans, "plugin call").into_iter().find(|s| {
        s.attribute("plugin") == Some(plugin) && s.attribute("function") == Some(function)
    })
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.attributes))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_exports_its_plugin_calls_as_knit() {
    let collector = FakeOtlp::start().await;
    let (traced, stderr) =
        succeeded(&simulate(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())]).await);
    assert_eq!(collector.refused(), Vec::<String>::new());
    let spans = collector.spans();
    assert!(!spans.is_empty(), "no spans arrived; knit said:\n{stderr}");
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("knit")
        );
        assert_eq!(
            span.resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(span.trace_id.len(), 16, "{span:?}");
        assert_eq!(span.span_id.len(), 8, "{span:?}");
    }
    // Every built-in is described when it loads; the default example
    // allocates three addresses from the sequential strategy.
    for plugin in [
        "ipam-sequential",
        "ipam-random",
        "ipam-dense-pack",
        "clb-allocator",
        "tunnel-mapper",
    ] {
        assert!(
            plugin_call(&spans, plugin, "describe").is_some(),
            "no describe span for {plugin}:\n{}",
            describe(&spans)
        );
    }
    let allocate = plugin_call(&spans, "ipam-sequential", "allocate")
        .unwrap_or_else(|| panic!("no allocate span:\n{}", describe(&spans)));
    assert_eq!(
        allocate.attribute("plugin.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(allocate.attribute("otel.status_code"), None);
    assert!(
        stderr.contains("exporting traces over OTLP/HTTP"),
        "{stderr}"
    );

    // Tracing changes nothing the command prints.
    let (untraced, _) = succeeded(&simulate(&[]).await);
    assert_eq!(traced, untraced);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_names_the_service_and_the_traces_endpoint() {
    let collector = FakeOtlp::start().await;
    // The per-signal endpoint is used as it is, without `/v1/traces` added.
    let endpoint = format!("{}/v1/traces", collector.endpoint());
    succeeded(
        &simulate(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "edge-knit"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test,service.name=overridden",
            ),
        ])
        .await,
    );
    assert_eq!(collector.refused(), Vec::<String>::new());
    let spans = collector.spans();
    assert!(!spans.is_empty());
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("edge-knit")
        );
        assert_eq!(
            span.resource
                .get("deployment.environment")
                .map(String::as_str),
            Some("test")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_changes_nothing_but_a_warning() {
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (traced, stderr) =
        succeeded(&simulate(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await);
    let (untraced, _) = succeeded(&simulate(&[]).await);
    assert_eq!(traced, untraced);
    assert_eq!(
        stderr.matches("could not export traces").count(),
        1,
        "one warning per outage:\n{stderr}"
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_never_answers_does_not_hold_up_the_exit() {
    // Accepts connections (the kernel does, into the backlog) and never
    // answers: the export at exit can only give up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let (_, stderr) = succeeded(&simulate(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await);
    assert!(
        stderr.contains("gave up sending the last traces"),
        "{stderr}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_is_refused_with_a_warning_and_nothing_is_sent() {
    let collector = FakeOtlp::start().await;
    let (_, stderr) = succeeded(
        &simulate(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .await,
    );
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        stderr.contains(r#"OTLP protocol "grpc" is not built into knit"#),
        "{stderr}"
    );
    assert!(collector.spans().is_empty());
    assert_eq!(collector.refused(), Vec::<String>::new());
}

fn get(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: knit\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let output = knit_tests::kubectl(args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `knit run` until a pod gets its address, then SIGTERM: the reconciles
/// arrive as kube-runtime's `reconciling object` spans naming the IPPool,
/// and the sequential strategy's allocation as a plugin call.
#[tokio::test(flavor = "multi_thread")]
async fn run_exports_reconciles_and_flushes_them_on_sigterm() {
    let collector = FakeOtlp::start().await;
    let endpoint = collector.endpoint().to_string();
    let plugins = tempfile::tempdir().unwrap();
    let plugins_dir = plugins.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let kubeconfig = &knit_tests::env().admin_kubeconfig;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = knit(
            &[
                "run",
                "--metrics-addr",
                &addr,
                "--namespace",
                "default",
                "--leader-elect=false",
                "--domains",
                "ipam",
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
        );
        let mut knit = command
            .arg("--plugins-dir")
            .arg(&plugins_dir)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("knit ready", Duration::from_secs(60), || {
            assert!(knit.try_wait().unwrap().is_none(), "knit exited early");
            get(&addr, "/readyz") == Some(200)
        });
        kubectl(
            &["apply", "-f", "-"],
            Some(
                r#"
apiVersion: knit.dev/v1alpha1
kind: IPPool
metadata: { name: traces-run }
spec: { cidrs: [10.98.0.0/29] }
---
apiVersion: v1
kind: Pod
metadata:
  name: traces-run
  namespace: default
  annotations: { knit.dev/ippool: traces-run }
spec: { containers: [{ name: app, image: registry.invalid/app }] }
"#,
            ),
        );
        let address = [
            "get",
            "pod",
            "traces-run",
            "-n",
            "default",
            "-o",
            r"jsonpath={.metadata.annotations.knit\.dev/ip}",
        ];
        wait_until("the pod's address", Duration::from_secs(60), || {
            kubectl(&address, None) == "10.98.0.1"
        });
        let pid = knit.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = knit.wait().unwrap();
        assert!(status.success(), "{status}");
    })
    .await
    .unwrap();

    assert_eq!(collector.refused(), Vec::<String>::new());
    let spans = collector.spans();
    let reconciles: Vec<_> = named(&spans, "reconciling object")
        .into_iter()
        .filter(|s| s.attribute("object.ref") == Some("IPPool.v1alpha1.knit.dev/traces-run"))
        .collect();
    assert!(
        !reconciles.is_empty(),
        "no reconcile of the pool:\n{}",
        describe(&spans)
    );
    assert!(
        reconciles
            .iter()
            .all(|s| s.attribute("object.reason").is_some())
    );
    assert!(
        reconciles
            .iter()
            .all(|s| s.resource.get("service.name").map(String::as_str) == Some("knit"))
    );
    let allocation = plugin_call(&spans, "ipam-sequential", "allocate").unwrap_or_else(|| {
        panic!("no allocation:\n{}", describe(&spans));
    });
    // The plugin call is part of its reconcile's trace, not a trace of its own.
    assert!(
        reconciles.iter().any(|r| r.trace_id == allocation.trace_id),
        "the allocation is outside every reconcile's trace:\n{}",
        describe(&spans)
    );
    assert!(!allocation.parent_span_id.is_empty());
}
