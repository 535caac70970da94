//! Lead pipelines and their statuses (stages): the world model, the control methods of
//! [`KommoSim`] that build pipelines and move leads between stages, and the
//! `/api/v4/leads/pipelines` endpoints. See the parent module docs for the decisions.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{CardKind, HAL, KState, KommoSim};
use crate::sim::faults::kommo_problem;
use crate::sim::util::json_response;

/// Id of the main pipeline every new simulator has.
pub const MAIN_PIPELINE_ID: u64 = 1000;
/// The main pipeline's "Incoming leads" (unsorted, `type: 1`) status.
pub const STATUS_INCOMING: u64 = 1001;
/// The main pipeline's first normal status ("First contact"): where a lead added without a
/// status is.
pub const STATUS_FIRST_CONTACT: u64 = 1002;
/// The main pipeline's second normal status ("Negotiation").
pub const STATUS_NEGOTIATION: u64 = 1003;
/// The system status "Closed - won", the same id in every pipeline.
pub const STATUS_WON: u64 = 142;
/// The system status "Closed - lost", the same id in every pipeline.
pub const STATUS_LOST: u64 = 143;

const PALETTE: [&str; 6] = [
    "#99ccff", "#ffcc66", "#ffff99", "#deff81", "#ccc8f9", "#fffeb2",
];

/// One status (stage) of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimStatus {
    /// Status id (142 and 143 are the same in every pipeline; others are unique per account).
    pub id: u64,
    /// Display name.
    pub name: String,
    /// `sort` (10, 20, ... in the given order; 10000 for 142, 11000 for 143).
    pub sort: u64,
    /// `type`: 1 for the "Incoming leads" (unsorted) stage, 0 otherwise.
    pub status_type: u8,
    /// `color`.
    pub color: String,
    /// `is_editable` (false for the incoming stage, 142 and 143).
    pub is_editable: bool,
}

/// A lead pipeline with its statuses, in `sort` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPipeline {
    /// Pipeline id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// `sort` (1 for the main pipeline, then in creation order).
    pub sort: u64,
    /// `is_main` (only the default pipeline).
    pub is_main: bool,
    /// `is_archive`.
    pub is_archive: bool,
    /// Statuses in `sort` order; 142 and 143 are always the last two.
    pub statuses: Vec<SimStatus>,
}

impl SimPipeline {
    /// The pipeline's "Incoming leads" (`type: 1`) status, if it has one.
    pub fn incoming_status(&self) -> Option<u64> {
        self.statuses
            .iter()
            .find(|s| s.status_type == 1)
            .map(|s| s.id)
    }

    /// The first normal (`type: 0`, not 142/143) status: where a new or accepted lead goes.
    pub fn first_open_status(&self) -> Option<u64> {
        self.statuses
            .iter()
            .find(|s| s.status_type == 0 && !is_closed(s.id))
            .map(|s| s.id)
    }

    /// Whether the pipeline has this status.
    pub fn has_status(&self, status_id: u64) -> bool {
        self.statuses.iter().any(|s| s.id == status_id)
    }

    /// `is_unsorted_on`: whether the pipeline has an incoming stage.
    pub fn is_unsorted_on(&self) -> bool {
        self.incoming_status().is_some()
    }

    fn build(id: u64, name: &str, sort: u64, statuses: &[(u64, &str, u8)]) -> SimPipeline {
        let mut out = Vec::new();
        let mut colour = 0;
        for (i, (sid, sname, ty)) in statuses
            .iter()
            .filter(|(sid, _, _)| !is_closed(*sid))
            .enumerate()
        {
            assert!(
                *ty <= 1,
                "status type must be 0 or 1, got {ty} for status {sid}"
            );
            assert!(
                !out.iter().any(|s: &SimStatus| s.id == *sid),
                "status {sid} given twice in pipeline {id}"
            );
            let color = if *ty == 1 {
                "#c1c1c1".to_string()
            } else {
                colour += 1;
                PALETTE[(colour - 1) % PALETTE.len()].to_string()
            };
            out.push(SimStatus {
                id: *sid,
                name: (*sname).to_string(),
                sort: 10 * (i as u64 + 1),
                status_type: *ty,
                color,
                is_editable: *ty == 0,
            });
        }
        assert!(
            out.iter().filter(|s| s.status_type == 1).count() <= 1,
            "pipeline {id} has more than one type-1 status"
        );
        let closed_name = |sid: u64, default: &str| {
            statuses
                .iter()
                .find(|(s, _, _)| *s == sid)
                .map_or_else(|| default.to_string(), |(_, n, _)| (*n).to_string())
        };
        out.push(SimStatus {
            id: STATUS_WON,
            name: closed_name(STATUS_WON, "Closed - won"),
            sort: 10_000,
            status_type: 0,
            color: "#CCFF66".to_string(),
            is_editable: false,
        });
        out.push(SimStatus {
            id: STATUS_LOST,
            name: closed_name(STATUS_LOST, "Closed - lost"),
            sort: 11_000,
            status_type: 0,
            color: "#D5D8DB".to_string(),
            is_editable: false,
        });
        SimPipeline {
            id,
            name: name.to_string(),
            sort,
            is_main: false,
            is_archive: false,
            statuses: out,
        }
    }
}

