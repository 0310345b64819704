//! One pass over a tunnel object, planned: from what the controller
//! observed (the tunnel found or made, the sources bound to it), the
//! `tunnel-mapper` plugin's decision (chosen and checked by the controller
//! kit), and what to act on: the cloudflared configuration and whether it
//! must be put, the DNS names wanted, what each source is told, and the
//! status with its conditions. The tunnel controller and `knit simulate`
//! both plan with `plan_tunnel`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::gateway::{self, ParentEntry};
use super::plan;
use super::sources::{Bound, SourceRef, TunnelKey};
use super::types::{TunnelObject, TunnelState, TunnelStatus};
use crate::controller::Refusal;
use crate::controller::decision;
use crate::providers::cloudflare::TunnelConfig;
use crate::runtime::Registry;

/// How soon a pass that did not serve the tunnel is tried again.
pub const FAILURE_RETRY: Duration = Duration::from_secs(10);

/// What `plan_tunnel` needs.
pub struct Observed<K> {
    pub object: Arc<K>,
    pub key: TunnelKey,
    /// The Cloudflare tunnel served: its ID and name.
    pub tunnel_id: String,
    pub tunnel_name: String,
    /// The status so far: the tunnel's identity, and the digest of the
    /// configuration last put (cleared when the tunnel changed).
    pub status: TunnelStatus,
    /// Every Ingress and HTTPRoute that names the tunnel.
    pub bound: Vec<Bound>,
    /// The digest of the configuration Cloudflare holds, when it was read
    /// this pass (`Some(None)`: none stored): a dashboard edit is put back.
    pub live_digest: Option<Option<String>>,
    /// How often to look again when nothing changes.
    pub resync: Duration,
    pub now: Time,
}

/// What one source is told.
#[derive(Clone, Debug)]
pub struct SourceStatus {
    pub reference: SourceRef,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
    /// An HTTPRoute's parents and the entry knit writes for each.
    pub parents: Vec<(serde_json::Value, Option<ParentEntry>)>,
    /// Why a backend does not resolve, when one does not.
    pub backend_missing: Option<String>,
}

/// What to write for one tunnel.
#[derive(Debug)]
pub struct TunnelPlan {
    /// The cloudflared configuration: the mapper's rules in its order.
    pub config: TunnelConfig,
    /// Whether it differs from the one last put (its digest is in
    /// `status.configDigest`).
    pub put_config: bool,
    /// The DNS names the tunnel's records should be, each a proxied CNAME
    /// to `cname_target`.
    pub dns: Vec<String>,
    pub cname_target: String,
    /// Per bound source with a verdict, what it is told.
    pub sources: Vec<SourceStatus>,
    /// Why the mapper made no decision, when it did not (the status says
    /// so too; nothing else is written).
    pub refusal: Option<Refusal>,
    /// The status when every write succeeds.
    pub status: TunnelStatus,
    pub requeue: Duration,
}

/// The outcome of one pass, as the status states it.
pub struct Outcome {
    pub state: TunnelState,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Outcome {
    pub fn failed(reason: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            state: TunnelState::Error,
            ready: false,
            reason,
            message: message.into(),
        }
    }

    /// How soon to look again.
    pub fn requeue(&self, resync: Duration) -> Duration {
        if self.ready { resync } else { FAILURE_RETRY }
    }
}

/// Notes in `status` the tunnel served; a new tunnel's configuration is
/// new too (its digest and version are cleared).
pub fn serving(status: &mut TunnelStatus, id: &str, name: &str, account: &str) {
    if status.tunnel_id.as_deref() != Some(id) {
        status.config_digest = None;
        status.config_version = None;
    }
    status.tunnel_id = Some(id.to_owned());
    status.tunnel_name = Some(name.to_owned());
    status.account_id = Some(account.to_owned());
}

