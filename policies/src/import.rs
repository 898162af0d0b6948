//! JSON Lines import of policies and profiles: every line is checked on its own; an error
//! names the line and the field; valid lines are kept and bad ones reported, so an import can
//! be repeated after fixing the file.

use std::io::BufRead;

use crate::model::{InvalidField, Policy, Profile};

/// A line that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, with the field named.
    pub error: InvalidField,
}

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// Reads JSON Lines from `input`, parsing each non-blank line with `parse`.
pub fn read_lines<T>(
    input: impl BufRead,
    parse: impl Fn(&str) -> Result<T, InvalidField>,
) -> (Vec<(usize, T)>, Vec<LineError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let n = i + 1;
        let refuse = |reason: &str| LineError {
            line: n,
            error: InvalidField {
                field: "(line)".into(),
                reason: reason.into(),
            },
        };
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                bad.push(refuse(&format!("cannot be read: {e}")));
                break;
            }
        };
        if bytes.len() > MAX_LINE {
            bad.push(refuse("longer than 1 MiB"));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            bad.push(refuse("not UTF-8"));
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse(text) {
            Ok(v) => good.push((n, v)),
            Err(error) => bad.push(LineError { line: n, error }),
        }
    }
    (good, bad)
}

/// Reads policies.
pub fn read_policies(input: impl BufRead) -> (Vec<(usize, Policy)>, Vec<LineError>) {
    read_lines(input, Policy::from_json)
}

/// Reads profiles.
pub fn read_profiles(input: impl BufRead) -> (Vec<(usize, Profile)>, Vec<LineError>) {
    read_lines(input, Profile::from_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines_are_kept_and_bad_ones_named() {
        let text = concat!(
            r#"{"uscc":"91110108551385082Q","name":"小米","region":"110108","updated":"2026-11-01"}"#,
            "\n",
            "\n",
            r#"{"uscc":"91110108551385082Q","name":"小米","region":"999999","updated":"2026-11-01"}"#,
            "\n",
            "not json\n",
            r#"{"uscc":"91110108551385082Q","name":"小米","region":"110108","updated":"2026-11-01","x":1}"#,
            "\n",
        );
        let (good, bad) = read_profiles(text.as_bytes());
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].0, 1);
        let lines: Vec<(usize, &str)> = bad
            .iter()
            .map(|e| (e.line, e.error.field.as_str()))
            .collect();
        assert_eq!(lines, [(3, "region"), (4, "(document)"), (5, "x")]);
        assert!(
            bad[2].to_string().contains("unknown field `x`"),
            "{}",
            bad[2]
        );
        let (_, bad) = read_profiles(&b"\xff\xfe\n"[..]);
        assert_eq!(bad[0].error.reason, "not UTF-8");
    }
}
