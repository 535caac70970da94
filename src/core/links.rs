//! Links between dialogs and cards (SPEC section 4): Messenger-field values, phones, and the
//! dialog -> cards resolution. Pure functions.

use crate::core::model::{CardId, CardKind, CardState, DialogKey, DialogRef, DialogState};
use std::collections::{BTreeMap, BTreeSet};

/// Keeps only the digits of a phone: `+7 (999) 123-45-67` -> `79991234567`.
pub fn phone_digits(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_digit()).collect()
}

/// True when `s` looks like a phone number: digits with optional `+ ( ) - . space`, at least 5 digits.
pub fn looks_like_phone(s: &str) -> bool {
    let digits = phone_digits(s);
    digits.len() >= 5
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '(' | ')' | '-' | ' ' | '.'))
}

/// The phone a chat id carries, if any: `79991234567@c.us` and `79991234567` both give
/// `79991234567`; `@username` gives none.
pub fn phone_of_chat_id(chat_id: &str) -> Option<String> {
    let local = chat_id.strip_suffix("@c.us").unwrap_or(chat_id);
    looks_like_phone(local).then(|| phone_digits(local))
}

/// Parses one Messenger-field value. Accepted forms: `<licenseId>:<messengerType>:<chatId>`, a bare
/// chat id, or a phone. Returns `None` for an empty value.
pub fn parse_messenger_value(raw: &str) -> Option<DialogRef> {
    let v = raw.trim();
    if v.is_empty() {
        return None;
    }
    let mut parts = v.splitn(3, ':');
    if let (Some(l), Some(m), Some(c)) = (parts.next(), parts.next(), parts.next())
        && let Ok(license_id) = l.trim().parse::<u64>()
        && !m.trim().is_empty()
        && !c.trim().is_empty()
    {
        return Some(DialogRef::Full(DialogKey::new(
            license_id,
            m.trim(),
            c.trim(),
        )));
    }
    if looks_like_phone(v) && !v.contains('@') {
        return Some(DialogRef::Phone(phone_digits(v)));
    }
    Some(DialogRef::ChatId(v.to_string()))
}

/// Index over the known dialogs used to resolve references. It borrows the dialogs' keys:
/// on a first run it covers every dialog of the account.
#[derive(Debug, Default)]
pub struct DialogIndex<'a> {
    by_chat_id: BTreeMap<&'a str, Vec<&'a DialogKey>>,
    by_phone: BTreeMap<String, Vec<&'a DialogKey>>,
    keys: BTreeSet<&'a DialogKey>,
}

impl<'a> DialogIndex<'a> {
    /// Builds the index from the dialogs' states.
    pub fn new(dialogs: impl IntoIterator<Item = (&'a DialogKey, &'a DialogState)>) -> Self {
        let mut ix = DialogIndex::default();
        for (key, st) in dialogs {
            ix.keys.insert(key);
            ix.by_chat_id
                .entry(key.chat_id.as_str())
                .or_default()
                .push(key);
            let phone = st.phone.clone().or_else(|| phone_of_chat_id(&key.chat_id));
            if let Some(p) = phone.filter(|p| !p.is_empty()) {
                ix.by_phone.entry(p).or_default().push(key);
            }
        }
        ix
    }

