//! The stage plan, worked out from the parsed Dockerfile and the request alone: which stages to
//! build and in what order (what `--target` depends on, or every stage up to it with
//! `--skip-unused-stages=false`), what each stage starts FROM, and what later stages read of it
//! (used as a base, or only the paths `COPY --from` names). Refuses, naming the Dockerfile line,
//! a planned stage whose FROM or `COPY --from` names its own stage, a later one, or an invalid
//! image reference, before anything is pulled or run. Each stage's platform is worked out here
//! as BuildKit does: its `FROM --platform` for an image, its base stage's platform for a stage,
//! the target platform for `scratch` or no `--platform`. Pure: it reads no file, pulls no image
//! and runs nothing.

use std::collections::{BTreeMap, BTreeSet};

use kiln_dockerfile::excerpt::excerpt;
use kiln_dockerfile::stages::{
    earlier_stage as stage_ref, same_or_later_stage, stage_by_name, FromPlatform, StageError,
    Stages,
};
use kiln_dockerfile::{Dockerfile, ExpandError, Located};
use kiln_oci::registry::{parse_reference, Platform, RegistryError};

use super::error::ReferenceProblem;
use super::BuildError;
use crate::commands;

/// The build's stages as planned.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The stage the image is made of (`--target`, else the last).
    pub target: usize,
    /// Stages built before the target, in order.
    pub earlier: Vec<usize>,
    pub stages: Vec<PlannedStage>,
    /// Global ARGs (declared before the first FROM, plus the automatic platform ARGs) with
    /// their values, as FROM lines and stages' ARG declarations see them.
    pub meta_args: BTreeMap<String, Option<String>>,
}

/// One stage of the Dockerfile.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// `stage 2/3 (name)`, the prefix of the stage's log lines.
    pub label: String,
    /// What the stage starts from, or why its FROM line cannot be used.
    from: Result<Base, FromError>,
    /// The earlier stage the expanded FROM names, if it names one.
    from_stage: Option<usize>,
    /// The stage's `COPY/ADD --from` of earlier stages: the stage read and the sources named.
    copies: Vec<(usize, Vec<String>)>,
    /// `COPY/ADD --from` values of the stage that cannot be used, with their lines.
    bad_copies: Vec<BadCopy>,
    line: usize,
    raw_from: String,
}

/// Why a stage's FROM cannot be used.
#[derive(Debug, Clone)]
enum FromError {
    Expand(ExpandError),
    Reference(ReferenceProblem),
    /// `--platform` expanded to `platform`, which names no platform.
    Platform {
        platform: String,
        detail: String,
    },
}

/// A `COPY/ADD --from` that cannot be used.
#[derive(Debug, Clone)]
struct BadCopy {
    line: usize,
    /// An excerpt of the instruction.
    instruction: String,
    problem: ReferenceProblem,
}

/// A stage's FROM after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// As expanded (an image reference, a stage name or index, or `scratch`).
    pub name: String,
    pub kind: BaseKind,
    /// The stage's platform: what its base image is pulled for, and what its RUN steps need.
    pub platform: Platform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    Scratch,
    /// An earlier stage of the Dockerfile.
    Stage(usize),
    /// An image from a registry (or the base-image cache).
    Image,
}

/// Where a COPY/ADD reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// No `--from`: the build context.
    Context,
    /// An earlier stage.
    Stage(usize),
    /// A stage that is not before the reader (an error when the step runs).
    LaterStage(String),
    /// Anything else names an image.
    Image(String),
}

