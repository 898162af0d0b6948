//! A flood of garbage connections against the gateway while a department works: in a test
//! binary of its own, so that no other test shares the machine's two cores with it (its
//! assertion is on the department's worst latency, which a concurrent test's load would
//! decide instead of the gateway).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use certgate_tests::*;
use http::StatusCode;

/// Opens a connection to `addr` from 127.0.0.2 every millisecond for 10 s, each sending
/// garbage; returns how many it opened.
async fn flood(addr: std::net::SocketAddr) -> u64 {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        tick.tick().await;
        tasks.spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok(mut tcp) = connect_from("127.0.0.2", addr).await {
                let _ = tcp
                    .write_all(b"\x16\x03\x01\x00\x05garbage garbage\r\n\r\n")
                    .await;
                let _ = tcp.shutdown().await;
            }
        });
        sent += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_connections_costs_a_few_leaves_and_no_department_waits() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let audit = pki.department("audit", AUDIT);
    let gw = TestGateway::start(&write_config_with_log(
        &pki,
        "",
        &standard_departments(),
        "refusal_window_ms = 2000",
    ))
    .await;
    let before = gw.gateway.access_log.size();
    let addr = gw.addr;

    // 1,000 connections a second from 127.0.0.2 for 10 s, each sending garbage; from a thread
    // and runtime of their own, as another host would (the gateway keeps the test's workers).
    let flood = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(flood(addr))
    });

    // Meanwhile the approval bureau works: a request every 100 ms on its connection and a
    // fresh connection (a full handshake) every second.
    let client = Client::full_handshakes(&pki.ca_pem(), Some(&approval), Proto::H2);
    let mut conn = client.connect(addr).await.unwrap();
    let mut worst = std::time::Duration::ZERO;
    let mut served = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let t = std::time::Instant::now();
        if served % 10 == 9 {
            conn = client.connect(addr).await.unwrap();
        }
        let reply = conn.get("/v1/whoami").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        worst = worst.max(t.elapsed());
        served += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sent = flood.join().unwrap();
    // Thousands, however busy the machine (about 10,000 when the flood has a core to itself).
    assert!(sent >= 3_000, "only {sent} garbage connections");
    assert!(
        worst < std::time::Duration::from_secs(1),
        "a department request took {worst:?} during the flood"
    );

    // The log: one leaf per department request, and a few summaries for the whole flood.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut auditor = Client::new(&pki.ca_pem(), Some(&audit), Proto::H2)
        .connect(addr)
        .await
        .unwrap();
    let summaries = handshake_summaries(&mut auditor).await;
    let counted: u64 = summaries
        .iter()
        .filter(|s| s["peer"] == "127.0.0.2")
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert!(
        counted + 200 >= sent,
        "{counted} refusals summarised for {sent} connections: {summaries:?}"
    );
    let grown = gw.gateway.access_log.size() - before;
    assert!(
        grown <= served + 1 + 30,
        "the log grew by {grown} leaves for {served} requests and {sent} garbage connections"
    );
    assert!(summaries.len() <= 30, "{} summaries", summaries.len());
    println!(
        "flood: {sent} garbage connections, {served} department requests (worst {worst:?}), \
         log +{grown} leaves ({} summaries)",
        summaries.len()
    );
}
