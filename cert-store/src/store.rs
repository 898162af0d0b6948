//! Storage of seals, licences, status entries, consents, show-codes and secrets behind one
//! trait. [`SqliteStore`] is the embedded default (WAL, `synchronous=FULL`: a committed write
//! survives a crash). The API is blocking; async callers run it on a blocking thread, except
//! [`Store::queue_licence`], which on a store with a writer thread of its own returns at once.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::id::Uscc;
use crate::jws::JwsAlg;
use crate::licence::{ConsentRecord, LicenceRecord, LicenceStatus, SealRecord, ShowCodeRecord};
use crate::licence_id::LicenceId;

/// The component name the store's migrations are recorded under, on both back ends.
pub const MIGRATION_COMPONENT: &str = "licences";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Database(String),
    /// A unique key is taken (for example a status-list index or a licence identifier).
    #[error("already exists: {0}")]
    Conflict(String),
    /// The holder already holds a licence of a type one may hold once: its identifier.
    #[error("the holder already holds licence {0}")]
    Held(String),
    /// A stored row could not be decoded (the database was edited by hand or is corrupt).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The row to change does not exist.
    #[error("not found: {0}")]
    NotFound(String),
}

impl From<storage::Error> for StoreError {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::Sqlite(e) => e.into(),
            storage::Error::Database(e) => e.into(),
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, msg)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(msg.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// Where a page of a holder's licences ends: the licences come valid first, then suspended,
/// then revoked (`rank` 0, 1, 2), each group newest first (`issued_at`, then `id`, descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderOrder {
    /// 0 valid, 1 suspended, 2 revoked.
    pub rank: u8,
    /// The last licence's issuance time.
    pub issued_at: i64,
    /// The last licence's identifier.
    pub id: String,
}

/// The statuses in the order a holder's licences are listed.
pub const HOLDER_ORDER: [LicenceStatus; 3] = [
    LicenceStatus::Valid,
    LicenceStatus::Suspended,
    LicenceStatus::Revoked,
];

impl HolderOrder {
    /// The position of `licence` in the order.
    pub fn of(licence: &LicenceRecord) -> HolderOrder {
        HolderOrder {
            rank: HOLDER_ORDER
                .iter()
                .position(|s| *s == licence.status)
                .unwrap_or(2) as u8,
            issued_at: licence.issued_at,
            id: licence.id.to_string(),
        }
    }
}

/// What the licence and seal services need from storage.
pub trait Store: Send + Sync {
    /// Stores a named secret blob (already encrypted by the caller) if none of that name
    /// exists; returns the blob in force (an existing one wins, so two nodes agree).
    fn put_secret_once(&self, name: &str, blob: &[u8]) -> Result<Vec<u8>>;
    /// A named secret blob.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Stores a new seal.
    fn insert_seal(&self, seal: &SealRecord) -> Result<()>;
    /// A seal by id.
    fn seal(&self, id: &str) -> Result<Option<SealRecord>>;
    /// Up to `limit` seals of one owner, newest first, after the seal `after` names
    /// (`(created_at, id)` of the last one of the previous page).
    fn seals(
        &self,
        owner: &Uscc,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<SealRecord>>;
    /// Marks a seal revoked; false when it was already revoked.
    fn revoke_seal(&self, id: &str, at: i64, reason: &str) -> Result<bool>;
    /// Adds a foreign seal CA to the trust list.
    fn insert_trusted_ca(&self, ca: &crate::licence::TrustedSealCa) -> Result<()>;
    /// Marks a trusted seal CA untrusted from `at` (kept, for history); false if unknown or
    /// already removed.
    fn remove_trusted_ca(&self, id: &str, at: i64) -> Result<bool>;
    /// The trust list, removed entries included.
    fn trusted_cas(&self) -> Result<Vec<crate::licence::TrustedSealCa>>;

    /// True when several processes share the store, so that counts kept in one process's
    /// memory would be wrong.
    fn is_shared(&self) -> bool {
        false
    }

    /// Stores a new licence. `Conflict` when its id or status-list slot is taken. With
    /// `held_at`, the holder may hold one licence of the type at a time: `Held` names the
    /// licence it holds (valid or suspended, not expired at `held_at`), checked and inserted
    /// atomically, so two racing issuances cannot both succeed.
    fn insert_licence(&self, licence: &LicenceRecord, held_at: Option<i64>) -> Result<()>;
    /// Whether [`Store::queue_licence`] hands the insert to a writer thread of the store's
    /// own and returns at once; when not, it inserts before it returns, and is called where
    /// blocking is allowed.
    fn queues_inserts(&self) -> bool {
        false
    }
    /// Inserts a licence as [`Store::insert_licence`] does and calls `done` with the outcome:
    /// on a store that [queues inserts](Store::queues_inserts), later and from its writer
    /// thread (`done` must not block); otherwise before returning.
    fn queue_licence(&self, licence: LicenceRecord, held_at: Option<i64>, done: Inserted) {
        done(self.insert_licence(&licence, held_at));
    }
    /// Stores `new` and marks `old` revoked and replaced by it, in one transaction.
    fn insert_renewal(&self, old: &str, new: &LicenceRecord, at: i64) -> Result<()>;
    /// A licence by id.
    fn licence(&self, id: &str) -> Result<Option<LicenceRecord>>;
    /// Up to `limit` licences of a holder and type after `after`, in [`HolderOrder`]: valid
    /// ones first, then suspended, then revoked, each newest first.
    /// Only `issuer`'s licences when one is named.
    fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
        issuer: Option<&Uscc>,
        after: Option<&HolderOrder>,
        limit: u32,
    ) -> Result<Vec<LicenceRecord>>;
    /// Changes a licence's status.
    /// Changes a licence's status from `from` to `to`, only if it is still `from` and not
    /// renewed: two racing changes cannot both succeed (`Conflict` for the loser).
    fn set_status(
        &self,
        id: &str,
        from: LicenceStatus,
        to: LicenceStatus,
        reason: Option<&str>,
    ) -> Result<()>;
    /// `(index, status)` of every licence in a status list.
    fn status_entries(&self, list: u32) -> Result<Vec<(u32, LicenceStatus)>>;
    /// Number of licences entered in a status list.
    fn status_list_len(&self, list: u32) -> Result<u64>;

