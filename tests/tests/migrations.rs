//! Every store's schema versions, on both back ends: a new database is brought to the latest
//! version, a database left at any earlier version is brought up to it, opening again changes
//! nothing, and a database a newer build has migrated is refused with a message naming the
//! store and both versions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use storage::PgPool;

/// One store as the test drives it.
struct Store {
    component: &'static str,
    sqlite: Vec<String>,
    postgres: Vec<String>,
    open_sqlite: fn(&Path) -> Result<(), String>,
    open_postgres: fn(Arc<PgPool>) -> Result<(), String>,
}

/// What opening a store gave, without the store.
fn opened<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<(), String> {
    result.map(drop).map_err(|e| e.to_string())
}

fn stores() -> Vec<Store> {
    fn owned(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }
    vec![
        Store {
            component: cert_store::store::MIGRATION_COMPONENT,
            sqlite: cert_store::store::migrations("BLOB", "INTEGER"),
            postgres: cert_store::store::migrations("BYTEA", "BIGINT"),
            open_sqlite: |p| opened(cert_store::store::SqliteStore::open(p)),
            open_postgres: |pool| opened(cert_store::pg_store::PgStore::open(pool)),
        },
        Store {
            component: policies::store::MIGRATION_COMPONENT,
            sqlite: owned(policies::store::SQLITE_MIGRATIONS),
            postgres: owned(policies::pg_store::MIGRATIONS),
            open_sqlite: |p| opened(policies::store::Store::open(p)),
            open_postgres: |pool| opened(policies::pg_store::PgKbStore::open(pool)),
        },
        Store {
            component: tlog::MIGRATION_COMPONENT,
            sqlite: owned(tlog::sqlite::MIGRATIONS),
            postgres: owned(tlog::postgres::MIGRATIONS),
            open_sqlite: |p| opened(tlog::SqliteLog::open(p)),
            open_postgres: |pool| opened(tlog::PgLog::open(pool)),
        },
    ]
}

fn sqlite_version(path: &Path, component: &str) -> i64 {
    storage::sqlite::version(&Connection::open(path).unwrap(), component).unwrap()
}

#[test]
fn every_embedded_store_migrates_from_every_version_and_refuses_a_newer_one() {
    for store in stores() {
        let latest = store.sqlite.len() as i64;
        assert!(latest > 0, "{} has no migrations", store.component);
        for from in 0..=store.sqlite.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.db");
            let earlier: Vec<&str> = store.sqlite[..from].iter().map(String::as_str).collect();
            let mut conn = Connection::open(&path).unwrap();
            storage::sqlite::migrate(&mut conn, store.component, &earlier, storage::sqlite::none)
                .unwrap();
            drop(conn);
            (store.open_sqlite)(&path)
                .unwrap_or_else(|e| panic!("{} from version {from}: {e}", store.component));
            assert_eq!(sqlite_version(&path, store.component), latest);
            (store.open_sqlite)(&path).unwrap();
            assert_eq!(sqlite_version(&path, store.component), latest);
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        (store.open_sqlite)(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE migrations SET version = version + 1 WHERE component = ?1",
                [store.component],
            )
            .unwrap();
        let refused = (store.open_sqlite)(&path).unwrap_err();
        assert!(
            refused.contains(store.component)
                && refused.contains(&format!("{}", latest + 1))
                && refused.contains(&format!("{latest}")),
            "{refused}"
        );
    }
}

#[test]
fn a_licence_file_from_before_recorded_versions_is_taken_at_its_user_version() {
    let store = &stores()[0];
    for from in 1..=store.sqlite.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("licences.db");
        let conn = Connection::open(&path).unwrap();
        for sql in &store.sqlite[..from] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", from as i64)
            .unwrap();
        drop(conn);
        (store.open_sqlite)(&path).unwrap_or_else(|e| panic!("from user_version {from}: {e}"));
        assert_eq!(
            sqlite_version(&path, store.component),
            store.sqlite.len() as i64
        );
    }
}

#[test]
fn every_postgres_store_migrates_from_every_version_and_refuses_a_newer_one() {
    for store in stores() {
        let latest = store.postgres.len() as i64;
        for from in 0..=store.postgres.len() {
            let Some((pool, _schema)) = storage::pg::test_pool(store.component).unwrap() else {
                return;
            };
            let earlier: Vec<&str> = store.postgres[..from].iter().map(String::as_str).collect();
            pool.migrate(store.component, &earlier).unwrap();
            (store.open_postgres)(pool.clone())
                .unwrap_or_else(|e| panic!("{} from version {from}: {e}", store.component));
            assert_eq!(pool.version(store.component).unwrap(), latest);
            (store.open_postgres)(pool.clone()).unwrap();
            assert_eq!(pool.version(store.component).unwrap(), latest);
            if from == store.postgres.len() {
                pool.with(|c| -> Result<_, storage::Error> {
                    c.execute(
                        "UPDATE migrations SET version = version + 1 WHERE component = $1",
                        &[&store.component],
                    )?;
                    Ok(())
                })
                .unwrap();
                let refused = (store.open_postgres)(pool.clone()).unwrap_err();
                assert!(
                    refused.contains(store.component)
                        && refused.contains(&format!("{}", latest + 1)),
                    "{refused}"
                );
            }
        }
    }
}
