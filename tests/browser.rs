//! Cross-origin browsers, in headless Chromium: a page from an origin in `--cors-origins`
//! follows a private topic with `EventSource` (its token in the `crier_token` cookie) and
//! publishes with `fetch` (a preflighted request); a page from another origin can do neither.

mod support;

use support::browser::{Browser, serve_page};
use support::tokens::{SECRET, grant, hs256};
use support::{TestServer, metric};

/// The page: crier's address and the token come in its URL's query.
const PAGE: &str = r#"<!doctype html><title>cors</title><script>
const params = new URLSearchParams(location.search);
const crier = "http://" + params.get("crier");
document.cookie = "crier_token=" + params.get("token") + "; path=/";
const source = new EventSource(crier + "/sse?topic=private/room", { withCredentials: true });
source.onopen = async () => {
  window.opened = true;
  try {
    const answer = await fetch(crier + "/publish?topic=private/room", {
      method: "POST", credentials: "include",
      headers: { "Idempotency-Key": "from-the-page" }, body: "hello from the page",
    });
    window.published = { status: answer.status, body: await answer.json() };
  } catch (e) { window.published = { error: String(e) }; }
};
source.onmessage = (e) => { window.received = e.data; };
source.onerror = () => { window.failed = true; };
fetch(crier + "/publish?topic=elsewhere", {
  method: "POST", credentials: "include", headers: { "Idempotency-Key": "probe" }, body: "probe",
}).then((a) => { window.probe = a.status; }, () => { window.probe = "blocked"; });
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_subscribes_and_publishes_with_its_cookie() {
    let allowed = serve_page(PAGE.to_owned()).await;
    let elsewhere = serve_page(PAGE.to_owned()).await;
    let origin = format!("http://{allowed}");
    let server = TestServer::start(&[
        "--jwt-key",
        SECRET,
        "--private-topics",
        "private/*",
        "--cors-origins",
        &origin,
    ])
    .await;
    let token = hs256(&grant(&["*"], &["private/*"]));
    let query = format!("?crier={}&token={token}", server.addr);

    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{allowed}/{query}")).await;
    assert_eq!(browser.wait_for(&page, "window.opened").await, true);
    let published = browser.wait_for(&page, "window.published").await;
    assert_eq!(published["status"], 200, "{published}");
    assert_eq!(browser.wait_for(&page, "window.received").await, "hello from the page");
    assert_eq!(browser.wait_for(&page, "window.probe").await, 200);

    // Another origin: the browser keeps the answers from the page.
    let other = browser.open(&format!("http://{elsewhere}/{query}")).await;
    assert_eq!(browser.wait_for(&other, "window.failed").await, true);
    assert_eq!(browser.wait_for(&other, "window.probe").await, "blocked");
    assert!(browser.eval(&other, "window.opened").await.is_null());
    let metrics = server.metrics().await;
    // The allowed page's publish and probe; the other page's probe was refused at the
    // preflight, before it could publish.
    assert_eq!(metric(&metrics, "crier_events_published_total"), Some(2.0));
}
