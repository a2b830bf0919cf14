//! Configuration: every knob as a command-line flag that can also come from a `CRIER_*`
//! environment variable, with its default and its trade-off.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, ValueEnum};

use crate::auth::{AuthConfig, MercureKey, PublicKeySpec, SecretFileSpec, SecretSpec, Selector};
use crate::http::TrustedProxies;
use crate::hub::HubConfig;
use crate::mercure::MercureConfig;
use crate::relay::RelayConfig;

mod startup;
mod token;
pub use token::token_command;

/// What `--help` ends with: how the process ends, and its logging.
const AFTER_HELP: &str = "\
Exit status:
  0    stopped cleanly (SIGTERM or SIGINT, after the drain)
  64   a bad flag or environment variable
  71   the server could not start (its address in use, a key that does not load)
  130  a second SIGTERM or SIGINT stopped it before it had drained

Logging: CRIER_LOG sets what is logged, as a tracing filter (default info; e.g. crier=debug,
warn); --log-format json for one JSON object per line.";

/// crier: a real-time event broadcasting edge server (HTTP publish, SSE and WebSocket fan-out).
#[derive(Parser, Debug, Clone)]
#[command(version, about, max_term_width = 100, after_help = AFTER_HELP)]
pub struct Config {
    /// Address to listen on (HTTP/1.1 and h2c on the same port).
    #[arg(long, env = "CRIER_LISTEN", default_value = "127.0.0.1:8080", overrides_with = "listen")]
    pub listen: SocketAddr,

    /// Write an SSE comment when a stream has been quiet this long, and ping each WebSocket
    /// this often (one that answers nothing for two intervals is closed, 4000). Keep it under
    /// every proxy's read timeout; shorter costs more idle traffic.
    #[arg(long, env = "CRIER_HEARTBEAT", default_value = "15s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// How far, in bytes of its own stream (SSE frames, or WebSocket frames in its format), one
    /// subscriber may fall behind a topic. A subscriber that falls further behind, or behind
    /// the events the topic's log holds (--history), is disconnected and resumes from history.
    /// The events are shared, so a slow subscriber costs no memory of its own beyond the chunk
    /// being written: this bounds lag, not a queue.
    #[arg(long, env = "CRIER_MAX_LAG_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_lag_bytes: usize,

    /// The old name of --max-lag-bytes (it bounds no queue), kept working with a warning.
    #[arg(long = "client-queue-bytes", env = "CRIER_CLIENT_QUEUE_BYTES", hide = true, value_parser = parse_bytes, conflicts_with = "max_lag_bytes")]
    pub client_queue_bytes: Option<usize>,

    /// Events per topic a resume (Last-Event-ID) may replay. The topic's log keeps at least 64
    /// whatever this says, so this also bounds how far a live subscriber may lag. 0 disables
    /// resume.
    #[arg(long, env = "CRIER_HISTORY", default_value_t = 1000)]
    pub history: usize,

    /// Largest event payload accepted by POST /publish.
    #[arg(long, env = "CRIER_MAX_EVENT_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_event_bytes: usize,

    /// Largest body of a batch publish (POST /publish with application/x-ndjson, one event per
    /// line); each event is still held to --max-event-bytes.
    #[arg(long, env = "CRIER_MAX_BATCH_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_batch_bytes: usize,

    /// A topic with no subscriber and no event for this long is dropped with its history (in
    /// cluster mode, its Redis keys expire after as long, refreshed by each publish). A topic
    /// published again later starts a new epoch: a client resuming from an older id gets
    /// `crier.gap`.
    #[arg(long, env = "CRIER_TOPIC_IDLE_TTL", default_value = "10m", value_parser = parse_positive_duration)]
    pub topic_idle_ttl: Duration,

    /// Most topics the node holds at once; a new topic beyond is refused (503 `topic_limit`)
    /// until idle ones are dropped.
    #[arg(long, env = "CRIER_MAX_TOPICS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_topics: u64,

    /// How long a publish's `Idempotency-Key` is remembered: a retry with the same key (to the
    /// same topic) within it publishes nothing and answers the first publish's id. In cluster
    /// mode Redis remembers the keys, so a retry may go to any node.
    #[arg(long, env = "CRIER_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = parse_positive_duration)]
    pub idempotency_window: Duration,

