//! The state db (redb 4.6): bases of every card and dialog (their link references included), parked
//! pairs, pending write intents, watermarks, tokens, the audit log and the cycle log.
//!
//! Values are versioned bytes: one format byte, then JSON (meta values, audit and cycle rows:
//! small and readable) or postcard (the card and dialog bases: [`codec`]). The bases carry three
//! indexes so a cycle loads only the records it needs ([`bases`]); a base is rewritten only when
//! it changed. A schema 1 db (JSON bases, no indexes) is migrated in one transaction on open. Every commit is durable (`Durability::Immediate`, redb's default). The db is opened in
//! redb's `SingleWriter` mode: one writing process (the daemon or `once`), and any number of
//! read-only processes (`status`) that follow its commits. A second writer is refused with
//! [`StoreError::Locked`].

pub mod bases;
pub mod codec;
pub mod failures;
mod names;
pub mod shadow;
pub mod staged;
mod wire;

pub use crate::ports::{
    AuditEntry, Base, CycleCommit, CycleKind, CycleRecord, Intent, KEEP_CYCLES, Outcome,
    Quarantined, Retention, StoreError, Watermarks,
};

use crate::core::engine::{Parked, Snapshot};
use crate::core::model::{CardId, CardKind, CardState, DialogKey, DialogState, RecordId};
use crate::core::neighbourhood::Frame;
use crate::tokens::{OAuthPair, TokenPair, TokenStoreError};
use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// redb's page cache (its default is 1 GiB): the daemon reads its tables once a cycle, so a small
/// cache costs little time and keeps the resident size of large accounts down.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 2;
/// The schema this build migrates from (JSON bases, no indexes).
pub const SCHEMA_JSON_BASES: u32 = 1;
const FORMAT: u8 = codec::JSON;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PARKED: TableDefinition<&str, &[u8]> = TableDefinition::new("parked");
const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("intents");
const RECHECK: TableDefinition<&str, &[u8]> = TableDefinition::new("recheck");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const CYCLES: TableDefinition<u64, &[u8]> = TableDefinition::new("cycles");
const EVENTS_SEEN: TableDefinition<&str, i64> = TableDefinition::new("events_seen");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// A quarantined entry not seen again for this long is dropped.
pub const QUARANTINE_TTL_SECS: i64 = 7 * 86_400;

/// Meta key: schema version.
pub const META_SCHEMA: &str = "schema_version";
/// Meta key: the first cycle ran.
pub const META_BOOTSTRAPPED: &str = "bootstrapped";
/// Meta key: the ChatApp token pair.
pub const META_CHATAPP_TOKEN: &str = "chatapp_token";
/// Meta key: unix times of recent ChatApp logins.
pub const META_CHATAPP_LOGINS: &str = "chatapp_logins";
/// Meta key: the Kommo OAuth token pair.
pub const META_KOMMO_OAUTH: &str = "kommo_oauth";
/// Meta key: watermarks of incremental reads.
pub const META_WATERMARKS: &str = "watermarks";
/// Meta key: Kommo's pipelines and statuses (lead stages).
pub const META_PIPELINES: &str = "kommo_pipelines";

fn db_err<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        context,
        source: e.into(),
    }
}

/// Encodes a value as versioned bytes.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    serde_json::to_writer(&mut out, v).expect("serializing plain data cannot fail");
    out
}

/// Decodes versioned bytes.
pub fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => serde_json::from_slice(rest).map_err(|e| StoreError::Decode {
            what: what(),
            reason: e.to_string(),
        }),
        Some((v, _)) => Err(StoreError::Decode {
            what: what(),
            reason: format!("unknown format byte {v}"),
        }),
        None => Err(StoreError::Decode {
            what: what(),
            reason: "empty value".into(),
        }),
    }
}

/// Appends an audit entry (the next id).
fn append_audit(tx: &redb::WriteTransaction, audit: &AuditEntry) -> Result<(), StoreError> {
    let mut a = tx.open_table(AUDIT).map_err(db_err("open audit"))?;
    let next = a
        .last()
        .map_err(db_err("read audit"))?
        .map(|(k, _)| k.value() + 1)
        .unwrap_or(1);
    a.insert(next, encode(audit).as_slice())
        .map_err(db_err("write audit"))?;
    Ok(())
}

fn record_key(r: &RecordId) -> String {
    serde_json::to_string(r).expect("plain data")
}

/// The most rows one commit prunes (so a first prune of a big backlog does not stall a cycle).
pub const PRUNE_BATCH: usize = 10_000;

/// Writes the settled card bases and a first run's staged ones, merged in id order: keys
/// inserted in order fill redb's pages densely (staged ones first, then the settled ones among
/// them, left half-empty pages: a fifth more pages read by every later open's check).
fn put_cards_in_order(
    tx: &redb::WriteTransaction,
    staged: &staged::StagedCards,
    settled: &BTreeMap<CardId, CardState>,
) -> Result<(), StoreError> {
    let mut staged = staged.untaken().peekable();
    for (id, st) in settled {
        while let Some(row) =
            staged.next_if(|r| r.as_ref().map_or(true, |(staged_id, _)| staged_id < id))
        {
            let (staged_id, staged_st) = row?;
            bases::put_card(tx, &staged_id, &staged_st)?;
        }
        bases::put_card(tx, id, st)?;
    }
    for row in staged {
        let (id, st) = row?;
        bases::put_card(tx, &id, &st)?;
    }
    Ok(())
}

enum Handle {
    Write(Database),
    Read(ReadOnlyDatabase),
}

