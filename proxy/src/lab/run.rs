//! `netward lab`: build the scenario's cluster in namespaces, run netward on each node,
//! probe every pod pair on every declared port (and each Service and external host)
//! with real clients, and compare what was observed with what the engine expects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netward_controller::model::{Direction, Node};
use netward_controller::render::DecisionReport;
use netward_controller::workloads::WorkloadKind;
use netward_controller::{
    Cluster, Endpoint, Flow, Manifests, MtlsMode, Protocol, Snapshot, Transport,
};

use super::expect::{self, Expect, ScenarioObjects, Target};
use super::netns::{self, Netns};
use super::probe::{self, Outcome};
use super::services::{self, ServiceRoute};
use super::topology::{self, ExternalSpec, Topology};

/// Errors that stop the lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario could not be found.
    #[error("no scenario {0:?}: give a directory of manifests or one of: {1}")]
    NoScenario(String, String),
    /// The scenario's manifests are invalid.
    #[error("the scenario's manifests are invalid:\n{0}")]
    Manifests(String),
    /// A namespace, route or rule could not be set up.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A file or process could not be handled.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The lab's certificates for the mTLS tunnel could not be made.
    #[error("cannot create the lab's node certificates: {0}")]
    Mtls(String),
    /// netward did not come up on a node.
    #[error("netward did not start on node {node}; its log:\n{log}")]
    NetwardStart {
        /// The node.
        node: String,
        /// Its log so far.
        log: String,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A scenario: Kubernetes YAML files applied in order (each file is one `--step`).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// `(file name, text)`, in order.
    pub files: Vec<(String, String)>,
}

impl Scenario {
    /// A directory or file of manifests, or the name of a bundled scenario.
    pub fn load(arg: &str) -> Result<Scenario> {
        let path = Path::new(arg);
        if path.exists() {
            let mut files = Vec::new();
            let mut paths: Vec<PathBuf> = if path.is_dir() {
                std::fs::read_dir(path)
                    .map_err(io(format!("reading {arg}")))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                    })
                    .collect()
            } else {
                vec![path.to_owned()]
            };
            paths.sort();
            for p in paths {
                let text =
                    std::fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))?;
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("manifest.yaml")
                    .to_owned();
                files.push((name, text));
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(arg)
                .to_owned();
            return Ok(Scenario { name, files });
        }
        let bundled = super::bundled::SCENARIOS.iter().find(|(n, _)| *n == arg);
        match bundled {
            Some((name, files)) => Ok(Scenario {
                name: (*name).to_owned(),
                files: files
                    .iter()
                    .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                    .collect(),
            }),
            None => Err(Error::NoScenario(
                arg.to_owned(),
                super::bundled::SCENARIOS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// The files that hold Kubernetes objects (steps), without `expect.yaml`-style ones.
    fn steps(&self) -> Vec<&(String, String)> {
        self.files
            .iter()
            .filter(|(_, t)| !is_only_netward(t))
            .collect()
    }
}

fn is_only_netward(text: &str) -> bool {
    let mut m = Manifests::default();
    m.read_str(Path::new("x"), text);
    // Workloads' pods count as pods (a Deployment with `replicas: 0` as a workload).
    m.finish();
    m.cluster.pods.is_empty()
        && m.workloads.is_empty()
        && m.cluster.policies.is_empty()
        && m.cluster.cluster_policies.is_empty()
        && m.cluster.namespaces.is_empty()
        && m.cluster.services.is_empty()
        && !m.netward.is_empty()
}

/// How to run the lab.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// Leave everything running.
    pub keep: bool,
    /// netward rejects (RST) instead of dropping.
    pub reject: bool,
    /// Apply the scenario's files one at a time, probing after each.
    pub step: bool,
    /// Probe IPv6 too.
    pub ipv6: bool,
    /// How long a probe waits.
    pub timeout: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
    /// Audit log path for each node's netward (suffixed with the node name).
    pub audit_log: Option<PathBuf>,
    /// The `netward` binary to run on the nodes.
    pub netward_bin: PathBuf,
    /// Run the mTLS tunnel between the nodes, with every namespace labelled
    /// `netward.io/mtls` = this mode (unless the scenario sets the label itself).
    pub mtls: Option<MtlsMode>,
}

/// How the lab's datapath carries a flow: through the tunnel when mTLS is on and both
/// ends are pods on different nodes (and the destination's namespace adopted it: the
/// engine only distinguishes the two for strict namespaces).
fn transport_for(snap: &Snapshot, src: &Endpoint, dst: &Endpoint, mtls: bool) -> Transport {
    let node = |e: &Endpoint| e.pod.map(|p| snap.pod(p).node.clone());
    match (node(src), node(dst)) {
        (Some(a), Some(b)) if mtls && a != b => Transport::Tunnel,
        _ => Transport::Plaintext,
    }
}

/// One probed flow.
#[derive(Clone, Debug)]
struct Probe {
    from: String,
    /// What the destination is, for the report.
    to_label: String,
    dst: SocketAddr,
    protocol: Protocol,
    v6: bool,
    /// What the engine says (None: depends on which backend the DNAT picks).
    expected: Option<bool>,
    /// The engine's reason, for denied flows.
    reason: String,
    /// Matrix cell: (protocol, port, from, to pod).
    cell: Option<(Protocol, u16, String, String)>,
}

/// What one probe saw.
#[derive(Clone, Debug)]
struct Observed {
    probe: Probe,
    outcome: Outcome,
}

impl Observed {
    fn allowed(&self, reject: bool) -> Option<bool> {
        match &self.outcome {
            Outcome::Ok => Some(true),
            Outcome::Timeout if !reject => Some(false),
            Outcome::Refused if reject => Some(false),
            _ => None,
        }
    }
}

/// One probed matrix cell (IPv4), at one step: what was seen and what the engine says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CellReport {
    /// The step (1-based; the whole scenario is step 1 without `--step`).
    pub step: usize,
    /// The last file applied.
    pub file: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
    /// The client pod, `namespace/name`.
    pub from: String,
    /// The server pod, `namespace/name`.
    pub to: String,
    /// What the probe saw (None: neither an answer nor what a denial gives).
    pub observed: Option<bool>,
    /// What the engine says.
    pub expected: Option<bool>,
}

