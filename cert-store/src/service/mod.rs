//! The licence and seal service over one [`Store`]: the keys and caches every part shares,
//! licence queries and the one path for tokens the gateway signs, and four focused services
//! borrowed from it — [`Seals`] (seals, the trust list, sealed documents), [`Issuance`]
//! (issuance as SD-JWT VC, lifecycle, status lists), [`Verification`] (every check by a
//! [`CheckName`], field checks) and [`Holders`] (consents and show-codes).
//!
//! Time comes in as a parameter (`now`, Unix seconds) on every call that depends on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use openssl::x509::X509;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::crypto::{CryptoError, Kek, PublicKey, SealKey};
use crate::id::{HolderId, Uscc};
use crate::jws::{self, JwsAlg, JwsHeader, JwsVerifier};
use crate::licence::{
    ConsentRecord, LicenceRecord, LicenceStatus, LicenceType, SealRecord, ShowCodeRecord,
};
use crate::licence_id::{LicenceId, TypeCode};
use crate::sdjwt;
use crate::seal_ca::{self, SealCa};
use crate::status_list::{self, Status, StatusList};
use crate::store::{Store, StoreError};

mod documents;
mod holders;
mod issuance;
mod seals;
mod verification;

pub use holders::Holders;
pub use issuance::{ISSUE_ATTEMPTS, Issuance, Prepared, Settled};
pub use seals::Seals;
pub use verification::Verification;

/// Entries in one status list (the Token Status List draft asks for at least 131,072 so that
/// an index reveals little).
pub const STATUS_LIST_ENTRIES: u32 = 131_072;
/// A list takes new licences until it is this full; indexes are drawn at random below it.
const STATUS_LIST_FILL: u64 = (STATUS_LIST_ENTRIES as u64) / 2;
/// Longest consent validity.
pub const MAX_CONSENT_SECONDS: i64 = 24 * 3600;
/// Validity of a show-code.
pub const SHOW_CODE_SECONDS: i64 = 5 * 60;
/// How long a show-code is kept after it expires (its use is in the access log); then the
/// next show-code made deletes it.
pub const SHOW_CODE_KEPT_SECONDS: i64 = 3600;
/// How long a status list token may be cached.
pub const STATUS_LIST_TTL: i64 = 300;
/// Claims of the holder that are selectively disclosable besides the type's fields.
pub const HOLDER_CLAIMS: &[&str] = &["holder_id", "holder_name"];
/// How far the clocks of issuer and verifier may differ: a credential is taken as valid up to
/// this many seconds before its `nbf` and after its `exp`, and the verdict says so.
pub const CLOCK_SKEW_SECONDS: i64 = 30;
/// The `typ` of consent tokens.
pub const CONSENT_TYP: &str = "certgate-consent+jwt";
/// Most licences one page of a holder query returns.
pub const MAX_HOLDER_PAGE: u32 = 100;
/// Most seals one page of a seal listing returns.
pub const MAX_SEAL_PAGE: u32 = 100;
/// Random characters of an automatic licence serial (base 36: 82 bits, not guessable).
const SERIAL_CHARS: usize = 16;
/// Characters of the issuance time (Unix milliseconds in base 36) an automatic serial starts
/// with: nine reach the year 5000.
const SERIAL_TIME_CHARS: usize = 9;
/// The seal kinds with a fixed name; any other kind is a special-purpose seal `…专用章`.
pub const SEAL_KINDS: &[&str] = &[
    "公章",
    "合同专用章",
    "财务专用章",
    "发票专用章",
    "法定代表人名章",
];

/// Why a service call failed. The gateway maps each variant to a status and a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A request field is missing or invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// The object is in a state that does not allow the change.
    #[error("{0}")]
    Conflict(String),
    /// The holder already holds a licence of a type one may hold once (its identifier).
    #[error("the holder already holds licence {0} of this type; renew it instead")]
    AlreadyHeld(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something failed inside the service (a lock, a signature, stored data): logged by the
    /// caller, never shown to a client.
    #[error("internal: {0}")]
    Internal(String),
    /// Key handling failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> ServiceError {
    ServiceError::Invalid {
        field: field.to_owned(),
        reason: reason.to_string(),
    }
}

