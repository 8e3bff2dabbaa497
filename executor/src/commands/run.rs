//! `RUN`: executes a command in the stage root (shell form through SHELL, exec form as given,
//! heredoc scripts as BuildKit runs them). Reports the exit status; the builder snapshots after.

use super::{
    workdir::ensure_dir, CacheFlags, Cacheable, Command, CommandError, CopySource,
    InstructionError, KeyParts, Outcome, StageState,
};
use crate::run::entitlements::step_modes;
use crate::run::{run_with, Network, RunOptions, RunSpec, Security};
use crate::run_mounts::{parse_mount, prepare, MountSpec};
use kiln_dockerfile::{Heredoc, RunArgs, ShellOrExec};

/// `RUN`: cached unless `--cache-run-layers=false`; its key records the command as written (the
/// shell expands it) and the variables it runs with.
pub struct Run<'a>(pub &'a RunArgs);

impl Command for Run<'_> {
    fn execute(
        &self,
        state: &mut StageState,
        _source: Option<CopySource<'_>>,
    ) -> Result<Outcome, CommandError> {
        execute(self.0, state)
    }

    fn cacheable(&self, flags: CacheFlags) -> Cacheable {
        // What a bind mount of the context shows is not in the key, so such a step is not
        // cached; what a bind `from=` a stage or an image shows is.
        if self.0.mounts.iter().any(|m| binds_context(m)) {
            Cacheable::No
        } else if flags.run {
            Cacheable::Yes
        } else {
            Cacheable::Disabled
        }
    }

    fn key_parts(&self, state: &StageState, _text: &str) -> Result<KeyParts, InstructionError> {
        // Checked here too, so that a step that needs an entitlement fails before a cache hit
        // could stand in for it (BuildKit checks entitlements before solving). The key holds the
        // flags, network and security included, as BuildKit's operation does: a flag naming
        // the default (`--network=default`, `--security=sandbox`) is the same step as none.
        modes(self.0, state).map_err(InstructionError::Invalid)?;
        Ok(KeyParts {
            instruction: format!("RUN {}", keyed(self.0)),
            visible_env: state.run_env(),
            files: None,
        })
    }

    fn writes_root(&self) -> bool {
        true
    }
}

/// The RUN as its cache key holds it: `--network=default` and `--security=sandbox` are left out,
/// since they change nothing.
fn keyed(args: &RunArgs) -> String {
    let mut args = args.clone();
    if args.network.as_deref() == Some("default") {
        args.network = None;
    }
    if args.security.as_deref() == Some("sandbox") {
        args.security = None;
    }
    serde_json::to_string(&args).unwrap_or_default()
}

/// The step's network and confinement under the build's `--allow` entitlements.
fn modes(args: &RunArgs, state: &StageState) -> Result<(Network, Security), String> {
    step_modes(
        args.network.as_deref(),
        args.security.as_deref(),
        state.entitlements,
    )
}

/// The argv a RUN executes.
pub fn argv(args: &RunArgs, state: &StageState) -> Result<Vec<String>, CommandError> {
    let shell = state.shell();
    match (&args.command, args.heredocs.as_slice()) {
        (Some(ShellOrExec::Exec(argv)), _) => {
            if argv.is_empty() {
                return Err(CommandError::Invalid("RUN with an empty command".into()));
            }
            Ok(argv.clone())
        }
        (Some(ShellOrExec::Shell(text)), heredocs) => {
            // The heredoc bodies follow the command line, so the shell itself feeds them to the command.
            let mut script = text.clone();
            for doc in heredocs {
                script.push('\n');
                script.push_str(&heredoc_body(doc));
                script.push_str(&doc.name);
            }
            let mut argv = shell;
            argv.push(script);
            Ok(argv)
        }
        (None, [doc, ..]) => {
            let body = &doc.content;
            if body.starts_with("#!") {
                // A script with a shebang runs under its own interpreter, as BuildKit does: it is
                // written into the root and executed directly.
                let path = write_script(state, body)?;
                Ok(vec![path])
            } else {
                let mut argv = shell;
                argv.push(body.clone());
                Ok(argv)
            }
        }
        (None, []) => Err(CommandError::Invalid("RUN requires a command".into())),
    }
}

fn heredoc_body(doc: &Heredoc) -> String {
    let mut body = doc.content.clone();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    body
}

