// E-seals and e-licences over real mTLS: issue, query, verify (and verify again with code that
// is not ours), field checks, lifecycle, access rules, consents and show-codes.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certgate_tests::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// A gateway with the standard departments and a connection per department.
struct World {
    _schema: Option<cert_store::pg_store::SchemaGuard>,
    _pki: TestPki,
    gw: TestGateway,
    market: Conn,
    approval: Conn,
    app: Conn,
    ops: Conn,
}

/// The world on this module's backend; `None` when the backend is not available here.
async fn world() -> Option<World> {
    let (extra, schema) = storage("licences")?;
    let pki = TestPki::new();
    let ids = [
        pki.department("market", MARKET),
        pki.department("approval", APPROVAL),
        pki.department("app", APP),
        pki.department("ops", OPS),
    ];
    let gw = TestGateway::standard(&pki, &extra).await;
    let mut conns = Vec::new();
    for id in &ids {
        conns.push(
            Client::new(&pki.ca_pem(), Some(id), Proto::H2)
                .connect(gw.addr)
                .await
                .unwrap(),
        );
    }
    let ops = conns.pop().unwrap();
    let app = conns.pop().unwrap();
    let approval = conns.pop().unwrap();
    let market = conns.pop().unwrap();
    Some(World {
        _schema: schema,
        _pki: pki,
        gw,
        market,
        approval,
        app,
        ops,
    })
}

