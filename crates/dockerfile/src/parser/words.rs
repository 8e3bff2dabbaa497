//! Lexical splitting of one instruction's text: keyword, leading `--flags`, raw words with
//! quotes and escapes kept, and the JSON exec form. No interpretation of what the words mean.

use crate::excerpt::excerpt;

/// BuildKit's `reWhitespace` (`[\t\v\f\r ]`): what separates the keyword from its arguments,
/// the words of FROM, EXPOSE and the non-JSON forms of COPY, ADD and VOLUME, and the name from
/// the value of a legacy `ENV name value`. Not Unicode whitespace: a no-break space (U+00A0)
/// is part of a word there.
pub(super) fn is_separator(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// The blanks BuildKit's flag reader and HEALTHCHECK's type reader skip: Go's `unicode.IsSpace`
/// tried on single bytes, which for ASCII text is `[\t\n\v\f\r ]`.
pub(super) fn is_ascii_blank(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// `text` split on runs of [`is_separator`] characters (`reWhitespace.Split`), empty pieces
/// left out.
pub(super) fn split_separated(text: &str) -> Vec<String> {
    text.split(is_separator)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits `KEYWORD --flags… rest` (BuildKit `splitCommand` + `extractBuilderFlags`): the keyword
/// ends at the first [`is_separator`] character; flags are the leading words that start with
/// `--`, with quotes and `escape` processed; a bare `--` ends them.
pub(super) fn split_command(text: &str, escape: char) -> (String, Vec<String>, String) {
    let text = text.trim();
    let (keyword, rest) = match text.find(is_separator) {
        Some(i) => (&text[..i], text[i..].trim_start_matches(is_separator)),
        None => (text, ""),
    };
    let (flags, rest) = extract_flags(rest, escape);
    (keyword.to_string(), flags, rest.trim().to_string())
}

fn extract_flags(line: &str, escape: char) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start_matches(is_ascii_blank);
        if !trimmed.starts_with("--") {
            return (flags, trimmed);
        }
        // Read one word, honouring quotes and escapes.
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut iter = trimmed.char_indices();
        let mut end = trimmed.len();
        while let Some((i, c)) = iter.next() {
            match quote {
                None if is_ascii_blank(c) => {
                    end = i;
                    break;
                }
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == escape => {
                    if let Some((_, n)) = iter.next() {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
        }
        rest = &trimmed[end..];
        // A word that reads `--` ends the flags, even when written with quotes (`--""`).
        if word == "--" {
            return (flags, rest.trim_start_matches(is_ascii_blank));
        }
        if blank_ok || !word.is_empty() {
            flags.push(word);
        }
    }
}

/// Splits on whitespace, keeping quotes and escapes in the words (BuildKit `parseWords`).
pub(super) fn split_raw_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if in_word && (blank_ok || !word.is_empty()) {
                        words.push(std::mem::take(&mut word));
                    }
                    in_word = false;
                    blank_ok = false;
                    continue;
                }
                in_word = true;
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    // A trailing escape is dropped; otherwise keep it with the escaped char.
                    let Some(n) = chars.next() else { continue };
                    word.push(c);
                    word.push(n);
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                if c == escape && q != '\'' {
                    let Some(n) = chars.next() else {
                        quote = None;
                        continue;
                    };
                    word.push(c);
                    word.push(n);
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// The exec form: a JSON array of strings. `None` when the text is not a JSON array (then it is
/// shell form); `Some(Err)` when it is an array with non-string members. Like BuildKit (Go's
/// `json.Unmarshal`), the array must be the whole text: `["a"] b` is not the exec form.
pub(super) fn parse_json_array(text: &str) -> Option<Result<Vec<String>, String>> {
    let text = text.trim();
    if !text.starts_with('[') {
        return None;
    }
    if json_depth(text) > MAX_JSON_DEPTH {
        return None;
    }
    // `from_str` refuses anything but JSON whitespace after the value.
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            serde_json::Value::String(s) => out.push(s),
            other => {
                return Some(Err(format!(
                    "when using JSON array syntax, arrays must contain only strings (found {})",
                    excerpt(&other.to_string())
                )))
            }
        }
    }
    Some(Ok(out))
}

/// How deeply an exec-form array may nest and still be read as JSON. Only depth 1 is a valid
/// exec form; deeper (but bounded) nesting gets the "only strings" error, and anything deeper
/// than this is treated like text that is not JSON (shell form, as Go's decoder does past its
/// own limit), so that the decoder's recursion stays shallow whatever the input.
const MAX_JSON_DEPTH: usize = 32;

/// The deepest `[`/`{` nesting of the first JSON value in `text` (strings skipped), in one pass
/// that stops when that value closes or the nesting passes [`MAX_JSON_DEPTH`].
fn json_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_JSON_DEPTH {
                    break;
                }
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nesting_is_measured_without_recursion() {
        assert_eq!(json_depth(r#"["a", "b"]"#), 1);
        assert_eq!(json_depth(r#"["[[[", "]"]"#), 1);
        assert_eq!(json_depth(r#"[["a"]] [[[[[["#), 2);
        assert_eq!(json_depth(r#"["\"[[["]"#), 1);
        let deep = "[".repeat(1 << 20);
        assert_eq!(json_depth(&deep), MAX_JSON_DEPTH + 1);
        assert_eq!(parse_json_array(&deep), None);
        let nested = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(matches!(parse_json_array(&nested), Some(Err(_))));
        assert_eq!(
            parse_json_array(r#"["a","b"]"#),
            Some(Ok(vec!["a".to_string(), "b".to_string()]))
        );
    }

    #[test]
    fn json_with_trailing_text_is_not_the_exec_form() {
        assert_eq!(parse_json_array(r#"["a"] # x"#), None);
        assert_eq!(parse_json_array(r#"["a"] ["b"]"#), None);
        assert_eq!(parse_json_array(r#"[1] x"#), None);
        assert_eq!(
            parse_json_array("[\"a\"]\t\r\n "),
            Some(Ok(vec!["a".to_string()]))
        );
        assert_eq!(parse_json_array("[]"), Some(Ok(Vec::new())));
    }

    #[test]
    fn flags_are_extracted_with_quotes_removed() {
        let (kw, flags, rest) = split_command("COPY --chown=\"a b\" --link  src dst", '\\');
        assert_eq!(kw, "COPY");
        assert_eq!(flags, ["--chown=a b", "--link"]);
        assert_eq!(rest, "src dst");
        let (_, flags, rest) = split_command("RUN -- --not-a-flag", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, "--not-a-flag");
        let (_, flags, rest) = split_command("RUN --\"\" --not-a-flag", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, "--not-a-flag");
        // The file's escape character escapes in flags.
        let (_, flags, _) = split_command("COPY --chown=a`\"b x y", '`');
        assert_eq!(flags, ["--chown=a\"b"]);
    }

    #[test]
    fn keyword_and_words_split_on_ascii_blanks_only() {
        let (kw, _, rest) = split_command("RUN\u{a0}echo a", '\\');
        assert_eq!((kw.as_str(), rest.as_str()), ("RUN\u{a0}echo", "a"));
        let (kw, _, rest) = split_command("RUN\x0becho\x0c v", '\\');
        assert_eq!((kw.as_str(), rest.as_str()), ("RUN", "echo\x0c v"));
        assert_eq!(split_separated("80\u{a0}443 53"), ["80\u{a0}443", "53"]);
    }

    #[test]
    fn raw_words_keep_quotes_and_escapes() {
        assert_eq!(
            split_raw_words(r#"a="x y" b=\"c"#, '\\'),
            [r#"a="x y""#, r#"b=\"c"#]
        );
        assert_eq!(split_raw_words("'' x", '\\'), ["''", "x"]);
    }
}
