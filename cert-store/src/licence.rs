//! Licence types (their field schemas) and the stored records of seals, licences, consents
//! and show-codes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::HolderId;
use crate::id::Uscc;
use crate::jws::JwsAlg;
use crate::licence_id::{LicenceId, TypeCode};

/// The JSON type of a licence field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// A non-empty string of at most 1,000 characters.
    String,
    /// An integer.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A calendar date `YYYY-MM-DD`.
    Date,
}

/// One field of a licence type's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// The field's name, e.g. `legal_representative`.
    pub name: String,
    /// Its JSON type.
    pub kind: FieldKind,
    /// Whether every licence of the type must carry it.
    #[serde(default)]
    pub required: bool,
    /// The least value of an `integer` or `number` field (e.g. 0 for an amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
}

/// A licence type: what may be issued, by whom, with which fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceType {
    /// The type code (defining authority's USCC + 3 digits); the `vct` of its credentials.
    pub code: TypeCode,
    /// Its name, e.g. 营业执照.
    pub name: String,
    /// The departments allowed to issue it.
    pub issuers: BTreeSet<Uscc>,
    /// The field schema.
    pub fields: Vec<FieldSpec>,
    /// Default validity in days when an issue request names none.
    pub validity_days: u32,
    /// Whether disclosing a licence of this type to a department other than its issuer needs
    /// the holder's consent.
    pub consent_required: bool,
    /// Whether a holder may hold one licence of this type at a time (valid or suspended);
    /// a second is refused, and a change goes through renewal.
    #[serde(default)]
    pub one_per_holder: bool,
    /// Whether this type is the register of market entities' names (营业执照): an
    /// enterprise's seals take their name from its valid licence of this type.
    #[serde(default)]
    pub business_licence: bool,
}

/// True for names that licence fields may not take: the claims of the credential itself
/// (those SD-JWT never discloses, and `jti`, the licence identifier) and the holder's claims.
pub fn is_reserved_field_name(name: &str) -> bool {
    crate::sdjwt::RESERVED_CLAIMS.contains(&name)
        || ["jti", "holder_id", "holder_name", "licence_id", "seal_id"].contains(&name)
}

/// A field that does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl LicenceType {
    /// Checks `fields` against the schema: no unknown field, every required field present,
    /// every value of its declared type.
    pub fn validate_fields(&self, fields: &Map<String, Value>) -> Result<(), FieldError> {
        let err = |field: &str, reason: &str| FieldError {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        for name in fields.keys() {
            if !self.fields.iter().any(|f| &f.name == name) {
                return Err(err(name, "not a field of this licence type"));
            }
        }
        for spec in &self.fields {
            match fields.get(&spec.name) {
                None | Some(Value::Null) if spec.required => {
                    return Err(err(&spec.name, "required"));
                }
                None | Some(Value::Null) => {}
                Some(v) => {
                    let ok = match spec.kind {
                        FieldKind::String => v
                            .as_str()
                            .is_some_and(|s| crate::text::plain(s, 1000).is_ok()),
                        FieldKind::Integer => (v.is_i64() || v.is_u64()) && at_least(v, spec.min),
                        FieldKind::Number => v.is_number() && at_least(v, spec.min),
                        FieldKind::Boolean => v.is_boolean(),
                        FieldKind::Date => v.as_str().is_some_and(is_date),
                    };
                    if !ok {
                        let expected = match spec.kind {
                            FieldKind::String => {
                                "expected a non-empty string of at most 1000 characters, without control characters"
                            }
                            FieldKind::Integer if spec.min.is_some() => {
                                "expected an integer, at least the field's minimum"
                            }
                            FieldKind::Integer => "expected an integer",
                            FieldKind::Number if spec.min.is_some() => {
                                "expected a number, at least the field's minimum"
                            }
                            FieldKind::Number => "expected a number",
                            FieldKind::Boolean => "expected true or false",
                            FieldKind::Date => "expected a date YYYY-MM-DD",
                        };
                        return Err(err(&spec.name, expected));
                    }
                }
            }
        }
        Ok(())
    }
}

