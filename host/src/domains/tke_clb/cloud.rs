//! Where the TKE domain gets its CLB clients: the controller's settings
//! (region, endpoint, the Secret holding the API key) and one `ClbClient`
//! per region, rebuilt when the Secret's content changes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::Mutex;

use crate::providers::tencent::{ClbClient, ClientOptions, Credentials, TaskPolling};

/// How knit reaches Tencent Cloud; set by `knit run`'s `--tke-*` flags.
#[derive(Clone, Debug)]
pub struct TkeSettings {
    /// The cluster's region: the CLBs' when an object names none.
    pub region: Option<String>,
    /// The Secret with `secretId` and `secretKey`, as `(namespace, name)`.
    pub credentials_secret: (String, String),
    /// API base URL; the public endpoint when unset.
    pub endpoint: Option<String>,
    /// Listeners one CLB may hold (the account's `TOTAL_LISTENER_QUOTA`,
    /// 50 by default). A CLB that answers `LimitExceeded` earlier counts as
    /// full at what it holds.
    pub listener_quota: u32,
    /// How often objects are checked against the CLBs when nothing changed:
    /// what puts back a listener or target changed outside knit.
    pub resync: Duration,
    /// The cluster's VPC: where CLBs knit creates are placed, unless a
    /// service's `extensiveParameters` names another.
    pub vpc_id: Option<String>,
    /// The cluster's ID: a tag on the CLBs knit creates.
    pub cluster_id: Option<String>,
}

impl TkeSettings {
    pub const DEFAULT_LISTENER_QUOTA: u32 = 50;
    pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

    /// How old a read of a CLB may be for planning: other services' and
    /// hand-made listeners, and a CLB deleted outside knit, show up within
    /// this.
    pub fn view_max_age(&self) -> Duration {
        self.resync.min(Duration::from_secs(30))
    }
}

/// Why there is no client.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloudError {
    #[error("no region: set spec.lbRegion or start knit with --tke-region (the cluster's region)")]
    NoRegion,
    #[error("credentials: {0}")]
    Credentials(String),
}

/// Secret reads are cached this long, so a rotated key is picked up
/// without a read per CLB call.
const CREDENTIALS_TTL: Duration = Duration::from_secs(60);

pub struct TencentCloud {
    kube: Client,
    settings: TkeSettings,
    state: Mutex<CloudState>,
}

#[derive(Default)]
struct CloudState {
    credentials: Option<(Credentials, Instant)>,
    clients: HashMap<String, ClbClient>,
}

impl TencentCloud {
    pub fn new(kube: Client, settings: TkeSettings) -> Self {
        TencentCloud {
            kube,
            settings,
            state: Mutex::new(CloudState::default()),
        }
    }

    pub fn settings(&self) -> &TkeSettings {
        &self.settings
    }

    /// An object's region: its own, else the controller's.
    pub fn region(&self, own: Option<&str>) -> Result<String, CloudError> {
        own.or(self.settings.region.as_deref())
            .map(str::to_owned)
            .ok_or(CloudError::NoRegion)
    }

    /// The client for `region`, with credentials at most a minute old.
    pub async fn client(&self, region: &str) -> Result<ClbClient, CloudError> {
        let mut state = self.state.lock().await;
        let fresh = state
            .credentials
            .as_ref()
            .is_some_and(|(_, read)| read.elapsed() < CREDENTIALS_TTL);
        if !fresh {
            let credentials = self.read_credentials().await?;
            let changed = state
                .credentials
                .as_ref()
                .is_none_or(|(old, _)| !old.same_as(&credentials));
            if changed {
                state.clients.clear();
            }
            state.credentials = Some((credentials, Instant::now()));
        }
        if let Some(client) = state.clients.get(region) {
            return Ok(client.clone());
        }
        let credentials = state.credentials.as_ref().map(|(c, _)| c.clone());
        let mut options = ClientOptions::new(region);
        // CLB tasks take a second or two; the first look comes sooner.
        options.task_polling = TaskPolling {
            initial_interval: Duration::from_millis(200),
            max_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(120),
        };
        if let Some(endpoint) = &self.settings.endpoint {
            options.endpoint = endpoint.clone();
        }
        let client = ClbClient::new(credentials.expect("read above"), options)
            .map_err(|e| CloudError::Credentials(e.to_string()))?;
        state.clients.insert(region.to_owned(), client.clone());
        Ok(client)
    }

    async fn read_credentials(&self) -> Result<Credentials, CloudError> {
        let (namespace, name) = &self.settings.credentials_secret;
        let secret = Api::<Secret>::namespaced(self.kube.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| CloudError::Credentials(format!("reading Secret {namespace}/{name}: {e}")))?
            .ok_or_else(|| {
                CloudError::Credentials(format!(
                    "Secret {namespace}/{name} not found (it holds secretId and secretKey; see --tke-credentials-secret)"
                ))
            })?;
        Credentials::from_secret(&secret).map_err(|e| CloudError::Credentials(e.to_string()))
    }
}
