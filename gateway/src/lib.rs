//! certgate's gateway: the mTLS listener through which department systems reach e-licences,
//! e-seals, shared data and policy matches. It reads each caller's identity once from its
//! client certificate, refuses by default, and owns everything that touches the wire: TLS,
//! HTTP, the error model, metrics, configuration, the command line and the development PKI.
//! The domain logic lives in the `cert-store`, `policies` and `search` libraries.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod data;
#[cfg(feature = "demo")]
pub mod demo;
pub mod documents;
pub mod error;
pub mod extract;
pub mod gate;
pub mod identity;
pub mod licences;
pub mod matching;
pub mod metrics;
pub mod pki;
pub mod preauth;
pub mod purpose;
pub mod rate_limit;
pub mod server;
#[cfg(feature = "demo")]
pub mod source_system;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod view_cache;
pub mod wiring;
