//! Local mode: the allocations of this node, in the network's state file.

use std::net::IpAddr;
use std::path::Path;

use knit_ipam_core::{AllocateError, FreeSpace, Request};
use serde_json::Value;

use super::config::{NetConf, RangeSet, StrategyConf};
use super::error::{CniError, Code};
use super::protocol::{Invocation, NetworkCommand};
use super::result::{self, IpConfig};
use super::store::{State, Store};
use super::strategy::StrategyLoader;
use crate::domains::ipam::address_space::AddressSpace;
use crate::domains::ipam::claim::replay_seed;
use crate::runtime::Plugin;

/// The local-mode part of the configuration.
pub struct Network<'a> {
    pub ranges: &'a [RangeSet],
    pub data_dir: &'a Path,
    pub strategy: &'a StrategyConf,
}

pub fn run(
    command: NetworkCommand,
    invocation: &Invocation,
    conf: &NetConf,
    network: &Network<'_>,
) -> Result<Option<Value>, CniError> {
    match command {
        NetworkCommand::Add => add(invocation, conf, network).map(Some),
        NetworkCommand::Del => del(invocation, conf, network).map(|()| None),
        NetworkCommand::Check => check(invocation, conf, network).map(|()| None),
        NetworkCommand::Gc => gc(conf, network).map(|()| None),
        NetworkCommand::Status => status(conf, network)
            .map(|()| None)
            .map_err(|error| CniError::new(Code::NotAvailable, error.msg)),
    }
}

fn add(invocation: &Invocation, conf: &NetConf, network: &Network<'_>) -> Result<Value, CniError> {
    let store = Store::lock(network.data_dir, &conf.name)?;
    let mut state = store.load()?;
    // Loaded only when an address must be chosen: a repeated ADD needs none.
    let mut plugin: Option<Plugin> = None;
    let (addresses, changed) = state.assign(
        network.ranges,
        &invocation.container_id,
        &invocation.ifname,
        |index, state| {
            let plugin = match &mut plugin {
                Some(plugin) => plugin,
                slot @ None => slot.insert(loader(conf).load(&network.strategy.plugin)?),
            };
            let seed = replay_seed(&[
                &invocation.container_id,
                &invocation.ifname,
                &index.to_string(),
            ]);
            choose(plugin, network, index, state, seed)
        },
    )?;
    if changed {
        store.save(&state)?;
    }
    let ips = network
        .ranges
        .iter()
        .zip(&addresses)
        .map(|(set, address)| ip_config(set, address))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(result::add_result(
        conf.cni_version,
        &ips,
        &conf.ipam.routes,
    ))
}

fn del(invocation: &Invocation, conf: &NetConf, network: &Network<'_>) -> Result<(), CniError> {
    let Some(store) = Store::lock_existing(network.data_dir, &conf.name)? else {
        return Ok(());
    };
    let mut state = store.load()?;
    if state.release(&invocation.container_id, &invocation.ifname) {
        store.save(&state)?;
    }
    Ok(())
}

