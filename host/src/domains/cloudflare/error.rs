//! The error of the Cloudflare controllers, and what a failed pass tells
//! the object.

use std::time::Duration;

use super::account::CredentialsError;
use crate::providers::cloudflare as api;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Cloudflare API: {0}")]
    Cloudflare(#[from] api::Error),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("planning task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl crate::controller::Retry for Error {
    const FAILURE_RETRY: Duration = Duration::from_secs(10);
}

/// What a failed pass tells the object: Cloudflare and credentials failures
/// are a `Ready=False` reason and message; Kubernetes errors are returned,
/// to be retried.
pub(super) fn failure_reason(error: Error) -> Result<(&'static str, String), Error> {
    match error {
        Error::Credentials(e) => Ok(("CredentialsError", e.to_string())),
        Error::Cloudflare(e) => Ok(("CloudflareError", e.to_string())),
        other => Err(other),
    }
}
