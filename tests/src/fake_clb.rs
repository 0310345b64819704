//! A fake of the Tencent Cloud CLB API (version 2018-03-17) for tests: an
//! HTTP server on 127.0.0.1 that keeps LBs, listeners and targets, and is as
//! strict as the real one about what knit relies on.
//!
//! - Every request must carry a valid TC3-HMAC-SHA256 signature, checked
//!   here with code of its own (not the client's signer): a wrong signature
//!   is `AuthFailure.SignatureFailure`, an unknown key
//!   `AuthFailure.SecretIdNotFound`, a timestamp more than five minutes off
//!   `AuthFailure.SignatureExpire`.
//! - Writes answer at once with a `RequestId` and take effect as a task that
//!   ends after `set_task_delay`; `DescribeTaskStatus` reports it 2
//!   (running), 0 (succeeded) or 1 (failed). While a task runs, other writes
//!   to its LB get `FailedOperation.ResourceInOperating`.
//! - Listener ports conflict per LB and transport (TCP, HTTP, HTTPS and
//!   TCP_SSL share TCP ports; UDP and QUIC share UDP ones), listeners are
//!   limited by a per-LB quota (`LimitExceeded`), an LB is found only in
//!   its own region.
//! - Parameters it does not model are refused (`UnknownParameter`), so a
//!   client cannot depend on something the fake silently ignores.
//! - Faults: fail the next calls of an action with a given code, fail the
//!   next tasks of an action, a global rate limit (`RequestLimitExceeded`),
//!   a skewed clock, and LBs deleted behind the client's back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The version this fake speaks.
pub const VERSION: &str = "2018-03-17";
/// The listener quota of a new LB.
pub const DEFAULT_LISTENER_QUOTA: usize = 50;

/// A running fake; the server stops when this is dropped.
pub struct FakeClb {
    endpoint: String,
    state: Arc<Mutex<Cloud>>,
    server: tokio::task::JoinHandle<()>,
}

/// How many request bodies the fake keeps (`request_bodies`).
pub const BODIES_KEPT: usize = 2000;

/// A listener as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeListener {
    pub id: String,
    pub protocol: String,
    pub port: u16,
    pub name: String,
    /// Its settings as `DescribeListeners` reports them (the API's
    /// defaults where none was given): `HealthCheck`, `Scheduler`, ...
    pub settings: Map<String, Value>,
}

/// A registered backend: a CVM instance or a private (ENI) IP, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeTarget {
    pub instance_id: Option<String>,
    pub eni_ip: Option<String>,
    pub port: u16,
    pub weight: u8,
}

impl FakeClb {
    /// Starts a fake on a free port of 127.0.0.1, on the caller's runtime.
    pub async fn start() -> FakeClb {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake CLB API");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(Cloud::new(address.port())));
        let app = Router::new()
            .route("/", post(handle))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serving the fake CLB API");
        });
        FakeClb {
            endpoint: format!("http://{address}"),
            state,
            server,
        }
    }

    /// The base URL to give the client.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Accepts requests signed with this key pair.
    pub fn add_credentials(&self, secret_id: &str, secret_key: &str) {
        self.cloud()
            .keys
            .insert(secret_id.to_owned(), secret_key.to_owned());
    }

    /// Creates an LB in `region` with these VIPs and the default listener
    /// quota; returns its ID.
    pub fn add_lb(&self, region: &str, vips: &[&str]) -> String {
        let mut cloud = self.cloud();
        let id = cloud.new_id("lb");
        let vips = vips.iter().map(|vip| vip.to_string()).collect();
        cloud
            .lbs
            .insert(id.clone(), Lb::new(region, format!("fake-{id}"), vips));
        id
    }

    /// Creates an LB with a chosen ID, e.g. the seed example's `lb-xxx`.
    pub fn add_lb_with_id(&self, id: &str, region: &str, vips: &[&str]) {
        let vips = vips.iter().map(|vip| vip.to_string()).collect();
        self.cloud()
            .lbs
            .insert(id.to_owned(), Lb::new(region, format!("fake-{id}"), vips));
    }

    /// The LBs that exist, with their tags as `(TagKey, TagValue)`.
    pub fn lb_tags(&self) -> BTreeMap<String, Vec<(String, String)>> {
        self.cloud()
            .lbs
            .iter()
            .map(|(id, lb)| (id.clone(), lb.tags.clone()))
            .collect()
    }

    /// Every listener of every LB, by LB.
    pub fn all_listeners(&self) -> BTreeMap<String, Vec<FakeListener>> {
        let ids: Vec<String> = self.cloud().lbs.keys().cloned().collect();
        ids.into_iter()
            .map(|id| {
                let listeners = self.listeners(&id);
                (id, listeners)
            })
            .collect()
    }

    /// Requests received, refused ones included, by action.
    /// The last request bodies received (at most `BODIES_KEPT`), oldest
    /// first, with their action: to check against the official SDK's types.
    pub fn request_bodies(&self) -> Vec<(String, String)> {
        self.cloud().bodies.iter().cloned().collect()
    }

    /// Runs every kept request body through `knit-clb-sdkcheck` (the
    /// official Go SDK's request types, `tests/sdkcheck`) and panics with
    /// its report unless each decodes and reads back unchanged; returns the
    /// report (`checked Action=n ...`).
    pub fn assert_requests_decode_with_the_sdk(&self) -> String {
        let input: String = self
            .request_bodies()
            .into_iter()
            .map(|(action, body)| format!("{action}\t{body}\n"))
            .collect();
        let output = crate::run_with_input(
            std::process::Command::new(crate::tool("knit-clb-sdkcheck")),
            &input,
        );
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "the SDK's types refuse knit's requests:\n{said}"
        );
        said
    }

    pub fn calls_by_action(&self) -> BTreeMap<String, u64> {
        self.cloud()
            .calls
            .iter()
            .map(|(a, n)| (a.clone(), *n))
            .collect()
    }

    pub fn set_listener_quota(&self, lb: &str, quota: usize) {
        self.cloud()
            .lbs
            .get_mut(lb)
            .expect("no such LB")
            .listener_quota = quota;
    }

    /// Deletes an LB out of band, as a person in the console would.
    pub fn delete_lb(&self, lb: &str) {
        self.cloud().lbs.remove(lb);
    }

    /// Adds a listener out of band (someone else's, e.g. made in the
    /// console); returns its ID.
    pub fn add_foreign_listener(&self, lb: &str, protocol: &str, port: u16) -> String {
        let mut cloud = self.cloud();
        let id = cloud.new_id("lbl");
        let listener = ListenerState {
            id: id.clone(),
            protocol: protocol.into(),
            port,
            name: "made-by-hand".into(),
            targets: Vec::new(),
            settings: default_settings(),
        };
        cloud
            .lbs
            .get_mut(lb)
            .expect("no such LB")
            .listeners
            .insert(id.clone(), listener);
        id
    }

    /// Deletes a listener out of band, targets and all, as a person in the
    /// console would.
    pub fn delete_listener(&self, lb: &str, listener_id: &str) {
        let mut cloud = self.cloud();
        cloud.settle();
        if let Some(lb) = cloud.lbs.get_mut(lb) {
            lb.listeners.remove(listener_id);
        }
    }

    /// Changes a listener's settings as the console would (no task).
    pub fn modify_listener_out_of_band(&self, listener_id: &str, settings: Value) {
        let mut cloud = self.cloud();
        cloud.settle();
        let listener = cloud
            .lbs
            .values_mut()
            .find_map(|lb| lb.listeners.get_mut(listener_id))
            .expect("no such listener");
        let settings: ListenerSettings = serde_json::from_value(settings).expect("settings");
        settings.merge_into(&mut listener.settings);
    }

    /// The LB's listeners (after every task due by now), by port.
    pub fn listeners(&self, lb: &str) -> Vec<FakeListener> {
        let mut cloud = self.cloud();
        cloud.settle();
        let mut listeners: Vec<FakeListener> = cloud
            .lbs
            .get(lb)
            .map(|lb| lb.listeners.values().map(|l| l.public()).collect())
            .unwrap_or_default();
        listeners.sort_by_key(|listener| (listener.port, listener.protocol.clone()));
        listeners
    }

    /// The targets registered on a listener of any LB.
    pub fn targets(&self, listener_id: &str) -> Vec<FakeTarget> {
        let mut cloud = self.cloud();
        cloud.settle();
        cloud
            .lbs
            .values()
            .find_map(|lb| lb.listeners.get(listener_id))
            .map(|listener| listener.targets.clone())
            .unwrap_or_default()
    }

    /// Refusals sent with this error code, e.g.
    /// `FailedOperation.ResourceInOperating` for a write to an LB whose task
    /// is still running.
    pub fn refusals(&self, code: &str) -> u64 {
        self.cloud().refusals.get(code).copied().unwrap_or(0)
    }

    /// Requests received with this `X-TC-Action`, refused ones included.
    pub fn calls(&self, action: &str) -> u64 {
        self.cloud().calls.get(action).copied().unwrap_or(0)
    }

    /// How long tasks started from now on run.
    pub fn set_task_delay(&self, delay: Duration) {
        self.cloud().task_delay = delay;
    }

    /// The next `times` authenticated calls of `action` fail with `code`.
    pub fn fail_next(&self, action: &str, times: usize, code: &str) {
        let mut cloud = self.cloud();
        let queue = cloud.injected.entry(action.to_owned()).or_default();
        queue.extend((0..times).map(|_| code.to_owned()));
    }

    /// The next `times` tasks that `action` starts end in failure, with no
    /// effect.
    pub fn fail_next_tasks(&self, action: &str, times: u32) {
        *self
            .cloud()
            .failing_tasks
            .entry(action.to_owned())
            .or_default() += times;
    }

    /// At most `per_second` requests a second in all, in bursts of up to
    /// `per_second`; `None` lifts the limit.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.cloud().rate_limit = per_second.map(|rate| TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: Instant::now(),
        });
    }

    /// Requests refused with `RequestLimitExceeded` by the rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.cloud().rate_limited
    }

    /// Sets the fake's clock this many seconds ahead of the real one, to
    /// expire signatures.
    pub fn skew_clock(&self, seconds: i64) {
        self.cloud().clock_skew = seconds;
    }

    fn cloud(&self) -> MutexGuard<'_, Cloud> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FakeClb {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(state): State<Arc<Mutex<Cloud>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut cloud = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let request_id = cloud.new_request_id();
    let mut response = match cloud.serve(&headers, &body, &request_id) {
        Ok(fields) => fields,
        Err(Refusal { code, message }) => json!({"Error": {"Code": code, "Message": message}}),
    };
    response["RequestId"] = request_id.into();
    // Like the real API: HTTP 200 for errors too, the outcome is in the body.
    (
        [(CONTENT_TYPE, "application/json")],
        json!({ "Response": response }).to_string(),
    )
}

