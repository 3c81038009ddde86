//! Random and mutated lines: parsing never panics and every accepted key re-serialises to a
//! line that parses back to the same key.

mod common;

use authkeys::{KeyPolicy, PREVIEW_CHARS, Source, merge_sources, parse_line};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{ACCEPTED_FIXTURES, key_line, ssh_string};

/// Number of generated lines; each case runs in microseconds.
const CASES: usize = 30_000;

/// xorshift64*: a small deterministic generator, so a failure repeats with the same seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FRAGMENTS: [&str; 24] = [
    " ",
    "\t",
    "\"",
    "\\",
    ",",
    "=",
    "#",
    "@",
    "\n",
    "\r",
    "\0",
    "\u{1b}",
    "\u{202E}",
    "\u{FEFF}",
    "é",
    "☕",
    "ssh-ed25519",
    "ssh-rsa",
    "-cert-v01@openssh.com",
    "no-pty",
    "command=\"x\"",
    "AAAA",
    "-----BEGIN ",
    "PRIVATE KEY-----",
];

const TYPES: [&str; 9] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
];

/// Builds a string of random code points, including controls and private-use ones.
fn random_text(random: &mut Random) -> String {
    let length = random.below(120);
    (0..length)
        .map(|_| match random.below(4) {
            0 => char::from(random.below(0x80) as u8),
            1 => char::from_u32(random.below(0x3000) as u32).unwrap_or('?'),
            2 => char::from_u32(random.below(0x11_0000) as u32).unwrap_or('?'),
            _ => ' ',
        })
        .collect()
}

/// Applies random edits to a fixture line: replaced, deleted, duplicated or inserted pieces.
fn mutated_fixture(random: &mut Random) -> String {
    let (file, _) = random.pick(&ACCEPTED_FIXTURES);
    let mut line: Vec<char> = key_line(file).chars().collect();
    for _ in 0..=random.below(4) {
        if line.is_empty() {
            break;
        }
        let position = random.below(line.len());
        match random.below(4) {
            0 => line[position] = char::from(random.below(0x80) as u8),
            1 => {
                let end = (position + random.below(16)).min(line.len());
                line.drain(position..end);
            }
            2 => {
                let fragment = random.pick(&FRAGMENTS);
                for (offset, character) in fragment.chars().enumerate() {
                    line.insert(position + offset, character);
                }
            }
            _ => {
                let end = (position + random.below(16)).min(line.len());
                let copy: Vec<char> = line[position..end].to_vec();
                line.splice(position..position, copy);
            }
        }
    }
    line.into_iter().collect()
}

/// Builds a line with a valid type and a structured but random blob, so the key decoders run.
fn random_blob_line(random: &mut Random) -> String {
    let declared = *random.pick(&TYPES);
    let embedded = if random.below(4) == 0 {
        *random.pick(&TYPES)
    } else {
        declared
    };
    let mut blob = ssh_string(embedded.as_bytes());
    for _ in 0..random.below(4) {
        let length = random.below(80);
        let field = random.bytes(length);
        if random.below(3) == 0 {
            blob.extend(field);
        } else {
            blob.extend(ssh_string(&field));
        }
    }
    format!("{declared} {} comment", STANDARD.encode(&blob))
}

fn random_line(random: &mut Random) -> String {
    match random.below(5) {
        0 => random_text(random),
        1 | 2 => mutated_fixture(random),
        3 => random_blob_line(random),
        _ => (0..random.below(8))
            .map(|_| *random.pick(&FRAGMENTS))
            .collect(),
    }
}

#[test]
fn random_lines_never_panic() {
    let policy = KeyPolicy::default();
    let mut random = Random(0x5EED_1234_ABCD_0001);
    let mut accepted = 0;
    for case in 0..CASES {
        let line = random_line(&mut random);
        let Ok(Some(key)) = parse_line(&line, &policy) else {
            continue;
        };
        accepted += 1;
        let normalised = key.to_string();
        assert!(
            !normalised.chars().any(char::is_control),
            "case {case}: control character in {normalised:?} from {line:?}"
        );
        let reparsed = parse_line(&normalised, &policy)
            .unwrap_or_else(|reason| panic!("case {case}: {normalised:?} rejected: {reason}"))
            .expect("normalised line is a key");
        assert_eq!(reparsed, key, "case {case}: {line:?}");
    }
    // Mutations that only touch the comment keep the key valid, so some lines must pass.
    assert!(
        accepted > 100,
        "only {accepted} of {CASES} random lines were accepted"
    );
}

/// Policies that fail `KeyPolicy::validate`, which the parser must still survive.
fn invalid_policies() -> Vec<KeyPolicy> {
    vec![
        KeyPolicy {
            allowed_types: vec![],
            ..KeyPolicy::default()
        },
        KeyPolicy {
            allowed_types: vec![
                "ssh-dss".into(),
                "ssh-xmss@openssh.com".into(),
                "ssh-ed25519-cert-v01@openssh.com".into(),
                "x".into(),
                String::new(),
            ],
            ..KeyPolicy::default()
        },
        KeyPolicy {
            min_rsa_bits: 0,
            max_comment_length: 0,
            ..KeyPolicy::default()
        },
        KeyPolicy {
            min_rsa_bits: u32::MAX,
            max_line_length: 0,
            max_keys: 0,
            ..KeyPolicy::default()
        },
    ]
}

#[test]
fn invalid_policies_never_panic() {
    let policies = invalid_policies();
    let mut random = Random(0x5EED_1234_ABCD_0003);
    for _ in 0..CASES / 3 {
        let line = random_line(&mut random);
        let policy = random.pick(&policies);
        if let Ok(Some(key)) = parse_line(&line, policy) {
            assert!(!key.to_string().chars().any(char::is_control), "{line:?}");
        }
        let keys = merge_sources(&[Source::values("values", [line])], policy);
        assert!(keys.accepted.len() <= policy.max_keys);
    }
}

#[test]
fn random_texts_merge_without_panic() {
    let policy = KeyPolicy {
        max_keys: 5,
        ..KeyPolicy::default()
    };
    let mut random = Random(0x5EED_1234_ABCD_0002);
    for case in 0..CASES / 20 {
        let text: String = (0..random.below(20))
            .map(|_| random_line(&mut random) + if random.below(2) == 0 { "\n" } else { "\r\n" })
            .collect();
        let values: Vec<String> = (0..random.below(6))
            .map(|_| random_line(&mut random))
            .collect();
        let keys = merge_sources(
            &[Source::text("text", text), Source::values("values", values)],
            &policy,
        );

        assert!(keys.accepted.len() <= 5, "case {case}");
        for rejected in &keys.rejected {
            assert!(
                rejected.preview.chars().count() <= PREVIEW_CHARS,
                "case {case}: {rejected}"
            );
            assert!(
                !rejected.preview.chars().any(char::is_control),
                "case {case}: {rejected}"
            );
            assert!(
                !rejected.to_string().contains('\n'),
                "case {case}: {rejected}"
            );
        }
        let rendered = keys.render();
        assert!(rendered.ends_with('\n'));
        let reread = authkeys::read_authorized_keys("rendered", &rendered, &policy);
        assert!(
            reread.rejected.is_empty(),
            "case {case}: {:?}",
            reread.rejected
        );
        assert_eq!(reread.accepted.len(), keys.accepted.len(), "case {case}");
    }
}
