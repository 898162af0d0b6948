//! Storage infrastructure shared by every store of certgate: database settings (with a
//! `Debug` that never shows a password), the PostgreSQL connection pool, versioned migrations
//! for every store on both back ends, the typed notification bus between the nodes sharing a
//! database, the clock, and how batch writers let a batch grow. It knows nothing of licences, logs or policies beyond the names of
//! what can change ([`bus::Change`]), and nothing of HTTP.
//!
//! Every store takes a [`PgPool`] (or its own SQLite connection) and runs its migrations
//! through [`PgPool::migrate`] or [`sqlite::migrate`]: one version per store, recorded in the
//! database, applied once however many nodes start together.

#![forbid(unsafe_code)]

pub mod batch;
pub mod bus;
pub mod clock;
pub mod pg;
pub mod settings;
pub mod sqlite;

pub use clock::{Clock, SystemClock};
pub use pg::{Held, PgPool, SchemaGuard};
pub use settings::PgSettings;

/// A storage failure below any one store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are unusable (a bad URL, schema or CA file).
    #[error("{0}")]
    Settings(String),
    /// The database could not be reached, or refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] postgres::Error),
    /// The embedded database failed.
    #[error("embedded database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration recorded a version this build does not know (a newer build ran on it).
    #[error("{component} is at migration {found}, newer than this build's {known}")]
    Newer {
        /// The store.
        component: String,
        /// The version recorded.
        found: i64,
        /// The versions this build has.
        known: usize,
    },
}

/// The migrations of `component` still to apply when `done` of them ran; an error when a newer
/// build recorded more than this one knows.
pub(crate) fn pending<'a>(
    component: &str,
    done: i64,
    migrations: &'a [&'a str],
) -> Result<&'a [&'a str], Error> {
    if done > migrations.len() as i64 {
        return Err(Error::Newer {
            component: component.to_owned(),
            found: done,
            known: migrations.len(),
        });
    }
    Ok(&migrations[done.max(0) as usize..])
}
