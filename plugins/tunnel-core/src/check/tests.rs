use std::collections::BTreeSet;

use super::*;
use crate::paths::PathShape;
use crate::test_support::*;
use crate::*;

/// A request with a bit of everything the lies below need: an accepted
/// source with a prefix and an exact path, a conflicting one, one from
/// another namespace.
fn liar_request() -> Request {
    request(
        tunnel_in("shop"),
        vec![
            ingress(
                "shop",
                "web",
                1,
                vec![
                    route("www.example.com", prefix("/api"), ready("api")),
                    route("www.example.com", exact("/api/v1"), ready("v1")),
                ],
            ),
            ingress(
                "shop",
                "late",
                2,
                vec![route("www.example.com", prefix("/api"), ready("late"))],
            ),
            ingress(
                "blog",
                "foreign",
                0,
                vec![route("blog.example.com", None, ready("blog"))],
            ),
        ],
    )
}

#[test]
fn the_host_refuses_lies() {
    let liar = liar_request();
    let honest = mapped(&liar);
    let refuse = |lie: &dyn Fn(&mut Mapping)| {
        let mut mapping = honest.clone();
        lie(&mut mapping);
        check_mapping(&liar, &mapping).unwrap_err()
    };
    assert_eq!(
        refuse(&|m| {
            m.rules.pop();
        }),
        "the last rule must be the fallback ((any host) -> \"http_status:404\"), found \"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://api.shop.svc.cluster.local:80\""
    );
    assert!(
        refuse(&|m| m.rules.clear()).contains("there are no rules"),
        "empty"
    );
    let foreign = rule(
        "blog.example.com",
        None,
        "http://blog.blog.svc.cluster.local:80",
    );
    assert_eq!(
        refuse(&|m| m.rules.insert(0, foreign.clone())),
        "rule 1 (\"blog.example.com\" -> \"http://blog.blog.svc.cluster.local:80\") is for Ingress blog/foreign, which is refused (NamespaceNotAllowed): \"Tunnel shop/edge only accepts sources in namespace shop\""
    );
    assert_eq!(
        refuse(&|m| {
            m.sources[2].verdict = Verdict::Accepted;
            m.sources[2].hosts = vec!["blog.example.com".into()];
        }),
        "Ingress blog/foreign is Accepted, but Tunnel shop/edge only accepts sources in namespace shop"
    );
    assert_eq!(
        refuse(&|m| m.rules.swap(0, 1)),
        "rule 2 (\"www.example.com\" path \"^/api/v1$\" -> \"http://v1.shop.svc.cluster.local:80\") is never reached: rule 1 (\"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://api.shop.svc.cluster.local:80\") matches its requests first"
    );
    let late = rule(
        "www.example.com",
        Some("^/api(?s:/.*)?$"),
        "http://late.shop.svc.cluster.local:80",
    );
    assert_eq!(
        refuse(&|m| m.rules.insert(0, late.clone())),
        "rule 1 (\"www.example.com\" path \"^/api(?s:/.*)?$\" -> \"http://late.shop.svc.cluster.local:80\") is for Ingress shop/late, which is refused (Conflict): \"host www.example.com path /api is served by Ingress shop/web\""
    );
    assert_eq!(
        refuse(&|m| m.dns.push("www.example.org".into())),
        "DNS name \"www.example.org\" is not inside the tunnel's domain example.com"
    );
    assert_eq!(
        refuse(&|m| m.dns.push("blog.example.com".into())),
        "DNS name \"blog.example.com\" belongs only to Ingress blog/foreign, which is refused (NamespaceNotAllowed)"
    );
    assert_eq!(
        refuse(&|m| m.dns.push("ghost.example.com".into())),
        "DNS name \"ghost.example.com\" is not a host of any of the tunnel's sources"
    );
    assert_eq!(
        refuse(&|m| m.dns.push("www.example.com".into())),
        "DNS name \"www.example.com\" is listed twice"
    );
    assert_eq!(
        refuse(&|m| {
            m.rules
                .insert(0, rule("evil.example.com", None, "http://x"));
        }),
        "rule 1 (\"evil.example.com\" -> \"http://x\") is not the rule of any route of the tunnel's sources"
    );
    assert_eq!(
        refuse(&|m| {
            m.rules.insert(0, rule("evil.org", None, "http://x"));
        }),
        "rule 1 (\"evil.org\" -> \"http://x\"): hostname \"evil.org\" is not inside the tunnel's domain example.com"
    );
    assert_eq!(
        refuse(&|m| {
            let first = m.rules[0].clone();
            m.rules.insert(0, first);
        }),
        "rules 1 and 2 both match host \"www.example.com\" path \"^/api/v1$\""
    );
    assert_eq!(
        refuse(&|m| m.rules.insert(0, fallback())),
        "rule 1 ((any host) -> \"http_status:404\") has no hostname: only the last, fallback rule may"
    );
    assert_eq!(
        refuse(&|m| {
            m.sources.pop();
        }),
        "2 source statuses for 3 sources"
    );
    assert_eq!(
        refuse(&|m| m.sources.swap(0, 1)),
        "source status 1 is for Ingress \"shop/late\", expected Ingress shop/web"
    );
    assert_eq!(
        refuse(&|m| m.sources[1].hosts = vec!["www.example.com".into()]),
        "Ingress shop/late is refused (Conflict) but holds hosts [\"www.example.com\"]"
    );
    assert_eq!(
        refuse(&|m| m.sources[0].hosts.push("blog.example.com".into())),
        "Ingress shop/web holds host \"blog.example.com\", which none of its routes has"
    );

    // A missing backend is never published; a wildcard hides what it covers.
    let mut missing = liar.clone();
    missing.sources[0].routes[1].backend = backend(
        "v1",
        80,
        BackendState::Missing("service v1 not found".into()),
    );
    let mapping = mapped(&missing);
    let mut lie = mapping.clone();
    lie.rules.insert(
        0,
        rule(
            "www.example.com",
            Some("^/api/v1$"),
            "http://v1.shop.svc.cluster.local:80",
        ),
    );
    assert_eq!(
        check_mapping(&missing, &lie).unwrap_err(),
        "rule 1 (\"www.example.com\" path \"^/api/v1$\" -> \"http://v1.shop.svc.cluster.local:80\") publishes a missing backend: service v1 not found"
    );
    let wild = request(
        cluster_tunnel(),
        vec![ingress(
            "a",
            "x",
            1,
            vec![
                route("a.b.example.com", prefix("/x"), ready("x")),
                route("*.example.com", None, ready("w")),
            ],
        )],
    );
    let mut lie = mapped(&wild);
    lie.rules.swap(0, 1);
    assert!(
        check_mapping(&wild, &lie)
            .unwrap_err()
            .contains("rule 2 (\"a.b.example.com\" path \"^/x(?s:/.*)?$\" -> \"http://x.a.svc.cluster.local:80\") is never reached: rule 1 (\"*.example.com\"")
    );
}

