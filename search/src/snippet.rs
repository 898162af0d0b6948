//! Highlighted snippets of stored text.

use std::collections::HashMap;

use tantivy::query::Query;
use tantivy::schema::{Field, Value};
use tantivy::tokenizer::TokenStream;
use tantivy::{Searcher, TantivyDocument};

use crate::SearchError;

/// A highlighted snippet of `field` of `doc` for `query`.
///
/// The snippet is at most `max_chars` characters of the field's text (its values joined by a
/// space), counted before HTML escaping and without the tags; no ellipsis is added. It is the
/// window with the most matches (most distinct query terms first, then most occurrences; the
/// earliest on a tie), with the rest of the room split between text before and after the
/// matches. Every match inside it is wrapped in `<em>…</em>`; the text is HTML-escaped (`&`,
/// `<`, `>`, `"`, `'`) except for those tags.
///
/// The text is tokenised by the tokenizer that `field` uses on the searcher's index, and a
/// match is a token equal to one of `query`'s terms on `field`. Without a match (the query
/// matched another field, or has no terms) the snippet is the start of the text, without tags.
/// A document without text in `field` gives an empty snippet.
///
/// # Errors
///
/// [`SearchError::Index`] if `field` is not a text field or its tokenizer is not registered on
/// the searcher's index.
pub fn snippet(
    searcher: &Searcher,
    query: &dyn Query,
    field: Field,
    doc: &TantivyDocument,
    max_chars: usize,
) -> Result<String, SearchError> {
    let mut analyzer = searcher.index().tokenizer_for_field(field)?;

    let mut terms: HashMap<String, usize> = HashMap::new();
    query.query_terms(&mut |term, _| {
        if term.field() != field {
            return;
        }
        if let Some(text) = term.value().as_str() {
            let next = terms.len();
            terms.entry(text.to_owned()).or_insert(next);
        }
    });

    let mut text = String::new();
    for value in doc.get_all(field) {
        if let Some(value) = value.as_str() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(value);
        }
    }
    if text.is_empty() || max_chars == 0 {
        return Ok(String::new());
    }

    // Byte offset of every character, and of the end.
    let starts: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let char_at = |byte: usize| starts.binary_search(&byte).ok();

    let mut matches: Vec<Match> = Vec::new();
    if !terms.is_empty() {
        let mut stream = analyzer.token_stream(&text);
        while let Some(token) = stream.next() {
            let Some(&term) = terms.get(&token.text) else {
                continue;
            };
            if let (Some(from), Some(to)) = (char_at(token.offset_from), char_at(token.offset_to))
                && from < to
                && to - from <= max_chars
            {
                matches.push(Match { from, to, term });
            }
        }
    }
    let matches = without_overlaps(matches);

    let total = starts.len() - 1;
    let (start, end) = match best_window(&matches, terms.len(), max_chars) {
        Some((first, last)) => {
            let (span_from, span_to) = (matches[first].from, matches[last].to);
            let room = max_chars - (span_to - span_from);
            let start = span_from.saturating_sub(room / 2);
            let end = (start + max_chars).min(total);
            (end.saturating_sub(max_chars).min(start), end)
        }
        None => (0, max_chars.min(total)),
    };

    let mut html = String::new();
    let mut cursor = start;
    for m in matches.iter().filter(|m| m.from >= start && m.to <= end) {
        escape_into(&mut html, &text[starts[cursor]..starts[m.from]]);
        html.push_str("<em>");
        escape_into(&mut html, &text[starts[m.from]..starts[m.to]]);
        html.push_str("</em>");
        cursor = m.to;
    }
    escape_into(&mut html, &text[starts[cursor]..starts[end]]);
    Ok(html)
}

/// A token of the text equal to a query term: characters `from..to`, the term's index.
#[derive(Debug, Clone, Copy)]
struct Match {
    from: usize,
    to: usize,
    term: usize,
}

/// The matches sorted, without any that overlaps an earlier (or at the same start, longer) one:
/// a compound 专精特新小巨人 wins over the 专精特新 inside it.
fn without_overlaps(mut matches: Vec<Match>) -> Vec<Match> {
    matches.sort_by_key(|m| (m.from, std::cmp::Reverse(m.to)));
    let mut kept: Vec<Match> = Vec::with_capacity(matches.len());
    for m in matches {
        if kept.last().is_none_or(|last| m.from >= last.to) {
            kept.push(m);
        }
    }
    kept
}

/// The first and last of the run of `matches` that fits in `max_chars` characters with the most
/// distinct terms, then the most matches; the earliest on a tie. `matches` are sorted and do
/// not overlap, and each fits in `max_chars`.
fn best_window(matches: &[Match], num_terms: usize, max_chars: usize) -> Option<(usize, usize)> {
    let mut counts = vec![0usize; num_terms];
    let mut distinct = 0;
    let mut end = 0;
    let mut best: Option<((usize, usize), (usize, usize))> = None;
    for (first, m) in matches.iter().enumerate() {
        while let Some(next) = matches
            .get(end)
            .filter(|next| next.to - m.from <= max_chars)
        {
            if let Some(count) = counts.get_mut(next.term) {
                if *count == 0 {
                    distinct += 1;
                }
                *count += 1;
            }
            end += 1;
        }
        if end > first {
            let score = (distinct, end - first);
            if best.is_none_or(|(best_score, _)| score > best_score) {
                best = Some((score, (first, end - 1)));
            }
        }
        if end > first
            && let Some(count) = counts.get_mut(m.term)
        {
            *count -= 1;
            if *count == 0 {
                distinct -= 1;
            }
        }
        end = end.max(first + 1);
    }
    best.map(|(_, window)| window)
}

/// Appends `text` to `html`, escaped.
fn escape_into(html: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            c => html.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(from: usize, to: usize, term: usize) -> Match {
        Match { from, to, term }
    }

    #[test]
    fn overlaps_removed() {
        let kept = without_overlaps(vec![m(4, 6, 1), m(0, 7, 0), m(0, 4, 1), m(8, 9, 2)]);
        let spans: Vec<_> = kept.iter().map(|m| (m.from, m.to)).collect();
        assert_eq!(spans, [(0, 7), (8, 9)]);
    }

    #[test]
    fn window_prefers_distinct_terms() {
        // Two matches of term 0 close together, then terms 0 and 1 close together.
        let matches = [m(0, 2, 0), m(3, 5, 0), m(50, 52, 0), m(53, 55, 1)];
        assert_eq!(best_window(&matches, 2, 10), Some((2, 3)));
        // With room for everything, everything.
        assert_eq!(best_window(&matches, 2, 100), Some((0, 3)));
        // The earliest of equals.
        assert_eq!(best_window(&matches[..3], 2, 10), Some((0, 1)));
        assert_eq!(best_window(&[], 2, 10), None);
    }

    #[test]
    fn escaping() {
        let mut html = String::new();
        escape_into(&mut html, "a<b>&\"c'");
        assert_eq!(html, "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}
