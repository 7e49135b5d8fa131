//! The tunnel between node proxies: one TCP connection from a pod on the source node to
//! a pod on the destination node travels as an HTTP/2 `CONNECT` stream inside mutual
//! TLS 1.3. The shape follows Istio's HBONE; interoperability is not claimed.
//!
//! # Roles
//!
//! - **Client**: the source node's netward ([`TunnelClient`]). It intercepted the pod's
//!   connection and decided it on the source side.
//! - **Server**: the destination node's netward ([`serve`]), listening on the **node** IP,
//!   port [`DEFAULT_PORT`] (15008) unless configured otherwise.
//!
//! # Connections
//!
//! TLS 1.3 only, ALPN `h2`, both sides present a node certificate whose one URI SAN is
//! `spiffe://<trust-domain>/netward/node/<node>` (see [`super::identity`]). After the
//! handshake the client checks that the server's leaf names the node it meant to reach
//! ([`node_from_cert`]); a mismatch is [`OpenError::PeerIdentity`] and the connection is
//! never used. The server derives the peer node from the client's leaf the same way.
//!
//! The client pools connections per (peer node, peer address) and multiplexes streams
//! on them. A connection carries at most [`TunnelConfig::max_streams_per_conn`] live
//! streams (default 100); an open beyond that reserves a slot on a connection still being
//! set up, or starts a new one, so `n` concurrent opens toward one peer make
//! `ceil(n / max)` connections. A connection that fails, is closed, or receives GOAWAY
//! leaves the pool; the next open makes a new one. An open that fails because its
//! pooled connection went away before any response is retried once on a fresh connection.
//!
//! Every socket of the tunnel gets `TCP_NODELAY` and, when configured, `SO_MARK` =
//! [`TunnelConfig::mark`] (the interception rules' bypass mark); the client binds to
//! [`TunnelConfig::bind`] when set.
//!
//! # The request
//!
//! ```text
//! :method     CONNECT
//! :authority  <destination pod ip:port>          10.1.2.3:8080 | [fd00::3]:8080
//! forwarded   for="<source pod ip:port>"         RFC 7239; always quoted (IPv6 in brackets)
//! netward-source-addr  <source pod ip:port>      authoritative; `forwarded` is the fallback
//! netward-source-uid   <source pod UID>          omitted when unknown
//! ```
//!
//! No `:scheme`/`:path` (plain RFC 9113 §8.5 `CONNECT`), no request body before the
//! answer.
//!
//! # The answer
//!
//! The server checks, in this order, and answers `200` only when all pass:
//!
//! 1. the client certificate chains to the trust bundle (the TLS layer) and names a
//!    node ([`node_from_cert`]); otherwise the handshake fails or the connection is
//!    closed before any stream, and [`Handler::refused`] is told (peer address, rustls'
//!    error text);
//! 2. the request is well formed: `CONNECT`, an `ip:port` authority, a source address;
//!    otherwise `400`;
//! 3. [`Handler::authorize`]`(peer_node, request)`: the datapath checks that the claimed
//!    source pod is on that node with that IP and UID, then the destination pod's
//!    ingress policy for the inner source (transport = tunnel). A [`Refusal`] answers its
//!    status (`403` for a policy denial, `400` for a source that does not check out);
//! 4. [`Handler::connect`]: the transparent connect to the pod (source IP kept), bounded
//!    by [`TunnelConfig::connect_timeout`]; a failure answers `503`.
//!
//! Every non-200 answer carries a short ASCII `netward-reason` header and is reported to
//! [`Handler::refused`]. The client maps the answers to [`OpenError`]: `400`/`403` →
//! [`OpenError::Refused`], `503` → [`OpenError::Unavailable`], anything else →
//! [`OpenError::Protocol`].
//!
//! # The stream
//!
//! After `200`, bytes flow both ways between the HTTP/2 stream and the pod's TCP
//! connection ([`relay`] on both nodes, one byte pump):
//!
//! - **Half-close.** A TCP FIN becomes `END_STREAM` on the HTTP/2 stream, and
//!   `END_STREAM` becomes a TCP `shutdown(SHUT_WR)` on the other node: each direction ends
//!   on its own.
//! - **Reset.** A TCP RST (or another socket error) aborts the HTTP/2 stream, and an
//!   aborted HTTP/2 stream aborts the TCP connection with an RST (`SO_LINGER` 0). hyper
//!   can only abort an upgraded stream as `END_STREAM` followed by `RST_STREAM`
//!   (`CANCEL`/`NO_ERROR`), and reports that `RST_STREAM` to the writer, not the reader.
//!   So when the stream's reader sees its end, the pump first checks, for up to
//!   [`TunnelConfig::reset_grace`], whether the stream was reset, and only then passes
//!   on a clean FIN (a [`TunnelStream`] read returns `ConnectionReset` for a reset).
//!   That check delays each clean FIN coming out of the tunnel by up to the grace
//!   (default 5 ms), except when this side has already ended its own direction; then a
//!   peer's abort looks like a clean end anyway (hyper sends no `RST_STREAM` on a fully
//!   closed stream). Using the `h2` crate directly (an explicit `RST_STREAM` with an
//!   error code) would remove both the delay and the heuristic.
//! - **Idle timeout.** No byte in either direction for [`TunnelConfig::idle_timeout`]
//!   ends the stream with resets on both ends.
//! - The byte counts each way, the duration and how it ended are the
//!   [`StreamOutcome`] given to [`Handler::finished`] (server) or returned by [`relay`]
//!   (client).
//!
//! # Shutdown
//!
//! [`serve`] stops accepting when its `shutdown` future completes, sends GOAWAY on every
//! connection, and returns once their live streams have ended. Dropping the future
//! aborts everything at once.

