//! Runs `RUN` commands: in a chroot with private mount and PID namespaces, or in place inside a container.
