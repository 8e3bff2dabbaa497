//! Typed Dockerfile instructions as produced by the parser. Values are kept raw
//! (quotes and `$VAR` references intact) wherever Docker expands them at build time;
//! the builder expands them with [`super::expand`]. Nothing here executes anything.

use serde::Serialize;

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The escape character from `# escape=` (default `\`).
    pub escape: char,
    /// The `# syntax=` directive, accepted and recorded but not acted upon.
    pub syntax: Option<String>,
    /// `ARG`s declared before the first `FROM` (usable in `FROM` lines and re-declared in stages).
    pub meta_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions that follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Position of this stage (0-based), usable as `COPY --from=<index>`.
    pub index: usize,
    /// The `AS name`, lower-cased as Docker does.
    pub name: Option<String>,
    /// Raw (unexpanded) base image reference, e.g. `debian:${TAG}` or `scratch` or another stage's name.
    pub base: String,
    /// Raw `--platform=` value, if any.
    pub platform: Option<String>,
    /// 1-based line of the `FROM`.
    pub line: usize,
    pub instructions: Vec<Located>,
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction text as written (continuations joined, heredoc bodies excluded),
    /// used for history `created_by` and error messages.
    pub original: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    /// Raw default value (unexpanded), if given.
    pub default: Option<String>,
    /// 1-based line of the `ARG` (for errors about a global ARG, which has no [`Located`]).
    #[serde(skip)]
    pub line: usize,
}

/// Shell form keeps the raw command string; exec (JSON) form is already a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ShellOrExec {
    Shell(String),
    Exec(Vec<String>),
}

/// A heredoc attached to RUN/COPY/ADD: `<<EOF`, `<<-EOF`, `<<"EOF"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, without quotes.
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`); 0 when none. As in BuildKit, it is
    /// the shell's to honour: a RUN command that uses heredocs is given to the shell with the
    /// bodies after it, so `3<<EOF cat /dev/fd/3` reads the body on descriptor 3; a RUN whose
    /// whole command is one heredoc runs its body as the script, and COPY/ADD write the body to
    /// a file, where a descriptor plays no part.
    pub fd: u64,
    /// The body lines as written, each with its line ending (`\n`, or `\r\n` in a file with
    /// CRLF line endings), leading tabs stripped when `<<-`.
    pub content: String,
    /// False when the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CopyArgs {
    /// Raw source words; in the shell form a heredoc word (`<<NAME`, `<<-"NAME"`) is replaced by
    /// the heredoc's name. The exec (JSON) form opens no heredoc: its words are kept as written.
    pub sources: Vec<String>,
    /// Raw destination word.
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// `ADD --checksum=`.
    pub checksum: Option<String>,
    /// `ADD --keep-git-dir`.
    pub keep_git_dir: bool,
    /// `COPY --exclude=` patterns.
    pub exclude: Vec<String>,
    /// `COPY --parents`.
    pub parents: bool,
    /// Heredocs used as inline sources (`COPY <<EOF /dest`).
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RunArgs {
    pub command: Option<ShellOrExec>,
    /// Heredocs of the RUN; when the command is one heredoc word (`<<EOF`, `<< EOF`, `3<<EOF`),
    /// `command` is `None` and the first heredoc is the script.
    pub heredocs: Vec<Heredoc>,
    /// Raw `--mount=` values (accepted; the builder decides what it supports).
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`
    None,
    Check {
        test: ShellOrExec,
        /// Raw duration strings as written (`30s`, `1m30s`).
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Instruction {
    Run(RunArgs),
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    /// Raw key/value pairs (quotes kept in both).
    Label(Vec<(String, String)>),
    Maintainer(String),
    /// Raw port words (`80`, `53/udp`, `${PORT}`).
    Expose(Vec<String>),
    /// Raw key/value pairs; the legacy `ENV key value` form yields one pair.
    Env(Vec<(String, String)>),
    Add(CopyArgs),
    Copy(CopyArgs),
    /// Raw paths (JSON or space-separated form).
    Volume(Vec<String>),
    /// Raw `user[:group]`.
    User(String),
    /// Raw path.
    Workdir(String),
    Arg(Vec<ArgDecl>),
    /// The trigger text (e.g. `RUN echo hi`), stored in the config as-is; parsed when triggered.
    Onbuild(String),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}
