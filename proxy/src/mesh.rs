//! The datapath's side of the mTLS tunnel (`docs/mtls.md`): which connections go
//! through it, holding their SYN until the destination node has answered, and the
//! destination node's checks before it connects to its pod.
//!
//! Source node: a local pod's SYN toward a pod on another node, whose namespace is
//! `permissive` or `strict` and whose node advertises the tunnel, is decided with
//! transport = tunnel, then *held* in the verdict queue ([`Action::Defer`]) while a
//! stream is opened. The destination node answers only after its own checks and its
//! connect to the pod: on `200` the SYN is accepted and the proxy relays the accepted
//! connection into the ready stream; on a refusal or a failure the SYN is dropped (or
//! rejected with `--reject`) and audited. The client sees exactly what it would see
//! without the tunnel, and a connection toward a node that advertises the tunnel never
//! falls back to plaintext.
//!
//! Destination node: [`TunnelHandler`] checks that the claimed source pod runs on the
//! peer node (from its certificate) with that IP and UID, then the destination pod's
//! ingress with transport = tunnel (the same [`decide`] as every other flow), connects
//! with the source pod's IP kept, and audits.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use netward_controller::render::DecisionReport;
use netward_controller::{MtlsMode, Protocol, Snapshot, Transport};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::audit;
use crate::datapath::{NodeDecision, NodePolicy, Options, decide};
use crate::mtls::identity::TlsIdentity;
use crate::mtls::peers::Peers;
use crate::mtls::tunnel::{
    Handler, Refusal, RefusalKind, RefusedEvent, StreamEnd, StreamOutcome, StreamRequest,
    TunnelClient, TunnelConfig, TunnelSide, TunnelStream,
};
use crate::net::{ClientAddr, OrigDst, connect_upstream};
use crate::packet::FlowKey;
use crate::verdict::{Action, Later};

/// A node's tunnel settings (`netward run --mtls-identity ...`).
#[derive(Clone)]
pub struct MtlsOptions {
    /// This node's certificate, key and trust bundle (reloaded on change).
    pub identity: TlsIdentity,
    /// Where this node's tunnel listener binds (the node IP, port 15008 by default).
    pub listen: SocketAddr,
    /// Where this node advertises its tunnel and learns the others'.
    pub peers: PeerSource,
    /// Pooling, timeouts and marks of the tunnel.
    pub tunnel: TunnelConfig,
}

impl std::fmt::Debug for MtlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsOptions")
            .field("node", &self.identity.node())
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// Publishes and withdraws this node's tunnel listener.
pub trait Advertiser: Send + Sync + 'static {
    /// Advertises `node`'s tunnel at `addr` (once the listener is up).
    fn advertise(&self, node: &str, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<()>>;
    /// Withdraws it (when the node drains).
    fn withdraw(&self, node: &str) -> BoxFuture<'static, std::io::Result<()>>;
}

/// Where the tunnel advertisements live.
#[derive(Clone)]
pub enum PeerSource {
    /// Files in a directory every node reads (`netward run`, the lab).
    Dir(PathBuf),
    /// A feed and an advertiser provided by the caller (the node agent: Leases).
    Provided {
        /// The advertised tunnels.
        peers: watch::Receiver<Arc<Peers>>,
        /// Publishes this node's.
        advertiser: Arc<dyn Advertiser>,
    },
}

impl std::fmt::Debug for PeerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSource::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            PeerSource::Provided { .. } => f.write_str("Provided"),
        }
    }
}

/// The file-based advertiser of [`PeerSource::Dir`].
struct DirAdvertiser(PathBuf);

impl Advertiser for DirAdvertiser {
    fn advertise(&self, node: &str, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<()>> {
        let r = crate::mtls::peers::advertise(&self.0, node, addr);
        Box::pin(std::future::ready(r))
    }

    fn withdraw(&self, node: &str) -> BoxFuture<'static, std::io::Result<()>> {
        let r = crate::mtls::peers::withdraw(&self.0, node);
        Box::pin(std::future::ready(r))
    }
}

impl PeerSource {
    /// The feed of advertisements and the advertiser for this node.
    pub(crate) fn open(&self) -> (watch::Receiver<Arc<Peers>>, Arc<dyn Advertiser>) {
        match self {
            PeerSource::Dir(dir) => (
                crate::mtls::peers::watch_dir(dir.clone(), Duration::from_millis(200)),
                Arc::new(DirAdvertiser(dir.clone())),
            ),
            PeerSource::Provided { peers, advertiser } => (peers.clone(), advertiser.clone()),
        }
    }
}

