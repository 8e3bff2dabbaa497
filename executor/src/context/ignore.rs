//! `.dockerignore` parsing and matching with Docker's semantics (moby `ignorefile` + `patternmatcher`).
//! This module only answers "is this context-relative path excluded?"; it never reads the context tree.

/// Why a `.dockerignore` pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern {pattern:?}: {reason}; fix or remove that line")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// One compiled pattern. Like moby, simple shapes are matched without the general matcher.
#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcard at all: the path must be equal.
    Exact(String),
    /// `prefix/**`: anything starting with `prefix/` (the stored string keeps the `/`).
    Prefix(String),
    /// `**/suffix` (or `**suffix`): anything ending with the suffix; `**/foo` also matches `foo`.
    Suffix(String),
    /// General case, the equivalent of moby's generated regular expression.
    Tokens(Vec<Tok>),
}

#[derive(Debug, Clone)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters except `/`.
    Star,
    /// `?`: one character except `/`.
    Quest,
    /// `[...]`: a character class (`^` negates, `a-z` ranges).
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    /// `**` followed by more pattern: `(.*/)?`, any number of directories, including none.
    AnyDirs,
    /// `**` at the end after other wildcards: `.*`.
    AnyAll,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern text without its `!`; used to decide whether an excluded directory
    /// may still contain re-included paths.
    text: String,
    exclusion: bool,
    matcher: Matcher,
}

/// The patterns of one `.dockerignore`, in file order (later patterns win).
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

impl IgnoreMatcher {
    /// Parse `.dockerignore` text the way moby's `ignorefile.ReadAll` does: `#` comments (only at
    /// the very start of a line), blank lines skipped, surrounding spaces trimmed, `!` re-includes,
    /// each pattern cleaned like Go's `filepath.Clean` and a leading `/` removed.
    pub fn parse(content: &str) -> Result<IgnoreMatcher, PatternError> {
        let mut lines = Vec::new();
        for (i, line) in content.lines().enumerate() {
            let line = if i == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                line
            };
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (invert, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let mut pattern = String::new();
            if !rest.is_empty() {
                pattern = go_clean(rest);
                if pattern.len() > 1 && pattern.starts_with('/') {
                    pattern.remove(0);
                }
            }
            lines.push(if invert {
                format!("!{pattern}")
            } else {
                pattern
            });
        }
        IgnoreMatcher::new(&lines)
    }

