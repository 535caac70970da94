//! Small helpers shared by the simulators: query parsing, base64url, a xorshift generator, JSON
//! responses and per-record JSON overrides. Nothing here is public outside the `sim` module except [`XorShift`].

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

/// A tiny xorshift64* pseudo-random generator (deterministic, seeded by the caller).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// Creates a generator; a zero seed is replaced by a fixed non-zero constant.
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Returns the next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Returns `n` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next_u64() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

/// Decodes `%XX` escapes and `+` (as a space) in a query component.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a raw query string into decoded `(key, value)` pairs, keeping order and duplicates.
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(pair, true), String::new()),
        })
        .collect()
}

/// First value of an exact key.
pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// All values of an array-like parameter: `base=a,b`, `base[]=a`, `base[0]=a` (comma lists are
/// split). Returns `None` when the parameter is absent altogether.
pub(crate) fn multi(params: &[(String, String)], base: &str) -> Option<Vec<String>> {
    let mut found = false;
    let mut out = Vec::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix(base) else {
            continue;
        };
        let matches = rest.is_empty()
            || rest == "[]"
            || (rest.starts_with('[')
                && rest.ends_with(']')
                && rest.len() > 2
                && rest[1..rest.len() - 1].bytes().all(|b| b.is_ascii_digit()));
        if !matches {
            continue;
        }
        found = true;
        out.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    found.then_some(out)
}

/// Rebuilds `base + path + ?query` with `page` replaced by the given page number.
pub(crate) fn href_with_page(base: &str, path: &str, raw_query: &str, page: u64) -> String {
    let mut parts: Vec<&str> = raw_query
        .split('&')
        .filter(|s| !s.is_empty())
        .filter(|s| {
            let key = s.split_once('=').map(|(k, _)| k).unwrap_or(s);
            percent_decode(key, true) != "page"
        })
        .collect();
    let page_part = format!("page={page}");
    parts.push(&page_part);
    format!("{base}{path}?{}", parts.join("&"))
}

/// `base + path [+ ?query]`.
pub(crate) fn href(base: &str, path: &str, raw_query: &str) -> String {
    if raw_query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{raw_query}")
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub(crate) fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64[((n >> (18 - 6 * i)) & 0x3F) as usize] as char);
        }
    }
    out
}

/// Decodes base64url (padding optional; `+` and `/` also accepted).
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A JSON response with the given status and content type.
pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &Value,
) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An empty `204 No Content` response.
pub(crate) fn no_content() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// A change made to one record's JSON as served (the simulators' "malformed record" switch):
/// listed keys are removed first, then `merge` is applied: an object's keys are inserted into
/// (replace) the record's keys; any other JSON value replaces the whole record.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct JsonOverride {
    pub merge: Option<Value>,
    pub remove: Vec<String>,
}

impl JsonOverride {
    /// Applies the override to a rendered record.
    pub(crate) fn apply(&self, v: &mut Value) {
        if let Value::Object(o) = v {
            for k in &self.remove {
                o.remove(k);
            }
        }
        match (&self.merge, v) {
            (None, _) => {}
            (Some(Value::Object(m)), Value::Object(o)) => {
                for (k, x) in m {
                    o.insert(k.clone(), x.clone());
                }
            }
            (Some(other), v) => *v = other.clone(),
        }
    }
}

/// Path segments, percent-decoded, empty segments dropped (so a trailing slash is ignored).
pub(crate) fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_roundtrip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = b64url_encode(s.as_bytes());
            assert_eq!(b64url_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(b64url_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64url_encode(b"fo"), "Zm8");
    }

    #[test]
    fn json_override_merges_removes_and_replaces() {
        let base = serde_json::json!({"id": 1, "a": 2, "b": 3});
        let mut v = base.clone();
        JsonOverride {
            merge: Some(serde_json::json!({"a": "2", "c": null})),
            remove: vec!["b".into()],
        }
        .apply(&mut v);
        assert_eq!(v, serde_json::json!({"id": 1, "a": "2", "c": null}));
        let mut v = base.clone();
        JsonOverride {
            merge: Some(serde_json::json!([1])),
            remove: vec![],
        }
        .apply(&mut v);
        assert_eq!(v, serde_json::json!([1]));
        let mut v = base.clone();
        JsonOverride::default().apply(&mut v);
        assert_eq!(v, base);
    }

    #[test]
    fn query_multi() {
        let q =
            parse_query("filter[id][]=1&filter[id][0]=2&filter[id]=3,4&filter[idx]=9&a=b%20c+d");
        assert_eq!(multi(&q, "filter[id]").unwrap(), vec!["1", "2", "3", "4"]);
        assert_eq!(param(&q, "a"), Some("b c d"));
        assert!(multi(&q, "filter[nope]").is_none());
    }
}
