//! The Cloudflare client against the strict fake API v4: auth, tunnels and
//! their configuration, DNS with pagination, virtual networks and routes,
//! WARP connectors, retries, and that the API token never shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use knit::providers::budget::{ApiBudget, BudgetSettings};
use knit::providers::cloudflare::{
    ApiToken, CloudflareClient, DnsBatch, DnsFilter, Error, IngressRule, NewDnsRecord, NewRoute,
    NewVirtualNetwork, RecordId, RecordPut, RetryPolicy, RouteFilter, TunnelConfig, TunnelKind,
    WarpRouting,
};
use knit_tests::fake_cloudflare::{FakeCloudflare, codes};

const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const OTHER_ACCOUNT: &str = "fedcba9876543210fedcba9876543210";
const TOKEN: &str = "knit-test-token-do-not-print-0001";
const OTHER_TOKEN: &str = "other-account-token-0002";
const ZONE: &str = "example.com";

/// Fast retries, so the tests take milliseconds, not seconds.
fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
    }
}

/// The token the way the controller gets it: from the credentials Secret.
fn token_from_secret(token: &str) -> ApiToken {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cloudflare-api-credentials", "namespace": "knit-system"},
        "stringData": {"CLOUDFLARE_API_TOKEN": token},
    }))
    .unwrap();
    ApiToken::from_secret(&secret).unwrap()
}

fn client_for(fake: &FakeCloudflare, token: &str) -> CloudflareClient {
    CloudflareClient::new(fake.endpoint(), token_from_secret(token))
        .unwrap()
        .with_retry(fast())
}

/// A fake with two accounts, a token for each, a zone in the first, and a
/// client with the first account's token.
async fn setup() -> (FakeCloudflare, CloudflareClient, String) {
    let fake = FakeCloudflare::start().await;
    fake.add_account(ACCOUNT);
    fake.add_account(OTHER_ACCOUNT);
    fake.add_token(TOKEN, ACCOUNT);
    fake.add_token(OTHER_TOKEN, OTHER_ACCOUNT);
    let zone_id = fake.add_zone(ACCOUNT, ZONE);
    let client = client_for(&fake, TOKEN);
    (fake, client, zone_id)
}

fn config(rules: Vec<IngressRule>) -> TunnelConfig {
    TunnelConfig {
        ingress: rules,
        ..TunnelConfig::default()
    }
}

fn cname(name: &str, target: &str, comment: Option<&str>) -> NewDnsRecord {
    NewDnsRecord {
        name: name.into(),
        r#type: "CNAME".into(),
        content: target.into(),
        proxied: true,
        ttl: 1,
        comment: comment.map(str::to_owned),
    }
}

/// Neither the error's `Display` nor its `Debug` holds `secret`.
fn assert_hidden(error: &Error, secret: &str) {
    let shown = format!("{error} {error:?} {error:#?}");
    assert!(!shown.contains(secret), "the token leaked: {shown}");
}

