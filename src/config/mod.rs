//! The config file (SPEC section 5): strict TOML (an unknown key or table is an error), validated
//! values, and secrets read only from `*_file` paths into types that never print.

use crate::core::engine::{Bootstrap, ConflictPolicy, LeadsPolicy, Policy};
use crate::core::model::{CardKind, EmployeeId, KommoUserId, SyncKind};
use crate::core::schedule::Schedule;
use chrono_tz::Tz;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod parse;

/// Where the config is looked for when neither `--config` nor `$CHATAPP_KOMMO_SYNC_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chatapp-kommo-sync/config.toml";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "CHATAPP_KOMMO_SYNC_CONFIG";
/// The state db when `[daemon] state_path` is left out (SPEC 5): the package's and the image's
/// state directory.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/chatapp-kommo-sync/state.redb";
/// The default of `[daemon] max_connections`: connections the HTTP endpoint serves at a time.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
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

/// The whole config file as TOML reads it: the values that are text in the file (time zone,
/// schedules, `listen`, log level, write method) are still text here. [`Config`] is what the
/// daemon uses: the same sections with those values parsed, made by [`Config::parse`] and
/// [`load`] once the file has passed its checks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[daemon]`
    pub daemon: DaemonFile,
    /// `[kommo]`
    pub kommo: KommoConfig,
    /// `[chatapp]`
    pub chatapp: ChatAppFile,
    /// `[sync]`
    pub sync: SyncConfig,
    /// `[links]`
    #[serde(default)]
    pub links: LinksConfig,
    /// `[users]`
    #[serde(default)]
    pub users: UsersConfig,
}

/// `[daemon]` as the file gives it: state, schedules, logging, HTTP endpoint ([`DaemonConfig`]
/// holds the parsed values).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    /// The redb state file; [`DEFAULT_STATE_PATH`] when the config leaves it out (SPEC 5).
    #[serde(default = "default_state_path")]
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
    /// A webhook call triggers a cycle this long after it (calls meanwhile fold in).
    #[serde(default = "default_webhook_debounce", with = "humantime_serde")]
    pub webhook_debounce: Duration,
    /// The least pause after a webhook-triggered cycle, whatever its cost (the budget below paces
    /// them otherwise). `0s` (the default): only the budget.
    #[serde(default = "default_webhook_min_interval", with = "humantime_serde")]
    pub webhook_min_interval: Duration,
    /// The share (percent) of each API's `requests_per_second` that webhook-triggered cycles may
    /// use: after one that made n requests, the next waits n / (share x rate) seconds.
    #[serde(default = "default_webhook_budget_percent")]
    pub webhook_budget_percent: u8,
    /// How long audit entries (the corrections log) are kept.
    #[serde(default = "default_audit_retention", with = "humantime_serde")]
    pub audit_retention: Duration,
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
    /// One Kommo budget for every instance on this machine (IP).
    #[serde(default)]
    pub shared_limit: Option<SharedLimitConfig>,
}

/// `[kommo.shared_limit]`: Kommo's limit is per IP in its docs; every instance on the machine
/// takes its requests from one budget kept in a small lock-protected file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedLimitConfig {
    /// The shared file (all instances name the same one).
    pub path: PathBuf,
    /// The per-IP budget: requests a second summed over all instances (at most 7).
    #[serde(default = "default_shared_rps")]
    pub requests_per_second: u32,
}

/// The environment variable that turns the shared limit on with this file when the config has
/// no `[kommo.shared_limit]` (the template unit sets it).
pub const SHARED_LIMIT_ENV: &str = "CHATAPP_KOMMO_SYNC_SHARED_LIMIT";
/// The environment variable naming this instance (the template unit sets it to `%i`): it spreads
/// the instance's schedules so that several instances do not poll in the same second.
pub const INSTANCE_ENV: &str = "CHATAPP_KOMMO_SYNC_INSTANCE";

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
    /// A file holding the first refresh token; read only to seed an empty state db. Optional:
    /// `authorize --code` stores a pair in the state db without it.
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
}

/// `[chatapp]`: as the file gives it ([`ChatAppFile`]) and with its set-responsible call parsed
/// ([`ChatAppConfig`]); the two differ only in `S`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatAppSection<S> {
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
    pub set_responsible: S,
}

/// `[chatapp]` as the file gives it ([`ChatAppConfig`] holds the parsed values).
pub type ChatAppFile = ChatAppSection<SetResponsibleFile>;

/// `[chatapp]` as the daemon uses it: the set-responsible call parsed.
pub type ChatAppConfig = ChatAppSection<SetResponsibleConfig>;

impl<S> ChatAppSection<S> {
    /// The same section with another set-responsible value (the parsed one).
    fn with_set_responsible<T>(self, set_responsible: T) -> ChatAppSection<T> {
        ChatAppSection {
            base_url: self.base_url,
            email: self.email,
            password_file: self.password_file,
            app_id: self.app_id,
            company_id: self.company_id,
            license_ids: self.license_ids,
            requests_per_second: self.requests_per_second,
            timeout: self.timeout,
            chats_overlap: self.chats_overlap,
            max_logins_per_day: self.max_logins_per_day,
            set_responsible,
        }
    }
}

/// `[chatapp.set_responsible]` as the file gives it ([`SetResponsibleConfig`] holds the parsed
/// values).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetResponsibleFile {
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

impl Default for SetResponsibleFile {
    fn default() -> Self {
        SetResponsibleFile {
            method: default_set_method(),
            path: default_set_path(),
            body_field: default_set_field(),
        }
    }
}

/// The config the daemon uses: the file's sections with its text values parsed (time zone,
/// schedules, `listen`, log level, write method), and what the environment adds read once. Made
/// only by [`Config::parse`] and [`load`], when every check has passed ([`ConfigFile`] is the
/// file as TOML reads it).
#[derive(Debug, Clone)]
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
    pub links: LinksConfig,
    /// `[users]`
    pub users: UsersConfig,
    /// The shared Kommo limit in force (see [`Config::shared_limit`]).
    shared_limit: Option<SharedLimitConfig>,
    /// The name that spreads the schedules (see [`Config::instance_name`]).
    instance_name: Option<String>,
}

