//! Electronic seals on documents in the format of GB/T 38540-2020 (《信息安全技术 安全电子签章
//! 密码技术规范》): the seal (`SESeal`, made and signed by the seal maker) and the detached
//! signature of a document (`SES_Signature`), encoded and parsed as DER.
//!
//! ```text
//! SES_Signature ::= SEQUENCE { toSign TBS_Sign, cert OCTET STRING,
//!                              signatureAlgID OBJECT IDENTIFIER, signature BIT STRING,
//!                              timeStamp [0] EXPLICIT BIT STRING OPTIONAL }
//! TBS_Sign      ::= SEQUENCE { version INTEGER (4), eseal SESeal, timeInfo GeneralizedTime,
//!                              dataHash BIT STRING, propertyInfo IA5String,
//!                              extDatas [0] EXPLICIT ExtensionDatas OPTIONAL }
//! SESeal        ::= SEQUENCE { eSealInfo SES_SealInfo, cert OCTET STRING,
//!                              signAlgID OBJECT IDENTIFIER, signedValue BIT STRING }
//! SES_SealInfo  ::= SEQUENCE { header SES_Header, esID IA5String,
//!                              property SES_ESPropertyInfo, picture SES_ESPictrueInfo,
//!                              extDatas ExtensionDatas OPTIONAL }
//! SES_Header    ::= SEQUENCE { ID IA5String ("ES"), version INTEGER (4), Vid IA5String }
//! SES_ESPropertyInfo ::= SEQUENCE { type INTEGER, name UTF8String, certListType INTEGER,
//!                              certList SEQUENCE OF OCTET STRING, createDate GeneralizedTime,
//!                              validStart GeneralizedTime, validEnd GeneralizedTime }
//! SES_ESPictrueInfo  ::= SEQUENCE { type IA5String, data OCTET STRING, width INTEGER,
//!                              height INTEGER }
//! ```
//!
//! Signatures in the BIT STRINGs are DER `SEQUENCE { r INTEGER, s INTEGER }`. SM2 seals use
//! `sm2-with-sm3` (1.2.156.10197.1.501) with the GM/T 0009 default id `1234567812345678` and an
//! SM3 document digest; P-256 seals use `ecdsa-with-SHA256` (1.2.840.10045.4.3.2) and SHA-256 in
//! the same structure. Parsing is strict DER, bounded in size, and never panics on what it is
//! given (fuzzed: `fuzz/fuzz_targets/ses_signature.rs`); since DER is canonical, the bytes a
//! signature covers are the re-encoding of what was parsed.

use time::OffsetDateTime;
use yasna::models::{GeneralizedTime, ObjectIdentifier};
use yasna::{ASN1Error, ASN1ErrorKind, BERReader, DERWriter, Tag};

use crate::crypto::{CryptoError, PublicKey, SealKey};
use crate::jws::{JwsAlg, JwsSigner, JwsVerifier};

/// The version of GB/T 38540-2020 structures.
pub const VERSION: i64 = 4;

/// `sm2-with-sm3`.
pub const OID_SM2_SM3: &[u64] = &[1, 2, 156, 10197, 1, 501];
/// `ecdsa-with-SHA256`.
pub const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];

/// The largest `SES_Signature` parsed, in bytes (the seal picture is inside it).
pub const MAX_SES_BYTES: usize = 2 << 20;

/// Why a structure could not be read or a signature not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SesError {
    /// More bytes than [`MAX_SES_BYTES`].
    #[error("the signature is {0} bytes; at most {MAX_SES_BYTES} are accepted")]
    TooLarge(usize),
    /// Not DER of the structure (truncated, malformed, trailing bytes, wrong types).
    #[error("not a GB/T 38540 SES_Signature: {0}")]
    Malformed(String),
    /// A value the standard fixes is something else.
    #[error("{0}")]
    Unsupported(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl From<ASN1Error> for SesError {
    fn from(e: ASN1Error) -> Self {
        let what = match e.kind() {
            ASN1ErrorKind::Eof => "it ends too early",
            ASN1ErrorKind::Extra => "bytes follow the end of the structure",
            ASN1ErrorKind::IntegerOverflow => "an integer is too large",
            ASN1ErrorKind::StackOverflow => "it is nested too deeply",
            ASN1ErrorKind::Invalid => "an element is not what the structure requires",
        };
        SesError::Malformed(what.into())
    }
}

impl From<CryptoError> for SesError {
    fn from(e: CryptoError) -> Self {
        SesError::Signing(e.to_string())
    }
}

/// The signature algorithm of a seal or a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SesAlg {
    /// SM2 with SM3.
    Sm2Sm3,
    /// ECDSA P-256 with SHA-256.
    EcdsaSha256,
}

