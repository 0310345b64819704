//! A fake of the Cloudflare API v4 for tests: an HTTP server on 127.0.0.1
//! that keeps accounts, zones, tunnels, DNS records, virtual networks and
//! routes, and is as strict as the real API about what knit relies on.
//!
//! - Every request needs `Authorization: Bearer <token>` with a token added
//!   by `add_token`; a missing or unknown one is 401, code 10000
//!   (`Authentication error`). A token works for its own account only:
//!   another account's path, or a zone of another account, is 403, code
//!   10000.
//! - Every answer is the v4 envelope (`success`, `errors`, `messages`,
//!   `result`), lists with `result_info` (`page`, `per_page`, `count`,
//!   `total_count`, `total_pages`). Pages are real: a `per_page` above the
//!   endpoint's documented maximum (zones 50, DNS records 5000, tunnels and
//!   routes 1000) is refused, and `set_max_per_page` makes the server use
//!   smaller pages than the client asks for, to force several pages.
//! - Request bodies with fields the fake does not model, and query
//!   parameters it does not model, are refused (400), so a client cannot
//!   depend on something the fake silently ignores.
//! - Tunnels: `config_src` must be `cloudflare`; a name taken by a tunnel
//!   that is not deleted is 409, code 1013. A configuration PUT must be
//!   `{"config": {...}}` whose last ingress rule matches everything, and
//!   bumps the version. A tunnel with connections (`set_connections`, what
//!   a running cloudflared looks like) cannot be deleted (400, code 1022)
//!   until `DELETE .../connections` clears them; nor can one that routes
//!   still use. Deleted tunnels keep answering GET with `deleted_at` set
//!   and leave `is_deleted=false` lists.
//! - DNS: types A, AAAA, CNAME and TXT; names fully qualified inside the
//!   zone; a CNAME shares its name with no other record (81053 creating
//!   the CNAME, 81054 creating the other record); identical records are
//!   refused (81058); a missing record is 404, code 81044. A batch
//!   (`dns_records/batch`) runs deletes, patches, puts, then posts, each
//!   checked as its single call is, and keeps all or none of them; more
//!   operations than the batch limit (`set_batch_limit`, 200 as on the
//!   Free plan) are refused whole.
//! - Virtual networks: names unique per account; each account starts with
//!   a default network (`default`), which cannot be deleted; a network that
//!   routes use cannot be deleted. Routes: the network must be a CIDR with
//!   no host bits; the same network twice in one virtual network is 409.
//! - Faults: `fail_next` (an error for the next calls of a route),
//!   `rate_limit_next` (429 with `Retry-After`, code 971) and
//!   `set_latency`. `set_rate_budget` is Cloudflare's own limit: past
//!   `limit` requests of a token in a window, 429 (code 971) with
//!   `Retry-After` until the oldest leaves it. Calls are recorded (`calls`, `count`), refused ones
//!   included.
//!
//! The error codes are in `codes`, each marked as one the real API uses
//! (seen in its answers) or as the fake's own choice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The path prefix of the API, as in `https://api.cloudflare.com/client/v4`.
pub const PREFIX: &str = "/client/v4";

/// The error codes of the fake's answers.
pub mod codes {
    /// No or unknown token, or another account's resource (real).
    pub const AUTHENTICATION: i64 = 10000;
    /// Rate limited (real).
    pub const RATE_LIMITED: i64 = 971;
    /// A tunnel of that name exists (real).
    pub const TUNNEL_NAME_TAKEN: i64 = 1013;
    /// A zone ID that names no zone (real; the real API may answer 403 or
    /// 404 instead, depending on the token).
    pub const BAD_ZONE_ID: i64 = 7003;
    /// No such route of the API (the fake's).
    pub const NO_ROUTE: i64 = 7000;
    /// The route exists, not with this method (the fake's).
    pub const METHOD_NOT_ALLOWED: i64 = 7001;
    /// A malformed request: bad JSON, an unknown field or query parameter,
    /// an invalid value (the fake's).
    pub const INVALID_REQUEST: i64 = 1001;
    /// No such tunnel, virtual network or route (the fake's).
    pub const NOT_FOUND: i64 = 1002;
    /// A virtual network name or route network already taken (the fake's).
    pub const CONFLICT: i64 = 1003;
    /// The tunnel has active connections (the fake's number).
    pub const ACTIVE_CONNECTIONS: i64 = 1022;
    /// The tunnel still has routes (the fake's number).
    pub const TUNNEL_HAS_ROUTES: i64 = 1023;
    /// The virtual network is the default or still has routes (the
    /// fake's).
    pub const VNET_IN_USE: i64 = 1024;
    /// An invalid DNS record (believed real: `DNS Validation Error`).
    pub const DNS_VALIDATION: i64 = 1004;
    /// A record type that cannot be proxied (believed real).
    pub const NOT_PROXIABLE: i64 = 9004;
    /// A CNAME would share its name with another record (real).
    pub const HOST_TAKEN: i64 = 81053;
    /// A CNAME already has that name (real).
    pub const CNAME_TAKEN: i64 = 81054;
    /// An identical record exists (believed real; older answers used 81057).
    pub const IDENTICAL_RECORD: i64 = 81058;
    /// No such DNS record (believed real).
    pub const RECORD_NOT_FOUND: i64 = 81044;
    /// A batch over the plan's limit (the fake's number).
    pub const BATCH_TOO_LARGE: i64 = 81060;
}

/// Endpoints' own page size caps and defaults.
const DNS_MAX_PER_PAGE: usize = 5000;
const DNS_DEFAULT_PER_PAGE: usize = 100;
const LIST_MAX_PER_PAGE: usize = 1000;
const LIST_DEFAULT_PER_PAGE: usize = 20;
const ZONES_MAX_PER_PAGE: usize = 50;
/// The longest comment on a record or route (the free plan's limit).
const MAX_COMMENT: usize = 100;

/// A running fake; the server stops when this is dropped.
pub struct FakeCloudflare {
    endpoint: String,
    state: Arc<Mutex<Cloud>>,
    server: tokio::task::JoinHandle<()>,
}

/// A tunnel (`cfd_tunnel`) or WARP connector as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeTunnel {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// `cfd_tunnel` or `warp_connector`.
    pub tun_type: String,
    pub deleted: bool,
    pub connections: u32,
}