/// Place a shebang script where the command can see it: a temporary file at the top of the
/// root that is removed after the step (so it never reaches a layer). It is written by the root
/// writer: created new relative to the root's descriptor, never through a symlink (a base image
/// may have planted one at that name), replacing whatever is there.
fn write_script(state: &StageState, body: &str) -> Result<String, CommandError> {
    use crate::rootfs::{
        Content, DirTimes, ImpliedDirs, Meta, Protected, RootWriter, WriterOptions, XattrFailures,
    };
    let name = format!("/.kiln-heredoc-{}", std::process::id());
    let fail = |e: crate::rootfs::WriteError| {
        CommandError::io(
            format!("writing heredoc script {name}"),
            std::io::Error::other(e.to_string()),
        )
    };
    let opts = WriterOptions {
        implied_dirs: ImpliedDirs::Umask,
        xattr_failures: XattrFailures::Ignore,
        dir_times: DirTimes::FirstWins,
        record: false,
    };
    let mut w = RootWriter::new(&state.root, Protected::none(), opts);
    let mut t = w
        .locate(std::path::Path::new(name.trim_start_matches('/')))
        .map_err(fail)?;
    let now = filetime::FileTime::now();
    let meta = Meta {
        mode: 0o755,
        owner: None,
        atime: now,
        mtime: now,
        xattrs: Vec::new(),
    };
    w.file(&mut t, Content::Stream(&mut body.as_bytes()), &meta)
        .map_err(fail)?;
    w.finish().map_err(fail)?;
    Ok(name)
}

/// Whether a raw `--mount` value is (or may be, once expanded) a bind mount of something the
/// step's key does not hold: the context, or a `from=` that is not planned (one with a variable).
fn binds_context(raw: &str) -> bool {
    let Ok(fields) = kiln_dockerfile::mount_fields(raw) else {
        return true;
    };
    let value = |key: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    };
    let bind = value("type").is_none_or(|t| t.eq_ignore_ascii_case("bind") || t.contains('$'));
    let planned_from = value("from").is_some_and(|f| !f.is_empty() && !f.contains('$'));
    bind && !(planned_from && value("type").is_none_or(|t| !t.contains('$')))
}

/// The step's `--mount`s, read with the stage's variables, targets made absolute against
/// WORKDIR.
fn mount_specs(
    args: &RunArgs,
    state: &StageState,
) -> Result<Vec<(MountSpec, Option<String>)>, CommandError> {
    let mut specs = Vec::new();
    let mut ssh_mounts = 0;
    for raw in &args.mounts {
        let expand = |v: &str| state.expand(v).map_err(|e| e.to_string());
        let spec = parse_mount(raw, &expand)
            .map_err(|e| CommandError::Invalid(format!("RUN --mount={raw}: {e}")))?;
        let target = match &spec {
            MountSpec::Bind { target, .. }
            | MountSpec::Cache { target, .. }
            | MountSpec::Tmpfs { target, .. } => Some(target.clone()),
            MountSpec::Secret { target, .. } => target.clone(),
            // BuildKit numbers the agent sockets of a step from 0.
            MountSpec::Ssh { target, .. } => {
                ssh_mounts += 1;
                Some(
                    target
                        .clone()
                        .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", ssh_mounts - 1)),
                )
            }
        }
        .map(|t| state.in_image_path(&t).trim_end_matches('/').to_string())
        .map(|t| if t.is_empty() { "/".to_string() } else { t });
        if target.as_deref() == Some("/") {
            return Err(CommandError::Invalid(format!(
                "RUN --mount={raw}: a mount cannot cover /"
            )));
        }
        specs.push((spec, target));
    }
    Ok(specs)
}

