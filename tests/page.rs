//! The built-in page at `GET /`, in headless Chromium against a real server: it loads with
//! nothing but the server's own endpoints, subscribes, shows a published event, shows a
//! `crier.gap` as such after a resume from an expired id, publishes, and shows live stats. A
//! screenshot is written to `target/page-screenshot.png`.

mod support;

use support::browser::Browser;
use support::{SseClient, TestServer, request};

/// Fills the page's form fields and clicks `button`.
fn fill_and_click(fields: &[(&str, &str)], button: &str) -> String {
    let mut script = String::new();
    for (id, value) in fields {
        script.push_str(&format!(
            "document.getElementById({id:?}).value = {};",
            serde_json::to_string(value).unwrap()
        ));
    }
    script.push_str(&format!("document.getElementById({button:?}).click(); true"));
    script
}

/// The text of the page's event list, newest first.
const EVENTS: &str = "Array.from(document.querySelectorAll('#events li')).map((li) => ({ \
                      kind: li.className, text: li.textContent }))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_subscribes_publishes_and_shows_gaps_and_stats() {
    let server = TestServer::start(&["--history", "2"]).await;
    let page_answer = request(server.addr, "GET", "/", &[], b"").await;
    assert_eq!(page_answer.status, 200);
    assert_eq!(page_answer.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let html = page_answer.text();
    // Its only link is its icon, inline (no request for /favicon.ico).
    let links: Vec<&str> = html.split("<link ").skip(1).collect();
    assert!(links.iter().all(|link| link.starts_with(r#"rel="icon" href="data:"#)), "{links:?}");
    let without_icon: String = html.lines().filter(|line| !line.starts_with("<link ")).collect();
    for external in ["<script src", "https://", "http://", "@import"] {
        assert!(!without_icon.contains(external), "self-contained, nothing from a CDN: {external}");
    }

    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{}/", server.addr)).await;
    assert_eq!(browser.wait_for(&page, "window.ready").await, true);

    // Subscribe over SSE; an event published elsewhere shows up.
    browser
        .eval(&page, &fill_and_click(&[("topics", "news"), ("transport", "sse")], "subscribe"))
        .await;
    server.wait_subscriptions(1).await;
    let id = server.publish("news", "published by the test").await;
    let shown = browser
        .wait_for(
            &page,
            &format!("{EVENTS}.find((e) => e.text.includes('published by the test')) ?? null"),
        )
        .await;
    assert!(shown["text"].as_str().unwrap().contains(&id), "{shown}");
    // A named event shows too, with no name given in the form.
    let tick = server.publish_named("news", "tick", "a named event").await;
    let shown = browser
        .wait_for(&page, &format!("{EVENTS}.find((e) => e.text.includes('a named event')) ?? null"))
        .await;
    let text = shown["text"].as_str().unwrap();
    assert!(text.contains(&tick) && text.contains("event tick"), "{shown}");

    // Publish from the page: a test subscriber gets it.
    let mut watcher = SseClient::connect(server.addr, "/sse?topic=news", &[]).await;
    let fields = [("pub-topic", "news"), ("pub-data", "published by the page")];
    browser.eval(&page, &fill_and_click(&fields, "publish")).await;
    let published = browser.wait_for(&page, "window.published ?? null").await;
    assert_eq!(published["status"], 200, "{published}");
    assert_eq!(watcher.next_event().await.data, "published by the page");

    // Stats: the page's stream and the watcher's are counted.
    let stats = browser
        .wait_for(&page, "window.stats && window.stats.connections >= 2 ? window.stats : null")
        .await;
    assert!(stats["connections"].as_f64().unwrap() >= 2.0, "{stats}");

    // Resume from an id the topic no longer holds (history 2): the page shows a crier.gap.
    let expired = server.publish("gappy", "g0").await;
    for i in 1..4 {
        server.publish("gappy", &format!("g{i}")).await;
    }
    let fields = [("topics", "gappy"), ("last-id", expired.as_str())];
    browser.eval(&page, &fill_and_click(&fields, "subscribe")).await;
    // Each subscription opens with a separator, newest first.
    let separators = browser
        .wait_for(
            &page,
            &format!("{EVENTS}.filter((e) => e.kind === 'separator').length >= 2 ? {EVENTS}.filter((e) => e.kind === 'separator') : null"),
        )
        .await;
    assert!(separators[0]["text"].as_str().unwrap().contains("gappy"), "{separators}");
    let gap =
        browser.wait_for(&page, &format!("{EVENTS}.find((e) => e.kind === 'gap') ?? null")).await;
    assert!(gap["text"].as_str().unwrap().contains("crier.gap"), "{gap}");
    let text = gap["text"].as_str().unwrap();
    assert!(
        text.contains("\"topic\":\"gappy\"") && text.contains("\"reason\":\"expired\""),
        "{gap}"
    );

    // Over WebSocket too.
    let fields = [("topics", "news"), ("last-id", ""), ("transport", "ws")];
    browser.eval(&page, &fill_and_click(&fields, "subscribe")).await;
    browser
        .wait_for(
            &page,
            "document.getElementById('sub-status').textContent.includes('WebSocket') || null",
        )
        .await;
    let over_ws = server.publish("news", "over the WebSocket").await;
    let shown = browser
        .wait_for(
            &page,
            &format!("{EVENTS}.find((e) => e.text.includes('over the WebSocket')) ?? null"),
        )
        .await;
    assert!(shown["text"].as_str().unwrap().contains(&over_ws), "{shown}");

    // Only the names asked for, when some are.
    let fields = [("topics", "named"), ("transport", "sse"), ("names", "wanted")];
    browser.eval(&page, &fill_and_click(&fields, "subscribe")).await;
    server.wait_subscriptions(2).await;
    server.publish_named("named", "unwanted", "left out").await;
    server.publish_named("named", "wanted", "shown").await;
    browser
        .wait_for(&page, &format!("{EVENTS}.find((e) => e.text.includes('shown')) ?? null"))
        .await;
    let left_out: serde_json::Value =
        browser.eval(&page, &format!("{EVENTS}.some((e) => e.text.includes('left out'))")).await;
    assert_eq!(left_out, false);
    // No request of the page's went unanswered (no /favicon.ico).
    let metrics = server.metrics().await;
    let missing =
        support::metric(&metrics, r#"crier_http_requests_total{route="not_found",status="404"}"#);
    assert_eq!(missing, None, "{metrics}");

    let png = browser.screenshot(&page).await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/page-screenshot.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}
