//! What a webhook or callback body names: a Kommo webhook names cards ([`kommo_named`]), a ChatApp
//! callback names chats ([`chatapp_named`]). The daemon reads only those records, so a call is a
//! hint sized to what it names; it stays a trigger, never data: only ids are kept, and the records
//! are read through the APIs as usual.
//!
//! Both parsers are pure and total: any byte string is an input, nothing panics, and a body that is
//! not a form / not JSON, or names nothing usable, gives an empty [`Named`]. One body names at most
//! [`MAX_NAMED`] records: past that it keeps the first ones (in the order the body names them) and
//! sets [`Named::overflow`].
//!
//! **Kommo** (`application/x-www-form-urlencoded`, PHP-array keys; `../shared/api/kommo.md` §10,
//! payloads `kommo_webhook_*.derived.form`). Only keys of exactly four segments
//! `<entity>[<action>][<n>][id]` count, `<entity>` one of `leads`, `contacts`, `customers` (and
//! `companies`, which Kommo sends under `contacts`); any non-empty action counts (`responsible`,
//! `update`, `add`, `status`, ...). Other entities (`unsorted`, `talk`, `message`, `task`, ...) and
//! nested keys (`leads[status][0][custom_fields][0][id]`, `contacts[add][0][linked_leads_id][7][ID]`)
//! name nothing. The id is decimal digits only and a `u64` above 0. A `contacts` item is a company
//! when its `contacts[<action>][<n>][type]` is `company`, a contact when it is `contact` or absent;
//! an item with any other type names nothing. Type and id pair by `<entity>[<action>][<n>]`, in any
//! order of keys. A repeated key counts with its last value, as PHP reads the form; an empty
//! `<action>` or `<n>` (PHP's "append", `leads[][0][id]`) names nothing. Keys and values are
//! decoded by `form_urlencoded` (invalid UTF-8 becomes U+FFFD, so it never matches).
//!
//! **ChatApp** (JSON `{"data": [...], "meta": {"type", "licenseId", "messengerType"}}`;
//! `../shared/api/chatapp.md` §5.1, payload `chatapp_webhook_message_status.json`). Only a
//! `meta.type` among [`CHATAPP_EVENTS`] (`message`, `chatResponsible`: the events the daemon
//! subscribes to, the test of [`crate::service::webhooks::chatapp_body_is_relevant`]) names
//! anything. Each item of `data` (an array, or one object) names the dialog
//! `(meta.licenseId, meta.messengerType, item.chat.id)`. `licenseId` is a number or a string of
//! decimal digits; `messengerType` a string; `chat.id` a string, or an integer taken as its decimal
//! text. A chat id or messenger type that cannot be one URL path segment (empty, `.`, `..`: the
//! ChatApp client's own test, `crate::chatapp::is_path_segment`) names nothing. An item that does
//! not fit (no `chat`, a `chat` that is not an object, an id of another type) names nothing and
//! the other items still count; fields the parser does not read are skipped unchecked.
//!
//! ASSUMPTION (no source confirms it): a `chatResponsible` callback uses the same envelope as the
//! documented `messageStatus` body, with the chat in `data[].chat.id`. No public source shows a
//! `chatResponsible` body (`../shared/api/payloads/README.md`). If a real account sends another
//! shape, such a callback names nothing readable and its webhook cycle is an incremental one:
//! slower, still correct.

use crate::chatapp::is_path_segment;
use crate::core::model::{CardId, CardKind, DialogKey};
use crate::service::webhooks::CHATAPP_EVENTS;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

/// The most records one body may name; past it the body counts as naming too much (`overflow`).
pub const MAX_NAMED: usize = 100;

/// What one webhook or callback body names (a trigger, never data: only ids are kept).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Named {
    /// The Kommo cards named.
    pub cards: BTreeSet<CardId>,
    /// The ChatApp dialogs named.
    pub dialogs: BTreeSet<DialogKey>,
    /// The body (or a merged one) named more than the cap: the sets hold only part of it.
    pub overflow: bool,
}

