//! Shell-like word expansion for Dockerfile values. (being written)
