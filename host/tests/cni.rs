//! The `knit-ipam` binary as a container runtime calls it, side by side with
//! the reference CNI IPAM plugin, Debian's `host-local`
//! (containernetworking-plugins), on the same configurations, each plugin
//! with its own state directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plugin {
    Knit,
    HostLocal,
}

const BOTH: [Plugin; 2] = [Plugin::Knit, Plugin::HostLocal];

impl Plugin {
    fn binary(self) -> PathBuf {
        match self {
            Plugin::Knit => env!("CARGO_BIN_EXE_knit-ipam").into(),
            Plugin::HostLocal => {
                assert!(
                    Path::new(HOST_LOCAL).exists(),
                    "{HOST_LOCAL} is missing: install containernetworking-plugins \
                     (apt-get install -y containernetworking-plugins; tests/run does)"
                );
                HOST_LOCAL.into()
            }
        }
    }
}

/// What a call printed and how it exited.
#[derive(Debug)]
struct Reply {
    ok: bool,
    stdout: Option<Value>,
    stderr: String,
}

impl Reply {
    fn result(&self) -> &Value {
        assert!(self.ok, "expected success, got {self:?}");
        self.stdout.as_ref().expect("a result on stdout")
    }

    fn addresses(&self) -> Vec<String> {
        self.result()["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().to_string())
            .collect()
    }

    /// The CNI error printed on failure: its code and message.
    fn error(&self) -> (u64, String) {
        assert!(!self.ok, "expected failure, got {self:?}");
        let error = self.stdout.as_ref().expect("an error on stdout");
        let code = error["code"].as_u64().expect("a numeric code");
        let msg = error["msg"].as_str().expect("a msg").to_string();
        assert!(!msg.is_empty());
        (code, msg)
    }
}

fn invoke(plugin: Plugin, command: &str, container: &str, ifname: &str, stdin: &[u8]) -> Reply {
    let output = spawn(plugin, command, container, ifname, stdin)
        .wait_with_output()
        .expect("waiting for the plugin");
    let stdout = String::from_utf8_lossy(&output.stdout);
    Reply {
        ok: output.status.success(),
        stdout: (!stdout.trim().is_empty())
            .then(|| serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn spawn(
    plugin: Plugin,
    command: &str,
    container: &str,
    ifname: &str,
    stdin: &[u8],
) -> std::process::Child {
    let mut child = Command::new(plugin.binary())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{container}"))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the plugin");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child
}

/// The compile cache the tests share, so the plugin compiles once per run.
fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("knit-ipam-cache")
}

/// One network configuration, given to both plugins.
struct Network {
    root: tempfile::TempDir,
    cni_version: &'static str,
    ipam: Value,
}

impl Network {
    fn new(cni_version: &'static str, ipam: Value) -> Self {
        Network {
            root: tempfile::tempdir().unwrap(),
            cni_version,
            ipam,
        }
    }

    fn config(&self, plugin: Plugin) -> Value {
        let mut ipam = self.ipam.clone();
        ipam["dataDir"] = json!(self.root.path().join(format!("{plugin:?}")));
        ipam["type"] = json!(match plugin {
            Plugin::Knit => "knit-ipam",
            Plugin::HostLocal => "host-local",
        });
        if plugin == Plugin::Knit && ipam.get("cacheDir").is_none() {
            ipam["cacheDir"] = json!(shared_cache());
        }
        json!({ "cniVersion": self.cni_version, "name": "net", "type": "bridge", "ipam": ipam })
    }

    fn call(&self, plugin: Plugin, command: &str, container: &str) -> Reply {
        self.call_if(plugin, command, container, "eth0")
    }

    fn call_if(&self, plugin: Plugin, command: &str, container: &str, ifname: &str) -> Reply {
        let config = serde_json::to_vec(&self.config(plugin)).unwrap();
        invoke(plugin, command, container, ifname, &config)
    }

    /// knit-ipam's state directory for this network.
    fn state_dir(&self) -> PathBuf {
        self.root.path().join("Knit").join("net")
    }
}

fn single_range() -> Value {
    json!({
        "ranges": [[{ "subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.250" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
    })
}

fn dual_stack() -> Value {
    json!({
        "ranges": [
            [{ "subnet": "10.1.2.0/24", "gateway": "10.1.2.254" }, { "subnet": "10.1.3.0/24" }],
            [{ "subnet": "fd00:1::/120" }],
        ],
        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "192.168.0.0/16", "gw": "10.1.2.254" }, { "dst": "::/0" }],
    })
}

fn legacy() -> Value {
    json!({ "subnet": "10.9.0.0/16", "rangeStart": "10.9.0.100", "gateway": "10.9.0.254" })
}

/// The structure of a result: its keys all the way down, with addresses
/// reduced to family and prefix length. Gateways and routes kept whole.
fn shape(value: &Value) -> Value {
    let mut value = value.clone();
    for ip in value["ips"].as_array_mut().into_iter().flatten() {
        let address = ip["address"].as_str().unwrap();
        let (address, prefix) = address.split_once('/').unwrap();
        let family = if address.contains(':') { "v6" } else { "v4" };
        ip["address"] = json!(format!("{family}/{prefix}"));
    }
    value
}

#[test]
fn results_have_host_locals_shape() {
    for (what, ipam) in [
        ("single range", single_range()),
        ("dual stack", dual_stack()),
        ("legacy subnet", legacy()),
    ] {
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            let network = Network::new(version, ipam.clone());
            let [knit, host_local] =
                BOTH.map(|plugin| network.call(plugin, "ADD", "c1").result().clone());
            assert_eq!(
                shape(&knit),
                shape(&host_local),
                "{what}, cniVersion {version}"
            );
            assert!(!knit["ips"].as_array().unwrap().is_empty());
            // Sequential from the same start: the very same addresses.
            assert_eq!(knit, host_local, "{what}, cniVersion {version}");
        }
    }
}

#[test]
fn sequential_hands_out_what_host_local_does() {
    // Six addresses (.10 to .15, the gateway .1 outside), plus IPv6.
    let network = Network::new(
        "1.0.0",
        json!({ "ranges": [
            [{ "subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10", "rangeEnd": "10.5.0.15" }],
            [{ "subnet": "fd00:5::/125" }],
        ]}),
    );
    let steps = [
        ("ADD", "a"),
        ("ADD", "b"),
        ("ADD", "c"),
        ("DEL", "b"),
        ("ADD", "d"),
        ("ADD", "e"),
        ("DEL", "a"),
        ("ADD", "f"), // wraps: the first free one after the cursor
        ("DEL", "d"),
        ("ADD", "g"),
        ("ADD", "h"),
        ("DEL", "never-added"),
        ("ADD", "i"),
        ("ADD", "j"), // all six IPv4 addresses are held now
    ];
    let mut handed_out = Vec::new();
    for (command, container) in steps {
        let [knit, host_local] = BOTH.map(|plugin| network.call(plugin, command, container));
        assert_eq!(
            knit.ok, host_local.ok,
            "{command} {container}: {knit:?} vs {host_local:?}"
        );
        if command == "ADD" && knit.ok {
            assert_eq!(
                knit.addresses(),
                host_local.addresses(),
                "{command} {container}"
            );
            handed_out.push(knit.addresses()[0].clone());
        }
    }
    assert_eq!(
        handed_out,
        [
            "10.5.0.10/24",
            "10.5.0.11/24",
            "10.5.0.12/24",
            "10.5.0.13/24",
            "10.5.0.14/24",
            "10.5.0.15/24",
            "10.5.0.10/24",
            "10.5.0.11/24",
            "10.5.0.13/24",
        ]
    );
    // The last ADD failed in both.
    let (code, msg) = network.call(Plugin::Knit, "ADD", "j").error();
    assert_eq!(code, 100);
    assert_eq!(msg, "no free address in range set 0 (10.5.0.10-10.5.0.15)");
}

#[test]
fn add_is_idempotent() {
    let network = Network::new("1.0.0", dual_stack());
    let first = network.call(Plugin::Knit, "ADD", "c1").result().clone();
    let again = network.call(Plugin::Knit, "ADD", "c1").result().clone();
    assert_eq!(first, again);
    // Another interface of the same container is another attachment.
    let eth1 = network.call_if(Plugin::Knit, "ADD", "c1", "eth1");
    assert_ne!(
        eth1.addresses(),
        network.call(Plugin::Knit, "ADD", "c1").addresses()
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(network.state_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["allocations"].as_array().unwrap().len(), 2);
}

#[test]
fn del_of_an_unknown_container_succeeds() {
    let network = Network::new("1.0.0", single_range());
    for plugin in BOTH {
        let reply = network.call(plugin, "DEL", "nobody");
        assert!(reply.ok && reply.stdout.is_none(), "{plugin:?}: {reply:?}");
    }
    // Nothing is created for a network never used.
    assert!(!network.state_dir().exists());
    for plugin in BOTH {
        network.call(plugin, "ADD", "c1").result();
        let reply = network.call(plugin, "DEL", "nobody");
        assert!(reply.ok, "{plugin:?}: {reply:?}");
        // And the real holder keeps its address.
        assert!(network.call(plugin, "CHECK", "c1").ok, "{plugin:?}");
    }
}

#[test]
fn check_knows_its_containers() {
    let network = Network::new("1.0.0", single_range());
    for plugin in BOTH {
        network.call(plugin, "ADD", "c1").result();
        let known = network.call(plugin, "CHECK", "c1");
        assert!(known.ok && known.stdout.is_none(), "{plugin:?}: {known:?}");
        let (_, msg) = network.call(plugin, "CHECK", "c2").error();
        assert!(msg.contains("c2"), "{plugin:?}: {msg}");
        network.call(plugin, "DEL", "c1");
        network.call(plugin, "CHECK", "c1").error();
    }
    let (code, msg) = network.call(Plugin::Knit, "CHECK", "c2").error();
    assert_eq!(code, 103);
    assert!(msg.contains("holds no address"), "{msg}");
}

#[test]
fn malformed_config_is_a_cni_error() {
    let bad_json = b"{\"cniVersion\": \"1.0.0\", \"name\": ".to_vec();
    let with_ipam = |ipam: Value| {
        serde_json::to_vec(&json!({ "cniVersion": "1.0.0", "name": "net", "ipam": ipam })).unwrap()
    };
    let cases = [
        ("bad JSON", bad_json, 6, "decoding"),
        (
            "bad subnet",
            with_ipam(json!({ "type": "x", "subnet": "10.0.0.0/33" })),
            7,
            "ipam.subnet",
        ),
        (
            "rangeStart outside the subnet",
            with_ipam(
                json!({ "type": "x", "ranges": [[{ "subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1" }]] }),
            ),
            7,
            "ipam.ranges[0][0].rangeStart",
        ),
    ];
    for (what, stdin, code, field) in &cases {
        for plugin in BOTH {
            let reply = invoke(plugin, "ADD", "c1", "eth0", stdin);
            let (got, msg) = reply.error();
            if plugin == Plugin::Knit {
                assert_eq!(got, *code, "{what}: {msg}");
                assert!(msg.contains(field), "{what}: {msg}");
                assert!(reply.stdout.as_ref().unwrap()["cniVersion"].is_string());
            }
        }
    }
    // Fields host-local would silently ignore are errors that name them.
    let knit_only = [
        (
            json!({ "type": "x", "subnet": "10.0.0.0/24", "bogus": 1 }),
            "ipam.bogus",
        ),
        (
            json!({ "type": "x", "ranges": [[{ "subnet": "10.0.0.0/24", "gateway": 5 }]] }),
            "ipam.ranges[0][0].gateway",
        ),
        (
            json!({ "type": "x", "subnet": "10.0.0.0/24", "mode": "global" }),
            "ipam.mode",
        ),
        (
            json!({ "type": "x", "subnet": "10.0.0.0/24", "strategy": { "plugin": "ipam-sequential", "config": { "step": "2" } } }),
            "ipam.strategy.config",
        ),
        (
            json!({ "type": "x", "mode": "cluster", "pool": "p" }),
            "ipam.kubeconfig",
        ),
        (json!({ "type": "x", "subnet": "10.0.0.0/31" }), "too small"),
    ];
    let data_dir = tempfile::tempdir().unwrap();
    for (mut ipam, field) in knit_only {
        // Cluster mode keeps no local state: it refuses a dataDir.
        if ipam.get("mode").is_none() {
            ipam["dataDir"] = json!(data_dir.path());
            ipam["cacheDir"] = json!(shared_cache());
        }
        let (code, msg) = invoke(Plugin::Knit, "ADD", "c1", "eth0", &with_ipam(ipam)).error();
        assert_eq!(code, 7, "{msg}");
        assert!(msg.contains(field), "{field}: {msg}");
    }
}

#[test]
fn exhaustion_is_a_clear_error() {
    let network = Network::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.6.0.0/29", "rangeStart": "10.6.0.2", "rangeEnd": "10.6.0.3" }]] }),
    );
    for plugin in BOTH {
        network.call(plugin, "ADD", "a").result();
        network.call(plugin, "ADD", "b").result();
        network.call(plugin, "ADD", "c").error();
    }
    let (code, msg) = network.call(Plugin::Knit, "ADD", "c").error();
    assert_eq!(code, 100);
    assert_eq!(msg, "no free address in range set 0 (10.6.0.2-10.6.0.3)");
}

#[test]
fn version_and_version_checks() {
    let reply = invoke(
        Plugin::Knit,
        "VERSION",
        "",
        "",
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(
        reply.result(),
        &json!({
            "cniVersion": "1.1.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        })
    );
    let network = Network::new("0.2.0", single_range());
    let (code, _) = network.call(Plugin::Knit, "ADD", "c1").error();
    assert_eq!(code, 1);
    // GC and STATUS came with 1.1.0.
    let old = Network::new("1.0.0", single_range());
    for command in ["GC", "STATUS"] {
        let (code, msg) = old.call(Plugin::Knit, command, "").error();
        assert_eq!(code, 1, "{command}: {msg}");
    }
}

#[test]
fn gc_releases_everything_not_listed() {
    let network = Network::new("1.1.0", dual_stack());
    for container in ["a", "b", "c"] {
        network.call(Plugin::Knit, "ADD", container).result();
    }
    let mut config = network.config(Plugin::Knit);
    config["cni.dev/valid-attachments"] = json!([{ "containerID": "b", "ifname": "eth0" }]);
    let gc = invoke(
        Plugin::Knit,
        "GC",
        "",
        "",
        &serde_json::to_vec(&config).unwrap(),
    );
    assert!(gc.ok && gc.stdout.is_none(), "{gc:?}");
    assert!(network.call(Plugin::Knit, "CHECK", "b").ok);
    network.call(Plugin::Knit, "CHECK", "a").error();
    network.call(Plugin::Knit, "CHECK", "c").error();
    // GC without the list would release everything by mistake: refused.
    let (code, msg) = network.call(Plugin::Knit, "GC", "").error();
    assert_eq!(code, 7);
    assert!(msg.contains("cni.dev/valid-attachments"), "{msg}");
}

#[test]
fn status_says_whether_add_can_succeed() {
    let tiny = json!({ "ranges": [[{ "subnet": "10.7.0.0/29", "rangeStart": "10.7.0.2", "rangeEnd": "10.7.0.2" }]] });
    let network = Network::new("1.1.0", tiny.clone());
    let ready = network.call(Plugin::Knit, "STATUS", "");
    assert!(ready.ok && ready.stdout.is_none(), "{ready:?}");
    network.call(Plugin::Knit, "ADD", "a").result();
    let (code, msg) = network.call(Plugin::Knit, "STATUS", "").error();
    assert_eq!(code, 50);
    assert!(msg.contains("no free address"), "{msg}");

    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("broken.wasm"), b"not a component").unwrap();
    for (plugin, expected) in [
        ("broken", "broken.wasm"),
        ("missing", "no strategy plugin missing"),
    ] {
        let mut ipam = tiny.clone();
        ipam["strategy"] = json!({ "plugin": plugin });
        ipam["pluginsDir"] = json!(plugins.path());
        let network = Network::new("1.1.0", ipam);
        let (code, msg) = network.call(Plugin::Knit, "STATUS", "").error();
        assert_eq!(code, 50, "{msg}");
        assert!(msg.contains(expected), "{msg}");
    }
}

#[test]
fn crash_leftovers_do_not_corrupt_state() {
    let network = Network::new("1.0.0", single_range());
    let first = network.call(Plugin::Knit, "ADD", "a").addresses();
    let state_file = network.state_dir().join("state.json");

    // A crash between writing the temp file and renaming it leaves a torn
    // temp file: never read, overwritten by the next save.
    std::fs::write(
        network.state_dir().join(".state.json.tmp"),
        b"{\"allocations\": [{\"cont",
    )
    .unwrap();
    let second = network.call(Plugin::Knit, "ADD", "b").addresses();
    assert_ne!(first, second);
    assert_eq!(network.call(Plugin::Knit, "ADD", "a").addresses(), first);

    // A holder of the lock that dies (here killed) releases it with its
    // file descriptors; until then ADD waits instead of racing it.
    let lock = network.state_dir().join("lock");
    let mut holder = Command::new("flock")
        .arg("--close")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock (util-linux)");
    let file = std::fs::File::open(&lock).unwrap();
    let started = Instant::now();
    while file.try_lock().is_ok() {
        file.unlock().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let config = serde_json::to_vec(&network.config(Plugin::Knit)).unwrap();
    let mut waiting = spawn(Plugin::Knit, "ADD", "c", "eth0", &config);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "ADD did not wait for the lock"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let output = waiting.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state["allocations"].as_array().unwrap().len(), 3);

    // A state file damaged from outside is refused and left alone, not
    // replaced by an empty state that would hand out held addresses.
    std::fs::write(&state_file, b"{\"allocations\": [").unwrap();
    let (code, msg) = network.call(Plugin::Knit, "ADD", "d").error();
    assert_eq!(code, 5);
    assert!(msg.contains("damaged"), "{msg}");
    assert_eq!(std::fs::read(&state_file).unwrap(), b"{\"allocations\": [");
}

#[test]
fn strategies_come_from_the_plugins_dir() {
    let plugins = tempfile::tempdir().unwrap();
    let copy = |lib: &str, as_file: &str| {
        let built = knit_tests::built_plugin_path(lib);
        std::fs::copy(&built, plugins.path().join(as_file)).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build the plugins first (tests/run does)",
                built.display()
            )
        });
    };
    let ranges = json!([[{ "subnet": "10.8.0.0/24" }]]);
    let network_with = |strategy: Value| {
        Network::new(
            "1.0.0",
            json!({ "ranges": ranges, "pluginsDir": plugins.path(), "strategy": strategy }),
        )
    };

    // A name no built-in has, so only the directory can serve it: the
    // dense-pack build fills the hole a DEL leaves, sequential would not.
    copy("ipam_dense_pack", "packer.wasm");
    for (strategy, expected) in [
        ("packer", "10.8.0.3/24"),
        ("ipam-sequential", "10.8.0.5/24"),
    ] {
        let network = network_with(json!({ "plugin": strategy }));
        for container in ["a", "b", "c"] {
            network.call(Plugin::Knit, "ADD", container).result();
        }
        network.call(Plugin::Knit, "DEL", "b");
        assert_eq!(
            network.call(Plugin::Knit, "ADD", "d").addresses(),
            [expected],
            "{strategy}"
        );
    }

    // A file named as cargo builds it serves when it describes itself as
    // the plugin asked for...
    copy("fixture_swap_v2", "fixture_swap_v2.wasm");
    network_with(json!({ "plugin": "fixture-swap-v2" }))
        .call(Plugin::Knit, "ADD", "a")
        .result();
    // ...and not when it is another plugin under that name.
    copy("ipam_dense_pack", "fixture_swap_v1.wasm");
    let (code, msg) = network_with(json!({ "plugin": "fixture-swap-v1" }))
        .call(Plugin::Knit, "ADD", "a")
        .error();
    assert_eq!(code, 101);
    assert!(
        msg.contains("is plugin ipam-dense-pack, not fixture-swap-v1"),
        "{msg}"
    );

    // The host checks every answer, whichever plugin gave it.
    copy("fixture_hostile", "hostile.wasm");
    let (code, msg) =
        network_with(json!({ "plugin": "hostile", "config": { "mode": "out-of-range" } }))
            .call(Plugin::Knit, "ADD", "a")
            .error();
    assert_eq!(code, 101);
    assert!(
        msg.contains("refuses") && msg.contains("outside the pool"),
        "{msg}"
    );

    // Random is seeded from container and interface: it replays.
    let random = |container: &str| {
        network_with(json!({ "plugin": "ipam-random" }))
            .call(Plugin::Knit, "ADD", container)
            .addresses()
    };
    assert_eq!(random("r1"), random("r1"));
    let spread: BTreeSet<Vec<String>> = ["r1", "r2", "r3", "r4"].map(random).into();
    assert!(spread.len() > 1, "{spread:?}");
}

#[test]
fn a_warm_invocation_does_not_recompile() {
    let cache = tempfile::tempdir().unwrap();
    let mut ipam = single_range();
    ipam["cacheDir"] = json!(cache.path());
    let network = Network::new("1.0.0", ipam);
    let compiled = || -> Vec<(PathBuf, SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.path(), entry.metadata().unwrap().modified().unwrap())
            })
            .collect();
        files.sort();
        files
    };
    network.call(Plugin::Knit, "ADD", "a").result();
    let after_first = compiled();
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    assert!(after_first[0].0.extension().is_some_and(|e| e == "cwasm"));
    network.call(Plugin::Knit, "ADD", "b").result();
    network.call(Plugin::Knit, "DEL", "a");
    network.call(Plugin::Knit, "ADD", "c").result();
    // Recompiling would have replaced the file (write and rename).
    assert_eq!(compiled(), after_first);

    // An unwritable cache directory is not an error: a fallback serves.
    let mut ipam = single_range();
    ipam["cacheDir"] = json!("/proc/knit-ipam-cache");
    let network = Network::new("1.0.0", ipam);
    let reply = network.call(Plugin::Knit, "ADD", "a");
    reply.result();
    assert!(reply.stderr.is_empty(), "{}", reply.stderr);
}

