//! The keys tokens are verified with: HMAC secrets given on the command line and public keys
//! read from PEM files (RSA, EC P-256/P-384, Ed25519), each optionally named by a key id
//! (`kid`) so that keys can be rotated. Files are read again on reload.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// A key as configured: `[KID:]VALUE`, where the part before the first `:` is the key id.
/// A value that itself contains `:` but has no key id starts with `:`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec<T> {
    /// The key id tokens name it by, if any.
    pub kid: Option<String>,
    /// The secret, or the path of the PEM file.
    pub value: T,
}

/// An HMAC secret.
pub type SecretSpec = KeySpec<Vec<u8>>;

/// A PEM public key file, or a file holding an HMAC secret.
pub type PublicKeySpec = KeySpec<PathBuf>;

/// A file holding an HMAC secret (its bytes; one final newline is not part of it).
pub type SecretFileSpec = KeySpec<PathBuf>;

fn split_kid(text: &str) -> (Option<String>, &str) {
    match text.split_once(':') {
        Some(("", value)) => (None, value),
        Some((kid, value)) => (Some(kid.to_owned()), value),
        None => (None, text),
    }
}

impl FromStr for SecretSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kid, secret) = split_kid(text);
        // RFC 7518 §3.2: at least as long as the hash output, 256 bits for HS256.
        if secret.len() < 32 {
            return Err("an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)".into());
        }
        Ok(KeySpec { kid, value: secret.as_bytes().to_vec() })
    }
}

impl FromStr for PublicKeySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kid, path) = split_kid(text);
        if path.is_empty() {
            return Err("a key file path is empty".into());
        }
        Ok(KeySpec { kid, value: PathBuf::from(path) })
    }
}

// Secrets never reach a log, not even through `--help` or a parse error's debug output.
impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl fmt::Debug for PublicKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeySpec").field("kid", &self.kid).field("path", &self.value).finish()
    }
}

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The file could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no public key crier can use.
    #[error("{path} holds no RSA, EC or Ed25519 public key in PEM form")]
    NotAKey {
        /// The file.
        path: PathBuf,
    },
    /// An HMAC secret was refused.
    #[error("an HMAC secret was refused: {0}")]
    Secret(jsonwebtoken::errors::Error),
    /// A secret file holds fewer than 32 bytes.
    #[error("{path}: an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)")]
    ShortSecret {
        /// The file.
        path: PathBuf,
    },
    /// Two keys share an id.
    #[error("the key id {0:?} names two keys")]
    DuplicateKid(String),
    /// The key is not one the algorithm verifies with (PEM text of a public key of the
    /// algorithm's family, or a secret for HMAC).
    #[error(
        "the key is not a key for {0:?}: HS* takes a secret, RS*/PS*, ES* and EdDSA the PEM text of a public key of that kind"
    )]
    NotAKeyFor(Algorithm),
}

/// A key ready to verify with.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) decoding: DecodingKey,
    /// The key's kind, which decides the algorithms a token verified with it may use.
    pub(crate) family: AlgorithmFamily,
    /// The algorithms of the family.
    algorithms: &'static [Algorithm],
}

