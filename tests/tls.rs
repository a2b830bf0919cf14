//! TLS at the edge, with a certificate made in the test (rcgen): SSE over HTTP/2 (several
//! streams on one connection) and over HTTP/1.1 as ALPN chooses, WSS, a certificate reloaded
//! while streams are open, and plain HTTP to the TLS port told why it gets nothing.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{TestServer, WAIT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for localhost, written as PEM to `dir`; its DER.
fn certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crier-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn tls_server(dir: &std::path::Path) -> TestServer {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    TestServer::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
        .await
}

/// A TLS connection trusting `roots`, offering `alpn`.
async fn connect(
    server: &TestServer,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake")
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2(stream: TlsStream<TcpStream>) -> H2 {
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Opens an SSE stream on an h2 connection; its body.
async fn h2_stream(send: &mut H2, target: &str) -> hyper::body::Incoming {
    let request = Request::get(target).header("host", "localhost").body(Full::default()).unwrap();
    let response = send.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// Publishes over an h2 connection; the event's id.
async fn h2_publish(send: &mut H2, topic: &str, data: &'static str) -> String {
    let request = Request::post(format!("/publish?topic={topic}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(data.as_bytes())))
        .unwrap();
    let response = send.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    answer["id"].as_str().expect("an id").to_owned()
}

async fn h2_get(send: &mut H2, target: &str) -> String {
    let request = Request::get(target).header("host", "localhost").body(Full::default()).unwrap();
    let response = send.send_request(request).await.expect("response");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Waits until the server counts `n` subscriptions (asked over `send`: it speaks only TLS).
async fn wait_subscriptions(send: &mut H2, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = h2_get(send, "/metrics").await;
        if support::metric(&metrics, "crier_subscriptions") == Some(n as f64) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} subscriptions in time");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Reads `body` until it holds `needle`.
async fn read_until(body: &mut hyper::body::Incoming, needle: &str) -> String {
    let mut text = String::new();
    tokio::time::timeout(WAIT, async {
        while !text.contains(needle) {
            let frame = body.frame().await.expect("more").expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} not received: {text:?}"));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_runs_over_http2_and_http11_as_alpn_chooses() {
    let dir = scratch("alpn");
    let root = certificate(&dir);
    let server = tls_server(&dir).await;
    // HTTP/2: two streams and a publish on one connection.
    let mut send =
        h2(connect(&server, std::slice::from_ref(&root), &[b"h2", b"http/1.1"]).await).await;
    let mut news = h2_stream(&mut send, "/sse?topic=news").await;
    let mut sport = h2_stream(&mut send, "/sse?topic=sport").await;
    wait_subscriptions(&mut send, 2).await;
    h2_publish(&mut send, "news", "over h2").await;
    h2_publish(&mut send, "sport", "also over h2").await;
    assert!(read_until(&mut news, "data: over h2\n").await.contains("id: "));
    read_until(&mut sport, "data: also over h2\n").await;
    // HTTP/1.1, when the client offers only that.
    let mut tls = connect(&server, &[root], &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /sse?topic=news HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    wait_subscriptions(&mut send, 3).await;
    h2_publish(&mut send, "news", "to both").await;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&got).contains("data: to both") {
            let mut buf = [0u8; 4096];
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the event over HTTP/1.1");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("transfer-encoding: chunked"),
        "{text}"
    );
    read_until(&mut news, "data: to both\n").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_run_over_tls() {
    let dir = scratch("wss");
    let root = certificate(&dir);
    let server = tls_server(&dir).await;
    let tls = connect(&server, std::slice::from_ref(&root), &[b"http/1.1"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws?topic=t", tls)
        .await
        .expect("WSS handshake");
    let mut send = h2(connect(&server, &[root], &[b"h2"]).await).await;
    wait_subscriptions(&mut send, 1).await;
    let id = h2_publish(&mut send, "t", "over wss").await;
    let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!((json["id"].as_str(), json["data"].as_str()), (Some(id.as_str()), Some("over wss")));
    ws.send(tungstenite::Message::text(r#"{"op":"ping","ref":1}"#)).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), r#"{"op":"ok","ref":1}"#);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_connections_and_open_streams_go_on() {
    let dir = scratch("reload");
    let first = certificate(&dir);
    let server = tls_server(&dir).await;
    let mut send = h2(connect(&server, std::slice::from_ref(&first), &[b"h2"]).await).await;
    let mut open = h2_stream(&mut send, "/sse?topic=t").await;
    wait_subscriptions(&mut send, 1).await;
    let second = certificate(&dir);
    server.handle.reload_credentials().expect("reload");
    // A new connection gets the new certificate; the old one is no longer offered.
    let fresh = connect(&server, &[first.clone(), second.clone()], &[b"h2"]).await;
    let presented = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, second);
    // The stream opened before goes on, on its connection.
    h2_publish(&mut send, "t", "after the reload").await;
    read_until(&mut open, "data: after the reload\n").await;
    // A certificate that does not load is refused; the one in use stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    assert!(server.handle.reload_credentials().is_err());
    let still = connect(&server, std::slice::from_ref(&second), &[b"h2"]).await;
    assert_eq!(still.get_ref().1.peer_certificates().unwrap()[0], second);
    let metrics = h2_get(&mut send, "/metrics").await;
    assert!(metrics.contains("crier_credential_reloads_total{outcome=\"error\"} 1"), "{metrics}");
    // Plain HTTP is not served beside TLS.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP refused");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_a_400_saying_so() {
    let dir = scratch("plain");
    certificate(&dir);
    let server = tls_server(&dir).await;
    let response = support::request(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(response.status, 400);
    assert!(response.text().contains("https://"), "{}", response.text());
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    let _ = std::fs::remove_dir_all(&dir);
}