impl SesAlg {
    /// The algorithm of a seal key.
    pub fn of(alg: JwsAlg) -> SesAlg {
        match alg {
            JwsAlg::Sm2Sm3 => SesAlg::Sm2Sm3,
            JwsAlg::Es256 => SesAlg::EcdsaSha256,
        }
    }

    /// The matching JOSE algorithm.
    pub fn jws(self) -> JwsAlg {
        match self {
            SesAlg::Sm2Sm3 => JwsAlg::Sm2Sm3,
            SesAlg::EcdsaSha256 => JwsAlg::Es256,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        ObjectIdentifier::from_slice(match self {
            SesAlg::Sm2Sm3 => OID_SM2_SM3,
            SesAlg::EcdsaSha256 => OID_ECDSA_SHA256,
        })
    }

    fn from_oid(oid: &ObjectIdentifier) -> Result<SesAlg, SesError> {
        match oid.components().as_slice() {
            OID_SM2_SM3 => Ok(SesAlg::Sm2Sm3),
            OID_ECDSA_SHA256 => Ok(SesAlg::EcdsaSha256),
            other => Err(SesError::Unsupported(format!(
                "signature algorithm {} is neither sm2-with-sm3 nor ecdsa-with-SHA256",
                other
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(".")
            ))),
        }
    }

    /// The document digest this algorithm's signatures carry (SM3 or SHA-256).
    pub fn digest(self, document: &[u8]) -> Result<Vec<u8>, SesError> {
        Ok(match self {
            SesAlg::Sm2Sm3 => crate::crypto::sm3(document)?.to_vec(),
            SesAlg::EcdsaSha256 => openssl::sha::sha256(document).to_vec(),
        })
    }
}

/// `SES_SealInfo`: what the seal maker vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealInfo {
    /// `header.Vid`: the seal maker's vendor id.
    pub vid: String,
    /// `esID`: the seal's identifier.
    pub es_id: String,
    /// `property.type`: 1 单位印章 (an organisation's seal), 2 个人印章 (a person's seal).
    pub seal_type: i64,
    /// `property.name`: the seal's name, e.g. 某某有限公司合同专用章.
    pub name: String,
    /// `property.certList` (`certListType` 1): the DER certificates allowed to sign with it.
    pub certs: Vec<Vec<u8>>,
    /// `property.createDate`.
    pub created: OffsetDateTime,
    /// `property.validStart`.
    pub valid_start: OffsetDateTime,
    /// `property.validEnd`.
    pub valid_end: OffsetDateTime,
    /// `picture.type`, e.g. `png`.
    pub picture_type: String,
    /// `picture.data`.
    pub picture: Vec<u8>,
    /// `picture.width` in millimetres.
    pub width: i64,
    /// `picture.height` in millimetres.
    pub height: i64,
}

/// `SESeal`: the seal information signed by the seal maker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// What is vouched for.
    pub info: SealInfo,
    /// `cert`: the seal maker's certificate (DER).
    pub maker_cert: Vec<u8>,
    /// `signAlgID`.
    pub alg: SesAlg,
    /// `signedValue`: DER `SEQUENCE { r, s }` over the DER of `info`.
    pub signed_value: Vec<u8>,
}

/// `TBS_Sign`: what the signer signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToSign {
    /// `eseal`.
    pub seal: Seal,
    /// `timeInfo`: when the document was sealed.
    pub time: OffsetDateTime,
    /// `dataHash`: SM3 (SM2 seals) or SHA-256 (P-256 seals) of the document.
    pub data_hash: Vec<u8>,
    /// `propertyInfo`: what was signed, e.g. the document's name.
    pub property: String,
}

/// `SES_Signature`: a detached signature of a document with a seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesSignature {
    /// `toSign`.
    pub to_sign: ToSign,
    /// `cert`: the signer's certificate (DER).
    pub signer_cert: Vec<u8>,
    /// `signatureAlgID`.
    pub alg: SesAlg,
    /// `signature`: DER `SEQUENCE { r, s }` over the DER of `to_sign`.
    pub signature: Vec<u8>,
}

fn time_value(t: OffsetDateTime) -> GeneralizedTime {
    // Whole seconds, as the standard's examples and every DER encoder agree on.
    GeneralizedTime::from_datetime(t.replace_nanosecond(0).unwrap_or(t))
}

fn write_bits(w: DERWriter<'_>, bytes: &[u8]) {
    w.write_bitvec_bytes(bytes, bytes.len() * 8);
}

fn read_bits(r: BERReader<'_, '_>) -> Result<Vec<u8>, ASN1Error> {
    let (bytes, bits) = r.read_bitvec_bytes()?;
    if bits != bytes.len() * 8 {
        return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
    }
    Ok(bytes)
}

