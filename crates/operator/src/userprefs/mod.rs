//! The user-preferences API as a key source: the HTTP client, the operator's access token, and
//! a per-user cache that polls each user's keys and triggers the SSHAccess objects that use
//! them. The HTTP contract is written down in `docs/user-preferences-api.md`.

mod client;
mod registry;
mod token;

pub use client::{FetchError, Fetched, UserKey, UserPreferencesClient};
pub use registry::{RefreshError, RefreshOutcome, Snapshot, UserKeyRegistry};
pub use token::{TokenError, TokenSource, token_source};
