//! BuildKit's `Node.Dump()` format, the one its parser test files (`testfiles/*/result`) are
//! written in: one `(keyword ["--flag" …] "arg" … (sub-instruction))` per instruction, keywords
//! lower-cased, strings quoted the way Go's `strconv.Quote` does. This module reads and writes
//! that format and nothing else: it does not know what either parser means.

use std::fmt;

/// One instruction as BuildKit's dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Lower-cased, as `Dump()` writes it.
    pub keyword: String,
    pub flags: Vec<String>,
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Str(String),
    /// ONBUILD's trigger.
    Sub(Node),
}

impl Node {
    pub fn new(keyword: &str) -> Node {
        Node {
            keyword: keyword.to_ascii_lowercase(),
            flags: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn strs(&self) -> impl Iterator<Item = &str> {
        self.args.iter().filter_map(|a| match a {
            Arg::Str(s) => Some(s.as_str()),
            Arg::Sub(_) => None,
        })
    }
}

/// Writes the node as `Dump()` does (without the enclosing parentheses of a top-level line).
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.keyword)?;
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|s| go_quote(s)).collect();
            write!(f, " [{}]", flags.join(" "))?;
        }
        for arg in &self.args {
            match arg {
                Arg::Str(s) => write!(f, " {}", go_quote(s))?,
                Arg::Sub(n) => write!(f, " ({n})")?,
            }
        }
        Ok(())
    }
}

/// Go's `unicode.IsPrint`, closely enough for display: ASCII exactly; beyond ASCII every
/// character but controls, spaces other than U+0020 and the common format characters. Only
/// the text of a difference report depends on it, never whether two nodes are equal.
fn go_printable(c: char) -> bool {
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    let format = matches!(c as u32, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF);
    !c.is_control() && !c.is_whitespace() && !format
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if go_printable(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Reads a whole dump (a `result` file, or `Result.AST.Dump()`): one node per top-level
/// parenthesised group.
pub fn parse(text: &str) -> Result<Vec<Node>, String> {
    let mut r = Reader {
        chars: text.chars().collect(),
        pos: 0,
    };
    let mut nodes = Vec::new();
    loop {
        r.skip_space();
        match r.peek() {
            None => return Ok(nodes),
            Some('(') => {
                r.pos += 1;
                nodes.push(r.node()?);
            }
            Some(c) => return Err(r.error(&format!("expected `(`, found `{c}`"))),
        }
    }
}

/// Reads one node written without its enclosing parentheses (`child.Dump()`).
pub fn parse_node(text: &str) -> Result<Node, String> {
    let mut nodes = parse(&format!("({text})"))?;
    match (nodes.pop(), nodes.is_empty()) {
        (Some(node), true) => Ok(node),
        _ => Err(format!("`{text}` is not a single node")),
    }
}

struct Reader {
    chars: Vec<char>,
    pos: usize,
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        let start = self.pos.saturating_sub(20);
        let end = (self.pos + 20).min(self.chars.len());
        let near: String = self.chars[start..end].iter().collect();
        format!("dump: {what} at character {} (near `{near}`)", self.pos)
    }

    /// After `(`: keyword, optional flags, arguments, `)`.
    fn node(&mut self) -> Result<Node, String> {
        self.skip_space();
        let mut keyword = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, '(' | ')' | '[' | '"') {
                break;
            }
            keyword.push(c);
            self.pos += 1;
        }
        if keyword.is_empty() && self.peek() == Some('(') {
            // A trigger's wrapper node (ONBUILD's argument) has no value of its own.
            self.pos += 1;
            let inner = self.node()?;
            self.skip_space();
            if self.next() != Some(')') {
                return Err(self.error("expected `)` after a nested node"));
            }
            return Ok(inner);
        }
        let mut node = Node {
            keyword,
            flags: Vec::new(),
            args: Vec::new(),
        };
        self.skip_space();
        if self.peek() == Some('[') {
            self.pos += 1;
            loop {
                self.skip_space();
                match self.peek() {
                    Some(']') => {
                        self.pos += 1;
                        break;
                    }
                    Some('"') => node.flags.push(self.quoted()?),
                    _ => return Err(self.error("expected a quoted flag or `]`")),
                }
            }
        }
        loop {
            self.skip_space();
            match self.peek() {
                Some(')') => {
                    self.pos += 1;
                    return Ok(node);
                }
                Some('"') => node.args.push(Arg::Str(self.quoted()?)),
                Some('(') => {
                    self.pos += 1;
                    node.args.push(Arg::Sub(self.node()?));
                }
                _ => return Err(self.error("expected a quoted argument, `(` or `)`")),
            }
        }
    }

    /// A Go double-quoted string literal (`strconv.Unquote`); bytes that are not UTF-8 become
    /// U+FFFD, since Kiln reads Dockerfiles as UTF-8 text.
    fn quoted(&mut self) -> Result<String, String> {
        if self.next() != Some('"') {
            return Err(self.error("expected `\"`"));
        }
        let mut bytes = Vec::new();
        loop {
            let c = self
                .next()
                .ok_or_else(|| self.error("unterminated string"))?;
            match c {
                '"' => return Ok(String::from_utf8_lossy(&bytes).into_owned()),
                '\\' => {
                    let e = self
                        .next()
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    let simple = match e {
                        'a' => Some(7u8),
                        'b' => Some(8),
                        'f' => Some(0x0c),
                        'n' => Some(b'\n'),
                        'r' => Some(b'\r'),
                        't' => Some(b'\t'),
                        'v' => Some(0x0b),
                        '\\' => Some(b'\\'),
                        '"' => Some(b'"'),
                        '\'' => Some(b'\''),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        bytes.push(b);
                        continue;
                    }
                    let (digits, radix) = match e {
                        'x' => (2, 16),
                        'u' => (4, 16),
                        'U' => (8, 16),
                        '0'..='7' => {
                            self.pos -= 1;
                            (3, 8)
                        }
                        other => return Err(self.error(&format!("unknown escape `\\{other}`"))),
                    };
                    let text: String = (0..digits).filter_map(|_| self.next()).collect();
                    let value = u32::from_str_radix(&text, radix)
                        .map_err(|_| self.error(&format!("bad escape digits `{text}`")))?;
                    if matches!(e, 'u' | 'U') {
                        let c = char::from_u32(value).unwrap_or('\u{fffd}');
                        bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    } else {
                        bytes.push(
                            u8::try_from(value).map_err(|_| self.error("escape above 0xff"))?,
                        );
                    }
                }
                c => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\t\n♥"), r#""\x00\t\n♥""#);
        assert_eq!(go_quote("\u{a0}"), r#""\u00a0""#);
    }

    #[test]
    fn dumps_round_trip() {
        let text = "(from \"scratch\")\n(copy [\"--user=me\" \"--x\"] \"foo\" \"/tmp/\")\n\
                    (onbuild (run \"echo\" \"\\\" \\\\ / \\b \\x00 \\u2603\"))\n(cmd)";
        let nodes = parse(text).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[1].flags, ["--user=me", "--x"]);
        match &nodes[2].args[0] {
            Arg::Sub(run) => assert_eq!(run.args[1], Arg::Str("\" \\ / \u{8} \u{0} ☃".into())),
            other => panic!("{other:?}"),
        }
        let again: Vec<String> = nodes.iter().map(|n| format!("({n})")).collect();
        assert_eq!(again.join("\n"), text.replace("\\u2603", "☃"));
    }
}
