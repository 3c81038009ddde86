//! Authentication: authorized_keys read afresh on every attempt, user certificates from a
//! trusted CA, and no method other than public key.

mod common;

use std::process::Stdio;

use common::{Fixture, SecretVolume, Server, generate_key, public_key, run, sign_certificate};

const PRINCIPAL: &str = "alice-0123456789ab";

#[test]
fn key_rotation_takes_effect_without_restart() {
    let mut fixture = Fixture::new();
    let mut server = Server::start(&fixture, &[]);
    let pid = server.pid();
    let second_key = generate_key(fixture.dir.path(), "second_key");

    assert_eq!(
        server.exec(&fixture.user_key, "exit 0").status.code(),
        Some(0)
    );
    assert_ne!(
        server.exec(&second_key, "exit 0").status.code(),
        Some(0),
        "key not yet listed"
    );

    // Add the second key and remove the first one through an atomic ..data swap.
    fixture
        .keys
        .update("authorized_keys", &format!("{}\n", public_key(&second_key)));
    assert_eq!(
        server.exec(&second_key, "exit 0").status.code(),
        Some(0),
        "added key rejected"
    );
    let removed = server.exec(&fixture.user_key, "exit 0");
    assert_ne!(removed.status.code(), Some(0), "removed key still accepted");
    assert!(String::from_utf8_lossy(&removed.stderr).contains("Permission denied"));

    assert!(server.is_running(), "server exited");
    assert_eq!(server.pid(), pid);
}

#[test]
fn malformed_lines_are_ignored() {
    let mut fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let good = public_key(&fixture.user_key);
    let text = format!(
        "# comment\n\
         not a key at all\n\
         ssh-ed25519 !!!notbase64!!!\n\
         ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n\
         \u{0}\u{1}binary\n\
         command=\"/bin/false\" {good}\n\
         \n\
         {good}\n\
         trailing garbage"
    );
    fixture.keys.update("authorized_keys", &text);
    let output = server.exec(&fixture.user_key, "echo ok");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
}

#[test]
fn only_publickey_is_offered() {
    let fixture = Fixture::new();
    let server = Server::start(&fixture, &[]);
    let output = run(server
        .ssh(&fixture.user_key)
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .args(["-o", "PubkeyAuthentication=no"])
        .arg(server.target())
        .arg("true")
        .stdin(Stdio::null()));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
}

