//! certgate against nginx, each a separate process on the same machine, serving over mTLS with
//! the same CA, server certificate and client certificate (`ssl_verify_client on`):
//!
//! - a cached licence GET, against nginx serving the very same response bytes as a static file;
//! - `GET /v1/whoami` (no store read), against nginx serving the same bytes;
//! - a licence verification (`POST /v1/licences/verify`), against nginx answering the POST with
//!   the very same response bytes (`return 200`, since nginx's static module refuses POST), and
//!   against `openssl speed ecdsap256` verify on the same core;
//! - ES256 issuance (`POST /v1/licences`, a food permit signed with an ES256 seal and made
//!   durable), against `openssl speed ecdsap256` sign on the same core;
//! - full mTLS handshakes per second: TCP connect, TLS 1.3 handshake with the client
//!   certificate, close; no session resumption (the client keeps no sessions, nginx has its
//!   session cache and tickets off), X25519 on both sides;
//! - certgate's resident memory idle (started, nothing served yet) and after a minute of load,
//!   beside nginx's (master and worker).
//!
//! Keep-alive rounds: HTTP/1.1 over TLS 1.3, `CONNS` connections each sending requests one
//! after another, `REQUESTS` requests per round; rounds alternate sides and the best round of
//! each is reported, then (a second table) certgate ÷ nginx within each round of the GET,
//! whoami and handshakes, with their median and lowest: on a noisy host the two sides' best
//! rounds can come from different moments, a round's two sides do not. certgate does
//! everything a department meets: identity from the certificate, the department table, the
//! purpose, the access rule, selective disclosure of the stored credential (or the full
//! verification), JSON, and the access-log leaf committed (`synchronous=FULL`) before the
//! response leaves.
//!
//! Pinning: on a machine with two cores or more, each server runs on CPU 0 (nginx with one
//! worker) and the load generator should run on another (`taskset -c 1 cargo bench …`, as
//! `tests/bench/run` does). `CERTGATE_BENCH_PIN=0` turns pinning off (nginx then runs one worker
//! per core).
//!
//! Run: `cargo bench -p certgate-tests --bench nginx` (needs `nginx` on the PATH or in
//! /usr/sbin; `CERTGATE_BENCH_REQUESTS`, default 20000; `CERTGATE_BENCH_CONNS`, default `50,16` (each in turn; handshakes from the first);
//! `CERTGATE_BENCH_ROUNDS`, default 3; `CERTGATE_BENCH_HANDSHAKES`, default 4000;
//! `CERTGATE_BENCH_SOAK_SECONDS`, default 60 (load before memory is read);
//! `CERTGATE_BENCH_LOG=sqlite` keeps certgate's access log in SQLite instead of segment files;
//! `CERTGATE_BENCH_ONLY=issuance` (or `get`, `whoami`, `verify`) runs that load alone for
//! `CERTGATE_BENCH_SECONDS` and stops, printing the gateway's pid for a profiler).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use certgate_tests::load::{Round, handshakes, round_with};
use certgate_tests::*;
use http::Method;
use serde_json::json;

fn nginx_bin() -> String {
    ["nginx", "/usr/sbin/nginx"]
        .iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .map(|b| (*b).to_owned())
        .expect("nginx is not installed (apt-get install nginx-light)")
}

/// A field of /proc/<pid>/status in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The resident memory of nginx: its master and its workers.
fn nginx_rss_mib(master: u32) -> f64 {
    let children = Command::new("pgrep")
        .args(["-P", &master.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    memory_mib(master, "VmRSS:")
        + children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|p| memory_mib(p, "VmRSS:"))
            .sum::<f64>()
}

/// CPU seconds (user + system) a process and its children have used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let own = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
    };
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    own(pid)
        + children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(own)
            .sum::<f64>()
}

/// Runs a measurement and returns it with the share of one core the server `pid` was busy.
async fn busy<F: std::future::Future<Output = Round>>(pid: u32, run: F) -> (Round, f64) {
    let (cpu, wall) = (cpu_seconds(pid), std::time::Instant::now());
    let r = run.await;
    let used = cpu_seconds(pid) - cpu;
    (r, used / wall.elapsed().as_secs_f64())
}

/// Best of each side, by requests per second.
#[derive(Default)]
struct Best(Option<(Round, f64)>);

impl Best {
    fn offer(&mut self, r: (Round, f64)) {
        if self.0.as_ref().is_none_or(|b| r.0.rps > b.0.rps) {
            self.0 = Some(r);
        }
    }

