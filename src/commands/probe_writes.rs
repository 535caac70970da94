//! `check-config --online --probe-writes` (SPEC 5): one write that changes nothing on one dialog
//! and on one card of each kind in `[sync] chat_to_crm`, each read back, so an integrator learns
//! on day one whether the write calls work on this account (the dialog's call is documented
//! nowhere: `[chatapp.set_responsible]` is an assumption, `api/chatapp.md` 4.4).
//!
//! What is probed:
//! - **The dialog**: the newest open dialog of the configured licenses that has a responsible
//!   (`GET /v1/chats`, read over widening windows: the last day, the last 30 days, all). Its
//!   newest messages are read (system messages included), its current responsible is written
//!   again with the configured call, then the dialog and its messages are read again. A value
//!   written again cannot show in the responsible, so the sign that the write took is the
//!   assignment message ChatApp records in the dialog (see `probe_dialog`). A dialog without a
//!   responsible is never chosen: "nobody" cannot be written.
//! - **One card per kind** of `chat_to_crm`, from the first page of its entity (one
//!   `GET /api/v4/{entity}`): for `lead`, a lead in an open stage; for `incoming_lead`, a lead in an
//!   "Incoming leads" stage (`GET /api/v4/leads/pipelines` classifies them); when the first page
//!   has none, any lead with a responsible, and the line says so. Its current
//!   `responsible_user_id` is sent again (`PATCH /api/v4/{entity}`), then the card is read by id.
//!   The sign that it took is Kommo's answer naming the card (`_embedded.{entity}[].id`, as the
//!   docs show it, leads-api.md L806-952).
//!
//! Each call is printed on a line of its own (`probe: METHOD /endpoint on TARGET: STATUS,
//! VERDICT`), in the order made. A write's line carries the verdict for its target: `ok: worked`;
//! `REFUSED` (the HTTP status, ChatApp's `error.code` or Kommo's body, scrubbed; a ChatApp
//! `"success": false` in a 200 answer is a refusal); `ANSWERED SUCCESS WITHOUT EFFECT` (no sign
//! that it took); `CHANGED` (the read-back differs from the value read just before: said loudly,
//! and never written again); `FAILED` (a read the verdict needs could not be made). Any of these
//! but `ok` makes `check-config` exit 2. The probe never writes a value it did not read just
//! before. Shadow mode does not stop it: the probe is an explicit operator action and writes only
//! current values (decided; a line says so). The dialog's write leaves an assignment message in
//! the dialog.

use crate::chatapp::{Chat, ChatAppClient, Message};
use crate::config::{Config, SyncMode};
use crate::core::model::{CardKind, DialogKey, EmployeeId, KommoUserId, StageKind, SyncKind};
use crate::http::ApiError;
use crate::kommo::{KommoCard, KommoClient, Pipelines, classify_status};
use std::collections::BTreeSet;

/// The windows over which the dialog to probe is looked for, newest first (seconds back; `None`
/// is every chat).
const DIALOG_WINDOWS: [Option<i64>; 3] = [Some(86_400), Some(30 * 86_400), None];

/// What one call of the probe came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The call did what it should (the detail says what).
    Ok(String),
    /// The API refused it (status, code and reason, scrubbed).
    Refused(String),
    /// The write answered success and left no sign that it took.
    NoEffect(String),
    /// The read-back differs from the value read before the write.
    Differs(String),
    /// The call could not be made or answered (a read failed, no usable token).
    Failed(String),
    /// Nothing to probe (no dialog or card with a responsible).
    Skipped(String),
}

impl Verdict {
    /// Whether the verdict fails the probe (exit 2).
    pub fn failed(&self) -> bool {
        !matches!(self, Verdict::Ok(_) | Verdict::Skipped(_))
    }