/// An API error: its code and message.
#[derive(Debug)]
struct Refusal {
    code: String,
    message: String,
}

fn refuse<T>(code: &str, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code: code.to_owned(),
        message: message.into(),
    })
}

/// Everything the fake holds, behind one lock: each request is served
/// whole, as one step.
struct Cloud {
    /// Makes IDs unique across fakes running at once.
    port: u16,
    counter: u64,
    keys: HashMap<String, String>,
    lbs: BTreeMap<String, Lb>,
    tasks: HashMap<String, Task>,
    task_delay: Duration,
    injected: HashMap<String, VecDeque<String>>,
    failing_tasks: HashMap<String, u32>,
    rate_limit: Option<TokenBucket>,
    rate_limited: u64,
    clock_skew: i64,
    calls: HashMap<String, u64>,
    /// The last `BODIES_KEPT` request bodies, with their action.
    bodies: std::collections::VecDeque<(String, String)>,
    /// Refusals sent, by error code.
    refusals: HashMap<String, u64>,
    /// `CreateLoadBalancer`'s `ClientToken`s and the LBs each made: the
    /// same token again answers the same LBs.
    client_tokens: HashMap<String, Vec<String>>,
}

struct Lb {
    region: String,
    name: String,
    vips: Vec<String>,
    listener_quota: usize,
    listeners: BTreeMap<String, ListenerState>,
    /// `(TagKey, TagValue)`, as created.
    tags: Vec<(String, String)>,
}

#[derive(Clone)]
struct ListenerState {
    id: String,
    protocol: String,
    port: u16,
    name: String,
    targets: Vec<FakeTarget>,
    settings: Map<String, Value>,
}

