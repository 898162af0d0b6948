//! The access log of one node in append-only segment files (`access-log/` in the data
//! directory): the durable write is one sequential append and one `fdatasync` per batch.
//!
//! ```text
//! access-log/
//!   segments/<first seq, 20 digits>.seg   frames, appended; a new file past SEGMENT_BYTES
//!   nodes/<level>.bin                     32-byte subtree hashes, hash i of a level at 32·i
//!   checkpoints.bin                       signed checkpoints, appended
//!   index.db                              the auditors' query index (SQLite), derived
//! ```
//!
//! A frame is one batch: a 24-byte header (`CGL1`, first seq, leaf count, payload length,
//! CRC-32 of those and the payload) and the payload, the leaves' canonical bytes each behind
//! its length, compressed with DEFLATE. The leaves are the log: a batch is acknowledged only
//! after its frame is on disk. The subtree hashes are written with the batch but made durable
//! only before each checkpoint; at start the leaves after the last checkpoint are read again
//! and their hashes recomputed, and a frame cut short by a crash (never acknowledged, never
//! under a checkpoint) is cut off. Leaves a checkpoint signs are never cut or recomputed: if
//! they are not all there the writer refuses to open. The query index is built after the
//! acknowledgement, by a thread of its own every [`INDEX_INTERVAL`]. Its unit is a run of
//! leaves (a batch as written): the unit's time span, and one posting for each key (a
//! department, holder, resource, route or outcome, hashed with its field) any of its leaves
//! has — so a busy batch of one department's requests is a handful of rows, not a row and
//! four index entries per leaf. A query takes the units holding every key it names and reads
//! their leaves to decide. The writer hands each durable batch's unit over in memory (no
//! segment read, no decompression, no JSON); whatever the hand-over does not hold (after a
//! restart, or when more than [`HANDOFF_ROWS`] leaves wait) is read from the segments.
//! Queries read the leaves the index has not reached yet from the segments, so they see
//! every committed leaf.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flate2::Compression;
use flate2::read::DeflateDecoder;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::db::{EntryFilter, Frontier, LogDb, LogError, ScannedLeaf, prepare_batch};
use crate::leaf::{Leaf, Outcome};
use crate::merkle::{self, Hash};

/// A segment file takes new frames until it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// How often the query index takes the leaves committed since its last round.
pub const INDEX_INTERVAL: Duration = Duration::from_millis(50);
/// Leaves (about: whole units) the indexer inserts in one transaction before it lets the
/// request threads run:
/// small enough that a burst of indexing does not hold the core for milliseconds.
const INDEX_CHUNK: u64 = 256;
/// The writer writes zeros this far past the last frame ahead of the frames, so that a
/// batch's `fdatasync` writes only its data: the file's length (metadata) changes once per
/// this many bytes, not with every batch.
const ZERO_AHEAD: u64 = 1 << 20;
/// Leaves whose index units the writer keeps for the indexer at most; past this it drops
/// them and the indexer reads those leaves from the segments instead.
pub const HANDOFF_ROWS: usize = 1 << 16;
/// Most bytes one frame's payload may have (compressed or not): a longer one is corrupt.
const MAX_PAYLOAD: u32 = 64 << 20;
const FRAME_MAGIC: &[u8; 4] = b"CGL1";
const CHECKPOINT_MAGIC: &[u8; 4] = b"CGC1";
const HEADER: usize = 24;
/// One entry of the in-memory position index per this many leaves (at least one per frame
/// that starts a segment): finding a leaf reads at most this many frame headers.
const SPARSE_EVERY: u64 = 64;

/// Where one frame is.
#[derive(Debug, Clone, Copy)]
struct FramePos {
    first_seq: u64,
    segment: usize,
    offset: u64,
}

/// What the writer and the readers of one process share: the segment files and a sparse
/// index of frame positions, so that a reader never scans the segments again.
#[derive(Debug, Default)]
struct Shared {
    /// First seq and path of each segment, in order.
    segments: Vec<(u64, PathBuf)>,
    /// Positions of some frames, in order.
    sparse: Vec<FramePos>,
    /// Leaves in complete frames.
    size: u64,
    /// Where the next frame goes (the end of the last segment).
    end: u64,
    /// A writer of this process keeps this current: readers need not look at the files.
    live_writer: bool,
}

/// The directory of a segment log, shared by its writer and readers in one process.
#[derive(Debug, Clone)]
pub struct SegmentDir {
    dir: PathBuf,
    shared: Arc<RwLock<Shared>>,
}

impl SegmentDir {
    /// The log in `dir`, read from the segments as they are. The writer, opened from this,
    /// repairs what a crash left before anything else reads it.
    pub fn new(dir: &Path) -> SegmentDir {
        SegmentDir {
            dir: dir.to_path_buf(),
            shared: Arc::new(RwLock::new(Shared::default())),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy)]
struct Header {
    first_seq: u64,
    count: u32,
    payload_len: u32,
    crc: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER]) -> Option<Header> {
        if &b[..4] != FRAME_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[4..12]);
        let h = Header {
            first_seq: u64::from_le_bytes(seq),
            count: u32_at(12),
            payload_len: u32_at(16),
            crc: u32_at(20),
        };
        (h.count > 0 && h.payload_len <= MAX_PAYLOAD).then_some(h)
    }

    fn bytes(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..4].copy_from_slice(FRAME_MAGIC);
        b[4..12].copy_from_slice(&self.first_seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    fn crc_of(first_seq: u64, count: u32, payload: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&first_seq.to_le_bytes());
        h.update(&count.to_le_bytes());
        h.update(&(payload.len() as u32).to_le_bytes());
        h.update(payload);
        h.finalize()
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |e| LogError::Store(format!("{what}: {e}"))
}

/// Makes `file` zeros from `zeroed` (its length) to `to` when a frame ending at `needed` would
/// pass its length; returns the length after. The zeros reach the disk with the next
/// `fdatasync`, and with them the new length, once for [`ZERO_AHEAD`] bytes of frames.
fn zero_fill(file: &File, zeroed: u64, needed: u64, to: u64) -> std::io::Result<u64> {
    if needed <= zeroed {
        return Ok(zeroed);
    }
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = zeroed;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(to)
}

/// Level `level`'s bit in [`SegmentLog`]'s set of node files to sync (levels past 63 do not
/// occur: a tree of 2^64 leaves).
fn level_bit(level: u32) -> u64 {
    1u64.checked_shl(level).unwrap_or(0)
}

/// A batch's bytes compressed with DEFLATE by the writer's one compressor (what
/// [`DeflateDecoder`] reads back).
fn compress(c: &mut flate2::Compress, raw: &[u8]) -> Result<Vec<u8>, LogError> {
    c.reset();
    // DEFLATE's worst case is a few bytes per 16 KiB block over the input.
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 1024 + 64);
    loop {
        let before = c.total_in() as usize;
        let status = c
            .compress_vec(&raw[before..], &mut out, flate2::FlushCompress::Finish)
            .map_err(|e| LogError::Store(format!("cannot compress a batch: {e}")))?;
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            _ => out.reserve(out.capacity().max(64)),
        }
    }
}

/// Reads the frame at `offset` of `file` (of length `len`): its header and payload, when it is
/// whole and its checksum holds.
fn read_frame(file: &File, offset: u64, len: u64) -> Option<(Header, Vec<u8>)> {
    if offset + HEADER as u64 > len {
        return None;
    }
    let mut hb = [0u8; HEADER];
    file.read_exact_at(&mut hb, offset).ok()?;
    let h = Header::parse(&hb)?;
    if offset + HEADER as u64 + u64::from(h.payload_len) > len {
        return None;
    }
    let mut payload = vec![0u8; h.payload_len as usize];
    file.read_exact_at(&mut payload, offset + HEADER as u64)
        .ok()?;
    (Header::crc_of(h.first_seq, h.count, &payload) == h.crc).then_some((h, payload))
}

/// The leaves of a frame's payload.
fn decode(payload: &[u8], count: u32) -> Result<Vec<Vec<u8>>, LogError> {
    let mut raw = Vec::new();
    DeflateDecoder::new(payload)
        .take(u64::from(MAX_PAYLOAD) * 4)
        .read_to_end(&mut raw)
        .map_err(io("a frame does not decompress"))?;
    let mut out = Vec::with_capacity(count as usize);
    let mut rest = raw.as_slice();
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + n {
            break;
        }
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    if out.len() != count as usize || !rest.is_empty() {
        return Err(LogError::Store(
            "a frame holds other leaves than its header says".into(),
        ));
    }
    Ok(out)
}

/// A frame's first seq and its leaves.
type DecodedFrame = (u64, Vec<Vec<u8>>);

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segment log: the writer (one per directory: the node that owns the data directory) or
/// a reader beside it.
pub struct SegmentLog {
    dir: SegmentDir,
    files: BTreeMap<usize, File>,
    levels: Vec<Option<File>>,
    /// The levels whose node files this handle changed since it last synced them (bit `l`
    /// for level `l`): a checkpoint syncs those and no others.
    unsynced_levels: u64,
    /// The last frame read.
    cached: Option<DecodedFrame>,
    writer: Option<WriterState>,
    index: Option<Connection>,
    /// Subtree hashes of the leaves after the last checkpoint, recomputed from the leaves by a
    /// reader of a log no writer holds (they are not durable until the next checkpoint).
    overlay: std::collections::HashMap<(u32, u64), Hash>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir.dir)
            .field("writer", &self.writer.is_some())
            .finish_non_exhaustive()
    }
}

