use rstest::rstest;

use super::*;
use crate::test_support::*;
use crate::{Backend, OriginRequest, Scheme, SourceKind, check_mapping, parse_config};

#[test]
fn rules_are_ordered_so_none_hides_another() {
    let request = request(
        cluster_tunnel(),
        vec![ingress(
            "shop",
            "web",
            1,
            vec![
                route("*.example.com", None, ready("catch")),
                route("www.example.com", None, ready("www")),
                route("www.example.com", prefix("/api"), ready("api")),
                route("www.example.com", exact("/api"), ready("api-root")),
                route("www.example.com", prefix("/api/v1/"), ready("v1")),
                route(
                    "www.example.com",
                    Some((PathMatch::RegularExpression, "/static/.*")),
                    ready("static"),
                ),
                route("app.example.com", prefix("/"), ready("app")),
                route("*.dev.example.com", None, ready("dev")),
            ],
        )],
    );
    let mapping = mapped(&request);
    let svc = |name: &str| format!("http://{name}.shop.svc.cluster.local:80");
    assert_eq!(
        mapping.rules,
        [
            rule("app.example.com", None, &svc("app")),
            rule("www.example.com", Some("^/static/.*"), &svc("static")),
            rule("www.example.com", Some("^/api/v1(?s:/.*)?$"), &svc("v1")),
            rule("www.example.com", Some("^/api$"), &svc("api-root")),
            rule("www.example.com", Some("^/api(?s:/.*)?$"), &svc("api")),
            rule("www.example.com", None, &svc("www")),
            rule("*.dev.example.com", None, &svc("dev")),
            rule("*.example.com", None, &svc("catch")),
            fallback(),
        ]
    );
    assert_eq!(
        mapping.dns,
        [
            "*.dev.example.com",
            "*.example.com",
            "app.example.com",
            "www.example.com"
        ]
    );
    assert_eq!(mapping.sources[0].verdict, Verdict::Accepted);
    assert_eq!(mapping.sources[0].hosts, mapping.dns);
}

