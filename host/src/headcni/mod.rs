//! HeadCNI's pod network on a node: `headcni`, the main CNI plugin that
//! takes the seed's conflists unchanged (spec 0.3.0 to 1.1.0: ADD, DEL,
//! CHECK, GC, STATUS, VERSION). Each pod gets a veth pair whose pod end
//! carries the address the delegated IPAM plugin (`host-local`, or
//! `headcni-ipam`, which is `knit-ipam` under HeadCNI's name) handed out.
//!
//! Observe → plan → act: `config` and `plan` are pure (what to make, what
//! ADD prints, what CHECK expects, what GC removes); `delegate` runs the
//! IPAM plugin and `kernel` talks netlink. Each invocation `report`s to the
//! node `agent`, which installs the plugins, writes the conflist and serves
//! the metrics.

pub mod agent;
pub mod config;
mod delegate;
mod kernel;
pub mod plan;
pub mod report;

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::cni::error::{CniError, Code};
use crate::cni::protocol::{self, Command, Invocation, NetworkCommand};
use crate::cni::result::version_result;
use config::HeadCniConf;
use delegate::Ipam;
use kernel::Kernel;

/// Runs one invocation: `env` reads a variable, `stdin` is the network
/// configuration. `Ok(None)` is a success that prints nothing.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let invocation = protocol::parse_env(env)?;
    let command = match invocation.command {
        Command::Version => return Ok(Some(version_result())),
        Command::Network(command) => command,
    };
    let started = Instant::now();
    let outcome = run_network(env, stdin, command, &invocation);
    let addresses = match &outcome {
        Ok(Some(result)) => result["ips"].as_array().map_or(0, |ips| ips.len() as u32),
        _ => 0,
    };
    report::send(
        &report::state_dir(env),
        &report::Report {
            command: invocation.command.as_str().into(),
            ok: outcome.is_ok(),
            seconds: started.elapsed().as_secs_f64(),
            addresses,
        },
    );
    outcome
}

fn run_network(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    command: NetworkCommand,
    invocation: &Invocation,
) -> Result<Option<Value>, CniError> {
    let conf = config::parse(stdin)?;
    protocol::check_command_version(command, conf.cni_version)?;
    let ipam = Ipam::new(&conf.ipam_type, env, stdin, conf.cni_version);
    match command {
        NetworkCommand::Add => add(&conf, invocation, &ipam).map(Some),
        NetworkCommand::Del => del(&conf, invocation, &ipam).map(|()| None),
        NetworkCommand::Check => check(&conf, invocation, &ipam).map(|()| None),
        NetworkCommand::Gc => gc(&conf, &ipam).map(|()| None),
        NetworkCommand::Status => status(&ipam).map(|()| None),
    }
}

fn add(conf: &HeadCniConf, invocation: &Invocation, ipam: &Ipam) -> Result<Value, CniError> {
    let kernel = Kernel::connect()?;
    let pod = kernel
        .pod_namespace(Path::new(&invocation.netns))?
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!(
                    "CNI_NETNS {:?}: no such network namespace",
                    invocation.netns
                ),
            )
        })?;
    let answer = ipam.exec("ADD")?.ok_or_else(|| {
        CniError::new(
            Code::Decode,
            format!("ipam {}: ADD printed no result", ipam.kind),
        )
    })?;
    let made = plan::parse_ipam_result(&answer)
        .map_err(|why| CniError::new(Code::Decode, format!("ipam {}: {why}", ipam.kind)))
        .and_then(|allocated| {
            plan::plan(
                conf,
                &invocation.container_id,
                &invocation.ifname,
                &allocated,
            )
        })
        .and_then(|network| {
            let attached = kernel.attach(&pod, &network, &invocation.netns)?;
            Ok(plan::add_result(conf.cni_version, &network, &attached))
        });
    if made.is_err() {
        // Leave nothing behind: the veth pair, if made, and the address.
        let host_veth =
            plan::host_veth_name(&conf.name, &invocation.container_id, &invocation.ifname);
        if let Err(error) = kernel.detach(&host_veth, Some(&pod), &invocation.ifname) {
            tracing::warn!("undoing a failed ADD: {error}");
        }
        if let Err(error) = ipam.exec("DEL") {
            tracing::warn!("releasing the address of a failed ADD: {error}");
        }
    }
    made
}

/// Idempotent, and works when the namespace is already gone: the host end
/// has a name that follows from the attachment.
fn del(conf: &HeadCniConf, invocation: &Invocation, ipam: &Ipam) -> Result<(), CniError> {
    let kernel = Kernel::connect()?;
    let pod = match invocation.netns.as_str() {
        "" => None,
        netns => kernel.pod_namespace(Path::new(netns))?,
    };
    let host_veth = plan::host_veth_name(&conf.name, &invocation.container_id, &invocation.ifname);
    kernel.detach(&host_veth, pod.as_ref(), &invocation.ifname)?;
    ipam.exec("DEL")?;
    Ok(())
}

fn check(conf: &HeadCniConf, invocation: &Invocation, ipam: &Ipam) -> Result<(), CniError> {
    let prev_result = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult: required for CHECK"))?;
    ipam.exec("CHECK")?;
    let kernel = Kernel::connect()?;
    let pod = kernel
        .pod_namespace(Path::new(&invocation.netns))?
        .ok_or_else(|| {
            CniError::new(
                Code::NetworkMismatch,
                format!("the network namespace {:?} is gone", invocation.netns),
            )
        })?;
    let host_veth = plan::host_veth_name(&conf.name, &invocation.container_id, &invocation.ifname);
    let observed = kernel.observe(&pod, &invocation.ifname, &host_veth)?;
    plan::check(
        conf,
        &invocation.container_id,
        &invocation.ifname,
        prev_result,
        &observed,
    )
}

/// Removes this network's host veths the runtime no longer lists (their
/// pods' ends go with them), and lets the IPAM plugin release addresses if
/// it speaks GC.
fn gc(conf: &HeadCniConf, ipam: &Ipam) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_deref()
        .ok_or_else(|| CniError::config("cni.dev/valid-attachments: required for GC"))?;
    let kernel = Kernel::connect()?;
    for name in plan::stale_host_veths(&conf.name, &kernel.host_links()?, valid) {
        tracing::info!(veth = name, "GC: removing a veth no attachment uses");
        kernel.delete_host_link(&name)?;
    }
    if ipam.speaks_1_1()? {
        ipam.exec("GC")?;
    }
    Ok(())
}

/// Ready when the IPAM plugin is (if it can say): HeadCNI itself needs
/// nothing beyond the kernel.
fn status(ipam: &Ipam) -> Result<(), CniError> {
    if ipam.speaks_1_1()? {
        ipam.exec("STATUS")?;
    }
    Ok(())
}