async fn verify(conn: &mut Conn, credential: &str) -> Value {
    let reply = conn
        .json(
            Method::POST,
            "/v1/licences/verify",
            &[],
            &json!({"credential": credential}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()
}

/// The issuer-signed JWT of an SD-JWT and its parts.
fn jwt_parts(credential: &str) -> (Value, String, Vec<u8>) {
    let jwt = credential.split('~').next().unwrap();
    let mut parts = jwt.split('.');
    let (h, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    (
        header,
        format!("{h}.{p}"),
        URL_SAFE_NO_PAD.decode(s).unwrap(),
    )
}

fn leaf_certificate(header: &Value) -> openssl::x509::X509 {
    let der = STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
    openssl::x509::X509::from_der(&der).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_licence_round_trip_verifies_here_with_jsonwebtoken_and_the_openssl_command() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let issued = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    let id = issued["id"].as_str().unwrap();
    assert!(
        id.starts_with(&format!("1.2.156.3005.2.{BUSINESS}.{MARKET}.")),
        "{id}"
    );

    // The approval bureau queries it for a matter and sees only what its rule allows.
    let reply = w
        .approval
        .get_with(&format!("/v1/licences/{id}"), &[("x-purpose", "M-BIZ-001")])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let view = reply.json();
    let disclosed: Vec<&str> = view["disclosed"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(disclosed, ["holder_id", "legal_representative", "name"]);
    let credential = view["credential"].as_str().unwrap();
    let report = verify(&mut w.approval, credential).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["disclosed"]["legal_representative"], "雷军");
    assert!(report["disclosed"].get("registered_capital").is_none());

    // A second implementation: jsonwebtoken checks the ES256 signature.
    let (header, signing_input, signature) = jwt_parts(credential);
    assert_eq!(
        (header["alg"].as_str(), header["typ"].as_str()),
        (Some("ES256"), Some("dc+sd-jwt"))
    );
    let pem = leaf_certificate(&header)
        .public_key()
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(&pem).unwrap();
    let ok = jsonwebtoken::crypto::verify(
        &URL_SAFE_NO_PAD.encode(&signature),
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    assert!(ok, "jsonwebtoken rejects the ES256 signature");
    let mut tampered = signature.clone();
    tampered[10] ^= 1;
    let ok = jsonwebtoken::crypto::verify(
        &URL_SAFE_NO_PAD.encode(&tampered),
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    assert!(!ok, "a tampered signature must not verify");

    // A third, not sharing aws-lc with the gateway's signing: the openssl command.
    let dir = tempfile::tempdir().unwrap();
    let sha256 = ["-digest", "sha256"];
    let out = openssl_pkeyutl_verify(dir.path(), &pem, &signature, signing_input.as_bytes(), &sha256);
    assert!(
        out.status.success(),
        "openssl rejects the ES256 signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut other = signing_input.into_bytes();
    other[0] ^= 1;
    let out = openssl_pkeyutl_verify(dir.path(), &pem, &signature, &other, &sha256);
    assert!(!out.status.success(), "openssl accepts a changed message");
}

/// `openssl pkeyutl -verify` of a raw r ‖ s signature over `message` by the key in
/// `public_pem`, with `options` (the digest, an SM2 id), run in `dir`.
fn openssl_pkeyutl_verify(
    dir: &std::path::Path,
    public_pem: &[u8],
    signature: &[u8],
    message: &[u8],
    options: &[&str],
) -> std::process::Output {
    std::fs::write(dir.join("pub.pem"), public_pem).unwrap();
    let der = openssl::ecdsa::EcdsaSig::from_private_components(
        openssl::bn::BigNum::from_slice(&signature[..32]).unwrap(),
        openssl::bn::BigNum::from_slice(&signature[32..]).unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap();
    std::fs::write(dir.join("sig.der"), der).unwrap();
    std::fs::write(dir.join("msg"), message).unwrap();
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"])
        .args(["-in", "msg", "-sigfile", "sig.der"])
        .args(options)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm2_licence_round_trip_verifies_here_and_with_the_openssl_command() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "SM2SM3").await;
    let issued = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    let credential = issued["credential"].as_str().unwrap();
    let report = verify(&mut w.approval, credential).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["disclosed"].as_object().unwrap().len(), 7);

    let (header, signing_input, signature) = jwt_parts(credential);
    assert_eq!(header["alg"], "SM2SM3");
    assert_eq!(signature.len(), 64, "SM2SM3 carries raw r||s");
    let dir = tempfile::tempdir().unwrap();
    let cert = leaf_certificate(&header);
    let pem = cert.public_key().unwrap().public_key_to_pem().unwrap();
    let sm3 = ["-digest", "sm3", "-pkeyopt", "distid:1234567812345678"];
    let out = openssl_pkeyutl_verify(dir.path(), &pem, &signature, signing_input.as_bytes(), &sm3);
    assert!(
        out.status.success(),
        "openssl rejects the SM2 signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"));
    let mut other = signing_input.into_bytes();
    other[0] ^= 1;
    let out = openssl_pkeyutl_verify(dir.path(), &pem, &signature, &other, &sm3);
    assert!(!out.status.success(), "openssl accepts a changed message");

    // The seal certificate chains to the seal CA, checked by the openssl command too.
    let ca = w.approval.get("/v1/seal-ca.pem").await.unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.body).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), cert.to_pem().unwrap()).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_changes_what_verification_and_the_status_list_say() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "SM2SM3").await;
    let issued = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    let id = issued["id"].as_str().unwrap().to_owned();
    let credential = issued["credential"].as_str().unwrap().to_owned();
    let act = |action: &str| format!("/v1/licences/{id}/{action}");

    let reply = w
        .approval
        .json(Method::POST, &act("revoke"), &[], &json!({"reason": "x"}))
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-006"),
        "a consumer may not revoke"
    );
    let reply = w
        .market
        .json(Method::POST, &act("revoke"), &[], &json!({"reason": " "}))
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::BAD_REQUEST, "CG-LIC-001"),
        "a reason is required"
    );

    // Verified and read (so held in memory, its view's body too) before the change: the
    // next answer sees the change.
    assert_eq!(verify(&mut w.approval, &credential).await["valid"], true);
    async fn read_licence(w: &mut World, id: &str) -> serde_json::Value {
        let read = w
            .market
            .get_with(&format!("/v1/licences/{id}"), &[("x-purpose", "M-BIZ-001")])
            .await
            .unwrap();
        assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
        assert_eq!(read.headers["content-type"], "application/json");
        read.json()
    }
    for _ in 0..2 {
        let read = read_licence(&mut w, &id).await;
        assert_eq!(
            (read["status"].as_str(), read["status_reason"].as_str()),
            (Some("valid"), None)
        );
    }
    let reply = w
        .market
        .json(
            Method::POST,
            &act("suspend"),
            &[],
            &json!({"reason": "检查期间暂停"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["status"], "suspended");
    let read = w
        .market
        .get_with(&format!("/v1/licences/{id}"), &[("x-purpose", "M-BIZ-001")])
        .await
        .unwrap();
    assert_eq!(read.json()["status"], "suspended", "{:?}", read.body);
    assert_eq!(read.json()["status_reason"], "检查期间暂停");
    let report = verify(&mut w.approval, &credential).await;
    assert_eq!(
        (report["valid"].as_bool(), report["status"].as_str()),
        (Some(false), Some("suspended"))
    );
    let list = w.approval.get("/v1/status-lists/0").await.unwrap();
    assert_eq!(list.headers["content-type"], "application/statuslist+jwt");

    w.market
        .json(
            Method::POST,
            &act("resume"),
            &[],
            &json!({"reason": "检查通过"}),
        )
        .await
        .unwrap();
    assert_eq!(verify(&mut w.approval, &credential).await["valid"], true);
    assert_eq!(read_licence(&mut w, &id).await["status"], "valid");

    let renewed = w
        .market
        .json(Method::POST, &act("renew"), &[], &json!({}))
        .await
        .unwrap();
    assert_eq!(renewed.status, StatusCode::CREATED, "{:?}", renewed.body);
    let renewed = renewed.json();
    assert!(
        renewed["id"].as_str().unwrap().contains(".002."),
        "{}",
        renewed["id"]
    );
    assert_eq!(renewed["replaces"], id.as_str());
    assert_eq!(
        verify(&mut w.approval, renewed["credential"].as_str().unwrap()).await["valid"],
        true
    );
    let old = verify(&mut w.approval, &credential).await;
    assert_eq!(
        (old["valid"].as_bool(), old["status"].as_str()),
        (Some(false), Some("revoked"))
    );
    let read = read_licence(&mut w, &id).await;
    assert_eq!(
        (read["status"].as_str(), read["replaced_by"].as_str()),
        (Some("revoked"), renewed["id"].as_str())
    );
    let reply = w
        .market
        .json(Method::POST, &act("resume"), &[], &json!({"reason": "x"}))
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::CONFLICT, "CG-LIC-004")
    );

    // Revoking the seal makes the renewed licence fail verification as "seal revoked".
    let reply = w
        .market
        .json(
            Method::POST,
            &format!("/v1/seals/{seal}/revoke"),
            &[],
            &json!({"reason": "印章遗失"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let report = verify(&mut w.approval, renewed["credential"].as_str().unwrap()).await;
    assert_eq!(report["valid"], false);
    let failed = report["checks"].as_array().unwrap().last().unwrap();
    assert!(
        failed["detail"].as_str().unwrap().contains("seal revoked"),
        "{report}"
    );
    let reply = w
        .market
        .json(
            Method::POST,
            "/v1/licences",
            &[],
            &business_licence(&seal, XIAOMI),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-001", "a revoked seal cannot issue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_purposes_and_field_checks() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let issued = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    let id = issued["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/licences/{id}");

    // No purpose, no data.
    let reply = w.approval.get(&path).await.unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::BAD_REQUEST, "CG-REQ-006")
    );
    let reply = w
        .approval
        .get_with(&path, &[("x-purpose", "two words")])
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-REQ-006");
    // ?fields= narrows; a field outside the type is refused.
    let reply = w
        .approval
        .get_with(&format!("{path}?fields=name"), &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(
        reply.json()["disclosed"],
        json!({"name": "小米科技有限责任公司"})
    );
    let reply = w
        .approval
        .get_with(&format!("{path}?fields=colour"), &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-001");
    // The issuer sees every field; a department without a rule sees nothing.
    let reply = w
        .market
        .get_with(
            &path,
            &[("x-purpose", "matter=M-1; reason=%E5%A4%8D%E6%A0%B8")],
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["disclosed"].as_object().unwrap().len(), 7);
    let reply = w
        .ops
        .get_with(&path, &[("x-purpose", "M-1")])
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-007")
    );

    // Field check: match / no-match, nothing else.
    let check = format!("{path}/check");
    let reply = w
        .approval
        .json(
            Method::POST,
            &check,
            &[("x-purpose", "M-1")],
            &json!({"fields": {"legal_representative": "雷军", "name": "别的公司"}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(
        body["results"],
        json!({"legal_representative": "match", "name": "no-match"})
    );
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["licence_id", "licence_valid", "results"]
    );
    let reply = w
        .approval
        .json(
            Method::POST,
            &check,
            &[("x-purpose", "M-1")],
            &json!({"fields": {"registered_capital": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-007"),
        "a field outside the rule"
    );

    // Issuing a type the department may not issue.
    let mut body = business_licence(&seal, XIAOMI);
    body["licence_type"] = json!(BUSINESS);
    let reply = w
        .approval
        .json(Method::POST, "/v1/licences", &[], &body)
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-AUTH-006", "a consumer cannot issue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_issue_requests_get_400_naming_the_field() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "SM2SM3").await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let base = business_licence(&seal, XIAOMI);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    cases.push((
        with(&|b| b["holder_id"] = json!("91110108551385082A")),
        "holder_id",
    ));
    cases.push((
        with(&|b| b["holder_id"] = json!("11010519491231002Y")),
        "holder_id",
    ));
    cases.push((
        with(&|b| b["fields"]["colour"] = json!("red")),
        "fields.colour",
    ));
    cases.push((
        with(&|b| {
            b["fields"]
                .as_object_mut()
                .unwrap()
                .remove("legal_representative");
        }),
        "fields.legal_representative",
    ));
    cases.push((
        with(&|b| b["fields"]["registered_capital"] = json!("lots")),
        "fields.registered_capital",
    ));
    cases.push((
        with(&|b| b["fields"]["established"] = json!("2010-02-30")),
        "fields.established",
    ));
    cases.push((
        with(&|b| b["licence_type"] = json!("11100000MB0000100D999")),
        "licence_type",
    ));
    cases.push((with(&|b| b["seal_id"] = json!("seal-nope")), "seal_id"));
    cases.push((with(&|b| b["serial"] = json!("lower-case")), "serial"));
    cases.push((with(&|b| b["valid_from"] = json!(i64::MAX)), "valid_from"));
    cases.push((with(&|b| b["valid_until"] = json!(-5)), "valid_until"));
    for (body, field) in cases {
        let reply = w
            .market
            .json(Method::POST, "/v1/licences", &[], &body)
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{field}: {:?}",
            reply.body
        );
        assert_eq!(reply.code(), "CG-LIC-001");
        assert!(
            reply.json()["message"].as_str().unwrap().starts_with(field),
            "{field}: {}",
            reply.json()["message"]
        );
    }
    // Malformed JSON, a missing member, an unknown member, the wrong content type.
    for (body, needle) in [
        ("{", "invalid JSON"),
        ("{\"licence_type\": 5}", "licence_type"),
        ("[]", "invalid JSON"),
    ] {
        let reply = w
            .market
            .send_with(
                Method::POST,
                "/v1/licences",
                &[("content-type", "application/json")],
                body.into(),
            )
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::BAD_REQUEST, "CG-REQ-007"),
            "{body}"
        );
        assert!(
            reply.json()["message"].as_str().unwrap().contains(needle),
            "{}",
            reply.json()["message"]
        );
    }
    let mut extra = base.clone();
    extra["admin"] = json!(true);
    let reply = w
        .market
        .json(Method::POST, "/v1/licences", &[], &extra)
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-REQ-007");
    let reply = w
        .market
        .send_with(
            Method::POST,
            "/v1/licences",
            &[("content-type", "text/plain")],
            "{}".into(),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-REQ-007");
    // A seal of another department cannot be used, and unknown seal algorithms are refused.
    let reply = w
        .market
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "公章", "name": "x", "alg": "HS256"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-REQ-007");
    let reply = w.market.json(Method::POST, "/v1/seals", &[], &json!({"seal_type": "公章", "name": "x", "alg": "ES256", "picture_png_base64": "aGVsbG8="})).await.unwrap();
    assert_eq!(reply.code(), "CG-LIC-001", "a picture that is not a PNG");
    let reply = w
        .approval
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "公章", "name": "x", "alg": "ES256"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-AUTH-006");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_gates_queries_by_holder_and_show_codes_work_once() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let food = json!({
        "licence_type": FOOD, "holder_id": CITIZEN, "holder_name": "张三", "seal_id": seal,
        "fields": {"operator": "张三", "premises": "北京市朝阳区某街道1号"}
    });
    let permit = issue_licence(&mut w.market, &food).await;
    let query = format!("/v1/licences?holder={CITIZEN}&type={FOOD}");
    let purpose = ("x-purpose", "M-FOOD-001");

    let reply = w.approval.get_with(&query, &[purpose]).await.unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-LIC-002"),
        "no consent"
    );
    // A department without a rule for the type learns nothing, not even "no licences".
    for holder in [CITIZEN, "110105194912310029"] {
        let q = format!("/v1/licences?holder={holder}&type={BUSINESS}");
        let reply = w.ops.get_with(&q, &[purpose]).await.unwrap();
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::FORBIDDEN, "CG-AUTH-007"),
            "{holder}"
        );
    }
    // The approval bureau's food rule is for matter M-FOOD-001 only.
    let reply = w
        .approval
        .get_with(&query, &[("x-purpose", "M-OTHER")])
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-AUTH-007");

    let consent = |dept: &str, ttl: i64| json!({"holder_id": CITIZEN, "department": dept, "licence_types": [FOOD], "purpose": "M-FOOD-001", "ttl_seconds": ttl});
    let reply = w
        .approval
        .json(Method::POST, "/v1/consents", &[("x-holder", CITIZEN)], &consent(APPROVAL, 600))
        .await
        .unwrap();
    assert_eq!(
        reply.code(),
        "CG-AUTH-006",
        "only a holder app creates consents"
    );
    let reply = w
        .app
        .json(
            Method::POST,
            "/v1/consents",
            &[("x-holder", CITIZEN)],
            &consent(APPROVAL, 86_401),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-001", "at most 24 hours");
    let mine = w
        .app
        .json(Method::POST, "/v1/consents", &[("x-holder", CITIZEN)], &consent(APPROVAL, 600))
        .await
        .unwrap()
        .json();
    let theirs = w
        .app
        .json(Method::POST, "/v1/consents", &[("x-holder", CITIZEN)], &consent(MARKET, 600))
        .await
        .unwrap()
        .json();

    let token = mine["token"].as_str().unwrap();
    let reply = w
        .approval
        .get_with(&query, &[purpose, ("x-consent", token)])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let page = reply.json();
    let list = &page["licences"];
    assert_eq!(list.as_array().unwrap().len(), 1, "{page}");
    assert_eq!(list[0]["id"], permit["id"]);
    assert!(page["next_cursor"].is_null(), "{page}");

    for bad in [
        theirs["token"].as_str().unwrap(),
        "not-a-token",
        &format!("{token}x"),
    ] {
        let reply = w
            .approval
            .get_with(&query, &[purpose, ("x-consent", bad)])
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (StatusCode::FORBIDDEN, "CG-LIC-002"),
            "{bad}"
        );
    }
    // The consent is for matter M-FOOD-001: another stated matter cannot use it.
    let reply = w
        .approval
        .get_with(&query, &[("x-purpose", "M-OTHER"), ("x-consent", token)])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // Consent revoked by the holder's app: refused from then on.
    let reply = w
        .app
        .send(
            Method::POST,
            &format!("/v1/consents/{}/revoke", mine["id"].as_str().unwrap()),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = w
        .approval
        .get_with(&query, &[purpose, ("x-consent", token)])
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-002");

    // 一码亮证: a show-code redeems once.
    let code = w
        .app
        .json(
            Method::POST,
            "/v1/show-codes",
            &[("x-holder", CITIZEN)],
            &json!({"licence_id": permit["id"]}),
        )
        .await
        .unwrap();
    assert_eq!(code.status, StatusCode::CREATED, "{:?}", code.body);
    let code = code.json();
    assert!(
        code["expires_at"].as_i64().unwrap() <= permit["issued_at"].as_i64().unwrap() + 300 + 5
    );
    let redeem = json!({"code": code["code"]});
    let food_purpose = [("x-purpose", "M-FOOD-001")];
    // Without a purpose, or by the app itself, the code is refused and stays unused.
    let reply = w
        .approval
        .json(Method::POST, "/v1/show-codes/redeem", &[], &redeem)
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-REQ-006");
    let reply = w
        .app
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &food_purpose,
            &redeem,
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-AUTH-006");
    let first = w
        .approval
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &food_purpose,
            &redeem,
        )
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.json()["id"], permit["id"]);
    let second = w
        .approval
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &food_purpose,
            &redeem,
        )
        .await
        .unwrap();
    assert_eq!(
        (second.status, second.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-LIC-002"),
        "a show-code is single use"
    );
    let reply = w
        .approval
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &food_purpose,
            &json!({"code": "guess"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-002");

    // A reader without a rule for the licence's type gets nothing from a code either.
    let code = w
        .app
        .json(
            Method::POST,
            "/v1/show-codes",
            &[("x-holder", CITIZEN)],
            &json!({"licence_id": permit["id"]}),
        )
        .await
        .unwrap()
        .json();
    let reply = w
        .approval
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &[("x-purpose", "M-OTHER")],
            &json!({"code": code["code"]}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-AUTH-007");
    // The refusal did not use the code up: the department it was meant for redeems it.
    let reply = w
        .approval
        .json(
            Method::POST,
            "/v1/show-codes/redeem",
            &food_purpose,
            &json!({"code": code["code"]}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_are_rejected_with_a_reason_and_keys_are_published() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let issued = issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await;
    let credential = issued["credential"].as_str().unwrap().to_owned();
    let jwt = credential.split('~').next().unwrap().to_owned();
    let (header, _, _) = jwt_parts(&credential);

    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"dc+sd-jwt"}"#);
    let payload = jwt.split('.').nth(1).unwrap();
    let hs256 = {
        let pem = leaf_certificate(&header)
            .public_key()
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("dc+sd-jwt".into());
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&pem)).unwrap()
    };
    let mut flipped = credential.clone().into_bytes();
    let at = jwt.len() - 5;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(String, &str)> = vec![
        (format!("{none_header}.{payload}.~"), "none"),
        (format!("{hs256}~"), "HS256"),
        (String::from_utf8(flipped).unwrap(), "signature"),
        (credential.replace('~', "~~"), ""),
        (format!("{}~", "A".repeat(70_000)), "at most 65536 bytes"),
        (credential.replacen('.', "+.", 1), "base64"),
        ("".into(), ""),
    ];
    for (presented, needle) in cases {
        let report = verify(&mut w.approval, &presented).await;
        assert_eq!(report["valid"], false, "{needle}: {report}");
        let detail = report["checks"].as_array().unwrap().last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert!(
            detail.contains(&needle.to_lowercase()),
            "expected {needle:?} in {detail}"
        );
    }

    let jwks = w
        .approval
        .get("/.well-known/jwks.json")
        .await
        .unwrap()
        .json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == seal.as_str())
    );
    let pem = w
        .approval
        .get(&format!("/v1/seals/{seal}/certificate"))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&pem.body).starts_with("-----BEGIN CERTIFICATE-----"));
    let types = w.approval.get("/v1/licence-types").await.unwrap().json();
    assert_eq!(types.as_array().unwrap().len(), 2);
    drop(w.gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_may_issue_only_its_types_with_its_own_seals() {
    let Some((extra, _schema)) = storage("issuer-types") else {
        return;
    };
    let pki = TestPki::new();
    let market = pki.department("market", MARKET);
    let tax = pki.department("tax", STRANGER);
    let departments = standard_departments() + &dept(STRANGER, "税务局", &["issuer"], true);
    let gw = TestGateway::start(&write_config(&pki, &extra, &departments)).await;
    let mut market = Client::new(&pki.ca_pem(), Some(&market), Proto::H1)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut tax = Client::new(&pki.ca_pem(), Some(&tax), Proto::H1)
        .connect(gw.addr)
        .await
        .unwrap();
    let market_seal = create_seal(&mut market, "ES256").await;
    let tax_seal = create_seal(&mut tax, "SM2SM3").await;

    // The tax bureau holds the issuer role, but the business licence is not its type.
    let reply = tax
        .json(
            Method::POST,
            "/v1/licences",
            &[],
            &business_licence(&tax_seal, XIAOMI),
        )
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-LIC-002"),
        "{:?}",
        reply.body
    );
    // The market regulator may issue it, but not with another department's seal.
    let reply = market
        .json(
            Method::POST,
            "/v1/licences",
            &[],
            &business_licence(&tax_seal, XIAOMI),
        )
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-LIC-002")
    );
    // Nor may anyone but the owner revoke a seal, or anyone but the issuer revoke a licence.
    let issued = issue_licence(&mut market, &business_licence(&market_seal, XIAOMI)).await;
    let reply = tax
        .json(
            Method::POST,
            &format!("/v1/seals/{market_seal}/revoke"),
            &[],
            &json!({"reason": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-002");
    let reply = tax
        .json(
            Method::POST,
            &format!("/v1/licences/{}/revoke", issued["id"].as_str().unwrap()),
            &[],
            &json!({"reason": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.code(), "CG-LIC-002");
    assert_eq!(
        verify(&mut tax, issued["credential"].as_str().unwrap()).await["valid"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_and_query_strings_get_errors_in_the_error_model() {
    let Some(mut w) = world().await else { return };
    let purpose = [("x-purpose", "M-1")];
    let cases: &[(&str, StatusCode, &str)] = &[
        (
            "/v1/licences/not-an-id",
            StatusCode::BAD_REQUEST,
            "CG-LIC-001",
        ),
        (
            "/v1/licences/1.2.156.3005.2.11100000MB0000100D001.11110105MB0000002F.000000000001.001.0",
            StatusCode::BAD_REQUEST,
            "CG-LIC-001",
        ),
        (
            "/v1/licences?holder=91110108551385082Q",
            StatusCode::BAD_REQUEST,
            "CG-REQ-007",
        ),
        (
            "/v1/licences?holder=91110108551385082Q&type=11100000MB0000100D001&admin=1",
            StatusCode::BAD_REQUEST,
            "CG-REQ-007",
        ),
        (
            "/v1/licences?holder=%FF%FE&type=11100000MB0000100D001",
            StatusCode::BAD_REQUEST,
            "CG-LIC-001",
        ),
        (
            "/v1/licences?holder=not-a-holder&type=11100000MB0000100D001",
            StatusCode::BAD_REQUEST,
            "CG-LIC-001",
        ),
        (
            "/v1/status-lists/abc",
            StatusCode::BAD_REQUEST,
            "CG-LIC-001",
        ),
        ("/v1/status-lists/-1", StatusCode::BAD_REQUEST, "CG-LIC-001"),
        ("/v1/status-lists/99", StatusCode::NOT_FOUND, "CG-LIC-003"),
        ("/v1/seals/%00%2F..", StatusCode::NOT_FOUND, "CG-LIC-003"),
    ];
    for (path, status, code) in cases {
        let reply = w.approval.get_with(path, &purpose).await.unwrap();
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (*status, *code),
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let long = format!("/v1/licences/x?fields={}", "a,".repeat(5000));
    let reply = w.approval.get_with(&long, &purpose).await.unwrap();
    assert!(reply.status.is_client_error(), "{}", reply.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_sealed_and_verified_over_mtls_in_the_national_format() {
    let Some(mut w) = world().await else { return };
    let pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".to_vec();
    let pdf_b64 = STANDARD.encode(&pdf);
    for alg in ["SM2SM3", "ES256"] {
        let seal = create_seal(&mut w.market, alg).await;
        let r = w
            .market
            .json(
                Method::POST,
                &format!("/v1/seals/{seal}/sign"),
                &[],
                &json!({ "document_base64": pdf_b64, "name": "contract.pdf" }),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let ses = r.json()["ses_signature_base64"].as_str().unwrap().to_owned();
        let jws = r.json()["jws_detached"].as_str().unwrap().to_owned();
        // The JOSE form verifies too; with a changed document it does not.
        for (doc, valid) in [(pdf_b64.clone(), true), (STANDARD.encode(b"other"), false)] {
            let v = w
                .approval
                .json(
                    Method::POST,
                    "/v1/seals/verify",
                    &[],
                    &json!({ "document_base64": doc, "jws": jws }),
                )
                .await
                .unwrap()
                .json();
            assert_eq!(v["valid"], valid, "{alg}: {v}");
        }
        // Any department verifies it, check by check.
        let verify = |doc: &str, ses: &str| json!({ "document_base64": doc, "ses_signature_base64": ses });
        let v = w
            .approval
            .json(Method::POST, "/v1/seals/verify", &[], &verify(&pdf_b64, &ses))
            .await
            .unwrap()
            .json();
        assert_eq!(v["valid"], true, "{alg}: {v}");
        assert_eq!(v["seal_id"], seal.as_str());
        let names: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        for want in [
            "document_digest",
            "signature",
            "signer_in_seal",
            "seal_maker_signature",
            "certificate_chain",
            "seal_validity",
            "seal_status",
        ] {
            assert!(names.contains(&want), "{want} missing: {v}");
        }
        // One changed byte of the document: the digest check names it.
        let mut changed = pdf.clone();
        changed[3] ^= 1;
        let v = w
            .approval
            .json(
                Method::POST,
                "/v1/seals/verify",
                &[],
                &verify(&STANDARD.encode(&changed), &ses),
            )
            .await
            .unwrap()
            .json();
        assert_eq!(v["valid"], false);
        let failed: Vec<&Value> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .collect();
        assert_eq!(failed.len(), 1, "{v}");
        assert_eq!(failed[0]["check"], "document_digest");
        // Truncated DER: a verdict on the format, no error.
        let der = STANDARD.decode(&ses).unwrap();
        let v = w
            .approval
            .json(
                Method::POST,
                "/v1/seals/verify",
                &[],
                &verify(&pdf_b64, &STANDARD.encode(&der[..der.len() / 2])),
            )
            .await
            .unwrap()
            .json();
        assert_eq!((v["valid"].as_bool(), v["checks"][0]["check"].as_str()), (Some(false), Some("format")));
        // Another department cannot seal with this seal.
        let r = w
            .approval
            .json(
                Method::POST,
                &format!("/v1/seals/{seal}/sign"),
                &[],
                &json!({ "document_base64": pdf_b64, "name": "contract.pdf" }),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    }
    // Bad input is named.
    let seal = create_seal(&mut w.market, "SM2SM3").await;
    for (body, field) in [
        (json!({ "document_base64": "%%%", "name": "a.pdf" }), "document_base64"),
        (json!({ "digest_hex": "00", "name": "a.pdf" }), "digest_alg"),
        (json!({ "digest_hex": "zz", "digest_alg": "sm3", "name": "a.pdf" }), "digest_hex"),
        (json!({ "digest_hex": "00", "digest_alg": "sm3", "name": "a.pdf" }), "digest"),
        (json!({ "digest_hex": "00".repeat(32), "digest_alg": "sha256", "name": "a.pdf" }), "digest_alg"),
        (json!({ "name": "a.pdf" }), "document_base64"),
        (json!({ "document_base64": pdf_b64, "name": "合同.pdf" }), "name"),
    ] {
        let r = w
            .market
            .json(Method::POST, &format!("/v1/seals/{seal}/sign"), &[], &body)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert!(
            r.json()["message"].as_str().unwrap().starts_with(field),
            "{body}: {:?}",
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enterprise_seals_with_its_own_seals_only_and_every_use_is_logged() {
    let Some(mut w) = world().await else { return };
    // The enterprise is registered (its business licence), then the market regulator makes
    // a contract seal for it, named after it (云刻章).
    let market_seal = create_seal(&mut w.market, "SM2SM3").await;
    issue_licence(&mut w.market, &business_licence(&market_seal, XIAOMI)).await;
    let r = w
        .market
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "合同专用章", "name": "小米科技有限责任公司合同专用章", "alg": "SM2SM3", "holder": XIAOMI, "valid_days": 1095}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["owner"], XIAOMI);
    let seal = r.json()["id"].as_str().unwrap().to_owned();
    let (created, ends) = (
        r.json()["created_at"].as_i64().unwrap(),
        r.json()["not_after"].as_i64().unwrap(),
    );
    assert_eq!(ends - created, 1095 * 86_400);
    let r = w
        .market
        .json(
            Method::POST,
            "/v1/seals",
            &[],
            &json!({"seal_type": "公章", "name": "x", "alg": "SM2SM3", "holder": XIAOMI, "valid_days": 0}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.json()["message"].as_str().unwrap().starts_with("valid_days"));
    let body = json!({ "document_base64": STANDARD.encode(b"%PDF-1.7 bid"), "name": "bid.pdf" });
    let sign = format!("/v1/seals/{seal}/sign");
    // The holder app, acting for the enterprise, signs with it.
    let r = w
        .app
        .json(Method::POST, &sign, &[("x-holder", XIAOMI)], &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let ses = r.json()["ses_signature_base64"].as_str().unwrap().to_owned();
    // Nobody else: the app acting for another enterprise, the department that made the seal,
    // a department that names the enterprise without being the holder app.
    for (conn, headers) in [
        (&mut w.app, vec![("x-holder", "9144030071526726XG")]),
        (&mut w.market, vec![]),
        (&mut w.approval, vec![("x-holder", XIAOMI)]),
    ] {
        let r = conn.json(Method::POST, &sign, &headers, &body).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {:?}", r.body);
    }
    let r = w
        .app
        .json(Method::POST, &sign, &[("x-holder", "not-a-uscc")], &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    // Another department verifies it.
    let v = w
        .approval
        .json(
            Method::POST,
            "/v1/seals/verify",
            &[],
            &json!({ "document_base64": STANDARD.encode(b"%PDF-1.7 bid"), "ses_signature_base64": ses }),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["seal_name"], "小米科技有限责任公司合同专用章");

    // Every signing and verification is in the access log, under the seal.
    let mut auditor = connect_departments(&w._pki, w.gw.addr, &[("audit", AUDIT)])
        .await
        .remove(0);
    let resource = format!("seal:{seal}");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..50 {
        let page = auditor
            .get(&format!("/v1/audit/entries?resource={resource}&limit=100"))
            .await
            .unwrap()
            .json();
        seen.clear();
        for e in page["entries"].as_array().unwrap() {
            let key = (
                e["route"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            );
            *seen.entry(key).or_insert(0) += 1;
        }
        if seen.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sign_route = "/v1/seals/{id}/sign".to_owned();
    assert_eq!(seen.get(&(sign_route.clone(), 200)), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&(sign_route, 403)), Some(&3), "{seen:?}");
    assert_eq!(seen.get(&("/v1/seals/verify".to_owned(), 200)), Some(&1), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_keeps_the_trust_list_and_foreign_seals_verify_naming_their_authority() {
    use cert_store::crypto::SealKey;
    use cert_store::jws::JwsAlg;
    use cert_store::ses::{Seal, SealInfo, SesAlg, SesSignature, ToSign};
    let Some(mut w) = world().await else { return };
    let now = storage::clock::now_utc().replace_nanosecond(0).unwrap();
    let hour = time::Duration::hours(1);
    // A seal made by another province's seal system.
    let foreign = cert_store::seal_ca::SealCa::create("广东省电子印章系统", now - hour * 24, 3650).unwrap();
    let signer = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
    let cert = foreign
        .issue_seal_certificate(
            signer.public_key(),
            &"9144030071526726XG".parse().unwrap(),
            "深圳某科技有限公司合同专用章",
            now - hour,
            now + hour * 24 * 365,
        )
        .unwrap()
        .to_der()
        .unwrap();
    let info = SealInfo {
        vid: "gd-seal".into(),
        es_id: "44030000000001".into(),
        seal_type: 1,
        name: "深圳某科技有限公司合同专用章".into(),
        certs: vec![cert.clone()],
        created: now - hour,
        valid_start: now - hour,
        valid_end: now + hour * 24 * 365,
        picture_type: "png".into(),
        picture: vec![1, 2, 3],
        width: 40,
        height: 40,
    };
    let seal = Seal::make(info, foreign.certificate().to_der().unwrap(), foreign.key()).unwrap();
    let doc = b"a cross-region procurement contract".to_vec();
    let ses = SesSignature::sign(
        ToSign {
            seal,
            time: now,
            data_hash: SesAlg::Sm2Sm3.digest(&doc).unwrap(),
            property: "contract.pdf".into(),
        },
        cert,
        &signer,
    )
    .unwrap()
    .to_der();
    let verify = json!({ "document_base64": STANDARD.encode(&doc), "ses_signature_base64": STANDARD.encode(&ses) });
    let v = w.approval.json(Method::POST, "/v1/seals/verify", &[], &verify).await.unwrap().json();
    assert_eq!(v["valid"], false, "not trusted yet: {v}");

    let add = json!({ "name": "广东省电子印章系统", "region": "440000", "certificate_pem": foreign.certificate_pem() });
    let r = w.approval.json(Method::POST, "/v1/admin/seal-cas", &[], &add).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only an admin");
    let r = w
        .ops
        .json(Method::POST, "/v1/admin/seal-cas", &[], &json!({ "name": "x", "region": "440000", "certificate_pem": "nope" }))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].as_str().unwrap().starts_with("certificate_pem"), "{:?}", r.body);
    let r = w.ops.json(Method::POST, "/v1/admin/seal-cas", &[], &add).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let listed = w.approval.get("/v1/seal-cas").await.unwrap().json();
    assert_eq!(listed[0]["name"], "广东省电子印章系统");

    let v = w.approval.json(Method::POST, "/v1/seals/verify", &[], &verify).await.unwrap().json();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["authority"], "广东省电子印章系统 (440000)");

    // Removed from now on: the entry stays, marked; removing again is a conflict.
    let del = |id: String| format!("/v1/admin/seal-cas/{id}");
    let r = w.ops.send(Method::DELETE, &del(id.clone()), bytes::Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["removed_at"].is_i64());
    let r = w.ops.send(Method::DELETE, &del(id), bytes::Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = w.ops.send(Method::DELETE, &del("sealca-nope".into()), bytes::Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_licences_come_a_page_at_a_time_valid_first() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            issue_licence(&mut w.market, &business_licence(&seal, XIAOMI)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = w
        .market
        .json(
            Method::POST,
            &format!("/v1/licences/{}/revoke", ids[4]),
            &[],
            &json!({"reason": "吊销"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let purpose = [("x-purpose", "M-BIZ-001")];
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/licences?holder={XIAOMI}&type={BUSINESS}&limit=2&cursor={c}"),
            None => format!("/v1/licences?holder={XIAOMI}&type={BUSINESS}&limit=2"),
        };
        let page = w.approval.get_with(&path, &purpose).await.unwrap();
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        let page = page.json();
        let list = page["licences"].as_array().unwrap();
        assert!(list.len() <= 2);
        seen.extend(list.iter().map(|l| (l["id"].as_str().unwrap().to_owned(), l["status"].as_str().unwrap().to_owned())));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    assert!(seen[..4].iter().all(|(_, s)| s == "valid"), "{seen:?}");
    assert_eq!(seen[4], (ids[4].clone(), "revoked".to_owned()));
    for bad in ["limit=0", "limit=101", "cursor=nonsense", "cursor=0.1.x"] {
        let r = w
            .approval
            .get_with(
                &format!("/v1/licences?holder={XIAOMI}&type={BUSINESS}&{bad}"),
                &purpose,
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_business_licence_for_one_holder_is_refused_even_when_racing() {
    let Some((extra, _schema)) = storage("one-per-holder") else {
        return;
    };
    let pki = TestPki::new();
    let market = pki.department("market", MARKET);
    let config = write_config(&pki, &extra, &standard_departments());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("business_licence = true\n", "business_licence = true\none_per_holder = true\n", 1);
    std::fs::write(&config, text).unwrap();
    let gw = TestGateway::start(&config).await;
    let mut conn = Client::new(&pki.ca_pem(), Some(&market), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let seal = create_seal(&mut conn, "ES256").await;
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = conn.fork().unwrap();
        let body = business_licence(&seal, XIAOMI);
        racing.spawn(async move { c.json(Method::POST, "/v1/licences", &[], &body).await.unwrap() });
    }
    let mut issued = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = racing.join_next().await {
        let r = r.unwrap();
        match r.status {
            StatusCode::CREATED => issued.push(r.json()["id"].as_str().unwrap().to_owned()),
            StatusCode::CONFLICT => refused.push(r.json()),
            other => panic!("{other}: {:?}", r.body),
        }
    }
    assert_eq!(issued.len(), 1, "{refused:?}");
    assert_eq!(refused.len(), 7);
    for r in &refused {
        assert_eq!(r["code"], "CG-LIC-005");
        assert!(r["message"].as_str().unwrap().contains(&issued[0]), "{r}");
    }
    // Another holder is not held back, and renewal replaces the one held.
    issue_licence(&mut conn, &business_licence(&seal, "914403001922038216")).await;
    let renewed = conn
        .json(Method::POST, &format!("/v1/licences/{}/renew", issued[0]), &[], &json!({}))
        .await
        .unwrap();
    assert_eq!(renewed.status, StatusCode::CREATED, "{:?}", renewed.body);
}

/// An identifier of the market regulator's licences of `licence_type` that no licence has.
fn unused_licence_id(licence_type: &str) -> String {
    cert_store::licence_id::LicenceId::new(
        &licence_type.parse().unwrap(),
        &MARKET.parse().unwrap(),
        &"Z".repeat(16),
        1,
    )
    .unwrap()
    .to_string()
}

/// The token of `holder`'s consent, made by the city app, for the approval bureau to read its
/// food permits for matter M-FOOD-001.
async fn food_consent(app: &mut Conn, holder: &str) -> String {
    let r = app
        .json(
            Method::POST,
            "/v1/consents",
            &[("x-holder", holder)],
            &json!({"holder_id": holder, "department": APPROVAL, "licence_types": [FOOD], "purpose": "M-FOOD-001", "ttl_seconds": 600}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_holds_on_every_path_that_discloses_a_licence() {
    let Some(mut w) = world().await else { return };
    let seal = create_seal(&mut w.market, "ES256").await;
    let permit = issue_licence(
        &mut w.market,
        &json!({"licence_type": FOOD, "holder_id": CITIZEN, "holder_name": "张三", "seal_id": seal,
            "fields": {"operator": "张三", "premises": "北京市朝阳区"}}),
    )
    .await;
    let id = permit["id"].as_str().unwrap();
    let purpose = ("x-purpose", "M-FOOD-001");
    // By identifier and by field check: refused without the holder's consent.
    let r = w.approval.get_with(&format!("/v1/licences/{id}"), &[purpose]).await.unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", r.body);
    let r = w
        .approval
        .json(Method::POST, &format!("/v1/licences/{id}/check"), &[purpose], &json!({"fields": {"premises": "北京市朝阳区"}}))
        .await
        .unwrap();
    assert_eq!(r.code(), "CG-LIC-002");
    // With it: the fields the rule allows.
    let token = food_consent(&mut w.app, CITIZEN).await;
    let token = token.as_str();
    let r = w
        .approval
        .get_with(&format!("/v1/licences/{id}"), &[purpose, ("x-consent", token)])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["disclosed"]["premises"], "北京市朝阳区");
    assert!(r.json()["status_reason"].is_null());
    // The issuer needs none.
    let r = w.market.get_with(&format!("/v1/licences/{id}"), &[purpose]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // A department without a rule learns nothing, whether or not the licence exists.
    let missing = unused_licence_id(FOOD);
    let a = w.ops.get_with(&format!("/v1/licences/{id}"), &[purpose]).await.unwrap();
    let b = w.ops.get_with(&format!("/v1/licences/{missing}"), &[purpose]).await.unwrap();
    assert_eq!((a.status, a.code()), (b.status, b.code()));
    assert_eq!(a.json()["message"], b.json()["message"]);
    // Nor does one with a rule but without a consent that covers the licence: with no consent,
    // or with another holder's, a licence that exists and one that does not get one answer.
    let other = food_consent(&mut w.app, XIAOMI).await;
    let other = other.as_str();
    for headers in [vec![purpose], vec![purpose, ("x-consent", other)]] {
        let a = w.approval.get_with(&format!("/v1/licences/{id}"), &headers).await.unwrap();
        let b = w.approval.get_with(&format!("/v1/licences/{missing}"), &headers).await.unwrap();
        assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", a.body);
        assert_eq!((a.status, a.code(), a.json()["message"].clone()), (b.status, b.code(), b.json()["message"].clone()));
        let check = |licence: &str| format!("/v1/licences/{licence}/check");
        let field = json!({"fields": {"premises": "北京市朝阳区"}});
        let a = w.approval.json(Method::POST, &check(id), &headers, &field).await.unwrap();
        let b = w.approval.json(Method::POST, &check(&missing), &headers, &field).await.unwrap();
        assert_eq!(a.code(), "CG-LIC-002");
        assert_eq!((a.status, a.code(), a.json()["message"].clone()), (b.status, b.code(), b.json()["message"].clone()));
    }
    // Even with a consent of its own holder, an identifier not in use is refused as another
    // holder's licence would be.
    let r = w
        .approval
        .get_with(&format!("/v1/licences/{missing}"), &[purpose, ("x-consent", token)])
        .await
        .unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", r.body);
    assert!(r.json()["message"].as_str().unwrap().contains("another holder"), "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_app_seals_only_for_the_enterprise_it_names_and_verdicts_name_the_owner() {
    let Some(mut w) = world().await else { return };
    let department_seal = create_seal(&mut w.market, "SM2SM3").await;
    issue_licence(&mut w.market, &business_licence(&department_seal, XIAOMI)).await;
    let doc = json!({"document_base64": STANDARD.encode(b"%PDF-1.7 tender"), "name": "tender.pdf"});
    // X-Holder naming the market regulator itself: its official seal is its own alone.
    for holder in [MARKET, XIAOMI] {
        let r = w
            .app
            .json(
                Method::POST,
                &format!("/v1/seals/{department_seal}/sign"),
                &[("x-holder", holder)],
                &doc,
            )
            .await
            .unwrap();
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::BAD_REQUEST,
            "{holder}: {} {:?}",
            r.status,
            r.body
        );
    }
    // A seal named after another department, or an enterprise seal for a department.
    for body in [
        json!({"seal_type": "公章", "alg": "SM2SM3", "name": "某区行政审批局公章"}),
        json!({"seal_type": "公章", "alg": "SM2SM3", "holder": APPROVAL}),
        json!({"seal_type": "公章", "alg": "SM2SM3", "holder": XIAOMI, "name": "华为技术有限公司公章"}),
    ] {
        let r = w.market.json(Method::POST, "/v1/seals", &[], &body).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
    }
    // The enterprise's own seal, through the app, for it: named after its business licence.
    let own = w
        .market
        .json(Method::POST, "/v1/seals", &[], &json!({"seal_type": "公章", "alg": "SM2SM3", "holder": XIAOMI}))
        .await
        .unwrap()
        .json();
    assert_eq!(own["name"], "小米科技有限责任公司公章");
    assert_eq!(own["owner_name"], "小米科技有限责任公司");
    let sealed = w
        .app
        .json(
            Method::POST,
            &format!("/v1/seals/{}/sign", own["id"].as_str().unwrap()),
            &[("x-holder", XIAOMI)],
            &doc,
        )
        .await
        .unwrap();
    assert_eq!(sealed.status, StatusCode::OK, "{:?}", sealed.body);
    let verdict = w
        .approval
        .json(
            Method::POST,
            "/v1/seals/verify",
            &[],
            &json!({"document_base64": doc["document_base64"], "ses_signature_base64": sealed.json()["ses_signature_base64"]}),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(verdict["owner"], json!({"uscc": XIAOMI, "name": "小米科技有限责任公司"}));
    // The department's own seal, signed by the department: the verdict names it.
    let sealed = w
        .market
        .json(Method::POST, &format!("/v1/seals/{department_seal}/sign"), &[], &doc)
        .await
        .unwrap()
        .json();
    let verdict = w
        .approval
        .json(
            Method::POST,
            "/v1/seals/verify",
            &[],
            &json!({"document_base64": doc["document_base64"], "jws": sealed["jws_detached"]}),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(verdict["owner"], json!({"uscc": MARKET, "name": "某区市场监管局"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_registrar_sees_its_own_licences_only_and_not_another_registrars_enterprises() {
    let Some((extra, _schema)) = storage("licences") else { return };
    let pki = TestPki::new();
    // The approval bureau issues business licences too.
    let departments = standard_departments().replacen(
        &format!("id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"consumer\"]"),
        &format!("id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"issuer\", \"consumer\"]"),
        1,
    );
    assert_ne!(departments, standard_departments());
    let config = write_config(&pki, &extra, &departments);
    let text = std::fs::read_to_string(&config).unwrap();
    let two = text.replacen(
        &format!("issuers = [\"{MARKET}\"]"),
        &format!("issuers = [\"{MARKET}\", \"{APPROVAL}\"]"),
        1,
    );
    assert_ne!(two, text);
    std::fs::write(&config, two).unwrap();
    let gw = TestGateway::start(&config).await;
    let mut market = Client::new(&pki.ca_pem(), Some(&pki.department("market", MARKET)), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut approval =
        Client::new(&pki.ca_pem(), Some(&pki.department("approval", APPROVAL)), Proto::H2)
            .connect(gw.addr)
            .await
            .unwrap();
    let market_seal = create_seal(&mut market, "ES256").await;
    let approval_seal = create_seal(&mut approval, "ES256").await;
    // Another enterprise: two of the approval bureau's business licences, then the market
    // bureau's, the newest (and, within one second, first by identifier).
    const OTHER: &str = "9144030071526726XG";
    let mut own = Vec::new();
    for _ in 0..2 {
        let issued = issue_licence(&mut approval, &business_licence(&approval_seal, OTHER)).await;
        own.push(issued["id"].as_str().unwrap().to_owned());
    }
    let theirs = issue_licence(&mut market, &business_licence(&market_seal, OTHER)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A page at a time, the approval bureau sees its own licences, and no cursor names the
    // market bureau's.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/licences?holder={OTHER}&type={BUSINESS}&limit=1&cursor={c}"),
            None => format!("/v1/licences?holder={OTHER}&type={BUSINESS}&limit=1"),
        };
        let page = approval.get_with(&path, &[("x-purpose", "M-BIZ-001")]).await.unwrap();
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        let page = page.json();
        for l in page["licences"].as_array().unwrap() {
            seen.push(l["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(!c.contains(MARKET), "a cursor names the other issuer's licence: {c}");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    seen.sort();
    own.sort();
    assert_eq!(seen, own);

    // Renewing the other issuer's licence is refused the same whether or not it exists.
    let missing = unused_licence_id(BUSINESS);
    let a = approval.json(Method::POST, &format!("/v1/licences/{theirs}/renew"), &[], &json!({})).await.unwrap();
    let b = approval.json(Method::POST, &format!("/v1/licences/{missing}/renew"), &[], &json!({})).await.unwrap();
    assert_eq!((a.status, a.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", a.body);
    assert_eq!((b.status, b.code(), b.json()["message"].clone()), (a.status, a.code(), a.json()["message"].clone()));

    // 小米 is registered by the market bureau first; a later business licence from the
    // approval bureau does not take it over: its seals are the market bureau's to make and
    // revoke, not the approval bureau's.
    issue_licence(&mut market, &business_licence(&market_seal, XIAOMI)).await;
    // Issue times are in seconds: the later one is issued in a later second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    issue_licence(&mut approval, &business_licence(&approval_seal, XIAOMI)).await;
    let seal = json!({"seal_type": "合同专用章", "alg": "ES256", "holder": XIAOMI});
    let r = approval.json(Method::POST, "/v1/seals", &[], &seal).await.unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", r.body);
    let r = market.json(Method::POST, "/v1/seals", &[], &seal).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let revoke = format!("/v1/seals/{id}/revoke");
    let r = approval.json(Method::POST, &revoke, &[], &json!({"reason": "遗失"})).await.unwrap();
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "CG-LIC-002"), "{:?}", r.body);
    let r = market.json(Method::POST, &revoke, &[], &json!({"reason": "遗失"})).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["revoked_at"].is_i64(), "{:?}", r.body);
}
