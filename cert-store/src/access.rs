//! Who may see what of a licence: the one place that decides, for every path that discloses a
//! licence (by identifier, by holder, a field check, a show-code redemption).
//!
//! The decision is taken in two steps. [`decide`] runs before the licence is looked up, from
//! what the request names (the type and, for a lookup by identifier, the issuer the identifier
//! carries): a department without a rule is refused the same way whether or not the licence
//! exists, so a refusal says nothing about the register. [`Grant::fields`] then gives the fields
//! to disclose, and [`Grant::needs_consent`] whether the holder's consent must be shown.

use std::collections::BTreeSet;

use crate::id::Uscc;
use crate::licence::LicenceType;
use crate::service::HOLDER_CLAIMS;

/// One access rule: `department` may read `fields` (or every field) of licences of
/// `licence_type` when its stated matter code is in `purposes` (or for any purpose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// The department the rule grants to.
    pub department: Uscc,
    /// The licence type code.
    pub licence_type: String,
    /// Matter codes (事项编码) the rule applies to; `None` for any stated purpose.
    pub purposes: Option<BTreeSet<String>>,
    /// Fields the department may see; `None` for every field.
    pub fields: Option<BTreeSet<String>>,
}

impl AccessRule {
    /// True when the rule covers this department, type and matter code.
    pub fn applies(&self, department: &Uscc, licence_type: &str, matter: Option<&str>) -> bool {
        &self.department == department
            && self.licence_type == licence_type
            && match (&self.purposes, matter) {
                (None, _) => true,
                (Some(p), Some(m)) => p.contains(m),
                (Some(_), None) => false,
            }
    }

    /// True when the rule lets the department see `field`.
    pub fn allows_field(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }
}

/// The department asking, with the roles that matter here.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    /// Its USCC.
    pub department: &'a Uscc,
    /// It holds the `consumer` role (reads under access rules).
    pub consumer: bool,
    /// It holds the `issuer` role (reads the licences it issued).
    pub issuer: bool,
}

/// Why a department may not read a licence type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No rule lets the department read the type for its stated purpose.
    #[error("no access rule lets this department read {0} for this purpose")]
    NoRule(String),
    /// `?fields=` names a field the type does not have.
    #[error("`{field}` is not a field of {licence_type}")]
    UnknownField {
        /// The field named.
        field: String,
        /// The type's name.
        licence_type: String,
    },
}

/// What a department may see of licences of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The issuer of the licence: every field, no consent needed.
    Issuer,
    /// A consumer under its access rules: these fields.
    Rules(BTreeSet<String>),
}

/// Decides whether `reader` may read licences of `licence_type` for the stated `matter`.
/// `issuer` is the licence's issuer when the request names one licence (its identifier
/// carries it), `None` for a query by holder (then the reader is the issuer only when the type
/// names it as one).
pub fn decide(
    reader: Reader<'_>,
    rules: &[AccessRule],
    licence_type: &LicenceType,
    issuer: Option<&Uscc>,
    matter: Option<&str>,
) -> Result<Grant, AccessError> {
    let is_issuer = reader.issuer
        && match issuer {
            Some(i) => i == reader.department,
            None => licence_type.issuers.contains(reader.department),
        };
    if is_issuer {
        return Ok(Grant::Issuer);
    }
    let applying: Vec<&AccessRule> = rules
        .iter()
        .filter(|r| r.applies(reader.department, licence_type.code.as_str(), matter))
        .collect();
    if applying.is_empty() || !reader.consumer {
        return Err(AccessError::NoRule(licence_type.name.clone()));
    }
    Ok(Grant::Rules(
        all_fields(licence_type)
            .filter(|f| applying.iter().any(|r| r.allows_field(f)))
            .collect(),
    ))
}

impl Grant {
    /// The fields to disclose, narrowed to `requested` (`?fields=`, comma-separated) if given.
    pub fn fields(
        &self,
        licence_type: &LicenceType,
        requested: Option<&str>,
    ) -> Result<BTreeSet<String>, AccessError> {
        let mut visible: BTreeSet<String> = match self {
            Grant::Issuer => all_fields(licence_type).collect(),
            Grant::Rules(fields) => fields.clone(),
        };
        if let Some(requested) = requested {
            let wanted: BTreeSet<&str> = requested
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(unknown) = wanted
                .iter()
                .find(|f| !all_fields(licence_type).any(|a| a == **f))
            {
                return Err(AccessError::UnknownField {
                    field: unknown.chars().take(64).collect(),
                    licence_type: licence_type.name.clone(),
                });
            }
            visible.retain(|f| wanted.contains(f.as_str()));
        }
        Ok(visible)
    }