    /// The dialogs a reference points at (empty when unknown), sorted, each once.
    pub fn resolve(&self, r: &DialogRef) -> Vec<&'a DialogKey> {
        match r {
            DialogRef::Full(k) => self.keys.get(k).copied().into_iter().collect(),
            DialogRef::ChatId(c) => {
                let mut v = self.by_chat_id.get(c.as_str()).cloned().unwrap_or_default();
                if let Some(p) = phone_of_chat_id(c) {
                    v.extend(self.by_phone(&p));
                }
                v.sort();
                v.dedup();
                v
            }
            DialogRef::Phone(p) => self.by_phone(p).to_vec(),
        }
    }

    /// The dialogs whose phone equals `digits`.
    pub fn by_phone(&self, digits: &str) -> &[&'a DialogKey] {
        self.by_phone.get(digits).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The resolved links of a cycle: dialog -> linked cards, and contact -> dangling references.
#[derive(Debug, Default)]
pub struct Links {
    /// Cards linked to each dialog (sorted, no duplicates).
    pub cards_of: BTreeMap<DialogKey, Vec<CardId>>,
    /// Messenger references of each contact that match no known dialog.
    pub unknown_refs: BTreeMap<u64, Vec<DialogRef>>,
}

/// Resolves dialog -> cards: contacts via their Messenger references (and phones when
/// `match_phone`), other kinds via their linked contacts and, for an incoming lead linked through
/// its unsorted chat record, its own references.
pub fn resolve_links(
    cards: &BTreeMap<CardId, CardState>,
    dialogs: &BTreeMap<DialogKey, DialogState>,
    match_phone: bool,
) -> Links {
    resolve_links_with(|| cards.iter(), dialogs, match_phone)
}

/// [`resolve_links`] over any view of the cards (`cards()` is called twice, each time yielding
/// every card once): the engine passes its snapshot overlaid with the cycle's observations.
pub fn resolve_links_with<'a, I>(
    cards: impl Fn() -> I,
    dialogs: &BTreeMap<DialogKey, DialogState>,
    match_phone: bool,
) -> Links
where
    I: Iterator<Item = (&'a CardId, &'a CardState)>,
{
    let ix = DialogIndex::new(dialogs.iter());
    let mut links = Links::default();
    let mut dialogs_of_contact: BTreeMap<u64, Vec<&DialogKey>> = BTreeMap::new();
    for (id, st) in cards().filter(|(id, _)| id.kind == CardKind::Contact) {
        let mut found: Vec<&DialogKey> = vec![];
        for r in &st.dialog_refs {
            let of_ref = ix.resolve(r);
            if of_ref.is_empty() {
                links.unknown_refs.entry(id.id).or_default().push(r.clone());
            }
            found.extend(of_ref);
        }
        if match_phone {
            for p in &st.phones {
                found.extend(ix.by_phone(p));
            }
        }
        if !found.is_empty() {
            found.sort_unstable();
            found.dedup();
            dialogs_of_contact.insert(id.id, found);
        }
    }
    let mut cards_of: BTreeMap<&DialogKey, Vec<CardId>> = BTreeMap::new();
    for (id, st) in cards() {
        if id.kind == CardKind::Contact {
            for d in dialogs_of_contact.get(&id.id).into_iter().flatten() {
                cards_of.entry(d).or_default().push(*id);
            }
            continue;
        }
        let via_contacts = st
            .contacts
            .iter()
            .flat_map(|c| dialogs_of_contact.get(c).into_iter().flatten().copied());
        let own = st.dialog_refs.iter().flat_map(|r| ix.resolve(r));
        for d in via_contacts.chain(own) {
            cards_of.entry(d).or_default().push(*id);
        }
    }
    links.cards_of = cards_of
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            v.dedup();
            v.shrink_to_fit();
            (k.clone(), v)
        })
        .collect();
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_digits_strips_everything_but_digits() {
        assert_eq!(phone_digits("+7 (999) 123-45-67"), "79991234567");
        assert_eq!(
            phone_of_chat_id("79991234567@c.us").as_deref(),
            Some("79991234567")
        );
        assert_eq!(
            phone_of_chat_id("79991234567").as_deref(),
            Some("79991234567")
        );
        assert_eq!(phone_of_chat_id("@SergeiIOne"), None);
        assert_eq!(phone_of_chat_id("abc123456"), None);
    }

    #[test]
    fn messenger_values_in_every_form() {
        assert_eq!(
            parse_messenger_value("1:grWhatsApp:79991234567@c.us"),
            Some(DialogRef::Full(DialogKey::new(
                1,
                "grWhatsApp",
                "79991234567@c.us"
            )))
        );
        assert_eq!(
            parse_messenger_value(" 12:telegram:@name "),
            Some(DialogRef::Full(DialogKey::new(12, "telegram", "@name")))
        );
        assert_eq!(
            parse_messenger_value("+7 (999) 123-45-67"),
            Some(DialogRef::Phone("79991234567".into()))
        );
        assert_eq!(
            parse_messenger_value("79991234567@c.us"),
            Some(DialogRef::ChatId("79991234567@c.us".into()))
        );
        assert_eq!(
            parse_messenger_value("@SergeiIOne"),
            Some(DialogRef::ChatId("@SergeiIOne".into()))
        );
        // a non-numeric license makes it a bare chat id, not a full reference
        assert_eq!(
            parse_messenger_value("x:telegram:1"),
            Some(DialogRef::ChatId("x:telegram:1".into()))
        );
        assert_eq!(parse_messenger_value("   "), None);
    }

    fn dialog(phone: Option<&str>) -> DialogState {
        DialogState {
            responsible: None,
            changed_at: 0,
            last_time: 0,
            session: 0,
            closed: false,
            phone: phone.map(str::to_string),
        }
    }

    fn contact(refs: Vec<DialogRef>, phones: &[&str]) -> CardState {
        CardState {
            responsible: crate::core::model::KommoUserId(1),
            changed_at: 0,
            flag: true,
            deleted: false,
            contacts: vec![],
            dialog_refs: refs,
            phones: phones.iter().map(|s| s.to_string()).collect(),
            lead: Default::default(),
        }
    }

    #[test]
    fn resolves_contacts_and_their_leads() {
        let wa = DialogKey::new(1, "grWhatsApp", "79991234567@c.us");
        let tg = DialogKey::new(2, "telegram", "@bob");
        let ca = DialogKey::new(1, "caWhatsApp", "77763068686");
        let dialogs: BTreeMap<_, _> = [
            (wa.clone(), dialog(None)),
            (tg.clone(), dialog(None)),
            (ca.clone(), dialog(Some("77763068686"))),
        ]
        .into();
        let mut cards = BTreeMap::new();
        cards.insert(
            CardId::new(CardKind::Contact, 10),
            contact(vec![parse_messenger_value("2:telegram:@bob").unwrap()], &[]),
        );
        cards.insert(
            CardId::new(CardKind::Contact, 11),
            contact(vec![], &["79991234567"]),
        );
        cards.insert(
            CardId::new(CardKind::Contact, 12),
            contact(
                vec![
                    parse_messenger_value("+7 776 306 86 86").unwrap(),
                    parse_messenger_value("9:telegram:@ghost").unwrap(),
                ],
                &[],
            ),
        );
        let mut lead = contact(vec![], &[]);
        lead.contacts = vec![10, 11];
        cards.insert(CardId::new(CardKind::Lead, 100), lead);

        let with_phone = resolve_links(&cards, &dialogs, true);
        assert_eq!(
            with_phone.cards_of[&tg],
            vec![
                CardId::new(CardKind::Lead, 100),
                CardId::new(CardKind::Contact, 10)
            ]
        );
        assert_eq!(
            with_phone.cards_of[&wa],
            vec![
                CardId::new(CardKind::Lead, 100),
                CardId::new(CardKind::Contact, 11)
            ]
        );
        assert_eq!(
            with_phone.cards_of[&ca],
            vec![CardId::new(CardKind::Contact, 12)]
        );
        assert_eq!(with_phone.unknown_refs[&12].len(), 1);

        let no_phone = resolve_links(&cards, &dialogs, false);
        assert!(!no_phone.cards_of.contains_key(&wa));
        // a Messenger value that is a phone still matches with match_phone off: it is a reference
        assert_eq!(
            no_phone.cards_of[&ca],
            vec![CardId::new(CardKind::Contact, 12)]
        );
    }
}
