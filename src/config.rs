//! The config file (SPEC section 5): strict TOML (an unknown key or table is an error), validated
//! values, and secrets read only from `*_file` paths into types that never print.

use crate::engine::{Bootstrap, ConflictPolicy, LeadsPolicy, Policy};
use crate::model::{CardKind, SyncKind};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the config is looked for when neither `--config` nor `$CHATAPP_KOMMO_SYNC_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chatapp-kommo-sync/config.toml";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "CHATAPP_KOMMO_SYNC_CONFIG";
/// The longest duration a config may give (a year): longer ones would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A config problem: the key it is about and why. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error in {file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The dotted key, e.g. `kommo.base_url` (or `(file)` for a file-level problem).
    pub key: String,
    /// Why it is wrong.
    pub reason: String,
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`
    pub daemon: DaemonConfig,
    /// `[kommo]`
    pub kommo: KommoConfig,
    /// `[chatapp]`
    pub chatapp: ChatAppConfig,
    /// `[sync]`
    pub sync: SyncConfig,
    /// `[links]`
    #[serde(default)]
    pub links: LinksConfig,
    /// `[users]`
    #[serde(default)]
    pub users: UsersConfig,
}

/// `[daemon]`: state, schedules, logging, HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The redb state file.
    pub state_path: PathBuf,
    /// Cron (5 or 6 fields) of incremental cycles.
    #[serde(default = "default_poll_schedule")]
    pub poll_schedule: String,
    /// Cron of full reconcile cycles.
    #[serde(default = "default_full_schedule")]
    pub full_schedule: String,
    /// IANA time zone of the schedules.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Optional `host:port` of the metrics/health endpoint.
    #[serde(default)]
    pub listen: Option<String>,
    /// Log level filter (`RUST_LOG` overrides it).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How long one cycle may spend in total, retries included, before it fails.
    #[serde(default = "default_cycle_budget", with = "humantime_serde")]
    pub cycle_budget: Duration,
    /// A file holding the secret token of the webhook URLs (`/hooks/kommo/<token>`,
    /// `/hooks/chatapp/<token>` on `listen`); no webhooks without it.
    #[serde(default)]
    pub webhook_token_file: Option<PathBuf>,
    /// The public `https://` address at which `listen` is reachable (through a TLS proxy):
    /// `check-config --online` registers the webhook URLs under it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// A webhook call triggers an incremental cycle this long after it (calls meanwhile fold in).
    #[serde(default = "default_webhook_debounce", with = "humantime_serde")]
    pub webhook_debounce: Duration,
    /// Webhook-triggered cycles start at least this long after the end of the previous cycle;
    /// calls meanwhile are coalesced into one cycle when it has passed. `0s` turns spacing off.
    #[serde(default = "default_webhook_min_interval", with = "humantime_serde")]
    pub webhook_min_interval: Duration,
    /// Connections the HTTP endpoint (`listen`) serves at a time; a new one past it evicts the
    /// oldest idle one (see `http_server`). Takes effect at the next restart.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// `[kommo]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KommoConfig {
    /// `https://<subdomain>.kommo.com`.
    pub base_url: String,
    /// A file holding a long-lived token (or use `[kommo.oauth]`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// OAuth credentials (instead of `token_file`).
    #[serde(default)]
    pub oauth: Option<KommoOAuthConfig>,
    /// Request rate limit; Kommo allows 7.
    #[serde(default = "default_kommo_rps")]
    pub requests_per_second: u32,
    /// Cards per PATCH; Kommo allows 250 and recommends 50.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How far before the events watermark an incremental cycle reads again.
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub events_overlap: Duration,
    /// After a block (403 with an HTML page, or repeated 403s), no Kommo call for this long.
    #[serde(default = "default_block_cooloff", with = "humantime_serde")]
    pub block_cooloff: Duration,
}

/// `[kommo.oauth]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KommoOAuthConfig {
    /// The integration's id.
    pub client_id: String,
    /// A file holding the client secret.
    pub client_secret_file: PathBuf,
    /// The integration's redirect URI.
    pub redirect_uri: String,
    /// A file holding the first refresh token; read only to seed an empty state db.
    pub refresh_token_file: PathBuf,
}

