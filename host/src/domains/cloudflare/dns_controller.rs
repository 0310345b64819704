//! `DNSRecord`: records in a Cloudflare zone, with static content or the
//! addresses of a Service, Ingress or Node. The records carry the object's
//! ownership mark in their comment; a record at the name that knit does not
//! own and that the wanted ones cannot live beside is reported, never
//! touched.

use std::sync::Arc;

use crate::controller::{Failed, reconcile_finalized};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use super::dns_record;
use super::dns_sync::{delete_owned_records, owned_records};
use super::error::Error;
use super::objects::{Context, Refusal, readiness, refusal};
use super::plan::OwnerMarker;
use super::types::{
    DNSRecord, DNSRecordStatus, DnsRecordState, DnsRecordType, DnsSourceRef, SourceDeletionPolicy,
};
use crate::providers::cloudflare as api;

pub const FINALIZER: &str = "knit.dev/dns-record";

pub async fn reconcile(record: Arc<DNSRecord>, ctx: Arc<Context>) -> Result<Action, Failed<Error>> {
    let api: Api<DNSRecord> =
        Api::namespaced(ctx.client.clone(), &record.namespace().unwrap_or_default());
    reconcile_finalized(&api, FINALIZER, record, &*ctx, apply, cleanup).await
}

fn owner(record: &DNSRecord) -> String {
    format!(
        "DNSRecord {}/{}",
        record.namespace().unwrap_or_default(),
        record.name_any()
    )
}

async fn apply(record: &DNSRecord, ctx: &Context) -> Result<Action, Error> {
    let mut status = record.status.clone().unwrap_or_default();
    let outcome = serve(record, ctx, &mut status).await;
    let ready = readiness(outcome, &status.conditions, record.metadata.generation)?;
    status.state = Some(match ready.reason {
        _ if ready.ready => DnsRecordState::Active,
        "SourceOrphaned" => DnsRecordState::Orphaned,
        "NoAddress" | "SourceNotFound" => DnsRecordState::Pending,
        _ => DnsRecordState::Error,
    });
    status.observed_generation = record.metadata.generation;
    status.conditions = ready.conditions.clone();
    let api: Api<DNSRecord> =
        Api::namespaced(ctx.client.clone(), &record.namespace().unwrap_or_default());
    crate::controller::write_status(&api, record, record.status.as_ref(), &status).await?;
    Ok(ready.requeue(ctx))
}

/// The addresses the source offers: `None` when it does not exist.
async fn source_addresses(
    client: &Client,
    namespace: &str,
    source: &DnsSourceRef,
) -> Result<Option<Vec<String>>, kube::Error> {
    Ok(if let Some(service) = &source.service {
        Api::<Service>::namespaced(client.clone(), namespace)
            .get_opt(&service.name)
            .await?
            .map(|s| dns_record::service_addresses(&s, service.address_type))
    } else if let Some(ingress) = &source.ingress {
        Api::<Ingress>::namespaced(client.clone(), namespace)
            .get_opt(&ingress.name)
            .await?
            .map(|i| dns_record::ingress_addresses(&i))
    } else if let Some(node) = &source.node {
        Api::<Node>::all(client.clone())
            .get_opt(&node.name)
            .await?
            .map(|n| dns_record::node_addresses(&n, node.address_type))
    } else {
        None
    })
}

/// The source's name as the user wrote it, for messages.
fn source_name(namespace: &str, source: &DnsSourceRef) -> String {
    match (&source.service, &source.ingress, &source.node) {
        (Some(s), _, _) => format!("Service {namespace}/{}", s.name),
        (_, Some(i), _) => format!("Ingress {namespace}/{}", i.name),
        (_, _, Some(n)) => format!("Node {}", n.name),
        _ => "the source".into(),
    }
}

