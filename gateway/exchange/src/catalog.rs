//! The exchange catalog from configuration: upstream source systems, datasets with their
//! per-department, per-purpose field visibility, and the no-proof check types. Read raw from
//! TOML and validated in one step; every error names the key at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cert_store::licence::LicenceType;
use cert_store::{CitizenId, Uscc};
use serde::Deserialize;
use serde_json::Value;

/// A catalog entry that is not valid, naming its configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct CatalogError {
    /// The dotted key, e.g. `datasets[0].url`.
    pub key: String,
    /// Why it is refused.
    pub reason: String,
}

impl CatalogError {
    fn key(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        CatalogError {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Everything the exchange needs from configuration.
#[derive(Debug, Clone, Default)]
pub struct ExchangeSettings {
    /// Byte budget of the cache of upstream records.
    pub cache_bytes: u64,
    /// Source systems by origin (`https://host:port`).
    pub upstreams: Vec<UpstreamSettings>,
    /// The datasets that may be asked for.
    pub datasets: Vec<Dataset>,
    /// The no-proof check types.
    pub proof_types: Vec<ProofType>,
}

/// How to reach one source system.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `https://host:port` (or `http://host:port`), with no path.
    pub origin: String,
    /// PEM trust anchors for the source system's server certificate (https only).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain the gateway presents, with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one whole fetch, retries included.
    pub timeout: Duration,
    /// Retries after a failed connection or a 502/503/504 answer.
    pub retries: u32,
    /// Base of the exponential back-off between retries (with jitter).
    pub retry_backoff: Duration,
    /// Consecutive failed fetches that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one trial through.
    pub breaker_open: Duration,
}

/// How the key of a dataset is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// A unified social credit code (GB 32100).
    Uscc,
    /// A citizen identity number (GB 11643).
    CitizenId,
    /// 1–64 of `A-Z a-z 0-9 . _ -`.
    Free,
}

impl KeyKind {
    /// Checks `key` and returns it in canonical form.
    pub fn parse(self, key: &str) -> Result<String, String> {
        match self {
            KeyKind::Uscc => key
                .parse::<Uscc>()
                .map(|u| u.to_string())
                .map_err(|e| e.to_string()),
            KeyKind::CitizenId => key
                .parse::<CitizenId>()
                .map(|c| c.as_str().to_owned())
                .map_err(|e| e.to_string()),
            KeyKind::Free => {
                // No leading dot: `.` and `..` would name another path of the source.
                let ok = !key.is_empty()
                    && !key.starts_with('.')
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if ok {
                    Ok(key.to_owned())
                } else {
                    Err("a key is 1-64 of A-Z a-z 0-9 . _ - and does not start with a dot".into())
                }
            }
        }
    }

    /// True when the key identifies a holder (and is pseudonymised in the access log).
    pub fn is_holder(self) -> bool {
        !matches!(self, KeyKind::Free)
    }

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Uscc => "uscc",
            KeyKind::CitizenId => "citizen-id",
            KeyKind::Free => "free",
        }
    }
}

/// How a field is shown to a department.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mask {
    /// Not shown at all (the same as not listing the field).
    Omit,
    /// Shown with its middle replaced by `*`: `4201**********1234`.
    Partial,
    /// Shown as the source system holds it.
    Full,
}

/// One grant: `department` sees `fields` of the dataset, masked as listed, when its stated
/// matter code is in `purposes` (or for any stated purpose).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The department the grant is for.
    pub department: Uscc,
    /// Matter codes; `None` for any stated purpose.
    pub purposes: Option<BTreeSet<String>>,
    /// Visible fields and their masks.
    pub fields: BTreeMap<String, Mask>,
}

impl Grant {
    /// True when the grant covers this department and matter code.
    pub fn applies(&self, department: &Uscc, matter: Option<&str>) -> bool {
        &self.department == department
            && match (&self.purposes, matter) {
                (None, _) => true,
                (Some(p), Some(m)) => p.contains(m),
                (Some(_), None) => false,
            }
    }
}

