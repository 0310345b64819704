//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one runs the controllers. The others serve plugins and
//! metrics and wait.
//!
//! Like client-go, expiry is judged by the local clock: a lease is free when
//! its record has not changed for `lease_duration` since this replica last
//! saw it change. Replicas' clocks never have to agree.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who this replica is, e.g. its pod name.
    pub identity: String,
    /// How long a silent leader keeps the lease.
    pub lease_duration: Duration,
    /// A leader that cannot renew for this long steps down (< lease_duration,
    /// so it stops before anyone else may start).
    pub renew_deadline: Duration,
    /// How often the lease is read and renewed.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The holder part of a lease, as observed.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: i32,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Step {
    /// Ours: write a fresh renew time.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it and is alive.
    Follow,
}

/// Pure: what to do with the lease record seen, given when it last changed.
fn decide(record: &Record, changed_at: Instant, now: Instant, config: &LeaseConfig) -> Step {
    match &record.holder {
        Some(holder) if *holder == config.identity => Step::Renew,
        Some(_) if now.duration_since(changed_at) < config.lease_duration => Step::Follow,
        _ => Step::Acquire,
    }
}

/// Campaigns until `stop` resolves, publishing leadership on the returned
/// channel. A leader that stops releases the lease, so another replica takes
/// over at once instead of after the lease duration.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (leading, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut elector = Elector {
            leases,
            config,
            seen: None,
            last_renewed: None,
        };
        tokio::pin!(stop);
        loop {
            // A round waits on the API server, which may not answer for a
            // long time: a stop must not wait for it.
            let is_leader = tokio::select! {
                _ = &mut stop => break,
                is_leader = elector.step() => is_leader,
            };
            leading.send_if_modified(|was| std::mem::replace(was, is_leader) != is_leader);
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(elector.config.retry_period) => {}
            }
        }
        if *leading.borrow() {
            elector.release().await;
            let _ = leading.send(false);
        }
    });
    (receiver, task)
}

struct Elector {
    leases: Api<Lease>,
    config: LeaseConfig,
    /// The record last seen and when it last changed.
    seen: Option<(Record, Instant)>,
    /// When this replica last renewed successfully, while it leads.
    last_renewed: Option<Instant>,
}

impl Elector {
    /// One round; true while this replica leads.
    async fn step(&mut self) -> bool {
        match self.try_step().await {
            Ok(leading) => {
                self.last_renewed = leading.then(Instant::now);
                leading
            }
            Err(error) => {
                tracing::warn!(lease = %self.config.name, %error, "leader election");
                // Keep leading through short API trouble, not past the deadline.
                self.last_renewed
                    .is_some_and(|at| at.elapsed() < self.config.renew_deadline)
            }
        }
    }

    async fn try_step(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let Some(mut lease) = self.leases.get_opt(&self.config.name).await? else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record::of(&spec);
        let changed_at = match &self.seen {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.seen = Some((record.clone(), changed_at));
        let step = decide(&record, changed_at, now, &self.config);
        if step == Step::Follow {
            return Ok(false);
        }
        let now_time = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut spec = spec;
        if step == Step::Acquire {
            tracing::info!(lease = %self.config.name, previous = ?record.holder, "taking the lease");
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(now_time.clone());
            spec.lease_transitions = Some(record.transitions + 1);
        }
        spec.renew_time = Some(now_time);
        spec.lease_duration_seconds = Some(self.config.lease_duration.as_secs().max(1) as i32);
        lease.spec = Some(spec);
        // `replace` carries the resourceVersion read: a concurrent writer
        // makes this fail with 409, and we read again next round.
        match self
            .leases
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn create(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        lease.metadata.name = Some(self.config.name.clone());
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %self.config.name, "took the new lease");
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the lease up: no holder, so the next replica need not wait.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.leases.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .leases
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the lease"),
            Err(error) => {
                tracing::warn!(lease = %self.config.name, %error, "cannot release the lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(str::to_string),
            renew_time: None,
            transitions: 0,
        }
    }

    #[test]
    fn a_live_holder_is_followed_an_expired_or_absent_one_replaced() {
        let config = LeaseConfig::new("ns", "knit", "me");
        let seen = Instant::now();
        let soon = seen + Duration::from_secs(14);
        let late = seen + Duration::from_secs(16);
        assert_eq!(
            decide(&record(Some("me")), seen, late, &config),
            Step::Renew
        );
        assert_eq!(
            decide(&record(Some("other")), seen, soon, &config),
            Step::Follow
        );
        assert_eq!(
            decide(&record(Some("other")), seen, late, &config),
            Step::Acquire
        );
        assert_eq!(decide(&record(None), seen, seen, &config), Step::Acquire);
    }
}
