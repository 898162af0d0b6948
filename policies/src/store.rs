//! The policy knowledge base's store: policies, enterprise profiles, the current matches and
//! the push feed. The store is the truth; the indexes are rebuilt from it. [`KbStore`] is what
//! the knowledge base needs of one; [`Store`] keeps it in SQLite (WAL, `synchronous=FULL`), one
//! node's own; [`crate::pg_store::PgKbStore`] in PostgreSQL, shared by several nodes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::model::{Category, Policy, Profile};

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
    std::sync::Arc<Profile>,
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
pub const SQLITE_MIGRATIONS: &[&str] = &[
    "
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
",
    "
-- The push feed without its stored event id (a hash of policy, version and enterprise, computed
-- when read), with the digest as bytes and the category as a number: about half the bytes an
-- event, and no random index insert for each.
CREATE TABLE push_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    policy_id TEXT NOT NULL, policy_version INTEGER NOT NULL, uscc TEXT NOT NULL,
    category INTEGER NOT NULL, benefit_yuan INTEGER, digest BLOB NOT NULL,
    created_ms INTEGER NOT NULL);
INSERT INTO push_feed (seq, policy_id, policy_version, uscc, category, benefit_yuan, digest,
        created_ms)
    SELECT seq, policy_id, policy_version, uscc,
        CASE category WHEN '免申即享' THEN 1 WHEN '在线办理' THEN 2 WHEN '宣传展示' THEN 3 END,
        benefit_yuan, unhex(digest), created_ms
    FROM feed ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'push_feed';
INSERT INTO sqlite_sequence (name, seq) SELECT 'push_feed', seq FROM sqlite_sequence
    WHERE name = 'feed';
-- Current matches by the policy's row (not its id), with the version they were announced at;
-- every version a match that is not live (or not at that version) was announced at, so that
-- one coming back at such a version is not announced again: the rule the stored event id's
-- uniqueness kept, (policy, version, enterprise) announced once.
CREATE TABLE live_matches (
    policy INTEGER NOT NULL, uscc TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (policy, uscc)) WITHOUT ROWID;
CREATE INDEX live_matches_by_uscc ON live_matches (uscc);
CREATE TABLE ended_matches (
    policy_id TEXT NOT NULL, uscc TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (policy_id, uscc, version)) WITHOUT ROWID;
CREATE TEMP TABLE last_announced (
    policy_id TEXT NOT NULL, uscc TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (policy_id, uscc)) WITHOUT ROWID;
INSERT INTO temp.last_announced (policy_id, uscc, version)
    SELECT policy_id, uscc, MAX(policy_version) FROM feed GROUP BY policy_id, uscc;
INSERT INTO live_matches (policy, uscc, version)
    SELECT p.row, m.uscc, COALESCE(a.version, p.version)
    FROM matches m JOIN policies p ON p.id = m.policy_id
    LEFT JOIN temp.last_announced a ON a.policy_id = m.policy_id AND a.uscc = m.uscc;
INSERT OR IGNORE INTO ended_matches (policy_id, uscc, version)
    SELECT f.policy_id, f.uscc, f.policy_version FROM feed f
    WHERE NOT EXISTS (SELECT 1 FROM live_matches m JOIN policies p ON p.row = m.policy
        WHERE p.id = f.policy_id AND m.uscc = f.uscc AND m.version = f.policy_version);
