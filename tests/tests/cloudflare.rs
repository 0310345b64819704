//! The Cloudflare domain end to end: knit's tunnel and WARP controllers on
//! the real API server, the strict fake Cloudflare API behind them, and the
//! seed's manifests applied unchanged with kubectl. There is no kubelet and
//! no endpoints controller: the tests write the EndpointSlices a ready
//! backend would have.
//!
//! Every knit started here manages every tunnel of the API server, so the
//! tests take turns (`SERIAL`), and each starts by clearing what an earlier
//! one left.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use knit::domains::cloudflare::account::CloudflareSettings;
use knit::domains::cloudflare::gateway::{Gateway, GatewayClass, HttpRoute};
use knit::domains::cloudflare::types::{
    CloudflareCredentials, ClusterTunnel, DNSRecord, DnsRecordState, NetworkRoute, Tunnel,
    TunnelState, VirtualNetwork, WARPConnector,
};
use knit_tests::fake_cloudflare::FakeCloudflare;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use support::Knit;

mod support;

/// The seed's account, token, zone and operator namespace.
const ACCOUNT: &str = "<your-account-id>";
const TOKEN: &str = "your-api-token-here";
const DOMAIN: &str = "example.com";
const KNIT_NAMESPACE: &str = "cloudflare-operator-system";
/// The WARPConnector examples' account, and the token its credentials hold.
const WARP_ACCOUNT: &str = "1234567890abcdef";
const WARP_TOKEN: &str = "production-token";
const WAIT: Duration = Duration::from_secs(60);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    client: Client,
    fake: FakeCloudflare,
    zone: String,
    knit: Option<Knit>,
}

impl World {
    async fn new() -> World {
        let turn = SERIAL.lock().await;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let client = knit_tests::admin_client().await;
        clear_leftovers(&client).await;
        for namespace in [
            KNIT_NAMESPACE,
            "app-namespace-1",
            "app-namespace-2",
            "api-namespace",
            "production",
        ] {
            let _ = Api::<Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
                )
                .await;
        }
        let fake = FakeCloudflare::start().await;
        fake.add_account(ACCOUNT);
        fake.add_token(TOKEN, ACCOUNT);
        let zone = fake.add_zone(ACCOUNT, DOMAIN);
        fake.add_account(WARP_ACCOUNT);
        fake.add_token(WARP_TOKEN, WARP_ACCOUNT);
        apply("examples/cloudflare/credentials-secret.yaml");
        let mut world = World {
            _turn: turn,
            client,
            fake,
            zone,
            knit: None,
        };
        world.start_knit();
        world
    }

    fn start_knit(&mut self) {
        self.knit = Some(start_cloudflare(
            knit_tests::env(),
            self.fake.endpoint(),
            "e2e-cluster",
        ));
    }

    async fn cluster_tunnel(&self, name: &str) -> ClusterTunnel {
        Api::<ClusterTunnel>::all(self.client.clone())
            .get(name)
            .await
            .unwrap()
    }

    /// Waits for a ClusterTunnel's `Ready` condition to have `status`, and
    /// returns the object.
    async fn cluster_tunnel_ready(&self, name: &str, status: &str) -> ClusterTunnel {
        let api = Api::<ClusterTunnel>::all(self.client.clone());
        let status = status.to_owned();
        knit_tests::eventually(
            &format!("ClusterTunnel {name} Ready={status}"),
            WAIT,
            || {
                let api = api.clone();
                let status = status.clone();
                async move {
                    let tunnel = api.get(name).await.ok()?;
                    let ready = ready_condition(tunnel.status.as_ref()?.conditions.as_slice())?;
                    (ready.status == status
                        && tunnel.status.as_ref()?.observed_generation
                            == tunnel.metadata.generation)
                        .then_some(tunnel)
                }
            },
        )
        .await
    }

    /// The configuration the fake holds for a tunnel: `(hostname, path,
    /// service)` per rule.
    fn rules(&self, tunnel_id: &str) -> Vec<(Option<String>, Option<String>, String)> {
        let Some(config) = self.fake.tunnel_configuration(tunnel_id) else {
            return Vec::new();
        };
        config.config["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["hostname"].as_str().map(str::to_owned),
                    r["path"].as_str().map(str::to_owned),
                    r["service"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Waits until the fake's configuration of `tunnel_id` has exactly these
    /// hostnames (fallback excluded).
    async fn wait_hosts(&self, tunnel_id: &str, hosts: &[&str]) {
        let wanted: BTreeSet<String> = hosts.iter().map(|h| h.to_string()).collect();
        knit_tests::eventually(&format!("configuration with hosts {hosts:?}"), WAIT, || {
            let got: BTreeSet<String> = self
                .rules(tunnel_id)
                .into_iter()
                .filter_map(|(host, _, _)| host)
                .collect();
            std::future::ready((got == wanted).then_some(()))
        })
        .await;
    }

    /// The names of the zone's CNAMEs pointing at `tunnel_id`.
    fn dns_names(&self, tunnel_id: &str) -> BTreeSet<String> {
        self.fake
            .dns_records(&self.zone)
            .into_iter()
            .filter(|r| r.content == format!("{tunnel_id}.cfargotunnel.com"))
            .map(|r| r.name)
            .collect()
    }

    async fn wait_dns(&self, tunnel_id: &str, names: &[&str]) {
        let wanted: BTreeSet<String> = names.iter().map(|h| h.to_string()).collect();
        knit_tests::eventually(&format!("DNS records {names:?}"), WAIT, || {
            std::future::ready((self.dns_names(tunnel_id) == wanted).then_some(()))
        })
        .await;
    }

    async fn ingress_hostname(&self, namespace: &str, name: &str) -> Option<String> {
        let ingress = Api::<Ingress>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .ok()?;
        ingress
            .status?
            .load_balancer?
            .ingress?
            .first()?
            .hostname
            .clone()
    }

    /// The reasons of the Events about an object.
    async fn event_reasons(&self, namespace: &str, name: &str) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// knit's Cloudflare controllers on the cluster `env`, as the cluster
/// `cluster_id`, against the fake at `endpoint`.
fn start_cloudflare(env: &'static knit_tests::TestEnv, endpoint: &str, cluster_id: &str) -> Knit {
    let settings = CloudflareSettings {
        endpoint: endpoint.into(),
        cluster_id: cluster_id.into(),
        namespace: KNIT_NAMESPACE.into(),
        cloudflared_image: "cloudflare/cloudflared:2025.1.0".into(),
        resync: Duration::from_secs(5),
        api_budget: CloudflareSettings::API_BUDGET,
        dns_batch_size: CloudflareSettings::DNS_BATCH_SIZE,
        budget_left: Default::default(),
    };
    Knit::start(env, move |client, registry| {
        knit::domains::cloudflare::run(
            client,
            registry,
            settings,
            Default::default(),
            std::future::pending(),
        )
    })
}

/// A Secret holding `token` as `CLOUDFLARE_API_TOKEN` (written over an
/// earlier test's).
async fn token_secret(client: &Client, namespace: &str, name: &str, token: &str) {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name},
                "stringData": {"CLOUDFLARE_API_TOKEN": token},
            })),
        )
        .await
        .unwrap();
}

/// Creates the Tunnel `name` in `namespace` (named `<namespace>-<name>` in
/// Cloudflare) with the namespace's token Secret `secret`.
async fn create_tunnel(client: &Client, namespace: &str, name: &str, secret: &str) -> Api<Tunnel> {
    let tunnel: Tunnel = serde_json::from_value(json!({
        "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
        "kind": "Tunnel",
        "metadata": {"name": name},
        "spec": {
            "newTunnel": {"name": format!("{namespace}-{name}")},
            "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": secret},
        },
    }))
    .unwrap();
    let tunnels = Api::<Tunnel>::namespaced(client.clone(), namespace);
    tunnels
        .create(&PostParams::default(), &tunnel)
        .await
        .unwrap();
    tunnels
}

/// A Service with a ready endpoint, as the endpoints controller would
/// publish it.
async fn ready_service(client: &Client, namespace: &str, name: &str, port: i32) {
    let services =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace);
    let _ = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": port}]},
            }))
            .unwrap(),
        )
        .await;
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
        client.clone(),
        namespace,
    );
    let _ = slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.10"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": port}],
            }))
            .unwrap(),
        )
        .await;
}

async fn ingress(
    client: &Client,
    namespace: &str,
    name: &str,
    tunnel: &str,
    host: &str,
    service: &str,
) {
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"cf-operator.io/tunnel": tunnel}},
        "spec": {
            "ingressClassName": "cloudflare-tunnel",
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": 80}}},
            }]}}],
        },
    }))
    .unwrap();
    Api::<Ingress>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();
}

