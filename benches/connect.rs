//! What credentials cost: new authenticated SSE streams per second (HS256 and ES256 tokens)
//! against unauthenticated ones, and publishes per second with and without a token, each with
//! the server's CPU per operation. The server is the release binary; the client (on the same
//! machine) opens each stream on a new connection and reads the response head, or publishes
//! over keep-alive connections. Modes alternate, three rounds each.
//!
//! `cargo bench --bench connect [-- --connects N --publishes N]`; with `--server-bin PATH
//! --before`, only the modes without tokens, against that binary (another build) and this
//! one, alternately: the cost of the checks every request now goes through.

use std::net::SocketAddr;
use std::process::Child;
use std::time::Instant;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

const SECRET: &str = "bench-secret-of-32-bytes-or-more!";
const CONCURRENCY: usize = 32;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_bin(env!("CARGO_BIN_EXE_crier"), args)
    }

    fn start_bin(bin: &str, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, addr) = support::spawn_crier(std::path::Path::new(bin), &args);
        Server { child, addr }
    }

    fn cpu_seconds(&self) -> f64 {
        support::process_cpu_seconds(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(algorithm: Algorithm, subject: usize) -> String {
    let claims = json!({
        "exp": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600,
        "sub": format!("client-{subject}"),
        "crier": {"publish": ["*"], "subscribe": ["*"]},
    });
    let key = match algorithm {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        _ => {
            let pem =
                std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec.key")).unwrap();
            EncodingKey::from_ec_pem(&pem).unwrap()
        }
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap()
}

/// Reads a response head (and a Content-Length body); the status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return status;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens `count` streams, `CONCURRENCY` at a time, each on a new connection, with the tokens
/// in turn (none if there are none); streams/s.
async fn connects(addr: SocketAddr, count: usize, tokens: &[String]) -> f64 {
    let requests: std::sync::Arc<Vec<String>> = std::sync::Arc::new(if tokens.is_empty() {
        vec!["GET /sse?topic=bench HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()]
    } else {
        tokens
            .iter()
            .map(|t| {
                format!(
                    "GET /sse?topic=bench HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"
                )
            })
            .collect()
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|task| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for i in 0..count / CONCURRENCY {
                    let request = &requests[(i * CONCURRENCY + task) % requests.len()];
                    let mut stream = TcpStream::connect(addr).await.unwrap();
                    stream.write_all(request.as_bytes()).await.unwrap();
                    let mut chunk = [0u8; 1024];
                    buf.clear();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut chunk).await.unwrap();
                        assert!(n > 0);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `count` publishes over `CONCURRENCY` keep-alive connections; publishes/s.
async fn publishes(addr: SocketAddr, count: usize, token: Option<&str>) -> f64 {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /publish?topic=bench HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{}",
        "x".repeat(100)
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut buf = Vec::new();
                for _ in 0..count / CONCURRENCY {
                    stream.write_all(request.as_bytes()).await.unwrap();
                    assert_eq!(read_response(&mut stream, &mut buf).await, 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn text_flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let connect_count = flag("--connects", 20_000);
    let publish_count = flag("--publishes", 100_000);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    if let Some(before) = text_flag("--server-bin") {
        println!(
            "| round | build | streams/s | server CPU µs per stream | publishes/s | server CPU µs per publish |"
        );
        println!("|---|---|---|---|---|---|");
        for round in 1..=3 {
            for (build, bin) in
                [("before", before.as_str()), ("after", env!("CARGO_BIN_EXE_crier"))]
            {
                let server = Server::start_bin(bin, &[]);
                runtime.block_on(connects(server.addr, 1000, &[]));
                let cpu = server.cpu_seconds();
                let rate = runtime.block_on(connects(server.addr, connect_count, &[]));
                let per_stream = (server.cpu_seconds() - cpu) / connect_count as f64 * 1e6;
                let cpu = server.cpu_seconds();
                let publish_rate = runtime.block_on(publishes(server.addr, publish_count, None));
                let per_publish = (server.cpu_seconds() - cpu) / publish_count as f64 * 1e6;
                println!(
                    "| {round} | {build} | {rate:.0} | {per_stream:.1} | {publish_rate:.0} | {per_publish:.2} |"
                );
            }
        }
        return;
    }
    let key_file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec.pub");
    // Every client its own token (each verified once), or all clients one token (verified
    // once, then remembered).
    let own = |algorithm| (0..connect_count).map(|i| token(algorithm, i)).collect::<Vec<_>>();
    let (hs_own, es_own) = (own(Algorithm::HS256), own(Algorithm::ES256));
    let hs_one = vec![token(Algorithm::HS256, 0)];
    println!(
        "| round | mode | streams/s | server CPU µs per stream | publishes/s | server CPU µs per publish |"
    );
    println!("|---|---|---|---|---|---|");
    let none: Vec<String> = Vec::new();
    for round in 1..=3 {
        for (mode, tokens) in [
            ("no token", &none),
            ("HS256, a token per client", &hs_own),
            ("HS256, one token", &hs_one),
            ("ES256, a token per client", &es_own),
        ] {
            let server = if tokens.is_empty() {
                Server::start(&[])
            } else {
                Server::start(&["--jwt-key", SECRET, "--jwt-public-key-file", key_file])
            };
            runtime.block_on(connects(server.addr, 1000, &none[..]));
            let cpu = server.cpu_seconds();
            let rate = runtime.block_on(connects(server.addr, connect_count, tokens));
            let per_stream = (server.cpu_seconds() - cpu) / connect_count as f64 * 1e6;
            // A publisher sends its one token with every publish.
            let (publish_rate, per_publish) = if tokens.len() > 1 {
                (f64::NAN, f64::NAN)
            } else {
                let cpu = server.cpu_seconds();
                let token = tokens.first().map(String::as_str);
                let rate = runtime.block_on(publishes(server.addr, publish_count, token));
                (rate, (server.cpu_seconds() - cpu) / publish_count as f64 * 1e6)
            };
            println!(
                "| {round} | {mode} | {rate:.0} | {per_stream:.1} | {publish_rate:.0} | {per_publish:.2} |"
            );
        }
    }
}