    /// Most topics one stream may subscribe to: an SSE stream, a WebSocket (with its
    /// `subscribe` commands); over HTTP/2, each stream of a connection on its own.
    #[arg(long, env = "CRIER_MAX_TOPICS_PER_STREAM", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_topics_per_stream: u16,

    /// The old name of --max-topics-per-stream (the limit is per stream, not per connection),
    /// kept working with a warning.
    #[arg(long = "max-topics-per-connection", env = "CRIER_MAX_TOPICS_PER_CONNECTION", hide = true, value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "max_topics_per_stream")]
    pub max_topics_per_connection: Option<u16>,

    /// On SIGTERM/SIGINT, how long `/readyz` answers 503 `draining` while the server goes on
    /// serving and accepting, so a load balancer takes the node out of rotation before it
    /// stops accepting. 0: stop accepting at once.
    #[arg(long, env = "CRIER_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration, overrides_with = "drain_delay")]
    pub drain_delay: Duration,

    /// On SIGTERM/SIGINT, how long to let streams drain before closing what is left.
    #[arg(long, env = "CRIER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// The longest a busy stream gathers events before it writes them. A stream that took
    /// events less than the delay ago waits for more and writes them at once (fewer system
    /// calls, less CPU per event); a quiet stream writes at once, and a gathering stream
    /// writes early when its backlog nears a quarter of --history or --max-lag-bytes. The
    /// delay in force adapts to the node's load (see --writes-per-sec): none while the node
    /// writes little. 0 never gathers.
    #[arg(long, env = "CRIER_WRITE_DELAY", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub write_delay: Duration,

    /// Stream writes per second the node aims at: above it the write delay grows (up to
    /// --write-delay), well under it the delay shrinks to nothing. Default: 20000 per CPU
    /// core. 0: always gather for the whole --write-delay.
    #[arg(long, env = "CRIER_WRITES_PER_SEC")]
    pub writes_per_sec: Option<u64>,

    /// The old name of --cors-origins for WebSockets (one list now serves both), kept working
    /// with a warning: its origins are added to --cors-origins.
    #[arg(long, env = "CRIER_ALLOWED_ORIGINS", value_delimiter = ',', hide = true)]
    pub allowed_origins: Vec<String>,

    /// Origins whose pages may act across origins, comma-separated (`https://app.example`), or
    /// `*` for any: read `/sse` streams and `/publish` answers, open WebSockets, and publish.
    /// Listed origins may send credentials (the `crier_token` cookie). Empty: only the
    /// server's own pages. A publish or WebSocket from another page is refused (403), whatever
    /// authorised it; clients that are not pages (no `Origin`) are not checked.
    #[arg(long, env = "CRIER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Commands a WebSocket client may send per second (and in a burst). Over the limit a
    /// command is refused; a client that keeps going is disconnected (close 1008).
    #[arg(long, env = "CRIER_WS_COMMANDS_PER_SEC", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_commands_per_sec: u32,

    /// Largest WebSocket message a client may send to /ws (larger: close 1009). /ws/echo
    /// takes at least 16 MiB.
    #[arg(long, env = "CRIER_MAX_MESSAGE_BYTES", default_value = "256KiB", value_parser = parse_bytes)]
    pub max_message_bytes: usize,

    /// Reconnection delay sent to SSE clients in the `retry:` field.
    #[arg(long, env = "CRIER_SSE_RETRY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub sse_retry: Duration,

    /// Close a connection whose request headers take longer than this to arrive: on HTTP/1,
    /// each request's; on HTTP/2 (h2c), the preface, SETTINGS and first request's.
    #[arg(long, env = "CRIER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// Longest a publish may wait to be accepted (in cluster mode, for Redis) before it is
    /// answered 503 with Retry-After. The body's upload is not counted.
    #[arg(long, env = "CRIER_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub publish_timeout: Duration,

    /// Most publishes in flight at once (their bodies held in memory); more are refused at
    /// once with 503 and Retry-After rather than queued.
    #[arg(long, env = "CRIER_MAX_CONCURRENT_PUBLISHES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_publishes: u32,

