//! The decision engine (SPEC section 3): snapshot + observations + policy + user map in, a plan of
//! writes (each with its reason) out. Pure: no I/O, no clock (the cycle passes `now`), deterministic.
//!
//! Vocabulary: a record's *base* is in the snapshot; its *current* state is the observation of this
//! cycle when it was read, else its base. A record has *changed* when current != base.

use crate::core::hash::fnv1a64;
use crate::core::links::{Links, resolve_links_with};
use crate::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogState, EmployeeId,
    KommoUserId, RecordId, StageKind, SyncKind, Value,
};
use crate::core::text;
use crate::core::usermap::UserMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Who wins when a card in `E_in` and the dialog both changed (SPEC rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The later change time wins; a difference under `clock_skew` is a tie, which goes to the CRM.
    #[default]
    Newest,
    /// The CRM always wins.
    Crm,
    /// The dialog always wins.
    Chat,
}

/// What the first cycle on an empty state db does (SPEC rule 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    /// Record what is there as base, write nothing, report disagreements.
    #[default]
    Adopt,
    /// Every linked dialog takes its CRM responsible (as if opened: rules 2 and 4).
    Crm,
    /// Every linked card in `chat_to_crm` takes its dialog's responsible (as if changed: rule 3).
    Chat,
}

/// Which leads take part (SPEC section 1; config `[sync.leads]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LeadsPolicy {
    /// Won (142) and lost (143) leads take part too.
    pub include_closed: bool,
    /// Only leads in these pipelines take part; empty: all.
    pub pipelines: BTreeSet<u64>,
}

/// The kind a card takes part as, or `None` when it takes no part: a closed lead (unless
/// `include_closed`), a lead outside `pipelines` (when set). A lead in an incoming stage is an
/// `incoming_lead`; other cards take their entity's kind. A card that stops taking part is never
/// written nor a source; one that starts again decides from its base like any other card.
pub fn sync_kind(id: &CardId, st: &CardState, leads: &LeadsPolicy) -> Option<SyncKind> {
    if id.kind != CardKind::Lead {
        return Some(SyncKind::from(id.kind));
    }
    if !leads.pipelines.is_empty() && !leads.pipelines.contains(&st.lead.pipeline) {
        return None;
    }
    match st.lead.kind {
        StageKind::Closed if !leads.include_closed => None,
        StageKind::Incoming => Some(SyncKind::IncomingLead),
        StageKind::Open | StageKind::Closed => Some(SyncKind::Lead),
    }
}

/// The parts of the config the engine decides by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Kinds whose responsible is pushed into linked dialogs.
    pub crm_to_chat: BTreeSet<SyncKind>,
    /// Kinds that receive the dialog's responsible.
    pub chat_to_crm: BTreeSet<SyncKind>,
    /// Which leads take part.
    pub leads: LeadsPolicy,
    /// Conflict rule.
    pub conflict: ConflictPolicy,
    /// Change times closer than this (seconds) are a tie.
    pub clock_skew_secs: i64,
    /// First-run mode.
    pub bootstrap: Bootstrap,
    /// Safety brake: the most targets one cycle may write.
    pub max_writes_per_cycle: usize,
    /// Link a contact to a dialog when a phone matches.
    pub match_phone: bool,
}

/// The rule a write or a park comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Rule 1: a card in `E_in` changed; the dialog takes the latest-changed card's responsible.
    CrmChanged,
    /// Rule 2: the dialog was opened; it takes the latest-changed card's responsible.
    DialogOpened,
    /// Rule 3: the dialog's responsible changed; cards in `E_out` take it.
    DialogChanged,
    /// Rule 4: a dialog assigned by rule 1 or 2; cards in `E_out` follow it.
    Cascade,
    /// Rule 12: the first cycle's `bootstrap = crm | chat`.
    Bootstrap,
}

impl Rule {
    /// The SPEC rule number.
    pub fn number(self) -> u8 {
        match self {
            Rule::CrmChanged => 1,
            Rule::DialogOpened => 2,
            Rule::DialogChanged => 3,
            Rule::Cascade => 4,
            Rule::Bootstrap => 12,
        }
    }

    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Rule::CrmChanged => "crm_changed",
            Rule::DialogOpened => "dialog_opened",
            Rule::DialogChanged => "dialog_changed",
            Rule::Cascade => "cascade",
            Rule::Bootstrap => "bootstrap",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({})", self.number(), self.label())
    }
}

/// Why a write is planned: the rule, the record the value comes from, and the times compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// The rule.
    pub rule: Rule,
    /// The record whose responsible is copied.
    pub source: RecordId,
    /// The source's change time (unix seconds).
    pub source_changed_at: i64,
    /// A one-line explanation with the change times that were compared.
    pub detail: String,
}

/// What one write sets, typed by its side: a card takes a Kommo user, a dialog an employee.
/// `from` is the value the decision was based on (`None` = nobody): the executor checks the
/// target still holds it right before writing (rule 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A Kommo card.
    Card {
        /// The card.
        id: CardId,
        /// Its responsible when decided.
        from: Option<KommoUserId>,
        /// The new responsible.
        to: KommoUserId,
    },
    /// A ChatApp dialog.
    Dialog {
        /// The dialog.
        key: DialogKey,
        /// Its responsible when decided.
        from: Option<EmployeeId>,
        /// The new responsible.
        to: EmployeeId,
    },
}

impl Target {
    /// The record written.
    pub fn record(&self) -> RecordId {
        match self {
            Target::Card { id, .. } => RecordId::Card(*id),
            Target::Dialog { key, .. } => RecordId::Dialog(key.clone()),
        }
    }

    /// The value to write, typed by the target's side.
    pub fn to_value(&self) -> Value {
        match self {
            Target::Card { to, .. } => Value::Card(*to),
            Target::Dialog { to, .. } => Value::Dialog(*to),
        }
    }

