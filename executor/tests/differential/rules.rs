//! The entries of the differential test's allowlist: each difference between buildah (the
//! reference) and kiln that the comparison tolerates, by name, with what differs, why that is
//! acceptable and in which cases. Keep it short: each entry hides a class of bugs. It holds data
//! and the spelling rewrites only; the mechanism is in `allowlist.rs`.

use super::allowlist::{Ledger, Tolerance, Tolerated};
use super::support::{Aspect, LayerKind};

/// Every tolerated difference. `CreatedBy` rewrites apply in this order.
pub const ALLOWLIST: &[Tolerance] = &[
    Tolerance {
        name: "created-by-nop",
        cases: &[],
        what: Tolerated::CreatedBy(nop_instruction),
        why: "buildah (like Docker's classic builder) records an instruction that runs nothing as \
              `/bin/sh -c #(nop) <instruction>`; kiln records the instruction as written, as \
              kaniko does. The canonical form drops the prefix.",
    },
    Tolerance {
        name: "created-by-run-shell",
        cases: &[],
        what: Tolerated::CreatedBy(run_instruction),
        why: "buildah records RUN as `/bin/sh -c <command>` (even in exec form and under SHELL), \
              prefixed by `|<n> <build args in scope>` when there are any; kiln records `RUN \
              <command>` as written, as kaniko does. Build args never reach the config, and the \
              tree comparison checks what the command did.",
    },
    Tolerance {
        name: "created-by-copy-sources",
        cases: &[],
        what: Tolerated::CreatedBy(copy_destination),
        why:
            "buildah names COPY/ADD sources by a content digest (`COPY file:<sha256> in <dest>`); \
              kiln records the instruction as written. The canonical form keeps the instruction \
              and its destination; the tree comparison checks the copied content.",
    },
    Tolerance {
        name: "created-by-arg",
        cases: &[],
        what: Tolerated::CreatedBy(arg_instruction),
        why: "buildah records ARG as the names of every build arg in scope (`ARG A B`), kiln as \
              written (`ARG B=default`); ARG never reaches the config, so the canonical form is \
              `ARG`: both record one entry per ARG.",
    },
    Tolerance {
        name: "created-by-heredoc-equivalent",
        cases: &["heredoc-run"],
        what: Tolerated::CreatedBy(heredoc_run),
        why: "buildah 1.28 cannot parse heredocs, so it builds the equivalent Dockerfile.buildah, \
              whose RUN lines are spelled differently from the heredoc RUN kiln records. The \
              canonical form of a RUN there is `RUN` (the tree comparison checks the scripts ran).",
    },
    Tolerance {
        name: "run-unchanged-empty-layer",
        cases: &[],
        what: Tolerated::Layer {
            instruction: "RUN",
            reference: LayerKind::Empty,
            kiln: LayerKind::None,
        },
        why: "buildah --layers commits an empty layer for a RUN that changes no file; kiln, like \
              kaniko and BuildKit, records the step with empty_layer and adds no layer. Both \
              flatten to the same tree.",
    },
    Tolerance {
        name: "run-directory-time-only",
        cases: &["run-no-change"],
        what: Tolerated::Layer {
            instruction: "RUN",
            reference: LayerKind::Empty,
            kiln: LayerKind::Files(0),
        },
        why: "`touch /tmp/transient && rm /tmp/transient` changes only /tmp's modification time: \
              buildah (like BuildKit) ignores a directory whose only change is its mtime and \
              commits an empty layer; kiln, like kaniko, commits /tmp with its new time. \
              Timestamps are not compared, so the trees agree.",
    },
    Tolerance {
        name: "workdir-layer",
        cases: &[],
        what: Tolerated::Layer {
            instruction: "WORKDIR",
            reference: LayerKind::None,
            kiln: LayerKind::Files(0),
        },
        why: "buildah records WORKDIR as empty_layer and leaves the directory it creates to the \
              next committed step (with --layers it even loses it when no step follows: \
              config-fields' /srv); kiln, like BuildKit, commits the created directory in the \
              WORKDIR step's own layer. The squashed trees compared above agree.",
    },
    Tolerance {
        name: "dpkg-apt-logs",
        cases: &["debian-apt"],
        what: Tolerated::Path {
            paths: &[
                "/var/log/dpkg.log",
                "/var/log/apt/history.log",
                "/var/log/apt/term.log",
            ],
            aspects: &[Aspect::Content],
        },
        why: "dpkg and apt log with the time of the build (`2024-...` lines, Start-Date and \
              End-Date): the content of these logs differs between any two builds. The \
              Dockerfile used to delete them; now they are compared for everything but content.",
    },
    Tolerance {
        name: "apt-binary-caches",
        cases: &["debian-apt"],
        what: Tolerated::Path {
            paths: &[
                "/var/cache/apt/pkgcache.bin",
                "/var/cache/apt/srcpkgcache.bin",
            ],
            aspects: &[Aspect::Content],
        },
        why: "apt's binary caches record the modification times of the package lists, which are \
              the times of the build, so their content differs between any two builds. The \
              Dockerfile used to delete them; now they are compared for everything but content.",
    },
    Tolerance {
        name: "run-mount-parent-stub",
        cases: &["run-mounts"],
        what: Tolerated::Path {
            paths: &["/var/cache"],
            aspects: &[Aspect::Presence],
        },
        why: "buildah 1.28 removes a mount point it created for RUN --mount but keeps the missing               parent directories it created above it (/var/cache for a cache at               /var/cache/kiln-diff); kiln removes them too, as BuildKit's mount stub cleaner               does (BuildKit is the reference for RUN --mount).",
    },
];