struct WriterState {
    /// The last segment, open for writing at its end.
    tail: File,
    /// The last segment's length: zeros from its end to here.
    zeroed: u64,
    /// Leaves since the last entry of the sparse index.
    since_sparse: u64,
    /// Total bytes at most (0: no cap); reaching it is a full disk.
    max_bytes: u64,
    /// Bytes in all segments.
    bytes: u64,
    /// Stops the indexer when the writer goes.
    stop: Arc<AtomicBool>,
    /// The last checkpoint's size.
    checkpointed: u64,
    /// The index units of durable batches, for the indexer.
    handoff: Arc<Handoff>,
    /// One compressor for every batch (its tables are allocated once).
    compress: flate2::Compress,
}

/// One unit of the query index: a run of leaves (a batch as the writer wrote it), the keys
/// any of them can be found by and the span of their times. A query takes the units that
/// hold every key it asks for, and reads their leaves to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexFrame {
    first_seq: u64,
    count: u64,
    min_time: i64,
    max_time: i64,
    /// Sorted, without repeats.
    keys: Vec<i64>,
}

impl IndexFrame {
    fn of<'a>(first_seq: u64, leaves: impl IntoIterator<Item = &'a Leaf>) -> IndexFrame {
        let mut frame = IndexFrame {
            first_seq,
            count: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            keys: Vec::new(),
        };
        for leaf in leaves {
            frame.count += 1;
            frame.min_time = frame.min_time.min(leaf.time_ms);
            frame.max_time = frame.max_time.max(leaf.time_ms);
            frame.keys.extend(leaf_keys(leaf));
        }
        frame.keys.sort_unstable();
        frame.keys.dedup();
        frame
    }
}

/// The keys a leaf can be found by, one per field a query may name.
fn leaf_keys(leaf: &Leaf) -> impl Iterator<Item = i64> + '_ {
    [
        leaf.department
            .as_deref()
            .map(|t| key(Field::Department, t)),
        leaf.holder.as_deref().map(|t| key(Field::Holder, t)),
        leaf.resource.as_deref().map(|t| key(Field::Resource, t)),
        leaf.route.as_deref().map(|t| key(Field::Route, t)),
        Some(key(Field::Outcome, outcome_name(leaf.outcome))),
    ]
    .into_iter()
    .flatten()
}

/// The index units of durable batches not yet taken by the indexer, in seq order, holding
/// at most [`HANDOFF_ROWS`] leaves.
#[derive(Debug, Default)]
struct Handoff {
    frames: std::sync::Mutex<(Vec<IndexFrame>, u64)>,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<IndexFrame>, u64)> {
        // A push or a swap of a vector: nothing in it can panic half-way.
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a durable batch's unit, unless the indexer has fallen that far behind.
    fn push(&self, frame: IndexFrame) {
        let mut kept = self.lock();
        if kept.1 + frame.count <= HANDOFF_ROWS as u64 {
            kept.1 += frame.count;
            kept.0.push(frame);
        }
    }

    fn take(&self) -> Vec<IndexFrame> {
        let mut kept = self.lock();
        kept.1 = 0;
        std::mem::take(&mut kept.0)
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.stop.store(true, Ordering::SeqCst);
            self.write_shared().live_writer = false;
        }
    }
}

