//! JWS (RFC 7515) compact serialisation as certgate uses it: two algorithms only, `ES256`
//! (ECDSA P-256 with SHA-256) and `SM2SM3` (SM2 with SM3 and the default distinguishing id
//! `1234567812345678`), both carrying a raw 64-byte `r‖s` signature.

/// The signature algorithms certgate signs and accepts. Anything else (`none`, `HS256`,
/// `RS256`, …) is refused when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum JwsAlg {
    /// ECDSA with P-256 and SHA-256 (RFC 7518).
    #[serde(rename = "ES256")]
    Es256,
    /// SM2 with SM3 (GM/T 0003, GM/T 0004), raw `r‖s`.
    #[serde(rename = "SM2SM3")]
    Sm2Sm3,
}

impl JwsAlg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlg::Es256 => "ES256",
            JwsAlg::Sm2Sm3 => "SM2SM3",
        }
    }

    /// Parses an `alg` header value; `None` for every algorithm certgate does not accept.
    pub fn from_name(name: &str) -> Option<JwsAlg> {
        match name {
            "ES256" => Some(JwsAlg::Es256),
            "SM2SM3" => Some(JwsAlg::Sm2Sm3),
            _ => None,
        }
    }
}

/// Signing failed inside the crypto library (never because of caller input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SigningFailed(pub String);

/// Something that signs JWS signing inputs (`BASE64URL(header) "." BASE64URL(payload)`).
pub trait JwsSigner {
    /// The algorithm of the signatures.
    fn alg(&self) -> JwsAlg;
    /// Signs `signing_input`, returning the raw 64-byte `r‖s` signature.
    fn sign(&self, signing_input: &[u8]) -> Result<[u8; 64], SigningFailed>;
}

/// Something that checks JWS signatures.
pub trait JwsVerifier {
    /// The algorithm this key verifies.
    fn alg(&self) -> JwsAlg;
    /// True when `signature` (must be exactly 64 bytes `r‖s`) is valid over `signing_input`.
    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool;
}

/// The largest compact JWS (or SD-JWT presentation, disclosures included) certgate parses or
/// produces, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why a compact JWS was refused (or could not be produced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is {len} bytes long; at most {limit} bytes are accepted")]
    TooLarge {
        /// Length of the token in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The token does not have the compact shape `header.payload.signature`.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// A part is not base64url without padding (`+`, `/`, `=`, whitespace are refused).
    #[error("the JWS {part} is not base64url without padding")]
    NotBase64Url {
        /// Which part: `header`, `payload`, `signature` or `input`.
        part: &'static str,
    },
    /// The protected header is not a JSON object.
    #[error("the JWS header is not a JSON object")]
    HeaderNotJson,
    /// The payload is not a JSON object.
    #[error("the JWS payload is not a JSON object")]
    PayloadNotJson,
    /// A member name occurs twice at the top level of the header or payload.
    #[error("the JWS {part} contains the member `{name}` more than once")]
    DuplicateMember {
        /// `header` or `payload`.
        part: &'static str,
        /// The repeated member name.
        name: String,
    },
    /// The header says `alg: none` (in any letter case): unsigned tokens are never accepted.
    #[error("unsigned tokens (`alg: none`) are not accepted")]
    AlgorithmNone,
    /// The header names an algorithm other than `ES256` and `SM2SM3`.
    #[error("the signature algorithm `{0}` is not accepted; only ES256 and SM2SM3 are")]
    AlgorithmNotAllowed(String),
    /// The header has no `alg`.
    #[error("the JWS header has no `alg` member")]
    MissingAlgorithm,
    /// The header carries `crit`; certgate understands no JWS extensions.
    #[error("the JWS header carries `crit`; no critical extensions are supported")]
    CriticalHeader,
    /// The header `typ` is missing or not the one expected.
    #[error("the token type is {}, expected `{expected}`", describe_typ(.found.as_deref()))]
    WrongType {
        /// The `typ` that was required.
        expected: String,
        /// The `typ` found, `None` when absent.
        found: Option<String>,
    },
    /// The signature is not a raw 64-byte `r‖s` value (a DER signature, for instance).
    #[error("the signature is {0} bytes long; a raw 64-byte r||s signature is required")]
    BadSignatureLength(usize),
    /// The signature does not verify with the key.
    #[error("the signature does not verify")]
    BadSignature,
    /// The header algorithm differs from the key's (or signer's) algorithm.
    #[error("the token's algorithm does not match the algorithm of the key")]
    KeyAlgorithmMismatch,
    /// The signer failed (never caused by the caller's input).
    #[error(transparent)]
    Signing(#[from] SigningFailed),
}

fn describe_typ(found: Option<&str>) -> String {
    match found {
        Some(t) => format!("`{t}`"),
        None => "missing".to_owned(),
    }
}

/// The JWS protected header members certgate reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JwsHeader {
    /// The signature algorithm.
    pub alg: JwsAlg,
    /// The token type (`dc+sd-jwt`, `statuslist+jwt`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// The key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The certificate chain, leaf first, each certificate standard base64 (with padding) DER,
    /// as RFC 7515 section 4.1.6 requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

impl JwsHeader {
    /// A header with `alg` and `typ` only.
    pub fn new(alg: JwsAlg, typ: &str) -> JwsHeader {
        JwsHeader {
            alg,
            typ: Some(typ.to_owned()),
            kid: None,
            x5c: None,
        }
    }
}

/// Encodes bytes as base64url without padding.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes strict base64url: URL-safe alphabet only, no padding, no whitespace, canonical
/// trailing bits.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, JwsError> {
    decode_part(text, "input")
}

