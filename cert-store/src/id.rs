//! Identifiers of licence holders, as newtypes that cannot hold a bad value.
//!
//! * [`Uscc`] — 统一社会信用代码, the unified social credit code of an
//!   organisation (GB 32100-2015).
//! * [`CitizenId`] — 公民身份号码, the citizen identity number
//!   (GB 11643-1999, check character by ISO 7064 MOD 11-2).
//! * [`HolderId`] — either of the two, decided by content.
//!
//! Every constructor validates the whole value, check character included, so
//! a value of one of these types is always well formed ("parse, don't
//! validate"). Validation is strict: no whitespace trimming, no case folding,
//! no full-width digits. Input of any length or content, including multi-byte
//! UTF-8 such as `"营业执照"` or emoji, yields an [`IdError`], never a panic.
//!
//! # Personal data
//!
//! A citizen identity number is personal data. [`CitizenId`]'s `Debug` and
//! `Display` print only the masked form (`110105********002X`), and no
//! [`IdError`] message repeats the input. The raw number is available through
//! [`CitizenId::as_str`], [`AsRef<str>`], `String::from` and serde
//! serialisation, because storage needs it; note that `to_string()` goes
//! through `Display` and therefore gives the *masked* form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length, in characters, of both a USCC and a citizen identity number.
const ID_LEN: usize = 18;

/// The USCC alphabet (GB 32100-2015): the digits and the upper-case Latin
/// letters without I, O, Z, S and V. A character's value is its index.
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// USCC weights for positions 1..=17 (3^(i-1) mod 31).
const USCC_WEIGHTS: [usize; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Citizen id weights for positions 1..=17 (2^(18-i) mod 11).
const CITIZEN_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// Citizen id check character, indexed by the weighted sum mod 11.
const CITIZEN_CHECK: &[u8; 11] = b"10X98765432";

/// Smallest birth year accepted in a [`CitizenId`].
pub const MIN_BIRTH_YEAR: u16 = 1800;
/// Largest birth year accepted in a [`CitizenId`].
pub const MAX_BIRTH_YEAR: u16 = 2200;

/// Which kind of identifier an [`IdError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A unified social credit code ([`Uscc`]).
    Uscc,
    /// A citizen identity number ([`CitizenId`]).
    CitizenId,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uscc => "USCC",
            Self::CitizenId => "citizen id",
        })
    }
}

/// Why a string is not a valid identifier.
///
/// Messages are in English and never repeat the input: at most one offending
/// character is shown, so a rejected citizen identity number does not leak
/// into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The input is not exactly 18 characters long.
    #[error("{kind} must be exactly 18 characters long, got {len}")]
    WrongLength {
        /// The identifier being parsed.
        kind: IdKind,
        /// Length of the input in characters (Unicode scalar values), not bytes.
        len: usize,
    },
    /// A character is not allowed at its position (this includes lower-case
    /// letters and anything outside ASCII).
    #[error("{kind} has invalid character {character:?} at position {position}")]
    InvalidCharacter {
        /// The identifier being parsed.
        kind: IdKind,
        /// 1-based position of the character, counted in characters.
        position: usize,
        /// The offending character.
        character: char,
    },
    /// The 18th character is not the check character computed from the first 17.
    #[error("{kind} check character mismatch: expected {expected:?}, found {found:?}")]
    CheckCharacterMismatch {
        /// The identifier being parsed.
        kind: IdKind,
        /// The check character the first 17 characters call for.
        expected: char,
        /// The 18th character of the input.
        found: char,
    },
    /// The birth date of a citizen identity number (positions 7–14, YYYYMMDD)
    /// is not a real calendar date, or its year is outside 1800..=2200.
    #[error("citizen id birth date (positions 7-14) is not a valid date in the years 1800 to 2200")]
    InvalidBirthDate,
    /// The administrative division code of a citizen identity number
    /// (positions 1–6) starts with 0.
    #[error("citizen id administrative division code (positions 1-6) must not start with 0")]
    InvalidRegion,
    /// The input is neither a valid citizen identity number nor a valid USCC;
    /// both reasons are kept.
    #[error("not a holder id: neither a valid citizen id ({citizen}) nor a valid USCC ({uscc})")]
    NotAHolderId {
        /// Why the input is not a citizen identity number.
        citizen: Box<IdError>,
        /// Why the input is not a USCC.
        uscc: Box<IdError>,
    },
}

/// Checks that `s` has exactly [`ID_LEN`] characters.
fn check_len(s: &str, kind: IdKind) -> Result<(), IdError> {
    let len = s.chars().count();
    if len == ID_LEN {
        Ok(())
    } else {
        Err(IdError::WrongLength { kind, len })
    }
}

