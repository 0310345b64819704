//! Support for the end-to-end tests, in the spirit of controller-runtime's
//! envtest: one real kube-apiserver (with etcd and a garbage-collecting
//! controller manager) per test binary, started on first use from
//! `tests/testenv` (built by `tests/testenv/build`), with knit's CRDs and the
//! Gateway API CRDs installed and Established. Each test gets its own client
//! and a fresh namespace.
//!
//! The environment stops by itself when the test binary exits: it holds the
//! write end of the environment's stdin, and `--exit-on-stdin-eof` makes it
//! shut down and delete its directory when that closes.

pub mod fake_clb;
pub mod fake_cloudflare;
pub mod fake_otlp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running environment: the admin kubeconfig and the controller's own.
pub struct TestEnv {
    pub admin_kubeconfig: PathBuf,
    pub knit_kubeconfig: PathBuf,
    /// The API server's audit log (JSON lines) of the requests made as
    /// knit's ServiceAccount: what the chart's RBAC rules are really used for.
    pub knit_audit_log: PathBuf,
    _process: Mutex<(Child, ChildStdin)>,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();
static OTHER_CLUSTER: OnceLock<TestEnv> = OnceLock::new();

/// The repository root. Read when the tests run (cargo sets
/// `CARGO_MANIFEST_DIR` for them), not baked in at build time: a shared
/// target directory may hold this crate built from another checkout.
pub fn repo() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.join("..")
}

/// Where `tests/testenv/build` puts its outputs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KNIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/knit")
        })
}

/// A tool built by `tests/testenv/build` (`knit-testenv`, `kubectl`, `helm`).
pub fn tool(name: &str) -> PathBuf {
    let path = cache_dir().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/testenv/build (the test command does)",
        path.display()
    );
    path
}

/// The shared environment, started on first use.
pub fn env() -> &'static TestEnv {
    ENV.get_or_init(|| start("main"))
}

/// A second cluster, with its own API server and etcd, started on first use:
/// for what two clusters share, such as a Cloudflare account.
pub fn other_cluster() -> &'static TestEnv {
    OTHER_CLUSTER.get_or_init(|| start("other"))
}

/// Audits knit's identity only, at the Metadata level (no bodies, so no
/// Secret contents).
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["system:serviceaccount:knit-system:knit"]
  - level: None
"#;

fn start(label: &str) -> TestEnv {
    let audit_dir = std::env::temp_dir().join(format!("knit-audit-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&audit_dir).expect("creating the audit directory");
    let policy = audit_dir.join("policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).expect("writing the audit policy");
    let knit_audit_log = audit_dir.join("knit.log");
    let mut command = Command::new(tool("knit-testenv"));
    command
        .arg("--exit-on-stdin-eof")
        .arg(format!(
            "--apiserver-arg=--audit-policy-file={}",
            policy.display()
        ))
        .arg(format!(
            "--apiserver-arg=--audit-log-path={}",
            knit_audit_log.display()
        ))
        // Owner references with blockOwnerDeletion need `update` on the
        // owner's finalizers, as on clusters that enable this plugin.
        .arg("--apiserver-arg=--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
        .arg("--crds")
        .arg(repo().join("crds"));
    let gateway_crds = cache_dir().join("gateway-api-crds");
    if gateway_crds.is_dir() {
        command.arg("--crds").arg(gateway_crds);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting knit-testenv");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let admin_kubeconfig = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(path) = line.strip_prefix("KUBECONFIG=") {
                    break PathBuf::from(path);
                }
            }
            _ => panic!("knit-testenv exited before it was ready (its log is above)"),
        }
    };
    let knit_kubeconfig = admin_kubeconfig.with_file_name("knit.kubeconfig");
    TestEnv {
        admin_kubeconfig,
        knit_kubeconfig,
        knit_audit_log,
        _process: Mutex::new((child, stdin)),
    }
}

/// A client for `kubeconfig`, bound to the calling test's tokio runtime.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("reading kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Runs the test environment's `kubectl` as cluster admin in the
/// repository root, with `stdin` as its input.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut command = Command::new(tool("kubectl"));
    command
        .args(args)
        .env("KUBECONFIG", &env().admin_kubeconfig)
        .current_dir(repo());
    run_with_input(command, stdin.unwrap_or_default())
}

/// Runs `kubectl` as `kubectl()` does, and fails the test with its error
/// output unless it succeeds.
pub fn kubectl_ok(args: &[&str]) {
    let output = kubectl(args, None);
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command` with `input` as its standard input, and collects what it
/// printed.
pub fn run_with_input(mut command: Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    // Written from a thread: a child that answers while reading could fill
    // its output pipe and wait on us while we wait on its input.
    let mut stdin = child.stdin.take().expect("a piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("waiting for the command");
    writer
        .join()
        .expect("the writer thread")
        .expect("writing the command's input");
    output
}

/// A cluster-admin client.
pub async fn admin_client() -> Client {
    client_for(&env().admin_kubeconfig).await
}

/// A cluster-admin client of `other_cluster()`.
pub async fn other_cluster_client() -> Client {
    client_for(&other_cluster().admin_kubeconfig).await
}

/// A client with the controller's identity
/// (`system:serviceaccount:knit-system:knit`): only what RBAC grants it.
pub async fn knit_client() -> Client {
    client_for(&env().knit_kubeconfig).await
}

/// Creates a namespace no other test uses.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating a namespace");
    // Pods are admitted only once the serviceaccount controller has made the
    // namespace's `default` ServiceAccount.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    eventually(
        "the default ServiceAccount",
        std::time::Duration::from_secs(30),
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    name
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` saying what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A plugin or test fixture built by the test command
/// (`cargo build --profile plugin --target wasm32-wasip2`), by library name.
pub fn built_plugin(lib_name: &str) -> Vec<u8> {
    let path = built_plugin_path(lib_name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins and fixtures first (tests/run does)",
            path.display()
        )
    })
}

pub fn built_plugin_path(lib_name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target
        .join("wasm32-wasip2/plugin")
        .join(format!("{lib_name}.wasm"))
}
