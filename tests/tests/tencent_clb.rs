//! The Tencent CLB client against the strict fake CLB API: signatures,
//! asynchronous tasks, retries, errors, and that the secret key never shows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use knit::providers::tencent::{
    BatchTarget, ClbClient, ClientOptions, Credentials, Error, HealthCheck, ListenerFilter,
    ListenerSettings, Protocol, RetryPolicy, Target, TaskPolling,
};
use knit_tests::fake_clb::{FakeClb, FakeTarget};

const REGION: &str = "ap-chengdu";
const SECRET_ID: &str = "AKIDknitTestKey0001";
const SECRET_KEY: &str = "knit-test-secret-key-do-not-print";

/// Fast retries and polling, so the tests take milliseconds, not seconds.
fn options(endpoint: &str) -> ClientOptions {
    ClientOptions {
        endpoint: endpoint.to_owned(),
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            attempts: 8,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
        },
        task_polling: TaskPolling {
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
        },
        ..ClientOptions::new(REGION)
    }
}

/// Credentials the way the controller gets them: from a Secret.
fn credentials() -> Credentials {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tencent-cloud", "namespace": "knit-system"},
        "stringData": {"secretId": SECRET_ID, "secretKey": SECRET_KEY},
    }))
    .unwrap();
    Credentials::from_secret(&secret).unwrap()
}

/// A fake that knows the test key pair, and a client using it.
async fn setup() -> (FakeClb, ClbClient) {
    let fake = FakeClb::start().await;
    fake.add_credentials(SECRET_ID, SECRET_KEY);
    fake.set_task_delay(Duration::from_millis(100));
    let client = ClbClient::new(credentials(), options(fake.endpoint())).unwrap();
    (fake, client)
}

fn code(error: &Error) -> &str {
    error
        .code()
        .unwrap_or_else(|| panic!("not an API error: {error}"))
}

fn all() -> ListenerFilter {
    ListenerFilter::default()
}

/// `CreateListener` for `ports`, unnamed, with the CLB's default settings.
async fn create(
    client: &ClbClient,
    lb: &str,
    protocol: Protocol,
    ports: &[u16],
) -> Result<knit::providers::tencent::CreatedListeners, Error> {
    client
        .create_listeners(lb, protocol, ports, &[], &ListenerSettings::default())
        .await
}

#[tokio::test]
async fn a_bad_signature_is_rejected() {
    let (fake, _) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);

    let wrong_key = Credentials::new(SECRET_ID, "not-the-key");
    let client = ClbClient::new(wrong_key, options(fake.endpoint())).unwrap();
    let error = client.describe_listeners(&lb, &all()).await.unwrap_err();
    assert_eq!(code(&error), "AuthFailure.SignatureFailure", "{error}");
    assert!(!error.is_retryable());
    assert_eq!(
        fake.calls("DescribeListeners"),
        1,
        "auth failures are not retried"
    );

    let unknown_id = Credentials::new("AKIDnobody", SECRET_KEY);
    let client = ClbClient::new(unknown_id, options(fake.endpoint())).unwrap();
    let error = client.describe_listeners(&lb, &all()).await.unwrap_err();
    assert_eq!(code(&error), "AuthFailure.SecretIdNotFound", "{error}");

    // The fake's clock ten minutes ahead: the client's timestamp is stale.
    fake.skew_clock(600);
    let client = ClbClient::new(credentials(), options(fake.endpoint())).unwrap();
    let error = client.describe_listeners(&lb, &all()).await.unwrap_err();
    assert_eq!(code(&error), "AuthFailure.SignatureExpire", "{error}");
    fake.skew_clock(0);
    assert!(client.describe_listeners(&lb, &all()).await.is_ok());
}

