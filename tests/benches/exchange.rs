//! Cached shared-data GETs through the gateway over mTLS, side by side with the same GET made
//! directly to the source system over mTLS.
//!
//! Both sides: HTTP/1.1 keep-alive over TLS 1.3 with a client certificate, `CONNS` connections
//! each sending requests one after another, `REQUESTS` requests per round, the same record
//! (~80 bytes of JSON). The gateway side goes through everything a department meets: identity
//! from the certificate, the department table, the purpose, the dataset grant, the moka cache
//! (every request after the first is a hit), field filtering and the durable access-log append
//! (group commit, `synchronous=FULL`) before the response leaves. The source system is the
//! sample one (`gateway::source_system`), a bare hyper server answering from a hash map.
//! Rounds alternate sides; each side's best round is reported.
//!
//! Run: `cargo bench -p certgate-tests --bench exchange`
//! (`CERTGATE_BENCH_REQUESTS`, default 20000; `CERTGATE_BENCH_CONNS`, default 16;
//! `CERTGATE_BENCH_ROUNDS`, default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use certgate_tests::load::{Round, round};
use certgate_tests::*;
use gateway::source_system::SourceSystem;
use serde_json::json;

const TAX: &str = "11110105MB0000011D";

fn main() {
    let requests = env_or("CERTGATE_BENCH_REQUESTS", 20_000);
    let conns = env_or("CERTGATE_BENCH_CONNS", 16);
    let rounds = env_or("CERTGATE_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pki = TestPki::new();
        let dir = pki.pki_dir();
        let upstream_id = pki.client(&pki.spec("gateway-upstream", OPS));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let source = SourceSystem::start(
            any,
            &dir.join("server.pem"),
            &dir.join("server.key"),
            Some(&dir.join("ca.pem")),
        )
        .await
        .unwrap();
        source.controls.put(
            XIAOMI,
            &json!({"name": "小米科技有限责任公司", "arrears_yuan": 0, "credit_rating": "A"}),
        );
        let port = source.addr.port();
        let exchange = format!(
            r#"
[[departments]]
id = "{TAX}"
name = "税务局"
roles = ["consumer"]

[[upstreams]]
origin = "https://127.0.0.1:{port}"
ca_file = "pki/ca.pem"
client_cert = "pki/gateway-upstream.pem"
client_key = "pki/gateway-upstream.key"

[[datasets]]
id = "tax-status"
name = "纳税状况"
owner = "{TAX}"
url = "https://127.0.0.1:{port}/taxpayers/{{key}}"
key_kind = "uscc"
ttl_seconds = 3600
fields = ["name", "arrears_yuan", "credit_rating"]

[[datasets.grants]]
department = "{APPROVAL}"
fields = {{ name = "full", arrears_yuan = "full", credit_rating = "full" }}
"#
        );
        let config = write_config(&pki, "", &(standard_departments() + &exchange));
        let gw = TestGateway::start(&config).await;
        let approval = pki.department("approval", APPROVAL);
        let via_gateway = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1);
        let direct = Client::new(&pki.ca_pem(), Some(&upstream_id), Proto::H1);
        let gw_path = format!("/v1/data/tax-status/{XIAOMI}");
        let src_path = format!("/taxpayers/{XIAOMI}");
        const PURPOSE: &[(&str, &str)] = &[("x-purpose", "M-BID-001")];

        // Warm both (the first gateway request fills the cache).
        round(&via_gateway, gw.addr, &gw_path, PURPOSE, 1, 10).await;
        round(&direct, source.addr, &src_path, &[], 1, 10).await;

        let mut best_gw: Option<Round> = None;
        let mut best_src: Option<Round> = None;
        for r in 0..rounds {
            let s = round(&direct, source.addr, &src_path, &[], conns, requests).await;
            let g = round(&via_gateway, gw.addr, &gw_path, PURPOSE, conns, requests).await;
            println!(
                "round {r}: gateway {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms); source direct {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
                g.rps,
                ms(g.p50),
                ms(g.p99),
                s.rps,
                ms(s.p50),
                ms(s.p99)
            );
            if best_gw.as_ref().is_none_or(|b| g.rps > b.rps) {
                best_gw = Some(g);
            }
            if best_src.as_ref().is_none_or(|b| s.rps > b.rps) {
                best_src = Some(s);
            }
        }
        let (g, s) = (best_gw.unwrap(), best_src.unwrap());
        println!();
        println!("{requests} requests per round, {conns} keep-alive mTLS connections, best of {rounds} rounds");
        println!("| path | req/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|");
        println!(
            "| gateway, cached (access log on) | {:.0} | {:.2} | {:.2} |",
            g.rps,
            ms(g.p50),
            ms(g.p99)
        );
        println!(
            "| source system direct | {:.0} | {:.2} | {:.2} |",
            s.rps,
            ms(s.p50),
            ms(s.p99)
        );
        println!("| ratio gateway ÷ direct | {:.2} | | |", g.rps / s.rps);
        assert_eq!(
            source.controls.calls(XIAOMI) as usize,
            1 + 10 + rounds * requests / conns * conns,
            "every gateway request after the first was served from the cache"
        );
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
