//! SD-JWT VC (RFC 9901 SD-JWT, draft-ietf-oauth-sd-jwt-vc) as certgate issues licences:
//! `<issuer-signed JWT>~<disclosure>~…~`, no key binding, flat object-property disclosures
//! only, digests SHA-256.
//!
//! The issuer side ([`issue`]) makes every listed claim selectively disclosable; [`select`]
//! keeps only the disclosures a consumer may see; [`verify`] checks a presentation strictly.
//! Time ([`check_time`]), status and `vct` checks belong to the caller, who owns the clock and
//! the registries.

use std::collections::HashSet;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::jws::{
    JwsError, JwsHeader, JwsSigner, JwsVerifier, MAX_TOKEN_BYTES, ParsedJws, b64url, b64url_decode,
    parse_compact, sign_compact,
};

/// The `typ` of an issuer-signed SD-JWT VC.
pub const SD_JWT_TYP: &str = "dc+sd-jwt";

/// The only `_sd_alg` certgate writes and accepts.
pub const SD_ALG: &str = "sha-256";

/// Claim names that can never be selectively disclosable: the SD-JWT machinery itself and the
/// claims a verifier must always see in the clear.
pub const RESERVED_CLAIMS: &[&str] = &[
    "_sd",
    "...",
    "_sd_alg",
    "iss",
    "iat",
    "nbf",
    "exp",
    "vct",
    "status",
    "cnf",
    "sub",
    "vct#integrity",
];

/// Why an SD-JWT could not be issued, selected from, or was refused. Disclosures are numbered
/// from 1 in the order they appear in the presentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdJwtError {
    /// The issuer-signed JWT was refused (size, structure, algorithm, `typ`, signature, …).
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// The presentation does not have the shape `<jwt>~<disclosure>~…~`.
    #[error("the SD-JWT is malformed: {0}")]
    Malformed(&'static str),
    /// The caller could not resolve a trusted issuer key (for example the `x5c` chain failed).
    #[error("the issuer key was not accepted: {0}")]
    Key(String),
    /// The payload has no `_sd_alg`.
    #[error("the credential does not state its digest algorithm (`_sd_alg`)")]
    MissingSdAlg,
    /// The payload's `_sd_alg` is not `sha-256`.
    #[error("the digest algorithm `{0}` is not supported; only sha-256 is")]
    UnsupportedSdAlg(String),
    /// The payload's `_sd` is not an array of strings.
    #[error("`_sd` in the credential is not an array of digest strings")]
    InvalidSdArray,
    /// The payload's `_sd` lists one digest twice.
    #[error("the credential lists the digest `{0}` more than once in `_sd`")]
    DuplicateDigest(String),
    /// The payload (or a claim value) contains `_sd` or `...` where this profile does not
    /// allow it: nested and array-element disclosures are not supported.
    #[error(
        "the credential contains the reserved key at `{0}`; nested and array-element disclosures are not supported"
    )]
    ReservedKeyInPayload(String),
    /// A disclosure is not base64url without padding.
    #[error("disclosure {index} is not base64url without padding")]
    DisclosureNotBase64Url {
        /// Position of the disclosure, from 1.
        index: usize,
    },
    /// A disclosure does not decode to JSON.
    #[error("disclosure {index} is not JSON")]
    DisclosureNotJson {
        /// Position of the disclosure, from 1.
        index: usize,
    },
    /// A disclosure is not `[salt, claim name, value]` with a string salt and name.
    #[error(
        "disclosure {index} is not an array [salt, claim name, value] with a string salt and claim name"
    )]
    DisclosureShape {
        /// Position of the disclosure, from 1.
        index: usize,
    },
    /// A disclosure value contains `_sd` or `...` (nested disclosures are not supported).
    #[error("disclosure {index} contains a nested `_sd` or `...`, which is not supported")]
    NestedDisclosure {
        /// Position of the disclosure, from 1.
        index: usize,
    },
    /// A disclosure tries to set a claim that must never be selectively disclosed.
    #[error("disclosure {index} tries to set the reserved claim `{name}`")]
    ReservedClaim {
        /// Position of the disclosure, from 1.
        index: usize,
        /// The claim name.
        name: String,
    },
    /// A disclosure's digest is not in the credential's `_sd`.
    #[error("disclosure {index} is not referenced by the credential")]
    Unreferenced {
        /// Position of the disclosure, from 1.
        index: usize,
    },
    /// A disclosure occurs twice in the presentation.
    #[error("disclosure {index} repeats an earlier disclosure")]
    DuplicateDisclosure {
        /// Position of the repeated disclosure, from 1.
        index: usize,
    },
    /// A disclosure sets a claim already present in the credential or set by another
    /// disclosure.
    #[error("disclosure {index} sets the claim `{name}`, which the credential already has")]
    ClaimCollision {
        /// Position of the disclosure, from 1.
        index: usize,
        /// The claim name.
        name: String,
    },
    /// Issuing: a claim that may not be selectively disclosable was asked to be.
    #[error("the claim `{0}` cannot be made selectively disclosable")]
    NotDisclosable(String),
    /// Issuing: a claim was given both as plain and as disclosable.
    #[error("the claim `{0}` is given both as a plain and as a disclosable claim")]
    DisclosableAlsoPlain(String),
    /// Issuing: a plain claim uses a name the SD-JWT machinery writes itself.
    #[error("the plain claim `{0}` is reserved for SD-JWT processing")]
    ReservedPlainClaim(String),
    /// Issuing: the random salt could not be drawn.
    #[error("no random salt could be drawn: {0}")]
    Randomness(String),
    /// The credential has no `exp`.
    #[error("the credential has no expiry time (`exp`)")]
    MissingExp,
    /// A time claim is not an integer number of seconds.
    #[error("the claim `{0}` is not an integer number of seconds since the epoch")]
    InvalidTimeClaim(&'static str),
    /// The credential has expired.
    #[error("the credential expired at {exp} (now {now})")]
    Expired {
        /// `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// The credential is not valid yet.
    #[error("the credential is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// The credential claims to be issued in the future.
    #[error("the credential claims to be issued at {iat}, in the future (now {now})")]
    IssuedInFuture {
        /// `iat`.
        iat: i64,
        /// The time of the check.
        now: i64,
    },
}

/// A source of 16-byte (128-bit) disclosure salts.
pub trait SaltSource {
    /// Draws a fresh salt.
    fn next_salt(&mut self) -> Result<[u8; 16], SdJwtError>;
}

/// Salts from the system's CSPRNG ([`crate::crypto::random_bytes`]); what production uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsSalts;

impl SaltSource for OsSalts {
    fn next_salt(&mut self) -> Result<[u8; 16], SdJwtError> {
        crate::crypto::random_bytes().map_err(|e| SdJwtError::Randomness(e.to_string()))
    }
}

/// Any closure returning salts (deterministic ones in tests).
impl<F: FnMut() -> [u8; 16]> SaltSource for F {
    fn next_salt(&mut self) -> Result<[u8; 16], SdJwtError> {
        Ok(self())
    }
}

/// One disclosure of an issued SD-JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// base64url of the JSON array `[salt, name, value]`, as it travels after a `~`.
    pub encoded: String,
    /// The salt (base64url of 16 random bytes).
    pub salt: String,
    /// The claim name.
    pub name: String,
    /// The claim value.
    pub value: Value,
    /// base64url(SHA-256(`encoded`)), as listed in the payload's `_sd`.
    pub digest: String,
}

