//! `netward ca`: the offline certificate authority for the lab and `netward run`. It
//! writes the same files a node gets from the Kubernetes signer: `node.pem`,
//! `node-key.pem` (0600) and `trust-bundle.pem`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use netward_proxy::mtls::identity::{
    self, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_TRUST_DOMAIN, EXTRA_ROOTS_FILE, rfc3339,
};

/// A bad flag value: a usage error, as for every offline tool (clap's own are 2 too).
const EXIT_USAGE: u8 = 2;

/// Create a CA, or issue a node its certificate.
#[derive(Args)]
#[command(after_help = "\
Examples:
  netward ca init --dir /etc/netward/ca
  netward ca issue --ca-dir /etc/netward/ca --node worker-1 --out /etc/netward/tls")]
pub(crate) struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new CA (ECDSA P-256): ca.pem and ca-key.pem (0600) in --dir.
    Init(InitArgs),
    /// Issue a node a certificate: node.pem, node-key.pem (0600), trust-bundle.pem in --out.
    Issue(IssueArgs),
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward ca init --dir /etc/netward/ca
  netward ca init --dir ./ca --trust-domain lab.example --validity 30d")]
struct InitArgs {
    /// The directory to create the CA in (must not hold one already).
    #[arg(long)]
    dir: PathBuf,
    /// The SPIFFE trust domain of the node identities.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long the CA is valid (s, m, h or d).
    #[arg(long, default_value = "8760h")]
    validity: String,
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward ca issue --ca-dir /etc/netward/ca --node worker-1 --out /etc/netward/tls
  netward ca issue --ca-dir ./ca --node node-a --out ./node-a --validity 12h")]
struct IssueArgs {
    /// The CA directory (ca.pem, ca-key.pem, optional trust-bundle-extra.pem).
    #[arg(long)]
    ca_dir: PathBuf,
    /// The node's name (a DNS-1123 subdomain, as its Kubernetes Node).
    #[arg(long)]
    node: String,
    /// The node's certificate directory.
    #[arg(long)]
    out: PathBuf,
    /// The SPIFFE trust domain of the node identities.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long the node certificate is valid (s, m, h or d).
    #[arg(long, default_value = "24h")]
    validity: String,
}

pub(crate) fn ca(args: &CaArgs) -> ExitCode {
    let checked = match &args.command {
        CaCommand::Init(a) => check(&a.trust_domain, None, "--validity", &a.validity),
        CaCommand::Issue(a) => check(&a.trust_domain, Some(&a.node), "--validity", &a.validity),
    };
    let validity = match checked {
        Ok(validity) => validity,
        Err(e) => {
            eprintln!("netward: error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match &args.command {
        CaCommand::Init(a) => init(a, validity),
        CaCommand::Issue(a) => issue(a, validity),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netward: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validates the flag values, before anything is written.
fn check(
    trust_domain: &str,
    node: Option<&str>,
    validity_flag: &str,
    validity: &str,
) -> anyhow::Result<std::time::Duration> {
    identity::validate_trust_domain(trust_domain).context("--trust-domain")?;
    if let Some(node) = node {
        identity::validate_node_name(node).context("--node")?;
    }
    identity::parse_duration(validity).with_context(|| validity_flag.to_owned())
}

fn init(args: &InitArgs, validity: std::time::Duration) -> anyhow::Result<()> {
    let files = identity::init_ca(&args.dir, &args.trust_domain, validity)
        .with_context(|| format!("cannot create a CA in {}", args.dir.display()))?;
    println!(
        "wrote {} (CA certificate, valid until {})",
        files.cert.display(),
        rfc3339(files.not_after)
    );
    println!("wrote {} (CA private key, mode 0600)", files.key.display());
    println!(
        "next: netward ca issue --ca-dir {} --node NAME --out DIR{}",
        args.dir.display(),
        if args.trust_domain == DEFAULT_TRUST_DOMAIN {
            String::new()
        } else {
            format!(" --trust-domain {}", args.trust_domain)
        }
    );
    Ok(())
}

fn issue(args: &IssueArgs, validity: std::time::Duration) -> anyhow::Result<()> {
    let files = identity::issue(&args.ca_dir, &args.node, &args.out, &args.trust_domain, validity)
        .with_context(|| {
            format!(
                "cannot issue a certificate for node {} from the CA in {} ({CA_CERT_FILE}, {CA_KEY_FILE})",
                args.node,
                args.ca_dir.display()
            )
        })?;
    println!(
        "wrote {} ({}, valid until {})",
        files.cert.display(),
        files.spiffe_id,
        rfc3339(files.not_after)
    );
    println!(
        "wrote {} (node private key, mode 0600)",
        files.key.display()
    );
    let extra = args.ca_dir.join(EXTRA_ROOTS_FILE);
    println!(
        "wrote {} (trust bundle: {}{})",
        files.bundle.display(),
        args.ca_dir.join(CA_CERT_FILE).display(),
        if extra.exists() {
            format!(" + {}", extra.display())
        } else {
            String::new()
        }
    );
    Ok(())
}