#[tokio::test]
async fn a_created_listener_is_listed_once_its_task_succeeds() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);

    let lbs = client
        .describe_load_balancers(std::slice::from_ref(&lb))
        .await
        .unwrap();
    assert_eq!(lbs.len(), 1);
    assert_eq!(lbs[0].load_balancer_id, lb);
    assert_eq!(lbs[0].load_balancer_vips, ["139.135.64.53"]);

    let created = client
        .create_listeners(
            &lb,
            Protocol::Tcp,
            &[501],
            &["gameserver-0".to_owned()],
            &ListenerSettings::default(),
        )
        .await
        .unwrap();
    assert_eq!(created.listener_ids.len(), 1);
    client.wait_task(&created.task).await.unwrap();
    assert!(
        fake.calls("DescribeTaskStatus") >= 2,
        "the task ran for a while, so it was polled more than once"
    );

    let listeners = client.describe_listeners(&lb, &all()).await.unwrap();
    assert_eq!(listeners.len(), 1);
    let listener = &listeners[0];
    assert_eq!(listener.listener_id, created.listener_ids[0]);
    assert_eq!(
        (
            listener.protocol,
            listener.port,
            listener.listener_name.as_str()
        ),
        (Protocol::Tcp, 501, "gameserver-0")
    );
    assert_eq!(fake.listeners(&lb)[0].id, listener.listener_id);

    // Filters: by port and protocol.
    let by_port = ListenerFilter {
        port: Some(501),
        protocol: Some(Protocol::Tcp),
        ..all()
    };
    assert_eq!(
        client
            .describe_listeners(&lb, &by_port)
            .await
            .unwrap()
            .len(),
        1
    );
    let other_port = ListenerFilter {
        port: Some(502),
        ..all()
    };
    assert!(
        client
            .describe_listeners(&lb, &other_port)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting one, then several at once.
    let task = client
        .delete_listener(&lb, &listener.listener_id)
        .await
        .unwrap();
    client.wait_task(&task).await.unwrap();
    assert!(fake.listeners(&lb).is_empty());
    let created = create(&client, &lb, Protocol::Udp, &[601, 602])
        .await
        .unwrap();
    client.wait_task(&created.task).await.unwrap();
    assert_eq!(fake.listeners(&lb).len(), 2);
    assert_eq!(client.delete_listeners(&lb, &[]).await.unwrap(), None);
    assert_eq!(fake.calls("DeleteLoadBalancerListeners"), 0);
    let task = client
        .delete_listeners(&lb, &created.listener_ids)
        .await
        .unwrap()
        .unwrap();
    client.wait_task(&task).await.unwrap();
    assert!(fake.listeners(&lb).is_empty());
}

