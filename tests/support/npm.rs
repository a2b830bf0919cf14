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
