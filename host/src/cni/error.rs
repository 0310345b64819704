//! CNI errors: printed on stdout as `{"cniVersion","code","msg","details"}`
//! with a non-zero exit.

use serde_json::{Value, json};

/// The most characters of a name (container ID, network, plugin) a message
/// echoes: whoever sends a megabyte of it does not get it back.
pub const ECHO_LIMIT: usize = 128;

/// `text` quoted and escaped for a message, cut after `ECHO_LIMIT`
/// characters with `…`.
pub fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let shown: String = chars.by_ref().take(ECHO_LIMIT).collect();
    if chars.next().is_some() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

/// The spec's error codes, and knit's own (knit-ipam's and HeadCNI's) from
/// 100 up where the spec has none.
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
    /// CHECK: the container's network is not what ADD set up.
    NetworkMismatch = 105,
}

impl Code {
    const ALL: [Code; 13] = [
        Code::IncompatibleVersion,
        Code::InvalidEnvironment,
        Code::Io,
        Code::Decode,
        Code::InvalidConfig,
        Code::TryAgainLater,
        Code::NotAvailable,
        Code::Exhausted,
        Code::Strategy,
        Code::PoolUnavailable,
        Code::NoAllocation,
        Code::Kubernetes,
        Code::NetworkMismatch,
    ];

    /// The code another plugin printed, if it is one of these.
    pub fn from_number(number: u64) -> Option<Code> {
        Code::ALL.into_iter().find(|code| *code as u64 == number)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::short("c1".to_string(), "\"c1\"".to_string())]
    #[case::escaped("a\nb".to_string(), "\"a\\nb\"".to_string())]
    #[case::at_the_limit("x".repeat(ECHO_LIMIT), format!("\"{}\"", "x".repeat(ECHO_LIMIT)))]
    #[case::over_the_limit(
        "y".repeat(100_000),
        format!("\"{}\"…", "y".repeat(ECHO_LIMIT)),
    )]
    #[case::multi_byte_cut_on_a_character(
        "é".repeat(ECHO_LIMIT + 1),
        format!("\"{}\"…", "é".repeat(ECHO_LIMIT)),
    )]
    fn quoted_names_are_bounded(#[case] text: String, #[case] expected: String) {
        assert_eq!(quoted(&text), expected);
    }
}