#[test]
fn max_auth_tries_disconnects() {
    let fixture = Fixture::new();
    let keys: Vec<_> = (0..4)
        .map(|index| generate_key(fixture.dir.path(), &format!("k{index}")))
        .collect();
    // Four unknown keys, then the authorized one: the fifth attempt comes too late with a limit
    // of two, and in time with the default limit of six.
    let attempt = |server: &Server| {
        let mut command = server.ssh(&keys[0]);
        for key in keys.iter().skip(1).chain([&fixture.user_key]) {
            command.arg("-i").arg(key);
        }
        run(command
            .arg(server.target())
            .arg("true")
            .stdin(Stdio::null()))
    };

    let strict = Server::start(&fixture, &["--max-auth-tries", "2"]);
    let output = attempt(&strict);
    assert!(
        !output.status.success(),
        "login succeeded past MaxAuthTries"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Too many authentication"), "{stderr}");
    drop(strict);

    let default = Server::start(&fixture, &[]);
    let output = attempt(&default);
    assert!(
        output.status.success(),
        "login failed within MaxAuthTries: {output:?}"
    );
}

/// Fixture with a trusted CA, an untrusted CA, and a user key that is not in authorized_keys.
struct CertificateSetup {
    fixture: Fixture,
    server: Server,
    trusted_ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
    user_key: std::path::PathBuf,
    _ca_volume: SecretVolume,
}

impl CertificateSetup {
    fn new() -> Self {
        let fixture = Fixture::new();
        let trusted_ca = generate_key(fixture.dir.path(), "trusted_ca");
        let other_ca = generate_key(fixture.dir.path(), "other_ca");
        let user_key = generate_key(fixture.dir.path(), "cert_user");
        let ca_volume = SecretVolume::create(
            &fixture.path("ca"),
            "trusted_user_ca_keys",
            &format!("# gateway CA\n{}\n", public_key(&trusted_ca)),
        );
        let ca_path = ca_volume.path("trusted_user_ca_keys");
        let ca_argument = ca_path.to_string_lossy().into_owned();
        let server = Server::start(
            &fixture,
            &[
                "--trusted-user-ca-keys",
                &ca_argument,
                "--principal",
                PRINCIPAL,
            ],
        );
        Self {
            fixture,
            server,
            trusted_ca,
            other_ca,
            user_key,
            _ca_volume: ca_volume,
        }
    }

    /// Logs in with `certificate` and its key; returns the exit code of `exit 0`.
    fn login(&self, certificate: &std::path::Path) -> std::process::Output {
        run(self
            .server
            .ssh(&self.user_key)
            .arg("-o")
            .arg(format!("CertificateFile={}", certificate.display()))
            .arg(self.server.target())
            .arg("exit 0")
            .stdin(Stdio::null()))
    }

    fn sign(&self, ca: &std::path::Path, principals: &str, validity: &str) -> std::path::PathBuf {
        let certificate =
            sign_certificate(ca, &self.user_key, "test-identity", principals, validity);
        let renamed = self
            .fixture
            .path(&format!("cert-{}.pub", principals.replace(',', "_")));
        let unique = if renamed.exists() {
            self.fixture.path(&format!(
                "cert-{}-{}.pub",
                principals,
                validity.replace(':', "_")
            ))
        } else {
            renamed
        };
        std::fs::rename(&certificate, &unique).expect("rename certificate");
        unique
    }
}

#[test]
fn certificate_from_trusted_ca_is_accepted() {
    let setup = CertificateSetup::new();
    let certificate = setup.sign(&setup.trusted_ca, PRINCIPAL, "-5m:+1h");
    let output = setup.login(&certificate);
    if !output.status.success() {
        setup.server.print_log();
    }
    assert!(output.status.success(), "{output:?}");
    let logged = setup.server.log().iter().any(|line| {
        line.contains("\"authenticated\"")
            && line.contains("test-identity")
            && line.contains("\"serial\":42")
    });
    assert!(logged, "authentication log lacks key id and serial");
}

#[test]
fn certificate_from_other_ca_is_refused() {
    let setup = CertificateSetup::new();
    let certificate = setup.sign(&setup.other_ca, PRINCIPAL, "-5m:+1h");
    assert!(!setup.login(&certificate).status.success());
    assert!(
        setup
            .server
            .log()
            .iter()
            .any(|line| line.contains("not a trusted CA"))
    );
}

#[test]
fn expired_certificate_is_refused() {
    let setup = CertificateSetup::new();
    let certificate = setup.sign(&setup.trusted_ca, PRINCIPAL, "20200101:20200102");
    assert!(!setup.login(&certificate).status.success());
}

#[test]
fn certificate_with_wrong_principal_is_refused() {
    let setup = CertificateSetup::new();
    let certificate = setup.sign(&setup.trusted_ca, "someone-else", "-5m:+1h");
    assert!(!setup.login(&certificate).status.success());
    assert!(
        setup
            .server
            .log()
            .iter()
            .any(|line| line.contains("do not include"))
    );
}

#[test]
fn certificate_with_unknown_critical_option_is_refused() {
    let setup = CertificateSetup::new();
    let public = format!("{}.pub", setup.user_key.display());
    let output = run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&setup.trusted_ca)
        .args([
            "-I",
            "verify",
            "-n",
            PRINCIPAL,
            "-V",
            "-5m:+1h",
            "-O",
            "verify-required",
        ])
        .arg(&public));
    assert!(output.status.success(), "{output:?}");
    let certificate = std::path::PathBuf::from(format!("{}-cert.pub", setup.user_key.display()));
    assert!(!setup.login(&certificate).status.success());
    assert!(
        setup
            .server
            .log()
            .iter()
            .any(|line| line.contains("unsupported critical option"))
    );
}

#[test]
fn certificate_force_command_and_restrictions_apply() {
    let setup = CertificateSetup::new();
    let public = format!("{}.pub", setup.user_key.display());
    let output = run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&setup.trusted_ca)
        .args(["-I", "forced", "-n", PRINCIPAL, "-V", "-5m:+1h"])
        .args([
            "-O",
            "force-command=echo forced:$SSH_ORIGINAL_COMMAND",
            "-O",
            "no-pty",
        ])
        .arg(&public));
    assert!(output.status.success(), "{output:?}");
    let certificate = std::path::PathBuf::from(format!("{}-cert.pub", setup.user_key.display()));
    let output = run(setup
        .server
        .ssh(&setup.user_key)
        .arg("-o")
        .arg(format!("CertificateFile={}", certificate.display()))
        .arg(setup.server.target())
        .arg("original")
        .stdin(Stdio::null()));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "forced:original\n",
        "{output:?}"
    );
}
