//! `certgate demo`: a development PKI, a configuration with sample departments and an
//! embedded data directory, created on first run and reused afterwards.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cert_store::Uscc;
use time::OffsetDateTime;

use crate::config::Config;
use crate::pki::{ClientSpec, DevCa};

/// A sample department of the demo: file stem, USCC, name and roles.
#[derive(Debug)]
pub struct SampleDepartment {
    /// File stem of its client certificate in `pki/`.
    pub file: &'static str,
    /// Its unified social credit code (sample codes with valid check characters).
    pub id: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Its roles.
    pub roles: &'static [&'static str],
}

/// The departments the demo configures, each with a client certificate.
pub const SAMPLE_DEPARTMENTS: &[SampleDepartment] = &[
    SampleDepartment {
        file: "approval",
        id: "11110105MB0000001C",
        name: "行政审批局",
        roles: &["consumer"],
    },
    SampleDepartment {
        file: "market",
        id: "11110105MB0000002F",
        name: "市场监管局",
        roles: &["issuer", "consumer"],
    },
    SampleDepartment {
        file: "audit",
        id: "11110105MB0000003J",
        name: "审计局",
        roles: &["auditor"],
    },
    SampleDepartment {
        file: "push",
        id: "12110105MB0000004J",
        name: "政策推送服务",
        roles: &["policy-push"],
    },
    SampleDepartment {
        file: "app",
        id: "91110105MA0000005E",
        name: "城市 app",
        roles: &["holder-app"],
    },
    SampleDepartment {
        file: "ops",
        id: "11110105MB0000006U",
        name: "运维中心",
        roles: &["admin"],
    },
];

/// Creates what is missing under `dir` (PKI, client certificates, configuration, data
/// directory) and returns the configuration with the requested listen addresses.
pub fn prepare(
    dir: &Path,
    listen: SocketAddr,
    ops_listen: SocketAddr,
    now: OffsetDateTime,
) -> anyhow::Result<Config> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let pki = dir.join("pki");
    let ca = DevCa::open_or_init(&pki, now)?;
    for d in SAMPLE_DEPARTMENTS {
        if !pki.join(format!("{}.pem", d.file)).exists() {
            let id: Uscc = d.id.parse()?;
            ca.issue_client(&ClientSpec::department(d.file, &id, now))?;
        }
    }
    let config_path = dir.join("certgate.toml");
    if !config_path.exists() {
        std::fs::write(&config_path, config_text())
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    std::fs::create_dir_all(dir.join("data"))?;
    let mut config = Config::load(&config_path)?;
    config.server.listen = listen;
    config.server.ops_listen = ops_listen;
    Ok(config)
}

fn config_text() -> String {
    let mut text = String::from(
        "# certgate demo configuration, written by `certgate demo`. Edit and reload with\n\
         # `kill -HUP <pid>` or POST /v1/admin/reload (as the `ops` department).\n\n\
         [server]\nlisten = \"127.0.0.1:8443\"\nops_listen = \"127.0.0.1:9090\"\ndata_dir = \"data\"\n\n\
         [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = [\"pki/ca.pem\"]\ncrls = [\"pki/crl.pem\"]\n",
    );
    for d in SAMPLE_DEPARTMENTS {
        let roles: Vec<String> = d.roles.iter().map(|r| format!("\"{r}\"")).collect();
        let _ = write!(
            text,
            "\n[[departments]]\nid = \"{}\"\nname = \"{}\"\nroles = [{}]\n",
            d.id,
            d.name,
            roles.join(", ")
        );
    }
    text
}

/// Prints where the demo runs and curl commands that work as printed.
pub fn print_walkthrough(dir: &Path, api: SocketAddr, ops: SocketAddr) {
    let pki = dir.join("pki");
    let p = |f: &str| -> PathBuf { pki.join(f) };
    let with = |who: &str| {
        format!(
            "curl -sS --cacert {} --cert {} --key {}",
            p("ca.pem").display(),
            p(&format!("{who}.pem")).display(),
            p(&format!("{who}.key")).display()
        )
    };
    let base = format!("https://{api}");
    println!("certgate demo is running");
    println!("  mTLS API:    {base}  (HTTP/1.1 and HTTP/2; client certificate required)");
    println!("  operations:  http://{ops}");
    println!(
        "  files:       {} (certgate.toml, pki/, data/)",
        dir.display()
    );
    println!();
    println!("# Who the gateway takes the approval bureau (行政审批局) for:");
    println!("{} {base}/v1/whoami", with("approval"));
    println!("# The market regulator (市场监管局) over HTTP/1.1:");
    println!("{} --http1.1 {base}/v1/whoami", with("market"));
    println!("# Reload departments, trust anchors and CRLs (admin role):");
    println!("{} -X POST {base}/v1/admin/reload", with("ops"));
    println!("# Refused: reload needs the admin role (403 CG-AUTH-006):");
    println!("{} -X POST {base}/v1/admin/reload", with("approval"));
    println!("# Refused: no client certificate (the TLS handshake fails):");
    println!(
        "curl -sS --cacert {} {base}/v1/whoami",
        p("ca.pem").display()
    );
    println!("# The API reference (OpenAPI 3.1):");
    println!("{} {base}/openapi.json", with("audit"));
    println!("# Health, readiness and Prometheus metrics:");
    println!("curl -sS http://{ops}/healthz");
    println!("curl -sS http://{ops}/metrics");
    println!();
    println!("Stop with Ctrl-C (in-flight requests finish first).");
}
