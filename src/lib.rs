//! chatapp-kommo-sync: keeps the responsible person of ChatApp Dialog chats and Kommo CRM cards in
//! agreement.
//!
//! The data path, one folder per step: `config` (the file and its secrets) -> `kommo`, `chatapp`
//! (the two APIs, over `http`) -> `sync` (one cycle: observe, plan with `core`, gate, apply,
//! settle, commit to `store`) -> `service` (the daemon around the cycles). `core` is pure: no I/O.
//! `ports` and `tokens` are the traits the cycle and the clients talk through; `commands` holds
//! the operator commands; `sim` the simulators (a default cargo feature).

pub mod chatapp;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod kommo;
pub mod logging;
pub mod panic_guard;
pub mod ports;
pub mod redact;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod sync;
pub mod tokens;
