//! Two gateway nodes sharing one PostgreSQL database (skipped, and said so, without
//! `CERTGATE_TEST_POSTGRES_URL`): what one node changes, the other sees.

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
    let a = TestGateway::start(&node_config(&pki, "a", &url, store.schema(), "")).await;
    let b = TestGateway::start(&node_config(&pki, "b", &url, store.schema(), "")).await;
    let [mut market_a, mut approval_b] = <[Conn; 2]>::try_from(
        connect_departments(&pki, a.addr, &[("market", MARKET)])
            .await
            .into_iter()
            .chain(connect_departments(&pki, b.addr, &[("approval", APPROVAL)]).await)
            .collect::<Vec<_>>(),
    )
    .ok()
    .unwrap();
    let mut market_b = connect_departments(&pki, b.addr, &[("market-b", MARKET)])
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
    let a = TestGateway::start(&node_config(&pki, "a", &url, store.schema(), &exchange)).await;
    let b = TestGateway::start(&node_config(&pki, "b", &url, store.schema(), &exchange)).await;
    let mut on_a = connect_departments(&pki, a.addr, &[("market", MARKET)])
        .await
        .remove(0);
    let mut on_b = connect_departments(&pki, b.addr, &[("approval", APPROVAL)])
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

    relay.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let r = market
            .json(Method::POST, "/v1/licences/verify", &[], &verify)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "CG-STO-001"),
            "{:?}",
            r.body
        );
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
        assert_eq!(
            r.code(),
            "CG-STO-001",
            "nothing is issued without the store"
        );
    }

    relay.restore();
    let r = market
        .json(Method::POST, "/v1/licences/verify", &[], &verify)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["valid"], true);
    issue_licence(&mut market, &business_licence(&seal, XIAOMI)).await;
}
