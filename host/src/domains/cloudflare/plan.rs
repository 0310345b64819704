//! The pure part of serving a tunnel: the cloudflared configuration from the
//! mapper's answer, the DNS changes, the cloudflared Deployment and its
//! token Secret, and what each source is told.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use knit_tunnel_core::{Mapping, OriginRequest, Verdict};

use super::sources::{Bound, SourceRef, TunnelKey};
use super::types::TunnelSpec;
use crate::providers::cloudflare::{
    DnsBatch, DnsRecord, IngressRule, NewDnsRecord, RecordId, RecordPut, TunnelConfig, WarpRouting,
};

/// The key in the token Secret that cloudflared reads as `TUNNEL_TOKEN`.
pub const TOKEN_SECRET_KEY: &str = "token";
/// On the token Secret: the tunnel its token belongs to.
pub const TUNNEL_ID_ANNOTATION: &str = "knit.dev/tunnel-id";
/// The cluster DNS suffix of Service names in cloudflared's rules.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// Cloudflare's limit on a DNS record comment (free plans).
const COMMENT_LIMIT: usize = 100;

/// Marks the DNS records (and routes) knit made for one tunnel of one
/// cluster: the comment starts with `knit:<digest>`, a digest of the
/// cluster's identity and the tunnel's, so two clusters sharing a zone never
/// touch each other's records; the rest of the comment is for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerMarker {
    pub prefix: String,
    pub comment: String,
}

impl OwnerMarker {
    pub fn new(cluster_id: &str, owner: &str) -> OwnerMarker {
        let digest = Sha256::digest(format!("{cluster_id}\n{owner}").as_bytes());
        let prefix = format!("knit:{}", &hex::encode(digest)[..16]);
        let mut comment = format!("{prefix} {owner}");
        if comment.len() > COMMENT_LIMIT {
            let mut end = COMMENT_LIMIT;
            while !comment.is_char_boundary(end) {
                end -= 1;
            }
            comment.truncate(end);
        }
        OwnerMarker { prefix, comment }
    }

    pub fn owns(&self, comment: Option<&str>) -> bool {
        comment.is_some_and(|c| c == self.prefix || c.starts_with(&format!("{} ", self.prefix)))
    }
}

/// The name of the tunnel's cloudflared Deployment, its token Secret and its
/// pods' `app.kubernetes.io/instance` label.
pub fn workload_name(key: &TunnelKey) -> String {
    match key {
        TunnelKey::Namespaced { name, .. } => format!("cloudflared-{name}"),
        TunnelKey::Cluster { name } => format!("cloudflared-cluster-{name}"),
    }
}

/// Where the cloudflared Deployment runs: the Tunnel's namespace, or knit's
/// for a ClusterTunnel (beside its credentials).
pub fn workload_namespace(key: &TunnelKey, knit_namespace: &str) -> String {
    key.namespace().unwrap_or(knit_namespace).to_owned()
}

/// The cloudflared configuration: the mapper's rules in its order, each
/// with its source's origin settings, and the tunnel's own as the defaults.
pub fn tunnel_config(
    spec: &TunnelSpec,
    mapping: &Mapping,
    defaults: &OriginRequest,
) -> TunnelConfig {
    TunnelConfig {
        ingress: mapping
            .rules
            .iter()
            .map(|rule| IngressRule {
                hostname: rule.hostname.clone(),
                path: rule.path.clone(),
                service: rule.service.clone(),
                origin_request: origin_json(&rule.origin),
            })
            .collect(),
        warp_routing: Some(WarpRouting {
            enabled: spec.enable_warp_routing,
        }),
        origin_request: origin_json(defaults),
    }
}

/// cloudflared's `originRequest` as its API reads it (durations in whole
/// seconds); none when nothing is set.
pub fn origin_json(origin: &OriginRequest) -> Option<serde_json::Value> {
    let o = origin;
    let fields = [
        ("noTLSVerify", o.no_tls_verify.map(Value::from)),
        (
            "originServerName",
            o.origin_server_name.clone().map(Value::from),
        ),
        ("caPool", o.ca_pool.clone().map(Value::from)),
        (
            "httpHostHeader",
            o.http_host_header.clone().map(Value::from),
        ),
        ("connectTimeout", o.connect_timeout.map(Value::from)),
        ("tlsTimeout", o.tls_timeout.map(Value::from)),
        ("keepAliveTimeout", o.keep_alive_timeout.map(Value::from)),
        ("http2Origin", o.http2_origin.map(Value::from)),
        (
            "disableChunkedEncoding",
            o.disable_chunked_encoding.map(Value::from),
        ),
    ];
    let set: serde_json::Map<String, Value> = fields
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect();
    (!set.is_empty()).then_some(Value::Object(set))
}

