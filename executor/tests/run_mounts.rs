//! `RUN --mount` end to end: real builds by the `kiln-executor` binary (chroot isolation) over
//! the test registry's busybox, written as OCI layouts and read back. Each case checks what the
//! step saw (it writes a marker only if its checks pass) and that nothing of a mount reached a
//! layer: secrets are also looked for in every blob and in the log. Uses only temporary
//! directories and the local test registry.

mod support;

use std::fs;
use std::path::Path;

use kiln_testkit::{registry, require_root};
use support::{layout_config, layout_entry, scan_files, Build};

fn root() -> bool {
    require_root("RUN --mount needs chroot isolation, which needs root")
}

fn absent(layout: &Path, paths: &[&str]) {
    for path in paths {
        assert_eq!(
            layout_entry(layout, path),
            None,
            "{path} reached a layer of {}",
            layout.display()
        );
    }
}

#[test]
fn secrets_from_a_file_and_a_variable_reach_the_step_only() {
    if !root() {
        return;
    }
    let nonce = std::process::id();
    let file_secret = format!("file-secret-{nonce}-Qz8");
    let env_secret = format!("env-secret-{nonce}-Wm3");
    // The step compares lengths and a prefix, so no value passes through an ARG.
    let b = Build::new(
        r#"FROM BASE
RUN --mount=type=secret,id=tok \
    --mount=type=secret,id=api,env=API_TOKEN \
    --mount=type=secret,id=tok,target=/etc/app/key,mode=0440,uid=12,gid=34 \
    set -e; \
    case "$(cat /run/secrets/tok)" in file-secret-*) ;; *) exit 3;; esac; \
    case "$API_TOKEN" in env-secret-*) ;; *) exit 4;; esac; \
    test "$(stat -c '%a %u %g' /run/secrets/tok)" = "400 0 0"; \
    test "$(stat -c '%a %u %g' /etc/app/key)" = "440 12 34"; \
    ! sh -c 'echo x > /run/secrets/tok' 2>/dev/null; \
    echo seen > /secret-ok
RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo skipped > /optional-ok
"#,
        &[],
    );
    let secret_file = b.dir.path().join("tok.txt");
    fs::write(&secret_file, &file_secret).unwrap();
    let src = format!("id=tok,src={}", secret_file.display());
    let cache = b.dir.path().join("layer-cache");
    let cache_repo = format!("oci:{}", cache.display());
    let log = b.ok(
        0,
        &[
            "--secret",
            &src,
            "--secret",
            "id=api,env=MOUNTS_TEST_API_TOKEN",
            "--cache",
            "--cache-repo",
            &cache_repo,
        ],
        &[("MOUNTS_TEST_API_TOKEN", &env_secret)],
    );
    let layout = b.layout(0);
    assert_eq!(
        layout_entry(&layout, "/secret-ok").as_deref(),
        Some("seen\n")
    );
    assert_eq!(
        layout_entry(&layout, "/optional-ok").as_deref(),
        Some("skipped\n")
    );
    absent(
        &layout,
        &[
            "/run/secrets/tok",
            "/run/secrets",
            "/etc/app/key",
            "/etc/app",
        ],
    );
    let needles = [
        ("the file secret", file_secret.as_str()),
        ("the env secret", env_secret.as_str()),
    ];
    for dir in [&layout, &cache] {
        let (found, files) = scan_files(dir, &needles);
        assert!(
            found.is_empty() && files > 2,
            "{}: {found:?}",
            dir.display()
        );
    }
    let found = support::find_in("the log", log.as_bytes(), &needles);
    assert!(found.is_empty(), "{found:?}");
    let config = layout_config(&layout).unwrap().to_string();
    assert!(!config.contains("API_TOKEN="), "{config}");

    // A required secret that is not given fails the build, naming it.
    let b = Build::new(
        "FROM BASE\nRUN --mount=type=secret,id=npm,required true\n",
        &[],
    );
    let (ok, log) = b.run(0, &[], &[]);
    assert!(!ok && log.contains("secret \"npm\" is required"), "{log}");
}

