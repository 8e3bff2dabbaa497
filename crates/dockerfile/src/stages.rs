//! Stage resolution, the one reading of FROM lines that kiln-executor and kiln-warmer share: the
//! global (meta) ARGs, each stage's expanded FROM and `--platform`, and which earlier stage a
//! name or index means. It decides what a FROM names, never what to pull or build; it is pure
//! apart from [`build_args_from_flags`], which reads the environment for a bare `KEY` as kaniko
//! does.

use std::collections::BTreeMap;

use crate::ast::Dockerfile;
use crate::excerpt::excerpt;
use crate::expand::{expand_word, ExpandError};

/// `--build-arg` values as `(key, value)`, in the order given; a bare `KEY` takes its value
/// from the environment (kaniko's rule) and is dropped when the variable is unset.
pub fn build_args_from_flags(flags: &[String]) -> Vec<(String, String)> {
    flags
        .iter()
        .filter_map(|arg| match arg.split_once('=') {
            Some((k, v)) => Some((k.to_string(), v.to_string())),
            None => std::env::var(arg).ok().map(|v| (arg.clone(), v)),
        })
        .collect()
}

/// Whether a stage's `FROM --platform=` is read. kiln-executor and kiln-warmer both honour it
/// (so the executor pulls the platform the warmer warmed); `Ignore` is for readers that only
/// need the FROM values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPlatform {
    /// `--platform` is not expanded and [`ResolvedStage::platform`] is always `None`.
    Ignore,
    /// `--platform` is expanded with the global ARGs like the FROM value.
    Honour,
}

/// What a stage's FROM names, once expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch` (any case): an empty filesystem.
    Scratch,
    /// An earlier stage, by its index.
    Stage(usize),
    /// An image reference as written after expansion (not normalised; possibly empty when the
    /// FROM value expands to nothing, which only the caller can judge).
    Image(String),
}

/// One stage's FROM, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStage {
    /// Position in the Dockerfile (0-based).
    pub index: usize,
    /// The `AS` name, lower-cased.
    pub name: Option<String>,
    /// 1-based line of the FROM.
    pub line: usize,
    /// The FROM value after expansion.
    pub from: String,
    pub base: Base,
    /// The expanded `--platform` value, with [`FromPlatform::Honour`] and when the FROM has one.
    pub platform: Option<String>,
}

/// Why a stage cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("line {line}: cannot expand `FROM {from}`: {source}")]
    ExpandFrom {
        line: usize,
        /// The FROM value as written (an excerpt, see [`crate::excerpt`]).
        from: String,
        #[source]
        source: ExpandError,
    },
    #[error("line {line}: cannot expand `--platform={platform}` of `FROM {from}`: {source}")]
    ExpandPlatform {
        line: usize,
        /// The FROM value as written (an excerpt).
        from: String,
        /// The `--platform` value as written (an excerpt).
        platform: String,
        #[source]
        source: ExpandError,
    },
}

/// Why the stage to build cannot be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the Dockerfile has no FROM")]
    NoStages,
    #[error("--target {target}: no stage of that name (stages: {})", names.join(", "))]
    UnknownTarget { target: String, names: Vec<String> },
}

/// A global ARG whose default could not be expanded. Its value is then the default as written:
/// the executor has always built on with it, and the warmer refuses the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: cannot expand the default of `ARG {name}={default}`: {source}")]
pub struct MetaArgError {
    /// 1-based line of the ARG.
    pub line: usize,
    /// The ARG's name (an excerpt, see [`crate::excerpt`]).
    pub name: String,
    /// The default as written (an excerpt).
    pub default: String,
    #[source]
    pub source: ExpandError,
}

/// The first stage called `name` (stage names are case-insensitive).
pub fn stage_by_name(dockerfile: &Dockerfile, name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    dockerfile
        .stages
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
}

/// The stage a FROM or `COPY --from` value names when it names one before stage `before`: a
/// decimal index, or a name. A later stage (or the stage itself) is not a stage reference, so
/// such a value is an image name.
pub fn earlier_stage(dockerfile: &Dockerfile, name: &str, before: usize) -> Option<usize> {
    if let Ok(i) = name.parse::<usize>() {
        return (i < before).then_some(i);
    }
    stage_by_name(dockerfile, name).filter(|&i| i < before)
}

