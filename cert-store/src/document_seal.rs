//! Sealing documents with a stored seal and verifying sealed documents, in the GB/T 38540-2020
//! format ([`crate::ses`]): the seal information (name, picture, validity, the seal's
//! certificate as the one allowed signer) is signed by the seal maker — certgate's seal CA —
//! and the document's digest, the seal and the time are signed with the seal's own key.

#![allow(deprecated)] // Asn1StringRef::as_utf8: names here hold no NUL
use serde::Serialize;

use crate::id::Uscc;
use crate::ses::SesAlg;

/// The vendor id written into the seals certgate makes.
pub const VENDOR_ID: &str = "certgate";

/// The document, or its digest with the algorithm named.
#[derive(Debug, Clone)]
pub enum Document<'a> {
    /// The document's bytes.
    Bytes(&'a [u8]),
    /// Its digest: `sm3` (SM2 seals) or `sha256` (P-256 seals).
    Digest {
        /// `sm3` or `sha256`.
        alg: &'a str,
        /// The digest's bytes.
        value: Vec<u8>,
    },
}

/// The `typ` of the detached JWS form.
pub const JWS_TYP: &str = "certgate-seal+jws";

/// The payload of the detached JWS form: the document's digest, canonical JSON (members in
/// name order, no spaces), rebuilt by the verifier from the document.
pub(crate) fn jws_payload(alg: SesAlg, digest: &[u8]) -> String {
    let name = match alg {
        SesAlg::Sm2Sm3 => "sm3",
        SesAlg::EcdsaSha256 => "sha256",
    };
    format!(
        r#"{{"digest":"{}","digest_alg":"{name}"}}"#,
        crate::jws::b64url(digest)
    )
}

/// A sealed document's signatures.
#[derive(Debug, Clone)]
pub struct SealedDocument {
    /// The `SES_Signature`, DER.
    pub ses_signature: Vec<u8>,
    /// The same seal on the same digest as a detached compact JWS (`header..signature`):
    /// `typ` [`JWS_TYP`], `kid` the seal, `x5c` its certificate and the seal CA's, `iat` the
    /// time of sealing; the payload is the digest (see the module).
    pub jws: String,
    /// The document digest that was signed.
    pub data_hash: Vec<u8>,
    /// `timeInfo` (Unix seconds).
    pub time: i64,
}

/// One check of a sealed-document verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SealCheck {
    /// `format`, `document_digest`, `signature`, `signer_in_seal`, `seal_maker_signature`,
    /// `certificate_chain`, `seal_validity`, `seal_status`.
    pub check: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// The reason, in words.
    pub detail: String,
}

/// Who a seal belongs to, as a verdict names it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SealOwnerFacts {
    /// The owner's USCC.
    pub uscc: Option<String>,
    /// The owner's registered name.
    pub name: Option<String>,
}

impl SealOwnerFacts {
    /// The owner of a seal in this register: its USCC and the registered name its seal was
    /// made under (for seals made before names were bound, the seal's name less its kind).
    pub(crate) fn of_record(seal: &crate::licence::SealRecord) -> SealOwnerFacts {
        let name = seal.owner_name.clone().unwrap_or_else(|| {
            seal.name
                .strip_suffix(seal.seal_type.as_str())
                .unwrap_or(&seal.name)
                .to_owned()
        });
        SealOwnerFacts {
            uscc: Some(seal.owner.to_string()),
            name: Some(name),
        }
    }

    /// The owner a seal certificate of another system names: `serialNumber` (the USCC) and
    /// `organizationName` (or, without one, the common name).
    pub(crate) fn of_certificate(cert: &openssl::x509::X509) -> SealOwnerFacts {
        let entry = |nid| {
            cert.subject_name()
                .entries_by_nid(nid)
                .next()
                .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
        };
        SealOwnerFacts {
            uscc: entry(openssl::nid::Nid::SERIALNUMBER).filter(|s| s.parse::<Uscc>().is_ok()),
            name: entry(openssl::nid::Nid::ORGANIZATIONNAME)
                .or_else(|| entry(openssl::nid::Nid::COMMONNAME)),
        }
    }
}

/// The verdict on a sealed document.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SealVerdict {
    /// True only when every check passed.
    pub valid: bool,
    /// The seal's id (`esID`) and name, as the seal says.
    pub seal_id: Option<String>,
    /// The seal's name.
    pub seal_name: Option<String>,
    /// Who the seal belongs to (USCC and registered name): from this register for its own
    /// seals, from the seal certificate for another region's.
    pub owner: Option<SealOwnerFacts>,
    /// The authority that made the seal (the seal maker certificate's subject).
    pub authority: Option<String>,
    /// When the document was sealed (`timeInfo`, Unix seconds).
    pub sealed_at: Option<i64>,
    /// Every check, in order.
    pub checks: Vec<SealCheck>,
}

pub(crate) fn check(
    checks: &mut Vec<SealCheck>,
    name: &'static str,
    ok: bool,
    detail: impl Into<String>,
) {
    checks.push(SealCheck {
        check: name,
        ok,
        detail: detail.into(),
    });
}

/// Whether a seal revoked at `revoked_at` (if ever) was still good at `t`, and why.
pub(crate) fn revocation_at(revoked_at: Option<i64>, t: i64) -> (bool, String) {
    match revoked_at {
        Some(r) if r <= t => (
            false,
            format!("the seal was revoked at {r}, before the sealing"),
        ),
        Some(r) => (true, format!("revoked at {r}, after the sealing")),
        None => (true, "not revoked".into()),
    }
}

/// A seal CA trusted at some time: certgate's own, or one of the trust list.
pub(crate) struct Anchor {
    pub(crate) cert: openssl::x509::X509,
    pub(crate) der: Vec<u8>,
    /// The authority's name (and region, for a foreign one).
    pub(crate) authority: String,
    pub(crate) foreign: bool,
}
