//! Tunnels: `cfd_tunnel` created remotely managed, their token and their
//! configuration (a full PUT that bumps a version), and WARP connector
//! tunnels (`warp_connector`), which share the shape under another path and
//! so share the code here through `TunnelKind`.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::client::Call;
use super::{
    CloudflareClient, Error, PER_PAGE, Tunnel, TunnelConfig, TunnelConfiguration, TunnelToken,
};

/// `PUT .../configurations` takes the configuration under `config`.
#[derive(Serialize)]
struct ConfigurationBody<'a> {
    config: &'a TunnelConfig,
}

#[derive(Serialize)]
struct NewTunnelBody<'a> {
    name: &'a str,
    config_src: &'a str,
}

#[derive(Serialize)]
struct NewWarpConnectorBody<'a> {
    name: &'a str,
}

/// A configuration as stored: `config` is `null` for a tunnel that was
/// never configured.
#[derive(Deserialize)]
struct StoredConfiguration {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    config: Option<TunnelConfig>,
}

/// The two kinds of tunnel, which share one shape under different paths:
/// cloudflared's (`cfd_tunnel`, remotely managed) and WARP connectors
/// (`warp_connector`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    Cloudflared,
    WarpConnector,
}

impl TunnelKind {
    fn segment(self) -> &'static str {
        match self {
            TunnelKind::Cloudflared => "cfd_tunnel",
            TunnelKind::WarpConnector => "warp_connector",
        }
    }
}

impl CloudflareClient {
    /// Creates a tunnel; a cloudflared one has its configuration in
    /// Cloudflare (`config_src: cloudflare`). A name already used by a
    /// tunnel of the kind that is not deleted is refused with code 1013.
    pub async fn create_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        name: &str,
    ) -> Result<Tunnel, Error> {
        let segments = ["accounts", account_id, kind.segment()];
        match kind {
            TunnelKind::Cloudflared => {
                let body = NewTunnelBody {
                    name,
                    config_src: "cloudflare",
                };
                self.write(Method::POST, &segments, &body).await
            }
            TunnelKind::WarpConnector => {
                let body = NewWarpConnectorBody { name };
                self.write(Method::POST, &segments, &body).await
            }
        }
    }

    /// The tunnel, or `None` if there is none or it is deleted.
    pub async fn get_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<Tunnel>, Error> {
        let segments = ["accounts", account_id, kind.segment(), tunnel_id];
        match self.call::<Tunnel>(Call::new(Method::GET, &segments)).await {
            Ok(answer) => Ok(Some(answer.result).filter(|tunnel| tunnel.deleted_at.is_none())),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The tunnel named `name` that is not deleted, if any.
    pub async fn find_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        name: &str,
    ) -> Result<Option<Tunnel>, Error> {
        let segments = ["accounts", account_id, kind.segment()];
        let tunnels: Vec<Tunnel> = self
            .list_all(
                Call::new(Method::GET, &segments)
                    .query("name", name)
                    .query("is_deleted", "false"),
                PER_PAGE,
            )
            .await?;
        Ok(tunnels
            .into_iter()
            .find(|tunnel| tunnel.name == name && tunnel.deleted_at.is_none()))
    }

    /// The token `cloudflared tunnel run --token` takes, or a WARP
    /// connector host joins with (`warp-cli connector new`).
    pub async fn tunnel_token(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<TunnelToken, Error> {
        let segments = ["accounts", account_id, kind.segment(), tunnel_id, "token"];
        let token: String = self.call(Call::new(Method::GET, &segments)).await?.result;
        Ok(TunnelToken::new(token))
    }

    /// The tunnel's stored configuration; `None` if it was never configured
    /// or the tunnel does not exist.
    pub async fn tunnel_configuration(
        &self,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<Option<TunnelConfiguration>, Error> {
        let segments = configuration_path(account_id, tunnel_id);
        let stored: StoredConfiguration = match self.call(Call::new(Method::GET, &segments)).await {
            Ok(answer) => answer.result,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(stored.config.map(|config| TunnelConfiguration {
            version: stored.version,
            config,
        }))
    }

    /// Replaces the whole configuration (there is no partial update) and
    /// returns it with its new version.
    pub async fn put_tunnel_configuration(
        &self,
        account_id: &str,
        tunnel_id: &str,
        config: &TunnelConfig,
    ) -> Result<TunnelConfiguration, Error> {
        let segments = configuration_path(account_id, tunnel_id);
        let call = Call::new(Method::PUT, &segments).json(&ConfigurationBody { config })?;
        let path = call.path();
        let stored: StoredConfiguration = self.call(call).await?.result;
        let config = stored.config.ok_or_else(|| Error::Decode {
            method: "PUT".into(),
            path,
            status: 200,
            message: "the answer holds no config".into(),
        })?;
        Ok(TunnelConfiguration {
            version: stored.version,
            config,
        })
    }

    /// Deletes the tunnel; already gone is `Ok`. The API refuses to delete
    /// a tunnel with connections, and a cloudflared that was just stopped
    /// stays connected for a while, so a cloudflared tunnel's connections
    /// are cleaned up first (`DELETE .../connections`). The API documents no
    /// such cleanup for a WARP connector: while its host is still connected
    /// the refusal comes back as `Error::Api`, so stop the connector first.
    /// Delete the private network routes through the tunnel first: the API
    /// is reported to refuse while some remain (and the fake does).
    pub async fn delete_tunnel(
        &self,
        kind: TunnelKind,
        account_id: &str,
        tunnel_id: &str,
    ) -> Result<(), Error> {
        if kind == TunnelKind::Cloudflared {
            let connections = [
                "accounts",
                account_id,
                kind.segment(),
                tunnel_id,
                "connections",
            ];
            match self
                .call::<IgnoredAny>(Call::new(Method::DELETE, &connections))
                .await
            {
                Ok(_) => {}
                Err(error) if error.is_not_found() => return Ok(()),
                Err(error) => return Err(error),
            }
        }
        let segments = ["accounts", account_id, kind.segment(), tunnel_id];
        self.delete(&segments).await
    }
}

/// Where a tunnel's configuration lives.
fn configuration_path<'a>(account_id: &'a str, tunnel_id: &'a str) -> [&'a str; 5] {
    [
        "accounts",
        account_id,
        "cfd_tunnel",
        tunnel_id,
        "configurations",
    ]
}