    /// Stores a consent.
    fn insert_consent(&self, consent: &ConsentRecord) -> Result<()>;
    /// A consent by id.
    fn consent(&self, id: &str) -> Result<Option<ConsentRecord>>;
    /// Revokes a consent; false when it does not exist or was already revoked.
    fn revoke_consent(&self, id: &str, at: i64) -> Result<bool>;

    /// Stores a show-code.
    fn insert_show_code(&self, code: &ShowCodeRecord) -> Result<()>;
    /// A show-code by hash, redeemed or not (looking does not redeem it).
    fn show_code(&self, code_sha256: &str) -> Result<Option<ShowCodeRecord>>;
    /// Deletes the show-codes that expired before `expired_before`, redeemed or not; returns
    /// how many.
    fn purge_show_codes(&self, expired_before: i64) -> Result<u64>;
    /// Redeems a show-code once: returns it when it existed, was unexpired and unredeemed,
    /// and marks it redeemed in the same statement, so a second redemption gets `None`.
    fn redeem_show_code(
        &self,
        code_sha256: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<Option<ShowCodeRecord>>;
}

/// What a queued licence insert calls with its outcome (see [`Store::queue_licence`]).
pub type Inserted = Box<dyn FnOnce(Result<()>) + Send>;

/// The embedded SQLite store.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Licences waiting for their group commit, which the writer thread makes.
    issuing: Arc<IssuingQueue>,
    /// The writer thread: inserts every waiting licence in one transaction, one commit.
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl Drop for SqliteStore {
    /// Lets the writer commit what waits, and waits for it to end.
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.issuing.state.lock() {
            waiting.closed = true;
            self.issuing.ready.notify_one();
        }
        if let Some(writer) = self.writer.take()
            && writer.thread().id() != std::thread::current().id()
        {
            // A writer that panicked has already failed its waiters (their `done` dropped).
            let _ = writer.join();
        }
    }
}

/// Licences waiting for a group commit, and the writer's wake-up.
#[derive(Default)]
struct IssuingQueue {
    state: Mutex<Waiting>,
    ready: Condvar,
}

#[derive(Default)]
struct Waiting {
    licences: Vec<Issuing>,
    /// The store is being dropped: the writer commits what waits and ends.
    closed: bool,
}

/// A licence waiting for its group commit, and where its outcome goes.
struct Issuing {
    licence: LicenceRecord,
    held_at: Option<i64>,
    done: Inserted,
}

/// The tables of every store, one migration an entry, with `{BLOB}` and `{INT}` standing for
/// the backend's byte-string and 64-bit integer types (SQLite: BLOB, INTEGER; PostgreSQL:
/// BYTEA, BIGINT), so that both backends create the same tables.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE secrets (name TEXT PRIMARY KEY, blob {BLOB} NOT NULL);
CREATE TABLE seals (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, seal_type TEXT NOT NULL, name TEXT NOT NULL,
    alg TEXT NOT NULL, certificate_pem TEXT NOT NULL, encrypted_key {BLOB} NOT NULL,
    picture_sha256 TEXT, picture {BLOB}, created_at {INT} NOT NULL, not_after {INT} NOT NULL,
    revoked_at {INT}, revocation_reason TEXT
);
CREATE INDEX seals_owner ON seals(owner);
CREATE TABLE serials (issuer TEXT PRIMARY KEY, last {INT} NOT NULL);
CREATE TABLE licences (
    id TEXT PRIMARY KEY, type_code TEXT NOT NULL, issuer TEXT NOT NULL, holder TEXT NOT NULL,
    seal_id TEXT NOT NULL REFERENCES seals(id), sd_jwt TEXT NOT NULL, fields TEXT NOT NULL,
    status TEXT NOT NULL, status_reason TEXT, status_list {INT} NOT NULL,
    status_index {INT} NOT NULL, issued_at {INT} NOT NULL, not_before {INT} NOT NULL,
    expires_at {INT} NOT NULL, replaces TEXT, replaced_by TEXT,
    UNIQUE (status_list, status_index)
);
CREATE INDEX licences_holder ON licences(holder, type_code);
CREATE TABLE consents (
    id TEXT PRIMARY KEY, holder TEXT NOT NULL, department TEXT NOT NULL,
    licence_types TEXT NOT NULL, purpose TEXT NOT NULL, created_by TEXT NOT NULL,
    expires_at {INT} NOT NULL, revoked_at {INT}
);
CREATE TABLE show_codes (
    code_sha256 TEXT PRIMARY KEY, licence_id TEXT NOT NULL, created_by TEXT NOT NULL,
    expires_at {INT} NOT NULL, redeemed_at {INT}, redeemed_by TEXT
);
"#,
    r#"
CREATE TABLE trusted_seal_cas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL,
    certificate_pem TEXT NOT NULL, added_at {INT} NOT NULL, removed_at {INT}
);
"#,
    // The owner's registered name, which a seal's name must start with; the order a holder's
    // licences are paged in.
    r#"
ALTER TABLE seals ADD COLUMN owner_name TEXT;
CREATE INDEX licences_holder_page ON licences(holder, type_code, status, issued_at, id);
CREATE INDEX seals_owner_page ON seals(owner, created_at, id);
"#,
    // A holder's licences of a type are found by the paging index, whose first columns are
    // these: one index fewer to write with every licence.
    r#"
DROP INDEX licences_holder;
"#,
    // A licence's JWS header (its seal certificate chain in `x5c`: most of an SD-JWT's bytes)
    // is the same for every licence one seal certificate signs: it is kept once, under its
    // SHA-256, and a licence row keeps the rest. Rows written before keep the whole SD-JWT
    // and no header.
    r#"
CREATE TABLE jws_headers (sha256 {BLOB} PRIMARY KEY, header TEXT NOT NULL);
ALTER TABLE licences ADD COLUMN header_sha256 {BLOB} REFERENCES jws_headers(sha256);
"#,
    // Show-codes are deleted some time after they expire (`Store::purge_show_codes`), found
    // by their expiry.
    r#"
CREATE INDEX show_codes_expiry ON show_codes(expires_at);
"#,
];

