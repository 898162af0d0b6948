//! The access log every node shares, in the PostgreSQL schema of the store: `log_leaves`,
//! `log_nodes` and `log_checkpoints` as in the SQLite file, plus `log_state`, the one row
//! holding the tree size. A node appends a batch by locking that row, so batches from
//! different nodes take consecutive positions and one tree covers every node's requests.

use std::sync::Arc;

use postgres::fallible_iterator::FallibleIterator;
use storage::PgPool;

use crate::db::{EntryFilter, Frontier, LogDb, LogError, ScannedLeaf, prepare_batch, stored_hash};
use crate::leaf::{Leaf, Outcome};
use crate::merkle::Hash;

impl From<postgres::Error> for LogError {
    fn from(e: postgres::Error) -> Self {
        LogError::Store(e.to_string())
    }
}

/// The PostgreSQL schema's migrations, in order.
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE log_leaves (
    seq BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, department TEXT, holder TEXT,
    resource TEXT, route TEXT, outcome TEXT NOT NULL, data BYTEA NOT NULL
);
CREATE INDEX log_leaves_department ON log_leaves(department, seq);
CREATE INDEX log_leaves_holder ON log_leaves(holder, seq);
CREATE INDEX log_leaves_resource ON log_leaves(resource, seq);
CREATE INDEX log_leaves_time ON log_leaves(time_ms);
CREATE TABLE log_nodes (
    level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (level, idx)
);
CREATE TABLE log_checkpoints (size BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, note TEXT NOT NULL);
CREATE TABLE log_state (id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL);
INSERT INTO log_state (id, size) VALUES (1, 0);
"#];

/// The shared log, through the node's connection pool.
#[derive(Debug, Clone)]
pub struct PgLog {
    pool: Arc<PgPool>,
}

/// PostgreSQL text cannot hold NUL; the indexed copies of a leaf's fields drop it (the leaf's
/// bytes keep everything).
fn text(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.replace('\0', ""))
}

impl PgLog {
    /// The log on `pool`'s schema, creating its tables if this is the first node to start.
    pub fn open(pool: Arc<PgPool>) -> Result<PgLog, LogError> {
        pool.migrate(crate::db::MIGRATION_COMPONENT, MIGRATIONS)?;
        Ok(PgLog { pool })
    }

    /// The log on `pool`'s schema, for reading (tables already made by [`PgLog::open`]).
    pub fn new(pool: Arc<PgPool>) -> PgLog {
        PgLog { pool }
    }
}

