//! Canonical JSON: the byte string that audit hashes and checkpoint signatures cover.
//!
//! The form is RFC 8785 (JSON Canonicalization Scheme) restricted to the values audit records
//! carry, which keeps it exact without an ECMAScript number formatter:
//!
//! * objects: members sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3), no
//!   whitespace, `:` and `,` as the only separators; duplicate names cannot occur (serde maps);
//! * strings: `"` and `\` escaped with a backslash, U+0008/09/0A/0C/0D as `\b \t \n \f \r`,
//!   other controls below U+0020 as `\u00xx` (lowercase hex), everything else as raw UTF-8
//!   (RFC 8785 §3.2.2.2, which is also what `serde_json` writes);
//! * numbers: integers only, in the I-JSON safe range ±(2^53 − 1), written in decimal without
//!   exponent or leading zeros, which is what ECMAScript's `Number.prototype.toString` gives for
//!   them. Any other number is refused ([`CanonicalError::Number`]); record builders turn such
//!   values into strings first ([`crate::redact::normalise_details`]);
//! * `true`, `false`, `null` as themselves; arrays keep their order.
//!
//! Any RFC 8785 implementation therefore produces the same bytes for an audit record, so an
//! auditor can re-hash records with independent tooling.

use serde_json::Value;

/// Largest integer that survives a round trip through an IEEE 754 double (I-JSON).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number that is not an integer in ±(2^53 − 1); its value is not echoed (it may be data
    /// the caller wants kept out of messages).
    #[error("number at {path} is not an integer within ±(2^53-1), which canonical audit JSON requires")]
    Number { path: String },
}

/// Serialises `value` in canonical form.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    write(value, &mut out, &mut String::from("$"))?;
    Ok(out)
}

/// Canonical form of anything serialisable (through `serde_json::Value`).
pub fn canonical_of<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CanonicalError> {
    // Serialising our own plain data types into a Value cannot fail (no non-string map keys).
    let value = serde_json::to_value(v).expect("audit types serialise to JSON");
    to_canonical(&value)
}

fn write(value: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let int = n
                .as_i64()
                .filter(|i| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i))
                .ok_or_else(|| CanonicalError::Number { path: path.clone() })?;
            out.extend_from_slice(int.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                write(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(k);
                write(v, out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(to_canonical(v).unwrap()).unwrap()
    }

    #[test]
    fn spec_13_4_1_canonical_json_sorts_by_utf16_like_rfc8785() {
        // RFC 8785 §3.2.3's sorting example: the emoji (a surrogate pair, 0xD83D…) sorts before
        // U+FB33, which plain UTF-8 byte order would get wrong.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",
                "1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control",
                "\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let keys: Vec<String> = {
            let s = canon(&v);
            let back: serde_json::Map<String, Value> = serde_json::from_str(&s).unwrap();
            // Re-read the order from the text itself, not from a (sorted) map.
            let mut order: Vec<(usize, String)> = back
                .keys()
                .map(|k| {
                    let encoded = String::from_utf8(to_canonical(&Value::String(k.clone())).unwrap()).unwrap();
                    (s.find(&format!("{encoded}:")).unwrap(), k.clone())
                })
                .collect();
            order.sort();
            order.into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!(
            keys,
            vec!["\r", "1", "\u{80}", "\u{f6}", "\u{20ac}", "\u{1f600}", "\u{fb33}"]
        );
    }

    #[test]
    fn spec_13_4_1_canonical_json_golden() {
        let v = json!({"b": [1, -2, true, null, "x"], "a": {"z": "\"q\\\n\u{1}", "y": 9007199254740991_i64}, "é": ""});
        assert_eq!(
            canon(&v),
            r#"{"a":{"y":9007199254740991,"z":"\"q\\\n\u0001"},"b":[1,-2,true,null,"x"],"é":""}"#
        );
    }

    #[test]
    fn spec_13_4_1_canonical_json_refuses_floats_and_unsafe_integers() {
        assert_eq!(
            to_canonical(&json!({"a": [0, 1.5]})),
            Err(CanonicalError::Number { path: "$.a[1]".into() })
        );
        assert!(to_canonical(&json!(9007199254740992_i64)).is_err());
        assert!(to_canonical(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn spec_13_4_1_canonical_json_is_stable_under_reparsing() {
        let v = json!({"k": "line\u{2028}sep", "n": [{"b": 1, "a": 2}]});
        let once = canon(&v);
        let twice = canon(&serde_json::from_str(&once).unwrap());
        assert_eq!(once, twice);
    }
}