impl BuildPlan {
    /// Plan the build of `target` (a stage name or index; the last stage when `None`). With
    /// `build_all`, every stage up to the target is built, as kaniko does by default; otherwise
    /// only those the target depends on, because the image is the same and a broken unused
    /// stage should not fail the build (BuildKit's and buildah's behaviour).
    pub fn new(
        dockerfile: &Dockerfile,
        target: Option<&str>,
        build_all: bool,
        build_args: &BTreeMap<String, String>,
        platform: &Platform,
    ) -> Result<BuildPlan, BuildError> {
        let target = target_index(dockerfile, target)?;
        let resolver = Stages::new(
            dockerfile,
            build_args,
            automatic_args(platform, dockerfile.stages[target].name.as_deref()),
            FromPlatform::Honour,
        );
        // Each stage's platform, in order: a stage FROM an earlier one takes that one's.
        let mut platforms: Vec<Result<Platform, FromError>> = Vec::new();
        let froms = dockerfile.stages.iter().map(|s| resolver.expand(&s.base));
        let meta_args = resolver.meta_args().clone();
        let total = dockerfile.stages.len();
        let stages: Vec<PlannedStage> = dockerfile
            .stages
            .iter()
            .zip(froms)
            .map(|(stage, from)| {
                let from_stage = from
                    .as_ref()
                    .ok()
                    .and_then(|name| stage_ref(dockerfile, name, stage.index));
                let mut copies: Vec<(usize, Vec<String>)> = stage
                    .instructions
                    .iter()
                    .filter_map(|located| {
                        let command = commands::command(&located.instruction);
                        let reads = command.reads()?;
                        let from = expand_copy_from(&meta_args, dockerfile, reads.from?);
                        let read = stage_ref(dockerfile, &from, stage.index)?;
                        Some((read, reads.sources.to_vec()))
                    })
                    .collect();
                // `RUN --mount=from=<stage>` (a bind, or the seed of a cache) reads that stage
                // like a `COPY --from` of its source.
                copies.extend(
                    stage
                        .instructions
                        .iter()
                        .filter_map(|located| match &located.instruction {
                            kiln_dockerfile::Instruction::Run(args) => Some(args),
                            _ => None,
                        })
                        .flat_map(|args| crate::run_mounts::mount_froms(&args.mounts))
                        .filter_map(|(from, source)| {
                            Some((stage_ref(dockerfile, &from, stage.index)?, vec![source]))
                        }),
                );
                let bad_copies = stage
                    .instructions
                    .iter()
                    .filter_map(|located| bad_copy(dockerfile, &meta_args, stage.index, located))
                    .collect();
                let from = from.map_err(FromError::Expand).and_then(|name| {
                    match from_problem(dockerfile, stage.index, &name, from_stage) {
                        Some(problem) => Err(FromError::Reference(problem)),
                        None => Ok(name),
                    }
                });
                // Every stage's `--platform` must name a platform, as in BuildKit (and the
                // warmer), even where it does not decide the stage's platform.
                let declared = resolver
                    .resolve(stage.index)
                    .map_err(|e| match e {
                        StageError::ExpandFrom { source, .. }
                        | StageError::ExpandPlatform { source, .. } => FromError::Expand(source),
                    })
                    .and_then(|resolved| {
                        let wanted = resolved.platform.as_deref();
                        kiln_oci::platform::for_stage(wanted, platform).map_err(|detail| {
                            FromError::Platform {
                                platform: wanted.unwrap_or_default().to_string(),
                                detail,
                            }
                        })
                    });
                let stage_platform = match (&from, from_stage) {
                    // The parent's own FROM reports its problem, not this stage.
                    (_, Some(i)) => declared.and(Ok(platforms[i]
                        .clone()
                        .unwrap_or_else(|_| platform.clone()))),
                    (Ok(name), None) if name.eq_ignore_ascii_case("scratch") => {
                        declared.and(Ok(platform.clone()))
                    }
                    _ => declared,
                };
                platforms.push(stage_platform.clone());
                let from = from.and_then(|name| Ok((name, stage_platform?)));
                PlannedStage {
                    label: match &stage.name {
                        Some(n) => format!("stage {}/{} ({n})", stage.index + 1, total),
                        None => format!("stage {}/{}", stage.index + 1, total),
                    },
                    from: from.map(|(name, platform)| Base {
                        kind: base_kind(&name, from_stage),
                        name,
                        platform,
                    }),
                    from_stage,
                    copies,
                    bad_copies,
                    line: stage.line,
                    raw_from: stage.base.clone(),
                }
            })
            .collect();
        let mut plan = BuildPlan {
            target,
            earlier: Vec::new(),
            stages,
            meta_args,
        };
        plan.earlier = if build_all {
            (0..target).collect()
        } else {
            plan.dependencies_of(target)?
        };
        // Every planned stage's FROM and `COPY --from` are checked now, so that a bad one is
        // reported with its line before any stage is built.
        for i in plan.order() {
            plan.base(i)?;
            if let Some(bad) = plan.stages[i].bad_copies.first() {
                return Err(BuildError::Reference {
                    line: bad.line,
                    instruction: bad.instruction.clone(),
                    problem: bad.problem.clone(),
                });
            }
        }
        Ok(plan)
    }

