use super::*;
use crate::{Backend, BackendState, Config, OriginRequest, Scheme, parse_config, parse_seconds};

#[test]
fn https_backends_and_the_cluster_domain_make_the_service_url() {
    let b = Backend {
        service: "dash".into(),
        port: 8443,
        scheme: Scheme::Https,
        state: BackendState::Ready,
    };
    assert_eq!(
        service_url(&b, "ops", "corp.internal"),
        "https://dash.ops.svc.corp.internal:8443"
    );
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
        Ok(Config {
            withhold_unready: true
        })
    );
    assert_eq!(
        parse_config(&entries(&[("withhold-unready", "false")])),
        Ok(Config {
            withhold_unready: false
        })
    );
    assert_eq!(
        parse_config(&entries(&[("withhold-unready", "yes")])),
        Err("withhold-unready \"yes\": expected true or false".into())
    );
    assert_eq!(
        parse_config(&entries(&[("withold-unready", "true")])),
        Err("unknown configuration key \"withold-unready\": expected withhold-unready".into())
    );
}

#[rstest::rstest]
#[case::seconds("30s", Ok(30))]
#[case::minutes("2m", Ok(120))]
#[case::hours("1h", Ok(3600))]
#[case::a_day("24h", Ok(86_400))]
#[case::over_a_day("86401s", Err("at most a day (86400s)"))]
#[case::overflow("99999999999h", Err("at most a day (86400s)"))]
#[case::no_unit("30", Err(DURATION))]
#[case::go_compound("1m30s", Err(DURATION))]
#[case::fraction("1.5s", Err(DURATION))]
#[case::negative("-1s", Err(DURATION))]
#[case::no_number("s", Err(DURATION))]
#[case::empty("", Err(DURATION))]
fn origin_durations_are_whole_units(#[case] text: &str, #[case] expected: Result<u32, &str>) {
    assert_eq!(parse_seconds(text), expected.map_err(String::from));
}

const DURATION: &str =
    "expected a whole number of seconds, minutes or hours, such as 30s, 2m or 1h";

#[test]
fn origin_settings_are_read_by_cloudflareds_names() {
    let mut origin = OriginRequest::default();
    for (key, value) in [
        ("noTLSVerify", "true"),
        ("originServerName", "web.internal"),
        ("caPool", "/etc/ca/root.pem"),
        ("httpHostHeader", "web.example.com"),
        ("connectTimeout", "10s"),
        ("tlsTimeout", "5s"),
        ("keepAliveTimeout", "2m"),
        ("http2Origin", "true"),
        ("disableChunkedEncoding", "false"),
    ] {
        origin.set(key, value).unwrap();
    }
    assert_eq!(
        origin,
        OriginRequest {
            no_tls_verify: Some(true),
            origin_server_name: Some("web.internal".into()),
            ca_pool: Some("/etc/ca/root.pem".into()),
            http_host_header: Some("web.example.com".into()),
            connect_timeout: Some(10),
            tls_timeout: Some(5),
            keep_alive_timeout: Some(120),
            http2_origin: Some(true),
            disable_chunked_encoding: Some(false),
        }
    );
}

#[rstest::rstest]
#[case::unknown_key(
    "noTlsVerify",
    "true",
    "unknown origin setting \"noTlsVerify\": expected one of noTLSVerify, originServerName, caPool, httpHostHeader, connectTimeout, tlsTimeout, keepAliveTimeout, http2Origin, disableChunkedEncoding"
)]
#[case::not_a_flag("noTLSVerify", "yes", "noTLSVerify \"yes\": expected true or false")]
#[case::empty_text(
    "originServerName",
    "",
    "originServerName \"\": expected a non-empty line of text"
)]
#[case::two_lines(
    "httpHostHeader",
    "a\nb",
    "httpHostHeader \"a\\nb\": expected a non-empty line of text"
)]
#[case::bad_duration(
    "connectTimeout",
    "30",
    "connectTimeout \"30\": expected a whole number of seconds, minutes or hours, such as 30s, 2m or 1h"
)]
fn bad_origin_settings_say_which_and_why(
    #[case] key: &str,
    #[case] value: &str,
    #[case] expected: &str,
) {
    assert_eq!(
        OriginRequest::default().set(key, value),
        Err(expected.to_string())
    );
}

#[test]
fn every_scheme_makes_its_url() {
    for scheme in Scheme::ALL {
        let b = Backend {
            service: "db".into(),
            port: 22,
            scheme,
            state: BackendState::Ready,
        };
        assert_eq!(
            service_url(&b, "ops", "cluster.local"),
            format!("{}://db.ops.svc.cluster.local:22", scheme.name())
        );
    }
}

#[test]
fn origin_settings_print_by_cloudflareds_names() {
    assert_eq!(OriginRequest::default().to_string(), "none");
    let origin = OriginRequest {
        no_tls_verify: Some(false),
        http_host_header: Some("a\"b".into()),
        keep_alive_timeout: Some(90),
        ..OriginRequest::default()
    };
    assert_eq!(
        origin.to_string(),
        "noTLSVerify=\"false\", httpHostHeader=\"a\\\"b\", keepAliveTimeout=\"90s\""
    );
}
