//! `matrix` and `explain`: the engine on manifest files, no cluster and no root needed.
//! This module only resolves what the operator named (pods, Services, ports, steps) and
//! prints; every verdict comes from the controller's one evaluation.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use netward_controller::model::{Service, ServicePort};
use netward_controller::render::{
    CellChange, ExplainReport, ServiceExplanation, ServiceQuery, matrix_changes, matrix_dot,
    matrix_reasons, matrix_table, matrix_table_since,
};
use netward_controller::workloads::WorkloadKind;
use netward_controller::{
    Cluster, Endpoint, Flow, Manifests, Matrix, PodId, Protocol, Snapshot, Transport, addresses,
};

/// Exit code for bad input and usage errors (as clap's own).
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code of `explain` when the connection is denied, or there is nothing to connect to.
const EXIT_DENIED: u8 = 1;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TableOrJson {
    Table,
    Json,
}

/// `matrix -o`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MatrixOutput {
    /// `.` allowed, `X` denied; rows from, columns to.
    Table,
    /// The table, then the rule or the isolating policies behind each cell a policy decided.
    Wide,
    /// One matrix as `{"port","protocol","pods","allowed"}`; several as `{"matrices":[...]}`.
    Json,
    /// The same document as `json`, in YAML.
    Yaml,
    /// A Graphviz digraph of the allowed flows.
    Dot,
}

/// `explain -o`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExplainOutput {
    /// The verdict, each side's reason, and every isolating policy's rules.
    Text,
    /// The text, with each end's address and node.
    Wide,
    /// The same information as data, with the per-rule trace.
    Json,
    /// The same document as `json`, in YAML.
    Yaml,
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward matrix -f examples/three-tier
  netward matrix -f manifests/ -n shop --port 80,5432 -o wide
  netward matrix -f examples/three-tier --step
  netward matrix -f manifests/ -o dot | dot -Tsvg > flows.svg

Exit codes: 0 done; 2 bad input or usage (see docs/cli.md).")]
pub(crate) struct MatrixArgs {
    /// Manifest files or directories (YAML or JSON; repeatable).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Destination ports: comma-separated or repeated; one matrix each.
    #[arg(
        long = "port",
        value_name = "PORT",
        value_delimiter = ',',
        default_value = "80"
    )]
    ports: Vec<u16>,
    /// Protocol: TCP, UDP, SCTP, ICMP, ... (any case).
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Only the pods of this namespace, as rows and columns.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Every namespace's pods (the default without -n; wins over -n, as in kubectl).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: MatrixOutput,
    /// Walk one directory's files in name order, as `netward lab --step` does live: after
    /// each file (files holding only netward.io objects are not steps), the matrix of
    /// everything so far, with the cells that changed marked.
    #[arg(long)]
    step: bool,
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward explain -f examples/rogue-pod --from netpol-test/rogue-pod --to netpol-test/backend --port 80
  netward explain -f manifests/ -n shop --from client --to svc/web --port http -o wide
  netward explain -f manifests/ --from shop/client --to 10.0.0.53 --port 53 --protocol UDP -o json

