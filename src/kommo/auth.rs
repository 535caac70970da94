//! Kommo credentials: a long-lived token, or OAuth with single-use refresh tokens.
//!
//! OAuth rules (Kommo refresh tokens are globally single-use; reusing one gives 401 "Token has been
//! revoked"): one refresh in flight at a time (a mutex around the pair); the new pair is stored
//! durably (the [`TokenStore`] port: the state db) *before* the new access token is used; the
//! `refresh_token_file` is read only to seed an empty store; a refresh happens proactively before
//! the access token expires and once on a 401. A pair comes from `authorize --code`
//! ([`exchange_code`]: the authorization code grant, AMO `oauth/step-by-step.md`), which replaces
//! the stored pair and nothing else. A refresh answered 401 or 404 asks Kommo whether the account
//! moved to another subdomain ([`domain`]).
//!
//! Never losing a token: Kommo has revoked the old refresh token by the time the answer arrives,
//! so if storing the new pair fails (a full disk, a db error) the pair is **kept in memory and
//! used**, the store is retried at every cycle ([`KommoAuth::retry_unsaved`]), an error is logged
//! each time, and [`KommoAuth::unsaved`] reports it (the daemon is then not ready, says so in
//! STATUS= and `chatapp_kommo_sync_kommo_token_unsaved`) until a store succeeds. If the process
//! dies in that window the only valid refresh token dies with it: after the restart the stored
//! (revoked) one fails and the integration must be authorized again by hand. The same holds for a
//! crash between Kommo issuing the pair and the store, which no client can close.

pub mod domain;

use crate::clock::now_unix;
use crate::http::{ApiClient, ApiError, Response};
pub use crate::tokens::OAuthPair;
use crate::tokens::TokenStore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;

const API: &str = "kommo";
/// `POST /oauth2/access_token`: both grants (AMO `oauth/step-by-step.md`).
const TOKEN_ENDPOINT: &str = "POST /oauth2/access_token";
/// What to do when Kommo no longer accepts the refresh token.
pub const REAUTHORIZE: &str = "if the refresh token was revoked, authorize the integration again: get a new authorization code and run `chatapp-kommo-sync authorize --code CODE` with the daemon stopped (the state db and every base are kept)";
/// Refresh this long before the access token expires.
pub const REFRESH_MARGIN_SECS: i64 = 600;
/// Warn when a long-lived token expires within this many seconds.
pub const LONG_LIVED_WARN_SECS: i64 = 14 * 86_400;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    server_time: Option<i64>,
}

impl TokenResponse {
    /// The pair to store (both tokens registered as secrets first). The expiry is the JWT `exp`,
    /// else `server_time + expires_in` (Kommo documents 86 400 s).
    fn into_pair(self) -> OAuthPair {
        crate::redact::register(&self.access_token);
        crate::redact::register(&self.refresh_token);
        let issued = self.server_time.unwrap_or_else(now_unix);
        OAuthPair {
            expires_at: jwt_exp(&self.access_token)
                .unwrap_or(issued.saturating_add(self.expires_in.unwrap_or(86_400))),
            access_token: self.access_token,
            refresh_token: self.refresh_token,
        }
    }
}

/// Why an authorization code gave no pair.
#[derive(Debug)]
pub enum CodeError {
    /// Kommo answered and refused (its status and reason, shortened and scrubbed).
    Refused(String),
    /// No usable answer (transport, 5xx after retries, a body that does not decode).
    Failed(ApiError),
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Refused(why) => write!(f, "Kommo refused the authorization code: {why}"),
            CodeError::Failed(e) => write!(f, "no answer from Kommo: {e}"),
        }
    }
}

