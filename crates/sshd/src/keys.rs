//! Lenient readers for `authorized_keys` and `TrustedUserCAKeys`-style files.
//!
//! Kept behind this small interface so that the shared `authkeys` crate can replace it.
//! NOTE: key lines with options (`command=`, `from=`, ...) and `@cert-authority` markers are
//! skipped rather than honoured, because the operator writes option-free lines and ignoring an
//! option would grant more than its author intended.

use std::io;
use std::path::Path;

use russh::keys::PublicKey;
use tracing::debug;

/// Reads a key file afresh. A missing file yields an empty text, since Kubernetes mounts the
/// Secret as optional and it may not exist yet.
pub fn read_key_file(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(error),
    }
}

/// Parses the text of an `authorized_keys` file into public keys, skipping blank lines,
/// comments and every line that does not parse (each logged at debug level with its number).
pub fn parse_authorized_keys(text: &str, source: &Path) -> Vec<PublicKey> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_key_line(line) {
            Ok(key) => keys.push(key),
            Err(reason) => debug!(
                file = %source.display(),
                line = index + 1,
                reason,
                "ignoring key line"
            ),
        }
    }
    keys
}

/// Parses one `type base64 [comment]` line.
fn parse_key_line(line: &str) -> Result<PublicKey, &'static str> {
    if line.starts_with('@') {
        return Err("marker lines (@cert-authority, @revoked) are not supported");
    }
    let key_type = line.split_whitespace().next().unwrap_or_default();
    if key_type.contains("-cert-v01@openssh.com") {
        return Err("a certificate is not a key");
    }
    if !looks_like_key_type(key_type) {
        return Err("line starts with options or an unknown key type");
    }
    PublicKey::from_openssh(line).map_err(|_| "invalid key encoding")
}

fn looks_like_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICLN1861CxGu7Uwamm+/hNX5u1OYMbzmCZECxk2IEz8I one";
    const ED25519_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRGVxCyuIX/F6PzHbZdjRD2iGxd+nBKd4fAD6YhVo0n two";

    #[test]
    fn parses_good_lines_and_skips_bad_ones() {
        let text = format!(
            "# comment\n\n{ED25519}\ngarbage line\nssh-ed25519 AAAAnotbase64!!\n\
             command=\"ls\" {ED25519_B}\n@cert-authority {ED25519_B}\n  {ED25519_B}  \n"
        );
        let keys = parse_authorized_keys(&text, Path::new("test"));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].comment().to_string(), "one");
        assert_eq!(keys[1].comment().to_string(), "two");
    }

    #[test]
    fn rejects_certificate_lines() {
        let line = "ssh-ed25519-cert-v01@openssh.com AAAA x";
        assert!(parse_key_line(line).is_err());
    }

    #[test]
    fn missing_file_reads_as_empty() {
        let text = read_key_file(Path::new("/nonexistent/renku-sshd/keys")).expect("read");
        assert!(text.is_empty());
    }
}
