//! `COPY --chmod=`: an octal mode, or (BuildKit's Dockerfile 1.14) a symbolic one as chmod(1)
//! reads it (`u+x,g-w`, `a=rX`, `go=u-w`), applied to each copied entry's own mode with a umask of
//! 0. The grammar and its quirks are BSD `setmode(3)`'s, which BuildKit's parser ports; `X`
//! works with every operator, as in chmod(1) (BuildKit's tests compare against chmod).

const SUID: u32 = 0o4000;
const SGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER: u32 = 0o700;
const GROUP: u32 = 0o070;
const OTHER: u32 = 0o007;
const ALL: u32 = 0o7777;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXEC: u32 = 0o111;

/// What `--chmod` does to a copied entry's mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Every entry gets this mode.
    Octal(u32),
    /// Each entry's mode is changed clause by clause.
    Symbolic(Vec<Op>),
}

/// One step of a symbolic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Set(u32),
    Clear(u32),
    /// `X`: set (or clear) these execute bits on a directory, or when the original mode has
    /// any execute bit.
    IfExec {
        bits: u32,
        set: bool,
    },
    /// `u`/`g`/`o` after an operator: copy that class's current bits (at shift `from`) into
    /// the `to` classes (a bitmask of user 4, group 2, other 1).
    Copy {
        from: u32,
        to: u32,
        clear: bool,
        set: bool,
    },
}

impl Chmod {
    /// Parse `--chmod`'s value; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Chmod, String> {
        if text.is_empty() {
            return Err("empty mode".to_string());
        }
        if text.as_bytes()[0].is_ascii_digit() {
            return match u32::from_str_radix(text, 8) {
                Ok(mode) if mode <= ALL => Ok(Chmod::Octal(mode)),
                Ok(_) => Err("octal mode is larger than 7777".to_string()),
                Err(_) => Err("not an octal number".to_string()),
            };
        }
        parse_symbolic(text.as_bytes()).map(Chmod::Symbolic)
    }

    /// The mode an entry with permission bits `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let ops = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(ops) => ops,
        };
        let original = mode & ALL;
        let mut new = original;
        for op in ops {
            match *op {
                Op::Set(bits) => new |= bits,
                Op::Clear(bits) => new &= !bits,
                Op::IfExec { bits, set } => {
                    if is_dir || original & EXEC != 0 {
                        if set {
                            new |= bits;
                        } else {
                            new &= !bits;
                        }
                    }
                }
                Op::Copy {
                    from,
                    to,
                    clear,
                    set,
                } => {
                    let value = (new >> from) & 0o7;
                    let shifts = [(4, 6), (2, 3), (1, 0)];
                    for (class, shift) in shifts {
                        if to & class == 0 {
                            continue;
                        }
                        if clear {
                            let clr = if set { 0o7 } else { value };
                            new &= !(clr << shift);
                        }
                        if set {
                            new |= value << shift;
                        }
                    }
                }
            }
        }
        new & ALL
    }
}

fn syntax(text: &[u8]) -> String {
    format!(
        "invalid symbolic mode {:?}: expected clauses such as u+x,g-w or a=rX",
        String::from_utf8_lossy(text)
    )
}

