use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::types::Zone;
use super::{
    ApiMessage, ApiToken, DnsFilter, DnsRecord, Error, NewDnsRecord, NewRoute, NewVirtualNetwork,
    Route, RouteFilter, Tunnel, TunnelConfig, TunnelConfiguration, TunnelToken, VirtualNetwork,
};
pub use crate::providers::retry::RetryPolicy;

/// The public API; tests point the client at a fake over plain HTTP.
pub const API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// Per HTTP exchange, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The page size asked for on paginated lists; the API may answer with
/// smaller pages, which the client follows all the same.
pub const PER_PAGE: u32 = 100;
/// `GET /zones` takes at most 50 a page.
const ZONES_PER_PAGE: u32 = 50;
/// A list longer than this many pages is taken for a server that never
/// says it is done.
const MAX_PAGES: u32 = 10_000;

/// Retries here: server errors (5xx) and requests that never reached the
/// server wait with exponential backoff and jitter; 429 waits what
/// `Retry-After` says, at most `max_delay`. Other 4xx are not retried. At
/// most about 15 s of waiting before the error goes back to the controller,
/// whose own requeue takes over from there.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(10),
};

/// A client of the Cloudflare API v4 for the calls knit makes. Cheap to
/// clone (one connection pool).
#[derive(Clone)]
pub struct CloudflareClient {
    http: reqwest::Client,
    base: Url,
    /// `Bearer <token>`, marked sensitive so that no `Debug` shows it.
    authorization: HeaderValue,
    retry: RetryPolicy,
}

impl fmt::Debug for CloudflareClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareClient")
            .field("base", &self.base.as_str())
            .field("token", &"***")
            .field("retry", &self.retry)
            .finish()
    }
}

/// The v4 envelope every answer comes in.
#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Option<Vec<ApiMessage>>,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// Pagination of a list answer; which fields are present varies by
/// endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
struct ResultInfo {
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    per_page: Option<u64>,
    #[serde(default)]
    total_count: Option<u64>,
    #[serde(default)]
    total_pages: Option<u64>,
}

impl ResultInfo {
    /// Whether pages after `page` hold more, judged from what the answer
    /// says, or else from a full page (`got` items for `asked` per page).
    fn more_after(&self, page: u64, got: usize, asked: u32) -> bool {
        if got == 0 {
            return false;
        }
        let page = self.page.unwrap_or(page);
        if let Some(total_pages) = self.total_pages {
            return page < total_pages;
        }
        let per_page = self.per_page.unwrap_or(u64::from(asked));
        if let (Some(total), true) = (self.total_count, per_page > 0) {
            return page.saturating_mul(per_page) < total;
        }
        got as u64 >= per_page
    }
}

/// A successful answer: the result and, for lists, its pagination.
#[derive(Debug)]
struct Answer<T> {
    result: T,
    info: Option<ResultInfo>,
}

/// What one request is: method, path below the base, query, JSON body.
struct Call<'a> {
    method: Method,
    segments: &'a [&'a str],
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl Call<'_> {
    /// The path as errors and logs show it, e.g. `/accounts/a/cfd_tunnel`.
    fn path(&self) -> String {
        let mut path = String::new();
        for segment in self.segments {
            path.push('/');
            path.push_str(segment);
        }
        path
    }
}

impl<'a> Call<'a> {
    fn new(method: Method, segments: &'a [&'a str]) -> Self {
        Call {
            method,
            segments,
            query: Vec::new(),
            body: None,
        }
    }

    fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    fn query_opt(self, key: &'static str, value: Option<&String>) -> Self {
        match value {
            Some(value) => self.query(key, value.clone()),
            None => self,
        }
    }

    fn json<B: Serialize>(mut self, body: &B) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            Error::Config(format!(
                "{} {}: encoding the request body: {e}",
                self.method,
                self.path()
            ))
        })?;
        self.body = Some(bytes);
        Ok(self)
    }
}

/// `PUT .../configurations` takes the configuration under `config`.
#[derive(Serialize)]
struct ConfigurationBody<'a> {
    config: &'a TunnelConfig,
}

#[derive(Serialize)]
struct NewTunnelBody<'a> {
    name: &'a str,
    config_src: &'a str,
}

