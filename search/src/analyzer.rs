//! [`ChineseAnalyzer`]: jieba with the domain dictionary, as a tantivy tokenizer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use jieba_rs::Jieba;
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

use crate::SearchError;

/// The name under which [`ChineseAnalyzer::register`] registers the analyzer on an index, and
/// which [`text_options`](crate::text_options) names as the fields' tokenizer.
pub const TOKENIZER: &str = "zh";

/// The shipped domain dictionary.
const DOMAIN_DICTIONARY: &str = include_str!("../dict/domain.txt");

/// The shipped query synonyms: one group of equivalent words a line.
const SYNONYMS: &str = include_str!("../dict/synonyms.txt");

/// How errors name the shipped domain dictionary.
const DOMAIN_DICTIONARY_NAME: &str = "search/dict/domain.txt";

/// The frequency of a user dictionary word given without one: that of the shipped terms, high
/// enough that jieba keeps the word whole.
const DEFAULT_FREQUENCY: usize = 100_000;

/// The largest frequency a dictionary line may give (jieba adds them up).
const MAX_FREQUENCY: usize = 1_000_000_000;

/// The longest dictionary word, in characters.
const MAX_WORD_CHARS: usize = 32;

/// Tokens longer than this many bytes are dropped: they are blobs (base64, hashes), not words,
/// and tantivy refuses terms of 64 KiB and more anyway.
const MAX_TOKEN_BYTES: usize = 255;

/// Chinese (and mixed-script) text analysis: jieba segmentation with the shipped domain
/// dictionary of policy terms, plus an optional user dictionary.
///
/// What [`tokens`](Self::tokens) returns is exactly what the registered tokenizer indexes, so a
/// query built from it (see [`text_query`](crate::text_query)) finds what was indexed.
///
/// jieba's dictionary (a fraction of a second to load and about 33 MB in memory) is loaded on
/// the first text analysed, so a gateway that never analyses Chinese text does not carry it;
/// build one analyzer and clone it: clones share the dictionary.
#[derive(Clone)]
pub struct ChineseAnalyzer {
    inner: Arc<Inner>,
}

impl fmt::Debug for ChineseAnalyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChineseAnalyzer")
            .field("dictionary_loaded", &self.inner.jieba.get().is_some())
            .field("compound_terms", &self.inner.compounds.len())
            .finish()
    }
}

/// The shared state of an analyzer.
struct Inner {
    /// jieba's default dictionary plus the domain (and user) dictionary, loaded on first use.
    jieba: std::sync::OnceLock<Jieba>,
    /// The domain and user words jieba gets on top of its own dictionary (checked already).
    words: Vec<(String, usize, Option<String>)>,
    /// For each domain or user term that contains other such terms (专精特新小巨人), where those
    /// are in it (专精特新 at 0, 小巨人 at 12): they are indexed along with the compound.
    compounds: HashMap<Box<str>, Vec<SubTerm>>,
    /// The domain and user terms: kept whole, never broken into jieba's sub-words.
    terms: HashSet<Box<str>>,
    /// Query token → the other words of its synonym group, each as its query tokens; built
    /// on first use (it needs jieba).
    synonyms: std::sync::OnceLock<HashMap<String, Vec<Vec<String>>>>,
}

/// A dictionary term inside a longer one: `compound[offset..offset + len]`.
#[derive(Debug, Clone, Copy)]
struct SubTerm {
    offset: usize,
    len: usize,
}

impl Inner {
    /// jieba with the extra words, loaded on first use.
    fn jieba(&self) -> &Jieba {
        self.jieba.get_or_init(|| {
            let mut jieba = Jieba::new();
            for (word, freq, tag) in &self.words {
                jieba.add_word(word, Some(*freq), tag.as_deref());
            }
            jieba
        })
    }
}

/// One line of a dictionary.
struct Entry<'a> {
    word: &'a str,
    freq: usize,
    tag: Option<&'a str>,
}