/// `[chatapp]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatAppConfig {
    /// `https://api.chatapp.online`.
    pub base_url: String,
    /// Login e-mail.
    pub email: String,
    /// A file holding the password.
    pub password_file: PathBuf,
    /// `app_<n>_<n>` from the ChatApp account.
    pub app_id: String,
    /// The company whose employees are the responsible persons.
    pub company_id: u64,
    /// The licenses ("lines") whose dialogs are synced.
    pub license_ids: Vec<u64>,
    /// Request rate limit.
    #[serde(default = "default_chatapp_rps")]
    pub requests_per_second: u32,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How far before the chats watermark an incremental cycle reads again.
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub chats_overlap: Duration,
    /// The most logins (`POST /v1/tokens`) in any 24 h; ChatApp allows about 100 a day.
    #[serde(default = "default_max_logins")]
    pub max_logins_per_day: usize,
    /// The call that sets a dialog's responsible (UNCONFIRMED in ChatApp's public material).
    #[serde(default)]
    pub set_responsible: SetResponsibleConfig,
}

/// `[chatapp.set_responsible]`: the method, path template and body field of the call that sets a
/// dialog's responsible. `{licenseId}`, `{messengerType}` and `{chatId}` are substituted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetResponsibleConfig {
    /// HTTP method: PUT, POST or PATCH.
    #[serde(default = "default_set_method")]
    pub method: String,
    /// Path template.
    #[serde(default = "default_set_path")]
    pub path: String,
    /// JSON body field that carries the employee id.
    #[serde(default = "default_set_field")]
    pub body_field: String,
}

impl Default for SetResponsibleConfig {
    fn default() -> Self {
        SetResponsibleConfig {
            method: default_set_method(),
            path: default_set_path(),
            body_field: default_set_field(),
        }
    }
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Kinds whose responsible is pushed into linked dialogs.
    #[serde(default)]
    pub crm_to_chat: Vec<SyncKind>,
    /// Kinds that receive the dialog's responsible.
    #[serde(default)]
    pub chat_to_crm: Vec<SyncKind>,
    /// `newest` | `crm` | `chat`.
    #[serde(default)]
    pub conflict: ConflictPolicy,
    /// Change times of the two systems closer than this are a tie.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    /// `adopt` | `crm` | `chat`.
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// Safety brake.
    #[serde(default = "default_max_writes")]
    pub max_writes_per_cycle: usize,
    /// Per-kind sync-flag checkbox field ids.
    #[serde(default)]
    pub flag_fields: FlagFields,
    /// Which leads take part.
    #[serde(default)]
    pub leads: LeadsConfig,
}

/// `[sync.leads]`: which leads take part.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeadsConfig {
    /// Won (142) and lost (143) leads take part too (default: they are left alone).
    #[serde(default)]
    pub include_closed: bool,
    /// Only leads in these pipelines take part; empty or absent: all.
    #[serde(default)]
    pub pipelines: Vec<u64>,
}

/// `[sync.flag_fields]`: the checkbox custom field id per kind; a kind without one takes part with
/// every card.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlagFields {
    /// Incoming leads (a lead's "Incoming leads" stage; the field is one of the leads' fields).
    pub incoming_lead: Option<u64>,
    /// Leads.
    pub lead: Option<u64>,
    /// Contacts.
    pub contact: Option<u64>,
    /// Companies.
    pub company: Option<u64>,
    /// Customers.
    pub customer: Option<u64>,
}

impl FlagFields {
    /// The flag field of a kind.
    pub fn get(&self, kind: SyncKind) -> Option<u64> {
        match kind {
            SyncKind::IncomingLead => self.incoming_lead,
            SyncKind::Lead => self.lead,
            SyncKind::Contact => self.contact,
            SyncKind::Company => self.company,
            SyncKind::Customer => self.customer,
        }
    }
}

/// A custom field named by id or by code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FieldRef {
    /// A field id.
    Id(u64),
    /// A field code (`PHONE`) or an id written as a string.
    Code(String),
}

impl FieldRef {
    /// True when a Kommo field with this id and code is the one named.
    pub fn matches(&self, field_id: u64, field_code: Option<&str>) -> bool {
        match self {
            FieldRef::Id(id) => *id == field_id,
            FieldRef::Code(c) => {
                c.parse::<u64>().ok() == Some(field_id)
                    || field_code.is_some_and(|fc| fc.eq_ignore_ascii_case(c))
            }
        }
    }
}

impl fmt::Display for FieldRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldRef::Id(id) => write!(f, "{id}"),
            FieldRef::Code(c) => f.write_str(c),
        }
    }
}