#[derive(Serialize)]
struct NewWarpConnectorBody<'a> {
    name: &'a str,
}

/// A configuration as stored: `config` is `null` for a tunnel that was
/// never configured.
#[derive(Deserialize)]
struct StoredConfiguration {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    config: Option<TunnelConfig>,
}

/// The two kinds of tunnel, which share one shape under different paths.
#[derive(Clone, Copy)]
enum TunnelKind {
    Cloudflared,
    WarpConnector,
}

impl TunnelKind {
    fn segment(self) -> &'static str {
        match self {
            TunnelKind::Cloudflared => "cfd_tunnel",
            TunnelKind::WarpConnector => "warp_connector",
        }
    }
}

impl CloudflareClient {
    /// A client for the API at `base_url` (`API_BASE`, or a fake's
    /// endpoint), authenticating with `token`.
    pub fn new(base_url: &str, token: ApiToken) -> Result<Self, Error> {
        let base = Url::parse(base_url)
            .map_err(|e| Error::Config(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "base URL {base_url:?} is not an http(s) URL"
            )));
        }
        // The token's characters are not echoed: a header-invalid token is
        // most likely a pasted secret with a stray byte.
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| {
                Error::Config(
                    "the API token holds characters a header cannot carry (a line break?)".into(),
                )
            })?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(CloudflareClient {
            http,
            base,
            authorization,
            retry: DEFAULT_RETRY,
        })
    }

    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    // ---- Zones ----

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

    // ---- Tunnels (cfd_tunnel), remotely managed ----

    /// Creates a tunnel whose configuration lives in Cloudflare
    /// (`config_src: cloudflare`). A name already used by a tunnel that is
    /// not deleted is refused with code 1013.
    pub async fn create_tunnel(&self, account_id: &str, name: &str) -> Result<Tunnel, Error> {
        let segments = ["accounts", account_id, "cfd_tunnel"];
        let call = Call::new(Method::POST, &segments).json(&NewTunnelBody {
            name,
            config_src: "cloudflare",
        })?;
        Ok(self.call(call).await?.result)
    }

    /// The tunnel, or `None` if there is none or it is deleted.
    pub async fn get_tunnel(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<Tunnel>, Error> {
        self.get_any_tunnel(TunnelKind::Cloudflared, account_id, tunnel_id)
            .await
    }

    /// The tunnel named `name` that is not deleted, if any.
    pub async fn find_tunnel(&self, account_id: &str, name: &str) -> Result<Option<Tunnel>, Error> {
        self.find_any_tunnel(TunnelKind::Cloudflared, account_id, name)
            .await
    }

    /// The token `cloudflared tunnel run --token` takes.
    pub async fn tunnel_token(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<TunnelToken, Error> {
        self.any_tunnel_token(TunnelKind::Cloudflared, account_id, tunnel_id)
            .await
    }

    /// The tunnel's stored configuration; `None` if it was never configured
    /// or the tunnel does not exist.
    pub async fn tunnel_configuration(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<TunnelConfiguration>, Error> {
        let segments = [
            "accounts",
            account_id,
            "cfd_tunnel",
            tunnel_id,
            "configurations",
        ];
        let stored: StoredConfiguration = match self.call(Call::new(Method::GET, &segments)).await {
            Ok(answer) => answer.result,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(stored.config.map(|config| TunnelConfiguration {
            version: stored.version,
            config,
        }))
    }

    /// Replaces the whole configuration (there is no partial update) and
    /// returns it with its new version.
    pub async fn put_tunnel_configuration(
        &self,
        account_id: &str,
        tunnel_id: &str,
        config: &TunnelConfig,
    ) -> Result<TunnelConfiguration, Error> {
        let segments = [
            "accounts",
            account_id,
            "cfd_tunnel",
            tunnel_id,
            "configurations",
        ];
        let call = Call::new(Method::PUT, &segments).json(&ConfigurationBody { config })?;
        let path = call.path();
        let stored: StoredConfiguration = self.call(call).await?.result;
        let config = stored.config.ok_or_else(|| Error::Decode {
            method: "PUT".into(),
            path,
            status: 200,
            message: "the answer holds no config".into(),
        })?;
        Ok(TunnelConfiguration {
            version: stored.version,
            config,
        })
    }

    /// Deletes the tunnel. The API refuses to delete a tunnel with
    /// connections, and a cloudflared that was just stopped stays connected
    /// for a while, so the connections are cleaned up first
    /// (`DELETE .../connections`). A tunnel already gone is `Ok`. Delete the
    /// private network routes through the tunnel first: the API is reported
    /// to refuse while some remain (and the fake does).
    pub async fn delete_tunnel(&self, account_id: &str, tunnel_id: &str) -> Result<(), Error> {
        let connections = [
            "accounts",
            account_id,
            "cfd_tunnel",
            tunnel_id,
            "connections",
        ];
        match self
            .call::<IgnoredAny>(Call::new(Method::DELETE, &connections))
            .await
        {
            Ok(_) => {}
            Err(error) if error.is_not_found() => return Ok(()),
            Err(error) => return Err(error),
        }
        self.delete_any_tunnel(TunnelKind::Cloudflared, account_id, tunnel_id)
            .await
    }

    // ---- WARP connector tunnels ----

    pub async fn create_warp_connector(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<Tunnel, Error> {
        let segments = ["accounts", account_id, "warp_connector"];
        let call = Call::new(Method::POST, &segments).json(&NewWarpConnectorBody { name })?;
        Ok(self.call(call).await?.result)
    }

    /// The connector, or `None` if there is none or it is deleted.
    pub async fn get_warp_connector(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<Tunnel>, Error> {
        self.get_any_tunnel(TunnelKind::WarpConnector, account_id, tunnel_id)
            .await
    }

    pub async fn find_warp_connector(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<Option<Tunnel>, Error> {
        self.find_any_tunnel(TunnelKind::WarpConnector, account_id, name)
            .await
    }

    /// The token a WARP connector host joins with.
    pub async fn warp_connector_token(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<TunnelToken, Error> {
        self.any_tunnel_token(TunnelKind::WarpConnector, account_id, tunnel_id)
            .await
    }

    /// Deletes the connector; already gone is `Ok`. The API documents no
    /// way to clean up a WARP connector's connections, so while a connector
    /// host is still connected the API's refusal comes back as
    /// `Error::Api`: stop the connector first.
    pub async fn delete_warp_connector(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<(), Error> {
        self.delete_any_tunnel(TunnelKind::WarpConnector, account_id, tunnel_id)
            .await
    }

    async fn get_any_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<Tunnel>, Error> {
        let segments = ["accounts", account_id, kind.segment(), tunnel_id];
        match self.call::<Tunnel>(Call::new(Method::GET, &segments)).await {
            Ok(answer) => Ok(Some(answer.result).filter(|tunnel| tunnel.deleted_at.is_none())),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn find_any_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        name: &str,
    ) -> Result<Option<Tunnel>, Error> {
        let segments = ["accounts", account_id, kind.segment()];
        let tunnels: Vec<Tunnel> = self
            .list_all(
                Call::new(Method::GET, &segments)
                    .query("name", name)
                    .query("is_deleted", "false"),
                PER_PAGE,
            )
            .await?;
        Ok(tunnels
            .into_iter()
            .find(|tunnel| tunnel.name == name && tunnel.deleted_at.is_none()))
    }

    async fn any_tunnel_token(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<TunnelToken, Error> {
        let segments = ["accounts", account_id, kind.segment(), tunnel_id, "token"];
        let token: String = self.call(Call::new(Method::GET, &segments)).await?.result;
        Ok(TunnelToken::new(token))
    }

    async fn delete_any_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<(), Error> {
        let segments = ["accounts", account_id, kind.segment(), tunnel_id];
        self.delete(Call::new(Method::DELETE, &segments)).await
    }

    // ---- DNS ----

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
        let call = Call::new(Method::POST, &segments).json(record)?;
        Ok(self.call(call).await?.result)
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
        let call = Call::new(Method::PUT, &segments).json(record)?;
        Ok(self.call(call).await?.result)
    }

    /// Already gone is `Ok`.
    pub async fn delete_dns_record(&self, zone_id: &str, record_id: &str) -> Result<(), Error> {
        let segments = ["zones", zone_id, "dns_records", record_id];
        self.delete(Call::new(Method::DELETE, &segments)).await
    }

    // ---- Zero Trust networks ----

    /// The account's virtual networks that are not deleted (the API answers
    /// them in one page).
    pub async fn list_virtual_networks(
        &self,
        account_id: &str,
    ) -> Result<Vec<VirtualNetwork>, Error> {
        let segments = ["accounts", account_id, "teamnet", "virtual_networks"];
        let networks: Vec<VirtualNetwork> = self
            .call(Call::new(Method::GET, &segments).query("is_deleted", "false"))
            .await?
            .result;
        Ok(networks
            .into_iter()
            .filter(|network| network.deleted_at.is_none())
            .collect())
    }

    pub async fn create_virtual_network(
        &self,
        account_id: &str,
        vnet: &NewVirtualNetwork,
    ) -> Result<VirtualNetwork, Error> {
        let segments = ["accounts", account_id, "teamnet", "virtual_networks"];
        let call = Call::new(Method::POST, &segments).json(vnet)?;
        Ok(self.call(call).await?.result)
    }

    /// Sets name, comment and default flag (PATCH).
    pub async fn update_virtual_network(
        &self,
        account_id: &str,
        vnet_id: &str,
        vnet: &NewVirtualNetwork,
    ) -> Result<VirtualNetwork, Error> {
        let segments = [
            "accounts",
            account_id,
            "teamnet",
            "virtual_networks",
            vnet_id,
        ];
        let call = Call::new(Method::PATCH, &segments).json(vnet)?;
        Ok(self.call(call).await?.result)
    }

    /// Already gone is `Ok`. The API refuses while routes use the network.
    pub async fn delete_virtual_network(
        &self,
        account_id: &str,
        vnet_id: &str,
    ) -> Result<(), Error> {
        let segments = [
            "accounts",
            account_id,
            "teamnet",
            "virtual_networks",
            vnet_id,
        ];
        self.delete(Call::new(Method::DELETE, &segments)).await
    }

    /// Every route that passes `filter` and is not deleted, all pages.
    pub async fn list_routes(
        &self,
        account_id: &str,
        filter: &RouteFilter,
    ) -> Result<Vec<Route>, Error> {
        let segments = ["accounts", account_id, "teamnet", "routes"];
        let routes: Vec<Route> = self
            .list_all(
                Call::new(Method::GET, &segments)
                    .query_opt("tunnel_id", filter.tunnel_id.as_ref())
                    .query_opt("comment", filter.comment.as_ref())
                    .query_opt("virtual_network_id", filter.virtual_network_id.as_ref())
                    .query("is_deleted", "false"),
                PER_PAGE,
            )
            .await?;
        Ok(routes
            .into_iter()
            .filter(|route| route.deleted_at.is_none())
            .collect())
    }

    pub async fn create_route(&self, account_id: &str, route: &NewRoute) -> Result<Route, Error> {
        let segments = ["accounts", account_id, "teamnet", "routes"];
        let call = Call::new(Method::POST, &segments).json(route)?;
        Ok(self.call(call).await?.result)
    }

    /// Already gone is `Ok`.
    pub async fn delete_route(&self, account_id: &str, route_id: &str) -> Result<(), Error> {
        let segments = ["accounts", account_id, "teamnet", "routes", route_id];
        self.delete(Call::new(Method::DELETE, &segments)).await
    }

    // ---- The exchange ----

    /// A DELETE whose 404 means done.
    async fn delete(&self, call: Call<'_>) -> Result<(), Error> {
        match self.call::<IgnoredAny>(call).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Every page of a list, asking `per_page` at a time and following
    /// `result_info` to the end.
    async fn list_all<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        per_page: u32,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut page: u32 = 1;
        loop {
            let mut this_page = Call {
                method: call.method.clone(),
                segments: call.segments,
                query: call.query.clone(),
                body: None,
            };
            this_page.query.push(("page", page.to_string()));
            this_page.query.push(("per_page", per_page.to_string()));
            let answer: Answer<Vec<T>> = self.call(this_page).await?;
            let got = answer.result.len();
            items.extend(answer.result);
            let info = answer.info.unwrap_or_default();
            if !info.more_after(u64::from(page), got, per_page) {
                return Ok(items);
            }
            page += 1;
            if page > MAX_PAGES {
                return Err(Error::Decode {
                    method: call.method.to_string(),
                    path: call.path(),
                    status: 200,
                    message: format!("still more pages after {MAX_PAGES}"),
                });
            }
        }
    }

    /// One call, retried as the policy allows.
    async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<Answer<T>, Error> {
        let path = call.path();
        let idempotent = call.method != Method::POST && call.method != Method::PATCH;
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let error = match self.send(&call, &path).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if attempt >= attempts {
                return Err(error);
            }
            let delay = match &error {
                Error::RateLimited { retry_after, .. } => {
                    self.retry.delay_after(*retry_after, attempt - 1)
                }
                error if error.is_retryable(idempotent) => self.retry.delay(attempt - 1),
                _ => return Err(error),
            };
            tracing::debug!(
                method = %call.method, path = %path, %error, ?delay, attempt,
                "retrying Cloudflare API call"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange.
    async fn send<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        path: &str,
    ) -> Result<Answer<T>, Error> {
        let transport = |source: reqwest::Error| Error::Transport {
            method: call.method.to_string(),
            path: path.to_owned(),
            source: source.without_url(),
        };
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Config(format!("base URL {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(call.segments);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        let mut request = self
            .http
            .request(call.method.clone(), url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("knit/", env!("CARGO_PKG_VERSION")));
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(transport)?;
        tracing::trace!(method = %call.method, path = %path, status = status.as_u16(), "Cloudflare API call");
        decode(call.method.as_str(), path, status, retry_after, &body)
    }
}

/// The answer to `method path`: its result, or the error its status and
/// envelope describe.
fn decode<T: DeserializeOwned>(
    method: &str,
    path: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Answer<T>, Error> {
    let (method, path) = (method.to_owned(), path.to_owned());
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Error::RateLimited {
            method,
            path,
            retry_after,
        });
    }
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Err(Error::Decode {
                method,
                path,
                status: status.as_u16(),
                message: format!("not a v4 envelope ({e}): {}", snippet(body)),
            });
        }
    };
    let errors = envelope.errors.unwrap_or_default();
    match status.as_u16() {
        401 | 403 => {
            return Err(Error::Unauthorized {
                method,
                path,
                status: status.as_u16(),
                errors,
            });
        }
        404 => {
            return Err(Error::NotFound {
                method,
                path,
                errors,
            });
        }
        _ => {}
    }
    if !envelope.success || !status.is_success() {
        return Err(Error::Api {
            method,
            path,
            status: status.as_u16(),
            errors,
        });
    }
    let result = T::deserialize(envelope.result).map_err(|e| Error::Decode {
        method,
        path,
        status: status.as_u16(),
        message: format!("result: {e}"),
    })?;
    Ok(Answer {
        result,
        info: envelope.result_info,
    })
}

/// The start of a body that is not JSON (an HTML error page from a proxy),
/// for the error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut shown: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer<T: DeserializeOwned>(
        status: u16,
        body: serde_json::Value,
    ) -> Result<Answer<T>, Error> {
        decode(
            "GET",
            "/accounts/a/cfd_tunnel",
            StatusCode::from_u16(status).unwrap(),
            None,
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn decodes_a_result_and_its_pagination() {
        let answer: Answer<Vec<String>> = answer(
            200,
            json!({"success": true, "errors": [], "messages": [], "result": ["a", "b"],
                   "result_info": {"page": 1, "per_page": 2, "count": 2, "total_count": 5,
                                   "total_pages": 3}}),
        )
        .unwrap();
        assert_eq!(answer.result, ["a", "b"]);
        let info = answer.info.unwrap();
        assert_eq!(info.total_pages, Some(3));
        assert!(info.more_after(1, 2, 100));
    }

    #[test]
    fn success_false_is_an_api_error_with_every_message() {
        let error = answer::<IgnoredAny>(
            400,
            json!({"success": false, "result": null, "messages": [],
                   "errors": [{"code": 1013, "message": "You already have a tunnel with this name"},
                              {"code": 1000, "message": "and another", "documentation_url": "x"}]}),
        )
        .unwrap_err();
        let Error::Api { status, errors, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(*status, 400);
        assert_eq!(errors.len(), 2);
        assert_eq!(
            error.to_string(),
            "GET /accounts/a/cfd_tunnel: HTTP 400: \
             [1013] You already have a tunnel with this name; [1000] and another"
        );
        // success: false with a 200 status is an error all the same.
        let error = answer::<IgnoredAny>(
            200,
            json!({"success": false, "errors": [{"code": 7, "message": "no"}]}),
        )
        .unwrap_err();
        assert!(matches!(error, Error::Api { status: 200, .. }), "{error:?}");
    }

    #[test]
    fn auth_not_found_and_rate_limit_statuses_have_their_own_errors() {
        let body = json!({"success": false, "errors": [{"code": 10000, "message": "Authentication error"}]});
        for status in [401, 403] {
            let error = answer::<IgnoredAny>(status, body.clone()).unwrap_err();
            assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
            assert!(error.has_code(10000));
        }
        let error = answer::<IgnoredAny>(404, json!({"success": false, "errors": []})).unwrap_err();
        assert!(error.is_not_found());
        let error = decode::<IgnoredAny>(
            "GET",
            "/zones",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            b"<html>slow down</html>",
        )
        .unwrap_err();
        assert!(matches!(
            error,
            Error::RateLimited { retry_after: Some(after), .. } if after == Duration::from_secs(7)
        ));
    }

    #[test]
    fn a_body_that_is_not_an_envelope_is_a_decode_error_with_the_status() {
        let error = decode::<IgnoredAny>(
            "GET",
            "/zones",
            StatusCode::BAD_GATEWAY,
            None,
            b"<html>bad gateway</html>",
        )
        .unwrap_err();
        assert!(
            matches!(error, Error::Decode { status: 502, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("<html>bad gateway"), "{error}");
        assert!(error.is_retryable(true));
        let error =
            answer::<Tunnel>(200, json!({"success": true, "result": {"id": 1}})).unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    }

    #[test]
    fn pagination_follows_whatever_the_answer_says() {
        let info = |page, per_page, total_count, total_pages| ResultInfo {
            page,
            per_page,
            total_count,
            total_pages,
        };
        // total_pages decides when present.
        assert!(info(Some(2), Some(5), None, Some(3)).more_after(2, 5, 100));
        assert!(!info(Some(3), Some(5), None, Some(3)).more_after(3, 5, 100));
        // Else total_count and the page size the server used.
        assert!(info(None, Some(5), Some(11), None).more_after(2, 5, 100));
        assert!(!info(None, Some(5), Some(10), None).more_after(2, 5, 100));
        // Else a full page means maybe more; an empty one never does.
        assert!(ResultInfo::default().more_after(1, 100, 100));
        assert!(!ResultInfo::default().more_after(1, 99, 100));
        assert!(!info(Some(1), Some(5), None, Some(9)).more_after(1, 0, 100));
    }

    #[test]
    fn the_token_stays_out_of_debug_and_bad_tokens_are_refused_unshown() {
        let client = CloudflareClient::new(API_BASE, ApiToken::new("very-secret-token")).unwrap();
        let shown = format!("{client:?} {client:#?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("api.cloudflare.com"), "{shown}");
        let error =
            CloudflareClient::new(API_BASE, ApiToken::new("secret\nwith-newline")).unwrap_err();
        assert!(matches!(error, Error::Config(_)));
        assert!(!error.to_string().contains("secret"), "{error}");
        assert!(matches!(
            CloudflareClient::new("not a url", ApiToken::new("t")),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            CloudflareClient::new("mailto:x@example.com", ApiToken::new("t")),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn paths_show_the_api_path_without_the_query() {
        let segments = ["zones", "z1", "dns_records"];
        let call = Call::new(Method::GET, &segments).query("name", "a.example.com");
        assert_eq!(call.path(), "/zones/z1/dns_records");
    }
}