/// Exchanges an authorization code for a pair (`grant_type=authorization_code`, AMO
/// `oauth/step-by-step.md` L178-L215: the body is `client_id`, `client_secret`, `grant_type`,
/// `code`, `redirect_uri`; 200 gives the pair, 400 "Переданы некорректные данные" with the details
/// in the body). Goes through `api` (its rate limit and retries of transport errors, 429 and 5xx);
/// any other non-2xx answer is a refusal. Both tokens are registered as secrets.
pub async fn exchange_code(
    api: &ApiClient,
    settings: &OAuthSettings,
    code: &SecretString,
) -> Result<OAuthPair, CodeError> {
    crate::redact::register(code.expose_secret());
    let url = api.url("/oauth2/access_token");
    let body = serde_json::json!({
        "client_id": settings.client_id,
        "client_secret": settings.client_secret.expose_secret(),
        "grant_type": "authorization_code",
        "code": code.expose_secret(),
        "redirect_uri": settings.redirect_uri,
    });
    let r = api
        .execute(TOKEN_ENDPOINT, |c| c.post(&url).json(&body))
        .await
        .map_err(CodeError::Failed)?;
    if !r.status.is_success() {
        return Err(CodeError::Refused(format!(
            "{}: HTTP {}: {}",
            api.with_host(TOKEN_ENDPOINT),
            r.status.as_u16(),
            kommo_reason(&r)
        )));
    }
    let t: TokenResponse = api
        .decode(TOKEN_ENDPOINT, &r.body)
        .map_err(CodeError::Failed)?;
    Ok(t.into_pair())
}

/// Kommo's reason in an OAuth error body: its `hint`, `detail` or `title` (the fields of the
/// problem+json answers), else the start of the body; shortened and scrubbed.
fn kommo_reason(r: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    let parts: Vec<&str> = ["hint", "detail", "title"]
        .into_iter()
        .filter_map(field)
        .filter(|s| !s.trim().is_empty())
        .collect();
    if parts.is_empty() {
        r.excerpt(200)
    } else {
        crate::redact::excerpt(&parts.join("; "), 300)
    }
}

/// The OAuth client settings.
pub struct OAuthSettings {
    /// Integration id.
    pub client_id: String,
    /// Integration secret.
    pub client_secret: SecretString,
    /// Redirect URI registered with the integration.
    pub redirect_uri: String,
}

/// Where Kommo access tokens come from.
pub enum KommoAuth {
    /// A long-lived token.
    LongLived(SecretString),
    /// OAuth with rotation.
    OAuth {
        /// Client settings.
        settings: OAuthSettings,
        /// Where the pair is kept.
        store: Arc<dyn TokenStore>,
        /// The current pair (the mutex makes refreshes single-flight).
        pair: Mutex<OAuthPair>,
        /// The pair in use could not be stored yet (it lives only in memory).
        unsaved: AtomicBool,
    },
}

/// The `exp` claim of a JWT, read without verifying it.
pub fn jwt_exp(token: &str) -> Option<i64> {
    jwt_claims(token)?.get("exp")?.as_i64()
}

/// The claims of a JWT, read without verifying it (Kommo's access tokens carry `exp`,
/// `account_id` and `api_domain`).
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    serde_json::from_slice(&bytes).ok()
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

impl KommoAuth {
    /// A long-lived token; warns when its JWT `exp` is near or past.
    pub fn long_lived(token: SecretString) -> KommoAuth {
        if let Some(exp) = jwt_exp(token.expose_secret()) {
            let left = exp - now_unix();
            if left < 0 {
                tracing::error!(
                    expired_at = exp,
                    "the Kommo long-lived token has expired: generate a new one"
                );
            } else if left < LONG_LIVED_WARN_SECS {
                tracing::warn!(
                    expires_at = exp,
                    days_left = left / 86_400,
                    "the Kommo long-lived token expires soon: generate a new one"
                );
            }
        }
        KommoAuth::LongLived(token)
    }