/// Waits until `api` lists nothing (finalizers done).
async fn all_gone<K>(api: &Api<K>, what: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    knit_tests::eventually(what, WAIT, || async {
        api.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}

fn ready_condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// `kubectl apply -f <file>` from the repository root; panics with its
/// output when it fails.
fn apply(file: &str) {
    knit_tests::kubectl_ok(&["apply", "-f", file]);
}

fn kubectl_delete(file: &str) {
    knit_tests::kubectl_ok(&["delete", "--wait=false", "--ignore-not-found", "-f", file]);
}

/// Deletes the Cloudflare objects, Ingresses and HTTPRoutes earlier tests
/// left, finalizers dropped (the knit that owned them is gone with its fake).
async fn clear_leftovers(client: &Client) {
    drop_cluster::<NetworkRoute>(client).await;
    drop_namespaced::<DNSRecord>(client).await;
    drop_namespaced::<Tunnel>(client).await;
    drop_cluster::<ClusterTunnel>(client).await;
    drop_namespaced::<WARPConnector>(client).await;
    drop_cluster::<VirtualNetwork>(client).await;
    drop_cluster::<CloudflareCredentials>(client).await;
    drop_namespaced::<Ingress>(client).await;
    drop_namespaced::<HttpRoute>(client).await;
    drop_namespaced::<Gateway>(client).await;
    drop_cluster::<GatewayClass>(client).await;
}

async fn drop_namespaced<K>(client: &Client)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for object in Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let api = Api::<K>::namespaced(client.clone(), &object.namespace().unwrap());
        drop_one(&api, &object.name_any()).await;
    }
}

async fn drop_cluster<K>(client: &Client)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::all(client.clone());
    for object in api.list(&ListParams::default()).await.unwrap() {
        drop_one(&api, &object.name_any()).await;
    }
}

async fn drop_one<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = api.delete(name, &DeleteParams::default()).await;
}

fn live_tunnel(world: &World, name: &str) -> knit_tests::fake_cloudflare::FakeTunnel {
    world
        .fake
        .tunnels()
        .into_iter()
        .find(|t| t.name == name && !t.deleted)
        .unwrap_or_else(|| panic!("no live tunnel {name} in the fake"))
}

/// The seed's Ingress and Gateway API examples applied unchanged, a third
/// namespace joining the shared tunnel, then everything deleted.
#[tokio::test]
async fn seed_ingresses_and_http_route_share_cluster_tunnels() {
    let world = World::new().await;
    ready_service(&world.client, "app-namespace-1", "app1-service", 80).await;
    ready_service(&world.client, "app-namespace-2", "app2-service", 80).await;
    ready_service(&world.client, "api-namespace", "api-service", 8080).await;
    apply("examples/cloudflare/clustertunnel-ingress.yaml");
    apply("examples/cloudflare/clustertunnel-gateway.yaml");

    let shared = world.cluster_tunnel_ready("shared-tunnel", "True").await;
    let status = shared.status.clone().unwrap();
    assert_eq!(status.state, Some(TunnelState::Active));
    assert_eq!(status.account_id.as_deref(), Some(ACCOUNT));
    let id = status.tunnel_id.clone().unwrap();
    assert_eq!(live_tunnel(&world, "shared-k8s-tunnel").id, id);
    world
        .wait_hosts(&id, &["app1.example.com", "app2.example.com"])
        .await;
    let rules = world.rules(&id);
    assert!(rules.contains(&(
        Some("app1.example.com".into()),
        None,
        "http://app1-service.app-namespace-1.svc.cluster.local:80".into()
    )));
    assert_eq!(rules.last(), Some(&(None, None, "http_status:404".into())));
    world
        .wait_dns(&id, &["app1.example.com", "app2.example.com"])
        .await;
    assert!(
        world
            .fake
            .dns_records(&world.zone)
            .iter()
            .all(|r| r.proxied && r.comment.as_deref().is_some_and(|c| c.starts_with("knit:")))
    );
    let target = format!("{id}.cfargotunnel.com");
    for (namespace, name) in [
        ("app-namespace-1", "app1-ingress"),
        ("app-namespace-2", "app2-ingress"),
    ] {
        knit_tests::eventually("the Ingress load-balancer hostname", WAIT, || async {
            (world.ingress_hostname(namespace, name).await.as_deref() == Some(target.as_str()))
                .then_some(())
        })
        .await;
    }

    // cloudflared runs in knit's namespace with the token from its Secret.
    let deployments = Api::<Deployment>::namespaced(world.client.clone(), KNIT_NAMESPACE);
    let deployment = deployments
        .get("cloudflared-cluster-shared-tunnel")
        .await
        .unwrap();
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("cloudflare/cloudflared:2025.1.0")
    );
    let token_ref = container.env.as_ref().unwrap()[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    let secret = Api::<Secret>::namespaced(world.client.clone(), KNIT_NAMESPACE)
        .get(&token_ref.name)
        .await
        .unwrap();
    assert!(secret.data.unwrap().contains_key(&token_ref.key));

    // The HTTPRoute on its own ClusterTunnel, with its parent status.
    let gateway = world.cluster_tunnel_ready("gateway-tunnel", "True").await;
    let gateway_id = gateway.status.unwrap().tunnel_id.unwrap();
    world.wait_hosts(&gateway_id, &["api.example.com"]).await;
    let routes = Api::<HttpRoute>::namespaced(world.client.clone(), "api-namespace");
    knit_tests::eventually("HTTPRoute parent status Accepted", WAIT, || async {
        let route = routes.get("api-route").await.ok()?;
        let parent = route.status?["parents"].as_array()?.first()?.clone();
        (parent["controllerName"] == "knit.dev/cloudflare-tunnel"
            && parent["conditions"][0]["type"] == "Accepted"
            && parent["conditions"][0]["status"] == "True")
            .then_some(())
    })
    .await;

    // A path regex Go cannot compile is refused on its own HTTPRoute:
    // cloudflared would refuse the whole configuration, every route with it.
    let bad = r#"{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
  "metadata": {"name": "bad-regex", "namespace": "api-namespace",
    "annotations": {"cf-operator.io/tunnel": "gateway-tunnel"}},
  "spec": {"parentRefs": [{"name": "cloudflare-gateway", "kind": "Gateway"}],
    "hostnames": ["bad.example.com"], "rules": [{
    "matches": [{"path": {"type": "RegularExpression", "value": "/api/(?!internal)"}}],
    "backendRefs": [{"name": "api-service", "port": 8080}]}]}}"#;
    let output = knit_tests::kubectl(&["apply", "-f", "-"], Some(bad));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    knit_tests::eventually("the bad HTTPRoute refused as Invalid", WAIT, || async {
        let route = routes.get("bad-regex").await.ok()?;
        let parent = route.status?["parents"].as_array()?.first()?.clone();
        let conditions = parent["conditions"].as_array()?.clone();
        let accepted = conditions.iter().find(|c| c["type"] == "Accepted")?;
        (accepted["status"] == "False"
            && accepted["reason"] == "Invalid"
            && accepted["message"].as_str()?.contains("does not compile"))
        .then_some(())
    })
    .await;
    assert_eq!(
        world.rules(&gateway_id),
        [
            (
                Some("api.example.com".into()),
                None,
                "http://api-service.api-namespace.svc.cluster.local:8080".into()
            ),
            (None, None, "http_status:404".into()),
        ],
        "the good route is still served and the bad one never reached cloudflared"
    );
    routes
        .delete("bad-regex", &DeleteParams::default())
        .await
        .unwrap();

    // Someone edits the configuration in the dashboard: knit puts its own
    // back on the next resync.
    let dashboard = knit::providers::cloudflare::CloudflareClient::new(
        world.fake.endpoint(),
        knit::providers::cloudflare::ApiToken::new(TOKEN),
    )
    .unwrap();
    let edited: knit::providers::cloudflare::TunnelConfig = serde_json::from_value(json!({
        "ingress": [{"service": "http_status:503"}],
    }))
    .unwrap();
    dashboard
        .put_tunnel_configuration(ACCOUNT, &gateway_id, &edited)
        .await
        .unwrap();
    assert_eq!(world.rules(&gateway_id).len(), 1);
    world.wait_hosts(&gateway_id, &["api.example.com"]).await;
    assert_eq!(
        world.rules(&gateway_id).last(),
        Some(&(None, None, "http_status:404".into()))
    );

    // A third namespace joins: one more PUT, and cloudflared is not touched.
    let generation = deployment.metadata.generation;
    let version = world
        .cluster_tunnel("shared-tunnel")
        .await
        .status
        .unwrap()
        .config_version;
    let puts = world.fake.count("PUT", "cfd_tunnel/{id}/configurations");
    let third = knit_tests::fresh_namespace(&world.client, "app-namespace-3").await;
    ready_service(&world.client, &third, "app3-service", 80).await;
    ingress(
        &world.client,
        &third,
        "app3-ingress",
        "shared-tunnel",
        "app3.example.com",
        "app3-service",
    )
    .await;
    world
        .wait_hosts(
            &id,
            &["app1.example.com", "app2.example.com", "app3.example.com"],
        )
        .await;
    world
        .wait_dns(
            &id,
            &["app1.example.com", "app2.example.com", "app3.example.com"],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        world.fake.count("PUT", "cfd_tunnel/{id}/configurations"),
        puts + 1
    );
    let after = world.cluster_tunnel("shared-tunnel").await.status.unwrap();
    assert_eq!(after.config_version, version.map(|v| v + 1));
    assert_eq!(after.sources, Some(3));
    assert_eq!(
        deployments
            .get("cloudflared-cluster-shared-tunnel")
            .await
            .unwrap()
            .metadata
            .generation,
        generation,
        "a configuration change must not restart cloudflared"
    );

    // Everything goes; nothing stays behind in Cloudflare.
    Api::<Ingress>::namespaced(world.client.clone(), &third)
        .delete("app3-ingress", &DeleteParams::default())
        .await
        .unwrap();
    kubectl_delete("examples/cloudflare/clustertunnel-ingress.yaml");
    kubectl_delete("examples/cloudflare/clustertunnel-gateway.yaml");
    let tunnels = Api::<ClusterTunnel>::all(world.client.clone());
    all_gone(&tunnels, "the ClusterTunnels gone").await;
    assert!(
        world.fake.tunnels().iter().all(|t| t.deleted),
        "{:?}",
        world.fake.tunnels()
    );
    assert!(world.fake.dns_records(&world.zone).is_empty());
    assert!(
        deployments
            .get_opt("cloudflared-cluster-shared-tunnel")
            .await
            .unwrap()
            .is_none()
    );
}