/// What an issuer asks for.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IssueRequest {
    /// The licence type code.
    pub licence_type: String,
    /// The holder's USCC or citizen id.
    pub holder_id: String,
    /// The holder's name.
    pub holder_name: String,
    /// The seal to sign with (one of the issuer's seals).
    pub seal_id: String,
    /// The licence fields, per the type's schema.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Start of validity (Unix seconds); default now.
    pub valid_from: Option<i64>,
    /// End of validity (Unix seconds); default now + the type's validity.
    pub valid_until: Option<i64>,
    /// The issuer's serial; by default one is drawn (the issuance time and 16 random
    /// characters).
    pub serial: Option<String>,
}

/// Whose a new seal is, which decides the registered name the seal's name must carry.
#[derive(Debug, Clone, Copy)]
pub enum SealOwner<'a> {
    /// A department's own seal: its full legal name comes from the department table.
    Department {
        /// The department.
        id: &'a Uscc,
        /// Its full legal name (全称), e.g. 北京市朝阳区市场监督管理局.
        full_name: &'a str,
    },
    /// A market entity's seal (its free seals at registration, 云刻章), used through the
    /// holder app: its name comes from its valid business licence in the register, and only
    /// a department that issues business licences (the registrar) makes it.
    Enterprise {
        /// The enterprise.
        id: &'a Uscc,
        /// The department making it.
        made_by: &'a Uscc,
    },
}

impl SealOwner<'_> {
    /// The owner's USCC.
    pub fn id(&self) -> &Uscc {
        match self {
            SealOwner::Department { id, .. } | SealOwner::Enterprise { id, .. } => id,
        }
    }
}

/// A page of a holder's licences.
#[derive(Debug, Clone)]
pub struct HolderPage {
    /// The licences, valid ones first, then suspended, then revoked, each newest first.
    pub licences: Vec<LicenceRecord>,
    /// Where the next page starts, when there may be more.
    pub next: Option<crate::store::HolderOrder>,
}

/// What a check of a licence verification looks at. Serialised as its snake-case name.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The compact SD-JWT and its JWS can be read.
    Format,
    /// The header's `typ` is `dc+sd-jwt`.
    Typ,
    /// The seal certificate (`x5c`) is the named seal's and chains to the seal CA.
    CertificateChain,
    /// The issuer's signature holds.
    Signature,
    /// The licence type (`vct`) is known.
    Vct,
    /// The seal is the issuer's, it is not revoked, and the issuer may issue the type.
    Seal,
    /// Now is within `nbf`..`exp`.
    Time,
    /// The status list says the licence is valid.
    Status,
    /// Every disclosure matches a signed digest and is a field of the type.
    Disclosures,
}

impl CheckName {
    /// The name as reported.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Format => "format",
            CheckName::Typ => "typ",
            CheckName::CertificateChain => "certificate_chain",
            CheckName::Signature => "signature",
            CheckName::Vct => "vct",
            CheckName::Seal => "seal",
            CheckName::Time => "time",
            CheckName::Status => "status",
            CheckName::Disclosures => "disclosures",
        }
    }
}

impl PartialEq<&str> for CheckName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One check of a verification, with its outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub check: CheckName,
    /// Whether it passed.
    pub ok: bool,
    /// The reason, in words.
    pub detail: String,
}

/// The verdict on a presented licence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyReport {
    /// True when every check passed.
    pub valid: bool,
    /// Every check made, in order; verification stops at the first that fails.
    pub checks: Vec<Check>,
    /// The licence identifier, when the credential could be read.
    pub licence_id: Option<String>,
    /// The licence status from the status list, when reached.
    pub status: Option<LicenceStatus>,
    /// The signed plain claims (iss, vct, iat, nbf, exp, status, jti).
    pub claims: Map<String, Value>,
    /// The disclosed fields.
    pub disclosed: Map<String, Value>,
    /// True when the store could not be read: the verdict is then unknown, not "invalid",
    /// and the caller must say so (the gateway answers 503).
    #[serde(skip)]
    pub store_unavailable: bool,
}

