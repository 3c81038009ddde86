//! Line syntax: character checks, fields, options and markers.

use crate::policy::KeyPolicy;
use crate::reason::{LineBreakCharacter, RejectReason};
use crate::text::truncate_chars;

/// Field separators in `authorized_keys` lines. OpenSSH accepts spaces and tabs.
pub(crate) const SEPARATORS: [char; 2] = [' ', '\t'];

/// Suffix of every OpenSSH certificate type name.
pub(crate) const CERTIFICATE_SUFFIX: &str = "-cert-v01@openssh.com";

/// Plain key type names defined by OpenSSH 9.x, including those this library rejects. A line
/// whose first field is one of them is treated as a key line, not as options.
const KNOWN_KEY_TYPES: [&str; 9] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-xmss@openssh.com",
];

/// Option names from the AUTHORIZED_KEYS FILE FORMAT section of sshd(8) in OpenSSH 9.x.
const OPTION_NAMES: [&str; 23] = [
    "agent-forwarding",
    "cert-authority",
    "command",
    "environment",
    "expiry-time",
    "from",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "principals",
    "pty",
    "restrict",
    "touch-required",
    "tunnel",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Maximum number of option names quoted in a [`RejectReason::Options`] message.
const MAX_QUOTED_OPTIONS: usize = 6;

/// Checks that `value` contains no line break and no control character other than tab.
pub(crate) fn check_characters(value: &str) -> Result<(), RejectReason> {
    for (offset, character) in value.char_indices() {
        let line_break = match character {
            '\n' => Some(LineBreakCharacter::LineFeed),
            '\r' => Some(LineBreakCharacter::CarriageReturn),
            _ => None,
        };
        if let Some(character) = line_break {
            return Err(RejectReason::LineBreak { character, offset });
        }
        if character.is_control() && character != '\t' {
            let code = format!("U+{:04X}", u32::from(character));
            return Err(RejectReason::ControlCharacter { code, offset });
        }
    }
    Ok(())
}

/// Splits off the first field at the first space or tab; the rest has its leading separators
/// removed.
pub(crate) fn split_field(line: &str) -> (&str, &str) {
    match line.find(SEPARATORS) {
        Some(end) => (&line[..end], line[end..].trim_start_matches(SEPARATORS)),
        None => (line, ""),
    }
}

/// Splits off a leading options field. Like OpenSSH, the field ends at the first space or tab
/// outside double quotes, and `\"` inside quotes does not end the quotes.
pub(crate) fn split_options(line: &str) -> (&str, &str) {
    let mut in_quotes = false;
    let mut escaped = false;
    for (offset, character) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match character {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ' ' | '\t' if !in_quotes => {
                return (
                    &line[..offset],
                    line[offset..].trim_start_matches(SEPARATORS),
                );
            }
            _ => {}
        }
    }
    (line, "")
}

/// Returns whether `token` names a key or certificate type, known to OpenSSH or listed in the
/// policy.
pub(crate) fn is_key_type_name(token: &str, policy: &KeyPolicy) -> bool {
    KNOWN_KEY_TYPES.contains(&token) || is_certificate_type(token) || policy.allows(token)
}

/// Returns whether `token` is an OpenSSH certificate type name.
pub(crate) fn is_certificate_type(token: &str) -> bool {
    token.len() > CERTIFICATE_SUFFIX.len() && token.ends_with(CERTIFICATE_SUFFIX)
}

/// Returns whether the first field of a line reads as `authorized_keys` options rather than a
/// key type: it has `=`, `,` or `"`, or is a known option name.
pub(crate) fn looks_like_options(token: &str) -> bool {
    token.contains(['=', ',', '"'])
        || OPTION_NAMES
            .iter()
            .any(|name| name.eq_ignore_ascii_case(token))
}

/// Returns whether `token` is a run of base64 long enough to be key data (20 characters or
/// more), such as the middle field of a key line pasted without its type.
// NOTE: a shorter run, such as the last line of a private key body pasted without its BEGIN
// line, is not recognised and is quoted in the `UnsupportedType` message and the preview.
pub(crate) fn is_base64_run(token: &str) -> bool {
    token.len() >= 20
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'='))
}