    /// Every stage `index` depends on, in order, through FROM and `COPY --from`.
    fn dependencies_of(&self, index: usize) -> Result<Vec<usize>, BuildError> {
        let mut needed = BTreeSet::new();
        let mut queue = vec![index];
        while let Some(i) = queue.pop() {
            if !needed.insert(i) {
                continue;
            }
            let stage = &self.stages[i];
            self.base(i)?;
            queue.extend(stage.from_stage);
            queue.extend(stage.copies.iter().map(|(read, _)| *read));
        }
        needed.remove(&index);
        Ok(needed.into_iter().collect())
    }

    /// The stages stage `index` needs built first: the one it starts FROM, and those it reads
    /// with `COPY/ADD --from` or `RUN --mount=from=`.
    pub fn needs(&self, index: usize) -> Vec<usize> {
        let stage = &self.stages[index];
        let mut needs: Vec<usize> = stage.from_stage.into_iter().collect();
        needs.extend(stage.copies.iter().map(|(read, _)| *read));
        needs.sort_unstable();
        needs.dedup();
        needs
    }

    /// Every stage to build, in order; the target is the last.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.earlier.iter().copied().chain(Some(self.target))
    }

    /// What stage `index` starts from.
    pub fn base(&self, index: usize) -> Result<&Base, BuildError> {
        let stage = &self.stages[index];
        let instruction = format!("FROM {}", excerpt(&stage.raw_from));
        stage.from.as_ref().map_err(|e| match e {
            FromError::Expand(e) => BuildError::Step {
                line: stage.line,
                instruction,
                source: e.clone().into(),
            },
            FromError::Reference(problem) => BuildError::Reference {
                line: stage.line,
                instruction,
                problem: problem.clone(),
            },
            FromError::Platform { platform, detail } => BuildError::StagePlatform {
                line: stage.line,
                instruction,
                platform: platform.clone(),
                detail: detail.clone(),
            },
        })
    }

    /// Whether a later planned stage starts FROM this one (so its layers must be kept).
    pub fn used_as_base(&self, index: usize) -> bool {
        self.order()
            .filter(|&i| i > index)
            .any(|i| self.stages[i].from_stage == Some(index))
    }

    /// Whether a planned stage at or after `from_index` reads stage `n`'s files with
    /// `COPY/ADD --from`.
    pub fn read_by_copy(&self, n: usize, from_index: usize) -> bool {
        self.order()
            .filter(|&i| i >= from_index)
            .any(|i| self.stages[i].copies.iter().any(|(read, _)| *read == n))
    }

    /// The paths the stages in `readers` copy from stage `index` (as written), or `None` when one
    /// depends on a variable, so that what it names is not known here.
    pub fn copied_paths(
        &self,
        index: usize,
        readers: impl IntoIterator<Item = usize>,
    ) -> Option<Vec<String>> {
        let mut paths = Vec::new();
        for reader in readers.into_iter().filter(|&i| i > index) {
            for (_, sources) in self.stages[reader]
                .copies
                .iter()
                .filter(|(read, _)| *read == index)
            {
                if sources.iter().any(|s| s.contains('$')) {
                    return None;
                }
                paths.extend(sources.iter().cloned());
            }
        }
        Some(paths)
    }

    /// What stage `index` builds, when that is the same whatever the target platform, else
    /// `None`. The builds of a multi-platform build compare these to build such a stage once and
    /// share it (BuildKit reaches the same through its content-addressed steps): a stage whose
    /// FROM names its platform (`--platform=$BUILDPLATFORM`), or starts from a stage that is
    /// shared, whose `ARG`s see the same values (an `ARG TARGETARCH` makes it per platform),
    /// and which reads only shared stages (`COPY --from`, `RUN --mount=from=`). Reading an image
    /// (pulled for the target platform) makes a stage per platform. The identity names the
    /// stage, its resolved base and platform, its ARG values and what it reads.
    pub fn shared_identity(&self, dockerfile: &Dockerfile, index: usize) -> Option<String> {
        let stage = &self.stages[index];
        let base = stage.from.as_ref().ok()?;
        let mut id = format!("stage {index} FROM {} ({})", base.name, base.platform);
        if let BaseKind::Stage(parent) = base.kind {
            id.push_str(&format!(" <{}>", self.shared_identity(dockerfile, parent)?));
        }
        for located in &dockerfile.stages.get(index)?.instructions {
            match &located.instruction {
                kiln_dockerfile::Instruction::Arg(decls) => {
                    for decl in decls {
                        let value = self.meta_args.get(&decl.name).cloned().flatten();
                        id.push_str(&format!(" ARG {}={value:?}", decl.name));
                    }
                }
                kiln_dockerfile::Instruction::Run(args) => {
                    for (from, _) in crate::run_mounts::mount_froms(&args.mounts) {
                        stage_ref(dockerfile, &from, index)?;
                    }
                }
                other => {
                    let command = commands::command(other);
                    if let Some(from) = command.reads().and_then(|r| r.from) {
                        let from = expand_copy_from(&self.meta_args, dockerfile, from);
                        stage_ref(dockerfile, &from, index)?;
                    }
                }
            }
        }
        for (read, _) in &stage.copies {
            id.push_str(&format!(" <{}>", self.shared_identity(dockerfile, *read)?));
        }
        Some(id)
    }

    /// Where a COPY/ADD of stage `reader` with `--from=from` (as written) reads.
    /// [`expand_copy_from`] with this plan's global ARGs.
    pub fn expand_copy_from(&self, dockerfile: &Dockerfile, raw: &str) -> String {
        expand_copy_from(&self.meta_args, dockerfile, raw)
    }

    /// Where `--from` value `from` (already expanded) of a step in stage `reader` reads.
    pub fn copy_from(
        &self,
        dockerfile: &Dockerfile,
        reader: usize,
        from: Option<&str>,
    ) -> CopyFrom {
        let Some(from) = from else {
            return CopyFrom::Context;
        };
        if let Some(i) = stage_ref(dockerfile, from, reader) {
            return CopyFrom::Stage(i);
        }
        if stage_by_name(dockerfile, from).is_some() {
            return CopyFrom::LaterStage(from.to_string());
        }
        CopyFrom::Image(from.to_string())
    }
}

