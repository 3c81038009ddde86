//! Parsing, validation and normalisation of OpenSSH `authorized_keys` lines.
//!
//! The operator collects a user's public keys from several [`Source`]s and calls
//! [`merge_sources`], which checks every line against a [`KeyPolicy`], drops duplicates and
//! reports each rejected line with a [`RejectReason`]. [`KeySet::render`] then writes the
//! accepted keys as one normalised `authorized_keys` file. The SSH servers read such a file,
//! or a hand-written one, with [`read_authorized_keys`], and their CA keys for user
//! certificates with [`read_trusted_user_ca_keys`].
//!
//! A normalised line is `type base64 [comment]` and never carries options: the servers in this
//! project do not enforce `authorized_keys` options, so a line with options is rejected rather
//! than accepted without its restrictions.
//!
//! ```
//! use authkeys::{KeyPolicy, Source, merge_sources};
//!
//! let user_preferences = Source::values(
//!     "userPreferences",
//!     ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJizIKK5bobCr36s3PJEKDRGCNolQVrobgYIvmI6VSEw laptop"],
//! );
//! let inline = Source::text("inline", "no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\n");
//! let keys = merge_sources(&[user_preferences, inline], &KeyPolicy::default());
//!
//! assert_eq!(keys.accepted.len(), 1);
//! assert_eq!(keys.rejected[0].reason.code(), "OptionsNotSupported");
//! assert!(keys.render().ends_with(" laptop\n"));
//! ```

mod block;
mod key;
mod merge;
mod policy;
mod read;
mod reason;
mod syntax;
mod text;

pub use key::{AuthorizedKey, fingerprint, parse_line};
pub use merge::{
    AcceptedKey, KeySet, LineRef, RENDERED_HEADER, RejectedLine, Source, merge_sources,
};
pub use policy::{
    DEFAULT_MAX_COMMENT_LENGTH, DEFAULT_MAX_KEYS, DEFAULT_MAX_LINE_LENGTH, DEFAULT_MIN_RSA_BITS,
    KeyPolicy, MIN_MAX_LINE_LENGTH, OPENSSH_MAX_RSA_BITS, OPENSSH_MIN_RSA_BITS, PolicyError,
    SUPPORTED_TYPES,
};
pub use read::{read_authorized_keys, read_trusted_user_ca_keys};
pub use reason::{ForeignFormat, LineBreakCharacter, RejectReason};
pub use text::PREVIEW_CHARS;
