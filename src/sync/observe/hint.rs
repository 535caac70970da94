//! A hint cycle's read (SPEC 6.2): only the records webhook calls named, sized to them.
//!
//! - Named cards are read by id (one request per kind), with the events of the window (one page
//!   on a quiet account): the events date the cards' values exactly as an incremental cycle
//!   does, so the engine decides the same from the same records. Lead stages moved by those
//!   events are kept current as on an incremental cycle.
//! - A named dialog that is new, was reopened or changed hands is decided with every card that
//!   may link to it read too: deciding it from their bases alone could undo a Kommo change made
//!   since the last poll, or write a card unlinked or unchecked since ([`CardsToRead`]). A new or
//!   reopened dialog's cards come with the events; a dialog that only changed hands reads the
//!   events only when one of its cards changed hands too (only a changed responsible weighs
//!   against the dialog's change).
//! - A chat read on its own is merged with its base: SPEC 6.1's sources show that answer with
//!   `id`, `name` and `responsible` only, and a field it lacks must not overwrite the base (see
//!   `Reader::observe_chat_alone`: a closed dialog stays closed until a new conversation or a
//!   listing shows otherwise).
//! - Named dialogs of the configured lines (`[chatapp] license_ids`, as the chat listing keeps
//!   them) are read one by one from ChatApp. A message callback on a dialog whose responsible did
//!   not change makes no Kommo request (and, finding nothing, no db write); each target is read
//!   again right before it is written (rule 10), except a card this hint read by id less than
//!   [`crate::sync::apply::FRESH_READ`] before: that read is the check.
//! - Nothing else is read, and no watermark moves and no event is marked handled: the next
//!   polled cycle reads its window as if the hint had not run (the hint's records then equal
//!   their new bases). Polling stays the safety net.
//! - Records held by a failed write that the hint did not read are not decided from their
//!   bases: they stay held for the next polled cycle, which reads them again.
//! - The user map is the one the last polled cycle read ([`Syncer::remembered_people`]): users
//!   change rarely, and a user added since is mapped at the next poll.
//!
//! A hint cannot run before the first cycle, in shadow mode, without a remembered user map, or
//! while lead stages were never read: the caller then runs an incremental cycle instead.

use super::{Fetched, Observed, Reader};
use crate::core::engine::Snapshot;
use crate::core::engine::{Observations, dialog_reopened};
use crate::core::model::{CardId, CardKind, DialogKey, DialogObs, RecordId};
use crate::core::neighbourhood::{BaseLookup, Frame, neighbourhood};
use crate::ports::CycleKind;
use crate::ports::{ChatAppApi, KommoApi, StateStore};
use crate::sync::{CycleError, Hint, Syncer};
use std::collections::{BTreeMap, BTreeSet};

/// Reads what `hint` names (see the module docs); `None` when a hint cycle cannot run now.
pub async fn observe_hint<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    now: i64,
    hint: &Hint,
) -> Result<Option<Observed<S::Staged>>, CycleError> {
    let Some((usermap, people)) = sy.remembered_people() else {
        return Ok(None);
    };
    let mut frame = sy.store.frame()?;
    let stored_pipelines = sy.store.pipelines()?;
    if !frame.bootstrapped || (sy.config.syncs_leads() && stored_pipelines.is_none()) {
        return Ok(None);
    }
    frame.match_phone = sy.config.links.match_phone;
    let held = std::mem::take(&mut frame.held);
    let mut r = Reader::new(sy, now, CycleKind::Hint, frame, None, &stored_pipelines)?;
    // only the configured lines, as the chat listing keeps them: a call may name any chat
    let lines = &sy.config.chatapp.license_ids;
    for key in hint
        .dialogs
        .iter()
        .filter(|k| lines.contains(&k.license_id))
    {
        if let Some(c) = sy.chatapp.chat(key).await? {
            r.observe_chat_alone(c)?;
        }
    }
    let wanted = CardsToRead::new(&r, hint)?;
    let mut events = None;
    if !wanted.dated.is_empty() {
        events = Some(r.read_events().await?.0);
    }
    // one request per kind for both sets; observed once the events (if any) are in
    let mut fetched = vec![];
    for (kind, ids) in by_kind(wanted.dated.union(&wanted.moved)) {
        let got = r.fetch_by_id(kind, &ids).await?;
        fetched.push((kind, ids, got));
    }
    if events.is_none() && any_changed_hands(&r, &fetched)? {
        events = Some(r.read_events().await?.0);
    }
    for (kind, ids, got) in fetched {
        r.accept_by_id(kind, ids, got)?;
    }
    let events = events.unwrap_or_default();
    r.complete_cards(&events).await?;
    r.collect_bad();
    let released = r.released();
    let (read_held, carried_held) = split_held(held, &r);
    r.frame.held = read_held;
    let read = (r.cards_read() as u64, r.read_dialogs.len() as u64);
    let (snap, staged) = r.plan_input(false)?;
    Ok(Some(Observed {
        snap,
        read,
        obs: r.obs,
        usermap,
        people,
        kind: CycleKind::Hint,
        // nothing moves: the next polled cycle reads its whole window
        watermarks: r.wm,
        fresh_events: vec![],
        bad: r.bad,
        released,
        pipelines: r.pipelines,
        stored_pipelines,
        listing_brake: None,
        staged,
        shadow_tally: None,
        shadow_unlinked: Snapshot::default(),
        carried_held,
        read_just_now: std::mem::take(&mut r.read_just_now),
    }))
}