/// Tunnel counters since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Streams opened by this node (source side) and answered 200.
    pub opened: AtomicU64,
    /// Streams this node could not open (refused by the far end, or failed).
    pub open_failed: AtomicU64,
    /// Streams this node accepted as the destination.
    pub accepted: AtomicU64,
    /// Connections or streams this node refused as the destination (TLS included).
    pub refused: AtomicU64,
    /// Connections refused at a bound (TLS handshakes in flight, connections per node).
    pub limited: AtomicU64,
}

/// Process-wide tunnel counters.
pub static TUNNEL_STATS: TunnelStats = TunnelStats {
    opened: AtomicU64::new(0),
    open_failed: AtomicU64::new(0),
    accepted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    limited: AtomicU64::new(0),
};

/// Ready streams at most (the oldest is closed first past it).
const READY_MAX: usize = 8192;

/// How long a ready stream waits for the client's connection to be accepted.
const READY_TTL: Duration = Duration::from_secs(30);

type ConnKey = (SocketAddr, SocketAddr);

/// The source side of the tunnel for one node's datapath.
pub(crate) struct Mesh {
    client: TunnelClient,
    peers: watch::Receiver<Arc<Peers>>,
    ready: crate::parked::Parked<ConnKey, (TunnelStream, NodeDecision)>,
    inflight: Mutex<HashSet<ConnKey>>,
    runtime: tokio::runtime::Handle,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Mesh {
    pub(crate) fn new(
        mtls: &MtlsOptions,
        peers: watch::Receiver<Arc<Peers>>,
        runtime: tokio::runtime::Handle,
    ) -> Mesh {
        Mesh {
            client: TunnelClient::new(mtls.identity.client_config(), mtls.tunnel.clone()),
            peers,
            ready: crate::parked::Parked::new(READY_TTL, READY_MAX),
            inflight: Mutex::new(HashSet::new()),
            runtime,
            connect_timeout: mtls.tunnel.connect_timeout,
            idle_timeout: mtls.tunnel.idle_timeout,
        }
    }

    /// The tunnel endpoint (node name, address) this flow goes through, if any: TCP to a
    /// pod on another node whose namespace adopted mTLS and whose node advertises it.
    pub(crate) fn route(
        &self,
        snap: &Snapshot,
        node: Option<&str>,
        key: &FlowKey,
    ) -> Option<(String, SocketAddr)> {
        route(&self.peers.borrow(), snap, node, key)
    }

    /// Whether an open is already under way for this connection (a SYN retransmission).
    pub(crate) fn in_flight(&self, key: &FlowKey) -> bool {
        self.inflight
            .lock()
            .is_ok_and(|s| s.contains(&(key.src, key.dst)))
    }

    /// Opens the stream for a held SYN, then answers it.
    pub(crate) fn start_open(
        self: &Arc<Self>,
        key: FlowKey,
        d: NodeDecision,
        (peer_node, peer_addr): (String, SocketAddr),
        later: Later,
        opts: &Options,
        recent: Arc<crate::datapath::RecentDenials>,
    ) {
        if let Ok(mut s) = self.inflight.lock() {
            s.insert((key.src, key.dst));
        }
        let mesh = self.clone();
        let (reject, audit) = (opts.reject, opts.audit.clone());
        self.runtime.spawn(async move {
            let req = StreamRequest {
                dst: key.dst,
                src: key.src,
                src_uid: d
                    .flow
                    .src
                    .pod
                    .and_then(|p| d.snapshot.pod(p).uid.clone()),
            };
            let bound = mesh.connect_timeout.saturating_mul(3);
            let opened =
                tokio::time::timeout(bound, mesh.client.open(&peer_node, peer_addr, &req)).await;
            let failure = match opened {
                Ok(Ok(stream)) => {
                    TUNNEL_STATS.opened.fetch_add(1, Ordering::Relaxed);
                    // Streams whose client never completed its handshake expire here
                    // (closing them), in O(1), bounded in number.
                    mesh.ready.insert((key.src, key.dst), (stream, d.clone()));
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "opening a stream through node {peer_node} took longer than {bound:?}"
                )),
            };
            if let Ok(mut s) = mesh.inflight.lock() {
                s.remove(&(key.src, key.dst));
            }
            match failure {
                None => later.answer(Action::Accept),
                Some(why) => {
                    TUNNEL_STATS.open_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(src.addr = %key.src, dst.addr = %key.dst, peer.node = %peer_node, error = %why, "tunnel stream refused or failed");
                    // The client's retransmissions are this attempt: not opened or audited again.
                    recent.note(&key);
                    later.answer(if reject { Action::Reject } else { Action::Drop });
                    audit_tunnel_deny(&audit, &d, &key, Some(peer_node), why);
                }
            }
        });
    }

