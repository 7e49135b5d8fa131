//! Datapath benchmark: the same workloads through direct kernel forwarding, netward
//! (splice), HAProxy (transparent, spliced) and netward's copy loop, interleaved, in a
//! lab node with a client pod and a server pod. See `benches/README.md` ("Datapath").
//!
//! Needs root (network namespaces, nftables, iptables), `iperf3` and `haproxy` (installed
//! with apt when missing), and a release build of `netward` next to this binary.
#![forbid(unsafe_code)]

mod manifests;
mod paths;
mod procfs;
mod report;
mod servers;
mod stats;
mod two_node;
mod work;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use netward_e2e::Lab;
use netward_proxy::lab::netns::Netns;

use crate::manifests::{CLIENT, NODE, NODE_B, SERVER, SERVER_IP};
use crate::paths::{Env, PathKind, Proxy};
use crate::servers::{ECHO_PORT, HOLD_PORT, Iperf, RR_PORT, Servers};
use crate::two_node::{Env2n, Pair};
use crate::work::Amount;

/// Datapath benchmark (root): direct vs netward vs HAProxy vs netward --no-splice.
#[derive(Parser, Debug, Clone)]
#[command(name = "netward-datapath-bench")]
struct Args {
    /// Tiny sizes, one round: only check that every path moved the bytes correctly.
    #[arg(long)]
    smoke: bool,
    /// Rounds; each runs every path once, in order (A B C D E A B C D E ...).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Paths to run, comma-separated (each lab's direct path is always run first: it is
    /// the reference). Single-node: direct, netward, haproxy, copy, netward-scale
    /// (the default). Two-node: direct-2n, netward-2n-plaintext, netward-2n-mtls,
    /// haproxy-2n-tls (the default with --two-node). --smoke runs both groups.
    #[arg(long, value_delimiter = ',')]
    paths: Option<Vec<String>>,
    /// Run the two-node paths (issue #9: the mTLS tunnel between node proxies): client
    /// pod on node-a, server pod on node-b. Results go to `<date>-mtls.{md,json}`.
    #[arg(long)]
    two_node: bool,
    /// Name the result files `<date>-NAME.{md,json}` instead of `<date>-<commit>`.
    #[arg(long)]
    name: Option<String>,
    /// Extra arguments for both nodes' `netward run` on `netward-2n-mtls`, comma-separated
    /// (experiments, e.g. `--tunnel-streams-per-conn,1`).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    mtls_args: Vec<String>,
    /// iperf3 seconds per bulk run.
    #[arg(long, default_value_t = 3)]
    bulk_secs: u32,
    /// Connections per connection-rate run.
    #[arg(long, default_value_t = 3000)]
    conns: usize,
    /// Concurrent connections in the connection-rate run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Round trips per persistent-connection latency run.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// New connections per new-connection latency run.
    #[arg(long, default_value_t = 2000)]
    new_conns: usize,
    /// Idle connections held for the memory figures (a proxy needs up to 6 descriptors
    /// each: the default fits a hard RLIMIT_NOFILE of 20,000).
    #[arg(long, default_value_t = 3000)]
    idle: usize,
    /// The `netward` binary (default: next to this one).
    #[arg(long)]
    netward: Option<PathBuf>,
    /// Another `netward` build for the `netward-before` path (e.g. main before a change),
    /// so that before and after are measured interleaved in one run.
    #[arg(long)]
    netward_before: Option<PathBuf>,
    /// Where to write `<date>-<commit>.md` and `.json` (default: benches/results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not write result files (print the table only).
    #[arg(long)]
    no_write: bool,
    /// Workloads to run, comma-separated: check, bulk, conn, ping, new, idle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "check,bulk,conn,ping,new,idle"
    )]
    workloads: Vec<String>,
    /// Record each proxy during each workload with `perf record -g` (cpu-clock) into
    /// `DIR/perf-<path>-<workload>.data`.
    #[arg(long)]
    perf: Option<PathBuf>,
}

/// The sizes of one run of every workload.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Sizes {
    check_bytes: u64,
    bulk: Amount,
    conns: usize,
    concurrency: usize,
    ping_warmup: usize,
    pings: usize,
    new_conns: usize,
    idle: usize,
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Seconds(v) => s.serialize_str(&format!("{v} s")),
            Amount::Bytes(v) => s.serialize_str(&format!("{v} B")),
        }
    }
}

