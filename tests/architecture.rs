//! The architecture test: top-level modules of `src/` form one-way layers.
//!
//! The allowed matrix lives in ARCHITECTURE.md (section "Layers", between the
//! `layers:begin`/`layers:end` markers): a module may import (`use crate::x` or a `crate::x::`
//! path) only modules of a strictly lower layer. Imports that still run the other way are
//! listed between the `back-imports:begin`/`back-imports:end` markers; the list may only
//! shrink: a new back-import fails, and so does an entry that no longer exists. Production
//! code only: `#[cfg(test)]` items and comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn between<'a>(doc: &'a str, begin: &str, end: &str) -> &'a str {
    let b = doc
        .find(begin)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md lacks the marker {begin}"));
    let rest = &doc[b + begin.len()..];
    let e = rest
        .find(end)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md lacks the marker {end}"));
    &rest[..e]
}

/// `| 3 | `dialect`, `catalog` | ... |` rows -> module -> layer.
fn layers(doc: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in between(doc, "<!-- layers:begin -->", "<!-- layers:end -->").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let Ok(layer) = cells[1].parse::<u32>() else {
            continue;
        };
        for m in cells[2].split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                assert!(
                    out.insert(m.to_string(), layer).is_none(),
                    "module {m} is placed twice in the layer table"
                );
            }
        }
    }
    assert!(
        !out.is_empty(),
        "the layer table in ARCHITECTURE.md is empty"
    );
    out
}

/// `` - `a` → `b` `` lines: the documented back-imports still to remove.
fn known(doc: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in between(
        doc,
        "<!-- back-imports:begin -->",
        "<!-- back-imports:end -->",
    )
    .lines()
    {
        let ticks: Vec<&str> = line.split('`').collect();
        if line.trim_start().starts_with('|') && ticks.len() >= 5 && line.contains('→') {
            out.insert((ticks[1].to_string(), ticks[3].to_string()));
        }
    }
    out
}

/// The source without comments, string literals and `#[cfg(test)]` items.
fn production(text: &str) -> String {
    // Drop comments and string contents first, keeping line breaks (for line numbers).
    let b = text.as_bytes();
    let mut s = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    s.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // Raw strings (r"..", r#".."#) end at the matching quote and hashes.
            let mut hashes = 0;
            let mut j = i;
            while j > 0 && b[j - 1] == b'#' {
                hashes += 1;
                j -= 1;
            }
            let raw = j > 0 && b[j - 1] == b'r';
            i += 1;
            while i < b.len() {
                if b[i] == b'\n' {
                    s.push('\n');
                }
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&b'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            s.push_str("\"\"");
        } else {
            s.push(b[i] as char);
            i += 1;
        }
    }
    // Then cut every `#[cfg(test)]` item: up to its `;` or its matching `}`.
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(p) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..p]);
        let item = &rest[p..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(item[..end].chars().filter(|c| *c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn ident(s: &str) -> &str {
    let n = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..n]
}

/// (line, target module, the import text) for every `crate::` path of a file.
fn imports(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(p) = rest.find("crate::") {
            let boundary = rest[..p]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let after = &rest[p + "crate::".len()..];
            if boundary {
                if let Some(group) = after.strip_prefix('{') {
                    // `use crate::{a, b::c}`: the top-level names of the group (may span lines).
                    let tail: String = text.lines().skip(n).collect::<Vec<_>>().join(" ");
                    let start = tail.find("crate::{").map_or(0, |k| k + "crate::{".len());
                    let mut depth = 0;
                    let mut names = Vec::new();
                    let mut expect = true;
                    for (k, c) in tail[start..].char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => expect = true,
                            c if expect && (c.is_ascii_alphabetic() || c == '_') => {
                                names.push(ident(&tail[start + k..]).to_string());
                                expect = false;
                            }
                            _ => {}
                        }
                    }
                    for m in names {
                        out.push((n + 1, m, format!("crate::{{{}", ident(group))));
                    }
                } else {
                    let m = ident(after);
                    if !m.is_empty() {
                        let shown = after
                            .find([';', ' ', '(', ','])
                            .map_or(after, |k| &after[..k]);
                        out.push((n + 1, m.to_string(), format!("crate::{shown}")));
                    }
                }
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let layer = layers(&doc);
    let known = known(&doc);
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);

    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen_back = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "build") {
            continue;
        }
        let Some(&from) = layer.get(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` has no layer in ARCHITECTURE.md",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read source");
        for (line, target, shown) in imports(&production(&text)) {
            if target == module || matches!(target.as_str(), "self" | "super") {
                continue;
            }
            let Some(&to) = layer.get(&target) else {
                continue; // a crate-root item (`crate::SOMETHING`) or a macro path
            };
            edges
                .entry(module.clone())
                .or_default()
                .insert(target.clone());
            if to >= from {
                let pair = (module.clone(), target.clone());
                seen_back.insert(pair.clone());
                if !known.contains(&pair) {
                    problems.push(format!(
                        "src/{}:{line}: `{module}` (layer {from}) imports `{shown}` (`{target}`, layer {to}); \
                         a module may only import lower layers",
                        rel.display()
                    ));
                }
            }
        }
    }
    for (a, b) in known.difference(&seen_back) {
        problems.push(format!(
            "ARCHITECTURE.md lists the back-import `{a}` → `{b}`, which no longer exists: remove it"
        ));
    }

    // Cycles between top-level modules outside the documented back-imports.
    let mut allowed = edges.clone();
    for (a, b) in &known {
        if let Some(s) = allowed.get_mut(a) {
            s.remove(b);
        }
    }
    for cycle in cycles(&allowed) {
        problems.push(format!("import cycle between top-level modules: {cycle:?}"));
    }
    let all_cycles = cycles(&edges);
    eprintln!("cycles through documented back-imports: {all_cycles:?}");
    assert!(
        problems.is_empty(),
        "architecture violations:\n{}",
        problems.join("\n")
    );
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_parser_sees_imports_and_skips_tests_and_comments() {
    let src = "use crate::a::X;\n// crate::b\nfn f() { crate::c::g(\"crate::d\"); }\n\
               use crate::{e, f::{G, H}};\n#[cfg(test)]\nmod tests { use crate::z; }\n";
    let got: Vec<String> = imports(&production(src))
        .into_iter()
        .map(|(_, m, _)| m)
        .collect();
    assert_eq!(got, ["a", "c", "e", "f"]);
}

/// Doc and line comments follow the layers too: a comment that names `crate::x` of a higher
/// layer (often an intra-doc link) reads as a dependency to a newcomer and to import-graph
/// tools that do not strip comments. Name the higher module in prose instead.
#[test]
fn comments_point_only_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let layer = layers(&doc);
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .expect("component")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(&from) = layer.get(&module) else {
            continue; // lib.rs, main.rs (the module map), or reported by the test above
        };
        let text = std::fs::read_to_string(f).expect("read source");
        let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
        // Only the comment lines, numbering kept.
        let comments: String = before_tests
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t.starts_with("//") {
                    t
                } else {
                    ""
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (line, target, shown) in imports(&comments) {
            if let Some(&to) = layer.get(&target) {
                if to > from {
                    problems.push(format!(
                        "src/{}:{line}: a comment in `{module}` (layer {from}) names `{shown}` (layer {to})",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "comments pointing up the layers:\n{}",
        problems.join("\n")
    );
}
