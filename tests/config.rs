//! The command line of the real binary: defaults shown in `--help`, every flag readable from a
//! `CRIER_*` variable, a bad value refused with a clear message and exit status 64, and a
//! renamed flag still taken under its old name, with one warning.

mod support;

use std::process::Command;

use support::{CrierProcess, SseClient, publish_ok, wait_until};

fn crier() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crier"));
    // Nothing from the developer's environment may leak into these checks.
    for (key, _) in std::env::vars() {
        if key.starts_with("CRIER_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn help_lists_every_flag_with_its_default_and_variable() {
    let output = crier().arg("--help").output().expect("run crier --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for old_name in [
        "--client-queue-bytes",
        "--max-topics-per-connection",
        "--publish-origins",
        "--allowed-origins",
    ] {
        assert!(!help.contains(&format!("{old_name} ")), "{old_name} is an alias, not listed");
    }
    // It ends with the exit statuses and the logging variable.
    let ending = help.split("Exit status:").nth(1).expect("the exit statuses");
    for status in ["0 ", "64 ", "71 ", "130 ", "CRIER_LOG"] {
        assert!(ending.contains(status), "{status} in {ending}");
    }
    for (flag, env, default) in [
        ("--listen", "CRIER_LISTEN", "127.0.0.1:8080"),
        ("--heartbeat", "CRIER_HEARTBEAT", "15s"),
        ("--max-lag-bytes", "CRIER_MAX_LAG_BYTES", "1MiB"),
        ("--max-topics-per-stream", "CRIER_MAX_TOPICS_PER_STREAM", "64"),
        ("--history", "CRIER_HISTORY", "1000"),
        ("--max-event-bytes", "CRIER_MAX_EVENT_BYTES", "64KiB"),
        ("--shutdown-timeout", "CRIER_SHUTDOWN_TIMEOUT", "10s"),
        ("--log-format", "CRIER_LOG_FORMAT", "text"),
        ("--write-delay", "CRIER_WRITE_DELAY", "200ms"),
        ("--redis-pool-size", "CRIER_REDIS_POOL_SIZE", "4"),
        ("--mercure-history", "CRIER_MERCURE_HISTORY", "10000"),
        ("--mercure-max-templates", "CRIER_MERCURE_MAX_TEMPLATES", "10000"),
    ] {
        let section = help
            .split(&format!("      {flag} <"))
            .nth(1)
            .unwrap_or_else(|| panic!("{flag} missing"));
        let section = section.split("\n      --").next().unwrap_or_default();
        assert!(section.contains(&format!("[env: {env}=]")), "{flag}: {section}");
        assert!(section.contains(&format!("[default: {default}]")), "{flag}: {section}");
    }
}

#[test]
fn bad_values_exit_64_with_a_clear_message() {
    for (args, env, mentions) in [
        (&["--heartbeat", "soon"][..], None, "--heartbeat"),
        (&["--max-lag-bytes", "lots"], None, "--max-lag-bytes"),
        (&["--client-queue-bytes", "lots"], None, "--client-queue-bytes"),
        (&["--max-lag-bytes", "1MiB", "--client-queue-bytes", "2MiB"], None, "--max-lag-bytes"),
        (&["--listen", "nowhere"], None, "--listen"),
        (&["--log-format", "xml"], None, "--log-format"),
        (&["--no-such-flag"], None, "--no-such-flag"),
        (&[], Some(("CRIER_HISTORY", "-5")), "--history"),
        (&[], Some(("CRIER_MAX_EVENT_BYTES", "0")), "--max-event-bytes"),
        (&["--redis-url", "http://example.com"], None, "--redis-url"),
        (&["--redis-url", "redis://127.0.0.1:1,redis://127.0.0.1:2"], None, "--redis-cluster"),
        (&["--redis-cluster"], None, "--redis-url"),
    ] {
        let mut command = crier();
        command.args(args);
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().expect("run crier");
        assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(mentions) && stderr.contains("error"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

#[test]
fn an_address_in_use_exits_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = crier().args(["--listen", &addr]).output().expect("run crier");
    assert_eq!(output.status.code(), Some(71));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

#[tokio::test]
async fn old_flag_names_still_work_and_each_logs_one_warning() {
    // The old variable, as a deployment's unit file would still set it.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crier"));
    command.env("CRIER_MAX_TOPICS_PER_CONNECTION", "1");
    let args = ["--client-queue-bytes", "64KiB", "--publish-origins", "https://app.example"];
    let server = CrierProcess::spawn_command(command, &args).await;
    let warnings = |flag: &str| {
        let log = server.log.lock().expect("log");
        log.iter().filter(|line| line.contains("deprecated") && line.contains(flag)).count()
    };
    wait_until("the warnings", || async {
        ["--client-queue-bytes", "--max-topics-per-connection", "--publish-origins"]
            .iter()
            .all(|flag| warnings(flag) > 0)
    })
    .await;
    assert_eq!(warnings("--client-queue-bytes"), 1);
    assert_eq!(warnings("--max-topics-per-connection"), 1);
    assert!(server.log.lock().expect("log").iter().any(|l| l.contains("--max-lag-bytes")));

    // The old names' values are the ones in force: one topic per stream.
    let refused = support::request(server.addr, "GET", "/sse?topic=a&topic=b", &[], b"").await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["error"], "too_many_topics");
    let mut stream = SseClient::connect(server.addr, "/sse?topic=a", &[]).await;
    publish_ok(server.addr, "a", None, b"x", None).await;
    assert_eq!(stream.next_event().await.data, "x");
}

/// The messages (`fields.message`) of the log lines of `level` written so far.
fn logged(process: &CrierProcess, level: &str) -> Vec<String> {
    let lines = process.log.lock().expect("log").clone();
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["level"] == level)
        .filter_map(|line| line["fields"]["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_says_each_mode_and_warns_when_open_beyond_loopback() {
    let open = CrierProcess::spawn(&["--listen", "0.0.0.0:0"]).await;
    wait_until("the limits logged", || async {
        logged(&open, "INFO").iter().any(|message| message == "limits")
    })
    .await;
    let info = logged(&open, "INFO");
    for mode in ["mode: plain HTTP", "mode: single node", "mode: development"] {
        assert!(info.iter().any(|message| message.starts_with(mode)), "{mode}: {info:?}");
    }
    let warnings = logged(&open, "WARN");
    assert!(
        warnings.iter().any(|w| w.contains("beyond loopback with no credentials")),
        "{warnings:?}"
    );

    let secret = "a-secret-of-at-least-32-bytes-long!";
    let guarded =
        CrierProcess::spawn(&["--listen", "0.0.0.0:0", "--jwt-key", secret, "--mercure-anonymous"])
            .await;
    wait_until("the limits logged", || async {
        logged(&guarded, "INFO").iter().any(|message| message == "limits")
    })
    .await;
    let info = logged(&guarded, "INFO");
    for mode in ["mode: credentials", "mode: Mercure hub"] {
        assert!(info.iter().any(|message| message.starts_with(mode)), "{mode}: {info:?}");
    }
    assert!(logged(&guarded, "WARN").is_empty(), "{:?}", logged(&guarded, "WARN"));
    assert!(
        !guarded.log.lock().unwrap().iter().any(|line| line.contains(secret)),
        "no secret in the log"
    );
}
