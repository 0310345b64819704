use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Credentials, Error, TaskId, TaskStatus, sign};
pub use crate::providers::retry::RetryPolicy;
use crate::providers::retry::{exponential, jitter};

/// The CLB API version every action here is documented under.
pub const CLB_VERSION: &str = "2018-03-17";
/// The CLB service: the first label of its host and the signing scope.
pub const CLB_SERVICE: &str = "clb";
/// The public endpoint; a region is chosen by the `X-TC-Region` header.
pub const CLB_ENDPOINT: &str = "https://clb.tencentcloudapi.com";

/// How a `ClbClient` reaches the API.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `X-TC-Region`, e.g. `ap-guangzhou`.
    pub region: String,
    /// Base URL; `CLB_ENDPOINT` by default. Tests point it at a fake over
    /// plain HTTP on loopback.
    pub endpoint: String,
    /// Per HTTP exchange, connection included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub task_polling: TaskPolling,
}

impl ClientOptions {
    pub fn new(region: impl Into<String>) -> Self {
        ClientOptions {
            region: region.into(),
            endpoint: CLB_ENDPOINT.to_owned(),
            timeout: Duration::from_secs(10),
            retry: DEFAULT_RETRY,
            task_polling: TaskPolling::default(),
        }
    }
}

/// Retries of errors `Error::is_retryable` accepts: about 20 s in all, long
/// enough for a CLB task (seconds) to free its LB, short enough to hand the
/// error back to the controller's own requeue.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 8,
    base_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(5),
};

/// How `wait_task` polls `DescribeTaskStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskPolling {
    /// The first pause; it doubles up to `max_interval`.
    pub initial_interval: Duration,
    pub max_interval: Duration,
    /// When to give up on a task that still runs.
    pub timeout: Duration,
}

impl Default for TaskPolling {
    fn default() -> Self {
        TaskPolling {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(3),
            timeout: Duration::from_secs(120),
        }
    }
}

/// A client of the CLB API (version 2018-03-17) for one region.
#[derive(Clone, Debug)]
pub struct ClbClient {
    http: reqwest::Client,
    credentials: Credentials,
    endpoint: Url,
    /// The `Host` header: sent and signed, so both use this one value.
    host: String,
    options: ClientOptions,
}

/// The `Response` object every API 3.0 answer is wrapped in.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Response")]
    response: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    code: String,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeTaskStatusRequest<'a> {
    task_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeTaskStatusResponse {
    status: TaskStatus,
}

