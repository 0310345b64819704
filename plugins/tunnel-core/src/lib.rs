//! Which Ingress or HTTPRoute serves which hostname and path of a Cloudflare
//! tunnel: the decision behind a `Tunnel` or `ClusterTunnel`, pure so that it
//! runs natively in tests and inside the `tunnel-mapper` plugin, and so the
//! host can check any plugin's answer.
//!
//! - `types`: the request, the configuration, the mapping and its verdicts;
//! - `go_regex`: whether cloudflared (Go's RE2) compiles a path regex;
//! - `paths`: host names, path regexes and what they cover, the conflict key;
//! - `map`: the mapper ([`map()`]) and the rules it applies, in order;
//! - `check`: the host's check of any plugin's answer ([`check_mapping`]).

mod check;
#[cfg(target_arch = "wasm32")]
pub mod component;
mod go_regex;
mod map;
mod paths;
#[cfg(test)]
mod test_support;
mod types;

pub use check::check_mapping;
pub use go_regex::check_go_regex;
pub use map::{map, route_rule, validate_request};
pub use paths::path_regex;
pub use types::{
    Backend, BackendState, Config, DEFAULT_WITHHOLD_UNREADY, IngressRule, MAX_ORIGIN_SECONDS,
    Mapping, OriginRequest, PathMatch, Request, Route, Scheme, Source, SourceKind, SourceStatus,
    Tunnel, Verdict, parse_config, parse_seconds, service_url,
};