    /// True when the holder's consent must be shown before anything is disclosed: the type
    /// asks for it and the reader is not the issuer.
    pub fn needs_consent(&self, licence_type: &LicenceType) -> bool {
        licence_type.consent_required && !matches!(self, Grant::Issuer)
    }

    /// True for the issuer's grant, which also sees the status reason.
    pub fn is_issuer(&self) -> bool {
        matches!(self, Grant::Issuer)
    }
}

/// Every disclosable field of a type: its own and the holder's.
fn all_fields(licence_type: &LicenceType) -> impl Iterator<Item = String> + '_ {
    licence_type
        .fields
        .iter()
        .map(|f| f.name.clone())
        .chain(HOLDER_CLAIMS.iter().map(|s| (*s).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::{FieldKind, FieldSpec};

    const MARKET: &str = "11110105MB0000002F";
    const APPROVAL: &str = "11110105MB0000001C";

    fn food() -> LicenceType {
        LicenceType {
            code: "11100000MB0000100D002".parse().unwrap(),
            name: "食品经营许可证".into(),
            issuers: [MARKET.parse().unwrap()].into(),
            fields: vec![FieldSpec {
                name: "premises".into(),
                kind: FieldKind::String,
                required: true,
                min: None,
            }],
            validity_days: 1,
            consent_required: true,
            one_per_holder: false,
            business_licence: false,
        }
    }

    fn reader(dept: &Uscc, consumer: bool, issuer: bool) -> Reader<'_> {
        Reader {
            department: dept,
            consumer,
            issuer,
        }
    }

    #[test]
    fn issuers_rules_purposes_and_consent_decide_together() {
        let (market, approval): (Uscc, Uscc) = (MARKET.parse().unwrap(), APPROVAL.parse().unwrap());
        let rules = [AccessRule {
            department: approval.clone(),
            licence_type: "11100000MB0000100D002".into(),
            purposes: Some(["M-FOOD-001".to_owned()].into()),
            fields: Some(["premises".to_owned()].into()),
        }];
        let t = food();
        // The issuer, with the issuer role, sees everything without consent.
        let g = decide(
            reader(&market, false, true),
            &rules,
            &t,
            Some(&market),
            None,
        )
        .unwrap();
        assert!(!g.needs_consent(&t));
        assert_eq!(g.fields(&t, None).unwrap().len(), 3);
        // The issuer's identifier carried by a licence of another issuer is no grant.
        assert!(
            decide(
                reader(&market, false, true),
                &rules,
                &t,
                Some(&approval),
                None
            )
            .is_err()
        );
        // Without the issuer role, being named issuer grants nothing.
        assert!(
            decide(
                reader(&market, true, false),
                &rules,
                &t,
                Some(&market),
                None
            )
            .is_err()
        );
        // A consumer under its rule, for its matter: the rule's fields, consent needed.
        let g = decide(
            reader(&approval, true, false),
            &rules,
            &t,
            Some(&market),
            Some("M-FOOD-001"),
        )
        .unwrap();
        assert!(g.needs_consent(&t));
        assert_eq!(g.fields(&t, None).unwrap(), ["premises".to_owned()].into());
        assert_eq!(g.fields(&t, Some("holder_id")).unwrap(), BTreeSet::new());
        assert!(matches!(
            g.fields(&t, Some("salary")),
            Err(AccessError::UnknownField { .. })
        ));
        // Another matter, or no consumer role: refused.
        assert!(
            decide(
                reader(&approval, true, false),
                &rules,
                &t,
                None,
                Some("M-X")
            )
            .is_err()
        );
        assert!(
            decide(
                reader(&approval, false, false),
                &rules,
                &t,
                None,
                Some("M-FOOD-001")
            )
            .is_err()
        );
    }
}