#[test]
fn a_cache_persists_between_builds_and_stays_out_of_layers() {
    if !root() {
        return;
    }
    let b = Build::new(
        r#"FROM BASE
RUN --mount=type=cache,target=/var/cache/kilntest,sharing=locked \
    echo run >> /var/cache/kilntest/log && cp /var/cache/kilntest/log /seen
RUN --mount=type=cache,id=other,target=/opt/c,mode=0700,uid=7 \
    test "$(stat -c '%a %u' /opt/c)" = "700 7" && touch /opt/c/x && echo ok > /other-ok
"#,
        &[],
    );
    b.ok(0, &[], &[]);
    b.ok(1, &[], &[]);
    assert_eq!(
        layout_entry(&b.layout(0), "/seen").as_deref(),
        Some("run\n")
    );
    assert_eq!(
        layout_entry(&b.layout(1), "/seen").as_deref(),
        Some("run\nrun\n")
    );
    for n in [0, 1] {
        let layout = b.layout(n);
        assert_eq!(layout_entry(&layout, "/other-ok").as_deref(), Some("ok\n"));
        absent(
            &layout,
            &[
                "/var/cache/kilntest/log",
                "/var/cache/kilntest",
                "/opt/c/x",
                "/opt/c",
                "/opt",
            ],
        );
    }
}

#[test]
fn tmpfs_is_a_fresh_tmpfs_left_out_of_the_layer() {
    if !root() {
        return;
    }
    let b = Build::new(
        r#"FROM BASE
RUN --mount=type=tmpfs,target=/scratch,size=1m \
    echo x > /scratch/f && grep -q ' /scratch tmpfs .*size=1024k' /proc/mounts && echo ok > /tmpfs-ok
"#,
        &[],
    );
    b.ok(0, &[], &[]);
    let layout = b.layout(0);
    assert_eq!(layout_entry(&layout, "/tmpfs-ok").as_deref(), Some("ok\n"));
    absent(&layout, &["/scratch/f", "/scratch"]);
}

#[test]
fn bind_from_the_context_is_read_only_filtered_and_rw_discards_writes() {
    if !root() {
        return;
    }
    let b = Build::new(
        r#"FROM BASE
WORKDIR /app
RUN --mount=target=ctx \
    cat ctx/data.txt > /got && test ! -e ctx/hidden.txt && \
    ! touch ctx/new 2>/dev/null && echo ok > /ro-ok
RUN --mount=type=bind,source=data.txt,target=/d.txt,rw \
    echo changed > /d.txt && cat /d.txt > /rw-seen
"#,
        &[
            ("data.txt", "from the context\n"),
            ("hidden.txt", "excluded\n"),
            (".dockerignore", "hidden.txt\n"),
        ],
    );
    b.ok(0, &[], &[]);
    let layout = b.layout(0);
    assert_eq!(
        layout_entry(&layout, "/got").as_deref(),
        Some("from the context\n")
    );
    assert_eq!(layout_entry(&layout, "/ro-ok").as_deref(), Some("ok\n"));
    assert_eq!(
        layout_entry(&layout, "/rw-seen").as_deref(),
        Some("changed\n")
    );
    absent(&layout, &["/app/ctx", "/app/ctx/data.txt", "/d.txt"]);
    assert_eq!(
        fs::read_to_string(b.ctx().join("data.txt")).unwrap(),
        "from the context\n"
    );
}

#[test]
fn bind_from_a_stage_reads_its_files_and_rw_discards_writes() {
    if !root() {
        return;
    }
    let b = Build::new(
        r#"FROM BASE AS build
RUN mkdir -p /out && echo built > /out/artifact && echo other > /elsewhere
FROM BASE
RUN --mount=from=build,source=/out,target=/in \
    cat /in/artifact > /got && ! touch /in/x 2>/dev/null && echo ok > /ro-ok
RUN --mount=type=bind,from=build,source=out/artifact,target=/a,rw \
    echo changed > /a && cat /a > /rw-seen
RUN --mount=from=0,target=/whole test -e /whole/out/artifact && echo ok > /index-ok
"#,
        &[],
    );
    b.ok(0, &[], &[]);
    let layout = b.layout(0);
    assert_eq!(layout_entry(&layout, "/got").as_deref(), Some("built\n"));
    assert_eq!(layout_entry(&layout, "/ro-ok").as_deref(), Some("ok\n"));
    assert_eq!(
        layout_entry(&layout, "/rw-seen").as_deref(),
        Some("changed\n")
    );
    assert_eq!(layout_entry(&layout, "/index-ok").as_deref(), Some("ok\n"));
    absent(&layout, &["/in", "/a", "/whole", "/out/artifact"]);
}

