//! Parsing and validation of one key line.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use russh::keys::PublicKey;
use russh::keys::ssh_key::Mpint;
use russh::keys::ssh_key::public::{EcdsaPublicKey, KeyData};
use sha2::{Digest, Sha256};

use crate::block;
use crate::policy::{KeyPolicy, OPENSSH_MAX_RSA_BITS, OPENSSH_MIN_RSA_BITS};
use crate::reason::RejectReason;
use crate::syntax::{self, SEPARATORS};
use crate::text::{quote, sanitise_comment};

/// Base64 decoder for key data: the standard alphabet, with or without padding.
const KEY_DATA_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A validated public key from an `authorized_keys` line.
///
/// [`Display`](fmt::Display) writes the normalised line `type base64 [comment]`: canonical
/// padded base64, the sanitised comment, and never any options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    algorithm: String,
    blob: Vec<u8>,
    comment: Option<String>,
    fingerprint: String,
    bits: Option<u32>,
    public_key: PublicKey,
}

impl AuthorizedKey {
    /// Returns the key type, for example `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// Returns the key blob: the decoded base64 field, in the SSH wire encoding.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Returns the sanitised comment, if any remained after sanitising.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// Returns the fingerprint as `ssh-keygen -l` prints it: `SHA256:` and the unpadded base64
    /// of the SHA-256 hash of the blob.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns the key size in bits as `ssh-keygen -l` prints it: the RSA modulus size, the
    /// ECDSA curve size (256, 384 or 521), and 256 for Ed25519 and both security-key types.
    pub fn bits(&self) -> Option<u32> {
        self.bits
    }

    /// Returns the decoded key, for comparison with a key offered during authentication.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Returns whether `offered` is the same public key, ignoring comments.
    pub fn matches(&self, offered: &PublicKey) -> bool {
        self.public_key.key_data() == offered.key_data()
    }

    /// Validates a decoded key blob declared as `declared_type` and builds the key.
    fn from_blob(
        declared_type: &str,
        blob: Vec<u8>,
        raw_comment: &str,
        policy: &KeyPolicy,
    ) -> Result<Self, RejectReason> {
        let invalid = |detail: String| RejectReason::InvalidKey {
            key_type: declared_type.to_owned(),
            detail,
        };
        let embedded_type = embedded_type(&blob).map_err(|detail| invalid(detail.to_owned()))?;
        if embedded_type != declared_type {
            return Err(RejectReason::TypeMismatch {
                declared: declared_type.to_owned(),
                embedded: quote(&embedded_type),
            });
        }
        let public_key =
            PublicKey::from_bytes(&blob).map_err(|error| invalid(error.to_string()))?;
        let bits = check_key_data(public_key.key_data(), declared_type, policy)?;
        Ok(Self {
            algorithm: declared_type.to_owned(),
            fingerprint: fingerprint(&blob),
            blob,
            comment: sanitise_comment(raw_comment, policy.max_comment_length),
            bits,
            public_key,
        })
    }
}

impl fmt::Display for AuthorizedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} {}",
            self.algorithm,
            STANDARD.encode(&self.blob)
        )?;
        if let Some(comment) = &self.comment {
            write!(formatter, " {comment}")?;
        }
        Ok(())
    }
}

