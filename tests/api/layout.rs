//! The code layout holds its shape: data flows one way through the layers (transport ->
//! domain -> storage, configuration below them all), no modules import each other in a
//! circle, and no source file grows past the size where it usually holds two concepts.
//!
//! Read from the sources as text: every `crate::`, `super::` and `self::` path names what a
//! module uses, in `use` items, in code and in doc links alike.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The layer of each top-level module of the library: a module may use modules of its own
/// layer or below, never above. A new module must be placed here.
const LAYERS: &[(&str, u8)] = &[
    // Below everything: settings, names and small helpers that import nothing of ours.
    ("config", 0),
    ("guarded_body", 0),
    ("metrics", 0),
    ("proto", 0),
    ("report", 0),
    ("telemetry", 1),
    // Storage.
    ("store", 2),
    // The domain, and the scheduled job over it.
    ("auth", 3),
    ("cleanup", 4),
    // Transport.
    ("grpc", 5),
    ("http", 5),
    ("listener", 5),
    // Composition.
    ("server", 6),
];

/// The most lines a source file may have.
const MAX_LINES: usize = 400;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file (`main.rs`, the binary on top of it all, aside) with its module
/// path: `src/auth/login.rs` is `auth::login`, `src/auth/password/mod.rs` is `auth::password`.
fn library_files() -> Vec<(Vec<String>, PathBuf)> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src()).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main") if module.len() == 1 => return None,
                Some("mod") | Some("lib") => {
                    module.pop();
                }
                _ => {}
            }
            Some((module, path))
        })
        .collect()
}

/// The module paths `text` names, resolved from the module `here`, each cut to its first
/// three segments.
fn paths_named(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let boundary = at == 0 || {
            let before = bytes[at - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b'$')
        };
        let rest = &bytes[at..];
        let base: Option<(Vec<String>, usize)> = if !boundary {
            None
        } else if rest.starts_with(b"crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with(b"self::") {
            // In `a/b.rs` and in `a/b/mod.rs` alike, `self` is `a::b`.
            Some((here.to_vec(), "self::".len()))
        } else if rest.starts_with(b"super::") {
            let mut parent = here.to_vec();
            let mut length = 0;
            while bytes[at + length..].starts_with(b"super::") {
                parent.pop();
                length += "super::".len();
            }
            Some((parent, length))
        } else {
            None
        };
        let Some((base, length)) = base else {
            at += 1;
            continue;
        };
        let mut position = at + length;
        for tail in use_tree(bytes, &mut position) {
            let mut path = base.clone();
            path.extend(tail);
            path.truncate(3);
            found.push(path);
        }
        at = position.max(at + 1);
    }
    found
}

/// The paths of a `use` tree (or of a plain path) starting at `position`, groups expanded.
fn use_tree(bytes: &[u8], position: &mut usize) -> Vec<Vec<String>> {
    let skip_space = |position: &mut usize| {
        while *position < bytes.len() && bytes[*position].is_ascii_whitespace() {
            *position += 1;
        }
    };
    skip_space(position);
    if bytes.get(*position) == Some(&b'{') {
        *position += 1;
        let mut paths = Vec::new();
        loop {
            skip_space(position);
            match bytes.get(*position) {
                None => return paths,
                Some(b'}') => {
                    *position += 1;
                    return paths;
                }
                Some(b',') => *position += 1,
                Some(_) => {
                    let before = *position;
                    paths.extend(use_tree(bytes, position));
                    if *position == before {
                        *position += 1;
                    }
                }
            }
        }
    }
    let start = *position;
    while *position < bytes.len()
        && (bytes[*position].is_ascii_alphanumeric() || bytes[*position] == b'_')
    {
        *position += 1;
    }
    if start == *position {
        return Vec::new();
    }
    let segment = String::from_utf8_lossy(&bytes[start..*position]).into_owned();
    if segment == "self" {
        return vec![Vec::new()];
    }
    if bytes[*position..].starts_with(b"::") {
        *position += 2;
        let tails = use_tree(bytes, position);
        if tails.is_empty() {
            return vec![vec![segment]];
        }
        return tails
            .into_iter()
            .map(|tail| std::iter::once(segment.clone()).chain(tail).collect())
            .collect();
    }
    vec![vec![segment]]
}

/// Which module uses which: an edge from `a::b` to `a::c` for every sibling module `b` names.
fn module_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = library_files();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(module, _)| module.clone()).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        for named in paths_named(&text, module) {
            // The first segment where the two paths part, on each side: siblings in one folder.
            let shared = module
                .iter()
                .zip(&named)
                .take_while(|(a, b)| a == b)
                .count();
            if shared >= module.len() || shared >= named.len() {
                continue; // the module itself, an ancestor, or one of its own children
            }
            let from = module[..=shared].to_vec();
            let to = named[..=shared].to_vec();
            if modules.contains(&to) {
                graph.entry(from).or_default().insert(to);
            }
        }
    }
    graph
}

/// A circle of modules, if there is one.
fn find_circle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        done: &mut BTreeSet<Vec<String>>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut circle: Vec<String> = stack[start..].iter().map(|n| n.join("::")).collect();
            circle.push(node.join("::"));
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, done, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let graph = module_graph();
    assert!(
        graph.contains_key(&vec!["server".to_owned()]),
        "the graph was read: {graph:?}"
    );
    assert_eq!(find_circle(&graph), None, "an import circle");
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let layer = |module: &str| {
        LAYERS
            .iter()
            .find(|(name, _)| *name == module)
            .map(|(_, layer)| *layer)
            .unwrap_or_else(|| panic!("module `{module}` has no layer: place it in LAYERS"))
    };
    let mut upward = Vec::new();
    for (from, targets) in module_graph() {
        if from.len() != 1 {
            continue;
        }
        for to in targets {
            if layer(&to[0]) > layer(&from[0]) {
                upward.push(format!("{} -> {}", from[0], to[0]));
            }
        }
    }
    assert_eq!(upward, Vec::<String>::new(), "imports from a layer above");
    for (name, _) in LAYERS {
        assert!(
            library_files()
                .iter()
                .any(|(module, _)| module == &[name.to_string()]),
            "LAYERS names `{name}`, which is not a module"
        );
    }
}

#[test]
fn no_source_file_is_over_four_hundred_lines() {
    let long: Vec<String> = library_files()
        .into_iter()
        .map(|(_, path)| path)
        .chain([src().join("main.rs")])
        .filter_map(|path| {
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert_eq!(long, Vec::<String>::new(), "files over {MAX_LINES} lines");
}

/// The reader itself: a circle and an upward import are found where they are.
#[test]
fn the_reader_resolves_crate_super_and_grouped_paths() {
    let here = vec!["auth".to_owned(), "login".to_owned()];
    let named = paths_named(
        "use super::{refresh, throttle::Backoff};\nuse crate::{store::{self, X}, config::Y};\n\
         let x = crate::metrics::count(); // not tonic::server::Router",
        &here,
    );
    let names: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        [
            "auth::refresh",
            "auth::throttle::Backoff",
            "store",
            "store::X",
            "config::Y",
            "metrics::count"
        ]
    );
    let mut graph = BTreeMap::new();
    let (a, b) = (vec!["a".to_owned()], vec!["b".to_owned()]);
    graph.insert(a.clone(), BTreeSet::from([b.clone()]));
    graph.insert(b, BTreeSet::from([a]));
    assert_eq!(
        find_circle(&graph),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
