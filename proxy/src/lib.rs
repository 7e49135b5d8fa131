//! The netward data plane: transparent listeners, verdicts at connection setup,
//! the splice relay, and the `netward` command's subcommands.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod sys;

pub mod datapath;
pub mod lab;
pub mod net;
pub mod packet;
pub mod relay;
pub mod verdict;
