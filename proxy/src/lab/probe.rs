//! Real clients, run from inside a pod's namespace: a TCP connect, an HTTP GET, and a
//! UDP request and response. Every probe is bounded by its timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Connected (and, for HTTP and UDP, got an answer).
    Ok,
    /// No answer within the timeout: what a firewall drop looks like.
    Timeout,
    /// Refused at once (a TCP reset, or ICMP unreachable).
    Refused,
    /// Anything else.
    Error(String),
}

impl Outcome {
    /// Whether the traffic got through.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Timeout,
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => {
            Outcome::Refused
        }
        _ if matches!(
            e.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES)
        ) =>
        {
            Outcome::Refused
        }
        _ => Outcome::Error(e.to_string()),
    }
}

/// A TCP connect (the Kubernetes e2e connect probe, `nc -z`).
pub fn tcp_connect(dst: SocketAddr, timeout: Duration) -> (Outcome, Duration) {
    let start = Instant::now();
    let o = match TcpStream::connect_timeout(&dst, timeout) {
        Ok(_) => Outcome::Ok,
        Err(e) => classify(&e),
    };
    (o, start.elapsed())
}

/// An HTTP GET (`wget -O - -T 2`); `Ok` only with a `200` status. Returns the body too.
pub fn http_get(dst: SocketAddr, timeout: Duration) -> (Outcome, String) {
    let mut s = match TcpStream::connect_timeout(&dst, timeout) {
        Ok(s) => s,
        Err(e) => return (classify(&e), String::new()),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {dst}\r\nUser-Agent: netward-lab\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        return (classify(&e), String::new());
    }
    let mut body = Vec::new();
    match s.read_to_end(&mut body) {
        Ok(_) => {}
        Err(e) if body.is_empty() => return (classify(&e), String::new()),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if text.starts_with("HTTP/1.1 200") {
        (Outcome::Ok, text)
    } else {
        (
            Outcome::Error(format!(
                "unexpected reply {:?}",
                text.lines().next().unwrap_or("")
            )),
            text,
        )
    }
}

/// A UDP request and response (a DNS-style query): `Ok` when the echo comes back.
pub fn udp_exchange(dst: SocketAddr, timeout: Duration) -> Outcome {
    let bind: SocketAddr = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .unwrap_or(dst);
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let _ = sock.set_read_timeout(Some(timeout));
    // A DNS-shaped query: id, flags, one question for "netward.lab. A".
    let query: &[u8] =
        b"\x4e\x77\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07netward\x03lab\x00\x00\x01\x00\x01";
    if let Err(e) = sock.connect(dst).and_then(|()| sock.send(query)) {
        return classify(&e);
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) if buf[..n].starts_with(query) => Outcome::Ok,
        Ok(n) => Outcome::Error(format!("unexpected {n}-byte answer")),
        Err(e) => classify(&e),
    }
}

/// A UDP request and response from a fixed local port, so that repeated exchanges are
/// one flow (one conntrack entry): what a long-lived UDP client (a DNS resolver's
/// socket, a QUIC connection) looks like to the kernel.
pub fn udp_exchange_from(src_port: u16, dst: SocketAddr, timeout: Duration) -> Outcome {
    let bind = if dst.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, src_port))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, src_port))
    };
    let sock = match socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .and_then(|s| {
        s.set_reuse_address(true)?;
        s.bind(&bind.into())?;
        Ok(UdpSocket::from(s))
    }) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let _ = sock.set_read_timeout(Some(timeout));
    let query = b"netward-udp-flow";
    if let Err(e) = sock.connect(dst).and_then(|()| sock.send(query)) {
        return classify(&e);
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) if buf[..n].starts_with(query) => Outcome::Ok,
        Ok(n) => Outcome::Error(format!("unexpected {n}-byte answer")),
        Err(e) => classify(&e),
    }
}

/// An ICMP (or ICMPv6) echo request and its reply (`ping -c 1 -W`), on a raw socket:
/// `Ok` when the matching echo reply comes back within the timeout.
pub fn icmp_echo(dst: std::net::IpAddr, timeout: Duration) -> Outcome {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, proto, request, reply) = if dst.is_ipv6() {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    } else {
        (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8)
    };
    let sock = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("raw ICMP socket: {e}")),
    };
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0x4e77);
    let mut msg = vec![request, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(b"netward-echo");
    if dst.is_ipv4() {
        // ICMPv6 checksums are filled in by the kernel; ICMP ones are ours.
        let sum = internet_checksum(&msg).to_be_bytes();
        msg[2..4].copy_from_slice(&sum);
    }
    let to = socket2::SockAddr::from(SocketAddr::new(dst, 0));
    if let Err(e) = sock.send_to(&msg, &to) {
        return classify(&e);
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    // Bounded: every read waits at most what is left of the timeout.
    for _ in 0..1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = sock.set_read_timeout(Some(left));
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) => return classify(&e),
        };
        // A raw IPv4 socket hands over the IP header too; an IPv6 one does not.
        let icmp = if dst.is_ipv4() {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            buf.get(ihl..n).unwrap_or(&[])
        } else {
            &buf[..n]
        };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            return Outcome::Ok;
        }
        if icmp.first().is_some_and(|t| {
            // Destination unreachable (3 / ICMPv6 1): refused.
            (dst.is_ipv4() && *t == 3) || (dst.is_ipv6() && *t == 1)
        }) {
            return Outcome::Refused;
        }
    }
    Outcome::Timeout
}

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}