/// Build an image over busybox with kiln and push it to `dest`: `/data/file` holding `content`,
/// a file of another owner, and a symlink to `/etc`, where only the image has `kiln-marker`.
fn push_image(dest: &str, content: &str) {
    let b = Build::new(
        &format!(
            r#"FROM BASE
RUN mkdir -p /data && echo {content} > /data/file && echo mine > /data/owned && \
    chown 1234:5678 /data/owned && ln -s /etc /data/etclink && echo image-etc > /etc/kiln-marker
"#
        ),
        &[],
    );
    let ctx = b.ctx();
    let (ok, log) = support::run_executor(
        &[
            "--isolation",
            "chroot",
            "--insecure",
            "--insecure-pull",
            "--context",
            ctx.to_str().unwrap(),
            "--destination",
            dest,
        ],
        &[],
        None,
    );
    assert!(ok, "pushing {dest} failed:\n{log}");
}

/// An image of this test run's own, in a repository no other test uses.
fn test_image(name: &str) -> String {
    format!(
        "{}/kiln-test/mountfrom-{name}-{}:latest",
        registry(),
        std::process::id()
    )
}

#[test]
fn bind_from_an_image_reads_its_files_inside_its_root_and_rw_discards_writes() {
    if !root() {
        return;
    }
    let image = test_image("bind");
    push_image(&image, "v1");
    let b = Build::new(
        &format!(
            r#"FROM BASE
RUN --mount=type=bind,from={image},source=/data,target=/in \
    cat /in/file > /got && ! touch /in/x 2>/dev/null && echo ok > /ro-ok
RUN --mount=type=bind,from={image},source=/data/etclink/kiln-marker,target=/marker \
    cat /marker > /marker-seen
RUN --mount=from={image},source=data,target=/w,rw \
    echo changed > /w/file && touch /w/new && cat /w/file > /rw-seen && \
    stat -c '%u %g' /w/owned > /owner-seen
RUN --mount=from={image},target=/w,rw \
    test ! -e /w/data/new && cat /w/data/file > /after-rw
"#
        ),
        &[],
    );
    b.ok(0, &[], &[]);
    let layout = b.layout(0);
    for (path, want) in [
        (
            "/got", "v1
",
        ),
        (
            "/ro-ok", "ok
",
        ),
        // The image's symlink to /etc is followed inside the image, not on the host.
        (
            "/marker-seen",
            "image-etc
",
        ),
        (
            "/rw-seen", "changed
",
        ),
        (
            "/owner-seen",
            "1234 5678
",
        ),
        (
            "/after-rw",
            "v1
",
        ),
    ] {
        assert_eq!(layout_entry(&layout, path).as_deref(), Some(want), "{path}");
    }
    absent(
        &layout,
        &[
            "/in",
            "/marker",
            "/w",
            "/data",
            "/data/file",
            "/etc/kiln-marker",
        ],
    );
}

/// The key of a step that mounts an image holds the image's manifest digest: the same image is
/// a hit, a re-pushed tag is a miss for the step and the steps after it.
#[test]
fn a_step_mounting_an_image_is_rebuilt_when_the_image_changes() {
    if !root() {
        return;
    }
    let image = test_image("key");
    push_image(&image, "v1");
    let b = Build::new(
        &format!(
            "FROM BASE
RUN --mount=from={image},source=/data,target=/in cat /in/file > /got
RUN cat /got > /after
"
        ),
        &[],
    );
    let cache_repo = format!("oci:{}", b.dir.path().join("layer-cache").display());
    let flags = ["--cache", "--cache-repo", cache_repo.as_str()];
    let count = |log: &str, what: &str| log.matches(what).count();
    let log = b.ok(0, &flags, &[]);
    assert_eq!(count(&log, "(cache miss"), 2, "{log}");
    let log = b.ok(1, &flags, &[]);
    assert_eq!(
        (count(&log, "(cache hit"), count(&log, "(cache miss")),
        (2, 0),
        "{log}"
    );
    assert_eq!(
        layout_entry(&b.layout(1), "/after").as_deref(),
        Some(
            "v1
"
        )
    );
    push_image(&image, "v2");
    let log = b.ok(2, &flags, &[]);
    assert_eq!(
        (count(&log, "(cache hit"), count(&log, "(cache miss")),
        (0, 2),
        "{log}"
    );
    let layout = b.layout(2);
    assert_eq!(
        layout_entry(&layout, "/got").as_deref(),
        Some(
            "v2
"
        )
    );
    assert_eq!(
        layout_entry(&layout, "/after").as_deref(),
        Some(
            "v2
"
        )
    );
}

