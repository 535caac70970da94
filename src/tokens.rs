//! The token port: where the API clients keep their credentials between runs (Kommo's rotating
//! OAuth pair, ChatApp's token pair and its login log). The clients see only [`TokenStore`]; the
//! daemon gives them the redb state db, `check-config --online` and the tests a [`MemoryTokens`].
//! Every value here is a secret: `Debug` never prints it, and nothing here logs.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A token store that could not read or write (the message names what failed, never a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenStoreError(pub String);

/// Kommo's OAuth pair as stored. Refresh tokens are single-use: the pair in use must never be
/// lost (see `kommo_auth`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthPair {
    /// Access token (empty before the first refresh).
    pub access_token: String,
    /// Refresh token (the only valid one).
    pub refresh_token: String,
    /// When the access token expires (unix seconds; 0 = unknown/expired).
    pub expires_at: i64,
}

impl std::fmt::Debug for OAuthPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OAuthPair([REDACTED])")
    }
}

/// ChatApp's token pair as ChatApp issues it and as it is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    /// Access token (raw, sent without `Bearer`).
    pub access_token: String,
    /// Its expiry (unix seconds).
    #[serde(default)]
    pub access_token_end_time: i64,
    /// Refresh token.
    pub refresh_token: String,
    /// Its expiry (unix seconds).
    #[serde(default)]
    pub refresh_token_end_time: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPair([REDACTED])")
    }
}

/// Where the clients keep their credentials. Writes must be durable when they return `Ok`.
pub trait TokenStore: Send + Sync {
    /// The stored Kommo OAuth pair, if any.
    fn kommo_pair(&self) -> Result<Option<OAuthPair>, TokenStoreError>;
    /// Stores the Kommo OAuth pair (durably, before the new access token is used).
    fn save_kommo_pair(&self, pair: &OAuthPair) -> Result<(), TokenStoreError>;
    /// The stored ChatApp token pair, if any.
    fn chatapp_pair(&self) -> Result<Option<TokenPair>, TokenStoreError>;
    /// Stores the ChatApp token pair.
    fn save_chatapp_pair(&self, pair: &TokenPair) -> Result<(), TokenStoreError>;
    /// Unix times of recent ChatApp logins (ChatApp limits logins per day).
    fn chatapp_logins(&self) -> Result<Vec<i64>, TokenStoreError>;
    /// Stores the login log.
    fn save_chatapp_logins(&self, log: &[i64]) -> Result<(), TokenStoreError>;
}

/// Tokens kept in memory only: for `check-config --online` (which must not need a state db) and
/// for tests. `fail_writes` makes every save fail (a full disk, on purpose).
#[derive(Default)]
pub struct MemoryTokens {
    kommo: Mutex<Option<OAuthPair>>,
    chatapp: Mutex<Option<TokenPair>>,
    logins: Mutex<Vec<i64>>,
    fail_writes: std::sync::atomic::AtomicBool,
}

impl MemoryTokens {
    /// An empty store.
    pub fn new() -> MemoryTokens {
        MemoryTokens::default()
    }

    /// A store holding these pairs (e.g. read from a state db another process holds).
    pub fn with(kommo: Option<OAuthPair>, chatapp: Option<TokenPair>) -> MemoryTokens {
        MemoryTokens {
            kommo: Mutex::new(kommo),
            chatapp: Mutex::new(chatapp),
            ..MemoryTokens::default()
        }
    }

    /// Makes every later save fail (true) or succeed (false).
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_write(&self) -> Result<(), TokenStoreError> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(TokenStoreError(
                "memory token store: writes fail on purpose".into(),
            ));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TokenStore for MemoryTokens {
    fn kommo_pair(&self) -> Result<Option<OAuthPair>, TokenStoreError> {
        Ok(lock(&self.kommo).clone())
    }
    fn save_kommo_pair(&self, pair: &OAuthPair) -> Result<(), TokenStoreError> {
        self.check_write()?;
        *lock(&self.kommo) = Some(pair.clone());
        Ok(())
    }
    fn chatapp_pair(&self) -> Result<Option<TokenPair>, TokenStoreError> {
        Ok(lock(&self.chatapp).clone())
    }
    fn save_chatapp_pair(&self, pair: &TokenPair) -> Result<(), TokenStoreError> {
        self.check_write()?;
        *lock(&self.chatapp) = Some(pair.clone());
        Ok(())
    }
    fn chatapp_logins(&self) -> Result<Vec<i64>, TokenStoreError> {
        Ok(lock(&self.logins).clone())
    }
    fn save_chatapp_logins(&self, log: &[i64]) -> Result<(), TokenStoreError> {
        self.check_write()?;
        *lock(&self.logins) = log.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_token_and_failing_writes_keep_the_old_value() {
        let p = OAuthPair {
            access_token: "secret-a".into(),
            refresh_token: "secret-r".into(),
            expires_at: 1,
        };
        assert!(!format!("{p:?}").contains("secret"));
        let m = MemoryTokens::new();
        m.save_kommo_pair(&p).unwrap();
        m.set_fail_writes(true);
        let q = OAuthPair {
            refresh_token: "other".into(),
            ..p.clone()
        };
        assert!(m.save_kommo_pair(&q).is_err());
        assert_eq!(m.kommo_pair().unwrap(), Some(p));
    }
}
