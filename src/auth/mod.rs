//! Credentials: the keys tokens are verified with, what a verified token grants, and what a
//! client may do with it ([`Access`]): publish to a topic, subscribe to a private one.
//!
//! With no key configured the server is in its development mode: every topic is public and
//! only local clients (loopback, not through a proxy) may publish. With a key, publishing
//! needs a token whose `crier.publish` selectors cover the topic, and subscribing to a topic
//! that `--private-topics` names needs one whose `crier.subscribe` selectors cover it.
//!
//! This module knows nothing of HTTP: where a token comes from, and how a refusal is
//! answered, is the `http` module's business.

mod keys;
mod mercure;
mod selector;
mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::HashMap;

use parking_lot::{Mutex, RwLock};

pub(crate) use keys::KeyError;
use keys::KeySet;
pub use keys::{KeySpec, PublicKeySpec, SecretFileSpec, SecretSpec};
pub(crate) use mercure::{MercureAuthority, MercureGrant, MercureKey, MercureKeyError};
pub(crate) use selector::Selectors;
pub use selector::{Selector, SelectorError};
pub(crate) use token::{Grant, TokenError};

/// Verified tokens remembered at most (then forgotten all at once).
const MAX_REMEMBERED: usize = 4096;

/// Longest token remembered, in bytes.
const MAX_REMEMBERED_TOKEN: usize = 1024;

/// The credentials part of the configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthConfig {
    /// HMAC secrets (`--jwt-key`).
    pub(crate) secrets: Vec<SecretSpec>,
    /// Files of HMAC secrets (`--jwt-key-file`), read again on reload.
    pub(crate) secret_files: Vec<SecretFileSpec>,
    /// PEM public key files (`--jwt-public-key-file`), read again on reload.
    pub(crate) public_key_files: Vec<PublicKeySpec>,
    /// Required `iss`.
    pub(crate) issuer: Option<String>,
    /// Required `aud`.
    pub(crate) audience: Option<String>,
    /// Topics whose subscribers need a token (`--private-topics`).
    pub(crate) private_topics: Vec<Selector>,
}

/// Verifies tokens and says what they allow: one per node, shared by every connection.
pub(crate) struct Authority {
    config: AuthConfig,
    keys: RwLock<Arc<KeySet>>,
    /// Tokens verified lately, with what they grant: a publisher sends the same token with
    /// every publish, a client the same token with every reconnect.
    verified: Mutex<HashMap<Box<str>, Arc<Grant>>>,
    validations: token::Validations,
    policy: Arc<Policy>,
}

/// The node's rules, as every [`Access`] applies them.
#[derive(Debug)]
struct Policy {
    /// A key is configured: publishing needs a token.
    credentials: bool,
    /// Topics that need a token to subscribe to.
    private: Selectors,
}

impl Authority {
    /// Loads the keys of `config`.
    pub(crate) fn new(config: AuthConfig) -> Result<Self, KeyError> {
        let keys = KeySet::load(&config.secrets, &config.secret_files, &config.public_key_files)?;
        let validations =
            token::Validations::new(config.issuer.as_deref(), config.audience.as_deref());
        let policy = Arc::new(Policy {
            credentials: !keys.is_empty(),
            private: Selectors::from(config.private_topics.clone()),
        });
        let verified = Mutex::new(HashMap::new());
        Ok(Authority { config, keys: RwLock::new(Arc::new(keys)), verified, validations, policy })
    }

    /// Reads the key files again; on an error the keys in use stay. Open connections keep
    /// what their tokens granted.
    pub(crate) fn reload(&self) -> Result<(), KeyError> {
        let AuthConfig { secrets, secret_files, public_key_files, .. } = &self.config;
        let keys = KeySet::load(secrets, secret_files, public_key_files)?;
        *self.keys.write() = Arc::new(keys);
        // A token a removed key signed must not pass from memory.
        self.verified.lock().clear();
        Ok(())
    }

    /// Whether a key is configured, so tokens mean something.
    pub(crate) fn has_keys(&self) -> bool {
        self.policy.credentials
    }

