//! The tunnel controller, for `Tunnel` and `ClusterTunnel` alike: creates or
//! adopts the Cloudflare tunnel, keeps its token in a Secret and runs
//! cloudflared with it, asks the `tunnel-mapper` plugin for the ingress rules
//! of every source bound to the tunnel, puts the configuration when it
//! changed (one PUT per change of the tunnel, whatever the number of
//! sources), keeps the tunnel's DNS records, and tells each source its
//! verdict. Deleting the tunnel object removes its DNS records, cloudflared
//! and (if knit created it) the tunnel, through a finalizer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controller::{Failed, reconcile_finalized};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::account::{Accounts, CredentialsError};
use super::plan::{self, OwnerMarker, TOKEN_SECRET_KEY, TUNNEL_ID_ANNOTATION};
use super::sources::{self, Backends, Bound, HttpRoute, SourceKindKey, SourceRef, TunnelKey};
use super::tunnel_plan::{self, Observed, Outcome, SourceStatus, TunnelPlan, plan_tunnel};
use super::types::{ClusterTunnel, Tunnel, TunnelObject, TunnelSpec, TunnelState, TunnelStatus};
use crate::providers::cloudflare::{self as api, CloudflareClient};
use crate::runtime::Registry;

pub const FINALIZER: &str = "knit.dev/cloudflare-tunnel";
/// The field manager of knit's server-side applies.
const MANAGER: &str = "knit";

pub struct Context {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub accounts: Arc<Accounts>,
    pub tunnels: Store<Tunnel>,
    pub cluster_tunnels: Store<ClusterTunnel>,
    pub ingresses: Store<Ingress>,
    pub routes: Store<HttpRoute>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub recorder: Recorder,
    pub caches: crate::controller::CachesReady,
    /// Which tunnel each source and each backend Service was bound to at
    /// the last pass: a source that moves or goes wakes its old tunnel.
    pub bindings: Mutex<Bindings>,
    /// Per source, the verdict last told by an Event.
    pub told: Mutex<HashMap<SourceRef, String>>,
    /// Per tunnel, the DNS names last synced and when: an unchanged set is
    /// checked again only after the resync period.
    pub dns_synced: Mutex<HashMap<TunnelKey, DnsSynced>>,
}

/// The DNS names last synced for a tunnel, its ID then, and when.
pub type DnsSynced = (Vec<String>, String, Instant);

#[derive(Default)]
pub struct Bindings {
    sources: HashMap<SourceRef, TunnelKey>,
    services: HashMap<(String, String), HashSet<TunnelKey>>,
}

impl Bindings {
    /// The tunnel `source` was bound to.
    pub fn tunnel_of(&self, source: &SourceRef) -> Option<TunnelKey> {
        self.sources.get(source).cloned()
    }

