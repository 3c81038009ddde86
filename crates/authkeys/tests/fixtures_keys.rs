//! Parsing of real keys made by ssh-keygen, checked against `ssh-keygen -lf` output stored in
//! tests/fixtures/fingerprints.txt.

mod common;

use authkeys::{KeyPolicy, RejectReason, parse_line};
use common::{ACCEPTED_FIXTURES, expected_fingerprints, fixture_blob, key_line};

/// Policy that also accepts the 1024- and 2047-bit RSA fixtures.
fn permissive_rsa_policy() -> KeyPolicy {
    KeyPolicy {
        min_rsa_bits: 1024,
        ..KeyPolicy::default()
    }
}

#[test]
fn fingerprints_match_ssh_keygen() {
    let policy = permissive_rsa_policy();
    let expected = expected_fingerprints();
    let mut checked = 0;
    for entry in &expected {
        if entry.file == "dsa.pub" {
            continue;
        }
        let key = parse_line(&key_line(&entry.file), &policy)
            .unwrap_or_else(|reason| panic!("{}: {reason}", entry.file))
            .expect("key line");
        assert_eq!(key.fingerprint(), entry.fingerprint, "{}", entry.file);
        assert_eq!(key.bits(), Some(entry.bits), "{}", entry.file);
        assert_eq!(
            key.comment(),
            Some(entry.comment.as_str()),
            "{}",
            entry.file
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        expected.len() - 1,
        "every fixture except DSA is checked"
    );
}

#[test]
fn fingerprint_function_matches_ssh_keygen() {
    for entry in expected_fingerprints() {
        let blob = fixture_blob(&entry.file);
        assert_eq!(
            authkeys::fingerprint(&blob),
            entry.fingerprint,
            "{}",
            entry.file
        );
    }
}

#[test]
fn accepted_fixtures_report_type_and_blob() {
    for (file, key_type) in ACCEPTED_FIXTURES {
        let key = parse_line(&key_line(file), &KeyPolicy::default())
            .unwrap_or_else(|reason| panic!("{file}: {reason}"))
            .expect("key line");
        assert_eq!(key.algorithm(), key_type, "{file}");
        assert_eq!(key.blob(), fixture_blob(file).as_slice(), "{file}");
        assert_eq!(key.public_key().algorithm().as_str(), key_type, "{file}");
    }
}

#[test]
fn normalised_line_equals_ssh_keygen_line() {
    for (file, _) in ACCEPTED_FIXTURES {
        let original = key_line(file);
        let key = parse_line(&original, &KeyPolicy::default())
            .expect("valid fixture")
            .expect("key line");
        assert_eq!(key.to_string(), original, "{file}");
    }
}

#[test]
fn normalised_line_round_trips() {
    let policy = KeyPolicy::default();
    for (file, _) in ACCEPTED_FIXTURES {
        let messy = format!(
            "  {}\t{}   messy\t comment\u{200B} ",
            key_line(file).split(' ').next().expect("type"),
            key_line(file).split(' ').nth(1).expect("data")
        );
        let first = parse_line(&messy, &policy)
            .expect("messy line")
            .expect("key");
        assert_eq!(first.comment(), Some("messy comment"), "{file}");
        let normalised = first.to_string();
        let second = parse_line(&normalised, &policy)
            .expect("normalised line")
            .expect("key");
        assert_eq!(first, second, "{file}");
        assert_eq!(second.to_string(), normalised, "{file}");
    }
}

#[test]
fn unpadded_base64_is_normalised_with_padding() {
    let line = key_line("ecdsa_sk.pub");
    assert!(line.contains("== "), "fixture has padding");
    let unpadded = line.replace("== ", " ");
    let key = parse_line(&unpadded, &KeyPolicy::default())
        .expect("unpadded")
        .expect("key");
    assert_eq!(key.to_string(), line);
}

#[test]
fn line_without_comment_has_none() {
    let line = key_line("ed25519.pub");
    let without_comment: String = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let key = parse_line(&without_comment, &KeyPolicy::default())
        .expect("valid")
        .expect("key");
    assert_eq!(key.comment(), None);
    assert_eq!(key.to_string(), without_comment);
}

#[test]
fn dsa_fixture_is_rejected() {
    let permissive = KeyPolicy {
        allowed_types: vec!["ssh-ed25519".into(), "ssh-dss".into()],
        ..KeyPolicy::default()
    };
    for policy in [KeyPolicy::default(), permissive] {
        assert_eq!(
            parse_line(&key_line("dsa.pub"), &policy),
            Err(RejectReason::Dsa)
        );
    }
}

#[test]
fn rsa_fixtures_follow_minimum() {
    let default = KeyPolicy::default();
    assert_eq!(
        parse_line(&key_line("rsa1024.pub"), &default),
        Err(RejectReason::RsaTooSmall {
            bits: 1024,
            min: 2048
        })
    );
    // ssh-keygen made this modulus 2047 bits long although it fills 256 bytes.
    assert_eq!(
        parse_line(&key_line("rsa2047.pub"), &default),
        Err(RejectReason::RsaTooSmall {
            bits: 2047,
            min: 2048
        })
    );
    assert!(matches!(
        parse_line(&key_line("rsa2048.pub"), &default),
        Ok(Some(_))
    ));

    let strict = KeyPolicy {
        min_rsa_bits: 4096,
        ..KeyPolicy::default()
    };
    assert_eq!(
        parse_line(&key_line("rsa2048.pub"), &strict),
        Err(RejectReason::RsaTooSmall {
            bits: 2048,
            min: 4096
        })
    );
    assert!(matches!(
        parse_line(&key_line("rsa4096.pub"), &strict),
        Ok(Some(_))
    ));
}

#[test]
fn matches_compares_key_data() {
    let policy = KeyPolicy::default();
    let ed25519 = parse_line(&key_line("ed25519.pub"), &policy)
        .expect("valid")
        .expect("key");
    let ecdsa = parse_line(&key_line("ecdsa256.pub"), &policy)
        .expect("valid")
        .expect("key");
    let offered = russh::keys::PublicKey::from_openssh(&key_line("ed25519.pub"))
        .expect("russh reads the fixture");
    assert!(ed25519.matches(&offered));
    assert!(!ecdsa.matches(&offered));
}