/// Everything but the status write; fills `status` as it goes.
async fn serve(
    record: &DNSRecord,
    ctx: &Context,
    status: &mut DNSRecordStatus,
) -> Result<Result<String, Refusal>, Error> {
    let spec = &record.spec;
    let namespace = record.namespace().unwrap_or_default();
    let Some(domain) = spec.cloudflare.domain.as_deref() else {
        return Ok(Err(("InvalidSpec", "cloudflare.domain is required".into())));
    };

    let (contents, source_gone) = match contents(record, ctx, &namespace).await? {
        Ok(found) => found,
        Err(refusal) => return Ok(Err(refusal)),
    };
    status.resolved_type = contents.first().map(|(t, _)| t.as_str().to_owned());
    status.resolved_content = contents.first().map(|(_, c)| c.clone());
    status.resolved_addresses = contents.iter().map(|(_, c)| c.clone()).collect();

    let client = ctx
        .accounts
        .client_for(&spec.cloudflare, Some(&namespace))
        .await?;
    let account = spec.cloudflare.account_id.as_str();
    let zone_id = ctx.accounts.zone_id(&client, account, domain).await?;
    let marker = ctx.marker(&owner(record));
    // Moved to another zone: the old zone's records go first.
    if let Some(old) = status.zone_id.clone().filter(|old| *old != zone_id) {
        delete_owned_records(
            &client,
            &old,
            &marker,
            ctx.accounts.settings().dns_batch_size,
        )
        .await?;
        status.managed_record_ids.clear();
    }
    let fqdn = dns_record::fqdn(&spec.name, domain);
    status.zone_id = Some(zone_id.clone());
    status.fqdn = Some(fqdn.clone());

    let wanted = dns_record::wanted_records(spec, &fqdn, &contents, &marker, &owner(record));
    let owned = owned_records(&client, &zone_id, &marker).await?;
    if let Some(refusal) = held_by_another(&client, &zone_id, &fqdn, &marker, &wanted).await? {
        return Ok(Err(refusal));
    }

    let (ids, refused) = write_records(&client, &zone_id, &owned, &wanted).await?;
    status.record_id = ids.first().cloned();
    status.managed_record_ids = ids;
    if !refused.is_empty() {
        return Ok(Err(("RecordRefused", refused.join(", "))));
    }
    if let Some(what) = source_gone {
        return Ok(Err((
            "SourceNotFound",
            format!("{what} not found; its records were deleted"),
        )));
    }
    Ok(Ok(format!(
        "{fqdn}: {} record(s) {}",
        wanted.len(),
        status.resolved_addresses.join(", ")
    )))
}

