//! The host's own input filter in front of the controller's API listeners (spec 10.1, 10.6):
//! loopback and the configured management source ranges reach the API ports, every other
//! packet to them is dropped and counted. Built with the same typed model as the tenant
//! rulesets ([`crate::nft`]), rendered once and loaded as one atomic nft transaction.

use std::time::Duration;

use crate::nft::{Chain, Family, Ruleset, Table};

/// What the filter admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInputFilter {
    /// The table's name: one per controller on a host (named after its first API port).
    pub table: String,
    pub ports: Vec<u16>,
    /// Source ranges (CIDR text, IPv4 or IPv6) allowed in besides loopback.
    pub sources: Vec<String>,
    /// Only packets arriving on this interface match the source ranges.
    pub interface: Option<String>,
}

impl ApiInputFilter {
    /// The table; `None` without source ranges (nothing is filtered then).
    pub fn ruleset(&self) -> Option<Ruleset> {
        if self.sources.is_empty() {
            return None;
        }
        let mut ports = self.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let dport = format!("tcp dport {{ {ports} }}");
        let pin = self
            .interface
            .as_deref()
            .map(|d| format!("iifname \"{d}\" "))
            .unwrap_or_default();
        let (v4, v6): (Vec<&str>, Vec<&str>) = self.sources.iter().map(String::as_str).partition(|s| !s.contains(':'));
        let mut rules = vec![format!("{dport} iif \"lo\" accept")];
        if !v4.is_empty() {
            rules.push(format!("{dport} {pin}ip saddr {{ {} }} accept", v4.join(", ")));
        }
        if !v6.is_empty() {
            rules.push(format!("{dport} {pin}ip6 saddr {{ {} }} accept", v6.join(", ")));
        }
        rules.push(format!("{dport} counter name \"refused\" drop"));
        let mut table = Table::new(Family::Inet, &self.table);
        table.counters.push("refused".into());
        table.chains.push(Chain {
            name: "input".into(),
            base: Some("type filter hook input priority -10; policy accept;".into()),
            rules,
        });
        Some(Ruleset { tables: vec![table] })
    }

    /// Loads the filter in one nft transaction, replacing the one of an earlier start. Without
    /// source ranges nothing is touched (a filter left by an earlier configuration stays until
    /// it is deleted by hand: failing closed).
    pub fn apply(&self, timeout: Duration) -> Result<bool, String> {
        let Some(ruleset) = self.ruleset() else {
            return Ok(false);
        };
        let table = &self.table;
        let script = format!(
            "add table inet {table}\ndelete table inet {table}\n{}",
            ruleset.render()
        );
        let out = crate::exec::run("nft", &["-f", "-"], Some(&script), "", timeout).map_err(|e| e.to_string())?;
        if !out.ok {
            return Err(out.stderr.trim().to_string());
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_10_6_2_input_filter_admits_only_loopback_and_the_configured_sources() {
        let mut f = ApiInputFilter {
            table: "rampart_api_8443".into(),
            ports: vec![8443, 8443],
            sources: vec![],
            interface: Some("mgmt0".into()),
        };
        assert_eq!(f.ruleset(), None, "no sources, no filter");
        f.sources = vec!["10.20.0.0/24".into(), "fd00::/64".into()];
        let text = f.ruleset().unwrap().render();
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("tcp dport"))
            .collect();
        assert_eq!(
            rules,
            [
                "tcp dport { 8443 } iif \"lo\" accept",
                "tcp dport { 8443 } iifname \"mgmt0\" ip saddr { 10.20.0.0/24 } accept",
                "tcp dport { 8443 } iifname \"mgmt0\" ip6 saddr { fd00::/64 } accept",
                "tcp dport { 8443 } counter name \"refused\" drop",
            ]
        );
        assert!(
            text.starts_with("table inet rampart_api_8443 {\n\tcounter refused {"),
            "{text}"
        );
        assert!(
            text.contains("type filter hook input priority -10; policy accept;"),
            "{text}"
        );
    }
}
