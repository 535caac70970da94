//! Incoming leads ("unsorted", `/api/v4/leads/unsorted`): records of the `chats` category, the
//! contacts they hide until accepted, and accept / decline, as control methods of [`KommoSim`]
//! and as endpoints. See the parent module docs for the decisions.

use std::collections::HashSet;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{CardEntry, CardKind, HAL, KState, KommoSim, SimCard, bad_param, page_limit};
use crate::sim::XorShift;
use crate::sim::faults::{Incoming, kommo_problem};
use crate::sim::util::{href, href_with_page, json_response, multi, no_content};

/// An incoming chat to add with [`KommoSim::add_unsorted_chat`]: a new lead (in the incoming
/// stage of a pipeline) with its contact, created by a chat integration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsortedChat {
    /// Id of the lead to create (must not exist yet).
    pub lead_id: u64,
    /// Id of the contact: created (and hidden until acceptance) when it does not exist; an
    /// existing contact is linked and stays visible.
    pub contact_id: u64,
    /// Responsible of the new lead and of a new contact.
    pub responsible_user_id: u64,
    /// `metadata.origin.chat_id` (the chat's id in the chat service).
    pub chat_id: String,
    /// Pipeline (`None`: the main pipeline); it must have an incoming (`type: 1`) stage.
    pub pipeline_id: Option<u64>,
    /// `metadata.client.name`, `metadata.from` and the new contact's name.
    pub client_name: String,
    /// Name of the new lead (`None`: `"Incoming chat: <client name>"`).
    pub lead_name: Option<String>,
    /// `metadata.service` (default `"ChatApp"`).
    pub service: String,
    /// `source_name` and `metadata.source_name` (default `"ChatApp"`).
    pub source_name: String,
    /// `metadata.last_message_text`.
    pub last_message_text: Option<String>,
    /// The record's `uid` (`None`: 40 hex digits derived from the lead id).
    pub uid: Option<String>,
}

impl UnsortedChat {
    /// An incoming chat in the main pipeline; the client is named `Client <contact_id>`.
    pub fn new(
        lead_id: u64,
        contact_id: u64,
        chat_id: impl Into<String>,
        responsible_user_id: u64,
    ) -> Self {
        UnsortedChat {
            lead_id,
            contact_id,
            responsible_user_id,
            chat_id: chat_id.into(),
            pipeline_id: None,
            client_name: format!("Client {contact_id}"),
            lead_name: None,
            service: "ChatApp".to_string(),
            source_name: "ChatApp".to_string(),
            last_message_text: None,
            uid: None,
        }
    }

    /// Puts the record into another pipeline.
    pub fn in_pipeline(mut self, pipeline_id: u64) -> Self {
        self.pipeline_id = Some(pipeline_id);
        self
    }

    /// Sets the client's name.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets `metadata.last_message_text`.
    pub fn last_message(mut self, text: impl Into<String>) -> Self {
        self.last_message_text = Some(text.into());
        self
    }

    /// Sets the record's `uid`.
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }
}

/// An incoming-lead record, as kept by the simulator (returned by [`KommoSim::unsorted`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SimUnsorted {
    /// `uid`.
    pub uid: String,
    /// `category` (`chats`).
    pub category: String,
    /// `pipeline_id`.
    pub pipeline_id: u64,
    /// The record's lead.
    pub lead_id: u64,
    /// The record's contact.
    pub contact_id: u64,
    /// Whether the contact was created by the record, so is hidden until acceptance.
    pub contact_hidden: bool,
    /// `source_uid`.
    pub source_uid: Option<String>,
    /// `source_name`.
    pub source_name: String,
    /// `created_at`.
    pub created_at: i64,
    /// `metadata`.
    pub metadata: Value,
}

/// A deterministic 40-hex-digit uid for the record of a lead.
fn unsorted_uid(lead_id: u64) -> String {
    XorShift::new(0x554E_534F_5254_4544 ^ lead_id).string(b"0123456789abcdef", 40)
}

