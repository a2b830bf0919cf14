//! `crier token`: mint a token for this server's keys, and check one against a configuration,
//! as Centrifugo's `gentoken` and `checktoken` do.
//!
//! - `crier token --key-file F --publish 'news/*' --subscribe 'private/alice' --exp 1h` prints
//!   a token signed with the HMAC secret in `F` (or `--key`, or `CRIER_JWT_KEY`), or with the
//!   PEM private key in `F` (RSA, EC, Ed25519: the server holds its public half).
//! - `--mercure-publish '*'` (and `--mercure-subscribe`) adds the Mercure hub's claim, for a
//!   hub's publisher or subscriber.
//! - `crier token check TOKEN [server flags]` prints the token's header and claims, and whether
//!   a server started with those flags (and `CRIER_*` variables) would accept it, and what for.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::Config;
use crate::auth::{Authority, SecretSpec, Selector};

/// Exit status of a token `check` refuses (the token is fine to read, not to use).
const EXIT_REFUSED: u8 = 1;
/// Exit status for a bad command line (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// The algorithms and keys to try signing with, in order.
type SigningKeys = Vec<(Algorithm, EncodingKey)>;

/// What `crier token` takes to mint a token.
#[derive(Parser, Debug)]
#[command(
    name = "crier token",
    about = "Mint a token for this server's keys (or `crier token check TOKEN [server flags]`)",
    max_term_width = 100
)]
struct Mint {
    /// A file holding the key: an HMAC secret (its bytes, a final newline dropped), or the PEM
    /// private key (RSA, EC P-256/P-384, Ed25519) whose public half the server has.
    #[arg(long, conflicts_with = "key")]
    key_file: Option<PathBuf>,

    /// The HMAC secret (the first of --jwt-key's list, `KID:SECRET` naming it); shown by
    /// `ps`: prefer --key-file.
    #[arg(long, env = "CRIER_JWT_KEY", value_delimiter = ',', hide_env_values = true)]
    key: Vec<SecretSpec>,

    /// The algorithm: HS256 (default for a secret), HS384, HS512, RS256…, PS256…, ES256,
    /// ES384, EdDSA (the default for a PEM key follows its type).
    #[arg(long)]
    alg: Option<String>,

    /// The key id (`kid`) the server knows the key by.
    #[arg(long)]
    kid: Option<String>,

    /// Who the token is for (`sub`): publishes are rate-limited by it.
    #[arg(long)]
    sub: Option<String>,

    /// Topic selectors it may publish to (`news/*`, `*`), repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,

    /// Topic selectors it may subscribe to when they are private (`private/alice`).
    #[arg(long, value_delimiter = ',')]
    subscribe: Vec<String>,

    /// For the Mercure hub: topic selectors its `mercure.publish` claim lists (`*`: every
    /// topic), repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    mercure_publish: Vec<String>,

    /// For the Mercure hub: topic selectors (URI templates too) its `mercure.subscribe` claim
    /// lists, for private updates.
    #[arg(long, value_delimiter = ',')]
    mercure_subscribe: Vec<String>,

    /// How long it is valid (`exp` = now + this): `90s`, `1h`, `7days`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    exp: Duration,

    /// `iss`, for a server with --jwt-issuer.
    #[arg(long)]
    iss: Option<String>,

    /// `aud`, for a server with --jwt-audience.
    #[arg(long)]
    aud: Option<String>,
}

/// Runs `crier token ARGS` (the arguments after `token`); returns the exit status.
pub fn token_command(args: Vec<OsString>) -> u8 {
    if args.first().is_some_and(|first| first == "check") {
        return check(&args[1..]);
    }
    let mint =
        match Mint::try_parse_from(std::iter::once(OsString::from("crier token")).chain(args)) {
            Ok(mint) => mint,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() { EXIT_USAGE } else { 0 };
            }
        };
    match mint.token() {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(message) => {
            eprintln!("crier token: {message}");
            EXIT_USAGE
        }
    }
}

impl Mint {
    fn token(&self) -> Result<String, String> {
        for selector in self.publish.iter().chain(&self.subscribe) {
            selector.parse::<Selector>().map_err(|e| format!("{selector:?}: {e}"))?;
        }
        let exp = SystemTime::now()
            .checked_add(self.exp)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .ok_or("--exp is too far")?
            .as_secs();
        let mut claims = json!({"exp": exp});
        let mercure = !self.mercure_publish.is_empty() || !self.mercure_subscribe.is_empty();
        if mercure {
            claims["mercure"] =
                json!({"publish": self.mercure_publish, "subscribe": self.mercure_subscribe});
        }
        // A hub's token needs no crier claim; any other token has one, if empty.
        if !mercure || !self.publish.is_empty() || !self.subscribe.is_empty() {
            claims["crier"] = json!({"publish": self.publish, "subscribe": self.subscribe});
        }
        for (name, value) in [("sub", &self.sub), ("iss", &self.iss), ("aud", &self.aud)] {
            if let Some(value) = value {
                claims[name] = json!(value);
            }
        }
        let (keys, kid) = self.keys()?;
        let mut refused = String::from("no algorithm fits the key");
        for (algorithm, key) in keys {
            let mut header = Header::new(algorithm);
            header.kid = kid.clone();
            match jsonwebtoken::encode(&header, &claims, &key) {
                Ok(token) => return Ok(token),
                Err(e) => refused = format!("cannot sign with {algorithm:?}: {e}"),
            }
        }
        Err(refused)
    }

