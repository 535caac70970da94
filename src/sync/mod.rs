//! One sync cycle: settle pending intents, read (all on a full cycle; what changed since the
//! watermarks on an incremental one), plan with the pure engine, check each target right before
//! writing it, record intents, write (Kommo in batches, ChatApp one call per dialog), confirm each
//! write with its new base and audit entry in one transaction, then commit the rest of the cycle.

use crate::chatapp::ChatAppClient;
use crate::config::{Config, KommoCredentials, Loaded};
use crate::core::engine::{self, Brake, Plan, Write, empty_listing_brake};
use crate::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, LeadStage, RecordId, StageKind,
};
use crate::core::usermap::UserMap;
use crate::http::ApiError;
use crate::kommo::{FieldMap, KommoCard, KommoClient, KommoEvent, Pipelines};
use crate::store::{
    AuditEntry, Base, CycleCommit, CycleRecord, Intent, META_PIPELINES, META_WATERMARKS, Store,
    StoreError, Watermarks,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::Instrument;

/// A cycle that failed; nothing but confirmed writes was recorded.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The state db failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon is stopping: the cycle ended between two writes.
    #[error("stopped between writes; the rest is decided again next cycle")]
    Stopped,
}

impl CycleError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CycleError::Api(e) => e.label(),
            CycleError::Store(_) => "store",
            CycleError::Stopped => "stopped",
        }
    }
}

/// How to run a cycle.
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleOptions {
    /// Read everything (otherwise only what changed since the watermarks).
    pub full: bool,
    /// Plan only: write nothing to either API or to the base.
    pub dry_run: bool,
    /// Apply even if the safety brake trips (rule 13).
    pub force: bool,
}

/// What happened to one planned write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Written and confirmed.
    Done,
    /// Not written: the target no longer held the value the decision was based on (rule 10).
    Dropped(String),
    /// The API rejected it.
    Rejected(String),
    /// Not attempted (dry run, brake).
    Skipped,
}

/// What a cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// The cycle's record (as stored).
    pub record: CycleRecord,
    /// The plan.
    pub plan: Plan,
    /// One result per `plan.writes` entry.
    pub results: Vec<WriteResult>,
    /// Set when the safety brake stopped the writes.
    pub brake: Option<Brake>,
    /// Intents settled at the start (recovered after a crash).
    pub recovered: usize,
    /// Records that did not fit their page (skipped and quarantined).
    pub bad: Vec<crate::http::BadRecord>,
}