struct Task {
    lb: String,
    ends: Instant,
    fails: bool,
    effect: Effect,
    status: TaskStatus,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskStatus {
    Succeeded = 0,
    Failed = 1,
    Running = 2,
}

/// What a task does to its LB when it ends well.
enum Effect {
    /// Deletes these LBs (its own among them), listeners and all.
    DeleteLbs(Vec<String>),
    AddListeners(Vec<ListenerState>),
    ModifyListener(String, Box<ListenerSettings>),
    RemoveListeners(Vec<String>),
    AddTargets(Vec<(String, FakeTarget)>),
    RemoveTargets(Vec<(String, FakeTarget)>),
}

struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Cloud {
    fn new(port: u16) -> Self {
        Cloud {
            port,
            counter: 0,
            keys: HashMap::new(),
            lbs: BTreeMap::new(),
            tasks: HashMap::new(),
            task_delay: Duration::from_millis(50),
            injected: HashMap::new(),
            failing_tasks: HashMap::new(),
            rate_limit: None,
            rate_limited: 0,
            clock_skew: 0,
            calls: HashMap::new(),
            bodies: Default::default(),
            refusals: HashMap::new(),
            client_tokens: HashMap::new(),
        }
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        // Eight base-36 digits like the real IDs, from the port and a counter.
        let mut n = u64::from(self.port) * 1_000_000 + self.counter;
        let mut digits = [b'0'; 8];
        for digit in digits.iter_mut().rev() {
            *digit = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
            n /= 36;
        }
        format!("{prefix}-{}", String::from_utf8_lossy(&digits))
    }

    fn new_request_id(&mut self) -> String {
        self.counter += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", self.port, self.counter)
    }

    /// Serves one request, counting its refusal by code.
    fn serve(
        &mut self,
        headers: &HeaderMap,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, Refusal> {
        let answer = self.dispatch(headers, body, request_id);
        if let Err(refusal) = &answer {
            *self.refusals.entry(refusal.code.clone()).or_default() += 1;
        }
        answer
    }

    /// Authenticates, throttles, injects faults, then runs the action.
    fn dispatch(
        &mut self,
        headers: &HeaderMap,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, Refusal> {
        let action = header(headers, "x-tc-action")
            .unwrap_or_default()
            .to_owned();
        *self.calls.entry(action.clone()).or_default() += 1;
        if self.bodies.len() == BODIES_KEPT {
            self.bodies.pop_front();
        }
        let text = String::from_utf8_lossy(body).into_owned();
        self.bodies.push_back((action.clone(), text));
        self.authenticate(headers, body)?;
        if header(headers, "x-tc-version") != Some(VERSION) {
            return refuse("NoSuchVersion", format!("CLB speaks version {VERSION}"));
        }
        let Some(region) = header(headers, "x-tc-region").map(str::to_owned) else {
            return refuse("MissingParameter", "X-TC-Region is required");
        };
        if let Some(bucket) = &mut self.rate_limit
            && !bucket.take()
        {
            self.rate_limited += 1;
            return refuse("RequestLimitExceeded", "request rate limit exceeded");
        }
        if let Some(code) = self.injected.get_mut(&action).and_then(VecDeque::pop_front) {
            return refuse(&code, format!("injected failure of {action}"));
        }
        self.settle();
        let call = Call {
            action: &action,
            region: &region,
            request_id,
        };
        match action.as_str() {
            "DescribeLoadBalancers" => self.describe_load_balancers(&call, parse(body)?),
            "DescribeListeners" => self.describe_listeners(&call, parse(body)?),
            "CreateListener" => self.create_listener(&call, parse(body)?),
            "ModifyListener" => self.modify_listener(&call, parse(body)?),
            "DeleteListener" => self.delete_listener(&call, parse(body)?),
            "DeleteLoadBalancerListeners" => self.delete_listeners(&call, parse(body)?),
            "DescribeTargets" => self.describe_targets(&call, parse(body)?),
            "RegisterTargets" => self.change_targets(&call, parse(body)?, true),
            "DeregisterTargets" => self.change_targets(&call, parse(body)?, false),
            "BatchRegisterTargets" => self.batch_change_targets(&call, parse(body)?, true),
            "BatchDeregisterTargets" => self.batch_change_targets(&call, parse(body)?, false),
            "DescribeTaskStatus" => self.describe_task_status(parse(body)?),
            "CreateLoadBalancer" => self.create_load_balancer(&call, parse(body)?),
            "DeleteLoadBalancer" => self.delete_load_balancers(&call, parse(body)?),
            _ => refuse("InvalidAction", format!("no action {action:?}")),
        }
    }

    /// Checks the TC3-HMAC-SHA256 signature, written apart from the client
    /// so that a mistake shared by both cannot pass.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let Some(authorization) = header(headers, "authorization") else {
            return refuse(
                "AuthFailure.InvalidAuthorization",
                "no Authorization header",
            );
        };
        let Some(parts) = AuthorizationParts::parse(authorization) else {
            return refuse(
                "AuthFailure.InvalidAuthorization",
                "Authorization is not TC3-HMAC-SHA256",
            );
        };
        let Some(timestamp) = header(headers, "x-tc-timestamp").and_then(|t| t.parse::<i64>().ok())
        else {
            return refuse("MissingParameter", "X-TC-Timestamp is required");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64)
            + self.clock_skew;
        if (now - timestamp).abs() > 300 {
            return refuse(
                "AuthFailure.SignatureExpire",
                "the timestamp is more than five minutes from the server time",
            );
        }
        let Some(secret_key) = self.keys.get(parts.secret_id) else {
            return refuse("AuthFailure.SecretIdNotFound", "the SecretId is not found");
        };
        let mismatch = |why: &str| {
            refuse(
                "AuthFailure.SignatureFailure",
                format!("the provided credentials could not be validated: {why}"),
            )
        };
        let date = jiff::Timestamp::from_second(timestamp)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
            .unwrap_or_default();
        if parts.date != date {
            return mismatch("the credential date is not the timestamp's UTC date");
        }
        if parts.service != "clb" {
            return mismatch("the credential service is not clb");
        }
        let mut signed: Vec<&str> = parts.signed_headers.split(';').collect();
        signed.sort_unstable();
        if signed.join(";") != parts.signed_headers
            || !signed.contains(&"content-type")
            || !signed.contains(&"host")
        {
            return mismatch("SignedHeaders must be sorted and include content-type and host");
        }
        let Some(expected) =
            expected_signature(secret_key, timestamp, &parts, &signed, headers, body)
        else {
            return mismatch("a signed header is missing");
        };
        let Ok(claimed) = hex::decode(parts.signature) else {
            return mismatch("the signature is not hex");
        };
        expected
            .verify_slice(&claimed)
            .or_else(|_| mismatch("the signature does not match"))
    }

    /// Ends every task due by now: applies its effect, or fails it when it
    /// was told to or its LB is gone.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut due: Vec<(Instant, String)> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.status == TaskStatus::Running && task.ends <= now)
            .map(|(id, task)| (task.ends, id.clone()))
            .collect();
        due.sort();
        for (_, id) in due {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if let (Effect::DeleteLbs(ids), false) = (&task.effect, task.fails) {
                for id in ids {
                    self.lbs.remove(id);
                }
                task.status = TaskStatus::Succeeded;
                continue;
            }
            task.status = match self.lbs.get_mut(&task.lb) {
                Some(lb) if !task.fails => {
                    lb.apply(&task.effect);
                    TaskStatus::Succeeded
                }
                _ => TaskStatus::Failed,
            };
        }
    }

    /// The LB `id` as seen from `region`.
    fn lb(&self, call: &Call<'_>, id: &str) -> Result<&Lb, Refusal> {
        match self.lbs.get(id) {
            Some(lb) if lb.region == call.region => Ok(lb),
            _ => refuse(
                "InvalidParameter.LBIdNotFound",
                format!("LoadBalancer {id} not exist in {}", call.region),
            ),
        }
    }

