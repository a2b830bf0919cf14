//! Verifying a token: its size, its header (algorithm and key id) read before any key is
//! tried, its signature and standard claims checked by `jsonwebtoken`, and the `crier` claim
//! read into a [`Grant`].

use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::keys::{KeySet, algorithms};
use super::selector::Selectors;

/// Longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 << 10;

/// Why a token was refused; the name is the `reason` label of `crier_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a JWT: not three base64url parts of JSON.
    Malformed,
    /// Over [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// `none`, or an algorithm no configured key takes.
    Algorithm,
    /// A `kid` no configured key has.
    UnknownKey,
    /// The signature does not verify with any key that could have made it.
    Signature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is still ahead.
    NotYetValid,
    /// `iss` is not `--jwt-issuer`.
    Issuer,
    /// `aud` does not name `--jwt-audience`.
    Audience,
    /// `exp` missing, or a claim of the wrong shape (a selector that can never match).
    Claims,
}

impl TokenError {
    /// Every reason, for registering the metric, each at the index of its discriminant.
    pub(crate) const ALL: [TokenError; 10] = [
        TokenError::Malformed,
        TokenError::TooLarge,
        TokenError::Algorithm,
        TokenError::UnknownKey,
        TokenError::Signature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::Issuer,
        TokenError::Audience,
        TokenError::Claims,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLarge => "too_large",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claims => "claims",
        }
    }

    /// What was wrong, for the client.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is not a well-formed JWT",
            TokenError::TooLarge => "the token is longer than 8 KiB",
            TokenError::Algorithm => "the token's algorithm is not one the server accepts",
            TokenError::UnknownKey => "the token's key id (kid) names no key the server has",
            TokenError::Signature => "the token's signature does not verify",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet (nbf)",
            TokenError::Issuer => "the token's issuer (iss) is not accepted",
            TokenError::Audience => "the token's audience (aud) is not accepted",
            TokenError::Claims => "the token lacks exp or has a malformed claim",
        }
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// `sub`: who the token is for.
    pub(crate) subject: Option<Box<str>>,
    /// `exp`.
    pub(crate) expires_at: SystemTime,
    /// `crier.publish`.
    pub(crate) publish: Selectors,
    /// `crier.subscribe`.
    pub(crate) subscribe: Selectors,
    /// The token has flat `"crier.publish"` or `"crier.subscribe"` keys, which crier does not
    /// read (its claims are nested): what a refusal points out.
    pub(crate) flat_claims: bool,
}

/// The claims crier reads (`exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct CrierClaims {
    exp: f64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    crier: CrierClaim,
    #[serde(default, rename = "crier.publish")]
    flat_publish: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "crier.subscribe")]
    flat_subscribe: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct CrierClaim {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// The part of the header that picks the key, read before anything is verified.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// What `jsonwebtoken` checks of a token, for each key family (it takes only algorithms of
/// the key's family): the standard claims crier relies on.
pub(crate) struct Validations([Validation; 4]);

impl Validations {
    pub(crate) fn new(issuer: Option<&str>, audience: Option<&str>) -> Self {
        Self::with_exp(issuer, audience, true)
    }

    /// What Mercure tokens are checked for: `exp` when present (the reference hub accepts
    /// tokens without one), `nbf`, and no issuer or audience.
    pub(crate) fn mercure() -> Self {
        Self::with_exp(None, None, false)
    }

    fn with_exp(issuer: Option<&str>, audience: Option<&str>, require_exp: bool) -> Self {
        let families =
            [AlgorithmFamily::Hmac, AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed];
        Validations(families.map(|family| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.algorithms = algorithms(family).to_vec();
            validation.leeway = 0;
            // RFC 7519 §4.1.4: not accepted "on or after" exp (jsonwebtoken's own check
            // accepts the second of exp itself).
            validation.reject_tokens_expiring_in_less_than = 1;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(if require_exp { &["exp"][..] } else { &[] });
            match issuer {
                Some(issuer) => validation.set_issuer(&[issuer]),
                None => validation.iss = None,
            }
            match audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
            validation
        }))
    }

    fn of(&self, family: AlgorithmFamily) -> &Validation {
        &self.0[match family {
            AlgorithmFamily::Hmac => 0,
            AlgorithmFamily::Rsa => 1,
            AlgorithmFamily::Ec => 2,
            AlgorithmFamily::Ed => 3,
        }]
    }
}

/// Verifies `token` with `keys`.
pub(crate) fn verify(
    token: &str,
    keys: &KeySet,
    validations: &Validations,
) -> Result<Grant, TokenError> {
    grant(verify_claims::<CrierClaims>(token, keys, validations)?)
}

/// Verifies `token` with `keys` and reads its claims as `C`: the one verification crier's
/// own tokens and Mercure's share.
pub(crate) fn verify_claims<C: DeserializeOwned>(
    token: &str,
    keys: &KeySet,
    validations: &Validations,
) -> Result<C, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let header = read_header(token)?;
    // `none` and names jsonwebtoken does not know fail here, before any key is looked at.
    let algorithm = Algorithm::from_str(&header.alg).map_err(|_| TokenError::Algorithm)?;
    if !keys.takes(algorithm) {
        return Err(TokenError::Algorithm);
    }
    if header.kid.as_deref().is_some_and(|kid| !keys.has_kid(kid)) {
        return Err(TokenError::UnknownKey);
    }
    let mut refused = TokenError::Signature;
    for key in keys.candidates(header.kid.as_deref(), algorithm) {
        match jsonwebtoken::decode::<C>(token, &key.decoding, validations.of(key.family)) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                refused = reason(e.kind());
                // Anything but a bad signature was found after the signature verified.
                if refused != TokenError::Signature {
                    return Err(refused);
                }
            }
        }
    }
    Err(refused)
}

fn read_header(token: &str) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

fn reason(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        // The payload is read after the signature verified: a signed token of the wrong shape.
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Json(_) => TokenError::Claims,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::Signature,
        _ => TokenError::Malformed,
    }
}

/// The instant of an `exp` claim (seconds since the epoch, possibly fractional).
pub(super) fn expiry(exp: f64) -> Result<SystemTime, TokenError> {
    if !exp.is_finite() || exp < 0.0 {
        return Err(TokenError::Claims);
    }
    Ok(UNIX_EPOCH + Duration::from_secs_f64(exp.min(u32::MAX as f64 * 4.0)))
}

fn grant(claims: CrierClaims) -> Result<Grant, TokenError> {
    let expires_at = expiry(claims.exp)?;
    let selectors = |items: &[String]| {
        Selectors::parse(items.iter().map(String::as_str)).map_err(|_| TokenError::Claims)
    };
    Ok(Grant {
        subject: claims.sub.map(String::into_boxed_str),
        expires_at,
        publish: selectors(&claims.crier.publish)?,
        subscribe: selectors(&claims.crier.subscribe)?,
        flat_claims: claims.flat_publish.is_some() || claims.flat_subscribe.is_some(),
    })
}
