//! `check-config --online`: checks everything the sync depends on against both APIs and reports
//! every problem in one run, each naming its config key and what was found: the credentials, the
//! Messenger field (and the phone field) on contacts, each flag field on its kind and that it is a
//! checkbox, each configured pipeline, each explicit user pair (an active Kommo user, an existing
//! ChatApp employee) and each license id. With `[daemon] public_url` it also registers the webhook
//! URLs ([`crate::service::webhooks::register`]: a hook Kommo disabled is registered again and
//! said so; a refusal, such as a plan without the webhooks API, is a problem under
//! `daemon.public_url`, not an abort). With `--probe-writes` it also makes the write probe.
//!
//! Tokens: Kommo refresh tokens are single-use, so the check never spends one it cannot store. It
//! uses the state db as its token store when it can open it for writing; when a daemon holds the
//! db it reads the stored pair and uses its access token as is (no refresh), skipping the Kommo
//! checks if that token has expired. A long-lived token needs no store (memory is used).

use crate::chatapp::ChatAppClient;
use crate::config::{Config, FieldRef, KommoCredentials, Loaded};
use crate::core::model::{CardKind, SyncKind};
use crate::http::ApiError;
use crate::kommo::auth::KommoAuth;
use crate::kommo::{FieldDef, KommoClient};
use crate::store::{Store, StoreError};
use crate::tokens::{MemoryTokens, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One problem: the config key and what the APIs say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted config key, e.g. `sync.flag_fields.lead`.
    pub key: String,
    /// What was found.
    pub found: String,
}

/// What the check saw.
#[derive(Debug, Default)]
pub struct Report {
    /// What is fine, one line each.
    pub ok: Vec<String>,
    /// What the operator should know but is not wrong (a webhook registered again, a ChatApp
    /// line left to another integration, an inactive license skipped).
    pub warnings: Vec<String>,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// With `--probe-writes`: what the write probe did.
    pub probe: Option<crate::commands::probe_writes::Probe>,
}

impl Report {
    fn problem(&mut self, key: impl Into<String>, found: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            found: found.into(),
        });
    }
}

/// Runs every check, and with `probe_writes` the write probe
/// ([`crate::commands::probe_writes`]). `Err` only when an API cannot be reached at all (the
/// check could not run); rejected credentials and wrong settings are problems in the report.
pub async fn check(loaded: &Loaded, probe_writes: bool) -> Result<Report, ApiError> {
    let mut report = Report::default();
    let (tokens, held) = token_store(loaded);
    let (kommo, chatapp) = crate::service::wiring::clients(loaded, tokens.clone())?;
    let kommo = match held {
        Held::No => Some(kommo),
        Held::ByDaemon => stored_access_token(loaded, tokens.as_ref())?,
        Held::Unreadable(ref why) => {
            report.ok.push(format!("kommo: not checked: {why}"));
            None
        }
    };
    if let Some(kommo) = &kommo {
        check_kommo(&loaded.config, kommo, &mut report).await?;
    } else if matches!(held, Held::ByDaemon) {
        report.ok.push("kommo: not checked: a running daemon holds the OAuth pair and its access token has expired (the check never spends a refresh token)".into());
    }
    check_chatapp(&loaded.config, &chatapp, &mut report).await?;
    if let (Some(base), Some(token), true) = (
        &loaded.config.daemon.public_url,
        &loaded.secrets.webhook_token,
        report.problems.is_empty(),
    ) {
        let reg = crate::service::webhooks::register(
            kommo.as_ref(),
            &chatapp,
            &loaded.config,
            base,
            token,
            true,
        )
        .await?;
        for n in reg.notes {
            if n.warn {
                report.warnings.push(n.text);
            } else {
                report.ok.push(n.text);
            }
        }
        for (key, found) in reg.problems {
            report.problem(key, found);
        }
    }
    if probe_writes {
        report.probe = Some(
            crate::commands::probe_writes::probe(&loaded.config, kommo.as_ref(), &chatapp).await,
        );
    }
    Ok(report)
}

/// Who holds the Kommo OAuth pair during the check.
enum Held {
    /// Nobody else: the check's token store is the state db itself (or memory, with a
    /// long-lived token).
    No,
    /// A running daemon: the check has a copy in memory and must not refresh.
    ByDaemon,
    /// The pair cannot be read.
    Unreadable(String),
}