mod client;
mod pump;
mod server;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

pub use self::client::{PeerStats, PoolStats, TunnelClient, TunnelStream};
pub use self::pump::relay;
pub use self::server::serve;
use super::identity::{DEFAULT_TRUST_DOMAIN, node_from_cert};

/// The default port of the tunnel listener on a node's IP.
pub const DEFAULT_PORT: u16 = 15008;
/// The request header naming the source pod's `ip:port`.
pub const SOURCE_ADDR_HEADER: &str = "netward-source-addr";
/// The request header naming the source pod's UID.
pub const SOURCE_UID_HEADER: &str = "netward-source-uid";
/// The response header carrying the reason of a refusal (short, ASCII).
pub const REASON_HEADER: &str = "netward-reason";

/// What the client asks the destination node to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    /// The destination pod's address (`:authority`).
    pub dst: SocketAddr,
    /// The source pod's address, as the source node saw it.
    pub src: SocketAddr,
    /// The source pod's UID, when the source node knows it.
    pub src_uid: Option<String>,
}

/// Settings of both ends of the tunnel. Read once; [`TunnelConfig::validate`] checks it.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Live streams per TLS connection before the client opens another (and the
    /// server's `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_conn: usize,
    /// Bound on the TCP connect plus the TLS and HTTP/2 handshakes (client), on the TLS
    /// handshake (server), and on the upstream connect (server). The client waits twice
    /// as long for the answer to a `CONNECT`.
    pub connect_timeout: Duration,
    /// A stream with no byte in either direction for this long is ended with resets.
    pub idle_timeout: Duration,
    /// `SO_MARK` of every socket the tunnel creates (the interception rules' bypass
    /// mark). Setting it needs `CAP_NET_ADMIN`.
    pub mark: Option<u32>,
    /// The local address the client binds its connections to (port chosen by the kernel).
    pub bind: Option<IpAddr>,
    /// The SPIFFE trust domain of node identities.
    pub trust_domain: String,
    /// How long a stream's reader waits, after the peer ended its direction, for a reset
    /// reported on the write side (see the module documentation). Zero checks only what
    /// has already arrived.
    pub reset_grace: Duration,
    /// HTTP/2 keep-alive PING interval on idle connections; a peer that does not answer
    /// within the interval is dropped.
    pub keepalive: Duration,
    /// Server: TLS handshakes in flight at once, before any peer is authenticated; a
    /// connection past it is closed at once (refused as [`RefusalKind::Limit`]).
    pub max_handshakes: usize,
    /// Server: authenticated connections at once from one peer node; one past it is
    /// closed after its handshake (refused as [`RefusalKind::Limit`]).
    pub max_conns_per_node: usize,
    /// Server: the largest HTTP/2 header list a request may carry, in bytes.
    pub max_header_list_size: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            max_streams_per_conn: 100,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            mark: None,
            bind: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            reset_grace: Duration::from_millis(5),
            keepalive: Duration::from_secs(30),
            max_handshakes: 128,
            max_conns_per_node: 16,
            max_header_list_size: 16 * 1024,
        }
    }
}