    fn get(&self) -> &(Round, f64) {
        self.0.as_ref().unwrap()
    }
}

fn main() {
    let requests = env_or("CERTGATE_BENCH_REQUESTS", 20_000);
    let concurrencies: Vec<usize> = std::env::var("CERTGATE_BENCH_CONNS")
        .unwrap_or_else(|_| "50,16".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .expect("CERTGATE_BENCH_CONNS: numbers separated by commas")
        })
        .collect();
    let rounds = env_or("CERTGATE_BENCH_ROUNDS", 3);
    let handshake_count = env_or("CERTGATE_BENCH_HANDSHAKES", 4_000);
    // The machine's cores, not this process's share: the load generator may itself be pinned.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1);
    let pin = cores >= 2 && env_or("CERTGATE_BENCH_PIN", 1) == 1;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pki = TestPki::new();
        // One load generator from one address opens all the connections at once.
        let log_extra = std::env::var("CERTGATE_BENCH_GROUP_COMMIT_US")
            .map(|us| format!("group_commit_us = {us}"))
            .unwrap_or_default();
        let config = write_config_with_log(
            &pki,
            "max_handshakes_per_source = 1024",
            &standard_departments(),
            &log_extra,
        );
        if std::env::var("CERTGATE_BENCH_LOG").as_deref() == Ok("sqlite") {
            // A data directory with an `access-log.db` keeps its log in SQLite, as before
            // segment files: the comparison of the two in one build.
            let data = pki.dir.path().join("data");
            std::fs::create_dir_all(&data).unwrap();
            rusqlite::Connection::open(data.join("access-log.db")).unwrap();
        }
        let served = Served::start_on(&config, pin.then_some(0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss = memory_mib(served.pid(), "VmRSS:");
        let gw = served.api;
        let market = pki.department("market", MARKET);
        let approval = pki.department("approval", APPROVAL);
        let mut m = Client::new(&pki.ca_pem(), Some(&market), Proto::H1)
            .connect(gw)
            .await
            .unwrap();
        let seal = create_seal(&mut m, "ES256").await;
        let issued = issue_licence(&mut m, &business_licence(&seal, XIAOMI)).await;
        let path = format!("/v1/licences/{}", issued["id"].as_str().unwrap());
        let verify_body = Bytes::from(
            serde_json::to_vec(&json!({ "credential": issued["credential"] })).unwrap(),
        );
        const PURPOSE: &[(&str, &str)] = &[("x-purpose", "M-BIZ-001")];
        const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
        let client = Client::full_handshakes(&pki.ca_pem(), Some(&approval), Proto::H1);
        let mut probe = client.connect(gw).await.unwrap();
        let licence_bytes = probe.get_with(&path, PURPOSE).await.unwrap().body;
        let verified = probe
            .send_with(Method::POST, "/v1/licences/verify", JSON, verify_body.clone())
            .await
            .unwrap();
        assert_eq!(verified.json()["valid"], true, "{:?}", verified.body);
        let verify_bytes = verified.body;
        let whoami_bytes = probe.get("/v1/whoami").await.unwrap().body;
        drop(probe);

        // nginx serving the same bytes with the same certificates.
        let dir = pki.dir.path().join("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(dir.join("licence.json"), &licence_bytes).unwrap();
        std::fs::write(dir.join("whoami.json"), &whoami_bytes).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = pki.pki_dir();
        let verify_text = String::from_utf8(verify_bytes.to_vec())
            .unwrap()
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        let conf = format!(
            "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               ssl_session_cache off;\n  ssl_session_tickets off;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
                 ssl_protocols TLSv1.3;\n    ssl_ecdh_curve X25519;\n\
                 location = /licence {{ default_type application/json; alias {d}/licence.json; }}\n\
                 location = /whoami {{ default_type application/json; alias {d}/whoami.json; }}\n\
                 location = /verify {{ default_type application/json; return 200 '{verify_text}'; }}\n\
               }}\n}}\n",
            workers = if pin { "1".to_owned() } else { "auto".to_owned() },
            d = dir.display(),
            cert = p.join("server.pem").display(),
            key = p.join("server.key").display(),
            ca = p.join("ca.pem").display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut nginx_cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", &nginx_bin()]);
            c
        } else {
            Command::new(nginx_bin())
        };
        let mut nginx = nginx_cmd
            .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
            .args(["-g", "daemon off;"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let ng: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(ng).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut check = client.connect(ng).await.unwrap();
        assert_eq!(check.get("/licence").await.unwrap().body, licence_bytes);
        let answer = check
            .send_with(Method::POST, "/verify", JSON, verify_body.clone())
            .await
            .unwrap();
        assert_eq!(answer.body, verify_bytes, "nginx answers the same bytes");
        drop(check);
        let nginx_idle_rss = nginx_rss_mib(nginx.id());

        // `openssl speed` on the server's core: the peer of verification and issuance.
        let (speed_sign, speed_verify) = openssl_speed(pin);
        // What one durable commit costs on this disk now: the floor under every answer.
        let sync = fdatasync_latency(&pki.dir.path().join("data"));
        let market_client = Client::new(&pki.ca_pem(), Some(&market), Proto::H1);
        let issue_body = Bytes::from(
            serde_json::to_vec(&json!({
                "licence_type": FOOD, "holder_id": XIAOMI, "holder_name": "小米科技有限责任公司",
                "seal_id": seal,
                "fields": {"operator": "小米科技有限责任公司", "premises": "北京市海淀区"}
            }))
            .unwrap(),
        );

        // `CERTGATE_BENCH_ONLY=issuance` (or `get`, `whoami`, `verify`): that load alone at the
        // first concurrency for `CERTGATE_BENCH_SECONDS` (default 20), then stop, so that a
        // profiler attached to the printed pid sees that load and nothing else.
        if let Ok(only) = std::env::var("CERTGATE_BENCH_ONLY") {
            let conns = concurrencies[0];
            let seconds = env_or("CERTGATE_BENCH_SECONDS", 20) as u64;
            let (who, method, route, headers, body) = match only.as_str() {
                "issuance" => (&market_client, Method::POST, "/v1/licences", JSON, issue_body.clone()),
                "get" => (&client, Method::GET, path.as_str(), PURPOSE, Bytes::new()),
                "whoami" => (&client, Method::GET, "/v1/whoami", &[][..], Bytes::new()),
                "verify" => (&client, Method::POST, "/v1/licences/verify", JSON, verify_body.clone()),
                other => panic!("CERTGATE_BENCH_ONLY: issuance, get, whoami or verify, not {other}"),
            };
            eprintln!(
                "{only} alone over {conns} connections for {seconds} s; the gateway is pid {}",
                served.pid()
            );
            // Requests per round: each round opens its connections anew (not timed by the
            // bench's own rounds, but seen by a profiler here), so rounds are long.
            const ROUND: usize = 20_000;
            let started = std::time::Instant::now();
            let mut done = 0;
            while started.elapsed() < Duration::from_secs(seconds) {
                round_with(who, gw, method.clone(), route, headers, body.clone(), conns, ROUND).await;
                done += ROUND;
            }
            println!(
                "{only} alone, {conns} connections: {:.0}/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
            let _ = Command::new("kill")
                .args(["-TERM", &nginx.id().to_string()])
                .status();
            let _ = nginx.wait();
            served.stop();
            return;
        }
        let (gp, np) = (served.pid(), nginx.id());
        let started = std::time::Instant::now();
        let mut tables = Vec::new();
        let (mut g_hs, mut n_hs) = (Best::default(), Best::default());
        // certgate ÷ nginx in each round (the two measured one after the other): on a noisy
        // host their median is steadier than the ratio of the two sides' best rounds.
        let mut per_round: Vec<(String, Vec<f64>)> = Vec::new();
        let mut hs_rounds = Vec::new();
        for &conns in &concurrencies {
            let get = |addr: SocketAddr, path: String, headers: &'static [(&'static str, &'static str)], n: usize| {
                let client = client.clone();
                async move { round_with(&client, addr, Method::GET, &path, headers, Bytes::new(), conns, n).await }
            };
            let post = |addr: SocketAddr, path: &'static str, n: usize| {
                let (client, body) = (client.clone(), verify_body.clone());
                async move { round_with(&client, addr, Method::POST, path, JSON, body, conns, n).await }
            };
            let issue = |n: usize| {
                let (client, body) = (market_client.clone(), issue_body.clone());
                async move { round_with(&client, gw, Method::POST, "/v1/licences", JSON, body, conns, n).await }
            };
            // Warm both up.
            get(gw, path.clone(), PURPOSE, conns * 20).await;
            get(ng, "/licence".into(), &[], conns * 20).await;
            let (mut g_get, mut n_get, mut g_ver, mut n_ver) = Default::default();
            let (mut g_who, mut n_who, mut g_iss) = (Best::default(), Best::default(), Best::default());
            let (mut get_rounds, mut who_rounds) = (Vec::new(), Vec::new());
            for r in 0..rounds {
                let (n1, g1) = (
                    busy(np, get(ng, "/licence".into(), &[], requests)).await,
                    busy(gp, get(gw, path.clone(), PURPOSE, requests)).await,
                );
                let (n4, g4) = (
                    busy(np, get(ng, "/whoami".into(), &[], requests)).await,
                    busy(gp, get(gw, "/v1/whoami".into(), &[], requests)).await,
                );
                let (n2, g2) = (
                    busy(np, post(ng, "/verify", requests)).await,
                    busy(gp, post(gw, "/v1/licences/verify", requests)).await,
                );
                let g5 = busy(gp, issue(requests / 4)).await;
                println!(
                    "{conns} connections, round {r}: GET certgate {:.0}/s nginx {:.0}/s; whoami certgate {:.0}/s nginx {:.0}/s; verify certgate {:.0}/s nginx {:.0}/s; issuance certgate {:.0}/s",
                    g1.0.rps, n1.0.rps, g4.0.rps, n4.0.rps, g2.0.rps, n2.0.rps, g5.0.rps
                );
                get_rounds.push(g1.0.rps / n1.0.rps);
                who_rounds.push(g4.0.rps / n4.0.rps);
                Best::offer(&mut g_get, g1);
                Best::offer(&mut n_get, n1);
                Best::offer(&mut g_who, g4);
                Best::offer(&mut n_who, n4);
                Best::offer(&mut g_ver, g2);
                Best::offer(&mut n_ver, n2);
                Best::offer(&mut g_iss, g5);
                if conns == concurrencies[0] {
                    let (n3, g3) = (
                        busy(np, handshakes(&client, ng, conns, handshake_count)).await,
                        busy(gp, handshakes(&client, gw, conns, handshake_count)).await,
                    );
                    println!(
                        "{conns} tasks, round {r}: handshakes certgate {:.0}/s nginx {:.0}/s",
                        g3.0.rps, n3.0.rps
                    );
                    hs_rounds.push(g3.0.rps / n3.0.rps);
                    Best::offer(&mut g_hs, g3);
                    Best::offer(&mut n_hs, n3);
                }
            }
            per_round.push((format!("cached licence GET, {conns} connections"), get_rounds));
            per_round.push((format!("`GET /v1/whoami`, {conns} connections"), who_rounds));
            tables.push((conns, g_get, n_get, g_who, n_who, g_ver, n_ver, g_iss));
        }
        // Memory after a minute of load (the load above, then more GETs until a minute has
        // passed; `CERTGATE_BENCH_SOAK_SECONDS` changes the minute).
        let soak = Duration::from_secs(env_or("CERTGATE_BENCH_SOAK_SECONDS", 60) as u64);
        while started.elapsed() < soak {
            let c = concurrencies[0];
            round_with(&client, gw, Method::GET, &path, PURPOSE, Bytes::new(), c, c * 200).await;
        }
        let loaded_rss = memory_mib(served.pid(), "VmRSS:");
        let peak_rss = memory_mib(served.pid(), "VmHWM:");
        let nginx_loaded_rss = nginx_rss_mib(nginx.id());
        // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &nginx.id().to_string()])
            .status();
        let _ = nginx.wait();
        served.stop();

        println!();
        println!(
            "{requests} requests per keep-alive round ({} for issuance) over {concurrencies:?} mTLS connections, {handshake_count} full handshakes from {} tasks, best of {rounds} rounds; {} cores, servers {}",
            requests / 4,
            concurrencies[0],
            cores,
            if pin { "pinned to CPU 0 (nginx: 1 worker; openssl speed: 1 process)" } else { "not pinned" }
        );
        println!("(busy: the share of one core the server used during the measurement; below 100 % the load generator, not the server, set the pace)");
        println!(
            "(the data directory's disk: an 8 KiB append and fdatasync takes p50 {:.3} ms, p99 {:.3} ms; every certgate answer waits for one, nginx's for none)",
            ms(sync.0),
            ms(sync.1)
        );
        println!();
        println!("| measurement | certgate | peer | certgate ÷ peer | goal |");
        println!("|---|---|---|---|---|");
        let row = |what: &str, (g, gb): &(Round, f64), (n, nb): &(Round, f64), target: &str| {
            println!(
                "| {what} | {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; busy {:.0} %) | nginx {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; busy {:.0} %) | {:.2} | {target} |",
                g.rps, ms(g.p50), ms(g.p99), gb * 100.0, n.rps, ms(n.p50), ms(n.p99), nb * 100.0, g.rps / n.rps
            );
        };
        let speed_row = |what: &str, (g, gb): &(Round, f64), peer: f64, op: &str, target: &str| {
            println!(
                "| {what} | {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; busy {:.0} %) | `openssl speed ecdsap256` {op} {peer:.0}/s | {:.2} | {target} |",
                g.rps, ms(g.p50), ms(g.p99), gb * 100.0, g.rps / peer
            );
        };
        for (conns, g_get, n_get, g_who, n_who, g_ver, n_ver, g_iss) in &tables {
            let first = *conns == concurrencies[0];
            row(
                &format!("cached licence GET, access log on ({} bytes), {conns} connections", licence_bytes.len()),
                g_get.get(),
                n_get.get(),
                if first { "≥ 1.0" } else { "≥ 0.6" },
            );
            if first {
                let (g, n) = (&g_get.get().0, &n_get.get().0);
                println!(
                    "| p99 latency of that GET, {conns} connections | {:.2} ms | nginx {:.2} ms | {:.2} | ≤ 2.0 |",
                    ms(g.p99), ms(n.p99), g.p99.as_secs_f64() / n.p99.as_secs_f64()
                );
            }
            row(
                &format!("`GET /v1/whoami`, access log on ({} bytes), {conns} connections", whoami_bytes.len()),
                g_who.get(),
                n_who.get(),
                if first { "≥ 1.0" } else { "" },
            );
            row(
                &format!("licence verification, access log on ({} bytes), {conns} connections, against nginx answering the same bytes", verify_bytes.len()),
                g_ver.get(),
                n_ver.get(),
                "",
            );
            speed_row(
                &format!("licence verification (ES256), {conns} connections"),
                g_ver.get(),
                speed_verify,
                "verify",
                if first { "≥ 0.6" } else { "" },
            );
            speed_row(
                &format!("ES256 issuance, {conns} connections"),
                g_iss.get(),
                speed_sign,
                "sign",
                if first { "≥ 0.3" } else { "" },
            );
        }
        row("full mTLS handshakes", g_hs.get(), n_hs.get(), "≥ 2.0");
        println!(
            "| resident memory, idle | {idle_rss:.1} MiB | nginx {nginx_idle_rss:.1} MiB | {:.2} | ≤ 64 MiB |",
            idle_rss / nginx_idle_rss
        );
        println!(
            "| resident memory after {:.0} s of load (peak) | {loaded_rss:.1} MiB ({peak_rss:.1} MiB) | nginx {nginx_loaded_rss:.1} MiB | {:.2} | ≤ 96 MiB |",
            started.elapsed().as_secs_f64(),
            loaded_rss / nginx_loaded_rss
        );
        per_round.push(("full mTLS handshakes".into(), hs_rounds));
        println!();
        println!("certgate ÷ nginx within each round (both sides measured one after the other):");
        println!();
        println!("| measurement | each round | median | lowest |");
        println!("|---|---|---|---|");
        for (what, ratios) in &per_round {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            let mut sorted = ratios.clone();
            sorted.sort_by(f64::total_cmp);
            let median = match sorted.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => sorted[n / 2],
                n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
            };
            println!(
                "| {what} | {} | {median:.2} | {:.2} |",
                each.join(" / "),
                sorted.first().copied().unwrap_or(f64::NAN)
            );
        }
    });
}

/// p50 and p99 of 1,000 appends of 8 KiB with `fdatasync`, in `dir`.
fn fdatasync_latency(dir: &std::path::Path) -> (Duration, Duration) {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 8192];
    let mut t: Vec<Duration> = (0..1000)
        .map(|_| {
            let start = std::time::Instant::now();
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
            start.elapsed()
        })
        .collect();
    drop(f);
    let _ = std::fs::remove_file(&path);
    t.sort_unstable();
    (t[500], t[990])
}

/// ECDSA P-256 signs and verifies per second by `openssl speed` (one process, on CPU 0 when
/// pinned, as the servers are).
fn openssl_speed(pin: bool) -> (f64, f64) {
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "openssl"]);
        c
    } else {
        Command::new("openssl")
    };
    let out = cmd
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .stderr(Stdio::null())
        .output()
        .expect("openssl speed runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  12000.0"
    let line = text
        .lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .unwrap_or_else(|| panic!("no nistp256 line in {text}"));
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = nums.len();
    (nums[n - 2], nums[n - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