impl Named {
    /// True when nothing is named: no cards, no dialogs, no overflow.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty() && self.dialogs.is_empty() && !self.overflow
    }

    /// The union with `other`. When the union would hold more than `cap` records in all, sets
    /// `overflow` and keeps `self`'s records as they are (the new ones are dropped). `other`'s
    /// overflow carries over.
    pub fn merge(&mut self, other: Named, cap: usize) {
        self.overflow |= other.overflow;
        let new = other.cards.difference(&self.cards).count()
            + other.dialogs.difference(&self.dialogs).count();
        if self.len().saturating_add(new) > cap {
            self.overflow = true;
            return;
        }
        self.cards.extend(other.cards);
        self.dialogs.extend(other.dialogs);
    }

    /// The number of records named (cards and dialogs).
    pub fn len(&self) -> usize {
        self.cards.len() + self.dialogs.len()
    }

    /// Adds one card, unless that would pass [`MAX_NAMED`] (then sets `overflow`).
    fn add_card(&mut self, card: CardId) {
        if self.cards.contains(&card) {
            return;
        }
        if self.len() >= MAX_NAMED {
            self.overflow = true;
        } else {
            self.cards.insert(card);
        }
    }

    /// Adds one dialog, unless that would pass [`MAX_NAMED`] (then sets `overflow`).
    fn add_dialog(&mut self, dialog: DialogKey) {
        if self.dialogs.contains(&dialog) {
            return;
        }
        if self.len() >= MAX_NAMED {
            self.overflow = true;
        } else {
            self.dialogs.insert(dialog);
        }
    }
}

/// True when `s` is one or more ASCII decimal digits (no sign, no spaces).
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// Kommo

/// The `<entity>` of a Kommo webhook key that names cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Entity {
    Leads,
    /// Contacts and companies (`[type]` tells them apart).
    Contacts,
    Companies,
    Customers,
}

impl Entity {
    fn parse(s: &str) -> Option<Entity> {
        match s {
            "leads" => Some(Entity::Leads),
            "contacts" => Some(Entity::Contacts),
            "companies" => Some(Entity::Companies),
            "customers" => Some(Entity::Customers),
            _ => None,
        }
    }
}

/// One item `<entity>[<action>][<n>]` of a Kommo form: the last `[id]` and `[type]` values.
struct FormItem {
    entity: Entity,
    id: Option<String>,
    kind: Option<String>,
}

impl FormItem {
    /// The card the item names, if its id and type are usable.
    fn card(&self) -> Option<CardId> {
        let id = self
            .id
            .as_deref()
            .filter(|s| is_digits(s))?
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)?;
        let kind = match (self.entity, self.kind.as_deref()) {
            (Entity::Leads, _) => CardKind::Lead,
            (Entity::Contacts, None | Some("contact")) => CardKind::Contact,
            (Entity::Contacts, Some("company")) => CardKind::Company,
            (Entity::Contacts, Some(_)) => return None,
            (Entity::Companies, _) => CardKind::Company,
            (Entity::Customers, _) => CardKind::Customer,
        };
        Some(CardId::new(kind, id))
    }
}

/// A decoded key `<entity>[<action>][<n>][<field>]` cut into its four parts; `None` for any other
/// shape (fewer or more segments, text after the last `]`, a bracket inside a part).
fn four_segments(key: &str) -> Option<[&str; 4]> {
    let (entity, rest) = key.split_once('[')?;
    let mut parts = rest.strip_suffix(']')?.split("][");
    let parts = [
        entity,
        parts.next()?,
        parts.next()?,
        match (parts.next(), parts.next()) {
            (Some(field), None) => field,
            _ => return None,
        },
    ];
    (!parts.iter().any(|p| p.contains(['[', ']']))).then_some(parts)
}

/// The cards a Kommo webhook body names.
///
/// The body is `application/x-www-form-urlencoded` with PHP-array keys; see the module
/// documentation for which keys count. Any byte string is accepted.
pub fn kommo_named(body: &[u8]) -> Named {
    let mut items: Vec<FormItem> = Vec::new();
    let mut index: BTreeMap<(Entity, String, String), usize> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        let Some([entity, action, n, field]) = four_segments(&key) else {
            continue;
        };
        let Some(entity) = Entity::parse(entity) else {
            continue;
        };
        let is_type = match field {
            "id" => false,
            "type" if entity == Entity::Contacts => true,
            _ => continue,
        };
        if action.is_empty() || n.is_empty() {
            continue;
        }
        let at = *index
            .entry((entity, action.to_owned(), n.to_owned()))
            .or_insert_with(|| {
                items.push(FormItem {
                    entity,
                    id: None,
                    kind: None,
                });
                items.len() - 1
            });
        if let Some(item) = items.get_mut(at) {
            let slot = if is_type {
                &mut item.kind
            } else {
                &mut item.id
            };
            *slot = Some(value.into_owned());
        }
    }
    let mut named = Named::default();
    for card in items.iter().filter_map(FormItem::card) {
        named.add_card(card);
    }
    named
}

