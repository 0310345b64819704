//! DNS: a zone's ID from its name, and the zone's records, listed with
//! `name`, `type` and `comment.startswith` filters (the comment carries
//! knit's ownership marker), written one by one or in atomic batches.

use reqwest::Method;

use super::client::Call;
use super::types::{DnsBatchResult, Zone};
use super::{CloudflareClient, DnsBatch, DnsFilter, DnsRecord, Error, NewDnsRecord};

/// `GET /zones` takes at most 50 a page.
const ZONES_PER_PAGE: u32 = 50;
/// DNS record lists take up to 5,000 a page: a zone of a thousand tunnel
/// hosts is one call.
const RECORDS_PER_PAGE: u32 = 5000;

impl CloudflareClient {
    /// The ID of the zone `zone_name` in `account_id`
    /// (`GET /zones?name=..&account.id=..`); `Error::ZoneNotFound` if the
    /// token sees no such zone.
    pub async fn zone_id(&self, account_id: &str, zone_name: &str) -> Result<String, Error> {
        let zones: Vec<Zone> = self
            .list_all(
                Call::new(Method::GET, &["zones"])
                    .query("name", zone_name)
                    .query("account.id", account_id),
                ZONES_PER_PAGE,
            )
            .await?;
        zones
            .into_iter()
            .find(|zone| zone.name.eq_ignore_ascii_case(zone_name))
            .map(|zone| zone.id)
            .ok_or_else(|| Error::ZoneNotFound {
                account_id: account_id.to_owned(),
                zone: zone_name.to_owned(),
            })
    }

    /// Every record of the zone that passes `filter`, all pages.
    pub async fn list_dns_records(
        &self,
        zone_id: &str,
        filter: &DnsFilter,
    ) -> Result<Vec<DnsRecord>, Error> {
        let segments = ["zones", zone_id, "dns_records"];
        self.list_all(
            Call::new(Method::GET, &segments)
                .query_opt("name", filter.name.as_ref())
                .query_opt("type", filter.r#type.as_ref())
                .query_opt("comment.startswith", filter.comment_startswith.as_ref()),
            RECORDS_PER_PAGE,
        )
        .await
    }

    pub async fn create_dns_record(
        &self,
        zone_id: &str,
        record: &NewDnsRecord,
    ) -> Result<DnsRecord, Error> {
        let segments = ["zones", zone_id, "dns_records"];
        self.write(Method::POST, &segments, record).await
    }

    /// Overwrites the record (PUT): fields left out, such as a `None`
    /// comment, are cleared.
    pub async fn update_dns_record(
        &self,
        zone_id: &str,
        record_id: &str,
        record: &NewDnsRecord,
    ) -> Result<DnsRecord, Error> {
        let segments = ["zones", zone_id, "dns_records", record_id];
        self.write(Method::PUT, &segments, record).await
    }

    /// Makes every change of `batch` or none (one call). A refused change
    /// fails the whole batch with that change's error.
    pub async fn batch_dns_records(
        &self,
        zone_id: &str,
        batch: &DnsBatch,
    ) -> Result<DnsBatchResult, Error> {
        let segments = ["zones", zone_id, "dns_records", "batch"];
        self.write(Method::POST, &segments, batch).await
    }

    /// Already gone is `Ok`.
    pub async fn delete_dns_record(&self, zone_id: &str, record_id: &str) -> Result<(), Error> {
        let segments = ["zones", zone_id, "dns_records", record_id];
        self.delete(&segments).await
    }
}
