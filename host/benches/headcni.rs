//! `cargo bench -p knit --bench headcni` (as root), in one run: ADD+DEL
//! cycles per second of a whole pod network, through real veths in network
//! namespaces this bench makes:
//!
//! - `headcni` with `headcni-ipam` (the seed's custom IPAM, run in process),
//! - `headcni` with the reference `host-local`,
//! - the reference `ptp` with `host-local` (containernetworking-plugins),
//!
//! measured in rotation, medians over rounds. Goal: headcni + headcni-ipam
//! at least as fast as ptp + host-local (ratio ≥ 1.0). Reported, not
//! asserted.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use serde_json::{Value, json};

const ROUNDS: usize = 11;
const CYCLES_PER_ROUND: usize = 30;

fn main() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the HeadCNI bench makes network namespaces: run it as root"
    );
    assert!(
        Path::new("/usr/lib/cni/ptp").exists(),
        "/usr/lib/cni/ptp is missing: install containernetworking-plugins"
    );
    let node = format!("hcbench-node-{}", std::process::id());
    let pod = format!("hcbench-pod-{}", std::process::id());
    for name in [&node, &pod] {
        ip(&["netns", "add", name]);
    }
    let _cleanup = Cleanup(vec![node.clone(), pod.clone()]);
    // Every plugin this process starts runs in the node's namespace.
    let node_ns = File::open(format!("/var/run/netns/{node}")).unwrap();
    move_into_link_name_space(node_ns.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let built = Path::new(env!("CARGO_BIN_EXE_headcni")).parent().unwrap();
    let cni_path = format!("{}:/usr/lib/cni", built.display());
    let data_dir = |name: &str| dir.path().join(name);
    let headcni = |name: &str, subnet: &str, ipam: Value| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "headcni",
            "pod_cidr": subnet, "mtu": 1420, "ipam": ipam,
        })
    };
    let setups: [(&str, Value); 3] = [
        (
            "headcni + headcni-ipam",
            headcni(
                "bench-a",
                "10.65.0.0/16",
                json!({"type": "headcni-ipam", "subnet": "10.65.0.0/16", "dataDir": data_dir("a"), "cacheDir": data_dir("cache")}),
            ),
        ),
        (
            "headcni + host-local",
            headcni(
                "bench-b",
                "10.66.0.0/16",
                json!({"type": "host-local", "subnet": "10.66.0.0/16", "dataDir": data_dir("b")}),
            ),
        ),
        (
            "ptp + host-local",
            json!({
                "cniVersion": "1.0.0", "name": "bench-c", "type": "ptp", "mtu": 1420,
                "ipam": {"type": "host-local", "subnet": "10.67.0.0/16", "dataDir": data_dir("c")},
            }),
        ),
    ];
    let pod_path = format!("/var/run/netns/{pod}");
    let state_dir = dir.path().join("state");
    let run = |config: &Value, container: &str| {
        let binary = built.join(config["type"].as_str().unwrap());
        let binary = if binary.exists() {
            binary
        } else {
            Path::new("/usr/lib/cni").join(config["type"].as_str().unwrap())
        };
        let bytes = serde_json::to_vec(config).unwrap();
        for command in ["ADD", "DEL"] {
            let mut child = Command::new(&binary)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", container)
                .env("CNI_NETNS", &pod_path)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", &cni_path)
                .env("HEADCNI_STATE_DIR", &state_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{} {command}: {}{}",
                binary.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    // The first headcni-ipam call compiles the strategy into the cache.
    for (_, config) in &setups {
        run(config, "warm-up");
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..ROUNDS {
        // Rotate who goes first, so none always runs on a warmer machine.
        for offset in 0..setups.len() {
            let index = (round + offset) % setups.len();
            let started = Instant::now();
            for i in 0..CYCLES_PER_ROUND {
                run(&setups[index].1, &format!("c{round}-{i}"));
            }
            rates[index].push(CYCLES_PER_ROUND as f64 / started.elapsed().as_secs_f64());
        }
    }
    println!(
        "pod network ADD+DEL cycles per second, median of {ROUNDS} rounds of {CYCLES_PER_ROUND} (rotating):"
    );
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    for ((name, _), rate) in setups.iter().zip(&medians) {
        println!("  {name:<24} {rate:>8.1}");
    }
    println!(
        "  ratio headcni + headcni-ipam / ptp + host-local  {:.2}   (goal ≥ 1.0)",
        medians[0] / medians[2]
    );
    println!(
        "  ratio headcni + host-local / ptp + host-local    {:.2}",
        medians[1] / medians[2]
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// Deletes the bench's namespaces however it ends.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
