//! Every metric crier exports: name, unit, labels and help text, declared in one place, and the
//! guard that counts an open stream for as long as it lives.
//!
//! Each server owns its own Prometheus recorder rather than installing a process-global one, so
//! several servers in one process (the test suite) keep separate counts, and the hot paths
//! update pre-registered handles instead of looking metrics up by name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::auth::TokenError;
use crate::event::Wire;

mod describe;
mod rejection;

pub(crate) use rejection::Rejection;

/// Transports a subscriber can use; the `transport` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
}

impl Transport {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }

    /// The transport that carries `wire`.
    pub(crate) fn of(wire: Wire) -> Self {
        match wire {
            Wire::Sse => Transport::Sse,
            Wire::WsJson | Wire::WsRaw => Transport::Ws,
        }
    }

    const ALL: [Transport; 2] = [Transport::Sse, Transport::Ws];
}

/// Why a subscriber was disconnected by the server; the `reason` label of evictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvictReason {
    /// It fell further behind than `--max-lag-bytes` or the topic log allow: it read
    /// slower than events arrived.
    SlowConsumer,
}

impl EvictReason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EvictReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// Handles of one transport's metrics.
#[derive(Clone)]
pub(crate) struct TransportMetrics {
    /// `crier_connections{transport}`: open streams.
    connections: Gauge,
    /// `crier_connections_accepted_total{transport}`.
    accepted: Counter,
    /// `crier_deliveries_total{transport}`: events written to subscribers.
    pub(crate) deliveries: Counter,
    /// `crier_sent_bytes_total{transport}`: stream bytes handed to the socket.
    pub(crate) sent_bytes: Counter,
    /// `crier_stream_writes_total{transport}`: writes of events to streams.
    writes: Counter,
    /// `crier_evictions_total{transport,reason="slow_consumer"}`.
    evicted_slow: Counter,
}

/// Counts one open stream of a transport (`crier_connections`, and
/// `crier_connections_accepted_total` when made) for as long as it lives, like tower-http's
/// in-flight guard: the stream's writer holds it, so however the stream ends, the gauge
/// follows.
pub(crate) struct ConnectionGuard {
    connections: Gauge,
}

impl ConnectionGuard {
    fn new(transport: &TransportMetrics) -> Self {
        transport.accepted.increment(1);
        transport.connections.increment(1);
        ConnectionGuard { connections: transport.connections.clone() }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.decrement(1);
    }
}

/// All of a server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The process's `process_*` metrics (CPU, memory, file descriptors, threads), read from
    /// the kernel at each scrape.
    process: metrics_process::Collector,
    /// `crier_tcp_connections`: TCP connections open, whatever they carry.
    tcp_connections: Gauge,
    sse: TransportMetrics,
    ws: TransportMetrics,
    /// `crier_subscriptions`: (subscriber, topic) pairs.
    pub(crate) subscriptions: Gauge,
    /// `crier_topics`: topics known to this node.
    pub(crate) topics: Gauge,
    /// `crier_topics_reaped_total`: topics dropped after their idle time.
    pub(crate) topics_reaped: Counter,
    /// `crier_events_published_total`.
    pub(crate) events_published: Counter,
    /// `crier_publish_duration_seconds`: from accepting a publish to the end of its fan-out.
    pub(crate) publish_duration: Histogram,
    /// `crier_auth_failures_total{reason}`, in the order of [`TokenError::ALL`].
    auth_failures: [Counter; TokenError::ALL.len()],
    /// `crier_credential_reloads_total{outcome="ok"|"error"}`.
    credential_reloads: [Counter; 2],
    /// `crier_rejections_total{reason}`, in the order of [`Rejection::ALL`].
    rejections: [Counter; Rejection::ALL.len()],
    /// `crier_accept_errors_total`: failed accepts (out of file descriptors, mostly).
    pub(crate) accept_errors: Counter,
    /// `crier_http_requests_total` handles by route and status, as requests find them.
    http_requests: parking_lot::RwLock<Vec<(&'static str, u16, Counter)>>,
    /// Writes of events to streams, every transport: what the write delay adapts to.
    stream_writes: AtomicU64,
    /// `crier_write_delay_seconds`: how long a busy stream gathers events now.
    pub(crate) write_delay: Gauge,
}

