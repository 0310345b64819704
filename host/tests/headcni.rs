//! `headcni` as a container runtime drives it, on real kernel networking:
//! `cnitool` (the CNI project's runtime-side tool) runs the seed's two
//! configurations unchanged (`examples/headcni/`) and a chain with the
//! reference `tuning`, `portmap` and `bandwidth` plugins, against pods in
//! network namespaces this test makes. The node is a namespace too, so the
//! machine's own interfaces, routes and forwarding are never touched and
//! nothing has a route out. Needs root (CI runs as root).
//!
//! The seed's configurations name fixed state paths (host-local's
//! `/var/lib/cni/networks/tailscale-cni`, headcni-ipam's
//! `/var/lib/headcni/networks/tailscale-cni`), so the tests run one at a
//! time and start those directories empty.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

const SEED_HOST_LOCAL: &str = "10-headcni-host-local.conf";
const SEED_HEADCNI_IPAM: &str = "10-headcni-headcni-ipam.conf";
const SEED_NETWORK: &str = "tailscale-cni";
const HOST_LOCAL_STATE: &str = "/var/lib/cni/networks/tailscale-cni";
const HEADCNI_IPAM_STATE: &str = "/var/lib/headcni/networks/tailscale-cni";
const GATEWAY: &str = "10.244.0.1";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NAMES: AtomicUsize = AtomicUsize::new(0);

