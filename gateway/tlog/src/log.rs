//! The log itself: the writer (group commit — many leaves share one fsync, and a leaf is
//! durable before the caller is told it is), checkpoints signed at most every interval, the
//! choice of back end, and offline verification.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::checkpoint::{Checkpoint, LogKey, verify_note};
use crate::leaf::Leaf;
use crate::merkle::{self, Hash};

use crate::db::*;
use crate::postgres::PgLog;
use crate::sqlite::SqliteLog;

/// Where a node keeps its access log.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// Its own segment files (the default for one node's log).
    Segments(crate::segments::SegmentDir),
    /// Its own SQLite file (logs made before segment files).
    Sqlite(PathBuf),
    /// The tree every node shares, in PostgreSQL.
    Postgres(Arc<storage::PgPool>),
}

impl LogBackend {
    /// The embedded log of a node with data directory `data_dir`: segment files in
    /// `access-log/`, or the SQLite file `access-log.db` where a node made one before segment
    /// files (it stays in use; `certgate audit verify` reads both).
    pub fn embedded(data_dir: &std::path::Path) -> LogBackend {
        let legacy = data_dir.join("access-log.db");
        if legacy.is_file() {
            LogBackend::Sqlite(legacy)
        } else {
            LogBackend::Segments(crate::segments::SegmentDir::new(
                &data_dir.join("access-log"),
            ))
        }
    }

    /// A connection for reads (for SQLite, read-only beside the writer).
    pub fn reader(&self) -> Result<Box<dyn LogDb>, LogError> {
        Ok(match self {
            LogBackend::Segments(dir) => Box::new(crate::segments::SegmentLog::reader(dir)),
            LogBackend::Sqlite(path) => Box::new(SqliteLog::open_read_only(path)?),
            LogBackend::Postgres(store) => Box::new(PgLog::new(store.clone())),
        })
    }

    fn writer(&self, settings: &WriterSettings) -> Result<Box<dyn LogDb>, LogError> {
        Ok(match self {
            LogBackend::Segments(dir) => Box::new(crate::segments::SegmentLog::open_writer(
                dir,
                settings.max_db_pages.saturating_mul(4096),
            )?),
            LogBackend::Sqlite(path) => {
                Box::new(SqliteLog::open_writer(path, settings.max_db_pages)?)
            }
            LogBackend::Postgres(store) => Box::new(PgLog::open(store.clone())?),
        })
    }
}

/// A leaf waiting for its batch.
struct Pending {
    leaf: Leaf,
    ack: Option<oneshot::Sender<Result<u64, ()>>>,
}

/// Where requests leave their leaves for the writer: a vector under a lock, which the writer
/// takes whole. A request wakes the writer only when it is asleep waiting for work, so under
/// load leaves are handed over without a context switch each (the writer finds them when its
/// fsync returns).
struct Inbox {
    state: Mutex<InboxState>,
    wake: Condvar,
    capacity: usize,
}

struct InboxState {
    leaves: Vec<Pending>,
    /// The writer is waiting on `wake`.
    writer_asleep: bool,
    /// Every handle is gone: the writer commits what is left and stops.
    closed: bool,
}

/// Why a leaf was not queued.
enum Refused {
    Full,
    Closed,
}