    /// The candidate algorithms and keys to sign with, in order, and the key id.
    fn keys(&self) -> Result<(SigningKeys, Option<String>), String> {
        let chosen = match &self.alg {
            Some(name) => Some(name.parse::<Algorithm>().map_err(|_| format!("--alg {name}?"))?),
            None => None,
        };
        let (bytes, kid) = match (&self.key_file, self.key.first()) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                (bytes, self.kid.clone())
            }
            (None, Some(secret)) => (secret.value.clone(), self.kid.clone().or(secret.kid.clone())),
            (None, None) => return Err("give --key-file (or --key, or CRIER_JWT_KEY)".into()),
        };
        if bytes.starts_with(b"-----BEGIN") {
            return Ok((pem_keys(&bytes, chosen)?, kid));
        }
        let mut secret = bytes;
        if secret.last() == Some(&b'\n') {
            secret.pop();
        }
        if secret.len() < 32 {
            return Err("an HMAC secret must be at least 32 bytes (RFC 7518 §3.2)".into());
        }
        let algorithm = chosen.unwrap_or(Algorithm::HS256);
        let key = EncodingKey::from_secret(&secret).map_err(|e| e.to_string())?;
        Ok((vec![(algorithm, key)], kid))
    }
}

/// The keys a PEM private key signs as: its type's algorithms, or `chosen`.
fn pem_keys(
    pem: &[u8],
    chosen: Option<Algorithm>,
) -> Result<Vec<(Algorithm, EncodingKey)>, String> {
    use Algorithm::*;
    type Load = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
    // Each type's algorithms, and those tried without --alg (an EC key's curve picks one).
    let families: [(&[Algorithm], &[Algorithm], Load); 3] = [
        (&[EdDSA], &[EdDSA], EncodingKey::from_ed_pem),
        (&[ES256, ES384], &[ES256, ES384], EncodingKey::from_ec_pem),
        (&[RS256, RS384, RS512, PS256, PS384, PS512], &[RS256], EncodingKey::from_rsa_pem),
    ];
    let mut keys = Vec::new();
    for (algorithms, defaults, load) in families {
        let Ok(key) = load(pem) else { continue };
        let wanted = match chosen {
            Some(algorithm) if algorithms.contains(&algorithm) => vec![algorithm],
            Some(_) => continue,
            None => defaults.to_vec(),
        };
        keys.extend(wanted.into_iter().map(|algorithm| (algorithm, key.clone())));
    }
    if keys.is_empty() {
        return Err("the PEM file is no RSA, EC or Ed25519 private key for that algorithm".into());
    }
    Ok(keys)
}

/// `crier token check TOKEN [server flags]`.
fn check(args: &[OsString]) -> u8 {
    let Some(token) = args.first().and_then(|token| token.to_str()) else {
        eprintln!("usage: crier token check TOKEN [server flags]");
        return EXIT_USAGE;
    };
    let flags = std::iter::once(OsString::from("crier")).chain(args[1..].iter().cloned());
    let config = match Config::try_parse_from(flags).and_then(Config::checked) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.print();
            return EXIT_USAGE;
        }
    };
    let parts: Vec<Option<Value>> = token.split('.').take(2).map(decode_part).collect();
    let (Some(Some(header)), Some(Some(claims))) = (parts.first(), parts.get(1)) else {
        println!("refused: not a JWT (header.claims.signature, base64url JSON)");
        return EXIT_REFUSED;
    };
    let pretty = |value: &Value| serde_json::to_string_pretty(value).unwrap_or_default();
    println!("header: {}\nclaims: {}", pretty(header), pretty(claims));
    let authority = match Authority::new(config.auth()) {
        Ok(authority) if authority.has_keys() => authority,
        Ok(_) => {
            println!("refused: this configuration has no key (--jwt-key, --jwt-public-key-file)");
            return EXIT_REFUSED;
        }
        Err(e) => {
            println!("refused: the configured keys do not load: {e}");
            return EXIT_REFUSED;
        }
    };
    match authority.verify(token) {
        Ok(grant) => {
            let list = |claim: &str| claims["crier"][claim].to_string();
            println!(
                "accepted: publish {}, subscribe {}{}",
                list("publish"),
                list("subscribe"),
                grant.subject.as_deref().map(|sub| format!(", for {sub:?}")).unwrap_or_default()
            );
            if grant.flat_claims {
                println!(
                    "note: \"crier.publish\" and \"crier.subscribe\" as flat keys are not read; \
                     nest them: {{\"crier\": {{\"publish\": [...], \"subscribe\": [...]}}}}"
                );
            }
            0
        }
        Err(refused) => {
            println!("refused: {}: {}", refused.as_str(), refused.detail());
            EXIT_REFUSED
        }
    }
}

/// A base64url JSON part of a JWT, read without verifying anything.
fn decode_part(part: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}
