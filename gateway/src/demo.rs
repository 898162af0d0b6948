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
    /// Its full legal name, which its seals carry.
    pub full_name: &'static str,
    /// Its roles.
    pub roles: &'static [&'static str],
}

/// The departments the demo configures, each with a client certificate.
pub const SAMPLE_DEPARTMENTS: &[SampleDepartment] = &[
    SampleDepartment {
        file: "approval",
        id: "11110105MB0000001C",
        name: "行政审批局",
        full_name: "北京市朝阳区行政审批局",
        roles: &["consumer"],
    },
    SampleDepartment {
        file: "market",
        id: "11110105MB0000002F",
        name: "市场监管局",
        full_name: "北京市朝阳区市场监督管理局",
        roles: &["issuer", "consumer"],
    },
    SampleDepartment {
        file: "audit",
        id: "11110105MB0000003J",
        name: "审计局",
        full_name: "北京市朝阳区审计局",
        roles: &["auditor"],
    },
    SampleDepartment {
        file: "push",
        id: "12110105MB0000004J",
        name: "政策推送服务",
        full_name: "北京市朝阳区政务服务数据管理中心",
        roles: &["policy-push"],
    },
    SampleDepartment {
        file: "app",
        id: "91110105MA0000005E",
        name: "城市 app",
        full_name: "北京城市服务科技有限公司",
        roles: &["holder-app"],
    },
    SampleDepartment {
        file: "ops",
        id: "11110105MB0000006U",
        name: "运维中心",
        full_name: "北京市朝阳区政务服务运维中心",
        roles: &["admin"],
    },
    SampleDepartment {
        file: "police",
        id: "11110105MB0000010A",
        name: "公安局",
        full_name: "北京市公安局朝阳分局",
        roles: &["consumer"],
    },
    SampleDepartment {
        file: "tax",
        id: "11110105MB0000011D",
        name: "税务局",
        full_name: "国家税务总局北京市朝阳区税务局",
        roles: &["consumer"],
    },
    SampleDepartment {
        file: "data",
        id: "11110105MB0000012G",
        name: "大数据局",
        full_name: "北京市朝阳区大数据局",
        roles: &["consumer"],
    },
];

/// Placeholder origins of the demo's two source systems in `certgate.toml`; the demo starts
/// them on free ports and puts their real addresses in the loaded configuration.
const POLICE_SOURCE: &str = "https://127.0.0.1:8601";
const TAX_SOURCE: &str = "https://127.0.0.1:8602";

/// The demo's shared-data exchange: the household register of 公安局 and the tax status of
/// 税务局, each behind its own source system, and two no-proof check types.
const EXCHANGE: &str = r#"
# Shared-data exchange. The demo starts the two source systems itself, on free ports, and
# uses their real addresses in place of the origins below.
[exchange]
cache_bytes = 67108864

[[upstreams]]
origin = "https://127.0.0.1:8601"
ca_file = "pki/ca.pem"
client_cert = "pki/gateway-upstream.pem"
client_key = "pki/gateway-upstream.key"
timeout_ms = 2000
retries = 1

[[upstreams]]
origin = "https://127.0.0.1:8602"
ca_file = "pki/ca.pem"
client_cert = "pki/gateway-upstream.pem"
client_key = "pki/gateway-upstream.key"
timeout_ms = 2000
retries = 1

[[datasets]]
id = "household"
name = "户籍信息"
owner = "11110105MB0000010A"
url = "https://127.0.0.1:8601/persons/{key}"
key_kind = "citizen-id"
ttl_seconds = 300
stale_if_error_seconds = 3600
fields = ["name", "citizen_id", "address", "criminal_record"]

# The approval bureau sees name, masked id and address for household matters only.
[[datasets.grants]]
department = "11110105MB0000001C"
purposes = ["M-HUKOU-001"]
fields = { name = "full", citizen_id = "partial", address = "full" }

# The market regulator sees a masked name, for any stated purpose.
[[datasets.grants]]
department = "11110105MB0000002F"
fields = { name = "partial" }

