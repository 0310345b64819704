//! Settings, credentials and clients: which API token an object's
//! `cloudflare` block leads to, read from its Secret on every pass (a
//! rotated token is picked up at once), and one client per token, with
//! that token's request budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::types::{CloudflareCredentials, CloudflareDetails};
use crate::providers::budget::{ApiBudget, BudgetSettings};
use crate::providers::cloudflare::{ApiToken, CloudflareClient, TOKEN_KEY, TokenError};

/// How knit reaches Cloudflare and runs cloudflared.
#[derive(Clone, Debug)]
pub struct CloudflareSettings {
    /// The API's base URL (`…/client/v4`).
    pub endpoint: String,
    /// This cluster's identity in the ownership marks of DNS records and
    /// routes: two clusters sharing a zone never touch each other's.
    pub cluster_id: String,
    /// knit's namespace: ClusterTunnels' Secrets and Deployments live there.
    pub namespace: String,
    /// cloudflared's image for tunnels.
    pub cloudflared_image: String,
    /// How often a tunnel whose plan did not change is checked against
    /// Cloudflare anyway (DNS records and configuration edited out of band).
    pub resync: std::time::Duration,
    /// Requests each credential may make per window (Cloudflare's: 1,200
    /// per 5 minutes), shared by every controller using it.
    pub api_budget: BudgetSettings,
    /// DNS changes per batch call (Cloudflare's Free plan takes 200).
    pub dns_batch_size: usize,
    /// What is left of each credential's budget, by its Secret.
    pub budget_left: Family<BudgetLabels, Gauge>,
}

impl CloudflareSettings {
    /// Cloudflare's documented global limit: 1,200 requests per 5 minutes.
    pub const API_BUDGET: BudgetSettings = BudgetSettings {
        limit: 1200,
        window: std::time::Duration::from_secs(300),
    };
    /// The batch limit of Cloudflare's Free plan (3,500 on paid plans).
    pub const DNS_BATCH_SIZE: usize = 200;
}

/// A credential in the budget metric: its Secret, never the token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub secret: String,
}

/// Why no client could be made; shown in the object's `Ready` condition.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("CloudflareCredentials {0} not found")]
    CredentialsNotFound(String),
    #[error(
        "no credentials: set cloudflare.secret or cloudflare.credentialsRef, or mark one CloudflareCredentials isDefault"
    )]
    NoDefault,
    #[error("several CloudflareCredentials are marked isDefault: {0}")]
    SeveralDefaults(String),
    #[error("CloudflareCredentials {credentials} is for account {theirs}, not {ours}")]
    AccountMismatch {
        credentials: String,
        theirs: String,
        ours: String,
    },
    #[error("reading credentials: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Client(String),
}

/// Credentials lookups and the clients made from them.
pub struct Accounts {
    client: Client,
    settings: CloudflareSettings,
    /// By the token's digest: a rotated token gets a new client.
    clients: Mutex<HashMap<[u8; 32], CloudflareClient>>,
    /// By object credentials block: the client that last worked for it.
    last_known: Mutex<HashMap<String, CloudflareClient>>,
    zones: Mutex<HashMap<(String, String), String>>,
}

