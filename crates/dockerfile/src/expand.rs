//! Shell-like word expansion for Dockerfile values (quote removal, escapes, `$VAR` and `${VAR…}`
//! forms), following BuildKit's `shell.Lex`. It only rewrites strings: it never runs a shell,
//! never reads the process environment (variables come from the caller's `lookup`).

/// Why a word could not be expanded. `word` is always the raw text being expanded, so the
/// message can point at the Dockerfile value the user has to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated {quote} quote in `{word}`: add the closing {quote} quote")]
    UnterminatedQuote { quote: &'static str, word: String },
    #[error("missing '{expected}' in `{word}`: close the ${{...}} expression")]
    Missing { expected: char, word: String },
    #[error("bad substitution in `{word}`: write ${{NAME}} or ${{NAME:-default}}")]
    BadSubstitution { word: String },
    #[error(
        "unsupported modifier `{modifier}` in `{word}`: use one of :- - :+ + :? ? # ## % %% / //"
    )]
    UnsupportedModifier { modifier: String, word: String },
    /// `${NAME?message}` / `${NAME:?message}` with NAME unset (or empty).
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Expands one word: quotes removed, escapes applied, variables substituted. Whitespace is kept
/// as is (nothing is split). Unset variables expand to the empty string.
pub fn expand_word(
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer::new(raw, lookup, escape);
    let (text, _) = lexer.process_until(None, false)?;
    Ok(text)
}

/// Like [`expand_word`] but splits the result into words on unquoted whitespace, including
/// whitespace that comes from an unquoted variable's value (as BuildKit does). Empty words are
/// dropped, so `""` yields no word.
pub fn expand_words(
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    let mut lexer = Lexer::new(raw, lookup, escape);
    let (_, words) = lexer.process_until(None, false)?;
    Ok(words.finish())
}

/// Accumulates words the way BuildKit's `wordsStruct` does: characters from quotes, escapes
/// and quoted expansions are "raw" (whitespace kept), other characters split words.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    raw: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(raw: &'a str, lookup: &'a dyn Fn(&str) -> Option<String>, escape: char) -> Self {
        Lexer {
            chars: raw.chars().collect(),
            pos: 0,
            escape,
            lookup,
            raw,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn word(&self) -> String {
        self.raw.to_string()
    }

    /// Processes text until `stop` (consumed) or the end of input. With `raw_escapes` the escape
    /// character is kept in the output (used for patterns, where it protects `*` and `?`).
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Words), ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words));
            }
            match ch {
                '\'' => {
                    let s = self.single_quote()?;
                    result.push_str(&s);
                    words.add_raw_str(&s);
                }
                '"' => {
                    let s = self.double_quote(raw_escapes)?;
                    result.push_str(&s);
                    words.add_raw_str(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    result.push_str(&s);
                    words.add_str(&s);
                }
                _ => {
                    self.next();
                    if ch == self.escape {
                        if raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape protects the next character whatever it is; a trailing
                        // escape is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        match stop {
            Some(expected) => Err(ExpandError::Missing {
                expected,
                word: self.word(),
            }),
            None => Ok((result, words)),
        }
    }

    /// `'...'`: everything literal, no escapes at all (as in sh).
    fn single_quote(&mut self) -> Result<String, ExpandError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: "single",
                        word: self.word(),
                    })
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: literal except `$` expansions; the escape character only escapes `"`, `$` and
    /// itself, and stays literal before anything else (as in sh).
    fn double_quote(&mut self, raw_escapes: bool) -> Result<String, ExpandError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: "double",
                        word: self.word(),
                    })
                }
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => {
                    let s = self.dollar()?;
                    out.push_str(&s);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == self.escape {
                        if raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.next();
                                ch = n;
                            }
                            _ => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    /// A variable name: letters, digits and `_`; or a run of digits (`$1`); or one special
    /// parameter character (`$@`, `$#`, …). Empty when none of these follow.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                name.push(ch);
                return name;
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        self.next(); // '$'
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        self.next(); // '{'
        match self.peek() {
            None => {
                return Err(ExpandError::Missing {
                    expected: '}',
                    word: self.word(),
                })
            }
            Some('{' | '}' | ':') => {
                return Err(ExpandError::BadSubstitution { word: self.word() })
            }
            _ => {}
        }
        let name = self.name();
        let Some(ch) = self.next() else {
            return Err(ExpandError::Missing {
                expected: '}',
                word: self.word(),
            });
        };
        match ch {
            '}' => Ok(self.get(&name).unwrap_or_default()),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let (op, null_is_unset) = if ch == ':' {
                    match self.next() {
                        Some(op @ ('+' | '-' | '?')) => (op, true),
                        other => {
                            let mut modifier = String::from(":");
                            modifier.extend(other);
                            return Err(ExpandError::UnsupportedModifier {
                                modifier,
                                word: self.word(),
                            });
                        }
                    }
                } else {
                    (ch, false)
                };
                // Patterns keep their escapes so that `\*` stays a literal star.
                let raw_escapes = op == '#' || op == '%';
                let (word, _) = self.process_until(Some('}'), raw_escapes)?;
                let value = self.get(&name);
                let unset = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match op {
                    '-' => Ok(if unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => {
                        if unset {
                            let message = if !word.is_empty() {
                                word
                            } else if value.is_none() {
                                "is not allowed to be unset".to_string()
                            } else {
                                "is not allowed to be empty".to_string()
                            };
                            Err(ExpandError::Required { name, message })
                        } else {
                            Ok(value.unwrap_or_default())
                        }
                    }
                    _ => {
                        // `#`/`%` remove the shortest matching prefix/suffix, `##`/`%%` the longest.
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pattern = Glob::new(&pattern, self.escape);
                        let value = value.unwrap_or_default();
                        Ok(if op == '#' {
                            pattern.trim_prefix(&value, greedy)
                        } else {
                            pattern.trim_suffix(&value, greedy)
                        })
                    }
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let (pattern, _) = self.process_until(Some('/'), true)?;
                let (replacement, _) = self.process_until(Some('}'), true)?;
                let value = self.get(&name).unwrap_or_default();
                Ok(Glob::new(&pattern, self.escape).replace(&value, &replacement, all))
            }
            other => Err(ExpandError::UnsupportedModifier {
                modifier: other.to_string(),
                word: self.word(),
            }),
        }
    }
}