/// A stored tunnel configuration: its version and the `config` object.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeConfiguration {
    pub version: u64,
    pub config: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeDnsRecord {
    pub id: String,
    pub name: String,
    pub r#type: String,
    pub content: String,
    pub proxied: bool,
    pub ttl: u32,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVirtualNetwork {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub comment: String,
    pub is_default_network: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRoute {
    pub id: String,
    pub account_id: String,
    pub network: String,
    pub tunnel_id: String,
    pub comment: String,
    pub virtual_network_id: String,
}

impl FakeCloudflare {
    /// Starts a fake on a free port of 127.0.0.1, on the caller's runtime.
    pub async fn start() -> FakeCloudflare {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Cloudflare API");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(Cloud::new(address.port())));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the fake Cloudflare API");
        });
        FakeCloudflare {
            endpoint: format!("http://{address}{PREFIX}"),
            state,
            server,
        }
    }

    /// The base URL to give the client (`http://127.0.0.1:PORT/client/v4`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates an account, with its default virtual network.
    pub fn add_account(&self, account_id: &str) {
        let mut cloud = self.cloud();
        if !cloud.accounts.insert(account_id.to_owned()) {
            return;
        }
        let id = cloud.new_uuid();
        let created_at = now();
        cloud.vnets.insert(
            id.clone(),
            VnetState {
                id,
                account: account_id.to_owned(),
                name: "default".into(),
                comment: "The account's default virtual network".into(),
                is_default: true,
                created_at,
                deleted_at: None,
            },
        );
    }

    /// Accepts `token` for `account_id` (and that account only).
    pub fn add_token(&self, token: &str, account_id: &str) {
        let mut cloud = self.cloud();
        assert!(
            cloud.accounts.contains(account_id),
            "add_account({account_id:?}) first"
        );
        cloud.tokens.insert(token.to_owned(), account_id.to_owned());
    }

    /// Creates a zone in the account; returns its ID.
    pub fn add_zone(&self, account_id: &str, zone_name: &str) -> String {
        let mut cloud = self.cloud();
        assert!(
            cloud.accounts.contains(account_id),
            "add_account({account_id:?}) first"
        );
        let id = cloud.new_hex_id();
        cloud.zones.insert(
            id.clone(),
            ZoneState {
                account: account_id.to_owned(),
                name: zone_name.to_ascii_lowercase(),
                records: BTreeMap::new(),
            },
        );
        id
    }

    /// Creates a remotely managed tunnel in the account, as the dashboard
    /// would (knit did not make it); returns its ID.
    pub fn add_tunnel(&self, account_id: &str, name: &str) -> String {
        let body = json!({"name": name, "config_src": "cloudflare"}).to_string();
        let tunnel = self
            .cloud()
            .create_tunnel(Kind::Cloudflared, account_id, body.as_bytes())
            .unwrap_or_else(|_| panic!("creating tunnel {name}"));
        tunnel["result"]["id"]
            .as_str()
            .expect("a tunnel ID")
            .to_owned()
    }

    /// Caps every paginated list at `n` items a page.
    pub fn set_max_per_page(&self, n: usize) {
        assert!(n > 0, "a page holds at least one item");
        self.cloud().max_per_page = Some(n);
    }

    /// Pretends `n` connector connections are up on a tunnel or WARP
    /// connector (0: its cloudflared stopped and the edge forgot it).
    pub fn set_connections(&self, tunnel_id: &str, n: u32) {
        let mut cloud = self.cloud();
        let tunnel = cloud
            .tunnels
            .get_mut(tunnel_id)
            .unwrap_or_else(|| panic!("no tunnel {tunnel_id}"));
        if n > 0 {
            tunnel.conns_active_at = Some(now());
            tunnel.ever_connected = true;
        }
        tunnel.connections = n;
    }

    /// The next `times` calls of `method` (or `*`) on `route` answer
    /// `status` with one error `code` and `message`. `route` is a route
    /// name as `count` takes it (e.g. `cfd_tunnel/{id}/configurations`) or
    /// a path prefix below `/client/v4` starting with `/`.
    pub fn fail_next(
        &self,
        method: &str,
        route: &str,
        status: u16,
        code: i64,
        message: &str,
        times: usize,
    ) {
        self.cloud().faults.push(Fault {
            method: method.to_ascii_uppercase(),
            route: route.to_owned(),
            status,
            code,
            message: message.to_owned(),
            left: times,
        });
    }

    /// The next `n` authenticated calls, whatever they are, answer 429
    /// with `Retry-After: retry_after_secs` and code 971.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        self.cloud().rate_limit = Some(RateLimit {
            left: n,
            retry_after: retry_after_secs,
        });
    }

    /// Cloudflare's rate limit: at most `limit` requests per token in any
    /// `window`; past it, 429 with `Retry-After`.
    pub fn set_rate_budget(&self, limit: usize, window: Duration) {
        self.cloud().rate_budget = Some((limit, window));
    }

    /// Operations one DNS batch may hold (the plan's: 200 Free, 3,500 paid).
    pub fn set_batch_limit(&self, limit: usize) {
        self.cloud().batch_limit = limit;
    }

    /// Requests refused by `rate_limit_next` or the rate budget so far.
    pub fn rate_limited(&self) -> usize {
        self.cloud().rate_limited
    }

    /// Every answer is delayed this long.
    pub fn set_latency(&self, latency: Duration) {
        self.cloud().latency = latency;
    }

    /// Requests received, refused ones included: method and path below
    /// `/client/v4` (no query).
    pub fn calls(&self) -> Vec<(String, String)> {
        self.cloud()
            .calls
            .iter()
            .map(|call| (call.method.clone(), call.path.clone()))
            .collect()
    }

    /// Requests received with `method` (or `*`) on `route`: a route name
    /// (`zones`, `dns_records`, `dns_records/{id}`, `cfd_tunnel`,
    /// `cfd_tunnel/{id}`, `cfd_tunnel/{id}/token`,
    /// `cfd_tunnel/{id}/connections`, `cfd_tunnel/{id}/configurations`,
    /// `warp_connector`, `warp_connector/{id}`, `warp_connector/{id}/token`,
    /// `teamnet/virtual_networks`, `teamnet/virtual_networks/{id}`,
    /// `teamnet/routes`, `teamnet/routes/{id}`) or a path prefix starting
    /// with `/`.
    pub fn count(&self, method: &str, route: &str) -> usize {
        let method = method.to_ascii_uppercase();
        self.cloud()
            .calls
            .iter()
            .filter(|call| (method == "*" || call.method == method) && route_matches(route, call))
            .count()
    }

    /// Forgets the calls recorded so far.
    pub fn reset_calls(&self) {
        self.cloud().calls.clear();
    }

    /// Every `cfd_tunnel`, deleted ones included, oldest first.
    pub fn tunnels(&self) -> Vec<FakeTunnel> {
        self.tunnels_of(Kind::Cloudflared)
    }

    /// Every WARP connector, deleted ones included, oldest first.
    pub fn warp_connectors(&self) -> Vec<FakeTunnel> {
        self.tunnels_of(Kind::WarpConnector)
    }

    fn tunnels_of(&self, kind: Kind) -> Vec<FakeTunnel> {
        self.cloud()
            .tunnels
            .values()
            .filter(|tunnel| tunnel.kind == kind)
            .map(|tunnel| FakeTunnel {
                id: tunnel.id.clone(),
                account_id: tunnel.account.clone(),
                name: tunnel.name.clone(),
                tun_type: kind.tun_type().into(),
                deleted: tunnel.deleted_at.is_some(),
                connections: tunnel.connections,
            })
            .collect()
    }

    /// The tunnel's stored configuration, if it was ever PUT.
    pub fn tunnel_configuration(&self, tunnel_id: &str) -> Option<FakeConfiguration> {
        let cloud = self.cloud();
        let tunnel = cloud.tunnels.get(tunnel_id)?;
        tunnel.config.as_ref().map(|config| FakeConfiguration {
            version: tunnel.version,
            config: config.clone(),
        })
    }

    /// The zone's records, oldest first.
    pub fn dns_records(&self, zone_id: &str) -> Vec<FakeDnsRecord> {
        self.cloud()
            .zones
            .get(zone_id)
            .map(|zone| zone.records.values().map(RecordState::public).collect())
            .unwrap_or_default()
    }

    /// Creates a record out of band, as a person in the dashboard would
    /// (no checks); returns its ID.
    pub fn add_dns_record(
        &self,
        zone_id: &str,
        name: &str,
        r#type: &str,
        content: &str,
        comment: Option<&str>,
    ) -> String {
        let mut cloud = self.cloud();
        let id = cloud.new_hex_id();
        let zone = cloud.zones.get_mut(zone_id).expect("no such zone");
        let created = now();
        zone.records.insert(
            id.clone(),
            RecordState {
                id: id.clone(),
                name: name.to_ascii_lowercase(),
                r#type: r#type.to_owned(),
                content: content.to_owned(),
                proxied: false,
                ttl: 1,
                comment: comment.map(str::to_owned),
                created_on: created.clone(),
                modified_on: created,
            },
        );
        id
    }

    /// Every virtual network that is not deleted, oldest first.
    pub fn virtual_networks(&self) -> Vec<FakeVirtualNetwork> {
        self.cloud()
            .vnets
            .values()
            .filter(|vnet| vnet.deleted_at.is_none())
            .map(|vnet| FakeVirtualNetwork {
                id: vnet.id.clone(),
                account_id: vnet.account.clone(),
                name: vnet.name.clone(),
                comment: vnet.comment.clone(),
                is_default_network: vnet.is_default,
            })
            .collect()
    }

    /// Every route that is not deleted, oldest first.
    pub fn routes(&self) -> Vec<FakeRoute> {
        self.cloud()
            .routes
            .values()
            .filter(|route| route.deleted_at.is_none())
            .map(|route| FakeRoute {
                id: route.id.clone(),
                account_id: route.account.clone(),
                network: route.network.clone(),
                tunnel_id: route.tunnel_id.clone(),
                comment: route.comment.clone(),
                virtual_network_id: route.vnet_id.clone(),
            })
            .collect()
    }

    fn cloud(&self) -> MutexGuard<'_, Cloud> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(state: &Mutex<Cloud>) -> MutexGuard<'_, Cloud> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(
    State(state): State<Arc<Mutex<Cloud>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = lock(&state).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let reply = lock(&state).serve(method.as_str(), uri.path(), uri.query(), &headers, &body);
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(CONTENT_TYPE, "application/json")],
        reply.body.to_string(),
    )
        .into_response();
    if let Some(seconds) = reply.retry_after {
        response.headers_mut().insert(RETRY_AFTER, seconds.into());
    }
    response
}

/// An answer: status, envelope, and `Retry-After` for a 429.
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

/// An API error: status, code and message.
#[derive(Debug)]
struct Refusal {
    status: u16,
    code: i64,
    message: String,
}

fn refuse<T>(status: u16, code: i64, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        code,
        message: message.into(),
    })
}

fn invalid<T>(message: impl Into<String>) -> Result<T, Refusal> {
    refuse(400, codes::INVALID_REQUEST, message)
}

fn not_found<T>(what: &str, id: &str) -> Result<T, Refusal> {
    refuse(404, codes::NOT_FOUND, format!("{what} {id} not found"))
}

