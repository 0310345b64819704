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
//! 3. listeners outside the service's range, CLBs or ports are deleted
//!    (the others are [`in_service`]: never deleted);
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

    // Indexes over the listeners that stay, so the plan is near-linear in
    // pods and listeners: who holds what, and what is free for whom.
    let mut kept: Vec<Listener> = Vec::new();
    let mut held: BTreeSet<(&str, Protocol, u16)> = BTreeSet::new();
    let mut sorted: Vec<&Listener> = listeners.iter().collect();
    sorted.sort_by(|a, b| (&a.lb_id, a.port, &a.name).cmp(&(&b.lb_id, b.port, &b.name)));
    for listener in sorted {
        if !in_service(service, lbs, listener) {
            plan.delete.push(listener.name.clone());
            continue;
        }
        let mut listener = listener.clone();
        let holder = listener
            .pod
            .as_deref()
            .filter(|pod| serving.contains(pod))
            .and_then(|pod| serving.get(pod).copied());
        let keeps =
            holder.is_some_and(|pod| held.insert((pod, listener.protocol, listener.target_port)));
        // A pod gone, or a second listener for one pod port: unbind. Its
        // rest starts now.
        if listener.pod.is_some() && !keeps {
            plan.unbind.push(listener.name.clone());
            listener.last_pod = listener.pod.take();
            listener.unbound_for_seconds = Some(0);
        }
        kept.push(listener);
    }

    let mut taken: BTreeMap<&str, BTreeSet<(Protocol, u16)>> = lbs
        .iter()
        .map(|lb| (lb.id.as_str(), lb.foreign_ports.iter().copied().collect()))
        .collect();
    let mut count: BTreeMap<&str, u32> = lbs.iter().map(|lb| (lb.id.as_str(), 0)).collect();
    // Free listeners: by the pod they served last, and the rested ones in
    // (CLB, port) order, each by the pod port they serve.
    let mut own: BTreeMap<(&str, Protocol, u16), Vec<usize>> = BTreeMap::new();
    let mut rested: BTreeMap<(Protocol, u16), BTreeSet<FreeListener>> = BTreeMap::new();
    for (i, listener) in kept.iter().enumerate() {
        if let Some(ports) = taken.get_mut(listener.lb_id.as_str()) {
            ports.insert((listener.protocol, listener.port));
        }
        if let Some(n) = count.get_mut(listener.lb_id.as_str()) {
            *n += 1;
        }
        if listener.pod.is_some() {
            continue;
        }
        let port = (listener.protocol, listener.target_port);
        if let Some(last) = &listener.last_pod {
            own.entry((last.as_str(), port.0, port.1))
                .or_default()
                .push(i);
        }
        if listener.unbound_for_seconds.unwrap_or(u64::MAX) >= service.cooldown_seconds {
            rested
                .entry(port)
                .or_default()
                .insert((listener.lb_id.as_str(), listener.port, i));
        }
    }
    let mut bound = vec![false; kept.len()];
    let mut next_port: BTreeMap<(&str, Protocol), u16> = BTreeMap::new();
    let mut rng = SplitMix64(service.seed);

    for pod in pods.iter().filter(|p| p.serving) {
        for spec in &service.ports {
            if held.contains(&(pod.name.as_str(), spec.protocol, spec.target_port)) {
                continue;
            }
            let port = (spec.protocol, spec.target_port);
            let mine = own
                .get(&(pod.name.as_str(), port.0, port.1))
                .and_then(|candidates| candidates.iter().copied().find(|&i| !bound[i]));
            let reuse = mine.or_else(|| {
                let free = rested.get_mut(&port)?;
                while let Some((_, _, i)) = free.pop_first() {
                    if !bound[i] {
                        return Some(i);
                    }
                }
                None
            });
            if let Some(i) = reuse {
                bound[i] = true;
                plan.bind.push((kept[i].name.clone(), pod.name.clone()));
                continue;
            }
            match place(service, lbs, &taken, &count, &mut next_port, spec.protocol, &mut rng) {
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

/// A free listener in reuse order: CLB, port, then its index in `kept`.
type FreeListener<'a> = (&'a str, u16, usize);

/// A CLB with room and its lowest free port for `protocol`. Ports are only
/// taken during a plan, so each CLB's search resumes where it stopped.
fn place<'a>(
    service: &Service,
    lbs: &'a [LoadBalancer],
    taken: &BTreeMap<&str, BTreeSet<(Protocol, u16)>>,
    count: &BTreeMap<&str, u32>,
    next_port: &mut BTreeMap<(&'a str, Protocol), u16>,
    protocol: Protocol,
    rng: &mut SplitMix64,
) -> Option<(&'a str, u16)> {
    let mut candidates: Vec<(&'a str, u16)> = Vec::new();
    for lb in lbs {
        let id = lb.id.as_str();
        let held = count[id] + lb.foreign_ports.len() as u32;
        if held >= lb.listener_quota {
            continue;
        }
        let from = next_port.entry((id, protocol)).or_insert(service.min_port);
        let taken = &taken[id];
        match (*from..=service.max_port).find(|port| !taken.contains(&(protocol, *port))) {
            Some(port) => {
                *from = port;
                candidates.push((id, port));
            }
            None => *from = service.max_port.saturating_add(1).max(service.min_port),
        }
    }
    match service.spread {
        Spread::InOrder => candidates.first().copied(),
        Spread::Uniform => candidates.iter().copied().min_by_key(|(id, _)| count[id]),
        Spread::Random if candidates.is_empty() => None,
        Spread::Random => Some(candidates[(rng.next() % candidates.len() as u64) as usize]),
    }
}

/// Whether the service keeps `listener`: inside its range, on one of its
/// CLBs, for one of its ports. Only the others are deleted (rule 3); one
/// the service keeps serves its pod, or rests for the next one.
pub fn in_service(service: &Service, lbs: &[LoadBalancer], listener: &Listener) -> bool {
    (service.min_port..=service.max_port).contains(&listener.port)
        && lbs.iter().any(|lb| lb.id == listener.lb_id)
        && service
            .ports
            .iter()
            .any(|p| p.protocol == listener.protocol && p.target_port == listener.target_port)
}

/// What the host checks of any plan before acting on it:
/// - new listeners: inside the range, on the service's CLBs, for one of its
///   ports, unique per (CLB, protocol, port) counting what exists;
/// - binds, unbinds and deletes name the service's listeners; a bind takes
///   a listener that is free (or freed by this plan) for its pod port;
/// - only listeners the service does not keep ([`in_service`]) are
///   deleted, and a listener is unbound from a serving pod only when the
///   pod keeps another one for that pod port: what serves stays;
/// - every pod named is serving, and each serving pod ends with exactly one
///   listener per pod port — or, for a pod port left without one, the plan
///   has a message for the pod and no CLB has both room under its quota and
///   a free port of the range for it.
///
/// Strings the plugin wrote are quoted with `{:?}` in refusals, so none can
/// forge a line of a log or an Event.
pub fn check_plan(
    service: &Service,
    lbs: &[LoadBalancer],
    pods: &[Pod],
    listeners: &[Listener],
    plan: &Plan,
) -> Result<(), String> {
    let by_name: BTreeMap<&str, &Listener> =
        listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    for name in plan
        .unbind
        .iter()
        .chain(&plan.delete)
        .chain(plan.bind.iter().map(|(l, _)| l))
    {
        if !by_name.contains_key(name.as_str()) {
            return Err(format!("{name:?} is not a listener of the service"));
        }
    }
    for name in &plan.unbind {
        if by_name[name.as_str()].pod.is_none() {
            return Err(format!("{name:?} is unbound already"));
        }
    }
    // A listener the service keeps may be serving a pod right now, or be
    // the address a replaced pod comes back to: deleting it is never the
    // allocator's to decide.
    for name in &plan.delete {
        let listener = by_name[name.as_str()];
        if in_service(service, lbs, listener) {
            return Err(format!(
                "deletes {name:?} ({:?} port {} for {:?}/{}), which the service keeps: only listeners outside its range {}-{}, its CLBs or its ports may be deleted",
                listener.lb_id,
                listener.port,
                listener.protocol,
                listener.target_port,
                service.min_port,
                service.max_port
            ));
        }
    }
    let serving_pods: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.serving)
        .map(|p| p.name.as_str())
        .collect();
    let serving = |pod: &str| serving_pods.contains(pod);
    let ports: BTreeSet<(Protocol, u16)> = service
        .ports
        .iter()
        .map(|p| (p.protocol, p.target_port))
        .collect();
    let deleted: BTreeSet<&str> = plan.delete.iter().map(String::as_str).collect();
    let dropped: BTreeSet<&str> = plan
        .unbind
        .iter()
        .chain(&plan.delete)
        .map(String::as_str)
        .collect();

    // Who holds which pod port once the plan is applied.
    let mut holds: BTreeSet<(&str, Protocol, u16)> = BTreeSet::new();
    for listener in listeners
        .iter()
        .filter(|l| !dropped.contains(l.name.as_str()))
    {
        if let Some(pod) = &listener.pod {
            hold(
                &mut holds,
                pod,
                listener.protocol,
                listener.target_port,
                Some(&listener.name),
            )?;
        }
    }
    // A serving pod loses a listener only when it has two for one pod port:
    // unbinding its one listener takes its public address away.
    for name in &plan.unbind {
        let listener = by_name[name.as_str()];
        let Some(pod) = listener.pod.as_deref() else {
            continue;
        };
        if serving(pod)
            && in_service(service, lbs, listener)
            && !holds.contains(&(pod, listener.protocol, listener.target_port))
        {
            return Err(format!(
                "unbinds {name:?} from {pod:?}, which is serving and has no other listener for {:?}/{}",
                listener.protocol, listener.target_port
            ));
        }
    }
    let mut bound = BTreeSet::new();
    for (name, pod) in &plan.bind {
        let listener = by_name[name.as_str()];
        if !serving(pod) {
            return Err(format!("{pod:?} is not a serving pod"));
        }
        if !bound.insert(name) {
            return Err(format!("{name:?} is bound twice"));
        }
        if listener.pod.is_some() && !dropped.contains(name.as_str()) {
            return Err(format!("{name:?} is bound to another pod"));
        }
        if deleted.contains(name.as_str()) {
            return Err(format!("{name:?} is both bound and deleted"));
        }
        hold(
            &mut holds,
            pod,
            listener.protocol,
            listener.target_port,
            Some(name),
        )?;
    }

    let mut used: BTreeSet<(&str, Protocol, u16)> = BTreeSet::new();
    for lb in lbs {
        for &(protocol, port) in &lb.foreign_ports {
            used.insert((lb.id.as_str(), protocol, port));
        }
    }
    for listener in listeners
        .iter()
        .filter(|l| !deleted.contains(l.name.as_str()))
    {
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
            return Err(format!("{:?} is not one of the service's CLBs", new.lb_id));
        }
        if !ports.contains(&(new.protocol, new.target_port)) {
            return Err(format!(
                "{:?}/{} is not one of the service's ports",
                new.protocol, new.target_port
            ));
        }
        if !used.insert((new.lb_id.as_str(), new.protocol, new.port)) {
            return Err(format!(
                "{:?} port {} on {:?} is already in use",
                new.protocol, new.port, new.lb_id
            ));
        }
        if !serving(&new.pod) {
            return Err(format!("{:?} is not a serving pod", new.pod));
        }
        hold(&mut holds, &new.pod, new.protocol, new.target_port, None)?;
    }

    // Every serving pod port ends with a listener; one left without says
    // so (rule 4), and only when no CLB had room for it: a plan that
    // silently drops a pod, or calls the CLBs full while a port is free,
    // leaves a serving pod without its address.
    let told: BTreeSet<&str> = plan.messages.iter().map(|(pod, _)| pod.as_str()).collect();
    let mut free: BTreeMap<Protocol, Option<(&str, u16)>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.serving) {
        for spec in &service.ports {
            if holds.contains(&(pod.name.as_str(), spec.protocol, spec.target_port)) {
                continue;
            }
            if !told.contains(pod.name.as_str()) {
                return Err(format!(
                    "leaves {:?} without a listener for {:?}/{} and gives no message for it",
                    pod.name, spec.protocol, spec.target_port
                ));
            }
            let slot = *free.entry(spec.protocol).or_insert_with(|| {
                free_slot(
                    service,
                    lbs,
                    listeners,
                    &deleted,
                    plan,
                    &used,
                    spec.protocol,
                )
            });
            if let Some((lb, port)) = slot {
                return Err(format!(
                    "leaves {:?} without a listener for {:?}/{} though port {port} on {lb:?} is free and under its quota",
                    pod.name, spec.protocol, spec.target_port
                ));
            }
        }
    }
    Ok(())
}

