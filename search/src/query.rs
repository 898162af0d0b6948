//! Field options and queries for text analysed by [`ChineseAnalyzer`].

use std::collections::HashSet;

use tantivy::Term;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, TextFieldIndexing, TextOptions};

use crate::{ChineseAnalyzer, TOKENIZER};

/// A text field option set that indexes with the [`TOKENIZER`] ("zh") tokenizer, with term
/// frequencies and positions, and stores the text (for [`snippet`](crate::snippet)).
///
/// Register the analyzer on the index with [`ChineseAnalyzer::register`] before using it.
pub fn text_options() -> TextOptions {
    TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored()
}

/// `clauses` as one query: the only one itself, several as a boolean query (each with its
/// occurrence); none for none.
fn one_or_all(mut clauses: Vec<(Occur, Box<dyn Query>)>) -> Option<Box<dyn Query>> {
    match clauses.len() {
        0 => None,
        1 => clauses.pop().map(|(_, q)| q),
        _ => Some(Box::new(BooleanQuery::new(clauses))),
    }
}

/// A query for user text, or `None` when there is nothing to search for (the text has no
/// tokens, or `fields` is empty).
///
/// The text is tokenised by `analyzer` (never by tantivy's `QueryParser`, so no query syntax:
/// `AND`, quotes and `field:` are plain text). Each distinct token becomes a `TermQuery` on
/// every field in `fields` (`Should` across fields), and all tokens must match (`Must` across
/// tokens): a search for 专精特新 finds only documents with that token, never those with
/// just 专精 or 特新. A token of a synonym group (`search/dict/synonyms.txt`) matches any word
/// of its group as well (招工 also finds 招聘 and 用工). The domain terms that [`ChineseAnalyzer::tokens`] adds after a compound
/// (专精特新 after 专精特新小巨人) are left out: a document with the compound has them too.
///
/// Scores are BM25 sums; the number of clauses grows with the text, so callers should bound the
/// length of user text.
pub fn text_query(
    analyzer: &ChineseAnalyzer,
    fields: &[Field],
    text: &str,
) -> Option<Box<dyn Query>> {
    if fields.is_empty() {
        return None;
    }
    let mut seen = HashSet::new();
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    // One token on every field (`Should`); several tokens all (`Must`).
    let on_fields = |tokens: &[String]| -> Option<Box<dyn Query>> {
        let mut all: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for token in tokens {
            let per_field: Vec<(Occur, Box<dyn Query>)> = fields
                .iter()
                .map(|&field| {
                    let term = Term::from_field_text(field, token);
                    let query: Box<dyn Query> =
                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                    (Occur::Should, query)
                })
                .collect();
            all.push((Occur::Must, one_or_all(per_field)?));
        }
        one_or_all(all)
    };
    // Each word as typed (text between spaces) is a synonym group's word, or its tokens each
    // are, or have none.
    for word in text.split_whitespace() {
        let whole = analyzer.synonyms(word);
        let units: Vec<(Vec<String>, &[Vec<String>])> = if whole.is_empty() {
            analyzer
                .query_tokens(word)
                .into_iter()
                .map(|t| {
                    let synonyms = analyzer.synonyms(&t);
                    (vec![t], synonyms)
                })
                .collect()
        } else {
            vec![(analyzer.query_tokens(word), whole)]
        };
        for (tokens, synonyms) in units {
            if tokens.is_empty() || !seen.insert(tokens.clone()) {
                continue;
            }
            // The word, or any of its synonyms.
            let alternatives: Vec<(Occur, Box<dyn Query>)> = std::iter::once(tokens)
                .chain(synonyms.iter().cloned())
                .filter_map(|words| on_fields(&words))
                .map(|q| (Occur::Should, q))
                .collect();
            if let Some(clause) = one_or_all(alternatives) {
                clauses.push((Occur::Must, clause));
            }
        }
    }
    if clauses.is_empty() {
        return None;
    }
    Some(Box::new(BooleanQuery::new(clauses)))
}