/// The lab's result (`--report FILE` writes it as JSON).
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Probes whose observation matched the engine.
    pub matched: usize,
    /// Probes that did not, described.
    pub mismatches: Vec<String>,
    /// Tutorial expectations checked, and the ones that failed.
    pub tutorial_checked: usize,
    /// Failed tutorial expectations, described.
    pub tutorial_failed: Vec<String>,
    /// Every matrix cell probed, per step.
    pub cells: Vec<CellReport>,
}

impl Report {
    /// Whether everything agreed.
    pub fn ok(&self) -> bool {
        // Something must have been checked: a probe, or a statement of the tutorial.
        self.mismatches.is_empty()
            && self.tutorial_failed.is_empty()
            && (self.matched > 0 || self.tutorial_checked > 0)
    }
}

/// Running processes in the lab: servers in pods, netward on nodes.
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn stop_all(&mut self) {
        for (_, c) in &mut self.children {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let start = Instant::now();
        for (_, c) in &mut self.children {
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

fn spawn_in(ns: &Netns, bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = file.try_clone().map_err(io("log file"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err);
    // Its own process group: a Ctrl-C in the terminal reaches the lab, which stops it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .map_err(io(format!("starting {} in {}", bin.display(), ns.name())))
}

fn wait_for_log(log: &Path, needle: &str, count: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(needle)
            .count()
            >= count
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Runs the lab, printing progress and the result to `out`.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<Report> {
    let started = Instant::now();
    netns::sweep_stale();
    if opts.keep {
        netns::set_kept(true);
    }
    // Read everything once, for the topology (all pods and Services of every step).
    let mut all = Manifests::default();
    for (name, text) in &opts.scenario.files {
        all.read_str(Path::new(name), text);
    }
    // Workloads become pods once every file is read (a DaemonSet needs every node).
    all.finish();
    if !all.errors.is_empty() {
        let list: Vec<String> = all.errors.iter().map(|e| format!("  {e}")).collect();
        return Err(Error::Manifests(list.join("\n")));
    }
    let mut cluster = all.cluster.clone();
    topology::assign_addresses(&mut cluster);
    let nodes = topology::node_objects(&cluster);
    let step_names: Vec<&str> = opts
        .scenario
        .steps()
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let ScenarioObjects { expects, externals } =
        expect::read(&opts.scenario.files, &step_names, &all.cluster).map_err(|errs| {
            Error::Manifests(
                errs.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    let _ = writeln!(
        out,
        "netward lab: {} ({} node{}, {} pods, {} services, {} policies{})",
        opts.scenario.name,
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        cluster.pods.len(),
        cluster.services.len(),
        cluster.policies.len(),
        if externals.is_empty() {
            String::new()
        } else {
            format!(", {} external hosts", externals.len())
        }
    );

    // The manifests netward reads: the pods with their lab addresses, the nodes, and the
    // scenario's files (all at once, or the first step only with --step).
    let workdir = if opts.keep {
        let d = std::env::temp_dir().join(format!("netward-lab-{}", std::process::id()));
        std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        d
    } else {
        let d = std::env::temp_dir().join(format!("netward-lab-run-{}", std::process::id()));
        std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        d
    };
    let manifests = workdir.join("manifests");
    let _ = std::fs::remove_dir_all(&manifests);
    std::fs::create_dir_all(&manifests).map_err(io("creating the manifests directory"))?;
    // Namespaces the pods use that no file declares (with mTLS on they get the label).
    let declared: BTreeSet<String> = opts
        .scenario
        .files
        .iter()
        .flat_map(|(_, text)| declared_namespaces(text))
        .collect();
    let implicit: Vec<String> = cluster
        .pods
        .values()
        .map(|p| p.namespace.clone())
        .filter(|ns| !declared.contains(ns))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    write_lab_objects(&manifests, &nodes, &implicit, opts.mtls)?;
    let steps = opts.scenario.steps();
    let first = if opts.step { 1 } else { steps.len() };
    for (name, text) in steps.iter().take(first) {
        write_step(&manifests, name, text, &cluster, opts.mtls)?;
    }

    let t = Instant::now();
    let _ = write!(out, "  building the cluster in network namespaces ... ");
    let _ = out.flush();
    let mut topo = Topology::build(&cluster, &externals)?;
    let routes = services::routes(&cluster);
    for node in &topo.nodes {
        services::install(&node.ns, &routes)?;
    }
    let _ = writeln!(out, "done ({:.1}s)", t.elapsed().as_secs_f64());

    let mut procs = Procs {
        children: Vec::new(),
    };
    let result = (|| -> Result<Report> {
        let t = Instant::now();
        let _ = write!(
            out,
            "  starting pod servers and netward on {} ... ",
            nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = out.flush();
        start_servers(opts, &topo, &cluster, &routes, &workdir, &mut procs)?;
        let mtls_dirs = match opts.mtls {
            Some(_) => Some(lab_identities(&workdir, &topo)?),
            None => None,
        };
        let mut logs = Vec::new();
        for node in &topo.nodes {
            let log = workdir.join(format!("netward-{}.log", node.name));
            let mut args = vec![
                "run".to_owned(),
                "--manifests".to_owned(),
                manifests.display().to_string(),
                "--node".to_owned(),
                node.name.clone(),
                "--reload-ms".to_owned(),
                "100".to_owned(),
            ];
            if opts.reject {
                args.push("--reject".to_owned());
            }
            if let Some((identities, peers)) = &mtls_dirs {
                args.extend([
                    "--mtls-identity".to_owned(),
                    identities.join(&node.name).display().to_string(),
                    "--tunnel-listen".to_owned(),
                    SocketAddr::new(IpAddr::V4(node.ip4), TUNNEL_PORT).to_string(),
                    "--tunnel-peers".to_owned(),
                    peers.display().to_string(),
                ]);
            }
            if let Some(a) = &opts.audit_log {
                args.push("--audit-log".to_owned());
                args.push(format!("{}.{}", a.display(), node.name));
            }
            let child = spawn_in(&node.ns, &opts.netward_bin, &args, &log)?;
            procs
                .children
                .push((format!("netward on {}", node.name), child));
            logs.push((node.name.clone(), log));
        }
        for (node, log) in &logs {
            if !wait_for_log(log, "datapath ready", 1, Duration::from_secs(20)) {
                return Err(Error::NetwardStart {
                    node: node.clone(),
                    log: std::fs::read_to_string(log).unwrap_or_default(),
                });
            }
        }
        if mtls_dirs.is_some() {
            // Every node must see every other's tunnel before the probes start: a source
            // that does not know the destination's tunnel yet would send plaintext.
            let needle = format!("tunnel advertisements nodes={}", logs.len());
            for (node, log) in &logs {
                if !wait_for_log(log, &needle, 1, Duration::from_secs(10)) {
                    return Err(Error::NetwardStart {
                        node: node.clone(),
                        log: std::fs::read_to_string(log).unwrap_or_default(),
                    });
                }
            }
        }
        let _ = writeln!(out, "ready ({:.1}s)", t.elapsed().as_secs_f64());

        let mut report = Report::default();
        let step_list: Vec<usize> = if opts.step {
            (first..=steps.len()).collect()
        } else {
            vec![steps.len()]
        };
        for (si, upto) in step_list.iter().enumerate() {
            if si > 0 {
                let (name, text) = steps[upto - 1];
                let _ = writeln!(out, "\n== step {upto}/{}: applying {name}", steps.len());
                let counts: Vec<usize> = logs
                    .iter()
                    .map(|(_, l)| {
                        std::fs::read_to_string(l)
                            .unwrap_or_default()
                            .matches("policy reloaded")
                            .count()
                    })
                    .collect();
                write_step(&manifests, name, text, &cluster, opts.mtls)?;
                for ((node, log), c) in logs.iter().zip(counts) {
                    if !wait_for_log(log, "policy reloaded", c + 1, Duration::from_secs(10)) {
                        report
                            .mismatches
                            .push(format!("netward on {node} did not reload {name}"));
                    }
                }
            } else if opts.step {
                let _ = writeln!(out, "\n== step 1/{}: {}", steps.len(), steps[0].0);
            }
            // The engine's view of this step: the same files netward reads.
            let step_files: Vec<&str> = steps.iter().take(*upto).map(|(n, _)| n.as_str()).collect();
            let snap = engine_snapshot(&manifests)?;
            let probes = plan(
                &snap,
                &cluster,
                &topo,
                &routes,
                &externals,
                opts.ipv6,
                opts.mtls.is_some(),
            );
            let observed = run_probes(&topo, probes, opts, out);
            print_step(
                &snap,
                &observed,
                (*upto, step_files.last().copied().unwrap_or_default()),
                opts,
                out,
                &mut report,
            );
            check_tutorial(
                &snap,
                &routes,
                &expects,
                (&step_files, *upto == steps.len()),
                opts.mtls.is_some(),
                out,
                &mut report,
            );
        }
        Ok(report)
    })();

    let report = match result {
        Ok(r) => r,
        Err(e) => {
            procs.stop_all();
            return Err(e);
        }
    };
    let _ = writeln!(out);
    if report.ok() {
        let _ = writeln!(
            out,
            "Result: all {} probed flows behaved as the engine expects{} ({:.1}s).",
            report.matched,
            if report.tutorial_checked > 0 {
                format!(
                    ", and all {} of the tutorial's checks hold",
                    report.tutorial_checked
                )
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64()
        );
    } else {
        let _ = writeln!(
            out,
            "Result: {} flows differ from the engine, {} tutorial checks fail:",
            report.mismatches.len(),
            report.tutorial_failed.len()
        );
        for m in report.mismatches.iter().chain(&report.tutorial_failed) {
            let _ = writeln!(out, "  {m}");
        }
    }
    if opts.keep {
        for (_, c) in procs.children.drain(..) {
            // Left running on purpose.
            std::mem::forget(c);
        }
        topo.keep();
        print_keep_help(&topo, &cluster, &workdir, out);
    } else {
        procs.stop_all();
        drop(topo);
        let _ = std::fs::remove_dir_all(&workdir);
    }
    Ok(report)
}

/// The lab's own objects: the nodes with their addresses, and with mTLS on, the
/// namespaces no scenario file declares (labelled with the mode).
/// The lab nodes' tunnel port.
const TUNNEL_PORT: u16 = crate::mtls::tunnel::DEFAULT_PORT;

/// A lab CA and one identity per node (`netward ca init` / `issue`, as files), and an
/// empty advertisement directory. Returns (identities dir, advertisements dir).
fn lab_identities(workdir: &Path, topo: &Topology) -> Result<(PathBuf, PathBuf)> {
    use crate::mtls::identity;
    let ca = workdir.join("ca");
    let identities = workdir.join("identities");
    let peers = workdir.join("tunnel-peers");
    for d in [&ca, &identities, &peers] {
        let _ = std::fs::remove_dir_all(d);
    }
    std::fs::create_dir_all(&peers).map_err(io("creating the tunnel advertisement directory"))?;
    let td = identity::DEFAULT_TRUST_DOMAIN;
    let fail = |e: identity::IdentityError| Error::Mtls(e.to_string());
    identity::init_ca(&ca, td, identity::DEFAULT_CA_VALIDITY).map_err(fail)?;
    for node in &topo.nodes {
        identity::issue(
            &ca,
            &node.name,
            &identities.join(&node.name),
            td,
            identity::DEFAULT_NODE_VALIDITY,
        )
        .map_err(fail)?;
    }
    Ok((identities, peers))
}

fn write_lab_objects(
    dir: &Path,
    nodes: &[Node],
    implicit_namespaces: &[String],
    mtls: Option<MtlsMode>,
) -> Result<()> {
    let mut text = String::from("# Written by netward lab: the nodes and their addresses.\n");
    if let Some(mode) = mtls {
        for ns in implicit_namespaces {
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{{}: {}}}}}\n",
                netward_controller::model::MTLS_KEY,
                mode.as_str()
            );
        }
    }
    for n in nodes {
        let ips: Vec<String> = n
            .ips
            .iter()
            .map(|ip| format!("{{type: InternalIP, address: \"{ip}\"}}"))
            .collect();
        let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDRs: [{}]}}\nstatus: {{addresses: [{}]}}\n",
            n.name,
            cidrs.join(", "),
            ips.join(", ")
        );
    }
    std::fs::write(dir.join("zz-lab-nodes.yaml"), text)
        .map_err(io("writing the lab's node objects"))
}

/// Writes one scenario file for netward to read, with the lab's placement and
/// addresses filled in where the scenario left them out (nodeName, podIPs, clusterIPs).
fn write_step(
    dir: &Path,
    name: &str,
    text: &str,
    cluster: &Cluster,
    mtls: Option<MtlsMode>,
) -> Result<()> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(mut v) = serde_yaml::Value::deserialize(doc) else {
            // Already validated; keep the text as it is.
            return std::fs::write(dir.join(name), text).map_err(io(format!("writing {name}")));
        };
        if v.is_null() {
            continue;
        }
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let meta = |v: &serde_yaml::Value, f: &str| {
            v.get("metadata")
                .and_then(|m| m.get(f))
                .and_then(|x| x.as_str())
                .map(str::to_owned)
        };
        let key = (
            meta(&v, "namespace").unwrap_or_else(|| "default".into()),
            meta(&v, "name").unwrap_or_default(),
        );
        if kind == "Namespace"
            && let Some(mode) = mtls
        {
            let has = v
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(netward_controller::model::MTLS_KEY))
                .is_some();
            if !has {
                set_path(
                    &mut v,
                    &["metadata", "labels", netward_controller::model::MTLS_KEY],
                    mode.as_str().into(),
                );
            }
        }
        if let Some(workload) = WorkloadKind::parse(&kind) {
            // netward on the nodes reads this directory with the same `Manifests` reader.
            // It gets the pods the lab planned for this workload, as Pod objects with their
            // addresses and nodes, *instead of* the workload: the reader would expand the
            // workload again, into pods without addresses whose names clash with these.
            let owner = format!("{kind} {}", key.1);
            let template = workload
                .template_path()
                .iter()
                .try_fold(&v, |cur, k| cur.get(*k))
                .cloned()
                .unwrap_or_default();
            for pod in cluster
                .pods
                .values()
                .filter(|p| p.namespace == key.0 && p.owner.as_deref() == Some(owner.as_str()))
            {
                let mut doc = workload_pod(&template, pod);
                fill_pod(&mut doc, pod);
                docs.push(serde_yaml::to_string(&doc).unwrap_or_default());
            }
            continue;
        }
        if kind == "Pod" {
            if let Some(pod) = cluster.pods.get(&key) {
                fill_pod(&mut v, pod);
            }
        } else if kind == "Service"
            && let Some(svc) = cluster.services.get(&key)
        {
            let ips: Vec<serde_yaml::Value> = svc
                .cluster_ips
                .iter()
                .map(|ip| ip.to_string().into())
                .collect();
            set_path(
                &mut v,
                &["spec", "clusterIPs"],
                serde_yaml::Value::Sequence(ips),
            );
        }
        docs.push(serde_yaml::to_string(&v).unwrap_or_default());
    }
    std::fs::write(dir.join(name), docs.join("---\n")).map_err(io(format!("writing {name}")))
}

