//! The admin server's exposure (issue #14): `/debug/*` only on its own loopback
//! listener, a header read timeout against slow clients, a cap on concurrent
//! connections, and the `--debug-addr` flag refused unless it is a loopback address.
//! Loopback only; no root needed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netward_controller::Snapshot;
use netward_proxy::admin;
use netward_proxy::metrics::Metrics;
use tokio::sync::watch;

/// Every read in these tests gives up after this long.
const READ_LIMIT: Duration = Duration::from_secs(10);

fn server() -> SocketAddr {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::not_ready()));
    // The sender may go: the server keeps serving the last snapshot.
    admin::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::default()),
        rx,
    )
    .unwrap()
}

/// `GET path` with `Connection: close`: the status code, or `None` if the server
/// closed the connection without answering.
fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

/// Reads until the server closes the connection: how long that took, or `None` if it
/// was still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return None;
            }
            // A reset is a close too.
            Err(_) => return Some(start.elapsed()),
        }
        if start.elapsed() > limit {
            return None;
        }
    }
}

#[test]
fn main_listener_serves_no_debug_snapshot() {
    let addr = server();
    assert_eq!(get(addr, "/healthz"), Some(200));
    assert_eq!(
        get(addr, "/debug/snapshot"),
        Some(404),
        "the node-wide admin listener hands out every pod's IPs, labels and policies"
    );
}

#[test]
fn debug_listener_serves_the_snapshot_on_loopback_only() {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::not_ready()));
    let metrics = Arc::new(Metrics::default());
    let addr = admin::start_debug("127.0.0.1:0".parse().unwrap(), metrics.clone(), rx.clone())
        .expect("loopback is allowed");
    assert_eq!(get(addr, "/debug/snapshot"), Some(200));
    assert_eq!(
        get(addr, "/metrics"),
        Some(404),
        "the debug listener serves /debug/* only"
    );
    for bad in ["0.0.0.0:0", "198.18.0.1:0", "[::]:0"] {
        let err =
            admin::start_debug(bad.parse().unwrap(), metrics.clone(), rx.clone()).expect_err(bad);
        assert!(err.to_string().contains("loopback"), "{bad}: {err}");
    }
}

#[test]
fn slowloris_client_is_disconnected_after_the_header_timeout() {
    let addr = server();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    // A header that never ends.
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: adm").unwrap();
    let took = closed_within(&mut s, Duration::from_secs(9));
    assert!(
        took.is_some_and(|t| t <= admin::HEADER_READ_TIMEOUT + Duration::from_secs(2)),
        "a partial header held the connection open for 9 s (closed after {took:?})"
    );
    // Meanwhile and afterwards, complete requests are served.
    assert_eq!(get(addr, "/healthz"), Some(200));
}

#[test]
fn a_client_that_sends_nothing_is_disconnected_too() {
    let addr = server();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    let took = closed_within(&mut s, Duration::from_secs(9));
    assert!(
        took.is_some_and(|t| t <= admin::HEADER_READ_TIMEOUT + Duration::from_secs(2)),
        "a silent connection held its slot for 9 s (closed after {took:?})"
    );
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let addr = server();
    let mut held = Vec::new();
    for _ in 0..admin::MAX_CONNECTIONS {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        held.push(s);
    }
    // Let the server accept them all.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut answer = Vec::new();
    let start = Instant::now();
    let closed = match extra.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
    };
    assert!(
        closed && answer.is_empty() && start.elapsed() < Duration::from_secs(2),
        "connection {} was not closed at once while {} were open: {:?} after {:?}",
        admin::MAX_CONNECTIONS + 1,
        admin::MAX_CONNECTIONS,
        String::from_utf8_lossy(&answer),
        start.elapsed()
    );
    // Once the held ones are gone, the server answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/healthz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the admin server never recovered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The refusal is counted where Prometheus sees it.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("netward_admin_connections_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 1.0), "{text}");
    for name in [
        "netward_admin_accept_errors_total ",
        "netward_audit_rotation_errors_total ",
        "netward_audit_flush_errors_total ",
    ] {
        assert!(text.contains(name), "{name}missing from /metrics");
    }
}

fn netward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("NETWARD_DEBUG_ADDR")
        .env_remove("NETWARD_ADMIN_ADDR")
        .output()
        .unwrap()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rogue-pod")
}

#[test]
fn a_debug_addr_that_is_not_loopback_is_a_usage_error() {
    let ex = example();
    let ex = ex.to_str().unwrap();
    for (argv, value) in [
        (
            vec!["node", "--node-name", "a", "--debug-addr", "0.0.0.0:15022"],
            "0.0.0.0:15022",
        ),
        (
            vec![
                "node",
                "--node-name",
                "a",
                "--debug-addr",
                "198.18.0.1:15022",
            ],
            "198.18.0.1:15022",
        ),
        (
            vec!["run", "-f", ex, "--debug-addr", "[::]:15022"],
            "[::]:15022",
        ),
        (
            vec!["run", "-f", ex, "--debug-addr", "localhost:15022"],
            "localhost:15022",
        ),
    ] {
        let o = netward(&argv);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{argv:?}: {err}");
        assert!(
            err.contains("--debug-addr") && err.contains(value),
            "{argv:?}: the message names neither the flag nor the value: {err}"
        );
    }
}
