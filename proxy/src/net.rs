//! Transparent (TPROXY) sockets: listeners and upstream connections.
//!
//! The three addresses of a proxied connection have their own types so that
//! they cannot be swapped by accident: [`ClientAddr`] (who connected),
//! [`OrigDst`] (where it was going before TPROXY caught it) and
//! [`UpstreamAddr`] (the source address of our own connection to [`OrigDst`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog for transparent listeners; the kernel caps it at
/// `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// The address of the client that opened an intercepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The destination the client asked for. On a TCP TPROXY socket it is the
/// accepted socket's local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst(pub SocketAddr);

/// The local (source) address of our connection to the original destination:
/// what the destination sees as its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamAddr(pub SocketAddr);

macro_rules! addr_display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
addr_display!(ClientAddr, OrigDst, UpstreamAddr);

/// Errors from opening upstream connections.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created or configured.
    #[error("cannot set up a socket to {dst}: {source}")]
    Socket {
        /// Where we were going to connect.
        dst: OrigDst,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `SO_MARK` could not be set.
    #[error(
        "cannot set SO_MARK {mark:#x} on the socket to {dst}: {source} (it needs CAP_NET_ADMIN)"
    )]
    Mark {
        /// Where we were going to connect.
        dst: OrigDst,
        /// The mark.
        mark: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The client's address could not be bound as our source address.
    #[error(
        "cannot bind the client address {src} to connect to {dst}: {source} \
         (a transparent bind needs CAP_NET_ADMIN)"
    )]
    Bind {
        /// The client address we tried to use as source.
        src: ClientAddr,
        /// Where we were going to connect.
        dst: OrigDst,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The client and the destination are of different address families.
    #[error("cannot connect from client {src} to {dst}: the address families differ")]
    FamilyMismatch {
        /// The client address.
        src: ClientAddr,
        /// The destination.
        dst: OrigDst,
    },
    /// The connection was refused or failed.
    #[error("connecting to {dst} failed: {source}")]
    Connect {
        /// The destination.
        dst: OrigDst,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The connection did not complete in time.
    #[error(
        "connecting to {dst} timed out after {timeout:?} \
         (maybe a NetworkPolicy or a firewall drops the SYN, or the pod is gone)"
    )]
    ConnectTimeout {
        /// The destination.
        dst: OrigDst,
        /// The timeout that expired.
        timeout: Duration,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a listener that accepts connections TPROXY redirects to it, whatever
/// their destination address (`IP_TRANSPARENT` / `IPV6_TRANSPARENT`).
///
/// Needs `CAP_NET_ADMIN`, and a tokio runtime with I/O enabled. An IPv6
/// address gives an IPv6-only listener: IPv4 traffic needs its own.
pub fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The original destination of a connection accepted on a TPROXY listener.
pub fn orig_dst(stream: &TcpStream) -> io::Result<OrigDst> {
    stream.local_addr().map(OrigDst)
}

/// The client address of an accepted connection.
pub fn client_addr(stream: &TcpStream) -> io::Result<ClientAddr> {
    stream.peer_addr().map(ClientAddr)
}

/// The source address the destination sees for an upstream connection.
pub fn upstream_addr(stream: &TcpStream) -> io::Result<UpstreamAddr> {
    stream.local_addr().map(UpstreamAddr)
}

/// Connects to the original destination, within `timeout`.
///
/// With `src`, the connection comes from the client's IP address (a
/// transparent, freebind bind), so the server and its NetworkPolicy see the
/// real client. The source *port* is left to the kernel: reusing the client's
/// port would give our connection the same 4-tuple as the intercepted one,
/// which collides in conntrack and with `TIME_WAIT` on reconnects; with
/// `IP_BIND_ADDRESS_NO_PORT` the kernel picks a port unique for the 4-tuple
/// at `connect()`.
///
/// The replies to a foreign client IP must be routed back to this host, which
/// the TPROXY policy routing does.
///
/// `mark` sets `SO_MARK` so the packets bypass the interception rules.
pub async fn connect_upstream(
    dst: OrigDst,
    src: Option<ClientAddr>,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<TcpStream> {
    let socket_err = |source| Error::Socket { dst, source };
    let socket = if dst.0.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(socket_err)?;
    socket.set_nodelay(true).map_err(socket_err)?;

    if let Some(mark) = mark {
        SockRef::from(&socket)
            .set_mark(mark)
            .map_err(|source| Error::Mark { dst, mark, source })?;
    }

    if let Some(src) = src {
        if src.0.is_ipv4() != dst.0.is_ipv4() {
            return Err(Error::FamilyMismatch { src, dst });
        }
        let bind_err = |source| Error::Bind { src, dst, source };
        let sock = SockRef::from(&socket);
        if dst.0.is_ipv4() {
            sock.set_ip_transparent_v4(true).map_err(bind_err)?;
            sock.set_freebind_v4(true).map_err(bind_err)?;
        } else {
            sock.set_ip_transparent_v6(true).map_err(bind_err)?;
            sock.set_freebind_v6(true).map_err(bind_err)?;
        }
        // A bind to (ip, 0) then reserves no port: connect() picks one unique for the
        // full 4-tuple, instead of one ephemeral range shared by every destination.
        nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .map_err(|e| bind_err(e.into()))?;
        socket
            .bind(SocketAddr::new(src.0.ip(), 0))
            .map_err(bind_err)?;
    }

    match tokio::time::timeout(timeout, socket.connect(dst.0)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(Error::Connect { dst, source }),
        Err(_elapsed) => Err(Error::ConnectTimeout { dst, timeout }),
    }
}

/// The node's own addresses (every interface of this network namespace), re-read from
/// the kernel at most once per [`LocalAddrs::REFRESH`]. The datapath asks it rarely: for
/// a destination that is not a pod (is it this node?), and for an address in the pod
/// CIDR that no pod has (a bridge's gateway address is the node's, not a pod's).
#[derive(Default)]
pub struct LocalAddrs {
    cache: std::sync::Mutex<Option<(std::time::Instant, std::collections::HashSet<IpAddr>)>>,
}

impl LocalAddrs {
    /// How stale the cached list may be.
    pub const REFRESH: Duration = Duration::from_secs(1);

    /// Whether `ip` is one of this node's addresses (loopback included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_loopback() || ip.is_unspecified() {
            return true;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return false;
        };
        let stale = cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= Self::REFRESH);
        if stale {
            let addrs = nix::ifaddrs::getifaddrs()
                .map(|list| {
                    list.filter_map(|ifa| ifa.address)
                        .filter_map(|a| {
                            a.as_sockaddr_in()
                                .map(|v4| IpAddr::V4(v4.ip()))
                                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                        })
                        .collect()
                })
                .unwrap_or_default();
            *cache = Some((std::time::Instant::now(), addrs));
        }
        cache.as_ref().is_some_and(|(_, set)| set.contains(&ip))
    }
}