Ends: namespace/pod, pod (in -n's namespace, else default), an IP, or a Service as
namespace/service (when no pod has that name), namespace/svc/name, svc/name or
service/name, or its ClusterIP. A Service is explained per backend, as the datapath
decides after kube-proxy's DNAT: --port is then the Service's port (number or name).

Exit codes: 0 allowed (by every backend of a Service); 1 denied (by any backend), or
a Service with nothing to connect to; 2 bad input or usage (see docs/cli.md).")]
pub(crate) struct ExplainArgs {
    /// Manifest files or directories (YAML or JSON; repeatable).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The client: `namespace/pod`, `pod`, or an IP.
    #[arg(long)]
    from: String,
    /// The server: `namespace/pod`, `pod`, an IP, or a Service (see below).
    #[arg(long)]
    to: String,
    /// Destination port: a number, or a container port name (resolved on the destination
    /// pod for the protocol). For a Service: its port's number or name.
    #[arg(long)]
    port: Option<String>,
    /// Protocol: TCP, UDP, SCTP, ICMP, ... (any case).
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// How the connection reaches the destination's node: `plaintext`, or `tunnel` (the
    /// mTLS tunnel between node proxies). Matters only for `netward.io/mtls: strict`
    /// namespaces, which refuse cross-node plaintext.
    #[arg(long, value_enum, default_value = "plaintext")]
    via: Via,
    /// The namespace of pods and Services named without one (default: `default`).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: ExplainOutput,
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
    let mut cluster = load_cluster(files, true)?;
    require_pods(&cluster, files)?;
    note_assigned(addresses::assign(&mut cluster));
    Ok(Snapshot::compile(&cluster))
}

/// Reads manifests into a cluster (workloads expanded, no addresses assigned); any error
/// in the input is fatal here. `notes`: say on stderr what was ignored and expanded.
fn load_cluster(files: &[PathBuf], notes: bool) -> anyhow::Result<Cluster> {
    let manifests = Manifests::read_paths(files);
    if notes {
        for ignored in &manifests.ignored {
            eprintln!("netward: note: ignoring {ignored} (netward reads {READS})");
        }
    }
    let workloads = manifests.workloads.clone();
    let cluster = match manifests.into_clean() {
        Ok(cluster) => cluster,
        Err(errors) => {
            let n = errors.len();
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            bail!(
                "{n} error{} in the manifests (invalid policies fail closed: they deny, never open):\n{}",
                if n == 1 { "" } else { "s" },
                list.join("\n")
            )
        }
    };
    if notes {
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
    }
    Ok(cluster)
}

/// What netward reads, for notes and errors.
const READS: &str = "Namespaces, Pods, Services, Nodes, NetworkPolicies and the workloads \
    Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob";

/// Fails when the input yields no pod at all: there is no flow to decide.
fn require_pods(cluster: &Cluster, files: &[PathBuf]) -> anyhow::Result<()> {
    if !cluster.pods.is_empty() {
        return Ok(());
    }
    let policies = cluster.policies.len();
    let given: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    bail!(
        "-f {}: no pods: netward reads Pods and workloads ({}) and decides flows between \
         them; these files hold {policies} NetworkPolic{}",
        given.join(" "),
        WorkloadKind::ALL.map(WorkloadKind::as_str).join(", "),
        if policies == 1 { "y" } else { "ies" },
    )
}

/// Says on stderr which addresses were given, as the lab gives them.
fn note_assigned(assigned: addresses::Assigned) {
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
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("netward: error: {e:#}");
    ExitCode::from(EXIT_BAD_INPUT)
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

fn to_json(v: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string(v)? + "\n")
}

fn to_yaml(v: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(v)?)
}

// ---- matrix ----

pub(crate) fn matrix(args: &MatrixArgs) -> ExitCode {
    match matrix_out(args) {
        Ok(out) => print_out(&out),
        Err(e) => fail(&e),
    }
}

/// The ports asked for, without repeats; one for a protocol without ports.
fn matrix_ports(args: &MatrixArgs) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for p in &args.ports {
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    if !args.protocol.has_ports() {
        ports.truncate(1);
    }
    ports
}

/// The pods the matrix covers: every live pod, or those of `-n`'s namespace.
fn matrix_pods(snap: &Snapshot, namespace: Option<&str>) -> Vec<PodId> {
    let mut ids = snap.pod_ids();
    if let Some(ns) = namespace {
        ids.retain(|id| snap.pod(*id).namespace == ns);
    }
    ids
}

fn no_pods_in(snap: &Snapshot, ns: &str) -> anyhow::Error {
    let mut with_pods: Vec<&str> = snap
        .pod_ids()
        .into_iter()
        .map(|id| snap.pod(id).namespace.as_str())
        .collect();
    with_pods.dedup();
    anyhow!(
        "-n: no pods in namespace {ns} (namespaces with pods: {})",
        if with_pods.is_empty() {
            "none".to_owned()
        } else {
            with_pods.join(", ")
        }
    )
}

/// One matrix per port, with the decisions behind its cells.
struct Matrices {
    pods: Vec<PodId>,
    each: Vec<(Matrix, Vec<Vec<netward_controller::Decision>>)>,
}

fn matrices(snap: &Snapshot, pods: Vec<PodId>, protocol: Protocol, ports: &[u16]) -> Matrices {
    let names: Vec<String> = pods.iter().map(|id| snap.pod(*id).key()).collect();
    let each = ports
        .iter()
        .map(|port| {
            let decisions = snap.matrix_decisions(&pods, protocol, *port);
            let allowed = decisions
                .iter()
                .map(|row| row.iter().map(|d| d.allowed()).collect())
                .collect();
            let m = Matrix {
                port: *port,
                protocol,
                pods: names.clone(),
                allowed,
            };
            (m, decisions)
        })
        .collect();
    Matrices { pods, each }
}

