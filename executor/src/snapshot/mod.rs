//! Filesystem snapshots: detect what a step changed under the build root and write exactly that as a layer.
