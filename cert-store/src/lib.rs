//! E-licences, e-seals, the PKI around them, status lists, identifiers and
//! their storage. This crate knows nothing of HTTP, TLS or the gateway; it is
//! a plain Rust library.
//!
//! Today it holds the identifiers: [`Uscc`] (统一社会信用代码, the unified
//! social credit code of an enterprise), [`CitizenId`] (公民身份号码, the
//! citizen identity number) and [`HolderId`], the holder of a licence, which
//! is one or the other. Each is a newtype that can only be built from a value
//! that passed validation, check character included ("parse, don't
//! validate"); failures are reported as [`IdError`].

#![forbid(unsafe_code)]

pub mod access;
pub mod cache;
pub mod crypto;
pub mod document_seal;
pub mod id;
pub mod jws;
pub mod licence;
pub mod licence_id;
pub mod pg_store;
pub mod sdjwt;
pub mod seal_ca;
pub mod service;
pub mod ses;
pub mod status_list;
pub mod store;
pub mod text;

pub use id::{CitizenId, HolderId, IdError, IdKind, Uscc};