    /// What it says.
    pub fn detail(&self) -> &str {
        match self {
            Verdict::Ok(d)
            | Verdict::Refused(d)
            | Verdict::NoEffect(d)
            | Verdict::Differs(d)
            | Verdict::Failed(d)
            | Verdict::Skipped(d) => d,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok(d) => write!(f, "ok: {d}"),
            Verdict::Refused(d) => write!(f, "REFUSED: {d}"),
            Verdict::NoEffect(d) => write!(f, "ANSWERED SUCCESS WITHOUT EFFECT: {d}"),
            Verdict::Differs(d) => write!(f, "CHANGED: {d}"),
            Verdict::Failed(d) => write!(f, "FAILED: {d}"),
            Verdict::Skipped(d) => write!(f, "skipped: {d}"),
        }
    }
}

/// One call of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCall {
    /// Method and endpoint, e.g. `PATCH /api/v4/leads`.
    pub call: String,
    /// What it was made on, e.g. `lead 2001` or `dialog 1:grWhatsApp:79990000001@c.us`.
    pub target: String,
    /// The answer's status: `2xx`, `HTTP 404`, or `-` without an answer.
    pub status: String,
    /// What it came to.
    pub verdict: Verdict,
}

impl std::fmt::Display for ProbeCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "probe: {} on {}: {}, {}",
            self.call, self.target, self.status, self.verdict
        )
    }
}

/// What the probe did.
#[derive(Debug, Default)]
pub struct Probe {
    /// Notes before the calls (shadow mode, how a card was chosen).
    pub notes: Vec<String>,
    /// Each call, in order.
    pub calls: Vec<ProbeCall>,
}

impl Probe {
    /// The calls that failed.
    pub fn failures(&self) -> impl Iterator<Item = &ProbeCall> {
        self.calls.iter().filter(|c| c.verdict.failed())
    }

    fn push(&mut self, call: &str, target: &str, status: String, verdict: Verdict) {
        self.calls.push(ProbeCall {
            call: call.to_string(),
            target: target.to_string(),
            status,
            verdict,
        });
    }
}

/// The status and the verdict of a failed call: a refusal when the API answered, else a failure.
fn judged(e: &ApiError) -> (String, Verdict) {
    match e {
        ApiError::Status { status, body, .. } => (
            format!("HTTP {status}"),
            Verdict::Refused(crate::redact::excerpt(body, 200)),
        ),
        ApiError::Refused {
            status,
            code,
            message,
            ..
        } => (
            format!("HTTP {status}"),
            // the client's message starts with the code already (`error_text`)
            Verdict::Refused(crate::redact::excerpt(
                &match message.strip_prefix(code.as_str()) {
                    Some(rest) if !code.is_empty() => format!("{code}:{rest}"),
                    _ => format!("{code}: {message}"),
                },
                200,
            )),
        ),
        ApiError::Account { refusal, .. } => (
            match refusal {
                crate::http::account::AccountRefusal::NotPaid => "HTTP 402".into(),
                _ => "HTTP 403".into(),
            },
            Verdict::Refused(refusal.explain().into()),
        ),
        ApiError::Auth { reason, .. } => (
            "-".into(),
            Verdict::Refused(crate::redact::excerpt(reason, 200)),
        ),
        e => (
            "-".into(),
            Verdict::Failed(crate::redact::excerpt(&e.to_string(), 300)),
        ),
    }
}

/// Runs the probe (see the module docs). `kommo` is `None` when the check has no usable Kommo
/// token: the cards are then reported as not probed (a failure).
pub async fn probe(cfg: &Config, kommo: Option<&KommoClient>, chatapp: &ChatAppClient) -> Probe {
    let mut p = Probe::default();
    if cfg.sync.mode == SyncMode::Shadow {
        p.notes.push("probe: [sync] mode is shadow; the probe writes anyway: it is an explicit operator action and writes only the values it has just read".into());
    }
    probe_dialog(cfg, chatapp, &mut p).await;
    let kinds: Vec<SyncKind> = cfg.sync.chat_to_crm.clone();
    if kinds.is_empty() {
        p.notes
            .push("probe: [sync] chat_to_crm is empty: no card is written, none probed".into());
        return p;
    }
    let Some(kommo) = kommo else {
        for k in kinds {
            let call = format!("PATCH /api/v4/{}", k.entity().plural());
            p.push(
                &call,
                k.name(),
                "-".into(),
                Verdict::Failed("no usable Kommo token (see above)".into()),
            );
        }
        return p;
    };
    let mut pipelines: Option<Pipelines> = None;
    for kind in kinds {
        probe_card(kommo, kind, &mut pipelines, &mut p).await;
    }
    p
}