/// Writes the lab's placement and addresses into a Pod object (nodeName, podIPs).
fn fill_pod(v: &mut serde_yaml::Value, pod: &netward_controller::model::Pod) {
    let ips: Vec<serde_yaml::Value> = pod
        .ips
        .iter()
        .map(|ip| {
            serde_yaml::Value::Mapping([("ip".into(), ip.to_string().into())].into_iter().collect())
        })
        .collect();
    set_path(v, &["status", "podIPs"], serde_yaml::Value::Sequence(ips));
    if let Some(node) = &pod.node {
        set_path(v, &["spec", "nodeName"], node.clone().into());
    }
}

/// The Pod object a workload's pod template makes for `pod` (its name and namespace
/// set; the template's other metadata and its spec as they are).
fn workload_pod(
    template: &serde_yaml::Value,
    pod: &netward_controller::model::Pod,
) -> serde_yaml::Value {
    let mut meta = match template.get("metadata") {
        Some(serde_yaml::Value::Mapping(m)) => m.clone(),
        _ => serde_yaml::Mapping::new(),
    };
    for k in ["name", "generateName", "namespace"] {
        meta.remove(k);
    }
    meta.insert("name".into(), pod.name.clone().into());
    meta.insert("namespace".into(), pod.namespace.clone().into());
    let spec = match template.get("spec") {
        Some(s @ serde_yaml::Value::Mapping(_)) => s.clone(),
        _ => serde_yaml::Value::Mapping(serde_yaml::Mapping::new()),
    };
    serde_yaml::Value::Mapping(
        [
            ("apiVersion".into(), "v1".into()),
            ("kind".into(), "Pod".into()),
            ("metadata".into(), serde_yaml::Value::Mapping(meta)),
            ("spec".into(), spec),
        ]
        .into_iter()
        .collect(),
    )
}

