//! The records that cross the API ports, in the daemon's terms. The adapters decode their APIs'
//! wire formats and convert them into these (Kommo's `KommoCard` and `KommoEvent` inside
//! `src/kommo/`, ChatApp's `Chat` inside `src/chatapp/`); the cycle sees only these.

use crate::core::model::{
    CardId, CardKind, CardObs, DialogKey, DialogObs, KommoUserId, LeadStage, Pipelines, StageKind,
    classify_status, stage_or_open,
};
use std::collections::{BTreeMap, BTreeSet};

/// A card as the Kommo port reads it: the daemon's view of it (the adapter read its custom
/// fields through the configured field map), with a lead's raw status, which the cycle classifies
/// with the pipelines table it keeps (the table can be stale; the cycle reads it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRead {
    /// Its kind.
    pub kind: CardKind,
    /// Kommo's id.
    pub id: u64,
    /// Last update (unix seconds).
    pub updated_at: i64,
    /// Leads: `status_id` as Kommo sent it (0 when absent).
    pub status: u64,
    /// Leads: `pipeline_id` as Kommo sent it (0 when absent).
    pub pipeline: u64,
    /// The view at the default stage; its `flag` is the sync flag of the card's kind (for a lead:
    /// of an ordinary lead).
    pub view: CardObs,
    /// Leads: the sync flag of an incoming lead (its own flag field, `[sync.flag_fields]
    /// incoming_lead`); the same as `view.flag` for other kinds.
    pub incoming_flag: bool,
}

impl CardRead {
    /// A lead's stage by `pipelines`; `None` for a lead whose status the table does not know.
    /// Other kinds have the default stage.
    pub fn lead_stage(&self, pipelines: &Pipelines) -> Option<LeadStage> {
        if self.kind != CardKind::Lead {
            return Some(LeadStage::default());
        }
        Some(LeadStage {
            pipeline: self.pipeline,
            status: self.status,
            kind: classify_status(self.status, pipelines)?,
        })
    }

    /// A lead's stage by `pipelines`, or (a status the table does not know, after it was read
    /// again) an open stage: the one fallback for unknown statuses.
    pub fn lead_stage_or_open(&self, pipelines: &Pipelines) -> LeadStage {
        if self.kind != CardKind::Lead {
            return LeadStage::default();
        }
        stage_or_open(self.pipeline, self.status, pipelines)
    }

    /// Its id with its kind.
    pub fn card_id(&self) -> CardId {
        CardId::new(self.kind, self.id)
    }

    /// The daemon's view of the card at `stage` (an incoming lead takes its own flag).
    pub fn into_obs(self, stage: LeadStage) -> CardObs {
        let mut o = self.view;
        if self.kind == CardKind::Lead && stage.kind == StageKind::Incoming {
            o.flag = self.incoming_flag;
        }
        o.lead = stage;
        o
    }

    /// [`CardRead::into_obs`] of a copy.
    pub fn to_obs(&self, stage: LeadStage) -> CardObs {
        self.clone().into_obs(stage)
    }
}

/// A Kommo event as the cycle uses it: which card, when, and the new responsible or lead status
/// it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardEvent {
    /// Kommo's event id (a string).
    pub id: String,
    /// The card; `None` for an entity kind the daemon does not know.
    pub card: Option<CardId>,
    /// When (unix seconds).
    pub at: i64,
    /// The new responsible (`entity_responsible_changed`; a `null` id is nobody: 0).
    pub responsible: Option<KommoUserId>,
    /// The new `(pipeline, status)` (`lead_status_changed`).
    pub status: Option<(u64, u64)>,
}

/// What a PATCH of cards' responsible did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchOutcome {
    /// The ids the answer lists as changed.
    pub confirmed: BTreeSet<u64>,
    /// The ids Kommo refused, each with its codes and details (scrubbed).
    pub refused: BTreeMap<u64, String>,
}

/// A chat as the ChatApp port reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRead {
    /// The dialog's key.
    pub key: DialogKey,
    /// The daemon's view of it (closed, responsible, activity time, phone).
    pub view: DialogObs,
}
