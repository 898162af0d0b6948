//! Who gets in: department certificates accepted, and every reason for refusal.

use bytes::Bytes;
use certgate_tests::*;
use http::{Method, StatusCode};
use time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn department_certificate_is_identified_over_http1_and_http2() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let gw = TestGateway::standard(&pki, "").await;
    for (proto, expected) in [(Proto::H1, "HTTP/1.1"), (Proto::H2, "HTTP/2")] {
        let reply = Client::new(&pki.ca_pem(), Some(&approval), proto)
            .get(gw.addr, "/v1/whoami")
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{proto:?}");
        let body = reply.json();
        assert_eq!(body["department"], APPROVAL);
        assert_eq!(body["name"], "行政审批局");
        assert_eq!(body["roles"], serde_json::json!(["consumer"]));
        assert_eq!(body["protocol"], expected);
        assert_eq!(body["certificate"]["subject"], "O=certgate, CN=approval");
        assert_eq!(
            body["certificate"]["fingerprint_sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(reply.headers["x-request-id"].len(), 32);
    }
}

/// The handshake (or, in TLS 1.3, the first read after it) fails with `alert`.
async fn assert_handshake_refused(client: &Client, gw: &TestGateway, alert: &str) {
    use tokio::io::AsyncReadExt;
    // Read before writing: in TLS 1.3 the server's verdict on the client certificate arrives
    // after the client considers the handshake done, and writing first races the alert.
    let text = match client.tls(gw.addr).await {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await
            {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(n)) => panic!("expected alert {alert}, read {n} bytes"),
                Err(_) => panic!("expected alert {alert}, but the connection stayed open"),
            }
        }
    };
    assert!(text.contains(alert), "expected alert {alert}, got: {text}");
    assert!(client.get(gw.addr, "/v1/whoami").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_fail_verification_are_refused_in_the_handshake() {
    let mut pki = TestPki::new();
    let other_pki = TestPki::new();
    let now = storage::clock::now_utc();

    let foreign = other_pki.department("foreign", APPROVAL);
    let mut spec = pki.spec("expired", APPROVAL);
    spec.not_before = now - Duration::days(30);
    spec.not_after = now - Duration::days(1);
    let expired = pki.client(&spec);
    let mut spec = pki.spec("server-eku", APPROVAL);
    spec.client_auth = false;
    let no_client_eku = pki.client(&spec);
    let revoked = pki.department("revoked", APPROVAL);
    pki.revoke("revoked");

    let gw = TestGateway::standard(&pki, "").await;
    let ca = pki.ca_pem();
    for proto in [Proto::H1, Proto::H2] {
        assert_handshake_refused(&Client::new(&ca, None, proto), &gw, "CertificateRequired").await;
        assert_handshake_refused(&Client::new(&ca, Some(&foreign), proto), &gw, "UnknownCA").await;
        assert_handshake_refused(
            &Client::new(&ca, Some(&expired), proto),
            &gw,
            "CertificateExpired",
        )
        .await;
        assert_handshake_refused(&Client::new(&ca, Some(&no_client_eku), proto), &gw, "alert")
            .await;
        assert_handshake_refused(
            &Client::new(&ca, Some(&revoked), proto),
            &gw,
            "CertificateRevoked",
        )
        .await;
    }
    let (_, metrics) = gw.ops_get("/metrics").await;
    for reason in [
        "no_certificate",
        "unknown_issuer",
        "expired",
        "wrong_key_usage",
        "revoked",
    ] {
        assert!(
            metrics.contains(&format!(
                "certgate_tls_handshake_failures_total{{reason=\"{reason}\"}} 4"
            )),
            "{reason} not counted four times:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificates_without_a_usable_department_get_403_with_a_code() {
    let pki = TestPki::new();
    let stranger = pki.department("stranger", STRANGER);
    let disabled = pki.department("disabled", DISABLED);
    let mut spec = pki.spec("bad-uscc", APPROVAL);
    spec.san_uris = vec!["urn:certgate:dept:11110105MB0000001X".into()];
    let bad_uscc = pki.client(&spec);
    let mut spec = pki.spec("no-uri", APPROVAL);
    spec.san_uris = vec![];
    let no_uri = pki.client(&spec);
    let mut spec = pki.spec("two-uris", APPROVAL);
    spec.san_uris.push(format!("urn:certgate:dept:{MARKET}"));
    let two_uris = pki.client(&spec);
    let mut spec = pki.spec("hostile", APPROVAL);
    spec.san_uris = vec!["urn:certgate:dept:../../etc/passwd%00\r\n".into()];
    let hostile = pki.client(&spec);

    let gw = TestGateway::standard(&pki, "").await;
    let cases = [
        (&stranger, "CG-AUTH-003"),
        (&disabled, "CG-AUTH-004"),
        (&bad_uscc, "CG-AUTH-002"),
        (&no_uri, "CG-AUTH-002"),
        (&two_uris, "CG-AUTH-002"),
        (&hostile, "CG-AUTH-002"),
    ];
    for proto in [Proto::H1, Proto::H2] {
        for (identity, code) in &cases {
            let client = Client::new(&pki.ca_pem(), Some(identity), proto);
            for path in ["/v1/whoami", "/openapi.json", "/no/such/route"] {
                let reply = client.get(gw.addr, path).await.unwrap();
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} {code}");
                assert_eq!(reply.code(), *code, "{path}");
                let body = reply.json();
                assert_eq!(
                    body["request_id"].as_str().unwrap(),
                    reply.headers["x-request-id"].to_str().unwrap()
                );
                let message = body["message"].as_str().unwrap();
                assert!(
                    !message.contains("x509") && !message.contains("rustls"),
                    "{message}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_reload_refuses_new_and_resumed_sessions_and_keeps_other_connections() {
    let mut pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let ops = pki.department("ops", OPS);
    let gw = TestGateway::standard(&pki, "").await;
    let ca = pki.ca_pem();

    // A client whose session cache will hold tickets from before the revocation.
    let remembered = Client::new(&ca, Some(&approval), Proto::H1);
    let first = remembered.get(gw.addr, "/v1/whoami").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let mut resumed = remembered.connect(gw.addr).await.unwrap();
    assert!(
        resumed.resumed,
        "the second connection must resume the first session"
    );
    let reply = resumed.get("/v1/whoami").await.unwrap();
    assert_eq!(reply.json()["tls_session_resumed"], true);

    // An admin connection that stays open across the reload.
    let mut admin = Client::new(&ca, Some(&ops), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    pki.revoke("approval");
    let reload = admin
        .send(Method::POST, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(reload.status, StatusCode::OK, "{:?}", reload.body);
    assert_eq!(reload.json()["revoked_serials"], 1);
    // What a reload puts in force is named, so an operator is not misled about the rest.
    assert_eq!(
        reload.json()["reloaded"],
        serde_json::json!(["departments", "tls", "access_rules"])
    );

    // A new full handshake is refused by the new CRL.
    let fresh = Client::new(&ca, Some(&approval), Proto::H1);
    let err = fresh.get(gw.addr, "/v1/whoami").await.unwrap_err();
    assert!(format!("{err:#}").contains("CertificateRevoked"), "{err:#}");

    // A session resumed from before the revocation skips certificate verification in TLS,
    // and is refused by the per-connection serial check.
    let mut late = remembered.connect(gw.addr).await.unwrap();
    assert!(
        late.resumed,
        "the session must really be resumed for this check to mean anything"
    );
    let reply = late.get("/v1/whoami").await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "CG-AUTH-005");

    // The connection opened before the revocation is refused from the next request on.
    let reply = resumed.get("/v1/whoami").await.unwrap();
    assert_eq!(reply.code(), "CG-AUTH-005");

    // The admin's open connection was not dropped by the reload.
    let reply = admin.get("/v1/whoami").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_the_department_table_and_needs_the_admin_role() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let stranger = pki.department("stranger", STRANGER);
    let ops = pki.department("ops", OPS);
    let config = write_config(&pki, "", &standard_departments());
    let gw = TestGateway::start(&config).await;
    let ca = pki.ca_pem();

    let reply = Client::new(&ca, Some(&approval), Proto::H1)
        .post(gw.addr, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-006")
    );

    let stranger_client = Client::new(&ca, Some(&stranger), Proto::H1);
    assert_eq!(
        stranger_client
            .get(gw.addr, "/v1/whoami")
            .await
            .unwrap()
            .code(),
        "CG-AUTH-003"
    );

    // A broken file is refused and the previous configuration stays in force.
    std::fs::write(&config, "[server\n").unwrap();
    let admin = Client::new(&ca, Some(&ops), Proto::H1);
    let mut conn = admin.connect(gw.addr).await.unwrap();
    let reply = conn
        .send(Method::POST, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "CG-CFG-001")
    );
    assert_eq!(
        stranger_client
            .get(gw.addr, "/v1/whoami")
            .await
            .unwrap()
            .code(),
        "CG-AUTH-003"
    );

    // Adding the stranger to the table lets its next connection in.
    write_config(
        &pki,
        "",
        &(standard_departments() + &dept(STRANGER, "新设部门", &["consumer"], true)),
    );
    let reply = conn
        .send(Method::POST, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["departments"], 7);
    let reply = Client::new(&ca, Some(&stranger), Proto::H1)
        .get(gw.addr, "/v1/whoami")
        .await
        .unwrap();
    assert_eq!(reply.json()["name"], "新设部门");

    // Disabling a department applies to its open connections from their next request on.
    let mut open = Client::new(&ca, Some(&approval), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(open.get("/v1/whoami").await.unwrap().status, StatusCode::OK);
    let disabled = standard_departments().replacen(
        &format!(
            "id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"consumer\"]\nenabled = true"
        ),
        &format!(
            "id = \"{APPROVAL}\"\nname = \"行政审批局\"\nfull_name = \"某区行政审批局\"\nroles = [\"consumer\"]\nenabled = false"
        ),
        1,
    );
    assert_ne!(disabled, standard_departments());
    write_config(&pki, "", &disabled);
    let reply = conn
        .send(Method::POST, "/v1/admin/reload", Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let reply = open.get("/v1/whoami").await.unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::FORBIDDEN, "CG-AUTH-004")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_openapi_document_exists() {
    let pki = TestPki::new();
    let ops = pki.department("ops", OPS);
    let gw = TestGateway::standard(&pki, "").await;
    let client = Client::new(&pki.ca_pem(), Some(&ops), Proto::H2);
    let mut conn = client.connect(gw.addr).await.unwrap();
    let doc = conn.get("/openapi.json").await.unwrap().json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 3);
    for (path, ops) in paths {
        // Fill path parameters with sample values: a missing resource answers CG-LIC-003,
        // a missing route CG-REQ-001.
        let concrete = path
            .replace("{id}", "x")
            .replace("{n}", "0")
            .replace("{dataset}", "x")
            .replace("{key}", "x")
            .replace("{proof_type}", "x");
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let reply = conn
                .send(method.clone(), &concrete, Bytes::new())
                .await
                .unwrap();
            let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            assert!(
                code != "CG-REQ-001" && code != "CG-REQ-002",
                "{method} {path} is documented but answers {} {code}",
                reply.status
            );
        }
    }
    let reply = conn.get("/v1/nothing").await.unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::NOT_FOUND, "CG-REQ-001")
    );
    let reply = conn
        .send(Method::DELETE, "/v1/whoami", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "CG-REQ-002")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_a_usable_department_is_closed_on_and_costs_few_leaves() {
    let pki = TestPki::new();
    let stranger = pki.department("stranger", STRANGER);
    let audit = pki.department("audit", AUDIT);
    // A window long enough for the burst below to fall in one or two of them.
    let gw = TestGateway::start(&write_config_with_log(
        &pki,
        "",
        &standard_departments(),
        "refusal_window_ms = 1500",
    ))
    .await;
    let ca = pki.ca_pem();

    // HTTP/2: the refusal ends the connection (GOAWAY), so its streams cannot go on.
    let mut conn = Client::new(&ca, Some(&stranger), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut refused = 0u64;
    let mut closed = false;
    for _ in 0..50 {
        match conn.get("/v1/whoami").await {
            Ok(reply) => {
                assert_eq!(reply.code(), "CG-AUTH-003");
                refused += 1;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "the HTTP/2 connection stayed open after {refused} refusals"
    );
    // HTTP/1.1: each refusal closes its connection; a burst from new connections.
    let client = Client::new(&ca, Some(&stranger), Proto::H1);
    for _ in 0..40 {
        let reply = client.get(gw.addr, "/v1/whoami").await.unwrap();
        assert_eq!(reply.code(), "CG-AUTH-003");
        assert_eq!(reply.headers["connection"], "close");
        refused += 1;
    }

    // Every refusal is in the log: the first few of the window as leaves of their own, with the
    // certificate, the rest counted in the source's summary.
    let mut auditor = Client::new(&ca, Some(&audit), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut own = Vec::new();
    let mut summarised = 0;
    for _ in 0..60 {
        let entries = all_entries(&mut auditor).await;
        own = entries
            .iter()
            .filter(|e| e["kind"] == "request" && e["code"] == "CG-AUTH-003")
            .cloned()
            .collect();
        summarised = entries
            .iter()
            .filter(|e| e["kind"] == "handshakes")
            .map(|e| {
                e["code"]
                    .as_str()
                    .unwrap()
                    .split(',')
                    .filter_map(|r| r.strip_prefix("CG-AUTH-003:"))
                    .map(|n| n.parse::<u64>().unwrap())
                    .sum::<u64>()
            })
            .sum::<u64>();
        if own.len() as u64 + summarised == refused {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(own.len() as u64 + summarised, refused, "{own:?}");
    assert!(
        own.len() <= 16,
        "{} of {refused} refusals were leaves of their own",
        own.len()
    );
    assert!(own.iter().all(|e| e["department"] == STRANGER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_peer_that_never_answers_the_closing_ping_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let stranger = pki.department("stranger", STRANGER);
    let gw = TestGateway::start(&write_config(
        &pki,
        "header_read_timeout_ms = 500",
        &standard_departments(),
    ))
    .await;
    let mut tls = Client::new(&pki.ca_pem(), Some(&stranger), Proto::H2)
        .tls(gw.addr)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The connection preface, an empty SETTINGS frame and one GET /v1/whoami on stream 1 (its
    // header block in HPACK, literal, without Huffman coding); then nothing more is sent: no
    // SETTINGS acknowledgement, no answer to the PING of a graceful close.
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.extend_from_slice(&[0x04, 10]);
    block.extend_from_slice(b"/v1/whoami"); // :path
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost"); // :authority
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    // The gateway answers, asks to close and, unanswered, ends the connection itself.
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection stayed open ({} bytes read)",
        seen.len()
    );
    // What it sent, frame by frame: the answer's HEADERS on stream 1, and a GOAWAY.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= seen.len() {
        let len = usize::from(seen[at]) << 16
            | usize::from(seen[at + 1]) << 8
            | usize::from(seen[at + 2]);
        types.push(seen[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&1), "no HEADERS frame: {types:?}");
    assert!(types.contains(&7), "no GOAWAY frame: {types:?}");
}
