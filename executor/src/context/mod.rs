//! Build contexts (directory, tarball) and `.dockerignore`. Never modifies the context.