/// The stage `name` names when that is stage `index` itself or a later stage: by name, or by
/// a decimal index below the number of stages. Such a FROM or `COPY --from` cannot be built in
/// Dockerfile order (BuildKit reports a circular dependency for the first); callers that
/// otherwise read the name as an image reference use this to refuse it instead.
pub fn same_or_later_stage(dockerfile: &Dockerfile, name: &str, index: usize) -> Option<usize> {
    let found = match name.parse::<usize>() {
        Ok(i) => (i < dockerfile.stages.len()).then_some(i),
        Err(_) => stage_by_name(dockerfile, name),
    };
    found.filter(|&i| i >= index)
}

/// The stages of one parsed Dockerfile, with the global ARG values their FROM lines see.
#[derive(Debug, Clone)]
pub struct Stages<'a> {
    dockerfile: &'a Dockerfile,
    meta_args: BTreeMap<String, Option<String>>,
    unexpanded: Vec<MetaArgError>,
    from_platform: FromPlatform,
}

impl<'a> Stages<'a> {
    /// Works out the global ARG values as BuildKit's Dockerfile frontend does: `platform_args`
    /// (the automatic ARGs: `TARGETARCH` and the rest) first, each replaced by a `--build-arg`
    /// of its name whether or not an ARG declares it; then every ARG before the first FROM in
    /// order, a `--build-arg` of the same name overriding its default, and a default expanded
    /// with the values declared before it. An ARG with neither keeps the value its name already
    /// has (`ARG TARGETARCH` leaves the automatic value, a second `ARG A` the first one's), and
    /// is otherwise declared but unset.
    pub fn new(
        dockerfile: &'a Dockerfile,
        build_args: &BTreeMap<String, String>,
        platform_args: impl IntoIterator<Item = (String, String)>,
        from_platform: FromPlatform,
    ) -> Self {
        let mut values: BTreeMap<String, Option<String>> = platform_args
            .into_iter()
            .map(|(k, v)| {
                let v = build_args.get(&k).cloned().unwrap_or(v);
                (k, Some(v))
            })
            .collect();
        let mut unexpanded = Vec::new();
        for decl in &dockerfile.meta_args {
            let value = match (build_args.get(&decl.name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => {
                    let lookup = |n: &str| values.get(n).cloned().flatten();
                    Some(
                        expand_word(default, &lookup, dockerfile.escape).unwrap_or_else(|source| {
                            unexpanded.push(MetaArgError {
                                line: decl.line,
                                name: excerpt(&decl.name),
                                default: excerpt(default),
                                source,
                            });
                            default.clone()
                        }),
                    )
                }
                (None, None) => values.get(&decl.name).cloned().flatten(),
            };
            values.insert(decl.name.clone(), value);
        }
        Stages {
            dockerfile,
            meta_args: values,
            unexpanded,
            from_platform,
        }
    }

    pub fn dockerfile(&self) -> &'a Dockerfile {
        self.dockerfile
    }

    /// Global ARG values by name (`None`: declared without a value), the automatic platform
    /// ARGs included. A stage's `ARG NAME` without a default takes its value from here.
    pub fn meta_args(&self) -> &BTreeMap<String, Option<String>> {
        &self.meta_args
    }

    /// Global ARG defaults that could not be expanded, in declaration order.
    pub fn unexpanded_defaults(&self) -> &[MetaArgError] {
        &self.unexpanded
    }

    /// The first stage called `name` (see [`stage_by_name`]).
    pub fn by_name(&self, name: &str) -> Option<usize> {
        stage_by_name(self.dockerfile, name)
    }

    /// The stage `name` names before stage `before` (see [`earlier_stage`]).
    pub fn earlier(&self, name: &str, before: usize) -> Option<usize> {
        earlier_stage(self.dockerfile, name, before)
    }

    /// The stage `--target` names (by name only), or the last stage without one.
    pub fn target(&self, target: Option<&str>) -> Result<usize, TargetError> {
        let last = self
            .dockerfile
            .stages
            .len()
            .checked_sub(1)
            .ok_or(TargetError::NoStages)?;
        match target {
            None => Ok(last),
            Some(t) => self.by_name(t).ok_or_else(|| TargetError::UnknownTarget {
                target: t.to_string(),
                names: self
                    .dockerfile
                    .stages
                    .iter()
                    .filter_map(|s| s.name.clone())
                    .collect(),
            }),
        }
    }

