//! The committed CRD YAML matches the Rust types, and `crdgen` writes and checks it.

use std::path::Path;
use std::process::Command;

use api::crd_files::{self, CrdFileError, REGENERATE_COMMAND};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const EXPECTED_FILES: [&str; 2] = [
    "ssh.renku.io_sshaccesses.yaml",
    "amalthea.dev_amaltheasessions.yaml",
];

#[test]
fn committed_crds_are_current() {
    let dir = crd_files::default_dir();

    if let Err(error) = crd_files::check(&dir) {
        panic!("{error}");
    }
}

#[test]
fn generated_file_names() {
    let files = crd_files::generate().expect("CRDs render");

    let names: Vec<&str> = files.iter().map(|file| file.file_name.as_str()).collect();
    assert_eq!(names, EXPECTED_FILES);
}

#[test]
fn committed_files_parse_as_crds() {
    let dir = crd_files::default_dir();

    for (name, expected) in EXPECTED_FILES.iter().zip(crd_files::crds()) {
        let text = std::fs::read_to_string(dir.join(name)).expect("committed CRD file exists");
        let parsed: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(parsed, expected, "{name} differs from the Rust types");
    }
}

#[test]
fn generation_is_deterministic() {
    let first = crd_files::generate().expect("CRDs render");
    let second = crd_files::generate().expect("CRDs render");

    assert_eq!(first, second);
}

#[test]
fn check_names_stale_and_missing_files() {
    let dir = tempfile::tempdir().expect("temporary folder");
    crd_files::write_all(dir.path()).expect("writes CRDs");
    let stale = dir.path().join(EXPECTED_FILES[0]);
    let edited = std::fs::read_to_string(&stale).expect("reads") + "# edited by hand\n";
    std::fs::write(&stale, edited).expect("writes");
    std::fs::remove_file(dir.path().join(EXPECTED_FILES[1])).expect("removes");

    let error = crd_files::check(dir.path()).expect_err("stale files are found");

    let CrdFileError::Stale { files, .. } = &error else {
        panic!("expected a Stale error, got {error}");
    };
    assert_eq!(files, &EXPECTED_FILES);
    let message = error.to_string();
    assert!(message.contains(REGENERATE_COMMAND), "{message}");
}

#[test]
fn write_all_skips_current_files() {
    let dir = tempfile::tempdir().expect("temporary folder");

    let first = crd_files::write_all(dir.path()).expect("writes CRDs");
    let second = crd_files::write_all(dir.path()).expect("writes CRDs");

    assert_eq!(first.len(), 2);
    assert!(second.is_empty(), "rewrote {second:?}");
    crd_files::check(dir.path()).expect("written files are current");
}

fn crdgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .args(args)
        .output()
        .expect("crdgen runs")
}

fn dir_argument(dir: &Path) -> &str {
    dir.to_str().expect("temporary path is UTF-8")
}

#[test]
fn crdgen_writes_then_checks() {
    let dir = tempfile::tempdir().expect("temporary folder");

    let write = crdgen(&[dir_argument(dir.path())]);
    let check = crdgen(&["--check", dir_argument(dir.path())]);

    assert!(
        write.status.success(),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    for name in EXPECTED_FILES {
        assert!(dir.path().join(name).is_file(), "{name} not written");
    }
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn crdgen_check_fails_on_stale_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    crd_files::write_all(dir.path()).expect("writes CRDs");
    std::fs::write(dir.path().join(EXPECTED_FILES[1]), "kind: Outdated\n").expect("writes");

    let check = crdgen(&["--check", dir_argument(dir.path())]);

    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains(EXPECTED_FILES[1]), "{stderr}");
    assert!(!stderr.contains(EXPECTED_FILES[0]), "{stderr}");
    assert!(stderr.contains(REGENERATE_COMMAND), "{stderr}");
    let unchanged = std::fs::read_to_string(dir.path().join(EXPECTED_FILES[1])).expect("reads");
    assert_eq!(unchanged, "kind: Outdated\n", "--check must not write");
}

#[test]
fn crdgen_rejects_unknown_option() {
    let run = crdgen(&["--chek"]);

    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("unknown option \"--chek\""));
}
