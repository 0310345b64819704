//! The `knit` command line: its arguments, and the `knit plugin` commands
//! that are more than a call (`main.rs` dispatches). The inputs `plugin
//! bench` times are in `bench_fixtures`; the registries commands start from
//! are built in `registry_setup`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::bench_fixtures::{
    CLB_BENCH_SHAPE, TUNNEL_BENCH_SHAPE, bench_request, clb_bench_request, tunnel_bench_request,
};
use crate::domains::cloudflare::account::{BudgetLabels, CloudflareSettings};
use crate::providers::budget::BudgetSettings;
use crate::registry_setup::load_file;
use crate::runtime::{Registry, RuntimeMetrics, World};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Kept at its old path for callers on branches not yet moved to
/// `registry_setup` (the IPAM plan's tests).
pub use crate::registry_setup::builtin_registry;

#[derive(Parser)]
#[command(
    name = "knit",
    version,
    about = "Kubernetes edge networking with WebAssembly decisions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "KNIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the controller (kubeconfig from $KUBECONFIG or in-cluster).
    Run(Box<RunArgs>),
    /// Print every CRD knit serves, as YAML.
    Crds {
        /// Write one file per CRD into this directory instead (as in `crds/`).
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Plan manifests without a cluster; prints what the controller would do.
    Simulate {
        /// Manifest files or directories; without any, the built-in example.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        plugins: PluginsArgs,
        /// Seed for strategies that use randomness.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// HeadCNI's node agent (run by the chart's DaemonSet): installs the
    /// CNI plugins and conflist, serves the node's HeadCNI metrics.
    HeadcniAgent(crate::headcni::agent::AgentArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub plugins: PluginsArgs,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(long, env = "KNIT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// knit's own namespace: where `Plugin` ConfigMaps and the lease live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "knit-system")]
    pub namespace: String,
    /// Run the controllers only while holding the lease, so replicas can
    /// stand by (`--leader-elect=false` for a single replica).
    #[arg(long, env = "KNIT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Longest a stop (SIGTERM) may take: in-flight work finishes and the
    /// lease is released within it, or knit exits without them. Keep it below
    /// the pod's `terminationGracePeriodSeconds` (30 by default).
    #[arg(long, env = "KNIT_SHUTDOWN_SECONDS", default_value_t = 20)]
    pub shutdown_seconds: u64,
    /// The `Lease` in `--namespace` that replicas campaign for.
    #[arg(long, env = "KNIT_LEASE_NAME", default_value = "knit")]
    pub lease_name: String,
    /// The domains whose controllers run, comma-separated.
    #[arg(
        long,
        env = "KNIT_DOMAINS",
        value_delimiter = ',',
        default_value = "ipam,tke-clb,cloudflare"
    )]
    pub domains: Vec<Domain>,
    #[command(flatten)]
    pub tke: TkeArgs,
    #[command(flatten)]
    pub cloudflare: CloudflareArgs,
}

/// A domain knit can run the controllers of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Domain {
    /// `IPPool` and `IPAllocation`.
    Ipam,
    /// `DedicatedCLBService` and `DedicatedCLBListener`.
    TkeClb,
    /// `Tunnel`, `ClusterTunnel` and the Ingresses and HTTPRoutes bound to
    /// them.
    Cloudflare,
}

