//! Step 2 of a cycle: read what it needs and return it as observations for the engine.
//!
//! A full cycle lists every card of the synced kinds and every chat; an incremental one reads
//! from the watermarks (Kommo's `updated_at` pages when list filters work, the cards named by new
//! events or held by a failed write, chats newest-first down to the watermark). Both read the
//! users, the employees and the events of the window, keep lead stages current (pipelines on full
//! cycles and for unknown statuses, `lead_status_changed` events otherwise), link incoming leads
//! through their unsorted chat when their contact cannot be read, and collect the records that did
//! not fit their page (quarantine).
//!
//! Cost in proportion to change: nothing loads every base. Each card or chat read is compared
//! with its base by a point lookup, and only those that differ become observations (a full cycle
//! keeps the listing's pages, not the account); the engine then gets the neighbourhood of those
//! observations ([`crate::core::neighbourhood`]). A first run (its bootstrap decides every
//! dialog) stages every card it reads in the bases' compact encoding (the state port's
//! [`Staging`]) and is planned group by group from the staging ([`crate::core::first_run`]); the
//! commit stores every card the plan did not settle otherwise as read. A shadow cycle plans from the neighbourhood too, unless it counts its linked
//! pairs afresh (a shadow first run, no kept count, or one made under another user map or
//! policy: see [`super::shadow`]); then it loads every base. The chats are read while the Kommo
//! cards are listed.

mod hint;
pub use hint::observe_hint;

use super::apply::ReadJustNow;
use super::{CycleError, Syncer};
use crate::core::engine::{Brake, Observations, Snapshot, empty_listing_brake};
use crate::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogRef, KommoUserId, LeadStage,
    RecordId, StageKind,
};
use crate::core::model::{Pipelines, classify_status, stage_or_open};
use crate::core::neighbourhood::{
    BaseLookup, Frame, card_unchanged, dialog_unchanged, neighbourhood, staged_state,
    unlinked_around,
};
use crate::core::text::People;
use crate::core::usermap::UserMap;
use crate::http::BadRecord;
use crate::ports::{CardEvent, CardRead, ChatAppApi, ChatRead, KommoApi, Staging, StateStore};
use crate::ports::{CycleKind, Quarantined, ShadowTally, StoreError, Watermarks};
use std::collections::{BTreeMap, BTreeSet};

/// Cards read by id, and the records the read skipped (not observed yet).
type Fetched = (Vec<CardRead>, Vec<BadRecord>);

/// Change times of card values from the events: `(card, new responsible)` -> latest event time.
type EventTimes = BTreeMap<(CardId, KommoUserId), i64>;

/// What a cycle read, ready for the engine and the commit.
pub struct Observed<St> {
    /// The bases the engine needs: the neighbourhood of the observations (every base on a first
    /// run).
    pub snap: Snapshot,
    /// What differs from the bases (taken by the engine).
    pub obs: Observations,
    /// How many cards and dialogs were read (equal to their bases or not).
    pub read: (u64, u64),
    /// The user map of this cycle.
    pub usermap: UserMap,
    /// The names of the users and employees read (stored at the commit, for `status`).
    pub people: People,
    /// `Full` when everything was read: asked for, or a first run, or lead stages never read.
    pub kind: CycleKind,
    /// The watermarks the commit stores.
    pub watermarks: Watermarks,
    /// Kommo events read for the first time (id, time), for dedupe.
    pub fresh_events: Vec<(String, i64)>,
    /// Records that did not fit their page.
    pub bad: Vec<BadRecord>,
    /// Quarantine entries whose records read fine this cycle.
    pub released: Vec<String>,
    /// The pipelines table in use.
    pub pipelines: Pipelines,
    /// The pipelines table as stored before the cycle (`None`: never read).
    pub stored_pipelines: Option<Pipelines>,
    /// A full listing came back empty where the snapshot holds many records (rule 13).
    pub listing_brake: Option<Brake>,
    /// A first run's cards, staged as read (`None` on other cycles): the plan is made group by
    /// group from them ([`crate::core::first_run`]), and the commit stores each as read unless
    /// the plan settled it otherwise.
    pub staged: Option<St>,
    /// A shadow cycle's kept count of linked pairs, when it plans from the neighbourhood and
    /// updates the count (`None`: a normal cycle, or a shadow one whose snapshot holds every base
    /// and that counts afresh).
    pub shadow_tally: Option<ShadowTally>,
    /// With a kept count: the dialogs an observed card no longer links to, outside the
    /// neighbourhood, with the cards linked to them (their counts changed; see
    /// [`unlinked_around`]). Empty otherwise.
    pub shadow_unlinked: Snapshot,
    /// A hint cycle's held records that it did not read: not decided, still held after the
    /// commit (see [`observe_hint`]). Empty on other cycles.
    pub carried_held: BTreeSet<RecordId>,
    /// A hint cycle's cards read by id, for rule 10's check (see [`super::apply::FRESH_READ`]).
    /// Empty on other cycles.
    pub read_just_now: ReadJustNow,
}