#[tokio::test]
async fn targets_are_registered_and_deregistered() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let created = create(&client, &lb, Protocol::Tcp, &[501, 502])
        .await
        .unwrap();
    client.wait_task(&created.task).await.unwrap();
    let (first, second) = (&created.listener_ids[0], &created.listener_ids[1]);

    let task = client
        .register_targets(&lb, first, &[Target::ip("10.0.0.7", 9000)])
        .await
        .unwrap();
    client.wait_task(&task).await.unwrap();
    assert_eq!(
        fake.targets(first),
        [FakeTarget {
            instance_id: None,
            eni_ip: Some("10.0.0.7".into()),
            port: 9000,
            weight: 10,
        }]
    );
    let described = client
        .describe_targets(
            &lb,
            &ListenerFilter {
                listener_ids: vec![first.clone()],
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(described.len(), 1);
    let backend = &described[0].targets[0];
    assert_eq!(backend.kind, "ENI");
    assert_eq!(backend.private_ip_addresses, ["10.0.0.7"]);
    assert_eq!(backend.port, 9000);

    // Registering it twice is refused.
    let error = client
        .register_targets(&lb, first, &[Target::ip("10.0.0.7", 9000)])
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameter", "{error}");

    let task = client
        .deregister_targets(&lb, first, &[Target::ip("10.0.0.7", 9000)])
        .await
        .unwrap();
    client.wait_task(&task).await.unwrap();
    assert!(fake.targets(first).is_empty());

    // A batch over both listeners and one that does not exist: the missing
    // one is reported, the others change.
    let batch = |listener: &str, ip: &str| BatchTarget {
        listener_id: listener.to_owned(),
        target: Target::ip(ip, 9000),
    };
    let outcome = client
        .batch_register_targets(
            &lb,
            &[
                batch(first, "10.0.0.8"),
                batch(second, "10.0.0.9"),
                batch("lbl-missing0", "10.0.0.10"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome.failed_listener_ids, ["lbl-missing0"]);
    client.wait_task(&outcome.task).await.unwrap();
    assert_eq!(fake.targets(first)[0].eni_ip.as_deref(), Some("10.0.0.8"));
    assert_eq!(fake.targets(second)[0].eni_ip.as_deref(), Some("10.0.0.9"));
    let all_targets = client.describe_targets(&lb, &all()).await.unwrap();
    assert_eq!(
        all_targets.iter().map(|l| l.targets.len()).sum::<usize>(),
        2
    );

    let outcome = client
        .batch_deregister_targets(&lb, &[batch(first, "10.0.0.8"), batch(second, "10.0.0.9")])
        .await
        .unwrap();
    assert!(outcome.failed_listener_ids.is_empty());
    client.wait_task(&outcome.task).await.unwrap();
    assert!(fake.targets(first).is_empty() && fake.targets(second).is_empty());
}

#[tokio::test]
async fn resource_in_operating_is_retried_until_the_task_ends() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let first = create(&client, &lb, Protocol::Tcp, &[501]).await.unwrap();
    client.wait_task(&first.task).await.unwrap();

    // A second write while the LB is busy with a 300 ms task.
    fake.set_task_delay(Duration::from_millis(300));
    let second = create(&client, &lb, Protocol::Tcp, &[502]).await.unwrap();
    let task = client
        .delete_listener(&lb, &first.listener_ids[0])
        .await
        .unwrap();
    assert!(
        fake.calls("DeleteListener") > 1,
        "the first DeleteListener met ResourceInOperating and was retried"
    );
    client.wait_task(&task).await.unwrap();
    client.wait_task(&second.task).await.unwrap();
    let ports: Vec<u16> = fake.listeners(&lb).iter().map(|l| l.port).collect();
    assert_eq!(ports, [502]);
}

#[tokio::test]
async fn rate_limit_errors_are_retried() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);

    fake.fail_next("DescribeListeners", 3, "RequestLimitExceeded");
    assert!(client.describe_listeners(&lb, &all()).await.is_ok());
    assert_eq!(fake.calls("DescribeListeners"), 4);

    // Sub-codes are throttling too.
    fake.fail_next(
        "DescribeTargets",
        1,
        "RequestLimitExceeded.UinLimitExceeded",
    );
    assert!(client.describe_targets(&lb, &all()).await.is_ok());
    assert_eq!(fake.calls("DescribeTargets"), 2);

    // A global limit of 10 requests a second: 25 calls in a row all succeed.
    fake.set_rate_limit(Some(10));
    for _ in 0..25 {
        client
            .describe_load_balancers(std::slice::from_ref(&lb))
            .await
            .unwrap();
    }
    assert!(fake.rate_limited() > 0, "the limit was hit");
    assert!(fake.calls("DescribeLoadBalancers") > 25);
}

#[tokio::test]
async fn retries_are_bounded() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    fake.fail_next("DescribeListeners", 100, "InternalError");
    let error = client.describe_listeners(&lb, &all()).await.unwrap_err();
    assert_eq!(code(&error), "InternalError");
    assert_eq!(
        fake.calls("DescribeListeners"),
        8,
        "attempts calls, no more"
    );
}