    /// Join a cluster through this Redis (`redis://[user:password@]host:port[/db]`): events
    /// are published through Redis, every node delivers them with the same ids in the same
    /// order, and clients resume on any node. With --redis-cluster, one or more masters of a
    /// Redis Cluster, comma-separated. Unset: a single node with in-memory history.
    #[arg(long, env = "CRIER_REDIS_URL", value_delimiter = ',', value_parser = parse_redis_url)]
    pub redis_url: Vec<String>,

    /// The Redis of --redis-url is a Redis Cluster.
    #[arg(long, env = "CRIER_REDIS_CLUSTER", requires = "redis_url")]
    pub redis_cluster: bool,

    /// Cluster mode: connections to Redis that publish in parallel (one more per relay lane
    /// serves catch-up reads; Pub/Sub connections are apart). Publishes waiting while all are
    /// busy go out together as one pipeline.
    #[arg(long, env = "CRIER_REDIS_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_pool_size: u16,

    /// Cluster mode: how long a node keeps hearing a topic (subscribed to its Redis channel,
    /// holding its copy) after the topic's last reader on this node left. A node hears only
    /// the topics it has readers for; a reader who comes back within this time is served at
    /// once, a later one after a catch-up read.
    #[arg(long, env = "CRIER_INTEREST_GRACE", default_value = "1m", value_parser = parse_positive_duration)]
    pub interest_grace: Duration,

    /// Cluster mode: relay lanes, each a task with its own Pub/Sub connection (one per Redis
    /// Cluster master) and its share of the topics (by slot), so ingest spreads over cores.
    /// 0 picks one per core, at most four.
    #[arg(long, env = "CRIER_RELAY_LANES", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub relay_lanes: u16,

    /// HMAC secrets that sign tokens (HS256, HS384, HS512), comma-separated, each at least
    /// 32 bytes. `KID:SECRET` names the key for tokens whose header has that `kid` (for
    /// rotation); a secret containing `:` without a key id starts with `:`. With a key
    /// configured, publishing needs a token; without one, only loopback clients may publish.
    #[arg(long, env = "CRIER_JWT_KEY", value_delimiter = ',', hide_env_values = true)]
    pub jwt_key: Vec<SecretSpec>,

    /// Files each holding an HMAC secret (its bytes; a final newline is dropped), at least 32
    /// bytes, comma-separated, each optionally `KID:PATH`: as --jwt-key, without the secret in
    /// the process's arguments or environment. Read again on SIGHUP, without dropping a
    /// connection.
    #[arg(long, env = "CRIER_JWT_KEY_FILE", value_delimiter = ',')]
    pub jwt_key_file: Vec<SecretFileSpec>,

    /// PEM files of public keys that sign tokens: RSA (RS256…, PS256…), EC P-256 or P-384
    /// (ES256, ES384) or Ed25519 (EdDSA), comma-separated, each optionally `KID:PATH`. Read
    /// again on SIGHUP, without dropping a connection.
    #[arg(long, env = "CRIER_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PublicKeySpec>,

    /// Accept only tokens whose `iss` is this.
    #[arg(long, env = "CRIER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Accept only tokens whose `aud` names this.
    #[arg(long, env = "CRIER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Topics whose subscribers need a token that covers them (`crier.subscribe`),
    /// comma-separated selectors: a topic, a prefix ending in `/*` or `:*`, or `*` for every
    /// topic. Needs a key.
    #[arg(long, env = "CRIER_PRIVATE_TOPICS", value_delimiter = ',')]
    pub private_topics: Vec<Selector>,

    /// Peers whose `X-Forwarded-For` is believed, comma-separated addresses or CIDR blocks
    /// (`none`: nobody). The client is the rightmost forwarded hop that is not one of these.
    #[arg(long, env = "CRIER_TRUSTED_PROXIES", value_delimiter = ',', default_value = "127.0.0.0/8,::1", value_parser = parse_proxy)]
    pub trusted_proxies: Vec<String>,

