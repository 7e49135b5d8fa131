//! Subcommand implementations.

pub(crate) mod lab;
pub(crate) mod offline;
pub(crate) mod run;