#[rstest]
#[case::older_first(false)]
#[case::younger_first(true)]
fn the_older_source_wins_whatever_the_input_order(#[case] younger_first: bool) {
    let old = ingress(
        "a",
        "old",
        100,
        vec![route("app.example.com", prefix("/x"), ready("one"))],
    );
    let young = ingress(
        "b",
        "young",
        200,
        vec![
            route("other.example.com", None, ready("two")),
            route("app.example.com", prefix("/x/"), ready("two")),
        ],
    );
    let sources = if younger_first {
        vec![young, old]
    } else {
        vec![old, young]
    };
    let mapping = mapped(&request(cluster_tunnel(), sources.clone()));
    let status = |name: &str| {
        mapping
            .sources
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(status("old").verdict, Verdict::Accepted);
    assert_eq!(
        status("young").verdict,
        Verdict::Conflict("host app.example.com path /x/ is served by Ingress a/old".into())
    );
    assert!(status("young").hosts.is_empty());
    // Refused whole: not even its uncontested host is published.
    assert_eq!(mapping.dns, ["app.example.com"]);
    assert_eq!(mapping.rules.len(), 2);
    // Statuses follow the request's order.
    assert_eq!(mapping.sources[0].name, sources[0].name);
}

#[test]
fn same_age_sources_are_ordered_by_kind_namespace_and_name() {
    let twin = |namespace: &str, name: &str| {
        ingress(
            namespace,
            name,
            5,
            vec![route("app.example.com", None, ready("x"))],
        )
    };
    let mapping = mapped(&request(
        cluster_tunnel(),
        vec![twin("b", "a"), twin("a", "z")],
    ));
    assert!(matches!(mapping.sources[0].verdict, Verdict::Conflict(_)));
    assert_eq!(mapping.sources[1].verdict, Verdict::Accepted);
    let mut route_source = twin("a", "a");
    route_source.kind = SourceKind::HttpRoute;
    let mapping = mapped(&request(
        cluster_tunnel(),
        vec![route_source, twin("z", "z")],
    ));
    assert_eq!(
        verdicts(&mapping),
        [
            &Verdict::Conflict("host app.example.com path / is served by Ingress z/z".into()),
            &Verdict::Accepted
        ]
    );
}

#[test]
fn different_paths_and_no_path_equal_to_prefix_root() {
    let sources = vec![
        ingress(
            "a",
            "root",
            1,
            vec![route("app.example.com", None, ready("root"))],
        ),
        ingress(
            "a",
            "api",
            2,
            vec![route("app.example.com", prefix("/api"), ready("api"))],
        ),
        ingress(
            "a",
            "slash",
            3,
            vec![route("app.example.com", prefix("/"), ready("slash"))],
        ),
    ];
    let mapping = mapped(&request(cluster_tunnel(), sources));
    assert_eq!(mapping.sources[0].verdict, Verdict::Accepted);
    assert_eq!(mapping.sources[1].verdict, Verdict::Accepted);
    assert_eq!(
        mapping.sources[2].verdict,
        Verdict::Conflict("host app.example.com path / is served by Ingress a/root".into())
    );
}

#[test]
fn a_namespaced_tunnel_refuses_other_namespaces() {
    let mapping = mapped(&request(
        tunnel_in("shop"),
        vec![
            ingress(
                "shop",
                "mine",
                1,
                vec![route("a.example.com", None, ready("a"))],
            ),
            ingress(
                "blog",
                "theirs",
                0,
                vec![route("b.example.com", None, ready("b"))],
            ),
        ],
    ));
    assert_eq!(mapping.sources[0].verdict, Verdict::Accepted);
    assert_eq!(
        mapping.sources[1].verdict,
        Verdict::NamespaceNotAllowed(
            "Tunnel shop/edge only accepts sources in namespace shop".into()
        )
    );
    assert_eq!(mapping.dns, ["a.example.com"]);
    assert_eq!(mapping.rules.len(), 2);
}

#[test]
fn hosts_outside_the_domain_or_malformed_are_invalid() {
    let one = |host: &str| ingress("a", "x", 1, vec![route(host, None, ready("x"))]);
    let verdict = |source: Source| {
        map(&request(cluster_tunnel(), vec![source]), &Config::default()).sources[0]
            .verdict
            .clone()
    };
    assert_eq!(
        verdict(one("app.example.org")),
        Verdict::Invalid(
            "host app.example.org is not inside the tunnel's domain example.com".into()
        )
    );
    assert_eq!(
        verdict(one("notexample.com")),
        Verdict::Invalid(
            "host notexample.com is not inside the tunnel's domain example.com".into()
        )
    );
    assert!(verdict(one("")).message().contains("no host"));
    assert!(
        verdict(one("Bad_Name.example.com"))
            .message()
            .contains("host \"Bad_Name.example.com\" is not a valid DNS name")
    );
    assert!(
        verdict(one("a..example.com"))
            .message()
            .contains("not a valid DNS name")
    );
    assert!(verdict(one("*")).message().contains("not a valid DNS name"));
    assert!(
        verdict(one("a.*.example.com"))
            .message()
            .contains("not a valid DNS name")
    );
    assert_eq!(verdict(one("example.com")), Verdict::Accepted);
    assert_eq!(verdict(one("*.example.com")), Verdict::Accepted);
    assert_eq!(
        verdict(ingress("a", "x", 1, vec![])),
        Verdict::Invalid("no rules".into())
    );
    // One bad route refuses the whole source.
    let mixed = ingress(
        "a",
        "x",
        1,
        vec![
            route("good.example.com", None, ready("x")),
            route("evil.org", None, ready("x")),
        ],
    );
    let mapping = mapped(&request(cluster_tunnel(), vec![mixed]));
    assert!(matches!(mapping.sources[0].verdict, Verdict::Invalid(_)));
    assert!(mapping.dns.is_empty() && mapping.rules == [fallback()]);
    let relative = ingress(
        "a",
        "x",
        1,
        vec![route("a.example.com", prefix("api"), ready("x"))],
    );
    assert!(
        verdict(relative)
            .message()
            .contains("does not start with /")
    );
}

#[test]
fn wildcards_sit_below_the_names_they_cover() {
    let mapping = mapped(&request(
        cluster_tunnel(),
        vec![
            ingress(
                "a",
                "wild",
                1,
                vec![route("*.example.com", None, ready("wild"))],
            ),
            ingress(
                "a",
                "exact",
                2,
                vec![route("shop.example.com", None, ready("shop"))],
            ),
            ingress(
                "a",
                "deeper",
                3,
                vec![route("*.eu.example.com", None, ready("eu"))],
            ),
        ],
    ));
    // A wildcard and a name under it are different keys: no conflict.
    assert!(
        mapping
            .sources
            .iter()
            .all(|s| s.verdict == Verdict::Accepted)
    );
    let hosts: Vec<_> = mapping
        .rules
        .iter()
        .map(|r| r.hostname.as_deref())
        .collect();
    assert_eq!(
        hosts,
        [
            Some("shop.example.com"),
            Some("*.eu.example.com"),
            Some("*.example.com"),
            None
        ]
    );
}

#[test]
fn a_backend_without_endpoints_is_withheld_but_keeps_its_host() {
    let restarting = ingress(
        "a",
        "app",
        1,
        vec![
            route(
                "app.example.com",
                None,
                backend("app", 8080, BackendState::NoReadyEndpoints),
            ),
            route(
                "app.example.com",
                prefix("/gone"),
                backend(
                    "old",
                    0,
                    BackendState::Missing("service old not found".into()),
                ),
            ),
            route("app.example.com", prefix("/static"), ready("static")),
        ],
    );
    let usurper = ingress(
        "b",
        "usurper",
        2,
        vec![route("app.example.com", None, ready("evil"))],
    );
    let request = request(cluster_tunnel(), vec![restarting, usurper]);
    let mapping = mapped(&request);
    assert_eq!(
        mapping.sources[0].verdict,
        Verdict::NoReadyEndpoints(
            "backend app:8080 has no ready endpoints; service old not found".into()
        )
    );
    assert_eq!(mapping.sources[0].hosts, ["app.example.com"]);
    assert!(matches!(mapping.sources[1].verdict, Verdict::Conflict(_)));
    assert_eq!(mapping.dns, ["app.example.com"]);
    assert_eq!(
        mapping.rules,
        [
            rule(
                "app.example.com",
                Some("^/static(?s:/.*)?$"),
                "http://static.a.svc.cluster.local:80"
            ),
            fallback()
        ]
    );

    // Published anyway when configured so; a missing backend never is.
    let config = parse_config(&[("withhold-unready".into(), "false".into())]).unwrap();
    let mapping = map(&request, &config);
    check_mapping(&request, &mapping).unwrap();
    assert_eq!(
        mapping.sources[0].verdict,
        Verdict::NoReadyEndpoints("service old not found".into())
    );
    assert_eq!(mapping.rules.len(), 3);
    assert_eq!(
        mapping.rules[1],
        rule(
            "app.example.com",
            None,
            "http://app.a.svc.cluster.local:8080"
        )
    );
}

#[test]
fn requests_without_a_sensible_answer_are_invalid() {
    let good = request(cluster_tunnel(), vec![]);
    assert_eq!(validate_request(&good), Ok(()));
    let mut bad = good.clone();
    bad.tunnel.domain = "*.example.com".into();
    assert!(
        validate_request(&bad)
            .unwrap_err()
            .contains("not a DNS name")
    );
    let mut bad = good.clone();
    bad.tunnel.fallback_target.clear();
    assert!(
        validate_request(&bad)
            .unwrap_err()
            .contains("empty fallback")
    );
    for with_path in [
        "http://web.default.svc:80/",
        "https://origin.example.net/error",
    ] {
        let mut bad = good.clone();
        bad.tunnel.fallback_target = with_path.into();
        assert!(
            validate_request(&bad).unwrap_err().contains("has a path"),
            "{with_path}"
        );
    }
    let mut fine = good.clone();
    fine.tunnel.fallback_target = "http://web.default.svc:80".into();
    assert_eq!(validate_request(&fine), Ok(()));
    let mut bad = good;
    let source = ingress("a", "x", 1, vec![route("a.example.com", None, ready("x"))]);
    bad.sources = vec![source.clone(), source];
    assert_eq!(
        validate_request(&bad),
        Err("Ingress a/x is listed twice".into())
    );
}

/// One tenant's pattern that Go cannot compile must not reach cloudflared,
/// which would refuse the whole configuration and so every other tenant's
/// update: that source alone is `Invalid`, the others are served.
#[rstest]
#[case::lookahead("/api/(?!internal)")]
#[case::unbalanced("/(a|b")]
#[case::over_go_repeat_limit("/x{1001}")]
#[case::backreference(r"/\1")]
fn a_path_regex_go_refuses_invalidates_only_its_source(#[case] pattern: &str) {
    let bad = ingress(
        "tenant-a",
        "bad",
        1,
        vec![route(
            "a.example.com",
            Some((PathMatch::RegularExpression, pattern)),
            ready("a"),
        )],
    );
    let good = ingress(
        "tenant-b",
        "good",
        2,
        vec![route("b.example.com", prefix("/"), ready("b"))],
    );
    let mapping = mapped(&request(cluster_tunnel(), vec![bad, good]));
    let Verdict::Invalid(why) = &mapping.sources[0].verdict else {
        panic!("{:?}", mapping.sources[0].verdict);
    };
    assert!(
        why.starts_with(&format!("path regex {pattern:?} of host a.example.com ")),
        "{why}"
    );
    assert_eq!(mapping.sources[1].verdict, Verdict::Accepted);
    assert_eq!(
        mapping.rules,
        [
            rule(
                "b.example.com",
                None,
                "http://b.tenant-b.svc.cluster.local:80"
            ),
            fallback()
        ]
    );
}

/// Each rule carries its own source's origin settings; the fallback none.
#[test]
fn rules_carry_their_sources_origin_settings() {
    let mut secure = ingress(
        "shop",
        "secure",
        1,
        vec![route(
            "pay.example.com",
            None,
            Backend {
                scheme: Scheme::Https,
                ..ready("pay")
            },
        )],
    );
    secure.origin = OriginRequest {
        no_tls_verify: Some(true),
        connect_timeout: Some(10),
        ..OriginRequest::default()
    };
    let plain = ingress(
        "shop",
        "plain",
        1,
        vec![route("www.example.com", None, ready("web"))],
    );
    let request = request(cluster_tunnel(), vec![secure.clone(), plain]);
    let mapping = mapped(&request);
    let origins: Vec<(Option<&str>, &str, &OriginRequest)> = mapping
        .rules
        .iter()
        .map(|r| (r.hostname.as_deref(), r.service.as_str(), &r.origin))
        .collect();
    assert_eq!(
        origins,
        [
            (
                Some("pay.example.com"),
                "https://pay.shop.svc.cluster.local:80",
                &secure.origin
            ),
            (
                Some("www.example.com"),
                "http://web.shop.svc.cluster.local:80",
                &OriginRequest::default()
            ),
            (None, "http_status:404", &OriginRequest::default()),
        ]
    );
}