/// `type=cache,from=`: a new cache starts as a copy of the stage's (or image's) source, an
/// existing one is used as it is, and another or a changed `from` gets another cache.
#[test]
fn a_cache_seeded_from_a_stage_or_an_image() {
    if !root() {
        return;
    }
    let b = Build::new(
        r#"FROM BASE AS seed
ARG SEEDV=1
RUN mkdir -p /seed/sub && echo "seeded $SEEDV" > /seed/sub/file && chown 1234:5678 /seed/sub/file &&     ln -s sub/file /seed/link && chmod 0750 /seed
FROM BASE AS other
RUN mkdir -p /seed && echo other > /seed/other-file
FROM BASE
ARG BUST
RUN --mount=type=cache,target=/c,from=seed,source=/seed,sharing=locked     echo "$BUST" >> /c/runs && cat /c/runs > /seen-runs && cat /c/sub/file > /seen-seed &&     stat -c '%u %g %a' /c/sub/file > /seen-owner && readlink /c/link > /seen-link &&     stat -c '%a' /c > /seen-mode
RUN --mount=type=cache,target=/c,from=other,source=seed ls /c > /seen-other
RUN --mount=type=cache,target=/c,from=BASE,source=/etc,sharing=private     test -f /c/passwd && ls /c > /seen-image
RUN --mount=type=cache,target=/c ls -A /c > /seen-plain
"#,
        &[],
    );
    b.ok(0, &["--build-arg", "BUST=one"], &[]);
    b.ok(1, &["--build-arg", "BUST=two"], &[]);
    b.ok(
        2,
        &["--build-arg", "BUST=three", "--build-arg", "SEEDV=2"],
        &[],
    );
    let seen = |n: usize, path: &str| layout_entry(&b.layout(n), path).unwrap_or_default();
    // Seeded once, then kept: the second build sees what the first added.
    assert_eq!(
        seen(0, "/seen-runs"),
        "one
"
    );
    assert_eq!(
        seen(1, "/seen-runs"),
        "one
two
"
    );
    for n in [0, 1] {
        assert_eq!(
            seen(n, "/seen-seed"),
            "seeded 1
"
        );
        assert_eq!(
            seen(n, "/seen-owner"),
            "1234 5678 644
"
        );
        assert_eq!(
            seen(n, "/seen-link"),
            "sub/file
"
        );
        assert_eq!(
            seen(n, "/seen-mode"),
            "750
"
        );
    }
    // The stage changed: another cache, seeded from it.
    assert_eq!(
        seen(2, "/seen-runs"),
        "three
"
    );
    assert_eq!(
        seen(2, "/seen-seed"),
        "seeded 2
"
    );
    for n in [0, 1, 2] {
        // Same id, other `from`s: caches of their own.
        assert_eq!(
            seen(n, "/seen-other"),
            "other-file
"
        );
        assert!(
            seen(n, "/seen-image").contains(
                "passwd
"
            ),
            "{n}"
        );
        assert_eq!(seen(n, "/seen-plain"), "");
        absent(
            &b.layout(n),
            &["/c", "/c/runs", "/c/sub/file", "/c/passwd", "/seed"],
        );
    }
    // One directory per id and seed: the two seeds of `seed`, `other`, the image, none.
    let dirs = fs::read_dir(b.dir.path().join("mount-cache"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(dirs, 5);
}

/// `--ssh ID=SOCKET`: the step reaches the agent through its own socket at BuildKit's default
/// target, named by SSH_AUTH_SOCK, with the mount's mode. A line-echoing server stands in for
/// the agent; Debian's perl is the client.
#[test]
fn ssh_mounts_forward_to_the_agent_socket() {
    use std::io::{BufRead, BufReader, Write};
    if !root() {
        return;
    }
    let debian = format!("{}/kiln-test/debian:bookworm", registry());
    let b = Build::new(
        &format!(
            r#"FROM {debian}
RUN --mount=type=ssh,id=gh,mode=0666 --mount=type=ssh,id=gh,target=/agent2 \
    test "$SSH_AUTH_SOCK" = /run/buildkit/ssh_agent.0 && test -S /agent2 && \
    test "$(stat -c %a "$SSH_AUTH_SOCK")" = 666 && \
    perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ENV{{SSH_AUTH_SOCK}}) or die "$!"; print $s "ping\n"; print scalar <$s>' > /agent-reply
"#
        ),
        &[],
    );
    let agent_path = b.dir.path().join("agent.sock");
    let agent = std::os::unix::net::UnixListener::bind(&agent_path).unwrap();
    std::thread::spawn(move || {
        for conn in agent.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let _ = BufReader::new(conn.try_clone().unwrap()).read_line(&mut line);
            let _ = conn.write_all(format!("agent got {line}").as_bytes());
        }
    });
    let flag = format!("gh={}", agent_path.display());
    b.ok(0, &["--ssh", &flag], &[]);
    let layout = b.layout(0);
    assert_eq!(
        layout_entry(&layout, "/agent-reply").as_deref(),
        Some("agent got ping\n")
    );
    absent(
        &layout,
        &["/run/buildkit/ssh_agent.0", "/run/buildkit", "/agent2"],
    );
    let env = layout_config(&layout).unwrap()["config"]["Env"].to_string();
    assert!(!env.contains("SSH_AUTH_SOCK"), "{env}");
}

