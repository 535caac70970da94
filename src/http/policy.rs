//! What an API error means, decided in one place for every call site: the HTTP layer (retry or
//! answer), the writes of a cycle (reject one write, or fail the cycle), the start-up check and
//! `check-config --online` (a wrong setting, or an API that cannot be reached now).
//! What the daemon does after a cycle failed is decided beside the cycle, in
//! [`crate::sync::failure`].

use super::ApiError;

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Transient (no answer, 408, 429, 5xx): try again; the HTTP layer does, with backoff, within
    /// the cycle's budget. When it still fails, the cycle fails and the next one starts over.
    Retry,
    /// The API refused this request (a 4xx other than 401, 408 and 429): the write is dropped and
    /// decided again next cycle; at start-up or in `check-config --online`, a setting is wrong.
    Reject,
    /// Nothing this cycle can do (credentials refused, a block, the budget spent, an answer that
    /// does not parse): the cycle fails.
    Fail,
}

/// The policy of an HTTP status that is not a success.
pub fn status_policy(status: u16) -> ErrorPolicy {
    match status {
        408 | 429 | 500..=599 => ErrorPolicy::Retry,
        401 => ErrorPolicy::Fail,
        400..=499 => ErrorPolicy::Reject,
        _ => ErrorPolicy::Fail,
    }
}

/// The policy of an error.
pub fn error_policy(e: &ApiError) -> ErrorPolicy {
    match e {
        ApiError::Status { status, .. } => status_policy(*status),
        ApiError::Transport { .. } => ErrorPolicy::Retry,
        // the envelope refused it (the token refusal was handled by the client already)
        ApiError::Refused { .. } => ErrorPolicy::Reject,
        ApiError::Budget { .. }
        | ApiError::Decode { .. }
        | ApiError::Blocked { .. }
        | ApiError::Account { .. }
        | ApiError::Auth { .. }
        | ApiError::Limiter { .. }
        | ApiError::Store { .. } => ErrorPolicy::Fail,
    }
}

/// Whether an error means the credentials or the account settings are wrong (the start-up check
/// fails, `check-config --online` reports it) rather than that the API cannot be reached now.
pub fn is_wrong_setting(e: &ApiError) -> bool {
    error_policy(e) == ErrorPolicy::Reject
        || matches!(
            e,
            ApiError::Auth { .. }
                | ApiError::Account { .. }
                | ApiError::Decode { .. }
                | ApiError::Limiter { .. }
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> ApiError {
        ApiError::Status {
            api: "kommo",
            endpoint: "GET /".into(),
            status: s,
            body: String::new(),
        }
    }

    #[test]
    fn statuses_and_errors_map_to_one_policy() {
        assert_eq!(error_policy(&status(400)), ErrorPolicy::Reject);
        assert_eq!(error_policy(&status(404)), ErrorPolicy::Reject);
        assert_eq!(error_policy(&status(422)), ErrorPolicy::Reject);
        assert_eq!(error_policy(&status(429)), ErrorPolicy::Retry);
        assert_eq!(error_policy(&status(408)), ErrorPolicy::Retry);
        assert_eq!(error_policy(&status(503)), ErrorPolicy::Retry);
        assert_eq!(error_policy(&status(401)), ErrorPolicy::Fail);
        let auth = ApiError::Auth {
            api: "kommo",
            reason: "401".into(),
        };
        assert_eq!(error_policy(&auth), ErrorPolicy::Fail);
        assert!(is_wrong_setting(&auth));
        assert!(is_wrong_setting(&status(404)));
        assert!(!is_wrong_setting(&status(503)));
        assert!(!is_wrong_setting(&ApiError::Transport {
            api: "chatapp",
            endpoint: "POST /v1/tokens".into(),
            attempts: 3,
            class: "connect",
            reason: "refused".into()
        }));
    }
}