/// The names of the Namespace objects a YAML text declares.
fn declared_namespaces(text: &str) -> Vec<String> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("Namespace"))
        .filter_map(|v| {
            v.get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn set_path(v: &mut serde_yaml::Value, path: &[&str], value: serde_yaml::Value) {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
        }
        let Some(map) = cur.as_mapping_mut() else {
            return;
        };
        if i == path.len() - 1 {
            map.insert((*k).into(), value);
            return;
        }
        cur = map.entry((*k).into()).or_insert(serde_yaml::Value::Null);
    }
}

/// The snapshot netward itself compiles from the manifests directory, with the lab's
/// addresses applied, so expectations and enforcement see the same objects.
fn engine_snapshot(dir: &Path) -> Result<Snapshot> {
    let m = Manifests::read_paths(&[dir]);
    if !m.errors.is_empty() {
        return Err(Error::Manifests(
            m.errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    let mut c = m.cluster;
    topology::assign_addresses(&mut c);
    Ok(Snapshot::compile(&c))
}

/// The ports a pod serves in the lab: its container ports, and the ports Services send
/// to it (a tutorial's nginx often declares no `containerPort`, and still serves what
/// its Service targets).
fn served_ports(
    pod: &netward_controller::model::Pod,
    routes: &[ServiceRoute],
) -> BTreeSet<(Protocol, u16)> {
    let key = pod.key();
    pod.ports
        .iter()
        .map(|p| (p.protocol, p.port))
        .chain(routes.iter().flat_map(|r| {
            r.backends
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, b)| (r.protocol, b.port()))
        }))
        .filter(|(p, _)| *p != Protocol::Sctp)
        .collect()
}

fn start_servers(
    opts: &Options,
    topo: &Topology,
    cluster: &Cluster,
    routes: &[ServiceRoute],
    workdir: &Path,
    procs: &mut Procs,
) -> Result<()> {
    let mut waits = Vec::new();
    let mut add = |ns: &Netns,
                   name: &str,
                   tcp: &BTreeSet<u16>,
                   udp: &BTreeSet<u16>,
                   procs: &mut Procs|
     -> Result<()> {
        let join = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut args = vec!["lab-serve".to_owned(), "--name".to_owned(), name.to_owned()];
        if !tcp.is_empty() {
            args.extend(["--tcp".to_owned(), join(tcp)]);
        }
        if !udp.is_empty() {
            args.extend(["--udp".to_owned(), join(udp)]);
        }
        let log = workdir.join(format!("server-{}.log", name.replace('/', "_")));
        let child = spawn_in(ns, &opts.netward_bin, &args, &log)?;
        procs.children.push((format!("server {name}"), child));
        waits.push((name.to_owned(), log));
        Ok(())
    };
    for pod in cluster.pods.values() {
        let Some(lp) = topo.pods.get(&pod.key()) else {
            continue;
        };
        let served = served_ports(pod, routes);
        let of = |proto| {
            served
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, n)| *n)
                .collect::<BTreeSet<u16>>()
        };
        let (tcp, udp) = (of(Protocol::Tcp), of(Protocol::Udp));
        if !tcp.is_empty() || !udp.is_empty() {
            add(&lp.ns, &pod.key(), &tcp, &udp, procs)?;
        }
    }
    for ext in &topo.externals {
        let tcp: BTreeSet<u16> = ext.spec.ports.iter().copied().collect();
        add(&ext.ns, &ext.spec.name, &tcp, &BTreeSet::from([53]), procs)?;
    }
    for (name, log) in waits {
        if !wait_for_log(&log, "serving", 1, Duration::from_secs(10)) {
            return Err(Error::Io {
                what: format!(
                    "the servers of {name} did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
                source: std::io::Error::other("timeout"),
            });
        }
    }
    Ok(())
}

