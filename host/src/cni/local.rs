//! Local mode: the allocations of this node, in the network's state file.
//!
//! The network's lock is held to read and to write the state, never while a
//! strategy plugin is loaded or called: a slow or hostile one (up to its
//! deadline, plus compiling) must not stall DEL and every other ADD on the
//! node. So ADD reads, chooses unlocked, and commits only if what it chose
//! is still free, else chooses again.

use std::net::IpAddr;
use std::path::Path;

use knit_ipam_core::{AllocateError, FreeSpace, Request};
use serde_json::Value;

use super::cidr::RangeSet;
use super::config::{NetConf, StrategyConf};
use super::error::{CniError, Code, quoted};
use super::protocol::{Invocation, NetworkCommand};
use super::result::{self, IpConfig};
use super::store::{State, Store};
use super::strategy::StrategyLoader;
use crate::controller::replay_seed;
use crate::domains::ipam::address_space::AddressSpace;
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

/// Rounds of choosing and committing before ADD gives up: each lost round
/// means a concurrent ADD took an address this one chose meanwhile.
const MAX_ROUNDS: usize = 8;

fn add(invocation: &Invocation, conf: &NetConf, network: &Network<'_>) -> Result<Value, CniError> {
    // Loaded once, only when an address must be chosen (a repeated ADD
    // needs none), and with no lock held.
    let mut plugin: Option<Plugin> = None;
    let addresses = assign(
        network.data_dir,
        &conf.name,
        network.ranges,
        (&invocation.container_id, &invocation.ifname),
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

/// The addresses of a container interface (`owner`: container ID and
/// interface), one per range set: those it holds (so ADD is idempotent),
/// else new ones from `choose(range set index, state)`, which runs with the
/// lock released. The commit re-reads the state and takes the chosen
/// addresses only if they are still free; otherwise it chooses again.
fn assign(
    data_dir: &Path,
    network: &str,
    ranges: &[RangeSet],
    (container_id, ifname): (&str, &str),
    mut choose: impl FnMut(usize, &State) -> Result<IpAddr, CniError>,
) -> Result<Vec<IpAddr>, CniError> {
    for _ in 0..MAX_ROUNDS {
        // The lock is dropped with the store at the end of the statement.
        let mut chosen = Store::lock(data_dir, network)?.load()?;
        let (addresses, changed) = chosen.assign(ranges, container_id, ifname, &mut choose)?;
        if !changed {
            return Ok(addresses);
        }
        let store = Store::lock(data_dir, network)?;
        let mut current = store.load()?;
        // What the container holds now wins (a concurrent ADD of the same
        // container committed first); a chosen address taken meanwhile
        // sends this ADD round again.
        let committed = current.assign(ranges, container_id, ifname, |index, state| {
            let address = addresses[index];
            if state.taken().any(|taken| *taken == address) {
                Err(())
            } else {
                Ok(address)
            }
        });
        if let Ok((held, changed)) = committed {
            if changed {
                store.save(&current)?;
            }
            return Ok(held);
        }
    }
    Err(CniError::new(
        Code::TryAgainLater,
        format!(
            "concurrent ADDs on network {} took the addresses chosen {MAX_ROUNDS} times; try again",
            quoted(network)
        ),
    ))
}

fn del(invocation: &Invocation, conf: &NetConf, network: &Network<'_>) -> Result<(), CniError> {
    release(
        network.data_dir,
        &conf.name,
        (&invocation.container_id, &invocation.ifname),
    )
}

/// DEL: lets go of what the container interface holds. The runtime needs
/// DEL to succeed to tear a container down (the spec asks it to wherever it
/// can), so a damaged state file, from which nothing can be released, is
/// reported on stderr and left in place, and DEL succeeds; ADD goes on
/// refusing the file until someone repairs it.
fn release(
    data_dir: &Path,
    network: &str,
    (container_id, ifname): (&str, &str),
) -> Result<(), CniError> {
    let Some(store) = Store::lock_existing(data_dir, network)? else {
        return Ok(());
    };
    let mut state = match store.read()? {
        Ok(state) => state,
        Err(damaged) => {
            tracing::warn!(
                "DEL of container {} interface {}: nothing released: {}",
                quoted(container_id),
                quoted(ifname),
                damaged.error()
            );
            return Ok(());
        }
    };
    if state.release(container_id, ifname) {
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
                quoted(&invocation.container_id),
                quoted(&invocation.ifname),
                quoted(&conf.name)
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::cni::config::{self, Mode};

    const NETWORK: &str = "net";

    fn ranges() -> Vec<RangeSet> {
        let stdin = serde_json::json!({
            "cniVersion": "1.0.0", "name": NETWORK,
            "ipam": {"type": "knit-ipam", "subnet": "10.0.0.0/24"},
        });
        match config::parse(&serde_json::to_vec(&stdin).unwrap())
            .unwrap()
            .ipam
            .mode
        {
            Mode::Local { ranges, .. } => ranges,
            Mode::Cluster { .. } => unreachable!(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The first address nobody holds, from .2 on (sequential, in short).
    fn first_free(state: &State) -> IpAddr {
        (2..255u8)
            .map(|n| ip(&format!("10.0.0.{n}")))
            .find(|a| !state.taken().any(|t| t == a))
            .unwrap()
    }

    fn state(data_dir: &Path) -> State {
        Store::lock(data_dir, NETWORK).unwrap().load().unwrap()
    }

    fn held(data_dir: &Path, container: &str) -> Option<Vec<IpAddr>> {
        state(data_dir)
            .held_by(container, "eth0")
            .map(|a| a.addresses.clone())
    }

    /// A rival ADD that commits `address` for `container` while ours chooses.
    fn rival(data_dir: &Path, container: &str, address: IpAddr) {
        assign(data_dir, NETWORK, &ranges(), (container, "eth0"), |_, _| {
            Ok(address)
        })
        .unwrap();
    }

    #[test]
    fn the_network_is_unlocked_while_the_strategy_chooses() {
        let dir = tempfile::tempdir().unwrap();
        rival(dir.path(), "other", ip("10.0.0.5"));
        let chosen = assign(
            dir.path(),
            NETWORK,
            &ranges(),
            ("c1", "eth0"),
            |_, state| {
                // The lock is free: nothing waits for a slow strategy...
                let lock = std::fs::File::open(dir.path().join(NETWORK).join("lock")).unwrap();
                lock.try_lock()
                    .expect("ADD holds the network's lock while choosing");
                drop(lock);
                // ...and a DEL of another container goes through meanwhile.
                release(dir.path(), NETWORK, ("other", "eth0")).unwrap();
                Ok(first_free(state))
            },
        )
        .unwrap();
        assert_eq!(chosen, [ip("10.0.0.2")]);
        assert_eq!(held(dir.path(), "c1"), Some(vec![ip("10.0.0.2")]));
        assert_eq!(held(dir.path(), "other"), None);
    }

    #[test]
    fn an_address_taken_while_choosing_is_chosen_again() {
        let dir = tempfile::tempdir().unwrap();
        let rounds = Cell::new(0);
        let chosen = assign(
            dir.path(),
            NETWORK,
            &ranges(),
            ("c1", "eth0"),
            |_, state| {
                rounds.set(rounds.get() + 1);
                let address = first_free(state);
                if rounds.get() == 1 {
                    rival(dir.path(), "rival", address);
                }
                Ok(address)
            },
        )
        .unwrap();
        assert_eq!(rounds.get(), 2);
        assert_eq!(chosen, [ip("10.0.0.3")]);
        assert_eq!(held(dir.path(), "rival"), Some(vec![ip("10.0.0.2")]));
        assert_eq!(held(dir.path(), "c1"), Some(vec![ip("10.0.0.3")]));
    }

    #[test]
    fn a_repeated_add_returns_what_the_container_holds() {
        let dir = tempfile::tempdir().unwrap();
        // The same container's ADD, repeated by the runtime, commits first.
        let chosen = assign(dir.path(), NETWORK, &ranges(), ("c1", "eth0"), |_, _| {
            rival(dir.path(), "c1", ip("10.0.0.9"));
            Ok(ip("10.0.0.7"))
        })
        .unwrap();
        assert_eq!(chosen, [ip("10.0.0.9")]);
        assert_eq!(
            state(dir.path()).taken().collect::<Vec<_>>(),
            [&ip("10.0.0.9")]
        );
        // And once held, no strategy is asked at all.
        let again = assign(dir.path(), NETWORK, &ranges(), ("c1", "eth0"), |_, _| {
            panic!("a repeated ADD asked the strategy")
        })
        .unwrap();
        assert_eq!(again, [ip("10.0.0.9")]);
    }

    #[test]
    fn add_gives_up_after_a_bounded_number_of_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let rounds = Cell::new(0);
        let error = assign(
            dir.path(),
            NETWORK,
            &ranges(),
            ("c1", "eth0"),
            |_, state| {
                rounds.set(rounds.get() + 1);
                let address = first_free(state);
                rival(dir.path(), &format!("rival{}", rounds.get()), address);
                Ok(address)
            },
        )
        .unwrap_err();
        assert_eq!(rounds.get(), MAX_ROUNDS);
        assert_eq!(error.code, Code::TryAgainLater);
        assert!(error.msg.contains("try again"), "{}", error.msg);
        assert_eq!(held(dir.path(), "c1"), None);
    }

    #[test]
    fn del_succeeds_on_a_damaged_state_and_add_still_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        rival(dir.path(), "c1", ip("10.0.0.2"));
        let state_file = dir.path().join(NETWORK).join("state.json");
        std::fs::write(&state_file, b"{\"allocations\": [").unwrap();
        release(dir.path(), NETWORK, ("c1", "eth0")).unwrap();
        // Left as it was, for an operator: not replaced by a guess.
        assert_eq!(std::fs::read(&state_file).unwrap(), b"{\"allocations\": [");
        let error = assign(dir.path(), NETWORK, &ranges(), ("c2", "eth0"), |_, _| {
            panic!("ADD chose from a damaged state")
        })
        .unwrap_err();
        assert_eq!(error.code, Code::Io);
        assert!(
            error.msg.contains(&*state_file.to_string_lossy()) && error.msg.contains("damaged"),
            "{}",
            error.msg
        );
    }
}
