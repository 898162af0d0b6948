//! certgate's transparency log: every access becomes a [`Leaf`] of an RFC 9162 Merkle tree,
//! durable before the caller is told it is (group commit: many leaves share one fsync), with
//! C2SP signed checkpoints, inclusion and consistency proofs, auditors' queries, and offline
//! verification of the whole tree or of an export.
//!
//! It knows nothing of HTTP, TLS, licences or departments: a leaf is a record of strings and
//! numbers, and time comes in through a [`storage::Clock`]. A node's own log lives in segment
//! files ([`SegmentLog`]: append-only frames, subtree hashes, checkpoints and a query index
//! built after the acknowledgement), in the SQLite file of data directories made before them
//! ([`SqliteLog`]: `leaves`, `nodes`, `checkpoints`), or in the PostgreSQL schema all nodes
//! share ([`PgLog`]), all behind [`LogDb`].
//!
//! ```
//! use tlog::merkle::{leaf_hash, MemoryTree};
//! let mut tree = MemoryTree::default();
//! tree.push_leaf_hash(leaf_hash(b"one access"));
//! assert_eq!(tree.len(), 1);
//! ```

#![forbid(unsafe_code)]

pub mod checkpoint;
mod db;
pub mod leaf;
mod log;
pub mod merkle;
pub mod postgres;
pub mod segments;
pub mod sqlite;

pub use db::*;
pub use leaf::{LEAF_VERSION, Leaf, LeafKind, Outcome};
pub use log::*;
pub use postgres::PgLog;
pub use segments::{SegmentDir, SegmentLog};
pub use sqlite::SqliteLog;
