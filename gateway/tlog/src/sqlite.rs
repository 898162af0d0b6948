//! The access log in its own SQLite file (`access-log.db` in the data directory): `leaves`
//! (the canonical leaf bytes plus indexed columns for auditors' queries), `nodes` (the hash of
//! every complete subtree, so proofs take O(log n) reads) and `checkpoints` (signed notes).
//! One writer per file: the node that owns the data directory.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{EntryFilter, Frontier, LogDb, LogError, ScannedLeaf, prepare_batch, stored_hash};
use crate::leaf::{Leaf, Outcome};
use crate::merkle::Hash;

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        LogError::Store(e.to_string())
    }
}

/// The log file's tables, one migration an entry (the first creates them only where missing:
/// files made before versions were recorded have them).
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS leaves (
    seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, department TEXT, holder TEXT,
    resource TEXT, route TEXT, outcome TEXT NOT NULL, data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS leaves_department ON leaves(department, seq);
CREATE INDEX IF NOT EXISTS leaves_holder ON leaves(holder, seq);
CREATE INDEX IF NOT EXISTS leaves_resource ON leaves(resource, seq);
CREATE INDEX IF NOT EXISTS leaves_time ON leaves(time_ms);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, note TEXT NOT NULL);
"#];

impl From<storage::Error> for LogError {
    fn from(e: storage::Error) -> Self {
        LogError::Store(e.to_string())
    }
}

/// The log in one SQLite file.
#[derive(Debug)]
pub struct SqliteLog {
    conn: Connection,
}

impl SqliteLog {
    /// Opens (creating) the file with the durability settings every writer uses: WAL,
    /// `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<SqliteLog, LogError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        storage::sqlite::migrate(
            &mut conn,
            crate::db::MIGRATION_COMPONENT,
            MIGRATIONS,
            storage::sqlite::none,
        )?;
        Ok(SqliteLog { conn })
    }

    /// As [`SqliteLog::open`], capped at `max_pages` pages (0: no cap); reaching the cap is a
    /// full disk.
    pub fn open_writer(path: &Path, max_pages: u64) -> Result<SqliteLog, LogError> {
        let log = SqliteLog::open(path)?;
        if max_pages > 0 {
            log.conn
                .pragma_update(None, "max_page_count", max_pages as i64)?;
        }
        Ok(log)
    }

    /// A read-only connection (WAL lets it read beside the writer).
    pub fn open_read_only(path: &Path) -> Result<SqliteLog, LogError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(SqliteLog { conn })
    }

    /// The connection, for tools and tests that work on the file directly.
    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl LogDb for SqliteLog {
    fn size(&mut self) -> Result<u64, LogError> {
        let n: i64 =
            self.conn
                .query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM leaves", [], |r| {
                    r.get(0)
                })?;
        Ok(n as u64)
    }

    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, LogError> {
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?
            .query_row(params![level, index as i64], |r| r.get(0))
            .optional()?;
        hash.map(stored_hash).transpose()
    }

    fn checkpoints(&mut self, latest_only: bool) -> Result<Vec<(u64, String)>, LogError> {
        let sql = if latest_only {
            "SELECT size, note FROM (SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1)"
        } else {
            "SELECT size, note FROM checkpoints ORDER BY size"
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn leaf(&mut self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self
            .conn
            .prepare_cached("SELECT data FROM leaves WHERE seq = ?1")?
            .query_row(params![seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn entries(&mut self, f: &EntryFilter, limit: u32) -> Result<Vec<Vec<u8>>, LogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT data FROM leaves
             WHERE seq > ?1 AND (?2 IS NULL OR department = ?2) AND (?3 IS NULL OR holder = ?3)
               AND (?4 IS NULL OR resource = ?4) AND (?5 IS NULL OR route = ?5)
               AND (?6 IS NULL OR outcome = ?6) AND (?7 IS NULL OR time_ms >= ?7)
               AND (?8 IS NULL OR time_ms < ?8)
             ORDER BY seq LIMIT ?9",
        )?;
        let rows = stmt.query_map(
            params![
                f.after,
                f.department,
                f.holder,
                f.resource,
                f.route,
                f.outcome.map(Outcome::as_str),
                f.from_ms,
                f.to_ms,
                i64::from(limit)
            ],
            |r| r.get::<_, Vec<u8>>(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn scan(
        &mut self,
        size: u64,
        f: &mut dyn FnMut(ScannedLeaf<'_>) -> bool,
    ) -> Result<(), LogError> {
        let mut stmt = self.conn.prepare(
            "SELECT l.seq, l.data, n.hash FROM leaves l
             LEFT JOIN nodes n ON n.level = 0 AND n.idx = l.seq
             WHERE l.seq < ?1 ORDER BY l.seq",
        )?;
        let mut rows = stmt.query(params![size.min(i64::MAX as u64) as i64])?;
        while let Some(row) = rows.next()? {
            // Read whatever type the column holds now: an edited row may no longer be a blob.
            let data = match row.get_ref(1)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => Some(b),
                _ => None,
            };
            let hash = match row.get_ref(2)? {
                rusqlite::types::ValueRef::Blob(b) => Some(b),
                _ => None,
            };
            let go_on = f(ScannedLeaf {
                seq: row.get(0)?,
                data,
                stored_hash: hash,
            });
            if !go_on {
                break;
            }
        }
        Ok(())
    }

    fn append(
        &mut self,
        leaves: &mut [&mut Leaf],
        frontier: &mut Frontier,
    ) -> Result<u64, LogError> {
        let start = self.size()?;
        let tx = self.conn.transaction()?;
        {
            let mut lookup =
                tx.prepare_cached("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?;
            let (encoded, nodes) = prepare_batch(leaves, start, frontier, |level, idx| {
                lookup
                    .query_row(params![level, idx as i64], |r| r.get::<_, Vec<u8>>(0))
                    .optional()?
                    .map(stored_hash)
                    .transpose()
            })?;
            let mut insert_leaf = tx.prepare_cached(
                "INSERT INTO leaves (seq, time_ms, department, holder, resource, route, outcome, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (l, bytes) in leaves.iter().zip(&encoded) {
                insert_leaf.execute(params![
                    l.seq as i64,
                    l.time_ms,
                    l.department,
                    l.holder,
                    l.resource,
                    l.route,
                    l.outcome.as_str(),
                    bytes
                ])?;
            }
            let mut insert_node =
                tx.prepare_cached("INSERT INTO nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?;
            for (level, idx, hash) in nodes {
                insert_node.execute(params![level, idx as i64, hash.as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(start + leaves.len() as u64)
    }

    fn put_checkpoint(&mut self, size: u64, note: &str, time_ms: i64) -> Result<(), LogError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO checkpoints (size, time_ms, note) VALUES (?1, ?2, ?3)",
            params![size as i64, time_ms, note],
        )?;
        Ok(())
    }
}