    /// The value the decision was based on (`None`: nobody), typed by the target's side.
    pub fn from_value(&self) -> Option<Value> {
        match self {
            Target::Card { from, .. } => from.map(Value::Card),
            Target::Dialog { from, .. } => from.map(Value::Dialog),
        }
    }
}

/// One planned write: set `target`'s responsible, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The card or dialog, with the value decided from and the value to write.
    pub target: Target,
    /// Why.
    pub reason: Reason,
    /// Records whose bases must stay as they were if this write fails, so the change is decided
    /// again next cycle (the target and the source).
    pub holds: Vec<RecordId>,
}

/// Why a pair is parked instead of written (rule 8).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", content = "value", rename_all = "snake_case")]
pub enum ParkReason {
    /// The Kommo user has no employee in the user map.
    UnmappedKommoUser(KommoUserId),
    /// The employee has no Kommo user in the user map.
    UnmappedEmployee(EmployeeId),
    /// The source has no responsible (zero or empty).
    NoResponsible,
    /// The target card is deleted.
    CardDeleted,
    /// The target dialog is closed.
    DialogClosed,
    /// A Messenger reference that matches no known dialog.
    DialogUnknown(String),
}

impl ParkReason {
    /// A stable label for metrics and `status` counts.
    pub fn label(&self) -> &'static str {
        match self {
            ParkReason::UnmappedKommoUser(_) => "unmapped_kommo_user",
            ParkReason::UnmappedEmployee(_) => "unmapped_employee",
            ParkReason::NoResponsible => "no_responsible",
            ParkReason::CardDeleted => "card_deleted",
            ParkReason::DialogClosed => "dialog_closed",
            ParkReason::DialogUnknown(_) => "dialog_unknown",
        }
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::UnmappedKommoUser(u) => {
                write!(f, "{} has no ChatApp employee", text::user(*u))
            }
            ParkReason::UnmappedEmployee(e) => {
                write!(f, "{} has no Kommo user", text::employee(Some(*e)))
            }
            ParkReason::NoResponsible => f.write_str("the source has no responsible"),
            ParkReason::CardDeleted => f.write_str("the card is deleted"),
            ParkReason::DialogClosed => f.write_str("the dialog is closed"),
            ParkReason::DialogUnknown(r) => {
                write!(f, "Messenger value {r} matches no known dialog")
            }
        }
    }
}

/// What made the engine decide a pair; replayed when a parked pair is decided again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "card", rename_all = "snake_case")]
pub enum Trigger {
    /// A card's responsible changed.
    CardChanged(CardId),
    /// The dialog's responsible changed.
    DialogChanged,
    /// The dialog was opened.
    DialogOpened,
}

/// A pair that could not be written, kept until its inputs change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The record whose decision this is: the dialog, or the contact of an unknown reference.
    pub subject: RecordId,
    /// The record that would have been written.
    pub target: Option<RecordId>,
    /// Why it was not written.
    pub reason: ParkReason,
    /// What triggered the decision.
    pub trigger: Trigger,
    /// [`fingerprint`] of the policy and user map it was decided under; a different fingerprint
    /// (a config change, a new user pair) makes the engine decide it again.
    pub fingerprint: u64,
}

impl Parked {
    /// The records the pair involves: its subject, its target, and the card that triggered it.
    pub fn records(&self) -> impl Iterator<Item = RecordId> + '_ {
        let trigger = match self.trigger {
            Trigger::CardChanged(c) => Some(RecordId::Card(c)),
            Trigger::DialogChanged | Trigger::DialogOpened => None,
        };
        std::iter::once(self.subject.clone())
            .chain(self.target.clone())
            .chain(trigger)
    }

    /// A stable key for the store: subject and target.
    pub fn key(&self) -> String {
        match &self.target {
            Some(t) if *t != self.subject => {
                format!("{} -> {}", self.subject.key_text(), t.key_text())
            }
            _ => self.subject.key_text(),
        }
    }
}

/// Both sides of a pair changed to different people (rule 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The dialog.
    pub dialog: DialogKey,
    /// The latest-changed card of `E_in`.
    pub card: CardId,
    /// The card's change time.
    pub card_changed_at: i64,
    /// The dialog's change time.
    pub dialog_changed_at: i64,
    /// True when the CRM side won.
    pub crm_won: bool,
}

/// A linked pair whose sides disagree on the first cycle with `bootstrap = adopt` (reported only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The dialog.
    pub dialog: DialogKey,
    /// The card.
    pub card: CardId,
    /// The card's responsible.
    pub card_responsible: KommoUserId,
    /// The dialog's responsible.
    pub dialog_responsible: Option<EmployeeId>,
}

/// Why a cycle refuses to write (rule 13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Brake {
    /// More planned writes than `max_writes_per_cycle`.
    TooManyWrites {
        /// Planned writes.
        planned: usize,
        /// The limit.
        max: usize,
    },
    /// A full listing came back empty where the snapshot holds many records.
    EmptyListing {
        /// What was listed.
        what: String,
        /// Records of it in the snapshot.
        in_snapshot: usize,
    },
}

impl fmt::Display for Brake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Brake::TooManyWrites { planned, max } => write!(
                f,
                "safety brake: {planned} writes planned, more than max_writes_per_cycle = {max}; nothing written (re-run once with --force to apply)"
            ),
            Brake::EmptyListing { what, in_snapshot } => write!(
                f,
                "safety brake: the {what} listing came back empty while the snapshot holds {in_snapshot}; nothing written (re-run once with --force to apply)"
            ),
        }
    }
}

/// The records a full listing must not come back without (rule 13): this many or more in the
/// snapshot and zero listed trips the brake.
pub const EMPTY_LISTING_THRESHOLD: usize = 10;

/// Rule 13's second half: a full listing of `what` returned `listed` records while the snapshot
/// holds `in_snapshot`.
pub fn empty_listing_brake(what: &str, in_snapshot: usize, listed: usize) -> Option<Brake> {
    (listed == 0 && in_snapshot >= EMPTY_LISTING_THRESHOLD).then(|| Brake::EmptyListing {
        what: what.to_string(),
        in_snapshot,
    })
}

