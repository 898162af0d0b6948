//! The policy knowledge base: enterprise-support policies, their conditions, enterprise
//! profiles, eligibility with explanations, matching in both directions and the push feed.
//! This crate knows nothing of HTTP, TLS or the gateway.
//!
//! It holds no code yet: the model and the matcher arrive with the policy issue.
#![forbid(unsafe_code)]
