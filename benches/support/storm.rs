//! A reconnect storm from one address, shared by the test (`tests/storm.rs`, a few hundred
//! clients) and the bench (`cargo bench --bench storm`, 3,000): clients that behave as a
//! browser's `EventSource` follow topics on node A, all from one forwarded address (a NAT, a
//! proxy), while events are published through node B; node A is killed, and every client
//! reconnects to node B after its `retry:` with its `Last-Event-ID`.
//!
//! Each client checks what it receives: the data of a topic's events count up by one, so a
//! repeated number is a duplicate and a skipped one a gap, silent unless a `crier.gap` came
//! first. A soft refusal (a `200` stream of one `crier.refused` event) is retried after the
//! `retry:` it names, as a browser does; a hard one (any other status) ends a browser-like
//! client for good, as it ends an `EventSource`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The storm's shape.
#[derive(Clone, Debug)]
pub struct Storm {
    /// Clients, all from one address.
    pub clients: usize,
    /// Topics they follow, one each, in turn.
    pub topics: usize,
    /// Events published per second, over all topics.
    pub rate: u32,
    /// The address every client forwards (through the trusted loopback proxy).
    pub address: String,
    /// Whether a hard refusal ends a client for good (as it ends an `EventSource`); if not,
    /// the client retries after its `Retry-After`, with jitter.
    pub browser_like: bool,
    /// Longest the storm is waited for after the kill.
    pub deadline: Duration,
}

/// What the storm did.
#[derive(Debug, Default, Clone)]
pub struct StormReport {
    pub clients: usize,
    /// Clients receiving on node B again.
    pub resumed: usize,
    /// Seconds from the kill to each resumed client's first event on node B, sorted.
    pub resume_secs: Vec<f64>,
    /// Clients that gave up after a hard refusal.
    pub gave_up: usize,
    pub duplicates: u64,
    /// Events skipped with no `crier.gap` before them.
    pub silent_gaps: u64,
    /// `crier.gap` notices received.
    pub gap_notices: u64,
    /// Events the clients still following never received.
    pub lost: u64,
    pub soft_refusals: u64,
    pub hard_refusals: u64,
}

impl StormReport {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.resume_secs.len();
        (n > 0).then(|| self.resume_secs[((n as f64 * p).ceil() as usize).clamp(1, n) - 1])
    }

    pub fn summary(&self) -> String {
        let secs = |p| self.percentile(p).map_or("-".to_owned(), |s| format!("{s:.1} s"));
        format!(
            "{} clients: {} resumed (p50 {}, p90 {}, max {}), {} gave up; {} duplicates, {} silent \
             gaps, {} crier.gap, {} lost; refusals: {} soft, {} hard",
            self.clients,
            self.resumed,
            secs(0.5),
            secs(0.9),
            secs(1.0),
            self.gave_up,
            self.duplicates,
            self.silent_gaps,
            self.gap_notices,
            self.lost,
            self.soft_refusals,
            self.hard_refusals
        )
    }
}

/// One client's record.
#[derive(Debug, Default)]
struct Record {
    /// The last number received of its topic.
    last: u64,
    resumed_after: Option<Duration>,
    gave_up: bool,
    duplicates: u64,
    silent_gaps: u64,
    gap_notices: u64,
    soft_refusals: u64,
    hard_refusals: u64,
    received_on_a: bool,
}

/// Shared by the clients.
struct World {
    storm: Storm,
    node_a: SocketAddr,
    node_b: SocketAddr,
    /// When node A was killed.
    killed: std::sync::Mutex<Option<Instant>>,
    stop: AtomicBool,
}

