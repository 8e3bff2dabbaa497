//! The option rule: every flag the Dockerfile parser accepts, and every key of a `RUN --mount=`
//! value, either changes the build's result or fails the build with a message naming it; none is
//! parsed and then ignored. The flags come from the parser's own tables
//! (`kiln_dockerfile::instruction_flags`, `kiln_dockerfile::mount_keys`); each needs a sample
//! here, so a new option cannot be added without one. A sample is a tiny Dockerfile using the
//! option with a meaningful value and the same Dockerfile without it, both built by the real
//! `kiln-executor` binary (chroot isolation, `--reproducible`) into OCI layouts over the test
//! registry's busybox. The result compared is the image config without `history` and `created`
//! (the instruction text in the history would tell any two Dockerfiles apart): layer diff IDs,
//! environment, healthcheck, platform. Uses only temporary directories, loopback servers of its
//! own and the local test registry.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;

use kiln_testkit::require_root;
use support::{layout_config, reached_listener, Build};

/// What a sample must show.
#[derive(Clone, Copy)]
enum Expect {
    /// The result with the option differs from the result without it; a failure with the option
    /// counts only when its message names the option.
    Changes,
    /// The build with the option fails with a message naming it (an option Kiln refuses).
    FailsNaming,
    /// By design the option leaves the result as it is (`why` says why): the build with it must
    /// succeed and give the same result, and the Dockerfile `bad`, with a value the option does
    /// not take, must fail naming it (so the option is read, not skipped).
    Same {
        why: &'static str,
        bad: &'static str,
    },
}

/// One option: `instruction` is the keyword (`RUN --mount` for a mount key), `flag` the name.
/// In the Dockerfiles, `BASE` is the test registry's busybox, `PORT` a loopback TCP listener
/// that answers `reached`, `HTTP` a loopback HTTP server serving `payload`.
struct Sample {
    instruction: &'static str,
    flag: &'static str,
    with: &'static str,
    without: &'static str,
    extra: &'static [&'static str],
    expect: Expect,
}

const fn sample(
    instruction: &'static str,
    flag: &'static str,
    with: &'static str,
    without: &'static str,
) -> Sample {
    Sample {
        instruction,
        flag,
        with,
        without,
        extra: &[],
        expect: Expect::Changes,
    }
}

/// A mount key's sample: `RUN --mount=<with> <run>` against `RUN --mount=<without> <run>`.
const fn mount(key: &'static str, with: &'static str, without: &'static str) -> Sample {
    sample("RUN --mount", key, with, without)
}