/// A shell pattern (`*`, `?`, `[...]`, escape for literals) as used by `${V#pat}` and friends.
enum GlobToken {
    Literal(char),
    Any,
    One,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

struct Glob {
    tokens: Vec<GlobToken>,
}

impl Glob {
    fn new(pattern: &str, escape: char) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => tokens.push(GlobToken::Any),
                '?' => tokens.push(GlobToken::One),
                '[' => {
                    // A class runs to the next `]` (a `]` right after `[` or `[!` is literal);
                    // without a closing `]` the `[` is a literal.
                    let mut j = i;
                    let negated = matches!(chars.get(j), Some('!' | '^'));
                    if negated {
                        j += 1;
                    }
                    let start = j;
                    if chars.get(j) == Some(&']') {
                        j += 1;
                    }
                    while j < chars.len() && chars[j] != ']' {
                        j += 1;
                    }
                    if j >= chars.len() {
                        tokens.push(GlobToken::Literal('['));
                        continue;
                    }
                    let body = &chars[start..j];
                    let mut items = Vec::new();
                    let mut k = 0;
                    while k < body.len() {
                        if k + 2 < body.len() && body[k + 1] == '-' {
                            items.push((body[k], body[k + 2]));
                            k += 3;
                        } else {
                            items.push((body[k], body[k]));
                            k += 1;
                        }
                    }
                    tokens.push(GlobToken::Class { negated, items });
                    i = j + 1;
                }
                c if c == escape && i < chars.len() => {
                    tokens.push(GlobToken::Literal(chars[i]));
                    i += 1;
                }
                c => tokens.push(GlobToken::Literal(c)),
            }
        }
        Glob { tokens }
    }

    fn matches(&self, text: &[char]) -> bool {
        fn go(tokens: &[GlobToken], text: &[char]) -> bool {
            let Some((first, rest)) = tokens.split_first() else {
                return text.is_empty();
            };
            match first {
                GlobToken::Any => (0..=text.len()).any(|n| go(rest, &text[n..])),
                GlobToken::One => !text.is_empty() && go(rest, &text[1..]),
                GlobToken::Literal(c) => text.first() == Some(c) && go(rest, &text[1..]),
                GlobToken::Class { negated, items } => match text.first() {
                    Some(&t) => {
                        let inside = items.iter().any(|&(lo, hi)| lo <= t && t <= hi);
                        inside != *negated && go(rest, &text[1..])
                    }
                    None => false,
                },
            }
        }
        go(&self.tokens, text)
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut lengths: Vec<usize> = (0..=chars.len()).collect();
        if greedy {
            lengths.reverse();
        }
        for n in lengths {
            if self.matches(&chars[..n]) {
                return chars[n..].iter().collect();
            }
        }
        value.to_string()
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut starts: Vec<usize> = (0..=chars.len()).collect();
        if !greedy {
            starts.reverse();
        }
        for s in starts {
            if self.matches(&chars[s..]) {
                return chars[..s].iter().collect();
            }
        }
        value.to_string()
    }

    /// Replaces the first (or every) leftmost-longest non-empty match.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut replaced = false;
        while i < chars.len() {
            if !replaced || all {
                if let Some(end) = (i + 1..=chars.len())
                    .rev()
                    .find(|&e| self.matches(&chars[i..e]))
                {
                    out.push_str(replacement);
                    i = end;
                    replaced = true;
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("A", "alpha"),
            ("SP", "a b  c"),
            ("EMPTY", ""),
            ("PATH_V", "/usr/local/bin/tool.tar.gz"),
            ("Q", "it's"),
            ("_u1", "under"),
        ])
    }

    fn word(raw: &str) -> Result<String, ExpandError> {
        let e = env();
        expand_word(raw, &|n: &str| e.get(n).map(|v| v.to_string()), '\\')
    }

    fn words(raw: &str) -> Vec<String> {
        let e = env();
        expand_words(raw, &|n: &str| e.get(n).map(|v| v.to_string()), '\\').unwrap()
    }

    fn w(raw: &str) -> String {
        word(raw).unwrap()
    }

    #[test]
    fn plain_and_simple_variables() {
        assert_eq!(w("hello"), "hello");
        assert_eq!(w("$A"), "alpha");
        assert_eq!(w("${A}"), "alpha");
        assert_eq!(w("x${A}y"), "xalphay");
        assert_eq!(w("$A.txt"), "alpha.txt");
        assert_eq!(w("$_u1-"), "under-");
        assert_eq!(w("$UNSET"), "");
        assert_eq!(w("${UNSET}x"), "x");
    }

    #[test]
    fn dollar_without_name_is_literal() {
        assert_eq!(w("$"), "$");
        assert_eq!(w("a$"), "a$");
        assert_eq!(w("$/x"), "$/x");
        assert_eq!(w("cost: 5$ "), "cost: 5$ ");
    }

    #[test]
    fn positional_and_special_parameters_are_looked_up() {
        assert_eq!(w("$1x"), "x");
        assert_eq!(w("$12"), "");
        assert_eq!(w("$@"), "");
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w(r"'a\nb'"), r"a\nb");
        assert_eq!(w(r"'a\'"), r"a\");
        assert_eq!(w("'\"'"), "\"");
    }

    #[test]
    fn double_quotes_expand_and_escape_only_some_chars() {
        assert_eq!(w("\"$A\""), "alpha");
        assert_eq!(w(r#""\$A""#), "$A");
        assert_eq!(w(r#""a\"b""#), "a\"b");
        assert_eq!(w(r#""a\\b""#), r"a\b");
        assert_eq!(w(r#""a\nb""#), r"a\nb");
        assert_eq!(w("\"it's\""), "it's");
        assert_eq!(w("\"a   b\""), "a   b");
    }

    #[test]
    fn unquoted_escapes_protect_any_char() {
        assert_eq!(w(r"\$A"), "$A");
        assert_eq!(w(r"a\ b"), "a b");
        assert_eq!(w(r"\n"), "n");
        assert_eq!(w(r"\\"), r"\");
        assert_eq!(w(r"\'x"), "'x");
        assert_eq!(w(r"trailing\"), "trailing");
    }

    #[test]
    fn backtick_escape_leaves_backslash_literal() {
        let e = env();
        let look = |n: &str| e.get(n).map(|v| v.to_string());
        assert_eq!(
            expand_word(r"C:\dir\$A", &look, '`').unwrap(),
            r"C:\dir\alpha"
        );
        assert_eq!(expand_word(r"`$A", &look, '`').unwrap(), "$A");
        assert_eq!(expand_word(r#""a`"b""#, &look, '`').unwrap(), "a\"b");
        assert_eq!(expand_word(r#""a\b""#, &look, '`').unwrap(), r"a\b");
    }

    #[test]
    fn default_and_alternative_values() {
        assert_eq!(w("${UNSET:-def}"), "def");
        assert_eq!(w("${EMPTY:-def}"), "def");
        assert_eq!(w("${EMPTY-def}"), "");
        assert_eq!(w("${UNSET-def}"), "def");
        assert_eq!(w("${A:-def}"), "alpha");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${EMPTY:+alt}"), "");
        assert_eq!(w("${EMPTY+alt}"), "alt");
        assert_eq!(w("${UNSET+alt}"), "");
    }

    #[test]
    fn nested_and_quoted_defaults() {
        assert_eq!(w("${UNSET:-${A}}"), "alpha");
        assert_eq!(w("${UNSET:-$A/x}"), "alpha/x");
        assert_eq!(w("${UNSET:-\"a}b\"}"), "a}b");
        assert_eq!(w("${UNSET:-'$A'}"), "$A");
        assert_eq!(w("${UNSET:-a\\}b}"), "a}b");
    }

    #[test]
    fn required_variables() {
        assert_eq!(w("${A:?must be set}"), "alpha");
        assert_eq!(
            word("${UNSET:?please set it}").unwrap_err(),
            ExpandError::Required {
                name: "UNSET".into(),
                message: "please set it".into()
            }
        );
        assert_eq!(
            word("${UNSET?}").unwrap_err().to_string(),
            "UNSET: is not allowed to be unset"
        );
        assert_eq!(
            word("${EMPTY:?}").unwrap_err().to_string(),
            "EMPTY: is not allowed to be empty"
        );
        assert_eq!(w("${EMPTY?x}"), "");
    }

    #[test]
    fn prefix_and_suffix_patterns() {
        assert_eq!(w("${PATH_V#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(w("${PATH_V##*/}"), "tool.tar.gz");
        assert_eq!(w("${PATH_V%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${PATH_V%%.*}"), "/usr/local/bin/tool");
        assert_eq!(w("${A#al}"), "pha");
        assert_eq!(w("${A%a}"), "alph");
        assert_eq!(w("${A#zz}"), "alpha");
        assert_eq!(w("${A#[a-b]?}"), "pha");
        assert_eq!(w("${UNSET#x}"), "");
        assert_eq!(w(r"${PATH_V#\*}"), "/usr/local/bin/tool.tar.gz");
    }

    #[test]
    fn pattern_replacement() {
        assert_eq!(w("${A/a/A}"), "Alpha");
        assert_eq!(w("${A//a/A}"), "AlphA");
        assert_eq!(w("${PATH_V//\\//_}"), "_usr_local_bin_tool.tar.gz");
        assert_eq!(w("${A/l*/L}"), "aL");
    }

    #[test]
    fn errors_name_the_word() {
        let err = word("\"abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unterminated double quote in `\"abc`: add the closing double quote"
        );
        assert!(matches!(
            word("'abc"),
            Err(ExpandError::UnterminatedQuote {
                quote: "single",
                ..
            })
        ));
        assert!(matches!(
            word("${A"),
            Err(ExpandError::Missing { expected: '}', .. })
        ));
        assert!(matches!(
            word("${A:-x"),
            Err(ExpandError::Missing { expected: '}', .. })
        ));
        assert!(matches!(
            word("${}"),
            Err(ExpandError::BadSubstitution { .. })
        ));
        assert!(matches!(
            word("${:x}"),
            Err(ExpandError::BadSubstitution { .. })
        ));
        assert_eq!(
            word("${A:#x}").unwrap_err(),
            ExpandError::UnsupportedModifier {
                modifier: ":#".into(),
                word: "${A:#x}".into()
            }
        );
        assert!(matches!(
            word("${A^}"),
            Err(ExpandError::UnsupportedModifier { .. })
        ));
    }

    #[test]
    fn words_split_on_unquoted_whitespace() {
        assert_eq!(words("a b\tc"), ["a", "b", "c"]);
        assert_eq!(words("  a   b  "), ["a", "b"]);
        assert_eq!(words("\"a b\" c"), ["a b", "c"]);
        assert_eq!(words("'a b'c d"), ["a bc", "d"]);
        assert_eq!(words(r"a\ b c"), ["a b", "c"]);
        assert!(words("").is_empty());
        assert!(words("\"\"").is_empty());
    }

    #[test]
    fn unquoted_variables_are_split_quoted_ones_are_not() {
        assert_eq!(words("$SP"), ["a", "b", "c"]);
        assert_eq!(words("\"$SP\""), ["a b  c"]);
        assert_eq!(words("x$SP"), ["xa", "b", "c"]);
        assert_eq!(words("$EMPTY"), Vec::<String>::new());
        assert_eq!(words("src/$A /dst/"), ["src/alpha", "/dst/"]);
    }

    #[test]
    fn single_quote_inside_double_quotes_from_variable() {
        assert_eq!(w("\"$Q\""), "it's");
        assert_eq!(words("$Q x"), ["it's", "x"]);
    }
}