DROP TABLE temp.last_announced;
DROP TABLE matches;
DROP TABLE feed;
",
];

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
        let events = record_matches(&tx, row as i64, policy, added, removed, now_ms)?;
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
        let mut row_of = tx.prepare_cached("SELECT row FROM policies WHERE id = ?1")?;
        let mut rows: HashMap<String, i64> = HashMap::new();
        let mut policy_row = |id: &str| -> Result<i64, StoreError> {
            if let Some(r) = rows.get(id) {
                return Ok(*r);
            }
            let r: i64 = row_of
                .query_row([id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError(format!("policy {id} is not stored")))?;
            rows.insert(id.to_owned(), r);
            Ok(r)
        };
        for (row, profile, added, removed) in items {
            let json =
                serde_json::to_string(profile.as_ref()).map_err(|e| StoreError(e.to_string()))?;
            put.execute(params![profile.uscc.as_str(), *row as i64, json])?;
            for (policy, m) in added {
                let r = policy_row(&policy.id)?;
                events += record_matches(&tx, r, policy, std::slice::from_ref(m), &[], now_ms)?;
            }
            for policy_id in removed {
                let r = policy_row(policy_id)?;
                end_match(&tx, r, policy_id, profile.uscc.as_str())?;
            }
        }
        drop(put);
        drop(row_of);
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
        // Its matches end, remembered with the version they were announced at (the policy may
        // come back at that version: they are not announced again).
        tx.execute(
            "INSERT OR IGNORE INTO ended_matches (policy_id, uscc, version)
             SELECT ?1, m.uscc, m.version FROM live_matches m JOIN policies p ON p.row = m.policy
             WHERE p.id = ?1",
            [id],
        )?;
        let ended = tx.execute(
            "DELETE FROM live_matches WHERE policy = (SELECT row FROM policies WHERE id = ?1)",
            [id],
        )?;
        tx.execute("DELETE FROM policies WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(ended)
    }

    fn matches_of_policy(&self, policy_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT m.uscc FROM live_matches m JOIN policies p ON p.row = m.policy WHERE p.id = ?1",
        )?;
        let rows = stmt.query_map([policy_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn matches_of_enterprise(&self, uscc: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT p.id FROM live_matches m JOIN policies p ON p.row = m.policy WHERE m.uscc = ?1",
        )?;
        let rows = stmt.query_map([uscc], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn feed(&self, after: i64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, policy_id, policy_version, uscc, category, benefit_yuan, digest,
                    created_ms FROM push_feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after, limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let policy_id: String = r.get(1)?;
            let policy_version: u32 = r.get(2)?;
            let uscc: String = r.get(3)?;
            let category = category_of_code(r.get(4)?)
                .ok_or_else(|| StoreError::corrupt("a feed event's category"))?;
            let digest: Vec<u8> = r.get(6)?;
            out.push(FeedEvent {
                seq: r.get(0)?,
                event_id: event_id(&policy_id, policy_version, &uscc),
                policy_id,
                policy_version,
                uscc,
                category: category.as_str().to_owned(),
                benefit_yuan: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
                explanation_digest: hex::encode(digest),
                created_ms: r.get(7)?,
            });
        }
        Ok(out)
    }
}

/// The number a category is stored as in the feed.
fn category_code(c: Category) -> i64 {
    match c {
        Category::Automatic => 1,
        Category::Online => 2,
        Category::Publicity => 3,
    }
}

fn category_of_code(code: i64) -> Option<Category> {
    [Category::Automatic, Category::Online, Category::Publicity]
        .into_iter()
        .find(|c| category_code(*c) == code)
}

/// Records new and ended matches of `policy` (stored in row `policy_row`); returns the feed
/// events written: one for each match that is new, unless it ended before and comes back at a
/// version it was announced at.
fn record_matches(
    tx: &rusqlite::Transaction<'_>,
    policy_row: i64,
    policy: &Policy,
    added: &[NewMatch],
    removed: &[String],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut events = 0;
    let mut add = tx.prepare_cached(
        "INSERT OR IGNORE INTO live_matches (policy, uscc, version) VALUES (?1, ?2, ?3)",
    )?;
    let mut announced = tx.prepare_cached(
        "SELECT 1 FROM ended_matches WHERE policy_id = ?1 AND uscc = ?2 AND version = ?3",
    )?;
    let mut event = tx.prepare_cached(
        "INSERT INTO push_feed (policy_id, policy_version, uscc, category, benefit_yuan, digest,
            created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for m in added {
        if add.execute(params![policy_row, m.uscc, policy.version])? == 0 {
            continue;
        }
        if announced.exists(params![policy.id, m.uscc, policy.version])? {
            continue;
        }
        let digest = hex::decode(&m.digest)
            .map_err(|_| StoreError(format!("explanation digest {:?} is not hex", m.digest)))?;
        events += event.execute(params![
            policy.id,
            policy.version,
            m.uscc,
            category_code(policy.category),
            m.benefit_yuan.map(|v| v.min(i64::MAX as u64) as i64),
            digest,
            now_ms
        ])?;
    }
    for uscc in removed {
        end_match(tx, policy_row, &policy.id, uscc)?;
    }
    Ok(events)
}

/// Ends the match of the policy in `policy_row` (id `policy_id`) with `uscc`, remembering the
/// version it was announced at.
fn end_match(
    tx: &rusqlite::Transaction<'_>,
    policy_row: i64,
    policy_id: &str,
    uscc: &str,
) -> Result<(), StoreError> {
    let mut remove = tx.prepare_cached(
        "DELETE FROM live_matches WHERE policy = ?1 AND uscc = ?2 RETURNING version",
    )?;
    let version: Option<u32> = remove
        .query_row(params![policy_row, uscc], |r| r.get(0))
        .optional()?;
    if let Some(v) = version {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO ended_matches (policy_id, uscc, version) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![policy_id, uscc, v])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(version: u32) -> Policy {
        let mut p = Policy::from_json(
            r#"{"id":"P-1","version":1,"title":"t","issuer":"i","region":"110000","category":"在线办理",
            "window":{"start":"2026-01-01","end":"2026-12-31"},"benefit":{"kind":"none"},"text":"",
            "conditions":[{"kind":"scale_in","scales":["小"]}]}"#,
        )
        .unwrap();
        p.version = version;
        p
    }

    fn new_match(uscc: &str) -> NewMatch {
        NewMatch {
            uscc: uscc.to_owned(),
            benefit_yuan: Some(7),
            digest: hex::encode([0xab; 32]),
        }
    }

    const A: &str = "91110108551385082Q";
    const B: &str = "91110105MA01234567";

    #[test]
    fn a_match_that_comes_back_at_its_announced_version_is_not_announced_again() {
        let store = Store::in_memory().unwrap();
        let v1 = policy(1);
        assert_eq!(
            store
                .save_policy(0, &v1, &[new_match(A), new_match(B)], &[], 1)
                .unwrap(),
            2
        );
        // Ends, comes back at the same version: no event.
        assert_eq!(
            store.save_policy(0, &v1, &[], &[A.to_owned()], 2).unwrap(),
            0
        );
        assert_eq!(store.matches_of_policy("P-1").unwrap(), vec![B.to_owned()]);
        assert_eq!(
            store.save_policy(0, &v1, &[new_match(A)], &[], 3).unwrap(),
            0
        );
        // At version 2, B (announced at 1) ends and comes back: a new event; A stays live.
        let v2 = policy(2);
        assert_eq!(
            store.save_policy(0, &v2, &[], &[B.to_owned()], 4).unwrap(),
            0
        );
        assert_eq!(
            store.save_policy(0, &v2, &[new_match(B)], &[], 5).unwrap(),
            1
        );
        // Withdrawn and published again at version 2: both were announced at their versions
        // (A at 1, B at 2): only A's comes again.
        assert_eq!(store.delete_policy("P-1").unwrap(), 2);
        assert!(store.matches_of_enterprise(A).unwrap().is_empty());
        assert_eq!(
            store
                .save_policy(3, &v2, &[new_match(A), new_match(B)], &[], 6)
                .unwrap(),
            1
        );
        let feed = store.feed(0, 100).unwrap();
        let seen: Vec<(&str, u32)> = feed
            .iter()
            .map(|e| (e.uscc.as_str(), e.policy_version))
            .collect();
        assert_eq!(seen, vec![(A, 1), (B, 1), (B, 2), (A, 2)]);
        assert_eq!(feed[0].event_id, event_id("P-1", 1, A));
        assert_eq!(feed[0].category, "在线办理");
        assert_eq!(feed[0].explanation_digest, hex::encode([0xab; 32]));
        assert_eq!(feed[0].benefit_yuan, Some(7));
        assert_eq!(
            store.matches_of_enterprise(B).unwrap(),
            vec!["P-1".to_owned()]
        );
        // Withdrawn again and published at version 1, an older version (a withdrawn policy
        // has no stored version to be newer than): A and B were both announced at 1 before.
        store.delete_policy("P-1").unwrap();
        assert_eq!(
            store
                .save_policy(3, &v1, &[new_match(A), new_match(B)], &[], 7)
                .unwrap(),
            0
        );
        assert_eq!(store.feed(0, 100).unwrap().len(), 4);
    }

    #[test]
    fn a_store_of_the_first_version_keeps_its_feed_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.db");
        let mut conn = Connection::open(&path).unwrap();
        storage::sqlite::migrate(
            &mut conn,
            MIGRATION_COMPONENT,
            &SQLITE_MIGRATIONS[..1],
            storage::sqlite::none,
        )
        .unwrap();
        let p = policy(2);
        conn.execute(
            "INSERT INTO policies (id, row, version, json) VALUES ('P-1', 4, 2, ?1)",
            [serde_json::to_string(&p).unwrap()],
        )
        .unwrap();
        // A announced at 1 and live; B announced at 1 and 2, ended.
        conn.execute("INSERT INTO matches VALUES ('P-1', ?1)", [A])
            .unwrap();
        for (version, uscc, category) in
            [(1, A, "免申即享"), (1, B, "在线办理"), (2, B, "宣传展示")]
        {
            conn.execute(
                "INSERT INTO feed (event_id, policy_id, policy_version, uscc, category,
                    benefit_yuan, digest, created_ms) VALUES (?1, 'P-1', ?2, ?3, ?4, 5, ?5, 9)",
                params![
                    event_id("P-1", version, uscc),
                    version,
                    uscc,
                    category,
                    hex::encode([version as u8; 32])
                ],
            )
            .unwrap();
        }
        drop(conn);
        let store = Store::open(&path).unwrap();
        let feed = store.feed(0, 100).unwrap();
        assert_eq!(feed.len(), 3);
        assert_eq!(
            feed.iter().map(|e| e.category.as_str()).collect::<Vec<_>>(),
            ["免申即享", "在线办理", "宣传展示"]
        );
        assert_eq!(feed[2].event_id, event_id("P-1", 2, B));
        assert_eq!(feed[2].explanation_digest, hex::encode([2; 32]));
        assert_eq!(feed[2].seq, 3);
        assert_eq!(store.matches_of_policy("P-1").unwrap(), vec![A.to_owned()]);
        // B came back at version 2, announced already; A ends and comes back at 2 after having
        // been announced at 1 only: one new event, numbered after the old ones.
        assert_eq!(
            store
                .save_policy(4, &p, &[new_match(B)], &[A.to_owned()], 10)
                .unwrap(),
            0
        );
        assert_eq!(
            store.save_policy(4, &p, &[new_match(A)], &[], 11).unwrap(),
            1
        );
        let feed = store.feed(3, 100).unwrap();
        assert_eq!(
            (feed[0].seq, feed[0].uscc.as_str(), feed[0].policy_version),
            (4, A, 2)
        );
    }
}
