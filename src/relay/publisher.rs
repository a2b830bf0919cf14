//! Publishing through Redis: every publish is one call of the publish script, and calls queued
//! while another batch is on the wire go out together as one pipeline.
//!
//! A few workers share the queue; each holds one pooled connection while it works, takes every
//! job waiting (up to [`MAX_BATCH`]) and sends them as one pipeline of `EVALSHA` calls, so under
//! load a round trip carries hundreds of publishes and at rest a publish waits for nobody. A
//! `NOSCRIPT` answer (Redis restarted and lost its script cache) loads the script and retries
//! only the calls it refused, which did not run. A connection error fails the batch: nothing of
//! a failed call is half-done (the script is atomic), and the caller answers 503.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Cmd, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::commands::{self, Commands, RedisConnection};
use super::scripts::{self, TopicKeys};
use super::{Cause, RelayError, RelayedEvent, Shared};
use crate::codec::envelope;
use crate::event::{EventId, TopicName};
use crate::metrics::RelayErrorKind;
use crate::registry::HistoryLimits;

/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 256;

/// How long a worker keeps an idle connection before handing it back to the pool.
const MAX_IDLE: Duration = Duration::from_millis(500);

/// One publish waiting for Redis.
pub(super) struct PublishJob {
    /// The event, and the ticket that withdraws it while it is queued (then it is never sent).
    pub(super) event: RelayedEvent,
    pub(super) queued: Instant,
    /// The id, and whether it is an earlier publish's (same idempotency key).
    pub(super) reply: oneshot::Sender<Result<(EventId, bool), RelayError>>,
}

/// What the queue carries: one publish, or a batch's publishes, which one worker takes whole
/// and sends in order in one pipeline, so a batch's events keep their order in their topics.
pub(super) enum Queued {
    One(PublishJob),
    Group(Vec<PublishJob>),
}

/// Starts `workers` workers taking jobs from `jobs` and running `script` (the publish script); they end when every sender is dropped.
pub(super) fn spawn(
    pool: Arc<Commands>,
    jobs: mpsc::Receiver<Queued>,
    script: redis::Script,
    workers: usize,
    history: &HistoryLimits,
    shared: Arc<Shared>,
) {
    let stream_lengths = Arc::new(StreamLengths::new(history));
    let jobs = Arc::new(Mutex::new(jobs));
    let script = Arc::new(script);
    for _ in 0..workers.max(1) {
        let worker = Worker {
            pool: pool.clone(),
            jobs: jobs.clone(),
            script: script.clone(),
            stream_lengths: stream_lengths.clone(),
            shared: shared.clone(),
        };
        tokio::spawn(worker.run());
    }
}

struct Worker {
    pool: Arc<Commands>,
    jobs: Arc<Mutex<mpsc::Receiver<Queued>>>,
    script: Arc<redis::Script>,
    stream_lengths: Arc<StreamLengths>,
    shared: Arc<Shared>,
}

/// The `MAXLEN` of each topic's stream, as the publish script takes it: the events its log
/// holds, rendered once.
struct StreamLengths {
    default: Bytes,
    logs: Box<[(TopicName, Bytes)]>,
}

impl StreamLengths {
    fn new(history: &HistoryLimits) -> Self {
        let render = |events: usize| Bytes::from(events.to_string());
        StreamLengths {
            default: render(history.default_log_events()),
            logs: history
                .logs()
                .map(|(name, _)| (name.clone(), render(history.log_events(name.as_str()))))
                .collect(),
        }
    }

    fn of(&self, topic: &TopicName) -> &[u8] {
        self.logs.iter().find(|(name, _)| name == topic).map_or(&self.default, |(_, len)| len)
    }
}

