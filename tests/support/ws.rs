//! A WebSocket client for the tests (tokio-tungstenite): connect, read the next message within
//! the test deadline, send a JSON command and read its reply.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::WAIT;

pub type Ws = WebSocketStream<TcpStream>;

/// Opens `ws://addr{path}` and checks the 101.
pub async fn connect(addr: SocketAddr, path: &str) -> Ws {
    connect_with(addr, path, &[]).await
}

/// Opens `ws://addr{path}` with extra request headers and checks the 101.
pub async fn connect_with(addr: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> Ws {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}{path}").into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().expect("header value"));
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await.expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text or binary message (pings answered automatically), within the test deadline.
pub async fn next(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("valid frame");
        match message {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next message, as JSON.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Sends a command and returns the next message (its reply, when nothing else is due).
pub async fn command(ws: &mut Ws, command: Value) -> Value {
    ws.send(Message::text(command.to_string())).await.unwrap();
    next_json(ws).await
}