/// Most (route, status) counter handles kept at hand.
const MAX_CACHED_REQUEST_COUNTERS: usize = 64;

const PUBLISH_DURATION: &str = "crier_publish_duration_seconds";
const RELAY_PUBLISH_DURATION: &str = "crier_relay_publish_duration_seconds";
const RELAY_ERRORS: &str = "crier_relay_errors_total";
const HTTP_REQUESTS: &str = "crier_http_requests_total";
const SHED_REQUESTS: &str = "crier_shed_requests_total";
const WS_CLOSES: &str = "crier_ws_closes_total";
const SOFT_REFUSALS: &str = "crier_soft_refusals_total";
const AUTH_FAILURES: &str = "crier_auth_failures_total";
const BUILD_INFO: &str = "crier_build_info";
const CREDENTIAL_RELOADS: &str = "crier_credential_reloads_total";
const REJECTIONS: &str = "crier_rejections_total";

/// Buckets of `crier_publish_duration_seconds`: 5 µs to 1 s.
const PUBLISH_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Metrics {
    /// Builds a recorder with every metric described and registered.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(PUBLISH_DURATION.into()), PUBLISH_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(RELAY_PUBLISH_DURATION.into()),
                    PUBLISH_BUCKETS,
                )
            })
            .map(PrometheusBuilder::build_recorder)
            .expect("the bucket lists are non-empty constants, all the builder checks");
        let handle = recorder.handle();
        describe::describe(&recorder);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());

        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let gauge = |name: &'static str, labels: Vec<Label>| {
            recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
        };
        let transport = |t: Transport| {
            let label = || vec![Label::new("transport", t.as_str())];
            TransportMetrics {
                connections: gauge("crier_connections", label()),
                accepted: counter("crier_connections_accepted_total", label()),
                deliveries: counter("crier_deliveries_total", label()),
                sent_bytes: counter("crier_sent_bytes_total", label()),
                writes: counter("crier_stream_writes_total", label()),
                evicted_slow: counter(
                    "crier_evictions_total",
                    vec![
                        Label::new("transport", t.as_str()),
                        Label::new("reason", EvictReason::SlowConsumer.as_str()),
                    ],
                ),
            }
        };
        let [sse, ws] = Transport::ALL.map(transport);
        let metrics = Metrics {
            sse,
            ws,
            subscriptions: gauge("crier_subscriptions", vec![]),
            topics: gauge("crier_topics", vec![]),
            topics_reaped: counter("crier_topics_reaped_total", vec![]),
            events_published: counter("crier_events_published_total", vec![]),
            publish_duration: recorder
                .register_histogram(&Key::from_name(PUBLISH_DURATION), &METADATA),
            auth_failures: TokenError::ALL
                .map(|reason| counter(AUTH_FAILURES, vec![Label::new("reason", reason.as_str())])),
            credential_reloads: ["ok", "error"]
                .map(|outcome| counter(CREDENTIAL_RELOADS, vec![Label::new("outcome", outcome)])),
            rejections: Rejection::ALL
                .map(|reason| counter(REJECTIONS, vec![Label::new("reason", reason.as_str())])),
            accept_errors: counter("crier_accept_errors_total", vec![]),
            tcp_connections: gauge("crier_tcp_connections", vec![]),
            stream_writes: AtomicU64::new(0),
            http_requests: Default::default(),
            write_delay: gauge("crier_write_delay_seconds", vec![]),
            process,
            recorder,
            handle,
        };
        let build = vec![Label::new("version", env!("CARGO_PKG_VERSION"))];
        metrics.recorder.register_gauge(&Key::from_parts(BUILD_INFO, build), &METADATA).set(1.0);
        metrics.handle.run_upkeep();
        metrics
    }

    /// The metrics of one transport.
    pub(crate) fn transport(&self, transport: Transport) -> &TransportMetrics {
        match transport {
            Transport::Sse => &self.sse,
            Transport::Ws => &self.ws,
        }
    }

    /// Counts one write of events to a stream of `transport`.
    pub(crate) fn stream_write(&self, transport: Transport) {
        self.transport(transport).writes.increment(1);
        self.stream_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes of events to streams so far, every transport.
    pub(crate) fn stream_writes(&self) -> u64 {
        self.stream_writes.load(Ordering::Relaxed)
    }

    /// Counts a newly accepted stream of `transport` as open until the guard is dropped.
    pub(crate) fn open_connection(&self, transport: Transport) -> ConnectionGuard {
        ConnectionGuard::new(self.transport(transport))
    }

    /// Counts one eviction.
    pub(crate) fn evicted(&self, transport: Transport, reason: EvictReason) {
        match reason {
            EvictReason::SlowConsumer => self.transport(transport).evicted_slow.increment(1),
        }
    }

    /// Counts one HTTP request by route and status (`crier_http_requests_total`).
    pub(crate) fn http_request(&self, route: &'static str, status: u16) {
        // The handles of the pairs seen so far, found without building a key: a request's
        // route is one of a few static names, its status one of a few codes.
        let seen = |(name, code, _): &&(&'static str, u16, Counter)| {
            std::ptr::eq(*name, route) && *code == status
        };
        if let Some((_, _, counter)) = self.http_requests.read().iter().find(seen) {
            return counter.increment(1);
        }
        let labels = vec![Label::new("route", route), Label::new("status", status_label(status))];
        let counter =
            self.recorder.register_counter(&Key::from_parts(HTTP_REQUESTS, labels), &METADATA);
        counter.increment(1);
        let mut known = self.http_requests.write();
        if known.len() < MAX_CACHED_REQUEST_COUNTERS && !known.iter().any(|c| seen(&c)) {
            known.push((route, status, counter));
        }
    }

    /// The counter of requests to `route` refused by load shedding
    /// (`crier_shed_requests_total{route}`).
    pub(crate) fn shed_requests(&self, route: &'static str) -> Counter {
        let labels = vec![Label::new("route", route)];
        self.recorder.register_counter(&Key::from_parts(SHED_REQUESTS, labels), &METADATA)
    }

    /// Counts one refused token (`crier_auth_failures_total{reason}`).
    pub(crate) fn auth_failed(&self, reason: TokenError) {
        self.auth_failures[reason as usize].increment(1);
    }

    /// Counts one request or connection refused by a limit.
    pub(crate) fn rejected(&self, reason: Rejection) {
        self.rejections[reason as usize].increment(1);
    }

    /// Counts one reload of the token key files.
    pub(crate) fn credentials_reloaded(&self, ok: bool) {
        self.credential_reloads[usize::from(!ok)].increment(1);
    }

    /// Counts one refusal a browser retries: `crier_soft_refusals_total{transport}`.
    pub(crate) fn soft_refused(&self, transport: &'static str) {
        let key = Key::from_parts(SOFT_REFUSALS, vec![Label::new("transport", transport)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// Counts one closed WebSocket by the code of the close frame crier sent (1006 when the
    /// connection dropped without one): `crier_ws_closes_total{code}`.
    pub(crate) fn ws_closed(&self, code: u16) {
        let labels = vec![Label::new("code", code.to_string())];
        self.recorder.register_counter(&Key::from_parts(WS_CLOSES, labels), &METADATA).increment(1);
    }

    /// Registers the relay's metrics (cluster mode only, so a single node does not export
    /// them).
    pub(crate) fn relay(&self) -> RelayMetrics {
        let counter = |name: &'static str, labels: Vec<Label>| {
            self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let errors = RelayErrorKind::ALL
            .map(|kind| counter(RELAY_ERRORS, vec![Label::new("kind", kind.as_str())]));
        let interest_changes = InterestChange::ALL.map(|op| {
            counter("crier_relay_interest_changes_total", vec![Label::new("op", op.as_str())])
        });
        let gauge =
            |name: &'static str| self.recorder.register_gauge(&Key::from_name(name), &METADATA);
        RelayMetrics {
            connected: self
                .recorder
                .register_gauge(&Key::from_name("crier_relay_connected"), &METADATA),
            received: counter("crier_relay_received_total", vec![]),
            backfilled: counter("crier_relay_backfilled_total", vec![]),
            gaps: counter("crier_relay_gaps_total", vec![]),
            stale_topics: self
                .recorder
                .register_gauge(&Key::from_name("crier_relay_stale_topics"), &METADATA),
            publish_duration: self
                .recorder
                .register_histogram(&Key::from_name(RELAY_PUBLISH_DURATION), &METADATA),
            errors,
            topics_heard: gauge("crier_relay_topics_heard"),
            pubsub_connections: gauge("crier_relay_pubsub_connections"),
            interest_changes,
        }
    }

    /// The figures the built-in page shows, as JSON: streams open, deliveries and evictions so
    /// far (`GET /stats`, which a proxy may let through where it keeps `/metrics` in).
    pub(crate) fn page_stats(&self) -> String {
        let text = self.handle.render();
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|line| {
                    line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{']))
                })
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        format!(
            r#"{{"streams_open":{},"deliveries":{},"evictions":{}}}"#,
            sum("crier_connections"),
            sum("crier_deliveries_total"),
            sum("crier_evictions_total")
        )
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Sets `crier_tcp_connections`.
    pub(crate) fn set_tcp_connections(&self, open: usize) {
        self.tcp_connections.set(open as f64);
    }

    /// Folds recorded histogram samples into their buckets; run periodically so samples do not
    /// pile up between scrapes.
    pub(crate) fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How the set of topics a node hears changed; the `op` label of
/// `crier_relay_interest_changes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InterestChange {
    /// A topic's channel was subscribed.
    Subscribe = 0,
    /// A topic's channel was unsubscribed (no reader for the grace period).
    Unsubscribe = 1,
    /// A topic's channel was dropped by Redis (on a Redis Cluster, its slot moved, or its
    /// master was lost) and is subscribed again where it lives now.
    Moved = 2,
}

impl InterestChange {
    const ALL: [InterestChange; 3] =
        [InterestChange::Subscribe, InterestChange::Unsubscribe, InterestChange::Moved];

    fn as_str(self) -> &'static str {
        match self {
            InterestChange::Subscribe => "subscribe",
            InterestChange::Unsubscribe => "unsubscribe",
            InterestChange::Moved => "moved",
        }
    }
}

/// What went wrong in the relay; the `kind` label of `crier_relay_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayErrorKind {
    /// Redis could not be reached.
    Connect = 0,
    /// A publish (or a batch of them) failed.
    Publish = 1,
    /// A catch-up read failed.
    Sync = 2,
    /// A malformed envelope was skipped.
    Envelope = 3,
    /// The Pub/Sub link was lost.
    Link = 4,
}

impl RelayErrorKind {
    const ALL: [RelayErrorKind; 5] = [
        RelayErrorKind::Connect,
        RelayErrorKind::Publish,
        RelayErrorKind::Sync,
        RelayErrorKind::Envelope,
        RelayErrorKind::Link,
    ];

    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            RelayErrorKind::Connect => "connect",
            RelayErrorKind::Publish => "publish",
            RelayErrorKind::Sync => "sync",
            RelayErrorKind::Envelope => "envelope",
            RelayErrorKind::Link => "link",
        }
    }
}