/// The token store of the check (see the module docs).
fn token_store(loaded: &Loaded) -> (Arc<dyn TokenStore>, Held) {
    if !matches!(loaded.secrets.kommo, KommoCredentials::OAuth { .. }) {
        return (Arc::new(MemoryTokens::new()), Held::No);
    }
    let path = &loaded.config.daemon.state_path;
    match Store::open(path) {
        Ok(s) => (Arc::new(s), Held::No),
        Err(StoreError::Locked(_)) => match Store::open_read_only(path) {
            Ok(s) => {
                let kommo = s.kommo_pair().ok().flatten();
                let chatapp = s.chatapp_pair().ok().flatten();
                (Arc::new(MemoryTokens::with(kommo, chatapp)), Held::ByDaemon)
            }
            Err(e) => (
                Arc::new(MemoryTokens::new()),
                Held::Unreadable(format!("cannot read the stored OAuth pair: {e}")),
            ),
        },
        Err(e) => (
            Arc::new(MemoryTokens::new()),
            Held::Unreadable(format!(
                "the OAuth pair lives in the state db, which cannot be opened: {e}"
            )),
        ),
    }
}

/// While a daemon holds the OAuth pair: a client on its stored access token as is (never a
/// refresh), or `None` when that token has expired.
fn stored_access_token(
    loaded: &Loaded,
    tokens: &dyn TokenStore,
) -> Result<Option<KommoClient>, ApiError> {
    let now = crate::clock::now_unix();
    match tokens.kommo_pair().ok().flatten() {
        Some(p) if !p.access_token.is_empty() && p.expires_at > now => Ok(Some(KommoClient::new(
            &loaded.config.kommo,
            crate::kommo::FieldMap::new(&loaded.config.sync.flag_fields, &loaded.config.links),
            KommoAuth::long_lived(secrecy::SecretString::from(p.access_token)),
            crate::service::wiring::shared_limiter(&loaded.config)?,
        )?)),
        _ => Ok(None),
    }
}

/// Turns a rejection into a problem under `key`; passes other errors up.
fn rejected(report: &mut Report, key: &str, e: ApiError) -> Result<(), ApiError> {
    if crate::http::policy::is_wrong_setting(&e) {
        report.problem(key, e.to_string());
        Ok(())
    } else {
        Err(e)
    }
}

