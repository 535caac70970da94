//! Custom field definitions (`/api/v4/{kind}/custom_fields`): the world model, the control
//! methods of [`KommoSim`] and the endpoints. See the parent module docs for the decisions.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{CardKind, HAL, KState, KommoSim, bad_param};
use crate::sim::faults::kommo_problem;
use crate::sim::util::{href, href_with_page, json_response, no_content, param};

/// Kommo answers at most this many field definitions per page, whatever `limit` asks.
pub const MAX_FIELDS_PAGE: u64 = 50;

/// A custom field definition of one card kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFieldDef {
    /// Field id.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `code` (`PHONE`, `EMAIL`, ...), if any.
    pub code: Option<String>,
    /// `type` (`text`, `multitext`, `checkbox`, `select`, `numeric`, `date`, ...).
    pub field_type: String,
    /// `sort` (500, 501, ... in definition order).
    pub sort: u64,
    /// `enums`: `(enum_id, value)`, in order (`null` in JSON when empty).
    pub enums: Vec<(u64, String)>,
}

impl SimFieldDef {
    fn is_predefined(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("PHONE" | "EMAIL" | "POSITION" | "IM" | "WEB" | "ADDRESS")
        )
    }
}

impl KState {
    /// The defined name of a field, if the field is defined for `kind`.
    pub(crate) fn field_name(&self, kind: CardKind, field_id: u64) -> Option<&str> {
        self.field_defs[kind.idx()]
            .get(&field_id)
            .map(|d| d.name.as_str())
    }
}

impl KommoSim {
    /// Defines (or redefines, keeping its `sort` and enums) a custom field of a card kind. Field
    /// values on cards are independent of definitions: [`SimCard::with_field`](super::SimCard)
    /// defines nothing, and a card may carry a value of an undefined field (a wrong field id on a
    /// real account looks like that); a defined field's `name` is used as the value's
    /// `field_name`.
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn define_field(
        &self,
        kind: &str,
        id: u64,
        name: &str,
        code: Option<&str>,
        field_type: &str,
    ) {
        let kind = CardKind::must(kind);
        let mut st = self.lock();
        st.field_def_seq += 1;
        let seq = st.field_def_seq;
        let defs = &mut st.field_defs[kind.idx()];
        let (sort, enums) = defs
            .get(&id)
            .map_or((499 + seq, Vec::new()), |d| (d.sort, d.enums.clone()));
        defs.insert(
            id,
            SimFieldDef {
                id,
                name: name.to_string(),
                code: code.map(str::to_string),
                field_type: field_type.to_string(),
                sort,
                enums,
            },
        );
    }

    /// Sets the `enums` of a defined field (`select`, `multiselect`, `multitext`, ...).
    ///
    /// # Panics
    /// On an unknown kind or an undefined field.
    pub fn set_field_enums(&self, kind: &str, id: u64, enums: &[(u64, &str)]) {
        let kind = CardKind::must(kind);
        self.lock().field_defs[kind.idx()]
            .get_mut(&id)
            .unwrap_or_else(|| panic!("field {id} is not defined for {}", kind.path()))
            .enums = enums.iter().map(|(i, v)| (*i, (*v).to_string())).collect();
    }

    /// Removes a field definition (values on cards stay).
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn undefine_field(&self, kind: &str, id: u64) {
        let kind = CardKind::must(kind);
        self.lock().field_defs[kind.idx()].remove(&id);
    }

    /// The field definitions of a kind, in the API's order (`sort`, then id).
    ///
    /// # Panics
    /// On an unknown kind.
    pub fn field_definitions(&self, kind: &str) -> Vec<SimFieldDef> {
        let kind = CardKind::must(kind);
        let st = self.lock();
        let mut v: Vec<SimFieldDef> = st.field_defs[kind.idx()].values().cloned().collect();
        v.sort_by_key(|d| (d.sort, d.id));
        v
    }

    pub(super) fn fields_list(
        &self,
        st: &KState,
        kind: CardKind,
        inc: &crate::sim::faults::Incoming,
    ) -> Response {
        let q = &inc.params;
        let page = match param(q, "page") {
            None => 1,
            Some(p) => match p.parse::<u64>() {
                Ok(p) if p >= 1 => p,
                _ => return bad_param("page"),
            },
        };
        let limit = match param(q, "limit") {
            None => MAX_FIELDS_PAGE,
            Some(l) => match l.parse::<u64>() {
                Ok(l) if l >= 1 => l.min(MAX_FIELDS_PAGE),
                _ => return bad_param("limit"),
            },
        };
        let mut defs: Vec<&SimFieldDef> = st.field_defs[kind.idx()].values().collect();
        defs.sort_by_key(|d| (d.sort, d.id));
        let total = defs.len() as u64;
        let page_count = total.div_ceil(limit);
        let start = (page - 1) * limit;
        if start >= total {
            return no_content();
        }
        let base = &self.shared.base_url;
        let items: Vec<Value> = defs
            .iter()
            .skip(start as usize)
            .take(limit as usize)
            .map(|d| field_def_json(d, kind, base))
            .collect();
        let mut links = json!({
            "self": {"href": href(base, &inc.path, &inc.query)},
            "last": {"href": href_with_page(base, &inc.path, &inc.query, page_count)},
        });
        if page < page_count {
            links["next"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page + 1)});
        }
        if page > 1 {
            links["prev"] = json!({"href": href_with_page(base, &inc.path, &inc.query, page - 1)});
        }
        json_response(
            StatusCode::OK,
            HAL,
            &json!({
                "_total_items": total,
                "_page": page,
                "_page_count": page_count,
                "_links": links,
                "_embedded": {"custom_fields": items},
            }),
        )
    }

    pub(super) fn field_get(&self, st: &KState, kind: CardKind, id: &str) -> Response {
        match id
            .parse::<u64>()
            .ok()
            .and_then(|i| st.field_defs[kind.idx()].get(&i))
        {
            Some(d) => json_response(
                StatusCode::OK,
                HAL,
                &field_def_json(d, kind, &self.shared.base_url),
            ),
            None => kommo_problem(StatusCode::NOT_FOUND, "Custom field not found"),
        }
    }
}

fn field_def_json(d: &SimFieldDef, kind: CardKind, base: &str) -> Value {
    let enums = if d.enums.is_empty() {
        Value::Null
    } else {
        Value::Array(
            d.enums
                .iter()
                .enumerate()
                .map(|(i, (id, v))| json!({"id": id, "value": v, "sort": 500 + i, "code": null}))
                .collect(),
        )
    };
    let mut v = json!({
        "id": d.id,
        "name": d.name,
        "code": d.code,
        "sort": d.sort,
        "type": d.field_type,
        "entity_type": kind.path(),
        "is_predefined": d.is_predefined(),
        "is_deletable": !d.is_predefined(),
        "is_api_only": false,
        "group_id": null,
        "required_statuses": null,
        "remind": null,
        "settings": null,
        "enums": enums,
        "_links": {"self": {"href": format!("{base}/api/v4/{}/custom_fields/{}", kind.path(), d.id)}},
    });
    if kind == CardKind::Lead {
        v["is_computed"] = json!(false);
    }
    v
}