/// The migrations, with the back end's type names (`BLOB`/`INTEGER` on SQLite, `BYTEA`/`BIGINT`
/// on PostgreSQL).
pub fn migrations(blob: &str, int: &str) -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|m| m.replace("{BLOB}", blob).replace("{INT}", int))
        .collect()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints copy the WAL's pages into the database after a commit; less often, the
        // index pages that many commits rewrite are copied once.
        conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let migrations = migrations("BLOB", "INTEGER");
        let migrations: Vec<&str> = migrations.iter().map(String::as_str).collect();
        // Files made before versions were recorded per component counted them in user_version.
        storage::sqlite::migrate(&mut conn, MIGRATION_COMPONENT, &migrations, |c| {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
        })?;
        let conn = Arc::new(Mutex::new(conn));
        let issuing = Arc::new(IssuingQueue::default());
        let writer = {
            let (conn, issuing) = (conn.clone(), issuing.clone());
            std::thread::Builder::new()
                .name("licence-writer".into())
                .spawn(move || Self::write_licences(&conn, &issuing))
                .map_err(|e| {
                    StoreError::Database(format!("cannot start the licence writer: {e}"))
                })?
        };
        Ok(SqliteStore {
            conn,
            issuing,
            writer: Some(writer),
        })
    }

    /// The writer thread: waits for licences, then inserts every one waiting in one
    /// transaction and calls each one's `done`, after the connection is free again. Licences
    /// that come during a commit wait for the next, so a commit takes everyone who came
    /// during the previous one. Ends when the store is dropped and nothing waits.
    fn write_licences(conn: &Mutex<Connection>, issuing: &IssuingQueue) {
        loop {
            let batch = {
                let Ok(mut waiting) = issuing.state.lock() else {
                    return;
                };
                loop {
                    if !waiting.licences.is_empty() {
                        // On a busy core, let the issuances being prepared join this batch.
                        drop(waiting);
                        storage::batch::let_others_add(storage::batch::ROUNDS, || {
                            issuing.state.lock().map_or(0, |w| w.licences.len())
                        });
                        waiting = match issuing.state.lock() {
                            Ok(w) => w,
                            Err(_) => return,
                        };
                        break std::mem::take(&mut waiting.licences);
                    }
                    if waiting.closed {
                        return;
                    }
                    waiting = match issuing.ready.wait(waiting) {
                        Ok(w) => w,
                        Err(_) => return,
                    };
                }
            };
            let outcomes = match conn.lock() {
                Ok(mut conn) => Self::commit_issuing(&mut conn, &batch),
                Err(_) => Vec::new(),
            };
            let mut outcomes = outcomes.into_iter();
            for w in batch {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(StoreError::Database("connection lock poisoned".into()))
                });
                (w.done)(outcome);
            }
        }
    }

    /// Inserts every waiting licence in one transaction, one commit, and returns the
    /// outcomes, one a licence, in order. One refused (a taken id, a holder who already holds
    /// one) leaves the others in: a statement that breaks a constraint undoes only itself, the
    /// holder check writes nothing, and fields that do not serialise are refused before any
    /// statement. Any other failure may have ended the transaction, so it fails the batch.
    fn commit_issuing(conn: &mut Connection, batch: &[Issuing]) -> Vec<Result<()>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for w in batch {
                let outcome = insert_licence_in(&tx, &w.licence, w.held_at);
                if let Err(e) = &outcome
                    && !matches!(
                        e,
                        StoreError::Conflict(_) | StoreError::Held(_) | StoreError::Corrupt(_)
                    )
                {
                    return Err(StoreError::Database(e.to_string()));
                }
                outcomes.push(outcome);
            }
            tx.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => outcomes,
            Err(e) => {
                let e = e.to_string();
                batch
                    .iter()
                    .map(|_| Err(StoreError::Database(e.clone())))
                    .collect()
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Database("connection lock poisoned".into()))?;
        f(&mut conn)
    }
}

const SEAL_COLUMNS: &str = "id, owner, seal_type, name, alg, certificate_pem, encrypted_key, \
    picture_sha256, picture, created_at, not_after, revoked_at, revocation_reason, owner_name";
const LICENCE_COLUMNS: &str = "id, type_code, issuer, holder, seal_id, sd_jwt, fields, status, \
    status_reason, status_list, status_index, issued_at, not_before, expires_at, replaces, \
    replaced_by, header_sha256";
/// The licence columns a read selects: the first sixteen of [`LICENCE_COLUMNS`], in its order,
/// with the SD-JWT put back together from its header in `jws_headers` and the rest in the row
/// (whole in a row without a header). Both back ends read with it.
pub(crate) const LICENCE_SELECT: &str = "id, type_code, issuer, holder, seal_id, \
    COALESCE((SELECT h.header FROM jws_headers h WHERE h.sha256 = licences.header_sha256) \
    || '.' || licences.sd_jwt, licences.sd_jwt), fields, status, status_reason, status_list, \
    status_index, issued_at, not_before, expires_at, replaces, replaced_by";

/// An SD-JWT as the stores keep it: its JWS header with the header's SHA-256 (the key it is
/// kept once under), and the rest after the header's dot. A credential without a header (no
/// dot, or nothing before it) is kept whole.
pub(crate) struct StoredSdJwt<'a> {
    /// The header and its SHA-256.
    pub(crate) header: Option<(&'a str, [u8; 32])>,
    /// What the licence row keeps.
    pub(crate) rest: &'a str,
}

impl<'a> StoredSdJwt<'a> {
    pub(crate) fn split(sd_jwt: &'a str) -> Self {
        match sd_jwt.split_once('.') {
            Some((header, rest)) if !header.is_empty() => StoredSdJwt {
                header: Some((header, openssl::sha::sha256(header.as_bytes()))),
                rest,
            },
            _ => StoredSdJwt {
                header: None,
                rest: sd_jwt,
            },
        }
    }

    /// The header's key, when it has one.
    pub(crate) fn header_sha256(&self) -> Option<&[u8]> {
        self.header.as_ref().map(|(_, sha)| &sha[..])
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("{what}: {e}").into(),
    )
}

fn uscc(row: &Row<'_>, i: usize) -> rusqlite::Result<Uscc> {
    parsed(row, i, "USCC")
}

/// Column `i` parsed as a `T` (an identifier), a corrupt row when it is not one.
fn parsed<T: std::str::FromStr>(row: &Row<'_>, i: usize, what: &str) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.get(i)?;
    s.parse().map_err(|e| corrupt(what, e))
}