#[tokio::test]
async fn a_non_retryable_error_surfaces_with_its_code_and_message() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let created = create(&client, &lb, Protocol::Tcp, &[501]).await.unwrap();
    client.wait_task(&created.task).await.unwrap();

    let error = create(&client, &lb, Protocol::Tcp, &[501])
        .await
        .unwrap_err();
    let Error::Api {
        action,
        code: api_code,
        message,
        request_id,
    } = &error
    else {
        panic!("not an API error: {error}");
    };
    assert_eq!(*action, "CreateListener");
    assert_eq!(api_code, "InvalidParameter.PortCheckFailed");
    assert!(message.contains("501"), "{message}");
    assert!(!request_id.is_empty());
    assert!(
        error
            .to_string()
            .contains("InvalidParameter.PortCheckFailed")
    );
    assert_eq!(fake.calls("CreateListener"), 2, "not retried");

    // UDP has ports of its own; HTTP shares TCP's.
    let udp = create(&client, &lb, Protocol::Udp, &[501]).await.unwrap();
    client.wait_task(&udp.task).await.unwrap();
    let error = create(&client, &lb, Protocol::Http, &[501])
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameter.PortCheckFailed");

    fake.set_listener_quota(&lb, 3);
    let error = create(&client, &lb, Protocol::Tcp, &[502, 503])
        .await
        .unwrap_err();
    assert_eq!(code(&error), "LimitExceeded", "{error}");
    assert!(!error.is_retryable() && !error.is_not_found());
}

#[tokio::test]
async fn a_failed_or_slow_task_is_reported() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);

    fake.fail_next_tasks("CreateListener", 1);
    let created = create(&client, &lb, Protocol::Tcp, &[501]).await.unwrap();
    let error = client.wait_task(&created.task).await.unwrap_err();
    assert!(matches!(error, Error::TaskFailed { .. }), "{error}");
    assert!(fake.listeners(&lb).is_empty());

    fake.set_task_delay(Duration::from_secs(30));
    let patient = ClbClient::new(
        credentials(),
        ClientOptions {
            task_polling: TaskPolling {
                initial_interval: Duration::from_millis(20),
                max_interval: Duration::from_millis(50),
                timeout: Duration::from_millis(300),
            },
            ..options(fake.endpoint())
        },
    )
    .unwrap();
    let created = patient
        .create_listeners(
            &lb,
            Protocol::Tcp,
            &[502],
            &[],
            &ListenerSettings::default(),
        )
        .await
        .unwrap();
    let error = patient.wait_task(&created.task).await.unwrap_err();
    assert!(matches!(error, Error::TaskTimeout { .. }), "{error}");
}

#[tokio::test]
async fn a_deleted_lb_is_not_found() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let created = create(&client, &lb, Protocol::Tcp, &[501]).await.unwrap();
    // Deleted behind the client's back while its task runs.
    fake.delete_lb(&lb);
    let error = client.wait_task(&created.task).await.unwrap_err();
    assert!(matches!(error, Error::TaskFailed { .. }), "{error}");

    let error = client.describe_listeners(&lb, &all()).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(!error.is_retryable());
    let error = create(&client, &lb, Protocol::Tcp, &[501])
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(
        client
            .describe_load_balancers(std::slice::from_ref(&lb))
            .await
            .unwrap()
            .is_empty()
    );

    // An LB is found in its own region only.
    let elsewhere = fake.add_lb("ap-guangzhou", &["139.135.64.54"]);
    let error = client
        .describe_listeners(&elsewhere, &all())
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");

    // A listener that is gone.
    let lb = fake.add_lb(REGION, &["139.135.64.55"]);
    let error = client
        .delete_listener(&lb, "lbl-gone0000")
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidParameter.ListenerIdNotFound");
    assert!(error.is_not_found());
}

#[tokio::test]
async fn the_secret_key_never_shows() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let mut shown = vec![format!("{:?}", credentials()), format!("{client:?}")];

    // API errors, signature ones included.
    let wrong_key = ClbClient::new(
        Credentials::new(SECRET_ID, format!("{SECRET_KEY}-wrong")),
        options(fake.endpoint()),
    )
    .unwrap();
    shown.push(format!("{wrong_key:?}"));
    for error in [
        wrong_key.describe_listeners(&lb, &all()).await.unwrap_err(),
        client
            .describe_listeners("lb-none0000", &all())
            .await
            .unwrap_err(),
    ] {
        shown.push(format!("{error} {error:?}"));
    }

    // A transport error: nothing listens on the port of a stopped fake.
    let endpoint = fake.endpoint().to_owned();
    drop(fake);
    let unreachable = ClbClient::new(credentials(), options(&endpoint)).unwrap();
    let error = unreachable
        .describe_listeners(&lb, &all())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error}");
    assert!(
        error.is_retryable(),
        "a refused connection is safe to retry"
    );
    shown.push(format!("{error} {error:?}"));

    for text in shown {
        assert!(!text.contains(SECRET_KEY), "the secret key leaked: {text}");
    }
}

