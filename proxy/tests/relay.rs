//! The relay on loopback socket pairs: `client app ⇄ relay ⇄ server app`.
//!
//! Every case runs twice, with splice (`splice::*`) and with the copy loop
//! (`copy::*`), and checks which one actually ran.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use std::future::Future;
use std::io;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use netward_proxy::relay::{End, RelayError, RelayOptions, RelayOutcome, Side, relay};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a test.
const BOUND: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

fn opts(splice: bool) -> RelayOptions {
    RelayOptions {
        splice,
        ..RelayOptions::default()
    }
}

/// A connected loopback pair of std sockets, non-blocking, ready for tokio.
fn std_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    for s in [&a, &b] {
        s.set_nonblocking(true).unwrap();
        s.set_nodelay(true).unwrap();
    }
    (a, b)
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// The two applications around a running relay.
struct Harness {
    /// The client application's socket.
    client: TcpStream,
    /// The server application's socket.
    server: TcpStream,
    relay: JoinHandle<Result<RelayOutcome, RelayError>>,
}

async fn start(opts: RelayOptions) -> Harness {
    let (client, relay_client) = pair().await;
    let (relay_upstream, server) = pair().await;
    let relay = tokio::spawn(async move { relay(relay_client, relay_upstream, &opts).await });
    Harness {
        client,
        server,
        relay,
    }
}

impl Harness {
    async fn outcome(self) -> RelayOutcome {
        finish(self.relay).await.unwrap()
    }
}

async fn finish(
    relay: JoinHandle<Result<RelayOutcome, RelayError>>,
) -> Result<RelayOutcome, RelayError> {
    within(BOUND, "relay end", relay).await.unwrap()
}

// ---- data: a position-sensitive checksum and a cheap pseudo-random stream ----

/// FNV-style hash over the stream's 8-byte words, independent of how the
/// stream was cut into reads; plus the length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Checksum {
    hash: u64,
    len: u64,
    tail: u64,
    tail_len: u32,
}

impl Checksum {
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while self.tail_len != 0 && !data.is_empty() {
            self.tail |= u64::from(data[0]) << (8 * self.tail_len);
            self.tail_len += 1;
            data = &data[1..];
            if self.tail_len == 8 {
                let word = self.tail;
                self.mix(word);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().unwrap()));
        }
        for (i, b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(*b) << (8 * i);
        }
        self.tail_len = words.remainder().len() as u32;
    }

    fn finish(mut self) -> (u64, u64) {
        let (tail, len) = (self.tail, self.len);
        self.mix(tail ^ len);
        (self.len, self.hash)
    }
}

const CHUNK: usize = 64 * 1024;

/// Pseudo-random bytes; streams are cut from it at shifting offsets.
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..(1 << 20) + CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
});

/// Writes `total` bytes of pattern (shifted by `seed`) and returns their checksum.
async fn send(mut w: impl AsyncWrite + Unpin, total: usize, seed: usize) -> io::Result<Checksum> {
    let mut sum = Checksum::default();
    let mut sent = 0;
    let mut i = seed;
    while sent < total {
        let off = (i * 4099) % (1 << 20);
        let n = CHUNK.min(total - sent);
        let chunk = &PATTERN[off..off + n];
        w.write_all(chunk).await?;
        sum.update(chunk);
        sent += n;
        i += 1;
    }
    Ok(sum)
}

/// Reads to end of stream and returns the checksum of what arrived.
async fn recv(mut r: impl AsyncRead + Unpin) -> io::Result<Checksum> {
    let mut sum = Checksum::default();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(sum);
        }
        sum.update(&buf[..n]);
    }
}

