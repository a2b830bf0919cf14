//! `crier token` on the real binary: tokens minted from an HMAC secret file and from PEM private
//! keys (Ed25519, EC, RSA) are accepted by a server with the matching keys, for what they name
//! and nothing else; `crier token check` says whether a configuration accepts a token; and a
//! token whose claims are flat keys is refused with a hint that they nest.

mod support;

use std::process::Command;

use serde_json::json;
use support::tokens::{self, SECRET, key_path};
use support::{SseClient, TestServer, request};

/// Runs `crier token ARGS`; its exit status and stdout.
fn crier_token(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_crier"))
        .arg("token")
        .args(args)
        .env_remove("CRIER_JWT_KEY")
        .output()
        .expect("run crier token");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code().is_some(), "{stderr}");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Mints a token with `args`; asserts success.
fn mint(args: &[&str]) -> String {
    let (status, out) = crier_token(args);
    assert_eq!(status, 0, "{out}");
    out.trim().to_owned()
}

async fn publish(server: &TestServer, topic: &str, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    let path = format!("/publish?topic={topic}");
    request(server.addr, "POST", &path, &[("Authorization", &bearer)], b"x").await.status
}

fn scratch_secret() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("crier-token-secret-{}", std::process::id()));
    // As an editor saves it: with a final newline, which is not part of the secret.
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_from_the_secret_file_publishes_and_subscribes_where_it_says() {
    let secret = scratch_secret();
    let token = mint(&[
        "--key-file",
        secret.to_str().unwrap(),
        "--publish",
        "news/*",
        "--subscribe",
        "private/alice",
        "--sub",
        "alice",
        "--exp",
        "1h",
    ]);
    let _ = std::fs::remove_file(&secret);
    let server = TestServer::start(&["--jwt-key", SECRET, "--private-topics", "private/*"]).await;
    assert_eq!(publish(&server, "news/eu", &token).await, 200);
    assert_eq!(publish(&server, "sport", &token).await, 403);
    let alice =
        SseClient::connect(server.addr, &format!("/sse?topic=private/alice&token={token}"), &[])
            .await;
    assert_eq!(alice.status, 200);
    let bob =
        request(server.addr, "GET", &format!("/sse?topic=private/bob&token={token}"), &[], b"")
            .await;
    assert_eq!(bob.status, 403);
    // Checked against the same configuration, and another.
    let (status, out) = crier_token(&["check", &token, "--jwt-key", SECRET]);
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("accepted") && out.contains("news/*") && out.contains("\"alice\""),
        "{out}"
    );
    let other = "another-secret-of-32-bytes-or-more!";
    let (status, out) = crier_token(&["check", &token, "--jwt-key", other]);
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("refused: signature"), "{out}");
    let (status, out) = crier_token(&["check", "not-a-token", "--jwt-key", SECRET]);
    assert_eq!(status, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_from_pem_private_keys_verify_with_their_public_halves() {
    for (private, public) in [("ed.key", "ed.pub"), ("ec.key", "ec.pub"), ("rsa.key", "rsa.pub")] {
        let key = key_path(private);
        let token = mint(&["--key-file", key.to_str().unwrap(), "--publish", "*", "--kid", "k1"]);
        let public = format!("k1:{}", key_path(public).display());
        let server = TestServer::start(&["--jwt-public-key-file", &public]).await;
        assert_eq!(publish(&server, "anything", &token).await, 200, "{private}");
    }
    // A PEM file that is no private key, and a secret too short.
    let bad = std::env::temp_dir().join(format!("crier-token-bad-{}", std::process::id()));
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let (status, _) = crier_token(&["--key-file", bad.to_str().unwrap()]);
    assert_eq!(status, 64);
    std::fs::write(&bad, "short\n").unwrap();
    let (status, _) = crier_token(&["--key-file", bad.to_str().unwrap()]);
    assert_eq!(status, 64);
    let _ = std::fs::remove_file(&bad);
    let (status, _) = crier_token(&["--publish", "*"]);
    assert_eq!(status, 64, "no key given");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_crier_claims_are_refused_with_a_hint_that_they_nest() {
    let server = TestServer::start(&["--jwt-key", SECRET]).await;
    let flat = tokens::hs256(&json!({"exp": tokens::now() + 600, "crier.publish": ["*"]}));
    let bearer = format!("Bearer {flat}");
    let refused =
        request(server.addr, "POST", "/publish?topic=t", &[("Authorization", &bearer)], b"x").await;
    assert_eq!(refused.status, 403);
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("nested") && detail.contains(r#"{"crier": {"publish""#), "{detail}");
    let (status, out) = crier_token(&["check", &flat, "--jwt-key", SECRET]);
    assert_eq!(status, 0);
    assert!(out.contains("nest them"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mercure_publishers_token_is_minted_with_the_hubs_key() {
    let server = TestServer::start(&support::mercure::HUB).await;
    let token = mint(&["--key", support::mercure::KEY, "--mercure-publish", "*"]);
    let bearer = format!("Bearer {token}");
    let form = [("topic", "https://example.com/books/1"), ("data", "{}")];
    let published = support::mercure::post(server.addr, &[("Authorization", &bearer)], &form).await;
    assert_eq!(published.status, 200, "{}", published.text());
    let claims = crier_token(&["check", &token, "--jwt-key", support::mercure::KEY]).1;
    assert!(claims.contains(r#""publish": ["#) && !claims.contains(r#""crier""#), "{claims}");
}
