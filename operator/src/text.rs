//! Bounded excerpts of text the operator does not control (executor and warmer output, kubelet
//! messages, values of a spec) for `status.message`, conditions and Events: one size limit, no
//! control characters, so a status can never carry a whole file a build printed. Pure.

/// Longest line kept from a program's output.
pub const MAX_LINE: usize = 240;

/// `text` on one line of at most `max` bytes: control characters (newlines included) become
/// spaces, and a longer text is cut on a character boundary and ends with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    cut(clean(text).trim(), max)
}

/// Control characters other than tabs become spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// `text` cut to `max` bytes on a character boundary, ending with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The last `lines` non-empty lines of `text`, bounded: each line is cleaned and cut at
/// [`MAX_LINE`] bytes, and earlier lines are dropped until the whole fits in `max_bytes` (the
/// end of an output is where a failure is explained).
pub fn excerpt(text: &str, lines: usize, max_bytes: usize) -> String {
    let all: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| cut(clean(l).trim_end(), MAX_LINE))
        .collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut size = 0;
    for line in all.iter().rev().take(lines) {
        let add = line.len() + usize::from(!kept.is_empty());
        if size + add > max_bytes {
            if kept.is_empty() {
                // A single line longer than the whole budget: its end.
                kept.push(line);
            }
            break;
        }
        size += add;
        kept.push(line);
    }
    kept.reverse();
    let out = kept.join("\n");
    if out.len() > max_bytes {
        cut(&out, max_bytes)
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cuts_on_character_boundaries() {
        assert_eq!(one_line(" a\tb\r\n", 10), "a\tb");
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("ééé", 5), "é…");
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn excerpt_keeps_the_end_within_its_bounds() {
        assert_eq!(excerpt("a\n\nb\nc\n\n", 2, 1024), "b\nc");
        assert_eq!(excerpt("", 3, 1024), "");
        // Lines are cut, control characters go.
        let long = format!("{}\x1b[31mred", "x".repeat(1000));
        let e = excerpt(&long, 20, 1024);
        assert_eq!(e.len(), MAX_LINE);
        assert!(e.ends_with('…') && !e.contains('\x1b'), "{e}");
        // A file printed whole is cut to the budget, keeping its last lines.
        let file: String = (0..10_000).map(|i| format!("secret line {i}\n")).collect();
        let e = excerpt(&file, 20, 100);
        assert!(e.len() <= 100, "{}", e.len());
        assert!(e.ends_with("secret line 9999"), "{e}");
        assert!(!e.contains("secret line 9990"), "{e}");
        // One huge line and a budget below MAX_LINE: still within the budget.
        assert!(excerpt(&"y".repeat(5000), 20, 50).len() <= 50);
    }
}
