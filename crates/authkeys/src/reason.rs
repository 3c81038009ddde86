//! Reasons a key line is rejected.

use std::fmt;

use thiserror::Error;

/// Reason for rejecting one `authorized_keys` line.
///
/// Each message names the offending value and the fix, so it can be shown to the key's owner as
/// is. Values copied from the line into a reason are truncated and never contain the key data
/// or option values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The line is longer than [`KeyPolicy::max_line_length`](crate::KeyPolicy).
    #[error(
        "line is {length} bytes long, over the limit of {max} bytes: shorten the comment, or \
         use an ssh-ed25519 key, whose line is 80 bytes plus the comment"
    )]
    LineTooLong {
        /// Length of the line in bytes.
        length: usize,
        /// Configured limit in bytes.
        max: usize,
    },
    /// The value contains a line feed or carriage return, so it would become several lines.
    #[error(
        "value contains a {character} at byte {offset}: put each key on its own line and \
         remove line breaks inside a key"
    )]
    LineBreak {
        /// The line break character found.
        character: LineBreakCharacter,
        /// Byte offset of the character in the value.
        offset: usize,
    },
    /// The line contains a control character other than tab.
    #[error(
        "line contains the control character {code} at byte {offset}: remove it, because a \
         public key line contains only printable text"
    )]
    ControlCharacter {
        /// The character as `U+XXXX`.
        code: String,
        /// Byte offset of the character in the line.
        offset: usize,
    },
    /// The line starts with `authorized_keys` options such as `command="..."` or `no-pty`.
    #[error(
        "line starts with key options ({names}), which are not supported: remove everything \
         before the key type"
    )]
    Options {
        /// Comma-separated option names, without their values.
        names: String,
    },
    /// The line starts with a `known_hosts` marker such as `@cert-authority` or `@revoked`.
    #[error(
        "line starts with the marker `{marker}`, which belongs in known_hosts files: add a \
         plain public key line instead"
    )]
    Marker {
        /// The marker, for example `@cert-authority`.
        marker: String,
    },
    /// The line is an OpenSSH certificate, not a plain public key.
    #[error(
        "key type `{key_type}` is an SSH certificate, not a public key: add the public key the \
         certificate was issued for (the .pub file without -cert)"
    )]
    Certificate {
        /// The certificate type, for example `ssh-ed25519-cert-v01@openssh.com`.
        key_type: String,
    },
    /// The value looks like a private key.
    #[error(
        "value looks like a private key, which must never be shared: add the contents of the \
         matching .pub file instead, and replace the key if others have seen it"
    )]
    PrivateKey,
    /// The value is a public key in a format other than the OpenSSH one-line format.
    #[error("{format}")]
    ForeignFormat {
        /// The detected format and how to convert it.
        format: ForeignFormat,
    },
    /// The line starts with base64 data and has no key type.
    #[error(
        "line starts with base64 data but no key type: add the whole line from the .pub file, \
         in the form `ssh-ed25519 AAAA... comment`"
    )]
    MissingKeyType,
    /// The key type is `ssh-dss`, which is never accepted.
    #[error(
        "key type ssh-dss (DSA) is not accepted because DSA keys are limited to 1024 bits and \
         OpenSSH 10.0 removed DSA support: generate a new key with `ssh-keygen -t ed25519`"
    )]
    Dsa,
    /// The key type is not on the allow-list.
    #[error(
        "key type `{key_type}` is not accepted: use one of {allowed}, for example a key made by \
         `ssh-keygen -t ed25519`"
    )]
    UnsupportedType {
        /// The declared key type, truncated.
        key_type: String,
        /// The allow-list, comma-separated.
        allowed: String,
    },
    /// The line has a key type but no key data.
    #[error(
        "line has the key type `{key_type}` but no key data: add the whole line from the .pub \
         file, in the form `{key_type} AAAA... comment`"
    )]
    MissingKeyData {
        /// The declared key type.
        key_type: String,
    },
    /// The key data is not valid base64.
    #[error(
        "key data of the `{key_type}` key is not valid base64 ({detail}): copy the line again \
         from the .pub file without line breaks or extra characters"
    )]
    InvalidBase64 {
        /// The declared key type.
        key_type: String,
        /// Error message of the base64 decoder.
        detail: String,
    },
    /// The key type inside the key data differs from the declared one.
    #[error(
        "line declares the key type `{declared}` but its key data is of type `{embedded}`: \
         copy the line again from the .pub file without editing the key type"
    )]
    TypeMismatch {
        /// The key type at the start of the line.
        declared: String,
        /// The key type encoded in the key data, truncated.
        embedded: String,
    },
    /// The key data decodes as base64 but is not a valid public key.
    #[error(
        "key data of the `{key_type}` key is malformed ({detail}): copy the line again from \
         the .pub file"
    )]
    InvalidKey {
        /// The declared key type.
        key_type: String,
        /// Error message of the key decoder.
        detail: String,
    },
    /// The RSA modulus is smaller than [`KeyPolicy::min_rsa_bits`](crate::KeyPolicy).
    #[error(
        "RSA key has {bits} bits, fewer than the minimum of {min}: generate a new key with \
         `ssh-keygen -t ed25519` or `ssh-keygen -t rsa -b 4096`"
    )]
    RsaTooSmall {
        /// Modulus size in bits.
        bits: u32,
        /// Configured minimum in bits.
        min: u32,
    },
    /// The RSA modulus is larger than OpenSSH supports.
    #[error(
        "RSA key has {bits} bits, more than the {max} bits OpenSSH supports: generate a new key \
         with `ssh-keygen -t ed25519` or `ssh-keygen -t rsa -b 4096`"
    )]
    RsaTooLarge {
        /// Modulus size in bits.
        bits: u32,
        /// Largest supported modulus in bits.
        max: u32,
    },
    /// The user already has the maximum number of distinct keys.
    #[error(
        "key {fingerprint} is over the limit of {max} keys per user: remove keys that are no \
         longer used"
    )]
    TooManyKeys {
        /// Fingerprint of the key that did not fit.
        fingerprint: String,
        /// Configured maximum.
        max: usize,
    },
}