/// The cards a hint cycle reads: those the calls named, and every card that may link to a dialog
/// it observed that is new, changed hands or was reopened. Deciding such a dialog from its cards'
/// bases alone could undo a change made in Kommo since the last poll (rule 5 weighs the two
/// changes by time), write a card unlinked or unchecked since, or miss one linked or checked
/// since: so those cards are read, as an incremental cycle would see them. A dialog whose only
/// news is a message is not decided, so a message callback reads no card.
#[derive(Default)]
struct CardsToRead {
    /// Read with the events that date them: named by a call (a change), or around a new or
    /// reopened dialog (rule 2 takes the latest-changed `E_in` card's value whether or not it
    /// changed, and a card changed and changed back since the last poll is dated only by its
    /// events).
    dated: BTreeSet<CardId>,
    /// Around a dialog that only changed hands (and not in `dated`): read whole, their links and
    /// flags included; the events are read only when one of them holds another responsible than
    /// its base. Rules 1 and 5 count a card as changed by its value, so when none did, the
    /// events could only re-date unchanged values, which does not bear on rule 3 (see
    /// [`any_changed_hands`]).
    moved: BTreeSet<CardId>,
}

impl CardsToRead {
    fn new<K: KommoApi, C: ChatAppApi, S: StateStore>(
        r: &Reader<'_, K, C, S>,
        hint: &Hint,
    ) -> Result<Self, CycleError> {
        let mut out = CardsToRead {
            dated: hint.cards.clone(),
            ..Self::default()
        };
        // a dialog whose only news is activity (`lastTime`) needs no card
        let (mut opened, mut moved) = (BTreeMap::new(), BTreeMap::new());
        for (key, o) in &r.obs.dialogs {
            match r.bases.dialog(key)? {
                Some(b) if dialog_reopened(&b, o) => opened.insert(key.clone(), o.clone()),
                None => opened.insert(key.clone(), o.clone()),
                Some(b) if b.responsible != o.responsible => moved.insert(key.clone(), o.clone()),
                Some(_) => None,
            };
        }
        out.dated.extend(around(r, opened)?);
        out.moved.extend(around(r, moved)?);
        // only the synced kinds: a call may name a card of any kind
        let kinds = r.sy.config.kinds();
        out.dated.retain(|c| kinds.contains(&c.kind));
        let dated = &out.dated;
        out.moved
            .retain(|c| kinds.contains(&c.kind) && !dated.contains(c));
        Ok(out)
    }
}

/// Cards by kind, ids in order.
fn by_kind<'c>(cards: impl IntoIterator<Item = &'c CardId>) -> BTreeMap<CardKind, Vec<u64>> {
    let mut out: BTreeMap<CardKind, Vec<u64>> = BTreeMap::new();
    for c in cards {
        out.entry(c.kind).or_default().push(c.id);
    }
    out
}

/// Whether a card read (around a dialog that changed hands: called only when no named card or
/// new or reopened dialog has had the events read) holds another responsible than its base (or
/// has none): then the events must date it before deciding (rule 5 weighs its change against
/// the dialog's; an `E_out` target changed by a person is weighed too).
fn any_changed_hands<K: KommoApi, C: ChatAppApi, S: StateStore>(
    r: &Reader<'_, K, C, S>,
    fetched: &[(CardKind, Vec<u64>, Fetched)],
) -> Result<bool, CycleError> {
    for (_, _, (got, _)) in fetched {
        for c in got {
            let base = r.bases.card(&c.card_id())?;
            if base.is_none_or(|b| b.responsible != c.view.responsible) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Every card that may link to `dialogs`, from the bases.
fn around<K: KommoApi, C: ChatAppApi, S: StateStore>(
    r: &Reader<'_, K, C, S>,
    dialogs: BTreeMap<DialogKey, DialogObs>,
) -> Result<BTreeSet<CardId>, CycleError> {
    if dialogs.is_empty() {
        return Ok(BTreeSet::new());
    }
    let dialogs_only = Observations {
        dialogs,
        now: r.now,
        ..Observations::default()
    };
    let frame = Frame {
        bootstrapped: true,
        match_phone: r.frame.match_phone,
        ..Frame::default()
    };
    Ok(neighbourhood(&r.bases, frame, &dialogs_only)?
        .cards
        .into_keys()
        .collect())
}

/// Held records the hint read (decided again, as on a polled cycle) and those it did not (kept
/// held, undecided, for the next polled cycle).
fn split_held<K: KommoApi, C: ChatAppApi, S: StateStore>(
    held: BTreeSet<RecordId>,
    r: &Reader<'_, K, C, S>,
) -> (BTreeSet<RecordId>, BTreeSet<RecordId>) {
    held.into_iter().partition(|h| match h {
        RecordId::Card(c) => r.was_read(c),
        RecordId::Dialog(d) => r.read_dialogs.contains(d),
    })
}
