//! Physical lines → raw instructions: parser directives, comments, blank lines, continuation
//! lines (with the escape character) and heredoc bodies. Knows nothing of what an instruction
//! means beyond which ones may open a heredoc.

use super::heredoc::{heredocs_in_line, HeredocMarker};
use super::words::{parse_json_array, split_command};
use super::{err, ParseError};
use crate::ast::Heredoc;
use crate::excerpt::excerpt;

/// The physical lines of `text`, each with its line ending (`\n` or `\r\n`), as BuildKit's
/// scanner reads them: heredoc bodies keep their line endings as written.
pub(super) fn physical_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// A physical line without its line ending: every trailing `\r` and `\n` (BuildKit's
/// `trimNewline`).
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

pub(super) struct Directives {
    pub(super) escape: char,
    pub(super) syntax: Option<String>,
}

/// Reads the parser directives (`# escape=`, `# syntax=`, `# check=`) at the top of the file.
/// Like BuildKit, the first line that is not a known directive (a comment, an empty line, an
/// instruction or an unknown `# key=value`) ends the directive section.
pub(super) fn parse_directives(lines: &[&str]) -> Result<(Directives, usize), ParseError> {
    let mut directives = Directives {
        escape: '\\',
        syntax: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((key, value)) = directive(trim_newline(line)) else {
            return Ok((directives, i));
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            return Ok((directives, i));
        }
        if seen.contains(&key) {
            return err(
                i + 1,
                format!("only one `{key}` parser directive can be used"),
            );
        }
        match key.as_str() {
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return err(
                            i + 1,
                            format!(
                        "invalid escape character `{}` in `# escape=` directive: use \\ or `",
                        excerpt(other)
                    ),
                        )
                    }
                }
            }
            "syntax" => directives.syntax = Some(value.to_string()),
            // `# check=` configures BuildKit's linter: accepted and ignored.
            _ => {}
        }
        seen.push(key);
    }
    Ok((directives, lines.len()))
}

/// Matches `#[ \t]*key[ \t]*=[ \t]*value` (BuildKit's directive regex) on a left-trimmed line.
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('=')?;
    let value = rest.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((key, value))
}

/// Reads logical instructions from physical lines: skips comments and blank lines, joins
/// continuation lines, and collects heredoc bodies.
pub(super) struct Source<'a> {
    /// Physical lines with their line endings ([`physical_lines`]).
    pub(super) lines: &'a [&'a str],
    pub(super) pos: usize,
    /// Line number of `lines[0]`.
    pub(super) first_line: usize,
    pub(super) escape: char,
}

/// One instruction as text, before interpretation.
pub(super) struct RawInstruction {
    pub(super) line: usize,
    /// Continuations joined, heredoc bodies excluded.
    pub(super) text: String,
    pub(super) heredocs: Vec<Heredoc>,
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

impl Source<'_> {
    fn line_no(&self, index: usize) -> usize {
        self.first_line + index
    }