impl KState {
    /// Contacts created by pending incoming-lead records: not listed, `204` by id.
    pub(crate) fn hidden_contacts(&self) -> HashSet<u64> {
        self.unsorted
            .iter()
            .filter(|u| u.contact_hidden)
            .map(|u| u.contact_id)
            .collect()
    }

    pub(crate) fn is_hidden_contact(&self, id: u64) -> bool {
        self.unsorted
            .iter()
            .any(|u| u.contact_hidden && u.contact_id == id)
    }

    /// Accepts the record at `idx` (see [`KommoSim::accept_unsorted`]); `Err` names the invalid
    /// field.
    fn accept_at(
        &mut self,
        idx: usize,
        status: Option<u64>,
        by: u64,
        now: i64,
    ) -> Result<SimUnsorted, &'static str> {
        let rec = &self.unsorted[idx];
        let target = self
            .pipelines
            .get(&rec.pipeline_id)
            .and_then(|p| match status {
                None => p.first_open_status(),
                Some(s) => p
                    .statuses
                    .iter()
                    .find(|x| x.id == s && x.status_type == 0)
                    .map(|x| x.id),
            })
            .ok_or("status_id")?;
        let rec = self.unsorted.remove(idx);
        self.move_lead(rec.lead_id, (rec.pipeline_id, target), Some(by), now);
        if rec.contact_hidden
            && let Some(c) = self.cards[CardKind::Contact.idx()].get_mut(&rec.contact_id)
        {
            c.card.updated_at = now;
        }
        Ok(rec)
    }

    fn decline_at(&mut self, idx: usize, by: u64, now: i64) -> SimUnsorted {
        let rec = self.unsorted.remove(idx);
        let mut trash = vec![(CardKind::Lead, rec.lead_id)];
        if rec.contact_hidden {
            trash.push((CardKind::Contact, rec.contact_id));
        }
        for (kind, id) in trash {
            if let Some(e) = self.cards[kind.idx()].get_mut(&id) {
                e.card.is_deleted = true;
                e.card.updated_at = now;
                e.updated_by = by;
            }
        }
        rec
    }
}

impl KommoSim {
    /// An incoming chat arrives: creates the contact (hidden: not listed, `204` by id, unknown to
    /// PATCH) unless it exists, a lead in the incoming stage of the pipeline linked to it, and
    /// the `chats` record. No event is appended. Returns the record's `uid`.
    ///
    /// # Panics
    /// On an unknown pipeline, a pipeline without an incoming stage, an existing lead id or a
    /// duplicate uid.
    pub fn add_unsorted_chat(&self, chat: UnsortedChat) -> String {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let pipeline_id = chat.pipeline_id.unwrap_or_else(|| st.default_status().0);
        let incoming = st
            .pipelines
            .get(&pipeline_id)
            .unwrap_or_else(|| panic!("unknown Kommo pipeline {pipeline_id}"))
            .incoming_status()
            .unwrap_or_else(|| panic!("pipeline {pipeline_id} has no incoming stage"));
        assert!(
            !st.cards[CardKind::Lead.idx()].contains_key(&chat.lead_id),
            "Kommo lead {} already exists",
            chat.lead_id
        );
        let uid = chat.uid.unwrap_or_else(|| unsorted_uid(chat.lead_id));
        assert!(
            !st.unsorted.iter().any(|u| u.uid == uid),
            "unsorted uid {uid} already exists"
        );
        let contact_hidden = !st.cards[CardKind::Contact.idx()].contains_key(&chat.contact_id);
        let entry = |card: SimCard| CardEntry {
            card,
            created_by: 0,
            updated_by: 0,
        };
        if contact_hidden {
            let mut c = SimCard::new(chat.contact_id, &chat.client_name, chat.responsible_user_id);
            c.created_at = now;
            c.updated_at = now;
            st.cards[CardKind::Contact.idx()].insert(chat.contact_id, entry(c));
        }
        let name = chat
            .lead_name
            .unwrap_or_else(|| format!("Incoming chat: {}", chat.client_name));
        let mut lead = SimCard::new(chat.lead_id, name, chat.responsible_user_id)
            .with_contacts(&[chat.contact_id])
            .with_status(pipeline_id, incoming);
        lead.created_at = now;
        lead.updated_at = now;
        st.cards[CardKind::Lead.idx()].insert(chat.lead_id, entry(lead));
        let metadata = json!({
            "from": chat.client_name,
            "to": format!("{} line", chat.service),
            "received_at": now,
            "service": chat.service,
            "client": {"name": chat.client_name, "avatar": null},
            "origin": {"chat_id": chat.chat_id, "ref": null, "visitor_uid": null},
            "last_message_text": chat.last_message_text,
            "source_name": chat.source_name,
        });
        st.unsorted.push(SimUnsorted {
            uid: uid.clone(),
            category: "chats".to_string(),
            pipeline_id,
            lead_id: chat.lead_id,
            contact_id: chat.contact_id,
            contact_hidden,
            source_uid: None,
            source_name: chat.source_name,
            created_at: now,
            metadata,
        });
        uid
    }

