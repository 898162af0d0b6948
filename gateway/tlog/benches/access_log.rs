//! Access-log throughput and proof latency.
//!
//! - durable appends/s and append-to-ack latency (p50/p99) with many concurrent appenders,
//!   each append acknowledged only after its batch is committed: on the embedded log in segment
//!   files (one `fdatasync` per batch), on the SQLite log of data directories made before them
//!   (`synchronous=FULL`) and, side by side in the same run when `CERTGATE_BENCH_POSTGRES_URL`
//!   is set, on the log several nodes share in PostgreSQL (a schema of its own, dropped after);
//! - the bytes on disk per leaf — leaves, tree hashes, checkpoints and the auditors' query
//!   indexes — of a log of `CERTGATE_BENCH_LEAVES` leaves (default 1,000,000) written in batches
//!   of 64 as the writer writes them, in segment files (one leaf text repeated, as earlier
//!   runs measured, and leaves whose department, route, holder and licence vary as a
//!   province's traffic does) and in SQLite, and how long writing it took;
//! - inclusion- and consistency-proof latency on those logs, read through the stored subtree
//!   hashes.
//!
//! Run: `cargo bench -p tlog --bench access_log` (`CERTGATE_BENCH_SECONDS`, default 5;
//! `CERTGATE_BENCH_LEAVES`, default 1000000; `CERTGATE_BENCH_POSTGRES_URL` adds the PostgreSQL log).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tlog::checkpoint::Checkpoint;
use tlog::checkpoint::LogKey;
use tlog::merkle;
use tlog::{
    AccessLog, Frontier, Leaf, LogBackend, LogDb, SegmentDir, SegmentLog, SqliteLog, WriterSettings,
};

fn leaf(i: u64) -> Leaf {
    Leaf {
        request_id: Some(format!("{i:032x}")),
        department: Some("11110105MB0000001C".into()),
        cert_sha256: Some("9f".repeat(32)),
        peer: Some("127.0.0.1:50000".into()),
        method: Some("GET".into()),
        route: Some("/v1/licences/{id}".into()),
        resource: Some(
            "1.2.156.3005.2.11100000MB0000100D001.11110105MB0000002F.000000000001.001.6".into(),
        ),
        holder: Some("ab".repeat(32)),
        matter: Some("M-BIZ-001".into()),
        latency_us: 150,
        ..Leaf::new(tlog::LeafKind::Request, 1_800_000_000_000 + i as i64, 200)
    }
}