    /// Most connections open at once; more are answered 503 `at_capacity` and closed. Keep
    /// it under the process's file descriptor limit.
    #[arg(long, env = "CRIER_MAX_CONNECTIONS", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most connections open at once from one client address (an IPv6 client's /64). Counted
    /// for peers that are not --trusted-proxies (behind a proxy, limit connections there).
    #[arg(long, env = "CRIER_MAX_CONNECTIONS_PER_IP", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,

    /// New SSE streams and WebSockets one client address may open per second (and in a
    /// burst); more are answered 429 with Retry-After.
    #[arg(long, env = "CRIER_NEW_STREAMS_PER_SEC", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub new_streams_per_sec: u32,

    /// Streams one client address may resume per second (and in a burst), apart from
    /// --new-streams-per-sec: those that carry an event id crier issued (`Last-Event-ID`,
    /// `last_event_id`; Mercure's `lastEventID`), as a crowd behind one address (a NAT, a
    /// proxy) does all at once when the node it was on goes away.
    #[arg(long, env = "CRIER_RESUMES_PER_SEC", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub resumes_per_sec: u32,

    /// Streams open at once from one client address (an IPv6 client's /64; behind a trusted
    /// proxy, the forwarded address): SSE and Mercure streams (each HTTP/2 stream counts) and
    /// WebSockets. More are answered 429 `too_many_streams`.
    #[arg(long, env = "CRIER_MAX_STREAMS_PER_IP", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_ip: u32,

    /// Publishes (HTTP, WebSocket and Mercure) one principal may make per second (and in a
    /// burst): a token's `sub`, else the client address. More are answered 429 with
    /// Retry-After.
    #[arg(long, env = "CRIER_PUBLISHES_PER_SEC", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishes_per_sec: u32,

    /// Topics one client address may have the node create per second (and in a burst), by
    /// subscribing or publishing to topics the node does not hold; more are answered 429 with
    /// Retry-After.
    #[arg(long, env = "CRIER_NEW_TOPICS_PER_SEC", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub new_topics_per_sec: u32,

    /// Largest request head (request line and headers); larger is answered 431.
    #[arg(long, env = "CRIER_MAX_REQUEST_HEAD_BYTES", default_value = "16KiB", value_parser = parse_bytes)]
    pub max_request_head_bytes: usize,

    /// Close a connection (HTTP/1.1 keep-alive, or HTTP/2) that has had no request in flight
    /// for this long. An open stream is a request in flight.
    #[arg(long, env = "CRIER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Longest a publish's body may take to arrive; slower is answered 408 and the connection
    /// closed.
    #[arg(long, env = "CRIER_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub body_read_timeout: Duration,

    /// Mercure hub: the key publishers' tokens are signed with, an HMAC secret or the PEM text
    /// of a public key (see --mercure-publisher-jwt-alg). Also read from
    /// `MERCURE_PUBLISHER_JWT_KEY`, as the reference hub does. Any Mercure key, or
    /// --mercure-anonymous, turns the hub on at /.well-known/mercure.
    #[arg(
        long,
        env = "CRIER_MERCURE_PUBLISHER_JWT_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub mercure_publisher_jwt_key: Option<String>,

    /// Mercure hub: the algorithm publishers' tokens must use (HS256, HS384, HS512, RS256…,
    /// PS256…, ES256, ES384, EdDSA). Also read from `MERCURE_PUBLISHER_JWT_ALG`.
    #[arg(long, env = "CRIER_MERCURE_PUBLISHER_JWT_ALG")]
    pub mercure_publisher_jwt_alg: Option<String>,

    /// Mercure hub: the key subscribers' tokens are signed with. Also read from
    /// `MERCURE_SUBSCRIBER_JWT_KEY`. Without it, every subscriber gets public updates only.
    #[arg(
        long,
        env = "CRIER_MERCURE_SUBSCRIBER_JWT_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub mercure_subscriber_jwt_key: Option<String>,

    /// Mercure hub: the algorithm subscribers' tokens must use. Also read from
    /// `MERCURE_SUBSCRIBER_JWT_ALG`.
    #[arg(long, env = "CRIER_MERCURE_SUBSCRIBER_JWT_ALG")]
    pub mercure_subscriber_jwt_alg: Option<String>,

