//! One module per Dockerfile instruction (metadata-only ones share [`metadata`]), each a type
//! implementing [`Command`]: what the instruction does to a [`StageState`], and what the build
//! needs to know about it beforehand (its config change, how the layer cache treats it, what its
//! cache key records, what it reads, whether it needs the base image's files). [`command`] is the
//! one place that tells instruction kinds apart. Commands change the stage's root and config;
//! they never snapshot, push or log step timings — [`crate::build`] does that around them.

pub mod arg;
pub mod copy;
pub mod env;
pub mod metadata;
pub mod run;
pub mod user;
pub mod workdir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::run::Isolation;
use kiln_dockerfile::expand::{expand_word, expand_words, ExpandError};
use kiln_dockerfile::Instruction;
use kiln_oci::image::ImageConfig;

/// Everything a command may read or change while one stage is built. Cloned to follow a stage's
/// config ahead of its steps (see [`Command::configure`]).
#[derive(Clone)]
pub struct StageState {
    /// Host directory holding the stage's root filesystem (`/` when building in place).
    pub root: PathBuf,
    pub isolation: Isolation,
    /// The image config being built (starts as the base image's).
    pub config: ImageConfig,
    /// ARGs declared in this stage so far, with their effective values (`None`: declared, no value).
    pub args: BTreeMap<String, Option<String>>,
    /// Build args given on the command line (`--build-arg`).
    pub build_args: BTreeMap<String, String>,
    /// Global ARGs (declared before the first FROM) with their effective values.
    pub meta_args: BTreeMap<String, Option<String>>,
    /// Dockerfile escape character.
    pub escape: char,
    /// CMD was set in this stage (ENTRYPOINT clears an inherited CMD only when it was not).
    pub cmd_set: bool,
    /// Scratch space for this stage (heredoc files, downloads).
    pub scratch: PathBuf,
    /// What `RUN --mount` reads: `--secret`, the mount cache, the context.
    pub run_mounts: std::sync::Arc<crate::run_mounts::MountEnv>,
    /// `--allow`: what `RUN --network=host` and `RUN --security=insecure` need.
    pub entitlements: crate::run::entitlements::Entitlements,
    /// How RUN steps of this stage's foreign platform are emulated (`None`: native, or a host
    /// handler does it).
    pub emulator: Option<crate::run::emulation::BinfmtEntry>,
    /// A later step of this stage is a `RUN`: the sandbox of the next one may be prepared while
    /// this step runs (set by the builder before each step).
    pub run_follows: bool,
}

/// Sources COPY/ADD can read from, resolved by the builder before the command runs.
pub enum CopySource<'a> {
    /// The build context (with .dockerignore applied).
    Context(&'a crate::context::BuildContext),
    /// The root filesystem of an earlier stage or of an image (`COPY --from`).
    Root(&'a Path),
}

/// What a command did, so the builder knows whether to snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Only the config changed: no layer.
    ConfigOnly,
    /// The filesystem may have changed: take a snapshot.
    Filesystem,
}

/// How the layer cache treats a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheable {
    /// Looked up, and stored on a miss.
    Yes,
    /// RUN/COPY/ADD whose caching is turned off by a flag.
    Disabled,
    /// Metadata steps (and WORKDIR): not cached, but part of the key chain.
    No,
}

/// Which steps the layer cache covers (`--cache-run-layers`, `--cache-copy-layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFlags {
    pub run: bool,
    pub copy: bool,
}

/// What a step's cache key records of the step itself (see [`crate::cache::key::StepInput`]);
/// the key chain, the user, workdir and shell are added by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts {
    /// The instruction as the key sees it (a stable serialisation, expanded where the step
    /// expands its arguments itself).
    pub instruction: String,
    /// Variables the step can see, for a step that runs something.
    pub visible_env: Vec<String>,
    /// The files a COPY/ADD reads, whose digest the key includes.
    pub files: Option<FilesRead>,
}

/// The files a COPY/ADD reads, as its cache key hashes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesRead {
    pub is_add: bool,
    /// Heredoc sources: name and content as the copy writes it.
    pub inline: Vec<(String, String)>,
    /// The other sources, expanded, relative to where the step reads from.
    pub sources: Vec<String>,
}

/// What a COPY/ADD reads files from, as written in the Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads<'a> {
    /// `--from`: a stage name or index, or an image reference; `None` for the build context.
    pub from: Option<&'a str>,
    /// The source paths, unexpanded.
    pub sources: &'a [String],
}