/// The state db. Its redb handle can be replaced in place ([`Store::reopen`]) after an I/O
/// error, which makes redb refuse the old one: every holder of the store keeps working.
pub struct Store {
    db: std::sync::RwLock<Option<Handle>>,
    path: PathBuf,
}

/// redb's builder with this program's settings; `check` verifies every page on open (writable
/// opens only).
fn builder(check: bool) -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(check);
    b
}

/// Runs a redb open so that an error, or a panic on a damaged file, names the file.
fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, redb::DatabaseError>,
) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    match crate::panic_guard::catch(f) {
        Err(why) => Err(corrupt(format!("redb failed on it: {why}"))),
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if is_locked(&e) => Err(StoreError::Locked(path.to_path_buf())),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(d)))) => {
            Err(corrupt(format!("it is damaged ({d})")))
        }
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => Err(corrupt(format!(
            "it is a redb file of file format {v}, not this program's"
        ))),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Err(corrupt(format!("it is too short or not a redb file ({e})")))
        }
        Ok(Err(e)) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Creates a new db: its directory 0700 (when created here), the file 0600.
fn create_new(path: &Path) -> Result<Database, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| StoreError::Db {
        context: "create",
        source: redb::Error::Io(e),
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // the mode given to open is filtered by the umask: set it exactly
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    let backend = redb::backends::FileBackend::new(file).map_err(|e| StoreError::Db {
        context: "create",
        source: e.into(),
    })?;
    guarded(path, || builder(false).create_with_backend(backend))
}

/// Narrows an existing db file readable by others to 0600 (it holds tokens), with a warning.
fn tighten_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the state db holds tokens and was readable by others: narrowed to 0600");
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

fn is_locked(e: &redb::DatabaseError) -> bool {
    matches!(e, redb::DatabaseError::DatabaseAlreadyOpen)
        || e.to_string().to_lowercase().contains("lock")
}