    /// The pending incoming-lead records, in creation order.
    pub fn unsorted(&self) -> Vec<SimUnsorted> {
        self.lock().unsorted.clone()
    }

    /// A person accepts the incoming lead: the lead moves to `status_id` (default: the
    /// pipeline's first normal stage) with a `lead_status_changed` event by `by_user`, its
    /// contact becomes visible (its `updated_at` is bumped), and the record is removed.
    ///
    /// # Panics
    /// If the lead has no pending record, or `status_id` is not a normal (`type: 0`) status of
    /// the record's pipeline.
    pub fn accept_unsorted(&self, lead_id: u64, status_id: Option<u64>, by_user: u64) {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let idx = st
            .unsorted
            .iter()
            .position(|u| u.lead_id == lead_id)
            .unwrap_or_else(|| panic!("lead {lead_id} has no pending incoming record"));
        if let Err(field) = st.accept_at(idx, status_id, by_user, now) {
            panic!("cannot accept the incoming lead {lead_id}: invalid {field}");
        }
    }

    /// A person declines the incoming lead: the record is removed, the lead (and a contact the
    /// record created) is deleted (`updated_by = by_user`). No event.
    ///
    /// # Panics
    /// If the lead has no pending record.
    pub fn decline_unsorted(&self, lead_id: u64, by_user: u64) {
        let now = self.shared.clock.now();
        let mut st = self.lock();
        let idx = st
            .unsorted
            .iter()
            .position(|u| u.lead_id == lead_id)
            .unwrap_or_else(|| panic!("lead {lead_id} has no pending incoming record"));
        st.decline_at(idx, by_user, now);
    }

