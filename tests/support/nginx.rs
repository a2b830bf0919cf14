//! A real nginx in front of crier nodes, on a free port, killed with the test. Its `server`
//! block includes the project's own `nginx/crier-locations.conf` unchanged; only what depends on
//! the deployment (the upstream's addresses, the listen port, where nginx keeps its files) is
//! written here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::WAIT;
use super::redis::free_port;

/// The project's nginx configuration directory.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx")
}

/// The nginx binary (Debian installs it in /usr/sbin, which a user's PATH may lack).
pub fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .expect("nginx is installed (.ci/run installs it)")
}

/// A private directory for one nginx: its pid file and temp files, writable by all in case
/// nginx drops privileges (as a root master's workers do).
pub fn prefix() -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "crier-test-nginx-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    for path in [dir.clone(), dir.join("tmp")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    dir
}

/// An nginx process proxying to crier nodes.
pub struct Nginx {
    _child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx on a free port with `upstreams` as the `crier` upstream.
    pub async fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = prefix();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|addr| format!("        server {addr} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let tmp = dir.join("tmp");
        let config = format!(
            "worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream crier {{
{servers}        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {locations};
    }}
}}
",
            dir = dir.display(),
            tmp = tmp.display(),
            locations = config_dir().join("crier-locations.conf").display(),
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config).expect("write nginx.conf");
        let child = Command::new(binary())
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&file)
            // One process (no master and workers), so killing it on drop leaves nothing behind.
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            // Its error log (a node going away is logged) only when asked for, like crier's.
            .stderr(if std::env::var_os("CRIER_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Nginx { _child: child, addr, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