/// Decodes unpadded base64url. The engine itself refuses every byte outside that alphabet
/// (`+`, `/`, `=`, whitespace) and non-zero trailing bits, so each text has one decoding.
fn decode_part(text: &str, part: &'static str) -> Result<Vec<u8>, JwsError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwsError::NotBase64Url { part })
}

/// A JSON object parsed while noting the first top-level member name that occurs twice
/// (serde_json alone silently keeps the last one).
struct StrictObject {
    map: serde_json::Map<String, serde_json::Value>,
    duplicate: Option<String>,
}

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<StrictObject, A::Error> {
                let mut map = serde_json::Map::new();
                let mut duplicate = None;
                while let Some(key) = access.next_key::<String>()? {
                    let value: serde_json::Value = access.next_value()?;
                    if map.contains_key(&key) {
                        duplicate.get_or_insert_with(|| key.clone());
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject { map, duplicate })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Parses `bytes` as one JSON object without duplicate top-level members.
fn parse_object(
    bytes: &[u8],
    part: &'static str,
    not_json: JwsError,
) -> Result<serde_json::Map<String, serde_json::Value>, JwsError> {
    let parsed: StrictObject = serde_json::from_slice(bytes).map_err(|_| not_json)?;
    match parsed.duplicate {
        Some(name) => Err(JwsError::DuplicateMember { part, name }),
        None => Ok(parsed.map),
    }
}

/// Signs `payload` (which must be a JSON object) under `header`, returning the compact JWS.
/// `header.alg` must be the signer's algorithm.
pub fn sign_compact(
    header: &JwsHeader,
    payload: &serde_json::Value,
    signer: &dyn JwsSigner,
) -> Result<String, JwsError> {
    if header.alg != signer.alg() {
        return Err(JwsError::KeyAlgorithmMismatch);
    }
    if !payload.is_object() {
        return Err(JwsError::PayloadNotJson);
    }
    let header_json = serde_json::to_vec(header).map_err(|_| JwsError::HeaderNotJson)?;
    let payload_json = serde_json::to_vec(payload).map_err(|_| JwsError::PayloadNotJson)?;
    let signing_input = format!("{}.{}", b64url(header_json), b64url(payload_json));
    // Base64 grows by 4/3; refuse before signing anything that could not be parsed back.
    if signing_input.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge {
            len: signing_input.len(),
            limit: MAX_TOKEN_BYTES,
        });
    }
    let signature = signer.sign(signing_input.as_bytes())?;
    let token = format!("{signing_input}.{}", b64url(signature));
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge {
            len: token.len(),
            limit: MAX_TOKEN_BYTES,
        });
    }
    Ok(token)
}

