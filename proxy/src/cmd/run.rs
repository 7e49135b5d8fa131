//! `netward run`: the datapath in this network namespace, with pods and policies from
//! manifest files (reloaded when they change); and `netward cleanup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use netward_controller::{Manifests, Snapshot, load};
use netward_iptables::{CommandRunner, Config as RulesConfig};
use netward_proxy::datapath::{self, Options};
use netward_proxy::metrics::Metrics;
use netward_proxy::relay::RelayOptions;
use netward_proxy::{admin, audit};
use tokio::sync::watch;
use tracing::{error, info};

/// EX_USAGE: a bad flag or configuration value.
pub(crate) const EXIT_USAGE: u8 = 64;
/// EX_DATAERR: the manifests cannot be read at all.
const EXIT_DATAERR: u8 = 65;

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Manifest files or directories with the Namespaces, Pods, Nodes, Services and
    /// NetworkPolicies to enforce. Reloaded when they change.
    #[arg(long = "manifests", short = 'f', required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// This node's name: its pods are those whose spec.nodeName matches (all pods if absent).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Refuse denied TCP connections with a reset instead of dropping their SYN.
    #[arg(long)]
    reject: bool,
    /// Audit log: a file (rotated by size), `-` for stdout, or `none`.
    #[arg(long, default_value = "-")]
    audit_log: String,
    /// Rotate the audit log file when it would pass this many bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    audit_max_bytes: u64,
    /// Rotated audit log files to keep (FILE.1 ... FILE.N).
    #[arg(long, default_value_t = 5)]
    audit_keep: usize,
    /// Also write an `open` record when an allowed TCP connection starts.
    #[arg(long)]
    audit_open: bool,
    /// Denied attempts between the same source IP, destination IP and port within this
    /// many seconds are aggregated into one record with a count.
    #[arg(long, default_value_t = 10)]
    audit_deny_window_secs: u64,
    /// Port of the transparent TCP listener.
    #[arg(long, default_value_t = netward_iptables::config::TPROXY_PORT)]
    tproxy_port: u16,
    /// Move bytes with a copy loop instead of splice(2) (for comparison).
    #[arg(long)]
    no_splice: bool,
    /// Close connections idle for this many seconds.
    #[arg(long, default_value_t = 3600)]
    idle_timeout_secs: u64,
    /// Do not intercept IPv6.
    #[arg(long)]
    no_ipv6: bool,
    /// Keep the interception rules installed on exit (fail closed until the next start).
    #[arg(long)]
    keep_rules: bool,
    /// Address of the admin server (/metrics, /healthz, /readyz); `none` to disable.
    #[arg(long, default_value = "127.0.0.1:15021")]
    admin_addr: String,
    /// Serve /debug/snapshot on this loopback address (e.g. 127.0.0.1:15022). Off by
    /// default; an address that is not loopback is a usage error (exit 64).
    #[arg(long)]
    debug_addr: Option<String>,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    reload_ms: u64,
    /// Take part in the mTLS tunnel between node proxies: the directory with this
    /// node's `node.pem`, `node-key.pem` and `trust-bundle.pem` (`netward ca issue`).
    /// Needs --node, --tunnel-listen and --tunnel-peers.
    #[arg(long, requires_all = ["node", "tunnel_listen", "tunnel_peers"])]
    mtls_identity: Option<PathBuf>,
    /// The SPIFFE trust domain of node identities.
    #[arg(long, default_value = netward_proxy::mtls::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Where this node's tunnel listener binds: the node's IP and port 15008.
    #[arg(long)]
    tunnel_listen: Option<std::net::SocketAddr>,
    /// The directory where nodes advertise their tunnel listeners (`<node>.tunnel`).
    #[arg(long)]
    tunnel_peers: Option<PathBuf>,
    /// Live streams per pooled TLS connection before another is opened.
    #[arg(long, default_value_t = 100)]
    tunnel_streams_per_conn: usize,
    /// Tunnel server: TLS handshakes in flight at once (unauthenticated work); more
    /// connections are closed at once, counted and audited.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    tunnel_max_handshakes: u32,
    /// Tunnel server: live connections from one peer node; more are refused.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    tunnel_max_conns_per_node: u32,
}

