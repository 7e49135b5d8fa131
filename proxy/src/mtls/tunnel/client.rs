//! The source node's side: a pool of TLS connections per peer node, and `CONNECT`
//! streams opened on them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::http::{Method, Request, Response, StatusCode, Uri, uri::Authority};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::pump::H2Io;
use super::server::{CONN_WINDOW, MAX_FRAME, STREAM_WINDOW};
use super::{
    OpenError, REASON_HEADER, SOURCE_ADDR_HEADER, SOURCE_UID_HEADER, StreamRequest, TunnelConfig,
    error_chain, peer_node_of, socket_options, tls_error,
};
use crate::mtls::identity::ALPN_H2;

type Sender = SendRequest<Empty<Bytes>>;
type Conn = http2::Connection<TokioIo<TlsStream<TcpStream>>, Empty<Bytes>, TokioExecutor>;

/// The client of the tunnel: opens streams toward peer nodes over pooled mutual-TLS
/// HTTP/2 connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct TunnelClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for TunnelClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelClient")
            .field("cfg", &self.inner.cfg)
            .field("pool", &self.pool_stats())
            .finish()
    }
}

struct Inner {
    connector: TlsConnector,
    cfg: TunnelConfig,
    pool: Mutex<HashMap<PeerKey, Vec<Entry>>>,
    next_id: AtomicU64,
    handshakes: AtomicU64,
}

impl Inner {
    fn pool(&self) -> MutexGuard<'_, HashMap<PeerKey, Vec<Entry>>> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes connection `id` out of the pool: the next open toward the peer makes a new one.
    fn retire(&self, key: &PeerKey, id: u64) {
        let mut pool = self.pool();
        if let Some(entries) = pool.get_mut(key) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                pool.remove(key);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PeerKey {
    node: Arc<str>,
    addr: SocketAddr,
}

/// One pooled connection, possibly still being set up.
struct Entry {
    id: u64,
    /// Streams open or being opened on it.
    live: usize,
    state: watch::Receiver<ConnState>,
}

impl Entry {
    fn usable(&self) -> bool {
        match &*self.state.borrow() {
            ConnState::Connecting => true,
            ConnState::Ready(ready) => !ready.sender.is_closed() && ready.ended.borrow().is_none(),
            ConnState::Failed(_) => false,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(&*self.state.borrow(), ConnState::Ready(_))
    }
}

#[derive(Clone)]
enum ConnState {
    Connecting,
    Ready(Ready),
    Failed(Arc<OpenError>),
}

#[derive(Clone)]
struct Ready {
    sender: Sender,
    /// Why the connection ended, once it has.
    ended: watch::Receiver<Option<DriverEnd>>,
}

#[derive(Clone, Debug)]
struct DriverEnd {
    /// rustls' error when the connection ended on a TLS alert or failure.
    tls: Option<String>,
    msg: String,
}

/// Connections and streams toward one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer node.
    pub node: String,
    /// Its tunnel address.
    pub addr: SocketAddr,
    /// Pooled connections (ready or being set up).
    pub connections: usize,
    /// Streams open or being opened.
    pub live_streams: usize,
}

/// A snapshot of the client's pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pooled connections, all peers.
    pub connections: usize,
    /// Live streams, all peers.
    pub live_streams: usize,
    /// TLS connections successfully set up since the client was created.
    pub handshakes: u64,
    /// Per peer, sorted by node then address.
    pub peers: Vec<PeerStats>,
}

/// Releases a stream's slot on its connection when dropped.
struct Slot {
    inner: Weak<Inner>,
    key: PeerKey,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut pool = inner.pool();
        if let Some(entry) = pool
            .get_mut(&self.key)
            .and_then(|entries| entries.iter_mut().find(|e| e.id == self.id))
        {
            entry.live = entry.live.saturating_sub(1);
        }
    }
}

/// Why sending a `CONNECT` failed.
enum SendFailure {
    /// No answer came: the connection went away (retry once on a new one).
    NoAnswer(String),
    /// A final error.
    Final(OpenError),
}

