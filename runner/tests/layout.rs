//! The runner's layout: no source file imports one that imports it back,
//! and device specs are parsed only where the command line is.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The runner modules each `src/*.rs` file names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    let modules: BTreeSet<&String> = files.keys().collect();
    files
        .iter()
        .map(|(name, text)| {
            let mut named = BTreeSet::new();
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                let region = match rest.strip_prefix('{') {
                    // `crate::{a, b::{C, D}}`: every word up to the matching brace.
                    Some(inner) => {
                        let mut depth = 1;
                        let end = inner
                            .char_indices()
                            .find(|&(_, c)| {
                                depth += match c {
                                    '{' => 1,
                                    '}' => -1,
                                    _ => 0,
                                };
                                depth == 0
                            })
                            .map_or(inner.len(), |(i, _)| i);
                        &inner[..end]
                    }
                    None => rest
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap(),
                };
                for word in region.split(|c: char| !c.is_alphanumeric() && c != '_') {
                    if word != name && modules.contains(&word.to_string()) {
                        named.insert(word.to_string());
                    }
                }
            }
            (name.clone(), named)
        })
        .collect()
}

#[test]
fn no_runner_file_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(
        graph["run"].contains("cli"),
        "the scan sees imports: {graph:?}"
    );
    // Depth-first search with colours: grey on the stack, black done.
    fn visit<'a>(
        n: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| *s == n) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(n);
            panic!(
                "import cycle among runner/src files: {}",
                cycle.join(" -> ")
            );
        }
        stack.push(n);
        for m in &graph[n] {
            visit(m, graph, stack, done);
        }
        stack.pop();
        done.insert(n);
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn device_specs_are_parsed_only_by_the_command_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        if name != "cli.rs" {
            assert!(
                !text.contains("DeviceSpec::parse") && !text.contains("parse::<DeviceSpec>"),
                "{name} parses a device spec; take the DeviceSpec clap made"
            );
        }
    }
}
