//! A small typed model of the nftables objects Rampart owns, its text rendering, the parser of
//! `nft -j list table` output, and the pure diff that turns (desired, observed) into one
//! transaction.
//!
//! Why a diff and not "delete table, load table": connection-limit state lives in the rules that
//! carry `ct count`, and named counters are the drop metrics; replacing a whole table would reset
//! both every time a port is added. The diff touches only what changed: set/map elements move by
//! `add element`/`delete element`, a chain is flushed and refilled only when its content hash
//! changed. The hash rides in the comment of the chain's last rule (nft 1.0.6 does not report
//! chain comments in JSON and cannot update them), so observing needs no side store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Most elements a flow-log set holds; when full, new flows are not recorded (never dropped
/// for that reason: the `add` statement simply does not match).
pub const FLOW_LOG_SIZE: u32 = 65535;
/// How long a flow-log element lives after it was created (`add` does not refresh it).
pub const FLOW_LOG_TIMEOUT: &str = "1h";

/// Tables are per VPC network namespace, so fixed names are unique where they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Bridge,
    Inet,
    Ip,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
            Family::Ip => "ip",
        }
    }

    fn parse(s: &str) -> Option<Family> {
        match s {
            "bridge" => Some(Family::Bridge),
            "inet" => Some(Family::Inet),
            "ip" => Some(Family::Ip),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Base chain declaration, e.g. `type filter hook forward priority filter; policy drop;`.
    pub base: Option<String>,
    /// Rule bodies in order, without the trailing hash comment.
    pub rules: Vec<String>,
}

impl Chain {
    pub fn regular(name: impl Into<String>, rules: Vec<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
            rules,
        }
    }

    /// `h:` + FNV-1a over the declaration and the rules. Not a security boundary (whoever can
    /// write the ruleset is root); it detects drift and change.
    pub fn hash(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |s: &str| {
            for b in s.bytes().chain(std::iter::once(b'\n')) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(self.base.as_deref().unwrap_or(""));
        for r in &self.rules {
            feed(r);
        }
        format!("h:{h:016x}")
    }

    /// The rules as loaded: the last one carries the hash. `return` at the end of a chain is
    /// what falling off the end does anyway (policy for a base chain), so the marker rule never
    /// changes a verdict.
    pub fn rendered_rules(&self) -> Vec<String> {
        let mut v = self.rules.clone();
        v.push(format!("return comment \"{}\"", self.hash()));
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Key type, e.g. `ifname . ether_addr . ipv4_addr`.
    pub key: String,
    /// Value type for a map (`verdict`, `mark`, `ipv4_addr`).
    pub value: Option<String>,
    /// Canonical element text (see [`elem`]).
    pub elements: BTreeSet<String>,
    /// Filled by the data path (`add @set { ... }`), not by us: elements expire after an hour
    /// and carry a counter. The diff never touches their elements; the agent reads them as
    /// flow records (10.9-2).
    pub dynamic: bool,
}

impl Set {
    pub fn plain(name: impl Into<String>, key: &str) -> Set {
        Set {
            name: name.into(),
            key: key.into(),
            value: None,
            elements: BTreeSet::new(),
            dynamic: false,
        }
    }

    /// A set the data path fills with flow keys, each element with its own packet counter.
    pub fn flow_log(name: impl Into<String>, key: &str) -> Set {
        Set {
            dynamic: true,
            ..Set::plain(name, key)
        }
    }

    pub fn map(name: impl Into<String>, key: &str, value: &str) -> Set {
        Set {
            name: name.into(),
            key: key.into(),
            value: Some(value.into()),
            elements: BTreeSet::new(),
            dynamic: false,
        }
    }

    fn decl(&self) -> String {
        if self.dynamic {
            return format!(
                "{{ type {}; size {FLOW_LOG_SIZE}; flags dynamic,timeout; timeout {FLOW_LOG_TIMEOUT}; counter; }}",
                self.key
            );
        }
        match &self.value {
            Some(v) => format!("{{ type {} : {}; }}", self.key, v),
            None => format!("{{ type {}; }}", self.key),
        }
    }

    fn kind(&self) -> &'static str {
        if self.value.is_some() { "map" } else { "set" }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub sets: Vec<Set>,
    pub counters: Vec<String>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn new(family: Family, name: &str) -> Table {
        Table {
            family,
            name: name.into(),
            sets: vec![],
            counters: vec![],
            chains: vec![],
        }
    }

    pub fn set_mut(&mut self, name: &str) -> &mut Set {
        self.sets
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("compiler bug: set {name} was not declared"))
    }

    fn id(&self) -> String {
        format!("{} {}", self.family.as_str(), self.name)
    }
}

/// Canonical element text, the same for what we render and what we parse back:
/// components joined by ` . `, interface names quoted, marks as `0x%08x`, verdicts as
/// `jump chain`, then ` : value` for maps.
pub mod elem {
    pub fn ifname(s: &str) -> String {
        format!("\"{s}\"")
    }

    pub fn mark(m: u32) -> String {
        format!("0x{m:08x}")
    }

    pub fn concat(parts: &[String]) -> String {
        parts.join(" . ")
    }

    pub fn map(key: String, value: String) -> String {
        format!("{key} : {value}")
    }
}

/// Everything the compiler wants in one network namespace: the tables of one VPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The declarative text of the whole ruleset, as `nft list ruleset` would show it
    /// (modulo formatting). Used for golden tests and for the full-replace fallback.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            render_table(&mut out, t);
        }
        out
    }
}