impl RejectReason {
    /// Returns a stable CamelCase name for the reason, usable as a status reason or metric
    /// label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::LineTooLong { .. } => "LineTooLong",
            Self::LineBreak { .. } => "LineBreak",
            Self::ControlCharacter { .. } => "ControlCharacter",
            Self::Options { .. } => "OptionsNotSupported",
            Self::Marker { .. } => "MarkerNotSupported",
            Self::Certificate { .. } => "CertificateNotSupported",
            Self::PrivateKey => "PrivateKey",
            Self::ForeignFormat { .. } => "ForeignFormat",
            Self::MissingKeyType => "MissingKeyType",
            Self::Dsa => "DsaNotSupported",
            Self::UnsupportedType { .. } => "UnsupportedType",
            Self::MissingKeyData { .. } => "MissingKeyData",
            Self::InvalidBase64 { .. } => "InvalidBase64",
            Self::TypeMismatch { .. } => "TypeMismatch",
            Self::InvalidKey { .. } => "InvalidKey",
            Self::RsaTooSmall { .. } => "RsaKeyTooSmall",
            Self::RsaTooLarge { .. } => "RsaKeyTooLarge",
            Self::TooManyKeys { .. } => "TooManyKeys",
        }
    }

    /// Returns whether the rejected line may contain secret material, in which case no preview
    /// of it is shown.
    pub fn hides_line(&self) -> bool {
        matches!(self, Self::PrivateKey | Self::MissingKeyType)
    }
}

/// A line break character found inside one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBreakCharacter {
    /// `\n`.
    LineFeed,
    /// `\r`.
    CarriageReturn,
}

impl fmt::Display for LineBreakCharacter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineFeed => formatter.write_str("line feed (\\n)"),
            Self::CarriageReturn => formatter.write_str("carriage return (\\r)"),
        }
    }
}

/// A public key format other than OpenSSH's one-line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignFormat {
    /// RFC 4716 (`---- BEGIN SSH2 PUBLIC KEY ----`), as exported by PuTTYgen.
    Rfc4716,
    /// PEM `-----BEGIN PUBLIC KEY-----` (an X.509 SubjectPublicKeyInfo).
    Pkcs8,
    /// PEM `-----BEGIN RSA PUBLIC KEY-----` (PKCS #1).
    Pkcs1,
    /// Any other PEM block, such as a certificate.
    OtherPem,
}

impl fmt::Display for ForeignFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, ssh_keygen_format) = match self {
            Self::Rfc4716 => ("RFC 4716 (SSH2)", "RFC4716"),
            Self::Pkcs8 => ("PEM PKCS #8", "PKCS8"),
            Self::Pkcs1 => ("PEM PKCS #1", "PEM"),
            Self::OtherPem => {
                return formatter.write_str(
                    "value is a PEM block, not an OpenSSH public key: add the contents of a \
                     .pub file made by ssh-keygen",
                );
            }
        };
        write!(
            formatter,
            "value is a public key in {name} format: convert it with \
             `ssh-keygen -i -m {ssh_keygen_format} -f FILE` and add the one-line output"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_format_message_names_conversion() {
        let message = RejectReason::ForeignFormat {
            format: ForeignFormat::Rfc4716,
        }
        .to_string();
        assert!(message.contains("RFC 4716"), "{message}");
        assert!(
            message.contains("ssh-keygen -i -m RFC4716 -f FILE"),
            "{message}"
        );
    }

    #[test]
    fn codes_are_distinct() {
        let reasons = [
            RejectReason::LineTooLong { length: 1, max: 1 },
            RejectReason::LineBreak {
                character: LineBreakCharacter::LineFeed,
                offset: 0,
            },
            RejectReason::ControlCharacter {
                code: "U+0000".into(),
                offset: 0,
            },
            RejectReason::Options {
                names: "no-pty".into(),
            },
            RejectReason::Marker {
                marker: "@revoked".into(),
            },
            RejectReason::Certificate {
                key_type: "x".into(),
            },
            RejectReason::PrivateKey,
            RejectReason::ForeignFormat {
                format: ForeignFormat::Pkcs8,
            },
            RejectReason::MissingKeyType,
            RejectReason::Dsa,
            RejectReason::UnsupportedType {
                key_type: "x".into(),
                allowed: "y".into(),
            },
            RejectReason::MissingKeyData {
                key_type: "x".into(),
            },
            RejectReason::InvalidBase64 {
                key_type: "x".into(),
                detail: "y".into(),
            },
            RejectReason::TypeMismatch {
                declared: "x".into(),
                embedded: "y".into(),
            },
            RejectReason::InvalidKey {
                key_type: "x".into(),
                detail: "y".into(),
            },
            RejectReason::RsaTooSmall { bits: 1, min: 2 },
            RejectReason::RsaTooLarge { bits: 2, max: 1 },
            RejectReason::TooManyKeys {
                fingerprint: "SHA256:x".into(),
                max: 1,
            },
        ];
        let mut codes: Vec<_> = reasons.iter().map(RejectReason::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), reasons.len());
    }
}
