//! A small builder of engine worlds shared by the engine tests (pure: no I/O).
#![allow(dead_code)]

use chatapp_kommo_sync::core::engine::{
    Bootstrap, ConflictPolicy, Observations, Plan, Policy, Snapshot, plan, settle,
};
use chatapp_kommo_sync::core::model::{
    CardId, CardKind, CardObs, CardState, DialogKey, DialogObs, DialogRef, DialogState, EmployeeId,
    KommoUserId, LeadStage, RecordId, StageKind,
};

/// Pipeline A of the lead-stage scenarios, with its incoming (type 1) status.
pub const PIPE_A: u64 = 1000;
/// Pipeline B.
pub const PIPE_B: u64 = 2000;

/// An open stage of `pipeline`.
pub fn open_in(pipeline: u64) -> LeadStage {
    LeadStage {
        pipeline,
        status: pipeline + 2,
        kind: StageKind::Open,
    }
}

/// The incoming ("Incoming leads") stage of `pipeline`.
pub fn incoming_in(pipeline: u64) -> LeadStage {
    LeadStage {
        pipeline,
        status: pipeline + 1,
        kind: StageKind::Incoming,
    }
}

/// Won (142) in `pipeline`.
pub fn won_in(pipeline: u64) -> LeadStage {
    LeadStage {
        pipeline,
        status: 142,
        kind: StageKind::Closed,
    }
}

/// Lost (143) in `pipeline`.
pub fn lost_in(pipeline: u64) -> LeadStage {
    LeadStage {
        pipeline,
        status: 143,
        kind: StageKind::Closed,
    }
}
use chatapp_kommo_sync::core::usermap::UserMap;

/// Kommo user `n` <-> employee `100 + n`, for n in 1..=9.
pub fn users() -> UserMap {
    let pairs: Vec<(KommoUserId, EmployeeId)> = (1..=9)
        .map(|n| (KommoUserId(n), EmployeeId(100 + n)))
        .collect();
    UserMap::build(&pairs, false, &[], &[])
}

pub fn policy(crm_to_chat: &[CardKind], chat_to_crm: &[CardKind]) -> Policy {
    Policy {
        crm_to_chat: crm_to_chat.iter().copied().map(Into::into).collect(),
        chat_to_crm: chat_to_crm.iter().copied().map(Into::into).collect(),
        leads: Default::default(),
        conflict: ConflictPolicy::Newest,
        clock_skew_secs: 5,
        bootstrap: Bootstrap::Adopt,
        max_writes_per_cycle: 500,
        match_phone: true,
    }
}

pub fn dkey(n: u64) -> DialogKey {
    DialogKey::new(1, "grWhatsApp", &format!("7999000000{n}@c.us"))
}

pub fn contact(id: u64) -> CardId {
    CardId::new(CardKind::Contact, id)
}
pub fn lead(id: u64) -> CardId {
    CardId::new(CardKind::Lead, id)
}

/// A world: the snapshot (bases) plus what the next cycle will observe.
#[derive(Clone)]
pub struct World {
    pub snap: Snapshot,
    pub obs: Observations,
    pub policy: Policy,
    pub users: UserMap,
}

impl World {
    pub fn new(policy: Policy) -> Self {
        World {
            snap: Snapshot {
                bootstrapped: true,
                ..Snapshot::default()
            },
            obs: Observations {
                now: 10_000,
                ..Observations::default()
            },
            policy,
            users: users(),
        }
    }

    /// A contact in the base, linked to dialog `dialog`, responsible `user` changed at `t`.
    pub fn base_contact(&mut self, id: u64, user: u64, t: i64, dialog: Option<u64>) -> &mut Self {
        self.snap.cards.insert(
            contact(id),
            CardState {
                responsible: KommoUserId(user),
                changed_at: t,
                flag: true,
                deleted: false,
                contacts: vec![],
                dialog_refs: dialog
                    .map(|d| DialogRef::Full(dkey(d)))
                    .into_iter()
                    .collect(),
                phones: vec![],
                lead: Default::default(),
            },
        );
        self
    }

    /// A lead in the base, linked to `contacts`.
    pub fn base_lead(&mut self, id: u64, user: u64, t: i64, contacts: &[u64]) -> &mut Self {
        self.snap.cards.insert(
            lead(id),
            CardState {
                responsible: KommoUserId(user),
                changed_at: t,
                flag: true,
                deleted: false,
                contacts: contacts.to_vec(),
                dialog_refs: vec![],
                phones: vec![],
                lead: Default::default(),
            },
        );
        self
    }

