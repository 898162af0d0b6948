// Shared-data exchange and no-proof checks over real mTLS, against real source systems (HTTPS
// servers that demand the gateway's client certificate) that the tests slow down and break.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certgate_tests::*;
use gateway::source_system::{Fault, SourceSystem};
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// 公安局: owns the household register.
const POLICE: &str = "11110105MB0000010A";
/// 税务局: owns the tax status of enterprises.
const TAX: &str = "11110105MB0000011D";
/// A second enterprise.
const OTHER_FIRM: &str = "91110108MA0000012H";

struct World {
    _schema: Option<cert_store::pg_store::SchemaGuard>,
    pki: TestPki,
    gw: TestGateway,
    police_src: SourceSystem,
    tax_src: SourceSystem,
    approval: Conn,
    market: Conn,
    police: Conn,
    tax: Conn,
}

fn exchange_config(police: u16, tax: u16) -> String {
    format!(
        r#"
[[departments]]
id = "{POLICE}"
name = "公安局"
roles = ["consumer"]

[[departments]]
id = "{TAX}"
name = "税务局"
roles = ["consumer"]

[exchange]
cache_bytes = 1048576

[[upstreams]]
origin = "https://127.0.0.1:{police}"
ca_file = "pki/ca.pem"
client_cert = "pki/gateway-upstream.pem"
client_key = "pki/gateway-upstream.key"
connect_timeout_ms = 500
timeout_ms = 800
retries = 0
breaker_failures = 3
breaker_open_ms = 700

[[upstreams]]
origin = "https://127.0.0.1:{tax}"
ca_file = "pki/ca.pem"
client_cert = "pki/gateway-upstream.pem"
client_key = "pki/gateway-upstream.key"
timeout_ms = 2000
retries = 1
retry_backoff_ms = 20

[[datasets]]
id = "household"
name = "户籍信息"
owner = "{POLICE}"
url = "https://127.0.0.1:{police}/persons/{{key}}"
key_kind = "citizen-id"
ttl_seconds = 60
max_entry_bytes = 2048
fields = ["name", "citizen_id", "address", "criminal_record"]

[[datasets.grants]]
department = "{APPROVAL}"
purposes = ["M-HUKOU-001"]
fields = {{ name = "full", citizen_id = "partial", address = "full" }}

[[datasets.grants]]
department = "{MARKET}"
fields = {{ name = "partial" }}

[[datasets]]
id = "tax-status"
name = "纳税状况"
owner = "{TAX}"
url = "https://127.0.0.1:{tax}/taxpayers/{{key}}"
key_kind = "uscc"
ttl_seconds = 1
stale_if_error_seconds = 2
fields = ["name", "arrears_yuan", "credit_rating"]
invalidated_by_licence_types = ["{BUSINESS}"]

[[datasets.grants]]
department = "{APPROVAL}"
fields = {{ name = "full", credit_rating = "full" }}

[[proof_types]]
id = "no-arrears-licensed"
name = "无欠税且营业执照有效证明"
holder_kind = "uscc"
departments = ["{APPROVAL}"]
validity_seconds = 3600

[[proof_types.conditions]]
dataset = "tax-status"
field = "arrears_yuan"
op = "equals"
value = 0

[[proof_types.conditions]]
licence_type = "{BUSINESS}"

[[proof_types]]
id = "no-criminal-record"
name = "无犯罪记录证明"
holder_kind = "citizen-id"
departments = ["{APPROVAL}"]

[[proof_types.conditions]]
dataset = "household"
field = "criminal_record"
op = "exists"
value = false
"#
    )
}