impl VerifyReport {
    /// Records a check; `None` when it failed, so that `?` ends the verification there.
    fn record(&mut self, check: CheckName, outcome: Result<String, String>) -> Option<()> {
        let ok = outcome.is_ok();
        let detail = outcome.unwrap_or_else(|e| e);
        self.checks.push(Check { check, ok, detail });
        ok.then_some(())
    }
}

/// A lifecycle action on a licence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Valid → suspended.
    Suspend,
    /// Suspended → valid.
    Resume,
    /// Valid or suspended → revoked (final).
    Revoke,
}

/// certgate's licence and seal service over a [`Store`].
pub struct LicenceService {
    /// `records`, as the store every part uses.
    store: Arc<dyn Store>,
    /// Licence and seal records kept in memory in front of the store.
    records: Arc<crate::cache::CachedStore>,
    kek: Kek,
    seal_ca: SealCa,
    signing_key: SealKey,
    signing_kid: String,
    types: BTreeMap<String, Arc<LicenceType>>,
    status_uri_base: String,
    /// Decrypted and parsed seal material by seal id. OpenSSL 3 takes tens to hundreds of
    /// microseconds to decode a key or a certificate, so each is decoded once per process.
    /// Revocation is never cached: it is read from the store on every use.
    seal_cache: Mutex<HashMap<String, Arc<SealMaterial>>>,
    /// The status list taking new licences and how many it holds, counted once at start.
    open_list: Mutex<Option<(u32, u64)>>,
}

/// A seal's key and certificate, decoded.
struct SealMaterial {
    signing: SealKey,
    public: PublicKey,
    leaf_der: Vec<u8>,
    x5c: Vec<String>,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for LicenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenceService")
            .field("types", &self.types.len())
            .field("signing_kid", &self.signing_kid)
            .finish_non_exhaustive()
    }
}

const SEAL_CA: &str = "seal-ca";
const SIGNING_KEY: &str = "gateway-signing.key";