/// A compact JWS that passed every structural check of [`parse_compact`]; its signature is
/// not checked until [`ParsedJws::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedJws {
    /// The typed header.
    pub header: JwsHeader,
    /// The whole protected header as JSON.
    pub header_json: serde_json::Map<String, serde_json::Value>,
    /// The payload (always a JSON object).
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// `BASE64URL(header) "." BASE64URL(payload)`, the bytes the signature covers.
    pub signing_input: String,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl ParsedJws {
    /// Checks the signature with `key`: the header algorithm must be the key's algorithm and
    /// the signature a raw 64-byte `r‖s`.
    pub fn verify(&self, key: &dyn JwsVerifier) -> Result<(), JwsError> {
        if self.header.alg != key.alg() {
            return Err(JwsError::KeyAlgorithmMismatch);
        }
        if self.signature.len() != 64 {
            return Err(JwsError::BadSignatureLength(self.signature.len()));
        }
        if key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }
}

fn optional_string(
    header: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    not_string: &'static str,
) -> Result<Option<String>, JwsError> {
    match header.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwsError::Malformed(not_string)),
    }
}

/// Parses a compact JWS strictly: at most [`MAX_TOKEN_BYTES`], three non-empty base64url parts
/// without padding, header and payload JSON objects without duplicate members, `alg` `ES256`
/// or `SM2SM3`, no `crit`, and, when `expected_typ` is given, exactly that `typ`.
pub fn parse_compact(token: &str, expected_typ: Option<&str>) -> Result<ParsedJws, JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::TooLarge {
            len: token.len(),
            limit: MAX_TOKEN_BYTES,
        });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed(
            "a compact JWS has exactly three parts separated by `.`",
        ));
    };
    // An empty signature is left to the algorithm checks below, so that `alg: none` (which
    // comes with one) is refused as such.
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(JwsError::Malformed("a part of the compact JWS is empty"));
    }

    let header_bytes = decode_part(header_b64, "header")?;
    let header_json = parse_object(&header_bytes, "header", JwsError::HeaderNotJson)?;
    let alg = match header_json.get("alg") {
        None => return Err(JwsError::MissingAlgorithm),
        Some(serde_json::Value::String(name)) => {
            if name.eq_ignore_ascii_case("none") {
                return Err(JwsError::AlgorithmNone);
            }
            JwsAlg::from_name(name).ok_or_else(|| JwsError::AlgorithmNotAllowed(name.clone()))?
        }
        Some(other) => return Err(JwsError::AlgorithmNotAllowed(other.to_string())),
    };
    if signature_b64.is_empty() {
        return Err(JwsError::Malformed("a part of the compact JWS is empty"));
    }
    if header_json.contains_key("crit") {
        return Err(JwsError::CriticalHeader);
    }
    let typ = optional_string(
        &header_json,
        "typ",
        "the header member `typ` is not a string",
    )?;
    if let Some(expected) = expected_typ
        && typ.as_deref() != Some(expected)
    {
        return Err(JwsError::WrongType {
            expected: expected.to_owned(),
            found: typ,
        });
    }
    let kid = optional_string(
        &header_json,
        "kid",
        "the header member `kid` is not a string",
    )?;
    let x5c = match header_json.get("x5c") {
        None => None,
        Some(serde_json::Value::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or(JwsError::Malformed(
                    "the header member `x5c` is not an array of strings",
                ))?,
        ),
        Some(_) => {
            return Err(JwsError::Malformed(
                "the header member `x5c` is not a non-empty array of strings",
            ));
        }
    };

    let payload_bytes = decode_part(payload_b64, "payload")?;
    let payload = parse_object(&payload_bytes, "payload", JwsError::PayloadNotJson)?;
    let signature = decode_part(signature_b64, "signature")?;

    // The three parts were split on '.', so the signing input is the token up to the last '.'.
    let signing_input = format!("{header_b64}.{payload_b64}");
    Ok(ParsedJws {
        header: JwsHeader { alg, typ, kid, x5c },
        header_json,
        payload,
        signing_input,
        signature,
    })
}