/// How the Cloudflare domain reaches Cloudflare and runs cloudflared.
#[derive(clap::Args)]
pub struct CloudflareArgs {
    /// The Cloudflare API's base URL.
    #[arg(long, env = "KNIT_CLOUDFLARE_ENDPOINT", default_value = crate::providers::cloudflare::API_BASE)]
    pub cloudflare_endpoint: String,
    /// This cluster's identity in the ownership marks of the DNS records
    /// knit makes; the `kube-system` namespace's UID when unset. Two
    /// clusters sharing a zone must differ.
    #[arg(long, env = "KNIT_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// The cloudflared image of tunnel Deployments.
    #[arg(long, env = "KNIT_CLOUDFLARED_IMAGE", default_value = crate::domains::cloudflare::types::DEFAULT_CLOUDFLARED_IMAGE)]
    pub cloudflared_image: String,
    /// Seconds between checks of each tunnel against Cloudflare when nothing
    /// changed (what repairs changes made outside knit).
    #[arg(long, env = "KNIT_CLOUDFLARE_RESYNC_SECONDS", default_value_t = 600)]
    pub cloudflare_resync_seconds: u64,
    /// Requests each Cloudflare credential may make per 5 minutes; past it,
    /// calls wait. Cloudflare's limit is 1,200 per user: lower this when
    /// other tools share the user's budget.
    #[arg(long, env = "KNIT_CLOUDFLARE_API_BUDGET", default_value_t = CloudflareSettings::API_BUDGET.limit, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudflare_api_budget: u32,
    /// DNS changes per batch call: 200 on the Free plan, 3,500 on paid ones.
    #[arg(long, env = "KNIT_CLOUDFLARE_DNS_BATCH_SIZE", default_value_t = CloudflareSettings::DNS_BATCH_SIZE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=3500))]
    pub cloudflare_dns_batch_size: usize,
}

impl CloudflareArgs {
    pub fn settings(
        &self,
        namespace: &str,
        cluster_id: String,
        budget_left: Family<BudgetLabels, Gauge>,
    ) -> CloudflareSettings {
        CloudflareSettings {
            endpoint: self.cloudflare_endpoint.clone(),
            cluster_id,
            namespace: namespace.to_owned(),
            cloudflared_image: self.cloudflared_image.clone(),
            resync: std::time::Duration::from_secs(self.cloudflare_resync_seconds),
            api_budget: BudgetSettings {
                limit: self.cloudflare_api_budget,
                ..CloudflareSettings::API_BUDGET
            },
            dns_batch_size: self.cloudflare_dns_batch_size,
            budget_left,
        }
    }
}

/// How the TKE CLB domain reaches Tencent Cloud.
#[derive(clap::Args)]
pub struct TkeArgs {
    /// The cluster's region (e.g. `ap-guangzhou`): the CLBs' region when a
    /// `DedicatedCLBService` names none.
    #[arg(long, env = "KNIT_TKE_REGION")]
    pub tke_region: Option<String>,
    /// The Secret with `secretId` and `secretKey`: `name` (in `--namespace`)
    /// or `namespace/name`.
    #[arg(
        long,
        env = "KNIT_TKE_CREDENTIALS_SECRET",
        default_value = "tke-credentials"
    )]
    pub tke_credentials_secret: String,
    /// The CLB API's base URL, when not the public endpoint.
    #[arg(long, env = "KNIT_TKE_ENDPOINT")]
    pub tke_endpoint: Option<String>,
    /// Listeners one CLB may hold (the account's TOTAL_LISTENER_QUOTA).
    #[arg(long, env = "KNIT_TKE_LISTENER_QUOTA", default_value_t = crate::domains::tke_clb::cloud::TkeSettings::DEFAULT_LISTENER_QUOTA)]
    pub tke_listener_quota: u32,
    /// Seconds between checks of each object against its CLB when nothing
    /// changed (what repairs changes made outside knit).
    #[arg(long, env = "KNIT_TKE_RESYNC_SECONDS", default_value_t = 300)]
    pub tke_resync_seconds: u64,
    /// The cluster's VPC (`vpc-…`): where CLBs knit creates go.
    #[arg(long, env = "KNIT_TKE_VPC_ID")]
    pub tke_vpc_id: Option<String>,
    /// The cluster's ID (`cls-…`): tagged on the CLBs knit creates.
    #[arg(long, env = "KNIT_TKE_CLUSTER_ID")]
    pub tke_cluster_id: Option<String>,
}

impl TkeArgs {
    pub fn settings(&self, namespace: &str) -> crate::domains::tke_clb::cloud::TkeSettings {
        let secret = match self.tke_credentials_secret.split_once('/') {
            Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
            None => (namespace.to_owned(), self.tke_credentials_secret.clone()),
        };
        crate::domains::tke_clb::cloud::TkeSettings {
            region: self.tke_region.clone(),
            credentials_secret: secret,
            endpoint: self.tke_endpoint.clone(),
            listener_quota: self.tke_listener_quota,
            resync: std::time::Duration::from_secs(self.tke_resync_seconds),
            vpc_id: self.tke_vpc_id.clone().filter(|v| !v.is_empty()),
            cluster_id: self.tke_cluster_id.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// This replica's name in the lease: the pod name in a cluster.
pub fn replica_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "knit".into());
        format!("{host}-{}", std::process::id())
    })
}