/// Whether a status closes a lead (142 won, 143 lost).
pub(crate) fn is_closed(status_id: u64) -> bool {
    status_id == STATUS_WON || status_id == STATUS_LOST
}

/// The pipelines of a new simulator: the main one only.
pub(crate) fn default_pipelines() -> BTreeMap<u64, SimPipeline> {
    let mut main = SimPipeline::build(
        MAIN_PIPELINE_ID,
        "Main pipeline",
        1,
        &[
            (STATUS_INCOMING, "Incoming leads", 1),
            (STATUS_FIRST_CONTACT, "First contact", 0),
            (STATUS_NEGOTIATION, "Negotiation", 0),
        ],
    );
    main.is_main = true;
    BTreeMap::from([(MAIN_PIPELINE_ID, main)])
}

impl KState {
    /// Where a lead without a status is: the main pipeline's first normal status.
    pub(crate) fn default_status(&self) -> (u64, u64) {
        self.pipelines
            .values()
            .find(|p| p.is_main)
            .and_then(|p| p.first_open_status().map(|s| (p.id, s)))
            .unwrap_or((MAIN_PIPELINE_ID, STATUS_FIRST_CONTACT))
    }

    /// Moves a lead to `(pipeline, status)`: bumps `updated_at` and `updated_by` when `by` is
    /// given (a human or API change) and appends a `lead_status_changed` event if the stage
    /// changed; `closed_at` follows the stage either way. Returns whether the stage changed.
    pub(crate) fn move_lead(
        &mut self,
        lead_id: u64,
        to: (u64, u64),
        by: Option<u64>,
        now: i64,
    ) -> bool {
        let default = self.default_status();
        let Some(e) = self.cards[CardKind::Lead.idx()].get_mut(&lead_id) else {
            return false;
        };
        let before = e.card.status.unwrap_or(default);
        e.card.status = Some(to);
        if is_closed(to.1) {
            if !is_closed(before.1) || e.card.closed_at.is_none() {
                e.card.closed_at = Some(now);
            }
        } else {
            e.card.closed_at = None;
        }
        let Some(by) = by else {
            return before != to;
        };
        e.card.updated_at = now;
        e.updated_by = by;
        if before != to {
            self.push_event(
                "lead_status_changed",
                CardKind::Lead,
                lead_id,
                by,
                now,
                json!([{"lead_status": {"id": before.1, "pipeline_id": before.0}}]),
                json!([{"lead_status": {"id": to.1, "pipeline_id": to.0}}]),
            );
        }
        before != to
    }

    /// Panics unless `pipeline_id` exists and has `status_id`; returns the status type.
    pub(crate) fn must_status(&self, pipeline_id: u64, status_id: u64) -> u8 {
        let p = self
            .pipelines
            .get(&pipeline_id)
            .unwrap_or_else(|| panic!("unknown Kommo pipeline {pipeline_id}"));
        p.statuses
            .iter()
            .find(|s| s.id == status_id)
            .unwrap_or_else(|| panic!("pipeline {pipeline_id} has no status {status_id}"))
            .status_type
    }
}

impl KommoSim {
    /// Adds (or replaces) a pipeline. `statuses` are `(status_id, name, type)` in display order
    /// (`type` 1 is the "Incoming leads" stage, at most one; 0 a normal stage); the system
    /// statuses 142 and 143 are appended automatically (giving them in the list only renames
    /// them). A replaced pipeline keeps its `sort` and `is_main`; leads keep their stage even if
    /// it no longer exists.
    ///
    /// # Panics
    /// On a status type other than 0/1, two type-1 statuses, a status id given twice, or a status
    /// id (other than 142/143) that another pipeline already uses.
    pub fn add_pipeline(&self, id: u64, name: &str, statuses: &[(u64, &str, u8)]) {
        let mut st = self.lock();
        for (sid, _, _) in statuses.iter().filter(|(s, _, _)| !is_closed(*s)) {
            if let Some(other) = st
                .pipelines
                .values()
                .find(|p| p.id != id && p.has_status(*sid))
            {
                panic!("status {sid} already belongs to pipeline {}", other.id);
            }
        }
        let (sort, is_main) = match st.pipelines.get(&id) {
            Some(p) => (p.sort, p.is_main),
            None => (
                st.pipelines.values().map(|p| p.sort).max().unwrap_or(0) + 1,
                false,
            ),
        };
        let mut p = SimPipeline::build(id, name, sort, statuses);
        p.is_main = is_main;
        st.pipelines.insert(id, p);
    }

