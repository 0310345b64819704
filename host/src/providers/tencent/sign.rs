//! TC3-HMAC-SHA256, the request signature of Tencent Cloud API 3.0, as pure
//! functions: no clock and no I/O, so each step is checked against the
//! published example.
//!
//! knit always sends `POST /` with a JSON body and signs exactly the
//! `content-type` and `host` headers, the minimum the API accepts.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::Credentials;

/// The only algorithm API 3.0 defines for this scheme.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The content type that is sent and signed: they must be byte-identical.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Headers in the signature, lowercase, sorted, `;`-separated.
pub const SIGNED_HEADERS: &str = "content-type;host";

/// What a signature covers besides the credentials.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The product in the credential scope, e.g. `clb`.
    pub service: &'a str,
    /// The `Host` header as sent (`host` or `host:port`).
    pub host: &'a str,
    /// `X-TC-Timestamp`, Unix seconds.
    pub timestamp: i64,
    /// The body exactly as sent.
    pub payload: &'a [u8],
}

/// The UTC calendar date of `timestamp` as `YYYY-MM-DD`; the scope takes
/// the UTC date, never the local one. `None` outside jiff's range.
pub fn utc_date(timestamp: i64) -> Option<String> {
    let instant = jiff::Timestamp::from_second(timestamp).ok()?;
    Some(instant.strftime("%Y-%m-%d").to_string())
}

/// Step 1: the canonical request. The query string is empty for POST, and
/// header values are lowercased as the specification says.
pub fn canonical_request(host: &str, payload: &[u8]) -> String {
    format!(
        "POST\n/\n\ncontent-type:{}\nhost:{}\n\n{SIGNED_HEADERS}\n{}",
        CONTENT_TYPE.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        hex_sha256(payload),
    )
}

/// `date/service/tc3_request`.
pub fn credential_scope(date: &str, service: &str) -> String {
    format!("{date}/{service}/tc3_request")
}

/// Step 2: the string to sign.
pub fn string_to_sign(timestamp: i64, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    )
}

/// Step 3a: the key derived from the secret key, valid for one date and
/// service.
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> [u8; 32] {
    let date_key = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let service_key = hmac_sha256(&date_key, service.as_bytes());
    hmac_sha256(&service_key, b"tc3_request")
}

/// Step 3b: the signature, lowercase hex.
pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

/// Step 4: the `Authorization` header value.
pub fn authorization(secret_id: &str, scope: &str, signature: &str) -> String {
    format!(
        "{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
    )
}

/// All four steps: the `Authorization` header for `request`. `None` only for
/// a timestamp no calendar date can be given to.
pub fn sign(credentials: &Credentials, request: &Request<'_>) -> Option<String> {
    let date = utc_date(request.timestamp)?;
    let scope = credential_scope(&date, request.service);
    let to_sign = string_to_sign(
        request.timestamp,
        &scope,
        &canonical_request(request.host, request.payload),
    );
    let key = signing_key(credentials.secret_key(), &date, request.service);
    Some(authorization(
        credentials.secret_id(),
        &scope,
        &signature(&key, &to_sign),
    ))
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // The example of the "Signature v3" page of the API 3.0 documentation.
    const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
    const SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
    const HOST: &str = "cvm.tencentcloudapi.com";
    const TIMESTAMP: i64 = 1551113065;
    // `\u672a...` are literal backslash-u escapes in the body, as published.
    const PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    #[test]
    fn date_is_utc() {
        // 2019-02-26 00:44:25 in UTC+8, still the 25th in UTC.
        assert_eq!(utc_date(TIMESTAMP).as_deref(), Some("2019-02-25"));
        assert_eq!(utc_date(0).as_deref(), Some("1970-01-01"));
    }

    #[test]
    fn reproduces_the_published_example_step_by_step() {
        assert_eq!(
            hex_sha256(PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let canonical = canonical_request(HOST, PAYLOAD.as_bytes());
        assert_eq!(
            canonical,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let scope = credential_scope("2019-02-25", "cvm");
        assert_eq!(scope, "2019-02-25/cvm/tc3_request");
        let to_sign = string_to_sign(TIMESTAMP, &scope, &canonical);
        assert_eq!(
            to_sign,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n\
             5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        let key = signing_key(SECRET_KEY, "2019-02-25", "cvm");
        assert_eq!(
            signature(&key, &to_sign),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn reproduces_the_published_authorization_header() {
        let credentials = Credentials::new(SECRET_ID, SECRET_KEY);
        let header = sign(
            &credentials,
            &Request {
                service: "cvm",
                host: HOST,
                timestamp: TIMESTAMP,
                payload: PAYLOAD.as_bytes(),
            },
        );
        assert_eq!(
            header.as_deref(),
            Some(
                "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
                 SignedHeaders=content-type;host, \
                 Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
            )
        );
    }

    /// The request each case changes one input of.
    const UNCHANGED: Request<'static> = Request {
        service: "clb",
        host: "clb.tencentcloudapi.com",
        timestamp: TIMESTAMP,
        payload: b"{}",
    };

    fn signed(credentials: &Credentials, request: Request<'_>) -> String {
        sign(credentials, &request).unwrap()
    }

    #[rstest]
    #[case::service(Request { service: "cvm", ..UNCHANGED })]
    #[case::host(Request { host: "127.0.0.1:8080", ..UNCHANGED })]
    #[case::timestamp(Request { timestamp: TIMESTAMP + 1, ..UNCHANGED })]
    #[case::payload(Request { payload: b"{ }", ..UNCHANGED })]
    fn every_input_changes_the_signature(#[case] changed: Request<'static>) {
        let credentials = Credentials::new(SECRET_ID, SECRET_KEY);
        assert_ne!(
            signed(&credentials, changed),
            signed(&credentials, UNCHANGED),
            "{changed:?}"
        );
    }

    #[test]
    fn the_secret_key_changes_the_signature() {
        let other_key = Credentials::new(SECRET_ID, "another key");
        assert_ne!(
            signed(&other_key, UNCHANGED),
            signed(&Credentials::new(SECRET_ID, SECRET_KEY), UNCHANGED)
        );
    }
}