/// A digest of a configuration: an unchanged one is not put again.
pub fn config_digest(config: &TunnelConfig) -> String {
    let bytes = serde_json::to_vec(config).expect("a tunnel configuration serializes");
    hex::encode(&Sha256::digest(&bytes)[..16])
}

/// What the tunnel's CNAMEs point at.
pub fn cname_target(tunnel_id: &str) -> String {
    format!("{tunnel_id}.cfargotunnel.com")
}

/// DNS writes that bring the records knit owns for a tunnel to `wanted`.
#[derive(Debug, Default, PartialEq)]
pub struct DnsChanges {
    pub create: Vec<NewDnsRecord>,
    pub update: Vec<(String, NewDnsRecord)>,
    pub delete: Vec<DnsRecord>,
}

impl DnsChanges {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// The changes as batch calls of at most `size` operations each, in
    /// Cloudflare's order (deletes, then overwrites, then creates) across
    /// the batches too, so a name freed by a delete is free for its create.
    pub fn batches(&self, size: usize) -> Vec<DnsBatch> {
        let size = size.max(1);
        // The batch with room for one more, opened when the last is full.
        fn open(batches: &mut Vec<DnsBatch>, size: usize) -> &mut DnsBatch {
            if batches.last().is_none_or(|batch| batch.len() >= size) {
                batches.push(DnsBatch::default());
            }
            batches.last_mut().expect("pushed above")
        }
        let mut batches = Vec::new();
        for record in &self.delete {
            let id = record.id.clone();
            open(&mut batches, size).deletes.push(RecordId { id });
        }
        for (id, record) in &self.update {
            let (id, record) = (id.clone(), record.clone());
            open(&mut batches, size).puts.push(RecordPut { id, record });
        }
        for record in &self.create {
            open(&mut batches, size).posts.push(record.clone());
        }
        batches
    }
}

/// Compares the wanted hosts with the records the marker owns (`owned`,
/// listed by comment prefix). Records of other owners never appear here, so
/// they are never changed; a wanted host that one of them holds fails at
/// create and is reported by the caller.
pub fn dns_changes(
    wanted: &[String],
    target: &str,
    marker: &OwnerMarker,
    owned: &[DnsRecord],
) -> DnsChanges {
    let record = |name: &str| NewDnsRecord {
        name: name.to_owned(),
        r#type: "CNAME".into(),
        content: target.to_owned(),
        proxied: true,
        ttl: 1,
        comment: Some(marker.comment.clone()),
    };
    let wanted: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut changes = DnsChanges::default();
    let mut seen = BTreeSet::new();
    for existing in owned.iter().filter(|r| marker.owns(r.comment.as_deref())) {
        let name = existing.name.as_str();
        if !wanted.contains(name) || !seen.insert(name) {
            changes.delete.push(existing.clone());
            continue;
        }
        let up_to_date = existing.r#type == "CNAME"
            && existing.content == target
            && existing.proxied
            && existing.comment.as_deref() == Some(marker.comment.as_str());
        if !up_to_date {
            changes.update.push((existing.id.clone(), record(name)));
        }
    }
    for name in wanted.difference(&seen) {
        changes.create.push(record(name));
    }
    changes
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, and
/// anything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// What the cloudflared Deployment of a tunnel looks like.
pub struct Workload<'a> {
    pub key: &'a TunnelKey,
    pub namespace: &'a str,
    pub image: &'a str,
    pub protocol: &'a str,
    pub deploy_patch: &'a str,
    /// The owning Tunnel or ClusterTunnel.
    pub owner: Value,
}

/// The labels of a cloudflared Deployment and its pods.
pub fn cloudflared_labels(app: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), app.into()),
        ("app.kubernetes.io/instance".into(), instance.into()),
        ("app.kubernetes.io/managed-by".into(), "knit".into()),
    ])
}

/// The labels of a tunnel's cloudflared pods.
pub fn workload_labels(key: &TunnelKey) -> BTreeMap<String, String> {
    cloudflared_labels("cloudflared", &workload_name(key))
}

