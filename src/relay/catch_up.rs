//! Catch-up reads: bringing the node's copy of a topic up to date with the topic's stream in
//! Redis, and what the copy does when the stream cannot continue it (a new copy, and a
//! `crier.gap` for its readers).
//!
//! Used by a relay lane (the only writer of its topics) after it subscribes to a topic, after a
//! reconnect or a moved channel, on a sequence jump, and for the stale topics it retries.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use metrics::Gauge;
use redis::Value;

use super::commands::Commands;
use super::scripts;
use super::{Cause, RelayError, RelayMetrics, Shared};
use crate::codec::envelope::{self, Envelope};
use crate::codec::{Draft, gap};
use crate::event::{Epoch, EventId, Gap, GapReason, TopicName};
use crate::metrics::RelayErrorKind;
use crate::registry::{Registry, Topic};

/// Topics caught up per pipeline.
const SYNC_BATCH: usize = 128;

/// What catch-up reads need, and the topics whose streams could not be read.
pub(super) struct CatchUp {
    registry: Arc<Registry>,
    /// `crier_topics`: topics with state on this node.
    topics: Gauge,
    pool: Arc<Commands>,
    script: redis::Script,
    shared: Arc<Shared>,
    /// Topics whose streams could not be read while Redis answered for others.
    pub(super) stale: BTreeSet<TopicName>,
}

impl CatchUp {
    pub(super) fn new(
        registry: Arc<Registry>,
        topics: Gauge,
        pool: Arc<Commands>,
        shared: Arc<Shared>,
    ) -> Self {
        let script = scripts::sync();
        CatchUp { registry, topics, pool, script, shared, stale: BTreeSet::new() }
    }

    /// Brings the node's copies of `topics` up to date with their streams. `reconnect` says
    /// the events read fill what a lost link missed. Returns the topics whose streams could not
    /// be read while Redis answered for the others (kept as stale if the node has them); `Err`
    /// when Redis could not be asked at all.
    pub(super) async fn read(
        &mut self,
        topics: &[TopicName],
        reconnect: bool,
    ) -> Result<Vec<TopicName>, RelayError> {
        let mut unread = Vec::new();
        if topics.is_empty() {
            return Ok(unread);
        }
        let failed = |e: redis::RedisError| RelayError::Call(Cause::new(e));
        let mut conn = self.pool.get().await?;
        for batch in topics.chunks(SYNC_BATCH) {
            let calls = || {
                batch
                    .iter()
                    .map(|name| {
                        let local = self.registry.topic(name.as_str());
                        let head = local.as_ref().map(|t| t.head());
                        let ttl = self.shared.key_ttl_ms;
                        let mut call = scripts::call(&self.script, name, ttl);
                        call.arg(head.map_or("-".to_owned(), |head| head.epoch.to_string()))
                            .arg(head.map_or(0, |head| head.seq))
                            .arg(self.registry.history().log_events(name.as_str()))
                            .arg(local.as_deref().map_or(String::new(), last_envelope_digest));
                        call
                    })
                    .collect()
            };
            let answers = conn.send_script(&self.script, calls).await.map_err(failed)?;
            for (name, answer) in batch.iter().zip(answers) {
                let state = answer
                    .map_err(failed)
                    .and_then(|value| TopicState::parse(value, &self.shared.metrics));
                let state = match state {
                    Ok(state) => state,
                    Err(e) => {
                        self.shared.metrics.error(RelayErrorKind::Sync);
                        tracing::debug!(topic = %name, error = %e, "cannot read a topic's stream");
                        if self.registry.topic(name.as_str()).is_some() {
                            self.stale.insert(name.clone());
                        }
                        unread.push(name.clone());
                        continue;
                    }
                };
                self.stale.remove(name);
                let applied = apply(&self.registry, &self.topics, name, state);
                if applied.existed && (reconnect || applied.appended > 0) {
                    self.shared.metrics.backfilled.increment(applied.appended as u64);
                }
                if applied.gap {
                    self.shared.metrics.gaps.increment(1);
                }
            }
        }
        Ok(unread)
    }
}

/// A topic as the sync script reports it.
#[derive(Debug)]
struct TopicState {
    /// The topic's epoch.
    epoch: Epoch,
    /// The last sequence number issued.
    seq: u64,
    /// The stream's envelopes after the node's position (all of them for another epoch).
    events: Vec<Envelope>,
}

impl TopicState {
    fn parse(value: Value, metrics: &RelayMetrics) -> Result<Self, RelayError> {
        let bad = || RelayError::Answer("the sync script's answer is not {epoch, seq, envelope…}");
        let Value::Array(items) = value else { return Err(bad()) };
        let mut items = items.into_iter();
        let epoch = match items.next() {
            Some(Value::BulkString(b)) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 36).ok())
                .and_then(Epoch::from_u64),
            _ => None,
        }
        .ok_or_else(bad)?;
        let seq = match items.next() {
            Some(Value::Int(seq)) => u64::try_from(seq).ok(),
            _ => None,
        }
        .ok_or_else(bad)?;
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            let Value::BulkString(bytes) = item else { return Err(bad()) };
            match envelope::decode(&Bytes::from(bytes)) {
                Ok(envelope) if envelope.id.epoch == epoch => events.push(envelope),
                Ok(_) | Err(_) => metrics.error(RelayErrorKind::Envelope),
            }
        }
        Ok(TopicState { epoch, seq, events })
    }
}