/// The newest open dialog with a responsible, looked for over [`DIALOG_WINDOWS`].
async fn pick_dialog(chatapp: &ChatAppClient) -> Result<Option<Chat>, ApiError> {
    let now = crate::clock::now_unix();
    for window in DIALOG_WINDOWS {
        let chats = chatapp.chats(window.map(|w| now - w)).await?;
        if let Some(c) = chats.into_iter().find(|c| {
            let o = c.to_obs();
            o.responsible.is_some() && !o.closed
        }) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Messages read before and after the write: the newest this many.
const MESSAGES_READ: usize = 20;

/// The ids of the assignment messages naming `employee` among `messages`: a system message whose
/// text holds `[<employee id>]` (TEZ's fixture of a real answer: `Назначен ответственный
/// "<Full Name> [85501]"`, api/chatapp.md 4.2). ASSUMPTION: the text is localised, so only the
/// bracketed id is matched, and a message without an id is keyed by its text.
fn assignment_marks(messages: &[Message], employee: EmployeeId) -> BTreeSet<String> {
    let tag = format!("[{}]", employee.0);
    messages
        .iter()
        .filter(|m| m.is_system() && m.text().contains(&tag))
        .map(|m| m.id().unwrap_or_else(|| m.text().to_string()))
        .collect()
}

/// The call and the status of a messages read, or the failed call pushed.
async fn marks(
    chatapp: &ChatAppClient,
    key: &DialogKey,
    employee: EmployeeId,
    target: &str,
    p: &mut Probe,
) -> Option<BTreeSet<String>> {
    match chatapp.recent_messages(key, MESSAGES_READ).await {
        Ok(m) => Some(assignment_marks(&m, employee)),
        Err(e) => {
            let (status, verdict) = judged(&e);
            p.push(MESSAGES_CALL, target, status, verdict);
            None
        }
    }
}

const MESSAGES_CALL: &str =
    "GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/messages";
const CHAT_CALL: &str = "GET /v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}";

/// The dialog: its responsible written again with `[chatapp.set_responsible]`, then read back.
///
/// Writing the value a dialog already has cannot show in its responsible, so the sign that the
/// write took is the assignment message ChatApp records in the dialog (api/chatapp.md 4.2): the
/// messages are read before and after, and the write worked when a new one names the employee.
/// ASSUMPTION (no source shows a same-value assignment): ChatApp records one for it too; on an
/// account where it does not, a working call is reported as without effect, and the line says
/// how to tell (change a dialog's responsible by hand through the daemon, then run the probe).
async fn probe_dialog(cfg: &Config, chatapp: &ChatAppClient, p: &mut Probe) {
    let set = &cfg.chatapp.set_responsible;
    let write_call = format!("{} {}", set.method, set.path);
    let chat = match pick_dialog(chatapp).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            let why = "no open dialog of the configured licenses has a responsible (writing \"nobody\" is not possible)";
            p.push(
                &write_call,
                "a dialog",
                "-".into(),
                Verdict::Skipped(why.into()),
            );
            return;
        }
        Err(e) => {
            let (status, verdict) = judged(&e);
            p.push("GET /v1/chats", "the configured licenses", status, verdict);
            return;
        }
    };
    let key = chat.key();
    let Some(employee) = chat.to_obs().responsible else {
        return;
    };
    let target = format!(
        "dialog {}:{}:{}",
        key.license_id, key.messenger_type, key.chat_id
    );
    p.push(
        "GET /v1/chats",
        &target,
        "2xx".into(),
        Verdict::Ok(format!("picked: open, responsible {}", employee.0)),
    );
    let Some(before) = marks(chatapp, &key, employee, &target, p).await else {
        let why = "not written: the dialog's messages cannot be read, so the write's effect could not be told";
        p.push(
            &write_call,
            &target,
            "-".into(),
            Verdict::Skipped(why.into()),
        );
        return;
    };
    p.push(
        MESSAGES_CALL,
        &target,
        "2xx".into(),
        Verdict::Ok(format!(
            "{} assignment message(s) naming employee {} among the newest {MESSAGES_READ}",
            before.len(),
            employee.0
        )),
    );
    let written = chatapp.set_responsible(&key, employee).await;
    let at = p.calls.len();
    match written {
        Ok(()) => p.push(
            &write_call,
            &target,
            "2xx".into(),
            Verdict::Ok(String::new()),
        ),
        Err(e) => {
            let (status, verdict) = judged(&e);
            p.push(&write_call, &target, status, verdict);
            return;
        }
    }
    let read_back = read_back_dialog(chatapp, &key, employee, &target, p).await;
    let after = marks(chatapp, &key, employee, &target, p).await;
    let new = after
        .as_ref()
        .map(|a| a.difference(&before).count())
        .unwrap_or(0);
    if after.is_some() {
        p.push(
            MESSAGES_CALL,
            &target,
            "2xx".into(),
            Verdict::Ok(format!(
                "{new} new assignment message(s) naming employee {}",
                employee.0
            )),
        );
    }
    p.calls[at].verdict = dialog_write_verdict(read_back, after.is_some(), new, employee);
}