/// Plans one pass over a tunnel object.
pub fn plan_tunnel<K: TunnelObject>(observed: &Observed<K>, registry: &Registry) -> TunnelPlan {
    let object = &*observed.object;
    let spec = object.tunnel_spec();
    let request = plan::mapper_request(&observed.key, &spec, &observed.bound);
    let mut status = observed.status.clone();
    // Admission checks these already (pattern and CEL); a stored object
    // from before is refused rather than served without them.
    let defaults = match spec
        .origin_request
        .as_ref()
        .map(|o| o.to_origin())
        .transpose()
    {
        Ok(defaults) => defaults.unwrap_or_default(),
        Err(why) => {
            let refusal = Refusal::new("InvalidSpec", format!("originRequest: {why}"));
            return refused_plan(observed, status, refusal);
        }
    };
    let chosen = match decision::choose(registry, object) {
        Ok(chosen) => chosen,
        Err(refusal) => return refused_plan(observed, status, refusal),
    };
    status.decided_by = chosen.status();
    let mapping = match chosen.answer(chosen.plugin.map_tunnel(&request, &chosen.config)) {
        Ok(mapping) => mapping,
        Err(refusal) => return refused_plan(observed, status, refusal),
    };

    let config = plan::tunnel_config(&spec, &mapping, &defaults);
    let digest = plan::config_digest(&config);
    let live_differs = observed
        .live_digest
        .as_ref()
        .is_some_and(|live| live.as_deref() != Some(digest.as_str()));
    let put_config = live_differs || status.config_digest.as_deref() != Some(digest.as_str());
    status.config_digest = Some(digest);

    let verdicts = plan::verdicts(&observed.bound, &mapping);
    let sources: Vec<SourceStatus> = observed
        .bound
        .iter()
        .filter_map(|source| {
            let (accepted, reason, message) =
                plan::verdict_reason(verdicts.get(&source.reference)?);
            Some(SourceStatus {
                reference: source.reference.clone(),
                uid: source.uid.clone(),
                generation: source.generation,
                accepted,
                reason,
                message,
                parents: source.parents.clone(),
                backend_missing: gateway::missing_backend(source),
            })
        })
        .collect();
    let rules = mapping.rules.len().saturating_sub(1);
    status.routes = Some(rules as u32);
    status.sources = Some(observed.bound.len() as u32);
    status.refused_sources = Some(sources.iter().filter(|s| !s.accepted).count() as u32);
    let records = format!("{} record(s)", mapping.dns.len());
    set_condition(
        object,
        &mut status,
        "DNSReady",
        true,
        "Synced",
        &records,
        &observed.now,
    );
    let outcome = Outcome {
        state: TunnelState::Active,
        ready: true,
        reason: "Active",
        message: format!(
            "tunnel {} serves {rules} rule(s) for {} source(s)",
            observed.tunnel_name,
            observed.bound.len()
        ),
    };
    finish(object, &mut status, &outcome, &observed.now);
    TunnelPlan {
        config,
        put_config,
        dns: mapping.dns,
        cname_target: plan::cname_target(&observed.tunnel_id),
        sources,
        refusal: None,
        status,
        requeue: outcome.requeue(observed.resync),
    }
}

/// A plan with no decision: only the status, which says why.
fn refused_plan<K: TunnelObject>(
    observed: &Observed<K>,
    mut status: TunnelStatus,
    refusal: Refusal,
) -> TunnelPlan {
    let outcome = Outcome::failed(refusal.reason, refusal.message.clone());
    finish(&*observed.object, &mut status, &outcome, &observed.now);
    TunnelPlan {
        config: TunnelConfig::default(),
        put_config: false,
        dns: Vec::new(),
        cname_target: plan::cname_target(&observed.tunnel_id),
        sources: Vec::new(),
        refusal: Some(refusal),
        status,
        requeue: outcome.requeue(observed.resync),
    }
}

/// The pass's outcome in the status: its state, the generation seen, and
/// the `Ready` condition.
pub fn finish<K: TunnelObject>(
    object: &K,
    status: &mut TunnelStatus,
    outcome: &Outcome,
    now: &Time,
) {
    status.state = Some(outcome.state);
    status.observed_generation = object.meta().generation;
    set_condition(
        object,
        status,
        "Ready",
        outcome.ready,
        outcome.reason,
        &outcome.message,
        now,
    );
}

/// Sets the condition `type_`; its transition time is kept while its status
/// holds.
pub fn set_condition<K: TunnelObject>(
    object: &K,
    status: &mut TunnelStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let condition = crate::conditions::condition(
        &status.conditions,
        type_,
        ok,
        reason,
        message,
        object.meta().generation,
        now,
    );
    put_condition(&mut status.conditions, condition);
}

