//! The knowledge base on the shipped sample policies and a generated population: index-backed
//! matching against brute force in both directions, the push feed, Chinese search.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use policies::codes::{Region, Tag};
use policies::eligibility::{self, Outcome};
use policies::import::read_policies;
use policies::index::SearchFilter;
use policies::store::KbStore;
use policies::{KnowledgeBase, Policy, Profile};
use search::ChineseAnalyzer;
use time::Date;

const SAMPLE: &str = policies::SAMPLE_POLICIES;

fn day(s: &str) -> Date {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
}

fn sample_policies() -> Vec<Policy> {
    let (good, bad) = read_policies(SAMPLE.as_bytes());
    assert!(bad.is_empty(), "the sample policies are valid: {bad:?}");
    assert!(good.len() >= 100);
    good.into_iter().map(|(_, p)| p).collect()
}

/// For every policy, the index-backed number of eligible enterprises is the brute-force one.
fn assert_counts_are_brute_force(kb: &KnowledgeBase, today: Date) {
    let all = kb.profiles();
    for p in kb.policies() {
        let want = all
            .iter()
            .filter(|e| eligibility::is_eligible(&p, e, today))
            .count();
        assert_eq!(
            kb.eligible_enterprises(&p, today).unwrap().len(),
            want,
            "{}",
            p.id
        );
    }
}

/// Where a knowledge base keeps its truth: a SQLite file (or memory), or a PostgreSQL schema.
struct Backend {
    store: Option<Arc<dyn KbStore>>,
    _schema: Option<cert_store::pg_store::SchemaGuard>,
}

impl Backend {
    /// A knowledge base on this store, with its indexes (and a SQLite store) in `dir`.
    fn open(&self, dir: Option<&std::path::Path>) -> KnowledgeBase {
        let analyzer = ChineseAnalyzer::new().unwrap();
        match &self.store {
            None => KnowledgeBase::open(dir, analyzer).unwrap(),
            Some(store) => KnowledgeBase::open_on(dir, analyzer, store.clone()).unwrap(),
        }
    }
}

fn on_sqlite() -> Option<Backend> {
    Some(Backend {
        store: None,
        _schema: None,
    })
}

/// A fresh PostgreSQL schema, or `None` (the test is skipped, and says so) without
/// `CERTGATE_TEST_POSTGRES_URL`.
fn on_postgres() -> Option<Backend> {
    let (store, schema) = policies::pg_store::test_store("knowledge base").unwrap()?;
    Some(Backend {
        store: Some(store),
        _schema: Some(schema),
    })
}

mod sqlite {
    use super::on_sqlite as backend;
    include!("knowledge_base/suite.rs");
}

mod postgres {
    use super::on_postgres as backend;
    include!("knowledge_base/suite.rs");
}

fn make_eligible(policy: &Policy, p: &mut Profile, today: Date) {
    use policies::model::Condition as C;
    for c in &policy.conditions {
        match c {
            C::RegionWithin { regions } => p.region = regions[0],
            C::IndustryWithin { codes } => {
                let code = codes[0].as_str();
                // A class inside the code: the section's sample class, or the code padded.
                let full = match code.len() {
                    1 => [
                        "A0111", "B0610", "C3911", "D4411", "E4710", "F5137", "G5432", "H6110",
                        "I6513", "J6620", "K7010", "L7212", "M7320", "N7721", "O8010", "P8391",
                        "Q8411", "R8710", "S9110", "T9700",
                    ]
                    .iter()
                    .find(|c| c.starts_with(code))
                    .map(|c| (*c).to_owned())
                    .unwrap(),
                    n => format!("{code}{}", &"1111"[..5 - n]),
                };
                p.industry = Some(policies::codes::Industry::parse(&full).unwrap());
            }
            C::ScaleIn { scales } => p.scale = Some(scales[0]),
            C::AgeYears { min, max } => {
                let years = min
                    .unwrap_or(0)
                    .max(max.map_or(0, |m| m.min(min.unwrap_or(0))));
                p.founded = Some(today - time::Duration::days(i64::from(years) * 366 + 10));
            }
            C::RegisteredCapital { min_yuan, max_yuan } => {
                p.registered_capital_yuan = Some(min_yuan.or(*max_yuan).unwrap_or(0))
            }
            C::Employees { min, max } => p.employees = Some(min.or(*max).unwrap_or(0)),
            C::AnnualRevenue { min_yuan, max_yuan } => {
                p.annual_revenue_yuan = Some(min_yuan.or(*max_yuan).unwrap_or(0))
            }
            C::TagsAll { tags } => p.tags.extend(tags.iter().copied()),
            C::TagsNone { tags } => {
                for t in tags {
                    p.tags.remove(t);
                }
            }
            C::CreditAtLeast { .. } => p.credit_rating = Some(policies::codes::Credit::A),
        }
    }
}

