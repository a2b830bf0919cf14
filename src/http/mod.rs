//! What every HTTP-facing part shares, below the edges and the server: the response body, the
//! one table of error codes (with their statuses, for HTTP errors and WebSocket command errors
//! alike), the query parsing, and who a request comes from and what its token allows.

mod body;
mod cors;
mod credentials;
mod error;
mod peer;
mod query;

pub(crate) use body::{ChunkStream, ResponseBody, StreamError, read_body};
pub(crate) use cors::CorsPolicy;
pub(crate) use credentials::{Admitted, Gate, Rates, TokenSource, request_token_from};
pub(crate) use error::{ApiError, ErrorCode, json_response};
pub(crate) use peer::{Client, TrustedProxies};
pub(crate) use query::{PublishQuery, StreamQuery};