impl SealInfo {
    fn write(&self, w: DERWriter<'_>) {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_ia5_string("ES");
                w.next().write_i64(VERSION);
                w.next().write_ia5_string(&self.vid);
            });
            w.next().write_ia5_string(&self.es_id);
            w.next().write_sequence(|w| {
                w.next().write_i64(self.seal_type);
                w.next().write_utf8_string(&self.name);
                w.next().write_i64(1);
                w.next().write_sequence_of(|w| {
                    for c in &self.certs {
                        w.next().write_bytes(c);
                    }
                });
                w.next().write_generalized_time(&time_value(self.created));
                w.next()
                    .write_generalized_time(&time_value(self.valid_start));
                w.next().write_generalized_time(&time_value(self.valid_end));
            });
            w.next().write_sequence(|w| {
                w.next().write_ia5_string(&self.picture_type);
                w.next().write_bytes(&self.picture);
                w.next().write_i64(self.width);
                w.next().write_i64(self.height);
            });
        });
    }

    fn read(r: BERReader<'_, '_>) -> Result<SealInfo, ASN1Error> {
        r.read_sequence(|r| {
            let vid = r.next().read_sequence(|r| {
                if r.next().read_ia5_string()? != "ES" || r.next().read_i64()? != VERSION {
                    return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
                }
                r.next().read_ia5_string()
            })?;
            let es_id = r.next().read_ia5_string()?;
            let (seal_type, name, certs, created, valid_start, valid_end) =
                r.next().read_sequence(|r| {
                    let seal_type = r.next().read_i64()?;
                    let name = r.next().read_utf8string()?;
                    if r.next().read_i64()? != 1 {
                        // Lists of certificate digests (type 2) are not accepted.
                        return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
                    }
                    let mut certs = Vec::new();
                    r.next().read_sequence_of(|r| {
                        certs.push(r.read_bytes()?);
                        Ok(())
                    })?;
                    let created = *r.next().read_generalized_time()?.datetime();
                    let valid_start = *r.next().read_generalized_time()?.datetime();
                    let valid_end = *r.next().read_generalized_time()?.datetime();
                    Ok((seal_type, name, certs, created, valid_start, valid_end))
                })?;
            let (picture_type, picture, width, height) = r.next().read_sequence(|r| {
                Ok((
                    r.next().read_ia5_string()?,
                    r.next().read_bytes()?,
                    r.next().read_i64()?,
                    r.next().read_i64()?,
                ))
            })?;
            // extDatas, if any, are not interpreted (and not kept: a seal certgate makes has
            // none, and one with them would not re-encode to the signed bytes).
            if r.read_optional(|r| r.read_der())?.is_some() {
                return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
            }
            Ok(SealInfo {
                vid,
                es_id,
                seal_type,
                name,
                certs,
                created,
                valid_start,
                valid_end,
                picture_type,
                picture,
                width,
                height,
            })
        })
    }

    /// The DER the seal maker signs.
    pub fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| self.write(w))
    }
}

impl Seal {
    /// Makes the seal: `info` signed by the seal maker's key, whose certificate is `maker_cert`.
    pub fn make(info: SealInfo, maker_cert: Vec<u8>, maker: &SealKey) -> Result<Seal, SesError> {
        let alg = SesAlg::of(maker.alg());
        let signed_value = sign_der(maker, &info.to_der())?;
        Ok(Seal {
            info,
            maker_cert,
            alg,
            signed_value,
        })
    }

    /// True when `signed_value` is the seal maker's signature (by `maker`) over the seal
    /// information as it stands.
    pub fn maker_signature_holds(&self, maker: &PublicKey) -> bool {
        maker.alg() == self.alg.jws() && verify_der(maker, &self.info.to_der(), &self.signed_value)
    }

    fn write(&self, w: DERWriter<'_>) {
        w.write_sequence(|w| {
            self.info.write(w.next());
            w.next().write_bytes(&self.maker_cert);
            w.next().write_oid(&self.alg.oid());
            write_bits(w.next(), &self.signed_value);
        });
    }

    fn read(r: BERReader<'_, '_>) -> Result<Result<Seal, SesError>, ASN1Error> {
        r.read_sequence(|r| {
            let info = SealInfo::read(r.next())?;
            let maker_cert = r.next().read_bytes()?;
            let oid = r.next().read_oid()?;
            let signed_value = read_bits(r.next())?;
            Ok(SesAlg::from_oid(&oid).map(|alg| Seal {
                info,
                maker_cert,
                alg,
                signed_value,
            }))
        })
    }

    /// The seal as DER (`SESeal`).
    pub fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| self.write(w))
    }
}

impl ToSign {
    fn write(&self, w: DERWriter<'_>) {
        w.write_sequence(|w| {
            w.next().write_i64(VERSION);
            self.seal.write(w.next());
            w.next().write_generalized_time(&time_value(self.time));
            write_bits(w.next(), &self.data_hash);
            w.next().write_ia5_string(&self.property);
        });
    }

