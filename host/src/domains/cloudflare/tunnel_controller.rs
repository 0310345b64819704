//! The tunnel controller, for `Tunnel` and `ClusterTunnel` alike: creates or
//! adopts the Cloudflare tunnel, keeps its token in a Secret and runs
//! cloudflared with it, asks the `tunnel-mapper` plugin for the ingress rules
//! of every source bound to the tunnel, puts the configuration when it
//! changed (one PUT per change of the tunnel, whatever the number of
//! sources), keeps the tunnel's DNS records, and tells each source its
//! verdict. Deleting the tunnel object removes its DNS records, cloudflared
//! and (if knit created it) the tunnel, through a finalizer.

use std::sync::Arc;
use std::time::Duration;

use crate::controller::{Failed, reconcile_finalized};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use super::dns_sync::{delete_owned_records, owner_marker, sync_dns};
use super::error::{Error, failure_reason};
use super::plan;
use super::source_status::{tell_sources, untell};
use super::sources::{self, Backends, Bound, TunnelKey};
use super::tunnel_plan::{self, Observed, Outcome, TunnelPlan, plan_tunnel};
use super::types::{TunnelObject, TunnelSpec, TunnelState, TunnelStatus};
use super::workload::{MANAGER, delete_workload, ensure_token_secret};
use crate::providers::cloudflare::{self as api, CloudflareClient, TunnelKind};

pub const FINALIZER: &str = "knit.dev/cloudflare-tunnel";

pub async fn reconcile<K: TunnelObject>(
    object: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let key = object.key();
    let api = K::api(ctx.client.clone(), &key);
    reconcile_finalized(&api, FINALIZER, object, &*ctx, apply, cleanup).await
}

/// Observe, plan, act; a pass that fails says why in the status.
async fn apply<K: TunnelObject>(object: &K, ctx: &Context) -> Result<Action, Error> {
    ctx.caches.wait().await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // The status so far: a pass that fails writes it, with why.
    let mut status = object.tunnel_status().cloned().unwrap_or_default();
    let (status, requeue) = match serve(object, &mut status, &now, ctx).await {
        Ok(served) => served,
        Err(error) => {
            let (reason, message) = failure_reason(error)?;
            failed(object, status, reason, message, &now)
        }
    };
    crate::controller::write_status(
        &K::api(ctx.client.clone(), &object.key()),
        object,
        object.tunnel_status(),
        &status,
    )
    .await?;
    Ok(Action::requeue(requeue))
}

/// The status of a pass that did not serve the tunnel, and when to retry.
fn failed<K: TunnelObject>(
    object: &K,
    mut status: TunnelStatus,
    reason: &'static str,
    message: impl Into<String>,
    now: &Time,
) -> (TunnelStatus, Duration) {
    let outcome = Outcome::failed(reason, message);
    tunnel_plan::finish(object, &mut status, &outcome, now);
    (status, tunnel_plan::FAILURE_RETRY)
}

