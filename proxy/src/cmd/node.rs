//! `netward node`: the DaemonSet entry point. Watches the Kubernetes API (kube-rs
//! watchers in `netward_controller::kube`), enforces on this node's pods, drains on
//! SIGTERM.
//!
//! Threads: `netward-kube` (a current-thread runtime: the watchers, the debounced
//! compiles) publishes snapshots on a watch channel; the `netward-data` runtime runs
//! the datapath, which follows that channel; the verdict thread is the datapath's;
//! `netward-admin` serves `/healthz`, `/readyz` and `/metrics` from before the initial
//! sync to the end of the drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use netward_controller::Snapshot;
use netward_controller::kube::{self as source, SyncStatus};
use netward_iptables::{CommandRunner, Config as RulesConfig};
use netward_proxy::admin;
use netward_proxy::datapath::{self, Options};
use netward_proxy::metrics::Metrics;
use netward_proxy::relay::RelayOptions;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// EX_USAGE: a bad flag, environment variable or API configuration.
const EXIT_USAGE: u8 = 64;
/// How often the drain checks the live connections.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often each loop reports to `/healthz` (see [`admin::STALL_LIMIT`]).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Every option is a flag and an environment variable (the DaemonSet's ConfigMap sets
/// the variables). Values are read as text and validated once, so that a bad one exits
/// 64 with its name, its value and the reason.
#[derive(Args, Clone, Debug)]
pub(crate) struct NodeArgs {
    /// This node's name: its pods are those with this spec.nodeName (the DaemonSet
    /// sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// A kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, or the pod's
    /// ServiceAccount (in cluster).
    #[arg(long, env = "NETWARD_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Refuse denied TCP connections with a reset instead of dropping their SYN.
    #[arg(long, env = "NETWARD_REJECT", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    reject: String,
    /// Port of the transparent TCP listener.
    #[arg(long, env = "NETWARD_TPROXY_PORT", default_value_t = netward_iptables::config::TPROXY_PORT.to_string())]
    tproxy_port: String,
    /// Relay with splice(2) (false: a copy loop).
    #[arg(long, env = "NETWARD_SPLICE", default_value = "true", num_args = 0..=1, default_missing_value = "true")]
    splice: String,
    /// Intercept IPv6 too.
    #[arg(long, env = "NETWARD_IPV6", default_value = "true", num_args = 0..=1, default_missing_value = "true")]
    ipv6: String,
    /// Close connections idle for this many seconds.
    #[arg(long, env = "NETWARD_IDLE_TIMEOUT_SECS", default_value = "3600")]
    idle_timeout_secs: String,
    /// Remove the interception rules on exit. Off by default: during an upgrade the
    /// node stays fail closed (the kernel drops new diverted flows) until the next start.
    #[arg(long, env = "NETWARD_CLEANUP_ON_EXIT", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    cleanup_on_exit: String,
    /// On SIGTERM, how long live connections may finish before exiting.
    #[arg(long, env = "NETWARD_DRAIN_GRACE_SECS", default_value = "20")]
    drain_grace_secs: String,
    /// How long after the first change of a batch the policy is recompiled.
    #[arg(long, env = "NETWARD_DEBOUNCE_MS", default_value = "100")]
    debounce_ms: String,
    /// Address of the admin server (/healthz, /readyz, /metrics, /debug/snapshot): the
    /// DaemonSet's probes and Prometheus use it (hostNetwork: the node's port).
    #[arg(long, env = "NETWARD_ADMIN_ADDR", default_value = "0.0.0.0:15021")]
    admin_addr: String,
}

/// A configuration value that cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={:?}: {}", self.name, self.value, self.reason)
    }
}

/// The validated configuration.
#[derive(Debug)]
pub(crate) struct NodeConfig {
    node: String,
    kubeconfig: Option<PathBuf>,
    rules: RulesConfig,
    reject: bool,
    splice: bool,
    idle_timeout: Duration,
    cleanup_on_exit: bool,
    drain_grace: Duration,
    debounce: Duration,
    admin_addr: SocketAddr,
}

fn bad(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(name, v, "expected true or false")),
    }
}

