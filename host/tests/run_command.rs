//! `knit run` as a process against the real API server: ready, metrics,
//! plugins from the directory, the lease taken, the controllers running,
//! clean exit on SIGTERM that releases the lease.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: knit\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

fn kubectl(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(knit_tests::tool("kubectl"))
        .args(args)
        .env("KUBECONFIG", &knit_tests::env().admin_kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "kubectl {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `knit run` manages every pool of the one API server, so the tests
/// take turns: one running knit at a time.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running `knit run`, killed if a failing test leaves it behind.
struct Knit(Child);

impl Drop for Knit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `knit run` with `args`, serving on a free port; returns once ready.
fn start(args: &[&str], plugins: &std::path::Path) -> (Knit, String) {
    start_with(&knit_tests::env().admin_kubeconfig, args, plugins)
}

/// `start` against the API server `kubeconfig` names.
fn start_with(
    kubeconfig: &std::path::Path,
    args: &[&str],
    plugins: &std::path::Path,
) -> (Knit, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut knit = Command::new(env!("CARGO_BIN_EXE_knit"))
        .args(["run", "--metrics-addr", &addr, "--namespace", "default"])
        .args(args)
        .arg("--plugins-dir")
        .arg(plugins)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("knit ready", Duration::from_secs(60), || {
        assert!(knit.try_wait().unwrap().is_none(), "knit exited early");
        get(&addr, "/readyz").map(|(status, _)| status) == Some(200)
    });
    (Knit(knit), addr)
}

/// A pool and a pod asking it; waits for the address the controller writes.
fn pod_gets_an_address(name: &str, cidr: &str, expected: &str) {
    kubectl(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: knit.dev/v1alpha1
kind: IPPool
metadata: {{ name: {name} }}
spec: {{ cidrs: [{cidr}] }}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  annotations: {{ knit.dev/ippool: {name} }}
spec: {{ containers: [{{ name: app, image: registry.invalid/app }}] }}
"#
        ),
    );
    let address = [
        "get",
        "pod",
        name,
        "-n",
        "default",
        "-o",
        r"jsonpath={.metadata.annotations.knit\.dev/ip}",
    ];
    wait_until(
        &format!("{name}'s address"),
        Duration::from_secs(60),
        || kubectl(&address, "") == expected,
    );
}

/// SIGTERM, as Kubernetes stops a pod: a clean, successful exit.
fn stop(mut knit: Knit) {
    let knit = &mut knit.0;
    let pid = knit.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    wait_until("knit to stop on SIGTERM", Duration::from_secs(20), || {
        status = knit.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn run_serves_health_and_metrics_leads_and_stops_on_sigterm() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(
        plugins.path().join("swap.wasm"),
        knit_tests::built_plugin("fixture_swap_v1"),
    )
    .unwrap();
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (knit, addr) = start(&[], plugins.path());
    assert_eq!(get(&addr, "/healthz").unwrap().0, 200);
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    for expected in [
        r#"knit_plugin_reloads_total{plugin="swap",result="loaded"} 1"#,
        r#"knit_plugin_reloads_total{plugin="ipam-sequential",result="loaded"} 1"#,
        r#"knit_plugin_calls_total{plugin="swap",function="describe"} 1"#,
        "knit_plugin_call_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    // It campaigned and, alone, leads.
    let lease_holder = || {
        kubectl(
            &[
                "get",
                "lease",
                "knit",
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            "",
        )
    };
    let identity_suffix = format!("-{}", knit.0.id());
    wait_until("knit to take the lease", Duration::from_secs(30), || {
        lease_holder().ends_with(&identity_suffix)
    });

    // As leader it runs the controllers: a pod asking a pool gets an address.
    pod_gets_an_address("run-leader", "10.99.0.0/29", "10.99.0.1");
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    for expected in [
        r#"knit_ipam_allocations_total{pool="run-leader"} 1"#,
        r#"knit_ipam_pool_capacity{pool="run-leader"} 6"#,
        r#"knit_reconciles_total{kind="IPPool",result="success"}"#,
        r#"knit_reconcile_duration_seconds_count{kind="IPPool"}"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    stop(knit);
    // Stopping released the lease for the next replica.
    assert_eq!(lease_holder(), "");
}

#[test]
fn run_without_leader_election_runs_the_controllers() {
    let plugins = tempfile::tempdir().unwrap();
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (knit, _) = start(
        &["--leader-elect=false", "--lease-name", "unused"],
        plugins.path(),
    );
    pod_gets_an_address("run-alone", "10.99.1.0/29", "10.99.1.1");
    // Still running: no election is not a lost lease.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    stop(knit);
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}

/// An API server that takes connections and never answers: every request
/// waits for its timeout. A pod must still stop within its grace period.
#[test]
fn run_stops_on_sigterm_while_the_api_server_does_not_answer() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        // Held open, never read or written.
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: silent\n\
             clusters: [{{name: silent, cluster: {{server: \"https://{server}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: silent, user: {{token: unused}}}}]\n\
             contexts: [{{name: silent, context: {{cluster: silent, user: silent}}}}]\n"
        ),
    )
    .unwrap();
    let (knit, _) = start_with(
        &kubeconfig,
        &["--domains", "ipam", "--shutdown-seconds", "2"],
        dir.path(),
    );
    // Let the election's first request start waiting on the silent server.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    stop(knit);
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}
