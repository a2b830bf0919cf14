//! npm packages the tests run under Node, installed on first use into the build's own
//! temporary folder (as the Autobahn suite installs its own Python): nothing global changes.

use std::path::PathBuf;
use std::process::Command;

/// The `node_modules` folder holding `spec` (`name@version`), installed if it is not there yet.
pub fn package(spec: &str) -> PathBuf {
    let (name, version) = spec.rsplit_once('@').expect("name@version");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("npm-{name}-{version}"));
    let modules = root.join("node_modules");
    let manifest = modules.join(name).join("package.json");
    let installed = std::fs::read_to_string(&manifest)
        .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")));
    if !installed {
        std::fs::create_dir_all(&root).expect("a folder for the package");
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&root)
            .arg(spec)
            .status()
            .expect("npm runs (.ci/run installs Node.js and npm)");
        assert!(status.success(), "npm install {spec} failed");
    }
    modules
}

/// A Node script run beside an npm package, so its `import`s resolve to it.
pub struct NodeScript {
    child: tokio::process::Child,
    path: PathBuf,
}

impl NodeScript {
    /// Writes `source` (an ES module) beside `package` (`name@version`, installed if need be)
    /// and starts `node` on it with `arg`; its stdout is kept.
    pub fn start(package: &str, source: &str, arg: &str) -> NodeScript {
        let modules = self::package(package);
        let folder = modules.parent().expect("the package's folder");
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = folder.join(format!("script-{}-{n}.mjs", std::process::id()));
        std::fs::write(&path, source).expect("write the script");
        let child = tokio::process::Command::new("node")
            .arg(&path)
            .arg(arg)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        NodeScript { child, path }
    }

    /// What it printed, once it ends (within the test deadline), as JSON.
    pub async fn json_output(self) -> serde_json::Value {
        let NodeScript { child, path } = self;
        let output = tokio::time::timeout(super::WAIT, child.wait_with_output())
            .await
            .expect("the script ends in time")
            .expect("node ran");
        let _ = std::fs::remove_file(&path);
        serde_json::from_slice(&output.stdout).expect("the script prints JSON")
    }
}
