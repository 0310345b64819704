//! Tencent Cloud: the CLB API (version 2018-03-17) over API 3.0, signed with
//! TC3-HMAC-SHA256.
//!
//! - `sign`: the signature as pure functions, checked against the published
//!   example;
//! - `ClbClient`: typed actions, bounded retries with backoff and jitter for
//!   `FailedOperation.ResourceInOperating`, `RequestLimitExceeded` and
//!   `InternalError`, and `wait_task` for the asynchronous writes;
//! - `Credentials`: the key pair, read from a Secret's `secretId` and
//!   `secretKey`, with the key kept out of `Debug` and errors.

mod clb;
mod client;
mod credentials;
mod error;
pub mod sign;

use std::fmt;

use serde::Deserialize;

pub use clb::{
    Backend, BatchOutcome, BatchTarget, CreatedListeners, HealthCheck, Listener, ListenerFilter,
    ListenerSettings, ListenerTargets, LoadBalancer, Protocol, Target,
};
pub use client::{
    CLB_ENDPOINT, CLB_SERVICE, CLB_VERSION, ClbClient, ClientOptions, RetryPolicy, TaskPolling,
};
pub use credentials::{Credentials, CredentialsError, SECRET_ID_KEY, SECRET_KEY_KEY};
pub use error::Error;

/// An asynchronous CLB task: the `RequestId` of the write that started it,
/// which `DescribeTaskStatus` takes as `TaskId`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskId(pub String);

impl TaskId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `DescribeTaskStatus`'s `Status`: 0 succeeded, 1 failed, 2 running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub enum TaskStatus {
    Succeeded,
    Failed,
    Running,
}

impl TryFrom<i64> for TaskStatus {
    type Error = String;

    fn try_from(status: i64) -> Result<Self, String> {
        match status {
            0 => Ok(TaskStatus::Succeeded),
            1 => Ok(TaskStatus::Failed),
            2 => Ok(TaskStatus::Running),
            other => Err(format!("unknown task status {other}")),
        }
    }
}