/// Value (0..=30) of a USCC character, `None` if it is not in the alphabet.
fn uscc_value(c: char) -> Option<usize> {
    let b = u8::try_from(c).ok()?;
    USCC_ALPHABET.iter().position(|&a| a == b)
}

/// USCC check character for the values of positions 1..=17.
fn uscc_check_char(values: &[usize; 17]) -> char {
    let sum: usize = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    // 31 - (sum mod 31), with 31 mapped to 0; always in 0..31.
    let check = (31 - sum % 31) % 31;
    char::from(USCC_ALPHABET[check])
}

/// Citizen id check character for the digits of positions 1..=17.
fn citizen_check_char(digits: &[u32; 17]) -> char {
    let sum: u32 = digits.iter().zip(CITIZEN_WEIGHTS).map(|(d, w)| d * w).sum();
    // `sum % 11` is always in 0..11; the cast cannot truncate.
    char::from(CITIZEN_CHECK[(sum % 11) as usize])
}

/// Validates a USCC.
fn validate_uscc(s: &str) -> Result<(), IdError> {
    const KIND: IdKind = IdKind::Uscc;
    check_len(s, KIND)?;
    let mut values = [0; 17];
    let mut found = '0';
    for (i, c) in s.chars().enumerate() {
        let value = uscc_value(c).ok_or(IdError::InvalidCharacter {
            kind: KIND,
            position: i + 1,
            character: c,
        })?;
        match values.get_mut(i) {
            Some(slot) => *slot = value,
            None => found = c,
        }
    }
    let expected = uscc_check_char(&values);
    if expected == found {
        Ok(())
    } else {
        Err(IdError::CheckCharacterMismatch {
            kind: KIND,
            expected,
            found,
        })
    }
}

/// Whether `year` is a leap year in the Gregorian calendar.
fn is_leap_year(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Checks a birth date and converts it; `None` if it is not a real date or
/// the year is out of bounds.
fn birth_date(year: u32, month: u32, day: u32) -> Option<(u16, u8, u8)> {
    let year = u16::try_from(year).ok()?;
    let month = u8::try_from(month).ok()?;
    let day = u8::try_from(day).ok()?;
    if !(MIN_BIRTH_YEAR..=MAX_BIRTH_YEAR).contains(&year) {
        return None;
    }
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days_in_month)
        .contains(&day)
        .then_some((year, month, day))
}

/// Validates a citizen identity number and returns its birth date.
fn validate_citizen(s: &str) -> Result<(u16, u8, u8), IdError> {
    const KIND: IdKind = IdKind::CitizenId;
    check_len(s, KIND)?;
    let mut digits = [0; 17];
    let mut found = '0';
    for (i, c) in s.chars().enumerate() {
        let invalid = IdError::InvalidCharacter {
            kind: KIND,
            position: i + 1,
            character: c,
        };
        match digits.get_mut(i) {
            Some(slot) => *slot = c.to_digit(10).ok_or(invalid)?,
            None if c.is_ascii_digit() || c == 'X' => found = c,
            None => return Err(invalid),
        }
    }
    if digits.first() == Some(&0) {
        return Err(IdError::InvalidRegion);
    }
    let number = |from: usize, to: usize| {
        digits
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .fold(0, |acc, d| acc * 10 + d)
    };
    let birth = birth_date(number(6, 10), number(10, 12), number(12, 14))
        .ok_or(IdError::InvalidBirthDate)?;
    let expected = citizen_check_char(&digits);
    if expected == found {
        Ok(birth)
    } else {
        Err(IdError::CheckCharacterMismatch {
            kind: KIND,
            expected,
            found,
        })
    }
}

/// 统一社会信用代码 — unified social credit code of an organisation
/// (GB 32100-2015).
///
/// Exactly 18 characters over `0123456789ABCDEFGHJKLMNPQRTUWXY` (no I, O, Z,
/// S or V). The 18th is a check character: with character values 0–30 and
/// weights 1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28 for
/// positions 1–17, its value is 31 − (Σ value·weight mod 31), 31 meaning 0.
///
/// A USCC is upper case by standard: lower-case letters are rejected, as is
/// surrounding whitespace. The check digit of the embedded organisation code
/// (GB 11714) is not verified separately.
///
/// ```
/// use cert_store::Uscc;
///
/// let xiaomi: Uscc = "91110108551385082Q".parse()?;
/// assert_eq!(xiaomi.registration_authority(), "9");
/// assert_eq!(xiaomi.org_code(), "551385082");
/// assert!("91110108551385082R".parse::<Uscc>().is_err());
/// # Ok::<(), cert_store::IdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uscc(String);

