//! Licence identifiers per GB/T 36904:
//! `1.2.156.3005.2.<type code>.<issuer USCC>.<serial>.<version>.<check>`.
//!
//! The type code is the defining authority's USCC followed by three digits; the serial is 1–32
//! characters of `0-9A-Z` chosen by the issuer; the version is three digits; the check
//! character is ISO/IEC 7064 MOD 37,36 over the four fields concatenated without dots.

use std::fmt;
use std::str::FromStr;

use crate::id::{IdError, Uscc};

/// The fixed arc every licence identifier starts with.
pub const LICENCE_ID_PREFIX: &str = "1.2.156.3005.2.";

/// The characters of a serial, in the order of their value (ISO/IEC 7064 MOD 37,36).
pub(crate) const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Why a licence identifier or type code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LicenceIdError {
    /// The identifier does not start with `1.2.156.3005.2.`.
    #[error("a licence identifier starts with {LICENCE_ID_PREFIX}")]
    Prefix,
    /// The identifier does not have five dot-separated fields after the prefix.
    #[error(
        "a licence identifier has five fields after the prefix: type code, issuer, serial, version, check"
    )]
    Fields,
    /// The type code is not a USCC followed by three digits.
    #[error("type code: {0}")]
    TypeCode(String),
    /// The issuer is not a valid USCC.
    #[error("issuer: {0}")]
    Issuer(IdError),
    /// The serial is not 1–32 characters of `0-9A-Z`.
    #[error("serial must be 1 to 32 characters of 0-9 and A-Z")]
    Serial,
    /// The version is not three digits.
    #[error("version must be three digits")]
    Version,
    /// The check character does not match.
    #[error("check character is {found}, expected {expected}")]
    Check {
        /// The check character computed from the fields.
        expected: char,
        /// The check character given.
        found: char,
    },
}

/// A licence type code: the defining authority's USCC and a three-digit number.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TypeCode(String);

impl TypeCode {
    /// The code as text (21 characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TypeCode {
    type Err = LicenceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| LicenceIdError::TypeCode(why.to_owned());
        if !s.is_ascii() || s.len() != 21 {
            return Err(bad("must be an 18-character USCC followed by 3 digits"));
        }
        let (authority, number) = s.split_at(18);
        authority
            .parse::<Uscc>()
            .map_err(|e| LicenceIdError::TypeCode(format!("defining authority: {e}")))?;
        if !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the last 3 characters must be digits"));
        }
        Ok(TypeCode(s.to_owned()))
    }
}

impl TryFrom<String> for TypeCode {
    type Error = LicenceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TypeCode> for String {
    fn from(t: TypeCode) -> String {
        t.0
    }
}

impl fmt::Display for TypeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A licence identifier that passed every check, check character included.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LicenceId {
    text: String,
    type_code: TypeCode,
    issuer: Uscc,
    serial: String,
    version: u16,
}

impl LicenceId {
    /// Builds an identifier from its parts, computing the check character.
    pub fn new(
        type_code: &TypeCode,
        issuer: &Uscc,
        serial: &str,
        version: u16,
    ) -> Result<LicenceId, LicenceIdError> {
        check_serial(serial)?;
        if version > 999 {
            return Err(LicenceIdError::Version);
        }
        let version = format!("{version:03}");
        let check = check_character(&[type_code.as_str(), issuer.as_str(), serial, &version]);
        format!("{LICENCE_ID_PREFIX}{type_code}.{issuer}.{serial}.{version}.{check}").parse()
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The licence type.
    pub fn type_code(&self) -> &TypeCode {
        &self.type_code
    }

    /// The issuing department.
    pub fn issuer(&self) -> &Uscc {
        &self.issuer
    }

    /// The issuer's serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The version (0–999).
    pub fn version(&self) -> u16 {
        self.version
    }
}

fn check_serial(serial: &str) -> Result<(), LicenceIdError> {
    if serial.is_empty()
        || serial.len() > 32
        || !serial
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return Err(LicenceIdError::Serial);
    }
    Ok(())
}

/// ISO/IEC 7064 MOD 37,36 over the concatenated fields (all characters in `0-9A-Z`).
fn check_character(fields: &[&str]) -> char {
    let mut p: u32 = 36;
    for b in fields.iter().flat_map(|f| f.bytes()) {
        let v = ALPHABET.iter().position(|&c| c == b).unwrap_or(0) as u32;
        let mut s = (p + v) % 36;
        if s == 0 {
            s = 36;
        }
        p = (2 * s) % 37;
    }
    let r = (37 - p) % 36;
    char::from(ALPHABET[r as usize])
}

impl FromStr for LicenceId {
    type Err = LicenceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(LICENCE_ID_PREFIX)
            .ok_or(LicenceIdError::Prefix)?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [type_code, issuer, serial, version, check] = parts.as_slice() else {
            return Err(LicenceIdError::Fields);
        };
        let type_code: TypeCode = type_code.parse()?;
        let issuer: Uscc = issuer.parse().map_err(LicenceIdError::Issuer)?;
        check_serial(serial)?;
        if version.len() != 3 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LicenceIdError::Version);
        }
        let expected = check_character(&[type_code.as_str(), issuer.as_str(), serial, version]);
        let mut found = check.chars();
        match (found.next(), found.next()) {
            (Some(c), None) if c == expected => {}
            (c, _) => {
                return Err(LicenceIdError::Check {
                    expected,
                    found: c.unwrap_or(' '),
                });
            }
        }
        Ok(LicenceId {
            text: s.to_owned(),
            version: version.parse().map_err(|_| LicenceIdError::Version)?,
            serial: (*serial).to_owned(),
            type_code,
            issuer,
        })
    }
}

