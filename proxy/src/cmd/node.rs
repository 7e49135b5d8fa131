//! `netward node`: the DaemonSet entry point (issue #6). Placeholder until the
//! kube-rs watchers land; it refuses to run rather than enforce nothing.

use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub(crate) struct NodeArgs {}

pub(crate) fn node(_args: &NodeArgs) -> ExitCode {
    eprintln!(
        "netward: error: `netward node` is not implemented yet (issue #6); use `netward run --manifests DIR`"
    );
    ExitCode::from(64)
}