/// Reads until the socket errors, and returns that error.
async fn read_error(s: &mut TcpStream) -> io::Error {
    let mut buf = vec![0; CHUNK];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => panic!("clean end of stream where a reset was expected"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

fn assert_reset(err: &io::Error) {
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "expected a reset, got {err:?}"
    );
}

// ---- the cases ----

/// Bytes flow both ways, byte counts are exact, and FIN on both sides ends
/// the relay with `Fin`.
async fn both_directions(opts: RelayOptions) {
    let splice = opts.splice;
    let mut h = start(opts).await;
    let mut buf = [0; 64];

    h.client.write_all(b"hello upstream").await.unwrap();
    within(BOUND, "server read", h.server.read_exact(&mut buf[..14]))
        .await
        .unwrap();
    assert_eq!(&buf[..14], b"hello upstream");

    h.server.write_all(b"hello client!").await.unwrap();
    within(BOUND, "client read", h.client.read_exact(&mut buf[..13]))
        .await
        .unwrap();
    assert_eq!(&buf[..13], b"hello client!");

    // A second round trip, on the same pipes.
    h.client.write_all(b"again").await.unwrap();
    within(BOUND, "server read", h.server.read_exact(&mut buf[..5]))
        .await
        .unwrap();
    h.server.write_all(b"ok").await.unwrap();
    within(BOUND, "client read", h.client.read_exact(&mut buf[..2]))
        .await
        .unwrap();

    h.client.shutdown().await.unwrap();
    assert_eq!(
        within(BOUND, "server eof", h.server.read(&mut buf))
            .await
            .unwrap(),
        0
    );
    h.server.shutdown().await.unwrap();
    assert_eq!(
        within(BOUND, "client eof", h.client.read(&mut buf))
            .await
            .unwrap(),
        0
    );

    let out = h.outcome().await;
    assert_eq!(out.client_to_upstream, 14 + 5);
    assert_eq!(out.upstream_to_client, 13 + 2);
    assert_eq!(
        out.end,
        End::Fin {
            first: Side::Client
        }
    );
    assert_eq!(out.spliced, splice);
}

/// 256 MiB each way at the same time; checksums match at both ends.
async fn large_transfer(opts: RelayOptions) {
    const TOTAL: usize = 256 << 20;
    let splice = opts.splice;
    let h = start(opts).await;
    let started = Instant::now();

    // Owned halves, so that each writer shuts down its side when done.
    let (client_r, mut client_w) = h.client.into_split();
    let (server_r, mut server_w) = h.server.into_split();
    let c_send = tokio::spawn(async move {
        let s = send(&mut client_w, TOTAL, 1).await.unwrap();
        client_w.shutdown().await.unwrap();
        (s, client_w)
    });
    let s_send = tokio::spawn(async move {
        let s = send(&mut server_w, TOTAL, 2).await.unwrap();
        server_w.shutdown().await.unwrap();
        (s, server_w)
    });
    let s_recv = tokio::spawn(recv(server_r));
    let c_recv = tokio::spawn(recv(client_r));

    let limit = Duration::from_secs(240);
    let (up_sent, _w1) = within(limit, "client send", c_send).await.unwrap();
    let (down_sent, _w2) = within(limit, "server send", s_send).await.unwrap();
    let up_got = within(limit, "server recv", s_recv).await.unwrap().unwrap();
    let down_got = within(limit, "client recv", c_recv).await.unwrap().unwrap();
    let elapsed = started.elapsed();

    assert_eq!(up_got.finish(), up_sent.finish(), "client → upstream");
    assert_eq!(down_got.finish(), down_sent.finish(), "upstream → client");
    let out = finish(h.relay).await.unwrap();
    assert_eq!(out.client_to_upstream, TOTAL as u64);
    assert_eq!(out.upstream_to_client, TOTAL as u64);
    assert!(matches!(out.end, End::Fin { .. }), "{:?}", out.end);
    assert_eq!(out.spliced, splice);
    let mib = (2 * TOTAL) as f64 / (1 << 20) as f64;
    println!(
        "large_transfer splice={splice}: {mib:.0} MiB in {elapsed:.2?} = {:.0} MiB/s (with checksums)",
        mib / elapsed.as_secs_f64()
    );
}

/// The client half-closes; the server keeps sending for a while and the
/// client still gets every byte; then `Fin` on both, client first.
async fn half_close(opts: RelayOptions) {
    const PIECE: usize = 512 * 1024;
    const PIECES: usize = 16;
    let splice = opts.splice;
    let mut h = start(opts).await;

    h.client.write_all(&[7; 1000]).await.unwrap();
    h.client.shutdown().await.unwrap();
    let got = within(BOUND, "server reads to eof", recv(&mut h.server))
        .await
        .unwrap();
    assert_eq!(got.len, 1000);

    let (client, server) = (&mut h.client, &mut h.server);
    let writer = async move {
        let mut sum = Checksum::default();
        for i in 0..PIECES {
            let off = i * 4099;
            let piece = &PATTERN[off..off + PIECE];
            server.write_all(piece).await.unwrap();
            sum.update(piece);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.shutdown().await.unwrap();
        sum
    };
    let (sent, got) = within(BOUND, "half-closed transfer", async {
        tokio::join!(writer, recv(client))
    })
    .await;
    assert_eq!(got.unwrap().finish(), sent.finish());

    let out = h.outcome().await;
    assert_eq!(
        out.end,
        End::Fin {
            first: Side::Client
        }
    );
    assert_eq!(out.client_to_upstream, 1000);
    assert_eq!(out.upstream_to_client, (PIECE * PIECES) as u64);
    assert_eq!(out.spliced, splice);
}

/// The client closes before sending anything: the server sees EOF, and its
/// own close ends the relay.
async fn early_close_client(opts: RelayOptions) {
    let mut h = start(opts).await;
    drop(h.client);
    let mut buf = [0; 8];
    assert_eq!(
        within(BOUND, "server eof", h.server.read(&mut buf))
            .await
            .unwrap(),
        0
    );
    drop(h.server);
    let out = finish(h.relay).await.unwrap();
    assert_eq!(
        out.end,
        End::Fin {
            first: Side::Client
        }
    );
    assert_eq!((out.client_to_upstream, out.upstream_to_client), (0, 0));
}

/// The server closes first, right after a greeting: the client gets the
/// greeting, then EOF.
async fn early_close_upstream(opts: RelayOptions) {
    let mut h = start(opts).await;
    h.server.write_all(b"bye").await.unwrap();
    drop(h.server);
    let got = within(BOUND, "client reads to eof", recv(&mut h.client))
        .await
        .unwrap();
    assert_eq!(got.len, 3);
    drop(h.client);
    let out = finish(h.relay).await.unwrap();
    assert_eq!(
        out.end,
        End::Fin {
            first: Side::Upstream
        }
    );
    assert_eq!((out.client_to_upstream, out.upstream_to_client), (0, 3));
}

/// The upstream resets (`SO_LINGER` 0, then close): the client gets a reset
/// too, not a clean end of stream.
async fn rst_from_upstream(opts: RelayOptions) {
    let mut h = start(opts).await;
    h.server.write_all(b"partial").await.unwrap();
    let mut buf = [0; 7];
    within(BOUND, "client read", h.client.read_exact(&mut buf))
        .await
        .unwrap();
    h.server.set_zero_linger().unwrap();
    drop(h.server);
    let err = within(BOUND, "client sees the reset", read_error(&mut h.client)).await;
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
    let out = finish(h.relay).await.unwrap();
    assert_eq!(
        out.end,
        End::Rst {
            side: Side::Upstream
        }
    );
    assert_eq!(out.upstream_to_client, 7);
}

/// The client resets: the server gets a reset.
async fn rst_from_client(opts: RelayOptions) {
    let mut h = start(opts).await;
    h.client.write_all(b"x").await.unwrap();
    let mut buf = [0; 1];
    within(BOUND, "server read", h.server.read_exact(&mut buf))
        .await
        .unwrap();
    h.client.set_zero_linger().unwrap();
    drop(h.client);
    let err = within(BOUND, "server sees the reset", read_error(&mut h.server)).await;
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
    let out = finish(h.relay).await.unwrap();
    assert_eq!(out.end, End::Rst { side: Side::Client });
}

/// The client closes completely while the server keeps writing: the client's
/// kernel answers with a reset, and the relay passes it on to the server.
async fn write_after_client_close(opts: RelayOptions) {
    let mut h = start(opts).await;
    drop(h.client);
    let mut buf = [0; 8];
    assert_eq!(
        within(BOUND, "server eof", h.server.read(&mut buf))
            .await
            .unwrap(),
        0
    );
    let server = &mut h.server;
    let err = within(BOUND, "server write fails", async move {
        loop {
            if let Err(e) = server.write_all(&PATTERN[..4096]).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_reset(&err);
    let out = finish(h.relay).await.unwrap();
    assert_eq!(out.end, End::Rst { side: Side::Client });
}

/// With no bytes either way for the idle timeout, the relay resets both.
async fn idle_timeout(mut opts: RelayOptions) {
    opts.idle_timeout = Some(Duration::from_millis(300));
    let mut h = start(opts).await;
    h.client.write_all(b"x").await.unwrap();
    let mut buf = [0; 1];
    within(BOUND, "server read", h.server.read_exact(&mut buf))
        .await
        .unwrap();
    let out = finish(h.relay).await.unwrap();
    assert_eq!(out.end, End::IdleTimeout);
    assert!(out.duration >= Duration::from_millis(300), "{out:?}");
    assert_reset(&within(BOUND, "client reset", read_error(&mut h.client)).await);
    assert_reset(&within(BOUND, "server reset", read_error(&mut h.server)).await);
}

/// A revoked connection (the policy changed) is reset on both sides, mid-stream.
async fn revoked(opts: RelayOptions) {
    let (mut client, relay_client) = pair().await;
    let (relay_upstream, mut server) = pair().await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        netward_proxy::relay::relay_until(relay_client, relay_upstream, &opts, async move {
            let _ = rx.await;
        })
        .await
    });
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0; 5];
    within(BOUND, "server read", server.read_exact(&mut buf))
        .await
        .unwrap();
    tx.send(()).unwrap();
    let out = finish(task).await.unwrap();
    assert_eq!(out.end, End::Revoked);
    assert_eq!(out.client_to_upstream, 5);
    assert_reset(&within(BOUND, "client reset", read_error(&mut client)).await);
    assert_reset(&within(BOUND, "server reset", read_error(&mut server)).await);
}

/// Traffic in either direction keeps the idle timer from firing.
async fn activity_defers_idle_timeout(mut opts: RelayOptions) {
    opts.idle_timeout = Some(Duration::from_millis(300));
    let mut h = start(opts).await;
    let mut buf = [0; 1];
    let mut last_byte = Instant::now();
    for i in 0..12 {
        // Alternate directions, 100 ms apart: 1.2 s in all, four timeouts.
        let (from, to) = if i % 2 == 0 {
            (&mut h.client, &mut h.server)
        } else {
            (&mut h.server, &mut h.client)
        };
        from.write_all(b"k").await.unwrap();
        within(BOUND, "keepalive byte", to.read_exact(&mut buf))
            .await
            .unwrap();
        last_byte = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!h.relay.is_finished(), "relay ended while active");
    }
    let out = finish(h.relay).await.unwrap();
    assert_eq!(out.end, End::IdleTimeout);
    let quiet = last_byte.elapsed();
    assert!(
        quiet >= Duration::from_millis(290),
        "ended {quiet:?} after the last byte"
    );
    assert_eq!((out.client_to_upstream, out.upstream_to_client), (6, 6));
}

/// The process's view of one thread's CPU time, in clock ticks (user + system).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name: state is field 3; utime, stime are 14, 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A client that stops reading for a second: the server's writes block (the
/// relay buffers no more than its pipe), the relay's thread does not spin,
/// and once the client reads again every byte arrives.
async fn backpressure(opts: RelayOptions) {
    const TOTAL: usize = 48 << 20;
    const PAUSE: Duration = Duration::from_secs(1);
    let splice = opts.splice;
    let (client_std, relay_client) = std_pair();
    let (relay_upstream, server_std) = std_pair();

    // The relay runs alone on its own thread so that its CPU time can be
    // measured apart from the test's.
    let relay_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let before = thread_cpu_ticks();
        let out = rt.block_on(async move {
            let c = TcpStream::from_std(relay_client).unwrap();
            let u = TcpStream::from_std(relay_upstream).unwrap();
            relay(c, u, &opts).await
        });
        (out, thread_cpu_ticks() - before)
    });

    let mut client = TcpStream::from_std(client_std).unwrap();
    let mut server = TcpStream::from_std(server_std).unwrap();
    let writer = tokio::spawn(async move {
        let sum = send(&mut server, TOTAL, 3).await.unwrap();
        server.shutdown().await.unwrap();
        (sum, server)
    });
    tokio::time::sleep(PAUSE).await;
    assert!(
        !writer.is_finished(),
        "the server wrote everything while nobody read: no backpressure"
    );
    let got = within(BOUND, "client catches up", recv(&mut client))
        .await
        .unwrap();
    let (sent, _server) = within(BOUND, "writer", writer).await.unwrap();
    assert_eq!(got.finish(), sent.finish());
    drop(client);

    let joined = tokio::task::spawn_blocking(move || relay_thread.join().unwrap());
    let (out, ticks) = within(BOUND, "relay thread", joined).await.unwrap();
    let out = out.unwrap();
    assert_eq!(out.upstream_to_client, TOTAL as u64);
    assert_eq!(out.spliced, splice);
    // Spinning through the pause would burn ~100 ticks (one per 10 ms).
    println!(
        "backpressure splice={splice}: relay thread used {ticks} ticks over {:?}",
        out.duration
    );
    assert!(
        ticks < 40,
        "relay thread used {ticks} ticks: is it spinning?"
    );
}

