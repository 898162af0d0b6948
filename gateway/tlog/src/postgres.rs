//! The access log every node shares, in the PostgreSQL schema of the store: `log_leaves`,
//! `log_nodes` and `log_checkpoints` as in the SQLite file, plus `log_state`, the one row
//! holding the tree size. A node appends a batch by locking that row, so batches from
//! different nodes take consecutive positions and one tree covers every node's requests.
//!
//! A batch is one round trip when the node's last append left the tree as it is still: one
//! statement (prepared once per connection) moves the size from the end the node knows and
//! inserts the leaves and subtrees only if that moved it. When another node appended since (or
//! after a start, before the right edge of the tree is known), the batch takes the longer way:
//! lock the row, read the size and the subtrees it needs, insert, commit.

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
    /// The tree size this node's last append left (its frontier is that tree's right edge).
    known_size: Option<u64>,
}

/// A batch in one statement: the size moves from `$10` to `$9` only if it is still `$10`, and
/// the leaves and subtrees go in only if it moved; answers whether it did.
const APPEND_IF_UNCHANGED: &str = "
WITH moved AS (
    UPDATE log_state SET size = $9 WHERE id = 1 AND size = $10 RETURNING size
), leaves AS (
    INSERT INTO log_leaves (seq, time_ms, department, holder, resource, route, outcome, data)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::bytea[])
    WHERE EXISTS (SELECT 1 FROM moved)
), nodes AS (
    INSERT INTO log_nodes (level, idx, hash)
    SELECT * FROM unnest($11::integer[], $12::bigint[], $13::bytea[])
    WHERE EXISTS (SELECT 1 FROM moved)
)
SELECT count(*) FROM moved";

/// PostgreSQL text cannot hold NUL; the indexed copies of a leaf's fields drop it (the leaf's
/// bytes keep everything).
fn text(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.replace('\0', ""))
}

impl PgLog {
    /// The log on `pool`'s schema, creating its tables if this is the first node to start.
    pub fn open(pool: Arc<PgPool>) -> Result<PgLog, LogError> {
        pool.migrate(crate::db::MIGRATION_COMPONENT, MIGRATIONS)?;
        Ok(PgLog::new(pool))
    }

    /// The log on `pool`'s schema, for reading (tables already made by [`PgLog::open`]).
    pub fn new(pool: Arc<PgPool>) -> PgLog {
        PgLog {
            pool,
            known_size: None,
        }
    }

