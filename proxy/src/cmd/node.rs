//! `netward node`: the DaemonSet entry point. Watches the Kubernetes API (kube-rs
//! watchers in `netward_controller::kube`), enforces on this node's pods, drains on
//! SIGTERM.
//!
//! Threads: `netward-kube` (a current-thread runtime: the watchers, the debounced
//! compiles) publishes snapshots on a watch channel; the `netward-data` runtime runs
//! the datapath, which follows that channel; the verdict task is the datapath's;
//! `netward-admin` serves `/healthz`, `/readyz` and `/metrics` from before the initial
//! sync to the end of the drain; `netward-debug` serves `/debug/snapshot` on loopback,
//! only with `--debug-addr`.

use std::net::{IpAddr, SocketAddr};
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

use super::config::{self, AuditLog, Blank, ConfigError, DatapathArgs};

/// How often the drain checks the live connections.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often each loop reports to `/healthz` (see [`admin::STALL_LIMIT`]).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Every option is a flag and an environment variable (the DaemonSet's ConfigMap sets
/// the variables), parsed by typed value parsers: a bad one exits 64 with its name, its
/// value and the reason.
#[derive(Args, Clone, Debug)]
#[command(after_help = "\
Examples:
  netward node --node-name node-a --kubeconfig ~/.kube/config
  NODE_NAME=node-a NODE_IP=10.0.0.7 NETWARD_MTLS=true netward node --log-format json
  netward node --node-name node-a --reject --cleanup-on-exit=false --debug-addr 127.0.0.1:15022

The DaemonSet (deploy/daemonset.yaml) sets NODE_NAME, NODE_IP and POD_NAMESPACE from the \
downward API and the rest from the ConfigMap netward-config (deploy/configmap.yaml); a flag \
wins over its variable. Exit codes: 0 stopped; 1 runtime failure (the API, the runtime); \
64 a bad flag or variable (named, with its value), or an unusable kubeconfig.")]
pub(crate) struct NodeArgs {
    /// A kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, or the pod's
    /// ServiceAccount (in cluster).
    #[arg(long, env = "NETWARD_KUBECONFIG", value_name = "FILE", value_parser = config::existing_file)]
    kubeconfig: Option<PathBuf>,
    /// On SIGTERM, how long live connections may finish before exiting.
    #[arg(long, env = "NETWARD_DRAIN_GRACE_SECS", value_name = "SECS", default_value_t = 20, value_parser = config::number(0u64, 3600))]
    drain_grace_secs: u64,
    /// How long after the first change of a batch the policy is recompiled.
    #[arg(long, env = "NETWARD_DEBOUNCE_MS", value_name = "MS", default_value_t = 100, value_parser = config::number(0u64, 10_000))]
    debounce_ms: u64,
    /// Carry cross-node connections in the mTLS tunnel: request a node certificate
    /// from `netward signer` (CSR API) and advertise the tunnel with a Lease.
    #[arg(long, env = "NETWARD_MTLS", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = config::boolean)]
    mtls: bool,
    /// Port of the tunnel listener, on the node IP.
    #[arg(long, env = "NETWARD_TUNNEL_PORT", value_name = "PORT", default_value_t = 15008, value_parser = config::number(1u16, u16::MAX))]
    tunnel_port: u16,
    /// The node IP: the admin server's default address and the tunnel's (the DaemonSet
    /// sets it from status.hostIP). Without it the tunnel uses the Node object's
    /// InternalIP and the admin server 127.0.0.1.
    #[arg(long, env = "NODE_IP", value_name = "IP", value_parser = config::ip_or_empty)]
    node_ip: Option<Blank<IpAddr>>,
    /// Where the node certificate, its key and the trust bundle are written.
    #[arg(long, env = "NETWARD_IDENTITY_DIR", value_name = "DIR", default_value = "/var/run/netward/identity", value_parser = config::absolute_path)]
    identity_dir: PathBuf,
    /// The validity the node certificate is requested with (renewed at half of it).
    #[arg(long, env = "NETWARD_CERT_VALIDITY", value_name = "DURATION", default_value = "24h", value_parser = config::cert_validity)]
    cert_validity: Duration,
    /// How long the start waits for the first certificate; past it netward enforces
    /// without the tunnel.
    #[arg(long, env = "NETWARD_CERT_WAIT_SECS", value_name = "SECS", default_value_t = 30, value_parser = config::number(1u64, 3600))]
    cert_wait_secs: u64,
    /// netward's namespace: the trust bundle ConfigMap and the tunnel Leases.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS", default_value = "netward-system", value_parser = config::dns_label)]
    namespace: String,
    #[command(flatten)]
    datapath: DatapathArgs,
}