/// Like [`parsed`], for a column that may be NULL.
fn parsed_opt<T: std::str::FromStr>(
    row: &Row<'_>,
    i: usize,
    what: &str,
) -> rusqlite::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let s: Option<String> = row.get(i)?;
    s.map(|s| s.parse().map_err(|e| corrupt(what, e)))
        .transpose()
}

fn seal_row(row: &Row<'_>) -> rusqlite::Result<SealRecord> {
    let alg: String = row.get(4)?;
    Ok(SealRecord {
        id: row.get(0)?,
        owner: uscc(row, 1)?,
        seal_type: row.get(2)?,
        name: row.get(3)?,
        alg: JwsAlg::from_name(&alg).ok_or_else(|| corrupt("alg", &alg))?,
        certificate_pem: row.get(5)?,
        encrypted_key: row.get(6)?,
        picture_sha256: row.get(7)?,
        picture: row.get(8)?,
        created_at: row.get(9)?,
        not_after: row.get(10)?,
        revoked_at: row.get(11)?,
        revocation_reason: row.get(12)?,
        owner_name: row.get(13)?,
    })
}

fn licence_row(row: &Row<'_>) -> rusqlite::Result<LicenceRecord> {
    let fields: String = row.get(6)?;
    let status: String = row.get(7)?;
    Ok(LicenceRecord {
        id: parsed(row, 0, "licence id")?,
        type_code: parsed(row, 1, "licence type")?,
        issuer: uscc(row, 2)?,
        holder: parsed(row, 3, "holder")?,
        seal_id: row.get(4)?,
        sd_jwt: row.get(5)?,
        fields: serde_json::from_str(&fields).map_err(|e| corrupt("fields", e))?,
        status: LicenceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        status_reason: row.get(8)?,
        status_list: row.get(9)?,
        status_index: row.get(10)?,
        issued_at: row.get(11)?,
        not_before: row.get(12)?,
        expires_at: row.get(13)?,
        replaces: parsed_opt(row, 14, "licence id")?,
        replaced_by: parsed_opt(row, 15, "licence id")?,
    })
}

fn consent_row(row: &Row<'_>) -> rusqlite::Result<ConsentRecord> {
    let types: String = row.get(3)?;
    Ok(ConsentRecord {
        id: row.get(0)?,
        holder: row.get(1)?,
        department: uscc(row, 2)?,
        licence_types: serde_json::from_str(&types).map_err(|e| corrupt("licence_types", e))?,
        purpose: row.get(4)?,
        created_by: uscc(row, 5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
    })
}

/// Inserts a licence, first refusing it (with the licence held) when `held_at` is given and
/// the holder holds one of its type; the caller runs both in one transaction.
fn insert_licence_in(conn: &Connection, l: &LicenceRecord, held_at: Option<i64>) -> Result<()> {
    if let Some(now) = held_at {
        let held: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM licences WHERE holder = ?1 AND type_code = ?2
                 AND status IN ('valid', 'suspended') AND expires_at > ?3 LIMIT 1",
            )?
            .query_row(params![l.holder.as_str(), l.type_code.as_str(), now], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = held {
            return Err(StoreError::Held(id));
        }
    }
    let fields =
        serde_json::to_string(&l.fields).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let stored = StoredSdJwt::split(&l.sd_jwt);
    if let Some((header, sha)) = &stored.header {
        conn.prepare_cached(
            "INSERT INTO jws_headers (sha256, header) VALUES (?1, ?2) ON CONFLICT (sha256) DO NOTHING",
        )?
        .execute(params![&sha[..], header])?;
    }
    conn.prepare_cached(
        &format!("INSERT INTO licences ({LICENCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
    )?
    .execute(
        params![
            l.id.as_str(), l.type_code.as_str(), l.issuer.as_str(), l.holder.as_str(), l.seal_id,
            stored.rest, fields, l.status.as_str(), l.status_reason, l.status_list, l.status_index,
            l.issued_at, l.not_before, l.expires_at, l.replaces.as_ref().map(LicenceId::as_str),
            l.replaced_by.as_ref().map(LicenceId::as_str), stored.header_sha256()
        ],
    )?;
    Ok(())
}

/// The reason a renewed licence is revoked with (both stores write the same).
pub(crate) fn renewal_reason(new: &LicenceRecord, at: i64) -> String {
    format!("renewed as {} at {at}", new.id)
}

/// A renewal's revocation of the old licence changed `rows` rows: one, or the old licence is
/// unknown, no longer valid or already renewed.
pub(crate) fn one_renewed(rows: u64, old: &str) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "{old} is unknown or already renewed"
        )))
    }
}

