//! Full-text search over Chinese text for certgate: [tantivy] with jieba segmentation and a
//! shipped dictionary of enterprise-policy terms. This crate knows nothing of HTTP, TLS or the
//! gateway.
//!
//! - [`ChineseAnalyzer`] segments text: jieba's dictionary plus `dict/domain.txt` (专精特新,
//!   高新技术企业, 研发费用加计扣除, …) and optionally a user dictionary, so that policy terms
//!   are single tokens (a compound such as 专精特新小巨人 also carries the shipped words inside
//!   it, 专精特新 and 小巨人, so searching either finds it). [`ChineseAnalyzer::tokens`] shows
//!   exactly what is indexed and queried.
//! - [`text_options`] declares a stored text field analysed by it, under the tokenizer name
//!   [`TOKENIZER`]; [`ChineseAnalyzer::register`] registers it on an index.
//! - [`text_query`] turns user text into a query in which every token must match, so a search
//!   for 专精特新 never finds a text that only says 专精 or 特新.
//! - [`snippet`] cuts a highlighted, HTML-escaped excerpt of a hit.
//!
//! ```
//! use search::{ChineseAnalyzer, snippet, text_options, text_query};
//! use tantivy::schema::Schema;
//! use tantivy::{Index, TantivyDocument, doc};
//! use tantivy::collector::TopDocs;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let analyzer = ChineseAnalyzer::new()?;
//! let mut schema = Schema::builder();
//! let body = schema.add_text_field("body", text_options());
//! let index = Index::create_in_ram(schema.build());
//! analyzer.register(&index);
//!
//! let mut writer = index.writer_with_num_threads(1, 15_000_000)?;
//! writer.add_document(doc!(body => "支持专精特新中小企业发展"))?;
//! writer.add_document(doc!(body => "坚持走专精发展道路"))?;
//! writer.commit()?;
//!
//! let searcher = index.reader()?.searcher();
//! let query = text_query(&analyzer, &[body], "专精特新").ok_or("no tokens")?;
//! let hits = searcher.search(&query, &TopDocs::with_limit(10).order_by_score())?;
//! assert_eq!(hits.len(), 1);
//! let hit: TantivyDocument = searcher.doc(hits[0].1)?;
//! let html = snippet(&searcher, &*query, body, &hit, 100)?;
//! assert_eq!(html, "支持<em>专精特新</em>中小企业发展");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod analyzer;
mod error;
mod query;
mod snippet;

pub use analyzer::{ChineseAnalyzer, TOKENIZER};
pub use error::SearchError;
pub use query::{text_options, text_query};
pub use snippet::snippet;
