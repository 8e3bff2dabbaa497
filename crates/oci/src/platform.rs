//! Image platforms (`os/architecture[/variant]`): parsing `--custom-platform`, matching image
//! index entries, and BuildKit's automatic platform ARGs. Only names platforms: never emulates
//! one or checks that this machine can run it.

use std::fmt;

/// An image platform (`os/architecture[/variant]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    /// Linux on the architecture kiln runs on, named as Go (and so images) name it.
    fn default() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// Parses `os/arch[/variant]`, as given to `--custom-platform`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(format!(
                "invalid platform {s:?}: expected os/architecture[/variant], e.g. linux/arm64/v8"
            )),
        }
    }
}

impl Platform {
    /// Whether an index entry's platform is this one. A missing variant on either side
    /// matches, except that arm64 treats "no variant" as v8, as containerd does.
    pub(crate) fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        if p.os().to_string() != self.os || p.architecture().to_string() != self.architecture {
            return false;
        }
        let norm = |v: Option<&str>| -> Option<String> {
            match (self.architecture.as_str(), v) {
                ("arm64", None) => Some("v8".to_string()),
                (_, v) => v.map(str::to_string),
            }
        };
        match (&self.variant, p.variant()) {
            (None, _) => true,
            (Some(w), got) => norm(Some(w)) == norm(got.as_deref()),
        }
    }

    /// Whether programs of this platform run on this machine without emulation: the same OS
    /// and architecture as the machine's (variants are not told apart).
    pub fn runs_here(&self) -> bool {
        let here = Platform::default();
        self.os == here.os && self.architecture == here.architecture
    }

    pub(crate) fn describe(p: &oci_spec::image::Platform) -> String {
        let mut s = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant() {
            s.push('/');
            s.push_str(v);
        }
        s
    }
}

/// The platform a `--custom-platform` value names, or this machine's when the flag is not given:
/// the one reading of that flag for kiln-executor and kiln-warmer. Each program declares the flag
/// itself, because only the warmer also accepts kaniko warmer's `--customPlatform` spelling.
pub fn from_flag(value: Option<&str>) -> Result<Platform, String> {
    match value {
        Some(p) => p.parse(),
        None => Ok(Platform::default()),
    }
}

/// `--custom-platform` (or `--platform`) as a list: one platform or several separated by commas
/// (`linux/amd64,linux/arm64`), in the order given; this machine's when absent. An empty item or
/// a platform named twice is refused.
pub fn list_from_flag(value: Option<&str>) -> Result<Vec<Platform>, String> {
    let Some(value) = value else {
        return Ok(vec![Platform::default()]);
    };
    let mut out: Vec<Platform> = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!(
                "{value:?}: an empty platform in the list (separate platforms with single commas)"
            ));
        }
        let p: Platform = item.parse()?;
        if out.contains(&p) {
            return Err(format!("{value:?}: {p} is named twice"));
        }
        out.push(p);
    }
    Ok(out)
}

/// The platform of a stage's base image, the one rule for kiln-executor and kiln-warmer: the
/// stage's `FROM --platform` value (already expanded) when it has one, else `target`. An empty
/// value is refused, as BuildKit does, rather than silently meaning the target.
pub fn for_stage(from_platform: Option<&str>, target: &Platform) -> Result<Platform, String> {
    match from_platform {
        None => Ok(target.clone()),
        Some(p) if p.trim().is_empty() => {
            Err("it is empty (does it name an ARG that is not set?)".to_string())
        }
        Some(p) => p.parse(),
    }
}

/// BuildKit's automatic platform ARGs for a build for `target`: `TARGETPLATFORM`, `TARGETOS`,
/// `TARGETARCH`, `TARGETVARIANT` and their `BUILD*` twins, in that order. Kiln builds for the
/// target platform on this machine, so the build platform is this machine's; a missing variant
/// is the empty string, as in BuildKit.
pub fn automatic_args(target: &Platform) -> Vec<(String, String)> {
    let build = Platform::default();
    let mut args = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", &build)] {
        args.push((format!("{prefix}PLATFORM"), p.to_string()));
        args.push((format!("{prefix}OS"), p.os.clone()));
        args.push((format!("{prefix}ARCH"), p.architecture.clone()));
        args.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_display() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert_eq!(Platform::default().os, "linux");
    }

    #[test]
    fn only_this_machines_os_and_architecture_run_here() {
        let here = Platform::default();
        assert!(here.runs_here());
        let with_variant = Platform {
            variant: Some("v8".into()),
            ..here.clone()
        };
        assert!(with_variant.runs_here());
        let other_arch = if here.architecture == "s390x" {
            "riscv64"
        } else {
            "s390x"
        };
        assert!(!Platform {
            architecture: other_arch.into(),
            ..here.clone()
        }
        .runs_here());
        assert!(!Platform {
            os: "windows".into(),
            ..here
        }
        .runs_here());
    }

    #[test]
    fn the_platform_flag_defaults_to_this_machine() {
        assert_eq!(from_flag(None).unwrap(), Platform::default());
        assert_eq!(
            from_flag(Some("linux/arm/v7")).unwrap(),
            "linux/arm/v7".parse::<Platform>().unwrap()
        );
        let e = from_flag(Some("linux")).unwrap_err();
        assert!(e.contains("expected os/architecture[/variant]"), "{e}");
    }

    #[test]
    fn a_stage_platform_is_its_from_platform_else_the_target() {
        let target: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(for_stage(None, &target).unwrap(), target);
        assert_eq!(
            for_stage(Some("linux/s390x"), &target).unwrap().to_string(),
            "linux/s390x"
        );
        assert!(for_stage(Some(""), &target).unwrap_err().contains("empty"));
        assert!(for_stage(Some("linux"), &target).is_err());
    }

    #[test]
    fn automatic_args_name_target_and_build_platforms() {
        let target: Platform = "linux/arm/v7".parse().unwrap();
        let host = Platform::default();
        let args = automatic_args(&target);
        let names: Vec<&str> = args.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "TARGETPLATFORM",
                "TARGETOS",
                "TARGETARCH",
                "TARGETVARIANT",
                "BUILDPLATFORM",
                "BUILDOS",
                "BUILDARCH",
                "BUILDVARIANT"
            ]
        );
        let values: Vec<&str> = args.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values[..4], ["linux/arm/v7", "linux", "arm", "v7"]);
        assert_eq!(
            values[4..],
            [
                host.to_string().as_str(),
                "linux",
                host.architecture.as_str(),
                ""
            ]
        );
    }
}