    /// Closes the ready streams whose client did not complete its handshake in time.
    pub(crate) fn sweep_ready(&self) {
        let _ = self.ready.sweep();
    }

    /// The ready stream of an accepted connection.
    pub(crate) fn take_ready(&self, key: &ConnKey) -> Option<(TunnelStream, NodeDecision)> {
        self.ready.take(key)
    }

    /// The source side's connection pool.
    pub(crate) fn client(&self) -> &TunnelClient {
        &self.client
    }

    /// The relay's idle timeout.
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// See [`Mesh::route`].
pub fn route(
    peers: &Peers,
    snap: &Snapshot,
    node: Option<&str>,
    key: &FlowKey,
) -> Option<(String, SocketAddr)> {
    if key.protocol != Protocol::Tcp || peers.is_empty() {
        return None;
    }
    let dst = snap.endpoint_for_ip(key.dst.ip()).pod?;
    let src = snap.endpoint_for_ip(key.src.ip()).pod?;
    let dst_node = snap.pod(dst).node.as_deref()?;
    let src_node = snap.pod(src).node.as_deref();
    if node.is_none() || node == Some(dst_node) || src_node != node {
        return None;
    }
    if snap.mtls_mode(dst) == MtlsMode::Disabled {
        return None;
    }
    peers.get(dst_node).map(|a| (dst_node.to_owned(), a))
}

/// The transport a flow takes from this node.
pub(crate) fn transport_of(route: Option<&(String, SocketAddr)>) -> Transport {
    if route.is_some() {
        Transport::Tunnel
    } else {
        Transport::Plaintext
    }
}

/// Relays an accepted connection into its ready stream until it ends or `revoke`
/// completes (a new snapshot no longer allows it: both ends are reset). The audit
/// record says `mtls`.
pub(crate) async fn relay_tunneled(
    client: TcpStream,
    stream: TunnelStream,
    (d, key): (&NodeDecision, &FlowKey),
    idle: Duration,
    opts: &Options,
    revoke: impl std::future::Future<Output = ()>,
) {
    let peer_node = stream.peer_node().to_owned();
    // A second handle on the client socket, to reset it if the relay is revoked.
    let guard = socket2::SockRef::from(&client).try_clone().ok();
    let started = Instant::now();
    opts.metrics.active.inc();
    let outcome = tokio::select! {
        out = crate::mtls::tunnel::relay(client, stream, idle) => Some(out),
        () = revoke => None,
    };
    opts.metrics.active.dec();
    if outcome.is_none()
        && let Some(g) = &guard
    {
        let _ = g.set_linger(Some(Duration::ZERO));
    }
    drop(guard);
    if let Some(out) = &outcome {
        count_bytes(opts, out);
    }
    if opts.audit.enabled() {
        let mut r = d.audit("close", key, None);
        match &outcome {
            Some(out) => close_fields(&mut r, out),
            None => {
                r.duration_ms =
                    Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                r.closed_by = Some("netward".to_owned());
                r.close = Some("revoked".to_owned());
            }
        }
        r.mtls = true;
        r.peer_node = Some(peer_node);
        opts.audit.send(audit::Event::Record(Box::new(r)));
    }
}

fn count_bytes(opts: &Options, outcome: &StreamOutcome) {
    for (dir, n) in [
        ("to_server", outcome.to_server),
        ("to_client", outcome.to_client),
    ] {
        opts.metrics
            .bytes
            .get_or_create(&crate::metrics::BytesLabels {
                direction: dir.to_owned(),
            })
            .inc_by(n);
    }
}

fn close_fields(r: &mut audit::Record, outcome: &StreamOutcome) {
    r.bytes = Some(audit::Bytes {
        to_server: outcome.to_server,
        to_client: outcome.to_client,
    });
    r.duration_ms = Some(u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX));
    let side = |s: &TunnelSide| match s {
        TunnelSide::Client => "client",
        TunnelSide::Server => "server",
    };
    let (by, how) = match &outcome.end {
        StreamEnd::Fin { first } => (side(first), "fin"),
        StreamEnd::Rst { side: s } => (side(s), "rst"),
        StreamEnd::IdleTimeout => ("netward", "idle-timeout"),
        StreamEnd::Error { side: s, .. } => (side(s), "error"),
    };
    r.closed_by = Some(by.to_owned());
    r.close = Some(how.to_owned());
}