impl Matrices {
    fn plain(&self) -> Vec<Matrix> {
        self.each.iter().map(|(m, _)| m.clone()).collect()
    }

    /// The tables, one per port; marked against `previous` (a step's), and with the
    /// cells' reasons for `wide`.
    fn text(&self, snap: &Snapshot, previous: Option<&Matrices>, wide: bool) -> String {
        let mut out = String::new();
        for (i, (m, decisions)) in self.each.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            match previous.and_then(|p| p.each.get(i)) {
                Some((before, _)) => out.push_str(&matrix_table_since(m, before)),
                None => out.push_str(&matrix_table(m)),
            }
            if wide {
                out.push_str(&matrix_reasons(snap, &self.pods, decisions));
            }
        }
        out
    }
}

/// The JSON/YAML document: the single-port shape for one port, else every matrix.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum MatrixDoc {
    One(Matrix),
    Many { matrices: Vec<Matrix> },
}

fn matrix_doc(ms: &Matrices) -> MatrixDoc {
    let mut plain = ms.plain();
    if plain.len() == 1
        && let Some(one) = plain.pop()
    {
        return MatrixDoc::One(one);
    }
    MatrixDoc::Many { matrices: plain }
}

/// One step of `matrix --step -o json|yaml`.
#[derive(serde::Serialize)]
struct StepDoc {
    /// 1-based.
    step: usize,
    /// The file this step applied.
    file: String,
    /// One per port.
    matrices: Vec<Matrix>,
    /// The cells that changed since the previous step.
    changes: Vec<CellChange>,
}

#[derive(serde::Serialize)]
struct StepsDoc {
    steps: Vec<StepDoc>,
}

fn matrix_out(args: &MatrixArgs) -> anyhow::Result<String> {
    let ports = matrix_ports(args);
    let namespace = if args.all_namespaces {
        None
    } else {
        args.namespace.as_deref()
    };
    if args.step {
        return matrix_steps(args, &ports, namespace);
    }
    let snap = load_snapshot(&args.files)?;
    let pods = matrix_pods(&snap, namespace);
    if let Some(ns) = namespace
        && pods.is_empty()
    {
        return Err(no_pods_in(&snap, ns));
    }
    let ms = matrices(&snap, pods, args.protocol, &ports);
    match args.output {
        MatrixOutput::Table => Ok(ms.text(&snap, None, false)),
        MatrixOutput::Wide => Ok(ms.text(&snap, None, true)),
        MatrixOutput::Json => to_json(&matrix_doc(&ms)),
        MatrixOutput::Yaml => to_yaml(&matrix_doc(&ms)),
        MatrixOutput::Dot => Ok(matrix_dot(&ms.plain())),
    }
}

/// The steps of a tutorial directory, as `netward lab --step` takes them: its YAML and
/// JSON files in name order, without those holding only `netward.io` objects.
fn step_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .collect()
    } else if path.is_file() {
        vec![path.to_owned()]
    } else {
        bail!("{}: no such file or directory", path.display());
    };
    paths.sort();
    let mut steps = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut m = Manifests::default();
        m.read_str(&p, &text);
        let only_netward = m.cluster.pods.is_empty()
            && m.cluster.policies.is_empty()
            && m.cluster.namespaces.is_empty()
            && m.cluster.services.is_empty()
            && !m.netward.is_empty();
        if !only_netward {
            steps.push(p);
        }
    }
    Ok(steps)
}