/// True when the number `v` is at least `min` (or there is no minimum).
fn at_least(v: &Value, min: Option<i64>) -> bool {
    match (min, v.as_i64(), v.as_f64()) {
        (None, _, _) => true,
        (Some(m), Some(i), _) => i >= m,
        (Some(m), None, Some(f)) => f >= m as f64,
        // A u64 beyond i64 is above any minimum.
        (Some(_), None, None) => v.is_u64(),
    }
}

fn is_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    s.len() == 10 && time::Date::parse(s, format).is_ok()
}

/// A licence's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LicenceStatus {
    /// In force.
    Valid,
    /// Temporarily not in force; may be resumed.
    Suspended,
    /// Permanently withdrawn (or replaced by a renewal).
    Revoked,
}

impl LicenceStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            LicenceStatus::Valid => "valid",
            LicenceStatus::Suspended => "suspended",
            LicenceStatus::Revoked => "revoked",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<LicenceStatus> {
        match s {
            "valid" => Some(LicenceStatus::Valid),
            "suspended" => Some(LicenceStatus::Suspended),
            "revoked" => Some(LicenceStatus::Revoked),
            _ => None,
        }
    }
}

/// A stored e-seal. The private key is kept only encrypted under the key-encryption key.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct SealRecord {
    /// The seal's id (`seal-<hex>`).
    pub id: String,
    /// The department (or enterprise) that owns it.
    pub owner: Uscc,
    /// 公章, 业务专用章, 合同专用章, …
    pub seal_type: String,
    /// The seal's name as engraved.
    pub name: String,
    /// Its signature algorithm.
    pub alg: JwsAlg,
    /// Its X.509 seal certificate (PEM).
    pub certificate_pem: String,
    /// PKCS#8 private key encrypted under the KEK.
    #[serde(skip)]
    pub encrypted_key: Vec<u8>,
    /// SHA-256 (hex) of the seal picture, when one was given.
    pub picture_sha256: Option<String>,
    /// The seal picture (PNG), when one was given.
    #[serde(skip)]
    pub picture: Option<Vec<u8>>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// End of the certificate's validity (Unix seconds).
    pub not_after: i64,
    /// Revocation time (Unix seconds), when revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revocation_reason: Option<String>,
    /// The owner's registered name (a department's full name, an enterprise's name on its
    /// business licence), with which the seal's name starts; absent for seals made before
    /// names were bound to their owners.
    pub owner_name: Option<String>,
}

impl std::fmt::Debug for SealRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealRecord")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("alg", &self.alg)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A stored licence.
#[derive(Debug, Clone, PartialEq)]
pub struct LicenceRecord {
    /// The GB/T 36904 identifier.
    pub id: LicenceId,
    /// The licence type.
    pub type_code: TypeCode,
    /// The issuing department.
    pub issuer: Uscc,
    /// The holder's id (USCC or citizen id), as given at issuance.
    pub holder: HolderId,
    /// The seal that signed it.
    pub seal_id: String,
    /// The issued SD-JWT VC with every disclosure.
    pub sd_jwt: String,
    /// The licence fields (for field checks without disclosure).
    pub fields: Map<String, Value>,
    /// Current status.
    pub status: LicenceStatus,
    /// Why the status was last changed.
    pub status_reason: Option<String>,
    /// The status list it is entered in.
    pub status_list: u32,
    /// Its index in that list.
    pub status_index: u32,
    /// Issuance time (Unix seconds).
    pub issued_at: i64,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub expires_at: i64,
    /// The licence this one renews.
    pub replaces: Option<LicenceId>,
    /// The licence that renewed this one.
    pub replaced_by: Option<LicenceId>,
}