fn envelope(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

/// Everything the fake holds, behind one lock: each request is served
/// whole, as one step.
struct Cloud {
    /// Makes IDs unique across fakes running at once.
    port: u16,
    counter: u64,
    accounts: BTreeSet<String>,
    tokens: HashMap<String, String>,
    zones: BTreeMap<String, ZoneState>,
    tunnels: BTreeMap<String, TunnelState>,
    vnets: BTreeMap<String, VnetState>,
    routes: BTreeMap<String, RouteState>,
    max_per_page: Option<usize>,
    faults: Vec<Fault>,
    rate_limit: Option<RateLimit>,
    rate_limited: usize,
    /// `(limit, window)` per token, and when each token's requests came.
    rate_budget: Option<(usize, Duration)>,
    sent: HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    batch_limit: usize,
    latency: Duration,
    calls: Vec<CallRecord>,
}

struct ZoneState {
    account: String,
    name: String,
    records: BTreeMap<String, RecordState>,
}

#[derive(Clone)]
struct RecordState {
    id: String,
    name: String,
    r#type: String,
    content: String,
    proxied: bool,
    ttl: u32,
    comment: Option<String>,
    created_on: String,
    modified_on: String,
}

impl RecordState {
    fn public(&self) -> FakeDnsRecord {
        FakeDnsRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            r#type: self.r#type.clone(),
            content: self.content.clone(),
            proxied: self.proxied,
            ttl: self.ttl,
            comment: self.comment.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cloudflared,
    WarpConnector,
}

impl Kind {
    fn tun_type(self) -> &'static str {
        match self {
            Kind::Cloudflared => "cfd_tunnel",
            Kind::WarpConnector => "warp_connector",
        }
    }
}

struct TunnelState {
    id: String,
    account: String,
    kind: Kind,
    name: String,
    /// Base64 of 32 bytes, as `tunnel_secret` is.
    secret: String,
    created_at: String,
    deleted_at: Option<String>,
    connections: u32,
    ever_connected: bool,
    conns_active_at: Option<String>,
    config: Option<Value>,
    version: u64,
    config_created_at: Option<String>,
}

struct VnetState {
    id: String,
    account: String,
    name: String,
    comment: String,
    is_default: bool,
    created_at: String,
    deleted_at: Option<String>,
}

struct RouteState {
    id: String,
    account: String,
    network: String,
    tunnel_id: String,
    comment: String,
    vnet_id: String,
    created_at: String,
    deleted_at: Option<String>,
}

struct Fault {
    method: String,
    route: String,
    status: u16,
    code: i64,
    message: String,
    left: usize,
}

struct RateLimit {
    left: usize,
    retry_after: u64,
}

struct CallRecord {
    method: String,
    path: String,
    route: &'static str,
}

/// Whether `route` (a route name, or a path prefix starting with `/`)
/// names the call.
fn route_matches(route: &str, call: &CallRecord) -> bool {
    if route.starts_with('/') {
        call.path.starts_with(route)
    } else {
        call.route == route
    }
}

/// What a request addresses, with the IDs from its path.
enum Endpoint {
    Zones,
    DnsRecords {
        zone: String,
    },
    DnsRecord {
        zone: String,
        id: String,
    },
    DnsBatch {
        zone: String,
    },
    Tunnels {
        kind: Kind,
        account: String,
    },
    Tunnel {
        kind: Kind,
        account: String,
        id: String,
    },
    TunnelToken {
        kind: Kind,
        account: String,
        id: String,
    },
    Connections {
        account: String,
        id: String,
    },
    Configurations {
        account: String,
        id: String,
    },
    Vnets {
        account: String,
    },
    Vnet {
        account: String,
        id: String,
    },
    Routes {
        account: String,
    },
    Route {
        account: String,
        id: String,
    },
}

impl Endpoint {
    fn parse(segments: &[String]) -> Option<Endpoint> {
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let owned = |i: usize| s[i].to_owned();
        let kind = |segment: &str| match segment {
            "cfd_tunnel" => Some(Kind::Cloudflared),
            "warp_connector" => Some(Kind::WarpConnector),
            _ => None,
        };
        Some(match s.as_slice() {
            ["zones"] => Endpoint::Zones,
            ["zones", _, "dns_records"] => Endpoint::DnsRecords { zone: owned(1) },
            ["zones", _, "dns_records", "batch"] => Endpoint::DnsBatch { zone: owned(1) },
            ["zones", _, "dns_records", _] => Endpoint::DnsRecord {
                zone: owned(1),
                id: owned(3),
            },
            ["accounts", _, "teamnet", "virtual_networks"] => Endpoint::Vnets { account: owned(1) },
            ["accounts", _, "teamnet", "virtual_networks", _] => Endpoint::Vnet {
                account: owned(1),
                id: owned(4),
            },
            ["accounts", _, "teamnet", "routes"] => Endpoint::Routes { account: owned(1) },
            ["accounts", _, "teamnet", "routes", _] => Endpoint::Route {
                account: owned(1),
                id: owned(4),
            },
            ["accounts", _, "cfd_tunnel", _, "connections"] => Endpoint::Connections {
                account: owned(1),
                id: owned(3),
            },
            ["accounts", _, "cfd_tunnel", _, "configurations"] => Endpoint::Configurations {
                account: owned(1),
                id: owned(3),
            },
            ["accounts", _, collection] => Endpoint::Tunnels {
                kind: kind(collection)?,
                account: owned(1),
            },
            ["accounts", _, collection, _] => Endpoint::Tunnel {
                kind: kind(collection)?,
                account: owned(1),
                id: owned(3),
            },
            ["accounts", _, collection, _, "token"] => Endpoint::TunnelToken {
                kind: kind(collection)?,
                account: owned(1),
                id: owned(3),
            },
            _ => return None,
        })
    }

    /// The route name calls are counted and faults injected by.
    fn route(&self) -> &'static str {
        match self {
            Endpoint::Zones => "zones",
            Endpoint::DnsRecords { .. } => "dns_records",
            Endpoint::DnsRecord { .. } => "dns_records/{id}",
            Endpoint::DnsBatch { .. } => "dns_records/batch",
            Endpoint::Tunnels { kind, .. } => match kind {
                Kind::Cloudflared => "cfd_tunnel",
                Kind::WarpConnector => "warp_connector",
            },
            Endpoint::Tunnel { kind, .. } => match kind {
                Kind::Cloudflared => "cfd_tunnel/{id}",
                Kind::WarpConnector => "warp_connector/{id}",
            },
            Endpoint::TunnelToken { kind, .. } => match kind {
                Kind::Cloudflared => "cfd_tunnel/{id}/token",
                Kind::WarpConnector => "warp_connector/{id}/token",
            },
            Endpoint::Connections { .. } => "cfd_tunnel/{id}/connections",
            Endpoint::Configurations { .. } => "cfd_tunnel/{id}/configurations",
            Endpoint::Vnets { .. } => "teamnet/virtual_networks",
            Endpoint::Vnet { .. } => "teamnet/virtual_networks/{id}",
            Endpoint::Routes { .. } => "teamnet/routes",
            Endpoint::Route { .. } => "teamnet/routes/{id}",
        }
    }

    /// The account in the path, if the path has one.
    fn account(&self) -> Option<&str> {
        match self {
            Endpoint::Zones
            | Endpoint::DnsRecords { .. }
            | Endpoint::DnsRecord { .. }
            | Endpoint::DnsBatch { .. } => None,
            Endpoint::Tunnels { account, .. }
            | Endpoint::Tunnel { account, .. }
            | Endpoint::TunnelToken { account, .. }
            | Endpoint::Connections { account, .. }
            | Endpoint::Configurations { account, .. }
            | Endpoint::Vnets { account }
            | Endpoint::Vnet { account, .. }
            | Endpoint::Routes { account }
            | Endpoint::Route { account, .. } => Some(account),
        }
    }

    fn zone(&self) -> Option<&str> {
        match self {
            Endpoint::DnsRecords { zone }
            | Endpoint::DnsRecord { zone, .. }
            | Endpoint::DnsBatch { zone } => Some(zone),
            _ => None,
        }
    }
}

/// A request's query parameters, checked against what an endpoint models.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key), percent_decode(value))
                })
                .collect(),
        )
    }

    /// Refuses parameters outside `allowed`, and repeated ones.
    fn only(&self, allowed: &[&str]) -> Result<(), Refusal> {
        let mut seen = BTreeSet::new();
        for (key, _) in &self.0 {
            if !allowed.contains(&key.as_str()) {
                return invalid(format!(
                    "unknown query parameter {key:?} (this endpoint takes {allowed:?})"
                ));
            }
            if !seen.insert(key) {
                return invalid(format!("query parameter {key:?} given twice"));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Refusal> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => invalid(format!("{key} must be true or false, not {other:?}")),
        }
    }

    fn positive(&self, key: &str) -> Result<Option<usize>, Refusal> {
        match self.get(key) {
            None => Ok(None),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => invalid(format!("{key} must be a positive integer, not {text:?}")),
            },
        }
    }
}

/// `%XX` and `+` decoding of one query or path component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body as `T`, whose serde attributes refuse unknown fields.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).or_else(|e| invalid(format!("invalid request body: {e}")))
}

