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

#[cfg(test)]
pub(crate) mod tests {
    use rstest::rstest;

    use super::*;

    /// A Secret `knit-system/creds` with `data` (values base64) or, for one
    /// read from a manifest, `stringData`.
    pub(crate) fn secret(field: &str, values: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "creds", "namespace": "knit-system"},
            field: values,
        }))
        .unwrap()
    }

    // base64: "tok-123\n" is dG9rLTEyMwo=, "  \n" ICAK, 0xff /w==.
    #[rstest]
    #[case::data_trimmed("data", "dG9rLTEyMwo=", Ok("tok-123".into()))]
    #[case::string_data_trimmed("stringData", " tok-456 ", Ok("tok-456".into()))]
    #[case::blank("data", "ICAK", Err(SecretKeyError::Empty {
        secret: "knit-system/creds".into(), key: "token".into() }))]
    #[case::binary("data", "/w==", Err(SecretKeyError::NotUtf8 {
        secret: "knit-system/creds".into(), key: "token".into() }))]
    fn reads_one_key(
        #[case] field: &str,
        #[case] value: &str,
        #[case] expected: Result<String, SecretKeyError>,
    ) {
        let secret = secret(field, serde_json::json!({ "token": value }));
        assert_eq!(read_key(&secret, "token"), expected);
    }

    #[test]
    fn a_missing_key_names_the_secret_and_the_key_never_a_value() {
        let secret = secret("data", serde_json::json!({ "other": "c2VjcmV0" }));
        let error = read_key(&secret, "token").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"Secret knit-system/creds has no data key "token""#
        );
    }
}