#[derive(clap::Args)]
pub struct PluginsArgs {
    /// A directory of `<name>.wasm` plugins, watched for changes; overrides
    /// built-in plugins of the same name.
    #[arg(long, env = "KNIT_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached.
    #[arg(long, env = "KNIT_PLUGIN_CACHE")]
    pub plugin_cache: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Load a component and print its world, name, version, imports, size and
    /// compile time.
    Check { files: Vec<PathBuf> },
    /// Time calls: warm (one instance) and fresh (an instance per call).
    Bench {
        file: PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
    /// Run fixture cases (`*.yaml`: input and expected output) against a plugin.
    Test {
        dir: PathBuf,
        /// The component; by default the single `.wasm` in DIR.
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
}

impl PluginsArgs {
    /// A registry serving the built-in plugins (a directory given is loaded
    /// or watched by the caller, since `run` follows it and `simulate` reads
    /// it once).
    pub fn registry(&self, metrics: Arc<RuntimeMetrics>) -> anyhow::Result<Arc<Registry>> {
        builtin_registry(self.plugin_cache.clone(), metrics)
    }
}

pub fn plugin_check(registry: &Registry, files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files {
        let plugin = load_file(registry, file)?;
        println!("{}:", file.display());
        println!("  world:        {}", plugin.world);
        println!("  name:         {}", plugin.info.name);
        println!("  version:      {}", plugin.info.version);
        println!("  description:  {}", plugin.info.description);
        println!("  digest:       {}", plugin.digest);
        println!("  size:         {} bytes", plugin.size_bytes);
        println!(
            "  compile time: {:.1} ms",
            plugin.compile_time.as_secs_f64() * 1e3
        );
        println!("  imports:");
        for import in &plugin.imports {
            println!("    {import}");
        }
    }
    Ok(())
}

pub fn plugin_bench(
    registry: &Registry,
    file: &std::path::Path,
    iterations: usize,
) -> anyhow::Result<()> {
    let plugin = load_file(registry, file)?;
    let heading = |shape: &str| {
        println!(
            "{} ({}) on {shape}, {iterations} calls each:",
            plugin.name_version(),
            plugin.world
        )
    };
    let fresh = match plugin.world {
        World::IpamStrategy => {
            let request = bench_request();
            let warm = plugin.time_warm_allocate(&request, iterations)?;
            let fresh = time_calls(iterations, || Ok(plugin.allocate(&request, &[])??))?;
            heading("a /24 with 100 allocated");
            println!("  warm call (one instance):     {}", summary(warm));
            fresh
        }
        World::ClbAllocator => {
            let request = clb_bench_request();
            let fresh = time_calls(iterations, || {
                plugin
                    .allocate_listeners(&request, &[])?
                    .map_err(anyhow::Error::msg)
            })?;
            heading(CLB_BENCH_SHAPE);
            fresh
        }
        World::TunnelMapper => {
            let request = tunnel_bench_request();
            let fresh = time_calls(iterations, || {
                plugin
                    .map_tunnel(&request, &[])?
                    .map_err(anyhow::Error::msg)
            })?;
            heading(TUNNEL_BENCH_SHAPE);
            fresh
        }
    };
    println!("  fresh-instance call:          {}", summary(fresh));
    Ok(())
}

/// How long each of `iterations` calls of `call` took.
fn time_calls<T>(
    iterations: usize,
    mut call: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Duration>> {
    let mut timings = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        call()?;
        timings.push(started.elapsed());
    }
    Ok(timings)
}

fn summary(mut timings: Vec<Duration>) -> String {
    timings.sort();
    let at = |q: f64| timings[((timings.len() - 1) as f64 * q) as usize];
    format!(
        "median {:.1} µs, p99 {:.1} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    )
}