async fn check_kommo(
    cfg: &Config,
    kommo: &KommoClient,
    report: &mut Report,
) -> Result<(), ApiError> {
    let credential_key = if cfg.kommo.oauth.is_some() {
        "kommo.oauth"
    } else {
        "kommo.token_file"
    };
    let account = match kommo.account().await {
        Ok(a) => a,
        Err(e) => return rejected(report, credential_key, e),
    };
    report.ok.push(format!(
        "kommo: account {} ok, token acts as user {}, list filters {}",
        account.id,
        account.current_user_id,
        if account.is_api_filter_enabled.unwrap_or(false) {
            "enabled"
        } else {
            "not enabled (incremental reads use events and by-id reads)"
        }
    ));
    let users = kommo.users().await?;
    for (i, p) in cfg.users.map.iter().enumerate() {
        match users.iter().find(|u| u.id == p.kommo) {
            None => report.problem(
                format!("users.map[{i}].kommo"),
                format!("Kommo has no user {}", p.kommo),
            ),
            Some(u) if !u.active => report.problem(
                format!("users.map[{i}].kommo"),
                format!("Kommo user {} ({}) is not active", p.kommo, u.email),
            ),
            Some(_) => {}
        }
    }
    check_fields(cfg, kommo, report).await?;
    if !cfg.sync.leads.pipelines.is_empty() {
        let pipelines = kommo.pipelines().await?;
        for id in &cfg.sync.leads.pipelines {
            if !pipelines.names.contains_key(id) {
                let known: Vec<String> = pipelines
                    .names
                    .iter()
                    .map(|(id, name)| format!("{id} {name:?}"))
                    .collect();
                report.problem(
                    "sync.leads.pipelines",
                    format!(
                        "Kommo has no pipeline {id} (pipelines: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Ok(())
}

/// The Messenger and phone fields on contacts; each flag field on its kind, as a checkbox.
// Long on purpose: one check per configured field, each a few lines, reported together.
async fn check_fields(
    cfg: &Config,
    kommo: &KommoClient,
    report: &mut Report,
) -> Result<(), ApiError> {
    let mut defs: BTreeMap<CardKind, Vec<FieldDef>> = BTreeMap::new();
    let mut wanted = vec![CardKind::Contact];
    wanted.extend(
        SyncKind::ALL
            .into_iter()
            .filter(|k| cfg.sync.flag_fields.get(*k).is_some())
            .map(|k| k.entity()),
    );
    for kind in wanted {
        if let std::collections::btree_map::Entry::Vacant(e) = defs.entry(kind) {
            e.insert(kommo.custom_fields(kind).await?);
        }
    }
    let contacts = &defs[&CardKind::Contact];
    let find = |fr: &FieldRef| {
        contacts
            .iter()
            .find(|d| fr.matches(d.id, d.code.as_deref()))
    };
    match find(&cfg.links.messenger_field) {
        Some(d) => report.ok.push(format!(
            "kommo: Messenger field {} found on contacts (id {}, {:?}, {})",
            cfg.links.messenger_field, d.id, d.name, d.field_type
        )),
        None => report.problem(
            "links.messenger_field",
            format!(
                "contacts have no field with id or code {} ({})",
                cfg.links.messenger_field,
                field_list(contacts)
            ),
        ),
    }
    if cfg.links.match_phone && find(&cfg.links.phone_field).is_none() {
        report.problem(
            "links.phone_field",
            format!(
                "contacts have no field with id or code {} (match_phone is on) ({})",
                cfg.links.phone_field,
                field_list(contacts)
            ),
        );
    }
    for kind in SyncKind::ALL {
        let Some(id) = cfg.sync.flag_fields.get(kind) else {
            continue;
        };
        let entity = kind.entity();
        let key = format!("sync.flag_fields.{}", kind.name());
        match defs[&entity].iter().find(|d| d.id == id) {
            None => report.problem(
                key,
                format!(
                    "{} have no field {id} ({})",
                    entity.plural(),
                    field_list(&defs[&entity])
                ),
            ),
            Some(d) if d.field_type != "checkbox" => report.problem(
                key,
                format!(
                    "field {id} of {} ({:?}) is a {} field, not a checkbox",
                    entity.plural(),
                    d.name,
                    d.field_type
                ),
            ),
            Some(d) => report.ok.push(format!(
                "kommo: flag field of {} found: {id} {:?} (checkbox)",
                kind.name(),
                d.name
            )),
        }
    }
    Ok(())
}

/// "checkbox fields: 1 "Sync", 2 "VIP"; other fields: 3" for an error message (bounded).
fn field_list(defs: &[FieldDef]) -> String {
    let shown: Vec<String> = defs
        .iter()
        .take(12)
        .map(|d| format!("{} {:?} {}", d.id, d.name, d.field_type))
        .collect();
    let more = defs.len().saturating_sub(shown.len());
    let mut s = format!("its fields: {}", shown.join(", "));
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    if defs.is_empty() {
        s = "it has no custom fields".into();
    }
    s
}

async fn check_chatapp(
    cfg: &Config,
    chatapp: &ChatAppClient,
    report: &mut Report,
) -> Result<(), ApiError> {
    let employees = match chatapp.employees().await {
        Ok(e) => e,
        Err(e) => return rejected(report, "chatapp.password_file", e),
    };
    report.ok.push(format!(
        "chatapp: login ok, {} employees in company {}",
        employees.len(),
        cfg.chatapp.company_id
    ));
    for (i, p) in cfg.users.map.iter().enumerate() {
        if !employees.iter().any(|e| e.id == p.chatapp) {
            report.problem(
                format!("users.map[{i}].chatapp"),
                format!(
                    "ChatApp company {} has no employee {}",
                    cfg.chatapp.company_id, p.chatapp
                ),
            );
        }
    }
    let licenses = match chatapp.licenses().await {
        Ok(l) => l,
        Err(e) => return rejected(report, "chatapp.license_ids", e),
    };
    for id in &cfg.chatapp.license_ids {
        match licenses.iter().find(|l| l.license_id == *id) {
            Some(l) => report.ok.push(format!(
                "chatapp: license {id} found ({}){}",
                l.messenger_types().join(", "),
                l.inactive_reason()
                    .map(|why| format!(", not active: {why}"))
                    .unwrap_or_default()
            )),
            None => {
                let known: Vec<String> =
                    licenses.iter().map(|l| l.license_id.to_string()).collect();
                report.problem(
                    "chatapp.license_ids",
                    format!(
                        "ChatApp has no license {id} (licenses of this account: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Ok(())
}
