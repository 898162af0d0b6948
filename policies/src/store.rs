//! The policy knowledge base's store: policies, enterprise profiles, the current matches and
//! the push feed. The store is the truth; the indexes are rebuilt from it. [`KbStore`] is what
//! the knowledge base needs of one; [`Store`] keeps it in SQLite (WAL, `synchronous=FULL`), one
//! node's own; [`crate::pg_store::PgKbStore`] in PostgreSQL, shared by several nodes.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::model::{Policy, Profile};

/// The component name the store's migrations are recorded under, on both back ends.
pub const MIGRATION_COMPONENT: &str = "policies";

/// A store error.
#[derive(Debug, thiserror::Error)]
#[error("policy store: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// The stored data is not as certgate writes it.
    pub fn corrupt(what: &str) -> StoreError {
        StoreError(format!("corrupt: {what}"))
    }

    /// The store is busy (another node holds it) for longer than a writer waits.
    pub fn busy(what: &str) -> StoreError {
        StoreError(format!("busy: {what}"))
    }

    /// An I/O error on `path`.
    pub fn from_io(path: &Path, e: std::io::Error) -> StoreError {
        StoreError(format!("{}: {e}", path.display()))
    }
}

impl From<storage::Error> for StoreError {
    fn from(e: storage::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// One event of the push feed: a (policy, enterprise) eligibility that did not exist before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedEvent {
    /// Position in the feed; read on with `after = seq`.
    pub seq: i64,
    /// Stable id: the same (policy, version, enterprise) always has the same id.
    pub event_id: String,
    /// The policy.
    pub policy_id: String,
    /// Its version when the match arose.
    pub policy_version: u32,
    /// The enterprise.
    pub uscc: String,
    /// The policy's category.
    pub category: String,
    /// The estimated benefit in yuan, when it can be computed.
    pub benefit_yuan: Option<u64>,
    /// SHA-256 of the explanation.
    pub explanation_digest: String,
    /// When the event was recorded (Unix milliseconds).
    pub created_ms: i64,
}

/// A new match to record.
#[derive(Debug, Clone)]
pub struct NewMatch {
    /// The enterprise.
    pub uscc: String,
    /// The benefit estimate.
    pub benefit_yuan: Option<u64>,
    /// The explanation digest.
    pub digest: String,
}

/// A profile to store, with its row, the policies it newly matches and the policy ids it no
/// longer matches.
pub type ProfileChange = (
    u64,
    Profile,
    Vec<(std::sync::Arc<Policy>, NewMatch)>,
    Vec<String>,
);

/// Policies and profiles changed since a mark (by any node sharing the store).
#[derive(Debug, Default)]
pub struct StoreChanges {
    /// Policies stored (`Some`) or withdrawn (`None`), by id, oldest change first.
    pub policies: Vec<(String, Option<Policy>)>,
    /// Profiles stored, oldest change first.
    pub profiles: Vec<Profile>,
    /// The mark to ask from next time.
    pub mark: i64,
}

/// What the knowledge base keeps its truth in.
pub trait KbStore: Send + Sync {
    /// Every policy with its row (the indexes' key), by row.
    fn policies(&self) -> Result<Vec<(u64, Policy)>, StoreError>;

    /// Calls `f` on every profile with its row, by row.
    fn for_each_profile(&self, f: &mut dyn FnMut(u64, Profile)) -> Result<(), StoreError>;

