//! Test support: a crier server on 127.0.0.1:0 (in-process or the real binary), a raw HTTP/1.1
//! client, a raw SSE client that reads the wire bytes, and condition waits with deadlines.

#![allow(dead_code)]

pub mod browser;
pub mod mercure;
pub mod nginx;
pub mod npm;
pub mod redis;
pub mod tokens;
pub mod whatwg;
pub mod ws;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser as _;
use crier::{Config, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// How long any single wait in a test may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in the test process.
pub struct TestServer {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a server with the default configuration plus `args` (command-line flags).
    pub async fn start(args: &[&str]) -> TestServer {
        // CRIER_TEST_LOG=debug shows the servers' logs with the test's output.
        if let Ok(filter) = std::env::var("CRIER_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        // Shut down at once unless a test asks for a drain delay (a later flag wins).
        let argv =
            ["crier", "--listen", "127.0.0.1:0", "--drain-delay", "0"].iter().chain(args).copied();
        let config = Config::try_parse_from(argv).expect("test flags parse");
        let handle = ServerHandle::start(config).await.expect("server starts");
        let addr = handle.addr();
        TestServer { handle, addr }
    }

    /// Publishes text data; returns the event id.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        publish_ok(self.addr, topic, None, data.as_bytes(), None).await
    }

    /// Publishes an event named `name`; returns its id.
    pub async fn publish_named(&self, topic: &str, name: &str, data: &str) -> String {
        publish_ok(self.addr, topic, Some(name), data.as_bytes(), None).await
    }

    /// Waits until the server counts `n` subscriptions.
    pub async fn wait_subscriptions(&self, n: usize) {
        wait_until(&format!("{n} subscriptions"), || async {
            metric(&self.metrics().await, "crier_subscriptions") == Some(n as f64)
        })
        .await;
    }

    /// Waits until the sample `series` (exact name and labels) reads `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        wait_until(&format!("{series} = {value}"), || async {
            metric(&self.metrics().await, series) == Some(value)
        })
        .await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = request(self.addr, "GET", "/metrics", &[], b"").await;
        assert_eq!(response.status, 200);
        response.text()
    }
}

/// A response read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    request_from(None, addr, method, target, headers, body).await
}

/// [`request`] from the source address `source` (such as 127.0.0.2), if given.
pub async fn request_from(
    source: Option<&str>,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = match source {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(source) => connect_from(source, addr).await,
    };
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write request");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    parse_response(&raw)
}

/// A connection to `addr` from the source address `source` (such as 127.0.0.2).
pub async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("source address")).expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Parses a complete `Content-Length` (or empty) response.
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    HttpResponse { status, head, body: raw[split + 4..].to_vec() }
}

/// Publishes and asserts 200; returns the id.
pub async fn publish_ok(
    addr: SocketAddr,
    topic: &str,
    event: Option<&str>,
    data: &[u8],
    content_type: Option<&str>,
) -> String {
    let response = publish(addr, topic, event, data, content_type).await;
    assert_eq!(response.status, 200, "publish failed: {}", response.text());
    let json = response.json();
    assert_eq!(json["topic"], topic);
    json["id"].as_str().expect("id is a string").to_owned()
}

/// Publishes; returns the response.
pub async fn publish(
    addr: SocketAddr,
    topic: &str,
    event: Option<&str>,
    data: &[u8],
    content_type: Option<&str>,
) -> HttpResponse {
    let mut target = format!("/publish?topic={}", urlencode(topic));
    if let Some(event) = event {
        target.push_str(&format!("&event={}", urlencode(event)));
    }
    let headers: Vec<(&str, &str)> =
        content_type.map(|ct| ("Content-Type", ct)).into_iter().collect();
    request(addr, "POST", &target, &headers, data).await
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A raw SSE client: sends the request itself and reads the de-chunked body bytes.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    /// Response status line and headers.
    pub head: String,
    pub status: u16,
    /// Every body byte received so far.
    pub body: Vec<u8>,
    /// Where each HTTP chunk received ends in `body`, and when it arrived.
    pub chunk_ends: Vec<(usize, tokio::time::Instant)>,
    /// Body bytes not yet handed to the parser.
    parsed_upto: usize,
    pub parser: whatwg::Parser,
    pending: std::collections::VecDeque<whatwg::Event>,
    /// The terminating chunk or EOF was seen.
    pub ended: bool,
}

impl SseClient {
    /// Opens `GET target` with extra request headers and reads the response head.
    pub async fn connect(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::on_stream(stream, addr, target, headers).await
    }