/// The world on this module's backend; `None` when the backend is not available here.
async fn world() -> Option<World> {
    let (extra, schema) = storage("exchange")?;
    let pki = TestPki::new();
    let dir = pki.pki_dir();
    pki.client(&pki.spec("gateway-upstream", OPS));
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let police_src = SourceSystem::start(any, &cert, &key, Some(&ca))
        .await
        .unwrap();
    let tax_src = SourceSystem::start(any, &cert, &key, Some(&ca))
        .await
        .unwrap();
    police_src.controls.put(
        CITIZEN,
        &json!({"name": "张三丰", "citizen_id": CITIZEN, "address": "北京市朝阳区建国路 1 号",
                "criminal_record": null, "internal_note": "never leaves the source"}),
    );
    tax_src.controls.put(
        XIAOMI,
        &json!({"name": "小米科技有限责任公司", "arrears_yuan": 0, "credit_rating": "A"}),
    );
    tax_src.controls.put(
        OTHER_FIRM,
        &json!({"name": "某某贸易有限公司", "arrears_yuan": 12500, "credit_rating": "C"}),
    );
    let departments =
        standard_departments() + &exchange_config(police_src.addr.port(), tax_src.addr.port());
    let gw = TestGateway::start(&write_config(&pki, &extra, &departments)).await;
    let mut conns = connect_departments(
        &pki,
        gw.addr,
        &[
            ("approval", APPROVAL),
            ("market", MARKET),
            ("police", POLICE),
            ("tax", TAX),
        ],
    )
    .await;
    let tax = conns.pop().unwrap();
    let police = conns.pop().unwrap();
    let market = conns.pop().unwrap();
    let approval = conns.pop().unwrap();
    Some(World {
        _schema: schema,
        pki,
        gw,
        police_src,
        tax_src,
        approval,
        market,
        police,
        tax,
    })
}

const HUKOU: (&str, &str) = ("x-purpose", "M-HUKOU-001");
const ANY: (&str, &str) = ("x-purpose", "matter=M-OTHER-009; reason=check");