fn parse_num(name: &'static str, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|e| bad(name, v, format!("not a whole number ({e})")))?;
    if n < min || n > max {
        return Err(bad(name, v, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

/// A DNS-1123 subdomain, as Kubernetes node names are.
fn check_node_name(v: &str) -> Result<(), ConfigError> {
    const NAME: &str = "--node-name/NODE_NAME";
    if v.is_empty() {
        return Err(bad(
            NAME,
            v,
            "required: the DaemonSet sets it from spec.nodeName (fieldRef)",
        ));
    }
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if v.len() > 253 || !ok_chars || !ok_ends {
        return Err(bad(
            NAME,
            v,
            "not a node name (lowercase letters, digits, '-' and '.', at most 253 characters)",
        ));
    }
    Ok(())
}

/// `IP:PORT`, not port 0 (the probes need a known port) and not the transparent
/// listener's port.
fn parse_admin_addr(v: &str, tproxy_port: u16) -> Result<SocketAddr, ConfigError> {
    const NAME: &str = "--admin-addr/NETWARD_ADMIN_ADDR";
    let addr: SocketAddr = v.trim().parse().map_err(|e| {
        bad(
            NAME,
            v,
            format!("expected IP:PORT, like 0.0.0.0:15021 ({e})"),
        )
    })?;
    if addr.port() == 0 {
        return Err(bad(
            NAME,
            v,
            "the port must not be 0: the probes need a known port",
        ));
    }
    if addr.port() == tproxy_port {
        return Err(bad(
            NAME,
            v,
            format!("port {tproxy_port} is the transparent listener's (--tproxy-port)"),
        ));
    }
    Ok(addr)
}

impl NodeArgs {
    /// Validates every value once.
    pub(crate) fn validate(&self) -> Result<NodeConfig, ConfigError> {
        let node = self.node_name.clone().unwrap_or_default();
        check_node_name(&node)?;
        if let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            return Err(bad(
                "--kubeconfig/NETWARD_KUBECONFIG",
                &path.display().to_string(),
                "no such file",
            ));
        }
        let port = parse_num(
            "--tproxy-port/NETWARD_TPROXY_PORT",
            &self.tproxy_port,
            1,
            65535,
        )?;
        let rules = RulesConfig {
            tcp_port: u16::try_from(port).unwrap_or(netward_iptables::config::TPROXY_PORT),
            ipv6: parse_bool("--ipv6/NETWARD_IPV6", &self.ipv6)?,
            ..RulesConfig::default()
        };
        rules.validate().map_err(|e| {
            bad(
                "--tproxy-port/NETWARD_TPROXY_PORT",
                &self.tproxy_port,
                e.to_string(),
            )
        })?;
        let admin_addr = parse_admin_addr(&self.admin_addr, rules.tcp_port)?;
        Ok(NodeConfig {
            node,
            kubeconfig: self.kubeconfig.clone(),
            rules,
            reject: parse_bool("--reject/NETWARD_REJECT", &self.reject)?,
            splice: parse_bool("--splice/NETWARD_SPLICE", &self.splice)?,
            idle_timeout: Duration::from_secs(parse_num(
                "--idle-timeout-secs/NETWARD_IDLE_TIMEOUT_SECS",
                &self.idle_timeout_secs,
                1,
                7 * 24 * 3600,
            )?),
            cleanup_on_exit: parse_bool(
                "--cleanup-on-exit/NETWARD_CLEANUP_ON_EXIT",
                &self.cleanup_on_exit,
            )?,
            drain_grace: Duration::from_secs(parse_num(
                "--drain-grace-secs/NETWARD_DRAIN_GRACE_SECS",
                &self.drain_grace_secs,
                0,
                3600,
            )?),
            debounce: Duration::from_millis(parse_num(
                "--debounce-ms/NETWARD_DEBOUNCE_MS",
                &self.debounce_ms,
                0,
                10_000,
            )?),
            admin_addr,
        })
    }
}

/// Counts SIGTERMs and SIGINTs on `count` (the first starts the drain, a second one
/// ends it). Registered before this returns, so that no signal is missed between phases.
fn watch_signals(
    runtime: &tokio::runtime::Runtime,
    count: watch::Sender<u32>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = runtime.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    runtime.spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            count.send_modify(|n| *n += 1);
            info!(signal = name, count = *count.borrow(), "signal received");
        }
    });
    Ok(())
}

