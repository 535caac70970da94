//! The Kommo API v4 client: cards (leads, contacts, companies, customers) with their links and
//! custom fields, `entity_responsible_changed` events, users, and batch `PATCH` of
//! `responsible_user_id`. Facts and sources: `../shared/api/kommo.md`.

use crate::config::{FieldRef, KommoConfig, LinksConfig};
use crate::http::{ApiClient, ApiError, Limits, Response, decode};
use crate::links::{parse_messenger_value, phone_digits};
use crate::model::{CardId, CardKind, CardObs, KommoUser, KommoUserId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

const API: &str = "kommo";
/// Cards per list page (Kommo's maximum).
pub const PAGE_LIMIT: usize = 250;
/// Events per page (Kommo's events endpoint returns at most 100 whatever `limit` asks).
pub const EVENTS_LIMIT: usize = 100;
/// Ids per by-id read (`filter[id][]`).
pub const IDS_PER_READ: usize = 100;

/// A card as Kommo lists it (only the fields the daemon uses; others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct KommoCard {
    /// Entity id.
    pub id: u64,
    /// Responsible user (0 = none).
    pub responsible_user_id: u64,
    /// Last update (unix seconds).
    #[serde(default)]
    pub updated_at: i64,
    /// Deleted flag (leads, customers).
    #[serde(default)]
    pub is_deleted: bool,
    /// Custom fields; `null` when none is set.
    #[serde(default)]
    pub custom_fields_values: Option<Vec<CustomField>>,
    /// Linked entities (`with=contacts`).
    #[serde(default, rename = "_embedded")]
    pub embedded: Option<CardEmbedded>,
}

/// `custom_fields_values[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct CustomField {
    /// Field id.
    pub field_id: u64,
    /// Field code (`PHONE`, ...), if any.
    #[serde(default)]
    pub field_code: Option<String>,
    /// Values.
    #[serde(default)]
    pub values: Option<Vec<FieldValue>>,
}

/// One custom-field value.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldValue {
    /// The value: text, number or boolean.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// `_embedded` of a card.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CardEmbedded {
    /// Linked contacts (`with=contacts`).
    #[serde(default)]
    pub contacts: Option<Vec<Linked>>,
}

/// A linked entity reference.
#[derive(Debug, Clone, Deserialize)]
pub struct Linked {
    /// Its id.
    pub id: u64,
}

#[derive(Deserialize)]
struct CardsPage {
    #[serde(rename = "_embedded")]
    embedded: CardsEmbedded,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

/// `_links` of a page: only whether `next` is there matters.
#[derive(Deserialize, Default)]
struct PageLinks {
    #[serde(default)]
    next: Option<serde_json::Value>,
}

/// Whether a page ends a listing. Kommo shows `next` even when the next page is empty, and has
/// changed page sizes under its clients (amocrm-api-php #209, #528), so: an empty page ends it; a
/// page shorter than one the server already served ends it; a page shorter than asked ends it
/// unless it has a `next` link (the server's page size is smaller than asked).
pub fn page_ends_listing(n: usize, asked: usize, has_next: bool, largest_seen: usize) -> bool {
    n == 0 || n < largest_seen || (n < asked && !has_next)
}

#[derive(Deserialize)]
struct CardsEmbedded {
    #[serde(
        alias = "leads",
        alias = "contacts",
        alias = "companies",
        alias = "customers"
    )]
    items: Vec<KommoCard>,
}

/// An `entity_responsible_changed` event.
#[derive(Debug, Clone, Deserialize)]
pub struct KommoEvent {
    /// Event id (a string).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entity.
    pub entity_id: u64,
    /// `lead`, `contact`, `company`, `customer`.
    pub entity_type: String,
    /// Who made the change (0 = robot).
    #[serde(default)]
    pub created_by: u64,
    /// When (unix seconds).
    pub created_at: i64,
    /// The new value.
    #[serde(default)]
    pub value_after: Vec<EventValue>,
}

/// One entry of `value_after` / `value_before`.
#[derive(Debug, Clone, Deserialize)]
pub struct EventValue {
    /// `{"responsible_user": {"id": N}}`.
    #[serde(default)]
    pub responsible_user: Option<Linked>,
}