impl ChineseAnalyzer {
    /// The analyzer with the shipped domain dictionary.
    ///
    /// # Errors
    ///
    /// [`SearchError::DictionaryLine`] if the shipped dictionary is malformed (a test guards
    /// against that).
    pub fn new() -> Result<ChineseAnalyzer, SearchError> {
        Self::build(&[])
    }

    /// The analyzer with the shipped domain dictionary plus a user dictionary file.
    ///
    /// The file is UTF-8, one `word [freq] [tag]` per line, fields separated by whitespace;
    /// blank lines and lines starting with `#` are ignored. `freq` is a whole number from 1 to
    /// 1,000,000,000 and defaults to 100,000, the frequency of the shipped terms, which keeps
    /// the word whole; `tag` is a jieba part-of-speech tag and is not used. The word is at most
    /// 32 Chinese ideographs: other text (Latin letters, digits) is not segmented by jieba, so
    /// it could never match. A word already in a dictionary gets the new frequency.
    ///
    /// # Errors
    ///
    /// [`SearchError::DictionaryRead`] naming the file if it cannot be read or is not UTF-8;
    /// [`SearchError::DictionaryLine`] naming the file and the line of the first bad line.
    pub fn with_user_dictionary(path: &Path) -> Result<ChineseAnalyzer, SearchError> {
        let text = std::fs::read_to_string(path).map_err(|source| SearchError::DictionaryRead {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        let user = parse_dictionary(&name, &text)?;
        Self::build(&user)
    }

    fn build(user: &[Entry<'_>]) -> Result<ChineseAnalyzer, SearchError> {
        let domain = parse_dictionary(DOMAIN_DICTIONARY_NAME, DOMAIN_DICTIONARY)?;
        let mut words: HashSet<&str> = HashSet::new();
        let mut extra = Vec::with_capacity(domain.len() + user.len());
        for entry in domain.iter().chain(user) {
            extra.push((
                entry.word.to_owned(),
                entry.freq,
                entry.tag.map(str::to_owned),
            ));
            words.insert(entry.word);
        }
        Ok(ChineseAnalyzer {
            inner: Arc::new(Inner {
                jieba: std::sync::OnceLock::new(),
                compounds: compounds(&words),
                terms: words.iter().map(|w| Box::from(*w)).collect(),
                synonyms: std::sync::OnceLock::new(),
                words: extra,
            }),
        })
    }

    /// The tokens of `text` as indexed and queried.
    ///
    /// - Runs of Chinese ideographs are segmented by jieba, once, without jieba's HMM guessing of
    ///   unknown words: a word in no dictionary becomes single characters, the same way in every
    ///   context.
    /// - A word of three or more characters from jieba's general dictionary is followed, at the
    ///   same position, by the 2- and 3-character words of that dictionary inside it (jieba's
    ///   search mode): 餐饮业 gives 餐饮业, 餐饮; 外贸企业 gives 外贸企业, 外贸, 企业, so a
    ///   search for 餐饮 or 外贸 finds them.
    /// - A domain (or user) dictionary term is never broken into such sub-words: 专精特新 is
    ///   one token and never also 专精 + 特新. A term that contains other domain terms is
    ///   followed by them only: 专精特新小巨人 gives 专精特新小巨人, 专精特新, 小巨人, so a search
    ///   for 专精特新 finds 专精特新小巨人.
    /// - Other letters and digits (Latin, Cyrillic, kana, …) form words that are kept whole and
    ///   lower-cased; a `.` between two digits stays in the word (`3.5`, `v1.2`). Full-width
    ///   forms count as their ASCII counterparts (`ＡＢＣ１２３` → `abc123`).
    /// - Punctuation, whitespace, symbols, emoji and control characters separate tokens and are
    ///   dropped; so are tokens longer than 255 bytes.
    ///
    /// Never panics, whatever the input.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut tokens = Vec::new();
        self.inner.analyze(text, &mut tokens);
        tokens.into_iter().map(|token| token.text).collect()
    }

    /// The tokens of `text` without the terms that [`tokens`](Self::tokens) adds after a
    /// compound term: a document with the compound always has those too, so a query needs only
    /// the compound.
    pub(crate) fn query_tokens(&self, text: &str) -> Vec<String> {
        let mut tokens = Vec::new();
        self.inner.analyze(text, &mut tokens);
        let mut last_position = None;
        let mut out = Vec::with_capacity(tokens.len());
        for token in tokens {
            if last_position != Some(token.position) {
                last_position = Some(token.position);
                out.push(token.text);
            }
        }
        out
    }

    /// The words a query word or token also finds (`search/dict/synonyms.txt`): for 招工, 招聘
    /// and 用工, each as the query tokens it is read as (a word of several tokens needs them
    /// all). A word of the file is found as typed (高企, which is two tokens) and, when it is
    /// one token, by that token.
    pub(crate) fn synonyms(&self, token: &str) -> &[Vec<String>] {
        self.inner
            .synonyms
            .get_or_init(|| {
                let mut map: HashMap<String, Vec<Vec<String>>> = HashMap::new();
                for line in SYNONYMS.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let group: Vec<Vec<String>> = line
                        .split_whitespace()
                        .map(|w| self.query_tokens(w))
                        .collect();
                    let words: Vec<&str> = line.split_whitespace().collect();
                    for (i, tokens) in group.iter().enumerate() {
                        // Found by the word as typed, and by its token when it is one.
                        let mut keys = vec![words[i].to_owned()];
                        if let [single] = tokens.as_slice() {
                            keys.push(single.clone());
                        }
                        for key in keys {
                            let others = map.entry(key).or_default();
                            for (j, other) in group.iter().enumerate() {
                                if i != j && !others.contains(other) {
                                    others.push(other.clone());
                                }
                            }
                        }
                    }
                }
                map
            })
            .get(token)
            .map_or(&[], Vec::as_slice)
    }

    /// Registers this analyzer on `index` under the name [`TOKENIZER`].
    ///
    /// Do it before indexing into or searching an index whose fields use
    /// [`text_options`](crate::text_options), including every time the index is opened: tantivy
    /// does not store tokenizers.
    pub fn register(&self, index: &tantivy::Index) {
        index.tokenizers().register(
            TOKENIZER,
            ZhTokenizer {
                inner: Arc::clone(&self.inner),
            },
        );
    }
}

impl Inner {
    /// Appends the tokens of `text` to `out`, with byte offsets into `text` and positions
    /// counting the tokens (a compound's contained terms share its position).
    fn analyze(&self, text: &str, out: &mut Vec<Token>) {
        let mut position = 0;
        let mut chars = text.char_indices().peekable();
        while let Some(&(start, c)) = chars.peek() {
            if is_han(c) {
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if !is_han(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                self.segment_han(text, start, end, &mut position, out);
            } else if is_word_char(fold_width(c)) {
                let mut word = String::new();
                let mut end = start;
                let mut previous = '\0';
                while let Some(&(i, c)) = chars.peek() {
                    let folded = fold_width(c);
                    let joins = is_word_char(folded)
                        || (folded == '.' && previous.is_ascii_digit() && {
                            let mut ahead = chars.clone();
                            ahead.next();
                            ahead
                                .peek()
                                .is_some_and(|&(_, next)| fold_width(next).is_ascii_digit())
                        });
                    if !joins {
                        break;
                    }
                    word.extend(folded.to_lowercase());
                    end = i + c.len_utf8();
                    previous = folded;
                    chars.next();
                }
                if word.len() <= MAX_TOKEN_BYTES {
                    out.push(token(word, start, end, position));
                    position += 1;
                }
            } else {
                chars.next();
            }
        }
    }

    /// Segments the run of ideographs `text[start..end]` with jieba.
    fn segment_han(
        &self,
        text: &str,
        start: usize,
        end: usize,
        position: &mut usize,
        out: &mut Vec<Token>,
    ) {
        let Some(run) = text.get(start..end) else {
            return;
        };
        for word in self.jieba().cut(run, false) {
            if word.word.len() > MAX_TOKEN_BYTES {
                continue;
            }
            let from = start + word.byte_start;
            out.push(token(
                word.word.to_owned(),
                from,
                from + word.word.len(),
                *position,
            ));
            if let Some(subterms) = self.compounds.get(word.word) {
                for sub in subterms {
                    if let Some(text) = word.word.get(sub.offset..sub.offset + sub.len) {
                        out.push(token(
                            text.to_owned(),
                            from + sub.offset,
                            from + sub.offset + sub.len,
                            *position,
                        ));
                    }
                }
            } else if !self.terms.contains(word.word) {
                self.sub_words(word.word, from, *position, out);
            }
            *position += 1;
        }
    }
}

impl Inner {
    /// The 2- and 3-character words of jieba's dictionary inside `word` (of three characters
    /// or more), which starts at byte `from` of the text, each at `position`.
    fn sub_words(&self, word: &str, from: usize, position: usize, out: &mut Vec<Token>) {
        let bounds: Vec<usize> = word
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(word.len()))
            .collect();
        let chars = bounds.len() - 1;
        if chars < 3 {
            return;
        }
        for len in [2, 3] {
            if len >= chars {
                continue;
            }
            for start in 0..=chars - len {
                let (a, b) = (bounds[start], bounds[start + len]);
                let Some(part) = word.get(a..b) else { continue };
                if self.jieba().has_word(part) {
                    out.push(token(part.to_owned(), from + a, from + b, position));
                }
            }
        }
    }
}

fn token(text: String, offset_from: usize, offset_to: usize, position: usize) -> Token {
    Token {
        offset_from,
        offset_to,
        position,
        text,
        position_length: 1,
    }
}

/// For every word of `words` that contains other words of `words`, where they are.
fn compounds(words: &HashSet<&str>) -> HashMap<Box<str>, Vec<SubTerm>> {
    let mut compounds = HashMap::new();
    for word in words {
        let bounds: Vec<usize> = word
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(word.len()))
            .collect();
        let mut subterms = Vec::new();
        for (a, &from) in bounds.iter().enumerate() {
            for &to in &bounds[a + 1..] {
                if (from, to) == (0, word.len()) {
                    continue;
                }
                if word.get(from..to).is_some_and(|part| words.contains(part)) {
                    subterms.push(SubTerm {
                        offset: from,
                        len: to - from,
                    });
                }
            }
        }
        if !subterms.is_empty() {
            compounds.insert(Box::from(*word), subterms);
        }
    }
    compounds
}

