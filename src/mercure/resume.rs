//! Where a Mercure subscriber starts: which of the hub's logs it follows (updates, and with
//! `--mercure-subscriptions` subscription events, kept apart so a crowd coming and going never
//! pushes an update out of history) and its position on each, resuming by Mercure id as the
//! reference hub does.
//!
//! A stream of both logs is linked causally: each event names where the other log was when it
//! was published, the stream sends it after that, and a resume from it reads the other log
//! from there. So a resume never misses an event; it may repeat a few of the other log's that
//! were published while this one was.

use std::sync::Arc;

use crate::codec::mercure::{self, MercureUpdate};
use crate::event::{Event, EventId, TopicName, Wire};
use crate::hub::{Hub, SubscriptionRequest};

use super::selector::MercureSelector;

/// The `Last-Event-ID` that asks for every update the hub holds.
pub(super) const EARLIEST: &str = "earliest";

/// The hub's logs.
pub(super) struct MercureLogs {
    /// Updates.
    pub(super) updates: TopicName,
    /// Subscription events, when they are published.
    pub(super) subscriptions: Option<TopicName>,
}

/// Where a subscriber starts.
pub(super) struct Start {
    /// Each log it follows, and the position it starts after (live if none).
    pub(super) positions: Vec<(TopicName, Option<EventId>)>,
    /// The id it resumes from, when it asked to resume (the `Last-Event-ID` response header).
    pub(super) resumed_from: Option<String>,
}

impl MercureLogs {
    /// The logs events matching `selectors` could be in (at least one).
    pub(super) fn followed_by(&self, selectors: &[Arc<MercureSelector>]) -> Vec<TopicName> {
        let mut logs = Vec::with_capacity(2);
        if selectors.iter().any(|s| s.may_match_updates()) {
            logs.push(self.updates.clone());
        }
        if let Some(log) = &self.subscriptions
            && selectors.iter().any(|s| s.may_match_subscription_events())
        {
            logs.push(log.clone());
        }
        if logs.is_empty() {
            logs.push(self.updates.clone());
        }
        logs
    }

    /// Where a subscriber to `logs` starts: after `requested` if it resumes, else live (on the
    /// subscriptions log, after its own `arrival`, so it is not told of itself).
    pub(super) fn start(
        &self,
        hub: &Hub,
        logs: Vec<TopicName>,
        requested: Option<&str>,
        arrival: Option<EventId>,
    ) -> Start {
        let Some(requested) = requested else {
            let positions = logs
                .into_iter()
                .map(|log| {
                    let start = arrival.filter(|_| Some(&log) == self.subscriptions.as_ref());
                    (log, start)
                })
                .collect();
            return Start { positions, resumed_from: None };
        };
        let (positions, resumed_from) = find_resume(hub, &logs, requested);
        Start { positions, resumed_from: Some(resumed_from) }
    }
}

/// Where `log` is on this node, as an event's [`after`](crate::codec::mercure::Record::after)
/// names it.
pub(super) fn reached(hub: &Hub, log: &TopicName) -> Option<String> {
    hub.head(log.as_str()).map(|head| head.to_string())
}

impl Start {
    /// The hub subscription that starts there.
    pub(super) fn request(self) -> SubscriptionRequest {
        let linked = self.positions.len() == 2;
        let request = SubscriptionRequest::starting_at(self.positions, Wire::Sse);
        if linked { request.linked_causally(mercure::reads_after) } else { request }
    }
}

/// Where a subscriber resuming after Mercure id `requested` starts on each of `logs`, and the
/// id it resumes from, as the reference hub decides: `earliest` replays everything held; a
/// known id replays what followed its oldest occurrence held (a publisher may reuse ids: the
/// oldest never skips an update the client has not seen), and the other log from where it was
/// then; an unknown id replays nothing and names the last update held (or `earliest`).
fn find_resume(
    hub: &Hub,
    logs: &[TopicName],
    requested: &str,
) -> (Vec<(TopicName, Option<EventId>)>, String) {
    // Before the oldest event held: the resume starts at the oldest.
    let oldest = |log: &TopicName| hub.head(log.as_str()).map(|head| EventId { seq: 0, ..head });
    if requested == EARLIEST {
        let positions = logs.iter().map(|log| (log.clone(), oldest(log))).collect();
        return (positions, EARLIEST.to_owned());
    }
    let mut last_held = None;
    for (index, log) in logs.iter().enumerate() {
        let mut last = None;
        let mut found = None;
        hub.visit_held(log.as_str(), |event: &Event| {
            let Some(update) = event.frames.attachment::<MercureUpdate>() else { return true };
            if *update.id == *requested {
                found = Some((event.id, update.after));
                return false;
            }
            last = Some(update.id.clone());
            true
        });
        if let Some((at, other_at)) = found {
            let positions = logs
                .iter()
                .enumerate()
                .map(|(other, log)| match other == index {
                    true => (log.clone(), Some(at)),
                    // Named by the event, or (if it names none) all the other log holds.
                    false => (log.clone(), other_at.or_else(|| oldest(log))),
                })
                .collect();
            return (positions, requested.to_owned());
        }
        last_held = last_held.or(last);
    }
    let positions = logs.iter().map(|log| (log.clone(), hub.head(log.as_str()))).collect();
    (positions, last_held.map_or_else(|| EARLIEST.to_owned(), String::from))
}