/// Reads everything a cycle needs (see the module docs).
pub async fn observe<K: KommoApi, C: ChatAppApi, S: StateStore>(
    sy: &Syncer<K, C, S>,
    now: i64,
    asked: CycleKind,
    shadow: bool,
) -> Result<Observed<S::Staged>, CycleError> {
    let mut frame = sy.store.frame()?;
    frame.match_phone = sy.config.links.match_phone;
    if shadow {
        // shadow cycles keep their own first-run flag; the db's stays false (see `super::shadow`)
        frame.bootstrapped = sy.store.shadow_bootstrapped()?;
    }
    // a first run (not a shadow one: it plans from every base) stages the cards it reads
    let staged = (!frame.bootstrapped && !shadow).then(S::Staged::default);
    let stored_pipelines = sy.store.pipelines()?;
    // A db whose lead stages were never read (new, or written before stages existed) gets a full
    // cycle: every lead is read with its stage before any lead decision.
    let kind = if asked.is_full()
        || !frame.bootstrapped
        || (sy.config.syncs_leads() && stored_pipelines.is_none())
    {
        CycleKind::Full
    } else {
        CycleKind::Incremental
    };
    let mut r = Reader::new(sy, now, kind, frame, staged, &stored_pipelines)?;
    let (usermap, people) = r.read_people().await?;
    sy.remember_people(&usermap, &people);
    let (events, fresh_events) = r.read_events().await?;
    let chats = r.read_cards_and_chats(&events).await?;
    crate::logging::trace_memory("listed");
    r.complete_cards(&events).await?;
    r.read_dialogs(chats).await?;
    r.collect_bad();
    let released = r.released();
    crate::logging::trace_memory("dialogs observed");
    let read = (r.cards_read() as u64, r.read_dialogs.len() as u64);
    // a shadow cycle with a count it can update plans from the neighbourhood, like a normal one
    let shadow_tally = if shadow && r.frame.bootstrapped {
        let under = super::shadow::counted_under(&sy.policy, &usermap);
        sy.store.shadow_tally()?.filter(|t| t.under == under)
    } else {
        None
    };
    let (snap, staged) = r.plan_input(shadow && shadow_tally.is_none())?;
    let shadow_unlinked = match shadow_tally {
        Some(_) => unlinked_around(&r.bases, sy.config.links.match_phone, &r.obs, &snap)?,
        None => Snapshot::default(),
    };
    Ok(Observed {
        snap,
        read,
        obs: r.obs,
        usermap,
        people,
        kind,
        watermarks: r.new_wm,
        fresh_events,
        bad: r.bad,
        released,
        pipelines: r.pipelines,
        stored_pipelines,
        listing_brake: r.listing_brake,
        staged,
        shadow_tally,
        shadow_unlinked,
        carried_held: BTreeSet::new(),
        read_just_now: ReadJustNow::new(),
    })
}

