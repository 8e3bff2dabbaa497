//! Stage platforms as the plan works them out: `FROM --platform` with the automatic platform
//! ARGs, inheritance through stages, `scratch`, and refusals naming the line.

use super::*;

fn plan_for(text: &str, target: &str) -> Result<BuildPlan, BuildError> {
    let dockerfile = kiln_dockerfile::parse(text).expect("Dockerfile parses");
    let target: Platform = target.parse().unwrap();
    BuildPlan::new(&dockerfile, None, true, &BTreeMap::new(), &target)
}

fn platforms(plan: &BuildPlan) -> Vec<String> {
    plan.order()
        .map(|i| plan.base(i).expect("FROM is usable").platform.to_string())
        .collect()
}

#[test]
fn from_platform_names_the_platform_of_a_stage_base() {
    let host = Platform::default().to_string();
    let text = "\
FROM --platform=$BUILDPLATFORM img AS builder
FROM --platform=linux/s390x img AS other
FROM --platform=${TARGETPLATFORM} img AS same
FROM img AS plain
FROM builder AS child
FROM --platform=linux/s390x scratch AS empty
";
    let p = plan_for(text, "linux/arm64/v8").unwrap();
    assert_eq!(
        platforms(&p),
        [
            host.as_str(),
            "linux/s390x",
            "linux/arm64/v8",
            "linux/arm64/v8",
            // A stage FROM another stage has that stage's platform.
            host.as_str(),
            // `scratch` is the target platform whatever --platform says, as in BuildKit.
            "linux/arm64/v8",
        ]
    );
}

#[test]
fn global_args_reach_from_platform() {
    let text = "ARG TOOLS=linux/riscv64\nFROM --platform=$TOOLS img\n";
    let p = plan_for(text, "linux/amd64").unwrap();
    assert_eq!(platforms(&p), ["linux/riscv64"]);
}

#[test]
fn an_unusable_from_platform_is_refused_with_its_line() {
    let err = plan_for("FROM img\nFROM --platform=linux img\n", "linux/amd64").unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, BuildError::StagePlatform { line: 2, .. }),
        "{msg}"
    );
    assert!(msg.contains("invalid --platform linux"), "{msg}");
    let err = plan_for("FROM --platform=$NOPE img\n", "linux/amd64").unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // Checked where it decides nothing too (scratch, a stage), as BuildKit and the warmer do.
    for text in [
        "FROM --platform=linux scratch\n",
        "FROM img AS a\nFROM --platform=linux a\n",
    ] {
        let err = plan_for(text, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, BuildError::StagePlatform { .. }),
            "{text}: {err}"
        );
    }
}