/// The daemon's memory: bases of every record seen, parked pairs, and whether the first cycle ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Card bases.
    pub cards: BTreeMap<CardId, CardState>,
    /// Dialog bases.
    pub dialogs: BTreeMap<DialogKey, DialogState>,
    /// Parked pairs, by [`Parked::key`].
    pub parked: BTreeMap<String, Parked>,
    /// Records whose last decision did not complete (a write failed or was dropped): decided
    /// again whatever their value, so a change a person undid meanwhile is still carried through.
    pub held: BTreeSet<RecordId>,
    /// The first cycle has run (its bootstrap is done).
    pub bootstrapped: bool,
}

/// The compared part of a card's base: its responsible and when it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseValue {
    /// `responsible_user_id`.
    pub responsible: KommoUserId,
    /// Its change time.
    pub changed_at: i64,
}

impl From<&CardState> for BaseValue {
    fn from(st: &CardState) -> Self {
        BaseValue {
            responsible: st.responsible,
            changed_at: st.changed_at,
        }
    }
}

/// What one cycle read: a subset of records (all of them on a full cycle).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// Cards read.
    pub cards: BTreeMap<CardId, CardObs>,
    /// Dialogs read.
    pub dialogs: BTreeMap<DialogKey, DialogObs>,
    /// The cycle's time (unix seconds): "first observed" for values with no better time.
    pub now: i64,
}

/// The engine's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Writes, in a deterministic order (cards by id, then dialogs by key).
    pub writes: Vec<Write>,
    /// Pairs parked this cycle.
    pub parked: Vec<Parked>,
    /// Subjects decided this cycle: their old parked entries are replaced by `parked`.
    pub decided: BTreeSet<RecordId>,
    /// Conflicts resolved this cycle.
    pub conflicts: Vec<Conflict>,
    /// Disagreements reported by `bootstrap = adopt`.
    pub disagreements: Vec<Disagreement>,
    /// The new base of every observed or targeted card, before its write (the executor applies
    /// confirmed writes and skips held records). A first run's plan holds only the cards it
    /// settles otherwise than staged and those its writes name ([`crate::core::first_run`]).
    pub settle_cards: BTreeMap<CardId, CardState>,
    /// Same for dialogs.
    pub settle_dialogs: BTreeMap<DialogKey, DialogState>,
    /// Set when the cycle must write nothing (rule 13).
    pub brake: Option<Brake>,
    /// The first cycle's bootstrap ran in this plan.
    pub bootstrap: bool,
}

impl Plan {
    /// Puts the plan's lists in their deterministic order: writes by target (cards by id, then
    /// dialogs by key), parked pairs by subject, conflicts and disagreements by dialog. Every
    /// sort is stable and its key is a record of the entry's own decision, so plans made group by
    /// group and appended come out in the order of the plan of the whole
    /// ([`crate::core::first_run`]).
    pub fn order(&mut self) {
        self.writes.sort_by_key(|a| a.target.record());
        self.parked.sort_by(|a, b| a.subject.cmp(&b.subject));
        self.conflicts.sort_by(|a, b| a.dialog.cmp(&b.dialog));
        self.disagreements.sort_by(|a, b| a.dialog.cmp(&b.dialog));
    }
}

/// Rule 13: the brake when more than `max` writes are planned.
pub fn too_many_writes(planned: usize, max: usize) -> Option<Brake> {
    (planned > max).then_some(Brake::TooManyWrites { planned, max })
}

/// Iterates `base` overlaid with `over` (both sorted by key): each key once, `over`'s value first.
fn merge_overlay<'m, K: Ord, V>(
    base: &'m BTreeMap<K, V>,
    over: &'m BTreeMap<K, V>,
) -> impl Iterator<Item = (&'m K, &'m V)> + 'm {
    let mut b = base.iter().peekable();
    let mut o = over.iter().peekable();
    std::iter::from_fn(move || match (b.peek(), o.peek()) {
        (Some((bk, _)), Some((ok, _))) => match bk.cmp(ok) {
            std::cmp::Ordering::Less => b.next(),
            std::cmp::Ordering::Greater => o.next(),
            std::cmp::Ordering::Equal => {
                b.next();
                o.next()
            }
        },
        (Some(_), None) => b.next(),
        (None, Some(_)) => o.next(),
        (None, None) => None,
    })
}

/// A stable hash of what a parked decision depends on besides the records: the policy and the
/// user map (FNV-1a over a canonical text).
pub fn fingerprint(policy: &Policy, users: &UserMap) -> u64 {
    let mut text = format!(
        "{:?}|{:?}|{:?}|{}|{}|",
        policy.crm_to_chat,
        policy.chat_to_crm,
        policy.conflict,
        policy.clock_skew_secs,
        policy.match_phone
    );
    if policy.leads != LeadsPolicy::default() {
        text.push_str(&format!("{:?}|", policy.leads));
    }
    for (k, e) in users.pairs() {
        text.push_str(&format!("{k}={e},"));
    }
    fnv1a64(text.as_bytes())
}

/// True when a dialog known before counts as *reopened* (rule 2). ChatApp's public material does not
/// say how a reopen shows; the assumption (isolated here) is: it was closed and is open now, or a new
/// conversation started (`conversation.startTime` moved forward).
pub fn dialog_reopened(base: &DialogState, now: &DialogObs) -> bool {
    (base.closed && !now.closed) || (base.session != 0 && now.session > base.session)
}

/// The change time of an observed dialog value. ChatApp exposes no assignment time in chat listings;
/// the assumption (isolated here) is that an assignment moves `lastTime` (a system message), so a
/// changed value whose `lastTime` moved is dated by `lastTime`, else by the time first observed.
pub fn dialog_change_time(base: Option<&DialogState>, obs: &DialogObs, now: i64) -> i64 {
    match base {
        Some(b) if b.responsible == obs.responsible => b.changed_at,
        Some(b) if obs.last_time > b.last_time => obs.last_time,
        None if obs.last_time > 0 => obs.last_time,
        _ => now,
    }
}