fn pod_endpoint(snap: &Snapshot, key: &str, v6: bool) -> Option<Endpoint> {
    let (ns, name) = key.split_once('/')?;
    snap.endpoint_for_pod(ns, name, Some(v6))
}

fn reason(snap: &Snapshot, flow: &Flow) -> String {
    let d = snap.authorize(flow);
    let r = DecisionReport::new(snap, flow, &d);
    let mut parts = Vec::new();
    if r.egress.result == "denied" {
        parts.push(format!("egress {}", r.egress.describe(Direction::Egress)));
    }
    if r.ingress.result == "denied" {
        parts.push(format!(
            "ingress {}",
            r.ingress.describe(Direction::Ingress)
        ));
    }
    parts.join("; ")
}

/// Every flow to probe, with what the engine expects.
fn plan(
    snap: &Snapshot,
    cluster: &Cluster,
    topo: &Topology,
    routes: &[ServiceRoute],
    externals: &[ExternalSpec],
    ipv6: bool,
    mtls: bool,
) -> Vec<Probe> {
    let families: &[bool] = if ipv6 { &[false, true] } else { &[false] };
    let mut probes = Vec::new();
    let pods: Vec<&netward_controller::model::Pod> = cluster
        .pods
        .values()
        .filter(|p| topo.pods.contains_key(&p.key()))
        .collect();
    for &v6 in families {
        for src in &pods {
            let Some(src_ep) = pod_endpoint(snap, &src.key(), v6) else {
                continue;
            };
            for dst in &pods {
                let Some(dst_ep) = pod_endpoint(snap, &dst.key(), v6) else {
                    continue;
                };
                let Some(dst_ip) = dst_ep.ip else { continue };
                for (protocol, port) in served_ports(dst, routes) {
                    let flow = Flow {
                        src: src_ep,
                        dst: dst_ep,
                        protocol,
                        port,
                        transport: transport_for(snap, &src_ep, &dst_ep, mtls),
                    };
                    let allowed = snap.authorize(&flow).allowed();
                    probes.push(Probe {
                        from: src.key(),
                        to_label: dst.key(),
                        dst: SocketAddr::new(dst_ip, port),
                        protocol,
                        v6,
                        expected: Some(allowed),
                        reason: if allowed {
                            String::new()
                        } else {
                            reason(snap, &flow)
                        },
                        cell: Some((protocol, port, src.key(), dst.key())),
                    });
                }
            }
            for r in routes.iter().filter(|r| {
                r.frontend.is_ipv6() == v6 && r.protocol != Protocol::Sctp && !r.backends.is_empty()
            }) {
                let verdicts: BTreeSet<bool> = r
                    .backends
                    .iter()
                    .map(|(_, b)| {
                        snap.authorize(&Flow {
                            src: src_ep,
                            dst: snap.endpoint_for_ip(b.ip()),
                            protocol: r.protocol,
                            port: b.port(),
                            transport: transport_for(
                                snap,
                                &src_ep,
                                &snap.endpoint_for_ip(b.ip()),
                                mtls,
                            ),
                        })
                        .allowed()
                    })
                    .collect();
                let expected = (verdicts.len() == 1).then(|| verdicts.contains(&true));
                let (bkey, b) = &r.backends[0];
                let flow = Flow {
                    src: src_ep,
                    dst: snap.endpoint_for_ip(b.ip()),
                    protocol: r.protocol,
                    port: b.port(),
                    transport: transport_for(snap, &src_ep, &snap.endpoint_for_ip(b.ip()), mtls),
                };
                probes.push(Probe {
                    from: src.key(),
                    to_label: format!(
                        "service {} ({} -> {bkey}:{})",
                        r.service,
                        r.frontend,
                        b.port()
                    ),
                    dst: r.frontend,
                    protocol: r.protocol,
                    v6,
                    expected,
                    reason: if expected == Some(false) {
                        reason(snap, &flow)
                    } else {
                        String::new()
                    },
                    cell: None,
                });
            }
            for ext in externals {
                for ip in ext.ips.iter().filter(|ip| ip.is_ipv6() == v6) {
                    for port in &ext.ports {
                        let flow = Flow {
                            src: src_ep,
                            dst: snap.endpoint_for_ip(*ip),
                            protocol: Protocol::Tcp,
                            port: *port,
                            transport: Transport::Plaintext,
                        };
                        let allowed = snap.authorize(&flow).allowed();
                        probes.push(Probe {
                            from: src.key(),
                            to_label: format!("external {} ({ip})", ext.name),
                            dst: SocketAddr::new(*ip, *port),
                            protocol: Protocol::Tcp,
                            v6,
                            expected: Some(allowed),
                            reason: if allowed {
                                String::new()
                            } else {
                                reason(snap, &flow)
                            },
                            cell: None,
                        });
                    }
                }
            }
        }
    }
    probes
}

