//! The README's examples that start their own servers (`<!-- readme: script -->`): each block
//! runs as one bash session, in a scratch directory, with this build's `crier` on the `PATH`.
//! Every `127.0.0.1:PORT` of the block is moved to a free port. A server started in the
//! background (`crier … &`) is waited for until it answers, and a stream (`curl -N … &`) until
//! its server counts it, before the next line; what the `text` block marked
//! `<!-- readme: output -->` after it says must all be printed (in any order: streams print as
//! events arrive).

mod support;

use std::collections::HashMap;
use std::process::Stdio;

use support::{WAIT, metric, request, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A block to run, with what it must print.
struct Script {
    line: usize,
    /// Its commands, continuation lines joined.
    commands: Vec<String>,
    output: Vec<String>,
}

fn scripts(readme: &str) -> Vec<Script> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut scripts = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.trim() != "<!-- readme: script -->" {
            continue;
        }
        assert_eq!(lines[at + 1], "```sh", "README line {}: an sh block", at + 2);
        let end = (at + 2..lines.len()).find(|&j| lines[j] == "```").expect("the block's end");
        let mut commands = Vec::new();
        let mut pending = String::new();
        for line in &lines[at + 2..end] {
            match line.strip_suffix('\\') {
                Some(start) => pending.push_str(start),
                None => commands.push(std::mem::take(&mut pending) + line),
            }
        }
        let mut output = Vec::new();
        if lines.get(end + 1).is_some_and(|l| l.trim() == "<!-- readme: output -->") {
            let close = (end + 3..lines.len()).find(|&j| lines[j] == "```").expect("its end");
            output = lines[end + 3..close].iter().map(|l| l.to_string()).collect();
        }
        scripts.push(Script { line: at + 1, commands, output });
    }
    scripts
}

/// `command` with each `127.0.0.1:PORT` moved to its free port (the same one each time).
fn moved(command: &str, ports: &mut HashMap<String, u16>) -> String {
    let pattern = regex::Regex::new(r"127\.0\.0\.1:(\d+)").unwrap();
    pattern
        .replace_all(command, |found: &regex::Captures<'_>| {
            let port = ports.entry(found[1].to_owned()).or_insert_with(support::redis::free_port);
            format!("127.0.0.1:{port}")
        })
        .into_owned()
}

/// The port of the first `127.0.0.1:PORT` of `command`.
fn port_in(command: &str) -> Option<u16> {
    let pattern = regex::Regex::new(r"127\.0\.0\.1:(\d+)").unwrap();
    pattern.captures(command).and_then(|found| found[1].parse().ok())
}

async fn subscriptions(port: u16) -> f64 {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    metric(&request(addr, "GET", "/metrics", &[], b"").await.text(), "crier_subscriptions")
        .unwrap_or(0.0)
}

async fn run(script: &Script, dir: &std::path::Path) {
    let here = format!("README line {}", script.line);
    // `crier` is this build's binary.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("crier");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_crier"), &link).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut bash = tokio::process::Command::new("bash")
        .arg("-s")
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("CRIER_JWT_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash");
    let mut stdin = bash.stdin.take().expect("stdin");
    // One stream of output, logs included, read at the end.
    stdin.write_all(b"exec 2>&1\n").await.unwrap();
    let mut ports = HashMap::new();
    for command in &script.commands {
        let line = moved(command, &mut ports);
        let background = line.trim_end().ends_with('&');
        let stream_port = port_in(&line).filter(|_| background && line.contains("curl -N"));
        // Counted before the stream can open.
        let before = match stream_port {
            Some(port) => subscriptions(port).await,
            None => 0.0,
        };
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("send a command");
        let Some(port) = port_in(&line).filter(|_| background) else { continue };
        if line.trim_start().starts_with("crier ") {
            wait_until(&format!("{here}: {command}"), || async {
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                tokio::net::TcpStream::connect::<std::net::SocketAddr>(addr).await.is_ok()
            })
            .await;
        } else if stream_port.is_some() {
            wait_until(&format!("{here}: {command}"), || async {
                subscriptions(port).await > before
            })
            .await;
        }
    }
    // Streams and servers started in the background end with the session.
    stdin.write_all(b"kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; exit 0\n").await.unwrap();
    drop(stdin);
    let mut stdout = bash.stdout.take().expect("stdout");
    let mut printed = String::new();
    tokio::time::timeout(WAIT, stdout.read_to_string(&mut printed))
        .await
        .expect("the session ends")
        .expect("its output");
    let status = bash.wait().await.unwrap();
    assert!(status.success(), "{here}: {status}: {printed}");
    let id = regex::Regex::new(r"(?-u:\b)[0-9a-z]{1,8}-[0-9]+(?-u:\b)").unwrap();
    let printed = id.replace_all(&printed, "ID");
    for line in &script.output {
        let line = id.replace_all(line.trim(), "ID");
        assert!(printed.contains(line.as_ref()), "{here}: {line:?} not printed: {printed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_scripts_run_and_print_what_it_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let scripts = scripts(&readme);
    assert!(!scripts.is_empty(), "the README's scripts");
    for script in &scripts {
        let dir = std::env::temp_dir().join(format!(
            "crier-readme-script-{}-{}",
            std::process::id(),
            script.line
        ));
        std::fs::create_dir_all(&dir).unwrap();
        run(script, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
