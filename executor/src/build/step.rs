//! The step plan of one stage, worked out once from the stage's starting state before any step
//! runs: each step's expanded cache-key inputs, how the layer cache treats it, where it reads
//! files from, and whether it needs the base image's files. The cache prefetch, the skip-base
//! decision and the step loop all read it. Pure: the config is followed through each
//! instruction's [`Command::configure`]; nothing runs, no file is read.

use kiln_dockerfile::{self as dockerfile, Dockerfile, Located, Stage};
use kiln_oci::image::ImageConfig;

use super::plan::{BuildPlan, CopyFrom};
use super::BuildError;
use crate::cache::key::StepInput;
use crate::commands::{self, CacheFlags, Cacheable, FilesRead, InstructionError, StageState};

/// A stage's steps as planned.
pub struct StepPlan {
    pub steps: Vec<PlannedStep>,
    /// The config after every step's change: the image config when no step needs the root.
    pub config: ImageConfig,
}

/// One step of a stage.
pub struct PlannedStep {
    pub located: Located,
    /// The instruction as written, trimmed: for logs, history and errors.
    pub text: String,
    pub cacheable: Cacheable,
    /// Why the step needs the base image's files even when every step before it was a hit.
    pub needs_root: Option<&'static str>,
    /// Where a COPY/ADD reads from.
    pub source: Option<CopyFrom>,
    /// Its `--from`, as written.
    pub from: Option<String>,
    /// The stages and images a RUN's `--mount=...,from=` read.
    pub mounts: Vec<MountRead>,
    /// The step's cache-key inputs but the previous key and the digest of the files read, or
    /// why they cannot be worked out.
    pub input: Result<KeyInput, InstructionError>,
    /// Whether the step's config change can be made; when it cannot, the step fails when it
    /// runs, and the steps after it are never reached.
    pub configured: Result<(), InstructionError>,
}

/// A `RUN --mount` (bind or cache) that reads an earlier stage or an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRead {
    /// `from=` as written (BuildKit does not expand it).
    pub from: String,
    /// `source=` as written, `/` when absent.
    pub source: String,
    pub reads: CopyFrom,
}

/// What a step's key hashes besides the previous key and the files it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInput {
    /// `previous` and `files` are left empty for the caller.
    pub step: StepInput,
    /// The files whose digest goes into the key (COPY/ADD).
    pub files: Option<FilesRead>,
}

impl PlannedStep {
    /// The step's failure as a build error.
    pub fn error(&self, source: &InstructionError) -> BuildError {
        BuildError::Step {
            line: self.located.line,
            instruction: self.text.clone(),
            source: source.clone().into(),
        }
    }
}

/// The steps of a stage: the base's ONBUILD triggers first (then dropped from the new image's
/// config), then the stage's own instructions.
pub fn stage_steps(
    dockerfile: &Dockerfile,
    stage: &Stage,
    base: &str,
    config: &mut ImageConfig,
) -> Result<Vec<Located>, BuildError> {
    let triggers = config.config.on_build.take().unwrap_or_default();
    let mut steps: Vec<Located> = Vec::new();
    for trigger in &triggers {
        let located = dockerfile::parse_instruction(trigger, stage.line, dockerfile.escape)
            .map_err(|source| BuildError::Parse {
                path: format!("ONBUILD trigger {trigger:?} of {base}"),
                source,
            })?;
        steps.push(located);
    }
    steps.extend(stage.instructions.iter().cloned());
    Ok(steps)
}

