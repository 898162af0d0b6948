//! Two gateway processes sharing one PostgreSQL database (skipped, and said so, without
//! `CERTGATE_TEST_POSTGRES_URL`): what one node changes, the other sees; one access log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use certgate_tests::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// Writes the configuration of one node (its own data directory and access log, the shared
/// database) and returns its path.
fn node_config(
    pki: &TestPki,
    name: &str,
    url: &str,
    schema: &str,
    more: &str,
) -> std::path::PathBuf {
    let extra =
        format!("data_dir = \"data-{name}\"\nstorage = \"{url}\"\nstorage_schema = \"{schema}\"");
    let written = write_config(pki, &extra, &(standard_departments() + more));
    let path = pki.dir.path().join(format!("certgate-{name}.toml"));
    std::fs::copy(&written, &path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_is_seen_by_the_other_and_serials_never_collide() {
    let Some((store, _schema)) = cert_store::pg_store::test_store("multinode").unwrap() else {
        return;
    };
    let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
    let pki = TestPki::new();
    // Two gateway processes.
    let a = Served::start(&node_config(&pki, "a", &url, store.schema(), ""));
    let b = Served::start(&node_config(&pki, "b", &url, store.schema(), ""));
    let [mut market_a, mut approval_b] = <[Conn; 2]>::try_from(
        connect_departments(&pki, a.api, &[("market", MARKET)])
            .await
            .into_iter()
            .chain(connect_departments(&pki, b.api, &[("approval", APPROVAL)]).await)
            .collect::<Vec<_>>(),
    )
    .ok()
    .unwrap();
    let mut market_b = connect_departments(&pki, b.api, &[("market-b", MARKET)])
        .await
        .remove(0);

    // A seal made on A signs a licence on A; B verifies it.
    let seal = create_seal(&mut market_a, "SM2SM3").await;
    let issued = issue_licence(&mut market_a, &business_licence(&seal, XIAOMI)).await;
    let id = issued["id"].as_str().unwrap().to_owned();
    let credential = issued["credential"].as_str().unwrap().to_owned();
    let check = |v: &Value| {
        (
            v["valid"].as_bool(),
            v["status"].as_str().map(str::to_owned),
        )
    };
    let r = approval_b
        .json(
            Method::POST,
            "/v1/licences/verify",
            &[],
            &json!({ "credential": credential }),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(check(&r), (Some(true), Some("valid".into())), "{r}");

    // Revoked through A: B answers revoked within a second.
    let r = market_a
        .json(
            Method::POST,
            &format!("/v1/licences/{id}/revoke"),
            &[],
            &json!({"reason": "吊销"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let revoked_at = Instant::now();
    loop {
        let r = approval_b
            .json(
                Method::POST,
                "/v1/licences/verify",
                &[],
                &json!({ "credential": credential }),
            )
            .await
            .unwrap()
            .json();
        if check(&r) == (Some(false), Some("revoked".into())) {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still says {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both nodes issue for the same department at once: every identifier is distinct.
    let mut tasks = Vec::new();
    for (node, conn) in [("a", &mut market_a), ("b", &mut market_b)] {
        let mut c = conn.fork().unwrap();
        let seal = seal.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..15 {
                let r = issue_licence(&mut c, &business_licence(&seal, XIAOMI)).await;
                ids.push(r["id"].as_str().unwrap().to_owned());
            }
            (node, ids)
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        let (_, ids) = t.await.unwrap();
        all.extend(ids);
    }
    assert_eq!(all.len(), 30, "no identifier was handed out twice");

    // B keeps the seal and the licence in memory once it has verified them; a seal revoked
    // through A is refused by B within a second all the same (the notice reaches B).
    let fresh = issue_licence(&mut market_a, &business_licence(&seal, XIAOMI)).await;
    let credential = fresh["credential"].as_str().unwrap().to_owned();
    let verify_on_b = |c: &mut Conn| {
        let mut c = c.fork().unwrap();
        let credential = credential.clone();
        async move {
            c.json(
                Method::POST,
                "/v1/licences/verify",
                &[],
                &json!({ "credential": credential }),
            )
            .await
            .unwrap()
            .json()
        }
    };
    for _ in 0..3 {
        let r = verify_on_b(&mut approval_b).await;
        assert_eq!(r["valid"], true, "{r}");
    }
    let r = market_a
        .json(
            Method::POST,
            &format!("/v1/seals/{seal}/revoke"),
            &[],
            &json!({"reason": "密钥泄露"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let revoked_at = Instant::now();
    loop {
        let r = verify_on_b(&mut approval_b).await;
        if r["valid"] == false {
            let failed = r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["ok"] == false)
                .unwrap();
            assert_eq!(failed["check"], "seal", "{r}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still says {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_node_makes_the_other_refetch() {
    use gateway::source_system::SourceSystem;
    let Some((store, _schema)) =
        cert_store::pg_store::test_store("multinode-invalidation").unwrap()
    else {
        return;
    };
    let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
    let pki = TestPki::new();
    let dir = pki.pki_dir();
    let source = SourceSystem::start(
        "127.0.0.1:0".parse().unwrap(),
        &dir.join("server.pem"),
        &dir.join("server.key"),
        None,
    )
    .await
    .unwrap();
    source.controls.put("k1", &json!({"a": 1}));
    let port = source.addr.port();
    let exchange = format!(
        "\n[[upstreams]]\norigin = \"https://127.0.0.1:{port}\"\nca_file = \"pki/ca.pem\"\n\
         [[datasets]]\nid = \"d\"\nname = \"数据\"\nowner = \"{MARKET}\"\nttl_seconds = 3600\n\
         url = \"https://127.0.0.1:{port}/r/{{key}}\"\nkey_kind = \"free\"\nfields = [\"a\"]\n\
         [[datasets.grants]]\ndepartment = \"{APPROVAL}\"\nfields = {{ a = \"full\" }}\n"
    );
    let a = Served::start(&node_config(&pki, "a", &url, store.schema(), &exchange));
    let b = Served::start(&node_config(&pki, "b", &url, store.schema(), &exchange));
    let mut on_a = connect_departments(&pki, a.api, &[("market", MARKET)])
        .await
        .remove(0);
    let mut on_b = connect_departments(&pki, b.api, &[("approval", APPROVAL)])
        .await
        .remove(0);
    let status = |r: &Reply| r.headers["cache-status"].to_str().unwrap().to_owned();
    assert_eq!(
        status(
            &on_b
                .get_with("/v1/data/d/k1", &[("x-purpose", "M-1")])
                .await
                .unwrap()
        ),
        "miss"
    );
    assert_eq!(
        status(
            &on_b
                .get_with("/v1/data/d/k1", &[("x-purpose", "M-1")])
                .await
                .unwrap()
        ),
        "hit"
    );
    // Give both listeners time to be connected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    source.controls.put("k1", &json!({"a": 2}));
    let r = on_a
        .send(
            Method::POST,
            "/v1/data/d/k1/invalidate",
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let started = Instant::now();
    loop {
        let r = on_b
            .get_with("/v1/data/d/k1", &[("x-purpose", "M-1")])
            .await
            .unwrap();
        if r.json()["fields"]["a"] == 2 {
            assert_eq!(status(&r), "miss");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B still serves the old record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(source.controls.calls("k1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_gone_requests_fail_closed_and_recover_without_a_restart() {
    let Some((store, _schema)) = cert_store::pg_store::test_store("multinode-outage").unwrap()
    else {
        return;
    };
    let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
    // The same database, reached through a relay the test can cut.
    let target: std::net::SocketAddr = {
        let rest = url.split('@').nth(1).unwrap_or("127.0.0.1:5432/test");
        let host_port = rest.split('/').next().unwrap();
        tokio::net::lookup_host(host_port)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let relay = Relay::start(target).await;
    let relayed = url
        .replacen(&target.to_string(), &relay.addr.to_string(), 1)
        .replacen(
            &format!("localhost:{}", target.port()),
            &relay.addr.to_string(),
            1,
        );
    let pki = TestPki::new();
    let gw = TestGateway::start(&node_config(&pki, "a", &relayed, store.schema(), "")).await;
    let mut market = connect_departments(&pki, gw.addr, &[("market", MARKET)])
        .await
        .remove(0);
    let seal = create_seal(&mut market, "ES256").await;
    let issued = issue_licence(&mut market, &business_licence(&seal, XIAOMI)).await;
    let credential = issued["credential"].as_str().unwrap().to_owned();
    let verify = json!({ "credential": credential });

    // Load throughout: verifications from four more connections. Any answer but 200 or a
    // fail-closed 503 is a failure.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (mut c, stop, verify) = (market.fork().unwrap(), stop.clone(), verify.clone());
        loaders.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut other) = (0u32, 0u32, Vec::new());
            while !*stop.borrow() {
                match c
                    .json(Method::POST, "/v1/licences/verify", &[], &verify)
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                    Ok(r) => other.push(r.status),
                    Err(e) => panic!("the connection broke: {e}"),
                }
            }
            (ok, refused, other)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Both the store and the shared access log are in the database: whichever is reached
    // first refuses the request.
    let fail_closed = ["CG-STO-001", "CG-LOG-001"];
    relay.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let r = market
            .json(Method::POST, "/v1/licences/verify", &[], &verify)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
        assert!(fail_closed.contains(&r.code().as_str()), "{:?}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        let r = market
            .json(
                Method::POST,
                "/v1/licences",
                &[],
                &business_licence(&seal, XIAOMI),
            )
            .await
            .unwrap();
        assert!(
            fail_closed.contains(&r.code().as_str()),
            "nothing is issued without the store: {:?}",
            r.body
        );
    }

    // Back: within a few seconds requests are served again, without a restart.
    relay.restore();
    let back = Instant::now();
    loop {
        let r = market
            .json(Method::POST, "/v1/licences/verify", &[], &verify)
            .await
            .unwrap();
        if r.status == StatusCode::OK {
            assert_eq!(r.json()["valid"], true);
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    issue_licence(&mut market, &business_licence(&seal, XIAOMI)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    let (mut served, mut refused) = (0, 0);
    for l in loaders {
        let (ok, r, other) = l.await.unwrap();
        assert!(other.is_empty(), "answers other than 200/503: {other:?}");
        served += ok;
        refused += r;
    }
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
}

/// Clients that send `/v1/whoami` to `addr` until `stop` or the first failure, and return
/// the request ids that were answered 200 (acknowledged) and the number of failures.
fn load(
    client: &Client,
    addr: std::net::SocketAddr,
    clients: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, usize)>> {
    (0..clients)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0);
                let Ok(mut conn) = client.connect(addr).await else {
                    return (acked, 1);
                };
                while !*stop.borrow() && acked.len() < 20_000 {
                    match conn.get("/v1/whoami").await {
                        Ok(r) if r.status == StatusCode::OK => {
                            acked.push(r.headers["x-request-id"].to_str().unwrap().to_owned())
                        }
                        _ => {
                            failed += 1;
                            break;
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tree_for_both_nodes_and_a_killed_node_loses_no_acknowledged_entry() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    let Some((store, schema)) = cert_store::pg_store::test_store("multinode-log").unwrap() else {
        return;
    };
    let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let audit = pki.department("audit", AUDIT);
    let config_a = node_config(&pki, "a", &url, store.schema(), "");
    let config_b = node_config(&pki, "b", &url, store.schema(), "");
    let (a, b) = (Served::start(&config_a), Served::start(&config_b));
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2);

    // Both nodes under load; A is killed (SIGKILL) in the middle of it, B goes on.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let on_a = load(&client, a.api, 4, stop.clone());
    let on_b = load(&client, b.api, 4, stop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.kill();
    let mut acked = Vec::new();
    for t in on_a {
        acked.extend(t.await.unwrap().0);
    }
    let acked_on_a = acked.len();
    let from_a: BTreeSet<String> = acked.iter().cloned().collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(true).unwrap();
    let mut acked_on_b = 0;
    for t in on_b {
        let (ids, failed) = t.await.unwrap();
        assert_eq!(failed, 0, "B failed requests while A died");
        acked_on_b += ids.len();
        acked.extend(ids);
    }
    assert!(
        acked_on_a > 50 && acked_on_b > 100,
        "too little load: {acked_on_a} on A, {acked_on_b} on B"
    );

    // Every acknowledged request, from either node, is in the one tree.
    let schema = Some(schema);
    let logged = logged_request_ids(&StoredLog::of(pki.dir.path(), &schema));
    let lost = acked.iter().filter(|id| !logged.contains(*id)).count();
    assert_eq!(lost, 0, "{lost} acknowledged requests have no leaf");

    // An auditor on B: a checkpoint over everything, inclusion proofs for leaves A and B wrote.
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(b.api)
        .await
        .unwrap();
    let key = log_key(&mut auditor).await;
    let key = key.as_str();
    let (note, cp) = checkpoint_covering(&mut auditor, key, logged.len() as u64).await;
    // The whole tree, exported through B, verifies offline with the command line against B's
    // checkpoint, and so does the log in the database.
    let export = auditor
        .get(&format!("/v1/audit/export?format=ndjson&size={}", cp.size))
        .await
        .unwrap();
    let dir = pki.dir.path();
    std::fs::write(dir.join("export.ndjson"), &export.body).unwrap();
    std::fs::write(dir.join("checkpoint"), &note).unwrap();
    std::fs::write(dir.join("log.vkey"), key).unwrap();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let out = certgate(&[
        "audit",
        "verify",
        "--export",
        &path("export.ndjson"),
        "--checkpoint",
        &path("checkpoint"),
        "--log-key",
        &path("log.vkey"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An inclusion proof for the first leaf of a request through A and of one through B.
    let mut firsts = [None, None];
    for (index, line) in export.body.split(|b| *b == b'\n').enumerate() {
        let Ok(leaf) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(rid) = leaf["request_id"].as_str() else {
            continue;
        };
        let node = usize::from(!from_a.contains(rid));
        firsts[node].get_or_insert(index as u64);
    }
    for index in firsts.map(|i| i.expect("a leaf from each node")) {
        let view = auditor
            .get(&format!(
                "/v1/audit/proof/inclusion?index={index}&size={}",
                cp.size
            ))
            .await
            .unwrap()
            .json();
        let bytes = B64.decode(view["leaf_bytes"].as_str().unwrap()).unwrap();
        let proof: Vec<tlog::merkle::Hash> = view["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        assert!(tlog::merkle::verify_inclusion(
            &tlog::merkle::leaf_hash(&bytes),
            index,
            cp.size,
            &proof,
            &cp.root
        ));
    }
    let out = certgate(&["audit", "verify", "--config", config_b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_profiles_stored_on_one_node_are_matched_on_the_other() {
    use policies::{Policy, Profile, eligibility};
    let Some((store, _schema)) = cert_store::pg_store::test_store("multinode-policies").unwrap()
    else {
        return;
    };
    const DATA: &str = "11110105MB0000012G";
    let url = std::env::var("CERTGATE_TEST_POSTGRES_URL").unwrap();
    let pki = TestPki::new();
    let more = dept(DATA, "大数据局", &["consumer"], true)
        + &format!("\n[policies]\nprofile_owner = \"{DATA}\"\n");
    let a = Served::start(&node_config(&pki, "a", &url, store.schema(), &more));
    let b = Served::start(&node_config(&pki, "b", &url, store.schema(), &more));
    let mut ops_a = connect_departments(&pki, a.api, &[("ops", OPS)])
        .await
        .remove(0);
    let mut on_b =
        connect_departments(&pki, b.api, &[("data", DATA), ("approval", APPROVAL)]).await;
    let mut approval_b = on_b.pop().unwrap();
    let mut data_b = on_b.pop().unwrap();
    let post = |conn: &mut Conn, path: &'static str, body: String| {
        let mut c = conn.fork().unwrap();
        async move {
            c.send_with(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                bytes::Bytes::from(body),
            )
            .await
            .unwrap()
        }
    };

    // Profiles stored through B, policies published through A.
    let day = time::Date::from_calendar_date(2026, time::Month::November, 1).unwrap();
    let profiles: Vec<Profile> = policies::generate::population(60, 17, day).collect();
    for p in &profiles {
        let r = post(
            &mut data_b,
            "/v1/enterprises",
            serde_json::to_string(p).unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let published: Vec<Policy> = policies::SAMPLE_POLICIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(30)
        .map(|l| Policy::from_json(l).unwrap())
        .collect();
    for p in &published {
        let r = post(
            &mut ops_a,
            "/v1/policies",
            serde_json::to_string(p).unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", p.id, r.body);
    }
    let published_at = Instant::now();
    let today = gateway::matching::today();

    // B matches A's policies (within a second), A finds B's enterprises.
    for p in &profiles {
        let want: BTreeSet<String> = published
            .iter()
            .filter(|x| eligibility::is_eligible(x, p, today))
            .map(|x| x.id.clone())
            .collect();
        loop {
            let body = approval_b
                .json(
                    Method::POST,
                    "/v1/policies/match",
                    &[("x-purpose", "M-POLICY-001")],
                    &json!({ "uscc": p.uscc }),
                )
                .await
                .unwrap()
                .json();
            let got: BTreeSet<String> = body["eligible"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["policy_id"].as_str().unwrap().to_owned())
                .collect();
            if got == want {
                break;
            }
            assert!(
                published_at.elapsed() < Duration::from_secs(1),
                "{}: B answers {got:?}, want {want:?}",
                p.uscc
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut pairs = 0;
    for p in &published {
        let want: Vec<String> = {
            let mut v: Vec<String> = profiles
                .iter()
                .filter(|e| eligibility::is_eligible(p, e, today))
                .map(|e| e.uscc.to_string())
                .collect();
            v.sort();
            v
        };
        pairs += want.len();
        let page = ops_a
            .get(&format!(
                "/v1/policies/{}/eligible-enterprises?limit=1000",
                p.id
            ))
            .await
            .unwrap()
            .json();
        let got: Vec<String> = page["enterprises"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["uscc"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "{}", p.id);
    }
    assert!(pairs > 0, "some enterprise is eligible for something");

    // A withdrawal through A: B no longer offers the policy.
    let gone = published.iter().find(|p| {
        profiles
            .iter()
            .any(|e| eligibility::is_eligible(p, e, today))
    });
    let gone = gone.unwrap();
    let r = ops_a
        .send_with(
            Method::DELETE,
            &format!("/v1/policies/{}", gone.id),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.status.is_success(), "{:?}", r.body);
    let withdrawn_at = Instant::now();
    loop {
        let r = approval_b
            .get(&format!("/v1/policies/{}", gone.id))
            .await
            .unwrap();
        if r.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            withdrawn_at.elapsed() < Duration::from_secs(1),
            "B still has it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
