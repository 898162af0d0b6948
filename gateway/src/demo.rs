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

/// A sample department of the demo (`demo/departments.toml`): file stem, USCC, names, roles.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleDepartment {
    /// File stem of its client certificate in `pki/`.
    pub file: String,
    /// Its unified social credit code (sample codes with valid check characters).
    pub id: Uscc,
    /// Its name.
    pub name: String,
    /// Its full legal name, which its seals carry.
    pub full_name: String,
    /// Its roles.
    pub roles: Vec<String>,
}

/// The demo's data files, built into the binary so that the demo runs from any directory.
mod data {
    pub const DEPARTMENTS: &str = include_str!("../demo/departments.toml");
    pub const LICENSING: &str = include_str!("../demo/licensing.toml");
    pub const EXCHANGE: &str = include_str!("../demo/exchange.toml");
    pub const RECORDS: &str = include_str!("../demo/records.json");
    pub const LICENCES: &str = include_str!("../demo/licences.json");
}

/// The departments the demo configures, each with a client certificate.
pub fn sample_departments() -> anyhow::Result<Vec<SampleDepartment>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        departments: Vec<SampleDepartment>,
    }
    let file: File = toml::from_str(data::DEPARTMENTS).context("demo/departments.toml")?;
    Ok(file.departments)
}