/// `[links]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// The contact's Messenger field, by id or code.
    #[serde(default = "default_messenger_field")]
    pub messenger_field: FieldRef,
    /// Link a contact to a dialog whose phone equals one of the contact's phones.
    #[serde(default = "yes")]
    pub match_phone: bool,
    /// The contact's phone field, by id or code.
    #[serde(default = "default_phone_field")]
    pub phone_field: FieldRef,
}

impl Default for LinksConfig {
    fn default() -> Self {
        LinksConfig {
            messenger_field: default_messenger_field(),
            match_phone: true,
            phone_field: default_phone_field(),
        }
    }
}

/// `[users]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// Match the remaining users by e-mail.
    #[serde(default = "yes")]
    pub match_by_email: bool,
    /// Explicit pairs; they win over e-mail matching.
    #[serde(default)]
    pub map: Vec<UserPair>,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            match_by_email: true,
            map: vec![],
        }
    }
}

/// One explicit user pair.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserPair {
    /// Kommo user id.
    pub kommo: u64,
    /// ChatApp employee id.
    pub chatapp: u64,
}

fn yes() -> bool {
    true
}
fn default_poll_schedule() -> String {
    "*/30 * * * * *".into()
}
fn default_full_schedule() -> String {
    "0 0 3 * * *".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_cycle_budget() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_webhook_debounce() -> Duration {
    Duration::from_millis(500)
}
fn default_webhook_min_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    crate::http_server::DEFAULT_MAX_CONNECTIONS
}
fn default_kommo_rps() -> u32 {
    6
}
fn default_chatapp_rps() -> u32 {
    20
}
fn default_batch_size() -> usize {
    50
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_overlap() -> Duration {
    Duration::from_secs(120)
}
fn default_block_cooloff() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_max_logins() -> usize {
    20
}
fn default_skew() -> Duration {
    Duration::from_secs(5)
}
fn default_max_writes() -> usize {
    500
}
fn default_set_method() -> String {
    "PUT".into()
}
fn default_set_path() -> String {
    "/v1/licenses/{licenseId}/messengers/{messengerType}/chats/{chatId}/responsible".into()
}
fn default_set_field() -> String {
    "responsibleId".into()
}
fn default_messenger_field() -> FieldRef {
    FieldRef::Code("MESSENGER".into())
}
fn default_phone_field() -> FieldRef {
    FieldRef::Code("PHONE".into())
}

/// Kommo credentials as loaded from their files.
pub enum KommoCredentials {
    /// A long-lived token.
    LongLived(SecretString),
    /// OAuth: client secret and the seed refresh token.
    OAuth {
        /// The client secret.
        client_secret: SecretString,
        /// The refresh token from `refresh_token_file` (used only to seed an empty db).
        refresh_token_seed: SecretString,
    },
}

impl fmt::Debug for KommoCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KommoCredentials::LongLived(_) => {
                f.write_str("KommoCredentials::LongLived([REDACTED])")
            }
            KommoCredentials::OAuth { .. } => f.write_str("KommoCredentials::OAuth([REDACTED])"),
        }
    }
}

/// The secrets, read from files; `Debug` never shows them.
#[derive(Debug)]
pub struct Secrets {
    /// Kommo credentials.
    pub kommo: KommoCredentials,
    /// The ChatApp password.
    pub chatapp_password: SecretString,
    /// The webhook URLs' token, if webhooks are on.
    pub webhook_token: Option<SecretString>,
}

/// A validated config with its secrets.
#[derive(Debug)]
pub struct Loaded {
    /// The config file.
    pub path: PathBuf,
    /// Its values.
    pub config: Config,
    /// Its secrets.
    pub secrets: Secrets,
}