/// Handles of the relay's metrics (cluster mode).
pub(crate) struct RelayMetrics {
    /// `crier_relay_connected`: 1 while the Pub/Sub link to Redis is up and caught up (but for
    /// stale topics).
    pub(crate) connected: Gauge,
    /// `crier_relay_received_total`: envelopes received over Pub/Sub.
    pub(crate) received: Counter,
    /// `crier_relay_backfilled_total`: events read back from topic streams to fill a gap.
    pub(crate) backfilled: Counter,
    /// `crier_relay_gaps_total`: topics that lost events no stream could give back.
    pub(crate) gaps: Counter,
    /// `crier_relay_stale_topics`: topics whose streams could not be read while the link is up
    /// (on a Redis Cluster, a master is down); read again every second.
    pub(crate) stale_topics: Gauge,
    /// `crier_relay_publish_duration_seconds`: from a publish's arrival to Redis's answer.
    publish_duration: Histogram,
    /// `crier_relay_errors_total`, by [`RelayErrorKind`].
    errors: [Counter; 5],
    /// `crier_relay_topics_heard`: topics whose channels the node is subscribed to.
    pub(crate) topics_heard: Gauge,
    /// `crier_relay_pubsub_connections`: Pub/Sub connections open (per lane: one to the
    /// single Redis, or one per Redis Cluster master its topics live on).
    pub(crate) pubsub_connections: Gauge,
    /// `crier_relay_interest_changes_total`, by [`InterestChange`].
    interest_changes: [Counter; 3],
}

