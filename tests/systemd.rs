//! The shipped systemd unit (`systemd/crier.service`): safe as shipped (loopback and a key, the
//! key a credential, no secret in `Environment=`), `systemd-analyze verify` clean, the README
//! showing it as it is, and its command line one the binary starts with.

mod support;

use std::path::PathBuf;

use support::{CrierProcess, request, tokens};

fn unit() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/crier.service");
    std::fs::read_to_string(path).expect("the shipped unit")
}

/// The value of the unit's first line `key=…`.
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_shipped_unit_is_safe_as_shipped_and_the_readme_shows_it() {
    let unit = unit();
    let exec = setting(&unit, "ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/crier "), "where the README installs it: {exec}");
    assert!(exec.contains("--listen 127.0.0.1:"), "loopback, behind the proxy: {exec}");
    assert!(exec.contains("--jwt-key-file ${CREDENTIALS_DIRECTORY}/"), "a key: {exec}");
    assert!(setting(&unit, "LoadCredential").is_some_and(|c| c.starts_with("jwt-key:")));
    for line in unit.lines().filter(|line| line.starts_with("Environment=")) {
        assert!(!line.contains("JWT_KEY") && !line.contains("password"), "a secret: {line}");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let shown = readme.split("```ini\n").nth(1).and_then(|rest| rest.split("```").next());
    assert_eq!(shown, Some(unit.as_str()), "the README's unit is the shipped one");
    assert!(readme.contains("cargo install --path . --root /usr/local"));
}

#[test]
fn systemd_analyze_verifies_the_unit_clean() {
    let dir = std::env::temp_dir().join(format!("crier-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The binary under test where the unit looks for the installed one (verify checks it).
    let unit = unit().replace("/usr/local/bin/crier", env!("CARGO_BIN_EXE_crier"));
    let path = dir.join("crier.service");
    std::fs::write(&path, unit).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs systemd)");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{said}");
    assert!(!said.contains("crier.service"), "no warning about the unit: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_command_line_starts_a_server_that_reads_its_credential() {
    let dir = std::env::temp_dir().join(format!("crier-credentials-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwt-key"), format!("{}\n", tokens::SECRET)).unwrap();
    let unit = unit();
    let exec = setting(&unit, "ExecStart")
        .unwrap()
        .replace("${CREDENTIALS_DIRECTORY}", dir.to_str().unwrap());
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crier"));
    command.env("CREDENTIALS_DIRECTORY", &dir);
    // On a free port rather than the unit's.
    let mut args = args.clone();
    args.extend(["--listen", "127.0.0.1:0"]);
    let node = CrierProcess::spawn_command(command, &args).await;
    let token = tokens::hs256(&tokens::grant(&["*"], &[]));
    let bearer = format!("Bearer {token}");
    let publish = |auth: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(node.addr, "POST", "/publish?topic=t", &headers, b"x").await.status
    };
    assert_eq!(publish(vec![("Authorization", bearer)]).await, 200);
    assert_eq!(publish(vec![]).await, 401, "publishing needs the key's tokens");
    let _ = std::fs::remove_dir_all(&dir);
}
