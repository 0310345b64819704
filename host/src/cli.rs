//! The `knit` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::runtime::{
    PluginSettings, PluginSource, Registry, Runtime, RuntimeConfig, RuntimeMetrics, World,
};

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
}

impl CloudflareArgs {
    pub fn settings(
        &self,
        namespace: &str,
        cluster_id: String,
    ) -> crate::domains::cloudflare::account::CloudflareSettings {
        crate::domains::cloudflare::account::CloudflareSettings {
            endpoint: self.cloudflare_endpoint.clone(),
            cluster_id,
            namespace: namespace.to_owned(),
            cloudflared_image: self.cloudflared_image.clone(),
            resync: std::time::Duration::from_secs(self.cloudflare_resync_seconds),
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

/// A registry serving the plugins compiled into the binary.
pub fn builtin_registry(
    cache_dir: Option<PathBuf>,
    metrics: Arc<RuntimeMetrics>,
) -> anyhow::Result<Arc<Registry>> {
    let registry = empty_registry(cache_dir, metrics)?;
    for (name, bytes) in crate::builtin::BUILTIN_PLUGINS {
        registry
            .load(
                PluginSource::BuiltIn,
                name,
                bytes,
                PluginSettings::default(),
                None,
            )
            .with_context(|| format!("built-in plugin {name}"))?;
    }
    Ok(registry)
}

/// A registry with no plugins, for commands that load their own.
pub fn empty_registry(
    cache_dir: Option<PathBuf>,
    metrics: Arc<RuntimeMetrics>,
) -> anyhow::Result<Arc<Registry>> {
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir,
            ..RuntimeConfig::default()
        },
        metrics,
    )?;
    Ok(Registry::new(runtime))
}

pub fn load_file(
    registry: &Registry,
    file: &std::path::Path,
) -> anyhow::Result<Arc<crate::runtime::Plugin>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let plugin = registry
        .load(
            PluginSource::Directory(file.to_path_buf()),
            &name,
            &bytes,
            PluginSettings::default(),
            None,
        )
        .with_context(|| format!("loading {}", file.display()))?;
    Ok(plugin)
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
    match plugin.world {
        World::IpamStrategy => {
            let request = bench_request();
            let warm = plugin.time_warm_allocate(&request, iterations)?;
            let mut fresh = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let started = Instant::now();
                plugin.allocate(&request, &[])??;
                fresh.push(started.elapsed());
            }
            println!(
                "{} ({}) on a /24 with 100 allocated, {iterations} calls each:",
                plugin.name_version(),
                plugin.world
            );
            println!("  warm call (one instance):     {}", summary(warm));
            println!("  fresh-instance call:          {}", summary(fresh));
        }
        World::ClbAllocator => {
            let request = clb_bench_request();
            let mut fresh = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let started = Instant::now();
                plugin
                    .allocate_listeners(&request, &[])?
                    .map_err(anyhow::Error::msg)?;
                fresh.push(started.elapsed());
            }
            println!(
                "{} ({}) on {}, {iterations} calls:",
                plugin.name_version(),
                plugin.world,
                CLB_BENCH_SHAPE
            );
            println!("  fresh-instance call:          {}", summary(fresh));
        }
        World::TunnelMapper => {
            let request = tunnel_bench_request();
            let mut fresh = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let started = Instant::now();
                plugin
                    .map_tunnel(&request, &[])?
                    .map_err(anyhow::Error::msg)?;
                fresh.push(started.elapsed());
            }
            println!(
                "{} ({}) on {}, {iterations} calls:",
                plugin.name_version(),
                plugin.world,
                TUNNEL_BENCH_SHAPE
            );
            println!("  fresh-instance call:          {}", summary(fresh));
        }
    }
    Ok(())
}

/// A /24 as the controller would send it: 100 addresses taken.
pub fn bench_request() -> knit_ipam_core::Request {
    knit_ipam_core::Request {
        size: 256,
        allocated: (2..102).collect(),
        excluded: vec![0..=1, 255..=255],
        cursor: Some(101),
        count: 1,
        seed: 1,
    }
}

/// What `clb_bench_request` is, for the benchmarks' output.
pub const CLB_BENCH_SHAPE: &str =
    "3 CLBs x ports 1-1000, 1,500 pods x 2 ports (TCP+UDP): 50 new pods, 20 gone";

