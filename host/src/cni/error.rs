//! CNI errors: printed on stdout as `{"cniVersion","code","msg","details"}`
//! with a non-zero exit.

use serde_json::{Value, json};

/// The spec's error codes, and knit-ipam's own from 100 up where the spec has
/// none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD.
    NotAvailable = 50,
    /// No free address left in a range set or pool.
    Exhausted = 100,
    /// The strategy plugin is missing, failed, or gave an answer the host refuses.
    Strategy = 101,
    /// The IPPool is missing or being deleted.
    PoolUnavailable = 102,
    /// CHECK: the container holds no address here.
    NoAllocation = 103,
    /// The Kubernetes API refused a request (not a transient failure).
    Kubernetes = 104,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> Self {
        CniError::new(Code::InvalidConfig, msg)
    }

    pub fn io(what: impl std::fmt::Display, error: std::io::Error) -> Self {
        CniError::new(Code::Io, format!("{what}: {error}"))
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}
