//! A socket with bytes already read from it put back in front, so hyper can parse a request
//! that the server looked at first.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, read as if `prefix` had not been consumed yet.
pub(crate) struct Rewind<T> {
    prefix: Vec<u8>,
    consumed: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind { prefix, consumed: 0, inner }
    }

    /// Whether what is still to be read from the prefix starts with `bytes`.
    pub(crate) fn starts_with(&self, bytes: &[u8]) -> bool {
        self.prefix[self.consumed..].starts_with(bytes)
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub(crate) fn put_back(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut prefix = Vec::with_capacity(bytes.len() + self.prefix.len() - self.consumed);
        prefix.extend_from_slice(bytes);
        prefix.extend_from_slice(&self.prefix[self.consumed..]);
        (self.prefix, self.consumed) = (prefix, 0);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.consumed < self.prefix.len() {
            let rest = &self.prefix[self.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.consumed += n;
            if self.consumed == self.prefix.len() {
                // Release the buffer for the rest of the connection.
                self.prefix = Vec::new();
                self.consumed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world").await.unwrap();
        drop(client);
        let mut rewound = Rewind::new(b"hello".to_vec(), server);
        let mut out = String::new();
        rewound.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn bytes_put_back_are_read_first() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"!").await.unwrap();
        drop(client);
        let mut rewound = Rewind::new(b"--world".to_vec(), server);
        let mut first = [0u8; 2];
        rewound.read_exact(&mut first).await.unwrap();
        rewound.put_back(b"hello ");
        let mut out = String::new();
        rewound.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world!");
        rewound.put_back(b"");
    }
}
