//! Every route driven as an attacker would: the wrong role, another's object, headers missing
//! or repeated, control characters, oversized and malformed input. Each answer is a clear 4xx
//! with a stable code (or, for the verification routes, a verdict that says "not valid"),
//! never a 5xx; and each refusal is exactly one leaf of the access log.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use certgate_tests::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// What a route needs from a well-behaved caller.
struct Route {
    method: Method,
    path: String,
    /// The department that may call it (index into the world's connections).
    caller: usize,
    /// A department lacking the role it needs, when it needs one.
    wrong_role: Option<usize>,
    /// The route reads data for a stated purpose.
    purpose: bool,
    /// The holder app names the holder it acts for.
    holder: Option<&'static str>,
    /// A body the route accepts.
    body: Option<Value>,
    /// The route answers bad input with a verdict (`valid: false`) rather than a refusal.
    verdict: bool,
}

const MARKET_I: usize = 0;
const APPROVAL_I: usize = 1;
const OPS_I: usize = 2;
const AUDIT_I: usize = 3;
const APP_I: usize = 4;
const PUSH_I: usize = 5;

fn route(method: Method, path: impl Into<String>, caller: usize) -> Route {
    Route {
        method,
        path: path.into(),
        caller,
        wrong_role: None,
        purpose: false,
        holder: None,
        body: None,
        verdict: false,
    }
}

impl Route {
    fn role(mut self, wrong: usize) -> Route {
        self.wrong_role = Some(wrong);
        self
    }
    fn purpose(mut self) -> Route {
        self.purpose = true;
        self
    }
    fn holder(mut self, h: &'static str) -> Route {
        self.holder = Some(h);
        self
    }
    fn body(mut self, b: Value) -> Route {
        self.body = Some(b);
        self
    }
    fn verdict(mut self) -> Route {
        self.verdict = true;
        self
    }
}

/// Every string in `v` replaced by `f(path)`, one at a time: a body per string field.
fn each_string(v: &Value, f: &dyn Fn() -> Value) -> Vec<Value> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::String(_) => out.push(path.clone()),
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(i.to_string());
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut paths = Vec::new();
    walk(v, &mut Vec::new(), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let mut copy = v.clone();
            let mut at = &mut copy;
            for k in &p {
                at = match at {
                    Value::Object(m) => m.get_mut(k).unwrap(),
                    Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            *at = f();
            copy
        })
        .collect()
}