/// host-local's CHECK: the container interface holds an address, here one
/// in every range set.
fn check(invocation: &Invocation, conf: &NetConf, network: &Network<'_>) -> Result<(), CniError> {
    let state = match Store::lock_existing(network.data_dir, &conf.name)? {
        Some(store) => store.load()?,
        None => State::default(),
    };
    let none = |what: String| {
        CniError::new(
            Code::NoAllocation,
            format!(
                "container {} interface {} holds {what} in network {}",
                invocation.container_id, invocation.ifname, conf.name
            ),
        )
    };
    let held = state
        .held_by(&invocation.container_id, &invocation.ifname)
        .ok_or_else(|| none("no address".into()))?;
    for (index, set) in network.ranges.iter().enumerate() {
        if !held.addresses.iter().any(|a| set.range_of(a).is_some()) {
            return Err(none(format!(
                "no address of range set {index} ({})",
                set.describe()
            )));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf, network: &Network<'_>) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_deref()
        .ok_or_else(|| CniError::config("cni.dev/valid-attachments: required for GC"))?;
    let Some(store) = Store::lock_existing(network.data_dir, &conf.name)? else {
        return Ok(());
    };
    let mut state = store.load()?;
    if state.release_unlisted(valid) > 0 {
        store.save(&state)?;
    }
    Ok(())
}

/// Could ADD succeed now: the strategy loads and every range set has a free
/// address.
fn status(conf: &NetConf, network: &Network<'_>) -> Result<(), CniError> {
    loader(conf).load(&network.strategy.plugin)?;
    let state = match Store::lock_existing(network.data_dir, &conf.name)? {
        Some(store) => store.load()?,
        None => State::default(),
    };
    for (index, set) in network.ranges.iter().enumerate() {
        let (_, request) = request(set, index, &state, 0)?;
        let free = FreeSpace::new(&request)
            .map_err(|why| CniError::config(format!("ipam.ranges[{index}]: {why}")))?
            .free_count();
        if free == 0 {
            return Err(exhausted(index, set));
        }
    }
    Ok(())
}

fn loader(conf: &NetConf) -> StrategyLoader {
    StrategyLoader::new(&conf.ipam.plugins_dir, &conf.ipam.cache_dir)
}

/// The strategy's question for one range set: the set's offsets, those
/// anyone holds, the cursor where the last ADD stopped.
fn request(
    set: &RangeSet,
    index: usize,
    state: &State,
    seed: u64,
) -> Result<(AddressSpace, Request), CniError> {
    let space = set
        .address_space()
        .map_err(|why| CniError::config(format!("ipam.ranges[{index}]: {why}")))?;
    let request = Request {
        size: space.size(),
        allocated: state.taken().filter_map(|a| space.offset_of(a)).collect(),
        excluded: space.excluded.clone(),
        cursor: state
            .last_reserved
            .get(&index)
            .and_then(|a| space.offset_of(a)),
        count: 1,
        seed,
    };
    Ok((space, request))
}

fn choose(
    plugin: &Plugin,
    network: &Network<'_>,
    index: usize,
    state: &State,
    seed: u64,
) -> Result<IpAddr, CniError> {
    let set = &network.ranges[index];
    let (space, request) = request(set, index, state, seed)?;
    let config: Vec<(String, String)> = network.strategy.config.clone().into_iter().collect();
    let offsets = match plugin.allocate(&request, &config) {
        Ok(Ok(offsets)) => offsets,
        Ok(Err(AllocateError::Exhausted(_))) => return Err(exhausted(index, set)),
        Ok(Err(AllocateError::InvalidConfig(why))) => {
            return Err(CniError::config(format!("ipam.strategy.config: {why}")));
        }
        Ok(Err(refusal)) => {
            return Err(CniError::new(
                Code::Strategy,
                format!("strategy {}: {refusal}", plugin.name_version()),
            ));
        }
        Err(error) => return Err(CniError::new(Code::Strategy, error.to_string())),
    };
    // `Plugin::allocate` checked: exactly one offset, free, inside the set.
    offsets
        .first()
        .and_then(|offset| space.address_of(*offset))
        .ok_or_else(|| {
            CniError::new(
                Code::Strategy,
                format!("strategy {} answered {offsets:?}", plugin.name_version()),
            )
        })
}

fn exhausted(index: usize, set: &RangeSet) -> CniError {
    CniError::new(
        Code::Exhausted,
        format!("no free address in range set {index} ({})", set.describe()),
    )
}

fn ip_config(set: &RangeSet, address: &IpAddr) -> Result<IpConfig, CniError> {
    let range = set.range_of(address).ok_or_else(|| {
        CniError::new(
            Code::Strategy,
            format!("{address} is outside range set {}", set.describe()),
        )
    })?;
    Ok(IpConfig {
        address: *address,
        prefix: range.subnet.prefix,
        gateway: Some(range.gateway),
    })
}
