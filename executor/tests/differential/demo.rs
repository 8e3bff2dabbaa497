//! Proof that the stricter comparison reports what it claims to: a real image built by buildah
//! against deliberately wrong variants made from the reference side (one extra layer; a file
//! capability dropped), judged by the same comparison and allowlist as the corpus. They need the
//! test registry and buildah; they must never depend on kiln building something wrong.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use super::allowlist::Ledger;
use super::harness::{compare, Buildah, Side};
use super::rules;
use super::support::{fetch_rootfs, registry, scan_tree};

/// cap_net_raw in the effective and permitted sets, as `setcap cap_net_raw+ep` writes it
/// (struct vfs_cap_data, revision 2, little-endian).
const CAP_NET_RAW_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The demonstrations' case name: no corpus case has it, so only entries for every case apply.
const CASE: &str = "demo";

/// Builds `extra` appended to a small Dockerfile (a COPY of a file with a capability, a RUN) with
/// buildah, squashed and with `--layers`, pushes both, and reads them back as the corpus does.
fn build(tag: &str, extra: &str) -> Result<Side, String> {
    let reg = registry();
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let context = work.path().join("context");
    fs::create_dir(&context).map_err(|e| e.to_string())?;
    fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {reg}/kiln-test/busybox:latest\nCOPY ping /usr/bin/ping\n\
             RUN echo demo > /demo.txt\n{extra}"
        ),
    )
    .map_err(|e| e.to_string())?;
    let ping = context.join("ping");
    fs::write(&ping, "#!/bin/sh\necho ping\n").map_err(|e| e.to_string())?;
    xattr::set(&ping, "security.capability", &CAP_NET_RAW_EP)
        .map_err(|e| format!("cannot set a file capability on {}: {e}", ping.display()))?;
    let case = super::support::Case {
        name: format!("demo-{tag}"),
        dir: context,
        build_args: Vec::new(),
        target: None,
        requires: None,
        platform: None,
    };
    let image = format!("{reg}/diff/demo:{tag}");
    let layered = format!("{reg}/diff/demo:{tag}-layers");
    let buildah = Buildah::new(work.path());
    buildah.build(&case, &image, "buildah", false)?;
    buildah.build(&case, &layered, "buildah", true)?;
    Side::fetch(&image, &layered, work.path(), "buildah")
}

/// The reference, built once for all demonstrations.
fn reference() -> &'static Side {
    static REFERENCE: OnceLock<Side> = OnceLock::new();
    REFERENCE.get_or_init(|| build("reference", "").unwrap_or_else(|e| panic!("{e}")))
}

fn differences(candidate: &Side) -> Vec<String> {
    compare(
        CASE,
        reference(),
        candidate,
        rules::ALLOWLIST,
        &mut Ledger::default(),
    )
}

#[test]
fn a_rebuilt_reference_matches_itself() {
    let again = build("again", "").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(differences(&again), Vec::<String>::new());
    assert_eq!(
        reference().tree["/usr/bin/ping"]
            .xattrs
            .get("security.capability")
            .map(Vec::as_slice),
        Some(&CAP_NET_RAW_EP[..]),
        "the reference must carry the capability, or the dropped-capability demo proves nothing"
    );
}

#[test]
fn an_extra_layer_is_reported() {
    let variant = build("extra-layer", "RUN true\n").unwrap_or_else(|e| panic!("{e}"));
    let d = differences(&variant);
    let text = d.join("\n");
    assert_eq!(
        variant.tree,
        reference().tree,
        "the no-op RUN changes no file: only the layers may tell"
    );
    assert!(text.contains("history and layers"), "{text}");
    assert!(text.contains("3 != 4 layers"), "{text}");
    assert!(
        text.contains("extra    history[") && text.contains("\"RUN true\" (an empty layer)"),
        "{text}"
    );
}

#[test]
fn a_dropped_file_capability_is_reported() {
    // The variant starts from the reference as pushed, so that must exist first.
    let reference = reference();
    let work = tempfile::tempdir().unwrap();
    let image = format!("{}/diff/demo:reference", registry());
    let rootfs = fetch_rootfs(&image, work.path(), "variant").unwrap_or_else(|e| panic!("{e}"));
    strip(&rootfs.join("usr/bin/ping"), "security.capability");
    let variant = Side {
        tree: scan_tree(&rootfs).unwrap(),
        config: reference.config.clone(),
        steps: reference.steps.clone(),
    };
    let d = differences(&variant);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0], "files (buildah != kiln):");
    assert!(
        d[1].contains("differs  /usr/bin/ping: xattrs {security.capability=0x0100000200200000")
            && d[1].ends_with("!= {}"),
        "{d:?}"
    );
}

fn strip(path: &Path, name: &str) {
    xattr::remove(path, name).unwrap_or_else(|e| panic!("remove {name} from {path:?}: {e}"));
}
