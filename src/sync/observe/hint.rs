//! A hint cycle's read (SPEC 6.2): only the records webhook calls named, sized to them.
//!
//! - Named cards are read by id (one request per kind), with the events of the window (one page
//!   on a quiet account): the events date the cards' values exactly as an incremental cycle
//!   does, so the engine decides the same from the same records. Lead stages moved by those
//!   events are kept current as on an incremental cycle.
//! - A named dialog that is new, was reopened or changed hands is decided with the cards that
//!   may link to it read too, with the events: deciding it from their bases alone could undo a
//!   Kommo change made since the last poll ([`CardsToRead`]). A new or reopened dialog reads them
//!   all (rule 2 takes an `E_in` card's value whether or not it changed); one that only changed
//!   hands reads those the window's events name (only a changed responsible weighs against it).
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

use super::{Observed, Reader};
use crate::core::engine::Snapshot;
use crate::core::engine::{Observations, dialog_reopened};
use crate::core::model::{CardId, CardKind, DialogKey, DialogObs, RecordId};
use crate::core::neighbourhood::{BaseLookup, Frame, neighbourhood};
use crate::ports::CycleKind;
use crate::ports::{CardEvent, ChatAppApi, KommoApi, StateStore};
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
    let events = if wanted.is_empty() {
        vec![]
    } else {
        r.read_events().await?.0
    };
    for (kind, ids) in wanted.by_kind(&events) {
        r.read_by_id(kind, ids).await?;
    }
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

/// The cards a hint cycle reads: those the calls named, and the cards that may link to a dialog
/// it observed that is new, changed hands or was reopened. Deciding such a dialog from its cards'
/// bases alone could undo a change made in Kommo since the last poll (rule 5 weighs the two
/// changes by time): so those cards are read, with the events that date them, as an incremental
/// cycle would see them. A dialog whose only news is a message is not decided, so a message
/// callback reads no card.
#[derive(Default)]
struct CardsToRead {
    /// Read whatever the events say: named by a call, or around a new or reopened dialog (rule 2
    /// takes the value of an `E_in` card whether or not it changed).
    always: BTreeSet<CardId>,
    /// Around a dialog that only changed hands: read when an event of the window names them.
    /// Only a card whose responsible changed since the last poll can weigh against the dialog's
    /// change (rules 1 and 5 count a card as changed by its value), and such a change has its
    /// `responsible_changed` event in the window, the same events an incremental cycle reads
    /// cards by. Another card's other fields do not bear on rule 3, whose targets are each read
    /// right before their write (rule 10: gone, closed or unchecked since -> not written).
    if_evented: BTreeSet<CardId>,
}

impl CardsToRead {
    fn new<K: KommoApi, C: ChatAppApi, S: StateStore>(
        r: &Reader<'_, K, C, S>,
        hint: &Hint,
    ) -> Result<Self, CycleError> {
        let mut out = CardsToRead {
            always: hint.cards.clone(),
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
        out.always.extend(around(r, opened)?);
        out.if_evented.extend(around(r, moved)?);
        // only the synced kinds: a call may name a card of any kind
        let kinds = r.sy.config.kinds();
        out.always.retain(|c| kinds.contains(&c.kind));
        out.if_evented.retain(|c| kinds.contains(&c.kind));
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.always.is_empty() && self.if_evented.is_empty()
    }

    /// What to read, by kind, given the window's events.
    fn by_kind(self, events: &[CardEvent]) -> BTreeMap<CardKind, Vec<u64>> {
        let evented: BTreeSet<CardId> = events.iter().filter_map(|e| e.card).collect();
        let mut out: BTreeMap<CardKind, Vec<u64>> = BTreeMap::new();
        let chosen = self.if_evented.intersection(&evented).copied();
        let ids: BTreeSet<CardId> = self.always.into_iter().chain(chosen).collect();
        for c in ids {
            out.entry(c.kind).or_default().push(c.id);
        }
        out
    }
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