impl Accounts {
    pub fn new(client: Client, settings: CloudflareSettings) -> Accounts {
        Accounts {
            client,
            settings,
            clients: Mutex::default(),
            last_known: Mutex::default(),
            zones: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &CloudflareSettings {
        &self.settings
    }

    /// The client for an object's `cloudflare` block. `namespace` is the
    /// object's own (where its `secret` is), or `None` for cluster-scoped
    /// kinds, whose `secret` is in knit's namespace.
    pub async fn client_for(
        &self,
        details: &CloudflareDetails,
        namespace: Option<&str>,
    ) -> Result<CloudflareClient, CredentialsError> {
        let key = format!("{namespace:?}/{details:?}");
        let client = self.read_client(details, namespace).await?;
        self.last_known
            .lock()
            .expect("last known lock")
            .insert(key, client.clone());
        Ok(client)
    }

    /// For cleaning up: the client for `details`, or, when its credentials
    /// are gone already (`kubectl delete -f` removes a CloudflareCredentials
    /// with the objects using it), the last one that worked for it, so what
    /// knit made in Cloudflare is still removed.
    pub async fn client_for_cleanup(
        &self,
        details: &CloudflareDetails,
        namespace: Option<&str>,
    ) -> Result<CloudflareClient, CredentialsError> {
        match self.client_for(details, namespace).await {
            Ok(client) => Ok(client),
            Err(error) => {
                let key = format!("{namespace:?}/{details:?}");
                let known = self
                    .last_known
                    .lock()
                    .expect("last known lock")
                    .get(&key)
                    .cloned();
                known.ok_or(error)
            }
        }
    }

    async fn read_client(
        &self,
        details: &CloudflareDetails,
        namespace: Option<&str>,
    ) -> Result<CloudflareClient, CredentialsError> {
        let own_namespace = namespace.unwrap_or(&self.settings.namespace);
        let (secret_namespace, secret_name, key) = match (&details.secret, &details.credentials_ref)
        {
            (Some(secret), _) => (
                own_namespace.to_owned(),
                secret.clone(),
                TOKEN_KEY.to_owned(),
            ),
            (None, Some(reference)) => {
                let credentials = Api::<CloudflareCredentials>::all(self.client.clone())
                    .get_opt(&reference.name)
                    .await?
                    .ok_or_else(|| CredentialsError::CredentialsNotFound(reference.name.clone()))?;
                self.credentials_secret(&credentials, &details.account_id)?
            }
            (None, None) => {
                let defaults: Vec<CloudflareCredentials> =
                    Api::<CloudflareCredentials>::all(self.client.clone())
                        .list(&Default::default())
                        .await?
                        .items
                        .into_iter()
                        .filter(|c| c.spec.is_default)
                        .collect();
                match defaults.as_slice() {
                    [] => return Err(CredentialsError::NoDefault),
                    [credentials] => self.credentials_secret(credentials, &details.account_id)?,
                    several => {
                        let names: Vec<String> = several
                            .iter()
                            .map(|c| c.metadata.name.clone().unwrap_or_default())
                            .collect();
                        return Err(CredentialsError::SeveralDefaults(names.join(", ")));
                    }
                }
            }
        };
        let secret = Api::<Secret>::namespaced(self.client.clone(), &secret_namespace)
            .get_opt(&secret_name)
            .await?
            .ok_or_else(|| CredentialsError::SecretNotFound {
                namespace: secret_namespace.clone(),
                name: secret_name.clone(),
            })?;
        let token = ApiToken::from_secret_key(&secret, &key)?;
        let digest = token.digest();
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(client) = clients.get(&digest) {
            return Ok(client.clone());
        }
        let left = self
            .settings
            .budget_left
            .get_or_create(&BudgetLabels {
                secret: format!("{secret_namespace}/{secret_name}"),
            })
            .clone();
        let budget = Arc::new(ApiBudget::new(self.settings.api_budget, left));
        let client = CloudflareClient::new(&self.settings.endpoint, token)
            .map_err(|e| CredentialsError::Client(e.to_string()))?
            .with_budget(budget);
        clients.insert(digest, client.clone());
        Ok(client)
    }

    fn credentials_secret(
        &self,
        credentials: &CloudflareCredentials,
        account_id: &str,
    ) -> Result<(String, String, String), CredentialsError> {
        if credentials.spec.account_id != account_id {
            return Err(CredentialsError::AccountMismatch {
                credentials: credentials.metadata.name.clone().unwrap_or_default(),
                theirs: credentials.spec.account_id.clone(),
                ours: account_id.into(),
            });
        }
        let reference = &credentials.spec.secret_ref;
        Ok((
            reference
                .namespace
                .clone()
                .unwrap_or_else(|| self.settings.namespace.clone()),
            reference.name.clone(),
            reference.key.clone().unwrap_or_else(|| TOKEN_KEY.into()),
        ))
    }

    /// The zone ID of `domain`, looked up once per account.
    pub async fn zone_id(
        &self,
        client: &CloudflareClient,
        account_id: &str,
        domain: &str,
    ) -> Result<String, crate::providers::cloudflare::Error> {
        let key = (account_id.to_owned(), domain.to_owned());
        if let Some(id) = self.zones.lock().expect("zones lock").get(&key) {
            return Ok(id.clone());
        }
        let id = client.zone_id(account_id, domain).await?;
        self.zones
            .lock()
            .expect("zones lock")
            .insert(key, id.clone());
        Ok(id)
    }
}
