//! Shapes of ChatApp answers that the third-party sources show and the plain simulator does not
//! serve by default (issue 18): a refusal inside a 200 answer (`"success": false`), a write
//! endpoint that answers success without effect, a one-chat answer holding only `id`, `name` and
//! `responsible`, and employees listed in pages with `nextPage`. Each is off until a test turns
//! it on through the [`super::ChatAppSim`] methods below.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{ChatAppSim, SimEmployee, employee_json, ok};
use crate::sim::util::json_response;

/// How `PUT .../chats/{chatId}/responsible` behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteBehaviour {
    /// Sets the responsible and answers the chat (the default).
    #[default]
    Applies,
    /// Answers `200` with `{"success": false, "error": {"code": "ApiValidationError", ..}}` and
    /// changes nothing (a refusal that only the envelope shows).
    RefusedInEnvelope,
    /// Answers `200` with `{"success": true, "data": <the unchanged chat>}` and changes nothing
    /// (an endpoint that is not the account's real one, answering as if it worked).
    NoEffect,
}

/// The answer shapes a test turned on.
#[derive(Clone, Debug, Default)]
pub(super) struct Quirks {
    /// How the responsible write behaves.
    pub(super) write: WriteBehaviour,
    /// `GET .../chats/{chatId}` answers only `id`, `name` and `responsible`.
    pub(super) minimal_chat: bool,
    /// Employees per page (`None`: all in one answer with no `nextPage`).
    pub(super) employee_page: Option<usize>,
}

impl Quirks {
    /// The one-chat answer: whole, or (minimal) only the fields the only known reader uses.
    pub(super) fn one_chat(&self, rendered: Value) -> Value {
        if !self.minimal_chat {
            return rendered;
        }
        let mut out = serde_json::Map::new();
        for k in ["id", "name", "responsible"] {
            if let Some(v) = rendered.get(k) {
                out.insert(k.to_string(), v.clone());
            }
        }
        Value::Object(out)
    }

    /// A page of employees: `nextPage` is the offset of the next one (a string), `null` at the end.
    pub(super) fn employees_page<'a>(
        &self,
        all: impl Iterator<Item = &'a SimEmployee>,
        next_page: Option<&str>,
    ) -> Response {
        let all: Vec<&SimEmployee> = all.collect();
        let Some(size) = self.employee_page else {
            let items: Vec<Value> = all.into_iter().map(employee_json).collect();
            return ok(json!({ "items": items }));
        };
        let from = match next_page.map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return refusal(StatusCode::UNPROCESSABLE_ENTITY, "Invalid nextPage"),
        };
        let items: Vec<Value> = all
            .iter()
            .skip(from)
            .take(size)
            .map(|e| employee_json(e))
            .collect();
        let next = (from + size < all.len()).then(|| (from + size).to_string());
        ok(json!({ "items": items, "nextPage": next }))
    }
}

/// `{"success": false, "error": {"code": "ApiValidationError", "message"}}` with `status`.
pub(super) fn refusal(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        "application/json",
        &json!({"success": false, "error": {"code": "ApiValidationError", "message": message}}),
    )
}

impl ChatAppSim {
    /// How `PUT .../responsible` behaves from now on (see [`WriteBehaviour`]).
    pub fn set_write_behaviour(&self, b: WriteBehaviour) {
        self.lock().quirks.write = b;
    }

    /// Serves `GET .../chats/{chatId}` with only `id`, `name` and `responsible` (or whole again).
    pub fn set_minimal_chat_answer(&self, on: bool) {
        self.lock().quirks.minimal_chat = on;
    }

    /// Lists employees `size` a page with a `nextPage` cursor (`None`: all in one answer).
    pub fn set_employee_page_size(&self, size: Option<usize>) {
        self.lock().quirks.employee_page = size.filter(|n| *n > 0);
    }
}