impl Uscc {
    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registration authority code (登记管理部门代码), position 1;
    /// e.g. `"9"` for the market regulation administration.
    pub fn registration_authority(&self) -> &str {
        self.0.get(..1).unwrap_or_default()
    }

    /// True for a market entity (市场主体): registered by the market regulation administration
    /// (登记管理部门代码 `9`): an enterprise, an individual business or a farmers' cooperative.
    /// Government bodies (`1`), social organisations (`5`) and the rest are not.
    pub fn is_market_entity(&self) -> bool {
        self.registration_authority() == "9"
    }

    /// The organisation code (主体标识码), positions 9–17.
    pub fn org_code(&self) -> &str {
        self.0.get(8..17).unwrap_or_default()
    }
}

impl FromStr for Uscc {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_uscc(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for Uscc {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_uscc(&s)?;
        Ok(Self(s))
    }
}

impl From<Uscc> for String {
    fn from(id: Uscc) -> Self {
        id.0
    }
}

impl AsRef<str> for Uscc {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// 公民身份号码 — citizen identity number (GB 11643-1999).
///
/// 18 characters: a 6-digit administrative division code that does not start
/// with 0, the birth date as YYYYMMDD, a 3-digit sequence code and a check
/// character. The check character is `"10X98765432"[Σ digit·weight mod 11]`
/// with weights 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2 (ISO 7064
/// MOD 11-2); it is a digit or an upper-case `X` — a lower-case `x` is
/// rejected. The birth date must be a real Gregorian calendar date with a year
/// from [`MIN_BIRTH_YEAR`] (1800) to [`MAX_BIRTH_YEAR`] (2200) inclusive;
/// whether it lies in the future is not checked.
///
/// This is personal data: `Debug` and `Display` print only the masked form
/// (first 6 characters, 8 stars, last 4), so `to_string()` is masked too. Use
/// [`as_str`](Self::as_str) where the raw number is really needed. Serde
/// serialises the raw number, for storage.
///
/// ```
/// use cert_store::CitizenId;
///
/// let id: CitizenId = "11010519491231002X".parse()?;
/// assert_eq!(id.birth_date(), (1949, 12, 31));
/// assert_eq!(id.to_string(), "110105********002X");
/// assert_eq!(id.as_str(), "11010519491231002X");
/// # Ok::<(), cert_store::IdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CitizenId {
    raw: String,
    birth: (u16, u8, u8),
}

impl CitizenId {
    /// The raw, unmasked number. It is personal data: do not log it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The birth date as (year, month, day).
    pub fn birth_date(&self) -> (u16, u8, u8) {
        self.birth
    }

    /// The masked form: first 6 characters, 8 stars, last 4
    /// (`110105********002X`).
    pub fn masked(&self) -> String {
        let head = self.raw.get(..6).unwrap_or_default();
        let tail = self.raw.get(14..).unwrap_or_default();
        format!("{head}********{tail}")
    }
}

impl FromStr for CitizenId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let birth = validate_citizen(s)?;
        Ok(Self {
            raw: s.to_owned(),
            birth,
        })
    }
}

impl TryFrom<String> for CitizenId {
    type Error = IdError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let birth = validate_citizen(&raw)?;
        Ok(Self { raw, birth })
    }
}

impl From<CitizenId> for String {
    /// The raw, unmasked number.
    fn from(id: CitizenId) -> Self {
        id.raw
    }
}

impl AsRef<str> for CitizenId {
    /// The raw, unmasked number.
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for CitizenId {
    /// Prints the masked form only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.masked())
    }
}

impl fmt::Debug for CitizenId {
    /// Prints the masked form only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CitizenId").field(&self.masked()).finish()
    }
}

/// The holder of a licence: an organisation or a citizen.
///
/// Parsing decides by content: a valid [`CitizenId`] gives
/// [`HolderId::Citizen`], otherwise a valid [`Uscc`] gives
/// [`HolderId::Enterprise`], otherwise [`IdError::NotAHolderId`] with both
/// reasons. A string that is valid as both (possible when a USCC is all
/// digits) is taken as a citizen id.
///
/// Serialised as the plain raw string; `Display` and `Debug` mask a citizen id.
///
/// ```
/// use cert_store::HolderId;
///
/// let holder: HolderId = "11010519491231002X".parse()?;
/// assert!(matches!(holder, HolderId::Citizen(_)));
/// let holder: HolderId = "91110108551385082Q".parse()?;
/// assert!(matches!(holder, HolderId::Enterprise(_)));
/// # Ok::<(), cert_store::IdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HolderId {
    /// An organisation, by its unified social credit code.
    Enterprise(Uscc),
    /// A natural person, by their citizen identity number.
    Citizen(CitizenId),
}