impl Store for SqliteStore {
    fn put_secret_once(&self, name: &str, blob: &[u8]) -> Result<Vec<u8>> {
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (name, blob) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
                params![name, blob],
            )?;
            Ok(
                c.query_row("SELECT blob FROM secrets WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?,
            )
        })
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT blob FROM secrets WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    fn insert_seal(&self, s: &SealRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO seals ({SEAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
                params![
                    s.id, s.owner.as_str(), s.seal_type, s.name, s.alg.name(), s.certificate_pem,
                    s.encrypted_key, s.picture_sha256, s.picture, s.created_at, s.not_after,
                    s.revoked_at, s.revocation_reason, s.owner_name
                ],
            )?;
            Ok(())
        })
    }

    fn seal(&self, id: &str) -> Result<Option<SealRecord>> {
        self.with(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {SEAL_COLUMNS} FROM seals WHERE id = ?1"))?
                    .query_row([id], seal_row)
                    .optional()?,
            )
        })
    }

    fn seals(
        &self,
        owner: &Uscc,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<SealRecord>> {
        let (t, id) = after.unwrap_or((i64::MAX, ""));
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SEAL_COLUMNS} FROM seals WHERE owner = ?1 AND (created_at, id) < (?2, ?3)
                 ORDER BY created_at DESC, id DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![owner.as_str(), t, id, limit], seal_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn insert_trusted_ca(&self, ca: &crate::licence::TrustedSealCa) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO trusted_seal_cas (id, name, region, certificate_pem, added_at, removed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ca.id, ca.name, ca.region, ca.certificate_pem, ca.added_at, ca.removed_at],
            )?;
            Ok(())
        })
    }

    fn remove_trusted_ca(&self, id: &str, at: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE trusted_seal_cas SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL",
                params![id, at],
            )? == 1)
        })
    }

    fn trusted_cas(&self) -> Result<Vec<crate::licence::TrustedSealCa>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, region, certificate_pem, added_at, removed_at
                 FROM trusted_seal_cas ORDER BY added_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(crate::licence::TrustedSealCa {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    region: r.get(2)?,
                    certificate_pem: r.get(3)?,
                    added_at: r.get(4)?,
                    removed_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn revoke_seal(&self, id: &str, at: i64, reason: &str) -> Result<bool> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE seals SET revoked_at = ?2, revocation_reason = ?3 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at, reason],
            )?;
            Ok(n == 1)
        })
    }

    /// Group commit: the licence joins the writer thread's queue (see
    /// [`SqliteStore::queue_licence`]) and this call waits for its outcome.
    fn insert_licence(&self, l: &LicenceRecord, held_at: Option<i64>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.queue_licence(
            l.clone(),
            held_at,
            Box::new(move |outcome| {
                // The receiver waits below; nothing is lost if it has gone.
                let _ = tx.send(outcome);
            }),
        );
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the licence writer has stopped".into(),
            ))
        })
    }

    fn queues_inserts(&self) -> bool {
        true
    }

    /// The licence joins the queue of the writer thread, which makes one transaction and one
    /// commit of every licence waiting, then calls `done` on its own thread.
    fn queue_licence(&self, licence: LicenceRecord, held_at: Option<i64>, done: Inserted) {
        match self.issuing.state.lock() {
            Ok(mut waiting) => {
                waiting.licences.push(Issuing {
                    licence,
                    held_at,
                    done,
                });
                self.issuing.ready.notify_one();
            }
            Err(_) => done(Err(StoreError::Database(
                "issuance queue lock poisoned".into(),
            ))),
        }
    }

    fn insert_renewal(&self, old: &str, new: &LicenceRecord, at: i64) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            insert_licence_in(&tx, new, None)?;
            let n = tx.execute(
                "UPDATE licences SET status = 'revoked', status_reason = ?3, replaced_by = ?2
                 WHERE id = ?1 AND replaced_by IS NULL AND status = 'valid'",
                params![old, new.id.as_str(), renewal_reason(new, at)],
            )?;
            one_renewed(n as u64, old)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn licence(&self, id: &str) -> Result<Option<LicenceRecord>> {
        self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {LICENCE_SELECT} FROM licences WHERE id = ?1"
            ))?
            .query_row([id], licence_row)
            .optional()?)
        })
    }

    fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
        issuer: Option<&Uscc>,
        after: Option<&HolderOrder>,
        limit: u32,
    ) -> Result<Vec<LicenceRecord>> {
        let issuer = issuer.map(Uscc::as_str);
        self.with(|c| {
            let mut out = Vec::new();
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LICENCE_SELECT} FROM licences
                 WHERE holder = ?1 AND type_code = ?2 AND status = ?3 AND (issued_at, id) < (?4, ?5)
                 AND (?7 IS NULL OR issuer = ?7)
                 ORDER BY issued_at DESC, id DESC LIMIT ?6"
            ))?;
            for (rank, status) in HOLDER_ORDER.iter().enumerate() {
                let (t, id) = match after {
                    Some(a) if usize::from(a.rank) > rank => continue,
                    Some(a) if usize::from(a.rank) == rank => (a.issued_at, a.id.as_str()),
                    _ => (i64::MAX, ""),
                };
                let left = limit as usize - out.len();
                if left == 0 {
                    break;
                }
                let rows = stmt.query_map(
                    params![
                        holder,
                        type_code,
                        status.as_str(),
                        t,
                        id,
                        left as i64,
                        issuer
                    ],
                    licence_row,
                )?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
    }

    fn set_status(
        &self,
        id: &str,
        from: LicenceStatus,
        to: LicenceStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE licences SET status = ?3, status_reason = ?4
                 WHERE id = ?1 AND status = ?2 AND replaced_by IS NULL",
                params![id, from.as_str(), to.as_str(), reason],
            )?;
            if n == 0 {
                let exists: Option<i64> = c
                    .query_row("SELECT 1 FROM licences WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?;
                return Err(match exists {
                    Some(_) => StoreError::Conflict(format!("{id} changed meanwhile")),
                    None => StoreError::NotFound(id.to_owned()),
                });
            }
            Ok(())
        })
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u32, LicenceStatus)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT status_index, status FROM licences WHERE status_list = ?1")?;
            let rows = stmt.query_map([list], |r| {
                let status: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    LicenceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn status_list_len(&self, list: u32) -> Result<u64> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM licences WHERE status_list = ?1",
                [list],
                |r| r.get(0),
            )?)
        })
    }

    fn insert_consent(&self, k: &ConsentRecord) -> Result<()> {
        let types = serde_json::to_string(&k.licence_types)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO consents (id, holder, department, licence_types, purpose, created_by, expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    k.id, k.holder, k.department.as_str(), types, k.purpose,
                    k.created_by.as_str(), k.expires_at, k.revoked_at
                ],
            )?;
            Ok(())
        })
    }

    fn consent(&self, id: &str) -> Result<Option<ConsentRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT id, holder, department, licence_types, purpose, created_by, expires_at, revoked_at
                 FROM consents WHERE id = ?1",
                [id],
                consent_row,
            )
            .optional()?)
        })
    }

    fn revoke_consent(&self, id: &str, at: i64) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE consents SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )? == 1)
        })
    }

    fn insert_show_code(&self, s: &ShowCodeRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO show_codes (code_sha256, licence_id, created_by, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![s.code_sha256, s.licence_id, s.created_by.as_str(), s.expires_at],
            )?;
            Ok(())
        })
    }

    fn purge_show_codes(&self, expired_before: i64) -> Result<u64> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM show_codes WHERE expires_at < ?1",
                [expired_before],
            )? as u64)
        })
    }

    fn redeem_show_code(
        &self,
        code_sha256: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<Option<ShowCodeRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                "UPDATE show_codes SET redeemed_at = ?3, redeemed_by = ?2
                 WHERE code_sha256 = ?1 AND redeemed_at IS NULL AND expires_at > ?3
                 RETURNING code_sha256, licence_id, created_by, expires_at, redeemed_at, redeemed_by",
                params![code_sha256, by.as_str(), now],
                show_code_row,
            )
            .optional()?)
        })
    }

    fn show_code(&self, code_sha256: &str) -> Result<Option<ShowCodeRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT code_sha256, licence_id, created_by, expires_at, redeemed_at, redeemed_by
                 FROM show_codes WHERE code_sha256 = ?1",
                [code_sha256],
                show_code_row,
            )
            .optional()?)
        })
    }
}

