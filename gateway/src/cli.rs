//! The `certgate` command line: `serve`, `config check`, `pki …` and `demo`.

#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cert_store::Uscc;
use clap::{Parser, Subcommand};

use crate::config::{Config, Storage};
use crate::pki::{ClientSpec, DevCa};
use crate::tls::TlsMaterial;
use tlog::{LogDb, PgLog, SegmentLog, SqliteLog};

/// certgate: the mTLS gateway for e-licences, e-seals, shared data and policy matching.
#[derive(Debug, Parser)]
#[command(name = "certgate", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, env = "CERTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A development PKI: CA, server certificate, department certificates, CRL.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// The access log, offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Documents sealed with electronic seals (GB/T 38540-2020).
    #[command(subcommand)]
    Seal(SealCommand),
    /// The policy knowledge base, offline (stop the gateway first, or use the API).
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// Enterprise profiles, offline (stop the gateway first, or use the API).
    #[command(subcommand)]
    Enterprises(EnterprisesCommand),
    /// Look up GB/T 2260 administrative divisions by code prefix or part of the name
    /// (行政区划代码): code, name and the divisions above it.
    Regions {
        /// A code prefix (`4201`) or part of a name (`江夏`); all divisions when left out.
        query: Option<String>,
        /// Most lines printed (1 to 5000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print only how many divisions match (by level).
        #[arg(long)]
        count: bool,
    },
    /// Look up GB/T 4754-2017 industries (国民经济行业分类) by code prefix (`C39`, `391`) or
    /// part of the name (`餐饮`): code, name and the codes above it.
    Industries {
        /// A code prefix or part of a name; all industries when left out.
        query: Option<String>,
        /// Most lines printed (1 to 5000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print only how many industries match (by level).
        #[arg(long)]
        count: bool,
    },
    /// The tag vocabulary (企业标签): each tag with its kind, issuing authority, basis,
    /// aliases and definition; profiles and policy conditions may use these tags (or an
    /// alias, stored as the tag).
    Tags {
        /// Part of a tag, alias, authority or definition; all tags when left out.
        query: Option<String>,
        /// A configuration whose `policies.local_tags` adds local tags to the list.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print only how many tags match.
        #[arg(long)]
        count: bool,
    },
    /// Create (or reuse) a development PKI, configuration and data directory, start the
    /// gateway and print curl commands that work.
    #[cfg(feature = "demo")]
    Demo {
        /// Directory for the demo's files.
        #[arg(long, default_value = "certgate-demo")]
        dir: PathBuf,
        /// Address of the mTLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Address of the operations listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        ops_listen: SocketAddr,
        /// Load no sample policies or enterprise profiles (a first run then starts with an
        /// empty knowledge base; a demo directory that has them keeps them).
        #[arg(long)]
        empty_knowledge_base: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute every leaf hash and root of the access log and check every checkpoint's
    /// signature and consistency; exit 0 only when all holds, else name the first bad index.
    Verify {
        /// The gateway's data directory (holds the access log and access-log.vkey).
        #[arg(long, required_unless_present_any = ["export", "config"], conflicts_with_all = ["export", "config"])]
        data_dir: Option<PathBuf>,
        /// The gateway's configuration: verifies the log where it keeps it (the shared tree in
        /// PostgreSQL when `server.storage` names one), with the configured log key.
        #[arg(long, conflicts_with = "export")]
        config: Option<PathBuf>,
        /// An NDJSON export (`GET /v1/audit/export?format=ndjson`) to verify instead.
        #[arg(long, requires_all = ["checkpoint", "log_key"])]
        export: Option<PathBuf>,
        /// The signed checkpoint (`GET /v1/audit/checkpoint`) an export is checked against.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A file with the log's verifier key (as served at /v1/audit/log-key); default the
        /// access-log.vkey the gateway wrote into the data directory.
        #[arg(long)]
        log_key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SealCommand {
    /// Verify a sealed document against the seals and the seal CA of a gateway's store (read
    /// through its configuration; the gateway may be running). Prints every check; exits 0
    /// only when all pass.
    Verify {
        /// The gateway's configuration file.
        #[arg(long, env = "CERTGATE_CONFIG")]
        config: PathBuf,
        /// The document.
        #[arg(long)]
        doc: PathBuf,
        /// Its `SES_Signature`: DER, or the same in base64 (as `POST /v1/seals/{id}/sign`
        /// returns it).
        #[arg(long)]
        sig: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PoliciesCommand {
    /// Publish policies from a JSON Lines file: valid lines are stored, every fault of every
    /// bad line reported (line, field, value found, why; exit 1), lines already stored at the
    /// same version are skipped, so the import can be repeated.
    ///
    /// The format, one JSON object a line (UTF-8, at most 1 MiB a line), is described field by
    /// field in policies/data/README.md and as JSON Schema in policies/data/schema/policy.json
    /// (served at /v1/schemas/policy). Bounds are inclusive: `{"kind":"age_years","max":2}`
    /// holds for enterprises up to 2 whole years old, i.e. 成立不满 3 年.
    Import {
        /// The configuration file (its data directory holds the knowledge base).
        #[arg(long, env = "CERTGATE_CONFIG")]
        config: PathBuf,
        /// The JSON Lines file, one policy a line.
        file: PathBuf,
        /// Check every line and report what would be stored, storing nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EnterprisesCommand {
    /// Add or replace enterprise profiles from a JSON Lines file: valid lines are stored,
    /// every fault of every bad line reported (line, field, value found, why; exit 1). Shows
    /// progress (a bar on a terminal, a line every few seconds otherwise).
    ///
    /// The format, one JSON object a line, is described in policies/data/README.md and as
    /// JSON Schema in policies/data/schema/profile.json (served at /v1/schemas/profile):
    /// `uscc`, `name`, `region` and `updated` are required; tags may be given by any alias of
    /// the vocabulary (`certgate tags`).
    Import {
        /// The configuration file.
        #[arg(long, env = "CERTGATE_CONFIG")]
        config: PathBuf,
        /// The JSON Lines file, one profile a line.
        file: PathBuf,
        /// Check every line and report how many would be stored, storing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a deterministic synthetic population as JSON Lines: the same count and seed
    /// always give the same profiles.
    #[cfg(feature = "demo")]
    Generate {
        /// How many profiles.
        #[arg(long)]
        count: u64,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The profiles' update date (ages count back from it).
        #[arg(long, default_value = "2026-11-01")]
        as_of: String,
        /// Output file (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and the TLS material it names; exit non-zero if invalid.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a root CA, a server certificate for localhost and an empty CRL.
    Init {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a department client certificate (EKU clientAuth, SAN urn:certgate:dept:<USCC>).
    IssueClient {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// The department's unified social credit code.
        #[arg(long)]
        dept: String,
        /// File stem: writes <name>.pem and <name>.key.
        #[arg(long)]
        name: String,
    },
    /// Revoke a client certificate: its serial goes into a new crl.pem.
    Revoke {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// File stem of the certificate to revoke.
        #[arg(long)]
        name: String,
    },
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CERTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let now = storage::clock::now_utc();
    match command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            finish(
                runtime(config.server.batch_scheduling)?,
                crate::wiring::run_gateway(config, false, |_, _, _| Ok(())),
            )
        }
        Command::Regions {
            query,
            limit,
            count,
        } => {
            let query = checked_query(query, Some(limit))?;
            let found: Vec<_> = policies::codes::find_regions(&query).collect();
            if count {
                let level = |r: &policies::codes::Region| r.ancestors().len();
                println!(
                    "{} divisions: {} provincial, {} prefectural, {} county-level (GB/T 2260, policies/data/gbt2260.tsv); {} former codes mapped to them (policies/data/gbt2260-history.tsv)",
                    found.iter().filter(|(r, _)| level(r) > 1).count(),
                    found.iter().filter(|(r, _)| level(r) == 2).count(),
                    found.iter().filter(|(r, _)| level(r) == 3).count(),
                    found.iter().filter(|(r, _)| level(r) == 4).count(),
                    policies::codes::find_former(&query).count()
                );
                return Ok(());
            }
            // Former codes are listed for a query only (the table is what a bare listing shows).
            let former: Vec<_> = if query.is_empty() {
                Vec::new()
            } else {
                policies::codes::find_former(&query).collect()
            };
            if found.is_empty() && former.is_empty() {
                anyhow::bail!("no administrative division matches `{query}`");
            }
            for (region, name) in found.iter().take(limit) {
                let above: Vec<&str> = region.ancestors()[1..]
                    .iter()
                    .filter(|r| **r != policies::codes::Region::NATION)
                    .map(|r| r.name())
                    .collect();
                if above.is_empty() {
                    println!("{region}\t{name}");
                } else {
                    println!("{region}\t{name}\t{}", above.join(" < "));
                }
            }
            for f in former.iter().take(limit.saturating_sub(found.len())) {
                let what = if f.kind == "newer" {
                    "newer than the table, made from"
                } else {
                    "withdrawn or changed, now within"
                };
                println!(
                    "{}\t{}\t({what} {} {}, {}; read as {})",
                    f.code,
                    f.name,
                    f.now,
                    f.now.name(),
                    f.year,
                    f.now
                );
            }
            if found.len() + former.len() > limit {
                println!(
                    "… {} more (narrow the query or raise --limit)",
                    found.len() + former.len() - limit
                );
            }
            Ok(())
        }
        Command::Industries {
            query,
            limit,
            count,
        } => {
            let query = checked_query(query, Some(limit))?;
            let found: Vec<_> = policies::codes::find_industries(&query).collect();
            if count {
                let level = |n: usize| found.iter().filter(|(i, _)| i.as_str().len() == n).count();
                println!(
                    "{} industries: {} sections (门类), {} divisions (大类), {} groups (中类), {} classes (小类) (GB/T 4754-2017, policies/data/gbt4754.tsv)",
                    found.len(),
                    level(1),
                    level(3),
                    level(4),
                    level(5),
                );
                return Ok(());
            }
            if found.is_empty() {
                anyhow::bail!("no industry matches `{query}`");
            }
            for (industry, name) in found.iter().take(limit) {
                let above: Vec<String> = industry
                    .prefixes()
                    .iter()
                    .rev()
                    .skip(1)
                    .filter_map(|p| policies::codes::Industry::parse(p).ok())
                    .map(|p| format!("{} {}", p.as_str(), p.name()))
                    .collect();
                if above.is_empty() {
                    println!("{industry}\t{name}");
                } else {
                    println!("{industry}\t{name}\t{}", above.join(" < "));
                }
            }
            if found.len() > limit {
                println!(
                    "… {} more (narrow the query or raise --limit)",
                    found.len() - limit
                );
            }
            Ok(())
        }
        Command::Tags {
            query,
            config,
            count,
        } => {
            let query = checked_query(query, None)?;
            if let Some(config) = config {
                Config::load(&config)?;
            }
            let found = policies::tags::find(&query);
            if count {
                println!(
                    "{} tags ({} local)",
                    found.len(),
                    found.iter().filter(|t| t.local).count()
                );
                return Ok(());
            }
            if found.is_empty() {
                anyhow::bail!("no tag matches `{query}`");
            }
            for t in found {
                println!(
                    "{}\t{}\t{}{}",
                    t.tag,
                    t.kind.as_str(),
                    t.authority,
                    if t.local { "\t(local)" } else { "" }
                );
                if !t.aliases.is_empty() {
                    println!("    aliases: {}", t.aliases.join(", "));
                }
                if !t.basis.is_empty() {
                    println!("    basis: {}", t.basis);
                }
                println!("    {}", t.definition);
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file)?;
            let material = TlsMaterial::load(&config.tls, &crate::tls::Resumption::new(1)?)?;
            println!(
                "{}: valid ({} departments, {} trust anchors, {} CRLs, {} revoked serials)",
                file.display(),
                config.departments.len(),
                material.trust_anchors,
                material.crls,
                material.revoked.len()
            );
            if let Some(warning) = public_url_warning(&config) {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            data_dir,
            config,
            export,
            checkpoint,
            log_key,
        }) => {
            if let (Some(export), Some(checkpoint), Some(log_key)) = (export, checkpoint, &log_key)
            {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                };
                let file = std::fs::File::open(&export)
                    .with_context(|| format!("cannot read {}", export.display()))?;
                let summary = tlog::verify_export(
                    std::io::BufReader::new(file),
                    &read(&checkpoint)?,
                    read(log_key)?.trim(),
                )
                .map_err(|e| anyhow::anyhow!("export verification FAILED: {e}"))?;
                println!(
                    "export verified: {} leaves, signed root at the checkpoint matches",
                    summary.leaves
                );
                return Ok(());
            }
            let read_key = |file: &PathBuf| {
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the verifier key {}", file.display()))
            };
            let (mut db, key): (Box<dyn LogDb>, String) = match config {
                Some(file) => {
                    let config = Config::load(&file)?;
                    let key = match &log_key {
                        Some(f) => read_key(f)?,
                        None => config.access_log.key.verifier_key(),
                    };
                    let db: Box<dyn LogDb> = match &config.server.storage {
                        Storage::Postgres(pg) => Box::new(PgLog::new(Arc::new(
                            storage::PgPool::new(pg.clone()).with_context(|| {
                                format!("cannot open PostgreSQL schema {}", pg.schema)
                            })?,
                        ))),
                        Storage::Embedded => embedded_log(&config.server.data_dir)?,
                    };
                    (db, key)
                }
                None => {
                    let data_dir =
                        data_dir.context("--data-dir, --config or --export is required")?;
                    let key_file = log_key.unwrap_or_else(|| data_dir.join("access-log.vkey"));
                    (embedded_log(&data_dir)?, read_key(&key_file)?)
                }
            };
            let summary = tlog::verify_offline(db.as_mut(), key.trim())
                .map_err(|e| anyhow::anyhow!("access log verification FAILED: {e}"))?;
            println!(
                "access log verified: {} leaves, {} checkpoints, root {}",
                summary.leaves,
                summary.checkpoints,
                hex::encode(summary.root)
            );
            Ok(())
        }
        Command::Pki(PkiCommand::Init { dir }) => {
            DevCa::init(&dir, now)?;
            println!(
                "created {0}/ca.pem, {0}/server.pem, {0}/crl.pem",
                dir.display()
            );
            Ok(())
        }
        Command::Pki(PkiCommand::IssueClient { dir, dept, name }) => {
            let dept: Uscc = dept
                .parse()
                .with_context(|| format!("--dept `{dept}` is not a valid USCC"))?;
            let issued =
                DevCa::open(&dir)?.issue_client(&ClientSpec::department(&name, &dept, now))?;
            println!(
                "issued {} and {} (serial {})",
                issued.cert.display(),
                issued.key.display(),
                issued.serial
            );
            Ok(())
        }
        Command::Pki(PkiCommand::Revoke { dir, name }) => {
            let serial = DevCa::open(&dir)?.revoke(&name, now)?;
            println!(
                "revoked {name} (serial {serial}); {}/crl.pem rewritten — reload the gateway (SIGHUP or POST /v1/admin/reload)",
                dir.display()
            );
            Ok(())
        }
        Command::Policies(PoliciesCommand::Import {
            config,
            file,
            dry_run,
        }) => {
            let kb = open_knowledge_base(&config)?;
            let (good, mut bad) = policies::import::read_policies(open_input(&file)?);
            let mut fresh = Vec::new();
            let mut unchanged = 0;
            for (line, p) in good {
                match kb.policy(&p.id) {
                    Some(old)
                        if old.version > p.version || (old.version == p.version && *old != p) =>
                    {
                        bad.push(policies::import::LineError {
                            line,
                            error: policies::InvalidField {
                                field: "version".into(),
                                reason: format!("policy {} is stored at version {}; give a higher version for a change", p.id, old.version),
                            },
                            value: Some(p.version.to_string()),
                        });
                    }
                    Some(old) if old.version == p.version => unchanged += 1,
                    _ => fresh.push(p),
                }
            }
            let changes = if dry_run {
                policies::Changes {
                    stored: fresh.len(),
                    ..Default::default()
                }
            } else {
                kb.publish(fresh, crate::matching::today())?
            };
            report_import("policies", dry_run, changes, unchanged, &bad)
        }
        Command::Seal(SealCommand::Verify { config, doc, sig }) => {
            let read = |p: &PathBuf, limit: u64| -> anyhow::Result<Vec<u8>> {
                let len = std::fs::metadata(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .len();
                if len > limit {
                    anyhow::bail!("{} is {len} bytes; at most {limit} are read", p.display());
                }
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let document = read(&doc, 1 << 30)?;
            let raw = read(&sig, 4 * cert_store::ses::MAX_SES_BYTES as u64)?;
            // DER starts with a SEQUENCE tag; anything else is taken for base64 text.
            let der = if raw.first() == Some(&0x30) {
                raw
            } else {
                use base64::Engine;
                let text: Vec<u8> = raw
                    .into_iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(&text)
                    .with_context(|| format!("{} is neither DER nor base64", sig.display()))?
            };
            let config = Config::load(&config)?;
            let (store, _) = crate::wiring::open_store(&config)?;
            let service = crate::wiring::open_licences(&config, store)?;
            let verdict = service.seals().verify_sealed_document(
                &cert_store::document_seal::Document::Bytes(&document),
                &der,
            )?;
            // Names and ids come from the signature, which anyone may have made: escaped, so
            // that no terminal sequence in them can hide a FAIL line.
            if let (Some(id), Some(name)) = (&verdict.seal_id, &verdict.seal_name) {
                println!(
                    "seal {} ({}), made by {}, sealed at {}",
                    printable(id),
                    printable(name),
                    printable(
                        verdict
                            .authority
                            .as_deref()
                            .unwrap_or("an unknown authority")
                    ),
                    verdict.sealed_at.unwrap_or_default()
                );
            }
            if let Some(owner) = &verdict.owner {
                println!(
                    "owner {} ({})",
                    printable(owner.uscc.as_deref().unwrap_or("unknown USCC")),
                    printable(owner.name.as_deref().unwrap_or("unknown name"))
                );
            }
            for c in &verdict.checks {
                println!(
                    "{:<4} {:<22} {}",
                    if c.ok { "ok" } else { "FAIL" },
                    c.check,
                    printable(&c.detail)
                );
            }
            if !verdict.valid {
                anyhow::bail!("the sealed document did NOT verify");
            }
            println!("the sealed document verifies");
            Ok(())
        }
        Command::Enterprises(EnterprisesCommand::Import {
            config,
            file,
            dry_run,
        }) => {
            let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let input = std::io::BufReader::with_capacity(
                1 << 20,
                Counted {
                    inner: std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?,
                    read: read.clone(),
                },
            );
            let kb = if dry_run {
                Config::load(&config)?;
                None
            } else {
                Some(open_knowledge_base(&config)?)
            };
            let total_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let mut progress = Progress::new("profiles", total_bytes, read);
            let mut total = policies::Changes::default();
            let mut bad = Vec::new();
            let today = crate::matching::today();
            policies::import::read_in_chunks(
                input,
                policies::Profile::from_json_every_fault,
                50_000,
                |chunk, faults, lines| -> anyhow::Result<()> {
                    bad.extend_from_slice(faults);
                    let profiles: Vec<_> = chunk.into_iter().map(|(_, p)| p).collect();
                    let c = match &kb {
                        Some(kb) => kb.upsert_profiles(profiles, today)?,
                        None => policies::Changes {
                            stored: profiles.len(),
                            ..Default::default()
                        },
                    };
                    total.stored += c.stored;
                    total.new_matches += c.new_matches;
                    total.ended_matches += c.ended_matches;
                    progress.show(lines, total.stored, bad.len());
                    Ok(())
                },
            )?;
            progress.done();
            report_import("profiles", dry_run, total, 0, &bad)
        }
        #[cfg(feature = "demo")]
        Command::Enterprises(EnterprisesCommand::Generate {
            count,
            seed,
            as_of,
            out,
        }) => {
            use std::io::Write;
            let day = time::Date::parse(
                &as_of,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .with_context(|| format!("--as-of `{as_of}` is not a date YYYY-MM-DD"))?;
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for p in policies::generate::population(count, seed, day) {
                serde_json::to_writer(&mut sink, &p)?;
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            dir,
            listen,
            ops_listen,
            empty_knowledge_base,
        } => {
            let mut config = crate::demo::prepare(&dir, listen, ops_listen, now)?;
            let dir = config.path.parent().map(Path::to_path_buf).unwrap_or(dir);
            finish(runtime(config.server.batch_scheduling)?, async {
                let _sources = crate::demo::start_sources(&mut config, &dir, listen.ip()).await?;
                crate::wiring::run_gateway(config, true, |gateway, api, ops| {
                    let samples = crate::demo::seed(gateway, &dir, empty_knowledge_base)?;
                    crate::demo::print_walkthrough(&dir, &samples, api, ops);
                    Ok(())
                })
                .await
            })
        }
    }
}

/// A lookup query of `regions`, `industries` or `tags`: short, without control characters,
/// and its `--limit` (when it has one) from 1 to 5000.
fn checked_query(query: Option<String>, limit: Option<usize>) -> anyhow::Result<String> {
    let query = query.unwrap_or_default();
    if query.chars().any(char::is_control) || query.chars().count() > 50 {
        anyhow::bail!("the query must be at most 50 characters, without control characters");
    }
    if limit.is_some_and(|l| !(1..=5000).contains(&l)) {
        anyhow::bail!("--limit must be between 1 and 5000");
    }
    Ok(query)
}

/// A warning when `licensing.public_url` names a port the gateway does not listen on: the
/// status-list URIs of every licence start with it, so verifiers would ask the wrong place
/// (unless a proxy in front forwards that port).
fn public_url_warning(config: &Config) -> Option<String> {
    let url = &config.licensing.public_url;
    let authority = url.strip_prefix("https://")?.split('/').next()?;
    // `host`, `host:port`, `[v6]` or `[v6]:port`.
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.1,
        None => authority.split_once(':').map_or("", |(_, p)| p),
    };
    let port = match after_host.trim_start_matches(':') {
        "" => 443,
        p => p.parse::<u16>().ok()?,
    };
    (port != config.server.listen.port()).then(|| {
        format!(
            "licensing.public_url ({url}) names port {port}, but server.listen is {}: the \
             status-list URIs in licences point there, so verifiers reach this gateway only \
             through a proxy that forwards it",
            config.server.listen
        )
    })
}

fn open_knowledge_base(config: &Path) -> anyhow::Result<policies::KnowledgeBase> {
    let config = Config::load(config)?;
    let shared = match &config.server.storage {
        Storage::Postgres(pg) => Some(Arc::new(
            storage::PgPool::new(pg.clone())
                .with_context(|| format!("cannot open PostgreSQL schema {}", pg.schema))?,
        )),
        Storage::Embedded => None,
    };
    crate::wiring::open_knowledge_base(&config, shared).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the embedded knowledge base in {} is open only to one process: is the gateway running?)",
            config.server.data_dir.join("policies").display()
        )
    })
}

fn report_import(
    what: &str,
    dry_run: bool,
    changes: policies::Changes,
    unchanged: usize,
    bad: &[policies::import::LineError],
) -> anyhow::Result<()> {
    for e in bad {
        eprintln!("{e}");
    }
    let lines: std::collections::BTreeSet<usize> = bad.iter().map(|e| e.line).collect();
    if dry_run {
        println!(
            "{what} (dry run, nothing stored): {} would be stored, {unchanged} unchanged, {} line(s) refused with {} fault(s)",
            changes.stored,
            lines.len(),
            bad.len()
        );
    } else {
        println!(
            "{what}: {} stored, {unchanged} unchanged, {} line(s) refused with {} fault(s); {} new matches (push-feed events), {} ended",
            changes.stored,
            lines.len(),
            bad.len(),
            changes.new_matches,
            changes.ended_matches
        );
    }
    if bad.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} line(s) refused with {} fault(s)",
            lines.len(),
            bad.len()
        )
    }
}

fn open_input(file: &Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    Ok(std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    ))
}

