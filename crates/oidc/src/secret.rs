//! A string that must never reach logs: client secrets, device codes and tokens.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::Error;

/// A secret string whose `Debug` output is redacted.
///
/// It has no `Display` implementation, so `format!("{}")` and `tracing` field capture with `%`
/// do not compile. The value is reachable only through [`Secret::expose`], which makes every
/// place that reads it easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file, such as a mounted Kubernetes Secret, without the trailing
    /// newline that editors and `echo` add.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let contents = std::fs::read_to_string(path).map_err(|source| Error::ReadSecret {
            path: path.to_path_buf(),
            source,
        })?;
        let value = contents.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(Error::EmptySecret {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// Returns the secret value. Pass it only to the place that needs it, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let secret = Secret::new("hunter2");
        let debug = format!("{secret:?}");
        assert_eq!(debug, "Secret(<redacted>)");
        assert!(!debug.contains("hunter2"));
    }

    #[test]
    fn debug_of_containing_struct_is_redacted() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            client_id: String,
            client_secret: Secret,
        }
        let config = Config {
            client_id: "renku-ssh-operator".into(),
            client_secret: Secret::new("s3cr3t-value"),
        };
        let debug = format!("{config:?}");
        assert!(debug.contains("renku-ssh-operator"));
        assert!(!debug.contains("s3cr3t-value"));
    }

    #[test]
    fn deserializes_from_plain_string() {
        let secret: Secret = serde_json::from_str("\"abc\"").expect("valid JSON string");
        assert_eq!(secret.expose(), "abc");
    }

    #[test]
    fn from_file_strips_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("oidc-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("secret");
        std::fs::write(&path, "value-from-file\n").expect("write secret file");
        let secret = Secret::from_file(&path).expect("read secret file");
        assert_eq!(secret.expose(), "value-from-file");

        std::fs::write(&path, "\n").expect("write empty secret file");
        let error = Secret::from_file(&path).expect_err("empty file must be rejected");
        assert!(matches!(error, Error::EmptySecret { .. }), "{error}");

        let missing = dir.join("missing");
        let error = Secret::from_file(&missing).expect_err("missing file must be rejected");
        assert!(error.to_string().contains("missing"), "{error}");
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