impl SegmentLog {
    /// The writer of `dir`: repairs what a crash left (a frame cut short at the end of the last
    /// segment is cut off; the subtree hashes after the last checkpoint are recomputed from the
    /// leaves), fills the shared position index and starts the query indexer. `max_bytes`
    /// caps the segments (0: no cap).
    pub fn open_writer(dir: &SegmentDir, max_bytes: u64) -> Result<SegmentLog, LogError> {
        for sub in ["segments", "nodes"] {
            std::fs::create_dir_all(dir.dir.join(sub)).map_err(io("cannot create the log"))?;
        }
        let mut log = SegmentLog::reader_of(dir.clone());
        // Leaves a signed checkpoint covers are never cut off or recomputed: if they are not
        // all there, the writer refuses to open and leaves the files as they are.
        let signed = log.read_checkpoints()?.0.last().map_or(0, |(s, _)| *s);
        let bytes = log.load(Some(signed))?;
        let stored = log.read_shared().size;
        if signed > stored {
            return Err(LogError::Inconsistent(format!(
                "checkpoint covers {signed} leaves but {stored} are stored"
            )));
        }
        let tail = {
            let shared = log.read_shared();
            match shared.segments.last() {
                Some((_, path)) => OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io("cannot open the last segment"))?,
                None => {
                    drop(shared);
                    let (file, path) = log.new_segment(0)?;
                    let mut shared = log.write_shared();
                    shared.segments.push((0, path));
                    file
                }
            }
        };
        let checkpointed = log.truncate_checkpoints()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handoff = Arc::new(Handoff::default());
        let zeroed = tail.metadata().map_err(io("cannot read a segment"))?.len();
        log.writer = Some(WriterState {
            tail,
            zeroed,
            since_sparse: 0,
            max_bytes,
            bytes,
            stop: stop.clone(),
            checkpointed,
            handoff: handoff.clone(),
            compress: flate2::Compress::new(Compression::fast(), false),
        });
        log.repair_nodes(checkpointed)?;
        log.write_shared().live_writer = true;
        spawn_indexer(dir.clone(), stop, handoff)?;
        Ok(log)
    }

    /// A reader beside the writer of this process.
    pub fn reader(dir: &SegmentDir) -> SegmentLog {
        SegmentLog::reader_of(dir.clone())
    }

    /// A reader of a directory no writer of this process holds (offline tools): reads every
    /// frame header once to find its leaves.
    pub fn open_read_only(path: &Path) -> Result<SegmentLog, LogError> {
        let mut log = SegmentLog::reader_of(SegmentDir::new(path));
        log.load(None)?;
        let signed = log.read_checkpoints()?.0.last().map_or(0, |(s, _)| *s);
        let mut overlay = std::collections::HashMap::new();
        log.recompute(signed, &mut |level, idx, hash| {
            overlay.insert((level, idx), *hash);
            Ok(())
        })?;
        log.overlay = overlay;
        Ok(log)
    }

    fn reader_of(dir: SegmentDir) -> SegmentLog {
        SegmentLog {
            dir,
            files: BTreeMap::new(),
            levels: Vec::new(),
            unsynced_levels: 0,
            cached: None,
            writer: None,
            index: None,
            overlay: std::collections::HashMap::new(),
        }
    }

    fn read_shared(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        self.dir.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_shared(&self) -> std::sync::RwLockWriteGuard<'_, Shared> {
        self.dir.shared.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every segment's frame headers into the shared index. With `repair` (the size the
    /// last checkpoint signs), cuts off a frame cut short at the end of the last segment when
    /// no checkpoint covers it. Returns the bytes in all segments.
    fn load(&mut self, repair: Option<u64>) -> Result<u64, LogError> {
        let seg_dir = self.dir.dir.join("segments");
        let mut names: Vec<(u64, PathBuf)> = match std::fs::read_dir(&seg_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let first = name.strip_suffix(".seg")?.parse().ok()?;
                    Some((first, e.path()))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("cannot list the segments")(e)),
        };
        names.sort();
        let mut shared = Shared::default();
        let mut total = 0u64;
        let last = names.len().saturating_sub(1);
        for (i, (first, path)) in names.into_iter().enumerate() {
            if first != shared.size {
                return Err(LogError::Inconsistent(format!(
                    "segment {} starts at leaf {first}, but {} leaves come before it",
                    path.display(),
                    shared.size
                )));
            }
            let file = File::open(&path).map_err(io("cannot open a segment"))?;
            let len = file.metadata().map_err(io("cannot read a segment"))?.len();
            let mut offset = 0u64;
            let mut since = SPARSE_EVERY;
            while offset < len {
                let mut hb = [0u8; HEADER];
                let header = if offset + HEADER as u64 <= len {
                    file.read_exact_at(&mut hb, offset)
                        .map_err(io("cannot read a segment"))?;
                    Header::parse(&hb)
                } else {
                    None
                };
                let whole = header.filter(|h| {
                    h.first_seq == shared.size
                        && offset + HEADER as u64 + u64::from(h.payload_len) <= len
                });
                // The checksum is checked on the last segment's frames (where a crash can cut
                // one short); earlier ones are checked whenever a frame is read.
                let good = match whole {
                    Some(h) if i == last => read_frame(&file, offset, len)
                        .is_some_and(|(r, _)| r.first_seq == h.first_seq),
                    Some(_) => true,
                    None => false,
                };
                let Some(h) = whole.filter(|_| good) else {
                    if i == last && repair.is_some_and(|signed| shared.size >= signed) {
                        // The writer's zeros ahead of the frames are no frame cut short.
                        let zeros_ahead = header.is_none()
                            && offset + HEADER as u64 <= len
                            && hb == [0u8; HEADER];
                        if !zeros_ahead {
                            tracing::warn!(
                                segment = %path.display(),
                                offset,
                                "the access log's last frame was cut short (never acknowledged); cutting it off"
                            );
                        }
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io("cannot repair a segment"))?;
                        f.set_len(offset).map_err(io("cannot repair a segment"))?;
                        f.sync_all().map_err(io("cannot repair a segment"))?;
                        break;
                    }
                    if i == last && repair.is_none() {
                        break; // a frame being written, as a reader sees it
                    }
                    return Err(LogError::Inconsistent(format!(
                        "segment {} is damaged at byte {offset}",
                        path.display()
                    )));
                };
                if since >= SPARSE_EVERY {
                    shared.sparse.push(FramePos {
                        first_seq: h.first_seq,
                        segment: i,
                        offset,
                    });
                    since = 0;
                }
                since += u64::from(h.count);
                shared.size += u64::from(h.count);
                offset += HEADER as u64 + u64::from(h.payload_len);
            }
            total += offset;
            shared.end = offset;
            shared.segments.push((first, path));
        }
        *self.write_shared() = shared;
        Ok(total)
    }

    /// Picks up frames other handles appended since this one looked (readers of another
    /// process; in one process the writer keeps the shared index current).
    fn refresh(&mut self) -> Result<(), LogError> {
        if self.writer.is_some() || self.read_shared().live_writer {
            return Ok(());
        }
        let (segment, path, mut offset, mut size) = {
            let s = self.read_shared();
            match s.segments.last() {
                Some((_, p)) => (s.segments.len() - 1, p.clone(), s.end, s.size),
                None => return Ok(()),
            }
        };
        let file = File::open(&path).map_err(io("cannot open a segment"))?;
        let len = file.metadata().map_err(io("cannot read a segment"))?.len();
        let mut found = Vec::new();
        while let Some((h, _)) = read_frame(&file, offset, len) {
            if h.first_seq != size {
                break;
            }
            found.push(FramePos {
                first_seq: h.first_seq,
                segment,
                offset,
            });
            size += u64::from(h.count);
            offset += HEADER as u64 + u64::from(h.payload_len);
        }
        let mut s = self.write_shared();
        if s.size < size {
            for frame in found {
                if s.sparse
                    .last()
                    .is_none_or(|p| frame.first_seq >= p.first_seq + SPARSE_EVERY)
                {
                    s.sparse.push(frame);
                }
            }
            s.size = size;
            s.end = offset;
        }
        // A new segment a writer of another process started.
        let next = self.dir.dir.join("segments").join(segment_name(s.size));
        if next.exists() && s.segments.last().is_some_and(|(f, _)| *f != s.size) {
            let first = s.size;
            s.segments.push((first, next));
            s.end = 0;
            drop(s);
            return self.refresh();
        }
        Ok(())
    }

    fn new_segment(&self, first_seq: u64) -> Result<(File, PathBuf), LogError> {
        let path = self.dir.dir.join("segments").join(segment_name(first_seq));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot create a segment"))?;
        File::open(self.dir.dir.join("segments"))
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the segment directory"))?;
        Ok((file, path))
    }

    fn segment_file(&mut self, segment: usize) -> Result<&File, LogError> {
        if !self.files.contains_key(&segment) {
            let path = self
                .read_shared()
                .segments
                .get(segment)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| LogError::Store("no such segment".into()))?;
            let file = File::open(path).map_err(io("cannot open a segment"))?;
            self.files.insert(segment, file);
        }
        self.files
            .get(&segment)
            .ok_or_else(|| LogError::Store("no such segment".into()))
    }

    /// The leaves of the frame holding `seq`: its first seq and the leaves.
    fn frame_of(&mut self, seq: u64) -> Result<Option<DecodedFrame>, LogError> {
        if let Some((first, leaves)) = &self.cached
            && seq >= *first
            && seq < first + leaves.len() as u64
        {
            return Ok(self.cached.clone());
        }
        self.refresh()?;
        let start = {
            let s = self.read_shared();
            if seq >= s.size {
                return Ok(None);
            }
            let i = s.sparse.partition_point(|p| p.first_seq <= seq);
            let Some(p) = i.checked_sub(1).and_then(|i| s.sparse.get(i)) else {
                return Ok(None);
            };
            *p
        };
        let (mut segment, mut offset) = (start.segment, start.offset);
        loop {
            let file = self.segment_file(segment)?;
            let len = file.metadata().map_err(io("cannot read a segment"))?.len();
            if offset >= len {
                segment += 1;
                offset = 0;
                if segment >= self.read_shared().segments.len() {
                    return Ok(None);
                }
                continue;
            }
            let (h, payload) = read_frame(file, offset, len).ok_or_else(|| {
                LogError::Inconsistent(format!("a frame before leaf {seq} is damaged"))
            })?;
            if seq < h.first_seq + u64::from(h.count) {
                let leaves = decode(&payload, h.count)?;
                self.cached = Some((h.first_seq, leaves));
                return Ok(self.cached.clone());
            }
            offset += HEADER as u64 + u64::from(h.payload_len);
        }
    }

    fn level_file(&mut self, level: u32, create: bool) -> Result<Option<&File>, LogError> {
        let l = level as usize;
        if self.levels.len() <= l {
            self.levels.resize_with(l + 1, || None);
        }
        if self.levels[l].is_none() {
            let path = self.level_path(level);
            let file = if create {
                Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(io("cannot open a node file"))?,
                )
            } else {
                match File::open(&path) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io("cannot open a node file")(e)),
                }
            };
            self.levels[l] = file;
        }
        Ok(self.levels[l].as_ref())
    }

    /// Reads the leaves `from..end` that are stored, keeping those that meet `filter` in `out`
    /// until it holds `wanted`; returns the position after the last leaf read.
    fn collect(
        &mut self,
        from: u64,
        end: u64,
        filter: &EntryFilter,
        wanted: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<u64, LogError> {
        let mut seq = from;
        while seq < end && out.len() < wanted {
            let Some((first, leaves)) = self.frame_of(seq)? else {
                break;
            };
            let upto = end.min(first + leaves.len() as u64);
            for bytes in leaves
                .into_iter()
                .skip((seq - first) as usize)
                .take((upto - seq) as usize)
            {
                if out.len() >= wanted {
                    break;
                }
                if matches(filter, &bytes) {
                    out.push(bytes);
                }
                seq += 1;
            }
        }
        Ok(seq)
    }

    /// Writes a batch's new subtree hashes, one write for each run of neighbours in a level
    /// (a batch's hashes of one level are mostly side by side).
    fn write_nodes(&mut self, mut nodes: Vec<(u32, u64, Hash)>) -> Result<(), LogError> {
        nodes.sort_unstable_by_key(|&(level, idx, _)| (level, idx));
        let mut run: Vec<u8> = Vec::with_capacity(nodes.len() * 32);
        let mut i = 0;
        while i < nodes.len() {
            let (level, first, _) = nodes[i];
            run.clear();
            let mut next = first;
            while let Some(&(l, idx, hash)) = nodes.get(i) {
                if l != level || idx != next {
                    break;
                }
                run.extend_from_slice(&hash);
                next += 1;
                i += 1;
            }
            let file = self
                .level_file(level, true)?
                .ok_or_else(|| LogError::Store("no node file".into()))?;
            file.write_all_at(&run, first * 32)
                .map_err(io("cannot write a subtree hash"))?;
            self.unsynced_levels |= level_bit(level);
        }
        Ok(())
    }

    /// Recomputes the subtree hashes of the leaves after `from` (the last checkpoint's size):
    /// those were not yet made durable when the writer stopped.
    fn repair_nodes(&mut self, from: u64) -> Result<(), LogError> {
        let size = self.read_shared().size;
        // Where every level still holds all its hashes: at most `from`.
        let mut keep = from.min(size);
        for level in 0..64u32 {
            if (keep >> level) == 0 {
                break;
            }
            let have = match self.level_file(level, true)? {
                Some(f) => f.metadata().map_err(io("cannot read a node file"))?.len() / 32,
                None => 0,
            };
            keep = keep.min(have << level);
        }
        // Every node file there is is cut to what is kept (one a cut-off tail reached past the
        // tree's height too); none is made for a level the tree has not reached.
        for level in 0..64u32 {
            let exists = self.levels.get(level as usize).is_some_and(Option::is_some)
                || self.level_path(level).exists();
            if !exists {
                continue;
            }
            if let Some(f) = self.level_file(level, true)? {
                f.set_len((keep >> level) * 32)
                    .map_err(io("cannot repair a node file"))?;
                self.unsynced_levels |= level_bit(level);
            }
        }
        self.recompute(keep, &mut |_, _, _| Ok(()))
    }

    /// Computes the subtree hashes of the leaves from `from` on, from the leaves: each goes to
    /// `sink`, and to the node files when this handle writes.
    fn recompute(
        &mut self,
        from: u64,
        sink: &mut dyn FnMut(u32, u64, &Hash) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let size = self.read_shared().size;
        let mut frontier = Frontier::new();
        let mut seq = from;
        while seq < size {
            let Some((first, leaves)) = self.frame_of(seq)? else {
                break;
            };
            for (i, bytes) in leaves.iter().enumerate().skip((seq - first) as usize) {
                let at = first + i as u64;
                let nodes = merkle::new_nodes(at, merkle::leaf_hash(bytes), |level, idx| {
                    if let Some((i, h)) = frontier.get(&level)
                        && *i == idx
                    {
                        return Ok(*h);
                    }
                    self.read_node(level, idx)?
                        .ok_or_else(|| LogError::Store(format!("subtree {level}/{idx} is missing")))
                })?;
                for &(level, idx, hash) in &nodes {
                    frontier.insert(level, (idx, hash));
                    sink(level, idx, &hash)?;
                }
                if self.writer.is_some() {
                    self.write_nodes(nodes)?;
                }
            }
            seq = first + leaves.len() as u64;
        }
        Ok(())
    }

    fn read_node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, LogError> {
        if let Some(h) = self.overlay.get(&(level, index)) {
            return Ok(Some(*h));
        }
        let Some(file) = self.level_file(level, false)? else {
            return Ok(None);
        };
        let mut hash = [0u8; 32];
        match file.read_exact_at(&mut hash, index * 32) {
            Ok(()) => Ok(Some(hash)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io("cannot read a subtree hash")(e)),
        }
    }

    /// Makes the node files this handle changed durable. Only those: each sync is a flush of
    /// the disk's cache, and a checkpoint that synced every level's file (64 of them) held
    /// the writer, and every request waiting for it, for 64 flushes a second. They are synced
    /// side by side, each from a thread of its own, so that their flushes overlap.
    fn sync_nodes(&mut self) -> Result<(), LogError> {
        let unsynced = self.unsynced_levels;
        let files: Vec<(u64, &File)> = self
            .levels
            .iter()
            .enumerate()
            .filter_map(|(level, file)| {
                let bit = level_bit(level as u32);
                file.as_ref()
                    .filter(|_| unsynced & bit != 0)
                    .map(|f| (bit, f))
            })
            .collect();
        let (synced, failed) = std::thread::scope(|scope| {
            let syncs: Vec<_> = files
                .iter()
                .map(|&(bit, file)| {
                    let sync = std::thread::Builder::new()
                        .name("access-log-nodes".into())
                        .spawn_scoped(scope, move || file.sync_data());
                    // No thread to be had: this one syncs the file.
                    (bit, sync.map_err(|_| file.sync_data()))
                })
                .collect();
            let mut synced = 0u64;
            let mut failed = None;
            for (bit, sync) in syncs {
                let result = match sync {
                    Ok(thread) => thread
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("the sync panicked"))),
                    Err(inline) => inline,
                };
                match result {
                    Ok(()) => synced |= bit,
                    Err(e) => failed = Some(e),
                }
            }
            (synced, failed)
        });
        self.unsynced_levels &= !synced;
        match failed {
            Some(e) => Err(io("cannot sync a node file")(e)),
            None => Ok(()),
        }
    }

    fn level_path(&self, level: u32) -> PathBuf {
        self.dir.dir.join("nodes").join(format!("{level}.bin"))
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.dir.dir.join("checkpoints.bin")
    }

    /// Every checkpoint record that is whole, and the length they take.
    fn read_checkpoints(&self) -> Result<(Vec<(u64, String)>, u64), LogError> {
        let bytes = match std::fs::read(self.checkpoint_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(io("cannot read the checkpoints")(e)),
        };
        let mut out = Vec::new();
        let mut at = 0usize;
        while bytes.len() >= at + 28 && &bytes[at..at + 4] == CHECKPOINT_MAGIC {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[i..i + 8]);
                u64::from_le_bytes(b)
            };
            let len =
                u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
                    as usize;
            let crc =
                u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
            let body = at + 12;
            if bytes.len() < body + 16 + len {
                break;
            }
            if crc32fast::hash(&bytes[body..body + 16 + len]) != crc {
                break;
            }
            let size = word(body);
            let Ok(note) = std::str::from_utf8(&bytes[body + 16..body + 16 + len]) else {
                break;
            };
            out.push((size, note.to_owned()));
            at = body + 16 + len;
        }
        Ok((out, at as u64))
    }

    /// Cuts off a checkpoint record a crash left half-written; the last checkpoint's size.
    fn truncate_checkpoints(&mut self) -> Result<u64, LogError> {
        let (all, whole) = self.read_checkpoints()?;
        let path = self.checkpoint_path();
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > whole
        {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("cannot repair the checkpoints"))?;
            f.set_len(whole)
                .map_err(io("cannot repair the checkpoints"))?;
            f.sync_all().map_err(io("cannot repair the checkpoints"))?;
        }
        let size = self.read_shared().size;
        Ok(all.last().map_or(0, |(s, _)| *s).min(size))
    }

    /// The query index, opened on first use.
    fn index(&mut self) -> Result<Option<&Connection>, LogError> {
        if self.index.is_none() {
            let path = self.dir.dir.join("index.db");
            if !path.exists() {
                return Ok(None);
            }
            let conn =
                Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            self.index = Some(conn);
        }
        Ok(self.index.as_ref())
    }

    /// Bytes in all segments (the writer's count).
    pub fn bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.bytes)
    }
}

