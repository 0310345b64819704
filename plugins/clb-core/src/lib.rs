//! Which CLB listener each pod's port gets: the decision behind a
//! `DedicatedCLBService`, pure so that it runs natively in tests and inside
//! the `clb-allocator` plugin, and so the host can check any plugin's plan.
//!
//! Rules, in order:
//! 1. a listener bound to a pod that is gone (or going) is unbound: it stays
//!    on the CLB, `Available`, for reuse;
//! 2. a pod port without a listener gets, first, the listener its pod name
//!    had before (a replaced pod keeps its public address), then an
//!    `Available` listener whose cooldown is over, then a new listener on a
//!    CLB chosen by the spread policy, at the lowest free port of the range;
//! 3. listeners outside the service's range or CLBs are deleted;
//! 4. a pod port nothing can serve gets a message saying why.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(target_arch = "wasm32")]
pub mod component;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How new listeners are spread over the service's CLBs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Fill the CLBs in the order listed.
    InOrder,
    /// The CLB with the fewest of this service's listeners.
    Uniform,
    /// A CLB drawn from the seed, among those with room.
    Random,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub target_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub min_port: u16,
    pub max_port: u16,
    pub ports: Vec<PortSpec>,
    pub spread: Spread,
    /// Seconds an unbound listener rests before another pod may have it.
    pub cooldown_seconds: u64,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancer {
    pub id: String,
    /// How many listeners the CLB may hold in all.
    pub listener_quota: u32,
    /// Ports in use on the CLB by anything else (other services, by hand).
    pub foreign_ports: Vec<(Protocol, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// Being deleted, or without an IP yet: no listener is bound to it.
    pub serving: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The `DedicatedCLBListener` object.
    pub name: String,
    pub lb_id: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
    /// The pod it is bound to.
    pub pod: Option<String>,
    /// The pod it was bound to last, and how many seconds ago it was unbound.
    pub last_pod: Option<String>,
    pub unbound_for_seconds: Option<u64>,
}

/// Everything one decision looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub service: Service,
    pub lbs: Vec<LoadBalancer>,
    pub pods: Vec<Pod>,
    pub listeners: Vec<Listener>,
}

/// The spread and cooldown when the configuration names none: fill the CLBs
/// in order; a freed listener rests a minute before another pod gets it.
pub const DEFAULT_SPREAD: Spread = Spread::InOrder;
pub const DEFAULT_COOLDOWN_SECONDS: u64 = 60;