    /// The LB `id`, free for a write: no task of its own is running.
    fn writable_lb(&self, call: &Call<'_>, id: &str) -> Result<&Lb, Refusal> {
        let lb = self.lb(call, id)?;
        if let Some((task_id, _)) = self
            .tasks
            .iter()
            .find(|(_, task)| task.lb == id && task.status == TaskStatus::Running)
        {
            return refuse(
                "FailedOperation.ResourceInOperating",
                format!(
                    "Your task is working ({task_id}). Pls wait for the task to complete and try again."
                ),
            );
        }
        Ok(lb)
    }

    fn start_task(&mut self, call: &Call<'_>, lb: &str, effect: Effect) {
        let fails = match self.failing_tasks.get_mut(call.action) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        self.tasks.insert(
            call.request_id.to_owned(),
            Task {
                lb: lb.to_owned(),
                ends: Instant::now() + self.task_delay,
                fails,
                effect,
                status: TaskStatus::Running,
            },
        );
    }

    fn describe_load_balancers(
        &self,
        call: &Call<'_>,
        request: DescribeLoadBalancers,
    ) -> Result<Value, Refusal> {
        let limit = request.limit.unwrap_or(20);
        if limit > 100 {
            return refuse("InvalidParameterValue.Range", "Limit is at most 100");
        }
        let filters = request.filters.unwrap_or_default();
        if filters.len() > 10 {
            return refuse("InvalidParameterValue.Length", "at most 10 Filters");
        }
        let mut tag_filters = Vec::new();
        for filter in &filters {
            let Some(key) = filter.name.strip_prefix("tag:") else {
                return refuse(
                    "InvalidParameter.FormatError",
                    format!("the fake knows no filter {:?}", filter.name),
                );
            };
            if filter.values.is_empty() || filter.values.len() > 100 {
                return refuse("InvalidParameterValue.Length", "Filter.Values: 1 to 100");
            }
            tag_filters.push((key, &filter.values));
        }
        let matching: Vec<(&String, &Lb)> = self
            .lbs
            .iter()
            .filter(|(id, lb)| {
                lb.region == call.region
                    && request
                        .load_balancer_ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(id))
                    && tag_filters.iter().all(|(key, values)| {
                        lb.tags.iter().any(|(k, v)| k == key && values.contains(v))
                    })
            })
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(request.offset.unwrap_or(0))
            .take(limit)
            .map(|(id, lb)| {
                json!({
                    "LoadBalancerId": id,
                    "LoadBalancerName": lb.name,
                    "LoadBalancerType": "OPEN",
                    "Forward": 1,
                    "LoadBalancerVips": lb.vips,
                    "Status": 1,
                    "Tags": lb.tags.iter()
                        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"TotalCount": matching.len(), "LoadBalancerSet": page}))
    }

    /// Creates `Number` LBs at once (a real creation can be slower: the
    /// client must not count on the IDs), refusing what the API refuses.
    fn create_load_balancer(
        &mut self,
        call: &Call<'_>,
        request: CreateLoadBalancer,
    ) -> Result<Value, Refusal> {
        request.check()?;
        if let Some(token) = &request.client_token
            && let Some(ids) = self.client_tokens.get(token)
        {
            return Ok(json!({"LoadBalancerIds": ids, "DealName": format!("deal-{token}")}));
        }
        let mut ids = Vec::new();
        for _ in 0..request.number.unwrap_or(1) {
            let id = self.new_id("lb");
            // A public VIP from the TEST-NET-3 block, one per LB.
            let vip = format!("203.0.113.{}", 1 + self.counter % 250);
            let mut lb = Lb::new(
                call.region,
                request
                    .load_balancer_name
                    .clone()
                    .unwrap_or_else(|| id.clone()),
                vec![vip],
            );
            lb.tags = request
                .tags
                .iter()
                .flatten()
                .map(|t| (t.tag_key.clone(), t.tag_value.clone()))
                .collect();
            self.lbs.insert(id.clone(), lb);
            ids.push(id);
        }
        if let Some(token) = request.client_token {
            self.client_tokens.insert(token, ids.clone());
        }
        Ok(json!({"LoadBalancerIds": ids, "DealName": format!("deal-{}", self.counter)}))
    }

    fn delete_load_balancers(
        &mut self,
        call: &Call<'_>,
        request: DeleteLoadBalancer,
    ) -> Result<Value, Refusal> {
        if request.load_balancer_ids.is_empty() || request.load_balancer_ids.len() > 20 {
            return refuse(
                "InvalidParameterValue.Length",
                "LoadBalancerIds: 1 to 20 IDs",
            );
        }
        for id in &request.load_balancer_ids {
            self.writable_lb(call, id)?;
        }
        let first = request.load_balancer_ids[0].clone();
        self.start_task(call, &first, Effect::DeleteLbs(request.load_balancer_ids));
        Ok(json!({}))
    }

    fn describe_listeners(
        &self,
        call: &Call<'_>,
        request: ListenerQuery,
    ) -> Result<Value, Refusal> {
        let lb = self.lb(call, &request.load_balancer_id)?;
        let listeners: Vec<Value> = request
            .select(lb)?
            .map(|listener| {
                json!({
                    "ListenerId": listener.id,
                    "Protocol": listener.protocol,
                    "Port": listener.port,
                    "ListenerName": listener.name,
                    "Certificate": null,
                    "Rules": null,
                    "CreateTime": "2026-01-01 00:00:00",
                })
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(listener.settings.clone())
                .collect::<Map<String, Value>>()
                .into()
            })
            .collect();
        Ok(json!({"TotalCount": listeners.len(), "Listeners": listeners}))
    }

    fn describe_targets(&self, call: &Call<'_>, request: ListenerQuery) -> Result<Value, Refusal> {
        let lb = self.lb(call, &request.load_balancer_id)?;
        let listeners: Vec<Value> = request
            .select(lb)?
            .map(|listener| {
                let targets: Vec<Value> = listener
                    .targets
                    .iter()
                    .map(|target| {
                        json!({
                            "Type": if target.eni_ip.is_some() { "ENI" } else { "CVM" },
                            "InstanceId": target.instance_id,
                            "Port": target.port,
                            "Weight": target.weight,
                            "PrivateIpAddresses": target.eni_ip.as_ref().map(|ip| vec![ip]),
                        })
                    })
                    .collect();
                json!({
                    "ListenerId": listener.id,
                    "Protocol": listener.protocol,
                    "Port": listener.port,
                    "Rules": null,
                    // The API answers null, not [], for a listener without targets.
                    "Targets": if targets.is_empty() { Value::Null } else { targets.into() },
                })
            })
            .collect();
        Ok(json!({"Listeners": listeners}))
    }