/// knit's GatewayClass and Gateway (examples/cloudflare/gateway-api.yaml)
/// serve HTTPRoutes attached through `parentRefs` by the Gateway API's
/// rules, beside the seed's annotated route on the same ClusterTunnel. A
/// route its listener does not admit (by namespace label or hostname) is
/// refused with the Gateway API's reason; one whose parent is another
/// controller's Gateway or no Gateway at all is not served and gets no
/// entry of knit's, as the Gateway API has it. A missing backend is
/// `ResolvedRefs=False` (`BackendNotFound`). Relabelling a namespace admits
/// its route; deleting the Gateway takes its routes off the tunnel and
/// knit's entries off the routes.
#[tokio::test]
async fn gateway_api_routes_attach_through_knits_gateways() {
    let world = World::new().await;
    apply("examples/cloudflare/clustertunnel-gateway.yaml");
    apply("examples/cloudflare/gateway-api.yaml");
    ready_service(&world.client, "api-namespace", "api-service", 8080).await;
    ready_service(&world.client, "shop", "storefront", 8080).await;
    let outsider = "gateway-outsider";
    let _ = Api::<Namespace>::all(world.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": outsider}})).unwrap(),
        )
        .await;
    ready_service(&world.client, outsider, "storefront", 8080).await;
    let route =
        |namespace: &str, name: &str, host: &str, parent: serde_json::Value, backend: &str| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"parentRefs": [parent], "hostnames": [host],
                         "rules": [{"backendRefs": [{"name": backend, "port": 8080}]}]},
            })
        };
    let edge = json!({"name": "edge", "namespace": "edge-gateways", "sectionName": "web"});
    let objects = [
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "someone-else"},
               "spec": {"controllerName": "example.com/someone-else"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "foreign", "namespace": "edge-gateways",
                            "annotations": {"cf-operator.io/tunnel": "gateway-tunnel"}},
               "spec": {"gatewayClassName": "someone-else",
                        "listeners": [{"name": "web", "protocol": "HTTP", "port": 80,
                                       "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
        route(
            outsider,
            "backdoor",
            "backdoor.example.com",
            edge.clone(),
            "storefront",
        ),
        route(
            "shop",
            "off-domain",
            "shop.example.org",
            edge.clone(),
            "storefront",
        ),
        route(
            "shop",
            "no-backend",
            "gone.example.com",
            edge.clone(),
            "absent",
        ),
        route(
            outsider,
            "elsewhere",
            "elsewhere.example.com",
            json!({"name": "foreign", "namespace": "edge-gateways"}),
            "storefront",
        ),
        route(
            outsider,
            "orphan",
            "orphan.example.com",
            json!({"name": "nowhere", "namespace": "edge-gateways"}),
            "storefront",
        ),
    ];
    let documents: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
    let output = knit_tests::kubectl(&["apply", "-f", "-"], Some(&documents.join("\n---\n")));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let tunnel = world.cluster_tunnel_ready("gateway-tunnel", "True").await;
    let id = tunnel.status.unwrap().tunnel_id.unwrap();
    // Served: the seed's annotated route and the one attached through the
    // Gateway; nothing else reaches cloudflared.
    world
        .wait_hosts(&id, &["api.example.com", "shop.example.com"])
        .await;

    // What each route is told, by knit's entry: (Accepted, ResolvedRefs).
    let told = |namespace: &str, name: &str| {
        let routes = Api::<HttpRoute>::namespaced(world.client.clone(), namespace);
        let name = name.to_owned();
        async move {
            let route = routes.get(&name).await.ok()?;
            let parents = route.status?["parents"].as_array()?.clone();
            let ours = parents
                .iter()
                .find(|p| p["controllerName"] == "knit.dev/cloudflare-tunnel")?;
            let condition = |type_: &str| {
                let c = ours["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == type_)?;
                Some(format!(
                    "{}/{}",
                    c["status"].as_str()?,
                    c["reason"].as_str()?
                ))
            };
            Some((condition("Accepted")?, condition("ResolvedRefs")?))
        }
    };
    let expect = |namespace: &'static str,
                  name: &'static str,
                  accepted: &'static str,
                  resolved: &'static str| {
        let told = &told;
        async move {
            knit_tests::eventually(
                &format!("HTTPRoute {namespace}/{name} told {accepted}, {resolved}"),
                WAIT,
                || async {
                    (told(namespace, name).await? == (accepted.to_owned(), resolved.to_owned()))
                        .then_some(())
                },
            )
            .await
        }
    };
    expect("shop", "storefront", "True/Accepted", "True/ResolvedRefs").await;
    expect(
        outsider,
        "backdoor",
        "False/NotAllowedByListeners",
        "True/ResolvedRefs",
    )
    .await;
    expect(
        "shop",
        "off-domain",
        "False/NoMatchingListenerHostname",
        "True/ResolvedRefs",
    )
    .await;
    expect(
        "shop",
        "no-backend",
        "True/Accepted",
        "False/BackendNotFound",
    )
    .await;
    expect(
        "api-namespace",
        "api-route",
        "True/Accepted",
        "True/ResolvedRefs",
    )
    .await;
    // Another controller's Gateway, and one that does not exist: no entry
    // of knit's (the Gateway API leaves them to their controllers).
    assert_eq!(told(outsider, "elsewhere").await, None);
    assert_eq!(told(outsider, "orphan").await, None);
    assert_eq!(world.rules(&id).len(), 3, "{:?}", world.rules(&id));

    // The Gateway: accepted, programmed, its tunnel's address, and two
    // routes attached to `web` (a missing backend does not detach one).
    let gateways = Api::<Gateway>::namespaced(world.client.clone(), "edge-gateways");
    let address = format!("{id}.cfargotunnel.com");
    knit_tests::eventually("Gateway edge programmed with two routes", WAIT, || async {
        let status = gateways.get("edge").await.ok()?.status?;
        let condition = |type_: &str| {
            status["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == type_)
                .map(|c| c["status"] == "True")
        };
        let web = status["listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "web")?
            .clone();
        (condition("Accepted")?
            && condition("Programmed")?
            && status["addresses"] == json!([{"type": "Hostname", "value": address}])
            && web["attachedRoutes"] == 2
            && web["supportedKinds"]
                == json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]))
        .then_some(())
    })
    .await;
    let classes = Api::<GatewayClass>::all(world.client.clone());
    knit_tests::eventually("GatewayClass cloudflare-tunnel accepted", WAIT, || async {
        let status = classes.get("cloudflare-tunnel").await.ok()?.status?;
        (status["conditions"][0]["type"] == "Accepted"
            && status["conditions"][0]["status"] == "True")
            .then_some(())
    })
    .await;
    let theirs = classes
        .get("someone-else")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        theirs["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["status"] != "True"),
        "knit accepted another controller's class: {theirs}"
    );
    let foreign = gateways
        .get("foreign")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        foreign["addresses"].as_array().is_none_or(|a| a.is_empty()),
        "knit wrote another controller's Gateway: {foreign}"
    );

    // The outsider's namespace is labelled for the listener: its route
    // attaches.
    knit_tests::kubectl_ok(&[
        "label",
        "namespace",
        outsider,
        "edge.example.com/exposed=true",
    ]);
    world
        .wait_hosts(
            &id,
            &[
                "api.example.com",
                "shop.example.com",
                "backdoor.example.com",
            ],
        )
        .await;
    expect(outsider, "backdoor", "True/Accepted", "True/ResolvedRefs").await;

    // The Gateway goes: its routes leave the tunnel, and knit's entries
    // leave them; the annotated route stays.
    gateways
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    world.wait_hosts(&id, &["api.example.com"]).await;
    knit_tests::eventually("storefront's entry of knit's gone", WAIT, || async {
        told("shop", "storefront").await.is_none().then_some(())
    })
    .await;

    kubectl_delete("examples/cloudflare/gateway-api.yaml");
    kubectl_delete("examples/cloudflare/clustertunnel-gateway.yaml");
    all_gone(
        &Api::<ClusterTunnel>::all(world.client.clone()),
        "the ClusterTunnels gone",
    )
    .await;
}

