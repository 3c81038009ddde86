//! Merging of several key sources: deduplication, limits, order, previews and rendering.

mod common;

use authkeys::{
    KeyPolicy, LineRef, PREVIEW_CHARS, RENDERED_HEADER, RejectReason, Source, merge_sources,
    parse_line, read_authorized_keys,
};
use common::{fixture, key_line};

fn at(source: &str, line: usize) -> LineRef {
    LineRef {
        source: source.into(),
        line,
    }
}

fn fingerprint_of(file: &str) -> String {
    parse_line(&key_line(file), &KeyPolicy::default())
        .expect("valid fixture")
        .expect("key line")
        .fingerprint()
        .to_owned()
}

#[test]
fn bad_line_keeps_good_neighbours() {
    let text = [
        key_line("ed25519.pub"),
        format!("no-pty {}", key_line("ecdsa256.pub")),
        key_line("rsa1024.pub"),
        "garbage".to_owned(),
        key_line("ecdsa384.pub"),
    ]
    .join("\n");
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());

    let accepted: Vec<_> = keys.accepted.iter().map(|key| key.origin.clone()).collect();
    assert_eq!(accepted, vec![at("inline", 1), at("inline", 5)]);
    let rejected: Vec<_> = keys
        .rejected
        .iter()
        .map(|line| (line.origin.line, line.reason.code()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (2, "OptionsNotSupported"),
            (3, "RsaKeyTooSmall"),
            (4, "UnsupportedType")
        ]
    );
}

#[test]
fn first_source_wins_duplicates() {
    let ed25519 = key_line("ed25519.pub");
    let renamed = ed25519.replace("ed25519@fixture", "renamed copy");
    let sources = [
        Source::values(
            "userPreferences",
            [ed25519.clone(), key_line("ecdsa256.pub")],
        ),
        Source::text("secret/alice-keys", format!("# keys\n{renamed}\n")),
        Source::text(
            "inline",
            format!("{}\n{ed25519}\n", key_line("rsa2048.pub")),
        ),
    ];
    let keys = merge_sources(&sources, &KeyPolicy::default());

    assert_eq!(keys.accepted.len(), 3);
    let first = &keys.accepted[0];
    assert_eq!(first.origin, at("userPreferences", 1));
    assert_eq!(first.key.comment(), Some("ed25519@fixture"));
    assert_eq!(
        first.duplicates,
        vec![at("secret/alice-keys", 2), at("inline", 2)]
    );
    assert!(keys.rejected.is_empty(), "{:?}", keys.rejected);
}

#[test]
fn order_follows_sources_then_lines() {
    let sources = [
        Source::text(
            "b",
            format!("{}\n{}", key_line("ecdsa521.pub"), key_line("ecdsa256.pub")),
        ),
        Source::values("a", [key_line("ed25519.pub")]),
    ];
    let keys = merge_sources(&sources, &KeyPolicy::default());
    let fingerprints: Vec<_> = keys
        .keys()
        .map(|key| key.fingerprint().to_owned())
        .collect();
    assert_eq!(
        fingerprints,
        vec![
            fingerprint_of("ecdsa521.pub"),
            fingerprint_of("ecdsa256.pub"),
            fingerprint_of("ed25519.pub")
        ]
    );
    let again = merge_sources(&sources, &KeyPolicy::default());
    assert_eq!(keys, again);
}

#[test]
fn line_numbers_count_blank_and_comment_lines() {
    let text = format!("\n# comment\n\n   \n{}\nbad\n", key_line("ed25519.pub"));
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());
    assert_eq!(keys.accepted[0].origin.line, 5);
    assert_eq!(keys.rejected[0].origin.line, 6);
    assert_eq!(keys.rejected.len(), 1);
}

#[test]
fn crlf_text_is_accepted() {
    let text = format!(
        "{}\r\n{}\r\n",
        key_line("ed25519.pub"),
        key_line("ecdsa256.pub")
    );
    let keys = merge_sources(
        &[Source::text("secret/windows", text)],
        &KeyPolicy::default(),
    );
    assert_eq!(keys.accepted.len(), 2);
    assert!(keys.rejected.is_empty(), "{:?}", keys.rejected);
}

#[test]
fn byte_order_mark_is_ignored() {
    let text = format!("\u{FEFF}{}\n", key_line("ed25519.pub"));
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());
    assert_eq!(keys.accepted.len(), 1);
}

