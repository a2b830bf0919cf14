//! Ingest from one publishing connection: events/s and server CPU per event, one event per
//! request (pipelined on one keep-alive connection) against batches (`POST /publish` with NDJSON,
//! pipelined too), on a single node and in cluster mode through one redis-server.
//!
//! ```text
//! cargo bench --bench ingest                       # single node, then through Redis
//! cargo bench --bench ingest -- --batch 1000 --duration 5s
//! cargo bench --bench ingest -- --server-bin ../old/target/release/crier   # another build
//! ```

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use support::{Redis, process_cpu_seconds};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(about = "Ingest from one connection: single publishes against batches")]
struct Args {
    /// Events per batch request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Requests in flight on the connection (pipelining).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// How long each case publishes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Event payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Only the single node (no Redis).
    #[arg(long)]
    single_only: bool,
    /// The server binary to run (default: this build's `crier`).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_crier")));
    let mut modes = vec![None];
    if !args.single_only {
        modes.push(Some(Redis::start()));
    }
    for redis in &modes {
        let mut server_args = Vec::new();
        if let Some(redis) = redis {
            server_args.push(format!("--redis-url={}", redis.url()));
        }
        let (mut child, addr) = support::spawn_crier(&bin, &server_args);
        if redis.is_some() {
            wait_ready(addr);
        }
        let mode = if redis.is_some() { "through one redis-server" } else { "single node" };
        println!("\ncrier ingest, {mode}, one connection, {} in flight:", args.in_flight);
        let cpu = || {
            process_cpu_seconds(child.id())
                + redis.as_ref().map_or(0.0, |redis| redis.cpu_seconds())
        };
        let mut single_rate = 0.0;
        for batch in [1, args.batch] {
            let cpu_before = cpu();
            let (events, took) = run(addr, &args, batch);
            let cpu_used = cpu() - cpu_before;
            let rate = events as f64 / took.as_secs_f64();
            let what = if batch == 1 {
                "one event per request".to_owned()
            } else {
                format!("batches of {batch}")
            };
            let ratio = if batch == 1 {
                single_rate = rate;
                String::new()
            } else {
                format!(" ({:.1}× one event per request)", rate / single_rate)
            };
            println!(
                "  {what:<24} {events} events in {:.2} s: {rate:.0} events/s{ratio}, {:.2} µs of server CPU per event",
                took.as_secs_f64(),
                cpu_used * 1e6 / events as f64,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut tcp) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = tcp.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the node never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes for `args.duration` on one connection, `batch` events per request, keeping
/// `args.in_flight` requests unanswered; the events published and how long it took.
fn run(addr: SocketAddr, args: &Args, batch: usize) -> (u64, Duration) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (read, mut write) = tcp.into_split();
        let request = request(args.payload, batch);
        let duration = args.duration;
        // A request is sent once one of the window's is answered.
        let window = std::sync::Arc::new(tokio::sync::Semaphore::new(args.in_flight));
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let reader = {
            let window = window.clone();
            tokio::spawn(async move {
                let mut answers = BufReader::new(read);
                let mut answered = 0u64;
                while sent_rx.recv().await.is_some() {
                    read_answer(&mut answers, batch).await;
                    answered += 1;
                    window.add_permits(1);
                }
                answered
            })
        };
        let started = Instant::now();
        while started.elapsed() < duration {
            window.acquire().await.expect("open").forget();
            write.write_all(&request).await.expect("send");
            sent_tx.send(()).expect("the reader");
        }
        drop(sent_tx);
        let answered = reader.await.expect("reader");
        (answered * batch as u64, started.elapsed())
    })
}

/// One request of `batch` events of `payload` bytes to topic `t`.
fn request(payload: usize, batch: usize) -> Vec<u8> {
    let data = "x".repeat(payload);
    if batch == 1 {
        let head = format!(
            "POST /publish?topic=t HTTP/1.1\r\nHost: b\r\nContent-Length: {payload}\r\n\r\n"
        );
        return [head.into_bytes(), data.into_bytes()].concat();
    }
    let line = format!("{{\"topic\":\"t\",\"data\":\"{data}\"}}\n");
    let body = line.repeat(batch);
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body.into_bytes()].concat()
}

/// Reads one answer and checks that every event of it was published.
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(answers: &mut BufReader<R>, batch: usize) {
    let mut length = 0;
    let mut status = String::new();
    answers.read_line(&mut status).await.expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "publish refused: {status}");
    loop {
        let mut line = String::new();
        answers.read_line(&mut line).await.expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    answers.read_exact(&mut body).await.expect("body");
    if batch > 1 {
        let published = format!("{{\"published\":{batch},");
        assert!(body.starts_with(published.as_bytes()), "{}", String::from_utf8_lossy(&body));
    }
}