/// A steady-state reconcile of a large `DedicatedCLBService`, with the
/// built-in allocator's defaults (in-order, 60 s cooldown): 3 CLBs with
/// ports 1-1000 and a few foreign ports each; 1,500 serving pods with a TCP
/// and a UDP port, of which 1,450 hold their listeners and 50 are new; 20
/// pods gone whose 40 listeners are unbound; 10 free listeners, half still
/// resting and half reusable.
pub fn clb_bench_request() -> knit_clb_core::Request {
    use knit_clb_core::{
        DEFAULT_COOLDOWN_SECONDS, DEFAULT_SPREAD, Listener, LoadBalancer, Pod, PortSpec, Protocol,
        Request, Service,
    };
    const LBS: usize = 3;
    let ports = [(Protocol::Tcp, 7777), (Protocol::Udp, 7778)];
    let service = Service {
        min_port: 1,
        max_port: 1000,
        ports: ports
            .iter()
            .map(|&(protocol, target_port)| PortSpec {
                protocol,
                target_port,
            })
            .collect(),
        spread: DEFAULT_SPREAD,
        cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
        seed: 1,
    };
    let lbs = (0..LBS)
        .map(|i| LoadBalancer {
            id: format!("lb-{i:08x}"),
            listener_quota: 3000,
            foreign_ports: (996..=1000).map(|port| (Protocol::Tcp, port)).collect(),
        })
        .collect();
    let pods: Vec<Pod> = (0..1500)
        .map(|i| Pod {
            name: format!("game-server-{i:04}"),
            serving: true,
        })
        .collect();
    // Listener slots are laid out round-robin over the CLBs; slot `n` has
    // port `n / 3 + 1` on CLB `n % 3`, for each protocol.
    let mut listeners = Vec::new();
    let mut add =
        |slot: usize, pod: Option<String>, last_pod: Option<String>, rest: Option<u64>| {
            for &(protocol, target_port) in &ports {
                listeners.push(Listener {
                    name: format!("svc-{slot:05}-{target_port}"),
                    lb_id: format!("lb-{:08x}", slot % LBS),
                    port: (slot / LBS + 1) as u16,
                    protocol,
                    target_port,
                    pod: pod.clone(),
                    last_pod: last_pod.clone(),
                    unbound_for_seconds: rest,
                });
            }
        };
    let mut slot = 0;
    for pod in &pods[..1450] {
        add(slot, Some(pod.name.clone()), None, None);
        slot += 1;
    }
    for gone in 0..20 {
        add(
            slot,
            Some(format!("game-server-gone-{gone:02}")),
            None,
            None,
        );
        slot += 1;
    }
    for free in 0..10u64 {
        let rest = if free % 2 == 0 { 30 } else { 300 };
        add(
            slot,
            None,
            Some(format!("game-server-old-{free:02}")),
            Some(rest),
        );
        slot += 1;
    }
    Request {
        service,
        lbs,
        pods,
        listeners,
    }
}

/// What `tunnel_bench_request` is, for the benchmarks' output.
pub const TUNNEL_BENCH_SHAPE: &str = "a ClusterTunnel with 1,000 Ingresses in 20 namespaces, 2,126 routes: shared hosts, wildcards, exact and prefix paths, 40 conflicts, 67 unready and 20 missing backends";

/// A large `ClusterTunnel`: 1,000 Ingresses in 20 namespaces, created one
/// second apart. Most have a host of their own with a root and an `/api`
/// route, every 7th an exact `/healthz` too; every 10th adds versioned paths
/// to the previous one's host; every 25th contests an older one's root (a
/// conflict); every 100th (from the 50th) is a wildcard; every 15th (from
/// the 7th) has an `/api` backend without ready endpoints and every 50th
/// (from the 13th) a missing root backend.
pub fn tunnel_bench_request() -> knit_tunnel_core::Request {
    use knit_tunnel_core::{
        Backend, BackendState, PathMatch, Request, Route, Scheme, Source, SourceKind, Tunnel,
    };
    let route = |host: &str, path: Option<(PathMatch, String)>, service: String, state| Route {
        host: host.to_string(),
        path,
        backend: Backend {
            service,
            port: 80,
            scheme: Scheme::Http,
            state,
        },
    };
    let sources = (0..1000usize)
        .map(|i| {
            let own = if i % 100 == 50 {
                format!("*.apps-{i:04}.example.com")
            } else {
                format!("app-{i:04}.example.com")
            };
            let routes = if i % 25 == 24 {
                let older = format!("app-{:04}.example.com", i - 4);
                vec![
                    route(&own, None, format!("web-{i:04}"), BackendState::Ready),
                    route(&older, None, format!("late-{i:04}"), BackendState::Ready),
                ]
            } else if i % 10 == 9 {
                let shared = format!("app-{:04}.example.com", i - 1);
                vec![
                    route(
                        &shared,
                        Some((PathMatch::Prefix, format!("/v{i}"))),
                        format!("v{i}"),
                        BackendState::Ready,
                    ),
                    route(
                        &shared,
                        Some((PathMatch::Exact, format!("/v{i}/healthz"))),
                        format!("v{i}"),
                        BackendState::Ready,
                    ),
                ]
            } else {
                let root = if i % 50 == 13 {
                    BackendState::Missing(format!("service web-{i:04} not found"))
                } else {
                    BackendState::Ready
                };
                let api = if i % 15 == 7 {
                    BackendState::NoReadyEndpoints
                } else {
                    BackendState::Ready
                };
                let mut routes = vec![
                    route(&own, None, format!("web-{i:04}"), root),
                    route(
                        &own,
                        Some((PathMatch::Prefix, "/api".into())),
                        format!("api-{i:04}"),
                        api,
                    ),
                ];
                if i % 7 == 0 {
                    routes.push(route(
                        &own,
                        Some((PathMatch::Exact, "/healthz".into())),
                        format!("web-{i:04}"),
                        BackendState::Ready,
                    ));
                }
                routes
            };
            Source {
                kind: SourceKind::Ingress,
                namespace: format!("team-{:02}", i % 20),
                name: format!("app-{i:04}"),
                created: 1_700_000_000 + i as i64,
                routes,
            }
        })
        .collect();
    Request {
        tunnel: Tunnel {
            name: "edge".into(),
            namespace: None,
            domain: "example.com".into(),
            fallback_target: "http_status:404".into(),
        },
        sources,
        cluster_domain: "cluster.local".into(),
    }
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
