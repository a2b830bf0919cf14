//! One reader's subscription: its cursor on each topic's log, and the read that hands its
//! writer everything published since the last one, moving over to a topic's new copy when a
//! cluster node replaces it.

use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_epoch as epoch;
use tokio::time::Instant;

use super::SubscribeError;
use super::pacing::WritePacing;
use super::sequencer::Sequencer;
use crate::codec::gap::TopicGap;
use crate::event::{Event, EventId, Gap, TopicName};
use crate::metrics::{EvictReason, Metrics, Transport};
use crate::registry::{Closed, Reader, SlotId, Subscriber, Topic};

struct SubscribedTopic {
    topic: Arc<Topic>,
    slot: SlotId,
    reader: Arc<Reader>,
    /// Where the subscription started.
    start: EventId,
    /// Sequence number of the last event taken.
    cursor: u64,
    /// The topic's stream length at the cursor, in the subscriber's wire format.
    cursor_end: u64,
}

/// A topic added to a live subscription.
#[derive(Debug)]
pub(crate) struct Added {
    /// The position the topic starts after.
    pub(crate) position: EventId,
    /// What the resume lost, if it was not exact.
    pub(crate) gap: Option<Gap>,
}

/// What [`Subscription::poll_events`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// Events were handed to the sink.
    Events,
    /// Nothing more will come: the subscriber was closed (after everything published before a
    /// shutdown was taken).
    Closed(Closed),
}

/// Reads, from an event of one of two linked topics, the position the other topic had reached
/// when it was published (see [`Subscription::link_causally`]).
pub(crate) type ReadsAfter = fn(&Event) -> Option<EventId>;