/// A tunnel's `status.state` is written as it happens, so a watch sees each
/// one: `pending`, `creating` (the API answers slowly), `error` when the
/// create fails, `creating` again on the retry, `active`, and `deleting`
/// while it is torn down.
#[tokio::test]
async fn tunnel_states_are_written_as_they_happen() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    let world = World::new().await;
    let tunnels = Api::<ClusterTunnel>::all(world.client.clone());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TunnelState>::new()));
    let watch = {
        let seen = seen.clone();
        let stream = watcher(
            tunnels.clone(),
            watcher::Config::default().fields("metadata.name=lifecycle"),
        )
        .applied_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(tunnel)) = stream.next().await {
                let state = tunnel.status.and_then(|s| s.state);
                let mut seen = seen.lock().unwrap();
                if let Some(state) = state
                    && seen.last() != Some(&state)
                {
                    seen.push(state);
                }
            }
        })
    };
    // Give the watch its initial list before the object exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.fake.set_latency(Duration::from_millis(400));
    world
        .fake
        .fail_next("POST", "cfd_tunnel", 400, 1003, "Bad request", 1);
    let tunnel: ClusterTunnel = serde_json::from_value(json!({
        "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
        "kind": "ClusterTunnel",
        "metadata": {"name": "lifecycle"},
        "spec": {
            "newTunnel": {"name": "lifecycle-k8s"},
            "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": "cloudflare-api-credentials"},
        },
    }))
    .unwrap();
    tunnels
        .create(&PostParams::default(), &tunnel)
        .await
        .unwrap();
    world.cluster_tunnel_ready("lifecycle", "True").await;
    tunnels
        .delete("lifecycle", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&tunnels, "the tunnel gone").await;
    watch.abort();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            TunnelState::Pending,
            TunnelState::Creating,
            TunnelState::Error,
            TunnelState::Creating,
            TunnelState::Active,
            TunnelState::Deleting,
        ]
    );
    world.fake.set_latency(Duration::ZERO);
}

/// The seed's basic, HA and WARP-routing ClusterTunnels; the Ingress
/// example's tunnel has the basic one's Cloudflare name, so it is refused.
#[tokio::test]
async fn seed_cluster_tunnels_deploy_patch_warp_routing_and_a_taken_name() {
    let world = World::new().await;
    apply("examples/cloudflare/clustertunnel-basic.yaml");
    apply("examples/cloudflare/clustertunnel-ha.yaml");
    apply("examples/cloudflare/clustertunnel-warp-routing.yaml");
    let basic = world
        .cluster_tunnel_ready("shared-cluster-tunnel", "True")
        .await;
    world
        .cluster_tunnel_ready("ha-cluster-tunnel", "True")
        .await;
    let private = world
        .cluster_tunnel_ready("private-network-tunnel", "True")
        .await;

    let deployment = Api::<Deployment>::namespaced(world.client.clone(), KNIT_NAMESPACE)
        .get("cloudflared-cluster-ha-cluster-tunnel")
        .await
        .unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let affinity = spec.template.spec.unwrap().affinity.unwrap();
    assert!(affinity.pod_anti_affinity.is_some());

    let private_id = private.status.unwrap().tunnel_id.unwrap();
    let config = world.fake.tunnel_configuration(&private_id).unwrap();
    assert_eq!(config.config["warp-routing"]["enabled"], true);
    let basic_id = basic.status.unwrap().tunnel_id.unwrap();
    assert_eq!(
        world.fake.tunnel_configuration(&basic_id).unwrap().config["warp-routing"]["enabled"],
        false
    );

    apply("examples/cloudflare/clustertunnel-ingress.yaml");
    let refused = world.cluster_tunnel_ready("shared-tunnel", "False").await;
    let ready = ready_condition(&refused.status.as_ref().unwrap().conditions)
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "TunnelInUse");
    assert!(
        ready
            .message
            .contains("ClusterTunnel shared-cluster-tunnel"),
        "{}",
        ready.message
    );
    assert_eq!(
        world
            .fake
            .tunnels()
            .iter()
            .filter(|t| t.name == "shared-k8s-tunnel" && !t.deleted)
            .count(),
        1
    );
    kubectl_delete("examples/cloudflare/clustertunnel-ingress.yaml");
    for file in ["basic", "ha", "warp-routing"] {
        kubectl_delete(&format!("examples/cloudflare/clustertunnel-{file}.yaml"));
    }
    let tunnels = Api::<ClusterTunnel>::all(world.client.clone());
    all_gone(&tunnels, "the ClusterTunnels gone").await;
    assert!(world.fake.tunnels().iter().all(|t| t.deleted));
}

/// A namespaced Tunnel: another namespace's Ingress is refused, the younger
/// of two Ingresses for one host is the one told, a renamed host's old
/// record goes, and records knit did not make are never touched.
#[tokio::test]
async fn tunnel_namespace_conflicts_renames_and_foreign_records() {
    let world = World::new().await;
    let team = knit_tests::fresh_namespace(&world.client, "team").await;
    let other = knit_tests::fresh_namespace(&world.client, "other").await;
    token_secret(&world.client, &team, "cloudflare-api-credentials", TOKEN).await;
    world.fake.add_dns_record(
        &world.zone,
        "manual.example.com",
        "CNAME",
        "elsewhere.example.net",
        None,
    );
    world.fake.add_dns_record(
        &world.zone,
        "taken.example.com",
        "A",
        "192.0.2.1",
        Some("made by hand"),
    );
    let before_manual = world.fake.dns_records(&world.zone);
    let tunnels = create_tunnel(
        &world.client,
        &team,
        "team-tunnel",
        "cloudflare-api-credentials",
    )
    .await;
    ready_service(&world.client, &team, "web", 80).await;
    ready_service(&world.client, &team, "web2", 80).await;
    ready_service(&world.client, &other, "web", 80).await;
    ingress(
        &world.client,
        &team,
        "older",
        "team-tunnel",
        "a.example.com",
        "web",
    )
    .await;
    ingress(
        &world.client,
        &team,
        "site",
        "team-tunnel",
        "site.example.com",
        "web",
    )
    .await;
    ingress(
        &world.client,
        &team,
        "taken",
        "team-tunnel",
        "taken.example.com",
        "web",
    )
    .await;
    ingress(
        &world.client,
        &other,
        "foreign",
        &format!("{team}/team-tunnel"),
        "foreign.example.com",
        "web",
    )
    .await;
    // creationTimestamp has one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ingress(
        &world.client,
        &team,
        "younger",
        "team-tunnel",
        "a.example.com",
        "web2",
    )
    .await;

    let id = knit_tests::eventually("the Tunnel's id", WAIT, || async {
        tunnels.get("team-tunnel").await.ok()?.status?.tunnel_id
    })
    .await;
    world
        .wait_hosts(
            &id,
            &["a.example.com", "site.example.com", "taken.example.com"],
        )
        .await;
    assert!(world.rules(&id).contains(&(
        Some("a.example.com".into()),
        None,
        format!("http://web.{team}.svc.cluster.local:80")
    )));
    knit_tests::eventually("Conflict on the younger Ingress", WAIT, || async {
        world
            .event_reasons(&team, "younger")
            .await
            .contains(&"Conflict".to_string())
            .then_some(())
    })
    .await;
    knit_tests::eventually(
        "NamespaceNotAllowed on the foreign Ingress",
        WAIT,
        || async {
            world
                .event_reasons(&other, "foreign")
                .await
                .contains(&"NamespaceNotAllowed".to_string())
                .then_some(())
        },
    )
    .await;
    assert_eq!(world.ingress_hostname(&team, "younger").await, None);
    assert_eq!(world.ingress_hostname(&other, "foreign").await, None);

    // The hand-made record at taken.example.com is left alone and reported.
    let dns = knit_tests::eventually("DNSReady=False", WAIT, || async {
        let status = tunnels.get("team-tunnel").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DNSReady" && c.status == "False")
    })
    .await;
    assert_eq!(dns.reason, "RecordNotOwned");
    assert!(dns.message.contains("taken.example.com"), "{}", dns.message);
    world
        .wait_dns(&id, &["a.example.com", "site.example.com"])
        .await;

    // Renaming a host: the new record comes, the old goes.
    let mut site = Api::<Ingress>::namespaced(world.client.clone(), &team)
        .get("site")
        .await
        .unwrap();
    site.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host =
        Some("renamed.example.com".into());
    Api::<Ingress>::namespaced(world.client.clone(), &team)
        .replace("site", &PostParams::default(), &site)
        .await
        .unwrap();
    world
        .wait_dns(&id, &["a.example.com", "renamed.example.com"])
        .await;

    // Deleting the Tunnel removes what knit made, and only that.
    tunnels
        .delete("team-tunnel", &DeleteParams::default())
        .await
        .unwrap();
    knit_tests::eventually("the Tunnel gone", WAIT, || async {
        tunnels
            .get_opt("team-tunnel")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(world.fake.dns_records(&world.zone), before_manual);
    assert!(world.fake.tunnels().iter().all(|t| t.deleted));
}

/// The seed's cloudflare-warp Ingress: the legacy class alone, without a
/// tunnel annotation, is served by its namespace's one Tunnel and never by
/// another namespace's, and its route is published only while its Service
/// has ready endpoints.
#[tokio::test]
async fn legacy_ingress_class_is_served_in_its_namespace_while_endpoints_are_ready() {
    let world = World::new().await;
    let legacy = knit_tests::fresh_namespace(&world.client, "legacy").await;
    let elsewhere = knit_tests::fresh_namespace(&world.client, "elsewhere").await;
    token_secret(&world.client, &legacy, "cloudflare-api-credentials", TOKEN).await;
    let tunnels = create_tunnel(&world.client, &legacy, "warp", "cloudflare-api-credentials").await;
    ready_service(&world.client, &legacy, "web", 80).await;
    ready_service(&world.client, &elsewhere, "web", 80).await;
    for (namespace, name, host) in [
        (&legacy, "site", "legacy.example.com"),
        (&elsewhere, "stray", "stray.example.com"),
    ] {
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"kubernetes.io/ingress.class": "cloudflare-warp"}},
            "spec": {"rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}},
            }]}}]},
        }))
        .unwrap();
        Api::<Ingress>::namespaced(world.client.clone(), namespace)
            .create(&PostParams::default(), &ingress)
            .await
            .unwrap();
    }
    let id = knit_tests::eventually("the Tunnel's id", WAIT, || async {
        tunnels.get("warp").await.ok()?.status?.tunnel_id
    })
    .await;
    world.wait_hosts(&id, &["legacy.example.com"]).await;
    assert!(world.rules(&id).contains(&(
        Some("legacy.example.com".into()),
        None,
        format!("http://web.{legacy}.svc.cluster.local:80")
    )));
    world.wait_dns(&id, &["legacy.example.com"]).await;
    knit_tests::eventually("the Ingress's address", WAIT, || async {
        world.ingress_hostname(&legacy, "site").await
    })
    .await;

    // The endpoints go not ready, come back, then go altogether.
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
        world.client.clone(),
        &legacy,
    );
    let readiness = |ready: bool| {
        Patch::Merge(json!({
            "endpoints": [{"addresses": ["10.1.0.10"], "conditions": {"ready": ready}}],
        }))
    };
    slices
        .patch("web-1", &PatchParams::default(), &readiness(false))
        .await
        .unwrap();
    world.wait_hosts(&id, &[]).await;
    slices
        .patch("web-1", &PatchParams::default(), &readiness(true))
        .await
        .unwrap();
    world.wait_hosts(&id, &["legacy.example.com"]).await;
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    world.wait_hosts(&id, &[]).await;
    assert_eq!(world.ingress_hostname(&elsewhere, "stray").await, None);
    tunnels
        .delete("warp", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&tunnels, "the Tunnel gone").await;
}

