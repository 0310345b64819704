use std::fmt;

use k8s_openapi::api::core::v1::Secret;

/// A Tencent Cloud API key pair. The secret key never leaves this type
/// except to derive a signing key: `Debug` redacts it and no error carries it.
#[derive(Clone)]
pub struct Credentials {
    secret_id: String,
    secret_key: String,
}

/// The data keys of a Kubernetes Secret holding credentials.
pub const SECRET_ID_KEY: &str = "secretId";
pub const SECRET_KEY_KEY: &str = "secretKey";

/// Why a Secret does not hold usable credentials.
pub type CredentialsError = crate::providers::secret::SecretKeyError;

impl Credentials {
    pub fn new(secret_id: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials {
            secret_id: secret_id.into(),
            secret_key: secret_key.into(),
        }
    }

    /// Reads `secretId` and `secretKey` from a Secret (see
    /// `secret::read_key`).
    pub fn from_secret(secret: &Secret) -> Result<Self, CredentialsError> {
        let read = |key| crate::providers::secret::read_key(secret, key);
        Ok(Credentials::new(
            read(SECRET_ID_KEY)?,
            read(SECRET_KEY_KEY)?,
        ))
    }

    /// Whether both hold the same key pair: a rotated Secret is noticed.
    pub fn same_as(&self, other: &Credentials) -> bool {
        self.secret_id == other.secret_id && self.secret_key == other.secret_key
    }

    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    pub(super) fn secret_key(&self) -> &str {
        &self.secret_key
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::secret::tests::secret;

    #[test]
    fn reads_both_keys() {
        // base64 of "AKIDexample\n" and "s3cr3t-k3y"; reading itself is
        // `secret::read_key`'s.
        let credentials = Credentials::from_secret(&secret(
            "data",
            serde_json::json!({"secretId": "QUtJRGV4YW1wbGUK", "secretKey": "czNjcjN0LWszeQ=="}),
        ))
        .unwrap();
        assert_eq!(credentials.secret_id(), "AKIDexample");
        assert_eq!(credentials.secret_key(), "s3cr3t-k3y");
    }

    #[test]
    fn a_missing_key_is_named_with_the_secret() {
        let only_id = secret("data", serde_json::json!({"secretId": "QUtJRGV4YW1wbGU="}));
        assert_eq!(
            Credentials::from_secret(&only_id).unwrap_err().to_string(),
            r#"Secret knit-system/creds has no data key "secretKey""#
        );
        let only_key = secret("data", serde_json::json!({"secretKey": "czNjcjN0LWszeQ=="}));
        assert_eq!(
            Credentials::from_secret(&only_key).unwrap_err(),
            CredentialsError::MissingKey {
                secret: "knit-system/creds".into(),
                key: "secretId".into()
            }
        );
    }

    #[test]
    fn debug_redacts_the_secret_key() {
        let credentials = Credentials::new("AKIDexample", "s3cr3t-k3y");
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(shown.contains("AKIDexample"));
        assert!(!shown.contains("s3cr3t-k3y"), "{shown}");
    }
}
