//! Configuration: one TOML file plus `CERTGATE_<SECTION>__<KEY>` environment overrides, read
//! raw and turned into a validated [`Config`] in one step. Every error names the key at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use cert_store::Uscc;

use cert_store::crypto::Kek;
use cert_store::licence::{FieldSpec, LicenceType, is_reserved_field_name};
use exchange::catalog::{self, ExchangeSettings};
use serde::{Deserialize, Serialize};
use tlog::checkpoint::{CheckpointError, LogKey};

/// The prefix of environment variables that override configuration keys. A variable
/// `CERTGATE_SERVER__MAX_CONNECTIONS=64` sets `server.max_connections`; `__` separates levels.
pub const ENV_PREFIX: &str = "CERTGATE_";

/// A configuration that has passed validation. Relative paths are already resolved against
/// the directory of the configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from; reloads read it again.
    pub path: PathBuf,
    /// Listeners, limits and timeouts.
    pub server: ServerSettings,
    /// Server certificate, trust anchors and CRLs.
    pub tls: TlsSettings,
    /// The department table: who may connect, with which roles.
    pub departments: DepartmentTable,
    /// E-licences and e-seals: key-encryption key, licence types, access rules.
    pub licensing: LicensingSettings,
    /// The tamper-evident access log.
    pub access_log: AccessLogSettings,
    /// Shared-data exchange: source systems, datasets, no-proof check types.
    pub exchange: ExchangeSettings,
    /// The policy knowledge base.
    pub policies: PolicySettings,
}

/// Settings of the policy knowledge base.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// A jieba user dictionary added to the shipped dictionary of policy terms.
    pub user_dictionary: Option<PathBuf>,
    /// The data department that maintains enterprise profiles (may upsert them over the API).
    pub profile_owner: Option<Uscc>,
    /// A local tag vocabulary (the format of `policies/data/tags.tsv`), declared on top of the
    /// shipped one when the configuration is loaded.
    pub local_tags: Option<PathBuf>,
}

/// Settings of the access log.
#[derive(Clone)]
pub struct AccessLogSettings {
    /// Signs checkpoints (Ed25519); pseudonyms of holders are keyed from it too.
    pub key: Arc<LogKey>,
    /// Keys the HMAC that turns holder ids into pseudonyms. Never logged.
    pub pseudonym_key: [u8; 32],
    /// The checkpoint origin line (also the key's name).
    pub origin: String,
    /// Leaves waiting for the writer at most; past this, requests fail closed.
    pub queue_capacity: usize,
    /// Leaves committed in one transaction (one fsync) at most.
    pub max_batch: usize,
    /// How long a batch may wait for the leaves of requests still being served.
    pub group_commit_wait: std::time::Duration,
    /// Caps the log database at this many 4 KiB pages (0: no cap). Reaching it behaves as a
    /// full disk: the gateway fails closed.
    pub max_db_pages: u64,
    /// Minimum retention in days; nothing younger is ever deleted.
    pub retention_days: u32,
    /// Refused TLS handshakes are summarised per source address over windows this long.
    pub refusal_window: Duration,
    /// Sources summarised one by one per window at most; the rest share one summary.
    pub refusal_sources: usize,
}

impl std::fmt::Debug for AccessLogSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogSettings")
            .field("origin", &self.origin)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("max_db_pages", &self.max_db_pages)
            .field("retention_days", &self.retention_days)
            .finish_non_exhaustive()
    }
}

/// Settings of the e-licence and e-seal service.
#[derive(Clone)]
pub struct LicensingSettings {
    /// Encrypts seal private keys and the gateway's own keys at rest. Never logged.
    pub kek: Kek,
    /// The base URL other parties reach this gateway at; status-list URIs start with it.
    pub public_url: String,
    /// The licence types that may be issued.
    pub licence_types: Vec<LicenceType>,
    /// Which department may see which fields of which licence type, for which purposes.
    pub access_rules: Vec<AccessRule>,
    /// Memory for licence and seal records served without a database read (bytes).
    pub cache_bytes: u64,
}

impl std::fmt::Debug for LicensingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicensingSettings")
            .field("kek", &"<redacted>")
            .field("public_url", &self.public_url)
            .field("licence_types", &self.licence_types.len())
            .field("access_rules", &self.access_rules)
            .field("cache_bytes", &self.cache_bytes)
            .finish()
    }
}

pub use cert_store::access::AccessRule;

/// Listeners, limits and timeouts of the gateway.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address of the mTLS listener.
    pub listen: SocketAddr,
    /// Address of the plain-HTTP operations listener (`/healthz`, `/readyz`, `/metrics`).
    pub ops_listen: SocketAddr,
    /// Connections served at once; further connections are closed on accept.
    pub max_connections: usize,
    /// Connections one source address may have in their TLS handshake at once; more are
    /// closed on accept, so that one address cannot hold every slot with idle connections.
    pub max_handshakes_per_source: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a client to send a complete request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Time allowed for a request from its head to its response.
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// The embedded data directory.
    pub data_dir: PathBuf,
    /// Where licences, seals, status lists, consents and show-codes are stored.
    pub storage: Storage,
    /// Whether the gateway's threads run under Linux's `SCHED_BATCH`: a thread woken (a
    /// worker by the network, a writer by a request) does not preempt the one running, which
    /// finishes its work first. Fewer switches on a busy core; false restores the default
    /// policy, where a woken thread may run at once.
    pub batch_scheduling: bool,
}

