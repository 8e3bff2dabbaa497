//! Kiln's parse put in BuildKit's terms: each typed instruction becomes the node BuildKit's
//! parser builds for it (keyword, flags, argument strings), plus what BuildKit's `Dump()` leaves
//! out but its parser records (line, exec form, heredocs). It must only read Kiln's AST: where
//! the AST keeps less than BuildKit's node, the rendering says so in [`super::normalise`]
//! rather than guessing here.

use kiln_dockerfile::{
    parse_instruction, ArgDecl, CopyArgs, Dockerfile, Healthcheck, Heredoc, Instruction, Located,
    ShellOrExec, Stage,
};

use super::dump::{Arg, Node};

/// One instruction with what either side records beyond the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inst {
    pub node: Node,
    /// 1-based line where it starts; `None` where Kiln does not keep it (meta ARGs).
    pub line: Option<usize>,
    /// Exec (JSON) form; `None` where Kiln does not record it (see `normalise::EXEC_FORM`).
    pub json: Option<bool>,
    pub heredocs: Vec<Doc>,
}

/// A heredoc as the builder will use it: the body after `<<-` tab stripping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub name: String,
    pub fd: u64,
    pub expand: bool,
    pub content: String,
}

impl Inst {
    fn new(node: Node, line: Option<usize>) -> Inst {
        Inst {
            node,
            line,
            json: None,
            heredocs: Vec::new(),
        }
    }
}

fn strs<'a>(node: &mut Node, values: impl IntoIterator<Item = &'a String>) {
    node.args
        .extend(values.into_iter().map(|s| Arg::Str(s.clone())));
}

fn docs(heredocs: &[Heredoc]) -> Vec<Doc> {
    heredocs
        .iter()
        .map(|h| Doc {
            name: h.name.clone(),
            fd: h.fd,
            expand: h.expand,
            content: h.content.clone(),
        })
        .collect()
}

/// The whole file in order: the meta ARGs (as one instruction, see
/// `normalise::META_ARG_GROUPING`), then each stage's FROM and instructions.
pub fn dockerfile(df: &Dockerfile) -> Vec<Inst> {
    let mut out = Vec::new();
    if !df.meta_args.is_empty() {
        out.push(Inst::new(arg_node(&df.meta_args), None));
    }
    for stage in &df.stages {
        out.push(from(stage));
        out.extend(stage.instructions.iter().map(|l| located(l, df.escape)));
    }
    out
}

fn arg_node(decls: &[ArgDecl]) -> Node {
    let mut node = Node::new("arg");
    for d in decls {
        let word = match &d.default {
            Some(v) => format!("{}={v}", d.name),
            None => d.name.clone(),
        };
        node.args.push(Arg::Str(word));
    }
    node
}

pub fn from(stage: &Stage) -> Inst {
    let mut node = Node::new("from");
    if let Some(p) = &stage.platform {
        node.flags.push(format!("--platform={p}"));
    }
    node.args.push(Arg::Str(stage.base.clone()));
    if let Some(name) = &stage.name {
        node.args.push(Arg::Str("AS".into()));
        node.args.push(Arg::Str(name.clone()));
    }
    Inst::new(node, Some(stage.line))
}

fn command(node: &mut Node, value: &ShellOrExec) -> bool {
    match value {
        ShellOrExec::Shell(s) => {
            node.args.push(Arg::Str(s.clone()));
            false
        }
        ShellOrExec::Exec(list) => {
            strs(node, list);
            true
        }
    }
}

fn copy(keyword: &str, a: &CopyArgs) -> (Node, Vec<Doc>) {
    let mut node = Node::new(keyword);
    let mut flag = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            node.flags.push(format!("--{name}={v}"));
        }
    };
    flag("from", &a.from);
    flag("chown", &a.chown);
    flag("chmod", &a.chmod);
    flag("checksum", &a.checksum);
    for (name, on) in [
        ("link", a.link),
        ("keep-git-dir", a.keep_git_dir),
        ("parents", a.parents),
    ] {
        if on {
            node.flags.push(format!("--{name}"));
        }
    }
    node.flags
        .extend(a.exclude.iter().map(|e| format!("--exclude={e}")));
    // A source that names one of the instruction's heredocs was a `<<NAME` word.
    for s in &a.sources {
        let word = if a.heredocs.iter().any(|h| &h.name == s) {
            format!("<<{s}")
        } else {
            s.clone()
        };
        node.args.push(Arg::Str(word));
    }
    node.args.push(Arg::Str(a.dest.clone()));
    (node, docs(&a.heredocs))
}

