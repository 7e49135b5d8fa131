//! The admin server's accept loop when the process is out of file descriptors
//! (EMFILE): it must back off instead of spinning on the pending connection, and serve
//! again once descriptors are free. Its own test binary: it lowers RLIMIT_NOFILE for
//! the whole process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netward_controller::Snapshot;
use netward_proxy::admin;
use netward_proxy::metrics::Metrics;
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use tokio::sync::watch;

/// User plus system CPU time of this process so far.
fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap())
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap())
    };
    d(u.user_time()) + d(u.system_time())
}

#[test]
fn accept_errors_back_off_and_the_server_recovers() {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::not_ready()));
    let addr: SocketAddr = admin::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::default()),
        rx,
    )
    .unwrap();
    // The server's runtime must be up before the descriptors run out.
    let mut probe = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = probe.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
    drop(probe);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    // Use up every descriptor, then free one for the client's socket.
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
        assert!(filler.len() < 1024, "RLIMIT_NOFILE did not apply");
    }
    filler.pop();
    let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The server cannot accept it (no descriptor left): measure what that costs.
    let (cpu0, t0) = (cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let burnt = cpu() - cpu0;
    let wall = t0.elapsed();
    let errors = admin::STATS
        .accept_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(filler);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert!(
        burnt < wall / 4,
        "the accept loop spun at EMFILE: {burnt:?} of CPU in {wall:?}"
    );
    assert!(
        (1..=30).contains(&errors),
        "accept errors counted: {errors}"
    );
    // With descriptors back, the pending connection is served (within the backoff cap).
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    let _ = client.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
}