    /// Verifies a token (from memory if it was verified lately and has not expired since).
    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Grant>, TokenError> {
        let remembered = self.verified.lock().get(token).cloned();
        if let Some(grant) = remembered.filter(|grant| grant.expires_at > SystemTime::now()) {
            return Ok(grant);
        }
        let keys = self.keys.read().clone();
        let grant = Arc::new(token::verify(token, &keys, &self.validations)?);
        if token.len() <= MAX_REMEMBERED_TOKEN {
            let mut verified = self.verified.lock();
            if verified.len() >= MAX_REMEMBERED {
                verified.clear();
            }
            verified.insert(token.into(), grant.clone());
        }
        Ok(grant)
    }

    /// What a client may do: with `grant` if it presented a valid token; `local` if it is on
    /// this host and not behind a proxy (what development mode lets publish).
    pub(crate) fn access(&self, grant: Option<Arc<Grant>>, local: bool) -> Access {
        Access { policy: self.policy.clone(), grant, local }
    }
}

/// What one client may do.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    policy: Arc<Policy>,
    grant: Option<Arc<Grant>>,
    local: bool,
}

/// Something a client asked for that it may not do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// A token is needed and none was given.
    NoToken { action: Action, topic: String },
    /// The token does not cover the topic.
    NotCovered { action: Action, topic: String },
    /// The token does not cover the topic, and has flat `"crier.publish"` or
    /// `"crier.subscribe"` keys: it was likely meant to.
    FlatClaims { action: Action, topic: String },
    /// No key is configured and the client is not local.
    NotLocal,
}

/// What a client asked to do to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Publish,
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::NoToken { action, topic } => {
                write!(f, "a token is needed to {} {topic:?}", action.as_str())
            }
            Denied::NotCovered { action, topic } => {
                write!(f, "the token does not allow to {} {topic:?}", action.as_str())
            }
            Denied::FlatClaims { action, topic } => write!(
                f,
                "the token does not allow to {} {topic:?}: its claims are flat keys \
                 (\"crier.publish\", \"crier.subscribe\"), and crier reads them nested: \
                 {{\"crier\": {{\"publish\": [...], \"subscribe\": [...]}}}}",
                action.as_str()
            ),
            Denied::NotLocal => f.write_str(
                "publishing is accepted only from loopback peers when no credentials are configured",
            ),
        }
    }
}

impl Access {
    /// Whether the client may publish to `topic`.
    pub(crate) fn check_publish(&self, topic: &str) -> Result<(), Denied> {
        if !self.policy.credentials {
            return if self.local { Ok(()) } else { Err(Denied::NotLocal) };
        }
        self.check(Action::Publish, topic, |grant| &grant.publish)
    }

    /// Whether the client may subscribe to `topic`: any public topic; a private one if its
    /// token covers it.
    pub(crate) fn check_subscribe(&self, topic: &str) -> Result<(), Denied> {
        if !self.policy.private.covers(topic) {
            return Ok(());
        }
        self.check(Action::Subscribe, topic, |grant| &grant.subscribe)
    }

    fn check(
        &self,
        action: Action,
        topic: &str,
        selectors: impl Fn(&Grant) -> &Selectors,
    ) -> Result<(), Denied> {
        match &self.grant {
            None => Err(Denied::NoToken { action, topic: topic.to_owned() }),
            Some(grant) if selectors(grant).covers(topic) => Ok(()),
            Some(grant) if grant.flat_claims => {
                Err(Denied::FlatClaims { action, topic: topic.to_owned() })
            }
            Some(_) => Err(Denied::NotCovered { action, topic: topic.to_owned() }),
        }
    }

    /// How long until the token runs out (zero once it has), if the client gave one.
    pub(crate) fn expires_in(&self) -> Option<Duration> {
        let left = |grant: &Arc<Grant>| grant.expires_at.duration_since(SystemTime::now());
        self.grant.as_ref().map(|grant| left(grant).unwrap_or_default())
    }

    /// The token's subject, if any.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.grant.as_ref().and_then(|grant| grant.subject.as_deref())
    }

    /// The same client with a fresh token (a WebSocket `auth` command).
    pub(crate) fn renewed(&self, grant: Arc<Grant>) -> Self {
        Access { grant: Some(grant), ..self.clone() }
    }
}

#[cfg(test)]
mod tests;