/// The store of licences and seals.
#[derive(Debug, Clone)]
pub enum Storage {
    /// SQLite in the data directory (one node).
    Embedded,
    /// A PostgreSQL database shared by several nodes.
    Postgres(storage::PgSettings),
}

/// TLS material locations.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain of the server, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM files of the CAs that issue department client certificates.
    pub client_ca: Vec<PathBuf>,
    /// PEM CRL files checked on every full handshake.
    pub crls: Vec<PathBuf>,
    /// Accept a client certificate whose issuer has no CRL configured.
    pub allow_unknown_revocation_status: bool,
}

/// What a department may do. Permissions on data come with later features; the role is the
/// first gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A handling department that queries licences and data for its matters.
    Consumer,
    /// An issuing department that issues and manages e-licences.
    Issuer,
    /// Reads and verifies the access log.
    Auditor,
    /// The policy-push service that reads match results.
    PolicyPush,
    /// A city app acting for holders.
    HolderApp,
    /// Operates the gateway (reload, configuration).
    Admin,
}

impl Role {
    /// The name used in configuration and in API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::Issuer => "issuer",
            Role::Auditor => "auditor",
            Role::PolicyPush => "policy-push",
            Role::HolderApp => "holder-app",
            Role::Admin => "admin",
        }
    }
}

/// One row of the department table.
#[derive(Debug, Clone, PartialEq)]
pub struct Department {
    /// The department's unified social credit code, as carried in its certificate.
    pub id: Uscc,
    /// Display name, e.g. 行政审批局.
    pub name: String,
    /// Full legal name (全称), e.g. 北京市朝阳区市场监督管理局: the department's own seals are
    /// named after it. Without it the department cannot make seals.
    pub full_name: Option<String>,
    /// Roles granted to the department.
    pub roles: BTreeSet<Role>,
    /// A disabled department is refused even with a valid certificate.
    pub enabled: bool,
    /// Its request budgets per route class.
    pub rate_limits: RateLimits,
}

/// The classes of routes that have a request budget each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteClass {
    /// Reads: `GET` routes other than the audit export.
    Read,
    /// Changes: issuing, lifecycle, seals, consents, show-codes, publishing, invalidation, admin.
    Write,
    /// Verifications and checks: licence, seal and proof verification, field checks, proofs,
    /// show-code redemption, policy matching.
    Verify,
    /// The audit export (a whole log per request).
    Export,
}

impl RouteClass {
    /// Every class, in order.
    pub const ALL: [RouteClass; 4] = [
        RouteClass::Read,
        RouteClass::Write,
        RouteClass::Verify,
        RouteClass::Export,
    ];

    /// The name used in configuration, metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Read => "read",
            RouteClass::Write => "write",
            RouteClass::Verify => "verify",
            RouteClass::Export => "export",
        }
    }
}

/// A sustained rate (requests per second) for each route class. The bucket holds two seconds'
/// worth of requests (at least three), so a burst that size passes at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Requests per second by class: read, write, verify, export.
    pub per_second: [f64; 4],
}

impl Default for RateLimits {
    /// What a department system never reaches in its work and an enumeration script does:
    /// reads and verifications 50/s, changes 20/s, exports 6 a minute.
    fn default() -> Self {
        RateLimits {
            per_second: [50.0, 20.0, 50.0, 0.1],
        }
    }
}

impl RateLimits {
    /// The sustained rate of `class`.
    pub fn rate(&self, class: RouteClass) -> f64 {
        self.per_second[class as usize]
    }

    /// The bucket size of `class`: two seconds at its rate, at least three requests.
    pub fn burst(&self, class: RouteClass) -> f64 {
        (self.rate(class) * 2.0).max(3.0)
    }
}

/// Parses a rate such as `50/s`, `6/min` or `1000/h` into requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, unit) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a rate like 50/s, 6/min or 100/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0 && *n <= 1e9)
        .ok_or_else(|| format!("`{text}`: the count must be a positive number"))?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("`{other}` is not a unit: s, min or h")),
    };
    Ok(n / seconds)
}

/// The department table, keyed by USCC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DepartmentTable {
    by_id: BTreeMap<Uscc, Department>,
}

impl DepartmentTable {
    /// Looks a department up by the USCC from its certificate.
    pub fn get(&self, id: &Uscc) -> Option<&Department> {
        self.by_id.get(id)
    }

