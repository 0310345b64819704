//! What a round changes on a CLB, decided purely from the listeners the
//! objects want and what the CLB holds: which listener stands for an object
//! (its ID, or one adopted by its name on its port), which ports something
//! else holds, which listeners to create or delete, whose settings to put
//! back, and which targets to deregister and register. `lb_queue` does the
//! I/O around it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::providers::tencent::{BatchTarget, ListenerSettings, Protocol, Target};

/// What one `DedicatedCLBListener` wants on its CLB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub listener: ListenerKey,
    /// The pod IP and port to forward to; `None` leaves the listener
    /// without targets.
    pub backend: Option<(String, u16)>,
    /// Its `CLBListenerConfig`'s settings (none set without one): it is
    /// created with them, and modified when what the CLB holds differs.
    pub settings: Arc<ListenerSettings>,
}

/// Which CLB listener an object stands for: its name on the CLB (knit's
/// mark of ownership), protocol and port, and its ID once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub name: String,
    pub listener_id: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

/// The port space a protocol's listeners share on an LB.
pub(super) fn transport(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp | Protocol::Quic => 1,
        _ => 0,
    }
}

/// One listener as a round sees it.
#[derive(Clone, Debug)]
pub(super) struct Existing {
    pub(super) protocol: Protocol,
    pub(super) port: u16,
    pub(super) name: String,
    pub(super) targets: Vec<Target>,
    pub(super) settings: ListenerSettings,
}

/// The LB at the start of a round, updated by the round's own writes.
pub(super) struct Snapshot {
    pub(super) found: bool,
    /// By listener ID.
    pub(super) listeners: BTreeMap<String, Existing>,
}

impl Snapshot {
    /// The listener standing for `key`: its ID if it still exists, else the
    /// one on its port, which must carry its name.
    pub(super) fn find(&self, key: &ListenerKey) -> Result<Option<String>, String> {
        if let Some(id) = &key.listener_id
            && let Some(existing) = self.listeners.get(id)
            && existing.port == key.port
            && transport(existing.protocol) == transport(key.protocol)
        {
            return Ok(Some(id.clone()));
        }
        match self
            .listeners
            .iter()
            .find(|(_, l)| l.port == key.port && transport(l.protocol) == transport(key.protocol))
        {
            Some((id, l)) if l.name == key.name && l.protocol == key.protocol => {
                Ok(Some(id.clone()))
            }
            Some((id, l)) => Err(if l.name.is_empty() {
                id.clone()
            } else {
                format!("{id} ({})", l.name)
            }),
            None => Ok(None),
        }
    }
}

/// What one `CreateListener` shares across its ports.
pub(super) type CreateKind = (Protocol, Arc<ListenerSettings>);

/// A round's ensure requests sorted against the snapshot; `R` is whatever
/// travels with a request (the queue's reply channel).
pub(super) struct Placement<R> {
    /// In place already, with the listener's ID.
    pub(super) placed: Vec<(Desired, String, R)>,
    /// To create, by protocol and settings: one `CreateListener` names a
    /// single protocol, and its settings go to every port it creates.
    pub(super) to_create: BTreeMap<CreateKind, Vec<(Desired, R)>>,
    /// Their port is held by something else, named.
    pub(super) taken: Vec<(Desired, String, R)>,
}

/// Sorts ensure requests into in place, to create and port taken.
pub(super) fn place<R>(snapshot: &Snapshot, ensures: Vec<(Desired, R)>) -> Placement<R> {
    let mut placement = Placement {
        placed: Vec::new(),
        to_create: BTreeMap::new(),
        taken: Vec::new(),
    };
    for (desired, reply) in ensures {
        // Two objects wanting one port in one round: the first gets it.
        let queued = placement
            .to_create
            .values()
            .flatten()
            .find(|(d, _)| {
                transport(d.listener.protocol) == transport(desired.listener.protocol)
                    && d.listener.port == desired.listener.port
            })
            .map(|(d, _)| d.listener.name.clone());
        match (snapshot.find(&desired.listener), queued) {
            (Ok(Some(id)), _) => placement.placed.push((desired, id, reply)),
            (Ok(None), None) => placement
                .to_create
                .entry((desired.listener.protocol, desired.settings.clone()))
                .or_default()
                .push((desired, reply)),
            (Ok(None), Some(by)) | (Err(by), _) => placement.taken.push((desired, by, reply)),
        }
    }
    placement
}