/// `--ssh ID=KEYFILE,KEYFILE`: the step's agent socket is served by Kiln's own agent holding both
/// keys (asked with the agent protocol's REQUEST_IDENTITIES from Debian's perl); the key files'
/// contents reach no layer, the layer cache or the log.
#[test]
fn ssh_key_files_are_served_by_an_agent_of_the_step() {
    if !root() {
        return;
    }
    let debian = format!("{}/kiln-test/debian:bookworm", registry());
    let b = Build::new(
        &format!(
            r#"FROM {debian}
RUN --mount=type=ssh,id=keys \
    perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ENV{{SSH_AUTH_SOCK}}) or die "$!"; print $s pack("NC", 1, 11); read($s, $h, 4) == 4 or die; read($s, $b, unpack("N", $h)); ord($b) == 12 or die "type " . ord($b); print unpack("N", substr($b, 1, 4)), "\n"' > /identities
"#
        ),
        &[],
    );
    let mut keys = Vec::new();
    for (name, kind) in [("ed", "ed25519"), ("ec", "ecdsa")] {
        let path = b.dir.path().join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen (openssh-client) runs");
        assert!(out.status.success(), "{out:?}");
        keys.push(path);
    }
    let flag = format!("keys={},{}", keys[0].display(), keys[1].display());
    let cache = b.dir.path().join("layer-cache");
    let cache_repo = format!("oci:{}", cache.display());
    let log = b.ok(
        0,
        &["--ssh", &flag, "--cache", "--cache-repo", &cache_repo],
        &[],
    );
    let layout = b.layout(0);
    assert_eq!(layout_entry(&layout, "/identities").as_deref(), Some("2\n"));
    absent(&layout, &["/run/buildkit/ssh_agent.0", "/run/buildkit"]);
    // A line of each key's base64 body: what a leak of the file would carry.
    let bodies: Vec<String> = keys
        .iter()
        .map(|k| {
            fs::read_to_string(k)
                .unwrap()
                .lines()
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect();
    let needles: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| ("a private key", b.as_str()))
        .collect();
    for dir in [&layout, &cache] {
        let (found, _) = scan_files(dir, &needles);
        assert!(found.is_empty(), "{}: {found:?}", dir.display());
    }
    assert!(support::find_in("the log", log.as_bytes(), &needles).is_empty());
    let env = layout_config(&layout).unwrap()["config"]["Env"].to_string();
    assert!(!env.contains("SSH_AUTH_SOCK"), "{env}");
}

#[test]
fn unsupported_mounts_fail_the_build_naming_them() {
    if !root() {
        return;
    }
    for (mount, why) in [
        (
            "type=ssh,required",
            "ssh agent \"default\" is required but not given",
        ),
        (
            "type=bind,from=$STAGE,target=/b",
            "variables are not expanded in it",
        ),
        (
            "type=cache,target=/c,from=build,source=/bin/busybox",
            "a cache is a directory",
        ),
    ] {
        let b = Build::new(
            &format!("FROM BASE AS build\nRUN true\nFROM BASE\nRUN --mount={mount} true\n"),
            &[],
        );
        let (ok, log) = b.run(0, &[], &[]);
        assert!(!ok && log.contains(why), "{mount}: {log}");
    }
}

