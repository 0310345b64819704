//! `knit-ipam`: a CNI IPAM plugin (spec 0.3.0 to 1.1.0: ADD, DEL, CHECK,
//! VERSION, GC, STATUS), configured like host-local, whose addresses are
//! chosen by the same strategy plugins as the controller's. Local mode keeps
//! a node's allocations on disk; cluster mode claims them from an `IPPool`.
//!
//! Pure: `protocol` (the environment), `config` and the `cidr` shapes it
//! parses into, `result`, and the state transitions in `store`. I/O: the
//! store's files, `strategy` (loading the plugin), `cluster` (the
//! Kubernetes API).

pub mod cidr;
mod cluster;
pub mod config;
pub mod error;
mod local;
pub mod protocol;
pub mod result;
pub mod store;
mod strategy;

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;

use config::Mode;
pub use error::{CniError, Code};
use protocol::{CniVersion, Command};

/// Runs one invocation: `env` reads a variable, `stdin` is the network
/// configuration. `Ok(None)` is a success that prints nothing.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let invocation = protocol::parse_env(env)?;
    let command = match invocation.command {
        Command::Version => return Ok(Some(result::version_result())),
        Command::Network(command) => command,
    };
    let conf = config::parse(stdin)?;
    protocol::check_command_version(command, conf.cni_version)?;
    match &conf.ipam.mode {
        Mode::Local {
            ranges,
            data_dir,
            strategy,
        } => local::run(
            command,
            &invocation,
            &conf,
            &local::Network {
                ranges,
                data_dir,
                strategy,
            },
        ),
        Mode::Cluster { pool, kubeconfig } => {
            cluster::run(command, &invocation, &conf, pool, kubeconfig)
        }
    }
}

/// The error as printed, in the version the config asked for when it says.
pub fn error_reply(error: &CniError, stdin: &[u8]) -> Value {
    let version = config::requested_version(stdin).unwrap_or(CniVersion::LATEST);
    error.to_json(version.as_str())
}

/// A plugin's whole invocation: `env` and the network configuration in,
/// the result (or nothing) out.
pub type Plugin = fn(&dyn Fn(&str) -> Option<String>, &[u8]) -> Result<Option<Value>, CniError>;

/// The process edge of every knit CNI binary: reads stdin, runs `plugin`,
/// prints its result or its error on stdout. Logs go to stderr, which
/// runtimes keep (stdout is the protocol), at the level `log_level_var`
/// names (e.g. `HEADCNI_LOG_LEVEL=debug`), warnings by default.
pub fn plugin_main(log_level_var: &str, plugin: Plugin) -> ExitCode {
    let filter = std::env::var(log_level_var)
        .ok()
        .and_then(|level| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => plugin(&|key| std::env::var(key).ok(), &stdin),
        Err(error) => Err(CniError::io("reading stdin", error)),
    };
    let (reply, status) = match outcome {
        Ok(reply) => (reply, ExitCode::SUCCESS),
        Err(error) => {
            tracing::warn!(code = error.code as u32, "{}", error.msg);
            (Some(error_reply(&error, &stdin)), ExitCode::FAILURE)
        }
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