/// Placeholder origins of the demo's two source systems in `certgate.toml`; the demo starts
/// them on free ports and puts their real addresses in the loaded configuration.
const POLICE_SOURCE: &str = "https://127.0.0.1:8601";
const TAX_SOURCE: &str = "https://127.0.0.1:8602";

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
    let pki = dir.join("pki");
    let any = SocketAddr::new(ip, 0);
    let (cert, key, ca) = (
        pki.join("server.pem"),
        pki.join("server.key"),
        pki.join("ca.pem"),
    );
    let police = SourceSystem::start(any, &cert, &key, Some(&ca)).await?;
    let tax = SourceSystem::start(any, &cert, &key, Some(&ca)).await?;
    let records: serde_json::Value =
        serde_json::from_str(data::RECORDS).context("demo/records.json")?;
    for (system, source) in [("police", &police), ("tax", &tax)] {
        for (key, record) in records[system].as_object().into_iter().flatten() {
            source.controls.put(key, record);
        }
    }
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
    for d in sample_departments()? {
        if !pki.join(format!("{}.pem", d.file)).exists() {
            ca.issue_client(&ClientSpec::department(&d.file, &d.id, now))?;
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
        std::fs::write(&config_path, config_text()?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    std::fs::create_dir_all(dir.join("data"))?;
    let mut config = Config::load(&config_path)?;
    config.server.listen = listen;
    config.server.ops_listen = ops_listen;
    Ok(config)
}

fn config_text() -> anyhow::Result<String> {
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
    for d in sample_departments()? {
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
    text.push('\n');
    text.push_str(data::LICENSING);
    text.push_str(data::EXCHANGE);
    text.push_str(
        "\n# The policy knowledge base: 大数据局 maintains the enterprise profiles.\n\
         [policies]\nprofile_owner = \"11110105MB0000012G\"\n",
    );
    Ok(text)
}

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
    /// An enterprise of the generated population with eligible policies, and a policy with a
    /// handful of eligible enterprises; none when the knowledge base was left empty.
    pub policy_picks: Option<(String, String)>,
}

const MARKET: &str = "11110105MB0000002F";
const XIAOMI: &str = "91110108551385082Q";
const HUAWEI: &str = "914403001922038216";
const CITIZEN: &str = "11010519491231002X";

/// Creates the sample seals and licences on first run (the market regulator has no seal yet)
/// and writes request bodies for the walk-through to `samples/`.
///
/// With `empty_knowledge_base`, no policy or profile is loaded: the knowledge base starts (and,
/// on a first run, stays) empty, for trying one's own policies.
pub fn seed(
    gateway: &crate::state::Gateway,
    dir: &Path,
    empty_knowledge_base: bool,
) -> anyhow::Result<Samples> {
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
    let licences: serde_json::Value =
        serde_json::from_str(data::LICENCES).context("demo/licences.json")?;
    let samples_dir = dir.join("samples");
    std::fs::create_dir_all(&samples_dir)?;
    let ids_file = samples_dir.join("licences.json");
    // The samples of an earlier run, unless its walk-through revoked them (the enterprise is
    // then no longer registered, and its seals sign nothing): then new ones are issued.
    let still_valid = |ids: &serde_json::Value| {
        ids["business_licence"].as_str().is_some_and(|id| {
            svc.licence(id)
                .is_ok_and(|l| l.status == cert_store::licence::LicenceStatus::Valid)
        })
    };
    let (business_licence, food_permit) = match std::fs::read(&ids_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        Some(ids) if still_valid(&ids) => (
            ids["business_licence"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ids["food_permit"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => {
            let issue = |sample: &serde_json::Value| -> anyhow::Result<_> {
                let seal_id = match sample["seal"].as_str() {
                    Some("sm2") => sm2_seal.clone(),
                    _ => es256_seal.clone(),
                };
                let text = |k: &str| sample[k].as_str().unwrap_or_default().to_owned();
                Ok(svc.issuance().issue(
                    &market,
                    &IssueRequest {
                        licence_type: text("licence_type"),
                        holder_id: text("holder_id"),
                        holder_name: text("holder_name"),
                        seal_id,
                        fields: sample["fields"].as_object().cloned().unwrap_or_default(),
                        valid_from: None,
                        valid_until: None,
                        serial: None,
                    },
                    now,
                )?)
            };
            let business = issue(&licences["issued"]["business_licence"])?;
            let food = issue(&licences["issued"]["food_permit"])?;
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
    let mut issue_business = licences["walkthrough"].clone();
    issue_business["seal_id"] = json!(sm2_seal);
    write("issue-business.json", issue_business)?;
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
    let picks = if empty_knowledge_base {
        None
    } else {
        Some(seed_policies(gateway, &samples_dir)?)
    };
    Ok(Samples {
        contract_seal,
        sm2_seal,
        es256_seal,
        business_licence,
        food_permit,
        policy_picks: picks,
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
    match &samples.policy_picks {
        Some((enterprise, policy)) => {
            println!(
                "# Policy finds the enterprise (政策找企业): the policies enterprise {} is eligible for, each condition explained,",
                enterprise
            );
            println!("# and the ones it misses by one condition:");
            println!(
                "{} -H 'X-Purpose: M-POLICY-001' {json} -d @{} {base}/v1/policies/match",
                with("approval"),
                sample("match.json")
            );
            println!(
                "# Every enterprise eligible for policy {} (cursor-paged):",
                policy
            );
            println!(
                "{} '{base}/v1/policies/{}/eligible-enterprises?limit=5'",
                with("push"),
                policy
            );
        }
        None => {
            println!(
                "# The knowledge base is empty (--empty-knowledge-base): import policies with"
            );
            println!(
                "# `certgate policies import` (gateway stopped) or POST /v1/policies, then match."
            );
        }
    }
    println!(
        "# Full-text search with Chinese analysis: 专精特新 is one term; snippets are highlighted:"
    );
    println!(
        "{} -G --data-urlencode 'q=专精特新' --data-urlencode 'category=免申即享' {base}/v1/policies/search",
        with("approval")
    );
    println!("# The push feed of new matches, read from a cursor (the policy-push service):");
    println!("{} '{base}/v1/push-feed?after=0&limit=3'", with("push"));
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
    println!(
        "# Revoke the licence (its issuer), then verify again: valid false, status revoked (小米 is no longer registered: its seals sign nothing until it is again):"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_data_files_read() {
        let departments = sample_departments().unwrap();
        assert!(
            departments
                .iter()
                .any(|d| d.file == "ops" && d.roles == ["admin"])
        );
        let text = config_text().unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["departments"].as_array().unwrap().len(),
            departments.len()
        );
        assert!(value["licence_types"].as_array().unwrap().len() >= 2);
        assert!(value["datasets"].as_array().unwrap().len() >= 2);
        let records: serde_json::Value = serde_json::from_str(data::RECORDS).unwrap();
        assert!(records["police"][CITIZEN].is_object());
        let licences: serde_json::Value = serde_json::from_str(data::LICENCES).unwrap();
        assert_eq!(licences["issued"]["business_licence"]["holder_id"], XIAOMI);
    }
}