/// What to publish: the static content, or the source's addresses. A
/// missing source's records go (its name is returned with nothing to
/// publish) or stay (with Orphan, a refusal); a source without addresses
/// yet changes nothing.
async fn contents(
    record: &DNSRecord,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<(Vec<(DnsRecordType, String)>, Option<String>), Refusal>, Error> {
    let spec = &record.spec;
    let mut source_gone = None;
    let contents = match &spec.source_ref {
        None => dns_record::static_content(spec),
        Some(source) => {
            let what = source_name(namespace, source);
            match source_addresses(&ctx.client, namespace, source).await? {
                None => {
                    if spec.source_deletion_policy == SourceDeletionPolicy::Orphan {
                        return Ok(Err((
                            "SourceOrphaned",
                            format!(
                                "{what} not found; its records are kept (sourceDeletionPolicy Orphan)"
                            ),
                        )));
                    }
                    source_gone = Some(what);
                    Vec::new()
                }
                Some(addresses) => {
                    let contents =
                        dns_record::select(&addresses, spec.address_selection, spec.r#type);
                    if contents.is_empty() {
                        let kind = spec.r#type.map_or("an", |t| t.as_str());
                        return Ok(Err((
                            "NoAddress",
                            format!("{what} has no {kind} address to publish yet"),
                        )));
                    }
                    contents
                }
            }
        }
    };
    Ok(Ok((contents, source_gone)))
}

/// A record at `fqdn` that knit does not own (for this DNSRecord) and that
/// the wanted ones would clash with: left alone, and said so.
async fn held_by_another(
    client: &api::CloudflareClient,
    zone: &str,
    fqdn: &str,
    marker: &OwnerMarker,
    wanted: &[api::NewDnsRecord],
) -> Result<Option<Refusal>, Error> {
    let at_name = client
        .list_dns_records(
            zone,
            &api::DnsFilter {
                name: Some(fqdn.to_owned()),
                ..Default::default()
            },
        )
        .await?;
    let foreign: Vec<_> = at_name
        .into_iter()
        .filter(|r| !marker.owns(r.comment.as_deref()))
        .collect();
    if let Some(other) = dns_record::blocking(&foreign, wanted) {
        let holder = match other.comment.as_deref() {
            Some(comment) if comment.starts_with("knit:") => format!(" ({comment})"),
            _ => String::new(),
        };
        return Ok(Some((
            "RecordNotOwned",
            format!(
                "{fqdn} already has a record of type {} that this DNSRecord does not own{holder}; it is left alone",
                other.r#type
            ),
        )));
    }
    Ok(None)
}

/// Brings the owned records to `wanted`; returns the IDs of the records
/// owned after, and what Cloudflare refused.
async fn write_records(
    client: &api::CloudflareClient,
    zone: &str,
    owned: &[api::DnsRecord],
    wanted: &[api::NewDnsRecord],
) -> Result<(Vec<String>, Vec<String>), Error> {
    let changes = dns_record::record_changes(owned, wanted);
    for stale in &changes.delete {
        client.delete_dns_record(zone, &stale.id).await?;
    }
    let mut ids: Vec<String> = owned
        .iter()
        .filter(|r| !changes.delete.iter().any(|d| d.id == r.id))
        .map(|r| r.id.clone())
        .collect();
    let mut refused = Vec::new();
    let writes = changes
        .update
        .iter()
        .map(|(id, want)| (Some(id), want))
        .chain(changes.create.iter().map(|want| (None, want)));
    for (id, want) in writes {
        let written = match id {
            Some(id) => client.update_dns_record(zone, id, want).await,
            None => client.create_dns_record(zone, want).await,
        };
        match written {
            Ok(record) if !ids.contains(&record.id) => ids.push(record.id),
            Ok(_) => {}
            Err(api::Error::Api { errors, .. }) => refused.push(refusal(
                &format!("{} {}", want.r#type, want.content),
                &errors,
            )),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((ids, refused))
}

/// Deletes every record the object owns, whatever `sourceDeletionPolicy`
/// says: that policy is about the source, not the DNSRecord.
async fn cleanup(record: &DNSRecord, ctx: &Context) -> Result<Action, Error> {
    let Some(zone_id) = record.status.as_ref().and_then(|s| s.zone_id.clone()) else {
        return Ok(Action::await_change());
    };
    let namespace = record.namespace().unwrap_or_default();
    let client = ctx
        .accounts
        .client_for_cleanup(&record.spec.cloudflare, Some(&namespace))
        .await?;
    let batch_size = ctx.accounts.settings().dns_batch_size;
    delete_owned_records(&client, &zone_id, &ctx.marker(&owner(record)), batch_size).await?;
    Ok(Action::await_change())
}

/// An object a `DNSRecord` can take its addresses from.
pub enum Source {
    Service { namespace: String, name: String },
    Ingress { namespace: String, name: String },
    Node { name: String },
}

/// Whether `record` takes its addresses from `source`.
pub fn uses_source(record: &DNSRecord, source: &Source) -> bool {
    let Some(reference) = &record.spec.source_ref else {
        return false;
    };
    let here = |namespace: &str| record.namespace().as_deref() == Some(namespace);
    match source {
        Source::Service { namespace, name } => {
            here(namespace) && reference.service.as_ref().is_some_and(|s| s.name == *name)
        }
        Source::Ingress { namespace, name } => {
            here(namespace) && reference.ingress.as_ref().is_some_and(|i| i.name == *name)
        }
        Source::Node { name } => reference.node.as_ref().is_some_and(|n| n.name == *name),
    }
}
