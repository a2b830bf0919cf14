use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::token::MAX_TOKEN_BYTES;
use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_KEY: &[u8] = include_bytes!("../../tests/keys/rsa.key");
const RSA_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa.pub");
const EC_KEY: &[u8] = include_bytes!("../../tests/keys/ec.key");
const EC_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec.pub");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "exp": now() + 600,
        "sub": "alice",
        "crier": {"publish": ["news/*"], "subscribe": ["private/alice", "team:*"]},
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
        base.extend(extra);
    }
    claims
}

fn hs(algorithm: Algorithm, kid: Option<&str>, secret: &str, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn authority(config: AuthConfig) -> Authority {
    Authority::new(config).unwrap()
}

fn hmac() -> Authority {
    authority(AuthConfig {
        secrets: vec![SECRET.parse().unwrap()],
        private_topics: vec!["private/*".parse().unwrap()],
        ..AuthConfig::default()
    })
}

#[test]
fn a_valid_token_grants_its_selectors() {
    let authority = hmac();
    let grant = authority.verify(&hs(Algorithm::HS256, None, SECRET, &claims(json!({})))).unwrap();
    assert_eq!(grant.subject.as_deref(), Some("alice"));
    let left = grant.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600), "{left:?}");
    let access = authority.access(Some(grant), false);
    assert_eq!(access.check_publish("news/eu"), Ok(()));
    assert!(matches!(access.check_publish("news"), Err(Denied::NotCovered { .. })));
    assert_eq!(access.check_subscribe("private/alice"), Ok(()));
    assert!(matches!(access.check_subscribe("private/bob"), Err(Denied::NotCovered { .. })));
    assert_eq!(access.check_subscribe("public"), Ok(()), "a public topic needs nothing");
    // HS384 and HS512 go with an HMAC key too.
    for algorithm in [Algorithm::HS384, Algorithm::HS512] {
        assert!(authority.verify(&hs(algorithm, None, SECRET, &claims(json!({})))).is_ok());
    }
}

#[test]
fn without_a_token_only_public_topics_and_nothing_to_publish() {
    let access = hmac().access(None, true);
    assert!(matches!(access.check_publish("news/eu"), Err(Denied::NoToken { .. })));
    assert!(matches!(access.check_subscribe("private/x"), Err(Denied::NoToken { .. })));
    assert_eq!(access.check_subscribe("news"), Ok(()));
    assert_eq!(access.expires_in(), None);
    // Development mode: local clients publish, nobody else.
    let open = Authority::new(AuthConfig::default()).unwrap();
    assert!(!open.has_keys());
    assert_eq!(open.access(None, true).check_publish("a"), Ok(()));
    assert_eq!(open.access(None, false).check_publish("a"), Err(Denied::NotLocal));
}

#[test]
fn every_kind_of_bad_token_is_refused_with_its_reason() {
    let authority = authority(AuthConfig {
        secrets: vec![SECRET.parse().unwrap()],
        issuer: Some("https://issuer.example".into()),
        audience: Some("crier".into()),
        ..AuthConfig::default()
    });
    let good = json!({"iss": "https://issuer.example", "aud": "crier"});
    let token = |extra: Value| {
        let mut all = good.clone();
        if let (Value::Object(a), Value::Object(b)) = (&mut all, extra) {
            a.extend(b);
        }
        hs(Algorithm::HS256, None, SECRET, &claims(all))
    };
    assert!(authority.verify(&token(json!({}))).is_ok());
    let refused = |token: &str| authority.verify(token).unwrap_err();
    // alg: none, with and without a signature.
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none =
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(good.clone())));
    assert_eq!(refused(&none), TokenError::Algorithm);
    // Algorithms no key takes.
    let rsa = encode(
        &Header::new(Algorithm::RS256),
        &claims(good.clone()),
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap();
    assert_eq!(refused(&rsa), TokenError::Algorithm);
    assert_eq!(
        refused(&hs(
            Algorithm::HS256,
            None,
            "another secret, 32 bytes or more!",
            &claims(good.clone())
        )),
        TokenError::Signature
    );
    assert_eq!(
        refused(&hs(Algorithm::HS256, Some("nope"), SECRET, &claims(good.clone()))),
        TokenError::UnknownKey
    );
    assert_eq!(refused(&token(json!({"exp": now() - 1}))), TokenError::Expired);
    assert_eq!(refused(&token(json!({"nbf": now() + 60}))), TokenError::NotYetValid);
    assert_eq!(refused(&token(json!({"iss": "https://evil.example"}))), TokenError::Issuer);
    assert_eq!(refused(&token(json!({"aud": "someone-else"}))), TokenError::Audience);
    let mut no_exp = claims(good.clone());
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(&hs(Algorithm::HS256, None, SECRET, &no_exp)), TokenError::Claims);
    assert_eq!(refused(&token(json!({"crier": {"subscribe": ["a*b"]}}))), TokenError::Claims);
    assert_eq!(refused(&token(json!({"crier": {"subscribe": "news"}}))), TokenError::Claims);
    for malformed in ["", "a.b", "a.b.c.d", "not a token at all", "e30.e30.e30"] {
        assert_eq!(refused(malformed), TokenError::Malformed, "{malformed:?}");
    }
    let huge = token(json!({"padding": "x".repeat(MAX_TOKEN_BYTES)}));
    assert_eq!(refused(&huge), TokenError::TooLarge);
}