impl Store {
    /// Opens the db for writing, or creates it (mode 0600, its new directory 0700, whatever the
    /// umask). An existing file is validated before anything is written: it must not be empty,
    /// redb verifies every page's checksum on open (a damaged file is an error, never a panic or
    /// a fresh bootstrap), and the schema key must be this build's (a newer schema is refused).
    /// A db another process writes gives [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the file is empty (0 bytes), not a redb file".into(),
                });
            }
            Ok(_) => {
                tighten_mode(path);
                // the schema first, read-only: a newer or foreign db is refused untouched (a db
                // that needs redb's recovery after a crash cannot be opened read-only: it is
                // recovered by the writable open below, then its schema is checked before init)
                match guarded(path, || builder(false).open_read_only(path)) {
                    Ok(db) => Store::with(Handle::Read(db), path).guard_schema()?,
                    Err(StoreError::Open {
                        source: redb::Error::RepairAborted,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
                guarded(path, || builder(true).open(path))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(path)?,
            Err(e) => {
                return Err(StoreError::Db {
                    context: "open",
                    source: redb::Error::Io(e),
                });
            }
        };
        let store = Store::with(Handle::Write(db), path);
        store.init()?;
        Ok(store)
    }

    fn with(handle: Handle, path: &Path) -> Store {
        Store {
            db: std::sync::RwLock::new(Some(handle)),
            path: path.to_path_buf(),
        }
    }

    /// Drops the redb handle and opens the file again, validated as on start. After an I/O error
    /// redb refuses the old handle for good; a reopen gets the daemon going again if the disk is
    /// back. On failure the store stays closed: every call fails until a reopen succeeds.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(db.take());
        let fresh = Store::open(&self.path)?;
        let handle = fresh.db.into_inner().unwrap_or_else(|e| e.into_inner());
        *db = handle;
        Ok(())
    }

    /// Opens an existing db read-only; works while a daemon writes it. redb verifies no checksum
    /// on a read-only open, so reads of a damaged file run under [`crate::panic_guard`] (see
    /// [`Store::guard`]); when no daemon holds the file it is opened for writing instead, with the
    /// full check (nothing is written but redb's own bookkeeping).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(path.to_path_buf()));
            }
            Ok(m) if m.len() == 0 => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the file is empty (0 bytes), not a redb file".into(),
                });
            }
            _ => {}
        }
        let handle = match guarded(path, || builder(true).open(path)) {
            Ok(db) => Handle::Write(db),
            // a daemon writes it (it verified the file when it opened it), or this user may
            // only read it: open it read-only
            Err(StoreError::Locked(_) | StoreError::Open { .. }) => {
                Handle::Read(guarded(path, || builder(false).open_read_only(path))?)
            }
            Err(e) => return Err(e),
        };
        let store = Store::with(handle, path);
        store.guard_schema()?;
        Ok(store)
    }

    /// [`Store::check_schema`] under [`Store::guard`] (a read-only handle verifies nothing).
    fn guard_schema(&self) -> Result<(), StoreError> {
        self.guard(|| self.check_schema().map(|_| ()))
    }

    /// Runs `f` (reads of this db) so that a panic in redb becomes [`StoreError::Corrupt`].
    pub fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        crate::panic_guard::catch(f).unwrap_or_else(|why| {
            Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("reading it failed: {why}"),
            })
        })
    }

    /// The db file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction (the handle must be a writable one that is open).
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match db.as_ref() {
            Some(Handle::Write(db)) => db.begin_write().map_err(db_err("begin write")),
            Some(Handle::Read(_)) => Err(StoreError::ReadOnly(self.path.clone())),
            None => Err(StoreError::Closed(self.path.clone())),
        }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match db.as_ref() {
            Some(Handle::Write(db)) => db.begin_read(),
            Some(Handle::Read(db)) => db.begin_read(),
            None => return Err(StoreError::Closed(self.path.clone())),
        }
        .map_err(db_err("begin read"))
    }

    /// Checks the schema before anything is written, then creates the tables of a new db.
    fn init(&self) -> Result<(), StoreError> {
        let fresh = self.table_names()?.is_empty();
        let found = if fresh { None } else { self.check_schema()? };
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(db_err("open meta"))?;
            if fresh || found == Some(SCHEMA_JSON_BASES) {
                meta.insert(META_SCHEMA, encode(&SCHEMA_VERSION).as_slice())
                    .map_err(db_err("write schema"))?;
            }
            if found == Some(SCHEMA_JSON_BASES) {
                let (cards, dialogs) = bases::migrate_from_json(&tx)?;
                tracing::info!(path = %self.path.display(), cards, dialogs, "state db migrated from schema 1 (JSON bases) to schema 2 (compact bases with indexes)");
            }
            bases::create_tables(&tx)?;
            tx.open_table(PARKED).map_err(db_err("open parked"))?;
            tx.open_table(INTENTS).map_err(db_err("open intents"))?;
            tx.open_table(RECHECK).map_err(db_err("open recheck"))?;
            tx.open_table(AUDIT).map_err(db_err("open audit"))?;
            tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
            tx.open_table(EVENTS_SEEN)
                .map_err(db_err("open events_seen"))?;
            tx.open_table(QUARANTINE)
                .map_err(db_err("open quarantine"))?;
            tx.open_table(failures::WRITE_FAILURES)
                .map_err(db_err("open write_failures"))?;
        }
        tx.commit().map_err(db_err("commit init"))
    }

    /// The names of the tables in the file.
    fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.read()?;
        let tables = tx.list_tables().map_err(db_err("list tables"))?;
        Ok(tables
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect())
    }

    /// The file must hold this program's schema key, at this build's version or the one it
    /// migrates from; returns the version found (`None`: an empty db).
    fn check_schema(&self) -> Result<Option<u32>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let found: Option<u32> = self
            .meta(META_SCHEMA)
            .map_err(|e| corrupt(format!("its schema key cannot be read ({e})")))?;
        match found {
            Some(v) if v == SCHEMA_VERSION || v == SCHEMA_JSON_BASES => Ok(Some(v)),
            Some(v) => Err(StoreError::Schema {
                understood: SCHEMA_VERSION,
                path: self.path.clone(),
                found: v,
            }),
            None if self.table_names()?.is_empty() => Ok(None),
            None => Err(corrupt(
                "it is a redb file without this program's schema key (another program's db?)"
                    .into(),
            )),
        }
    }

    /// Reads a meta value.
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err("open meta")(e)),
        };
        let v = t.get(key).map_err(db_err("read meta"))?;
        v.map(|v| decode(|| format!("meta {key}"), v.value()))
            .transpose()
    }

    /// Writes a meta value durably.
    pub fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut t = tx.open_table(META).map_err(db_err("open meta"))?;
            t.insert(key, encode(value).as_slice())
                .map_err(db_err("write meta"))?;
        }
        tx.commit().map_err(db_err("commit meta"))
    }

    /// Loads the whole snapshot.
    pub fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        let tx = self.read()?;
        let mut snap = Snapshot {
            bootstrapped: self.meta::<bool>(META_BOOTSTRAPPED)?.unwrap_or(false),
            ..Snapshot::default()
        };
        let cards = tx.open_table(bases::CARDS).map_err(db_err("open cards"))?;
        for row in cards.iter().map_err(db_err("scan cards"))? {
            let (k, v) = row.map_err(db_err("scan cards"))?;
            let Some(id) = bases::card_from_key(k.value()) else {
                return Err(StoreError::Decode {
                    what: "cards key".into(),
                    reason: format!("{:?}", k.value()),
                });
            };
            let st = codec::card_from(v.value()).map_err(|reason| StoreError::Decode {
                what: format!("card {id}"),
                reason,
            })?;
            snap.cards.insert(id, st);
        }
        snap.dialogs = self.dialog_bases()?;
        let frame = self.frame()?;
        snap.held = frame.held;
        snap.parked = frame.parked;
        Ok(snap)
    }

    /// Every dialog base (a first run decides every dialog).
    pub fn dialog_bases(&self) -> Result<BTreeMap<DialogKey, DialogState>, StoreError> {
        let tx = self.read()?;
        let dialogs = tx
            .open_table(bases::DIALOGS)
            .map_err(db_err("open dialogs"))?;
        let mut out = BTreeMap::new();
        for row in dialogs.iter().map_err(db_err("scan dialogs"))? {
            let (k, v) = row.map_err(db_err("scan dialogs"))?;
            let key = bases::dialog_from_key(k.value())?;
            let st = codec::dialog_from(v.value()).map_err(|reason| StoreError::Decode {
                what: format!("dialog {key}"),
                reason,
            })?;
            out.insert(key, st);
        }
        Ok(out)
    }

    /// What a cycle needs besides the bases: parked pairs, held records, the bootstrap flag
    /// (`match_phone` is the caller's to set).
    pub fn frame(&self) -> Result<Frame, StoreError> {
        let tx = self.read()?;
        let mut frame = Frame {
            bootstrapped: self.meta::<bool>(META_BOOTSTRAPPED)?.unwrap_or(false),
            held: self.recheck()?,
            ..Frame::default()
        };
        let parked = tx.open_table(PARKED).map_err(db_err("open parked"))?;
        for row in parked.iter().map_err(db_err("scan parked"))? {
            let (k, v) = row.map_err(db_err("scan parked"))?;
            let p: Parked = decode(|| format!("parked {}", k.value()), v.value())?;
            frame.parked.insert(k.value().to_string(), p);
        }
        Ok(frame)
    }

    /// A read view of the bases and their indexes, for one cycle's lookups.
    pub fn bases(&self) -> Result<bases::BaseReader, StoreError> {
        bases::BaseReader::new(&self.read()?)
    }

    /// Records write intents durably before the writes are made.
    pub fn record_intents(&self, intents: &[Intent]) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut t = tx.open_table(INTENTS).map_err(db_err("open intents"))?;
            for i in intents {
                t.insert(record_key(&i.target).as_str(), encode(i).as_slice())
                    .map_err(db_err("write intent"))?;
            }
        }
        tx.commit().map_err(db_err("commit intents"))
    }

    /// Pending intents (writes whose outcome is not recorded).
    pub fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(INTENTS).map_err(db_err("open intents"))?;
        let mut out = vec![];
        for row in t.iter().map_err(db_err("scan intents"))? {
            let (k, v) = row.map_err(db_err("scan intents"))?;
            out.push(decode(|| format!("intent {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// A confirmed write: its new base, its audit entry, and the intent's removal, in one
    /// transaction (so the daemon's own write never comes back as a change).
    pub fn confirm_write(&self, intent: &Intent, audit: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            match (&intent.target, &intent.base) {
                (RecordId::Card(id), Base::Card(st)) => {
                    bases::put_card(&tx, id, st)?;
                }
                (RecordId::Dialog(k), Base::Dialog(st)) => {
                    bases::put_dialog(&tx, k, st)?;
                }
                _ => {
                    return Err(StoreError::Decode {
                        what: format!("intent for {}", intent.target),
                        reason: "base of the wrong kind".into(),
                    });
                }
            }
            append_audit(&tx, audit)?;
            failures::clear(&tx, &intent.target)?;
            shadow::forget_counts(&tx)?; // a base changed: shadow mode counts again
            let mut i = tx.open_table(INTENTS).map_err(db_err("open intents"))?;
            i.remove(record_key(&intent.target).as_str())
                .map_err(db_err("remove intent"))?;
        }
        tx.commit().map_err(db_err("commit confirmed write"))
    }

    /// Removes an intent whose write certainly did not happen (rejected, or dropped by
    /// check-before-write).
    pub fn drop_intent(&self, target: &RecordId) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut i = tx.open_table(INTENTS).map_err(db_err("open intents"))?;
            i.remove(record_key(target).as_str())
                .map_err(db_err("remove intent"))?;
        }
        tx.commit().map_err(db_err("commit intent removal"))
    }

    /// Records to read again next cycle (held by a failed or dropped write).
    pub fn recheck(&self) -> Result<BTreeSet<RecordId>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(RECHECK).map_err(db_err("open recheck"))?;
        let mut out = BTreeSet::new();
        for row in t.iter().map_err(db_err("scan recheck"))? {
            let (k, _) = row.map_err(db_err("scan recheck"))?;
            let r: RecordId = serde_json::from_str(k.value()).map_err(|e| StoreError::Decode {
                what: format!("recheck {}", k.value()),
                reason: e.to_string(),
            })?;
            out.insert(r);
        }
        Ok(out)
    }

    /// Event ids already seen.
    pub fn events_seen(&self) -> Result<BTreeSet<String>, StoreError> {
        let tx = self.read()?;
        let t = tx
            .open_table(EVENTS_SEEN)
            .map_err(db_err("open events_seen"))?;
        let mut out = BTreeSet::new();
        for row in t.iter().map_err(db_err("scan events_seen"))? {
            out.insert(
                row.map_err(db_err("scan events_seen"))?
                    .0
                    .value()
                    .to_string(),
            );
        }
        Ok(out)
    }

    /// Commits the end of a successful cycle in one durable transaction: new bases, parked
    /// pairs, records to recheck, watermarks, seen event ids, the bootstrap flag and the cycle record.
    pub fn commit_cycle(&self, c: &CycleCommit<staged::StagedCards>) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            put_cards_in_order(&tx, &c.staged, &c.settlement.cards)?;
            for (k, st) in &c.settlement.dialogs {
                bases::put_dialog(&tx, k, st)?;
            }
            let mut parked = tx.open_table(PARKED).map_err(db_err("open parked"))?;
            for k in &c.settlement.unpark {
                parked.remove(k.as_str()).map_err(db_err("remove parked"))?;
            }
            for p in &c.settlement.park {
                parked
                    .insert(p.key().as_str(), encode(p).as_slice())
                    .map_err(db_err("write parked"))?;
            }
            let mut recheck = tx.open_table(RECHECK).map_err(db_err("open recheck"))?;
            recheck
                .retain(|_, _| false)
                .map_err(db_err("clear recheck"))?;
            for r in &c.settlement.held {
                recheck
                    .insert(record_key(r).as_str(), [].as_slice())
                    .map_err(db_err("write recheck"))?;
            }
            let mut seen = tx
                .open_table(EVENTS_SEEN)
                .map_err(db_err("open events_seen"))?;
            for (id, at) in &c.events_seen {
                seen.insert(id.as_str(), *at)
                    .map_err(db_err("write events_seen"))?;
            }
            let cutoff = c.prune_events_before;
            seen.retain(|_, at| at >= cutoff)
                .map_err(db_err("prune events_seen"))?;
            write_quarantine(&tx, c)?;
            names::write(&tx, &c.people)?;
            let mut meta = tx.open_table(META).map_err(db_err("open meta"))?;
            meta.insert(META_WATERMARKS, encode(&c.watermarks).as_slice())
                .map_err(db_err("write watermarks"))?;
            if let Some(p) = &c.pipelines {
                meta.insert(META_PIPELINES, encode(p).as_slice())
                    .map_err(db_err("write pipelines"))?;
            }
            meta.insert(META_BOOTSTRAPPED, encode(&c.shadow.is_none()).as_slice())
                .map_err(db_err("write bootstrapped"))?;
            let mut cycles = tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
            cycles
                .insert(c.cycle.id, encode(&c.cycle).as_slice())
                .map_err(db_err("write cycle"))?;
        }
        match &c.shadow {
            Some(s) => shadow::write(&tx, s)?,
            // the bases changed outside shadow mode: its kept count no longer describes them
            None => shadow::forget_counts(&tx)?,
        }
        prune(&tx, &c.retention)?;
        tx.commit().map_err(db_err("commit cycle"))
    }

    /// The names of Kommo users and ChatApp employees as last read (see `store/names.rs`).
    pub fn people(&self) -> Result<crate::core::text::People, StoreError> {
        names::read(&self.read()?)
    }

    /// The quarantined records, most recently seen first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let tx = self.read()?;
        let t = match tx.open_table(QUARANTINE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(db_err("open quarantine")(e)),
        };
        let mut out: Vec<Quarantined> = vec![];
        for row in t.iter().map_err(db_err("scan quarantine"))? {
            let (k, v) = row.map_err(db_err("scan quarantine"))?;
            out.push(decode(|| format!("quarantine {}", k.value()), v.value())?);
        }
        out.sort_by_key(|q| std::cmp::Reverse(q.last_seen));
        Ok(out)
    }

    /// Records a cycle that did not commit (failed, braked).
    pub fn record_cycle(&self, c: &CycleRecord, retention: &Retention) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut cycles = tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
            cycles
                .insert(c.id, encode(c).as_slice())
                .map_err(db_err("write cycle"))?;
        }
        prune(&tx, retention)?;
        tx.commit().map_err(db_err("commit cycle record"))
    }

    /// The next cycle id.
    pub fn next_cycle_id(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
        Ok(t.last()
            .map_err(db_err("read cycles"))?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(1))
    }

    /// The last `n` cycles, newest first.
    pub fn recent_cycles(&self, n: usize) -> Result<Vec<CycleRecord>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
        let mut out = vec![];
        for row in t.iter().map_err(db_err("scan cycles"))?.rev().take(n) {
            let (k, v) = row.map_err(db_err("scan cycles"))?;
            out.push(decode(|| format!("cycle {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Audit entries, newest first, that match `filter`, at most `n`.
    pub fn audit(
        &self,
        n: usize,
        filter: impl Fn(&AuditEntry) -> bool,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(AUDIT).map_err(db_err("open audit"))?;
        let mut out = vec![];
        for row in t.iter().map_err(db_err("scan audit"))?.rev() {
            let (k, v) = row.map_err(db_err("scan audit"))?;
            let e: AuditEntry = decode(|| format!("audit {}", k.value()), v.value())?;
            if filter(&e) {
                out.push(e);
                if out.len() >= n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(AUDIT).map_err(db_err("open audit"))?;
        t.len().map_err(db_err("count audit"))
    }

    /// Closes the db, surfacing errors that dropping would hide.
    pub fn close(self) -> Result<(), StoreError> {
        match self.db.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Handle::Write(db)) => db.close().map_err(db_err("close")),
            Some(Handle::Read(_)) | None => Ok(()),
        }
    }
}

/// Drops cycle records and audit entries past `r` (at most [`PRUNE_BATCH`] of each).
fn prune(tx: &redb::WriteTransaction, r: &Retention) -> Result<(), StoreError> {
    let mut cycles = tx.open_table(CYCLES).map_err(db_err("open cycles"))?;
    let last = cycles
        .last()
        .map_err(db_err("read cycles"))?
        .map(|(k, _)| k.value());
    if let Some(last) = last
        && last > r.keep_cycles
    {
        let cutoff = last - r.keep_cycles;
        for _ in 0..PRUNE_BATCH {
            let first = cycles
                .first()
                .map_err(db_err("read cycles"))?
                .map(|(k, _)| k.value());
            match first {
                Some(k) if k <= cutoff => {
                    cycles.pop_first().map_err(db_err("prune cycles"))?;
                }
                _ => break,
            }
        }
    }
    let mut audit = tx.open_table(AUDIT).map_err(db_err("open audit"))?;
    for _ in 0..PRUNE_BATCH {
        let old = match audit.first().map_err(db_err("read audit"))? {
            Some((_, v)) => {
                decode::<AuditEntry>(String::new, v.value()).map_or(true, |e| e.at < r.audit_before)
            }
            None => false,
        };
        if !old {
            break;
        }
        audit.pop_first().map_err(db_err("prune audit"))?;
    }
    Ok(())
}

/// Upserts the cycle's bad records, releases those that read fine, drops entries unseen for
/// [`QUARANTINE_TTL_SECS`].
fn write_quarantine(
    tx: &redb::WriteTransaction,
    c: &CycleCommit<staged::StagedCards>,
) -> Result<(), StoreError> {
    let mut q = tx
        .open_table(QUARANTINE)
        .map_err(db_err("open quarantine"))?;
    let now = c.cycle.started_at;
    for k in &c.released {
        q.remove(k.as_str()).map_err(db_err("release quarantine"))?;
    }
    for bad in &c.bad {
        let key = Quarantined::key_of(bad);
        let old: Option<Quarantined> =
            match q.get(key.as_str()).map_err(db_err("read quarantine"))? {
                Some(v) => decode(|| format!("quarantine {key}"), v.value()).ok(),
                None => None,
            };
        let entry = Quarantined {
            record: bad.clone(),
            first_seen: old.as_ref().map_or(now, |o| o.first_seen),
            last_seen: now,
            cycles: old.as_ref().map_or(0, |o| o.cycles) + 1,
        };
        q.insert(key.as_str(), encode(&entry).as_slice())
            .map_err(db_err("write quarantine"))?;
    }
    let cutoff = now - QUARANTINE_TTL_SECS;
    q.retain(|_, v| decode::<Quarantined>(String::new, v).is_ok_and(|e| e.last_seen >= cutoff))
        .map_err(db_err("prune quarantine"))?;
    Ok(())
}

impl crate::tokens::TokenStore for Store {
    fn kommo_pair(&self) -> Result<Option<OAuthPair>, TokenStoreError> {
        self.meta(META_KOMMO_OAUTH).map_err(token_err)
    }
    fn save_kommo_pair(&self, pair: &OAuthPair) -> Result<(), TokenStoreError> {
        self.put_meta(META_KOMMO_OAUTH, pair).map_err(token_err)
    }
    fn chatapp_pair(&self) -> Result<Option<TokenPair>, TokenStoreError> {
        self.meta(META_CHATAPP_TOKEN).map_err(token_err)
    }
    fn save_chatapp_pair(&self, pair: &TokenPair) -> Result<(), TokenStoreError> {
        self.put_meta(META_CHATAPP_TOKEN, pair).map_err(token_err)
    }
    fn chatapp_logins(&self) -> Result<Vec<i64>, TokenStoreError> {
        Ok(self
            .meta(META_CHATAPP_LOGINS)
            .map_err(token_err)?
            .unwrap_or_default())
    }
    fn save_chatapp_logins(&self, log: &[i64]) -> Result<(), TokenStoreError> {
        self.put_meta(META_CHATAPP_LOGINS, &log).map_err(token_err)
    }
}

fn token_err(e: StoreError) -> TokenStoreError {
    TokenStoreError(e.to_string())
}

impl crate::ports::BaseReads for Store {
    type Bases<'a> = bases::BaseReader;
    fn load_snapshot(&self) -> Result<Snapshot, StoreError> {
        Store::load_snapshot(self)
    }
    fn frame(&self) -> Result<Frame, StoreError> {
        Store::frame(self)
    }
    fn dialog_bases(&self) -> Result<BTreeMap<DialogKey, DialogState>, StoreError> {
        Store::dialog_bases(self)
    }
    fn bases(&self) -> Result<bases::BaseReader, StoreError> {
        Store::bases(self)
    }
    fn base_counts(&self) -> Result<(BTreeMap<CardKind, usize>, usize), StoreError> {
        Store::bases(self)?.counts()
    }
    fn watermarks(&self) -> Result<Watermarks, StoreError> {
        Ok(self.meta(META_WATERMARKS)?.unwrap_or_default())
    }
    fn pipelines(&self) -> Result<Option<crate::core::model::Pipelines>, StoreError> {
        self.meta(META_PIPELINES)
    }
    fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        Store::quarantined(self)
    }
    fn events_seen(&self) -> Result<BTreeSet<String>, StoreError> {
        Store::events_seen(self)
    }
    fn shadow_bootstrapped(&self) -> Result<bool, StoreError> {
        Store::shadow_bootstrapped(self)
    }
    fn shadow_tally(&self) -> Result<Option<crate::ports::ShadowTally>, StoreError> {
        Store::shadow_tally(self)
    }
    fn shadow_pair_counts<'k>(
        &self,
        dialogs: impl Iterator<Item = &'k DialogKey>,
    ) -> Result<BTreeMap<DialogKey, crate::ports::PairCount>, StoreError> {
        Store::shadow_pair_counts(self, dialogs)
    }
}

impl crate::ports::WriteLog for Store {
    fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        Store::intents(self)
    }
    fn record_intents(&self, intents: &[Intent]) -> Result<(), StoreError> {
        Store::record_intents(self, intents)
    }
    fn confirm_write(&self, intent: &Intent, audit: &AuditEntry) -> Result<(), StoreError> {
        Store::confirm_write(self, intent, audit)
    }
    fn drop_intent(&self, target: &RecordId) -> Result<(), StoreError> {
        Store::drop_intent(self, target)
    }
    fn write_failures(&self) -> Result<BTreeMap<RecordId, failures::WriteFailure>, StoreError> {
        Store::write_failures(self)
    }
    fn park_write(
        &self,
        failure: &failures::WriteFailure,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        Store::park_write(self, failure, audit)
    }
}

