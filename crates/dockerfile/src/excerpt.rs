//! Bounded, one-line excerpts of Dockerfile text for error messages. An error quotes at most
//! [`EXCERPT_BYTES`] bytes of what it is about, with control and invisible characters escaped,
//! so that a hostile or mistaken input (a 10 MB line, a binary file, a credentials file given
//! as the Dockerfile) can neither flood a log nor put more than a glimpse of a file into a
//! status message. Pure string functions; they never decide what is an error.

/// How many bytes of Dockerfile text an error message quotes (before the `…`).
pub const EXCERPT_BYTES: usize = 80;

/// How long a whole error message may get (before the `…`): a safety net for messages that
/// quote several excerpts or text from elsewhere.
pub const MESSAGE_BYTES: usize = 480;

/// `text` made safe to quote: at most [`EXCERPT_BYTES`] bytes, cut on a character boundary and
/// followed by `…` when cut; control characters (newlines, NUL, escape sequences) and invisible
/// formatting characters (byte-order marks, bidirectional overrides) written as Rust escapes.
pub fn excerpt(text: &str) -> String {
    bounded(text, EXCERPT_BYTES)
}

/// Like [`excerpt`] with a bound of `max` bytes (the `…` not counted).
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(max.min(text.len()) + 3);
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let piece: std::borrow::Cow<'_, str> = if visible(c) {
            std::borrow::Cow::Borrowed(c.encode_utf8(&mut buf))
        } else {
            std::borrow::Cow::Owned(c.escape_debug().collect())
        };
        if out.len() + piece.len() > max {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// Whether `c` can be shown as itself in a one-line message. Quotes and backslashes are shown
/// as written (`escape_debug` would double them); spaces too.
fn visible(c: char) -> bool {
    if matches!(c, '"' | '\'' | '\\' | ' ') {
        return true;
    }
    // `escape_debug` leaves printable characters alone and escapes control characters, format
    // characters (U+FEFF, U+202E, …) and separators other than the space.
    let mut escaped = c.escape_debug();
    escaped.next() == Some(c) && escaped.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(excerpt("RUNN"), "RUNN");
        assert_eq!(excerpt(r#"a "b" 'c' \d"#), r#"a "b" 'c' \d"#);
        assert_eq!(excerpt("héllo"), "héllo");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let long = "x".repeat(10_000_000);
        let e = excerpt(&long);
        assert_eq!(e, format!("{}…", "x".repeat(EXCERPT_BYTES)));
        let wide = "é".repeat(100);
        let e = excerpt(&wide);
        assert!(e.len() <= EXCERPT_BYTES + '…'.len_utf8());
        assert!(e.ends_with('…'));
        assert_eq!(bounded("abcdef", 3), "abc…");
        assert_eq!(bounded("abc", 3), "abc");
    }

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(excerpt("a\nb\0c\td"), r"a\nb\0c\td");
        assert_eq!(excerpt("\u{feff}FROM"), r"\u{feff}FROM");
        assert_eq!(excerpt("x\u{202e}y"), r"x\u{202e}y");
        assert_eq!(excerpt("\u{1b}[31m"), r"\u{1b}[31m");
        // Escapes count towards the bound, so the result stays one short line.
        let nuls = "\0".repeat(1000);
        assert!(excerpt(&nuls).len() <= EXCERPT_BYTES + 3);
        assert!(!excerpt(&nuls).contains('\0'));
    }
}
