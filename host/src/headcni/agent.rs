//! `knit headcni-agent`, the node agent a DaemonSet runs (the seed's Helm
//! way): installs `headcni` and `headcni-ipam` into the CNI binary
//! directory, writes `10-headcni.conflist` from HeadCNI's configuration,
//! keeps its state under `/var/lib/headcni/`, and serves the seed's metrics,
//! which move with the reports each plugin invocation sends.
//!
//! What to write is decided by `conflist` (pure); `install` and `run` do it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::config;
use super::report::{self, MAX_REPORT, Report};
use crate::cni::error::CniError;

/// What the agent installs, as `cargo build` names them beside `knit`.
pub const PLUGIN_BINARIES: [&str; 2] = ["headcni", "headcni-ipam"];
pub const CONFLIST: &str = "10-headcni.conflist";

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// HeadCNI's network configuration: the seed's single-plugin JSON
    /// (`"type": "headcni"`), as the chart's ConfigMap holds it.
    #[arg(long, default_value = "/etc/headcni/headcni.conf")]
    pub config: PathBuf,
    /// Where the container runtime looks for CNI plugins.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the container runtime reads network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// HeadCNI's local state: the plugins' report socket, headcni-ipam's
    /// allocations (under `networks/`).
    #[arg(long, default_value = report::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where the plugin binaries to install are; the directory of this
    /// executable by default (the image puts them side by side).
    #[arg(long)]
    pub plugins_from: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0")]
    pub metrics_address: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub metrics_port: u16,
    #[arg(long, default_value = "/metrics")]
    pub metrics_path: String,
}

/// The conflist the runtime reads: HeadCNI's configuration as the one
/// plugin of a list (libcni reads a file named `.conflist` only as a list).
/// The configuration is checked as the plugin would check it, so a bad
/// field stops the agent, not the first pod.
pub fn conflist(plugin_config: &[u8]) -> Result<Value, CniError> {
    let checked = config::parse(plugin_config)?;
    let mut plugin: Value = serde_json::from_slice(plugin_config).expect("parsed above");
    let object = plugin.as_object_mut().expect("parsed above");
    object.remove("cniVersion");
    object.remove("name");
    Ok(json!({
        "cniVersion": checked.cni_version.as_str(),
        "name": checked.name,
        "plugins": [plugin],
    }))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
}

/// The seed's metrics, and whether NetworkPolicy is enforced (it is not;
/// the gauge says so rather than leave it to be assumed).
pub struct AgentMetrics {
    allocations: Counter,
    releases: Counter,
    errors: Family<CommandLabels, Counter>,
    setup_seconds: Histogram,
    network_policy_enforced: Gauge,
    network_policy_requested: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            allocations: Counter::default(),
            releases: Counter::default(),
            errors: Family::default(),
            // 1 ms .. ~16 s.
            setup_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 15)),
            network_policy_enforced: Gauge::default(),
            network_policy_requested: Gauge::default(),
        }
    }
}

impl AgentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "headcni_ip_allocations",
            "Addresses handed to pods by ADD",
            self.allocations.clone(),
        );
        registry.register(
            "headcni_ip_releases",
            "Attachments released by a successful DEL",
            self.releases.clone(),
        );
        registry.register(
            "headcni_network_errors",
            "Plugin invocations that failed, by CNI command",
            self.errors.clone(),
        );
        registry.register(
            "headcni_pod_network_setup_duration_seconds",
            "Time a successful ADD took",
            self.setup_seconds.clone(),
        );
        registry.register(
            "headcni_network_policy_requested",
            "1 when the configuration sets enable_network_policy",
            self.network_policy_requested.clone(),
        );
        registry.register(
            "headcni_network_policy_enforced",
            "1 when NetworkPolicy is enforced on this node; knit does not enforce it yet",
            self.network_policy_enforced.clone(),
        );
    }

    pub fn record(&self, report: &Report) {
        match (report.command.as_str(), report.ok) {
            ("ADD", true) => {
                self.allocations.inc_by(u64::from(report.addresses));
                self.setup_seconds.observe(report.seconds);
            }
            ("DEL", true) => {
                self.releases.inc();
            }
            (_, true) => {}
            (command, false) => {
                self.errors
                    .get_or_create(&CommandLabels {
                        command: command.chars().take(8).collect(),
                    })
                    .inc();
            }
        }
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new
/// one, never half of either; an unchanged file is left alone.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    let dir = path.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let temp = dir.join(format!(".{name}.knit-new"));
    std::fs::write(&temp, bytes).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(true)
}