/// Computes the fingerprint of a key blob as `ssh-keygen -l` prints it: `SHA256:` and the
/// unpadded standard base64 of the SHA-256 hash.
pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// Parses and validates one `authorized_keys` line against `policy`.
///
/// Returns `Ok(None)` for a blank line or a `#` comment. One trailing line terminator is not
/// stripped here: a line feed or carriage return anywhere in `line` is rejected. The per-user
/// key limit is not checked, because it needs all of a user's lines; [`crate::merge_sources`]
/// applies it.
///
/// # Errors
///
/// Returns the first [`RejectReason`] that applies. The checks run in this order: private key
/// material, other key formats, line length, line breaks and control characters, markers,
/// options, key type, base64, then the key data.
pub fn parse_line(line: &str, policy: &KeyPolicy) -> Result<Option<AuthorizedKey>, RejectReason> {
    if block::contains_private_key(line) {
        return Err(RejectReason::PrivateKey);
    }
    let first_line = line
        .split(['\n', '\r'])
        .map(|part| part.trim_matches(SEPARATORS))
        .find(|part| !part.is_empty())
        .unwrap_or_default();
    if let Some(block) = block::block_start(first_line) {
        return Err(block.reason());
    }
    if line.len() > policy.max_line_length {
        return Err(RejectReason::LineTooLong {
            length: line.len(),
            max: policy.max_line_length,
        });
    }
    syntax::check_characters(line)?;

    let line = line.trim_matches(SEPARATORS);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (first_field, rest) = syntax::split_options(line);
    if first_field.starts_with('@') {
        return Err(RejectReason::Marker {
            marker: quote(first_field),
        });
    }
    if !syntax::is_key_type_name(first_field, policy) {
        return Err(classify_unknown_field(first_field, rest, policy));
    }

    let key_type = first_field;
    check_key_type(key_type, policy)?;
    let (key_data, comment) = syntax::split_field(rest);
    if key_data.is_empty() {
        return Err(RejectReason::MissingKeyData {
            key_type: key_type.to_owned(),
        });
    }
    let blob = KEY_DATA_BASE64
        .decode(key_data)
        .map_err(|error| RejectReason::InvalidBase64 {
            key_type: key_type.to_owned(),
            detail: error.to_string(),
        })?;
    AuthorizedKey::from_blob(key_type, blob, comment, policy).map(Some)
}

/// Explains a line whose first field is not a key type name.
fn classify_unknown_field(first_field: &str, rest: &str, policy: &KeyPolicy) -> RejectReason {
    let (second_field, _) = syntax::split_field(rest);
    if syntax::looks_like_options(first_field) || syntax::is_key_type_name(second_field, policy) {
        return RejectReason::Options {
            names: syntax::option_names(first_field),
        };
    }
    if syntax::is_base64_run(first_field) {
        return RejectReason::MissingKeyType;
    }
    RejectReason::UnsupportedType {
        key_type: quote(first_field),
        allowed: policy.allowed_list(),
    }
}

/// Checks the declared key type against the fixed rules and the allow-list.
fn check_key_type(key_type: &str, policy: &KeyPolicy) -> Result<(), RejectReason> {
    if syntax::is_certificate_type(key_type) {
        return Err(RejectReason::Certificate {
            key_type: quote(key_type),
        });
    }
    if key_type == "ssh-dss" {
        return Err(RejectReason::Dsa);
    }
    if !policy.allows(key_type) {
        return Err(RejectReason::UnsupportedType {
            key_type: quote(key_type),
            allowed: policy.allowed_list(),
        });
    }
    Ok(())
}

/// Reads the key type string at the start of a key blob (a 32-bit big-endian length and that
/// many bytes).
fn embedded_type(blob: &[u8]) -> Result<Cow<'_, str>, &'static str> {
    let (length, rest) = blob
        .split_first_chunk::<4>()
        .ok_or("key data is shorter than the 4-byte length of its key type")?;
    let length = usize::try_from(u32::from_be_bytes(*length))
        .map_err(|_| "key type length does not fit in memory")?;
    let name = rest
        .get(..length)
        .ok_or("key type length runs past the end of the key data")?;
    Ok(String::from_utf8_lossy(name))
}