    /// Mercure hub: subscribers without a token are accepted and get public updates only (a
    /// token that does not verify is still refused).
    #[arg(long, env = "CRIER_MERCURE_ANONYMOUS")]
    pub mercure_anonymous: bool,

    /// Mercure hub: publish an event when a subscriber arrives or leaves, and serve the
    /// subscriptions API (/.well-known/mercure/subscriptions), for the whole cluster.
    #[arg(long, env = "CRIER_MERCURE_SUBSCRIPTIONS")]
    pub mercure_subscriptions: bool,

    /// Mercure hub: updates a resume (Last-Event-ID, `earliest`) may replay. Subscription
    /// events are kept apart, in a log of --history events, so they never push an update out.
    #[arg(long, env = "CRIER_MERCURE_HISTORY", default_value_t = 10_000)]
    pub mercure_history: usize,

    /// Mercure hub: URI templates the node holds compiled for its subscribers at once (each
    /// costs up to about 1 MiB, typically 20-50 KiB); a subscribe that needs more is refused
    /// for now (503, or a stream a browser retries).
    #[arg(long, env = "CRIER_MERCURE_MAX_TEMPLATES", default_value_t = 10_000)]
    pub mercure_max_templates: usize,

    /// Mercure hub: origins a publish may come from when its token is in the
    /// `mercureAuthorization` cookie, comma-separated (`*`: any).
    #[arg(long, env = "CRIER_MERCURE_PUBLISH_ORIGINS", value_delimiter = ',')]
    pub mercure_publish_origins: Vec<String>,