/// Records that `pod` holds a listener for a pod port once the plan is
/// applied; a second one is refused. `by` names the listener, `None` for a
/// new one.
fn hold<'a>(
    holds: &mut BTreeSet<(&'a str, Protocol, u16)>,
    pod: &'a str,
    protocol: Protocol,
    target_port: u16,
    by: Option<&str>,
) -> Result<(), String> {
    if holds.insert((pod, protocol, target_port)) {
        return Ok(());
    }
    let by = match by {
        Some(name) => format!("{name:?}"),
        None => "a new listener".into(),
    };
    Err(format!(
        "{pod:?} would hold two listeners for {protocol:?}/{target_port} ({by})"
    ))
}

/// The first CLB, once the plan is applied, with room under its quota and a
/// free port of the range for `protocol`, and that port: what the built-in
/// [`place`] would have given a waiting pod port.
fn free_slot<'a>(
    service: &Service,
    lbs: &'a [LoadBalancer],
    listeners: &[Listener],
    deleted: &BTreeSet<&str>,
    plan: &Plan,
    used: &BTreeSet<(&str, Protocol, u16)>,
    protocol: Protocol,
) -> Option<(&'a str, u16)> {
    if service.min_port > service.max_port {
        return None;
    }
    lbs.iter().find_map(|lb| {
        let id = lb.id.as_str();
        let kept = listeners
            .iter()
            .filter(|l| l.lb_id == id && !deleted.contains(l.name.as_str()))
            .count();
        let created = plan.create.iter().filter(|c| c.lb_id == id).count();
        let held = (kept + created + lb.foreign_ports.len()) as u64;
        if held >= u64::from(lb.listener_quota) {
            return None;
        }
        // The lowest port of the range not in use: walk the used ones in
        // order until one is skipped.
        let mut next = u32::from(service.min_port);
        for &(_, _, port) in
            used.range((id, protocol, service.min_port)..=(id, protocol, service.max_port))
        {
            if u32::from(port) > next {
                break;
            }
            next = u32::from(port) + 1;
        }
        (next <= u32::from(service.max_port)).then_some((id, next as u16))
    })
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
    use rstest::rstest;

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
        let wrong_port = Plan {
            create: vec![NewListener {
                lb_id: "lb-a".into(),
                port: 502,
                protocol: Protocol::Udp,
                pod: "gs-0".into(),
                target_port: 9000,
            }],
            ..Plan::default()
        };
        assert!(check(&wrong_port).contains("not one of the service's ports"));
        let two_for_one = Plan {
            bind: vec![("l-0".into(), "gs-0".into())],
            ..new("lb-a", 502)
        };
        assert!(check(&two_for_one).contains("two listeners"));
        let bound = [listener("l-0", "lb-a", 501, Some("gs-0"))];
        let steal = Plan {
            bind: vec![("l-0".into(), "gs-0".into())],
            ..Plan::default()
        };
        assert!(
            check_plan(&s, &lbs, &pods, &bound, &steal)
                .unwrap_err()
                .contains("another pod")
        );
        let unbind_free = Plan {
            unbind: vec!["l-0".into()],
            ..Plan::default()
        };
        assert!(check(&unbind_free).contains("unbound already"));
    }

    #[test]
    fn a_second_listener_for_one_pod_port_is_unbound() {
        let lbs = [lb("lb-a", 50)];
        let listeners = [
            listener("l-2", "lb-a", 502, Some("gs-0")),
            listener("l-1", "lb-a", 501, Some("gs-0")),
        ];
        let plan = plan(&service(Spread::InOrder), &lbs, &[pod("gs-0")], &listeners);
        // The lower (CLB, port) stays.
        assert_eq!(plan.unbind, ["l-2"]);
        assert!(plan.create.is_empty() && plan.bind.is_empty());
        assert!(
            check_plan(
                &service(Spread::InOrder),
                &lbs,
                &[pod("gs-0")],
                &listeners,
                &plan
            )
            .is_ok()
        );
    }

    /// Whatever the allocator decides, at a scale where quotas run out,
    /// the host's check accepts.
    #[rstest]
    #[case::in_order(Spread::InOrder)]
    #[case::uniform(Spread::Uniform)]
    #[case::random(Spread::Random)]
    fn plans_pass_their_own_check_at_scale(#[case] spread: Spread) {
        let mut s = service(spread);
        s.max_port = 520;
        s.ports.push(PortSpec {
            protocol: Protocol::Udp,
            target_port: 9001,
        });
        let lbs = [lb("lb-a", 12), lb("lb-b", 30)];
        let pods: Vec<Pod> = (0..25).map(|i| pod(&format!("gs-{i}"))).collect();
        let mut listeners = Vec::new();
        for i in 0..10u16 {
            let mut l = listener(
                &format!("old-{i}"),
                "lb-b",
                501 + i,
                Some(&format!("gone-{i}")),
            );
            l.unbound_for_seconds = None;
            listeners.push(l);
        }
        let plan = plan(&s, &lbs, &pods, &listeners);
        assert_eq!(plan.unbind.len(), 10);
        check_plan(&s, &lbs, &pods, &listeners, &plan).unwrap();
        // Quotas 12 + 30 = 42 listeners; 10 exist: 32 new at most.
        assert_eq!(plan.create.len(), 32);
        assert_eq!(plan.messages.len(), 50 - 32);
    }

    /// One decision for the table tests below: the service is
    /// `service(InOrder)` (TCP/9000 on ports 501-503).
    struct Case {
        lbs: Vec<LoadBalancer>,
        pods: Vec<Pod>,
        listeners: Vec<Listener>,
        plan: Plan,
    }

    /// gs-0 and gs-1 serve on lb-a's 501 and 502; gs-2 is new, and 503 is
    /// free for it.
    fn serving() -> Case {
        Case {
            lbs: vec![lb("lb-a", 50)],
            pods: vec![pod("gs-0"), pod("gs-1"), pod("gs-2")],
            listeners: vec![
                listener("l-0", "lb-a", 501, Some("gs-0")),
                listener("l-1", "lb-a", 502, Some("gs-1")),
            ],
            plan: Plan::default(),
        }
    }

    fn create(lb: &str, port: u16, pod: &str) -> NewListener {
        NewListener {
            lb_id: lb.into(),
            port,
            protocol: Protocol::Tcp,
            pod: pod.into(),
            target_port: 9000,
        }
    }

    fn no_port(pod: &str) -> (String, String) {
        (pod.into(), "no port available".into())
    }

    fn check_case(case: &Case) -> Result<(), String> {
        check_plan(
            &service(Spread::InOrder),
            &case.lbs,
            &case.pods,
            &case.listeners,
            &case.plan,
        )
    }

    /// Plans that take away what serves, each refused with its reason.
    #[test]
    fn the_host_refuses_plans_that_destroy_what_serves() {
        let cases: Vec<(&str, Case, &str)> = vec![
            (
                "delete_serving",
                Case {
                    plan: Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        delete: vec!["l-0".into()],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "deletes \"l-0\" (\"lb-a\" port 501 for Tcp/9000), which the service keeps: only listeners outside its range 501-503, its CLBs or its ports may be deleted",
            ),
            (
                "delete_a_resting_listener_for_its_port",
                {
                    let mut case = serving();
                    let mut resting = listener("l-r", "lb-a", 503, None);
                    resting.last_pod = Some("gs-8".into());
                    resting.unbound_for_seconds = Some(5);
                    case.listeners.push(resting);
                    case.plan = Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        delete: vec!["l-r".into()],
                        ..Plan::default()
                    };
                    case
                },
                "deletes \"l-r\" (\"lb-a\" port 503 for Tcp/9000), which the service keeps: only listeners outside its range 501-503, its CLBs or its ports may be deleted",
            ),
            (
                "unbind_serving",
                Case {
                    plan: Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        unbind: vec!["l-0".into()],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "unbinds \"l-0\" from \"gs-0\", which is serving and has no other listener for Tcp/9000",
            ),
            (
                "move_a_listener_to_another_pod",
                Case {
                    plan: Plan {
                        bind: vec![("l-0".into(), "gs-2".into())],
                        unbind: vec!["l-0".into()],
                        messages: vec![no_port("gs-0")],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "unbinds \"l-0\" from \"gs-0\", which is serving and has no other listener for Tcp/9000",
            ),
            (
                "unbind_both_of_a_pods_listeners",
                Case {
                    pods: vec![pod("gs-0")],
                    listeners: vec![
                        listener("l-0", "lb-a", 501, Some("gs-0")),
                        listener("l-0b", "lb-a", 502, Some("gs-0")),
                    ],
                    plan: Plan {
                        unbind: vec!["l-0".into(), "l-0b".into()],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "unbinds \"l-0\" from \"gs-0\", which is serving and has no other listener for Tcp/9000",
            ),
            (
                "drop_pod_port",
                serving(),
                "leaves \"gs-2\" without a listener for Tcp/9000 and gives no message for it",
            ),
            (
                "drop_pod_port_by_deleting_its_listener",
                {
                    let mut case = serving();
                    case.listeners
                        .push(listener("l-x", "lb-a", 999, Some("gs-2")));
                    case.plan.delete = vec!["l-x".into()];
                    case
                },
                "leaves \"gs-2\" without a listener for Tcp/9000 and gives no message for it",
            ),
            (
                "drop_one_of_two_pods_with_a_message_for_the_other",
                Case {
                    pods: vec![pod("gs-0"), pod("gs-1"), pod("gs-2"), pod("gs-3")],
                    lbs: vec![lb("lb-a", 50), lb("lb-b", 50)],
                    plan: Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        messages: vec![no_port("gs-2")],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "leaves \"gs-3\" without a listener for Tcp/9000 and gives no message for it",
            ),
            (
                "claim_exhausted_while_a_port_is_free",
                Case {
                    plan: Plan {
                        messages: vec![no_port("gs-2")],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "leaves \"gs-2\" without a listener for Tcp/9000 though port 503 on \"lb-a\" is free and under its quota",
            ),
            (
                "claim_exhausted_while_another_clb_has_room",
                Case {
                    pods: vec![pod("gs-0"), pod("gs-1"), pod("gs-2"), pod("gs-3")],
                    lbs: vec![lb("lb-a", 50), lb("lb-b", 50)],
                    plan: Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        messages: vec![no_port("gs-3")],
                        ..Plan::default()
                    },
                    ..serving()
                },
                "leaves \"gs-3\" without a listener for Tcp/9000 though port 501 on \"lb-b\" is free and under its quota",
            ),
            (
                "claim_exhausted_after_deleting_what_filled_the_quota",
                {
                    let mut case = serving();
                    case.lbs = vec![lb("lb-a", 3)];
                    case.listeners.push(listener("l-x", "lb-a", 999, None));
                    case.plan = Plan {
                        delete: vec!["l-x".into()],
                        messages: vec![no_port("gs-2")],
                        ..Plan::default()
                    };
                    case
                },
                "leaves \"gs-2\" without a listener for Tcp/9000 though port 503 on \"lb-a\" is free and under its quota",
            ),
        ];
        let wrong: Vec<String> = cases
            .into_iter()
            .filter_map(|(name, case, reason)| {
                let got = check_case(&case);
                (got != Err(reason.to_string())).then(|| format!("{name}: {got:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Plans that change what serves only as the WIT allows, all accepted.
    #[test]
    fn the_host_accepts_what_the_wit_allows() {
        let mut full = lb("lb-a", 50);
        full.foreign_ports = vec![(Protocol::Tcp, 503)];
        let mut quota_reached = lb("lb-a", 3);
        quota_reached.foreign_ports = vec![(Protocol::Udp, 503)];
        let cases: Vec<(&str, Case)> = vec![
            (
                "new_pod_gets_the_free_port",
                Case {
                    plan: Plan {
                        create: vec![create("lb-a", 503, "gs-2")],
                        ..Plan::default()
                    },
                    ..serving()
                },
            ),
            (
                "message_when_the_range_is_taken",
                Case {
                    lbs: vec![full],
                    plan: Plan {
                        messages: vec![no_port("gs-2")],
                        ..Plan::default()
                    },
                    ..serving()
                },
            ),
            (
                "message_when_the_quota_is_reached",
                Case {
                    lbs: vec![quota_reached],
                    plan: Plan {
                        messages: vec![no_port("gs-2")],
                        ..Plan::default()
                    },
                    ..serving()
                },
            ),
            ("message_while_a_listener_rests", {
                let mut case = serving();
                let mut resting = listener("l-r", "lb-a", 503, None);
                resting.last_pod = Some("gs-8".into());
                resting.unbound_for_seconds = Some(5);
                case.listeners.push(resting);
                case.plan.messages = vec![no_port("gs-2")];
                case
            }),
            (
                "delete_out_of_range_though_serving_and_replace_it",
                Case {
                    listeners: vec![
                        listener("l-0", "lb-a", 999, Some("gs-0")),
                        listener("l-1", "lb-a", 502, Some("gs-1")),
                    ],
                    plan: Plan {
                        create: vec![create("lb-a", 501, "gs-0"), create("lb-a", 503, "gs-2")],
                        delete: vec!["l-0".into()],
                        ..Plan::default()
                    },
                    ..serving()
                },
            ),
            (
                "delete_on_a_clb_no_longer_the_services",
                Case {
                    listeners: vec![
                        listener("l-0", "lb-z", 501, Some("gs-0")),
                        listener("l-1", "lb-a", 502, Some("gs-1")),
                    ],
                    plan: Plan {
                        create: vec![create("lb-a", 501, "gs-0"), create("lb-a", 503, "gs-2")],
                        delete: vec!["l-0".into()],
                        ..Plan::default()
                    },
                    ..serving()
                },
            ),
            ("delete_a_port_the_service_no_longer_has", {
                let mut case = serving();
                let mut old = listener("l-old", "lb-a", 503, Some("gs-2"));
                old.target_port = 8000;
                case.listeners.push(old);
                case.plan = Plan {
                    create: vec![create("lb-a", 503, "gs-2")],
                    delete: vec!["l-old".into()],
                    ..Plan::default()
                };
                case
            }),
            ("unbind_a_second_listener_of_one_pod_port", {
                let mut case = serving();
                case.listeners
                    .push(listener("l-0b", "lb-a", 503, Some("gs-0")));
                case.plan = Plan {
                    unbind: vec!["l-0b".into()],
                    messages: vec![no_port("gs-2")],
                    ..Plan::default()
                };
                case
            }),
            ("unbind_a_pod_that_is_going", {
                let mut case = serving();
                case.pods[1].serving = false;
                case.plan = Plan {
                    create: vec![create("lb-a", 503, "gs-2")],
                    unbind: vec!["l-1".into()],
                    ..Plan::default()
                };
                case
            }),
            ("unbind_a_pod_that_is_gone", {
                let mut case = serving();
                case.pods.remove(1);
                case.plan = Plan {
                    create: vec![create("lb-a", 503, "gs-2")],
                    unbind: vec!["l-1".into()],
                    ..Plan::default()
                };
                case
            }),
        ];
        let wrong: Vec<String> = cases
            .into_iter()
            .filter_map(|(name, case)| {
                let got = check_case(&case);
                got.is_err().then(|| format!("{name}: {got:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// A plugin's strings reach a refusal escaped: no line breaks or
    /// control characters of its own in a log line or an Event.
    #[test]
    fn plugin_strings_are_quoted_in_refusals() {
        let evil = "gs-0\nlevel=info msg=forged";
        let plans = [
            Plan {
                delete: vec![evil.into()],
                ..Plan::default()
            },
            Plan {
                bind: vec![("l-0".into(), evil.into())],
                ..Plan::default()
            },
            Plan {
                create: vec![create("lb-a\r", 503, "gs-2")],
                ..Plan::default()
            },
            Plan {
                create: vec![create("lb-a", 503, evil)],
                ..Plan::default()
            },
        ];
        for plan in plans {
            let reason = check_case(&Case { plan, ..serving() }).unwrap_err();
            assert!(!reason.contains(|c: char| c.is_control()), "{reason:?}");
        }
    }

    /// Whatever the shape, the built-in's plan passes the host's check: the
    /// refusals above never catch an honest plan.
    #[test]
    fn random_shapes_plan_what_the_check_accepts() {
        let mut rng = SplitMix64(11);
        let mut below = |n: u64| rng.next() % n;
        let mut messages = 0;
        for round in 0..4000 {
            let mut s = service(match round % 3 {
                0 => Spread::InOrder,
                1 => Spread::Uniform,
                _ => Spread::Random,
            });
            s.seed = round;
            s.max_port = s.min_port + below(5) as u16;
            if below(2) == 0 {
                s.ports.push(PortSpec {
                    protocol: Protocol::Udp,
                    target_port: 9001,
                });
            }
            s.cooldown_seconds = below(3) * 30;
            let protocols = [Protocol::Tcp, Protocol::Udp];
            let lbs: Vec<LoadBalancer> = (0..1 + below(3))
                .map(|i| LoadBalancer {
                    id: format!("lb-{i}"),
                    listener_quota: below(9) as u32,
                    foreign_ports: (0..below(3))
                        .map(|_| (protocols[below(2) as usize], 499 + below(8) as u16))
                        .collect(),
                })
                .collect();
            let pods: Vec<Pod> = (0..below(8))
                .map(|i| Pod {
                    name: format!("gs-{i}"),
                    serving: below(4) != 0,
                })
                .collect();
            let names = |i: u64| match i {
                0..=7 => Some(format!("gs-{i}")),
                8 => Some("gone".to_string()),
                _ => None,
            };
            let listeners: Vec<Listener> = (0..below(10))
                .map(|i| Listener {
                    name: format!("l-{i}"),
                    lb_id: format!("lb-{}", below(4)),
                    port: 499 + below(8) as u16,
                    protocol: protocols[below(2) as usize],
                    target_port: [9000, 9001, 8000][below(3) as usize],
                    pod: names(below(12)),
                    last_pod: names(below(12)),
                    unbound_for_seconds: [None, Some(0), Some(45), Some(600)][below(4) as usize],
                })
                .collect();
            let plan = plan(&s, &lbs, &pods, &listeners);
            messages += plan.messages.len();
            if let Err(why) = check_plan(&s, &lbs, &pods, &listeners, &plan) {
                panic!("{why}\n{s:?}\n{lbs:?}\n{pods:?}\n{listeners:?}\n{plan:?}");
            }
        }
        // Exhaustion happens often enough to be tried.
        assert!(messages > 500, "{messages}");
    }
}