/// Every configured key.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Loads the secrets and reads the secret files and the public key files.
    pub(crate) fn load(
        secrets: &[SecretSpec],
        secret_files: &[SecretFileSpec],
        files: &[PublicKeySpec],
    ) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(secrets.len() + secret_files.len() + files.len());
        let read = |file: &KeySpec<PathBuf>| {
            std::fs::read(&file.value)
                .map_err(|source| KeyError::Read { path: file.value.clone(), source })
        };
        let hmac = |kid: &Option<String>, secret: &[u8]| -> Result<Key, KeyError> {
            let decoding = DecodingKey::from_secret(secret).map_err(KeyError::Secret)?;
            let family = AlgorithmFamily::Hmac;
            Ok(Key { kid: kid.clone(), decoding, family, algorithms: algorithms(family) })
        };
        for secret in secrets {
            keys.push(hmac(&secret.kid, &secret.value)?);
        }
        for file in secret_files {
            let mut secret = read(file)?;
            // As an editor or `echo` writes it: the final newline is not part of the secret.
            if secret.last() == Some(&b'\n') {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(KeyError::ShortSecret { path: file.value.clone() });
            }
            keys.push(hmac(&file.kid, &secret)?);
        }
        for file in files {
            let pem = read(file)?;
            let (decoding, family) =
                public_key(&pem).ok_or_else(|| KeyError::NotAKey { path: file.value.clone() })?;
            keys.push(Key {
                kid: file.kid.clone(),
                decoding,
                family,
                algorithms: algorithms(family),
            });
        }
        let mut kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        kids.sort_unstable();
        if let Some(pair) = kids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(KeyError::DuplicateKid(pair[0].to_owned()));
        }
        Ok(KeySet { keys })
    }

    /// One key that takes one algorithm only, as a Mercure hub is configured: an HMAC secret
    /// for `HS*`, else the PEM text of a public key of the algorithm's family.
    pub(crate) fn single(key: &[u8], algorithm: Algorithm) -> Result<Self, KeyError> {
        let family = algorithm.family();
        let decoding = if family == AlgorithmFamily::Hmac {
            DecodingKey::from_secret(key).map_err(KeyError::Secret)?
        } else {
            match public_key(key) {
                Some((decoding, found)) if found == family => decoding,
                _ => return Err(KeyError::NotAKeyFor(algorithm)),
            }
        };
        let family_algorithms = algorithms(family);
        let at = family_algorithms
            .iter()
            .position(|a| *a == algorithm)
            .ok_or(KeyError::NotAKeyFor(algorithm))?;
        let algorithms = &family_algorithms[at..=at];
        Ok(KeySet { keys: vec![Key { kid: None, decoding, family, algorithms }] })
    }

    /// Whether no key is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token may be verified with: the one its `kid` names, or, for a token
    /// without one, every key that takes its algorithm.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        algorithm: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| match kid {
            Some(kid) => key.kid.as_deref() == Some(kid),
            None => true,
        } && key.algorithms.contains(&algorithm))
    }

    /// Whether any key takes `algorithm`.
    pub(crate) fn takes(&self, algorithm: Algorithm) -> bool {
        self.keys.iter().any(|key| key.algorithms.contains(&algorithm))
    }

    /// Whether a key has this id.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// The algorithms of a key family.
pub(crate) fn algorithms(family: AlgorithmFamily) -> &'static [Algorithm] {
    match family {
        AlgorithmFamily::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        AlgorithmFamily::Rsa => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmFamily::Ec => &[Algorithm::ES256, Algorithm::ES384],
        AlgorithmFamily::Ed => &[Algorithm::EdDSA],
    }
}

/// The public key in a PEM file, and its algorithm family.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, AlgorithmFamily)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, AlgorithmFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, AlgorithmFamily::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((key, AlgorithmFamily::Ed));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_comes_before_the_first_colon() {
        let spec: SecretSpec = "2026-12:0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(
            (spec.kid.as_deref(), &spec.value[..]),
            (Some("2026-12"), &b"0123456789abcdef0123456789abcdef"[..])
        );
        let spec: SecretSpec = ":with:colons:0123456789abcdef0123456789".parse().unwrap();
        assert_eq!(
            (spec.kid, &spec.value[..]),
            (None, &b"with:colons:0123456789abcdef0123456789"[..])
        );
        let spec: SecretSpec = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(spec.kid, None);
        assert!("short".parse::<SecretSpec>().is_err());
        assert!(!format!("{spec:?}").contains("0123"), "a secret is never printed");
        let file: PublicKeySpec = "a:/etc/key.pem".parse().unwrap();
        assert_eq!((file.kid.as_deref(), file.value), (Some("a"), PathBuf::from("/etc/key.pem")));
    }

    #[test]
    fn keys_are_chosen_by_kid_and_algorithm() {
        let secrets: Vec<SecretSpec> = vec![
            "one:0123456789abcdef0123456789abcdef".parse().unwrap(),
            "two:fedcba9876543210fedcba9876543210".parse().unwrap(),
        ];
        let set = KeySet::load(&secrets, &[], &[]).unwrap();
        assert_eq!(set.candidates(Some("two"), Algorithm::HS256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::HS512).count(), 2);
        assert_eq!(set.candidates(Some("three"), Algorithm::HS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
        assert!(set.takes(Algorithm::HS384) && !set.takes(Algorithm::ES256));
        let twice = vec![secrets[0].clone(), secrets[0].clone()];
        assert!(matches!(KeySet::load(&twice, &[], &[]), Err(KeyError::DuplicateKid(_))));
        let missing: PublicKeySpec = "/nonexistent/key.pem".parse().unwrap();
        assert!(matches!(KeySet::load(&[], &[], &[missing]), Err(KeyError::Read { .. })));
    }
}