/// One instruction inside a stage. `escape` is the file's escape character (for ONBUILD's
/// trigger, which Kiln keeps as text and parses when it fires).
pub fn located(l: &Located, escape: char) -> Inst {
    let line = Some(l.line);
    let mut json = None;
    let mut heredocs = Vec::new();
    let node = match &l.instruction {
        Instruction::Run(r) => {
            let mut node = Node::new("run");
            node.flags
                .extend(r.mounts.iter().map(|m| format!("--mount={m}")));
            if let Some(n) = &r.network {
                node.flags.push(format!("--network={n}"));
            }
            if let Some(s) = &r.security {
                node.flags.push(format!("--security={s}"));
            }
            json = Some(match &r.command {
                Some(c) => command(&mut node, c),
                // Only a heredoc word: see normalise::HEREDOC_WORD.
                None => {
                    let name = r.heredocs.first().map_or("", |h| h.name.as_str());
                    node.args.push(Arg::Str(format!("<<{name}")));
                    false
                }
            });
            heredocs = docs(&r.heredocs);
            node
        }
        Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
            let keyword = if matches!(l.instruction, Instruction::Cmd(_)) {
                "cmd"
            } else {
                "entrypoint"
            };
            let mut node = Node::new(keyword);
            json = Some(command(&mut node, c));
            node
        }
        Instruction::Shell(list) => {
            let mut node = Node::new("shell");
            strs(&mut node, list);
            json = Some(true);
            node
        }
        Instruction::Label(pairs) | Instruction::Env(pairs) => {
            let keyword = if matches!(l.instruction, Instruction::Env(_)) {
                "env"
            } else {
                "label"
            };
            let mut node = Node::new(keyword);
            for (k, v) in pairs {
                node.args.push(Arg::Str(k.clone()));
                node.args.push(Arg::Str(v.clone()));
            }
            node
        }
        Instruction::Maintainer(s)
        | Instruction::User(s)
        | Instruction::Workdir(s)
        | Instruction::Stopsignal(s) => {
            let keyword = match l.instruction {
                Instruction::Maintainer(_) => "maintainer",
                Instruction::User(_) => "user",
                Instruction::Workdir(_) => "workdir",
                _ => "stopsignal",
            };
            let mut node = Node::new(keyword);
            node.args.push(Arg::Str(s.clone()));
            node
        }
        Instruction::Expose(words) | Instruction::Volume(words) => {
            let keyword = if matches!(l.instruction, Instruction::Expose(_)) {
                "expose"
            } else {
                "volume"
            };
            let mut node = Node::new(keyword);
            strs(&mut node, words);
            node
        }
        Instruction::Add(a) | Instruction::Copy(a) => {
            let keyword = if matches!(l.instruction, Instruction::Add(_)) {
                "add"
            } else {
                "copy"
            };
            let (node, d) = copy(keyword, a);
            heredocs = d;
            node
        }
        Instruction::Arg(decls) => arg_node(decls),
        Instruction::Onbuild(trigger) => {
            let parsed = parse_instruction(trigger, l.line, escape).unwrap_or_else(|e| {
                panic!(
                    "line {}: Kiln cannot re-parse its own ONBUILD trigger `{trigger}`: {e}",
                    l.line
                )
            });
            let sub = located(&parsed, escape);
            json = sub.json;
            heredocs = sub.heredocs;
            let mut node = Node::new("onbuild");
            node.args.push(Arg::Sub(sub.node));
            node
        }
        Instruction::Healthcheck(h) => {
            let mut node = Node::new("healthcheck");
            match h {
                Healthcheck::None => {
                    node.args.push(Arg::Str("NONE".into()));
                    json = Some(false);
                }
                Healthcheck::Check {
                    test,
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries,
                } => {
                    for (name, v) in [
                        ("interval", interval),
                        ("timeout", timeout),
                        ("start-period", start_period),
                        ("start-interval", start_interval),
                    ] {
                        if let Some(v) = v {
                            node.flags.push(format!("--{name}={v}"));
                        }
                    }
                    if let Some(r) = retries {
                        node.flags.push(format!("--retries={r}"));
                    }
                    node.args.push(Arg::Str("CMD".into()));
                    json = Some(command(&mut node, test));
                }
            }
            node
        }
    };
    Inst {
        node,
        line,
        json,
        heredocs,
    }
}
