//! The README is executed: every `sh` block marked `<!-- readme: run -->` in its source runs
//! against a fresh `crier` binary, and what it prints is checked, so an example cannot rot; the
//! `js` blocks run in Chromium; every other example says in its marker why it is not run.
//!
//! In a marked block (with `127.0.0.1:8080` standing for the server):
//! - each line is a command, run by bash in a scratch directory (which holds a `photo.jpg`);
//!   `curl` gives up after a few seconds, so a `curl -N` stream ends;
//! - a `curl -N` stream runs in the background: the next command starts once the server counts
//!   its subscription;
//! - `# …` lines under a command are its expected output, line by line; `> …` lines are typed
//!   into it, and `< …` lines must appear in what it prints;
//! - `pip install` lines are skipped (CI installs what they install);
//! - a `text` block marked `<!-- readme: output -->` after the block is what its streams print.
//!
//! Ids are compared by shape (`<epoch>-<seq>`), as a fresh server draws new epochs.

mod support;

use std::process::Stdio;

use support::{CrierProcess, WAIT, metric, request, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A marked block.
#[derive(Debug)]
struct Example {
    /// Where it starts in the README, for messages.
    line: usize,
    commands: Vec<Command>,
    /// The marked `text` block after it: what its streams print.
    output: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct Command {
    text: String,
    /// `# …` lines.
    expected: Vec<String>,
    /// `> …` lines.
    input: Vec<String>,
    /// `< …` lines.
    prints: Vec<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut examples: Vec<Example> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let marker = lines[i].trim();
        if marker == "<!-- readme: script -->" {
            // tests/readme_scripts.rs runs it, and checks the output after it.
            let end = (i + 2..lines.len()).find(|&j| lines[j] == "```").expect("block end");
            i = end + 1;
            if lines.get(i).is_some_and(|l| l.trim() == "<!-- readme: output -->") {
                i = (i + 2..lines.len()).find(|&j| lines[j] == "```").expect("block end") + 1;
            }
            continue;
        }
        if marker == "<!-- readme: output -->" {
            assert_eq!(lines[i + 1], "```text", "README line {}: a text block", i + 2);
            let end = (i + 2..lines.len()).find(|&j| lines[j] == "```").expect("block end");
            let example = examples.last_mut().expect("an output follows a run block");
            example.output = Some(lines[i + 2..end].iter().map(|l| l.to_string()).collect());
            i = end + 1;
            continue;
        }
        if marker != "<!-- readme: run -->" {
            i += 1;
            continue;
        }
        assert_eq!(lines[i + 1], "```sh", "README line {}: an sh block", i + 2);
        let mut commands: Vec<Command> = Vec::new();
        let mut j = i + 2;
        let mut pending = String::new();
        while lines[j] != "```" {
            let line = lines[j];
            j += 1;
            if let Some(start) = line.strip_suffix('\\') {
                pending.push_str(start);
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(expected) = line.strip_prefix("# ") {
                commands.last_mut().expect("a command").expected.push(expected.to_owned());
            } else if let Some(input) = line.strip_prefix("> ") {
                commands.last_mut().expect("a command").input.push(input.to_owned());
            } else if let Some(prints) = line.strip_prefix("< ") {
                commands.last_mut().expect("a command").prints.push(prints.to_owned());
            } else if !line.trim().is_empty() && !line.starts_with("pip install") {
                commands.push(Command { text: line, ..Command::default() });
            }
        }
        examples.push(Example { line: i + 1, commands, output: None });
        i = j + 1;
    }
    examples
}

/// `text` with every id (`<epoch>-<seq>`) replaced by `ID`.
fn ids_as_shapes(text: &str) -> String {
    let id = regex::Regex::new(r"(?-u:\b)[0-9a-z]{1,8}-[0-9]+(?-u:\b)").unwrap();
    id.replace_all(text, "ID").into_owned()
}

/// The lines of `text` that are not blank, ids as shapes, without terminal control sequences.
fn printed_lines(text: &str) -> Vec<String> {
    let escapes = regex::Regex::new(r"\x1b(\[[0-9;]*[A-Za-z]|[78])").unwrap();
    escapes
        .replace_all(text, "")
        .split(['\n', '\r'])
        .map(|line| ids_as_shapes(line.trim_end()))
        .filter(|line| !line.trim().is_empty())
        .collect()
}

async fn subscriptions(node: &CrierProcess) -> f64 {
    let text = request(node.addr, "GET", "/metrics", &[], b"").await.text();
    metric(&text, "crier_subscriptions").unwrap_or(0.0)
}

fn bash(script: &str, dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("bash");
    // curl stops after a few seconds, so a stream ends; everything else answers at once.
    let prelude = "curl() { command curl --max-time 3 \"$@\"; }\n";
    command
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run(example: &Example, dir: &std::path::Path) {
    let node = CrierProcess::spawn(&[]).await;
    let here = format!("README line {}", example.line);
    let mut streams = Vec::new();
    for command in &example.commands {
        let script = command.text.replace("127.0.0.1:8080", &node.addr.to_string());
        if script.contains("curl -N") {
            let before = subscriptions(&node).await;
            streams.push(bash(&script, dir).spawn().expect("bash"));
            wait_until(&format!("{here}: the stream of {}", command.text), || async {
                subscriptions(&node).await > before
            })
            .await;
            continue;
        }
        let mut child = bash(&script, dir).spawn().expect("bash");
        let mut stdin = child.stdin.take().expect("stdin");
        for line in &command.input {
            stdin.write_all(format!("{line}\n").as_bytes()).await.expect("type a line");
        }
        let mut printed = String::new();
        if !command.prints.is_empty() {
            // Interactive: read until everything expected was printed, then hang up.
            let mut out = BufReader::new(child.stdout.take().expect("stdout"));
            let wanted: Vec<String> = command.prints.iter().map(|p| ids_as_shapes(p)).collect();
            let found = tokio::time::timeout(WAIT, async {
                loop {
                    let mut chunk = Vec::new();
                    if out.read_until(b'\n', &mut chunk).await.unwrap_or(0) == 0 {
                        return false;
                    }
                    printed.push_str(&String::from_utf8_lossy(&chunk));
                    let lines = printed_lines(&printed).join("\n");
                    if wanted.iter().all(|w| lines.contains(w.as_str())) {
                        return true;
                    }
                }
            })
            .await;
            assert!(matches!(found, Ok(true)), "{here}: {} printed {printed:?}", command.text);
            drop(stdin);
            let _ = child.kill().await;
            continue;
        }
        drop(stdin);
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("the command ends")
            .expect("its output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{here}: {} failed ({}): {stdout} {}",
            command.text,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if !command.expected.is_empty() {
            let expected: Vec<String> = command.expected.iter().map(|e| ids_as_shapes(e)).collect();
            assert_eq!(printed_lines(&stdout), expected, "{here}: what {} prints", command.text);
        }
    }
    let mut printed = String::new();
    for stream in streams {
        let output = stream.wait_with_output().await.expect("a stream's output");
        // 28: curl's time limit ended the stream, as it should.
        assert_eq!(
            output.status.code(),
            Some(28),
            "{here}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        printed.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    if let Some(expected) = &example.output {
        let expected: Vec<String> = expected
            .iter()
            .map(|line| ids_as_shapes(line))
            .filter(|line| !line.trim().is_empty())
            .collect();
        let printed = printed_lines(&printed);
        let mut rest = printed.iter();
        for line in &expected {
            assert!(rest.any(|p| p == line), "{here}: {line:?} not printed in order: {printed:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_marked_example_runs_and_prints_what_the_readme_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let examples = examples(&readme);
    assert!(examples.len() >= 7, "the marked examples: {examples:#?}");
    let dir = std::env::temp_dir().join(format!("crier-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("photo.jpg"), [0xff, 0xd8, 0xff, 0xe0, 0, 0x10]).unwrap();
    for example in &examples {
        run(example, &dir).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `js` blocks marked `<!-- readme: js -->`, in order.
fn js_examples(readme: &str) -> Vec<String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "<!-- readme: js -->" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        assert_eq!(lines[i + 1].trim(), "```js", "README line {}: a js block", i + 2);
        let end = (i + 2..lines.len()).find(|&j| lines[j].trim() == "```").expect("block end");
        let code: Vec<&str> =
            lines[i + 2..end].iter().map(|l| l.get(indent..).unwrap_or("")).collect();
        blocks.push(code.join("\n"));
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_browser_examples_run_in_chromium() {
    use support::browser::{Browser, serve_page};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let [sse, ws] = <[String; 2]>::try_from(js_examples(&readme)).expect("two js examples");
    // The pages come from another origin, as an app's would; the server's address is in their
    // URL, in place of the README's 127.0.0.1:8080.
    let helpers = "const CRIER = new URLSearchParams(location.search).get('crier');
                   window.shown = []; window.gaps = []; window.frames = [];
                   function show(data) { shown.push(data); }
                   function reloadFromYourApi(gaps) { window.gaps.push(...gaps); }";
    let in_page = |code: &str| code.replace("\"http://127.0.0.1:8080", "\"http://\" + CRIER + \"");
    let sse_page = serve_page(format!(
        "<!doctype html><script>{helpers}</script><script>{}</script>",
        in_page(&sse)
    ))
    .await;
    let ws_page = serve_page(format!(
        "<!doctype html><script>{helpers}</script><script>{ws}
         follow('ws://' + CRIER + '/ws', ['news'], (event) => frames.push(event));</script>"
    ))
    .await;
    // An app's origins are listed, as the README's Security section says.
    let origins = format!("http://{sse_page},http://{ws_page}");
    let node = support::TestServer::start(&["--history", "2", "--cors-origins", &origins]).await;
    let mut browser = Browser::launch().await;

    // The SSE example: events shown, the last id kept.
    let page = browser.open(&format!("http://{sse_page}/?crier={}", node.addr)).await;
    node.wait_subscriptions(1).await;
    let mut ids = Vec::new();
    for data in ["e1", "e2", "e3", "e4"] {
        ids.push(node.publish("news", data).await);
    }
    let shown = browser.wait_for(&page, "shown.length === 4 ? shown : null").await;
    assert_eq!(shown, serde_json::json!(["e1", "e2", "e3", "e4"]));
    assert_eq!(browser.eval(&page, "localStorage.getItem('news-last-id')").await, ids[3].as_str());
    // A page opened later, from an id the topic no longer holds (it keeps 2): the crier.gap
    // listener hears of the loss, and the stream goes on after it.
    browser.eval(&page, &format!("localStorage.setItem('news-last-id', '{}'); true", ids[0])).await;
    let later = browser.open(&format!("http://{sse_page}/?crier={}", node.addr)).await;
    let gaps = browser.wait_for(&later, "gaps.length ? gaps : null").await;
    assert_eq!(gaps[0]["topic"], "news");
    assert_eq!(gaps[0]["reason"], "expired");
    assert_eq!(
        browser.wait_for(&later, "shown.length === 2 ? shown : null").await,
        serde_json::json!(["e3", "e4"])
    );

    // The WebSocket example: events through `onEvent`, replies kept out.
    let ws_tab = browser.open(&format!("http://{ws_page}/?crier={}", node.addr)).await;
    wait_until("the WebSocket example to subscribe", || async {
        metric(&node.metrics().await, r#"crier_connections{transport="ws"}"#) == Some(1.0)
    })
    .await;
    // Subscribed by command once open: wait for the reply's effect, the subscription.
    node.wait_subscriptions(3).await;
    let id = node.publish("news", "over the WebSocket").await;
    let frames = browser.wait_for(&ws_tab, "frames.length ? frames : null").await;
    assert_eq!(frames[0]["id"], id.as_str());
    assert_eq!(frames[0]["data"], "over the WebSocket");
    assert_eq!(frames.as_array().unwrap().len(), 1, "the ok reply is not an event: {frames}");
}

/// Every shell, JavaScript and Python block is run (`<!-- readme: run -->`, `<!-- readme: js
/// -->`) or says why it is not (`<!-- readme: not run: REASON -->`).
#[test]
fn every_example_is_run_or_says_why_not() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let mut unaccounted = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let fence = line.trim();
        let runnable = ["```sh", "```bash", "```js", "```javascript", "```python", "```py"];
        if !runnable.contains(&fence) {
            continue;
        }
        let marker = lines[..at].iter().rev().map(|l| l.trim()).find(|l| !l.is_empty());
        let accounted = marker.is_some_and(|marker| {
            marker == "<!-- readme: run -->"
                || marker == "<!-- readme: script -->"
                || marker == "<!-- readme: js -->"
                || marker
                    .strip_prefix("<!-- readme: not run:")
                    .and_then(|rest| rest.strip_suffix("-->"))
                    .is_some_and(|reason| reason.trim().len() > 10)
        });
        if !accounted {
            unaccounted.push(at + 1);
        }
    }
    assert!(unaccounted.is_empty(), "README lines {unaccounted:?}: run them, or say why not");
}
