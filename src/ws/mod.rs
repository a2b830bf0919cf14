//! The WebSocket edge: `GET /ws` (events of the topics followed, JSON commands) and
//! `GET /ws/echo` (echoes every message: the conformance target).
//!
//! The handshake is validated and answered by the HTTP service ([`handshake`]); after the
//! `101`, a [`session::Session`] owns the connection. Events are framed once per format
//! ([`event_frame`]) and every subscriber writes the same bytes: server frames are unmasked.
//!
//! Formats (`?format=`): `json` (default), one text frame per event,
//! `{"topic":"T","id":"…","event":"NAME"|null,"data":"…"}` with `"encoding":"base64"` added for
//! binary data; `raw`, the bare data, as a text frame (text) or a binary frame (binary).

pub mod close;
pub mod command;
pub mod frame;
pub mod handshake;
pub mod inbound;
pub mod message;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;

use crate::error::ApiError;
use crate::event::{Event, EventData, EventId};
use crate::metrics::Transport;
use crate::server::App;
use crate::server::body::ResponseBody;
use crate::server::conn::{ConnControl, ControlledConnection};
use crate::server::stream_query::{StreamQuery, subscribe_error};
use frame::{OP_BINARY, OP_TEXT};
use session::{HubRole, Limits, Role, Session};

pub(crate) use crate::server::stream_query::subscribe_error_code;

/// How events are framed on a `/ws` connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON text frame per event, with its topic, id and name.
    Json = 0,
    /// The bare data: a text frame for text, a binary frame for binary data.
    Raw = 1,
}

impl Format {
    fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("json") => Ok(Format::Json),
            Some("raw") => Ok(Format::Raw),
            Some(other) => Err(ApiError::bad_request(
                "bad_format",
                format!("format {other:?} is not json or raw"),
            )),
        }
    }
}

/// The frame that carries `event` in `format`: encoded by the first writer that needs it and
/// shared by every other.
pub fn event_frame(event: &Event, format: Format) -> &Bytes {
    event.ws_frames[format as usize].get_or_init(|| match format {
        Format::Json => {
            let data = json_data(&event.data);
            let payload = json_event(
                event.topic.as_str(),
                event.id,
                event.name.as_ref().map(|n| n.as_str()),
                &data,
            );
            frame::encode(OP_TEXT, &payload)
        }
        Format::Raw => match &event.data {
            EventData::Text(text) => frame::encode(OP_TEXT, text),
            EventData::Binary(bytes) => frame::encode(OP_BINARY, bytes),
        },
    })
}

/// Data as a JSON frame carries it: text as is, binary in base64.
enum JsonData<'a> {
    Text(&'a str),
    Base64(String),
}

fn json_data(data: &EventData) -> JsonData<'_> {
    match data {
        EventData::Text(text) => JsonData::Text(std::str::from_utf8(text).unwrap_or_default()),
        EventData::Binary(bytes) => {
            JsonData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

fn json_event(topic: &str, id: EventId, name: Option<&str>, data: &JsonData<'_>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct JsonEvent<'a> {
        topic: &'a str,
        id: String,
        event: Option<&'a str>,
        data: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<&'static str>,
    }
    let (data, encoding) = match data {
        JsonData::Text(text) => (*text, None),
        JsonData::Base64(encoded) => (encoded.as_str(), Some("base64")),
    };
    let event = JsonEvent { topic, id: id.to_string(), event: name, data, encoding };
    serde_json::to_vec(&event).unwrap_or_default()
}

/// The frame of a `crier.gap` notice for `topic`, resumed after `position`: shaped like an
/// event named `crier.gap` whose data is the notice (the same JSON as on SSE).
pub fn gap_frame(topic: &str, position: EventId, notice: &str, format: Format) -> Bytes {
    match format {
        Format::Json => {
            let payload = json_event(topic, position, Some("crier.gap"), &JsonData::Text(notice));
            frame::encode(OP_TEXT, &payload)
        }
        Format::Raw => frame::encode(OP_TEXT, notice.as_bytes()),
    }
}

/// Answers a WebSocket handshake on `/ws` (or `/ws/echo` when `echo`), and starts the session
/// once the connection is upgraded.
pub(crate) async fn handle<B>(
    app: &Arc<App>,
    req: &mut Request<B>,
    peer: SocketAddr,
    echo: bool,
) -> Result<http::Response<ResponseBody>, ApiError> {
    let accept = handshake::validate(
        req.method(),
        req.version(),
        req.headers(),
        &app.config.allowed_origins,
    )?;
    let role = if echo {
        Role::Echo
    } else {
        let query = StreamQuery::parse(req.uri().query(), None)?;
        let format = Format::parse(query.format.as_deref())?;
        app.hub
            .prepare(&query.topics, query.last_event_id.as_deref())
            .await
            .map_err(subscribe_error)?;
        let subscription = app
            .hub
            .subscribe(query.topics, query.last_event_id.as_deref(), Transport::Ws, None)
            .map_err(subscribe_error)?;
        let opening = subscription
            .gap_notices()
            .into_iter()
            .map(|(topic, position, notice)| gap_frame(&topic, position, &notice, format))
            .collect();
        let may_publish = crate::server::is_local_publisher(peer, req.headers());
        let commands_per_sec = app.config.ws_commands_per_sec;
        Role::Hub(Box::new(HubRole::new(
            app.hub.clone(),
            subscription,
            format,
            opening,
            may_publish,
            commands_per_sec,
        )))
    };
    let on_upgrade = hyper::upgrade::on(req);
    let app = app.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let limits = Limits {
            max_message: app.config.max_message_bytes,
            heartbeat: app.config.heartbeat,
            commands_per_sec: app.config.ws_commands_per_sec,
            max_event_bytes: app.config.max_event_bytes,
            write_delay: app.config.write_delay,
        };
        let mut session = Session::new(TokioIo::new(upgraded), role, limits, app.metrics.clone());
        // The session outlives the HTTP connection's task: it is tracked on its own so
        // shutdown reaches it.
        let control = Arc::new(ConnControl::default());
        let key = app.tracker.add(control.clone());
        if app.hub.is_draining() {
            session.start_shutdown();
        }
        let drain = |session: std::pin::Pin<&mut Session<_>>| session.get_mut().start_shutdown();
        ControlledConnection::new(session, control, drain).await;
        app.tracker.remove(key);
    });
    Ok(handshake::switching_protocols(&accept))
}