/// Checks the decoded key and returns its size in bits.
fn check_key_data(
    key_data: &KeyData,
    key_type: &str,
    policy: &KeyPolicy,
) -> Result<Option<u32>, RejectReason> {
    let invalid = |detail: &str| RejectReason::InvalidKey {
        key_type: key_type.to_owned(),
        detail: detail.to_owned(),
    };
    let bits = match key_data {
        KeyData::Rsa(rsa) => {
            let bits = modulus_bits(rsa.n()).ok_or_else(|| invalid("RSA modulus is zero"))?;
            let min = policy.min_rsa_bits.max(OPENSSH_MIN_RSA_BITS);
            if bits < min {
                return Err(RejectReason::RsaTooSmall { bits, min });
            }
            if bits > OPENSSH_MAX_RSA_BITS {
                return Err(RejectReason::RsaTooLarge {
                    bits,
                    max: OPENSSH_MAX_RSA_BITS,
                });
            }
            Some(bits)
        }
        KeyData::Ecdsa(ecdsa) => {
            if !is_on_curve(ecdsa) {
                return Err(invalid("ECDSA point is not on its curve"));
            }
            Some(match ecdsa {
                EcdsaPublicKey::NistP256(_) => 256,
                EcdsaPublicKey::NistP384(_) => 384,
                EcdsaPublicKey::NistP521(_) => 521,
            })
        }
        KeyData::SkEcdsaSha2NistP256(security_key) => {
            p256::ecdsa::VerifyingKey::from_sec1_point(security_key.ec_point())
                .map_err(|_| invalid("ECDSA point is not on its curve"))?;
            Some(256)
        }
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) => Some(256),
        KeyData::Dsa(_) => return Err(RejectReason::Dsa),
        KeyData::Certificate(_) => {
            return Err(RejectReason::Certificate {
                key_type: quote(key_type),
            });
        }
        // Types outside SUPPORTED_TYPES decode as opaque keys with no known size; only a
        // policy that fails `KeyPolicy::validate` lets such a line get this far.
        _ => None,
    };
    Ok(bits)
}

/// Returns the size of an RSA modulus in bits, as OpenSSH's `BN_num_bits` counts it, or `None`
/// for zero or a negative value.
fn modulus_bits(modulus: &Mpint) -> Option<u32> {
    let bytes = modulus.as_positive_bytes()?;
    let start = bytes.iter().position(|byte| *byte != 0)?;
    let significant = &bytes[start..];
    let leading_zeros = significant.first()?.leading_zeros();
    let bits = (significant.len() as u64) * 8 - u64::from(leading_zeros);
    Some(u32::try_from(bits).unwrap_or(u32::MAX))
}

/// Returns whether an ECDSA public point lies on its curve. OpenSSH runs the same check when it
/// reads a key.
fn is_on_curve(key: &EcdsaPublicKey) -> bool {
    match key {
        EcdsaPublicKey::NistP256(_) => p256::ecdsa::VerifyingKey::try_from(key).is_ok(),
        EcdsaPublicKey::NistP384(_) => p384::ecdsa::VerifyingKey::try_from(key).is_ok(),
        EcdsaPublicKey::NistP521(_) => p521::ecdsa::VerifyingKey::try_from(key).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_type_reads_name() {
        let blob = [0, 0, 0, 3, b'a', b'b', b'c', 9];
        assert_eq!(embedded_type(&blob).as_deref(), Ok("abc"));
    }

    #[test]
    fn embedded_type_rejects_short_blobs() {
        assert!(embedded_type(&[0, 0]).is_err());
        assert!(embedded_type(&[0, 0, 0, 9, b'a']).is_err());
        assert!(embedded_type(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn modulus_bits_counts_significant_bits() {
        let cases: [(&[u8], Option<u32>); 5] = [
            (&[0x00, 0x80, 0x00], Some(16)),
            (&[0x7f, 0xff], Some(15)),
            (&[0x01], Some(1)),
            (&[0x01, 0x00], Some(9)),
            (&[], None),
        ];
        for (bytes, expected) in cases {
            let modulus = Mpint::from_bytes(bytes).expect("mpint");
            assert_eq!(modulus_bits(&modulus), expected, "{bytes:02x?}");
        }
    }
}
