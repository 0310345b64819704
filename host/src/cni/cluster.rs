//! Cluster mode: addresses are `IPAllocation`s of an `IPPool`, claimed
//! through the Kubernetes API (see `domains::ipam::claim`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use serde_json::Value;

use super::cidr::Cidr;
use super::config::{NetConf, check_plugin_name};
use super::error::{CniError, Code, quoted};
use super::protocol::{Invocation, NetworkCommand};
use super::result::{self, IpConfig};
use super::strategy::StrategyLoader;
use crate::domains::ipam::claim::{self, ClaimError, StrategySource};
use crate::domains::ipam::types::{AllocationOwner, IPPool};
use crate::runtime::Plugin;

pub fn run(
    command: NetworkCommand,
    invocation: &Invocation,
    conf: &NetConf,
    pool: &str,
    kubeconfig: &Path,
) -> Result<Option<Value>, CniError> {
    // One request at a time: a single-threaded runtime, no worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CniError::io("starting the async runtime", error))?;
    runtime.block_on(async {
        let client = client(kubeconfig).await?;
        match command {
            NetworkCommand::Add => add(&client, invocation, conf, pool).await.map(Some),
            NetworkCommand::Del => {
                claim::release(&client, pool, &invocation.container_id, &invocation.ifname)
                    .await
                    .map(|_| None)
                    .map_err(kube_error)
            }
            NetworkCommand::Check => check(&client, invocation, pool).await.map(|()| None),
            NetworkCommand::Gc => gc(&client, conf, pool).await.map(|()| None),
            NetworkCommand::Status => status(&client, conf, pool)
                .await
                .map(|()| None)
                .map_err(|error| CniError::new(Code::NotAvailable, error.msg)),
        }
    })
}

async fn add(
    client: &kube::Client,
    invocation: &Invocation,
    conf: &NetConf,
    pool_name: &str,
) -> Result<Value, CniError> {
    let pool = claim::get_pool(client, pool_name)
        .await
        .map_err(claim_error)?;
    let pod = &invocation.pod;
    // The pod is recorded only when the runtime names it by UID: a name
    // alone could be a later pod of the same name.
    let owner = AllocationOwner {
        container_id: Some(invocation.container_id.clone()),
        interface: Some(invocation.ifname.clone()),
        pod_namespace: pod.uid.as_ref().and(pod.namespace.clone()),
        pod_name: pod.uid.as_ref().and(pod.name.clone()),
        pod_uid: pod.uid.clone(),
    };
    let loader = NamesOnly(StrategyLoader::new(
        &conf.ipam.plugins_dir,
        &conf.ipam.cache_dir,
    ));
    let allocation = claim::claim_from(client, &loader, &pool, owner)
        .await
        .map_err(claim_error)?;
    let ip = ip_config(&pool, &allocation.spec.address)?;
    Ok(result::add_result(
        conf.cni_version,
        &[ip],
        &conf.ipam.routes,
    ))
}

async fn check(client: &kube::Client, invocation: &Invocation, pool: &str) -> Result<(), CniError> {
    let allocations = claim::allocations(client, pool).await.map_err(kube_error)?;
    if allocations
        .iter()
        .any(|a| claim::held_by(a, &invocation.container_id, &invocation.ifname))
    {
        Ok(())
    } else {
        Err(CniError::new(
            Code::NoAllocation,
            format!(
                "container {} interface {} holds no address of IPPool {pool}",
                quoted(&invocation.container_id),
                quoted(&invocation.ifname)
            ),
        ))
    }
}

async fn gc(client: &kube::Client, conf: &NetConf, pool: &str) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_deref()
        .ok_or_else(|| CniError::config("cni.dev/valid-attachments: required for GC"))?;
    claim::release_unattached(client, pool, |id, ifname| {
        valid
            .iter()
            .any(|v| v.container_id == id && v.ifname == ifname)
    })
    .await
    .map(|_| ())
    .map_err(kube_error)
}