    /// OAuth: the stored pair, or (empty store only) the seed refresh token, stored at once. An
    /// empty store without a seed is an error that says to run `authorize --code`.
    pub fn oauth(
        settings: OAuthSettings,
        store: Arc<dyn TokenStore>,
        seed: Option<&SecretString>,
    ) -> Result<KommoAuth, ApiError> {
        let stored = store.kommo_pair().map_err(|e| ApiError::Store {
            api: API,
            reason: format!("reading the stored OAuth pair: {e}"),
        })?;
        let pair = match stored {
            Some(p) => {
                crate::redact::register(&p.access_token);
                crate::redact::register(&p.refresh_token);
                p
            }
            None => {
                let Some(seed) = seed else {
                    return Err(ApiError::Auth {
                        api: API,
                        reason: "the state db holds no Kommo OAuth pair and [kommo.oauth] names no refresh_token_file: get an authorization code and run `chatapp-kommo-sync authorize --code CODE`".into(),
                    });
                };
                let p = OAuthPair {
                    access_token: String::new(),
                    refresh_token: seed.expose_secret().to_string(),
                    expires_at: 0,
                };
                store.save_kommo_pair(&p).map_err(|e| ApiError::Store {
                    api: API,
                    reason: format!("storing the seed refresh token: {e}"),
                })?;
                tracing::info!(
                    "seeded the Kommo OAuth pair from refresh_token_file; the file is not read again"
                );
                p
            }
        };
        Ok(KommoAuth::OAuth {
            settings,
            store,
            pair: Mutex::new(pair),
            unsaved: AtomicBool::new(false),
        })
    }

    /// True while a rotated pair lives only in memory (its store failed).
    pub fn unsaved(&self) -> bool {
        match self {
            KommoAuth::LongLived(_) => false,
            KommoAuth::OAuth { unsaved, .. } => unsaved.load(Ordering::SeqCst),
        }
    }

    /// Takes over a pair that lives only in memory in `old` (the credentials of the syncer a
    /// reload replaces), so that a reload never loses the only valid token.
    pub async fn adopt_unsaved(&self, old: &KommoAuth) {
        if let (
            KommoAuth::OAuth { pair, unsaved, .. },
            KommoAuth::OAuth {
                pair: old_pair,
                unsaved: old_unsaved,
                ..
            },
        ) = (self, old)
            && old_unsaved.load(Ordering::SeqCst)
        {
            *pair.lock().await = old_pair.lock().await.clone();
            unsaved.store(true, Ordering::SeqCst);
        }
    }

    /// Stores a pair that lives only in memory; called at the start of every cycle. Returns
    /// whether the pair in use is now stored (always true without such a pair).
    pub async fn retry_unsaved(&self) -> bool {
        let KommoAuth::OAuth {
            store,
            pair,
            unsaved,
            ..
        } = self
        else {
            return true;
        };
        if !unsaved.load(Ordering::SeqCst) {
            return true;
        }
        let p = pair.lock().await;
        self.store_pair(store.as_ref(), &p, unsaved)
    }

    /// Stores `p`; on failure keeps `unsaved` set and logs an error (the pair stays in use).
    fn store_pair(&self, store: &dyn TokenStore, p: &OAuthPair, unsaved: &AtomicBool) -> bool {
        match store.save_kommo_pair(p) {
            Ok(()) => {
                if unsaved.swap(false, Ordering::SeqCst) {
                    tracing::warn!("the rotated Kommo OAuth pair is stored now");
                }
                true
            }
            Err(e) => {
                unsaved.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot store the rotated Kommo OAuth pair: it is kept in memory and used (Kommo revoked the old one); retried every cycle; if the process stops now, the integration must be authorized again");
                false
            }
        }
    }

    /// A usable access token (refreshing first when an OAuth token is missing or about to expire).
    pub async fn token(&self, api: &ApiClient) -> Result<String, ApiError> {
        match self {
            KommoAuth::LongLived(t) => Ok(t.expose_secret().to_string()),
            KommoAuth::OAuth { pair, .. } => {
                let mut p = pair.lock().await;
                if p.access_token.is_empty()
                    || p.expires_at.saturating_sub(REFRESH_MARGIN_SECS) <= now_unix()
                {
                    self.refresh_locked(api, &mut p).await?;
                }
                Ok(p.access_token.clone())
            }
        }
    }

