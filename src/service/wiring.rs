//! The composition root: the real adapters (the Kommo and ChatApp clients over the redb store,
//! which also keeps their tokens) built from a loaded config and handed to the cycle, which sees
//! only the ports. The daemon, `once`, `demo` and `check-config --online` build them here.

use crate::chatapp::ChatAppClient;
use crate::config::{Config, KommoCredentials, Loaded};
use crate::http::ApiError;
use crate::kommo::{FieldMap, KommoClient};
use crate::store::Store;
use crate::sync::Syncer;
use std::sync::Arc;

/// The syncer of the daemon and `once`: the real clients and the redb store.
pub type LiveSyncer = Syncer<KommoClient, ChatAppClient, Store>;

impl LiveSyncer {
    /// The real syncer over an open store (which also keeps the clients' tokens).
    pub fn live(loaded: &Loaded, store: Arc<Store>) -> Result<LiveSyncer, ApiError> {
        let (kommo, chatapp) = clients(loaded, store.clone())?;
        Ok(Syncer::new(loaded.config.clone(), kommo, chatapp, store))
    }
}

/// The limit shared by the instances on this machine, when one is configured (or named by the
/// template unit's environment), opened; a file that cannot be used stops the start.
pub fn shared_limiter(
    cfg: &Config,
) -> Result<Option<crate::http::shared_limit::SharedLimiter>, ApiError> {
    let Some(sl) = cfg.shared_limit() else {
        return Ok(None);
    };
    crate::http::shared_limit::SharedLimiter::open(&sl.path, sl.requests_per_second)
        .map(Some)
        .map_err(|e| ApiError::Limiter {
            api: "kommo",
            reason: e.to_string(),
        })
}

/// Both API clients of a config, keeping their tokens in `tokens`.
pub fn clients(
    loaded: &Loaded,
    tokens: Arc<dyn crate::tokens::TokenStore>,
) -> Result<(KommoClient, ChatAppClient), ApiError> {
    let cfg = &loaded.config;
    let auth = match (&loaded.secrets.kommo, &cfg.kommo.oauth) {
        (KommoCredentials::LongLived(t), _) => crate::kommo::auth::KommoAuth::long_lived(t.clone()),
        (
            KommoCredentials::OAuth {
                client_secret,
                refresh_token_seed,
            },
            Some(o),
        ) => crate::kommo::auth::KommoAuth::oauth(
            crate::kommo::auth::OAuthSettings {
                client_id: o.client_id.clone(),
                client_secret: client_secret.clone(),
                redirect_uri: o.redirect_uri.clone(),
            },
            tokens.clone(),
            refresh_token_seed.as_ref(),
        )?,
        (KommoCredentials::OAuth { .. }, None) => {
            return Err(ApiError::Auth {
                api: "kommo",
                reason: "OAuth secrets without a [kommo.oauth] table".into(),
            });
        }
    };
    let fields = FieldMap::new(&cfg.sync.flag_fields, &cfg.links);
    let kommo = KommoClient::new(&cfg.kommo, fields, auth, shared_limiter(cfg)?)?;
    let chatapp = ChatAppClient::new(
        &cfg.chatapp,
        loaded.secrets.chatapp_password.clone(),
        tokens,
        cfg.chatapp.max_logins_per_day,
    )?;
    Ok((kommo, chatapp))
}