/// `fd00:<net>:0:<n>::/64` for n in 1..=count, as range set entries.
fn slash64s(net: u16, count: u16) -> Vec<Value> {
    (1..=count)
        .map(|n| json!({ "subnet": format!("fd00:{net:x}:0:{n:x}::/64") }))
        .collect()
}

#[test]
fn range_sets_of_wide_ipv6_subnets_hand_out_from_every_subnet() {
    // Two /64s once summed to zero offsets ("no free address"), three
    // wrapped onto the first. Each subnet but the last is cut to one
    // address so the ADDs walk through all of them.
    for count in [2u16, 3, 16] {
        let mut set = slash64s(count, count);
        let mut expected = Vec::new();
        for (n, range) in set.iter_mut().enumerate().take(count as usize - 1) {
            let only = format!("fd00:{count:x}:0:{:x}::a", n + 1);
            range["rangeStart"] = json!(only);
            range["rangeEnd"] = json!(only);
            expected.push(format!("{only}/64"));
        }
        expected.push(format!("fd00:{count:x}:0:{count:x}::2/64"));
        let network = Network::new("1.0.0", json!({ "ranges": [set] }));
        for (i, address) in expected.iter().enumerate() {
            let container = format!("c{i}");
            let [knit, host_local] =
                BOTH.map(|plugin| network.call(plugin, "ADD", &container).addresses());
            assert_eq!(knit, std::slice::from_ref(address), "{count} /64s, ADD {i}");
            assert_eq!(knit, host_local, "{count} /64s, ADD {i}");
        }
    }
}

