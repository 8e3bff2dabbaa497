//! Shell-like word expansion for Dockerfile values (quote removal, escapes, `$VAR` and `${VAR…}`
//! forms), following BuildKit's `shell.Lex`. It only rewrites strings: it never runs a shell,
//! never reads the process environment (variables come from the caller's `lookup`).
//!
//! Hostile input is bounded: `${…}` may nest [`MAX_NESTING`] deep (the lexer recurses once per
//! level), a result may grow to [`MAX_EXPANSION_BYTES`] (or twice the word), and pattern
//! matching (`${V#pat}`, `${V/pat/r}`) is an automaton simulation with a work budget
//! ([`MAX_PATTERN_STEPS`]), never backtracking or recursion.

mod glob;

use crate::excerpt::excerpt;
use glob::{Glob, GlobStop};

/// How deeply `${…}` expressions may nest (`${A:-${B:-${C}}}` is 3). Real Dockerfiles use a few
/// levels; the bound keeps the lexer's recursion far from the end of any thread's stack (a
/// level takes about 6 KiB of stack in a debug build, much less optimised).
pub const MAX_NESTING: usize = 32;

/// The size an expanded word may reach when its raw text is shorter than half of this: enough
/// for any value a build uses (Linux caps one environment string at 128 KiB), while a chain of
/// `ARG B=$A$A` lines cannot double its way to the end of memory.
pub const MAX_EXPANSION_BYTES: usize = 4 << 20;

/// How many automaton steps the pattern operators of one word may take in total (a step is one
/// pattern state advanced over one character).
pub const MAX_PATTERN_STEPS: u64 = 50_000_000;

/// Why a word could not be expanded. `word` is always an excerpt of the raw text being
/// expanded (see [`crate::excerpt`]), so the message can point at the Dockerfile value the user
/// has to fix without repeating all of it.
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
    /// `${NAME?message}` / `${NAME:?message}` with NAME unset (or empty). Both are excerpts.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("`${{…}}` nested more than {limit} deep in `{word}`: use fewer levels")]
    TooDeep { limit: usize, word: String },
    #[error("expanding `{word}` gives more than {limit} bytes: values that large cannot be used")]
    TooLong { limit: usize, word: String },
    #[error("the patterns in `{word}` take too long to match against the values: use a simpler pattern or a shorter value")]
    TooComplex { word: String },
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
    /// How many `${` are open.
    depth: usize,
    /// The most bytes any piece of the result may hold.
    max_len: usize,
    /// Pattern-matching steps left.
    budget: u64,
}

impl<'a> Lexer<'a> {
    fn new(raw: &'a str, lookup: &'a dyn Fn(&str) -> Option<String>, escape: char) -> Self {
        Lexer {
            chars: raw.chars().collect(),
            pos: 0,
            escape,
            lookup,
            raw,
            depth: 0,
            max_len: MAX_EXPANSION_BYTES.max(raw.len().saturating_mul(2)),
            budget: MAX_PATTERN_STEPS,
        }
    }

    fn glob_error(&self, stop: GlobStop) -> ExpandError {
        match stop {
            GlobStop::Budget => ExpandError::TooComplex { word: self.word() },
            GlobStop::TooLong => ExpandError::TooLong {
                limit: self.max_len,
                word: self.word(),
            },
        }
    }

