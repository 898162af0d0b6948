//! The real `certgate` binary: `config check`, `pki`, `serve` with signals, and `demo`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use certgate_tests::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_bad_key() {
    let pki = TestPki::new();
    let config = write_config(&pki, "", &standard_departments());
    let out = certgate(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (6 departments"));
    // The test configuration's public URL (https://localhost, port 443) names no listener.
    assert!(
        stderr(&out).contains("warning: licensing.public_url (https://localhost) names port 443"),
        "{}",
        stderr(&out)
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:8443\"")
        .replace("https://localhost", "https://gw.example:8443");
    std::fs::write(&config, text).unwrap();
    let out = certgate(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let config = write_config(&pki, "", &standard_departments());

    let cases: &[(&str, &str, &str)] = &[
        ("max_connections = \"lots\"", "", "server.max_connections"),
        ("data_dir = 5", "", "server.data_dir"),
        ("colour = \"blue\"", "", "colour"),
        (
            "",
            "\n[[departments]]\nid = \"11110105MB0000001X\"\nname = \"x\"\nroles = [\"consumer\"]\n",
            "departments[6].id",
        ),
        (
            "",
            "\n[[departments]]\nid = \"11110105MB0000007Y\"\nname = \"x\"\nroles = [\"king\"]\n",
            "departments[6].roles[0]",
        ),
    ];
    for (server_extra, more, key) in cases {
        write_config(&pki, server_extra, &(standard_departments() + more));
        let out = certgate(&["config", "check", config.to_str().unwrap()]);
        assert!(!out.status.success(), "{key}: a broken file passed");
        assert!(
            stderr(&out).contains(key),
            "{key} not named in: {}",
            stderr(&out)
        );
    }

    // TLS material that does not parse is named by its key too.
    std::fs::write(
        pki.pki_dir().join("crl.pem"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    write_config(&pki, "", &standard_departments());
    let out = certgate(&["config", "check", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tls.crls[0]"), "{}", stderr(&out));

    let out = certgate(&["config", "check", "/nonexistent/certgate.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read configuration file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn regions_looks_up_every_division_and_refuses_bad_input() {
    let out = certgate(&["regions", "江夏"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "420115\t江夏区\t武汉市 < 湖北省\n"
    );
    let out = certgate(&["regions", "4290", "--limit", "2"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("429000\t湖北省直辖县级行政区划\t湖北省\n429004\t仙桃市"),
        "{text}"
    );
    // Three more divisions of the table, and the former codes 4290xx.
    let more = 3 + policies::codes::find_former("4290").count();
    assert!(text.contains(&format!("… {more} more")), "{text}");
    let out = certgate(&["regions", "--limit", "5000"]);
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() > 3200);
    for (args, says) in [
        (
            &["regions", "不存在的区"][..],
            "no administrative division matches",
        ),
        (&["regions", "a\u{7}b"][..], "without control characters"),
        (&["regions", "--limit", "0"][..], "between 1 and 5000"),
    ] {
        let out = certgate(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn regions_and_tags_print_the_shipped_tables_and_a_local_vocabulary() {
    let out = certgate(&["regions", "--count"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("3222 divisions: 34 provincial, 342 prefectural, 2846 county-level"),
        "{text}"
    );
    let out = certgate(&["regions", "崇文"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "110103\t崇文区\t(withdrawn or changed, now within 110101 东城区, 2010; read as 110101)\n"
    );
    let out = certgate(&["industries", "--count"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1972 industries: 20 sections (门类), 97 divisions (大类), 473 groups (中类), 1382 classes (小类) (GB/T 4754-2017, policies/data/gbt4754.tsv)\n"
    );
    let out = certgate(&["industries", "6513"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "I6513\t应用软件开发\tI651 软件开发 < I65 软件和信息技术服务业 < I 信息传输、软件和信息技术服务业\n"
    );
    let out = certgate(&["industries", "餐饮", "--limit", "2"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .ends_with("… 4 more (narrow the query or raise --limit)\n")
    );
    let out = certgate(&["tags", "--count"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "34 tags (0 local)\n");
    let out = certgate(&["tags", "首台"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("首台（套）\t资质认定\t"), "{text}");
    assert!(text.contains("aliases: 首台套"), "{text}");

    // A local vocabulary named by the configuration joins the list; a clash is refused by
    // its key.
    let pki = TestPki::new();
    let config = write_config(&pki, "", &standard_departments());
    let local = config.with_file_name("local-tags.tsv");
    std::fs::write(
        &local,
        "光谷瞪羚\t荣誉称号\t武汉东湖新技术开发区管委会\t各地自行认定\t光谷瞪羚企业\t东湖高新区评定的高成长企业。\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[policies]\nlocal_tags = \"local-tags.tsv\"\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = certgate(&["tags", "光谷", "--config", cfg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("光谷瞪羚\t荣誉称号\t武汉东湖新技术开发区管委会\t(local)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&local, "新标签\t荣誉称号\t某部门\t依据\t高企\t定义。\n").unwrap();
    let out = certgate(&["config", "check", cfg]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("policies.local_tags") && stderr(&out).contains("高新技术企业"),
        "{}",
        stderr(&out)
    );
    for (args, says) in [
        (&["tags", "没有这种标签"][..], "no tag matches"),
        (&["tags", "a\u{1b}[2J"][..], "without control characters"),
    ] {
        let out = certgate(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn pki_commands_issue_and_revoke_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let d = d.to_str().unwrap();
    assert!(certgate(&["pki", "init", "--dir", d]).status.success());
    let again = certgate(&["pki", "init", "--dir", d]);
    assert!(!again.status.success() && stderr(&again).contains("already holds a CA"));

    let out = certgate(&[
        "pki",
        "issue-client",
        "--dir",
        d,
        "--dept",
        APPROVAL,
        "--name",
        "approval",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(dir.path().join("pki/approval.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    for (args, needle) in [
        (
            vec!["--dept", "11110105MB0000001X", "--name", "x"],
            "not a valid USCC",
        ),
        (
            vec!["--dept", APPROVAL, "--name", "../escape"],
            "not a valid certificate name",
        ),
        (
            vec!["--dept", APPROVAL, "--name", "approval"],
            "already exists",
        ),
    ] {
        let mut all = vec!["pki", "issue-client", "--dir", d];
        all.extend(args);
        let out = certgate(&all);
        assert!(!out.status.success(), "{all:?}");
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
    }
    let out = certgate(&[
        "pki",
        "issue-client",
        "--dir",
        "/nonexistent",
        "--dept",
        APPROVAL,
        "--name",
        "x",
    ]);
    assert!(!out.status.success() && stderr(&out).contains("holds no CA"));

    let out = certgate(&["pki", "revoke", "--dir", d, "--name", "approval"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = certgate(&["pki", "revoke", "--dir", d, "--name", "approval"]);
    assert!(!out.status.success() && stderr(&out).contains("already revoked"));
    let out = certgate(&["pki", "revoke", "--dir", d, "--name", "nobody"]);
    assert!(!out.status.success() && stderr(&out).contains("no certificate named"));
}

/// A `certgate` child process that is killed if the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    let mut pki = TestPki::new();
    let approval = pki.department("approval", APPROVAL);
    let ops = pki.department("ops", OPS);
    let config = write_config(&pki, "", &standard_departments());
    let mut served = Served::start(&config);
    let api = served.api;
    let ca = pki.ca_pem();

    let approval_client = Client::new(&ca, Some(&approval), Proto::H1);
    assert_eq!(
        approval_client.get(api, "/v1/whoami").await.unwrap().status,
        StatusCode::OK
    );

    // SIGHUP picks up a new CRL: a fresh handshake of the revoked certificate fails.
    pki.revoke("approval");
    served.signal("-HUP");
    let mut refused = false;
    for _ in 0..100 {
        // A new client each time: no session to resume, so every try is a full handshake.
        let fresh = Client::new(&ca, Some(&approval), Proto::H1);
        if fresh.get(api, "/v1/whoami").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "SIGHUP did not load the new CRL");

    // SIGTERM with a request in flight: the request finishes, then the process exits 0.
    let admin = Client::new(&ca, Some(&ops), Proto::H1);
    let mut tls = admin.tls(api).await.unwrap();
    tls.write_all(
        b"POST /v1/admin/reload HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n{ ",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // A probe of the operations listener stalls half-way through its request head: it must
    // not hold the process up.
    let mut scraper = tokio::net::TcpStream::connect(served.ops).await.unwrap();
    scraper
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        admin.get(api, "/v1/whoami").await.is_err(),
        "new connection accepted after SIGTERM"
    );
    tls.write_all(b" }").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = served.try_wait() {
            assert!(status.success(), "certgate exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certgate did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(scraper);
}

/// Starts `certgate demo` in `dir` on ephemeral ports and returns it with what it printed.
fn start_demo(dir: &std::path::Path) -> (Running, Vec<String>) {
    start_demo_with(dir, &[])
}

fn start_demo_with(dir: &std::path::Path, extra: &[&str]) -> (Running, Vec<String>) {
    let mut child = Command::new(certgate_bin())
        .args(["demo", "--dir", dir.to_str().unwrap()])
        .args(extra)
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut printed = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Stop with");
        printed.push(line);
        if done {
            break;
        }
    }
    (running, printed)
}

#[test]
fn demo_can_start_with_an_empty_knowledge_base() {
    let dir = tempfile::tempdir().unwrap();
    let (running, printed) = start_demo_with(&dir.path().join("demo"), &["--empty-knowledge-base"]);
    assert!(
        printed
            .iter()
            .any(|l| l.contains("The knowledge base is empty")),
        "{}",
        printed.join("\n")
    );
    assert!(!printed.iter().any(|l| l.contains("eligible-enterprises")));
    // The search line still works, and finds nothing: no policy was loaded.
    let search = printed
        .iter()
        .find(|l| l.starts_with("curl") && l.contains("/v1/policies/search"))
        .unwrap();
    let out = Command::new("sh").args(["-c", search]).output().unwrap();
    assert!(out.status.success(), "{search}: {}", stderr(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(0), "{body}");
    drop(running);
}

#[test]
fn demo_prints_curl_commands_that_work_and_reuses_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (running, printed) = start_demo(&demo_dir);
    let curl = |pred: &dyn Fn(&str) -> bool| -> String {
        printed
            .iter()
            .find(|l| l.starts_with("curl") && pred(l))
            .unwrap_or_else(|| panic!("no such curl line in:\n{}", printed.join("\n")))
            .clone()
    };
    let run = |cmd: &str| Command::new("sh").args(["-c", cmd]).output().unwrap();

    let whoami = curl(&|l| l.contains("approval.pem") && l.ends_with("/v1/whoami"));
    let out = run(&whoami);
    assert!(out.status.success(), "{whoami}: {}", stderr(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["department"], "11110105MB0000001C");
    assert_eq!(body["name"], "行政审批局");

    let reload = curl(&|l| l.contains("ops.pem") && l.contains("/v1/admin/reload"));
    let out = run(&reload);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["departments"],
        9
    );

    let refused = curl(&|l| l.contains("approval.pem") && l.contains("/v1/admin/reload"));
    let out = run(&refused);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["code"],
        "CG-AUTH-006"
    );

    let without = curl(&|l| !l.contains("--cert ") && l.contains("https://"));
    let out = run(&without);
    assert!(
        !out.status.success(),
        "curl without a certificate succeeded: {without}"
    );

    let health = curl(&|l| l.ends_with("/healthz"));
    assert_eq!(String::from_utf8_lossy(&run(&health).stdout), "ok\n");

    // The licence walk-through, in the printed order: issue, query, verify, check, revoke,
    // verify again.
    let json_of = |cmd: &str| -> serde_json::Value {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let issued = json_of(&curl(&|l| l.contains("issue-business.json")));
    assert!(
        issued["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("1.2.156.3005.2.")),
        "{issued}"
    );
    // The licence names the status list where this demo serves it (it listens on a port of
    // its own, not the configuration's 8443).
    let api = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("mTLS API:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let jwt = issued["credential"]
        .as_str()
        .unwrap()
        .split('~')
        .next()
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwt.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        payload["status"]["status_list"]["uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{api}/v1/status-lists/")),
        "{payload} does not point at {api}"
    );
    let query = curl(&|l| l.contains("X-Purpose: M-BIZ-001") && !l.contains("/check"));
    assert_eq!(json_of(&query)["disclosed"]["legal_representative"], "雷军");
    let no_purpose = curl(&|l| {
        l.contains("approval.pem")
            && l.contains("/v1/licences/1.2.156")
            && !l.contains("X-Purpose")
            && !l.contains("/check")
    });
    assert_eq!(json_of(&no_purpose)["code"], "CG-REQ-006");
    let verify = curl(&|l| l.contains("verify-business.json"));
    assert_eq!(json_of(&verify)["valid"], true);
    let sealed = json_of(&curl(&|l| l.contains("sign-contract.json")));
    assert!(sealed["ses_signature_base64"].is_string(), "{sealed}");
    let verdict = json_of(&curl(&|l| l.contains("verify-contract.json")));
    assert_eq!(verdict["valid"], true, "{verdict}");
    let check = json_of(&curl(&|l| l.contains("check-business.json")));
    assert_eq!(check["results"]["legal_representative"], "match");
    assert_eq!(
        json_of(&curl(&|l| l.contains("holder=")))["code"],
        "CG-LIC-002"
    );
    assert!(json_of(&curl(&|l| l.contains("consent.json")))["token"].is_string());

    // Shared data and proofs, against the demo's own source systems.
    let household = json_of(&curl(&|l| {
        l.contains("M-HUKOU-001") && l.contains("/v1/data/")
    }));
    assert_eq!(
        household["fields"]["citizen_id"], "1101**********002X",
        "{household}"
    );
    assert_eq!(household["cache"], "miss");
    let masked = json_of(&curl(&|l| {
        l.contains("market.pem") && l.contains("/v1/data/")
    }));
    assert_eq!(masked["fields"], serde_json::json!({"name": "张**"}));
    assert_eq!(masked["cache"], "hit");
    let refused = json_of(&curl(&|l| l.contains("M-OTHER-001")));
    assert_eq!(refused["code"], "CG-DAT-002");
    let dropped = json_of(&curl(&|l| {
        l.contains("police.pem") && l.contains("/invalidate")
    }));
    assert_eq!(dropped["dataset"], "household");
    let yes = json_of(&curl(&|l| {
        l.contains("proof-xiaomi.json") && !l.contains("verify")
    }));
    assert_eq!(yes["result"], true, "{yes}");
    let no = json_of(&curl(&|l| l.contains("proof-huawei.json")));
    assert_eq!(no["result"], false, "{no}");
    let verdict = json_of(&curl(&|l| l.contains("/v1/proofs/verify")));
    assert_eq!(verdict["valid"], true, "{verdict}");

    // Policy matching against the sample policies and the generated population.
    let matched = json_of(&curl(&|l| l.contains("match.json")));
    assert!(
        matched["eligible"].as_array().is_some_and(|e| e.len() >= 2),
        "{matched}"
    );
    assert!(!matched["almost_eligible"].as_array().unwrap().is_empty());
    let page = json_of(&curl(&|l| l.contains("/eligible-enterprises")));
    assert_eq!(page["enterprises"].as_array().unwrap().len(), 5, "{page}");
    let hits = json_of(&curl(&|l| l.contains("q=专精特新")));
    assert!(
        hits.as_array().is_some_and(|h| !h.is_empty()
            && h.iter().all(|x| x["category"] == "免申即享")
            && h.iter()
                .any(|x| x["snippet"].as_str().unwrap().contains("<em>专精特新</em>"))),
        "{hits}"
    );
    let feed = json_of(&curl(&|l| l.contains("/v1/push-feed")));
    assert_eq!(feed["events"].as_array().unwrap().len(), 3, "{feed}");
    assert_eq!(
        json_of(&curl(&|l| l.contains("revoke.json")))["status"],
        "revoked"
    );
    let again = json_of(&verify);
    assert_eq!(
        (again["valid"].as_bool(), again["status"].as_str()),
        (Some(false), Some("revoked"))
    );
    // 小米 is no longer registered: its contract seal signs nothing now.
    let refused = json_of(&curl(&|l| l.contains("sign-contract.json")));
    assert_eq!(refused["code"], "CG-LIC-004", "{refused}");
    let entries = json_of(&curl(&|l| l.contains("/v1/audit/entries?resource=")));
    assert!(
        entries["entries"].as_array().is_some_and(|e| e.len() >= 3),
        "{entries}"
    );
    let checkpoint = run(&curl(&|l| l.ends_with("/v1/audit/checkpoint")));
    assert!(checkpoint.status.success());
    let list = run(&curl(&|l| l.ends_with("/v1/status-lists/0")));
    assert!(list.status.success() && list.stdout.starts_with(b"eyJ"));

    for file in [
        "pki/ca.pem",
        "pki/server.pem",
        "pki/server.key",
        "pki/crl.pem",
        "certgate.toml",
        "data",
    ] {
        assert!(demo_dir.join(file).exists(), "{file} missing");
    }
    for name in [
        "approval",
        "market",
        "audit",
        "push",
        "app",
        "ops",
        "police",
        "tax",
        "data",
        "gateway-upstream",
    ] {
        assert!(
            demo_dir.join(format!("pki/{name}.pem")).exists(),
            "{name}.pem missing"
        );
        let mode = std::fs::metadata(demo_dir.join(format!("pki/{name}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key");
    }
    drop(running);

    // A second run reuses the PKI and configuration: the same CA, and the same certificates work.
    let ca_before = std::fs::read(demo_dir.join("pki/ca.pem")).unwrap();
    let approval_before = std::fs::read(demo_dir.join("pki/approval.pem")).unwrap();
    let (_running, printed) = start_demo(&demo_dir);
    assert_eq!(
        std::fs::read(demo_dir.join("pki/ca.pem")).unwrap(),
        ca_before
    );
    assert_eq!(
        std::fs::read(demo_dir.join("pki/approval.pem")).unwrap(),
        approval_before
    );
    let whoami = printed
        .iter()
        .find(|l| l.starts_with("curl") && l.contains("approval.pem") && l.ends_with("/v1/whoami"))
        .unwrap_or_else(|| panic!("no whoami line in:\n{}", printed.join("\n")));
    assert!(run(whoami).status.success());
}

#[test]
fn enterprises_generate_is_deterministic_and_imports_report_bad_lines() {
    let pki = TestPki::new();
    let config = write_config(&pki, "", &standard_departments());
    let config = config.to_str().unwrap();
    let a = certgate(&["enterprises", "generate", "--count", "50", "--seed", "3"]);
    let b = certgate(&["enterprises", "generate", "--count", "50", "--seed", "3"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout, "same count and seed, same population");
    let c = certgate(&["enterprises", "generate", "--count", "50", "--seed", "4"]);
    assert_ne!(a.stdout, c.stdout);
    let text = String::from_utf8(a.stdout).unwrap();
    assert_eq!(text.lines().count(), 50);
    for line in text.lines() {
        policies::Profile::from_json(line).unwrap();
    }
    let bad = certgate(&[
        "enterprises",
        "generate",
        "--count",
        "1",
        "--as-of",
        "2026-13-01",
    ]);
    assert!(!bad.status.success() && stderr(&bad).contains("--as-of"));

    // Profiles: a bad line is named by line and field; the good ones are kept.
    let dir = pki.dir.path();
    let profiles = dir.join("profiles.jsonl");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.insert(2, lines[0].replace("\"region\":\"", "\"region\":\"9"));
    std::fs::write(&profiles, lines.join("\n")).unwrap();
    let out = certgate(&[
        "enterprises",
        "import",
        "--config",
        config,
        profiles.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 3: `region`"),
        "{}",
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("50 stored"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A file with 50 faults (ten lines with five each, between good lines) reports all 50
    // in one run, each by line, field and value; a dry run reports the same and stores
    // nothing.
    let faulty = dir.join("faulty.jsonl");
    let mut lines: Vec<String> = Vec::new();
    for (i, good) in text.lines().take(20).enumerate() {
        if i % 2 == 0 {
            lines.push(good.to_owned());
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(good).unwrap();
        v["uscc"] = "91110108551385082X".into();
        v["region"] = "429099".into();
        v["industry"] = "Z99".into();
        v["tags"] = serde_json::json!(["瞪羚", "绿色工厂示范"]);
        v["employees"] = (-1).into();
        lines.push(v.to_string());
    }
    std::fs::write(&faulty, lines.join("\n")).unwrap();
    for dry in [true, false] {
        let mut args = vec![
            "enterprises",
            "import",
            "--config",
            config,
            faulty.to_str().unwrap(),
        ];
        if dry {
            args.push("--dry-run");
        }
        let out = certgate(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        let faults: Vec<&str> = err.lines().filter(|l| l.starts_with("line ")).collect();
        assert_eq!(faults.len(), 50, "{err}");
        for field in ["uscc", "region", "industry", "tags[1]", "employees"] {
            assert_eq!(
                faults
                    .iter()
                    .filter(|l| l.contains(&format!("`{field}`")))
                    .count(),
                10,
                "{field}: {err}"
            );
        }
        assert!(
            err.contains("line 2: `tags[1]`: `绿色工厂示范` is not a known tag; nearest: 绿色工厂"),
            "{err}"
        );
        assert!(err.contains("(found \"Z99\")"), "{err}");
        assert!(err.contains("10 line(s) refused with 50 fault(s)"), "{err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(if dry {
                "10 would be stored"
            } else {
                "10 stored"
            }),
            "{stdout}"
        );
        assert!(
            err.contains("profiles: 100% 20 lines read"),
            "progress: {err}"
        );
    }

    // Policies: the sample file imports cleanly, and again as unchanged.
    let import = |file: &str| certgate(&["policies", "import", "--config", config, file]);
    let policies_file = dir.join("policies.jsonl");
    std::fs::write(&policies_file, policies::SAMPLE_POLICIES).unwrap();
    let out = import(policies_file.to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));
    let n = policies::SAMPLE_POLICIES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} stored")));
    let out = import(policies_file.to_str().unwrap());
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("0 stored, {n} unchanged")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A changed policy without a new version is refused.
    let first = policies::SAMPLE_POLICIES.lines().next().unwrap();
    std::fs::write(
        &policies_file,
        first.replacen("\"title\":\"", "\"title\":\"改", 1),
    )
    .unwrap();
    let out = import(policies_file.to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 1: `version`"),
        "{}",
        stderr(&out)
    );
    let out = import("/nonexistent.jsonl");
    assert!(!out.status.success() && stderr(&out).contains("/nonexistent.jsonl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_verify_checks_a_sealed_document_offline_and_names_what_fails() {
    use base64::Engine;
    let pki = TestPki::new();
    let config = write_config(&pki, "", &standard_departments());
    let gw = TestGateway::start(&config).await;
    let mut market = connect_departments(&pki, gw.addr, &[("market", MARKET)])
        .await
        .remove(0);
    let seal = create_seal(&mut market, "SM2SM3").await;
    let pdf = b"%PDF-1.7\n a lease \n%%EOF\n".to_vec();
    let r = market
        .json(
            http::Method::POST,
            &format!("/v1/seals/{seal}/sign"),
            &[],
            &serde_json::json!({
                "document_base64": base64::engine::general_purpose::STANDARD.encode(&pdf),
                "name": "lease.pdf"
            }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let ses = r.json()["ses_signature_base64"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = pki.dir.path();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    std::fs::write(dir.join("lease.pdf"), &pdf).unwrap();
    std::fs::write(dir.join("lease.ses.b64"), &ses).unwrap();
    std::fs::write(
        dir.join("lease.ses"),
        base64::engine::general_purpose::STANDARD
            .decode(&ses)
            .unwrap(),
    )
    .unwrap();
    let verify = |doc: &str, sig: &str| {
        certgate(&[
            "seal",
            "verify",
            "--config",
            config.to_str().unwrap(),
            "--doc",
            &path(doc),
            "--sig",
            &path(sig),
        ])
    };
    // Base64 as the API returns it, and DER: both verify, with every check listed.
    for sig in ["lease.ses.b64", "lease.ses"] {
        let out = verify("lease.pdf", sig);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert!(text.contains(&seal), "{text}");
        assert!(text.contains("ok   document_digest"), "{text}");
        assert!(text.contains("ok   seal_maker_signature"), "{text}");
    }
    // A changed document fails, naming the check.
    let mut changed = pdf.clone();
    changed[2] ^= 1;
    std::fs::write(dir.join("changed.pdf"), &changed).unwrap();
    let out = verify("changed.pdf", "lease.ses");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL document_digest"));
    assert!(stderr(&out).contains("did NOT verify"), "{}", stderr(&out));
    // Garbage and missing files: a clear error, no panic.
    std::fs::write(dir.join("garbage"), "not a signature at all!").unwrap();
    let out = verify("lease.pdf", "garbage");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("neither DER nor base64"),
        "{}",
        stderr(&out)
    );
    let out = verify("missing.pdf", "lease.ses");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    std::fs::write(
        dir.join("cut.ses"),
        &std::fs::read(dir.join("lease.ses")).unwrap()[..50],
    )
    .unwrap();
    let out = verify("lease.pdf", "cut.ses");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL format"));
}
