//! The login account of the process user, read from `/etc/passwd` directly.
//!
//! `getpwuid` goes through glibc's NSS, which a statically linked binary cannot load, so the
//! file is parsed here. Images without an entry for the user (arbitrary UIDs) fall back to the
//! environment.

use std::path::{Path, PathBuf};

/// Fallback shell when neither `/etc/passwd` nor `$SHELL` names one.
const DEFAULT_SHELL: &str = "/bin/sh";

/// The process user's login account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name (`USER`, `LOGNAME`).
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

/// One parsed `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    uid: u32,
    home: String,
    shell: String,
}

fn parse_entry(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(Entry {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        home: fields[5].to_owned(),
        shell: fields[6].trim().to_owned(),
    })
}

/// Looks up `uid` in the text of a passwd file.
fn find_entry(passwd: &str, uid: u32) -> Option<Entry> {
    passwd
        .lines()
        .filter_map(parse_entry)
        .find(|entry| entry.uid == uid)
}

/// Builds the account of `uid` from a passwd text and an environment lookup, preferring the
/// passwd entry, then `$USER`, `$HOME` and `$SHELL`, then the current directory and `/bin/sh`.
fn resolve(
    passwd: Option<&str>,
    uid: u32,
    env: impl Fn(&str) -> Option<String>,
    current_dir: &Path,
) -> Account {
    let entry = passwd.and_then(|text| find_entry(text, uid));
    let non_empty = |value: Option<String>| value.filter(|text| !text.is_empty());

    let name = entry
        .as_ref()
        .map(|entry| entry.name.clone())
        .or_else(|| non_empty(env("USER")))
        .unwrap_or_else(|| uid.to_string());
    let home = entry
        .as_ref()
        .map(|entry| entry.home.clone())
        .filter(|home| Path::new(home).is_dir())
        .or_else(|| non_empty(env("HOME")).filter(|home| Path::new(home).is_dir()))
        .map(PathBuf::from)
        .unwrap_or_else(|| current_dir.to_path_buf());
    let shell = entry
        .map(|entry| entry.shell)
        .filter(|shell| !shell.is_empty() && Path::new(shell).exists())
        .or_else(|| non_empty(env("SHELL")).filter(|shell| Path::new(shell).exists()))
        .unwrap_or_else(|| DEFAULT_SHELL.to_owned());
    Account {
        name,
        home,
        shell: PathBuf::from(shell),
    }
}

/// Returns the account of the current process user.
pub fn current_account() -> Account {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let current_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    resolve(
        passwd.as_deref(),
        uid,
        |name| std::env::var(name).ok(),
        &current_dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          # comment\n\
                          broken line\n\
                          jovyan:x:1000:100::/tmp:/bin/sh\n";

    #[test]
    fn finds_entry_by_uid() {
        let entry = find_entry(PASSWD, 1000).expect("entry");
        assert_eq!(entry.name, "jovyan");
        assert_eq!(entry.home, "/tmp");
        assert_eq!(entry.shell, "/bin/sh");
    }

    #[test]
    fn resolves_from_passwd() {
        let account = resolve(Some(PASSWD), 1000, |_| None, Path::new("/"));
        assert_eq!(account.name, "jovyan");
        assert_eq!(account.home, PathBuf::from("/tmp"));
        assert_eq!(account.shell, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn falls_back_to_environment() {
        let env = |name: &str| match name {
            "USER" => Some("alice".to_owned()),
            "HOME" => Some("/tmp".to_owned()),
            "SHELL" => Some("/bin/sh".to_owned()),
            _ => None,
        };
        let account = resolve(Some(PASSWD), 4242, env, Path::new("/"));
        assert_eq!(account.name, "alice");
        assert_eq!(account.home, PathBuf::from("/tmp"));
        assert_eq!(account.shell, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn falls_back_to_defaults() {
        let account = resolve(None, 4242, |_| None, Path::new("/srv"));
        assert_eq!(account.name, "4242");
        assert_eq!(account.home, PathBuf::from("/srv"));
        assert_eq!(account.shell, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn missing_shell_in_passwd_falls_back() {
        let passwd = "u:x:7:7::/tmp:/nonexistent/shell\n";
        let account = resolve(Some(passwd), 7, |_| None, Path::new("/"));
        assert_eq!(account.shell, PathBuf::from("/bin/sh"));
    }
}