const SAMPLES: &[Sample] = &[
    // From the test registry's amd64 + arm64 busybox index: the arm64 image, its RUN under
    // emulation (uname says aarch64).
    sample(
        "FROM",
        "platform",
        "FROM --platform=linux/arm64 BASE_MULTIPLATFORM\nRUN uname -m > /out\n",
        "FROM BASE_MULTIPLATFORM\nRUN uname -m > /out\n",
    ),
    sample(
        "RUN",
        "mount",
        "FROM BASE\nRUN --mount=type=tmpfs,target=/m mkdir -p /m && echo x > /m/f\n",
        "FROM BASE\nRUN mkdir -p /m && echo x > /m/f\n",
    ),
    sample(
        "RUN",
        "network",
        "FROM BASE\nRUN --network=none if nc -w 5 127.0.0.1 PORT </dev/null >/dev/null; then echo up; else echo down; fi > /net\n",
        "FROM BASE\nRUN if nc -w 5 127.0.0.1 PORT </dev/null >/dev/null; then echo up; else echo down; fi > /net\n",
    ),
    Sample {
        extra: &["--allow", "security.insecure"],
        ..sample(
            "RUN",
            "security",
            "FROM BASE\nRUN --security=insecure grep CapEff /proc/self/status > /caps\n",
            "FROM BASE\nRUN grep CapEff /proc/self/status > /caps\n",
        )
    },
    sample(
        "COPY",
        "from",
        "FROM BASE AS a\nRUN echo stage > /f\nFROM BASE\nCOPY --from=a /f /f\n",
        "FROM BASE AS a\nRUN echo stage > /f\nFROM BASE\nCOPY /f /f\n",
    ),
    sample("COPY", "chown", "FROM BASE\nCOPY --chown=12:34 f /f\n", "FROM BASE\nCOPY f /f\n"),
    sample("COPY", "chmod", "FROM BASE\nCOPY --chmod=0700 f /f\n", "FROM BASE\nCOPY f /f\n"),
    Sample {
        expect: Expect::Same {
            why: "--link only changes how BuildKit stacks the layer (on no parent), not its content",
            bad: "FROM BASE\nCOPY --link=maybe f /f\n",
        },
        ..sample("COPY", "link", "FROM BASE\nCOPY --link f /f\n", "FROM BASE\nCOPY f /f\n")
    },
    sample(
        "COPY",
        "exclude",
        "FROM BASE\nCOPY --exclude=b* . /d/\n",
        "FROM BASE\nCOPY . /d/\n",
    ),
    sample(
        "COPY",
        "parents",
        "FROM BASE\nCOPY --parents x/y/f /d/\n",
        "FROM BASE\nCOPY x/y/f /d/\n",
    ),
    sample("ADD", "chown", "FROM BASE\nADD --chown=12:34 f /f\n", "FROM BASE\nADD f /f\n"),
    sample("ADD", "chmod", "FROM BASE\nADD --chmod=0700 f /f\n", "FROM BASE\nADD f /f\n"),
    Sample {
        expect: Expect::Same {
            why: "--link only changes how BuildKit stacks the layer (on no parent), not its content",
            bad: "FROM BASE\nADD --link=maybe f /f\n",
        },
        ..sample("ADD", "link", "FROM BASE\nADD --link f /f\n", "FROM BASE\nADD f /f\n")
    },
    sample(
        "ADD",
        "exclude",
        "FROM BASE\nADD --exclude=b* . /d/\n",
        "FROM BASE\nADD . /d/\n",
    ),
    // A checksum that does not match: the download must be refused naming the option.
    sample(
        "ADD",
        "checksum",
        "FROM BASE\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/payload /p\n",
        "FROM BASE\nADD HTTP/payload /p\n",
    ),
    Sample {
        expect: Expect::FailsNaming,
        ..sample(
            "ADD",
            "keep-git-dir",
            "FROM BASE\nADD --keep-git-dir f /f\n",
            "FROM BASE\nADD f /f\n",
        )
    },
    sample(
        "HEALTHCHECK",
        "interval",
        "FROM BASE\nHEALTHCHECK --interval=7s CMD true\n",
        "FROM BASE\nHEALTHCHECK CMD true\n",
    ),
    sample(
        "HEALTHCHECK",
        "timeout",
        "FROM BASE\nHEALTHCHECK --timeout=7s CMD true\n",
        "FROM BASE\nHEALTHCHECK CMD true\n",
    ),
    sample(
        "HEALTHCHECK",
        "start-period",
        "FROM BASE\nHEALTHCHECK --start-period=7s CMD true\n",
        "FROM BASE\nHEALTHCHECK CMD true\n",
    ),
    sample(
        "HEALTHCHECK",
        "start-interval",
        "FROM BASE\nHEALTHCHECK --start-interval=7s CMD true\n",
        "FROM BASE\nHEALTHCHECK CMD true\n",
    ),
    sample(
        "HEALTHCHECK",
        "retries",
        "FROM BASE\nHEALTHCHECK --retries=7 CMD true\n",
        "FROM BASE\nHEALTHCHECK CMD true\n",
    ),
    // RUN --mount keys. Without `type` a mount is a read-only bind of the context.
    mount(
        "type",
        "FROM BASE\nRUN --mount=type=tmpfs,target=/m (echo x > /m/f && echo written || echo refused) > /out\n",
        "FROM BASE\nRUN --mount=target=/m (echo x > /m/f && echo written || echo refused) > /out\n",
    ),
    mount(
        "from",
        "FROM BASE AS a\nRUN echo stage > /f\nFROM BASE\nRUN --mount=type=bind,from=a,source=/f,target=/m cat /m > /out\n",
        "FROM BASE AS a\nRUN echo stage > /f\nFROM BASE\nRUN --mount=type=bind,source=/f,target=/m cat /m > /out\n",
    ),
    mount(
        "source",
        "FROM BASE\nRUN --mount=type=bind,source=sub,target=/m ls /m > /out\n",
        "FROM BASE\nRUN --mount=type=bind,target=/m ls /m > /out\n",
    ),
    mount(
        "src",
        "FROM BASE\nRUN --mount=type=bind,src=sub,target=/m ls /m > /out\n",
        "FROM BASE\nRUN --mount=type=bind,target=/m ls /m > /out\n",
    ),
    mount(
        "target",
        "FROM BASE\nRUN --mount=type=secret,id=tok,target=/s (cat /s || echo none) > /out\n",
        "FROM BASE\nRUN --mount=type=secret,id=tok (cat /s || echo none) > /out\n",
    ),
    mount(
        "dst",
        "FROM BASE\nRUN --mount=type=secret,id=tok,dst=/s (cat /s || echo none) > /out\n",
        "FROM BASE\nRUN --mount=type=secret,id=tok (cat /s || echo none) > /out\n",
    ),
    mount(
        "destination",
        "FROM BASE\nRUN --mount=type=secret,id=tok,destination=/s (cat /s || echo none) > /out\n",
        "FROM BASE\nRUN --mount=type=secret,id=tok (cat /s || echo none) > /out\n",
    ),
    mount(
        "readonly",
        "FROM BASE\nRUN --mount=type=cache,target=/c,readonly (echo x > /c/f && echo written || echo refused) > /out\n",
        "FROM BASE\nRUN --mount=type=cache,target=/c (echo x > /c/f && echo written || echo refused) > /out\n",
    ),
    mount(
        "ro",
        "FROM BASE\nRUN --mount=type=cache,target=/c,ro (echo x > /c/f && echo written || echo refused) > /out\n",
        "FROM BASE\nRUN --mount=type=cache,target=/c (echo x > /c/f && echo written || echo refused) > /out\n",
    ),
    mount(
        "readwrite",
        "FROM BASE\nRUN --mount=type=bind,target=/m,readwrite (echo x > /m/new && echo written || echo refused) > /out\n",
        "FROM BASE\nRUN --mount=type=bind,target=/m (echo x > /m/new && echo written || echo refused) > /out\n",
    ),
    mount(
        "rw",
        "FROM BASE\nRUN --mount=type=bind,target=/m,rw (echo x > /m/new && echo written || echo refused) > /out\n",
        "FROM BASE\nRUN --mount=type=bind,target=/m (echo x > /m/new && echo written || echo refused) > /out\n",
    ),
    // A secret that was not given fails a required mount, naming it.
    mount(
        "required",
        "FROM BASE\nRUN --mount=type=secret,id=absent,required (cat /run/secrets/absent || echo none) > /out\n",
        "FROM BASE\nRUN --mount=type=secret,id=absent (cat /run/secrets/absent || echo none) > /out\n",
    ),
    mount(
        "id",
        "FROM BASE\nRUN --mount=type=secret,id=tok,target=/s (cat /s || echo none) > /out\n",
        "FROM BASE\nRUN --mount=type=secret,target=/s (cat /s || echo none) > /out\n",
    ),
    Sample {
        expect: Expect::Same {
            why: "sharing= decides what a step gets while another step holds the same cache; the \
                  steps of one build run one at a time (the unit test \
                  run_mounts::tests::cache_locking_follows_sharing checks locked and private)",
            bad: "FROM BASE\nRUN --mount=type=cache,target=/c,sharing=sometimes true\n",
        },
        ..mount(
            "sharing",
            "FROM BASE\nRUN --mount=type=cache,target=/c,sharing=private echo x > /c/f\n",
            "FROM BASE\nRUN --mount=type=cache,target=/c echo x > /c/f\n",
        )
    },
    mount(
        "mode",
        "FROM BASE\nRUN --mount=type=cache,target=/c,mode=0700 stat -c %a /c > /out\n",
        "FROM BASE\nRUN --mount=type=cache,target=/c stat -c %a /c > /out\n",
    ),
    mount(
        "uid",
        "FROM BASE\nRUN --mount=type=cache,target=/c,uid=12 stat -c %u /c > /out\n",
        "FROM BASE\nRUN --mount=type=cache,target=/c stat -c %u /c > /out\n",
    ),
    mount(
        "gid",
        "FROM BASE\nRUN --mount=type=cache,target=/c,gid=34 stat -c %g /c > /out\n",
        "FROM BASE\nRUN --mount=type=cache,target=/c stat -c %g /c > /out\n",
    ),
    mount(
        "size",
        "FROM BASE\nRUN --mount=type=tmpfs,target=/m,size=1m df -k /m | tail -n 1 | awk '{print $2}' > /out\n",
        "FROM BASE\nRUN --mount=type=tmpfs,target=/m df -k /m | tail -n 1 | awk '{print $2}' > /out\n",
    ),
    mount(
        "env",
        "FROM BASE\nRUN --mount=type=secret,id=tok,env=TOK echo \"${TOK:-none}\" > /out\n",
        "FROM BASE\nRUN --mount=type=secret,id=tok echo \"${TOK:-none}\" > /out\n",
    ),
];

