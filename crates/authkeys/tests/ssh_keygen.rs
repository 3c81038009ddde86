//! Checks against the real ssh-keygen (package openssh-client, see scripts/install-deps.sh):
//! files rendered by this crate are read by OpenSSH with the same fingerprints, and keys
//! generated now parse to the fingerprints ssh-keygen prints.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use authkeys::{KeyPolicy, Source, merge_sources, parse_line};
use common::{ACCEPTED_FIXTURES, key_line};

/// Creates an empty directory under Cargo's temporary directory for integration tests.
fn scratch_directory(name: &str) -> PathBuf {
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("create scratch directory");
    directory
}

/// Runs ssh-keygen and returns its standard output, failing with a hint if it is missing.
fn ssh_keygen(arguments: &[&str]) -> String {
    let output = Command::new("ssh-keygen").args(arguments).output().unwrap_or_else(|error| {
        panic!("cannot run ssh-keygen ({error}): install openssh-client with scripts/install-deps.sh")
    });
    assert!(
        output.status.success(),
        "ssh-keygen {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("ssh-keygen prints UTF-8")
}

/// Fingerprints (second field) of each line of `ssh-keygen -lf path`.
fn fingerprints_of_file(path: &Path) -> Vec<String> {
    ssh_keygen(&["-lf", path.to_str().expect("UTF-8 path")])
        .lines()
        .map(|line| {
            line.split(' ')
                .nth(1)
                .expect("fingerprint field")
                .to_owned()
        })
        .collect()
}

#[test]
fn rendered_file_reads_in_ssh_keygen() {
    let lines: Vec<String> = ACCEPTED_FIXTURES
        .iter()
        .map(|(file, _)| format!("{}  \u{200B}edited\tcomment ", key_line(file)))
        .collect();
    let keys = merge_sources(&[Source::values("fixtures", lines)], &KeyPolicy::default());
    assert_eq!(
        keys.accepted.len(),
        ACCEPTED_FIXTURES.len(),
        "{:?}",
        keys.rejected
    );

    let directory = scratch_directory("rendered_file_reads_in_ssh_keygen");
    let path = directory.join("authorized_keys");
    std::fs::write(&path, keys.render()).expect("write authorized_keys");

    let ours: Vec<String> = keys
        .keys()
        .map(|key| key.fingerprint().to_owned())
        .collect();
    assert_eq!(fingerprints_of_file(&path), ours);
}

#[test]
fn fresh_keys_match_ssh_keygen() {
    let directory = scratch_directory("fresh_keys_match_ssh_keygen");
    let cases: [(&str, &[&str]); 4] = [
        ("ed25519", &["-t", "ed25519"]),
        ("rsa3072", &["-t", "rsa", "-b", "3072"]),
        ("ecdsa384", &["-t", "ecdsa", "-b", "384"]),
        ("ecdsa521", &["-t", "ecdsa", "-b", "521"]),
    ];
    for (name, type_arguments) in cases {
        let private_path = directory.join(name);
        let private = private_path.to_str().expect("UTF-8 path");
        let mut arguments = vec!["-q", "-N", "", "-C", "fresh key", "-f", private];
        arguments.extend_from_slice(type_arguments);
        ssh_keygen(&arguments);

        let public_path = directory.join(format!("{name}.pub"));
        let line = std::fs::read_to_string(&public_path).expect("read public key");
        let key = parse_line(line.trim_end(), &KeyPolicy::default())
            .unwrap_or_else(|reason| panic!("{name}: {reason}"))
            .expect("key line");

        let listed = ssh_keygen(&["-lf", public_path.to_str().expect("UTF-8 path")]);
        let mut fields = listed.split(' ');
        let bits: u32 = fields.next().expect("bits").parse().expect("numeric bits");
        assert_eq!(key.bits(), Some(bits), "{name}");
        assert_eq!(Some(key.fingerprint()), fields.next(), "{name}");
        assert_eq!(key.comment(), Some("fresh key"), "{name}");
        assert_eq!(key.to_string(), line.trim_end(), "{name}");
    }
}
