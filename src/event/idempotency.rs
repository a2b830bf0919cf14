//! Idempotency keys: what a publisher sends with a publish it may retry, so that a retry
//! publishes nothing new and answers the first publish's id.

use std::fmt;
use std::sync::Arc;

/// A publish's idempotency key: 1 to 255 visible ASCII characters (no space).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

/// A key that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1 to 255 visible ASCII characters, without spaces")]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    /// Validates `key`.
    pub fn new(key: &str) -> Result<Self, IdempotencyKeyError> {
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > 255 || !visible {
            return Err(IdempotencyKeyError);
        }
        Ok(IdempotencyKey(key.into()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::new("order-42:retry_0").is_ok());
        assert!(IdempotencyKey::new(&"k".repeat(255)).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
    }
}