    /// Removes a trailing escape character (optionally followed by blanks); returns whether the
    /// line is complete (had no continuation). As in BuildKit (`([^\\])\\[ \t]*$|^\\[ \t]*$`
    /// with the escape character), an escape character that is itself escaped does not continue
    /// the line: `a\\` ends there. (Nor, BuildKit's known limitation, does `a\\\`.)
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(rest) if !rest.ends_with(self.escape) => (rest, false),
            _ => (line, true),
        }
    }

    pub(super) fn next_instruction(&mut self) -> Result<Option<RawInstruction>, ParseError> {
        while self.pos < self.lines.len() {
            let index = self.pos;
            self.pos += 1;
            let physical = trim_newline(self.lines[index]);
            if is_comment(physical) {
                continue;
            }
            let (first, mut complete) = self.trim_continuation(physical.trim_start());
            if complete && first.trim().is_empty() {
                continue;
            }
            let mut text = first.to_string();
            while !complete && self.pos < self.lines.len() {
                let next = trim_newline(self.lines[self.pos]);
                self.pos += 1;
                // Comment and empty lines inside a continuation are dropped (BuildKit warns
                // about the empty ones but accepts them).
                if is_comment(next) || next.trim_start().is_empty() {
                    continue;
                }
                let (part, done) = self.trim_continuation(next);
                text.push_str(part);
                complete = done;
            }
            let text = text.trim().to_string();
            let line = self.line_no(index);
            let heredocs = self.read_heredocs(&text, line)?;
            return Ok(Some(RawInstruction {
                line,
                text,
                heredocs,
            }));
        }
        Ok(None)
    }

    /// Reads the bodies of the heredocs that `text` opens, in order, from the following lines.
    /// A body keeps its lines' endings (`\r\n` included, as BuildKit's does); the terminator
    /// line is compared without its ending, and both without leading tabs after `<<-`.
    fn read_heredocs(&mut self, text: &str, line: usize) -> Result<Vec<Heredoc>, ParseError> {
        let mut out = Vec::new();
        for marker in heredoc_markers(text, self.escape, line)? {
            let mut body = String::new();
            let mut terminated = false;
            while self.pos < self.lines.len() {
                let physical = self.lines[self.pos];
                self.pos += 1;
                let physical = if marker.chomp {
                    physical.trim_start_matches('\t')
                } else {
                    physical
                };
                if trim_newline(physical) == marker.name {
                    terminated = true;
                    break;
                }
                body.push_str(physical);
            }
            if !terminated {
                return err(
                    line,
                    format!(
                        "unterminated heredoc <<{}: add a line containing only `{}` after its body",
                        excerpt(&marker.name),
                        excerpt(&marker.name)
                    ),
                );
            }
            out.push(Heredoc {
                name: marker.name,
                fd: marker.fd,
                content: body,
                expand: marker.expand,
            });
        }
        Ok(out)
    }
}

/// The heredocs an instruction line opens: only RUN, COPY and ADD in shell form (and the same
/// as an ONBUILD trigger) can have them; the words of the whole line are read as BuildKit's
/// `heredocsFromLine` reads them ([`heredocs_in_line`]).
fn heredoc_markers(
    text: &str,
    escape: char,
    line: usize,
) -> Result<Vec<HeredocMarker>, ParseError> {
    let (keyword, _, args) = split_command(text, escape);
    let mut keyword = keyword.to_ascii_uppercase();
    let mut args = args;
    if keyword == "ONBUILD" {
        let (sub, _, sub_args) = split_command(&args, escape);
        keyword = sub.to_ascii_uppercase();
        args = sub_args;
    }
    if !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD")
        || parse_json_array(&args).is_some()
        || !text.contains("<<")
    {
        return Ok(Vec::new());
    }
    heredocs_in_line(text).or_else(|e| {
        err(
            line,
            format!("invalid heredoc in `{}`: {}", excerpt(text), e.0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_matching() {
        assert_eq!(directive("# escape=`"), Some(("escape", "`")));
        assert_eq!(
            directive("#syntax = docker/dockerfile:1 "),
            Some(("syntax", "docker/dockerfile:1"))
        );
        assert_eq!(directive("# just a comment"), None);
        assert_eq!(directive("# key="), None);
        assert_eq!(directive("RUN x"), None);
    }

    #[test]
    fn line_endings_are_trimmed_like_buildkit() {
        assert_eq!(physical_lines("a\r\nb\nc"), ["a\r\n", "b\n", "c"]);
        assert_eq!(trim_newline("a\r\r\n"), "a");
        assert_eq!(trim_newline("a\r"), "a");
    }

    #[test]
    fn an_escaped_escape_does_not_continue_the_line() {
        let source = |escape| Source {
            lines: &[],
            pos: 0,
            first_line: 1,
            escape,
        };
        let s = source('\\');
        assert_eq!(s.trim_continuation("a \\"), ("a ", false));
        assert_eq!(s.trim_continuation("a \\ \t"), ("a ", false));
        assert_eq!(s.trim_continuation("\\"), ("", false));
        assert_eq!(s.trim_continuation("a\\\\"), ("a\\\\", true));
        assert_eq!(s.trim_continuation("\\\\"), ("\\\\", true));
        // BuildKit's regex cannot see that the last of three is unescaped.
        assert_eq!(s.trim_continuation("a\\\\\\"), ("a\\\\\\", true));
        let s = source('`');
        assert_eq!(s.trim_continuation("a `"), ("a ", false));
        assert_eq!(s.trim_continuation("a ``"), ("a ``", true));
        assert_eq!(s.trim_continuation("a \\"), ("a \\", true));
    }
}