/// `liar_request` and a source whose root backend is restarting: its
/// `/static` is published, its root withheld.
fn restarting_request() -> Request {
    let mut request = liar_request();
    request.sources.push(ingress(
        "shop",
        "restarting",
        3,
        vec![
            route(
                "app.example.com",
                None,
                backend("app", 8080, BackendState::NoReadyEndpoints),
            ),
            route("app.example.com", prefix("/static"), ready("static")),
        ],
    ));
    request
}

/// A lie told about an honest mapping.
type Lie = Box<dyn Fn(&mut Mapping)>;

/// Mappings whose verdicts say a source is served while its rules or DNS
/// names are gone, or withhold what is ready: each refused with its reason.
#[test]
fn the_host_refuses_verdicts_that_disagree_with_the_rules() {
    let request = restarting_request();
    let honest = mapped(&request);
    assert_eq!(
        verdicts(&honest)[3],
        &Verdict::NoReadyEndpoints("backend app:8080 has no ready endpoints".into())
    );
    let cases: Vec<(&str, Lie, &str)> = vec![
        (
            "drop_accepted_rules",
            Box::new(|m| m.rules.retain(|r| r.hostname.is_none())),
            "Ingress shop/web is Accepted, but its host \"www.example.com\" path /api has no rule",
        ),
        (
            "drop_one_rule_of_an_accepted_source",
            Box::new(|m| m.rules.retain(|r| r.path.as_deref() != Some("^/api/v1$"))),
            "Ingress shop/web is Accepted, but its host \"www.example.com\" exact path /api/v1 has no rule",
        ),
        (
            "accepted_without_rules",
            Box::new(|m| m.sources[3].verdict = Verdict::Accepted),
            "Ingress shop/restarting is Accepted, but its host \"app.example.com\" path / has no rule",
        ),
        (
            "withhold_a_ready_backend",
            Box::new(|m| {
                m.rules
                    .retain(|r| r.path.as_deref() != Some("^/static(?s:/.*)?$"))
            }),
            "Ingress shop/restarting withholds its host \"app.example.com\" path /static, whose backend static:80 is ready",
        ),
        (
            "withhold_ready_backends_called_unready",
            Box::new(|m| {
                m.sources[0].verdict =
                    Verdict::NoReadyEndpoints("backend api:80 has no ready endpoints".into());
                m.rules
                    .retain(|r| r.hostname.as_deref() != Some("www.example.com"));
            }),
            "Ingress shop/web withholds its host \"www.example.com\" path /api, whose backend api:80 is ready",
        ),
        (
            "unready_without_withholding",
            Box::new(|m| {
                m.sources[0].verdict =
                    Verdict::NoReadyEndpoints("backend api:80 has no ready endpoints".into())
            }),
            "Ingress shop/web is NoReadyEndpoints (\"backend api:80 has no ready endpoints\"), but every route of it has its rule",
        ),
        (
            "drop_dns",
            Box::new(|m| m.dns.clear()),
            "Ingress shop/web is Accepted, but its host \"www.example.com\" has no DNS name",
        ),
        (
            "drop_dns_of_a_restarting_source",
            Box::new(|m| m.dns.retain(|name| name != "app.example.com")),
            "Ingress shop/restarting is NoReadyEndpoints, but its host \"app.example.com\" has no DNS name",
        ),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, lie, reason)| {
            let mut mapping = honest.clone();
            lie(&mut mapping);
            let got = check_mapping(&request, &mapping);
            (got != Err(reason.to_string())).then(|| format!("{name}: {got:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What the verdicts allow: an unready backend withheld or, configured so,
/// published; a refused source without rules or DNS names.
#[test]
fn the_host_accepts_verdicts_that_agree_with_the_rules() {
    let request = restarting_request();
    let published = map(
        &request,
        &Config {
            withhold_unready: false,
        },
    );
    assert_eq!(verdicts(&published)[3], &Verdict::Accepted);
    let mut missing = request.clone();
    missing.sources[3].routes[0].backend.state =
        BackendState::Missing("service app not found".into());
    let cases: Vec<(&str, Request, Mapping)> = vec![
        ("unready_withheld", request.clone(), mapped(&request)),
        (
            "unready_published_when_configured",
            request.clone(),
            published,
        ),
        ("missing_withheld", missing.clone(), mapped(&missing)),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, request, mapping)| {
            let got = check_mapping(&request, &mapping);
            got.is_err().then(|| format!("{name}: {got:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A plugin's strings reach a refusal escaped: no line breaks or control
/// characters of its own in a log line or an Event.
#[test]
fn plugin_strings_are_quoted_in_refusals() {
    let request = liar_request();
    let honest = mapped(&request);
    let lies: Vec<Lie> = vec![
        Box::new(|m| m.dns.push("evil\nlevel=info msg=forged".into())),
        Box::new(|m| {
            m.rules
                .insert(0, rule("x.example.com\r", Some("\u{1b}[2J"), "http://x\n"))
        }),
        Box::new(|m| m.sources[1].hosts = vec!["a\nb".into()]),
        Box::new(|m| m.sources[0].name = "web\n".into()),
    ];
    for lie in lies {
        let mut mapping = honest.clone();
        lie(&mut mapping);
        let reason = check_mapping(&request, &mapping).unwrap_err();
        assert!(!reason.contains(|c: char| c.is_control()), "{reason:?}");
    }
}

/// The same small generator the other plugins use: a seed replays.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random request over a small pool of hosts and paths, so that conflicts,
/// wildcards, refusals and unready backends all happen.
fn random_request(rng: &mut SplitMix64) -> Request {
    const HOSTS: &[&str] = &[
        "app.example.com",
        "api.example.com",
        "example.com",
        "*.example.com",
        "*.dev.example.com",
        "a.dev.example.com",
        "deep.a.dev.example.com",
        "*.a.dev.example.com",
        "app.example.com",
        "api.example.com",
        "other.org",
        "",
        "Bad_Host.example.com",
    ];
    let paths: Vec<Option<(PathMatch, &str)>> = vec![
        None,
        None,
        prefix("/"),
        prefix(""),
        prefix("/api"),
        prefix("/api/"),
        prefix("/api/v1"),
        exact("/api"),
        exact("/api/v1"),
        exact("/v1.0"),
        prefix("/v1.0"),
        Some((PathMatch::RegularExpression, "/static/.*")),
        Some((PathMatch::RegularExpression, "^/api/v1$")),
        Some((PathMatch::RegularExpression, "^/img")),
        Some((PathMatch::RegularExpression, "^/api(?s:/.*)?$")),
        Some((PathMatch::RegularExpression, "/v1\\.0(?s:/.*)?$")),
        prefix("api"),
    ];
    let states = [
        BackendState::Ready,
        BackendState::Ready,
        BackendState::Ready,
        BackendState::Ready,
        BackendState::NoReadyEndpoints,
        BackendState::Missing("service gone not found".into()),
    ];
    let namespaces = ["a", "b", "c"];
    let tunnel = if rng.below(3) == 0 {
        tunnel_in("a")
    } else {
        cluster_tunnel()
    };
    let count = rng.below(12);
    let sources = (0..count)
        .map(|i| {
            let routes = (0..rng.below(5))
                .map(|_| {
                    // Mostly valid hosts, now and then a bad one.
                    let host = if rng.below(8) == 0 {
                        *rng.pick(&HOSTS[10..])
                    } else {
                        *rng.pick(&HOSTS[..10])
                    };
                    let path = rng.pick(&paths).map(|(k, p)| (k, p));
                    let path = if path == prefix("api") && rng.below(4) != 0 {
                        None
                    } else {
                        path
                    };
                    let mut b = backend(
                        rng.pick::<&str>(&["web", "api", "static"]),
                        *rng.pick(&[80, 8080]),
                        rng.pick(&states).clone(),
                    );
                    if rng.below(4) == 0 {
                        b.scheme = Scheme::Https;
                    }
                    route(host, path, b)
                })
                .collect();
            Source {
                kind: if rng.below(2) == 0 {
                    SourceKind::Ingress
                } else {
                    SourceKind::HttpRoute
                },
                namespace: rng.pick(&namespaces).to_string(),
                name: format!("s{i}"),
                created: rng.below(4) as i64,
                routes,
                origin: OriginRequest {
                    no_tls_verify: (rng.below(4) == 0).then_some(true),
                    ..OriginRequest::default()
                },
            }
        })
        .collect();
    request(tunnel, sources)
}

/// cloudflared's host match: `*.name` covers every host ending in `.name`.
fn host_matches(rule_host: &str, host: &str) -> bool {
    rule_host == host
        || rule_host
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix))
}

/// A request (host, path) that `rule` matches and that no earlier rule of a
/// correct order may take; `None` for regex rules, which are not judged.
fn witness(rule: &IngressRule) -> Option<(String, String)> {
    let host = rule.hostname.as_deref()?;
    let host = match host.strip_prefix("*.") {
        Some(rest) => format!("witness-q7.{rest}"),
        None => host.to_string(),
    };
    let path = match PathShape::of(rule.path.as_deref()) {
        PathShape::All => "/witness-q7".to_string(),
        PathShape::Exact(p) => p,
        // Under the prefix, so that a rule for the prefix itself does not
        // count as hiding it.
        PathShape::Prefix(p) => format!("{p}/witness-q7"),
        PathShape::Unknown => return None,
    };
    Some((host, path))
}

fn rule_matches(rule: &IngressRule, host: &str, path: &str) -> bool {
    let host_ok = rule
        .hostname
        .as_deref()
        .is_none_or(|h| host_matches(h, host));
    let path_ok = match PathShape::of(rule.path.as_deref()) {
        PathShape::All => true,
        PathShape::Exact(p) => path == p,
        PathShape::Prefix(p) => PathShape::Prefix(p).covers(&PathShape::Exact(path.into())),
        PathShape::Unknown => false,
    };
    host_ok && path_ok
}

#[test]
fn every_mapping_passes_the_hosts_check_and_reaches_every_rule() {
    let mut rng = SplitMix64(20);
    let mut seen = BTreeSet::new();
    for _ in 0..3000 {
        let request = random_request(&mut rng);
        for config in [
            Config::default(),
            Config {
                withhold_unready: false,
            },
        ] {
            let mapping = map(&request, &config);
            if let Err(why) = check_mapping(&request, &mapping) {
                panic!("{why}\n{request:#?}\n{mapping:#?}");
            }
            // Every published rule with a literal path is reached by a
            // request of its own, under cloudflared's first-match.
            for (n, rule) in mapping.rules.iter().enumerate() {
                let Some((host, path)) = witness(rule) else {
                    continue;
                };
                let first = mapping
                    .rules
                    .iter()
                    .position(|r| rule_matches(r, &host, &path));
                assert_eq!(first, Some(n), "{host}{path} in {:#?}", mapping.rules);
            }
            // The input order does not change any decision.
            let mut reversed = request.clone();
            reversed.sources.reverse();
            let mut again = map(&reversed, &config);
            again.sources.reverse();
            assert_eq!(again, mapping);
            for status in &mapping.sources {
                seen.insert(status.verdict.name());
            }
        }
    }
    // The generator reaches every verdict.
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn generated_lies_are_all_refused() {
    let mut rng = SplitMix64(7);
    let mut refused = 0;
    for _ in 0..2000 {
        let request = random_request(&mut rng);
        let honest = map(&request, &Config::default());
        let published = honest.rules.len() - 1;
        // Drop the fallback.
        let mut lie = honest.clone();
        lie.rules.pop();
        assert!(check_mapping(&request, &lie).is_err());
        // A rule for each refused source's routes.
        for (source, status) in request.sources.iter().zip(&honest.sources) {
            if !status.verdict.is_refused() {
                continue;
            }
            for route in &source.routes {
                let rule = route_rule(source, route, &request.cluster_domain);
                // Skip what a source not refused may publish too.
                let publishable = request.sources.iter().zip(&honest.sources).any(|(s, st)| {
                    !st.verdict.is_refused()
                        && s.routes.iter().any(|r| {
                            !matches!(r.backend.state, BackendState::Missing(_))
                                && route_rule(s, r, &request.cluster_domain) == rule
                        })
                });
                if publishable {
                    continue;
                }
                let mut lie = honest.clone();
                lie.rules.insert(0, rule);
                assert!(check_mapping(&request, &lie).is_err(), "{lie:#?}");
                refused += 1;
            }
        }
        // Move the catch-all of a host in front of that host's other rules.
        if published >= 2 {
            let mut lie = honest.clone();
            if let Some(n) = (1..published).find(|&n| {
                lie.rules[n].path.is_none() && lie.rules[n - 1].hostname == lie.rules[n].hostname
            }) {
                lie.rules.swap(n - 1, n);
                assert!(check_mapping(&request, &lie).is_err());
            }
        }
        // A published rule with origin settings not its source's.
        if published >= 1 {
            let mut lie = honest.clone();
            let origin = &mut lie.rules[rng.below(published)].origin;
            origin.no_tls_verify = match origin.no_tls_verify {
                Some(_) => None,
                None => Some(true),
            };
            assert!(check_mapping(&request, &lie).is_err(), "{lie:#?}");
        }
        // Any published rule dropped: its source is not refused, and its
        // backend is ready (the default configuration withholds the others).
        if published >= 1 {
            let mut lie = honest.clone();
            lie.rules.remove(rng.below(published));
            assert!(check_mapping(&request, &lie).is_err(), "{lie:#?}");
        }
        // The DNS names of sources not refused dropped.
        if !honest.dns.is_empty() {
            let mut lie = honest.clone();
            lie.dns.clear();
            assert!(check_mapping(&request, &lie).is_err(), "{lie:#?}");
        }
        // A DNS name outside the domain.
        let mut lie = honest;
        lie.dns.push("a.example.net".into());
        assert!(check_mapping(&request, &lie).is_err());
    }
    assert!(refused > 100, "{refused}");
}

/// A mapper that passes on a pattern Go cannot compile would have
/// cloudflared refuse the whole configuration: the host refuses the answer.
#[test]
fn the_host_refuses_a_rule_go_cannot_compile() {
    let request = request(
        cluster_tunnel(),
        vec![ingress(
            "tenant-a",
            "bad",
            1,
            vec![route(
                "a.example.com",
                Some((PathMatch::RegularExpression, "/(a|b")),
                ready("a"),
            )],
        )],
    );
    let mut lie = map(&request, &Config::default());
    lie.sources[0].verdict = Verdict::Accepted;
    lie.sources[0].hosts = vec!["a.example.com".into()];
    lie.dns = vec!["a.example.com".into()];
    lie.rules.insert(
        0,
        rule(
            "a.example.com",
            Some("^/(a|b"),
            "http://a.tenant-a.svc.cluster.local:80",
        ),
    );
    let error = check_mapping(&request, &lie).unwrap_err();
    assert!(
        error.starts_with("rule 1 (\"a.example.com\" path \"^/(a|b\"")
            && error.contains("does not compile"),
        "{error}"
    );
}

/// Origin settings on the fallback rule are named in the refusal.
#[test]
fn the_fallback_rule_carries_no_origin_settings() {
    let request = request(cluster_tunnel(), vec![]);
    let mut lie = mapped(&request);
    lie.rules[0].origin.no_tls_verify = Some(true);
    assert_eq!(
        check_mapping(&request, &lie),
        Err("the last rule must be the fallback ((any host) -> \"http_status:404\"), found (any host) -> \"http_status:404\" with origin settings noTLSVerify=\"true\"".into())
    );
}
