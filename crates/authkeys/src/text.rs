//! Text clean-up for comments, previews and values quoted in messages.

/// Maximum length of a rejected line's preview in characters.
pub const PREVIEW_CHARS: usize = 40;

/// Preview displayed for lines that may contain private key material.
pub(crate) const HIDDEN_PREVIEW: &str = "[hidden: may contain private key data]";

/// Ranges of invisible or layout-changing code points that comments drop. They cover the soft
/// hyphen, Arabic and Syriac format marks, Hangul fillers and Mongolian selectors. They also
/// cover zero-width characters, bidirectional controls, word joiners and variation selectors.
/// The rest are the byte order mark, interlinear annotations, musical formatting, tags, private
/// use areas and noncharacters.
// NOTE: unassigned code points are kept, because std has no Unicode category table.
const INVISIBLE_RANGES: [(char, char); 23] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{E000}', '\u{F8FF}'),
    ('\u{FDD0}', '\u{FDEF}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
    ('\u{F0000}', '\u{FFFFF}'),
    ('\u{100000}', '\u{10FFFF}'),
];

/// Returns whether `character` is printed as visible text.
fn is_printable(character: char) -> bool {
    if character.is_control() {
        return false;
    }
    let code = u32::from(character);
    // U+xxFFFE and U+xxFFFF are noncharacters in every plane.
    if code & 0xFFFE == 0xFFFE {
        return false;
    }
    !INVISIBLE_RANGES
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&character))
}

/// Normalises a comment: drops characters that are not printable, turns each run of whitespace
/// into one space, trims, and truncates to `max_bytes` at a character boundary. Returns `None`
/// when nothing remains.
pub(crate) fn sanitise_comment(raw: &str, max_bytes: usize) -> Option<String> {
    let mut comment = String::with_capacity(raw.len().min(max_bytes));
    let mut pending_space = false;
    for character in raw.chars() {
        if character.is_whitespace() {
            pending_space = !comment.is_empty();
            continue;
        }
        if !is_printable(character) {
            continue;
        }
        let needed = character.len_utf8() + usize::from(pending_space);
        if comment.len() + needed > max_bytes {
            break;
        }
        if pending_space {
            comment.push(' ');
            pending_space = false;
        }
        comment.push(character);
    }
    (!comment.is_empty()).then_some(comment)
}

/// Truncates `value` to `max_chars` characters, marking a cut with a trailing `…`.
pub(crate) fn truncate_chars(value: &str, max_chars: usize) -> String {
    if value.chars().count() <= max_chars {
        return value.to_owned();
    }
    let mut truncated: String = value.chars().take(max_chars.saturating_sub(1)).collect();
    truncated.push('…');
    truncated
}

/// Prepares a value copied from a line for a message: characters that are not printable
/// become `?` and the result is cut to [`PREVIEW_CHARS`] characters.
pub(crate) fn quote(value: &str) -> String {
    let visible: String = value
        .chars()
        .take(PREVIEW_CHARS + 1)
        .map(|character| {
            if is_printable(character) {
                character
            } else {
                '?'
            }
        })
        .collect();
    truncate_chars(&visible, PREVIEW_CHARS)
}

/// Builds a preview of at most [`PREVIEW_CHARS`] characters that identifies a line to its owner.
/// Control and invisible characters become `?`. A line that starts with a long run of base64
/// gets [`HIDDEN_PREVIEW`] instead, because that run may be private key data.
pub(crate) fn preview(line: &str) -> String {
    let line = line.trim_start_matches([' ', '\t']);
    let first_field = line
        .split([' ', '\t', '\n', '\r'])
        .next()
        .unwrap_or_default();
    if crate::syntax::is_base64_run(first_field) {
        return HIDDEN_PREVIEW.to_owned();
    }
    let head: String = line
        .chars()
        .take(PREVIEW_CHARS + 1)
        .map(|character| if character == '\t' { ' ' } else { character })
        .collect();
    quote(&head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitise_collapses_whitespace() {
        assert_eq!(
            sanitise_comment("  alice \t at\u{00A0}laptop  ", 256),
            Some("alice at laptop".to_owned())
        );
    }

    #[test]
    fn sanitise_drops_invisible_characters() {
        let raw = "ad\u{200B}min\u{202E}gpj.exe\u{FEFF}\u{E000}\u{FFFF}";
        assert_eq!(sanitise_comment(raw, 256), Some("admingpj.exe".to_owned()));
    }

    #[test]
    fn sanitise_keeps_unicode_letters() {
        assert_eq!(
            sanitise_comment("josé@café ☕", 256),
            Some("josé@café ☕".to_owned())
        );
    }

    #[test]
    fn sanitise_truncates_at_char_boundary() {
        // "é" is two bytes: 5 bytes fit "aéé" and 4 bytes fit only "aé".
        assert_eq!(sanitise_comment("aééé", 5), Some("aéé".to_owned()));
        assert_eq!(sanitise_comment("aééé", 4), Some("aé".to_owned()));
    }

    #[test]
    fn sanitise_does_not_end_with_space() {
        assert_eq!(sanitise_comment("abc defgh", 4), Some("abc".to_owned()));
        assert_eq!(sanitise_comment("abc defgh", 5), Some("abc d".to_owned()));
    }

    #[test]
    fn sanitise_empty_is_none() {
        assert_eq!(sanitise_comment(" \u{200B} ", 256), None);
        assert_eq!(sanitise_comment("comment", 0), None);
    }

    #[test]
    fn truncate_marks_cut() {
        assert_eq!(truncate_chars("abcdef", 4), "abc…");
        assert_eq!(truncate_chars("abcd", 4), "abcd");
    }

    #[test]
    fn preview_is_bounded() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJizIKK5bobCr36s3PJEKDRG comment";
        let displayed = preview(line);
        assert_eq!(displayed.chars().count(), PREVIEW_CHARS);
        assert!(displayed.starts_with("ssh-ed25519 AAAA"));
        assert!(displayed.ends_with('…'));
    }

    #[test]
    fn preview_replaces_controls() {
        assert_eq!(preview("a\0b\nc\u{202E}"), "a?b?c?");
    }

    #[test]
    fn preview_hides_bare_base64() {
        assert_eq!(
            preview("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB"),
            HIDDEN_PREVIEW
        );
    }
}