    /// Marks a pipeline archived (`is_archive`) or not.
    ///
    /// # Panics
    /// On an unknown pipeline.
    pub fn set_pipeline_archived(&self, id: u64, archived: bool) {
        self.lock()
            .pipelines
            .get_mut(&id)
            .unwrap_or_else(|| panic!("unknown Kommo pipeline {id}"))
            .is_archive = archived;
    }

    /// All pipelines, in `sort` order.
    pub fn pipelines(&self) -> Vec<SimPipeline> {
        let mut v: Vec<SimPipeline> = self.lock().pipelines.values().cloned().collect();
        v.sort_by_key(|p| (p.sort, p.id));
        v
    }

    /// One pipeline.
    pub fn pipeline(&self, id: u64) -> Option<SimPipeline> {
        self.lock().pipelines.get(&id).cloned()
    }

    /// The main pipeline ([`MAIN_PIPELINE_ID`] unless replaced).
    pub fn main_pipeline(&self) -> SimPipeline {
        let st = self.lock();
        st.pipelines
            .values()
            .find(|p| p.is_main)
            .or_else(|| st.pipelines.values().next())
            .cloned()
            .expect("the simulator always has a main pipeline")
    }

    /// The stage of a lead: `(pipeline_id, status_id)`.
    pub fn status_of(&self, lead_id: u64) -> Option<(u64, u64)> {
        let st = self.lock();
        let default = st.default_status();
        st.cards[CardKind::Lead.idx()]
            .get(&lead_id)
            .map(|e| e.card.status.unwrap_or(default))
    }

    /// A person moves a lead to another stage in the UI: bumps `updated_at`, sets
    /// `updated_by = by_user`, sets `closed_at` to now when the stage is 142/143 (clears it when
    /// the lead is reopened) and, only if the stage changed, appends a `lead_status_changed`
    /// event (`created_by = by_user`).
    ///
    /// # Panics
    /// On an unknown lead, pipeline or status of that pipeline, or a `type: 1` (incoming) status:
    /// a person cannot move a lead into "Incoming leads".
    pub fn set_status_as_human(&self, lead_id: u64, pipeline_id: u64, status_id: u64, by: u64) {
        self.with_card("leads", lead_id, |st, _, now| {
            assert!(
                st.must_status(pipeline_id, status_id) == 0,
                "a person cannot move a lead into the incoming stage {status_id}"
            );
            st.move_lead(lead_id, (pipeline_id, status_id), Some(by), now);
        });
    }

    /// Moves a lead to a stage without an event and without touching `updated_at` (world
    /// setup); `closed_at` follows the stage. Any status of the pipeline is allowed.
    ///
    /// # Panics
    /// On an unknown lead, pipeline or status of that pipeline.
    pub fn set_status_silently(&self, lead_id: u64, pipeline_id: u64, status_id: u64) {
        self.with_card("leads", lead_id, |st, _, now| {
            st.must_status(pipeline_id, status_id);
            st.move_lead(lead_id, (pipeline_id, status_id), None, now);
        });
    }