impl HolderId {
    /// The raw identifier (unmasked for a citizen: personal data).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Enterprise(id) => id.as_str(),
            Self::Citizen(id) => id.as_str(),
        }
    }

    /// Which kind of identifier this is.
    pub fn kind(&self) -> IdKind {
        match self {
            Self::Enterprise(_) => IdKind::Uscc,
            Self::Citizen(_) => IdKind::CitizenId,
        }
    }

    /// The USCC, if the holder is an organisation.
    pub fn as_uscc(&self) -> Option<&Uscc> {
        match self {
            Self::Enterprise(id) => Some(id),
            Self::Citizen(_) => None,
        }
    }

    /// The citizen id, if the holder is a natural person.
    pub fn as_citizen_id(&self) -> Option<&CitizenId> {
        match self {
            Self::Enterprise(_) => None,
            Self::Citizen(id) => Some(id),
        }
    }
}

impl FromStr for HolderId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl TryFrom<String> for HolderId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match validate_citizen(&s) {
            Ok(birth) => Ok(Self::Citizen(CitizenId { raw: s, birth })),
            Err(citizen) => match validate_uscc(&s) {
                Ok(()) => Ok(Self::Enterprise(Uscc(s))),
                Err(uscc) => Err(IdError::NotAHolderId {
                    citizen: Box::new(citizen),
                    uscc: Box::new(uscc),
                }),
            },
        }
    }
}

impl From<Uscc> for HolderId {
    fn from(id: Uscc) -> Self {
        Self::Enterprise(id)
    }
}

impl From<CitizenId> for HolderId {
    fn from(id: CitizenId) -> Self {
        Self::Citizen(id)
    }
}

impl From<HolderId> for String {
    /// The raw identifier (unmasked for a citizen).
    fn from(id: HolderId) -> Self {
        match id {
            HolderId::Enterprise(id) => id.into(),
            HolderId::Citizen(id) => id.into(),
        }
    }
}

