//! Names of resources: `[a-z][a-z0-9-]{0,62}` (ARCHITECTURE.md §4) and node names, which are
//! host names.

use crate::Error;

/// Validates a resource name; `field` names the request field in the error.
pub fn validate_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!(
                "{field} must start with a lowercase letter and contain only lowercase letters, digits and '-' (at most 63 characters)"
            ),
        ))
    }
}

/// Validates a node name: a host name label sequence, lowercase, at most 63 characters.
pub fn validate_node_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.ends_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            "name",
            "node name must be a lowercase host name: letters, digits, '-' and '.', at most 63 characters",
        ))
    }
}

/// A host name turned into a valid node name (lowercased, invalid characters replaced).
pub fn node_name_from_hostname(host: &str) -> String {
    let mut s: String = host
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while s.ends_with(['-', '.']) {
        s.pop();
    }
    if s.is_empty() || !s.as_bytes()[0].is_ascii_alphanumeric() {
        s = format!("node-{s}");
        s.truncate(63);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_3_1_names_reject_injection_characters() {
        for bad in [
            "",
            "A",
            "1abc",
            "a b",
            "a;drop",
            "a'--",
            "<script>",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_name("name", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "web-1", &"a".repeat(63)] {
            validate_name("name", good).unwrap();
        }
    }

    #[test]
    fn node_names_follow_host_names() {
        validate_node_name("node-1.example").unwrap();
        assert!(validate_node_name("Node").is_err());
        assert!(validate_node_name("a/b").is_err());
        assert_eq!(node_name_from_hostname("My_Host.local."), "my-host.local");
        assert_eq!(node_name_from_hostname("-x"), "node--x");
    }
}
