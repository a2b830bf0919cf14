//! What every HTTP-facing part shares, below the edges and the server: the routing table, the
//! one admission every gated request passes (with the one origin policy) and the one policy
//! every publish passes, the
//! response body, the one table of error codes (with their statuses, for HTTP errors and
//! WebSocket command errors alike), the query parsing, and who a request comes from and where
//! its token comes from.

mod admission;
mod body;
mod cors;
mod credentials;
mod error;
mod keyed_attempts;
mod origins;
mod peer;
mod publish_batch;
mod publish_policy;
mod query;
mod retry_later;
mod route;

pub(crate) use admission::{
    Admission, AdmissionRequest, Admitted, CorsHeaders, Refused, StreamRates, StreamSlot,
    WriteOrigins,
};
pub(crate) use body::{ChunkStream, ResponseBody, StreamError, body_late, read_body, too_large};
pub(crate) use cors::CorsPolicy;
pub(crate) use credentials::{TokenSource, request_token_from};
pub(crate) use error::{ApiError, ErrorCode, json_response};
pub(crate) use origins::{OriginPolicy, page_origin, request_host};
pub(crate) use peer::{Peer, TrustedProxies};
pub(crate) use publish_batch::{
    BatchEvent, BatchEvents, BatchOutcome, answer_json, parse_ndjson, publish_batch,
};
pub(crate) use publish_policy::{PublishLimits, PublishPolicy};
pub(crate) use retry_later::{Asker, RefusalForm, close_reason, event_stream_response};
pub(crate) use route::{
    GatedRoute, MERCURE_HUB_PATH, MERCURE_SUBSCRIPTIONS_PATH, OpenRoute, Route, Routes,
};
