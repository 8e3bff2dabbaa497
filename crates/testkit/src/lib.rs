//! Kiln's test kit (dev-only): one copy of what the integration tests of the executor, the
//! warmer and the end-to-end suite share — a real test registry, a fault proxy, bounded external
//! commands, the independent image tools, small image builders, kaniko's flag list and the
//! README's table of them, and the policy for a test that cannot run here (fail under
//! `CI=true`, skip loudly elsewhere) or that selects no case. It must never be a dependency of a
//! shipped binary, and never talk to a registry that is not local.

pub mod cmd;
pub mod credhelper;
pub mod git_http;
mod git_ssh;
pub mod image;
pub mod kaniko;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod select;
pub mod tls;
pub mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cmd::{
    free_port, run, run_bounded, run_bounded_with_input, run_ok, tail, wait_for_addr,
    wait_for_port, CmdError, KillOnDrop, Output, TOOL_TIMEOUT,
};
pub use credhelper::{HelperBehaviour, TestCredentialHelper};
pub use git_http::GitHttpServer;
pub use git_ssh::{ssh_keygen, GitSshServer};
pub use image::{Layer, TestImage};
pub use policy::{ci, find_tool, require_root, require_tool, require_tools, skip_or_fail, tool};
pub use proxy::{rule, Fault, FaultProxy, Gate, Rule, Seen, ENDLESS_LIMIT};
pub use registry::{RegistryTls, TestRegistry};
pub use select::{require_cases, select_from_env, CaseArgs};
pub use tls::{TestCa, Usage};
pub use tools::{
    fetch_rootfs, htpasswd_line, image_config, podman, podman_check, podman_flags, podman_run,
    podman_run_command, registry_digest, registry_image_size, self_signed_cert, skopeo_delete,
    skopeo_fetch, skopeo_push_layout, umoci_unpack, BUILDAH_FLAGS, PODMAN_FLAGS,
};

/// The shared local test registry (`host:port`) with the base images, from `KILN_TEST_REGISTRY`.
///
/// Panics with instructions when it is not set: a test that needs the registry must fail loudly,
/// never pass silently, when run outside `scripts/test.sh`.
pub fn registry() -> String {
    match std::env::var("KILN_TEST_REGISTRY") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => panic!(
            "KILN_TEST_REGISTRY is not set: this test needs the local registry and base images. \
             Run `bash scripts/test.sh` (it installs the tools, starts the registry and exports \
             KILN_TEST_REGISTRY), or start them by hand: `bash scripts/registry.sh start && \
             bash scripts/base-images.sh && export KILN_TEST_REGISTRY=127.0.0.1:5000`"
        ),
    }
}

/// The repository root (the workspace), for `testdata/` and `scripts/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the test kit lives two levels below the workspace root")
        .to_path_buf()
}

/// A tokio runtime for tests that drive kiln's async registry client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How long one registry operation of a test may take: generous for a loaded machine, but a
/// hang fails the test instead of stalling the suite.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `f` on a fresh [`runtime`] and fails the test if it takes more than
/// [`OPERATION_TIMEOUT`].
pub fn bounded<T>(f: impl Future<Output = T>) -> T {
    runtime().block_on(async {
        tokio::time::timeout(OPERATION_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "operation did not finish within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn repo_root_is_the_workspace() {
        assert!(super::repo_root().join("Cargo.lock").is_file());
    }
}
