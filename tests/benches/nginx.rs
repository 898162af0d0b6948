//! A cached licence GET through certgate over mTLS, side by side with nginx serving the very
//! same response bytes as a static file over mTLS (`ssl_verify_client on`, the same CA, server
//! certificate and client certificate).
//!
//! Both sides: HTTP/1.1 keep-alive over TLS 1.3, `CONNS` connections each sending requests one
//! after another, `REQUESTS` requests per round; rounds alternate sides and the best round of
//! each is reported. certgate does everything a department meets: identity from the
//! certificate, the department table, the purpose, the access rule, selective disclosure of
//! the stored credential, JSON, and the access-log leaf committed before the response leaves.
//! nginx (from the Debian package) runs with as many workers as the machine has cores.
//!
//! Run: `cargo bench -p certgate-tests --bench nginx` (needs `nginx` on the PATH or in
//! /usr/sbin; `CERTGATE_BENCH_REQUESTS`, default 20000; `CERTGATE_BENCH_CONNS`, default 16;
//! `CERTGATE_BENCH_ROUNDS`, default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use certgate_tests::load::{Round, round};
use certgate_tests::*;
use http::Method;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn nginx_bin() -> String {
    ["nginx", "/usr/sbin/nginx"]
        .iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .map(|b| (*b).to_owned())
        .expect("nginx is not installed (apt-get install nginx-light)")
}

fn main() {
    let requests = env("CERTGATE_BENCH_REQUESTS", 20_000);
    let conns = env("CERTGATE_BENCH_CONNS", 16);
    let rounds = env("CERTGATE_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pki = TestPki::new();
        let gw = TestGateway::standard(&pki, "").await;
        let market = pki.department("market", MARKET);
        let approval = pki.department("approval", APPROVAL);
        let mut m = Client::new(&pki.ca_pem(), Some(&market), Proto::H1)
            .connect(gw.addr)
            .await
            .unwrap();
        let seal = create_seal(&mut m, "ES256").await;
        let issued = issue_licence(&mut m, &business_licence(&seal, XIAOMI)).await;
        let path = format!("/v1/licences/{}", issued["id"].as_str().unwrap());
        const PURPOSE: &[(&str, &str)] = &[("x-purpose", "M-BIZ-001")];
        let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1);
        let body = client
            .connect(gw.addr)
            .await
            .unwrap()
            .get_with(&path, PURPOSE)
            .await
            .unwrap()
            .body;

        // nginx serving the same bytes with the same certificates.
        let dir = pki.dir.path().join("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(dir.join("licence.json"), &body).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = pki.pki_dir();
        let conf = format!(
            "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
                 ssl_protocols TLSv1.3;\n\
                 location = /licence {{ default_type application/json; alias {d}/licence.json; }}\n\
               }}\n}}\n",
            d = dir.display(),
            cert = p.join("server.pem").display(),
            key = p.join("server.key").display(),
            ca = p.join("ca.pem").display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut nginx = Command::new(nginx_bin())
            .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
            .args(["-g", "daemon off;"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let nginx_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(nginx_addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let check = client
            .connect(nginx_addr)
            .await
            .unwrap()
            .send(Method::GET, "/licence", bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(check.body, body, "nginx serves the same bytes");

        round(&client, gw.addr, &path, PURPOSE, 1, 10).await;
        let mut best_gw: Option<Round> = None;
        let mut best_ng: Option<Round> = None;
        for r in 0..rounds {
            let n = round(&client, nginx_addr, "/licence", &[], conns, requests).await;
            let g = round(&client, gw.addr, &path, PURPOSE, conns, requests).await;
            println!(
                "round {r}: certgate {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms); nginx {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
                g.rps, ms(g.p50), ms(g.p99), n.rps, ms(n.p50), ms(n.p99)
            );
            if best_gw.as_ref().is_none_or(|b| g.rps > b.rps) {
                best_gw = Some(g);
            }
            if best_ng.as_ref().is_none_or(|b| n.rps > b.rps) {
                best_ng = Some(n);
            }
        }
        // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &nginx.id().to_string()])
            .status();
        let _ = nginx.wait();
        let (g, n) = (best_gw.unwrap(), best_ng.unwrap());
        println!();
        println!(
            "{requests} requests per round, {conns} keep-alive mTLS connections, best of {rounds} rounds, {} response bytes",
            body.len()
        );
        println!("| server | req/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|");
        println!("| certgate, licence GET (access log on) | {:.0} | {:.2} | {:.2} |", g.rps, ms(g.p50), ms(g.p99));
        println!("| nginx, the same bytes as a static file | {:.0} | {:.2} | {:.2} |", n.rps, ms(n.p50), ms(n.p99));
        println!("| ratio certgate ÷ nginx | {:.2} | | |", g.rps / n.rps);
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
