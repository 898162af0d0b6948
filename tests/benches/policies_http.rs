//! The policy knowledge base as its users meet it, at 10^6 enterprises: `certgate enterprises
//! import` of a generated population (profiles a second, with its progress lines), the disk the
//! knowledge base then takes (store, enterprise index, matches and push feed), and a consumer
//! paging through a broad policy's whole list of eligible enterprises over mTLS
//! (`GET /v1/policies/{id}/eligible-enterprises`) at several page sizes: time for the whole list
//! and for the first page, every enterprise exactly once, in USCC order.
//!
//! Run: `cargo bench -p certgate-tests --bench policies_http` (`CERTGATE_BENCH_PROFILES`,
//! default 1000000). The gateway runs on CPU 0 when there are two cores; run the bench itself
//! on CPU 1 (`taskset -c 1`, as `tests/bench/run` does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use certgate_tests::*;
use http::StatusCode;
use policies::eligibility;

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let n = env_or("CERTGATE_BENCH_PROFILES", 1_000_000);
    let pki = TestPki::new();
    let push = pki.department("push", PUSH);
    let departments = standard_departments() + &dept(PUSH, "政策推送服务", &["policy-push"], true);
    let config = write_config(&pki, "", &departments);
    let cfg = config.to_str().unwrap();
    let dir = pki.dir.path();
    let bin = certgate_bin();
    // `certgate args`, on the CPUs `cpus` names when it names some (`taskset -c cpus`).
    let run_on = |cpus: &str, args: &[&str]| {
        let mut cmd = if cpus.is_empty() {
            Command::new(&bin)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(&bin);
            c
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "certgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let run = |args: &[&str]| run_on("", args);

    // The population, and the policies.
    let profiles = dir.join("profiles.jsonl");
    let t = Instant::now();
    run(&[
        "enterprises",
        "generate",
        "--count",
        &n.to_string(),
        "--out",
        profiles.to_str().unwrap(),
    ]);
    println!(
        "generated {n} profiles ({:.0} MB of JSON Lines) in {:.1} s",
        mb(du(&profiles)),
        t.elapsed().as_secs_f64()
    );
    let policies_file = dir.join("policies.jsonl");
    std::fs::write(&policies_file, policies::SAMPLE_POLICIES).unwrap();
    run(&[
        "policies",
        "import",
        "--config",
        cfg,
        policies_file.to_str().unwrap(),
    ]);

    // The import, as an operator runs it: on every core of the machine (the bench itself may
    // be pinned to one; the gateway is not running yet), reading on one while matching and
    // storing on another.
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let t = Instant::now();
    let out = run_on(
        &cpus,
        &[
            "enterprises",
            "import",
            "--config",
            cfg,
            profiles.to_str().unwrap(),
        ],
    );
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress = stderr
        .lines()
        .filter(|l| l.starts_with("profiles: "))
        .count();
    println!(
        "import on CPUs {cpus}: {n} profiles in {secs:.1} s = {:.0} profiles/s (goal ≥ 20,000/s); {progress} progress lines; {}",
        n as f64 / secs,
        String::from_utf8_lossy(&out.stdout).trim()
    );

    // What the knowledge base takes on disk.
    let kb_dir = dir.join("data/policies");
    let db = kb_dir.join("policies.db");
    let store = du(&db) + du(&kb_dir.join("policies.db-wal"));
    let index = du(&kb_dir.join("index"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    // Every table and index of the store by the pages it takes (SQLite's dbstat).
    let mut by_table: Vec<(String, i64)> = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    by_table.retain(|(_, bytes)| *bytes >= 1 << 20);
    let tables: Vec<String> = by_table
        .iter()
        .map(|(name, bytes)| format!("{name} {:.0} MB", mb(*bytes as u64)))
        .collect();
    println!(
        "disk for {n} profiles: {:.0} MB in all (goal ≤ 1000 MB per 10^6) = store file {:.0} MB + enterprise and policy indexes {:.0} MB; {} live matches, {} push-feed events; inside the store: {}",
        mb(store + index) * 1e6 / n as f64,
        mb(store),
        mb(index),
        count("live_matches"),
        count("push_feed"),
        tables.join(", "),
    );
    drop(conn);

    // The broadest policy of the sample (by the count of eligible enterprises in a sample of
    // the population), and its exact count over the whole population.
    let today = gateway::matching::today();
    let sample: Vec<policies::Profile> =
        policies::generate::population(n.min(20_000), 1, day("2026-11-01")).collect();
    let all_policies: Vec<policies::Policy> = policies::SAMPLE_POLICIES
        .lines()
        .map(|l| policies::Policy::from_json(l).unwrap())
        .collect();
    let broad = all_policies
        .iter()
        .max_by_key(|p| {
            sample
                .iter()
                .filter(|e| eligibility::is_eligible(p, e, today))
                .count()
        })
        .unwrap()
        .clone();
    let want = policies::generate::population(n, 1, day("2026-11-01"))
        .filter(|e| eligibility::is_eligible(&broad, e, today))
        .count();

    let served = Served::start_on(
        &config,
        (std::thread::available_parallelism().map_or(1, |c| c.get()) >= 2).then_some(0),
    );
    let mut conn = Client::new(&pki.ca_pem(), Some(&push), Proto::H1)
        .connect(served.api)
        .await
        .unwrap();
    for limit in [1_000usize, 10_000, 100_000] {
        let started = Instant::now();
        let mut first_ms = 0.0;
        let mut cursor: Option<String> = None;
        let mut seen = 0usize;
        let mut last = String::new();
        let mut pages = 0;
        // The bench's own reading of the pages (JSON into values), as a consumer's would be.
        let mut parsing = 0.0;
        loop {
            let path = match &cursor {
                None => format!(
                    "/v1/policies/{}/eligible-enterprises?limit={limit}",
                    broad.id
                ),
                Some(c) => format!(
                    "/v1/policies/{}/eligible-enterprises?limit={limit}&cursor={c}",
                    broad.id
                ),
            };
            let t = Instant::now();
            let reply = conn.get(&path).await.unwrap();
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            if pages == 0 {
                first_ms = t.elapsed().as_secs_f64() * 1e3;
            }
            pages += 1;
            let t = Instant::now();
            let page = reply.json();
            parsing += t.elapsed().as_secs_f64();
            for e in page["enterprises"].as_array().unwrap() {
                let uscc = e["uscc"].as_str().unwrap().to_owned();
                assert!(uscc > last, "in USCC order, each once");
                last = uscc;
                seen += 1;
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, want, "every eligible enterprise of {}", broad.id);
        println!(
            "eligible enterprises of {} over HTTP, limit={limit}: {seen} in {pages} pages, whole list {:.2} s (goal ≤ 3 s; of it {parsing:.2} s the client parsing the pages), first page {first_ms:.1} ms (goal ≤ 50 ms)",
            broad.id,
            started.elapsed().as_secs_f64()
        );
    }
    served.stop();
}

fn day(s: &str) -> time::Date {
    policies::model::parse_date(s).unwrap()
}
