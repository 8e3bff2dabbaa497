//! Registry access (pull, push, auth) and OCI image layouts. Shared with kiln-warmer.