/// Observes (the cloudflared Deployment wanted, the tunnel found or made,
/// the sources bound to it), plans with `plan_tunnel`, and acts. Fills
/// `status` as it goes, for a failure to write; returns the status of the
/// pass and when to look again.
async fn serve<K: TunnelObject>(
    object: &K,
    status: &mut TunnelStatus,
    now: &Time,
    ctx: &Context,
) -> Result<(TunnelStatus, Duration), Error> {
    let key = object.key();
    let spec = object.tunnel_spec();
    let settings = ctx.accounts.settings();
    let namespace = plan::workload_namespace(&key, &settings.namespace);
    let owner = owner_reference(object);
    let deployment = match plan::deployment(&plan::Workload {
        key: &key,
        namespace: &namespace,
        image: &settings.cloudflared_image,
        protocol: spec.protocol.as_str(),
        deploy_patch: &spec.deploy_patch,
        owner: serde_json::to_value(&owner).unwrap_or_default(),
    }) {
        Ok(deployment) => deployment,
        Err(why) => {
            return Ok(failed(
                object,
                status.clone(),
                "InvalidDeployPatch",
                why,
                now,
            ));
        }
    };
    if status.state.is_none() {
        persist_state(object, ctx, status, TunnelState::Pending).await?;
    }
    let client = ctx
        .accounts
        .client_for(&spec.cloudflare, key.namespace())
        .await?;
    let tunnel = match observe_tunnel(object, ctx, &client, status).await? {
        Ok(tunnel) => tunnel,
        Err((reason, message)) => return Ok(failed(object, status.clone(), reason, message, now)),
    };
    let observed = Observed {
        object: Arc::new(object.clone()),
        key: key.clone(),
        tunnel_id: tunnel.id.clone(),
        tunnel_name: tunnel.name.clone(),
        status: status.clone(),
        bound: bound_sources(&key, ctx),
        live_digest: live_config_digest(ctx, &client, &key, &spec, &tunnel.id).await?,
        resync: settings.resync,
        now: now.clone(),
    };
    let (plan, bound) = {
        let registry = ctx.registry.clone();
        crate::runtime::spawn_call(move || (plan_tunnel(&observed, &registry), observed.bound))
            .await?
    };

    // Its token, for cloudflared, in a Secret beside the Deployment.
    let account = spec.cloudflare.account_id.as_str();
    ensure_token_secret(
        &ctx.client,
        &namespace,
        &plan::workload_name(&key),
        &plan::workload_labels(&key),
        &tunnel.id,
        &owner,
        client.tunnel_token(TunnelKind::Cloudflared, account, &tunnel.id),
    )
    .await?;
    Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &plan::workload_name(&key),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    let left = ctx
        .bindings
        .lock()
        .expect("bindings lock")
        .record(&key, &bound);
    for source in &left {
        untell(ctx, source).await;
    }
    act(object, ctx, &client, &key, &tunnel.id, plan, status).await
}

/// The tunnel in `status`, else the named one (adopted), else a new one,
/// noted in `status`; an inner `Err` is the reason and message of a tunnel
/// that cannot be served.
async fn observe_tunnel<K: TunnelObject>(
    object: &K,
    ctx: &Context,
    client: &CloudflareClient,
    status: &mut TunnelStatus,
) -> Result<Result<api::Tunnel, (&'static str, String)>, Error> {
    let key = object.key();
    let spec = object.tunnel_spec();
    let account = spec.cloudflare.account_id.as_str();
    let tunnel = match find_tunnel(client, account, &spec, status).await? {
        Found::Tunnel(tunnel) => tunnel,
        Found::Missing(missing) => return Ok(Err(("TunnelNotFound", missing))),
        Found::ToCreate(name) => {
            // Seen by a watch while the create runs.
            persist_state(object, ctx, status, TunnelState::Creating).await?;
            let tunnel = client
                .create_tunnel(TunnelKind::Cloudflared, account, &name)
                .await?;
            tracing::info!(tunnel = %tunnel.name, id = %tunnel.id, "Cloudflare tunnel created");
            tunnel
        }
    };
    // Two objects naming one tunnel would put their configurations in turn.
    if let Some(other) = claimant(ctx, &key, &tunnel.id) {
        return Ok(Err((
            "TunnelInUse",
            format!(
                "tunnel {} ({}) is already served by {other}",
                tunnel.name, tunnel.id
            ),
        )));
    }
    tunnel_plan::serving(status, &tunnel.id, &tunnel.name, account);
    Ok(Ok(tunnel))
}

/// The digest of the configuration Cloudflare holds for the tunnel, read
/// once per resync period (`None` between reads; `Some(None)` when none is
/// stored).
async fn live_config_digest(
    ctx: &Context,
    client: &CloudflareClient,
    key: &TunnelKey,
    spec: &TunnelSpec,
    tunnel_id: &str,
) -> Result<Option<Option<String>>, Error> {
    let resync = ctx.accounts.settings().resync;
    let due = ctx
        .config_checked
        .lock()
        .expect("config lock")
        .get(key)
        .is_none_or(|at| at.elapsed() >= resync);
    if !due {
        return Ok(None);
    }
    let live = client
        .tunnel_configuration(&spec.cloudflare.account_id, tunnel_id)
        .await?;
    ctx.config_checked
        .lock()
        .expect("config lock")
        .insert(key.clone(), std::time::Instant::now());
    Ok(Some(live.map(|stored| plan::config_digest(&stored.config))))
}