#[test]
fn the_ipv6_subnet_router_anycast_address_is_never_handed_out() {
    // host-local hands out fd00:7:: when rangeStart names it; knit-ipam,
    // as for the IPv4 network address, never does.
    let network = Network::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "fd00:7::/120", "rangeStart": "fd00:7::", "gateway": "fd00:7::ff" }]] }),
    );
    assert_eq!(
        network.call(Plugin::HostLocal, "ADD", "a").addresses(),
        ["fd00:7::/120"]
    );
    assert_eq!(
        network.call(Plugin::Knit, "ADD", "a").addresses(),
        ["fd00:7::1/120"]
    );
    // By default neither does: rangeStart is the address after it.
    let network = Network::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "fd00:8::/64" }]] }),
    );
    let [knit, host_local] = BOTH.map(|plugin| network.call(plugin, "ADD", "a").addresses());
    assert_eq!(knit, ["fd00:8::2/64"]);
    assert_eq!(knit, host_local);
}

#[test]
fn overlapping_range_sets_are_refused_naming_the_field() {
    let top = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120";
    let cases = [
        (
            "ranges of two sets share .99",
            json!([
                [{ "subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99" }],
                [{ "subnet": "10.1.0.0/24" }, { "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.99" }],
            ]),
            "ipam.ranges[1][1]: 10.0.0.99-10.0.0.254 overlaps 10.0.0.1-10.0.0.99 of ipam.ranges[0][0]",
        ),
        (
            "two sets at the top of IPv6",
            json!([[{ "subnet": top }], [{ "subnet": top }]]),
            "ipam.ranges[1][0]:",
        ),
        (
            "two subnets of one set",
            json!([[{ "subnet": "10.2.0.0/30" }, { "subnet": "10.2.0.0/29" }]]),
            "ipam.ranges[0][1].subnet: 10.2.0.0/29 overlaps 10.2.0.0/30",
        ),
    ];
    for (what, ranges, expected) in cases {
        let network = Network::new("1.0.0", json!({ "ranges": ranges }));
        let (code, msg) = network.call(Plugin::Knit, "ADD", "a").error();
        assert_eq!(code, 7, "{what}: {msg}");
        assert!(msg.starts_with(expected), "{what}: {msg}");
    }
}

