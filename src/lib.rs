//! chatapp-kommo-sync: keeps the responsible person of ChatApp Dialog chats and Kommo CRM cards in agreement.

pub mod chatapp;
pub mod cli;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod demo;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod http_server;
pub mod kommo;
pub mod kommo_auth;
pub mod links;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod online_check;
pub mod redact;
pub mod schedule;
pub mod shared_limit;
pub mod sim;
pub mod status;
pub mod store;
pub mod tokens;
pub mod usermap;
pub mod webhooks;