/// One page of `items` and its `result_info`.
fn paginate(
    items: Vec<Value>,
    query: &Query,
    default_per_page: usize,
    endpoint_max: usize,
    fake_max: Option<usize>,
) -> Result<Reply, Refusal> {
    let page = query.positive("page")?.unwrap_or(1);
    let asked = query.positive("per_page")?.unwrap_or(default_per_page);
    if asked > endpoint_max {
        return invalid(format!(
            "per_page must be at most {endpoint_max}, not {asked}"
        ));
    }
    let per_page = asked.min(fake_max.unwrap_or(usize::MAX));
    let total = items.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let shown: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    let mut body = envelope(Value::Null);
    body["result_info"] = json!({
        "page": page,
        "per_page": per_page,
        "count": shown.len(),
        "total_count": total,
        "total_pages": total_pages,
    });
    body["result"] = Value::Array(shown);
    Ok(Reply {
        status: 200,
        body,
        retry_after: None,
    })
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl Cloud {
    fn new(port: u16) -> Self {
        Cloud {
            port,
            counter: 0,
            accounts: BTreeSet::new(),
            tokens: HashMap::new(),
            zones: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            vnets: BTreeMap::new(),
            routes: BTreeMap::new(),
            max_per_page: None,
            faults: Vec::new(),
            rate_limit: None,
            rate_limited: 0,
            rate_budget: None,
            sent: HashMap::new(),
            batch_limit: 200,
            latency: Duration::ZERO,
            calls: Vec::new(),
        }
    }

    /// A UUID-shaped ID; IDs sort in creation order.
    fn new_uuid(&mut self) -> String {
        self.counter += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", self.port, self.counter)
    }

    /// A 32-hex-digit ID (zones, DNS records); they sort in creation order.
    fn new_hex_id(&mut self) -> String {
        self.counter += 1;
        format!("{:08x}{:024x}", self.port, self.counter)
    }

    /// Routes, authenticates, throttles, injects faults, then serves.
    fn serve(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let refusal = match self.serve_inner(method, path, query, headers, body) {
            Ok(reply) => return reply,
            Err(refusal) => refusal,
        };
        let retry_after = (refusal.status == 429).then(|| {
            self.rate_limit
                .as_ref()
                .map_or(1, |limit| limit.retry_after)
        });
        Reply {
            status: refusal.status,
            body: json!({
                "success": false,
                "errors": [{"code": refusal.code, "message": refusal.message}],
                "messages": [],
                "result": null,
            }),
            retry_after,
        }
    }

    fn serve_inner(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Reply, Refusal> {
        let Some(below) = path.strip_prefix(PREFIX) else {
            return refuse(404, codes::NO_ROUTE, format!("No route for {path}"));
        };
        let segments: Vec<String> = below
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(percent_decode)
            .collect();
        let endpoint = Endpoint::parse(&segments);
        self.calls.push(CallRecord {
            method: method.to_owned(),
            path: below.to_owned(),
            route: endpoint.as_ref().map_or("?", Endpoint::route),
        });
        let Some(endpoint) = endpoint else {
            return refuse(
                404,
                codes::NO_ROUTE,
                format!("No route for that URI: {below}"),
            );
        };
        let account = self.authenticate(headers)?;
        if let Some(limit) = &mut self.rate_limit
            && limit.left > 0
        {
            limit.left -= 1;
            self.rate_limited += 1;
            return refuse(
                429,
                codes::RATE_LIMITED,
                "Please wait and consider throttling your request speed",
            );
        }
        self.spend_budget(headers)?;
        let route = endpoint.route();
        let record = CallRecord {
            method: method.to_owned(),
            path: below.to_owned(),
            route,
        };
        if let Some(fault) = self.faults.iter_mut().find(|fault| {
            fault.left > 0
                && (fault.method == "*" || fault.method == method)
                && route_matches(&fault.route, &record)
        }) {
            fault.left -= 1;
            return refuse(fault.status, fault.code, fault.message.clone());
        }
        self.authorize(&account, &endpoint)?;
        let query = Query::parse(query);
        let result = self.dispatch(method, &endpoint, &account, &query, body)?;
        Ok(Reply {
            status: 200,
            body: result,
            retry_after: None,
        })
    }

    /// Counts the request against its token's budget, or refuses it with
    /// the wait until the budget admits one more.
    fn spend_budget(&mut self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some((limit, window)) = self.rate_budget else {
            return Ok(());
        };
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let now = std::time::Instant::now();
        let sent = self.sent.entry(token).or_default();
        while sent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= window)
        {
            sent.pop_front();
        }
        if sent.len() < limit {
            sent.push_back(now);
            return Ok(());
        }
        let wait = window.saturating_sub(now.duration_since(sent[0]));
        self.rate_limited += 1;
        // Spent (`left: 0`): only carries this refusal's `Retry-After`.
        self.rate_limit = Some(RateLimit {
            left: 0,
            retry_after: wait.as_secs_f64().ceil() as u64,
        });
        refuse(
            429,
            codes::RATE_LIMITED,
            "Please wait and consider throttling your request speed",
        )
    }

    /// The account the bearer token belongs to.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match token.and_then(|token| self.tokens.get(token)) {
            Some(account) => Ok(account.clone()),
            None => refuse(401, codes::AUTHENTICATION, "Authentication error"),
        }
    }

    /// The token's account may touch what the path names.
    fn authorize(&self, account: &str, endpoint: &Endpoint) -> Result<(), Refusal> {
        if let Some(path_account) = endpoint.account()
            && path_account != account
        {
            return refuse(403, codes::AUTHENTICATION, "Authentication error");
        }
        if let Some(zone_id) = endpoint.zone() {
            match self.zones.get(zone_id) {
                None => {
                    return refuse(
                        400,
                        codes::BAD_ZONE_ID,
                        format!(
                            "Could not route to /zones/{zone_id}/dns_records, perhaps your \
                             object identifier is invalid?"
                        ),
                    );
                }
                Some(zone) if zone.account != account => {
                    return refuse(403, codes::AUTHENTICATION, "Authentication error");
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        method: &str,
        endpoint: &Endpoint,
        account: &str,
        query: &Query,
        body: &[u8],
    ) -> Result<Value, Refusal> {
        let no_query = || query.only(&[]);
        match (method, endpoint) {
            ("GET", Endpoint::Zones) => self.list_zones(account, query),
            ("GET", Endpoint::Tunnels { kind, account }) => {
                self.list_tunnels(*kind, account, query)
            }
            ("POST", Endpoint::Tunnels { kind, account }) => {
                no_query()?;
                self.create_tunnel(*kind, account, body)
            }
            ("GET", Endpoint::Tunnel { kind, account, id }) => {
                no_query()?;
                let tunnel = self.tunnel(*kind, account, id)?;
                Ok(envelope(self.tunnel_json(tunnel)))
            }
            ("DELETE", Endpoint::Tunnel { kind, account, id }) => {
                no_query()?;
                self.delete_tunnel(*kind, account, id)
            }
            ("GET", Endpoint::TunnelToken { kind, account, id }) => {
                no_query()?;
                let tunnel = self.live_tunnel(*kind, account, id)?;
                let token = json!({"a": tunnel.account, "t": tunnel.id, "s": tunnel.secret});
                Ok(envelope(Value::String(base64(
                    token.to_string().as_bytes(),
                ))))
            }
            ("DELETE", Endpoint::Connections { account, id }) => {
                no_query()?;
                let tunnel = self.live_tunnel_mut(Kind::Cloudflared, account, id)?;
                tunnel.connections = 0;
                Ok(envelope(Value::Null))
            }
            ("GET", Endpoint::Configurations { account, id }) => {
                no_query()?;
                let tunnel = self.live_tunnel(Kind::Cloudflared, account, id)?;
                Ok(envelope(configuration_json(tunnel)))
            }
            ("PUT", Endpoint::Configurations { account, id }) => {
                no_query()?;
                self.put_configuration(account, id, body)
            }
            ("GET", Endpoint::DnsRecords { zone }) => self.list_records(zone, query),
            ("POST", Endpoint::DnsRecords { zone }) => {
                no_query()?;
                self.write_record(zone, None, body)
            }
            ("POST", Endpoint::DnsBatch { zone }) => {
                no_query()?;
                self.batch_records(zone, body)
            }
            ("PUT", Endpoint::DnsRecord { zone, id }) => {
                no_query()?;
                self.write_record(zone, Some(id), body)
            }
            ("DELETE", Endpoint::DnsRecord { zone, id }) => {
                no_query()?;
                self.delete_record(zone, id)
            }
            ("GET", Endpoint::Vnets { account }) => self.list_vnets(account, query),
            ("POST", Endpoint::Vnets { account }) => {
                no_query()?;
                self.create_vnet(account, body)
            }
            ("PATCH", Endpoint::Vnet { account, id }) => {
                no_query()?;
                self.update_vnet(account, id, body)
            }
            ("DELETE", Endpoint::Vnet { account, id }) => {
                no_query()?;
                self.delete_vnet(account, id)
            }
            ("GET", Endpoint::Routes { account }) => self.list_routes(account, query),
            ("POST", Endpoint::Routes { account }) => {
                no_query()?;
                self.create_route(account, body)
            }
            ("DELETE", Endpoint::Route { account, id }) => {
                no_query()?;
                self.delete_route(account, id)
            }
            _ => refuse(
                405,
                codes::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}", endpoint.route()),
            ),
        }
    }

    /// Turns a paginated `Reply` into the `dispatch` result.
    fn page(
        &self,
        items: Vec<Value>,
        query: &Query,
        default: usize,
        max: usize,
    ) -> Result<Value, Refusal> {
        Ok(paginate(items, query, default, max, self.max_per_page)?.body)
    }

    // ---- Zones ----

    fn list_zones(&self, account: &str, query: &Query) -> Result<Value, Refusal> {
        query.only(&["name", "account.id", "page", "per_page"])?;
        let zones: Vec<Value> = self
            .zones
            .iter()
            .filter(|(_, zone)| {
                zone.account == account
                    && query
                        .get("name")
                        .is_none_or(|name| name.eq_ignore_ascii_case(&zone.name))
                    && query.get("account.id").is_none_or(|id| id == zone.account)
            })
            .map(|(id, zone)| {
                json!({
                    "id": id,
                    "name": zone.name,
                    "status": "active",
                    "paused": false,
                    "type": "full",
                    "account": {"id": zone.account, "name": format!("account {}", zone.account)},
                })
            })
            .collect();
        self.page(zones, query, LIST_DEFAULT_PER_PAGE, ZONES_MAX_PER_PAGE)
    }

    // ---- Tunnels ----

    fn tunnel(&self, kind: Kind, account: &str, id: &str) -> Result<&TunnelState, Refusal> {
        match self.tunnels.get(id) {
            Some(tunnel) if tunnel.kind == kind && tunnel.account == account => Ok(tunnel),
            _ => not_found("Tunnel", id),
        }
    }

    /// A tunnel that is not deleted.
    fn live_tunnel(&self, kind: Kind, account: &str, id: &str) -> Result<&TunnelState, Refusal> {
        match self.tunnel(kind, account, id)? {
            tunnel if tunnel.deleted_at.is_none() => Ok(tunnel),
            _ => not_found("Tunnel", id),
        }
    }

    fn live_tunnel_mut(
        &mut self,
        kind: Kind,
        account: &str,
        id: &str,
    ) -> Result<&mut TunnelState, Refusal> {
        self.live_tunnel(kind, account, id)?;
        self.tunnels
            .get_mut(id)
            .map_or_else(|| not_found("Tunnel", id), Ok)
    }

    fn tunnel_json(&self, tunnel: &TunnelState) -> Value {
        let status = if tunnel.connections > 0 {
            "healthy"
        } else if tunnel.ever_connected {
            "down"
        } else {
            "inactive"
        };
        let mut value = json!({
            "id": tunnel.id,
            "account_tag": tunnel.account,
            "created_at": tunnel.created_at,
            "deleted_at": tunnel.deleted_at,
            "name": tunnel.name,
            "connections": [],
            "conns_active_at": tunnel.conns_active_at,
            "conns_inactive_at": if tunnel.connections > 0 { Value::Null } else { tunnel.created_at.clone().into() },
            "tun_type": tunnel.kind.tun_type(),
            "metadata": {},
            "status": status,
        });
        if tunnel.kind == Kind::Cloudflared {
            value["remote_config"] = true.into();
            value["config_src"] = "cloudflare".into();
        }
        value
    }

    fn list_tunnels(&self, kind: Kind, account: &str, query: &Query) -> Result<Value, Refusal> {
        query.only(&["name", "is_deleted", "uuid", "page", "per_page"])?;
        let is_deleted = query.bool("is_deleted")?;
        let tunnels: Vec<Value> = self
            .tunnels
            .values()
            .filter(|tunnel| {
                tunnel.kind == kind
                    && tunnel.account == account
                    && query.get("name").is_none_or(|name| name == tunnel.name)
                    && query.get("uuid").is_none_or(|id| id == tunnel.id)
                    && is_deleted.is_none_or(|deleted| deleted == tunnel.deleted_at.is_some())
            })
            .map(|tunnel| self.tunnel_json(tunnel))
            .collect();
        self.page(tunnels, query, LIST_DEFAULT_PER_PAGE, LIST_MAX_PER_PAGE)
    }

    fn create_tunnel(&mut self, kind: Kind, account: &str, body: &[u8]) -> Result<Value, Refusal> {
        let name = match kind {
            Kind::Cloudflared => {
                let request: NewTunnel = parse(body)?;
                match request.config_src.as_deref() {
                    Some("cloudflare") => {}
                    other => {
                        return invalid(format!(
                            "config_src must be \"cloudflare\" (a remotely managed tunnel), \
                             got {other:?}"
                        ));
                    }
                }
                if let Some(secret) = &request.tunnel_secret
                    && secret.len() < 44
                {
                    return invalid("tunnel_secret must be at least 32 bytes, base64-encoded");
                }
                request.name
            }
            Kind::WarpConnector => parse::<NewWarpConnector>(body)?.name,
        };
        if name.trim().is_empty() {
            return invalid("name must not be empty");
        }
        if self.tunnels.values().any(|tunnel| {
            tunnel.kind == kind
                && tunnel.account == account
                && tunnel.deleted_at.is_none()
                && tunnel.name == name
        }) {
            return refuse(
                409,
                codes::TUNNEL_NAME_TAKEN,
                "You already have a tunnel with this name. Delete the existing tunnel, or \
                 choose a different name for your new tunnel",
            );
        }
        let id = self.new_uuid();
        let secret_bytes: Vec<u8> = (0..32u64)
            .map(|i| (self.counter.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
            .collect();
        let tunnel = TunnelState {
            id: id.clone(),
            account: account.to_owned(),
            kind,
            name,
            secret: base64(&secret_bytes),
            created_at: now(),
            deleted_at: None,
            connections: 0,
            ever_connected: false,
            conns_active_at: None,
            config: None,
            version: 0,
            config_created_at: None,
        };
        let mut value = self.tunnel_json(&tunnel);
        if kind == Kind::Cloudflared {
            value["credentials_file"] = json!({
                "AccountTag": tunnel.account,
                "TunnelID": tunnel.id,
                "TunnelName": tunnel.name,
                "TunnelSecret": tunnel.secret,
            });
        }
        let token = json!({"a": tunnel.account, "t": tunnel.id, "s": tunnel.secret});
        value["token"] = base64(token.to_string().as_bytes()).into();
        self.tunnels.insert(id, tunnel);
        Ok(envelope(value))
    }

    fn delete_tunnel(&mut self, kind: Kind, account: &str, id: &str) -> Result<Value, Refusal> {
        let tunnel = self.live_tunnel(kind, account, id)?;
        if tunnel.connections > 0 {
            return refuse(
                400,
                codes::ACTIVE_CONNECTIONS,
                "Cannot delete tunnel because it has active connections",
            );
        }
        let routes = self
            .routes
            .values()
            .filter(|route| route.tunnel_id == id && route.deleted_at.is_none())
            .count();
        if routes > 0 {
            return refuse(
                400,
                codes::TUNNEL_HAS_ROUTES,
                format!(
                    "Cannot delete tunnel because it has Warp routing configured ({routes} \
                     routes); delete them first"
                ),
            );
        }
        let deleted_at = now();
        let tunnel = self.live_tunnel_mut(kind, account, id)?;
        tunnel.deleted_at = Some(deleted_at);
        let tunnel = self.tunnel(kind, account, id)?;
        Ok(envelope(self.tunnel_json(tunnel)))
    }

    fn put_configuration(
        &mut self,
        account: &str,
        id: &str,
        body: &[u8],
    ) -> Result<Value, Refusal> {
        self.live_tunnel(Kind::Cloudflared, account, id)?;
        let request: PutConfiguration = parse(body)?;
        check_ingress(&request.config.ingress)?;
        let config = serde_json::to_value(&request.config).or_else(|e| invalid(e.to_string()))?;
        let tunnel = self.live_tunnel_mut(Kind::Cloudflared, account, id)?;
        tunnel.config = Some(config);
        tunnel.version += 1;
        tunnel.config_created_at = Some(now());
        Ok(envelope(configuration_json(tunnel)))
    }

    // ---- DNS ----

    fn list_records(&self, zone_id: &str, query: &Query) -> Result<Value, Refusal> {
        query.only(&["name", "type", "comment.startswith", "page", "per_page"])?;
        let zone = &self.zones[zone_id];
        let records: Vec<Value> = zone
            .records
            .values()
            .filter(|record| {
                query
                    .get("name")
                    .is_none_or(|name| name.eq_ignore_ascii_case(&record.name))
                    && query.get("type").is_none_or(|t| t == record.r#type)
                    && query.get("comment.startswith").is_none_or(|prefix| {
                        record
                            .comment
                            .as_deref()
                            .is_some_and(|comment| comment.starts_with(prefix))
                    })
            })
            .map(|record| record_json(zone_id, zone, record))
            .collect();
        self.page(records, query, DNS_DEFAULT_PER_PAGE, DNS_MAX_PER_PAGE)
    }

    /// POST (`id` None) or PUT of a record.
    fn write_record(
        &mut self,
        zone_id: &str,
        id: Option<&String>,
        body: &[u8],
    ) -> Result<Value, Refusal> {
        let request: RecordBody = parse(body)?;
        let zone = &self.zones[zone_id];
        if let Some(id) = id
            && !zone.records.contains_key(id)
        {
            return refuse(404, codes::RECORD_NOT_FOUND, "Record does not exist.");
        }
        let record = check_record(&zone.name, request)?;
        let others = zone
            .records
            .values()
            .filter(|other| Some(&other.id) != id && other.name == record.name);
        for other in others {
            if other.r#type == record.r#type && other.content == record.content {
                return refuse(
                    400,
                    codes::IDENTICAL_RECORD,
                    "An identical record already exists.",
                );
            }
            if record.r#type == "CNAME" {
                return refuse(
                    400,
                    codes::HOST_TAKEN,
                    "An A, AAAA, or CNAME record with that host already exists.",
                );
            }
            if other.r#type == "CNAME" {
                return refuse(
                    400,
                    codes::CNAME_TAKEN,
                    "A CNAME record with that host already exists.",
                );
            }
        }
        let id = match id {
            Some(id) => id.clone(),
            None => self.new_hex_id(),
        };
        let zone = self.zones.get_mut(zone_id).expect("checked above");
        let modified = now();
        let created = zone
            .records
            .get(&id)
            .map_or_else(|| modified.clone(), |old| old.created_on.clone());
        let record = RecordState {
            id: id.clone(),
            created_on: created,
            modified_on: modified,
            ..record
        };
        zone.records.insert(id, record.clone());
        Ok(envelope(record_json(zone_id, zone, &record)))
    }

    /// All of the batch or none: each operation is served as its single
    /// call would be, in Cloudflare's order, on the zone as the previous
    /// ones left it; the first refusal puts the zone back as it was.
    fn batch_records(&mut self, zone_id: &str, body: &[u8]) -> Result<Value, Refusal> {
        let batch: BatchBody = parse(body)?;
        let operations =
            batch.deletes.len() + batch.patches.len() + batch.puts.len() + batch.posts.len();
        if operations > self.batch_limit {
            return refuse(
                400,
                codes::BATCH_TOO_LARGE,
                format!(
                    "A batch may hold at most {} operations on this plan; got {operations}",
                    self.batch_limit
                ),
            );
        }
        let before = self.zones[zone_id].records.clone();
        let result = self.run_batch(zone_id, batch);
        if result.is_err() {
            self.zones
                .get_mut(zone_id)
                .expect("authorized above")
                .records = before;
        }
        result
    }

    fn run_batch(&mut self, zone_id: &str, batch: BatchBody) -> Result<Value, Refusal> {
        let result = |reply: Value| reply["result"].clone();
        let mut deletes = Vec::new();
        for delete in batch.deletes {
            let zone = &self.zones[zone_id];
            let Some(record) = zone.records.get(&delete.id) else {
                return refuse(404, codes::RECORD_NOT_FOUND, "Record does not exist.");
            };
            deletes.push(record_json(zone_id, zone, record));
            self.delete_record(zone_id, &delete.id)?;
        }
        let mut patches = Vec::new();
        for patch in batch.patches {
            let (id, fields) = split_id(patch)?;
            let Some(old) = self.zones[zone_id].records.get(&id) else {
                return refuse(404, codes::RECORD_NOT_FOUND, "Record does not exist.");
            };
            let mut merged = json!({
                "name": old.name, "type": old.r#type, "content": old.content,
                "proxied": old.proxied, "ttl": old.ttl, "comment": old.comment,
            });
            for (key, value) in fields {
                merged[key] = value;
            }
            let body = serde_json::to_vec(&merged).expect("JSON");
            patches.push(result(self.write_record(zone_id, Some(&id), &body)?));
        }
        let mut puts = Vec::new();
        for put in batch.puts {
            let (id, fields) = split_id(put)?;
            let body = serde_json::to_vec(&fields).expect("JSON");
            puts.push(result(self.write_record(zone_id, Some(&id), &body)?));
        }
        let mut posts = Vec::new();
        for post in batch.posts {
            let body = serde_json::to_vec(&post).expect("JSON");
            posts.push(result(self.write_record(zone_id, None, &body)?));
        }
        Ok(envelope(json!({
            "deletes": deletes, "patches": patches, "puts": puts, "posts": posts,
        })))
    }

    fn delete_record(&mut self, zone_id: &str, id: &str) -> Result<Value, Refusal> {
        let zone = self.zones.get_mut(zone_id).expect("authorized above");
        match zone.records.remove(id) {
            Some(_) => Ok(envelope(json!({"id": id}))),
            None => refuse(404, codes::RECORD_NOT_FOUND, "Record does not exist."),
        }
    }

    // ---- Virtual networks ----

    fn vnet(&self, account: &str, id: &str) -> Result<&VnetState, Refusal> {
        match self.vnets.get(id) {
            Some(vnet) if vnet.account == account && vnet.deleted_at.is_none() => Ok(vnet),
            _ => not_found("Virtual network", id),
        }
    }

    fn vnet_name_taken(&self, account: &str, name: &str, except: Option<&str>) -> bool {
        self.vnets.values().any(|vnet| {
            vnet.account == account
                && vnet.deleted_at.is_none()
                && vnet.name == name
                && Some(vnet.id.as_str()) != except
        })
    }

    fn list_vnets(&self, account: &str, query: &Query) -> Result<Value, Refusal> {
        query.only(&["is_deleted", "is_default", "name"])?;
        let is_deleted = query.bool("is_deleted")?;
        let is_default = query.bool("is_default")?;
        let vnets: Vec<Value> = self
            .vnets
            .values()
            .filter(|vnet| {
                vnet.account == account
                    && is_deleted.is_none_or(|deleted| deleted == vnet.deleted_at.is_some())
                    && is_default.is_none_or(|default| default == vnet.is_default)
                    && query.get("name").is_none_or(|name| name == vnet.name)
            })
            .map(vnet_json)
            .collect();
        // One page, as the real endpoint answers.
        let count = vnets.len();
        let mut body = envelope(Value::Array(vnets));
        body["result_info"] =
            json!({"page": 1, "per_page": count, "count": count, "total_count": count});
        Ok(body)
    }

    fn create_vnet(&mut self, account: &str, body: &[u8]) -> Result<Value, Refusal> {
        let request: NewVnet = parse(body)?;
        if request.name.trim().is_empty() {
            return invalid("name must not be empty");
        }
        if self.vnet_name_taken(account, &request.name, None) {
            return refuse(
                409,
                codes::CONFLICT,
                format!("A virtual network named {:?} already exists", request.name),
            );
        }
        let is_default = request
            .is_default_network
            .or(request.is_default)
            .unwrap_or(false);
        if is_default {
            self.demote_default(account);
        }
        let id = self.new_uuid();
        let vnet = VnetState {
            id: id.clone(),
            account: account.to_owned(),
            name: request.name,
            comment: request.comment.unwrap_or_default(),
            is_default,
            created_at: now(),
            deleted_at: None,
        };
        let value = vnet_json(&vnet);
        self.vnets.insert(id, vnet);
        Ok(envelope(value))
    }

    fn demote_default(&mut self, account: &str) {
        for vnet in self.vnets.values_mut() {
            if vnet.account == account {
                vnet.is_default = false;
            }
        }
    }

    fn update_vnet(&mut self, account: &str, id: &str, body: &[u8]) -> Result<Value, Refusal> {
        let request: VnetPatch = parse(body)?;
        let current = self.vnet(account, id)?;
        if let Some(name) = &request.name {
            if name.trim().is_empty() {
                return invalid("name must not be empty");
            }
            if self.vnet_name_taken(account, name, Some(id)) {
                return refuse(
                    409,
                    codes::CONFLICT,
                    format!("A virtual network named {name:?} already exists"),
                );
            }
        }
        if request.is_default_network == Some(false) && current.is_default {
            return invalid(
                "an account always has a default virtual network: make another one the \
                 default instead",
            );
        }
        if request.is_default_network == Some(true) {
            self.demote_default(account);
        }
        let vnet = self.vnets.get_mut(id).expect("checked above");
        if let Some(name) = request.name {
            vnet.name = name;
        }
        if let Some(comment) = request.comment {
            vnet.comment = comment;
        }
        if request.is_default_network == Some(true) {
            vnet.is_default = true;
        }
        Ok(envelope(vnet_json(vnet)))
    }

    fn delete_vnet(&mut self, account: &str, id: &str) -> Result<Value, Refusal> {
        let vnet = self.vnet(account, id)?;
        if vnet.is_default {
            return refuse(
                400,
                codes::VNET_IN_USE,
                "The default virtual network cannot be deleted",
            );
        }
        let routes = self
            .routes
            .values()
            .filter(|route| route.vnet_id == id && route.deleted_at.is_none())
            .count();
        if routes > 0 {
            return refuse(
                400,
                codes::VNET_IN_USE,
                format!("The virtual network is used by {routes} routes; delete them first"),
            );
        }
        let vnet = self.vnets.get_mut(id).expect("checked above");
        vnet.deleted_at = Some(now());
        Ok(envelope(vnet_json(vnet)))
    }

    // ---- Routes ----

    fn route_json(&self, route: &RouteState) -> Value {
        let tunnel = self.tunnels.get(&route.tunnel_id);
        json!({
            "id": route.id,
            "network": route.network,
            "tunnel_id": route.tunnel_id,
            "tunnel_name": tunnel.map(|t| t.name.clone()),
            "tun_type": tunnel.map(|t| t.kind.tun_type()),
            "comment": route.comment,
            "created_at": route.created_at,
            "deleted_at": route.deleted_at,
            "virtual_network_id": route.vnet_id,
            "virtual_network_name": self.vnets.get(&route.vnet_id).map(|v| v.name.clone()),
        })
    }

    fn list_routes(&self, account: &str, query: &Query) -> Result<Value, Refusal> {
        query.only(&[
            "tunnel_id",
            "comment",
            "virtual_network_id",
            "is_deleted",
            "page",
            "per_page",
        ])?;
        let is_deleted = query.bool("is_deleted")?;
        let routes: Vec<Value> = self
            .routes
            .values()
            .filter(|route| {
                route.account == account
                    && query
                        .get("tunnel_id")
                        .is_none_or(|id| id == route.tunnel_id)
                    && query.get("comment").is_none_or(|c| c == route.comment)
                    && query
                        .get("virtual_network_id")
                        .is_none_or(|id| id == route.vnet_id)
                    && is_deleted.is_none_or(|deleted| deleted == route.deleted_at.is_some())
            })
            .map(|route| self.route_json(route))
            .collect();
        self.page(routes, query, LIST_DEFAULT_PER_PAGE, LIST_MAX_PER_PAGE)
    }

    fn create_route(&mut self, account: &str, body: &[u8]) -> Result<Value, Refusal> {
        let request: NewRouteBody = parse(body)?;
        let network = canonical_cidr(&request.network)?;
        let comment = request.comment.unwrap_or_default();
        if comment.chars().count() > MAX_COMMENT {
            return invalid(format!("comment is longer than {MAX_COMMENT} characters"));
        }
        match self.tunnels.get(&request.tunnel_id) {
            Some(tunnel) if tunnel.account == account && tunnel.deleted_at.is_none() => {}
            _ => return invalid(format!("tunnel {} does not exist", request.tunnel_id)),
        }
        let vnet_id = match &request.virtual_network_id {
            Some(id) => match self.vnet(account, id) {
                Ok(vnet) => vnet.id.clone(),
                Err(_) => return invalid(format!("virtual network {id} does not exist")),
            },
            None => self
                .vnets
                .values()
                .find(|vnet| {
                    vnet.account == account && vnet.is_default && vnet.deleted_at.is_none()
                })
                .map(|vnet| vnet.id.clone())
                .expect("every account has a default virtual network"),
        };
        if self.routes.values().any(|route| {
            route.account == account
                && route.deleted_at.is_none()
                && route.vnet_id == vnet_id
                && route.network == network
        }) {
            return refuse(
                409,
                codes::CONFLICT,
                format!("A route for {network} already exists in this virtual network"),
            );
        }
        let id = self.new_uuid();
        let route = RouteState {
            id: id.clone(),
            account: account.to_owned(),
            network,
            tunnel_id: request.tunnel_id,
            comment,
            vnet_id,
            created_at: now(),
            deleted_at: None,
        };
        let value = self.route_json(&route);
        self.routes.insert(id, route);
        Ok(envelope(value))
    }

    fn delete_route(&mut self, account: &str, id: &str) -> Result<Value, Refusal> {
        match self.routes.get_mut(id) {
            Some(route) if route.account == account && route.deleted_at.is_none() => {
                route.deleted_at = Some(now());
            }
            _ => return not_found("Route", id),
        }
        Ok(envelope(self.route_json(&self.routes[id])))
    }
}

fn configuration_json(tunnel: &TunnelState) -> Value {
    json!({
        "tunnel_id": tunnel.id,
        "account_id": tunnel.account,
        "version": tunnel.version,
        "config": tunnel.config,
        "source": "cloudflare",
        "created_at": tunnel.config_created_at,
    })
}

fn record_json(zone_id: &str, zone: &ZoneState, record: &RecordState) -> Value {
    json!({
        "id": record.id,
        "zone_id": zone_id,
        "zone_name": zone.name,
        "name": record.name,
        "type": record.r#type,
        "content": record.content,
        "proxiable": matches!(record.r#type.as_str(), "A" | "AAAA" | "CNAME"),
        "proxied": record.proxied,
        "ttl": record.ttl,
        "comment": record.comment,
        "tags": [],
        "settings": {},
        "meta": {},
        "created_on": record.created_on,
        "modified_on": record.modified_on,
    })
}

fn vnet_json(vnet: &VnetState) -> Value {
    json!({
        "id": vnet.id,
        "name": vnet.name,
        "comment": vnet.comment,
        "is_default_network": vnet.is_default,
        "created_at": vnet.created_at,
        "deleted_at": vnet.deleted_at,
    })
}

// ---- Request bodies: unknown fields are refused ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTunnel {
    name: String,
    #[serde(default)]
    config_src: Option<String>,
    #[serde(default)]
    tunnel_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWarpConnector {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConfiguration {
    config: ConfigBody,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    #[serde(default)]
    ingress: Vec<RuleBody>,
    #[serde(
        rename = "warp-routing",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    warp_routing: Option<WarpRoutingBody>,
    #[serde(
        rename = "originRequest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    origin_request: Option<OriginRequestBody>,
}

/// cloudflared's `OriginRequestConfig` as it decodes the API's JSON: flags
/// are booleans, strings strings, and durations whole seconds (its
/// `CustomDuration` parses an integer and nothing else: `30.5` or `"30s"`
/// fail). cloudflared ignores a key it does not know, so a misspelt one
/// would silently do nothing: refused here.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OriginRequestBody {
    #[serde(
        rename = "noTLSVerify",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    no_tls_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_host_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_keep_alive: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_alive_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_alive_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_happy_eyeballs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http2_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disable_chunked_encoding: Option<bool>,
    #[serde(
        rename = "matchSNItoHost",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    match_sni_to_host: Option<bool>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct WarpRoutingBody {
    enabled: bool,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    service: String,
    #[serde(
        rename = "originRequest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    origin_request: Option<OriginRequestBody>,
}

/// A DNS batch: record bodies as the single calls take them; patches and
/// puts carry the record's `id` too.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    #[serde(default)]
    deletes: Vec<BatchDelete>,
    #[serde(default)]
    patches: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    puts: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    posts: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchDelete {
    id: String,
}

/// A batch patch or put: its record `id` and the record's fields.
fn split_id(
    mut fields: serde_json::Map<String, Value>,
) -> Result<(String, serde_json::Map<String, Value>), Refusal> {
    match fields.remove("id") {
        Some(Value::String(id)) => Ok((id, fields)),
        _ => invalid("a batch patch or put needs the record's id"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    name: String,
    r#type: String,
    content: String,
    #[serde(default)]
    proxied: Option<bool>,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVnet {
    name: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    is_default_network: Option<bool>,
    /// The older spelling, still accepted by the API.
    #[serde(default)]
    is_default: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VnetPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    is_default_network: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRouteBody {
    network: String,
    tunnel_id: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    virtual_network_id: Option<String>,
}

// ---- Validation ----

/// cloudflared's rules for an ingress list, with messages in its spirit.
fn check_ingress(rules: &[RuleBody]) -> Result<(), Refusal> {
    let Some(last) = rules.last() else {
        return invalid("The config must have at least one ingress rule");
    };
    if last.hostname.as_deref().is_some_and(|h| h != "*") || last.path.is_some() {
        return invalid(
            "The last ingress rule must match all URLs (i.e. it should not have a hostname \
             or path filter)",
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        let number = i + 1;
        let matches_all = rule.hostname.as_deref().is_none_or(|h| h == "*") && rule.path.is_none();
        if matches_all && number < rules.len() {
            return invalid(format!(
                "Rule #{number} matches all requests, so every rule after it is unreachable: \
                 only the last rule may match everything"
            ));
        }
        if let Some(hostname) = &rule.hostname {
            if hostname.contains(':') || hostname.contains('/') {
                return invalid(format!(
                    "Rule #{number}: hostname {hostname:?} must not contain a port or a path"
                ));
            }
            let stars = hostname.matches('*').count();
            if stars > 1 || (stars == 1 && hostname != "*" && !hostname.starts_with("*.")) {
                return invalid(format!(
                    "Rule #{number}: hostname patterns can have at most one asterisk, and it \
                     must be at the start"
                ));
            }
        }
        if let Some(path) = &rule.path
            && let Err(why) = go_compiles(path)
        {
            return invalid(format!(
                "Rule #{number}: path {path:?} is not a valid regular expression: {why}"
            ));
        }
        if let Some((_, rest)) = rule.service.split_once("://")
            && rest.contains('/')
        {
            return invalid(format!(
                "{} is an invalid address, ingress rules don't support proxying to a \
                 different path on the origin service. The path will be the same as the \
                 eyeball request's path",
                rule.service
            ));
        }
        if !valid_service(&rule.service) {
            return invalid(format!(
                "Rule #{number}: {:?} is not a valid service (http://, https://, tcp://, \
                 ssh://, rdp://, smb://, unix:, http_status:NNN, hello_world, bastion)",
                rule.service
            ));
        }
    }
    Ok(())
}

/// What cloudflared's `regexp.Compile` refuses, approximated without knit's
/// own checker: what the `regex` crate cannot compile (look-around,
/// back-references, unbalanced groups…) and Go's limit of 1000 on a
/// repetition count.
fn go_compiles(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map_err(|error| error.to_string())?;
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        let counts = rest[..close].split(',').map(str::parse::<u32>);
        if counts.flatten().any(|count| count > 1000) {
            return Err("invalid repeat count".into());
        }
    }
    Ok(())
}

fn valid_service(service: &str) -> bool {
    if let Some(code) = service.strip_prefix("http_status:") {
        return code.len() == 3 && code.parse::<u16>().is_ok_and(|c| (100..600).contains(&c));
    }
    if matches!(service, "hello_world" | "bastion" | "socks5") {
        return true;
    }
    if let Some(path) = service
        .strip_prefix("unix:")
        .or_else(|| service.strip_prefix("unix+tls:"))
    {
        return !path.is_empty();
    }
    let Some((scheme, rest)) = service.split_once("://") else {
        return false;
    };
    matches!(
        scheme,
        "http" | "https" | "tcp" | "ssh" | "rdp" | "smb" | "ws" | "wss"
    ) && !rest.is_empty()
        && !rest.starts_with('/')
}

/// A record as it would be stored, or why it cannot be.
fn check_record(zone: &str, request: RecordBody) -> Result<RecordState, Refusal> {
    let dns = |message: String| refuse(400, codes::DNS_VALIDATION, message);
    let name = request.name.to_ascii_lowercase();
    if name != zone && !name.ends_with(&format!(".{zone}")) {
        return dns(format!(
            "DNS Validation Error: {name:?} is not inside the zone {zone:?} (give the fully \
             qualified name)"
        ));
    }
    for (i, label) in name.split('.').enumerate() {
        let ok = (i == 0 && label == "*")
            || (!label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if !ok {
            return dns(format!(
                "DNS Validation Error: {name:?} is not a valid host name"
            ));
        }
    }
    let content = match request.r#type.as_str() {
        // Host names compare without case.
        "CNAME" => request.content.to_ascii_lowercase(),
        _ => request.content,
    };
    match request.r#type.as_str() {
        "A" if content.parse::<std::net::Ipv4Addr>().is_err() => {
            return dns(format!(
                "DNS Validation Error: {content:?} is not an IPv4 address"
            ));
        }
        "AAAA" if content.parse::<std::net::Ipv6Addr>().is_err() => {
            return dns(format!(
                "DNS Validation Error: {content:?} is not an IPv6 address"
            ));
        }
        "CNAME" if content.is_empty() || content.contains(' ') || content.contains('/') => {
            return dns(format!(
                "DNS Validation Error: {content:?} is not a host name"
            ));
        }
        "TXT" if content.len() > 2048 => {
            return dns("DNS Validation Error: TXT content is longer than 2048 characters".into());
        }
        "A" | "AAAA" | "CNAME" | "TXT" => {}
        other => {
            return invalid(format!(
                "the fake models record types A, AAAA, CNAME and TXT, not {other:?}"
            ));
        }
    }
    let proxied = request.proxied.unwrap_or(false);
    if proxied && request.r#type == "TXT" {
        return refuse(
            400,
            codes::NOT_PROXIABLE,
            "This record type cannot be proxied.",
        );
    }
    let ttl = request.ttl.unwrap_or(1);
    if ttl != 1 && !(60..=86400).contains(&ttl) {
        return dns(format!(
            "DNS Validation Error: ttl must be 1 (automatic) or between 60 and 86400, not {ttl}"
        ));
    }
    if let Some(comment) = &request.comment
        && comment.chars().count() > MAX_COMMENT
    {
        return dns(format!(
            "DNS record has {} characters in its comment, but only {MAX_COMMENT} are allowed",
            comment.chars().count()
        ));
    }
    Ok(RecordState {
        id: String::new(),
        name,
        r#type: request.r#type,
        content,
        proxied,
        ttl,
        comment: request.comment,
        created_on: String::new(),
        modified_on: String::new(),
    })
}

/// The CIDR written canonically, or why it is not one: the address must
/// have no bits set past the prefix.
fn canonical_cidr(network: &str) -> Result<String, Refusal> {
    let bad = || {
        invalid(format!(
            "network {network:?} is not a CIDR (e.g. 10.0.0.0/8)"
        ))
    };
    let Some((address, prefix)) = network.split_once('/') else {
        return bad();
    };
    let (Ok(address), Ok(prefix)) = (address.parse::<IpAddr>(), prefix.parse::<u8>()) else {
        return bad();
    };
    let host_bits_clear = match address {
        IpAddr::V4(v4) if prefix <= 32 => {
            let bits = u32::from(v4);
            prefix == 32 || bits & (u32::MAX >> prefix) == 0
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let bits = u128::from(v6);
            prefix == 128 || bits & (u128::MAX >> prefix) == 0
        }
        _ => return bad(),
    };
    if !host_bits_clear {
        return invalid(format!(
            "network {network:?} has host bits set past the /{prefix} prefix"
        ));
    }
    Ok(format!("{address}/{prefix}"))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "fake-token";

    fn cloud() -> Cloud {
        let mut cloud = Cloud::new(1);
        for account in ["acc1", "acc2"] {
            cloud.accounts.insert(account.into());
        }
        cloud.tokens.insert(TOKEN.into(), "acc1".into());
        cloud
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    fn call(cloud: &mut Cloud, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let reply = cloud.serve(
            method,
            &format!("{PREFIX}{path}"),
            query,
            &bearer(TOKEN),
            body.as_bytes(),
        );
        (reply.status, reply.body)
    }

    fn code(body: &Value) -> i64 {
        body["errors"][0]["code"].as_i64().unwrap()
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn queries_are_percent_decoded() {
        let query = Query::parse(Some("name=a%2Eb+c&comment.startswith=knit%3A%20x&flag"));
        assert_eq!(query.get("name"), Some("a.b c"));
        assert_eq!(query.get("comment.startswith"), Some("knit: x"));
        assert_eq!(query.get("flag"), Some(""));
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn pages_cut_where_the_smallest_cap_says() {
        let items: Vec<Value> = (0..5).map(Value::from).collect();
        let query = Query::parse(Some("page=3&per_page=100"));
        let reply = paginate(items.clone(), &query, 20, 1000, Some(2)).unwrap();
        assert!(paginate(items.clone(), &query, 20, 50, None).is_err());
        assert_eq!(reply.body["result"], json!([4]));
        assert_eq!(
            reply.body["result_info"],
            json!({"page": 3, "per_page": 2, "count": 1, "total_count": 5, "total_pages": 3})
        );
        let reply = paginate(vec![], &Query::parse(None), 20, 1000, None).unwrap();
        assert_eq!(reply.body["result_info"]["total_pages"], 1);
        assert!(paginate(items, &Query::parse(Some("page=0")), 20, 1000, None).is_err());
    }

    #[test]
    fn cidrs_must_be_canonical() {
        assert_eq!(canonical_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(canonical_cidr("fd00::/8").unwrap(), "fd00::/8");
        assert_eq!(canonical_cidr("192.168.1.7/32").unwrap(), "192.168.1.7/32");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::1/8",
            "x/8",
            "10.0.0.0/a",
        ] {
            assert!(canonical_cidr(bad).is_err(), "{bad}");
        }
    }

    fn rules(value: Value) -> Vec<RuleBody> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn ingress_follows_cloudflareds_rules() {
        assert!(
            check_ingress(&rules(json!([
                {"hostname": "a.example.com", "service": "http://a:80"},
                {"hostname": "*.example.com", "path": "^/api", "service": "https://b"},
                {"service": "http_status:404"},
            ])))
            .is_ok()
        );
        let refused = |value: Value| check_ingress(&rules(value)).unwrap_err().message;
        assert!(refused(json!([])).contains("at least one"));
        assert!(
            refused(json!([{"hostname": "a.example.com", "service": "http://a"}]))
                .contains("The last ingress rule must match all URLs")
        );
        assert!(
            refused(json!([{"path": "/x", "service": "http://a"}]))
                .contains("The last ingress rule must match all URLs")
        );
        assert!(
            refused(json!([{"service": "http://a"}, {"service": "http_status:404"}]))
                .contains("Rule #1 matches all requests")
        );
        assert!(
            refused(json!([{"hostname": "a.*.com", "service": "http://a"},
                           {"service": "http_status:404"}]))
            .contains("at most one asterisk")
        );
        assert!(
            refused(json!([{"hostname": "a.com:443", "service": "http://a"},
                           {"service": "http_status:404"}]))
            .contains("port")
        );
        // cloudflared compiles every path with Go's regexp and refuses the
        // whole configuration for one that fails.
        for path in ["/api/(?!internal)", "/(a|b", "/x{1001}", r"/\1"] {
            assert!(
                refused(
                    json!([{"hostname": "a.example.com", "path": path, "service": "http://a"},
                               {"service": "http_status:404"}])
                )
                .contains("not a valid regular expression"),
                "{path}"
            );
        }
        for service in ["http://a:80/", "https://b/error"] {
            assert!(
                refused(json!([{"service": service}])).contains("different path"),
                "{service}"
            );
        }
        for service in ["localhost:80", "http://", "http_status:99", "ftp://x", ""] {
            assert!(
                refused(json!([{"service": service}])).contains("not a valid service"),
                "{service}"
            );
        }
    }

    /// Origin settings decode as cloudflared decodes them: a duration is
    /// an integer of seconds, a flag a boolean, and a key it does not know
    /// (which cloudflared would ignore) is refused.
    #[test]
    fn origin_settings_are_typed_as_cloudflared_reads_them() {
        let config = |origin: Value| {
            serde_json::from_value::<PutConfiguration>(json!({"config": {
                "originRequest": origin,
                "ingress": [{"hostname": "a.example.com", "service": "https://a:443",
                             "originRequest": origin}, {"service": "http_status:404"}],
            }}))
            .map(|_| ())
            .map_err(|error| error.to_string())
        };
        assert_eq!(
            config(
                json!({"noTLSVerify": true, "connectTimeout": 30, "originServerName": "a",
                          "caPool": "/ca.pem", "httpHostHeader": "a", "tlsTimeout": 5,
                          "keepAliveTimeout": 90, "http2Origin": true,
                          "disableChunkedEncoding": false})
            ),
            Ok(())
        );
        for (bad, why) in [
            (json!({"connectTimeout": "30s"}), "invalid type"),
            (json!({"connectTimeout": 30.5}), "invalid type"),
            (json!({"noTLSVerify": "true"}), "invalid type"),
            (json!({"noTlsVerify": true}), "unknown field"),
        ] {
            let error = config(bad.clone()).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn requests_are_refused_the_way_the_api_refuses_them() {
        let mut cloud = cloud();
        let reply = cloud.serve("GET", "/client/v4/zones", None, &HeaderMap::new(), b"");
        assert_eq!((reply.status, code(&reply.body)), (401, 10000));
        let reply = cloud.serve("GET", "/client/v4/zones", None, &bearer("nope"), b"");
        assert_eq!((reply.status, code(&reply.body)), (401, 10000));
        let (status, body) = call(&mut cloud, "GET", "/accounts/acc2/cfd_tunnel", "");
        assert_eq!((status, code(&body)), (403, 10000));
        let (status, body) = call(&mut cloud, "GET", "/accounts/acc1/nothing", "");
        assert_eq!((status, code(&body)), (404, codes::NO_ROUTE));
        let (status, body) = call(&mut cloud, "PUT", "/accounts/acc1/cfd_tunnel", "{}");
        assert_eq!((status, code(&body)), (405, codes::METHOD_NOT_ALLOWED));
        let (status, body) = call(
            &mut cloud,
            "GET",
            "/accounts/acc1/cfd_tunnel?colour=red",
            "",
        );
        assert_eq!((status, code(&body)), (400, codes::INVALID_REQUEST));
        let (status, body) = call(
            &mut cloud,
            "POST",
            "/accounts/acc1/cfd_tunnel",
            r#"{"name": "t", "config_src": "cloudflare", "colour": "red"}"#,
        );
        assert_eq!((status, code(&body)), (400, codes::INVALID_REQUEST));
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("colour")
        );
        let (status, body) = call(
            &mut cloud,
            "POST",
            "/accounts/acc1/cfd_tunnel",
            r#"{"name": "t", "config_src": "local"}"#,
        );
        assert_eq!((status, code(&body)), (400, codes::INVALID_REQUEST));
        let (status, body) = call(&mut cloud, "GET", "/zones/nope/dns_records", "");
        assert_eq!((status, code(&body)), (400, codes::BAD_ZONE_ID));
        // Refused calls are recorded too.
        assert_eq!(cloud.calls.len(), 9);
    }

    #[test]
    fn a_created_tunnel_has_the_documented_shape_and_token() {
        let mut cloud = cloud();
        let (status, body) = call(
            &mut cloud,
            "POST",
            "/accounts/acc1/cfd_tunnel",
            r#"{"name": "api-tunnel", "config_src": "cloudflare"}"#,
        );
        assert_eq!(status, 200, "{body}");
        let tunnel = &body["result"];
        for key in [
            "id",
            "account_tag",
            "created_at",
            "name",
            "tun_type",
            "status",
            "remote_config",
        ] {
            assert!(!tunnel[key].is_null(), "{key} in {tunnel}");
        }
        assert_eq!(tunnel["tun_type"], "cfd_tunnel");
        assert_eq!(tunnel["status"], "inactive");
        assert!(tunnel["deleted_at"].is_null());
        let id = tunnel["id"].as_str().unwrap();
        let (_, body) = call(
            &mut cloud,
            "GET",
            &format!("/accounts/acc1/cfd_tunnel/{id}/token"),
            "",
        );
        let token = body["result"].as_str().unwrap();
        assert!(token.starts_with("eyJ"), "base64 of a JSON object: {token}");
        let (status, body) = call(
            &mut cloud,
            "POST",
            "/accounts/acc1/cfd_tunnel",
            r#"{"name": "api-tunnel", "config_src": "cloudflare"}"#,
        );
        assert_eq!((status, code(&body)), (409, 1013));
    }
}
