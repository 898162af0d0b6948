//! JSON Lines import of policies and profiles: every line is checked on its own and every
//! fault of a line reported (line number, field path, the value found, why); valid lines are
//! kept and bad ones reported, so an import can be repeated after fixing the file.

use std::io::BufRead;

use crate::model::{Fault, InvalidField, Policy, Profile};

/// A fault of a line that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number of the file.
    pub line: usize,
    /// What is wrong, with the field named.
    pub error: InvalidField,
    /// The value found there (compact JSON, cut to 80 characters), if any.
    pub value: Option<String>,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)?;
        match &self.value {
            Some(v) => write!(f, " (found {v})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for LineError {}

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// Reads JSON Lines from `input`, parsing each non-blank line with `parse`.
pub fn read_lines<T>(
    input: impl BufRead,
    parse: impl Fn(&str) -> Result<T, Vec<Fault>>,
) -> (Vec<(usize, T)>, Vec<LineError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    read_chunks_here(input, parse, usize::MAX, |chunk, faults, _| {
        good.extend(chunk);
        bad.extend_from_slice(faults);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    (good, bad)
}

/// Reads JSON Lines from `input` as [`read_lines`] does, handing every `chunk` good lines (and
/// the faults found since the last hand-over, and the number of lines read) to `take`, so that
/// a file of any size is read in bounded memory and its progress can be shown. The lines are
/// read and parsed on a thread of their own, ahead of `take` (at most three chunks in memory:
/// the one `take` has, one waiting, one being read). Stops at the first error of `take`.
pub fn read_in_chunks<T: Send, E>(
    input: impl BufRead + Send,
    parse: impl Fn(&str) -> Result<T, Vec<Fault>> + Send,
    chunk: usize,
    mut take: impl FnMut(Vec<(usize, T)>, &[LineError], usize) -> Result<(), E>,
) -> Result<(), E> {
    type Chunk<T> = (Vec<(usize, T)>, Vec<LineError>, usize);
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Chunk<T>>(1);
        scope.spawn(move || {
            // A send fails only when `take` failed and the reading is over.
            let _ = read_chunks_here(input, parse, chunk, |good, bad, n| {
                send.send((good, bad.to_vec(), n))
            });
        });
        // Every chunk the reader sends, the last included, until it ends or `take` fails.
        for (good, bad, n) in receive {
            take(good, &bad, n)?;
        }
        Ok(())
    })
}

/// Reads the next line of `input` into `line` (without its `\n`), keeping at most `max + 1`
/// of its bytes: a longer line is read to its end but not held, and its kept length tells it
/// was too long. False at the end of the input.
fn next_line(input: &mut impl BufRead, max: usize, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let mut any = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let end = buf.iter().position(|&b| b == b'\n');
        let part = &buf[..end.unwrap_or(buf.len())];
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        let used = end.map_or(buf.len(), |i| i + 1);
        input.consume(used);
        if end.is_some() {
            return Ok(true);
        }
    }
}

/// [`read_in_chunks`] on the calling thread.
fn read_chunks_here<T, E>(
    mut input: impl BufRead,
    parse: impl Fn(&str) -> Result<T, Vec<Fault>>,
    chunk: usize,
    mut take: impl FnMut(Vec<(usize, T)>, &[LineError], usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut n = 0;
    let mut bytes = Vec::new();
    loop {
        let line = next_line(&mut input, MAX_LINE, &mut bytes);
        if matches!(line, Ok(false)) {
            break;
        }
        n += 1;
        let refuse = |reason: &str| LineError {
            line: n,
            error: InvalidField {
                field: "(line)".into(),
                reason: reason.into(),
            },
            value: None,
        };
        if let Err(e) = line {
            bad.push(refuse(&format!("cannot be read: {e}")));
            break;
        }
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
            Err(faults) => bad.extend(faults.into_iter().map(|f| LineError {
                line: n,
                error: f.error,
                value: f.value,
            })),
        }
        if good.len() >= chunk {
            take(std::mem::take(&mut good), &bad, n)?;
            bad.clear();
        }
    }
    take(good, &bad, n)
}

/// Reads policies.
pub fn read_policies(input: impl BufRead) -> (Vec<(usize, Policy)>, Vec<LineError>) {
    read_lines(input, Policy::from_json_every_fault)
}

/// Reads profiles.
pub fn read_profiles(input: impl BufRead) -> (Vec<(usize, Profile)>, Vec<LineError>) {
    read_lines(input, Profile::from_json_every_fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line with a fault in nearly every field reports each of them, with paths into the
    /// line as written (items after a removed one keep their index).
    #[test]
    fn every_fault_of_a_line_is_reported() {
        let line = r#"{"id":"P 1","version":0,"title":"","issuer":"某局","region":"119999","category":"其他","window":{"start":"2026-01-01","end":"2026-13-01"},"benefit":{"kind":"fixed","amount_yuan":-1},"text":"…","conditions":[{"kind":"size_in","scales":["中"]},{"kind":"scale_in","scales":["中","巨"]},{"kind":"age_years","min":3,"max":2},{"kind":"tags_all","tags":["高企","不存在的标签"]},{"kind":"employees"}],"colour":"red"}"#;
        let (good, bad) = read_policies(line.as_bytes());
        assert!(good.is_empty());
        let mut fields: Vec<&str> = bad.iter().map(|e| e.error.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "benefit.amount_yuan",
                "category",
                "colour",
                "conditions[0].kind",
                "conditions[1].scales[1]",
                "conditions[2].min",
                "conditions[3].tags[1]",
                "conditions[4].min",
                "id",
                "region",
                "title",
                "version",
                "window.end",
            ],
            "{bad:#?}"
        );
        assert!(bad.iter().all(|e| e.line == 1));
        let tag = bad
            .iter()
            .find(|e| e.error.field == "conditions[3].tags[1]")
            .unwrap();
        assert_eq!(tag.value.as_deref(), Some("\"不存在的标签\""));
        let missing =
            r#"{"uscc":"91110108551385082Q","region":"110108","tags":["瞪羚"],"employees":-5}"#;
        let (_, bad) = read_profiles(missing.as_bytes());
        let fields: Vec<&str> = bad.iter().map(|e| e.error.field.as_str()).collect();
        assert_eq!(fields, ["employees", "name", "updated"], "{bad:#?}");
        assert_eq!(bad[1].error.reason, "missing");
        // A key given twice is a fault too, though a JSON value would keep only one of them.
        let twice = r#"{"uscc":"91110108551385082Q","name":"小米","name":"大米","region":"110108","updated":"2026-11-01"}"#;
        let (good, bad) = read_profiles(twice.as_bytes());
        assert!(good.is_empty());
        assert!(
            bad[0].error.reason.contains("duplicate field `name`"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_without_being_held() {
        let good = r#"{"uscc":"91110108551385082Q","name":"小米","region":"110108","updated":"2026-11-01"}"#;
        // Three MiB with no newline, in a reader that hands out 8 KiB at a time.
        let text = format!("{}\n{good}\n{good}", "x".repeat(3 * MAX_LINE));
        let (ok, bad) = read_profiles(std::io::BufReader::with_capacity(8192, text.as_bytes()));
        assert_eq!(ok.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(bad.len(), 1);
        assert_eq!(
            (bad[0].line, bad[0].error.reason.as_str()),
            (1, "longer than 1 MiB")
        );
        // What is kept of a line is bounded.
        let mut line = Vec::new();
        let mut input = std::io::BufReader::with_capacity(8192, text.as_bytes());
        assert!(next_line(&mut input, 100, &mut line).unwrap());
        assert_eq!(line.len(), 101);
        assert!(next_line(&mut input, 100, &mut line).unwrap());
        assert_eq!(line, good.as_bytes());
        assert!(next_line(&mut input, 100, &mut line).unwrap());
        assert!(!next_line(&mut input, 100, &mut line).unwrap());
    }

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
        let shown = bad[0].to_string();
        assert!(
            shown.starts_with("line 3: `region`: `999999` is not a GB/T 2260"),
            "{shown}"
        );
        assert!(shown.ends_with(" (found \"999999\")"), "{shown}");
        assert!(!shown.contains("column"), "one line number only: {shown}");
        let (_, bad) = read_profiles(&b"\xff\xfe\n"[..]);
        assert_eq!(bad[0].error.reason, "not UTF-8");
    }
}