impl TunnelClient {
    /// A client presenting `tls`'s certificate (TLS 1.3, ALPN `h2`; see
    /// [`TlsIdentity::client_config`](crate::mtls::identity::TlsIdentity::client_config)).
    pub fn new(tls: Arc<rustls::ClientConfig>, cfg: TunnelConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector: TlsConnector::from(tls),
                cfg,
                pool: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                handshakes: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a stream to `req.dst` through node `peer_node`'s tunnel listener at
    /// `peer_addr`, on a pooled connection or a new one. Answers only once the
    /// destination node has connected to the pod.
    pub async fn open(
        &self,
        peer_node: &str,
        peer_addr: SocketAddr,
        req: &StreamRequest,
    ) -> Result<TunnelStream, OpenError> {
        let span = debug_span!(
            "tunnel_open",
            peer.node = peer_node,
            peer.addr = %peer_addr,
            dst.addr = %req.dst,
            src.addr = %req.src,
        );
        self.open_inner(peer_node, peer_addr, req)
            .instrument(span)
            .await
    }

    async fn open_inner(
        &self,
        peer_node: &str,
        peer_addr: SocketAddr,
        req: &StreamRequest,
    ) -> Result<TunnelStream, OpenError> {
        let key = PeerKey {
            node: Arc::from(peer_node),
            addr: peer_addr,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (slot, ready) = self.checkout(&key).await?;
            match self.send(&key, &ready, req).await {
                Ok(resp) => return self.answer(resp, slot, &key).await,
                Err(SendFailure::Final(e)) => return Err(e),
                Err(SendFailure::NoAnswer(msg)) => {
                    self.inner.retire(&key, slot.id);
                    // A connection that died on a TLS alert: the peer refused us.
                    let end = tokio::time::timeout(Duration::from_secs(1), async {
                        let mut ended = ready.ended.clone();
                        ended
                            .wait_for(|e| e.is_some())
                            .await
                            .ok()
                            .and_then(|e| e.clone())
                    })
                    .await
                    .ok()
                    .flatten();
                    if let Some(tls) = end.as_ref().and_then(|e| e.tls.clone()) {
                        return Err(OpenError::Tls {
                            peer_node: peer_node.to_owned(),
                            peer_addr,
                            reason: tls,
                        });
                    }
                    if attempt >= 2 {
                        let why = end.map_or(msg, |e| e.msg);
                        return Err(OpenError::Protocol {
                            peer_node: peer_node.to_owned(),
                            reason: format!("the connection closed before answering: {why}"),
                        });
                    }
                    debug!(error = %msg, "pooled connection went away; retrying on a new one");
                }
            }
        }
    }

    /// A snapshot of the pool: connections and live streams per peer.
    pub fn pool_stats(&self) -> PoolStats {
        let pool = self.inner.pool();
        let mut stats = PoolStats {
            handshakes: self.inner.handshakes.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for (key, entries) in pool.iter() {
            let live = entries.iter().map(|e| e.live).sum();
            stats.connections += entries.len();
            stats.live_streams += live;
            stats.peers.push(PeerStats {
                node: key.node.to_string(),
                addr: key.addr,
                connections: entries.len(),
                live_streams: live,
            });
        }
        stats
            .peers
            .sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
        stats
    }

    /// Reserves a stream slot on a pooled connection toward `key`, or on a new one, and
    /// waits until that connection is ready.
    async fn checkout(&self, key: &PeerKey) -> Result<(Slot, Ready), OpenError> {
        let max = self.inner.cfg.max_streams_per_conn.max(1);
        let (id, mut state) = {
            let mut pool = self.inner.pool();
            let entries = pool.entry(key.clone()).or_default();
            entries.retain(Entry::usable);
            // Ready connections first, then ones being set up; the fullest first, so
            // that streams pack onto as few connections as possible.
            let pick = entries
                .iter_mut()
                .filter(|e| e.live < max)
                .max_by_key(|e| (e.is_ready(), e.live));
            match pick {
                Some(entry) => {
                    entry.live += 1;
                    (entry.id, entry.state.clone())
                }
                None => {
                    let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(ConnState::Connecting);
                    entries.push(Entry {
                        id,
                        live: 1,
                        state: rx.clone(),
                    });
                    let inner = Arc::downgrade(&self.inner);
                    let connector = self.inner.connector.clone();
                    let cfg = self.inner.cfg.clone();
                    let key = key.clone();
                    let span = debug_span!("tunnel_connect", peer.node = %key.node, peer.addr = %key.addr, conn.id = id);
                    tokio::spawn(connect_task(inner, connector, cfg, key, id, tx).instrument(span));
                    (id, rx)
                }
            }
        };
        let slot = Slot {
            inner: Arc::downgrade(&self.inner),
            key: key.clone(),
            id,
        };
        // The connect task is bounded by connect_timeout; the margin only guards it.
        let bound = self.inner.cfg.connect_timeout + Duration::from_secs(1);
        let state = tokio::time::timeout(bound, async {
            state
                .wait_for(|s| !matches!(s, ConnState::Connecting))
                .await
                .map(|s| s.clone())
        })
        .await;
        match state {
            Ok(Ok(ConnState::Ready(ready))) => Ok((slot, ready)),
            Ok(Ok(ConnState::Failed(e))) => Err(e.duplicate()),
            Ok(Ok(ConnState::Connecting)) | Ok(Err(_)) => Err(OpenError::Protocol {
                peer_node: key.node.to_string(),
                reason: "the connection attempt was abandoned".into(),
            }),
            Err(_) => Err(OpenError::Timeout {
                peer_node: key.node.to_string(),
                what: "setting up the tunnel connection",
                after: bound,
            }),
        }
    }

    /// Sends the `CONNECT` and waits for the answer's head.
    async fn send(
        &self,
        key: &PeerKey,
        ready: &Ready,
        req: &StreamRequest,
    ) -> Result<Response<Incoming>, SendFailure> {
        let protocol = |reason: String| {
            SendFailure::Final(OpenError::Protocol {
                peer_node: key.node.to_string(),
                reason,
            })
        };
        let request = connect_request(req).map_err(protocol)?;
        let mut sender = ready.sender.clone();
        let bound = self.inner.cfg.connect_timeout * 2;
        match tokio::time::timeout(bound, sender.send_request(request)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(SendFailure::NoAnswer(error_chain(&e))),
            Err(_) => Err(SendFailure::Final(OpenError::Timeout {
                peer_node: key.node.to_string(),
                what: "waiting for the answer to CONNECT",
                after: bound,
            })),
        }
    }

    /// Turns the answer into a stream or an error.
    async fn answer(
        &self,
        resp: Response<Incoming>,
        slot: Slot,
        key: &PeerKey,
    ) -> Result<TunnelStream, OpenError> {
        let peer_node = key.node.to_string();
        let status = resp.status();
        if status == StatusCode::OK {
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|e| OpenError::Protocol {
                    peer_node: peer_node.clone(),
                    reason: format!("cannot take over the CONNECT stream: {}", error_chain(&e)),
                })?;
            debug!(status = 200, "tunnel stream open");
            return Ok(TunnelStream {
                io: H2Io::new(upgraded, self.inner.cfg.reset_grace),
                peer_node: key.node.clone(),
                peer_addr: key.addr,
                _slot: slot,
            });
        }
        let reason = resp
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        debug!(status = status.as_u16(), reason = %reason, "tunnel stream refused");
        Err(match status.as_u16() {
            code @ (400 | 403) => OpenError::Refused {
                peer_node,
                status: code,
                reason,
            },
            503 => OpenError::Unavailable { peer_node, reason },
            code => OpenError::Protocol {
                peer_node,
                reason: format!("unexpected answer {code} to CONNECT: {reason}"),
            },
        })
    }
}

/// The `CONNECT` request for `req`.
fn connect_request(req: &StreamRequest) -> Result<Request<Empty<Bytes>>, String> {
    let authority = Authority::try_from(req.dst.to_string().as_str())
        .map_err(|e| format!("bad destination {}: {e}", req.dst))?;
    let uri = Uri::builder()
        .authority(authority)
        .build()
        .map_err(|e| format!("bad destination {}: {e}", req.dst))?;
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header(hyper::header::FORWARDED, format!("for=\"{}\"", req.src))
        .header(SOURCE_ADDR_HEADER, req.src.to_string());
    if let Some(uid) = &req.src_uid {
        builder = builder.header(SOURCE_UID_HEADER, uid.as_str());
    }
    builder
        .body(Empty::new())
        .map_err(|e| format!("cannot build the CONNECT request: {e}"))
}

/// Sets up one connection and publishes the result to the opens waiting on it; then
/// drives it until it ends, and takes it out of the pool.
async fn connect_task(
    inner: Weak<Inner>,
    connector: TlsConnector,
    cfg: TunnelConfig,
    key: PeerKey,
    id: u64,
    tx: watch::Sender<ConnState>,
) {
    let result =
        match tokio::time::timeout(cfg.connect_timeout, establish(&connector, &cfg, &key)).await {
            Ok(result) => result,
            Err(_) => Err(OpenError::Timeout {
                peer_node: key.node.to_string(),
                what: "connecting to the tunnel port and the TLS handshake",
                after: cfg.connect_timeout,
            }),
        };
    let (sender, conn) = match result {
        Ok(ok) => ok,
        Err(e) => {
            warn!(error = %e, "tunnel connection failed");
            if let Some(inner) = inner.upgrade() {
                inner.retire(&key, id);
            }
            let _ = tx.send(ConnState::Failed(Arc::new(e)));
            return;
        }
    };
    if let Some(inner) = inner.upgrade() {
        inner.handshakes.fetch_add(1, Ordering::Relaxed);
    }
    info!("tunnel connection up");
    let (end_tx, end_rx) = watch::channel(None);
    let _ = tx.send(ConnState::Ready(Ready {
        sender,
        ended: end_rx,
    }));
    drop(tx);
    let end = match conn.await {
        Ok(()) => DriverEnd {
            tls: None,
            msg: "closed".into(),
        },
        Err(e) => DriverEnd {
            tls: tls_error(&e),
            msg: error_chain(&e),
        },
    };
    match &end.tls {
        Some(tls) => warn!(error = %tls, "tunnel connection ended on a TLS error"),
        None => debug!(end = %end.msg, "tunnel connection ended"),
    }
    if let Some(inner) = inner.upgrade() {
        inner.retire(&key, id);
    }
    let _ = end_tx.send(Some(end));
}

/// TCP connect, TLS handshake, peer identity check, HTTP/2 handshake.
async fn establish(
    connector: &TlsConnector,
    cfg: &TunnelConfig,
    key: &PeerKey,
) -> Result<(Sender, Conn), OpenError> {
    let connect_err = |source: io::Error| OpenError::Connect {
        peer_node: key.node.to_string(),
        peer_addr: key.addr,
        source,
    };
    let socket = if key.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(connect_err)?;
    socket_options(socket2::SockRef::from(&socket), cfg.mark).map_err(connect_err)?;
    if let Some(ip) = cfg.bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| connect_err(io::Error::new(e.kind(), format!("bind {ip}: {e}"))))?;
    }
    let tcp = socket.connect(key.addr).await.map_err(connect_err)?;

    let name = ServerName::try_from(key.node.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(key.addr.ip().into()));
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| OpenError::Tls {
            peer_node: key.node.to_string(),
            peer_addr: key.addr,
            reason: tls_error(&e).unwrap_or_else(|| error_chain(&e)),
        })?;
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(ALPN_H2) {
        return Err(OpenError::Protocol {
            peer_node: key.node.to_string(),
            reason: "the peer did not negotiate ALPN h2".into(),
        });
    }
    match peer_node_of(session.peer_certificates(), &cfg.trust_domain) {
        Ok(node) if *node == *key.node => {}
        Ok(node) => {
            return Err(OpenError::PeerIdentity {
                peer_addr: key.addr,
                expected: key.node.to_string(),
                got: node,
            });
        }
        Err(why) => {
            return Err(OpenError::PeerIdentity {
                peer_addr: key.addr,
                expected: key.node.to_string(),
                got: format!("no node ({why})"),
            });
        }
    }

    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(cfg.keepalive)
        .keep_alive_timeout(cfg.keepalive)
        .keep_alive_while_idle(true);
    builder
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| OpenError::Protocol {
            peer_node: key.node.to_string(),
            reason: format!("HTTP/2 handshake: {}", error_chain(&e)),
        })
}

/// An open tunneled stream: bytes written reach the destination pod, bytes read come
/// from it. Shutting down the write side sends `END_STREAM` (a FIN at the pod); dropping
/// it unfinished resets the stream (an RST at the pod).
pub struct TunnelStream {
    io: H2Io,
    peer_node: Arc<str>,
    peer_addr: SocketAddr,
    _slot: Slot,
}

impl fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelStream")
            .field("peer_node", &self.peer_node)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// The node at the other end (checked against its certificate).
    pub fn peer_node(&self) -> &str {
        &self.peer_node
    }

    /// The peer node's tunnel address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Ends the stream abruptly: the destination node resets the pod's connection.
    pub fn abort(self) {
        drop(self);
    }

    pub(super) fn io(&self) -> &H2Io {
        &self.io
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