    pub(super) fn pipelines_list(&self, st: &KState) -> Response {
        let base = &self.shared.base_url;
        let mut ps: Vec<&SimPipeline> = st.pipelines.values().collect();
        ps.sort_by_key(|p| (p.sort, p.id));
        let items: Vec<Value> = ps
            .iter()
            .map(|p| pipeline_json(p, base, self.shared.account_id))
            .collect();
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "_total_items": items.len(),
                "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines")}},
                "_embedded": {"pipelines": items},
            }),
        )
    }

    pub(super) fn pipeline_get(&self, st: &KState, id: &str) -> Response {
        match id.parse::<u64>().ok().and_then(|i| st.pipelines.get(&i)) {
            Some(p) => json_response(
                StatusCode::OK,
                HAL,
                &pipeline_json(p, &self.shared.base_url, self.shared.account_id),
            ),
            None => kommo_problem(StatusCode::NOT_FOUND, "Pipeline not found"),
        }
    }

    pub(super) fn statuses_list(&self, st: &KState, id: &str) -> Response {
        let Some(p) = id.parse::<u64>().ok().and_then(|i| st.pipelines.get(&i)) else {
            return kommo_problem(StatusCode::NOT_FOUND, "Pipeline not found");
        };
        let base = &self.shared.base_url;
        let items: Vec<Value> = p
            .statuses
            .iter()
            .map(|s| status_json(s, p.id, base, self.shared.account_id))
            .collect();
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "_total_items": items.len(),
                "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines/{}/statuses", p.id)}},
                "_embedded": {"statuses": items},
            }),
        )
    }

    pub(super) fn status_get(&self, st: &KState, id: &str, sid: &str) -> Response {
        let found = id
            .parse::<u64>()
            .ok()
            .and_then(|i| st.pipelines.get(&i))
            .and_then(|p| {
                let sid = sid.parse::<u64>().ok()?;
                p.statuses.iter().find(|s| s.id == sid).map(|s| (p.id, s))
            });
        match found {
            Some((pid, s)) => json_response(
                StatusCode::OK,
                HAL,
                &status_json(s, pid, &self.shared.base_url, self.shared.account_id),
            ),
            None => kommo_problem(StatusCode::NOT_FOUND, "Status not found"),
        }
    }
}

fn status_json(s: &SimStatus, pipeline_id: u64, base: &str, account_id: u64) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "sort": s.sort,
        "is_editable": s.is_editable,
        "pipeline_id": pipeline_id,
        "color": s.color,
        "type": s.status_type,
        "account_id": account_id,
        "_links": {"self": {"href":
            format!("{base}/api/v4/leads/pipelines/{pipeline_id}/statuses/{}", s.id)}},
    })
}

fn pipeline_json(p: &SimPipeline, base: &str, account_id: u64) -> Value {
    let statuses: Vec<Value> = p
        .statuses
        .iter()
        .map(|s| status_json(s, p.id, base, account_id))
        .collect();
    json!({
        "id": p.id,
        "name": p.name,
        "sort": p.sort,
        "is_main": p.is_main,
        "is_unsorted_on": p.is_unsorted_on(),
        "is_archive": p.is_archive,
        "account_id": account_id,
        "_links": {"self": {"href": format!("{base}/api/v4/leads/pipelines/{}", p.id)}},
        "_embedded": {"statuses": statuses},
    })
}

/// The `filter[statuses][N][pipeline_id|status_id]` groups of a query, by `N` (a group may
/// carry only one of the two).
pub(crate) fn statuses_filter(params: &[(String, String)]) -> Vec<(Option<u64>, Option<u64>)> {
    let mut groups: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
    for (k, v) in params {
        let Some(rest) = k.strip_prefix("filter[statuses][") else {
            continue;
        };
        let Some((idx, field)) = rest.split_once("][") else {
            continue;
        };
        let Ok(val) = v.trim().parse::<u64>() else {
            continue;
        };
        let g = groups.entry(idx.to_string()).or_default();
        match field {
            "pipeline_id]" => g.0 = Some(val),
            "status_id]" => g.1 = Some(val),
            _ => {}
        }
    }
    groups
        .into_values()
        .filter(|(p, s)| p.is_some() || s.is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::util::parse_query;

    #[test]
    fn default_pipeline_shape() {
        let ps = default_pipelines();
        let main = &ps[&MAIN_PIPELINE_ID];
        assert!(main.is_main);
        let ids: Vec<u64> = main.statuses.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            vec![
                STATUS_INCOMING,
                STATUS_FIRST_CONTACT,
                STATUS_NEGOTIATION,
                STATUS_WON,
                STATUS_LOST
            ]
        );
        assert_eq!(main.incoming_status(), Some(STATUS_INCOMING));
        assert_eq!(main.first_open_status(), Some(STATUS_FIRST_CONTACT));
        assert!(!main.statuses[0].is_editable);
    }

    #[test]
    fn closed_statuses_are_appended_once() {
        let p = SimPipeline::build(7, "P", 2, &[(143, "Lost it", 0), (70, "A", 0)]);
        let ids: Vec<u64> = p.statuses.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![70, 142, 143]);
        assert_eq!(p.statuses[2].name, "Lost it");
        assert_eq!(p.incoming_status(), None);
        assert!(!p.is_unsorted_on());
    }

    #[test]
    fn statuses_filter_groups() {
        let q = parse_query(
            "filter[statuses][0][pipeline_id]=1&filter[statuses][0][status_id]=2&filter[statuses][1][status_id]=3&filter[statuses][2][x]=4",
        );
        assert_eq!(
            statuses_filter(&q),
            vec![(Some(1), Some(2)), (None, Some(3))]
        );
    }
}
