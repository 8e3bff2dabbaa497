//! crdgen: writes the CRD YAML generated from the Rust types into `crds/` (or the directory given
//! as the first argument). Never edit `crds/*.yaml` by hand; run this instead.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, crd) in kiln_operator::crd::all_crds() {
        let path = dir.join(file);
        let yaml = kiln_operator::crd::crd_yaml(&crd).context("serializing CRD")?;
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