/// `[daemon]`: state, schedules, logging, HTTP endpoint.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The redb state file; [`DEFAULT_STATE_PATH`] when the config leaves it out (SPEC 5).
    pub state_path: PathBuf,
    /// The schedule of incremental cycles (cron, 5 or 6 fields, in `timezone`).
    pub poll_schedule: Schedule,
    /// The schedule of full reconcile cycles (cron, in `timezone`).
    pub full_schedule: Schedule,
    /// The time zone of the schedules and of the times shown to people.
    pub timezone: Tz,
    /// The address of the metrics/health endpoint, if any.
    pub listen: Option<SocketAddr>,
    /// Log level filter (`RUST_LOG` overrides it).
    pub log_level: LogFilter,
    /// How long one cycle may spend in total, retries included, before it fails.
    pub cycle_budget: Duration,
    /// A file holding the secret token of the webhook URLs; no webhooks without it.
    pub webhook_token_file: Option<PathBuf>,
    /// The public `https://` address at which `listen` is reachable (through a TLS proxy).
    pub public_url: Option<String>,
    /// A webhook call triggers a cycle this long after it.
    pub webhook_debounce: Duration,
    /// The least pause after a webhook-triggered cycle.
    pub webhook_min_interval: Duration,
    /// The share (percent, 1..=100) of each API's rate that webhook-triggered cycles may use.
    pub webhook_budget_percent: u8,
    /// How long audit entries (the corrections log) are kept.
    pub audit_retention: Duration,
    /// Connections the HTTP endpoint (`listen`) serves at a time.
    pub max_connections: usize,
}

/// A log filter that passed the config's check: comma-separated levels or `target=level`
/// directives (see `check_log_level`). Reads as the text the file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    /// The filter as written in the file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for LogFilter {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[chatapp.set_responsible]`: the method, path template and body field of the call that sets a
/// dialog's responsible. `{licenseId}`, `{messengerType}` and `{chatId}` are substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetResponsibleConfig {
    /// HTTP method.
    pub method: WriteMethod,
    /// Path template.
    pub path: String,
    /// JSON body field that carries the employee id.
    pub body_field: String,
}

impl Default for SetResponsibleConfig {
    fn default() -> Self {
        SetResponsibleConfig {
            method: WriteMethod::Put,
            path: default_set_path(),
            body_field: default_set_field(),
        }
    }
}

/// The HTTP method of the call that sets a dialog's responsible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMethod {
    /// `PUT` (the default).
    #[default]
    Put,
    /// `POST`.
    Post,
    /// `PATCH`.
    Patch,
}

impl WriteMethod {
    /// `PUT`, `POST` or `PATCH`, in any case; `None` for any other word.
    pub fn parse(text: &str) -> Option<WriteMethod> {
        match text.to_ascii_uppercase().as_str() {
            "PUT" => Some(WriteMethod::Put),
            "POST" => Some(WriteMethod::Post),
            "PATCH" => Some(WriteMethod::Patch),
            _ => None,
        }
    }

    /// `PUT`, `POST` or `PATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Put => "PUT",
            WriteMethod::Post => "POST",
            WriteMethod::Patch => "PATCH",
        }
    }

    /// The method as the HTTP client names it.
    pub fn http(self) -> reqwest::Method {
        match self {
            WriteMethod::Put => reqwest::Method::PUT,
            WriteMethod::Post => reqwest::Method::POST,
            WriteMethod::Patch => reqwest::Method::PATCH,
        }
    }
}

impl fmt::Display for WriteMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The values the file gives as text, parsed by its checks.
struct Parsed {
    timezone: Tz,
    poll_schedule: Schedule,
    full_schedule: Schedule,
    listen: Option<SocketAddr>,
    log_level: LogFilter,
    method: WriteMethod,
}

/// What the environment adds to a config ([`SHARED_LIMIT_ENV`], [`INSTANCE_ENV`]), read once
/// when the config is parsed.
struct Env {
    /// `$CHATAPP_KOMMO_SYNC_SHARED_LIMIT`, unless unset or empty.
    shared_limit: Option<PathBuf>,
    /// `$CHATAPP_KOMMO_SYNC_INSTANCE`, unless unset, empty or not UTF-8.
    instance: Option<String>,
}

impl Env {
    fn read() -> Env {
        Env {
            shared_limit: std::env::var_os(SHARED_LIMIT_ENV)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            instance: std::env::var(INSTANCE_ENV).ok().filter(|s| !s.is_empty()),
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
    /// `normal` | `shadow` (decide and record, write nothing to either API).
    #[serde(default)]
    pub mode: SyncMode,
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

/// `[sync] mode`: whether the daemon writes what it decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Read, decide, write, record.
    #[default]
    Normal,
    /// Read, decide and record as usual, but write nothing to either API: each would-be write is
    /// logged, counted and kept per day for `status`. The bases take what was observed (never a
    /// value that was not written) and the db is left unbootstrapped, so the first normal cycle
    /// after shadow cycles is a first run with the configured `bootstrap`.
    Shadow,
}

impl SyncMode {
    /// `normal` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Normal => "normal",
            SyncMode::Shadow => "shadow",
        }
    }
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
    pub kommo: KommoUserId,
    /// ChatApp employee id.
    pub chatapp: EmployeeId,
}