/// A test-only ES256 key over openssl, so that tests need no other module of this crate.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{JwsAlg, JwsSigner, JwsVerifier, SigningFailed};
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::ecdsa::EcdsaSig;
    use openssl::nid::Nid;
    use openssl::pkey::{Private, Public};
    use sha2::{Digest, Sha256};

    /// An ES256 private key.
    pub(crate) struct TestEs256 {
        pub(crate) key: EcKey<Private>,
    }

    /// The public half of a [`TestEs256`].
    pub(crate) struct TestEs256Public {
        pub(crate) key: EcKey<Public>,
    }

    impl TestEs256 {
        pub(crate) fn generate() -> TestEs256 {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            TestEs256 {
                key: EcKey::generate(&group).unwrap(),
            }
        }

        pub(crate) fn public(&self) -> TestEs256Public {
            TestEs256Public {
                key: EcKey::from_public_key(self.key.group(), self.key.public_key()).unwrap(),
            }
        }

        /// The DER (ASN.1 SEQUENCE) form of an ECDSA signature, which JWS does not use.
        pub(crate) fn sign_der(&self, input: &[u8]) -> Vec<u8> {
            let digest = Sha256::digest(input);
            EcdsaSig::sign(&digest, &self.key)
                .unwrap()
                .to_der()
                .unwrap()
        }
    }

    impl TestEs256Public {
        /// The public key as SubjectPublicKeyInfo DER.
        pub(crate) fn spki_der(&self) -> Vec<u8> {
            self.key.public_key_to_der().unwrap()
        }
    }

    impl JwsSigner for TestEs256 {
        fn alg(&self) -> JwsAlg {
            JwsAlg::Es256
        }
        fn sign(&self, signing_input: &[u8]) -> Result<[u8; 64], SigningFailed> {
            let digest = Sha256::digest(signing_input);
            let sig =
                EcdsaSig::sign(&digest, &self.key).map_err(|e| SigningFailed(e.to_string()))?;
            let r = sig.r().to_vec_padded(32).unwrap();
            let s = sig.s().to_vec_padded(32).unwrap();
            let mut out = [0u8; 64];
            out[..32].copy_from_slice(&r);
            out[32..].copy_from_slice(&s);
            Ok(out)
        }
    }

    impl JwsVerifier for TestEs256Public {
        fn alg(&self) -> JwsAlg {
            JwsAlg::Es256
        }
        fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
            if signature.len() != 64 {
                return false;
            }
            let (Ok(r), Ok(s)) = (
                BigNum::from_slice(&signature[..32]),
                BigNum::from_slice(&signature[32..]),
            ) else {
                return false;
            };
            let Ok(sig) = EcdsaSig::from_private_components(r, s) else {
                return false;
            };
            let digest = Sha256::digest(signing_input);
            sig.verify(&digest, &self.key).unwrap_or(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestEs256;
    use super::*;
    use serde_json::json;

    fn sample() -> (TestEs256, String) {
        let key = TestEs256::generate();
        let token = sign_compact(
            &JwsHeader::new(JwsAlg::Es256, "example+jwt"),
            &json!({"iss": "https://issuer.example", "n": 1}),
            &key,
        )
        .unwrap();
        (key, token)
    }

    #[test]
    fn sign_then_parse_and_verify_round_trips() {
        let (key, token) = sample();
        let parsed = parse_compact(&token, Some("example+jwt")).unwrap();
        assert_eq!(parsed.header, JwsHeader::new(JwsAlg::Es256, "example+jwt"));
        assert_eq!(parsed.payload["n"], json!(1));
        assert_eq!(parsed.signature.len(), 64);
        parsed.verify(&key.public()).unwrap();
        assert_eq!(parse_compact(&token, None).unwrap(), parsed);
    }

    #[test]
    fn signer_algorithm_must_match_header() {
        let key = TestEs256::generate();
        let header = JwsHeader::new(JwsAlg::Sm2Sm3, "example+jwt");
        assert_eq!(
            sign_compact(&header, &json!({}), &key),
            Err(JwsError::KeyAlgorithmMismatch)
        );
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode("aGk").unwrap(), b"hi");
        assert_eq!(b64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        for bad in [
            "aGk=",
            "a+k",
            "a/k",
            "a Gk",
            "aGk\n",
            "aGl",
            "aGk\t",
            "a.k",
            "a*k",
            "aG\u{0}k",
            "aG\u{7f}k",
            "aGé",
            "数据",
            "a",
        ] {
            assert_eq!(
                b64url_decode(bad),
                Err(JwsError::NotBase64Url { part: "input" }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wrong_part_counts_and_empty_parts_are_malformed() {
        let (_, token) = sample();
        for bad in [
            "a.b".to_owned(),
            format!("{token}.x"),
            format!(".{}", token.split_once('.').unwrap().1),
            format!("{}.", token.rsplit_once('.').unwrap().0),
        ] {
            assert!(
                matches!(parse_compact(&bad, None), Err(JwsError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_header_member_is_refused() {
        let header = b64url(r#"{"alg":"ES256","alg":"ES256","typ":"x"}"#);
        let token = format!("{header}.{}.{}", b64url("{}"), b64url([0u8; 64]));
        assert_eq!(
            parse_compact(&token, None),
            Err(JwsError::DuplicateMember {
                part: "header",
                name: "alg".into()
            })
        );
    }

    #[test]
    fn missing_alg_and_non_object_header_are_refused() {
        let tail = format!("{}.{}", b64url("{}"), b64url([0u8; 64]));
        let no_alg = format!("{}.{tail}", b64url(r#"{"typ":"x"}"#));
        assert_eq!(
            parse_compact(&no_alg, None),
            Err(JwsError::MissingAlgorithm)
        );
        let array = format!("{}.{tail}", b64url("[1]"));
        assert_eq!(parse_compact(&array, None), Err(JwsError::HeaderNotJson));
        let payload_array = format!(
            "{}.{}.{}",
            b64url(r#"{"alg":"ES256"}"#),
            b64url("[]"),
            b64url([0u8; 64])
        );
        assert_eq!(
            parse_compact(&payload_array, None),
            Err(JwsError::PayloadNotJson)
        );
    }

    #[test]
    fn key_of_other_algorithm_is_refused() {
        struct Sm2Stub;
        impl JwsVerifier for Sm2Stub {
            fn alg(&self) -> JwsAlg {
                JwsAlg::Sm2Sm3
            }
            fn verify(&self, _: &[u8], _: &[u8]) -> bool {
                true
            }
        }
        let (_, token) = sample();
        let parsed = parse_compact(&token, None).unwrap();
        assert_eq!(parsed.verify(&Sm2Stub), Err(JwsError::KeyAlgorithmMismatch));
    }

    #[test]
    fn error_messages_read_well() {
        let err = JwsError::WrongType {
            expected: "dc+sd-jwt".into(),
            found: None,
        };
        assert_eq!(
            err.to_string(),
            "the token type is missing, expected `dc+sd-jwt`"
        );
        let err = JwsError::WrongType {
            expected: "dc+sd-jwt".into(),
            found: Some("JWT".into()),
        };
        assert_eq!(
            err.to_string(),
            "the token type is `JWT`, expected `dc+sd-jwt`"
        );
    }
}
