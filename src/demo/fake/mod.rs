//! A fake authentik REST API (the users, groups, `me`, version and config endpoints of
//! 2025.12.4) for tests and the demo. It reproduces what a directory-sync client can
//! observe on a real server, as recorded in `API-NOTES.md` sections 3-12: pagination
//! quirks, 403s instead of 401s, null `*_obj` fields, object-permission partial lists,
//! the missing-trailing-slash 404 page, plus hooks to inject faults, latency and
//! directory changes between page fetches, and hostile modes: lying pagination, endless
//! bodies, conflicting duplicates and text meant to attack whoever displays it.

mod api;
mod directory;
mod hostile;
mod render;
mod server;
#[cfg(test)]
mod tests;

pub use directory::{
    Directory, FakeGroup, FakeToken, FakeUser, TokenKind, APP_PASSWORD_TOKEN, NO_PERMISSION_TOKEN,
    OBJECT_READER_TOKEN, READER_TOKEN, REVOKED_TOKEN, SUPERUSER_TOKEN,
};
pub use hostile::{long_text, ListingLies, HOSTILE_TEXT};
pub use server::{FakeAuthentik, FakeState, Fault, ListKind, PageHook};