    /// The old name of --mercure-publish-origins (the list is the Mercure hub's), kept working
    /// with a warning.
    #[arg(
        long = "publish-origins",
        env = "CRIER_PUBLISH_ORIGINS",
        hide = true,
        value_delimiter = ',',
        conflicts_with = "mercure_publish_origins"
    )]
    pub publish_origins: Vec<String>,

    /// Serve TLS with this PEM certificate chain (with --tls-key); ALPN offers h2 and
    /// http/1.1. Read again on SIGHUP, without dropping a connection. Unset: plain HTTP.
    #[arg(long, env = "CRIER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CRIER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "CRIER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, overrides_with = "log_format")]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The defaults, listening on `listen`.
    pub fn with_listen(listen: SocketAddr) -> Self {
        let mut config = Config::parse_from(["crier"]);
        config.listen = listen;
        config
    }

    /// Checks what the flags' declarations cannot say: several Redis URLs only name the
    /// masters of one Redis Cluster.
    pub fn checked(self) -> Result<Self, clap::Error> {
        if self.redis_url.len() > 1 && !self.redis_cluster {
            return Err(Self::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--redis-url takes one URL unless --redis-cluster is given (several URLs are \
                 masters of one Redis Cluster)",
            ));
        }
        if !self.private_topics.is_empty() && !self.has_credentials() {
            return Err(Self::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--private-topics needs --jwt-key, --jwt-key-file or --jwt-public-key-file: \
                 without a key no token could open a private topic",
            ));
        }
        Ok(self)
    }

    /// Moves the values given under a flag's old name to the flag, and says which old names
    /// were used, each in a warning to log once.
    pub(crate) fn take_deprecated_names(&mut self) -> Vec<String> {
        let mut used = Vec::new();
        let mut warn = |old: &str, new: &str| {
            used.push(format!("--{old} is deprecated and will be removed: use --{new}"));
        };
        if let Some(bytes) = self.client_queue_bytes.take() {
            self.max_lag_bytes = bytes;
            warn("client-queue-bytes", "max-lag-bytes");
        }
        if let Some(topics) = self.max_topics_per_connection.take() {
            self.max_topics_per_stream = topics;
            warn("max-topics-per-connection", "max-topics-per-stream");
        }
        if !self.publish_origins.is_empty() {
            self.mercure_publish_origins = std::mem::take(&mut self.publish_origins);
            warn("publish-origins", "mercure-publish-origins");
        }
        if !self.allowed_origins.is_empty() {
            let origins = std::mem::take(&mut self.allowed_origins);
            self.cors_origins.extend(origins);
            warn("allowed-origins", "cors-origins");
        }
        used
    }

    /// Whether a key is configured: tokens are checked, and publishing needs one.
    pub(crate) fn has_credentials(&self) -> bool {
        !self.jwt_key.is_empty()
            || !self.jwt_key_file.is_empty()
            || !self.jwt_public_key_file.is_empty()
    }

    /// The credentials' share of the configuration.
    pub(crate) fn auth(&self) -> AuthConfig {
        AuthConfig {
            secrets: self.jwt_key.clone(),
            secret_files: self.jwt_key_file.clone(),
            public_key_files: self.jwt_public_key_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            private_topics: self.private_topics.clone(),
        }
    }

    /// The Mercure hub's share of the configuration; a key left unset is read from the
    /// reference hub's environment variable (`MERCURE_PUBLISHER_JWT_KEY` and the rest).
    pub(crate) fn mercure(&self) -> MercureConfig {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let key = |key: &Option<String>, alg: &Option<String>, side: &str| {
            let key = key.clone().or_else(|| from_env(&format!("MERCURE_{side}_JWT_KEY")))?;
            let algorithm = alg
                .clone()
                .or_else(|| from_env(&format!("MERCURE_{side}_JWT_ALG")))
                .unwrap_or_else(|| "HS256".to_owned());
            Some(MercureKey { key, algorithm })
        };
        MercureConfig {
            publisher_key: key(
                &self.mercure_publisher_jwt_key,
                &self.mercure_publisher_jwt_alg,
                "PUBLISHER",
            ),
            subscriber_key: key(
                &self.mercure_subscriber_jwt_key,
                &self.mercure_subscriber_jwt_alg,
                "SUBSCRIBER",
            ),
            anonymous: self.mercure_anonymous,
            publish_origins: self.mercure_publish_origins.clone(),
            subscriptions: self.mercure_subscriptions,
            max_templates: self.mercure_max_templates,
        }
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub(crate) fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.iter().filter_map(|net| proxy_net(net)).collect())
    }

    /// The relay's share of the configuration, in cluster mode.
    pub fn relay(&self) -> Option<RelayConfig> {
        (!self.redis_url.is_empty()).then(|| RelayConfig {
            urls: self.redis_url.clone(),
            cluster: self.redis_cluster,
            pool_size: usize::from(self.redis_pool_size),
            key_ttl: self.topic_idle_ttl,
            idempotency_window: self.idempotency_window,
            interest_grace: self.interest_grace,
            lanes: usize::from(self.relay_lanes),
        })
    }

    /// The hub's share of the configuration.
    pub fn hub(&self) -> HubConfig {
        HubConfig {
            history: self.history,
            max_lag_bytes: self.max_lag_bytes,
            max_event_bytes: self.max_event_bytes,
            max_topics_per_stream: usize::from(self.max_topics_per_stream),
            topic_idle_ttl: self.topic_idle_ttl,
            max_topics: usize::try_from(self.max_topics).unwrap_or(usize::MAX),
            idempotency_window: self.idempotency_window,
            log_histories: crate::mercure::log_histories(self.mercure_history),
            write_delay: self.write_delay,
            writes_per_sec: self.writes_per_sec.unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
                WRITES_PER_SEC_PER_CORE * cores
            }),
        }
    }
}

/// The default write budget per CPU core: a write to a socket costs a few microseconds of
/// system time, so this keeps stream writes to a fraction of each core.
const WRITES_PER_SEC_PER_CORE: u64 = 20_000;

fn parse_redis_url(text: &str) -> Result<String, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(text)
        .map_err(|e| format!("not a Redis URL: {e}"))?;
    // The relay speaks Pub/Sub over its own TCP connections.
    match info.addr() {
        redis::ConnectionAddr::Tcp(..) => Ok(text.to_owned()),
        _ => Err("expected a TCP address, redis://[user:password@]host:port[/db]".to_owned()),
    }
}

fn parse_proxy(text: &str) -> Result<String, String> {
    match proxy_net(text) {
        Some(_) => Ok(text.to_owned()),
        None if text == "none" => Ok(text.to_owned()),
        None => Err("expected an IP address, a CIDR block such as 10.0.0.0/8, or none".into()),
    }
}

