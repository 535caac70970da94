//! What the daemon does after a failed cycle, decided in one place (the counterpart of
//! [`crate::http::policy`], which decides what one failed call means). Pure: the runner
//! (`src/service/runner.rs`, `Runner::cycle` and `reopen_store`) asks and does what it answers.
//!
//! - An API error (whatever its class) or a stop: the daemon goes on; the next cycle starts over
//!   from the last committed state (the error is logged and counted by class).
//! - A state db error: the db is reopened at once.
//! - The reopen failed: the daemon exits non-zero (systemd restarts it), unless a rotated Kommo
//!   token lives only in memory: exiting would lose the only valid token, so it goes on, reports,
//!   and reopens again after the next failed cycle.

use super::CycleError;

/// What failed.
#[derive(Debug, Clone, Copy)]
pub enum Failed<'a> {
    /// A cycle, with its error.
    Cycle(&'a CycleError),
    /// Reopening the state db after a cycle's state db error.
    Reopen,
}

/// What the daemon does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Goes on with the next cycle.
    Continue,
    /// Reopens the state db now, then goes on (or asks again with [`Failed::Reopen`]).
    ReopenStore,
    /// Exits non-zero.
    Exit,
}

/// What the daemon does after `failed`; `token_unsaved`: a rotated Kommo token lives only in
/// memory (its store failed).
pub fn after_failed_cycle(failed: Failed<'_>, token_unsaved: bool) -> AfterFailure {
    match failed {
        Failed::Cycle(CycleError::Store(_)) => AfterFailure::ReopenStore,
        Failed::Cycle(CycleError::Api(_) | CycleError::Stopped) => AfterFailure::Continue,
        Failed::Reopen if token_unsaved => AfterFailure::Continue,
        Failed::Reopen => AfterFailure::Exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ApiError;
    use crate::store::StoreError;
    use std::path::PathBuf;

    fn api_errors() -> Vec<CycleError> {
        vec![
            CycleError::Api(ApiError::Transport {
                api: "kommo",
                endpoint: "GET /api/v4/leads".into(),
                attempts: 3,
                class: "timeout",
                reason: "timed out".into(),
            }),
            CycleError::Api(ApiError::Status {
                api: "chatapp",
                endpoint: "GET /v1/chats".into(),
                status: 401,
                body: String::new(),
            }),
            CycleError::Api(ApiError::Blocked {
                api: "kommo",
                until_unix: 0,
            }),
        ]
    }

    #[test]
    fn an_api_error_or_a_stop_goes_on_whatever_the_token() {
        for unsaved in [false, true] {
            for e in api_errors().iter().chain([&CycleError::Stopped]) {
                assert_eq!(
                    after_failed_cycle(Failed::Cycle(e), unsaved),
                    AfterFailure::Continue,
                    "{e} (token unsaved: {unsaved})"
                );
            }
        }
    }

    #[test]
    fn a_state_db_error_reopens_the_db_whatever_the_token() {
        let e = CycleError::Store(StoreError::Closed(PathBuf::from("/tmp/state.redb")));
        for unsaved in [false, true] {
            assert_eq!(
                after_failed_cycle(Failed::Cycle(&e), unsaved),
                AfterFailure::ReopenStore
            );
        }
    }

    #[test]
    fn a_failed_reopen_exits_unless_the_only_valid_token_lives_in_memory() {
        assert_eq!(
            after_failed_cycle(Failed::Reopen, false),
            AfterFailure::Exit
        );
        assert_eq!(
            after_failed_cycle(Failed::Reopen, true),
            AfterFailure::Continue
        );
    }
}
