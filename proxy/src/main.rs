//! The `netward` command: the node agent's entry points and the operator's offline tools.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;

/// Enforces Kubernetes NetworkPolicy on each node (a transparent L4 proxy, one per node),
/// and answers offline what the policies allow.
#[derive(Parser)]
#[command(
    name = "netward",
    version,
    propagate_version = true,
    about = "Kubernetes NetworkPolicy enforcement on each node, and the tools to see what it decides",
    long_about = None,
    after_help = "\
Examples:
  netward explain -f manifests/ --from shop/client --to shop/web --port 80
  netward matrix -f manifests/ -o wide
  netward node --node-name node-a          (the DaemonSet's entry point)
  netward run -f manifests/ --node node-a  (enforce manifest files, no API server)

`netward <COMMAND> --help` shows each command's options, variables and exit codes."
)]
struct Cli {
    /// Log format for operational logs (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Print the pod-to-pod reachability matrix the policies in the manifests give.
    Matrix(cmd::offline::MatrixArgs),
    /// Explain whether a connection is allowed, with both sides' reasons.
    Explain(cmd::offline::ExplainArgs),
    /// Review the audit log: filter, aggregate the top denied flows, suggest policies.
    Audit(cmd::audit::AuditArgs),
    /// Enforce the policies of manifest files on this network namespace's traffic.
    Run(cmd::run::RunArgs),
    /// Remove every rule, ip rule and route netward installed (after a crash).
    Cleanup(cmd::run::CleanupArgs),
    /// The node agent: watch the Kubernetes API and enforce on this node (DaemonSet).
    Node(Box<cmd::node::NodeArgs>),
    /// Sign netward's node-tunnel CertificateSigningRequests (a one-replica Deployment).
    Signer(cmd::signer::SignerArgs),
    /// Build a scenario's cluster in network namespaces, enforce it, and probe it.
    Lab(cmd::lab::LabArgs),
    /// The offline CA: create one, issue node certificates for the mTLS tunnel.
    Ca(cmd::ca::CaArgs),
    /// The lab's built-in pod servers (used by `netward lab`).
    #[command(hide = true)]
    LabServe(cmd::lab::ServeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cmd::config::parse_failed(e, &Cli::command()),
    };
    init_logs(cli.log_format);
    match cli.command {
        Command::Matrix(args) => cmd::offline::matrix(&args),
        Command::Explain(args) => cmd::offline::explain(&args),
        Command::Audit(args) => cmd::audit::audit(&args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Cleanup(args) => cmd::run::cleanup(&args),
        Command::Node(args) => cmd::node::node(&args),
        Command::Signer(args) => cmd::signer::signer(&args),
        Command::Lab(args) => cmd::lab::lab(&args),
        Command::LabServe(args) => cmd::lab::serve(&args),
        Command::Ca(args) => cmd::ca::ca(&args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the whole command line: ids named by `requires_all`, flags
    /// that two flattened groups both define, defaults their parser refuses.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
