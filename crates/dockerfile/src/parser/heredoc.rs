//! Heredoc words, as BuildKit's parser finds them: which words of an instruction line open a
//! heredoc (`heredocsFromLine`: the line split by its shell lexer, where `<<` followed by blanks
//! joins the next word, so `<< EOF` is one word), and what a word declares (`ParseHeredoc`: the
//! regex `^(\d*)<<(-?)\s*([^<]*)$`, then the name read as one shell word, quotes and escapes
//! removed; a quote anywhere in it turns expansion of the body off).
//!
//! The lexer follows BuildKit's `shell.Lex` as these two callers configure it (escape `\`
//! whatever the file's `# escape=`, no variables set and unset ones kept as written). It is
//! approximate only inside `${…}` operands, where it keeps the text as written.

/// What a heredoc word declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeredocMarker {
    /// The file descriptor written before `<<` (`3<<EOF`); 0 when none (or when it does not fit,
    /// as BuildKit ignores the parse error).
    pub(super) fd: u64,
    pub(super) name: String,
    /// `<<-`: leading tabs are stripped from the body lines and the terminator.
    pub(super) chomp: bool,
    /// False when any part of the name was quoted: the body is then not expanded.
    pub(super) expand: bool,
}

/// Why a word that looks like a heredoc cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LexError(pub(super) &'static str);

/// The heredoc a word declares (`ParseHeredoc`): `None` when it is not a heredoc word (no match,
/// an empty name, a name of several words), `Err` when its name cannot be lexed (an unterminated
/// quote). `MustParseHeredoc` is this with `Err` as `None`.
pub(super) fn parse_heredoc(word: &str) -> Result<Option<HeredocMarker>, LexError> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, rest) = word.split_at(digits);
    let Some(rest) = rest.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // Go's `\s`: [\t\n\f\r ].
    let rest = rest.trim_start_matches(['\t', '\n', '\x0c', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let words = Lexer::new(rest, false, false).words()?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = Lexer::new(rest, true, false).words()?;
    let [raw] = raw.as_slice() else {
        return Err(LexError("inconsistent results lexing the heredoc word"));
    };
    let quotes = |s: &str| s.chars().filter(|&c| c == '"' || c == '\'').count();
    Ok(Some(HeredocMarker {
        fd: fd.parse().unwrap_or(0),
        name: name.clone(),
        chomp,
        expand: quotes(name) == quotes(raw),
    }))
}

/// [`parse_heredoc`] with an unreadable name taken as "not a heredoc" (`MustParseHeredoc`).
pub(super) fn heredoc_word(word: &str) -> Option<HeredocMarker> {
    parse_heredoc(word).ok().flatten()
}

/// The heredocs a line opens, in order (`heredocsFromLine`). A line the lexer cannot split (an
/// unterminated quote, a malformed `${`) opens none, as in BuildKit.
pub(super) fn heredocs_in_line(line: &str) -> Result<Vec<HeredocMarker>, LexError> {
    let Ok(words) = Lexer::new(line, true, true).words() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for word in words {
        if let Some(marker) = parse_heredoc(&word)? {
            out.push(marker);
        }
    }
    Ok(out)
}

/// Go's `unicode.IsSpace` (the same set as Rust's `char::is_whitespace`).
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// The words being built (BuildKit's `wordsStruct`): a raw addition (quoted text, an escaped
/// character, a `<<`) never splits and starts a word even when empty.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if is_space(c) {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.buf.push(c);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    /// Keep quote characters in the words.
    raw_quotes: bool,
    /// Keep escape characters in the words.
    raw_escapes: bool,
}

const ESCAPE: char = '\\';

impl Lexer {
    fn new(text: &str, raw_quotes: bool, raw_escapes: bool) -> Lexer {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            raw_quotes,
            raw_escapes,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn words(mut self) -> Result<Vec<String>, LexError> {
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            match c {
                '$' => {
                    let s = self.dollar()?;
                    words.add_str(&s);
                }
                '<' => {
                    let s = self.possible_heredoc();
                    words.add_raw_str(&s);
                }
                '\'' => {
                    let s = self.single_quote()?;
                    words.add_raw_str(&s);
                }
                '"' => {
                    let s = self.double_quote()?;
                    words.add_raw_str(&s);
                }
                _ => {
                    self.next();
                    if c == ESCAPE {
                        if self.raw_escapes {
                            words.add_raw_char(c);
                        }
                        match self.next() {
                            Some(n) => words.add_raw_char(n),
                            None => break,
                        }
                    } else {
                        words.add_char(c);
                    }
                }
            }
        }
        Ok(words.finish())
    }