/// Context files every sample may use.
const FILES: &[(&str, &str)] = &[
    ("f", "context\n"),
    ("a", "a\n"),
    ("b", "b\n"),
    ("x/y/f", "deep\n"),
    ("sub/s", "s\n"),
];

/// A loopback HTTP server answering `payload` to every request; its base URL.
fn http_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\npayload\n",
            );
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Where the samples' builds run: the servers and the secret file they share.
struct Bench {
    port: u16,
    http: String,
    secret: tempfile::NamedTempFile,
}

impl Bench {
    fn new() -> Bench {
        let mut secret = tempfile::NamedTempFile::new().unwrap();
        secret.write_all(b"secret-value\n").unwrap();
        Bench {
            port: reached_listener(),
            http: http_server(),
            secret,
        }
    }

    /// The result of building `dockerfile`: the image config without history and creation time,
    /// or the build's log when it failed.
    fn build(&self, dockerfile: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
        let text = dockerfile
            .replace("PORT", &self.port.to_string())
            .replace("HTTP", &self.http);
        let b = Build::new(&text, FILES);
        let secret = format!("id=tok,src={}", self.secret.path().display());
        let mut args = vec!["--reproducible", "--secret", &secret];
        args.extend_from_slice(extra);
        let (ok, log) = b.run(0, &args, &[]);
        if !ok {
            return Err(log);
        }
        let mut config = layout_config(&b.layout(0)).ok_or_else(|| format!("no image:\n{log}"))?;
        let object = config.as_object_mut().unwrap();
        object.remove("history");
        object.remove("created");
        Ok(config)
    }
}

