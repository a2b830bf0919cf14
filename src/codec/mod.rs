//! Wire formats, a leaf that imports only [`event`](crate::event): SSE frames ([`sse`]), outbound
//! WebSocket frames ([`ws`]), the `crier.gap` notice ([`gap`]), the relay envelope between
//! nodes ([`envelope`]), and the framing of the one internal log that has its own, the Mercure
//! hub's ([`mercure`]).
//!
//! An event is encoded once per format and shared by every subscriber. Publishing encodes a
//! [`Draft`] before it takes the topic's order and finishes it with the id under the order, in a
//! few nanoseconds: the SSE frame is complete then, and the length of every WebSocket frame is
//! known, so each subscriber's lag can be counted in the bytes of its own wire format.

pub mod envelope;
pub(crate) mod gap;
pub(crate) mod mercure;
pub(crate) mod sse;
pub(crate) mod ws;

use crate::event::{EventData, EventId, EventName, Frames, TopicName};

/// An event's frames before its id is known.
#[derive(Debug)]
pub(crate) enum Draft {
    /// An event of crier's own API.
    Crier { sse: sse::SseBody, ws: ws::FrameLens },
    /// An event of a log with a framing of its own (the Mercure log's), whose frame carries
    /// that framing's id, not the log's.
    Own(Frames),
}

impl Draft {
    /// Encodes what does not depend on the id.
    pub(crate) fn new(topic: &TopicName, name: Option<&EventName>, data: &EventData) -> Self {
        if mercure::is_log(topic) {
            let (frame, update) = mercure::decode(data);
            return Draft::Own(Frames::sse_only(frame, update));
        }
        Draft::Crier { sse: sse::encode_body(name, data), ws: ws::FrameLens::of(topic, name, data) }
    }

    /// The frames of the event with id `id`.
    pub(crate) fn finish(self, id: EventId) -> Frames {
        match self {
            Draft::Crier { sse, ws } => {
                let (sse, sse_id_line) = sse.finish(id);
                let (ws_json, ws_raw) = ws.with_id(sse_id_line - sse::ID_LINE_OVERHEAD);
                Frames::new(sse, sse_id_line, ws_json, ws_raw)
            }
            Draft::Own(frames) => frames,
        }
    }
}