/// Installs the plugin binaries and the conflist. Returns the checked
/// configuration.
pub fn install(args: &AgentArgs) -> anyhow::Result<config::HeadCniConf> {
    let plugin_config = std::fs::read(&args.config)
        .with_context(|| format!("reading HeadCNI's configuration {}", args.config.display()))?;
    let list = conflist(&plugin_config)
        .map_err(|error| anyhow::anyhow!("{}: {}", args.config.display(), error.msg))?;
    let checked = config::parse(&plugin_config).expect("checked by conflist");
    let from = match &args.plugins_from {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .to_path_buf(),
    };
    for binary in PLUGIN_BINARIES {
        let source = from.join(binary);
        let bytes = std::fs::read(&source)
            .with_context(|| format!("reading {} to install", source.display()))?;
        let target = args.cni_bin_dir.join(binary);
        if write_atomically(&target, &bytes, 0o755)? {
            tracing::info!(path = %target.display(), "installed");
        }
    }
    let target = args.cni_conf_dir.join(CONFLIST);
    let mut text = serde_json::to_string_pretty(&list).expect("JSON");
    text.push('\n');
    if write_atomically(&target, text.as_bytes(), 0o644)? {
        tracing::info!(path = %target.display(), "wrote the network configuration");
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    Ok(checked)
}

/// The agent: install, then take reports and serve metrics until stopped.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let conf = install(&args)?;
    let metrics = Arc::new(AgentMetrics::default());
    if conf.enable_network_policy {
        metrics.network_policy_requested.set(1);
        tracing::warn!(
            "enable_network_policy is true, but knit does not enforce NetworkPolicy yet: \
             pods on this node are not isolated (headcni_network_policy_enforced is 0)"
        );
    }
    let socket_path = report::socket_path(&args.state_dir);
    let _ = std::fs::remove_file(&socket_path);
    let socket = tokio::net::UnixDatagram::bind(&socket_path)
        .with_context(|| format!("listening on {}", socket_path.display()))?;
    let reports = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut buffer = [0u8; MAX_REPORT + 1];
            loop {
                match socket.recv(&mut buffer).await {
                    Ok(length) => match report::parse(&buffer[..length]) {
                        Some(report) => metrics.record(&report),
                        None => tracing::debug!("dropped a datagram that is not a report"),
                    },
                    Err(error) => tracing::warn!("reading reports: {error}"),
                }
            }
        }
    });
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let readiness = crate::telemetry::Readiness::default();
    readiness.set_ready();
    let server = crate::telemetry::serve(
        SocketAddr::new(args.metrics_address, args.metrics_port),
        &args.metrics_path,
        Arc::new(registry),
        readiness,
    );
    let outcome = tokio::select! {
        served = server => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminated() => Ok(()),
    };
    reports.abort();
    let _ = std::fs::remove_file(&socket_path);
    outcome
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_config_becomes_a_one_plugin_list() {
        let seed = include_bytes!("../../../examples/headcni/10-headcni-headcni-ipam.conf");
        let list = conflist(seed).unwrap();
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["name"], "tailscale-cni");
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0]["type"], "headcni");
        assert_eq!(plugins[0]["ipam"]["allocation_strategy"], "sequential");
        assert_eq!(plugins[0].get("name"), None);
    }

    #[test]
    fn a_bad_field_stops_the_agent_with_its_name() {
        let error = conflist(br#"{"cniVersion": "1.0.0", "name": "n", "type": "headcni", "pod_cidr": "10.0.0.0/24", "mtu": 5, "ipam": {"type": "host-local"}}"#)
            .unwrap_err();
        assert!(
            error.msg.starts_with("mtu: 5 is out of range"),
            "{}",
            error.msg
        );
    }

    #[test]
    fn reports_move_the_seeds_metrics() {
        let metrics = AgentMetrics::default();
        let report = |command: &str, ok: bool| Report {
            command: command.into(),
            ok,
            seconds: 0.01,
            addresses: if command == "ADD" && ok { 2 } else { 0 },
        };
        metrics.record(&report("ADD", true));
        metrics.record(&report("DEL", true));
        metrics.record(&report("ADD", false));
        metrics.record(&report("CHECK", true));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("headcni_ip_allocations_total 2"), "{text}");
        assert!(text.contains("headcni_ip_releases_total 1"), "{text}");
        assert!(
            text.contains("headcni_network_errors_total{command=\"ADD\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("headcni_pod_network_setup_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("headcni_network_policy_enforced 0"), "{text}");
    }
}
