//! A server running on a background task, started and stopped from code: what tests,
//! benchmarks and an embedding program use instead of `main`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{App, serve};
use crate::config::Config;
use crate::hub::Hub;

/// A server running on a background task, for tests, benchmarks and embedding.
pub struct ServerHandle {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// Binds `config.listen` and starts serving on the current runtime.
    pub async fn start(config: Config) -> io::Result<Self> {
        let listener = super::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let app = App::new(config)?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, app.clone(), async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle { addr, app, shutdown: Some(tx), task: Some(task) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads the token key files again, as SIGHUP does.
    pub fn reload_credentials(&self) -> io::Result<()> {
        self.app.reload_credentials()
    }

    /// The running node's hub.
    #[doc(hidden)]
    pub fn hub(&self) -> &Arc<Hub> {
        &self.app.hub
    }

    /// Shuts down as on SIGTERM and waits until the server has drained.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