    fn create_listener(
        &mut self,
        call: &Call<'_>,
        request: CreateListener,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        let Some(port_space) = transport(&request.protocol) else {
            return refuse(
                "InvalidParameterValue",
                format!("unknown Protocol {:?}", request.protocol),
            );
        };
        if request.ports.is_empty() {
            return refuse("MissingParameter", "Ports is required");
        }
        if request.ports.contains(&0) {
            return refuse("InvalidParameterValue.Range", "ports are 1-65535");
        }
        let names = request.listener_names.unwrap_or_default();
        if !names.is_empty() && names.len() != request.ports.len() {
            return refuse(
                "InvalidParameter",
                "ListenerNames must name every port, in order",
            );
        }
        for (i, port) in request.ports.iter().enumerate() {
            if request.ports[..i].contains(port) {
                return refuse(
                    "InvalidParameterValue.Duplicate",
                    format!("port {port} is repeated"),
                );
            }
            if let Some(taken) = lb
                .listeners
                .values()
                .find(|l| l.port == *port && transport(&l.protocol) == Some(port_space))
            {
                return refuse(
                    "InvalidParameter.PortCheckFailed",
                    format!("port {port} is used by listener {}", taken.id),
                );
            }
        }
        request.settings.check()?;
        let mut settings = default_settings();
        request.settings.merge_into(&mut settings);
        if lb.listeners.len() + request.ports.len() > lb.listener_quota {
            return refuse(
                "LimitExceeded",
                format!("the LB allows {} listeners", lb.listener_quota),
            );
        }
        let created: Vec<ListenerState> = request
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| ListenerState {
                id: self.new_id("lbl"),
                protocol: request.protocol.clone(),
                port: *port,
                name: names.get(i).cloned().unwrap_or_default(),
                targets: Vec::new(),
                settings: settings.clone(),
            })
            .collect();
        let ids: Vec<String> = created.iter().map(|l| l.id.clone()).collect();
        self.start_task(
            call,
            &request.load_balancer_id,
            Effect::AddListeners(created),
        );
        Ok(json!({"ListenerIds": ids}))
    }

    fn modify_listener(
        &mut self,
        call: &Call<'_>,
        request: ModifyListener,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        lb.listener(&request.listener_id)?;
        request.settings.check()?;
        let effect = Effect::ModifyListener(request.listener_id, Box::new(request.settings));
        self.start_task(call, &request.load_balancer_id, effect);
        Ok(json!({}))
    }

    fn delete_listener(
        &mut self,
        call: &Call<'_>,
        request: DeleteListener,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        lb.listener(&request.listener_id)?;
        let effect = Effect::RemoveListeners(vec![request.listener_id]);
        self.start_task(call, &request.load_balancer_id, effect);
        Ok(json!({}))
    }

    fn delete_listeners(
        &mut self,
        call: &Call<'_>,
        request: DeleteLoadBalancerListeners,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        // As documented: no ListenerIds deletes every listener of the LB.
        let ids = match request.listener_ids {
            Some(ids) if !ids.is_empty() => ids,
            _ => lb.listeners.keys().cloned().collect(),
        };
        if ids.len() > 20 {
            return refuse("InvalidParameterValue.Length", "at most 20 ListenerIds");
        }
        for id in &ids {
            lb.listener(id)?;
        }
        self.start_task(
            call,
            &request.load_balancer_id,
            Effect::RemoveListeners(ids),
        );
        Ok(json!({}))
    }

    fn change_targets(
        &mut self,
        call: &Call<'_>,
        request: ChangeTargets,
        register: bool,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        let listener = lb.listener(&request.listener_id)?;
        if request.targets.is_empty() || request.targets.len() > 20 {
            return refuse(
                "InvalidParameterValue.Length",
                "Targets holds 1 to 20 targets",
            );
        }
        let targets = valid_targets(&request.targets)?;
        for target in &targets {
            if let Err(why) = listener.accepts(target, register) {
                return refuse("InvalidParameter", why);
            }
        }
        let changes = targets
            .into_iter()
            .map(|target| (request.listener_id.clone(), target))
            .collect();
        let effect = if register {
            Effect::AddTargets(changes)
        } else {
            Effect::RemoveTargets(changes)
        };
        self.start_task(call, &request.load_balancer_id, effect);
        Ok(json!({}))
    }

    /// Changes what it can; listeners that are missing or refuse a target
    /// are answered in `FailListenerIdSet` and left as they were.
    fn batch_change_targets(
        &mut self,
        call: &Call<'_>,
        request: BatchChangeTargets,
        register: bool,
    ) -> Result<Value, Refusal> {
        let lb = self.writable_lb(call, &request.load_balancer_id)?;
        if request.targets.is_empty() || request.targets.len() > 500 {
            return refuse(
                "InvalidParameterValue.Length",
                "Targets holds 1 to 500 targets",
            );
        }
        let plain: Vec<TargetInput> = request
            .targets
            .iter()
            .map(BatchTargetInput::target)
            .collect();
        let targets = valid_targets(&plain)?;
        let mut failed: Vec<String> = Vec::new();
        for (input, target) in request.targets.iter().zip(&targets) {
            let accepted = lb
                .listeners
                .get(&input.listener_id)
                .is_some_and(|listener| listener.accepts(target, register).is_ok());
            if !accepted && !failed.contains(&input.listener_id) {
                failed.push(input.listener_id.clone());
            }
        }
        let changes: Vec<(String, FakeTarget)> = request
            .targets
            .iter()
            .zip(targets)
            .filter(|(input, _)| !failed.contains(&input.listener_id))
            .map(|(input, target)| (input.listener_id.clone(), target))
            .collect();
        let effect = if register {
            Effect::AddTargets(changes)
        } else {
            Effect::RemoveTargets(changes)
        };
        self.start_task(call, &request.load_balancer_id, effect);
        Ok(json!({"FailListenerIdSet": failed}))
    }

    fn describe_task_status(&self, request: DescribeTaskStatus) -> Result<Value, Refusal> {
        let Some(task_id) = request.task_id else {
            return refuse("MissingParameter", "TaskId is required");
        };
        match self.tasks.get(&task_id) {
            Some(task) => Ok(json!({"Status": task.status as u8, "LoadBalancerIds": [task.lb]})),
            None => refuse("InvalidParameter", format!("task {task_id} not found")),
        }
    }
}

impl Lb {
    fn new(region: &str, name: String, vips: Vec<String>) -> Lb {
        Lb {
            region: region.to_owned(),
            name,
            vips,
            listener_quota: DEFAULT_LISTENER_QUOTA,
            listeners: BTreeMap::new(),
            tags: Vec::new(),
        }
    }

    fn listener(&self, id: &str) -> Result<&ListenerState, Refusal> {
        self.listeners.get(id).map_or_else(
            || {
                refuse(
                    "InvalidParameter.ListenerIdNotFound",
                    format!("listener {id} not found"),
                )
            },
            Ok,
        )
    }

    fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::AddListeners(listeners) => {
                for listener in listeners {
                    self.listeners.insert(listener.id.clone(), listener.clone());
                }
            }
            Effect::RemoveListeners(ids) => {
                for id in ids {
                    self.listeners.remove(id);
                }
            }
            // Done by `settle`: an LB cannot remove itself.
            Effect::DeleteLbs(_) => {}
            Effect::ModifyListener(id, settings) => {
                if let Some(listener) = self.listeners.get_mut(id) {
                    settings.merge_into(&mut listener.settings);
                }
            }
            Effect::AddTargets(changes) => {
                for (listener, target) in changes {
                    if let Some(listener) = self.listeners.get_mut(listener) {
                        listener.targets.push(target.clone());
                    }
                }
            }
            Effect::RemoveTargets(changes) => {
                for (listener, target) in changes {
                    if let Some(listener) = self.listeners.get_mut(listener) {
                        listener.targets.retain(|t| !same_backend(t, target));
                    }
                }
            }
        }
    }
}

impl ListenerState {
    fn public(&self) -> FakeListener {
        FakeListener {
            settings: self.settings.clone(),
            id: self.id.clone(),
            protocol: self.protocol.clone(),
            port: self.port,
            name: self.name.clone(),
        }
    }

    /// Whether `target` can be registered (not yet there) or deregistered
    /// (there).
    fn accepts(&self, target: &FakeTarget, register: bool) -> Result<(), String> {
        let bound = self.targets.iter().any(|t| same_backend(t, target));
        let backend = target
            .eni_ip
            .as_ref()
            .or(target.instance_id.as_ref())
            .map_or("", String::as_str);
        match (register, bound) {
            (true, true) => Err(format!(
                "{backend}:{} is already bound to {}",
                target.port, self.id
            )),
            (false, false) => Err(format!(
                "{backend}:{} is not bound to {}",
                target.port, self.id
            )),
            _ => Ok(()),
        }
    }
}

/// The same backend: same instance or IP, same port (the weight is not
/// part of it).
fn same_backend(a: &FakeTarget, b: &FakeTarget) -> bool {
    a.instance_id == b.instance_id && a.eni_ip == b.eni_ip && a.port == b.port
}

/// The port space a protocol's listeners live in.
fn transport(protocol: &str) -> Option<&'static str> {
    match protocol {
        "TCP" | "HTTP" | "HTTPS" | "TCP_SSL" => Some("tcp"),
        "UDP" | "QUIC" => Some("udp"),
        _ => None,
    }
}

fn valid_targets(inputs: &[TargetInput]) -> Result<Vec<FakeTarget>, Refusal> {
    let mut targets: Vec<FakeTarget> = Vec::new();
    for input in inputs {
        let target = match (&input.instance_id, &input.eni_ip) {
            (Some(_), None) => FakeTarget {
                instance_id: input.instance_id.clone(),
                eni_ip: None,
                port: input.port,
                weight: 10,
            },
            (None, Some(ip)) if ip.parse::<IpAddr>().is_ok() => FakeTarget {
                instance_id: None,
                eni_ip: Some(ip.clone()),
                port: input.port,
                weight: 10,
            },
            (None, Some(ip)) => return refuse("InvalidParameterValue", format!("EniIp {ip:?}")),
            _ => {
                return refuse(
                    "InvalidParameter",
                    "a target has exactly one of InstanceId and EniIp",
                );
            }
        };
        if input.port == 0 {
            return refuse("InvalidParameterValue.Range", "target ports are 1-65535");
        }
        let weight = input.weight.unwrap_or(10);
        if weight > 100 {
            return refuse("InvalidParameterValue.Range", "Weight is 0-100");
        }
        let target = FakeTarget {
            weight: weight as u8,
            ..target
        };
        if targets.iter().any(|t| same_backend(t, &target)) {
            return refuse("InvalidParameterValue.Duplicate", "a target is repeated");
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Which action, from where, under which request ID.
struct Call<'a> {
    action: &'a str,
    region: &'a str,
    request_id: &'a str,
}

/// The parts of `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request,
/// SignedHeaders=..., Signature=...`.
struct AuthorizationParts<'a> {
    secret_id: &'a str,
    date: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

impl<'a> AuthorizationParts<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let fields = value.strip_prefix("TC3-HMAC-SHA256 ")?;
        let mut credential = None;
        let mut signed_headers = None;
        let mut signature = None;
        for field in fields.split(',') {
            let (name, value) = field.trim().split_once('=')?;
            match name {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed_headers = Some(value),
                "Signature" => signature = Some(value),
                _ => return None,
            }
        }
        let mut scope = credential?.split('/');
        let parts = AuthorizationParts {
            secret_id: scope.next()?,
            date: scope.next()?,
            service: scope.next()?,
            signed_headers: signed_headers?,
            signature: signature?,
        };
        (scope.next()? == "tc3_request" && scope.next().is_none()).then_some(parts)
    }
}

/// The MAC a request signed as `parts` says should carry, computed from the
/// request as received; `None` when a signed header is missing. Compared
/// with `verify_slice`, in constant time.
fn expected_signature(
    secret_key: &str,
    timestamp: i64,
    parts: &AuthorizationParts<'_>,
    signed: &[&str],
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Hmac<Sha256>> {
    let mut canonical = String::from("POST\n/\n\n");
    for name in signed {
        let value = header(headers, name)?;
        canonical.push_str(&format!("{name}:{}\n", value.trim().to_lowercase()));
    }
    canonical.push('\n');
    canonical.push_str(parts.signed_headers);
    canonical.push('\n');
    canonical.push_str(&hex::encode(Sha256::digest(body)));
    let string_to_sign = [
        "TC3-HMAC-SHA256".to_owned(),
        timestamp.to_string(),
        format!("{}/{}/tc3_request", parts.date, parts.service),
        hex::encode(Sha256::digest(canonical.as_bytes())),
    ]
    .join("\n");
    let mut key = format!("TC3{secret_key}").into_bytes();
    for part in [parts.date, parts.service, "tc3_request"] {
        key = keyed_hash(&key, part.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec();
    }
    Some(keyed_hash(&key, string_to_sign.as_bytes()))
}

fn keyed_hash(key: &[u8], message: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// A request body, refused the way the API refuses parameters.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).or_else(|error| {
        let message = error.to_string();
        let code = if message.starts_with("unknown field") {
            "UnknownParameter"
        } else if message.starts_with("missing field") {
            "MissingParameter"
        } else {
            "InvalidParameter.FormatError"
        };
        refuse(code, message)
    })
}

