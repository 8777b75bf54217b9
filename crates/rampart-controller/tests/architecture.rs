//! The shape of the controller (issue 14, `docs/architecture.md`): route handlers parse, call a
//! use case of `app/` and render; they never touch the database; no file grows past what a
//! newcomer can read; no two files import each other, directly or round a longer loop.
//! These read the sources, so a change that breaks the shape fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_HANDLER_LINES: usize = 40;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, keyed by its module path (`["app", "network", "ports"]`;
/// `mod.rs` and `lib.rs` name their folder).
fn modules() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<Vec<String>, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                out.insert(parts, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &src(), &mut out);
    out
}

fn name(m: &[String]) -> String {
    if m.is_empty() { "lib".into() } else { m.join("/") }
}

/// The source without comments (a doc comment naming `crate::x` is not an import) and without
/// its unit tests (by convention the last item, `#[cfg(test)] mod tests`, whose `super` is the
/// file itself).
fn code(text: &str) -> String {
    let text = text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(c, _)| c))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file refers to: `crate::a::b…` anywhere (including inside `use crate::{…}`
/// groups), `super::…`, and `use child::…` of its own submodules.
fn references(m: &[String], text: &str, all: &BTreeMap<Vec<String>, String>) -> BTreeSet<Vec<String>> {
    let code = code(text);
    let mut paths: Vec<Vec<String>> = Vec::new();
    // `use crate::{a, b::{c, d}}` → expand the groups.
    fn expand(prefix: Vec<String>, s: &str, out: &mut Vec<Vec<String>>) {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            let mut depth = 0;
            let mut cur = String::new();
            for ch in inner.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(prefix.clone(), &cur, out);
                        cur.clear();
                        continue;
                    }
                    _ => {}
                }
                cur.push(ch);
            }
            if !cur.trim().is_empty() {
                expand(prefix, &cur, out);
            }
            return;
        }
        if let Some(i) = s.find("::{") {
            let mut p = prefix;
            p.extend(s[..i].split("::").map(|x| x.trim().to_string()));
            expand(p, &s[i + 2..], out);
            return;
        }
        let s = s.split(" as ").next().unwrap_or(s);
        let mut p = prefix;
        p.extend(s.split("::").map(|x| x.trim().to_string()));
        out.push(p);
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use crate::") {
        let after = &rest[i + "use crate::".len()..];
        let end = after.find(';').unwrap_or(after.len());
        expand(Vec::new(), &after[..end], &mut paths);
        rest = &after[end..];
    }
    for (marker, base) in [
        ("crate::", Vec::new()),
        ("super::", m[..m.len().saturating_sub(1)].to_vec()),
    ] {
        let mut from = 0;
        while let Some(i) = code[from..].find(marker) {
            let at = from + i;
            from = at + marker.len();
            if at > 0 && code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
                continue;
            }
            let tail: String = code[from..].chars().take_while(|c| is_ident(*c) || *c == ':').collect();
            if tail.is_empty() {
                continue;
            }
            let mut p = base.clone();
            p.extend(tail.split("::").filter(|s| !s.is_empty()).map(str::to_string));
            paths.push(p);
        }
    }
    for line in code.lines() {
        let l = line.trim_start();
        let l = l
            .strip_prefix("pub ")
            .or_else(|| l.strip_prefix("pub(crate) "))
            .unwrap_or(l);
        if let Some(u) = l.strip_prefix("use ") {
            let u = u.strip_prefix("self::").unwrap_or(u);
            let first: String = u.chars().take_while(|c| is_ident(*c)).collect();
            let mut child = m.to_vec();
            child.push(first);
            if all.contains_key(&child) {
                paths.push(child);
            }
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            (1..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|prefix| all.contains_key(prefix))
        })
        .filter(|t| t.as_slice() != m)
        .collect()
}

/// The strongly connected components of more than one file (Tarjan).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = t.edges.get_key_value(w) else {
                continue;
            };
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(name(w));
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
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_among_the_controllers_files() {
    let all = modules();
    let edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = all
        .iter()
        .map(|(m, text)| (m.clone(), references(m, text, &all)))
        .collect();
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles among the controller's files: {found:?}"
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut all = BTreeMap::new();
    let m = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
    all.insert(m("a"), "use crate::b::x;".to_string());
    all.insert(m("b"), "fn f() { crate::c::y(); }".to_string());
    all.insert(m("c"), "use crate::{d, a::{z}};".to_string());
    all.insert(m("d"), "// crate::a is only named in a comment".to_string());
    let edges = all.iter().map(|(k, v)| (k.clone(), references(k, v, &all))).collect();
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}