    /// Compile already-read patterns (moby `patternmatcher.New`).
    pub fn new(patterns: &[String]) -> Result<IgnoreMatcher, PatternError> {
        let mut out = Vec::new();
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let mut text = go_clean(p);
            let mut exclusion = false;
            if let Some(rest) = text.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(PatternError {
                        pattern: raw.clone(),
                        reason: "illegal exclusion pattern: \"!\" alone",
                    });
                }
                exclusion = true;
                text = rest.to_string();
            }
            let matcher = compile(&text).map_err(|reason| PatternError {
                pattern: raw.clone(),
                reason,
            })?;
            out.push(Pattern {
                text,
                exclusion,
                matcher,
            });
        }
        Ok(IgnoreMatcher { patterns: out })
    }

    /// True when there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// moby `MatchesOrParentMatches`: `rel` (a `/`-separated path relative to the context root) is
    /// excluded when the last pattern matching it, or one of its parent directories, is not a `!`
    /// pattern.
    pub fn matches(&self, rel: &str) -> bool {
        let file = go_clean(rel);
        let parent = match file.rfind('/') {
            Some(i) => &file[..i],
            None => ".",
        };
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion pattern is moot once matched; a `!` pattern is moot until then.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matcher.is_match(&file);
            if !hit && parent != "." {
                for i in 0..parent_dirs.len() {
                    if pattern.matcher.is_match(&parent_dirs[..=i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether a `!` pattern could re-include something below directory `rel_dir`, in which case
    /// an excluded directory must still be walked (moby's `TarWithOptions` rule).
    pub fn may_reinclude_under(&self, rel_dir: &str) -> bool {
        let dir_slash = format!("{}/", go_clean(rel_dir));
        self.patterns
            .iter()
            .any(|p| p.exclusion && format!("{}/", p.text).starts_with(&dir_slash))
    }
}

impl Matcher {
    fn is_match(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Matcher::Tokens(toks) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(toks, &chars)
            }
        }
    }
}

/// Translate a cleaned pattern the way moby's `Pattern.compile` builds its regular expression,
/// including its choice of the exact/prefix/suffix shortcuts.
fn compile(pattern: &str) -> Result<Matcher, &'static str> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Tokens,
    }
    validate_go_pattern(pattern)?;
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    let mut idx = 0usize; // moby's loop counter: number of scanner steps taken so far
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if ch == '*' {
            if chars.get(i) == Some(&'*') {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        toks.push(Tok::AnyAll);
                        kind = Kind::Tokens;
                    }
                } else {
                    toks.push(Tok::AnyDirs);
                    kind = Kind::Tokens;
                }
                if idx == 0 {
                    kind = Kind::Suffix;
                }
            } else {
                toks.push(Tok::Star);
                kind = Kind::Tokens;
            }
        } else if ch == '?' {
            toks.push(Tok::Quest);
            kind = Kind::Tokens;
        } else if ch == '\\' {
            match chars.get(i) {
                Some(&next) => {
                    toks.push(Tok::Lit(next));
                    i += 1;
                    kind = Kind::Tokens;
                }
                None => toks.push(Tok::Lit('\\')),
            }
        } else if ch == '[' {
            let (tok, next) = parse_class(&chars, i)?;
            toks.push(tok);
            i = next;
            kind = Kind::Tokens;
        } else {
            toks.push(Tok::Lit(ch));
        }
        idx += 1;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_string()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Kind::Tokens => Matcher::Tokens(toks),
    })
}

/// Parse a `[...]` class whose `[` is just before `start`; returns the token and the index after `]`.
fn parse_class(chars: &[char], start: usize) -> Result<(Tok, usize), &'static str> {
    let mut i = start;
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("unterminated character class");
        };
        if c == ']' && !first {
            return Ok((Tok::Class { negated, items }, i + 1));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *chars.get(i).ok_or("unterminated character class")?
        } else {
            c
        };
        i += 1;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            hi = if chars[i] == '\\' {
                i += 1;
                *chars.get(i).ok_or("unterminated character class")?
            } else {
                chars[i]
            };
            i += 1;
            if hi < lo {
                return Err("character class range is reversed");
            }
        }
        items.push((lo, hi));
    }
}

/// Reject what Go's `filepath.Match` reports as `ErrBadPattern` (unterminated classes, a
/// dangling escape inside a class), as moby checks each pattern against it up front.
fn validate_go_pattern(pattern: &str) -> Result<(), &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '[' => {
                let (_, next) = parse_class(&chars, i + 1)?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn class_matches(negated: bool, items: &[(char, char)], c: char) -> bool {
    items.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != negated
}

/// Backtracking match of the whole path against the tokens (paths are short; patterns too).
fn match_tokens(toks: &[Tok], s: &[char]) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Lit(c) => s.first() == Some(c) && match_tokens(rest, &s[1..]),
        Tok::Quest => s.first().is_some_and(|c| *c != '/') && match_tokens(rest, &s[1..]),
        Tok::Class { negated, items } => {
            s.first()
                .is_some_and(|c| class_matches(*negated, items, *c))
                && match_tokens(rest, &s[1..])
        }
        Tok::Star => {
            for n in 0..=s.len() {
                if match_tokens(rest, &s[n..]) {
                    return true;
                }
                if n < s.len() && s[n] == '/' {
                    break;
                }
            }
            false
        }
        Tok::AnyAll => (0..=s.len()).any(|n| match_tokens(rest, &s[n..])),
        Tok::AnyDirs => {
            // Either no directory at all, or any prefix ending with '/'.
            match_tokens(rest, s)
                || (0..s.len()).any(|n| s[n] == '/' && match_tokens(rest, &s[n + 1..]))
        }
    }
}

