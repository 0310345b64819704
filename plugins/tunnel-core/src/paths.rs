//! What a rule matches, read as cloudflared reads it: a rule's `hostname`
//! exactly, or, for `*.name`, any host ending in `.name` (at any depth); its
//! `path` is a Go regular expression searched anywhere in the request path,
//! hence the anchors. Here: host names inside the tunnel's domain, the path
//! regex of a route and what the host can tell of one, and the key two
//! sources contend for.

use crate::types::{PathMatch, Route};

/// The cloudflared `path` regex of a route's path; `None` matches every path.
///
/// - `Prefix` is Kubernetes' element-wise prefix, trailing slashes ignored:
///   `/` (or empty) is `None`, `/api` is `^/api(?s:/.*)?$`;
/// - `Exact /x` is `^/x$`;
/// - a regular expression is anchored at the start with `^` unless it is
///   already (cloudflared searches anywhere in the path otherwise).
///
/// Literal paths are escaped, so `/v1.0` does not match `/v1x0`.
pub fn path_regex(path: &(PathMatch, String)) -> Option<String> {
    let (kind, value) = path;
    let anchored = |body: &str, tail: &str| {
        let mut regex = String::with_capacity(1 + body.len() + tail.len());
        regex.push('^');
        regex.push_str(body);
        regex.push_str(tail);
        regex
    };
    match kind {
        PathMatch::Prefix => {
            let prefix = value.trim_end_matches('/');
            (!prefix.is_empty()).then(|| anchored(&escape(prefix), PREFIX_TAIL))
        }
        PathMatch::Exact => Some(anchored(&escape(value), "$")),
        PathMatch::RegularExpression if value.starts_with('^') => Some(value.clone()),
        PathMatch::RegularExpression => Some(anchored(value, "")),
    }
}

/// What follows the literal in a prefix regex: the end, or a `/` and any
/// bytes. `(?s:)` lets `.` match a newline too: cloudflared matches the
/// decoded path, where `%0A` is one, and Go's `.` skips it by default.
const PREFIX_TAIL: &str = "(?s:/.*)?$";

/// The characters with a meaning in a Go regular expression.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
    )
}

fn escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 4);
    for c in literal.chars() {
        if is_meta(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The inverse of `escape`: `None` when the text has a regex operator.
fn unescape(escaped: &str) -> Option<String> {
    let mut literal = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next()?;
            if !is_meta(next) {
                return None;
            }
            literal.push(next);
        } else if is_meta(c) {
            return None;
        } else {
            literal.push(c);
        }
    }
    Some(literal)
}

/// What two sources contend for: a host and a cloudflared path regex.
pub(crate) type RouteKey = (String, Option<String>);

pub(crate) fn route_key(route: &Route) -> RouteKey {
    (route.host.clone(), route.path.as_ref().and_then(path_regex))
}

pub(crate) fn describe_path(path: &Option<(PathMatch, String)>) -> String {
    match path {
        None => "path /".into(),
        Some((PathMatch::Prefix, p)) if p.is_empty() => "path /".into(),
        Some((PathMatch::Prefix, p)) => format!("path {p}"),
        Some((PathMatch::Exact, p)) => format!("exact path {p}"),
        Some((PathMatch::RegularExpression, p)) => format!("path regex {p}"),
    }
}

pub(crate) fn normal_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// A lowercase RFC 1123 name, optionally with a leading `*.` label.
pub(crate) fn is_dns_name(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// The domain itself or a name under it, wildcard or not.
pub(crate) fn in_domain(host: &str, domain: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

/// What the host can tell of a rule's path regex.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathShape {
    /// No path: every path.
    All,
    /// `^literal$`.
    Exact(String),
    /// `^literal(?s:/.*)?$`: the literal and everything under it.
    Prefix(String),
    /// Any other regex: not reasoned about.
    Unknown,
}

impl PathShape {
    pub(crate) fn of(path: Option<&str>) -> PathShape {
        let Some(regex) = path else {
            return PathShape::All;
        };
        let Some(body) = regex.strip_prefix('^') else {
            return PathShape::Unknown;
        };
        if let Some(prefix) = body.strip_suffix(PREFIX_TAIL).and_then(unescape) {
            return PathShape::Prefix(prefix);
        }
        if let Some(exact) = body.strip_suffix('$').and_then(unescape) {
            return PathShape::Exact(exact);
        }
        PathShape::Unknown
    }

    /// Whether every path `later` matches, this matches too.
    pub(crate) fn covers(&self, later: &PathShape) -> bool {
        let under = |prefix: &str, path: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        match (self, later) {
            (PathShape::All, _) => true,
            (PathShape::Prefix(p), PathShape::Exact(q) | PathShape::Prefix(q)) => under(p, q),
            (PathShape::Exact(p), PathShape::Exact(q)) => p == q,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
