//! Hostile and careless clients: oversized bodies, slow headers, slow handshakes, too many
//! connections; and graceful shutdown.

use std::time::Duration;

use bytes::Bytes;
use certgate_tests::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_gets_413_declared_or_chunked() {
    let pki = TestPki::new();
    let ops = pki.department("ops", OPS);
    let gw = TestGateway::standard(&pki, "max_body_bytes = 1024").await;
    for proto in [Proto::H1, Proto::H2] {
        let client = Client::new(&pki.ca_pem(), Some(&ops), proto);
        let reply = client
            .post(gw.addr, "/v1/admin/reload", Bytes::from(vec![b'x'; 4096]))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");
        assert_eq!(reply.code(), "CG-REQ-003");
        // Exactly at the limit is accepted (`{}` and white space: the route takes no body).
        let mut at_limit = vec![b' '; 1024];
        (at_limit[0], at_limit[1023]) = (b'{', b'}');
        let reply = client
            .post(gw.addr, "/v1/admin/reload", Bytes::from(at_limit))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{proto:?}");
    }

    // No Content-Length: the limit is enforced while reading the chunks.
    let mut tls = Client::new(&pki.ca_pem(), Some(&ops), Proto::H1)
        .tls(gw.addr)
        .await
        .unwrap();
    let mut request =
        b"POST /v1/admin/reload HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("CG-REQ-003"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_dribbled_slower_than_the_timeout_close_the_connection() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let gw = TestGateway::standard(&pki, "header_read_timeout_ms = 500").await;
    let tls = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1)
        .tls(gw.addr)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let dribble = tokio::spawn(async move {
        let head = b"GET /v1/whoami HTTP/1.1\r\nhost: localhost\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut sent = 0;
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() || writer.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway kept a slow-header connection open"
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "a dribbled request was served"
    );
    let sent = dribble.await.unwrap();
    assert!(
        sent < 60,
        "the whole head got through ({sent} bytes) before the connection closed"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let pki = TestPki::new();
    let gw = TestGateway::standard(&pki, "handshake_timeout_ms = 300").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {read:?}"
    );
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains("certgate_tls_handshake_failures_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_counted() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let gw = TestGateway::standard(&pki, "max_connections = 2").await;
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H1);
    let mut first = client.connect(gw.addr).await.unwrap();
    let mut second = client.connect(gw.addr).await.unwrap();
    for conn in [&mut first, &mut second] {
        let reply = conn.get("/v1/whoami").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert!(
        client.get(gw.addr, "/v1/whoami").await.is_err(),
        "third connection served"
    );
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains("certgate_rejected_connections_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("certgate_open_connections 2"), "{metrics}");

    drop(first);
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if client.get(gw.addr, "/v1/whoami").await.is_ok() {
            served = true;
            break;
        }
    }
    assert!(served, "a freed connection slot was never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight_and_refuses_new_connections() {
    let pki = TestPki::new();
    let ops = pki.department("ops", OPS);
    let mut gw = TestGateway::standard(&pki, "").await;
    let client = Client::new(&pki.ca_pem(), Some(&ops), Proto::H1);
    let (ready, _) = gw.ops_get("/readyz").await;
    assert_eq!(ready, 200);

    // A request whose body is still arriving when shutdown begins.
    let mut tls = client.tls(gw.addr).await.unwrap();
    tls.write_all(
        b"POST /v1/admin/reload HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{    ",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        client.get(gw.addr, "/v1/whoami").await.is_err(),
        "new connection accepted during shutdown"
    );
    let (ready, _) = gw.ops_get("/readyz").await;
    assert_eq!(ready, 503, "/readyz must report shutting down");
    assert!(
        !stopped.is_finished(),
        "shutdown did not wait for the request in flight"
    );

    tls.write_all(b"    }").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"departments\""), "{text}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_listener_serves_health_readiness_and_metrics() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let gw = TestGateway::standard(&pki, "").await;
    let client = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2);
    client.get(gw.addr, "/v1/whoami").await.unwrap();
    client.get(gw.addr, "/v1/missing").await.unwrap();
    assert_eq!(gw.ops_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(gw.ops_get("/readyz").await.0, 200);
    let (status, metrics) = gw.ops_get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        format!(
            "certgate_http_requests_total{{route=\"/v1/whoami\",status=\"200\",department=\"{APPROVAL}\"}} 1"
        ),
        format!(
            "certgate_http_requests_total{{route=\"unmatched\",status=\"404\",department=\"{APPROVAL}\"}} 1"
        ),
        "certgate_http_request_duration_seconds_count{route=\"/v1/whoami\"} 1".to_owned(),
        "certgate_open_connections".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle}:\n{metrics}");
    }
}

