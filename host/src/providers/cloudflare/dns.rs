//! DNS: a zone's ID from its name, and the zone's records, listed with
//! `name`, `type` and `comment.startswith` filters (the comment carries
//! knit's ownership marker).

use reqwest::Method;

use super::client::Call;
use super::types::Zone;
use super::{CloudflareClient, DnsFilter, DnsRecord, Error, NewDnsRecord, PER_PAGE};

/// `GET /zones` takes at most 50 a page.
const ZONES_PER_PAGE: u32 = 50;

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
            PER_PAGE,
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

    /// Already gone is `Ok`.
    pub async fn delete_dns_record(&self, zone_id: &str, record_id: &str) -> Result<(), Error> {
        let segments = ["zones", zone_id, "dns_records", record_id];
        self.delete(&segments).await
    }
}
