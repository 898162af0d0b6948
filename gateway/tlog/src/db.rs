//! The storage contract of the log: the [`LogDb`] interface both back ends implement, the
//! error every part of the log returns, and the proofs computed over any back end.

use std::collections::HashMap;

use crate::leaf::{LEAF_VERSION, Leaf, Outcome};
use crate::merkle::{self, Hash};

/// The component name under which both back ends record their schema version.
pub const MIGRATION_COMPONENT: &str = "access_log";
/// Why the log could not take or answer something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The store failed (disk full, I/O error, corruption).
    #[error("access log store: {0}")]
    Store(String),
    /// The writer's queue is full or the writer has stopped.
    #[error("access log unavailable: {0}")]
    Unavailable(&'static str),
    /// The stored tree does not match the last signed checkpoint.
    #[error("the stored access log does not match its last checkpoint: {0}")]
    Inconsistent(String),
    /// A proof or query asked for something outside the log.
    #[error("{0}")]
    OutOfRange(String),
}

/// The most recent complete-subtree hash per level: the only nodes an append looks up.
pub type Frontier = HashMap<u32, (u64, Hash)>;

/// What an auditor's entries query filters on (all optional), after position `after`.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    /// Only leaves after this position (-1: from the start).
    pub after: i64,
    /// The calling department's USCC.
    pub department: Option<String>,
    /// The holder's pseudonym.
    pub holder: Option<String>,
    /// The resource.
    pub resource: Option<String>,
    /// The route pattern.
    pub route: Option<String>,
    /// How the access ended.
    pub outcome: Option<Outcome>,
    /// From this time (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// Until this time (Unix ms, exclusive).
    pub to_ms: Option<i64>,
}

/// One stored leaf as a full scan sees it, before anything is trusted.
#[derive(Debug)]
pub struct ScannedLeaf<'a> {
    /// The position it is stored at.
    pub seq: i64,
    /// Its bytes; `None` when the stored value is not bytes at all.
    pub data: Option<&'a [u8]>,
    /// The level-0 node stored for that position, if any.
    pub stored_hash: Option<&'a [u8]>,
}

/// Where the log lives: the embedded SQLite file of one node ([`SqliteLog`]) or the schema
/// all nodes share in PostgreSQL ([`PgLog`]). The writer and the auditors' reads go through
/// this and nothing else.
pub trait LogDb: Send {
    /// Leaves committed.
    fn size(&mut self) -> Result<u64, LogError>;
    /// The stored hash of complete subtree `index` at `level`.
    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, LogError>;
    /// The signed checkpoints, smallest first: all of them, or only the latest.
    fn checkpoints(&mut self, latest_only: bool) -> Result<Vec<(u64, String)>, LogError>;
    /// The canonical bytes of leaf `seq`.
    fn leaf(&mut self, seq: u64) -> Result<Option<Vec<u8>>, LogError>;
    /// Up to `limit` leaves matching `filter`, oldest first.
    fn entries(&mut self, filter: &EntryFilter, limit: u32) -> Result<Vec<Vec<u8>>, LogError>;
    /// Calls `f` with every stored leaf below `size`, in order of position, until it returns
    /// false; in constant memory.
    fn scan(
        &mut self,
        size: u64,
        f: &mut dyn FnMut(ScannedLeaf<'_>) -> bool,
    ) -> Result<(), LogError>;
    /// Appends `leaves` as the next leaves of the tree in one durable transaction: numbers
    /// them (setting `seq`), stores them and the subtree hashes they complete. `frontier` is
    /// a cache of right-edge nodes, updated as nodes are written (the caller discards it if
    /// this fails). Returns the tree size after the batch.
    fn append(
        &mut self,
        leaves: &mut [&mut Leaf],
        frontier: &mut Frontier,
    ) -> Result<u64, LogError>;
    /// Stores a signed checkpoint; one already stored at that size stays.
    fn put_checkpoint(&mut self, size: u64, note: &str, time_ms: i64) -> Result<(), LogError>;
}

/// A subtree hash an append completes: level, index, hash.
type NewNode = (u32, u64, Hash);

/// Numbers `leaves` from `start` and computes each one's bytes and the nodes it completes,
/// looking nodes up in `frontier` first and in the store (`lookup`) otherwise.
pub(crate) fn prepare_batch(
    leaves: &mut [&mut Leaf],
    start: u64,
    frontier: &mut Frontier,
    mut lookup: impl FnMut(u32, u64) -> Result<Option<Hash>, LogError>,
) -> Result<(Vec<Vec<u8>>, Vec<NewNode>), LogError> {
    let mut encoded = Vec::with_capacity(leaves.len());
    let mut all_nodes = Vec::with_capacity(leaves.len() * 2);
    for (i, leaf) in leaves.iter_mut().enumerate() {
        let seq = start + i as u64;
        leaf.seq = seq;
        leaf.v = LEAF_VERSION;
        let bytes = leaf.to_bytes();
        let nodes = merkle::new_nodes(seq, merkle::leaf_hash(&bytes), |level, idx| {
            if let Some((i, h)) = frontier.get(&level)
                && *i == idx
            {
                return Ok(*h);
            }
            lookup(level, idx)?.ok_or_else(|| {
                LogError::Store(format!("subtree {level}/{idx} is missing from the tree"))
            })
        })?;
        for &(level, idx, hash) in &nodes {
            frontier.insert(level, (idx, hash));
        }
        all_nodes.extend(nodes);
        encoded.push(bytes);
    }
    Ok((encoded, all_nodes))
}

/// A 32-byte hash from a stored value.
pub(crate) fn stored_hash(bytes: Vec<u8>) -> Result<Hash, LogError> {
    bytes
        .try_into()
        .map_err(|_| LogError::Store("stored hash is not 32 bytes".into()))
}

/// Reads stored complete-subtree hashes for proofs.
struct DbNodes<'a>(std::cell::RefCell<&'a mut dyn LogDb>);

impl merkle::NodeStore for DbNodes<'_> {
    type Error = LogError;

    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, LogError> {
        self.0.borrow_mut().node(level, index)
    }
}

fn proof_error(e: merkle::ProofError) -> LogError {
    match e {
        merkle::ProofError::OutOfRange => LogError::OutOfRange(e.to_string()),
        other => LogError::Store(other.to_string()),
    }
}

/// The root over the first `size` leaves, from stored nodes.
pub fn root(db: &mut dyn LogDb, size: u64) -> Result<Hash, LogError> {
    merkle::root(&DbNodes(db.into()), size).map_err(proof_error)
}

/// An inclusion proof for leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(db: &mut dyn LogDb, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
    merkle::inclusion_proof(&DbNodes(db.into()), index, size).map_err(proof_error)
}

/// A consistency proof between the trees of `old` and `new` leaves.
pub fn consistency_proof(db: &mut dyn LogDb, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
    merkle::consistency_proof(&DbNodes(db.into()), old, new).map_err(proof_error)
}

/// The latest signed checkpoint note, if any.
pub fn latest_checkpoint(db: &mut dyn LogDb) -> Result<Option<(u64, String)>, LogError> {
    Ok(db.checkpoints(true)?.pop())
}