#[tokio::test]
async fn auth_failures_are_clear_and_not_retried() {
    let (fake, client, zone_id) = setup().await;
    assert_eq!(client.zone_id(ACCOUNT, ZONE).await.unwrap(), zone_id);

    // No token at all (an empty one).
    let anonymous = CloudflareClient::new(fake.endpoint(), ApiToken::new(""))
        .unwrap()
        .with_retry(fast());
    let error = anonymous.zone_id(ACCOUNT, ZONE).await.unwrap_err();
    assert!(
        matches!(error, Error::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert!(error.has_code(codes::AUTHENTICATION));

    // A token the API does not know.
    fake.reset_calls();
    let wrong = client_with("wrong-token-value-xyz", &fake);
    let error = wrong.list_virtual_networks(ACCOUNT).await.unwrap_err();
    assert!(
        matches!(error, Error::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    let shown = error.to_string();
    assert!(shown.contains("GET /accounts/"), "{shown}");
    assert!(shown.contains("[10000] Authentication error"), "{shown}");
    assert!(shown.contains("check that it is valid"), "{shown}");
    assert_hidden(&error, "wrong-token-value-xyz");
    assert_eq!(
        fake.count("*", "teamnet/virtual_networks"),
        1,
        "not retried"
    );

    // A valid token, another account's resources.
    let other = client_for(&fake, OTHER_TOKEN);
    let error = other
        .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "anything")
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Unauthorized { status: 403, .. }),
        "{error:?}"
    );
    let error = other
        .list_dns_records(&zone_id, &DnsFilter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Unauthorized { status: 403, .. }),
        "{error:?}"
    );
    assert_hidden(&error, OTHER_TOKEN);
    // Another account's zones are invisible, not forbidden.
    let error = other.zone_id(ACCOUNT, ZONE).await.unwrap_err();
    assert!(matches!(error, Error::ZoneNotFound { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("no zone \"{ZONE}\" in Cloudflare account {ACCOUNT}")
    );
}

fn client_with(token: &str, fake: &FakeCloudflare) -> CloudflareClient {
    CloudflareClient::new(fake.endpoint(), ApiToken::new(token))
        .unwrap()
        .with_retry(fast())
}

#[tokio::test]
async fn a_tunnel_is_created_configured_and_deleted_with_its_connections() {
    let (fake, client, _) = setup().await;
    let tunnel = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "knit-main")
        .await
        .unwrap();
    assert_eq!(tunnel.name, "knit-main");
    assert_eq!(tunnel.tun_type.as_deref(), Some("cfd_tunnel"));
    assert_eq!(tunnel.remote_config, Some(true));
    assert_eq!(tunnel.deleted_at, None);

    let found = client
        .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "knit-main")
        .await
        .unwrap();
    assert_eq!(found.as_ref().map(|t| &t.id), Some(&tunnel.id));
    assert_eq!(
        client
            .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "other")
            .await
            .unwrap(),
        None
    );
    let got = client
        .get_tunnel(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
        .await
        .unwrap();
    assert_eq!(got.map(|t| t.id), Some(tunnel.id.clone()));

    let token = client
        .tunnel_token(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
        .await
        .unwrap();
    assert!(token.expose().starts_with("eyJ"), "base64 JSON");
    assert_eq!(format!("{token:?}"), "TunnelToken(***)");

    assert_eq!(
        client
            .tunnel_configuration(ACCOUNT, &tunnel.id)
            .await
            .unwrap(),
        None,
        "never configured"
    );
    let first = TunnelConfig {
        ingress: vec![
            IngressRule::host("app.example.com", "http://app.default.svc:80"),
            IngressRule::catch_all("http_status:404"),
        ],
        warp_routing: Some(WarpRouting { enabled: true }),
        origin_request: Some(serde_json::json!({"connectTimeout": 30})),
    };
    let stored = client
        .put_tunnel_configuration(ACCOUNT, &tunnel.id, &first)
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.config, first);
    // What was stored is exactly cloudflared's JSON.
    assert_eq!(
        fake.tunnel_configuration(&tunnel.id).unwrap().config,
        serde_json::json!({
            "ingress": [
                {"hostname": "app.example.com", "service": "http://app.default.svc:80"},
                {"service": "http_status:404"},
            ],
            "warp-routing": {"enabled": true},
            "originRequest": {"connectTimeout": 30},
        })
    );

    let second = config(vec![
        IngressRule {
            path: Some("^/api/".into()),
            ..IngressRule::host("app.example.com", "http://api:8080")
        },
        IngressRule::host("app.example.com", "http://app:80"),
        IngressRule::catch_all("http_status:404"),
    ]);
    let stored = client
        .put_tunnel_configuration(ACCOUNT, &tunnel.id, &second)
        .await
        .unwrap();
    assert_eq!(stored.version, 2, "each PUT is a new version");
    let read = client
        .tunnel_configuration(ACCOUNT, &tunnel.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.version, &read.config), (2, &second));

    // The last rule must match everything: refused, nothing stored.
    let error = client
        .put_tunnel_configuration(
            ACCOUNT,
            &tunnel.id,
            &config(vec![IngressRule::host("app.example.com", "http://app:80")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Api { status: 400, .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("The last ingress rule must match all URLs"),
        "{error}"
    );
    assert_eq!(fake.tunnel_configuration(&tunnel.id).unwrap().version, 2);
    assert_eq!(
        fake.count("PUT", "cfd_tunnel/{id}/configurations"),
        3,
        "one PUT per call, the refused one not retried"
    );

    // A running cloudflared: the delete cleans its connections up first.
    fake.set_connections(&tunnel.id, 2);
    client
        .delete_tunnel(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
        .await
        .unwrap();
    assert_eq!(fake.count("DELETE", "cfd_tunnel/{id}/connections"), 1);
    assert_eq!(fake.count("DELETE", "cfd_tunnel/{id}"), 1);
    let gone = &fake.tunnels()[0];
    assert!(gone.deleted && gone.connections == 0, "{gone:?}");
    assert_eq!(
        client
            .get_tunnel(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        client
            .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "knit-main")
            .await
            .unwrap(),
        None
    );
    // Deleting again is done already.
    client
        .delete_tunnel(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
        .await
        .unwrap();
    assert_eq!(
        client
            .tunnel_configuration(ACCOUNT, &tunnel.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        client
            .get_tunnel(TunnelKind::Cloudflared, ACCOUNT, "no-such-tunnel")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_taken_tunnel_name_is_a_clear_error_until_the_tunnel_is_deleted() {
    let (fake, client, _) = setup().await;
    let tunnel = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "edge")
        .await
        .unwrap();
    let error = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "edge")
        .await
        .unwrap_err();
    assert!(error.has_code(1013), "{error:?}");
    assert!(matches!(error, Error::Api { status: 409, .. }), "{error:?}");
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!(
            "POST /accounts/{ACCOUNT}/cfd_tunnel: HTTP 409: [1013] "
        )),
        "{shown}"
    );
    assert!(
        shown.contains("You already have a tunnel with this name"),
        "{shown}"
    );
    assert_eq!(fake.count("POST", "cfd_tunnel"), 2, "a 409 is not retried");

    client
        .delete_tunnel(TunnelKind::Cloudflared, ACCOUNT, &tunnel.id)
        .await
        .unwrap();
    let again = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "edge")
        .await
        .unwrap();
    assert_ne!(again.id, tunnel.id);
    let found = client
        .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "edge")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, again.id, "the deleted one is not found");
}

