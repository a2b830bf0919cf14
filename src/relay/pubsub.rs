//! A dedicated Pub/Sub connection to one Redis node, spoken in RESP2 directly: classic
//! channels (`SUBSCRIBE`) on a single Redis, shard channels (`SSUBSCRIBE`) on a Redis Cluster.
//!
//! The relay subscribes and unsubscribes thousands of channels in bursts, so a batch is written
//! as one buffer of commands (one round trip, however many channels) followed by a `PING` whose
//! token comes back once Redis has confirmed everything written before it.
//! (redis-rs's Pub/Sub connection has no shard channels, and its cluster connection forgets a
//! shard subscription that Redis drops when a slot moves; here the relay sees every change.)

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use redis::{ConnectionAddr, ConnectionInfo};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Decoder, FramedRead};

/// How long connecting (and authenticating) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Most channels named in one subscribe command (a burst is split, still written at once).
const CHANNELS_PER_COMMAND: usize = 1024;

/// Which kind of channel a connection subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// `SUBSCRIBE`: a single Redis.
    Classic,
    /// `SSUBSCRIBE`: a Redis Cluster shard; one command names channels of one slot only.
    Sharded,
}

/// What Redis sends a subscribed connection.
#[derive(Debug)]
pub(super) enum Push {
    /// A message published on a channel.
    Message { channel: Bytes, payload: Bytes },
    /// A subscription ended: one the relay asked to end, or one Redis dropped (on a Redis
    /// Cluster, because the channel's slot moved to another node).
    Unsubscribed(Bytes),
    /// The answer to a `PING` with this token.
    Pong(Bytes),
    /// A command refused (`-MOVED …` on a Redis Cluster).
    Refused(String),
}

/// Why a Pub/Sub connection failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum PubSubError {
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out connecting")]
    Timeout,
    #[error("Redis refused to authenticate: {0}")]
    Auth(String),
    #[error("not a Redis reply: {0}")]
    Protocol(String),
    #[error("only TCP addresses are supported for Pub/Sub")]
    Address,
}

/// The half of a connection that sends commands.
pub(super) struct PubSubWriter {
    socket: OwnedWriteHalf,
    flavor: Flavor,
    buffer: Vec<u8>,
}

/// The half of a connection that receives what Redis sends.
pub(super) type Pushes = FramedRead<OwnedReadHalf, PushCodec>;

/// Connects to the node of `info`, authenticates if it names credentials, and splits the
/// connection.
pub(super) async fn connect(
    info: &ConnectionInfo,
    flavor: Flavor,
) -> Result<(PubSubWriter, Pushes), PubSubError> {
    let ConnectionAddr::Tcp(host, port) = info.addr() else { return Err(PubSubError::Address) };
    let connecting = async {
        let mut socket = TcpStream::connect((host.as_str(), *port)).await?;
        socket.set_nodelay(true)?;
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            socket.write_all(&auth.get_packed_command()).await?;
            let mut buffer = BytesMut::with_capacity(64);
            loop {
                if socket.read_buf(&mut buffer).await? == 0 {
                    return Err(PubSubError::Auth("the connection closed".to_owned()));
                }
                match decode_bytes_mut(&mut buffer) {
                    Ok(None) => continue,
                    Ok(Some((BytesFrame::SimpleString(_), _, _))) => break,
                    Ok(Some((BytesFrame::Error(e), _, _))) => {
                        return Err(PubSubError::Auth(e.to_string()));
                    }
                    Ok(Some((other, _, _))) => {
                        return Err(PubSubError::Protocol(format!("{other:?}")));
                    }
                    Err(e) => return Err(PubSubError::Protocol(e.to_string())),
                }
            }
        }
        Ok::<_, PubSubError>(socket)
    };
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| PubSubError::Timeout)??;
    let (read, write) = socket.into_split();
    let writer = PubSubWriter { socket: write, flavor, buffer: Vec::new() };
    Ok((writer, FramedRead::new(read, PushCodec)))
}

impl PubSubWriter {
    /// Queues a subscription to `channels` (on a Redis Cluster, all of one slot).
    pub(super) fn subscribe<'a>(&mut self, channels: impl IntoIterator<Item = &'a [u8]>) {
        let name = match self.flavor {
            Flavor::Classic => "SUBSCRIBE",
            Flavor::Sharded => "SSUBSCRIBE",
        };
        self.command(name, channels);
    }

    /// Queues the end of the subscriptions to `channels` (on a Redis Cluster, all of one slot).
    pub(super) fn unsubscribe<'a>(&mut self, channels: impl IntoIterator<Item = &'a [u8]>) {
        let name = match self.flavor {
            Flavor::Classic => "UNSUBSCRIBE",
            Flavor::Sharded => "SUNSUBSCRIBE",
        };
        self.command(name, channels);
    }

    /// Queues a `PING` whose answer carries `token`.
    pub(super) fn ping(&mut self, token: u64) {
        let mut digits = itoa::Buffer::new();
        self.command("PING", [digits.format(token).as_bytes()]);
    }

    fn command<'a>(&mut self, name: &str, args: impl IntoIterator<Item = &'a [u8]>) {
        encode(&mut self.buffer, name, args);
    }

    /// Writes everything queued, in one write where the socket takes it.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        let result = self.socket.write_all(&self.buffer).await;
        self.buffer.clear();
        if self.buffer.capacity() > 64 << 10 {
            self.buffer = Vec::new();
        }
        result
    }
}

/// Appends `name` with `args` to `buffer`, as several commands of at most
/// [`CHANNELS_PER_COMMAND`] arguments each.
fn encode<'a>(buffer: &mut Vec<u8>, name: &str, args: impl IntoIterator<Item = &'a [u8]>) {
    let mut args = args.into_iter().peekable();
    while args.peek().is_some() {
        let mut cmd = redis::cmd(name);
        for arg in args.by_ref().take(CHANNELS_PER_COMMAND) {
            cmd.arg(arg);
        }
        cmd.write_packed_command(buffer);
    }
}

