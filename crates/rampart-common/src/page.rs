//! List pagination: `?limit=` (1..=1000, default 100) and an opaque `?cursor=` that encodes the
//! sort key of the last item returned (keyset pagination: stable under inserts, no OFFSET scans).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::Error;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// Query parameters of every list operation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Number of items to return, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// The `next` value of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request: `after` is the sort key to continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

impl PageParams {
    pub fn validate(&self) -> Result<PageRequest, Error> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::field(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                decode_cursor(c)
                    .ok_or_else(|| Error::field("cursor", "cursor is not a value returned as `next` by this list"))?,
            ),
        };
        Ok(PageRequest { limit, after })
    }
}

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{key}"))
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.strip_prefix("v1:").map(str::to_string)
}

/// Cuts a list fetched with `limit + 1` rows into a page and its `next` cursor.
pub fn finish_page<T>(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = limit as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|last| encode_cursor(&key(last)));
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(PageParams::default().validate().unwrap().limit, 100);
        assert!(
            PageParams {
                limit: Some(0),
                cursor: None
            }
            .validate()
            .is_err()
        );
        assert!(
            PageParams {
                limit: Some(1001),
                cursor: None
            }
            .validate()
            .is_err()
        );
        assert!(
            PageParams {
                limit: None,
                cursor: Some("%%%".into())
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn cursor_round_trips() {
        let c = encode_cursor("node-7");
        let p = PageParams {
            limit: Some(5),
            cursor: Some(c),
        }
        .validate()
        .unwrap();
        assert_eq!(p.after.as_deref(), Some("node-7"));
    }

    #[test]
    fn finish_page_sets_next_only_when_more() {
        let (items, next) = finish_page(vec![1, 2, 3], 2, |i| i.to_string());
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next, Some(encode_cursor("2")));
        let (items, next) = finish_page(vec![1, 2], 2, |i| i.to_string());
        assert_eq!(items.len(), 2);
        assert!(next.is_none());
    }
}
