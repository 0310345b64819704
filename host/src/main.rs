use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use knit::cli::{self, Cli, Command, PluginCommand, RunArgs};
use knit::leader::{self, LeaseConfig};
use knit::registry_setup;
use knit::runtime::{RuntimeMetrics, dir_source, kube_source};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end: dropping it sends the spans still queued for OTLP,
    // also when a command fails.
    let _telemetry = knit::telemetry::init_logging(&cli.log_format);
    let metrics = Arc::new(RuntimeMetrics::default());
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(run(*args, metrics));
            // `run` has bounded the stop; don't wait again for blocking work
            // (a plugin call ends by its own deadline anyway).
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Crds { output_dir } => {
            for (file, crd) in knit::crds::all() {
                match &output_dir {
                    Some(dir) => std::fs::write(dir.join(file), knit::crds::to_yaml(&crd))?,
                    None => print!("{}", knit::crds::to_yaml(&crd)),
                }
            }
            Ok(())
        }
        Command::Plugin(command) => {
            let registry = registry_setup::empty_registry(None, metrics)?;
            match command {
                PluginCommand::Check { files } => cli::plugin_check(&registry, &files),
                PluginCommand::Bench { file, iterations } => {
                    cli::plugin_bench(&registry, &file, iterations)
                }
                PluginCommand::Test { dir, plugin } => {
                    let file = match plugin {
                        Some(file) => file,
                        None => single_wasm_in(&dir)?,
                    };
                    let plugin = registry_setup::load_file(&registry, &file)?;
                    let (_, failed) = knit::plugin_test::run(&dir, &plugin)?;
                    anyhow::ensure!(failed == 0, "{failed} case(s) failed");
                    Ok(())
                }
            }
        }
        Command::Simulate {
            files,
            plugins,
            seed,
        } => {
            let registry = plugins.registry(metrics)?;
            if let Some(dir) = &plugins.plugins_dir {
                dir_source::sync(&registry, dir, &Default::default());
            }
            let manifests = if files.is_empty() {
                let mut manifests = knit::simulate::Manifests::default();
                manifests.add_stream(knit::DEFAULT_EXAMPLE)?;
                manifests
            } else {
                knit::simulate::read_manifests(&files)?
            };
            for ignored in &manifests.ignored {
                tracing::info!("not planned by knit: {ignored}");
            }
            print!(
                "{}",
                knit::simulate::render(&knit::simulate::simulate(&manifests, &registry, seed))
            );
            Ok(())
        }
        Command::HeadcniAgent(args) => {
            tokio::runtime::Runtime::new()?.block_on(knit::headcni::agent::run(args))
        }
    }
}

fn single_wasm_in(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let found: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => anyhow::bail!(
            "{}: expected exactly one .wasm, found {}; pass --plugin",
            dir.display(),
            found.len()
        ),
    }
}

/// The controller. Plugins and the HTTP endpoints run on every replica; the
/// controllers only on the one holding the lease.
async fn run(args: RunArgs, metrics: Arc<RuntimeMetrics>) -> anyhow::Result<()> {
    let mut prometheus = prometheus_client::registry::Registry::default();
    metrics.register(&mut prometheus);
    let ipam_metrics = Arc::new(knit::domains::ipam::metrics::IpamMetrics::default());
    ipam_metrics.register(&mut prometheus);
    let reconciles = Arc::new(knit::telemetry::ReconcileMetrics::default());
    reconciles.register(&mut prometheus);
    let cloudflare_budget_left = prometheus_client::metrics::family::Family::default();
    prometheus.register(
        "knit_cloudflare_api_budget_left",
        "Requests each Cloudflare credential may still make in the current window",
        cloudflare_budget_left.clone(),
    );
    let readiness = knit::telemetry::Readiness::default();
    let server = tokio::spawn(knit::telemetry::serve(
        args.metrics_addr,
        "/metrics",
        Arc::new(prometheus),
        readiness.clone(),
    ));

    let registry = tokio::task::spawn_blocking({
        let plugins = args.plugins;
        move || plugins.registry(metrics).map(|r| (r, plugins))
    })
    .await??;
    let (registry, plugins) = registry;
    let _watch = match &plugins.plugins_dir {
        Some(dir) => Some(
            dir_source::watch(registry.clone(), dir.clone(), Default::default())
                .await
                .with_context(|| format!("watching {}", dir.display()))?,
        ),
        None => None,
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let plugin_objects = tokio::spawn(kube_source::run(
        client.clone(),
        args.namespace.clone(),
        registry.clone(),
    ));

    // Shutdown order: controllers finish what they are doing, then the
    // lease is released, so the next leader never overlaps this one.
    let (stop_controllers, controllers_stopping) = tokio::sync::oneshot::channel::<()>();
    let (controllers_done, controllers_finished) = tokio::sync::oneshot::channel::<()>();
    let (leading, election) = if args.leader_elect {
        let identity = cli::replica_identity();
        tracing::info!(%identity, lease = %args.lease_name, "campaigning for leadership");
        let config = LeaseConfig::new(&args.namespace, &args.lease_name, &identity);
        let (leading, task) = leader::spawn(client.clone(), config, async move {
            let _ = controllers_finished.await;
        });
        (leading, Some(task))
    } else {
        (tokio::sync::watch::channel(true).1, None)
    };
    let cluster_id = if args.domains.contains(&cli::Domain::Cloudflare) {
        cluster_id(&client, args.cloudflare.cluster_id.clone()).await?
    } else {
        String::new()
    };
    let domains = Domains {
        enabled: args.domains,
        ipam_metrics,
        reconciles,
        tke: args.tke.settings(&args.namespace),
        cloudflare: args
            .cloudflare
            .settings(&args.namespace, cluster_id, cloudflare_budget_left),
    };
    let mut controllers = tokio::spawn(run_controllers(
        client,
        registry.clone(),
        domains,
        leading,
        async move {
            let _ = controllers_stopping.await;
        },
        controllers_done,
    ));
    readiness.set_ready();
    tracing::info!("knit running");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = terminate.recv() => tracing::info!("terminated, shutting down"),
        result = plugin_objects => result??,
        result = &mut controllers => return result?,
        result = server => result??,
    }
    let stopping = async {
        let _ = stop_controllers.send(());
        controllers.await??;
        if let Some(election) = election {
            election.await?;
        }
        anyhow::Ok(())
    };
    // A pod must be gone within its grace period, also when the API server
    // does not answer and every request waits for its timeout: what has not
    // finished by then (or by a second signal) is left undone.
    let limit = std::time::Duration::from_secs(args.shutdown_seconds);
    tokio::select! {
        result = tokio::time::timeout(limit, stopping) => match result {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("stopping took longer than {limit:?}; exiting without waiting");
                Ok(())
            }
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::warn!("interrupted again; exiting at once");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::warn!("terminated again; exiting at once");
            Ok(())
        }
    }
}