/// Two clusters on one Cloudflare account and zone, each with its own knit
/// and cluster id: neither touches the other's tunnel, DNS records or
/// routes, not for a host both ask for, nor when one deletes its objects.
#[tokio::test]
async fn two_clusters_on_one_account_leave_each_other_alone() {
    let world = World::new().await;
    let second = knit_tests::other_cluster_client().await;
    clear_leftovers(&second).await;
    for client in [&world.client, &second] {
        for namespace in [KNIT_NAMESPACE, "shop"] {
            let _ = Api::<Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
                )
                .await;
        }
    }
    token_secret(&second, KNIT_NAMESPACE, "cloudflare-api-credentials", TOKEN).await;
    let _second_knit = start_cloudflare(
        knit_tests::other_cluster(),
        world.fake.endpoint(),
        "second-cluster",
    );
    let tunnel = |name: &str| -> ClusterTunnel {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "ClusterTunnel",
            "metadata": {"name": "edge"},
            "spec": {
                "newTunnel": {"name": name},
                "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": "cloudflare-api-credentials"},
            },
        }))
        .unwrap()
    };
    let route = |network: &str| -> NetworkRoute {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "NetworkRoute",
            "metadata": {"name": "lan"},
            "spec": {
                "network": network,
                "tunnelRef": {"name": "edge"},
                "cloudflare": {"accountId": ACCOUNT, "secret": "cloudflare-api-credentials"},
            },
        }))
        .unwrap()
    };
    let mut ids = Vec::new();
    for (client, name, host, network) in [
        (
            &world.client,
            "edge-first",
            "first.example.com",
            "10.10.0.0/16",
        ),
        (&second, "edge-second", "second.example.com", "10.20.0.0/16"),
    ] {
        let tunnels = Api::<ClusterTunnel>::all(client.clone());
        tunnels
            .create(&PostParams::default(), &tunnel(name))
            .await
            .unwrap();
        Api::<NetworkRoute>::all(client.clone())
            .create(&PostParams::default(), &route(network))
            .await
            .unwrap();
        ready_service(client, "shop", "web", 80).await;
        ingress(client, "shop", "site", "edge", host, "web").await;
        let (edge, _) = wait_ready(&tunnels, "edge", "True", |t: &ClusterTunnel| {
            Some(t.status.as_ref()?.conditions.clone())
        })
        .await;
        let id = edge.status.unwrap().tunnel_id.unwrap();
        world.wait_dns(&id, &[host]).await;
        ids.push(id);
    }
    let (first_id, second_id) = (&ids[0], &ids[1]);

    // A host both clusters serve: the first to publish it keeps it.
    ingress(
        &world.client,
        "shop",
        "shared",
        "edge",
        "shared.example.com",
        "web",
    )
    .await;
    world
        .wait_dns(first_id, &["first.example.com", "shared.example.com"])
        .await;
    ingress(
        &second,
        "shop",
        "shared",
        "edge",
        "shared.example.com",
        "web",
    )
    .await;
    let second_tunnels = Api::<ClusterTunnel>::all(second.clone());
    let dns = knit_tests::eventually("DNSReady=False on the second cluster", WAIT, || async {
        let status = second_tunnels.get("edge").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DNSReady" && c.status == "False")
    })
    .await;
    assert_eq!(dns.reason, "RecordNotOwned");
    assert!(
        dns.message.contains("shared.example.com"),
        "{}",
        dns.message
    );
    let routes_of = |tunnel_id: &str| -> Vec<String> {
        let mut networks: Vec<String> = world
            .fake
            .routes()
            .into_iter()
            .filter(|r| r.tunnel_id == tunnel_id)
            .map(|r| r.network)
            .collect();
        networks.sort();
        networks
    };
    knit_tests::eventually("both clusters' routes", WAIT, || async {
        (routes_of(first_id) == ["10.10.0.0/16"] && routes_of(second_id) == ["10.20.0.0/16"])
            .then_some(())
    })
    .await;

    // The second cluster deletes everything it made, and only that.
    Api::<NetworkRoute>::all(second.clone())
        .delete("lan", &DeleteParams::default())
        .await
        .unwrap();
    second_tunnels
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&second_tunnels, "the second cluster's tunnel gone").await;
    let live = |id: &str| {
        world
            .fake
            .tunnels()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
    };
    assert!(live(second_id).deleted);
    assert!(!live(first_id).deleted);
    assert_eq!(world.dns_names(second_id), BTreeSet::new());
    assert_eq!(
        world.dns_names(first_id),
        BTreeSet::from(["first.example.com".into(), "shared.example.com".into()])
    );
    assert_eq!(routes_of(first_id), ["10.10.0.0/16"]);
    assert!(routes_of(second_id).is_empty());
    world
        .wait_hosts(first_id, &["first.example.com", "shared.example.com"])
        .await;
}

/// cloudflared's origin settings: the tunnel's `originRequest` as the
/// configuration's defaults, a source's `origin.cf-operator.io/*`
/// annotations on its own rules, and backends spoken to over HTTPS or SSH by
/// their Service port. A bad setting refuses its source alone; bad
/// durations never pass admission.
#[tokio::test]
async fn origin_settings_and_schemes_reach_cloudflared() {
    let world = World::new().await;
    let team = knit_tests::fresh_namespace(&world.client, "origin").await;
    token_secret(&world.client, &team, "cloudflare-api-credentials", TOKEN).await;
    let tunnels = Api::<Tunnel>::namespaced(world.client.clone(), &team);
    let tunnel = |timeout: &str| {
        json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "Tunnel",
            // No EndpointSlices here: publish backends without ready ones.
            "metadata": {"name": "edge", "annotations": {"tunnel.knit.dev/withhold-unready": "false"}},
            "spec": {
                "newTunnel": {"name": format!("{team}-edge")},
                "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": "cloudflare-api-credentials"},
                "originRequest": {"connectTimeout": timeout, "http2Origin": true},
            },
        })
    };
    for (bad, why) in [("30", "should match"), ("25h", "at most a day")] {
        let error = refused(&tunnels, tunnel(bad)).await;
        assert!(error.contains(why), "{bad}: {error}");
    }
    tunnels
        .create(
            &PostParams::default(),
            &serde_json::from_value(tunnel("30s")).unwrap(),
        )
        .await
        .unwrap();
    let services =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(world.client.clone(), &team);
    for (name, port) in [
        ("pay", json!({"name": "https", "port": 443})),
        (
            "git",
            json!({"name": "shell", "port": 22, "appProtocol": "ssh"}),
        ),
    ] {
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name}, "spec": {"ports": [port]}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let ingresses = Api::<Ingress>::namespaced(world.client.clone(), &team);
    for (name, host, service, port, annotations) in [
        (
            "pay",
            "pay.example.com",
            "pay",
            443,
            json!({
                "origin.cf-operator.io/noTLSVerify": "true",
                "origin.cf-operator.io/originServerName": "pay.internal",
                "origin.cf-operator.io/keepAliveTimeout": "2m",
            }),
        ),
        ("git", "git.example.com", "git", 22, json!({})),
        (
            "typo",
            "typo.example.com",
            "pay",
            443,
            json!({"origin.cf-operator.io/noTlsVerify": "true"}),
        ),
    ] {
        let mut annotations = annotations;
        annotations["cf-operator.io/tunnel"] = json!("edge");
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "ingressClassName": "cloudflare-tunnel",
                "rules": [{"host": host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": {"number": port}}},
                }]}}],
            },
        }))
        .unwrap();
        ingresses
            .create(&PostParams::default(), &ingress)
            .await
            .unwrap();
    }
    let id = knit_tests::eventually("the Tunnel's id", WAIT, || async {
        tunnels.get("edge").await.ok()?.status?.tunnel_id
    })
    .await;
    world
        .wait_hosts(&id, &["git.example.com", "pay.example.com"])
        .await;
    let config = world.fake.tunnel_configuration(&id).unwrap().config;
    assert_eq!(
        config["originRequest"],
        json!({"connectTimeout": 30, "http2Origin": true})
    );
    let rules: Vec<(&str, &str, &serde_json::Value)> = config["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["hostname"].as_str().unwrap_or("*"),
                r["service"].as_str().unwrap(),
                &r["originRequest"],
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            (
                "git.example.com",
                format!("ssh://git.{team}.svc.cluster.local:22").as_str(),
                &serde_json::Value::Null
            ),
            (
                "pay.example.com",
                format!("https://pay.{team}.svc.cluster.local:443").as_str(),
                &json!({"noTLSVerify": true, "originServerName": "pay.internal", "keepAliveTimeout": 120})
            ),
            ("*", "http_status:404", &serde_json::Value::Null),
        ]
    );
    knit_tests::eventually("Invalid on the misspelt Ingress", WAIT, || async {
        world
            .event_reasons(&team, "typo")
            .await
            .contains(&"Invalid".to_string())
            .then_some(())
    })
    .await;
    tunnels
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&tunnels, "the Tunnel gone").await;
}