    /// `raw` expanded with the global ARGs, as a FROM line sees them.
    pub fn expand(&self, raw: &str) -> Result<String, ExpandError> {
        let lookup = |n: &str| self.meta_args.get(n).cloned().flatten();
        expand_word(raw, &lookup, self.dockerfile.escape)
    }

    /// The FROM value of stage `index` expanded with the global ARGs.
    ///
    /// # Panics
    /// When `index` is not a stage of the Dockerfile.
    pub fn expand_from(&self, index: usize) -> Result<String, StageError> {
        let stage = &self.dockerfile.stages[index];
        self.expand(&stage.base)
            .map_err(|source| StageError::ExpandFrom {
                line: stage.line,
                from: excerpt(&stage.base),
                source,
            })
    }

    /// Stage `index` resolved: its FROM expanded and classified (`scratch` first, then an
    /// earlier stage, else an image), and its `--platform` expanded when honoured.
    ///
    /// # Panics
    /// When `index` is not a stage of the Dockerfile.
    pub fn resolve(&self, index: usize) -> Result<ResolvedStage, StageError> {
        let stage = &self.dockerfile.stages[index];
        let from = self.expand_from(index)?;
        let platform = match (self.from_platform, &stage.platform) {
            (FromPlatform::Honour, Some(raw)) => {
                Some(
                    self.expand(raw)
                        .map_err(|source| StageError::ExpandPlatform {
                            line: stage.line,
                            from: excerpt(&stage.base),
                            platform: excerpt(raw),
                            source,
                        })?,
                )
            }
            _ => None,
        };
        let base = if from.eq_ignore_ascii_case("scratch") {
            Base::Scratch
        } else if let Some(i) = self.earlier(&from, index) {
            Base::Stage(i)
        } else {
            Base::Image(from.clone())
        };
        Ok(ResolvedStage {
            index,
            name: stage.name.clone(),
            line: stage.line,
            from,
            base,
            platform,
        })
    }

    /// Every stage resolved, in Dockerfile order.
    pub fn all(&self) -> impl Iterator<Item = Result<ResolvedStage, StageError>> + '_ {
        (0..self.dockerfile.stages.len()).map(|i| self.resolve(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn platform() -> Vec<(String, String)> {
        vec![
            ("TARGETARCH".to_string(), "arm64".to_string()),
            ("BUILDPLATFORM".to_string(), "linux/amd64".to_string()),
        ]
    }

    fn resolve_all(text: &str, build_args: &[(&str, &str)], p: FromPlatform) -> Vec<ResolvedStage> {
        let df = parse(text).unwrap();
        let stages = Stages::new(&df, &args(build_args), platform(), p);
        stages.all().collect::<Result<_, _>>().unwrap()
    }

    fn bases(text: &str, build_args: &[(&str, &str)]) -> Vec<Base> {
        resolve_all(text, build_args, FromPlatform::Ignore)
            .into_iter()
            .map(|s| s.base)
            .collect()
    }

    #[test]
    fn global_args_expand_in_from_and_build_args_override_defaults() {
        let text = "ARG REG=r.example\nARG IMG=${REG}/base\nARG TAG=1\n\
            FROM ${IMG}:${TAG}\nFROM $IMG:$TAG\n";
        assert_eq!(
            bases(text, &[]),
            [
                Base::Image("r.example/base:1".into()),
                Base::Image("r.example/base:1".into())
            ]
        );
        // An override of an earlier ARG reaches the defaults that use it.
        assert_eq!(
            bases(text, &[("REG", "m.example"), ("TAG", "2")])[0],
            Base::Image("m.example/base:2".into())
        );
    }

    #[test]
    fn only_args_before_the_first_from_are_global() {
        let text = "ARG A=global\nFROM img:$A\nARG B=stage\nFROM img:${B}x\n";
        let df = parse(text).unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), Vec::new(), FromPlatform::Ignore);
        assert_eq!(
            stages.meta_args().get("A"),
            Some(&Some("global".to_string()))
        );
        assert!(!stages.meta_args().contains_key("B"));
        assert_eq!(stages.expand_from(1).unwrap(), "img:x");
    }

