//! Rushes wire and API types, the error codes, and the versioned codec.
//! This crate depends on nothing else in the workspace.

pub mod api;
pub mod codec;
pub mod error;
pub mod model;
pub mod peer;
pub mod validate;

pub use api::*;
pub use error::{ApiError, ErrorCode};
