//! The source tree keeps its shape: the top-level modules of `src/` import each other only
//! downwards, along the layers the README's "Layout" section draws; the edges reach the core
//! through the hub alone, and the core names no edge; no type name is defined twice; and no
//! source file grows past 600 lines of non-test code. Reads `src/` as text: every
//! `crate::<module>` path in code (comments and test modules aside) is an arrow from the
//! file's top-level module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import, from the bottom up (the README's
/// "Layout"). `internals` is the door for benchmarks and fuzz targets: it may reach anything,
/// and nothing imports it.
const LAYERS: &[(&str, &[&str])] = &[
    ("event", &[]),
    ("codec", &["event"]),
    ("limits", &[]),
    ("auth", &[]),
    ("registry", &["event"]),
    ("metrics", &["event", "auth"]),
    ("chunk", &["metrics"]),
    ("relay", &["event", "codec", "registry", "metrics"]),
    ("hub", &["event", "codec", "registry", "metrics", "relay"]),
    ("http", &["event", "limits", "auth", "metrics", "hub", "chunk"]),
    ("sse", &["event", "codec", "metrics", "chunk", "auth", "hub", "http"]),
    ("ws", &["event", "codec", "metrics", "chunk", "limits", "auth", "hub", "http"]),
    ("mercure", &["event", "codec", "metrics", "chunk", "limits", "auth", "hub", "http", "sse"]),
    ("config", &["auth", "hub", "relay", "http", "mercure"]),
    (
        "server",
        &["event", "metrics", "limits", "auth", "hub", "http", "sse", "ws", "mercure", "config"],
    ),
    (
        "internals",
        &[
            "event", "codec", "registry", "metrics", "relay", "hub", "http", "server", "ws",
            "mercure",
        ],
    ),
];

/// The edges and the server: they reach the core through the hub, never the registry.
const ABOVE_THE_HUB: &[&str] = &["http", "sse", "ws", "mercure", "config", "server"];

/// The core: it knows no edge, so none of it names the Mercure hub (what the hub needs is a
/// general mechanism there, such as a pinned topic, an internal log or a plain SSE stream).
const CORE: &[&str] = &["event", "registry", "hub"];

/// Longest a source file may be, in lines of non-test code.
const MAX_CODE_LINES: usize = 600;

struct SourceFile {
    path: PathBuf,
    /// The top-level module the file belongs to (`None` for the crate roots).
    module: Option<String>,
    /// Its lines up to its test module, comments included.
    code: Vec<String>,
    /// All of it, tests included.
    text: String,
}

fn source_files() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&root).expect("below src/");
                let first = relative.components().next().expect("a file name");
                let first = first.as_os_str().to_string_lossy();
                let module = match relative.components().count() {
                    1 if first == "lib.rs" || first == "main.rs" => None,
                    1 => Some(first.trim_end_matches(".rs").to_owned()),
                    _ => Some(first.into_owned()),
                };
                let is_test_file = path.file_name().is_some_and(|n| n == "tests.rs");
                let text = std::fs::read_to_string(&path).expect("read a source file");
                // Test modules close the file, by this crate's convention.
                let code = text
                    .lines()
                    .take_while(|line| !is_test_file && *line != "#[cfg(test)]")
                    .map(str::to_owned)
                    .collect();
                files.push(SourceFile { path, module, code, text });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The top-level modules named by `crate::` paths in `line`.
