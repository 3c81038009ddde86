//! Lenient readers for the SSH servers: whole files in, usable keys out.

use crate::merge::{KeySet, Source, merge};
use crate::policy::KeyPolicy;

/// Reads an `authorized_keys` file, whether written by [`KeySet::render`] or by hand.
///
/// Lines that fail a check of `policy` are skipped and listed in [`KeySet::rejected`] with
/// `label` as their source, so the caller can log them. The other lines are still read.
/// [`KeyPolicy::max_keys`] is not applied, because the file has already been limited when it
/// was written. Lines with options (`command="..."`, `from=...`, `restrict`, ...) are skipped
/// rather than read without their restrictions, because the servers do not enforce options.
/// Pass the policy the file was written with, or a wider one, so no written key is skipped.
pub fn read_authorized_keys(label: &str, text: &str, policy: &KeyPolicy) -> KeySet {
    merge(&[Source::text(label, text)], policy, None)
}

/// Reads a file of certificate authority public keys in the format of sshd's
/// `TrustedUserCAKeys`: one plain public key per line, with blank lines and `#` comments
/// allowed.
///
/// Skipping and reporting work as in [`read_authorized_keys`], and [`KeyPolicy::max_keys`] is
/// not applied.
pub fn read_trusted_user_ca_keys(label: &str, text: &str, policy: &KeyPolicy) -> KeySet {
    merge(&[Source::text(label, text)], policy, None)
}