    /// The tunnels with a source whose backend is this Service.
    pub fn tunnels_of_service(&self, namespace: &str, name: &str) -> Vec<TunnelKey> {
        self.services
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&mut self, key: &TunnelKey, bound: &[Bound]) {
        self.sources.retain(|_, k| k != key);
        for keys in self.services.values_mut() {
            keys.remove(key);
        }
        self.services.retain(|_, keys| !keys.is_empty());
        for source in bound {
            self.sources.insert(source.reference.clone(), key.clone());
            for service in &source.services {
                self.services
                    .entry((source.reference.namespace.clone(), service.clone()))
                    .or_default()
                    .insert(key.clone());
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Cloudflare API: {0}")]
    Cloudflare(#[from] api::Error),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub async fn reconcile<K: TunnelObject>(
    object: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Failed<Error>> {
    let key = object.key();
    let api = K::api(ctx.client.clone(), &key);
    reconcile_finalized(&api, FINALIZER, object, &*ctx, apply, cleanup).await
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(10);
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

/// What a failed pass tells the object: Cloudflare and credentials failures
/// are a `Ready=False` reason and message; Kubernetes errors are returned,
/// to be retried.
pub(super) fn failure_reason(error: Error) -> Result<(&'static str, String), Error> {
    match error {
        Error::Credentials(e) => Ok(("CredentialsError", e.to_string())),
        Error::Cloudflare(e) => Ok(("CloudflareError", e.to_string())),
        other => Err(other),
    }
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
    let client = ctx
        .accounts
        .client_for(&spec.cloudflare, key.namespace())
        .await?;
    let tunnel = match observe_tunnel(ctx, &client, &key, &spec, status).await? {
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
        client.tunnel_token(account, &tunnel.id),
    )
    .await?;
    Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &plan::workload_name(&key),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    ctx.bindings
        .lock()
        .expect("bindings lock")
        .record(&key, &bound);
    act(object, ctx, &client, &key, &tunnel.id, plan, status).await
}

/// The tunnel in `status`, else the named one (adopted), else a new one,
/// noted in `status`; an inner `Err` is the reason and message of a tunnel
/// that cannot be served.
async fn observe_tunnel(
    ctx: &Context,
    client: &CloudflareClient,
    key: &TunnelKey,
    spec: &TunnelSpec,
    status: &mut TunnelStatus,
) -> Result<Result<api::Tunnel, (&'static str, String)>, Error> {
    let account = spec.cloudflare.account_id.as_str();
    let tunnel = match ensure_tunnel(client, account, spec, status).await? {
        Ok(tunnel) => tunnel,
        Err(missing) => return Ok(Err(("TunnelNotFound", missing))),
    };
    // Two objects naming one tunnel would put their configurations in turn.
    if let Some(other) = claimant(ctx, key, &tunnel.id) {
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

/// The tunnel in `status`, else the named one (adopted), else a new one. An
/// inner `Err` says which existing tunnel is missing.
async fn ensure_tunnel(
    client: &CloudflareClient,
    account: &str,
    spec: &TunnelSpec,
    status: &mut TunnelStatus,
) -> Result<Result<api::Tunnel, String>, Error> {
    if let Some(id) = &status.tunnel_id
        && let Some(tunnel) = client.get_tunnel(account, id).await?
    {
        return Ok(Ok(tunnel));
    }
    if let Some(new) = &spec.new_tunnel {
        if let Some(tunnel) = client.find_tunnel(account, &new.name).await? {
            return Ok(Ok(tunnel));
        }
        status.state = Some(TunnelState::Creating);
        let tunnel = client.create_tunnel(account, &new.name).await?;
        tracing::info!(tunnel = %tunnel.name, id = %tunnel.id, "Cloudflare tunnel created");
        return Ok(Ok(tunnel));
    }
    let existing = spec.existing_tunnel.as_ref().expect("CEL: new or existing");
    let found = match (&existing.id, &existing.name) {
        (Some(id), _) => client.get_tunnel(account, id).await?,
        (None, Some(name)) => client.find_tunnel(account, name).await?,
        (None, None) => None,
    };
    Ok(found.ok_or_else(|| {
        format!(
            "existingTunnel {} not found in account {account}",
            existing
                .id
                .as_ref()
                .or(existing.name.as_ref())
                .cloned()
                .unwrap_or_default()
        )
    }))
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

/// The token Secret `name` beside a cloudflared Deployment. `fetch` (a
/// token request, lazy like every future) runs only when the Secret is
/// missing or holds another tunnel's token. The token never reaches a log
/// or a plugin.
pub(super) async fn ensure_token_secret(
    kube: &Client,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    tunnel_id: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    fetch: impl std::future::Future<Output = Result<api::TunnelToken, api::Error>>,
) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(kube.clone(), namespace);
    if let Some(existing) = secrets.get_opt(name).await?
        && existing
            .annotations()
            .get(TUNNEL_ID_ANNOTATION)
            .map(String::as_str)
            == Some(tunnel_id)
        && existing
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(TOKEN_SECRET_KEY))
    {
        return Ok(());
    }
    let token = fetch.await?;
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": { TUNNEL_ID_ANNOTATION: tunnel_id },
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "stringData": { TOKEN_SECRET_KEY: token.expose() },
    });
    secrets
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Whether `key` is a `Tunnel` in the cache (how a bare tunnel name on a
/// source resolves; see `sources::resolve_tunnel`).
pub(super) fn namespaced_tunnel_exists(tunnels: &Store<Tunnel>, key: &TunnelKey) -> bool {
    match key {
        TunnelKey::Namespaced { namespace, name } => tunnels
            .get(&ObjectRef::new(name).within(namespace))
            .is_some(),
        TunnelKey::Cluster { .. } => false,
    }
}

/// Every Ingress and HTTPRoute of the caches that names this tunnel.
fn bound_sources(key: &TunnelKey, ctx: &Context) -> Vec<Bound> {
    let exists = |k: &TunnelKey| namespaced_tunnel_exists(&ctx.tunnels, k);
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
        &exists,
        &backends,
    )
}

/// Brings the tunnel's owned DNS records to `wanted`; returns the hosts a
/// record knit does not own already holds (left alone).
async fn sync_dns(
    ctx: &Context,
    client: &CloudflareClient,
    key: &TunnelKey,
    account: &str,
    domain: &str,
    tunnel_id: &str,
    wanted: &[String],
) -> Result<Vec<String>, Error> {
    let resync = ctx.accounts.settings().resync;
    if let Some((names, id, at)) = ctx.dns_synced.lock().expect("dns lock").get(key)
        && names == wanted
        && id == tunnel_id
        && at.elapsed() < resync
    {
        return Ok(Vec::new());
    }
    let zone = ctx.accounts.zone_id(client, account, domain).await?;
    let marker = owner_marker(ctx, key);
    let owned = owned_records(client, &zone, &marker).await?;
    let changes = plan::dns_changes(wanted, &plan::cname_target(tunnel_id), &marker, &owned);
    for record in &changes.delete {
        client.delete_dns_record(&zone, &record.id).await?;
        tracing::info!(tunnel = %key, name = %record.name, "DNS record deleted");
    }
    for (id, record) in &changes.update {
        client.update_dns_record(&zone, id, record).await?;
    }
    let mut blocked = Vec::new();
    for record in &changes.create {
        match client.create_dns_record(&zone, record).await {
            Ok(_) => tracing::info!(tunnel = %key, name = %record.name, "DNS record created"),
            Err(e)
                if e.has_code(api::codes::DNS_HOST_TAKEN)
                    || e.has_code(api::codes::DNS_CNAME_TAKEN) =>
            {
                blocked.push(record.name.clone())
            }
            Err(e) => return Err(e.into()),
        }
    }
    if blocked.is_empty() {
        ctx.dns_synced.lock().expect("dns lock").insert(
            key.clone(),
            (wanted.to_vec(), tunnel_id.to_owned(), Instant::now()),
        );
    }
    Ok(blocked)
}

/// The zone's records `marker` owns (listed by its prefix, then checked
/// exactly: a longer digest with the same start is someone else's).
pub(super) async fn owned_records(
    client: &CloudflareClient,
    zone: &str,
    marker: &OwnerMarker,
) -> Result<Vec<api::DnsRecord>, Error> {
    let listed = client
        .list_dns_records(
            zone,
            &api::DnsFilter {
                comment_startswith: Some(marker.prefix.clone()),
                ..Default::default()
            },
        )
        .await?;
    Ok(listed
        .into_iter()
        .filter(|r| marker.owns(r.comment.as_deref()))
        .collect())
}

/// Deletes the zone's records `marker` owns.
pub(super) async fn delete_owned_records(
    client: &CloudflareClient,
    zone: &str,
    marker: &OwnerMarker,
) -> Result<(), Error> {
    for record in owned_records(client, zone, marker).await? {
        client.delete_dns_record(zone, &record.id).await?;
    }
    Ok(())
}

fn owner_marker(ctx: &Context, key: &TunnelKey) -> OwnerMarker {
    OwnerMarker::new(&ctx.accounts.settings().cluster_id, &key.to_string())
}

/// Ingress `status.loadBalancer`, HTTPRoute parent status, and an Event
/// when a source's verdict changes.
async fn tell_sources(ctx: &Context, key: &TunnelKey, sources: &[SourceStatus], hostname: &str) {
    for source in sources {
        let (accepted, reason, message) = (source.accepted, source.reason, &source.message);
        let result = match source.reference.kind {
            SourceKindKey::Ingress => {
                let ingress = if accepted {
                    json!([{ "hostname": hostname }])
                } else {
                    json!([])
                };
                set_ingress_status(ctx, &source.reference, ingress).await
            }
            SourceKindKey::HttpRoute => set_route_status(ctx, source).await,
        };
        if let Err(error) = result {
            tracing::debug!(source = %source.reference, %error, "source status");
        }
        let told = format!("{reason}: {message}");
        let changed = ctx
            .told
            .lock()
            .expect("told lock")
            .insert(source.reference.clone(), told.clone())
            .as_ref()
            != Some(&told);
        if changed {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(match source.reference.kind {
                    SourceKindKey::Ingress => "networking.k8s.io/v1".into(),
                    SourceKindKey::HttpRoute => "gateway.networking.k8s.io/v1".into(),
                }),
                kind: Some(match source.reference.kind {
                    SourceKindKey::Ingress => "Ingress".into(),
                    SourceKindKey::HttpRoute => "HTTPRoute".into(),
                }),
                namespace: Some(source.reference.namespace.clone()),
                name: Some(source.reference.name.clone()),
                uid: source.uid.clone(),
                ..Default::default()
            };
            let type_ = if reason == "Accepted" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            crate::controller::publish_event(
                &ctx.recorder,
                &reference,
                type_,
                reason,
                &format!("{key}: {message}"),
                "Reconcile",
            )
            .await;
        }
    }
}

async fn set_ingress_status(
    ctx: &Context,
    source: &SourceRef,
    ingress: serde_json::Value,
) -> Result<(), kube::Error> {
    let api = Api::<Ingress>::namespaced(ctx.client.clone(), &source.namespace);
    let current = ctx
        .ingresses
        .get(&ObjectRef::new(&source.name).within(&source.namespace))
        .and_then(|i| i.status.clone())
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    if serde_json::to_value(&current).ok().as_ref() == Some(&ingress) {
        return Ok(());
    }
    api.patch_status(
        &source.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": ingress } } })),
    )
    .await
    .map(|_| ())
}

/// The controller name in HTTPRoute parent status.
pub const CONTROLLER_NAME: &str = "knit.dev/cloudflare-tunnel";

/// One `status.parents` entry per parentRef, written under knit's
/// controller name; entries of other controllers are kept.
async fn set_route_status(ctx: &Context, source: &SourceStatus) -> Result<(), kube::Error> {
    let (accepted, reason, message) = (source.accepted, source.reason, source.message.as_str());
    let reference = &source.reference;
    let Some(route) = ctx
        .routes
        .get(&ObjectRef::new(&reference.name).within(&reference.namespace))
    else {
        return Ok(());
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let parent_refs = route.spec["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = route
        .status
        .as_ref()
        .and_then(|s| s["parents"].as_array())
        .cloned()
        .unwrap_or_default();
    let resolved = !(reason == "NoReadyEndpoints" || reason == "Invalid");
    let condition = |type_: &str, ok: bool, reason: &str, previous: Option<&serde_json::Value>| {
        let status = if ok { "True" } else { "False" };
        // Keep the transition time when the status did not change.
        let since = previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(|| now.clone());
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": source.generation, "lastTransitionTime": since,
        })
    };
    let mut parents: Vec<serde_json::Value> = current
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent_ref in &parent_refs {
        let previous = current
            .iter()
            .find(|p| p["controllerName"] == CONTROLLER_NAME && &p["parentRef"] == parent_ref);
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", accepted, if accepted { "Accepted" } else { reason }, previous),
                condition("ResolvedRefs", resolved, if resolved { "ResolvedRefs" } else { "BackendNotFound" }, previous),
            ],
        }));
    }
    let unchanged = parents.len() == current.len()
        && parents.iter().zip(&current).all(|(a, b)| {
            a["parentRef"] == b["parentRef"]
                && a["controllerName"] == b["controllerName"]
                && a["conditions"]
                    .as_array()
                    .zip(b["conditions"].as_array())
                    .is_some_and(|(x, y)| {
                        x.len() == y.len()
                            && x.iter().zip(y).all(|(c, d)| {
                                c["status"] == d["status"]
                                    && c["reason"] == d["reason"]
                                    && c["message"] == d["message"]
                                    && c["observedGeneration"] == d["observedGeneration"]
                            })
                    })
        });
    if unchanged {
        return Ok(());
    }
    Api::<HttpRoute>::namespaced(ctx.client.clone(), &reference.namespace)
        .patch_status(
            &reference.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "parents": parents } })),
        )
        .await
        .map(|_| ())
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
        status.state = Some(TunnelState::Deleting);
        crate::controller::write_status(
            &K::api(ctx.client.clone(), &key),
            object,
            object.tunnel_status(),
            &status,
        )
        .await?;
    }
    let client = ctx
        .accounts
        .client_for_cleanup(&spec.cloudflare, key.namespace())
        .await?;
    let account = spec.cloudflare.account_id.as_str();
    if let Some(domain) = &spec.cloudflare.domain {
        let zone = ctx.accounts.zone_id(&client, account, domain).await?;
        let marker = owner_marker(ctx, &key);
        delete_owned_records(&client, &zone, &marker).await?;
    }
    let namespace = plan::workload_namespace(&key, &ctx.accounts.settings().namespace);
    let name = plan::workload_name(&key);
    delete_workload(&ctx.client, &namespace, &name).await?;
    if spec.new_tunnel.is_some()
        && let Some(id) = &status.tunnel_id
    {
        client.delete_tunnel(account, id).await?;
        tracing::info!(tunnel = %key, %id, "Cloudflare tunnel deleted");
    }
    // The sources no longer reach the edge through it.
    let bound: Vec<SourceRef> = {
        let mut bindings = ctx.bindings.lock().expect("bindings lock");
        let sources = bindings
            .sources
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(s, _)| s.clone())
            .collect();
        bindings.record(&key, &[]);
        sources
    };
    for source in bound.iter().filter(|s| s.kind == SourceKindKey::Ingress) {
        let _ = set_ingress_status(ctx, source, json!([])).await;
    }
    ctx.dns_synced.lock().expect("dns lock").remove(&key);
    Ok(Action::await_change())
}

/// Deletes a cloudflared Deployment (its pods first, so the tunnel's
/// connections end) and its token Secret, both named `name`; gone is fine.
pub(super) async fn delete_workload(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let ignore_missing = |result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    };
    ignore_missing(
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .delete(name, &DeleteParams::foreground())
            .await
            .map(|_| ()),
    )?;
    ignore_missing(
        Api::<Secret>::namespaced(client.clone(), namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}