[[datasets]]
id = "tax-status"
name = "纳税状况"
owner = "11110105MB0000011D"
url = "https://127.0.0.1:8602/taxpayers/{key}"
key_kind = "uscc"
ttl_seconds = 300
stale_if_error_seconds = 3600
fields = ["name", "arrears_yuan", "credit_rating"]
invalidated_by_licence_types = ["11100000MB0000100D001"]

[[datasets.grants]]
department = "11110105MB0000001C"
fields = { name = "full", credit_rating = "full" }

# 无欠税且营业执照有效: no tax arrears and a business licence valid now.
[[proof_types]]
id = "no-arrears-licensed"
name = "无欠税且营业执照有效证明"
holder_kind = "uscc"
departments = ["11110105MB0000001C"]
# Asked for in bidding and procurement matters only.
purposes = ["M-BID-001"]
validity_seconds = 86400

[[proof_types.conditions]]
dataset = "tax-status"
field = "arrears_yuan"
op = "equals"
value = 0

[[proof_types.conditions]]
licence_type = "11100000MB0000100D001"

[[proof_types]]
id = "no-criminal-record"
name = "无犯罪记录证明"
holder_kind = "citizen-id"
departments = ["11110105MB0000001C"]
purposes = ["M-HIRE-001", "M-HUKOU-001"]

[[proof_types.conditions]]
dataset = "household"
field = "criminal_record"
op = "exists"
value = false
"#;

/// The demo's running source systems.
#[derive(Debug)]
pub struct Sources {
    /// 公安局's household register.
    pub police: crate::source_system::SourceSystem,
    /// 税务局's tax status.
    pub tax: crate::source_system::SourceSystem,
}

/// Starts the two sample source systems on free ports of `ip` (HTTPS with the demo's server
/// certificate, client certificates from the demo CA required), fills them with sample
/// records, and points `config`'s exchange at them.
pub async fn start_sources(
    config: &mut Config,
    dir: &Path,
    ip: std::net::IpAddr,
) -> anyhow::Result<Sources> {
    use crate::source_system::SourceSystem;
    use serde_json::json;
    let pki = dir.join("pki");
    let any = SocketAddr::new(ip, 0);
    let (cert, key, ca) = (
        pki.join("server.pem"),
        pki.join("server.key"),
        pki.join("ca.pem"),
    );
    let police = SourceSystem::start(any, &cert, &key, Some(&ca)).await?;
    let tax = SourceSystem::start(any, &cert, &key, Some(&ca)).await?;
    police.controls.put(
        CITIZEN,
        &json!({"name": "张三丰", "citizen_id": CITIZEN, "address": "北京市朝阳区建国路 1 号", "criminal_record": null}),
    );
    police.controls.put(
        "110101199003071233",
        &json!({"name": "赵六", "citizen_id": "110101199003071233", "address": "北京市东城区", "criminal_record": "2019 年 盗窃"}),
    );
    tax.controls.put(
        XIAOMI,
        &json!({"name": "小米科技有限责任公司", "arrears_yuan": 0, "credit_rating": "A"}),
    );
    tax.controls.put(
        HUAWEI,
        &json!({"name": "华为技术有限公司", "arrears_yuan": 3200, "credit_rating": "B"}),
    );
    let real = |addr: SocketAddr| format!("https://{addr}");
    for (placeholder, addr) in [(POLICE_SOURCE, police.addr), (TAX_SOURCE, tax.addr)] {
        let origin = real(addr);
        for u in &mut config.exchange.upstreams {
            if u.origin == placeholder {
                u.origin.clone_from(&origin);
            }
        }
        for d in &mut config.exchange.datasets {
            if d.origin == placeholder {
                d.url = d.url.replacen(placeholder, &origin, 1);
                d.origin.clone_from(&origin);
            }
        }
    }
    Ok(Sources { police, tax })
}

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
    // The certificate the gateway presents to the source systems.
    if !pki.join("gateway-upstream.pem").exists() {
        let mut spec =
            ClientSpec::department("gateway-upstream", &"11110105MB0000006U".parse()?, now);
        spec.common_name = "certgate gateway".into();
        spec.san_uris = vec!["urn:certgate:gateway".into()];
        ca.issue_client(&spec)?;
    }
    let kek = dir.join("kek");
    if !kek.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = cert_store::crypto::Kek::generate()?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kek)
            .and_then(|mut f| f.write_all(key.to_base64().as_bytes()))
            .with_context(|| format!("cannot write {}", kek.display()))?;
    }
    let log_key = dir.join("log-key");
    if !log_key.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let seed = tlog::checkpoint::LogKey::generate_seed_base64()?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&log_key)
            .and_then(|mut f| f.write_all(seed.as_bytes()))
            .with_context(|| format!("cannot write {}", log_key.display()))?;
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
         [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = [\"pki/ca.pem\"]\ncrls = [\"pki/crl.pem\"]\n\n\
         # The key-encryption key (base64 of 32 random bytes, mode 0600) protects seal keys at rest.\n\
         [licensing]\nkek_file = \"kek\"\npublic_url = \"https://127.0.0.1:8443\"\n\n\
         # Every request is a leaf of the tamper-evident access log; log-key (Ed25519 seed, mode\n\
         # 0600) signs its checkpoints.\n\
         [access_log]\nkey_file = \"log-key\"\norigin = \"certgate.demo/access-log\"\n",
    );
    for d in SAMPLE_DEPARTMENTS {
        let roles: Vec<String> = d.roles.iter().map(|r| format!("\"{r}\"")).collect();
        let _ = write!(
            text,
            "\n[[departments]]\nid = \"{}\"\nname = \"{}\"\nfull_name = \"{}\"\nroles = [{}]\n",
            d.id,
            d.name,
            d.full_name,
            roles.join(", ")
        );
    }
    text.push_str(LICENSING);
    text.push_str(EXCHANGE);
    text.push_str(
        "\n# The policy knowledge base: 大数据局 maintains the enterprise profiles.\n\
         [policies]\nprofile_owner = \"11110105MB0000012G\"\n",
    );
    text
}