/// The result of [`issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The full SD-JWT, every disclosure included, ending with `~`.
    pub sd_jwt: String,
    /// The disclosures, in the order they appear in `sd_jwt`.
    pub disclosures: Vec<Disclosure>,
}

/// What [`verify`] asks for the issuer's key: given the parsed (not yet verified) JWT, the
/// verifier for its signature, or a reason why its key (its `x5c` chain, say) is not trusted.
pub type KeyResolver<'a> = dyn Fn(&ParsedJws) -> Result<Box<dyn JwsVerifier>, String> + 'a;

/// A presentation that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSdJwt {
    /// The issuer-signed JWT's header.
    pub header: JwsHeader,
    /// The plain (always visible) claims, without `_sd` and `_sd_alg`.
    pub claims: Map<String, Value>,
    /// The disclosed claims, name to value.
    pub disclosed: Map<String, Value>,
    /// How many disclosures were checked against the credential's digests.
    pub digests_checked: usize,
}

/// base64url(SHA-256(ASCII of the encoded disclosure)).
fn digest_of(encoded: &str) -> String {
    b64url(Sha256::digest(encoded.as_bytes()))
}

fn is_reserved(name: &str) -> bool {
    RESERVED_CLAIMS.contains(&name)
}

/// The path of the first `_sd` or `...` object key inside `value`, if any.
fn find_reserved_key(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(key, inner)| {
            let here = format!("{path}.{key}");
            if key == "_sd" || key == "..." {
                Some(here)
            } else {
                find_reserved_key(inner, &here)
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, inner)| find_reserved_key(inner, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Issues an SD-JWT VC: `plain_claims` (`iss`, `vct`, `iat`, `exp`, `status`, …) stay visible;
/// every member of `disclosable` becomes a disclosure with a fresh salt from `salts`. The
/// payload gets `_sd_alg: "sha-256"` and `_sd`, the digests sorted so their order reveals
/// nothing. `header.typ` must be `dc+sd-jwt` and `header.alg` the signer's algorithm.
pub fn issue(
    header: JwsHeader,
    plain_claims: Map<String, Value>,
    disclosable: &Map<String, Value>,
    salts: &mut dyn SaltSource,
    signer: &dyn JwsSigner,
) -> Result<Issued, SdJwtError> {
    if header.typ.as_deref() != Some(SD_JWT_TYP) {
        return Err(JwsError::WrongType {
            expected: SD_JWT_TYP.to_owned(),
            found: header.typ,
        }
        .into());
    }
    for (name, value) in &plain_claims {
        if matches!(name.as_str(), "_sd" | "..." | "_sd_alg") {
            return Err(SdJwtError::ReservedPlainClaim(name.clone()));
        }
        if let Some(path) = find_reserved_key(value, name) {
            return Err(SdJwtError::ReservedKeyInPayload(path));
        }
    }
    let mut disclosures = Vec::with_capacity(disclosable.len());
    for (name, value) in disclosable {
        if is_reserved(name) {
            return Err(SdJwtError::NotDisclosable(name.clone()));
        }
        if plain_claims.contains_key(name) {
            return Err(SdJwtError::DisclosableAlsoPlain(name.clone()));
        }
        if let Some(path) = find_reserved_key(value, name) {
            return Err(SdJwtError::ReservedKeyInPayload(path));
        }
        let salt = b64url(salts.next_salt()?);
        let array = Value::Array(vec![
            Value::String(salt.clone()),
            Value::String(name.clone()),
            value.clone(),
        ]);
        let encoded = b64url(array.to_string());
        let digest = digest_of(&encoded);
        disclosures.push(Disclosure {
            encoded,
            salt,
            name: name.clone(),
            value: value.clone(),
            digest,
        });
    }

    let mut digests: Vec<Value> = disclosures
        .iter()
        .map(|d| Value::String(d.digest.clone()))
        .collect();
    digests.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    let mut payload = plain_claims;
    payload.insert("_sd_alg".to_owned(), Value::String(SD_ALG.to_owned()));
    if !digests.is_empty() {
        payload.insert("_sd".to_owned(), Value::Array(digests));
    }
    let jwt = sign_compact(&header, &Value::Object(payload), signer)?;

    let mut sd_jwt = jwt;
    sd_jwt.push('~');
    for disclosure in &disclosures {
        sd_jwt.push_str(&disclosure.encoded);
        sd_jwt.push('~');
    }
    if sd_jwt.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge {
            len: sd_jwt.len(),
            limit: MAX_TOKEN_BYTES,
        }
        .into());
    }
    Ok(Issued {
        sd_jwt,
        disclosures,
    })
}

/// Splits `<jwt>~<d1>~…~` into the JWT and the disclosures, after the size limit.
fn split(presented: &str) -> Result<(&str, Vec<&str>), SdJwtError> {
    if presented.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge {
            len: presented.len(),
            limit: MAX_TOKEN_BYTES,
        }
        .into());
    }
    let Some(body) = presented.strip_suffix('~') else {
        return Err(SdJwtError::Malformed(
            "an SD-JWT without key binding must end with `~`",
        ));
    };
    let mut pieces = body.split('~');
    let jwt = pieces.next().unwrap_or_default();
    if jwt.is_empty() {
        return Err(SdJwtError::Malformed("the issuer-signed JWT is empty"));
    }
    let disclosures: Vec<&str> = pieces.collect();
    if disclosures.iter().any(|d| d.is_empty()) {
        return Err(SdJwtError::Malformed("a disclosure is empty"));
    }
    Ok((jwt, disclosures))
}