/// What the dialog write did: the read-back's verdict, else whether the messages could be read
/// again, and how many new assignment messages name `employee`.
fn dialog_write_verdict(
    read_back: Result<(), Verdict>,
    messages_read: bool,
    new: usize,
    employee: EmployeeId,
) -> Verdict {
    match (read_back, messages_read, new) {
    (Err(v), _, _) => v,
    (Ok(()), false, _) => Verdict::Failed(
        "answered success; whether it took could not be told (the messages cannot be read again)"
            .into(),
    ),
    (Ok(()), true, 0) => Verdict::NoEffect(format!(
        "answered success, but ChatApp recorded no assignment of employee {} in the dialog: the call may not be this account's (see [chatapp.set_responsible]); if a real change made through it shows in ChatApp, ChatApp only leaves out a same-value assignment",
        employee.0
    )),
    (Ok(()), true, _) => Verdict::Ok(format!(
        "worked: responsible {} written again (its current value), ChatApp recorded the assignment",
        employee.0
    )),
}
}

/// Reads the dialog again and compares its responsible with the one read before the write; the
/// verdict the write takes when it differs.
async fn read_back_dialog(
    chatapp: &ChatAppClient,
    key: &DialogKey,
    before: EmployeeId,
    target: &str,
    p: &mut Probe,
) -> Result<(), Verdict> {
    let (status, verdict) = match chatapp.chat(key).await {
        Ok(Some(c)) => {
            let now = c.to_obs().responsible;
            let verdict = if now == Some(before) {
                Verdict::Ok(format!("read back responsible {}, unchanged", before.0))
            } else {
                Verdict::Differs(format!(
                    "ATTENTION: read back responsible {}, it was {} before the probe: look at this dialog in ChatApp (the probe does not write again)",
                    now.map(|e| e.0.to_string())
                        .unwrap_or_else(|| "nobody".into()),
                    before.0
                ))
            };
            ("2xx".to_string(), verdict)
        }
        Ok(None) => (
            "HTTP 404".to_string(),
            Verdict::Differs("the dialog is not found on read-back".into()),
        ),
        Err(e) => judged(&e),
    };
    let outcome = after_read_back(&verdict);
    p.push(CHAT_CALL, target, status, verdict);
    outcome
}

/// Whether a lead suits `kind` by its stage (`None`: the stage is unknown).
fn stage_fits(card: &KommoCard, kind: SyncKind, pipelines: &Pipelines) -> bool {
    let stage = classify_status(card.status_id.unwrap_or(0), pipelines);
    match kind {
        SyncKind::IncomingLead => stage == Some(StageKind::Incoming),
        SyncKind::Lead => stage == Some(StageKind::Open),
        _ => true,
    }
}

