//! Everything that speaks to Authentik's REST API: the tolerant models, the client with its
//! retries and paging, and the typed errors.

pub mod client;
pub mod error;
pub mod model;

pub use client::{AuthentikClient, ListKind, RetryPolicy};
pub use error::ClientError;
