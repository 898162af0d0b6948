//! The knowledge base's store in PostgreSQL, shared by several gateway nodes: `kb_policies`,
//! `kb_enterprises`, `kb_matches` and `kb_feed` in the schema of the licence store.
//!
//! Every write runs while its node holds a session-level advisory lock
//! ([`KbStore::lock_writes`]) and marks what it changed with the next value of the sequence
//! `kb_change`. Since one node writes at a time and commits before letting go, the changes
//! committed at any moment are exactly those up to some mark: a node catches up by reading
//! what changed after the mark it last saw. Each write also notifies the other nodes on the
//! schema's channel ([`storage::bus::Change::Policies`]), so that they catch up at once
//! rather than at their next write.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;
use storage::bus::{Change, Notice};
use storage::{Held, PgPool};

use crate::model::{Policy, Profile};
use crate::store::{
    FeedEvent, KbStore, NewMatch, ProfileChange, StoreChanges, StoreError, WriteLock, event_id,
};

/// The PostgreSQL schema's migrations, in order.
pub const MIGRATIONS: &[&str] = &[r#"
CREATE SEQUENCE kb_change;
CREATE TABLE kb_policies (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, json TEXT, change BIGINT NOT NULL
);
CREATE INDEX kb_policies_change ON kb_policies (change);
CREATE TABLE kb_enterprises (uscc TEXT PRIMARY KEY, json TEXT NOT NULL, change BIGINT NOT NULL);
CREATE INDEX kb_enterprises_change ON kb_enterprises (change);
CREATE TABLE kb_matches (policy_id TEXT NOT NULL, uscc TEXT NOT NULL, PRIMARY KEY (policy_id, uscc));
CREATE INDEX kb_matches_uscc ON kb_matches (uscc);
CREATE TABLE kb_feed (
    seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, policy_id TEXT NOT NULL,
    policy_version INTEGER NOT NULL, uscc TEXT NOT NULL, category TEXT NOT NULL,
    benefit_yuan BIGINT, digest TEXT NOT NULL, created_ms BIGINT NOT NULL
);
"#];

/// The advisory lock every node's knowledge-base writer takes.
const WRITE_LOCK: i64 = 4_242_002;

/// How long a writer waits for another node's write to finish.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The shared store.
#[derive(Debug)]
pub struct PgKbStore {
    pool: Arc<PgPool>,
}

impl PgKbStore {
    /// The store on `pool`'s schema, creating its tables if this is the first node to start.
    pub fn open(pool: Arc<PgPool>) -> Result<PgKbStore, StoreError> {
        pool.migrate(crate::store::MIGRATION_COMPONENT, MIGRATIONS)?;
        Ok(PgKbStore { pool })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.pool.with(f)
    }

    fn notify(&self, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        // Delivered when the transaction commits, and only then.
        let notice = Notice {
            node: String::new(),
            change: Change::Policies,
        };
        Ok(storage::bus::notify_in(tx, &self.pool.channel(), &notice)?)
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(&e.to_string()))
}

/// Records new and ended matches of `policy`; returns the feed events written.
fn record_matches(
    tx: &mut Transaction<'_>,
    policy: &Policy,
    added: &[NewMatch],
    removed: &[String],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut events = 0;
    if !added.is_empty() {
        let usccs: Vec<&str> = added.iter().map(|m| m.uscc.as_str()).collect();
        let fresh: HashSet<String> = tx
            .query(
                "INSERT INTO kb_matches (policy_id, uscc) SELECT $1::text, u FROM unnest($2::text[]) AS u
                 ON CONFLICT DO NOTHING RETURNING uscc",
                &[&policy.id, &usccs],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let new: Vec<&NewMatch> = added.iter().filter(|m| fresh.contains(&m.uscc)).collect();
        if !new.is_empty() {
            let ids: Vec<String> = new
                .iter()
                .map(|m| event_id(&policy.id, policy.version, &m.uscc))
                .collect();
            let usccs: Vec<&str> = new.iter().map(|m| m.uscc.as_str()).collect();
            let benefits: Vec<Option<i64>> = new
                .iter()
                .map(|m| m.benefit_yuan.map(|v| v.min(i64::MAX as u64) as i64))
                .collect();
            let digests: Vec<&str> = new.iter().map(|m| m.digest.as_str()).collect();
            events = tx.execute(
                "INSERT INTO kb_feed (event_id, policy_id, policy_version, uscc, category,
                     benefit_yuan, digest, created_ms)
                 SELECT e, $2::text, $3::integer, u, $4::text, b, d, $5::bigint
                 FROM unnest($1::text[], $6::text[], $7::bigint[], $8::text[])
                     WITH ORDINALITY AS t(e, u, b, d, n)
                 ORDER BY n
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &ids,
                    &policy.id,
                    &(policy.version as i32),
                    &policy.category.as_str(),
                    &now_ms,
                    &usccs,
                    &benefits,
                    &digests,
                ],
            )? as usize;
        }
    }
    if !removed.is_empty() {
        tx.execute(
            "DELETE FROM kb_matches WHERE policy_id = $1 AND uscc = ANY($2)",
            &[&policy.id, &removed],
        )?;
    }
    Ok(events)
}

