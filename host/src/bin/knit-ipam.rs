//! `knit-ipam`, the CNI IPAM plugin: the process edge. The protocol and
//! everything behind it live in `knit::cni`.

use std::io::{Read, Write};
use std::process::ExitCode;

use knit::cni::{CniError, error_reply, run};

fn main() -> ExitCode {
    // stdout carries the protocol; logs go to stderr, which runtimes keep.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&|key| std::env::var(key).ok(), &stdin),
        Err(error) => Err(CniError::io("reading stdin", error)),
    };
    let (reply, status) = match outcome {
        Ok(reply) => (reply, ExitCode::SUCCESS),
        Err(error) => (Some(error_reply(&error, &stdin)), ExitCode::FAILURE),
    };
    // One write: stdout is line-buffered, and a write per line adds up.
    if let Some(reply) = reply
        && std::io::stdout()
            .lock()
            .write_all(format!("{reply:#}\n").as_bytes())
            .is_err()
    {
        return ExitCode::FAILURE;
    }
    status
}
