//! Decoding API answers: a failure names the API, the endpoint and the field path; a list page
//! whose records do not all fit is decoded record by record, and a record that does not fit is
//! skipped and kept as a [`BadRecord`] (quarantine) instead of failing the whole page.

use super::{ApiClient, ApiError};
use serde::de::DeserializeOwned;

/// One record of an otherwise well-formed page that does not fit the expected types: skipped,
/// reported (log, metric, `status`) and quarantined, so it never stalls the rest of the sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadRecord {
    /// `kommo` or `chatapp`.
    pub api: String,
    /// Method and path.
    pub endpoint: String,
    /// The record when it can be named (`lead:123`, `1:grWhatsApp:7999@c.us`, an event id).
    pub subject: Option<String>,
    /// The JSON path of the field that does not fit.
    pub path: String,
    /// Why (shortened and scrubbed).
    pub reason: String,
}

/// A list page: its records and what paging needs from it (`Meta`).
pub trait ListPage<T>: DeserializeOwned {
    /// What paging needs (a `next` link, a cursor, a page count).
    type Meta;
    /// The records and the paging data.
    fn split(self) -> (Vec<T>, Self::Meta);
}

/// Names a record from its raw JSON, for a [`BadRecord`].
pub type SubjectOf = fn(&serde_json::Value) -> Option<String>;

/// Decodes a JSON body; a failure names the API, endpoint and field path.
pub fn decode<T: DeserializeOwned>(
    api: &'static str,
    endpoint: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = if inner.is_eof() {
            format!("the body is truncated ({inner})")
        } else {
            inner.to_string()
        };
        ApiError::Decode {
            api,
            endpoint: endpoint.into(),
            path: crate::redact::excerpt(&path, 200),
            reason: crate::redact::excerpt(&reason, 300),
        }
    })
}

impl ApiClient {
    /// [`decode`] of an answer of this API (the error names the host).
    pub fn decode<T: DeserializeOwned>(&self, endpoint: &str, body: &[u8]) -> Result<T, ApiError> {
        decode(self.api, &self.with_host(endpoint), body)
    }

    /// Decodes a list page. The whole page at once when it fits (the fast path); otherwise, if the
    /// page itself is well formed (`R`, its records as raw JSON, decodes), record by record: a
    /// record that does not fit is skipped and kept for [`ApiClient::take_bad`]. A page that
    /// cannot be parsed at all is an error, as before. `items_path` names the records' array in
    /// error paths (e.g. `_embedded.leads`). Returns the good records, the paging data, and how
    /// many records the page held (bad ones included: paging counts them).
    pub fn decode_list<T, P, R>(
        &self,
        endpoint: &str,
        body: &[u8],
        items_path: &str,
        subject: SubjectOf,
    ) -> Result<(Vec<T>, P::Meta, usize), ApiError>
    where
        T: DeserializeOwned,
        P: ListPage<T>,
        R: ListPage<serde_json::Value, Meta = P::Meta>,
    {
        let page_error = match self.decode::<P>(endpoint, body) {
            Ok(p) => {
                let (items, meta) = p.split();
                let n = items.len();
                return Ok((items, meta, n));
            }
            Err(e) => e,
        };
        let Ok(raw) = self.decode::<R>(endpoint, body) else {
            return Err(page_error);
        };
        let (values, meta) = raw.split();
        let total = values.len();
        let mut good = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            match self.decode_record(endpoint, &v, &format!("{items_path}[{i}]"), subject) {
                Some(t) => good.push(t),
                None => continue,
            }
        }
        Ok((good, meta, total))
    }

    /// Decodes one record; `None` (and a [`BadRecord`] kept) when it does not fit.
    pub fn decode_record<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        v: &serde_json::Value,
        at: &str,
        subject: SubjectOf,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let bad = BadRecord {
                    api: self.api.to_string(),
                    endpoint: self.with_host(endpoint),
                    subject: subject(v).map(|s| crate::redact::excerpt(&s, 120)),
                    path: crate::redact::excerpt(&format!("{at}.{}", e.path()), 200),
                    reason: crate::redact::excerpt(&e.into_inner().to_string(), 200),
                };
                tracing::warn!(
                    api = self.api,
                    endpoint,
                    subject = bad.subject.as_deref().unwrap_or("?"),
                    path = %bad.path,
                    reason = %bad.reason,
                    "a record does not fit: skipped and quarantined (the rest of the page is used)"
                );
                self.bad.lock().unwrap_or_else(|e| e.into_inner()).push(bad);
                None
            }
        }
    }

    /// The records skipped since the last call.
    pub fn take_bad(&self) -> Vec<BadRecord> {
        std::mem::take(&mut *self.bad.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A display-only text field read leniently: its string, else empty (a name of another type
/// must not cost the record that holds it).
pub fn text_or_empty(v: Option<serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Lead {
        #[allow(dead_code)]
        responsible_user_id: u64,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Page {
        #[allow(dead_code)]
        leads: Vec<Lead>,
    }

    #[test]
    fn decode_errors_name_the_field_path() {
        let e = decode::<Page>(
            "kommo",
            "GET /api/v4/leads",
            br#"{"leads":[{"responsible_user_id":1},{"responsible_user_id":"x"}]}"#,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("kommo GET /api/v4/leads"), "{s}");
        assert!(s.contains("leads[1].responsible_user_id"), "{s}");
        let e = decode::<Page>("kommo", "GET /api/v4/leads", br#"{"leads":[{"respon"#).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode::<Page>("kommo", "GET /api/v4/leads", br#"{"leads":[{}]}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing field `responsible_user_id`"),
            "{e}"
        );
    }
}
