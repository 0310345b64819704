//! How the short-lived `headcni` tells the node agent what each invocation
//! did, so the agent's metrics move: one small JSON datagram on a Unix
//! socket in HeadCNI's state directory. Sending never waits and never
//! fails an invocation: with no agent listening the report is dropped.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/headcni";
/// Overrides the state directory, for a node laid out differently (and tests).
pub const STATE_DIR_VAR: &str = "HEADCNI_STATE_DIR";
const SOCKET: &str = "agent.sock";
/// The most a report takes; anything longer is not one.
pub const MAX_REPORT: usize = 512;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// ADD, DEL, CHECK, GC or STATUS.
    pub command: String,
    pub ok: bool,
    pub seconds: f64,
    /// Addresses handed out (ADD) by this invocation.
    pub addresses: u32,
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

pub fn state_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env(STATE_DIR_VAR)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
}

pub fn send(state_dir: &Path, report: &Report) {
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let _ = socket.set_nonblocking(true);
    let _ = socket.set_write_timeout(Some(Duration::from_millis(10)));
    let bytes = serde_json::to_vec(report).expect("a report is JSON");
    if let Err(error) = socket.send_to(&bytes, socket_path(state_dir)) {
        tracing::debug!("no agent took the report: {error}");
    }
}

/// A datagram as the agent received it, if it is a report.
pub fn parse(datagram: &[u8]) -> Option<Report> {
    if datagram.len() > MAX_REPORT {
        return None;
    }
    serde_json::from_slice(datagram).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_junk_is_dropped() {
        let report = Report {
            command: "ADD".into(),
            ok: true,
            seconds: 0.012,
            addresses: 1,
        };
        assert_eq!(parse(&serde_json::to_vec(&report).unwrap()), Some(report));
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(&vec![b' '; MAX_REPORT + 1]), None);
    }

    #[test]
    fn the_state_dir_can_be_moved() {
        assert_eq!(state_dir(&|_| None), PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            state_dir(&|_| Some("/tmp/x".into())),
            PathBuf::from("/tmp/x")
        );
    }
}
