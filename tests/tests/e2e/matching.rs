// Policy finds the enterprise, over real mTLS: publication and profile upserts by the right
// departments only, matching in both directions checked against brute force, search, the push
// feed, and bad input. Included once per store (see main.rs): `storage` names the backend.

use std::collections::BTreeSet;

use certgate_tests::*;
use http::{Method, StatusCode};
use policies::eligibility;
use policies::{Policy, Profile};
use serde_json::{Value, json};

/// 政策推送服务 (policy-push).
/// 大数据局: maintains enterprise profiles.
const DATA: &str = "11110105MB0000012G";

/// The ids of the policies `p` is eligible for on `day`, decided by the evaluation itself.
fn eligible_ids(policies: &[Policy], p: &Profile, day: time::Date) -> BTreeSet<String> {
    policies
        .iter()
        .filter(|x| eligibility::evaluate(x, p, day).eligible)
        .map(|x| x.id.clone())
        .collect()
}

struct World {
    _schema: Option<cert_store::pg_store::SchemaGuard>,
    _pki: TestPki,
    _gw: TestGateway,
    ops: Conn,
    data: Conn,
    approval: Conn,
    push: Conn,
    audit: Conn,
}

/// The world on this module's backend; `None` when the backend is not available here.
async fn world() -> Option<World> {
    let (extra, schema) = storage("matching")?;
    let pki = TestPki::new();
    let departments = standard_departments()
        + &dept(PUSH, "政策推送服务", &["policy-push"], true)
        + &dept(DATA, "大数据局", &["consumer"], true)
        + &format!("\n[policies]\nprofile_owner = \"{DATA}\"\n");
    let gw = TestGateway::start(&write_config(&pki, &extra, &departments)).await;
    let mut conns = connect_departments(
        &pki,
        gw.addr,
        &[
            ("ops", OPS),
            ("data", DATA),
            ("approval", APPROVAL),
            ("push", PUSH),
            ("audit", AUDIT),
        ],
    )
    .await;
    let audit = conns.pop().unwrap();
    let push = conns.pop().unwrap();
    let approval = conns.pop().unwrap();
    let data = conns.pop().unwrap();
    let ops = conns.pop().unwrap();
    Some(World {
        _schema: schema,
        _pki: pki,
        _gw: gw,
        ops,
        data,
        approval,
        push,
        audit,
    })
}

fn sample(n: usize) -> Vec<(String, Policy)> {
    policies::SAMPLE_POLICIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| (l.to_owned(), Policy::from_json(l).unwrap()))
        .collect()
}

fn population(n: u64) -> Vec<Profile> {
    let day = time::Date::from_calendar_date(2026, time::Month::November, 1).unwrap();
    policies::generate::population(n, 11, day).collect()
}

async fn post_raw(conn: &mut Conn, path: &str, body: &str) -> Reply {
    conn.send_with(
        Method::POST,
        path,
        &[("content-type", "application/json")],
        bytes::Bytes::from(body.to_owned()),
    )
    .await
    .unwrap()
}

