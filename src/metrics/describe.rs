//! The help text and unit of every metric, as `/metrics` shows them.

use metrics::{Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{
    AUTH_FAILURES, BUILD_INFO, CREDENTIAL_RELOADS, HTTP_REQUESTS, PUBLISH_DURATION, REJECTIONS,
    RELAY_ERRORS, RELAY_PUBLISH_DURATION, SHED_REQUESTS, SOFT_REFUSALS, WS_CLOSES,
};

/// Describes every metric to `recorder`.
pub(super) fn describe(recorder: &PrometheusRecorder) {
    let counters: &[(&'static str, &'static str)] = &[
        ("crier_connections_accepted_total", "Subscriber streams accepted, by transport."),
        ("crier_events_published_total", "Events accepted for publishing."),
        (
            "crier_topics_reaped_total",
            "Topics dropped with their history after --topic-idle-ttl without subscriber or event.",
        ),
        ("crier_deliveries_total", "Events written to subscribers, by transport."),
        ("crier_sent_bytes_total", "Stream bytes written to subscribers, by transport."),
        (
            "crier_stream_writes_total",
            "Writes of events to streams, by transport: deliveries over writes is events per write.",
        ),
        (
            "crier_write_delay_seconds",
            "How long a busy stream gathers events before it writes them now.",
        ),
        (
            "crier_evictions_total",
            "Subscribers disconnected by the server, by transport and reason.",
        ),
        (HTTP_REQUESTS, "HTTP requests answered, by route and status."),
        (SHED_REQUESTS, "Requests refused at once because too many were in flight, by route."),
        (WS_CLOSES, "WebSocket connections closed, by the close code crier sent (1006: none)."),
        (SOFT_REFUSALS, "Refusals a browser retries (crier.refused, close 1013), by transport."),
        (AUTH_FAILURES, "Tokens refused, by reason."),
        (CREDENTIAL_RELOADS, "Reloads of the token key files (SIGHUP), by outcome."),
        (REJECTIONS, "Requests and connections refused by a limit, by reason."),
        (
            "crier_accept_errors_total",
            "Connections that could not be accepted (out of file descriptors, mostly).",
        ),
    ];
    for &(name, help) in counters {
        let unit = name.contains("_bytes_").then_some(Unit::Bytes);
        recorder.describe_counter(name.into(), unit, help.into());
    }
    let gauges: &[(&'static str, &'static str)] = &[
        ("crier_connections", "Open subscriber streams (SSE streams, WebSockets), by transport."),
        ("crier_tcp_connections", "Open TCP connections, whatever they carry."),
        (BUILD_INFO, "Always 1; the labels say which build is running."),
        ("crier_subscriptions", "Subscriptions (a stream and one of its topics)."),
        ("crier_topics", "Topics with state on this node."),
    ];
    for &(name, help) in gauges {
        recorder.describe_gauge(name.into(), None, help.into());
    }
    let relay_counters: &[(&'static str, &'static str)] = &[
        ("crier_relay_received_total", "Envelopes received from Redis Pub/Sub."),
        ("crier_relay_backfilled_total", "Events read back from Redis streams to fill a gap."),
        ("crier_relay_gaps_total", "Topic gaps no Redis stream could fill (crier.gap sent)."),
        (RELAY_ERRORS, "Relay errors, by kind."),
        (
            "crier_relay_interest_changes_total",
            "Topic channels subscribed, unsubscribed, and moved to another Redis node, by op.",
        ),
    ];
    for &(name, help) in relay_counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    recorder.describe_gauge(
        "crier_relay_stale_topics".into(),
        None,
        "Topics whose Redis streams cannot be read while the link is up; retried each second."
            .into(),
    );
    recorder.describe_gauge(
        "crier_relay_topics_heard".into(),
        None,
        "Topics whose Redis channels this node is subscribed to (it holds them).".into(),
    );
    recorder.describe_gauge(
        "crier_relay_pubsub_connections".into(),
        None,
        "Redis Pub/Sub connections open (per lane: the Redis, or each Redis Cluster master)."
            .into(),
    );
    recorder.describe_gauge(
        "crier_relay_connected".into(),
        None,
        "1 while the Redis Pub/Sub link is up and caught up, else 0.".into(),
    );
    recorder.describe_histogram(
        RELAY_PUBLISH_DURATION.into(),
        Some(Unit::Seconds),
        "Time from a publish's arrival to Redis's answer.".into(),
    );
    recorder.describe_histogram(
        PUBLISH_DURATION.into(),
        Some(Unit::Seconds),
        "Time from accepting a publish to the end of its fan-out.".into(),
    );
}