/// The domains to run and what each needs beyond a client and plugins.
/// `--cluster-id`, else the `kube-system` namespace's UID: stable for the
/// cluster's life and different in every cluster.
async fn cluster_id(client: &kube::Client, flag: Option<String>) -> anyhow::Result<String> {
    if let Some(id) = flag {
        return Ok(id);
    }
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces
        .get("kube-system")
        .await
        .ok()
        .and_then(|ns| ns.metadata.uid)
        .context("reading the kube-system namespace's UID for the cluster's identity; set --cluster-id instead")
}

struct Domains {
    enabled: Vec<cli::Domain>,
    ipam_metrics: Arc<knit::domains::ipam::metrics::IpamMetrics>,
    reconciles: Arc<knit::telemetry::ReconcileMetrics>,
    tke: knit::domains::tke_clb::cloud::TkeSettings,
    cloudflare: knit::domains::cloudflare::account::CloudflareSettings,
}

/// Waits for leadership, then runs the controllers until `stop` (they finish
/// in-flight work) or until leadership is lost: then the process exits, and
/// a fresh start campaigns again, rather than run beside a new leader.
async fn run_controllers(
    client: kube::Client,
    registry: Arc<knit::runtime::Registry>,
    domains: Domains,
    mut leading: tokio::sync::watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    done: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let stop = futures::FutureExt::shared(Box::pin(stop));
    let became_leader = tokio::select! {
        _ = stop.clone() => false,
        became = leading.wait_for(|leading| *leading) => became.is_ok(),
    };
    let result = if !became_leader {
        Ok(())
    } else {
        let Domains {
            enabled,
            ipam_metrics,
            reconciles,
            tke,
            cloudflare,
        } = domains;
        tracing::info!(domains = ?enabled, "leading: starting controllers");
        // Futures do nothing until awaited: a domain not enabled never starts.
        let ipam = run_if(
            enabled.contains(&cli::Domain::Ipam),
            knit::domains::ipam::controller::run(
                client.clone(),
                registry.clone(),
                ipam_metrics,
                reconciles.clone(),
                stop.clone(),
            ),
        );
        let tke = run_if(
            enabled.contains(&cli::Domain::TkeClb),
            knit::domains::tke_clb::run(
                client.clone(),
                registry.clone(),
                tke,
                reconciles.clone(),
                stop.clone(),
            ),
        );
        let cloudflare = run_if(
            enabled.contains(&cli::Domain::Cloudflare),
            knit::domains::cloudflare::run(
                client.clone(),
                registry.clone(),
                cloudflare,
                reconciles.clone(),
                stop.clone(),
            ),
        );
        let lease_lost = async {
            let lost = leading.wait_for(|leading| !*leading).await.is_ok();
            // No election (`--leader-elect=false`), or it ended: only `stop`
            // ends the controllers then.
            if !lost {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            // With no domain enabled, knit still serves plugins until stopped.
            _ = async { tokio::join!(ipam, tke, cloudflare); stop.clone().await } => Ok(()),
            _ = lease_lost => {
                Err(anyhow::anyhow!("lost the lease; exiting so that only the new leader acts"))
            }
        }
    };
    let _ = done.send(());
    result
}

async fn run_if(enabled: bool, domain: impl std::future::Future<Output = ()>) {
    if enabled {
        domain.await;
    }
}
