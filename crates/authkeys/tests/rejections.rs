//! One test per rejection reason, on real keys from tests/fixtures where a real key fits.

mod common;

use authkeys::{
    ForeignFormat, KeyPolicy, LineBreakCharacter, OPENSSH_MAX_RSA_BITS, RejectReason, Source,
    merge_sources, parse_line,
};
use common::{fixture, fixture_blob, key_line, line_from_blob, rsa_blob, ssh_string};

fn reject(line: &str) -> RejectReason {
    reject_with(line, &KeyPolicy::default())
}

fn reject_with(line: &str, policy: &KeyPolicy) -> RejectReason {
    match parse_line(line, policy) {
        Err(reason) => reason,
        Ok(parsed) => panic!("expected a rejection for {line:?}, got {parsed:?}"),
    }
}

fn ed25519_line() -> String {
    key_line("ed25519.pub")
}

#[test]
fn line_too_long() {
    let line = format!("{} {}", ed25519_line(), "c".repeat(9000));
    assert_eq!(
        reject(&line),
        RejectReason::LineTooLong {
            length: line.len(),
            max: 8192
        }
    );
}

#[test]
fn line_too_long_uses_policy_limit() {
    let policy = KeyPolicy {
        max_line_length: 200,
        ..KeyPolicy::default()
    };
    let line = key_line("rsa2048.pub");
    assert_eq!(
        reject_with(&line, &policy),
        RejectReason::LineTooLong {
            length: line.len(),
            max: 200
        }
    );
    assert!(matches!(parse_line(&ed25519_line(), &policy), Ok(Some(_))));
}

#[test]
fn line_break_inside_value() {
    let smuggled = format!(
        "{}\ncommand=\"sh\" {}",
        ed25519_line(),
        key_line("ecdsa256.pub")
    );
    let offset = ed25519_line().len();
    assert_eq!(
        reject(&smuggled),
        RejectReason::LineBreak {
            character: LineBreakCharacter::LineFeed,
            offset
        }
    );
}

#[test]
fn carriage_return_inside_value() {
    let line = format!("{} comment\rinjected", ed25519_line());
    let offset = ed25519_line().len() + " comment".len();
    assert_eq!(
        reject(&line),
        RejectReason::LineBreak {
            character: LineBreakCharacter::CarriageReturn,
            offset
        }
    );
}

#[test]
fn nul_character() {
    let line = format!("{} comment\0tail", ed25519_line());
    assert_eq!(
        reject(&line),
        RejectReason::ControlCharacter {
            code: "U+0000".into(),
            offset: ed25519_line().len() + " comment".len()
        }
    );
}

#[test]
fn escape_sequence_in_comment() {
    let line = format!("{} \u{1b}]0;title\u{7}", ed25519_line());
    assert!(matches!(
        reject(&line),
        RejectReason::ControlCharacter { ref code, .. } if code == "U+001B"
    ));
}

