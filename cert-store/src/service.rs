//! The licence and seal service: seals, issuance as SD-JWT VC, queries, verification with
//! every check reported, field checks, lifecycle, status lists, consents and show-codes.
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

/// Entries in one status list (the Token Status List draft asks for at least 131,072 so that
/// an index reveals little).
pub const STATUS_LIST_ENTRIES: u32 = 131_072;
/// A list takes new licences until it is this full; indexes are drawn at random below it.
const STATUS_LIST_FILL: u64 = (STATUS_LIST_ENTRIES as u64) / 2;
/// Longest consent validity.
pub const MAX_CONSENT_SECONDS: i64 = 24 * 3600;
/// Validity of a show-code.
pub const SHOW_CODE_SECONDS: i64 = 5 * 60;
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
/// Characters of an automatic licence serial (base 36: 82 bits, not guessable).
const SERIAL_CHARS: usize = 16;
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
    /// The issuer's serial; default the next number.
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

/// One check of a verification, with its outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `format`, `signature`, `certificate_chain`, `seal`, `typ`, `vct`,
    /// `time`, `status`, `disclosures`.
    pub check: &'static str,
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
    fn record(&mut self, check: &'static str, outcome: Result<String, String>) -> Option<()> {
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
    store: Arc<dyn Store>,
    kek: Kek,
    seal_ca: SealCa,
    signing_key: SealKey,
    signing_kid: String,
    types: BTreeMap<String, LicenceType>,
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
    /// Opens the service: loads (or, on first start, creates) the seal CA and the gateway's
    /// own signing key, both stored encrypted under `kek`.
    pub fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        types: Vec<LicenceType>,
        status_uri_base: &str,
        now: i64,
    ) -> Result<LicenceService, ServiceError> {
        let seal_ca = stored_seal_ca(&*store, &kek, now)?;
        let signing_key = stored_key(&*store, &kek, SIGNING_KEY, JwsAlg::Es256)?;
        let signing_kid = key_id(&signing_key.public_key_der());
        Ok(LicenceService {
            store,
            kek,
            seal_ca,
            signing_key,
            signing_kid,
            types: types.into_iter().map(|t| (t.code.to_string(), t)).collect(),
            status_uri_base: status_uri_base.trim_end_matches('/').to_owned(),
            seal_cache: Mutex::new(HashMap::new()),
            open_list: Mutex::new(None),
        })
    }

    /// The licence types in force.
    pub fn types(&self) -> impl Iterator<Item = &LicenceType> {
        self.types.values()
    }

    /// A licence type by code.
    pub fn licence_type(&self, code: &str) -> Option<&LicenceType> {
        self.types.get(code)
    }

    /// The seal CA certificate (PEM).
    pub fn seal_ca_pem(&self) -> String {
        self.seal_ca.certificate_pem()
    }

    /// The JWK set of the ES256 keys: the gateway's signing key (status lists, consents,
    /// proofs) and the unrevoked ES256 seals of the departments that issue licences (at most
    /// [`MAX_SEAL_PAGE`] each). Enterprises' seals are not listed: their signatures carry
    /// their certificates (`x5c`).
    pub fn jwks(&self) -> Result<Value, ServiceError> {
        let mut keys = Vec::new();
        let mut gateway_key = self.signing_key.public_key().jwk();
        add_jwk_fields(&mut gateway_key, &self.signing_kid, "gateway");
        keys.push(gateway_key);
        let issuers: std::collections::BTreeSet<&Uscc> =
            self.types.values().flat_map(|t| t.issuers.iter()).collect();
        let mut seals = Vec::new();
        for issuer in issuers {
            seals.extend(self.store.seals(issuer, None, MAX_SEAL_PAGE)?);
        }
        for seal in seals {
            if seal.alg != JwsAlg::Es256 || seal.revoked_at.is_some() {
                continue;
            }
            let cert = X509::from_pem(seal.certificate_pem.as_bytes())
                .map_err(|e| CryptoError::BadKey(e.to_string()))?;
            let mut jwk = PublicKey::from_certificate(&cert)?.jwk();
            add_jwk_fields(&mut jwk, &seal.id, "seal");
            keys.push(jwk);
        }
        Ok(json!({ "keys": keys }))
    }

    // ---- seals ----

    /// Creates a seal for `owner` with a new key pair and a seal certificate valid ten years,
    /// named after its owner (see [`LicenceService::create_seal_valid_for`]).
    pub fn create_seal(
        &self,
        owner: SealOwner<'_>,
        seal_type: &str,
        alg: JwsAlg,
        picture: Option<Vec<u8>>,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        self.create_seal_valid_for(owner, seal_type, None, alg, picture, 3650, now)
    }

    /// Creates a seal for `owner` valid `days` days (1 to 3650) from now. Its name is the
    /// owner's registered name followed by the seal kind (`北京市朝阳区市场监督管理局公章`,
    /// `小米科技有限责任公司合同专用章`); a `name` given must be exactly that. An enterprise's
    /// seal needs a valid business licence in the register, whose holder name it takes.
    #[allow(clippy::too_many_arguments)]
    pub fn create_seal_valid_for(
        &self,
        owner: SealOwner<'_>,
        seal_type: &str,
        name: Option<&str>,
        alg: JwsAlg,
        picture: Option<Vec<u8>>,
        days: u32,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        if !(1..=3650).contains(&days) {
            return Err(invalid("valid_days", "must be between 1 and 3650"));
        }
        let seal_type = seal_kind(seal_type)?;
        let owner_name = match owner {
            SealOwner::Department { full_name, .. } => crate::text::name(full_name, 100)
                .map_err(|e| invalid("owner", format!("the department's full name {e}")))?
                .to_owned(),
            SealOwner::Enterprise { id, made_by } => {
                if !self.is_registrar(made_by) {
                    return Err(ServiceError::Forbidden(
                        "only a department that issues business licences makes enterprises' seals"
                            .into(),
                    ));
                }
                self.registered_name(id, now)?
            }
        };
        let expected = format!("{owner_name}{seal_type}");
        if let Some(given) = name
            && given.trim() != expected
        {
            return Err(invalid(
                "name",
                format!(
                    "must be `{expected}`: the owner's registered name followed by the seal kind"
                ),
            ));
        }
        let name = expected.as_str();
        if name.chars().count() > 120 {
            return Err(invalid("name", "must be at most 120 characters"));
        }
        let owner = owner.id();
        if let Some(p) = &picture {
            if !p.starts_with(b"\x89PNG\r\n\x1a\n") {
                return Err(invalid("picture", "must be a PNG image"));
            }
            if p.len() > 512 * 1024 {
                return Err(invalid("picture", "must be at most 512 KiB"));
            }
        }
        let key = SealKey::generate(alg)?;
        let at =
            |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| invalid("now", e));
        let not_after = now + i64::from(days) * 86400;
        let cert = self.seal_ca.issue_seal_certificate(
            key.public_key(),
            owner,
            name,
            at(now - 3600)?,
            at(not_after)?,
        )?;
        let id = format!("seal-{}", hex::encode(crate::crypto::random_bytes::<8>()?));
        let certificate_pem = String::from_utf8(
            cert.to_pem()
                .map_err(|e| CryptoError::Openssl(e.to_string()))?,
        )
        .map_err(|e| CryptoError::Openssl(e.to_string()))?;
        let encrypted_key = self.kek.encrypt(&key.to_pkcs8_der()?, id.as_bytes())?;
        let record = SealRecord {
            picture_sha256: picture.as_ref().map(|p| hex::encode(Sha256::digest(p))),
            picture,
            id,
            owner: owner.clone(),
            seal_type: seal_type.to_owned(),
            name: name.to_owned(),
            alg,
            certificate_pem,
            encrypted_key,
            created_at: now,
            not_after,
            revoked_at: None,
            revocation_reason: None,
            owner_name: Some(owner_name),
        };
        self.store.insert_seal(&record)?;
        Ok(record)
    }

    /// True when `department` issues the business licence (registers market entities): it
    /// makes and revokes enterprises' seals.
    pub fn is_registrar(&self, department: &Uscc) -> bool {
        self.types
            .values()
            .any(|t| t.business_licence && t.issuers.contains(department))
    }

    /// The name a market entity is registered under: the holder name of its business licence
    /// valid at `now` (the type marked `business_licence`).
    pub fn registered_name(&self, enterprise: &Uscc, now: i64) -> Result<String, ServiceError> {
        if !enterprise.is_market_entity() {
            return Err(invalid(
                "holder",
                "an enterprise's seal is made for a market entity (a USCC starting with 9)",
            ));
        }
        let licence_type = self
            .types
            .values()
            .find(|t| t.business_licence)
            .ok_or_else(|| {
                ServiceError::Conflict(
                    "no licence type is marked business_licence: enterprises' seals take their name from it".into(),
                )
            })?;
        let page = self.store.licences_by_holder(
            enterprise.as_str(),
            licence_type.code.as_str(),
            None,
            MAX_HOLDER_PAGE,
        )?;
        page.iter()
            .find(|l| l.status == LicenceStatus::Valid && l.not_before <= now && now < l.expires_at)
            .and_then(|l| disclosed_value(&l.sd_jwt, "holder_name"))
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "{enterprise} holds no valid {} in the register: its seals are made after it is registered",
                    licence_type.name
                ))
            })
    }

    /// Up to `limit` (at most [`MAX_SEAL_PAGE`]) seals of `owner`, newest first, after the
    /// seal `after` (the last id of the previous page).
    pub fn seals(
        &self,
        owner: &Uscc,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SealRecord>, ServiceError> {
        let after = match after {
            Some(id) => {
                let seal = self
                    .store
                    .seal(id)?
                    .filter(|s| &s.owner == owner)
                    .ok_or_else(|| invalid("cursor", "not a seal of this owner"))?;
                Some((seal.created_at, seal.id))
            }
            None => None,
        };
        Ok(self.store.seals(
            owner,
            after.as_ref().map(|(t, id)| (*t, id.as_str())),
            limit.clamp(1, MAX_SEAL_PAGE),
        )?)
    }

    /// A seal by id.
    pub fn seal(&self, id: &str) -> Result<SealRecord, ServiceError> {
        self.store
            .seal(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("seal {id}")))
    }

    /// Revokes one of `by`'s seals, or, when `by` is the registrar, an enterprise's seal.
    /// Licences and documents it signed fail verification from `now` on.
    pub fn revoke_seal(
        &self,
        id: &str,
        by: &Uscc,
        reason: &str,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        let seal = self.seal(id)?;
        let registrar = seal.owner.is_market_entity() && self.is_registrar(by);
        if &seal.owner != by && !registrar {
            return Err(ServiceError::Forbidden(
                "only the seal's owner (or, for an enterprise's seal, the registrar) may revoke it"
                    .into(),
            ));
        }
        let reason = required_reason(reason)?;
        if !self.store.revoke_seal(id, now, reason)? {
            return Err(ServiceError::Conflict(format!(
                "seal {id} is already revoked"
            )));
        }
        self.seal(id)
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

    /// The decoded key and certificate of a seal, from the cache or decoded now.
    fn material(&self, seal: &SealRecord) -> Result<Arc<SealMaterial>, ServiceError> {
        let poisoned = || ServiceError::Internal("seal cache lock poisoned".into());
        if let Some(m) = self
            .seal_cache
            .lock()
            .map_err(|_| poisoned())?
            .get(&seal.id)
        {
            return Ok(m.clone());
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

    // ---- issuance ----

    /// Issues a licence: checks the issuer may issue the type and owns the seal, validates the
    /// holder and the fields, assigns the identifier and a status-list slot, signs.
    pub fn issue(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        self.issue_inner(issuer, req, None, now)
    }

    fn issue_inner(
        &self,
        issuer: &Uscc,
        req: &IssueRequest,
        renews: Option<&LicenceRecord>,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        let licence_type = self.types.get(&req.licence_type).ok_or_else(|| {
            invalid(
                "licence_type",
                format!("unknown licence type `{}`", req.licence_type),
            )
        })?;
        if !licence_type.issuers.contains(issuer) {
            return Err(ServiceError::Forbidden(format!(
                "department {issuer} may not issue {} ({})",
                licence_type.name, licence_type.code
            )));
        }
        let holder: HolderId = req.holder_id.parse().map_err(|e| invalid("holder_id", e))?;
        let holder_name =
            crate::text::name(&req.holder_name, 200).map_err(|e| invalid("holder_name", e))?;
        licence_type
            .validate_fields(&req.fields)
            .map_err(|e| invalid(&format!("fields.{}", e.field), e.reason))?;
        let seal = self.seal(&req.seal_id).map_err(|e| match e {
            ServiceError::NotFound(_) => invalid("seal_id", "no such seal"),
            other => other,
        })?;
        if &seal.owner != issuer {
            return Err(ServiceError::Forbidden(
                "the seal belongs to another department".into(),
            ));
        }
        if seal.revoked_at.is_some() {
            return Err(invalid("seal_id", "the seal is revoked"));
        }
        // Times are Unix seconds between 1970 and 9999: anything else is a client error, and the
        // bound keeps every later sum far from overflow.
        const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let in_range = |field: &str, t: i64| {
            if (0..=LATEST).contains(&t) {
                Ok(t)
            } else {
                Err(invalid(field, "must be Unix seconds between 1970 and 9999"))
            }
        };
        let not_before = in_range("valid_from", req.valid_from.unwrap_or(now))?;
        let expires_at = match req.valid_until {
            Some(t) => in_range("valid_until", t)?,
            None => (not_before + i64::from(licence_type.validity_days) * 86400).min(LATEST),
        };
        if expires_at <= not_before {
            return Err(invalid("valid_until", "must be after valid_from"));
        }
        if expires_at <= now {
            return Err(invalid(
                "valid_until",
                "the validity has already ended: a licence is issued to be in force",
            ));
        }
        // The seal certificate is checked at issuance time (`iat`), so a licence may outlive
        // it, as a paper licence outlives the renewal of the stamp that sealed it.
        let (serial, version) = match renews {
            Some(old) => (old.id.serial().to_owned(), old.id.version() + 1),
            None => match &req.serial {
                Some(s) => (s.clone(), 1),
                None => (random_serial()?, 1),
            },
        };
        let type_code: TypeCode = licence_type.code.clone();
        let mut id = LicenceId::new(&type_code, issuer, &serial, version)
            .map_err(|e| invalid("serial", e))?;
        let automatic = renews.is_none() && req.serial.is_none();
        while self.store.licence(id.as_str())?.is_some() {
            if !automatic {
                return Err(ServiceError::Conflict(format!(
                    "licence {id} already exists"
                )));
            }
            // A random serial already taken (rare beyond measure): draw again.
            let serial = random_serial()?;
            id = LicenceId::new(&type_code, issuer, &serial, version)
                .map_err(|e| invalid("serial", e))?;
        }

        let material = self.material(&seal)?;
        let key = &material.signing;
        let x5c = material.x5c.clone();
        let header = JwsHeader {
            alg: seal.alg,
            typ: Some("dc+sd-jwt".into()),
            kid: Some(seal.id.clone()),
            x5c: Some(x5c),
        };
        let mut disclosable = req.fields.clone();
        disclosable.insert(
            "holder_id".into(),
            Value::String(holder.as_str().to_owned()),
        );
        disclosable.insert("holder_name".into(), Value::String(holder_name.to_owned()));

        for _ in 0..32 {
            let list = self.open_status_list()?;
            let index = random_index()?;
            let mut plain = Map::new();
            plain.insert("iss".into(), json!(format!("urn:certgate:dept:{issuer}")));
            plain.insert("jti".into(), json!(id.as_str()));
            plain.insert("vct".into(), json!(licence_type.code.as_str()));
            plain.insert("iat".into(), json!(now));
            plain.insert("nbf".into(), json!(not_before));
            plain.insert("exp".into(), json!(expires_at));
            plain.insert(
                "status".into(),
                json!({"status_list": {"idx": index, "uri": format!("{}/{list}", self.status_uri_base)}}),
            );
            let issued = sdjwt::issue(
                header.clone(),
                plain,
                &disclosable,
                &mut sdjwt::OsSalts,
                key,
            )
            .map_err(|e| ServiceError::Internal(format!("cannot sign: {e}")))?;
            let record = LicenceRecord {
                id: id.clone(),
                type_code: licence_type.code.clone(),
                issuer: issuer.clone(),
                holder: holder.clone(),
                seal_id: seal.id.clone(),
                sd_jwt: issued.sd_jwt,
                fields: req.fields.clone(),
                status: LicenceStatus::Valid,
                status_reason: None,
                status_list: list,
                status_index: index,
                issued_at: now,
                not_before,
                expires_at,
                replaces: renews.map(|o| o.id.clone()),
                replaced_by: None,
            };
            let stored = match renews {
                Some(old) => self.store.insert_renewal(old.id.as_str(), &record, now),
                None => self
                    .store
                    .insert_licence(&record, licence_type.one_per_holder.then_some(now)),
            };
            match stored {
                Ok(()) => {
                    self.count_entry(list);
                    return Ok(record);
                }
                // Another licence took this status slot (or the id) meanwhile: draw again.
                Err(StoreError::Conflict(_)) if self.store.licence(id.as_str())?.is_none() => {
                    continue;
                }
                Err(StoreError::Conflict(_)) => {
                    return Err(ServiceError::Conflict(format!(
                        "licence {id} already exists"
                    )));
                }
                Err(StoreError::Held(held)) => return Err(ServiceError::AlreadyHeld(held)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(
            "no free status-list slot found".into(),
        ))
    }

    /// The list new licences go into: the lowest one not yet half full.
    fn open_status_list(&self) -> Result<u32, ServiceError> {
        let mut open = self
            .open_list
            .lock()
            .map_err(|_| ServiceError::Internal("status list lock poisoned".into()))?;
        let (mut list, mut len) = match *open {
            // Other nodes fill the lists too: count again each time on a shared store.
            Some((list, _)) if self.store.is_shared() => (list, self.store.status_list_len(list)?),
            Some(state) => state,
            None => (0, self.store.status_list_len(0)?),
        };
        while len >= STATUS_LIST_FILL {
            list += 1;
            len = self.store.status_list_len(list)?;
        }
        *open = Some((list, len));
        Ok(list)
    }

    /// Counts a licence entered in `list`.
    fn count_entry(&self, list: u32) {
        if let Ok(mut open) = self.open_list.lock()
            && let Some((l, n)) = open.as_mut()
            && *l == list
        {
            *n += 1;
        }
    }

    // ---- queries ----

    /// A licence by identifier.
    pub fn licence(&self, id: &str) -> Result<LicenceRecord, ServiceError> {
        let parsed: LicenceId = id.parse().map_err(|e| invalid("id", e))?;
        self.store
            .licence(parsed.as_str())?
            .ok_or_else(|| ServiceError::NotFound(format!("licence {id}")))
    }

    /// A page of the licences of a holder and type: up to `limit` (at most
    /// [`MAX_HOLDER_PAGE`]) after `after`, valid ones first, then suspended, then revoked,
    /// each newest first.
    pub fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
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
                .licences_by_holder(holder.as_str(), type_code, after, limit + 1)?;
        let more = licences.len() > limit as usize;
        licences.truncate(limit as usize);
        let next = more
            .then(|| licences.last().map(crate::store::HolderOrder::of))
            .flatten();
        Ok(HolderPage { licences, next })
    }

    /// The licence's SD-JWT with only the disclosures whose name `keep` accepts.
    pub fn present(
        &self,
        licence: &LicenceRecord,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<String, ServiceError> {
        sdjwt::select(&licence.sd_jwt, keep)
            .map_err(|e| ServiceError::Internal(format!("stored credential: {e}")))
    }

    /// Answers match / no-match per field without disclosing anything else (核验).
    pub fn check_fields(
        &self,
        licence: &LicenceRecord,
        claims: &Map<String, Value>,
    ) -> Result<BTreeMap<String, bool>, ServiceError> {
        if claims.is_empty() {
            return Err(invalid("fields", "name at least one field to check"));
        }
        let licence_type = self.types.get(licence.type_code.as_str()).ok_or_else(|| {
            ServiceError::Internal("the licence's type is no longer configured".into())
        })?;
        let mut out = BTreeMap::new();
        for (name, expected) in claims {
            // No field holds such a value: a question that cannot match is refused.
            if let Some(text) = expected.as_str() {
                crate::text::plain(text, 1000).map_err(|e| invalid(name, e))?;
            }
            let actual = match name.as_str() {
                "holder_id" => Some(Value::String(licence.holder.to_string())),
                _ if licence_type.fields.iter().any(|f| &f.name == name) => {
                    licence.fields.get(name).cloned()
                }
                _ => return Err(invalid(name, "not a field of this licence type")),
            };
            out.insert(name.clone(), actual.as_ref() == Some(expected));
        }
        Ok(out)
    }

    // ---- verification ----

    /// Verifies a presented SD-JWT VC and reports every check.
    pub fn verify(&self, presented: &str, now: i64) -> VerifyReport {
        let mut report = VerifyReport {
            valid: false,
            checks: Vec::new(),
            licence_id: None,
            status: None,
            claims: Map::new(),
            disclosed: Map::new(),
            store_unavailable: false,
        };
        let unavailable = std::cell::Cell::new(false);
        report.valid = self
            .run_checks(presented, now, &mut report, &unavailable)
            .is_some();
        if unavailable.get() {
            report.valid = false;
            report.store_unavailable = true;
        }
        report
    }

    /// Runs the checks in order, recording each; stops (with `None`) at the first failure.
    fn run_checks(
        &self,
        presented: &str,
        now: i64,
        report: &mut VerifyReport,
        unavailable: &std::cell::Cell<bool>,
    ) -> Option<()> {
        // The seal found while resolving the key is kept for the seal check below, so a
        // verification reads it once.
        let resolved_seal = std::cell::RefCell::new(None);
        let resolved = sdjwt::verify(presented, &|parsed: &jws::ParsedJws| {
            self.resolve_seal_key(parsed, now, unavailable)
                .map(|(key, note, seal)| {
                    *resolved_seal.borrow_mut() = Some((note, seal));
                    key
                })
        });
        let verified = match resolved {
            Ok(v) => v,
            Err(e) => {
                let (check, detail) = classify_sdjwt_error(&e);
                return report.record(check, Err(detail));
            }
        };
        let Some((chain_note, seal)) = resolved_seal.into_inner() else {
            return report.record("certificate_chain", Err("no seal was resolved".into()));
        };
        report.record("typ", Ok("dc+sd-jwt".into()))?;
        report.record("certificate_chain", Ok(chain_note))?;
        let alg = verified.header.alg.name();
        report.record(
            "signature",
            Ok(format!("{alg} signature by the seal's key is valid")),
        )?;
        let claim = |name: &str| {
            verified
                .claims
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        report.licence_id = Some(claim("jti").to_owned()).filter(|s| !s.is_empty());
        report.claims = verified.claims.clone();
        report.disclosed = verified.disclosed.clone();

        let vct = claim("vct");
        let licence_type = self.types.get(vct);
        report.record(
            "vct",
            licence_type
                .map(|t| format!("{} ({vct})", t.name))
                .ok_or_else(|| format!("unknown licence type `{vct}`")),
        )?;
        let licence_type = licence_type?;

        // The seal must be the claimed issuer's, and that department must issue this type.
        let kid = verified.header.kid.as_deref().unwrap_or_default();
        let iss = claim("iss");
        let seal_check = if iss != format!("urn:certgate:dept:{}", seal.owner) {
            Err(format!(
                "seal {kid} belongs to {}, not to the issuer `{iss}`",
                seal.owner
            ))
        } else if !licence_type.issuers.contains(&seal.owner) {
            Err(format!(
                "department {} may not issue {} ({vct})",
                seal.owner, licence_type.name
            ))
        } else {
            Ok(format!(
                "the seal belongs to the issuer, which may issue {}",
                licence_type.name
            ))
        };
        report.record("seal", seal_check)?;

        if let Some(name) = verified.disclosed.keys().find(|n| {
            !HOLDER_CLAIMS.contains(&n.as_str())
                && !licence_type.fields.iter().any(|f| &f.name == *n)
        }) {
            let detail = format!(
                "disclosure `{name}` is not a field of {}",
                licence_type.name
            );
            return report.record("disclosures", Err(detail));
        }
        report.record(
            "time",
            sdjwt::check_time(&verified.claims, now, CLOCK_SKEW_SECONDS)
                .map(|()| {
                    format!("within nbf..exp (allowing {CLOCK_SKEW_SECONDS} s of clock skew)")
                })
                .map_err(|e| format!("{e} (allowing {CLOCK_SKEW_SECONDS} s of clock skew)")),
        )?;
        let status = self.status_of(&verified.claims, kid, unavailable);
        report.status = status.as_ref().ok().copied();
        report.record(
            "status",
            status.and_then(|s| match s {
                LicenceStatus::Valid => Ok("licence is valid".to_owned()),
                other => Err(format!("licence is {}", other.as_str())),
            }),
        )?;
        let digests = verified.digests_checked;
        report.record(
            "disclosures",
            Ok(format!(
                "{digests} disclosure digest(s) match the signed credential"
            )),
        )
    }

    /// Finds the key that must have signed a credential: the seal named by `kid`, whose
    /// certificate must be the `x5c` leaf, chain to the seal CA and not be revoked.
    fn resolve_seal_key(
        &self,
        parsed: &jws::ParsedJws,
        now: i64,
        unavailable: &std::cell::Cell<bool>,
    ) -> Result<(Box<dyn JwsVerifier>, String, SealRecord), String> {
        let x5c_der = parsed
            .header
            .x5c
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c)
                    .map_err(|_| "x5c holds a certificate that is not base64".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(leaf_der) = x5c_der.first() else {
            return Err("x5c is missing: the seal certificate is required".into());
        };
        let iat = parsed
            .payload
            .get("iat")
            .and_then(Value::as_i64)
            .unwrap_or(now);
        let kid = parsed.header.kid.as_deref().ok_or("kid is missing")?;
        let seal = self.store.seal(kid).map_err(|e| {
            unavailable.set(matches!(e, StoreError::Database(_)));
            format!("seal lookup failed: {e}")
        })?;
        let material = match &seal {
            Some(seal) => Some(
                self.material(seal)
                    .map_err(|e| format!("seal {kid}: {e}"))?,
            ),
            None => None,
        };
        match &material {
            // The leaf is the very certificate our seal CA issued for this seal: its chain
            // was checked when it was made, only its validity at `iat` is left to check.
            Some(m) if &m.leaf_der == leaf_der => {
                if iat < m.not_before || iat > m.not_after {
                    return Err(format!(
                        "seal certificate does not chain to the seal CA: it is not valid at iat {iat}"
                    ));
                }
            }
            // Anything else gets the full chain check, for its error message, and is then
            // refused as not being the seal's certificate.
            _ => {
                let certs = x5c_der
                    .iter()
                    .map(|der| {
                        X509::from_der(der)
                            .map_err(|_| "x5c holds a certificate that cannot be read".to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let (leaf, rest) = certs.split_first().ok_or("x5c is missing")?;
                let at = time::OffsetDateTime::from_unix_timestamp(iat)
                    .map_err(|_| "iat is out of range".to_owned())?;
                seal_ca::verify_chain(
                    leaf,
                    rest,
                    std::slice::from_ref(self.seal_ca.certificate()),
                    at,
                )
                .map_err(|e| format!("seal certificate does not chain to the seal CA: {e}"))?;
                return Err(match seal {
                    Some(_) => format!("x5c leaf is not the certificate of seal {kid}"),
                    None => format!("seal {kid} is not known"),
                });
            }
        }
        let (Some(seal), Some(material)) = (seal, material) else {
            return Err(format!("seal {kid} is not known"));
        };
        if let Some(revoked_at) = seal.revoked_at
            && revoked_at <= now
        {
            return Err(format!(
                "seal revoked at {revoked_at}: {}",
                seal.revocation_reason.unwrap_or_default()
            ));
        }
        let note = format!(
            "seal {kid} ({}) chains to the certgate seal CA and is not revoked",
            seal.name
        );
        Ok((Box::new(material.public.clone()), note, seal))
    }

    fn status_of(
        &self,
        claims: &Map<String, Value>,
        seal_id: &str,
        unavailable: &std::cell::Cell<bool>,
    ) -> Result<LicenceStatus, String> {
        let entry = claims
            .get("status")
            .and_then(|s| s.get("status_list"))
            .ok_or("the credential carries no status_list entry")?;
        let idx = entry
            .get("idx")
            .and_then(Value::as_u64)
            .ok_or("status_list.idx missing")?;
        let uri = entry
            .get("uri")
            .and_then(Value::as_str)
            .ok_or("status_list.uri missing")?;
        let list: u32 = uri
            .strip_prefix(&format!("{}/", self.status_uri_base))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("status list {uri} is not one of this gateway's"))?;
        let id = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or("jti missing")?;
        let licence = self
            .store
            .licence(id)
            .map_err(|e| {
                unavailable.set(matches!(e, StoreError::Database(_)));
                format!("status lookup failed: {e}")
            })?
            .ok_or_else(|| format!("licence {id} is not in this gateway's register"))?;
        if u64::from(licence.status_index) != idx
            || licence.status_list != list
            || licence.seal_id != seal_id
            || claims.get("vct").and_then(Value::as_str) != Some(licence.type_code.as_str())
        {
            return Err("the status entry does not belong to this licence".into());
        }
        Ok(licence.status)
    }

    // ---- lifecycle ----

    /// Suspends, resumes or revokes a licence; only its issuer may.
    pub fn change_status(
        &self,
        id: &str,
        by: &Uscc,
        action: Lifecycle,
        reason: &str,
    ) -> Result<LicenceRecord, ServiceError> {
        let licence = self.licence(id)?;
        if &licence.issuer != by {
            return Err(ServiceError::Forbidden(
                "only the licence's issuer may change its status".into(),
            ));
        }
        let reason = required_reason(reason)?;
        let next = match (action, licence.status) {
            (Lifecycle::Suspend, LicenceStatus::Valid) => LicenceStatus::Suspended,
            (Lifecycle::Resume, LicenceStatus::Suspended) => LicenceStatus::Valid,
            (Lifecycle::Revoke, LicenceStatus::Valid | LicenceStatus::Suspended) => {
                LicenceStatus::Revoked
            }
            (_, current) => {
                return Err(ServiceError::Conflict(format!(
                    "a {} licence cannot be {}",
                    current.as_str(),
                    match action {
                        Lifecycle::Suspend => "suspended",
                        Lifecycle::Resume => "resumed",
                        Lifecycle::Revoke => "revoked",
                    }
                )));
            }
        };
        self.store
            .set_status(licence.id.as_str(), licence.status, next, Some(reason))
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::Conflict(
                    "the licence changed meanwhile (another status change or a renewal); read it again".into(),
                ),
                other => other.into(),
            })?;
        self.licence(id)
    }

    /// Renews a licence: a new identifier (next version) linked to the old one, which is
    /// revoked as replaced. Fields default to the old licence's.
    pub fn renew(
        &self,
        id: &str,
        by: &Uscc,
        fields: Option<Map<String, Value>>,
        valid_until: Option<i64>,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        let old = self.licence(id)?;
        if &old.issuer != by {
            return Err(ServiceError::Forbidden(
                "only the licence's issuer may renew it".into(),
            ));
        }
        if old.status != LicenceStatus::Valid {
            return Err(ServiceError::Conflict(format!(
                "a {} licence cannot be renewed; only a valid one can",
                old.status.as_str()
            )));
        }
        let holder_name = sdjwt::select(&old.sd_jwt, &|n| n == "holder_name")
            .ok()
            .and_then(|p| disclosed_value(&p, "holder_name"))
            .unwrap_or_default();
        let req = IssueRequest {
            licence_type: old.type_code.to_string(),
            holder_id: old.holder.to_string(),
            holder_name,
            seal_id: old.seal_id.clone(),
            fields: fields.unwrap_or_else(|| old.fields.clone()),
            valid_from: Some(now),
            valid_until,
            serial: None,
        };
        self.issue_inner(by, &req, Some(&old), now)
    }

    /// The signed status list `n` (`statuslist+jwt`).
    pub fn status_list_token(&self, n: u32, now: i64) -> Result<String, ServiceError> {
        let entries = self.store.status_entries(n)?;
        if entries.is_empty() && n > 0 && self.store.status_list_len(n - 1)? < STATUS_LIST_FILL {
            return Err(ServiceError::NotFound(format!("status list {n}")));
        }
        let mut list = StatusList::new(STATUS_LIST_ENTRIES as usize)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        for (idx, status) in entries {
            let s = match status {
                LicenceStatus::Valid => Status::Valid,
                LicenceStatus::Revoked => Status::Revoked,
                LicenceStatus::Suspended => Status::Suspended,
            };
            list.set(idx as usize, s)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        let payload = status_list::status_list_payload(
            &format!("{}/{n}", self.status_uri_base),
            now,
            now + 2 * STATUS_LIST_TTL,
            STATUS_LIST_TTL,
            &list,
        );
        let header = JwsHeader {
            alg: JwsAlg::Es256,
            typ: Some(status_list::STATUS_LIST_TYP.into()),
            kid: Some(self.signing_kid.clone()),
            x5c: None,
        };
        jws::sign_compact(&header, &payload, &self.signing_key)
            .map_err(|e| ServiceError::Internal(format!("cannot sign status list: {e}")))
    }

    // ---- consents and show-codes ----

    /// Records a holder's consent for `department` to query licences of `types` for
    /// `purpose`, and returns it with its token (an ES256 JWT signed by the gateway).
    #[allow(clippy::too_many_arguments)]
    pub fn create_consent(
        &self,
        app: &Uscc,
        holder: &str,
        department: &Uscc,
        types: &[String],
        purpose: &str,
        ttl_seconds: i64,
        now: i64,
    ) -> Result<(ConsentRecord, String), ServiceError> {
        let holder: HolderId = holder.parse().map_err(|e| invalid("holder_id", e))?;
        if types.is_empty() {
            return Err(invalid("licence_types", "name at least one licence type"));
        }
        for t in types {
            if !self.types.contains_key(t) {
                return Err(invalid(
                    "licence_types",
                    format!("unknown licence type `{t}`"),
                ));
            }
        }
        let purpose = crate::text::plain(purpose, 200).map_err(|e| invalid("purpose", e))?;
        if ttl_seconds <= 0 || ttl_seconds > MAX_CONSENT_SECONDS {
            return Err(invalid(
                "ttl_seconds",
                "must be between 1 and 86400 (24 hours)",
            ));
        }
        let record = ConsentRecord {
            id: format!(
                "consent-{}",
                hex::encode(crate::crypto::random_bytes::<12>()?)
            ),
            holder: holder.as_str().to_owned(),
            department: department.clone(),
            licence_types: types.to_vec(),
            purpose: purpose.to_owned(),
            created_by: app.clone(),
            expires_at: now + ttl_seconds,
            revoked_at: None,
        };
        self.store.insert_consent(&record)?;
        let claims = json!({
            "iss": "urn:certgate:gateway",
            "jti": record.id,
            "sub": self.holder_pseudonym(holder.as_str())?,
            "aud": format!("urn:certgate:dept:{department}"),
            "licence_types": types,
            "purpose": purpose,
            "iat": now,
            "exp": record.expires_at,
        });
        let token = self.sign_gateway_jwt(CONSENT_TYP, &claims)?;
        Ok((record, token))
    }

    /// Signs `claims` as an ES256 JWT with the gateway's key (its `kid` is in the JWK set),
    /// with the header `typ`.
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

    /// A keyed pseudonym of a holder id for tokens that travel outside the gateway: HMAC-SHA256
    /// under a key derived from the gateway's signing key, so it cannot be reversed by hashing
    /// candidate ids.
    fn holder_pseudonym(&self, holder: &str) -> Result<String, ServiceError> {
        let internal = |e: openssl::error::ErrorStack| ServiceError::Internal(e.to_string());
        let mut seed = Sha256::new();
        seed.update(b"certgate consent subject v1");
        seed.update(self.signing_key.to_pkcs8_der()?.as_slice());
        let key = openssl::pkey::PKey::hmac(&seed.finalize()).map_err(internal)?;
        let mut mac = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)
            .map_err(internal)?;
        mac.update(holder.as_bytes()).map_err(internal)?;
        Ok(format!(
            "hmac:{}",
            hex::encode(mac.sign_to_vec().map_err(internal)?)
        ))
    }

    /// Checks that `token` is a live consent of `holder` for `department` to query `type_code`.
    pub fn check_consent(
        &self,
        token: &str,
        holder: &str,
        department: &Uscc,
        type_code: &str,
        now: i64,
    ) -> Result<ConsentRecord, ServiceError> {
        let refused = |why: &str| ServiceError::Forbidden(format!("consent token refused: {why}"));
        let claims = self
            .verify_gateway_jwt(token, CONSENT_TYP)
            .map_err(|why| refused(&why))?;
        if claims.get("aud").and_then(Value::as_str)
            != Some(format!("urn:certgate:dept:{department}").as_str())
        {
            return Err(refused("it was given to another department"));
        }
        let id = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let consent = self
            .store
            .consent(id)?
            .ok_or_else(|| refused("unknown consent"))?;
        let holder: HolderId = holder.parse().map_err(|e| invalid("holder", e))?;
        if consent.revoked_at.is_some() {
            return Err(ServiceError::Forbidden(
                "the holder revoked this consent".into(),
            ));
        }
        if consent.expires_at <= now {
            return Err(ServiceError::Forbidden("the consent has expired".into()));
        }
        if &consent.department != department {
            return Err(ServiceError::Forbidden(
                "the consent was given to another department".into(),
            ));
        }
        if consent.holder != holder.as_str() {
            return Err(ServiceError::Forbidden(
                "the consent was given by another holder".into(),
            ));
        }
        if !consent.licence_types.iter().any(|t| t == type_code) {
            return Err(ServiceError::Forbidden(
                "the consent does not cover this licence type".into(),
            ));
        }
        Ok(consent)
    }

    /// Revokes a consent; only the app that created it may. Returns its id and holder.
    pub fn revoke_consent(
        &self,
        id: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<(String, String), ServiceError> {
        let consent = self
            .store
            .consent(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("consent {id}")))?;
        if &consent.created_by != by {
            return Err(ServiceError::Forbidden(
                "only the app that created a consent may revoke it".into(),
            ));
        }
        if !self.store.revoke_consent(id, now)? {
            return Err(ServiceError::Conflict(
                "the consent is already revoked".into(),
            ));
        }
        Ok((consent.id, consent.holder))
    }

    /// Creates a one-use show-code for a licence (valid 5 minutes); returns the code.
    pub fn create_show_code(
        &self,
        app: &Uscc,
        licence_id: &str,
        now: i64,
    ) -> Result<(String, i64), ServiceError> {
        let licence = self.licence(licence_id)?;
        if licence.status != LicenceStatus::Valid {
            return Err(ServiceError::Conflict(format!(
                "the licence is {}",
                licence.status.as_str()
            )));
        }
        if now < licence.not_before || now >= licence.expires_at {
            return Err(ServiceError::Conflict(
                "the licence is not within its validity period".into(),
            ));
        }
        let code = jws::b64url(crate::crypto::random_bytes::<32>()?);
        let expires_at = now + SHOW_CODE_SECONDS;
        self.store.insert_show_code(&ShowCodeRecord {
            code_sha256: hex::encode(Sha256::digest(code.as_bytes())),
            licence_id: licence.id.to_string(),
            created_by: app.clone(),
            expires_at,
            redeemed_at: None,
            redeemed_by: None,
        })?;
        Ok((code, expires_at))
    }

    /// The licence a show-code shows, without redeeming it: the caller decides whether the
    /// redeemer may see it first, so that a refused redemption does not use the code up.
    pub fn shown_licence(&self, code: &str, now: i64) -> Result<LicenceRecord, ServiceError> {
        let unusable =
            || ServiceError::Forbidden("show-code unknown, expired or already used".into());
        if code.is_empty() || code.len() > 100 {
            return Err(invalid("code", "not a show-code"));
        }
        let hash = hex::encode(Sha256::digest(code.as_bytes()));
        let shown = self.store.show_code(&hash)?.ok_or_else(unusable)?;
        if shown.redeemed_at.is_some() || shown.expires_at <= now {
            return Err(unusable());
        }
        self.licence(&shown.licence_id)
    }

    /// Redeems a show-code once; a second redemption, an unknown or an expired code is refused.
    pub fn redeem_show_code(
        &self,
        code: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        if code.is_empty() || code.len() > 100 {
            return Err(invalid("code", "not a show-code"));
        }
        let hash = hex::encode(Sha256::digest(code.as_bytes()));
        let redeemed = self
            .store
            .redeem_show_code(&hash, by, now)?
            .ok_or_else(|| {
                ServiceError::Forbidden("show-code unknown, expired or already used".into())
            })?;
        self.licence(&redeemed.licence_id)
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

fn classify_sdjwt_error(e: &sdjwt::SdJwtError) -> (&'static str, String) {
    use jws::JwsError;
    let detail = e.to_string();
    let check = match e {
        sdjwt::SdJwtError::Jws(JwsError::WrongType { .. }) => "typ",
        sdjwt::SdJwtError::Jws(
            JwsError::BadSignature
            | JwsError::BadSignatureLength(_)
            | JwsError::KeyAlgorithmMismatch,
        ) => "signature",
        sdjwt::SdJwtError::Jws(_) => "format",
        sdjwt::SdJwtError::Key(k) if k.starts_with("seal revoked") => "seal",
        sdjwt::SdJwtError::Key(_) => "certificate_chain",
        _ => "disclosures",
    };
    (check, detail)
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

/// A licence serial of [`SERIAL_CHARS`] base-36 characters from the system RNG: identifiers
/// cannot be enumerated by counting.
fn random_serial() -> Result<String, ServiceError> {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let bytes = crate::crypto::random_bytes::<SERIAL_CHARS>()?;
    // 252 = 7 × 36: bytes at or above it are redrawn, so every character is uniform.
    let mut out = String::with_capacity(SERIAL_CHARS);
    let mut pool = bytes.to_vec();
    while out.len() < SERIAL_CHARS {
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

        include!("service_tests.rs");
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

        include!("service_tests.rs");
    }
}
