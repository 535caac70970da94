//! The daemon around the cycles (`run`): the runner (schedules, signals, triggers, reload,
//! systemd notify and watchdog), the HTTP endpoint with metrics, health and webhook triggers.

pub mod http_server;
pub mod metrics;
pub mod runner;
pub mod webhooks;
