//! The netward data plane: transparent listeners, verdicts at connection setup,
//! the splice relay, and the `netward` command's subcommands.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod sys;

pub mod admin;
pub mod audit;
pub mod conntrack;
pub mod datapath;
pub mod lab;
pub mod mesh;
pub mod metrics;
pub mod mtls;
pub mod net;
mod netlink;
pub mod packet;
pub mod parked;
mod pipe;
pub mod relay;
pub mod review;
pub mod verdict;