impl AsRef<str> for HolderId {
    /// The raw identifier (unmasked for a citizen).
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for HolderId {
    /// The USCC, or the masked citizen id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enterprise(id) => fmt::Display::fmt(id, f),
            Self::Citizen(id) => fmt::Display::fmt(id, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Real USCCs from the public enterprise registry.
    ///
    /// Check character of 91110108551385082Q, by hand (value·weight):
    ///
    /// ```text
    /// pos   1  2  3  4  5  6  7   8   9  10  11  12  13  14  15  16  17
    /// char  9  1  1  1  0  1  0   8   5   5   1   3   8   5   0   8   2
    /// wt    1  3  9 27 19 26 16  17  20  29  25  13   8  24  10  30  28
    /// prod  9  3  9 27  0 26  0 136 100 145  25  39  64 120   0 240  56
    /// ```
    ///
    /// Σ = 999; 999 mod 31 = 7 (31·32 = 992); 31 − 7 = 24; the alphabet
    /// character of value 24 is `Q` (A=10 … H=17, J=18 … N=22, P=23, Q=24).
    ///
    /// 91310000MA1FL0WF3Q was also a candidate; it fails the check (the
    /// algorithm calls for `E`), so it is not used.
    const USCC_GOOD: &[(&str, &str)] = &[
        ("91110108551385082Q", "小米科技有限责任公司"),
        ("914403001922038216", "华为技术有限公司"),
        ("9144030071526726XG", "深圳市腾讯计算机系统有限公司"),
        ("91330100799655058B", "阿里巴巴(中国)有限公司"),
    ];

    /// The examples from the text of GB 11643-1999.
    ///
    /// Check character of 11010519491231002X, by hand (digit·weight):
    /// 7+9+0+5+0+20+2+9+24+27+7+18+30+5+0+0+4 = 167; 167 mod 11 = 2;
    /// "10X98765432"[2] = `X`.
    const CITIZEN_GOOD: &[&str] = &["11010519491231002X", "440524188001010014"];

    const DIGITS: &str = "0123456789";
    const USCC_CHARS: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";

    /// Parses `input` as `T` and compares with `expected`; on success the
    /// parsed value must give back the input unchanged.
    fn check<T>(input: &str, expected: Result<(), IdError>)
    where
        T: FromStr<Err = IdError> + AsRef<str>,
    {
        let got = input.parse::<T>().map(|v| v.as_ref().to_owned());
        assert_eq!(got, expected.map(|()| input.to_owned()), "input {input:?}");
    }

    /// Appends the USCC check character to 17 alphabet characters.
    fn with_uscc_check(first17: &str) -> String {
        let mut values = [0; 17];
        assert_eq!(first17.chars().count(), 17);
        for (slot, c) in values.iter_mut().zip(first17.chars()) {
            *slot = uscc_value(c).unwrap();
        }
        format!("{first17}{}", uscc_check_char(&values))
    }

    /// Appends the citizen id check character to 17 digits.
    fn with_citizen_check(first17: &str) -> String {
        let mut digits = [0; 17];
        assert_eq!(first17.chars().count(), 17);
        for (slot, c) in digits.iter_mut().zip(first17.chars()) {
            *slot = c.to_digit(10).unwrap();
        }
        format!("{first17}{}", citizen_check_char(&digits))
    }

    /// A citizen id with the given birth date (YYYYMMDD) and a correct check.
    fn citizen_born(date: &str) -> String {
        with_citizen_check(&format!("110105{date}002"))
    }

    fn replace_at(s: &str, position: usize, c: char) -> String {
        s.chars()
            .enumerate()
            .map(|(i, old)| if i == position { c } else { old })
            .collect()
    }

    fn wrong_length(kind: IdKind, len: usize) -> Result<(), IdError> {
        Err(IdError::WrongLength { kind, len })
    }

    fn invalid_char(kind: IdKind, position: usize, character: char) -> Result<(), IdError> {
        Err(IdError::InvalidCharacter {
            kind,
            position,
            character,
        })
    }

    fn mismatch(kind: IdKind, expected: char, found: char) -> Result<(), IdError> {
        Err(IdError::CheckCharacterMismatch {
            kind,
            expected,
            found,
        })
    }

    #[test]
    fn helpers_reproduce_known_check_characters() {
        for (code, _) in USCC_GOOD {
            assert_eq!(with_uscc_check(&code[..17]), *code);
        }
        for code in CITIZEN_GOOD {
            assert_eq!(with_citizen_check(&code[..17]), *code);
        }
    }

    #[test]
    fn uscc_known_answers() {
        for (code, name) in USCC_GOOD {
            let uscc: Uscc = code.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(uscc.as_str(), *code);
            assert_eq!(uscc.to_string(), *code);
        }
    }

    #[test]
    fn uscc_accessors() {
        for (input, authority, org_code) in [
            ("91110108551385082Q", "9", "551385082"),
            ("914403001922038216", "9", "192203821"),
            ("9144030071526726XG", "9", "71526726X"),
            ("91330100799655058B", "9", "799655058"),
        ] {
            let uscc: Uscc = input.parse().unwrap();
            assert_eq!(uscc.registration_authority(), authority);
            assert_eq!(uscc.org_code(), org_code);
        }
    }

    #[test]
    fn uscc_every_single_substitution_is_rejected() {
        let mut rejected = 0;
        for (code, _) in USCC_GOOD {
            for position in 0..ID_LEN {
                let original = code.chars().nth(position).unwrap();
                for c in USCC_CHARS.chars().filter(|&c| c != original) {
                    let corrupted = replace_at(code, position, c);
                    let err = corrupted.parse::<Uscc>().unwrap_err();
                    assert!(
                        matches!(err, IdError::CheckCharacterMismatch { .. }),
                        "{corrupted}: {err:?}"
                    );
                    rejected += 1;
                }
            }
        }
        assert_eq!(rejected, USCC_GOOD.len() * ID_LEN * 30);
    }

    #[test]
    fn uscc_table() {
        use IdKind::Uscc as K;
        let table: &[(&str, Result<(), IdError>)] = &[
            ("91110108551385082Q", Ok(())),
            ("9144030071526726XG", Ok(())),
            ("91110108551385082R", mismatch(K, 'Q', 'R')),
            ("91310000MA1FL0WF3Q", mismatch(K, 'E', 'Q')),
            // Wrong lengths.
            ("", wrong_length(K, 0)),
            ("91110108551385082", wrong_length(K, 17)),
            ("91110108551385082QQ", wrong_length(K, 19)),
            (" 91110108551385082Q", wrong_length(K, 19)),
            ("91110108551385082Q\n", wrong_length(K, 19)),
            // Lower case is not part of the standard.
            ("91110108551385082q", invalid_char(K, 18, 'q')),
            ("9144030071526726xG", invalid_char(K, 17, 'x')),
            // Letters excluded from the alphabet.
            ("91110108I51385082Q", invalid_char(K, 9, 'I')),
            ("91110108O51385082Q", invalid_char(K, 9, 'O')),
            ("91110108Z51385082Q", invalid_char(K, 9, 'Z')),
            ("91110108S51385082Q", invalid_char(K, 9, 'S')),
            ("91110108V51385082Q", invalid_char(K, 9, 'V')),
            ("9111010855138508 Q", invalid_char(K, 17, ' ')),
            ("9111010855138508-Q", invalid_char(K, 17, '-')),
            // Non-ASCII input.
            ("营业执照", wrong_length(K, 4)),
            (
                "统一社会信用代码统一社会信用代码统一",
                invalid_char(K, 1, '统'),
            ),
            ("91110108551385082营", invalid_char(K, 18, '营')),
            ("9111010855138508😀Q", invalid_char(K, 17, '😀')),
            ("９１110108551385082Q", invalid_char(K, 1, '９')),
            // 18 bytes, but only 16 characters.
            ("911101085513850营", wrong_length(K, 16)),
            // 18 characters, but more bytes.
            ("9111010855138508é2", invalid_char(K, 17, 'é')),
        ];
        for (input, expected) in table {
            check::<Uscc>(input, expected.clone());
        }
    }

    #[test]
    fn citizen_known_answers() {
        for (input, birth, masked) in [
            ("11010519491231002X", (1949, 12, 31), "110105********002X"),
            ("440524188001010014", (1880, 1, 1), "440524********0014"),
        ] {
            let id: CitizenId = input.parse().unwrap();
            assert_eq!(id.as_str(), input);
            assert_eq!(id.birth_date(), birth);
            assert_eq!(id.masked(), masked);
        }
    }

    #[test]
    fn citizen_every_single_substitution_is_rejected() {
        let mut rejected = 0;
        for code in CITIZEN_GOOD {
            for position in 0..ID_LEN {
                let original = code.chars().nth(position).unwrap();
                let alphabet = if position == ID_LEN - 1 {
                    "0123456789X"
                } else {
                    DIGITS
                };
                for c in alphabet.chars().filter(|&c| c != original) {
                    let corrupted = replace_at(code, position, c);
                    let err = corrupted.parse::<CitizenId>().unwrap_err();
                    // Outside the region and date fields, only the check
                    // character can catch the substitution.
                    if position >= 14 || (1..6).contains(&position) {
                        assert!(
                            matches!(err, IdError::CheckCharacterMismatch { .. }),
                            "{corrupted}: {err:?}"
                        );
                    }
                    rejected += 1;
                }
            }
        }
        assert_eq!(rejected, CITIZEN_GOOD.len() * (17 * 9 + 10));
    }

    #[test]
    fn citizen_table() {
        use IdKind::CitizenId as K;
        let table: &[(String, Result<(), IdError>)] = &[
            ("11010519491231002X".into(), Ok(())),
            ("440524188001010014".into(), Ok(())),
            ("110105194912310021".into(), mismatch(K, 'X', '1')),
            ("440524188001010015".into(), mismatch(K, '4', '5')),
            // Wrong lengths.
            (String::new(), wrong_length(K, 0)),
            ("11010519491231002".into(), wrong_length(K, 17)),
            ("11010519491231002XX".into(), wrong_length(K, 19)),
            // Lower-case x is rejected; X only in the last position.
            ("11010519491231002x".into(), invalid_char(K, 18, 'x')),
            ("1101051949123100X2".into(), invalid_char(K, 17, 'X')),
            ("X10105194912310021".into(), invalid_char(K, 1, 'X')),
            ("11010519491231002A".into(), invalid_char(K, 18, 'A')),
            // Non-ASCII input.
            ("身份证".into(), wrong_length(K, 3)),
            ("1101051949123100😀X".into(), invalid_char(K, 17, '😀')),
            ("１10105194912310021".into(), invalid_char(K, 1, '１')),
            ("110105194912310身".into(), wrong_length(K, 16)),
            // Administrative division must not start with 0.
            (
                with_citizen_check("01010519491231002"),
                Err(IdError::InvalidRegion),
            ),
            // Birth dates.
            (citizen_born("19490230"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20230229"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20231301"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20230001"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20230100"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20230132"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20230431"), Err(IdError::InvalidBirthDate)),
            (citizen_born("19000229"), Err(IdError::InvalidBirthDate)),
            (citizen_born("21000229"), Err(IdError::InvalidBirthDate)),
            (citizen_born("17991231"), Err(IdError::InvalidBirthDate)),
            (citizen_born("22010101"), Err(IdError::InvalidBirthDate)),
            (citizen_born("00000000"), Err(IdError::InvalidBirthDate)),
            (citizen_born("99999999"), Err(IdError::InvalidBirthDate)),
            (citizen_born("20000229"), Ok(())),
            (citizen_born("20240229"), Ok(())),
            (citizen_born("20230228"), Ok(())),
            (citizen_born("20230430"), Ok(())),
            (citizen_born("20231231"), Ok(())),
            (citizen_born("18000101"), Ok(())),
            (citizen_born("22001231"), Ok(())),
        ];
        for (input, expected) in table {
            check::<CitizenId>(input, expected.clone());
        }
    }

    #[test]
    fn citizen_birth_date() {
        for (date, expected) in [
            ("20000229", (2000, 2, 29)),
            ("18000101", (1800, 1, 1)),
            ("22001231", (2200, 12, 31)),
        ] {
            let id: CitizenId = citizen_born(date).parse().unwrap();
            assert_eq!(id.birth_date(), expected);
        }
    }

    #[test]
    fn citizen_is_masked_in_display_and_debug() {
        let id: CitizenId = "11010519491231002X".parse().unwrap();
        assert_eq!(id.to_string(), "110105********002X");
        assert_eq!(format!("{id}"), "110105********002X");
        assert_eq!(format!("{id:?}"), "CitizenId(\"110105********002X\")");
        assert_eq!(format!("{id:>20}"), "  110105********002X");
        let holder = HolderId::from(id.clone());
        assert_eq!(holder.to_string(), "110105********002X");
        assert!(!format!("{holder:?}").contains("19491231"));
        // The raw value is still there for code that needs it.
        assert_eq!(id.as_str(), "11010519491231002X");
        assert_eq!(id.as_ref(), "11010519491231002X");
        assert_eq!(String::from(id), "11010519491231002X");
    }

    #[test]
    fn errors_do_not_echo_citizen_numbers() {
        let inputs = [
            "110105194912310021".to_owned(),
            citizen_born("19490230"),
            with_citizen_check("01010519491231002"),
            "11010519491231002x".to_owned(),
            "1101051949123100211".to_owned(),
        ];
        for input in &inputs {
            for err in [
                input.parse::<CitizenId>().unwrap_err(),
                input.parse::<HolderId>().unwrap_err(),
            ] {
                let message = err.to_string();
                let debug = format!("{err:?}");
                for text in [&message, &debug] {
                    assert!(!text.contains(&input[..10]), "{text}");
                    assert!(!text.contains(&input[6..14]), "{text}");
                }
            }
        }
    }

    #[test]
    fn error_messages() {
        let table: &[(&str, &str)] = &[
            ("", "USCC must be exactly 18 characters long, got 0"),
            (
                "91110108I51385082Q",
                "USCC has invalid character 'I' at position 9",
            ),
            (
                "91110108551385082R",
                "USCC check character mismatch: expected 'Q', found 'R'",
            ),
        ];
        for (input, message) in table {
            assert_eq!(input.parse::<Uscc>().unwrap_err().to_string(), *message);
        }
        assert_eq!(
            "110105194912310021"
                .parse::<CitizenId>()
                .unwrap_err()
                .to_string(),
            "citizen id check character mismatch: expected 'X', found '1'"
        );
        assert_eq!(
            "abc".parse::<HolderId>().unwrap_err().to_string(),
            "not a holder id: neither a valid citizen id (citizen id must be exactly 18 \
             characters long, got 3) nor a valid USCC (USCC must be exactly 18 characters \
             long, got 3)"
        );
    }

    #[test]
    fn holder_id_dispatch() {
        let table: &[(&str, Option<IdKind>)] = &[
            ("11010519491231002X", Some(IdKind::CitizenId)),
            ("440524188001010014", Some(IdKind::CitizenId)),
            ("91110108551385082Q", Some(IdKind::Uscc)),
            // All digits, but 0019-22-03 is no birth date: a USCC.
            ("914403001922038216", Some(IdKind::Uscc)),
            ("9144030071526726XG", Some(IdKind::Uscc)),
            ("91330100799655058B", Some(IdKind::Uscc)),
            ("11010519491231002x", None),
            ("110105194912310021", None),
            ("91110108551385082R", None),
            ("", None),
            ("营业执照", None),
        ];
        for (input, expected) in table {
            match (input.parse::<HolderId>(), expected) {
                (Ok(holder), Some(kind)) => {
                    assert_eq!(holder.kind(), *kind, "{input}");
                    assert_eq!(holder.as_str(), *input);
                    assert_eq!(holder.as_uscc().is_some(), *kind == IdKind::Uscc);
                    assert_eq!(holder.as_citizen_id().is_some(), *kind == IdKind::CitizenId);
                }
                (Err(IdError::NotAHolderId { citizen, uscc }), None) => {
                    assert_eq!(*citizen, input.parse::<CitizenId>().unwrap_err());
                    assert_eq!(*uscc, input.parse::<Uscc>().unwrap_err());
                }
                (got, _) => panic!("{input}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn holder_id_prefers_citizen_when_both_are_valid() {
        // Find a citizen id whose characters also happen to form a valid USCC.
        let both = (0..1000)
            .map(|seq| with_citizen_check(&format!("11010519491231{seq:03}")))
            .find(|s| s.parse::<Uscc>().is_ok())
            .unwrap();
        assert!(both.parse::<CitizenId>().is_ok());
        let holder: HolderId = both.parse().unwrap();
        assert_eq!(holder.kind(), IdKind::CitizenId);
    }

    #[test]
    fn try_from_string_and_as_ref() {
        let uscc = Uscc::try_from("91110108551385082Q".to_owned()).unwrap();
        assert_eq!(uscc.as_ref(), "91110108551385082Q");
        assert_eq!(String::from(uscc), "91110108551385082Q");
        assert!(Uscc::try_from("91110108551385082q".to_owned()).is_err());

        let id = CitizenId::try_from("440524188001010014".to_owned()).unwrap();
        assert_eq!(id.as_ref(), "440524188001010014");
        assert!(CitizenId::try_from("440524188001010015".to_owned()).is_err());

        let holder = HolderId::try_from("440524188001010014".to_owned()).unwrap();
        assert_eq!(holder, HolderId::Citizen(id));
        assert_eq!(holder.as_ref(), "440524188001010014");
        assert_eq!(String::from(holder), "440524188001010014");
        assert!(HolderId::try_from(String::new()).is_err());
    }

    #[test]
    fn equality_ordering_hashing() {
        let a: Uscc = "91110108551385082Q".parse().unwrap();
        let b: Uscc = "914403001922038216".parse().unwrap();
        assert!(a < b);
        assert_eq!(a, a.clone());
        let set: HashSet<HolderId> = [
            "91110108551385082Q",
            "11010519491231002X",
            "91110108551385082Q",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(set.len(), 2);
        let x: CitizenId = "11010519491231002X".parse().unwrap();
        let y: CitizenId = "440524188001010014".parse().unwrap();
        assert!(x < y);
    }

    #[test]
    fn serde_round_trip() {
        let uscc: Uscc = "91110108551385082Q".parse().unwrap();
        let json = serde_json::to_string(&uscc).unwrap();
        assert_eq!(json, "\"91110108551385082Q\"");
        assert_eq!(serde_json::from_str::<Uscc>(&json).unwrap(), uscc);

        // Serialisation keeps the raw number: storage needs it.
        let id: CitizenId = "11010519491231002X".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"11010519491231002X\"");
        let back = serde_json::from_str::<CitizenId>(&json).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.birth_date(), (1949, 12, 31));

        for input in ["91110108551385082Q", "11010519491231002X"] {
            let holder: HolderId = input.parse().unwrap();
            let json = serde_json::to_string(&holder).unwrap();
            assert_eq!(json, format!("\"{input}\""));
            assert_eq!(serde_json::from_str::<HolderId>(&json).unwrap(), holder);
        }

        let list: Vec<HolderId> =
            serde_json::from_str(r#"["91110108551385082Q", "440524188001010014"]"#).unwrap();
        assert_eq!(list[0].kind(), IdKind::Uscc);
        assert_eq!(list[1].kind(), IdKind::CitizenId);
    }

    #[test]
    fn serde_rejects_bad_values() {
        let err = serde_json::from_str::<Uscc>("\"91110108551385082R\"").unwrap_err();
        assert!(
            err.to_string().contains("check character mismatch"),
            "{err}"
        );
        assert!(serde_json::from_str::<Uscc>("\"91110108551385082q\"").is_err());
        assert!(serde_json::from_str::<Uscc>("\"营业执照\"").is_err());
        assert!(serde_json::from_str::<Uscc>("914403001922038216").is_err());
        assert!(serde_json::from_str::<Uscc>("null").is_err());

        let err = serde_json::from_str::<CitizenId>("\"110105194902300021\"").unwrap_err();
        assert!(!err.to_string().contains("110105194902300021"), "{err}");
        assert!(serde_json::from_str::<CitizenId>("\"11010519491231002x\"").is_err());

        let bad_date = format!("\"{}\"", citizen_born("20230229"));
        let err = serde_json::from_str::<CitizenId>(&bad_date).unwrap_err();
        assert!(err.to_string().contains("birth date"), "{err}");

        let err = serde_json::from_str::<HolderId>("\"123\"").unwrap_err();
        assert!(err.to_string().contains("not a holder id"), "{err}");
        assert!(serde_json::from_str::<Vec<HolderId>>(r#"["91110108551385082Q", "x"]"#).is_err());
    }
}