/// The change time of an observed card value: its latest responsible-change event, else (unchanged)
/// its base's, else the time first observed.
pub fn card_change_time(base: Option<BaseValue>, obs: &CardObs, now: i64) -> i64 {
    match (obs.event_time, base) {
        (Some(t), _) => t,
        (None, Some(b)) if b.responsible == obs.responsible => b.changed_at,
        _ => now,
    }
}

/// How a proposal weighs a target card that a person changed too.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TargetChange {
    /// Already weighed by rule 5 (the card is in the dialog's `E_in`): the proposal stands.
    Settled,
    /// A dialog's change against the card's own change: the conflict policy decides.
    ChatVsCard,
    /// A cascaded card value against the card's own change: the later change wins.
    CardVsCard,
}

struct Proposal {
    value: KommoUserId,
    time: i64,
    via: DialogKey,
    reason: Reason,
    holds: Vec<RecordId>,
    target_change: TargetChange,
}

/// The per-cycle working state of [`plan`].
struct Work<'a> {
    policy: &'a Policy,
    users: &'a UserMap,
    fp: u64,
    /// The snapshot's cards (bases).
    base_cards: &'a BTreeMap<CardId, CardState>,
    /// Cards observed this cycle, with their derived change times: overlaid on `base_cards`.
    cards: BTreeMap<CardId, CardState>,
    dialogs: BTreeMap<DialogKey, DialogState>,
    card_changed: BTreeSet<CardId>,
    /// Cards whose value a person changed (observed unlike their base): `card_changed` without
    /// the held ones. Only these weigh as a target's own change (a card held because the write
    /// to it failed was not changed by anyone).
    card_value_changed: BTreeSet<CardId>,
    /// A parked pair decided again (config change): its card counts as changed for that dialog only.
    forced_pairs: BTreeSet<(DialogKey, CardId)>,
    dialog_changed: BTreeSet<DialogKey>,
    dialog_opened: BTreeSet<DialogKey>,
    links: Links,
    plan: Plan,
    proposals: BTreeMap<CardId, Vec<Proposal>>,
}

/// Decides one cycle. See the module docs and SPEC section 3; rule numbers are cited inline.
pub fn plan(snap: &Snapshot, obs: &Observations, policy: &Policy, users: &UserMap) -> Plan {
    plan_owned(snap, obs.clone(), policy, users)
}

/// [`plan`] consuming the observations: their data moves into the plan instead of being copied
/// (what the cycle uses: on a full cycle of a large account this halves the memory).
pub fn plan_owned(snap: &Snapshot, obs: Observations, policy: &Policy, users: &UserMap) -> Plan {
    let first_run = !snap.bootstrapped;
    let mut w = Work {
        policy,
        users,
        fp: fingerprint(policy, users),
        base_cards: &snap.cards,
        cards: BTreeMap::new(),
        dialogs: snap.dialogs.clone(),
        card_changed: BTreeSet::new(),
        card_value_changed: BTreeSet::new(),
        forced_pairs: BTreeSet::new(),
        dialog_changed: BTreeSet::new(),
        dialog_opened: BTreeSet::new(),
        links: Links::default(),
        plan: Plan {
            bootstrap: first_run,
            ..Plan::default()
        },
        proposals: BTreeMap::new(),
    };
    let now = obs.now;
    w.observe_cards(snap, obs.cards, now, first_run);
    w.observe_dialogs(snap, obs.dialogs, now, first_run);
    if first_run {
        w.bootstrap_triggers();
    } else {
        w.held_triggers(&snap.held);
    }
    w.reparked_triggers(&snap.parked);

    w.links = resolve_links_with(|| w.all_cards(), &w.dialogs, policy.match_phone);
    for p in snap.parked.values() {
        if let (ParkReason::DialogUnknown(_), RecordId::Card(c)) = (&p.reason, &p.subject)
            && !w.links.unknown_refs.contains_key(&c.id)
        {
            w.plan.decided.insert(p.subject.clone());
        }
    }
    w.park_unknown_refs();
    let cards_of = std::mem::take(&mut w.links.cards_of);
    for (d, linked) in &cards_of {
        w.decide_dialog(d, linked, first_run);
    }
    w.resolve_card_proposals(first_run);
    w.finish()
}

/// One dialog being decided: its state, its linked cards that give (`E_in`) and take (`E_out`)
/// a responsible, and whether the dialog itself changed.
struct Case<'c> {
    d: &'c DialogKey,
    dialog: &'c DialogState,
    e_in: &'c [CardId],
    e_out: &'c [CardId],
    d_changed: bool,
}