/// A setting of [`TunnelConfig`] that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid tunnel setting {name} = {value}: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// Why it is invalid.
    pub reason: &'static str,
}

impl TunnelConfig {
    /// Checks every setting; the first bad one is reported with its name and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name, value: String, reason| {
            Err(ConfigError {
                name,
                value,
                reason,
            })
        };
        if self.max_streams_per_conn == 0 || self.max_streams_per_conn > u32::MAX as usize {
            return bad(
                "max_streams_per_conn",
                self.max_streams_per_conn.to_string(),
                "must be between 1 and 2^32-1",
            );
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive", self.keepalive),
        ] {
            if value.is_zero() {
                return bad(name, format!("{value:?}"), "must be positive");
            }
        }
        for (name, value) in [
            ("max_handshakes", self.max_handshakes),
            ("max_conns_per_node", self.max_conns_per_node),
            (
                "max_header_list_size",
                usize::try_from(self.max_header_list_size).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return bad(name, "0".into(), "must be positive");
            }
        }
        if self.reset_grace > Duration::from_secs(1) {
            return bad(
                "reset_grace",
                format!("{:?}", self.reset_grace),
                "at most 1s: it delays every half-close coming out of the tunnel",
            );
        }
        if let Err(e) = super::identity::validate_trust_domain(&self.trust_domain) {
            return Err(ConfigError {
                name: "trust_domain",
                value: self.trust_domain.clone(),
                reason: if matches!(e, super::identity::IdentityError::InvalidTrustDomain { .. }) {
                    "not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
                } else {
                    "invalid"
                },
            });
        }
        Ok(())
    }
}

/// The server's refusal of a stream, from [`Handler::authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `403` (policy denial) or `400` (the claimed source does not check out).
    pub status: u16,
    /// Why, short and ASCII; sent in the `netward-reason` header.
    pub reason: String,
}

impl Refusal {
    /// A policy denial: `403`.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: 403,
            reason: reason.into(),
        }
    }

    /// A request whose claims do not check out: `400`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: 400,
            reason: reason.into(),
        }
    }
}

/// The datapath's side of the server: decides streams, connects them, and hears how
/// they ended.
pub trait Handler: Send + Sync + 'static {
    /// What an authorized stream carries from `authorize` to `connect` and `finished`
    /// (for example the decision, for the audit record).
    type Ticket: Send + Sync + 'static;

    /// Checks that the source pod is on `peer_node` with the claimed IP and UID, then the
    /// destination's ingress policy (transport = tunnel).
    fn authorize(&self, peer_node: &str, req: &StreamRequest) -> Result<Self::Ticket, Refusal>;

    /// Connects to the destination pod (transparently, keeping the source IP). An error
    /// answers `503`; the ticket is then dropped without `finished`.
    fn connect(
        &self,
        ticket: &Self::Ticket,
        req: &StreamRequest,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send;

    /// A stream that was answered `200` has ended. Called exactly once per such stream.
    fn finished(&self, ticket: Self::Ticket, outcome: StreamOutcome);

    /// A connection or a stream was refused: a failed TLS handshake, a peer that is not
    /// a netward node, a bad request, a refusal of `authorize`, a failed connect.
    fn refused(&self, event: RefusedEvent<'_>);
}

/// At which step the server refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// The TLS handshake failed (no client certificate, another CA, expired, …).
    Tls,
    /// The client certificate is valid but names no netward node of our trust domain.
    PeerIdentity,
    /// The request is malformed (`400`).
    BadRequest,
    /// [`Handler::authorize`] refused (`400` or `403`).
    Policy,
    /// The upstream connect failed (`503`).
    Unavailable,
    /// A bound was reached: TLS handshakes in flight, or connections from one node.
    Limit,
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalKind::Tls => "tls",
            RefusalKind::PeerIdentity => "peer-identity",
            RefusalKind::BadRequest => "bad-request",
            RefusalKind::Policy => "policy",
            RefusalKind::Unavailable => "unavailable",
            RefusalKind::Limit => "limit",
        })
    }
}