#[test]
fn options_are_rejected() {
    let key = ed25519_line();
    let cases = [
        (format!(r#"command="/bin/sh -c 'id'" {key}"#), "command"),
        (format!(r#"from="10.0.0.0/8,192.168.0.1" {key}"#), "from"),
        (format!("no-pty {key}"), "no-pty"),
        (format!("restrict,pty {key}"), "restrict, pty"),
        (
            format!(r#"environment="A=b",no-agent-forwarding {key}"#),
            "environment, no-agent-forwarding",
        ),
        (format!("cert-authority {key}"), "cert-authority"),
        (format!("expiry-time=\"20300101\" {key}"), "expiry-time"),
        (format!("unknown-option {key}"), "unknown-option"),
    ];
    for (line, names) in cases {
        assert_eq!(
            reject(&line),
            RejectReason::Options {
                names: names.into()
            },
            "{line}"
        );
    }
}

#[test]
fn options_without_key_are_rejected() {
    assert_eq!(
        reject("no-pty"),
        RejectReason::Options {
            names: "no-pty".into()
        }
    );
}

#[test]
fn options_message_omits_values() {
    let line = format!(r#"environment="TOKEN=hunter2" {}"#, ed25519_line());
    let message = reject(&line).to_string();
    assert!(message.contains("environment"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn known_hosts_markers() {
    for marker in ["@cert-authority", "@revoked"] {
        let line = format!("{marker} {}", ed25519_line());
        assert_eq!(
            reject(&line),
            RejectReason::Marker {
                marker: marker.into()
            }
        );
    }
}

#[test]
fn certificate_fixture() {
    assert_eq!(
        reject(&key_line("ed25519-cert.pub")),
        RejectReason::Certificate {
            key_type: "ssh-ed25519-cert-v01@openssh.com".into()
        }
    );
}

#[test]
fn certificate_is_rejected_even_if_allowed() {
    let policy = KeyPolicy {
        allowed_types: vec!["ssh-ed25519-cert-v01@openssh.com".into()],
        ..KeyPolicy::default()
    };
    assert!(matches!(
        reject_with(&key_line("ed25519-cert.pub"), &policy),
        RejectReason::Certificate { .. }
    ));
}

#[test]
fn private_key_header() {
    assert_eq!(
        reject("-----BEGIN OPENSSH PRIVATE KEY-----"),
        RejectReason::PrivateKey
    );
    assert_eq!(
        reject("PuTTY-User-Key-File-3: ssh-ed25519"),
        RejectReason::PrivateKey
    );
}

#[test]
fn private_key_in_one_value() {
    // Not a real key: the body is arbitrary base64 that must not appear in any output.
    let value = "-----BEGIN OPENSSH PRIVATE KEY-----\n\
                 c2VjcmV0LXByaXZhdGUta2V5LW1hdGVyaWFsLTAxMjM0NTY3ODk=\n\
                 -----END OPENSSH PRIVATE KEY-----\n";
    let keys = merge_sources(
        &[Source::values("userPreferences", [value])],
        &KeyPolicy::default(),
    );
    assert_eq!(keys.rejected.len(), 1);
    assert_eq!(keys.rejected[0].reason, RejectReason::PrivateKey);
    let displayed = keys.rejected[0].to_string();
    assert!(!displayed.contains("c2VjcmV0"), "{displayed}");
}

#[test]
fn foreign_formats() {
    assert_eq!(
        reject(&fixture("ed25519.rfc4716")),
        RejectReason::ForeignFormat {
            format: ForeignFormat::Rfc4716
        }
    );
    assert_eq!(
        reject(&fixture("rsa2048.pkcs8")),
        RejectReason::ForeignFormat {
            format: ForeignFormat::Pkcs8
        }
    );
    assert_eq!(
        reject("-----BEGIN RSA PUBLIC KEY-----"),
        RejectReason::ForeignFormat {
            format: ForeignFormat::Pkcs1
        }
    );
    assert_eq!(
        reject("-----BEGIN CERTIFICATE-----"),
        RejectReason::ForeignFormat {
            format: ForeignFormat::OtherPem
        }
    );
}

#[test]
fn key_data_without_type() {
    let data = ed25519_line().split(' ').nth(1).expect("data").to_owned();
    assert_eq!(reject(&data), RejectReason::MissingKeyType);
    assert_eq!(
        reject(&format!("{data} comment")),
        RejectReason::MissingKeyType
    );
}

#[test]
fn dsa_is_always_rejected() {
    assert_eq!(reject(&key_line("dsa.pub")), RejectReason::Dsa);
    assert!(
        reject(&key_line("dsa.pub"))
            .to_string()
            .contains("ssh-keygen -t ed25519")
    );
}

#[test]
fn unknown_type() {
    let reason = reject("ssh-foo AAAAB3NzaC1yc2E comment");
    assert_eq!(
        reason,
        RejectReason::UnsupportedType {
            key_type: "ssh-foo".into(),
            allowed: authkeys::SUPPORTED_TYPES.join(", ")
        }
    );
    assert!(reason.to_string().contains("`ssh-foo`"));
}

#[test]
fn type_outside_allow_list() {
    let policy = KeyPolicy {
        allowed_types: vec!["ssh-ed25519".into()],
        ..KeyPolicy::default()
    };
    for file in ["rsa4096.pub", "ecdsa256.pub", "ed25519_sk.pub"] {
        let line = key_line(file);
        let key_type = line.split(' ').next().expect("type");
        assert_eq!(
            reject_with(&line, &policy),
            RejectReason::UnsupportedType {
                key_type: key_type.into(),
                allowed: "ssh-ed25519".into()
            },
            "{file}"
        );
    }
    assert!(matches!(parse_line(&ed25519_line(), &policy), Ok(Some(_))));
}

#[test]
fn signature_algorithm_as_type() {
    let data = key_line("rsa2048.pub")
        .split(' ')
        .nth(1)
        .expect("data")
        .to_owned();
    assert!(matches!(
        reject(&format!("rsa-sha2-512 {data}")),
        RejectReason::UnsupportedType { ref key_type, .. } if key_type == "rsa-sha2-512"
    ));
}

#[test]
fn type_without_data() {
    for line in ["ssh-ed25519", "ssh-ed25519 \t "] {
        assert_eq!(
            reject(line),
            RejectReason::MissingKeyData {
                key_type: "ssh-ed25519".into()
            }
        );
    }
}

#[test]
fn malformed_base64() {
    for data in ["AAAA$$$$", "AAAAC3NzaC1lZDI1NTE5A=B=", "A"] {
        let reason = reject(&format!("ssh-ed25519 {data} comment"));
        assert!(
            matches!(reason, RejectReason::InvalidBase64 { ref key_type, .. } if key_type == "ssh-ed25519"),
            "{data}: {reason:?}"
        );
    }
}

#[test]
fn declared_type_differs_from_blob() {
    let ed25519_data = ed25519_line().split(' ').nth(1).expect("data").to_owned();
    assert_eq!(
        reject(&format!("ssh-rsa {ed25519_data}")),
        RejectReason::TypeMismatch {
            declared: "ssh-rsa".into(),
            embedded: "ssh-ed25519".into()
        }
    );
    let ecdsa384_data = key_line("ecdsa384.pub")
        .split(' ')
        .nth(1)
        .expect("data")
        .to_owned();
    assert_eq!(
        reject(&format!("ecdsa-sha2-nistp256 {ecdsa384_data}")),
        RejectReason::TypeMismatch {
            declared: "ecdsa-sha2-nistp256".into(),
            embedded: "ecdsa-sha2-nistp384".into()
        }
    );
}

#[test]
fn type_mismatch_quotes_binary_safely() {
    let mut blob = ssh_string(b"ssh-ed25519\x1b[2J");
    blob.extend(ssh_string(&[7; 32]));
    let reason = reject(&line_from_blob("ssh-ed25519", &blob, ""));
    assert_eq!(
        reason,
        RejectReason::TypeMismatch {
            declared: "ssh-ed25519".into(),
            embedded: "ssh-ed25519?[2J".into()
        }
    );
}

#[test]
fn truncated_blob() {
    let blob = fixture_blob("ed25519.pub");
    for length in [3, 10, blob.len() - 1] {
        let line = line_from_blob("ssh-ed25519", &blob[..length], "cut");
        let reason = reject(&line);
        assert!(
            matches!(
                reason,
                RejectReason::InvalidKey { .. } | RejectReason::MissingKeyData { .. }
            ),
            "length {length}: {reason:?}"
        );
    }
}

#[test]
fn blob_with_trailing_bytes() {
    let mut blob = fixture_blob("ed25519.pub");
    blob.extend_from_slice(b"extra");
    assert!(matches!(
        reject(&line_from_blob("ssh-ed25519", &blob, "")),
        RejectReason::InvalidKey { .. }
    ));
}

#[test]
fn ecdsa_point_off_curve() {
    for file in [
        "ecdsa256.pub",
        "ecdsa384.pub",
        "ecdsa521.pub",
        "ecdsa_sk.pub",
    ] {
        let line = key_line(file);
        let key_type = line.split(' ').next().expect("type").to_owned();
        let mut blob = fixture_blob(file);
        // The uncompressed point follows the type and curve names; flip a bit in its
        // y coordinate, which moves the point off the curve.
        let sk_suffix = if file == "ecdsa_sk.pub" { 4 + 4 } else { 0 };
        let last_point_byte = blob.len() - 1 - sk_suffix;
        blob[last_point_byte] ^= 0x01;
        assert_eq!(
            reject(&line_from_blob(&key_type, &blob, "")),
            RejectReason::InvalidKey {
                key_type: key_type.clone(),
                detail: "ECDSA point is not on its curve".into()
            },
            "{file}"
        );
    }
}

#[test]
fn rsa_below_minimum() {
    assert_eq!(
        reject(&key_line("rsa1024.pub")),
        RejectReason::RsaTooSmall {
            bits: 1024,
            min: 2048
        }
    );
}

#[test]
fn rsa_minimum_never_below_openssh_floor() {
    let policy = KeyPolicy {
        min_rsa_bits: 512,
        ..KeyPolicy::default()
    };
    let line = line_from_blob("ssh-rsa", &rsa_blob(768), "small");
    assert_eq!(
        reject_with(&line, &policy),
        RejectReason::RsaTooSmall {
            bits: 768,
            min: 1024
        }
    );
}

#[test]
fn rsa_above_openssh_maximum() {
    let line = line_from_blob("ssh-rsa", &rsa_blob(16392), "huge");
    assert_eq!(
        reject(&line),
        RejectReason::RsaTooLarge {
            bits: 16392,
            max: OPENSSH_MAX_RSA_BITS
        }
    );
    let largest = line_from_blob("ssh-rsa", &rsa_blob(16384), "largest");
    let key = parse_line(&largest, &KeyPolicy::default())
        .expect("16384 bits")
        .expect("key");
    assert_eq!(key.bits(), Some(16384));
}

#[test]
fn too_many_keys() {
    let policy = KeyPolicy {
        max_keys: 2,
        ..KeyPolicy::default()
    };
    let text = [
        key_line("ed25519.pub"),
        key_line("ecdsa256.pub"),
        key_line("ecdsa384.pub"),
        key_line("ed25519.pub"),
    ]
    .join("\n");
    let keys = merge_sources(&[Source::text("inline", text)], &policy);
    assert_eq!(keys.accepted.len(), 2);
    assert_eq!(keys.rejected.len(), 1);
    let rejected = &keys.rejected[0];
    assert_eq!(rejected.origin.line, 3);
    let ecdsa384 = parse_line(&key_line("ecdsa384.pub"), &policy)
        .expect("valid")
        .expect("key");
    assert_eq!(
        rejected.reason,
        RejectReason::TooManyKeys {
            fingerprint: ecdsa384.fingerprint().into(),
            max: 2
        }
    );
    // The repeated first key is a duplicate, not a key over the limit.
    assert_eq!(keys.accepted[0].duplicates.len(), 1);
}

#[test]
fn every_message_names_a_fix() {
    let lines = [
        format!("{} {}", ed25519_line(), "c".repeat(9000)),
        format!("{}\nx", ed25519_line()),
        format!("{}\0", ed25519_line()),
        format!("no-pty {}", ed25519_line()),
        format!("@revoked {}", ed25519_line()),
        key_line("ed25519-cert.pub"),
        "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
        fixture("ed25519.rfc4716"),
        "AAAAC3NzaC1lZDI1NTE5AAAAIJizIKK5bobCr36s3PJE".to_owned(),
        key_line("dsa.pub"),
        "ssh-foo AAAA".to_owned(),
        "ssh-ed25519".to_owned(),
        "ssh-ed25519 $$$".to_owned(),
        format!(
            "ssh-rsa {}",
            ed25519_line().split(' ').nth(1).expect("data")
        ),
        "ssh-ed25519 AAAA".to_owned(),
        key_line("rsa1024.pub"),
        line_from_blob("ssh-rsa", &rsa_blob(16392), ""),
    ];
    for line in lines {
        let message = reject(&line).to_string();
        let (problem, fix) = message
            .split_once(": ")
            .unwrap_or_else(|| panic!("message without a fix: {message}"));
        assert!(!problem.is_empty(), "{message}");
        assert!(fix.len() > 10, "{message}");
    }
}
