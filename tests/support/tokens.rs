//! Tokens minted in the tests, with the keys of `tests/keys/` (HS256 with a test secret,
//! RS256, ES256, EdDSA).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HMAC secret the test servers take (`--jwt-key`).
pub const SECRET: &str = "test-secret-of-32-bytes-or-more!!";

/// A key file of `tests/keys/`.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Claims valid for ten minutes granting `publish` and `subscribe`.
pub fn grant(publish: &[&str], subscribe: &[&str]) -> Value {
    json!({"exp": now() + 600, "sub": "tester", "crier": {"publish": publish, "subscribe": subscribe}})
}

/// `claims` with `extra` merged in (and `null` values removed).
pub fn with(mut claims: Value, extra: Value) -> Value {
    let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) else {
        panic!("objects");
    };
    for (key, value) in extra {
        if value.is_null() {
            base.remove(&key);
        } else {
            base.insert(key, value);
        }
    }
    claims
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(), claims)
}

/// A token signed with the private key `tests/keys/{name}.key`.
pub fn signed_with(name: &str, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(key_path(&format!("{name}.key"))).expect("test key");
    let key = match algorithm {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no test key for {other:?}"),
    }
    .expect("a PEM private key");
    sign(algorithm, kid, &key, claims)
}

/// Signs `claims` with `key`.
pub fn sign(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}