/// Many short request/response exchanges over one connection.
async fn ping_pong(opts: RelayOptions) {
    let mut h = start(opts).await;
    let mut buf = [0; 32];
    for i in 0..200u32 {
        let msg = i.to_le_bytes();
        h.client.write_all(&msg).await.unwrap();
        within(BOUND, "ping", h.server.read_exact(&mut buf[..4]))
            .await
            .unwrap();
        assert_eq!(buf[..4], msg);
        h.server.write_all(&buf[..4]).await.unwrap();
        within(BOUND, "pong", h.client.read_exact(&mut buf[..4]))
            .await
            .unwrap();
        assert_eq!(buf[..4], msg);
    }
    drop(h.client);
    drop(h.server);
    let out = finish(h.relay).await.unwrap();
    assert_eq!((out.client_to_upstream, out.upstream_to_client), (800, 800));
}

macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {
        mod splice {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::opts(true)).await;
                }
            )*
        }
        mod copy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::opts(false)).await;
                }
            )*
        }
    };
}

in_both_modes!(
    both_directions,
    large_transfer,
    half_close,
    early_close_client,
    early_close_upstream,
    rst_from_upstream,
    rst_from_client,
    write_after_client_close,
    idle_timeout,
    revoked,
    activity_defers_idle_timeout,
    backpressure,
    ping_pong,
);