/// `existingTunnel` by `id` and by `name`: the tunnel made elsewhere is
/// adopted and served, and left in Cloudflare when its object goes (the DNS
/// records knit made for it go); one that does not exist is reported.
#[tokio::test]
async fn existing_tunnels_are_adopted_served_and_left_in_place() {
    let world = World::new().await;
    let by_id = world.fake.add_tunnel(ACCOUNT, "made-by-hand-1");
    let by_name = world.fake.add_tunnel(ACCOUNT, "made-by-hand-2");
    let tunnels = Api::<ClusterTunnel>::all(world.client.clone());
    let adopt = |name: &str, existing: serde_json::Value| -> ClusterTunnel {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "ClusterTunnel",
            "metadata": {"name": name},
            "spec": {
                "existingTunnel": existing,
                "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": "cloudflare-api-credentials"},
            },
        }))
        .unwrap()
    };
    for (name, existing) in [
        ("adopt-by-id", json!({"id": by_id})),
        ("adopt-by-name", json!({"name": "made-by-hand-2"})),
        ("adopt-missing", json!({"name": "never-made"})),
    ] {
        tunnels
            .create(&PostParams::default(), &adopt(name, existing))
            .await
            .unwrap();
    }
    let namespace = knit_tests::fresh_namespace(&world.client, "adopted").await;
    ready_service(&world.client, &namespace, "web", 80).await;
    for (tunnel, host) in [
        ("adopt-by-id", "one.example.com"),
        ("adopt-by-name", "two.example.com"),
    ] {
        ingress(&world.client, &namespace, tunnel, tunnel, host, "web").await;
    }
    for (name, id, host) in [
        ("adopt-by-id", &by_id, "one.example.com"),
        ("adopt-by-name", &by_name, "two.example.com"),
    ] {
        let tunnel = world.cluster_tunnel_ready(name, "True").await;
        assert_eq!(tunnel.status.unwrap().tunnel_id.as_ref(), Some(id));
        world.wait_hosts(id, &[host]).await;
        world.wait_dns(id, &[host]).await;
    }
    let missing = world.cluster_tunnel_ready("adopt-missing", "False").await;
    let ready = ready_condition(&missing.status.unwrap().conditions)
        .unwrap()
        .clone();
    assert!(ready.message.contains("never-made"), "{}", ready.message);

    for name in ["adopt-by-id", "adopt-by-name", "adopt-missing"] {
        tunnels
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    all_gone(&tunnels, "the ClusterTunnels gone").await;
    for (id, name) in [(&by_id, "made-by-hand-1"), (&by_name, "made-by-hand-2")] {
        assert_eq!(&live_tunnel(&world, name).id, id);
        assert_eq!(world.dns_names(id), BTreeSet::new());
    }
}

/// A Tunnel whose Secret is missing says so, then recovers once it exists;
/// rate limiting on the way is waited out.
#[tokio::test]
async fn missing_credentials_then_rate_limits() {
    let world = World::new().await;
    let namespace = knit_tests::fresh_namespace(&world.client, "creds").await;
    let tunnels = create_tunnel(&world.client, &namespace, "t", "absent").await;
    let condition = knit_tests::eventually("Ready=False", WAIT, || async {
        let status = tunnels.get("t").await.ok()?.status?;
        ready_condition(&status.conditions).cloned()
    })
    .await;
    assert_eq!(condition.status, "False");
    assert_eq!(condition.reason, "CredentialsError");
    assert_eq!(
        condition.message,
        format!("Secret {namespace}/absent not found")
    );
    assert!(world.fake.tunnels().is_empty());

    world.fake.rate_limit_next(3, 1);
    token_secret(&world.client, &namespace, "absent", TOKEN).await;
    knit_tests::eventually("Ready=True", WAIT, || async {
        let status = tunnels.get("t").await.ok()?.status?;
        (ready_condition(&status.conditions)?.status == "True").then_some(())
    })
    .await;
    assert_eq!(world.fake.rate_limited(), 3);
    tunnels.delete("t", &DeleteParams::default()).await.unwrap();
    knit_tests::eventually("the Tunnel gone", WAIT, || async {
        tunnels.get_opt("t").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(world.fake.tunnels().iter().all(|t| t.deleted));
}

/// The seed's WARPConnector examples: connectors, Deployments, routes in
/// the right virtual network; the HA example's network is already routed by
/// the basic one, which is refused clearly; deleting removes it all.
#[tokio::test]
async fn seed_warp_connectors_advertise_routes() {
    let world = World::new().await;
    token_secret(
        &world.client,
        KNIT_NAMESPACE,
        "production-cloudflare-token",
        WARP_TOKEN,
    )
    .await;
    apply("examples/cloudflare/backends.yaml");
    apply("examples/cloudflare/warpconnector-basic.yaml");
    apply("examples/cloudflare/warpconnector-multi-route.yaml");
    let connectors = Api::<WARPConnector>::namespaced(world.client.clone(), "production");
    let ready = |name: &'static str, want: &'static str| {
        let connectors = connectors.clone();
        async move {
            knit_tests::eventually(
                &format!("WARPConnector {name} Ready={want}"),
                WAIT,
                || async {
                    let connector = connectors.get(name).await.ok()?;
                    let condition =
                        ready_condition(&connector.status.as_ref()?.conditions)?.clone();
                    (condition.status == want).then_some((connector, condition))
                },
            )
            .await
        }
    };
    let (basic, _) = ready("main-connector", "True").await;
    let (multi, _) = ready("multi-route-connector", "True").await;
    let vnet = Api::<VirtualNetwork>::all(world.client.clone())
        .get("production-vnet")
        .await
        .unwrap()
        .status
        .unwrap()
        .virtual_network_id
        .unwrap();
    let multi_status = multi.status.unwrap();
    assert_eq!(
        multi_status.virtual_network_id.as_deref(),
        Some(vnet.as_str())
    );
    let multi_id = multi_status.connector_id.unwrap();
    let routes = world.fake.routes();
    let networks: BTreeSet<_> = routes
        .iter()
        .filter(|r| r.tunnel_id == multi_id)
        .map(|r| (r.network.clone(), r.virtual_network_id.clone()))
        .collect();
    assert_eq!(
        networks,
        ["10.0.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]
            .into_iter()
            .map(|n| (n.to_string(), vnet.clone()))
            .collect()
    );
    assert!(
        routes
            .iter()
            .any(|r| r.comment.ends_with("Production servers"))
    );
    let basic_id = basic.status.unwrap().connector_id.unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.tunnel_id == basic_id && r.network == "10.0.0.0/8")
    );

    apply("examples/cloudflare/warpconnector-ha.yaml");
    let (_, refused) = ready("ha-connector", "False").await;
    assert_eq!(refused.reason, "RouteRefused");
    assert!(
        refused.message.contains("10.0.0.0/8"),
        "{}",
        refused.message
    );
    let deployment = Api::<Deployment>::namespaced(world.client.clone(), "production")
        .get("warp-ha-connector")
        .await
        .unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(4));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("warp-connector-sa")
    );
    assert_eq!(pod.node_selector.unwrap()["node-type"], "connector");
    assert_eq!(
        pod.tolerations.unwrap()[0].value.as_deref(),
        Some("connector")
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("cloudflare/cloudflared:2024.1.0")
    );
    // The WARP client in connector mode, with its token, a TUN device,
    // NET_ADMIN and forwarding; the seed's cloudflared image is reported.
    let container = &pod.containers[0];
    let script = container.command.clone().unwrap().join(" ");
    assert!(
        script.contains("warp-cli --accept-tos connector new \"$WARP_CONNECTOR_TOKEN\""),
        "{script}"
    );
    let token = container.env.as_ref().unwrap()[0].clone();
    assert_eq!(token.name, "WARP_CONNECTOR_TOKEN");
    let reference = token.value_from.unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        ("warp-ha-connector", "token")
    );
    let capabilities = container
        .security_context
        .clone()
        .unwrap()
        .capabilities
        .unwrap();
    assert_eq!(capabilities.add.unwrap(), ["NET_ADMIN"]);
    let tun = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tun")
        .unwrap();
    assert_eq!(tun.host_path.as_ref().unwrap().path, "/dev/net/tun");
    assert_eq!(
        pod.security_context.clone().unwrap().sysctls.unwrap()[0].name,
        "net.ipv4.ip_forward"
    );
    let connector = Api::<WARPConnector>::namespaced(world.client.clone(), "production")
        .get("ha-connector")
        .await
        .unwrap();
    let image = connector
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ImageCanServe")
        .unwrap();
    assert_eq!(
        (image.status.as_str(), image.reason.as_str()),
        ("False", "CloudflaredImage")
    );
    let resources = pod.containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["memory"].0, "512Mi");
    assert_eq!(resources.limits.unwrap()["memory"].0, "1Gi");

    // An affinity given later reaches the pods.
    let connectors_in_production =
        Api::<WARPConnector>::namespaced(world.client.clone(), "production");
    connectors_in_production
        .patch(
            "ha-connector",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"affinity": {"podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app": "warp-ha-connector"}}},
                }],
            }}}})),
        )
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(world.client.clone(), "production");
    knit_tests::eventually("the affinity on the connector pods", WAIT, || async {
        let deployment = deployments.get("warp-ha-connector").await.ok()?;
        let affinity = deployment.spec?.template.spec?.affinity?;
        let terms = affinity
            .pod_anti_affinity?
            .preferred_during_scheduling_ignored_during_execution?;
        (terms[0].pod_affinity_term.topology_key == "kubernetes.io/hostname").then_some(())
    })
    .await;

    // The Deployment's rollout shows in the connector's status (there is
    // no kubelet here: the test writes what the controller manager would).
    deployments
        .patch_status(
            "warp-main-connector",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}})),
        )
        .await
        .unwrap();
    let status = knit_tests::eventually("main-connector's replicas", WAIT, || async {
        let status = connectors_in_production
            .get("main-connector")
            .await
            .ok()?
            .status?;
        (status.replicas == Some(2) && status.ready_replicas == Some(1)).then_some(status)
    })
    .await;
    assert_eq!(status.state, Some(TunnelState::Active));
    assert_eq!(status.account_id.as_deref(), Some(WARP_ACCOUNT));
    assert_eq!(status.connector_id.as_deref(), Some(basic_id.as_str()));

    for file in [
        "warpconnector-ha",
        "warpconnector-multi-route",
        "warpconnector-basic",
    ] {
        kubectl_delete(&format!("examples/cloudflare/{file}.yaml"));
    }
    all_gone(&connectors, "the WARPConnectors gone").await;
    kubectl_delete("examples/cloudflare/backends.yaml");
    knit_tests::eventually("the VirtualNetwork gone", WAIT, || async {
        Api::<VirtualNetwork>::all(world.client.clone())
            .get_opt("production-vnet")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(world.fake.routes().is_empty(), "{:?}", world.fake.routes());
    assert!(world.fake.warp_connectors().iter().all(|t| t.deleted));
    assert!(
        world
            .fake
            .virtual_networks()
            .iter()
            .all(|n| n.is_default_network)
    );
}

/// Waits for an object's `Ready` condition to have `status` for its current
/// generation, and returns the object and the condition.
async fn wait_ready<K>(
    api: &Api<K>,
    name: &str,
    status: &str,
    conditions: impl Fn(&K) -> Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> (K, k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    knit_tests::eventually(&format!("{name} Ready={status}"), WAIT, || async {
        let object = api.get(name).await.ok()?;
        let conditions = conditions(&object)?;
        let ready = ready_condition(&conditions)?.clone();
        (ready.status == status && ready.observed_generation == object.meta().generation)
            .then_some((object, ready))
    })
    .await
}

async fn route_ready(
    world: &World,
    name: &str,
    status: &str,
) -> (
    NetworkRoute,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    let api = Api::<NetworkRoute>::all(world.client.clone());
    wait_ready(&api, name, status, |r: &NetworkRoute| {
        Some(r.status.as_ref()?.conditions.clone())
    })
    .await
}

async fn record_ready(
    world: &World,
    name: &str,
    status: &str,
) -> (
    DNSRecord,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    let api = Api::<DNSRecord>::namespaced(world.client.clone(), "production");
    wait_ready(&api, name, status, |r: &DNSRecord| {
        Some(r.status.as_ref()?.conditions.clone())
    })
    .await
}

/// Creates an object from JSON and returns the API server's refusal.
async fn refused<K>(api: &Api<K>, object: serde_json::Value) -> String
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => panic!(
            "the API server accepted {}",
            object.meta().name.clone().unwrap_or_default()
        ),
        Err(error) => error.to_string(),
    }
}