impl LicenceService {
    /// Seals: making, listing, revoking; the trust list and sealed documents.
    pub fn seals(&self) -> Seals<'_> {
        Seals { svc: self }
    }

    /// Issuance and the lifecycle of licences, with their status lists.
    pub fn issuance(&self) -> Issuance<'_> {
        Issuance { svc: self }
    }

    /// Verification of presented licences and field checks.
    pub fn verification(&self) -> Verification<'_> {
        Verification {
            svc: self,
            memory_only: false,
        }
    }

    /// Holders' consents and show-codes.
    pub fn holders(&self) -> Holders<'_> {
        Holders { svc: self }
    }

    /// Opens the service: loads (or, on first start, creates) the seal CA and the gateway's
    /// own signing key, both stored encrypted under `kek`.
    /// Licence and seal records are kept in memory up to `cache_bytes` (see
    /// [`crate::cache`]).
    pub fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        types: Vec<LicenceType>,
        status_uri_base: &str,
        now: i64,
        cache_bytes: u64,
    ) -> Result<LicenceService, ServiceError> {
        let records = Arc::new(crate::cache::CachedStore::new(store, cache_bytes));
        let store: Arc<dyn Store> = records.clone();
        let seal_ca = stored_seal_ca(&*store, &kek, now)?;
        let signing_key = stored_key(&*store, &kek, SIGNING_KEY, JwsAlg::Es256)?;
        let signing_kid = key_id(&signing_key.public_key_der());
        Ok(LicenceService {
            store,
            records,
            kek,
            seal_ca,
            signing_key,
            signing_kid,
            types: types
                .into_iter()
                .map(|t| (t.code.to_string(), Arc::new(t)))
                .collect(),
            status_uri_base: status_uri_base.trim_end_matches('/').to_owned(),
            seal_cache: Mutex::new(HashMap::new()),
            open_list: Mutex::new(None),
        })
    }

    /// The licence types in force.
    pub fn types(&self) -> impl Iterator<Item = &LicenceType> {
        self.types.values().map(|t| &**t)
    }

    /// A licence type by code (shared: a clone costs a reference count).
    pub fn licence_type(&self, code: &str) -> Option<&Arc<LicenceType>> {
        self.types.get(code)
    }

    /// The seal CA certificate (PEM).
    pub fn seal_ca_pem(&self) -> String {
        self.seal_ca.certificate_pem()
    }

    #[cfg(test)]
    fn seal_key(&self, seal: &SealRecord) -> Result<SealKey, ServiceError> {
        self.seal_signing_key(seal)
    }

    /// The seal's private key (decrypted under the KEK, cached).
    pub(crate) fn seal_signing_key(&self, seal: &SealRecord) -> Result<SealKey, ServiceError> {
        Ok(self.material(seal)?.signing.clone())
    }

    /// The seal CA's certificate: the seal maker of document seals.
    pub(crate) fn seal_ca_certificate(&self) -> &openssl::x509::X509 {
        self.seal_ca.certificate()
    }

    /// The seal CA's key.
    pub(crate) fn seal_ca_key(&self) -> &SealKey {
        self.seal_ca.key()
    }

    /// The store.
    pub(crate) fn store_ref(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// A stored seal, if there is one with this id.
    pub(crate) fn store_seal(&self, id: &str) -> Result<Option<SealRecord>, ServiceError> {
        Ok(self.store.seal(id)?)
    }

    /// A seal's material if it was decoded already (nothing is read or decoded).
    fn material_in_memory(&self, seal_id: &str) -> Option<Arc<SealMaterial>> {
        self.seal_cache.lock().ok()?.get(seal_id).cloned()
    }

    /// The decoded key and certificate of a seal, from the cache or decoded now.
    fn material(&self, seal: &SealRecord) -> Result<Arc<SealMaterial>, ServiceError> {
        let poisoned = || ServiceError::Internal("seal cache lock poisoned".into());
        if let Some(m) = self.material_in_memory(&seal.id) {
            return Ok(m);
        }
        let openssl = |e: openssl::error::ErrorStack| CryptoError::Openssl(e.to_string());
        let der = self.kek.decrypt(&seal.encrypted_key, seal.id.as_bytes())?;
        let signing = SealKey::from_pkcs8_der(seal.alg, &der)?;
        let cert = X509::from_pem(seal.certificate_pem.as_bytes())
            .map_err(|e| CryptoError::BadKey(e.to_string()))?;
        let leaf_der = cert.to_der().map_err(openssl)?;
        let ca_der = self.seal_ca.certificate().to_der().map_err(openssl)?;
        let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(openssl)?;
        let unix = |t: &openssl::asn1::Asn1TimeRef| -> Result<i64, ServiceError> {
            let d = epoch.diff(t).map_err(openssl)?;
            Ok(i64::from(d.days) * 86400 + i64::from(d.secs))
        };
        let material = Arc::new(SealMaterial {
            public: PublicKey::from_certificate(&cert)?,
            x5c: vec![b64std(&leaf_der), b64std(&ca_der)],
            leaf_der,
            not_before: unix(cert.not_before())?,
            not_after: unix(cert.not_after())?,
            signing,
        });
        self.seal_cache
            .lock()
            .map_err(|_| poisoned())?
            .insert(seal.id.clone(), material.clone());
        Ok(material)
    }

    /// A licence by identifier from memory only, when it is there: no database read.
    pub fn licence_in_memory(&self, id: &str) -> Option<Arc<LicenceRecord>> {
        self.records.cached_licence(id)
    }

    /// The records kept in memory, for forgetting what other nodes changed.
    pub fn records(&self) -> &crate::cache::CachedStore {
        &self.records
    }

    /// A licence by identifier.
    pub fn licence(&self, id: &str) -> Result<LicenceRecord, ServiceError> {
        let parsed: LicenceId = id.parse().map_err(|e| invalid("id", e))?;
        self.store
            .licence(parsed.as_str())?
            .ok_or_else(|| ServiceError::NotFound(format!("licence {id}")))
    }

    /// A page of the licences of a holder and type (only `issuer`'s when one is named): up to
    /// `limit` (at most [`MAX_HOLDER_PAGE`]) after `after`, valid ones first, then suspended,
    /// then revoked, each newest first.
    pub fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
        issuer: Option<&Uscc>,
        after: Option<&crate::store::HolderOrder>,
        limit: u32,
    ) -> Result<HolderPage, ServiceError> {
        let holder: HolderId = holder.parse().map_err(|e| invalid("holder", e))?;
        if !self.types.contains_key(type_code) {
            return Err(invalid(
                "type",
                format!("unknown licence type `{type_code}`"),
            ));
        }
        let limit = limit.clamp(1, MAX_HOLDER_PAGE);
        let mut licences =
            self.store
                .licences_by_holder(holder.as_str(), type_code, issuer, after, limit + 1)?;
        let more = licences.len() > limit as usize;
        licences.truncate(limit as usize);
        let next = more
            .then(|| licences.last().map(crate::store::HolderOrder::of))
            .flatten();
        Ok(HolderPage { licences, next })
    }

    /// Signs `claims` as an ES256 JWT with the gateway's key (its `kid` is in the JWK set),
    /// with the header `typ`: the one path for every token the gateway signs (consents, no-proof
    /// answers, status lists).
    /// The signature is ECDSA with a low `s` (the one of the pair `(r, s)`, `(r, n−s)` that
    /// verifiers here accept), like every ES256 signature certgate makes.
    pub fn sign_gateway_jwt(&self, typ: &str, claims: &Value) -> Result<String, ServiceError> {
        let header = JwsHeader {
            alg: JwsAlg::Es256,
            typ: Some(typ.to_owned()),
            kid: Some(self.signing_kid.clone()),
            x5c: None,
        };
        jws::sign_compact(&header, claims, &self.signing_key)
            .map_err(|e| ServiceError::Internal(format!("cannot sign a {typ} token: {e}")))
    }

    /// Checks that `token` is an ES256 JWT with header `typ`, signed by the gateway's key (with
    /// a low `s`) and issued by the gateway, and returns its claims. Time claims and the
    /// audience are left to the caller. The error says which rule failed, never how a decoder
    /// failed.
    pub fn verify_gateway_jwt(&self, token: &str, typ: &str) -> Result<Map<String, Value>, String> {
        if token.len() > 16 * 1024 {
            return Err("the token is longer than 16 KiB".into());
        }
        // The gateway's own parser first: strict base64url, no duplicate members, `typ`, and a
        // signature that holds with a low `s`; jsonwebtoken then checks the claims again.
        let parsed = jws::parse_compact(token, Some(typ)).map_err(|e| match e {
            jws::JwsError::WrongType { .. } => format!("typ is not {typ}"),
            _ => "not a compact JWS signed by the gateway".to_owned(),
        })?;
        if parsed.header.kid.as_deref() != Some(self.signing_kid.as_str()) {
            return Err("not signed with the gateway's key (unknown kid)".into());
        }
        parsed
            .verify(self.signing_key.public_key())
            .map_err(|_| "the signature does not hold".to_owned())?;
        let pem = self
            .signing_key
            .public_key()
            .pkey()
            .public_key_to_pem()
            .map_err(|e| e.to_string())?;
        let key = jsonwebtoken::DecodingKey::from_ec_pem(&pem).map_err(|e| e.to_string())?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&["urn:certgate:gateway"]);
        validation.set_required_spec_claims(&["iss", "exp", "iat"]);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| format!("claims refused: {}", jwt_reason(&e)))
    }
}