/// A disclosure decoded and shape-checked (not yet matched against a credential).
struct Decoded {
    name: String,
    value: Value,
}

fn decode_disclosure(encoded: &str, index: usize) -> Result<Decoded, SdJwtError> {
    let bytes = b64url_decode(encoded).map_err(|_| SdJwtError::DisclosureNotBase64Url { index })?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|_| SdJwtError::DisclosureNotJson { index })?;
    let Value::Array(items) = json else {
        return Err(SdJwtError::DisclosureShape { index });
    };
    let Ok([Value::String(_salt), Value::String(name), value]) = <[Value; 3]>::try_from(items)
    else {
        return Err(SdJwtError::DisclosureShape { index });
    };
    Ok(Decoded { name, value })
}

/// Keeps only the disclosures whose claim name passes `keep`, returning a new presentation
/// `<jwt>~<kept>~…~`. The signature is not checked here (the recipient's [`verify`] does);
/// disclosures that cannot be decoded are an error.
pub fn select(sd_jwt: &str, keep: &dyn Fn(&str) -> bool) -> Result<String, SdJwtError> {
    let (jwt, disclosures) = split(sd_jwt)?;
    let mut out = String::with_capacity(sd_jwt.len());
    out.push_str(jwt);
    out.push('~');
    for (i, encoded) in disclosures.into_iter().enumerate() {
        let decoded = decode_disclosure(encoded, i.saturating_add(1))?;
        if keep(&decoded.name) {
            out.push_str(encoded);
            out.push('~');
        }
    }
    Ok(out)
}