impl Worker {
    async fn run(self) {
        // The connection, when it was last used, and the link it was taken under.
        type Checkout = (RedisConnection, Instant, u64);
        let mut connection: Option<Checkout> = None;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut queued = Vec::with_capacity(MAX_BATCH);
        loop {
            // Whoever holds the queue takes everything waiting; the others wait their turn, so
            // batches grow with the load.
            let taken = self.jobs.lock().await.recv_many(&mut queued, MAX_BATCH).await;
            if taken == 0 {
                return;
            }
            for item in queued.drain(..) {
                match item {
                    Queued::One(job) => batch.push(job),
                    Queued::Group(jobs) => batch.extend(jobs),
                }
            }
            // Publishes their callers gave up on while queued are never sent: their callers
            // answered that nothing was published.
            batch.retain(|job| job.event.ticket.send());
            if batch.is_empty() {
                continue;
            }
            // A connection kept busy is trusted. One idle for a while, or older than the
            // link's last reconnection (Redis may have restarted), goes back to the pool, which
            // pings it before handing it out again: a Redis restart does not fail the next
            // publish.
            let links = self.shared.links.load(Ordering::Acquire);
            let fresh = |(_, used, link): &Checkout| used.elapsed() < MAX_IDLE && *link == links;
            let conn = match connection.take().filter(fresh) {
                Some((conn, _, _)) => conn,
                None => match self.pool.get().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.shared.metrics.error(RelayErrorKind::Connect);
                        fail(&mut batch, &e);
                        continue;
                    }
                },
            };
            let mut conn = conn;
            match self.send(&mut conn, &batch).await {
                Ok((results, healthy)) => {
                    if healthy {
                        connection = Some((conn, Instant::now(), links));
                    }
                    for (job, result) in batch.drain(..).zip(results) {
                        self.shared.metrics.publish_took(job.queued.elapsed());
                        if result.is_err() {
                            self.shared.metrics.error(RelayErrorKind::Publish);
                        }
                        let _ = job.reply.send(result);
                    }
                }
                Err(e) => {
                    // The connection is suspect: let the pool check or replace it. The calls
                    // were sent: Redis may have run them before the connection broke.
                    self.shared.metrics.error(RelayErrorKind::Publish);
                    tracing::warn!(error = %e, jobs = batch.len(), "publishing to Redis failed");
                    fail(&mut batch, &RelayError::OutcomeUnknown(Cause::new(e)));
                }
            }
        }
    }

    /// Sends `batch`; one result per job, in order, and whether the connection is still good.
    async fn send(
        &self,
        conn: &mut RedisConnection,
        batch: &[PublishJob],
    ) -> redis::RedisResult<(Vec<Result<(EventId, bool), RelayError>>, bool)> {
        let mut results: Vec<Option<Result<(EventId, bool), RelayError>>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut healthy = true;
        // Once to run, once more after loading the script if Redis had lost it.
        for attempt in 0..2 {
            let calls = pending.iter().map(|&index| self.call(&batch[index])).collect();
            let answers = conn.send(calls).await?;
            let mut refused = Vec::new();
            for (&index, answer) in pending.iter().zip(answers) {
                results[index] = Some(match answer {
                    Err(e) if commands::is_no_script(&e) => {
                        refused.push(index);
                        continue;
                    }
                    Err(e) => {
                        let broken = commands::is_connection_error(&e);
                        healthy &= !broken;
                        // A broken connection may have carried the call before it broke.
                        Err(if broken {
                            RelayError::OutcomeUnknown(Cause::new(e))
                        } else {
                            RelayError::Call(Cause::new(e))
                        })
                    }
                    Ok(value) => published_id(value),
                });
            }
            if refused.is_empty() {
                break;
            }
            if attempt == 0 {
                conn.load(&self.script).await?;
            }
            pending = refused;
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or(Err(RelayError::Answer("NOSCRIPT after loading the script"))))
            .collect();
        Ok((results, healthy))
    }

    fn call(&self, job: &PublishJob) -> Cmd {
        let RelayedEvent { topic, name, data, idempotency_key, .. } = &job.event;
        let mut call = scripts::publish_call(&self.script, topic, idempotency_key.as_ref());
        call.arg(self.shared.key_ttl_ms)
            .arg(self.stream_lengths.of(topic))
            .arg(TopicKeys::new(topic).channel)
            .arg(envelope::header_tail(topic, name.as_ref(), data))
            .arg(&data.bytes()[..])
            .arg(self.shared.idempotency_window_ms);
        call
    }
}

/// The id in the publish script's answer `{epoch, seq}`, or `{epoch, seq, 1}` for the id of an
/// earlier publish with the same idempotency key.
fn published_id(value: Value) -> Result<(EventId, bool), RelayError> {
    let bad = RelayError::Answer;
    match value {
        Value::Array(items) if items.len() == 2 || items.len() == 3 => {
            let replayed = items.len() == 3;
            let epoch = match &items[0] {
                Value::BulkString(b) => std::str::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s.as_str()),
                _ => None,
            };
            let seq = match items[1] {
                Value::Int(seq) => u64::try_from(seq).ok(),
                _ => None,
            };
            match (epoch, seq) {
                (Some(epoch), Some(seq)) => format!("{epoch}-{seq}")
                    .parse::<EventId>()
                    .map(|id| (id, replayed))
                    .map_err(|_| bad("a bad id")),
                _ => Err(bad("a bad id")),
            }
        }
        _ => Err(bad("not {epoch, seq}")),
    }
}

fn fail(batch: &mut Vec<PublishJob>, error: &RelayError) {
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(error.clone()));
    }
}