/// Takes the lock and empties the seed networks' state.
fn serial() -> MutexGuard<'static, ()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "the HeadCNI tests make network namespaces and veths: run them as root (CI does)"
    );
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for dir in [HOST_LOCAL_STATE, HEADCNI_IPAM_STATE] {
        let _ = std::fs::remove_dir_all(dir);
    }
    guard
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"))
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    ok(Command::new("ip").args(args))
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        NAMES.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `program args` run inside this namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    /// One reply within 5 s (ping resends each second: a new IPv6 link
    /// may take a moment to finish its own address's DAD).
    fn pings(&self, address: &str) -> bool {
        run(&mut self.exec("ping", &["-c", "1", "-w", "5", address]))
            .status
            .success()
    }

    fn links(&self) -> Vec<Value> {
        serde_json::from_str(&ip(&["-j", "-n", &self.name, "link", "show"])).unwrap()
    }

    fn has_link(&self, name: &str) -> bool {
        self.links().iter().any(|link| link["ifname"] == name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// The node: a namespace where the plugins run, with configurations in
/// its own directory and `CNI_PATH` = the built binaries, then Debian's
/// reference plugins.
struct Node {
    netns: Netns,
    conf_dir: tempfile::TempDir,
}

fn built_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_headcni"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cni_path() -> String {
    assert!(
        Path::new("/usr/lib/cni/host-local").exists(),
        "/usr/lib/cni/host-local is missing: apt-get install containernetworking-plugins (tests/run does)"
    );
    format!("{}:/usr/lib/cni", built_dir().display())
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(knit_tests::repo().join("examples/headcni").join(name))
        .expect("the seed's configuration")
}

/// What cnitool or the plugin printed, and whether it succeeded.
#[derive(Debug)]
struct Reply {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Reply {
    fn from(output: Output) -> Reply {
        Reply {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn result(&self) -> Value {
        assert!(self.ok, "expected success: {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| panic!("{error}: {self:?}"))
    }

    fn error(&self) -> (u64, String) {
        assert!(!self.ok, "expected failure: {self:?}");
        let error: Value =
            serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        (
            error["code"].as_u64().unwrap(),
            error["msg"].as_str().unwrap().to_string(),
        )
    }
}

impl Node {
    /// A node whose configuration directory holds `files`.
    fn new(files: &[(&str, Vec<u8>)]) -> Node {
        let node = Node {
            netns: Netns::new("hcn"),
            conf_dir: tempfile::tempdir().unwrap(),
        };
        for (name, bytes) in files {
            std::fs::write(node.conf_dir.path().join(name), bytes).unwrap();
        }
        node
    }

    fn cnitool(&self, args: &[&str], capability_args: Option<&Value>) -> Reply {
        let mut env = vec![];
        let capability_args = capability_args.map(Value::to_string);
        if let Some(capability_args) = &capability_args {
            env.push(("CAP_ARGS", capability_args.as_str()));
        }
        self.cnitool_with(args, &env)
    }

    /// cnitool with `env` on top of this node's NETCONFPATH and CNI_PATH.
    fn cnitool_with(&self, args: &[&str], env: &[(&str, &str)]) -> Reply {
        let tool = knit_tests::tool("cnitool");
        let mut command = self.netns.exec(tool.to_str().unwrap(), args);
        command
            .env("NETCONFPATH", self.conf_dir.path())
            .env("CNI_PATH", cni_path())
            .env_remove("CNI_IFNAME")
            .envs(env.iter().copied());
        Reply::from(run(&mut command))
    }

    fn add(&self, network: &str, pod: &Netns) -> Value {
        self.cnitool(&["add", network, &pod.path()], None).result()
    }

    fn del(&self, network: &str, pod_path: &str) {
        let reply = self.cnitool(&["del", network, pod_path], None);
        assert!(reply.ok, "DEL failed: {reply:?}");
    }

    /// `headcni` called directly, as a runtime would, with `conf` on stdin.
    fn plugin(&self, command: &str, container: &str, pod: Option<&Netns>, conf: &Value) -> Reply {
        self.call(env!("CARGO_BIN_EXE_headcni"), command, container, pod, conf)
    }

    fn call(
        &self,
        binary: &str,
        command: &str,
        container: &str,
        pod: Option<&Netns>,
        conf: &Value,
    ) -> Reply {
        let child = spawn_with_input(
            &mut self.plugin_command(binary, command, container, pod),
            conf,
        );
        Reply::from(child.wait_with_output().unwrap())
    }

    /// `binary` in the node as a runtime starts it: the CNI variables set,
    /// stdin, stdout and stderr piped.
    fn plugin_command(
        &self,
        binary: &str,
        command: &str,
        container: &str,
        pod: Option<&Netns>,
    ) -> Command {
        let mut child = self.netns.exec(binary, &[]);
        child
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path())
            .env("CNI_NETNS", pod.map(Netns::path).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        child
    }

    /// The host ends HeadCNI made on this node.
    fn host_veths(&self) -> BTreeSet<String> {
        self.netns
            .links()
            .iter()
            .filter_map(|link| link["ifname"].as_str())
            .filter(|name| name.starts_with("hcni"))
            .map(str::to_string)
            .collect()
    }
}

/// Starts `command` and writes `conf` to its stdin.
fn spawn_with_input(command: &mut Command, conf: &Value) -> std::process::Child {
    use std::io::Write;
    let mut child = command.spawn().expect("starting the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child
}

/// The IPv4 address of `eth0` in `pod` as the kernel has it, and its MAC
/// and MTU.
fn kernel_eth0(pod: &Netns) -> (String, String, u64) {
    let links: Vec<Value> =
        serde_json::from_str(&ip(&["-j", "-n", &pod.name, "addr", "show", "dev", "eth0"])).unwrap();
    let eth0 = &links[0];
    let inet = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|address| address["family"] == "inet")
        .expect("an IPv4 address on eth0");
    (
        format!("{}/{}", inet["local"].as_str().unwrap(), inet["prefixlen"]),
        eth0["address"].as_str().unwrap().to_string(),
        eth0["mtu"].as_u64().unwrap(),
    )
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_string()
}

fn bare(address: &str) -> &str {
    address.split('/').next().unwrap()
}

/// The result's pod interface and address agree with the kernel.
fn assert_result_is_the_kernels(result: &Value, pod: &Netns) {
    let (address, mac, mtu) = kernel_eth0(pod);
    assert_eq!(address_of(result), address);
    let interfaces = result["interfaces"].as_array().unwrap();
    let index = result["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(interfaces[index]["name"], "eth0");
    assert_eq!(interfaces[index]["sandbox"], pod.path());
    assert_eq!(interfaces[index]["mac"], mac.as_str());
    assert_eq!(mtu, 1420, "the seed's mtu");
    let routes: Vec<Value> =
        serde_json::from_str(&ip(&["-j", "-n", &pod.name, "route", "show", "default"])).unwrap();
    assert_eq!(routes[0]["gateway"], GATEWAY, "{routes:?}");
    assert_eq!(result["dns"]["nameservers"], json!(["10.96.0.10"]));
}

/// host-local's record of who holds which address.
fn host_local_holders() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(HOST_LOCAL_STATE) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            name.parse::<std::net::IpAddr>().ok()?;
            std::fs::read_to_string(entry.path()).ok()
        })
        .collect()
}

#[test]
fn seed_host_local_config_wires_pods_to_each_other_and_the_node() {
    let _serial = serial();
    let node = Node::new(&[(SEED_HOST_LOCAL, example(SEED_HOST_LOCAL))]);
    let (a, b) = (Netns::new("hcp"), Netns::new("hcp"));
    let result_a = node.add(SEED_NETWORK, &a);
    let result_b = node.add(SEED_NETWORK, &b);
    for (result, pod) in [(&result_a, &a), (&result_b, &b)] {
        assert_result_is_the_kernels(result, pod);
        let host = result["ips"][0]["address"].as_str().unwrap();
        let last: u8 = bare(host).rsplit('.').next().unwrap().parse().unwrap();
        assert!(last >= 10, "{host} is below the seed's rangeStart");
    }
    let (address_a, address_b) = (address_of(&result_a), address_of(&result_b));
    assert_ne!(address_a, address_b);
    assert!(a.pings(bare(&address_b)), "pod to pod");
    assert!(b.pings(bare(&address_a)), "pod to pod, back");
    assert!(a.pings(GATEWAY), "pod to node");
    assert!(node.netns.pings(bare(&address_a)), "node to pod");
    let check = node.cnitool(&["check", SEED_NETWORK, &a.path()], None);
    assert!(check.ok, "CHECK of a pod as made: {check:?}");

    // DEL removes the veth and frees the address; twice is fine.
    let host_veth = result_a["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(node.netns.has_link(&host_veth));
    node.del(SEED_NETWORK, &a.path());
    assert!(!node.netns.has_link(&host_veth));
    assert!(!a.has_link("eth0"));
    assert_eq!(host_local_holders().len(), 1, "a's address is free");
    node.del(SEED_NETWORK, &a.path());

    // DEL after the namespace is gone: the kernel took the pair with it,
    // the address is still to free.
    let b_path = b.path();
    drop(b);
    node.del(SEED_NETWORK, &b_path);
    assert!(host_local_holders().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn seed_headcni_ipam_config_hands_out_addresses_in_order() {
    let _serial = serial();
    let node = Node::new(&[(SEED_HEADCNI_IPAM, example(SEED_HEADCNI_IPAM))]);
    let pods = [Netns::new("hcp"), Netns::new("hcp"), Netns::new("hcp")];
    let addresses: Vec<String> = pods
        .iter()
        .map(|pod| address_of(&node.add(SEED_NETWORK, pod)))
        .collect();
    assert_eq!(
        addresses,
        ["10.244.0.2/24", "10.244.0.3/24", "10.244.0.4/24"],
        "sequential"
    );
    for pod in &pods {
        let (address, _, mtu) = kernel_eth0(pod);
        assert!(addresses.contains(&address));
        assert_eq!(mtu, 1420);
    }
    assert!(pods[0].pings("10.244.0.4"));
    assert!(pods[2].pings(GATEWAY));
    assert!(
        Path::new(HEADCNI_IPAM_STATE).is_dir(),
        "headcni-ipam keeps its state under /var/lib/headcni/"
    );
    node.del(SEED_NETWORK, &pods[1].path());
    // Sequential goes on after the last address it handed out.
    let again = Netns::new("hcp");
    assert_eq!(address_of(&node.add(SEED_NETWORK, &again)), "10.244.0.5/24");
    for pod in pods.iter().chain([&again]) {
        node.del(SEED_NETWORK, &pod.path());
    }
    assert!(node.host_veths().is_empty());
}

#[test]
fn reference_plugins_chain_after_headcni() {
    let _serial = serial();
    let mut headcni: Value = serde_json::from_slice(&example(SEED_HOST_LOCAL)).unwrap();
    let object = headcni.as_object_mut().unwrap();
    object.remove("cniVersion");
    object.remove("name");
    let chain = json!({
        "cniVersion": "1.0.0",
        "name": SEED_NETWORK,
        "plugins": [
            headcni,
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
    });
    let node = Node::new(&[(
        "10-headcni.conflist",
        serde_json::to_vec_pretty(&chain).unwrap(),
    )]);
    let (server, client) = (Netns::new("hcp"), Netns::new("hcp"));
    let capabilities = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
    });
    let result = node
        .cnitool(&["add", SEED_NETWORK, &server.path()], Some(&capabilities))
        .result();
    node.add(SEED_NETWORK, &client);
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap();

    // tuning: the sysctl is set in the pod.
    let somaxconn = ok(&mut server.exec("cat", &["/proc/sys/net/core/somaxconn"]));
    assert_eq!(somaxconn.trim(), "500");
    // bandwidth: a token bucket on the host end, which headcni's result named.
    let qdiscs = ok(&mut node.netns.exec("tc", &["qdisc", "show", "dev", host_veth]));
    assert!(qdiscs.contains("tbf"), "{qdiscs}");
    // portmap: the node's port 18080 reaches the server pod's 8080.
    let mut listener = server
        .exec(
            "python3",
            &["-c", "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8080))\ns.listen()\nprint('ready', flush=True)\nc, _ = s.accept()\nc.sendall(b'hello from the server pod')\nc.close()"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 in the server pod");
    {
        use std::io::BufRead;
        let mut ready = String::new();
        std::io::BufReader::new(listener.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
    }
    let answer = ok(&mut client.exec(
        "python3",
        &["-c", &format!("import socket\nprint(socket.create_connection(('{GATEWAY}', 18080), timeout=5).recv(100).decode())")],
    ));
    assert_eq!(answer.trim(), "hello from the server pod");
    listener.wait().unwrap();

    // No CHECK through this chain: Debian's portmap (v1.1.1) checks its
    // IPv6 chain whenever ip6tables exists, pod IPv6 address or not, and so
    // fails CHECK after any IPv4-only main plugin, ptp included.
    let reply = node.cnitool(&["del", SEED_NETWORK, &server.path()], Some(&capabilities));
    assert!(reply.ok, "{reply:?}");
    node.del(SEED_NETWORK, &client.path());
    let nat = ok(&mut node.netns.exec("iptables", &["-t", "nat", "-S"]));
    assert!(
        !nat.contains("18080"),
        "portmap's rules are gone after DEL: {nat}"
    );
    assert!(node.host_veths().is_empty());
}

#[test]
fn dual_stack_pods_reach_each_other_over_both_families() {
    let _serial = serial();
    let mut conf: Value = serde_json::from_slice(&example(SEED_HEADCNI_IPAM)).unwrap();
    conf["enable_ipv6"] = json!(true);
    conf["pod_cidr"] = json!("10.244.0.0/24,fd00:10:244::/64");
    conf["ipam"] = json!({
        "type": "headcni-ipam",
        "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:10:244::/64"}]],
        "allocation_strategy": "sequential",
    });
    let node = Node::new(&[("10-dual.conf", serde_json::to_vec(&conf).unwrap())]);
    let (a, b) = (Netns::new("hcp"), Netns::new("hcp"));
    let result_a = node.add(SEED_NETWORK, &a);
    let result_b = node.add(SEED_NETWORK, &b);
    let addresses = |result: &Value| -> Vec<String> {
        result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| bare(ip["address"].as_str().unwrap()).to_string())
            .collect()
    };
    let (a_addresses, b_addresses) = (addresses(&result_a), addresses(&result_b));
    assert_eq!(a_addresses.len(), 2, "{result_a}");
    let kernel_a = ip(&["-n", &a.name, "addr", "show", "dev", "eth0"]);
    for address in &a_addresses {
        assert!(
            kernel_a.contains(address.as_str()),
            "{address} on eth0: {kernel_a}"
        );
    }
    for address in &b_addresses {
        assert!(a.pings(address), "pod to pod over {address}");
    }
    assert!(
        a.pings("fd00:10:244::1"),
        "pod to its IPv6 gateway on the node"
    );
    assert!(node.netns.pings(&a_addresses[1]), "node to pod over IPv6");
    for pod in [&a, &b] {
        node.del(SEED_NETWORK, &pod.path());
    }
    assert!(node.host_veths().is_empty());
}

#[test]
fn check_sees_what_changed_since_add() {
    let _serial = serial();
    let node = Node::new(&[(SEED_HOST_LOCAL, example(SEED_HOST_LOCAL))]);
    let pod = Netns::new("hcp");
    node.add(SEED_NETWORK, &pod);
    assert!(node.cnitool(&["check", SEED_NETWORK, &pod.path()], None).ok);
    ip(&["-n", &pod.name, "link", "set", "eth0", "mtu", "1500"]);
    let reply = node.cnitool(&["check", SEED_NETWORK, &pod.path()], None);
    assert!(!reply.ok);
    assert!(
        reply
            .stderr
            .contains("eth0 has MTU 1500, the config says 1420"),
        "{reply:?}"
    );
    ip(&["-n", &pod.name, "link", "set", "eth0", "mtu", "1420"]);
    ip(&["-n", &pod.name, "route", "del", "default"]);
    let reply = node.cnitool(&["check", SEED_NETWORK, &pod.path()], None);
    assert!(
        reply
            .stderr
            .contains("lacks the route to 0.0.0.0/0 via 10.244.0.1"),
        "{reply:?}"
    );
    node.del(SEED_NETWORK, &pod.path());
}

#[test]
fn fifty_concurrent_adds_get_distinct_reachable_addresses() {
    let _serial = serial();
    let node = Node::new(&[(SEED_HOST_LOCAL, example(SEED_HOST_LOCAL))]);
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("hcp")).collect();
    let addresses: Vec<String> = std::thread::scope(|scope| {
        let adds: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(|| address_of(&node.add(SEED_NETWORK, pod))))
            .collect();
        adds.into_iter().map(|add| add.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(distinct.len(), 50, "{addresses:?}");
    for (pod, address) in pods.iter().zip(&addresses) {
        assert_eq!(kernel_eth0(pod).0, *address);
        assert!(node.netns.pings(bare(address)), "node to {address}");
    }
    assert!(pods[0].pings(bare(&addresses[49])));
    assert_eq!(node.host_veths().len(), 50);
    std::thread::scope(|scope| {
        for pod in &pods {
            scope.spawn(|| node.del(SEED_NETWORK, &pod.path()));
        }
    });
    assert!(node.host_veths().is_empty());
    assert!(host_local_holders().is_empty());
}

#[test]
fn an_add_killed_part_way_leaves_nothing_after_del() {
    let _serial = serial();
    let node = Node::new(&[]);
    let conf: Value = serde_json::from_slice(&example(SEED_HOST_LOCAL)).unwrap();
    // Killed at different points of its work; each time DEL, as the
    // runtime does after a failed ADD, leaves the node as it was.
    for delay_ms in [0, 2, 5, 10, 20, 40] {
        let pod = Netns::new("hcp");
        let container = unique("killed-");
        let mut command =
            node.plugin_command(env!("CARGO_BIN_EXE_headcni"), "ADD", &container, Some(&pod));
        command.stdout(Stdio::null()).stderr(Stdio::null());
        // Its own process group, so the kill takes the IPAM plugin it runs
        // as well: a host-local left running would still be allocating
        // while DEL releases.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = spawn_with_input(&mut command, &conf);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = run(Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]));
        child.wait().unwrap();
        let del = node.plugin("DEL", &container, Some(&pod), &conf);
        assert!(del.ok, "DEL after a kill at {delay_ms} ms: {del:?}");
        assert!(node.host_veths().is_empty(), "killed at {delay_ms} ms");
        assert!(!pod.has_link("eth0"), "killed at {delay_ms} ms");
        assert!(
            host_local_holders()
                .iter()
                .all(|holder| !holder.contains(&container)),
            "killed at {delay_ms} ms: {:?}",
            host_local_holders()
        );
    }
}

#[test]
fn gc_removes_the_attachments_the_runtime_no_longer_lists() {
    let _serial = serial();
    let node = Node::new(&[]);
    let mut conf: Value = serde_json::from_slice(&example(SEED_HEADCNI_IPAM)).unwrap();
    conf["cniVersion"] = json!("1.1.0");
    let (kept, stale) = (Netns::new("hcp"), Netns::new("hcp"));
    assert!(node.plugin("ADD", "kept", Some(&kept), &conf).ok);
    assert!(node.plugin("ADD", "stale", Some(&stale), &conf).ok);
    assert_eq!(node.host_veths().len(), 2);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "kept", "ifname": "eth0"}]);
    let reply = node.plugin("GC", "", None, &gc);
    assert!(reply.ok, "{reply:?}");
    assert_eq!(node.host_veths().len(), 1);
    assert!(kept.has_link("eth0") && !stale.has_link("eth0"));
    // headcni-ipam speaks GC: it has let go of the stale address.
    let ipam = |container: &str| {
        node.call(
            env!("CARGO_BIN_EXE_headcni-ipam"),
            "CHECK",
            container,
            Some(&kept),
            &conf,
        )
    };
    assert!(ipam("kept").ok);
    assert_eq!(ipam("stale").error().0, 103, "no allocation");
    assert!(node.plugin("DEL", "kept", Some(&kept), &conf).ok);

    let reply = node.plugin("GC", "", None, &conf);
    assert_eq!(
        reply.error().1,
        "cni.dev/valid-attachments: required for GC"
    );
    let status = node.plugin("STATUS", "", None, &conf);
    assert!(status.ok, "{status:?}");
}

#[test]
fn bad_fields_fail_with_their_code_and_leave_nothing() {
    let _serial = serial();
    let node = Node::new(&[]);
    let pod = Netns::new("hcp");
    let seed: Value = serde_json::from_slice(&example(SEED_HOST_LOCAL)).unwrap();
    let with = |field: &str, value: Value| {
        let mut conf = seed.clone();
        conf[field] = value;
        conf
    };
    let cases = [
        (
            with("mtu", json!(9_000_000)),
            7,
            "mtu: 9000000 is out of range",
        ),
        (with("pod_cidr", json!("10.244.0.0/33")), 7, "pod_cidr: "),
        (
            with("service_cidr", json!(10)),
            7,
            "service_cidr: invalid type",
        ),
        (
            with("headscale_url", json!("not a url")),
            7,
            "headscale_url: ",
        ),
        (
            with("tailscale_socket", json!("relative.sock")),
            7,
            "tailscale_socket: ",
        ),
        (
            with("enable_ipv6", json!("no")),
            7,
            "enable_ipv6: invalid type",
        ),
        (
            with("enable_network_policy", json!("yes")),
            7,
            "enable_network_policy: invalid type",
        ),
        (
            with("dns", json!({"nameservers": ["x"]})),
            7,
            "dns.nameservers[0]",
        ),
        (
            with("unknown_field", json!(1)),
            7,
            "unknown field `unknown_field`",
        ),
        (
            with("ipam", json!({"type": "no-such-ipam"})),
            7,
            "ipam.type: no plugin \"no-such-ipam\" in CNI_PATH",
        ),
        (
            with("cniVersion", json!("0.2.0")),
            1,
            "incompatible CNI versions",
        ),
        // Found only after host-local handed out an address, which is
        // released again.
        (
            with("pod_cidr", json!("10.9.0.0/16")),
            7,
            "pod_cidr: host-local handed out 10.244.0.10/24, outside pod_cidr 10.9.0.0/16",
        ),
    ];
    for (conf, code, message) in cases {
        let reply = node.plugin("ADD", "bad", Some(&pod), &conf);
        let (got_code, got_message) = reply.error();
        assert_eq!(got_code, code, "{got_message}");
        assert!(
            got_message.contains(message),
            "{got_message:?} lacks {message:?}"
        );
        assert!(node.host_veths().is_empty(), "{message}");
        assert!(!pod.has_link("eth0"), "{message}");
        assert!(
            host_local_holders().is_empty(),
            "{message}: {:?}",
            host_local_holders()
        );
    }
}

#[test]
fn version_answers_without_a_config() {
    let node = Node::new(&[]);
    let reply = node.plugin("VERSION", "", None, &json!({"cniVersion": "1.1.0"}));
    assert_eq!(
        reply.result()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

/// The agent's HTTP endpoint, over a plain HTTP/1.0 request.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Polls `check` every 50 ms for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The agent process, stopped when dropped.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_installs_the_plugins_and_its_metrics_move() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (bin, net_d, state) = (
        root.path().join("bin"),
        root.path().join("net.d"),
        root.path().join("state"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = knit_tests::repo()
        .join("examples/headcni")
        .join(SEED_HOST_LOCAL);
    let _agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_knit"))
            .arg("headcni-agent")
            .arg("--config")
            .arg(&config)
            .arg("--cni-bin-dir")
            .arg(&bin)
            .arg("--cni-conf-dir")
            .arg(&net_d)
            .arg("--state-dir")
            .arg(&state)
            .arg("--plugins-from")
            .arg(built_dir())
            .args([
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                &port.to_string(),
            ])
            .args(["--metrics-path", "/node-metrics"])
            .spawn()
            .expect("starting the agent"),
    );
    eventually("the agent to be ready", || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    for binary in ["headcni", "headcni-ipam"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bin.join(binary))
            .expect("installed")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{binary}");
    }
    let list: Value =
        serde_json::from_slice(&std::fs::read(net_d.join("10-headcni.conflist")).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["type"], "headcni");
    let metrics = || http_get(port, "/node-metrics").expect("metrics").1;
    assert!(metrics().contains("headcni_network_policy_enforced 0"));

    // The runtime's view: the conflist the agent wrote, the plugins it
    // installed, and reports to the agent's socket.
    let node = Node::new(&[]);
    let bin_path = format!("{}:/usr/lib/cni", bin.display());
    let env = [
        ("NETCONFPATH", net_d.to_str().unwrap()),
        ("CNI_PATH", bin_path.as_str()),
        ("HEADCNI_STATE_DIR", state.to_str().unwrap()),
    ];
    let pod = Netns::new("hcp");
    let added = node
        .cnitool_with(&["add", SEED_NETWORK, &pod.path()], &env)
        .result();
    assert_result_is_the_kernels(&added, &pod);
    eventually("an allocation in the metrics", || {
        let text = metrics();
        text.contains("headcni_ip_allocations_total 1")
            && text.contains("headcni_pod_network_setup_duration_seconds_count 1")
    });
    assert!(
        node.cnitool_with(&["del", SEED_NETWORK, &pod.path()], &env)
            .ok
    );
    eventually("a release in the metrics", || {
        metrics().contains("headcni_ip_releases_total 1")
    });
    let failed = node.cnitool_with(&["add", SEED_NETWORK, "/var/run/netns/no-such-pod"], &env);
    assert!(!failed.ok);
    eventually("an error in the metrics", || {
        metrics().contains("headcni_network_errors_total{command=\"ADD\"} 1")
    });
}