/// Verifies a presentation `<issuer-signed JWT>~<disclosure>~…~` (no key binding):
///
/// 1. at most [`MAX_TOKEN_BYTES`], ends with `~`, non-empty JWT, no empty disclosure;
/// 2. the JWT parses strictly with `typ` `dc+sd-jwt` ([`parse_compact`]);
/// 3. its signature verifies with the key `resolve_key` returns (the callback checks the
///    `x5c` chain; its error is carried in [`SdJwtError::Key`]);
/// 4. `_sd_alg` is `sha-256`; `_sd` is an array of distinct strings; no `...` and no nested
///    `_sd` anywhere in the payload;
/// 5. every disclosure is `[salt, name, value]` with a name that is neither reserved nor
///    already a claim, its digest is in `_sd`, and no disclosure is repeated.
///
/// Time, status and `vct` are the caller's to check (see [`check_time`]).
pub fn verify(presented: &str, resolve_key: &KeyResolver<'_>) -> Result<VerifiedSdJwt, SdJwtError> {
    let (jwt, disclosures) = split(presented)?;
    let parsed = parse_compact(jwt, Some(SD_JWT_TYP))?;
    let key = resolve_key(&parsed).map_err(SdJwtError::Key)?;
    parsed.verify(key.as_ref())?;

    let ParsedJws {
        header,
        payload: mut claims,
        ..
    } = parsed;
    match claims.remove("_sd_alg") {
        None => return Err(SdJwtError::MissingSdAlg),
        Some(Value::String(alg)) if alg == SD_ALG => {}
        Some(Value::String(alg)) => return Err(SdJwtError::UnsupportedSdAlg(alg)),
        Some(other) => return Err(SdJwtError::UnsupportedSdAlg(other.to_string())),
    }
    let sd = match claims.remove("_sd") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(SdJwtError::InvalidSdArray),
            })
            .collect::<Result<Vec<String>, _>>()?,
        Some(_) => return Err(SdJwtError::InvalidSdArray),
    };
    let mut referenced: HashSet<&str> = HashSet::with_capacity(sd.len());
    for digest in &sd {
        if !referenced.insert(digest.as_str()) {
            return Err(SdJwtError::DuplicateDigest(digest.clone()));
        }
    }
    for (name, value) in &claims {
        if name == "..." {
            return Err(SdJwtError::ReservedKeyInPayload(name.clone()));
        }
        if let Some(path) = find_reserved_key(value, name) {
            return Err(SdJwtError::ReservedKeyInPayload(path));
        }
    }

    let mut disclosed = Map::new();
    let mut used: HashSet<String> = HashSet::with_capacity(disclosures.len());
    for (i, encoded) in disclosures.iter().enumerate() {
        let index = i.saturating_add(1);
        let Decoded { name, value } = decode_disclosure(encoded, index)?;
        if is_reserved(&name) {
            return Err(SdJwtError::ReservedClaim { index, name });
        }
        if find_reserved_key(&value, &name).is_some() {
            return Err(SdJwtError::NestedDisclosure { index });
        }
        let digest = digest_of(encoded);
        if !referenced.contains(digest.as_str()) {
            return Err(SdJwtError::Unreferenced { index });
        }
        if !used.insert(digest) {
            return Err(SdJwtError::DuplicateDisclosure { index });
        }
        if claims.contains_key(&name) || disclosed.contains_key(&name) {
            return Err(SdJwtError::ClaimCollision { index, name });
        }
        disclosed.insert(name, value);
    }

    Ok(VerifiedSdJwt {
        header,
        claims,
        disclosed,
        digests_checked: used.len(),
    })
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, SdJwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or(SdJwtError::InvalidTimeClaim(name)),
    }
}