#[test]
fn plugins_are_named_and_directories_absolute() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    let elsewhere = root.path().join("elsewhere");
    for dir in [&plugins, &elsewhere] {
        std::fs::create_dir(dir).unwrap();
    }
    // A plugin outside the plugins directory that a path would reach.
    let built = knit_tests::built_plugin_path("ipam_dense_pack");
    std::fs::copy(&built, elsewhere.join("evil.wasm"))
        .unwrap_or_else(|e| panic!("{}: {e}; build the plugins first", built.display()));
    let outside = elsewhere.join("evil");
    let cases = [
        ("a relative path", json!({ "plugin": "../elsewhere/evil" })),
        (
            "an absolute path",
            json!({ "plugin": outside.to_str().unwrap() }),
        ),
    ];
    for (what, strategy) in cases {
        let network = Network::new(
            "1.0.0",
            json!({ "ranges": [[{ "subnet": "10.4.0.0/24" }]], "pluginsDir": plugins, "strategy": strategy }),
        );
        let (code, msg) = network.call(Plugin::Knit, "ADD", "a").error();
        assert_eq!(code, 7, "{what}: {msg}");
        assert!(msg.starts_with("ipam.strategy.plugin: "), "{what}: {msg}");
    }

    // Relative directories would land under the runtime's working directory.
    let cwd = tempfile::tempdir().unwrap();
    for field in ["dataDir", "pluginsDir", "cacheDir"] {
        let mut config = Network::new("1.0.0", single_range()).config(Plugin::Knit);
        config["ipam"][field] = json!("relative/dir");
        let output = Command::new(Plugin::Knit.binary())
            .current_dir(cwd.path())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "a")
            .env("CNI_NETNS", "/var/run/netns/a")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(&serde_json::to_vec(&config).unwrap())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(!output.status.success(), "{field}");
        let error: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(error["code"], 7, "{field}: {error}");
        let msg = error["msg"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "ipam.{field}: \"relative/dir\" is not an absolute path"
            )),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
