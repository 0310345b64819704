//! Local mode's state: one JSON file per network in `<dataDir>/<network>/`,
//! read and changed only under an exclusive lock on the `lock` file beside
//! it, and replaced whole (temp file, fsync, rename), so a crash leaves the
//! old state or the new one, never a mix. A leftover temp file is never
//! read; the next save overwrites it.
//!
//! A state file damaged from outside is never guessed at: ADD, CHECK and
//! GC refuse it, naming the file; DEL, which the runtime needs to succeed,
//! releases nothing from it and leaves it for an operator to repair.
//!
//! The directory is not fsynced after the rename: that would only make the
//! latest change survive a power cut, which costs a disk flush per call and
//! buys nothing, since no container outlives the reboot (host-local syncs
//! nothing at all).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cidr::RangeSet;
use super::config::Attachment;
use super::error::{CniError, Code};

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = ".state.json.tmp";
const LOCK_FILE: &str = "lock";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// The address handed out last in each range set, by index: where a
    /// sequential strategy goes on from (host-local's `last_reserved_ip.N`).
    #[serde(default)]
    pub last_reserved: BTreeMap<usize, IpAddr>,
}

/// The addresses one container interface holds, one per range set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    pub addresses: Vec<IpAddr>,
}

impl State {
    pub fn held_by(&self, container_id: &str, ifname: &str) -> Option<&Allocation> {
        self.allocations
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
    }

    /// Every address anyone holds.
    pub fn taken(&self) -> impl Iterator<Item = &IpAddr> {
        self.allocations.iter().flat_map(|a| &a.addresses)
    }

    /// The address of each range set for this container interface: the one
    /// it already holds there (so ADD is idempotent), else a new one from
    /// `choose(range set index, state)`. Addresses it held outside the
    /// current range sets are let go. Returns the addresses and whether the
    /// state changed.
    pub fn assign<E>(
        &mut self,
        sets: &[RangeSet],
        container_id: &str,
        ifname: &str,
        mut choose: impl FnMut(usize, &State) -> Result<IpAddr, E>,
    ) -> Result<(Vec<IpAddr>, bool), E> {
        let held = self
            .held_by(container_id, ifname)
            .map(|a| a.addresses.clone())
            .unwrap_or_default();
        let mut addresses = Vec::with_capacity(sets.len());
        for (index, set) in sets.iter().enumerate() {
            match held.iter().find(|a| set.range_of(a).is_some()) {
                Some(address) => addresses.push(*address),
                None => {
                    let address = choose(index, self)?;
                    self.last_reserved.insert(index, address);
                    addresses.push(address);
                }
            }
        }
        let changed = addresses != held;
        if changed {
            self.release(container_id, ifname);
            self.allocations.push(Allocation {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                addresses: addresses.clone(),
            });
        }
        Ok((addresses, changed))
    }

    /// False when the container interface held nothing.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> bool {
        let before = self.allocations.len();
        self.allocations
            .retain(|a| !(a.container_id == container_id && a.ifname == ifname));
        self.allocations.len() != before
    }

    /// GC: lets go of everything not attached any more; returns how many.
    pub fn release_unlisted(&mut self, valid: &[Attachment]) -> usize {
        let before = self.allocations.len();
        self.allocations.retain(|a| {
            valid
                .iter()
                .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
        });
        before - self.allocations.len()
    }
}

/// A state file that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    pub path: PathBuf,
    pub why: String,
}

impl Damaged {
    pub fn error(&self) -> CniError {
        CniError::new(
            Code::Io,
            format!(
                "state file {} is damaged ({}); repair or remove it",
                self.path.display(),
                self.why
            ),
        )
    }
}

/// A network's state directory, locked while this value lives.
pub struct Store {
    dir: PathBuf,
    // flock is released when the file closes, also when the process dies.
    _lock: File,
}

