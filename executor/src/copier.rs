//! Copies files into the build root with COPY/ADD semantics. (being written)