fn required_reason(reason: &str) -> Result<&str, ServiceError> {
    crate::text::plain(reason, 500)
        .map_err(|e| invalid("reason", format!("a reason is required that {e}")))
}

/// The disclosures of a presentation this gateway produced, decoded as `name → value`
/// (no verification: for display next to a credential the caller can verify).
pub fn decode_disclosures(presentation: &str) -> Map<String, Value> {
    presentation
        .split('~')
        .skip(1)
        .filter_map(|d| {
            let bytes = jws::b64url_decode(d).ok()?;
            let arr: Vec<Value> = serde_json::from_slice(&bytes).ok()?;
            Some((arr.get(1)?.as_str()?.to_owned(), arr.get(2)?.clone()))
        })
        .collect()
}

fn disclosed_value(presentation: &str, name: &str) -> Option<String> {
    presentation.split('~').skip(1).find_map(|d| {
        let bytes = jws::b64url_decode(d).ok()?;
        let arr: Vec<Value> = serde_json::from_slice(&bytes).ok()?;
        (arr.get(1)?.as_str()? == name).then(|| arr.get(2)?.as_str().map(str::to_owned))?
    })
}

/// The seal CA, certificate and key stored together in one encrypted secret, so that a crash
/// can never leave one without the other.
fn stored_seal_ca(store: &dyn Store, kek: &Kek, now: i64) -> Result<SealCa, ServiceError> {
    let blob = match store.secret(SEAL_CA)? {
        Some(blob) => blob,
        None => {
            let at =
                time::OffsetDateTime::from_unix_timestamp(now).map_err(|e| invalid("now", e))?;
            let ca = SealCa::create("certgate seal CA", at, 3650)?;
            let parts = json!({
                "certificate_pem": ca.certificate_pem(),
                "key_pkcs8": jws::b64url(&ca.key().to_pkcs8_der()?),
            });
            let plain = serde_json::to_vec(&parts).map_err(|e| invalid("seal CA", e))?;
            store.put_secret_once(SEAL_CA, &kek.encrypt(&plain, SEAL_CA.as_bytes())?)?
        }
    };
    let plain = kek.decrypt(&blob, SEAL_CA.as_bytes())?;
    let parts: Value = serde_json::from_slice(&plain).map_err(|e| invalid("seal CA", e))?;
    let pem = parts["certificate_pem"].as_str().unwrap_or_default();
    let key = jws::b64url_decode(parts["key_pkcs8"].as_str().unwrap_or_default())
        .map_err(|e| invalid("seal CA", e))?;
    Ok(SealCa::from_parts(
        pem.as_bytes(),
        SealKey::from_pkcs8_der(JwsAlg::Es256, &key)?,
    )?)
}