/// A dataset held by a department's source system.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its id in URLs (`[a-z0-9-]`, 1–40).
    pub id: String,
    /// Display name, e.g. 户籍信息.
    pub name: String,
    /// The department whose source system holds it; only it may invalidate.
    pub owner: Uscc,
    /// The URL template with one `{key}`.
    pub url: String,
    /// The origin of `url`, naming its upstream settings.
    pub origin: String,
    /// How keys are written.
    pub key_kind: KeyKind,
    /// How long a fetched record is served from the cache.
    pub ttl: Duration,
    /// How long past its TTL a record may be served, marked stale, when the source fails.
    pub stale_if_error: Duration,
    /// Largest record accepted from the source, in bytes.
    pub max_entry_bytes: usize,
    /// The fields a record may carry; anything else the source sends is dropped.
    pub fields: BTreeSet<String>,
    /// Who sees what.
    pub grants: Vec<Grant>,
    /// A status change of a licence of one of these types invalidates the holder's record.
    pub invalidated_by_licence_types: BTreeSet<String>,
}

/// One condition of a no-proof check rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A field of the holder's record in a dataset.
    Field {
        /// The dataset id.
        dataset: String,
        /// The field.
        field: String,
        /// The test.
        test: FieldTest,
    },
    /// The holder has a licence of this type that is valid now.
    ValidLicence {
        /// The licence type code.
        licence_type: String,
    },
}

/// A test on one field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// The field equals the value.
    Equals(Value),
    /// The field equals one of the values.
    In(Vec<Value>),
    /// The field is a number within `[min, max]` (either bound may be absent).
    Range {
        /// Lower bound, inclusive.
        min: Option<f64>,
        /// Upper bound, inclusive.
        max: Option<f64>,
    },
    /// The record has the field, not null (`false`: the record lacks it, or there is no record).
    Exists(bool),
}

/// A type of electronic proof (证明事项) that departments may ask for instead of a paper proof.
#[derive(Debug, Clone)]
pub struct ProofType {
    /// Its id in URLs.
    pub id: String,
    /// Its name, e.g. 无欠税证明.
    pub name: String,
    /// How the holder is written.
    pub holder_kind: KeyKind,
    /// Departments that may ask.
    pub departments: BTreeSet<Uscc>,
    /// Matter codes (事项编码) a proof may be asked for; `None` for any stated purpose.
    pub purposes: Option<BTreeSet<String>>,
    /// Lifetime of an issued proof (at most 24 hours).
    pub validity: Duration,
    /// All must hold for the answer to be yes.
    pub conditions: Vec<Condition>,
}

// ---- raw configuration ----

/// `Exchange` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    #[serde(default = "default_cache_bytes")]
    cache_bytes: u64,
}

impl Default for RawExchange {
    fn default() -> Self {
        RawExchange {
            cache_bytes: default_cache_bytes(),
        }
    }
}

fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

/// `Upstream` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    origin: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_backoff_ms")]
    retry_backoff_ms: u64,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_breaker_open_ms")]
    breaker_open_ms: u64,
}

fn default_connect_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}
fn default_backoff_ms() -> u64 {
    50
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    10_000
}

/// `Dataset` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    id: String,
    name: String,
    owner: String,
    url: String,
    key_kind: KeyKind,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
    #[serde(default)]
    stale_if_error_seconds: u64,
    #[serde(default = "default_max_entry")]
    max_entry_bytes: usize,
    fields: Vec<String>,
    #[serde(default)]
    grants: Vec<RawGrant>,
    #[serde(default)]
    invalidated_by_licence_types: Vec<String>,
}

fn default_ttl() -> u64 {
    300
}
fn default_max_entry() -> usize {
    64 * 1024
}

/// `Grant` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    department: String,
    #[serde(default = "any_purpose")]
    purposes: Vec<String>,
    fields: BTreeMap<String, Mask>,
}