impl crate::ports::CycleLog for Store {
    type Staged = staged::StagedCards;
    fn commit_cycle(&self, commit: &CycleCommit<staged::StagedCards>) -> Result<(), StoreError> {
        Store::commit_cycle(self, commit)
    }
    fn record_cycle(&self, record: &CycleRecord, retention: &Retention) -> Result<(), StoreError> {
        Store::record_cycle(self, record, retention)
    }
    fn next_cycle_id(&self) -> Result<u64, StoreError> {
        Store::next_cycle_id(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::Rule;
    use crate::core::model::{CardId, DialogKey, KommoUserId, Value};
    use crate::core::neighbourhood::{BaseLookup, card_terms, dialog_index_terms, dialog_terms};

    /// A schema 1 db as the previous release wrote it: JSON bases, no indexes, a token pair.
    fn write_schema_1(
        path: &Path,
        cards: &[(CardId, CardState)],
        dialogs: &[(DialogKey, DialogState)],
    ) {
        let db = Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            meta.insert(META_SCHEMA, encode(&1u32).as_slice()).unwrap();
            meta.insert(META_BOOTSTRAPPED, encode(&true).as_slice())
                .unwrap();
            let pair = OAuthPair {
                access_token: "acc-1".into(),
                refresh_token: "ref-1".into(),
                expires_at: 99,
            };
            meta.insert(META_KOMMO_OAUTH, encode(&pair).as_slice())
                .unwrap();
            let mut t = tx.open_table(bases::CARDS).unwrap();
            for (id, st) in cards {
                t.insert(bases::card_key(id).as_slice(), encode(st).as_slice())
                    .unwrap();
            }
            let mut t = tx.open_table(bases::DIALOGS).unwrap();
            for (k, st) in dialogs {
                t.insert(
                    serde_json::to_string(k).unwrap().as_str(),
                    encode(st).as_slice(),
                )
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_schema_1_db_migrates_with_its_bases_indexes_and_tokens() {
        use crate::tokens::TokenStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let contact = CardId::new(CardKind::Contact, 2);
        let lead = CardId::new(CardKind::Lead, 7);
        let key = DialogKey::new(1, "telegram", "@a");
        let d = DialogState {
            responsible: Some(crate::core::model::EmployeeId(85502)),
            changed_at: 3,
            last_time: 4,
            session: 0,
            closed: false,
            phone: None,
        };
        let mut lead_st = card(9);
        lead_st.dialog_refs.clear();
        lead_st.phones.clear();
        write_schema_1(
            &path,
            &[(contact, card(5)), (lead, lead_st.clone())],
            &[(key.clone(), d.clone())],
        );
        let s = Store::open(&path).unwrap();
        assert_eq!(s.meta::<u32>(META_SCHEMA).unwrap(), Some(SCHEMA_VERSION));
        let snap = s.load_snapshot().unwrap();
        assert!(snap.bootstrapped);
        assert_eq!(snap.cards[&contact], card(5));
        assert_eq!(snap.cards[&lead], lead_st);
        assert_eq!(snap.dialogs[&key], d);
        assert_eq!(s.kommo_pair().unwrap().unwrap().refresh_token, "ref-1");
        let r = s.bases().unwrap();
        let by_chat = dialog_index_terms(&key, None)[0];
        assert_eq!(r.dialogs_with(by_chat).unwrap(), vec![key.clone()]);
        let t = dialog_terms(&key, None)[0];
        assert!(
            card_terms(&card(5)).contains(&t),
            "the contact's full reference names the dialog"
        );
        assert_eq!(r.cards_with(t).unwrap(), vec![contact]);
        assert_eq!(r.cards_of_contact(2).unwrap(), vec![lead]);
        drop(r);
        s.close().unwrap();
        // reopening a migrated db migrates nothing and keeps everything
        let s = Store::open(&path).unwrap();
        assert_eq!(s.load_snapshot().unwrap().cards.len(), 2);
    }

    #[test]
    fn unchanged_bases_are_not_rewritten_and_indexes_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let contact = CardId::new(CardKind::Contact, 2);
        let tx = s.begin_write().unwrap();
        assert!(bases::put_card(&tx, &contact, &card(5)).unwrap());
        assert!(
            !bases::put_card(&tx, &contact, &card(5)).unwrap(),
            "same bytes: no write"
        );
        let mut moved = card(5);
        moved.dialog_refs = vec![crate::core::model::DialogRef::ChatId("@zed".into())];
        moved.phones.clear();
        assert!(bases::put_card(&tx, &contact, &moved).unwrap());
        tx.commit().unwrap();
        let r = s.bases().unwrap();
        let old = dialog_terms(&DialogKey::new(1, "telegram", "@a"), None)[0];
        assert!(
            r.cards_with(old).unwrap().is_empty(),
            "the old term is gone"
        );
        let new = dialog_terms(&DialogKey::new(3, "telegram", "@zed"), None)[1];
        assert_eq!(r.cards_with(new).unwrap(), vec![contact]);
    }

    fn card(resp: u64) -> CardState {
        CardState {
            responsible: crate::core::model::KommoUserId(resp),
            changed_at: 1,
            flag: true,
            deleted: false,
            contacts: vec![2],
            dialog_refs: vec![
                crate::core::model::DialogRef::ChatId("@bob".into()),
                crate::core::model::DialogRef::Phone("7999".into()),
                crate::core::model::DialogRef::Full(DialogKey::new(1, "telegram", "@a")),
            ],
            phones: vec!["7999".into()],
            lead: Default::default(),
        }
    }

    #[test]
    fn versioned_bytes_round_trip_and_reject_unknown_formats() {
        let b = encode(&card(5));
        assert_eq!(b[0], FORMAT);
        let back: CardState = decode(|| "x".into(), &b).unwrap();
        assert_eq!(back, card(5));
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(decode::<CardState>(|| "x".into(), &bad).is_err());
        assert!(decode::<CardState>(|| "x".into(), &[]).is_err());
    }

    #[test]
    fn cycle_commit_and_confirmed_write_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let id = CardId::new(CardKind::Lead, 7);
        {
            let s = Store::open(&path).unwrap();
            let mut commit = CycleCommit::default();
            commit.settlement.cards.insert(id, card(1));
            commit.cycle.id = 1;
            commit.watermarks.chats = 42;
            s.commit_cycle(&commit).unwrap();
            let audit = AuditEntry {
                at: 5,
                cycle: 2,
                target: RecordId::Card(id),
                from: Some(Value::Card(KommoUserId(1))),
                to: Value::Card(KommoUserId(3)),
                rule: Rule::DialogChanged,
                source: RecordId::Dialog(DialogKey::new(1, "telegram", "@a")),
                source_changed_at: 4,
                detail: "d".into(),
                how: "write".into(),
            };
            let intent = Intent {
                cycle: 2,
                target: RecordId::Card(id),
                from: Some(Value::Card(KommoUserId(1))),
                to: Value::Card(KommoUserId(3)),
                audit: audit.clone(),
                base: Base::Card(card(3)),
            };
            s.record_intents(std::slice::from_ref(&intent)).unwrap();
            assert_eq!(s.intents().unwrap().len(), 1);
            s.confirm_write(&intent, &audit).unwrap();
            s.close().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let snap = s.load_snapshot().unwrap();
        assert!(snap.bootstrapped);
        assert_eq!(snap.cards[&id].responsible.0, 3);
        assert!(s.intents().unwrap().is_empty());
        assert_eq!(s.audit_len().unwrap(), 1);
        assert_eq!(
            s.meta::<Watermarks>(META_WATERMARKS)
                .unwrap()
                .unwrap()
                .chats,
            42
        );
        assert_eq!(s.next_cycle_id().unwrap(), 2);
    }

    /// Shadow mode's kept count of linked pairs: replaced by a recount, updated per dialog, and
    /// dropped by every other change of a base (a normal commit, a confirmed write), so that the
    /// next shadow cycle counts again from every base; a db with shadow rows but no count (one
    /// written before the count was kept) has none.
    #[test]
    fn shadow_pair_counts_are_kept_by_shadow_commits_only() {
        use crate::ports::{PairCount, PairCounts, ShadowCommit, ShadowTally};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let d = |i: u64| DialogKey::new(1, "telegram", &format!("@{i}"));
        let n = |pairs, agreed| PairCount { pairs, agreed };
        let shadow = |counts, pairs, agreed| CycleCommit::<staged::StagedCards> {
            shadow: Some(ShadowCommit {
                date: "2025-03-01".into(),
                pairs,
                agreed,
                counts,
                under: 9,
                ..ShadowCommit::default()
            }),
            ..CycleCommit::default()
        };
        let all = [d(1), d(2), d(3)];
        s.commit_cycle(&CycleCommit::default()).unwrap();
        assert_eq!(s.shadow_tally().unwrap(), None);
        let recount =
            PairCounts::Recount([(d(1), n(2, 1)), (d(2), n(1, 0)), (d(3), n(0, 0))].into());
        s.commit_cycle(&shadow(recount, 3, 1)).unwrap();
        let tally = |pairs, agreed| {
            Some(ShadowTally {
                pairs,
                agreed,
                under: 9,
            })
        };
        assert_eq!(s.shadow_tally().unwrap(), tally(3, 1));
        assert_eq!(
            s.shadow_pair_counts(all.iter()).unwrap(),
            [(d(1), n(2, 1)), (d(2), n(1, 0))].into()
        );
        let update = PairCounts::Update([(d(1), n(0, 0)), (d(3), n(1, 1))].into());
        s.commit_cycle(&shadow(update, 2, 1)).unwrap();
        assert_eq!(s.shadow_tally().unwrap(), tally(2, 1));
        assert_eq!(
            s.shadow_pair_counts(all.iter()).unwrap(),
            [(d(2), n(1, 0)), (d(3), n(1, 1))].into()
        );
        // a recount replaces every dialog's count
        let recount = PairCounts::Recount([(d(1), n(1, 0))].into());
        s.commit_cycle(&shadow(recount, 1, 0)).unwrap();
        assert_eq!(
            s.shadow_pair_counts(all.iter()).unwrap(),
            [(d(1), n(1, 0))].into()
        );
        // a normal cycle's commit drops the count, not the days
        s.commit_cycle(&CycleCommit::default()).unwrap();
        assert_eq!(s.shadow_tally().unwrap(), None);
        assert!(s.shadow_pair_counts(all.iter()).unwrap().is_empty());
        assert_eq!(s.shadow_days(1).unwrap()[0].pairs, 1);
        // so does a confirmed write
        s.commit_cycle(&shadow(PairCounts::Recount([(d(1), n(1, 0))].into()), 1, 0))
            .unwrap();
        assert!(s.shadow_tally().unwrap().is_some());
        let audit = AuditEntry {
            at: 5,
            cycle: 2,
            target: RecordId::Dialog(d(1)),
            from: None,
            to: Value::Dialog(crate::core::model::EmployeeId(3)),
            rule: Rule::CrmChanged,
            source: RecordId::Card(CardId::new(CardKind::Contact, 2)),
            source_changed_at: 4,
            detail: "d".into(),
            how: "write".into(),
        };
        let intent = Intent {
            cycle: 2,
            target: RecordId::Dialog(d(1)),
            from: None,
            to: Value::Dialog(crate::core::model::EmployeeId(3)),
            audit: audit.clone(),
            base: Base::Dialog(DialogState {
                responsible: Some(crate::core::model::EmployeeId(3)),
                changed_at: 5,
                last_time: 5,
                session: 5,
                closed: false,
                phone: None,
            }),
        };
        s.record_intents(std::slice::from_ref(&intent)).unwrap();
        s.confirm_write(&intent, &audit).unwrap();
        assert_eq!(s.shadow_tally().unwrap(), None);
    }

    #[test]
    fn a_second_writer_is_refused_but_a_reader_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let first = Store::open(&path).unwrap();
        let second = Store::open(&path);
        assert!(
            matches!(second, Err(StoreError::Locked(_))),
            "{:?}",
            second.err()
        );
        let reader = Store::open_read_only(&path).unwrap();
        assert!(!reader.load_snapshot().unwrap().bootstrapped);
        drop(first);
    }
}