// ---------------------------------------------------------------------------------------------
// ChatApp

/// A callback body: `{"data": ..., "meta": {...}}` (other fields skipped).
#[derive(serde::Deserialize)]
struct Callback {
    #[serde(default)]
    data: Items,
    #[serde(default)]
    meta: Object<Meta>,
}

/// `meta` of a callback.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default, rename = "type")]
    kind: Scalar,
    #[serde(default)]
    license_id: Scalar,
    #[serde(default)]
    messenger_type: Scalar,
}

/// One item of `data`: only its `chat` is read.
#[derive(serde::Deserialize)]
struct Item {
    #[serde(default)]
    chat: Object<ChatRef>,
}

/// `chat` of an item: only its `id` is read.
#[derive(serde::Deserialize)]
struct ChatRef {
    #[serde(default)]
    id: Scalar,
}

/// A JSON value read as the scalar it is; anything else (`null`, a bool, a fraction, an array, an
/// object) is `Other` and names nothing.
#[derive(Debug, Default)]
enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    #[default]
    Other,
}

impl Scalar {
    /// A license id: an unsigned number, or a string of decimal digits that fits a `u64`.
    fn license(&self) -> Option<u64> {
        match self {
            Scalar::Unsigned(n) => Some(*n),
            Scalar::Text(s) if is_digits(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A text field (messenger type, event type).
    fn text(&self) -> Option<&str> {
        match self {
            Scalar::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A chat id: a string, or an integer as its decimal text.
    fn chat_id(&self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s.clone()),
            Scalar::Unsigned(n) => Some(n.to_string()),
            Scalar::Signed(n) => Some(n.to_string()),
            Scalar::Other => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(match u64::try_from(v) {
                    Ok(n) => Scalar::Unsigned(n),
                    Err(_) => Scalar::Signed(v),
                })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON object read as `T`; any other value (a scalar, `null`, an array) is `None`, so one item
/// of the wrong shape does not spoil the body.
struct Object<T>(Option<T>);

impl<T> Default for Object<T> {
    fn default() -> Self {
        Object(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Object(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Object<T>, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Object(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `data`: an array of items, or one item (an object). Elements that are not objects are skipped;
/// a `data` of any other shape makes the body unreadable (it could name nothing anyway).
#[derive(Default)]
struct Items(Vec<Item>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of items or one item")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(Object(item)) = seq.next_element::<Object<Item>>()? {
                    items.extend(item);
                }
                Ok(Items(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Items, A::Error> {
                Item::deserialize(MapAccessDeserializer::new(map)).map(|i| Items(vec![i]))
            }
        }
        d.deserialize_any(V)
    }
}

/// The chats a ChatApp callback body names.
///
/// The body is JSON `{"data": [...], "meta": {"type", "licenseId", "messengerType"}}`; see the
/// module documentation for what counts. Any byte string is accepted.
pub fn chatapp_named(body: &[u8]) -> Named {
    let mut named = Named::default();
    // `Object`: the body must be a JSON object (a struct would also read an array by position)
    let Ok(Object(Some(callback))) = serde_json::from_slice::<Object<Callback>>(body) else {
        return named;
    };
    let Object(Some(meta)) = callback.meta else {
        return named;
    };
    if !meta
        .kind
        .text()
        .is_some_and(|t| CHATAPP_EVENTS.contains(&t))
    {
        return named;
    }
    let Some(license) = meta.license_id.license() else {
        return named;
    };
    let Some(messenger) = meta.messenger_type.text().filter(|m| is_path_segment(m)) else {
        return named;
    };
    for item in callback.data.0 {
        let Object(Some(chat)) = item.chat else {
            continue;
        };
        let Some(chat_id) = chat.id.chat_id().filter(|c| is_path_segment(c)) else {
            continue;
        };
        named.add_dialog(DialogKey::new(license, messenger, &chat_id));
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(kind: CardKind, id: u64) -> CardId {
        CardId::new(kind, id)
    }

    fn cards(list: &[(CardKind, u64)]) -> BTreeSet<CardId> {
        list.iter().map(|(k, id)| card(*k, *id)).collect()
    }

    fn dialogs(list: &[(u64, &str, &str)]) -> BTreeSet<DialogKey> {
        list.iter()
            .map(|(l, m, c)| DialogKey::new(*l, m, c))
            .collect()
    }

    // /work/shared/api/payloads/kommo_webhook_leads_status.derived.form, copied literally
    const LEADS_STATUS_FORM: &str = "leads%5Bstatus%5D%5B0%5D%5Bid%5D=25399013&leads%5Bstatus%5D%5B0%5D%5Bname%5D=Lead%20title&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=7039101&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142&leads%5Bstatus%5D%5B0%5D%5Bprice%5D=0&leads%5Bstatus%5D%5B0%5D%5Bresponsible_user_id%5D=123123&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1413554372&leads%5Bstatus%5D%5B0%5D%5Bmodified_user_id%5D=123123&leads%5Bstatus%5D%5B0%5D%5Bcreated_user_id%5D=123123&leads%5Bstatus%5D%5B0%5D%5Bdate_create%5D=1413554349&leads%5Bstatus%5D%5B0%5D%5Baccount_id%5D=7039099&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bid%5D=427183&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bname%5D=Checkbox%20custom%20field&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D=1&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bid%5D=427271&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bname%5D=Date%20custom%20field&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B1%5D%5Bvalues%5D%5B0%5D=1412380800&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B2%5D%5Bid%5D=1069602&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B2%5D%5Bname%5D=Checkbox%20custom%20field&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B2%5D%5Bvalues%5D%5B0%5D=0&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B3%5D%5Bid%5D=427661&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B3%5D%5Bname%5D=Text%20custom%20field&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B3%5D%5Bvalues%5D%5B0%5D=%D0%92%D0%B0%D0%BB%D0%B5%D1%80%D0%B0&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B4%5D%5Bid%5D=1075272&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B4%5D%5Bname%5D=Date%20custom%20field&leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B4%5D%5Bvalues%5D%5B0%5D=1413331200";

    // /work/shared/api/payloads/kommo_webhook_contacts_add_company.derived.form, copied literally
    const CONTACTS_ADD_COMPANY_FORM: &str = "contacts%5Badd%5D%5B0%5D%5Bid%5D=10959143&contacts%5Badd%5D%5B0%5D%5Bname%5D=%D0%9A%D0%BE%D0%BC%D0%BF%D0%B0%D0%BD%D0%B8%D1%8F&contacts%5Badd%5D%5B0%5D%5Bresponsible_user_id%5D=123123&contacts%5Badd%5D%5B0%5D%5Bdate_create%5D=1684402979&contacts%5Badd%5D%5B0%5D%5Blast_modified%5D=1684402979&contacts%5Badd%5D%5B0%5D%5Bcreated_user_id%5D=123123&contacts%5Badd%5D%5B0%5D%5Bmodified_user_id%5D=123123&contacts%5Badd%5D%5B0%5D%5Baccount_id%5D=7039099&contacts%5Badd%5D%5B0%5D%5Blinked_leads_id%5D%5B7480363%5D%5BID%5D=7480363&contacts%5Badd%5D%5B0%5D%5Bcreated_at%5D=1684402979&contacts%5Badd%5D%5B0%5D%5Bupdated_at%5D=1684402979&contacts%5Badd%5D%5B0%5D%5Btype%5D=company";

    // /work/shared/api/payloads/chatapp_webhook_message_status.json, copied literally
    const MESSAGE_STATUS_JSON: &str = r#"{
    "data": [
        {
            "id": "BAE5DD2EFC88B3C6",
            "type": "sent",
            "time": 1692006733,
            "chat": {
                "id": "70000000000@c.us",
                "hash": null,
                "type": "private",
                "phone": "70000000000",
                "username": null,
                "email": null
            },
            "fromApp": {
                "id": "app_111_1",
                "tracking": null
            },
            "error": null
        },
        {
            "id": "BAE50969AD3BEA0F",
            "type": "viewed",
            "time": 1692009881,
            "chat": {
                "id": "70000000000@c.us",
                "hash": null,
                "type": "private",
                "phone": "70000000000",
                "username": null,
                "email": null
            },
            "fromApp": {
                "id": "app_111_1",
                "tracking": null
            },
            "error": null
        },
        {
            "id": "BAE50969AD3BEA0F",
            "type": "delivered",
            "time": 1692009828,
            "chat": {
                "id": "70000000000@c.us",
                "hash": null,
                "type": "private",
                "phone": "70000000000",
                "username": null,
                "email": null
            },
            "fromApp": {
                "id": "app_111_1",
                "tracking": null
            },
            "error": null
        }
    ],
    "meta": {
        "type": "messageStatus",
        "licenseId": 123,
        "messengerType": "grWhatsApp"
    }
}"#;

    /// A callback with `meta` as given and one item per chat id (JSON text of the id).
    fn callback(kind: &str, license: &str, messenger: &str, chat_ids: &[&str]) -> String {
        let items: Vec<String> = chat_ids
            .iter()
            .map(|id| format!(r#"{{"id": "m", "type": "text", "chat": {{"id": {id}}}}}"#))
            .collect();
        format!(
            r#"{{"data": [{}], "meta": {{"type": "{kind}", "licenseId": {license}, "messengerType": {messenger}}}}}"#,
            items.join(", ")
        )
    }

    #[test]
    fn kommo_leads_status_form_names_its_lead_only() {
        let named = kommo_named(LEADS_STATUS_FORM.as_bytes());
        // not the custom fields' ids (427183, ...): their keys have six segments
        assert_eq!(named.cards, cards(&[(CardKind::Lead, 25399013)]));
        assert!(named.dialogs.is_empty());
        assert!(!named.overflow);
    }

    #[test]
    fn kommo_contacts_add_company_form_names_a_company() {
        let named = kommo_named(CONTACTS_ADD_COMPANY_FORM.as_bytes());
        // a company (its type follows its id), and not the linked lead 7480363
        assert_eq!(named.cards, cards(&[(CardKind::Company, 10959143)]));
        assert!(!named.overflow);
    }

    #[test]
    fn kommo_contact_type_pairs_with_its_item_whatever_the_order() {
        let body = "contacts[update][1][type]=company&contacts[update][0][id]=1\
                    &contacts[update][1][id]=2&contacts[update][0][type]=contact\
                    &contacts[update][2][id]=3\
                    &contacts[add][0][type]=company&contacts[responsible][0][id]=4";
        let named = kommo_named(body.as_bytes());
        assert_eq!(
            named.cards,
            cards(&[
                (CardKind::Contact, 1),
                (CardKind::Company, 2),
                // no type: a contact
                (CardKind::Contact, 3),
                // the company type of contacts[add][0] does not pair with contacts[responsible][0]
                (CardKind::Contact, 4),
            ])
        );
    }

    #[test]
    fn kommo_contact_of_an_unknown_type_names_nothing() {
        let named = kommo_named(b"contacts[add][0][id]=5&contacts[add][0][type]=Company");
        assert!(named.is_empty(), "{named:?}");
        let named = kommo_named(b"contacts[add][0][id]=5&contacts[add][0][type]=");
        assert!(named.is_empty(), "{named:?}");
    }

    #[test]
    fn kommo_every_card_entity_and_any_action_count() {
        let body = "leads[responsible][0][id]=1&contacts[update][0][id]=2\
                    &companies[add][0][id]=3&customers[status][0][id]=4\
                    &leads[delete][0][id]=5&leads[responsible][1][id]=6";
        let named = kommo_named(body.as_bytes());
        assert_eq!(
            named.cards,
            cards(&[
                (CardKind::Lead, 1),
                (CardKind::Contact, 2),
                (CardKind::Company, 3),
                (CardKind::Customer, 4),
                (CardKind::Lead, 5),
                (CardKind::Lead, 6),
            ])
        );
    }

    #[test]
    fn kommo_other_entities_name_nothing() {
        let body = "unsorted[add][0][id]=1&talk[add][0][id]=2&message[add][0][id]=3\
                    &task[update][0][id]=4&account[subdomain]=x&Leads[status][0][id]=5\
                    &companies[add][0][type]=company";
        let named = kommo_named(body.as_bytes());
        assert!(named.is_empty(), "{named:?}");
    }

    #[test]
    fn kommo_keys_of_another_shape_name_nothing() {
        for key in [
            "leads[status][0][custom_fields][0][id]",
            "contacts[add][0][linked_leads_id][7480363][ID]",
            "leads[status][0][id][x]",
            "leads[status][0]",
            "leads[0][id]",
            "leads[status][0][ID]",
            "leads[status][0][id]x",
            "leads[status][0][id",
            "leads[status][[0]][id]",
            "leads[status]][0][id]",
            "leads[][0][id]",
            "leads[status][][id]",
            "leads",
            "",
        ] {
            let body = format!("{key}=7");
            let named = kommo_named(body.as_bytes());
            assert!(named.is_empty(), "{key}: {named:?}");
        }
        // the control: the same value under the right key names the lead
        let named = kommo_named(b"leads[status][0][id]=7");
        assert_eq!(named.cards, cards(&[(CardKind::Lead, 7)]));
    }

    #[test]
    fn kommo_ids_that_are_not_positive_u64_name_nothing() {
        for id in [
            "0",
            "-1",
            "+5",   // a `+` is a space
            "%2B5", // a plus sign, which `u64::from_str` would take
            "%205",
            "5%20",
            "abc",
            "1.5",
            "1e3",
            "",
            "18446744073709551616",
            "99999999999999999999999",
            "%EF%BC%95", // a fullwidth digit five
        ] {
            let body = format!("leads[status][0][id]={id}");
            let named = kommo_named(body.as_bytes());
            assert!(named.is_empty(), "{id:?}: {named:?}");
        }
        let named =
            kommo_named(b"leads[status][0][id]=18446744073709551615&leads[status][1][id]=007");
        assert_eq!(
            named.cards,
            cards(&[(CardKind::Lead, u64::MAX), (CardKind::Lead, 7)])
        );
    }

    #[test]
    fn kommo_repeated_key_counts_with_its_last_value() {
        let named = kommo_named(b"leads[status][0][id]=1&leads[status][0][id]=2");
        assert_eq!(named.cards, cards(&[(CardKind::Lead, 2)]));
        let named = kommo_named(b"leads[status][0][id]=1&leads[status][0][id]=x");
        assert!(named.is_empty(), "{named:?}");
    }

    #[test]
    fn kommo_overflow_past_max_named() {
        let body = |n: u64| {
            (1..=n)
                .map(|i| format!("leads[update][{i}][id]={i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let named = kommo_named(body(MAX_NAMED as u64).as_bytes());
        assert_eq!(named.len(), MAX_NAMED);
        assert!(!named.overflow);

        let named = kommo_named(body(MAX_NAMED as u64 + 1).as_bytes());
        assert!(named.overflow);
        assert_eq!(named.len(), MAX_NAMED);
        // the first ones are kept
        assert!(named.cards.contains(&card(CardKind::Lead, 1)));
        assert!(
            !named
                .cards
                .contains(&card(CardKind::Lead, MAX_NAMED as u64 + 1))
        );

        // the same card named again does not count twice
        let twice = format!("{}&{}", body(MAX_NAMED as u64), body(MAX_NAMED as u64));
        let named = kommo_named(twice.as_bytes());
        assert_eq!(named.len(), MAX_NAMED);
        assert!(!named.overflow);
    }

    #[test]
    fn kommo_garbage_names_nothing_and_spoils_nothing() {
        for body in [
            &b""[..],
            b"\xff\xfe\x00\x01",
            b"%%%%&&&===",
            b"leads[status][0][id]=%FF",
            b"leads[status][0][id]=\xff1",
            b"leads%5Bstatus%5D%5B0%5D%5Bid%5D\xff=1",
            br#"{"leads": {"status": [{"id": "1"}]}}"#,
        ] {
            let named = kommo_named(body);
            assert!(named.is_empty(), "{body:?}: {named:?}");
        }
        let named =
            kommo_named(b"\xff\xfe=\xc3&leads+%5Bstatus%5D[0][id]=3&leads[status][0][id]=4");
        // "leads [status]..." (a `+` is a space) is not an entity; the valid pair still counts
        assert_eq!(named.cards, cards(&[(CardKind::Lead, 4)]));
    }

    #[test]
    fn named_is_empty_and_len() {
        let mut named = Named::default();
        assert!(named.is_empty());
        assert_eq!(named.len(), 0);
        named.overflow = true;
        assert!(!named.is_empty(), "an overflow alone is not empty");
        let named = Named {
            cards: cards(&[(CardKind::Lead, 1)]),
            dialogs: dialogs(&[(1, "telegram", "@a")]),
            overflow: false,
        };
        assert!(!named.is_empty());
        assert_eq!(named.len(), 2);
    }

    #[test]
    fn merge_unions_within_the_cap() {
        let mut a = Named {
            cards: cards(&[(CardKind::Lead, 1), (CardKind::Contact, 2)]),
            ..Named::default()
        };
        let b = Named {
            cards: cards(&[(CardKind::Lead, 1), (CardKind::Company, 2)]),
            dialogs: dialogs(&[(1, "telegram", "@a")]),
            overflow: false,
        };
        // 2 + 2 new = 4: exactly the cap (lead 1 is in both and counts once)
        a.merge(b, 4);
        assert!(!a.overflow);
        assert_eq!(
            a.cards,
            cards(&[
                (CardKind::Lead, 1),
                (CardKind::Contact, 2),
                (CardKind::Company, 2)
            ])
        );
        assert_eq!(a.dialogs, dialogs(&[(1, "telegram", "@a")]));
    }

    #[test]
    fn merge_past_the_cap_sets_overflow_and_drops_the_new_ones() {
        let before = Named {
            cards: cards(&[(CardKind::Lead, 1), (CardKind::Lead, 2)]),
            ..Named::default()
        };
        let mut a = before.clone();
        let b = Named {
            cards: cards(&[(CardKind::Lead, 2), (CardKind::Lead, 3)]),
            dialogs: dialogs(&[(1, "telegram", "@a")]),
            overflow: false,
        };
        a.merge(b, 3);
        assert!(a.overflow);
        assert_eq!(a.cards, before.cards);
        assert!(a.dialogs.is_empty());

        // another's overflow carries over, even within the cap
        let mut a = before.clone();
        a.merge(
            Named {
                overflow: true,
                ..Named::default()
            },
            MAX_NAMED,
        );
        assert!(a.overflow);
        assert_eq!(a.cards, before.cards);
    }

    #[test]
    fn chatapp_message_body_names_its_chats() {
        let body = callback(
            "message",
            "123",
            r#""grWhatsApp""#,
            &[
                r#""70000000000@c.us""#,
                r#""79990000000@c.us""#,
                r#""70000000000@c.us""#,
            ],
        );
        let named = chatapp_named(body.as_bytes());
        assert_eq!(
            named.dialogs,
            dialogs(&[
                (123, "grWhatsApp", "70000000000@c.us"),
                (123, "grWhatsApp", "79990000000@c.us"),
            ])
        );
        assert!(named.cards.is_empty());
        assert!(!named.overflow);
    }

    #[test]
    fn chatapp_chat_responsible_body_names_its_chat() {
        let body = callback("chatResponsible", "77", r#""telegram""#, &[r#""@someone""#]);
        let named = chatapp_named(body.as_bytes());
        assert_eq!(named.dialogs, dialogs(&[(77, "telegram", "@someone")]));

        // `data` as one object instead of an array
        let one = r#"{"data": {"chat": {"id": "@someone"}, "responsible": {"id": 5}},
                      "meta": {"type": "chatResponsible", "licenseId": 77, "messengerType": "telegram"}}"#;
        let named = chatapp_named(one.as_bytes());
        assert_eq!(named.dialogs, dialogs(&[(77, "telegram", "@someone")]));
    }

    #[test]
    fn chatapp_message_status_body_names_nothing() {
        let named = chatapp_named(MESSAGE_STATUS_JSON.as_bytes());
        assert!(named.is_empty(), "{named:?}");
        // the control: the same body as a `message` event names its chat
        let as_message = MESSAGE_STATUS_JSON.replace(r#""messageStatus""#, r#""message""#);
        let named = chatapp_named(as_message.as_bytes());
        assert_eq!(
            named.dialogs,
            dialogs(&[(123, "grWhatsApp", "70000000000@c.us")])
        );
        for other in ["chatTag", "Message", "", "messages"] {
            let body = callback(other, "1", r#""telegram""#, &[r#""@a""#]);
            assert!(chatapp_named(body.as_bytes()).is_empty(), "{other}");
        }
    }

    #[test]
    fn chatapp_license_id_as_number_or_decimal_string() {
        let named = chatapp_named(
            callback("message", r#""456""#, r#""telegram""#, &[r#""@a""#]).as_bytes(),
        );
        assert_eq!(named.dialogs, dialogs(&[(456, "telegram", "@a")]));
        for license in [
            r#""45a""#,
            r#""-1""#,
            r#""""#,
            r#"" 456""#,
            r#""18446744073709551616""#,
            "-1",
            "4.5",
            "null",
            "true",
            "[1]",
            r#"{"id": 1}"#,
        ] {
            let body = callback("message", license, r#""telegram""#, &[r#""@a""#]);
            let named = chatapp_named(body.as_bytes());
            assert!(named.is_empty(), "{license}: {named:?}");
        }
    }

    #[test]
    fn chatapp_numeric_chat_id_is_its_decimal_text() {
        let body = callback(
            "message",
            "1",
            r#""telegram""#,
            &["123456789", "-1001234567890"],
        );
        let named = chatapp_named(body.as_bytes());
        assert_eq!(
            named.dialogs,
            dialogs(&[
                (1, "telegram", "123456789"),
                (1, "telegram", "-1001234567890")
            ])
        );
    }

    #[test]
    fn chatapp_chat_id_or_messenger_that_cannot_be_a_path_segment_names_nothing() {
        let body = callback(
            "message",
            "1",
            r#""telegram""#,
            &[r#""..""#, r#"".""#, r#""""#, r#""@ok""#],
        );
        let named = chatapp_named(body.as_bytes());
        // the other chat of the same body still counts
        assert_eq!(named.dialogs, dialogs(&[(1, "telegram", "@ok")]));
        for messenger in [r#""..""#, r#"".""#, r#""""#, "null", "7"] {
            let body = callback("message", "1", messenger, &[r#""@ok""#]);
            let named = chatapp_named(body.as_bytes());
            assert!(named.is_empty(), "{messenger}: {named:?}");
        }
    }

    #[test]
    fn chatapp_items_that_do_not_fit_are_skipped() {
        let body = r#"{"data": [
                {"chat": {"id": "@ok"}},
                {"chat": null}, {"chat": "@a"}, {"chat": ["@b"]}, {"chat": {}},
                {"chat": {"id": null}}, {"chat": {"id": 1.5}}, {"chat": {"id": true}},
                {"chat": {"id": {"x": "@c"}}}, {"chat": {"id": ["@d"]}},
                {"id": "no chat"}, "@e", 5, null, [{"chat": {"id": "@f"}}]
            ],
            "meta": {"type": "message", "licenseId": 1, "messengerType": "telegram"}}"#;
        let named = chatapp_named(body.as_bytes());
        assert_eq!(named.dialogs, dialogs(&[(1, "telegram", "@ok")]));
    }

    #[test]
    fn chatapp_skips_unread_fields_unchecked() {
        // a lone surrogate and raw invalid UTF-8 in fields the parser does not read
        let mut body = br#"{"data": [{"text": "\ud800", "chat": {"id": "@ok", "name": "#.to_vec();
        body.extend_from_slice(b"\"\xff\xfe\"");
        body.extend_from_slice(
            br#"}}], "meta": {"type": "message", "licenseId": 1, "messengerType": "telegram"}}"#,
        );
        let named = chatapp_named(&body);
        assert_eq!(named.dialogs, dialogs(&[(1, "telegram", "@ok")]));
    }

    #[test]
    fn chatapp_overflow_past_max_named() {
        let ids: Vec<String> = (0..=MAX_NAMED).map(|i| format!(r#""{i}@c.us""#)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let named = chatapp_named(callback("message", "1", r#""grWhatsApp""#, &refs).as_bytes());
        assert!(named.overflow);
        assert_eq!(named.len(), MAX_NAMED);
        assert!(
            named
                .dialogs
                .contains(&DialogKey::new(1, "grWhatsApp", "0@c.us"))
        );
        let named = chatapp_named(
            callback("message", "1", r#""grWhatsApp""#, &refs[..MAX_NAMED]).as_bytes(),
        );
        assert!(!named.overflow);
        assert_eq!(named.len(), MAX_NAMED);
    }

    #[test]
    fn chatapp_garbage_names_nothing() {
        let good = callback("message", "1", r#""telegram""#, &[r#""@a""#]);
        assert!(!chatapp_named(good.as_bytes()).is_empty(), "the control");
        let array = r#"[[{"chat": {"id": "@a"}}], {"type": "message", "licenseId": 1, "messengerType": "telegram"}]"#;
        for body in [
            &b""[..],
            b"\xff\xfe\x00",
            b"{",
            b"null",
            b"[]",
            b"\"message\"",
            array.as_bytes(),
            format!("{good} x").as_bytes(),
            good.replace(r#""meta""#, r#""Meta""#).as_bytes(),
            good.replace(r#""data""#, r#""items""#).as_bytes(),
            br#"{"data": "@a", "meta": {"type": "message", "licenseId": 1, "messengerType": "telegram"}}"#,
            br#"{"data": [{"chat": {"id": "@a"}}], "meta": "message"}"#,
            b"leads[status][0][id]=1",
        ] {
            let named = chatapp_named(body);
            assert!(named.is_empty(), "{:?}: {named:?}", String::from_utf8_lossy(body));
        }
    }
}