/// Runs probes in parallel from the source pods' namespaces, with progress.
fn run_probes(
    topo: &Topology,
    probes: Vec<Probe>,
    opts: &Options,
    out: &mut dyn Write,
) -> Vec<Observed> {
    let total = probes.len();
    let t = Instant::now();
    let _ = write!(
        out,
        "  probing {total} flows (every pod pair on every declared port, Services, external hosts{}) ... ",
        if opts.ipv6 { "; IPv4 and IPv6" } else { "" }
    );
    let _ = out.flush();
    let done = Arc::new(AtomicUsize::new(0));
    let mut results: Vec<Option<Observed>> = vec![None; total];
    let mut queue: Vec<(usize, Probe)> = probes.into_iter().enumerate().collect();
    queue.reverse();
    let mut running: Vec<(usize, std::thread::JoinHandle<Option<Observed>>)> = Vec::new();
    let timeout = opts.timeout;
    let mut last_print = Instant::now();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < opts.parallel.max(1) {
            let Some((i, p)) = queue.pop() else { break };
            let Some(lp) = topo.pods.get(&p.from) else {
                continue;
            };
            let done = done.clone();
            let spawned = lp.ns.spawn(move || {
                let outcome = match p.protocol {
                    Protocol::Udp => probe::udp_exchange(p.dst, timeout),
                    _ => probe::http_get(p.dst, timeout).0,
                };
                done.fetch_add(1, Ordering::Relaxed);
                Observed { probe: p, outcome }
            });
            match spawned {
                Ok(h) => running.push((i, h)),
                Err(e) => {
                    let _ = writeln!(out, "\n  cannot probe from {}: {e}", lp.key);
                }
            }
        }
        if let Some(pos) = running.iter().position(|(_, h)| h.is_finished()) {
            let (i, h) = running.swap_remove(pos);
            results[i] = h.join().ok().flatten();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            let _ = write!(out, "{}/{total} ", done.load(Ordering::Relaxed));
            let _ = out.flush();
            last_print = Instant::now();
        }
    }
    let _ = writeln!(out, "{total}/{total} ({:.1}s)", t.elapsed().as_secs_f64());
    results.into_iter().flatten().collect()
}

/// One matrix: (from, to) to what was seen.
type Cells<'a> = BTreeMap<(String, String), &'a Observed>;

fn mark(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => ".",
        Some(false) => "X",
        None => "?",
    }
}