fn yes() -> bool {
    true
}
fn default_state_path() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_PATH)
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
    Duration::from_millis(100)
}
/// A quarter of the rate: at Kommo's default 6 a second, a flood of webhook calls costs at most
/// 1.5 Kommo requests a second, leaving the rest to polled and full cycles and to the account's
/// other integrations (Kommo's limit is per account, shared with them).
fn default_webhook_budget_percent() -> u8 {
    25
}
fn default_shared_rps() -> u32 {
    7
}
fn default_audit_retention() -> Duration {
    Duration::from_secs(180 * 86_400)
}
fn default_webhook_min_interval() -> Duration {
    Duration::ZERO
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
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
        /// The refresh token from `refresh_token_file`, if given (used only to seed an empty db).
        refresh_token_seed: Option<SecretString>,
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

/// A checked config, its values parsed, with its secrets.
#[derive(Debug)]
pub struct Loaded {
    /// The config file.
    pub path: PathBuf,
    /// Its values.
    pub config: Config,
    /// Its secrets.
    pub secrets: Secrets,
    /// Things worth fixing that do not stop the daemon (e.g. a secret file others can read).
    pub warnings: Vec<String>,
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

/// Every problem found in a config, each naming its key (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The first problem.
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

/// Collects problems while a config is checked, so that one run reports them all.
struct Problems<'a> {
    file: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, key: &str, reason: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.into(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Adds `r`'s error, if any, under `key`.
    fn check(&mut self, key: &str, r: Result<(), String>) {
        if let Err(reason) = r {
            self.add(key, reason);
        }
    }

    /// `r`'s value; its error, if any, is added under `key`.
    fn parsed<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(reason) => {
                self.add(key, reason);
                None
            }
        }
    }

    /// Adds `reason` under `key` unless `ok`.
    fn ensure(&mut self, ok: bool, key: &str, reason: impl FnOnce() -> String) {
        if !ok {
            self.add(key, reason());
        }
    }
}

/// A config text read as far as it goes (see [`parse`]).
struct Checked {
    /// The config, unless the text is not TOML or its problems could not all be got past; where
    /// a key had a problem of shape, a default or a placeholder stands in for it.
    config: Option<ConfigFile>,
    /// Its text values parsed, when its checks found no problem.
    parsed: Option<Parsed>,
    /// Every problem: those of shape in the order of the file, then the semantic ones.
    problems: Vec<ConfigError>,
    /// The keys with a wrong value or left out: `config` does not hold the file's value there.
    shaky: Vec<String>,
}