/// Lists the option names of an options field, without their values, for a message.
pub(crate) fn option_names(options: &str) -> String {
    let mut names = Vec::new();
    let mut total = 0;
    for option in split_unquoted_commas(options) {
        let name = option.split('=').next().unwrap_or_default();
        let name: String = name
            .chars()
            .filter(|character| character.is_ascii_alphanumeric() || *character == '-')
            .collect();
        if name.is_empty() {
            continue;
        }
        total += 1;
        if names.len() < MAX_QUOTED_OPTIONS {
            names.push(truncate_chars(&name, 24));
        }
    }
    if names.is_empty() {
        return "unnamed option".to_owned();
    }
    let mut listed = names.join(", ");
    if total > names.len() {
        listed.push_str(&format!(" and {} more", total - names.len()));
    }
    listed
}

/// Splits an options field at commas outside double quotes.
fn split_unquoted_commas(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (offset, character) in options.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match character {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(&options[start..offset]);
                start = offset + 1;
            }
            _ => {}
        }
    }
    parts.push(&options[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_characters_finds_line_breaks() {
        assert_eq!(
            check_characters("ab\ncd"),
            Err(RejectReason::LineBreak {
                character: LineBreakCharacter::LineFeed,
                offset: 2
            })
        );
        assert_eq!(
            check_characters("a\rb"),
            Err(RejectReason::LineBreak {
                character: LineBreakCharacter::CarriageReturn,
                offset: 1
            })
        );
    }

    #[test]
    fn check_characters_finds_controls() {
        assert_eq!(
            check_characters("a\0"),
            Err(RejectReason::ControlCharacter {
                code: "U+0000".into(),
                offset: 1
            })
        );
        assert_eq!(
            check_characters("é\u{1b}[31m"),
            Err(RejectReason::ControlCharacter {
                code: "U+001B".into(),
                offset: 2
            })
        );
        assert_eq!(
            check_characters("x\u{7f}"),
            Err(RejectReason::ControlCharacter {
                code: "U+007F".into(),
                offset: 1
            })
        );
        assert_eq!(
            check_characters("x\u{85}"),
            Err(RejectReason::ControlCharacter {
                code: "U+0085".into(),
                offset: 1
            })
        );
    }

    #[test]
    fn check_characters_allows_tab_and_unicode() {
        assert_eq!(check_characters("ssh-ed25519\tAAAA josé@laptop ☕"), Ok(()));
    }

    #[test]
    fn split_field_handles_tabs_and_runs() {
        assert_eq!(split_field("a \t b c"), ("a", "b c"));
        assert_eq!(split_field("single"), ("single", ""));
    }

    #[test]
    fn split_options_respects_quotes() {
        let line = r#"command="echo \"a b\"",no-pty ssh-ed25519 AAAA c"#;
        let (options, rest) = split_options(line);
        assert_eq!(options, r#"command="echo \"a b\"",no-pty"#);
        assert_eq!(rest, "ssh-ed25519 AAAA c");
    }

    #[test]
    fn split_options_unterminated_quote_takes_line() {
        let (options, rest) = split_options(r#"command="x ssh-ed25519 AAAA"#);
        assert_eq!(options, r#"command="x ssh-ed25519 AAAA"#);
        assert_eq!(rest, "");
    }

    #[test]
    fn option_names_drop_values() {
        let names = option_names(r#"environment="TOKEN=secret",from="10.0.0.1",no-pty"#);
        assert_eq!(names, "environment, from, no-pty");
        assert!(!names.contains("secret"));
    }

    #[test]
    fn option_names_are_bounded() {
        let names = option_names("a,b,c,d,e,f,g,h");
        assert_eq!(names, "a, b, c, d, e, f and 2 more");
    }

    #[test]
    fn looks_like_options_cases() {
        assert!(looks_like_options("no-pty"));
        assert!(looks_like_options("RESTRICT"));
        assert!(looks_like_options(r#"command="ls""#));
        assert!(looks_like_options("no-pty,no-user-rc"));
        assert!(!looks_like_options("ssh-ed25519"));
        assert!(!looks_like_options("foo"));
    }

    #[test]
    fn certificate_type_needs_prefix() {
        assert!(is_certificate_type("ssh-ed25519-cert-v01@openssh.com"));
        assert!(!is_certificate_type("-cert-v01@openssh.com"));
    }
}
