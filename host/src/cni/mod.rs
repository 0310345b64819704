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

use serde_json::Value;

use config::Mode;
pub use error::{CniError, Code};
use protocol::{CniVersion, Command, NetworkCommand};

/// Runs one invocation: `env` reads a variable, `stdin` is the network
/// configuration. `Ok(None)` is a success that prints nothing.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let invocation = protocol::parse_env(env)?;
    let command = match invocation.command {
        Command::Version => return Ok(Some(result::version_result())),
        Command::Network(command) => command,
    };
    let conf = config::parse(stdin)?;
    if matches!(command, NetworkCommand::Gc | NetworkCommand::Status)
        && conf.cni_version < CniVersion::V1_1_0
    {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "config version {} does not allow {}; it needs 1.1.0",
                conf.cni_version.as_str(),
                invocation.command.as_str()
            ),
        ));
    }
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