/// One refusal, for the audit log.
#[derive(Clone, Copy, Debug)]
pub struct RefusedEvent<'a> {
    /// The step that refused.
    pub kind: RefusalKind,
    /// The peer's socket address (the source node's).
    pub peer_addr: SocketAddr,
    /// The peer node, once its certificate was read.
    pub peer_node: Option<&'a str>,
    /// The request, once it was parsed.
    pub request: Option<&'a StreamRequest>,
    /// The HTTP status answered; `None` when the connection failed before any stream.
    pub status: Option<u16>,
    /// Why: the `netward-reason` text, or rustls' error text for TLS failures.
    pub reason: &'a str,
}

/// One end of a tunneled stream, as seen by [`StreamOutcome`]: the client is the side
/// toward the pod that connected, the server the side toward the pod connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelSide {
    /// Toward the connecting pod: its TCP socket on the source node, the HTTP/2 stream
    /// on the destination node.
    Client,
    /// Toward the destination pod: the HTTP/2 stream on the source node, the upstream
    /// TCP socket on the destination node.
    Server,
}

impl fmt::Display for TunnelSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelSide::Client => "client",
            TunnelSide::Server => "server",
        })
    }
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Both directions ended cleanly; `first` ended its direction first.
    Fin {
        /// The side that finished sending first.
        first: TunnelSide,
    },
    /// `side` reset (or aborted) the stream; the other side was reset too.
    Rst {
        /// The side that reset.
        side: TunnelSide,
    },
    /// No byte moved for the idle timeout; both sides were reset.
    IdleTimeout,
    /// `side` failed with an error other than a reset; the other side was reset.
    Error {
        /// The side that failed.
        side: TunnelSide,
        /// The error.
        msg: String,
    },
}

impl fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamEnd::Fin { first } => write!(f, "fin ({first} first)"),
            StreamEnd::Rst { side } => write!(f, "rst from {side}"),
            StreamEnd::IdleTimeout => f.write_str("idle timeout"),
            StreamEnd::Error { side, msg } => write!(f, "{side} error: {msg}"),
        }
    }
}

/// What a tunneled stream did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOutcome {
    /// Bytes delivered toward the server side.
    pub to_server: u64,
    /// Bytes delivered toward the client side.
    pub to_client: u64,
    /// From the start of the relay to its end.
    pub duration: Duration,
    /// How it ended.
    pub end: StreamEnd,
}