impl LogDb for PgLog {
    fn size(&mut self) -> Result<u64, LogError> {
        self.pool.with(|c| -> Result<_, LogError> {
            let n: i64 = c
                .query_one("SELECT size FROM log_state WHERE id = 1", &[])?
                .try_get(0)?;
            Ok(n as u64)
        })
    }

    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, LogError> {
        let hash: Option<Vec<u8>> = self.pool.with(|c| -> Result<_, LogError> {
            Ok(c.query_opt(
                "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
                &[&(level as i32), &(index as i64)],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
        })?;
        hash.map(stored_hash).transpose()
    }

    fn checkpoints(&mut self, latest_only: bool) -> Result<Vec<(u64, String)>, LogError> {
        let sql = if latest_only {
            "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        } else {
            "SELECT size, note FROM log_checkpoints ORDER BY size"
        };
        self.pool.with(|c| -> Result<_, LogError> {
            c.query(sql, &[])?
                .iter()
                .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
                .collect::<Result<_, LogError>>()
        })
    }

    fn leaf(&mut self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        self.pool.with(|c| -> Result<_, LogError> {
            Ok(c.query_opt(
                "SELECT data FROM log_leaves WHERE seq = $1",
                &[&(seq as i64)],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
        })
    }

    fn entries(&mut self, f: &EntryFilter, limit: u32) -> Result<Vec<Vec<u8>>, LogError> {
        self.pool.with(|c| -> Result<_, LogError> {
            Ok(c.query(
                "SELECT data FROM log_leaves
                 WHERE seq > $1 AND ($2::text IS NULL OR department = $2)
                   AND ($3::text IS NULL OR holder = $3) AND ($4::text IS NULL OR resource = $4)
                   AND ($5::text IS NULL OR route = $5) AND ($6::text IS NULL OR outcome = $6)
                   AND ($7::bigint IS NULL OR time_ms >= $7) AND ($8::bigint IS NULL OR time_ms < $8)
                 ORDER BY seq LIMIT $9",
                &[
                    &f.after,
                    &text(&f.department),
                    &text(&f.holder),
                    &text(&f.resource),
                    &text(&f.route),
                    &f.outcome.map(Outcome::as_str),
                    &f.from_ms,
                    &f.to_ms,
                    &i64::from(limit),
                ],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }

    fn scan(
        &mut self,
        size: u64,
        f: &mut dyn FnMut(ScannedLeaf<'_>) -> bool,
    ) -> Result<(), LogError> {
        let size = size.min(i64::MAX as u64) as i64;
        self.pool.with(|c| -> Result<_, LogError> {
            // One snapshot for the whole scan; rows stream through a portal in batches.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            tx.execute("SET LOCAL statement_timeout = 0", &[])?;
            let portal = tx.bind(
                "SELECT l.seq, l.data, n.hash FROM log_leaves l
                     LEFT JOIN log_nodes n ON n.level = 0 AND n.idx = l.seq
                     WHERE l.seq < $1 ORDER BY l.seq",
                &[&size],
            )?;
            'pages: loop {
                let mut rows = tx.query_portal_raw(&portal, 4096)?;
                let mut any = false;
                while let Some(row) = rows.next()? {
                    any = true;
                    let data: Vec<u8> = row.try_get(1)?;
                    let hash: Option<Vec<u8>> = row.try_get(2)?;
                    if !f(ScannedLeaf {
                        seq: row.try_get(0)?,
                        data: Some(&data),
                        stored_hash: hash.as_deref(),
                    }) {
                        break 'pages;
                    }
                }
                if !any {
                    break;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn append(
        &mut self,
        leaves: &mut [&mut Leaf],
        frontier: &mut Frontier,
    ) -> Result<u64, LogError> {
        self.pool.with(|c| -> Result<_, LogError> {
            let mut tx = c.transaction()?;
            // The row lock orders batches of all nodes: the next positions are ours until
            // commit.
            let start: i64 = tx
                .query_one("SELECT size FROM log_state WHERE id = 1 FOR UPDATE", &[])?
                .try_get(0)?;
            let (encoded, nodes) = prepare_batch(leaves, start as u64, frontier, |level, idx| {
                tx.query_opt(
                    "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
                    &[&(level as i32), &(idx as i64)],
                )?
                .map(|r| r.try_get::<_, Vec<u8>>(0))
                .transpose()?
                .map(stored_hash)
                .transpose()
            })?;
            let mut cols = LeafColumns::default();
            for (l, bytes) in leaves.iter().zip(encoded) {
                cols.seq.push(l.seq as i64);
                cols.time_ms.push(l.time_ms);
                cols.department.push(text(&l.department));
                cols.holder.push(text(&l.holder));
                cols.resource.push(text(&l.resource));
                cols.route.push(text(&l.route));
                cols.outcome.push(l.outcome.as_str().to_owned());
                cols.data.push(bytes);
            }
            tx.execute(
                "INSERT INTO log_leaves (seq, time_ms, department, holder, resource, route, outcome, data)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                      $5::text[], $6::text[], $7::text[], $8::bytea[])",
                &[
                    &cols.seq,
                    &cols.time_ms,
                    &cols.department,
                    &cols.holder,
                    &cols.resource,
                    &cols.route,
                    &cols.outcome,
                    &cols.data,
                ],
            )?;
            let levels: Vec<i32> = nodes.iter().map(|n| n.0 as i32).collect();
            let idxs: Vec<i64> = nodes.iter().map(|n| n.1 as i64).collect();
            let hashes: Vec<&[u8]> = nodes.iter().map(|n| n.2.as_slice()).collect();
            tx.execute(
                "INSERT INTO log_nodes (level, idx, hash)
                 SELECT * FROM unnest($1::integer[], $2::bigint[], $3::bytea[])",
                &[&levels, &idxs, &hashes],
            )?;
            let end = start + leaves.len() as i64;
            tx.execute("UPDATE log_state SET size = $1 WHERE id = 1", &[&end])?;
            tx.commit()?;
            Ok(end as u64)
        })
    }

    fn put_checkpoint(&mut self, size: u64, note: &str, time_ms: i64) -> Result<(), LogError> {
        self.pool.with(|c| -> Result<_, LogError> {
            c.execute(
                "INSERT INTO log_checkpoints (size, time_ms, note) VALUES ($1, $2, $3)
                 ON CONFLICT (size) DO NOTHING",
                &[&(size as i64), &time_ms, &note],
            )?;
            Ok(())
        })
    }
}

#[derive(Default)]
struct LeafColumns {
    seq: Vec<i64>,
    time_ms: Vec<i64>,
    department: Vec<Option<String>>,
    holder: Vec<Option<String>>,
    resource: Vec<Option<String>>,
    route: Vec<Option<String>>,
    outcome: Vec<String>,
    data: Vec<Vec<u8>>,
}
