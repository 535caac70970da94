//! Licenses ("lines") and their callbacks as the third-party sources show them and the plain
//! simulator does not vary (issue 18): a license that is not active (TEZ keeps only licenses with
//! `active` true; ADI `License.json` shows `status: {"id": 4, "code": "paid"}`), one more license
//! than the config names, and a line whose callback another integration set (ADI
//! `GetCallbackUrls.json`: one `{licenseId, messengerType, events, url}` per line). Each is off
//! until a test turns it on through the [`super::ChatAppSim`] methods below.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ChatAppSim;

/// The license shapes a test turned on.
#[derive(Clone, Debug, Default)]
pub(super) struct Lines {
    /// Licenses listed after the configured ones.
    extra: BTreeSet<u64>,
    /// Served `status.code` and `active` (the key left out when `None`) per license.
    status: BTreeMap<u64, (String, Option<bool>)>,
}

impl Lines {
    /// The license ids `GET /v1/licenses` lists: the configured ones, then the added ones.
    pub(super) fn listed<'a>(&'a self, configured: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        configured.iter().copied().chain(
            self.extra
                .iter()
                .copied()
                .filter(move |l| !configured.contains(l)),
        )
    }

    /// Serves a license's `status` and `active` as set (by default `paid` and `true`, as
    /// rendered). A code other than `paid` is served with `status.id` 2, an invented value.
    pub(super) fn shape(&self, license: u64, v: &mut Value) {
        let Some((code, active)) = self.status.get(&license) else {
            return;
        };
        let id = if code == "paid" { 4 } else { 2 };
        v["status"] = json!({"id": id, "code": code});
        match (active, v.as_object_mut()) {
            (Some(a), _) => v["active"] = json!(a),
            (None, Some(o)) => {
                o.remove("active");
            }
            (None, None) => {}
        }
    }
}

impl ChatAppSim {
    /// Adds a license to the company: `GET /v1/licenses` lists it after the configured ones
    /// (its messengers are those of its chats, else `grWhatsApp`).
    pub fn add_license(&self, license_id: u64) {
        self.lock().lines.extra.insert(license_id);
    }

    /// Serves license `license_id` with `status.code` = `code` and `active` = `active` (the key
    /// left out when `None`). By default a license is `paid` and `active: true`.
    pub fn set_license_status(&self, license_id: u64, code: &str, active: Option<bool>) {
        self.lock()
            .lines
            .status
            .insert(license_id, (code.to_string(), active));
    }

    /// Sets a line's callback as another integration would (its own `PUT .../callbackUrl`):
    /// `GET /v1/callbackUrls` lists it, and [`ChatAppSim::callback_urls`] shows it.
    pub fn preset_callback_url(
        &self,
        license_id: u64,
        messenger_type: &str,
        url: &str,
        events: &[&str],
    ) {
        self.lock().callbacks.insert(
            (license_id, messenger_type.to_string()),
            (
                events.iter().map(|e| e.to_string()).collect(),
                url.to_string(),
            ),
        );
    }
}
