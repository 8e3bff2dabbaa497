//! The committed `crds/*.yaml` must be exactly what `crdgen` writes from the Rust types.

#[test]
fn committed_crds_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in kiln_operator::crd::all_crds() {
        let want = kiln_operator::crd::crd_yaml(&crd).expect("CRD serializes");
        let path = dir.join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date with operator/src/crd: run `cargo run -p kiln-operator --bin crdgen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_have_status_printer_columns_and_short_names() {
    for (_, crd) in kiln_operator::crd::all_crds() {
        let v = &crd.spec.versions[0];
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Phase") && cols.contains(&"Age"), "{cols:?}");
        assert!(!crd.spec.names.short_names.as_ref().unwrap().is_empty());
    }
}