/// Pins the size of the per-connection relay future (the sockets, both
/// directions and the idle timer), as ztunnel's assertions do.
#[tokio::test]
async fn relay_future_size() {
    let (a, b) = pair().await;
    let opts = RelayOptions::default();
    let fut = relay(a, b, &opts);
    let size = std::mem::size_of_val(&fut);
    println!("relay future: {size} bytes");
    // 400 bytes with tokio 1.54: two sockets, two directions, the idle timer.
    assert!(size <= 416, "relay future grew to {size} bytes");
}

/// Throughput of one direction, splice vs copy, without checksums.
/// Run with `cargo test --release -p netward-proxy --test relay -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    const TOTAL: usize = 4 << 30;
    for (splice, buffer_size) in [true, false]
        .into_iter()
        .flat_map(|s| [64 << 10, 256 << 10, 1 << 20].map(|b| (s, b)))
    {
        let h = start(RelayOptions {
            buffer_size,
            ..opts(splice)
        })
        .await;
        let (mut client, mut server) = (h.client, h.server);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            let buf = vec![1u8; 256 * 1024];
            let mut sent = 0;
            while sent < TOTAL {
                client.write_all(&buf).await.unwrap();
                sent += buf.len();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let elapsed = started.elapsed();
        drop(writer.await.unwrap());
        drop(server);
        let out = finish(h.relay).await.unwrap();
        assert_eq!(got, TOTAL);
        assert_eq!(out.spliced, splice);
        println!(
            "throughput splice={splice} buffer={} KiB: {:.0} MiB/s",
            buffer_size >> 10,
            TOTAL as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
        );
    }
}
