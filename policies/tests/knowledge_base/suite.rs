// The knowledge-base suite, included once per store (see ../knowledge_base.rs): `backend` names
// the module's store.

use super::*;

/// A knowledge base in memory on this module's store, with what keeps the store alive.
fn kb() -> Option<(KnowledgeBase, Backend)> {
    let b = backend()?;
    Some((b.open(None), b))
}

#[test]
fn index_backed_matching_equals_brute_force_both_ways() {
    let today = day("2026-12-01");
    let Some((kb, _store)) = kb() else {
        return;
    };
    let policies = sample_policies();
    kb.publish(policies.clone(), today).unwrap();
    // Half the population moved to a random real division of any province, and given random
    // tags of the whole vocabulary.
    let counties: Vec<Region> = policies::codes::regions()
        .map(|(r, _)| r)
        .filter(|r| r.ancestors().len() == 4)
        .collect();
    let vocabulary = policies::tags::all();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let population: Vec<Profile> = policies::generate::population(10_000, 42, day("2026-11-01"))
        .map(|mut p| {
            if next(2) == 0 {
                p.region = counties[next(counties.len())];
                for _ in 0..next(4) {
                    p.tags
                        .insert(Tag::parse(vocabulary[next(vocabulary.len())].tag).unwrap());
                }
            }
            p
        })
        .collect();
    let provinces: BTreeSet<Region> = population.iter().map(|p| p.region.ancestors()[p.region.ancestors().len() - 2]).collect();
    assert!(provinces.len() >= 31, "{} provinces", provinces.len());
    kb.upsert_profiles(population.clone(), today).unwrap();

    // Policy → enterprises.
    let mut total = 0;
    for p in &policies {
        let brute: Vec<&str> = {
            let mut v: Vec<&str> = population
                .iter()
                .filter(|e| eligibility::evaluate(p, e, today).eligible)
                .map(|e| e.uscc.as_str())
                .collect();
            v.sort_unstable();
            v
        };
        let indexed: Vec<String> = kb
            .eligible_enterprises(p, today)
            .unwrap()
            .iter()
            .map(|e| e.uscc.to_string())
            .collect();
        assert_eq!(indexed, brute, "policy {}", p.id);
        total += brute.len();
    }
    assert!(
        total > 1000,
        "the sample is not trivially empty: {total} matches"
    );

    // Enterprise → policies, eligible and almost eligible.
    let mut eligible_pairs = 0;
    for e in &population {
        let m = kb.match_enterprise(e, today).unwrap();
        let got: BTreeSet<&str> = m.eligible.iter().map(|x| x.policy.id.as_str()).collect();
        let want: BTreeSet<&str> = policies
            .iter()
            .filter(|p| eligibility::evaluate(p, e, today).eligible)
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(got, want, "enterprise {}", e.uscc);
        let got: BTreeSet<&str> = m.almost.iter().map(|x| x.policy.id.as_str()).collect();
        let want: BTreeSet<&str> = policies
            .iter()
            // Publicity policies are information only: never eligible, nor almost.
            .filter(|p| p.category != policies::model::Category::Publicity)
            .filter(|p| {
                let ev = eligibility::evaluate(p, e, today);
                ev.conditions[0].outcome == Outcome::Met && ev.unmet().count() == 1
            })
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(got, want, "almost, enterprise {}", e.uscc);
        eligible_pairs += m.eligible.len();
    }
    assert_eq!(eligible_pairs, total);
}

