//! Everything that speaks to Authentik's REST API: the tolerant models, the client with its
//! retries and paging, the typed errors, and the [`health`] of a source (`aksync check`).

pub mod client;
pub mod error;
pub mod health;
pub mod model;
pub mod tls;

pub use client::{AuthentikClient, ListKind, RetryPolicy};
pub use error::ClientError;
