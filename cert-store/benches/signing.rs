//! Licence issuance and verification per second, ES256 and SM2SM3, next to `openssl speed`
//! on the same machine in the same run. Single-threaded on both sides, so the ratios are per
//! core.
//!
//! Run: `cargo bench -p cert-store --bench signing` (set `CERTGATE_BENCH_SECONDS`, default 3,
//! for the time spent on each measurement; `CERTGATE_BENCH_MEMORY=1` for an in-memory SQLite
//! store; `CERTGATE_BENCH_POSTGRES_URL=postgres://…` for the PostgreSQL store, in a schema of
//! its own that is dropped afterwards).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cert_store::crypto::{Kek, SealKey};
use cert_store::jws::{JwsAlg, JwsSigner};
use cert_store::licence::{FieldKind, FieldSpec, LicenceType};
use cert_store::service::{IssueRequest, LicenceService};
use cert_store::store::SqliteStore;
use serde_json::json;

const ISSUER: &str = "11110105MB0000002F";
const TYPE: &str = "11100000MB0000100D001";

fn main() {
    let seconds: f64 = std::env::var("CERTGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(seconds);
    let dir = tempfile::tempdir().unwrap();
    let mut schema = None;
    let (store, store_name): (Arc<dyn cert_store::store::Store>, &str) =
        if let Ok(url) = std::env::var("CERTGATE_BENCH_POSTGRES_URL") {
            let mut settings = storage::PgSettings::new(&url);
            settings.schema = format!("bench_{}", std::process::id());
            let pool = Arc::new(storage::PgPool::new(settings).unwrap());
            let pg = Arc::new(cert_store::pg_store::PgStore::open(pool.clone()).unwrap());
            schema = Some(pool);
            (pg, "postgres")
        } else if std::env::var("CERTGATE_BENCH_MEMORY").is_ok() {
            (Arc::new(SqliteStore::in_memory().unwrap()), "memory")
        } else {
            (
                Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap()),
                "file (FULL)",
            )
        };
    let licence_type = LicenceType {
        code: TYPE.parse().unwrap(),
        name: "营业执照".into(),
        issuers: [ISSUER.parse().unwrap()].into(),
        fields: ["name", "legal_representative", "business_scope"]
            .iter()
            .map(|n| FieldSpec {
                name: (*n).into(),
                kind: FieldKind::String,
                required: true,
                min: None,
            })
            .collect(),
        validity_days: 3650,
        consent_required: false,
        one_per_holder: false,
        business_licence: true,
    };
    let now = 1_800_000_000;
    let svc = LicenceService::open(
        store,
        Kek::generate().unwrap(),
        vec![licence_type],
        "https://bench/v1/status-lists",
        now,
        cert_store::cache::DEFAULT_CACHE_BYTES,
    )
    .unwrap();
    let issuer = ISSUER.parse().unwrap();

    println!(
        "# certgate licence signing benchmark ({seconds} s per measurement, one thread, store: {store_name})"
    );
    println!(
        "| alg | certgate sign/s (raw JWS) | issue/s (end to end) | verify/s (end to end) | openssl speed sign/s | openssl speed verify/s | issue ÷ openssl sign | verify ÷ openssl verify |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (alg, speed_arg) in [(JwsAlg::Es256, "ecdsap256"), (JwsAlg::Sm2Sm3, "sm2")] {
        let key = SealKey::generate(alg).unwrap();
        let input = vec![b'x'; 600];
        let raw_sign = rate(budget, || {
            key.sign(&input).unwrap();
        });

        let seal = svc
            .seals()
            .create_seal(
                cert_store::service::SealOwner::Department {
                    id: &issuer,
                    full_name: "某区市场监督管理局",
                },
                "公章",
                alg,
                None,
                now,
            )
            .unwrap();
        let request = |i: u64| {
            IssueRequest {
            licence_type: TYPE.into(),
            holder_id: "91110108551385082Q".into(),
            holder_name: "小米科技有限责任公司".into(),
            seal_id: seal.id.clone(),
            fields: json!({"name": "小米科技有限责任公司", "legal_representative": "雷军", "business_scope": "技术开发"}).as_object().unwrap().clone(),
            valid_from: None,
            valid_until: None,
            serial: Some(format!("{}{i:010}", alg.name().chars().next().unwrap_or('X'))),
        }
        };
        let mut i = 0u64;
        let mut last = None;
        let issue = rate(budget, || {
            i += 1;
            last = Some(svc.issuance().issue(&issuer, &request(i), now).unwrap());
        });
        let credential = last.unwrap().sd_jwt;
        let verify = rate(budget, || {
            assert!(svc.verification().verify(&credential, now + 1).valid);
        });

        let (speed_sign, speed_verify) = openssl_speed(speed_arg, seconds);
        println!(
            "| {} | {raw_sign:.0} | {issue:.0} | {verify:.0} | {speed_sign:.0} | {speed_verify:.0} | {:.2} | {:.2} |",
            alg.name(),
            issue / speed_sign,
            verify / speed_verify
        );
    }
    if let Some(pool) = schema {
        pool.drop_schema().unwrap();
    }
}

/// Operations per second of `op`, run for `budget`.
fn rate(budget: Duration, mut op: impl FnMut()) -> f64 {
    op(); // warm up
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        op();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `openssl speed` sign/s and verify/s for one algorithm, on this machine, now.
fn openssl_speed(alg: &str, seconds: f64) -> (f64, f64) {
    let secs = format!("{}", seconds.ceil().max(1.0) as u64);
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &secs, alg])
        .output()
        .expect("openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers.as_slice() {
        [.., sign, verify] => (*sign, *verify),
        _ => panic!("cannot read openssl speed output:\n{text}"),
    }
}
