//! `authorize --code CODE` (SPEC 5): exchanges a Kommo authorization code for an OAuth pair and
//! stores it in the state db, replacing the pair there and nothing else, so a revoked pair is
//! replaced without losing a base: the next cycle is an incremental one.
//!
//! Order matters because a code lives 20 minutes and can be used once (AMO `oauth/oauth.md`,
//! `oauth/step-by-step.md`): the config and the client secret are read and the state db is opened
//! for writing *before* the code is sent, so a config error or a running daemon (which holds
//! redb's lock) leaves the code unspent. Writing the pair under a running daemon is refused rather
//! than worked around: the daemon keeps its own pair in memory and would overwrite the new one at
//! its next refresh.
//!
//! Exit codes: 0 stored; 1 refused by Kommo (its reason is printed), no answer, the state db in use
//! or failing, or a pair for another Kommo account than the stored one; 2 a config error (no
//! `[kommo.oauth]`, an unreadable client secret, an empty code). Neither the code nor a token is
//! ever printed: both are registered with [`crate::redact`] before anything can echo them.

use super::{EXIT_CONFIG, runtime};
use crate::config::{self, Config, ConfigError};
use crate::http::{ApiClient, Limits};
use crate::kommo::auth::{self, CodeError, OAuthPair, OAuthSettings};
use crate::store::{META_BOOTSTRAPPED, Store, StoreError};
use crate::tokens::TokenStore;
use secrecy::SecretString;
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

/// What `authorize` needs from the config: the Kommo settings and the OAuth client.
struct Setup {
    cfg: Config,
    settings: OAuthSettings,
}

/// Runs `authorize --code CODE` (`-` reads the code from the first line of stdin).
pub fn main(path: &Path, code: &str) -> ExitCode {
    let code = match read_code(code) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("authorize: {why}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let setup = match load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(&setup.cfg.daemon.log_level, false);
    let state_path = setup.cfg.daemon.state_path.clone();
    if let Some(why) = missing_directory(&state_path) {
        eprintln!("authorize: {why}");
        return ExitCode::FAILURE;
    }
    let created = !state_path.exists();
    let store = match Store::open(&state_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("authorize: {}", open_failure(&e));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime().block_on(exchange(&setup, &code));
    let exit = match result.and_then(|pair| keep(&store, &pair)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("authorize: {why}");
            ExitCode::FAILURE
        }
    };
    if let Err(e) = store.close() {
        eprintln!("authorize: {e}");
        return ExitCode::FAILURE;
    }
    if created {
        give_to_directory_owner(&state_path);
    }
    exit
}

/// The code given on the command line, or read from stdin for `-`; registered as a secret.
fn read_code(arg: &str) -> Result<SecretString, String> {
    let code = if arg == "-" {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the code from stdin: {e}"))?;
        line
    } else {
        arg.to_string()
    };
    let code = code.trim().to_string();
    if code.is_empty() {
        return Err(
            "--code is empty: give the authorization code (or `-` to read it from stdin)".into(),
        );
    }
    crate::redact::register(&code);
    Ok(SecretString::from(code))
}

/// The config (validated) and the OAuth client; every error is a config error naming its key.
/// Only the client secret is read: the other secret files are not needed here.
fn load(path: &Path) -> Result<Setup, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config error in {file}: (file): cannot read: {e}"))?;
    let cfg = Config::parse(&text, &file).map_err(|e| e.to_string())?;
    let Some(o) = cfg.kommo.oauth.clone() else {
        return Err(ConfigError {
            file,
            key: "kommo.oauth".into(),
            reason: "missing: `authorize` exchanges an authorization code with the [kommo.oauth] table's client_id, client_secret_file and redirect_uri; this config uses a long-lived token_file, which needs no authorization".into(),
        }
        .to_string());
    };
    let mut warnings = vec![];
    let secret = config::read_secret(
        "kommo.oauth.client_secret_file",
        &o.client_secret_file,
        path,
        &mut warnings,
    )
    .map_err(|e| e.to_string())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(Setup {
        settings: OAuthSettings {
            client_id: o.client_id,
            client_secret: secret,
            redirect_uri: o.redirect_uri,
        },
        cfg,
    })
}

/// The state db's directory, when it does not exist: on a new install systemd creates it
/// (`StateDirectory=`) only when the unit first starts, and one created here would be root's.
fn missing_directory(db: &Path) -> Option<String> {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty())?;
    (!dir.is_dir()).then(|| {
        format!(
            "the state db's directory {d} does not exist: create it for the daemon's user first (e.g. `install -d -o chatapp-kommo-sync -g chatapp-kommo-sync -m 0700 {d}`) and run authorize again. The code was not sent",
            d = dir.display()
        )
    })
}

/// Why the state db cannot be written, and what to do.
fn open_failure(e: &StoreError) -> String {
    match e {
        StoreError::Locked(p) => format!(
            "the state db {} is in use by a running daemon (or a `once`): stop it first (e.g. `systemctl stop chatapp-kommo-sync`), run authorize again, then start it. The code was not sent, so it is still good for the rest of its 20 minutes",
            p.display()
        ),
        other => format!("{other}; the code was not sent"),
    }
}