/// An address or CIDR block of `--trusted-proxies`; `None` for `none` (and anything invalid,
/// which the parser refuses).
fn proxy_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Sizes such as `65536`, `64KiB`, `1 MiB` or `2MB`.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let bytes = parse_size::parse_size(text)
        .map_err(|e| format!("{e} (expected a size such as 65536, 64KiB or 1MiB)"))?;
    match usize::try_from(bytes) {
        Ok(0) | Err(_) => Err("must be between 1 byte and the address space".into()),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::try_parse_from(["crier"]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.max_lag_bytes, 1 << 20);
        assert_eq!(c.max_topics_per_stream, 64);
        assert_eq!(c.history, 1000);
        assert_eq!(c.max_event_bytes, 64 << 10);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.redis_url.is_empty());
        assert!(!c.redis_cluster);
        assert_eq!(c.redis_pool_size, 4);
        assert_eq!(c.publish_timeout, Duration::from_secs(5));
        assert_eq!(c.max_concurrent_publishes, 1024);
        assert!(c.jwt_key.is_empty() && c.jwt_public_key_file.is_empty());
        assert_eq!(c.trusted_proxies, ["127.0.0.0/8", "::1"]);
    }

    #[test]
    fn values_parse_with_units_and_bad_ones_are_refused() {
        let c = Config::try_parse_from([
            "crier",
            "--heartbeat",
            "250ms",
            "--max-lag-bytes",
            "64KiB",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert_eq!(c.max_lag_bytes, 65536);
        assert_eq!(c.log_format, LogFormat::Json);
        for bad in [
            &["--heartbeat", "0s"][..],
            &["--heartbeat", "soon"],
            &["--max-lag-bytes", "lots"],
            &["--max-lag-bytes", "0"],
            &["--client-queue-bytes", "0"],
            &["--max-lag-bytes", "1MiB", "--client-queue-bytes", "2MiB"],
            &["--max-topics-per-stream", "0"],
            &["--listen", "localhost"],
            &["--history", "-1"],
            &["--log-format", "xml"],
            &["--max-topics-per-connection", "0"],
            &["--redis-url", "http://127.0.0.1:6379"],
            &["--redis-url", "redis+unix:///run/redis.sock"],
            &["--interest-grace", "0s"],
            &["--relay-lanes", "65"],
            &["--redis-pool-size", "0"],
            &["--publish-timeout", "0s"],
            &["--max-concurrent-publishes", "0"],
            &["--jwt-key", "short"],
            &["--private-topics", "a*"],
            &["--private-topics", "a"],
            &["--trusted-proxies", "10.0.0.0/33"],
        ] {
            let args = std::iter::once("crier").chain(bad.iter().copied());
            let parsed = Config::try_parse_from(args).and_then(Config::checked);
            assert!(parsed.is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn old_flag_names_still_work_and_are_named_once_for_a_warning() {
        let mut c = Config::try_parse_from([
            "crier",
            "--client-queue-bytes",
            "64KiB",
            "--max-topics-per-connection",
            "7",
            "--publish-origins",
            "https://a.example,https://b.example",
            "--allowed-origins",
            "https://ws.example",
            "--cors-origins",
            "https://app.example",
        ])
        .unwrap();
        let used = c.take_deprecated_names();
        assert_eq!(used.len(), 4, "{used:?}");
        assert_eq!(c.cors_origins, ["https://app.example", "https://ws.example"]);
        assert!(used[0].contains("--client-queue-bytes") && used[0].contains("--max-lag-bytes"));
        assert_eq!(c.max_lag_bytes, 65536);
        assert_eq!(c.max_topics_per_stream, 7);
        assert_eq!(c.mercure_publish_origins, ["https://a.example", "https://b.example"]);
        assert!(c.take_deprecated_names().is_empty(), "each is named once");
        let mut current = Config::try_parse_from(["crier", "--max-lag-bytes", "2MiB"]).unwrap();
        assert!(current.take_deprecated_names().is_empty());
        assert_eq!(current.max_lag_bytes, 2 << 20);
    }
}