/// Checks the validity period at `now_unix` (seconds since the epoch), allowing
/// `leeway_secs` of clock skew (negative counts as 0): `exp` is required and must be later
/// than `now - leeway`; `nbf`, when present, must not be later than `now + leeway`; `iat`,
/// when present, must not be later than `now + leeway`. Time claims must be integers.
pub fn check_time(
    claims: &Map<String, Value>,
    now_unix: i64,
    leeway_secs: i64,
) -> Result<(), SdJwtError> {
    let leeway = leeway_secs.max(0);
    let exp = time_claim(claims, "exp")?.ok_or(SdJwtError::MissingExp)?;
    let nbf = time_claim(claims, "nbf")?;
    let iat = time_claim(claims, "iat")?;
    if exp <= now_unix.saturating_sub(leeway) {
        return Err(SdJwtError::Expired { exp, now: now_unix });
    }
    if let Some(nbf) = nbf
        && nbf > now_unix.saturating_add(leeway)
    {
        return Err(SdJwtError::NotYetValid { nbf, now: now_unix });
    }
    if let Some(iat) = iat
        && iat > now_unix.saturating_add(leeway)
    {
        return Err(SdJwtError::IssuedInFuture { iat, now: now_unix });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::JwsAlg;
    use crate::jws::test_support::{TestEs256, TestEs256Public};
    use serde_json::json;

    const ISSUER: &str = "https://seal.certgate.example";

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test object"),
        }
    }

    fn plain() -> Map<String, Value> {
        obj(json!({
            "iss": ISSUER,
            "vct": "urn:certgate:licence:food-business",
            "iat": 1_700_000_000,
            "nbf": 1_700_000_000,
            "exp": 1_900_000_000,
            "status": {"status_list": {"idx": 7, "uri": "https://status.example/1"}},
        }))
    }

    fn fields() -> Map<String, Value> {
        obj(json!({
            "holder_name": "某某食品有限公司",
            "holder_uscc": "91350100M000100Y43",
            "address": "福州市鼓楼区",
            "scope": ["预包装食品销售"],
        }))
    }

    fn counter_salts() -> impl FnMut() -> [u8; 16] {
        let mut n = 0u8;
        move || {
            n = n.wrapping_add(1);
            [n; 16]
        }
    }

    fn header() -> JwsHeader {
        JwsHeader::new(JwsAlg::Es256, SD_JWT_TYP)
    }

    fn issue_sample(key: &TestEs256) -> Issued {
        issue(header(), plain(), &fields(), &mut counter_salts(), key).unwrap()
    }

    fn resolver(
        public: TestEs256Public,
    ) -> impl Fn(&ParsedJws) -> Result<Box<dyn JwsVerifier>, String> {
        let der = public.spki_der();
        move |_parsed: &ParsedJws| {
            let key = openssl::ec::EcKey::public_key_from_der(&der).map_err(|e| e.to_string())?;
            Ok(Box::new(TestEs256Public { key }) as Box<dyn JwsVerifier>)
        }
    }

    fn check(key: &TestEs256, presented: &str) -> Result<VerifiedSdJwt, SdJwtError> {
        verify(presented, &resolver(key.public()))
    }

    /// Signs any header and payload JSON as a compact JWS (test-only issuer path for crafted,
    /// correctly signed tokens).
    fn sign_raw(key: &TestEs256, header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.to_string()),
            b64url(payload.to_string())
        );
        let sig = JwsSigner::sign(key, input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(sig))
    }

    fn disclosure(salt: &str, name: &str, value: Value) -> (String, String) {
        let encoded = b64url(json!([salt, name, value]).to_string());
        let digest = digest_of(&encoded);
        (encoded, digest)
    }

    /// A correctly signed credential whose `_sd` is exactly `sd`, presented with `disclosures`.
    fn crafted(key: &TestEs256, sd: &[&str], disclosures: &[&str]) -> String {
        let mut payload = plain();
        payload.insert("_sd_alg".into(), json!("sha-256"));
        payload.insert("_sd".into(), json!(sd));
        let mut out = sign_raw(
            key,
            &json!({"alg": "ES256", "typ": SD_JWT_TYP}),
            &Value::Object(payload),
        );
        out.push('~');
        for d in disclosures {
            out.push_str(d);
            out.push('~');
        }
        out
    }

    fn jwt_part(sd_jwt: &str) -> &str {
        sd_jwt.split('~').next().unwrap()
    }

    fn replace_jwt(sd_jwt: &str, jwt: &str) -> String {
        let (_, rest) = sd_jwt.split_once('~').unwrap();
        format!("{jwt}~{rest}")
    }

    #[test]
    fn issue_select_verify_round_trip_discloses_exactly_the_kept_fields() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        assert_eq!(issued.disclosures.len(), 4);
        assert!(issued.sd_jwt.ends_with('~'));

        let full = check(&key, &issued.sd_jwt).unwrap();
        assert_eq!(full.disclosed, fields());
        assert_eq!(full.digests_checked, 4);
        assert_eq!(full.claims, plain());
        assert_eq!(full.header, header());

        let keep = |name: &str| name == "holder_name" || name == "scope";
        let presented = select(&issued.sd_jwt, &keep).unwrap();
        let verified = check(&key, &presented).unwrap();
        assert_eq!(
            verified.disclosed,
            obj(json!({"holder_name": "某某食品有限公司", "scope": ["预包装食品销售"]}))
        );
        assert_eq!(verified.digests_checked, 2);
        assert_eq!(verified.claims, plain());
        for d in &issued.disclosures {
            assert_eq!(presented.contains(&d.encoded), keep(&d.name), "{}", d.name);
        }

        let none = select(&issued.sd_jwt, &|_| false).unwrap();
        assert_eq!(none, format!("{}~", jwt_part(&issued.sd_jwt)));
        let verified = check(&key, &none).unwrap();
        assert!(verified.disclosed.is_empty());
        assert_eq!(verified.digests_checked, 0);
    }

    #[test]
    fn sd_digests_are_sorted_and_match_disclosures() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let parsed = parse_compact(jwt_part(&issued.sd_jwt), Some(SD_JWT_TYP)).unwrap();
        let sd: Vec<&str> = parsed.payload["_sd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut sorted = sd.clone();
        sorted.sort_unstable();
        assert_eq!(sd, sorted);
        for d in &issued.disclosures {
            assert!(sd.contains(&d.digest.as_str()));
            assert_eq!(d.digest, digest_of(&d.encoded));
        }
        assert_eq!(parsed.payload["_sd_alg"], json!("sha-256"));
    }

    #[test]
    fn salts_are_16_bytes() {
        let key = TestEs256::generate();
        let issued = issue(header(), plain(), &fields(), &mut OsSalts, &key).unwrap();
        let mut seen = HashSet::new();
        for d in &issued.disclosures {
            assert_eq!(b64url_decode(&d.salt).unwrap().len(), 16);
            assert!(seen.insert(d.salt.clone()), "salts repeat");
        }
        check(&key, &issued.sd_jwt).unwrap();
    }

    #[test]
    fn issue_refuses_reserved_or_plain_disclosable_names() {
        let key = TestEs256::generate();
        for name in RESERVED_CLAIMS {
            let mut disclosable = fields();
            disclosable.insert((*name).to_owned(), json!("x"));
            assert_eq!(
                issue(header(), plain(), &disclosable, &mut counter_salts(), &key),
                Err(SdJwtError::NotDisclosable((*name).to_owned())),
                "{name}"
            );
        }
        let mut with_plain = plain();
        with_plain.insert("address".into(), json!("x"));
        assert_eq!(
            issue(header(), with_plain, &fields(), &mut counter_salts(), &key),
            Err(SdJwtError::DisclosableAlsoPlain("address".into()))
        );
        let mut sd_plain = plain();
        sd_plain.insert("_sd".into(), json!([]));
        assert_eq!(
            issue(header(), sd_plain, &fields(), &mut counter_salts(), &key),
            Err(SdJwtError::ReservedPlainClaim("_sd".into()))
        );
    }

    #[test]
    fn issue_requires_dc_sd_jwt_typ() {
        let key = TestEs256::generate();
        let wrong = JwsHeader::new(JwsAlg::Es256, "JWT");
        assert!(matches!(
            issue(wrong, plain(), &fields(), &mut counter_salts(), &key),
            Err(SdJwtError::Jws(JwsError::WrongType { .. }))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let payload = jwt_part(&issued.sd_jwt).split('.').nth(1).unwrap();
        for none in ["none", "None", "NONE"] {
            let header = b64url(json!({"alg": none, "typ": SD_JWT_TYP}).to_string());
            // An unsigned token has an empty signature; a filler one must not help either.
            for sig in ["", "AAAA"] {
                let token = replace_jwt(&issued.sd_jwt, &format!("{header}.{payload}.{sig}"));
                let err = check(&key, &token).unwrap_err();
                assert_eq!(err, SdJwtError::Jws(JwsError::AlgorithmNone), "{sig:?}");
            }
        }
    }

    #[test]
    fn hs256_with_public_key_as_secret_is_refused() {
        let key = TestEs256::generate();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some(SD_JWT_TYP.to_owned());
        let mut payload = plain();
        payload.insert("_sd_alg".into(), json!("sha-256"));
        let secret = key.public().spki_der();
        let token = jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            check(&key, &format!("{token}~")),
            Err(SdJwtError::Jws(JwsError::AlgorithmNotAllowed(
                "HS256".into()
            )))
        );
    }

    #[test]
    fn rs256_and_eddsa_are_refused() {
        let key = TestEs256::generate();
        for alg in ["RS256", "EdDSA", "ES384", "es256"] {
            let token = sign_raw(
                &key,
                &json!({"alg": alg, "typ": SD_JWT_TYP}),
                &json!({"iss": ISSUER, "_sd_alg": "sha-256"}),
            );
            assert_eq!(
                check(&key, &format!("{token}~")),
                Err(SdJwtError::Jws(JwsError::AlgorithmNotAllowed(alg.into()))),
                "{alg}"
            );
        }
    }

    #[test]
    fn flipped_payload_byte_is_bad_signature() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let jwt = jwt_part(&issued.sd_jwt);
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut payload = b64url_decode(&parts[1]).unwrap();
        let needle = b"seal.certgate";
        let at = payload
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        payload[at] ^= 0x01; // 's' -> 'r': still valid JSON, different issuer
        parts[1] = b64url(payload);
        let token = replace_jwt(&issued.sd_jwt, &parts.join("."));
        assert_eq!(
            check(&key, &token),
            Err(SdJwtError::Jws(JwsError::BadSignature))
        );
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let jwt = jwt_part(&issued.sd_jwt);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let mut sig = b64url_decode(sig).unwrap();
        sig[10] ^= 0x80;
        let token = replace_jwt(&issued.sd_jwt, &format!("{input}.{}", b64url(sig)));
        assert_eq!(
            check(&key, &token),
            Err(SdJwtError::Jws(JwsError::BadSignature))
        );
    }

    #[test]
    fn der_signature_is_bad_signature_length() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let (input, _) = jwt_part(&issued.sd_jwt).rsplit_once('.').unwrap();
        let der = key.sign_der(input.as_bytes());
        let token = replace_jwt(&issued.sd_jwt, &format!("{input}.{}", b64url(&der)));
        assert_eq!(
            check(&key, &token),
            Err(SdJwtError::Jws(JwsError::BadSignatureLength(der.len())))
        );
    }

    #[test]
    fn wrong_typ_is_refused() {
        let key = TestEs256::generate();
        for typ in ["JWT", "vc+sd-jwt", "application/dc+sd-jwt"] {
            let mut payload = plain();
            payload.insert("_sd_alg".into(), json!("sha-256"));
            let jwt = sign_compact(
                &JwsHeader::new(JwsAlg::Es256, typ),
                &Value::Object(payload),
                &key,
            )
            .unwrap();
            assert_eq!(
                check(&key, &format!("{jwt}~")),
                Err(SdJwtError::Jws(JwsError::WrongType {
                    expected: SD_JWT_TYP.into(),
                    found: Some(typ.into())
                })),
                "{typ}"
            );
        }
    }

    #[test]
    fn missing_typ_is_refused() {
        let key = TestEs256::generate();
        let jwt = sign_raw(
            &key,
            &json!({"alg": "ES256"}),
            &json!({"iss": ISSUER, "_sd_alg": "sha-256"}),
        );
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::Jws(JwsError::WrongType {
                expected: SD_JWT_TYP.into(),
                found: None
            }))
        );
    }

    #[test]
    fn crit_header_is_refused() {
        let key = TestEs256::generate();
        let jwt = sign_raw(
            &key,
            &json!({"alg": "ES256", "typ": SD_JWT_TYP, "crit": ["exp"], "exp": 1}),
            &json!({"iss": ISSUER, "_sd_alg": "sha-256"}),
        );
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::Jws(JwsError::CriticalHeader))
        );
    }

    #[test]
    fn key_resolution_failure_is_reported() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let refuse = |_: &ParsedJws| -> Result<Box<dyn JwsVerifier>, String> {
            Err("x5c chain does not reach a trust anchor".into())
        };
        assert_eq!(
            verify(&issued.sd_jwt, &refuse),
            Err(SdJwtError::Key(
                "x5c chain does not reach a trust anchor".into()
            ))
        );
        let other = TestEs256::generate();
        assert_eq!(
            check(&other, &issued.sd_jwt),
            Err(SdJwtError::Jws(JwsError::BadSignature))
        );
    }

    #[test]
    fn missing_or_other_sd_alg_is_refused() {
        let key = TestEs256::generate();
        let head = json!({"alg": "ES256", "typ": SD_JWT_TYP});
        let jwt = sign_raw(&key, &head, &json!({"iss": ISSUER}));
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::MissingSdAlg)
        );
        let jwt = sign_raw(&key, &head, &json!({"iss": ISSUER, "_sd_alg": "sha-1"}));
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::UnsupportedSdAlg("sha-1".into()))
        );
    }

    #[test]
    fn edited_disclosure_is_unreferenced() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let original = issued
            .disclosures
            .iter()
            .position(|d| d.name == "holder_uscc")
            .unwrap();
        let d = &issued.disclosures[original];
        let forged = b64url(json!([d.salt, d.name, "91110000000000000X"]).to_string());
        let presented = issued.sd_jwt.replace(&d.encoded, &forged);
        assert_eq!(
            check(&key, &presented),
            Err(SdJwtError::Unreferenced {
                index: original + 1
            })
        );
    }

    #[test]
    fn extra_disclosure_is_unreferenced() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let (extra, _) = disclosure("c2FsdHNhbHRzYWx0c2FsdA", "licence_class", json!("A"));
        let presented = format!("{}{extra}~", issued.sd_jwt);
        assert_eq!(
            check(&key, &presented),
            Err(SdJwtError::Unreferenced { index: 5 })
        );
    }

    #[test]
    fn duplicate_disclosure_is_refused() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let presented = format!("{}{}~", issued.sd_jwt, issued.disclosures[1].encoded);
        assert_eq!(
            check(&key, &presented),
            Err(SdJwtError::DuplicateDisclosure { index: 5 })
        );
    }

    #[test]
    fn duplicate_digest_in_sd_is_refused() {
        let key = TestEs256::generate();
        let (d, digest) = disclosure("c2FsdHNhbHRzYWx0c2FsdA", "address", json!("福州"));
        let presented = crafted(&key, &[&digest, &digest], &[&d]);
        assert_eq!(
            check(&key, &presented),
            Err(SdJwtError::DuplicateDigest(digest))
        );
    }

    #[test]
    fn disclosures_named_sd_or_ellipsis_are_refused() {
        let key = TestEs256::generate();
        for name in ["_sd", "...", "_sd_alg"] {
            let (d, digest) = disclosure("c2FsdHNhbHRzYWx0c2FsdA", name, json!(["x"]));
            let presented = crafted(&key, &[&digest], &[&d]);
            assert_eq!(
                check(&key, &presented),
                Err(SdJwtError::ReservedClaim {
                    index: 1,
                    name: name.into()
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn disclosures_smuggling_plain_claims_are_refused() {
        let key = TestEs256::generate();
        for (name, value) in [
            ("iss", json!("https://evil.example")),
            ("exp", json!(4_000_000_000_i64)),
            (
                "status",
                json!({"status_list": {"idx": 0, "uri": "https://evil.example"}}),
            ),
            ("vct", json!("urn:certgate:licence:other")),
        ] {
            let (d, digest) = disclosure("c2FsdHNhbHRzYWx0c2FsdA", name, value);
            let (ok, ok_digest) = disclosure("b3RoZXJzYWx0b3RoZXJzYQ", "address", json!("x"));
            let presented = crafted(&key, &[&ok_digest, &digest], &[&ok, &d]);
            let err = check(&key, &presented).unwrap_err();
            assert_eq!(
                err,
                SdJwtError::ReservedClaim {
                    index: 2,
                    name: name.into()
                },
                "{name}"
            );
            assert_eq!(
                err.to_string(),
                format!("disclosure 2 tries to set the reserved claim `{name}`")
            );
        }
    }

    #[test]
    fn disclosure_colliding_with_plain_claim_is_refused() {
        let key = TestEs256::generate();
        let (d, digest) = disclosure("c2FsdHNhbHRzYWx0c2FsdA", "address", json!("x"));
        let mut payload = plain();
        payload.insert("address".into(), json!("plain"));
        payload.insert("_sd_alg".into(), json!("sha-256"));
        payload.insert("_sd".into(), json!([digest]));
        let jwt = sign_raw(
            &key,
            &json!({"alg": "ES256", "typ": SD_JWT_TYP}),
            &Value::Object(payload),
        );
        assert_eq!(
            check(&key, &format!("{jwt}~{d}~")),
            Err(SdJwtError::ClaimCollision {
                index: 1,
                name: "address".into()
            })
        );
    }

    #[test]
    fn ellipsis_claim_or_nested_sd_in_payload_is_refused() {
        let key = TestEs256::generate();
        let head = json!({"alg": "ES256", "typ": SD_JWT_TYP});
        let jwt = sign_raw(&key, &head, &json!({"_sd_alg": "sha-256", "...": "x"}));
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::ReservedKeyInPayload("...".into()))
        );
        let jwt = sign_raw(
            &key,
            &head,
            &json!({"_sd_alg": "sha-256", "address": {"_sd": ["abc"]}}),
        );
        assert_eq!(
            check(&key, &format!("{jwt}~")),
            Err(SdJwtError::ReservedKeyInPayload("address._sd".into()))
        );
    }

    #[test]
    fn malformed_disclosures_are_refused() {
        let key = TestEs256::generate();
        let two = b64url(json!(["salt", "x"]).to_string());
        let four = b64url(json!(["salt", "x", 1, 2]).to_string());
        let numeric_name = b64url(json!(["salt", 7, 1]).to_string());
        let not_json = b64url("not json");
        let presented = crafted(&key, &[], &[]);
        for (d, want) in [
            (two.as_str(), SdJwtError::DisclosureShape { index: 1 }),
            (four.as_str(), SdJwtError::DisclosureShape { index: 1 }),
            (
                numeric_name.as_str(),
                SdJwtError::DisclosureShape { index: 1 },
            ),
            (
                not_json.as_str(),
                SdJwtError::DisclosureNotJson { index: 1 },
            ),
            ("a+b", SdJwtError::DisclosureNotBase64Url { index: 1 }),
        ] {
            assert_eq!(check(&key, &format!("{presented}{d}~")), Err(want), "{d}");
        }
    }

    #[test]
    fn oversized_token_is_refused() {
        let key = TestEs256::generate();
        let huge = format!("{}~", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            check(&key, &huge),
            Err(SdJwtError::Jws(JwsError::TooLarge {
                len: MAX_TOKEN_BYTES + 1,
                limit: MAX_TOKEN_BYTES
            }))
        );
        let mut big = fields();
        big.insert("photo".into(), json!("x".repeat(MAX_TOKEN_BYTES)));
        assert!(matches!(
            issue(header(), plain(), &big, &mut counter_salts(), &key),
            Err(SdJwtError::Jws(JwsError::TooLarge { .. }))
        ));
    }

    #[test]
    fn non_base64url_characters_are_refused_in_every_part() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let jwt = jwt_part(&issued.sd_jwt);
        let parts: Vec<&str> = jwt.split('.').collect();
        for (i, part) in ["header", "payload", "signature"].into_iter().enumerate() {
            for bad in ['+', '/', '=', ' '] {
                let mut edited: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
                if bad == '=' {
                    edited[i].push('=');
                } else {
                    edited[i].replace_range(1..2, &bad.to_string());
                }
                let token = replace_jwt(&issued.sd_jwt, &edited.join("."));
                assert_eq!(
                    check(&key, &token),
                    Err(SdJwtError::Jws(JwsError::NotBase64Url { part })),
                    "{part} with {bad:?}"
                );
            }
        }
        for bad in ['+', '/', '=', ' '] {
            let presented = format!("{}{}{bad}~", issued.sd_jwt, "QUFB");
            assert_eq!(
                check(&key, &presented),
                Err(SdJwtError::DisclosureNotBase64Url { index: 5 }),
                "disclosure with {bad:?}"
            );
        }
    }

    #[test]
    fn structure_errors_are_malformed() {
        let key = TestEs256::generate();
        let issued = issue_sample(&key);
        let no_tilde = issued.sd_jwt.trim_end_matches('~');
        assert!(matches!(
            check(&key, no_tilde),
            Err(SdJwtError::Malformed(_))
        ));
        assert!(matches!(
            select(no_tilde, &|_| true),
            Err(SdJwtError::Malformed(_))
        ));
        assert!(matches!(
            check(&key, &format!("~{}~", issued.disclosures[0].encoded)),
            Err(SdJwtError::Malformed(_))
        ));
        assert!(matches!(check(&key, "~"), Err(SdJwtError::Malformed(_))));
        assert!(matches!(check(&key, ""), Err(SdJwtError::Malformed(_))));
        assert!(matches!(
            check(&key, &format!("{}~", issued.sd_jwt)),
            Err(SdJwtError::Malformed(_))
        ));
    }

    #[test]
    fn check_time_cases() {
        let now = 1_800_000_000;
        let claims = |v: Value| obj(v);
        assert_eq!(
            check_time(&claims(json!({"iat": now - 10})), now, 0),
            Err(SdJwtError::MissingExp)
        );
        assert_eq!(
            check_time(&claims(json!({"exp": now})), now, 0),
            Err(SdJwtError::Expired { exp: now, now })
        );
        assert_eq!(
            check_time(&claims(json!({"exp": now + 100, "nbf": now + 1})), now, 0),
            Err(SdJwtError::NotYetValid { nbf: now + 1, now })
        );
        assert_eq!(
            check_time(&claims(json!({"exp": now + 100, "iat": now + 61})), now, 60),
            Err(SdJwtError::IssuedInFuture { iat: now + 61, now })
        );
        assert_eq!(
            check_time(&claims(json!({"exp": "soon"})), now, 0),
            Err(SdJwtError::InvalidTimeClaim("exp"))
        );
        check_time(
            &claims(json!({"exp": now + 1, "nbf": now, "iat": now - 5})),
            now,
            0,
        )
        .unwrap();
        check_time(&claims(json!({"exp": now + 100, "iat": now + 30})), now, 60).unwrap();
        check_time(
            &claims(json!({"exp": i64::MAX, "nbf": i64::MIN})),
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    }
}