/// The embedded access log capped in size: when it fills, nothing more is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_fails_closed() {
    let pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let config = write_config_with_log(&pki, "", &standard_departments(), "max_db_pages = 40");
    let gw = TestGateway::start(&config).await;
    let mut conn = Client::new(&pki.ca_pem(), Some(&approval), Proto::H2)
        .connect(gw.addr)
        .await
        .unwrap();
    let mut failed = None;
    for i in 0..5000 {
        let reply = conn.get("/v1/whoami").await.unwrap();
        if reply.status != StatusCode::OK {
            failed = Some((i, reply));
            break;
        }
    }
    let (served, reply) = failed.expect("the capped log never filled");
    assert!(served > 10, "the log failed too early ({served})");
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "CG-LOG-001")
    );
    assert!(
        reply.json().get("department").is_none(),
        "data served unlogged"
    );
    // From now on nothing is served, and readiness says so.
    let reply = conn.get("/v1/whoami").await.unwrap();
    assert_eq!(reply.code(), "CG-LOG-001");
    assert_eq!(gw.ops_get("/readyz").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_413_for_an_oversized_body_over_http2_and_http1() {
    let pki = TestPki::new();
    let ops = pki.department("ops", OPS);
    let gw = TestGateway::standard(&pki, "").await;
    let big = pki.pki_dir().join("big.json");
    std::fs::write(&big, vec![b' '; 2_000_000]).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/admin/reload", gw.addr.port());
    for proto in ["--http2", "--http1.1"] {
        for chunked in [false, true] {
            // Five times each: the answer must not race the client's sending.
            for _ in 0..5 {
                let mut args = vec![
                    "-sS".to_owned(),
                    proto.to_owned(),
                    "--cacert".into(),
                    pki.ca_pem().display().to_string(),
                    "--cert".into(),
                    ops.cert_path.display().to_string(),
                    "--key".into(),
                    ops.key_path.display().to_string(),
                    "-H".into(),
                    "content-type: application/json".into(),
                    "--data-binary".into(),
                    format!("@{}", big.display()),
                    "-w".into(),
                    "\n%{http_code}".into(),
                    url.clone(),
                ];
                if chunked {
                    args.splice(
                        0..0,
                        ["-H".to_owned(), "transfer-encoding: chunked".to_owned()],
                    );
                }
                let out = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("curl")
                        .args(&args)
                        .output()
                        .unwrap()
                })
                .await
                .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.ends_with("\n413") && text.contains("CG-REQ-003"),
                    "{proto} chunked={chunked}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// `server.batch_scheduling` (on by default) runs every thread of the gateway under Linux's
/// `SCHED_BATCH`; turned off, the threads keep the default policy. Read from `/proc`, as
/// `chrt -p` reads it.
#[test]
fn the_gateways_threads_run_under_sched_batch_unless_the_setting_is_off() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    for (extra, policy) in [("", SCHED_BATCH), ("batch_scheduling = false", SCHED_OTHER)] {
        let pki = TestPki::new();
        let config = write_config(&pki, extra, &standard_departments());
        let served = Served::start(&config);
        let threads = thread_policies(served.pid());
        served.stop();
        // The main thread, the runtime's workers, the licence and access-log writers, …
        assert!(threads.len() >= 4, "{threads:?}");
        assert!(
            threads.iter().all(|(_, p)| *p == policy),
            "`{extra}`: {threads:?}"
        );
    }
}

/// Each thread of `pid` with its scheduling policy (field 41 of `/proc/PID/task/TID/stat`).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // a thread that ended meanwhile
        };
        // The name (field 2) is in parentheses and may hold spaces: count after the last `)`,
        // where field 3 begins.
        let (head, tail) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        let policy = tail
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        out.push((name, policy));
    }
    out
}