impl Store {
    /// Locks `<data_dir>/<network>`, creating it; waits while another
    /// invocation holds the lock.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format_args!("creating {}", dir.display()), e))?;
        Store::lock_dir(dir)
    }

    /// Like `lock`, but creates nothing: `None` when the network has no
    /// state yet (DEL, CHECK and GC leave no trace there).
    pub fn lock_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, CniError> {
        let dir = data_dir.join(network);
        if !dir.is_dir() {
            return Ok(None);
        }
        Store::lock_dir(dir).map(Some)
    }

    fn lock_dir(dir: PathBuf) -> Result<Store, CniError> {
        let path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format_args!("opening {}", path.display()), e))?;
        lock.lock()
            .map_err(|e| CniError::io(format_args!("locking {}", path.display()), e))?;
        Ok(Store { dir, _lock: lock })
    }

    /// The state; a damaged file is an error naming it.
    pub fn load(&self) -> Result<State, CniError> {
        self.read()?.map_err(|damaged| damaged.error())
    }

    /// The state, or why the file is damaged; errors only when it cannot
    /// be read at all.
    pub fn read(&self) -> Result<Result<State, Damaged>, CniError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ok(State::default()));
            }
            Err(error) => {
                return Err(CniError::io(
                    format_args!("reading {}", path.display()),
                    error,
                ));
            }
        };
        // Only a whole file is ever renamed into place, so a bad one was
        // damaged from outside: refuse rather than forget who holds what.
        Ok(serde_json::from_slice(&bytes).map_err(|error| Damaged {
            path,
            why: error.to_string(),
        }))
    }

    pub fn save(&self, state: &State) -> Result<(), CniError> {
        let temp = self.dir.join(TEMP_FILE);
        let path = self.dir.join(STATE_FILE);
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
            // The bytes (and the size that reads them back) are on disk
            // before the rename can make them the state.
            file.sync_data()?;
            std::fs::rename(&temp, &path)
        };
        write().map_err(|e| CniError::io(format_args!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::cidr::{Cidr, Range};

    fn set(subnet: &str, start: &str, end: &str) -> RangeSet {
        let (network, prefix) = subnet.split_once('/').unwrap();
        RangeSet(vec![Range {
            subnet: Cidr {
                network: network.parse().unwrap(),
                prefix: prefix.parse().unwrap(),
            },
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: start.parse().unwrap(),
        }])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn assign_is_idempotent_and_fills_only_missing_sets() {
        let v4 = set("10.0.0.0/24", "10.0.0.2", "10.0.0.254");
        let v6 = set("fd00::/120", "fd00::2", "fd00::ff");
        let mut state = State::default();
        let mut asked = Vec::new();
        let mut choose = |index: usize, _: &State| -> Result<IpAddr, ()> {
            asked.push(index);
            Ok([ip("10.0.0.7"), ip("fd00::7")][index])
        };
        let (first, changed) = state
            .assign(std::slice::from_ref(&v4), "c1", "eth0", &mut choose)
            .unwrap();
        assert_eq!((first, changed), (vec![ip("10.0.0.7")], true));
        // Same owner again: nothing asked, nothing changed.
        let (again, changed) = state
            .assign(std::slice::from_ref(&v4), "c1", "eth0", &mut choose)
            .unwrap();
        assert_eq!((again, changed), (vec![ip("10.0.0.7")], false));
        // A range set added later: only it gets a new address.
        let (both, changed) = state.assign(&[v4, v6], "c1", "eth0", &mut choose).unwrap();
        assert_eq!(both, vec![ip("10.0.0.7"), ip("fd00::7")]);
        assert!(changed);
        assert_eq!(asked, vec![0, 1]);
        assert_eq!(state.allocations.len(), 1);
        assert_eq!(state.last_reserved.get(&1), Some(&ip("fd00::7")));
    }

    #[test]
    fn a_failed_choice_changes_nothing() {
        let mut state = State::default();
        let sets = [set("10.0.0.0/24", "10.0.0.2", "10.0.0.254")];
        let result = state.assign(&sets, "c1", "eth0", |_, _| Err("exhausted"));
        assert_eq!(result, Err("exhausted"));
        assert_eq!(state, State::default());
    }

    #[test]
    fn release_and_gc() {
        let mut state = State::default();
        for (id, address) in [("a", "10.0.0.2"), ("b", "10.0.0.3"), ("c", "10.0.0.4")] {
            state.allocations.push(Allocation {
                container_id: id.into(),
                ifname: "eth0".into(),
                addresses: vec![ip(address)],
            });
        }
        assert!(state.release("a", "eth0"));
        assert!(!state.release("a", "eth0"));
        assert!(!state.release("b", "eth1"));
        let valid = [Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(state.release_unlisted(&valid), 1);
        assert_eq!(state.taken().collect::<Vec<_>>(), vec![&ip("10.0.0.4")]);
    }

    #[test]
    fn save_replaces_and_ignores_a_leftover_temp_file() {
        let data_dir = tempfile::tempdir().unwrap();
        assert!(
            Store::lock_existing(data_dir.path(), "net")
                .unwrap()
                .is_none()
        );
        let store = Store::lock(data_dir.path(), "net").unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut state = State::default();
        state.last_reserved.insert(0, ip("10.0.0.9"));
        store.save(&state).unwrap();
        std::fs::write(data_dir.path().join("net").join(TEMP_FILE), b"{\"allocat").unwrap();
        assert_eq!(store.load().unwrap(), state);
        let state_file = data_dir.path().join("net").join(STATE_FILE);
        std::fs::write(&state_file, b"{").unwrap();
        let error = store.load().unwrap_err();
        assert_eq!(error.code, Code::Io);
        assert!(error.msg.contains("damaged"), "{}", error.msg);
        assert!(
            error.msg.contains(&*state_file.to_string_lossy()),
            "{}",
            error.msg
        );
        assert_eq!(store.read().unwrap().unwrap_err().path, state_file);
    }
}