impl ClbClient {
    pub fn new(credentials: Credentials, options: ClientOptions) -> Result<Self, Error> {
        let endpoint = Url::parse(&options.endpoint)
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", options.endpoint)))?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => {
                return Err(Error::Config(format!(
                    "endpoint {:?} has no host",
                    options.endpoint
                )));
            }
        };
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(ClbClient {
            http,
            credentials,
            endpoint,
            host,
            options,
        })
    }

    /// One action, retried while `Error::is_retryable` says so, up to the
    /// policy's bound.
    pub(super) async fn call<Request, Response>(
        &self,
        action: &'static str,
        request: &Request,
    ) -> Result<Response, Error>
    where
        Request: Serialize,
        Response: DeserializeOwned,
    {
        let payload = serde_json::to_vec(request).map_err(|e| Error::Decode {
            action,
            message: format!("encoding the request: {e}"),
        })?;
        let mut retry = 0;
        loop {
            match self.send(action, &payload).await {
                Err(error) if error.is_retryable() && retry + 1 < self.options.retry.attempts => {
                    let delay = self.options.retry.delay(retry);
                    tracing::debug!(action, %error, ?delay, retry, "retrying Tencent Cloud call");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// One signed HTTP exchange.
    async fn send<Response: DeserializeOwned>(
        &self,
        action: &'static str,
        payload: &[u8],
    ) -> Result<Response, Error> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        let authorization = sign::sign(
            &self.credentials,
            &sign::Request {
                service: CLB_SERVICE,
                host: &self.host,
                timestamp,
                payload,
            },
        )
        .ok_or_else(|| Error::Config(format!("the clock reads {timestamp}, no date")))?;
        let response = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, sign::CONTENT_TYPE)
            .header(reqwest::header::HOST, &self.host)
            .header("X-TC-Action", action)
            .header("X-TC-Version", CLB_VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.options.region)
            .body(payload.to_vec())
            .send()
            .await
            .map_err(|source| Error::Transport { action, source })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| Error::Transport { action, source })?;
        decode(action, status, &body)
    }

    /// Polls `DescribeTaskStatus` until the task named by a write's
    /// `RequestId` succeeds (`Ok`), fails (`Error::TaskFailed`) or outlasts
    /// `TaskPolling::timeout` (`Error::TaskTimeout`).
    pub async fn wait_task(&self, task: &TaskId) -> Result<(), Error> {
        let polling = self.options.task_polling;
        let started = Instant::now();
        let mut step = 0;
        loop {
            let answer: DescribeTaskStatusResponse = self
                .call(
                    "DescribeTaskStatus",
                    &DescribeTaskStatusRequest {
                        task_id: task.as_str(),
                    },
                )
                .await?;
            match answer.status {
                TaskStatus::Succeeded => return Ok(()),
                TaskStatus::Failed => return Err(Error::TaskFailed { task: task.clone() }),
                TaskStatus::Running => {}
            }
            let pause = jitter(exponential(
                polling.initial_interval,
                polling.max_interval,
                step,
            ));
            if started.elapsed() + pause > polling.timeout {
                return Err(Error::TaskTimeout {
                    task: task.clone(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(pause).await;
            step += 1;
        }
    }
}

/// The answer of `action`: its `Error` as `Error::Api`, or its fields as
/// `Response`. API 3.0 answers errors with HTTP 200 too, so the status only
/// matters when the body is not an API answer.
fn decode<Response: DeserializeOwned>(
    action: &'static str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Result<Response, Error> {
    let malformed = |message: String| Error::Decode {
        action,
        message: format!("HTTP {status}: {message}"),
    };
    let Envelope { response } =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let request_id = response
        .get("RequestId")
        .and_then(|id| id.as_str())
        .unwrap_or_default()
        .to_owned();
    if let Some(error) = response.get("Error") {
        let ApiError { code, message } =
            ApiError::deserialize(error).map_err(|e| malformed(format!("Error: {e}")))?;
        return Err(Error::Api {
            action,
            code,
            message,
            request_id,
        });
    }
    Response::deserialize(serde_json::Value::Object(response))
        .map_err(|e| malformed(format!("{e} (RequestId {request_id})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        total_count: u64,
    }

    #[test]
    fn decodes_an_answer() {
        let answer: Answer = decode(
            "DescribeListeners",
            reqwest::StatusCode::OK,
            br#"{"Response": {"TotalCount": 2, "RequestId": "r1"}}"#,
        )
        .unwrap();
        assert_eq!(answer.total_count, 2);
    }

    #[test]
    fn decodes_an_api_error() {
        let error = decode::<Answer>(
            "DescribeListeners",
            reqwest::StatusCode::OK,
            br#"{"Response": {"Error": {"Code": "InvalidParameter.LBIdNotFound",
                "Message": "LB lb-1 not found"}, "RequestId": "r2"}}"#,
        )
        .unwrap_err();
        assert!(error.is_not_found());
        assert_eq!(
            error.to_string(),
            "DescribeListeners: InvalidParameter.LBIdNotFound: LB lb-1 not found (RequestId r2)"
        );
    }

    #[test]
    fn a_non_api_body_is_a_decode_error_with_the_status() {
        let error = decode::<Answer>(
            "DescribeListeners",
            reqwest::StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        )
        .unwrap_err();
        assert!(matches!(error, Error::Decode { .. }));
        assert!(error.to_string().contains("HTTP 502"), "{error}");
        let error = decode::<Answer>(
            "DescribeListeners",
            reqwest::StatusCode::OK,
            br#"{"Response": {"RequestId": "r3"}}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("TotalCount"), "{error}");
    }

    #[test]
    fn endpoint_sets_the_signed_host() {
        let credentials = Credentials::new("id", "key");
        let client =
            ClbClient::new(credentials.clone(), ClientOptions::new("ap-guangzhou")).unwrap();
        assert_eq!(client.host, "clb.tencentcloudapi.com");
        let options = ClientOptions {
            endpoint: "http://127.0.0.1:40123/".into(),
            ..ClientOptions::new("ap-guangzhou")
        };
        let client = ClbClient::new(credentials.clone(), options).unwrap();
        assert_eq!(client.host, "127.0.0.1:40123");
        let options = ClientOptions {
            endpoint: "not a url".into(),
            ..ClientOptions::new("ap-guangzhou")
        };
        assert!(matches!(
            ClbClient::new(credentials, options),
            Err(Error::Config(_))
        ));
    }
}
