//! Fixture loading and key-blob builders shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Path of a file in `tests/fixtures`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Contents of a file in `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read fixture {}: {error}", path.display()))
}

/// The single key line of a `.pub` fixture, without its line terminator.
pub fn key_line(name: &str) -> String {
    fixture(name).trim_end().to_owned()
}

/// Fields of one line of `tests/fixtures/fingerprints.txt` (`ssh-keygen -lf` output).
#[derive(Debug)]
pub struct ExpectedFingerprint {
    pub file: String,
    pub bits: u32,
    pub fingerprint: String,
    pub comment: String,
    pub type_label: String,
}

/// Parses `tests/fixtures/fingerprints.txt`.
pub fn expected_fingerprints() -> Vec<ExpectedFingerprint> {
    fixture("fingerprints.txt")
        .lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let file = fields.next().expect("file name").to_owned();
            let bits = fields.next().expect("bits").parse().expect("numeric bits");
            let fingerprint = fields.next().expect("fingerprint").to_owned();
            let rest = fields.next().expect("comment and type");
            let (comment, type_label) = rest.rsplit_once(" (").expect("type label in brackets");
            ExpectedFingerprint {
                file,
                bits,
                fingerprint,
                comment: comment.to_owned(),
                type_label: type_label.trim_end_matches(')').to_owned(),
            }
        })
        .collect()
}

/// Key data (second field) of a `.pub` fixture, decoded.
pub fn fixture_blob(name: &str) -> Vec<u8> {
    let line = key_line(name);
    let data = line.split(' ').nth(1).expect("key data field");
    STANDARD.decode(data).expect("fixture base64")
}

/// Encodes `bytes` as an SSH `string`: a 32-bit big-endian length, then the bytes.
pub fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let length = u32::try_from(bytes.len()).expect("short string");
    let mut encoded = length.to_be_bytes().to_vec();
    encoded.extend_from_slice(bytes);
    encoded
}

/// Builds an `ssh-rsa` blob with exponent 65537 and a modulus of exactly `bits` bits.
pub fn rsa_blob(bits: usize) -> Vec<u8> {
    let bytes = bits.div_ceil(8);
    let mut modulus = vec![0xA5; bytes];
    let top_bits = bits - (bytes - 1) * 8;
    // Set the highest bit of the modulus so it has exactly `bits` significant bits, and keep a
    // leading zero byte so the mpint stays positive.
    modulus[0] = (1u8 << (top_bits - 1)) | 0x01;
    modulus[bytes - 1] |= 0x01;
    let mut mpint = Vec::new();
    if modulus[0] & 0x80 != 0 {
        mpint.push(0);
    }
    mpint.extend_from_slice(&modulus);

    let mut blob = ssh_string(b"ssh-rsa");
    blob.extend(ssh_string(&[0x01, 0x00, 0x01]));
    blob.extend(ssh_string(&mpint));
    blob
}

/// Formats a key line from a type, a blob and a comment.
pub fn line_from_blob(key_type: &str, blob: &[u8], comment: &str) -> String {
    format!("{key_type} {} {comment}", STANDARD.encode(blob))
        .trim_end()
        .to_owned()
}

/// Fixtures accepted by the default policy, with their key types.
pub const ACCEPTED_FIXTURES: [(&str, &str); 8] = [
    ("ed25519.pub", "ssh-ed25519"),
    ("rsa2048.pub", "ssh-rsa"),
    ("rsa4096.pub", "ssh-rsa"),
    ("ecdsa256.pub", "ecdsa-sha2-nistp256"),
    ("ecdsa384.pub", "ecdsa-sha2-nistp384"),
    ("ecdsa521.pub", "ecdsa-sha2-nistp521"),
    ("ed25519_sk.pub", "sk-ssh-ed25519@openssh.com"),
    ("ecdsa_sk.pub", "sk-ecdsa-sha2-nistp256@openssh.com"),
];
