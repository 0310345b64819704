//! A tunnel's DNS records: the ones knit owns (by their comment's marker),
//! brought to the names the mapper wants, and deleted with the tunnel.

use std::time::Instant;

use super::context::Context;
use super::error::Error;
use super::plan::{self, OwnerMarker};
use super::sources::TunnelKey;
use crate::providers::cloudflare::{self as api, CloudflareClient};

/// Brings the tunnel's owned DNS records to `wanted`; returns the hosts a
/// record knit does not own already holds (left alone).
pub(super) async fn sync_dns(
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
    let batch_size = ctx.accounts.settings().dns_batch_size;
    let mut blocked = Vec::new();
    for batch in changes.batches(batch_size) {
        blocked.extend(apply(client, &zone, key, &batch).await?);
    }
    if blocked.is_empty() {
        ctx.dns_synced.lock().expect("dns lock").insert(
            key.clone(),
            (wanted.to_vec(), tunnel_id.to_owned(), Instant::now()),
        );
    }
    Ok(blocked)
}

/// Makes `batch`'s changes in one call. Where Cloudflare refuses the batch
/// (one refused change fails them all: a host a foreign record holds, a
/// record gone meanwhile), they are made one by one, so the rest still
/// lands; returns the hosts a foreign record holds.
async fn apply(
    client: &CloudflareClient,
    zone: &str,
    owner: &impl std::fmt::Display,
    batch: &api::DnsBatch,
) -> Result<Vec<String>, Error> {
    let error = match client.batch_dns_records(zone, batch).await {
        Ok(_) => {
            tracing::info!(
                %owner, deleted = batch.deletes.len(), overwritten = batch.puts.len(),
                created = batch.posts.len(), "DNS records changed"
            );
            return Ok(Vec::new());
        }
        Err(error) if error.is_refusal() => error,
        Err(error) => return Err(error.into()),
    };
    tracing::info!(%owner, %error, "DNS batch refused: its changes go one by one");
    for record in &batch.deletes {
        client.delete_dns_record(zone, &record.id).await?;
    }
    for put in &batch.puts {
        client.update_dns_record(zone, &put.id, &put.record).await?;
    }
    let mut blocked = Vec::new();
    for record in &batch.posts {
        match client.create_dns_record(zone, record).await {
            Ok(_) => tracing::info!(%owner, name = %record.name, "DNS record created"),
            Err(e)
                if e.has_code(api::codes::DNS_HOST_TAKEN)
                    || e.has_code(api::codes::DNS_CNAME_TAKEN) =>
            {
                blocked.push(record.name.clone())
            }
            Err(e) => return Err(e.into()),
        }
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

/// Deletes the zone's records `marker` owns, `batch_size` to a call.
pub(super) async fn delete_owned_records(
    client: &CloudflareClient,
    zone: &str,
    marker: &OwnerMarker,
    batch_size: usize,
) -> Result<(), Error> {
    let changes = plan::DnsChanges {
        delete: owned_records(client, zone, marker).await?,
        ..Default::default()
    };
    for batch in changes.batches(batch_size) {
        apply(client, zone, &marker.prefix, &batch).await?;
    }
    Ok(())
}

pub(super) fn owner_marker(ctx: &Context, key: &TunnelKey) -> OwnerMarker {
    OwnerMarker::new(&ctx.accounts.settings().cluster_id, &key.to_string())
}
