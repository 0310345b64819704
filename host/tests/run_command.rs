//! `knit run` as a process against the real API server: ready, metrics,
//! plugins from the directory, the lease taken, clean exit on SIGTERM that
//! releases it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: knit\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response))
}

#[test]
fn run_serves_health_and_metrics_and_stops_on_sigterm() {
    let env = knit_tests::env();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(
        plugins.path().join("swap.wasm"),
        knit_tests::built_plugin("fixture_swap_v1"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut knit = Command::new(env!("CARGO_BIN_EXE_knit"))
        .args([
            "run",
            "--metrics-addr",
            &addr,
            "--namespace",
            "default",
            "--plugins-dir",
        ])
        .arg(plugins.path())
        .env("KUBECONFIG", &env.admin_kubeconfig)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let started = Instant::now();
    while get(&addr, "/readyz").map(|(status, _)| status) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "knit never became ready"
        );
        assert!(knit.try_wait().unwrap().is_none(), "knit exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
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
        let output = Command::new(knit_tests::tool("kubectl"))
            .args(["get", "lease", "knit", "-n", "default"])
            .args(["-o", "jsonpath={.spec.holderIdentity}"])
            .env("KUBECONFIG", &env.admin_kubeconfig)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let started = Instant::now();
    while !lease_holder().ends_with(&format!("-{}", knit.id())) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "knit never took the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // As leader it runs the controllers: a pod asking a pool gets an address.
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(knit_tests::tool("kubectl"))
            .args(args)
            .env("KUBECONFIG", &env.admin_kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "kubectl {args:?} failed");
        String::from_utf8(output.stdout).unwrap()
    };
    kubectl(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: knit.dev/v1alpha1
kind: IPPool
metadata: { name: run-command }
spec: { cidrs: [10.99.0.0/29] }
---
apiVersion: v1
kind: Pod
metadata:
  name: run-command
  namespace: default
  annotations: { knit.dev/ippool: run-command }
spec: { containers: [{ name: app, image: registry.invalid/app }] }
"#,
        ),
    );
    let started = Instant::now();
    let ip_of_pod = ["get", "pod", "run-command", "-n", "default"];
    while kubectl(
        &[
            &ip_of_pod[..],
            &["-o", r"jsonpath={.metadata.annotations.knit\.dev/ip}"],
        ]
        .concat(),
        None,
    ) != "10.99.0.1"
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pod never got its address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    for expected in [
        r#"knit_ipam_allocations_total{pool="run-command"} 1"#,
        r#"knit_ipam_pool_capacity{pool="run-command"} 6"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    // SIGTERM is how Kubernetes stops a pod.
    let pid = knit.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = knit.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "knit ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Stopping released the lease for the next replica.
    assert_eq!(lease_holder(), "");
}