impl Sizes {
    fn of(args: &Args) -> Sizes {
        if args.smoke {
            Sizes {
                check_bytes: 4 << 20,
                bulk: Amount::Bytes(8 << 20),
                conns: 200,
                concurrency: 16,
                ping_warmup: 20,
                pings: 200,
                new_conns: 50,
                idle: 200,
            }
        } else {
            Sizes {
                check_bytes: 32 << 20,
                bulk: Amount::Seconds(args.bulk_secs),
                conns: args.conns,
                concurrency: args.concurrency,
                ping_warmup: 1000,
                pings: args.pings,
                new_conns: args.new_conns,
                idle: args.idle,
            }
        }
    }
}

/// The figures of one path in one round, by metric id.
type Metrics = BTreeMap<&'static str, f64>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netward-datapath-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = ["iperf3", "haproxy", "nft", "ss"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    let packages: Vec<&str> = missing
        .iter()
        .map(|t| match *t {
            "nft" => "nftables",
            "ss" => "iproute2",
            other => other,
        })
        .collect();
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", packages.join(" "));
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    ensure!(
        status.success(),
        "apt-get install {} failed",
        packages.join(" ")
    );
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn netward_bin(args: &Args) -> Result<PathBuf> {
    let bin = match &args.netward {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the bench binary")?
            .join("netward"),
    };
    ensure!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p netward-proxy --bin netward` (or pass --netward)",
        bin.display()
    );
    Ok(bin)
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces, nftables, iptables)"
    );
    let started = Instant::now();
    ensure_tools()?;
    let netward = netward_bin(args)?;
    let kinds = resolve_kinds(args)?;
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let sizes = Sizes::of(args);
    // Idle connections hold two sockets each here (client and server) and up to six
    // descriptors each in a proxy (two sockets, two pipes); the proxies inherit the limit.
    // Raising the hard limit needs CAP_SYS_RESOURCE, so only the soft one is raised.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .context("raising RLIMIT_NOFILE")?;
    let needed = sizes.idle as u64 * 6 + 200;
    ensure!(
        needed <= hard,
        "--idle {} needs {needed} descriptors in a proxy (6 per connection) but the hard \
         RLIMIT_NOFILE is {hard}: lower --idle or raise `ulimit -Hn`",
        sizes.idle
    );
    netward_proxy::lab::netns::sweep_stale();
    let machine = report::Machine::probe();
    eprintln!(
        "datapath bench: {} round(s) × {:?}, {}; {}",
        rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        if args.smoke { "smoke" } else { "full" },
        machine.summary()
    );

    let mut results: Vec<(PathKind, usize, Result<Metrics, String>)> = Vec::new();
    let single: Vec<PathKind> = kinds.iter().copied().filter(|k| !k.two_node()).collect();
    let two: Vec<PathKind> = kinds.iter().copied().filter(|k| k.two_node()).collect();
    let mut group_times = Vec::new();
    if !single.is_empty() {
        let t = Instant::now();
        run_single_node(&single, rounds, &sizes, &netward, args, &mut results)?;
        group_times.push(("single-node", t.elapsed()));
    }
    if !two.is_empty() {
        let t = Instant::now();
        run_two_node(&two, rounds, &sizes, &netward, args, &mut results)?;
        group_times.push(("two-node", t.elapsed()));
    }
    let elapsed = started.elapsed();
    let failures = results.iter().filter(|r| r.2.is_err()).count();
    if args.smoke {
        eprintln!(
            "smoke: every path moved every byte correctly ({} paths, {:.1} s: {})",
            kinds.len(),
            elapsed.as_secs_f64(),
            group_times
                .iter()
                .map(|(g, d)| format!("{g} {:.1} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let rep = report::Report::new(machine, &sizes, rounds, &kinds, &results, elapsed);
    let md = rep.markdown();
    println!("{md}");
    if !args.no_write {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../results"));
        std::fs::create_dir_all(&out)?;
        let stem = match &args.name {
            Some(n) => format!("{}-{n}", rep.date_stem()),
            None if single.is_empty() => format!("{}-mtls", rep.date_stem()),
            None => format!("{}-{}", rep.date_stem(), rep.commit_short()),
        };
        let md_path = out.join(format!("{stem}.md"));
        let json_path = out.join(format!("{stem}.json"));
        std::fs::write(&md_path, &md)?;
        std::fs::write(&json_path, serde_json::to_string_pretty(&rep.json())?)?;
        eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    }
    if failures > 0 {
        bail!("{failures} path run(s) failed (see the table)");
    }
    Ok(())
}

/// The paths to run, each lab's reference (`direct`, `direct-2n`) first in its group.
/// Default: the single-node paths; `--two-node`: the two-node ones; `--smoke`: both.
fn resolve_kinds(args: &Args) -> Result<Vec<PathKind>> {
    let mut asked: Vec<PathKind> = match &args.paths {
        Some(p) => p
            .iter()
            .map(|p| PathKind::parse(p))
            .collect::<Result<_>>()?,
        None if args.two_node => PathKind::TWO_NODE.to_vec(),
        None if args.smoke => PathKind::SINGLE_NODE
            .into_iter()
            .chain(PathKind::TWO_NODE)
            .collect(),
        None => PathKind::SINGLE_NODE.to_vec(),
    };
    if args.two_node {
        asked.retain(|k| k.two_node());
        ensure!(
            !asked.is_empty(),
            "--two-node with no two-node path in --paths"
        );
    }
    let mut kinds = Vec::new();
    for group in [false, true] {
        let mine: Vec<PathKind> = asked
            .iter()
            .copied()
            .filter(|k| k.two_node() == group)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let reference = mine[0].reference();
        kinds.push(reference);
        for k in mine {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
    }
    Ok(kinds)
}

const SYSCTLS: &str =
    "sysctl -qw net.ipv4.tcp_tw_reuse=1 'net.ipv4.ip_local_port_range=20000 65000'";

/// The single-node lab: every path through `node-a`, rounds interleaved.
fn run_single_node(
    kinds: &[PathKind],
    rounds: usize,
    sizes: &Sizes,
    netward: &Path,
    args: &Args,
    results: &mut Vec<(PathKind, usize, Result<Metrics, String>)>,
) -> Result<()> {
    let base = manifests::base();
    let lab = Lab::single_node(&[("00-bench.yaml", &base)]);
    let workdir = tempfile::tempdir()?;
    let scale_dir = workdir.path().join("scale-manifests");
    std::fs::create_dir(&scale_dir)?;
    for entry in std::fs::read_dir(lab.dir.path())? {
        let entry = entry?;
        std::fs::copy(entry.path(), scale_dir.join(entry.file_name()))?;
    }
    std::fs::write(scale_dir.join("50-scale.yaml"), manifests::scale())?;

    let node = lab.node();
    let client = lab.pod(CLIENT);
    let server = lab.pod(SERVER);
    node.sh(SYSCTLS)?;
    client.sh(SYSCTLS)?;
    let bench_servers = Servers::start(server)?;
    let iperf_server = Iperf::start(server, &workdir.path().join("iperf3-server.log"))?;
    let env = Env {
        node,
        netward,
        netward_before: args.netward_before.as_deref(),
        manifests: lab.dir.path(),
        scale_manifests: &scale_dir,
        workdir: workdir.path(),
    };
    let server_ip: IpAddr = SERVER_IP.parse().context("server address")?;
    for round in 0..rounds {
        for kind in round_order(kinds, round) {
            let t = Instant::now();
            set_early_demux(node, kind != PathKind::Direct)?;
            let r = (|| {
                let mut m = Metrics::new();
                let t = Instant::now();
                let mut proxy = Proxy::start(kind, &env)?;
                m.insert("startup_s", t.elapsed().as_secs_f64());
                let cpu = || proxy.cpu_seconds();
                let running = Running {
                    kind,
                    target: server_ip,
                    cpu: &cpu,
                    pids: proxy.pid().into_iter().collect(),
                    idle: Some((&proxy, node)),
                };
                measure(&running, client, sizes, workdir.path(), args, &mut m)?;
                proxy.stop()?;
                Ok::<_, anyhow::Error>(m)
            })();
            report_run(kind, round, rounds, t, r, args, results)?;
            reset_node(node)?;
        }
    }
    drop(iperf_server);
    drop(bench_servers);
    Ok(())
}

/// The two-node lab (issue #9): client pod on `node-a`, server pod on `node-b`.
fn run_two_node(
    kinds: &[PathKind],
    rounds: usize,
    sizes: &Sizes,
    netward: &Path,
    args: &Args,
    results: &mut Vec<(PathKind, usize, Result<Metrics, String>)>,
) -> Result<()> {
    let plain = manifests::two_node(false);
    let lab = Lab::build(&[("00-bench.yaml", &plain)], false);
    let workdir = tempfile::tempdir()?;
    let strict_dir = workdir.path().join("strict-manifests");
    std::fs::create_dir(&strict_dir)?;
    for entry in std::fs::read_dir(lab.dir.path())? {
        let entry = entry?;
        std::fs::copy(entry.path(), strict_dir.join(entry.file_name()))?;
    }
    std::fs::write(strict_dir.join("00-bench.yaml"), manifests::two_node(true))?;
    let pki = workdir.path().join("pki");
    two_node::make_pki(&pki)?;

    let nodes = &lab.topo.nodes;
    ensure!(
        nodes.len() == 2 && nodes[0].name == NODE && nodes[1].name == NODE_B,
        "the two-node lab has nodes {:?}",
        nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
    let client = lab.pod(CLIENT);
    let server = lab.pod(SERVER);
    for ns in [&nodes[0].ns, &nodes[1].ns, client] {
        ns.sh(SYSCTLS)?;
    }
    let bench_servers = Servers::start(server)?;
    let iperf_server = Iperf::start(server, &workdir.path().join("iperf3-server-2n.log"))?;
    let env = Env2n {
        nodes: [&nodes[0].ns, &nodes[1].ns],
        node_ips: [nodes[0].ip4, nodes[1].ip4],
        netward,
        manifests_plain: lab.dir.path(),
        manifests_strict: &strict_dir,
        pki: &pki,
        workdir: workdir.path(),
        mtls_args: &args.mtls_args,
    };
    if args.workloads.iter().any(|w| w == "idle") {
        eprintln!("two-node paths: the idle-memory workload is single-node only; skipped");
    }
    for round in 0..rounds {
        for kind in round_order(kinds, round) {
            let t = Instant::now();
            for ns in env.nodes {
                set_early_demux(ns, kind != PathKind::Direct2n)?;
            }
            let r = (|| {
                let mut m = Metrics::new();
                let t = Instant::now();
                let mut pair = Pair::start(kind, &env, client)?;
                m.insert("startup_s", t.elapsed().as_secs_f64());
                let cpu = || pair.cpu_seconds();
                let running = Running {
                    kind,
                    target: env.target(kind)?,
                    cpu: &cpu,
                    pids: pair.pids(),
                    idle: None,
                };
                measure(&running, client, sizes, workdir.path(), args, &mut m)
                    .map_err(|e| anyhow::anyhow!("{e:#}{}", pair.logs()))?;
                pair.stop()?;
                Ok::<_, anyhow::Error>(m)
            })();
            report_run(kind, round, rounds, t, r, args, results)?;
            for ns in env.nodes {
                reset_node(ns)?;
            }
        }
    }
    drop(iperf_server);
    drop(bench_servers);
    Ok(())
}

/// Logs one path run and records it; in smoke mode a failure ends the bench.
fn report_run(
    kind: PathKind,
    round: usize,
    rounds: usize,
    t: Instant,
    r: Result<Metrics>,
    args: &Args,
    results: &mut Vec<(PathKind, usize, Result<Metrics, String>)>,
) -> Result<()> {
    match &r {
        Ok(m) => eprintln!(
            "round {}/{rounds} {:<20} {:>5.1} s  {}",
            round + 1,
            kind.name(),
            t.elapsed().as_secs_f64(),
            brief(m)
        ),
        Err(e) => eprintln!(
            "round {}/{rounds} {:<20} FAILED: {e:#}",
            round + 1,
            kind.name()
        ),
    }
    if args.smoke
        && let Err(e) = r
    {
        return Err(e.context(format!("smoke: path {}", kind.name())));
    }
    results.push((kind, round, r.map_err(|e| format!("{e:#}"))));
    Ok(())
}

/// The order of one round: the reference first, then the other paths, reversed in odd
/// rounds. Later runs in a round find the namespaces more worn (TIME_WAIT sockets, the
/// client's port search), so a fixed order would favour the paths that come first.
fn round_order(kinds: &[PathKind], round: usize) -> Vec<PathKind> {
    let (reference, mut rest): (Vec<PathKind>, Vec<PathKind>) =
        kinds.iter().partition(|k| k.reference() == **k);
    if round % 2 == 1 {
        rest.reverse();
    }
    reference.into_iter().chain(rest).collect()
}

/// A one-line summary of a path's run, for the progress log.
fn brief(m: &Metrics) -> String {
    [
        ("bulk1_gbps", "bulk1 ", " Gb/s", 1),
        ("bulk8_gbps", "bulk8 ", " Gb/s", 1),
        ("conn_rate", "", " conn/s", 0),
        ("pp_p50", "p50 ", " µs", 0),
        ("pp_p99", "p99 ", " µs", 0),
        ("new_p50", "new p50 ", " µs", 0),
        ("idle_rss_per_conn", "idle rss ", " B/conn", 0),
    ]
    .iter()
    .filter_map(|(id, pre, unit, d)| m.get(id).map(|v| format!("{pre}{v:.d$}{unit}", d = *d)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// What the workloads need from a running path.
struct Running<'a> {
    kind: PathKind,
    /// Where the client connects: the server pod, or HAProxy's address on node A.
    target: IpAddr,
    /// CPU seconds of the path's proxy processes so far (`None` for direct).
    cpu: &'a dyn Fn() -> Option<f64>,
    /// The proxy processes, for `--perf`.
    pids: Vec<u32>,
    /// The single-node proxy and its node, for the idle-memory figures.
    idle: Option<(&'a Proxy, &'a Netns)>,
}

/// Every workload through one running path: check, then measure.
fn measure(
    run: &Running<'_>,
    client: &Netns,
    sizes: &Sizes,
    workdir: &Path,
    args: &Args,
    m: &mut Metrics,
) -> Result<()> {
    let kind = run.kind;
    let target = run.target;
    let echo = SocketAddr::new(target, ECHO_PORT);
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    let perf = |w: &str| {
        let dir = args.perf.as_ref()?;
        if run.pids.is_empty() {
            return None;
        }
        Profiler::start(
            &run.pids,
            &dir.join(format!("perf-{}-{w}.data", kind.name())),
        )
        .map_err(|e| eprintln!("warning: perf: {e:#}"))
        .ok()
    };

    // Correctness first: one stream and eight, checksummed both ways.
    if wants("check") {
        let moved = work::checked_echo(client, echo, 1, sizes.check_bytes)
            .and_then(|a| Ok(a + work::checked_echo(client, echo, 8, sizes.check_bytes / 8)?))
            .with_context(|| format!("{}: checksummed echo", kind.name()))?;
        m.insert("checked_bytes", moved as f64);
    }

    if wants("bulk") {
        for (streams, id, cpu_id) in [
            (1, "bulk1_gbps", "bulk1_cpu_s_per_gb"),
            (8, "bulk8_gbps", "bulk8_cpu_s_per_gb"),
        ] {
            let _perf = perf(&format!("bulk{streams}"));
            let cpu0 = (run.cpu)();
            let out = workdir.join(format!("iperf-{}-{streams}.json", kind.name()));
            let b = work::iperf(client, &target.to_string(), streams, sizes.bulk, &out)
                .with_context(|| format!("{}: iperf3 -P {streams}", kind.name()))?;
            m.insert(id, b.bits_per_second / 1e9);
            if let (Some(c0), Some(c1)) = (cpu0, (run.cpu)()) {
                m.insert(cpu_id, (c1 - c0) / (b.bytes / 1e9));
            }
        }
    }

    if wants("conn") {
        let _perf = perf("conn");
        let cpu0 = (run.cpu)();
        let accepts0 = crate::servers::RR_ACCEPTS.load(std::sync::atomic::Ordering::Relaxed);
        let rate = work::conn_rate(
            client,
            SocketAddr::new(target, RR_PORT),
            sizes.conns,
            sizes.concurrency,
        )
        .with_context(|| format!("{}: connection rate", kind.name()))?;
        m.insert("conn_rate", rate);
        // Late closes of the last connections are counted by then: the client waited for
        // every response, and the server counts at accept.
        let accepts =
            crate::servers::RR_ACCEPTS.load(std::sync::atomic::Ordering::Relaxed) - accepts0;
        m.insert(
            "conn_upstreams_per_conn",
            accepts as f64 / sizes.conns as f64,
        );
        if let (Some(c0), Some(c1)) = (cpu0, (run.cpu)()) {
            m.insert("conn_cpu_s_per_1k", (c1 - c0) / sizes.conns as f64 * 1000.0);
        }
    }

    if wants("ping") {
        let _perf = perf("ping");
        let mut pp = work::ping_pong(client, echo, sizes.ping_warmup, sizes.pings)
            .with_context(|| format!("{}: ping-pong", kind.name()))?;
        for (q, id) in [(0.5, "pp_p50"), (0.99, "pp_p99"), (0.999, "pp_p999")] {
            if let Some(v) = stats::percentile(&mut pp, q) {
                m.insert(id, v);
            }
        }
    }

    if wants("new") {
        let _perf = perf("new");
        let mut nc = work::new_conn_latency(client, echo, sizes.new_conns)
            .with_context(|| format!("{}: new-connection latency", kind.name()))?;
        for (q, id) in [(0.5, "new_p50"), (0.99, "new_p99"), (0.999, "new_p999")] {
            if let Some(v) = stats::percentile(&mut nc, q) {
                m.insert(id, v);
            }
        }
    }

    if wants("idle")
        && let Some((proxy, node)) = run.idle
    {
        idle_memory(m, proxy, node, client, sizes.idle, target)
            .with_context(|| format!("{}: idle connections", kind.name()))?;
    }
    Ok(())
}

/// `perf record -g -e cpu-clock` on the proxy processes; stopped (SIGINT) when dropped.
struct Profiler {
    child: std::process::Child,
}

impl Profiler {
    fn start(pids: &[u32], out: &Path) -> Result<Profiler> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "4000", "-g", "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf record")?;
        // perf needs a moment to attach before the workload starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Profiler { child })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory at `n` idle established connections: the proxy's RSS and descriptors, socket
/// memory in the node's namespace (`ss -m`), and the kernel's slab (whole machine).
fn idle_memory(
    m: &mut Metrics,
    proxy: &Proxy,
    node: &Netns,
    client: &Netns,
    n: usize,
    server_ip: std::net::IpAddr,
) -> Result<()> {
    let settle = Duration::from_millis(500);
    std::thread::sleep(settle);
    let pid = proxy.pid();
    let rss0 = pid.and_then(|p| procfs::status_bytes(p, "VmRSS"));
    let anon0 = pid.and_then(|p| procfs::status_bytes(p, "RssAnon"));
    let fds0 = pid.and_then(procfs::fd_counts);
    let slab0 = procfs::meminfo_bytes("Slab");
    let (_, sk0) = procfs::socket_memory(node);
    let conns = work::open_idle(client, SocketAddr::new(server_ip, HOLD_PORT), n)?;
    std::thread::sleep(settle);
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / n as f64),
        _ => None,
    };
    let mut put = |id, v: Option<f64>| {
        if let Some(v) = v {
            m.insert(id, v);
        }
    };
    put(
        "idle_rss_per_conn",
        per(rss0, pid.and_then(|p| procfs::status_bytes(p, "VmRSS"))),
    );
    put(
        "idle_anon_per_conn",
        per(anon0, pid.and_then(|p| procfs::status_bytes(p, "RssAnon"))),
    );
    put(
        "idle_slab_per_conn",
        per(slab0, procfs::meminfo_bytes("Slab")),
    );
    let (sockets, sk1) = procfs::socket_memory(node);
    put(
        "idle_skmem_per_conn",
        Some((sk1 as f64 - sk0 as f64) / n as f64),
    );
    put("idle_node_sockets", Some(sockets as f64));
    if let (Some(f0), Some(f1)) = (fds0, pid.and_then(procfs::fd_counts)) {
        put(
            "idle_fds_per_conn",
            Some((f1.2 as f64 - f0.2 as f64) / n as f64),
        );
        put(
            "idle_pipes_per_conn",
            Some((f1.1 as f64 - f0.1 as f64) / n as f64),
        );
    }
    if let Some(p) = pid {
        put(
            "idle_rss_total",
            procfs::status_bytes(p, "VmRSS").map(|v| v as f64),
        );
    }
    drop(conns);
    // Let the proxy see every close before the next workload or path.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if procfs::socket_memory(node).0 == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("connections still established in the node 30 s after the clients closed")
}

/// The proxies leave TIME_WAIT sockets in the node's namespace (their upstream sockets
/// carry the client's address; their client-facing ones the server's) for 60 s. With
/// early demux on, a forwarded packet whose 4-tuple matches one gets `skb->sk` set, and
/// `ip_forward` drops it: a `direct` connection reusing such a port would time out. So
/// `direct` runs with early demux off (it only serves local delivery); the proxies, which
/// terminate TCP in the node, keep the default.
fn set_early_demux(node: &Netns, on: bool) -> Result<()> {
    let v = u8::from(on);
    node.sh(&format!(
        "sysctl -qw net.ipv4.ip_early_demux={v} net.ipv4.tcp_early_demux={v}"
    ))?;
    Ok(())
}

/// Leaves the node with no rules at all, so that `direct` is plain forwarding (the
/// proxies remove their own rules; iptables-nft leaves its empty builtin chains).
fn reset_node(node: &Netns) -> Result<()> {
    node.exec(&["nft", "flush", "ruleset"])?;
    Ok(())
}