/// Go's `path.Clean` for `/`-separated paths: collapse `//`, drop `.`, resolve `..` lexically
/// (keeping leading `..` for relative paths), return "." for empty.
pub(crate) fn go_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(content: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(content).expect("patterns parse")
    }

    /// (dockerignore content, path, excluded?)
    const CASES: &[(&str, &str, bool)] = &[
        ("*.md", "README.md", true),
        ("*.md", "docs/guide.md", false),
        ("docs/*.md", "docs/guide.md", true),
        ("docs/*.md", "docs/sub/guide.md", false),
        ("docs/*.md", "README.md", false),
        ("**/*.md", "README.md", true),
        ("**/*.md", "a/b/c/README.md", true),
        ("**/*.md", "a/b/c/README.txt", false),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false),
        ("node_modules/**", "node_modules/x/y", true),
        ("node_modules/**", "node_modules", false),
        ("**", "anything/at/all", true),
        ("**/foo", "foo", true),
        ("**/foo", "x/y/foo", true),
        ("**/foo", "x/yfoo", false),
        ("build", "build", true),
        ("build", "build/out/bin", true),
        ("build", "src/build", false),
        ("/build", "build/x", true),
        ("./build", "build/x", true),
        ("build/", "build/x", true),
        ("a/../b", "b/c", true),
        ("# comment\nsecret", "# comment", false),
        ("# comment\nsecret", "secret", true),
        (" #notcomment", "#notcomment", true),
        ("\n\n  \nx", "x", true),
        ("*\n!keep.txt", "keep.txt", false),
        ("*\n!keep.txt", "other.txt", true),
        ("!keep.txt\n*", "keep.txt", true),
        ("dir\n!dir/keep", "dir/keep", false),
        ("dir\n!dir/keep", "dir/other", true),
        ("dir\n!dir/keep", "dir/keep/inner", false),
        (
            "*.log\n!important.log\nimportant.log",
            "important.log",
            true,
        ),
        ("file?.txt", "file1.txt", true),
        ("file?.txt", "file12.txt", false),
        ("file[0-9].txt", "file5.txt", true),
        ("file[0-9].txt", "filea.txt", false),
        ("file[^0-9].txt", "filea.txt", true),
        ("*/tmp", "a/tmp/x", true),
        ("*/tmp", "a/b/tmp", false),
        ("a.b", "axb", false),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        (".git", ".git/HEAD", true),
        ("Dockerfile*", "Dockerfile.dev", true),
        ("*", "Dockerfile", true),
        ("src/**/*.o", "src/a.o", true),
        ("src/**/*.o", "src/x/y/a.o", true),
    ];

    #[test]
    fn docker_pattern_cases() {
        for (content, path, want) in CASES {
            assert_eq!(
                m(content).matches(path),
                *want,
                "pattern {content:?} on path {path:?} should give {want}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(IgnoreMatcher::parse("[abc").is_err());
        assert!(IgnoreMatcher::new(&["!".to_string()]).is_err());
        // An empty `!` line in a file becomes "!" after cleaning — moby rejects it too.
        assert!(IgnoreMatcher::parse("!").is_err());
    }

    #[test]
    fn reinclusion_under_excluded_directory_is_detected() {
        let ig = m("dir\n!dir/keep");
        assert!(ig.may_reinclude_under("dir"));
        assert!(!ig.may_reinclude_under("other"));
        assert!(!m("dir").may_reinclude_under("dir"));
    }

    #[test]
    fn go_clean_matches_go() {
        assert_eq!(go_clean("./a//b/./c/.."), "a/b");
        assert_eq!(go_clean("../a"), "../a");
        assert_eq!(go_clean("/../a"), "/a");
        assert_eq!(go_clean(""), ".");
        assert_eq!(go_clean("a/"), "a");
    }
}