/// A card of `kind` with a responsible from the first page: one in a fitting stage for the lead
/// kinds, else any, with a note saying so.
async fn pick_card(
    kommo: &KommoClient,
    kind: SyncKind,
    pipelines: &mut Option<Pipelines>,
    p: &mut Probe,
) -> Result<Option<KommoCard>, ApiError> {
    let entity = kind.entity();
    let cards: Vec<KommoCard> = kommo
        .first_cards(entity)
        .await?
        .into_iter()
        .filter(|c| c.responsible_user_id != 0 && !c.is_deleted)
        .collect();
    if entity != CardKind::Lead {
        return Ok(cards.into_iter().next());
    }
    let table = match pipelines.take() {
        Some(t) => t,
        None => kommo.pipelines().await?,
    };
    let fitting = cards.iter().find(|c| stage_fits(c, kind, &table)).cloned();
    *pipelines = Some(table);
    if fitting.is_some() {
        return Ok(fitting);
    }
    let any = cards.into_iter().next();
    if let Some(c) = &any {
        p.notes.push(format!(
            "probe: no lead of the first page is in a stage of kind {}; probing lead {} (status {}) instead: the same call writes every lead",
            kind.name(),
            c.id,
            c.status_id.unwrap_or(0)
        ));
    }
    Ok(any)
}

/// One card of `kind`: its responsible sent again, then read back by id.
async fn probe_card(
    kommo: &KommoClient,
    kind: SyncKind,
    pipelines: &mut Option<Pipelines>,
    p: &mut Probe,
) {
    let entity = kind.entity();
    let call = format!("PATCH /api/v4/{}", entity.plural());
    let card = match pick_card(kommo, kind, pipelines, p).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            let why = format!(
                "the first page of {} has no card with a responsible",
                entity.plural()
            );
            p.push(&call, kind.name(), "-".into(), Verdict::Skipped(why));
            return;
        }
        Err(e) => {
            let (status, verdict) = judged(&e);
            let read = format!("GET /api/v4/{}", entity.plural());
            p.push(&read, kind.name(), status, verdict);
            return;
        }
    };
    let user = KommoUserId(card.responsible_user_id);
    let target = format!("{} {} ({})", entity.singular(), card.id, kind.name());
    p.push(
        &format!("GET /api/v4/{}", entity.plural()),
        &target,
        "2xx".into(),
        Verdict::Ok(format!("picked: responsible {}", user.0)),
    );
    let at = p.calls.len();
    let confirmed = match kommo.patch_responsible(entity, &[(card.id, user)]).await {
        Ok(out) if out.refused.contains_key(&card.id) => {
            let why = format!("validation-errors: {}", out.refused[&card.id]);
            p.push(&call, &target, "400".into(), Verdict::Refused(why));
            return;
        }
        Ok(out) => out.confirmed.contains(&card.id),
        Err(e) => {
            let (status, verdict) = judged(&e);
            p.push(&call, &target, status, verdict);
            return;
        }
    };
    p.push(&call, &target, "2xx".into(), Verdict::Ok(String::new()));
    let read_back = read_back_card(kommo, entity, card.id, user, &target, p).await;
    p.calls[at].verdict = match (read_back, confirmed) {
        (Err(v), _) => v,
        (Ok(()), false) => Verdict::NoEffect(
            "answered success, but the answer does not name the card (Kommo's PATCH answer lists each card it wrote, leads-api.md)".into(),
        ),
        (Ok(()), true) => Verdict::Ok(format!(
            "worked: responsible {} sent again (its current value), the answer names the card",
            user.0
        )),
    };
}

/// Reads the card again by id and compares its responsible with the one read before the write;
/// the verdict the write takes when it differs or cannot be read.
async fn read_back_card(
    kommo: &KommoClient,
    entity: CardKind,
    id: u64,
    before: KommoUserId,
    target: &str,
    p: &mut Probe,
) -> Result<(), Verdict> {
    let call = format!("GET /api/v4/{} (by id)", entity.plural());
    let (status, verdict) = match kommo.cards_by_id(entity, &[id]).await {
        Ok(cards) => match cards.iter().find(|c| c.id == id) {
            Some(c) if c.responsible_user_id == before.0 => (
                "2xx".to_string(),
                Verdict::Ok(format!("read back responsible {}, unchanged", before.0)),
            ),
            Some(c) => (
                "2xx".to_string(),
                Verdict::Differs(format!(
                    "ATTENTION: read back responsible {}, it was {} before the probe: look at this card in Kommo (the probe does not write again)",
                    c.responsible_user_id, before.0
                )),
            ),
            None => (
                "2xx".to_string(),
                Verdict::Differs("the card is not found on read-back".into()),
            ),
        },
        Err(e) => judged(&e),
    };
    let outcome = after_read_back(&verdict);
    p.push(&call, target, status, verdict);
    outcome
}

