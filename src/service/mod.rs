//! The daemon around the cycles (`run`): the runner (schedules, signals, triggers, reload,
//! systemd notify and watchdog), the HTTP endpoint with metrics, health and webhook triggers,
//! and the composition root ([`wiring`]) that builds the real adapters.

pub mod hint_parse;
pub mod http_server;
pub mod metrics;
pub mod notify;
pub mod runner;
pub mod startup;
pub mod triggers;
pub mod webhooks;
pub mod wiring;
