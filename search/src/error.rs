//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong when building an analyzer or making a snippet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// A user dictionary file could not be read: missing, unreadable, or not UTF-8.
    #[error("cannot read dictionary {}: {source}", path.display())]
    DictionaryRead {
        /// The file that was to be read.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A dictionary line is malformed.
    #[error("dictionary {dictionary}, line {line}: {reason}")]
    DictionaryLine {
        /// The dictionary: the user dictionary's path, or `search/dict/domain.txt` for the
        /// shipped one.
        dictionary: String,
        /// The line number, counting from 1.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// tantivy failed, for instance because the field is not a text field or its tokenizer is
    /// not registered on the searcher's index.
    #[error("search index error: {0}")]
    Index(#[from] tantivy::TantivyError),
}