fn parse_symbolic(text: &[u8]) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    let mut s = text;
    let mut equal_done = false;
    loop {
        let mut who = 0u32;
        while let Some(&c) = s.first() {
            who |= match c {
                b'a' => ALL,
                b'u' => SUID | USER,
                b'g' => SGID | GROUP,
                b'o' => OTHER,
                _ => break,
            };
            s = &s[1..];
        }
        // One or more `op perms` groups follow the `who` part.
        loop {
            let Some((&op, rest)) = s.split_first() else {
                return Err(syntax(text));
            };
            s = rest;
            match op {
                b'+' | b'-' => {}
                b'=' => equal_done = false,
                _ => return Err(syntax(text)),
            }
            who &= !STICKY;
            let mut perm = 0u32;
            let mut perm_x = 0u32;
            loop {
                match s.first().copied() {
                    Some(b'r') => perm |= READ,
                    Some(b'w') => perm |= WRITE,
                    Some(b'x') => perm |= EXEC,
                    Some(b'X') => perm_x = EXEC,
                    Some(b's') => {
                        if who == 0 || who & !OTHER != 0 {
                            perm |= SUID | SGID;
                        }
                    }
                    Some(b't') => {
                        if who == 0 || who & !OTHER != 0 {
                            who |= STICKY;
                            perm |= STICKY;
                        }
                    }
                    Some(c @ (b'u' | b'g' | b'o')) => {
                        if perm != 0 {
                            add(&mut ops, op, who, perm);
                            perm = 0;
                        }
                        if op == b'=' {
                            equal_done = true;
                        }
                        if perm_x != 0 {
                            add_x(&mut ops, op, who);
                            perm_x = 0;
                        }
                        ops.push(copy_op(c, who, op));
                    }
                    _ => {
                        if perm != 0 || (op == b'=' && !equal_done) {
                            if op == b'=' {
                                equal_done = true;
                            }
                            add(&mut ops, op, who, perm);
                        }
                        if perm_x != 0 {
                            add_x(&mut ops, op, who);
                        }
                        break;
                    }
                }
                s = &s[1..];
            }
            match s.first() {
                None => return Ok(ops),
                Some(b',') => {
                    s = &s[1..];
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

/// `+`, `-`, `=` or `X` with `perm` for the classes in `who` (all of them when empty).
fn add(ops: &mut Vec<Op>, op: u8, who: u32, perm: u32) {
    let bits = if who != 0 { who & perm } else { perm };
    match op {
        b'=' => {
            ops.push(Op::Clear(if who != 0 { who } else { ALL }));
            ops.push(Op::Set(bits));
        }
        b'+' => ops.push(Op::Set(bits)),
        b'-' => ops.push(Op::Clear(bits)),
        _ => unreachable!("add is called with an operator"),
    }
}

/// `X` after operator `op`.
fn add_x(ops: &mut Vec<Op>, op: u8, who: u32) {
    let bits = if who != 0 { who & EXEC } else { EXEC };
    ops.push(Op::IfExec {
        bits,
        set: op != b'-',
    });
}

fn copy_op(class: u8, who: u32, op: u8) -> Op {
    let from = match class {
        b'u' => 6,
        b'g' => 3,
        _ => 0,
    };
    let to = if who != 0 {
        u32::from(who & 0o400 != 0) * 4
            + u32::from(who & 0o040 != 0) * 2
            + u32::from(who & 0o004 != 0)
    } else {
        7
    };
    Op::Copy {
        from,
        to,
        clear: matches!(op, b'-' | b'='),
        set: matches!(op, b'+' | b'='),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text).unwrap().apply(mode, is_dir)
    }

    /// Expected values are chmod(1)'s with a umask of 0 (GNU and BSD agree on these).
    #[test]
    fn symbolic_modes_follow_chmod() {
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("u+x,g-w", 0o664, false), 0o744);
        assert_eq!(apply("a=rX", 0o600, false), 0o444);
        assert_eq!(apply("a=rX", 0o700, false), 0o555);
        assert_eq!(apply("a=rX", 0o600, true), 0o555);
        assert_eq!(apply("a+X", 0o644, false), 0o644);
        assert_eq!(apply("+x", 0o600, false), 0o711);
        assert_eq!(apply("go=", 0o755, false), 0o700);
        assert_eq!(apply("u=rwx,g=,o=", 0o644, false), 0o700);
        assert_eq!(apply("u+rw,g+r,o-x,o+w", 0o001, false), 0o642);
        assert_eq!(apply("g+rw,o+rw", 0o500, true), 0o566);
        assert_eq!(apply("u=rwX,go=rX", 0o500, true), 0o755);
        assert_eq!(apply("go=u-w", 0o755, false), 0o755);
        assert_eq!(apply("go=u-w", 0o700, false), 0o755);
        assert_eq!(apply("g=u", 0o640, false), 0o660);
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("g+s,+t", 0o755, true), 0o3755);
        assert_eq!(apply("o+s", 0o755, false), 0o755);
        assert_eq!(apply("=", 0o4755, false), 0);
        assert_eq!(apply("u-x+w", 0o500, false), 0o600);
        assert_eq!(apply("a-X", 0o755, false), 0o644);
        assert_eq!(apply("a-X", 0o644, false), 0o644);
        assert_eq!(apply("0755", 0o600, false), 0o755);
    }

    #[test]
    fn bad_modes_are_refused() {
        for bad in [
            "", "u", "u+x,", "z+x", "u*x", "8", "07777777", "12345", "+x,,g",
        ] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Chmod::parse("7777").unwrap(), Chmod::Octal(0o7777));
    }
}
