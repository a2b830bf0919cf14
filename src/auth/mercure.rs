//! Mercure's credentials: a publisher key and a subscriber key, each taking one configured
//! algorithm, and the `mercure` claim (`publish`, `subscribe`, `payload`) a token carries.
//! Tokens are verified by the same code as crier's own ([`super::token::verify_claims`]);
//! only the keys and the claim differ.

use std::time::{Duration, SystemTime};

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::keys::{KeyError, KeySet};
use super::token::{self, TokenError, Validations};

/// One side's key, as the reference hub takes it: the key (an HMAC secret, or the PEM text of
/// a public key) and its algorithm.
#[derive(Clone)]
pub(crate) struct MercureKey {
    /// The secret or PEM text.
    pub(crate) key: String,
    /// The algorithm tokens must be signed with (`HS256` by default).
    pub(crate) algorithm: String,
}

impl std::fmt::Debug for MercureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MercureKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Why a Mercure key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MercureKeyError {
    /// The algorithm has no name jsonwebtoken knows.
    #[error("unknown JWT algorithm {0:?}")]
    Algorithm(String),
    /// The key does not suit the algorithm.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What a verified Mercure token grants.
#[derive(Debug, Default)]
pub(crate) struct MercureGrant {
    /// `mercure.publish`: selectors of the topics it may publish to (`None`: not a publisher).
    pub(crate) publish: Option<Vec<String>>,
    /// `mercure.subscribe`: selectors of the private updates it may receive.
    pub(crate) subscribe: Option<Vec<String>>,
    /// `mercure.payload`, shown in the subscriber's subscriptions.
    pub(crate) payload: Option<serde_json::Value>,
    /// `exp`, if the token has one.
    pub(crate) expires_at: Option<SystemTime>,
}

impl MercureGrant {
    /// How long until the token runs out (zero once it has), if it has an `exp`.
    pub(crate) fn expires_in(&self) -> Option<Duration> {
        self.expires_at.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

#[derive(Deserialize)]
struct MercureClaims {
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    mercure: Option<Claim>,
    /// The namespaced form some publishers use.
    #[serde(default, rename = "https://mercure.rocks/")]
    namespaced: Option<Claim>,
}

#[derive(Deserialize, Default)]
struct Claim {
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// Verifies Mercure tokens: one per node.
pub(crate) struct MercureAuthority {
    publisher: Option<KeySet>,
    subscriber: Option<KeySet>,
    validations: Validations,
}

impl MercureAuthority {
    /// The authority for the configured keys (either may be absent).
    pub(crate) fn new(
        publisher: Option<&MercureKey>,
        subscriber: Option<&MercureKey>,
    ) -> Result<Self, MercureKeyError> {
        let load = |key: &MercureKey| -> Result<KeySet, MercureKeyError> {
            let name = key.algorithm.trim();
            let algorithm: Algorithm =
                name.parse().map_err(|_| MercureKeyError::Algorithm(name.to_owned()))?;
            Ok(KeySet::single(key.key.as_bytes(), algorithm)?)
        };
        Ok(MercureAuthority {
            publisher: publisher.map(load).transpose()?,
            subscriber: subscriber.map(load).transpose()?,
            validations: Validations::mercure(),
        })
    }

    /// Whether publishers need a token (a publisher key is configured).
    pub(crate) fn has_publisher_key(&self) -> bool {
        self.publisher.is_some()
    }

    /// Whether subscribers' tokens are read (a subscriber key is configured).
    pub(crate) fn has_subscriber_key(&self) -> bool {
        self.subscriber.is_some()
    }

    /// Verifies a publisher's token.
    pub(crate) fn verify_publisher(&self, token: &str) -> Result<MercureGrant, TokenError> {
        verify(token, self.publisher.as_ref(), &self.validations)
    }

    /// Verifies a subscriber's token.
    pub(crate) fn verify_subscriber(&self, token: &str) -> Result<MercureGrant, TokenError> {
        verify(token, self.subscriber.as_ref(), &self.validations)
    }
}

fn verify(
    token: &str,
    keys: Option<&KeySet>,
    validations: &Validations,
) -> Result<MercureGrant, TokenError> {
    let keys = keys.ok_or(TokenError::Algorithm)?;
    let claims: MercureClaims = token::verify_claims(token, keys, validations)?;
    let expires_at = claims.exp.map(token::expiry).transpose()?;
    let claim = claims.namespaced.or(claims.mercure).unwrap_or_default();
    Ok(MercureGrant {
        publish: claim.publish,
        subscribe: claim.subscribe,
        payload: claim.payload,
        expires_at,
    })
}