fn matrix_steps(
    args: &MatrixArgs,
    ports: &[u16],
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    let [dir] = args.files.as_slice() else {
        bail!(
            "--step walks one directory: give one -f (got {})",
            args.files.len()
        );
    };
    if args.output == MatrixOutput::Dot {
        bail!("-o dot draws one graph: drop --step, or give -f the files up to the step to draw");
    }
    let steps = step_files(dir)?;
    if steps.is_empty() {
        bail!("--step: {} holds no manifest files", dir.display());
    }
    let n = steps.len();
    // Addresses are planned once, on every file, as the lab plans them: a pod keeps its
    // address when a later file adds others.
    let mut whole = load_cluster(&steps, true)?;
    require_pods(&whole, &args.files)?;
    note_assigned(addresses::assign(&mut whole));
    let mut text = String::new();
    let mut docs = Vec::new();
    let mut previous: Option<Matrices> = None;
    let mut last_snap = None;
    for k in 0..n {
        let mut cluster = load_cluster(&steps[..=k], false)?;
        addresses::assign_from(&mut cluster, &whole);
        let snap = Snapshot::compile(&cluster);
        let ms = matrices(&snap, matrix_pods(&snap, namespace), args.protocol, ports);
        let name = steps[k]
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(text, "== step {}/{n}: {name}", k + 1);
        if cluster.pods.is_empty() {
            text.push_str("no pods yet\n");
        } else {
            text.push_str(&ms.text(&snap, previous.as_ref(), args.output == MatrixOutput::Wide));
        }
        if k + 1 < n {
            text.push('\n');
        }
        let changes: Vec<CellChange> = match &previous {
            Some(p) => ms
                .each
                .iter()
                .zip(&p.each)
                .flat_map(|((m, _), (before, _))| matrix_changes(m, before))
                .collect(),
            None => Vec::new(),
        };
        docs.push(StepDoc {
            step: k + 1,
            file: name,
            matrices: ms.plain(),
            changes,
        });
        previous = Some(ms);
        last_snap = Some(snap);
    }
    if let (Some(ns), Some(snap)) = (namespace, &last_snap)
        && matrix_pods(snap, Some(ns)).is_empty()
    {
        return Err(no_pods_in(snap, ns));
    }
    let doc = StepsDoc { steps: docs };
    match args.output {
        MatrixOutput::Table | MatrixOutput::Wide | MatrixOutput::Dot => Ok(text),
        MatrixOutput::Json => to_json(&doc),
        MatrixOutput::Yaml => to_yaml(&doc),
    }
}

// ---- explain ----

/// An end as the operator named it.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    Ip(IpAddr),
    Pod(String, String),
    Service(String, String),
    /// `ns/name` or `name`: a pod, else a Service of that name.
    PodOrService(String, String),
}

fn is_service_kind(k: &str) -> bool {
    matches!(k, "svc" | "service" | "services")
}

fn is_pod_kind(k: &str) -> bool {
    matches!(k, "po" | "pod" | "pods")
}

/// Parses an end: an IP; `name`, `ns/name`; kubectl's `svc/name`, `service/name`,
/// `pod/name`; or `ns/svc/name`, `ns/pod/name`. Names without a namespace take `ns`.
fn parse_end(what: &str, ns: &str) -> anyhow::Result<Named> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(Named::Ip(ip));
    }
    let parts: Vec<&str> = what.split('/').collect();
    let named = match parts.as_slice() {
        [name] => Named::PodOrService(ns.to_owned(), (*name).to_owned()),
        [kind, name] if is_service_kind(kind) => Named::Service(ns.to_owned(), (*name).to_owned()),
        [kind, name] if is_pod_kind(kind) => Named::Pod(ns.to_owned(), (*name).to_owned()),
        [n, name] => Named::PodOrService((*n).to_owned(), (*name).to_owned()),
        [n, kind, name] if is_service_kind(kind) => {
            Named::Service((*n).to_owned(), (*name).to_owned())
        }
        [n, kind, name] if is_pod_kind(kind) => Named::Pod((*n).to_owned(), (*name).to_owned()),
        _ => bail!(
            "cannot read {what:?}: give namespace/pod, pod, namespace/svc/name, svc/name or an IP"
        ),
    };
    match &named {
        Named::Pod(n, name) | Named::Service(n, name) | Named::PodOrService(n, name)
            if n.is_empty() || name.is_empty() =>
        {
            bail!("cannot read {what:?}: an empty namespace or name")
        }
        _ => Ok(named),
    }
}

/// What `--to` resolved to.
enum Dest<'a> {
    /// A pod, or an address that is no Service's.
    Endpoint(Endpoint),
    /// A Service, with the ClusterIP it was named by.
    Service(&'a Service, Option<IpAddr>),
}

fn no_pod(ns: &str, name: &str) -> anyhow::Error {
    anyhow!("no pod {ns}/{name} in the manifests (give namespace/pod or an IP)")
}

fn resolve_pod(
    snap: &Snapshot,
    ns: &str,
    name: &str,
    v6: Option<bool>,
) -> anyhow::Result<Endpoint> {
    snap.endpoint_for_pod(ns, name, v6)
        .ok_or_else(|| no_pod(ns, name))
}

fn resolve_from(snap: &Snapshot, named: &Named, v6: Option<bool>) -> anyhow::Result<Endpoint> {
    match named {
        Named::Ip(ip) => Ok(snap.endpoint_for_ip(*ip)),
        Named::Pod(ns, name) | Named::PodOrService(ns, name) => resolve_pod(snap, ns, name, v6),
        Named::Service(ns, name) => {
            bail!("{ns}/svc/{name}: a Service is no client; name the pod that connects, or its IP")
        }
    }
}