#[test]
fn the_push_feed_has_one_event_per_new_match_and_replays_the_same() {
    let today = day("2026-12-01");
    let Some((kb, _store)) = kb() else {
        return;
    };
    let population: Vec<Profile> =
        policies::generate::population(3_000, 7, day("2026-11-01")).collect();
    kb.upsert_profiles(population.clone(), today).unwrap();
    assert!(kb.feed(0, 10).unwrap().is_empty(), "no policies, no events");

    // Publishing a policy: one event per eligible enterprise.
    let policies = sample_policies();
    let broad = policies
        .iter()
        .find(|p| {
            let n = kb.eligible_enterprises(p, today).unwrap().len();
            (20..1000).contains(&n)
        })
        .expect("a policy with a few eligible enterprises")
        .clone();
    let eligible = kb.eligible_enterprises(&broad, today).unwrap();
    let changes = kb.publish(vec![broad.clone()], today).unwrap();
    assert_eq!(changes.new_matches, eligible.len());
    let events = kb.feed(0, 100_000).unwrap();
    assert_eq!(events.len(), eligible.len());
    let ids: BTreeSet<&str> = events.iter().map(|e| e.uscc.as_str()).collect();
    assert_eq!(ids, eligible.iter().map(|e| e.uscc.as_str()).collect());
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        events
            .iter()
            .all(|e| e.policy_id == broad.id && e.category == broad.category.as_str())
    );

    // Replays from any cursor are identical.
    let mid = events[events.len() / 2].seq;
    assert_eq!(
        kb.feed(mid, 100_000).unwrap(),
        events[events.len() / 2 + 1..]
    );
    assert_eq!(kb.feed(0, 100_000).unwrap(), events);

    // A new version with the same eligible set: no duplicate events.
    let mut v2 = broad.clone();
    v2.version += 1;
    v2.title.push_str("（修订）");
    assert_eq!(kb.publish(vec![v2.clone()], today).unwrap().new_matches, 0);
    assert_eq!(kb.feed(0, 100_000).unwrap().len(), events.len());

    // A profile that changes so that it becomes eligible: exactly one event.
    let outsider = population
        .iter()
        .find(|e| {
            let ev = eligibility::evaluate(&v2, e, today);
            !ev.eligible && ev.conditions[0].outcome == Outcome::Met
        })
        .expect("an enterprise in the region that is not eligible");
    let mut fixed = outsider.clone();
    make_eligible(&v2, &mut fixed, today);
    assert!(
        eligibility::evaluate(&v2, &fixed, today).eligible,
        "{:?}",
        eligibility::evaluate(&v2, &fixed, today)
    );
    let before = kb.feed(0, 100_000).unwrap().len();
    let c = kb.upsert_profiles(vec![fixed.clone()], today).unwrap();
    assert_eq!(c.new_matches, 1);
    let after = kb.feed(0, 100_000).unwrap();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap().uscc, fixed.uscc.as_str());
    // The same profile again: nothing new.
    assert_eq!(
        kb.upsert_profiles(vec![fixed], today).unwrap().new_matches,
        0
    );
    assert_eq!(kb.feed(0, 100_000).unwrap().len(), before + 1);
}

/// Changes `p` so that it meets every condition of `policy`.
#[test]
fn search_keeps_domain_terms_whole_and_highlights() {
    let Some((kb, _store)) = kb() else {
        return;
    };
    let policies = sample_policies();
    kb.publish(policies.clone(), day("2026-12-01")).unwrap();
    let hits = kb
        .search("专精特新", &SearchFilter::default(), 200)
        .unwrap();
    let got: BTreeSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    let want: BTreeSet<&str> = policies
        .iter()
        .filter(|p| p.text.contains("专精特新") || p.title.contains("专精特新"))
        .map(|p| p.id.as_str())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let only_part: Vec<&Policy> = policies
        .iter()
        .filter(|p| {
            let t = format!("{}{}", p.title, p.text);
            !t.contains("专精特新") && (t.contains("专精") || t.contains("特新"))
        })
        .collect();
    assert!(
        only_part.len() >= 2,
        "the sample has policies with only 专精 or 特新"
    );
    for p in only_part {
        assert!(
            !got.contains(p.id.as_str()),
            "{} mentions only part of 专精特新",
            p.id
        );
    }
    assert!(
        hits.iter().any(|h| h.snippet.contains("<em>专精特新</em>")),
        "{:?}",
        hits.first()
    );

    // Filters: category and region.
    let filter = SearchFilter {
        category: Some(policies::model::Category::Automatic),
        region: Some(policies::codes::Region::parse("440305").unwrap()),
        industry: None,
    };
    for h in kb.search("", &filter, 200).unwrap() {
        let p = kb.policy(&h.id).unwrap();
        assert_eq!(p.category, policies::model::Category::Automatic);
        let r = policies::codes::Region::parse("440305").unwrap();
        assert!(r.within(p.region) || p.region.within(r), "{}", p.id);
    }
}

#[test]
fn explanations_name_value_and_threshold() {
    let today = day("2026-12-01");
    let policies = sample_policies();
    let p = policies
        .iter()
        .find(|p| p.conditions.iter().any(|c| c.kind() == "credit_at_least"))
        .unwrap();
    let mut e = policies::generate::population(1, 3, day("2026-11-01"))
        .next()
        .unwrap();
    e.region = match p.region {
        r if r == policies::codes::Region::NATION => {
            policies::codes::Region::parse("110108").unwrap()
        }
        r => r,
    };
    e.credit_rating = Some(policies::codes::Credit::D);
    e.tags.insert(Tag::parse("失信被执行人").unwrap());
    let ev = eligibility::evaluate(p, &e, today);
    let credit = ev
        .conditions
        .iter()
        .find(|c| c.condition == "credit_at_least")
        .unwrap();
    assert_eq!(credit.outcome, Outcome::NotMet);
    assert_eq!(credit.value, "D");
    e.credit_rating = None;
    let ev = eligibility::evaluate(p, &e, today);
    let credit = ev
        .conditions
        .iter()
        .find(|c| c.condition == "credit_at_least")
        .unwrap();
    assert_eq!(credit.outcome, Outcome::Missing);
    assert!(credit.value.is_null());
    assert!(!ev.eligible);
}

