use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Error codes of the API that callers act on (`Error::has_code`).
pub mod codes {
    /// `Authentication error`: unknown token, or no permission.
    pub const AUTHENTICATION: i64 = 10000;
    /// Rate limited (with HTTP 429).
    pub const RATE_LIMITED: i64 = 971;
    /// `You already have a tunnel with this name`.
    pub const TUNNEL_NAME_TAKEN: i64 = 1013;
    /// `An A, AAAA, or CNAME record with that host already exists`
    /// (creating a CNAME where another record has the name).
    pub const DNS_HOST_TAKEN: i64 = 81053;
    /// `A CNAME record with that host already exists` (creating another
    /// record where a CNAME has the name).
    pub const DNS_CNAME_TAKEN: i64 = 81054;
    /// `Record does not exist`.
    pub const DNS_RECORD_NOT_FOUND: i64 = 81044;
}

/// One entry of the envelope's `errors` (or `messages`): a numeric code and
/// its text. Other fields (`documentation_url`, `source`, `error_chain`) are
/// not kept.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiMessage {
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

impl fmt::Display for ApiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

/// The envelope's errors, as `[code] message; [code] message`.
struct Messages<'a>(&'a [ApiMessage]);

impl fmt::Display for Messages<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no error details");
        }
        for (i, message) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{message}")?;
        }
        Ok(())
    }
}

/// A Cloudflare call that did not give an answer. Every variant that comes
/// from a request names its method and path (no query string), so a log line
/// says which call failed; none carries the API token, which lives only in a
/// sensitive header value of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered `success: false`, or an HTTP error status that none
    /// of the variants below covers.
    #[error("{method} {path}: HTTP {status}: {}", Messages(errors))]
    Api {
        method: String,
        path: String,
        status: u16,
        errors: Vec<ApiMessage>,
    },
    /// 401 or 403: the token is unknown, expired, or lacks a permission the
    /// call needs (or the resource belongs to an account it cannot reach).
    #[error(
        "{method} {path}: HTTP {status}: {}: the API token was refused; check that it is \
         valid and has the permissions this call needs (e.g. Cloudflare Tunnel Edit, \
         DNS Edit) on this account and zone",
        Messages(errors)
    )]
    Unauthorized {
        method: String,
        path: String,
        status: u16,
        errors: Vec<ApiMessage>,
    },
    /// 404: the resource (or the account or zone in the path) does not
    /// exist. Methods whose documentation says so turn this into `None` or
    /// `Ok(())`.
    #[error("{method} {path}: not found: {}", Messages(errors))]
    NotFound {
        method: String,
        path: String,
        errors: Vec<ApiMessage>,
    },
    /// 429 on every attempt the retry policy allowed.
    #[error(
        "{method} {path}: rate limited by the Cloudflare API{}",
        match retry_after {
            Some(after) => format!(" (it asked to wait {after:?})"),
            None => String::new(),
        }
    )]
    RateLimited {
        method: String,
        path: String,
        /// The last `Retry-After` the API sent.
        retry_after: Option<Duration>,
    },
    /// No usable HTTP exchange: connection, TLS, timeout.
    #[error("{method} {path}: {source}")]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not the documented shape.
    #[error("{method} {path}: HTTP {status}: unexpected response: {message}")]
    Decode {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// `zone_id` found no zone of that name in the account.
    #[error("no zone {zone:?} in Cloudflare account {account_id}")]
    ZoneNotFound { account_id: String, zone: String },
    /// The client could not be built (bad base URL, token not usable as a
    /// header value, TLS setup).
    #[error("Cloudflare client: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. }
            | Error::Unauthorized { status, .. }
            | Error::Decode { status, .. } => Some(*status),
            Error::NotFound { .. } => Some(404),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// The envelope's error entries, when the API sent some.
    pub fn api_errors(&self) -> &[ApiMessage] {
        match self {
            Error::Api { errors, .. }
            | Error::Unauthorized { errors, .. }
            | Error::NotFound { errors, .. } => errors,
            _ => &[],
        }
    }

    /// Whether the API answered with this error code, e.g. 1013 (a tunnel
    /// of that name exists) or 81053 (a record with that host exists).
    pub fn has_code(&self, code: i64) -> bool {
        self.api_errors().iter().any(|error| error.code == code)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// The API answered and refused what was asked (a 4xx other than
    /// authentication and rate limiting): asking differently may work.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Api { status, .. } => (400..500).contains(status),
            Error::NotFound { .. } => true,
            _ => false,
        }
    }

    /// Worth sending the same request again after a pause: a server error,
    /// or a request that never reached the server. A timed-out request may
    /// have been carried out, so it is resent only when `idempotent`.
    /// Rate limiting is handled apart (it has its own wait).
    pub fn is_retryable(&self, idempotent: bool) -> bool {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => *status >= 500,
            Error::Transport { source, .. } => {
                source.is_connect() || (idempotent && source.is_timeout())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(code: i64, message: &str) -> ApiMessage {
        ApiMessage {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn api_error_names_call_status_codes_and_messages() {
        let error = Error::Api {
            method: "POST".into(),
            path: "/accounts/acc/cfd_tunnel".into(),
            status: 409,
            errors: vec![
                message(1013, "You already have a tunnel with this name"),
                message(1000, "second"),
            ],
        };
        assert_eq!(
            error.to_string(),
            "POST /accounts/acc/cfd_tunnel: HTTP 409: \
             [1013] You already have a tunnel with this name; [1000] second"
        );
        assert!(error.has_code(1013));
        assert!(!error.has_code(81053));
        assert_eq!(error.status(), Some(409));
    }

    #[test]
    fn unauthorized_says_to_check_the_token() {
        let error = Error::Unauthorized {
            method: "GET".into(),
            path: "/zones".into(),
            status: 403,
            errors: vec![message(10000, "Authentication error")],
        };
        let shown = error.to_string();
        assert!(shown.starts_with("GET /zones: HTTP 403: [10000] Authentication error"));
        assert!(shown.contains("check that it is valid and has the permissions"));
    }

    #[test]
    fn rate_limited_and_empty_errors_read_well() {
        let error = Error::RateLimited {
            method: "GET".into(),
            path: "/zones".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            error.to_string(),
            "GET /zones: rate limited by the Cloudflare API (it asked to wait 3s)"
        );
        let error = Error::Api {
            method: "DELETE".into(),
            path: "/x".into(),
            status: 500,
            errors: vec![],
        };
        assert_eq!(error.to_string(), "DELETE /x: HTTP 500: no error details");
    }

    #[test]
    fn only_server_errors_are_retryable() {
        let api = |status| Error::Api {
            method: "PUT".into(),
            path: "/x".into(),
            status,
            errors: vec![],
        };
        assert!(api(500).is_retryable(true));
        assert!(api(503).is_retryable(false));
        assert!(!api(400).is_retryable(true));
        assert!(!api(409).is_retryable(true));
        let unauthorized = Error::Unauthorized {
            method: "GET".into(),
            path: "/x".into(),
            status: 401,
            errors: vec![],
        };
        assert!(!unauthorized.is_retryable(true));
    }
}