/// The validated tunnel settings (`--mtls`).
#[derive(Clone, Debug)]
pub(crate) struct MtlsConfig {
    trust_domain: String,
    tunnel_port: u16,
    node_ip: Option<IpAddr>,
    identity_dir: PathBuf,
    validity: Duration,
    cert_wait: Duration,
    namespace: String,
    datapath: DatapathArgs,
}

/// The validated configuration.
#[derive(Debug)]
pub(crate) struct NodeConfig {
    node: String,
    kubeconfig: Option<PathBuf>,
    rules: RulesConfig,
    reject: bool,
    relay: RelayOptions,
    cleanup_on_exit: bool,
    drain_grace: Duration,
    debounce: Duration,
    admin_addr: SocketAddr,
    debug_addr: Option<SocketAddr>,
    mtls: Option<MtlsConfig>,
    audit_open: bool,
}

impl NodeArgs {
    /// Checks what the value parsers cannot see alone: a required node name, and the
    /// ports and addresses against each other.
    pub(crate) fn validate(&self) -> Result<NodeConfig, ConfigError> {
        let dp = &self.datapath;
        let node = dp.node_name.clone().ok_or_else(|| {
            ConfigError::new(
                "--node-name/NODE_NAME",
                "",
                "required: the DaemonSet sets it from spec.nodeName (fieldRef)",
            )
        })?;
        let rules = dp.rules()?;
        let node_ip = self.node_ip.and_then(|b| b.0);
        let default_admin = SocketAddr::new(
            node_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            config::ADMIN_PORT,
        );
        let admin_addr = dp.admin_addr(default_admin, false)?.ok_or_else(|| {
            ConfigError::new("--admin-addr/NETWARD_ADMIN_ADDR", "none", "required")
        })?;
        let mtls = self.mtls_config(rules.tcp_port, admin_addr.port(), node_ip)?;
        Ok(NodeConfig {
            node,
            kubeconfig: self.kubeconfig.clone(),
            rules,
            reject: dp.reject,
            relay: dp.relay(),
            cleanup_on_exit: dp.cleanup_on_exit(false),
            drain_grace: Duration::from_secs(self.drain_grace_secs),
            debounce: Duration::from_millis(self.debounce_ms),
            admin_addr,
            debug_addr: dp.debug_addr(),
            mtls,
            audit_open: dp.audit_open,
        })
    }

    fn mtls_config(
        &self,
        tproxy: u16,
        admin: u16,
        node_ip: Option<IpAddr>,
    ) -> Result<Option<MtlsConfig>, ConfigError> {
        if !self.mtls {
            return Ok(None);
        }
        if self.tunnel_port == tproxy || self.tunnel_port == admin {
            return Err(ConfigError::new(
                "--tunnel-port/NETWARD_TUNNEL_PORT",
                self.tunnel_port.to_string(),
                "the transparent listener or the admin server uses it",
            ));
        }
        Ok(Some(MtlsConfig {
            trust_domain: self.datapath.trust_domain.clone(),
            tunnel_port: self.tunnel_port,
            node_ip,
            identity_dir: self.identity_dir.clone(),
            validity: self.cert_validity,
            cert_wait: Duration::from_secs(self.cert_wait_secs),
            namespace: self.namespace.clone(),
            datapath: self.datapath.clone(),
        }))
    }
}

/// The node IP from the Node object: its first InternalIP.
async fn node_internal_ip(client: &kube::Client, node: &str) -> Result<std::net::IpAddr, String> {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let obj = api
        .get(node)
        .await
        .map_err(|e| format!("cannot read node {node} for its InternalIP (set NODE_IP): {e}"))?;
    obj.status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
        .ok_or_else(|| format!("node {node} has no InternalIP (set NODE_IP)"))
}

