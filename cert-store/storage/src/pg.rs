//! The PostgreSQL connection pool every store of a node shares: connect and statement
//! timeouts, TCP keepalives, TLS through OpenSSL, broken connections dropped, versioned
//! migrations per store under an advisory lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::{Client, Statement};
use postgres_openssl::MakeTlsConnector;

use crate::{Error, PgSettings};

type Result<T> = std::result::Result<T, Error>;

/// A small blocking pool: idle connections are reused, broken ones dropped, new ones opened
/// on demand (the number in use is bounded by the callers: tokio's blocking pool).
pub struct PgPool {
    settings: PgSettings,
    config: postgres::Config,
    tls: MakeTlsConnector,
    idle: Mutex<Vec<Conn>>,
}

/// A pooled connection with the statements prepared on it (see [`PgPool::with_statements`]).
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// TLS for connections to PostgreSQL: the server is verified against `ca` (name included)
/// when one is given; otherwise the connection is encrypted without authenticating it.
fn tls_connector(ca: Option<&std::path::Path>) -> Result<MakeTlsConnector> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let fail = |e: openssl::error::ErrorStack| Error::Settings(format!("TLS: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(fail)?;
    match ca {
        Some(ca) => builder
            .set_ca_file(ca)
            .map_err(|e| Error::Settings(format!("TLS CA file {}: {e}", ca.display())))?,
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if ca.is_none() {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// Runs `f` on a thread of its own: the `postgres` client drives its own small runtime and
/// must not block a thread that is running async tasks (the gateway opens its stores from one).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Drop for PgPool {
    fn drop(&mut self) {
        if let Ok(mut idle) = self.idle.lock() {
            let clients = std::mem::take(&mut *idle);
            off_runtime(move || drop(clients));
        }
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 54 // the notification channel `certgate_<schema>` stays within 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl PgPool {
    /// A pool for `settings` (no connection is opened yet).
    pub fn new(settings: PgSettings) -> Result<PgPool> {
        if !valid_schema(&settings.schema) {
            return Err(Error::Settings(format!(
                "schema `{}`: use lower-case letters, digits and _",
                settings.schema
            )));
        }
        let mut config: postgres::Config = settings
            .url
            .parse()
            .map_err(|e| Error::Settings(format!("PostgreSQL URL: {e}")))?;
        config.connect_timeout(settings.connect_timeout);
        // A path that silently drops is noticed in about a minute, not hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("certgate");
        let tls = tls_connector(settings.ca_file.as_deref())?;
        Ok(PgPool {
            settings,
            config,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.settings.schema
    }

    fn connect(&self) -> Result<Conn> {
        let mut c = self.config.connect(self.tls.clone())?;
        c.batch_execute(&format!(
            "SET search_path TO {}; SET statement_timeout = {}",
            self.settings.schema,
            self.settings.statement_timeout.as_millis()
        ))?;
        Ok(Conn {
            client: c,
            prepared: HashMap::new(),
        })
    }

    fn take(&self) -> Result<Conn> {
        let taken = self.idle.lock().ok().and_then(|mut v| v.pop());
        match taken {
            Some(c) if !c.client.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    fn give_back(&self, conn: Conn) {
        if !conn.client.is_closed()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.settings.pool_size
        {
            idle.push(conn);
        }
    }

    /// Runs `f` on a connection. The connection goes back to the pool only when `f` succeeded:
    /// after a failure it may be in any state (a transaction half-way, a broken socket).
    pub fn with<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.on_conn(|conn| f(&mut conn.client))
    }

    /// Runs `f` on a connection with the statements `sql` prepared on it: prepared once per
    /// connection and kept with it, so that a call of one is one round trip to the server (a
    /// statement given as text is two: prepare, then execute).
    pub fn with_statements<const N: usize, T, E: From<Error>>(
        &self,
        sql: [&'static str; N],
        f: impl FnOnce(&mut Client, [Statement; N]) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.on_conn(|conn| {
            let mut statements = Vec::with_capacity(N);
            for text in sql {
                statements.push(match conn.prepared.get(text) {
                    Some(s) => s.clone(),
                    None => {
                        let s = conn.client.prepare(text).map_err(Error::from)?;
                        conn.prepared.insert(text, s.clone());
                        s
                    }
                });
            }
            let statements: [Statement; N] = statements
                .try_into()
                .map_err(|_| Error::Settings("statements prepared in part".into()))?;
            f(&mut conn.client, statements)
        })
    }

    fn on_conn<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Conn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// Takes a connection out of the pool for longer than one call (to hold a session-level
    /// advisory lock, say).
    pub fn hold(&self) -> Result<Held<'_>> {
        Ok(Held {
            pool: self,
            conn: Some(self.take()?),
        })
    }

    /// Applies the migrations of `component` (one store's) that have not run yet, under an
    /// advisory lock so that nodes starting together apply each once, and records its version
    /// (the number of migrations applied) in the schema's `migrations` table.
    pub fn migrate(&self, component: &str, migrations: &[&str]) -> Result<()> {
        let schema = self.settings.schema.clone();
        let mut c = self.config.connect(self.tls.clone())?;
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(4242001)", &[])?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};
             CREATE TABLE IF NOT EXISTS migrations (component TEXT PRIMARY KEY, version BIGINT NOT NULL);"
        ))?;
        let done: i64 = match tx.query_opt(
            "SELECT version FROM migrations WHERE component = $1",
            &[&component],
        )? {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        for sql in crate::pending(component, done, migrations)? {
            tx.batch_execute(sql)?;
        }
        tx.execute(
            "INSERT INTO migrations (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            &[&component, &(migrations.len() as i64)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The migration version recorded for `component` (0 when none ran).
    pub fn version(&self, component: &str) -> Result<i64> {
        self.with(|c| {
            match c.query_opt(
                "SELECT version FROM migrations WHERE component = $1",
                &[&component],
            )? {
                Some(row) => Ok(row.try_get(0)?),
                None => Ok(0),
            }
        })
    }

    /// Drops the whole schema (tests only: every test has a schema of its own).
    pub fn drop_schema(&self) -> Result<()> {
        let schema = self.settings.schema.clone();
        let mut c = self.config.connect(self.tls.clone())?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(())
    }

    /// A new connection outside the pool (the bus's listener keeps one for itself).
    pub(crate) fn dedicated(&self) -> Result<Client> {
        Ok(self.config.connect(self.tls.clone())?)
    }
}

/// A connection taken out of a [`PgPool`] for longer than one call; back in the pool when
/// dropped, unless discarded or broken.
pub struct Held<'a> {
    pool: &'a PgPool,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Held<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}

impl Held<'_> {
    /// The connection; `None` once discarded.
    pub fn client(&mut self) -> Option<&mut Client> {
        self.conn.as_mut().map(|c| &mut c.client)
    }

    /// Closes the connection instead of returning it to the pool.
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.give_back(c);
        }
    }
}

/// For tests: a pool on a fresh schema of the database named by `CERTGATE_TEST_POSTGRES_URL`,
/// dropped with the guard; `Ok(None)` (with a line on standard error saying the test was
/// skipped) when the variable is not set. A configured database that does not answer is an
/// error, not a skip.
pub fn test_pool(test: &str) -> Result<Option<(Arc<PgPool>, SchemaGuard)>> {
    let Ok(url) = std::env::var("CERTGATE_TEST_POSTGRES_URL") else {
        eprintln!("SKIPPED {test}: CERTGATE_TEST_POSTGRES_URL is not set (see the README)");
        return Ok(None);
    };
    let mut tag = [0u8; 6];
    openssl::rand::rand_bytes(&mut tag).map_err(|e| Error::Settings(e.to_string()))?;
    let mut settings = PgSettings::new(&url);
    settings.schema = format!("t_{}", hex::encode(tag));
    let pool = Arc::new(PgPool::new(settings)?);
    // The schema exists from the start, so that every store of the test can use it.
    off_runtime(|| pool.migrate("schema", &[]))?;
    Ok(Some((pool.clone(), SchemaGuard(pool))))
}

/// Drops a test schema when it goes out of scope.
#[derive(Debug)]
pub struct SchemaGuard(Arc<PgPool>);

impl SchemaGuard {
    /// The pool on the guarded schema.
    pub fn pool(&self) -> &Arc<PgPool> {
        &self.0
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let pool = self.0.clone();
        let _ = off_runtime(move || pool.drop_schema());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_encrypted_when_the_server_offers_tls() {
        let Some((pool, _schema)) = test_pool("tls").unwrap() else {
            return;
        };
        let (offered, encrypted): (String, bool) = pool
            .with(|c| -> Result<_> {
                let offered: String = c.query_one("SHOW ssl", &[])?.try_get(0)?;
                let encrypted: bool = c
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )?
                    .try_get(0)?;
                Ok((offered, encrypted))
            })
            .unwrap();
        assert_eq!(encrypted, offered == "on", "server ssl = {offered}");
        // `sslmode=disable` in the URL is honoured.
        let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut plain = PgSettings::new(&format!("{url}{sep}sslmode=disable"));
        plain.schema = pool.schema().to_owned();
        let plain = PgPool::new(plain).unwrap();
        let encrypted: bool = off_runtime(|| {
            plain.with(|c| -> Result<_> {
                Ok(c.query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .try_get(0)?)
            })
        })
        .unwrap();
        assert!(!encrypted);
    }

    #[test]
    fn migrations_run_once_each_and_record_their_version() {
        let Some((pool, _schema)) = test_pool("migrations").unwrap() else {
            return;
        };
        let one = ["CREATE TABLE a (x INT)"];
        let two = ["CREATE TABLE a (x INT)", "ALTER TABLE a ADD COLUMN y INT"];
        pool.migrate("thing", &one).unwrap();
        assert_eq!(pool.version("thing").unwrap(), 1);
        // Applying again skips what ran; a new migration runs alone.
        pool.migrate("thing", &two).unwrap();
        pool.migrate("thing", &two).unwrap();
        assert_eq!(pool.version("thing").unwrap(), 2);
        assert_eq!(pool.version("other").unwrap(), 0);
        // An older build refuses a schema a newer one migrated.
        assert!(matches!(
            pool.migrate("thing", &one),
            Err(Error::Newer {
                found: 2,
                known: 1,
                ..
            })
        ));
        // Several nodes starting at once apply each migration once.
        let three = [
            "CREATE TABLE a (x INT)",
            "ALTER TABLE a ADD COLUMN y INT",
            "ALTER TABLE a ADD COLUMN z INT",
        ];
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| pool.migrate("thing", &three).unwrap());
            }
        });
        assert_eq!(pool.version("thing").unwrap(), 3);
    }
}