// Request bodies, with only the parameters the fake models.

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DescribeLoadBalancers {
    load_balancer_ids: Option<Vec<String>>,
    filters: Option<Vec<Filter>>,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Filter {
    name: String,
    values: Vec<String>,
}

/// `CreateLoadBalancer`: the parameters the fake checks; the others the
/// SDK's request type has are accepted as they are (the SDK check decodes
/// every body with that type, so a name it lacks still fails a test).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateLoadBalancer {
    load_balancer_type: String,
    load_balancer_name: Option<String>,
    vpc_id: Option<String>,
    subnet_id: Option<String>,
    number: Option<u64>,
    vip_isp: Option<String>,
    tags: Option<Vec<TagInfo>>,
    client_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TagInfo {
    tag_key: String,
    tag_value: String,
}

impl CreateLoadBalancer {
    /// What the API refuses, as its documentation and error codes say.
    fn check(&self) -> Result<(), Refusal> {
        let invalid = |message: String| refuse("InvalidParameterValue", message);
        match self.load_balancer_type.as_str() {
            "OPEN" => {}
            "INTERNAL" if self.subnet_id.is_some() => {}
            "INTERNAL" => return invalid("an INTERNAL CLB needs SubnetId".into()),
            other => return invalid(format!("LoadBalancerType {other:?}: OPEN or INTERNAL")),
        }
        if let Some(isp) = &self.vip_isp
            && (self.load_balancer_type != "OPEN"
                || !["CMCC", "CUCC", "CTCC"].contains(&isp.as_str()))
        {
            return invalid(format!(
                "VipIsp {isp:?}: CMCC, CUCC or CTCC, on an OPEN CLB"
            ));
        }
        if self
            .load_balancer_name
            .as_ref()
            .is_some_and(|n| n.chars().count() > 60)
        {
            return invalid("LoadBalancerName: at most 60 characters".into());
        }
        if self.vpc_id.as_ref().is_some_and(|v| !v.starts_with("vpc-")) {
            return invalid("VpcId: a vpc-… ID".into());
        }
        if !(1..=20).contains(&self.number.unwrap_or(1)) {
            return invalid("Number: 1 to 20".into());
        }
        if self
            .client_token
            .as_ref()
            .is_some_and(|t| t.len() > 64 || !t.is_ascii())
        {
            return invalid("ClientToken: at most 64 ASCII characters".into());
        }
        for tag in self.tags.iter().flatten() {
            let reserved = ["qcloud", "tencent", "project"]
                .iter()
                .any(|p| tag.tag_key.to_ascii_lowercase().starts_with(p));
            if tag.tag_key.is_empty() || tag.tag_key.len() > 127 || reserved {
                return invalid(format!("TagKey {:?}", tag.tag_key));
            }
            if tag.tag_value.len() > 255 {
                return invalid(format!(
                    "TagValue of {:?}: at most 255 characters",
                    tag.tag_key
                ));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DeleteLoadBalancer {
    load_balancer_ids: Vec<String>,
}

/// `DescribeListeners` and `DescribeTargets`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ListenerQuery {
    load_balancer_id: String,
    listener_ids: Option<Vec<String>>,
    protocol: Option<String>,
    port: Option<u16>,
}

impl ListenerQuery {
    fn select<'a>(
        &'a self,
        lb: &'a Lb,
    ) -> Result<impl Iterator<Item = &'a ListenerState> + 'a, Refusal> {
        if let Some(ids) = &self.listener_ids {
            if ids.len() > 100 {
                return refuse("InvalidParameterValue.Length", "at most 100 ListenerIds");
            }
            for id in ids {
                lb.listener(id)?;
            }
        }
        Ok(lb.listeners.values().filter(move |listener| {
            self.listener_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&listener.id))
                && self
                    .protocol
                    .as_ref()
                    .is_none_or(|p| *p == listener.protocol)
                && self.port.is_none_or(|port| port == listener.port)
        }))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateListener {
    load_balancer_id: String,
    ports: Vec<u16>,
    protocol: String,
    listener_names: Option<Vec<String>>,
    #[serde(flatten)]
    settings: ListenerSettings,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModifyListener {
    load_balancer_id: String,
    listener_id: String,
    #[serde(flatten)]
    settings: ListenerSettings,
}

/// The settings `CreateListener` and `ModifyListener` take for a layer-4
/// listener, typed as the API types them. (`deny_unknown_fields` does not
/// work beside `flatten`: `rest` catches what is left and refuses it.)
#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "PascalCase")]
struct ListenerSettings {
    health_check: Option<HealthCheck>,
    session_expire_time: Option<i64>,
    scheduler: Option<String>,
    session_type: Option<String>,
    deregister_target_rst: Option<bool>,
    max_conn: Option<i64>,
    max_cps: Option<i64>,
    idle_connect_timeout: Option<i64>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize, serde::Serialize, Clone, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct HealthCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    health_switch: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_out: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_num: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    un_health_num: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_check_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_check_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_check_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    send_context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recv_context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_ip_type: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_code: Option<String>,
}

/// What `DescribeListeners` reports of a TCP listener created with no
/// settings.
fn default_settings() -> Map<String, Value> {
    json!({
        "HealthCheck": {"HealthSwitch": 1, "TimeOut": 2, "IntervalTime": 5, "HealthNum": 3,
                        "UnHealthNum": 3, "HttpCode": null, "HttpCheckPath": null,
                        "HttpCheckDomain": null, "HttpCheckMethod": null, "CheckPort": null,
                        "ContextType": null, "SendContext": null, "RecvContext": null,
                        "CheckType": "TCP", "HttpVersion": null, "SourceIpType": 0,
                        "ExtendedCode": null},
        "Scheduler": "WRR",
        "SessionExpireTime": 0,
        "SessionType": "NORMAL",
        "DeregisterTargetRst": false,
        "MaxConn": -1,
        "MaxCps": -1,
        "IdleConnectTimeout": 900,
    })
    .as_object()
    .cloned()
    .expect("an object")
}

impl ListenerSettings {
    /// The API's checks of these settings, as far as they are documented.
    fn check(&self) -> Result<(), Refusal> {
        if let Some(field) = self.rest.keys().next() {
            return refuse(
                "UnknownParameter",
                format!("the parameter {field} is not recognized"),
            );
        }
        let range = |name: &str, value: Option<i64>, low: i64, high: i64| match value {
            Some(v) if v < low || v > high => refuse(
                "InvalidParameterValue.Range",
                format!("{name} must be within {low}-{high}, got {v}"),
            ),
            _ => Ok(()),
        };
        if let Some(hc) = &self.health_check {
            range("HealthCheck.HealthSwitch", hc.health_switch, 0, 1)?;
            range("HealthCheck.TimeOut", hc.time_out, 2, 60)?;
            range("HealthCheck.IntervalTime", hc.interval_time, 2, 300)?;
            range("HealthCheck.HealthNum", hc.health_num, 2, 10)?;
            range("HealthCheck.UnHealthNum", hc.un_health_num, 2, 10)?;
            range("HealthCheck.HttpCode", hc.http_code, 1, 31)?;
            range("HealthCheck.SourceIpType", hc.source_ip_type, 0, 1)?;
            if let (Some(timeout), Some(interval)) = (hc.time_out, hc.interval_time)
                && timeout >= interval
            {
                return refuse(
                    "InvalidParameterValue",
                    "HealthCheck.TimeOut must be less than HealthCheck.IntervalTime",
                );
            }
        }
        if let Some(time) = self.session_expire_time
            && time != 0
        {
            range("SessionExpireTime", Some(time), 30, 3600)?;
        }
        if let Some(scheduler) = &self.scheduler
            && !["WRR", "LEAST_CONN", "IP_HASH"].contains(&scheduler.as_str())
        {
            return refuse(
                "InvalidParameterValue",
                format!("Scheduler {scheduler:?} is not WRR, LEAST_CONN or IP_HASH"),
            );
        }
        range("IdleConnectTimeout", self.idle_connect_timeout, 1, 900)?;
        Ok(())
    }

    /// Writes what these settings set over `stored`.
    fn merge_into(&self, stored: &mut Map<String, Value>) {
        if let Some(hc) = &self.health_check {
            let check = stored.entry("HealthCheck").or_insert_with(|| json!({}));
            for (key, value) in serde_json::to_value(hc)
                .expect("serializes")
                .as_object()
                .into_iter()
                .flatten()
            {
                check[key] = value.clone();
            }
        }
        let fields = [
            (
                "SessionExpireTime",
                self.session_expire_time.map(Value::from),
            ),
            ("Scheduler", self.scheduler.clone().map(Value::from)),
            ("SessionType", self.session_type.clone().map(Value::from)),
            (
                "DeregisterTargetRst",
                self.deregister_target_rst.map(Value::from),
            ),
            ("MaxConn", self.max_conn.map(Value::from)),
            ("MaxCps", self.max_cps.map(Value::from)),
            (
                "IdleConnectTimeout",
                self.idle_connect_timeout.map(Value::from),
            ),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                stored.insert(key.into(), value);
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DeleteListener {
    load_balancer_id: String,
    listener_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DeleteLoadBalancerListeners {
    load_balancer_id: String,
    listener_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct TargetInput {
    instance_id: Option<String>,
    eni_ip: Option<String>,
    port: u16,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ChangeTargets {
    load_balancer_id: String,
    listener_id: String,
    targets: Vec<TargetInput>,
}

/// A `TargetInput` and its listener. Spelled out rather than flattened:
/// serde cannot refuse unknown fields through `flatten`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BatchTargetInput {
    listener_id: String,
    instance_id: Option<String>,
    eni_ip: Option<String>,
    port: u16,
    weight: Option<u32>,
}

impl BatchTargetInput {
    fn target(&self) -> TargetInput {
        TargetInput {
            instance_id: self.instance_id.clone(),
            eni_ip: self.eni_ip.clone(),
            port: self.port,
            weight: self.weight,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BatchChangeTargets {
    load_balancer_id: String,
    targets: Vec<BatchTargetInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DescribeTaskStatus {
    task_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const ID: &str = "AKIDfake";
    const KEY: &str = "fake-key";

    fn cloud() -> Cloud {
        let mut cloud = Cloud::new(1);
        cloud.keys.insert(ID.into(), KEY.into());
        cloud
    }

    /// Headers of a request signed with the fake's own code, so that a test
    /// reaches the checks behind authentication.
    fn signed(action: &str, body: &str, tampered: impl FnOnce(&mut HeaderMap)) -> HeaderMap {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let date = jiff::Timestamp::from_second(timestamp)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json; charset=utf-8"),
            ("host", "127.0.0.1:1"),
            ("x-tc-action", action),
            ("x-tc-version", VERSION),
            ("x-tc-timestamp", &timestamp.to_string()),
            ("x-tc-region", "ap-chengdu"),
        ] {
            headers.insert(name, HeaderValue::from_str(value).unwrap());
        }
        let parts = AuthorizationParts {
            secret_id: ID,
            date: &date,
            service: "clb",
            signed_headers: "content-type;host",
            signature: "",
        };
        let mac = expected_signature(
            KEY,
            timestamp,
            &parts,
            &["content-type", "host"],
            &headers,
            body.as_bytes(),
        )
        .unwrap();
        let authorization = format!(
            "TC3-HMAC-SHA256 Credential={ID}/{date}/clb/tc3_request, \
             SignedHeaders=content-type;host, Signature={}",
            hex::encode(mac.finalize().into_bytes())
        );
        headers.insert(
            "authorization",
            HeaderValue::from_str(&authorization).unwrap(),
        );
        tampered(&mut headers);
        headers
    }

    fn refusal(cloud: &mut Cloud, headers: &HeaderMap, body: &str) -> String {
        match cloud.serve(headers, body.as_bytes(), "r1") {
            Ok(answer) => panic!("accepted: {answer}"),
            Err(Refusal { code, .. }) => code,
        }
    }

    #[test]
    fn the_verifier_reproduces_the_published_example() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert("host", HeaderValue::from_static("cvm.tencentcloudapi.com"));
        let parts = AuthorizationParts::parse(
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
        )
        .unwrap();
        let payload = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let expected = expected_signature(
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            1551113065,
            &parts,
            &["content-type", "host"],
            &headers,
            payload.as_bytes(),
        )
        .unwrap();
        assert!(
            expected
                .verify_slice(&hex::decode(parts.signature).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn a_signed_request_is_served() {
        let mut cloud = cloud();
        let body = r#"{"LoadBalancerIds": ["lb-none"]}"#;
        let answer = cloud
            .serve(
                &signed("DescribeLoadBalancers", body, |_| {}),
                body.as_bytes(),
                "r1",
            )
            .unwrap();
        assert_eq!(answer["TotalCount"], 0);
    }

    #[test]
    fn requests_are_refused_the_way_the_api_refuses_them() {
        let mut cloud = cloud();
        let body = r#"{"LoadBalancerId": "lb-1"}"#;
        let cases: [(&str, HeaderMap, &str); 8] = [
            (
                "AuthFailure.SignatureFailure",
                signed("DescribeListeners", body, |_| {}),
                r#"{"LoadBalancerId": "lb-2"}"#,
            ),
            (
                "AuthFailure.SignatureFailure",
                signed("DescribeListeners", body, |h| {
                    h.insert("host", HeaderValue::from_static("127.0.0.1:2"));
                }),
                body,
            ),
            (
                "AuthFailure.InvalidAuthorization",
                signed("DescribeListeners", body, |h| {
                    h.insert("authorization", HeaderValue::from_static("Bearer x"));
                }),
                body,
            ),
            (
                "NoSuchVersion",
                signed("DescribeListeners", body, |h| {
                    h.insert("x-tc-version", HeaderValue::from_static("2017-03-12"));
                }),
                body,
            ),
            (
                "MissingParameter",
                signed("DescribeListeners", body, |h| {
                    h.remove("x-tc-region");
                }),
                body,
            ),
            (
                "InvalidAction",
                signed("DescribeEverything", body, |_| {}),
                body,
            ),
            (
                "UnknownParameter",
                signed(
                    "DescribeListeners",
                    r#"{"LoadBalancerId": "lb-1", "Foo": 1}"#,
                    |_| {},
                ),
                r#"{"LoadBalancerId": "lb-1", "Foo": 1}"#,
            ),
            (
                "MissingParameter",
                signed("DescribeListeners", "{}", |_| {}),
                "{}",
            ),
        ];
        for (code, headers, sent) in cases {
            assert_eq!(refusal(&mut cloud, &headers, sent), code, "{headers:?}");
        }
    }
}