impl Inbox {
    fn new(capacity: usize) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState {
                leaves: Vec::new(),
                writer_asleep: false,
                closed: false,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // The lock guards a vector push and swap: nothing in it can panic half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, pending: Pending) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.leaves.len() >= self.capacity {
            return Err(Refused::Full);
        }
        state.leaves.push(pending);
        let wake = std::mem::take(&mut state.writer_asleep);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Moves up to `max` queued leaves into `batch`, first waiting up to `wait` (`None`: as
    /// long as it takes) for one to come. False when the inbox is closed and empty.
    fn take(&self, batch: &mut Vec<Pending>, max: usize, wait: Option<Duration>) -> bool {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut state = self.lock();
        while state.leaves.is_empty() && !state.closed {
            state.writer_asleep = true;
            state = match deadline {
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    self.wake
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        state.writer_asleep = false;
        let n = state.leaves.len().min(max.saturating_sub(batch.len()));
        if n == state.leaves.len() && batch.is_empty() {
            std::mem::swap(batch, &mut state.leaves);
        } else {
            batch.extend(state.leaves.drain(..n));
        }
        !(state.closed && state.leaves.is_empty() && batch.is_empty())
    }
}

/// Closes the inbox when the last [`AccessLog`] handle goes.
struct Sender(Arc<Inbox>);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

/// The handle requests use to append; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Arc<Sender>,
    healthy: Arc<AtomicBool>,
    size: Arc<AtomicU64>,
    covered: Arc<AtomicU64>,
    /// Leaves queued and not yet taken by the writer.
    queued: Arc<AtomicU64>,
    /// Requests being served whose leaf is not queued yet (see [`InFlight`]).
    in_flight: Arc<AtomicU64>,
    capacity: u64,
    backend: LogBackend,
}

/// A request being served, counted until its leaf is queued (or the request is dropped), so
/// that the writer can wait a moment for leaves that are about to come and commit them in one
/// batch (group commit: one fsync for all of them) instead of one commit each.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How the writer behaves.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Leaves waiting at most; past this, appends fail (and data routes fail closed).
    pub queue_capacity: usize,
    /// Leaves committed in one transaction at most.
    pub max_batch: usize,
    /// Least time between two checkpoints while leaves arrive.
    pub checkpoint_interval: Duration,
    /// The checkpoint origin line.
    pub origin: String,
    /// How long the writer may hold a batch open for leaves of requests still being served
    /// (zero: commit whatever is queued at once). Only while such requests exist.
    pub group_commit_wait: Duration,
    /// Caps the database at this many pages (0: no cap); reaching it is a full disk.
    pub max_db_pages: u64,
    /// The time written with each checkpoint.
    pub clock: Arc<dyn storage::Clock>,
}

impl AccessLog {
    /// Opens the log in `backend`, checks the stored tree against the last checkpoint
    /// (refusing to start on a mismatch), and starts this node's writer thread.
    ///
    /// With PostgreSQL, every node's writer appends to the one shared tree: a batch takes the
    /// next positions under a row lock on the tree state, so the tree is the same whichever
    /// node wrote which leaf.
    pub fn open(
        backend: LogBackend,
        key: Arc<LogKey>,
        settings: WriterSettings,
    ) -> Result<AccessLog, LogError> {
        let mut db = backend.writer(&settings)?;
        let conn = db.as_mut();
        let stored = conn.size()?;
        let mut checkpointed_at_start = 0;
        if let Some((cp_size, note)) = latest_checkpoint(conn)? {
            checkpointed_at_start = cp_size;
            let cp = verify_note(&note, &key.verifier_key())
                .map_err(|e| LogError::Inconsistent(e.to_string()))?;
            if cp.size != cp_size || cp.size > stored {
                return Err(LogError::Inconsistent(format!(
                    "checkpoint covers {} leaves but {stored} are stored",
                    cp.size
                )));
            }
            if root(conn, cp.size)? != cp.root {
                return Err(LogError::Inconsistent(format!(
                    "the root over the first {} leaves differs from the signed checkpoint",
                    cp.size
                )));
            }
        }
        let healthy = Arc::new(AtomicBool::new(true));
        let size_counter = Arc::new(AtomicU64::new(stored));
        let covered = Arc::new(AtomicU64::new(checkpointed_at_start));
        let queued = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let capacity = settings.queue_capacity.max(1) as u64;
        let inbox = Arc::new(Inbox::new(settings.queue_capacity));
        let tx = Arc::new(Sender(inbox.clone()));
        let mut writer = Writer {
            db,
            next: stored,
            frontier: HashMap::new(),
            key,
            settings,
            last_checkpoint: None,
            checkpointed: checkpointed_at_start,
            healthy: healthy.clone(),
            size: size_counter.clone(),
            covered: covered.clone(),
            queued: queued.clone(),
            in_flight: in_flight.clone(),
        };
        std::thread::Builder::new()
            .name("access-log-writer".into())
            .spawn(move || writer.run(&inbox))
            .map_err(|e| LogError::Store(format!("cannot start the writer: {e}")))?;
        Ok(AccessLog {
            tx,
            healthy,
            covered,
            queued,
            in_flight,
            capacity,
            size: size_counter,
            backend,
        })
    }

    /// Counts a request as being served until the returned guard is dropped or passed to
    /// [`AccessLog::append_served`].
    pub fn serving(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }

