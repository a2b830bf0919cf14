//! Headless Chromium driven over the DevTools protocol, and a one-page HTTP server to serve it
//! a page from an origin of the test's choosing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::{WAIT, wait_until};

/// The Chromium binary (Debian's package).
pub fn binary() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("chromium is installed (.ci/run installs it)")
}

/// Serves `html` to every request, on a free port; returns the address.
pub async fn serve_page(html: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A headless Chromium.
pub struct Browser {
    child: tokio::process::Child,
    profile: PathBuf,
    devtools: WebSocketStream<TcpStream>,
    next_id: u64,
}

/// A tab, by its DevTools session.
pub struct Page {
    session: String,
}

static PROFILES: AtomicU32 = AtomicU32::new(0);

impl Browser {
    pub async fn launch() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "crier-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let child = tokio::process::Command::new(binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium writes the port and path of its DevTools endpoint to this file.
        let active = profile.join("DevToolsActivePort");
        wait_until("chromium's DevTools endpoint", || async {
            std::fs::read_to_string(&active).is_ok_and(|text| text.lines().count() >= 2)
        })
        .await;
        let text = std::fs::read_to_string(&active).expect("DevToolsActivePort");
        let mut lines = text.lines();
        let port: u16 = lines.next().and_then(|p| p.parse().ok()).expect("a port");
        let path = lines.next().expect("a path");
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to DevTools");
        let request = format!("ws://127.0.0.1:{port}{path}").into_client_request().unwrap();
        let (devtools, _) =
            tokio_tungstenite::client_async(request, stream).await.expect("DevTools handshake");
        Browser { child, profile, devtools, next_id: 0 }
    }

    /// Calls a DevTools method (in `session` if given); its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.devtools.send(Message::text(message.to_string())).await.expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(WAIT, self.devtools.next())
                .await
                .expect("DevTools answers in time")
                .expect("DevTools open")
                .expect("a DevTools message");
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).expect("JSON from DevTools");
            if value["id"] == json!(id) {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attach = json!({"targetId": target_id, "flatten": true});
        let attached = self.call(None, "Target.attachToTarget", attach).await;
        Page { session: attached["sessionId"].as_str().expect("a session").to_owned() }
    }

    /// A PNG screenshot of `page`.
    pub async fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        use base64::Engine as _;
        let params = json!({"format": "png"});
        let shot = self.call(Some(&page.session), "Page.captureScreenshot", params).await;
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("base64 PNG")
    }

    /// Evaluates `expression` in `page`; its value.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call(Some(&page.session), "Runtime.evaluate", params).await;
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is neither `undefined` nor `null` in `page`; its value.
    pub async fn wait_for(&mut self, page: &Page, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.eval(page, expression).await;
            if !value.is_null() {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {expression}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