/// A `COPY --from` value expanded with the global ARGs (and `--build-arg` values for them), as
/// FROM lines are; a value that cannot be expanded is kept as written, and fails as a reference.
fn expand_copy_from(
    meta_args: &BTreeMap<String, Option<String>>,
    dockerfile: &Dockerfile,
    raw: &str,
) -> String {
    let lookup = |n: &str| meta_args.get(n).cloned().flatten();
    kiln_dockerfile::expand_word(raw, &lookup, dockerfile.escape)
        .unwrap_or_else(|_| raw.to_string())
}

/// The index of the stage to build.
fn target_index(dockerfile: &Dockerfile, target: Option<&str>) -> Result<usize, BuildError> {
    let last = dockerfile
        .stages
        .len()
        .checked_sub(1)
        .ok_or(BuildError::NoStages)?;
    match target {
        None => Ok(last),
        Some(t) => stage_by_name(dockerfile, t).ok_or_else(|| BuildError::UnknownTarget {
            target: t.to_string(),
            stages: dockerfile
                .stages
                .iter()
                .filter_map(|s| s.name.clone())
                .collect(),
        }),
    }
}

/// BuildKit's automatic global ARGs: the platform ones (`TARGETPLATFORM`, `TARGETARCH`, … and
/// the `BUILD*` twins; Kiln builds for the target platform on the host, so BUILDPLATFORM is the
/// host's) and `TARGETSTAGE`, the name of the stage built (`default` when it has none).
fn automatic_args(target: &Platform, target_stage: Option<&str>) -> Vec<(String, String)> {
    let mut args = kiln_oci::platform::automatic_args(target);
    args.push((
        "TARGETSTAGE".to_string(),
        target_stage.unwrap_or("default").to_string(),
    ));
    args
}

/// What is wrong with the expanded FROM value `name` of stage `index`, if anything: it names
/// this stage or a later one, or it is neither `scratch`, an earlier stage nor a valid image
/// reference.
fn from_problem(
    dockerfile: &Dockerfile,
    index: usize,
    name: &str,
    from_stage: Option<usize>,
) -> Option<ReferenceProblem> {
    if from_stage.is_some() || name.eq_ignore_ascii_case("scratch") {
        return None;
    }
    // FROM names stages by name only (`FROM 0` is an image called `0`, as in BuildKit).
    if let Some(i) = stage_by_name(dockerfile, name).filter(|&i| i >= index) {
        return Some(stage_problem(dockerfile, name, index, i));
    }
    image_problem(name)
}

