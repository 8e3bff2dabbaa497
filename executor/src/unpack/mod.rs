//! Unpacks layer tarballs into the build root. Hostile-input territory: no entry may write outside the root.
