//! The comparer must see every kind of difference it claims to check, and the allowlist must
//! hide only what it names; these run without a registry (root is needed for ownership and
//! file capabilities, which tests run as). They must not build images.

use super::support::{diff_configs, diff_trees, scan_tree, Allowed};
use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;

fn sample(root: &Path) {
    fs::create_dir_all(root.join("d/sub")).unwrap();
    fs::write(root.join("d/file"), "content").unwrap();
    fs::write(root.join("d/sub/exec"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("d/sub/exec"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("file", root.join("d/link")).unwrap();
    symlink("/nowhere", root.join("dangling")).unwrap();
    fs::write(root.join("h1"), "linked").unwrap();
    fs::hard_link(root.join("h1"), root.join("h2")).unwrap();
    chown(root.join("d/file"), Some(1000), Some(1000)).unwrap();
}

fn pair() -> (tempfile::TempDir, tempfile::TempDir) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    sample(a.path());
    sample(b.path());
    (a, b)
}

fn diff(a: &Path, b: &Path) -> Vec<String> {
    diff_trees(&scan_tree(a).unwrap(), &scan_tree(b).unwrap(), &[])
}

#[test]
fn identical_trees_have_no_difference() {
    let (a, b) = pair();
    assert_eq!(diff(a.path(), b.path()), Vec::<String>::new());
    let t = scan_tree(a.path()).unwrap();
    assert_eq!(t["/h2"].hardlink_group.as_deref(), Some("/h1"));
    assert_eq!(t["/d/sub/exec"].mode, 0o4755);
    assert_eq!(t["/d/file"].uid, 1000);
}

#[test]
fn detects_mode_difference() {
    let (a, b) = pair();
    fs::set_permissions(b.path().join("sticky"), fs::Permissions::from_mode(0o0777)).unwrap();
    let d = diff(a.path(), b.path());
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].contains("/sticky") && d[0].contains("mode 1777 != 0777"),
        "{d:?}"
    );
}

#[test]
fn detects_owner_difference() {
    let (a, b) = pair();
    chown(b.path().join("d/file"), Some(1000), Some(0)).unwrap();
    let d = diff(a.path(), b.path());
    assert!(
        d.len() == 1 && d[0].contains("owner 1000:1000 != 1000:0"),
        "{d:?}"
    );
}

#[test]
fn detects_content_difference_of_same_size() {
    let (a, b) = pair();
    fs::write(b.path().join("d/file"), "CONTENT").unwrap();
    chown(b.path().join("d/file"), Some(1000), Some(1000)).unwrap();
    let d = diff(a.path(), b.path());
    assert!(d.len() == 1 && d[0].contains("/d/file"), "{d:?}");
}

#[test]
fn detects_symlink_target_and_type_differences() {
    let (a, b) = pair();
    fs::remove_file(b.path().join("d/link")).unwrap();
    symlink("/d/file", b.path().join("d/link")).unwrap();
    fs::remove_file(b.path().join("dangling")).unwrap();
    fs::write(b.path().join("dangling"), "").unwrap();
    let d = diff(a.path(), b.path());
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].contains("/d/link: symlink -> file != symlink -> /d/file"),
        "{d:?}"
    );
    assert!(
        d[1].contains("/dangling: symlink -> /nowhere != file"),
        "{d:?}"
    );
}

#[test]
fn detects_missing_extra_and_broken_hardlinks() {
    let (a, b) = pair();
    fs::remove_file(b.path().join("h2")).unwrap();
    fs::write(b.path().join("h2"), "linked").unwrap();
    fs::remove_dir_all(b.path().join("d/sub")).unwrap();
    fs::write(b.path().join("extra"), "").unwrap();
    let d = diff(a.path(), b.path());
    let text = d.join("\n");
    assert!(text.contains("missing  /d/sub:"), "{text}");
    assert!(text.contains("missing  /d/sub/exec:"), "{text}");
    assert!(text.contains("extra    /extra:"), "{text}");
    assert!(text.contains("differs  /h1: hardlink group"), "{text}");
    assert!(text.contains("differs  /h2: hardlink group"), "{text}");
}

#[test]
fn allowlist_hides_only_its_paths() {
    let (a, b) = pair();
    fs::write(b.path().join("d/sub/new"), "").unwrap();
    fs::write(b.path().join("other"), "").unwrap();
    let allow = [Allowed {
        path: "/d/sub/",
        why: "test",
    }];
    let d = diff_trees(
        &scan_tree(a.path()).unwrap(),
        &scan_tree(b.path()).unwrap(),
        &allow,
    );
    assert!(d.len() == 1 && d[0].contains("/other"), "{d:?}");
}

