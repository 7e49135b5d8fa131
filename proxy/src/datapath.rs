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
use netward_controller::{Decision, Flow, Protocol, Snapshot, Transport};
use netward_iptables::{CommandRunner, Config as RulesConfig, Ruleset};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit;
use crate::metrics::{BytesLabels, ConnLabels, Metrics};
use crate::net::{ClientAddr, OrigDst, connect_upstream, transparent_listener};
use crate::packet::FlowKey;
use crate::relay::{End, RelayOptions, Side, relay_until};
use crate::verdict::{Action, LaterSlot, VerdictConfig, run_queue_deferrable};

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
    /// Where audit records go.
    pub audit: audit::Sink,
    /// Also write an `open` record when an allowed TCP connection starts.
    pub audit_open: bool,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The mTLS tunnel between node proxies, when this node takes part.
    pub mtls: Option<crate::mesh::MtlsOptions>,
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
            audit: audit::Sink::disabled(),
            audit_open: false,
            metrics: Arc::new(Metrics::default()),
            mtls: None,
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
    /// The snapshot that decided (its ids name the policies in `decision`).
    pub snapshot: Arc<Snapshot>,
}

impl NodeDecision {
    /// The decision with names (policy and rule), for logs and the audit record.
    pub fn report(&self) -> DecisionReport {
        DecisionReport::new(&self.snapshot, &self.flow, &self.decision)
    }

    /// The audit record of this decision for the flow `key`.
    pub fn audit(
        &self,
        event: &str,
        key: &FlowKey,
        service: Option<audit::ServiceRef>,
    ) -> audit::Record {
        audit::record(
            &self.snapshot,
            event,
            &self.report(),
            self.enforced.as_str(),
            key.protocol,
            (&self.flow.src, key.src),
            (&self.flow.dst, key.dst),
            service,
        )
    }
}

impl NodeDecision {
    /// The labels of `netward_connections_total` for this decision: the deciding policy
    /// is the allowing rule's policy, or for a denial the first isolating policy of the
    /// side that denied it (ingress first), or `none`.
    pub fn metric_labels(&self, protocol: Protocol) -> ConnLabels {
        use netward_controller::Side;
        let sides = [
            (
                &self.decision.ingress,
                matches!(self.enforced, Enforced::Ingress | Enforced::Both),
            ),
            (
                &self.decision.egress,
                matches!(self.enforced, Enforced::Egress | Enforced::Both),
            ),
        ];
        let mut policy = None;
        for (side, enforced) in sides {
            if !enforced {
                continue;
            }
            let name = match side {
                Side::Denied { isolated_by } if !self.allowed => isolated_by.first(),
                Side::AuditDenied {
                    would_be_isolated_by,
                } => would_be_isolated_by.first(),
                Side::Allowed { policy, .. } if self.allowed => Some(policy),
                _ => None,
            };
            if let Some(id) = name {
                policy = Some(self.snapshot.policy(*id).key());
                if !self.allowed {
                    break;
                }
            }
        }
        ConnLabels {
            verdict: self.report_verdict().to_owned(),
            protocol: protocol.as_str().to_owned(),
            direction: self.enforced.as_str().to_owned(),
            policy: policy.unwrap_or_else(|| "none".to_owned()),
        }
    }

    fn report_verdict(&self) -> &'static str {
        if !self.allowed {
            "deny"
        } else if matches!(
            self.decision.verdict(),
            netward_controller::Verdict::AuditAllow
        ) {
            "audit-allow"
        } else {
            "allow"
        }
    }
}

/// Queued packets recognised as retransmissions of a flow just denied (not counted again).
pub static RETRANSMISSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Recently denied 5-tuples: a client retransmits its SYN (Linux: after 1, 3, 7, ... 127 s),
/// and each retransmission is queued again; it is the same attempt, counted and audited once.
struct RecentDenials {
    map: Mutex<HashMap<(Protocol, SocketAddr, SocketAddr), Instant>>,
}

