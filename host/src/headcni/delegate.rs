//! The delegated IPAM plugin (`ipam.type`: the real `host-local`, knit's
//! `headcni-ipam`, any other), run as the CNI spec says: found in
//! `CNI_PATH`, given this invocation's environment with its own
//! `CNI_COMMAND`, and the whole network configuration on stdin.
//! `headcni-ipam` is built into `headcni` and runs in-process, with the
//! same input: one process start less per ADD and DEL.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cni::config::HEADCNI_IPAM;
use crate::cni::error::{CniError, Code, quoted};
use crate::cni::protocol::CniVersion;

pub struct Ipam<'a> {
    pub kind: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    cni_path: String,
    config: &'a [u8],
    version: CniVersion,
}

impl<'a> Ipam<'a> {
    pub fn new(
        kind: &'a str,
        env: &'a dyn Fn(&str) -> Option<String>,
        config: &'a [u8],
        version: CniVersion,
    ) -> Self {
        Ipam {
            kind,
            env,
            cni_path: env("CNI_PATH").unwrap_or_default(),
            config,
            version,
        }
    }

    fn binary(&self) -> Result<PathBuf, CniError> {
        self.cni_path
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| PathBuf::from(dir).join(self.kind))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                CniError::config(format!(
                    "ipam.type: no plugin {} in CNI_PATH {}",
                    quoted(self.kind),
                    quoted(&self.cni_path)
                ))
            })
    }

    /// Runs `command` (ADD, DEL, CHECK, GC, STATUS). A plugin that speaks
    /// only older spec versions than the config's (Debian's host-local
    /// stops at 1.0.0) is asked again in the newest version it speaks, for
    /// the commands that version has.
    pub fn exec(&self, command: &str) -> Result<Option<Value>, CniError> {
        match self.exec_with(command, self.config) {
            Err(error) if error.code == Code::IncompatibleVersion => {
                let Some(spoken) = self.newest_spoken()? else {
                    return Err(error);
                };
                let mut config: Value = serde_json::from_slice(self.config)
                    .map_err(|error| CniError::new(Code::Decode, error.to_string()))?;
                config["cniVersion"] = spoken.as_str().into();
                self.exec_with(command, &serde_json::to_vec(&config).expect("JSON"))
            }
            outcome => outcome,
        }
    }

    /// Whether the plugin speaks GC and STATUS (spec 1.1.0).
    pub fn speaks_1_1(&self) -> Result<bool, CniError> {
        Ok(self.newest_spoken()? == Some(CniVersion::V1_1_0))
    }

    /// The newest version, no newer than the config's, that the plugin
    /// lists in its VERSION answer.
    fn newest_spoken(&self) -> Result<Option<CniVersion>, CniError> {
        let query =
            serde_json::to_vec(&json!({ "cniVersion": self.version.as_str() })).expect("JSON");
        let answer = self.exec_with("VERSION", &query)?.unwrap_or_default();
        Ok(answer["supportedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|version| version.as_str().and_then(CniVersion::parse))
            .filter(|version| *version <= self.version)
            .max())
    }

    fn exec_with(&self, command: &str, stdin: &[u8]) -> Result<Option<Value>, CniError> {
        let what = format!("ipam {}", self.kind);
        if self.kind == HEADCNI_IPAM {
            let env = |key: &str| match key {
                "CNI_COMMAND" => Some(command.to_string()),
                other => (self.env)(other),
            };
            return crate::cni::run(&env, stdin).map_err(|error| CniError {
                msg: format!("{what}: {}", error.msg),
                ..error
            });
        }
        let binary = self.binary()?;
        let mut child = Command::new(&binary)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| CniError::io(format!("running {}", binary.display()), error))?;
        // A plugin that exits without reading its stdin closes the pipe;
        // its exit status says what happened.
        let _ = child.stdin.take().expect("piped").write_all(stdin);
        let output = child
            .wait_with_output()
            .map_err(|error| CniError::io(format!("waiting for {what}"), error))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let reply: Option<Value> = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&stdout).map_err(|error| {
                CniError::new(
                    Code::Decode,
                    format!("{what} {command} printed what is not JSON: {error}"),
                )
            })?)
        };
        if output.status.success() {
            return Ok(reply);
        }
        let reply = reply.unwrap_or_default();
        let code = reply["code"]
            .as_u64()
            .and_then(Code::from_number)
            .unwrap_or(Code::Io);
        let msg = reply["msg"].as_str().unwrap_or("failed without a message");
        Err(CniError::new(code, format!("{what}: {msg}"))
            .with_details(reply["details"].as_str().unwrap_or_default()))
    }
}