fn cache_status(reply: &Reply) -> &str {
    reply
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn tax_status(conn: &mut Conn, key: &str) -> Reply {
    conn.get_with(&format!("/v1/data/tax-status/{key}"), &[ANY])
        .await
        .unwrap()
}

async fn post(conn: &mut Conn, path: &str) -> Reply {
    conn.send(Method::POST, path, bytes::Bytes::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_upstream_call() {
    let Some(w) = world().await else { return };
    w.police_src
        .controls
        .set_fault(Fault::Delay(Duration::from_millis(300)));
    let path = format!("/v1/data/household/{CITIZEN}");
    let mut tasks = Vec::new();
    // Ten HTTP/2 connections carrying a hundred requests each, all at once.
    for _ in 0..10 {
        let identity = w
            .pki
            .department(&format!("approval-{}", tasks.len()), APPROVAL);
        let conn = Client::new(&w.pki.ca_pem(), Some(&identity), Proto::H2)
            .connect(w.gw.addr)
            .await
            .unwrap();
        for _ in 0..100 {
            let mut c = conn.fork().unwrap();
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                c.get_with(&path, &[HUKOU]).await.unwrap()
            }));
        }
    }
    let mut ok = 0;
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json()["fields"]["name"], "张三丰");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(w.police_src.controls.calls(CITIZEN), 1, "one upstream call");
    let (_, metrics) = w.gw.ops_get("/metrics").await;
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("dataset=\"household\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(line("certgate_exchange_cache_misses_total"), 1);
    assert_eq!(
        line("certgate_exchange_cache_misses_total")
            + line("certgate_exchange_cache_coalesced_total")
            + line("certgate_exchange_cache_hits_total"),
        1000
    );
    assert!(line("certgate_exchange_cache_coalesced_total") > 0);
    assert!(metrics.contains("certgate_exchange_upstream_duration_seconds_count"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_and_invalidation_refetch_once() {
    let Some(mut w) = world().await else { return };
    let calls = |w: &World| w.tax_src.controls.calls(XIAOMI);
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!((r.status, cache_status(&r)), (StatusCode::OK, "miss"));
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(cache_status(&r), "hit");
    assert_eq!(calls(&w), 1);

    // The TTL is one second: after it, twenty concurrent requests refetch once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = w.approval.fork().unwrap();
        tasks.push(tokio::spawn(
            async move { tax_status(&mut c, XIAOMI).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(calls(&w), 2, "one refetch after the TTL");

    // The owner invalidates the key: the next request refetches.
    let r = post(
        &mut w.tax,
        &format!("/v1/data/tax-status/{XIAOMI}/invalidate"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(cache_status(&r), "miss");
    assert_eq!(calls(&w), 3);

    // ... or the whole dataset.
    let r = post(&mut w.tax, "/v1/data/tax-status/invalidate").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "miss"
    );
    assert_eq!(calls(&w), 4);

    // Nobody else may invalidate.
    for path in [
        format!("/v1/data/tax-status/{XIAOMI}/invalidate"),
        "/v1/data/tax-status/invalidate".to_owned(),
    ] {
        let r = post(&mut w.approval, &path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.code(), "CG-DAT-002");
    }
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "hit"
    );
    let r = post(&mut w.tax, "/v1/data/no-such/invalidate").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&mut w.tax, "/v1/data/tax-status/NOT-A-USCC/invalidate").await;
    assert_eq!(r.code(), "CG-DAT-001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_fetch_is_not_undone_by_it() {
    let Some(mut w) = world().await else { return };
    w.tax_src
        .controls
        .set_fault(Fault::Delay(Duration::from_millis(400)));
    let mut c = w.approval.fork().unwrap();
    let in_flight = tokio::spawn(async move { tax_status(&mut c, XIAOMI).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The source's record changes while the fetch is on its way back; the owner invalidates.
    w.tax_src.controls.set_fault(Fault::None);
    w.tax_src.controls.put(
        XIAOMI,
        &json!({"name": "小米科技有限责任公司", "arrears_yuan": 0, "credit_rating": "AA"}),
    );
    let r = post(
        &mut w.tax,
        &format!("/v1/data/tax-status/{XIAOMI}/invalidate"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = in_flight.await.unwrap();
    assert_eq!(r.json()["fields"]["credit_rating"], "AA", "fetched again");
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(
        (
            cache_status(&r),
            r.json()["fields"]["credit_rating"].as_str()
        ),
        ("hit", Some("AA"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_licence_status_change_invalidates_the_holders_records() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let licence = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "miss"
    );
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "hit"
    );
    let r = w
        .market
        .json(
            Method::POST,
            &format!("/v1/licences/{licence}/suspend"),
            &[],
            &json!({"reason": "经营异常"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "miss"
    );
    assert_eq!(w.tax_src.controls.calls(XIAOMI), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_department_sees_the_fields_its_grant_allows() {
    let Some(mut w) = world().await else { return };
    let path = format!("/v1/data/household/{CITIZEN}");
    let r = w.approval.get_with(&path, &[HUKOU]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json()["fields"],
        json!({"name": "张三丰", "citizen_id": "1101**********002X", "address": "北京市朝阳区建国路 1 号"})
    );
    let r = w.market.get_with(&path, &[ANY]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["fields"], json!({"name": "张**"}));
    assert_eq!(
        cache_status(&r),
        "hit",
        "the second department is served from the cache"
    );
    // The owner sees every catalog field; what the catalog does not list never leaves.
    let r = w.police.get_with(&path, &[ANY]).await.unwrap();
    let fields = r.json()["fields"].clone();
    assert_eq!(fields["citizen_id"], CITIZEN);
    assert!(fields.get("internal_note").is_none());

    // A purpose the grant does not cover, a department without a grant, no purpose.
    let r = w.approval.get_with(&path, &[ANY]).await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-DAT-002")
    );
    let r = w.tax.get_with(&path, &[HUKOU]).await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-DAT-002")
    );
    let r = w.approval.get(&path).await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "CG-REQ-006")
    );

    // Bad keys, unknown datasets, unknown records; a refusal never reaches the source.
    let before = w.police_src.controls.total_calls();
    for (path, status, code) in [
        ("/v1/data/household/110105194912310021", 400, "CG-DAT-001"),
        ("/v1/data/household/..%2f..%2fetc", 400, "CG-DAT-001"),
        ("/v1/data/no-such-dataset/1", 404, "CG-DAT-003"),
        ("/v1/data/household/%E5%BC%A0%E4%B8%89", 400, "CG-DAT-001"),
        ("/v1/data/household/%00", 400, "CG-DAT-001"),
    ] {
        let r = w.approval.get_with(path, &[HUKOU]).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{path}"
        );
    }
    let long = format!("/v1/data/household/{}", "1".repeat(8000));
    let r = w.approval.get_with(&long, &[HUKOU]).await.unwrap();
    assert!(r.status.is_client_error(), "{}", r.status);
    assert_eq!(w.police_src.controls.total_calls(), before);
    let r = w
        .approval
        .get_with("/v1/data/household/110101199003070011", &[HUKOU])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "CG-DAT-004")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_gets_distinct_answers_and_stale_only_within_the_window() {
    let Some(mut w) = world().await else { return };
    // Stale within the window, 503 after it.
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "miss"
    );
    w.tax_src.controls.set_fault(Fault::Down);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!((r.status, cache_status(&r)), (StatusCode::OK, "stale"));
    assert_eq!(r.json()["cache"], "stale");
    assert_eq!(r.json()["fields"]["credit_rating"], "A");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-DAT-006")
    );
    w.tax_src.controls.set_fault(Fault::None);

    // Slow: 504 within the upstream's 800 ms budget (the source would take 5 s).
    let household = |n: &str| format!("/v1/data/household/{n}");
    let keys = [
        "110101199003071233",
        "110101199003073714",
        "110101199003074055",
    ];
    for k in keys {
        w.police_src.controls.put(k, &json!({"name": "李四"}));
    }
    w.police_src
        .controls
        .set_fault(Fault::Delay(Duration::from_secs(5)));
    let started = Instant::now();
    let r = w
        .approval
        .get_with(&household(keys[0]), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "CG-DAT-007")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Malformed and oversized bodies: 502.
    w.police_src.controls.set_fault(Fault::Malformed);
    let r = w
        .approval
        .get_with(&household(keys[1]), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_GATEWAY, "CG-DAT-005")
    );
    w.police_src.controls.set_fault(Fault::Oversized(10_000));
    let r = w
        .approval
        .get_with(&household(keys[1]), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_GATEWAY, "CG-DAT-005")
    );
    assert!(r.json()["message"].as_str().unwrap().contains("2048"));
    w.police_src.controls.set_fault(Fault::None);
    let r = w
        .approval
        .get_with(&household(keys[1]), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "the source recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_three_failures_and_half_opens_later() {
    let Some(mut w) = world().await else { return };
    let keys = [
        "110101199003071233",
        "110101199003073714",
        "110101199003074055",
        "110101199003075891",
    ];
    for k in keys {
        w.police_src.controls.put(k, &json!({"name": "王五"}));
    }
    let get = |k: &str| format!("/v1/data/household/{k}");
    w.police_src.controls.set_fault(Fault::Status(500));
    for k in &keys[..3] {
        let r = w.approval.get_with(&get(k), &[HUKOU]).await.unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_GATEWAY, "CG-DAT-005")
        );
    }
    assert_eq!(w.police_src.controls.total_calls(), 3);
    // Open: refused without calling the source.
    let r = w.approval.get_with(&get(keys[3]), &[HUKOU]).await.unwrap();
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-DAT-006")
    );
    assert!(r.json()["message"].as_str().unwrap().contains("suspended"));
    assert_eq!(w.police_src.controls.total_calls(), 3);
    let (_, metrics) = w.gw.ops_get("/metrics").await;
    let police_origin = format!(
        "upstream=\"https://127.0.0.1:{}\"",
        w.police_src.addr.port()
    );
    let breaker_line = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("certgate_exchange_upstream_breaker_state")
                    && l.contains(&police_origin)
            })
            .map(str::to_owned)
    };
    assert!(breaker_line(&metrics).unwrap().ends_with(" 1"), "{metrics}");

    // After the open period one trial goes through; it succeeds and closes the breaker.
    w.police_src.controls.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = w.approval.get_with(&get(keys[3]), &[HUKOU]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(w.police_src.controls.total_calls(), 4);
    let (_, metrics) = w.gw.ops_get("/metrics").await;
    assert!(breaker_line(&metrics).unwrap().ends_with(" 0"));
}

async fn ask_proof(conn: &mut Conn, proof: &str, holder: &str) -> Reply {
    conn.json(
        Method::POST,
        &format!("/v1/proofs/{proof}"),
        &[ANY],
        &json!({ "holder": holder }),
    )
    .await
    .unwrap()
}

async fn verify_proof(conn: &mut Conn, token: &str) -> Value {
    let r = conn
        .json(
            Method::POST,
            "/v1/proofs/verify",
            &[],
            &json!({ "token": token }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Verifies an ES256 JWT with OpenSSL against the JWK of its `kid` in the gateway's JWK set.
fn openssl_verifies(jwks: &Value, token: &str) -> bool {
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::ecdsa::EcdsaSig;
    use openssl::nid::Nid;
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(signing_input.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is in the JWK set");
    let coord = |c: &str| {
        BigNum::from_slice(&URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap()).unwrap()
    };
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::from_public_key_affine_coordinates(&group, &coord("x"), &coord("y")).unwrap();
    let Ok(raw) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    if raw.len() != 64 {
        return false;
    }
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&raw[..32]).unwrap(),
        BigNum::from_slice(&raw[32..]).unwrap(),
    )
    .unwrap();
    let digest = openssl::sha::sha256(signing_input.as_bytes());
    sig.verify(&digest, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_answer_yes_or_no_signed_and_say_nothing_else() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    // Another enterprise with no arrears but no licence.
    w.tax_src.controls.put(
        "91110108MA0000013L",
        &json!({"name": "无照公司", "arrears_yuan": 0, "credit_rating": "B"}),
    );
    let jwks = w
        .approval
        .get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json();

    // Yes: no arrears (a dataset field) and a valid business licence (a licence status).
    let r = ask_proof(&mut w.approval, "no-arrears-licensed", XIAOMI).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let yes = r.json();
    assert_eq!(yes["result"], true);
    assert!(yes["expires_at"].as_i64().unwrap() - yes["issued_at"].as_i64().unwrap() <= 86_400);
    let token = yes["token"].as_str().unwrap();
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "certgate-proof+jwt");
    assert_eq!(header["alg"], "ES256");
    let mut claims: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    claims.sort_unstable();
    assert_eq!(
        claims,
        [
            "aud",
            "exp",
            "iat",
            "iss",
            "jti",
            "proof_name",
            "proof_type",
            "result",
            "sub"
        ]
    );
    let text = payload.to_string();
    for leaked in ["小米科技", "arrears_yuan", "credit_rating", "\"A\"", "雷军"] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
    }
    assert_eq!(payload["sub"], XIAOMI);
    assert!(
        openssl_verifies(&jwks, token),
        "verifies offline with OpenSSL and the JWK set"
    );
    assert_eq!(verify_proof(&mut w.approval, token).await["valid"], true);
    // Another department sees the proof was not issued to it.
    let other = verify_proof(&mut w.police, token).await;
    assert_eq!(other["valid"], false, "{other}");
    let audience = other["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "audience")
        .unwrap();
    assert_eq!(audience["ok"], false);
    assert!(
        audience["detail"].as_str().unwrap().contains(APPROVAL),
        "{audience}"
    );

    // No: arrears, or no licence.
    for holder in [OTHER_FIRM, "91110108MA0000013L"] {
        let r = ask_proof(&mut w.approval, "no-arrears-licensed", holder).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json()["result"], false, "{holder}");
        assert_eq!(
            verify_proof(&mut w.approval, r.json()["token"].as_str().unwrap()).await["valid"],
            true
        );
    }

    // Tampered: flip the result in the payload, or a byte of the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = payload.clone();
    forged["result"] = json!(false);
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    let tampered = parts.join(".");
    let v = verify_proof(&mut w.approval, &tampered).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["checks"][0]["check"], "signature");
    assert!(!openssl_verifies(&jwks, &tampered));
    let mut sig = token.to_owned();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(verify_proof(&mut w.approval, &sig).await["valid"], false);
    for junk in ["", "a.b.c", &"x".repeat(20_000)] {
        assert_eq!(verify_proof(&mut w.approval, junk).await["valid"], false);
    }

    // A citizen proof over an absent field: yes; once the record holds a conviction: no.
    let r = ask_proof(&mut w.approval, "no-criminal-record", CITIZEN).await;
    assert_eq!(r.json()["result"], true, "{:?}", r.body);
    w.police_src.controls.put(
        "110101199003071233",
        &json!({"name": "赵六", "criminal_record": "2019 年 盗窃"}),
    );
    let r = ask_proof(&mut w.approval, "no-criminal-record", "110101199003071233").await;
    assert_eq!(r.json()["result"], false);
    assert!(!r.json()["token"].as_str().unwrap().contains("盗窃"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_requests_that_cannot_be_answered_are_refused_not_answered_no() {
    let Some(mut w) = world().await else { return };
    for (market, proof, holder, status, code) in [
        (
            false,
            "no-arrears-licensed",
            "not-a-uscc",
            400,
            "CG-PRF-001",
        ),
        (false, "no-arrears-licensed", CITIZEN, 400, "CG-PRF-001"),
        (true, "no-arrears-licensed", XIAOMI, 403, "CG-PRF-002"),
        (false, "no-such-proof", XIAOMI, 404, "CG-PRF-003"),
    ] {
        let conn = if market {
            &mut w.market
        } else {
            &mut w.approval
        };
        let r = ask_proof(conn, proof, holder).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{proof} {holder}"
        );
    }
    let r = w
        .approval
        .json(
            Method::POST,
            "/v1/proofs/no-arrears-licensed",
            &[],
            &json!({"holder": XIAOMI}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-REQ-006", "no purpose");
    let r = w
        .approval
        .json(
            Method::POST,
            "/v1/proofs/no-arrears-licensed",
            &[ANY],
            &json!({"holder": XIAOMI, "extra": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-REQ-007");
    // A source that is down is an error, never a "no" — and never a stale record.
    assert_eq!(
        tax_status(&mut w.approval, XIAOMI).await.status,
        StatusCode::OK
    );
    w.tax_src.controls.set_fault(Fault::Down);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ask_proof(&mut w.approval, "no-arrears-licensed", XIAOMI).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-DAT-006")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_access_is_logged_with_the_holder_pseudonymised() {
    let Some(mut w) = world().await else { return };
    let r = w
        .approval
        .get_with(&format!("/v1/data/household/{CITIZEN}"), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = w
        .tax
        .get_with(&format!("/v1/data/household/{CITIZEN}"), &[HUKOU])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let identity = w.pki.department("auditor", AUDIT);
    let mut auditor = Client::new(&w.pki.ca_pem(), Some(&identity), Proto::H2)
        .connect(w.gw.addr)
        .await
        .unwrap();
    let entries = auditor
        .get("/v1/audit/entries?limit=1000")
        .await
        .unwrap()
        .json();
    let leaves = entries["entries"].as_array().unwrap();
    let data: Vec<&Value> = leaves
        .iter()
        .filter(|l| l["resource"] == "dataset:household")
        .collect();
    assert_eq!(data.len(), 2, "{leaves:?}");
    for leaf in &data {
        assert_eq!(leaf["holder"], w.gw.gateway.pseudonym(CITIZEN));
        assert!(!leaf.to_string().contains(CITIZEN));
    }
    assert_eq!(data[0]["status"], 200);
    assert_eq!(data[1]["status"], 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_source_deleted_never_comes_back_as_stale() {
    let Some(mut w) = world().await else { return };
    assert_eq!(
        cache_status(&tax_status(&mut w.approval, XIAOMI).await),
        "miss"
    );
    // The source deletes it; after the TTL the gateway learns so (404)...
    w.tax_src.controls.remove(XIAOMI);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "CG-DAT-004")
    );
    // ... and when the source then fails, the deleted record is not served as stale.
    w.tax_src.controls.set_fault(Fault::Down);
    let r = tax_status(&mut w.approval, XIAOMI).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-DAT-006")
    );
}
