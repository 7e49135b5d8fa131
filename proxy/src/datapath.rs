//! One node's datapath: the interception rules, a verdict on the first packet of
//! every new flow, and the splice relay for allowed TCP connections.
//!
//! The path of one TCP connection (see ARCHITECTURE.md):
//! 1. a local pod's SYN (or a SYN to a local pod) is diverted by TPROXY to the
//!    transparent listener and marked;
//! 2. in INPUT it is queued (NFQUEUE): [`NodePolicy::decide`] asks the engine, and the
//!    verdict accepts, drops (the client times out) or rejects (RST) it *before* the
//!    kernel completes the handshake;
//! 3. the listener accepts; the proxy connects to the original destination with the
//!    client's address (IP_TRANSPARENT) and the bypass mark;
//! 4. the relay splices bytes both ways until FIN, RST, idle timeout, or until a new
//!    snapshot no longer allows the flow (revoked).
//!
//! UDP and SCTP flows are decided the same way on their first packet and then
//! forwarded by the kernel.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netward_controller::render::DecisionReport;
use netward_controller::{Decision, Flow, Protocol, Snapshot};
use netward_iptables::{CommandRunner, Config as RulesConfig, Ruleset};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::net::{ClientAddr, OrigDst, connect_upstream, transparent_listener};
use crate::packet::FlowKey;
use crate::relay::{RelayOptions, relay_until};
use crate::verdict::{Action, VerdictConfig, run_queue};

/// Errors that stop the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interception rules could not be installed.
    #[error("cannot install the interception rules: {0}")]
    Rules(#[from] netward_iptables::apply::Error),
    /// A transparent listener could not be opened.
    #[error("cannot listen on {addr} (IP_TRANSPARENT needs CAP_NET_ADMIN): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the datapath runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Marks, ports, tables and queue numbers of the interception rules.
    pub rules: RulesConfig,
    /// Answer denied TCP connections with a reset instead of dropping their SYN.
    pub reject: bool,
    /// The relay's options (splice or copy, buffer size, idle timeout).
    pub relay: RelayOptions,
    /// How long to wait for the upstream's handshake.
    pub connect_timeout: Duration,
    /// This node's name: its pods are those with this `spec.nodeName` (all pods when `None`).
    pub node: Option<String>,
    /// Remove the rules on exit (`netward run` does; a DaemonSet keeps them to fail closed).
    pub cleanup_on_exit: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rules: RulesConfig::default(),
            reject: false,
            relay: RelayOptions::default(),
            connect_timeout: Duration::from_secs(10),
            node: None,
            cleanup_on_exit: true,
        }
    }
}

/// Which sides of a flow this node enforces: the egress of its own pods, and the
/// ingress of its own pods. A flow between two nodes is checked on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforced {
    /// The source pod is local.
    Egress,
    /// The destination pod is local.
    Ingress,
    /// Both pods are local.
    Both,
    /// Neither end is a local pod (the flow should not have been diverted).
    None,
}

/// This node's decision on one flow.
#[derive(Clone, Debug)]
pub struct NodeDecision {
    /// The flow as the engine saw it.
    pub flow: Flow,
    /// The engine's decision, both sides.
    pub decision: Decision,
    /// Which sides this node enforces.
    pub enforced: Enforced,
    /// Whether this node lets it through.
    pub allowed: bool,
    /// The snapshot generation that decided.
    pub generation: u64,
}

impl NodeDecision {
    /// The decision with names (policy and rule), for logs and the audit record.
    pub fn report(&self, snap: &Snapshot) -> DecisionReport {
        DecisionReport::new(snap, &self.flow, &self.decision)
    }
}

/// The policy as this node applies it: the current snapshot and the node's name.
#[derive(Clone)]
pub struct NodePolicy {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    node: Option<Arc<str>>,
}

impl NodePolicy {
    /// Follows the snapshots published on `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, node: Option<&str>) -> NodePolicy {
        NodePolicy {
            snapshots,
            node: node.map(Arc::from),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Decides a flow against the current snapshot.
    pub fn decide(&self, key: &FlowKey) -> NodeDecision {
        decide(&self.snapshot(), self.node.as_deref(), key)
    }

    /// The IPs of this node's pods, which the rules divert.
    pub fn local_ips(&self) -> Vec<IpAddr> {
        local_ips(&self.snapshot(), self.node.as_deref())
    }
}

fn is_local(pod: &netward_controller::model::Pod, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod.node.as_deref() == Some(n))
}