fn any_purpose() -> Vec<String> {
    vec!["*".into()]
}

/// `ProofType` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProofType {
    id: String,
    name: String,
    holder_kind: KeyKind,
    departments: Vec<String>,
    #[serde(default)]
    purposes: Option<Vec<String>>,
    #[serde(default = "default_validity")]
    validity_seconds: u64,
    conditions: Vec<RawCondition>,
}

fn default_validity() -> u64 {
    86_400
}

/// `Condition` as written in the configuration file; [`validate`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    dataset: Option<String>,
    field: Option<String>,
    op: Option<String>,
    value: Option<toml::Value>,
    values: Option<Vec<toml::Value>>,
    min: Option<f64>,
    max: Option<f64>,
    licence_type: Option<String>,
}

/// Largest cache budget accepted (the cache lives in memory).
const MAX_CACHE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Longest lifetime of a proof.
pub const MAX_PROOF_SECONDS: u64 = 86_400;

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Splits `scheme://host:port/path` into origin and path; the scheme must be http or https.
fn origin_of(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((format!("{scheme}://{authority}"), path))
}

fn millis(key: String, v: u64) -> Result<Duration, CatalogError> {
    if v == 0 || v > 600_000 {
        Err(CatalogError::key(
            key,
            "must be between 1 and 600000 milliseconds",
        ))
    } else {
        Ok(Duration::from_millis(v))
    }
}

