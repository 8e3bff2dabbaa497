//! Shell patterns for `${V#pat}`, `${V%pat}` and `${V/pat/repl}`: `*`, `?`, `[...]` classes
//! and escaped literals, matched by simulating the pattern's automaton over the value. Linear in
//! value × pattern per match, never recursive and never backtracking, with a step budget the
//! caller owns so that a word's pattern work as a whole stays bounded.

/// A shell pattern (`*`, `?`, `[...]`, escape for literals) as used by `${V#pat}` and friends.
#[derive(Clone)]
enum GlobToken {
    Literal(char),
    Any,
    One,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl GlobToken {
    /// Whether this token consumes `c` (never true for `*`, which is handled as a loop).
    fn accepts(&self, c: char) -> bool {
        match self {
            GlobToken::Any => false,
            GlobToken::One => true,
            GlobToken::Literal(l) => *l == c,
            GlobToken::Class { negated, items } => {
                items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Why a pattern operation stopped.
pub(super) enum GlobStop {
    /// The step budget ran out.
    Budget,
    /// The result grew past the bound.
    TooLong,
}

/// A compiled pattern, matched by simulating its automaton: state `i` means "the first `i`
/// tokens are matched", `*` loops on its state. Time is linear in text × pattern, and nothing
/// recurses, whatever the pattern holds.
pub(super) struct Glob {
    tokens: Vec<GlobToken>,
}

/// The set of live automaton states while a text is read.
struct States {
    live: Vec<bool>,
    list: Vec<usize>,
}

impl Glob {
    pub(super) fn new(pattern: &str, escape: char) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        // `close[i]`: the first `]` at or after `i`, so that an unclosed `[` does not rescan
        // the rest of the pattern every time.
        let mut close = vec![None; chars.len() + 1];
        for i in (0..chars.len()).rev() {
            close[i] = if chars[i] == ']' {
                Some(i)
            } else {
                close[i + 1]
            };
        }
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
                    let Some(j) = close[j.min(chars.len())] else {
                        tokens.push(GlobToken::Literal('['));
                        continue;
                    };
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

    /// The same pattern read backwards (for suffixes).
    fn reversed(&self) -> Glob {
        Glob {
            tokens: self.tokens.iter().rev().cloned().collect(),
        }
    }

    fn accepting(&self) -> usize {
        self.tokens.len()
    }

    /// Adds state `i` and the states a run of `*` lets it skip to.
    fn add(&self, states: &mut States, mut i: usize) {
        loop {
            if states.live[i] {
                return;
            }
            states.live[i] = true;
            states.list.push(i);
            match self.tokens.get(i) {
                Some(GlobToken::Any) => i += 1,
                _ => return,
            }
        }
    }

    fn start(&self) -> States {
        let mut states = States {
            live: vec![false; self.tokens.len() + 1],
            list: Vec::new(),
        };
        self.add(&mut states, 0);
        states
    }

    /// Advances every live state over `c`; `None` when the budget is spent.
    fn step(&self, states: &mut States, c: char, budget: &mut u64) -> Option<()> {
        let current = std::mem::take(&mut states.list);
        *budget = budget.checked_sub(current.len() as u64 + 1)?;
        for &i in &current {
            states.live[i] = false;
        }
        for &i in &current {
            match &self.tokens.get(i) {
                Some(GlobToken::Any) => self.add(states, i),
                Some(token) if token.accepts(c) => self.add(states, i + 1),
                _ => {}
            }
        }
        Some(())
    }

    /// The lengths of the prefixes of `text` the pattern matches: the shortest, or with
    /// `longest` the longest. `Err` when the budget is spent.
    fn prefix_match(
        &self,
        text: &[char],
        longest: bool,
        budget: &mut u64,
    ) -> Result<Option<usize>, GlobStop> {
        let mut states = self.start();
        let mut found = None;
        for (n, &c) in text.iter().enumerate() {
            if states.live[self.accepting()] {
                found = Some(n);
                if !longest {
                    return Ok(found);
                }
            }
            if states.list.is_empty() {
                return Ok(found);
            }
            self.step(&mut states, c, budget).ok_or(GlobStop::Budget)?;
        }
        if states.live[self.accepting()] {
            found = Some(text.len());
        }
        Ok(found)
    }

    /// `value` without the shortest (or with `greedy` the longest) prefix the pattern matches.
    pub(super) fn trim_prefix(
        &self,
        value: &str,
        greedy: bool,
        budget: &mut u64,
    ) -> Result<String, GlobStop> {
        let chars: Vec<char> = value.chars().collect();
        Ok(match self.prefix_match(&chars, greedy, budget)? {
            Some(n) => chars[n..].iter().collect(),
            None => value.to_string(),
        })
    }

    /// `value` without the shortest (or with `greedy` the longest) suffix the pattern matches.
    pub(super) fn trim_suffix(
        &self,
        value: &str,
        greedy: bool,
        budget: &mut u64,
    ) -> Result<String, GlobStop> {
        let reversed: Vec<char> = value.chars().rev().collect();
        Ok(
            match self.reversed().prefix_match(&reversed, greedy, budget)? {
                Some(n) => reversed[n..].iter().rev().collect(),
                None => value.to_string(),
            },
        )
    }

    /// Replaces the first (or every) leftmost-longest non-empty match; stops when the budget
    /// is spent or the result grows past `max_len` bytes.
    pub(super) fn replace(
        &self,
        value: &str,
        replacement: &str,
        all: bool,
        budget: &mut u64,
        max_len: usize,
    ) -> Result<String, GlobStop> {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut replaced = false;
        while i < chars.len() {
            if !replaced || all {
                // The longest non-empty match starting at `i`.
                let end = self
                    .prefix_match(&chars[i..], true, budget)?
                    .filter(|&n| n > 0)
                    .map(|n| i + n);
                if let Some(end) = end {
                    out.push_str(replacement);
                    i = end;
                    replaced = true;
                    if out.len() > max_len {
                        return Err(GlobStop::TooLong);
                    }
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain backtracking definition of a match, for small inputs.
    fn reference(tokens: &[GlobToken], text: &[char]) -> bool {
        let Some((first, rest)) = tokens.split_first() else {
            return text.is_empty();
        };
        match first {
            GlobToken::Any => (0..=text.len()).any(|n| reference(rest, &text[n..])),
            token => text
                .split_first()
                .is_some_and(|(&c, tail)| token.accepts(c) && reference(rest, tail)),
        }
    }

    fn all_words(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |a| format!("{w}{a}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    #[test]
    fn the_automaton_agrees_with_backtracking() {
        let patterns = all_words(&["a", "b", "*", "?", "[!a]"], 4);
        let texts = all_words(&["a", "b"], 5);
        for pattern in &patterns {
            let glob = Glob::new(pattern, '\\');
            let reversed = glob.reversed();
            for text in &texts {
                let chars: Vec<char> = text.chars().collect();
                let mut budget = u64::MAX;
                let longest = glob.prefix_match(&chars, true, &mut budget).ok().flatten();
                let whole = reference(&glob.tokens, &chars);
                assert_eq!(longest == Some(chars.len()), whole, "{pattern} on {text}");
                let shortest = glob.prefix_match(&chars, false, &mut budget).ok().flatten();
                let expected = (0..=chars.len()).find(|&n| reference(&glob.tokens, &chars[..n]));
                assert_eq!(shortest, expected, "{pattern} on {text}");
                let rev: Vec<char> = chars.iter().rev().copied().collect();
                let suffix = reversed
                    .prefix_match(&rev, false, &mut budget)
                    .ok()
                    .flatten();
                let expected = (0..=chars.len())
                    .rev()
                    .find(|&s| reference(&glob.tokens, &chars[s..]))
                    .map(|s| chars.len() - s);
                assert_eq!(suffix, expected, "{pattern} suffix of {text}");
            }
        }
    }

    #[test]
    fn unclosed_classes_are_literal_without_rescanning() {
        let pattern = "[".repeat(100_000);
        let glob = Glob::new(&pattern, '\\');
        assert_eq!(glob.tokens.len(), 100_000);
        assert!(glob
            .tokens
            .iter()
            .all(|t| matches!(t, GlobToken::Literal('['))));
    }
}
