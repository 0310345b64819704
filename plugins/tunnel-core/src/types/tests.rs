use super::*;
use crate::{Backend, BackendState, Config, Scheme, parse_config};

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