impl LogDb for SegmentLog {
    fn size(&mut self) -> Result<u64, LogError> {
        self.refresh()?;
        Ok(self.read_shared().size)
    }

    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, LogError> {
        let size = self.size()?;
        if (index + 1) << level > size {
            return Ok(None);
        }
        self.read_node(level, index)
    }

    fn checkpoints(&mut self, latest_only: bool) -> Result<Vec<(u64, String)>, LogError> {
        let (mut all, _) = self.read_checkpoints()?;
        if latest_only {
            Ok(all.pop().into_iter().collect())
        } else {
            Ok(all)
        }
    }

    fn leaf(&mut self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self
            .frame_of(seq)?
            .and_then(|(first, leaves)| leaves.into_iter().nth((seq - first) as usize)))
    }

    fn entries(&mut self, filter: &EntryFilter, limit: u32) -> Result<Vec<Vec<u8>>, LogError> {
        let wanted = limit as usize;
        let mut out = Vec::new();
        let mut after = filter.after;
        // The indexed leaves through the index: the units holding every key asked for (its
        // 64-bit keys narrow; each leaf decides) …
        let keys = filter_keys(filter);
        let indexed = match self.index()? {
            Some(index) => index_end(index)? as i64,
            None => 0,
        };
        // The first unit in the time range asked for (the same for every page of units).
        let in_time = match (filter.from_ms, self.index()?) {
            (Some(from), Some(index)) => first_unit_from(index, from)?,
            _ => Some(0),
        };
        while let Some(in_time) = in_time
            && after.saturating_add(1) < indexed
            && out.len() < wanted
        {
            let Some(index) = self.index()? else { break };
            let units = candidate_units(index, filter, &keys, after, in_time)?;
            if units.is_empty() {
                break;
            }
            for (first, count) in units {
                let from = first.max(after.saturating_add(1)) as u64;
                let next = self.collect(from, (first + count) as u64, filter, wanted, &mut out)?;
                if out.len() >= wanted {
                    // Resumed after the last leaf read.
                    after = after.max(next as i64 - 1);
                    break;
                }
                after = after.max(first + count - 1);
            }
        }
        if out.len() >= wanted {
            return Ok(out);
        }
        after = after.max(indexed - 1);
        // … and the newest, not indexed yet, read directly: a query sees every committed leaf.
        let size = self.size()?;
        let from = after.saturating_add(1).max(0) as u64;
        self.collect(from, size, filter, wanted, &mut out)?;
        Ok(out)
    }

    fn scan(
        &mut self,
        size: u64,
        f: &mut dyn FnMut(ScannedLeaf<'_>) -> bool,
    ) -> Result<(), LogError> {
        let stored = self.size()?.min(size);
        let segments: Vec<PathBuf> = self
            .read_shared()
            .segments
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        let mut hashes = match self.level_file(0, false)? {
            Some(file) => Some(BufReader::new(
                file.try_clone()
                    .map_err(io("cannot read the leaf hashes"))?,
            )),
            None => None,
        };
        let mut seq = 0u64;
        for path in segments {
            let mut file = BufReader::new(File::open(path).map_err(io("cannot open a segment"))?);
            while seq < stored {
                let mut hb = [0u8; HEADER];
                if file.read_exact(&mut hb).is_err() {
                    break;
                }
                let Some(h) = Header::parse(&hb) else {
                    return Err(LogError::Inconsistent(format!(
                        "the frame at leaf {seq} is damaged"
                    )));
                };
                let mut payload = vec![0u8; h.payload_len as usize];
                file.read_exact(&mut payload)
                    .map_err(io("cannot read a segment"))?;
                if Header::crc_of(h.first_seq, h.count, &payload) != h.crc {
                    return Err(LogError::Inconsistent(format!(
                        "the frame at leaf {seq} fails its checksum"
                    )));
                }
                for bytes in decode(&payload, h.count)? {
                    if seq >= stored {
                        return Ok(());
                    }
                    let mut hash = [0u8; 32];
                    let from_file = hashes
                        .as_mut()
                        .and_then(|r| r.read_exact(&mut hash).ok())
                        .is_some();
                    let stored_hash = match self.overlay.get(&(0, seq)) {
                        Some(h) => Some(&h[..]),
                        None => from_file.then_some(&hash[..]),
                    };
                    let go_on = f(ScannedLeaf {
                        seq: seq as i64,
                        data: Some(&bytes),
                        stored_hash,
                    });
                    seq += 1;
                    if !go_on {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn append(
        &mut self,
        leaves: &mut [&mut Leaf],
        frontier: &mut Frontier,
    ) -> Result<u64, LogError> {
        let start = self.read_shared().size;
        let (encoded, nodes) = prepare_batch(leaves, start, frontier, |level, idx| {
            self.read_node(level, idx)
        })?;
        let mut raw = Vec::with_capacity(encoded.iter().map(|b| b.len() + 4).sum());
        for bytes in &encoded {
            raw.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            raw.extend_from_slice(bytes);
        }
        let payload = {
            let w = self
                .writer
                .as_mut()
                .ok_or_else(|| LogError::Store("this handle does not write".into()))?;
            compress(&mut w.compress, &raw)?
        };
        let count = encoded.len() as u32;
        let header = Header {
            first_seq: start,
            count,
            payload_len: payload.len() as u32,
            crc: Header::crc_of(start, count, &payload),
        };
        let frame_len = (HEADER + payload.len()) as u64;
        let end = self.read_shared().end;
        let (max_bytes, bytes) = {
            let w = self
                .writer
                .as_ref()
                .ok_or_else(|| LogError::Store("this handle does not write".into()))?;
            (w.max_bytes, w.bytes)
        };
        if max_bytes > 0 && bytes + frame_len > max_bytes {
            return Err(LogError::Store(
                "the access log has reached access_log.max_db_pages (disk full)".into(),
            ));
        }
        // A full segment: the batch starts a new one.
        let (segment, offset) = if end + frame_len > SEGMENT_BYTES && end > 0 {
            // The full segment loses its zeros before the next one starts: only the last
            // segment may end in them.
            if let Some(w) = self.writer.as_ref() {
                w.tail
                    .set_len(end)
                    .and_then(|()| w.tail.sync_all())
                    .map_err(io("cannot close a full segment"))?;
            }
            let (file, path) = self.new_segment(start)?;
            if let Some(w) = self.writer.as_mut() {
                w.tail = file;
                w.zeroed = 0;
            }
            let mut s = self.write_shared();
            s.segments.push((start, path));
            s.end = 0;
            (s.segments.len() - 1, 0)
        } else {
            (self.read_shared().segments.len() - 1, end)
        };
        // The subtree hashes go first: a process that dies after the frame leaves them behind
        // it (the page cache keeps them); past a power cut, start-up recomputes them.
        self.write_nodes(nodes)?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| LogError::Store("this handle does not write".into()))?;
        let mut frame = Vec::with_capacity(frame_len as usize);
        frame.extend_from_slice(&header.bytes());
        frame.extend_from_slice(&payload);
        let frame_end = offset + frame_len;
        // The zeros ahead stay within the segment and within the cap on the log's bytes.
        let mut zero_to = (frame_end + ZERO_AHEAD).min(SEGMENT_BYTES.max(frame_end));
        if w.max_bytes > 0 {
            zero_to = zero_to.min(frame_end + w.max_bytes.saturating_sub(w.bytes + frame_len));
        }
        match zero_fill(&w.tail, w.zeroed, frame_end, zero_to) {
            Ok(zeroed) => w.zeroed = zeroed,
            // No room for the zeros (a nearly full disk): the frame alone extends the file.
            Err(e) => {
                tracing::warn!(error = %e, "no room for zeros ahead of the access log's frames");
                let _ = w.tail.set_len(w.zeroed.max(offset));
            }
        }
        let written = w
            .tail
            .write_all_at(&frame, offset)
            .and_then(|()| w.tail.sync_data());
        if let Err(e) = written {
            // Nothing of a batch that failed may stay: cut the file back.
            let _ = w.tail.set_len(offset);
            w.zeroed = offset;
            return Err(io("cannot write the batch")(e));
        }
        w.bytes += frame_len;
        w.since_sparse += u64::from(count);
        let sparse = offset == 0 || w.since_sparse >= SPARSE_EVERY;
        if sparse {
            w.since_sparse = 0;
        }
        {
            let mut s = self.write_shared();
            if sparse || s.sparse.is_empty() {
                s.sparse.push(FramePos {
                    first_seq: start,
                    segment,
                    offset,
                });
            }
            s.size = start + u64::from(count);
            s.end = offset + frame_len;
        }
        // Handed to the indexer once readers see the leaves.
        if let Some(w) = &self.writer {
            w.handoff
                .push(IndexFrame::of(start, leaves.iter().map(|leaf| &**leaf)));
        }
        Ok(start + u64::from(count))
    }

    fn put_checkpoint(&mut self, size: u64, note: &str, time_ms: i64) -> Result<(), LogError> {
        if let Some(w) = &self.writer
            && size <= w.checkpointed
        {
            return Ok(());
        }
        // The subtree hashes the checkpoint signs are durable before it is.
        self.sync_nodes()?;
        let mut body = Vec::with_capacity(16 + note.len());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&time_ms.to_le_bytes());
        body.extend_from_slice(note.as_bytes());
        let mut record = Vec::with_capacity(12 + body.len());
        record.extend_from_slice(CHECKPOINT_MAGIC);
        record.extend_from_slice(&(note.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.checkpoint_path())
            .map_err(io("cannot open the checkpoints"))?;
        file.write_all(&record)
            .and_then(|()| file.sync_data())
            .map_err(io("cannot write a checkpoint"))?;
        if let Some(w) = self.writer.as_mut() {
            w.checkpointed = size;
        }
        Ok(())
    }
}

/// The first index unit with a leaf at or after `from_ms`, if any.
fn first_unit_from(index: &Connection, from_ms: i64) -> Result<Option<i64>, LogError> {
    Ok(index.query_row(
        "SELECT MIN(first_seq) FROM frames WHERE max_time >= ?1",
        [from_ms],
        |r| r.get::<_, Option<i64>>(0),
    )?)
}

/// The next index units (first seq, count) past `after` and from the unit `in_time` on that
/// hold every key of `keys` and whose times meet the filter's, in order, a page of them.
fn candidate_units(
    index: &Connection,
    filter: &EntryFilter,
    keys: &[i64],
    after: i64,
    in_time: i64,
) -> Result<Vec<(i64, i64)>, LogError> {
    const UNITS: i64 = 64;
    // The unit holding the leaf after `after`, or the first one in the time range.
    let containing: i64 = index
        .query_row(
            "SELECT first_seq FROM frames WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1",
            [after.saturating_add(1)],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let start = containing.max(in_time);
    let time = "(?2 IS NULL OR f.max_time >= ?2) AND (?3 IS NULL OR f.min_time < ?3)";
    let mut units = Vec::new();
    let mut push = |r: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
        units.push((r.get(0)?, r.get(1)?));
        Ok(())
    };
    match keys.split_first() {
        None => {
            let mut stmt = index.prepare_cached(&format!(
                "SELECT f.first_seq, f.count FROM frames f WHERE f.first_seq >= ?1 AND {time}
                 ORDER BY f.first_seq LIMIT {UNITS}"
            ))?;
            let mut rows = stmt.query(params![start, filter.from_ms, filter.to_ms])?;
            while let Some(r) = rows.next()? {
                push(r)?;
            }
        }
        Some((first_key, others)) => {
            // Driven by the most selective key; the others must be in the same unit.
            let others_sql: String = (0..others.len())
                .map(|i| {
                    format!(
                        " AND EXISTS (SELECT 1 FROM postings q WHERE q.key = ?{} AND q.first_seq = p.first_seq)",
                        5 + i
                    )
                })
                .collect();
            let mut stmt = index.prepare_cached(&format!(
                "SELECT f.first_seq, f.count FROM postings p JOIN frames f ON f.first_seq = p.first_seq
                 WHERE p.key = ?4 AND p.first_seq >= ?1 AND {time}{others_sql}
                 ORDER BY p.first_seq LIMIT {UNITS}"
            ))?;
            let mut values: Vec<rusqlite::types::Value> = vec![
                start.into(),
                filter.from_ms.into(),
                filter.to_ms.into(),
                (*first_key).into(),
            ];
            values.extend(others.iter().map(|k| rusqlite::types::Value::from(*k)));
            let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
            while let Some(r) = rows.next()? {
                push(r)?;
            }
        }
    }
    Ok(units)
}

/// Whether a leaf's bytes meet every condition of `filter` (its position aside).
fn matches(filter: &EntryFilter, bytes: &[u8]) -> bool {
    let Ok(leaf) = serde_json::from_slice::<Leaf>(bytes) else {
        return false;
    };
    let same = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    same(&filter.department, &leaf.department)
        && same(&filter.holder, &leaf.holder)
        && same(&filter.resource, &leaf.resource)
        && same(&filter.route, &leaf.route)
        && filter.outcome.is_none_or(|o| o == leaf.outcome)
        && filter.from_ms.is_none_or(|t| leaf.time_ms >= t)
        && filter.to_ms.is_none_or(|t| leaf.time_ms < t)
}

/// The fields a query may name.
#[derive(Debug, Clone, Copy)]
enum Field {
    Department,
    Holder,
    Resource,
    Route,
    Outcome,
}

/// The 64-bit key a field's text is indexed under (the field's tag and the text, hashed).
fn key(field: Field, text: &str) -> i64 {
    let tag: &[u8] = match field {
        Field::Department => b"d:",
        Field::Holder => b"h:",
        Field::Resource => b"r:",
        Field::Route => b"p:",
        Field::Outcome => b"o:",
    };
    let d = Sha256::new()
        .chain_update(tag)
        .chain_update(text.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_le_bytes(b)
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Error => "error",
    }
}

/// The keys a query asks for, the most selective first.
fn filter_keys(filter: &EntryFilter) -> Vec<i64> {
    [
        filter.holder.as_deref().map(|t| key(Field::Holder, t)),
        filter.resource.as_deref().map(|t| key(Field::Resource, t)),
        filter
            .department
            .as_deref()
            .map(|t| key(Field::Department, t)),
        filter.route.as_deref().map(|t| key(Field::Route, t)),
        filter.outcome.map(|o| key(Field::Outcome, outcome_name(o))),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The index's form; an index.db of another form is dropped and built again from the
/// segments (it is derived data).
const INDEX_VERSION: i64 = 2;

const INDEX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS frames (
    first_seq INTEGER PRIMARY KEY, count INTEGER NOT NULL,
    min_time INTEGER NOT NULL, max_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_time ON frames(max_time);
CREATE TABLE IF NOT EXISTS postings (
    key INTEGER NOT NULL, first_seq INTEGER NOT NULL, PRIMARY KEY (key, first_seq)
) WITHOUT ROWID;
";

/// Starts the thread that keeps the query index up with the segments, every
/// [`INDEX_INTERVAL`], until `stop` is set.
fn spawn_indexer(
    dir: SegmentDir,
    stop: Arc<AtomicBool>,
    handoff: Arc<Handoff>,
) -> Result<(), LogError> {
    let mut conn = Connection::open(dir.dir.join("index.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Derived data: rebuilt from the segments if a crash loses its tail.
    conn.pragma_update(None, "synchronous", "OFF")?;
    // The four indexes take scattered keys: pages kept in memory are not read again.
    conn.pragma_update(None, "cache_size", -16_384)?;
    open_index(&conn)?;
    let mut reader = SegmentLog::reader(&dir);
    // Before any new leaf can come: units past what the segments hold now (a cut frame, a
    // restored copy) go, so that new leaves at those positions are indexed afresh.
    cut_index(&mut conn, reader.size()?)?;
    std::thread::Builder::new()
        .name("access-log-indexer".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = index_round(&mut conn, &mut reader, &handoff) {
                    tracing::error!(error = %e, "access log index not updated");
                }
                std::thread::sleep(INDEX_INTERVAL);
            }
        })
        .map_err(|e| LogError::Store(format!("cannot start the indexer: {e}")))?;
    Ok(())
}

/// Makes `conn` an index of this form, dropping one of an earlier form.
fn open_index(conn: &Connection) -> Result<(), LogError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != INDEX_VERSION {
        conn.execute_batch(
            "DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS frames;
             DROP TABLE IF EXISTS postings;",
        )?;
        conn.pragma_update(None, "user_version", INDEX_VERSION)?;
    }
    conn.execute_batch(INDEX_SCHEMA)?;
    Ok(())
}

/// Where the index ends: the first leaf it does not hold.
fn index_end(conn: &Connection) -> Result<u64, LogError> {
    let end: Option<i64> = conn
        .query_row(
            "SELECT first_seq + count FROM frames ORDER BY first_seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(end.unwrap_or(0).max(0) as u64)
}

/// Removes the index units that reach past `size` leaves.
fn cut_index(conn: &mut Connection, size: u64) -> Result<(), LogError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM postings WHERE first_seq IN
           (SELECT first_seq FROM frames WHERE first_seq + count > ?1)",
        [size as i64],
    )?;
    tx.execute(
        "DELETE FROM frames WHERE first_seq + count > ?1",
        [size as i64],
    )?;
    tx.commit()?;
    Ok(())
}

/// Indexes the leaves committed since the index's last one: the units the writer handed
/// over, and before them any it did not (read from the segments).
fn index_round(
    conn: &mut Connection,
    reader: &mut SegmentLog,
    handoff: &Handoff,
) -> Result<(), LogError> {
    // Taken before the size is read: every unit here is of leaves the size covers.
    let handed = handoff.take();
    let size = reader.size()?;
    let indexed = index_end(conn)?;
    if indexed > size {
        // The segments lost a tail the index had (they never do while this writer runs).
        return cut_index(conn, size);
    }
    let mut seq = indexed;
    let mut handed = handed
        .into_iter()
        .skip_while(|f| f.first_seq < indexed)
        .peekable();
    while seq < size {
        if seq > indexed {
            std::thread::yield_now();
        }
        let from = seq;
        let tx = conn.transaction()?;
        {
            let mut frame_row = tx.prepare_cached(
                "INSERT INTO frames (first_seq, count, min_time, max_time) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut posting =
                tx.prepare_cached("INSERT INTO postings (key, first_seq) VALUES (?1, ?2)")?;
            let mut put = |f: &IndexFrame| -> Result<(), LogError> {
                frame_row.execute(params![
                    f.first_seq as i64,
                    f.count as i64,
                    f.min_time,
                    f.max_time
                ])?;
                for k in &f.keys {
                    posting.execute(params![k, f.first_seq as i64])?;
                }
                Ok(())
            };
            let stop_at = (seq + INDEX_CHUNK).min(size);
            while seq < stop_at {
                if let Some(f) = handed.next_if(|f| f.first_seq == seq) {
                    put(&f)?;
                    seq += f.count;
                    continue;
                }
                // Not handed over: read from the segments, up to the next unit that was.
                let until = handed.peek().map_or(size, |f| f.first_seq.min(size));
                let Some((first, leaves)) = reader.frame_of(seq)? else {
                    break;
                };
                let wanted = (until.saturating_sub(seq)) as usize;
                let parsed = leaves
                    .iter()
                    .skip((seq - first) as usize)
                    .take(wanted)
                    .enumerate()
                    .map(|(i, bytes)| {
                        serde_json::from_slice::<Leaf>(bytes)
                            .map_err(|e| LogError::Store(format!("leaf {}: {e}", seq + i as u64)))
                    })
                    .collect::<Result<Vec<Leaf>, LogError>>()?;
                if parsed.is_empty() {
                    break;
                }
                let f = IndexFrame::of(seq, &parsed);
                put(&f)?;
                seq += f.count;
            }
        }
        tx.commit()?;
        if seq == from {
            // The segments do not hold a leaf the size covers (yet): try next round.
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::key;
    use crate::log::{AccessLog, LogBackend, VerifyFailure, WriterSettings, verify_offline};
    use crate::{LeafKind, inclusion_proof, latest_checkpoint, root};

    fn settings(checkpoint_ms: u64) -> WriterSettings {
        WriterSettings {
            queue_capacity: 10_000,
            max_batch: 64,
            checkpoint_interval: Duration::from_millis(checkpoint_ms),
            origin: "certgate.test/log".into(),
            group_commit_wait: Duration::ZERO,
            max_db_pages: 0,
            clock: Arc::new(storage::SystemClock),
        }
    }

    /// The segment log at `path`, open for appending.
    fn open_at(path: &Path, key: &Arc<crate::checkpoint::LogKey>) -> AccessLog {
        AccessLog::open(
            LogBackend::Segments(SegmentDir::new(path)),
            key.clone(),
            settings(0),
        )
        .unwrap()
    }

    /// Leaves the query index in `index` (an index.db) holds.
    fn indexed_leaves(index: &Path) -> i64 {
        Connection::open(index)
            .and_then(|c| {
                c.query_row("SELECT COALESCE(SUM(count), 0) FROM frames", [], |r| {
                    r.get(0)
                })
            })
            .unwrap_or(0)
    }

    /// Waits until the index at `index` holds `n` leaves, failing the test after `within`.
    fn wait_until_indexed(index: &Path, n: i64, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let held = indexed_leaves(index);
            if held == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "index holds {held} of {n} leaves"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn leaf(i: u64) -> Leaf {
        Leaf {
            request_id: Some(format!("req-{i}")),
            department: Some(format!("1111010{}MB0000001C", i % 3)),
            holder: Some(format!("holder-{}", i % 5)),
            method: Some("GET".into()),
            route: Some("/v1/licences/{id}".into()),
            resource: Some(format!("licence-{}", i % 7)),
            latency_us: 120,
            ..Leaf::new(
                LeafKind::Request,
                1_800_000_000_000 + i as i64,
                200 + (i % 2) as u16 * 200,
            )
        }
    }

    /// Appends `n` leaves from concurrent tasks and waits for a checkpoint over all of them.
    async fn fill(log: &AccessLog, from: u64, n: u64) {
        let mut tasks = Vec::new();
        for i in from..from + n {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(leaf(i)).await.unwrap() },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
        while log.covered() < from + n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_form_a_verifiable_tree_that_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let backend = LogBackend::Segments(SegmentDir::new(&dir.path().join("log")));
        let log = AccessLog::open(backend.clone(), key.clone(), settings(0)).unwrap();
        fill(&log, 0, 500).await;
        let mut reader = log.reader().unwrap();
        let (size, note) = latest_checkpoint(reader.as_mut()).unwrap().unwrap();
        assert_eq!(size, 500);
        let cp = crate::checkpoint::verify_note(&note, &key.verifier_key()).unwrap();
        let data = reader.leaf(123).unwrap().unwrap();
        let proof = inclusion_proof(reader.as_mut(), 123, size).unwrap();
        assert!(merkle::verify_inclusion(
            &merkle::leaf_hash(&data),
            123,
            size,
            &proof,
            &cp.root
        ));
        drop(reader);
        drop(log);
        // Another process's view, and the writer again on the same files.
        let mut offline = SegmentLog::open_read_only(&dir.path().join("log")).unwrap();
        let summary = verify_offline(&mut offline, &key.verifier_key()).unwrap();
        assert_eq!(summary.leaves, 500);
        let log = AccessLog::open(backend, key.clone(), settings(0)).unwrap();
        fill(&log, 500, 100).await;
        let mut offline = SegmentLog::open_read_only(&dir.path().join("log")).unwrap();
        assert_eq!(
            verify_offline(&mut offline, &key.verifier_key())
                .unwrap()
                .leaves,
            600
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_see_every_committed_leaf_and_the_index_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LogBackend::Segments(SegmentDir::new(&dir.path().join("log")));
        let log = AccessLog::open(backend, key(), settings(0)).unwrap();
        // From concurrent requests: batches, so index units, of many leaves.
        fill(&log, 0, 300).await;
        let mut reader = log.reader().unwrap();
        // Which leaf (its `i`) each position holds.
        let stored: Vec<(u64, u64)> = reader
            .entries(
                &EntryFilter {
                    after: -1,
                    ..EntryFilter::default()
                },
                1000,
            )
            .unwrap()
            .iter()
            .map(|b| {
                let l = serde_json::from_slice::<Leaf>(b).unwrap();
                let i = l
                    .request_id
                    .unwrap()
                    .trim_start_matches("req-")
                    .parse()
                    .unwrap();
                (l.seq, i)
            })
            .collect();
        assert_eq!(stored.len(), 300);
        let expected = |f: &dyn Fn(u64, u64) -> bool| {
            stored
                .iter()
                .filter(|(seq, i)| f(*seq, *i))
                .map(|(seq, _)| *seq)
                .collect::<Vec<_>>()
        };
        let seqs = |rows: Vec<Vec<u8>>| {
            rows.iter()
                .map(|b| serde_json::from_slice::<Leaf>(b).unwrap().seq)
                .collect::<Vec<_>>()
        };
        let query = |reader: &mut Box<dyn LogDb>| {
            let by_holder = EntryFilter {
                after: -1,
                holder: Some("holder-2".into()),
                ..EntryFilter::default()
            };
            let denied_from_dept = EntryFilter {
                after: 10,
                department: Some("11110101MB0000001C".into()),
                outcome: Some(Outcome::Denied),
                ..EntryFilter::default()
            };
            let resource_in_time = EntryFilter {
                after: -1,
                resource: Some("licence-3".into()),
                route: Some("/v1/licences/{id}".into()),
                from_ms: Some(1_800_000_000_000 + 100),
                to_ms: Some(1_800_000_000_000 + 250),
                ..EntryFilter::default()
            };
            // Page by page, five at a time, each page after the last one's last leaf.
            let mut paged = Vec::new();
            loop {
                let page = EntryFilter {
                    after: paged.last().map_or(-1, |s: &u64| *s as i64),
                    ..resource_in_time.clone()
                };
                let got = seqs(reader.entries(&page, 5).unwrap());
                if got.is_empty() {
                    break;
                }
                paged.extend(got);
            }
            (
                seqs(reader.entries(&by_holder, 1000).unwrap()),
                seqs(reader.entries(&denied_from_dept, 1000).unwrap()),
                seqs(reader.entries(&by_holder, 7).unwrap()),
                seqs(reader.entries(&resource_in_time, 1000).unwrap()),
                paged,
            )
        };
        // At once, before the indexer's round: read from the segments.
        let in_time = expected(&|_, i| i % 7 == 3 && (100..250).contains(&i));
        let want = (
            expected(&|_, i| i % 5 == 2),
            expected(&|seq, i| seq > 10 && i % 3 == 1 && i % 2 == 1),
            expected(&|_, i| i % 5 == 2)[..7].to_vec(),
            in_time.clone(),
            in_time,
        );
        assert_eq!(query(&mut reader), want);
        // Within a few index rounds every leaf is in the index, and the answers are the same.
        let index = dir.path().join("log/index.db");
        wait_until_indexed(&index, 300, INDEX_INTERVAL * 8);
        let mut reader = log.reader().unwrap();
        assert_eq!(query(&mut reader), want);
        // A cursor past the end, up to the largest one a client can send, finds nothing.
        for after in [299, 300, i64::MAX - 1, i64::MAX] {
            let past = EntryFilter {
                after,
                ..EntryFilter::default()
            };
            assert!(
                reader.entries(&past, 10).unwrap().is_empty(),
                "after {after}"
            );
        }
        let index = Connection::open(&index).unwrap();
        let largest: i64 = index
            .query_row("SELECT MAX(count) FROM frames", [], |r| r.get(0))
            .unwrap();
        assert!(
            largest > 5,
            "units of one leaf only ({largest}): paging within one untested"
        );
    }

    /// A copy of `from` (a log directory) at `to`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_takes_handed_units_and_reads_what_was_not_handed_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::new(&dir.path().join("log"));
        let log =
            AccessLog::open(LogBackend::Segments(segments.clone()), key(), settings(0)).unwrap();
        // One at a time, so that leaf `i` is at position `i`.
        for i in 0..600 {
            log.append(leaf(i)).await.unwrap();
        }
        // A second index beside the writer's, fed from a hand-over that lacks the first
        // leaves, a stretch in the middle and the last ones (an overflow, a restart).
        let mut conn = Connection::open(dir.path().join("other-index.db")).unwrap();
        open_index(&conn).unwrap();
        let mut reader = SegmentLog::reader(&segments);
        let handoff = Handoff::default();
        let unit =
            |from: u64, to: u64| IndexFrame::of(from, &(from..to).map(leaf).collect::<Vec<_>>());
        for (from, to) in [(40, 100), (100, 300), (420, 590)] {
            handoff.push(unit(from, to));
        }
        index_round(&mut conn, &mut reader, &handoff).unwrap();
        assert!(
            handoff.take().is_empty(),
            "a round takes every unit handed over"
        );
        // The units cover every leaf once, in order, and each holds its leaves' keys and times.
        let mut stmt = conn
            .prepare("SELECT first_seq, count, min_time, max_time FROM frames ORDER BY first_seq")
            .unwrap();
        let units: Vec<(u64, u64, i64, i64)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut next = 0;
        for (first, count, min_time, max_time) in units {
            assert_eq!(first, next, "units are contiguous");
            for seq in first..first + count {
                let l = leaf(seq);
                assert!(min_time <= l.time_ms && l.time_ms <= max_time, "leaf {seq}");
                for k in leaf_keys(&l) {
                    let held: bool = conn
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM postings WHERE key = ?1 AND first_seq = ?2)",
                            params![k, first as i64],
                            |r| r.get(0),
                        )
                        .unwrap();
                    assert!(held, "leaf {seq}: a key missing from its unit");
                }
            }
            next = first + count;
        }
        assert_eq!(next, 600);
        // The handed units were taken as they came: 40..100 is one unit.
        let handed: i64 = conn
            .query_row("SELECT count FROM frames WHERE first_seq = 40", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(handed, 60);
        // A full hand-over keeps nothing more: those leaves come from the segments.
        handoff.push(unit(0, HANDOFF_ROWS as u64 + 1));
        assert!(handoff.take().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_of_the_earlier_form_is_built_again_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let key = key();
        {
            let log = open_at(&path, &key);
            fill(&log, 0, 50).await;
        }
        // The per-leaf index of earlier versions, with a row in it.
        std::fs::remove_file(path.join("index.db")).unwrap();
        let old = Connection::open(path.join("index.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, department INTEGER,
               holder INTEGER, resource INTEGER, route INTEGER, outcome INTEGER NOT NULL);
             CREATE INDEX entries_holder ON entries(holder, seq);
             INSERT INTO entries VALUES (0, 1, 2, 3, 4, 5, 0);",
        )
        .unwrap();
        drop(old);
        let log = open_at(&path, &key);
        let index = Connection::open(path.join("index.db")).unwrap();
        let entries: i64 = index
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'entries'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(entries, 0, "the earlier table is gone");
        wait_until_indexed(&path.join("index.db"), 50, INDEX_INTERVAL * 20);
        let mut reader = log.reader().unwrap();
        let by_holder = EntryFilter {
            after: -1,
            holder: Some("holder-1".into()),
            ..EntryFilter::default()
        };
        assert_eq!(reader.entries(&by_holder, 100).unwrap().len(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_longer_than_the_segments_is_cut_before_new_leaves_come() {
        let dir = tempfile::tempdir().unwrap();
        let key = key();
        let (long, short) = (dir.path().join("long"), dir.path().join("short"));
        for (path, n) in [(&long, 100), (&short, 50)] {
            let log = open_at(path, &key);
            for i in 0..n {
                log.append(leaf(i)).await.unwrap();
            }
            wait_until_indexed(&path.join("index.db"), n as i64, INDEX_INTERVAL * 20);
        }
        // The shorter log with the longer one's index (a copy restored from elsewhere).
        std::fs::copy(long.join("index.db"), short.join("index.db")).unwrap();
        let log = open_at(&short, &key);
        // Cut when the writer opened, before any leaf could come.
        assert_eq!(indexed_leaves(&short.join("index.db")), 50);
        for i in 0..60 {
            let l = Leaf {
                holder: Some("after-the-copy".into()),
                ..leaf(1000 + i)
            };
            log.append(l).await.unwrap();
        }
        let wanted = EntryFilter {
            after: -1,
            holder: Some("after-the-copy".into()),
            ..EntryFilter::default()
        };
        // Found at once (from the segments) and after the index has them (through it).
        let mut reader = log.reader().unwrap();
        assert_eq!(reader.entries(&wanted, 100).unwrap().len(), 60);
        tokio::time::sleep(INDEX_INTERVAL * 6).await;
        let mut reader = log.reader().unwrap();
        assert_eq!(reader.entries(&wanted, 100).unwrap().len(), 60);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                match std::fs::copy(e.path(), target) {
                    // The stopping indexer may remove its index's WAL files meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    copied => {
                        copied.unwrap();
                    }
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_files_exist_for_the_levels_the_tree_has_and_only_changed_ones_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let key = key();
        let levels = || {
            let mut names: Vec<String> = std::fs::read_dir(path.join("nodes"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        for round in 0..2 {
            // Started again on the same files: the restart repairs the nodes without making a
            // file for every possible level.
            let log = open_at(&path, &key);
            fill(&log, round * 5, 5).await;
            while log.covered() < (round + 1) * 5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // 10 leaves: levels 0 to 3.
        assert_eq!(levels(), ["0.bin", "1.bin", "2.bin", "3.bin"]);
        let mut db = SegmentLog::open_writer(&SegmentDir::new(&path), 0).unwrap();
        db.sync_nodes().unwrap();
        assert_eq!(db.unsynced_levels, 0);
        let mut frontier = Frontier::new();
        let mut batch: Vec<Leaf> = (10..13).map(leaf).collect();
        let mut refs: Vec<&mut Leaf> = batch.iter_mut().collect();
        db.append(&mut refs, &mut frontier).unwrap();
        // Leaves 10 to 12 write level-0 nodes, and leaf 11 completes 10–11 (level 1) and 8–11
        // (level 2): three files to sync, not every level's.
        assert_eq!(db.unsynced_levels, 0b111);
        db.sync_nodes().unwrap();
        assert_eq!(db.unsynced_levels, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_power_cut_in_any_byte_of_the_last_frame_recovers_a_consistent_tree() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("log");
        let key = key();
        {
            let log = open_at(&original, &key);
            fill(&log, 0, 40).await;
            // The last frame: one leaf appended alone, and its checkpoint.
            log.append(leaf(40)).await.unwrap();
            while log.covered() < 41 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // The power goes before the checkpoint over the last frame is written.
        let db = SegmentLog::open_read_only(&original).unwrap();
        let (all, _) = db.read_checkpoints().unwrap();
        let (size, note) = all.last().unwrap();
        assert_eq!(*size, 41);
        {
            let checkpoints = original.join("checkpoints.bin");
            let keep =
                std::fs::metadata(&checkpoints).unwrap().len() - (12 + 16 + note.len()) as u64;
            OpenOptions::new()
                .write(true)
                .open(&checkpoints)
                .unwrap()
                .set_len(keep)
                .unwrap();
        }
        drop(db);
        let segment = original.join("segments").join(segment_name(0));
        // The frames end where the writer's zeros begin.
        let mut reader = SegmentLog::open_read_only(&original).unwrap();
        assert_eq!(reader.size().unwrap(), 41);
        let len = reader.read_shared().end;
        assert!(
            std::fs::metadata(&segment).unwrap().len() > len,
            "zeros ahead of the frames"
        );
        let last = len - {
            let f = File::open(&segment).unwrap();
            let mut at = 0;
            let mut last = 0;
            while let Some((h, _)) = read_frame(&f, at, len) {
                last = HEADER as u64 + u64::from(h.payload_len);
                at += last;
            }
            last
        };
        // The power goes with the last frame written up to `cut`: the file cut there, or the
        // rest of the frame still the zeros that were there before it.
        for (cut, zeros) in (last..len).flat_map(|cut| [(cut, false), (cut, true)]) {
            let case = dir.path().join(format!("cut-{cut}-{zeros}"));
            copy_dir(&original, &case);
            let seg = case.join("segments").join(segment_name(0));
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            if zeros {
                f.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                    .unwrap();
            } else {
                f.set_len(cut).unwrap();
            }
            drop(f);
            // The subtree hashes of the unacknowledged tail may be anything after a power cut.
            let nodes = case.join("nodes/0.bin");
            let f = OpenOptions::new().write(true).open(&nodes).unwrap();
            f.write_all_at(&[0xAB; 32], 40 * 32).unwrap();
            let log = AccessLog::open(
                LogBackend::Segments(SegmentDir::new(&case)),
                key.clone(),
                settings(0),
            )
            .unwrap_or_else(|e| panic!("cut at {cut} ({zeros}): {e}"));
            assert_eq!(log.size(), 40, "cut at {cut} ({zeros})");
            assert_eq!(
                std::fs::metadata(&seg).unwrap().len(),
                last,
                "cut at {cut} ({zeros})"
            );
            // It goes on from there, and the whole verifies.
            assert_eq!(log.append(leaf(1000)).await.unwrap(), 40);
            while log.covered() < 41 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drop(log);
            let mut offline = SegmentLog::open_read_only(&case).unwrap();
            let summary = verify_offline(&mut offline, &key.verifier_key())
                .unwrap_or_else(|e| panic!("cut at {cut} ({zeros}): {e}"));
            assert_eq!(summary.leaves, 41);
            std::fs::remove_dir_all(&case).unwrap();
        }
    }

    /// Rewrites the log's one segment with `leaves` at consecutive positions, one frame each,
    /// with valid checksums: what someone with write access to the files could do.
    fn rewrite(dir: &Path, leaves: &[Vec<u8>]) {
        let mut out = Vec::new();
        for (i, bytes) in leaves.iter().enumerate() {
            let mut raw = (bytes.len() as u32).to_le_bytes().to_vec();
            raw.extend_from_slice(bytes);
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(&raw).unwrap();
            let payload = enc.finish().unwrap();
            let h = Header {
                first_seq: i as u64,
                count: 1,
                payload_len: payload.len() as u32,
                crc: Header::crc_of(i as u64, 1, &payload),
            };
            out.extend_from_slice(&h.bytes());
            out.extend_from_slice(&payload);
        }
        std::fs::write(dir.join("segments").join(segment_name(0)), out).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edited_removed_and_rewritten_leaves_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let key = key();
        let log = open_at(&path, &key);
        fill(&log, 0, 64).await;
        drop(log);
        let mut all = Vec::new();
        SegmentLog::open_read_only(&path)
            .unwrap()
            .scan(u64::MAX, &mut |l| {
                all.push(l.data.unwrap().to_vec());
                true
            })
            .unwrap();
        let found_at = |leaves: &[Vec<u8>]| {
            rewrite(&path, leaves);
            let mut db = SegmentLog::open_read_only(&path).unwrap();
            match verify_offline(&mut db, &key.verifier_key()) {
                Err(VerifyFailure::Leaf { index, .. }) => Some(index),
                Err(VerifyFailure::Checkpoint { .. }) => None,
                other => panic!("not found: {other:?}"),
            }
        };
        let mut edited = all.clone();
        edited[7] = String::from_utf8(edited[7].clone())
            .unwrap()
            .replace("\"status\":", "\"status\":1")
            .into_bytes();
        assert_eq!(found_at(&edited), Some(7));
        let mut removed = all.clone();
        removed.remove(9);
        assert_eq!(found_at(&removed), Some(9));
        let mut swapped = all.clone();
        swapped.swap(3, 4);
        assert_eq!(found_at(&swapped), Some(3));
        // The newest leaves dropped: the checkpoint has no tree, and the writer will not open.
        assert_eq!(found_at(&all[..50]), None);
        assert!(matches!(
            AccessLog::open(
                LogBackend::Segments(SegmentDir::new(&path)),
                key.clone(),
                settings(0)
            ),
            Err(LogError::Inconsistent(_))
        ));
        // As it was, it verifies again.
        rewrite(&path, &all);
        let mut db = SegmentLog::open_read_only(&path).unwrap();
        assert_eq!(
            verify_offline(&mut db, &key.verifier_key()).unwrap().leaves,
            64
        );
        let _ = root(&mut db, 64).unwrap();
    }

    #[test]
    fn a_damaged_frame_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::create_dir_all(path.join("segments")).unwrap();
        std::fs::write(path.join("segments").join(segment_name(0)), b"CGL1garbage").unwrap();
        std::fs::write(path.join("segments").join(segment_name(5)), b"").unwrap();
        assert!(matches!(
            SegmentLog::open_read_only(&path),
            Err(LogError::Inconsistent(_))
        ));
    }
}