/// One subscriber's subscription to one or more topics: its reader on each.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
    topics: Vec<SubscribedTopic>,
    /// For two topics published with each other's position: hand no event before the events
    /// of the other topic it was published after.
    causal: Option<ReadsAfter>,
    /// What the resume lost on some topics: (index in `topics`, gap).
    gaps: Vec<(u16, Gap)>,
    /// The topic to read first next time, so no topic starves the others.
    next_topic: usize,
    /// How long to gather events after taking some.
    pacing: Arc<WritePacing>,
    /// When events were last taken.
    events_taken: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Subscription {
    /// An empty subscription with room for `topics` topics (so a stream's per-connection
    /// state is no larger than it needs).
    pub(super) fn new(
        subscriber: Arc<Subscriber>,
        topics: usize,
        pacing: Arc<WritePacing>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Subscription {
            subscriber,
            topics: Vec::with_capacity(topics),
            gaps: Vec::new(),
            next_topic: 0,
            causal: None,
            pacing,
            events_taken: None,
            metrics,
        }
    }

    /// Whether the writer should hold back and gather more events before it takes them:
    /// `Some(deadline)` while it took events less than the write delay ago and its backlog on
    /// every topic is under a share of its lag bounds. The task is then woken when a backlog
    /// reaches that share; the caller wakes it at the deadline. A quiet stream (nothing taken
    /// within the delay) never waits, so a lone event is written at once.
    pub(crate) fn gather(&mut self, cx: &mut Context<'_>, now: Instant) -> Option<Instant> {
        let delay = self.pacing.delay();
        let due = self.events_taken? + delay;
        if now >= due {
            return None;
        }
        self.subscriber.register(cx.waker());
        if self.subscriber.closed().is_some() {
            return None;
        }
        let mut over = false;
        for t in &self.topics {
            over |= t.topic.gather(&t.reader, (t.cursor, t.cursor_end));
        }
        (!over).then_some(due)
    }

    /// Links a subscription's two topics causally: an event of one that says (by `reads_after`)
    /// which position of the other it was published after is handed over only once the other
    /// topic's events up to that position have been. A client that resumes from any event it
    /// was sent, on both topics from the positions that event names, then misses nothing.
    ///
    /// This never stalls: the other topic's next event was published before this one, so it
    /// was published after an earlier position of this topic, which was already handed over.
    pub(crate) fn link_causally(&mut self, reads_after: ReadsAfter) {
        self.causal = Some(reads_after);
    }

    /// Whether the next event of topic `index` must wait for the other linked topic.
    fn waits_for_other(&self, index: usize, event: &Event) -> bool {
        let Some(reads_after) = self.causal.filter(|_| self.topics.len() == 2) else {
            return false;
        };
        let Some(after) = reads_after(event) else { return false };
        let other = &self.topics[1 - index];
        // Positions of another copy of the topic (another epoch) cannot be compared.
        after.epoch == other.topic.epoch() && after.seq > other.cursor
    }

    /// Whether topic `index` has an event to hand over now.
    fn has_ready_event(&self, index: usize) -> bool {
        let t = &self.topics[index];
        if t.topic.head().seq == t.cursor {
            return false;
        }
        let guard = epoch::pin();
        t.topic.event(t.cursor + 1, &guard).is_none_or(|event| !self.waits_for_other(index, event))
    }

    /// Subscribes to one more of the topics the subscription starts with; records its gap, if
    /// any, for the opening notice.
    pub(super) fn start_on(
        &mut self,
        sequencer: &Sequencer,
        name: &TopicName,
        resume: Option<EventId>,
    ) -> Result<(), SubscribeError> {
        if let Some(gap) = self.follow(sequencer, name, resume)? {
            self.gaps.push((self.topics.len() as u16 - 1, gap));
        }
        Ok(())
    }

    /// Subscribes to one more topic (at the end of the topic list); returns its gap, if any.
    fn follow(
        &mut self,
        sequencer: &Sequencer,
        name: &TopicName,
        resume: Option<EventId>,
    ) -> Result<Option<Gap>, SubscribeError> {
        let topic_index = self.topics.len() as u16;
        // A copy dropped for idleness between the lookup and the subscribe is looked up again:
        // the next lookup finds (or makes) the current one.
        let (topic, start) = loop {
            let topic = sequencer.topic(name)?;
            if let Ok(start) = topic.subscribe(&self.subscriber, topic_index, resume) {
                break (topic, start);
            }
        };
        self.metrics.subscriptions.increment(1);
        self.topics.push(SubscribedTopic {
            topic,
            slot: start.slot,
            reader: start.reader,
            start: start.position,
            cursor: start.position.seq,
            cursor_end: start.position_end,
        });
        Ok(start.gap)
    }

    /// Adds a topic to a live subscription (a WebSocket `subscribe` command), resuming after
    /// `last_event_id` if given; in cluster mode after [`Hub::prepare_topic`](super::Hub::prepare_topic).
    pub(crate) fn add_topic(
        &mut self,
        hub: &super::Hub,
        name: TopicName,
        last_event_id: Option<EventId>,
    ) -> Result<Added, SubscribeError> {
        if self.topics.iter().any(|t| t.topic.name() == &name) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        let max = hub.config.max_topics_per_stream;
        if self.topics.len() >= max {
            return Err(SubscribeError::TooManyTopics { count: max + 1, max });
        }
        let gap = self.follow(&hub.sequencer, &name, last_event_id).inspect_err(|e| {
            if let SubscribeError::TopicLimit(_) = e {
                self.metrics.rejected(crate::metrics::Rejection::TopicLimit);
            }
        })?;
        let position = self.topics[self.topics.len() - 1].start;
        Ok(Added { position, gap })
    }

    /// Stops following a topic; returns whether it was followed.
    pub(crate) fn remove_topic(&mut self, name: &str) -> bool {
        let Some(index) = self.topics.iter().position(|t| t.topic.name().as_str() == name) else {
            return false;
        };
        let removed = self.topics.swap_remove(index);
        removed.topic.unsubscribe(removed.slot, &removed.reader);
        self.metrics.subscriptions.decrement(1);
        self.next_topic = 0;
        true
    }

    /// How many topics are followed; the `topic_index` given to a sink is below it.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Where the stream started on each topic, in canonical order: just before the first event
    /// it delivers.
    pub fn start_positions(&self) -> Vec<EventId> {
        self.topics.iter().map(|t| t.start).collect()
    }

    /// What the resume lost on each topic where it was not exact, with the position the
    /// stream continues after: what a `crier.gap` notice says.
    pub(crate) fn gaps(&self) -> Vec<TopicGap<'_>> {
        self.gaps
            .iter()
            .map(|(index, gap)| {
                let topic = &self.topics[usize::from(*index)];
                TopicGap { topic: topic.topic.name(), gap, resumed_after: topic.start }
            })
            .collect()
    }

    /// Whether the subscriber was closed, and why.
    pub(crate) fn closed(&self) -> Option<Closed> {
        self.subscriber.closed()
    }

    /// Stops delivery (see [`Subscriber::close`]).
    pub(crate) fn close(&self, why: Closed) {
        self.subscriber.close(why);
    }

    /// Hands `sink` every event published after the cursors (about `budget` bytes of the
    /// subscriber's wire format at most), oldest first per topic, with the index of its topic; or
    /// parks the task until there is more.
    ///
    /// A subscription whose next event the log no longer holds is evicted here rather than
    /// skipping ahead. After a shutdown, it reports `Closed(Shutdown)` once it has handed over
    /// everything published before.
    pub fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
        budget: usize,
        mut sink: impl FnMut(u16, &Event),
    ) -> Poll<Polled> {
        self.subscriber.register(cx.waker());
        let closed = self.subscriber.closed();
        if closed == Some(Closed::Evicted) {
            return Poll::Ready(Polled::Closed(Closed::Evicted));
        }
        let wire = self.subscriber.wire();
        let mut moving = Vec::new();
        loop {
            let mut taken = 0;
            let mut lapped = false;
            {
                let guard = epoch::pin();
                let count = self.topics.len();
                for i in 0..count {
                    let index = (self.next_topic + i) % count;
                    let t = &self.topics[index];
                    // Read before the head: once a copy is replaced, its head is final.
                    let replaced = t.topic.successor().is_some();
                    let head = t.topic.head().seq;
                    let (before, before_end) = (t.cursor, t.cursor_end);
                    // The bytes taken from this topic are where its stream now ends, less where
                    // it ended: one read per event.
                    let taken_before = taken;
                    while self.topics[index].cursor < head && taken < budget {
                        let t = &self.topics[index];
                        let Some(event) = t.topic.event(t.cursor + 1, &guard) else {
                            lapped = true;
                            break;
                        };
                        if self.waits_for_other(index, event) {
                            break;
                        }
                        let t = &mut self.topics[index];
                        sink(t.reader.topic_index, event);
                        t.cursor += 1;
                        t.cursor_end = event.stream_end(wire);
                        taken = taken_before + (t.cursor_end - before_end) as usize;
                    }
                    let t = &mut self.topics[index];
                    if t.cursor != before {
                        t.reader.set_position(t.cursor, t.cursor_end);
                        // Frames are never empty, but a step must count even if one were.
                        taken = taken.max(taken_before + 1);
                    }
                    if replaced && t.cursor == head && !lapped {
                        moving.push(index);
                    }
                }
                self.next_topic = (self.next_topic + 1) % count.max(1);
            }
            for index in moving.drain(..) {
                taken += self.move_over(index, &mut sink);
            }
            if lapped {
                if self.subscriber.close(Closed::Evicted) {
                    self.metrics.evicted(Transport::of(wire), EvictReason::SlowConsumer);
                }
                return Poll::Ready(Polled::Closed(Closed::Evicted));
            }
            if taken > 0 {
                self.events_taken = Some(Instant::now());
                return Poll::Ready(Polled::Events);
            }
            if closed == Some(Closed::Shutdown) {
                return Poll::Ready(Polled::Closed(Closed::Shutdown));
            }
            // Park, then look once more: an event published before we registered must not
            // wait for the next one.
            for t in &self.topics {
                t.topic.register_waiter(&t.reader);
            }
            if (0..self.topics.len()).all(|index| {
                !self.has_ready_event(index) && self.topics[index].topic.successor().is_none()
            }) {
                return Poll::Pending;
            }
        }
    }

    /// Moves the reader of topic `index`, which has read everything of a replaced copy, to the
    /// copy that replaced it, handing `sink` the gap notice if events were lost in between;
    /// returns the bytes handed over.
    fn move_over(&mut self, index: usize, sink: &mut impl FnMut(u16, &Event)) -> usize {
        let t = &mut self.topics[index];
        let Some(next) = t.topic.successor() else { return 0 };
        let topic_index = t.reader.topic_index;
        let topic = next.topic.clone();
        let guard = epoch::pin();
        let Ok(start) =
            topic.subscribe_after(&self.subscriber, topic_index, next.start.seq, &guard)
        else {
            // The new copy was dropped before this reader came over (it stalled for longer
            // than a topic may stay idle): it reconnects and resumes.
            if self.subscriber.close(Closed::Evicted) {
                self.metrics
                    .evicted(Transport::of(self.subscriber.wire()), EvictReason::SlowConsumer);
            }
            return 0;
        };
        drop(guard);
        let notice = next.notice.clone();
        t.topic.unsubscribe(t.slot, &t.reader);
        *t = SubscribedTopic {
            topic,
            slot: start.slot,
            reader: start.reader,
            start: t.start,
            cursor: start.position.seq,
            cursor_end: start.position_end,
        };
        match notice {
            Some(notice) => {
                sink(topic_index, &notice);
                notice.frames.len(self.subscriber.wire())
            }
            None => 0,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for t in &self.topics {
            t.topic.unsubscribe(t.slot, &t.reader);
        }
        self.metrics.subscriptions.decrement(self.topics.len() as f64);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topics: Vec<&TopicName> = self.topics.iter().map(|t| t.topic.name()).collect();
        f.debug_struct("Subscription")
            .field("topics", &topics)
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}