impl KommoEvent {
    /// The new responsible, if the event carries one.
    pub fn new_responsible(&self) -> Option<KommoUserId> {
        self.value_after
            .iter()
            .find_map(|v| v.responsible_user.as_ref().map(|u| u.id))
    }

    /// The card, if the entity is a kind the daemon knows.
    pub fn card(&self) -> Option<CardId> {
        CardKind::parse(&self.entity_type).map(|k| CardId::new(k, self.entity_id))
    }
}

#[derive(Deserialize)]
struct EventsPage {
    #[serde(rename = "_embedded")]
    embedded: EventsEmbedded,
    #[serde(default, rename = "_links")]
    links: Option<PageLinks>,
}

#[derive(Deserialize)]
struct EventsEmbedded {
    events: Vec<KommoEvent>,
}

#[derive(Deserialize)]
struct UsersPage {
    #[serde(rename = "_embedded")]
    embedded: UsersEmbedded,
    #[serde(default, rename = "_page_count")]
    page_count: Option<u64>,
}

#[derive(Deserialize)]
struct UsersEmbedded {
    users: Vec<UserItem>,
}

#[derive(Deserialize)]
struct UserItem {
    id: u64,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    rights: Option<UserRights>,
}

#[derive(Deserialize)]
struct UserRights {
    #[serde(default = "yes")]
    is_active: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/v4/account`.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// Account id.
    pub id: u64,
    /// The user the token acts as.
    #[serde(default)]
    pub current_user_id: u64,
    /// `with=is_api_filter_enabled`: list filters work on this account.
    #[serde(default)]
    pub is_api_filter_enabled: Option<bool>,
}

#[derive(Deserialize)]
struct PatchResult {
    #[serde(rename = "_embedded")]
    embedded: PatchEmbedded,
}

#[derive(Deserialize)]
struct PatchEmbedded {
    #[serde(
        alias = "leads",
        alias = "contacts",
        alias = "companies",
        alias = "customers"
    )]
    items: Vec<PatchedItem>,
}

#[derive(Deserialize)]
struct PatchedItem {
    id: u64,
}

/// How the daemon reads custom fields of cards.
#[derive(Debug, Clone)]
pub struct FieldMap {
    /// Sync-flag checkbox field per kind.
    pub flags: BTreeMap<CardKind, u64>,
    /// The contact's Messenger field.
    pub messenger: FieldRef,
    /// The contact's phone field.
    pub phone: FieldRef,
}

impl FieldMap {
    /// From the config.
    pub fn new(flags: &crate::config::FlagFields, links: &LinksConfig) -> FieldMap {
        FieldMap {
            flags: CardKind::ALL
                .into_iter()
                .filter_map(|k| flags.get(k).map(|f| (k, f)))
                .collect(),
            messenger: links.messenger_field.clone(),
            phone: links.phone_field.clone(),
        }
    }
}

fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A checkbox value is checked: JSON `true` (API v4), or `"1"`/`"true"`/`1` as webhooks send it.
pub fn checkbox_checked(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        serde_json::Value::String(s) => matches!(s.trim(), "1" | "true" | "TRUE" | "True"),
        _ => false,
    }
}

impl KommoCard {
    /// The daemon's view of the card.
    pub fn to_obs(&self, kind: CardKind, fields: &FieldMap) -> CardObs {
        let cfs = self.custom_fields_values.as_deref().unwrap_or(&[]);
        let values = |f: &CustomField| -> Vec<serde_json::Value> {
            f.values
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .map(|v| v.value.clone())
                .collect()
        };
        let flag = match fields.flags.get(&kind) {
            None => true,
            Some(fid) => cfs
                .iter()
                .filter(|f| f.field_id == *fid)
                .flat_map(values)
                .any(|v| checkbox_checked(&v)),
        };
        let mut dialog_refs = vec![];
        let mut phones = vec![];
        if kind == CardKind::Contact {
            for f in cfs {
                if fields
                    .messenger
                    .matches(f.field_id, f.field_code.as_deref())
                {
                    for v in values(f) {
                        if let Some(r) = value_text(&v).and_then(|t| parse_messenger_value(&t)) {
                            dialog_refs.push(r);
                        }
                    }
                } else if fields.phone.matches(f.field_id, f.field_code.as_deref()) {
                    for v in values(f) {
                        if let Some(p) = value_text(&v)
                            .map(|t| phone_digits(&t))
                            .filter(|p| !p.is_empty())
                        {
                            phones.push(p);
                        }
                    }
                }
            }
            dialog_refs.sort();
            dialog_refs.dedup();
            phones.sort();
            phones.dedup();
        }
        let mut contacts: Vec<u64> = self
            .embedded
            .as_ref()
            .and_then(|e| e.contacts.as_ref())
            .map(|cs| cs.iter().map(|c| c.id).collect())
            .unwrap_or_default();
        contacts.sort_unstable();
        contacts.dedup();
        CardObs {
            responsible: self.responsible_user_id,
            flag,
            deleted: self.is_deleted,
            contacts: if kind == CardKind::Contact {
                vec![]
            } else {
                contacts
            },
            dialog_refs,
            phones,
            event_time: None,
        }
    }
}

/// The Kommo client.
pub struct KommoClient {
    /// Shared HTTP plumbing (limiter, retries, counters).
    pub api: ApiClient,
    auth: crate::kommo_auth::KommoAuth,
    filters: std::sync::Mutex<Option<bool>>,
}

fn endpoint_of(path: &str) -> String {
    format!("{} {}", "GET", path)
}

impl KommoClient {
    /// Builds the client for a long-lived token.
    pub fn new(
        cfg: &KommoConfig,
        auth: crate::kommo_auth::KommoAuth,
    ) -> Result<KommoClient, ApiError> {
        let limits = Limits::standard(
            cfg.requests_per_second,
            cfg.timeout,
            Some(cfg.block_cooloff),
        );
        Ok(KommoClient {
            api: ApiClient::new(API, &cfg.base_url, limits)?,
            auth,
            filters: std::sync::Mutex::new(None),
        })
    }

    /// Sends an authorized request; after a 401, refreshes OAuth credentials once and retries.
    async fn send(
        &self,
        endpoint: &str,
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let r = self.send_raw(endpoint, &[], make).await?;
        self.check(endpoint, r)
    }

    /// Sends an authorized request (refreshing OAuth credentials once after a 401) and returns the
    /// answer unchecked; the 5xx statuses in `pass` come back instead of being retried.
    async fn send_raw(
        &self,
        endpoint: &str,
        pass: &[u16],
        make: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        let token = self.auth.token(&self.api).await?;
        let bearer = format!("Bearer {token}");
        let r = self
            .api
            .execute_passing(endpoint, pass, |c| make(c, &bearer))
            .await?;
        if r.status.as_u16() == 401
            && let Some(fresh) = self.auth.after_unauthorized(&self.api, &token).await?
        {
            let bearer = format!("Bearer {fresh}");
            return self
                .api
                .execute_passing(endpoint, pass, |c| make(c, &bearer))
                .await;
        }
        Ok(r)
    }

    async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Response, ApiError> {
        let endpoint = endpoint_of(path);
        let url = self.api.url(path);
        self.send(&endpoint, |c, auth| {
            c.get(&url).header("Authorization", auth).query(query)
        })
        .await
    }

    fn check(&self, endpoint: &str, r: Response) -> Result<Response, ApiError> {
        match r.status.as_u16() {
            200..=299 => Ok(r),
            401 => Err(ApiError::Auth {
                api: API,
                reason: format!(
                    "{endpoint}: HTTP 401 (token expired or revoked): {}",
                    r.excerpt(200)
                ),
            }),
            s => Err(ApiError::Status {
                api: API,
                endpoint: endpoint.into(),
                status: s,
                body: r.excerpt(300),
            }),
        }
    }

    /// `GET /api/v4/account?with=is_api_filter_enabled`.
    pub async fn account(&self) -> Result<Account, ApiError> {
        let path = "/api/v4/account";
        let r = self
            .get(path, &[("with".into(), "is_api_filter_enabled".into())])
            .await?;
        decode(API, &endpoint_of(path), &r.body)
    }

    /// Whether list filters and ordering work on this account (asked once per process).
    pub async fn filters_enabled(&self) -> Result<bool, ApiError> {
        if let Some(f) = *self.filters.lock().expect("filters") {
            return Ok(f);
        }
        let f = self.account().await?.is_api_filter_enabled.unwrap_or(false);
        *self.filters.lock().expect("filters") = Some(f);
        Ok(f)
    }

    /// All users (`GET /api/v4/users`, paged).
    pub async fn users(&self) -> Result<Vec<KommoUser>, ApiError> {
        let path = "/api/v4/users";
        let mut out = vec![];
        for page in 1.. {
            let r = self
                .get(
                    path,
                    &[
                        ("page".into(), page.to_string()),
                        ("limit".into(), PAGE_LIMIT.to_string()),
                    ],
                )
                .await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let p: UsersPage = decode(API, &endpoint_of(path), &r.body)?;
            let n = p.embedded.users.len();
            out.extend(p.embedded.users.into_iter().map(|u| KommoUser {
                id: u.id,
                email: u.email.unwrap_or_default(),
                active: u.rights.map(|r| r.is_active).unwrap_or(true),
            }));
            let last_page = p.page_count.is_some_and(|c| page >= c);
            if n < PAGE_LIMIT || last_page {
                break;
            }
        }
        Ok(out)
    }

    /// Lists cards of a kind. With `updated_since`, pages newest-updated first and stops at the first
    /// card updated before it; otherwise lists all. A 204 or a short page ends the listing (a `next`
    /// link is not trusted).
    pub async fn list_cards(
        &self,
        kind: CardKind,
        updated_since: Option<i64>,
    ) -> Result<Vec<KommoCard>, ApiError> {
        let mut out = vec![];
        self.each_card(kind, updated_since, |c| out.push(c)).await?;
        Ok(out)
    }

    /// [`KommoClient::list_cards`] handing each card to `sink` as its page arrives (a listing of a
    /// large account is never held whole). Returns the number of cards listed.
    pub async fn each_card(
        &self,
        kind: CardKind,
        updated_since: Option<i64>,
        mut sink: impl FnMut(KommoCard),
    ) -> Result<usize, ApiError> {
        let path = format!("/api/v4/{}", kind.plural());
        let mut count = 0;
        let mut largest = 0;
        for page in 1.. {
            let mut q = vec![
                ("page".to_string(), page.to_string()),
                ("limit".to_string(), PAGE_LIMIT.to_string()),
            ];
            if kind != CardKind::Contact {
                q.push(("with".into(), "contacts".into()));
            }
            if updated_since.is_some() {
                q.push(("order[updated_at]".into(), "desc".into()));
            }
            let r = self.get(&path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let p: CardsPage = decode(API, &endpoint_of(&path), &r.body)?;
            let n = p.embedded.items.len();
            let has_next = p.links.as_ref().is_some_and(|l| l.next.is_some());
            let mut done = page_ends_listing(n, PAGE_LIMIT, has_next, largest);
            largest = largest.max(n);
            for c in p.embedded.items {
                if let Some(since) = updated_since
                    && c.updated_at < since
                {
                    done = true;
                    continue;
                }
                count += 1;
                sink(c);
            }
            if done {
                break;
            }
        }
        Ok(count)
    }

    /// Reads cards by id: `filter[id][]` in chunks when list filters work, else one
    /// `GET /api/v4/{kind}/{id}` per card. Ids that do not come back are missing (deleted).
    pub async fn cards_by_id(
        &self,
        kind: CardKind,
        ids: &[u64],
    ) -> Result<Vec<KommoCard>, ApiError> {
        let mut out = vec![];
        if ids.is_empty() {
            return Ok(out);
        }
        if self.filters_enabled().await? {
            let path = format!("/api/v4/{}", kind.plural());
            for chunk in ids.chunks(IDS_PER_READ) {
                let mut q: Vec<(String, String)> = chunk
                    .iter()
                    .map(|id| ("filter[id][]".to_string(), id.to_string()))
                    .collect();
                q.push(("limit".into(), PAGE_LIMIT.to_string()));
                if kind != CardKind::Contact {
                    q.push(("with".into(), "contacts".into()));
                }
                let r = self.get(&path, &q).await?;
                if r.status.as_u16() == 204 || r.body.is_empty() {
                    continue;
                }
                let p: CardsPage = decode(API, &endpoint_of(&path), &r.body)?;
                let wanted: BTreeSet<u64> = chunk.iter().copied().collect();
                out.extend(
                    p.embedded
                        .items
                        .into_iter()
                        .filter(|c| wanted.contains(&c.id)),
                );
            }
        } else {
            for id in ids {
                let path = format!("/api/v4/{}/{id}", kind.plural());
                let q: Vec<(String, String)> = if kind != CardKind::Contact {
                    vec![("with".into(), "contacts".into())]
                } else {
                    vec![]
                };
                let r = match self.get(&path, &q).await {
                    Err(ApiError::Status { status: 404, .. }) => continue,
                    r => r?,
                };
                if r.status.as_u16() == 204 || r.body.is_empty() {
                    continue;
                }
                out.push(decode(
                    API,
                    &endpoint_of(&format!("/api/v4/{}/{{id}}", kind.plural())),
                    &r.body,
                )?);
            }
        }
        Ok(out)
    }

    /// `entity_responsible_changed` events of the given kinds created at or after `from`, oldest
    /// first, every page read (a 204 or a short page ends it).
    pub async fn responsible_events(
        &self,
        kinds: &[CardKind],
        from: i64,
    ) -> Result<Vec<KommoEvent>, ApiError> {
        let path = "/api/v4/events";
        let mut out: Vec<KommoEvent> = vec![];
        let mut largest = 0;
        for page in 1.. {
            let mut q = vec![
                (
                    "filter[type]".to_string(),
                    "entity_responsible_changed".to_string(),
                ),
                (
                    "filter[created_at][from]".to_string(),
                    from.max(0).to_string(),
                ),
                ("limit".to_string(), EVENTS_LIMIT.to_string()),
                ("page".to_string(), page.to_string()),
            ];
            for k in kinds {
                q.push(("filter[entity][]".into(), k.singular().into()));
            }
            let r = self.get(path, &q).await?;
            if r.status.as_u16() == 204 || r.body.is_empty() {
                break;
            }
            let p: EventsPage = decode(API, &endpoint_of(path), &r.body)?;
            let n = p.embedded.events.len();
            let has_next = p.links.as_ref().is_some_and(|l| l.next.is_some());
            out.extend(
                p.embedded
                    .events
                    .into_iter()
                    .filter(|e| e.kind == "entity_responsible_changed"),
            );
            if page_ends_listing(n, EVENTS_LIMIT, has_next, largest) {
                break;
            }
            largest = largest.max(n);
        }
        // stable order whatever the server's: by time, then id; duplicates (page shifts) dropped
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Registers an account webhook for `settings` (e.g. `responsible_lead`) at `destination`,
    /// unless one with the same settings is already there. Returns true when it registered one.
    pub async fn register_webhook(
        &self,
        destination: &str,
        settings: &[String],
    ) -> Result<bool, ApiError> {
        let path = "/api/v4/webhooks";
        let r = self
            .get(
                path,
                &[("filter[destination]".into(), destination.to_string())],
            )
            .await?;
        if r.status.as_u16() != 204 && !r.body.is_empty() {
            #[derive(Deserialize)]
            struct Hooks {
                #[serde(rename = "_embedded")]
                embedded: HooksEmbedded,
            }
            #[derive(Deserialize)]
            struct HooksEmbedded {
                webhooks: Vec<Hook>,
            }
            #[derive(Deserialize)]
            struct Hook {
                destination: String,
                #[serde(default)]
                settings: Vec<String>,
            }
            let h: Hooks = decode(API, &endpoint_of(path), &r.body)?;
            let mut want: Vec<&String> = settings.iter().collect();
            want.sort();
            if h.embedded.webhooks.iter().any(|x| {
                let mut have: Vec<&String> = x.settings.iter().collect();
                have.sort();
                x.destination == destination && have == want
            }) {
                return Ok(false);
            }
        }
        let endpoint = format!("POST {path}");
        let url = self.api.url(path);
        let body = serde_json::json!({"destination": destination, "settings": settings});
        self.send(&endpoint, |c, auth| {
            c.post(&url).header("Authorization", auth).json(&body)
        })
        .await?;
        Ok(true)
    }

    /// `PATCH /api/v4/{kind}` with `[{id, responsible_user_id, request_id}]` (one batch); returns
    /// the ids the response confirms.
    pub async fn patch_responsible(
        &self,
        kind: CardKind,
        items: &[(u64, KommoUserId)],
    ) -> Result<BTreeSet<u64>, ApiError> {
        let path = format!("/api/v4/{}", kind.plural());
        let endpoint = format!("PATCH {path}");
        let url = self.api.url(&path);
        let mut confirmed = BTreeSet::new();
        // A 504 on a batch means "too big": the batch is halved and both halves sent (the writes
        // are idempotent and their targets were checked before); a single card's 504 is retried.
        let mut queue = vec![items.to_vec()];
        while let Some(batch) = queue.pop() {
            let body: Vec<serde_json::Value> = batch
                .iter()
                .enumerate()
                .map(|(i, (id, user))| serde_json::json!({"id": id, "responsible_user_id": user, "request_id": i.to_string()}))
                .collect();
            let pass: &[u16] = if batch.len() > 1 { &[504] } else { &[] };
            let r = self
                .send_raw(&endpoint, pass, |c, auth| {
                    c.patch(&url).header("Authorization", auth).json(&body)
                })
                .await?;
            if r.status.as_u16() == 504 && batch.len() > 1 {
                tracing::warn!(kind = %kind, size = batch.len(), "Kommo answered 504 to a PATCH batch: halving it");
                let mid = batch.len() / 2;
                queue.push(batch[mid..].to_vec());
                queue.push(batch[..mid].to_vec());
                continue;
            }
            let r = self.check(&endpoint, r)?;
            let p: PatchResult = decode(API, &endpoint, &r.body)?;
            confirmed.extend(p.embedded.items.into_iter().map(|i| i.id));
        }
        Ok(confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DialogRef;

    fn fields() -> FieldMap {
        FieldMap {
            flags: [(CardKind::Lead, 184994)].into(),
            messenger: FieldRef::Code("MESSENGER".into()),
            phone: FieldRef::Code("PHONE".into()),
        }
    }

    #[test]
    fn contact_fields_become_links() {
        let c: KommoCard = serde_json::from_str(
            r#"{"id":7,"responsible_user_id":5,"custom_fields_values":[
              {"field_id":3,"field_code":"PHONE","values":[{"value":"+7 (999) 123-45-67","enum_code":"WORK"}]},
              {"field_id":9,"field_code":"MESSENGER","values":[{"value":"1:telegram:@bob"},{"value":"79990001122@c.us"}]}
            ]}"#,
        )
        .unwrap();
        let o = c.to_obs(CardKind::Contact, &fields());
        assert!(o.flag, "contacts have no flag field configured");
        assert_eq!(o.phones, vec!["79991234567".to_string()]);
        assert_eq!(o.dialog_refs.len(), 2);
        assert!(
            o.dialog_refs
                .contains(&DialogRef::ChatId("79990001122@c.us".into()))
        );
    }

    #[test]
    fn paging_survives_a_smaller_server_page_size() {
        // asked 250, the server serves 50 with a next link: go on
        assert!(!page_ends_listing(50, 250, true, 0));
        // then a shorter page than the server's size: the end, next link or not
        assert!(page_ends_listing(20, 250, true, 50));
        // a short page without next ends it; a full one with a next link to an empty page goes on
        assert!(page_ends_listing(20, 250, false, 0));
        assert!(!page_ends_listing(250, 250, true, 250));
        assert!(page_ends_listing(0, 250, true, 250));
    }

    #[test]
    fn lead_flag_and_contacts() {
        let c: KommoCard = serde_json::from_str(
            r#"{"id":1,"responsible_user_id":5,"custom_fields_values":[{"field_id":184994,"values":[{"value":true}]}],
               "_embedded":{"contacts":[{"id":3,"is_main":true},{"id":2}]}}"#,
        )
        .unwrap();
        let o = c.to_obs(CardKind::Lead, &fields());
        assert!(o.flag);
        assert_eq!(o.contacts, vec![2, 3]);
        let c: KommoCard =
            serde_json::from_str(r#"{"id":1,"responsible_user_id":5,"custom_fields_values":null}"#)
                .unwrap();
        assert!(
            !c.to_obs(CardKind::Lead, &fields()).flag,
            "no checkbox value = unchecked"
        );
        assert!(checkbox_checked(&serde_json::json!("1")));
        assert!(!checkbox_checked(&serde_json::json!(false)));
    }
}
