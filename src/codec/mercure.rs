//! Mercure updates on the wire: the logs they are kept in (internal logs: [`log`] for updates,
//! [`subscriptions_log`] for subscription events, so a crowd coming and going never pushes an
//! update out of the history a subscriber resumes from), the record
//! an update is stored and relayed as (JSON, the data of an event of that log, so Redis and the
//! relay carry it like any event), the SSE frame a Mercure subscriber gets, as the reference hub
//! writes it (`event:` if the update has a type, `retry:` if it has one, `id:`, then one
//! `data:` line per line of its data), and the [`MercureUpdate`] attached to the frame for
//! readers to decide by.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::sse::put_data_lines;
use crate::event::{Attachment, Event, EventData, EventId, TopicName};

/// The internal log every Mercure update goes to, in one order for the whole hub.
const LOG: &str = "mercure";

/// The internal log of the hub's subscription events (`--mercure-subscriptions`).
const SUBSCRIPTIONS_LOG: &str = "mercure-subscriptions";

/// The name of the Mercure log (`~mercure`).
pub(crate) fn log() -> TopicName {
    TopicName::internal(LOG).expect("a valid topic name")
}

/// The name of the log of subscription events (`~mercure-subscriptions`).
pub(crate) fn subscriptions_log() -> TopicName {
    TopicName::internal(SUBSCRIPTIONS_LOG).expect("a valid topic name")
}

/// Whether `topic` is one of the Mercure logs, whose events are framed here.
pub(crate) fn is_log(topic: &TopicName) -> bool {
    matches!(topic.as_str().strip_prefix('~'), Some(LOG | SUBSCRIPTIONS_LOG))
}

/// Where the other Mercure log was when an event of one was published (see
/// [`Record::after`]).
pub(crate) fn reads_after(event: &Event) -> Option<EventId> {
    event.frames.attachment::<MercureUpdate>().and_then(|update| update.after)
}

/// The routing part of a Mercure update, as a subscriber's writer sees it: what decides who
/// receives it (its topics, whether it is private) and the id a Mercure client resumes by.
/// Read once, when the update is appended to the log, and shared by every reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MercureUpdate {
    /// Unique in the process, never reused: what a selector remembers its last answer by.
    pub(crate) serial: u64,
    /// The update's id: the publisher's, or the one the hub drew.
    pub(crate) id: Box<str>,
    /// Its topics, canonical first.
    pub(crate) topics: Box<[Box<str>]>,
    /// Only subscribers whose `mercure.subscribe` claim matches one of its topics receive it.
    pub(crate) private: bool,
    /// [`Record::after`].
    pub(crate) after: Option<EventId>,
}

/// The next update's serial.
static SERIALS: AtomicU64 = AtomicU64::new(1);

impl MercureUpdate {
    /// A serial no other update of this process has.
    pub(crate) fn next_serial() -> u64 {
        SERIALS.fetch_add(1, Ordering::Relaxed)
    }
}

/// A Mercure update as the log stores it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    /// Its id.
    #[serde(borrow)]
    pub(crate) id: Cow<'a, str>,
    /// Its topics, canonical first.
    #[serde(borrow)]
    pub(crate) topics: Vec<Cow<'a, str>>,
    /// Whether it is private.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) private: bool,
    /// The SSE event type.
    #[serde(borrow, default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<Cow<'a, str>>,
    /// The reconnection time it sets, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry: Option<u64>,
    /// Its data.
    #[serde(borrow)]
    pub(crate) data: Cow<'a, str>,
    /// The last event of the other Mercure log when this one was published (as the publishing
    /// node saw it, which is never ahead): a stream of both logs sends it after that event, and
    /// one resuming from it reads the other log from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<String>,
}

impl Record<'_> {
    /// The record as the data of an event of the log.
    pub(crate) fn to_event_data(&self) -> EventData {
        EventData::from(serde_json::to_string(self).expect("strings and numbers serialize"))
    }
}

/// The SSE frame of an event of the Mercure log, and what its readers filter by (a
/// [`MercureUpdate`]); an empty frame and nothing attached if the data is not a record (nothing
/// crier wrote), which no reader delivers.
pub(crate) fn decode(data: &EventData) -> (Bytes, Option<Attachment>) {
    let Ok(record) = serde_json::from_slice::<Record<'_>>(data.bytes()) else {
        return (Bytes::new(), None);
    };
    let frame = frame(&record);
    let update = MercureUpdate {
        serial: MercureUpdate::next_serial(),
        id: record.id.into(),
        topics: record.topics.into_iter().map(Into::into).collect(),
        private: record.private,
        after: record.after.and_then(|after| after.parse().ok()),
    };
    (frame, Some(Box::new(update)))
}

/// The SSE frame of `record`.
pub(crate) fn frame(record: &Record<'_>) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + record.id.len() + record.data.len());
    if let Some(kind) = record.kind.as_deref().filter(|kind| !kind.is_empty()) {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(retry) = record.retry.filter(|&retry| retry != 0) {
        buf.put_slice(b"retry: ");
        buf.put_slice(itoa::Buffer::new().format(retry).as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"id: ");
    buf.put_slice(record.id.as_bytes());
    buf.put_u8(b'\n');
    put_data_lines(&mut buf, record.data.as_bytes());
    buf.put_u8(b'\n');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_into_the_reference_hubs_frame() {
        let record = Record {
            id: "urn:uuid:1".into(),
            topics: vec!["https://example.com/books/1".into(), "alt".into()],
            private: true,
            kind: Some("update".into()),
            retry: Some(1500),
            data: "line one\n\nline \"three\"\r\nfour".into(),
            after: Some("aup8nz3d-7".into()),
        };
        let data = record.to_event_data();
        let (frame, update) = decode(&data);
        assert_eq!(
            &frame[..],
            b"event: update\nretry: 1500\nid: urn:uuid:1\ndata: line one\ndata: \n\
              data: line \"three\"\ndata: four\n\n"
        );
        let update = update.unwrap();
        let update = update.downcast_ref::<MercureUpdate>().unwrap();
        assert_eq!(&*update.id, "urn:uuid:1");
        assert_eq!(update.topics.len(), 2);
        assert!(update.private);
        assert_eq!(update.after, "aup8nz3d-7".parse().ok());
        let plain = Record {
            id: "x".into(),
            topics: vec!["t".into()],
            private: false,
            kind: None,
            retry: None,
            data: "".into(),
            after: None,
        };
        assert_eq!(&decode(&plain.to_event_data()).0[..], b"id: x\ndata: \n\n");
        assert!(decode(&EventData::from(String::from("not json"))).1.is_none());
        assert!(is_log(&log()) && log().as_str() == "~mercure");
        assert!(is_log(&subscriptions_log()));
        assert!(!is_log(&TopicName::new("mercure").unwrap()));
    }
}