    /// Appends the leaf of a request counted by [`AccessLog::serving`]: the count drops as the
    /// leaf is queued.
    pub async fn append_served(&self, leaf: Leaf, serving: InFlight) -> Result<u64, LogError> {
        self.append_then(leaf, move || drop(serving)).await
    }

    /// Appends a leaf and waits until it is durable; returns its sequence number.
    pub async fn append(&self, leaf: Leaf) -> Result<u64, LogError> {
        self.append_then(leaf, || ()).await
    }

    async fn append_then(&self, leaf: Leaf, queued: impl FnOnce()) -> Result<u64, LogError> {
        let (ack, done) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self
            .tx
            .0
            .push(Pending {
                leaf,
                ack: Some(ack),
            })
            .map_err(|refused| {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                match refused {
                    Refused::Full => {
                        self.healthy.store(false, Ordering::SeqCst);
                        LogError::Unavailable("the write queue is full")
                    }
                    Refused::Closed => LogError::Unavailable("the writer stopped"),
                }
            });
        queued();
        sent?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(())) => Err(LogError::Store("the batch could not be committed".into())),
            Err(_) => Err(LogError::Unavailable("the writer stopped")),
        }
    }

    /// Appends a leaf without waiting (refused handshakes: there is no response to hold).
    ///
    /// Such leaves may fill at most half the queue: a flood of failed handshakes from
    /// unauthenticated peers must not crowd out the leaves of requests (and so fail them).
    pub fn append_detached(&self, leaf: Leaf) {
        if self.queued.load(Ordering::SeqCst) >= self.capacity / 2 {
            tracing::warn!("access log queue half full: a refused-handshake leaf was dropped");
            return;
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.0.push(Pending { leaf, ack: None }).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("access log queue full: a refused-handshake leaf was dropped");
        }
    }

    /// False after the last commit failed or the queue overflowed, until a commit succeeds.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until a signed checkpoint covers every stored leaf, so that a
    /// gateway shutting down leaves its last requests under a signature.
    pub async fn wait_covered(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.covered.load(Ordering::SeqCst) < self.size.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The tree size the last signed checkpoint covers.
    pub fn covered(&self) -> u64 {
        self.covered.load(Ordering::SeqCst)
    }

    /// The tree size after this node's last committed batch (with a shared log, other
    /// nodes' leaves may follow).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    /// A connection for queries and proofs, beside the writer.
    pub fn reader(&self) -> Result<Box<dyn LogDb>, LogError> {
        self.backend.reader()
    }
}

struct Writer {
    db: Box<dyn LogDb>,
    /// The tree size after this node's last committed batch.
    next: u64,
    frontier: Frontier,
    key: Arc<LogKey>,
    settings: WriterSettings,
    last_checkpoint: Option<Instant>,
    /// The size the last checkpoint covers.
    checkpointed: u64,
    healthy: Arc<AtomicBool>,
    size: Arc<AtomicU64>,
    covered: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

impl Writer {
    fn run(&mut self, inbox: &Inbox) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        let max = self.settings.max_batch.max(1);
        loop {
            // While leaves are not yet covered by a checkpoint, wake up in time to sign one
            // even if no further request arrives.
            let wait = (self.next > self.checkpointed).then(|| {
                self.last_checkpoint.map_or(Duration::ZERO, |t| {
                    self.settings
                        .checkpoint_interval
                        .saturating_sub(t.elapsed())
                })
            });
            if !inbox.take(&mut batch, max, wait) {
                break;
            }
            if batch.is_empty() {
                self.maybe_checkpoint();
                continue;
            }
            // The batch closes on the fsync rhythm: whatever came while the last commit was
            // being made goes into this one, and on a busy core what the requests being served
            // queue while they are let run first. With a group-commit wait set, it may also
            // wait a little for the leaves of requests still being served.
            if batch.len() < max {
                storage::batch::let_others_add(storage::batch::ROUNDS, || {
                    inbox.lock().leaves.len()
                });
                inbox.take(&mut batch, max, Some(Duration::ZERO));
            }
            if !self.settings.group_commit_wait.is_zero() {
                let deadline = Instant::now() + self.settings.group_commit_wait;
                while batch.len() < max && self.in_flight.load(Ordering::SeqCst) > 0 {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    inbox.take(&mut batch, max, Some(deadline - now));
                }
            }
            self.queued.fetch_sub(batch.len() as u64, Ordering::SeqCst);
            let result = self.commit(&mut batch);
            match &result {
                Ok(()) => {
                    self.healthy.store(true, Ordering::SeqCst);
                    self.size.store(self.next, Ordering::SeqCst);
                }
                Err(e) => {
                    self.healthy.store(false, Ordering::SeqCst);
                    tracing::error!(error = %e, leaves = batch.len(), "access log batch not committed");
                }
            }
            for p in batch.drain(..) {
                if let Some(ack) = p.ack {
                    let _ = ack.send(result.as_ref().map(|()| p.leaf.seq).map_err(|_| ()));
                }
            }
            if result.is_ok() {
                self.maybe_checkpoint();
            }
        }
    }