fn stored_key(
    store: &dyn Store,
    kek: &Kek,
    name: &str,
    alg: JwsAlg,
) -> Result<SealKey, ServiceError> {
    let blob = match store.secret(name)? {
        Some(blob) => blob,
        None => {
            let key = SealKey::generate(alg)?;
            store.put_secret_once(name, &kek.encrypt(&key.to_pkcs8_der()?, name.as_bytes())?)?
        }
    };
    Ok(SealKey::from_pkcs8_der(
        alg,
        &kek.decrypt(&blob, name.as_bytes())?,
    )?)
}

fn key_id(spki_der: &[u8]) -> String {
    jws::b64url(&Sha256::digest(spki_der)[..16])
}

fn add_jwk_fields(jwk: &mut Value, kid: &str, usage: &str) {
    if let Some(o) = jwk.as_object_mut() {
        o.insert("kid".into(), json!(kid));
        o.insert("use".into(), json!("sig"));
        o.insert("alg".into(), json!("ES256"));
        o.insert("certgate_key".into(), json!(usage));
    }
}

fn b64std(der: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
}

/// A licence serial: the issuance time in Unix milliseconds as [`SERIAL_TIME_CHARS`] base-36
/// characters, then [`SERIAL_CHARS`] random ones from the system RNG. The random part keeps
/// identifiers from being enumerated by counting; the time in front keeps the store's index of
/// identifiers growing at its end, so a licence writes to the pages the last one wrote rather
/// than to a random page of an index that grows with every licence ever issued. The time
/// tells no more than the licence's own `iat`.
fn drawn_serial() -> Result<String, ServiceError> {
    // The clock only orders identifiers here; a clock set before 1970 orders them from 0.
    let millis = u128::try_from(storage::clock::unix_now_ms()).unwrap_or(0);
    drawn_serial_at(millis)
}

