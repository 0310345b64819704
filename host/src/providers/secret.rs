//! Reading one value out of a Kubernetes Secret: the one reader behind every
//! cloud credential knit uses.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

/// Why a Secret does not hold a usable value. Names the Secret and the key,
/// never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretKeyError {
    #[error("Secret {secret} has no data key {key:?}")]
    MissingKey { secret: String, key: String },
    #[error("Secret {secret}: data key {key:?} is empty")]
    Empty { secret: String, key: String },
    #[error("Secret {secret}: data key {key:?} is not UTF-8")]
    NotUtf8 { secret: String, key: String },
}

/// The text under `key` in a Secret's `data` (or `stringData`, for a Secret
/// read from a manifest rather than the API). Surrounding whitespace is
/// dropped: a value written with `echo` into a file ends in a newline, and
/// the APIs refuse keys and tokens with spaces around.
pub fn read_key(secret: &Secret, key: &str) -> Result<String, SecretKeyError> {
    let name = match secret.namespace() {
        Some(namespace) => format!("{namespace}/{}", secret.name_any()),
        None => secret.name_any(),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.as_slice())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(String::as_bytes)
        })
        .ok_or_else(|| SecretKeyError::MissingKey {
            secret: name.clone(),
            key: key.to_owned(),
        })?;
    let text = std::str::from_utf8(bytes).map_err(|_| SecretKeyError::NotUtf8 {
        secret: name.clone(),
        key: key.to_owned(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(SecretKeyError::Empty {
            secret: name,
            key: key.to_owned(),
        });
    }
    Ok(text.to_owned())
}