    /// Opens the stream on a connection that first served another request, so hyper (not the
    /// fast path for dedicated stream connections) serves it.
    pub async fn connect_after_request(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            timeout(WAIT, reader.read_line(&mut line)).await.expect("head in time").expect("read");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.expect("body");
        assert!(reader.buffer().is_empty());
        Self::on_stream(reader.into_inner(), addr, target, headers).await
    }

    /// Like `connect` on an already connected (possibly tuned) socket.
    pub async fn on_stream(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut req =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write request");
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(WAIT, reader.read_line(&mut line))
                .await
                .expect("head in time")
                .expect("read head");
            assert!(n > 0, "connection closed before the response head ended: {head:?}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        SseClient {
            reader,
            head,
            status,
            body: Vec::new(),
            chunk_ends: Vec::new(),
            parsed_upto: 0,
            parser: whatwg::Parser::new(),
            pending: Default::default(),
            ended: false,
        }
    }

    /// Value of response header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        HttpResponse { status: self.status, head: self.head.clone(), body: vec![] }.header(name)
    }

    /// Reads one chunk of the chunked body; false at the end of the stream.
    async fn read_chunk(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
            self.ended = true;
            return false;
        }
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).await.is_err() {
            self.ended = true;
            return false;
        }
        assert_eq!(&chunk[size..], b"\r\n", "chunk not terminated by CRLF");
        if size == 0 {
            self.ended = true;
            return false;
        }
        self.body.extend_from_slice(&chunk[..size]);
        self.chunk_ends.push((self.body.len(), tokio::time::Instant::now()));
        true
    }

    /// Reads until the body holds at least `len` bytes.
    pub async fn read_body_len(&mut self, len: usize) -> &[u8] {
        let deadline = Instant::now() + WAIT;
        while self.body.len() < len {
            let more = tokio::time::timeout_at(deadline, self.read_chunk())
                .await
                .expect("body bytes in time");
            assert!(
                more,
                "stream ended after {} of {len} bytes: {:?}",
                self.body.len(),
                String::from_utf8_lossy(&self.body)
            );
        }
        &self.body
    }

    /// Reads until `done(body)` holds.
    pub async fn read_body_until(&mut self, done: impl Fn(&[u8]) -> bool) -> &[u8] {
        let deadline = Instant::now() + WAIT;
        while !done(&self.body) {
            let more =
                tokio::time::timeout_at(deadline, self.read_chunk()).await.unwrap_or_else(|_| {
                    panic!(
                        "condition not met in time; body so far: {:?}",
                        String::from_utf8_lossy(&self.body)
                    )
                });
            assert!(
                more,
                "stream ended before the condition held: {:?}",
                String::from_utf8_lossy(&self.body)
            );
        }
        &self.body
    }

    /// The next dispatched event.
    pub async fn next_event(&mut self) -> whatwg::Event {
        self.next_event_within(WAIT).await
    }

    /// The next dispatched event, waiting at most `wait`.
    pub async fn next_event_within(&mut self, wait: Duration) -> whatwg::Event {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let events = self.parser.feed(&self.body[self.parsed_upto..]);
            self.parsed_upto = self.body.len();
            self.pending.extend(events);
            if !self.pending.is_empty() {
                continue;
            }
            let more =
                tokio::time::timeout_at(deadline, self.read_chunk()).await.unwrap_or_else(|_| {
                    panic!(
                        "no event in time; body so far: {:?}",
                        String::from_utf8_lossy(&self.body)
                    )
                });
            assert!(more, "stream ended while waiting for an event");
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<whatwg::Event> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// Reads to the end of the stream; returns whether it ended with the terminating chunk
    /// (a clean end) rather than a dropped connection.
    pub async fn read_to_end(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut size_line = String::new();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut size_line))
                .await
                .expect("stream end in time")
                .unwrap_or(0);
            if n == 0 {
                self.ended = true;
                return false;
            }
            let size = usize::from_str_radix(size_line.trim_end(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            if self.reader.read_exact(&mut chunk).await.is_err() {
                self.ended = true;
                return false;
            }
            if size == 0 {
                self.ended = true;
                return true;
            }
            self.body.extend_from_slice(&chunk[..size]);
        }
    }
}

/// Waits until `check` returns true, polling until `WAIT` passes.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the sample whose line starts with `series ` (exact name and labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The real `crier` binary, started with `args` on a free port.
pub struct CrierProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Every log line written after the one announcing the address.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CrierProcess {
    pub async fn spawn(args: &[&str]) -> CrierProcess {
        Self::spawn_command(tokio::process::Command::new(env!("CARGO_BIN_EXE_crier")), args).await
    }