/// Longer than Linux's whole SYN retry schedule (tcp_syn_retries = 6: 127 s).
const RETRANSMIT_WINDOW: Duration = Duration::from_secs(130);
const RECENT_MAX: usize = 1 << 17;

impl RecentDenials {
    fn is_retransmission(&self, key: &FlowKey) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        let now = Instant::now();
        let k = (key.protocol, key.src, key.dst);
        if map
            .get(&k)
            .is_some_and(|t| now.duration_since(*t) < RETRANSMIT_WINDOW)
        {
            return true;
        }
        if map.len() >= RECENT_MAX {
            map.retain(|_, t| now.duration_since(*t) < RETRANSMIT_WINDOW);
            if map.len() >= RECENT_MAX {
                map.clear();
            }
        }
        map.insert(k, now);
        false
    }
}

impl Enforced {
    /// The audit log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforced::Egress => "egress",
            Enforced::Ingress => "ingress",
            Enforced::Both => "both",
            Enforced::None => "none",
        }
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
    pub fn decide(&self, key: &FlowKey, transport: Transport) -> NodeDecision {
        decide(&self.snapshot(), self.node.as_deref(), key, transport)
    }

    /// This node's name, if it only enforces for its own pods.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
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
/// `transport` is how the flow reaches the destination's node (the tunnel or not).
pub fn decide(
    snap: &Arc<Snapshot>,
    node: Option<&str>,
    key: &FlowKey,
    transport: Transport,
) -> NodeDecision {
    let flow = Flow {
        src: snap.endpoint_for_ip(key.src.ip()),
        dst: snap.endpoint_for_ip(key.dst.ip()),
        protocol: key.protocol,
        port: key.dst.port(),
        transport,
    };
    let decision = snap.authorize(&flow);
    let local =
        |ep: &netward_controller::Endpoint| ep.pod.is_some_and(|p| is_local(snap.pod(p), node));
    // A local pod's connection to a pod on another node: that node enforces the
    // destination's ingress on arrival, but by then this node's proxy would have
    // completed the client's handshake. Applying the (cluster-wide) ingress decision here
    // too drops the SYN at the source, so the client sees what a firewall drop gives it.
    let src_local = local(&flow.src);
    let dst_local = local(&flow.dst) || (src_local && flow.dst.pod.is_some());
    let enforced = match (src_local, dst_local) {
        (true, true) => Enforced::Both,
        (true, false) => Enforced::Egress,
        (false, true) => Enforced::Ingress,
        (false, false) => Enforced::None,
    };
    // Fail closed before the source has seen the whole cluster (`Snapshot::not_ready`,
    // published by `netward node` until its watchers' initial lists complete): an empty
    // snapshot would otherwise allow everything.
    let allowed = snap.is_ready()
        && (!src_local || decision.egress.allows())
        && (!dst_local || decision.ingress.allows());
    NodeDecision {
        flow,
        decision,
        enforced,
        allowed,
        snapshot: snap.clone(),
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
    let (stop_tunnel, stop_tunnel_rx) = watch::channel(false);

    // The mTLS tunnel: the listener (advertised once up), and the source side's pool.
    let mut tunnel_server = None;
    let mut advertiser: Option<Arc<dyn crate::mesh::Advertiser>> = None;
    let mesh = match &opts.mtls {
        None => None,
        Some(mtls) => {
            let ktls = match crate::mtls::ktls::probe() {
                crate::mtls::ktls::KtlsSupport::Available => {
                    info!("kernel TLS is available; the tunnel uses userspace rustls");
                    true
                }
                crate::mtls::ktls::KtlsSupport::Unavailable { reason } => {
                    info!(reason = %reason, "kernel TLS unavailable; the tunnel uses userspace rustls");
                    false
                }
            };
            let _reloader = mtls.identity.spawn_reloader(Duration::from_secs(5));
            let (peers, adv) = mtls.peers.open();
            advertiser = Some(adv.clone());
            let handler = Arc::new(crate::mesh::TunnelHandler {
                policy: policy.clone(),
                opts: opts.clone(),
                listen: mtls.listen,
            });
            tunnel_server = Some(
                crate::mesh::start_server(mtls, handler, adv.as_ref(), stop_tunnel_rx)
                    .await
                    .map_err(|source| Error::Listen {
                        addr: mtls.listen,
                        source,
                    })?,
            );
            let mesh = Arc::new(crate::mesh::Mesh::new(
                mtls,
                peers,
                tokio::runtime::Handle::current(),
            ));
            opts.metrics.watch_mtls(crate::metrics::MtlsMetrics {
                ktls,
                identity: mtls.identity.clone(),
                client: mesh.client().clone(),
            });
            Some(mesh)
        }
    };

    // The verdict thread: blocking netlink I/O, off the async workers.
    let verdicts = {
        let (policy, pending, stop) = (policy.clone(), pending.clone(), stop.clone());
        let (mesh, opts2) = (mesh.clone(), opts.clone());
        let cfg = VerdictConfig {
            queue_num: opts.rules.queue_num,
            reject_mark: opts.rules.marks.reject,
            mark_mask: opts.rules.marks.mask,
            queue_maxlen: 8192,
        };
        let (reject, audit, metrics) = (opts.reject, opts.audit.clone(), opts.metrics.clone());
        std::thread::Builder::new()
            .name("netward-verdict".into())
            .spawn(move || {
                let vctx = VerdictCtx {
                    policy: &policy,
                    pending: &pending,
                    mesh: mesh.as_ref(),
                    opts: &opts2,
                };
                verdict_loop(&cfg, &vctx, &stop, reject, &audit, &metrics)
            })
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
            mesh: mesh.clone(),
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
    opts.metrics.published(&policy.snapshot());
    opts.metrics.ready.store(true, Ordering::Relaxed);

    // Follow pod IP changes: only the local sets and the queue chain are rewritten.
    let mut rx = policy.snapshots.clone();
    let runner = CommandRunner::new();
    let follow = async {
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            opts.metrics.published(&snap);
            let ips = local_ips(&snap, opts.node.as_deref());
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
    if let (Some(mtls), Some(adv)) = (&opts.mtls, &advertiser) {
        // Withdraw first, so that sources stop choosing this node for new streams.
        if let Err(e) = adv.withdraw(mtls.identity.node()).await {
            warn!(error = %e, "cannot withdraw the tunnel advertisement");
        }
    }
    let _ = stop_tunnel.send(true);
    if let Some(t) = tunnel_server {
        t.abort();
    }
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.abort();
    }
    let _ = tokio::task::spawn_blocking(move || verdicts.join()).await;
    Ok(())
}

/// What the verdict thread decides with.
struct VerdictCtx<'a> {
    policy: &'a NodePolicy,
    pending: &'a Pending,
    mesh: Option<&'a Arc<crate::mesh::Mesh>>,
    opts: &'a Options,
}

fn verdict_loop(
    cfg: &VerdictConfig,
    vctx: &VerdictCtx<'_>,
    stop: &AtomicBool,
    reject: bool,
    audit: &audit::Sink,
    metrics: &Metrics,
) {
    let (policy, pending) = (vctx.policy, vctx.pending);
    let recent = RecentDenials {
        map: Mutex::new(HashMap::new()),
    };
    let decide = |key: &FlowKey, slot: &LaterSlot<'_>| -> Action {
        let started = Instant::now();
        let snap = policy.snapshot();
        let route = vctx.mesh.and_then(|m| m.route(&snap, policy.node(), key));
        let d = decide(
            &snap,
            policy.node(),
            key,
            crate::mesh::transport_of(route.as_ref()),
        );
        metrics
            .verdict_seconds
            .observe(started.elapsed().as_secs_f64());
        if !d.allowed && recent.is_retransmission(key) {
            RETRANSMISSIONS.fetch_add(1, Ordering::Relaxed);
            return if reject { Action::Reject } else { Action::Drop };
        }
        metrics
            .connections
            .get_or_create(&d.metric_labels(key.protocol))
            .inc();
        if d.allowed {
            if let (Some(route), Some(mesh)) = (route, vctx.mesh) {
                // Held until the destination node has answered (see `mesh`).
                if mesh.in_flight(key) {
                    // A retransmitted SYN: the first one is held and will be answered.
                    return Action::Drop;
                }
                mesh.start_open(*key, d, route, slot.take(), vctx.opts);
                return Action::Defer;
            }
            if key.protocol == Protocol::Tcp {
                pending.insert((key.src, key.dst), d);
            } else {
                // UDP and SCTP: the kernel forwards the flow; this is its one record.
                if audit.enabled() {
                    audit.send(audit::Event::Record(Box::new(d.audit("flow", key, None))));
                }
                debug!(protocol = %key.protocol, src.addr = %key.src, dst.addr = %key.dst, "flow allowed");
            }
            Action::Accept
        } else {
            // One event per queued first packet (SYN retransmits included); the audit
            // writer deduplicates and aggregates them. Logged at debug only: a flood
            // must not turn into synchronous log writes on this thread.
            if audit.enabled() {
                let (key, d) = (*key, d.clone());
                audit.send(audit::Event::Deny(audit::Deny {
                    key: (key.protocol, key.src.ip(), key.dst.ip(), key.dst.port()),
                    at: std::time::SystemTime::now(),
                    make: Box::new(move || d.audit("deny", &key, None)),
                }));
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                let report = d.report();
                debug!(
                    protocol = %key.protocol,
                    src.addr = %key.src,
                    dst.addr = %key.dst,
                    enforced = d.enforced.as_str(),
                    egress = %report.egress.describe(netward_controller::Direction::Egress),
                    ingress = %report.ingress.describe(netward_controller::Direction::Ingress),
                    "flow denied"
                );
            }
            if reject { Action::Reject } else { Action::Drop }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match run_queue_deferrable(cfg, &decide, stop) {
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
    mesh: Option<Arc<crate::mesh::Mesh>>,
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
    // A connection whose SYN waited for its tunnel stream: relay into that stream.
    if let Some(mesh) = &ctx.mesh
        && let Some((stream, d)) = mesh.take_ready(&(peer, orig))
    {
        let revoke = revoked(ctx.policy.clone(), key, Transport::Tunnel);
        crate::mesh::relay_tunneled(
            client,
            stream,
            (&d, &key),
            mesh.idle_timeout(),
            &ctx.opts,
            revoke,
        )
        .await;
        return;
    }
    // The verdict from the queue, or (if it expired) the same decision again. A flow
    // that belongs in the tunnel but has no stream is refused: never plaintext instead.
    let decision = ctx.pending.take(&(peer, orig)).unwrap_or_else(|| {
        let snap = ctx.policy.snapshot();
        let route = ctx
            .mesh
            .as_ref()
            .and_then(|m| m.route(&snap, ctx.policy.node(), &key));
        let mut d = decide(
            &snap,
            ctx.policy.node(),
            &key,
            crate::mesh::transport_of(route.as_ref()),
        );
        if route.is_some() {
            d.allowed = false;
        }
        d
    });
    let audit = &ctx.opts.audit;
    if !decision.allowed {
        debug!("denied at accept (the snapshot changed since the SYN)");
        if audit.enabled() {
            let d = decision.clone();
            audit.send(audit::Event::Deny(audit::Deny {
                key: (key.protocol, key.src.ip(), key.dst.ip(), key.dst.port()),
                at: std::time::SystemTime::now(),
                make: Box::new(move || d.audit("deny", &key, None)),
            }));
        }
        reset(&client);
        return;
    }
    let service = if audit.enabled() {
        service_of(&client, orig, &decision.snapshot)
    } else {
        None
    };
    if ctx.opts.audit_open {
        audit.send(audit::Event::Record(Box::new(decision.audit(
            "open",
            &key,
            service.clone(),
        ))));
    }
    let mark = Some(ctx.opts.rules.marks.bypass);
    // Keep the client's address, except for a pod reaching itself through a Service
    // (hairpin): a packet from its own address would be dropped by the pod's kernel as
    // martian, so it comes from the node, as kube-proxy's hairpin masquerade does.
    let src = (peer.ip() != orig.ip()).then_some(ClientAddr(peer));
    let started = std::time::Instant::now();
    let upstream = match connect_upstream(OrigDst(orig), src, mark, ctx.opts.connect_timeout).await
    {
        Ok(u) => u,
        Err(e) => {
            debug!(error = %e, "upstream connect failed");
            reset(&client);
            if audit.enabled() {
                let mut r = decision.audit("close", &key, service);
                r.bytes = Some(audit::Bytes::default());
                r.duration_ms = Some(millis(started.elapsed()));
                r.closed_by = Some("server".to_owned());
                r.close = Some("error".to_owned());
                audit.send(audit::Event::Record(Box::new(r)));
            }
            return;
        }
    };
    // Re-check on every new snapshot; end the relay with resets when no longer allowed.
    let revoke = revoked(ctx.policy.clone(), key, Transport::Plaintext);
    let metrics = &ctx.opts.metrics;
    metrics.active.inc();
    let relayed = relay_until(client, upstream, &ctx.opts.relay, revoke).await;
    metrics.active.dec();
    let (outcome, failed) = match relayed {
        Ok(out) => (out, None),
        Err(e) => (*e.outcome(), Some(e.side())),
    };
    for (dir, n) in [
        ("to_server", outcome.client_to_upstream),
        ("to_client", outcome.upstream_to_client),
    ] {
        metrics
            .bytes
            .get_or_create(&BytesLabels {
                direction: dir.to_owned(),
            })
            .inc_by(n);
    }
    debug!(
        bytes.to_upstream = outcome.client_to_upstream,
        bytes.to_client = outcome.upstream_to_client,
        duration_ms = millis(outcome.duration),
        end = %outcome.end,
        "connection closed"
    );
    if audit.enabled() {
        let mut r = decision.audit("close", &key, service);
        r.bytes = Some(audit::Bytes {
            to_server: outcome.client_to_upstream,
            to_client: outcome.upstream_to_client,
        });
        r.duration_ms = Some(millis(outcome.duration));
        let side = |s: Side| {
            if s == Side::Client {
                "client"
            } else {
                "server"
            }
        };
        let (by, how) = match (outcome.end, failed) {
            (_, Some(s)) => (side(s), "error"),
            (End::Fin { first }, None) => (side(first), "fin"),
            (End::Rst { side: s }, None) => (side(s), "rst"),
            (End::Error { side: s }, None) => (side(s), "error"),
            (End::IdleTimeout, None) => ("netward", "idle-timeout"),
            (End::Revoked, None) => ("netward", "revoked"),
        };
        r.closed_by = Some(by.to_owned());
        r.close = Some(how.to_owned());
        audit.send(audit::Event::Record(Box::new(r)));
    }
}

/// Completes when a new snapshot no longer allows the flow.
async fn revoked(policy: NodePolicy, key: FlowKey, transport: Transport) {
    let mut rx = policy.snapshots.clone();
    loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let snap = rx.borrow_and_update().clone();
        if !decide(&snap, policy.node.as_deref(), &key, transport).allowed {
            return;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The Service the client addressed, if the service proxy's DNAT rewrote the
/// destination: conntrack's original destination (SO_ORIGINAL_DST) differs from ours.
fn service_of(client: &TcpStream, orig: SocketAddr, snap: &Snapshot) -> Option<audit::ServiceRef> {
    let sock = socket2::SockRef::from(client);
    let before = if orig.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let before = before.ok()?.as_socket()?;
    if before == orig {
        return None;
    }
    Some(audit::ServiceRef {
        name: snap
            .service_for_ip(before.ip())
            .map(|s| s.key())
            .unwrap_or_default(),
        ip: before.ip().to_string(),
        port: before.port(),
    })
}