    /// Stores `policy` and its match changes in one transaction: `added` become matches and
    /// feed events, `removed` stop being matches. Returns the feed events written (a match
    /// that ends and comes back at the same policy version is not reported twice).
    fn save_policy(
        &self,
        row: u64,
        policy: &Policy,
        added: &[NewMatch],
        removed: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError>;

    /// Stores profiles and their match changes in one transaction. Each item is the profile,
    /// the policies it newly matches (with the match), and the policies it no longer matches.
    fn save_profiles(&self, items: &[ProfileChange], now_ms: i64) -> Result<usize, StoreError>;

    /// Numbers the profiles' rows 0, 1, 2 … again in their present order (after a failed
    /// write left a gap); the indexes must then be rebuilt.
    fn renumber_profiles(&self) -> Result<(), StoreError>;

    /// Deletes a policy and its matches (not its feed events); returns the matches ended.
    fn delete_policy(&self, id: &str) -> Result<usize, StoreError>;

    /// The enterprises currently matching `policy_id`.
    fn matches_of_policy(&self, policy_id: &str) -> Result<Vec<String>, StoreError>;

    /// The policies currently matching `uscc`.
    fn matches_of_enterprise(&self, uscc: &str) -> Result<Vec<String>, StoreError>;

    /// Feed events after `after`, at most `limit`, in order.
    fn feed(&self, after: i64, limit: usize) -> Result<Vec<FeedEvent>, StoreError>;

    /// Whether the rows given to the save methods are kept, so that a node's index keyed by
    /// row stays valid across restarts. A shared store numbers nothing: each node numbers its
    /// rows as it loads, and rebuilds its indexes at start.
    fn keeps_rows(&self) -> bool {
        true
    }

    /// Holds off every other writer of the store (on any node) until the guard is dropped;
    /// a writer catches up with [`KbStore::changes_since`] first, so that its matching sees
    /// every change before its own.
    fn lock_writes(&self) -> Result<Box<dyn WriteLock + '_>, StoreError> {
        Ok(Box::new(()))
    }

    /// The mark of the newest change stored (0: none, or the store is one node's own).
    fn mark(&self) -> Result<i64, StoreError> {
        Ok(0)
    }

    /// Policies and profiles changed after `mark`, by any node.
    fn changes_since(&self, mark: i64) -> Result<StoreChanges, StoreError> {
        Ok(StoreChanges {
            mark,
            ..StoreChanges::default()
        })
    }
}

/// Held while a node writes (see [`KbStore::lock_writes`]); released when dropped.
pub trait WriteLock {}

impl WriteLock for () {}

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// The stable id of the event for `policy` at `version` matching `uscc`.
pub fn event_id(policy: &str, version: u32, uscc: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{policy}|{version}|{uscc}").as_bytes());
    hex::encode(&d[..16])
}

/// The embedded store's tables, one migration an entry (the first creates them only where
/// missing: files made before versions were recorded have them).
pub const SQLITE_MIGRATIONS: &[&str] = &["
CREATE TABLE IF NOT EXISTS policies (
    id TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE, version INTEGER NOT NULL,
    json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enterprises (
    uscc TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
    policy_id TEXT NOT NULL, uscc TEXT NOT NULL,
    PRIMARY KEY (policy_id, uscc)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS matches_by_uscc ON matches (uscc);
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    policy_id TEXT NOT NULL, policy_version INTEGER NOT NULL, uscc TEXT NOT NULL,
    category TEXT NOT NULL, benefit_yuan INTEGER, digest TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
"];

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A store in memory (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        // A page cache of 64 MiB (one connection): a bulk import inserts into the match and
        // feed indexes at random places, and with SQLite's default 2 MiB most of that time went
        // to spilling and re-reading pages.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             PRAGMA cache_size=-65536;",
        )?;
        storage::sqlite::migrate(
            &mut conn,
            MIGRATION_COMPONENT,
            SQLITE_MIGRATIONS,
            storage::sqlite::none,
        )?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError("store lock poisoned".into()))
    }

    /// One policy.
    pub fn policy(&self, id: &str) -> Result<Option<Policy>, StoreError> {
        let conn = self.conn()?;
        let json: Option<String> = conn
            .query_row("SELECT json FROM policies WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError(e.to_string())))
            .transpose()
    }
}

impl KbStore for Store {
    fn policies(&self) -> Result<Vec<(u64, Policy)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT row, json FROM policies ORDER BY row")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (n, json) = row?;
            let p = serde_json::from_str(&json).map_err(|e| StoreError(e.to_string()))?;
            out.push((n.max(0) as u64, p));
        }
        Ok(out)
    }

