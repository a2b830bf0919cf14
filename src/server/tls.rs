//! TLS at the edge (`--tls-cert`, `--tls-key`): rustls, with ALPN offering h2 and http/1.1 so
//! SSE runs over HTTP/2 with many streams on one connection, and a certificate that SIGHUP
//! reloads without touching open connections (each new handshake takes the current one).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The node's TLS: its acceptor and the certificate it presents.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
}

/// The certificate handshakes present, replaced whole on reload.
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

impl Tls {
    /// Reads the PEM certificate chain and private key.
    pub(crate) fn load(cert: &Path, key: &Path) -> io::Result<Self> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(cert, key)?))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Tls { acceptor, current, cert: cert.to_owned(), key: key.to_owned() })
    }

    /// Reads the files again: new handshakes present the new certificate; on an error the one
    /// in use stays.
    pub(crate) fn reload(&self) -> io::Result<()> {
        let fresh = certified_key(&self.cert, &self.key)?;
        *self.current.0.write() = Arc::new(fresh);
        Ok(())
    }

    /// The handshake of a new connection, within `timeout`; `None` if it failed or was late.
    /// A plain HTTP request is answered with a short 400 before the connection closes, as nginx
    /// answers it, so `curl http://` says why rather than nothing.
    pub(crate) async fn accept(
        &self,
        mut stream: TcpStream,
        timeout: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first = [0u8; 1];
        // A TLS connection opens with a handshake record (0x16); an HTTP request with a method.
        if let Ok(Ok(1)) = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await
            && first[0].is_ascii_uppercase()
        {
            let _ = tokio::time::timeout_at(deadline, answer_plain_http(&mut stream)).await;
            return None;
        }
        match tokio::time::timeout_at(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake not done within the header read timeout");
                None
            }
        }
    }
}

/// What a plain HTTP request to the TLS port is told.
const PLAIN_HTTP_BODY: &str = "400 Bad Request: this port speaks TLS; use https:// or wss://\n";

/// Reads the request head (so closing does not reset the connection before the answer is
/// read; at most 16 KiB), answers [`PLAIN_HTTP_BODY`] and closes.
async fn answer_plain_http(stream: &mut TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// The certificate chain of `cert` and the key of `key`, ready to sign handshakes.
fn certified_key(cert: &Path, key: &Path) -> io::Result<CertifiedKey> {
    let unreadable = |path: &Path, what: &str, e: &dyn fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable(cert, "no PEM certificate chain", &e))?;
    if chain.is_empty() {
        return Err(unreadable(cert, "no PEM certificate chain", &"empty"));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable(key, "no PEM private key", &e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| unreadable(key, "not a usable private key", &e))?;
    Ok(CertifiedKey::new(chain, signing))
}