/// Decodes RESP2 replies into [`Push`]es; a payload is a view into the read buffer (whoever
/// keeps it copies it).
pub(super) struct PushCodec;

impl Decoder for PushCodec {
    type Item = Push;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Push>, std::io::Error> {
        loop {
            let frame = match decode_bytes_mut(src) {
                Ok(Some((frame, _, _))) => frame,
                Ok(None) => {
                    src.reserve(4096);
                    return Ok(None);
                }
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            };
            if let Some(push) = Push::from_frame(frame)? {
                return Ok(Some(push));
            }
        }
    }
}

impl Push {
    /// What `frame` says; `None` for what the relay does not act on.
    fn from_frame(frame: BytesFrame) -> Result<Option<Push>, std::io::Error> {
        let bad = |what: &str| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected {what}"))
        };
        let items = match frame {
            BytesFrame::Array(items) => items,
            BytesFrame::Error(e) => return Ok(Some(Push::Refused(e.to_string()))),
            // A `PING` before the first subscription is answered as by any connection.
            BytesFrame::BulkString(token) => return Ok(Some(Push::Pong(token))),
            // `+OK` and the like: nothing to act on.
            BytesFrame::SimpleString(_) => return Ok(None),
            other => return Err(bad(&format!("{other:?}"))),
        };
        let mut items = items.into_iter();
        let Some(BytesFrame::BulkString(kind)) = items.next() else {
            return Err(bad("a push without a kind"));
        };
        let mut next_bytes = || match items.next() {
            Some(BytesFrame::BulkString(bytes)) => Some(bytes),
            _ => None,
        };
        let push = match &kind[..] {
            b"message" | b"smessage" => {
                let channel = next_bytes().ok_or_else(|| bad("a message without a channel"))?;
                let payload = next_bytes().ok_or_else(|| bad("a message without a payload"))?;
                Push::Message { channel, payload }
            }
            // Confirmations: the ping written after them says when all are in.
            b"subscribe" | b"ssubscribe" => return Ok(None),
            b"unsubscribe" | b"sunsubscribe" => match next_bytes() {
                Some(channel) => Push::Unsubscribed(channel),
                None => return Ok(None),
            },
            b"pong" => Push::Pong(next_bytes().unwrap_or_default()),
            _ => return Ok(None),
        };
        Ok(Some(push))
    }
}

/// A stream of pushes tagged with the node they come from, ending with `None` when the
/// connection ends (so whoever merges several learns which one ended).
pub(super) struct Tagged<K> {
    node: K,
    pushes: Option<Pushes>,
}

impl<K> Tagged<K> {
    pub(super) fn new(node: K, pushes: Pushes) -> Self {
        Tagged { node, pushes: Some(pushes) }
    }
}

impl<K: Clone + Unpin> Stream for Tagged<K> {
    type Item = (K, Option<Result<Push, std::io::Error>>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(pushes) = this.pushes.as_mut() else { return Poll::Ready(None) };
        match Pin::new(pushes).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => Poll::Ready(Some((this.node.clone(), Some(item)))),
            Poll::Ready(None) => {
                this.pushes = None;
                Poll::Ready(Some((this.node.clone(), None)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Writes `arg` as a RESP bulk string.
    fn bulk(out: &mut BytesMut, arg: &[u8]) {
        out.put_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }

    fn array(items: &[&[u8]]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_slice(format!("*{}\r\n", items.len()).as_bytes());
        for item in items {
            bulk(&mut out, item);
        }
        out
    }

    #[test]
    fn pushes_decode_from_partial_input() {
        let mut whole = array(&[b"smessage", b"crier:{t}:ev", b"crier1 x"]);
        whole.extend_from_slice(&array(&[b"sunsubscribe", b"crier:{t}:ev"]));
        whole.extend_from_slice(b"-MOVED 12 127.0.0.1:7001\r\n");
        whole.extend_from_slice(&array(&[b"pong", b"7"]));
        let mut codec = PushCodec;
        let mut input = BytesMut::new();
        let mut pushes = Vec::new();
        for byte in whole {
            input.put_u8(byte);
            while let Some(push) = codec.decode(&mut input).unwrap() {
                pushes.push(push);
            }
        }
        assert!(matches!(&pushes[0], Push::Message { channel, payload }
            if &channel[..] == b"crier:{t}:ev" && &payload[..] == b"crier1 x"));
        assert!(matches!(&pushes[1], Push::Unsubscribed(c) if &c[..] == b"crier:{t}:ev"));
        assert!(matches!(&pushes[2], Push::Refused(e) if e.starts_with("MOVED 12")));
        assert!(matches!(&pushes[3], Push::Pong(t) if &t[..] == b"7"));
        assert_eq!(pushes.len(), 4);
    }

    #[test]
    fn a_burst_is_split_into_commands_of_bounded_size() {
        let channels: Vec<Vec<u8>> =
            (0..2500).map(|i| format!("crier:{{t{i}}}:ev").into_bytes()).collect();
        let mut buffer = Vec::new();
        encode(&mut buffer, "SUBSCRIBE", channels.iter().map(|c| &c[..]));
        let mut input = BytesMut::from(&buffer[..]);
        let mut commands = Vec::new();
        while let Some((BytesFrame::Array(args), _, _)) = decode_bytes_mut(&mut input).unwrap() {
            commands.push(args.len() - 1);
        }
        assert_eq!(commands, [1024, 1024, 452]);
        assert!(input.is_empty());
    }
}
