//! The socket a WebSocket session runs on once hyper hands it over: on a plain connection, the
//! TCP socket itself, taken back out of hyper's upgraded I/O (no boxed I/O object and no
//! buffer held per idle session); over TLS, hyper's upgraded I/O.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::rewind::Rewind;

/// A session's socket: the plain socket hyper served, or hyper's upgraded I/O.
pub(crate) type UpgradedIo = Either<Rewind<TcpStream>, TokioIo<Upgraded>>;

/// The socket under `upgraded`, with the bytes hyper read past the handshake put back in front.
pub(crate) fn io_of(upgraded: Upgraded) -> UpgradedIo {
    match upgraded.downcast::<TokioIo<Rewind<TcpStream>>>() {
        Ok(parts) => {
            let mut socket = parts.io.into_inner();
            socket.put_back(&parts.read_buf);
            Either::Left(socket)
        }
        Err(upgraded) => Either::Right(TokioIo::new(upgraded)),
    }
}