/// `/bin/sh -c #(nop) X` is `X`.
fn nop_instruction(s: &str) -> Option<String> {
    s.strip_prefix("/bin/sh -c #(nop) ")
        .map(|rest| rest.trim_end().to_string())
}

/// `|2 A=1 B=2 /bin/sh -c cmd` and `/bin/sh -c cmd` are `RUN cmd`.
fn run_instruction(s: &str) -> Option<String> {
    let command = match s.strip_prefix('|') {
        Some(rest) => {
            let (count, rest) = rest.split_once(' ')?;
            let count: usize = count.parse().ok()?;
            // Each build arg is one `NAME=value` word; values with spaces are not in the corpus.
            let mut rest = rest;
            for _ in 0..count {
                rest = rest.split_once(' ')?.1;
            }
            rest.strip_prefix("/bin/sh -c ")?
        }
        None => s.strip_prefix("/bin/sh -c ")?,
    };
    Some(format!("RUN {command}"))
}

/// `COPY file:<sha> in <dest> ` (buildah) and `COPY --flags src... <dest>` (as written) are both
/// `COPY <dest>`; the same for ADD.
fn copy_destination(s: &str) -> Option<String> {
    let (keyword, rest) = s.split_once(' ')?;
    if keyword != "COPY" && keyword != "ADD" {
        return None;
    }
    let rest = rest.trim_end();
    let dest = if let Some((_, dest)) = rest.split_once(" in ").filter(|(src, _)| {
        src.starts_with("file:") || src.starts_with("dir:") || src.starts_with("multi:")
    }) {
        dest.to_string()
    } else if rest.ends_with(']') {
        // JSON form: the destination is the last string of the array.
        let start = rest.find('[')?;
        let list: Vec<String> = serde_json::from_str(&rest[start..]).ok()?;
        list.last()?.clone()
    } else {
        rest.rsplit(' ').next()?.to_string()
    };
    Some(format!("{keyword} {dest}"))
}

/// `ARG anything` is `ARG`.
fn arg_instruction(s: &str) -> Option<String> {
    s.starts_with("ARG ").then(|| "ARG".to_string())
}

/// In heredoc-run, `RUN anything` is `RUN`.
fn heredoc_run(s: &str) -> Option<String> {
    s.starts_with("RUN ").then(|| "RUN".to_string())
}

/// The allowlist as used by a run: each entry with how often it hid something, and the stale
/// entries (matched nothing although their cases ran).
pub fn summary(ledger: &Ledger, stale: &[&Tolerance]) -> String {
    let mut out = String::from("allowlist (uses this run):\n");
    for t in ALLOWLIST {
        let mark = if stale.iter().any(|s| s.name == t.name) {
            "  STALE"
        } else if t.known_bug() {
            "  KNOWN BUG"
        } else {
            ""
        };
        let cases = if t.cases.is_empty() {
            "every case".to_string()
        } else {
            t.cases.join(", ")
        };
        out.push_str(&format!(
            "  {:>4}  {} ({cases}){mark}\n",
            ledger.uses(t.name),
            t.name
        ));
        let paths = ledger.paths(t.name);
        if !paths.is_empty() {
            const SHOWN: usize = 6;
            let more = paths.len().saturating_sub(SHOWN);
            out.push_str(&format!(
                "          hid {}{}\n",
                paths[..paths.len().min(SHOWN)].join(" "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}