/// The tunnel options from the flags; `Err` names the flag.
fn mtls_options(
    args: &RunArgs,
    rules: &RulesConfig,
) -> Result<Option<netward_proxy::mesh::MtlsOptions>, String> {
    use netward_proxy::mtls::{identity::TlsIdentity, tunnel::TunnelConfig};
    let Some(dir) = &args.mtls_identity else {
        return Ok(None);
    };
    let (Some(node), Some(listen), Some(peers)) =
        (&args.node, args.tunnel_listen, &args.tunnel_peers)
    else {
        return Err("--mtls-identity needs --node, --tunnel-listen and --tunnel-peers".to_owned());
    };
    let identity = TlsIdentity::load(dir, &args.trust_domain, node)
        .map_err(|e| format!("--mtls-identity {}: {e}", dir.display()))?;
    let tunnel = TunnelConfig {
        max_streams_per_conn: args.tunnel_streams_per_conn,
        max_handshakes: args.tunnel_max_handshakes as usize,
        max_conns_per_node: args.tunnel_max_conns_per_node as usize,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        mark: Some(rules.marks.bypass),
        bind: Some(listen.ip()),
        trust_domain: args.trust_domain.clone(),
        ..TunnelConfig::default()
    };
    tunnel.validate().map_err(|e| e.to_string())?;
    Ok(Some(netward_proxy::mesh::MtlsOptions {
        identity,
        listen,
        peers: netward_proxy::mesh::PeerSource::Dir(peers.clone()),
        tunnel,
    }))
}

#[derive(Args)]
pub(crate) struct CleanupArgs {
    /// Only list what netward has installed.
    #[arg(long)]
    dry_run: bool,
}

/// Reads the manifests; `Err` when they cannot be trusted (anything but NetworkPolicy
/// validation errors: those policies fail closed and are only reported).
fn load_manifests(paths: &[PathBuf]) -> Result<Manifests, Vec<load::Error>> {
    let m = Manifests::read_paths(paths);
    let (policy_errors, fatal): (Vec<_>, Vec<_>) = m.errors.iter().partition(
        |e| matches!(e, load::Error::Object { object, .. } if object.starts_with("NetworkPolicy ")),
    );
    for e in &policy_errors {
        error!(error = %e, "invalid NetworkPolicy: it isolates the pods it selects and allows nothing");
    }
    if fatal.is_empty() {
        Ok(m)
    } else {
        Err(m.errors.into_iter().filter(|e| !matches!(e, load::Error::Object { object, .. } if object.starts_with("NetworkPolicy "))).collect())
    }
}

/// A cheap fingerprint of the manifest files: paths, sizes and modification times.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        match std::fs::metadata(&p) {
            Ok(md) if md.is_dir() => {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            }
            Ok(md) => out.push((p, md.len(), md.modified().ok())),
            Err(_) => out.push((p, 0, None)),
        }
    }
    out.sort();
    out
}

