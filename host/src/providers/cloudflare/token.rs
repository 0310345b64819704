use std::fmt;

use k8s_openapi::api::core::v1::Secret;

/// The data key of the credentials Secret that holds the API token (the
/// seeds create it with `--from-literal=CLOUDFLARE_API_TOKEN=...`).
pub const TOKEN_KEY: &str = "CLOUDFLARE_API_TOKEN";

/// A Cloudflare API token. It leaves this type only as the client's
/// `Authorization` header (marked sensitive): `Debug` prints
/// `ApiToken(***)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// Why a Secret does not hold a usable token.
pub type TokenError = crate::providers::secret::SecretKeyError;

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(token.into())
    }

    /// Reads `CLOUDFLARE_API_TOKEN` from a Secret (see `secret::read_key`).
    pub fn from_secret(secret: &Secret) -> Result<Self, TokenError> {
        Self::from_secret_key(secret, TOKEN_KEY)
    }

    /// Like `from_secret`, for a Secret that keeps the token under another
    /// key.
    pub fn from_secret_key(secret: &Secret, key: &str) -> Result<Self, TokenError> {
        crate::providers::secret::read_key(secret, key).map(ApiToken)
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    /// A SHA-256 of the token: tells tokens apart (one client per token)
    /// without keeping a copy of one.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// The token `cloudflared tunnel run --token` (or a WARP connector) runs
/// with: whoever holds it can serve the tunnel. Kept out of `Debug`; read
/// it with `expose` to put it into a Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelToken(String);

impl TunnelToken {
    pub fn new(token: impl Into<String>) -> Self {
        TunnelToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelToken(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::secret::tests::secret;

    #[test]
    fn debug_never_shows_a_token() {
        let token = ApiToken::new("cf-secret-token-value");
        let tunnel = TunnelToken::new("eyJhIjoi-tunnel-token");
        let shown = format!("{token:?} {token:#?} {tunnel:?} {tunnel:#?}");
        assert_eq!(format!("{token:?}"), "ApiToken(***)");
        assert_eq!(format!("{tunnel:?}"), "TunnelToken(***)");
        assert!(!shown.contains("cf-secret"), "{shown}");
        assert!(!shown.contains("eyJhIjoi"), "{shown}");
        assert_eq!(tunnel.expose(), "eyJhIjoi-tunnel-token");
    }

    #[test]
    fn the_token_is_read_from_its_key() {
        // base64 of "tok-123\n"; reading itself is `secret::read_key`'s.
        let token = ApiToken::from_secret(&secret(
            "data",
            serde_json::json!({ "CLOUDFLARE_API_TOKEN": "dG9rLTEyMwo=" }),
        ))
        .unwrap();
        assert_eq!(token.expose(), "tok-123");
        let error = ApiToken::from_secret(&secret("data", serde_json::json!({}))).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"Secret knit-system/creds has no data key "CLOUDFLARE_API_TOKEN""#
        );
    }
}
