//! Policy matching at scale: enterprise → policies with 20,000 policies, policy → eligible
//! enterprises over 1,000,000 profiles (a broad and a selective policy), indexing rates and
//! peak memory.
//!
//! The 20,000 policies are the shipped sample policies repeated with other regions and
//! thresholds; the profiles are `generate::population`. Everything runs in one process on the
//! in-memory store; every answer is checked against brute-force evaluation on a sample.
//!
//! Run: `cargo bench -p policies --bench matching`
//! (`CERTGATE_BENCH_POLICIES`, default 20000; `CERTGATE_BENCH_PROFILES`, default 1000000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use policies::codes::{Region, regions};
use policies::eligibility;
use policies::generate::Rng;
use policies::model::Condition;
use policies::{KnowledgeBase, Policy, Profile};
use time::Date;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// The sample policies, repeated to `n` with other ids, regions and thresholds.
fn policies(n: u64) -> Vec<Policy> {
    let sample: Vec<Policy> =
        policies::import::read_policies(include_str!("../data/policies.jsonl").as_bytes())
            .0
            .into_iter()
            .map(|(_, p)| p)
            .collect();
    let provinces: Vec<Region> = regions()
        .map(|(r, _)| r)
        .filter(|r| *r != Region::NATION && r.parent() == Region::NATION)
        .collect();
    let mut rng = Rng::new(99);
    (0..n)
        .map(|i| {
            let mut p = sample[(i as usize) % sample.len()].clone();
            if i >= sample.len() as u64 {
                p.id = format!("{}-R{i}", p.id.chars().take(30).collect::<String>());
                // Most copies move to another province (with their region conditions dropped);
                // a few stay national.
                if !rng.chance(0.05) {
                    p.region = provinces[rng.between(0, provinces.len() as u64 - 1) as usize];
                    p.conditions
                        .retain(|c| !matches!(c, Condition::RegionWithin { .. }));
                }
                for c in &mut p.conditions {
                    if let Condition::Employees { min: Some(m), .. } = c {
                        *m = (*m as f64 * (0.5 + rng.unit())) as u64;
                    }
                }
            }
            p
        })
        .collect()
}

fn main() {
    let n_policies = env("CERTGATE_BENCH_POLICIES", 20_000);
    let n_profiles = env("CERTGATE_BENCH_PROFILES", 1_000_000);
    let today = Date::from_calendar_date(2026, time::Month::December, 1).unwrap();
    let as_of = Date::from_calendar_date(2026, time::Month::November, 1).unwrap();
    let kb = KnowledgeBase::open(None, search::ChineseAnalyzer::new().unwrap()).unwrap();
    let rss_empty = peak_rss_mb();

    let t = Instant::now();
    let profiles: Vec<Profile> = policies::generate::population(n_profiles, 1, as_of).collect();
    let generated = t.elapsed();
    let policy_set = policies(n_policies);
    let t = Instant::now();
    kb.load_without_matching(Vec::new(), profiles).unwrap();
    let index_profiles = t.elapsed();
    let t = Instant::now();
    kb.load_without_matching(policy_set.clone(), Vec::new())
        .unwrap();
    let index_policies = t.elapsed();
    let rss_loaded = peak_rss_mb();
    println!(
        "generated {n_profiles} profiles in {:.1} s; indexed them in {:.1} s ({:.0}/s); indexed {n_policies} policies in {:.1} s ({:.0}/s)",
        generated.as_secs_f64(),
        index_profiles.as_secs_f64(),
        n_profiles as f64 / index_profiles.as_secs_f64(),
        index_policies.as_secs_f64(),
        n_policies as f64 / index_policies.as_secs_f64()
    );

    // Enterprise → policies.
    let all = kb.profiles();
    let mut rng = Rng::new(5);
    let mut times = Vec::new();
    let mut eligible_total = 0;
    for i in 0..1000 {
        let e = &all[rng.between(0, all.len() as u64 - 1) as usize];
        let t = Instant::now();
        let m = kb.match_enterprise(e, today).unwrap();
        times.push(t.elapsed());
        eligible_total += m.eligible.len();
        if i < 20 {
            let brute = policy_set
                .iter()
                .filter(|p| eligibility::is_eligible(p, e, today))
                .count();
            assert_eq!(m.eligible.len(), brute, "exact for {}", e.uscc);
        }
    }
    times.sort_unstable();
    println!(
        "enterprise → policies ({n_policies} policies, 1000 random enterprises): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.1} eligible on average",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0),
        eligible_total as f64 / 1000.0
    );

    // Policy → enterprises: the broadest and a selective policy of the sample.
    let mut sizes: Vec<(usize, &Policy)> = policy_set
        .iter()
        .take(120)
        .map(|p| (kb.eligible_enterprises(p, today).unwrap().len(), p))
        .collect();
    sizes.sort_by_key(|(n, _)| *n);
    let broad = sizes.last().unwrap().1;
    let selective = sizes
        .iter()
        .find(|(n, _)| *n >= 10)
        .map_or(sizes[0].1, |(_, p)| *p);
    for (label, p) in [("broad", broad), ("selective", selective)] {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..20 {
            let t = Instant::now();
            n = kb.eligible_enterprises(p, today).unwrap().len();
            times.push(t.elapsed());
        }
        times.sort_unstable();
        let brute = all
            .iter()
            .filter(|e| eligibility::is_eligible(p, e, today))
            .count();
        assert_eq!(n, brute, "exact for {}", p.id);
        println!(
            "policy → enterprises, {label} ({}: {n} of {n_profiles} eligible): p50 {:.1} ms, max {:.1} ms",
            p.id,
            pct(&times, 0.5),
            pct(&times, 1.0)
        );
    }
    println!(
        "peak RSS: {:.0} MB before loading, {:.0} MB loaded, {:.0} MB at the end",
        rss_empty,
        rss_loaded,
        peak_rss_mb()
    );
}
