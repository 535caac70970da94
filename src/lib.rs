//! chatapp-kommo-sync: keeps the responsible person of ChatApp Dialog chats and Kommo CRM cards in agreement.

pub mod engine;
pub mod links;
pub mod model;
pub mod sim;
pub mod usermap;