/// The steps of [`plan_owned`] before and after the decisions.
impl Work<'_> {
    /// Observed cards: their current states, dated, and which changed (by value against the base).
    fn observe_cards(
        &mut self,
        snap: &Snapshot,
        cards: BTreeMap<CardId, CardObs>,
        now: i64,
        first_run: bool,
    ) {
        for (id, o) in cards {
            let base: Option<BaseValue> = snap.cards.get(&id).map(BaseValue::from);
            let changed_at = card_change_time(base, &o, now);
            if !first_run && base.is_none_or(|b| b.responsible != o.responsible) {
                self.card_changed.insert(id);
                self.card_value_changed.insert(id);
            }
            self.cards.insert(id, o.dated(changed_at));
        }
    }

    /// Observed dialogs: their current states, dated, and which changed or opened (a dialog new to
    /// the daemon counts as opened, and as changed when it already has a responsible).
    fn observe_dialogs(
        &mut self,
        snap: &Snapshot,
        dialogs: BTreeMap<DialogKey, DialogObs>,
        now: i64,
        first_run: bool,
    ) {
        for (key, o) in dialogs {
            let base = snap.dialogs.get(&key);
            let st = DialogState {
                responsible: o.responsible,
                changed_at: dialog_change_time(base, &o, now),
                last_time: o.last_time,
                session: o.session,
                closed: o.closed,
                phone: o.phone.clone(),
            };
            if !first_run {
                let (opened, changed) = match base {
                    None => (true, st.responsible.is_some()),
                    Some(b) => (dialog_reopened(b, &o), b.responsible != st.responsible),
                };
                if opened {
                    self.dialog_opened.insert(key.clone());
                }
                if changed {
                    self.dialog_changed.insert(key.clone());
                }
            }
            self.plan.settle_dialogs.insert(key.clone(), st.clone());
            self.dialogs.insert(key, st);
        }
    }

    /// Rule 12: the first cycle's bootstrap marks every dialog as opened (`crm`) or every assigned
    /// dialog as changed (`chat`); `adopt` only reports.
    fn bootstrap_triggers(&mut self) {
        match self.policy.bootstrap {
            Bootstrap::Adopt => {}
            Bootstrap::Crm => self.dialog_opened.extend(self.dialogs.keys().cloned()),
            Bootstrap::Chat => self.dialog_changed.extend(
                self.dialogs
                    .iter()
                    .filter(|(_, d)| d.responsible.is_some())
                    .map(|(k, _)| k.clone()),
            ),
        }
    }

    /// Held records: their last decision did not complete; decide them again whatever their value.
    fn held_triggers(&mut self, held: &BTreeSet<RecordId>) {
        for r in held {
            match r {
                RecordId::Card(c) if self.has_card(c) => {
                    self.card_changed.insert(*c);
                }
                RecordId::Dialog(d) if self.dialogs.contains_key(d) => {
                    self.dialog_changed.insert(d.clone());
                }
                _ => {}
            }
        }
    }

    /// Rule 8: parked pairs decided under another policy or user map are decided again, each for
    /// its own dialog only.
    fn reparked_triggers(&mut self, parked: &BTreeMap<String, Parked>) {
        for p in parked.values().filter(|p| p.fingerprint != self.fp) {
            match (&p.trigger, &p.subject) {
                (Trigger::CardChanged(c), RecordId::Dialog(d))
                    if self.has_card(c) && self.dialogs.contains_key(d) =>
                {
                    self.forced_pairs.insert((d.clone(), *c));
                }
                (Trigger::DialogChanged, RecordId::Dialog(d)) if self.dialogs.contains_key(d) => {
                    self.dialog_changed.insert(d.clone());
                }
                (Trigger::DialogOpened, RecordId::Dialog(d)) if self.dialogs.contains_key(d) => {
                    self.dialog_opened.insert(d.clone());
                }
                _ => {}
            }
        }
    }

    /// The plan: new bases of observed and targeted cards (the merged view itself, kept in place),
    /// writes in a deterministic order (cards by id, then dialogs by key), and rule 13's brake.
    fn finish(mut self) -> Plan {
        let targets: BTreeSet<CardId> = self
            .plan
            .writes
            .iter()
            .filter_map(|x| match &x.target {
                Target::Card { id, .. } => Some(*id),
                Target::Dialog { .. } => None,
            })
            .collect();
        let mut cards = std::mem::take(&mut self.cards);
        for t in targets {
            if let (false, Some(st)) = (cards.contains_key(&t), self.base_cards.get(&t)) {
                cards.insert(t, st.clone());
            }
        }
        self.plan.settle_cards = cards;
        self.plan.order();
        self.plan.brake = too_many_writes(self.plan.writes.len(), self.policy.max_writes_per_cycle);
        self.plan
    }
}

impl<'a> Work<'a> {
    /// A card's current state: observed this cycle, else its base.
    fn card(&self, c: &CardId) -> &CardState {
        self.cards.get(c).unwrap_or_else(|| &self.base_cards[c])
    }

    fn has_card(&self, c: &CardId) -> bool {
        self.cards.contains_key(c) || self.base_cards.contains_key(c)
    }