/// Sorts delete requests: the IDs of the listeners to delete, and the
/// requests with nothing of theirs to delete (gone already, or the port is
/// someone else's, which is never deleted).
pub(super) fn doomed<R>(
    snapshot: &Snapshot,
    deletes: Vec<(ListenerKey, R)>,
) -> (Vec<(String, R)>, Vec<R>) {
    let mut doomed = Vec::new();
    let mut nothing = Vec::new();
    for (key, reply) in deletes {
        match snapshot.find(&key) {
            Ok(Some(id)) => doomed.push((id, reply)),
            Ok(None) | Err(_) => nothing.push(reply),
        }
    }
    (doomed, nothing)
}

/// The placed listeners whose settings on the CLB are not what their
/// configuration says (changed outside knit, or the configuration
/// changed), with the settings to put: a `ModifyListener` each.
pub(super) fn settings_to_put<'a>(
    snapshot: &Snapshot,
    placed: impl IntoIterator<Item = (&'a Desired, &'a str)>,
) -> Vec<(String, ListenerSettings)> {
    placed
        .into_iter()
        .filter(|(desired, id)| {
            snapshot
                .listeners
                .get(*id)
                .is_some_and(|live| !desired.settings.held_by(&live.settings))
        })
        .map(|(desired, id)| (id.to_owned(), (*desired.settings).clone()))
        .collect()
}

/// The target calls that make each placed listener forward to exactly its
/// wanted backend.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TargetChanges {
    pub(super) deregister: Vec<BatchTarget>,
    pub(super) register: Vec<BatchTarget>,
}