    /// After a 401 with `used`: refresh once (unless another task already did) and return the new
    /// token; `None` when the credentials cannot be refreshed (long-lived).
    pub async fn after_unauthorized(
        &self,
        api: &ApiClient,
        used: &str,
    ) -> Result<Option<String>, ApiError> {
        match self {
            KommoAuth::LongLived(_) => Ok(None),
            KommoAuth::OAuth { pair, .. } => {
                let mut p = pair.lock().await;
                if p.access_token == used {
                    self.refresh_locked(api, &mut p).await?;
                }
                Ok(Some(p.access_token.clone()))
            }
        }
    }

    async fn refresh_locked(&self, api: &ApiClient, p: &mut OAuthPair) -> Result<(), ApiError> {
        let KommoAuth::OAuth {
            settings,
            store,
            unsaved,
            ..
        } = self
        else {
            return Ok(());
        };
        let url = api.url("/oauth2/access_token");
        let body = serde_json::json!({
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.expose_secret(),
            "grant_type": "refresh_token",
            "refresh_token": p.refresh_token,
            "redirect_uri": settings.redirect_uri,
        });
        let r = api
            .execute(TOKEN_ENDPOINT, |c| c.post(&url).json(&body))
            .await?;
        if !r.status.is_success() {
            return Err(refresh_refused(api, p, &r).await);
        }
        let t: TokenResponse = api.decode(TOKEN_ENDPOINT, &r.body)?;
        let next = t.into_pair();
        // Durable before use; the old refresh token is already revoked, so a pair that cannot be
        // stored is kept and used all the same (never dropped).
        *p = next;
        if self.store_pair(store.as_ref(), p, unsaved) {
            tracing::info!(
                expires_at = p.expires_at,
                "refreshed the Kommo OAuth pair (stored before use)"
            );
        }
        Ok(())
    }
}

/// The error of a refused refresh. After a 401 or 404, Kommo is asked whether the account moved
/// to another subdomain (AMO `oauth/account-subdomain-info.md`; amoCRM's PHP library does the
/// same on these two statuses): a move is reported with the new domain and logged at error level;
/// the host is not switched (see [`domain`]).
async fn refresh_refused(api: &ApiClient, p: &OAuthPair, r: &Response) -> ApiError {
    let status = r.status.as_u16();
    let what = format!(
        "{}: HTTP {status}: {}",
        api.with_host(TOKEN_ENDPOINT),
        kommo_reason(r)
    );
    let check = if matches!(status, 401 | 404) {
        domain::check(api, &p.access_token, &p.refresh_token).await
    } else {
        domain::DomainCheck::Unknown(format!("not asked after HTTP {status}"))
    };
    let here = domain::authority(api.base()).unwrap_or_default();
    let reason = match check {
        domain::DomainCheck::Moved(to) => {
            tracing::error!(from = %here, to = %to, "the Kommo account has moved to another domain: change kommo.base_url");
            format!(
                "{what}; the Kommo account has moved: Kommo names its domain {to}, kommo.base_url names {here}. Set kommo.base_url = \"https://{to}\" and reload (or restart) the daemon: the stored OAuth pair was not spent and stays valid, so no new authorization is needed"
            )
        }
        domain::DomainCheck::Same => format!(
            "{what}; Kommo still accepts the refresh token and the account is still at {here}: check kommo.oauth client_id, client_secret_file and redirect_uri"
        ),
        domain::DomainCheck::TokenRefused => format!(
            "{what}; Kommo no longer accepts the refresh token (the account-domain check refused it too): {REAUTHORIZE}"
        ),
        domain::DomainCheck::Unknown(why) => {
            format!("{what} ({REAUTHORIZE}; account-domain check: {why})")
        }
    };
    ApiError::Auth { api: API, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jwt_exp() {
        // {"alg":"none"}.{"exp":1893456000}.sig
        let t = "eyJhbGciOiJub25lIn0.eyJleHAiOjE4OTM0NTYwMDB9.c2ln";
        assert_eq!(jwt_exp(t), Some(1_893_456_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
        #[cfg(feature = "sim")]
        {
            let sim = crate::sim::fake_jwt(&serde_json::json!({"exp": 42}));
            assert_eq!(jwt_exp(&sim), Some(42));
        }
    }
}