fn render_table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "table {} {{", t.id());
    for c in &t.counters {
        let _ = writeln!(out, "\tcounter {c} {{\n\t}}");
    }
    for s in &t.sets {
        let _ = writeln!(out, "\t{} {} {{", s.kind(), s.name);
        match &s.value {
            Some(v) => {
                let _ = writeln!(out, "\t\ttype {} : {}", s.key, v);
            }
            None => {
                let _ = writeln!(out, "\t\ttype {}", s.key);
            }
        }
        if s.dynamic {
            let _ = writeln!(
                out,
                "\t\tsize {FLOW_LOG_SIZE}\n\t\tflags dynamic,timeout\n\t\tcounter\n\t\ttimeout {FLOW_LOG_TIMEOUT}"
            );
        }
        if !s.elements.is_empty() {
            let items: Vec<&str> = s.elements.iter().map(String::as_str).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
        }
        let _ = writeln!(out, "\t}}");
    }
    for c in &t.chains {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(b) = &c.base {
            let _ = writeln!(out, "\t\t{b}");
        }
        for r in c.rendered_rules() {
            let _ = writeln!(out, "\t\t{r}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

// ---------------------------------------------------------------------------------------------
// Observed state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedChain {
    pub rule_count: usize,
    /// Comment of the last rule (our hash marker), if any.
    pub last_comment: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedTable {
    pub chains: BTreeMap<String, ObservedChain>,
    /// Set name → (declaration as `key` / `key : value`, canonical elements).
    pub sets: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Counter name → (packets, bytes).
    pub counters: BTreeMap<String, (u64, u64)>,
    /// Set name → element → packets, for elements that carry a counter (flow logs).
    pub element_counters: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRuleset {
    pub tables: BTreeMap<(Family, String), ObservedTable>,
}

impl ObservedRuleset {
    /// Parses `nft -j list ruleset` (or several `list table` outputs concatenated as one
    /// `nftables` array). Objects of families we do not manage are ignored.
    pub fn from_json(v: &Value) -> Result<ObservedRuleset, String> {
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("nft JSON lacks the nftables array")?;
        let mut out = ObservedRuleset::default();
        let key = |o: &Value, table_field: &str| -> Option<(Family, String)> {
            Some((
                Family::parse(o.get("family")?.as_str()?)?,
                o.get(table_field)?.as_str()?.to_string(),
            ))
        };
        for item in items {
            if let Some(t) = item.get("table") {
                if let Some(k) = key(t, "name") {
                    out.tables.entry(k).or_default();
                }
            } else if let Some(c) = item.get("chain") {
                if let (Some(k), Some(name)) = (key(c, "table"), c.get("name").and_then(Value::as_str)) {
                    out.tables
                        .entry(k)
                        .or_default()
                        .chains
                        .entry(name.to_string())
                        .or_default();
                }
            } else if let Some(r) = item.get("rule") {
                if let (Some(k), Some(chain)) = (key(r, "table"), r.get("chain").and_then(Value::as_str)) {
                    let c = out
                        .tables
                        .entry(k)
                        .or_default()
                        .chains
                        .entry(chain.to_string())
                        .or_default();
                    c.rule_count += 1;
                    c.last_comment = r.get("comment").and_then(Value::as_str).map(str::to_string);
                }
            } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
                let (Some(k), Some(name)) = (key(s, "table"), s.get("name").and_then(Value::as_str)) else {
                    continue;
                };
                let keys = type_list(s.get("type"));
                let value = s.get("map").and_then(Value::as_str).map(str::to_string);
                let decl = match &value {
                    Some(v) => format!("{} : {v}", keys.join(" . ")),
                    None => keys.join(" . "),
                };
                let mut elements = BTreeSet::new();
                let mut counted = BTreeMap::new();
                for e in s.get("elem").and_then(Value::as_array).into_iter().flatten() {
                    let text = canonical_elem(e, &keys, value.as_deref())?;
                    if let Some(p) = e
                        .get("elem")
                        .and_then(|x| x.get("counter"))
                        .and_then(|c| c.get("packets"))
                        .and_then(Value::as_u64)
                    {
                        counted.insert(text.clone(), p);
                    }
                    elements.insert(text);
                }
                let table = out.tables.entry(k).or_default();
                if !counted.is_empty() {
                    table.element_counters.insert(name.to_string(), counted);
                }
                table.sets.insert(name.to_string(), (decl, elements));
            } else if let Some(c) = item.get("counter")
                && let (Some(k), Some(name)) = (key(c, "table"), c.get("name").and_then(Value::as_str))
            {
                let n = |f: &str| c.get(f).and_then(Value::as_u64).unwrap_or(0);
                out.tables
                    .entry(k)
                    .or_default()
                    .counters
                    .insert(name.to_string(), (n("packets"), n("bytes")));
            }
        }
        Ok(out)
    }
}

fn type_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => vec![],
    }
}

fn atom(v: &Value, ty: &str) -> Result<String, String> {
    match (ty, v) {
        ("ifname", Value::String(s)) => Ok(elem::ifname(s)),
        ("mark", Value::Number(n)) => n
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .map(elem::mark)
            .ok_or_else(|| format!("bad mark {n}")),
        (_, Value::String(s)) => Ok(s.clone()),
        (_, Value::Number(n)) => Ok(n.to_string()),
        _ => Err(format!("unsupported nft element {v}")),
    }
}

fn canonical_elem(e: &Value, keys: &[String], value: Option<&str>) -> Result<String, String> {
    // Elements with attributes (timeouts, counters) come wrapped as {"elem": {"val": ...}}.
    let e = e.get("elem").and_then(|x| x.get("val")).unwrap_or(e);
    let (k, v) = match (value, e) {
        (Some(_), Value::Array(kv)) if kv.len() == 2 => (&kv[0], Some(&kv[1])),
        (None, _) => (e, None),
        _ => return Err(format!("unexpected map element {e}")),
    };
    let key = match k.get("concat").and_then(Value::as_array) {
        Some(parts) => {
            if parts.len() != keys.len() {
                return Err(format!("element {k} does not match type {}", keys.join(" . ")));
            }
            let mut out = Vec::new();
            for (p, t) in parts.iter().zip(keys) {
                out.push(atom(p, t)?);
            }
            elem::concat(&out)
        }
        None => atom(k, keys.first().map(String::as_str).unwrap_or(""))?,
    };
    match (value, v) {
        (Some("verdict"), Some(v)) => {
            let (kind, target) = ["jump", "goto"]
                .iter()
                .find_map(|kind| {
                    v.get(*kind)
                        .and_then(|x| x.get("target"))
                        .and_then(Value::as_str)
                        .map(|t| (*kind, t))
                })
                .ok_or_else(|| format!("unsupported verdict {v}"))?;
            Ok(elem::map(key, format!("{kind} {target}")))
        }
        (Some(t), Some(v)) => Ok(elem::map(key, atom(v, t)?)),
        _ => Ok(key),
    }
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

/// One command of an nft transaction. A list of them is loaded with a single `nft -f -`, which
/// the kernel applies atomically or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftOp {
    AddTable {
        family: Family,
        table: String,
    },
    DeleteTable {
        family: Family,
        table: String,
    },
    AddCounter {
        family: Family,
        table: String,
        name: String,
    },
    DeleteCounter {
        family: Family,
        table: String,
        name: String,
    },
    AddSet {
        family: Family,
        table: String,
        set: Set,
    },
    DeleteSet {
        family: Family,
        table: String,
        kind: &'static str,
        name: String,
    },
    AddChain {
        family: Family,
        table: String,
        name: String,
        base: Option<String>,
    },
    FlushChain {
        family: Family,
        table: String,
        name: String,
    },
    DeleteChain {
        family: Family,
        table: String,
        name: String,
    },
    AddRule {
        family: Family,
        table: String,
        chain: String,
        rule: String,
    },
    AddElements {
        family: Family,
        table: String,
        set: String,
        elements: Vec<String>,
    },
    DeleteElements {
        family: Family,
        table: String,
        set: String,
        elements: Vec<String>,
    },
}

impl NftOp {
    /// Whether the op only moves set/map elements (the 10.9-1 "retag without rule rewrite"
    /// property is checked on this).
    pub fn is_element_update(&self) -> bool {
        matches!(self, NftOp::AddElements { .. } | NftOp::DeleteElements { .. })
    }
}

/// Renders a transaction as an nft script. One statement per line (nft 1.0.6 rejects `…; }` on
/// a rule line); large element lists are split so no line grows without bound.
pub fn render_ops(ops: &[NftOp]) -> String {
    let mut out = String::new();
    for op in ops {
        match op {
            NftOp::AddTable { family, table } => {
                let _ = writeln!(out, "add table {} {table}", family.as_str());
            }
            NftOp::DeleteTable { family, table } => {
                let _ = writeln!(out, "delete table {} {table}", family.as_str());
            }
            NftOp::AddCounter { family, table, name } => {
                let _ = writeln!(out, "add counter {} {table} {name}", family.as_str());
            }
            NftOp::DeleteCounter { family, table, name } => {
                let _ = writeln!(out, "delete counter {} {table} {name}", family.as_str());
            }
            NftOp::AddSet { family, table, set } => {
                let _ = writeln!(
                    out,
                    "add {} {} {table} {} {}",
                    set.kind(),
                    family.as_str(),
                    set.name,
                    set.decl()
                );
            }
            NftOp::DeleteSet {
                family,
                table,
                kind,
                name,
            } => {
                let _ = writeln!(out, "delete {kind} {} {table} {name}", family.as_str());
            }
            NftOp::AddChain {
                family,
                table,
                name,
                base,
            } => match base {
                Some(b) => {
                    let _ = writeln!(out, "add chain {} {table} {name} {{ {b} }}", family.as_str());
                }
                None => {
                    let _ = writeln!(out, "add chain {} {table} {name}", family.as_str());
                }
            },
            NftOp::FlushChain { family, table, name } => {
                let _ = writeln!(out, "flush chain {} {table} {name}", family.as_str());
            }
            NftOp::DeleteChain { family, table, name } => {
                let _ = writeln!(out, "delete chain {} {table} {name}", family.as_str());
            }
            NftOp::AddRule {
                family,
                table,
                chain,
                rule,
            } => {
                let _ = writeln!(out, "add rule {} {table} {chain} {rule}", family.as_str());
            }
            NftOp::AddElements {
                family,
                table,
                set,
                elements,
            } => {
                for chunk in elements.chunks(256) {
                    let _ = writeln!(
                        out,
                        "add element {} {table} {set} {{ {} }}",
                        family.as_str(),
                        chunk.join(", ")
                    );
                }
            }
            NftOp::DeleteElements {
                family,
                table,
                set,
                elements,
            } => {
                for chunk in elements.chunks(256) {
                    let _ = writeln!(
                        out,
                        "delete element {} {table} {set} {{ {} }}",
                        family.as_str(),
                        chunk.join(", ")
                    );
                }
            }
        }
    }
    out
}

fn table_from_scratch(t: &Table, ops: &mut Vec<NftOp>) {
    let (family, table) = (t.family, t.name.clone());
    ops.push(NftOp::AddTable {
        family,
        table: table.clone(),
    });
    for c in &t.counters {
        ops.push(NftOp::AddCounter {
            family,
            table: table.clone(),
            name: c.clone(),
        });
    }
    for s in &t.sets {
        ops.push(NftOp::AddSet {
            family,
            table: table.clone(),
            set: Set {
                elements: BTreeSet::new(),
                ..s.clone()
            },
        });
    }
    for c in &t.chains {
        ops.push(NftOp::AddChain {
            family,
            table: table.clone(),
            name: c.name.clone(),
            base: c.base.clone(),
        });
    }
    for s in &t.sets {
        if !s.elements.is_empty() {
            ops.push(NftOp::AddElements {
                family,
                table: table.clone(),
                set: s.name.clone(),
                elements: s.elements.iter().cloned().collect(),
            });
        }
    }
    for c in &t.chains {
        for rule in c.rendered_rules() {
            ops.push(NftOp::AddRule {
                family,
                table: table.clone(),
                chain: c.name.clone(),
                rule,
            });
        }
    }
}

/// The full-replace transaction: every table dropped (if present) and loaded again. Used when
/// the incremental transaction fails because someone else changed our tables in a way the
/// diff cannot see.
pub fn replace_ops(desired: &Ruleset) -> Vec<NftOp> {
    let mut ops = Vec::new();
    for t in &desired.tables {
        // `add` first so the `delete` cannot fail on a missing table.
        ops.push(NftOp::AddTable {
            family: t.family,
            table: t.name.clone(),
        });
        ops.push(NftOp::DeleteTable {
            family: t.family,
            table: t.name.clone(),
        });
        table_from_scratch(t, &mut ops);
    }
    ops
}

/// The smallest transaction that turns `observed` into `desired`. Tables of `observed` that
/// `desired` does not name are deleted only when listed in `owned` (we never touch tables we
/// did not create). Empty when nothing differs, so applying twice changes nothing.
pub fn diff(desired: &Ruleset, observed: &ObservedRuleset, owned: &[(Family, &str)]) -> Vec<NftOp> {
    let mut ops = Vec::new();
    for t in &desired.tables {
        let Some(o) = observed.tables.get(&(t.family, t.name.clone())) else {
            table_from_scratch(t, &mut ops);
            continue;
        };
        diff_table(t, o, &mut ops);
    }
    for (family, name) in owned {
        let present = observed.tables.contains_key(&(*family, name.to_string()));
        let wanted = desired.tables.iter().any(|t| t.family == *family && t.name == *name);
        if present && !wanted {
            ops.push(NftOp::DeleteTable {
                family: *family,
                table: name.to_string(),
            });
        }
    }
    ops
}

fn diff_table(t: &Table, o: &ObservedTable, ops: &mut Vec<NftOp>) {
    let (family, table) = (t.family, t.name.clone());
    let desired_chains: BTreeMap<&str, &Chain> = t.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let desired_sets: BTreeMap<&str, &Set> = t.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let changed: Vec<&Chain> = t
        .chains
        .iter()
        .filter(|c| {
            o.chains.get(&c.name).is_none_or(|oc| {
                oc.rule_count != c.rules.len() + 1 || oc.last_comment.as_deref() != Some(c.hash().as_str())
            })
        })
        .collect();
    // A set whose type changed cannot be altered in place: drop and re-create it. Its name is
    // derived from its role, so this only happens when the layout itself changed.
    let retyped: BTreeSet<&str> = t
        .sets
        .iter()
        .filter(|s| {
            o.sets.get(&s.name).is_some_and(|(decl, _)| {
                let want = match &s.value {
                    Some(v) => format!("{} : {v}", s.key),
                    None => s.key.clone(),
                };
                *decl != want
            })
        })
        .map(|s| s.name.as_str())
        .collect();

    // 1. Drop references to what goes away: stale elements (vmap jumps), rules of changed and
    //    obsolete chains.
    for s in &t.sets {
        if let Some((_, have)) = o.sets.get(&s.name)
            && !retyped.contains(s.name.as_str())
            && !s.dynamic
        {
            let stale: Vec<String> = have.difference(&s.elements).cloned().collect();
            if !stale.is_empty() {
                ops.push(NftOp::DeleteElements {
                    family,
                    table: table.clone(),
                    set: s.name.clone(),
                    elements: stale,
                });
            }
        }
    }
    for c in &changed {
        if o.chains.contains_key(&c.name) {
            ops.push(NftOp::FlushChain {
                family,
                table: table.clone(),
                name: c.name.clone(),
            });
        }
    }
    let obsolete_chains: Vec<&String> = o
        .chains
        .keys()
        .filter(|n| !desired_chains.contains_key(n.as_str()))
        .collect();
    for n in &obsolete_chains {
        ops.push(NftOp::FlushChain {
            family,
            table: table.clone(),
            name: (*n).clone(),
        });
    }
    // 2. Delete what is no longer wanted.
    for n in &obsolete_chains {
        ops.push(NftOp::DeleteChain {
            family,
            table: table.clone(),
            name: (*n).clone(),
        });
    }
    for (n, (decl, _)) in &o.sets {
        if !desired_sets.contains_key(n.as_str()) || retyped.contains(n.as_str()) {
            ops.push(NftOp::DeleteSet {
                family,
                table: table.clone(),
                kind: if decl.contains(" : ") { "map" } else { "set" },
                name: n.clone(),
            });
        }
    }
    for n in o.counters.keys() {
        if !t.counters.contains(n) {
            ops.push(NftOp::DeleteCounter {
                family,
                table: table.clone(),
                name: n.clone(),
            });
        }
    }
    // 3. Declare what is new, then fill.
    for c in &t.counters {
        if !o.counters.contains_key(c) {
            ops.push(NftOp::AddCounter {
                family,
                table: table.clone(),
                name: c.clone(),
            });
        }
    }
    for s in &t.sets {
        if !o.sets.contains_key(&s.name) || retyped.contains(s.name.as_str()) {
            ops.push(NftOp::AddSet {
                family,
                table: table.clone(),
                set: Set {
                    elements: BTreeSet::new(),
                    ..(*s).clone()
                },
            });
        }
    }
    for c in &changed {
        if !o.chains.contains_key(&c.name) || c.base.is_some() {
            // For an existing base chain this re-states hook and policy.
            ops.push(NftOp::AddChain {
                family,
                table: table.clone(),
                name: c.name.clone(),
                base: c.base.clone(),
            });
        }
    }
    for s in &t.sets {
        let have = match o.sets.get(&s.name) {
            Some((_, have)) if !retyped.contains(s.name.as_str()) => have.clone(),
            _ => BTreeSet::new(),
        };
        let missing: Vec<String> = s.elements.difference(&have).cloned().collect();
        if !missing.is_empty() {
            ops.push(NftOp::AddElements {
                family,
                table: table.clone(),
                set: s.name.clone(),
                elements: missing,
            });
        }
    }
    for c in &changed {
        for rule in c.rendered_rules() {
            ops.push(NftOp::AddRule {
                family,
                table: table.clone(),
                chain: c.name.clone(),
                rule,
            });
        }
    }
}

impl ObservedRuleset {
    /// Applies a transaction to this model the way the kernel would, all or nothing: what the
    /// fake driver uses, and a check that a transaction is self-consistent (no rule into a
    /// missing chain, no deletion of something absent).
    pub fn apply_ops(&mut self, ops: &[NftOp]) -> Result<(), String> {
        let mut next = self.clone();
        for op in ops {
            next.apply_one(op)?;
        }
        *self = next;
        Ok(())
    }

    fn table(&mut self, family: Family, table: &str) -> Result<&mut ObservedTable, String> {
        self.tables
            .get_mut(&(family, table.to_string()))
            .ok_or_else(|| format!("No such file or directory: table {} {table}", family.as_str()))
    }

    fn apply_one(&mut self, op: &NftOp) -> Result<(), String> {
        let missing = |what: &str, name: &str| format!("No such file or directory: {what} {name}");
        match op {
            NftOp::AddTable { family, table } => {
                self.tables.entry((*family, table.clone())).or_default();
            }
            NftOp::DeleteTable { family, table } => {
                self.tables
                    .remove(&(*family, table.clone()))
                    .ok_or_else(|| missing("table", table))?;
            }
            NftOp::AddCounter { family, table, name } => {
                self.table(*family, table)?.counters.entry(name.clone()).or_default();
            }
            NftOp::DeleteCounter { family, table, name } => {
                self.table(*family, table)?
                    .counters
                    .remove(name)
                    .ok_or_else(|| missing("counter", name))?;
            }
            NftOp::AddSet { family, table, set } => {
                let decl = match &set.value {
                    Some(v) => format!("{} : {v}", set.key),
                    None => set.key.clone(),
                };
                self.table(*family, table)?
                    .sets
                    .entry(set.name.clone())
                    .or_insert((decl, BTreeSet::new()));
            }
            NftOp::DeleteSet {
                family, table, name, ..
            } => {
                self.table(*family, table)?
                    .sets
                    .remove(name)
                    .ok_or_else(|| missing("set", name))?;
            }
            NftOp::AddChain {
                family, table, name, ..
            } => {
                self.table(*family, table)?.chains.entry(name.clone()).or_default();
            }
            NftOp::FlushChain { family, table, name } => {
                let c = self
                    .table(*family, table)?
                    .chains
                    .get_mut(name)
                    .ok_or_else(|| missing("chain", name))?;
                *c = ObservedChain::default();
            }
            NftOp::DeleteChain { family, table, name } => {
                self.table(*family, table)?
                    .chains
                    .remove(name)
                    .ok_or_else(|| missing("chain", name))?;
            }
            NftOp::AddRule {
                family,
                table,
                chain,
                rule,
            } => {
                let c = self
                    .table(*family, table)?
                    .chains
                    .get_mut(chain)
                    .ok_or_else(|| missing("chain", chain))?;
                c.rule_count += 1;
                c.last_comment = rule
                    .rsplit_once("comment \"")
                    .and_then(|(_, c)| c.strip_suffix('"'))
                    .map(str::to_string);
            }
            NftOp::AddElements {
                family,
                table,
                set,
                elements,
            } => {
                let s = self
                    .table(*family, table)?
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| missing("set", set))?;
                s.1.extend(elements.iter().cloned());
            }
            NftOp::DeleteElements {
                family,
                table,
                set,
                elements,
            } => {
                let s = self
                    .table(*family, table)?
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| missing("set", set))?;
                for e in elements {
                    if !s.1.remove(e) {
                        return Err(missing("element", e));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ruleset {
        let mut t = Table::new(Family::Inet, "t");
        t.counters.push("c_drop".into());
        let mut s = Set::plain("s1", "ipv4_addr");
        s.elements.insert("10.0.0.1".into());
        t.sets.push(s);
        let mut m = Set::map("m1", "mark", "verdict");
        m.elements.insert(elem::map(elem::mark(0x10001), "jump c1".into()));
        t.sets.push(m);
        let mut b = Set::plain("b1", "ifname . ether_addr . ipv4_addr");
        b.elements.insert(elem::concat(&[
            elem::ifname("tap1"),
            "02:00:00:00:01:11".into(),
            "10.0.0.1".into(),
        ]));
        t.sets.push(b);
        t.chains
            .push(Chain::regular("c1", vec!["counter name \"c_drop\" drop".into()]));
        t.chains.push(Chain {
            name: "fw".into(),
            base: Some("type filter hook forward priority filter; policy accept;".into()),
            rules: vec!["meta mark vmap @m1".into()],
        });
        Ruleset { tables: vec![t] }
    }

    /// What `nft -j list table inet t` printed on the CI machine kind for the sample above.
    fn sample_json(r: &Ruleset) -> Value {
        let c1 = &r.tables[0].chains[0];
        let fw = &r.tables[0].chains[1];
        serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"counter": {"family": "inet", "name": "c_drop", "table": "t", "handle": 10, "packets": 3, "bytes": 180}},
            {"set": {"family": "inet", "name": "s1", "table": "t", "type": "ipv4_addr", "handle": 6, "elem": ["10.0.0.1"]}},
            {"map": {"family": "inet", "name": "m1", "table": "t", "type": "mark", "handle": 7, "map": "verdict",
                "elem": [[65537, {"jump": {"target": "c1"}}]]}},
            {"set": {"family": "inet", "name": "b1", "table": "t", "type": ["ifname", "ether_addr", "ipv4_addr"],
                "handle": 8, "elem": [{"concat": ["tap1", "02:00:00:00:01:11", "10.0.0.1"]}]}},
            {"chain": {"family": "inet", "table": "t", "name": "c1", "handle": 1}},
            {"chain": {"family": "inet", "table": "t", "name": "fw", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "t", "chain": "c1", "handle": 3, "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "c1", "handle": 4, "expr": [], "comment": c1.hash()}},
            {"rule": {"family": "inet", "table": "t", "chain": "fw", "handle": 5, "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "fw", "handle": 6, "expr": [], "comment": fw.hash()}},
        ]})
    }

    #[test]
    fn observed_state_equal_to_desired_gives_an_empty_transaction() {
        let r = sample();
        let o = ObservedRuleset::from_json(&sample_json(&r)).unwrap();
        assert_eq!(o.tables[&(Family::Inet, "t".into())].counters["c_drop"], (3, 180));
        let ops = diff(&r, &o, &[(Family::Inet, "t")]);
        assert!(ops.is_empty(), "{}", render_ops(&ops));
    }

    #[test]
    fn spec_10_9_1_membership_change_is_an_element_update_only() {
        let r = sample();
        let o = ObservedRuleset::from_json(&sample_json(&r)).unwrap();
        let mut r2 = r.clone();
        r2.tables[0].set_mut("s1").elements = BTreeSet::from(["10.0.0.2".to_string()]);
        let ops = diff(&r2, &o, &[]);
        assert!(ops.iter().all(NftOp::is_element_update), "{ops:?}");
        assert_eq!(
            render_ops(&ops),
            "delete element inet t s1 { 10.0.0.1 }\nadd element inet t s1 { 10.0.0.2 }\n"
        );
    }

    #[test]
    fn changed_chain_is_flushed_and_refilled_and_obsolete_objects_go() {
        let r = sample();
        let o = ObservedRuleset::from_json(&sample_json(&r)).unwrap();
        let mut r2 = r.clone();
        r2.tables[0].chains[0].rules = vec!["accept".into()];
        r2.tables[0].sets.retain(|s| s.name != "b1");
        r2.tables[0].counters.clear();
        let text = render_ops(&diff(&r2, &o, &[]));
        let want = "flush chain inet t c1\n\
                    delete set inet t b1\n\
                    delete counter inet t c_drop\n";
        assert!(text.starts_with(want), "{text}");
        assert!(text.contains("add rule inet t c1 accept\n"), "{text}");
        assert!(!text.contains("chain inet t fw"), "unchanged chain touched: {text}");
    }

    #[test]
    fn tampered_chain_is_detected_by_rule_count() {
        let r = sample();
        let mut j = sample_json(&r);
        j["nftables"].as_array_mut().unwrap().push(
            serde_json::json!({"rule": {"family": "inet", "table": "t", "chain": "c1", "handle": 9, "expr": []}}),
        );
        let o = ObservedRuleset::from_json(&j).unwrap();
        let text = render_ops(&diff(&r, &o, &[]));
        assert!(text.starts_with("flush chain inet t c1\n"), "{text}");
    }

    #[test]
    fn missing_table_is_created_in_dependency_order() {
        let text = render_ops(&diff(&sample(), &ObservedRuleset::default(), &[]));
        let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} missing in {text}"));
        assert!(pos("add table") < pos("add counter"));
        assert!(pos("add map inet t m1") < pos("add chain inet t c1"));
        assert!(pos("add chain inet t c1") < pos("add element inet t m1"));
        assert!(pos("add element inet t m1") < pos("add rule"));
    }

    #[test]
    fn unowned_tables_are_left_alone() {
        let mut o = ObservedRuleset::default();
        o.tables
            .insert((Family::Inet, "someone_else".into()), ObservedTable::default());
        o.tables
            .insert((Family::Ip, "rampart_nat".into()), ObservedTable::default());
        let ops = diff(&Ruleset::default(), &o, &[(Family::Ip, "rampart_nat")]);
        assert_eq!(render_ops(&ops), "delete table ip rampart_nat\n");
    }
}
