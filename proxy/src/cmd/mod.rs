//! Subcommand implementations.

pub(crate) mod offline;
