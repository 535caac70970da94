//! The gate between a plan and its writes (pure): a dry run writes nothing; the safety brake
//! (rule 13: too many writes, or a full listing that came back empty) stops the writes unless
//! `--force`; shadow mode (a cycle the brake lets through) writes nothing either, but commits
//! what it decided (see [`super::shadow`]).

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
    /// Shadow mode: log and count each write instead of making it, then commit.
    Shadow,
}

/// Decides the gate from the plan's own brake, a listing brake of the read, the options, and
/// whether the cycle is a shadow one (`[sync] mode = "shadow"` or `--shadow`). A braked shadow
/// cycle is braked as a normal one would be: it shows the operator what the brake would do.
pub fn gate(plan: &Plan, listing_brake: Option<Brake>, opts: CycleOptions, shadow: bool) -> Gate {
    let brake = plan.brake.clone().or(listing_brake);
    if opts.dry_run {
        return Gate::DryRun(brake);
    }
    match brake {
        Some(b) if !opts.force => Gate::Braked(b),
        _ if shadow => Gate::Shadow,
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
            dry_run,
            force,
            ..CycleOptions::default()
        };
        assert_eq!(
            gate(&Plan::default(), None, opts(false, false), false),
            Gate::Write
        );
        assert!(matches!(
            gate(&braked, None, opts(false, false), false),
            Gate::Braked(_)
        ));
        assert_eq!(gate(&braked, None, opts(false, true), false), Gate::Write);
        assert!(matches!(
            gate(&braked, None, opts(true, true), false),
            Gate::DryRun(Some(_))
        ));
        // shadow: never Write; a dry run stays a dry run; the brake still brakes
        assert_eq!(
            gate(&Plan::default(), None, opts(false, false), true),
            Gate::Shadow
        );
        assert_eq!(gate(&braked, None, opts(false, true), true), Gate::Shadow);
        assert!(matches!(
            gate(&braked, None, opts(false, false), true),
            Gate::Braked(_)
        ));
        assert!(matches!(
            gate(&Plan::default(), None, opts(true, false), true),
            Gate::DryRun(None)
        ));
        let empty = Brake::EmptyListing {
            what: "chats".into(),
            in_snapshot: 10,
        };
        assert_eq!(
            gate(
                &Plan::default(),
                Some(empty.clone()),
                opts(false, false),
                false
            ),
            Gate::Braked(empty)
        );
    }
}
