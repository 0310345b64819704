use std::time::Duration;

use super::TaskId;

/// A Tencent Cloud call that did not give an answer. Messages carry the
/// action, the API's code and message and the request ID (what support asks
/// for), never credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an `Error` object.
    #[error("{action}: {code}: {message} (RequestId {request_id})")]
    Api {
        action: &'static str,
        code: String,
        message: String,
        request_id: String,
    },
    /// No usable HTTP exchange: connection, TLS, timeout.
    #[error("{action}: {source}")]
    Transport {
        action: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not the documented shape.
    #[error("{action}: unexpected response: {message}")]
    Decode {
        action: &'static str,
        message: String,
    },
    /// An asynchronous task reported failure (`DescribeTaskStatus` status 1).
    #[error("task {task} failed")]
    TaskFailed { task: TaskId },
    /// An asynchronous task was still running when the wait gave up.
    #[error("task {task} still running after {waited:?}")]
    TaskTimeout { task: TaskId, waited: Duration },
    /// The client could not be built (bad endpoint URL, TLS setup).
    #[error("Tencent Cloud client: {0}")]
    Config(String),
}

impl Error {
    /// The API's error code, if the API answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth sending the same request again after a pause: the LB is busy
    /// with another task, the caller is throttled, the API had an internal
    /// error, or the request never reached the server (so even a write is
    /// safe to resend). A timed-out write may have happened, so it is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { code, .. } => {
                code == "FailedOperation.ResourceInOperating"
                    || has_prefix(code, "RequestLimitExceeded")
                    || has_prefix(code, "InternalError")
            }
            Error::Transport { source, .. } => source.is_connect(),
            _ => false,
        }
    }

    /// The LB, listener or other resource named in the request does not
    /// exist (any more). Besides the documented codes, CLB answers a plain
    /// `InvalidParameter` whose message says the LB does not exist.
    pub fn is_not_found(&self) -> bool {
        let Error::Api { code, message, .. } = self else {
            return false;
        };
        match code.as_str() {
            "InvalidParameter.LBIdNotFound" | "InvalidParameter.ListenerIdNotFound" => true,
            "InvalidParameter" => {
                let message = message.to_ascii_lowercase();
                message.contains("not exist") || message.contains("not found")
            }
            _ => has_prefix(code, "ResourceNotFound"),
        }
    }
}

/// `code` is `family` or one of its sub-codes (`family.Detail`).
fn has_prefix(code: &str, family: &str) -> bool {
    code.strip_prefix(family)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn api(code: &str, message: &str) -> Error {
        Error::Api {
            action: "CreateListener",
            code: code.into(),
            message: message.into(),
            request_id: "req-1".into(),
        }
    }

    #[rstest]
    #[case::resource_in_operating("FailedOperation.ResourceInOperating", true)]
    #[case::request_limit("RequestLimitExceeded", true)]
    #[case::request_limit_detail("RequestLimitExceeded.UinLimitExceeded", true)]
    #[case::internal_error("InternalError", true)]
    #[case::internal_error_detail("InternalError.SomeDetail", true)]
    #[case::failed_operation("FailedOperation", false)]
    #[case::port_check_failed("InvalidParameter.PortCheckFailed", false)]
    #[case::limit_exceeded("LimitExceeded", false)]
    #[case::signature_failure("AuthFailure.SignatureFailure", false)]
    #[case::request_limit_lookalike("RequestLimitExceededish", false)]
    fn retryable_codes(#[case] code: &str, #[case] retryable: bool) {
        assert_eq!(api(code, "").is_retryable(), retryable);
    }

    #[test]
    fn not_found_codes() {
        assert!(api("InvalidParameter.LBIdNotFound", "").is_not_found());
        assert!(api("InvalidParameter.ListenerIdNotFound", "").is_not_found());
        assert!(api("ResourceNotFound", "").is_not_found());
        assert!(api("InvalidParameter", "LoadBalancer not exist").is_not_found());
        assert!(!api("InvalidParameter", "Ports must be unique").is_not_found());
        assert!(!api("InvalidParameter.PortCheckFailed", "").is_not_found());
        assert!(!api("ResourceInUse", "").is_not_found());
    }

    #[test]
    fn message_names_action_code_and_request() {
        assert_eq!(
            api("LimitExceeded", "listener quota is 50").to_string(),
            "CreateListener: LimitExceeded: listener quota is 50 (RequestId req-1)"
        );
    }
}
