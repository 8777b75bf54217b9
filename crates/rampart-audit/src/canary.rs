//! Canary scanning (spec 13.4-7, 13.3-4): tests plant unique fake secrets (passwords, tokens,
//! TOTP seeds, key material) in every request, then scan every log file, the audit store dump,
//! black-box dumps and the syslog receiver's output for them. Zero hits is the pass condition.
//!
//! A secret can leak in disguise, so each canary is searched in the encodings a log line is
//! likely to carry: raw, JSON-escaped, lower- and upper-case hex, percent-encoded, and base64
//! in standard and URL-safe alphabets at each of the three byte alignments it can take inside a
//! longer base64 string.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// One place a canary was found. The canary itself is not repeated (only its index), so a
/// failing test's output does not spread it further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryHit {
    pub path: PathBuf,
    pub offset: usize,
    pub canary: usize,
    pub encoding: &'static str,
}

/// Every searchable form of `canary` with the name of its encoding.
pub fn encodings(canary: &str) -> Vec<(&'static str, Vec<u8>)> {
    let raw = canary.as_bytes();
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![("raw", raw.to_vec())];
    let json = serde_json::to_string(canary).expect("strings serialise");
    let json = json.as_bytes()[1..json.len() - 1].to_vec();
    if json != raw {
        out.push(("json", json));
    }
    out.push(("hex", hex::encode(raw).into_bytes()));
    out.push(("HEX", hex::encode_upper(raw).into_bytes()));
    let pct: String = raw
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if pct.as_bytes() != raw {
        out.push(("percent", pct.into_bytes()));
    }
    for (name, engine) in [("base64", &STANDARD_NO_PAD), ("base64url", &URL_SAFE_NO_PAD)] {
        for shift in 0..3usize {
            // Prefix `shift` bytes, encode, then keep only the characters that depend on the
            // canary alone: they appear whatever surrounds it in a longer encoded string.
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(raw);
            let enc = engine.encode(&buf);
            let skip = (shift * 4).div_ceil(3);
            let whole = (buf.len() / 3) * 4;
            if whole > skip + 4 {
                out.push((name, enc.as_bytes()[skip..whole].to_vec()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return Vec::new();
    }
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Scans a byte buffer (a file, a database dump, a captured stream).
pub fn scan_bytes(origin: &Path, data: &[u8], canaries: &[&str]) -> Vec<CanaryHit> {
    let mut hits = Vec::new();
    for (i, c) in canaries.iter().enumerate() {
        for (enc, needle) in encodings(c) {
            for offset in find_all(data, &needle) {
                hits.push(CanaryHit {
                    path: origin.to_path_buf(),
                    offset,
                    canary: i,
                    encoding: enc,
                });
            }
        }
    }
    hits
}

/// Scans every regular file under each path (recursively; symlinks are not followed).
pub fn scan_paths(paths: &[&Path], canaries: &[&str]) -> std::io::Result<Vec<CanaryHit>> {
    let mut hits = Vec::new();
    let mut stack: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else if meta.is_file() {
            let data = std::fs::read(&p)?;
            hits.extend(scan_bytes(&p, &data, canaries));
        }
    }
    hits.sort_by(|a, b| (&a.path, a.offset).cmp(&(&b.path, b.offset)));
    Ok(hits)
}

/// A fresh canary: recognisable, unique per run, never a real credential.
pub fn new_canary(label: &str) -> String {
    format!("canary-{label}-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn spec_13_4_7_canary_scanner_finds_planted_secrets_in_any_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let c = new_canary("pw");
        let quoted = "pa\"ss\\canary-x1";
        let cases: Vec<(&str, String)> = vec![
            ("raw.log", format!("level=info user=alice password={c}\n")),
            ("json.log", serde_json::json!({"msg": quoted}).to_string()),
            ("hex.log", format!("blob={}", hex::encode(c.as_bytes()))),
            ("pct.log", "GET /?p=pa%22ss%5Ccanary-x1&q=1".to_string()),
            ("b64.log", format!("auth={}", STANDARD.encode(format!("alice:{c}")))),
            ("b64b.log", format!("x={}", STANDARD.encode(format!("ab{c}zz")))),
            ("clean.log", "nothing to see here\n".to_string()),
        ];
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for (name, body) in &cases {
            std::fs::write(dir.path().join("sub").join(name), body).unwrap();
        }
        let hits = scan_paths(&[dir.path()], &[&c, quoted]).unwrap();
        let files: std::collections::BTreeSet<String> = hits
            .iter()
            .map(|h| h.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let expect: std::collections::BTreeSet<String> =
            ["raw.log", "json.log", "hex.log", "pct.log", "b64.log", "b64b.log"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(files, expect, "{hits:?}");
        assert!(hits.iter().any(|h| h.encoding == "percent" && h.canary == 1));
        assert!(hits.iter().any(|h| h.encoding == "json" && h.canary == 1));
        assert!(!format!("{hits:?}").contains(&c), "hits never echo the canary");
    }

    #[test]
    fn spec_13_4_7_canary_scanner_reports_nothing_on_clean_input() {
        let c = new_canary("token");
        assert!(scan_bytes(Path::new("x"), b"an ordinary log line with canary- prefix only", &[&c]).is_empty());
    }
}