#[test]
fn paging_eligible_enterprises_gives_each_exactly_once_in_uscc_order() {
    let today = day("2026-12-01");
    let kb = KnowledgeBase::open(None, ChineseAnalyzer::new().unwrap()).unwrap();
    kb.publish(sample_policies(), today).unwrap();
    kb.upsert_profiles(
        policies::generate::population(1_000, 4, day("2026-11-01")).collect(),
        today,
    )
    .unwrap();
    let mut paged_some = false;
    for policy in kb.policies() {
        let all = kb.eligible_enterprises(&policy, today).unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = kb.eligible_page(&policy, today, after.as_ref(), 7).unwrap();
            assert!(page.enterprises.len() <= 7);
            seen.extend(page.enterprises.iter().map(|p| p.uscc.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        paged_some |= all.len() > 7;
        let expected: Vec<_> = all.iter().map(|p| p.uscc.clone()).collect();
        assert_eq!(seen, expected, "{}", policy.id);
    }
    assert!(paged_some, "no policy had more than one page");
}

#[test]
fn a_gap_in_the_stored_rows_is_renumbered_and_the_index_rebuilt() {
    let today = day("2026-12-01");
    let dir = tempfile::tempdir().unwrap();
    let population: Vec<Profile> =
        policies::generate::population(300, 9, day("2026-11-01")).collect();
    {
        let kb = KnowledgeBase::open(Some(dir.path()), ChineseAnalyzer::new().unwrap()).unwrap();
        kb.publish(sample_policies(), today).unwrap();
        kb.upsert_profiles(population, today).unwrap();
    }
    // What a failed write leaves behind: rows 100.. moved up by five.
    let db = rusqlite::Connection::open(dir.path().join("policies.db")).unwrap();
    db.execute_batch(
        "UPDATE enterprises SET row = -row - 1 WHERE row >= 100;
         UPDATE enterprises SET row = -row - 1 + 5 WHERE row < 0;",
    )
    .unwrap();
    drop(db);
    let kb = KnowledgeBase::open(Some(dir.path()), ChineseAnalyzer::new().unwrap()).unwrap();
    assert_eq!(kb.profile_count(), 300);
    assert_counts_are_brute_force(&kb, today);
}

/// Two nodes on one PostgreSQL store, writing at the same time: each sees the other's
/// policies and profiles, and the shared feed holds exactly one event per eligible pair —
/// none lost to a node that had not yet seen the other's change.
#[test]
fn two_nodes_on_one_store_see_each_others_changes_and_miss_no_match() {
    let Some(store) = on_postgres() else {
        return;
    };
    let today = day("2026-12-01");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store.open(Some(dir_a.path()));
    let b = store.open(Some(dir_b.path()));
    let policies = sample_policies();
    let population: Vec<Profile> =
        policies::generate::population(1_500, 21, day("2026-11-01")).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for chunk in policies.chunks(10) {
                a.publish(chunk.to_vec(), today).unwrap();
            }
        });
        s.spawn(|| {
            for chunk in population.chunks(50) {
                b.upsert_profiles(chunk.to_vec(), today).unwrap();
            }
        });
    });
    a.refresh().unwrap();
    b.refresh().unwrap();
    for node in [&a, &b] {
        assert_eq!(node.policies().len(), policies.len());
        assert_eq!(node.profile_count(), population.len());
    }
    let want: BTreeSet<(String, String)> = policies
        .iter()
        .flat_map(|p| {
            population
                .iter()
                .filter(|e| eligibility::is_eligible(p, e, today))
                .map(|e| (p.id.clone(), e.uscc.to_string()))
        })
        .collect();
    assert!(!want.is_empty());
    let feed = a.feed(0, 10_000_000).unwrap();
    let got: BTreeSet<(String, String)> = feed
        .iter()
        .map(|e| (e.policy_id.clone(), e.uscc.clone()))
        .collect();
    assert_eq!(feed.len(), got.len(), "an event twice");
    assert_eq!(got, want);
    // Both nodes answer alike in both directions.
    for p in policies.iter().step_by(7) {
        let on = |kb: &KnowledgeBase| -> Vec<String> {
            kb.eligible_enterprises(p, today)
                .unwrap()
                .iter()
                .map(|e| e.uscc.to_string())
                .collect()
        };
        assert_eq!(on(&a), on(&b), "{}", p.id);
    }
    // A withdrawal on B is gone from A once A refreshes (as its listener would make it).
    let gone = &policies[0].id;
    assert!(b.withdraw(gone).unwrap().is_some());
    assert!(a.policy(gone).is_some());
    assert!(a.refresh().unwrap() >= 1);
    assert!(a.policy(gone).is_none());
    assert!(
        a.search("", &SearchFilter::default(), 1000)
            .unwrap()
            .iter()
            .all(|h| h.id != *gone)
    );
    // A node opened now starts from the shared store.
    let dir_c = tempfile::tempdir().unwrap();
    let c = store.open(Some(dir_c.path()));
    assert_eq!(c.policies().len(), policies.len() - 1);
    assert_eq!(c.profile_count(), population.len());
}