/// The pod tunnels and WARP connectors both run: cloudflared as a non-root
/// user on a read-only root, the token from Secret `secret` as
/// `TUNNEL_TOKEN`, metrics and `/ready` on port 2000.
pub fn cloudflared_pod(image: &str, args: &[&str], secret: &str) -> Value {
    json!({
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [{
            "name": "cloudflared",
            "image": image,
            "args": args,
            "env": [{
                "name": "TUNNEL_TOKEN",
                "valueFrom": { "secretKeyRef": { "name": secret, "key": TOKEN_SECRET_KEY } },
            }],
            "ports": [{ "name": "metrics", "containerPort": 2000 }],
            "readinessProbe": { "httpGet": { "path": "/ready", "port": 2000 } },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"] },
            },
        }],
    })
}

/// What a WARP Connector's pod runs. The connector is the WARP client in
/// connector mode, not cloudflared (which serves `cfd_tunnel`s only and
/// has no notion of a `warp_connector` token): the daemon (`warp-svc`, on
/// the system D-Bus), then `warp-cli connector new <token>` and `connect`.
pub const WARP_CONNECTOR_SCRIPT: &str = r#"set -eu
mkdir -p /run/dbus && rm -f /run/dbus/pid
dbus-daemon --config-file=/usr/share/dbus-1/system.conf
warp-svc --accept-tos &
service=$!
until warp-cli --accept-tos status >/dev/null 2>&1; do sleep 1; done
warp-cli --accept-tos connector new "$WARP_CONNECTOR_TOKEN"
warp-cli --accept-tos connect
wait "$service"
"#;

/// The env variable the connector script reads its token from.
pub const WARP_CONNECTOR_TOKEN_ENV: &str = "WARP_CONNECTOR_TOKEN";

/// The pod of a WARP Connector: `image` must hold the WARP client
/// (`warp-svc`, `warp-cli`, `dbus-daemon`). It runs as root with
/// `NET_ADMIN` and the node's `/dev/net/tun` for its TUN interface, and
/// forwards packets between the WARP network and the cluster's, so its
/// network namespace sets `net.ipv4.ip_forward` (a sysctl the kubelet must
/// allow: `--allowed-unsafe-sysctls`).
pub fn warp_connector_pod(image: &str, secret: &str) -> Value {
    json!({
        "securityContext": {
            "seccompProfile": { "type": "RuntimeDefault" },
            "sysctls": [{ "name": "net.ipv4.ip_forward", "value": "1" }],
        },
        "containers": [{
            "name": "warp-connector",
            "image": image,
            "command": ["/bin/sh", "-c", WARP_CONNECTOR_SCRIPT],
            "env": [{
                "name": WARP_CONNECTOR_TOKEN_ENV,
                "valueFrom": { "secretKeyRef": { "name": secret, "key": TOKEN_SECRET_KEY } },
            }],
            "readinessProbe": {
                "exec": { "command": ["/bin/sh", "-c", "warp-cli --accept-tos status | grep -q Connected"] },
                "periodSeconds": 10,
            },
            "securityContext": {
                "runAsUser": 0,
                "capabilities": { "add": ["NET_ADMIN"] },
            },
            "volumeMounts": [
                { "name": "tun", "mountPath": "/dev/net/tun" },
                { "name": "state", "mountPath": "/var/lib/cloudflare-warp" },
            ],
        }],
        "volumes": [
            { "name": "tun", "hostPath": { "path": "/dev/net/tun", "type": "CharDevice" } },
            { "name": "state", "emptyDir": {} },
        ],
    })
}

/// Whether `image` is cloudflared's, which cannot serve a WARP Connector.
pub fn is_cloudflared_image(image: &str) -> bool {
    let repository = image.split(['@']).next().unwrap_or(image);
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let name = name.split(':').next().unwrap_or(name);
    name == "cloudflared"
}

/// A cloudflared Deployment running `pod`, selected by its labels but
/// `managed-by`.
pub fn cloudflared_deployment(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    owner: &Value,
    replicas: i32,
    pod: Value,
) -> Value {
    let selector: BTreeMap<_, _> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "app.kubernetes.io/managed-by")
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": selector },
            "template": { "metadata": { "labels": labels }, "spec": pod },
        },
    })
}