/// Picks the config path: `--config`, else `$CHATAPP_KOMMO_SYNC_CONFIG`, else the default.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Config {
    /// Parses and validates a config text (no secrets read). `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(file)".into());
            ConfigError {
                file: file.into(),
                key,
                reason: e.message().trim().to_string()
                    + &e.span()
                        .map(|s| format!(" (line {})", line_of(text, s.start)))
                        .unwrap_or_default(),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The semantic checks TOML types cannot express.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.into(),
            key: key.into(),
            reason,
        };
        check_base_url(&self.kommo.base_url).map_err(|r| err("kommo.base_url", r))?;
        check_base_url(&self.chatapp.base_url).map_err(|r| err("chatapp.base_url", r))?;
        self.daemon.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            err(
                "daemon.timezone",
                format!("unknown time zone {:?}", self.daemon.timezone),
            )
        })?;
        crate::schedule::Schedule::parse(&self.daemon.poll_schedule, &self.daemon.timezone)
            .map_err(|r| err("daemon.poll_schedule", r))?;
        crate::schedule::Schedule::parse(&self.daemon.full_schedule, &self.daemon.timezone)
            .map_err(|r| err("daemon.full_schedule", r))?;
        if let Some(l) = &self.daemon.listen {
            l.parse::<std::net::SocketAddr>().map_err(|_| {
                err(
                    "daemon.listen",
                    format!("{l:?} is not host:port (e.g. 127.0.0.1:9187)"),
                )
            })?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level)
            .map_err(|e| err("daemon.log_level", format!("{e}")))?;
        if self.daemon.webhook_token_file.is_some() && self.daemon.listen.is_none() {
            return Err(err(
                "daemon.webhook_token_file",
                "webhooks are served on daemon.listen: set it too (e.g. \"127.0.0.1:9187\" behind a TLS proxy)".into(),
            ));
        }
        if let Some(u) = &self.daemon.public_url {
            check_base_url(u).map_err(|r| err("daemon.public_url", r))?;
            if self.daemon.webhook_token_file.is_none() {
                return Err(err(
                    "daemon.public_url",
                    "is used for webhooks: set daemon.webhook_token_file too".into(),
                ));
            }
        }
        if self.daemon.webhook_debounce > Duration::from_secs(60) {
            return Err(err("daemon.webhook_debounce", "must be at most 60s".into()));
        }
        if self.daemon.webhook_min_interval > Duration::from_secs(3600) {
            return Err(err(
                "daemon.webhook_min_interval",
                "must be at most 1h (polling covers longer gaps)".into(),
            ));
        }
        if !(8..=16384).contains(&self.daemon.max_connections) {
            return Err(err(
                "daemon.max_connections",
                format!(
                    "must be between 8 and 16384 (got {}); keep LimitNOFILE= above it",
                    self.daemon.max_connections
                ),
            ));
        }
        if self.daemon.cycle_budget < Duration::from_secs(10) {
            return Err(err("daemon.cycle_budget", "must be at least 10s".into()));
        }
        match (&self.kommo.token_file, &self.kommo.oauth) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "kommo.token_file",
                    "give either token_file or [kommo.oauth], not both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "kommo.token_file",
                    "missing: give token_file (a long-lived token) or an [kommo.oauth] table"
                        .into(),
                ));
            }
            _ => {}
        }
        if !(1..=7).contains(&self.kommo.requests_per_second) {
            return Err(err(
                "kommo.requests_per_second",
                format!(
                    "{} is out of range 1..=7 (Kommo allows 7 a second and blocks accounts that exceed it)",
                    self.kommo.requests_per_second
                ),
            ));
        }
        if !(1..=250).contains(&self.kommo.batch_size) {
            return Err(err(
                "kommo.batch_size",
                format!(
                    "{} is out of range 1..=250 (Kommo allows 250 a PATCH)",
                    self.kommo.batch_size
                ),
            ));
        }
        if self.kommo.timeout < Duration::from_secs(1) {
            return Err(err("kommo.timeout", "must be at least 1s".into()));
        }
        if !(1..=50).contains(&self.chatapp.requests_per_second) {
            return Err(err(
                "chatapp.requests_per_second",
                format!(
                    "{} is out of range 1..=50",
                    self.chatapp.requests_per_second
                ),
            ));
        }
        if !(1..=100).contains(&self.chatapp.max_logins_per_day) {
            return Err(err(
                "chatapp.max_logins_per_day",
                format!(
                    "{} is out of range 1..=100 (ChatApp allows about 100 a day)",
                    self.chatapp.max_logins_per_day
                ),
            ));
        }
        if self.chatapp.timeout < Duration::from_secs(1) {
            return Err(err("chatapp.timeout", "must be at least 1s".into()));
        }
        if !self.chatapp.email.contains('@') {
            return Err(err(
                "chatapp.email",
                format!("{:?} is not an e-mail address", self.chatapp.email),
            ));
        }
        if self.chatapp.app_id.trim().is_empty() {
            return Err(err("chatapp.app_id", "must not be empty".into()));
        }
        if self.chatapp.company_id == 0 {
            return Err(err(
                "chatapp.company_id",
                "must be a ChatApp company id (> 0)".into(),
            ));
        }
        if self.chatapp.license_ids.is_empty() || self.chatapp.license_ids.contains(&0) {
            return Err(err(
                "chatapp.license_ids",
                "must list at least one license id (> 0)".into(),
            ));
        }
        let sr = &self.chatapp.set_responsible;
        if !["PUT", "POST", "PATCH"].contains(&sr.method.to_ascii_uppercase().as_str()) {
            return Err(err(
                "chatapp.set_responsible.method",
                format!("{:?} is not one of PUT, POST, PATCH", sr.method),
            ));
        }
        if !sr.path.starts_with('/') || !sr.path.contains("{chatId}") {
            return Err(err(
                "chatapp.set_responsible.path",
                "must start with / and contain {chatId}".into(),
            ));
        }
        if sr.body_field.trim().is_empty() {
            return Err(err(
                "chatapp.set_responsible.body_field",
                "must not be empty".into(),
            ));
        }
        // The daemon adds durations to the clock (a cycle's deadline, the breaker's cool-off):
        // one past any sensible value would overflow it, a panic even in release builds.
        for (key, d) in [
            ("daemon.cycle_budget", self.daemon.cycle_budget),
            ("kommo.timeout", self.kommo.timeout),
            ("kommo.events_overlap", self.kommo.events_overlap),
            ("kommo.block_cooloff", self.kommo.block_cooloff),
            ("chatapp.timeout", self.chatapp.timeout),
            ("chatapp.chats_overlap", self.chatapp.chats_overlap),
            ("sync.clock_skew", self.sync.clock_skew),
        ] {
            if d > MAX_DURATION {
                return Err(err(key, "must be at most 365 days".into()));
            }
        }
        for (key, kinds) in [
            ("sync.crm_to_chat", &self.sync.crm_to_chat),
            ("sync.chat_to_crm", &self.sync.chat_to_crm),
        ] {
            let set: BTreeSet<_> = kinds.iter().collect();
            if set.len() != kinds.len() {
                return Err(err(key, "names a kind twice".into()));
            }
        }
        if self.sync.crm_to_chat.is_empty() && self.sync.chat_to_crm.is_empty() {
            return Err(err(
                "sync.crm_to_chat",
                "both directions are empty: nothing would be synced".into(),
            ));
        }
        let pipelines: BTreeSet<_> = self.sync.leads.pipelines.iter().collect();
        if pipelines.contains(&0) || pipelines.len() != self.sync.leads.pipelines.len() {
            return Err(err(
                "sync.leads.pipelines",
                "must list pipeline ids (> 0), each once".into(),
            ));
        }
        if self.sync.max_writes_per_cycle == 0 {
            return Err(err(
                "sync.max_writes_per_cycle",
                "must be at least 1".into(),
            ));
        }
        let mut kommo_ids = BTreeSet::new();
        let mut chat_ids = BTreeSet::new();
        for (i, p) in self.users.map.iter().enumerate() {
            if p.kommo == 0 || p.chatapp == 0 {
                return Err(err(&format!("users.map[{i}]"), "ids must be > 0".into()));
            }
            if !kommo_ids.insert(p.kommo) {
                return Err(err(
                    &format!("users.map[{i}].kommo"),
                    format!("Kommo user {} is paired twice", p.kommo),
                ));
            }
            if !chat_ids.insert(p.chatapp) {
                return Err(err(
                    &format!("users.map[{i}].chatapp"),
                    format!("ChatApp employee {} is paired twice", p.chatapp),
                ));
            }
        }
        Ok(())
    }

    /// The engine's view of the config.
    pub fn policy(&self) -> Policy {
        Policy {
            crm_to_chat: self.sync.crm_to_chat.iter().copied().collect(),
            chat_to_crm: self.sync.chat_to_crm.iter().copied().collect(),
            leads: LeadsPolicy {
                include_closed: self.sync.leads.include_closed,
                pipelines: self.sync.leads.pipelines.iter().copied().collect(),
            },
            conflict: self.sync.conflict,
            clock_skew_secs: self.sync.clock_skew.as_secs() as i64,
            bootstrap: self.sync.bootstrap,
            max_writes_per_cycle: self.sync.max_writes_per_cycle,
            match_phone: self.links.match_phone,
        }
    }

    /// The Kommo entities the daemon reads: those of both directions, plus contacts (they carry
    /// the links).
    pub fn kinds(&self) -> Vec<CardKind> {
        let set: BTreeSet<CardKind> = self
            .sync
            .crm_to_chat
            .iter()
            .chain(&self.sync.chat_to_crm)
            .map(|k| k.entity())
            .chain([CardKind::Contact])
            .collect();
        set.into_iter().collect()
    }

    /// True when any lead kind (`lead`, `incoming_lead`) is synced: lead stages matter.
    pub fn syncs_leads(&self) -> bool {
        self.kinds().contains(&CardKind::Lead)
    }

    /// True when `incoming_lead` is named in either direction.
    pub fn syncs_incoming_leads(&self) -> bool {
        self.sync
            .crm_to_chat
            .iter()
            .chain(&self.sync.chat_to_crm)
            .any(|k| *k == SyncKind::IncomingLead)
    }

    /// The explicit user pairs.
    pub fn user_pairs(&self) -> Vec<(u64, u64)> {
        self.users
            .map
            .iter()
            .map(|p| (p.kommo, p.chatapp))
            .collect()
    }
}

