//! Subcommand implementations.

pub(crate) mod audit;
pub(crate) mod ca;
pub(crate) mod lab;
pub(crate) mod node;
pub(crate) mod offline;
pub(crate) mod run;
pub(crate) mod signer;