/// The write lock: a session-level advisory lock on a connection held for the purpose.
struct PgWriteLock<'a>(Held<'a>);

impl WriteLock for PgWriteLock<'_> {}

impl Drop for PgWriteLock<'_> {
    fn drop(&mut self) {
        let unlocked = self.0.client().is_some_and(|c| {
            c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK])
                .is_ok()
        });
        if !unlocked {
            // Closing the session releases the lock.
            self.0.discard();
        }
    }
}

impl KbStore for PgKbStore {
    fn policies(&self) -> Result<Vec<(u64, Policy)>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT json FROM kb_policies WHERE json IS NOT NULL ORDER BY id",
                &[],
            )?;
            rows.iter()
                .enumerate()
                .map(|(i, r)| Ok((i as u64, parse(r.try_get::<_, &str>(0)?)?)))
                .collect()
        })
    }

    fn for_each_profile(&self, f: &mut dyn FnMut(u64, Profile)) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SET LOCAL statement_timeout = 0", &[])?;
            let mut rows = tx.query_raw(
                "SELECT json FROM kb_enterprises ORDER BY uscc",
                std::iter::empty::<i64>(),
            )?;
            let mut row = 0u64;
            while let Some(r) = rows.next()? {
                f(row, parse(r.try_get::<_, &str>(0)?)?);
                row += 1;
            }
            drop(rows);
            tx.commit()?;
            Ok(())
        })
    }

    fn save_policy(
        &self,
        _row: u64,
        policy: &Policy,
        added: &[NewMatch],
        removed: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let json = serde_json::to_string(policy)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO kb_policies (id, version, json, change)
                 VALUES ($1, $2, $3, nextval('kb_change'))
                 ON CONFLICT (id) DO UPDATE
                 SET version = excluded.version, json = excluded.json, change = excluded.change",
                &[&policy.id, &(policy.version as i32), &json],
            )?;
            let events = record_matches(&mut tx, policy, added, removed, now_ms)?;
            self.notify(&mut tx)?;
            tx.commit()?;
            Ok(events)
        })
    }

    fn save_profiles(&self, items: &[ProfileChange], now_ms: i64) -> Result<usize, StoreError> {
        // One row per enterprise: the last of a batch that names one twice.
        let mut last = std::collections::HashMap::new();
        for (i, (_, profile, _, _)) in items.iter().enumerate() {
            last.insert(profile.uscc.as_str(), i);
        }
        let mut usccs = Vec::with_capacity(last.len());
        let mut jsons = Vec::with_capacity(last.len());
        for (i, (_, profile, _, _)) in items.iter().enumerate() {
            if last.get(profile.uscc.as_str()) == Some(&i) {
                usccs.push(profile.uscc.as_str());
                jsons.push(serde_json::to_string(profile.as_ref())?);
            }
        }
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO kb_enterprises (uscc, json, change)
                 SELECT u, j, nextval('kb_change')
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(u, j, n) ORDER BY n
                 ON CONFLICT (uscc) DO UPDATE SET json = excluded.json, change = excluded.change",
                &[&usccs, &jsons],
            )?;
            let mut events = 0;
            for (_, profile, added, removed) in items {
                for (policy, m) in added {
                    events +=
                        record_matches(&mut tx, policy, std::slice::from_ref(m), &[], now_ms)?;
                }
                if !removed.is_empty() {
                    tx.execute(
                        "DELETE FROM kb_matches WHERE uscc = $1 AND policy_id = ANY($2)",
                        &[&profile.uscc.as_str(), removed],
                    )?;
                }
            }
            self.notify(&mut tx)?;
            tx.commit()?;
            Ok(events)
        })
    }

    fn renumber_profiles(&self) -> Result<(), StoreError> {
        // Rows are numbered by each node as it loads; nothing is stored to renumber.
        Ok(())
    }

    fn delete_policy(&self, id: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let ended = tx.execute("DELETE FROM kb_matches WHERE policy_id = $1", &[&id])?;
            tx.execute(
                "UPDATE kb_policies SET json = NULL, change = nextval('kb_change') WHERE id = $1",
                &[&id],
            )?;
            self.notify(&mut tx)?;
            tx.commit()?;
            Ok(ended as usize)
        })
    }

    fn matches_of_policy(&self, policy_id: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            Ok(c.query(
                "SELECT uscc FROM kb_matches WHERE policy_id = $1",
                &[&policy_id],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }

    fn matches_of_enterprise(&self, uscc: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            Ok(
                c.query("SELECT policy_id FROM kb_matches WHERE uscc = $1", &[&uscc])?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?,
            )
        })
    }

    fn feed(&self, after: i64, limit: usize) -> Result<Vec<FeedEvent>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT seq, event_id, policy_id, policy_version, uscc, category, benefit_yuan,
                        digest, created_ms
                 FROM kb_feed WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &(limit.min(i64::MAX as usize) as i64)],
            )?
            .iter()
            .map(|r| -> Result<FeedEvent, StoreError> {
                Ok(FeedEvent {
                    seq: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    policy_id: r.try_get(2)?,
                    policy_version: r.try_get::<_, i32>(3)?.max(0) as u32,
                    uscc: r.try_get(4)?,
                    category: r.try_get(5)?,
                    benefit_yuan: r.try_get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
                    explanation_digest: r.try_get(7)?,
                    created_ms: r.try_get(8)?,
                })
            })
            .collect::<Result<_, _>>()
        })
    }

    fn keeps_rows(&self) -> bool {
        false
    }

    fn lock_writes(&self) -> Result<Box<dyn WriteLock + '_>, StoreError> {
        let mut held = self.pool.hold()?;
        let started = Instant::now();
        loop {
            let client = held
                .client()
                .ok_or_else(|| StoreError::corrupt("lock connection gone"))?;
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITE_LOCK])?
                .try_get(0)?;
            if got {
                return Ok(Box::new(PgWriteLock(held)));
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(StoreError::busy(
                    "another node has been writing policies for too long",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn mark(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM kb_change",
                &[],
            )?
            .try_get(0)?)
        })
    }

    fn changes_since(&self, mark: i64) -> Result<StoreChanges, StoreError> {
        self.with(|c| {
            // One snapshot for both tables.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let mut out = StoreChanges {
                mark,
                ..StoreChanges::default()
            };
            for r in tx.query(
                "SELECT id, json, change FROM kb_policies WHERE change > $1 ORDER BY change",
                &[&mark],
            )? {
                let json: Option<&str> = r.try_get(1)?;
                out.policies
                    .push((r.try_get(0)?, json.map(parse).transpose()?));
                out.mark = out.mark.max(r.try_get(2)?);
            }
            for r in tx.query(
                "SELECT json, change FROM kb_enterprises WHERE change > $1 ORDER BY change",
                &[&mark],
            )? {
                out.profiles.push(parse(r.try_get::<_, &str>(0)?)?);
                out.mark = out.mark.max(r.try_get(1)?);
            }
            tx.commit()?;
            Ok(out)
        })
    }
}

/// For tests: a knowledge-base store in a fresh schema of `CERTGATE_TEST_POSTGRES_URL`
/// (dropped with the guard), or `None` — with a line saying the test was skipped — without it.
pub fn test_store(
    test: &str,
) -> Result<Option<(Arc<PgKbStore>, storage::SchemaGuard)>, StoreError> {
    let Some((pool, guard)) = storage::pg::test_pool(test)? else {
        return Ok(None);
    };
    Ok(Some((Arc::new(PgKbStore::open(pool)?), guard)))
}