fn execute(args: &RunArgs, state: &mut StageState) -> Result<Outcome, CommandError> {
    let argv = argv(args, state)?;
    let workdir = state.workdir();
    ensure_dir(&state.root, &workdir)?;
    let specs = mount_specs(args, state)?;
    // Dropped after the step: removes secret files and copies, releases cache locks.
    let mounts = prepare(&state.run_mounts, &specs).map_err(CommandError::Invalid)?;
    let mut env = state.run_env();
    env.extend(mounts.env.iter().cloned());
    // As BuildKit: the first agent socket is SSH_AUTH_SOCK unless the step's environment sets it.
    if let Some(sock) = &mounts.ssh_auth_sock {
        if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            env.push(format!("SSH_AUTH_SOCK={sock}"));
        }
    }
    let spec = RunSpec {
        root: state.root.clone(),
        isolation: state.isolation,
        argv: argv.clone(),
        env,
        workdir,
        user: state.config.config.user.clone().unwrap_or_default(),
    };
    // In place, whether `none` gets a network namespace is the run module's decision (and
    // warning): it depends on what the container allows.
    let (network, security) = modes(args, state).map_err(CommandError::Invalid)?;
    let options = RunOptions {
        network,
        security,
        mounts: mounts.mounts.clone(),
        emulator: state.emulator.clone(),
        prepare_next: state.run_follows,
    };
    let result = run_with(&spec, &options);
    drop(mounts);
    if let Some(script) = argv.first().filter(|a| a.starts_with("/.kiln-heredoc-")) {
        let _ = std::fs::remove_file(state.root.join(script.trim_start_matches('/')));
    }
    result?;
    Ok(Outcome::Filesystem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    fn doc(name: &str, content: &str) -> Heredoc {
        Heredoc {
            name: name.into(),
            fd: 0,
            content: content.into(),
            expand: true,
        }
    }

    #[test]
    fn shell_exec_and_heredoc_forms() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        let shell = RunArgs {
            command: Some(ShellOrExec::Shell("echo hi".into())),
            ..Default::default()
        };
        assert_eq!(argv(&shell, &st).unwrap(), vec!["/bin/sh", "-c", "echo hi"]);
        let exec = RunArgs {
            command: Some(ShellOrExec::Exec(vec!["/bin/true".into()])),
            ..Default::default()
        };
        assert_eq!(argv(&exec, &st).unwrap(), vec!["/bin/true"]);
        let only_doc = RunArgs {
            command: None,
            heredocs: vec![doc("EOF", "echo a\necho b\n")],
            ..Default::default()
        };
        assert_eq!(
            argv(&only_doc, &st).unwrap(),
            vec!["/bin/sh", "-c", "echo a\necho b\n"]
        );
        let with_doc = RunArgs {
            command: Some(ShellOrExec::Shell("cat <<EOF > /x".into())),
            heredocs: vec![doc("EOF", "line\n")],
            ..Default::default()
        };
        assert_eq!(
            argv(&with_doc, &st).unwrap(),
            vec!["/bin/sh", "-c", "cat <<EOF > /x\nline\nEOF"]
        );
        st.config.config.shell = Some(vec![
            "/bin/bash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
        ]);
        assert_eq!(
            argv(&shell, &st).unwrap(),
            vec!["/bin/bash", "-eo", "pipefail", "-c", "echo hi"]
        );
    }

    #[test]
    fn flags_naming_the_default_do_not_change_the_key() {
        let plain = RunArgs {
            command: Some(ShellOrExec::Shell("make".into())),
            ..Default::default()
        };
        let defaults = RunArgs {
            network: Some("default".into()),
            security: Some("sandbox".into()),
            ..plain.clone()
        };
        assert_eq!(keyed(&plain), keyed(&defaults));
        for other in [
            RunArgs {
                network: Some("none".into()),
                ..plain.clone()
            },
            RunArgs {
                security: Some("insecure".into()),
                ..plain.clone()
            },
        ] {
            assert_ne!(keyed(&plain), keyed(&other));
        }
    }

    #[test]
    fn only_binds_whose_content_is_not_keyed_make_a_step_uncached() {
        for (raw, uncached) in [
            ("target=/ctx", true),
            ("type=bind,source=a,target=/a", true),
            ("type=bind,from=build,target=/b", false),
            ("from=registry.example/img:1,source=/x,target=/x", false),
            ("type=bind,from=$STAGE,target=/b", true),
            ("type=$KIND,from=build,target=/b", true),
            ("type=cache,target=/c", false),
            ("type=cache,from=build,target=/c", false),
            ("type=secret,id=x", false),
        ] {
            assert_eq!(binds_context(raw), uncached, "{raw}");
        }
    }

    #[test]
    fn shebang_script_replaces_a_planted_symlink_instead_of_following_it() {
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        std::fs::write(&victim, "host file").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let name = format!(".kiln-heredoc-{}", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.path().join(&name)).unwrap();
        let script = RunArgs {
            command: None,
            heredocs: vec![doc("EOF", "#!/bin/sh\necho hi\n")],
            ..Default::default()
        };
        assert_eq!(argv(&script, &st).unwrap(), vec![format!("/{name}")]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        let written = dir.path().join(&name);
        let meta = std::fs::symlink_metadata(&written).unwrap();
        assert!(meta.is_file());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(&written).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn a_heredoc_on_a_file_descriptor_is_opened_by_the_shell() {
        // As BuildKit: the command and the heredoc bodies go to the shell together, so the
        // shell opens `3<<EOF` on descriptor 3.
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let on_fd = RunArgs {
            command: Some(ShellOrExec::Shell("3<<EOF cat <&3".into())),
            heredocs: vec![Heredoc {
                fd: 3,
                ..doc("EOF", "on three\n")
            }],
            ..Default::default()
        };
        let command = argv(&on_fd, &st).unwrap();
        assert_eq!(command, ["/bin/sh", "-c", "3<<EOF cat <&3\non three\nEOF"]);
        if kiln_testkit::require_tool("sh").is_none() {
            return;
        }
        let out = kiln_testkit::run_bounded(
            std::process::Command::new(&command[0]).args(&command[1..]),
            kiln_testkit::TOOL_TIMEOUT,
        )
        .unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout, "on three\n");
        // A RUN that is only the heredoc runs its body as the script, whatever the descriptor.
        let script = RunArgs {
            command: None,
            heredocs: vec![Heredoc {
                fd: 3,
                ..doc("EOF", "echo a\n")
            }],
            ..Default::default()
        };
        assert_eq!(argv(&script, &st).unwrap(), ["/bin/sh", "-c", "echo a\n"]);
    }
}