/// The destination node's checks and connects (the tunnel server's [`Handler`]).
pub(crate) struct TunnelHandler {
    pub(crate) policy: NodePolicy,
    pub(crate) opts: Options,
    pub(crate) listen: SocketAddr,
}

/// An authorized stream: its decision and key, for the connect and the audit record.
pub(crate) struct Ticket {
    decision: NodeDecision,
    key: FlowKey,
    peer_node: String,
}

/// A denial through the tunnel, as a deny event: the audit writer aggregates repeats
/// (one source's retries) like plaintext denials.
fn audit_tunnel_deny(
    audit: &audit::Sink,
    d: &NodeDecision,
    key: &FlowKey,
    peer_node: Option<String>,
    why: String,
) {
    if !audit.enabled() {
        return;
    }
    let (d, key) = (d.clone(), *key);
    audit.send(audit::Event::Deny(audit::Deny {
        key: (key.protocol, key.src.ip(), key.dst.ip(), key.dst.port()),
        at: std::time::SystemTime::now(),
        make: Box::new(move || {
            let mut r = d.audit("deny", &key, None);
            r.verdict = "deny".to_owned();
            r.mtls = true;
            r.peer_node = peer_node;
            r.detail = Some(why);
            r
        }),
    }));
}

impl TunnelHandler {
    fn refuse(&self, d: &NodeDecision, key: &FlowKey, peer_node: &str, why: String) {
        audit_tunnel_deny(&self.opts.audit, d, key, Some(peer_node.to_owned()), why);
    }
}

impl Handler for TunnelHandler {
    type Ticket = Ticket;

    fn authorize(&self, peer_node: &str, req: &StreamRequest) -> Result<Ticket, Refusal> {
        let snap = self.policy.snapshot();
        let node = self.opts.node.as_deref();
        let key = FlowKey {
            protocol: Protocol::Tcp,
            src: req.src,
            dst: req.dst,
        };
        let d = decide(&snap, node, &key, Transport::Tunnel);
        // The claimed source must be a pod on the peer node, with that IP and UID.
        let claim = match d.flow.src.pod.map(|p| snap.pod(p)) {
            None => Err(format!(
                "source {} is not a pod this node knows of",
                req.src.ip()
            )),
            Some(p) if p.node.as_deref() != Some(peer_node) => Err(format!(
                "source pod {} runs on node {}, not on {peer_node}",
                p.key(),
                p.node.as_deref().unwrap_or("(none)")
            )),
            Some(p) => match (&req.src_uid, &p.uid) {
                (Some(claimed), Some(uid)) if claimed != uid => Err(format!(
                    "source pod {} has uid {uid}, not {claimed}",
                    p.key()
                )),
                _ => Ok(()),
            },
        };
        if let Err(why) = claim {
            self.refuse(&d, &key, peer_node, format!("bad-request: {why}"));
            return Err(Refusal::bad_request(why));
        }
        let dst_local = d
            .flow
            .dst
            .pod
            .is_some_and(|p| node.is_none_or(|n| snap.pod(p).node.as_deref() == Some(n)));
        if !dst_local {
            let why = format!("destination {} is not a pod on this node", req.dst);
            self.refuse(&d, &key, peer_node, format!("bad-request: {why}"));
            return Err(Refusal::bad_request(why));
        }
        if !d.allowed {
            let report: DecisionReport = d.report();
            let why = report
                .ingress
                .describe(netward_controller::Direction::Ingress);
            self.refuse(&d, &key, peer_node, format!("policy: {why}"));
            return Err(Refusal::forbidden(why));
        }
        TUNNEL_STATS.accepted.fetch_add(1, Ordering::Relaxed);
        if self.opts.audit_open && self.opts.audit.enabled() {
            let mut r = d.audit("open", &key, None);
            r.mtls = true;
            r.peer_node = Some(peer_node.to_owned());
            self.opts.audit.send(audit::Event::Record(Box::new(r)));
        }
        Ok(Ticket {
            decision: d,
            key,
            peer_node: peer_node.to_owned(),
        })
    }