/// Validates the exchange part of the configuration.
pub fn validate(
    raw: RawExchange,
    upstreams: Vec<RawUpstream>,
    datasets: Vec<RawDataset>,
    proof_types: Vec<RawProofType>,
    is_department: &dyn Fn(&Uscc) -> bool,
    licence_types: &[LicenceType],
    base: &Path,
) -> Result<ExchangeSettings, CatalogError> {
    if raw.cache_bytes == 0 || raw.cache_bytes > MAX_CACHE_BYTES {
        return Err(CatalogError::key(
            "exchange.cache_bytes",
            format!("must be between 1 and {MAX_CACHE_BYTES}"),
        ));
    }
    let file = |key: String, p: Option<PathBuf>| -> Result<Option<PathBuf>, CatalogError> {
        let Some(p) = p else { return Ok(None) };
        let p = base.join(p);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(p)),
            Ok(_) => Err(CatalogError::key(
                key,
                format!("{} is not a file", p.display()),
            )),
            Err(e) => Err(CatalogError::key(key, format!("{}: {e}", p.display()))),
        }
    };
    let mut out_upstreams: Vec<UpstreamSettings> = Vec::new();
    for (i, u) in upstreams.into_iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        let origin = match origin_of(u.origin.trim()) {
            Some((origin, "")) => origin,
            _ => {
                return Err(CatalogError::key(
                    key("origin"),
                    "must be https://host:port (or http://host:port) with no path",
                ));
            }
        };
        if out_upstreams.iter().any(|x| x.origin == origin) {
            return Err(CatalogError::key(key("origin"), "listed twice"));
        }
        if origin.starts_with("https://") && u.ca_file.is_none() {
            return Err(CatalogError::key(
                key("ca_file"),
                "an https upstream needs the CA that issued its server certificate",
            ));
        }
        if u.client_cert.is_some() != u.client_key.is_some() {
            return Err(CatalogError::key(
                key("client_key"),
                "client_cert and client_key go together",
            ));
        }
        if u.retries > 5 {
            return Err(CatalogError::key(key("retries"), "must be at most 5"));
        }
        if u.breaker_failures == 0 || u.breaker_failures > 1000 {
            return Err(CatalogError::key(
                key("breaker_failures"),
                "must be between 1 and 1000",
            ));
        }
        let connect_timeout = millis(key("connect_timeout_ms"), u.connect_timeout_ms)?;
        let timeout = millis(key("timeout_ms"), u.timeout_ms)?;
        out_upstreams.push(UpstreamSettings {
            origin,
            ca_file: file(key("ca_file"), u.ca_file)?,
            client_cert: file(key("client_cert"), u.client_cert)?,
            client_key: file(key("client_key"), u.client_key)?,
            connect_timeout,
            timeout,
            retries: u.retries,
            retry_backoff: millis(key("retry_backoff_ms"), u.retry_backoff_ms)?,
            breaker_failures: u.breaker_failures,
            breaker_open: millis(key("breaker_open_ms"), u.breaker_open_ms)?,
        });
    }

    let department = |key: String, id: &str| -> Result<Uscc, CatalogError> {
        let id: Uscc = id.parse().map_err(|e| CatalogError::key(key.clone(), e))?;
        if !is_department(&id) {
            return Err(CatalogError::key(key, "not in the department table"));
        }
        Ok(id)
    };
    let star = |v: &[String]| v.iter().any(|x| x == "*");

    let mut out_datasets: Vec<Dataset> = Vec::new();
    for (i, d) in datasets.into_iter().enumerate() {
        let key = |k: &str| format!("datasets[{i}].{k}");
        if !is_id(&d.id) || out_datasets.iter().any(|x| x.id == d.id) {
            return Err(CatalogError::key(
                key("id"),
                "must be a unique id of 1-40 of a-z 0-9 -",
            ));
        }
        let name = d.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(CatalogError::key(
                key("name"),
                "must be 1 to 100 characters",
            ));
        }
        let owner = department(key("owner"), &d.owner)?;
        let url = d.url.trim().to_owned();
        let Some((origin, path)) = origin_of(&url) else {
            return Err(CatalogError::key(
                key("url"),
                "must be an http(s):// URL template such as https://host:port/records/{key}",
            ));
        };
        if url.matches("{key}").count() != 1 || !path.contains("{key}") {
            return Err(CatalogError::key(
                key("url"),
                "must hold `{key}` exactly once, in the path",
            ));
        }
        if !out_upstreams.iter().any(|u| u.origin == origin) {
            return Err(CatalogError::key(
                key("url"),
                format!("no [[upstreams]] entry has origin {origin}"),
            ));
        }
        if d.ttl_seconds == 0 || d.ttl_seconds > 7 * 86_400 {
            return Err(CatalogError::key(
                key("ttl_seconds"),
                "must be between 1 and 604800",
            ));
        }
        if d.stale_if_error_seconds > 7 * 86_400 {
            return Err(CatalogError::key(
                key("stale_if_error_seconds"),
                "must be at most 604800",
            ));
        }
        if d.max_entry_bytes == 0 || d.max_entry_bytes > 16 * 1024 * 1024 {
            return Err(CatalogError::key(
                key("max_entry_bytes"),
                "must be between 1 and 16777216",
            ));
        }
        let mut fields = BTreeSet::new();
        for (j, f) in d.fields.iter().enumerate() {
            if !is_field_name(f) || !fields.insert(f.clone()) {
                return Err(CatalogError::key(
                    format!("datasets[{i}].fields[{j}]"),
                    "must be a unique snake_case field name",
                ));
            }
        }
        let mut grants = Vec::new();
        for (j, g) in d.grants.into_iter().enumerate() {
            let gkey = |k: &str| format!("datasets[{i}].grants[{j}].{k}");
            let dept = department(gkey("department"), &g.department)?;
            for f in g.fields.keys() {
                if !fields.contains(f) {
                    return Err(CatalogError::key(
                        gkey("fields"),
                        format!("`{f}` is not a field of dataset {}", d.id),
                    ));
                }
            }
            let purposes = if star(&g.purposes) {
                None
            } else if g.purposes.is_empty() {
                return Err(CatalogError::key(
                    gkey("purposes"),
                    "list matter codes, or \"*\" for any stated purpose",
                ));
            } else {
                Some(g.purposes.into_iter().collect())
            };
            grants.push(Grant {
                department: dept,
                purposes,
                fields: g.fields,
            });
        }
        let mut invalidated_by = BTreeSet::new();
        for (j, t) in d.invalidated_by_licence_types.into_iter().enumerate() {
            if !licence_types.iter().any(|x| x.code.as_str() == t) {
                return Err(CatalogError::key(
                    format!("datasets[{i}].invalidated_by_licence_types[{j}]"),
                    "not a configured licence type",
                ));
            }
            invalidated_by.insert(t);
        }
        out_datasets.push(Dataset {
            id: d.id,
            name,
            owner,
            url,
            origin,
            key_kind: d.key_kind,
            ttl: Duration::from_secs(d.ttl_seconds),
            stale_if_error: Duration::from_secs(d.stale_if_error_seconds),
            max_entry_bytes: d.max_entry_bytes,
            fields,
            grants,
            invalidated_by_licence_types: invalidated_by,
        });
    }

    let mut out_proofs: Vec<ProofType> = Vec::new();
    for (i, p) in proof_types.into_iter().enumerate() {
        let key = |k: &str| format!("proof_types[{i}].{k}");
        if !is_id(&p.id) || out_proofs.iter().any(|x| x.id == p.id) {
            return Err(CatalogError::key(
                key("id"),
                "must be a unique id of 1-40 of a-z 0-9 -",
            ));
        }
        let name = p.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(CatalogError::key(
                key("name"),
                "must be 1 to 100 characters",
            ));
        }
        if p.holder_kind == KeyKind::Free {
            return Err(CatalogError::key(
                key("holder_kind"),
                "a proof is about a holder: uscc or citizen-id",
            ));
        }
        let mut depts = BTreeSet::new();
        for (j, d) in p.departments.iter().enumerate() {
            depts.insert(department(format!("proof_types[{i}].departments[{j}]"), d)?);
        }
        if depts.is_empty() {
            return Err(CatalogError::key(
                key("departments"),
                "name the departments that may ask for this proof",
            ));
        }
        if p.validity_seconds == 0 || p.validity_seconds > MAX_PROOF_SECONDS {
            return Err(CatalogError::key(
                key("validity_seconds"),
                "must be between 1 and 86400 (24 hours)",
            ));
        }
        if p.conditions.is_empty() {
            return Err(CatalogError::key(
                key("conditions"),
                "a proof type needs at least one condition",
            ));
        }
        let mut conditions = Vec::new();
        for (j, c) in p.conditions.into_iter().enumerate() {
            let ckey = format!("proof_types[{i}].conditions[{j}]");
            conditions.push(condition(
                &ckey,
                c,
                p.holder_kind,
                &out_datasets,
                licence_types,
            )?);
        }
        out_proofs.push(ProofType {
            id: p.id,
            name,
            holder_kind: p.holder_kind,
            departments: depts,
            purposes: p
                .purposes
                .filter(|ps| !ps.iter().any(|m| m == "*"))
                .map(|ps| ps.into_iter().collect()),
            validity: Duration::from_secs(p.validity_seconds),
            conditions,
        });
    }
    Ok(ExchangeSettings {
        cache_bytes: raw.cache_bytes,
        upstreams: out_upstreams,
        datasets: out_datasets,
        proof_types: out_proofs,
    })
}