/// NetworkRoutes through the warp-routing seed ClusterTunnel: in the default
/// and in a named virtual network, a network already routed refused, a
/// missing tunnel reported, a route moved to another tunnel, and the tunnel
/// deleted under its routes.
#[tokio::test]
async fn network_routes_follow_their_tunnel() {
    let world = World::new().await;
    apply("examples/cloudflare/clustertunnel-warp-routing.yaml");
    apply("examples/cloudflare/clustertunnel-basic.yaml");
    apply("examples/cloudflare/networkroutes.yaml");
    let private = world
        .cluster_tunnel_ready("private-network-tunnel", "True")
        .await;
    let private_id = private.status.unwrap().tunnel_id.unwrap();
    let (pods, _) = route_ready(&world, "cluster-pods", "True").await;
    let (office, _) = route_ready(&world, "office-lan", "True").await;
    let default_vnet = world
        .fake
        .virtual_networks()
        .into_iter()
        .find(|n| n.account_id == ACCOUNT && n.is_default_network)
        .unwrap()
        .id;
    let office_vnet = Api::<VirtualNetwork>::all(world.client.clone())
        .get("office-vnet")
        .await
        .unwrap()
        .status
        .unwrap()
        .virtual_network_id
        .unwrap();
    let routes: BTreeSet<_> = world
        .fake
        .routes()
        .into_iter()
        .map(|r| (r.network, r.tunnel_id, r.virtual_network_id))
        .collect();
    assert_eq!(
        routes,
        BTreeSet::from([
            (
                "10.20.0.0/16".into(),
                private_id.clone(),
                default_vnet.clone()
            ),
            (
                "192.168.50.0/24".into(),
                private_id.clone(),
                office_vnet.clone()
            ),
        ])
    );
    let pods_status = pods.status.unwrap();
    assert_eq!(pods_status.tunnel_id.as_deref(), Some(private_id.as_str()));
    assert_eq!(
        pods_status.tunnel_name.as_deref(),
        Some("cluster-private-tunnel")
    );
    assert_eq!(pods_status.state, Some(TunnelState::Active));
    let pods_route = pods_status.route_id.unwrap();
    assert!(
        world
            .fake
            .routes()
            .iter()
            .any(|r| r.id == pods_route && r.comment.ends_with("Cluster pod network"))
    );
    assert_eq!(
        office.status.unwrap().virtual_network_id.as_deref(),
        Some(office_vnet.as_str())
    );

    // The same network again in the default virtual network: refused by
    // Cloudflare, reported, and the first route untouched.
    let routes_api = Api::<NetworkRoute>::all(world.client.clone());
    let route = |name: &str, network: &str, tunnel: &str| -> NetworkRoute {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "NetworkRoute",
            "metadata": {"name": name},
            "spec": {
                "network": network,
                "tunnelRef": {"name": tunnel},
                "cloudflare": {"accountId": ACCOUNT, "secret": "cloudflare-api-credentials"},
            },
        }))
        .unwrap()
    };
    let shared_id = world
        .cluster_tunnel_ready("shared-cluster-tunnel", "True")
        .await
        .status
        .unwrap()
        .tunnel_id
        .unwrap();
    routes_api
        .create(
            &PostParams::default(),
            &route("pods-again", "10.20.0.0/16", "shared-cluster-tunnel"),
        )
        .await
        .unwrap();
    let (_, again) = route_ready(&world, "pods-again", "False").await;
    assert_eq!(again.reason, "RouteRefused");
    assert!(again.message.contains("10.20.0.0/16"), "{}", again.message);

    // A tunnel that does not exist.
    routes_api
        .create(
            &PostParams::default(),
            &route("nowhere", "10.30.0.0/16", "no-such-tunnel"),
        )
        .await
        .unwrap();
    let (_, nowhere) = route_ready(&world, "nowhere", "False").await;
    assert_eq!(nowhere.reason, "TunnelNotFound");
    assert!(
        nowhere.message.contains("ClusterTunnel no-such-tunnel"),
        "{}",
        nowhere.message
    );

    // Bad input stops at the API server.
    let message = refused(
        &routes_api,
        serde_json::to_value(route("sloppy", "10.20.1.0/16", "shared-cluster-tunnel")).unwrap(),
    )
    .await;
    assert!(message.contains("first address"), "{message}");
    let mut namespaced = serde_json::to_value(route("no-ns", "10.40.0.0/16", "t")).unwrap();
    namespaced["spec"]["tunnelRef"]["kind"] = json!("Tunnel");
    let message = refused(&routes_api, namespaced).await;
    assert!(message.contains("named with its namespace"), "{message}");

    // The duplicate gone, the pod network moves to the basic tunnel.
    routes_api
        .delete("pods-again", &DeleteParams::default())
        .await
        .unwrap();
    routes_api
        .patch(
            "cluster-pods",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tunnelRef": {"name": "shared-cluster-tunnel"}}})),
        )
        .await
        .unwrap();
    knit_tests::eventually("10.20.0.0/16 through the basic tunnel", WAIT, || async {
        let routes = world.fake.routes();
        let pods: Vec<_> = routes
            .iter()
            .filter(|r| r.network == "10.20.0.0/16")
            .collect();
        (pods.len() == 1 && pods[0].tunnel_id == shared_id).then_some(())
    })
    .await;

    // Deleting the warp-routing tunnel withdraws the office route first, so
    // Cloudflare lets the tunnel go.
    kubectl_delete("examples/cloudflare/clustertunnel-warp-routing.yaml");
    let (_, orphan) = route_ready(&world, "office-lan", "False").await;
    assert_eq!(orphan.reason, "TunnelNotFound");
    knit_tests::eventually("the warp-routing tunnel deleted", WAIT, || async {
        world
            .fake
            .tunnels()
            .iter()
            .any(|t| t.id == private_id && t.deleted)
            .then_some(())
    })
    .await;
    assert!(
        world
            .fake
            .routes()
            .iter()
            .all(|r| r.tunnel_id != private_id)
    );

    kubectl_delete("examples/cloudflare/networkroutes.yaml");
    routes_api
        .delete("nowhere", &DeleteParams::default())
        .await
        .unwrap();
    all_gone(&routes_api, "the NetworkRoutes gone").await;
    assert!(world.fake.routes().is_empty(), "{:?}", world.fake.routes());
    kubectl_delete("examples/cloudflare/clustertunnel-basic.yaml");
}