/// The demo's licence types and access rules (the end-to-end tests use them too, without the
/// one-per-holder rule, so that a test may issue several licences to one holder).
pub const LICENSING: &str = r#"
# The business licence registers market entities: an enterprise holds one at a time (a
# change goes through renewal), and its seals carry the name it gives.
[[licence_types]]
code = "11100000MB0000100D001"
name = "营业执照"
issuers = ["11110105MB0000002F"]
validity_days = 3650
business_licence = true
one_per_holder = true
fields = [
  { name = "name", kind = "string", required = true },
  { name = "legal_representative", kind = "string", required = true },
  { name = "registered_capital", kind = "integer", min = 0 },
  { name = "established", kind = "date", required = true },
  { name = "business_scope", kind = "string" },
]

[[licence_types]]
code = "11100000MB0000100D002"
name = "食品经营许可证"
issuers = ["11110105MB0000002F"]
validity_days = 1825
consent_required = true
fields = [
  { name = "operator", kind = "string", required = true },
  { name = "premises", kind = "string", required = true },
  { name = "category", kind = "string" },
]

# The approval bureau sees the name, legal representative and holder of business licences
# for any stated purpose, and every field of food permits for matter M-FOOD-001.
[[access_rules]]
department = "11110105MB0000001C"
licence_type = "11100000MB0000100D001"
fields = ["name", "legal_representative", "holder_id"]

[[access_rules]]
department = "11110105MB0000001C"
licence_type = "11100000MB0000100D002"
purposes = ["M-FOOD-001"]
"#;

/// What the demo's sample data gave: the ids the walk-through uses.
#[derive(Debug)]
pub struct Samples {
    /// The market regulator's SM2 seal.
    pub sm2_seal: String,
    /// The market regulator's P-256 seal.
    pub es256_seal: String,
    /// 小米's contract seal (合同专用章, SM2), one of the free seals it received at registration.
    pub contract_seal: String,
    /// A business licence signed with the SM2 seal.
    pub business_licence: String,
    /// A food permit (consent required for queries by holder).
    pub food_permit: String,
    /// An enterprise of the generated population with eligible policies.
    pub enterprise: String,
    /// A policy with a handful of eligible enterprises.
    pub policy: String,
}

const MARKET: &str = "11110105MB0000002F";
const XIAOMI: &str = "91110108551385082Q";
const HUAWEI: &str = "914403001922038216";
const CITIZEN: &str = "11010519491231002X";

