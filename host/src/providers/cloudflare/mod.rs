//! Cloudflare: the API v4 calls knit makes, typed, over reqwest.
//!
//! - Tunnels (`cfd_tunnel`) created remotely managed (`config_src:
//!   cloudflare`), their token and their configuration (a full PUT that
//!   bumps a version); WARP connector tunnels (`warp_connector`), the same
//!   shape under another path.
//! - DNS records, listed with `name`, `type` and `comment.startswith`
//!   filters (the comment carries knit's ownership marker), and changed in
//!   atomic batches (`dns_records/batch`) or one by one.
//! - Zero Trust virtual networks and private network routes (teamnet).
//! - Zones, to turn a domain into a zone ID.
//!
//! Every answer comes in the v4 envelope (`success`, `errors`, `result`,
//! `result_info`); `Error` keeps the API's codes and messages with the
//! method and path that got them. Lists follow `result_info` to the last
//! page whatever page size the server picks. Calls are retried within a
//! `RetryPolicy`: 429 waits `Retry-After` (capped), 5xx and connection
//! failures back off exponentially with jitter, other 4xx are final.
//!
//! The `ApiToken` (from the credentials Secret's `CLOUDFLARE_API_TOKEN`)
//! becomes a sensitive `Authorization: Bearer` header and nothing else: no
//! `Debug`, error or log line shows it. Tunnel tokens are kept the same way.
//!
//! Files: `client` is the transport (envelope, retries, pagination); the
//! endpoints are grouped as the list above, one `impl CloudflareClient`
//! each: `tunnels`, `dns` (zones too), `networks`.

mod client;
mod dns;
mod error;
mod networks;
mod token;
mod tunnels;
mod types;

pub use client::{API_BASE, CloudflareClient, PER_PAGE, REQUEST_TIMEOUT, RetryPolicy};
pub use error::{ApiMessage, Error, codes};
pub use token::{ApiToken, TOKEN_KEY, TokenError, TunnelToken};
pub use tunnels::TunnelKind;
pub use types::{
    DnsBatch, DnsBatchResult, DnsFilter, DnsRecord, IngressRule, NewDnsRecord, NewRoute,
    NewVirtualNetwork, RecordId, RecordPut, Route, RouteFilter, Tunnel, TunnelConfig,
    TunnelConfiguration, VirtualNetwork, WarpRouting,
};
