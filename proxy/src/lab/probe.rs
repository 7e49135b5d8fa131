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