/// Reads the allocator's configuration: `spread` (`in-order`, `uniform`,
/// `random`) and `cooldown-seconds`; any other key is an error, so a typo
/// is not silently ignored.
pub fn parse_config(entries: &[(String, String)]) -> Result<(Spread, u64), String> {
    let mut spread = DEFAULT_SPREAD;
    let mut cooldown = DEFAULT_COOLDOWN_SECONDS;
    for (key, value) in entries {
        match key.as_str() {
            "spread" => {
                spread = match value.as_str() {
                    "in-order" => Spread::InOrder,
                    "uniform" => Spread::Uniform,
                    "random" => Spread::Random,
                    other => {
                        return Err(format!(
                            "spread {other:?}: expected in-order, uniform or random"
                        ));
                    }
                }
            }
            "cooldown-seconds" => {
                cooldown = value.parse().map_err(|_| {
                    format!("cooldown-seconds {value:?}: expected a whole number of seconds")
                })?
            }
            other => {
                return Err(format!(
                    "unknown configuration key {other:?}: expected spread or cooldown-seconds"
                ));
            }
        }
    }
    Ok((spread, cooldown))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<NewListener>,
    /// `(listener, pod)`.
    pub bind: Vec<(String, String)>,
    pub unbind: Vec<String>,
    pub delete: Vec<String>,
    /// `(pod, why)` for pod ports that got nothing.
    pub messages: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewListener {
    pub lb_id: String,
    pub port: u16,
    pub protocol: Protocol,
    pub pod: String,
    pub target_port: u16,
}

pub fn plan(service: &Service, lbs: &[LoadBalancer], pods: &[Pod], listeners: &[Listener]) -> Plan {
    let mut plan = Plan::default();
    let serving: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.serving)
        .map(|p| p.name.as_str())
        .collect();
    let in_service = |l: &Listener| {
        (service.min_port..=service.max_port).contains(&l.port)
            && lbs.iter().any(|lb| lb.id == l.lb_id)
            && service
                .ports
                .iter()
                .any(|p| p.protocol == l.protocol && p.target_port == l.target_port)
    };
    // The listeners that stay, with who holds them after this plan.
    let mut kept: Vec<(Listener, Option<String>)> = Vec::new();
    for listener in listeners {
        if !in_service(listener) {
            plan.delete.push(listener.name.clone());
            continue;
        }
        let holder = listener
            .pod
            .clone()
            .filter(|pod| serving.contains(pod.as_str()));
        let mut listener = listener.clone();
        if listener.pod.is_some() && holder.is_none() {
            plan.unbind.push(listener.name.clone());
            // Its rest starts now.
            listener.last_pod = listener.pod.take();
            listener.unbound_for_seconds = Some(0);
        }
        kept.push((listener, holder));
    }

    let mut taken: BTreeMap<&str, BTreeSet<(Protocol, u16)>> = lbs
        .iter()
        .map(|lb| (lb.id.as_str(), lb.foreign_ports.iter().copied().collect()))
        .collect();
    let mut count: BTreeMap<&str, u32> = lbs.iter().map(|lb| (lb.id.as_str(), 0)).collect();
    for (listener, _) in &kept {
        if let Some(ports) = taken.get_mut(listener.lb_id.as_str()) {
            ports.insert((listener.protocol, listener.port));
        }
        if let Some(n) = count.get_mut(listener.lb_id.as_str()) {
            *n += 1;
        }
    }
    let mut rng = SplitMix64(service.seed);

    for pod in pods.iter().filter(|p| p.serving) {
        for spec in &service.ports {
            let has = kept.iter().any(|(l, holder)| {
                holder.as_deref() == Some(pod.name.as_str())
                    && l.protocol == spec.protocol
                    && l.target_port == spec.target_port
            });
            if has {
                continue;
            }
            let free_to_bind = |l: &Listener, holder: &Option<String>| {
                holder.is_none() && l.protocol == spec.protocol && l.target_port == spec.target_port
            };
            let own = kept.iter().position(|(l, holder)| {
                free_to_bind(l, holder) && l.last_pod.as_deref() == Some(pod.name.as_str())
            });
            let rested = || {
                kept.iter()
                    .enumerate()
                    .filter(|(_, (l, holder))| {
                        free_to_bind(l, holder)
                            && l.unbound_for_seconds.unwrap_or(u64::MAX) >= service.cooldown_seconds
                    })
                    .min_by_key(|(_, (l, _))| (l.lb_id.clone(), l.port))
                    .map(|(i, _)| i)
            };
            if let Some(i) = own.or_else(rested) {
                plan.bind.push((kept[i].0.name.clone(), pod.name.clone()));
                kept[i].1 = Some(pod.name.clone());
                continue;
            }
            match place(service, lbs, &taken, &count, spec.protocol, &mut rng) {
                Some((lb_id, port)) => {
                    taken.get_mut(lb_id).unwrap().insert((spec.protocol, port));
                    *count.get_mut(lb_id).unwrap() += 1;
                    plan.create.push(NewListener {
                        lb_id: lb_id.to_string(),
                        port,
                        protocol: spec.protocol,
                        pod: pod.name.clone(),
                        target_port: spec.target_port,
                    });
                }
                None => plan.messages.push((
                    pod.name.clone(),
                    format!(
                        "no port available for {:?}/{}: ports {}-{} are taken or the listener quota is reached on every CLB ({})",
                        spec.protocol,
                        spec.target_port,
                        service.min_port,
                        service.max_port,
                        lbs.iter().map(|lb| lb.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        }
    }
    plan
}

/// A CLB with room and its lowest free port for `protocol`.
fn place<'a>(
    service: &Service,
    lbs: &'a [LoadBalancer],
    taken: &BTreeMap<&str, BTreeSet<(Protocol, u16)>>,
    count: &BTreeMap<&str, u32>,
    protocol: Protocol,
    rng: &mut SplitMix64,
) -> Option<(&'a str, u16)> {
    let candidates: Vec<(&'a str, u16)> = lbs
        .iter()
        .filter(|lb| {
            let held = count[lb.id.as_str()] + lb.foreign_ports.len() as u32;
            held < lb.listener_quota
        })
        .filter_map(|lb| {
            let taken = &taken[lb.id.as_str()];
            (service.min_port..=service.max_port)
                .find(|port| !taken.contains(&(protocol, *port)))
                .map(|port| (lb.id.as_str(), port))
        })
        .collect();
    match service.spread {
        Spread::InOrder => candidates.first().copied(),
        Spread::Uniform => candidates.iter().copied().min_by_key(|(id, _)| count[id]),
        Spread::Random if candidates.is_empty() => None,
        Spread::Random => Some(candidates[(rng.next() % candidates.len() as u64) as usize]),
    }
}

/// What the host checks of any plan before acting on it: new ports inside
/// the range, on the service's CLBs, unique per (CLB, protocol, port)
/// counting what exists, and binds and deletes naming known listeners.
pub fn check_plan(
    service: &Service,
    lbs: &[LoadBalancer],
    pods: &[Pod],
    listeners: &[Listener],
    plan: &Plan,
) -> Result<(), String> {
    let mut used: BTreeSet<(&str, Protocol, u16)> = BTreeSet::new();
    for lb in lbs {
        for &(protocol, port) in &lb.foreign_ports {
            used.insert((lb.id.as_str(), protocol, port));
        }
    }
    for listener in listeners.iter().filter(|l| !plan.delete.contains(&l.name)) {
        used.insert((listener.lb_id.as_str(), listener.protocol, listener.port));
    }
    for new in &plan.create {
        if !(service.min_port..=service.max_port).contains(&new.port) {
            return Err(format!(
                "port {} is outside {}-{}",
                new.port, service.min_port, service.max_port
            ));
        }
        if !lbs.iter().any(|lb| lb.id == new.lb_id) {
            return Err(format!("{} is not one of the service's CLBs", new.lb_id));
        }
        if !used.insert((new.lb_id.as_str(), new.protocol, new.port)) {
            return Err(format!(
                "{:?} port {} on {} is already in use",
                new.protocol, new.port, new.lb_id
            ));
        }
        if !pods.iter().any(|p| p.serving && p.name == new.pod) {
            return Err(format!("{} is not a serving pod", new.pod));
        }
    }
    let mut bound = BTreeSet::new();
    for (listener, pod) in &plan.bind {
        if !pods.iter().any(|p| p.serving && &p.name == pod) {
            return Err(format!("{pod} is not a serving pod"));
        }
        if !bound.insert(listener) {
            return Err(format!("{listener} is bound twice"));
        }
    }
    let known = |name: &String| listeners.iter().any(|l| &l.name == name);
    for name in plan
        .unbind
        .iter()
        .chain(&plan.delete)
        .chain(plan.bind.iter().map(|(l, _)| l))
    {
        if !known(name) {
            return Err(format!("{name} is not a listener of the service"));
        }
    }
    Ok(())
}

/// The same small generator the IPAM strategies use: a seed replays.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spread: Spread) -> Service {
        Service {
            min_port: 501,
            max_port: 503,
            ports: vec![PortSpec {
                protocol: Protocol::Tcp,
                target_port: 9000,
            }],
            spread,
            cooldown_seconds: 60,
            seed: 7,
        }
    }

    fn lb(id: &str, quota: u32) -> LoadBalancer {
        LoadBalancer {
            id: id.into(),
            listener_quota: quota,
            foreign_ports: vec![],
        }
    }

    fn pod(name: &str) -> Pod {
        Pod {
            name: name.into(),
            serving: true,
        }
    }

    fn listener(name: &str, lb: &str, port: u16, pod: Option<&str>) -> Listener {
        Listener {
            name: name.into(),
            lb_id: lb.into(),
            port,
            protocol: Protocol::Tcp,
            target_port: 9000,
            pod: pod.map(str::to_string),
            last_pod: None,
            unbound_for_seconds: None,
        }
    }

    fn created(plan: &Plan) -> Vec<(String, u16, String)> {
        plan.create
            .iter()
            .map(|c| (c.lb_id.clone(), c.port, c.pod.clone()))
            .collect()
    }

    #[test]
    fn in_order_fills_the_first_clb_then_the_next() {
        let lbs = [lb("lb-a", 50), lb("lb-b", 50)];
        let pods: Vec<Pod> = (0..5).map(|i| pod(&format!("gs-{i}"))).collect();
        let plan = plan(&service(Spread::InOrder), &lbs, &pods, &[]);
        assert_eq!(
            created(&plan),
            [
                ("lb-a".into(), 501, "gs-0".into()),
                ("lb-a".into(), 502, "gs-1".into()),
                ("lb-a".into(), 503, "gs-2".into()),
                ("lb-b".into(), 501, "gs-3".into()),
                ("lb-b".into(), 502, "gs-4".into()),
            ]
        );
        assert!(check_plan(&service(Spread::InOrder), &lbs, &pods, &[], &plan).is_ok());
    }

    #[test]
    fn uniform_alternates_and_random_replays() {
        let lbs = [lb("lb-a", 50), lb("lb-b", 50)];
        let pods: Vec<Pod> = (0..4).map(|i| pod(&format!("gs-{i}"))).collect();
        let uniform = plan(&service(Spread::Uniform), &lbs, &pods, &[]);
        let per_lb: Vec<&str> = uniform.create.iter().map(|c| c.lb_id.as_str()).collect();
        assert_eq!(per_lb, ["lb-a", "lb-b", "lb-a", "lb-b"]);
        let random = plan(&service(Spread::Random), &lbs, &pods, &[]);
        assert_eq!(random, plan(&service(Spread::Random), &lbs, &pods, &[]));
        assert!(check_plan(&service(Spread::Random), &lbs, &pods, &[], &random).is_ok());
    }

    #[test]
    fn exhaustion_and_quota_give_a_message_per_pod() {
        let mut full = lb("lb-a", 2);
        full.foreign_ports = vec![(Protocol::Tcp, 501)];
        let pods = [pod("gs-0"), pod("gs-1")];
        let plan = plan(&service(Spread::InOrder), &[full], &pods, &[]);
        // Quota 2 with one foreign listener: one new listener fits, at 502.
        assert_eq!(created(&plan), [("lb-a".into(), 502, "gs-0".into())]);
        assert_eq!(plan.messages.len(), 1);
        assert_eq!(plan.messages[0].0, "gs-1");
        assert!(plan.messages[0].1.contains("no port available"));
    }

    #[test]
    fn a_gone_pod_frees_its_listener_which_rests_then_serves_again() {
        let lbs = [lb("lb-a", 50)];
        let bound = listener("l-0", "lb-a", 501, Some("gs-0"));
        // gs-0 is gone: unbind; gs-1 must not get it (no rest yet): new port.
        let plan_a = plan(&service(Spread::InOrder), &lbs, &[pod("gs-1")], &[bound]);
        assert_eq!(plan_a.unbind, ["l-0"]);
        assert_eq!(created(&plan_a), [("lb-a".into(), 502, "gs-1".into())]);
        // Unbound 10 s ago: still resting. 61 s: reused.
        let mut resting = listener("l-0", "lb-a", 501, None);
        resting.last_pod = Some("gs-0".into());
        resting.unbound_for_seconds = Some(10);
        let plan_b = plan(
            &service(Spread::InOrder),
            &lbs,
            &[pod("gs-2")],
            &[resting.clone()],
        );
        assert!(plan_b.bind.is_empty());
        resting.unbound_for_seconds = Some(61);
        let plan_c = plan(
            &service(Spread::InOrder),
            &lbs,
            &[pod("gs-2")],
            &[resting.clone()],
        );
        assert_eq!(plan_c.bind, [("l-0".into(), "gs-2".into())]);
        assert!(plan_c.create.is_empty());
        // A replaced pod of the same name takes its own listener back at once.
        resting.unbound_for_seconds = Some(1);
        let plan_d = plan(&service(Spread::InOrder), &lbs, &[pod("gs-0")], &[resting]);
        assert_eq!(plan_d.bind, [("l-0".into(), "gs-0".into())]);
    }

    #[test]
    fn listeners_outside_the_service_are_deleted() {
        let lbs = [lb("lb-a", 50)];
        let listeners = [
            listener("out-of-range", "lb-a", 999, None),
            listener("other-lb", "lb-z", 501, None),
            listener("fine", "lb-a", 501, Some("gs-0")),
        ];
        let plan = plan(&service(Spread::InOrder), &lbs, &[pod("gs-0")], &listeners);
        assert_eq!(plan.delete, ["out-of-range", "other-lb"]);
        assert!(plan.create.is_empty() && plan.bind.is_empty());
    }

    #[test]
    fn config_is_parsed_strictly() {
        let entries = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            parse_config(&[]),
            Ok((DEFAULT_SPREAD, DEFAULT_COOLDOWN_SECONDS))
        );
        assert_eq!(
            parse_config(&entries(&[
                ("spread", "uniform"),
                ("cooldown-seconds", "5")
            ])),
            Ok((Spread::Uniform, 5))
        );
        assert!(
            parse_config(&entries(&[("spread", "roundrobin")]))
                .unwrap_err()
                .contains("in-order")
        );
        assert!(parse_config(&entries(&[("cooldown-seconds", "-1")])).is_err());
        assert!(
            parse_config(&entries(&[("sprad", "random")]))
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn the_host_refuses_bad_plans() {
        let s = service(Spread::InOrder);
        let lbs = [lb("lb-a", 50)];
        let pods = [pod("gs-0")];
        let existing = [listener("l-0", "lb-a", 501, None)];
        let new = |lb: &str, port: u16| Plan {
            create: vec![NewListener {
                lb_id: lb.into(),
                port,
                protocol: Protocol::Tcp,
                pod: "gs-0".into(),
                target_port: 9000,
            }],
            ..Plan::default()
        };
        let check = |plan: &Plan| check_plan(&s, &lbs, &pods, &existing, plan).unwrap_err();
        assert!(check(&new("lb-a", 600)).contains("outside 501-503"));
        assert!(check(&new("lb-q", 502)).contains("not one of the service's CLBs"));
        assert!(check(&new("lb-a", 501)).contains("already in use"));
        let unknown = Plan {
            delete: vec!["nope".into()],
            ..Plan::default()
        };
        assert!(check(&unknown).contains("not a listener"));
        let twice = Plan {
            bind: vec![("l-0".into(), "gs-0".into()), ("l-0".into(), "gs-0".into())],
            ..Plan::default()
        };
        assert!(check(&twice).contains("bound twice"));
    }
}