    fn for_each_profile(&self, f: &mut dyn FnMut(u64, Profile)) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT row, json FROM enterprises ORDER BY row")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (n, json) = row?;
            let p = serde_json::from_str(&json).map_err(|e| StoreError(e.to_string()))?;
            f(n.max(0) as u64, p);
        }
        Ok(())
    }

    fn save_policy(
        &self,
        row: u64,
        policy: &Policy,
        added: &[NewMatch],
        removed: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let json = serde_json::to_string(policy).map_err(|e| StoreError(e.to_string()))?;
        tx.execute(
            "INSERT INTO policies (id, row, version, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, json = excluded.json",
            params![policy.id, row as i64, policy.version, json],
        )?;
        let events = record_matches(&tx, policy, added, removed, now_ms)?;
        tx.commit()?;
        Ok(events)
    }

    fn save_profiles(&self, items: &[ProfileChange], now_ms: i64) -> Result<usize, StoreError> {
        let mut events = 0;
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut put = tx.prepare_cached(
            "INSERT INTO enterprises (uscc, row, json) VALUES (?1, ?2, ?3)
             ON CONFLICT (uscc) DO UPDATE SET json = excluded.json",
        )?;
        for (row, profile, added, removed) in items {
            let json = serde_json::to_string(profile).map_err(|e| StoreError(e.to_string()))?;
            put.execute(params![profile.uscc.as_str(), *row as i64, json])?;
            for (policy, m) in added {
                events += record_matches(&tx, policy, std::slice::from_ref(m), &[], now_ms)?;
            }
            for policy_id in removed {
                tx.execute(
                    "DELETE FROM matches WHERE policy_id = ?1 AND uscc = ?2",
                    params![policy_id, profile.uscc.as_str()],
                )?;
            }
        }
        drop(put);
        tx.commit()?;
        Ok(events)
    }

    fn renumber_profiles(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TEMP TABLE renumbered AS
                SELECT uscc, ROW_NUMBER() OVER (ORDER BY row) - 1 AS r FROM enterprises;
             UPDATE enterprises SET row = -row - 1;
             UPDATE enterprises SET row = (SELECT r FROM renumbered WHERE renumbered.uscc = enterprises.uscc);
             DROP TABLE renumbered;",
        )?;
        tx.commit()?;
        Ok(())
    }

    fn delete_policy(&self, id: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let ended = tx.execute("DELETE FROM matches WHERE policy_id = ?1", [id])?;
        tx.execute("DELETE FROM policies WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(ended)
    }

    fn matches_of_policy(&self, policy_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT uscc FROM matches WHERE policy_id = ?1")?;
        let rows = stmt.query_map([policy_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn matches_of_enterprise(&self, uscc: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT policy_id FROM matches WHERE uscc = ?1")?;
        let rows = stmt.query_map([uscc], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn feed(&self, after: i64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, event_id, policy_id, policy_version, uscc, category, benefit_yuan, digest,
                    created_ms FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok(FeedEvent {
                seq: r.get(0)?,
                event_id: r.get(1)?,
                policy_id: r.get(2)?,
                policy_version: r.get(3)?,
                uscc: r.get(4)?,
                category: r.get(5)?,
                benefit_yuan: r.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
                explanation_digest: r.get(7)?,
                created_ms: r.get(8)?,
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }
}

fn record_matches(
    tx: &rusqlite::Transaction<'_>,
    policy: &Policy,
    added: &[NewMatch],
    removed: &[String],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut events = 0;
    let mut add =
        tx.prepare_cached("INSERT OR IGNORE INTO matches (policy_id, uscc) VALUES (?1, ?2)")?;
    let mut event = tx.prepare_cached(
        "INSERT OR IGNORE INTO feed (event_id, policy_id, policy_version, uscc, category,
            benefit_yuan, digest, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for m in added {
        if add.execute(params![policy.id, m.uscc])? == 1 {
            events += event.execute(params![
                event_id(&policy.id, policy.version, &m.uscc),
                policy.id,
                policy.version,
                m.uscc,
                policy.category.as_str(),
                m.benefit_yuan.map(|v| v.min(i64::MAX as u64) as i64),
                m.digest,
                now_ms
            ])?;
        }
    }
    let mut remove = tx.prepare_cached("DELETE FROM matches WHERE policy_id = ?1 AND uscc = ?2")?;
    for uscc in removed {
        remove.execute(params![policy.id, uscc])?;
    }
    Ok(events)
}