    /// Puts a lead of the base at `stage` (its base and, when observed, its observation).
    pub fn base_stage(&mut self, id: u64, stage: LeadStage) -> &mut Self {
        if let Some(b) = self.snap.cards.get_mut(&lead(id)) {
            b.lead = stage;
        }
        if let Some(o) = self.obs.cards.get_mut(&lead(id)) {
            o.lead = stage;
        }
        self
    }

    /// A person moved a lead to `stage` (observed this cycle; its responsible as before).
    pub fn stage_changed(&mut self, id: u64, stage: LeadStage) -> &mut Self {
        self.observe_card(lead(id), |o| o.lead = stage)
    }

    /// A dialog in the base.
    pub fn base_dialog(&mut self, n: u64, employee: Option<u64>, t: i64) -> &mut Self {
        self.snap.dialogs.insert(
            dkey(n),
            DialogState {
                responsible: employee.map(EmployeeId),
                changed_at: t,
                last_time: t,
                session: 1,
                closed: false,
                phone: None,
            },
        );
        self
    }

    /// Observe a card as its base says, with some fields changed by `f`.
    pub fn observe_card(&mut self, id: CardId, f: impl FnOnce(&mut CardObs)) -> &mut Self {
        let b = self.snap.cards.get(&id).cloned();
        let mut o = self.obs.cards.get(&id).cloned().unwrap_or_else(|| {
            let b = b.expect("observe_card of an unknown card: use observe_new_card");
            CardObs {
                responsible: b.responsible,
                flag: b.flag,
                deleted: b.deleted,
                contacts: b.contacts.clone(),
                dialog_refs: b.dialog_refs.clone(),
                phones: b.phones.clone(),
                lead: b.lead,
                event_time: None,
            }
        });
        f(&mut o);
        self.obs.cards.insert(id, o);
        self
    }

    /// A person set a card's responsible at time `t` (an event exists).
    pub fn card_changed(&mut self, id: CardId, user: u64, t: i64) -> &mut Self {
        self.observe_card(id, |o| {
            o.responsible = KommoUserId(user);
            o.event_time = Some(t);
        })
    }

    /// Observe a dialog as its base says, with fields changed by `f`.
    pub fn observe_dialog(&mut self, n: u64, f: impl FnOnce(&mut DialogObs)) -> &mut Self {
        let key = dkey(n);
        let mut o = self.obs.dialogs.get(&key).cloned().unwrap_or_else(|| {
            match self.snap.dialogs.get(&key) {
                Some(b) => DialogObs {
                    responsible: b.responsible,
                    last_time: b.last_time,
                    session: b.session,
                    closed: b.closed,
                    phone: b.phone.clone(),
                },
                None => DialogObs {
                    responsible: None,
                    last_time: 0,
                    session: 1,
                    closed: false,
                    phone: None,
                },
            }
        });
        f(&mut o);
        self.obs.dialogs.insert(key, o);
        self
    }

    /// A person (or ChatApp's distribution) set a dialog's responsible at `t`.
    pub fn dialog_changed(&mut self, n: u64, employee: Option<u64>, t: i64) -> &mut Self {
        self.observe_dialog(n, |o| {
            o.responsible = employee.map(EmployeeId);
            o.last_time = t;
        })
    }

    pub fn plan(&self) -> Plan {
        plan(&self.snap, &self.obs, &self.policy, &self.users)
    }

    /// Plans, confirms every write, settles, and starts a new (empty) observation round in which
    /// the targets now hold the written values.
    pub fn run_and_apply(&mut self) -> Plan {
        let p = self.plan();
        let ok = vec![true; p.writes.len()];
        let s = settle(&self.snap, &p, &ok, self.obs.now);
        self.snap.apply(&s);
        self.obs.cards.clear();
        self.obs.dialogs.clear();
        self.obs.now += 60;
        p
    }
}

/// `(target, to)` of each write, as strings for easy asserts.
pub fn writes(p: &Plan) -> Vec<(String, u64)> {
    p.writes
        .iter()
        .map(|w| {
            let t = match &w.target.record() {
                RecordId::Card(c) => c.code_text(),
                RecordId::Dialog(d) => format!("dialog:{}", d.chat_id),
            };
            (t, w.target.to_value().raw())
        })
        .collect()
}
