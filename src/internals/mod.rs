//! What the benchmarks, fuzz targets and integration tests reach inside the crate: not a
//! stable API, and hidden from the documentation.

pub use crate::codec::envelope;
pub use crate::codec::sse::encode_event;

/// Encodes what a publish encodes: the SSE frame and every WebSocket frame's length.
pub fn encode_frames(
    topic: &TopicName,
    id: EventId,
    name: Option<&EventName>,
    data: &EventData,
) -> crate::event::Frames {
    crate::codec::Draft::new(topic, name, data).finish(id)
}
pub use crate::event::{
    Cursor, Epoch, EventData, EventId, EventName, IdError, IdempotencyKey, NameError, Text,
    TopicName, Wire,
};
pub use crate::hub::{
    Hub, HubConfig, Polled, PublishOptions, Published, Subscription, SubscriptionRequest, Ticket,
};
pub use crate::metrics::Metrics;
pub use crate::registry::Closed;
pub use crate::relay::{RelayConfig, RelayStartError};

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