/// A leaf as a province's traffic has them: one of 40 departments and 12 routes, holders and
/// licences that differ from request to request (pseudonyms of 200,000 holders, 100,000
/// licences), so that neither the compression nor the query index meets the same text
/// twice in a batch.
fn varied_leaf(i: u64) -> Leaf {
    let mix = |x: u64| x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let holder = mix(i) % 200_000;
    let licence = mix(i ^ 0x5555) % 100_000;
    Leaf {
        request_id: Some(format!("{:032x}", mix(i) as u128 * 0x1_0000_0001)),
        department: Some(format!("111101{:02}MB0000001C", i % 40)),
        cert_sha256: Some(format!("{:064x}", i % 40)),
        route: Some(format!("/v1/route-{}/{{id}}", i % 12)),
        resource: Some(format!(
            "1.2.156.3005.2.11100000MB0000100D001.11110105MB0000002F.{licence:012}.001.6"
        )),
        holder: Some(format!(
            "{:064x}",
            holder.wrapping_mul(0x2545_F491_4F6C_DD1D)
        )),
        ..leaf(i)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let seconds: u64 = std::env::var("CERTGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let leaves: u64 = std::env::var("CERTGATE_BENCH_LEAVES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(
        LogKey::from_seed_base64("bench/log", &LogKey::generate_seed_base64().unwrap()).unwrap(),
    );
    println!(
        "# certgate access-log benchmark (2-core machine; {seconds} s of appends; proofs at {leaves} leaves)"
    );

    // 1. Durable appends under concurrent load.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let postgres = std::env::var("CERTGATE_BENCH_POSTGRES_URL")
        .ok()
        .map(|url| {
            let mut settings = storage::PgSettings::new(&url);
            settings.schema = format!("bench_log_{}", std::process::id());
            Arc::new(storage::PgPool::new(settings).unwrap())
        });
    let mut backends = vec![("segment files", None), ("SQLite", None)];
    if let Some(store) = &postgres {
        backends.push(("PostgreSQL", Some(store.clone())));
    }
    for ((name, pg), appenders) in backends
        .iter()
        .flat_map(|b| [64usize, 512].map(|n| (b.clone(), n)))
    {
        let backend = match pg {
            None if name.starts_with("SQLite") => {
                LogBackend::Sqlite(dir.path().join(format!("appends-{appenders}.db")))
            }
            None => LogBackend::Segments(SegmentDir::new(
                &dir.path().join(format!("appends-{appenders}")),
            )),
            Some(store) => {
                // A fresh tree for each run.
                store
                    .with(|c| -> Result<(), storage::Error> {
                        c.batch_execute(
                            "DROP TABLE IF EXISTS log_leaves, log_nodes, log_checkpoints, log_state;
                             DELETE FROM migrations WHERE component = 'access_log'",
                        )?;
                        Ok(())
                    })
                    .ok();
                LogBackend::Postgres(store.clone())
            }
        };
        let log = AccessLog::open(
            backend,
            key.clone(),
            WriterSettings {
                queue_capacity: 65_536,
                max_batch: 4096,
                checkpoint_interval: Duration::from_secs(1),
                origin: "bench/log".into(),
                group_commit_wait: Duration::ZERO,
                max_db_pages: 0,
                clock: Arc::new(storage::SystemClock),
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let latencies = rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..appenders {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = t as u64 * 1_000_000_000;
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        log.append(leaf(i)).await.unwrap();
                        lat.push(start.elapsed());
                        i += 1;
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        let mut sorted = latencies;
        sorted.sort_unstable();
        println!(
            "| durable appends on {name}, {appenders} concurrent appenders | {:.0} appends/s | ack p50 {:.2} ms | ack p99 {:.2} ms |",
            sorted.len() as f64 / seconds as f64,
            percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        );
    }

    if let Some(store) = postgres {
        store.drop_schema().unwrap();
    }

    // 2. Bytes per leaf and proofs on a large log, written as the writer writes it.
    println!(
        "(a leaf here is {} bytes of canonical JSON)",
        leaf(0).to_bytes().len()
    );
    let sqlite = dir.path().join("large-log.db");
    for (n, name) in ["segment files", "segment files, varied leaves", "SQLite"]
        .into_iter()
        .enumerate()
    {
        // A directory of its own for each log measured.
        let segments = SegmentDir::new(&dir.path().join(format!("large-log-{n}")));
        let make: fn(u64) -> Leaf = if name.contains("varied") {
            varied_leaf
        } else {
            leaf
        };
        let build = Instant::now();
        {
            let mut db: Box<dyn LogDb> = if name == "SQLite" {
                Box::new(SqliteLog::open_writer(&sqlite, 0).unwrap())
            } else {
                Box::new(SegmentLog::open_writer(&segments, 0).unwrap())
            };
            write_log(db.as_mut(), leaves, &key, make);
            if name != "SQLite" {
                // The auditors' query index is part of the cost: wait until it has every leaf.
                let index = segments.path().join("index.db");
                loop {
                    let indexed: i64 = rusqlite::Connection::open(&index)
                        .and_then(|c| {
                            c.query_row("SELECT COALESCE(SUM(count), 0) FROM frames", [], |r| {
                                r.get(0)
                            })
                        })
                        .unwrap_or(0);
                    if indexed as u64 >= leaves {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                let c = rusqlite::Connection::open(&index).unwrap();
                c.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
            }
        }
        let path = if name == "SQLite" {
            sqlite.clone()
        } else {
            segments.path().to_owned()
        };
        let mut bytes = disk_bytes(&path);
        if name == "SQLite" {
            for extra in ["-wal", "-shm"] {
                bytes += disk_bytes(&dir.path().join(format!("large-log.db{extra}")));
            }
        }
        println!(
            "| {name}: {leaves} leaves written in batches of 64 | {:.1} s | {bytes} bytes on disk | {:.0} bytes per leaf (goal for the default log: ≤ 400) |",
            build.elapsed().as_secs_f64(),
            bytes as f64 / leaves as f64
        );
        let mut db: Box<dyn LogDb> = if name == "SQLite" {
            Box::new(SqliteLog::open_read_only(&sqlite).unwrap())
        } else {
            Box::new(SegmentLog::reader(&segments))
        };
        proofs(db.as_mut(), leaves, name);
    }
}

/// Writes `leaves` leaves in batches of 64 (a batch the writer commits under load) and signs a
/// checkpoint over them.
fn write_log(db: &mut dyn LogDb, leaves: u64, key: &LogKey, leaf: fn(u64) -> Leaf) {
    let mut frontier = Frontier::new();
    let mut i = 0;
    while i < leaves {
        let n = 64.min(leaves - i);
        let mut batch: Vec<Leaf> = (i..i + n).map(leaf).collect();
        let mut refs: Vec<&mut Leaf> = batch.iter_mut().collect();
        db.append(&mut refs, &mut frontier).unwrap();
        i += n;
    }
    let root = tlog::root(db, leaves).unwrap();
    let note = key.sign(&Checkpoint {
        origin: "bench/log".into(),
        size: leaves,
        root,
    });
    db.put_checkpoint(leaves, &note, 1_800_000_000_000).unwrap();
}

/// The bytes of the files under `path` (or of the file).
fn disk_bytes(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .unwrap()
            .map(|e| disk_bytes(&e.unwrap().path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Inclusion- and consistency-proof latency at random positions of a log of `leaves`.
fn proofs(db: &mut dyn LogDb, leaves: u64, name: &str) {
    let root = tlog::root(db, leaves).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut inc, mut cons) = (Vec::new(), Vec::new());
    for _ in 0..2000 {
        let index = next() % leaves;
        let start = Instant::now();
        let proof = tlog::inclusion_proof(db, index, leaves).unwrap();
        inc.push(start.elapsed());
        let data = db.leaf(index).unwrap().unwrap();
        assert!(merkle::verify_inclusion(
            &merkle::leaf_hash(&data),
            index,
            leaves,
            &proof,
            &root
        ));
        let old = 1 + next() % (leaves - 1);
        let start = Instant::now();
        tlog::consistency_proof(db, old, leaves).unwrap();
        cons.push(start.elapsed());
    }
    inc.sort_unstable();
    cons.sort_unstable();
    println!(
        "| {name}: inclusion proof at {leaves} leaves | p50 {:.3} ms | p99 {:.3} ms |",
        percentile(&inc, 0.5).as_secs_f64() * 1e3,
        percentile(&inc, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| {name}: consistency proof at {leaves} leaves | p50 {:.3} ms | p99 {:.3} ms |",
        percentile(&cons, 0.5).as_secs_f64() * 1e3,
        percentile(&cons, 0.99).as_secs_f64() * 1e3
    );
}