/// A tunnel's Deployment, `deployPatch` applied. Its pod template depends
/// on the image, protocol, token Secret and patch only — never on the
/// ingress rules, which cloudflared fetches from Cloudflare — so a
/// configuration change restarts nothing.
pub fn deployment(workload: &Workload) -> Result<Value, String> {
    let name = workload_name(workload.key);
    let args = [
        "tunnel",
        "--no-autoupdate",
        "--protocol",
        workload.protocol,
        "--metrics",
        "0.0.0.0:2000",
        "run",
    ];
    let mut pod = cloudflared_pod(workload.image, &args, &name);
    pod["automountServiceAccountToken"] = json!(false);
    pod["containers"][0]["livenessProbe"] = json!({
        "httpGet": { "path": "/ready", "port": 2000 },
        "failureThreshold": 3,
        "initialDelaySeconds": 10,
        "periodSeconds": 10,
    });
    let mut deployment = cloudflared_deployment(
        &name,
        workload.namespace,
        &workload_labels(workload.key),
        &workload.owner,
        1,
        pod,
    );
    let patch: Value = serde_json::from_str(workload.deploy_patch)
        .map_err(|e| format!("deployPatch is not JSON: {e}"))?;
    if !patch.is_object() {
        return Err("deployPatch must be a JSON object".into());
    }
    merge_patch(&mut deployment, &patch);
    // The patch may tune the Deployment, not make it another object.
    deployment["apiVersion"] = json!("apps/v1");
    deployment["kind"] = json!("Deployment");
    deployment["metadata"]["name"] = json!(name);
    deployment["metadata"]["namespace"] = json!(workload.namespace);
    Ok(deployment)
}

/// The mapper's request: the tunnel and the sources the host did not refuse.
pub fn mapper_request(
    key: &TunnelKey,
    spec: &TunnelSpec,
    bound: &[Bound],
) -> knit_tunnel_core::Request {
    knit_tunnel_core::Request {
        tunnel: knit_tunnel_core::Tunnel {
            name: key.name().to_owned(),
            namespace: key.namespace().map(str::to_owned),
            domain: spec.cloudflare.domain.clone().unwrap_or_default(),
            fallback_target: spec.fallback_target.clone(),
        },
        sources: bound.iter().filter_map(|b| b.source.clone().ok()).collect(),
        cluster_domain: CLUSTER_DOMAIN.into(),
    }
}

/// Each bound source's verdict: the mapper's (which answers in request
/// order, as the host checks), or the host's refusal.
pub fn verdicts(bound: &[Bound], mapping: &Mapping) -> HashMap<SourceRef, Verdict> {
    let mut decided = mapping.sources.iter();
    bound
        .iter()
        .map(|b| {
            let verdict = match &b.source {
                Err(why) => Verdict::Invalid(why.clone()),
                Ok(_) => decided
                    .next()
                    .map(|s| s.verdict.clone())
                    .unwrap_or_else(|| Verdict::Invalid("the mapper gave no verdict".into())),
            };
            (b.reference.clone(), verdict)
        })
        .collect()
}