fn print_step(
    snap: &Snapshot,
    observed: &[Observed],
    (step, file): (usize, &str),
    opts: &Options,
    out: &mut dyn Write,
    report: &mut Report,
) {
    // Matrices: IPv4 cells, per protocol and port; IPv6 is summarized below them.
    let mut cells: BTreeMap<(Protocol, u16), Cells<'_>> = BTreeMap::new();
    for o in observed.iter().filter(|o| !o.probe.v6) {
        if let Some((proto, port, from, to)) = &o.probe.cell {
            report.cells.push(CellReport {
                step,
                file: file.to_owned(),
                protocol: *proto,
                port: *port,
                from: from.clone(),
                to: to.clone(),
                observed: o.allowed(opts.reject),
                expected: o.probe.expected,
            });
            cells
                .entry((*proto, *port))
                .or_default()
                .insert((from.clone(), to.clone()), o);
        }
    }
    let pods: Vec<String> = snap
        .pod_ids()
        .iter()
        .map(|id| snap.pod(*id).key())
        .collect();
    let width = pods.iter().map(String::len).max().unwrap_or(0);
    for ((proto, port), m) in &cells {
        let cols: Vec<&String> = pods
            .iter()
            .filter(|p| m.keys().any(|(_, to)| to == *p))
            .collect();
        let _ = writeln!(
            out,
            "\n{proto}/{port}: observed | expected   (rows: from, columns: to; . allowed, X denied, - not served)"
        );
        for (j, c) in cols.iter().enumerate() {
            let _ = writeln!(out, "{:width$}  {}{c}", "", "| ".repeat(j));
        }
        for from in &pods {
            let mut obs = Vec::new();
            let mut exp = Vec::new();
            let mut bad = false;
            for to in &cols {
                match m.get(&(from.clone(), (*to).clone())) {
                    Some(o) => {
                        let got = o.allowed(opts.reject);
                        obs.push(mark(got));
                        exp.push(mark(o.probe.expected));
                        bad |= got != o.probe.expected;
                    }
                    None => {
                        obs.push("-");
                        exp.push("-");
                    }
                }
            }
            let _ = writeln!(
                out,
                "{from:width$}  {} | {}{}",
                obs.join(" "),
                exp.join(" "),
                if bad { "   <- differs" } else { "" }
            );
        }
    }
    let v6: Vec<&Observed> = observed.iter().filter(|o| o.probe.v6).collect();
    if !v6.is_empty() {
        let agree = v6
            .iter()
            .filter(|o| o.allowed(opts.reject) == o.probe.expected)
            .count();
        let _ = writeln!(
            out,
            "\nIPv6: {agree} of {} flows as expected (same pairs and ports, over the pods' IPv6 addresses)",
            v6.len()
        );
    }
    let others: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.probe.cell.is_none() && !o.probe.v6)
        .collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\nServices and external hosts (IPv4):");
        for o in &others {
            let got = o.allowed(opts.reject);
            let _ = writeln!(
                out,
                "  {} {} -> {} {}/{}: observed {}, expected {}{}",
                if got == o.probe.expected { " " } else { "!" },
                o.probe.from,
                o.probe.to_label,
                o.probe.protocol,
                o.probe.dst.port(),
                describe(got, &o.outcome),
                describe(o.probe.expected, &Outcome::Ok),
                if got == o.probe.expected {
                    ""
                } else {
                    "   <- differs"
                }
            );
        }
    }
    let mut denied: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in observed
        .iter()
        .filter(|o| !o.probe.v6 && o.probe.expected == Some(false))
    {
        denied
            .entry(o.probe.reason.clone())
            .or_default()
            .insert(format!(
                "{} -> {} {}/{}",
                o.probe.from,
                o.probe.to_label,
                o.probe.protocol,
                o.probe.dst.port()
            ));
    }
    if !denied.is_empty() {
        let _ = writeln!(out, "\nDenied flows, and why:");
        for (why, flows) in &denied {
            let _ = writeln!(out, "  {why}");
            for f in flows {
                let _ = writeln!(out, "      {f}");
            }
        }
    }
    for o in observed {
        let got = o.allowed(opts.reject);
        if got == o.probe.expected || o.probe.expected.is_none() {
            report.matched += 1;
        } else {
            report.mismatches.push(format!(
                "{} -> {} {}/{} over IPv{}: observed {}, the engine expects {}",
                o.probe.from,
                o.probe.to_label,
                o.probe.protocol,
                o.probe.dst.port(),
                if o.probe.v6 { 6 } else { 4 },
                describe(got, &o.outcome),
                describe(o.probe.expected, &Outcome::Ok)
            ));
        }
    }
}

fn describe(allowed: Option<bool>, outcome: &Outcome) -> String {
    match allowed {
        Some(true) => "allowed".to_owned(),
        Some(false) => "denied".to_owned(),
        None => format!("unclear ({outcome})"),
    }
}

/// Checks what the tutorial says (the expectations of this step) against the engine; a
/// flow to a Service is decided on each of its backends, as after kube-proxy's DNAT.
fn check_tutorial(
    snap: &Snapshot,
    routes: &[ServiceRoute],
    expects: &[Expect],
    (step_files, last): (&[&str], bool),
    mtls: bool,
    out: &mut dyn Write,
    report: &mut Report,
) {
    let current = step_files.last().copied();
    let here: Vec<&Expect> = expects
        .iter()
        .filter(|e| match &e.step {
            Some(s) => Some(s.as_str()) == current,
            None => last,
        })
        .collect();
    if here.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nWhat the tutorial says:");
    for e in here {
        let proto = e.protocol();
        let decide = |src: Endpoint, dst: Endpoint, port: u16| {
            snap.authorize(&Flow {
                src,
                dst,
                protocol: proto,
                port,
                transport: transport_for(snap, &src, &dst, mtls),
            })
            .allowed()
        };
        let endpoint = |t: &Target| match t {
            Target::Ip(ip) => Some(snap.endpoint_for_ip(*ip)),
            Target::Pod(ns, name) => snap.endpoint_for_pod(ns, name, Some(false)),
            Target::Service(..) => None,
        };
        let src = Target::parse(&e.from).and_then(|t| endpoint(&t));
        let (verdict, note) = match (src, Target::parse(&e.to)) {
            (Some(src), Some(Target::Service(ns, name))) => {
                let key = format!("{ns}/{name}");
                let backends: Vec<&(String, SocketAddr)> = routes
                    .iter()
                    .filter(|r| {
                        r.service == key
                            && r.protocol == proto
                            && r.frontend.port() == e.port
                            && r.frontend.is_ipv4()
                    })
                    .flat_map(|r| r.backends.iter())
                    .collect();
                let verdicts: BTreeSet<bool> = backends
                    .iter()
                    .map(|(_, b)| decide(src, snap.endpoint_for_ip(b.ip()), b.port()))
                    .collect();
                match (backends.len(), verdicts.len()) {
                    (0, _) => (Some(false), " (the Service has no backends)".to_owned()),
                    (n, 1) => (
                        verdicts.first().copied(),
                        format!(" (on {n} backend{})", if n == 1 { "" } else { "s" }),
                    ),
                    (n, _) => (None, format!(" (its {n} backends disagree)")),
                }
            }
            (Some(src), Some(to)) => (
                endpoint(&to).map(|dst| decide(src, dst, e.port)),
                String::new(),
            ),
            _ => (None, String::new()),
        };
        let ok = verdict == Some(e.allowed);
        report.tutorial_checked += 1;
        let _ = writeln!(
            out,
            "  {} {} -> {} {proto}/{}: {}{note} — \"{}\"",
            if ok { "ok  " } else { "FAIL" },
            e.from,
            e.to,
            e.port,
            if e.allowed { "allowed" } else { "denied" },
            e.says
        );
        if !ok {
            report.tutorial_failed.push(format!(
                "tutorial: {} -> {} {proto}/{} should be {}{note}",
                e.from,
                e.to,
                e.port,
                if e.allowed { "allowed" } else { "denied" }
            ));
        }
    }
}