/// Decides a flow for a node: the engine's one evaluation, then the sides this node owns.
pub fn decide(snap: &Snapshot, node: Option<&str>, key: &FlowKey) -> NodeDecision {
    let flow = Flow {
        src: snap.endpoint_for_ip(key.src.ip()),
        dst: snap.endpoint_for_ip(key.dst.ip()),
        protocol: key.protocol,
        port: key.dst.port(),
    };
    let decision = snap.authorize(&flow);
    let local =
        |ep: &netward_controller::Endpoint| ep.pod.is_some_and(|p| is_local(snap.pod(p), node));
    let (src_local, dst_local) = (local(&flow.src), local(&flow.dst));
    let enforced = match (src_local, dst_local) {
        (true, true) => Enforced::Both,
        (true, false) => Enforced::Egress,
        (false, true) => Enforced::Ingress,
        (false, false) => Enforced::None,
    };
    let allowed =
        (!src_local || decision.egress.allows()) && (!dst_local || decision.ingress.allows());
    NodeDecision {
        flow,
        decision,
        enforced,
        allowed,
        generation: snap.generation(),
    }
}

/// The IPs of a node's live pods.
pub fn local_ips(snap: &Snapshot, node: Option<&str>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = snap
        .pod_ids()
        .into_iter()
        .map(|id| snap.pod(id))
        .filter(|p| is_local(p, node))
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Verdicts handed from the queue thread to the accept path, by (client, original destination).
#[derive(Default)]
struct Pending {
    map: Mutex<HashMap<(SocketAddr, SocketAddr), (NodeDecision, Instant)>>,
}

/// How long a verdict waits for its connection to be accepted.
const PENDING_TTL: Duration = Duration::from_secs(30);
/// Above this many waiting verdicts, expired ones are swept on insert.
const PENDING_SWEEP: usize = 4096;

impl Pending {
    fn insert(&self, key: (SocketAddr, SocketAddr), d: NodeDecision) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= PENDING_SWEEP {
            map.retain(|_, (_, at)| at.elapsed() < PENDING_TTL);
        }
        map.insert(key, (d, Instant::now()));
    }

    fn take(&self, key: &(SocketAddr, SocketAddr)) -> Option<NodeDecision> {
        self.map.lock().ok()?.remove(key).map(|(d, _)| d)
    }
}

/// Runs the datapath until `shutdown` completes. Installs the rules first, and removes
/// them on the way out when `opts.cleanup_on_exit` is set.
pub async fn run(
    opts: Options,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let policy = NodePolicy::new(snapshots.clone(), opts.node.as_deref());
    let runner = CommandRunner::new();
    let mut ruleset = Ruleset::new(opts.rules.clone());
    ruleset.set_local(policy.local_ips());
    netward_iptables::apply::apply(&runner, &ruleset)?;
    info!(
        local.pods = ruleset.local_v4().len() + ruleset.local_v6().len(),
        "interception rules installed"
    );

    let result = serve(&opts, &policy, ruleset, shutdown).await;
    if opts.cleanup_on_exit {
        match netward_iptables::apply::remove(&runner, &opts.rules) {
            Ok(_) => info!("interception rules removed"),
            Err(e) => {
                warn!(error = %e, "could not remove every interception rule: run `netward cleanup`")
            }
        }
    }
    result
}

async fn serve(
    opts: &Options,
    policy: &NodePolicy,
    mut ruleset: Ruleset,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let pending = Arc::new(Pending::default());
    let stop = Arc::new(AtomicBool::new(false));

    // The verdict thread: blocking netlink I/O, off the async workers.
    let verdicts = {
        let (policy, pending, stop) = (policy.clone(), pending.clone(), stop.clone());
        let cfg = VerdictConfig {
            queue_num: opts.rules.queue_num,
            reject_mark: opts.rules.marks.reject,
            mark_mask: opts.rules.marks.mask,
            queue_maxlen: 8192,
        };
        let reject = opts.reject;
        std::thread::Builder::new()
            .name("netward-verdict".into())
            .spawn(move || verdict_loop(&cfg, &policy, &pending, &stop, reject))
            .map_err(|source| Error::Listen {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.rules.tcp_port)),
                source,
            })?
    };

    let mut listeners = Vec::new();
    let mut addrs = vec![SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        opts.rules.tcp_port,
    ))];
    if opts.rules.ipv6 {
        addrs.push(SocketAddr::from((
            Ipv6Addr::UNSPECIFIED,
            opts.rules.tcp_port,
        )));
    }
    for addr in addrs {
        let listener =
            transparent_listener(addr).map_err(|source| Error::Listen { addr, source })?;
        let ctx = Ctx {
            policy: policy.clone(),
            pending: pending.clone(),
            opts: opts.clone(),
        };
        listeners.push(tokio::spawn(
            accept_loop(listener, ctx).instrument(info_span!("listener", listen.addr = %addr)),
        ));
    }

    info!(
        tproxy.port = opts.rules.tcp_port,
        queue = opts.rules.queue_num,
        reject = opts.reject,
        "datapath ready"
    );

    // Follow pod IP changes: only the local sets and the queue chain are rewritten.
    let mut rx = policy.snapshots.clone();
    let runner = CommandRunner::new();
    let follow = async {
        while rx.changed().await.is_ok() {
            let ips = local_ips(&rx.borrow_and_update(), opts.node.as_deref());
            let mut next = ruleset.clone();
            next.set_local(ips);
            if next.local_v4() != ruleset.local_v4() || next.local_v6() != ruleset.local_v6() {
                match netward_iptables::apply::update_local(&runner, &next) {
                    Ok(_) => {
                        info!(
                            local.pods = next.local_v4().len() + next.local_v6().len(),
                            "interception rules follow the local pods"
                        );
                        ruleset = next;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not update the local pod set; retrying on the next change")
                    }
                }
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = shutdown => info!("shutting down"),
        () = follow => {}
    }
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.abort();
    }
    let _ = tokio::task::spawn_blocking(move || verdicts.join()).await;
    Ok(())
}