/// What a source is told of its verdict: `(accepted, reason, message)`.
pub fn verdict_reason(verdict: &Verdict) -> (bool, &'static str, String) {
    let message = match verdict {
        Verdict::Accepted => "served by the tunnel".to_owned(),
        other => other.message().to_owned(),
    };
    (!verdict.is_refused(), verdict.name(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(id: &str, name: &str, content: &str, comment: &str) -> DnsRecord {
        DnsRecord {
            id: id.into(),
            name: name.into(),
            r#type: "CNAME".into(),
            content: content.into(),
            proxied: true,
            ttl: 1,
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn markers_differ_per_cluster_and_tunnel_and_fit_a_comment() {
        let a = OwnerMarker::new("cluster-a", "ClusterTunnel shared");
        let b = OwnerMarker::new("cluster-b", "ClusterTunnel shared");
        assert_ne!(a.prefix, b.prefix);
        assert!(a.owns(Some(&a.comment)));
        assert!(!a.owns(Some(&b.comment)));
        assert!(!a.owns(None));
        assert!(!a.owns(Some(&format!("{}x", a.prefix))));
        let long = OwnerMarker::new("c", &format!("Tunnel ns/{}", "n".repeat(200)));
        assert!(long.comment.len() <= COMMENT_LIMIT);
        assert!(long.owns(Some(&long.comment)));
    }

    /// Changes of `deletes`, `updates` and `creates` records cut into
    /// batches of `size`: each batch as (deletes, puts, posts).
    #[rstest::rstest]
    #[case::none(0, 0, 0, 200, vec![])]
    #[case::one_batch_in_order(2, 1, 3, 200, vec![(2, 1, 3)])]
    #[case::a_thousand_creates_on_the_free_plan(0, 0, 1000, 200, vec![(0, 0, 200); 5])]
    #[case::kinds_share_a_batch_at_the_cut(3, 2, 2, 4, vec![(3, 1, 0), (0, 1, 2)])]
    #[case::size_zero_is_one(1, 0, 1, 0, vec![(1, 0, 0), (0, 0, 1)])]
    fn dns_changes_are_cut_into_ordered_batches(
        #[case] deletes: usize,
        #[case] updates: usize,
        #[case] creates: usize,
        #[case] size: usize,
        #[case] expected: Vec<(usize, usize, usize)>,
    ) {
        let marker = OwnerMarker::new("c", "Tunnel a/t");
        let record = |i: usize| {
            owned(
                &format!("r{i}"),
                &format!("h{i}.example.com"),
                "t",
                &marker.comment,
            )
        };
        let new = |i: usize| NewDnsRecord {
            name: format!("n{i}.example.com"),
            r#type: "CNAME".into(),
            content: "t".into(),
            proxied: true,
            ttl: 1,
            comment: None,
        };
        let changes = DnsChanges {
            delete: (0..deletes).map(record).collect(),
            update: (0..updates).map(|i| (format!("u{i}"), new(i))).collect(),
            create: (0..creates).map(new).collect(),
        };
        let batches = changes.batches(size);
        let shapes: Vec<_> = batches
            .iter()
            .map(|b| (b.deletes.len(), b.puts.len(), b.posts.len()))
            .collect();
        assert_eq!(shapes, expected);
        // Nothing lost or repeated, and in order.
        let ids: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.deletes.iter().map(|d| d.id.as_str()))
            .collect();
        let want: Vec<&str> = changes.delete.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, want);
        let names: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.posts.iter().map(|p| p.name.as_str()))
            .collect();
        let want: Vec<&str> = changes.create.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn dns_changes_create_fix_and_remove_only_owned_records() {
        let marker = OwnerMarker::new("c", "Tunnel a/t");
        let target = cname_target("t1");
        let wanted = vec!["a.example.com".to_string(), "b.example.com".to_string()];
        let existing = vec![
            owned("1", "a.example.com", &target, &marker.comment),
            owned("2", "old.example.com", &target, &marker.comment),
            owned(
                "3",
                "b.example.com",
                "other.cfargotunnel.com",
                &marker.comment,
            ),
            owned("4", "a.example.com", &target, &marker.comment),
            // Listed by prefix but not ours (a longer digest): never touched.
            owned(
                "5",
                "c.example.com",
                &target,
                &format!("{}0", marker.prefix),
            ),
        ];
        let changes = dns_changes(&wanted, &target, &marker, &existing);
        assert!(changes.create.is_empty());
        assert_eq!(
            changes
                .update
                .iter()
                .map(|(id, r)| (id.as_str(), r.content.as_str()))
                .collect::<Vec<_>>(),
            vec![("3", target.as_str())]
        );
        assert_eq!(
            changes
                .delete
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            vec!["2", "4"]
        );
        let fresh = dns_changes(&wanted, &target, &marker, &[]);
        assert_eq!(fresh.create.len(), 2);
        assert_eq!(
            fresh.create[0].comment.as_deref(),
            Some(marker.comment.as_str())
        );
    }

    #[rstest::rstest]
    #[case::seed_default("cloudflare/cloudflared:latest", true)]
    #[case::pinned("cloudflare/cloudflared:2024.1.0", true)]
    #[case::mirrored("registry.example.com:5000/mirror/cloudflared@sha256:0123", true)]
    #[case::bare("cloudflared", true)]
    #[case::warp_client("registry.example.com/warp-connector:2025.4", false)]
    #[case::registry_port_only("registry.example.com:5000/warp", false)]
    fn cloudflared_images_are_recognised(#[case] image: &str, #[case] cloudflared: bool) {
        assert_eq!(is_cloudflared_image(image), cloudflared);
    }

    #[test]
    fn deploy_patch_merges_and_cannot_rename() {
        let key = TunnelKey::Cluster { name: "ha".into() };
        let workload = |patch: &'static str| Workload {
            key: &key,
            namespace: "knit-system",
            image: "cloudflare/cloudflared:latest",
            protocol: "quic",
            deploy_patch: patch,
            owner: json!({}),
        };
        let patched = deployment(&workload(
            r#"{"metadata": {"name": "evil"}, "spec": {"replicas": 3, "template": {"spec": {"affinity": {"podAntiAffinity": {}}}}}}"#,
        ))
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 3);
        assert_eq!(patched["metadata"]["name"], "cloudflared-cluster-ha");
        assert!(patched["spec"]["template"]["spec"]["affinity"].is_object());
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"][0]["args"][3],
            "quic"
        );
        assert!(
            deployment(&workload("[1]"))
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(deployment(&workload("{")).unwrap_err().contains("not JSON"));
    }
}