/// In place, as in a Pod with `hostUsers: false` and `SYS_ADMIN` (each step in private
/// namespaces): the same mounts, made in the step's namespace only, with the secret's default
/// target inside a covered directory and the sources in Kiln's covered directory. The debug
/// executor runs in podman over the Debian test image (the binary needs its glibc).
#[test]
fn in_place_steps_with_private_namespaces_get_their_mounts() {
    use std::os::unix::fs::PermissionsExt;
    if !kiln_testkit::require_tools(&["podman"]) || !root() {
        return;
    }
    let nonce = std::process::id();
    let secret = format!("inplace-secret-{nonce}-Kx2");
    let debian = format!("{}/kiln-test/debian:bookworm", registry());
    let busybox = format!("{}/kiln-test/busybox:latest", registry());
    let b = Build::new(
        &format!(
            r#"FROM {debian}
RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOK \
    --mount=type=cache,target=/var/cache/kt --mount=type=tmpfs,target=/scratch \
    --mount=target=/ctx --mount=type=bind,from={busybox},source=/bin,target=/bb \
    --mount=type=cache,target=/seeded,from={busybox},source=/etc \
    set -e; case "$(cat /run/secrets/tok)" in inplace-secret-*) ;; *) exit 3;; esac; \
    case "$TOK" in inplace-secret-*) ;; *) exit 4;; esac; \
    echo run >> /var/cache/kt/log; cp /var/cache/kt/log /seen; \
    echo x > /scratch/f; grep -q ' /scratch tmpfs' /proc/mounts; \
    test -x /bb/busybox; test -f /seeded/passwd; echo x > /seeded/added; \
    cat /ctx/data.txt > /got; test ! -e /kiln/build; echo ok > /inplace-ok
"#
        ),
        &[("data.txt", "in place\n")],
    );
    let secrets = b.dir.path().join("secrets");
    let out = b.dir.path().join("out");
    fs::create_dir_all(&secrets).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(secrets.join("tok"), &secret).unwrap();
    // The container's root is an unprivileged host uid: everything it reads must be readable.
    for (path, mode) in [
        (b.dir.path().to_path_buf(), 0o755),
        (b.ctx(), 0o755),
        (secrets.clone(), 0o755),
        (secrets.join("tok"), 0o644),
        (out.clone(), 0o777),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let vol = |src: &Path, dst: &str, mode: &str| format!("{}:{dst}:{mode}", src.display());
    let run = kiln_testkit::run_bounded(
        kiln_testkit::podman_run_command()
            .args(["--uidmap", "0:300000:65536", "--gidmap", "0:300000:65536"])
            .args(["--cap-add", "SYS_ADMIN", "-e", "KILN_CONTAINER=1"])
            .args([
                "-v",
                &vol(
                    Path::new(env!("CARGO_BIN_EXE_kiln-executor")),
                    "/kiln/executor",
                    "ro",
                ),
            ])
            .args(["-v", &vol(&b.ctx(), "/workspace", "ro")])
            .args(["-v", &vol(&secrets, "/secrets", "ro")])
            .args(["-v", &vol(&out, "/out", "rw")])
            // As the executor image has them (Debian's minimal root has no CA bundle).
            .args([
                "-v",
                "/etc/ssl/certs/ca-certificates.crt:/kiln/ssl/certs/ca-certificates.crt:ro",
            ])
            .args(["-e", "SSL_CERT_FILE=/kiln/ssl/certs/ca-certificates.crt"])
            .arg(&debian)
            .args(["/kiln/executor", "--context", "dir:///workspace"])
            .args(["--dockerfile", "/workspace/Dockerfile", "--no-push"])
            .args(["--insecure-pull", "--oci-layout-path", "/out/layout"])
            .args(["--secret", "id=tok,src=/secrets/tok"]),
        std::time::Duration::from_secs(600),
    )
    .expect("podman run");
    let log = format!("{}{}", run.stdout, run.stderr);
    let _ = kiln_testkit::run_bounded(
        kiln_testkit::podman().args(["rmi", "-f", "--ignore", &debian]),
        std::time::Duration::from_secs(60),
    );
    assert!(run.success(), "the in-place build failed:\n{log}");
    assert!(
        log.contains("cleared /") && log.contains("private"),
        "not in place with private namespaces:\n{log}"
    );
    let layout = out.join("layout");
    assert_eq!(
        layout_entry(&layout, "/inplace-ok").as_deref(),
        Some("ok\n")
    );
    assert_eq!(layout_entry(&layout, "/seen").as_deref(), Some("run\n"));
    assert_eq!(layout_entry(&layout, "/got").as_deref(), Some("in place\n"));
    absent(
        &layout,
        &[
            "/run/secrets/tok",
            "/var/cache/kt",
            "/scratch",
            "/ctx",
            "/kiln",
            "/bb",
            "/seeded",
        ],
    );
    let needles = [("the secret", secret.as_str())];
    let (found, _) = scan_files(&layout, &needles);
    assert!(found.is_empty(), "{found:?}");
    assert!(support::find_in("the log", log.as_bytes(), &needles).is_empty());
}
