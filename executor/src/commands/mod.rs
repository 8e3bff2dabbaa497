//! One module per Dockerfile instruction (metadata-only ones share [`metadata`]), all executed
//! through [`execute`] against a [`StageState`]. Commands change the stage's root and config;
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
use kiln_dockerfile::expand::{expand_word, expand_words};
use kiln_dockerfile::Instruction;
use kiln_oci::image::ImageConfig;

/// Everything a command may read or change while one stage is built. Cloned (over another
/// root) to work out the cache keys of a stage's steps before they run.
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

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Expand(#[from] kiln_dockerfile::expand::ExpandError),
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

impl StageState {
    /// Value of a variable as instructions see it: ENV wins over ARG (Docker's rule).
    pub fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.config.env_value(name) {
            return Some(v);
        }
        self.args.get(name).cloned().flatten()
    }

    pub fn expand(&self, raw: &str) -> Result<String, CommandError> {
        let lookup = |name: &str| self.lookup(name);
        Ok(expand_word(raw, &lookup, self.escape)?)
    }

    pub fn expand_all(&self, raw: &str) -> Result<Vec<String>, CommandError> {
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

/// Execute one instruction.
pub fn execute(
    instruction: &Instruction,
    state: &mut StageState,
    copy_source: Option<CopySource<'_>>,
) -> Result<Outcome, CommandError> {
    match instruction {
        Instruction::Run(args) => run::execute(args, state),
        Instruction::Copy(args) => copy::execute(args, state, copy_source, false),
        Instruction::Add(args) => copy::execute(args, state, copy_source, true),
        Instruction::Env(pairs) => env::execute(pairs, state),
        Instruction::Arg(decls) => arg::execute(decls, state),
        Instruction::Workdir(path) => workdir::execute(path, state),
        Instruction::User(user) => user::execute(user, state),
        Instruction::Cmd(cmd) => metadata::cmd(cmd, state),
        Instruction::Entrypoint(ep) => metadata::entrypoint(ep, state),
        Instruction::Label(pairs) => metadata::label(pairs, state),
        Instruction::Maintainer(name) => metadata::maintainer(name, state),
        Instruction::Expose(ports) => metadata::expose(ports, state),
        Instruction::Volume(paths) => metadata::volume(paths, state),
        Instruction::Stopsignal(sig) => metadata::stopsignal(sig, state),
        Instruction::Healthcheck(hc) => metadata::healthcheck(hc, state),
        Instruction::Shell(shell) => metadata::shell(shell, state),
        Instruction::Onbuild(trigger) => metadata::onbuild(trigger, state),
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
        }
    }
}