fn verdict_loop(
    cfg: &VerdictConfig,
    policy: &NodePolicy,
    pending: &Pending,
    stop: &AtomicBool,
    reject: bool,
) {
    let decide = |key: &FlowKey| -> Action {
        let d = policy.decide(key);
        if d.allowed {
            if key.protocol == Protocol::Tcp {
                pending.insert((key.src, key.dst), d);
            } else {
                debug!(protocol = %key.protocol, src.addr = %key.src, dst.addr = %key.dst, "flow allowed");
            }
            Action::Accept
        } else {
            let snap = policy.snapshot();
            let report = d.report(&snap);
            info!(
                protocol = %key.protocol,
                src.addr = %key.src,
                dst.addr = %key.dst,
                enforced = ?d.enforced,
                egress = %report.egress.describe(netward_controller::Direction::Egress),
                ingress = %report.ingress.describe(netward_controller::Direction::Ingress),
                "flow denied"
            );
            if reject { Action::Reject } else { Action::Drop }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match run_queue(cfg, &decide, stop) {
            Ok(()) => break,
            Err(e) => {
                // Fail closed meanwhile: without a reader the kernel drops queued packets.
                warn!(error = %e, "verdict queue failed; reopening in 1s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[derive(Clone)]
struct Ctx {
    policy: NodePolicy,
    pending: Arc<Pending>,
    opts: Options,
}

async fn accept_loop(listener: TcpListener, ctx: Ctx) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let span =
                        info_span!("conn", client.addr = %peer, dst.addr = tracing::field::Empty);
                    handle(stream, peer, ctx).instrument(span).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn handle(client: TcpStream, peer: SocketAddr, ctx: Ctx) {
    let orig = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot read the original destination");
            return;
        }
    };
    tracing::Span::current().record("dst.addr", tracing::field::display(orig));
    let key = FlowKey {
        protocol: Protocol::Tcp,
        src: peer,
        dst: orig,
    };
    // The verdict from the queue, or (if it expired) the same decision again.
    let decision = ctx
        .pending
        .take(&(peer, orig))
        .unwrap_or_else(|| ctx.policy.decide(&key));
    if !decision.allowed {
        debug!("denied at accept (the snapshot changed since the SYN)");
        reset(&client);
        return;
    }
    let mark = Some(ctx.opts.rules.marks.bypass);
    // Keep the client's address, except for a pod reaching itself through a Service
    // (hairpin): a packet from its own address would be dropped by the pod's kernel as
    // martian, so it comes from the node, as kube-proxy's hairpin masquerade does.
    let src = (peer.ip() != orig.ip()).then_some(ClientAddr(peer));
    let upstream = match connect_upstream(OrigDst(orig), src, mark, ctx.opts.connect_timeout).await
    {
        Ok(u) => u,
        Err(e) => {
            info!(error = %e, "upstream connect failed");
            reset(&client);
            return;
        }
    };
    // Re-check on every new snapshot; end the relay with resets when no longer allowed.
    let revoke = {
        let policy = ctx.policy.clone();
        let mut rx = policy.snapshots.clone();
        async move {
            loop {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let snap = rx.borrow_and_update().clone();
                if !decide(&snap, policy.node.as_deref(), &key).allowed {
                    return;
                }
            }
        }
    };
    match relay_until(client, upstream, &ctx.opts.relay, revoke).await {
        Ok(out) => info!(
            bytes.to_upstream = out.client_to_upstream,
            bytes.to_client = out.upstream_to_client,
            duration_ms = u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
            end = %out.end,
            "connection closed"
        ),
        Err(e) => info!(error = %e, "connection failed"),
    }
}