/// The working state of one read.
struct Reader<'a, K, C, S: StateStore + 'a> {
    sy: &'a Syncer<K, C, S>,
    now: i64,
    kind: CycleKind,
    wm: Watermarks,
    new_wm: Watermarks,
    /// The bases, by point lookup.
    bases: S::Bases<'a>,
    /// Parked pairs, held records, the bootstrap flag.
    frame: Frame,
    /// What differs from the bases.
    obs: Observations,
    /// Kommo event ids already handled (read once, with the events).
    seen: BTreeSet<String>,
    /// The quarantine as the cycle found it (read once).
    quarantine: Vec<Quarantined>,
    /// A first run's cards, staged instead of observed (`None` on other cycles).
    staged: Option<S::Staged>,
    /// Every card read this cycle (observed or equal to its base), except those a first run
    /// staged (see [`Reader::was_read`]).
    read_cards: BTreeSet<CardId>,
    /// Every dialog read this cycle.
    read_dialogs: BTreeSet<DialogKey>,
    /// A base lookup that failed inside a listing's page callback (the cycle fails with it).
    lookup_error: Option<StoreError>,
    /// Card bases of each kind and dialog bases in the db (full cycles: the listing brake),
    /// counted once.
    counts: Option<(BTreeMap<CardKind, usize>, usize)>,
    pipelines: Pipelines,
    event_times: EventTimes,
    /// Leads whose status the pipelines table does not know: observed after reading it again.
    unknown_status: Vec<CardRead>,
    listing_brake: Option<Brake>,
    bad: Vec<BadRecord>,
    /// Cards read by id on a hint cycle, with when (rule 10 may take them: see
    /// [`super::apply::FRESH_READ`]).
    read_just_now: ReadJustNow,
}