/// `https://` anywhere, `http://` only for loopback hosts.
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = parsed.host_str().unwrap_or("");
            let loopback = host == "localhost"
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?} must be https:// (http:// is accepted only for loopback hosts)"
                ))
            }
        }
        s => Err(format!("{url:?} has scheme {s}; must be https://")),
    }
}

/// The dotted key of the TOML line that holds byte `pos` (best effort, for error messages).
fn key_at(text: &str, pos: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            key = k.trim().to_string();
        } else if !t.is_empty() && !t.starts_with('#') {
            key = t.to_string();
        }
        if pos < off + line.len() {
            break;
        }
        off += line.len();
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// Reads a secret file: a relative path resolves against `$CREDENTIALS_DIRECTORY` when set, else
/// against the config file's folder. Surrounding white space is trimmed. Errors name the key and
/// path, never the content.
pub fn read_secret(
    key: &str,
    path: &Path,
    config_file: &Path,
) -> Result<SecretString, ConfigError> {
    let full = resolve_secret_path(path, config_file);
    let err = |reason: String| ConfigError {
        file: config_file.display().to_string(),
        key: key.into(),
        reason,
    };
    let text = std::fs::read_to_string(&full)
        .map_err(|e| err(format!("cannot read {}: {e}", full.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(err(format!("{} is empty", full.display())));
    }
    crate::redact::register(trimmed);
    Ok(SecretString::from(trimmed.to_string()))
}

/// Where a `*_file` path points (see [`read_secret`]).
pub fn resolve_secret_path(path: &Path, config_file: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(path);
    }
    config_file
        .parent()
        .map(|d| d.join(path))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Loads, validates and reads the secrets of the config at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let config = Config::parse(&text, &file)?;
    let kommo = match (&config.kommo.token_file, &config.kommo.oauth) {
        (Some(t), _) => KommoCredentials::LongLived(read_secret("kommo.token_file", t, path)?),
        (None, Some(o)) => KommoCredentials::OAuth {
            client_secret: read_secret(
                "kommo.oauth.client_secret_file",
                &o.client_secret_file,
                path,
            )?,
            refresh_token_seed: read_secret(
                "kommo.oauth.refresh_token_file",
                &o.refresh_token_file,
                path,
            )?,
        },
        (None, None) => unreachable!("validated"),
    };
    let chatapp_password =
        read_secret("chatapp.password_file", &config.chatapp.password_file, path)?;
    let webhook_token = match &config.daemon.webhook_token_file {
        Some(f) => {
            let t = read_secret("daemon.webhook_token_file", f, path)?;
            if secrecy::ExposeSecret::expose_secret(&t).len() < 16 {
                return Err(ConfigError {
                    file: path.display().to_string(),
                    key: "daemon.webhook_token_file".into(),
                    reason: "the token must be at least 16 characters (it is the only thing guarding the URLs)".into(),
                });
            }
            Some(t)
        }
        None => None,
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        config,
        secrets: Secrets {
            kommo,
            chatapp_password,
            webhook_token,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[daemon]
state_path = "/tmp/x.redb"
[kommo]
base_url = "https://example.kommo.com"
token_file = "kommo-token"
[chatapp]
base_url = "https://api.chatapp.online"
email = "ops@example.com"
password_file = "chatapp-password"
app_id = "app_1_1"
company_id = 1
license_ids = [1]
[sync]
crm_to_chat = ["contact"]
chat_to_crm = ["lead"]
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.kommo.requests_per_second, 6);
        assert_eq!(c.kommo.batch_size, 50);
        assert_eq!(c.sync.conflict, ConflictPolicy::Newest);
        assert_eq!(c.sync.clock_skew, Duration::from_secs(5));
        assert_eq!(c.links.messenger_field, FieldRef::Code("MESSENGER".into()));
        assert_eq!(c.kinds(), vec![CardKind::Lead, CardKind::Contact]);
        assert_eq!(c.daemon.webhook_min_interval, Duration::from_secs(30));
        assert_eq!(c.daemon.max_connections, 256);
    }

    #[test]
    fn unknown_key_names_the_key() {
        let text = MINIMAL.replace("[sync]\n", "[sync]\nconflcit = \"crm\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.key, "sync.conflcit");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (from, to, key) in [
            (
                "https://example.kommo.com",
                "http://example.kommo.com",
                "kommo.base_url",
            ),
            (
                "license_ids = [1]",
                "license_ids = []",
                "chatapp.license_ids",
            ),
            (
                "[sync]\n",
                "[sync]\nconflict = \"sometimes\"\n",
                "sync.conflict",
            ),
            (
                "[kommo]\n",
                "[kommo]\nrequests_per_second = 8\n",
                "kommo.requests_per_second",
            ),
            (
                "[kommo]\n",
                "[kommo]\nbatch_size = 251\n",
                "kommo.batch_size",
            ),
            (
                "[daemon]\n",
                "[daemon]\npoll_schedule = \"every minute\"\n",
                "daemon.poll_schedule",
            ),
            (
                "[daemon]\n",
                "[daemon]\ntimezone = \"Mars/Base\"\n",
                "daemon.timezone",
            ),
            (
                "[sync]\n",
                "[sync]\nclock_skew = \"5x\"\n",
                "sync.clock_skew",
            ),
            (
                "[daemon]\n",
                "[daemon]\nwebhook_min_interval = \"2h\"\n",
                "daemon.webhook_min_interval",
            ),
            (
                "[daemon]\n",
                "[daemon]\nwebhook_min_interval = \"soon\"\n",
                "daemon.webhook_min_interval",
            ),
            (
                "[daemon]\n",
                "[daemon]\nmax_connections = 4\n",
                "daemon.max_connections",
            ),
            (
                "[daemon]\n",
                "[daemon]\nmax_connections = -1\n",
                "daemon.max_connections",
            ),
            (
                "crm_to_chat = [\"contact\"]",
                "crm_to_chat = [\"deal\"]",
                "sync.crm_to_chat",
            ),
        ] {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from}");
            let e = Config::parse(&text, "t.toml").unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::parse(
            include_str!("../config.example.toml"),
            "config.example.toml",
        )
        .unwrap();
        assert_eq!(c.sync.flag_fields.lead, Some(184994));
        assert_eq!(c.users.map.len(), 1);
        assert_eq!(c.chatapp.set_responsible, SetResponsibleConfig::default());
    }

    #[test]
    fn http_is_accepted_for_loopback_only() {
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(check_base_url("http://localhost:1").is_ok());
        assert!(check_base_url("http://[::1]:1").is_ok());
        assert!(check_base_url("http://10.0.0.1").is_err());
        assert!(check_base_url("ftp://example.com").is_err());
    }

    #[test]
    fn duplicate_user_pairs_are_rejected() {
        let text = format!(
            "{MINIMAL}\n[users]\nmap = [{{ kommo = 1, chatapp = 2 }}, {{ kommo = 1, chatapp = 3 }}]\n"
        );
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.key, "users.map[1].kommo");
    }

    #[test]
    fn field_refs_match_by_id_or_code() {
        assert!(FieldRef::Code("MESSENGER".into()).matches(5, Some("messenger")));
        assert!(FieldRef::Code("5".into()).matches(5, None));
        assert!(FieldRef::Id(5).matches(5, Some("X")));
        assert!(!FieldRef::Id(5).matches(6, Some("X")));
    }
}
