//! chatapp-kommo-sync: keeps the responsible person of ChatApp Dialog chats and Kommo CRM cards in agreement.

pub mod config;
pub mod engine;
pub mod http;
pub mod kommo;
pub mod links;
pub mod model;
pub mod schedule;
pub mod sim;
pub mod store;
pub mod usermap;