#[tokio::test]
async fn route_lists_are_followed_across_pages() {
    let (fake, client, _) = setup().await;
    fake.set_max_per_page(2);
    let tunnel = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "routed")
        .await
        .unwrap();
    for i in 0..5 {
        client
            .create_route(
                ACCOUNT,
                &NewRoute {
                    network: format!("10.{i}.0.0/16"),
                    tunnel_id: tunnel.id.clone(),
                    comment: "knit".into(),
                    virtual_network_id: None,
                },
            )
            .await
            .unwrap();
    }
    fake.reset_calls();
    let routes = client
        .list_routes(ACCOUNT, &RouteFilter::default())
        .await
        .unwrap();
    let networks: Vec<&str> = routes.iter().map(|r| r.network.as_str()).collect();
    assert_eq!(
        networks,
        [
            "10.0.0.0/16",
            "10.1.0.0/16",
            "10.2.0.0/16",
            "10.3.0.0/16",
            "10.4.0.0/16"
        ]
    );
    assert_eq!(fake.count("GET", "teamnet/routes"), 3, "5 routes, 2 a page");
}

#[tokio::test]
async fn dns_records_are_listed_across_pages_by_comment_prefix() {
    let (fake, client, zone_id) = setup().await;
    fake.set_max_per_page(3);
    let target = "f70ff985-a4ef-4643-bbbc-4a0ed4fc8415.cfargotunnel.com";
    for i in 0..8 {
        client
            .create_dns_record(
                &zone_id,
                &cname(
                    &format!("app{i}.example.com"),
                    target,
                    Some(&format!("knit:tunnel=default/main #{i}")),
                ),
            )
            .await
            .unwrap();
    }
    for i in 0..4 {
        client
            .create_dns_record(
                &zone_id,
                &cname(&format!("hand{i}.example.com"), target, Some("by hand")),
            )
            .await
            .unwrap();
    }
    fake.add_dns_record(&zone_id, "bare.example.com", "A", "192.0.2.1", None);
    fake.reset_calls();

    let owned = client
        .list_dns_records(
            &zone_id,
            &DnsFilter {
                comment_startswith: Some("knit:tunnel=default/main".into()),
                ..DnsFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(owned.len(), 8);
    let mut names: Vec<&str> = owned.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names[0], "app0.example.com");
    assert_eq!(fake.count("GET", "dns_records"), 3, "8 records, 3 a page");

    let all = client
        .list_dns_records(&zone_id, &DnsFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 13);
    let bare = all.iter().find(|r| r.name == "bare.example.com").unwrap();
    assert_eq!((bare.r#type.as_str(), bare.comment.as_deref()), ("A", None));

    let one = client
        .list_dns_records(
            &zone_id,
            &DnsFilter {
                name: Some("app3.example.com".into()),
                r#type: Some("CNAME".into()),
                ..DnsFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].content, target);
    assert!(one[0].proxied);
    assert_eq!(one[0].ttl, 1);
}

#[tokio::test]
async fn a_cname_cannot_share_its_name_and_records_update_and_delete() {
    let (fake, client, zone_id) = setup().await;
    fake.add_dns_record(&zone_id, "app.example.com", "A", "192.0.2.10", None);

    let error = client
        .create_dns_record(
            &zone_id,
            &cname("app.example.com", "t.cfargotunnel.com", None),
        )
        .await
        .unwrap_err();
    assert!(error.has_code(81053), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("An A, AAAA, or CNAME record with that host already exists"),
        "{error}"
    );
    assert_eq!(fake.count("POST", "dns_records"), 1, "a 400 is not retried");

    let record = client
        .create_dns_record(
            &zone_id,
            &cname("www.example.com", "t.cfargotunnel.com", Some("knit:owned")),
        )
        .await
        .unwrap();
    assert_eq!(record.comment.as_deref(), Some("knit:owned"));
    let error = client
        .create_dns_record(
            &zone_id,
            &NewDnsRecord {
                name: "www.example.com".into(),
                r#type: "TXT".into(),
                content: "hello".into(),
                proxied: false,
                ttl: 1,
                comment: None,
            },
        )
        .await
        .unwrap_err();
    assert!(error.has_code(81054), "{error:?}");

    // Outside the zone is refused rather than silently suffixed.
    let error = client
        .create_dns_record(
            &zone_id,
            &cname("www.example.org", "t.cfargotunnel.com", None),
        )
        .await
        .unwrap_err();
    assert!(error.has_code(1004), "{error:?}");

    // PUT overwrites, comment included.
    let updated = client
        .update_dns_record(
            &zone_id,
            &record.id,
            &cname("www.example.com", "u.cfargotunnel.com", None),
        )
        .await
        .unwrap();
    assert_eq!(updated.id, record.id);
    assert_eq!(updated.content, "u.cfargotunnel.com");
    assert_eq!(updated.comment, None);
    let error = client
        .update_dns_record(
            &zone_id,
            "nope",
            &cname("x.example.com", "t.example.net", None),
        )
        .await
        .unwrap_err();
    assert!(error.is_not_found() && error.has_code(81044), "{error:?}");

    client
        .delete_dns_record(&zone_id, &record.id)
        .await
        .unwrap();
    client
        .delete_dns_record(&zone_id, &record.id)
        .await
        .unwrap();
    assert_eq!(fake.count("DELETE", "dns_records/{id}"), 2);
    let left: Vec<String> = fake
        .dns_records(&zone_id)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, ["app.example.com"]);
}

#[tokio::test]
async fn virtual_networks_and_routes() {
    let (fake, client, _) = setup().await;
    let networks = client.list_virtual_networks(ACCOUNT).await.unwrap();
    assert_eq!(networks.len(), 1);
    let default = networks[0].clone();
    assert!(default.is_default_network);

    let staging = client
        .create_virtual_network(
            ACCOUNT,
            &NewVirtualNetwork {
                name: "staging".into(),
                comment: "knit:vnet=staging".into(),
                is_default_network: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(staging.comment, "knit:vnet=staging");
    let error = client
        .create_virtual_network(
            ACCOUNT,
            &NewVirtualNetwork {
                name: "staging".into(),
                comment: String::new(),
                is_default_network: false,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Api { status: 409, .. }), "{error:?}");

    let tunnel = client
        .create_tunnel(TunnelKind::WarpConnector, ACCOUNT, "site-a")
        .await
        .unwrap();
    let in_staging = client
        .create_route(
            ACCOUNT,
            &NewRoute {
                network: "10.0.0.0/16".into(),
                tunnel_id: tunnel.id.clone(),
                comment: "knit:route".into(),
                virtual_network_id: Some(staging.id.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        in_staging.virtual_network_id.as_deref(),
        Some(staging.id.as_str())
    );
    let in_default = client
        .create_route(
            ACCOUNT,
            &NewRoute {
                network: "10.0.0.0/16".into(),
                tunnel_id: tunnel.id.clone(),
                comment: "knit:route".into(),
                virtual_network_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        in_default.virtual_network_id.as_deref(),
        Some(default.id.as_str()),
        "no virtual network means the default one"
    );
    let error = client
        .create_route(
            ACCOUNT,
            &NewRoute {
                network: "10.0.0.0/16".into(),
                tunnel_id: tunnel.id.clone(),
                comment: String::new(),
                virtual_network_id: Some(staging.id.clone()),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Api { status: 409, .. }), "{error:?}");
    let error = client
        .create_route(
            ACCOUNT,
            &NewRoute {
                network: "10.0.0.1/16".into(),
                tunnel_id: tunnel.id.clone(),
                comment: String::new(),
                virtual_network_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Api { status: 400, .. }), "{error:?}");

    let by_tunnel = client
        .list_routes(
            ACCOUNT,
            &RouteFilter {
                tunnel_id: Some(tunnel.id.clone()),
                ..RouteFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_tunnel.len(), 2);
    let by_vnet = client
        .list_routes(
            ACCOUNT,
            &RouteFilter {
                virtual_network_id: Some(staging.id.clone()),
                comment: Some("knit:route".into()),
                ..RouteFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_vnet.len(), 1);
    assert_eq!(by_vnet[0].id, in_staging.id);

    // In use: neither the network nor the connector can go yet.
    let error = client
        .delete_virtual_network(ACCOUNT, &staging.id)
        .await
        .unwrap_err();
    assert!(error.has_code(codes::VNET_IN_USE), "{error:?}");
    let error = client
        .delete_tunnel(TunnelKind::WarpConnector, ACCOUNT, &tunnel.id)
        .await
        .unwrap_err();
    assert!(error.has_code(codes::TUNNEL_HAS_ROUTES), "{error:?}");

    let renamed = client
        .update_virtual_network(
            ACCOUNT,
            &staging.id,
            &NewVirtualNetwork {
                name: "staging-2".into(),
                comment: "knit:vnet=staging".into(),
                is_default_network: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "staging-2");

    for route in [&in_staging, &in_default] {
        client.delete_route(ACCOUNT, &route.id).await.unwrap();
    }
    client.delete_route(ACCOUNT, &in_staging.id).await.unwrap();
    assert!(fake.routes().is_empty());
    assert!(
        client
            .list_routes(ACCOUNT, &RouteFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    client
        .delete_virtual_network(ACCOUNT, &staging.id)
        .await
        .unwrap();
    client
        .delete_virtual_network(ACCOUNT, &staging.id)
        .await
        .unwrap();
    let names: Vec<String> = client
        .list_virtual_networks(ACCOUNT)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["default"]);
    let error = client
        .delete_virtual_network(ACCOUNT, &default.id)
        .await
        .unwrap_err();
    assert!(error.has_code(codes::VNET_IN_USE), "{error:?}");
}

#[tokio::test]
async fn warp_connectors_have_their_own_path_and_token() {
    let (fake, client, _) = setup().await;
    let connector = client
        .create_tunnel(TunnelKind::WarpConnector, ACCOUNT, "site-b")
        .await
        .unwrap();
    assert_eq!(connector.tun_type.as_deref(), Some("warp_connector"));
    assert_eq!(
        client
            .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "site-b")
            .await
            .unwrap(),
        None,
        "not a cfd_tunnel"
    );
    let found = client
        .find_tunnel(TunnelKind::WarpConnector, ACCOUNT, "site-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, connector.id);
    let token = client
        .tunnel_token(TunnelKind::WarpConnector, ACCOUNT, &connector.id)
        .await
        .unwrap();
    assert!(!token.expose().is_empty());

    // A connected host: no cleanup endpoint, the refusal comes back.
    fake.set_connections(&connector.id, 1);
    let error = client
        .delete_tunnel(TunnelKind::WarpConnector, ACCOUNT, &connector.id)
        .await
        .unwrap_err();
    assert!(error.has_code(codes::ACTIVE_CONNECTIONS), "{error:?}");
    fake.set_connections(&connector.id, 0);
    client
        .delete_tunnel(TunnelKind::WarpConnector, ACCOUNT, &connector.id)
        .await
        .unwrap();
    client
        .delete_tunnel(TunnelKind::WarpConnector, ACCOUNT, &connector.id)
        .await
        .unwrap();
    assert_eq!(
        client
            .get_tunnel(TunnelKind::WarpConnector, ACCOUNT, &connector.id)
            .await
            .unwrap(),
        None
    );
    assert!(fake.warp_connectors()[0].deleted);
}

/// A batch's changes as Cloudflare makes them: deletes, puts, then posts,
/// all or none; what the plan's limit exceeds is refused whole.
#[tokio::test]
async fn a_dns_batch_is_all_or_nothing_and_bounded() {
    let (fake, client, zone_id) = setup().await;
    let target = "t1.cfargotunnel.com";
    let old = client
        .create_dns_record(&zone_id, &cname("old.example.com", target, Some("knit")))
        .await
        .unwrap();
    let kept = client
        .create_dns_record(&zone_id, &cname("kept.example.com", target, Some("knit")))
        .await
        .unwrap();
    fake.add_dns_record(&zone_id, "taken.example.com", "A", "192.0.2.1", None);
    let names = |fake: &FakeCloudflare| {
        let mut names: Vec<String> = fake
            .dns_records(&zone_id)
            .into_iter()
            .map(|r| format!("{} {}", r.name, r.content))
            .collect();
        names.sort();
        names
    };
    let before = names(&fake);

    // The last post is refused (an A record holds the name): nothing lands.
    let refused = DnsBatch {
        deletes: vec![RecordId { id: old.id.clone() }],
        puts: vec![RecordPut {
            id: kept.id.clone(),
            record: cname("kept.example.com", "t2.cfargotunnel.com", Some("knit")),
        }],
        posts: vec![
            cname("new.example.com", target, Some("knit")),
            cname("taken.example.com", target, Some("knit")),
        ],
    };
    let error = client
        .batch_dns_records(&zone_id, &refused)
        .await
        .unwrap_err();
    assert!(
        error.is_refusal() && error.has_code(codes::HOST_TAKEN),
        "{error:?}"
    );
    assert_eq!(names(&fake), before, "a refused batch changes nothing");

    // Without it, one call makes the three changes; a delete frees a name
    // for a post of the same batch.
    let batch = DnsBatch {
        posts: vec![
            cname("new.example.com", target, Some("knit")),
            cname("old.example.com", "t2.cfargotunnel.com", Some("knit")),
        ],
        ..refused.clone()
    };
    fake.reset_calls();
    let done = client.batch_dns_records(&zone_id, &batch).await.unwrap();
    assert_eq!(fake.calls().len(), 1);
    assert_eq!((done.puts.len(), done.posts.len()), (1, 2));
    assert_eq!(
        names(&fake),
        [
            "kept.example.com t2.cfargotunnel.com",
            "new.example.com t1.cfargotunnel.com",
            "old.example.com t2.cfargotunnel.com",
            "taken.example.com 192.0.2.1",
        ]
    );

    // Over the plan's limit: refused whole, with the limit in the message.
    fake.set_batch_limit(2);
    let three = DnsBatch {
        posts: (0..3)
            .map(|i| cname(&format!("n{i}.example.com"), target, None))
            .collect(),
        ..DnsBatch::default()
    };
    let error = client
        .batch_dns_records(&zone_id, &three)
        .await
        .unwrap_err();
    assert!(error.has_code(codes::BATCH_TOO_LARGE), "{error:?}");
    assert!(error.to_string().contains("at most 2"), "{error}");
    assert_eq!(fake.dns_records(&zone_id).len(), 4);
}

/// Past the account's budget the fake answers 429 as Cloudflare does; a
/// client sharing a budget of the same size waits instead and is never
/// refused.
#[tokio::test]
async fn a_client_with_a_budget_waits_instead_of_being_rate_limited() {
    let (fake, client, _) = setup().await;
    let window = Duration::from_millis(1500);
    fake.set_rate_budget(3, window);
    let settings = BudgetSettings { limit: 3, window };
    let budget = Arc::new(ApiBudget::new(settings, Default::default()));
    let budgeted = client.clone().with_budget(budget.clone());
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let client = budgeted.clone();
        calls.push(tokio::spawn(
            async move { client.zone_id(ACCOUNT, ZONE).await },
        ));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(started.elapsed() >= window, "two of five waited a window");
    assert_eq!(fake.rate_limited(), 0);
    assert_eq!(fake.count("GET", "zones"), 5);

    // The same five without the budget: some are refused with 429.
    let unbudgeted = client.with_retry(RetryPolicy {
        attempts: 1,
        ..fast()
    });
    let mut refused = 0;
    for _ in 0..5 {
        if let Err(error) = unbudgeted.zone_id(ACCOUNT, ZONE).await {
            assert!(
                matches!(
                    error,
                    Error::RateLimited {
                        retry_after: Some(_),
                        ..
                    }
                ),
                "{error:?}"
            );
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused} refused");
}

#[tokio::test]
async fn a_429_waits_retry_after_then_succeeds() {
    let (fake, client, zone_id) = setup().await;
    let client = client.with_retry(RetryPolicy {
        attempts: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
    });
    fake.rate_limit_next(2, 1);
    let started = Instant::now();
    assert_eq!(client.zone_id(ACCOUNT, ZONE).await.unwrap(), zone_id);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "two Retry-After: 1 honoured, waited {waited:?}"
    );
    assert_eq!(fake.rate_limited(), 2);
    assert_eq!(fake.count("GET", "zones"), 3);
}

#[tokio::test]
async fn a_429_past_the_attempts_is_rate_limited_with_a_capped_wait() {
    let (fake, client, _) = setup().await;
    fake.rate_limit_next(10, 30);
    let started = Instant::now();
    let error = client.zone_id(ACCOUNT, ZONE).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::RateLimited { retry_after: Some(after), .. } if after == Duration::from_secs(30)
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "Retry-After: 30 capped at max_delay"
    );
    assert_eq!(fake.count("GET", "zones"), 4, "the policy's four attempts");
    assert!(error.to_string().contains("rate limited"), "{error}");
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let (fake, client, _) = setup().await;
    let tunnel = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "retry")
        .await
        .unwrap();
    let route = "cfd_tunnel/{id}/configurations";
    fake.fail_next("PUT", route, 500, 1000, "internal error", 2);
    let stored = client
        .put_tunnel_configuration(
            ACCOUNT,
            &tunnel.id,
            &config(vec![IngressRule::catch_all("http_status:404")]),
        )
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(fake.count("PUT", route), 3, "two 500s, then success");

    fake.fail_next("PUT", route, 503, 1000, "unavailable", 10);
    let error = client
        .put_tunnel_configuration(
            ACCOUNT,
            &tunnel.id,
            &config(vec![IngressRule::catch_all("http_status:404")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Api { status: 503, .. }), "{error:?}");
    assert_eq!(
        fake.count("PUT", route),
        3 + 4,
        "gave up after four attempts"
    );
    assert_eq!(fake.tunnel_configuration(&tunnel.id).unwrap().version, 1);

    fake.reset_calls();
    fake.fail_next("*", "zones", 400, 1001, "bad request", 1);
    let error = client.zone_id(ACCOUNT, ZONE).await.unwrap_err();
    assert!(matches!(error, Error::Api { status: 400, .. }), "{error:?}");
    assert!(error.to_string().contains("[1001] bad request"), "{error}");
    assert_eq!(fake.count("GET", "zones"), 1, "a 400 is final");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transport_error_after_retries() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = CloudflareClient::new(
        &format!("http://127.0.0.1:{closed}/client/v4"),
        ApiToken::new(TOKEN),
    )
    .unwrap()
    .with_retry(fast());
    let error = client
        .find_tunnel(TunnelKind::Cloudflared, ACCOUNT, "x")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert!(error.to_string().starts_with("GET /accounts/"), "{error}");
    assert_hidden(&error, TOKEN);
}

#[tokio::test]
async fn the_token_never_shows() {
    let (fake, client, zone_id) = setup().await;
    let shown = format!("{client:?} {client:#?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    fake.fail_next("*", "dns_records", 500, 1000, "boom", 100);
    let error = client
        .list_dns_records(&zone_id, &DnsFilter::default())
        .await
        .unwrap_err();
    assert_hidden(&error, TOKEN);
    fake.fail_next("*", "zones", 403, 10000, "Authentication error", 1);
    let error = client.zone_id(ACCOUNT, ZONE).await.unwrap_err();
    assert_hidden(&error, TOKEN);
    let error = client
        .create_tunnel(TunnelKind::Cloudflared, ACCOUNT, "")
        .await
        .unwrap_err();
    assert!(error.has_code(codes::INVALID_REQUEST), "{error:?}");
    assert_hidden(&error, TOKEN);
}