impl Checked {
    /// True when `key`'s value in `config` is the file's own (not under a shaky key).
    fn trusted(&self, key: &str) -> bool {
        !self.shaky.iter().any(|s| {
            key == s
                || key
                    .strip_prefix(s.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        })
    }
}

/// Reads and checks a config text: every problem of shape (wrong types, unknown enum values,
/// unknown keys, missing keys), each with its key and line, and the semantic checks of every
/// top-level section that has no wrong value and no missing key (a section with one holds
/// stand-ins that would be judged instead of the file's values).
fn check(text: &str, file: &str) -> Checked {
    let read = match parse::read(text) {
        Ok(r) => r,
        Err(e) => {
            // not TOML: the parser's one error, at its place
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(file)".into());
            let line = e
                .span()
                .map(|s| format!(" (line {})", line_of(text, s.start)))
                .unwrap_or_default();
            return Checked {
                config: None,
                parsed: None,
                problems: vec![ConfigError {
                    file: file.into(),
                    key,
                    // the parser's messages describe the grammar, never the text
                    reason: e.message().trim().to_string() + &line,
                }],
                shaky: vec![],
            };
        }
    };
    let mut found = read.found;
    found.sort_by_key(|f| f.at.unwrap_or(usize::MAX));
    let mut problems: Vec<ConfigError> = found
        .iter()
        .map(|f| ConfigError {
            file: file.into(),
            key: if f.key.is_empty() {
                "(file)".into()
            } else {
                parse::dotted(&f.key)
            },
            reason: match f.at {
                Some(at) => format!("{} (line {})", f.reason, line_of(text, at)),
                None => f.reason.clone(),
            },
        })
        .collect();
    let shaky_found = || found.iter().filter(|f| f.kind != parse::Kind::Unknown);
    let broken: BTreeSet<&str> = shaky_found()
        .filter_map(|f| match f.key.first() {
            Some(parse::Step::Key(k)) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    let parsed = match read.config.as_ref().map(|c| c.checks(file)) {
        Some(Ok(parsed)) => Some(parsed),
        Some(Err(e)) => {
            problems.extend(e.0.into_iter().filter(|p| {
                let section = p.key.split(['.', '[']).next().unwrap_or("");
                !broken.contains(section)
            }));
            None
        }
        None => None,
    };
    Checked {
        shaky: shaky_found().map(|f| parse::dotted(&f.key)).collect(),
        config: read.config,
        parsed,
        problems,
    }
}

impl Config {
    /// Parses and checks a config text (no secrets read). `file` names it in errors. Every
    /// problem is reported in one run, each naming its key: wrong types, unknown enum values,
    /// unknown and missing keys (with their lines), and the semantic checks of the sections
    /// without such a problem. Only a text that is not TOML at all stops at its first error.
    /// The environment variables [`SHARED_LIMIT_ENV`] and [`INSTANCE_ENV`] are read here, once.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let checked = check(text, file);
        match (checked.config, checked.parsed) {
            (Some(c), Some(parsed)) if checked.problems.is_empty() => {
                Ok(Config::new(c, parsed, Env::read()))
            }
            _ => Err(ConfigErrors(checked.problems)),
        }
    }

    /// The config of a checked file, its parsed values and the environment.
    fn new(file: ConfigFile, parsed: Parsed, env: Env) -> Config {
        let ConfigFile {
            daemon: d,
            kommo,
            chatapp: c,
            sync,
            links,
            users,
        } = file;
        let shared_limit = kommo.shared_limit.clone().or_else(|| {
            env.shared_limit.map(|path| SharedLimitConfig {
                path,
                requests_per_second: default_shared_rps(),
            })
        });
        let instance_name = env.instance.or_else(|| {
            shared_limit
                .as_ref()
                .map(|_| d.state_path.display().to_string())
        });
        Config {
            daemon: DaemonConfig {
                state_path: d.state_path,
                poll_schedule: parsed.poll_schedule,
                full_schedule: parsed.full_schedule,
                timezone: parsed.timezone,
                listen: parsed.listen,
                log_level: parsed.log_level,
                cycle_budget: d.cycle_budget,
                webhook_token_file: d.webhook_token_file,
                public_url: d.public_url,
                webhook_debounce: d.webhook_debounce,
                webhook_min_interval: d.webhook_min_interval,
                webhook_budget_percent: d.webhook_budget_percent,
                audit_retention: d.audit_retention,
                max_connections: d.max_connections,
            },
            kommo,
            chatapp: {
                let set = SetResponsibleConfig {
                    method: parsed.method,
                    path: c.set_responsible.path.clone(),
                    body_field: c.set_responsible.body_field.clone(),
                };
                c.with_set_responsible(set)
            },
            sync,
            links,
            users,
            shared_limit,
            instance_name,
        }
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

    /// The shared Kommo limit in force: `[kommo.shared_limit]`, else the file named by
    /// `$CHATAPP_KOMMO_SYNC_SHARED_LIMIT` at 7 requests a second, else none. The variable is read
    /// when the config is parsed, not here.
    pub fn shared_limit(&self) -> Option<SharedLimitConfig> {
        self.shared_limit.clone()
    }

    /// The name that spreads this instance's schedules: `$CHATAPP_KOMMO_SYNC_INSTANCE`, else
    /// (with a shared limit, i.e. several instances) its state db path; `None`: not spread. The
    /// variable is read when the config is parsed, not here.
    pub fn instance_name(&self) -> Option<String> {
        self.instance_name.clone()
    }

    /// The explicit user pairs.
    pub fn user_pairs(&self) -> Vec<(KommoUserId, EmployeeId)> {
        self.users
            .map
            .iter()
            .map(|p| (p.kommo, p.chatapp))
            .collect()
    }
}

impl ConfigFile {
    /// Reads and checks a config text as [`Config::parse`] does, and keeps its values as the file
    /// gives them (e.g. to write them out again).
    pub fn parse(text: &str, file: &str) -> Result<ConfigFile, ConfigErrors> {
        let checked = check(text, file);
        match checked.config {
            Some(c) if checked.problems.is_empty() => Ok(c),
            _ => Err(ConfigErrors(checked.problems)),
        }
    }

    /// The semantic checks TOML types cannot express, every problem at once; the text values
    /// parsed when there is none.
    fn checks(&self, file: &str) -> Result<Parsed, ConfigErrors> {
        let mut p = Problems { file, list: vec![] };
        let daemon = self.validate_daemon(&mut p);
        self.validate_webhooks(&mut p);
        self.validate_kommo(&mut p);
        let method = self.validate_chatapp(&mut p);
        self.validate_sync(&mut p);
        self.validate_users(&mut p);
        self.validate_durations(&mut p);
        match (daemon, method) {
            (Some((timezone, poll_schedule, full_schedule, listen, log_level)), Some(method))
                if p.list.is_empty() =>
            {
                Ok(Parsed {
                    timezone,
                    poll_schedule,
                    full_schedule,
                    listen,
                    log_level,
                    method,
                })
            }
            // a value that did not parse added its problem
            _ => Err(ConfigErrors(p.list)),
        }
    }

    /// The daemon adds durations to the clock (a cycle's deadline, the breaker's cool-off): one
    /// past any sensible value would overflow it, a panic even in release builds.
    fn validate_durations(&self, p: &mut Problems) {
        for (key, d) in [
            ("daemon.cycle_budget", self.daemon.cycle_budget),
            ("kommo.timeout", self.kommo.timeout),
            ("kommo.events_overlap", self.kommo.events_overlap),
            ("kommo.block_cooloff", self.kommo.block_cooloff),
            ("chatapp.timeout", self.chatapp.timeout),
            ("chatapp.chats_overlap", self.chatapp.chats_overlap),
            ("sync.clock_skew", self.sync.clock_skew),
        ] {
            p.ensure(d <= MAX_DURATION, key, || "must be at most 365 days".into());
        }
    }

    /// `[daemon]`'s checks; its time zone, schedules, `listen` and log level when they parse.
    #[allow(clippy::type_complexity)]
    fn validate_daemon(
        &self,
        p: &mut Problems,
    ) -> Option<(Tz, Schedule, Schedule, Option<SocketAddr>, LogFilter)> {
        let d = &self.daemon;
        let timezone = p.parsed(
            "daemon.timezone",
            d.timezone.parse::<Tz>().map_err(|_| {
                format!(
                    "unknown time zone {:?} (an IANA name, e.g. Europe/Berlin)",
                    d.timezone
                )
            }),
        );
        // an unknown time zone is reported above: the schedules are still checked (in UTC)
        let tz = timezone.unwrap_or(Tz::UTC);
        let poll = p.parsed(
            "daemon.poll_schedule",
            Schedule::parse(&d.poll_schedule, tz),
        );
        let full = p.parsed(
            "daemon.full_schedule",
            Schedule::parse(&d.full_schedule, tz),
        );
        let listen = match &d.listen {
            None => Some(None),
            Some(l) => p
                .parsed(
                    "daemon.listen",
                    l.parse::<SocketAddr>()
                        .map_err(|_| format!("{l:?} is not host:port (e.g. 127.0.0.1:9187)")),
                )
                .map(Some),
        };
        let log_level = p.parsed("daemon.log_level", check_log_level(&d.log_level));
        p.ensure(
            d.cycle_budget >= Duration::from_secs(10),
            "daemon.cycle_budget",
            || "must be at least 10s".into(),
        );
        p.ensure(
            (Duration::from_secs(86_400)..=Duration::from_secs(100 * 365 * 86_400))
                .contains(&d.audit_retention),
            "daemon.audit_retention",
            || "must be between 1 day and 100 years (e.g. \"180d\")".into(),
        );
        Some((timezone?, poll?, full?, listen?, log_level?))
    }

    fn validate_webhooks(&self, p: &mut Problems) {
        let d = &self.daemon;
        p.ensure(
            d.webhook_token_file.is_none() || d.listen.is_some(),
            "daemon.webhook_token_file",
            || "webhooks are served on daemon.listen: set it too (e.g. \"127.0.0.1:9187\" behind a TLS proxy)".into(),
        );
        if let Some(u) = &d.public_url {
            p.check("daemon.public_url", check_base_url(u));
            p.ensure(d.webhook_token_file.is_some(), "daemon.public_url", || {
                "is used for webhooks: set daemon.webhook_token_file too".into()
            });
        }
        p.ensure(
            d.webhook_debounce <= Duration::from_secs(60),
            "daemon.webhook_debounce",
            || "must be at most 60s".into(),
        );
        p.ensure(
            d.webhook_min_interval <= Duration::from_secs(3600),
            "daemon.webhook_min_interval",
            || "must be at most 1h (polling covers longer gaps)".into(),
        );
        p.ensure(
            (1..=100).contains(&d.webhook_budget_percent),
            "daemon.webhook_budget_percent",
            || {
                format!(
                    "{} is out of range 1..=100 (the percent of each API's requests_per_second webhook work may use)",
                    d.webhook_budget_percent
                )
            },
        );
        p.ensure(
            (8..=16384).contains(&d.max_connections),
            "daemon.max_connections",
            || {
                format!(
                    "must be between 8 and 16384 (got {}); keep LimitNOFILE= above it",
                    d.max_connections
                )
            },
        );
    }

    fn validate_kommo(&self, p: &mut Problems) {
        let k = &self.kommo;
        p.check("kommo.base_url", check_base_url(&k.base_url));
        match (&k.token_file, &k.oauth) {
            (Some(_), Some(_)) => p.add(
                "kommo.token_file",
                "give either token_file or [kommo.oauth], not both",
            ),
            (None, None) => p.add(
                "kommo.token_file",
                "missing: give token_file (a long-lived token) or an [kommo.oauth] table",
            ),
            _ => {}
        }
        p.ensure((1..=7).contains(&k.requests_per_second), "kommo.requests_per_second", || {
            format!(
                "{} is out of range 1..=7 (Kommo allows 7 a second and blocks accounts that exceed it)",
                k.requests_per_second
            )
        });
        p.ensure(
            (1..=250).contains(&k.batch_size),
            "kommo.batch_size",
            || {
                format!(
                    "{} is out of range 1..=250 (Kommo allows 250 a PATCH)",
                    k.batch_size
                )
            },
        );
        p.ensure(k.timeout >= Duration::from_secs(1), "kommo.timeout", || {
            "must be at least 1s".into()
        });
        if let Some(sl) = &k.shared_limit {
            p.ensure(
                (1..=7).contains(&sl.requests_per_second),
                "kommo.shared_limit.requests_per_second",
                || {
                    format!(
                        "{} is out of range 1..=7 (Kommo's limit per IP)",
                        sl.requests_per_second
                    )
                },
            );
            p.ensure(sl.path.is_absolute(), "kommo.shared_limit.path", || {
                format!(
                    "{} must be an absolute path (every instance names the same file)",
                    sl.path.display()
                )
            });
        }
    }

    /// `[chatapp]`'s checks; its write method when it parses.
    fn validate_chatapp(&self, p: &mut Problems) -> Option<WriteMethod> {
        let c = &self.chatapp;
        p.check("chatapp.base_url", check_base_url(&c.base_url));
        p.ensure(
            (1..=50).contains(&c.requests_per_second),
            "chatapp.requests_per_second",
            || format!("{} is out of range 1..=50", c.requests_per_second),
        );
        p.ensure(
            (1..=100).contains(&c.max_logins_per_day),
            "chatapp.max_logins_per_day",
            || {
                format!(
                    "{} is out of range 1..=100 (ChatApp allows about 100 a day)",
                    c.max_logins_per_day
                )
            },
        );
        p.ensure(
            c.timeout >= Duration::from_secs(1),
            "chatapp.timeout",
            || "must be at least 1s".into(),
        );
        p.ensure(c.email.contains('@'), "chatapp.email", || {
            format!("{:?} is not an e-mail address", c.email)
        });
        p.ensure(!c.app_id.trim().is_empty(), "chatapp.app_id", || {
            "must not be empty".into()
        });
        p.ensure(c.company_id != 0, "chatapp.company_id", || {
            "must be a ChatApp company id (> 0)".into()
        });
        p.ensure(
            !c.license_ids.is_empty() && !c.license_ids.contains(&0),
            "chatapp.license_ids",
            || "must list at least one license id (> 0)".into(),
        );
        let sr = &c.set_responsible;
        let method = p.parsed(
            "chatapp.set_responsible.method",
            WriteMethod::parse(&sr.method)
                .ok_or_else(|| format!("{:?} is not one of PUT, POST, PATCH", sr.method)),
        );
        p.ensure(
            sr.path.starts_with('/') && sr.path.contains("{chatId}"),
            "chatapp.set_responsible.path",
            || "must start with / and contain {chatId}".into(),
        );
        p.ensure(
            !sr.body_field.trim().is_empty(),
            "chatapp.set_responsible.body_field",
            || "must not be empty".into(),
        );
        method
    }

    fn validate_sync(&self, p: &mut Problems) {
        let s = &self.sync;
        for (key, kinds) in [
            ("sync.crm_to_chat", &s.crm_to_chat),
            ("sync.chat_to_crm", &s.chat_to_crm),
        ] {
            let set: BTreeSet<_> = kinds.iter().collect();
            p.ensure(set.len() == kinds.len(), key, || {
                "names a kind twice".into()
            });
        }
        p.ensure(
            !s.crm_to_chat.is_empty() || !s.chat_to_crm.is_empty(),
            "sync.crm_to_chat",
            || "both directions are empty: nothing would be synced".into(),
        );
        let pipelines: BTreeSet<_> = s.leads.pipelines.iter().collect();
        p.ensure(
            !pipelines.contains(&0) && pipelines.len() == s.leads.pipelines.len(),
            "sync.leads.pipelines",
            || "must list pipeline ids (> 0), each once".into(),
        );
        p.ensure(
            s.max_writes_per_cycle > 0,
            "sync.max_writes_per_cycle",
            || "must be at least 1".into(),
        );
    }

    fn validate_users(&self, p: &mut Problems) {
        let mut kommo_ids = BTreeSet::new();
        let mut chat_ids = BTreeSet::new();
        for (i, pair) in self.users.map.iter().enumerate() {
            if pair.kommo.0 == 0 || pair.chatapp.0 == 0 {
                p.add(&format!("users.map[{i}]"), "ids must be > 0");
                continue;
            }
            p.ensure(
                kommo_ids.insert(pair.kommo),
                &format!("users.map[{i}].kommo"),
                || format!("Kommo user {} is paired twice", pair.kommo),
            );
            p.ensure(
                chat_ids.insert(pair.chatapp),
                &format!("users.map[{i}].chatapp"),
                || format!("ChatApp employee {} is paired twice", pair.chatapp),
            );
        }
    }
}

/// A log filter: comma-separated directives, each a level (`trace`, `debug`, `info`, `warn`,
/// `error`, `off`) or `target=level`. A bare word that is not a level is refused (tracing would
/// take it for a target name and log nothing else, errors included).
fn check_log_level(filter: &str) -> Result<LogFilter, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a log level: use one of trace, debug, info, warn, error, off (or target=level directives)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("{filter:?}: {e}"))?;
    Ok(LogFilter(filter.to_string()))
}

/// `https://` anywhere, `http://` only for loopback hosts.
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        if e.to_string().contains("relative URL without a base") {
            format!(
                "{url:?} has no scheme: write it as https://{}",
                url.trim_start_matches('/')
            )
        } else {
            format!("{url:?} is not a URL: {e}")
        }
    })?;
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
            // not a key: the line is not shown (it may be a secret pasted in the wrong place)
            key.clear();
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
/// the paths (where it looked, and where systemd's credentials would be), never the content. A
/// file readable by group or others is used, with a warning pushed to `warnings`.
pub fn read_secret(
    key: &str,
    path: &Path,
    config_file: &Path,
    warnings: &mut Vec<String>,
) -> Result<SecretString, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let full = resolve_secret_path(path, config_file);
    let err = |reason: String| ConfigError {
        file: config_file.display().to_string(),
        key: key.into(),
        reason,
    };
    let text = std::fs::read_to_string(&full).map_err(|e| {
        err(format!(
            "cannot read {}: {e}; {}",
            full.display(),
            where_secrets_are(path, config_file)
        ))
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(err(format!("{} is empty", full.display())));
    }
    if let Ok(m) = std::fs::metadata(&full)
        && m.permissions().mode() & 0o077 != 0
    {
        warnings.push(format!(
            "{key}: {} is readable by {} (mode {:o}): a secret file should be 0600 (chmod 600 {})",
            full.display(),
            if m.permissions().mode() & 0o007 != 0 {
                "others"
            } else {
                "its group"
            },
            m.permissions().mode() & 0o777,
            full.display()
        ));
    }
    crate::redact::register(trimmed);
    Ok(SecretString::from(trimmed.to_string()))
}

