//! Multi-line key formats that users paste in place of an OpenSSH public key line: PEM and
//! RFC 4716 blocks, and PuTTY private key files.

use crate::reason::{ForeignFormat, RejectReason};

/// A multi-line block recognised by its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// A PEM or RFC 4716 private key (`-----BEGIN OPENSSH PRIVATE KEY-----` and similar).
    Private,
    /// A PuTTY `.ppk` private key file, which ends with a `Private-MAC:` line.
    PuttyPrivate,
    /// A public key in another format.
    Public(ForeignFormat),
}

impl Block {
    /// Returns the reason that rejects the whole block.
    pub(crate) fn reason(self) -> RejectReason {
        match self {
            Self::Private | Self::PuttyPrivate => RejectReason::PrivateKey,
            Self::Public(format) => RejectReason::ForeignFormat { format },
        }
    }

    /// Returns whether `line`, trimmed, is the last line of this block.
    pub(crate) fn ends_with(self, line: &str) -> bool {
        match self {
            Self::PuttyPrivate => line.starts_with("Private-MAC:"),
            Self::Private | Self::Public(_) => {
                line.starts_with("-----END ") || line.starts_with("---- END ")
            }
        }
    }
}

/// Recognises the first line of a block; `line` must be trimmed.
pub(crate) fn block_start(line: &str) -> Option<Block> {
    if line.starts_with("PuTTY-User-Key-File-") {
        return Some(Block::PuttyPrivate);
    }
    let is_pem = line.starts_with("-----BEGIN ");
    let is_rfc4716 = line.starts_with("---- BEGIN ");
    if !is_pem && !is_rfc4716 {
        return None;
    }
    if line.contains("PRIVATE KEY") {
        return Some(Block::Private);
    }
    let format = if line.starts_with("---- BEGIN SSH2 PUBLIC KEY") {
        ForeignFormat::Rfc4716
    } else if line.starts_with("-----BEGIN PUBLIC KEY-----") {
        ForeignFormat::Pkcs8
    } else if line.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        ForeignFormat::Pkcs1
    } else {
        ForeignFormat::OtherPem
    };
    Some(Block::Public(format))
}

/// Returns whether any line of `value` starts a private key block.
pub(crate) fn contains_private_key(value: &str) -> bool {
    value.split(['\n', '\r']).any(|line| {
        matches!(
            block_start(line.trim_matches([' ', '\t'])),
            Some(Block::Private | Block::PuttyPrivate)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_start_recognises_formats() {
        let cases = [
            ("-----BEGIN OPENSSH PRIVATE KEY-----", Some(Block::Private)),
            ("-----BEGIN RSA PRIVATE KEY-----", Some(Block::Private)),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----",
                Some(Block::Private),
            ),
            (
                "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----",
                Some(Block::Private),
            ),
            (
                "PuTTY-User-Key-File-3: ssh-ed25519",
                Some(Block::PuttyPrivate),
            ),
            (
                "---- BEGIN SSH2 PUBLIC KEY ----",
                Some(Block::Public(ForeignFormat::Rfc4716)),
            ),
            (
                "-----BEGIN PUBLIC KEY-----",
                Some(Block::Public(ForeignFormat::Pkcs8)),
            ),
            (
                "-----BEGIN RSA PUBLIC KEY-----",
                Some(Block::Public(ForeignFormat::Pkcs1)),
            ),
            (
                "-----BEGIN CERTIFICATE-----",
                Some(Block::Public(ForeignFormat::OtherPem)),
            ),
            ("ssh-ed25519 AAAA", None),
            ("# -----BEGIN OPENSSH PRIVATE KEY-----", None),
        ];
        for (line, expected) in cases {
            assert_eq!(block_start(line), expected, "{line}");
        }
    }

    #[test]
    fn block_end_lines() {
        assert!(Block::Private.ends_with("-----END OPENSSH PRIVATE KEY-----"));
        assert!(Block::Public(ForeignFormat::Rfc4716).ends_with("---- END SSH2 PUBLIC KEY ----"));
        assert!(Block::PuttyPrivate.ends_with("Private-MAC: 0123abcd"));
        assert!(!Block::PuttyPrivate.ends_with("-----END OPENSSH PRIVATE KEY-----"));
    }

    #[test]
    fn contains_private_key_scans_every_line() {
        assert!(contains_private_key(
            "junk\n  -----BEGIN OPENSSH PRIVATE KEY-----\nAAAA"
        ));
        assert!(!contains_private_key("ssh-ed25519 AAAA PRIVATE KEY backup"));
    }
}