/// Sends the code to Kommo through the same client plumbing as the daemon (rate limit, the
/// limit shared by the instances on this machine, retries of transport errors and 5xx).
async fn exchange(setup: &Setup, code: &SecretString) -> Result<OAuthPair, String> {
    let k = &setup.cfg.kommo;
    let limits = Limits::standard(k.requests_per_second, k.timeout, Some(k.block_cooloff));
    let api = ApiClient::new("kommo", &k.base_url, limits)
        .map_err(|e| e.to_string())?
        .with_shared_limit(shared_limit(&setup.cfg));
    auth::exchange_code(&api, &setup.settings, code)
        .await
        .map_err(|e| match e {
            CodeError::Refused(_) => format!(
                "{e}. A code lives 20 minutes and works once, and redirect_uri must match the integration's exactly: get a new code and try again"
            ),
            CodeError::Failed(_) => e.to_string(),
        })
}

/// The machine's shared Kommo limit, when instances already share one. Its file is never
/// created here: `authorize` usually runs as root, and a file created by root would lock the
/// daemons' user out. One request without it, with a warning, rather than none.
fn shared_limit(cfg: &Config) -> Option<crate::http::shared_limit::SharedLimiter> {
    if !cfg.shared_limit().is_some_and(|sl| sl.path.exists()) {
        return None;
    }
    crate::service::wiring::shared_limiter(cfg).unwrap_or_else(|e| {
        eprintln!("authorize: warning: {e}; sending the code without the shared limit");
        None
    })
}

/// Stores `pair` in place of the db's pair, unless that pair is for another Kommo account; the
/// line to print on success.
fn keep(store: &Store, pair: &OAuthPair) -> Result<String, String> {
    let account = |p: &OAuthPair| {
        auth::jwt_claims(&p.access_token)
            .and_then(|c| c.get("account_id").and_then(serde_json::Value::as_u64))
    };
    let old = store
        .kommo_pair()
        .map_err(|e| format!("cannot read the stored pair: {e}; the new pair was not stored"))?;
    let new_account = account(pair);
    if let (Some(was), Some(now)) = (old.as_ref().and_then(account), new_account)
        && was != now
    {
        return Err(format!(
            "the code is for Kommo account {now}, but the state db {} holds the bases of account {was}: the pair was not stored. Authorize with a code from account {was}, or give account {now} a state_path of its own",
            store.path().display()
        ));
    }
    store.save_kommo_pair(pair).map_err(|e| {
        format!("Kommo issued a pair but it could not be stored: {e}; fix the state db and authorize again with a new code")
    })?;
    let bootstrapped = store
        .meta::<bool>(META_BOOTSTRAPPED)
        .ok()
        .flatten()
        .unwrap_or(false);
    Ok(stored_line(store.path(), pair, new_account, bootstrapped))
}

/// What `authorize` prints after storing (no token in it).
fn stored_line(db: &Path, pair: &OAuthPair, account: Option<u64>, bootstrapped: bool) -> String {
    let until = chrono::DateTime::from_timestamp(pair.expires_at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "unknown".into());
    let account = account
        .map(|a| format!(" for account {a}"))
        .unwrap_or_default();
    let next = if bootstrapped {
        "every base in it is kept: the next cycle is incremental"
    } else {
        "no cycle has run on this state db yet: the first one is a first run"
    };
    format!(
        "authorize: stored a new Kommo OAuth pair{account} in {} (access token valid until {until}; refreshed by the daemon from now on); {next}",
        db.display()
    )
}

/// A state db that this run created as root is given to the owner of its directory (the
/// service's state directory), so the daemon, which runs as that user, can open it.
fn give_to_directory_owner(db: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    if let (Ok(f), Ok(d)) = (std::fs::metadata(db), std::fs::metadata(dir))
        && (f.uid(), f.gid()) != (d.uid(), d.gid())
        && let Err(e) = std::os::unix::fs::chown(db, Some(d.uid()), Some(d.gid()))
    {
        eprintln!(
            "authorize: warning: cannot give {} to the owner of {}: {e}; chown it to the daemon's user",
            db.display(),
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_line_holds_no_token() {
        let p = OAuthPair {
            access_token: "access-SECRET".into(),
            refresh_token: "refresh-SECRET".into(),
            expires_at: 1_900_000_000,
        };
        let line = stored_line(Path::new("/x/state.redb"), &p, Some(7), true);
        assert!(!line.contains("SECRET"), "{line}");
        assert!(line.contains("incremental") && line.contains("account 7"));
        assert!(stored_line(Path::new("/x"), &p, None, false).contains("first run"));
    }

    #[test]
    fn an_empty_code_is_refused() {
        assert!(read_code("  ").is_err());
        assert!(read_code("abc").is_ok());
    }
}
