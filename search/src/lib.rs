//! Full-text indexes for certgate: tantivy with Chinese analysis (jieba plus the project's
//! dictionary of policy terms). This crate knows nothing of HTTP, TLS or the gateway.
//!
//! It holds no code yet: the policy knowledge base index arrives with the policy issue.
#![forbid(unsafe_code)]