    async fn connect(&self, _ticket: &Ticket, req: &StreamRequest) -> std::io::Result<TcpStream> {
        let mark = Some(self.opts.rules.marks.bypass);
        connect_upstream(
            OrigDst(req.dst),
            Some(ClientAddr(req.src)),
            mark,
            self.opts.connect_timeout,
        )
        .await
        .map_err(std::io::Error::other)
    }

    fn finished(&self, ticket: Ticket, outcome: StreamOutcome) {
        count_bytes(&self.opts, &outcome);
        if self.opts.audit.enabled() {
            let mut r = ticket.decision.audit("close", &ticket.key, None);
            close_fields(&mut r, &outcome);
            r.mtls = true;
            r.peer_node = Some(ticket.peer_node);
            self.opts.audit.send(audit::Event::Record(Box::new(r)));
        }
    }

    fn refused(&self, event: RefusedEvent<'_>) {
        TUNNEL_STATS.refused.fetch_add(1, Ordering::Relaxed);
        if event.kind == RefusalKind::Limit {
            TUNNEL_STATS.limited.fetch_add(1, Ordering::Relaxed);
        }
        // Policy and claim refusals were audited by `authorize`, with the decision.
        if event.kind == RefusalKind::Policy {
            return;
        }
        if matches!(event.kind, RefusalKind::Tls | RefusalKind::Limit) {
            // What a scanner or a flood causes: counted and audited (aggregated), logged
            // at debug only.
            debug!(kind = %event.kind, peer.addr = %event.peer_addr, reason = event.reason, "tunnel refused");
        } else {
            warn!(
                kind = %event.kind,
                peer.addr = %event.peer_addr,
                peer.node = event.peer_node.unwrap_or(""),
                status = event.status,
                reason = event.reason,
                "tunnel refused"
            );
        }
        if !self.opts.audit.enabled() {
            return;
        }
        let snap = self.policy.snapshot();
        let key = match event.request {
            Some(req) => FlowKey {
                protocol: Protocol::Tcp,
                src: req.src,
                dst: req.dst,
            },
            None => FlowKey {
                protocol: Protocol::Tcp,
                src: event.peer_addr,
                dst: self.listen,
            },
        };
        let d = decide(&snap, self.opts.node.as_deref(), &key, Transport::Tunnel);
        let detail = format!("{}: {}", event.kind, event.reason);
        if event.kind != RefusalKind::Unavailable {
            // Aggregated per (source, destination, port) like every denial: failed
            // handshakes from one address cannot flood the log.
            let peer_node = event.peer_node.map(str::to_owned);
            audit_tunnel_deny(&self.opts.audit, &d, &key, peer_node, detail);
            return;
        }
        let mut r = d.audit("close", &key, None);
        r.close = Some("error".to_owned());
        r.closed_by = Some("server".to_owned());
        r.mtls = true;
        r.peer_node = event.peer_node.map(str::to_owned);
        r.detail = Some(detail);
        self.opts.audit.send(audit::Event::Record(Box::new(r)));
    }
}

/// Starts the tunnel listener and advertises it; returns the task serving it.
pub(crate) async fn start_server(
    mtls: &MtlsOptions,
    handler: Arc<TunnelHandler>,
    advertiser: &dyn Advertiser,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(mtls.listen).await?;
    let tls = mtls.identity.server_config();
    let cfg = mtls.tunnel.clone();
    let task = tokio::spawn(async move {
        let mut stop = stop;
        crate::mtls::tunnel::serve(listener, tls, cfg, handler, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    });
    advertiser
        .advertise(mtls.identity.node(), mtls.listen)
        .await?;
    info!(
        listen.addr = %mtls.listen,
        node = mtls.identity.node(),
        not_after = %crate::mtls::identity::rfc3339(mtls.identity.not_after()),
        "mTLS tunnel listener up and advertised"
    );
    Ok(task)
}