/// Puts `condition` in place of the one of its type, keeping the
/// conditions sorted by type.
pub fn put_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    conditions.retain(|c| c.type_ != condition.type_);
    conditions.push(condition);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::decision::{INVALID_CONFIG, MAPPER_ANNOTATION, PLUGIN_UNAVAILABLE};
    use crate::domains::cloudflare::sources::SourceKindKey;
    use crate::domains::cloudflare::types::Tunnel;
    use knit_tunnel_core::{
        Backend, BackendState, OriginRequest, Route, Scheme, Source, SourceKind,
    };
    use rstest::rstest;

    fn tunnel(annotations: &[(&str, &str)]) -> Tunnel {
        let annotations: std::collections::BTreeMap<&str, &str> =
            annotations.iter().copied().collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "Tunnel",
            "metadata": {"name": "t", "namespace": "n", "generation": 3,
                         "annotations": annotations},
            "spec": {"newTunnel": {"name": "edge"},
                     "cloudflare": {"accountId": "acc", "domain": "example.com", "secret": "s"}},
        }))
        .expect("a tunnel")
    }

    /// An Ingress `name` routing `host` to Service `app`, created at `created`.
    fn ingress(name: &str, host: &str, created: i64) -> Bound {
        Bound {
            reference: SourceRef {
                kind: SourceKindKey::Ingress,
                namespace: "n".into(),
                name: name.into(),
            },
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            source: Ok(Source {
                origin: OriginRequest::default(),
                kind: SourceKind::Ingress,
                namespace: "n".into(),
                name: name.into(),
                created,
                routes: vec![Route {
                    host: host.into(),
                    path: None,
                    backend: Backend {
                        service: "app".into(),
                        port: 80,
                        scheme: Scheme::Http,
                        state: BackendState::Ready,
                    },
                }],
            }),
            services: vec!["app".into()],
            parents: Vec::new(),
        }
    }

    fn observed(object: Tunnel, bound: Vec<Bound>) -> Observed<Tunnel> {
        Observed {
            key: TunnelKey::Namespaced {
                namespace: "n".into(),
                name: "t".into(),
            },
            object: Arc::new(object),
            tunnel_id: "id-1".into(),
            tunnel_name: "edge".into(),
            status: TunnelStatus::default(),
            bound,
            live_digest: None,
            resync: Duration::from_secs(300),
            now: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn registry() -> Arc<Registry> {
        crate::cli::builtin_registry(None, Arc::default()).expect("the built-in plugins")
    }

    /// One row: the annotations, the sources, then what the plan says:
    /// the `Ready` reason, the DNS names, the hosts of the rules (the
    /// fallback excluded) and each source's verdict reason.
    #[rstest]
    #[case::accepted(&[], vec![ingress("a", "a.example.com", 1)],
        "Active", &["a.example.com"], &["a.example.com"], &["Accepted"])]
    #[case::conflict_goes_to_the_older_source(&[],
        vec![ingress("young", "a.example.com", 2), ingress("old", "a.example.com", 1)],
        "Active", &["a.example.com"], &["a.example.com"], &["Conflict", "Accepted"])]
    #[case::no_sources(&[], vec![], "Active", &[], &[], &[])]
    #[case::refused_by_plugin(&[("tunnel.knit.dev/colour", "blue")],
        vec![ingress("a", "a.example.com", 1)], INVALID_CONFIG, &[], &[], &[])]
    #[case::missing_plugin(&[(MAPPER_ANNOTATION, "no-such-mapper")],
        vec![ingress("a", "a.example.com", 1)], PLUGIN_UNAVAILABLE, &[], &[], &[])]
    fn plan_tunnel_cases(
        #[case] annotations: &[(&str, &str)],
        #[case] bound: Vec<Bound>,
        #[case] ready_reason: &str,
        #[case] dns: &[&str],
        #[case] hosts: &[&str],
        #[case] verdicts: &[&str],
    ) {
        let sources = bound.len() as u32;
        let plan = plan_tunnel(&observed(tunnel(annotations), bound), &registry());
        let ready = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("a Ready condition");
        assert_eq!(ready.reason, ready_reason, "{}", ready.message);
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(plan.status.observed_generation, Some(3));
        assert_eq!(plan.dns, dns);
        let planned: Vec<&str> = plan
            .config
            .ingress
            .iter()
            .filter_map(|r| r.hostname.as_deref())
            .collect();
        assert_eq!(planned, hosts);
        let told: Vec<&str> = plan.sources.iter().map(|s| s.reason).collect();
        assert_eq!(told, verdicts);
        if ready_reason == "Active" {
            assert_eq!(ready.status, "True");
            assert!(plan.refusal.is_none() && plan.put_config);
            assert_eq!(plan.status.state, Some(TunnelState::Active));
            assert_eq!(plan.status.sources, Some(sources));
            assert_eq!(
                plan.config.ingress.last().map(|r| r.service.as_str()),
                Some("http_status:404")
            );
            assert_eq!(plan.cname_target, "id-1.cfargotunnel.com");
            assert_eq!(plan.requeue, Duration::from_secs(300));
            let dns_ready = &plan.status.conditions[0];
            assert_eq!(
                (dns_ready.type_.as_str(), dns_ready.status.as_str()),
                ("DNSReady", "True")
            );
        } else {
            assert_eq!(ready.status, "False");
            assert_eq!(plan.refusal.as_ref().map(|r| r.reason), Some(ready_reason));
            assert_eq!(plan.status.state, Some(TunnelState::Error));
            assert!(!plan.put_config && plan.status.sources.is_none());
            assert_eq!(plan.requeue, FAILURE_RETRY);
        }
        // Only a mapper that was found names itself in the status.
        assert_eq!(
            plan.status.decided_by.plugin.is_some(),
            ready_reason != PLUGIN_UNAVAILABLE
        );
    }

    /// The tunnel's origin settings are the configuration's defaults; a
    /// source's own go on its rules only, in cloudflared's JSON spelling.
    #[test]
    fn origin_settings_reach_the_configuration() {
        let mut object = tunnel(&[]);
        object.spec.origin_request = Some(super::super::types::OriginRequestSpec {
            connect_timeout: Some("1m".into()),
            ..Default::default()
        });
        let mut secure = ingress("secure", "pay.example.com", 1);
        if let Ok(source) = &mut secure.source {
            source.origin = OriginRequest {
                no_tls_verify: Some(true),
                origin_server_name: Some("pay.internal".into()),
                ..OriginRequest::default()
            };
        }
        let plan = plan_tunnel(
            &observed(
                object.clone(),
                vec![secure, ingress("plain", "www.example.com", 1)],
            ),
            &registry(),
        );
        let config = serde_json::to_value(&plan.config).unwrap();
        assert_eq!(
            config["originRequest"],
            serde_json::json!({"connectTimeout": 60})
        );
        let rules: Vec<(&str, &serde_json::Value)> = config["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["hostname"].as_str().unwrap_or("*"), &r["originRequest"]))
            .collect();
        assert_eq!(
            rules,
            [
                (
                    "pay.example.com",
                    &serde_json::json!({"noTLSVerify": true, "originServerName": "pay.internal"})
                ),
                ("www.example.com", &serde_json::Value::Null),
                ("*", &serde_json::Value::Null),
            ]
        );

        // A stored object whose duration admission would now refuse.
        object.spec.origin_request = Some(super::super::types::OriginRequestSpec {
            tls_timeout: Some("2d".into()),
            ..Default::default()
        });
        let plan = plan_tunnel(
            &observed(object, vec![ingress("a", "a.example.com", 1)]),
            &registry(),
        );
        assert_eq!(plan.refusal.as_ref().map(|r| r.reason), Some("InvalidSpec"));
        assert!(!plan.put_config);
    }

    /// An unchanged configuration is not put again; a new tunnel's is.
    #[test]
    fn the_configuration_is_put_only_when_it_changed() {
        let registry = registry();
        let mut observed = observed(tunnel(&[]), vec![ingress("a", "a.example.com", 1)]);
        let first = plan_tunnel(&observed, &registry);
        assert!(first.put_config);
        observed.status = first.status.clone();
        let again = plan_tunnel(&observed, &registry);
        assert!(!again.put_config);
        assert_eq!(again.status, first.status);
        serving(&mut observed.status, "id-2", "edge", "acc");
        assert!(plan_tunnel(&observed, &registry).put_config);
    }

    /// A configuration changed in Cloudflare (the dashboard, another tool)
    /// is put back when the live one is read; an unchanged one is not put.
    #[rstest]
    #[case::not_read_this_pass(None, false)]
    #[case::unchanged(Some(Some("wanted")), false)]
    #[case::edited(Some(Some("edited")), true)]
    #[case::removed(Some(None), true)]
    fn the_live_configuration_is_put_back_when_it_differs(
        #[case] live: Option<Option<&str>>,
        #[case] put: bool,
    ) {
        let registry = registry();
        let mut observed = observed(tunnel(&[]), vec![ingress("a", "a.example.com", 1)]);
        observed.status = plan_tunnel(&observed, &registry).status;
        let wanted = observed.status.config_digest.clone().unwrap();
        observed.live_digest = live.map(|live| {
            live.map(|digest| match digest {
                "wanted" => wanted.clone(),
                other => other.to_owned(),
            })
        });
        assert_eq!(plan_tunnel(&observed, &registry).put_config, put);
    }
}