/// `--mtls`: the first certificate (bounded), then the tunnel options with the Lease
/// advertisements. The certificate manager and the Lease watcher run on the current
/// runtime from here on.
async fn start_mtls(
    client: kube::Client,
    node: String,
    m: MtlsConfig,
    rules: RulesConfig,
) -> Result<netward_proxy::mesh::MtlsOptions, String> {
    use netward_proxy::mesh::{MtlsOptions, PeerSource};
    use netward_proxy::mtls::identity::TlsIdentity;
    use netward_proxy::mtls::kube_peers::{LeaseConfig, LeasePeers};
    use netward_proxy::mtls::node_cert::{CertConfig, CertManager};
    let ip = match m.node_ip {
        Some(ip) => ip,
        None => node_internal_ip(&client, &node).await?,
    };
    let cert_cfg = CertConfig {
        trust_domain: m.trust_domain.clone(),
        validity: m.validity,
        request_timeout: m.cert_wait,
        ..CertConfig::new(&node, &m.namespace, &m.identity_dir)
    };
    let manager = tokio::time::timeout(
        m.cert_wait + Duration::from_secs(5),
        CertManager::start(client.clone(), cert_cfg),
    )
    .await
    .map_err(|_| format!("no node certificate within {:?}", m.cert_wait))?
    .map_err(|e| e.to_string())?;
    info!(node = %node, not_after = %netward_proxy::mtls::identity::rfc3339(manager.not_after()), "node certificate written");
    let identity = TlsIdentity::load(&m.identity_dir, &m.trust_domain, &node)
        .map_err(|e| format!("{}: {e}", m.identity_dir.display()))?;
    let _renewals = manager.spawn();
    let leases = Arc::new(LeasePeers::new(client, LeaseConfig::new(&m.namespace)));
    let feed = leases.watch();
    let tunnel = m.datapath.tunnel(&rules, ip).map_err(|e| e.to_string())?;
    Ok(MtlsOptions {
        identity,
        listen: SocketAddr::new(ip, m.tunnel_port),
        peers: PeerSource::Provided {
            peers: feed,
            advertiser: leases,
        },
        tunnel,
    })
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

/// `netward node`: a bad configuration value exits 64.
pub(crate) fn node(args: &NodeArgs) -> ExitCode {
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => return e.exit(),
    };
    super::raise_fd_limit();
    let (audit_sink, audit_writer) = match args.datapath.start_audit(AuditLog::Off, Some(&cfg.node))
    {
        Ok(w) => w,
        Err(e) => return e.exit(),
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
            return ConfigError::new(
                "--admin-addr/NETWARD_ADMIN_ADDR",
                cfg.admin_addr.to_string(),
                e.to_string(),
            )
            .exit();
        }
    }
    if let Some(addr) = cfg.debug_addr {
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
            // An unusable kubeconfig or in-cluster configuration: configuration too.
            eprintln!("netward: error: {e}");
            return ExitCode::from(config::EXIT_USAGE);
        }
    };
    let mtls_client = client.clone();
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
    // Requested while the watchers sync; enforcement never waits longer than that.
    let mtls_task = cfg.mtls.clone().map(|m| {
        // Bounded as a whole (the Node lookup included), whatever the API does.
        let limit = m.cert_wait + Duration::from_secs(10);
        let setup = start_mtls(mtls_client, cfg.node.clone(), m, cfg.rules.clone());
        runtime.spawn(async move {
            tokio::time::timeout(limit, setup)
                .await
                .unwrap_or_else(|_| Err(format!("no tunnel setup within {limit:?}")))
        })
    });
    let mut opts = Options {
        rules: cfg.rules.clone(),
        reject: cfg.reject,
        relay: cfg.relay.clone(),
        node: Some(cfg.node.clone()),
        // Removed here after the drain, not by the datapath: draining connections need them.
        cleanup_on_exit: false,
        metrics: metrics.clone(),
        audit: audit_sink,
        audit_open: cfg.audit_open,
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
        if let Some(task) = mtls_task {
            match task.await {
                Ok(Ok(m)) => {
                    info!(tunnel.listen = %m.listen, "mTLS tunnel enabled");
                    opts.mtls = Some(m);
                }
                Ok(Err(e)) => error!(error = %e, "mTLS unavailable: enforcing without the tunnel"),
                Err(e) => error!(error = %e, "mTLS setup failed: enforcing without the tunnel"),
            }
        }
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
        // The listeners are closed and the verdict task is gone; the relays live on
        // the runtime's workers until they finish or the runtime is dropped.
        drain(&runtime, &metrics, cfg.drain_grace, signals);
    }
    // Ends the remaining relays: their sockets close.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Every audit sink went with the runtime: the writer flushes and ends (bounded).
    if let Some(w) = audit_writer {
        let start = Instant::now();
        while !w.is_finished() && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
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
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeArgs,
    }

    /// Parses and validates as `netward node` does (a clap error as `main` reports it).
    fn parse(argv: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut full = vec!["netward"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full) {
            Ok(cli) => cli.args.validate(),
            Err(e) => Err(config::from_clap(&e, &Cli::command())
                .unwrap_or_else(|| ConfigError::new("argv", "", e.to_string()))),
        }
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
            (
                &["--node-name", "a", "--debug-addr", "0.0.0.0:15022"],
                "--debug-addr/NETWARD_DEBUG_ADDR=\"0.0.0.0:15022\": the debug listener must be on a loopback address",
            ),
            (
                &["--node-name", "a", "--node-ip", "node-a"],
                "--node-ip/NODE_IP=\"node-a\": not an IP address",
            ),
            (
                &["--node-name", "a", "--mtls=perhaps"],
                "--mtls/NETWARD_MTLS=\"perhaps\": expected true or false",
            ),
            (
                &["--node-name", "a", "--mtls", "--trust-domain", "Bad Domain"],
                "--trust-domain/NETWARD_TRUST_DOMAIN=\"Bad Domain\": ",
            ),
            (
                &["--node-name", "a", "--mtls", "--tunnel-port", "15001"],
                "--tunnel-port/NETWARD_TUNNEL_PORT=\"15001\": the transparent listener or the admin server uses it",
            ),
            (
                &["--node-name", "a", "--mtls", "--tunnel-port", "70000"],
                "--tunnel-port/NETWARD_TUNNEL_PORT=\"70000\": must be between 1 and 65535",
            ),
            (
                &["--node-name", "a", "--mtls", "--node-ip", "node-a"],
                "--node-ip/NODE_IP=\"node-a\": not an IP address",
            ),
            (
                &["--node-name", "a", "--mtls", "--cert-validity", "1m"],
                "--cert-validity/NETWARD_CERT_VALIDITY=\"1m\": at least 10m",
            ),
            (
                &["--node-name", "a", "--mtls", "--cert-validity", "soon"],
                "--cert-validity/NETWARD_CERT_VALIDITY=\"soon\": ",
            ),
            (
                &["--node-name", "a", "--mtls", "--identity-dir", "rel/dir"],
                "--identity-dir/NETWARD_IDENTITY_DIR=\"rel/dir\": must be an absolute path",
            ),
            (
                &["--node-name", "a", "--mtls", "--cert-wait-secs", "0"],
                "--cert-wait-secs/NETWARD_CERT_WAIT_SECS=\"0\": must be between 1 and 3600",
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
        assert!(cfg.reject && cfg.cleanup_on_exit && cfg.relay.splice && cfg.rules.ipv6);
        assert_eq!(cfg.debounce, Duration::from_millis(100));
        assert_eq!(cfg.admin_addr, SocketAddr::from(([127, 0, 0, 1], 15021)));
        assert_eq!(cfg.debug_addr, None, "/debug/* is off unless asked for");
        let cfg = parse(&["--node-name", "n"]).expect("valid");
        assert!(!cfg.cleanup_on_exit, "rules are kept on exit by default");
        assert!(!cfg.reject);
        assert!(cfg.mtls.is_none(), "mTLS is off unless asked for");
    }

    #[test]
    fn admin_server_binds_the_node_ip_and_debug_only_loopback() {
        let cfg = parse(&["--node-name", "n", "--node-ip", "198.18.0.7"]).expect("valid");
        assert_eq!(cfg.admin_addr, SocketAddr::from(([198, 18, 0, 7], 15021)));
        let cfg = parse(&["--node-name", "n", "--node-ip", "fd00::7"]).expect("valid");
        assert_eq!(cfg.admin_addr.to_string(), "[fd00::7]:15021");
        let cfg = parse(&[
            "--node-name",
            "n",
            "--node-ip",
            "198.18.0.7",
            "--admin-addr",
            "0.0.0.0:15021",
            "--debug-addr",
            "[::1]:15022",
        ])
        .expect("valid");
        assert_eq!(cfg.admin_addr, SocketAddr::from(([0, 0, 0, 0], 15021)));
        assert_eq!(
            cfg.debug_addr.map(|a| a.to_string()).as_deref(),
            Some("[::1]:15022")
        );
    }

    #[test]
    fn mtls_defaults() {
        let cfg = parse(&["--node-name", "n", "--mtls"]).expect("valid");
        let m = cfg.mtls.expect("--mtls");
        assert_eq!(m.trust_domain, "cluster.local");
        assert_eq!(m.tunnel_port, 15008);
        assert_eq!(m.identity_dir, PathBuf::from("/var/run/netward/identity"));
        assert_eq!(m.validity, Duration::from_secs(24 * 3600));
        assert_eq!(m.namespace, "netward-system");
        assert_eq!(m.node_ip, None);
        let cfg = parse(&["--node-name", "n", "--mtls", "--node-ip", "10.0.0.7"]).expect("valid");
        assert_eq!(
            cfg.mtls.and_then(|m| m.node_ip),
            Some(std::net::IpAddr::from([10, 0, 0, 7]))
        );
    }
}