/// What [`apply`] did to a topic.
#[derive(Debug, Default, PartialEq, Eq)]
struct Applied {
    /// The node had a copy of the topic.
    existed: bool,
    /// Events added to the node's copy (or to the new copy).
    appended: usize,
    /// Events were lost: the copy was replaced and its readers get a `crier.gap`.
    gap: bool,
}

/// Brings the node's copy of `name` to `state`: appends what continues it, or replaces it when
/// the stream cannot continue it (events trimmed away, or another epoch).
///
/// Must only run on the link's task, the only writer of cluster topics; `topics` counts the
/// topics created.
fn apply(registry: &Registry, topics: &Gauge, name: &TopicName, state: TopicState) -> Applied {
    let local = registry.topic(name.as_str());
    let mut applied = Applied { existed: local.is_some(), ..Applied::default() };
    let first = state.events.first().map(|e| e.id.seq);
    let gap = match &local {
        Some(topic) if topic.epoch() == state.epoch => {
            let head = topic.head();
            let fresh: Vec<Envelope> =
                state.events.into_iter().filter(|e| e.id.seq > head.seq).collect();
            let continues = match fresh.first() {
                Some(e) => e.id.seq == head.seq + 1,
                None => state.seq <= head.seq,
            };
            if continues {
                for envelope in fresh {
                    if !append(topic, envelope) {
                        break;
                    }
                    applied.appended += 1;
                }
                return applied;
            }
            let base = fresh.first().map_or(state.seq, |e| e.id.seq - 1);
            let gap =
                Gap { reason: GapReason::Expired, requested: head, missed: Some(base - head.seq) };
            let gap = Some(gap);
            return replace(registry, topics, name, state.epoch, base, fresh, gap, applied);
        }
        Some(topic) => {
            Some(Gap { reason: GapReason::Epoch, requested: topic.head(), missed: None })
        }
        None => None,
    };
    let base = first.map_or(state.seq, |seq| seq - 1);
    replace(registry, topics, name, state.epoch, base, state.events, gap, applied)
}

/// Installs a new copy of `name` starting after `base` and holding `events`; readers of the
/// old copy (if any) get the notice of `gap` before moving over.
#[allow(clippy::too_many_arguments)]
fn replace(
    registry: &Registry,
    topics: &Gauge,
    name: &TopicName,
    epoch: Epoch,
    base: u64,
    events: Vec<Envelope>,
    gap: Option<Gap>,
    mut applied: Applied,
) -> Applied {
    let topic = registry.new_topic(name.clone(), epoch, base);
    for envelope in events {
        if !append(&topic, envelope) {
            break;
        }
        applied.appended += 1;
    }
    let start = EventId { epoch, seq: base };
    applied.gap = gap.is_some();
    let notice = gap.map(|gap| {
        tracing::warn!(topic = %name.as_str(), reason = gap.reason.as_str(), missed = ?gap.missed, "events lost; subscribers get crier.gap");
        let part = gap::TopicGap { topic: name, gap: &gap, resumed_after: start };
        Arc::new(gap::notice(&[part], start))
    });
    if !registry.install(topic, start, notice) {
        topics.increment(1);
    }
    applied
}

/// Whether the node delivered `envelope`'s event under its id (false if the log no longer holds
/// that id).
pub(super) fn delivered(topic: &Topic, envelope: &Envelope) -> bool {
    let guard = crossbeam_epoch::pin();
    topic
        .event(envelope.id.seq, &guard)
        .is_some_and(|event| event.name == envelope.name && event.data == envelope.data)
}

/// The SHA-1 (hex) of the envelope of the last event the node delivered on `topic`, as the
/// publish script stored it; empty if the log no longer holds it.
fn last_envelope_digest(topic: &Topic) -> String {
    let guard = crossbeam_epoch::pin();
    let head = topic.head();
    match topic.event(head.seq, &guard) {
        Some(event) => {
            let envelope = envelope::encode(topic.name(), head, event.name.as_ref(), &event.data);
            sha1_smol::Sha1::from(envelope).digest().to_string()
        }
        None => String::new(),
    }
}

/// Appends an envelope to a copy of its topic; `false` if it does not continue it.
pub(super) fn append(topic: &Topic, envelope: Envelope) -> bool {
    let draft = Draft::new(&envelope.topic, envelope.name.as_ref(), &envelope.data);
    let frames = draft.finish(envelope.id);
    topic.append(envelope.id, envelope.name, envelope.data, frames).is_ok()
}
