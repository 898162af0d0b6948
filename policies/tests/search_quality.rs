//! Search quality on the labelled query set (`data/search-queries.tsv`, written by hand over the
//! sample policies): precision at 5, recall at 10 and nDCG at 10 (binary relevance), printed
//! per query and on average, and held above floors so that a change that makes search worse
//! fails here. Queries with no relevant policy count the policies they wrongly return.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use policies::KnowledgeBase;
use policies::index::SearchFilter;
use search::ChineseAnalyzer;

const QUERIES: &str = include_str!("../data/search-queries.tsv");

struct Labelled<'a> {
    query: &'a str,
    relevant: BTreeSet<&'a str>,
}

fn labelled() -> Vec<Labelled<'static>> {
    QUERIES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let query = cols.next().unwrap().trim();
            let relevant = cols.next().unwrap_or("").split_whitespace().collect();
            Labelled { query, relevant }
        })
        .collect()
}

/// P@5, R@10 and nDCG@10 of one ranked list.
fn metrics(ranked: &[String], relevant: &BTreeSet<&str>) -> (f64, f64, f64) {
    let hit = |i: usize| {
        ranked
            .get(i)
            .is_some_and(|id| relevant.contains(id.as_str()))
    };
    let p5 = (0..5).filter(|i| hit(*i)).count() as f64 / 5.0;
    let r10 = (0..10).filter(|i| hit(*i)).count() as f64 / relevant.len() as f64;
    let dcg: f64 = (0..10)
        .filter(|i| hit(*i))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(10))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    // `+ 0.0`: an empty sum is -0.0.
    (p5, r10, dcg / ideal + 0.0)
}

#[test]
fn the_labelled_queries_find_their_policies() {
    let set = labelled();
    assert!(set.len() >= 30, "{} queries", set.len());
    let kb = KnowledgeBase::open(None, ChineseAnalyzer::new().unwrap()).unwrap();
    let (good, bad) = policies::import::read_policies(policies::SAMPLE_POLICIES.as_bytes());
    assert!(bad.is_empty());
    let ids: BTreeSet<String> = good.iter().map(|(_, p)| p.id.clone()).collect();
    let today = time::Date::from_calendar_date(2026, time::Month::December, 1).unwrap();
    kb.publish(good.into_iter().map(|(_, p)| p).collect(), today)
        .unwrap();

    let (mut p5, mut r10, mut ndcg, mut judged) = (0.0, 0.0, 0.0, 0.0);
    // The best P@5 and R@10 any ranking could reach with these relevant sets.
    let (mut ceiling, mut r_ceiling) = (0.0, 0.0);
    let mut wrongly_found = 0;
    println!(
        "{:<16} {:>4} {:>5} {:>5} {:>7}",
        "query", "rel", "P@5", "R@10", "nDCG@10"
    );
    for q in &set {
        for id in &q.relevant {
            assert!(ids.contains(*id), "{}: no policy {id}", q.query);
        }
        let ranked: Vec<String> = kb
            .search(q.query, &SearchFilter::default(), 10)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        if q.relevant.is_empty() {
            wrongly_found += ranked.len();
            println!(
                "{:<16} {:>4} found {} (none relevant)",
                q.query,
                0,
                ranked.len()
            );
            continue;
        }
        let (a, b, c) = metrics(&ranked, &q.relevant);
        println!(
            "{:<16} {:>4} {a:>5.2} {b:>5.2} {c:>7.2}",
            q.query,
            q.relevant.len()
        );
        p5 += a;
        r10 += b;
        ndcg += c;
        ceiling += q.relevant.len().min(5) as f64 / 5.0;
        r_ceiling += q.relevant.len().min(10) as f64 / q.relevant.len() as f64;
        judged += 1.0;
    }
    let (p5, r10, ndcg) = (p5 / judged, r10 / judged, ndcg / judged);
    let (ceiling, r_ceiling) = (ceiling / judged, r_ceiling / judged);
    println!(
        "mean over {judged} queries: P@5 {p5:.3} (at most {ceiling:.3} with these relevant sets), R@10 {r10:.3} (at most {r_ceiling:.3}), nDCG@10 {ndcg:.3}; {wrongly_found} policies returned for the {} queries with none relevant",
        set.len() - judged as usize
    );
    // Floors a little under what the shipped analyzer reaches (BENCHMARKS.md has the figures).
    assert!(r10 >= 0.75, "R@10 {r10:.3}");
    assert!(ndcg >= 0.80, "nDCG@10 {ndcg:.3}");
    assert!(p5 >= 0.8 * ceiling, "P@5 {p5:.3} of at most {ceiling:.3}");
    assert!(
        wrongly_found <= 3,
        "{wrongly_found} policies for queries with none relevant"
    );
}
