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

/// JSON Schema (draft 2020-12) of a policy line, as served at `/v1/schemas/policy`.
pub const POLICY_SCHEMA: &str = include_str!("../data/schema/policy.json");

/// JSON Schema (draft 2020-12) of an enterprise profile line, as served at
/// `/v1/schemas/profile`.
pub const PROFILE_SCHEMA: &str = include_str!("../data/schema/profile.json");