#[test]
fn public_keys_verify_their_family_only() {
    let authority = authority(AuthConfig {
        public_key_files: vec![format!("rsa:{RSA_PUB}").parse().unwrap(), EC_PUB.parse().unwrap()],
        ..AuthConfig::default()
    });
    let sign = |algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey| {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        encode(&header, &claims(json!({})), key).unwrap()
    };
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_KEY).unwrap();
    assert!(authority.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa)).is_ok());
    assert!(authority.verify(&sign(Algorithm::RS256, None, &rsa)).is_ok());
    assert!(authority.verify(&sign(Algorithm::ES256, None, &ec)).is_ok());
    // The RSA public key used as an HMAC secret: the classic algorithm confusion.
    let public_pem = std::fs::read_to_string(RSA_PUB).unwrap();
    let confused = hs(Algorithm::HS256, None, &public_pem, &claims(json!({})));
    assert_eq!(authority.verify(&confused).unwrap_err(), TokenError::Algorithm);
    let confused = hs(Algorithm::HS256, Some("rsa"), &public_pem, &claims(json!({})));
    assert_eq!(authority.verify(&confused).unwrap_err(), TokenError::Algorithm);
    // The EC key signing in the RSA key's name.
    assert_eq!(
        authority.verify(&sign(Algorithm::ES256, Some("rsa"), &ec)).unwrap_err(),
        TokenError::Signature
    );
}

#[test]
fn reload_reads_the_key_files_again() {
    let dir = std::env::temp_dir().join(format!("crier-auth-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.pem");
    std::fs::copy(EC_PUB, &path).unwrap();
    let authority = authority(AuthConfig {
        public_key_files: vec![path.to_str().unwrap().parse().unwrap()],
        ..AuthConfig::default()
    });
    let sign = |pem: &[u8]| {
        encode(
            &Header::new(Algorithm::ES256),
            &claims(json!({})),
            &EncodingKey::from_ec_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let second = include_bytes!("../../tests/keys/ec2.key");
    let old = sign(EC_KEY);
    assert!(authority.verify(&old).is_ok());
    assert!(authority.verify(&sign(second)).is_err());
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec2.pub"), &path).unwrap();
    authority.reload().unwrap();
    assert!(authority.verify(&sign(second)).is_ok());
    assert!(authority.verify(&sign(EC_KEY)).is_err());
    assert!(authority.verify(&old).is_err(), "a token verified before is not taken from memory");
    // A broken file leaves the keys in use alone.
    std::fs::write(&path, "not a key").unwrap();
    assert!(authority.reload().is_err());
    assert!(authority.verify(&sign(second)).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_reason_sits_at_its_own_index() {
    for (index, reason) in TokenError::ALL.into_iter().enumerate() {
        assert_eq!(reason as usize, index, "{reason:?}");
    }
}

#[test]
fn a_remembered_token_is_the_same_grant_until_it_expires() {
    let authority = hmac();
    let token = hs(Algorithm::HS256, None, SECRET, &claims(json!({"exp": now() + 1})));
    let first = authority.verify(&token).unwrap();
    let again = authority.verify(&token).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "taken from memory");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while authority.verify(&token).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the remembered token never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(authority.verify(&token).unwrap_err(), TokenError::Expired);
}