/// Completes once `n` signals have been received (never if the watcher is gone).
async fn signalled(mut count: watch::Receiver<u32>, n: u32) {
    if count.wait_for(|c| *c >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Reports that the current runtime's loop is alive, every [`HEARTBEAT`].
async fn heartbeat(metrics: Arc<Metrics>, name: &'static str) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        metrics.beat(name);
    }
}

/// How the datapath phase ended.
enum Outcome {
    /// Stopped (or failed) before the first sync: the datapath never ran.
    NotStarted(Result<(), String>),
    /// The datapath ran (its rules were installed, or it failed trying).
    Ran(Result<(), String>),
}

pub(crate) fn node(args: &NodeArgs) -> ExitCode {
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netward: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let status = Arc::new(SyncStatus::new());
    let metrics = Arc::new(Metrics::default());
    metrics.watch_kube(status.clone());
    // Until the watchers have listed everything, the placeholder denies every flow.
    let (tx, rx) = watch::channel(Arc::new(Snapshot::not_ready()));

    // First, so that liveness holds during the initial sync (readiness does not).
    match admin::start(cfg.admin_addr, metrics.clone(), rx.clone()) {
        Ok(bound) => info!(admin.addr = %bound, "admin server listening"),
        Err(e) => {
            eprintln!("netward: error: {e} (--admin-addr/NETWARD_ADMIN_ADDR)");
            return ExitCode::from(EXIT_USAGE);
        }
    }

    // The API side: its own thread and runtime, off the data-plane workers.
    let kube_rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netward: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match kube_rt.block_on(source::client(cfg.kubeconfig.as_deref(), &status)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netward: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let source_opts = source::Options {
        debounce: cfg.debounce,
        ..source::Options::default()
    };
    let kube_thread = {
        let (status, metrics) = (status.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("netward-kube".into())
            .spawn(move || {
                kube_rt.block_on(async move {
                    tokio::select! {
                        () = source::run(client, source_opts, tx, status) => {}
                        () = heartbeat(metrics, "kube") => {}
                        _ = &mut stop_rx => {}
                    }
                });
            })
    };
    let kube_thread = match kube_thread {
        Ok(t) => t,
        Err(e) => {
            eprintln!("netward: error: cannot start the API thread: {e}");
            return ExitCode::FAILURE;
        }
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
    let (signals_tx, signals) = watch::channel(0u32);
    if let Err(e) = watch_signals(&runtime, signals_tx) {
        eprintln!("netward: error: cannot handle SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    metrics.watch_runtime(runtime.handle());
    runtime.spawn(heartbeat(metrics.clone(), "datapath"));
    let opts = Options {
        rules: cfg.rules.clone(),
        reject: cfg.reject,
        relay: RelayOptions {
            splice: cfg.splice,
            idle_timeout: Some(cfg.idle_timeout),
            ..RelayOptions::default()
        },
        node: Some(cfg.node.clone()),
        // Removed here after the drain, not by the datapath: draining connections need them.
        cleanup_on_exit: false,
        metrics: metrics.clone(),
        ..Options::default()
    };
    info!(
        node = %cfg.node,
        cleanup_on_exit = cfg.cleanup_on_exit,
        drain_grace_s = cfg.drain_grace.as_secs(),
        admin.addr = %cfg.admin_addr,
        "netward node starting"
    );
    let outcome = runtime.block_on(async {
        let mut first = rx.clone();
        // Rules left by the previous instance (kept on exit) stay in place meanwhile:
        // with no queue reader, the kernel drops the new flows they divert.
        tokio::select! {
            r = first.wait_for(|s| s.is_ready()) => {
                if r.is_err() {
                    return Outcome::NotStarted(Err("the API source stopped before its first sync".to_owned()));
                }
            }
            () = signalled(signals.clone(), 1) => {
                metrics.draining.store(true, Ordering::Relaxed);
                info!("stopped before the first sync; rules left as they were");
                return Outcome::NotStarted(Ok(()));
            }
        }
        drop(first);
        // Not ready from the signal on, before the listeners close.
        let stop = {
            let (metrics, signals) = (metrics.clone(), signals.clone());
            async move {
                signalled(signals, 1).await;
                metrics.draining.store(true, Ordering::Relaxed);
            }
        };
        Outcome::Ran(
            datapath::run(opts, rx, stop)
                .await
                .map_err(|e| e.to_string()),
        )
    });
    let (ran, result) = match outcome {
        Outcome::NotStarted(r) => (false, r),
        Outcome::Ran(r) => (true, r),
    };
    metrics.draining.store(true, Ordering::Relaxed);
    if ran && result.is_ok() {
        // The listeners are closed and the verdict thread is gone; the relays live on
        // the runtime's workers until they finish or the runtime is dropped.
        drain(&runtime, &metrics, cfg.drain_grace, signals);
    }
    // Ends the remaining relays: their sockets close.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if ran && cfg.cleanup_on_exit {
        match netward_iptables::apply::remove(&CommandRunner::new(), &cfg.rules) {
            Ok(_) => info!("interception rules removed (--cleanup-on-exit)"),
            Err(e) => {
                warn!(error = %e, "could not remove every interception rule: run `netward cleanup`")
            }
        }
    } else if ran {
        info!("interception rules kept: the node fails closed until netward starts again");
    }
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "netward node failed");
            eprintln!("netward: error: {e}");
            ExitCode::FAILURE
        }
    };
    let _ = stop_tx.send(());
    let _ = kube_thread.join();
    code
}

/// Lets the live relayed connections (`Metrics::active`) finish, up to `grace` (or a
/// second signal). New connections are no longer accepted: the listeners are closed,
/// and with no queue reader the kernel drops new diverted flows.
fn drain(
    runtime: &tokio::runtime::Runtime,
    metrics: &Metrics,
    grace: Duration,
    signals: watch::Receiver<u32>,
) {
    let live = || metrics.active.get();
    let start = Instant::now();
    let at_start = live();
    if at_start <= 0 {
        info!("no live connections to drain");
        return;
    }
    info!(
        connections = at_start,
        grace_s = grace.as_secs(),
        "draining live connections"
    );
    let done = runtime.block_on(async {
        tokio::select! {
            () = async {
                let mut tick = tokio::time::interval(DRAIN_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while live() > 0 {
                    tick.tick().await;
                }
            } => true,
            () = tokio::time::sleep(grace) => false,
            () = signalled(signals, 2) => {
                info!("second signal: ending the drain");
                false
            }
        }
    });
    let waited_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    if done {
        info!(waited_ms, "drained");
    } else {
        warn!(
            waited_ms,
            remaining = live(),
            "drain grace period over: closing the remaining connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeArgs,
    }

    fn parse(argv: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut full = vec!["netward"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)
            .map_err(|e| bad("argv", "", e.to_string()))?
            .args
            .validate()
    }

    #[test]
    fn validates_each_value_with_its_name_and_reason() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--node-name", "Node_A"],
                "--node-name/NODE_NAME=\"Node_A\": not a node name",
            ),
            (
                &["--node-name", "a", "--tproxy-port", "0"],
                "--tproxy-port/NETWARD_TPROXY_PORT=\"0\": must be between 1 and 65535",
            ),
            (
                &["--node-name", "a", "--tproxy-port", "x"],
                "--tproxy-port/NETWARD_TPROXY_PORT=\"x\": not a whole number",
            ),
            (
                &["--node-name", "a", "--reject=maybe"],
                "--reject/NETWARD_REJECT=\"maybe\": expected true or false",
            ),
            (
                &["--node-name", "a", "--drain-grace-secs=-1"],
                "--drain-grace-secs/NETWARD_DRAIN_GRACE_SECS=\"-1\": not a whole number",
            ),
            (
                &["--node-name", "a", "--kubeconfig", "/nonexistent/kc"],
                "--kubeconfig/NETWARD_KUBECONFIG=\"/nonexistent/kc\": no such file",
            ),
            (
                &["--node-name", "a", "--admin-addr", "localhost:15021"],
                "--admin-addr/NETWARD_ADMIN_ADDR=\"localhost:15021\": expected IP:PORT",
            ),
            (
                &["--node-name", "a", "--admin-addr", "0.0.0.0:0"],
                "--admin-addr/NETWARD_ADMIN_ADDR=\"0.0.0.0:0\": the port must not be 0",
            ),
            (
                &["--node-name", "a", "--admin-addr", "0.0.0.0:15001"],
                "--admin-addr/NETWARD_ADMIN_ADDR=\"0.0.0.0:15001\": port 15001 is the transparent listener's",
            ),
        ];
        for (argv, want) in cases {
            let err = parse(argv).expect_err(want);
            assert!(
                err.to_string().starts_with(want),
                "{argv:?}: got {err}, want {want}"
            );
        }
    }

    #[test]
    fn defaults_keep_rules_and_flags_take_bare_form() {
        let cfg = parse(&[
            "--node-name",
            "node-a.example",
            "--reject",
            "--cleanup-on-exit",
        ])
        .expect("valid");
        assert_eq!(cfg.node, "node-a.example");
        assert!(cfg.reject && cfg.cleanup_on_exit && cfg.splice && cfg.rules.ipv6);
        assert_eq!(cfg.debounce, Duration::from_millis(100));
        assert_eq!(cfg.admin_addr, SocketAddr::from(([0, 0, 0, 0], 15021)));
        let cfg = parse(&["--node-name", "n"]).expect("valid");
        assert!(!cfg.cleanup_on_exit, "rules are kept on exit by default");
        assert!(!cfg.reject);
    }
}