    #[test]
    fn missing_or_valueless_args_expand_to_empty() {
        let text = "ARG DECLARED\nFROM img${DECLARED}:${UNDECLARED}latest\n";
        let df = parse(text).unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), platform(), FromPlatform::Ignore);
        assert_eq!(stages.meta_args().get("DECLARED"), Some(&None));
        assert_eq!(stages.expand_from(0).unwrap(), "img:latest");
        // A --build-arg for a name no global ARG declares does not reach FROM.
        assert_eq!(
            bases(text, &[("UNDECLARED", "x")]),
            [Base::Image("img:latest".into())]
        );
    }

    #[test]
    fn a_valueless_global_arg_keeps_the_value_its_name_has() {
        // BuildKit's buildMetaArgs replaces a global ARG's value only when the ARG has one: the
        // automatic TARGETARCH and an earlier `ARG TAG=1` survive a bare redeclaration.
        let text = "ARG TARGETARCH\nARG TAG=1\nARG TAG\nARG NONE\n\
            FROM img:$TARGETARCH-$TAG${NONE}\n";
        let df = parse(text).unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), platform(), FromPlatform::Ignore);
        assert_eq!(stages.expand_from(0).unwrap(), "img:arm64-1");
        assert_eq!(
            stages.meta_args().get("TARGETARCH"),
            Some(&Some("arm64".to_string()))
        );
        assert_eq!(stages.meta_args().get("NONE"), Some(&None));
    }

    #[test]
    fn a_build_arg_replaces_an_automatic_arg_without_a_declaration() {
        // BuildKit's defaultArgs: `--build-arg TARGETARCH=x` is what FROM sees, declared or not.
        let text = "FROM img:$TARGETARCH\n";
        assert_eq!(
            bases(text, &[("TARGETARCH", "riscv64")]),
            [Base::Image("img:riscv64".into())]
        );
        let declared = "ARG TARGETARCH\nFROM img:$TARGETARCH\n";
        assert_eq!(
            bases(declared, &[("TARGETARCH", "riscv64")]),
            [Base::Image("img:riscv64".into())]
        );
    }

    #[test]
    fn platform_args_are_seen_by_from_and_global_defaults() {
        let text = "ARG TOOLS=tools:${BUILDPLATFORM}\nFROM img:$TARGETARCH\nFROM $TOOLS\n";
        assert_eq!(
            bases(text, &[]),
            [
                Base::Image("img:arm64".into()),
                Base::Image("tools:linux/amd64".into())
            ]
        );
    }

    #[test]
    fn stages_are_named_by_name_or_index_only_when_earlier() {
        let text = "FROM img AS Build\n\
            FROM build\n\
            FROM BUILD AS later\n\
            FROM 0\n\
            FROM 4\n\
            FROM later\n\
            FROM next\n\
            FROM img AS next\n\
            FROM self AS self\n";
        assert_eq!(
            bases(text, &[]),
            [
                Base::Image("img".into()),
                Base::Stage(0),
                Base::Stage(0),
                Base::Stage(0),
                // Index 4 is this stage: not an earlier one, so an image.
                Base::Image("4".into()),
                Base::Stage(2),
                // A later stage's name is an image name.
                Base::Image("next".into()),
                Base::Image("img".into()),
                Base::Image("self".into()),
            ]
        );
    }

    #[test]
    fn scratch_is_neither_stage_nor_image() {
        let text = "ARG BASE=Scratch\nFROM scratch AS a\nFROM ${BASE}\nFROM a\n";
        let resolved = resolve_all(text, &[], FromPlatform::Ignore);
        let got: Vec<(&Base, &str)> = resolved
            .iter()
            .map(|s| (&s.base, s.from.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (&Base::Scratch, "scratch"),
                (&Base::Scratch, "Scratch"),
                (&Base::Stage(0), "a")
            ]
        );
    }

    #[test]
    fn from_platform_is_expanded_only_when_honoured() {
        let text = "ARG P=linux/s390x\n\
            FROM --platform=$BUILDPLATFORM img AS tools\n\
            FROM --platform=${P} img\n\
            FROM img\n\
            FROM --platform=${NOPE:?unset} img\n";
        let honoured: Vec<Option<String>> = {
            let df = parse(text).unwrap();
            let stages = Stages::new(&df, &BTreeMap::new(), platform(), FromPlatform::Honour);
            let first: Vec<Option<String>> = (0..3)
                .map(|i| stages.resolve(i).unwrap().platform)
                .collect();
            let err = stages.resolve(3).unwrap_err();
            assert!(
                matches!(&err, StageError::ExpandPlatform { line: 5, platform, .. } if platform == "${NOPE:?unset}"),
                "{err:?}"
            );
            assert!(err.to_string().starts_with("line 5: "), "{err}");
            first
        };
        assert_eq!(
            honoured,
            [Some("linux/amd64".into()), Some("linux/s390x".into()), None]
        );
        let ignored = resolve_all(text, &[], FromPlatform::Ignore);
        assert!(ignored.iter().all(|s| s.platform.is_none()), "{ignored:?}");
        assert_eq!(ignored[0].name.as_deref(), Some("tools"));
        assert_eq!((ignored[3].index, ignored[3].line), (3, 5));
    }

    #[test]
    fn an_unexpandable_from_names_its_line_and_value() {
        let df = parse("FROM img\nFROM ${NOPE:?unset}\n").unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), platform(), FromPlatform::Ignore);
        assert!(stages.resolve(0).is_ok());
        let err = stages.resolve(1).unwrap_err();
        assert!(
            matches!(&err, StageError::ExpandFrom { line: 2, from, .. } if from == "${NOPE:?unset}"),
            "{err:?}"
        );
        assert_eq!(stages.all().filter(Result::is_err).count(), 1);
    }

    #[test]
    fn an_unexpandable_default_is_kept_as_written_and_reported() {
        let text = "ARG BAD=${X:?needed}\nARG GOOD=${BAD}-ok\nFROM img:${GOOD}\n";
        let df = parse(text).unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), platform(), FromPlatform::Ignore);
        let errors = stages.unexpanded_defaults();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].name.as_str(), errors[0].default.as_str()),
            ("BAD", "${X:?needed}")
        );
        assert_eq!(
            stages.meta_args().get("BAD"),
            Some(&Some("${X:?needed}".to_string()))
        );
        // A --build-arg replaces the default, so nothing is left to expand.
        let fixed = Stages::new(
            &df,
            &args(&[("BAD", "b")]),
            platform(),
            FromPlatform::Ignore,
        );
        assert!(fixed.unexpanded_defaults().is_empty());
        assert_eq!(fixed.expand_from(0).unwrap(), "img:b-ok");
    }

    #[test]
    fn target_is_a_stage_name_or_the_last_stage() {
        let df = parse("FROM img AS Build\nFROM img AS final\nFROM img\n").unwrap();
        let stages = Stages::new(&df, &BTreeMap::new(), Vec::new(), FromPlatform::Ignore);
        assert_eq!(stages.target(None), Ok(2));
        assert_eq!(stages.target(Some("BUILD")), Ok(0));
        assert_eq!(
            stages.target(Some("1")).unwrap_err().to_string(),
            "--target 1: no stage of that name (stages: build, final)"
        );
        let empty = Dockerfile {
            escape: '\\',
            syntax: None,
            meta_args: Vec::new(),
            stages: Vec::new(),
        };
        let none = Stages::new(&empty, &BTreeMap::new(), Vec::new(), FromPlatform::Ignore);
        assert_eq!(none.target(None), Err(TargetError::NoStages));
    }

    #[test]
    fn bare_build_args_read_the_environment() {
        std::env::set_var("KILN_STAGES_TEST_BARE", "env");
        let flags = [
            "A=1=2",
            "KILN_STAGES_TEST_BARE",
            "KILN_STAGES_TEST_UNSET_X",
            "A=3",
        ]
        .map(String::from);
        assert_eq!(
            build_args_from_flags(&flags),
            [
                ("A".to_string(), "1=2".to_string()),
                ("KILN_STAGES_TEST_BARE".to_string(), "env".to_string()),
                ("A".to_string(), "3".to_string()),
            ]
        );
    }
}