    /// Appends the batch in one statement if the tree is still `start` leaves, the size this
    /// node's last append left, and every subtree the batch needs is in `frontier`. Returns
    /// `false`, with `frontier` as it was, when it is not so (nothing is written then).
    fn append_if_unchanged(
        &self,
        start: u64,
        leaves: &mut [&mut Leaf],
        frontier: &mut Frontier,
    ) -> Result<bool, LogError> {
        let mut edge = frontier.clone();
        let Ok((encoded, nodes)) = prepare_batch(leaves, start, &mut edge, |_, _| {
            Err(LogError::Store("not on this node's right edge".into()))
        }) else {
            return Ok(false);
        };
        let moved = self
            .pool
            .with_statements([APPEND_IF_UNCHANGED], |c, [statement]| {
                move_and_insert(c, &statement, start, leaves, encoded, &nodes)
            })?;
        if moved == 1 {
            *frontier = edge;
        }
        Ok(moved == 1)
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
        // Unknown until this append succeeds (the caller discards the frontier if it fails).
        if let Some(start) = self.known_size.take()
            && self.append_if_unchanged(start, leaves, frontier)?
        {
            let end = start + leaves.len() as u64;
            self.known_size = Some(end);
            return Ok(end);
        }
        let end = self
            .pool
            .with_statements([APPEND_IF_UNCHANGED], |c, [statement]| {
                let mut tx = c.transaction()?;
                // The row lock orders batches of all nodes: the next positions are ours until
                // commit.
                let start: i64 = tx
                    .query_one("SELECT size FROM log_state WHERE id = 1 FOR UPDATE", &[])?
                    .try_get(0)?;
                let (encoded, nodes) =
                    prepare_batch(leaves, start as u64, frontier, |level, idx| {
                        tx.query_opt(
                            "SELECT hash FROM log_nodes WHERE level = $1 AND idx = $2",
                            &[&(level as i32), &(idx as i64)],
                        )?
                        .map(|r| r.try_get::<_, Vec<u8>>(0))
                        .transpose()?
                        .map(stored_hash)
                        .transpose()
                    })?;
                // Under the lock the size is `start`: the statement moves it.
                if move_and_insert(&mut tx, &statement, start as u64, leaves, encoded, &nodes)? != 1
                {
                    return Err(LogError::Store(
                        "the tree's size moved under its lock".into(),
                    ));
                }
                let end = start + leaves.len() as i64;
                tx.commit()?;
                Ok(end as u64)
            })?;
        self.known_size = Some(end);
        Ok(end)
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

/// Runs [`APPEND_IF_UNCHANGED`] (prepared as `statement`) for the numbered `leaves` from
/// `start`, with their bytes and the subtrees they complete; returns 1 when it moved the size
/// (and wrote), 0 when the size was not `start` (and it wrote nothing).
fn move_and_insert(
    c: &mut impl postgres::GenericClient,
    statement: &postgres::Statement,
    start: u64,
    leaves: &[&mut Leaf],
    encoded: Vec<Vec<u8>>,
    nodes: &[(u32, u64, Hash)],
) -> Result<i64, LogError> {
    let cols = LeafColumns::of(leaves, encoded);
    let (levels, idxs, hashes) = node_columns(nodes);
    let end = start + leaves.len() as u64;
    Ok(c.query_one(
        statement,
        &[
            &cols.seq,
            &cols.time_ms,
            &cols.department,
            &cols.holder,
            &cols.resource,
            &cols.route,
            &cols.outcome,
            &cols.data,
            &(end as i64),
            &(start as i64),
            &levels,
            &idxs,
            &hashes,
        ],
    )?
    .try_get(0)?)
}

/// The subtrees a batch completes, as the columns of `log_nodes`.
fn node_columns(nodes: &[(u32, u64, Hash)]) -> (Vec<i32>, Vec<i64>, Vec<&[u8]>) {
    (
        nodes.iter().map(|n| n.0 as i32).collect(),
        nodes.iter().map(|n| n.1 as i64).collect(),
        nodes.iter().map(|n| n.2.as_slice()).collect(),
    )
}

impl LeafColumns {
    /// The numbered leaves, with their bytes, as the columns of `log_leaves`.
    fn of(leaves: &[&mut Leaf], encoded: Vec<Vec<u8>>) -> LeafColumns {
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
        cols
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, MemoryTree};

    fn batch(first: i64, n: usize) -> Vec<Leaf> {
        (0..n)
            .map(|i| Leaf {
                route: Some(format!("/v1/test/{}", first + i as i64)),
                ..Leaf::new(
                    crate::LeafKind::Request,
                    1_800_000_000_000 + first + i as i64,
                    200,
                )
            })
            .collect()
    }

    fn append(log: &mut PgLog, leaves: &mut [Leaf], frontier: &mut Frontier) -> u64 {
        let mut refs: Vec<&mut Leaf> = leaves.iter_mut().collect();
        log.append(&mut refs, frontier).unwrap()
    }

    /// A node's batch on the right edge it knows is one statement; a batch on an edge another
    /// node has moved writes nothing and the append takes the locked way; the stored tree is
    /// the tree of the leaves either way.
    #[test]
    fn a_batch_on_the_known_edge_is_one_statement_and_a_stale_one_writes_nothing() {
        let Some((pool, _schema)) = storage::pg::test_pool("tlog::one_statement").unwrap() else {
            return;
        };
        let mut a = PgLog::open(pool.clone()).unwrap();
        let mut b = PgLog::new(pool.clone());
        let (mut edge_a, mut edge_b) = (Frontier::new(), Frontier::new());
        // Nothing known yet: the locked way, and then the edge is known.
        assert_eq!(append(&mut a, &mut batch(0, 3), &mut edge_a), 3);
        assert_eq!(a.known_size, Some(3));
        let mut leaves = batch(3, 4);
        let mut refs: Vec<&mut Leaf> = leaves.iter_mut().collect();
        assert!(a.append_if_unchanged(3, &mut refs, &mut edge_a).unwrap());
        // Another node appends (knowing nothing: it reads the subtrees it needs).
        assert_eq!(append(&mut b, &mut batch(7, 2), &mut edge_b), 9);
        // A's statement on its old edge writes nothing and leaves its edge as it was.
        let before = edge_a.clone();
        let mut leaves = batch(100, 5);
        let mut refs: Vec<&mut Leaf> = leaves.iter_mut().collect();
        assert!(!a.append_if_unchanged(7, &mut refs, &mut edge_a).unwrap());
        assert_eq!(edge_a, before);
        assert_eq!(a.size().unwrap(), 9);
        // Its append, believing the old edge, lands after B's.
        a.known_size = Some(7);
        assert_eq!(append(&mut a, &mut batch(9, 6), &mut edge_a), 15);
        assert_eq!(append(&mut a, &mut batch(15, 2), &mut edge_a), 17);
        let mut tree = MemoryTree::new();
        for seq in 0..17 {
            let data = a.leaf(seq).unwrap().unwrap();
            let leaf: Leaf = serde_json::from_slice(&data).unwrap();
            assert_eq!(leaf.seq, seq);
            tree.push(&data);
        }
        for size in [1, 3, 7, 9, 15, 17] {
            assert_eq!(
                crate::db::root(&mut a, size).unwrap(),
                merkle::root(&tree, size).unwrap(),
                "size {size}"
            );
        }
    }
}