/// The sync: config, state db and both clients.
pub struct Syncer {
    /// The config.
    pub config: Config,
    /// The state db.
    pub store: Arc<Store>,
    /// Kommo.
    pub kommo: KommoClient,
    /// ChatApp.
    pub chatapp: ChatAppClient,
    /// Cancelled when the daemon stops: the cycle ends before its next write.
    pub stop: tokio_util::sync::CancellationToken,
    fields: FieldMap,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Syncer {
    /// Builds the syncer over an open store (which also keeps the clients' tokens).
    pub fn new(loaded: &Loaded, store: Arc<Store>) -> Result<Syncer, CycleError> {
        let (kommo, chatapp) = clients(loaded, store.clone())?;
        let cfg = loaded.config.clone();
        let fields = FieldMap::new(&cfg.sync.flag_fields, &cfg.links);
        Ok(Syncer {
            config: cfg,
            store,
            kommo,
            chatapp,
            stop: tokio_util::sync::CancellationToken::new(),
            fields,
        })
    }

    fn requests(&self) -> (u64, u64) {
        (
            self.kommo.api.counters.requests.load(Ordering::Relaxed),
            self.chatapp.api.counters.requests.load(Ordering::Relaxed),
        )
    }

    /// Runs one cycle. A failed cycle is recorded (except in a dry run) and returned as `Err`.
    pub async fn run_cycle(&self, opts: CycleOptions) -> Result<CycleReport, CycleError> {
        let t0 = Instant::now();
        let started_at = now_unix();
        self.kommo.auth().retry_unsaved().await;
        let (k0, c0) = self.requests();
        let deadline = Some(t0 + self.config.daemon.cycle_budget);
        self.kommo.api.set_deadline(deadline);
        self.chatapp.api.set_deadline(deadline);
        let id = self.store.next_cycle_id()?;
        let span = tracing::info_span!("cycle", cycle = id);
        let result = self.cycle(id, started_at, opts).instrument(span).await;
        let (k1, c1) = self.requests();
        match result {
            Ok(mut report) => {
                report.record.kommo_requests = k1 - k0;
                report.record.chatapp_requests = c1 - c0;
                report.record.duration_ms = t0.elapsed().as_millis() as u64;
                report.record.finished_at = now_unix();
                if !opts.dry_run {
                    self.store
                        .record_cycle(&report.record, &self.retention(now_unix()))?;
                }
                Ok(report)
            }
            Err(e) => {
                if matches!(e, CycleError::Stopped) {
                    tracing::info!(
                        "cycle stopped between writes; the rest is decided again next cycle"
                    );
                } else {
                    tracing::error!(error = %e, class = e.label(), "cycle failed; the next cycle starts from the last committed state");
                }
                if !opts.dry_run {
                    let rec = CycleRecord {
                        id,
                        kind: if opts.full { "full" } else { "incremental" }.into(),
                        started_at,
                        finished_at: now_unix(),
                        outcome: if matches!(e, CycleError::Stopped) {
                            "stopped"
                        } else {
                            "failed"
                        }
                        .into(),
                        error: Some(e.to_string()),
                        kommo_requests: k1 - k0,
                        chatapp_requests: c1 - c0,
                        duration_ms: t0.elapsed().as_millis() as u64,
                        ..CycleRecord::default()
                    };
                    if let Err(se) = self.store.record_cycle(&rec, &self.retention(now_unix())) {
                        tracing::error!(error = %se, class = "store", "cannot record the failed cycle in the state db");
                    }
                }
                Err(e)
            }
        }
    }

    /// Rule 11: pending intents are settled by reading their targets.
    async fn settle_intents(&self, now: i64) -> Result<usize, CycleError> {
        let intents = self.store.intents()?;
        for i in &intents {
            let current: Option<u64> = match &i.target {
                RecordId::Card(c) => self
                    .kommo
                    .cards_by_id(c.kind, &[c.id])
                    .await?
                    .first()
                    .map(|k| k.responsible_user_id),
                RecordId::Dialog(d) => self
                    .chatapp
                    .chat(d)
                    .await?
                    .and_then(|c| c.responsible.and_then(|r| r.id)),
            };
            if current == Some(i.to) {
                let mut audit = i.audit.clone();
                audit.at = now;
                audit.how = "recovered".into();
                tracing::warn!(target = %i.target, to = i.to, "a write of an interrupted cycle had landed: recorded as the new base");
                self.store.confirm_write(i, &audit)?;
            } else {
                tracing::warn!(target = %i.target, to = i.to, "a write of an interrupted cycle had not landed: it is decided again");
                self.store.drop_intent(&i.target)?;
            }
        }
        Ok(intents.len())
    }

    async fn cycle(
        &self,
        id: u64,
        now: i64,
        opts: CycleOptions,
    ) -> Result<CycleReport, CycleError> {
        let recovered = if opts.dry_run {
            0
        } else {
            self.settle_intents(now).await?
        };
        trace_memory("start");
        let mut snap = self.store.load_snapshot()?;
        trace_memory("snapshot loaded");
        let syncs_leads = self.config.syncs_leads();
        let stored_pipelines: Option<Pipelines> = self.store.meta(META_PIPELINES)?;
        // A db whose lead stages were never read (new, or written before stages existed) gets a
        // full cycle: every lead is read with its stage before any lead decision.
        let full = opts.full || !snap.bootstrapped || (syncs_leads && stored_pipelines.is_none());
        let wm: Watermarks = self.store.meta(META_WATERMARKS)?.unwrap_or_default();
        let recheck = self.store.recheck()?;
        let quarantine = self.store.quarantined()?;
        // the cycle's records that did not fit their page (skipped, reported, re-read later)
        let mut bad: Vec<crate::http::BadRecord> = vec![];
        let kinds = self.config.kinds();
        let k_overlap = self.config.kommo.events_overlap.as_secs() as i64;
        let c_overlap = self.config.chatapp.chats_overlap.as_secs() as i64;
        let mut listing_brake: Option<Brake> = None;

        // users
        let users = self.kommo.users().await?;
        let kommo_read_at = self.kommo.api.server_time().unwrap_or(now);
        let employees = self.chatapp.employees().await?;
        let chats_read_at = self.chatapp.api.server_time().unwrap_or(now);
        let usermap = UserMap::build(
            &self.config.user_pairs(),
            self.config.users.match_by_email,
            &users,
            &employees,
        );

        // events: change times of cards
        let events_from = if snap.bootstrapped {
            wm.kommo_since(wm.kommo_events, k_overlap)
        } else {
            kommo_read_at - k_overlap
        };
        let events = self.kommo.events(&kinds, syncs_leads, events_from).await?;
        // Lead stages: the pipelines table, read on full cycles (and again below when a lead
        // shows a status it does not know).
        let mut pipelines = stored_pipelines.clone().unwrap_or_default();
        if syncs_leads && full {
            pipelines = self.kommo.pipelines().await?;
        }
        let mut new_wm = wm.clone();
        new_wm.kommo_read_at = kommo_read_at;
        new_wm.chats_read_at = chats_read_at;
        new_wm.kommo_events = events
            .iter()
            .map(|e| e.created_at)
            .max()
            .unwrap_or(wm.kommo_events)
            .max(wm.kommo_events);
        let seen = self.store.events_seen()?;
        let fresh: Vec<&KommoEvent> = events.iter().filter(|e| !seen.contains(&e.id)).collect();
        let mut event_times: BTreeMap<(CardId, u64), i64> = BTreeMap::new();
        for e in &events {
            if let (Some(card), Some(to)) = (e.card(), e.new_responsible()) {
                let t = event_times.entry((card, to)).or_insert(e.created_at);
                *t = (*t).max(e.created_at);
            }
        }

        // cards
        let mut obs = engine::Observations {
            now,
            ..Default::default()
        };
        let fields = &self.fields;
        let stages = &pipelines;
        // Leads whose status the pipelines table does not know: decided after reading it again.
        let mut unknown_status: Vec<(CardKind, KommoCard)> = vec![];
        // Each observed card's full base is swapped for the two values the engine compares: the
        // observation replaces the rest, so a full cycle holds one full copy of the cards, not two.
        let put_card = |obs: &mut engine::Observations,
                        wm: &mut Watermarks,
                        snap: &mut engine::Snapshot,
                        unknown: &mut Vec<(CardKind, KommoCard)>,
                        kind: CardKind,
                        c: KommoCard| {
            let latest = wm.kommo_updated.entry(kind).or_insert(0);
            *latest = (*latest).max(c.updated_at);
            let Some(stage) = c.lead_stage(kind, stages) else {
                unknown.push((kind, c));
                return;
            };
            let id = CardId::new(kind, c.id);
            let o = observe_card(&c, kind, fields, stage, snap.cards.get(&id), &event_times);
            if let Some(base) = snap.cards.remove(&id) {
                snap.card_values.insert(id, engine::BaseValue::from(&base));
            }
            obs.cards.insert(id, o);
        };
        if full {
            for &kind in &kinds {
                let in_snap = snap.cards.keys().filter(|c| c.kind == kind).count();
                let listed = self
                    .kommo
                    .each_card(kind, None, |c| {
                        put_card(
                            &mut obs,
                            &mut new_wm,
                            &mut snap,
                            &mut unknown_status,
                            kind,
                            c,
                        )
                    })
                    .await?;
                if listing_brake.is_none() {
                    listing_brake = empty_listing_brake(kind.plural(), in_snap, listed);
                }
            }
        } else {
            if self.kommo.filters_enabled().await? {
                for &kind in &kinds {
                    let since = wm
                        .kommo_since(wm.kommo_updated.get(&kind).copied().unwrap_or(0), k_overlap);
                    self.kommo
                        .each_card(kind, Some(since), |c| {
                            put_card(
                                &mut obs,
                                &mut new_wm,
                                &mut snap,
                                &mut unknown_status,
                                kind,
                                c,
                            )
                        })
                        .await?;
                }
            }
            // cards named by fresh events or held by a failed write, not read yet
            let mut wanted: BTreeMap<CardKind, BTreeSet<u64>> = BTreeMap::new();
            for e in &fresh {
                if let Some(c) = e
                    .card()
                    .filter(|c| kinds.contains(&c.kind) && !obs.cards.contains_key(c))
                {
                    wanted.entry(c.kind).or_default().insert(c.id);
                }
            }
            for r in recheck.iter().chain(&quarantined_records(&quarantine)) {
                if let RecordId::Card(c) = r
                    && kinds.contains(&c.kind)
                    && !obs.cards.contains_key(c)
                {
                    wanted.entry(c.kind).or_default().insert(c.id);
                }
            }
            for (kind, ids) in wanted {
                let ids: Vec<u64> = ids.into_iter().collect();
                let got = self.kommo.cards_by_id(kind, &ids).await?;
                let bad_now = self.kommo.api.take_bad();
                let unreadable: BTreeSet<RecordId> = subjects(&bad_now);
                bad.extend(bad_now);
                for c in got {
                    put_card(
                        &mut obs,
                        &mut new_wm,
                        &mut snap,
                        &mut unknown_status,
                        kind,
                        c,
                    );
                }
                // a card that does not come back is gone: deleted (one that came back unreadable
                // is not: it stays quarantined and is read again next cycle)
                for id in ids {
                    let cid = CardId::new(kind, id);
                    if let (false, false, Some(base)) = (
                        obs.cards.contains_key(&cid),
                        unreadable.contains(&RecordId::Card(cid)),
                        snap.cards.get(&cid),
                    ) {
                        obs.cards.insert(
                            cid,
                            CardObs {
                                responsible: base.responsible,
                                flag: base.flag,
                                deleted: true,
                                contacts: base.contacts.clone(),
                                dialog_refs: base.dialog_refs.clone(),
                                phones: base.phones.clone(),
                                lead: base.lead,
                                event_time: None,
                            },
                        );
                    }
                }
            }
        }
        if !unknown_status.is_empty() {
            pipelines = self.kommo.pipelines().await?;
            for (kind, c) in std::mem::take(&mut unknown_status) {
                let id = CardId::new(kind, c.id);
                let stage = c.lead_stage(kind, &pipelines).unwrap_or_else(|| {
                    tracing::warn!(card = %id, status = ?c.status_id, pipeline = ?c.pipeline_id, "a lead's status is in no pipeline Kommo lists; taken as an open stage");
                    LeadStage { pipeline: c.pipeline_id.unwrap_or(0), status: c.status_id.unwrap_or(0), kind: StageKind::Open }
                });
                let o = observe_card(
                    &c,
                    kind,
                    &self.fields,
                    stage,
                    snap.cards.get(&id),
                    &event_times,
                );
                if let Some(base) = snap.cards.remove(&id) {
                    snap.card_values.insert(id, engine::BaseValue::from(&base));
                }
                obs.cards.insert(id, o);
            }
        }
        if syncs_leads {
            self.stage_updates_from_events(&events, &snap, &mut obs, &mut pipelines)
                .await?;
        }
        if self.config.syncs_incoming_leads() {
            self.link_incoming_leads(&snap, &mut obs).await?;
        }

        // dialogs
        let since = (!full).then(|| wm.chats_since(c_overlap));
        let chats = self.chatapp.chats(since).await?;
        if full && listing_brake.is_none() {
            listing_brake = empty_listing_brake("chats", snap.dialogs.len(), chats.len());
        }
        for c in &chats {
            new_wm.chats = new_wm.chats.max(c.last_time);
            obs.dialogs.insert(c.key(), c.to_obs());
        }
        if !full {
            for r in recheck.iter().chain(&quarantined_records(&quarantine)) {
                if let RecordId::Dialog(d) = r
                    && !obs.dialogs.contains_key(d)
                    && let Some(c) = self.chatapp.chat(d).await?
                {
                    obs.dialogs.insert(d.clone(), c.to_obs());
                }
            }
        }
        bad.extend(self.kommo.api.take_bad());
        bad.extend(self.chatapp.api.take_bad());
        for b in &bad {
            tracing::error!(api = %b.api, endpoint = %b.endpoint, subject = b.subject.as_deref().unwrap_or("?"), path = %b.path, reason = %b.reason, "quarantined: a record that does not fit was skipped; the rest of the cycle goes on, and it is read again next cycle");
        }
        let released: Vec<String> = quarantine
            .iter()
            .filter(|q| {
                subject_record(&q.record).is_some_and(|r| match &r {
                    RecordId::Card(c) => obs.cards.contains_key(c),
                    RecordId::Dialog(d) => obs.dialogs.contains_key(d),
                })
            })
            .map(|q| crate::store::Quarantined::key_of(&q.record))
            .collect();

        trace_memory("read");
        let (cards_read, dialogs_read) = (obs.cards.len() as u64, obs.dialogs.len() as u64);
        let plan = engine::plan_owned(&snap, obs, &self.config.policy(), &usermap);
        let mut record = CycleRecord {
            id,
            kind: if full { "full" } else { "incremental" }.into(),
            started_at: now,
            outcome: "ok".into(),
            cards_read,
            dialogs_read,
            writes_planned: plan.writes.len() as u64,
            parked: plan.parked.len() as u64,
            conflicts: plan.conflicts.len() as u64,
            quarantined: bad.len() as u64,
            ..CycleRecord::default()
        };
        for p in &plan.parked {
            tracing::warn!(subject = %p.subject, reason = %p.reason, "parked: not written");
        }
        for d in &plan.disagreements {
            tracing::info!(dialog = %d.dialog, card = %d.card, card_responsible = d.card_responsible, dialog_responsible = ?d.dialog_responsible, "bootstrap adopt: the pair disagrees (nothing written)");
        }
        let brake = plan.brake.clone().or(listing_brake);
        let mut report = CycleReport {
            results: vec![WriteResult::Skipped; plan.writes.len()],
            plan,
            record: CycleRecord::default(),
            brake: None,
            recovered,
            bad: bad.clone(),
        };
        if opts.dry_run {
            record.outcome = "dry_run".into();
            report.brake = brake;
            report.record = record;
            return Ok(report);
        }
        if let Some(b) = brake.filter(|_| !opts.force) {
            tracing::error!(reason = %b, "safety brake: the cycle writes nothing");
            record.outcome = "braked".into();
            record.error = Some(b.to_string());
            report.brake = Some(b);
            report.record = record;
            return Ok(report);
        }

        self.apply(id, now, &mut report, &pipelines).await?;
        let confirmed: Vec<bool> = report
            .results
            .iter()
            .map(|r| *r == WriteResult::Done)
            .collect();
        record.writes_done = confirmed.iter().filter(|c| **c).count() as u64;
        record.writes_failed = report
            .results
            .iter()
            .filter(|r| matches!(r, WriteResult::Dropped(_) | WriteResult::Rejected(_)))
            .count() as u64;
        trace_memory("planned and applied");
        let settlement = engine::settle_owned(&snap, &mut report.plan, &confirmed, now);
        drop(snap); // the bases are in the settlement now: do not hold two copies while committing
        let commit = CycleCommit {
            settlement,
            pipelines: (syncs_leads && stored_pipelines.as_ref() != Some(&pipelines))
                .then_some(pipelines),
            watermarks: new_wm.clone(),
            events_seen: fresh.iter().map(|e| (e.id.clone(), e.created_at)).collect(),
            prune_events_before: new_wm.kommo_events - 2 * k_overlap,
            bad,
            released,
            retention: self.retention(now),
            cycle: record.clone(),
        };
        trace_memory("settled");
        self.store.commit_cycle(&commit)?;
        trace_memory("committed");
        report.record = record;
        Ok(report)
    }

    /// The history the db keeps (`[daemon] audit_retention`, [`crate::store::KEEP_CYCLES`]).
    fn retention(&self, now: i64) -> crate::store::Retention {
        crate::store::Retention {
            audit_before: now - self.config.daemon.audit_retention.as_secs() as i64,
            keep_cycles: crate::store::KEEP_CYCLES,
        }
    }

    /// Keeps lead stages current from `lead_status_changed` events (no request per lead): a lead
    /// not read this cycle whose stage an event moved is observed at its base value in the new
    /// stage. A status the table does not know makes the pipelines be read again (once).
    async fn stage_updates_from_events(
        &self,
        events: &[KommoEvent],
        snap: &engine::Snapshot,
        obs: &mut engine::Observations,
        pipelines: &mut Pipelines,
    ) -> Result<(), CycleError> {
        let mut latest: BTreeMap<CardId, (u64, u64)> = BTreeMap::new();
        for e in events {
            if let (Some(card), Some(st)) = (e.card(), e.new_status()) {
                latest.insert(card, st); // events are in time order: the last one wins
            }
        }
        latest.retain(|c, _| !obs.cards.contains_key(c) && snap.cards.contains_key(c));
        if latest
            .values()
            .any(|(_, s)| crate::kommo::classify_status(*s, pipelines).is_none())
        {
            *pipelines = self.kommo.pipelines().await?;
        }
        for (id, (pipeline, status)) in latest {
            let base = &snap.cards[&id];
            let kind = crate::kommo::classify_status(status, pipelines).unwrap_or(StageKind::Open);
            let stage = LeadStage {
                pipeline,
                status,
                kind,
            };
            if stage == base.lead {
                continue;
            }
            obs.cards.insert(id, obs_from_base(base, stage));
        }
        Ok(())
    }

    /// Incoming leads whose contact cannot be read before acceptance (no linked contact known to
    /// the daemon) are linked through their unsorted chat record (UNCONFIRMED:
    /// `kommo::unsorted_dialog_ref`). Read only for such leads that have no such link yet.
    async fn link_incoming_leads(
        &self,
        snap: &engine::Snapshot,
        obs: &mut engine::Observations,
    ) -> Result<(), CycleError> {
        let known = |c: &u64| {
            let id = CardId::new(CardKind::Contact, *c);
            obs.cards.contains_key(&id) || snap.cards.contains_key(&id)
        };
        let wanted: BTreeSet<u64> = obs
            .cards
            .iter()
            .filter(|(id, o)| {
                id.kind == CardKind::Lead
                    && o.lead.kind == StageKind::Incoming
                    && o.dialog_refs.is_empty()
                    && !o.contacts.iter().any(known)
            })
            .map(|(id, _)| id.id)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for (lead, r) in self.kommo.unsorted_chat_refs(&wanted).await? {
            if let Some(o) = obs.cards.get_mut(&CardId::new(CardKind::Lead, lead)) {
                o.dialog_refs = vec![r];
            }
        }
        Ok(())
    }

    /// Check-before-write, intents, writes, confirmations.
    async fn apply(
        &self,
        cycle: u64,
        now: i64,
        report: &mut CycleReport,
        pipelines: &Pipelines,
    ) -> Result<(), CycleError> {
        let plan = &report.plan;
        if plan.writes.is_empty() {
            return Ok(());
        }
        // Rule 10: read every target right before writing it (cards in batches).
        let mut current: BTreeMap<RecordId, Option<u64>> = BTreeMap::new();
        let mut by_kind: BTreeMap<CardKind, Vec<u64>> = BTreeMap::new();
        for w in &plan.writes {
            if let RecordId::Card(c) = &w.target {
                by_kind.entry(c.kind).or_default().push(c.id);
            }
        }
        let mut gone: BTreeSet<RecordId> = BTreeSet::new();
        for (kind, ids) in &by_kind {
            let got = self.kommo.cards_by_id(*kind, ids).await?;
            for c in got {
                let rid = RecordId::Card(CardId::new(*kind, c.id));
                if c.is_deleted || !self.still_receives(*kind, &c, pipelines) {
                    gone.insert(rid.clone());
                }
                current.insert(rid, Some(c.responsible_user_id).filter(|u| *u != 0));
            }
        }
        for w in &plan.writes {
            if let RecordId::Dialog(d) = &w.target {
                match self.chatapp.chat(d).await? {
                    Some(c) => {
                        if crate::chatapp::status_is_closed(c.status.as_deref()) {
                            gone.insert(w.target.clone());
                        }
                        current.insert(
                            w.target.clone(),
                            c.responsible.and_then(|r| r.id).filter(|e| *e != 0),
                        );
                    }
                    None => {
                        gone.insert(w.target.clone());
                    }
                }
            }
        }
        let mut intents: Vec<(usize, Intent)> = vec![];
        for (i, w) in plan.writes.iter().enumerate() {
            let now_value = current.get(&w.target).cloned().flatten();
            if gone.contains(&w.target) || !current.contains_key(&w.target) {
                report.results[i] = WriteResult::Dropped(
                    "the target is gone, closed, or no longer takes part".into(),
                );
                continue;
            }
            if now_value != w.from {
                report.results[i] = WriteResult::Dropped(format!(
                    "the target changed meanwhile ({:?} instead of {:?}); decided again next cycle",
                    now_value, w.from
                ));
                tracing::warn!(target = %w.target, expected = ?w.from, found = ?now_value, "check before write: the target changed; write dropped");
                continue;
            }
            intents.push((i, self.intent(cycle, now, w, plan)));
        }

        // Kommo: batches per kind
        let mut kommo_batches: BTreeMap<CardKind, Vec<(usize, Intent)>> = BTreeMap::new();
        let mut dialog_writes: Vec<(usize, Intent)> = vec![];
        for (i, intent) in intents {
            match &intent.target {
                RecordId::Card(c) => kommo_batches.entry(c.kind).or_default().push((i, intent)),
                RecordId::Dialog(_) => dialog_writes.push((i, intent)),
            }
        }
        for (kind, items) in kommo_batches {
            for chunk in items.chunks(self.config.kommo.batch_size) {
                if self.stop.is_cancelled() {
                    return Err(CycleError::Stopped);
                }
                self.store
                    .record_intents(&chunk.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>())?;
                let body: Vec<(u64, u64)> = chunk
                    .iter()
                    .map(|(_, it)| match &it.target {
                        RecordId::Card(c) => (c.id, it.to),
                        RecordId::Dialog(_) => unreachable!("cards only"),
                    })
                    .collect();
                match self.kommo.patch_responsible(kind, &body).await {
                    Ok(confirmed) => {
                        for (i, it) in chunk {
                            let RecordId::Card(c) = &it.target else {
                                unreachable!()
                            };
                            if confirmed.contains(&c.id) {
                                self.confirm(it, now)?;
                                report.results[*i] = WriteResult::Done;
                            } else {
                                report.results[*i] =
                                    WriteResult::Rejected("not in the PATCH response".into());
                            }
                        }
                    }
                    Err(ApiError::Status { status, body, .. }) if (400..500).contains(&status) => {
                        tracing::error!(kind = %kind, status, body, "Kommo rejected a PATCH batch; its cards are decided again next cycle");
                        for (i, it) in chunk {
                            self.store.drop_intent(&it.target)?;
                            report.results[*i] =
                                WriteResult::Rejected(format!("HTTP {status}: {body}"));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (i, it) in dialog_writes {
            let RecordId::Dialog(d) = &it.target else {
                unreachable!()
            };
            if self.stop.is_cancelled() {
                return Err(CycleError::Stopped);
            }
            self.store.record_intents(std::slice::from_ref(&it))?;
            match self.chatapp.set_responsible(d, it.to).await {
                Ok(()) => {
                    self.confirm(&it, now)?;
                    report.results[i] = WriteResult::Done;
                }
                Err(ApiError::Status { status, body, .. }) if (400..500).contains(&status) => {
                    tracing::error!(dialog = %d, status, body, "ChatApp rejected the responsible change; decided again next cycle");
                    self.store.drop_intent(&it.target)?;
                    report.results[i] = WriteResult::Rejected(format!("HTTP {status}: {body}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether a card read right before its write still takes part as a kind that receives
    /// (a lead may have closed, left the synced pipelines or changed kind meanwhile).
    fn still_receives(&self, kind: CardKind, c: &KommoCard, pipelines: &Pipelines) -> bool {
        if kind != CardKind::Lead {
            return true;
        }
        let lead = c.lead_stage(kind, pipelines).unwrap_or(LeadStage {
            pipeline: c.pipeline_id.unwrap_or(0),
            status: c.status_id.unwrap_or(0),
            kind: StageKind::Open,
        });
        let st = c.to_obs(kind, &self.fields, lead).into_state();
        let policy = self.config.policy();
        engine::sync_kind(&CardId::new(kind, c.id), &st, &policy.leads)
            .is_some_and(|k| policy.chat_to_crm.contains(&k))
    }

    fn intent(&self, cycle: u64, now: i64, w: &Write, plan: &Plan) -> Intent {
        let base = match &w.target {
            RecordId::Card(c) => {
                let mut st = plan.settle_cards[c].clone();
                st.responsible = w.to;
                st.changed_at = now;
                Base::Card(st)
            }
            RecordId::Dialog(d) => {
                let mut st = plan.settle_dialogs[d].clone();
                st.responsible = Some(w.to);
                st.changed_at = now;
                Base::Dialog(st)
            }
        };
        Intent {
            cycle,
            target: w.target.clone(),
            from: w.from,
            to: w.to,
            audit: AuditEntry {
                at: now,
                cycle,
                target: w.target.clone(),
                from: w.from,
                to: w.to,
                rule: w.reason.rule,
                source: w.reason.source.clone(),
                source_changed_at: w.reason.source_changed_at,
                detail: w.reason.detail.clone(),
                how: "write".into(),
            },
            base,
        }
    }

    fn confirm(&self, it: &Intent, now: i64) -> Result<(), CycleError> {
        let mut audit = it.audit.clone();
        audit.at = now;
        self.store.confirm_write(it, &audit)?;
        tracing::info!(
            target = %it.target,
            from = ?it.from,
            to = it.to,
            rule = audit.rule.label(),
            source = %audit.source,
            "corrected"
        );
        Ok(())
    }
}

/// The card or dialog a bad record names, when it names one.
fn subject_record(b: &crate::http::BadRecord) -> Option<RecordId> {
    let s = b.subject.as_deref()?;
    if b.api == "kommo" {
        return CardId::parse(s).map(RecordId::Card);
    }
    match crate::core::links::parse_messenger_value(s)? {
        crate::core::model::DialogRef::Full(d) => Some(RecordId::Dialog(d)),
        _ => None,
    }
}

/// The records bad records name.
fn subjects(bad: &[crate::http::BadRecord]) -> BTreeSet<RecordId> {
    bad.iter().filter_map(subject_record).collect()
}

/// The records quarantined entries name (read again on their own).
fn quarantined_records(q: &[crate::store::Quarantined]) -> BTreeSet<RecordId> {
    q.iter().filter_map(|e| subject_record(&e.record)).collect()
}

/// The observation of a card read this cycle: its fields at `stage`, the change time of its value
/// from the events, and (an incoming lead still waiting for acceptance) the unsorted chat link
/// its base holds.
fn observe_card(
    c: &KommoCard,
    kind: CardKind,
    fields: &FieldMap,
    stage: LeadStage,
    base: Option<&CardState>,
    event_times: &BTreeMap<(CardId, u64), i64>,
) -> CardObs {
    let mut o = c.to_obs(kind, fields, stage);
    let id = CardId::new(kind, c.id);
    o.event_time = event_times.get(&(id, o.responsible)).copied();
    if kind == CardKind::Lead
        && stage.kind == StageKind::Incoming
        && let Some(b) = base.filter(|b| b.lead.kind == StageKind::Incoming)
    {
        o.dialog_refs.clone_from(&b.dialog_refs);
    }
    o
}

/// A card not read this cycle, observed at its base value with a new lead stage.
fn obs_from_base(base: &CardState, stage: LeadStage) -> CardObs {
    CardObs {
        responsible: base.responsible,
        flag: base.flag,
        deleted: base.deleted,
        contacts: base.contacts.clone(),
        dialog_refs: if stage.kind == StageKind::Incoming {
            base.dialog_refs.clone()
        } else {
            vec![]
        },
        phones: base.phones.clone(),
        lead: stage,
        event_time: None,
    }
}

/// Both API clients of a config, keeping their tokens in `tokens`.
pub fn clients(
    loaded: &Loaded,
    tokens: Arc<dyn crate::tokens::TokenStore>,
) -> Result<(KommoClient, ChatAppClient), ApiError> {
    let cfg = &loaded.config;
    let auth = match (&loaded.secrets.kommo, &cfg.kommo.oauth) {
        (KommoCredentials::LongLived(t), _) => crate::kommo::auth::KommoAuth::long_lived(t.clone()),
        (
            KommoCredentials::OAuth {
                client_secret,
                refresh_token_seed,
            },
            Some(o),
        ) => crate::kommo::auth::KommoAuth::oauth(
            crate::kommo::auth::OAuthSettings {
                client_id: o.client_id.clone(),
                client_secret: client_secret.clone(),
                redirect_uri: o.redirect_uri.clone(),
            },
            tokens.clone(),
            refresh_token_seed,
        )?,
        (KommoCredentials::OAuth { .. }, None) => {
            return Err(ApiError::Auth {
                api: "kommo",
                reason: "OAuth secrets without a [kommo.oauth] table".into(),
            });
        }
    };
    let kommo = KommoClient::new(&cfg.kommo, auth)?;
    let chatapp = ChatAppClient::new(
        &cfg.chatapp,
        loaded.secrets.chatapp_password.clone(),
        tokens,
        cfg.chatapp.max_logins_per_day,
    )?;
    Ok((kommo, chatapp))
}

/// Logs the resident set size at a phase of the cycle (debug level; Linux only).
pub fn trace_memory(phase: &str) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tracing::debug!(
        phase,
        rss_kb = field("VmRSS:"),
        peak_kb = field("VmHWM:"),
        "memory"
    );
}

/// One line describing a planned write, for `--dry-run`, `demo` and logs.
pub fn describe_write(w: &Write) -> String {
    let what = match &w.target {
        RecordId::Card(c) => format!("card {c}: Kommo user {} -> {}", fmt_opt(w.from), w.to),
        RecordId::Dialog(d) => format!("dialog {d}: employee {} -> {}", fmt_opt(w.from), w.to),
    };
    format!(
        "{what}  [{}; source {}] {}",
        w.reason.rule, w.reason.source, w.reason.detail
    )
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
}

/// The dialog key of a record, if it is one.
pub fn dialog_of(r: &RecordId) -> Option<&DialogKey> {
    match r {
        RecordId::Dialog(d) => Some(d),
        RecordId::Card(_) => None,
    }
}