/// Writes the plan: the configuration when it changed, the DNS records,
/// what each source is told; returns the status to write. `status` keeps
/// what was written, for a failure to write.
async fn act<K: TunnelObject>(
    object: &K,
    ctx: &Context,
    client: &CloudflareClient,
    key: &TunnelKey,
    tunnel_id: &str,
    plan: TunnelPlan,
    status: &mut TunnelStatus,
) -> Result<(TunnelStatus, Duration), Error> {
    status.decided_by = plan.status.decided_by.clone();
    if plan.refusal.is_some() {
        return Ok((plan.status, plan.requeue));
    }
    let spec = object.tunnel_spec();
    let account = spec.cloudflare.account_id.as_str();
    if plan.put_config {
        let put = client
            .put_tunnel_configuration(account, tunnel_id, &plan.config)
            .await?;
        tracing::info!(tunnel = %key, version = put.version, rules = plan.config.ingress.len(), "tunnel configuration put");
        status.config_version = Some(put.version);
        status.config_digest = plan.status.config_digest.clone();
    }

    // DNS, then what each source is told.
    let domain = spec.cloudflare.domain.clone().unwrap_or_default();
    let blocked = sync_dns(ctx, client, key, account, &domain, tunnel_id, &plan.dns).await?;
    tell_sources(ctx, key, &plan.sources, &plan.cname_target).await;

    let mut written = plan.status;
    written.config_version = status.config_version;
    if !blocked.is_empty() {
        let message = format!(
            "records knit did not create hold {}; they are left alone",
            blocked.join(", ")
        );
        // Against the conditions as observed, so a lasting refusal keeps
        // its transition time.
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let condition = crate::conditions::condition(
            &status.conditions,
            "DNSReady",
            false,
            "RecordNotOwned",
            &message,
            object.meta().generation,
            &now,
        );
        tunnel_plan::put_condition(&mut written.conditions, condition);
    }
    Ok((written, plan.requeue))
}

/// What `find_tunnel` found.
enum Found {
    Tunnel(api::Tunnel),
    /// The `existingTunnel` named is not there: why.
    Missing(String),
    /// No tunnel yet for `newTunnel`: its name, to create.
    ToCreate(String),
}

/// The tunnel in `status`, else the named one (adopted), else the name of
/// the new one to create.
async fn find_tunnel(
    client: &CloudflareClient,
    account: &str,
    spec: &TunnelSpec,
    status: &TunnelStatus,
) -> Result<Found, Error> {
    if let Some(id) = &status.tunnel_id
        && let Some(tunnel) = client
            .get_tunnel(TunnelKind::Cloudflared, account, id)
            .await?
    {
        return Ok(Found::Tunnel(tunnel));
    }
    if let Some(new) = &spec.new_tunnel {
        return Ok(
            match client
                .find_tunnel(TunnelKind::Cloudflared, account, &new.name)
                .await?
            {
                Some(tunnel) => Found::Tunnel(tunnel),
                None => Found::ToCreate(new.name.clone()),
            },
        );
    }
    let existing = spec.existing_tunnel.as_ref().expect("CEL: new or existing");
    let found = match (&existing.id, &existing.name) {
        (Some(id), _) => {
            client
                .get_tunnel(TunnelKind::Cloudflared, account, id)
                .await?
        }
        (None, Some(name)) => {
            client
                .find_tunnel(TunnelKind::Cloudflared, account, name)
                .await?
        }
        (None, None) => None,
    };
    Ok(match found {
        Some(tunnel) => Found::Tunnel(tunnel),
        None => Found::Missing(format!(
            "existingTunnel {} not found in account {account}",
            existing
                .id
                .as_ref()
                .or(existing.name.as_ref())
                .cloned()
                .unwrap_or_default()
        )),
    })
}