/// Why [`TunnelClient::open`] failed. Each message says what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The destination node refused the stream (`403`: its policy; `400`: it does not
    /// accept the claimed source).
    #[error(
        "node {peer_node} refused the stream with {status}: {reason} (see its audit log; a 403 is the destination's NetworkPolicy)"
    )]
    Refused {
        /// The node.
        peer_node: String,
        /// `403` or `400`.
        status: u16,
        /// Its `netward-reason`.
        reason: String,
    },
    /// The destination node could not connect to the pod (`503`).
    #[error(
        "node {peer_node} could not reach the destination pod: {reason} (is the pod running and listening?)"
    )]
    Unavailable {
        /// The node.
        peer_node: String,
        /// Its `netward-reason`.
        reason: String,
    },
    /// The TLS handshake with the peer failed, or the peer closed the connection with a
    /// TLS alert (it refused our certificate).
    #[error(
        "TLS with node {peer_node} at {peer_addr} failed: {reason} (check both nodes' certificates, trust bundles and clocks)"
    )]
    Tls {
        /// The node.
        peer_node: String,
        /// Its tunnel address.
        peer_addr: SocketAddr,
        /// rustls' error text.
        reason: String,
    },
    /// The peer's certificate names another node than the one we meant to reach.
    #[error(
        "the tunnel endpoint at {peer_addr} is not node {expected}: its certificate names {got} (stale node address?)"
    )]
    PeerIdentity {
        /// The tunnel address.
        peer_addr: SocketAddr,
        /// The node expected.
        expected: String,
        /// What the certificate names, or why it names no node.
        got: String,
    },
    /// The TCP connection to the peer's tunnel port failed.
    #[error(
        "cannot connect to node {peer_node}'s tunnel port at {peer_addr} (is netward listening there, and not blocked by a firewall?)"
    )]
    Connect {
        /// The node.
        peer_node: String,
        /// Its tunnel address.
        peer_addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A step took longer than allowed.
    #[error("{what} with node {peer_node} timed out after {after:?}")]
    Timeout {
        /// The node.
        peer_node: String,
        /// What timed out.
        what: &'static str,
        /// The bound.
        after: Duration,
    },
    /// The peer spoke something unexpected (no `h2`, a bad answer, a broken stream).
    #[error("tunnel protocol error with node {peer_node}: {reason}")]
    Protocol {
        /// The node.
        peer_node: String,
        /// What went wrong.
        reason: String,
    },
}

impl OpenError {
    /// A copy for every open that waited on the same connection attempt.
    fn duplicate(&self) -> Self {
        match self {
            OpenError::Refused {
                peer_node,
                status,
                reason,
            } => OpenError::Refused {
                peer_node: peer_node.clone(),
                status: *status,
                reason: reason.clone(),
            },
            OpenError::Unavailable { peer_node, reason } => OpenError::Unavailable {
                peer_node: peer_node.clone(),
                reason: reason.clone(),
            },
            OpenError::Tls {
                peer_node,
                peer_addr,
                reason,
            } => OpenError::Tls {
                peer_node: peer_node.clone(),
                peer_addr: *peer_addr,
                reason: reason.clone(),
            },
            OpenError::PeerIdentity {
                peer_addr,
                expected,
                got,
            } => OpenError::PeerIdentity {
                peer_addr: *peer_addr,
                expected: expected.clone(),
                got: got.clone(),
            },
            OpenError::Connect {
                peer_node,
                peer_addr,
                source,
            } => OpenError::Connect {
                peer_node: peer_node.clone(),
                peer_addr: *peer_addr,
                source: io::Error::new(source.kind(), source.to_string()),
            },
            OpenError::Timeout {
                peer_node,
                what,
                after,
            } => OpenError::Timeout {
                peer_node: peer_node.clone(),
                what,
                after: *after,
            },
            OpenError::Protocol { peer_node, reason } => OpenError::Protocol {
                peer_node: peer_node.clone(),
                reason: reason.clone(),
            },
        }
    }
}

/// Applies the tunnel's socket options: `TCP_NODELAY`, and `SO_MARK` when configured.
fn socket_options(sock: socket2::SockRef<'_>, mark: Option<u32>) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(mark) = mark {
        sock.set_mark(mark)?;
    }
    Ok(())
}

/// The full chain of an error's messages, `a: b: c`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The rustls error somewhere in an error's chain, if any: a TLS failure.
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        cur = err.source();
    }
    // h2 hides its I/O error from `source()`; a TLS alert received after the handshake
    // (the server refusing our certificate, in TLS 1.3) shows only in the text.
    let text = error_chain(e);
    text.find("received fatal alert")
        .map(|at| text[at..].to_owned())
}

/// A `netward-reason` value: printable ASCII, at most 200 bytes.
fn header_safe(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

/// The peer node a certificate chain names, or why it names none.
fn peer_node_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    trust_domain: &str,
) -> Result<String, String> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| "no certificate".to_owned())?;
    node_from_cert(leaf, trust_domain).map_err(|e| e.to_string())
}
