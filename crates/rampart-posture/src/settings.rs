//! `key value` configuration files: login.defs (`KEY value`), pwquality.conf and
//! faillock.conf (`key = value`), /etc/default/useradd (`KEY=value`). The last occurrence of
//! a key wins, as these readers overwrite earlier values.

use crate::catalogue::Syntax;

/// `(line index, key, value)` of each assignment.
pub fn parse(syntax: Syntax, text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| split(syntax, l).map(|(k, v)| (i, k, v)))
        .collect()
}

pub fn split(syntax: Syntax, line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let (k, v) = match syntax {
        Syntax::Space => {
            let idx = t.find(char::is_whitespace).unwrap_or(t.len());
            (&t[..idx], t[idx..].trim())
        }
        Syntax::Equals | Syntax::Shell => {
            // A bare word (faillock's `audit`, `silent`) is a flag without value.
            match t.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (t, ""),
            }
        }
    };
    let v = v.trim_matches('"');
    Some((k.to_string(), v.to_string()))
}

pub fn render(syntax: Syntax, key: &str, value: &str) -> String {
    match syntax {
        Syntax::Space => format!("{key}\t{value}"),
        Syntax::Equals => format!("{key} = {value}"),
        Syntax::Shell => format!("{key}={value}"),
    }
}

/// The value of `key` (last wins).
pub fn lookup(syntax: Syntax, text: &str, key: &str) -> Option<String> {
    parse(syntax, text)
        .into_iter()
        .rev()
        .find(|(_, k, _)| k == key)
        .map(|(_, _, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_1_1d_each_syntax_and_last_wins() {
        let defs = "# c\nPASS_MAX_DAYS\t99999\nUMASK  022\nPASS_MAX_DAYS 90\n";
        assert_eq!(lookup(Syntax::Space, defs, "PASS_MAX_DAYS").as_deref(), Some("90"));
        assert_eq!(lookup(Syntax::Space, defs, "UMASK").as_deref(), Some("022"));
        let pw = "# minlen = 20\nminlen=9\n dcredit = -1\n";
        assert_eq!(lookup(Syntax::Equals, pw, "minlen").as_deref(), Some("9"));
        let fl = "audit\ndeny = 4\n";
        assert_eq!(lookup(Syntax::Equals, fl, "deny").as_deref(), Some("4"));
        assert_eq!(lookup(Syntax::Equals, fl, "audit").as_deref(), Some(""));
        assert_eq!(
            lookup(Syntax::Shell, "INACTIVE=\"35\"\n", "INACTIVE").as_deref(),
            Some("35")
        );
        assert_eq!(render(Syntax::Shell, "INACTIVE", "30"), "INACTIVE=30");
    }
}
