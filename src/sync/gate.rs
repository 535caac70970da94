//! The gate between a plan and its writes (pure): a dry run writes nothing; the safety brake
//! (rule 13: too many writes, or a full listing that came back empty) stops the writes unless
//! `--force`.

use super::CycleOptions;
use crate::core::engine::{Brake, Plan};

/// What the cycle may do with its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Write it.
    Write,
    /// `--dry-run`: print it, write nothing (the brake that would have stopped it, if any).
    DryRun(Option<Brake>),
    /// The brake stopped it: nothing is written, nothing settled.
    Braked(Brake),
}

/// Decides the gate from the plan's own brake, a listing brake of the read, and the options.
pub fn gate(plan: &Plan, listing_brake: Option<Brake>, opts: CycleOptions) -> Gate {
    let brake = plan.brake.clone().or(listing_brake);
    if opts.dry_run {
        return Gate::DryRun(brake);
    }
    match brake {
        Some(b) if !opts.force => Gate::Braked(b),
        _ => Gate::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_never_writes_and_force_overrides_the_brake() {
        let braked = Plan {
            brake: Some(Brake::TooManyWrites { planned: 9, max: 1 }),
            ..Plan::default()
        };
        let opts = |dry_run, force| CycleOptions {
            full: false,
            dry_run,
            force,
        };
        assert_eq!(
            gate(&Plan::default(), None, opts(false, false)),
            Gate::Write
        );
        assert!(matches!(
            gate(&braked, None, opts(false, false)),
            Gate::Braked(_)
        ));
        assert_eq!(gate(&braked, None, opts(false, true)), Gate::Write);
        assert!(matches!(
            gate(&braked, None, opts(true, true)),
            Gate::DryRun(Some(_))
        ));
        let empty = Brake::EmptyListing {
            what: "chats".into(),
            in_snapshot: 10,
        };
        assert_eq!(
            gate(&Plan::default(), Some(empty.clone()), opts(false, false)),
            Gate::Braked(empty)
        );
    }
}