    /// Number of departments in the table.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no department is configured.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a bad value, is unknown, or is missing.
    #[error("configuration key `{key}`: {reason}")]
    Key {
        /// The dotted key, e.g. `server.max_connections` or `departments[1].roles[0]`.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn key(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        ConfigError::Key {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

impl Config {
    /// Reads `path`, applies the `CERTGATE_*` variables of the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given explicitly.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        apply_env_overrides(&mut table, env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::key(e.path().to_string(), e.inner()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate(path, base)
    }
}

/// Sets `section.key` from each `CERTGATE_SECTION__KEY` variable. The value is read as a TOML
/// value when it parses as one (`64`, `true`, `["a"]`) and as a string otherwise.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue; // CERTGATE_CONFIG and friends are not key overrides
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::key(
                name,
                "empty key segment in environment override",
            ));
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut node = &mut *table;
        for segment in parents {
            let entry = node
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::key(
                        segment.clone(),
                        format!("{name} overrides a key inside a value that is not a table"),
                    ));
                }
            };
        }
        node.insert(last.clone(), parsed);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    tls: RawTls,
    #[serde(default)]
    departments: Vec<RawDepartment>,
    licensing: RawLicensing,
    access_log: RawAccessLog,
    #[serde(default)]
    licence_types: Vec<RawLicenceType>,
    #[serde(default)]
    access_rules: Vec<RawAccessRule>,
    #[serde(default)]
    exchange: catalog::RawExchange,
    #[serde(default)]
    upstreams: Vec<catalog::RawUpstream>,
    #[serde(default)]
    datasets: Vec<catalog::RawDataset>,
    #[serde(default)]
    proof_types: Vec<catalog::RawProofType>,
    #[serde(default)]
    policies: RawPolicies,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    user_dictionary: Option<PathBuf>,
    profile_owner: Option<String>,
    local_tags: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    key_file: PathBuf,
    #[serde(default = "default_origin")]
    origin: String,
    #[serde(default = "default_queue")]
    queue_capacity: usize,
    #[serde(default = "default_batch")]
    max_batch: usize,
    #[serde(default = "default_group_commit_us")]
    group_commit_us: u64,
    #[serde(default)]
    max_db_pages: u64,
    #[serde(default = "default_retention")]
    retention_days: u32,
    #[serde(default = "default_refusal_window_ms")]
    refusal_window_ms: u64,
    #[serde(default = "default_refusal_sources")]
    refusal_sources: usize,
}

fn default_refusal_window_ms() -> u64 {
    60_000
}
fn default_refusal_sources() -> usize {
    1000
}

