//! Transparent listeners and upstream connections on loopback.
//!
//! Tests that need `CAP_NET_ADMIN` check for root and skip (with a note)
//! otherwise. Binding a truly foreign source address needs TPROXY routes in a
//! network namespace and is out of scope here; 127.0.0.2 stands in for a
//! client address that is not the socket's default source.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netward_proxy::net::{
    self, ClientAddr, Error, OrigDst, client_addr, connect_upstream, orig_dst,
    transparent_listener, upstream_addr,
};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    // "Uid:  real  effective  saved  fs"
    uid_line.split_whitespace().nth(2) == Some("0")
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (CAP_NET_ADMIN)");
            return;
        }
    };
}

async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test]
async fn transparent_listener_reports_orig_dst() {
    require_root!();
    let listener = transparent_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = SockRef::from(&listener);
    assert!(sock.ip_transparent_v4().unwrap(), "IP_TRANSPARENT is set");
    assert!(sock.reuse_address().unwrap(), "SO_REUSEADDR is set");

    let (client, accepted) = tokio::time::timeout(BOUND, async {
        tokio::join!(TcpStream::connect(addr), listener.accept())
    })
    .await
    .unwrap();
    let (client, (accepted, peer)) = (client.unwrap(), accepted.unwrap());
    // Without a TPROXY rule the original destination is the listener itself.
    assert_eq!(orig_dst(&accepted).unwrap(), OrigDst(addr));
    assert_eq!(client_addr(&accepted).unwrap(), ClientAddr(peer));
    assert_eq!(peer, client.local_addr().unwrap());
}

#[tokio::test]
async fn transparent_listener_ipv6() {
    require_root!();
    let Ok(listener) = transparent_listener("[::1]:0".parse().unwrap()) else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let sock = SockRef::from(&listener);
    assert!(sock.only_v6().unwrap(), "IPv6 listeners are IPv6-only");
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::time::timeout(BOUND, async {
        tokio::join!(TcpStream::connect(addr), listener.accept())
    })
    .await
    .unwrap();
    drop(client.unwrap());
    assert_eq!(orig_dst(&accepted.unwrap().0).unwrap(), OrigDst(addr));
}

#[tokio::test]
async fn connect_upstream_without_src_or_mark() {
    let (listener, addr) = loopback_listener().await;
    let (up, accepted) = tokio::time::timeout(BOUND, async {
        tokio::join!(
            connect_upstream(OrigDst(addr), None, None, BOUND),
            listener.accept()
        )
    })
    .await
    .unwrap();
    let up = up.unwrap();
    let (_server, peer) = accepted.unwrap();
    assert_eq!(upstream_addr(&up).unwrap().0, peer);
    assert!(up.nodelay().unwrap());
    assert_eq!(SockRef::from(&up).mark().unwrap(), 0);
}

#[tokio::test]
async fn connect_upstream_sets_mark() {
    require_root!();
    let (listener, addr) = loopback_listener().await;
    let (up, accepted) = tokio::time::timeout(BOUND, async {
        tokio::join!(
            connect_upstream(OrigDst(addr), None, Some(0x539), BOUND),
            listener.accept()
        )
    })
    .await
    .unwrap();
    let up = up.unwrap();
    accepted.unwrap();
    assert_eq!(SockRef::from(&up).mark().unwrap(), 0x539);
}

#[tokio::test]
async fn connect_upstream_uses_client_ip() {
    require_root!();
    let (listener, addr) = loopback_listener().await;
    let client: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    let (up, accepted) = tokio::time::timeout(BOUND, async {
        tokio::join!(
            connect_upstream(OrigDst(addr), Some(ClientAddr(client)), Some(0x539), BOUND),
            listener.accept()
        )
    })
    .await
    .unwrap();
    let up = up.unwrap();
    let (_server, peer) = accepted.unwrap();
    // The server sees the client's IP; the port is the kernel's choice.
    assert_eq!(peer.ip(), client.ip());
    assert_eq!(upstream_addr(&up).unwrap().0, peer);
    assert!(SockRef::from(&up).ip_transparent_v4().unwrap());
}

#[tokio::test]
async fn connect_upstream_refused() {
    // Bind then drop, so that nothing listens on the port.
    let addr = loopback_listener().await.1;
    let err = connect_upstream(OrigDst(addr), None, None, BOUND)
        .await
        .unwrap_err();
    match &err {
        Error::Connect { dst, source } => {
            assert_eq!(*dst, OrigDst(addr));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn connect_upstream_times_out() {
    // A listener whose accept queue is full drops SYNs, so connecting hangs.
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let timeout = Duration::from_millis(300);
    let err = connect_upstream(OrigDst(addr), None, None, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConnectTimeout { timeout: t, .. } if t == timeout),
        "{err:?}"
    );
    assert!(err.to_string().contains("NetworkPolicy"), "{err}");
}

#[tokio::test]
async fn connect_upstream_family_mismatch() {
    let err = connect_upstream(
        OrigDst("127.0.0.1:80".parse().unwrap()),
        Some(ClientAddr("[::1]:1234".parse().unwrap())),
        None,
        BOUND,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, net::Error::FamilyMismatch { .. }), "{err:?}");
}
