//! Subcommand implementations.

pub(crate) mod offline;
pub(crate) mod run;