#[test]
fn value_with_trailing_newline_is_accepted() {
    let values = [
        format!("{}\n", key_line("ed25519.pub")),
        format!("{}\r\n", key_line("ecdsa256.pub")),
    ];
    let keys = merge_sources(
        &[Source::values("userPreferences", values)],
        &KeyPolicy::default(),
    );
    assert_eq!(keys.accepted.len(), 2);
}

#[test]
fn value_with_two_lines_is_rejected_whole() {
    let value = format!("{}\n{}", key_line("ed25519.pub"), key_line("ecdsa256.pub"));
    let keys = merge_sources(
        &[Source::values("userPreferences", [value])],
        &KeyPolicy::default(),
    );
    assert!(keys.accepted.is_empty());
    assert_eq!(keys.rejected[0].reason.code(), "LineBreak");
}

#[test]
fn blocks_are_reported_once() {
    let text = [
        fixture("ed25519.rfc4716").trim_end().to_owned(),
        fixture("rsa2048.pkcs8").trim_end().to_owned(),
        "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
        "c2VjcmV0LXByaXZhdGUta2V5LW1hdGVyaWFsLTAxMjM0NTY3ODk=".to_owned(),
        "-----END OPENSSH PRIVATE KEY-----".to_owned(),
        key_line("ed25519.pub"),
    ]
    .join("\n");
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());

    let rejected: Vec<_> = keys
        .rejected
        .iter()
        .map(|line| (line.origin.line, line.reason.code()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "ForeignFormat"),
            (5, "ForeignFormat"),
            (14, "PrivateKey")
        ]
    );
    assert_eq!(keys.accepted.len(), 1);
    assert_eq!(keys.accepted[0].origin.line, 17);
}

#[test]
fn unterminated_block_ends_at_key_line() {
    let text = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1ib2R5LTAxMjM0NTY3\n{}\n",
        key_line("ed25519.pub")
    );
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());
    assert_eq!(keys.rejected.len(), 1);
    assert_eq!(keys.accepted.len(), 1);
    assert_eq!(keys.accepted[0].origin.line, 3);
}

#[test]
fn putty_private_key_is_swallowed() {
    // Layout of a PuTTY .ppk file; the base64 lines are placeholders, not a key.
    let text = format!(
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: laptop\nPublic-Lines: 2\n\
         cHVibGljLXBhcnQtcGxhY2Vob2xkZXItMDEyMzQ1Njc4OQ==\ncHVibGljLXBhcnQtdHdv\n\
         Private-Lines: 1\nc2VjcmV0LXByaXZhdGUtcGxhY2Vob2xkZXItMDEyMzQ1\n\
         Private-MAC: 0123456789abcdef\n{}\n",
        key_line("ecdsa256.pub")
    );
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());
    assert_eq!(keys.rejected.len(), 1, "{:?}", keys.rejected);
    assert_eq!(keys.rejected[0].reason, RejectReason::PrivateKey);
    assert_eq!(keys.accepted.len(), 1);
    assert_eq!(keys.accepted[0].origin.line, 10);
}