fn default_group_commit_us() -> u64 {
    0
}
fn default_origin() -> String {
    "certgate/access-log".into()
}
fn default_queue() -> usize {
    65_536
}
fn default_batch() -> usize {
    1024
}
fn default_retention() -> u32 {
    180
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicensing {
    kek_file: PathBuf,
    public_url: String,
    #[serde(default = "default_cache_mib")]
    cache_mib: u64,
}

fn default_cache_mib() -> u64 {
    cert_store::cache::DEFAULT_CACHE_BYTES >> 20
}

/// The most memory `licensing.cache_mib` may give the record cache.
const MAX_CACHE_MIB: u64 = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicenceType {
    code: String,
    name: String,
    issuers: Vec<String>,
    #[serde(default = "default_validity_days")]
    validity_days: u32,
    #[serde(default)]
    consent_required: bool,
    #[serde(default)]
    one_per_holder: bool,
    #[serde(default)]
    business_licence: bool,
    fields: Vec<FieldSpec>,
}

fn default_validity_days() -> u32 {
    365
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessRule {
    department: String,
    licence_type: String,
    #[serde(default = "everything")]
    purposes: Vec<String>,
    #[serde(default = "everything")]
    fields: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".to_owned()]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    ops_listen: String,
    max_connections: usize,
    max_handshakes_per_source: usize,
    handshake_timeout_ms: u64,
    header_read_timeout_ms: u64,
    request_timeout_ms: u64,
    max_body_bytes: usize,
    shutdown_grace_ms: u64,
    data_dir: PathBuf,
    storage: String,
    storage_schema: String,
    storage_pool_size: usize,
    storage_connect_timeout_ms: u64,
    storage_statement_timeout_ms: u64,
    storage_ca_file: Option<PathBuf>,
    batch_scheduling: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8443".into(),
            ops_listen: "127.0.0.1:9090".into(),
            max_connections: 1024,
            max_handshakes_per_source: 32,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 30_000,
            data_dir: PathBuf::from("data"),
            storage: "sqlite".into(),
            storage_schema: "certgate".into(),
            storage_pool_size: 8,
            storage_connect_timeout_ms: 5_000,
            storage_statement_timeout_ms: 10_000,
            storage_ca_file: None,
            batch_scheduling: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Vec<PathBuf>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    #[serde(default)]
    allow_unknown_revocation_status: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDepartment {
    id: String,
    name: String,
    full_name: Option<String>,
    roles: Vec<Role>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    rate_limits: RawRateLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    read: Option<String>,
    write: Option<String>,
    verify: Option<String>,
    export: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// Largest body limit accepted in configuration: bodies are buffered in memory.
const MAX_BODY_LIMIT: usize = 256 * 1024 * 1024;

impl RawConfig {
    fn validate(self, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let s = self.server;
        let addr = |key: &str, v: &str| {
            v.parse::<SocketAddr>().map_err(|_| {
                ConfigError::key(key, format!("`{v}` is not an address like 127.0.0.1:8443"))
            })
        };
        let millis = |key: &str, v: u64| {
            if v == 0 || v > 3_600_000 {
                Err(ConfigError::key(
                    key,
                    "must be between 1 and 3600000 milliseconds",
                ))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if s.max_connections == 0 {
            return Err(ConfigError::key(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        if s.max_handshakes_per_source == 0 {
            return Err(ConfigError::key(
                "server.max_handshakes_per_source",
                "must be at least 1",
            ));
        }
        if s.max_body_bytes == 0 || s.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError::key(
                "server.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }
        let storage = match s.storage.trim() {
            "sqlite" => Storage::Embedded,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let mut pg = storage::PgSettings::new(url);
                pg.schema = s.storage_schema.clone();
                if s.storage_pool_size == 0 || s.storage_pool_size > 256 {
                    return Err(ConfigError::key(
                        "server.storage_pool_size",
                        "must be between 1 and 256",
                    ));
                }
                pg.pool_size = s.storage_pool_size;
                pg.connect_timeout = millis(
                    "server.storage_connect_timeout_ms",
                    s.storage_connect_timeout_ms,
                )?;
                pg.statement_timeout = millis(
                    "server.storage_statement_timeout_ms",
                    s.storage_statement_timeout_ms,
                )?;
                if let Some(ca) = &s.storage_ca_file {
                    let ca = base.join(ca);
                    if !ca.is_file() {
                        return Err(ConfigError::key(
                            "server.storage_ca_file",
                            format!("{} is not a file", ca.display()),
                        ));
                    }
                    pg.ca_file = Some(ca);
                }
                if storage::PgPool::new(pg.clone()).is_err() {
                    return Err(ConfigError::key(
                        "server.storage",
                        "not a valid PostgreSQL URL (or server.storage_schema is not a-z 0-9 _)",
                    ));
                }
                Storage::Postgres(pg)
            }
            _ => {
                return Err(ConfigError::key(
                    "server.storage",
                    "\"sqlite\" (the embedded store) or a postgres:// URL",
                ));
            }
        };
        let server = ServerSettings {
            storage,
            listen: addr("server.listen", &s.listen)?,
            ops_listen: addr("server.ops_listen", &s.ops_listen)?,
            max_connections: s.max_connections,
            max_handshakes_per_source: s.max_handshakes_per_source.min(s.max_connections),
            handshake_timeout: millis("server.handshake_timeout_ms", s.handshake_timeout_ms)?,
            header_read_timeout: millis("server.header_read_timeout_ms", s.header_read_timeout_ms)?,
            request_timeout: millis("server.request_timeout_ms", s.request_timeout_ms)?,
            max_body_bytes: s.max_body_bytes,
            shutdown_grace: millis("server.shutdown_grace_ms", s.shutdown_grace_ms)?,
            data_dir: base.join(s.data_dir),
            batch_scheduling: s.batch_scheduling,
        };

        let t = self.tls;
        let file = |key: String, p: PathBuf| -> Result<PathBuf, ConfigError> {
            let p = base.join(p);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Ok(p),
                Ok(_) => Err(ConfigError::key(
                    key,
                    format!("{} is not a file", p.display()),
                )),
                Err(e) => Err(ConfigError::key(key, format!("{}: {e}", p.display()))),
            }
        };
        if t.client_ca.is_empty() {
            return Err(ConfigError::key(
                "tls.client_ca",
                "at least one CA for department certificates is required",
            ));
        }
        let tls = TlsSettings {
            cert: file("tls.cert".into(), t.cert)?,
            key: file("tls.key".into(), t.key)?,
            client_ca: t
                .client_ca
                .into_iter()
                .enumerate()
                .map(|(i, p)| file(format!("tls.client_ca[{i}]"), p))
                .collect::<Result<_, _>>()?,
            crls: t
                .crls
                .into_iter()
                .enumerate()
                .map(|(i, p)| file(format!("tls.crls[{i}]"), p))
                .collect::<Result<_, _>>()?,
            allow_unknown_revocation_status: t.allow_unknown_revocation_status,
        };

        let mut departments = DepartmentTable::default();
        for (i, d) in self.departments.into_iter().enumerate() {
            let id: Uscc =
                d.id.parse()
                    .map_err(|e| ConfigError::key(format!("departments[{i}].id"), e))?;
            let name = cert_store::text::name(&d.name, 100)
                .map_err(|e| ConfigError::key(format!("departments[{i}].name"), e))?
                .to_owned();
            let full_name = d
                .full_name
                .as_deref()
                .map(|f| cert_store::text::name(f, 100).map(str::to_owned))
                .transpose()
                .map_err(|e| ConfigError::key(format!("departments[{i}].full_name"), e))?;
            let mut rate_limits = RateLimits::default();
            let r = &d.rate_limits;
            for (class, given) in RouteClass::ALL
                .iter()
                .zip([&r.read, &r.write, &r.verify, &r.export])
            {
                if let Some(text) = given {
                    rate_limits.per_second[*class as usize] = parse_rate(text).map_err(|e| {
                        ConfigError::key(
                            format!("departments[{i}].rate_limits.{}", class.as_str()),
                            e,
                        )
                    })?;
                }
            }
            if d.roles.is_empty() {
                return Err(ConfigError::key(
                    format!("departments[{i}].roles"),
                    "a department needs at least one role",
                ));
            }
            let dept = Department {
                id: id.clone(),
                name,
                full_name,
                roles: d.roles.into_iter().collect(),
                enabled: d.enabled,
                rate_limits,
            };
            if departments.by_id.insert(id.clone(), dept).is_some() {
                return Err(ConfigError::key(
                    format!("departments[{i}].id"),
                    format!("department {id} is listed twice"),
                ));
            }
        }

        let licensing = validate_licensing(
            self.licensing,
            self.licence_types,
            self.access_rules,
            &departments,
            base,
        )?;
        let access_log = validate_access_log(self.access_log, base)?;
        let exchange = catalog::validate(
            self.exchange,
            self.upstreams,
            self.datasets,
            self.proof_types,
            &|id| departments.get(id).is_some(),
            &licensing.licence_types,
            base,
        )
        .map_err(|e| ConfigError::key(e.key, e.reason))?;
        let policies = PolicySettings {
            user_dictionary: match self.policies.user_dictionary {
                None => None,
                Some(p) => {
                    let p = base.join(p);
                    if !p.is_file() {
                        return Err(ConfigError::key(
                            "policies.user_dictionary",
                            format!("{} is not a file", p.display()),
                        ));
                    }
                    Some(p)
                }
            },
            profile_owner: match self.policies.profile_owner {
                None => None,
                Some(id) => {
                    let id: Uscc = id
                        .parse()
                        .map_err(|e| ConfigError::key("policies.profile_owner", e))?;
                    if departments.get(&id).is_none() {
                        return Err(ConfigError::key(
                            "policies.profile_owner",
                            "not in the department table",
                        ));
                    }
                    Some(id)
                }
            },
            local_tags: match self.policies.local_tags {
                None => None,
                Some(p) => {
                    let p = base.join(p);
                    let fail = |reason: String| {
                        ConfigError::key(
                            "policies.local_tags",
                            format!("{}: {reason}", p.display()),
                        )
                    };
                    let len = std::fs::metadata(&p)
                        .map_err(|e| fail(e.to_string()))?
                        .len();
                    if len > 1 << 20 {
                        return Err(fail(format!("{len} bytes; at most 1 MiB")));
                    }
                    let text = std::fs::read_to_string(&p).map_err(|e| fail(e.to_string()))?;
                    policies::tags::declare_local(&text).map_err(fail)?;
                    Some(p)
                }
            },
        };
        Ok(Config {
            path: path.to_owned(),
            server,
            tls,
            departments,
            licensing,
            access_log,
            exchange,
            policies,
        })
    }
}

/// Reads a secret file, refusing one that others can read.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::key(key, format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(ConfigError::key(
                key,
                format!(
                    "{} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(text)
}

fn validate_access_log(raw: RawAccessLog, base: &Path) -> Result<AccessLogSettings, ConfigError> {
    let origin = raw.origin.trim().to_owned();
    let seed = read_secret_file("access_log.key_file", &base.join(&raw.key_file))?;
    let key = LogKey::from_seed_base64(&origin, &seed).map_err(|e| match e {
        CheckpointError::BadKeyName => ConfigError::key("access_log.origin", e),
        _ => ConfigError::key("access_log.key_file", e),
    })?;
    if raw.queue_capacity == 0 || raw.queue_capacity > 10_000_000 {
        return Err(ConfigError::key(
            "access_log.queue_capacity",
            "must be between 1 and 10000000",
        ));
    }
    if raw.max_batch == 0 || raw.max_batch > 100_000 {
        return Err(ConfigError::key(
            "access_log.max_batch",
            "must be between 1 and 100000",
        ));
    }
    if raw.group_commit_us > 100_000 {
        return Err(ConfigError::key(
            "access_log.group_commit_us",
            "must be at most 100000 (0.1 s)",
        ));
    }
    if raw.retention_days < 180 {
        return Err(ConfigError::key(
            "access_log.retention_days",
            "must be at least 180: network logs are kept at least six months",
        ));
    }
    if !(100..=3_600_000).contains(&raw.refusal_window_ms) {
        return Err(ConfigError::key(
            "access_log.refusal_window_ms",
            "must be between 100 and 3600000 milliseconds",
        ));
    }
    if !(1..=1_000_000).contains(&raw.refusal_sources) {
        return Err(ConfigError::key(
            "access_log.refusal_sources",
            "must be between 1 and 1000000",
        ));
    }
    let pseudonym_key = key.derive_key(b"certgate holder pseudonym v1");
    Ok(AccessLogSettings {
        key: Arc::new(key),
        pseudonym_key,
        origin,
        queue_capacity: raw.queue_capacity,
        max_batch: raw.max_batch,
        group_commit_wait: std::time::Duration::from_micros(raw.group_commit_us),
        max_db_pages: raw.max_db_pages,
        retention_days: raw.retention_days,
        refusal_window: Duration::from_millis(raw.refusal_window_ms),
        refusal_sources: raw.refusal_sources,
    })
}

fn validate_licensing(
    raw: RawLicensing,
    types: Vec<RawLicenceType>,
    rules: Vec<RawAccessRule>,
    departments: &DepartmentTable,
    base: &Path,
) -> Result<LicensingSettings, ConfigError> {
    let kek_text = read_secret_file("licensing.kek_file", &base.join(&raw.kek_file))?;
    let kek = Kek::from_base64(kek_text.trim()).map_err(|_| {
        ConfigError::key(
            "licensing.kek_file",
            "must hold the base64 of 32 random bytes",
        )
    })?;
    if raw.cache_mib == 0 || raw.cache_mib > MAX_CACHE_MIB {
        return Err(ConfigError::key(
            "licensing.cache_mib",
            format!("must be between 1 and {MAX_CACHE_MIB}"),
        ));
    }
    let public_url = raw.public_url.trim_end_matches('/').to_owned();
    if !public_url.starts_with("https://") || public_url.len() > 200 {
        return Err(ConfigError::key(
            "licensing.public_url",
            "must be an https:// URL",
        ));
    }

    let mut licence_types: Vec<LicenceType> = Vec::new();
    for (i, t) in types.into_iter().enumerate() {
        let key = |k: &str| format!("licence_types[{i}].{k}");
        let code = t
            .code
            .parse()
            .map_err(|e| ConfigError::key(key("code"), e))?;
        if licence_types.iter().any(|x| x.code == code) {
            return Err(ConfigError::key(
                key("code"),
                format!("type {code} is listed twice"),
            ));
        }
        if t.name.trim().is_empty() {
            return Err(ConfigError::key(key("name"), "must not be empty"));
        }
        let mut issuers = BTreeSet::new();
        for (j, issuer) in t.issuers.iter().enumerate() {
            let id: Uscc = issuer
                .parse()
                .map_err(|e| ConfigError::key(format!("licence_types[{i}].issuers[{j}]"), e))?;
            issuers.insert(id);
        }
        if t.validity_days == 0 {
            return Err(ConfigError::key(key("validity_days"), "must be at least 1"));
        }
        let mut names = BTreeSet::new();
        for (j, f) in t.fields.iter().enumerate() {
            let ok = !f.name.is_empty()
                && f.name.len() <= 64
                && f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !is_reserved_field_name(&f.name);
            if !ok || !names.insert(f.name.clone()) {
                return Err(ConfigError::key(
                    format!("licence_types[{i}].fields[{j}].name"),
                    "must be a unique snake_case name that is not a reserved claim",
                ));
            }
        }
        if t.business_licence && licence_types.iter().any(|x| x.business_licence) {
            return Err(ConfigError::key(
                key("business_licence"),
                "only one licence type is the business licence",
            ));
        }
        licence_types.push(LicenceType {
            code,
            name: t.name.trim().to_owned(),
            issuers,
            fields: t.fields,
            validity_days: t.validity_days,
            consent_required: t.consent_required,
            one_per_holder: t.one_per_holder,
            business_licence: t.business_licence,
        });
    }

    let mut access_rules = Vec::new();
    for (i, r) in rules.into_iter().enumerate() {
        let key = |k: &str| format!("access_rules[{i}].{k}");
        let department: Uscc = r
            .department
            .parse()
            .map_err(|e| ConfigError::key(key("department"), e))?;
        if departments.get(&department).is_none() {
            return Err(ConfigError::key(
                key("department"),
                "not in the department table",
            ));
        }
        let Some(licence_type) = licence_types
            .iter()
            .find(|t| t.code.as_str() == r.licence_type)
        else {
            return Err(ConfigError::key(
                key("licence_type"),
                "not a configured licence type",
            ));
        };
        let star = |v: &[String]| v.iter().any(|x| x == "*");
        let fields = if star(&r.fields) {
            None
        } else {
            for f in &r.fields {
                if !licence_type.fields.iter().any(|s| &s.name == f)
                    && !["holder_id", "holder_name"].contains(&f.as_str())
                {
                    return Err(ConfigError::key(
                        key("fields"),
                        format!("`{f}` is not a field of {}", licence_type.name),
                    ));
                }
            }
            Some(r.fields.into_iter().collect())
        };
        let purposes = if star(&r.purposes) {
            None
        } else {
            Some(r.purposes.into_iter().collect())
        };
        access_rules.push(AccessRule {
            department,
            licence_type: r.licence_type,
            purposes,
            fields,
        });
    }
    Ok(LicensingSettings {
        kek,
        public_url,
        licence_types,
        access_rules,
        cache_bytes: raw.cache_mib << 20,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(
            dir.join("kek"),
            Kek::generate().unwrap().to_base64().as_str(),
        )
        .unwrap();
        std::fs::set_permissions(dir.join("kek"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.join("log-key"), LogKey::generate_seed_base64().unwrap()).unwrap();
        std::fs::set_permissions(dir.join("log-key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let p = dir.join("certgate.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
[licensing]
kek_file = "kek"
public_url = "https://127.0.0.1:8443"
[access_log]
key_file = "log-key"
[[departments]]
id = "91110108551385082Q"
name = "市场监管局"
roles = ["issuer", "consumer"]
[[licence_types]]
code = "11100000MB0000100D001"
name = "营业执照"
issuers = ["91110108551385082Q"]
fields = [{ name = "name", kind = "string", required = true }]
[[access_rules]]
department = "91110108551385082Q"
licence_type = "11100000MB0000100D001"
purposes = ["M-001"]
"#;

    fn load(body: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), body);
        Config::load_with_env(&p, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn bad_key(body: &str, env: &[(&str, &str)]) -> String {
        match load(body, env) {
            Err(ConfigError::Key { key, .. }) => key,
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn good_file_loads_with_defaults_and_resolved_paths() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.server.max_connections, 1024);
        assert!(c.tls.cert.is_absolute());
        assert_eq!(c.departments.len(), 1);
        let d = c
            .departments
            .get(&"91110108551385082Q".parse().unwrap())
            .unwrap();
        assert!(d.enabled && d.roles.contains(&Role::Issuer));
    }

    #[test]
    fn environment_overrides_keys() {
        let c = load(
            GOOD,
            &[
                ("CERTGATE_SERVER__MAX_CONNECTIONS", "7"),
                ("CERTGATE_SERVER__OPS_LISTEN", "127.0.0.1:9999"),
                ("CERTGATE_CONFIG", "ignored.toml"),
                ("OTHER__THING", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.max_connections, 7);
        assert_eq!(c.server.ops_listen.port(), 9999);
    }

    const EXCHANGE: &str = r#"
[[upstreams]]
origin = "https://127.0.0.1:9601"
ca_file = "ca.pem"
[[datasets]]
id = "household"
name = "户籍信息"
owner = "91110108551385082Q"
url = "https://127.0.0.1:9601/persons/{key}"
key_kind = "citizen-id"
fields = ["name", "address"]
[[datasets.grants]]
department = "91110108551385082Q"
purposes = ["M-1"]
fields = { name = "full", address = "partial" }
[[proof_types]]
id = "no-record"
name = "无记录证明"
holder_kind = "citizen-id"
departments = ["91110108551385082Q"]
[[proof_types.conditions]]
dataset = "household"
field = "address"
op = "exists"
[[proof_types.conditions]]
licence_type = "11100000MB0000100D001"
"#;

    #[test]
    fn the_exchange_catalog_loads() {
        use exchange::catalog::{Condition, FieldTest, KeyKind, Mask};
        let c = load(&format!("{GOOD}{EXCHANGE}"), &[]).unwrap();
        let x = &c.exchange;
        assert_eq!(x.upstreams[0].retries, 2);
        assert!(x.upstreams[0].ca_file.as_ref().unwrap().is_absolute());
        let d = &x.datasets[0];
        assert_eq!(
            (d.key_kind, d.origin.as_str()),
            (KeyKind::CitizenId, "https://127.0.0.1:9601")
        );
        assert_eq!(d.grants[0].fields["address"], Mask::Partial);
        assert_eq!(d.ttl.as_secs(), 300);
        let p = &x.proof_types[0];
        assert_eq!(p.validity.as_secs(), 86_400);
        assert!(matches!(
            p.conditions[0],
            Condition::Field {
                test: FieldTest::Exists(true),
                ..
            }
        ));
        assert!(matches!(p.conditions[1], Condition::ValidLicence { .. }));
    }

    #[test]
    fn bad_exchange_values_name_their_key() {
        let full = format!("{GOOD}{EXCHANGE}");
        let cases: &[(&str, &str, &str)] = &[
            (
                "origin = \"https://127.0.0.1:9601\"",
                "origin = \"https://127.0.0.1:9601/x\"",
                "upstreams[0].origin",
            ),
            (
                "ca_file = \"ca.pem\"",
                "ca_file = \"nope.pem\"",
                "upstreams[0].ca_file",
            ),
            (
                "ca_file = \"ca.pem\"",
                "timeout_ms = 0",
                "upstreams[0].ca_file",
            ),
            (
                "id = \"household\"",
                "id = \"House Hold\"",
                "datasets[0].id",
            ),
            ("/persons/{key}\"", "/persons/\"", "datasets[0].url"),
            (
                "https://127.0.0.1:9601/persons",
                "https://127.0.0.1:9602/persons",
                "datasets[0].url",
            ),
            (
                "key_kind = \"citizen-id\"",
                "key_kind = \"passport\"",
                "datasets[0].key_kind",
            ),
            (
                "address = \"partial\"",
                "address = \"blurred\"",
                "datasets[0].grants[0].fields.address",
            ),
            (
                "address = \"partial\"",
                "phone = \"full\"",
                "datasets[0].grants[0].fields",
            ),
            (
                "purposes = [\"M-1\"]",
                "purposes = []",
                "datasets[0].grants[0].purposes",
            ),
            (
                "holder_kind = \"citizen-id\"",
                "holder_kind = \"uscc\"",
                "proof_types[0].conditions[0].dataset",
            ),
            (
                "op = \"exists\"",
                "op = \"like\"",
                "proof_types[0].conditions[0].op",
            ),
            (
                "field = \"address\"",
                "field = \"phone\"",
                "proof_types[0].conditions[0].field",
            ),
            (
                "conditions]]\nlicence_type = \"11100000MB0000100D001\"",
                "conditions]]\nlicence_type = \"11100000MB0000100D009\"",
                "proof_types[0].conditions[1].licence_type",
            ),
            (
                "departments = [\"91110108551385082Q\"]",
                "departments = []",
                "proof_types[0].departments",
            ),
        ];
        for (from, to, key) in cases {
            assert!(full.contains(from), "{from}");
            let body = full.replacen(from, to, 1);
            assert_eq!(&bad_key(&body, &[]), key, "{from} -> {to}");
        }
        assert_eq!(
            bad_key(&full, &[("CERTGATE_EXCHANGE__CACHE_BYTES", "0")]),
            "exchange.cache_bytes"
        );
        let long = full.replacen(
            "holder_kind = \"citizen-id\"",
            "holder_kind = \"citizen-id\"\nvalidity_seconds = 90000",
            1,
        );
        assert_eq!(bad_key(&long, &[]), "proof_types[0].validity_seconds");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                GOOD,
                &[("CERTGATE_SERVER__MAX_CONNECTIONS", "\"many\"")],
                "server.max_connections",
            ),
            (
                GOOD,
                &[("CERTGATE_SERVER__MAX_CONNECTIONS", "0")],
                "server.max_connections",
            ),
            (
                GOOD,
                &[("CERTGATE_SERVER__LISTEN", "localhost")],
                "server.listen",
            ),
            (GOOD, &[("CERTGATE_SERVER__TYPO", "1")], "server"),
            (GOOD, &[("CERTGATE_TLS__CERT", "missing.pem")], "tls.cert"),
            (
                GOOD,
                &[("CERTGATE_SERVER__REQUEST_TIMEOUT_MS", "0")],
                "server.request_timeout_ms",
            ),
            (
                &GOOD.replace("91110108551385082Q", "91110108551385082A"),
                &[],
                "departments[0].id",
            ),
            (
                &GOOD.replace("\"issuer\"", "\"emperor\""),
                &[],
                "departments[0].roles[0]",
            ),
            (
                &GOOD.replace("client_ca = [\"ca.pem\"]", "client_ca = []"),
                &[],
                "tls.client_ca",
            ),
            (
                &format!(
                    "{GOOD}\n[[departments]]\nid = \"91110108551385082Q\"\nname = \"x\"\nroles = [\"admin\"]\n"
                ),
                &[],
                "departments[1].id",
            ),
        ];
        for (body, env, key) in cases {
            let got = bad_key(body, env);
            assert!(
                got.starts_with(key),
                "expected key {key}, got {got} for env {env:?}"
            );
        }
    }

    #[test]
    fn kek_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), GOOD);
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = Config::load_with_env(&p, []).unwrap_err();
        assert!(
            err.to_string().contains("licensing.kek_file") && err.to_string().contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn access_rules_match_department_type_and_purpose() {
        let c = load(GOOD, &[]).unwrap();
        let rule = &c.licensing.access_rules[0];
        let dept: Uscc = "91110108551385082Q".parse().unwrap();
        assert!(rule.applies(&dept, "11100000MB0000100D001", Some("M-001")));
        assert!(!rule.applies(&dept, "11100000MB0000100D001", Some("M-002")));
        assert!(!rule.applies(&dept, "11100000MB0000100D001", None));
        assert!(rule.allows_field("name"));
        assert!(!format!("{:?}", c.licensing).contains(c.licensing.kek.to_base64().as_str()));
    }

    #[test]
    fn syntax_error_is_reported_with_position() {
        let err = load("[server\nlisten = 1", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }
}