fn drawn_serial_at(millis: u128) -> Result<String, ServiceError> {
    use crate::licence_id::ALPHABET as DIGITS;
    let mut out = String::with_capacity(SERIAL_TIME_CHARS + SERIAL_CHARS);
    let mut time = [b'0'; SERIAL_TIME_CHARS];
    let mut left = millis;
    for digit in time.iter_mut().rev() {
        *digit = DIGITS[(left % 36) as usize];
        left /= 36;
    }
    out.extend(time.iter().map(|&b| char::from(b)));
    let bytes = crate::crypto::random_bytes::<SERIAL_CHARS>()?;
    // 252 = 7 × 36: bytes at or above it are redrawn, so every character is uniform.
    let mut pool = bytes.to_vec();
    while out.len() < SERIAL_TIME_CHARS + SERIAL_CHARS {
        match pool.pop() {
            Some(b) if b < 252 => out.push(char::from(DIGITS[usize::from(b % 36)])),
            Some(_) => {}
            None => pool = crate::crypto::random_bytes::<SERIAL_CHARS>()?.to_vec(),
        }
    }
    Ok(out)
}

/// The kind of a new seal: one of [`SEAL_KINDS`] or a special-purpose `…专用章` (2 to 12
/// characters of plain text).
fn seal_kind(seal_type: &str) -> Result<&str, ServiceError> {
    let kind = crate::text::name(seal_type, 12).map_err(|e| invalid("seal_type", e))?;
    if SEAL_KINDS.contains(&kind) || (kind.ends_with("专用章") && kind.chars().count() > 3) {
        Ok(kind)
    } else {
        Err(invalid(
            "seal_type",
            "must be 公章, 合同专用章, 财务专用章, 发票专用章, 法定代表人名章 or another …专用章",
        ))
    }
}

/// A short reason for a refused token that names the rule, never the decoder's internals.
fn jwt_reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidIssuer => "not issued by the gateway",
        K::InvalidAudience => "given to another department",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        K::ExpiredSignature | K::ImmatureSignature => "outside its validity",
        K::InvalidSignature => "the signature does not hold",
        _ => "not a valid token of the gateway",
    }
}

fn random_index() -> Result<u32, ServiceError> {
    let b = crate::crypto::random_bytes::<4>()?;
    Ok(u32::from_le_bytes(b) % STATUS_LIST_ENTRIES)
}

/// The service's tests, run once on the embedded store and once on PostgreSQL (skipped, and
/// said so, when `CERTGATE_TEST_POSTGRES_URL` is not set).
#[cfg(test)]
mod tests {
    mod sqlite {
        type Backend = (
            std::sync::Arc<dyn crate::store::Store>,
            Option<crate::pg_store::SchemaGuard>,
        );

        fn backend(_: &str) -> Option<Backend> {
            Some((
                std::sync::Arc::new(crate::store::SqliteStore::in_memory().unwrap()),
                None,
            ))
        }

        include!("tests.rs");
    }

    mod postgres {
        type Backend = (
            std::sync::Arc<dyn crate::store::Store>,
            Option<crate::pg_store::SchemaGuard>,
        );

        fn backend(test: &str) -> Option<Backend> {
            let (store, guard) = crate::pg_store::test_store(test).unwrap()?;
            Some((store, Some(guard)))
        }

        include!("tests.rs");
    }
}