/// One hostile request and what must come back.
struct Case {
    what: String,
    route: String,
    caller: usize,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    verdict: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_hostile_input_with_a_code_and_one_leaf_each() {
    let pki = TestPki::new();
    let ids = [
        pki.department("market", MARKET),
        pki.department("approval", APPROVAL),
        pki.department("ops", OPS),
        pki.department("audit", AUDIT),
        pki.department("app", APP),
        pki.department("push", PUSH),
    ];
    let departments = standard_departments() + &dept(PUSH, "政策推送服务", &["policy-push"], true);
    let gw = TestGateway::start(&write_config(&pki, "", &departments)).await;
    let mut conns = Vec::new();
    for id in &ids {
        conns.push(
            Client::new(&pki.ca_pem(), Some(id), Proto::H2)
                .connect(gw.addr)
                .await
                .unwrap(),
        );
    }

    // The objects the routes act on: a seal and licences of the market regulator, an
    // enterprise's own seal, a consent and a show-code.
    let seal = create_seal(&mut conns[MARKET_I], "ES256").await;
    let licence = issue_licence(&mut conns[MARKET_I], &business_licence(&seal, XIAOMI)).await;
    let lic = licence["id"].as_str().unwrap().to_owned();
    let food = issue_licence(
        &mut conns[MARKET_I],
        &json!({"licence_type": FOOD, "holder_id": CITIZEN, "holder_name": "张三", "seal_id": seal,
            "fields": {"operator": "张三", "premises": "北京市朝阳区"}}),
    )
    .await;
    let food_id = food["id"].as_str().unwrap().to_owned();
    let xiaomi_seal = conns[MARKET_I]
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "合同专用章", "alg": "SM2SM3", "holder": XIAOMI}),
        )
        .await
        .unwrap()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let consent = conns[APP_I]
        .json(
            Method::POST,
            "/v1/consents",
            &[("x-holder", CITIZEN)],
            &json!({"holder_id": CITIZEN, "department": APPROVAL, "licence_types": [FOOD],
                "purpose": "M-FOOD-001", "ttl_seconds": 600}),
        )
        .await
        .unwrap()
        .json();
    let consent_id = consent["id"].as_str().unwrap().to_owned();
    let doc = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"%PDF-1.7 x");

    use Method as M;
    let routes = vec![
        route(M::GET, "/v1/whoami", APPROVAL_I),
        route(M::POST, "/v1/admin/reload", OPS_I)
            .role(APPROVAL_I)
            .body(json!({})),
        route(M::GET, "/openapi.json", APPROVAL_I),
        route(M::POST, "/v1/seals", MARKET_I)
            .role(APPROVAL_I)
            .body(json!({"seal_type": "财务专用章", "alg": "ES256"})),
        route(M::GET, "/v1/seals?limit=5", MARKET_I),
        route(M::GET, format!("/v1/seals/{seal}"), APPROVAL_I),
        route(M::GET, format!("/v1/seals/{seal}/certificate"), APPROVAL_I),
        route(M::POST, format!("/v1/seals/{seal}/revoke"), MARKET_I)
            .role(APPROVAL_I)
            .body(json!({"reason": "遗失"})),
        route(M::POST, format!("/v1/seals/{seal}/sign"), MARKET_I)
            .role(AUDIT_I)
            .body(json!({"document_base64": doc, "name": "a.pdf"})),
        route(M::POST, "/v1/seals/verify", APPROVAL_I)
            .body(json!({"document_base64": doc, "jws": "e30..AAAA"}))
            .verdict(),
        route(M::GET, "/v1/seal-cas", APPROVAL_I),
        route(M::POST, "/v1/admin/seal-cas", OPS_I)
            .role(APPROVAL_I)
            .body(json!({"name": "外省印章系统", "region": "440000", "certificate_pem": "nope"})),
        route(
            M::DELETE,
            "/v1/admin/seal-cas/sealca-0000000000000000",
            OPS_I,
        )
        .role(APPROVAL_I),
        route(M::GET, "/v1/seal-ca.pem", APPROVAL_I),
        route(M::GET, "/.well-known/jwks.json", APPROVAL_I),
        route(M::GET, "/v1/licence-types", APPROVAL_I),
        route(M::POST, "/v1/licences", MARKET_I)
            .role(APPROVAL_I)
            .body(business_licence(&seal, "914403001922038216")),
        route(
            M::GET,
            format!("/v1/licences?holder={XIAOMI}&type={BUSINESS}"),
            APPROVAL_I,
        )
        .role(AUDIT_I)
        .purpose(),
        route(M::POST, "/v1/licences/verify", APPROVAL_I)
            .body(json!({"credential": licence["credential"]}))
            .verdict(),
        route(M::GET, format!("/v1/licences/{lic}"), APPROVAL_I)
            .role(AUDIT_I)
            .purpose(),
        route(M::POST, format!("/v1/licences/{lic}/check"), APPROVAL_I)
            .role(AUDIT_I)
            .purpose()
            .body(json!({"fields": {"legal_representative": "雷军"}})),
        route(M::POST, format!("/v1/licences/{lic}/suspend"), MARKET_I)
            .role(APPROVAL_I)
            .body(json!({"reason": "检查"})),
        route(M::POST, format!("/v1/licences/{lic}/resume"), MARKET_I)
            .role(APPROVAL_I)
            .body(json!({"reason": "检查"})),
        route(M::POST, format!("/v1/licences/{lic}/revoke"), MARKET_I)
            .role(APPROVAL_I)
            .body(json!({"reason": "吊销"})),
        route(M::POST, format!("/v1/licences/{lic}/renew"), MARKET_I)
            .role(APPROVAL_I)
            .body(json!({})),
        route(M::GET, "/v1/status-lists/0", APPROVAL_I),
        route(M::POST, "/v1/consents", APP_I)
            .role(APPROVAL_I)
            .holder(CITIZEN)
            .body(
                json!({"holder_id": CITIZEN, "department": APPROVAL, "licence_types": [FOOD],
                "purpose": "M-FOOD-001", "ttl_seconds": 600}),
            ),
        route(M::POST, format!("/v1/consents/{consent_id}/revoke"), APP_I).role(APPROVAL_I),
        route(M::POST, "/v1/show-codes", APP_I)
            .role(APPROVAL_I)
            .holder(CITIZEN)
            .body(json!({"licence_id": food_id})),
        route(M::POST, "/v1/show-codes/redeem", APPROVAL_I)
            .role(AUDIT_I)
            .purpose()
            .body(json!({"code": "not-a-code"})),
        route(M::GET, "/v1/datasets", APPROVAL_I),
        route(M::GET, format!("/v1/data/household/{CITIZEN}"), APPROVAL_I).purpose(),
        route(
            M::POST,
            format!("/v1/data/household/{CITIZEN}/invalidate"),
            APPROVAL_I,
        ),
        route(M::POST, "/v1/data/household/invalidate", APPROVAL_I),
        route(M::GET, "/v1/proof-types", APPROVAL_I),
        route(M::POST, "/v1/proofs/verify", APPROVAL_I)
            .body(json!({"token": "e30.e30.AAAA"}))
            .verdict(),
        route(M::POST, "/v1/proofs/no-arrears", APPROVAL_I)
            .purpose()
            .body(json!({"holder": XIAOMI})),
        route(M::POST, "/v1/policies", OPS_I)
            .role(APPROVAL_I)
            .body(json!({"id": "P-1", "version": 1})),
        route(M::POST, "/v1/policies/match", APPROVAL_I)
            .role(AUDIT_I)
            .purpose()
            .body(json!({"uscc": XIAOMI})),
        route(M::POST, "/v1/policies/P-NONE/explain", APPROVAL_I)
            .role(AUDIT_I)
            .purpose()
            .body(json!({"uscc": XIAOMI})),
        route(
            M::GET,
            "/v1/policies/search?q=%E4%B8%93%E7%B2%BE",
            APPROVAL_I,
        ),
        route(M::GET, "/v1/policies/P-NONE", APPROVAL_I),
        route(M::GET, "/v1/schemas/policy", APPROVAL_I),
        route(M::DELETE, "/v1/policies/P-NONE", OPS_I).role(APPROVAL_I),
        route(
            M::GET,
            "/v1/policies/P-NONE/eligible-enterprises?limit=5",
            PUSH_I,
        )
        // A consumer handles one enterprise's matter; the register in bulk is not its.
        .role(APPROVAL_I),
        route(M::POST, "/v1/enterprises", OPS_I)
            .role(APPROVAL_I)
            .body(json!({"uscc": XIAOMI})),
        route(M::GET, "/v1/push-feed?after=0&limit=3", PUSH_I).role(APPROVAL_I),
        route(M::GET, "/v1/audit/log-key", APPROVAL_I),
        route(M::GET, "/v1/audit/checkpoint", AUDIT_I).role(APPROVAL_I),
        route(M::GET, "/v1/audit/proof/inclusion?index=0&size=1", AUDIT_I).role(APPROVAL_I),
        route(M::GET, "/v1/audit/proof/consistency?from=1&to=1", AUDIT_I).role(APPROVAL_I),
        route(M::GET, "/v1/audit/entries?limit=1", AUDIT_I).role(APPROVAL_I),
        route(M::GET, "/v1/audit/export?format=csv&size=1", AUDIT_I).role(APPROVAL_I),
        route(
            M::GET,
            format!("/v1/audit/holder-view?holder={XIAOMI}"),
            APP_I,
        )
        .role(APPROVAL_I)
        .holder(XIAOMI),
    ];

    // The table covers every route the OpenAPI document names, with its method.
    let doc = conns[APPROVAL_I].get("/openapi.json").await.unwrap().json();
    let template = |p: &str| {
        let p = p.split('?').next().unwrap();
        let segs: Vec<&str> = p.split('/').collect();
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|k| {
                let ks: Vec<&str> = k.split('/').collect();
                ks.len() == segs.len()
                    && ks
                        .iter()
                        .zip(&segs)
                        .all(|(a, b)| a.starts_with('{') || a == b)
            })
            .cloned()
            .unwrap_or_else(|| panic!("{p} matches no documented route"))
    };
    let mut covered = BTreeSet::new();
    for r in &routes {
        covered.insert((template(&r.path), r.method.as_str().to_lowercase()));
    }
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                covered.contains(&(path.clone(), method.clone())),
                "{method} {path} is not driven by this test"
            );
        }
    }

    // The cases.
    let mut cases = Vec::new();
    for r in &routes {
        let base_headers = |r: &Route| {
            let mut h: Vec<(&'static str, String)> = Vec::new();
            if r.purpose {
                h.push(("x-purpose", "M-FOOD-001".into()));
            }
            if let Some(holder) = r.holder {
                h.push(("x-holder", holder.into()));
            }
            if r.body.is_some() {
                h.push(("content-type", "application/json".into()));
            }
            h
        };
        let body = r
            .body
            .as_ref()
            .map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let case =
            |what: &str, caller: usize, headers: Vec<(&'static str, String)>, body: Bytes| Case {
                what: what.into(),
                route: format!("{} {}", r.method, r.path),
                caller,
                method: r.method.clone(),
                path: r.path.clone(),
                headers,
                body,
                verdict: false,
            };
        // Repeated single headers.
        for name in ["x-purpose", "x-holder", "x-case-id", "x-consent"] {
            let mut h = base_headers(r);
            h.push((name, "M-1".into()));
            h.push((name, "M-2".into()));
            cases.push(case(&format!("{name} twice"), r.caller, h, body.clone()));
        }
        // The wrong role.
        if let Some(wrong) = r.wrong_role {
            cases.push(case("wrong role", wrong, base_headers(r), body.clone()));
        }
        // No purpose, or one with control or bidi characters.
        if r.purpose {
            let without: Vec<_> = base_headers(r)
                .into_iter()
                .filter(|(n, _)| *n != "x-purpose")
                .collect();
            cases.push(case("no purpose", r.caller, without.clone(), body.clone()));
            for bad in [
                "matter=M-1; reason=a%0D%0Ab",
                "matter=M-1; reason=a%E2%80%AEb",
                "M 1",
            ] {
                let mut h = without.clone();
                h.push(("x-purpose", bad.into()));
                cases.push(case(&format!("purpose {bad}"), r.caller, h, body.clone()));
            }
        }
        // The holder app without X-Holder, or naming someone else.
        if r.holder.is_some() {
            let without: Vec<_> = base_headers(r)
                .into_iter()
                .filter(|(n, _)| *n != "x-holder")
                .collect();
            cases.push(case("no X-Holder", r.caller, without.clone(), body.clone()));
            let mut other = without;
            other.push(("x-holder", "914403001922038216".into()));
            cases.push(case("X-Holder of another", r.caller, other, body.clone()));
        }
        // Bodies: malformed, untyped, oversized, a huge value, control characters.
        if let Some(b) = &r.body {
            let h = base_headers(r);
            cases.push(case(
                "malformed JSON",
                r.caller,
                h.clone(),
                Bytes::from_static(b"{\""),
            ));
            let untyped: Vec<_> = h
                .iter()
                .filter(|(n, _)| *n != "content-type")
                .cloned()
                .collect();
            cases.push(case("no content-type", r.caller, untyped, body.clone()));
            cases.push(case(
                "body over the limit",
                r.caller,
                h.clone(),
                Bytes::from(vec![b' '; 2 * 1024 * 1024]),
            ));
            for (i, v) in each_string(b, &|| Value::String("字".repeat(200_000)))
                .into_iter()
                .enumerate()
            {
                let mut c = case(
                    &format!("huge string #{i}"),
                    r.caller,
                    h.clone(),
                    Bytes::from(v.to_string()),
                );
                c.verdict = r.verdict;
                cases.push(c);
            }
            for (i, v) in each_string(b, &|| Value::String("a\u{0}\r\n\u{202E}b".into()))
                .into_iter()
                .enumerate()
            {
                let mut c = case(
                    &format!("control characters #{i}"),
                    r.caller,
                    h.clone(),
                    Bytes::from(v.to_string()),
                );
                c.verdict = r.verdict;
                cases.push(c);
            }
        }
    }
    // Another's object: the right role, the wrong owner.
    let owner_cases = [
        (
            APPROVAL_I,
            M::POST,
            format!("/v1/seals/{seal}/sign"),
            json!({"document_base64": doc, "name": "a.pdf"}),
            vec![],
        ),
        (
            APP_I,
            M::POST,
            format!("/v1/seals/{seal}/sign"),
            json!({"document_base64": doc, "name": "a.pdf"}),
            vec![("x-holder", MARKET.to_owned())],
        ),
        (
            APP_I,
            M::POST,
            format!("/v1/seals/{seal}/sign"),
            json!({"document_base64": doc, "name": "a.pdf"}),
            vec![("x-holder", XIAOMI.to_owned())],
        ),
        (
            APP_I,
            M::POST,
            format!("/v1/seals/{xiaomi_seal}/sign"),
            json!({"document_base64": doc, "name": "a.pdf"}),
            vec![("x-holder", "914403001922038216".to_owned())],
        ),
        (
            MARKET_I,
            M::POST,
            format!("/v1/seals/{xiaomi_seal}/sign"),
            json!({"document_base64": doc, "name": "a.pdf"}),
            vec![],
        ),
        (
            APP_I,
            M::POST,
            "/v1/show-codes".to_owned(),
            json!({"licence_id": lic}),
            vec![("x-holder", CITIZEN.to_owned())],
        ),
        (
            APPROVAL_I,
            M::GET,
            format!("/v1/licences/{food_id}"),
            Value::Null,
            vec![("x-purpose", "M-FOOD-001".to_owned())],
        ),
        (
            APPROVAL_I,
            M::POST,
            format!("/v1/licences/{food_id}/check"),
            json!({"fields": {"premises": "北京市朝阳区"}}),
            vec![("x-purpose", "M-FOOD-001".to_owned())],
        ),
        (
            MARKET_I,
            M::POST,
            "/v1/seals".to_owned(),
            json!({"seal_type": "公章", "alg": "ES256", "holder": APPROVAL}),
            vec![],
        ),
        (
            MARKET_I,
            M::POST,
            "/v1/seals".to_owned(),
            json!({"seal_type": "公章", "alg": "ES256", "name": "某区行政审批局公章"}),
            vec![],
        ),
        (
            MARKET_I,
            M::POST,
            "/v1/licences".to_owned(),
            business_licence(&seal, XIAOMI)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("valid_from".into(), json!(1));
                    o.insert("valid_until".into(), json!(2));
                    Value::Object(o)
                })
                .unwrap(),
            vec![],
        ),
    ];
    for (caller, method, path, body, headers) in owner_cases {
        let mut h: Vec<(&'static str, String)> = headers;
        let body = if body.is_null() {
            Bytes::new()
        } else {
            h.push(("content-type", "application/json".into()));
            Bytes::from(body.to_string())
        };
        cases.push(Case {
            what: "another's object".into(),
            route: format!("{method} {path}"),
            caller,
            method,
            path,
            headers: h,
            body,
            verdict: false,
        });
    }

    // Run them: a 4xx with a code and a short message, or a verdict that says not valid.
    let mut refused: HashMap<String, (String, u16)> = HashMap::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = conns[c.caller]
            .send_with(c.method.clone(), &c.path, &headers, c.body.clone())
            .await
            .unwrap_or_else(|e| panic!("{} / {}: {e:#}", c.route, c.what));
        let status = reply.status.as_u16();
        assert!(
            status < 500,
            "{} / {}: {status} {:?}",
            c.route,
            c.what,
            reply.body
        );
        if c.verdict && status == 200 {
            assert_eq!(reply.json()["valid"], false, "{} / {}", c.route, c.what);
            continue;
        }
        assert!(
            (400..500).contains(&status),
            "{} / {}: {status} {:?}",
            c.route,
            c.what,
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let code = body["code"].as_str().unwrap_or_default();
        assert!(code.starts_with("CG-"), "{} / {}: {body}", c.route, c.what);
        assert!(
            reply.body.len() < 1024,
            "{} / {}: an error of {} bytes",
            c.route,
            c.what,
            reply.body.len()
        );
        let rid = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        refused.insert(rid, (format!("{} / {}", c.route, c.what), status));
    }
    assert!(refused.len() > 300, "only {} refusals", refused.len());

    // Exactly one leaf per refusal, with its status and outcome.
    let key = log_key(&mut conns[AUDIT_I]).await;
    let size = gw.gateway.access_log.size();
    checkpoint_covering(&mut conns[AUDIT_I], &key, size).await;
    let mut leaves: HashMap<String, Vec<Value>> = HashMap::new();
    for e in all_entries(&mut conns[AUDIT_I]).await {
        if let Some(rid) = e["request_id"].as_str() {
            leaves.entry(rid.to_owned()).or_default().push(e.clone());
        }
    }
    for (rid, (what, status)) in &refused {
        let found = leaves.get(rid).map_or(&[][..], Vec::as_slice);
        assert_eq!(found.len(), 1, "{what}: {} leaves", found.len());
        assert_eq!(found[0]["status"], *status, "{what}");
        assert_eq!(found[0]["outcome"], "denied", "{what}");
        let text = found[0].to_string();
        assert!(
            !text.contains(CITIZEN),
            "{what}: a raw citizen id in {text}"
        );
        assert!(
            !text.contains('\u{202E}'),
            "{what}: a bidi control in {text}"
        );
        assert!(text.len() < 2048, "{what}: a leaf of {} bytes", text.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_cannot_lock_departments_out() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let gw = TestGateway::standard(&pki, "").await;
    // 1,200 idle TCP connections from one address: it keeps its share (32), the rest are
    // closed on accept.
    let mut idle = Vec::new();
    for _ in 0..1200 {
        idle.push(connect_from("127.0.0.3", gw.addr).await.unwrap());
    }
    let t = std::time::Instant::now();
    let reply = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2)
        .get(gw.addr, "/v1/whoami")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    let (ready, _) = gw.ops_get("/readyz").await;
    assert_eq!(ready, 200);
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains("certgate_handshaking_connections 32"),
        "{metrics}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_when_every_connection_slot_is_taken() {
    let pki = TestPki::new();
    let gw =
        TestGateway::standard(&pki, "max_connections = 40\nmax_handshakes_per_source = 32").await;
    let mut idle = Vec::new();
    for from in ["127.0.0.4", "127.0.0.5"] {
        for _ in 0..32 {
            idle.push(connect_from(from, gw.addr).await.unwrap());
        }
    }
    let mut answer = (0, String::new());
    for _ in 0..50 {
        answer = gw.ops_get("/readyz").await;
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(
        answer.1.contains("every connection slot is taken"),
        "{answer:?}"
    );
    drop(idle);
    let mut ready = 0;
    for _ in 0..100 {
        ready = gw.ops_get("/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200, "slots freed, ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_any_eku_is_refused_in_the_handshake() {
    let pki = TestPki::new();
    let audit = pki.department("audit", AUDIT);
    // Made with the openssl command and the test CA's key: certgate's own PKI cannot make one.
    let dir = pki.pki_dir();
    let (key, csr, cert) = (
        dir.join("noeku.key"),
        dir.join("noeku.csr"),
        dir.join("noeku.pem"),
    );
    let ext = dir.join("noeku.ext");
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nsubjectAltName=URI:urn:certgate:dept:{APPROVAL}\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/O=certgate/CN=noeku",
        "-out",
        csr.to_str().unwrap(),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        dir.join("ca.pem").to_str().unwrap(),
        "-CAkey",
        dir.join("ca.key").to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", cert.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("Extended Key Usage"), "{text}");
    assert!(text.contains("urn:certgate:dept:"), "{text}");
    let no_eku = Identity::load(&cert, &key);

    let gw = TestGateway::start(&write_config_with_log(
        &pki,
        "",
        &standard_departments(),
        "refusal_window_ms = 300",
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let client = Client::new(&pki.ca_pem(), Some(&no_eku), proto);
        assert!(
            client.get(gw.addr, "/v1/whoami").await.is_err(),
            "a certificate without EKU was accepted ({proto:?})"
        );
    }
    // The server counts a refusal just after the client has seen its alert.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = gw.ops_get("/metrics").await.1;
        if metrics.contains("certgate_tls_handshake_failures_total{reason=\"wrong_key_usage\"} 2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    assert!(
        metrics.contains("certgate_tls_handshake_failures_total{reason=\"wrong_key_usage\"} 2"),
        "{metrics}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let summaries = handshake_summaries(&mut auditor).await;
    assert!(
        summaries
            .iter()
            .any(|s| s["code"].as_str().unwrap().contains("wrong_key_usage:")),
        "{summaries:?}"
    );
    // The development PKI never issues one: a department certificate carries clientAuth, and
    // the only alternative it offers is serverAuth.
    for client_auth in [true, false] {
        let mut spec = pki.spec(&format!("eku-{client_auth}"), APPROVAL);
        spec.client_auth = client_auth;
        let issued = pki.client(&spec);
        let text = std::process::Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-text",
                "-in",
                issued.cert_path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("Extended Key Usage"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enumeration_meets_the_departments_budget_and_a_reload_changes_it() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let ops = pki.department("ops", OPS);
    let audit = pki.department("audit", AUDIT);
    // The approval bureau may read 20 a second (a burst of 40).
    let limited = |read: &str| {
        standard_departments().replacen(
            &format!("id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"consumer\"]\nenabled = true\n{UNLIMITED}"),
            &format!("id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"consumer\"]\nenabled = true\nrate_limits = {{ read = \"{read}\" }}\n"),
            1,
        )
    };
    assert_ne!(limited("20/s"), standard_departments());
    let config = write_config(&pki, "", &limited("20/s"));
    let gw = TestGateway::start(&config).await;
    let mut conn = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut refused = Vec::new();
    for i in 0..100 {
        let r = conn
            .get_with(
                &format!("/v1/licences/1.2.156.3005.2.{BUSINESS}.{MARKET}.{i:016}.001.0"),
                &[("x-purpose", "M-1")],
            )
            .await
            .unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.code(), "CG-REQ-009");
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&wait), "{wait}");
            refused.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
        }
    }
    assert!(refused.len() >= 50, "only {} of 100 refused", refused.len());
    // Another read route draws on the same spent budget: it is refused within a burst, and no
    // more pass before that than the budget refilled meanwhile (20 a second), however slow
    // the machine.
    let started = std::time::Instant::now();
    let mut passed = 0;
    loop {
        let r = conn.get("/v1/licence-types").await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        passed += 1;
        assert!(passed < 200, "200 reads passed on a spent budget");
    }
    let refilled = (20.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(passed <= refilled, "{passed} passed, {refilled} refilled");
    // Verifications have a budget of their own.
    let r = conn
        .json(
            Method::POST,
            "/v1/licences/verify",
            &[],
            &json!({"credential": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "certgate_rate_limited_total{{department=\"{APPROVAL}\",class=\"read\"}}"
        )),
        "{metrics}"
    );
    // Each refusal is a leaf.
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let key = log_key(&mut auditor).await;
    checkpoint_covering(&mut auditor, &key, gw.gateway.access_log.size()).await;
    let page = auditor
        .get(&format!(
            "/v1/audit/entries?department={APPROVAL}&outcome=denied&limit=1000"
        ))
        .await
        .unwrap()
        .json();
    let logged: BTreeSet<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == 429)
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    for rid in &refused {
        assert!(logged.contains(rid.as_str()), "429 {rid} not in the log");
    }

    // Reloaded with a larger budget, the same burst passes.
    write_config(&pki, "", &limited("1000/s"));
    let reload = Client::new(&pki.ca_pem(), Some(&ops), Proto::H2)
        .post(gw.addr, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(reload.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for _ in 0..100 {
        let r = conn.get("/v1/whoami").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let _ = config;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_refused_by_the_parser_are_in_the_log_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let audit = pki.department("audit", AUDIT);
    let gw = TestGateway::standard(&pki, "").await;
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1);
    let heads: Vec<(Vec<u8>, &str)> = vec![
        // A header value of 100 KB: over the 16 KiB head budget.
        (
            format!(
                "GET /v1/whoami HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(100_000)
            )
            .into_bytes(),
            "431",
        ),
        // 100 header fields: over the 64 allowed.
        (
            format!(
                "GET /v1/whoami HTTP/1.1\r\nhost: x\r\n{}\r\n",
                (0..100)
                    .map(|i| format!("x-h{i}: v\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
            "431",
        ),
        // Not HTTP at all.
        (b"HELLO THERE\r\n\r\n".to_vec(), "400"),
    ];
    for (head, status) in &heads {
        let mut tls = client.tls(gw.addr).await.unwrap();
        tls.write_all(head).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tls.read_to_end(&mut answer),
        )
        .await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    }
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let key = log_key(&mut auditor).await;
    let mut found = Vec::new();
    for _ in 0..50 {
        checkpoint_covering(&mut auditor, &key, gw.gateway.access_log.size()).await;
        let page = auditor
            .get(&format!(
                "/v1/audit/entries?department={APPROVAL}&limit=100"
            ))
            .await
            .unwrap()
            .json();
        found = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["code"] == "CG-REQ-010")
            .map(|e| e["status"].as_u64().unwrap())
            .collect();
        if found.len() >= heads.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    found.sort_unstable();
    assert_eq!(found, [400, 431, 431]);
}