impl TryFrom<String> for LicenceId {
    type Error = LicenceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LicenceId> for String {
    fn from(id: LicenceId) -> String {
        id.text
    }
}

impl fmt::Display for LicenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKET: &str = "11110105MB0000002F";
    const SAMR: &str = "11100000MB0000100D"; // defining authority of the type in these tests

    fn sample() -> LicenceId {
        let t: TypeCode = format!("{SAMR}001").parse().unwrap();
        LicenceId::new(&t, &MARKET.parse().unwrap(), "2026A0000001", 1).unwrap()
    }

    #[test]
    fn check_character_follows_mod_37_36() {
        // Hand computation for the fields "0","0": p=36 -> s=(36+0)%36=0->36, p=72%37=35;
        // s=(35+0)%36=35, p=70%37=33; r=(37-33)%36=4.
        assert_eq!(check_character(&["0", "0"]), '4');
        // A value whose running sum wraps to 0 exercises the s==0 -> 36 rule.
        assert_eq!(check_character(&[""]), '1'); // p=36 -> r=(37-36)%36=1
    }

    #[test]
    fn round_trip_and_parts() {
        let id = sample();
        let again: LicenceId = id.as_str().parse().unwrap();
        assert_eq!(again, id);
        assert_eq!(id.issuer().as_str(), MARKET);
        assert_eq!(id.serial(), "2026A0000001");
        assert_eq!(id.version(), 1);
        assert!(id.as_str().starts_with(
            "1.2.156.3005.2.11100000MB0000100D001.11110105MB0000002F.2026A0000001.001."
        ));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<LicenceId>(&json).unwrap(), id);
    }

    #[test]
    fn every_single_character_change_in_a_field_is_rejected() {
        let id = sample();
        let text = id.as_str();
        let fields_start = LICENCE_ID_PREFIX.len();
        let mut tried = 0;
        for (i, original) in text.char_indices().skip(fields_start) {
            if original == '.' {
                continue;
            }
            for &c in ALPHABET.iter() {
                let c = char::from(c);
                if c == original {
                    continue;
                }
                let mut changed = text.to_owned();
                changed.replace_range(i..i + 1, &c.to_string());
                tried += 1;
                assert!(changed.parse::<LicenceId>().is_err(), "{changed} accepted");
            }
        }
        assert!(tried > 1500);
    }

    #[test]
    fn malformed_identifiers_are_refused_with_a_reason() {
        let good = sample().to_string();
        let cases = [
            ("", LicenceIdError::Prefix),
            ("1.2.156.3005.3.x", LicenceIdError::Prefix),
            (&good.replace(".001.", ".001.X."), LicenceIdError::Fields),
            (&format!("{LICENCE_ID_PREFIX}a.b"), LicenceIdError::Fields),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<LicenceId>().unwrap_err(), expected, "{input}");
        }
        for bad in [
            good.replace("2026A0000001", "2026a0000001"),
            good.replace("2026A0000001", ""),
            good.replace("2026A0000001", &"A".repeat(33)),
            good.replace("2026A0000001", "营业执照"),
            good.replace(".001.", ".01."),
            format!("{good}Z"),
        ] {
            assert!(bad.parse::<LicenceId>().is_err(), "{bad}");
        }
        assert!(
            LicenceId::new(
                &format!("{SAMR}001").parse().unwrap(),
                &MARKET.parse().unwrap(),
                "A",
                1000
            )
            .is_err()
        );
        assert!("11100000MB0000100D01".parse::<TypeCode>().is_err());
        assert!("11100000MB0000100DABC".parse::<TypeCode>().is_err());
    }
}