/// Could ADD succeed now: the pool serves, its strategy loads, an address
/// is free.
async fn status(client: &kube::Client, conf: &NetConf, pool_name: &str) -> Result<(), CniError> {
    let pool = claim::get_pool(client, pool_name)
        .await
        .map_err(claim_error)?;
    check_plugin_name("IPPool spec.strategy.plugin", &pool.spec.strategy.plugin)?;
    StrategyLoader::new(&conf.ipam.plugins_dir, &conf.ipam.cache_dir)
        .load(&pool.spec.strategy.plugin)?;
    let allocations = claim::allocations(client, pool_name)
        .await
        .map_err(kube_error)?;
    let free = claim::free_addresses(&pool, &allocations).map_err(|reason| {
        claim_error(ClaimError::InvalidPool {
            pool: pool_name.to_string(),
            reason,
        })
    })?;
    if free == 0 {
        return Err(claim_error(ClaimError::Exhausted {
            pool: pool_name.to_string(),
        }));
    }
    Ok(())
}

/// The loader, for plugin names only: the pool's `spec.strategy.plugin`
/// becomes `<pluginsDir>/<name>.wasm`, and a pool written before the CRD
/// checked names could say `../../anywhere`.
struct NamesOnly(StrategyLoader);

impl StrategySource for NamesOnly {
    fn strategy(&self, name: &str) -> Result<Arc<Plugin>, String> {
        check_plugin_name("spec.strategy.plugin", name).map_err(|error| error.msg)?;
        self.0.strategy(name)
    }
}

/// The address with the prefix of the pool CIDR it is in, and the pool's
/// gateway.
fn ip_config(pool: &IPPool, address: &str) -> Result<IpConfig, CniError> {
    let invalid = || {
        CniError::new(
            Code::PoolUnavailable,
            format!(
                "IPPool {}: allocated address {address:?} is not in its CIDRs",
                pool.metadata.name.as_deref().unwrap_or_default()
            ),
        )
    };
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let subnet = pool
        .spec
        .cidrs
        .iter()
        .filter_map(|cidr| Cidr::parse(cidr).ok())
        .find(|cidr| cidr.contains(&address))
        .ok_or_else(invalid)?;
    Ok(IpConfig {
        address,
        prefix: subnet.prefix,
        gateway: pool.spec.gateway.as_deref().and_then(|g| g.parse().ok()),
    })
}

/// A client for the kubeconfig. Errors name the file but never quote it:
/// it holds credentials.
async fn client(path: &Path) -> Result<kube::Client, CniError> {
    let unusable =
        |why: String| CniError::config(format!("ipam.kubeconfig: {}: {why}", path.display()));
    let kubeconfig = Kubeconfig::read_from(path).map_err(|error| match error {
        KubeconfigError::ReadConfig(io, _) => {
            CniError::io(format_args!("reading kubeconfig {}", path.display()), io)
        }
        // A YAML error can quote the text around it.
        KubeconfigError::Parse(_) => unusable("not a valid kubeconfig (YAML)".into()),
        other => unusable(other.to_string()),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|error| match error {
            KubeconfigError::Parse(_) => unusable("not a valid kubeconfig (YAML)".into()),
            other => unusable(other.to_string()),
        })?;
    kube::Client::try_from(config).map_err(kube_error)
}

fn claim_error(error: ClaimError) -> CniError {
    let code = match &error {
        ClaimError::PoolNotFound(_)
        | ClaimError::PoolDeleting(_)
        | ClaimError::InvalidPool { .. } => Code::PoolUnavailable,
        ClaimError::Strategy { .. } => Code::Strategy,
        ClaimError::Exhausted { .. } => Code::Exhausted,
        ClaimError::Contended { .. } => Code::TryAgainLater,
        ClaimError::Kube(error) => kube_code(error),
    };
    CniError::new(code, error.to_string())
}

fn kube_error(error: kube::Error) -> CniError {
    CniError::new(kube_code(&error), format!("Kubernetes API: {error}"))
}

/// Overload, server errors and unreachable servers pass; other refusals
/// (RBAC, validation) will not.
fn kube_code(error: &kube::Error) -> Code {
    match error {
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => Code::TryAgainLater,
        kube::Error::Api(_) => Code::Kubernetes,
        _ => Code::TryAgainLater,
    }
}