fn print_keep_help(topo: &Topology, cluster: &Cluster, workdir: &Path, out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "\nThe lab keeps running (--keep). Every pod is a network namespace; try the tutorials' commands in them:"
    );
    for (key, pod) in &topo.pods {
        let _ = writeln!(
            out,
            "  {key:<32} ip netns exec {}  ({})",
            pod.ns.name(),
            pod.ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some((key, pod)) = topo.pods.iter().next() {
        let target = cluster
            .pods
            .values()
            .find(|p| p.ports.iter().any(|c| c.protocol == Protocol::Tcp))
            .and_then(|p| {
                Some((
                    p.ips.first()?,
                    p.ports.iter().find(|c| c.protocol == Protocol::Tcp)?.port,
                ))
            });
        if let Some((ip, port)) = target {
            let _ = writeln!(
                out,
                "\nFor example, from {key}:\n  ip netns exec {} wget -O - -T 2 http://{ip}:{port}/\n  ip netns exec {} nc -zv -w 2 {ip} {port}",
                pod.ns.name(),
                pod.ns.name()
            );
        }
    }
    for svc in cluster.services.values() {
        if let Some(ip) = svc.cluster_ips.first() {
            let _ = writeln!(out, "  service {} is at {ip}", svc.key());
        }
    }
    let _ = writeln!(
        out,
        "\nnetward's logs and the manifests it enforces (edit them: it reloads) are in {}.\nRemove the lab with: netward lab --cleanup",
        workdir.display()
    );
}

/// Stops every process in lab namespaces and deletes the namespaces (`netward lab --cleanup`).
pub fn cleanup(out: &mut dyn Write) -> usize {
    let mut names = Vec::new();
    if let Ok(list) = netns::host(&["ip", "netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("").to_owned();
            if name.starts_with(netns::PREFIX) {
                names.push(name);
            }
        }
    }
    // netward first (SIGTERM: it removes its rules), then everything else.
    for name in &names {
        if let Ok(pids) = netns::host(&["ip", "netns", "pids", name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let removed = netns::remove_all();
    for name in &removed {
        let _ = writeln!(out, "removed network namespace {name}");
    }
    removed.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    const SCENARIO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {a: b}}
    spec:
      containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: x, ports: [{containerPort: 9100}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
"#;

    /// What the engine and the network agree on for each pod.
    fn plan(c: &Cluster) -> Vec<String> {
        c.pods
            .values()
            .map(|p| {
                format!(
                    "{} {:?} {:?} {:?} {:?} {}",
                    p.key(),
                    p.ips,
                    p.node,
                    p.labels,
                    p.ports,
                    p.host_network
                )
            })
            .collect()
    }

    /// The node agents read the written directory with the same reader: they must see
    /// exactly the pods the lab planned (workload pods with their addresses and nodes),
    /// not the workload expanded a second time.
    #[test]
    fn node_agents_read_exactly_the_pods_the_lab_planned() {
        let mut all = Manifests::default();
        all.read_str(Path::new("00-app.yaml"), SCENARIO);
        all.finish();
        assert!(all.errors.is_empty(), "{:?}", all.errors);
        let mut cluster = all.cluster.clone();
        topology::assign_addresses(&mut cluster);
        // web-0, web-1, client, and the DaemonSet's pod on the one node (node-b).
        assert_eq!(cluster.pods.len(), 4);
        assert!(
            cluster
                .pods
                .contains_key(&("shop".to_owned(), "agent-node-b".to_owned()))
        );

        let dir = tempfile::tempdir().unwrap();
        write_step(dir.path(), "00-app.yaml", SCENARIO, &cluster, None).unwrap();
        let mut read = Manifests::read_paths(&[dir.path()]);
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        assert!(read.workloads.is_empty(), "{:?}", read.workloads);
        assert_eq!(plan(&read.cluster), plan(&cluster));
        // And the engine's snapshot of it (as `engine_snapshot` makes it) is the lab's.
        topology::assign_addresses(&mut read.cluster);
        assert_eq!(plan(&read.cluster), plan(&cluster));
    }

    #[test]
    fn a_file_with_only_a_workload_is_a_step() {
        let deployment = SCENARIO.split("---").next().unwrap();
        assert!(!is_only_netward(&format!(
            "{deployment}---\napiVersion: netward.io/v1\nkind: Expectations\nspec: {{expect: []}}\n"
        )));
        assert!(is_only_netward(
            "apiVersion: netward.io/v1\nkind: Expectations\nspec: {expect: []}\n"
        ));
    }
}