/// The DNSRecord examples: static A and TXT records, a LoadBalancer
/// Service's addresses followed as they change, a node's address kept after
/// the node (Orphan), a name held by someone else left alone, a rename, the
/// source deleted, and everything deleted.
#[tokio::test]
async fn dns_records_publish_static_and_source_addresses() {
    let world = World::new().await;
    token_secret(
        &world.client,
        "production",
        "cloudflare-api-credentials",
        TOKEN,
    )
    .await;
    let foreign = world.fake.add_dns_record(
        &world.zone,
        "taken.example.com",
        "CNAME",
        "elsewhere.example.net",
        Some("made by hand"),
    );
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(world.client.clone());
    let _ = nodes.delete("edge-node-1", &DeleteParams::default()).await;
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "edge-node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "edge-node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.4"},
                {"type": "ExternalIP", "address": "198.51.100.4"},
            ]}})),
        )
        .await
        .unwrap();
    apply("examples/cloudflare/dnsrecords.yaml");
    let records = |name: &str| -> BTreeSet<(String, String)> {
        world
            .fake
            .dns_records(&world.zone)
            .into_iter()
            .filter(|r| r.name == name)
            .map(|r| (r.r#type, r.content))
            .collect()
    };
    let pair = |t: &str, c: &str| (t.to_owned(), c.to_owned());

    // Static records, with the mark and the user's comment.
    let (www, _) = record_ready(&world, "www", "True").await;
    let www_status = www.status.unwrap();
    assert_eq!(www_status.fqdn.as_deref(), Some("www.example.com"));
    assert_eq!(
        records("www.example.com"),
        BTreeSet::from([pair("A", "203.0.113.50")])
    );
    let www_record = world
        .fake
        .dns_records(&world.zone)
        .into_iter()
        .find(|r| r.name == "www.example.com")
        .unwrap();
    assert!(www_record.proxied);
    assert!(www_record.comment.as_deref().unwrap().starts_with("knit:"));
    assert!(
        www_record
            .comment
            .as_deref()
            .unwrap()
            .ends_with("Web front")
    );
    assert_eq!(
        www_status.record_id.as_deref(),
        Some(www_record.id.as_str())
    );
    record_ready(&world, "site-verification", "True").await;
    assert_eq!(
        records("example.com"),
        BTreeSet::from([pair("TXT", "site-verification=3f9a1c")])
    );

    // The node's external address.
    record_ready(&world, "edge-node", "True").await;
    assert_eq!(
        records("node1.example.com"),
        BTreeSet::from([pair("A", "198.51.100.4")])
    );

    // The Service has no address yet: pending, nothing published.
    let (_, pending) = record_ready(&world, "edge-lb", "False").await;
    assert_eq!(pending.reason, "NoAddress");
    assert!(records("edge.example.com").is_empty());
    let services =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(world.client.clone(), "production");
    let balance = |ips: &[&str]| {
        json!({"status": {"loadBalancer": {"ingress":
            ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}}})
    };
    services
        .patch_status(
            "edge-lb",
            &PatchParams::default(),
            &Patch::Merge(balance(&["203.0.113.10", "203.0.113.11"])),
        )
        .await
        .unwrap();
    knit_tests::eventually("two A records for edge", WAIT, || {
        std::future::ready(
            (records("edge.example.com")
                == BTreeSet::from([pair("A", "203.0.113.10"), pair("A", "203.0.113.11")]))
            .then_some(()),
        )
    })
    .await;
    let ids_before: BTreeSet<String> = world
        .fake
        .dns_records(&world.zone)
        .into_iter()
        .filter(|r| r.name == "edge.example.com")
        .map(|r| r.id)
        .collect();
    services
        .patch_status(
            "edge-lb",
            &PatchParams::default(),
            &Patch::Merge(balance(&["203.0.113.12"])),
        )
        .await
        .unwrap();
    knit_tests::eventually("one A record for edge", WAIT, || {
        std::future::ready(
            (records("edge.example.com") == BTreeSet::from([pair("A", "203.0.113.12")]))
                .then_some(()),
        )
    })
    .await;
    let (edge, _) = record_ready(&world, "edge-lb", "True").await;
    let edge_status = edge.status.unwrap();
    assert_eq!(
        edge_status.resolved_addresses,
        vec!["203.0.113.12".to_owned()]
    );
    // Rewritten in place: the remaining record kept one of the IDs.
    assert!(ids_before.contains(edge_status.record_id.as_ref().unwrap()));

    // A name someone else holds is reported and left alone.
    let dns_api = Api::<DNSRecord>::namespaced(world.client.clone(), "production");
    let record = |name: &str, host: &str, content: &str| -> DNSRecord {
        serde_json::from_value(json!({
            "apiVersion": "networking.cloudflare-operator.io/v1alpha2",
            "kind": "DNSRecord",
            "metadata": {"name": name},
            "spec": {
                "name": host, "type": "A", "content": content,
                "cloudflare": {"accountId": ACCOUNT, "domain": DOMAIN, "secret": "cloudflare-api-credentials"},
            },
        }))
        .unwrap()
    };
    dns_api
        .create(
            &PostParams::default(),
            &record("taken", "taken", "203.0.113.99"),
        )
        .await
        .unwrap();
    let (_, taken) = record_ready(&world, "taken", "False").await;
    assert_eq!(taken.reason, "RecordNotOwned");
    assert_eq!(
        records("taken.example.com"),
        BTreeSet::from([pair("CNAME", "elsewhere.example.net")])
    );
    // Two DNSRecords for one name: the second is refused, naming the first.
    dns_api
        .create(
            &PostParams::default(),
            &record("www-twin", "www", "203.0.113.51"),
        )
        .await
        .unwrap();
    let (_, twin) = record_ready(&world, "www-twin", "False").await;
    assert_eq!(twin.reason, "RecordNotOwned");
    assert!(
        twin.message.contains("DNSRecord production/www"),
        "{}",
        twin.message
    );

    // Bad input stops at the API server.
    let mut both = serde_json::to_value(record("both", "b", "203.0.113.1")).unwrap();
    both["spec"]["sourceRef"] = json!({"node": {"name": "edge-node-1"}});
    let message = refused(&dns_api, both).await;
    assert!(
        message.contains("exactly one of content and sourceRef"),
        "{message}"
    );
    let message = refused(
        &dns_api,
        serde_json::to_value(record("bad-ip", "b", "not-an-address")).unwrap(),
    )
    .await;
    assert!(message.contains("IPv4 address"), "{message}");

    // A rename moves the record.
    dns_api
        .patch(
            "www",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"name": "web"}})),
        )
        .await
        .unwrap();
    knit_tests::eventually("www renamed web", WAIT, || {
        std::future::ready(
            (records("www.example.com").is_empty()
                && records("web.example.com") == BTreeSet::from([pair("A", "203.0.113.50")]))
            .then_some(()),
        )
    })
    .await;

    // The Service deleted (policy Delete): its records go. The node deleted
    // (policy Orphan): its record stays.
    services
        .delete("edge-lb", &DeleteParams::default())
        .await
        .unwrap();
    let (_, gone) = record_ready(&world, "edge-lb", "False").await;
    assert_eq!(gone.reason, "SourceNotFound");
    assert!(records("edge.example.com").is_empty());
    nodes
        .delete("edge-node-1", &DeleteParams::default())
        .await
        .unwrap();
    let (node_record, _) = record_ready(&world, "edge-node", "False").await;
    assert_eq!(
        node_record.status.unwrap().state,
        Some(DnsRecordState::Orphaned)
    );
    assert_eq!(
        records("node1.example.com"),
        BTreeSet::from([pair("A", "198.51.100.4")])
    );

    // Everything deleted: only the hand-made record is left.
    kubectl_delete("examples/cloudflare/dnsrecords.yaml");
    for name in ["taken", "www-twin"] {
        dns_api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    all_gone(&dns_api, "the DNSRecords gone").await;
    let left: Vec<String> = world
        .fake
        .dns_records(&world.zone)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![foreign]);
}
