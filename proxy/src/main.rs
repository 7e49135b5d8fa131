//! The `netward` command: the node agent's entry points and the operator's offline tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// netward: NetworkPolicy enforcement on each node, and the tools to see what it decides.
#[derive(Parser)]
#[command(name = "netward", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the pod-to-pod reachability matrix the policies in the manifests give.
    Matrix(cmd::offline::MatrixArgs),
    /// Explain whether a connection is allowed, with both sides' reasons.
    Explain(cmd::offline::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Matrix(args) => cmd::offline::matrix(&args),
        Command::Explain(args) => cmd::offline::explain(&args),
    }
}
