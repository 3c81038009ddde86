//! Lenient readers used by the SSH servers.

mod common;

use authkeys::{KeyPolicy, RejectReason, read_authorized_keys, read_trusted_user_ca_keys};
use common::{expected_fingerprints, fixture, key_line};

#[test]
fn hand_written_file_skips_bad_lines() {
    let text = format!(
        "# my keys\r\n\
         {}\r\n\
         command=\"backup.sh\",no-pty {}\r\n\
         \r\n\
         {}\r\n\
         not a key\r\n\
         \t{}  work laptop\r\n",
        key_line("ed25519.pub"),
        key_line("ecdsa256.pub"),
        key_line("dsa.pub"),
        key_line("rsa4096.pub"),
    );
    let keys = read_authorized_keys("/etc/ssh/authorized_keys", &text, &KeyPolicy::default());

    let accepted: Vec<_> = keys.accepted.iter().map(|key| key.origin.line).collect();
    assert_eq!(accepted, vec![2, 7]);
    assert_eq!(
        keys.accepted[1].key.comment(),
        Some("rsa4096@fixture work laptop")
    );
    let skipped: Vec<_> = keys
        .rejected
        .iter()
        .map(|line| (line.origin.line, line.reason.code()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (3, "OptionsNotSupported"),
            (5, "DsaNotSupported"),
            (6, "UnsupportedType")
        ]
    );
    assert_eq!(keys.rejected[0].origin.source, "/etc/ssh/authorized_keys");
}

#[test]
fn reader_ignores_key_limit() {
    let policy = KeyPolicy {
        max_keys: 1,
        ..KeyPolicy::default()
    };
    let text = format!(
        "{}\n{}\n",
        key_line("ed25519.pub"),
        key_line("ecdsa256.pub")
    );
    let keys = read_authorized_keys("authorized_keys", &text, &policy);
    assert_eq!(keys.accepted.len(), 2);
    assert!(keys.rejected.is_empty());
}

#[test]
fn reader_applies_type_rules() {
    let policy = KeyPolicy {
        allowed_types: vec!["ssh-ed25519".into()],
        ..KeyPolicy::default()
    };
    let text = format!(
        "{}\n{}\n",
        key_line("ed25519.pub"),
        key_line("ecdsa256.pub")
    );
    let keys = read_authorized_keys("authorized_keys", &text, &policy);
    assert_eq!(keys.accepted.len(), 1);
    assert!(matches!(
        keys.rejected[0].reason,
        RejectReason::UnsupportedType { .. }
    ));
}

#[test]
fn reader_of_empty_file() {
    let keys = read_authorized_keys("authorized_keys", "", &KeyPolicy::default());
    assert!(keys.accepted.is_empty());
    assert!(keys.rejected.is_empty());
}

#[test]
fn trusted_user_ca_keys_fixture() {
    let keys = read_trusted_user_ca_keys(
        "trusted_user_ca_keys",
        &fixture("trusted_user_ca_keys"),
        &KeyPolicy::default(),
    );
    assert!(keys.rejected.is_empty(), "{:?}", keys.rejected);
    assert_eq!(keys.accepted.len(), 1);
    let expected = expected_fingerprints()
        .into_iter()
        .find(|entry| entry.file == "user_ca.pub")
        .expect("user_ca.pub fingerprint");
    assert_eq!(keys.accepted[0].key.fingerprint(), expected.fingerprint);
    assert_eq!(keys.accepted[0].origin.line, 3);
}

#[test]
fn trusted_user_ca_keys_skip_certificates() {
    let text = format!(
        "{}\n{}\n",
        key_line("ed25519-cert.pub"),
        key_line("user_ca.pub")
    );
    let keys = read_trusted_user_ca_keys("ca", &text, &KeyPolicy::default());
    assert_eq!(keys.accepted.len(), 1);
    assert_eq!(keys.rejected[0].reason.code(), "CertificateNotSupported");
}