fn resolve_to<'a>(snap: &'a Snapshot, named: &Named, v6: Option<bool>) -> anyhow::Result<Dest<'a>> {
    match named {
        Named::Ip(ip) => {
            let e = snap.endpoint_for_ip(*ip);
            match (e.pod, snap.service_for_ip(*ip)) {
                (None, Some(svc)) => Ok(Dest::Service(svc, Some(*ip))),
                _ => Ok(Dest::Endpoint(e)),
            }
        }
        Named::Pod(ns, name) => resolve_pod(snap, ns, name, v6).map(Dest::Endpoint),
        Named::Service(ns, name) => match snap.service(ns, name) {
            Some(svc) => Ok(Dest::Service(svc, None)),
            None => bail!(
                "no service {ns}/{name} in the manifests{}",
                services_in(snap, ns)
            ),
        },
        Named::PodOrService(ns, name) => {
            if let Some(e) = snap.endpoint_for_pod(ns, name, v6) {
                return Ok(Dest::Endpoint(e));
            }
            match snap.service(ns, name) {
                Some(svc) => Ok(Dest::Service(svc, None)),
                None => bail!(
                    "no pod or service {ns}/{name} in the manifests (give namespace/pod, \
                     namespace/svc/name, or an IP)"
                ),
            }
        }
    }
}

fn services_in(snap: &Snapshot, ns: &str) -> String {
    let names: Vec<&str> = snap
        .services()
        .filter(|s| s.namespace == ns)
        .map(|s| s.name.as_str())
        .collect();
    if names.is_empty() {
        format!(" (namespace {ns} has none)")
    } else {
        format!(" (services in {ns}: {})", names.join(", "))
    }
}

/// `--port` as given: a number or a name.
enum PortArg<'a> {
    Number(u16),
    Name(&'a str),
}

fn parse_port(s: &str) -> anyhow::Result<PortArg<'_>> {
    if s.is_empty() {
        bail!("--port: empty: give a number or a port name");
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u16>()
            .map(PortArg::Number)
            .map_err(|_| anyhow!("--port {s}: not a port number (0 to 65535)"));
    }
    Ok(PortArg::Name(s))
}

fn port_list(svc: &Service) -> String {
    let list: Vec<String> = svc
        .ports
        .iter()
        .map(|p| {
            let mut s = format!("{}/{}", p.port, p.protocol);
            match &p.name {
                Some(n) => s.push_str(&format!(" ({n}, targetPort {})", p.target)),
                None => s.push_str(&format!(" (targetPort {})", p.target)),
            }
            s
        })
        .collect();
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

/// The Service port `--port` names (its number or name) for the protocol.
fn service_port<'a>(
    svc: &'a Service,
    port: Option<&str>,
    protocol: Protocol,
) -> anyhow::Result<&'a ServicePort> {
    if !protocol.has_ports() {
        bail!(
            "service {}: a Service forwards TCP, UDP and SCTP only, not {protocol}; \
             explain a backend pod instead",
            svc.key()
        );
    }
    let Some(port) = port else {
        bail!(
            "--port is required: the Service port (its ports: {})",
            port_list(svc)
        );
    };
    let found = match parse_port(port)? {
        PortArg::Number(n) => svc
            .ports
            .iter()
            .find(|p| p.port == n && p.protocol == protocol),
        PortArg::Name(name) => svc
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol),
    };
    found.ok_or_else(|| {
        anyhow!(
            "service {} has no {protocol} port {port} (its ports: {})",
            svc.key(),
            port_list(svc)
        )
    })
}

