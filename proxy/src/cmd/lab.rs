//! `netward lab`: the tutorials enforced for real, in network namespaces, without a cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use netward_controller::Manifests;
use netward_proxy::lab::run::{self, Options, Scenario};
use netward_proxy::lab::servers::{Ports, serve_here};

/// Some probe observed something other than what the engine expects.
const EXIT_MISMATCH: u8 = 1;
/// Bad input or usage: an unknown scenario, invalid manifests, a bad flag.
const EXIT_BAD_INPUT: u8 = 2;
/// EX_OSERR: the lab could not be built or run (namespaces, nftables, netward's start).
const EXIT_OSERR: u8 = 71;
/// EX_NOPERM: not root.
const EXIT_NOPERM: u8 = 77;

#[derive(Args)]
#[command(after_help = "\
Examples:
  sudo netward lab
  sudo netward lab rogue-pod --reject
  sudo netward lab examples/three-tier --step --report lab.json
  sudo netward lab three-tier --keep

Exit codes: 0 every probe saw what the engine expects; 1 some did not (the cells are \
named); 2 bad input or usage (an unknown scenario, invalid manifests, a bad flag); 71 \
the lab could not be built or run; 77 not root.")]
pub(crate) struct LabArgs {
    /// A bundled scenario (three-tier, rogue-pod, namespace-isolation, dns-egress,
    /// metadata-block, cluster-guardrails) or a directory of Kubernetes YAML files, applied
    /// in name order.
    #[arg(default_value = "three-tier")]
    scenario: String,
    /// Leave the lab running, and print how to try the tutorial's commands in it.
    #[arg(long)]
    keep: bool,
    /// netward refuses denied TCP connections with a reset instead of dropping them.
    #[arg(long)]
    reject: bool,
    /// Apply the scenario's files one at a time, probing after each (the tutorial's steps).
    #[arg(long)]
    step: bool,
    /// Probe IPv4 only.
    #[arg(long)]
    ipv4_only: bool,
    /// How long a probe waits for an answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 48)]
    parallel: usize,
    /// Audit log for each node's netward (FILE.<node>).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Write the result as JSON to FILE: every probed matrix cell per step (observed and
    /// expected), the mismatches and the tutorial's checks.
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    /// Remove every lab left running by --keep, and exit.
    #[arg(long)]
    cleanup: bool,
    /// Run the mTLS tunnel between the nodes (a lab CA issues each node's certificate),
    /// with every namespace labelled netward.io/mtls=MODE unless the scenario sets it:
    /// `strict` (the default), `permissive` or `disabled`.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "strict", value_parser = parse_mtls)]
    mtls: Option<netward_controller::MtlsMode>,
}

fn parse_mtls(s: &str) -> Result<netward_controller::MtlsMode, String> {
    netward_controller::MtlsMode::parse(s)
        .ok_or_else(|| format!("unknown mTLS mode {s:?}: expected strict, permissive or disabled"))
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Name in replies.
    #[arg(long)]
    name: String,
    /// TCP ports, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tcp: Vec<u16>,
    /// UDP ports, comma-separated.
    #[arg(long, value_delimiter = ',')]
    udp: Vec<u16>,
}

pub(crate) fn lab(args: &LabArgs) -> ExitCode {
    let mut out = std::io::stdout();
    if args.cleanup {
        if let Some(code) = needs_root() {
            return code;
        }
        let n = run::cleanup(&mut out);
        println!("{n} lab namespaces removed");
        return ExitCode::SUCCESS;
    }
    // The scenario and its manifests are checked first, so that bad input is reported
    // as such (exit 2) with or without root.
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netward: error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut manifests = Manifests::default();
    for (name, text) in &scenario.files {
        manifests.read_str(Path::new(name), text);
    }
    if !manifests.errors.is_empty() {
        eprintln!("netward: error: the scenario's manifests are invalid:");
        for e in &manifests.errors {
            eprintln!("  {e}");
        }
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Some(code) = needs_root() {
        return code;
    }
    let netward_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("netward: error: cannot find my own binary: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let opts = Options {
        scenario,
        keep: args.keep,
        reject: args.reject,
        step: args.step,
        ipv6: !args.ipv4_only,
        timeout: Duration::from_millis(args.timeout_ms),
        parallel: args.parallel,
        audit_log: args.audit_log.clone(),
        netward_bin,
        mtls: args.mtls,
    };
    let result = run::run(&opts, &mut out);
    if let (Some(path), Ok(report)) = (&args.report, &result) {
        let written = serde_json::to_string_pretty(report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json + "\n"));
        if let Err(e) = written {
            eprintln!("netward: error: --report {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(report) if report.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_MISMATCH),
        Err(e) => {
            eprintln!("netward: error: {e}");
            match e {
                run::Error::NoScenario(..) | run::Error::Manifests(_) => {
                    ExitCode::from(EXIT_BAD_INPUT)
                }
                _ => ExitCode::from(EXIT_OSERR),
            }
        }
    }
}

/// `Some(77)`, said why, when not root.
fn needs_root() -> Option<ExitCode> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    eprintln!(
        "netward: error: netward lab needs root (it builds network namespaces and installs nftables rules): run it with sudo"
    );
    Some(ExitCode::from(EXIT_NOPERM))
}

pub(crate) fn serve(args: &ServeArgs) -> ExitCode {
    let ports = Ports {
        tcp: args.tcp.clone(),
        udp: args.udp.clone(),
    };
    let name = args.name.clone();
    let r = serve_here(&args.name, &ports, || {
        println!("serving {name} on tcp {:?} udp {:?}", ports.tcp, ports.udp);
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netward lab-serve: error: {e}");
            ExitCode::FAILURE
        }
    }
}