/// Creates the sample seals and licences on first run (the market regulator has no seal yet)
/// and writes request bodies for the walk-through to `samples/`.
pub fn seed(gateway: &crate::state::Gateway, dir: &Path) -> anyhow::Result<Samples> {
    use cert_store::jws::JwsAlg;
    use cert_store::service::IssueRequest;
    use serde_json::json;

    let svc = gateway.licence_service();
    let now = crate::state::unix_now();
    let market: Uscc = MARKET.parse()?;
    let seals = svc
        .seals()
        .seals(&market, None, cert_store::service::MAX_SEAL_PAGE)?;
    let market_owner = cert_store::service::SealOwner::Department {
        id: &market,
        full_name: "北京市朝阳区市场监督管理局",
    };
    let find = |alg: JwsAlg| {
        seals
            .iter()
            .find(|s| s.alg == alg && s.revoked_at.is_none())
            .map(|s| s.id.clone())
    };
    let (sm2_seal, es256_seal) = match (find(JwsAlg::Sm2Sm3), find(JwsAlg::Es256)) {
        (Some(a), Some(b)) => (a, b),
        _ => (
            svc.seals()
                .create_seal(market_owner, "公章", JwsAlg::Sm2Sm3, None, now)?
                .id,
            svc.seals()
                .create_seal(market_owner, "行政审批专用章", JwsAlg::Es256, None, now)?
                .id,
        ),
    };
    let samples_dir = dir.join("samples");
    std::fs::create_dir_all(&samples_dir)?;
    let ids_file = samples_dir.join("licences.json");
    let (business_licence, food_permit) = match std::fs::read(&ids_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        Some(ids) if ids["business_licence"].is_string() => (
            ids["business_licence"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ids["food_permit"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => {
            let fields = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
            let business = svc.issuance().issue(&market, &IssueRequest {
                licence_type: "11100000MB0000100D001".into(),
                holder_id: XIAOMI.into(),
                holder_name: "小米科技有限责任公司".into(),
                seal_id: sm2_seal.clone(),
                fields: fields(json!({"name": "小米科技有限责任公司", "legal_representative": "雷军", "registered_capital": 185000000, "established": "2010-03-03", "business_scope": "技术开发"})),
                valid_from: None, valid_until: None, serial: None,
            }, now)?;
            let food = svc.issuance().issue(&market, &IssueRequest {
                licence_type: "11100000MB0000100D002".into(),
                holder_id: XIAOMI.into(),
                holder_name: "小米科技有限责任公司".into(),
                seal_id: es256_seal.clone(),
                fields: fields(json!({"operator": "小米科技有限责任公司", "premises": "北京市海淀区", "category": "预包装食品销售"})),
                valid_from: None, valid_until: None, serial: None,
            }, now)?;
            std::fs::write(
                &ids_file,
                serde_json::to_vec_pretty(
                    &json!({"business_licence": business.id, "food_permit": food.id}),
                )?,
            )?;
            std::fs::write(
                samples_dir.join("verify-business.json"),
                serde_json::to_vec(&json!({"credential": business.sd_jwt}))?,
            )?;
            (business.id.to_string(), food.id.to_string())
        }
    };
    let write = |name: &str, v: serde_json::Value| -> anyhow::Result<()> {
        std::fs::write(samples_dir.join(name), serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    };
    write(
        "issue-business.json",
        json!({
            "licence_type": "11100000MB0000100D001",
            "holder_id": "914403001922038216",
            "holder_name": "华为技术有限公司",
            "seal_id": sm2_seal,
            "fields": {"name": "华为技术有限公司", "legal_representative": "赵明路", "established": "1987-09-15"}
        }),
    )?;
    write(
        "check-business.json",
        json!({"fields": {"legal_representative": "雷军", "name": "某某公司"}}),
    )?;
    write("revoke.json", json!({"reason": "吊销：示例"}))?;
    write("proof-xiaomi.json", json!({ "holder": XIAOMI }))?;
    write("proof-huawei.json", json!({ "holder": HUAWEI }))?;
    write(
        "consent.json",
        json!({
            "holder_id": XIAOMI, "department": "11110105MB0000001C",
            "licence_types": ["11100000MB0000100D002"], "purpose": "M-FOOD-001", "ttl_seconds": 3600
        }),
    )?;
    // The enterprise's free seals at registration (云刻章): 公章 and 合同专用章, made by the
    // market regulator, used by the enterprise through the holder app.
    let xiaomi: Uscc = XIAOMI.parse()?;
    let own = svc
        .seals()
        .seals(&xiaomi, None, cert_store::service::MAX_SEAL_PAGE)?;
    let xiaomi_owner = cert_store::service::SealOwner::Enterprise {
        id: &xiaomi,
        made_by: &market,
    };
    let contract_seal = match own
        .iter()
        .find(|s| s.seal_type == "合同专用章" && s.revoked_at.is_none())
    {
        Some(s) => s.id.clone(),
        None => {
            svc.seals()
                .create_seal(xiaomi_owner, "公章", JwsAlg::Sm2Sm3, None, now)?;
            svc.seals()
                .create_seal(xiaomi_owner, "合同专用章", JwsAlg::Sm2Sm3, None, now)?
                .id
        }
    };
    // A contract to seal, and one sealed now with the contract seal for the verification step.
    let contract = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
    std::fs::write(samples_dir.join("contract.pdf"), contract)?;
    let contract_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, contract);
    write(
        "sign-contract.json",
        json!({"document_base64": contract_b64, "name": "contract.pdf"}),
    )?;
    let sealed = svc.seals().seal_document(
        &contract_seal,
        &xiaomi,
        &cert_store::document_seal::Document::Bytes(contract),
        "contract.pdf",
        now,
    )?;
    let ses_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &sealed.ses_signature,
    );
    std::fs::write(samples_dir.join("contract.ses"), &ses_b64)?;
    write(
        "verify-contract.json",
        json!({"document_base64": contract_b64, "ses_signature_base64": ses_b64}),
    )?;
    let (enterprise, policy) = seed_policies(gateway, &samples_dir)?;
    Ok(Samples {
        contract_seal,
        sm2_seal,
        es256_seal,
        business_licence,
        food_permit,
        enterprise,
        policy,
    })
}

/// Profiles the demo generates (seed 1, as of 2026-11-01).
const POPULATION: u64 = 10_000;

/// Loads the sample policies and a generated population on first run, and picks an enterprise
/// and a policy for the walk-through.
fn seed_policies(
    gateway: &crate::state::Gateway,
    samples_dir: &Path,
) -> anyhow::Result<(String, String)> {
    let kb = &gateway.policies;
    let today = crate::matching::today();
    if kb.policies().is_empty() {
        let (good, bad) = policies::import::read_policies(policies::SAMPLE_POLICIES.as_bytes());
        anyhow::ensure!(bad.is_empty(), "sample policies: {bad:?}");
        kb.publish(good.into_iter().map(|(_, p)| p).collect(), today)?;
    }
    if kb.profile_count() == 0 {
        let as_of = time::Date::from_calendar_date(2026, time::Month::November, 1)?;
        kb.upsert_profiles(
            policies::generate::population(POPULATION, 1, as_of).collect(),
            today,
        )?;
    }
    let picks = samples_dir.join("policies.json");
    if let Some(v) = std::fs::read(&picks)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        && let (Some(e), Some(p)) = (v["enterprise"].as_str(), v["policy"].as_str())
    {
        return Ok((e.to_owned(), p.to_owned()));
    }
    let mut enterprise = String::new();
    for p in kb.profiles() {
        let m = kb.match_enterprise(&p, today)?;
        if m.eligible.len() >= 2 && !m.almost.is_empty() {
            enterprise = p.uscc.to_string();
            break;
        }
    }
    let mut policy = String::new();
    let mut all = kb.policies();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for p in all {
        let n = kb.eligible_enterprises(&p, today)?.len();
        if (5..=200).contains(&n) {
            policy = p.id.clone();
            break;
        }
    }
    std::fs::write(
        &picks,
        serde_json::to_vec_pretty(
            &serde_json::json!({ "enterprise": enterprise, "policy": policy }),
        )?,
    )?;
    std::fs::write(
        samples_dir.join("match.json"),
        serde_json::to_vec(&serde_json::json!({ "uscc": enterprise }))?,
    )?;
    Ok((enterprise, policy))
}

/// Prints where the demo runs and curl commands that work as printed.
pub fn print_walkthrough(dir: &Path, samples: &Samples, api: SocketAddr, ops: SocketAddr) {
    let pki = dir.join("pki");
    let p = |f: &str| -> PathBuf { pki.join(f) };
    let sample = |f: &str| dir.join("samples").join(f).display().to_string();
    let with = |who: &str| {
        format!(
            "curl -sS --cacert {} --cert {} --key {}",
            p("ca.pem").display(),
            p(&format!("{who}.pem")).display(),
            p(&format!("{who}.key")).display()
        )
    };
    let json = "-H 'content-type: application/json'";
    let base = format!("https://{api}");
    let lic = &samples.business_licence;
    println!("certgate demo is running");
    println!("  mTLS API:    {base}  (HTTP/1.1 and HTTP/2; client certificate required)");
    println!("  operations:  http://{ops}");
    println!(
        "  files:       {} (certgate.toml, kek, pki/, data/, samples/)",
        dir.display()
    );
    println!(
        "  seals:       {} (SM2), {} (ES256) of 市场监管局; {} (合同专用章) of 小米",
        samples.sm2_seal, samples.es256_seal, samples.contract_seal
    );
    println!();
    println!("# Who the gateway takes the approval bureau (行政审批局) for:");
    println!("{} {base}/v1/whoami", with("approval"));
    println!("# The market regulator (市场监管局) over HTTP/1.1:");
    println!("{} --http1.1 {base}/v1/whoami", with("market"));
    println!("# Issue a business licence (营业执照) with the SM2 seal:");
    println!(
        "{} {json} -d @{} {base}/v1/licences",
        with("market"),
        sample("issue-business.json")
    );
    println!(
        "# The approval bureau queries a licence for a matter: only the fields its access rule allows:"
    );
    println!(
        "{} -H 'X-Purpose: M-BIZ-001' {base}/v1/licences/{lic}",
        with("approval")
    );
    println!("# Refused: no stated purpose (400 CG-REQ-006):");
    println!("{} {base}/v1/licences/{lic}", with("approval"));
    println!("# Verify the licence as presented (signature, seal chain, status, disclosures):");
    println!(
        "{} {json} -d @{} {base}/v1/licences/verify",
        with("approval"),
        sample("verify-business.json")
    );
    println!("# Field check (核验): match / no-match, nothing else disclosed:");
    println!(
        "{} -H 'X-Purpose: M-BIZ-001' {json} -d @{} {base}/v1/licences/{lic}/check",
        with("approval"),
        sample("check-business.json")
    );
    println!("# Food permits need the holder's consent for queries by holder (403 without it):");
    println!(
        "{} -H 'X-Purpose: M-FOOD-001' '{base}/v1/licences?holder={XIAOMI}&type=11100000MB0000100D002'",
        with("approval")
    );
    println!(
        "# The city app, acting for 小米 (X-Holder), records its consent; send the token as X-Consent:"
    );
    println!(
        "{} {json} -H 'X-Holder: {XIAOMI}' -d @{} {base}/v1/consents",
        with("app"),
        sample("consent.json")
    );
    println!(
        "# Shared data (数据共享): the approval bureau reads a household record of 公安局 for matter M-HUKOU-001;"
    );
    println!("# the id comes masked, fields outside its grant never leave the gateway:");
    println!(
        "{} -H 'X-Purpose: M-HUKOU-001' {base}/v1/data/household/{CITIZEN}",
        with("approval")
    );
    println!(
        "# The market regulator sees only a masked name (served from the cache: \"cache\": \"hit\"):"
    );
    println!(
        "{} -H 'X-Purpose: M-BIZ-001' {base}/v1/data/household/{CITIZEN}",
        with("market")
    );
    println!("# Refused: a purpose the approval bureau's grant does not cover (403 CG-DAT-002):");
    println!(
        "{} -H 'X-Purpose: M-OTHER-001' {base}/v1/data/household/{CITIZEN}",
        with("approval")
    );
    println!(
        "# 公安局 (the owner) drops the record from the cache; the next read fetches it again:"
    );
    println!(
        "{} -X POST {base}/v1/data/household/{CITIZEN}/invalidate",
        with("police")
    );
    println!(
        "# No-proof check (无证明): no tax arrears and a valid business licence, as a signed proof:"
    );
    println!(
        "{} -H 'X-Purpose: M-BID-001' {json} -d @{} {base}/v1/proofs/no-arrears-licensed",
        with("approval"),
        sample("proof-xiaomi.json")
    );
    println!(
        "# 华为 has arrears in the sample tax records: the proof says false, and nothing more:"
    );
    println!(
        "{} -H 'X-Purpose: M-BID-001' {json} -d @{} {base}/v1/proofs/no-arrears-licensed",
        with("approval"),
        sample("proof-huawei.json")
    );
    println!(
        "# Issue a proof and verify it (the department it was issued to; offline with /.well-known/jwks.json):"
    );
    println!(
        "{} -H 'X-Purpose: M-BID-001' {json} -d @{} {base}/v1/proofs/no-arrears-licensed | {} {json} -d @- {base}/v1/proofs/verify",
        with("approval"),
        sample("proof-xiaomi.json"),
        with("approval")
    );
    println!(
        "# Policy finds the enterprise (政策找企业): the policies enterprise {} is eligible for, each condition explained,",
        samples.enterprise
    );
    println!("# and the ones it misses by one condition:");
    println!(
        "{} -H 'X-Purpose: M-POLICY-001' {json} -d @{} {base}/v1/policies/match",
        with("approval"),
        sample("match.json")
    );
    println!(
        "# Every enterprise eligible for policy {} (cursor-paged):",
        samples.policy
    );
    println!(
        "{} '{base}/v1/policies/{}/eligible-enterprises?limit=5'",
        with("push"),
        samples.policy
    );
    println!(
        "# Full-text search with Chinese analysis: 专精特新 is one term; snippets are highlighted:"
    );
    println!(
        "{} -G --data-urlencode 'q=专精特新' --data-urlencode 'category=免申即享' {base}/v1/policies/search",
        with("approval")
    );
    println!("# The push feed of new matches, read from a cursor (the policy-push service):");
    println!("{} '{base}/v1/push-feed?after=0&limit=3'", with("push"));
    println!("# Revoke the licence (its issuer), then verify again: valid false, status revoked:");
    println!(
        "{} {json} -d @{} {base}/v1/licences/{lic}/revoke",
        with("market"),
        sample("revoke.json")
    );
    println!(
        "{} {json} -d @{} {base}/v1/licences/verify",
        with("approval"),
        sample("verify-business.json")
    );
    println!(
        "# 小米 seals a contract (PDF) with its contract seal (合同专用章), through the city app: a GB/T 38540-2020 SES_Signature (DER, base64) and a detached JWS:"
    );
    println!(
        "{} {json} -H 'X-Holder: {XIAOMI}' -d @{} {base}/v1/seals/{}/sign",
        with("app"),
        sample("sign-contract.json"),
        samples.contract_seal
    );
    println!(
        "# Any department verifies a sealed document, check by check (this one was sealed when the demo started):"
    );
    println!(
        "{} {json} -d @{} {base}/v1/seals/verify",
        with("approval"),
        sample("verify-contract.json")
    );
    println!("# The same offline, with the command line:");
    println!(
        "cargo run --release -p gateway -- seal verify --config {} --doc {} --sig {}",
        dir.join("certgate.toml").display(),
        sample("contract.pdf"),
        sample("contract.ses")
    );
    println!("# The status list, the seal CA and the ES256 keys:");
    println!("{} {base}/v1/status-lists/0", with("approval"));
    println!("{} {base}/v1/seal-ca.pem", with("approval"));
    println!("{} {base}/.well-known/jwks.json", with("approval"));
    println!(
        "# The access log (auditor): the latest signed checkpoint, who read this licence, a proof:"
    );
    println!("{} {base}/v1/audit/checkpoint", with("audit"));
    println!("{} '{base}/v1/audit/entries?resource={lic}'", with("audit"));
    println!(
        "{} '{base}/v1/audit/proof/inclusion?index=0&size=1'",
        with("audit")
    );
    println!(
        "# Offline: recompute the whole tree and check every checkpoint (after stopping the demo):"
    );
    println!(
        "cargo run --release -p gateway -- audit verify --data-dir {}",
        dir.join("data").display()
    );
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
