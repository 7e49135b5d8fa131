//! Thin safe wrappers over the few syscalls the standard crates lack.