/// The destination port of a flow to a pod or an address: a number, or a container
/// port name resolved on the destination pod.
fn endpoint_port(
    snap: &Snapshot,
    dst: &Endpoint,
    to: &str,
    port: Option<&str>,
    protocol: Protocol,
) -> anyhow::Result<u16> {
    let Some(port) = port else {
        if protocol.has_ports() {
            bail!("--port is required for {protocol}");
        }
        return Ok(0);
    };
    match parse_port(port)? {
        PortArg::Number(n) => Ok(n),
        PortArg::Name(name) => {
            let Some(id) = dst.pod else {
                bail!(
                    "--port {name}: a named port is resolved on the destination pod, and {to} \
                     is not a pod (give the number)"
                );
            };
            let pod = snap.pod(id);
            pod.named_port(name, protocol).ok_or_else(|| {
                let ports: Vec<String> = pod
                    .ports
                    .iter()
                    .map(|p| match &p.name {
                        Some(n) => format!("{n}: {}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })
                    .collect();
                anyhow!(
                    "--port {name}: pod {} has no {protocol} container port named {name} \
                     (its ports: {})",
                    pod.key(),
                    if ports.is_empty() {
                        "none".to_owned()
                    } else {
                        ports.join(", ")
                    }
                )
            })
        }
    }
}

pub(crate) fn explain(args: &ExplainArgs) -> ExitCode {
    match explain_out(args) {
        Ok((out, allowed)) => {
            let code = print_out(&out);
            if code != ExitCode::SUCCESS {
                return code;
            }
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DENIED)
            }
        }
        Err(e) => fail(&e),
    }
}

/// The output and whether the connection is allowed.
fn explain_out(args: &ExplainArgs) -> anyhow::Result<(String, bool)> {
    let ns = args.namespace.as_deref().unwrap_or("default");
    let from = parse_end(&args.from, ns).context("--from")?;
    let to = parse_end(&args.to, ns).context("--to")?;
    let snap = load_snapshot(&args.files)?;
    let transport = match args.via {
        Via::Plaintext => Transport::Plaintext,
        Via::Tunnel => Transport::Tunnel,
    };
    // When one end is an IP, resolve the other end's pod IP in the same family.
    let family = |n: &Named| match n {
        Named::Ip(ip) => Some(ip.is_ipv6()),
        _ => None,
    };
    let src = resolve_from(&snap, &from, family(&to)).context("--from")?;
    let dest = resolve_to(&snap, &to, family(&from)).context("--to")?;
    let wide = args.output == ExplainOutput::Wide;
    match dest {
        Dest::Service(svc, cluster_ip) => {
            let sp = service_port(svc, args.port.as_deref(), args.protocol)?;
            let e = ServiceExplanation::new(
                &snap,
                &ServiceQuery {
                    from: &args.from,
                    to: &args.to,
                    src,
                    service: svc,
                    port: sp,
                    cluster_ip,
                    v6: family(&from),
                    transport,
                },
            );
            let out = match args.output {
                ExplainOutput::Text | ExplainOutput::Wide => e.text(wide),
                ExplainOutput::Json => to_json(&e)?,
                ExplainOutput::Yaml => to_yaml(&e)?,
            };
            Ok((out, e.allowed))
        }
        Dest::Endpoint(dst) => {
            let port = endpoint_port(&snap, &dst, &args.to, args.port.as_deref(), args.protocol)?;
            let flow = Flow {
                src,
                dst,
                protocol: args.protocol,
                port,
                transport,
            };
            let explanation = snap.explain(&flow);
            let report = ExplainReport::new(&snap, &args.from, &args.to, &flow, &explanation);
            let out = match args.output {
                ExplainOutput::Text | ExplainOutput::Wide => report.text(wide),
                ExplainOutput::Json => to_json(&report)?,
                ExplainOutput::Yaml => to_yaml(&report)?,
            };
            Ok((out, report.allowed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_parse_as_kubectl_names_them() {
        let p = |s: &str| parse_end(s, "shop").ok();
        let pos = |n: &str, m: &str| Some(Named::PodOrService(n.into(), m.into()));
        let svc = |n: &str, m: &str| Some(Named::Service(n.into(), m.into()));
        let pod = |n: &str, m: &str| Some(Named::Pod(n.into(), m.into()));
        assert_eq!(p("web"), pos("shop", "web"));
        assert_eq!(p("ops/web"), pos("ops", "web"));
        assert_eq!(p("svc/web"), svc("shop", "web"));
        assert_eq!(p("service/web"), svc("shop", "web"));
        assert_eq!(p("ops/svc/web"), svc("ops", "web"));
        assert_eq!(p("pod/web"), pod("shop", "web"));
        assert_eq!(p("ops/pod/web"), pod("ops", "web"));
        assert_eq!(
            p("198.19.0.10"),
            Some(Named::Ip(
                "198.19.0.10".parse().unwrap_or(IpAddr::from([0; 4]))
            ))
        );
        for bad in ["a/b/c", "a/b/c/d", "/web", "ops/", "svc/"] {
            assert!(parse_end(bad, "shop").is_err(), "{bad}");
        }
    }
}
