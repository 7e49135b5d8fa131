//! `netward run`: the datapath in this network namespace, with pods and policies from
//! manifest files (reloaded when they change); and `netward cleanup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use netward_controller::{Manifests, Snapshot, load};
use netward_iptables::{CommandRunner, Config as RulesConfig};
use netward_proxy::admin;
use netward_proxy::datapath::{self, Options};
use netward_proxy::metrics::Metrics;
use tokio::sync::watch;
use tracing::{error, info};

use super::config::{AuditLog, ConfigError, DatapathArgs};

/// EX_DATAERR: the manifests cannot be read at all.
const EXIT_DATAERR: u8 = 65;

#[derive(Args, Clone)]
#[command(after_help = "\
Examples:
  netward run -f manifests/
  netward run -f cluster.yaml -f policies/ --node node-a --reject --audit-log /var/log/netward/audit.log
  netward run -f manifests/ --node node-a --mtls-identity /etc/netward/node-a \\
      --tunnel-listen 198.18.0.1:15008 --tunnel-peers /run/netward/peers

Every datapath option is also an environment variable (shown in brackets), as for \
`netward node`. Exit codes: 0 stopped on SIGINT/SIGTERM; 1 runtime failure; 64 a bad \
flag or variable (named, with its value); 65 the manifests cannot be read at all.")]
pub(crate) struct RunArgs {
    /// Manifest files or directories with the Namespaces, Pods, Nodes, Services and
    /// NetworkPolicies to enforce. Reloaded when they change.
    #[arg(long = "manifests", short = 'f', required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = super::config::number(0u64, u64::MAX))]
    reload_ms: u64,
    /// Take part in the mTLS tunnel between node proxies: the directory with this
    /// node's `node.pem`, `node-key.pem` and `trust-bundle.pem` (`netward ca issue`).
    /// Needs --node-name, --tunnel-listen and --tunnel-peers.
    #[arg(long, requires_all = ["node_name", "tunnel_listen", "tunnel_peers"])]
    mtls_identity: Option<PathBuf>,
    /// Where this node's tunnel listener binds: the node's IP and port 15008.
    #[arg(long)]
    tunnel_listen: Option<std::net::SocketAddr>,
    /// The directory where nodes advertise their tunnel listeners (`<node>.tunnel`).
    #[arg(long)]
    tunnel_peers: Option<PathBuf>,
    #[command(flatten)]
    datapath: DatapathArgs,
}

/// The tunnel options from the flags.
fn mtls_options(
    args: &RunArgs,
    rules: &RulesConfig,
) -> Result<Option<netward_proxy::mesh::MtlsOptions>, ConfigError> {
    use netward_proxy::mtls::identity::TlsIdentity;
    let Some(dir) = &args.mtls_identity else {
        return Ok(None);
    };
    let (Some(node), Some(listen), Some(peers)) = (
        &args.datapath.node_name,
        args.tunnel_listen,
        &args.tunnel_peers,
    ) else {
        return Err(ConfigError::new(
            "--mtls-identity",
            dir.display().to_string(),
            "needs --node-name, --tunnel-listen and --tunnel-peers",
        ));
    };
    let identity = TlsIdentity::load(dir, &args.datapath.trust_domain, node).map_err(|e| {
        ConfigError::new("--mtls-identity", dir.display().to_string(), e.to_string())
    })?;
    let tunnel = args.datapath.tunnel(rules, listen.ip())?;
    Ok(Some(netward_proxy::mesh::MtlsOptions {
        identity,
        listen,
        peers: netward_proxy::mesh::PeerSource::Dir(peers.clone()),
        tunnel,
    }))
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward cleanup --dry-run
  netward cleanup

Only netward's own table, chains, jump rules, ip rules and routes are removed. Exit codes: \
0 done (or nothing installed); 1 a rule could not be listed or removed; 2 a bad flag.")]
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

/// `netward run`: a bad configuration value exits 64, unreadable manifests 65.
pub(crate) fn run(args: &RunArgs) -> ExitCode {
    super::raise_fd_limit();
    let dp = &args.datapath;
    let rules = match dp.rules() {
        Ok(r) => r,
        Err(e) => return e.exit(),
    };
    let admin_addr = match dp.admin_addr(
        std::net::SocketAddr::from(([127, 0, 0, 1], super::config::ADMIN_PORT)),
        true,
    ) {
        Ok(a) => a,
        Err(e) => return e.exit(),
    };
    let mtls = match mtls_options(args, &rules) {
        Ok(m) => m,
        Err(e) => return e.exit(),
    };
    let node = dp.node_name.clone();
    let (sink, writer) = match dp.start_audit(AuditLog::Stdout, node.as_deref()) {
        Ok(w) => w,
        Err(e) => return e.exit(),
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
    info!(manifests = %manifests, node = node.as_deref().unwrap_or("(all pods)"), "policy loaded");
    let (tx, rx) = watch::channel(Arc::new(snap));
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = admin_addr {
        match admin::start(addr, metrics.clone(), rx.clone()) {
            Ok(bound) => info!(admin.addr = %bound, "admin server listening"),
            Err(e) => {
                return ConfigError::new(
                    "--admin-addr/NETWARD_ADMIN_ADDR",
                    addr.to_string(),
                    e.to_string(),
                )
                .exit();
            }
        }
    }
    if let Some(addr) = dp.debug_addr() {
        match admin::start_debug(addr, metrics.clone(), rx.clone()) {
            Ok(bound) => info!(debug.addr = %bound, "debug listener (/debug/snapshot) listening"),
            Err(e) => {
                return ConfigError::new(
                    "--debug-addr/NETWARD_DEBUG_ADDR",
                    addr.to_string(),
                    e.to_string(),
                )
                .exit();
            }
        }
    }

    let opts = Options {
        rules,
        reject: dp.reject,
        relay: dp.relay(),
        node,
        cleanup_on_exit: dp.cleanup_on_exit(true),
        audit: sink,
        audit_open: dp.audit_open,
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
