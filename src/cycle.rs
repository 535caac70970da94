//! One sync cycle: settle pending intents, read (all on a full cycle; what changed since the
//! watermarks on an incremental one), plan with the pure engine, check each target right before
//! writing it, record intents, write (Kommo in batches, ChatApp one call per dialog), confirm each
//! write with its new base and audit entry in one transaction, then commit the rest of the cycle.

use crate::chatapp::ChatAppClient;
use crate::config::{Config, KommoCredentials, Loaded};
use crate::engine::{self, Brake, Plan, Write, empty_listing_brake};
use crate::http::ApiError;
use crate::kommo::{FieldMap, KommoClient, KommoEvent};
use crate::model::{CardId, CardKind, CardObs, DialogKey, RecordId};
use crate::store::{
    AuditEntry, Base, CycleCommit, CycleRecord, Intent, META_WATERMARKS, Store, StoreError,
    Watermarks,
};
use crate::usermap::UserMap;
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
    /// Builds the syncer over an open store.
    pub fn new(loaded: &Loaded, store: Arc<Store>) -> Result<Syncer, CycleError> {
        let cfg = loaded.config.clone();
        let auth = match &loaded.secrets.kommo {
            KommoCredentials::LongLived(t) => crate::kommo_auth::KommoAuth::long_lived(t.clone()),
            KommoCredentials::OAuth {
                client_secret,
                refresh_token_seed,
            } => {
                let o = cfg
                    .kommo
                    .oauth
                    .as_ref()
                    .expect("validated: oauth table present");
                crate::kommo_auth::KommoAuth::oauth(
                    crate::kommo_auth::OAuthSettings {
                        client_id: o.client_id.clone(),
                        client_secret: client_secret.clone(),
                        redirect_uri: o.redirect_uri.clone(),
                    },
                    store.clone(),
                    refresh_token_seed,
                )?
            }
        };
        let kommo = KommoClient::new(&cfg.kommo, auth)?;
        let chatapp = ChatAppClient::new(
            &cfg.chatapp,
            loaded.secrets.chatapp_password.clone(),
            store.clone(),
            cfg.chatapp.max_logins_per_day,
        )?;
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
                    self.store.record_cycle(&report.record)?;
                }
                Ok(report)
            }
            Err(e) => {
                if matches!(e, CycleError::Stopped) {
                    tracing::info!(
                        "cycle stopped between writes; the rest is decided again next cycle"
                    );
                } else {
                    tracing::error!(error = %e, "cycle failed; the next cycle starts from the last committed state");
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
                    let _ = self.store.record_cycle(&rec);
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
                    .and_then(|c| c.responsible.map(|r| r.id)),
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
        let full = opts.full || !snap.bootstrapped;
        let wm: Watermarks = self.store.meta(META_WATERMARKS)?.unwrap_or_default();
        let recheck = self.store.recheck()?;
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
        let events = self.kommo.responsible_events(&kinds, events_from).await?;
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
        // Each observed card's full base is swapped for the two values the engine compares: the
        // observation replaces the rest, so a full cycle holds one full copy of the cards, not two.
        let put_card = |obs: &mut engine::Observations,
                        wm: &mut Watermarks,
                        snap: &mut engine::Snapshot,
                        kind: CardKind,
                        c: crate::kommo::KommoCard| {
            let latest = wm.kommo_updated.entry(kind).or_insert(0);
            *latest = (*latest).max(c.updated_at);
            let mut o: CardObs = c.to_obs(kind, fields);
            let id = CardId::new(kind, c.id);
            if let Some(base) = snap.cards.remove(&id) {
                snap.card_values.insert(id, engine::BaseValue::from(&base));
            }
            o.event_time = event_times.get(&(id, o.responsible)).copied();
            obs.cards.insert(id, o);
        };
        if full {
            for &kind in &kinds {
                let in_snap = snap.cards.keys().filter(|c| c.kind == kind).count();
                let listed = self
                    .kommo
                    .each_card(kind, None, |c| {
                        put_card(&mut obs, &mut new_wm, &mut snap, kind, c)
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
                            put_card(&mut obs, &mut new_wm, &mut snap, kind, c)
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
            for r in &recheck {
                if let RecordId::Card(c) = r
                    && !obs.cards.contains_key(c)
                {
                    wanted.entry(c.kind).or_default().insert(c.id);
                }
            }
            for (kind, ids) in wanted {
                let ids: Vec<u64> = ids.into_iter().collect();
                for c in self.kommo.cards_by_id(kind, &ids).await? {
                    put_card(&mut obs, &mut new_wm, &mut snap, kind, c);
                }
                // a card that does not come back is gone: deleted
                for id in ids {
                    let cid = CardId::new(kind, id);
                    if let (false, Some(base)) =
                        (obs.cards.contains_key(&cid), snap.cards.get(&cid))
                    {
                        obs.cards.insert(
                            cid,
                            CardObs {
                                responsible: base.responsible,
                                flag: base.flag,
                                deleted: true,
                                contacts: base.contacts.clone(),
                                dialog_refs: base.dialog_refs.clone(),
                                phones: base.phones.clone(),
                                event_time: None,
                            },
                        );
                    }
                }
            }
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
            for r in &recheck {
                if let RecordId::Dialog(d) = r
                    && !obs.dialogs.contains_key(d)
                    && let Some(c) = self.chatapp.chat(d).await?
                {
                    obs.dialogs.insert(d.clone(), c.to_obs());
                }
            }
        }

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

        self.apply(id, now, &mut report).await?;
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
            watermarks: new_wm.clone(),
            events_seen: fresh.iter().map(|e| (e.id.clone(), e.created_at)).collect(),
            prune_events_before: new_wm.kommo_events - 2 * k_overlap,
            cycle: record.clone(),
        };
        trace_memory("settled");
        self.store.commit_cycle(&commit)?;
        trace_memory("committed");
        report.record = record;
        Ok(report)
    }

    /// Check-before-write, intents, writes, confirmations.
    async fn apply(
        &self,
        cycle: u64,
        now: i64,
        report: &mut CycleReport,
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
                if c.is_deleted {
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
                            c.responsible.map(|r| r.id).filter(|e| *e != 0),
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
                report.results[i] = WriteResult::Dropped("the target is gone or closed".into());
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