fn json_of(key: &str, v: toml::Value) -> Result<Value, CatalogError> {
    match v {
        toml::Value::String(s) => Ok(Value::String(s)),
        toml::Value::Integer(n) => Ok(Value::from(n)),
        toml::Value::Boolean(b) => Ok(Value::Bool(b)),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| CatalogError::key(key, "not a finite number")),
        _ => Err(CatalogError::key(
            key,
            "compare with a string, a number or a boolean",
        )),
    }
}

fn condition(
    key: &str,
    c: RawCondition,
    holder_kind: KeyKind,
    datasets: &[Dataset],
    licence_types: &[LicenceType],
) -> Result<Condition, CatalogError> {
    let sub = |k: &str| format!("{key}.{k}");
    if let Some(t) = c.licence_type {
        if c.dataset.is_some() || c.field.is_some() || c.op.is_some() {
            return Err(CatalogError::key(
                key,
                "a condition is either on a licence_type or on a dataset field, not both",
            ));
        }
        if !licence_types.iter().any(|x| x.code.as_str() == t) {
            return Err(CatalogError::key(
                sub("licence_type"),
                "not a configured licence type",
            ));
        }
        return Ok(Condition::ValidLicence { licence_type: t });
    }
    let Some(dataset_id) = c.dataset else {
        return Err(CatalogError::key(
            key,
            "name a dataset and field, or a licence_type",
        ));
    };
    let Some(dataset) = datasets.iter().find(|d| d.id == dataset_id) else {
        return Err(CatalogError::key(
            sub("dataset"),
            "not a configured dataset",
        ));
    };
    if dataset.key_kind != holder_kind {
        return Err(CatalogError::key(
            sub("dataset"),
            format!(
                "the dataset is keyed by {}, the proof's holder is a {}",
                dataset.key_kind.as_str(),
                holder_kind.as_str()
            ),
        ));
    }
    let field = c.field.unwrap_or_default();
    if !dataset.fields.contains(&field) {
        return Err(CatalogError::key(
            sub("field"),
            format!("not a field of dataset {dataset_id}"),
        ));
    }
    let test = match c.op.as_deref() {
        Some("equals") => {
            let v = c
                .value
                .ok_or_else(|| CatalogError::key(sub("value"), "`equals` needs a value"))?;
            FieldTest::Equals(json_of(&sub("value"), v)?)
        }
        Some("in") => {
            let vs = c
                .values
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CatalogError::key(sub("values"), "`in` needs a list of values"))?;
            FieldTest::In(
                vs.into_iter()
                    .map(|v| json_of(&sub("values"), v))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some("range") => {
            if c.min.is_none() && c.max.is_none() {
                return Err(CatalogError::key(key, "`range` needs min, max or both"));
            }
            if c.min.is_some_and(|m| !m.is_finite()) || c.max.is_some_and(|m| !m.is_finite()) {
                return Err(CatalogError::key(key, "bounds must be finite numbers"));
            }
            FieldTest::Range {
                min: c.min,
                max: c.max,
            }
        }
        Some("exists") => match c.value {
            None => FieldTest::Exists(true),
            Some(toml::Value::Boolean(b)) => FieldTest::Exists(b),
            Some(_) => {
                return Err(CatalogError::key(
                    sub("value"),
                    "`exists` takes true (the default) or false",
                ));
            }
        },
        _ => {
            return Err(CatalogError::key(
                sub("op"),
                "must be one of equals, in, range, exists",
            ));
        }
    };
    Ok(Condition::Field {
        dataset: dataset_id,
        field,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_split_from_templates() {
        assert_eq!(
            origin_of("https://127.0.0.1:9601/persons/{key}"),
            Some(("https://127.0.0.1:9601".into(), "/persons/{key}"))
        );
        assert_eq!(origin_of("ftp://x/y"), None);
        assert_eq!(origin_of("https://user@host/x"), None);
        assert_eq!(origin_of("https:///x"), None);
    }

    #[test]
    fn keys_are_checked_by_kind() {
        assert!(KeyKind::Uscc.parse("91110108551385082Q").is_ok());
        assert!(KeyKind::Uscc.parse("91110108551385082X").is_err());
        assert!(KeyKind::CitizenId.parse("11010519491231002X").is_ok());
        assert!(KeyKind::CitizenId.parse("110105194912310021").is_err());
        assert!(KeyKind::Free.parse("abc-1.2_3").is_ok());
        for bad in [
            "",
            "a/b",
            "a b",
            "%2e%2e",
            ".",
            "..",
            ".hidden",
            &"x".repeat(65),
        ] {
            assert!(KeyKind::Free.parse(bad).is_err(), "{bad}");
        }
    }
}
