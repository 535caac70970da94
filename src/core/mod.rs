//! The pure core: the domain model, links between dialogs and cards, the user map, the decision
//! engine, cron schedules and the one stable hash. No I/O, no clock: everything here is decided
//! from its arguments.

pub mod engine;
pub mod first_run;
pub mod hash;
pub mod links;
pub mod model;
pub mod neighbourhood;
pub mod schedule;
pub mod text;
pub mod usermap;