    /// Fails once a result being built is longer than the bound.
    fn check_len(&self, len: usize) -> Result<(), ExpandError> {
        if len > self.max_len {
            return Err(ExpandError::TooLong {
                limit: self.max_len,
                word: self.word(),
            });
        }
        Ok(())
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
        excerpt(self.raw)
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
                    self.check_len(result.len())?;
                }
                '$' => {
                    let s = self.dollar()?;
                    result.push_str(&s);
                    words.add_str(&s);
                    self.check_len(result.len())?;
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
                    self.check_len(out.len())?;
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

        // Every recursion of the lexer goes through here (`${` → a word → `${` …), so this one
        // bound keeps all of it shallow.
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep {
                limit: MAX_NESTING,
                word: self.word(),
            });
        }
        self.depth += 1;
        let expanded = self.braced();
        self.depth -= 1;
        let expanded = expanded?;
        self.check_len(expanded.len())?;
        Ok(expanded)
    }

    /// The rest of a `${…}` expression, after the `{`. This is on the lexer's recursive path
    /// (an operand holds words that hold `${…}`), so the work that does not recurse is in
    /// separate functions to keep this frame small.
    fn braced(&mut self) -> Result<String, ExpandError> {
        let (name, op) = self.operator()?;
        match op {
            Op::Plain => Ok(self.get(&name).unwrap_or_default()),
            Op::Word { op, null_is_unset } => {
                // Patterns keep their escapes so that `\*` stays a literal star.
                let word = self.operand('}', op == '#' || op == '%')?;
                self.apply(&name, op, null_is_unset, word)
            }
            Op::Replace { all } => {
                let pattern = self.operand('/', true)?;
                let replacement = self.operand('}', true)?;
                self.replace(&name, &pattern, &replacement, all)
            }
        }
    }

    fn operand(&mut self, stop: char, raw_escapes: bool) -> Result<String, ExpandError> {
        Ok(self.process_until(Some(stop), raw_escapes)?.0)
    }

    /// The name and operator of a `${…}` expression, read up to its first operand.
    #[inline(never)]
    fn operator(&mut self) -> Result<(String, Op), ExpandError> {
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
        let op = match ch {
            '}' => Op::Plain,
            ':' => match self.next() {
                Some(op @ ('+' | '-' | '?')) => Op::Word {
                    op,
                    null_is_unset: true,
                },
                other => {
                    let mut modifier = String::from(":");
                    modifier.extend(other);
                    return Err(ExpandError::UnsupportedModifier {
                        modifier,
                        word: self.word(),
                    });
                }
            },
            '+' | '-' | '?' | '#' | '%' => Op::Word {
                op: ch,
                null_is_unset: false,
            },
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                Op::Replace { all }
            }
            other => {
                return Err(ExpandError::UnsupportedModifier {
                    modifier: other.to_string(),
                    word: self.word(),
                })
            }
        };
        Ok((name, op))
    }

    /// `${name<op>word}` once `word` is expanded.
    #[inline(never)]
    fn apply(
        &mut self,
        name: &str,
        op: char,
        null_is_unset: bool,
        word: String,
    ) -> Result<String, ExpandError> {
        let value = self.get(name);
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
                    Err(ExpandError::Required {
                        name: excerpt(name),
                        message: excerpt(&message),
                    })
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
                let trimmed = if op == '#' {
                    pattern.trim_prefix(&value, greedy, &mut self.budget)
                } else {
                    pattern.trim_suffix(&value, greedy, &mut self.budget)
                };
                trimmed.map_err(|stop| self.glob_error(stop))
            }
        }
    }

    /// `${name/pattern/replacement}` (`all`: `//`) once both operands are expanded.
    #[inline(never)]
    fn replace(
        &mut self,
        name: &str,
        pattern: &str,
        replacement: &str,
        all: bool,
    ) -> Result<String, ExpandError> {
        let value = self.get(name).unwrap_or_default();
        Glob::new(pattern, self.escape)
            .replace(&value, replacement, all, &mut self.budget, self.max_len)
            .map_err(|stop| self.glob_error(stop))
    }
}

/// What a `${…}` expression does with its variable.
enum Op {
    /// `${NAME}`.
    Plain,
    /// `${NAME<op>word}` with `op` one of `- + ? # %` (`:` before `- + ?` sets `null_is_unset`).
    Word { op: char, null_is_unset: bool },
    /// `${NAME/pattern/replacement}`, `//` for `all`.
    Replace { all: bool },
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
    fn patterns_never_backtrack() {
        // Backtracking takes time exponential in the stars here; the automaton is linear.
        let long = "a".repeat(3_000);
        let pattern = "*a".repeat(40);
        let look = |n: &str| (n == "V").then(|| long.clone());
        let trimmed = expand_word(&format!("${{V#{pattern}b}}"), &look, '\\').unwrap();
        assert_eq!(trimmed.len(), 3_000);
        assert_eq!(
            expand_word(&format!("${{V##{pattern}}}"), &look, '\\').unwrap(),
            ""
        );
        assert_eq!(expand_word("${V%a*a}", &look, '\\').unwrap().len(), 2_998);
        assert_eq!(expand_word("${V%%a*a}", &look, '\\').unwrap(), "");
    }

    #[test]
    fn pattern_work_is_bounded() {
        // `*x` over a value without `x`: every start position reads to the end (quadratic).
        let long = "a".repeat(20_000);
        let look = |n: &str| (n == "V").then(|| long.clone());
        assert!(matches!(
            expand_word("${V//*x/y}", &look, '\\'),
            Err(ExpandError::TooComplex { .. })
        ));
        // A replacement cannot grow the value past the bound either.
        let big = "r".repeat(1 << 20);
        let look = |n: &str| match n {
            "V" => Some("a".repeat(100)),
            "R" => Some(big.clone()),
            _ => None,
        };
        assert!(matches!(
            expand_word("${V//a/$R}", &look, '\\'),
            Err(ExpandError::TooLong { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded_and_errors_quote_an_excerpt() {
        let deep = |d: usize| format!("{}x{}", "${A:-".repeat(d), "}".repeat(d));
        assert_eq!(w(&deep(MAX_NESTING)), "alpha");
        let err = word(&deep(MAX_NESTING + 1)).unwrap_err();
        assert!(matches!(err, ExpandError::TooDeep { .. }), "{err}");
        let long = format!("\"{}", "q".repeat(100_000));
        let err = word(&long).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains('…'), "{err}");
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