/// Whether `log` names `name` as a word of its own (a mount key such as `ro` is in many words).
fn names(log: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    log.match_indices(name).any(|(i, _)| {
        let before = log[..i].chars().next_back();
        let after = log[i + name.len()..].chars().next();
        !before.is_some_and(|c| word(c) && !name.starts_with('-')) && !after.is_some_and(word)
    })
}

/// How `s` keeps the rule, or why it breaks it.
fn check(bench: &Bench, s: &Sample) -> Result<&'static str, String> {
    let name = if s.instruction == "RUN --mount" {
        s.flag.to_string()
    } else {
        format!("--{}", s.flag)
    };
    let with = bench.build(s.with, s.extra);
    let without = bench.build(s.without, s.extra);
    match (s.expect, &with, &without) {
        (Expect::Changes | Expect::FailsNaming, Err(log), _) => {
            if names(log, &name) {
                Ok("fails naming it")
            } else {
                Err(format!("the build failed without naming {name}:\n{log}"))
            }
        }
        (Expect::FailsNaming, Ok(_), _) => {
            Err("the build succeeded; it must fail naming the option".into())
        }
        (Expect::Changes, Ok(_), Err(_)) => Ok("the build fails without it"),
        (Expect::Changes, Ok(a), Ok(b)) if a != b => Ok("changes the image"),
        (Expect::Changes, Ok(a), Ok(_)) => Err(format!(
            "the option was accepted and changed nothing: same result with and without it\n{a:#}"
        )),
        (Expect::Same { bad, .. }, Ok(a), Ok(b)) if a == b => match bench.build(bad, s.extra) {
            Err(log) if names(&log, &name) => {
                Ok("same image by design; a bad value fails naming it")
            }
            Err(log) => Err(format!("a bad value failed without naming {name}:\n{log}")),
            Ok(_) => Err(format!("a bad value of {name} was accepted")),
        },
        (Expect::Same { why, .. }, with, without) => Err(format!(
            "by design ({why}) the result must be the same with and without it:\nwith: \
             {with:?}\nwithout: {without:?}"
        )),
    }
}