/// Every request body knit's CLB client sends, each action at least once and
/// the listener settings in full, decodes into the official Tencent Cloud Go
/// SDK's request type and reads back unchanged (`tests/sdkcheck`): the fake
/// is written by the same hands as the client, the SDK is not.
#[tokio::test]
async fn every_request_decodes_into_the_official_sdk_types() {
    let (fake, client) = setup().await;
    let lb = fake.add_lb(REGION, &["139.135.64.53"]);
    let settings = ListenerSettings {
        health_check: Some(HealthCheck {
            health_switch: Some(1),
            time_out: Some(3),
            interval_time: Some(10),
            health_num: Some(2),
            un_health_num: Some(4),
            http_code: Some(2),
            http_check_path: Some("/healthz".into()),
            http_check_domain: Some("game.example.com".into()),
            http_check_method: Some("GET".into()),
            check_port: Some(8080),
            context_type: Some("TEXT".into()),
            send_context: Some("ping".into()),
            recv_context: Some("pong".into()),
            check_type: Some("CUSTOM".into()),
            http_version: Some("HTTP/1.1".into()),
            source_ip_type: Some(1),
            extended_code: Some("200".into()),
        }),
        session_expire_time: Some(60),
        scheduler: Some("LEAST_CONN".into()),
        session_type: Some("NORMAL".into()),
        deregister_target_rst: Some(true),
        max_conn: Some(100),
        max_cps: Some(10),
        idle_connect_timeout: Some(60),
    };
    client
        .describe_load_balancers(std::slice::from_ref(&lb))
        .await
        .unwrap();
    let created = client
        .create_listeners(
            &lb,
            Protocol::Tcp,
            &[501, 502],
            &["a".into(), "b".into()],
            &settings,
        )
        .await
        .unwrap();
    client.wait_task(&created.task).await.unwrap();
    let (first, second) = (&created.listener_ids[0], &created.listener_ids[1]);
    let filter = ListenerFilter {
        listener_ids: vec![first.clone()],
        protocol: Some(Protocol::Tcp),
        port: Some(501),
    };
    client.describe_listeners(&lb, &filter).await.unwrap();
    let task = client.modify_listener(&lb, first, &settings).await.unwrap();
    client.wait_task(&task).await.unwrap();
    let pod = [Target::ip("10.0.0.7", 9000)];
    for register in [true, false] {
        let task = if register {
            client.register_targets(&lb, first, &pod).await
        } else {
            client.deregister_targets(&lb, first, &pod).await
        };
        client.wait_task(&task.unwrap()).await.unwrap();
    }
    let batch = [BatchTarget {
        listener_id: second.clone(),
        target: Target::instance("ins-1", 80),
    }];
    for register in [true, false] {
        let outcome = if register {
            client.batch_register_targets(&lb, &batch).await
        } else {
            client.batch_deregister_targets(&lb, &batch).await
        };
        client.wait_task(&outcome.unwrap().task).await.unwrap();
    }
    client.describe_targets(&lb, &all()).await.unwrap();
    let task = client.delete_listener(&lb, first).await.unwrap();
    client.wait_task(&task).await.unwrap();
    let task = client
        .delete_listeners(&lb, std::slice::from_ref(second))
        .await
        .unwrap()
        .unwrap();
    client.wait_task(&task).await.unwrap();

    let said = fake.assert_requests_decode_with_the_sdk();
    for action in [
        "DescribeLoadBalancers",
        "CreateListener",
        "DescribeTaskStatus",
        "DescribeListeners",
        "ModifyListener",
        "RegisterTargets",
        "DeregisterTargets",
        "BatchRegisterTargets",
        "BatchDeregisterTargets",
        "DescribeTargets",
        "DeleteListener",
        "DeleteLoadBalancerListeners",
    ] {
        assert!(
            said.contains(&format!("{action}=")),
            "{action} not checked: {said}"
        );
    }
}
