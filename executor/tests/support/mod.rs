//! Shared helpers for kiln's integration tests: comparing file trees and image configs and the
//! differential corpus, plus the test kit's registry, bounded-command and image-tool helpers
//! (`kiln_testkit`) under the names these tests use. It must not build images itself beyond
//! driving the reference builder, and it must never talk to a registry other than the local
//! test one.
#![allow(dead_code)] // Each test binary uses a different subset of these helpers.

mod build_dir;
mod contexts;
mod diff;
mod executor_image;
mod history;
mod layout;
mod scan;
// Only the differential and container-mode tests compare trees; the other test binaries import none.
#[allow(unused_imports)]
pub use build_dir::*;
#[allow(unused_imports)]
pub use contexts::*;
#[allow(unused_imports)]
pub use diff::*;
#[allow(unused_imports)]
pub use executor_image::*;
#[allow(unused_imports)]
pub use history::*;
#[allow(unused_imports)]
pub use layout::*;
#[allow(unused_imports)]
pub use scan::*;

use kiln_testkit::repo_root;
// The differential test's registry, command and image-tool helpers live in the shared test kit;
// re-exported so it keeps naming them `support::…` (the other users of this module name the kit
// directly, hence the allow).
#[allow(unused_imports)]
pub use kiln_testkit::{
    fetch_rootfs, image_config, podman_check, registry, run_bounded, run_ok, skopeo_fetch,
    BUILDAH_FLAGS,
};
