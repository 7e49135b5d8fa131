//! The built-in servers each lab pod runs on its container ports: TCP echo that
//! answers HTTP GETs, and UDP echo (a DNS-style request and response).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::netns::{Netns, Result};

/// The servers of one pod; stopped when dropped.
pub struct PodServers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
}

impl std::fmt::Debug for PodServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodServers")
    }
}

/// What a pod serves.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    /// TCP ports.
    pub tcp: Vec<u16>,
    /// UDP ports.
    pub udp: Vec<u16>,
}

impl PodServers {
    /// Starts servers in `ns` on every port, IPv4 and IPv6. `name` goes into replies.
    pub fn start(ns: &Netns, name: &str, ports: &Ports) -> Result<PodServers> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let name = name.to_owned();
        let ports = ports.clone();
        let thread = ns.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                let bound = (|| -> std::io::Result<()> {
                    for port in &ports.tcp {
                        for addr in any_addrs(*port) {
                            let l = tcp_listener(addr)?;
                            tasks.spawn(serve_tcp(l, name.clone()));
                        }
                    }
                    for port in &ports.udp {
                        for addr in any_addrs(*port) {
                            let s = udp_socket(addr)?;
                            tasks.spawn(serve_udp(s, name.clone()));
                        }
                    }
                    Ok(())
                })();
                let failed = bound.is_err();
                let _ = ready_tx.send(bound);
                if !failed {
                    let _ = stop_rx.await;
                }
                tasks.abort_all();
            });
        })?;
        match ready_rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(PodServers {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(super::netns::Error::Enter {
                name: format!("{} (servers)", ns.name()),
                source: e,
            }),
            Err(_) => Err(super::netns::Error::Panicked(ns.name().to_owned())),
        }
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn any_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ]
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

async fn serve_tcp(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        tokio::spawn(answer(stream, name.clone(), peer));
    }
}

/// Answers an HTTP GET with `200 OK` naming the pod; echoes anything else until EOF
/// (and then half-closes, so the client sees every byte).
async fn answer(mut stream: TcpStream, name: String, peer: String) {
    let mut buf = vec![0u8; 64 * 1024];
    let Ok(n) = stream.read(&mut buf).await else {
        return;
    };
    if n == 0 {
        return;
    }
    if buf[..n].starts_with(b"GET ") || buf[..n].starts_with(b"HEAD ") {
        let body = format!("netward lab: hello from {name} (you are {peer})\n");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    if stream.write_all(&buf[..n]).await.is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

async fn serve_udp(sock: UdpSocket, name: String) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let mut reply = Vec::with_capacity(n + name.len() + 2);
        reply.extend_from_slice(&buf[..n]);
        reply.extend_from_slice(b" <- ");
        reply.extend_from_slice(name.as_bytes());
        let _ = sock.send_to(&reply, from).await;
    }
}

/// Serves `ports` in the current namespace until the process ends (`netward lab-serve`).
/// Calls `ready` once every port is bound.
pub fn serve_here(name: &str, ports: &Ports, ready: impl FnOnce()) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for port in &ports.tcp {
            for addr in any_addrs(*port) {
                tasks.spawn(serve_tcp(tcp_listener(addr)?, name.to_owned()));
            }
        }
        for port in &ports.udp {
            for addr in any_addrs(*port) {
                tasks.spawn(serve_udp(udp_socket(addr)?, name.to_owned()));
            }
        }
        ready();
        while tasks.join_next().await.is_some() {}
        Ok(())
    })
}

/// Binds a TCP listener in the current namespace (for tests that serve by hand).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    tcp_listener(addr)
}

/// A TCP socket bound nowhere, for clients that set options before connecting.
pub fn tcp_socket(v6: bool) -> std::io::Result<TcpSocket> {
    if v6 {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
}