/// Parses a dictionary: `word [freq] [tag]` per line, blank and `#` lines ignored.
fn parse_dictionary<'a>(name: &str, text: &'a str) -> Result<Vec<Entry<'a>>, SearchError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_error = |reason: String| SearchError::DictionaryLine {
            dictionary: name.to_owned(),
            line: index + 1,
            reason,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (word, freq, tag) = match fields.as_slice() {
            [word] => (*word, None, None),
            [word, freq] => (*word, Some(*freq), None),
            [word, freq, tag] => (*word, Some(*freq), Some(*tag)),
            _ => {
                return Err(line_error(format!(
                    "expected `word [freq] [tag]`, found {} fields",
                    fields.len()
                )));
            }
        };
        if let Some(bad) = word.chars().find(|&c| !is_han(c)) {
            return Err(line_error(format!(
                "`{word}` contains {bad:?}: a dictionary word is made of Chinese ideographs only"
            )));
        }
        if word.chars().count() > MAX_WORD_CHARS {
            return Err(line_error(format!(
                "`{word}` is longer than {MAX_WORD_CHARS} characters"
            )));
        }
        let freq = match freq {
            None => DEFAULT_FREQUENCY,
            Some(freq) => match freq.parse::<usize>() {
                Ok(n) if (1..=MAX_FREQUENCY).contains(&n) => n,
                _ => {
                    return Err(line_error(format!(
                        "frequency `{freq}` is not a whole number from 1 to {MAX_FREQUENCY}"
                    )));
                }
            },
        };
        entries.push(Entry { word, freq, tag });
    }
    Ok(entries)
}

