//! In-process HTTP simulators of the Kommo and ChatApp APIs, used by the tests and by the `demo`
//! command.
//!
//! Each simulator is a cheap, cloneable handle ([`KommoSim`], [`ChatAppSim`]) over shared state
//! plus an axum server bound to `127.0.0.1` on an ephemeral port ([`KommoSim::base_url`]).
//! Control methods (plain Rust) build worlds, act as humans, and inspect what clients did; the
//! HTTP side follows `api/kommo.md` and `api/chatapp.md`. The decisions taken where those
//! documents are silent are listed in the docs of the [`kommo`] and [`chatapp`] modules.
//!
//! Besides cards, users and events, the Kommo simulator models lead pipelines and stages
//! ([`SimPipeline`], `lead_status_changed` events), incoming leads from chats ([`UnsortedChat`])
//! whose contacts stay hidden until accepted, and custom field definitions ([`SimFieldDef`]).
//! Both simulators can serve one record malformed on purpose until cleared
//! ([`KommoSim::set_card_json_override`], [`KommoSim::push_raw_event`],
//! [`ChatAppSim::set_chat_json_override`]), for hardening tests of clients.
//!
//! Both simulators share the machinery of [`faults`]: a [`SimClock`] (give the same clock to both
//! so their timestamps agree), fault injection ([`FaultRule`], [`Fault`]), an rps limit, and a
//! request log with a strict sliding-window meter.
//!
//! The simulators share no model with the clients on purpose: the Kommo simulator has its own
//! [`kommo::CardKind`] beside [`crate::core::model::CardKind`], and its own won and lost status
//! ids ([`kommo::STATUS_WON`], [`kommo::STATUS_LOST`]) beside the core's. They are written from
//! the API documents, not from the client's code: a simulator that reused the client's model
//! would mirror its bugs, and the tests would pass with them.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use chatapp_kommo_sync::sim::*;
//! let clock = SimClock::new();
//! let kommo = KommoSim::start(KommoSimConfig { clock: Some(clock.clone()), ..Default::default() }).await?;
//! let chatapp = ChatAppSim::start(ChatAppSimConfig { clock: Some(clock), ..Default::default() }).await?;
//! kommo.add_user(504141, "Ann", "ann@example.com", true);
//! kommo.add_card("leads", SimCard::new(1, "Deal", 504141));
//! kommo.push_fault(FaultRule::new(Fault::Status(503)).method("PATCH").times(2));
//! chatapp.add_employee(85501, "Ann", "ann@example.com");
//! chatapp.add_chat(SimChat::whatsapp(1, "+7 999 123-45-67", "Client", None));
//! # Ok(()) }
//! ```

pub mod chatapp;
pub mod faults;
pub mod kommo;
mod util;

pub use chatapp::{ChatAppSim, ChatAppSimConfig, SimChat, SimChatState, SimEmployee};
pub use faults::{Fault, FaultRule, LoggedRequest, SimClock, max_requests_in_window};
pub use kommo::{
    CardKind, KommoSim, KommoSimConfig, MAIN_PIPELINE_ID, MAX_FIELDS_PAGE, OAuthSim,
    STATUS_FIRST_CONTACT, STATUS_INCOMING, STATUS_LOST, STATUS_NEGOTIATION, STATUS_WON, SimCard,
    SimField, SimFieldDef, SimPipeline, SimStatus, SimUnsorted, SimUser, UnsortedChat, events_of,
    fake_jwt, jwt_exp,
};
pub use util::XorShift;

/// The HTTP method type used by [`FaultRule::method`] (same type as `reqwest::Method`).
pub use axum::http::Method;