/// The `COPY/ADD --from` of `located` in stage `index`, when it cannot be used.
fn bad_copy(
    dockerfile: &Dockerfile,
    meta_args: &BTreeMap<String, Option<String>>,
    index: usize,
    located: &Located,
) -> Option<BadCopy> {
    let command = commands::command(&located.instruction);
    let raw = command.reads()?.from?;
    let expanded = expand_copy_from(meta_args, dockerfile, raw);
    let from = expanded.as_str();
    if stage_ref(dockerfile, from, index).is_some() {
        return None;
    }
    let problem = match same_or_later_stage(dockerfile, from, index) {
        Some(i) => stage_problem(dockerfile, from, index, i),
        // Only the global ARGs expand `--from` (see [`expand_copy_from`]).
        None if raw.contains('$') && image_problem(from).is_some() => ReferenceProblem::BadImage {
            reference: excerpt(raw),
            reason: format!(
                "it expands to `{}`: only global ARGs (declared before the first FROM) and their \
                 --build-arg values expand --from",
                excerpt(from)
            ),
        },
        None => image_problem(from)?,
    };
    Some(BadCopy {
        line: located.line,
        instruction: excerpt(located.original.trim()),
        problem,
    })
}

fn stage_problem(
    dockerfile: &Dockerfile,
    name: &str,
    index: usize,
    named: usize,
) -> ReferenceProblem {
    let name = excerpt(name);
    if named == index {
        ReferenceProblem::SameStage { name }
    } else {
        ReferenceProblem::LaterStage {
            name,
            stage_line: dockerfile.stages[named].line,
        }
    }
}

/// Why `reference` cannot name an image, if it cannot (checked as the registry client will
/// read it when it pulls).
fn image_problem(reference: &str) -> Option<ReferenceProblem> {
    let reason = match parse_reference(reference) {
        Ok(_) => return None,
        Err(RegistryError::InvalidReference { reason, .. }) => reason,
        Err(other) => other.to_string(),
    };
    Some(ReferenceProblem::BadImage {
        reference: excerpt(reference),
        reason: excerpt(&reason),
    })
}