/// Progress of a long import on standard error: a bar redrawn in place on a terminal, else a
/// line at most every five seconds.
struct Progress {
    what: &'static str,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
    terminal: bool,
    total_bytes: u64,
    read: Arc<std::sync::atomic::AtomicU64>,
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl Progress {
    fn new(
        what: &'static str,
        total_bytes: u64,
        read: Arc<std::sync::atomic::AtomicU64>,
    ) -> Progress {
        use std::io::IsTerminal;
        Progress {
            what,
            started: std::time::Instant::now(),
            last: None,
            terminal: std::io::stderr().is_terminal(),
            total_bytes,
            read,
        }
    }

    fn show(&mut self, lines: usize, stored: usize, faults: usize) {
        let now = std::time::Instant::now();
        let every = if self.terminal { 0 } else { 5 };
        if self
            .last
            .is_some_and(|t| now.duration_since(t).as_secs() < every)
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
        let share = (self.read.load(std::sync::atomic::Ordering::Relaxed) as f64
            / self.total_bytes.max(1) as f64)
            .min(1.0);
        let line = format!(
            "{}: {:>3.0}% {lines} lines read, {stored} stored, {faults} fault(s), {:.0}/s",
            self.what,
            share * 100.0,
            stored as f64 / secs
        );
        if self.terminal {
            let filled = (share * 30.0).round() as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {line}",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            );
        } else {
            eprintln!("{line}");
        }
    }

    fn done(&self) {
        if self.terminal && self.last.is_some() {
            eprintln!();
        }
    }
}

/// The SQLite access log at `path`, read-only; an error if there is none.
/// The embedded access log of a data directory, read-only: its segment files, or the SQLite
/// file of a log made before them.
fn embedded_log(data_dir: &Path) -> anyhow::Result<Box<dyn LogDb>> {
    let legacy = data_dir.join("access-log.db");
    let segments = data_dir.join("access-log");
    if legacy.is_file() {
        return Ok(Box::new(
            SqliteLog::open_read_only(&legacy)
                .with_context(|| format!("cannot open {}", legacy.display()))?,
        ));
    }
    if !segments.is_dir() {
        anyhow::bail!("{} holds no access log", data_dir.display());
    }
    Ok(Box::new(
        SegmentLog::open_read_only(&segments)
            .with_context(|| format!("cannot open {}", segments.display()))?,
    ))
}

/// Runs `serving` to its end, then stops the runtime without waiting for blocking tasks still
/// stuck (a store call, say) beyond a few seconds: they must not keep a stopped gateway alive.
fn finish(
    runtime: tokio::runtime::Runtime,
    serving: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let result = runtime.block_on(serving);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// The async runtime of `serve` and `demo`; with `batch_scheduling`, this thread and every
/// thread started after it (the runtime's workers and blocking pool, the store's and the access
/// log's writers) run under `SCHED_BATCH` (`server.batch_scheduling`).
fn runtime(batch_scheduling: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    if batch_scheduling {
        // Lowering one's own policy needs no privilege; where it fails (not Linux, a sandbox
        // that forbids it), the gateway runs as it would without the setting, and says so.
        let batch = thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Batch,
        );
        if let Err(e) = thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            thread_priority::ThreadPriority::Crossplatform(
                thread_priority::ThreadPriorityValue::try_from(0u8)
                    .map_err(|e| anyhow::anyhow!("no thread priority 0: {e}"))?,
            ),
            batch,
        ) {
            tracing::warn!(error = ?e, "server.batch_scheduling: cannot run under SCHED_BATCH");
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `text` with control and bidi characters shown as `\u{…}` escapes, for a terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || cert_store::text::is_bidi_control(c) {
                format!("\\u{{{:04X}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}