/// A holder's consent for a department to query its licences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The consent's id (also the `jti` of its token).
    pub id: String,
    /// The holder's id.
    pub holder: String,
    /// The department allowed to query.
    pub department: Uscc,
    /// Licence types covered.
    pub licence_types: Vec<String>,
    /// The purpose consented to.
    pub purpose: String,
    /// The city app that created it.
    pub created_by: Uscc,
    /// End of validity (Unix seconds).
    pub expires_at: i64,
    /// When revoked.
    pub revoked_at: Option<i64>,
}

/// A seal CA of another region's seal system that this one trusts (电子印章互通互认).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustedSealCa {
    /// Its id (`sealca-<hex>`).
    pub id: String,
    /// The authority, e.g. 广东省电子印章系统.
    pub name: String,
    /// Its region (GB/T 2260 code or name).
    pub region: String,
    /// The CA certificate (PEM).
    pub certificate_pem: String,
    /// When it was added (Unix seconds).
    pub added_at: i64,
    /// From when it is no longer trusted (Unix seconds): seals used after this are refused,
    /// those used before still verify.
    pub removed_at: Option<i64>,
}

/// A one-use code a holder shows so that a verifier can fetch one licence (一码亮证).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowCodeRecord {
    /// SHA-256 (hex) of the code; the code itself is never stored.
    pub code_sha256: String,
    /// The licence shown.
    pub licence_id: String,
    /// The city app that created it.
    pub created_by: Uscc,
    /// End of validity (Unix seconds).
    pub expires_at: i64,
    /// When redeemed.
    pub redeemed_at: Option<i64>,
    /// Who redeemed it.
    pub redeemed_by: Option<Uscc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn business_licence() -> LicenceType {
        LicenceType {
            code: "11100000MB0000100D001".parse().unwrap(),
            name: "营业执照".into(),
            issuers: ["11110105MB0000002F".parse().unwrap()].into(),
            fields: vec![
                FieldSpec {
                    name: "name".into(),
                    kind: FieldKind::String,
                    required: true,
                    min: None,
                },
                FieldSpec {
                    name: "registered_capital".into(),
                    kind: FieldKind::Integer,
                    required: false,
                    min: None,
                },
                FieldSpec {
                    name: "established".into(),
                    kind: FieldKind::Date,
                    required: true,
                    min: None,
                },
                FieldSpec {
                    name: "listed".into(),
                    kind: FieldKind::Boolean,
                    required: false,
                    min: None,
                },
            ],
            validity_days: 3650,
            consent_required: false,
            one_per_holder: true,
            business_licence: true,
        }
    }

    #[test]
    fn fields_are_checked_against_the_schema_and_errors_name_the_field() {
        let t = business_licence();
        let ok = json!({"name": "某某科技有限公司", "established": "2020-02-29", "registered_capital": 1000000});
        assert_eq!(t.validate_fields(ok.as_object().unwrap()), Ok(()));
        let cases = [
            (json!({"established": "2020-01-01"}), "name", "required"),
            (
                json!({"name": "x", "established": "2020-01-01", "colour": "red"}),
                "colour",
                "not a field",
            ),
            (
                json!({"name": 5, "established": "2020-01-01"}),
                "name",
                "string",
            ),
            (
                json!({"name": " ", "established": "2020-01-01"}),
                "name",
                "string",
            ),
            (
                json!({"name": "x", "established": "2021-02-29"}),
                "established",
                "date",
            ),
            (
                json!({"name": "x", "established": "2021-1-1"}),
                "established",
                "date",
            ),
            (
                json!({"name": "x", "established": "2021-01-01", "registered_capital": 1.5}),
                "registered_capital",
                "integer",
            ),
            (
                json!({"name": "x", "established": "2021-01-01", "listed": "yes"}),
                "listed",
                "true or false",
            ),
        ];
        for (fields, field, reason) in cases {
            let e = t.validate_fields(fields.as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, field, "{fields}");
            assert!(e.reason.contains(reason), "{fields}: {}", e.reason);
        }
    }
}