/// Whether `c` is a CJK ideograph (the ranges jieba segments).
fn is_han(c: char) -> bool {
    matches!(c,
        '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2A6DF}'
        | '\u{2A700}'..='\u{2EBEF}'
        | '\u{2F800}'..='\u{2FA1F}'
        | '\u{30000}'..='\u{323AF}'
    )
}

/// Whether `c` belongs in a non-Chinese word.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_han(c)
}

/// Full-width ASCII forms (`Ａ`, `１`, `．`) as ASCII.
fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// The tantivy tokenizer registered by [`ChineseAnalyzer::register`].
#[derive(Clone)]
struct ZhTokenizer {
    inner: Arc<Inner>,
}

impl Tokenizer for ZhTokenizer {
    type TokenStream<'a> = ZhTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ZhTokenStream {
        let mut tokens = Vec::new();
        self.inner.analyze(text, &mut tokens);
        ZhTokenStream {
            tokens: tokens.into_iter(),
            token: Token::default(),
        }
    }
}

/// The tokens of one text, for tantivy.
struct ZhTokenStream {
    tokens: std::vec::IntoIter<Token>,
    token: Token,
}

impl TokenStream for ZhTokenStream {
    fn advance(&mut self) -> bool {
        match self.tokens.next() {
            Some(token) => {
                self.token = token;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_dictionary_parses() {
        let entries = parse_dictionary(DOMAIN_DICTIONARY_NAME, DOMAIN_DICTIONARY).unwrap();
        let terms = entries
            .iter()
            .filter(|e| e.freq == DEFAULT_FREQUENCY)
            .count();
        assert!(terms >= 68, "{terms} policy terms");
        assert!(entries.iter().all(|e| !matches!(e.word, "专精" | "特新")));
    }

    #[test]
    fn dictionary_lines() {
        let entries = parse_dictionary("t", "\u{feff}# c\n\n 甲乙 \n丙丁 5\n戊己 7 n\r\n").unwrap();
        let got: Vec<_> = entries.iter().map(|e| (e.word, e.freq, e.tag)).collect();
        assert_eq!(
            got,
            [
                ("甲乙", DEFAULT_FREQUENCY, None),
                ("丙丁", 5, None),
                ("戊己", 7, Some("n"))
            ]
        );
        for bad in [
            "甲乙 x",
            "甲乙 0",
            "甲乙 -3",
            "甲乙 1000000001",
            "甲乙 1 n extra",
            "5G基站 10",
            "首台（套） 10",
        ] {
            let err = parse_dictionary("t", &format!("甲\n{bad}\n"))
                .err()
                .unwrap();
            assert!(
                matches!(err, SearchError::DictionaryLine { line: 2, .. }),
                "{bad}: {err}"
            );
        }
        let long = "甲".repeat(MAX_WORD_CHARS + 1);
        assert!(parse_dictionary("t", &long).is_err());
    }

    #[test]
    fn compounds_found() {
        let words: HashSet<&str> = ["专精特新", "小巨人", "专精特新小巨人", "巨人"]
            .into_iter()
            .collect();
        let found = compounds(&words);
        let subs: Vec<_> = found["专精特新小巨人"]
            .iter()
            .map(|s| &"专精特新小巨人"[s.offset..s.offset + s.len])
            .collect();
        assert_eq!(subs, ["专精特新", "小巨人", "巨人"]);
        assert_eq!(found.len(), 2, "小巨人 contains 巨人 too");
    }

    #[test]
    fn width_folding() {
        assert_eq!(fold_width('Ａ'), 'A');
        assert_eq!(fold_width('～'), '~');
        assert_eq!(fold_width('中'), '中');
    }
}