    /// Writes the batch in one transaction (one fsync); on failure nothing of it remains.
    fn commit(&mut self, batch: &mut [Pending]) -> Result<(), LogError> {
        let mut frontier = self.frontier.clone();
        let mut leaves: Vec<&mut Leaf> = batch.iter_mut().map(|p| &mut p.leaf).collect();
        self.next = self.db.append(&mut leaves, &mut frontier)?;
        self.frontier = frontier;
        Ok(())
    }

    fn maybe_checkpoint(&mut self) {
        if self.next <= self.checkpointed
            || self
                .last_checkpoint
                .is_some_and(|t| t.elapsed() < self.settings.checkpoint_interval)
        {
            return;
        }
        // Counted as an attempt either way, so a failing store is retried once per interval
        // rather than in a tight loop.
        self.last_checkpoint = Some(Instant::now());
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "checkpoint not written");
        }
    }

    fn checkpoint(&mut self) -> Result<(), LogError> {
        // With a shared log the tree may have grown past this node's batches: sign all of it.
        let size = self.db.size()?.max(self.next);
        let cp = Checkpoint {
            origin: self.settings.origin.clone(),
            size,
            root: root(self.db.as_mut(), size)?,
        };
        let note = self.key.sign(&cp);
        self.db
            .put_checkpoint(size, &note, self.settings.clock.now_ms())?;
        self.checkpointed = size;
        self.covered.store(size, Ordering::SeqCst);
        Ok(())
    }
}

/// What an offline verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Leaves checked.
    pub leaves: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// The root over all leaves.
    pub root: Hash,
}

