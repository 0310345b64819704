//! Leader election on the real API server: one of two replicas leads; a
//! crashed leader is replaced once its lease expires; a stopped one releases
//! it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use knit::leader::{self, LeaseConfig};
use kube::Api;
use tokio::sync::{oneshot, watch};

fn config(namespace: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new(namespace, "knit", identity)
    }
}

struct Replica {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

async fn replica(namespace: &str, identity: &str) -> Replica {
    let client = knit_tests::admin_client().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let (leading, task) = leader::spawn(client, config(namespace, identity), async move {
        let _ = stopped.await;
    });
    Replica {
        leading,
        task,
        stop,
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("knit")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over() {
    let client = knit_tests::admin_client().await;
    let namespace = knit_tests::fresh_namespace(&client, "lease").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let a = replica(&namespace, "a").await;
    let b = replica(&namespace, "b").await;
    let wait = Duration::from_secs(30);

    let first = knit_tests::eventually("a leader", wait, || async {
        let holder = holder(&leases).await?;
        let leaders = [&a, &b].iter().filter(|r| *r.leading.borrow()).count();
        (leaders == 1).then_some(holder)
    })
    .await;
    // Only one leads, for a while.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_ne!(*a.leading.borrow(), *b.leading.borrow());
        assert_eq!(holder(&leases).await.as_ref(), Some(&first));
    }
    let (leader, follower) = if first == "a" { (a, b) } else { (b, a) };

    // A crash: no release. The follower waits out the lease, no less.
    leader.task.abort();
    let crashed = Instant::now();
    knit_tests::eventually("the follower leading", wait, || async {
        (*follower.leading.borrow()).then_some(())
    })
    .await;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "took over a live lease after {took:?}"
    );
    let second = holder(&leases).await.unwrap();
    assert_ne!(second, first);

    // A clean stop releases the lease: nobody holds it, so a newcomer need
    // not wait for it to expire.
    follower.stop.send(()).unwrap();
    follower.task.await.unwrap();
    assert!(!*follower.leading.borrow());
    assert_eq!(holder(&leases).await, None);
    let newcomer = replica(&namespace, "c").await;
    knit_tests::eventually("the newcomer leading", wait, || async {
        (*newcomer.leading.borrow()).then_some(())
    })
    .await;
    let lease = leases.get("knit").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("c"));
    assert_eq!(lease.lease_transitions, Some(2));
}
