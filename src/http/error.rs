//! What a failed API call says: the API, the endpoint (method and URL, host included), and a
//! class for metrics. Texts from the APIs are shortened and scrubbed ([`crate::redact`]).

/// An API call that failed. Messages name the API and endpoint; they never hold secrets (tokens
/// travel in headers, which are never printed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No good answer after retries: no response (connect, timeout, reset), or 429/5xx each
    /// time.
    #[error("{api} {endpoint}: no good answer after {attempts} attempt(s) ({class}): {reason}")]
    Transport {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and URL.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// What the last attempt met: `connect`, `timeout`, `http_5xx`, `http_429`, `limiter`.
        class: &'static str,
        /// The last error.
        reason: String,
    },
    /// An unexpected status.
    #[error("{api} {endpoint}: HTTP {status}: {body}")]
    Status {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The API answered, and its answer's body says it refused the request (ChatApp: an envelope
    /// with `"success": false`, whatever the HTTP status).
    #[error("{api} {endpoint}: refused (HTTP {status}, {code}): {message}")]
    Refused {
        /// `chatapp`.
        api: &'static str,
        /// Method and URL.
        endpoint: String,
        /// The HTTP status (a 2xx when only the envelope refused).
        status: u16,
        /// The API's error code (`ApiValidationError`, ...).
        code: String,
        /// The API's message (shortened, scrubbed).
        message: String,
    },
    /// Retries ran past the cycle's time budget.
    #[error(
        "{api} {endpoint}: gave up after {attempts} attempt(s): the cycle's time budget is spent (last: {last})"
    )]
    Budget {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A body that does not decode as expected.
    #[error("{api} {endpoint}: unexpected response at `{path}`: {reason}")]
    Decode {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Method and path.
        endpoint: String,
        /// The JSON path of the field (`.` for the whole body).
        path: String,
        /// Why.
        reason: String,
    },
    /// The API blocked us (Kommo: 403 with an HTML body); no calls until the cool-off ends.
    #[error(
        "{api}: blocked (HTTP 403 with an HTML page, or repeated 403s: an IP/account block after too many requests); no calls until {until_unix} (unix); contact Kommo support if it persists"
    )]
    Blocked {
        /// `kommo`.
        api: &'static str,
        /// When calls resume (unix seconds).
        until_unix: i64,
    },
    /// Kommo refused the account as a whole, for a named cause (not paid, IP not allowed, rights):
    /// nothing a retry or a pause fixes; the operator does.
    #[error("{api} {endpoint}: {}", refusal.explain())]
    Account {
        /// `kommo`.
        api: &'static str,
        /// Method and URL.
        endpoint: String,
        /// The cause.
        refusal: super::account::AccountRefusal,
    },
    /// The limit shared with the other instances on this machine cannot be used (its file cannot
    /// be opened): a setup problem, not a failed call.
    #[error(
        "{api}: the rate limit shared by the instances on this machine cannot be used: {reason}"
    )]
    Limiter {
        /// `kommo`.
        api: &'static str,
        /// Why (names the file).
        reason: String,
    },
    /// The state db failed while the client read or stored its tokens (or its login log): the
    /// API answered; the db did not.
    #[error("{api}: the state db failed: {reason}")]
    Store {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// What was read or stored, and the db's error.
        reason: String,
    },
    /// Credentials rejected.
    #[error("{api}: authentication failed: {reason}")]
    Auth {
        /// `kommo` or `chatapp`.
        api: &'static str,
        /// Why.
        reason: String,
    },
}

impl ApiError {
    /// A short, stable class for metrics and logs (`cycle_errors_total{error}`): what happened
    /// (`connect`, `timeout`, `http_5xx`, `http_429`, `http_4xx`, `refused`, `decode`, `budget`,
    /// `blocked`, `not_paid`, `ip_not_allowed`, `not_admin`, `auth`, `limiter`, `store`).
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::Transport { class, .. } => class,
            ApiError::Status { status, .. } => match status {
                400..=499 => "http_4xx",
                500..=599 => "http_5xx",
                _ => "http_other",
            },
            ApiError::Refused { .. } => "refused",
            ApiError::Budget { .. } => "budget",
            ApiError::Decode { .. } => "decode",
            ApiError::Blocked { .. } => "blocked",
            ApiError::Account { refusal, .. } => refusal.label(),
            ApiError::Auth { .. } => "auth",
            ApiError::Limiter { .. } => "limiter",
            ApiError::Store { .. } => "store",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error's class says what happened: the one a metric and a log line carry.
    #[test]
    fn every_error_has_the_class_of_what_happened() {
        let transport = |class| ApiError::Transport {
            api: "kommo",
            endpoint: "GET http://h/".into(),
            attempts: 3,
            class,
            reason: String::new(),
        };
        let status = |status| ApiError::Status {
            api: "kommo",
            endpoint: "GET http://h/".into(),
            status,
            body: String::new(),
        };
        for class in ["connect", "timeout", "http_5xx", "http_429", "limiter"] {
            assert_eq!(transport(class).label(), class);
        }
        assert_eq!(status(404).label(), "http_4xx");
        assert_eq!(status(503).label(), "http_5xx");
        let store = ApiError::Store {
            api: "chatapp",
            reason: "cannot store the new token pair: disk full".into(),
        };
        assert_eq!(store.label(), "store");
        assert!(store.to_string().contains("state db"), "{store}");
        let budget = ApiError::Budget {
            api: "kommo",
            endpoint: "GET http://h/".into(),
            attempts: 2,
            last: "connection refused".into(),
        };
        assert_eq!(budget.label(), "budget");
    }
}