#[test]
fn config_differences_are_reported_and_empty_equals_absent() {
    let a = serde_json::json!({"os": "linux", "architecture": "amd64", "config": {
        "Env": ["A=1"], "Cmd": ["sh"], "Labels": {"x": "1", "io.buildah.version": "1.28"},
        "ExposedPorts": {}, "User": "app"}});
    let b = serde_json::json!({"os": "linux", "architecture": "amd64", "config": {
        "Env": ["A=2"], "Cmd": ["sh"], "Labels": {"x": "1"}, "Volumes": null,
        "Entrypoint": ["/bin/sh"]}});
    let d = diff_configs(&a, &b, &["io.buildah."]);
    let text = d.join("\n");
    assert_eq!(d.len(), 3, "{text}");
    assert!(text.contains(r#"config.Env: ["A=1"] != ["A=2"]"#), "{text}");
    assert!(
        text.contains(r#"config.Entrypoint: (unset) != ["/bin/sh"]"#),
        "{text}"
    );
    assert!(text.contains(r#"config.User: "app" != (unset)"#), "{text}");
}

#[test]
fn env_order_does_not_matter_but_values_do() {
    let a = serde_json::json!({"config": {"Env": ["PATH=/bin", "A=1"]}});
    let b = serde_json::json!({"config": {"Env": ["A=1", "PATH=/bin"]}});
    assert_eq!(diff_configs(&a, &b, &[]), Vec::<String>::new());
    let c = serde_json::json!({"config": {"Env": ["A=1", "PATH=/usr/bin"]}});
    assert_eq!(diff_configs(&a, &c, &[]).len(), 1);
}

#[test]
fn detects_xattr_differences_including_file_capabilities() {
    let (a, b) = pair();
    // cap_net_raw+ep as setcap writes it.
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(a.path().join("d/sub/exec"), "security.capability", &cap).unwrap();
    xattr::set(a.path().join("d/file"), "user.kiln", b"yes").unwrap();
    xattr::set(b.path().join("d/file"), "user.kiln", b"no").unwrap();
    let t = scan_tree(a.path()).unwrap();
    assert_eq!(t["/d/sub/exec"].xattrs["security.capability"], cap);
    let d = diff(a.path(), b.path());
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].contains(r#"/d/file: xattrs {user.kiln="yes"} != {user.kiln="no"}"#),
        "{d:?}"
    );
    assert!(
        d[1].contains("/d/sub/exec: xattrs {security.capability=0x0100000200200000")
            && d[1].ends_with("!= {}"),
        "{d:?}"
    );
}

#[test]
fn detects_root_directory_mode_and_owner() {
    let (a, b) = pair();
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o755)).unwrap();
    chown(b.path(), Some(0), Some(1000)).unwrap();
    fs::set_permissions(a.path(), fs::Permissions::from_mode(0o700)).unwrap();
    chown(a.path(), Some(0), Some(0)).unwrap();
    let d = diff(a.path(), b.path());
    assert_eq!(
        d,
        vec!["  differs  /: mode 0700 != 0755; owner 0:0 != 0:1000"]
    );
}

#[test]
fn content_and_type_are_separate_aspects() {
    use super::support::{tree_differences, Aspect};
    let (a, b) = pair();
    fs::write(b.path().join("h1"), "LINKED").unwrap();
    fs::remove_file(b.path().join("dangling")).unwrap();
    fs::write(b.path().join("dangling"), "").unwrap();
    let d = tree_differences(&scan_tree(a.path()).unwrap(), &scan_tree(b.path()).unwrap());
    let aspects: Vec<(&str, Vec<Aspect>)> = d.iter().map(|d| (d.path(), d.aspects())).collect();
    assert_eq!(
        aspects,
        vec![
            ("/dangling", vec![Aspect::Kind, Aspect::Mode]),
            ("/h1", vec![Aspect::Content]),
            ("/h2", vec![Aspect::Content]),
        ]
    );
    // Tolerating the content leaves nothing of /h1, and everything of /dangling.
    assert_eq!(d[1].without(&[Aspect::Content]), None);
    assert_eq!(d[0].without(&[Aspect::Content]), Some(d[0].clone()));
}

mod steps {
    use super::super::support::{diff_steps, layer_count, LayerKind, Step};

    fn step(created_by: &str, layer: LayerKind) -> Step {
        Step {
            created_by: created_by.to_string(),
            layer,
        }
    }

    fn base() -> Vec<Step> {
        vec![
            step("base", LayerKind::Files(10)),
            step("LABEL a=1", LayerKind::None),
            step("RUN make", LayerKind::Files(3)),
            step("CMD [\"x\"]", LayerKind::None),
        ]
    }

    #[test]
    fn equal_histories_have_no_difference_whatever_the_entry_counts() {
        let mut other = base();
        other[2].layer = LayerKind::Files(7);
        assert_eq!(diff_steps(&base(), &other), vec![]);
        assert_eq!(layer_count(&base()), 2);
    }

    #[test]
    fn a_layer_where_none_was_expected_is_reported() {
        let mut other = base();
        other[1].layer = LayerKind::Empty;
        other[3].layer = LayerKind::Files(1);
        let d: Vec<String> = diff_steps(&base(), &other)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            d,
            vec![
                r#"  history[1] "LABEL a=1": no layer != an empty layer"#,
                r#"  history[3] "CMD [\"x\"]": no layer != a layer of 1 entries"#,
            ]
        );
    }

    #[test]
    fn spelling_differences_are_reported_per_entry() {
        let mut other = base();
        other[2].created_by = "RUN make all".into();
        let d: Vec<String> = diff_steps(&base(), &other)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            d,
            vec![r#"  history[2].created_by: "RUN make" != "RUN make all""#]
        );
    }

    #[test]
    fn an_inserted_step_is_one_extra_entry_and_a_removed_one_is_missing() {
        let mut longer = base();
        longer.insert(2, step("RUN true", LayerKind::Empty));
        let d: Vec<String> = diff_steps(&base(), &longer)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            d,
            vec![r#"  extra    history[2] "RUN true" (an empty layer)"#]
        );
        let d: Vec<String> = diff_steps(&longer, &base())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            d,
            vec![r#"  missing  history[2] "RUN true" (an empty layer)"#]
        );
    }
}

mod cases {
    use super::super::support::{select_cases, Case};
    use std::path::PathBuf;

    fn case(name: &str, requires: Option<&str>) -> Case {
        Case {
            name: name.to_string(),
            dir: PathBuf::from(name),
            build_args: Vec::new(),
            target: None,
            requires: requires.map(str::to_string),
            platform: None,
        }
    }

    fn all() -> Vec<Case> {
        vec![case("a", None), case("b", None), case("c", Some("a"))]
    }

    fn names(cases: &[Case]) -> Vec<&str> {
        cases.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn no_filter_selects_every_case_and_a_filter_keeps_what_is_required() {
        assert_eq!(names(&select_cases(all(), None).unwrap()), ["a", "b", "c"]);
        assert_eq!(names(&select_cases(all(), Some("c")).unwrap()), ["a", "c"]);
        assert_eq!(names(&select_cases(all(), Some(" b ,")).unwrap()), ["b"]);
    }

    #[test]
    fn a_filter_that_selects_nothing_fails_naming_it_and_the_known_cases() {
        for filter in ["", " , ", "nope", "a,nope"] {
            let e = select_cases(all(), Some(filter)).unwrap_err();
            assert!(e.contains(&format!("KILN_DIFF_CASES={filter:?}")), "{e}");
            assert!(e.contains("known cases: a,b,c"), "{e}");
        }
        let e = select_cases(all(), Some("a,nope")).unwrap_err();
        assert!(e.contains("names nope, which is not"), "{e}");
    }
}

mod allowlist {
    use super::super::allowlist::{
        canonical_steps, filter_paths, filter_steps, Ledger, Tolerance, Tolerated,
    };
    use super::super::support::{diff_steps, tree_differences, Aspect, LayerKind, Step};
    use super::pair;
    use std::fs;

    fn upper(s: &str) -> Option<String> {
        s.starts_with("run ").then(|| s.to_uppercase())
    }

    const LIST: &[Tolerance] = &[
        Tolerance {
            name: "file-content",
            cases: &["one"],
            what: Tolerated::Path {
                paths: &["/x", "/d/"],
                aspects: &[Aspect::Content],
            },
            why: "test",
        },
        Tolerance {
            name: "spelling",
            cases: &[],
            what: Tolerated::CreatedBy(upper),
            why: "test",
        },
        Tolerance {
            name: "empty-run",
            cases: &[],
            what: Tolerated::Layer {
                instruction: "RUN",
                reference: LayerKind::Empty,
                kiln: LayerKind::None,
            },
            why: "test",
        },
        Tolerance {
            name: "unused",
            cases: &["two"],
            what: Tolerated::CreatedBy(upper),
            why: "test",
        },
    ];

    #[test]
    fn path_entries_hide_only_their_aspects_in_their_cases() {
        let (a, b) = pair();
        fs::write(b.path().join("d/file"), "CONTENT").unwrap();
        fs::set_permissions(
            b.path().join("d/sub/exec"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let diffs = tree_differences(
            &super::scan_tree(a.path()).unwrap(),
            &super::scan_tree(b.path()).unwrap(),
        );
        assert_eq!(diffs.len(), 2);
        let mut ledger = Ledger::default();
        let left = filter_paths("one", diffs.clone(), LIST, &mut ledger);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0]
            .to_string()
            .contains("/d/sub/exec: mode 4755 != 0755"));
        assert_eq!(ledger.uses("file-content"), 1);
        // Another case: nothing hidden.
        assert_eq!(filter_paths("other", diffs, LIST, &mut ledger).len(), 2);
    }

    #[test]
    fn spellings_and_layer_kinds_are_tolerated_and_counted() {
        let reference = vec![Step {
            created_by: "run true".into(),
            layer: LayerKind::Empty,
        }];
        let kiln = vec![Step {
            created_by: "RUN TRUE".into(),
            layer: LayerKind::None,
        }];
        let mut ledger = Ledger::default();
        let r = canonical_steps("one", &reference, LIST, &mut ledger);
        let k = canonical_steps("one", &kiln, LIST, &mut ledger);
        let d = diff_steps(&r, &k);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(filter_steps("one", d, LIST, &mut ledger), vec![]);
        assert_eq!(ledger.uses("spelling"), 1);
        assert_eq!(ledger.uses("empty-run"), 1);

        // The other way round (a layer where the reference has none) is not tolerated.
        let d = diff_steps(&k, &r);
        assert_eq!(filter_steps("one", d, LIST, &mut ledger).len(), 1);
    }

    #[test]
    fn stale_entries_are_those_that_hid_nothing_although_their_cases_ran() {
        let mut ledger = Ledger::default();
        let ran = vec!["one".to_string(), "two".to_string()];
        let stale: Vec<&str> = ledger
            .stale(LIST, &ran, true)
            .iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(stale, ["file-content", "spelling", "empty-run", "unused"]);
        // Entries for every case are judged only when every case ran; case entries when theirs did.
        let partial: Vec<&str> = ledger
            .stale(LIST, &["two".to_string()], false)
            .iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(partial, ["unused"]);
        canonical_steps(
            "two",
            &[Step {
                created_by: "run x".into(),
                layer: LayerKind::None,
            }],
            LIST,
            &mut ledger,
        );
        // "spelling" comes first in the list and rewrites the text, so "unused" sees it done.
        assert_eq!(ledger.uses("spelling"), 1);
        assert_eq!(ledger.uses("unused"), 0);
    }
}

mod rules {
    use super::super::allowlist::{canonical_steps, Ledger, Tolerated};
    use super::super::rules::ALLOWLIST;
    use super::super::support::{LayerKind, Step};

    fn canonical(case: &str, created_by: &str) -> String {
        let steps = [Step {
            created_by: created_by.to_string(),
            layer: LayerKind::None,
        }];
        canonical_steps(case, &steps, ALLOWLIST, &mut Ledger::default())
            .remove(0)
            .created_by
    }

    #[test]
    fn buildah_and_kiln_spellings_meet_in_one_canonical_form() {
        for (buildah, kiln) in [
            ("/bin/sh -c #(nop) LABEL stage=meta", "LABEL stage=meta"),
            ("/bin/sh -c #(nop) EXPOSE 9000", "EXPOSE 9000"),
            ("/bin/sh -c true", "RUN true"),
            (
                "|3 GLOBAL=global-default LOCAL=local-default OVERRIDDEN=from-build-arg /bin/sh -c echo \"$GLOBAL\"",
                "RUN echo \"$GLOBAL\"",
            ),
            (
                "/bin/sh -c [\"/bin/sh\", \"-c\", \"echo exec-form > /exec.txt\"]",
                "RUN [\"/bin/sh\", \"-c\", \"echo exec-form > /exec.txt\"]",
            ),
            (
                "/bin/sh -c #(nop) COPY file:9a44 in /dst/ ",
                "COPY a.txt /dst/",
            ),
            (
                "/bin/sh -c #(nop) COPY multi:7767 in /multi/ ",
                "COPY --chown=app:app a.txt b.txt /multi/",
            ),
            (
                "/bin/sh -c #(nop) ADD dir:834b in ${DIR}/a ",
                "ADD [\"tree\", \"${DIR}/a\"]",
            ),
            ("/bin/sh -c #(nop) ARG GLOBAL LOCAL", "ARG LOCAL=local-default"),
        ] {
            assert_eq!(
                canonical("any", buildah),
                canonical("any", kiln),
                "{buildah} vs {kiln}"
            );
        }
        assert_ne!(
            canonical("any", "/bin/sh -c true"),
            canonical("any", "RUN false")
        );
        assert_ne!(
            canonical("any", "/bin/sh -c #(nop) COPY file:1 in /a "),
            canonical("any", "COPY x /b")
        );
    }

    #[test]
    fn every_entry_is_named_once_and_says_why() {
        for (i, t) in ALLOWLIST.iter().enumerate() {
            assert!(t.why.len() > 40, "{}: say what differs and why", t.name);
            assert!(
                ALLOWLIST[..i].iter().all(|o| o.name != t.name),
                "{} twice",
                t.name
            );
            if let Tolerated::Path { aspects, .. } = &t.what {
                assert!(!aspects.is_empty(), "{}: no aspect", t.name);
            }
        }
    }
}