/// Raises the open-file limit to its hard maximum: each relayed connection holds two
/// sockets and up to two pipes (four fds).
pub(crate) fn run(args: &RunArgs) -> ExitCode {
    super::raise_fd_limit();
    let rules = RulesConfig {
        tcp_port: args.tproxy_port,
        ipv6: !args.no_ipv6,
        ..RulesConfig::default()
    };
    if let Err(e) = rules.validate() {
        eprintln!("netward: error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let debug_addr = match args.debug_addr.as_deref() {
        None => None,
        Some(v) => match admin::parse_debug_addr(v) {
            Ok(a) => Some(a),
            Err(reason) => {
                eprintln!("netward: error: --debug-addr {v:?}: {reason}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let mtls = match mtls_options(args, &rules) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("netward: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let audit_output = match args.audit_log.as_str() {
        "none" => None,
        "-" => Some(audit::Output::Stdout),
        path => Some(audit::Output::File {
            path: PathBuf::from(path),
            max_bytes: args.audit_max_bytes,
            keep: args.audit_keep,
        }),
    };
    let (sink, writer) = match audit_output {
        None => (audit::Sink::disabled(), None),
        Some(output) => {
            let cfg = audit::Config {
                output,
                deny_window: Duration::from_secs(args.audit_deny_window_secs),
                ..audit::Config::default()
            };
            match audit::start(cfg, args.node.as_deref()) {
                Ok((sink, writer)) => (sink, Some(writer)),
                Err(e) => {
                    eprintln!("netward: error: --audit-log {}: {e}", args.audit_log);
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    };
    let manifests = match load_manifests(&args.manifests) {
        Ok(m) => m,
        Err(errors) => {
            for e in &errors {
                eprintln!("netward: error: {e}");
            }
            return ExitCode::from(EXIT_DATAERR);
        }
    };
    let mut generation = 1;
    let snap = Snapshot::compile(&manifests.cluster);
    info!(manifests = %manifests, node = args.node.as_deref().unwrap_or("(all pods)"), "policy loaded");
    let (tx, rx) = watch::channel(Arc::new(snap));
    let metrics = Arc::new(Metrics::default());
    if args.admin_addr != "none" {
        let addr: std::net::SocketAddr = match args.admin_addr.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "netward: error: --admin-addr {:?}: {e} (expected IP:PORT or none)",
                    args.admin_addr
                );
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match admin::start(addr, metrics.clone(), rx.clone()) {
            Ok(bound) => info!(admin.addr = %bound, "admin server listening"),
            Err(e) => {
                eprintln!("netward: error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Some(addr) = debug_addr {
        match admin::start_debug(addr, metrics.clone(), rx.clone()) {
            Ok(bound) => info!(debug.addr = %bound, "debug listener (/debug/snapshot) listening"),
            Err(e) => {
                eprintln!("netward: error: --debug-addr: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }

    let opts = Options {
        rules,
        reject: args.reject,
        relay: RelayOptions {
            splice: !args.no_splice,
            idle_timeout: Some(Duration::from_secs(args.idle_timeout_secs)),
            ..RelayOptions::default()
        },
        node: args.node.clone(),
        cleanup_on_exit: !args.keep_rules,
        audit: sink,
        audit_open: args.audit_open,
        metrics: metrics.clone(),
        mtls,
        ..Options::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("netward-data")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netward: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    metrics.watch_runtime(runtime.handle());
    let paths = args.manifests.clone();
    let reload_every = Duration::from_millis(args.reload_ms.max(50));
    let result = runtime.block_on(async move {
        // Reload the manifests when they change; keep the last good snapshot otherwise.
        let reload = async move {
            let mut seen = fingerprint(&paths);
            loop {
                tokio::time::sleep(reload_every).await;
                let now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                match load_manifests(&paths) {
                    Ok(m) => {
                        generation += 1;
                        let mut snap = Snapshot::compile(&m.cluster);
                        snap.set_generation(generation);
                        info!(manifests = %m, snapshot.generation = generation, "policy reloaded");
                        let _ = tx.send(Arc::new(snap));
                    }
                    Err(errors) => {
                        metrics
                            .reload_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        for e in &errors {
                            error!(error = %e, "manifests unreadable: keeping the previous policy");
                        }
                    }
                }
            }
        };
        let shutdown = async {
            shutdown_signal().await;
        };
        tokio::select! {
            r = datapath::run(opts, rx, shutdown) => r,
            () = reload => Ok(()),
        }
    });
    // Every task holding an audit sink is gone with the runtime: the writer flushes the
    // pending aggregates and ends. Bounded wait.
    drop(runtime);
    if let Some(w) = writer {
        let start = std::time::Instant::now();
        while !w.is_finished() && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netward: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) fn cleanup(args: &CleanupArgs) -> ExitCode {
    let runner = CommandRunner::new();
    let cfg = RulesConfig::default();
    if args.dry_run {
        return match netward_iptables::installed_state(&runner, &cfg) {
            Ok(state) if state.is_empty() => {
                println!("nothing installed");
                ExitCode::SUCCESS
            }
            Ok(state) => {
                println!("{state}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("netward: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match netward_iptables::remove(&runner, &cfg) {
        Ok(changes) => {
            println!("removed: {changes:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netward: error: {e}");
            ExitCode::FAILURE
        }
    }
}
