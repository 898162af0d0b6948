//! Plain text that clients send and that the register, the access log or an export will show
//! again: names, reasons, purposes. Such text must not carry control characters (a CR/LF
//! forges a line in a log or a CSV export, a NUL truncates it in C tools) nor bidirectional
//! controls (U+202E and its kin make `moc.elpmaxe` read as `example.com`), and names must not
//! start like a spreadsheet formula (`=`, `+`, `-`, `@`).

/// Why a text value was refused; the message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// Empty after trimming, or longer than allowed.
    #[error("must be 1 to {max} characters")]
    Length {
        /// The longest value accepted, in characters.
        max: usize,
    },
    /// A control character (C0, DEL or C1), a line or paragraph separator.
    #[error("must not contain control characters (U+{0:04X})")]
    Control(u32),
    /// A bidirectional formatting character.
    #[error("must not contain bidirectional formatting characters (U+{0:04X})")]
    Bidi(u32),
    /// Starts like a spreadsheet formula.
    #[error("must not start with `{0}`")]
    FormulaPrefix(char),
}

/// True for the characters that reorder displayed text (Unicode bidi controls and marks).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The first character that may not appear in logged text, if any.
fn forbidden(value: &str) -> Option<TextError> {
    value.chars().find_map(|c| {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}') {
            Some(TextError::Control(u32::from(c)))
        } else if is_bidi_control(c) {
            Some(TextError::Bidi(u32::from(c)))
        } else {
            None
        }
    })
}

/// Free text (a reason, a purpose): trimmed, 1 to `max` characters, no control or bidi
/// characters. Returns the trimmed text.
///
/// ```
/// use cert_store::text::{plain, TextError};
/// assert_eq!(plain("  年度检查 ", 200), Ok("年度检查"));
/// assert_eq!(plain("a\r\nb", 200), Err(TextError::Control(0x0D)));
/// assert_eq!(plain("", 200), Err(TextError::Length { max: 200 }));
/// ```
pub fn plain(value: &str, max: usize) -> Result<&str, TextError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(TextError::Length { max });
    }
    match forbidden(value) {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// A name (of a holder, a seal, an authority): [`plain`], and not starting like a formula.
///
/// ```
/// use cert_store::text::{name, TextError};
/// assert_eq!(name("小米科技有限责任公司", 200), Ok("小米科技有限责任公司"));
/// assert_eq!(name("=HYPERLINK(\"x\")", 200), Err(TextError::FormulaPrefix('=')));
/// assert_eq!(name("小米\u{202E}司公", 200), Err(TextError::Bidi(0x202E)));
/// ```
pub fn name(value: &str, max: usize) -> Result<&str, TextError> {
    let value = plain(value, max)?;
    match value.chars().next() {
        Some(c @ ('=' | '+' | '-' | '@')) => Err(TextError::FormulaPrefix(c)),
        _ => Ok(value),
    }
}

/// True when `value` holds nothing [`plain`] would refuse for its characters (length aside).
pub fn is_clean(value: &str) -> bool {
    forbidden(value).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bidi_and_formula_characters_are_refused() {
        for (input, expected) in [
            ("a\0b", TextError::Control(0)),
            ("a\tb", TextError::Control(9)),
            ("a\nb", TextError::Control(10)),
            ("a\u{7F}b", TextError::Control(0x7F)),
            ("a\u{85}b", TextError::Control(0x85)),
            ("a\u{2028}b", TextError::Control(0x2028)),
            ("a\u{202E}b", TextError::Bidi(0x202E)),
            ("a\u{2066}b", TextError::Bidi(0x2066)),
            ("a\u{200F}b", TextError::Bidi(0x200F)),
        ] {
            assert_eq!(plain(input, 10), Err(expected.clone()), "{input:?}");
            assert_eq!(name(input, 10), Err(expected), "{input:?}");
        }
        for c in ['=', '+', '-', '@'] {
            assert_eq!(
                name(&format!("{c}1+1"), 10),
                Err(TextError::FormulaPrefix(c))
            );
            assert_eq!(
                plain(&format!("{c}1+1"), 10),
                Ok(format!("{c}1+1").as_str())
            );
        }
        assert_eq!(
            plain(&"字".repeat(11), 10),
            Err(TextError::Length { max: 10 })
        );
        assert_eq!(plain(&"字".repeat(10), 10), Ok("字".repeat(10).as_str()));
        assert!(is_clean("行政审批局 M-1"));
    }
}