/// `POST /v1/policies/match` with a purpose (asserting 200): the answer and its eligible ids.
async fn matched(conn: &mut Conn, body: Value) -> (Value, BTreeSet<String>) {
    let r = conn
        .json(
            Method::POST,
            "/v1/policies/match",
            &[("x-purpose", "M-POLICY-001")],
            &body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = r.json();
    let got = body["eligible"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["policy_id"].as_str().unwrap().to_owned())
        .collect();
    (body, got)
}

async fn seeded() -> Option<(World, Vec<Policy>, Vec<Profile>)> {
    let mut w = world().await?;
    let profiles = population(400);
    for p in &profiles {
        let r = post_raw(
            &mut w.data,
            "/v1/enterprises",
            &serde_json::to_string(p).unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let mut published = Vec::new();
    for (line, p) in sample(40) {
        let r = post_raw(&mut w.ops, "/v1/policies", &line).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", p.id, r.body);
        published.push(p);
    }
    Some((w, published, profiles))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_both_ways_equals_brute_force_and_the_feed_replays() {
    let Some((mut w, policies, profiles)) = seeded().await else {
        return;
    };
    let today = gateway::matching::today();

    // Enterprise → policies, by USCC, for every profile.
    let mut pairs = 0;
    for p in &profiles {
        let (body, got) = matched(&mut w.approval, json!({ "uscc": p.uscc })).await;
        let want = eligible_ids(&policies, p, today);
        assert_eq!(got, want, "{}", p.uscc);
        pairs += want.len();
        for m in body["eligible"].as_array().unwrap() {
            assert!(
                m["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["outcome"] == "met")
            );
        }
        for m in body["almost_eligible"].as_array().unwrap() {
            let unmet = m["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["outcome"] != "met")
                .count();
            assert_eq!(unmet, 1, "{m}");
        }
    }
    assert!(pairs > 0, "some enterprise is eligible for something");

    // Policy → enterprises, paged with a cursor.
    for p in &policies {
        let want: Vec<String> = {
            let mut v: Vec<String> = profiles
                .iter()
                .filter(|e| eligibility::evaluate(p, e, today).eligible)
                .map(|e| e.uscc.to_string())
                .collect();
            v.sort();
            v
        };
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!(
                    "/v1/policies/{}/eligible-enterprises?limit=7&cursor={c}",
                    p.id
                ),
                None => format!("/v1/policies/{}/eligible-enterprises?limit=7", p.id),
            };
            let r = w.push.get(&path).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let page = r.json();
            got.extend(
                page["enterprises"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["uscc"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(got, want, "{}", p.id);
    }

    // A cursor names the policy's version: once a new version is published, paging on with
    // an old cursor is refused, and paging again from the start works.
    let broad = policies
        .iter()
        .max_by_key(|p| {
            profiles
                .iter()
                .filter(|e| eligibility::is_eligible(p, e, today))
                .count()
        })
        .unwrap();
    let first = format!("/v1/policies/{}/eligible-enterprises?limit=1", broad.id);
    let page = w.push.get(&first).await.unwrap().json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, format!("{}.{}", broad.version, page["enterprises"][0]["uscc"].as_str().unwrap()));
    let mut newer = broad.clone();
    newer.version += 1;
    let r = post_raw(&mut w.ops, "/v1/policies", &serde_json::to_string(&newer).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = w
        .push
        .get(&format!("{first}&cursor={cursor}"))
        .await
        .unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::CONFLICT, "CG-POL-005"));
    let page = w.push.get(&first).await.unwrap().json();
    assert!(page["next_cursor"].as_str().unwrap().starts_with(&format!("{}.", newer.version)));

    // The push feed: one event per match (profiles first, policies later: each publication
    // produced its matches), replay identical.
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let r = w
            .push
            .get(&format!("/v1/push-feed?after={after}&limit=50"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let page = r.json();
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        after = page["next_cursor"].as_i64().unwrap();
        events.extend(batch);
    }
    assert_eq!(events.len(), pairs);
    let replay = w
        .push
        .get("/v1/push-feed?after=0&limit=10000")
        .await
        .unwrap()
        .json();
    assert_eq!(replay["events"].as_array().unwrap(), &events);
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    // A profile changed so that it becomes eligible for one more policy: one event.
    let (policy, mut profile) = policies
        .iter()
        .find_map(|p| {
            profiles.iter().find_map(|e| {
                let ev = eligibility::evaluate(p, e, today);
                let only_credit = !ev.eligible
                    && ev.unmet().count() == 1
                    && ev.unmet().all(|c| c.condition == "credit_at_least");
                only_credit.then(|| (p.clone(), e.clone()))
            })
        })
        .expect("an enterprise missing one policy by its credit rating");
    profile.credit_rating = Some(policies::codes::Credit::A);
    let r = post_raw(
        &mut w.data,
        "/v1/enterprises",
        &serde_json::to_string(&profile).unwrap(),
    )
    .await;
    assert!(
        r.json()["new_matches"].as_u64().unwrap() >= 1,
        "{:?}",
        r.body
    );
    let tail = w
        .push
        .get(&format!("/v1/push-feed?after={after}"))
        .await
        .unwrap()
        .json();
    let new: Vec<&Value> = tail["events"].as_array().unwrap().iter().collect();
    assert!(
        new.iter()
            .any(|e| e["policy_id"] == policy.id.as_str() && e["uscc"] == profile.uscc.as_str())
    );
    assert!(new.iter().all(|e| e["uscc"] == profile.uscc.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_whole_domain_terms_with_highlights() {
    let Some((mut w, policies, _)) = seeded().await else {
        return;
    };
    let r = w
        .approval
        .get("/v1/policies/search?q=%E4%B8%93%E7%B2%BE%E7%89%B9%E6%96%B0&limit=200")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let hits = r.json();
    let got: BTreeSet<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["policy_id"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = policies
        .iter()
        .filter(|p| p.text.contains("专精特新") || p.title.contains("专精特新"))
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(got, want);
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .any(|h| h["snippet"].as_str().unwrap().contains("<em>专精特新</em>"))
    );
    let r = w
        .approval
        .get("/v1/policies/search?category=%E5%85%8D%E7%94%B3%E5%8D%B3%E4%BA%AB&region=110108")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    for h in r.json().as_array().unwrap() {
        assert_eq!(h["category"], "免申即享");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_decides_on_the_day_asked_both_ways() {
    let Some((mut w, policies, profiles)) = seeded().await else {
        return;
    };
    // The day after the first window to close, and a day before any window opened: the
    // answers differ from today's, and equal the evaluation on that day.
    let closed = policies.iter().map(|p| p.window.end).min().unwrap() + time::Duration::days(1);
    let early = policies.iter().map(|p| p.window.start).min().unwrap() - time::Duration::days(1);
    for day in [closed, early] {
        let as_of = policies::model::format_date(day);
        for p in profiles.iter().take(25) {
            let (body, got) =
                matched(&mut w.approval, json!({ "uscc": p.uscc, "as_of": as_of })).await;
            assert_eq!(body["date"], as_of.as_str());
            let want = eligible_ids(&policies, p, day);
            assert_eq!(got, want, "{} on {as_of}", p.uscc);
            if day == early {
                assert!(got.is_empty(), "no window was open on {as_of}");
            }
        }
        for p in policies.iter().take(10) {
            let r = w
                .push
                .get(&format!(
                    "/v1/policies/{}/eligible-enterprises?limit=100000&as_of={as_of}",
                    p.id
                ))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let page = r.json();
            assert_eq!(page["date"], as_of.as_str());
            let got: Vec<&str> = page["enterprises"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["uscc"].as_str().unwrap())
                .collect();
            let mut want: Vec<String> = profiles
                .iter()
                .filter(|e| eligibility::evaluate(p, e, day).eligible)
                .map(|e| e.uscc.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "{} on {as_of}", p.id);
        }
    }
    // Any pair explained, however many conditions it misses: the same rows as the evaluation.
    let mut far = 0;
    for p in profiles.iter().take(40) {
        for x in policies.iter().take(15) {
            let want = eligibility::evaluate(x, p, gateway::matching::today());
            let r = w
                .approval
                .json(
                    Method::POST,
                    &format!("/v1/policies/{}/explain", x.id),
                    &[("x-purpose", "M-POLICY-001")],
                    &json!({ "uscc": p.uscc }),
                )
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let body = r.json();
            assert_eq!(body["policy"]["eligible"], want.eligible);
            assert_eq!(body["unmet"], want.unmet().count());
            let rows: Vec<(&str, &str)> = body["policy"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["condition"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
                .collect();
            assert_eq!(rows.len(), want.conditions.len());
            if want.unmet().count() >= 2 {
                far += 1;
            }
        }
    }
    assert!(far > 0, "some pair misses by two or more conditions");
    let r = w
        .approval
        .json(
            Method::POST,
            "/v1/policies/P-NONE/explain",
            &[("x-purpose", "M-POLICY-001")],
            &json!({ "uscc": profiles[0].uscc }),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "CG-POL-002"));

    // A day that is not one, or out of range, is refused naming as_of.
    for bad in ["2026-13-01", "yesterday", "1999-12-31", "2999-01-01", "2026-1-1\u{0}"] {
        let r = w
            .approval
            .json(
                Method::POST,
                "/v1/policies/match",
                &[("x-purpose", "M-POLICY-001")],
                &json!({ "uscc": profiles[0].uscc, "as_of": bad }),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "CG-POL-001"),
            "{bad}"
        );
        assert!(r.json()["message"].as_str().unwrap().contains("as_of"), "{bad}");
        let r = w
            .push
            .get(&format!(
                "/v1/policies/{}/eligible-enterprises?as_of={}",
                policies[0].id,
                bad.replace('\u{0}', "%00")
            ))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_wrong_roles_are_refused() {
    let Some(mut w) = world().await else {
        return;
    };
    let (line, policy) = sample(1).remove(0);
    // Only the admin publishes; only the data department maintains profiles.
    let r = post_raw(&mut w.approval, "/v1/policies", &line).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-006")
    );
    let profile = serde_json::to_string(&population(1)[0]).unwrap();
    let r = post_raw(&mut w.ops, "/v1/enterprises", &profile).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-POL-004")
    );
    // Only the policy-push service reads the feed; auditors do not match.
    let r = w.approval.get("/v1/push-feed").await.unwrap();
    assert_eq!(r.code(), "CG-AUTH-006");
    let r = w
        .audit
        .json(
            Method::POST,
            "/v1/policies/match",
            &[("x-purpose", "M-POLICY-001")],
            &json!({"uscc": XIAOMI}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Malformed policies and profiles: 400 naming the field.
    let mut v: Value = serde_json::from_str(&line).unwrap();
    v["category"] = json!("其他");
    for (body, field) in [
        (v.to_string(), "`category`"),
        (
            line.replacen(
                &format!("\"region\":\"{}\"", policy.region),
                "\"region\":\"123456\"",
                1,
            ),
            "`region`",
        ),
        ("{".to_owned(), "(document)"),
        ("[]".to_owned(), "(document)"),
    ] {
        let r = post_raw(&mut w.ops, "/v1/policies", &body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "CG-POL-001"),
            "{body}"
        );
        assert!(
            r.json()["message"].as_str().unwrap().contains(field),
            "{}: {field}",
            r.json()
        );
    }
    let mut p: Value = serde_json::from_str(&profile).unwrap();
    p["scale"] = json!("巨");
    let r = post_raw(&mut w.data, "/v1/enterprises", &p.to_string()).await;
    assert_eq!(r.code(), "CG-POL-001");
    assert!(r.json()["message"].as_str().unwrap().contains("`scale`"));

    // Publishing the same version again: 409.
    assert_eq!(
        post_raw(&mut w.ops, "/v1/policies", &line).await.status,
        StatusCode::OK
    );
    let r = post_raw(&mut w.ops, "/v1/policies", &line).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CG-POL-003")
    );

    // Bad queries.
    for (path, field) in [
        ("/v1/policies/search?region=12", "region"),
        ("/v1/policies/search?industry=Z9", "industry"),
        ("/v1/policies/search?category=x", "category"),
        ("/v1/policies/search?limit=0", "limit"),
    ] {
        let r = w.approval.get(path).await.unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "CG-POL-001"),
            "{path}"
        );
        assert!(r.json()["message"].as_str().unwrap().contains(field));
    }
    let long = format!("/v1/policies/search?q={}", "%E4%B8%93".repeat(300));
    assert_eq!(
        w.approval.get(&long).await.unwrap().status,
        StatusCode::BAD_REQUEST
    );
    let r = w.push.get("/v1/push-feed?after=-1").await.unwrap();
    assert_eq!(r.code(), "CG-POL-001");
    let r = w.push.get("/v1/push-feed?after=x").await.unwrap();
    assert_eq!(r.code(), "CG-REQ-007");
    let path = format!(
        "/v1/policies/{}/eligible-enterprises?cursor=nope",
        policy.id
    );
    assert_eq!(w.push.get(&path).await.unwrap().code(), "CG-POL-001");
    assert_eq!(
        w.push
            .get("/v1/policies/NOPE/eligible-enterprises")
            .await
            .unwrap()
            .code(),
        "CG-POL-002"
    );
    for body in [
        json!({}),
        json!({"uscc": XIAOMI, "profile": {}}),
        json!({"uscc": "bad"}),
    ] {
        let r = w
            .approval
            .json(Method::POST, "/v1/policies/match", &[], &body)
            .await
            .unwrap();
        assert_eq!(r.code(), "CG-POL-001", "{body}");
    }
    let r = w
        .approval
        .json(Method::POST, "/v1/policies/match", &[], &json!({"profile": {"uscc": XIAOMI, "name": "x", "region": "110108", "updated": "2026-11-01", "employees": -3}}))
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-POL-001");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("profile.employees"),
        "{}",
        r.json()
    );
    let r = w
        .approval
        .json(
            Method::POST,
            "/v1/policies/match",
            &[("x-purpose", "M-POLICY-001")],
            &json!({"uscc": XIAOMI}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "CG-POL-002")
    );
    // Withdrawal: admin only; unknown ids are 404; the policy is gone afterwards.
    let path = format!("/v1/policies/{}", policy.id);
    let r = w
        .approval
        .send(Method::DELETE, &path, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-AUTH-006");
    let r = w
        .ops
        .send(Method::DELETE, "/v1/policies/NOPE", bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-POL-002");
    let r = w
        .ops
        .send(Method::DELETE, &path, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(w.approval.get(&path).await.unwrap().code(), "CG-POL-002");
    // An inline profile is matched without being stored.
    let r = w
        .approval
        .json(
            Method::POST,
            "/v1/policies/match",
            &[],
            &json!({"profile": serde_json::from_str::<Value>(&profile).unwrap()}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}
