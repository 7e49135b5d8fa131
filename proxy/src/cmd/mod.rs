//! Subcommand implementations.

pub(crate) mod lab;
pub(crate) mod node;
pub(crate) mod offline;
pub(crate) mod run;