#[test]
fn withdrawal_and_rebuilding_the_indexes_from_the_store() {
    let Some(store) = backend() else {
        return;
    };
    let today = day("2026-12-01");
    let dir = tempfile::tempdir().unwrap();
    let policies = sample_policies();
    let population: Vec<Profile> =
        policies::generate::population(2_000, 5, day("2026-11-01")).collect();
    let expected = |kb: &KnowledgeBase| -> Vec<(String, usize)> {
        kb.policies()
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    kb.eligible_enterprises(p, today).unwrap().len(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect()
    };
    let before = {
        let kb = store.open(Some(dir.path()));
        kb.upsert_profiles(population.clone(), today).unwrap();
        kb.publish(policies.clone(), today).unwrap();
        // Profiles that arrive later, out of USCC order, one by one.
        for p in policies::generate::population(30, 6, day("2026-11-01")) {
            kb.upsert_profiles(vec![p], today).unwrap();
        }
        // Withdraw one policy with matches.
        let gone = policies
            .iter()
            .find(|p| !kb.eligible_enterprises(p, today).unwrap().is_empty())
            .unwrap();
        let events = kb.feed(0, 1_000_000).unwrap().len();
        assert!(kb.withdraw(&gone.id).unwrap().unwrap() > 0);
        assert!(kb.withdraw(&gone.id).unwrap().is_none());
        assert!(kb.policy(&gone.id).is_none());
        assert!(
            kb.search("", &SearchFilter::default(), 1000)
                .unwrap()
                .iter()
                .all(|h| h.id != gone.id)
        );
        for e in population.iter().take(200) {
            let m = kb.match_enterprise(e, today).unwrap();
            assert!(
                m.eligible
                    .iter()
                    .chain(&m.almost)
                    .all(|x| x.policy.id != gone.id)
            );
        }
        assert_eq!(
            kb.feed(0, 1_000_000).unwrap().len(),
            events,
            "feed events stay"
        );
        expected(&kb)
    };
    // Reopened as it is, then with the enterprise index missing and the policy index corrupt:
    // the same answers.
    let reopen = || store.open(Some(dir.path()));
    assert_eq!(expected(&reopen()), before);
    {
        // Reopened with the indexes kept: the rows they hold are still the profiles' rows.
        assert_counts_are_brute_force(&reopen(), today);
    }
    std::fs::remove_dir_all(dir.path().join("index/enterprises")).unwrap();
    std::fs::write(dir.path().join("index/policies/meta.json"), b"{ not json").unwrap();
    let kb = reopen();
    assert_eq!(expected(&kb), before);
    // And every answer is still exactly the brute-force one.
    let all = kb.profiles();
    for p in kb.policies() {
        let mut want: Vec<String> = all
            .iter()
            .filter(|e| eligibility::is_eligible(&p, e, today))
            .map(|e| e.uscc.to_string())
            .collect();
        want.sort();
        let got: Vec<String> = kb
            .eligible_enterprises(&p, today)
            .unwrap()
            .iter()
            .map(|e| e.uscc.to_string())
            .collect();
        assert_eq!(got, want, "{}", p.id);
    }
    for e in all.iter().step_by(50) {
        let got: BTreeSet<String> = kb
            .match_enterprise(e, today)
            .unwrap()
            .eligible
            .iter()
            .map(|m| m.policy.id.clone())
            .collect();
        let want: BTreeSet<String> = kb
            .policies()
            .iter()
            .filter(|p| eligibility::is_eligible(p, e, today))
            .map(|p| p.id.clone())
            .collect();
        assert_eq!(got, want, "{}", e.uscc);
    }
    assert!(
        !kb.search("专精特新", &SearchFilter::default(), 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(kb.profile_count(), population.len() + 30);
}

#[test]
fn eligibility_that_changes_with_time_reaches_the_feed_on_the_daily_rematch() {
    let Some((kb, _store)) = kb() else {
        return;
    };
    let population: Vec<Profile> =
        policies::generate::population(2_000, 13, day("2026-11-01")).collect();
    kb.upsert_profiles(population, day("2026-12-01")).unwrap();
    // A policy whose window opens later: no matches today, its matches on the day it opens.
    // (An online policy for the whole country with one condition at most: the sample
    // policies with no conditions are publicity only.)
    let mut later = sample_policies()
        .into_iter()
        .find(|p| p.category != policies::model::Category::Publicity)
        .unwrap();
    later.region = policies::codes::Region::NATION;
    later.conditions.truncate(1);
    later.window.start = day("2027-01-01");
    later.window.end = day("2027-12-31");
    assert_eq!(
        kb.publish(vec![later.clone()], day("2026-12-01"))
            .unwrap()
            .new_matches,
        0
    );
    assert_eq!(kb.rematch_all(day("2026-12-31")).unwrap().new_matches, 0);
    let opened = kb.rematch_all(day("2027-01-01")).unwrap();
    let eligible = kb
        .eligible_enterprises(&later, day("2027-01-01"))
        .unwrap()
        .len();
    assert!(eligible > 0);
    assert_eq!(opened.new_matches, eligible);
    // A publicity policy (information only) in force for everyone: no one is eligible for it
    // and the feed gets nothing from it.
    let mut publicity = later.clone();
    publicity.id = format!("{}-publicity", later.id);
    publicity.category = policies::model::Category::Publicity;
    publicity.conditions.clear();
    let before = kb.feed(0, 1_000_000).unwrap().len();
    assert_eq!(
        kb.publish(vec![publicity.clone()], day("2027-01-01"))
            .unwrap()
            .new_matches,
        0
    );
    assert!(kb
        .eligible_enterprises(&publicity, day("2027-01-01"))
        .unwrap()
        .is_empty());
    assert_eq!(kb.feed(0, 1_000_000).unwrap().len(), before);
    assert_eq!(kb.feed(0, 1_000_000).unwrap().len(), eligible);
    // Once it closes, the matches end (their events stay).
    let closed = kb.rematch_all(day("2028-01-01")).unwrap();
    assert_eq!(closed.ended_matches, eligible);
}

/// 200 county-level divisions drawn from the whole table: a profile registered in each imports
/// and matches its province's policy, and no other province's.
#[test]
fn real_county_codes_import_and_match_within_their_province() {
    let today = day("2026-12-01");
    let Some((kb, _store)) = kb() else {
        return;
    };
    let counties: Vec<Region> = policies::codes::regions()
        .map(|(r, _)| r)
        .filter(|r| r.ancestors().len() == 4)
        .collect();
    let step = counties.len() / 200;
    let sample: Vec<Region> = counties.iter().step_by(step).take(200).copied().collect();
    assert_eq!(sample.len(), 200);
    let province = |r: Region| r.ancestors()[r.ancestors().len() - 2];
    let provinces: BTreeSet<Region> = sample.iter().map(|r| province(*r)).collect();
    let policy_of = |p: Region| format!("P-{}-2026-901", p.code());
    let policies: Vec<Policy> = provinces
        .iter()
        .map(|p| {
            Policy::from_json(
                &serde_json::json!({
                    "id": policy_of(*p), "version": 1, "title": format!("{}中小企业奖励", p.name()),
                    "issuer": "省工业和信息化厅", "region": p.code(), "category": "在线办理",
                    "window": {"start": "2026-01-01", "end": "2027-12-31"},
                    "benefit": {"kind": "fixed", "amount_yuan": 10000}, "text": "奖励",
                    "conditions": [{"kind": "region_within", "regions": [p.code()]}]
                })
                .to_string(),
            )
            .unwrap()
        })
        .collect();
    kb.publish(policies, today).unwrap();
    let usccs: Vec<_> = policies::generate::population(200, 5, today)
        .map(|p| p.uscc)
        .collect();
    let lines: String = sample
        .iter()
        .zip(&usccs)
        .map(|(r, uscc)| {
            format!(
                "{{\"uscc\":\"{uscc}\",\"name\":\"{}测试企业\",\"region\":\"{}\",\"updated\":\"2026-11-01\"}}\n",
                r.name(),
                r.code()
            )
        })
        .collect();
    // And one registered under a withdrawn code: 莱城区 371202, in 济南市 since 2018.
    let old = format!(
        "{{\"uscc\":\"{}\",\"name\":\"莱芜老企业\",\"region\":\"371202\",\"updated\":\"2026-11-01\"}}\n",
        usccs[199]
    );
    let lines = lines.replacen(&lines[lines.rfind("{\"uscc").unwrap()..], &old, 1);
    let (good, bad) = policies::import::read_profiles(lines.as_bytes());
    assert!(bad.is_empty(), "{bad:?}");
    let profiles: Vec<Profile> = good.into_iter().map(|(_, p)| p).collect();
    assert_eq!(profiles[199].region.code(), "370116", "stored as the division that holds it");
    kb.upsert_profiles(profiles.clone(), today).unwrap();
    for p in &profiles {
        let m = kb.match_enterprise(p, today).unwrap();
        let ids: Vec<&str> = m.eligible.iter().map(|x| x.policy.id.as_str()).collect();
        assert_eq!(ids, [policy_of(province(p.region)).as_str()], "{} {}", p.region, p.region.name());
    }
}