/// Plan the steps of stage `index`, starting from `start` (the base's config and the stage's
/// ARG values).
pub fn plan_steps(
    dockerfile: &Dockerfile,
    plan: &BuildPlan,
    index: usize,
    steps: Vec<Located>,
    start: &StageState,
    flags: CacheFlags,
) -> StepPlan {
    let mut state = start.clone();
    let mut planned = Vec::with_capacity(steps.len());
    for located in steps {
        let text = located.original.trim().to_string();
        let command = commands::command(&located.instruction);
        let cacheable = command.cacheable(flags);
        let reads = command.reads();
        let from = reads
            .and_then(|reads| reads.from)
            .map(|raw| plan.expand_copy_from(dockerfile, raw));
        let source = reads.map(|_| plan.copy_from(dockerfile, index, from.as_deref()));
        let mounts = match &located.instruction {
            dockerfile::Instruction::Run(args) => crate::run_mounts::mount_froms(&args.mounts)
                .into_iter()
                .map(|(from, source)| MountRead {
                    reads: plan.copy_from(dockerfile, index, Some(&from)),
                    from,
                    source,
                })
                .collect(),
            _ => Vec::new(),
        };
        let input = command.key_parts(&state, &text).map(|parts| KeyInput {
            step: StepInput {
                previous: String::new(),
                instruction: parts.instruction,
                visible_env: parts.visible_env,
                user: state.config.config.user.clone().unwrap_or_default(),
                workdir: state.workdir(),
                shell: state.shell(),
                files: None,
                mounts: None,
            },
            files: parts.files,
        });
        let needs_root = command.needs_root(cacheable);
        let configured = command.configure(&mut state);
        drop(command);
        planned.push(PlannedStep {
            located,
            text,
            cacheable,
            needs_root,
            source,
            from,
            mounts,
            input,
            configured,
        });
    }
    StepPlan {
        steps: planned,
        config: state.config,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::cache::key::scratch_key;
    use crate::run::Isolation;
    use kiln_oci::registry::Platform;

    const RUN_AND_COPY: CacheFlags = CacheFlags {
        run: true,
        copy: true,
    };

    struct Planned {
        dockerfile: Dockerfile,
        plan: BuildPlan,
    }

    fn parse(text: &str, args: &[(&str, &str)]) -> (Planned, BTreeMap<String, String>) {
        let dockerfile = kiln_dockerfile::parse(text).expect("Dockerfile parses");
        let args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = BuildPlan::new(&dockerfile, None, true, &args, &Platform::default())
            .expect("stage plan");
        (Planned { dockerfile, plan }, args)
    }

    /// The state a stage starts from, as the build makes it: an empty config with the default
    /// PATH (no filesystem is touched; the paths are never used).
    fn start(p: &Planned, build_args: &BTreeMap<String, String>) -> StageState {
        let mut config = ImageConfig::default();
        config.set_env("PATH", crate::run::DEFAULT_PATH);
        StageState {
            root: PathBuf::from("/nonexistent/root"),
            isolation: Isolation::Chroot,
            config,
            args: BTreeMap::new(),
            build_args: build_args.clone(),
            meta_args: p.plan.meta_args.clone(),
            escape: p.dockerfile.escape,
            cmd_set: false,
            scratch: PathBuf::from("/nonexistent/scratch"),
            run_mounts: Default::default(),
            entitlements: Default::default(),
            emulator: None,
            run_follows: false,
        }
    }

    fn steps_of(text: &str, stage: usize, args: &[(&str, &str)], flags: CacheFlags) -> StepPlan {
        let (p, build_args) = parse(text, args);
        let mut state = start(&p, &build_args);
        let steps = stage_steps(
            &p.dockerfile,
            &p.dockerfile.stages[stage],
            "scratch",
            &mut state.config,
        )
        .expect("steps");
        plan_steps(&p.dockerfile, &p.plan, stage, steps, &state, flags)
    }

    fn run_env(step: &PlannedStep) -> Vec<String> {
        step.input
            .as_ref()
            .expect("key input")
            .step
            .visible_env
            .clone()
    }

    #[test]
    fn arg_scoping_across_stages() {
        let text = "\
ARG GLOBAL=g-default
ARG ONLY_FROM=f
FROM scratch AS one
ARG GLOBAL
ARG LOCAL=l-default
ARG FLAGGED=unused-default
RUN env
FROM scratch
RUN env
ARG LOCAL
RUN env
";
        let plan = steps_of(text, 0, &[("FLAGGED", "from-flag")], RUN_AND_COPY);
        let env = run_env(&plan.steps[3]);
        // A global ARG redeclared without a value takes the global value; a default applies
        // unless --build-arg gives one; a global ARG not redeclared is not visible.
        assert!(env.contains(&"GLOBAL=g-default".to_string()), "{env:?}");
        assert!(env.contains(&"LOCAL=l-default".to_string()), "{env:?}");
        assert!(env.contains(&"FLAGGED=from-flag".to_string()), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("ONLY_FROM=")), "{env:?}");

        // ARGs are scoped to their stage: the second stage sees none until it declares one,
        // and a declaration without value or global has none.
        let plan = steps_of(text, 1, &[], RUN_AND_COPY);
        assert_eq!(
            run_env(&plan.steps[0]),
            vec![format!("PATH={}", crate::run::DEFAULT_PATH)]
        );
        assert_eq!(run_env(&plan.steps[2]), run_env(&plan.steps[0]));
        let plan = steps_of(text, 1, &[("LOCAL", "given")], RUN_AND_COPY);
        assert!(run_env(&plan.steps[2]).contains(&"LOCAL=given".to_string()));
    }

    #[test]
    fn cacheability_needs_root_and_sources() {
        let text = "\
FROM scratch AS first
FROM scratch
RUN true
COPY a /a
COPY --from=first /x /x
COPY --from=registry.example/img:1 /y /y
COPY --chown=1:1 b /b
ADD https://example.com/f /f
ADD --checksum=sha256:0123 https://example.com/g /g
WORKDIR /w
ENV A=1
";
        let plan = steps_of(text, 1, &[], RUN_AND_COPY);
        let got: Vec<(Cacheable, Option<&str>, Option<CopyFrom>)> = plan
            .steps
            .iter()
            .map(|s| (s.cacheable, s.needs_root, s.source.clone()))
            .collect();
        use Cacheable::*;
        assert_eq!(
            got,
            vec![
                (Yes, None, None),
                (Yes, None, Some(CopyFrom::Context)),
                (Yes, None, Some(CopyFrom::Stage(0))),
                (
                    Yes,
                    None,
                    Some(CopyFrom::Image("registry.example/img:1".into()))
                ),
                (
                    Yes,
                    Some("--chown resolves names in the image"),
                    Some(CopyFrom::Context)
                ),
                (
                    No,
                    Some("a step that is not cached"),
                    Some(CopyFrom::Context)
                ),
                (Yes, None, Some(CopyFrom::Context)),
                (No, Some("WORKDIR creates its directory in the image"), None),
                (No, None, None),
            ]
        );
        // Without --cache-copy-layers, COPY/ADD are cached no more and need the root.
        let plan = steps_of(
            text,
            1,
            &[],
            CacheFlags {
                run: true,
                copy: false,
            },
        );
        assert_eq!(plan.steps[1].cacheable, Disabled);
        assert_eq!(plan.steps[1].needs_root, Some("a step that is not cached"));
    }

    #[test]
    fn key_inputs_follow_the_config_of_earlier_steps() {
        let text = "\
FROM scratch
ENV A=1
WORKDIR /app
USER 1000
SHELL [\"/bin/bash\", \"-c\"]
COPY --chmod=0644 <<EOF rel/
hello $A
EOF
ENV A=
LABEL broken=\"${A:?is empty}\"
RUN never planned
";
        let plan = steps_of(text, 0, &[], RUN_AND_COPY);
        let copy = plan.steps[4].input.as_ref().expect("COPY key input");
        assert_eq!(copy.step.workdir, "/app");
        assert_eq!(copy.step.user, "1000");
        assert_eq!(copy.step.shell, vec!["/bin/bash", "-c"]);
        let files = copy.files.as_ref().expect("COPY reads files");
        assert_eq!(files.inline[0].0, "EOF");
        assert!(files.inline[0].1.starts_with("hello $A\n\0"));
        assert!(
            copy.step.instruction.contains(r#""dest":"/app/rel/""#),
            "{}",
            copy.step.instruction
        );
        // A failing config change is planned as the failure of its step.
        let label = &plan.steps[6];
        assert!(label.configured.is_err());
        let err = label.error(label.configured.as_ref().unwrap_err());
        assert!(err.to_string().contains("line 10"), "{err}");
        assert_eq!(plan.config.config.working_dir.as_deref(), Some("/app"));
        // ONBUILD triggers of the base come first and leave the config.
        let (p, args) = parse("FROM scratch\nRUN b\n", &[]);
        let mut state = start(&p, &args);
        state.config.config.on_build = Some(vec!["RUN a".into()]);
        let steps = stage_steps(
            &p.dockerfile,
            &p.dockerfile.stages[0],
            "base",
            &mut state.config,
        )
        .unwrap();
        assert_eq!(
            steps.iter().map(|s| s.original.trim()).collect::<Vec<_>>(),
            vec!["RUN a", "RUN b"]
        );
        assert_eq!(state.config.config.on_build, None);
    }

    /// Keys computed by the build before the executor was restructured (commit 86bee0f), for a
    /// stage FROM scratch with `--build-arg W=fromflag`: the same Dockerfile must keep hitting
    /// the same cache entries.
    #[test]
    fn keys_are_those_of_the_old_builder() {
        let text = "ARG BASE=scratch\nFROM $BASE AS one\nARG V=default\nARG W\nENV A=1 B=$V\nWORKDIR /app\nRUN echo $A $W > /x\nCOPY <<EOF /etc/conf\nhello $A $V\nEOF\nCOPY --chmod=0644 <<'EOT' rel/\nraw $A\nEOT\nLABEL k=v\nUSER 1000\nRUN [\"/bin/true\", \"x\"]\nCMD [\"sh\"]\n";
        let plan = steps_of(text, 0, &[("W", "fromflag")], RUN_AND_COPY);
        let mut previous = scratch_key();
        let mut keys = Vec::new();
        for step in &plan.steps {
            let input = step.input.as_ref().expect("key input");
            let mut key = input.step.clone();
            key.previous = previous;
            if let Some(files) = &input.files {
                // What the build adds for heredoc-only sources read from the context.
                let mut digest = crate::cache::key::FileDigest::new(false);
                for (name, content) in &files.inline {
                    digest.add_inline(name, content);
                }
                key.files = Some(digest.finish());
            }
            previous = key.key();
            keys.push(previous.clone());
        }
        assert_eq!(keys, OLD_KEYS);
    }

    const OLD_KEYS: [&str; 11] = [
        "b842afac47b73e191a9220a90fe7c0096891c1929bf1308473a7c0e13d25e553",
        "3f5ceb6bd807cee50ffa893fa2b728e6e35b0d32ee078ecec8a9d806b5d54900",
        "81e5ce2bb5df7a8ce72dcd83f67b09717e1a4d880813a70e01f1ab1d43eaf384",
        "726c2d6deccd3b6d21602d762e393f5c98c54f19ba36539af3a1a78291759612",
        "0789da4c226b375c663ef4270cc585b13df667d0951b548a24cc0ba5728c0042",
        "b64ff08fbbb686078670f85846c85240b3f8664551416ebac52d5f992fe64568",
        "8ed8c2ef44edc2987da8a2adb27b2fc743cd1cb8e5786fdd72301c775d75e298",
        "ead7340747a618bf162c6d02c69b470ec5f5600ccc97eeef9a6cdd7ef4be5066",
        "4bd31b9baf4dd23ea8168ebb8ba8ae21ce566b2c1dff614a371edf5332ac7355",
        "cd464f76f2047647fd7a5f3df4dedbd7a5fbdd135cab6a1eaac10c5eec6d2f4c",
        "531dbaea55eae6c789a9fbbd3ef4973eb2525a6af5ae03f39f7e10a8c97249ad",
    ];
}