    /// Every card once, in id order: the observed state where there is one, else the base.
    fn all_cards(&self) -> impl Iterator<Item = (&CardId, &CardState)> + '_ {
        merge_overlay(self.base_cards, &self.cards)
    }

    /// The kind the card takes part as now (`None`: it takes no part).
    fn kind_of(&self, c: &CardId) -> Option<SyncKind> {
        sync_kind(c, self.card(c), &self.policy.leads)
    }

    fn in_e_in(&self, c: &CardId) -> bool {
        let st = &self.card(c);
        self.kind_of(c)
            .is_some_and(|k| self.policy.crm_to_chat.contains(&k))
            && st.flag
            && !st.deleted
    }

    /// The card counts as changed for this dialog: a person changed it, it is held, or a parked
    /// pair of this dialog and card is decided again.
    fn changed_for(&self, d: &DialogKey, c: &CardId) -> bool {
        self.card_changed.contains(c) || self.forced_pairs.contains(&(d.clone(), *c))
    }

    fn in_e_out(&self, c: &CardId) -> bool {
        self.kind_of(c)
            .is_some_and(|k| self.policy.chat_to_crm.contains(&k))
            && self.card(c).flag
    }

    fn park(
        &mut self,
        subject: RecordId,
        target: Option<RecordId>,
        reason: ParkReason,
        trigger: Trigger,
    ) {
        self.plan.parked.push(Parked {
            subject,
            target,
            reason,
            trigger,
            fingerprint: self.fp,
        });
    }

    /// Rule 8: a changed contact whose Messenger value matches no known dialog.
    fn park_unknown_refs(&mut self) {
        let unknown: Vec<(u64, Vec<String>)> = self
            .links
            .unknown_refs
            .iter()
            .map(|(id, refs)| (*id, refs.iter().map(|r| r.to_string()).collect()))
            .collect();
        for (id, refs) in unknown {
            let card = CardId::new(CardKind::Contact, id);
            if !self.card_changed.contains(&card) || !self.in_e_in(&card) {
                continue;
            }
            self.plan.decided.insert(RecordId::Card(card));
            for r in refs {
                self.park(
                    RecordId::Card(card),
                    None,
                    ParkReason::DialogUnknown(r),
                    Trigger::CardChanged(card),
                );
            }
        }
    }

    /// The card of `E_in` with the latest change time (ties: a card changed this cycle, then the
    /// smallest id).
    fn latest_changed(&self, e_in: &[CardId]) -> Option<CardId> {
        e_in.iter().copied().max_by_key(|c| {
            (
                self.card(c).changed_at,
                self.card_changed.contains(c),
                Reverse(*c),
            )
        })
    }

    fn decide_dialog(&mut self, d: &DialogKey, linked: &[CardId], first_run: bool) {
        let e_in: Vec<CardId> = linked.iter().copied().filter(|c| self.in_e_in(c)).collect();
        let e_out: Vec<CardId> = linked
            .iter()
            .copied()
            .filter(|c| self.in_e_out(c))
            .collect();
        let dialog = self.dialogs[d].clone();
        let winner = self.latest_changed(&e_in);
        let crm_changed = e_in.iter().any(|c| self.changed_for(d, c));
        let d_changed = self.dialog_changed.contains(d);
        let d_opened = self.dialog_opened.contains(d);

        if first_run && self.policy.bootstrap == Bootstrap::Adopt {
            self.report_disagreements(d, &dialog, winner, &e_out);
            return;
        }
        let crm_rule = match winner {
            Some(_) if crm_changed => Some(Rule::CrmChanged),
            Some(_) if d_opened => Some(Rule::DialogOpened),
            _ => None,
        };
        if crm_rule.is_none() && !d_changed {
            return;
        }
        self.plan.decided.insert(RecordId::Dialog(d.clone()));

        let crm_wins = match (crm_rule, winner) {
            (Some(Rule::CrmChanged), Some(wc)) if d_changed => {
                let card = &self.card(&wc);
                let mapped = self.users.to_chat(card.responsible);
                if mapped.is_some() && mapped == dialog.responsible {
                    // Rule 7: both changed to the same person; nothing to write on this pair.
                    // The linked cards follow that person, dated by the later of the two changes
                    // (the card's path when the card changed last, else the dialog's).
                    card.changed_at >= dialog.changed_at
                } else {
                    let crm_won = match self.policy.conflict {
                        ConflictPolicy::Crm => true,
                        ConflictPolicy::Chat => false,
                        ConflictPolicy::Newest => {
                            dialog.changed_at.saturating_sub(card.changed_at)
                                < self.policy.clock_skew_secs
                        }
                    };
                    self.plan.conflicts.push(Conflict {
                        dialog: d.clone(),
                        card: wc,
                        card_changed_at: card.changed_at,
                        dialog_changed_at: dialog.changed_at,
                        crm_won,
                    });
                    crm_won
                }
            }
            (Some(_), Some(_)) => true,
            _ => false,
        };

        if crm_wins {
            let wc = winner.expect("crm side wins only with a winner");
            let rule = if first_run {
                Rule::Bootstrap
            } else {
                crm_rule.expect("crm rule")
            };
            let case = Case {
                d,
                dialog: &dialog,
                e_in: &e_in,
                e_out: &e_out,
                d_changed,
            };
            self.assign_dialog_from_card(&case, wc, rule);
        } else {
            let case = Case {
                d,
                dialog: &dialog,
                e_in: &e_in,
                e_out: &e_out,
                d_changed,
            };
            self.assign_cards_from_dialog(&case, first_run);
        }
    }

    fn report_disagreements(
        &mut self,
        d: &DialogKey,
        dialog: &DialogState,
        winner: Option<CardId>,
        e_out: &[CardId],
    ) {
        let mut seen = BTreeSet::new();
        if let Some(wc) = winner {
            let card = &self.card(&wc);
            if self.users.to_chat(card.responsible) != dialog.responsible {
                seen.insert(wc);
                self.plan.disagreements.push(Disagreement {
                    dialog: d.clone(),
                    card: wc,
                    card_responsible: card.responsible,
                    dialog_responsible: dialog.responsible,
                });
            }
        }
        let want = dialog.responsible.and_then(|e| self.users.to_crm(e));
        for c in e_out {
            let card = &self.card(c);
            if !card.deleted && Some(card.responsible) != want && seen.insert(*c) {
                self.plan.disagreements.push(Disagreement {
                    dialog: d.clone(),
                    card: *c,
                    card_responsible: card.responsible,
                    dialog_responsible: dialog.responsible,
                });
            }
        }
    }

    /// Rules 1/2 (and bootstrap `crm`), then rule 4's cascade to `E_out`.
    fn assign_dialog_from_card(&mut self, case: &Case, wc: CardId, rule: Rule) {
        let (d, dialog) = (case.d, case.dialog);
        let card = self.card(&wc).clone();
        let changed: Vec<CardId> = case
            .e_in
            .iter()
            .copied()
            .filter(|c| self.changed_for(d, c))
            .collect();
        let trigger = match self.latest_changed(&changed) {
            Some(c) => Trigger::CardChanged(c),
            None => Trigger::DialogOpened,
        };
        let subject = RecordId::Dialog(d.clone());
        let target = Some(RecordId::Dialog(d.clone()));
        if card.responsible.is_nobody() {
            self.park(subject, target, ParkReason::NoResponsible, trigger);
            return;
        }
        let Some(employee) = self.users.to_chat(card.responsible) else {
            self.park(
                subject,
                target,
                ParkReason::UnmappedKommoUser(card.responsible),
                trigger,
            );
            return;
        };
        // A closed dialog is never written; one that already holds the person needs no write, so
        // it is assigned all the same and its linked cards follow (open or closed alike).
        if dialog.closed && dialog.responsible != Some(employee) {
            self.park(subject, target, ParkReason::DialogClosed, trigger);
            return;
        }
        let reason = self.crm_reason(case, wc, rule, employee);
        if dialog.responsible != Some(employee) {
            self.plan.writes.push(Write {
                target: Target::Dialog {
                    key: d.clone(),
                    from: dialog.responsible,
                    to: employee,
                },
                reason,
                holds: vec![RecordId::Dialog(d.clone()), RecordId::Card(wc)],
            });
        }
        self.cascade(case, wc, rule);
    }

    /// Why a dialog takes its responsible from card `wc`: the card, the others checked, and how
    /// a change of the dialog itself was weighed.
    fn crm_reason(&self, case: &Case, wc: CardId, rule: Rule, employee: EmployeeId) -> Reason {
        let (card, dialog) = (self.card(&wc), case.dialog);
        let others: Vec<String> = case
            .e_in
            .iter()
            .filter(|c| **c != wc)
            .map(|c| format!("{c} at {}", text::time(self.card(c).changed_at)))
            .collect();
        let mut detail = format!(
            "{wc}: responsible {}, changed {}, is the latest-changed card checked for this dialog",
            text::user(card.responsible),
            text::time(card.changed_at)
        );
        if !others.is_empty() {
            detail.push_str(&format!("; others: {}", others.join(", ")));
        }
        if case.d_changed && rule == Rule::CrmChanged && dialog.responsible == Some(employee) {
            detail.push_str(&format!(
                "; the dialog also changed {}, to the same person (rule 7)",
                text::time(dialog.changed_at)
            ));
        } else if case.d_changed && rule == Rule::CrmChanged {
            detail.push_str(&format!(
                "; the dialog also changed {} and the CRM side won (conflict = {}, clock_skew = {} s)",
                text::time(dialog.changed_at),
                self.policy.conflict,
                self.policy.clock_skew_secs
            ));
        }
        if rule == Rule::DialogOpened {
            detail.push_str("; the dialog was opened");
        }
        Reason {
            rule,
            source: RecordId::Card(wc),
            source_changed_at: card.changed_at,
            detail,
        }
    }

    /// Rule 4: the cards in `E_out` follow the responsible the dialog takes from card `wc`.
    fn cascade(&mut self, case: &Case, wc: CardId, rule: Rule) {
        let card = self.card(&wc).clone();
        let d = case.d;
        let cascade_rule = if rule == Rule::Bootstrap {
            Rule::Bootstrap
        } else {
            Rule::Cascade
        };
        for c in case.e_out.iter().copied().filter(|c| *c != wc) {
            self.proposals.entry(c).or_default().push(Proposal {
                value: card.responsible,
                time: card.changed_at,
                via: d.clone(),
                reason: Reason {
                    rule: cascade_rule,
                    source: RecordId::Card(wc),
                    source_changed_at: card.changed_at,
                    detail: format!("{d} was assigned from {wc} ({rule}); linked cards follow it"),
                },
                holds: vec![RecordId::Card(c), RecordId::Card(wc)],
                target_change: TargetChange::CardVsCard,
            });
        }
    }

    /// Rule 3 (and bootstrap `chat`): cards in `E_out` take the dialog's responsible.
    fn assign_cards_from_dialog(&mut self, case: &Case, first_run: bool) {
        let (d, dialog, e_in, e_out) = (case.d, case.dialog, case.e_in, case.e_out);
        if e_out.is_empty() {
            return;
        }
        let subject = RecordId::Dialog(d.clone());
        let Some(employee) = dialog.responsible else {
            self.park(
                subject,
                None,
                ParkReason::NoResponsible,
                Trigger::DialogChanged,
            );
            return;
        };
        let Some(user) = self.users.to_crm(employee) else {
            self.park(
                subject,
                None,
                ParkReason::UnmappedEmployee(employee),
                Trigger::DialogChanged,
            );
            return;
        };
        let rule = if first_run {
            Rule::Bootstrap
        } else {
            Rule::DialogChanged
        };
        for c in e_out.iter().copied() {
            let mut detail = format!(
                "{d}: responsible {} changed {} (in Kommo: {})",
                text::employee(Some(employee)),
                text::time(dialog.changed_at),
                text::user(user)
            );
            if let Some(wc) = self
                .latest_changed(e_in)
                .filter(|wc| self.changed_for(d, wc))
            {
                detail.push_str(&format!(
                    "; {wc} also changed {} and the dialog won (conflict = {}, clock_skew = {} s)",
                    text::time(self.card(&wc).changed_at),
                    self.policy.conflict,
                    self.policy.clock_skew_secs
                ));
            }
            self.proposals.entry(c).or_default().push(Proposal {
                value: user,
                time: dialog.changed_at,
                via: d.clone(),
                reason: Reason {
                    rule,
                    source: RecordId::Dialog(d.clone()),
                    source_changed_at: dialog.changed_at,
                    detail,
                },
                holds: vec![RecordId::Card(c), RecordId::Dialog(d.clone())],
                target_change: if e_in.contains(&c) {
                    TargetChange::Settled
                } else {
                    TargetChange::ChatVsCard
                },
            });
        }
    }

    /// Rule 6 (several dialogs, one card: the latest-changed dialog wins), then the card writes.
    fn resolve_card_proposals(&mut self, first_run: bool) {
        let proposals = std::mem::take(&mut self.proposals);
        for (c, mut props) in proposals {
            props.sort_by_key(|p| (Reverse(p.time), p.via.clone()));
            let distinct: BTreeSet<KommoUserId> = props.iter().map(|p| p.value).collect();
            let best = props.swap_remove(0);
            let card = self.card(&c).clone();
            if card.deleted {
                self.park(
                    RecordId::Dialog(best.via.clone()),
                    Some(RecordId::Card(c)),
                    ParkReason::CardDeleted,
                    match &best.reason.source {
                        RecordId::Card(s) => Trigger::CardChanged(*s),
                        RecordId::Dialog(_) => Trigger::DialogChanged,
                    },
                );
                continue;
            }
            if card.responsible == best.value {
                continue;
            }
            // A target that a person changed after the source changed keeps its value: the later
            // change wins here too (rule 5 applied to targets). With `conflict = chat`, a dialog's
            // change still overwrites; with `conflict = crm` a changed card is never overwritten by
            // a dialog.
            if !first_run && self.card_value_changed.contains(&c) {
                let keep = match (best.target_change, self.policy.conflict) {
                    (TargetChange::Settled, _) => false,
                    (TargetChange::ChatVsCard, ConflictPolicy::Chat) => false,
                    (TargetChange::ChatVsCard, ConflictPolicy::Crm) => true,
                    // Two clocks: the dialog must be newer by clock_skew; a tie goes to the CRM.
                    (TargetChange::ChatVsCard, ConflictPolicy::Newest) => {
                        best.time - card.changed_at < self.policy.clock_skew_secs
                    }
                    // One clock (Kommo's): strictly later wins.
                    (TargetChange::CardVsCard, _) => card.changed_at > best.time,
                };
                if keep {
                    continue;
                }
            }
            let mut reason = best.reason;
            if distinct.len() > 1 {
                reason.detail.push_str(&format!(
                    "; rule 6: {} linked dialogs proposed different values, {} changed latest",
                    distinct.len(),
                    best.via
                ));
            }
            self.plan.writes.push(Write {
                target: Target::Card {
                    id: c,
                    from: Some(card.responsible).filter(|u| !u.is_nobody()),
                    to: best.value,
                },
                reason,
                holds: best.holds,
            });
        }
        // Dialog targets that were not observed still need a settle entry.
        let targets: Vec<DialogKey> = self
            .plan
            .writes
            .iter()
            .filter_map(|w| match &w.target {
                Target::Dialog { key, .. } => Some(key.clone()),
                Target::Card { .. } => None,
            })
            .collect();
        for d in targets {
            let st = self.dialogs[&d].clone();
            self.plan.settle_dialogs.entry(d).or_insert(st);
        }
    }
}

