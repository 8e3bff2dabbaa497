//! `RUN --network=` and `RUN --security=` end to end, with the `--allow` entitlements: real builds
//! by the `kiln-executor` binary (chroot isolation) over the test registry's busybox. A listener
//! this test opens on 127.0.0.1 (the test's own network namespace) tells whether a step shares
//! the executor's network; `/proc/self/status` tells which capabilities a step holds. Uses only
//! temporary directories, loopback and the local test registry.

mod support;

use kiln_testkit::require_root;
use support::{layout_entry, reached_listener, Build};

/// Docker's default capability set, what a sandboxed root step holds (`CapEff`).
const SANDBOX_CAPS: &str = "00000000a80425fb";

/// `CAP_SYS_ADMIN`, which only an insecure step keeps.
const CAP_SYS_ADMIN: u32 = 21;

fn root() -> bool {
    require_root("RUN steps in chroot isolation need root")
}

/// A step that writes `reached` or `unreachable` to `/net`, with `flag` on its RUN (busybox's
/// `nc`: its static `wget` cannot run on every machine these tests run on).
fn probe_dockerfile(flag: &str, port: u16) -> String {
    format!(
        "FROM BASE\nRUN {flag} if nc -w 5 127.0.0.1 {port} </dev/null > /net && grep -q reached \
         /net; then :; else echo unreachable > /net; fi\n"
    )
}

fn net_of(flag: &str, port: u16, extra: &[&str]) -> Result<String, String> {
    let b = Build::new(&probe_dockerfile(flag, port), &[]);
    let (ok, log) = b.run(0, extra, &[]);
    if !ok {
        return Err(log);
    }
    Ok(layout_entry(&b.layout(0), "/net").unwrap_or_default())
}

#[test]
fn network_none_is_loopback_only_and_default_is_the_executors() {
    if !root() {
        return;
    }
    let port = reached_listener();
    // `none`: a network namespace of the step's own, whose lo is not the test's.
    assert_eq!(
        net_of("--network=none", port, &[]).unwrap(),
        "unreachable\n"
    );
    for flag in ["", "--network=default"] {
        assert_eq!(net_of(flag, port, &[]).unwrap(), "reached\n", "RUN {flag}");
    }
}

#[test]
fn network_host_needs_the_entitlement() {
    if !root() {
        return;
    }
    let port = reached_listener();
    let log = net_of("--network=host", port, &[]).unwrap_err();
    assert!(
        log.contains("RUN --network=host") && log.contains("--allow network.host"),
        "the refusal does not name the option and the flag:\n{log}"
    );
    let allowed = net_of("--network=host", port, &["--allow", "network.host"]).unwrap();
    assert_eq!(allowed, "reached\n");
    // A comma-separated list, as buildx takes it; and an unknown entitlement is refused.
    let list = ["--allow", "security.insecure,network.host"];
    assert_eq!(net_of("--network=host", port, &list).unwrap(), "reached\n");
    let log = net_of("", port, &["--allow", "network.bridge"]).unwrap_err();
    assert!(log.contains("--allow network.bridge"), "{log}");
}

/// The `CapEff` line of a root step with `flag`, or the build's log if it failed.
fn caps_of(flag: &str, extra: &[&str]) -> Result<String, String> {
    let b = Build::new(
        &format!(
            "FROM BASE\nRUN {flag} sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status > /caps\n"
        ),
        &[],
    );
    let (ok, log) = b.run(0, extra, &[]);
    if !ok {
        return Err(log);
    }
    Ok(layout_entry(&b.layout(0), "/caps")
        .unwrap_or_default()
        .trim()
        .to_string())
}

#[test]
fn security_insecure_needs_the_entitlement_and_lifts_the_capability_limit() {
    if !root() {
        return;
    }
    assert_eq!(caps_of("", &[]).unwrap(), SANDBOX_CAPS);
    assert_eq!(caps_of("--security=sandbox", &[]).unwrap(), SANDBOX_CAPS);
    let log = caps_of("--security=insecure", &[]).unwrap_err();
    assert!(
        log.contains("RUN --security=insecure") && log.contains("--allow security.insecure"),
        "the refusal does not name the option and the flag:\n{log}"
    );
    let insecure = caps_of("--security=insecure", &["--allow", "security.insecure"]).unwrap();
    let mask = u64::from_str_radix(&insecure, 16).expect("CapEff is hex");
    assert!(
        mask & (1 << CAP_SYS_ADMIN) != 0 && mask & !0xa804_25fb != 0,
        "an insecure step holds only {insecure}"
    );
    // The entitlement alone changes nothing for a step that does not ask for it.
    assert_eq!(
        caps_of("", &["--allow", "security.insecure"]).unwrap(),
        SANDBOX_CAPS
    );
}

#[test]
fn an_insecure_step_is_not_under_the_seccomp_filter() {
    if !root() {
        return;
    }
    // The sandbox's filter refuses unshare(2) whatever the capabilities; an insecure step may.
    let b = Build::new(
        "FROM BASE\nRUN --security=insecure unshare -m true && echo unshared > /seccomp\n\
         RUN if unshare -m true 2>/dev/null; then echo unshared; else echo refused; fi > /sandboxed\n",
        &[],
    );
    b.ok(0, &["--allow", "security.insecure"], &[]);
    assert_eq!(
        layout_entry(&b.layout(0), "/seccomp").as_deref(),
        Some("unshared\n")
    );
    assert_eq!(
        layout_entry(&b.layout(0), "/sandboxed").as_deref(),
        Some("refused\n")
    );
}