/// Where a relative secret path is looked up, for a "cannot read" message.
fn where_secrets_are(path: &Path, config_file: &Path) -> String {
    if path.is_absolute() {
        return "the path is absolute".into();
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        Some(d) => format!(
            "looked in $CREDENTIALS_DIRECTORY ({}), where systemd's LoadCredential= puts the unit's credentials",
            PathBuf::from(d).display()
        ),
        None => format!(
            "looked in the config's folder because $CREDENTIALS_DIRECTORY is not set; under systemd the unit's LoadCredential= lines copy the files from {}/credentials/ into $CREDENTIALS_DIRECTORY (to check by hand: sudo CREDENTIALS_DIRECTORY={}/credentials chatapp-kommo-sync check-config)",
            config_file
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            config_file
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        ),
    }
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

/// Loads, checks and parses the config at `path` and reads its secrets: every problem at once.
/// The environment variables [`SHARED_LIMIT_ENV`] and [`INSTANCE_ENV`] are read here, once.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let mut checked = check(&text, &file);
    let mut problems = std::mem::take(&mut checked.problems);
    let Some(config) = checked.config.take() else {
        return Err(ConfigErrors(problems));
    };
    let parsed = checked.parsed.take();
    let mut warnings = vec![];
    let mut secret = |key: &str, f: &Path| {
        if !checked.trusted(key) {
            return None; // not the file's own value: its problem is reported already
        }
        match read_secret(key, f, path, &mut warnings) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    };
    let kommo = match (&config.kommo.token_file, &config.kommo.oauth) {
        (Some(t), _) => secret("kommo.token_file", t).map(KommoCredentials::LongLived),
        (None, Some(o)) => {
            let cs = secret("kommo.oauth.client_secret_file", &o.client_secret_file);
            let rt = match &o.refresh_token_file {
                Some(f) => secret("kommo.oauth.refresh_token_file", f).map(Some),
                None => Some(None),
            };
            cs.zip(rt).map(
                |(client_secret, refresh_token_seed)| KommoCredentials::OAuth {
                    client_secret,
                    refresh_token_seed,
                },
            )
        }
        (None, None) => None, // reported by validate
    };
    let chatapp_password = secret("chatapp.password_file", &config.chatapp.password_file);
    let webhook_token = config
        .daemon
        .webhook_token_file
        .as_ref()
        .map(|f| secret("daemon.webhook_token_file", f));
    if let Some(Some(t)) = &webhook_token
        && secrecy::ExposeSecret::expose_secret(t).len() < 16
    {
        problems.push(ConfigError {
            file: file.clone(),
            key: "daemon.webhook_token_file".into(),
            reason:
                "the token must be at least 16 characters (it is the only thing guarding the URLs)"
                    .into(),
        });
    }
    match (kommo, chatapp_password, webhook_token, parsed) {
        (Some(kommo), Some(chatapp_password), hook, Some(parsed)) if problems.is_empty() => {
            Ok(Loaded {
                path: path.to_path_buf(),
                config: Config::new(config, parsed, Env::read()),
                secrets: Secrets {
                    kommo,
                    chatapp_password,
                    webhook_token: hook.flatten(),
                },
                warnings,
            })
        }
        _ => Err(ConfigErrors(problems)),
    }
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
        assert_eq!(c.sync.mode, SyncMode::Normal);
        assert_eq!(c.sync.clock_skew, Duration::from_secs(5));
        assert_eq!(c.links.messenger_field, FieldRef::Code("MESSENGER".into()));
        assert_eq!(c.kinds(), vec![CardKind::Lead, CardKind::Contact]);
        assert_eq!(c.daemon.webhook_min_interval, Duration::ZERO);
        assert_eq!(c.daemon.webhook_debounce, Duration::from_millis(100));
        assert_eq!(c.daemon.webhook_budget_percent, 25);
        assert_eq!(c.daemon.max_connections, 256);
    }

    #[test]
    fn state_path_defaults_to_the_package_state_directory() {
        let text = MINIMAL.replace("state_path = \"/tmp/x.redb\"\n", "");
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.daemon.state_path, PathBuf::from(DEFAULT_STATE_PATH));
        assert_eq!(DEFAULT_STATE_PATH, "/var/lib/chatapp-kommo-sync/state.redb");
    }

    #[test]
    fn sync_mode_is_normal_or_shadow() {
        let text = MINIMAL.replace("[sync]\n", "[sync]\nmode = \"shadow\"\n");
        assert_eq!(
            Config::parse(&text, "t.toml").unwrap().sync.mode,
            SyncMode::Shadow
        );
        let text = MINIMAL.replace("[sync]\n", "[sync]\nmode = \"Shadow\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.first().key, "sync.mode", "{e}");
        assert!(e.first().reason.contains("normal"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let text = MINIMAL.replace("[sync]\n", "[sync]\nconflcit = \"crm\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        let e = e.first();
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
            ("[sync]\n", "[sync]\nmode = \"dry\"\n", "sync.mode"),
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
                "sync.crm_to_chat[0]",
            ),
        ] {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from}");
            let e = Config::parse(&text, "t.toml").unwrap_err();
            let e = e.first();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::parse(
            include_str!("../../config.example.toml"),
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
        let e = e.first();
        assert_eq!(e.key, "users.map[1].kommo");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_plain_words() {
        let text = MINIMAL
            .replace("[daemon]\n", "[daemon]\nlog_level = \"verbose\"\n")
            .replace("https://example.kommo.com", "example.kommo.com")
            .replace("license_ids = [1]", "license_ids = []");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["daemon.log_level", "kommo.base_url", "chatapp.license_ids"],
            "{e}"
        );
        assert!(e.0[0].reason.contains("not a log level"), "{e}");
        assert!(
            e.0[1]
                .reason
                .contains("has no scheme: write it as https://example.kommo.com"),
            "{e}"
        );
        // a wrong type names the key in plain words
        let text = MINIMAL.replace("company_id = 1", "company_id = \"1\"");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.first().key, "chatapp.company_id");
        assert!(e.first().reason.contains("expected an integer"), "{e}");
        assert!(!e.first().reason.contains("u64"), "{e}");
        // the webhook budget is a percent of the rate
        for bad in ["0", "101"] {
            let text = MINIMAL.replace(
                "[daemon]\n",
                &format!("[daemon]\nwebhook_budget_percent = {bad}\n"),
            );
            let e = Config::parse(&text, "t.toml").unwrap_err();
            assert_eq!(e.first().key, "daemon.webhook_budget_percent", "{e}");
            assert!(e.first().reason.contains("out of range 1..=100"), "{e}");
        }
        // levels and target=level directives pass
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("warn,chatapp_kommo_sync::sync=debug").is_ok());
        assert!(check_log_level("verbose").is_err());
    }

    #[test]
    fn secrets_missing_everywhere_are_all_named_and_loose_modes_warned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, MINIMAL).unwrap();
        let e = load(&cfg).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["kommo.token_file", "chatapp.password_file"],
            "{e}"
        );
        assert!(e.0[0].reason.contains("CREDENTIALS_DIRECTORY"), "{e}");
        std::fs::write(dir.path().join("kommo-token"), "t0ken-value-xyz\n").unwrap();
        std::fs::write(dir.path().join("chatapp-password"), "pass-word-xyz\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("chatapp-password"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(
            dir.path().join("kommo-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let l = load(&cfg).unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            l.warnings[0].contains("chatapp-password"),
            "{:?}",
            l.warnings
        );
        assert!(
            l.warnings[0].contains("readable by others"),
            "{:?}",
            l.warnings
        );
    }

    /// The keys of a parse's problems.
    fn keys(text: &str) -> Vec<String> {
        let e = Config::parse(text, "t.toml").unwrap_err();
        e.0.iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn problems_of_shape_are_all_reported_with_their_lines() {
        let text = MINIMAL
            .replace("company_id = 1", "company_id = \"one\"")
            .replace(
                "[sync]\n",
                "[sync]\nmode = \"shdow\"\nmax_writes_per_cycle = true\n",
            )
            .replace("[kommo]\n", "[kommo]\nbatch_sise = 5\n")
            .replace("email = \"ops@example.com\"\n", "")
            .replace("[daemon]\n", "[daemon]\nlog_level = \"verbose\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        let line = |at: &str| 1 + text.lines().position(|l| l.starts_with(at)).unwrap();
        let got: Vec<(&str, &str)> =
            e.0.iter()
                .map(|p| (p.key.as_str(), p.reason.as_str()))
                .collect();
        // in the file's order; [daemon]'s semantic check still runs, [chatapp]'s and [sync]'s
        // (which have stand-ins) do not
        assert_eq!(
            got,
            vec![
                (
                    "kommo.batch_sise",
                    &*format!(
                        "unknown field `batch_sise`, expected one of `base_url`, `token_file`, `oauth`, `requests_per_second`, `batch_size`, `timeout`, `events_overlap`, `block_cooloff`, `shared_limit` (line {})",
                        line("batch_sise")
                    )
                ),
                (
                    "chatapp.email",
                    &*format!(
                        "required, but missing from [chatapp] (line {})",
                        line("[chatapp]")
                    )
                ),
                (
                    "chatapp.company_id",
                    &*format!(
                        "expected an integer (a whole number >= 0), found a string (line {})",
                        line("company_id")
                    )
                ),
                (
                    "sync.mode",
                    &*format!(
                        "unknown value \"shdow\", expected normal or shadow (line {})",
                        line("mode")
                    )
                ),
                (
                    "sync.max_writes_per_cycle",
                    &*format!(
                        "expected an integer (a whole number >= 0), found true or false (line {})",
                        line("max_writes")
                    )
                ),
                ("daemon.log_level", &*e.0[5].reason),
            ],
            "{e}"
        );
        assert!(e.0[5].reason.contains("not a log level"), "{e}");
        assert!(!e.to_string().contains("one\""), "{e}");
    }

    #[test]
    fn array_elements_are_named_by_their_place_in_the_file() {
        let text = MINIMAL.replace(
            "crm_to_chat = [\"contact\"]",
            "crm_to_chat = [\"deal\", \"contact\", 7, \"lead\", \"cards\"]",
        );
        assert_eq!(
            keys(&text),
            [
                "sync.crm_to_chat[0]",
                "sync.crm_to_chat[2]",
                "sync.crm_to_chat[4]"
            ]
        );
        let text = format!(
            "{MINIMAL}\n[users]\nmap = [{{ kommo = \"a\", chatapp = 2 }}, {{ kommo = 1 }}, {{ kommo = 3, chatapp = 4, x = 1 }}]\n"
        );
        assert_eq!(
            keys(&text),
            [
                "users.map[0].kommo",
                "users.map[1].chatapp",
                "users.map[2].x"
            ]
        );
    }

    #[test]
    fn missing_and_misshapen_tables_are_named_once() {
        // a missing required table is one problem, not one per key
        let start = MINIMAL.find("[chatapp]").unwrap();
        let end = MINIMAL.find("[sync]").unwrap();
        let text = format!("{}{}", &MINIMAL[..start], &MINIMAL[end..]);
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.first().key, "chatapp");
        assert_eq!(e.first().reason, "required, but missing");
        // a table given as another type, and one in the wrong place
        let text = MINIMAL
            .replace("[sync]\n", "[sync]\nleads = 5\n")
            .replace("[daemon]\n", "[deamon]\nx = 1\n[daemon]\n");
        assert_eq!(keys(&text), ["deamon", "sync.leads"]);
        let text = format!(
            "daemon = 5\n{}",
            MINIMAL.replace("[daemon]\n", "[unused]\n")
        );
        assert_eq!(keys(&text), ["daemon", "unused"]);
    }

    #[test]
    fn no_string_of_the_file_is_shown_but_enum_words() {
        let secret = "s3cr3t-hunter2";
        for (from, to) in [
            ("company_id = 1", format!("company_id = \"{secret}\"")),
            ("[sync]\n", format!("[sync]\nclock_skew = \"{secret}\"\n")),
            (
                "[links]\n",
                format!("[links]\nphone_field = [\"{secret}\"]\n"),
            ),
            ("[sync]\n", format!("[sync]\n{secret}\n")),
            ("[sync]\n", format!("[sync]\n\"{secret}\"\n")),
        ] {
            let text = format!("{MINIMAL}[links]\n").replace(from, &to);
            let e = Config::parse(&text, "t.toml").unwrap_err();
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(e.to_string().contains("(line "), "{e}");
        }
    }

    #[test]
    fn a_secret_is_read_only_from_a_key_that_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            MINIMAL
                .replace("token_file = \"kommo-token\"", "token_file = 5")
                .replace("company_id = 1", "company_id = -1"),
        )
        .unwrap();
        // kommo.token_file is a wrong type (not read); chatapp.password_file parsed (read, missing)
        let e = load(&cfg).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kommo.token_file",
                "chatapp.company_id",
                "chatapp.password_file"
            ],
            "{e}"
        );
        assert!(
            e.0[0]
                .reason
                .starts_with("expected a path (a string), found an integer"),
            "{e}"
        );
        assert!(
            e.0[1]
                .reason
                .starts_with("expected an integer (a whole number >= 0), found -1"),
            "{e}"
        );
        assert!(e.0[2].reason.contains("cannot read"), "{e}");
    }

    #[test]
    fn field_refs_match_by_id_or_code() {
        assert!(FieldRef::Code("MESSENGER".into()).matches(5, Some("messenger")));
        assert!(FieldRef::Code("5".into()).matches(5, None));
        assert!(FieldRef::Id(5).matches(5, Some("X")));
        assert!(!FieldRef::Id(5).matches(6, Some("X")));
    }
}
