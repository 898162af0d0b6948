// The access log end to end: every request and refused handshake recorded once, auditors'
// queries and proofs against signed checkpoints, tampering found offline, failing closed.
// Included once per store (see main.rs): `storage` names the module's backend.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certgate_tests::*;
use tlog::merkle;
use http::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_logged_once_and_provable_against_a_signed_checkpoint() {
    let Some((extra, _schema)) = storage("audit-outcomes") else {
        return;
    };
    let pki = TestPki::new();
    let ids = [
        pki.department("market", MARKET),
        pki.department("approval", APPROVAL),
        pki.department("ops", OPS),
        pki.department("audit", AUDIT),
        pki.department("app", APP),
    ];
    // Refused handshakes are summarised every 300 ms here (a minute by default).
    let gw = TestGateway::start(&write_config_with_log(
        &pki,
        &extra,
        &standard_departments(),
        "refusal_window_ms = 300",
    ))
    .await;
    let conn = |i: usize| Client::new(&pki.ca_pem(), Some(&ids[i]), Proto::H2);
    let (mut market, mut approval, mut ops, mut auditor, mut app) = (
        conn(0).connect(gw.addr).await.unwrap(),
        conn(1).connect(gw.addr).await.unwrap(),
        conn(2).connect(gw.addr).await.unwrap(),
        conn(3).connect(gw.addr).await.unwrap(),
        conn(4).connect(gw.addr).await.unwrap(),
    );

    // Allowed: a licence issued and read for a stated matter.
    let seal = market
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "公章", "alg": "ES256"}),
        )
        .await
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let issued = market
        .json(Method::POST, "/v1/licences", &[], &json!({
            "licence_type": BUSINESS, "holder_id": XIAOMI, "holder_name": "小米科技有限责任公司", "seal_id": seal,
            "fields": {"name": "小米科技有限责任公司", "legal_representative": "雷军", "established": "2010-03-03"}
        }))
        .await
        .unwrap()
        .json();
    let id = issued["id"].as_str().unwrap().to_owned();
    let allowed = approval
        .get_with(
            &format!("/v1/licences/{id}"),
            &[
                ("x-purpose", "matter=M-BIZ-001; reason=%E5%AE%A1%E6%89%B9"),
                ("x-case-id", "CASE-7"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(allowed.status, StatusCode::OK);
    let allowed_id = allowed.headers["x-request-id"].to_str().unwrap().to_owned();
    // Denied by the access rules.
    let denied = ops
        .get_with(&format!("/v1/licences/{id}"), &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(denied.code(), "CG-AUTH-007");
    let denied_id = denied.headers["x-request-id"].to_str().unwrap().to_owned();
    // A careless client puts a citizen id where a licence id belongs: refused, and the id
    // never reaches the log.
    let careless = approval
        .get_with(&format!("/v1/licences/{CITIZEN}"), &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(careless.status, StatusCode::BAD_REQUEST);
    // Denied at TLS: no client certificate. The refusal is in the log as its source's
    // summary, once the window closes.
    assert!(
        Client::new(&pki.ca_pem(), None, Proto::H1)
            .get(gw.addr, "/v1/whoami")
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Only auditors read the log.
    for path in [
        "/v1/audit/checkpoint",
        "/v1/audit/entries",
        "/v1/audit/proof/inclusion?index=0&size=1",
    ] {
        let reply = approval.get(path).await.unwrap();
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::FORBIDDEN, "CG-AUTH-006"),
            "{path}"
        );
    }

    let key = log_key(&mut auditor).await;
    let size = gw.gateway.access_log.size();
    let (_, cp) = checkpoint_covering(&mut auditor, &key, size).await;

    // Each request is there exactly once, with its fields; the holder only as a pseudonym.
    let find = |entries: &Value, rid: &str| -> Vec<Value> {
        entries["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["request_id"] == rid)
            .cloned()
            .collect()
    };
    let all = auditor
        .get("/v1/audit/entries?limit=1000")
        .await
        .unwrap()
        .json();
    let hit = find(&all, &allowed_id);
    assert_eq!(hit.len(), 1, "{all}");
    let leaf = &hit[0];
    assert_eq!(leaf["department"], APPROVAL);
    assert_eq!(leaf["route"], "/v1/licences/{id}");
    assert_eq!(leaf["resource"], id.as_str());
    assert_eq!(
        (
            leaf["matter"].as_str(),
            leaf["reason"].as_str(),
            leaf["case_id"].as_str()
        ),
        (Some("M-BIZ-001"), Some("审批"), Some("CASE-7"))
    );
    assert_eq!(
        (leaf["outcome"].as_str(), leaf["status"].as_u64()),
        (Some("allowed"), Some(200))
    );
    assert_eq!(leaf["holder"].as_str().unwrap().len(), 64);
    assert!(
        !all.to_string().contains(XIAOMI),
        "a raw holder id reached the log"
    );
    assert!(
        !all.to_string().contains(CITIZEN),
        "a raw citizen id reached the log"
    );
    assert!(
        all.to_string().contains("/v1/licences/[citizen-id]"),
        "{all}"
    );
    let denied_leaf = find(&all, &denied_id);
    assert_eq!(denied_leaf.len(), 1);
    assert_eq!(
        (
            denied_leaf[0]["outcome"].as_str(),
            denied_leaf[0]["code"].as_str()
        ),
        (Some("denied"), Some("CG-AUTH-007"))
    );
    // A refused attempt names the licence and the holder's pseudonym too, so the holder sees it.
    assert_eq!(denied_leaf[0]["resource"], id.as_str());
    assert_eq!(denied_leaf[0]["holder"], leaf["holder"]);
    let handshakes: Vec<&Value> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "handshakes")
        .collect();
    assert_eq!(handshakes.len(), 1, "{all}");
    assert_eq!(handshakes[0]["code"], "no_certificate:1");
    assert_eq!(handshakes[0]["count"], 1);
    assert_eq!(handshakes[0]["peer"], "127.0.0.1");

    // Filters: by holder (pseudonymised by the server), by department, by outcome.
    let by_holder = auditor
        .get(&format!("/v1/audit/entries?holder={XIAOMI}"))
        .await
        .unwrap()
        .json();
    assert!(!find(&by_holder, &allowed_id).is_empty());
    assert!(
        by_holder["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["holder"] == leaf["holder"])
    );
    let by_dept = auditor
        .get(&format!(
            "/v1/audit/entries?department={OPS}&outcome=denied"
        ))
        .await
        .unwrap()
        .json();
    assert_eq!(by_dept["entries"].as_array().unwrap().len(), 1);
    let page = auditor
        .get("/v1/audit/entries?limit=2")
        .await
        .unwrap()
        .json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next_cursor"].as_u64().unwrap();
    let page2 = auditor
        .get(&format!("/v1/audit/entries?limit=2&cursor={next}"))
        .await
        .unwrap()
        .json();
    assert_eq!(page2["entries"][0]["seq"].as_u64().unwrap(), next + 1);
    for bad in [
        "/v1/audit/entries?limit=0",
        "/v1/audit/entries?limit=5000",
        "/v1/audit/entries?colour=red",
        "/v1/audit/proof/inclusion?index=5&size=2",
    ] {
        let reply = auditor.get(bad).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // The holder's own view, through the city app.
    let view = app
        .get_with(
            &format!("/v1/audit/holder-view?holder={XIAOMI}"),
            &[("x-holder", XIAOMI)],
        )
        .await
        .unwrap()
        .json();
    assert!(
        view["uses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["department"] == APPROVAL && u["matter"] == "M-BIZ-001"),
        "{view}"
    );

    // The allowed request's inclusion proof verifies against the signed checkpoint's root.
    let index = leaf["seq"].as_u64().unwrap();
    let proof = auditor
        .get(&format!(
            "/v1/audit/proof/inclusion?index={index}&size={}",
            cp.size
        ))
        .await
        .unwrap()
        .json();
    let bytes = B64.decode(proof["leaf_bytes"].as_str().unwrap()).unwrap();
    let path: Vec<[u8; 32]> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    assert!(merkle::verify_inclusion(
        &merkle::leaf_hash(&bytes),
        index,
        cp.size,
        &path,
        &cp.root
    ));
    let mut wrong = bytes.clone();
    wrong[10] ^= 1;
    assert!(!merkle::verify_inclusion(
        &merkle::leaf_hash(&wrong),
        index,
        cp.size,
        &path,
        &cp.root
    ));
    // And an earlier checkpoint's tree is a prefix of this one.
    let consistency = auditor
        .get(&format!(
            "/v1/audit/proof/consistency?from=1&to={}",
            cp.size
        ))
        .await
        .unwrap()
        .json();
    assert_eq!(
        consistency["proof"].as_array().unwrap().is_empty(),
        cp.size == 1
    );
    drop(market);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_queryable_by_auditors_as_soon_as_it_is_answered() {
    let Some((extra, _schema)) = storage("audit-burst") else {
        return;
    };
    let pki = TestPki::new();
    let gw = TestGateway::start(&write_config(&pki, &extra, &standard_departments())).await;
    let approval = Client::new(&pki.ca_pem(), Some(&pki.department("approval", APPROVAL)), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut auditor = Client::new(&pki.ca_pem(), Some(&pki.department("audit", AUDIT)), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    // 600 requests from 30 streams at once: more than one batch, far inside a checkpoint
    // interval and the query indexer's 50 ms.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut c = approval.fork().unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..20 {
                let r = c.get("/v1/whoami").await.unwrap();
                assert_eq!(r.status, StatusCode::OK);
                ids.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut sent = std::collections::HashSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    // At once, paging through the department's entries (the newest leaves may not be in the
    // query index yet; the answer must not depend on it).
    let mut found = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = auditor
            .get(&format!(
                "/v1/audit/entries?department={APPROVAL}&limit=1000{cursor}"
            ))
            .await
            .unwrap()
            .json();
        for e in page["entries"].as_array().unwrap() {
            if let Some(rid) = e["request_id"].as_str() {
                found.insert(rid.to_owned());
            }
        }
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let missing: Vec<_> = sent.difference(&found).collect();
    assert!(missing.is_empty(), "{} of 600 not found: {missing:?}", missing.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_tampering_and_the_gateway_refuses_an_inconsistent_log() {
    let Some((extra, schema)) = storage("audit-tampering") else {
        return;
    };
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let config = write_config(&pki, &extra, &standard_departments());
    let stored = StoredLog::of(&pki.dir.path().join("data"), &schema);
    let served = Served::start(&config);
    let api = served.api;
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1);
    let mut conn = client.connect(api).await.unwrap();
    for _ in 0..20 {
        assert_eq!(conn.get("/v1/whoami").await.unwrap().status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    conn.get("/v1/whoami").await.unwrap(); // after a second: a checkpoint covers the first 20
    drop(conn);
    served.stop();

    let config_arg = config.to_str().unwrap();
    let verify = || certgate(&["audit", "verify", "--config", config_arg]);
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("access log verified: 21 leaves"));
    if schema.is_none() {
        // The embedded log is found from the data directory alone, too.
        let data = pki.dir.path().join("data");
        let out = certgate(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("access log verified: 21 leaves"));
    }
    let fails_at = |leaf: &str| {
        let out = verify();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(leaf),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    let original = stored.get(7);
    let edited = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"status\":200", "\"status\":201")
        .into_bytes();
    stored.put(7, &edited);
    fails_at("leaf 7");
    stored.put(7, &original);
    assert!(verify().status.success());

    // Two leaves swapped: found at the first of them.
    let (three, four) = (stored.get(3), stored.get(4));
    stored.put(3, &four);
    stored.put(4, &three);
    fails_at("leaf 3");
    stored.put(3, &three);
    stored.put(4, &four);

    // One leaf deleted: found where it is missing.
    let kept = stored.get(9);
    stored.delete(9);
    fails_at("leaf 9");
    stored.insert(9, &kept);
    assert!(verify().status.success());

    // Deleting the newest leaves leaves the last checkpoint without its tree.
    stored.truncate(15);
    let out = verify();
    assert!(!out.status.success());
    let mut child = serve_command(&config).spawn().unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success(),
        "the gateway started on a log that lost leaves"
    );
    assert!(
        stderr.contains("does not match its last checkpoint"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_leaf() {
    let Some((extra, schema)) = storage("audit-sigkill") else {
        return;
    };
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let config = write_config(&pki, &extra, &standard_departments());
    let stored = StoredLog::of(&pki.dir.path().join("data"), &schema);
    let config_arg = config.to_str().unwrap();
    let served = Served::start(&config);
    let api = served.api;
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2);

    // Eight concurrent clients; every acknowledged request id is remembered.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let Ok(mut conn) = client.connect(api).await else {
                return acked;
            };
            for _ in 0..2000 {
                match conn.get("/v1/whoami").await {
                    Ok(r) if r.status == StatusCode::OK => {
                        acked.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    served.kill();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "too little load before the kill ({})",
        acked.len()
    );

    // The log verifies, and every acknowledged request is in it.
    let out = certgate(&["audit", "verify", "--config", config_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = logged_request_ids(&stored);
    let lost: Vec<&String> = acked.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged requests have no leaf",
        lost.len()
    );

    // It restarts on the same log (the tree still matches its last checkpoint) and keeps going.
    let served = Served::start(&config);
    let api = served.api;
    assert_eq!(
        client.get(api, "/v1/whoami").await.unwrap().status,
        StatusCode::OK
    );
    served.stop();
    let out = certgate(&["audit", "verify", "--config", config_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_inside_the_gateway_is_logged_as_an_error() {
    use gateway::source_system::{Fault, SourceSystem};
    let Some((extra, _schema)) = storage("audit-error") else {
        return;
    };
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let auditor = pki.department("audit", AUDIT);
    // A source system slower than the gateway's request timeout (and within the upstream's).
    let dir = pki.pki_dir();
    let source = SourceSystem::start(
        "127.0.0.1:0".parse().unwrap(),
        &dir.join("server.pem"),
        &dir.join("server.key"),
        None,
    )
    .await
    .unwrap();
    source
        .controls
        .set_fault(Fault::Delay(std::time::Duration::from_secs(3)));
    let port = source.addr.port();
    let exchange = format!(
        "\n[[upstreams]]\norigin = \"https://127.0.0.1:{port}\"\nca_file = \"pki/ca.pem\"\ntimeout_ms = 10000\n\
         [[datasets]]\nid = \"slow\"\nname = \"慢\"\nowner = \"{MARKET}\"\n\
         url = \"https://127.0.0.1:{port}/r/{{key}}\"\nkey_kind = \"free\"\nfields = [\"a\"]\n\
         [[datasets.grants]]\ndepartment = \"{APPROVAL}\"\nfields = {{ a = \"full\" }}\n"
    );
    let config = write_config(
        &pki,
        &format!("request_timeout_ms = 300\n{extra}"),
        &(standard_departments() + &exchange),
    );
    let gw = TestGateway::start(&config).await;
    let mut approval = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let reply = approval
        .get_with("/v1/data/slow/k1", &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-REQ-005")
    );
    let rid = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    let mut auditor = Client::new(&pki.ca_pem(), Some(&auditor), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let entries = auditor
        .get("/v1/audit/entries?outcome=error")
        .await
        .unwrap()
        .json();
    let hit: Vec<&Value> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["request_id"] == rid.as_str())
        .collect();
    assert_eq!(hit.len(), 1, "{entries}");
    assert_eq!(
        (hit[0]["status"].as_u64(), hit[0]["code"].as_str()),
        (Some(503), Some("CG-REQ-005"))
    );
    assert_eq!(hit[0]["resource"], "dataset:slow/k1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_a_few_at_a_time_and_the_rest_are_told_to_retry() {
    let Some((extra, _schema)) = storage("audit-exports") else {
        return;
    };
    let pki = TestPki::new();
    let audit = pki.department("audit", AUDIT);
    let gw = TestGateway::start(&write_config(&pki, &extra, &standard_departments())).await;
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    // Exports whose readers have stopped hold every slot: each holds a blocking thread.
    let held = gw
        .gateway
        .export_slots
        .clone()
        .acquire_many_owned(gateway::audit::MAX_EXPORTS as u32)
        .await
        .unwrap();
    let r = auditor.get("/v1/audit/export?format=ndjson").await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-AUD-003"),
        "{:?}",
        r.body
    );
    assert_eq!(r.headers["retry-after"], "60");
    drop(held);
    // Each export gives its slot back when it ends: more exports one after another than slots.
    for _ in 0..gateway::audit::MAX_EXPORTS {
        let r = auditor.get("/v1/audit/export?format=csv").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let r = auditor.get("/v1/audit/export?format=ndjson").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let lines = String::from_utf8(r.body.to_vec()).unwrap();
    // The refusal is among the leaves exported (durable before its answer left).
    assert!(
        lines
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).unwrap()["code"] == "CG-AUD-003"),
        "{lines}"
    );
}
