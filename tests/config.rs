//! The command line of the real binary: defaults shown in `--help`, every flag readable from a
//! `CRIER_*` variable, and a bad value refused with a clear message and exit status 64.

use std::process::Command;

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
    for (flag, env, default) in [
        ("--listen", "CRIER_LISTEN", "127.0.0.1:8080"),
        ("--heartbeat", "CRIER_HEARTBEAT", "15s"),
        ("--client-queue-bytes", "CRIER_CLIENT_QUEUE_BYTES", "1MiB"),
        ("--history", "CRIER_HISTORY", "1000"),
        ("--max-event-bytes", "CRIER_MAX_EVENT_BYTES", "64KiB"),
        ("--shutdown-timeout", "CRIER_SHUTDOWN_TIMEOUT", "10s"),
        ("--log-format", "CRIER_LOG_FORMAT", "text"),
        ("--write-delay", "CRIER_WRITE_DELAY", "0ms"),
        ("--redis-pool-size", "CRIER_REDIS_POOL_SIZE", "4"),
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
        (&["--client-queue-bytes", "lots"], None, "--client-queue-bytes"),
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