#[test]
fn no_controller_file_over_800_lines() {
    let long: Vec<String> = modules()
        .iter()
        .filter(|(_, t)| t.lines().count() > MAX_FILE_LINES)
        .map(|(m, t)| format!("{} ({} lines)", name(m), t.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these by use case: {long:?}");
}

#[test]
fn route_handlers_parse_call_and_render() {
    let mut problems = Vec::new();
    for (m, text) in modules()
        .iter()
        .filter(|(m, _)| m.first().is_some_and(|f| f == "routes"))
    {
        if code(text).contains("rampart_db") {
            problems.push(format!("{} uses rampart_db: database work belongs in app/", name(m)));
        }
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if let Some(sig) = lines[i].strip_prefix("pub async fn ") {
                let start = i;
                while i < lines.len() && lines[i] != "}" {
                    i += 1;
                }
                let len = i - start + 1;
                if len > MAX_HANDLER_LINES {
                    let f: String = sig.chars().take_while(|c| is_ident(*c)).collect();
                    problems.push(format!("{}::{f} is {len} lines", name(m)));
                }
            }
            i += 1;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Registrations under `routes/` that bypass `audited!` (and so bind no operation): a bare
/// utoipa-axum `routes!(…)`, or an axum `.route(…)` other than the OpenAPI document's, whose
/// operation `routes::table` binds by hand.
fn unaudited_registrations(file: &str, text: &str) -> Vec<String> {
    let code = code(text);
    let mut out = Vec::new();
    for (i, _) in code.match_indices("routes!(") {
        // The one use allowed is inside `audited!` itself.
        if !code[..i].ends_with("::utoipa_axum::") {
            out.push(format!("{file}: `routes!` without an audit operation; use `audited!`"));
        }
    }
    for (i, _) in code.match_indices(".route(") {
        if !code[i + ".route(".len()..].trim_start().starts_with("OPENAPI_PATH") {
            out.push(format!("{file}: `.route(` without an audit operation; use `audited!`"));
        }
    }
    out
}

#[test]
fn spec_13_4_1_every_route_is_registered_with_its_audit_operation() {
    use rampart_controller::routes::{agent_openapi, operations, public_openapi, undeclared};
    let ops = operations();
    let missing = undeclared(&[&public_openapi(), &agent_openapi()], &ops);
    assert!(
        missing.is_empty(),
        "routes without a declared audit operation (bind them with `audited!`): {missing:?}"
    );
    assert!(ops.get(&http::Method::GET, "/v1/openapi.json").is_some());
    let mut problems = Vec::new();
    for (m, text) in modules()
        .iter()
        .filter(|(m, _)| m.first().is_some_and(|f| f == "routes"))
    {
        problems.extend(unaudited_registrations(&name(m), text));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn spec_13_4_1_the_operation_checks_find_a_route_without_one() {
    use rampart_controller::routes::{operations, public_openapi, undeclared};
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    let mut doc = public_openapi();
    doc.paths.paths.insert(
        "/v1/unbound".into(),
        PathItem::new(HttpMethod::Post, OperationBuilder::new().build()),
    );
    assert_eq!(undeclared(&[&doc], &operations()), vec!["POST /v1/unbound".to_string()]);
    assert_eq!(
        undeclared(&[&doc], &Default::default()).len(),
        doc.paths
            .paths
            .values()
            .map(|i| [&i.get, &i.post, &i.put, &i.patch, &i.delete]
                .iter()
                .filter(|o| o.is_some())
                .count())
            .sum::<usize>()
    );
    let bare = "fn r() -> Routes {\n    Routes::new().routes(routes!(x::list))\n        .route(\"/v1/x\", get(h))\n}";
    assert_eq!(unaudited_registrations("routes/x", bare).len(), 2);
    let fine = "macro_rules! audited { () => { ::utoipa_axum::routes!(h) } }\nfn r() { a.route(\n  OPENAPI_PATH, get(h)); Routes::new().routes(audited!(x::list => app::x::LIST)) }";
    assert_eq!(unaudited_registrations("routes/mod", fine), Vec::<String>::new());
}
