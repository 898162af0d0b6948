//! The policy knowledge base (政策找企业, 免申即享): enterprise-support policies with their
//! conditions as data, enterprise profiles, eligibility decided in Rust and explained condition
//! by condition, matching in both directions through tantivy indexes that only narrow the
//! candidates, and the push feed. This crate knows nothing of HTTP, TLS or the gateway.
#![forbid(unsafe_code)]

pub mod codes;
pub mod eligibility;
#[cfg(feature = "generate")]
pub mod generate;
pub mod import;
pub mod index;
pub mod kb;
pub mod model;
pub mod pg_store;
pub mod store;
pub mod tags;

pub use kb::{Changes, KbError, KnowledgeBase, Matches, PolicyMatch};
pub use model::{InvalidField, Policy, Profile};

/// The sample policies shipped with certgate (JSON Lines; written for this project, not real
/// government documents): the demo loads them, the tests and benchmarks use them.
pub const SAMPLE_POLICIES: &str = include_str!("../data/policies.jsonl");