#[test]
fn every_parser_option_changes_the_result_or_fails_naming_it() {
    if !require_root("the samples build with RUN steps in chroot isolation, which needs root") {
        return;
    }
    let table: BTreeSet<(String, String)> = kiln_dockerfile::instruction_flags()
        .map(|(instruction, flag, _)| (instruction.to_string(), flag.to_string()))
        .chain(
            kiln_dockerfile::mount_keys()
                .iter()
                .map(|key| ("RUN --mount".to_string(), key.to_string())),
        )
        .collect();
    let sampled: BTreeSet<(String, String)> = SAMPLES
        .iter()
        .map(|s| (s.instruction.to_string(), s.flag.to_string()))
        .collect();
    assert_eq!(sampled.len(), SAMPLES.len(), "an option has two samples");
    let missing: Vec<_> = table.difference(&sampled).collect();
    assert!(
        missing.is_empty(),
        "options the parser accepts without a sample here (add one to SAMPLES): {missing:?}"
    );
    let stale: Vec<_> = sampled.difference(&table).collect();
    assert!(
        stale.is_empty(),
        "samples of options the parser no longer has: {stale:?}"
    );

    let bench = Bench::new();
    // The comparison means something only if equal Dockerfiles give equal results.
    let control = "FROM BASE\nRUN echo x > /out\nCOPY f /f\n";
    assert_eq!(
        bench.build(control, &[]).unwrap(),
        bench.build(control, &[]).unwrap(),
        "two builds of one Dockerfile differ: the comparison cannot tell options apart"
    );
    let broken: Vec<String> = SAMPLES
        .iter()
        .filter_map(|s| {
            let outcome = check(&bench, s);
            eprintln!("{} {}: {outcome:?}", s.instruction, s.flag);
            outcome
                .err()
                .map(|why| format!("{} {}: {why}", s.instruction, s.flag))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "options that break the rule:\n{}",
        broken.join("\n\n")
    );
}

#[test]
fn run_security_is_refused_naming_the_flag_without_its_entitlement() {
    if !require_root("the sample builds in chroot isolation, which needs root") {
        return;
    }
    let bench = Bench::new();
    let log = bench
        .build("FROM BASE\nRUN --security=insecure true\n", &[])
        .unwrap_err();
    assert!(
        log.contains("--security=insecure") && log.contains("--allow security.insecure"),
        "{log}"
    );
}