/// What to deregister (anything but the wanted backend, e.g. a pod's old IP
/// or a target added outside knit) and register, per placed listener ID.
pub(super) fn target_changes<'a>(
    snapshot: &Snapshot,
    placed: impl IntoIterator<Item = (&'a Desired, &'a str)>,
) -> TargetChanges {
    let mut changes = TargetChanges::default();
    for (desired, id) in placed {
        let wanted = desired
            .backend
            .as_ref()
            .map(|(ip, port)| Target::ip(ip.clone(), *port));
        let current = snapshot
            .listeners
            .get(id)
            .map(|l| l.targets.clone())
            .unwrap_or_default();
        for target in &current {
            if Some(target) != wanted.as_ref() {
                changes.deregister.push(BatchTarget {
                    listener_id: id.to_owned(),
                    target: target.clone(),
                });
            }
        }
        if let Some(wanted) = wanted
            && !current.contains(&wanted)
        {
            changes.register.push(BatchTarget {
                listener_id: id.to_owned(),
                target: wanted,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, id: Option<&str>, protocol: Protocol, port: u16) -> ListenerKey {
        ListenerKey {
            name: name.into(),
            listener_id: id.map(String::from),
            protocol,
            port,
        }
    }

    fn wants(listener: ListenerKey, backend: Option<(&str, u16)>) -> Desired {
        Desired {
            listener,
            backend: backend.map(|(ip, port)| (ip.into(), port)),
            settings: Arc::default(),
        }
    }

    fn lb(listeners: Held) -> Snapshot {
        Snapshot {
            found: true,
            listeners: listeners
                .iter()
                .map(|&(id, name, protocol, port, targets)| {
                    let existing = Existing {
                        protocol,
                        port,
                        name: name.into(),
                        targets: targets.to_vec(),
                        settings: ListenerSettings::default(),
                    };
                    (id.to_string(), existing)
                })
                .collect(),
        }
    }

    /// `(ID, name, protocol, port, targets)` per listener.
    type Held<'a> = &'a [(&'a str, &'a str, Protocol, u16, &'a [Target])];
    type EnsureCase<'a> = (
        &'a str,
        Held<'a>,
        Vec<ListenerKey>,
        Vec<(&'a str, &'a str)>,
        Vec<(Protocol, &'a str)>,
        Vec<(&'a str, &'a str)>,
    );
    type TargetCase<'a> = (
        &'a str,
        Vec<Target>,
        Option<(&'a str, u16)>,
        Vec<Target>,
        Vec<Target>,
    );

    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;

    #[test]
    fn ensures_are_placed_created_or_refused() {
        // (case, the LB, the requests in order, expected in place as
        // (name, ID), to create as (protocol, name), taken as (name, by)).
        let cases: [EnsureCase; 10] = [
            (
                "create on a free port",
                &[],
                vec![key("knit-a", None, TCP, 8000)],
                vec![],
                vec![(TCP, "knit-a")],
                vec![],
            ),
            (
                "adopt by name a listener created before a restart",
                &[("lbl-1", "knit-a", TCP, 8000, &[])],
                vec![key("knit-a", None, TCP, 8000)],
                vec![("knit-a", "lbl-1")],
                vec![],
                vec![],
            ),
            (
                "known by its ID, even renamed outside knit",
                &[("lbl-1", "renamed", TCP, 8000, &[])],
                vec![key("knit-a", Some("lbl-1"), TCP, 8000)],
                vec![("knit-a", "lbl-1")],
                vec![],
                vec![],
            ),
            (
                "a stale ID: adopted by name on its port",
                &[("lbl-2", "knit-a", TCP, 8000, &[])],
                vec![key("knit-a", Some("lbl-1"), TCP, 8000)],
                vec![("knit-a", "lbl-2")],
                vec![],
                vec![],
            ),
            (
                "port conflict with a foreign listener",
                &[("lbl-9", "theirs", TCP, 8000, &[])],
                vec![key("knit-a", None, TCP, 8000)],
                vec![],
                vec![],
                vec![("knit-a", "lbl-9 (theirs)")],
            ),
            (
                "port conflict with an unnamed listener",
                &[("lbl-9", "", TCP, 8000, &[])],
                vec![key("knit-a", None, TCP, 8000)],
                vec![],
                vec![],
                vec![("knit-a", "lbl-9")],
            ),
            (
                "our name on our port, but another protocol of its transport",
                &[("lbl-1", "knit-a", Protocol::Http, 8000, &[])],
                vec![key("knit-a", None, TCP, 8000)],
                vec![],
                vec![],
                vec![("knit-a", "lbl-1 (knit-a)")],
            ),
            (
                "an ID on another port is not ours; the port is free",
                &[("lbl-1", "knit-a", TCP, 8001, &[])],
                vec![key("knit-a", Some("lbl-1"), TCP, 8000)],
                vec![],
                vec![(TCP, "knit-a")],
                vec![],
            ),
            (
                "UDP and TCP do not share ports",
                &[("lbl-9", "theirs", TCP, 8000, &[])],
                vec![key("knit-a", None, UDP, 8000)],
                vec![],
                vec![(UDP, "knit-a")],
                vec![],
            ),
            (
                "two objects, one port, one round: the first gets it",
                &[],
                vec![
                    key("knit-a", None, TCP, 8000),
                    key("knit-b", None, Protocol::TcpSsl, 8000),
                ],
                vec![],
                vec![(TCP, "knit-a")],
                vec![("knit-b", "knit-a")],
            ),
        ];
        for (case, held, keys, placed, create, taken) in cases {
            let ensures = keys.into_iter().map(|k| (wants(k, None), ())).collect();
            let placement = place(&lb(held), ensures);
            let got: Vec<(&str, &str)> = placement
                .placed
                .iter()
                .map(|(d, id, _)| (d.listener.name.as_str(), id.as_str()))
                .collect();
            assert_eq!(got, placed, "{case}: in place");
            let got: Vec<(Protocol, &str)> = placement
                .to_create
                .iter()
                .flat_map(|((p, _), ds)| ds.iter().map(|(d, _)| (*p, d.listener.name.as_str())))
                .collect();
            assert_eq!(got, create, "{case}: to create");
            let got: Vec<(&str, &str)> = placement
                .taken
                .iter()
                .map(|(d, by, _)| (d.listener.name.as_str(), by.as_str()))
                .collect();
            assert_eq!(got, taken, "{case}: taken");
        }
    }

    #[test]
    fn deletes_touch_only_our_listeners() {
        // (case, the LB, the key to delete, the ID deleted).
        let cases: [(&str, Snapshot, ListenerKey, Option<&str>); 5] = [
            (
                "ours by ID",
                lb(&[("lbl-1", "knit-a", TCP, 8000, &[])]),
                key("knit-a", Some("lbl-1"), TCP, 8000),
                Some("lbl-1"),
            ),
            (
                "ours by name, its ID not yet recorded",
                lb(&[("lbl-1", "knit-a", TCP, 8000, &[])]),
                key("knit-a", None, TCP, 8000),
                Some("lbl-1"),
            ),
            (
                "gone already",
                lb(&[]),
                key("knit-a", Some("lbl-1"), TCP, 8000),
                None,
            ),
            (
                "a foreign listener on our port is never deleted",
                lb(&[("lbl-9", "theirs", TCP, 8000, &[])]),
                key("knit-a", None, TCP, 8000),
                None,
            ),
            (
                "nor after our listener was replaced by a foreign one",
                lb(&[("lbl-9", "theirs", TCP, 8000, &[])]),
                key("knit-a", Some("lbl-1"), TCP, 8000),
                None,
            ),
        ];
        for (case, snapshot, key, deleted) in cases {
            let (doomed, nothing) = doomed(&snapshot, vec![(key, ())]);
            let got: Vec<&str> = doomed.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(got, Vec::from_iter(deleted), "{case}: deleted");
            assert_eq!(nothing.len(), 1 - got.len(), "{case}: answered at once");
        }
    }

    /// A listener whose CLB settings differ from its configuration's gets
    /// them put; one without a configuration, or already holding it, not.
    #[test]
    fn settings_are_put_where_the_clb_differs() {
        let scheduler = |name: &str| ListenerSettings {
            scheduler: Some(name.into()),
            ..ListenerSettings::default()
        };
        let mut snapshot = lb(&[
            ("lbl-1", "a", Protocol::Tcp, 501, &[]),
            ("lbl-2", "b", Protocol::Tcp, 502, &[]),
            ("lbl-3", "c", Protocol::Tcp, 503, &[]),
        ]);
        for listener in snapshot.listeners.values_mut() {
            listener.settings = scheduler("WRR");
        }
        let desired = |name: &str, port: u16, settings: ListenerSettings| Desired {
            settings: Arc::new(settings),
            ..wants(key(name, None, Protocol::Tcp, port), None)
        };
        let placed = [
            (desired("a", 501, ListenerSettings::default()), "lbl-1"),
            (desired("b", 502, scheduler("WRR")), "lbl-2"),
            (desired("c", 503, scheduler("LEAST_CONN")), "lbl-3"),
        ];
        assert_eq!(
            settings_to_put(&snapshot, placed.iter().map(|(d, id)| (d, *id))),
            [("lbl-3".to_owned(), scheduler("LEAST_CONN"))]
        );
    }

    #[test]
    fn targets_follow_the_wanted_backend() {
        let pod = |ip: &str| Target::ip(ip, 9000);
        let batch = |target: Target| BatchTarget {
            listener_id: "lbl-1".into(),
            target,
        };
        // (case, targets on the listener, the wanted backend, expected
        // deregistered, expected registered).
        let cases: [TargetCase; 6] = [
            (
                "registered on a new listener",
                vec![],
                Some(("10.0.0.1", 9000)),
                vec![],
                vec![pod("10.0.0.1")],
            ),
            (
                "already in place: nothing to do",
                vec![pod("10.0.0.1")],
                Some(("10.0.0.1", 9000)),
                vec![],
                vec![],
            ),
            (
                "follows a changed pod IP",
                vec![pod("10.0.0.1")],
                Some(("10.0.0.2", 9000)),
                vec![pod("10.0.0.1")],
                vec![pod("10.0.0.2")],
            ),
            (
                "a target added outside knit is removed",
                vec![pod("10.0.0.1"), Target::instance("ins-1", 80)],
                Some(("10.0.0.1", 9000)),
                vec![Target::instance("ins-1", 80)],
                vec![],
            ),
            (
                "no backend: the listener is left without targets",
                vec![pod("10.0.0.1")],
                None,
                vec![pod("10.0.0.1")],
                vec![],
            ),
            (
                "the same IP on another port is another target",
                vec![Target::ip("10.0.0.1", 9001)],
                Some(("10.0.0.1", 9000)),
                vec![Target::ip("10.0.0.1", 9001)],
                vec![pod("10.0.0.1")],
            ),
        ];
        for (case, current, backend, deregister, register) in cases {
            let snapshot = lb(&[("lbl-1", "knit-a", TCP, 8000, current.as_slice())]);
            let desired = wants(key("knit-a", Some("lbl-1"), TCP, 8000), backend);
            let changes = target_changes(&snapshot, [(&desired, "lbl-1")]);
            let expected = TargetChanges {
                deregister: deregister.into_iter().map(batch).collect(),
                register: register.into_iter().map(batch).collect(),
            };
            assert_eq!(changes, expected, "{case}");
        }
    }
}