/// Writes the state a pass has reached before it waits on the cloud
/// (`pending`, `creating`, `deleting`), so a watch sees each one.
async fn persist_state<K: TunnelObject>(
    object: &K,
    ctx: &Context,
    status: &mut TunnelStatus,
    state: TunnelState,
) -> Result<(), Error> {
    status.state = Some(state);
    crate::controller::write_status(
        &K::api(ctx.client.clone(), &object.key()),
        object,
        object.tunnel_status(),
        status,
    )
    .await?;
    Ok(())
}

/// Another tunnel object whose status names tunnel `id`.
fn claimant(ctx: &Context, key: &TunnelKey, id: &str) -> Option<TunnelKey> {
    let claims =
        |status: Option<&TunnelStatus>| status.and_then(|s| s.tunnel_id.as_deref()) == Some(id);
    let namespaced = ctx
        .tunnels
        .state()
        .into_iter()
        .filter(|t| claims(t.status.as_ref()))
        .map(|t| t.key());
    let cluster = ctx
        .cluster_tunnels
        .state()
        .into_iter()
        .filter(|t| claims(t.status.as_ref()))
        .map(|t| t.key());
    namespaced.chain(cluster).find(|other| other != key)
}

/// Every Ingress and HTTPRoute of the caches that names this tunnel.
fn bound_sources(key: &TunnelKey, ctx: &Context) -> Vec<Bound> {
    let tunnels = ctx.tunnel_names();
    let gateways = ctx.gateways(&tunnels);
    let services = &ctx.services;
    let service =
        |namespace: &str, name: &str| services.get(&ObjectRef::new(name).within(namespace));
    let ready = sources::ready_services(ctx.slices.state().iter().map(|s| &**s));
    let backends = Backends {
        service: &service,
        ready: &ready,
        assume_missing_ready: false,
    };
    let ingresses = ctx.ingresses.state();
    let routes = ctx.routes.state();
    sources::bind(
        key,
        ingresses.iter().map(|i| &**i),
        routes.iter().map(|r| &**r),
        &tunnels,
        &gateways,
        &backends,
    )
}

fn owner_reference<K: TunnelObject>(
    object: &K,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    object
        .controller_owner_ref(&())
        .expect("a stored object has a name and a UID")
}

/// Deleting: DNS records, cloudflared, its token, the tunnel (when knit
/// created it), in that order, so nothing is left that points at nothing.
async fn cleanup<K: TunnelObject>(object: &K, ctx: &Context) -> Result<Action, Error> {
    let key = object.key();
    let spec = object.tunnel_spec();
    let mut status = object.tunnel_status().cloned().unwrap_or_default();
    if status.state != Some(TunnelState::Deleting) {
        persist_state(object, ctx, &mut status, TunnelState::Deleting).await?;
    }
    let client = ctx
        .accounts
        .client_for_cleanup(&spec.cloudflare, key.namespace())
        .await?;
    let account = spec.cloudflare.account_id.as_str();
    if let Some(domain) = &spec.cloudflare.domain {
        let zone = ctx.accounts.zone_id(&client, account, domain).await?;
        let marker = owner_marker(ctx, &key);
        let batch_size = ctx.accounts.settings().dns_batch_size;
        delete_owned_records(&client, &zone, &marker, batch_size).await?;
    }
    let namespace = plan::workload_namespace(&key, &ctx.accounts.settings().namespace);
    let name = plan::workload_name(&key);
    delete_workload(&ctx.client, &namespace, &name).await?;
    if spec.new_tunnel.is_some()
        && let Some(id) = &status.tunnel_id
    {
        client
            .delete_tunnel(TunnelKind::Cloudflared, account, id)
            .await?;
        tracing::info!(tunnel = %key, %id, "Cloudflare tunnel deleted");
    }
    // The sources no longer reach the edge through it.
    let bound = ctx
        .bindings
        .lock()
        .expect("bindings lock")
        .record(&key, &[]);
    for source in &bound {
        untell(ctx, source).await;
    }
    ctx.dns_synced.lock().expect("dns lock").remove(&key);
    ctx.config_checked.lock().expect("config lock").remove(&key);
    Ok(Action::await_change())
}