    pub(super) fn unsorted_list(&self, st: &KState, inc: &Incoming) -> Response {
        let (page, limit) = match page_limit(&inc.params, super::MAX_PAGE) {
            Ok(v) => v,
            Err(name) => return bad_param(name),
        };
        let q = &inc.params;
        let uids: Option<HashSet<String>> =
            multi(q, "filter[uid]").map(|v| v.into_iter().collect());
        let cats: Option<HashSet<String>> =
            multi(q, "filter[category]").map(|v| v.into_iter().collect());
        let pipes: Option<HashSet<u64>> = multi(q, "filter[pipeline_id]")
            .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect());
        let mut items: Vec<&SimUnsorted> = st
            .unsorted
            .iter()
            .filter(|u| {
                uids.as_ref().is_none_or(|s| s.contains(&u.uid))
                    && cats.as_ref().is_none_or(|s| s.contains(&u.category))
                    && pipes.as_ref().is_none_or(|s| s.contains(&u.pipeline_id))
            })
            .collect();
        let desc = q.iter().any(|(k, v)| {
            (k == "order[created_at]" || k == "order[updated_at]") && v.eq_ignore_ascii_case("desc")
        });
        if desc {
            items.sort_by_key(|u| std::cmp::Reverse(u.created_at));
        } else {
            items.sort_by_key(|u| u.created_at);
        }
        let start = ((page - 1) * limit) as usize;
        if start >= items.len() {
            return no_content();
        }
        let slice = &items[start..(start + limit as usize).min(items.len())];
        let base = &self.shared.base_url;
        let rendered: Vec<Value> = slice.iter().map(|u| self.unsorted_json(u)).collect();
        let mut links = json!({"self": {"href": href(base, &inc.path, &inc.query)}});
        if slice.len() as u64 == limit {
            links["next"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page + 1)});
        }
        if page > 1 {
            links["prev"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page - 1)});
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({"_page": page, "_links": links, "_embedded": {"unsorted": rendered}}),
        )
    }

    pub(super) fn unsorted_get(&self, st: &KState, uid: &str) -> Response {
        match st.unsorted.iter().find(|u| u.uid == uid) {
            Some(u) => json_response(StatusCode::OK, HAL, &self.unsorted_json(u)),
            None => no_content(),
        }
    }

    /// `POST /api/v4/leads/unsorted/{uid}/accept` (`accept`) or `DELETE .../decline`.
    pub(super) fn unsorted_action(
        &self,
        st: &mut KState,
        uid: &str,
        inc: &Incoming,
        accept: bool,
        now: i64,
    ) -> Response {
        let Some(idx) = st.unsorted.iter().position(|u| u.uid == uid) else {
            return kommo_problem(StatusCode::NOT_FOUND, "Unsorted not found");
        };
        let body: Map<String, Value> = if inc.body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice(&inc.body) {
                Ok(Value::Object(o)) => o,
                _ => return field_error("", "This value should be of type object."),
            }
        };
        let by = match body.get("user_id") {
            None => self.shared.current_user_id,
            Some(v) => match v.as_u64() {
                Some(u) if st.users.contains_key(&u) => u,
                Some(_) => return field_error("user_id", "User not found."),
                None => return field_error("user_id", "This value should be of type int."),
            },
        };
        let status = match body.get("status_id") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(s) => Some(s),
                None => return field_error("status_id", "This value should be of type int."),
            },
        };
        let rec = if accept {
            match st.accept_at(idx, status, by, now) {
                Ok(rec) => rec,
                Err(field) => return field_error(field, "The status is not a valid choice."),
            }
        } else {
            st.decline_at(idx, by, now)
        };
        let base = &self.shared.base_url;
        let link = |p: &str, id: u64| json!({"id": id, "_links": {"self": {"href": format!("{base}/api/v4/{p}/{id}")}}});
        let mut emb = json!({
            "leads": [link("leads", rec.lead_id)],
            "contacts": [link("contacts", rec.contact_id)],
        });
        if accept {
            emb["companies"] = json!([]);
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "uid": rec.uid,
                "pipeline_id": rec.pipeline_id,
                "category": rec.category,
                "created_at": rec.created_at,
                "_embedded": emb,
            }),
        )
    }

    fn unsorted_json(&self, u: &SimUnsorted) -> Value {
        let base = &self.shared.base_url;
        let link = |p: &str, id: u64| json!({"id": id, "_links": {"self": {"href": format!("{base}/api/v4/{p}/{id}")}}});
        json!({
            "uid": u.uid,
            "source_uid": u.source_uid,
            "source_name": u.source_name,
            "category": u.category,
            "pipeline_id": u.pipeline_id,
            "created_at": u.created_at,
            "metadata": u.metadata,
            "account_id": self.shared.account_id,
            "_links": {"self": {"href": format!("{base}/api/v4/leads/unsorted/{}", u.uid)}},
            "_embedded": {
                "contacts": [link("contacts", u.contact_id)],
                "leads": [link("leads", u.lead_id)],
                "companies": [],
            },
        })
    }
}

fn field_error(path: &'static str, detail: &'static str) -> Response {
    super::validation_error(vec![("0".into(), vec![("InvalidValue", path, detail)])])
}