    /// The DER the signer signs (`TBS_Sign`).
    pub fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| self.write(w))
    }
}

impl SesSignature {
    /// Signs: `to_sign` with the seal's signing key `signer`, whose certificate is
    /// `signer_cert`.
    pub fn sign(
        to_sign: ToSign,
        signer_cert: Vec<u8>,
        signer: &SealKey,
    ) -> Result<SesSignature, SesError> {
        let alg = SesAlg::of(signer.alg());
        let signature = sign_der(signer, &to_sign.to_der())?;
        Ok(SesSignature {
            to_sign,
            signer_cert,
            alg,
            signature,
        })
    }

    /// True when `signature` is `signer`'s signature over `TBS_Sign` as it stands.
    pub fn signature_holds(&self, signer: &PublicKey) -> bool {
        signer.alg() == self.alg.jws()
            && verify_der(signer, &self.to_sign.to_der(), &self.signature)
    }

    /// The signature as DER.
    pub fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                self.to_sign.write(w.next());
                w.next().write_bytes(&self.signer_cert);
                w.next().write_oid(&self.alg.oid());
                write_bits(w.next(), &self.signature);
            });
        })
    }

    /// Reads a DER `SES_Signature`. A time stamp (`[0]`) is read past and not kept; anything
    /// else outside the structure, or any deviation from DER, is refused.
    pub fn parse(der: &[u8]) -> Result<SesSignature, SesError> {
        if der.len() > MAX_SES_BYTES {
            return Err(SesError::TooLarge(der.len()));
        }
        let parsed = yasna::parse_der(der, |r| {
            r.read_sequence(|r| {
                let to_sign = r.next().read_sequence(|r| {
                    if r.next().read_i64()? != VERSION {
                        return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
                    }
                    let seal = Seal::read(r.next())?;
                    let time = *r.next().read_generalized_time()?.datetime();
                    let data_hash = read_bits(r.next())?;
                    let property = r.next().read_ia5_string()?;
                    if r.read_optional(|r| r.read_der())?.is_some() {
                        // extDatas are not interpreted.
                        return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
                    }
                    Ok(seal.map(|seal| ToSign {
                        seal,
                        time,
                        data_hash,
                        property,
                    }))
                })?;
                let signer_cert = r.next().read_bytes()?;
                let oid = r.next().read_oid()?;
                let signature = read_bits(r.next())?;
                let _time_stamp =
                    r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                Ok((to_sign, signer_cert, oid, signature))
            })
        })?;
        let (to_sign, signer_cert, oid, signature) = parsed;
        let sig = SesSignature {
            to_sign: to_sign?,
            signer_cert,
            alg: SesAlg::from_oid(&oid)?,
            signature,
        };
        // DER is canonical: what was parsed must encode to exactly the bytes given, or the
        // bytes a signature covers would not be the ones received.
        if sig.to_der() != der {
            return Err(SesError::Malformed(
                "it is not in the canonical encoding".into(),
            ));
        }
        Ok(sig)
    }
}

/// Signs `data` and encodes the signature as DER `SEQUENCE { r, s }`.
fn sign_der(key: &SealKey, data: &[u8]) -> Result<Vec<u8>, SesError> {
    let raw = key
        .sign(data)
        .map_err(|e| SesError::Signing(e.to_string()))?;
    raw_to_der(&raw)
}

fn raw_to_der(raw: &[u8; 64]) -> Result<Vec<u8>, SesError> {
    let fail = |e: openssl::error::ErrorStack| SesError::Signing(e.to_string());
    let r = openssl::bn::BigNum::from_slice(&raw[..32]).map_err(fail)?;
    let s = openssl::bn::BigNum::from_slice(&raw[32..]).map_err(fail)?;
    openssl::ecdsa::EcdsaSig::from_private_components(r, s)
        .and_then(|sig| sig.to_der())
        .map_err(fail)
}

/// The raw `r‖s` of a DER signature, if it is one with 32-byte values.
fn der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let sig = openssl::ecdsa::EcdsaSig::from_der(der).ok()?;
    let r = sig.r().to_vec_padded(32).ok()?;
    let s = sig.s().to_vec_padded(32).ok()?;
    let mut raw = [0u8; 64];
    raw[..32].copy_from_slice(&r);
    raw[32..].copy_from_slice(&s);
    // A DER signature that does not re-encode to itself is refused (no malleability).
    (sig.to_der().ok()?.as_slice() == der).then_some(raw)
}

fn verify_der(key: &PublicKey, data: &[u8], der: &[u8]) -> bool {
    der_to_raw(der).is_some_and(|raw| key.verify(data, &raw))
}

#[cfg(test)]
mod tests;