/// What is wrong with an instruction as written: a bad expansion or argument. Found without
/// touching any file, and cloneable, so a plan worked out ahead of the steps can report it when
/// its step is reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InstructionError {
    #[error("{0}")]
    Expand(#[from] ExpandError),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Expand(#[from] ExpandError),
    #[error("RUN failed: {0}")]
    Run(#[from] crate::run::RunError),
    #[error("{0}")]
    Copy(#[from] crate::copier::CopyError),
    #[error("{0}")]
    Context(#[from] crate::context::ContextError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl CommandError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CommandError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The same variants, so messages and their causes read as they did before the split.
impl From<InstructionError> for CommandError {
    fn from(e: InstructionError) -> Self {
        match e {
            InstructionError::Expand(e) => CommandError::Expand(e),
            InstructionError::Invalid(message) => CommandError::Invalid(message),
        }
    }
}

/// One Dockerfile instruction. The defaults describe a metadata instruction: it only changes
/// the config, is not cached but is part of the key chain (by its text), reads nothing and
/// never needs the base image's files.
pub trait Command {
    /// The instruction's change to the stage's config and ARGs, worked out without touching any
    /// file, so that a stage's config can be followed ahead of its steps.
    fn configure(&self, _state: &mut StageState) -> Result<(), InstructionError> {
        Ok(())
    }

    /// Carry the instruction out on the stage's root and config.
    fn execute(
        &self,
        state: &mut StageState,
        _source: Option<CopySource<'_>>,
    ) -> Result<Outcome, CommandError> {
        self.configure(state)?;
        Ok(Outcome::ConfigOnly)
    }

    /// How the layer cache treats the step.
    fn cacheable(&self, _flags: CacheFlags) -> Cacheable {
        Cacheable::No
    }

    /// What the step's cache key records of it, as the step sees `state`. `text` is the
    /// instruction as written.
    fn key_parts(&self, _state: &StageState, text: &str) -> Result<KeyParts, InstructionError> {
        Ok(KeyParts {
            instruction: text.to_string(),
            visible_env: Vec::new(),
            files: None,
        })
    }

    /// What the step reads files from (COPY/ADD).
    fn reads(&self) -> Option<Reads<'_>> {
        None
    }

    /// Whether the step writes the root filesystem when it runs (rather than only the config).
    fn writes_root(&self) -> bool {
        false
    }

    /// Why the step needs the base image's files even when every step before it was a cache
    /// hit, if it does: a step that writes files and is not cached must run on them.
    fn needs_root(&self, cacheable: Cacheable) -> Option<&'static str> {
        (self.writes_root() && cacheable != Cacheable::Yes).then_some("a step that is not cached")
    }
}

/// The command for an instruction: the one place that tells instruction kinds apart.
pub fn command(instruction: &Instruction) -> Box<dyn Command + '_> {
    match instruction {
        Instruction::Run(args) => Box::new(run::Run(args)),
        Instruction::Copy(args) => Box::new(copy::Copy {
            args,
            is_add: false,
        }),
        Instruction::Add(args) => Box::new(copy::Copy { args, is_add: true }),
        Instruction::Env(pairs) => Box::new(env::Env(pairs)),
        Instruction::Arg(decls) => Box::new(arg::Arg(decls)),
        Instruction::Workdir(path) => Box::new(workdir::Workdir(path)),
        Instruction::User(user) => Box::new(user::User(user)),
        Instruction::Cmd(cmd) => Box::new(metadata::Cmd(cmd)),
        Instruction::Entrypoint(ep) => Box::new(metadata::Entrypoint(ep)),
        Instruction::Label(pairs) => Box::new(metadata::Label(pairs)),
        Instruction::Maintainer(name) => Box::new(metadata::Maintainer(name)),
        Instruction::Expose(ports) => Box::new(metadata::Expose(ports)),
        Instruction::Volume(paths) => Box::new(metadata::Volume(paths)),
        Instruction::Stopsignal(sig) => Box::new(metadata::Stopsignal(sig)),
        Instruction::Healthcheck(hc) => Box::new(metadata::Healthcheck(hc)),
        Instruction::Shell(shell) => Box::new(metadata::Shell(shell)),
        Instruction::Onbuild(trigger) => Box::new(metadata::Onbuild(trigger)),
    }
}

impl StageState {
    /// Value of a variable as instructions see it: ENV wins over ARG (Docker's rule).
    pub fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.config.env_value(name) {
            return Some(v);
        }
        self.args.get(name).cloned().flatten()
    }

    pub fn expand(&self, raw: &str) -> Result<String, InstructionError> {
        let lookup = |name: &str| self.lookup(name);
        Ok(expand_word(raw, &lookup, self.escape)?)
    }

    pub fn expand_all(&self, raw: &str) -> Result<Vec<String>, InstructionError> {
        let lookup = |name: &str| self.lookup(name);
        Ok(expand_words(raw, &lookup, self.escape)?)
    }

    /// Environment for a RUN: the config's Env, then declared ARGs that ENV does not override.
    pub fn run_env(&self) -> Vec<String> {
        let mut env: Vec<String> = self.config.config.env.clone().unwrap_or_default();
        for (name, value) in &self.args {
            if let Some(value) = value {
                if self.config.env_value(name).is_none() {
                    env.push(format!("{name}={value}"));
                }
            }
        }
        env
    }

    /// The shell for shell-form commands (`SHELL`, default `/bin/sh -c`).
    pub fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()])
    }

    /// The working directory in the image (default `/`).
    pub fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    }

    /// Resolve a path written in an instruction against WORKDIR, as an absolute in-image path.
    /// A trailing `/` is kept because it changes COPY's meaning.
    pub fn in_image_path(&self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{}", self.workdir(), path)
        };
        let mut clean = crate::fsutil::clean_abs(&joined);
        if (path.ends_with('/') || path.ends_with("/.") || path == ".") && !clean.ends_with('/') {
            clean.push('/');
        }
        clean
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn state(root: &Path) -> StageState {
        StageState {
            root: root.to_path_buf(),
            isolation: Isolation::Chroot,
            config: ImageConfig::default(),
            args: BTreeMap::new(),
            build_args: BTreeMap::new(),
            meta_args: BTreeMap::new(),
            escape: '\\',
            cmd_set: false,
            scratch: root.join(".scratch"),
            run_mounts: Default::default(),
            entitlements: Default::default(),
            emulator: None,
            run_follows: false,
        }
    }
}