/// What a read-back's verdict makes of the write: nothing when it is fine, its own words when
/// the value differs, a failure (the write's effect unknown) when the read failed.
fn after_read_back(read: &Verdict) -> Result<(), Verdict> {
    match read {
        Verdict::Ok(_) | Verdict::Skipped(_) => Ok(()),
        Verdict::Differs(d) => Err(Verdict::Differs(d.clone())),
        v => Err(Verdict::Failed(format!(
            "answered success; the read-back failed: {}",
            v.detail()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: serde_json::Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_assignment_mark_is_a_system_message_naming_the_employee_in_brackets() {
        let m = [
            // TEZ's fixture (api/payloads/chatapp_chat_messages_items.json)
            msg(
                serde_json::json!({"id": "uuid-1", "side": "out", "time": 1784572761, "type": "system",
                "message": {"text": "Назначен ответственный \"Тестова Аяжан [85501]\"", "file": null},
                "fromApp": {"id": "webchat", "sender": "system"}, "created": {"id": 85501}}),
            ),
            msg(serde_json::json!({"id": "wamid.OUT2", "type": "text",
                "message": {"text": "[85501]"}})),
            msg(
                serde_json::json!({"id": 7, "type": "system", "message": {"text": "Assigned [85502]"}}),
            ),
            msg(serde_json::json!({"type": 3, "message": null})),
        ];
        let want: BTreeSet<String> = ["uuid-1".to_string()].into();
        assert_eq!(assignment_marks(&m, EmployeeId(85501)), want);
        let want: BTreeSet<String> = ["7".to_string()].into();
        assert_eq!(assignment_marks(&m, EmployeeId(85502)), want);
        assert!(assignment_marks(&m, EmployeeId(1)).is_empty());
    }

    #[test]
    fn a_refusal_names_its_status_and_a_transport_error_is_a_failure() {
        let (status, v) = judged(&ApiError::Status {
            api: "chatapp",
            endpoint: "PUT /x".into(),
            status: 404,
            body: "ApiNotFoundError Not found".into(),
        });
        assert_eq!(status, "HTTP 404");
        assert_eq!(v, Verdict::Refused("ApiNotFoundError Not found".into()));
        assert!(v.failed());
        let (status, v) = judged(&ApiError::Transport {
            api: "kommo",
            endpoint: "PATCH /api/v4/leads".into(),
            attempts: 3,
            class: "timeout",
            reason: "timed out".into(),
        });
        assert_eq!(status, "-");
        assert!(matches!(v, Verdict::Failed(_)) && v.failed());
        let (status, v) = judged(&ApiError::Refused {
            api: "chatapp",
            endpoint: "PUT /x".into(),
            status: 200,
            code: "ApiValidationError".into(),
            message: "ApiValidationError Responsible can not be changed".into(),
        });
        assert_eq!(status, "HTTP 200");
        assert_eq!(
            v,
            Verdict::Refused("ApiValidationError: Responsible can not be changed".into())
        );
        let (status, v) = judged(&ApiError::Account {
            api: "kommo",
            endpoint: "PATCH /api/v4/leads".into(),
            refusal: crate::http::account::AccountRefusal::NotPaid,
        });
        assert_eq!(status, "HTTP 402");
        assert!(matches!(v, Verdict::Refused(ref d) if d.contains("not paid")));
        assert!(!Verdict::Skipped("none".into()).failed());
        assert!(Verdict::NoEffect("no sign".into()).failed());
        assert!(!Verdict::Ok("fine".into()).failed());
    }
}