impl<'a, K: KommoApi, C: ChatAppApi, S: StateStore + 'a> Reader<'a, K, C, S> {
    /// A read of `kind` from the stored watermarks, bases and quarantine (`staged`: a first run).
    fn new(
        sy: &'a Syncer<K, C, S>,
        now: i64,
        kind: CycleKind,
        frame: Frame,
        staged: Option<S::Staged>,
        stored_pipelines: &Option<Pipelines>,
    ) -> Result<Self, StoreError> {
        let wm = sy.store.watermarks()?;
        Ok(Reader {
            sy,
            now,
            kind,
            new_wm: wm.clone(),
            wm,
            bases: sy.store.bases()?,
            frame,
            obs: Observations {
                now,
                ..Default::default()
            },
            staged,
            seen: BTreeSet::new(),
            quarantine: sy.store.quarantined()?,
            read_cards: BTreeSet::new(),
            read_dialogs: BTreeSet::new(),
            lookup_error: None,
            counts: None,
            pipelines: stored_pipelines.clone().unwrap_or_default(),
            event_times: EventTimes::new(),
            unknown_status: vec![],
            listing_brake: None,
            bad: vec![],
            read_just_now: ReadJustNow::new(),
        })
    }

    /// Takes the records the clients skipped this cycle, each logged (they are quarantined).
    fn collect_bad(&mut self) {
        self.bad.extend(self.sy.kommo.take_bad());
        self.bad.extend(self.sy.chatapp.take_bad());
        for b in &self.bad {
            tracing::error!(api = %b.api, endpoint = %b.endpoint, subject = b.subject.as_deref().unwrap_or("?"), path = %b.path, reason = %b.reason, "quarantined: a record that does not fit was skipped; the rest of the cycle goes on, and it is read again next cycle");
        }
    }

    /// Users and employees (read every cycle: the user map can change), and each server's time.
    async fn read_people(&mut self) -> Result<(UserMap, People), CycleError> {
        let users = self.sy.kommo.users().await?;
        self.new_wm.kommo_read_at = self.sy.kommo.server_time().unwrap_or(self.now);
        let employees = self.sy.chatapp.employees().await?;
        self.new_wm.chats_read_at = self.sy.chatapp.server_time().unwrap_or(self.now);
        let map = UserMap::build(
            &self.sy.config.user_pairs(),
            self.sy.config.users.match_by_email,
            &users,
            &employees,
        );
        Ok((map, People::from_read(&users, &employees)))
    }

    /// The events of the window (responsible changes give cards their change times), the fresh
    /// ones for dedupe, and (full cycles) the pipelines table.
    async fn read_events(&mut self) -> Result<(Vec<CardEvent>, Vec<(String, i64)>), CycleError> {
        let cfg = &self.sy.config;
        let overlap = cfg.kommo.events_overlap.as_secs() as i64;
        let from = if self.frame.bootstrapped {
            self.wm.kommo_since(self.wm.kommo_events, overlap)
        } else {
            self.new_wm.kommo_read_at - overlap
        };
        let events = self
            .sy
            .kommo
            .events(&cfg.kinds(), cfg.syncs_leads(), from)
            .await?;
        if cfg.syncs_leads() && self.kind.is_full() {
            self.pipelines = self.sy.kommo.pipelines().await?;
        }
        self.new_wm.kommo_events = events
            .iter()
            .map(|e| e.at)
            .max()
            .unwrap_or(self.wm.kommo_events)
            .max(self.wm.kommo_events);
        for e in &events {
            if let (Some(card), Some(to)) = (e.card, e.responsible) {
                let t = self.event_times.entry((card, to)).or_insert(e.at);
                *t = (*t).max(e.at);
            }
        }
        self.seen = self.sy.store.events_seen()?;
        let fresh = events
            .iter()
            .filter(|e| !self.seen.contains(&e.id))
            .map(|e| (e.id.clone(), e.at))
            .collect();
        Ok((events, fresh))
    }

    /// A card read this cycle: observed at its stage (later, if its status is unknown).
    fn put(&mut self, c: CardRead) {
        let latest = self.new_wm.kommo_updated.entry(c.kind).or_insert(0);
        *latest = (*latest).max(c.updated_at);
        let Some(stage) = c.lead_stage(&self.pipelines) else {
            self.unknown_status.push(c);
            return;
        };
        self.observe_card(c, stage);
    }

    /// Observes a card unless it equals its base; a first run stages every card instead (it
    /// decides from every card). A failed lookup is kept for [`Reader::lookup_result`].
    fn observe_card(&mut self, c: CardRead, stage: LeadStage) {
        let id = c.card_id();
        let base = match self.bases.card(&id) {
            Ok(b) => b,
            Err(e) => {
                self.lookup_error.get_or_insert(e);
                return;
            }
        };
        let o = card_obs(c, stage, base.as_ref(), &self.event_times);
        if let Some(staged) = &mut self.staged {
            staged.push(id, &staged_state(base.as_ref(), o, self.now));
            return;
        }
        self.read_cards.insert(id);
        let same = base
            .as_ref()
            .is_some_and(|b| card_unchanged(b, &o, self.now));
        if !(same && self.frame.bootstrapped) {
            self.obs.cards.insert(id, o);
        }
    }

    /// Whether a card was read this cycle (staged or not).
    fn was_read(&self, id: &CardId) -> bool {
        self.read_cards.contains(id) || self.staged.as_ref().is_some_and(|s| s.contains(id))
    }

    /// How many cards were read this cycle.
    fn cards_read(&self) -> usize {
        self.read_cards.len() + self.staged.as_ref().map_or(0, Staging::len)
    }

    /// How many bases the db holds (a scan of the card keys: made once a cycle).
    fn base_counts(&mut self) -> Result<(BTreeMap<CardKind, usize>, usize), StoreError> {
        if self.counts.is_none() {
            self.counts = Some(self.sy.store.base_counts()?);
        }
        Ok(self.counts.clone().unwrap_or_default())
    }

    /// The error of a base lookup made while a listing ran, if any.
    fn lookup_result(&mut self) -> Result<(), CycleError> {
        self.lookup_error.take().map_or(Ok(()), |e| Err(e.into()))
    }

    /// The cards (all, or what changed) and, at the same time, the chats (all, or newest first
    /// down to the watermark): each API under its own limit.
    async fn read_cards_and_chats(
        &mut self,
        events: &[CardEvent],
    ) -> Result<Vec<ChatRead>, CycleError> {
        let overlap = self.sy.config.chatapp.chats_overlap.as_secs() as i64;
        let since = (!self.kind.is_full()).then(|| self.wm.chats_since(overlap));
        let chatapp = &self.sy.chatapp;
        let (cards, chats) = if self.kind.is_full() {
            tokio::join!(self.read_all_cards(), chatapp.chats(since))
        } else {
            tokio::join!(self.read_changed_cards(events), chatapp.chats(since))
        };
        cards?;
        Ok(chats?)
    }

    /// Full cycle: every card of every synced kind, page by page.
    async fn read_all_cards(&mut self) -> Result<(), CycleError> {
        let sy = self.sy;
        let in_db = self.base_counts()?.0;
        for kind in sy.config.kinds() {
            let listed = sy.kommo.each_card(kind, None, &mut |c| self.put(c)).await?;
            self.lookup_result()?;
            if self.listing_brake.is_none() {
                let in_snap = in_db.get(&kind).copied().unwrap_or(0);
                self.listing_brake = empty_listing_brake(kind.plural(), in_snap, listed);
            }
        }
        Ok(())
    }

    /// Incremental cycle: `updated_at` pages (when list filters work), then the cards named by
    /// fresh events, held by a failed write or quarantined, read by id.
    async fn read_changed_cards(&mut self, events: &[CardEvent]) -> Result<(), CycleError> {
        let sy = self.sy;
        let kinds = sy.config.kinds();
        if sy.kommo.filters_enabled().await? {
            let overlap = sy.config.kommo.events_overlap.as_secs() as i64;
            for &kind in &kinds {
                let latest = self.wm.kommo_updated.get(&kind).copied().unwrap_or(0);
                let since = self.wm.kommo_since(latest, overlap);
                sy.kommo
                    .each_card(kind, Some(since), &mut |c| self.put(c))
                    .await?;
                self.lookup_result()?;
            }
        }
        let mut wanted: BTreeMap<CardKind, BTreeSet<u64>> = BTreeMap::new();
        let named_by_events = events
            .iter()
            .filter(|e| !self.seen.contains(&e.id))
            .filter_map(|e| e.card);
        let rereads = self.rereads();
        let cards = named_by_events.chain(rereads.into_iter().filter_map(|r| match r {
            RecordId::Card(c) => Some(c),
            RecordId::Dialog(_) => None,
        }));
        for c in cards.filter(|c| kinds.contains(&c.kind) && !self.read_cards.contains(c)) {
            wanted.entry(c.kind).or_default().insert(c.id);
        }
        for (kind, ids) in wanted {
            self.read_by_id(kind, ids.into_iter().collect()).await?;
        }
        Ok(())
    }

    /// Cards by id; one that does not come back is gone (deleted), one that came back unreadable
    /// is not: it stays quarantined and is read again next cycle.
    async fn read_by_id(&mut self, kind: CardKind, ids: Vec<u64>) -> Result<(), CycleError> {
        let got = self.fetch_by_id(kind, &ids).await?;
        self.accept_by_id(kind, ids, got)
    }

    /// The request of [`Reader::read_by_id`]: what came back and what was skipped, not observed
    /// yet (a hint cycle reads the events first when one of them changed hands).
    async fn fetch_by_id(&mut self, kind: CardKind, ids: &[u64]) -> Result<Fetched, CycleError> {
        let got = self.sy.kommo.cards_by_id(kind, ids).await?;
        if self.kind == CycleKind::Hint {
            let at = std::time::Instant::now();
            for c in &got {
                self.read_just_now.insert(c.card_id(), (at, c.clone()));
            }
        }
        Ok((got, self.sy.kommo.take_bad()))
    }

    /// The rest of [`Reader::read_by_id`]: observes what [`Reader::fetch_by_id`] got.
    fn accept_by_id(
        &mut self,
        kind: CardKind,
        ids: Vec<u64>,
        (got, bad_now): Fetched,
    ) -> Result<(), CycleError> {
        let unreadable = subjects(&bad_now);
        self.bad.extend(bad_now);
        for c in got {
            self.put(c);
        }
        self.lookup_result()?;
        for id in ids {
            let cid = CardId::new(kind, id);
            if self.read_cards.contains(&cid) || unreadable.contains(&RecordId::Card(cid)) {
                continue;
            }
            if let Some(base) = self.bases.card(&cid)? {
                let mut o = obs_from_base(&base, base.lead);
                o.deleted = true;
                self.read_cards.insert(cid);
                if !(self.frame.bootstrapped && card_unchanged(&base, &o, self.now)) {
                    self.obs.cards.insert(cid, o);
                }
            }
        }
        Ok(())
    }

    /// After the listing: the leads whose status was unknown are classified, the staged cards
    /// (a first run) sealed, lead stages updated from the events, incoming leads linked.
    async fn complete_cards(&mut self, events: &[CardEvent]) -> Result<(), CycleError> {
        self.classify_unknown_statuses().await?;
        if let Some(staged) = &mut self.staged {
            staged.seal()?; // by id from here on: lookups are binary searches
        }
        if self.sy.config.syncs_leads() {
            self.stage_updates_from_events(events).await?;
        }
        if self.sy.config.syncs_incoming_leads() {
            self.link_incoming_leads().await?;
        }
        Ok(())
    }

    /// Leads whose status was unknown: the pipelines are read again, once.
    async fn classify_unknown_statuses(&mut self) -> Result<(), CycleError> {
        if self.unknown_status.is_empty() {
            return Ok(());
        }
        self.pipelines = self.sy.kommo.pipelines().await?;
        for c in std::mem::take(&mut self.unknown_status) {
            let stage = c.lead_stage(&self.pipelines).unwrap_or_else(|| {
                tracing::warn!(card = %c.card_id(), status = c.status, pipeline = c.pipeline, "a lead's status is in no pipeline Kommo lists; taken as an open stage");
                c.lead_stage_or_open(&self.pipelines)
            });
            self.observe_card(c, stage);
        }
        self.lookup_result()
    }

    /// Keeps lead stages current from `lead_status_changed` events (no request per lead): a lead
    /// not read this cycle whose stage an event moved is observed at its base value in the new
    /// stage. A status the table does not know makes the pipelines be read again (once).
    async fn stage_updates_from_events(&mut self, events: &[CardEvent]) -> Result<(), CycleError> {
        let mut latest: BTreeMap<CardId, (u64, u64)> = BTreeMap::new();
        for e in events {
            if let (Some(card), Some(st)) = (e.card, e.status) {
                latest.insert(card, st); // events are in time order: the last one wins
            }
        }
        latest.retain(|c, _| !self.was_read(c));
        let mut bases = BTreeMap::new();
        for c in latest.keys() {
            if let Some(b) = self.bases.card(c)? {
                bases.insert(*c, b);
            }
        }
        latest.retain(|c, _| bases.contains_key(c));
        if latest
            .values()
            .any(|(_, s)| classify_status(*s, &self.pipelines).is_none())
        {
            self.pipelines = self.sy.kommo.pipelines().await?;
        }
        for (id, (pipeline, status)) in latest {
            let base = &bases[&id];
            let stage = stage_or_open(pipeline, status, &self.pipelines);
            if stage != base.lead {
                self.obs.cards.insert(id, obs_from_base(base, stage));
            }
        }
        Ok(())
    }

    /// Incoming leads that list no contact are given the contact their unsorted chat record
    /// holds (see `kommo::unsorted_contact`): through it, a returning client's incoming lead links
    /// to the client's dialog like any lead. A lead that lists a contact needs nothing more (the
    /// record holds that same one contact), so the unsorted list is read only for leads without.
    async fn link_incoming_leads(&mut self) -> Result<(), CycleError> {
        let mut wanted = BTreeSet::new();
        for (id, o) in &self.obs.cards {
            if awaits_unsorted_link(id, o.lead, &o.contacts) {
                wanted.insert(id.id);
            }
        }
        for row in self.staged.iter().flat_map(Staging::each) {
            let (id, st) = row?;
            if awaits_unsorted_link(&id, st.lead, &st.contacts) {
                wanted.insert(id.id);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        for (lead, contact) in self.sy.kommo.unsorted_contacts(&wanted).await? {
            let id = CardId::new(CardKind::Lead, lead);
            if let Some(o) = self.obs.cards.get_mut(&id) {
                o.contacts = vec![contact];
            } else if let Some(staged) = &mut self.staged
                && let Some(mut st) = staged.card(&id)?
            {
                st.contacts = vec![contact];
                staged.push(id, &st);
            }
        }
        if let Some(staged) = &mut self.staged {
            staged.seal()?;
        }
        Ok(())
    }

    /// The bases the engine plans from (a first run: the frame and the dialog bases), and (a first
    /// run) the staged cards. `every_base`: a shadow cycle that counts its linked pairs afresh.
    fn plan_input(
        &mut self,
        every_base: bool,
    ) -> Result<(Snapshot, Option<S::Staged>), CycleError> {
        let frame = std::mem::take(&mut self.frame);
        if let Some(mut staged) = self.staged.take() {
            // planned group by group from the staging (`crate::core::first_run`)
            staged.seal()?;
            let snap = Snapshot {
                dialogs: self.sy.store.dialog_bases()?,
                parked: frame.parked,
                held: frame.held,
                ..Snapshot::default()
            };
            return Ok((snap, Some(staged)));
        }
        if frame.bootstrapped && !every_base {
            let snap = neighbourhood(&self.bases, frame, &self.obs)?;
            return Ok((snap, None));
        }
        // a shadow cycle that counts the pairs of the whole account afresh plans from every base
        let mut all = self.sy.store.load_snapshot()?;
        all.bootstrapped = frame.bootstrapped; // shadow mode's own flag
        Ok((all, None))
    }

    /// Observes a chat unless it equals its base (after the first run).
    fn observe_chat(&mut self, c: ChatRead) -> Result<(), StoreError> {
        let ChatRead { key, view: o } = c;
        let same = self
            .bases
            .dialog(&key)?
            .is_some_and(|b| dialog_unchanged(&b, &o, self.now));
        self.read_dialogs.insert(key.clone());
        if !(same && self.frame.bootstrapped) {
            self.obs.dialogs.insert(key, o);
        }
        Ok(())
    }

    /// Observes a chat read on its own (`GET .../chats/{chatId}`). The sources of SPEC 6.1 show
    /// that answer with `id`, `name` and `responsible` only (no source shows the rest), and a
    /// field it lacks reads as open, 0 or none: for a dialog with a base, such a read must not
    /// overwrite the base (a closed dialog taken as reopened, a phone link lost). So the
    /// responsible is taken from the answer; `lastTime` and the conversation's start only when
    /// they moved forward (absent, they read 0); the phone when present; closed stays the base's
    /// (an absent status cannot be told from an open one: a reopen shows by a new conversation,
    /// or at the next listing). A dialog without a base is observed as read.
    fn observe_chat_alone(&mut self, mut c: ChatRead) -> Result<(), StoreError> {
        if let Some(b) = self.bases.dialog(&c.key)? {
            let read = c.view;
            c.view = DialogObs {
                responsible: read.responsible,
                last_time: read.last_time.max(b.last_time),
                session: read.session.max(b.session),
                closed: b.closed,
                phone: read.phone.or(b.phone),
            };
        }
        self.observe_chat(c)
    }

    /// The chats read beside the cards, plus (incremental cycles) the held and quarantined
    /// dialogs one by one.
    async fn read_dialogs(&mut self, chats: Vec<ChatRead>) -> Result<(), CycleError> {
        if self.kind.is_full() && self.listing_brake.is_none() {
            let in_db = self.base_counts()?.1;
            self.listing_brake = empty_listing_brake("chats", in_db, chats.len());
        }
        for c in chats {
            self.new_wm.chats = self.new_wm.chats.max(c.view.last_time);
            self.observe_chat(c)?;
        }
        if self.kind.is_full() {
            return Ok(());
        }
        for r in self.rereads() {
            if let RecordId::Dialog(d) = r
                && !self.read_dialogs.contains(&d)
                && let Some(c) = self.sy.chatapp.chat(&d).await?
            {
                self.observe_chat(c)?;
            }
        }
        Ok(())
    }

    /// The records read again on their own on an incremental cycle: held by a failed write, or
    /// quarantined.
    fn rereads(&self) -> BTreeSet<RecordId> {
        let mut r = self.frame.held.clone();
        r.extend(quarantined_records(&self.quarantine));
        r
    }

    /// Quarantine entries whose records read fine this cycle.
    fn released(&self) -> Vec<String> {
        self.quarantine
            .iter()
            .filter(|q| {
                subject_record(&q.record).is_some_and(|r| match &r {
                    RecordId::Card(c) => self.was_read(c),
                    RecordId::Dialog(d) => self.read_dialogs.contains(d),
                })
            })
            .map(|q| Quarantined::key_of(&q.record))
            .collect()
    }
}

/// An incoming lead with no dialog link of its own (its unsorted chat may give it one).
fn awaits_unsorted_link(id: &CardId, stage: LeadStage, contacts: &[u64]) -> bool {
    id.kind == CardKind::Lead && stage.kind == StageKind::Incoming && contacts.is_empty()
}

/// The card or dialog a bad record names, when it names one.
pub fn subject_record(b: &BadRecord) -> Option<RecordId> {
    let s = b.subject.as_deref()?;
    if b.api == "kommo" {
        return CardId::parse(s).map(RecordId::Card);
    }
    match crate::core::links::parse_messenger_value(s)? {
        DialogRef::Full(d) => Some(RecordId::Dialog(d)),
        _ => None,
    }
}

/// The records bad records name.
fn subjects(bad: &[BadRecord]) -> BTreeSet<RecordId> {
    bad.iter().filter_map(subject_record).collect()
}

/// The records quarantined entries name (read again on their own).
fn quarantined_records(q: &[Quarantined]) -> BTreeSet<RecordId> {
    q.iter().filter_map(|e| subject_record(&e.record)).collect()
}

/// The observation of a card read this cycle: its fields at `stage`, the change time of its value
/// from the events, and (an incoming lead still waiting for acceptance) the unsorted chat link
/// its base holds.
fn card_obs(
    c: CardRead,
    stage: LeadStage,
    base: Option<&CardState>,
    event_times: &EventTimes,
) -> CardObs {
    let (id, kind) = (c.card_id(), c.kind);
    let mut o = c.into_obs(stage);
    o.event_time = event_times.get(&(id, o.responsible)).copied();
    if kind == CardKind::Lead
        && stage.kind == StageKind::Incoming
        && let Some(b) = base.filter(|b| b.lead.kind == StageKind::Incoming)
    {
        o.dialog_refs.clone_from(&b.dialog_refs);
    }
    o
}

/// A card not read this cycle, observed at its base value with a (new) lead stage.
fn obs_from_base(base: &CardState, stage: LeadStage) -> CardObs {
    CardObs {
        responsible: base.responsible,
        flag: base.flag,
        deleted: base.deleted,
        contacts: base.contacts.clone(),
        dialog_refs: if stage.kind == StageKind::Incoming || base.lead.kind != StageKind::Incoming {
            base.dialog_refs.clone()
        } else {
            vec![]
        },
        phones: base.phones.clone(),
        lead: stage,
        event_time: None,
    }
}
