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
    if let Some(reply) = reply
        && writeln!(std::io::stdout().lock(), "{reply:#}").is_err()
    {
        return ExitCode::FAILURE;
    }
    status
}
