//! The transport every endpoint group goes through: construction and
//! authentication, one `Call` (method, path, query, JSON body), the v4
//! envelope decoded into a result or an `Error`, retries within the
//! `RetryPolicy`, every exchange admitted by the credential's `ApiBudget`,
//! and pagination by `result_info`. The endpoints themselves are
//! `impl CloudflareClient` blocks in `tunnels`, `dns` and `networks`; they
//! build a `Call` and never see HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::{ApiMessage, ApiToken, Error};
use crate::providers::budget::ApiBudget;
pub use crate::providers::retry::RetryPolicy;

/// The public API; tests point the client at a fake over plain HTTP.
pub const API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// Per HTTP exchange, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The page size asked for on paginated lists; the API may answer with
/// smaller pages, which the client follows all the same.
pub const PER_PAGE: u32 = 100;
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
    /// The credential's request budget, shared by every client of the
    /// token; every HTTP exchange (retries included) takes from it.
    budget: Option<Arc<ApiBudget>>,
}

impl fmt::Debug for CloudflareClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareClient")
            .field("base", &self.base.as_str())
            .field("token", &"***")
            .field("retry", &self.retry)
            .field("budget_left", &self.budget.as_ref().map(|b| b.left()))
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
pub(super) struct Answer<T> {
    pub(super) result: T,
    info: Option<ResultInfo>,
}

/// What one request is: method, path below the base, query, JSON body.
pub(super) struct Call<'a> {
    method: Method,
    segments: &'a [&'a str],
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl Call<'_> {
    /// The path as errors and logs show it, e.g. `/accounts/a/cfd_tunnel`.
    pub(super) fn path(&self) -> String {
        let mut path = String::new();
        for segment in self.segments {
            path.push('/');
            path.push_str(segment);
        }
        path
    }
}

impl<'a> Call<'a> {
    pub(super) fn new(method: Method, segments: &'a [&'a str]) -> Self {
        Call {
            method,
            segments,
            query: Vec::new(),
            body: None,
        }
    }

    pub(super) fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub(super) fn query_opt(self, key: &'static str, value: Option<&String>) -> Self {
        match value {
            Some(value) => self.query(key, value.clone()),
            None => self,
        }
    }

    pub(super) fn json<B: Serialize>(mut self, body: &B) -> Result<Self, Error> {
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
            budget: None,
        })
    }

    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Every request waits for `budget` to admit it.
    pub fn with_budget(mut self, budget: Arc<ApiBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// A create or update: `method` with `body` as JSON, answered by the
    /// object as stored.
    pub(super) async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &impl Serialize,
    ) -> Result<T, Error> {
        let call = Call::new(method, segments).json(body)?;
        Ok(self.call(call).await?.result)
    }

    /// A DELETE whose 404 means done.
    pub(super) async fn delete(&self, segments: &[&str]) -> Result<(), Error> {
        match self
            .call::<IgnoredAny>(Call::new(Method::DELETE, segments))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Every page of a list, asking `per_page` at a time and following
    /// `result_info` to the end.
    pub(super) async fn list_all<T: DeserializeOwned>(
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
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<Answer<T>, Error> {
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
        if let Some(budget) = &self.budget {
            budget.take().await;
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
    use super::super::Tunnel;
    use super::*;
    use rstest::rstest;
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

    #[rstest]
    #[case::unauthorized(401)]
    #[case::forbidden(403)]
    fn auth_statuses_are_unauthorized_with_the_api_codes(#[case] status: u16) {
        let body = json!({"success": false, "errors": [{"code": 10000, "message": "Authentication error"}]});
        let error = answer::<IgnoredAny>(status, body).unwrap_err();
        assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
        assert!(error.has_code(10000));
    }

    #[test]
    fn not_found_and_rate_limit_statuses_have_their_own_errors() {
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