fn show_code_row(r: &Row<'_>) -> rusqlite::Result<ShowCodeRecord> {
    let redeemed_by: Option<String> = r.get(5)?;
    Ok(ShowCodeRecord {
        code_sha256: r.get(0)?,
        licence_id: r.get(1)?,
        created_by: uscc(r, 2)?,
        expires_at: r.get(3)?,
        redeemed_at: r.get(4)?,
        redeemed_by: redeemed_by
            .map(|s| s.parse().map_err(|e| corrupt("USCC", e)))
            .transpose()?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MARKET: &str = "11110105MB0000002F";
    const APPROVAL: &str = "11110105MB0000001C";

    pub(crate) fn seal() -> SealRecord {
        SealRecord {
            id: "seal-1".into(),
            owner: MARKET.parse().unwrap(),
            seal_type: "公章".into(),
            name: "某区市场监督管理局".into(),
            alg: JwsAlg::Sm2Sm3,
            certificate_pem: "PEM".into(),
            encrypted_key: vec![1, 2, 3],
            picture_sha256: None,
            picture: None,
            created_at: 100,
            not_after: 1000,
            revoked_at: None,
            revocation_reason: None,
            owner_name: Some("某区市场监督管理局".into()),
        }
    }

    /// The licence type of these tests.
    const T: &str = "11100000MB0000100D001";

    /// The full identifier of the test licence with serial `name`.
    pub(crate) fn lid(name: &str) -> String {
        LicenceId::new(&T.parse().unwrap(), &MARKET.parse().unwrap(), name, 1)
            .unwrap()
            .to_string()
    }

    pub(crate) fn licence(id: &str, index: u32) -> LicenceRecord {
        LicenceRecord {
            id: lid(id).parse().unwrap(),
            type_code: T.parse().unwrap(),
            issuer: MARKET.parse().unwrap(),
            holder: "91110108551385082Q".parse().unwrap(),
            seal_id: "seal-1".into(),
            sd_jwt: "jwt~".into(),
            fields: json!({"name": "小米"}).as_object().unwrap().clone(),
            status: LicenceStatus::Valid,
            status_reason: None,
            status_list: 0,
            status_index: index,
            issued_at: 100,
            not_before: 100,
            expires_at: 200,
            replaces: None,
            replaced_by: None,
        }
    }

    #[test]
    fn concurrent_issuances_share_commits_and_keep_their_own_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("certgate.db")).unwrap();
        s.insert_seal(&seal()).unwrap();
        let (ok, held, taken) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        std::thread::scope(|scope| {
            for t in 0..8u32 {
                let (s, ok, held, taken) = (&s, &ok, &held, &taken);
                scope.spawn(move || {
                    for i in 0..25u32 {
                        // Every thread also tries the one licence all of them want (the same
                        // id), and one a holder may hold once.
                        let mut l = licence(&format!("T{t}N{i}"), 1000 + t * 100 + i);
                        let once = i == 0;
                        if i == 1 {
                            l = licence("SAME", 5000 + t);
                        }
                        match s.insert_licence(&l, once.then_some(150)) {
                            Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                            Err(StoreError::Held(_)) => held.fetch_add(1, Ordering::SeqCst),
                            Err(StoreError::Conflict(_)) => taken.fetch_add(1, Ordering::SeqCst),
                            Err(e) => panic!("{e}"),
                        };
                    }
                });
            }
        });
        // Seven of the eight of the same id find it taken; every other one is in, or refused
        // as held (one per holder, and the holder holds the others).
        assert_eq!(taken.load(Ordering::SeqCst), 7);
        assert_eq!(
            ok.load(Ordering::SeqCst) + held.load(Ordering::SeqCst),
            8 * 25 - 7
        );
        assert!(
            held.load(Ordering::SeqCst) >= 7,
            "the once-only ones see the others"
        );
        let stored = (0..8)
            .flat_map(|t| (0..25).map(move |i| (t, i)))
            .filter(|(t, i)| s.licence(&lid(&format!("T{t}N{i}"))).unwrap().is_some())
            .count();
        assert!(s.licence(&lid("SAME")).unwrap().is_some());
        assert_eq!(stored + 1, ok.load(Ordering::SeqCst));
    }

    #[test]
    fn queued_licences_are_committed_before_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certgate.db");
        let answered = Arc::new(AtomicUsize::new(0));
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_seal(&seal()).unwrap();
            assert!(s.queues_inserts());
            for i in 0..100u32 {
                let answered = answered.clone();
                s.queue_licence(
                    licence(&format!("Q{i}"), 2000 + i),
                    None,
                    Box::new(move |outcome| {
                        outcome.unwrap();
                        answered.fetch_add(1, Ordering::SeqCst);
                    }),
                );
            }
            // Dropped at once: the writer commits what waits, answers, and ends.
        }
        assert_eq!(answered.load(Ordering::SeqCst), 100);
        let s = SqliteStore::open(&path).unwrap();
        for i in 0..100u32 {
            assert!(s.licence(&lid(&format!("Q{i}"))).unwrap().is_some(), "Q{i}");
        }
    }

    #[test]
    fn seals_licences_and_statuses_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certgate.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_seal(&seal()).unwrap();
            s.insert_licence(&licence("L1", 7), None).unwrap();
            assert!(matches!(
                s.insert_licence(&licence("L2", 7), None),
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                s.insert_licence(&licence("L1", 8), None),
                Err(StoreError::Conflict(_))
            ));
            s.set_status(
                &lid("L1"),
                LicenceStatus::Valid,
                LicenceStatus::Suspended,
                Some("inspection"),
            )
            .unwrap();
            assert!(matches!(
                s.set_status("nope", LicenceStatus::Valid, LicenceStatus::Suspended, None),
                Err(StoreError::NotFound(_))
            ));
            // A change that lost a race (the licence is no longer valid) is refused.
            assert!(matches!(
                s.set_status(
                    &lid("L1"),
                    LicenceStatus::Valid,
                    LicenceStatus::Revoked,
                    None
                ),
                Err(StoreError::Conflict(_))
            ));
        }
        // Reopened: everything committed is there, and migrations are not applied twice.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.seal("seal-1").unwrap().unwrap(), seal());
        let l = s.licence(&lid("L1")).unwrap().unwrap();
        assert_eq!(l.status, LicenceStatus::Suspended);
        assert_eq!(l.status_reason.as_deref(), Some("inspection"));
        assert_eq!(
            s.status_entries(0).unwrap(),
            vec![(7, LicenceStatus::Suspended)]
        );
        assert_eq!(
            s.licences_by_holder("91110108551385082Q", T, None, None, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(s.revoke_seal("seal-1", 5, "key lost").unwrap());
        assert!(!s.revoke_seal("seal-1", 6, "again").unwrap());
    }

    fn a_holders_licences_page_valid_first_then_newest_first(s: &dyn Store) {
        s.insert_seal(&seal()).unwrap();
        // 7 licences: issued at 100..106; 1 and 4 suspended, 2 revoked.
        for i in 0..7u32 {
            let mut l = licence(&format!("L{i}"), i);
            l.issued_at = 100 + i64::from(i);
            s.insert_licence(&l, None).unwrap();
        }
        s.set_status(
            &lid("L1"),
            LicenceStatus::Valid,
            LicenceStatus::Suspended,
            None,
        )
        .unwrap();
        s.set_status(
            &lid("L4"),
            LicenceStatus::Valid,
            LicenceStatus::Suspended,
            None,
        )
        .unwrap();
        s.set_status(
            &lid("L2"),
            LicenceStatus::Valid,
            LicenceStatus::Revoked,
            None,
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut after: Option<HolderOrder> = None;
        loop {
            let page = s
                .licences_by_holder("91110108551385082Q", T, None, after.as_ref(), 2)
                .unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(HolderOrder::of(last));
            seen.extend(page.iter().map(|l| l.id.serial().to_owned()));
        }
        assert_eq!(seen, ["L6", "L5", "L3", "L0", "L4", "L1", "L2"]);

        // Another issuer's licence of the type: listed with no issuer named, and only when its
        // own issuer is named.
        let other: Uscc = "91110108551385082Q".parse().unwrap();
        let mut theirs = licence("L9", 9);
        theirs.id = LicenceId::new(&T.parse().unwrap(), &other, "L9", 1).unwrap();
        theirs.issuer = other.clone();
        s.insert_licence(&theirs, None).unwrap();
        let page = |issuer: Option<&Uscc>| -> Vec<String> {
            s.licences_by_holder("91110108551385082Q", T, issuer, None, 100)
                .unwrap()
                .iter()
                .map(|l| l.id.serial().to_owned())
                .collect()
        };
        assert_eq!(page(None).len(), 8);
        assert_eq!(page(Some(&other)), ["L9"]);
        assert_eq!(
            page(Some(&MARKET.parse().unwrap())),
            ["L6", "L5", "L3", "L0", "L4", "L1", "L2"]
        );
    }

    fn a_second_licence_of_a_type_held_once_is_refused_naming_the_first(s: &dyn Store) {
        s.insert_seal(&seal()).unwrap();
        s.insert_licence(&licence("L1", 1), Some(150)).unwrap();
        match s.insert_licence(&licence("L2", 2), Some(150)) {
            Err(StoreError::Held(id)) => assert_eq!(id, lid("L1")),
            other => panic!("a second licence was not refused: {other:?}"),
        }
        assert!(s.licence(&lid("L2")).unwrap().is_none());
        // Suspended still counts as held; expired or revoked does not.
        s.set_status(
            &lid("L1"),
            LicenceStatus::Valid,
            LicenceStatus::Suspended,
            None,
        )
        .unwrap();
        assert!(matches!(
            s.insert_licence(&licence("L2", 2), Some(150)),
            Err(StoreError::Held(_))
        ));
        s.insert_licence(&licence("L2", 2), Some(200)).unwrap();
        // Without the rule, any number are taken.
        s.insert_licence(&licence("L3", 3), None).unwrap();
    }

    fn renewal_links_both_licences_once(s: &dyn Store) {
        s.insert_seal(&seal()).unwrap();
        s.insert_licence(&licence("L1", 1), None).unwrap();
        let mut new = licence("L2", 2);
        new.replaces = Some(lid("L1").parse().unwrap());
        s.insert_renewal(&lid("L1"), &new, 150).unwrap();
        let old = s.licence(&lid("L1")).unwrap().unwrap();
        assert_eq!(
            (old.status, old.replaced_by.map(|id| id.to_string())),
            (LicenceStatus::Revoked, Some(lid("L2")))
        );
        let mut again = licence("L3", 3);
        again.replaces = Some(lid("L1").parse().unwrap());
        assert!(s.insert_renewal(&lid("L1"), &again, 160).is_err());
        assert!(
            s.licence(&lid("L3")).unwrap().is_none(),
            "a failed renewal must leave nothing behind"
        );
    }

    fn show_codes_redeem_once_and_not_after_expiry(s: &dyn Store) {
        let code = |h: &str, exp| ShowCodeRecord {
            code_sha256: h.into(),
            licence_id: lid("L1"),
            created_by: MARKET.parse().unwrap(),
            expires_at: exp,
            redeemed_at: None,
            redeemed_by: None,
        };
        s.insert_show_code(&code("a", 300)).unwrap();
        s.insert_show_code(&code("b", 100)).unwrap();
        let by: Uscc = APPROVAL.parse().unwrap();
        // Looking does not redeem.
        assert_eq!(s.show_code("a").unwrap().unwrap().redeemed_at, None);
        let first = s.redeem_show_code("a", &by, 200).unwrap().unwrap();
        assert_eq!(first.redeemed_by, Some(by.clone()));
        assert_eq!(s.show_code("a").unwrap().unwrap().redeemed_at, Some(200));
        assert!(s.redeem_show_code("a", &by, 201).unwrap().is_none());
        assert!(s.redeem_show_code("b", &by, 200).unwrap().is_none());
        assert!(s.redeem_show_code("zzz", &by, 200).unwrap().is_none());
        // Expired codes go, redeemed or not; the others stay.
        assert_eq!(s.purge_show_codes(100).unwrap(), 0);
        assert_eq!(s.purge_show_codes(301).unwrap(), 2);
        assert!(s.show_code("a").unwrap().is_none());
        s.insert_show_code(&code("c", 400)).unwrap();
        assert_eq!(s.purge_show_codes(301).unwrap(), 0);
        assert!(s.show_code("c").unwrap().is_some());
    }

    fn secrets_keep_the_first_value_and_consents_revoke_once(s: &dyn Store) {
        assert_eq!(s.put_secret_once("k", b"one").unwrap(), b"one");
        assert_eq!(s.put_secret_once("k", b"two").unwrap(), b"one");
        let c = ConsentRecord {
            id: "c1".into(),
            holder: "11010519491231002X".into(),
            department: APPROVAL.parse().unwrap(),
            licence_types: vec![T.into()],
            purpose: "matter".into(),
            created_by: MARKET.parse().unwrap(),
            expires_at: 10,
            revoked_at: None,
        };
        s.insert_consent(&c).unwrap();
        assert_eq!(s.consent("c1").unwrap().unwrap(), c);
        assert!(s.revoke_consent("c1", 5).unwrap());
        assert!(!s.revoke_consent("c1", 6).unwrap());
    }

    fn keys_with_nul_are_simply_absent(s: &dyn Store) {
        assert!(s.seal("a\0b").unwrap().is_none());
        assert!(s.licence("\0").unwrap().is_none());
        assert!(s.consent("c\0").unwrap().is_none());
        assert!(s.secret("k\0").unwrap().is_none());
        assert!(
            s.licences_by_holder("h\0", "t", None, None, 10)
                .unwrap()
                .is_empty()
        );
        assert!(s.show_code("\0").unwrap().is_none());
        let by: Uscc = APPROVAL.parse().unwrap();
        assert!(s.redeem_show_code("\0", &by, 1).unwrap().is_none());
    }

    /// SD-JWTs that share a JWS header, one with another header and one without any: each
    /// reads back exactly as it was written, by identifier and by holder.
    fn sd_jwts_read_back_whole_with_their_headers_kept_apart(s: &dyn Store) {
        s.insert_seal(&seal()).unwrap();
        let header = format!("eyJ{}", "x5c".repeat(800));
        let written = [
            format!("{header}.payload1.sig1~WyJzYWx0Il0~"),
            format!("{header}.payload2.sig2~"),
            "eyJvdGhlciJ9.payload3.sig3~".to_owned(),
            "jwt~".to_owned(),
            ".payload5.sig5~".to_owned(),
        ];
        for (i, sd_jwt) in written.iter().enumerate() {
            let mut l = licence(&format!("H{i}"), i as u32);
            l.sd_jwt = sd_jwt.clone();
            l.issued_at = 100 + i as i64;
            s.insert_licence(&l, None).unwrap();
        }
        for (i, sd_jwt) in written.iter().enumerate() {
            let l = s.licence(&lid(&format!("H{i}"))).unwrap().unwrap();
            assert_eq!(&l.sd_jwt, sd_jwt);
        }
        let page = s
            .licences_by_holder("91110108551385082Q", T, None, None, 10)
            .unwrap();
        let mut read: Vec<String> = page.into_iter().map(|l| l.sd_jwt).collect();
        read.sort();
        let mut expected = written.to_vec();
        expected.sort();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_shared_header_is_kept_once_and_rows_from_before_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certgate.db");
        let header = format!("eyJ{}", "A".repeat(2400));
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_seal(&seal()).unwrap();
            for i in 0..20u32 {
                let mut l = licence(&format!("S{i}"), i);
                l.sd_jwt = format!("{header}.payload{i}.sig~");
                s.insert_licence(&l, None).unwrap();
            }
        }
        let c = Connection::open(&path).unwrap();
        let headers: i64 = c
            .query_row("SELECT count(*) FROM jws_headers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(headers, 1);
        let longest: i64 = c
            .query_row("SELECT max(length(sd_jwt)) FROM licences", [], |r| r.get(0))
            .unwrap();
        assert!(
            longest < 40,
            "a row keeps only what follows the header: {longest}"
        );
        // A row as written before headers were kept apart: the whole SD-JWT, no header key.
        c.execute(
            &format!(
                "INSERT INTO licences ({LICENCE_COLUMNS}) SELECT ?1, type_code, issuer, \
                 holder, seal_id, ?2, fields, status, status_reason, status_list, 99, \
                 issued_at, not_before, expires_at, replaces, replaced_by, NULL \
                 FROM licences WHERE id = ?3"
            ),
            params![lid("OLD"), format!("{header}.old.sig~"), lid("S0")],
        )
        .unwrap();
        drop(c);
        let s = SqliteStore::open(&path).unwrap();
        let old = s.licence(&lid("OLD")).unwrap().unwrap();
        assert_eq!(old.sd_jwt, format!("{header}.old.sig~"));
        assert_eq!(
            s.licence(&lid("S7")).unwrap().unwrap().sd_jwt,
            format!("{header}.payload7.sig~")
        );
    }

    /// Runs each scenario on the embedded store and on PostgreSQL (skipped, and said so,
    /// without `CERTGATE_TEST_POSTGRES_URL`).
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(#[test]
                fn $name() {
                    super::$name(&crate::store::SqliteStore::in_memory().unwrap());
                })*
            }
            mod on_postgres {
                $(#[test]
                fn $name() {
                    if let Some((s, _schema)) =
                        crate::pg_store::test_store(stringify!($name)).unwrap()
                    {
                        super::$name(&*s);
                    }
                })*
            }
        };
    }

    on_both_backends!(
        a_holders_licences_page_valid_first_then_newest_first,
        a_second_licence_of_a_type_held_once_is_refused_naming_the_first,
        renewal_links_both_licences_once,
        show_codes_redeem_once_and_not_after_expiry,
        secrets_keep_the_first_value_and_consents_revoke_once,
        keys_with_nul_are_simply_absent,
        sd_jwts_read_back_whole_with_their_headers_kept_apart,
    );
}