fn imports(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` and the like are not this crate's paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            found.extend(
                inner
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or_default().to_owned()),
            );
        } else {
            let name: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in source_files() {
        let Some(module) = file.module else { continue };
        let arrows = graph.entry(module.clone()).or_default();
        for line in &file.code {
            for target in imports(line) {
                if target != module {
                    arrows.insert(target);
                }
            }
        }
    }
    graph
}

#[test]
fn the_import_parser_reads_paths_not_comments() {
    assert_eq!(imports("use crate::event::{Event, Wire};"), ["event"]);
    assert_eq!(imports("    let x = crate::codec::ws::encode(1, b\"\");"), ["codec"]);
    assert_eq!(imports("use crate::{http, hub::Hub};"), ["http", "hub"]);
    assert!(imports("//! see [`crate::server`]").is_empty());
    assert!(imports("$crate::thing").is_empty());
}

#[test]
fn every_arrow_points_down_the_layers() {
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, targets) in &graph {
        let Some(allowed) = layers.get(module.as_str()) else {
            wrong.push(format!("{module} is not in the layer table"));
            continue;
        };
        for target in targets {
            if !allowed.contains(&target.as_str()) {
                wrong.push(format!("{module} imports {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows outside the layers:\n{}", wrong.join("\n"));
    for module in layers.keys() {
        assert!(graph.contains_key(*module), "{module} is in the table but not in src/");
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Kahn's algorithm: a graph is acyclic when every module can be taken once the modules it
    // imports are.
    let mut left: BTreeMap<&str, BTreeSet<&str>> = graph
        .iter()
        .map(|(m, t)| {
            (m.as_str(), t.iter().map(String::as_str).filter(|t| graph.contains_key(*t)).collect())
        })
        .collect();
    while let Some(free) = left.iter().find(|(_, t)| t.is_empty()).map(|(m, _)| *m) {
        left.remove(free);
        for targets in left.values_mut() {
            targets.remove(free);
        }
    }
    assert!(left.is_empty(), "modules in an import cycle: {:?}", left.keys().collect::<Vec<_>>());
}

#[test]
fn the_lower_layers_know_nothing_of_the_upper_ones() {
    let graph = graph();
    let imports_of = |module: &str| graph.get(module).cloned().unwrap_or_default();
    for forbidden in ["sse", "ws", "server", "relay", "hub", "http", "codec"] {
        assert!(!imports_of("registry").contains(forbidden), "registry imports {forbidden}");
    }
    for edge in ["sse", "ws"] {
        assert!(!imports_of(edge).contains("server"), "{edge} imports server");
    }
    assert!(!imports_of("relay").contains("hub"), "relay imports hub");
    assert!(imports_of("event").is_empty(), "event imports {:?}", imports_of("event"));
    assert!(
        imports_of("codec").iter().all(|m| m == "event"),
        "codec imports {:?}",
        imports_of("codec")
    );
}

#[test]
fn no_source_file_is_over_600_lines_of_code() {
    let long: Vec<String> = source_files()
        .into_iter()
        .filter(|file| file.code.len() > MAX_CODE_LINES)
        .map(|file| format!("{}: {} lines", file.path.display(), file.code.len()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_CODE_LINES} lines of code:\n{}", long.join("\n"));
}

#[test]
fn the_edges_reach_the_core_through_the_hub_only() {
    let graph = graph();
    for module in ABOVE_THE_HUB {
        let imports = graph.get(*module).cloned().unwrap_or_default();
        assert!(!imports.contains("registry"), "{module} imports the registry; use the hub");
    }
}

#[test]
fn the_core_knows_no_edge() {
    let mut named = Vec::new();
    for file in source_files() {
        if !file.module.as_deref().is_some_and(|m| CORE.contains(&m)) {
            continue;
        }
        for (number, line) in file.text.lines().enumerate() {
            if line.to_ascii_lowercase().contains("mercure") {
                named.push(format!("{}:{}: {}", file.path.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(named.is_empty(), "the core names the Mercure hub:\n{}", named.join("\n"));
}

/// The name a line defines, if it defines a type: a struct, enum, union or trait, or a type
/// alias of a module (an associated type, `type Output = …` in an impl, is none).
fn defined_type(line: &str) -> Option<&str> {
    let indented = line.starts_with(' ');
    let code = line.trim_start();
    let (public, code) = if let Some(rest) = code.strip_prefix("pub(") {
        (true, rest.split_once(')')?.1.trim_start())
    } else if let Some(rest) = code.strip_prefix("pub ") {
        (true, rest.trim_start())
    } else {
        (false, code)
    };
    let (keyword, rest) = code.split_once(' ')?;
    let name = rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?;
    let is_type = match keyword {
        "struct" | "enum" | "union" | "trait" => true,
        "type" => public || !indented,
        _ => false,
    };
    (is_type && name.starts_with(|c: char| c.is_ascii_uppercase())).then_some(name)
}

#[test]
fn the_definition_reader_reads_types_not_associated_types() {
    assert_eq!(defined_type("pub(crate) struct Peer {"), Some("Peer"));
    assert_eq!(defined_type("    struct Local<'a> {"), Some("Local"));
    assert_eq!(defined_type("pub enum Closed {"), Some("Closed"));
    assert_eq!(defined_type("pub(crate) type Stack = x;"), Some("Stack"));
    assert_eq!(defined_type("    type Output = F::Output;"), None);
    assert_eq!(defined_type("    type Error = Infallible;"), None);
    assert_eq!(defined_type("// a struct Foo in a comment"), None);
    assert_eq!(defined_type("let structure = 1;"), None);
}

#[test]
fn no_type_name_is_defined_twice() {
    // tower's habit: every middleware names its future `ResponseFuture`, in its own module.
    const ALLOWED: &[&str] = &["ResponseFuture"];
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in source_files() {
        for (number, line) in file.text.lines().enumerate() {
            if let Some(name) = defined_type(line) {
                let place = format!("{}:{}", file.path.display(), number + 1);
                defined.entry(name.to_owned()).or_default().push(place);
            }
        }
    }
    let twice: Vec<String> = defined
        .into_iter()
        .filter(|(name, places)| places.len() > 1 && !ALLOWED.contains(&name.as_str()))
        .map(|(name, places)| format!("{name}: {}", places.join(", ")))
        .collect();
    assert!(twice.is_empty(), "type names defined twice:\n{}", twice.join("\n"));
}