    /// `<` alone, or `<<` with the blanks after it (`[\t\r ]`), which join the next word.
    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        let mut s = "<<".to_string();
        while let Some(c @ ('\t' | '\r' | ' ')) = self.peek() {
            s.push(c);
            self.next();
        }
        s
    }

    fn single_quote(&mut self) -> Result<String, LexError> {
        let mut s = String::new();
        let open = self.next();
        if self.raw_quotes {
            s.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(LexError("unterminated single quote")),
                Some('\'') => {
                    if self.raw_quotes {
                        s.push('\'');
                    }
                    return Ok(s);
                }
                Some(c) => s.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, LexError> {
        let mut s = String::new();
        let open = self.next();
        if self.raw_quotes {
            s.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(LexError("unterminated double quote")),
                Some('"') => {
                    self.next();
                    if self.raw_quotes {
                        s.push('"');
                    }
                    return Ok(s);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    s.push_str(&v);
                }
                Some(_) => {
                    let mut c = self.next().unwrap_or_default();
                    if c == ESCAPE {
                        match self.peek() {
                            // An escape at the very end is dropped (the quote is then
                            // unterminated anyway).
                            None => continue,
                            Some('"' | '$' | ESCAPE) => {
                                if self.raw_escapes {
                                    s.push(c);
                                }
                                c = self.next().unwrap_or_default();
                            }
                            Some(_) => {
                                if self.raw_escapes && !self.raw_quotes {
                                    s.push(c);
                                }
                            }
                        }
                    }
                    s.push(c);
                }
            }
        }
    }

    /// A variable reference, kept as written (no variable is set here); its syntax errors are
    /// BuildKit's (`${}`, a missing `}`, an unknown modifier).
    fn dollar(&mut self) -> Result<String, LexError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            return Ok(format!("${name}"));
        }
        self.next();
        match self.peek() {
            None => return Err(LexError("missing '}'")),
            Some('{' | '}' | ':') => return Err(LexError("bad substitution")),
            Some(_) => {}
        }
        let name = self.name();
        let Some(c) = self.next() else {
            return Err(LexError("missing '}'"));
        };
        match c {
            '}' => Ok(format!("${{{name}}}")),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let mut modifier = c.to_string();
                if c == ':' {
                    let Some(m) = self.next() else {
                        return Err(LexError("missing '}'"));
                    };
                    if !matches!(m, '+' | '-' | '?') {
                        return Err(LexError("unsupported modifier in substitution"));
                    }
                    modifier.push(m);
                }
                let word = self.until('}')?;
                Ok(format!("${{{name}{modifier}{word}}}"))
            }
            '/' => {
                if self.peek() == Some('/') {
                    self.next();
                }
                let pattern = self.until('/')?;
                let replacement = self.until('}')?;
                Ok(format!("${{{name}/{pattern}/{replacement}}}"))
            }
            _ => Err(LexError("unsupported modifier in substitution")),
        }
    }

    /// The text up to `stop` (consumed), with quotes and nested references read as such.
    fn until(&mut self, stop: char) -> Result<String, LexError> {
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(LexError("missing '}'")),
                Some(c) if c == stop => {
                    self.next();
                    return Ok(s);
                }
                Some('$') => s.push_str(&self.dollar()?),
                Some('\'') => s.push_str(&self.single_quote()?),
                Some('"') => s.push_str(&self.double_quote()?),
                Some(c) => {
                    self.next();
                    if c == ESCAPE {
                        if self.raw_escapes {
                            s.push(c);
                        }
                        match self.next() {
                            Some(n) => s.push(n),
                            None => return Err(LexError("missing '}'")),
                        }
                    } else {
                        s.push(c);
                    }
                }
            }
        }
    }

    /// A variable name after `$`: digits, one special parameter, or letters, digits and `_`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_numeric() {
                while let Some(d) = self.peek().filter(|d| d.is_numeric()) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return c.to_string();
            }
            if !(c.is_alphabetic() || c.is_numeric() || c == '_') {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        heredocs_in_line(line)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    #[test]
    fn heredoc_words_as_buildkit_reads_them() {
        // BuildKit's TestParseHeredocHelpers cases.
        for valid in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            let m = parse_heredoc(valid).unwrap().unwrap();
            assert_eq!(m.name, "EOF", "{valid}");
        }
        for not in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(not), Ok(None), "{not}");
        }
        for invalid in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(invalid).is_err(), "{invalid}");
        }
        let m = parse_heredoc("<<-\"EOT\"").unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.chomp, m.expand), ("EOT", true, false));
        let m = parse_heredoc("3<<EOF").unwrap().unwrap();
        assert_eq!((m.fd, m.expand), (3, true));
        assert_eq!(heredoc_word("99999999999999999999<<E").unwrap().fd, 0);
        assert_eq!(heredoc_word("<< \tEOF").unwrap().name, "EOF");
        assert_eq!(heredoc_word("<<\\EOF").unwrap().name, "EOF");
        assert!(heredoc_word("<<\\EOF").unwrap().expand);
        assert!(!heredoc_word("<<E'O'F").unwrap().expand);
        assert_eq!(heredoc_word("a<<EOF"), None);
    }

    #[test]
    fn heredocs_of_a_line() {
        // BuildKit's TestHeredocsFromLine cases, and the lexer's joining of `<< NAME`.
        assert_eq!(names("RUN <<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<-EOF"), ["EOF"]);
        assert_eq!(names("RUN << -EOF"), ["-EOF"]);
        assert_eq!(names("RUN <<'EOF'"), ["EOF"]);
        assert_eq!(names("RUN 4<<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN \"<<EOF\"").is_empty());
        assert_eq!(names("RUN << EOF"), ["EOF"]);
        assert_eq!(names("RUN <<\t\"EOF\" cat"), ["EOF"]);
        // `<<-` followed by a blank is two words, neither a heredoc.
        assert!(names("RUN <<-  EOF").is_empty());
        // Two heredocs in one word are none.
        assert!(names("RUN cat <<EOF<<E2").is_empty());
        // A line the lexer cannot split opens no heredoc.
        assert!(names("RUN echo \"it's <<EOF").is_empty());
        assert!(names("RUN echo ${ <<EOF").is_empty());
        assert_eq!(names("RUN cat <<EOF > $HOME/${F:-a b}"), ["EOF"]);
        let m = &heredocs_in_line("RUN 3<< EOF cat /dev/fd/3 <<-E2").unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.fd, m.name.as_str(), m.chomp))
                .collect::<Vec<_>>(),
            [(3, "EOF", false), (0, "E2", true)]
        );
    }
}