fn long_names_are_echoed_only_in_part() {
    let network = Network::new("1.0.0", single_range());
    let long = "c".repeat(20_000);
    let (code, msg) = network.call(Plugin::Knit, "CHECK", &long).error();
    assert_eq!(code, 103);
    assert!(msg.len() < 400, "{} bytes: {}…", msg.len(), &msg[..200]);
    assert!(msg.contains(&format!("\"{}\"…", "c".repeat(128))), "{msg}");
}

#[test]
fn del_succeeds_on_a_damaged_state_and_add_refuses_it() {
    let network = Network::new("1.0.0", single_range());
    network.call(Plugin::Knit, "ADD", "a").result();
    let state_file = network.state_dir().join("state.json");
    std::fs::write(&state_file, b"{\"allocations\": [").unwrap();
    // Teardown must not wedge on a file nobody can read: DEL succeeds,
    // says why on stderr, and leaves the file for an operator.
    let del = network.call(Plugin::Knit, "DEL", "a");
    assert!(del.ok && del.stdout.is_none(), "{del:?}");
    assert!(
        del.stderr.contains("damaged") && del.stderr.contains("state.json"),
        "{}",
        del.stderr
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), b"{\"allocations\": [");
    // ADD does not guess who holds what.
    let (code, msg) = network.call(Plugin::Knit, "ADD", "b").error();
    assert_eq!(code, 5);
    assert!(
        msg.contains(&*state_file.to_string_lossy()) && msg.contains("damaged"),
        "{msg}"
    );
}