fn base_kind(name: &str, from_stage: Option<usize>) -> BaseKind {
    if name.eq_ignore_ascii_case("scratch") {
        BaseKind::Scratch
    } else if let Some(i) = from_stage {
        BaseKind::Stage(i)
    } else {
        BaseKind::Image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str, target: Option<&str>, build_all: bool, args: &[(&str, &str)]) -> BuildPlan {
        let dockerfile = kiln_dockerfile::parse(text).expect("Dockerfile parses");
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BuildPlan::new(&dockerfile, target, build_all, &args, &Platform::default()).expect("plan")
    }

    fn bases(plan: &BuildPlan) -> Vec<String> {
        plan.order()
            .map(|i| plan.base(i).expect("FROM expands").name.clone())
            .collect()
    }

    const MULTI: &str = "\
ARG TAG=1.0
ARG REG=reg.example
FROM $REG/tool:$TAG AS tools
RUN make
FROM busybox AS unused
RUN false
FROM scratch AS build
COPY --from=tools /out/bin /bin/tool
COPY --from=tools /out/lib/*.so /lib/
FROM build
COPY --from=registry.example/other:2 /x /x
";

    #[test]
    fn global_args_expand_from_lines_and_build_args_override_defaults() {
        let p = plan(MULTI, None, false, &[]);
        assert_eq!(bases(&p), vec!["reg.example/tool:1.0", "scratch", "build"]);
        assert_eq!(
            p.meta_args.get("TAG").cloned().flatten().as_deref(),
            Some("1.0")
        );
        let p = plan(MULTI, None, false, &[("TAG", "2.0")]);
        assert_eq!(bases(&p)[0], "reg.example/tool:2.0");
        // A default may use an earlier global ARG; an undeclared build arg changes nothing.
        let p = plan(
            "ARG A=x\nARG B=${A}-y\nFROM img:$B\n",
            None,
            false,
            &[("A", "z"), ("NOBODY", "1")],
        );
        assert_eq!(bases(&p), vec!["img:z-y"]);
        assert!(!p.meta_args.contains_key("NOBODY"));
        assert!(p.meta_args.contains_key("TARGETARCH"));
    }

    #[test]
    fn targetstage_names_the_stage_built() {
        // BuildKit's TARGETSTAGE: the --target, else the last stage's name, else `default`.
        let stage = |p: &BuildPlan| p.meta_args.get("TARGETSTAGE").cloned().flatten();
        assert_eq!(
            stage(&plan(MULTI, None, false, &[])).as_deref(),
            Some("default")
        );
        assert_eq!(
            stage(&plan(MULTI, Some("tools"), false, &[])).as_deref(),
            Some("tools")
        );
        let named = plan("FROM img AS base\nFROM base AS final\n", None, false, &[]);
        assert_eq!(stage(&named).as_deref(), Some("final"));
        // FROM sees it too, and a stage's valueless ARG takes it.
        let p = plan("FROM img:$TARGETSTAGE AS app\n", None, false, &[]);
        assert_eq!(bases(&p), vec!["img:app"]);
    }

    #[test]
    fn unused_stages_are_skipped_unless_asked_for() {
        let p = plan(MULTI, None, false, &[]);
        assert_eq!(p.order().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(p.target, 3);
        let all = plan(MULTI, None, true, &[]);
        assert_eq!(all.order().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        // A broken FROM in a skipped stage does not fail the plan.
        let p = plan("FROM a:${X:?unset} AS broken\nFROM b\n", None, false, &[]);
        assert_eq!(p.order().collect::<Vec<_>>(), vec![1]);
        let dockerfile =
            kiln_dockerfile::parse("FROM a:${X:?unset} AS broken\nFROM broken\n").unwrap();
        let err = BuildPlan::new(
            &dockerfile,
            None,
            false,
            &BTreeMap::new(),
            &Platform::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Dockerfile line 1: FROM a:${X:?unset}: X"),
            "{err}"
        );
    }

    fn plan_error(text: &str, target: Option<&str>, build_all: bool) -> String {
        let dockerfile = kiln_dockerfile::parse(text).expect("Dockerfile parses");
        BuildPlan::new(
            &dockerfile,
            target,
            build_all,
            &BTreeMap::new(),
            &Platform::default(),
        )
        .expect_err("the plan is refused")
        .to_string()
    }

    #[test]
    fn copy_from_expands_global_args() {
        let text = "ARG SRC=build\nFROM scratch AS build\nFROM scratch\nCOPY --from=${SRC} /x /x\n";
        let p = plan(text, None, false, &[]);
        let dockerfile = kiln_dockerfile::parse(text).unwrap();
        assert_eq!(p.expand_copy_from(&dockerfile, "${SRC}"), "build");
        assert_eq!(p.earlier, vec![0], "the copied stage is built");
        let p = plan(text, None, false, &[("SRC", "0")]);
        assert_eq!(p.earlier, vec![0]);
        let text = "FROM scratch AS build\nFROM scratch\nARG SRC=build\nCOPY --from=${SRC} /x /x\n";
        let err = plan_error(text, None, false);
        assert!(
            err.contains("line 4") && err.contains("only global ARGs"),
            "{err}"
        );
    }

    #[test]
    fn stage_references_that_cannot_be_built_name_their_line() {
        let later = "FROM busybox AS first\nFROM later\nFROM scratch AS later\n";
        assert_eq!(
            plan_error(later, None, true),
            "Dockerfile line 2: FROM later: stage `later` is defined later (line 3): a stage can \
             only use stages defined before it"
        );
        assert_eq!(
            plan_error("FROM self AS self\n", None, false),
            "Dockerfile line 1: FROM self: `self` is this stage itself: a stage cannot start from \
             or copy from itself"
        );
        let cycle =
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n";
        assert_eq!(
            plan_error(cycle, None, false),
            "Dockerfile line 2: COPY --from=b /x /x: stage `b` is defined later (line 3): a stage \
             can only use stages defined before it"
        );
        assert!(
            plan_error("FROM scratch AS a\nCOPY --from=a /x /x\n", None, false)
                .starts_with("Dockerfile line 2: COPY --from=a /x /x: `a` is this stage itself"),
        );
        assert!(plan_error(
            "FROM scratch\nCOPY --from=1 /x /x\nFROM scratch\n",
            None,
            true
        )
        .starts_with("Dockerfile line 2: COPY --from=1 /x /x: stage `1` is defined later"),);
        // A stage that is not built does not fail the plan.
        let p = plan("FROM x AS x\nFROM busybox\n", None, false, &[]);
        assert_eq!(p.order().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn invalid_image_references_name_their_line() {
        let err = plan_error("FROM scratch\nFROM Upper/Case:1\n", None, true);
        assert!(
            err.starts_with("Dockerfile line 2: FROM Upper/Case:1: `Upper/Case:1` is not a valid image reference ("),
            "{err}"
        );
        let err = plan_error(
            "ARG a=x\nFROM img:${a}\nCOPY --from=a::b /x /x\n",
            None,
            false,
        );
        assert!(
            err.starts_with(
                "Dockerfile line 3: COPY --from=a::b /x /x: `a::b` is not a valid image reference"
            ),
            "{err}"
        );
        // FROM expanding to 10,000 substitutions: refused with a bounded message.
        let text = format!("ARG a=x\nFROM img:{}\n", "$a".repeat(10_000));
        let err = plan_error(&text, None, false);
        assert!(err.starts_with("Dockerfile line 2: FROM img:$a$a"), "{err}");
        assert!(err.len() < 512, "{} bytes: {err}", err.len());
        // ARGs read in order: `img:` has an empty tag.
        let err = plan_error("ARG a=$b\nARG b=$a\nFROM img:$a$b\n", None, false);
        assert!(
            err.starts_with("Dockerfile line 3: FROM img:$a$b: `img:` is not a valid"),
            "{err}"
        );
    }

    #[test]
    fn target_selects_a_stage_and_its_dependencies() {
        let p = plan(MULTI, Some("BUILD"), false, &[]);
        assert_eq!(p.target, 2);
        assert_eq!(p.order().collect::<Vec<_>>(), vec![0, 2]);
        let p = plan(MULTI, Some("unused"), true, &[]);
        assert_eq!(p.order().collect::<Vec<_>>(), vec![0, 1]);
        let dockerfile = kiln_dockerfile::parse(MULTI).unwrap();
        let err = BuildPlan::new(
            &dockerfile,
            Some("nope"),
            false,
            &BTreeMap::new(),
            &Platform::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--target nope: no stage of that name (stages: tools, unused, build)"
        );
    }

    #[test]
    fn what_later_stages_read() {
        let p = plan(MULTI, None, false, &[]);
        let dockerfile = kiln_dockerfile::parse(MULTI).unwrap();
        // `build` is the final stage's base; `tools` is only copied from.
        assert!(p.used_as_base(2));
        assert!(!p.used_as_base(0));
        assert_eq!(
            p.copied_paths(0, p.order()),
            Some(vec!["/out/bin".to_string(), "/out/lib/*.so".to_string()])
        );
        assert!(p.read_by_copy(0, 1));
        assert!(!p.read_by_copy(0, 3));
        assert_eq!(p.base(2).unwrap().kind, BaseKind::Scratch);
        assert_eq!(p.base(3).unwrap().kind, BaseKind::Stage(2));
        assert_eq!(p.base(0).unwrap().kind, BaseKind::Image);
        // COPY --from an image is not a stage, and pulls nothing into the plan.
        assert_eq!(
            p.copy_from(&dockerfile, 3, Some("registry.example/other:2")),
            CopyFrom::Image("registry.example/other:2".into())
        );
        assert_eq!(p.copy_from(&dockerfile, 3, Some("0")), CopyFrom::Stage(0));
        assert_eq!(
            p.copy_from(&dockerfile, 3, Some("Tools")),
            CopyFrom::Stage(0)
        );
        assert_eq!(
            p.copy_from(&dockerfile, 0, Some("build")),
            CopyFrom::LaterStage("build".into())
        );
        assert_eq!(p.copy_from(&dockerfile, 3, None), CopyFrom::Context);
        // A source that depends on a variable keeps the whole stage.
        let p = plan(
            "FROM a AS one\nFROM b\nARG P=/x\nCOPY --from=one $P /y\n",
            None,
            false,
            &[],
        );
        assert_eq!(p.copied_paths(0, p.order()), None);
    }
}

#[cfg(test)]
mod platform_tests;
