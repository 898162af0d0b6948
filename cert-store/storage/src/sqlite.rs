//! Versioned migrations of the embedded stores: each store's file records, per component, how
//! many of its migrations ran (table `migrations`), and applies the rest in one transaction.

use rusqlite::{Connection, OptionalExtension};

use crate::Error;

/// Applies the migrations of `component` that have not run on `conn` yet, in one transaction,
/// and records its version. `legacy` is the version a file made before versions were recorded
/// is at (read from it by the store), if any.
pub fn migrate(
    conn: &mut Connection,
    component: &str,
    migrations: &[&str],
    legacy: impl FnOnce(&Connection) -> rusqlite::Result<i64>,
) -> Result<(), Error> {
    // A file already at this version is left alone: no write, so opening it beside its writer
    // (a second reader of the log, say) needs no lock.
    let has_table: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if has_table && version(conn, component)? == migrations.len() as i64 {
        return Ok(());
    }
    // The write lock is taken at once (and waited for), not upgraded to half-way.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS migrations (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )?;
    let recorded: Option<i64> = tx
        .query_row(
            "SELECT version FROM migrations WHERE component = ?1",
            [component],
            |r| r.get(0),
        )
        .optional()?;
    let done = match recorded {
        Some(v) => v,
        None => legacy(&tx)?,
    };
    for sql in crate::pending(component, done, migrations)? {
        tx.execute_batch(sql)?;
    }
    tx.execute(
        "INSERT INTO migrations (component, version) VALUES (?1, ?2)
         ON CONFLICT(component) DO UPDATE SET version = excluded.version",
        rusqlite::params![component, migrations.len() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

/// The version recorded for `component` (0 when none ran).
pub fn version(conn: &Connection, component: &str) -> Result<i64, Error> {
    Ok(conn
        .query_row(
            "SELECT version FROM migrations WHERE component = ?1",
            [component],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// No versions before this runner: a store whose first migration creates its tables with
/// `IF NOT EXISTS` starts from 0 and finds them there.
pub fn none(_: &Connection) -> rusqlite::Result<i64> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_each_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let one = ["CREATE TABLE a (x INTEGER)"];
        let two = [
            "CREATE TABLE a (x INTEGER)",
            "ALTER TABLE a ADD COLUMN y INTEGER",
        ];
        {
            let mut c = Connection::open(&path).unwrap();
            migrate(&mut c, "thing", &one, none).unwrap();
            assert_eq!(version(&c, "thing").unwrap(), 1);
        }
        let mut c = Connection::open(&path).unwrap();
        migrate(&mut c, "thing", &two, none).unwrap();
        migrate(&mut c, "thing", &two, none).unwrap();
        assert_eq!(version(&c, "thing").unwrap(), 2);
        assert!(matches!(
            migrate(&mut c, "thing", &one, none),
            Err(Error::Newer {
                found: 2,
                known: 1,
                ..
            })
        ));
        // A file of an older layout that counted its own version.
        let mut legacy = Connection::open_in_memory().unwrap();
        legacy.execute_batch("CREATE TABLE a (x INTEGER)").unwrap();
        migrate(&mut legacy, "thing", &two, |_| Ok(1)).unwrap();
        assert_eq!(version(&legacy, "thing").unwrap(), 2);
    }
}
