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

/// Which stages of `text` a build for `a` and one for `b` share (same identity, not `None`).
fn shared_between(text: &str, a: &str, b: &str) -> Vec<usize> {
    let dockerfile = kiln_dockerfile::parse(text).expect("Dockerfile parses");
    let (pa, pb) = (plan_for(text, a).unwrap(), plan_for(text, b).unwrap());
    pa.order()
        .filter(|&i| {
            let ia = pa.shared_identity(&dockerfile, i);
            ia.is_some() && ia == pb.shared_identity(&dockerfile, i)
        })
        .collect()
}

#[test]
fn stages_the_same_for_every_target_platform_are_shared() {
    let text = "\
FROM --platform=$BUILDPLATFORM img AS tools
RUN make tools
FROM tools AS gen
COPY --from=tools /bin/tool /tool
RUN /tool generate
FROM --platform=$BUILDPLATFORM img AS cross
ARG TARGETARCH
RUN GOARCH=$TARGETARCH go build
FROM --platform=$BUILDPLATFORM img AS reads-cross
COPY --from=cross /app /app
FROM --platform=$BUILDPLATFORM img AS reads-image
COPY --from=other/image /x /x
FROM --platform=$BUILDPLATFORM img AS mounts-gen
RUN --mount=type=bind,from=gen,target=/g cat /g/out
FROM --platform=$BUILDPLATFORM img AS mounts-image
RUN --mount=type=bind,from=other/image,target=/g cat /g/out
FROM --platform=$BUILDPLATFORM img AS build-arch
ARG BUILDARCH
RUN echo $BUILDARCH
FROM --platform=linux/s390x img AS fixed
FROM img AS plain
FROM scratch AS empty
FROM --platform=$BUILDPLATFORM scratch AS empty-declared
FROM plain
COPY --from=gen /out /out
";
    // tools, gen (FROM tools, copies tools), mounts-gen, build-arch (BUILD* are the same),
    // fixed: the same for both targets. cross declares TARGETARCH; reads-cross reads it;
    // reads-image and mounts-image read an image pulled for the target; plain and the final
    // stage are for the target; scratch is always the target's.
    assert_eq!(
        shared_between(text, "linux/amd64", "linux/arm64"),
        [0, 1, 5, 7, 8]
    );
    // A FROM that reads a TARGET* value makes the builder stage per target.
    let text = "\
FROM --platform=$BUILDPLATFORM img-$TARGETARCH AS tools
FROM --platform=$BUILDPLATFORM img AS other
FROM img
COPY --from=tools /t /t
COPY --from=other /o /o
";
    assert_eq!(shared_between(text, "linux/amd64", "linux/arm64"), [1]);
}