/// Runs the storm: clients on `node_a`, publishes through `node_b`; `kill_a` is called once
/// every client receives on node A. Returns when every client resumed (and caught up) or the
/// deadline passed.
pub async fn run(
    storm: Storm,
    node_a: SocketAddr,
    node_b: SocketAddr,
    kill_a: impl FnOnce(),
) -> StormReport {
    let world = Arc::new(World {
        storm: storm.clone(),
        node_a,
        node_b,
        killed: std::sync::Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let records: Vec<Arc<Mutex<Record>>> =
        (0..storm.clients).map(|_| Arc::new(Mutex::new(Record::default()))).collect();
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..storm.topics).map(|_| AtomicU64::new(0)).collect());
    let publishing = tokio::spawn(publish(world.clone(), published.clone()));
    let mut tasks = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let (world, record) = (world.clone(), record.clone());
        let topic = index % storm.topics;
        tasks.push(tokio::spawn(follow(world, topic, record)));
    }
    // Every client follows on node A (or gave up): then node A dies.
    let all_on_a = async {
        loop {
            let mut on_a = 0;
            for record in &records {
                let record = record.lock().await;
                on_a += usize::from(record.received_on_a || record.gave_up);
            }
            if on_a == records.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all_on_a)
        .await
        .expect("every client follows on node A");
    kill_a();
    let killed = Instant::now();
    *world.killed.lock().unwrap() = Some(killed);
    let deadline = killed + storm.deadline;
    // Every client resumed or gave up, or the deadline.
    loop {
        let mut settled = 0;
        for record in &records {
            let record = record.lock().await;
            settled += usize::from(record.resumed_after.is_some() || record.gave_up);
        }
        if settled == records.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.stop.store(true, Ordering::SeqCst);
    let _ = publishing.await;
    // The clients still following catch up with the last event of their topic.
    let final_numbers: Vec<u64> = published.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    let catch_up = Instant::now() + Duration::from_secs(10);
    loop {
        let mut behind = 0;
        for (index, record) in records.iter().enumerate() {
            let record = record.lock().await;
            let following = record.resumed_after.is_some() && !record.gave_up;
            behind += usize::from(following && record.last < final_numbers[index % storm.topics]);
        }
        if behind == 0 || Instant::now() >= catch_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
    let mut report = StormReport { clients: storm.clients, ..StormReport::default() };
    for (index, record) in records.iter().enumerate() {
        let record = record.lock().await;
        if let Some(after) = record.resumed_after {
            report.resumed += 1;
            report.resume_secs.push(after.as_secs_f64());
            report.lost += final_numbers[index % storm.topics].saturating_sub(record.last);
        }
        report.gave_up += usize::from(record.gave_up);
        report.duplicates += record.duplicates;
        report.silent_gaps += record.silent_gaps;
        report.gap_notices += record.gap_notices;
        report.soft_refusals += record.soft_refusals;
        report.hard_refusals += record.hard_refusals;
    }
    report.resume_secs.sort_by(f64::total_cmp);
    report
}

fn topic_name(index: usize) -> String {
    format!("storm/{index}")
}

/// Publishes the numbers 1, 2, … to every topic in turn, at the storm's rate, through node B.
async fn publish(world: Arc<World>, published: Arc<Vec<AtomicU64>>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(world.storm.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_topic = 0;
    while !world.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let topic = next_topic;
        next_topic = (next_topic + 1) % world.storm.topics;
        let number = published[topic].load(Ordering::SeqCst) + 1;
        let body = number.to_string();
        let request = format!(
            "POST /publish?topic={} HTTP/1.1\r\nHost: crier\r\nContent-Length: {}\r\n\r\n{body}",
            topic_name(topic),
            body.len()
        );
        // A publish that fails is published again with the same number (never skipped).
        loop {
            if conn.is_none() {
                conn = TcpStream::connect(world.node_b).await.ok().map(BufReader::new);
            }
            let Some(stream) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ok = async {
                stream.get_mut().write_all(request.as_bytes()).await.ok()?;
                let (status, _, body) = read_head_and_body(stream).await?;
                Some(status == 200 && !body.is_empty())
            };
            match ok.await {
                Some(true) => break,
                Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => conn = None,
            }
            if world.stop.load(Ordering::SeqCst) {
                return;
            }
        }
        published[topic].store(number, Ordering::SeqCst);
    }
}

/// Reads a response with a `Content-Length` body: status, head, body.
pub async fn read_head_and_body(
    stream: &mut BufReader<TcpStream>,
) -> Option<(u16, String, Vec<u8>)> {
    let head = read_head(stream).await?;
    let status = status_of(&head)?;
    let length = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((status, head, body))
}

pub async fn read_head(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

pub fn status_of(head: &str) -> Option<u16> {
    head.split(' ').nth(1)?.parse().ok()
}

pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// An event as an `EventSource` sees it.
#[derive(Debug, Default)]
pub struct Event {
    pub kind: String,
    pub data: String,
    pub id: Option<String>,
}

/// The events in `text` (crier's streams end lines with `\n`), and the last `retry:`.
pub fn parse_events(pending: &mut String, text: &str, retry: &mut Option<u64>) -> Vec<Event> {
    pending.push_str(text);
    let mut events = Vec::new();
    while let Some(end) = pending.find("\n\n") {
        let block: String = pending.drain(..end + 2).collect();
        let mut event = Event::default();
        let mut any = false;
        for line in block.lines() {
            let (field, value) = line
                .split_once(':')
                .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "event" => event.kind = value.to_owned(),
                "data" => {
                    event.data = value.to_owned();
                    any = true;
                }
                "id" => event.id = Some(value.to_owned()),
                "retry" => *retry = value.parse().ok().or(*retry),
                _ => {}
            }
        }
        if any {
            events.push(event);
        }
    }
    events
}

/// One client: follows its topic on node A, then on node B, as an `EventSource` would.
async fn follow(world: Arc<World>, topic: usize, record: Arc<Mutex<Record>>) {
    let mut node = world.node_a;
    let mut last_id: Option<String> = None;
    let mut retry_ms: u64 = 2000;
    let mut gap_announced = false;
    loop {
        if world.stop.load(Ordering::SeqCst) {
            return;
        }
        let opened = open(&world, node, topic, last_id.as_deref()).await;
        match opened {
            Opened::Failed => {}
            Opened::Hard(wait) => {
                let mut record = record.lock().await;
                record.hard_refusals += 1;
                if world.storm.browser_like {
                    record.gave_up = true;
                    return;
                }
                drop(record);
                let jitter = fastrand::u64(0..1000);
                tokio::time::sleep(Duration::from_millis(wait * 1000 + jitter)).await;
                continue;
            }
            Opened::Soft(retry) => {
                record.lock().await.soft_refusals += 1;
                retry_ms = retry.unwrap_or(retry_ms);
            }
            Opened::Stream(mut stream) => {
                let mut pending = String::new();
                let mut retry = None;
                while let Some(chunk) = read_chunk(&mut stream).await {
                    let text = String::from_utf8_lossy(&chunk).into_owned();
                    for event in parse_events(&mut pending, &text, &mut retry) {
                        if let Some(id) = &event.id {
                            last_id = Some(id.clone());
                        }
                        let mut record = record.lock().await;
                        if event.kind == "crier.gap" {
                            record.gap_notices += 1;
                            gap_announced = true;
                            continue;
                        }
                        let Ok(number) = event.data.parse::<u64>() else { continue };
                        if number <= record.last {
                            record.duplicates += 1;
                        } else {
                            if number > record.last + 1 && record.last > 0 && !gap_announced {
                                record.silent_gaps += 1;
                            }
                            record.last = number;
                        }
                        gap_announced = false;
                        if node == world.node_a {
                            record.received_on_a = true;
                        } else if record.resumed_after.is_none() {
                            let killed = *world.killed.lock().unwrap();
                            record.resumed_after = killed.map(|at| at.elapsed());
                        }
                    }
                }
                retry_ms = retry.unwrap_or(retry_ms);
            }
        }
        // Node A is gone once it was killed: the balancer sends the client to node B.
        if world.killed.lock().unwrap().is_some() {
            node = world.node_b;
        }
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    }
}

/// What opening a stream got.
enum Opened {
    /// No connection, or it broke before an answer.
    Failed,
    /// A status other than 200; its `Retry-After` (seconds).
    Hard(u64),
    /// A soft refusal; its `retry:`.
    Soft(Option<u64>),
    /// A stream, its head read.
    Stream(BufReader<TcpStream>),
}

async fn open(world: &World, node: SocketAddr, topic: usize, last_id: Option<&str>) -> Opened {
    let Ok(stream) = TcpStream::connect(node).await else { return Opened::Failed };
    let mut stream = BufReader::new(stream);
    let mut request = format!(
        "GET /sse?topic={} HTTP/1.1\r\nHost: crier\r\nAccept: text/event-stream\r\n\
         X-Forwarded-For: {}\r\n",
        topic_name(topic),
        world.storm.address
    );
    if let Some(id) = last_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    if stream.get_mut().write_all(request.as_bytes()).await.is_err() {
        return Opened::Failed;
    }
    let Some(head) = read_head(&mut stream).await else { return Opened::Failed };
    let Some(status) = status_of(&head) else { return Opened::Failed };
    if status != 200 {
        return Opened::Hard(
            header(&head, "retry-after").and_then(|v| v.parse().ok()).unwrap_or(1),
        );
    }
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Opened::Stream(stream);
    }
    let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if stream.read_exact(&mut body).await.is_err() {
        return Opened::Failed;
    }
    let mut retry = None;
    let events = parse_events(&mut String::new(), &String::from_utf8_lossy(&body), &mut retry);
    if events.iter().any(|e| e.kind == "crier.refused") {
        Opened::Soft(retry)
    } else {
        Opened::Failed
    }
}

/// The next chunk of a chunked body, or `None` at its end.
pub async fn read_chunk(stream: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    if stream.read_line(&mut size).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size.trim_end(), 16).ok()?;
    let mut chunk = vec![0; size + 2];
    stream.read_exact(&mut chunk).await.ok()?;
    if size == 0 {
        return None;
    }
    chunk.truncate(size);
    Some(chunk)
}
