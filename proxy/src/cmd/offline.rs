//! `matrix` and `explain`: the engine on manifest files, no cluster and no root needed.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use netward_controller::render::{DecisionReport, explain_text, matrix_table};
use netward_controller::{Endpoint, Flow, Manifests, Protocol, Snapshot, Transport};

/// Exit code for bad input (`explain` promises 2; `matrix` uses the same).
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TableOrJson {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TextOrJson {
    Text,
    Json,
}

#[derive(Args)]
pub(crate) struct MatrixArgs {
    /// Manifest files or directories (YAML or JSON; repeatable).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// Protocol: TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: TableOrJson,
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Manifest files or directories (YAML or JSON; repeatable).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The client: `namespace/pod`, `pod` (in `default`), or an IP.
    #[arg(long)]
    from: String,
    /// The server: `namespace/pod`, `pod` (in `default`), or an IP.
    #[arg(long)]
    to: String,
    /// Destination port.
    #[arg(long)]
    port: u16,
    /// Protocol: TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// How the connection reaches the destination's node: `plaintext`, or `tunnel` (the
    /// mTLS tunnel between node proxies). Matters only for `netward.io/mtls: strict`
    /// namespaces, which refuse cross-node plaintext.
    #[arg(long, value_enum, default_value = "plaintext")]
    via: Via,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: TextOrJson,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Via {
    Plaintext,
    Tunnel,
}

pub(crate) fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("unknown protocol {s:?}: expected TCP, UDP, SCTP, ICMP, ICMPv6 or another IP protocol name"))
}

/// Loads manifests and compiles them; any error in the input is fatal here, and so is
/// input without a single pod (an empty matrix would look like an answer).
///
/// Workloads become their pods (a note says which), and pods and Services without
/// addresses get the ones `netward lab` gives them (a note says so), so that ipBlock
/// rules decide the same whether or not the files write `status.podIPs`.
pub(crate) fn load_snapshot(files: &[PathBuf]) -> anyhow::Result<Snapshot> {
    use netward_controller::{addresses, workloads::WorkloadKind};
    const READS: &str = "Namespaces, Pods, Services, Nodes, NetworkPolicies and the workloads \
        Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob";
    let manifests = Manifests::read_paths(files);
    for ignored in &manifests.ignored {
        eprintln!("netward: note: ignoring {ignored} (netward reads {READS})");
    }
    let workloads = manifests.workloads.clone();
    let policies = manifests.cluster.policies.len();
    let ignored = manifests.ignored.len();
    let mut cluster = match manifests.into_clean() {
        Ok(cluster) => cluster,
        Err(errors) => {
            let n = errors.len();
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            bail!(
                "{n} error{} in the manifests (an invalid policy would isolate its pods and allow nothing):\n{}",
                if n == 1 { "" } else { "s" },
                list.join("\n")
            )
        }
    };
    for w in &workloads {
        const SHOWN: usize = 8;
        let n = w.pods.len();
        let mut names = w
            .pods
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if n > SHOWN {
            names.push_str(&format!(", ... ({} more)", n - SHOWN));
        }
        eprintln!(
            "netward: note: {} {}/{}: {n} pod{} {names}",
            w.kind,
            w.namespace,
            w.name,
            if n == 1 { "" } else { "s" },
        );
    }
    if cluster.pods.is_empty() {
        let given: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        bail!(
            "-f {}: no pods: netward reads Pods and workloads ({}) and decides flows between \
             them; these files hold {policies} NetworkPolic{} and {ignored} object{} of other kinds",
            given.join(" "),
            WorkloadKind::ALL.map(WorkloadKind::as_str).join(", "),
            if policies == 1 { "y" } else { "ies" },
            if ignored == 1 { "" } else { "s" },
        );
    }
    let assigned = addresses::assign(&mut cluster);
    if assigned.pods > 0 {
        eprintln!(
            "netward: note: {} pod{} without status.podIPs got addresses from the default pod CIDRs \
             (198.18.<node>.0/24, fd00::<node>:0/112), as netward lab gives them",
            assigned.pods,
            if assigned.pods == 1 { "" } else { "s" },
        );
    }
    if assigned.services > 0 {
        eprintln!(
            "netward: note: {} Service{} without clusterIPs got 198.19.0.x and fd00::ffff:0:x, as netward lab gives them",
            assigned.services,
            if assigned.services == 1 { "" } else { "s" },
        );
    }
    Ok(Snapshot::compile(&cluster))
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("netward: error: {e:#}");
    ExitCode::from(EXIT_BAD_INPUT)
}

pub(crate) fn matrix(args: &MatrixArgs) -> ExitCode {
    let snap = match load_snapshot(&args.files) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let m = snap.matrix(args.protocol, args.port);
    let out = match args.output {
        TableOrJson::Table => matrix_table(&m),
        TableOrJson::Json => match serde_json::to_string(&m) {
            Ok(s) => s + "\n",
            Err(e) => return fail(&e.into()),
        },
    };
    print_out(&out)
}

fn print_out(s: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&e.into()),
    }
}

/// Resolves `namespace/pod`, `pod` or an IP against the snapshot.
pub(crate) fn resolve(snap: &Snapshot, what: &str, v6: Option<bool>) -> anyhow::Result<Endpoint> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(snap.endpoint_for_ip(ip));
    }
    let (ns, name) = what.split_once('/').unwrap_or(("default", what));
    snap.endpoint_for_pod(ns, name, v6).with_context(|| {
        format!("no pod {ns}/{name} in the manifests (give namespace/pod or an IP)")
    })
}

pub(crate) fn explain(args: &ExplainArgs) -> ExitCode {
    let snap = match load_snapshot(&args.files) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // When one end is an IP, resolve the other end's pod IP in the same family.
    let family = |s: &str| s.parse::<IpAddr>().ok().map(|ip| ip.is_ipv6());
    let src = match resolve(&snap, &args.from, family(&args.to)) {
        Ok(e) => e,
        Err(e) => return fail(&e.context("--from")),
    };
    let dst = match resolve(&snap, &args.to, family(&args.from)) {
        Ok(e) => e,
        Err(e) => return fail(&e.context("--to")),
    };
    let flow = Flow {
        src,
        dst,
        protocol: args.protocol,
        port: args.port,
        transport: match args.via {
            Via::Plaintext => Transport::Plaintext,
            Via::Tunnel => Transport::Tunnel,
        },
    };
    let explanation = snap.explain(&flow);
    let out = match args.output {
        TextOrJson::Text => explain_text(&snap, &args.from, &args.to, &flow, &explanation),
        TextOrJson::Json => {
            let report = DecisionReport::new(&snap, &flow, &explanation.decision);
            let body = serde_json::json!({
                "from": args.from,
                "to": args.to,
                "protocol": args.protocol,
                "port": args.port,
                "via": flow.transport,
                "allowed": explanation.decision.allowed(),
                "decision": report,
            });
            body.to_string() + "\n"
        }
    };
    let code = print_out(&out);
    if code != ExitCode::SUCCESS {
        return code;
    }
    if explanation.decision.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