    /// The binary logging at `filter` (`CRIER_LOG`).
    pub async fn spawn_logging(filter: &str, args: &[&str]) -> CrierProcess {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crier"));
        command.env("CRIER_LOG", filter);
        Self::spawn_command(command, args).await
    }

    /// The binary with at most `files` open file descriptors (`ulimit -n`).
    pub async fn spawn_with_fd_limit(files: u32, args: &[&str]) -> CrierProcess {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_crier"));
        Self::spawn_command(command, args).await
    }

    pub async fn spawn_command(
        mut command: tokio::process::Command,
        args: &[&str],
    ) -> CrierProcess {
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--drain-delay", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn crier");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read log") {
                let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(listen) = json["fields"]["listen"].as_str() {
                    return listen.parse().expect("listen address");
                }
            }
            panic!("crier exited before listening");
        })
        .await
        .expect("crier listens in time");
        // Keep draining the log so the child never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("log").push(line);
            }
        });
        CrierProcess { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Sends `signal` ("TERM", "INT" or "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let signal = match signal {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "HUP" => libc::SIGHUP,
            "KILL" => libc::SIGKILL,
            other => panic!("unexpected signal {other}"),
        };
        let pid = i32::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill failed: {}", std::io::Error::last_os_error());
    }
}

/// A WebSocket client at the frame level: it writes exactly the frames a test asks for.
pub struct RawWs {
    pub stream: TcpStream,
    /// The 101 response head.
    pub head: String,
    buf: Vec<u8>,
}

/// A frame read off a raw WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code, for a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    /// Sends a valid handshake for `target` and reads the `101`.
    pub async fn connect(addr: SocketAddr, target: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write handshake");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 1024];
            let n =
                timeout(WAIT, stream.read(&mut chunk)).await.expect("101 in time").expect("read");
            assert!(n > 0, "closed during the handshake: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let rest = buf[end + 4..].to_vec();
        RawWs { stream, head, buf: rest }
    }

    /// Writes one client frame; `masked` false writes an (illegal) unmasked frame.
    pub async fn send(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first_byte];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => frame.push(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).await.expect("write frame");
    }

    /// Sends a final masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(0x81, text.as_bytes(), true).await;
    }

    /// The next frame the server sends, or `None` once the connection is closed.
    pub async fn read(&mut self) -> Option<RawFrame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 << 10];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until the server closes the connection; the last is normally its close frame.
    pub async fn read_until_closed(&mut self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.read().await {
            frames.push(frame);
        }
        frames
    }
}

/// Parses an (unmasked) server frame at the start of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    let frame = RawFrame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[header..header + len].to_vec(),
    };
    Some((frame, header + len))
}

/// A connection with a 4 KiB receive buffer that sends `request` and then never reads: a
/// subscriber whose socket stops draining.
pub async fn stalled_connection(addr: SocketAddr, request: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write request");
    stream
}

/// Publishes numbered 1000-byte events (`"<n>:xxx…"`) to `topic` until a stalled subscriber
/// of `transport` has been evicted and at least `at_least` went out, then `"end"`; returns how
/// many numbered events it published. How much a stalled connection absorbs before the server
/// sees it lag depends on the kernel's socket buffer autotuning (up to `tcp_wmem`'s 4 MiB on
/// the sending side), so a fixed count is not enough to be sure.
pub async fn publish_until_evicted(
    server: &TestServer,
    topic: &str,
    transport: &str,
    at_least: usize,
) -> usize {
    const MOST: usize = 64_000;
    let evicted =
        format!(r#"crier_evictions_total{{transport="{transport}",reason="slow_consumer"}}"#);
    let payload = "x".repeat(1000);
    let mut published = 0;
    loop {
        for _ in 0..100 {
            publish_ok(server.addr, topic, None, format!("{published}:{payload}").as_bytes(), None)
                .await;
            published += 1;
        }
        if published >= at_least && metric(&server.metrics().await, &evicted) == Some(1.0) {
            break;
        }
        assert!(published < MOST, "the stalled subscriber was not evicted after {MOST} events");
    }
    publish_ok(server.addr, topic, None, b"end", None).await;
    published
}

/// Reads and discards until the server closes `stream`; fails if it stays open past `WAIT`.
pub async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut sink = vec![0; 64 << 10];
    let closed = timeout(WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not close the connection");
}