#[test]
fn a_slow_strategy_does_not_hold_up_del() {
    use std::os::unix::fs::OpenOptionsExt;

    let network = Network::new("1.0.0", single_range());
    network.call(Plugin::Knit, "ADD", "other").result();

    // The slow ADD's strategy is the hostile plugin spinning until its
    // deadline, and its bytes come through a FIFO: loading it blocks until
    // the test writes them, so the ADD is provably mid-way (state read,
    // strategy loading) for as long as the test likes.
    let plugins = tempfile::tempdir().unwrap();
    let fifo = plugins.path().join("hostile.wasm");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let mut slow = network.config(Plugin::Knit);
    slow["ipam"]["pluginsDir"] = json!(plugins.path());
    slow["ipam"]["strategy"] = json!({ "plugin": "hostile", "config": { "mode": "spin" } });
    let mut add = spawn(
        Plugin::Knit,
        "ADD",
        "slow",
        "eth0",
        &serde_json::to_vec(&slow).unwrap(),
    );
    // A writer can open the FIFO only once the ADD opened it to read.
    let writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
        {
            Ok(writer) => break writer,
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                if let Some(status) = add.try_wait().unwrap() {
                    panic!("ADD ended ({status}) before loading its strategy");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("opening {}: {error}", fifo.display()),
        }
    };

    let config = serde_json::to_vec(&network.config(Plugin::Knit)).unwrap();
    let mut del = spawn(Plugin::Knit, "DEL", "other", "eth0", &config);
    // Only a guard against hanging when DEL waits for the ADD (which waits
    // for the test): the ADD cannot end before the test feeds it.
    let guard = Instant::now() + Duration::from_secs(60);
    let del_status = loop {
        if let Some(status) = del.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > guard {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let add_was_running = add.try_wait().unwrap().is_none();

    // Feed the ADD its plugin: it spins until its deadline and fails.
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    drop(writer);
    use std::io::Write;
    feed.write_all(&std::fs::read(knit_tests::built_plugin_path("fixture_hostile")).unwrap())
        .unwrap();
    drop(feed);
    let added = add.wait_with_output().unwrap();

    assert!(
        del_status.is_some(),
        "DEL waited for the slow ADD: the network's lock was held while it loaded its strategy"
    );
    assert!(del_status.unwrap().success());
    assert!(add_was_running, "the ADD ended before the DEL");
    assert!(!added.status.success());
    let error: Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(error["code"], 101, "{error}");
    assert!(
        error["msg"].as_str().unwrap().contains("deadline"),
        "{error}"
    );
    // The DEL took effect; the slow ADD left nothing behind.
    network.call(Plugin::Knit, "CHECK", "other").error();
    network.call(Plugin::Knit, "CHECK", "slow").error();
}