#[test]
fn previews_are_short_and_safe() {
    let secret_base64 = "c2VjcmV0LXByaXZhdGUta2V5LW1hdGVyaWFsLTAxMjM0NTY3ODk";
    let values = [
        format!("{} {}", key_line("ed25519.pub"), "x".repeat(9000)),
        format!(r#"environment="TOKEN=hunter2" {}"#, key_line("ed25519.pub")),
        format!("{secret_base64} trailing"),
        "ssh-ed25519 AAAA\u{1b}[31m red".to_owned(),
        format!("ssh-ed25519\tAAAA\0{}", "é".repeat(60)),
    ];
    let keys = merge_sources(&[Source::values("v", values)], &KeyPolicy::default());
    assert_eq!(keys.rejected.len(), 5);
    for rejected in &keys.rejected {
        let preview = &rejected.preview;
        assert!(preview.chars().count() <= PREVIEW_CHARS, "{preview}");
        assert!(!preview.chars().any(char::is_control), "{preview:?}");
        assert!(!preview.contains("hunter2"), "{preview}");
        assert!(!preview.contains("c2VjcmV0"), "{preview}");
        let displayed = rejected.to_string();
        assert!(!displayed.contains("hunter2"), "{displayed}");
        assert!(!displayed.contains("c2VjcmV0"), "{displayed}");
    }
    assert!(keys.rejected[0].preview.starts_with("ssh-ed25519 AAAA"));
    assert!(
        keys.rejected[1]
            .preview
            .starts_with("[options] ssh-ed25519")
    );
    assert_eq!(keys.rejected[3].preview, "ssh-ed25519 AAAA?[31m red");
}

#[test]
fn rejected_line_display_names_origin() {
    let keys = merge_sources(
        &[Source::values("secret/keys", ["ssh-foo AAAA"])],
        &KeyPolicy::default(),
    );
    let displayed = keys.rejected[0].to_string();
    assert!(
        displayed.starts_with("secret/keys:1 (ssh-foo AAAA): key type `ssh-foo`"),
        "{displayed}"
    );
}

#[test]
fn render_writes_header_and_lines() {
    let sources = [Source::values(
        "userPreferences",
        [
            format!("{}   spaced \u{202E}comment  ", key_line("ed25519.pub")),
            key_line("ecdsa256.pub"),
            key_line("rsa1024.pub"),
        ],
    )];
    let keys = merge_sources(&sources, &KeyPolicy::default());
    let ed25519_normalised =
        key_line("ed25519.pub").replace("ed25519@fixture", "ed25519@fixture spaced comment");
    let expected = format!(
        "{RENDERED_HEADER}\n{ed25519_normalised}\n{}\n",
        key_line("ecdsa256.pub")
    );
    assert_eq!(keys.render(), expected);
}

#[test]
fn render_of_no_keys_is_header() {
    let keys = merge_sources(&[], &KeyPolicy::default());
    assert_eq!(keys.render(), format!("{RENDERED_HEADER}\n"));
}

#[test]
fn rendered_file_reads_back() {
    let text: String = common::ACCEPTED_FIXTURES
        .iter()
        .map(|(file, _)| format!("{}\n", key_line(file)))
        .collect();
    let keys = merge_sources(&[Source::text("inline", text)], &KeyPolicy::default());
    let rendered = keys.render();
    let read = read_authorized_keys("authorized_keys", &rendered, &KeyPolicy::default());
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    let written: Vec<_> = keys.keys().collect();
    let reread: Vec<_> = read.keys().collect();
    assert_eq!(written, reread);
    assert_eq!(read.render(), rendered);
}

#[test]
fn comment_is_bounded() {
    let policy = KeyPolicy {
        max_comment_length: 10,
        ..KeyPolicy::default()
    };
    let line = format!(
        "{} 0123456789abcdef",
        key_line("ed25519.pub")
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let key = parse_line(&line, &policy).expect("valid").expect("key");
    assert_eq!(key.comment(), Some("0123456789"));
}

#[test]
fn find_by_fingerprint_and_key() {
    let keys = merge_sources(
        &[Source::values(
            "v",
            [key_line("ed25519.pub"), key_line("ecdsa256.pub")],
        )],
        &KeyPolicy::default(),
    );
    let fingerprint = fingerprint_of("ecdsa256.pub");
    let found = keys
        .find_by_fingerprint(&fingerprint)
        .expect("ecdsa256 accepted");
    assert_eq!(found.origin, at("v", 2));
    assert!(keys.find_by_fingerprint("SHA256:missing").is_none());

    let offered = russh::keys::PublicKey::from_openssh(&key_line("ed25519.pub")).expect("key");
    assert_eq!(
        keys.find_public_key(&offered).map(|key| key.origin.line),
        Some(1)
    );
    let other = russh::keys::PublicKey::from_openssh(&key_line("ecdsa384.pub")).expect("key");
    assert!(keys.find_public_key(&other).is_none());
}

#[test]
fn default_limit_is_one_hundred() {
    let lines: Vec<String> = (0..105u8)
        .map(|index| {
            let mut blob = common::ssh_string(b"ssh-ed25519");
            blob.extend(common::ssh_string(&[index; 32]));
            common::line_from_blob("ssh-ed25519", &blob, &format!("key{index}"))
        })
        .collect();
    let keys = merge_sources(&[Source::values("v", lines)], &KeyPolicy::default());
    assert_eq!(keys.accepted.len(), 100);
    assert_eq!(keys.rejected.len(), 5);
    assert!(
        keys.rejected
            .iter()
            .all(|line| line.reason.code() == "TooManyKeys")
    );
    assert_eq!(keys.rejected[0].origin.line, 101);
}