/// The base changes a cycle commits at its end (SPEC section 1, "base").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// New card bases.
    pub cards: BTreeMap<CardId, CardState>,
    /// New dialog bases.
    pub dialogs: BTreeMap<DialogKey, DialogState>,
    /// Parked entries to remove (by key).
    pub unpark: Vec<String>,
    /// Parked entries to add.
    pub park: Vec<Parked>,
    /// Records held back because a write involving them failed or was dropped: decided again next
    /// cycle.
    pub held: BTreeSet<RecordId>,
}

/// Computes the new bases once the plan ran: each observed record's base becomes the value the
/// cycle settled on (the confirmed written value for a target, the observed value otherwise);
/// records involved in a write that was not confirmed keep their old base. `confirmed[i]` tells
/// whether `plan.writes[i]` was confirmed. A braked or dry-run cycle must not call this.
pub fn settle(snap: &Snapshot, plan: &Plan, confirmed: &[bool], now: i64) -> Settlement {
    let mut plan = plan.clone();
    settle_owned(snap, &mut plan, confirmed, now)
}

/// [`settle`] moving the new bases out of the plan (`settle_cards` and `settle_dialogs` are left
/// empty) instead of copying them.
pub fn settle_owned(snap: &Snapshot, plan: &mut Plan, confirmed: &[bool], now: i64) -> Settlement {
    let mut held = BTreeSet::new();
    let mut to_card: BTreeMap<CardId, KommoUserId> = BTreeMap::new();
    let mut to_dialog: BTreeMap<DialogKey, EmployeeId> = BTreeMap::new();
    for (i, w) in plan.writes.iter().enumerate() {
        if !confirmed.get(i).copied().unwrap_or(false) {
            held.extend(w.holds.iter().cloned());
            continue;
        }
        match &w.target {
            Target::Card { id, to, .. } => {
                to_card.insert(*id, *to);
            }
            Target::Dialog { key, to, .. } => {
                to_dialog.insert(key.clone(), *to);
            }
        }
    }
    // the plan's maps become the settlement's, changed in place (no second copy of the bases)
    let mut out = Settlement {
        cards: std::mem::take(&mut plan.settle_cards),
        dialogs: std::mem::take(&mut plan.settle_dialogs),
        ..Settlement::default()
    };
    if !held.is_empty() {
        out.cards
            .retain(|id, _| !held.contains(&RecordId::Card(*id)));
        out.dialogs
            .retain(|key, _| !held.contains(&RecordId::Dialog(key.clone())));
    }
    for (id, to) in &to_card {
        if let Some(st) = out.cards.get_mut(id) {
            st.responsible = *to;
            st.changed_at = now;
        }
    }
    for (key, to) in &to_dialog {
        if let Some(st) = out.dialogs.get_mut(key) {
            st.responsible = Some(*to);
            st.changed_at = now;
        }
    }
    for (k, p) in &snap.parked {
        if plan.decided.contains(&p.subject) {
            out.unpark.push(k.clone());
        }
    }
    out.park = plan
        .parked
        .iter()
        .filter(|p| !held.contains(&p.subject))
        .cloned()
        .collect();
    out.held = held;
    out
}

impl Snapshot {
    /// Applies a settlement (what the store does durably), and marks the bootstrap done.
    pub fn apply(&mut self, s: &Settlement) {
        for (id, st) in &s.cards {
            self.cards.insert(*id, st.clone());
        }
        for (k, st) in &s.dialogs {
            self.dialogs.insert(k.clone(), st.clone());
        }
        for k in &s.unpark {
            self.parked.remove(k);
        }
        for p in &s.park {
            self.parked.insert(p.key(), p.clone());
        }
        self.held = s.held.clone();
        self.bootstrapped = true;
    }
}