/// The first thing an offline verification found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// The store could not be read.
    #[error("cannot read the log: {0}")]
    Unreadable(String),
    /// A leaf is missing, out of place or altered.
    #[error("leaf {index}: {reason}")]
    Leaf {
        /// The first bad index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint's signature or root does not hold.
    #[error("checkpoint at size {size}: {reason}")]
    Checkpoint {
        /// The checkpoint's tree size.
        size: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Recomputes every leaf hash and every root from the stored leaves alone, compares them with
/// the stored tree nodes, and checks every checkpoint's signature, root, and its consistency
/// with the one before. Read-only.
pub fn verify_offline(
    db: &mut dyn LogDb,
    verifier_key: &str,
) -> Result<VerifySummary, VerifyFailure> {
    let unreadable = |e: &dyn std::fmt::Display| VerifyFailure::Unreadable(e.to_string());
    let mut checkpoints = db.checkpoints(false).map_err(|e| unreadable(&e))?;
    checkpoints.reverse(); // popped from the end, smallest first

    let mut tree = merkle::MemoryTree::default();
    let mut previous: Option<(u64, Hash)> = None;
    let mut checked = 0u64;
    let mut check_due = |tree: &merkle::MemoryTree,
                         checkpoints: &mut Vec<(u64, String)>|
     -> Result<(), VerifyFailure> {
        while checkpoints.last().is_some_and(|(s, _)| *s == tree.len()) {
            let Some((size, note)) = checkpoints.pop() else {
                break;
            };
            let bad = |reason: String| VerifyFailure::Checkpoint { size, reason };
            let cp = verify_note(&note, verifier_key).map_err(|e| bad(e.to_string()))?;
            if cp.size != size {
                return Err(bad(format!("the note says size {}", cp.size)));
            }
            let root = merkle::root(tree, size).map_err(|e| bad(e.to_string()))?;
            if root != cp.root {
                return Err(bad("the leaves do not hash to the signed root".into()));
            }
            if let Some((old_size, old_root)) = previous {
                let proof = merkle::consistency_proof(tree, old_size, size)
                    .map_err(|e| bad(e.to_string()))?;
                if !merkle::verify_consistency(old_size, size, &old_root, &root, &proof) {
                    return Err(bad(format!(
                        "not consistent with the checkpoint at size {old_size}"
                    )));
                }
            }
            previous = Some((size, root));
            checked += 1;
        }
        Ok(())
    };
    check_due(&tree, &mut checkpoints)?;

    let mut failure = None;
    db.scan(u64::MAX, &mut |row| {
        let index = tree.len();
        let bad = |reason: &str| VerifyFailure::Leaf {
            index,
            reason: reason.to_owned(),
        };
        let outcome = (|| {
            if row.seq < 0 || row.seq as u64 != index {
                return Err(bad(&format!(
                    "missing: the next stored leaf is {}",
                    row.seq
                )));
            }
            let data = row.data.ok_or_else(|| bad("its data is not bytes"))?;
            let leaf: Leaf =
                serde_json::from_slice(data).map_err(|_| bad("not a valid leaf encoding"))?;
            if leaf.seq != index {
                return Err(bad(&format!(
                    "out of place: it records position {}",
                    leaf.seq
                )));
            }
            if row.stored_hash != Some(merkle::leaf_hash(data).as_slice()) {
                return Err(bad("its bytes do not match the hash in the tree"));
            }
            tree.push(data);
            check_due(&tree, &mut checkpoints)
        })();
        match outcome {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(|e| unreadable(&e))?;
    if let Some(f) = failure {
        return Err(f);
    }
    if !tree.is_empty() && checked == 0 {
        return Err(VerifyFailure::Checkpoint {
            size: 0,
            reason: format!(
                "{} leaves are stored but no checkpoint signs any of them",
                tree.len()
            ),
        });
    }
    if let Some((size, _)) = checkpoints.pop() {
        return Err(VerifyFailure::Checkpoint {
            size,
            reason: format!("only {} leaves are stored", tree.len()),
        });
    }
    let root = merkle::root(&tree, tree.len()).map_err(|e| unreadable(&e))?;
    Ok(VerifySummary {
        leaves: tree.len(),
        checkpoints: checked,
        root,
    })
}

/// Verifies an NDJSON export (one canonical leaf per line, as `GET /v1/audit/export` writes it)
/// against a signed checkpoint: the signature, every leaf's position, and the root over the
/// first `checkpoint.size` lines.
pub fn verify_export(
    export: impl std::io::BufRead,
    checkpoint_note: &str,
    verifier_key: &str,
) -> Result<VerifySummary, VerifyFailure> {
    let cp = verify_note(checkpoint_note, verifier_key).map_err(|e| VerifyFailure::Checkpoint {
        size: 0,
        reason: e.to_string(),
    })?;
    let mut tree = merkle::MemoryTree::default();
    for line in export.split(b'\n') {
        let data = line.map_err(|e| VerifyFailure::Unreadable(e.to_string()))?;
        if data.is_empty() {
            continue;
        }
        let index = tree.len();
        let leaf: Leaf = serde_json::from_slice(&data).map_err(|_| VerifyFailure::Leaf {
            index,
            reason: "not a valid leaf encoding".into(),
        })?;
        if leaf.seq != index {
            return Err(VerifyFailure::Leaf {
                index,
                reason: format!("out of place: it records position {}", leaf.seq),
            });
        }
        tree.push(&data);
    }
    if tree.len() < cp.size {
        return Err(VerifyFailure::Checkpoint {
            size: cp.size,
            reason: format!("the export holds only {} leaves", tree.len()),
        });
    }
    let root =
        merkle::root(&tree, cp.size).map_err(|e| VerifyFailure::Unreadable(e.to_string()))?;
    if root != cp.root {
        return Err(VerifyFailure::Checkpoint {
            size: cp.size,
            reason: "the exported leaves do not hash to the signed root".into(),
        });
    }
    Ok(VerifySummary {
        // Only the leaves under the signed root are verified; later lines are not counted.
        leaves: cp.size,
        checkpoints: 1,
        root,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::merkle::NodeStore;
    use rusqlite::params;

    /// A fresh signing key for a test log.
    pub(crate) fn key() -> Arc<LogKey> {
        Arc::new(
            LogKey::from_seed_base64(
                "certgate.test/log",
                &LogKey::generate_seed_base64().unwrap(),
            )
            .unwrap(),
        )
    }

    fn settings() -> WriterSettings {
        WriterSettings {
            queue_capacity: 10_000,
            max_batch: 256,
            checkpoint_interval: Duration::from_millis(0),
            origin: "certgate.test/log".into(),
            group_commit_wait: Duration::ZERO,
            max_db_pages: 0,
            clock: Arc::new(storage::SystemClock),
        }
    }

    fn leaf(i: u64) -> Leaf {
        Leaf {
            request_id: Some(format!("req-{i}")),
            department: Some("11110105MB0000001C".into()),
            method: Some("GET".into()),
            route: Some("/v1/licences/{id}".into()),
            resource: Some(format!("licence-{}", i % 7)),
            matter: Some("M-1".into()),
            latency_us: 120,
            ..Leaf::new(crate::LeafKind::Request, 1_800_000_000_000 + i as i64, 200)
        }
    }

    async fn filled(n: u64) -> (tempfile::TempDir, PathBuf, Arc<LogKey>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access-log.db");
        let key = key();
        let log =
            AccessLog::open(LogBackend::Sqlite(path.clone()), key.clone(), settings()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..n {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(leaf(i)).await.unwrap() },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "every append gets its own position"
        );
        assert_eq!(log.size(), n);
        // Let the writer sign its checkpoint over everything before the test touches the file.
        let mut db = SqliteLog::open(&path).unwrap();
        while latest_checkpoint(&mut db).unwrap().map(|(s, _)| s) != Some(n) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (dir, path, key)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_verifiable_tree_with_proofs() {
        let (_dir, path, key) = filled(500).await;
        let mut db = SqliteLog::open(&path).unwrap();
        let summary = verify_offline(&mut db, &key.verifier_key()).unwrap();
        assert_eq!(summary.leaves, 500);
        assert!(summary.checkpoints >= 1);

        let (size, note) = latest_checkpoint(&mut db).unwrap().unwrap();
        let cp = verify_note(&note, &key.verifier_key()).unwrap();
        assert_eq!(cp.size, size);
        let data = db.leaf(123).unwrap().unwrap();
        let proof = inclusion_proof(&mut db, 123, size).unwrap();
        assert!(merkle::verify_inclusion(
            &merkle::leaf_hash(&data),
            123,
            size,
            &proof,
            &cp.root
        ));
        let old_root = root(&mut db, 100).unwrap();
        let proof = consistency_proof(&mut db, 100, size).unwrap();
        assert!(merkle::verify_consistency(
            100, size, &old_root, &cp.root, &proof
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edited_deleted_and_reordered_leaves_are_found_by_index() {
        for (name, sql, index) in [
            (
                "edit",
                "UPDATE leaves SET data = replace(data, '\"status\":200', '\"status\":201') WHERE seq = 40",
                40,
            ),
            ("delete", "DELETE FROM leaves WHERE seq = 41", 41),
            (
                "reorder",
                "UPDATE leaves SET seq = -1 WHERE seq = 42; UPDATE leaves SET seq = 42 WHERE seq = 43; \
                 UPDATE leaves SET seq = 43 WHERE seq = -1;",
                42,
            ),
        ] {
            let (_dir, path, key) = filled(100).await;
            let mut db = SqliteLog::open(&path).unwrap();
            db.conn().execute_batch(sql).unwrap();
            match verify_offline(&mut db, &key.verifier_key()) {
                Err(VerifyFailure::Leaf { index: i, .. }) => assert_eq!(i, index, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_rewritten_to_hide_an_edit_fails_its_checkpoint_and_refuses_to_open() {
        let (_dir, path, key) = filled(64).await;
        let mut db = SqliteLog::open(&path).unwrap();
        let conn = db.conn();
        // Rewrite leaf 5 and every node above it, as a careful forger would.
        let mut tree = merkle::MemoryTree::default();
        let mut stmt = conn
            .prepare("SELECT seq, data FROM leaves ORDER BY seq")
            .unwrap();
        let rows: Vec<(i64, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(stmt);
        conn.execute("DELETE FROM nodes", []).unwrap();
        for (seq, mut data) in rows {
            if seq == 5 {
                data = String::from_utf8(data)
                    .unwrap()
                    .replace("\"status\":200", "\"status\":201")
                    .into_bytes();
                conn.execute("UPDATE leaves SET data = ?1 WHERE seq = 5", [&data])
                    .unwrap();
            }
            let index = tree.len();
            let nodes = merkle::new_nodes::<std::convert::Infallible>(
                index,
                merkle::leaf_hash(&data),
                |l, i| Ok(tree.node(l, i).unwrap().unwrap()),
            )
            .unwrap();
            tree.push(&data);
            for (l, i, h) in nodes {
                conn.execute(
                    "INSERT INTO nodes (level, idx, hash) VALUES (?1, ?2, ?3)",
                    params![l, i as i64, h.as_slice()],
                )
                .unwrap();
            }
        }
        assert!(matches!(
            verify_offline(&mut db, &key.verifier_key()),
            Err(VerifyFailure::Checkpoint { .. })
        ));
        assert!(matches!(
            AccessLog::open(LogBackend::Sqlite(path), key, settings()),
            Err(LogError::Inconsistent(_))
        ));
    }

    /// Two writers on one PostgreSQL schema, as two gateway nodes: one tree, proofs that
    /// verify, and a tampered leaf found by position.
    #[test]
    fn two_nodes_on_postgres_append_to_one_verifiable_tree() {
        let Some((store, _schema)) =
            storage::pg::test_pool("access_log::two_nodes_on_postgres").unwrap()
        else {
            return;
        };
        let key = key();
        let open = || {
            AccessLog::open(LogBackend::Postgres(store.clone()), key.clone(), settings()).unwrap()
        };
        let (a, b) = (open(), open());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let n = 600u64;
        let mut seqs = rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let log = if i % 2 == 0 { a.clone() } else { b.clone() };
                    tokio::spawn(async move { log.append(leaf(i)).await.unwrap() })
                })
                .collect();
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap());
            }
            seqs
        });
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "one numbering for both nodes"
        );
        let mut db = PgLog::new(store.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while latest_checkpoint(&mut db).unwrap().map(|(s, _)| s) != Some(n) {
            assert!(
                Instant::now() < deadline,
                "no checkpoint over both nodes' leaves"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let summary = verify_offline(&mut db, &key.verifier_key()).unwrap();
        assert_eq!(summary.leaves, n);
        let (size, note) = latest_checkpoint(&mut db).unwrap().unwrap();
        let cp = verify_note(&note, &key.verifier_key()).unwrap();
        for index in [0, 1, 299, 598, 599] {
            let data = db.leaf(index).unwrap().unwrap();
            let proof = inclusion_proof(&mut db, index, size).unwrap();
            assert!(merkle::verify_inclusion(
                &merkle::leaf_hash(&data),
                index,
                size,
                &proof,
                &cp.root
            ));
        }
        let mut filter = EntryFilter {
            after: 100,
            resource: Some("licence-3".into()),
            ..EntryFilter::default()
        };
        let page = db.entries(&filter, 5).unwrap();
        assert_eq!(page.len(), 5);
        filter.resource = Some("nothing".into());
        assert!(db.entries(&filter, 5).unwrap().is_empty());

        store
            .with(|c| -> Result<(), LogError> {
                c.execute(
                    "UPDATE log_leaves SET data = convert_to(replace(convert_from(data, 'UTF8'),                      '\"status\":200', '\"status\":201'), 'UTF8') WHERE seq = 40",
                    &[],
                )?;
                Ok(())
            })
            .unwrap();
        match verify_offline(&mut db, &key.verifier_key()) {
            Err(VerifyFailure::Leaf { index, .. }) => assert_eq!(index, 40),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leaf_bytes_are_canonical() {
        let a = leaf(1).to_bytes();
        let b: Leaf = serde_json::from_slice(&a).unwrap();
        assert_eq!(b.to_bytes(), a);
        assert!(
            String::from_utf8(a)
                .unwrap()
                .starts_with("{\"v\":1,\"seq\":0,\"time_ms\":")
        );
    }
}