impl RelayMetrics {
    /// Counts one error of `kind`.
    pub(crate) fn error(&self, kind: RelayErrorKind) {
        self.errors[kind as usize].increment(1);
    }

    /// Counts `topics` whose channels changed by `op`.
    pub(crate) fn interest(&self, op: InterestChange, topics: usize) {
        self.interest_changes[op as usize].increment(topics as u64);
    }

    /// Records a publish's round trip.
    pub(crate) fn publish_took(&self, elapsed: Duration) {
        self.publish_duration.record(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status_label(status: u16) -> SharedString {
    match status {
        200 => SharedString::const_str("200"),
        400 => SharedString::const_str("400"),
        404 => SharedString::const_str("404"),
        405 => SharedString::const_str("405"),
        413 => SharedString::const_str("413"),
        503 => SharedString::const_str("503"),
        other => SharedString::from(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_every_metric_with_help() {
        let metrics = Metrics::new();
        metrics.http_request("publish", 200);
        metrics.publish_duration.record(Duration::from_micros(30).as_secs_f64());
        metrics.shed_requests("publish").increment(1);
        metrics.auth_failed(TokenError::Expired);
        metrics.rejected(Rejection::PublishRate);
        for (index, reason) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?} sits at its own index");
        }
        metrics.run_upkeep();
        let text = metrics.render();
        for line in [
            "crier_connections{transport=\"sse\"} 0",
            "crier_connections{transport=\"ws\"} 0",
            "crier_connections_accepted_total{transport=\"sse\"} 0",
            "crier_subscriptions 0",
            "crier_topics 0",
            "crier_events_published_total 0",
            "crier_deliveries_total{transport=\"sse\"} 0",
            "crier_sent_bytes_total{transport=\"sse\"} 0",
            "crier_stream_writes_total{transport=\"ws\"} 0",
            "crier_write_delay_seconds 0",
            "crier_evictions_total{transport=\"sse\",reason=\"slow_consumer\"} 0",
            "crier_http_requests_total{route=\"publish\",status=\"200\"} 1",
            "crier_shed_requests_total{route=\"publish\"} 1",
            "crier_auth_failures_total{reason=\"expired\"} 1",
            "crier_auth_failures_total{reason=\"signature\"} 0",
            "crier_rejections_total{reason=\"publish_rate\"} 1",
            "crier_rejections_total{reason=\"connections\"} 0",
            "crier_publish_duration_seconds_bucket{le=\"0.00005\"} 1",
            "crier_publish_duration_seconds_count 1",
            "# HELP crier_topics Topics with state on this node.",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_connection_guard_counts_the_stream_while_it_lives() {
        let metrics = Metrics::new();
        let has = |line: &str| metrics.render().lines().any(|l| l == line);
        let guard = metrics.open_connection(Transport::Ws);
        assert!(has("crier_connections{transport=\"ws\"} 1"));
        assert!(has("crier_connections_accepted_total{transport=\"ws\"} 1"));
        drop(guard);
        assert!(has("crier_connections{transport=\"ws\"} 0"));
        assert!(has("crier_connections_accepted_total{transport=\"ws\"} 1"));
    }
}
