//! Root tests: the verdict queue answering real packets in throwaway namespaces.
//!
//! A node namespace routes between two pod namespaces (veth pairs) and carries
//! netward's rules with both pods local. `run_queue` and a transparent listener
//! on the tproxy port run on threads that entered the node namespace; clients
//! are python3 one-liners in pod A. Namespaces are `nwv-<pid>-<n>`, removed on
//! every exit path by a guard. Addresses come from 198.18.0.0/15 and fd00::/8.
//! Every wait is bounded. Without root the tests print why and pass.
#![allow(missing_docs, reason = "test crate")]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netward_controller::Protocol;
use netward_iptables::{CommandRunner, Config, Ruleset, Runner, apply};
use netward_proxy::verdict::{self, Action, FlowKey, STATS, VerdictConfig, run_queue};
use nix::sched::{CloneFlags, setns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The tests share the process-wide counters and two CPUs: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root to create network namespaces and read nfqueue");
            return;
        }
    };
}

const POD_A4: &str = "198.18.1.2";
const POD_B4: &str = "198.18.2.2";
const POD_A6: &str = "fd00:1::2";
const POD_B6: &str = "fd00:2::2";
const WAIT: Duration = Duration::from_secs(3);

/// A network namespace deleted on drop, panics included.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "nwv-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = CommandRunner::new()
            .run("ip", &["netns", "add", &name], None)
            .unwrap();
        assert!(out.success(), "ip netns add {name}: {out:?}");
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    fn runner(&self) -> CommandRunner {
        CommandRunner::new()
            .in_netns(&self.name)
            .with_timeout(Duration::from_secs(20))
    }

    fn sh(&self, script: &str) -> String {
        let out = self.runner().run("sh", &["-ec", script], None).unwrap();
        assert!(out.success(), "`{script}` in {} failed: {out:?}", self.name);
        out.stdout
    }

    /// Runs a python3 script with arguments; it must exit 0.
    fn python(&self, script: &str, args: &[&str]) -> String {
        let mut argv = vec!["-c", script];
        argv.extend_from_slice(args);
        let out = self.runner().run("python3", &argv, None).unwrap();
        assert!(out.success(), "python in {} failed: {out:?}", self.name);
        out.stdout.trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node namespace with pod A (198.18.1.2, fd00:1::2) and pod B (198.18.2.2,
/// fd00:2::2) on veth pairs, and netward's rules with both pods local.
struct Topology {
    node: Netns,
    pod_a: Netns,
    pod_b: Netns,
    rules: Ruleset,
}

impl Topology {
    fn new() -> Self {
        let (node, pod_a, pod_b) = (Netns::new(), Netns::new(), Netns::new());
        for ns in [&node, &pod_a, &pod_b] {
            ns.sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0");
        }
        node.sh(&format!(
            "ip link add va type veth peer name eth0 netns {a}
             ip link add vb type veth peer name eth0 netns {b}
             sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
             ip addr add 198.18.1.1/24 dev va
             ip addr add fd00:1::1/64 dev va nodad
             ip addr add 198.18.2.1/24 dev vb
             ip addr add fd00:2::1/64 dev vb nodad
             ip link set va up
             ip link set vb up",
            a = pod_a.name,
            b = pod_b.name
        ));
        for (ns, n) in [(&pod_a, 1), (&pod_b, 2)] {
            ns.sh(&format!(
                "ip addr add 198.18.{n}.2/24 dev eth0
                 ip addr add fd00:{n}::2/64 dev eth0 nodad
                 ip link set eth0 up
                 ip route add default via 198.18.{n}.1
                 ip -6 route add default via fd00:{n}::1"
            ));
        }
        let mut rules = Ruleset::new(Config::default());
        rules.set_local(
            [POD_A4, POD_B4, POD_A6, POD_B6]
                .iter()
                .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        apply(&node.runner(), &rules).unwrap();
        Self {
            node,
            pod_a,
            pod_b,
            rules,
        }
    }

    fn verdict_config(&self) -> VerdictConfig {
        VerdictConfig::from_rules(&self.rules.config)
    }

    /// One TCP connection attempt from pod A, bounded by `timeout` seconds.
    fn tcp(&self, dst: &str, port: u16, timeout: f64) -> Attempt {
        let out = self
            .pod_a
            .python(TCP_CLIENT, &[dst, &port.to_string(), &timeout.to_string()]);
        Attempt::parse(&out)
    }

    /// One datagram from pod A to `dst:53` and its echo: `echo`, `timeout` or `refused`.
    fn udp(&self, dst: &str) -> String {
        self.pod_a.python(UDP_CLIENT, &[dst, "53"])
    }
}

/// Connects, sends one byte, reads the reply; prints `result local_port reply ms`.
const TCP_CLIENT: &str = r#"
import socket, sys, time
dst, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(timeout)
t = time.monotonic()
def done(result, local=0, reply="-"):
    print(result, local, reply, int((time.monotonic() - t) * 1000))
try:
    s.connect((dst, port))
    s.sendall(b"x")
    done("connected", s.getsockname()[1], s.recv(16).decode().strip() or "-")
except socket.timeout:
    done("timeout")
except ConnectionRefusedError:
    done("refused")
"#;

/// Median connect time in microseconds over `n` sequential connections.
const TCP_LATENCY: &str = r#"
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
ts = []
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    t = time.perf_counter()
    s.connect((dst, port))
    ts.append(time.perf_counter() - t)
    s.sendall(b"x")
    s.recv(16)
    s.close()
ts.sort()
print(int(ts[len(ts) // 2] * 1e6))
"#;

/// A UDP echo server on port 53, IPv4 and IPv6.
const UDP_ECHO: &str = r#"
import select, socket
socks = []
for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((any_addr, 53))
    socks.append(s)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 60)
    if not ready:
        break
    for s in ready:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
dst, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((dst, port))
try:
    s.send(b"ping")
    print("echo" if s.recv(16) == b"ping" else "garbled")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"#;

/// Sends one SCTP INIT (valid CRC32c) over a raw socket; the kernel need not know SCTP.
const SCTP_INIT: &str = r#"
import socket, struct, sys
dst, sport, dport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF
init = struct.pack(">BBHIIHHI", 1, 0, 20, 0x1234567, 65535, 10, 10, 1)
pkt = struct.pack(">HHII", sport, dport, 0, 0) + init
pkt = pkt[:8] + struct.pack("<I", crc32c(pkt)) + pkt[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.sendto(pkt, (dst, 0))
print("sent")
"#;

/// Prints `sctp <sport> <dport>` for every SCTP packet that arrives.
const SCTP_SNIFFER: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
print("ready", flush=True)
while True:
    data = s.recv(2048)
    ihl = (data[0] & 0x0F) * 4
    sport, dport = struct.unpack_from(">HH", data, ihl)
    print("sctp", sport, dport, flush=True)
"#;

/// What one TCP client attempt saw.
#[derive(Debug)]
struct Attempt {
    result: String,
    local_port: u16,
    reply: String,
    ms: u64,
}

impl Attempt {
    fn parse(line: &str) -> Self {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "client output {line:?}");
        Self {
            result: f[0].to_string(),
            local_port: f[1].parse().unwrap(),
            reply: f[2].to_string(),
            ms: f[3].parse().unwrap(),
        }
    }
}

/// The policy under test: an action per (protocol, destination port), every call recorded.
#[derive(Default)]
struct Decider {
    actions: Mutex<HashMap<(Protocol, u16), Action>>,
    calls: Mutex<Vec<FlowKey>>,
}

impl Decider {
    fn set(&self, protocol: Protocol, port: u16, action: Action) {
        self.actions
            .lock()
            .unwrap()
            .insert((protocol, port), action);
    }

    fn decide(&self, key: &FlowKey) -> Action {
        self.calls.lock().unwrap().push(*key);
        let actions = self.actions.lock().unwrap();
        actions
            .get(&(key.protocol, key.dst.port()))
            .copied()
            .unwrap_or(Action::Drop)
    }

    fn calls_to(&self, dst: SocketAddr) -> Vec<FlowKey> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|k| k.dst == dst).copied().collect()
    }
}

/// `run_queue` on a thread inside the node namespace; stopped and joined on drop.
struct QueueThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), verdict::Error>>>,
}

impl QueueThread {
    fn start(topo: &Topology, decider: &Arc<Decider>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn_queue(topo, decider, &stop);
        let queue = topo.rules.config.queue_num.to_string();
        let deadline = Instant::now() + WAIT;
        // Bound once the kernel lists the queue (first field: its number).
        while !topo
            .node
            .sh("cat /proc/net/netfilter/nfnetlink_queue")
            .lines()
            .any(|l| l.split_whitespace().next() == Some(queue.as_str()))
        {
            assert!(!handle.is_finished(), "run_queue returned early");
            assert!(
                Instant::now() < deadline,
                "queue {queue} not bound within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread within a bound and returns what `run_queue` returned.
    fn stop(mut self) -> Result<(), verdict::Error> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), verdict::Error> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "run_queue ignored stop for 2 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.join().unwrap()
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.stop.store(true, Ordering::Relaxed);
        } else {
            self.stop_inner().unwrap();
        }
    }
}

fn spawn_queue(
    topo: &Topology,
    decider: &Arc<Decider>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<Result<(), verdict::Error>> {
    let (cfg, decider, stop) = (topo.verdict_config(), decider.clone(), stop.clone());
    let netns = topo.node.name.clone();
    std::thread::spawn(move || {
        Netns::enter_by_name(&netns);
        let decide = move |k: &FlowKey| decider.decide(k);
        run_queue(&cfg, &decide, &stop)
    })
}

impl Netns {
    /// Moves the calling thread (only it) into the namespace `name`.
    fn enter_by_name(name: &str) {
        let fd = File::open(format!("/run/netns/{name}")).unwrap();
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap();
    }
}

/// The node's transparent listener on the tproxy port (IPv4 and IPv6), on a
/// thread inside the node namespace. Each connection is reported as
/// `(local_addr, peer_addr)`, read one byte from and answered with `hi`.
struct Listener {
    accepted: mpsc::Receiver<(SocketAddr, SocketAddr)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(node: &Netns, port: u16) -> Self {
        let (tx, accepted) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let name = node.name.clone();
        let handle = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for addr in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
                    let addr: SocketAddr = addr.parse().unwrap();
                    listeners.push(netward_proxy::net::transparent_listener(addr).unwrap());
                }
                ready_tx.send(()).unwrap();
                let serve = async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for l in listeners {
                        let tx = tx.clone();
                        tasks.spawn(async move {
                            loop {
                                let Ok((mut conn, peer)) = l.accept().await else {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                };
                                let local = conn.local_addr().unwrap();
                                let _ = tx.send((local, peer));
                                tokio::spawn(async move {
                                    let mut b = [0u8; 1];
                                    let _ = tokio::time::timeout(
                                        Duration::from_secs(2),
                                        conn.read_exact(&mut b),
                                    )
                                    .await;
                                    let _ = conn.write_all(b"hi\n").await;
                                    let _ = conn.shutdown().await;
                                });
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        ready.recv_timeout(WAIT).expect("listener ready");
        Self {
            accepted,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    fn next(&self, wait: Duration) -> Option<(SocketAddr, SocketAddr)> {
        self.accepted.recv_timeout(wait).ok()
    }

    fn drain(&self) {
        while self.accepted.try_recv().is_ok() {}
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let deadline = Instant::now() + WAIT;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// A child process (in a namespace) killed and reaped on drop; stdout lines on a channel.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    fn spawn(netns: &Netns, script: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "python3", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next_line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn tcp_and_udp_verdicts_ipv4_and_ipv6() {
    require_root!();
    let _serial = serial();
    let topo = Topology::new();
    let listener = Listener::start(&topo.node, topo.rules.config.tcp_port);
    let echo = Background::spawn(&topo.pod_b, UDP_ECHO);
    assert_eq!(echo.next_line(WAIT).as_deref(), Some("ready"));
    let decider = Arc::new(Decider::default());
    decider.set(Protocol::Tcp, 80, Action::Accept);
    decider.set(Protocol::Tcp, 81, Action::Drop);
    decider.set(Protocol::Tcp, 82, Action::Reject);
    decider.set(Protocol::Udp, 53, Action::Accept);
    let queue = QueueThread::start(&topo, &decider);

    for (a, b) in [(POD_A4, POD_B4), (POD_A6, POD_B6)] {
        // 1 + 5. Accept: the connection reaches the node's listener, whose local
        // address is pod B:80; `decide` saw exactly this connection's SYN once.
        let before = STATS.snapshot();
        let t = topo.tcp(b, 80, 2.0);
        assert_eq!(
            (t.result.as_str(), t.reply.as_str()),
            ("connected", "hi"),
            "{b}: {t:?}"
        );
        let (local, peer) = listener.next(WAIT).expect("the listener accepted");
        assert_eq!(local, sock(b, 80), "orig dst is pod B:80");
        assert_eq!(peer, sock(a, t.local_port));
        let flow = FlowKey {
            protocol: Protocol::Tcp,
            src: sock(a, t.local_port),
            dst: sock(b, 80),
        };
        let calls: Vec<FlowKey> = decider
            .calls_to(sock(b, 80))
            .into_iter()
            .filter(|k| k.src.port() == t.local_port)
            .collect();
        assert_eq!(calls, [flow], "one call, for the SYN only");
        let d = STATS.snapshot().since(&before);
        assert_eq!(
            (d.seen, d.accepted, d.dropped, d.rejected, d.parse_errors),
            (1, 1, 0, 0, 0),
            "only the SYN was queued: {d:?}"
        );

        // 2. Drop: no answer at all, the client times out.
        let t = topo.tcp(b, 81, 1.0);
        assert_eq!(t.result, "timeout", "{b}:81 {t:?}");
        assert!(!decider.calls_to(sock(b, 81)).is_empty());

        // 3. Reject: a reset at once.
        let t = topo.tcp(b, 82, 2.0);
        assert_eq!(t.result, "refused", "{b}:82 {t:?}");
        assert!(t.ms < 500, "a reset is immediate: {t:?}");
        assert_eq!(
            listener.next(Duration::from_millis(100)),
            None,
            "nothing else accepted"
        );

        // 4. UDP: forwarded to pod B's echo when accepted, silent when dropped,
        // an ICMP error when rejected.
        decider.set(Protocol::Udp, 53, Action::Accept);
        assert_eq!(topo.udp(b), "echo", "udp accept to {b}");
        let udp_calls = decider.calls_to(sock(b, 53));
        assert_eq!(udp_calls.len(), 1, "{udp_calls:?}");
        assert_eq!(
            (udp_calls[0].protocol, udp_calls[0].src.ip()),
            (Protocol::Udp, a.parse().unwrap())
        );
        decider.set(Protocol::Udp, 53, Action::Drop);
        assert_eq!(topo.udp(b), "timeout", "udp drop to {b}");
        decider.set(Protocol::Udp, 53, Action::Reject);
        assert_eq!(topo.udp(b), "refused", "udp reject to {b}");
    }

    // The added latency of one queued verdict: median connect time with the
    // queue (accept) against the same rules without the queue.
    let with_queue: u64 = topo
        .pod_a
        .python(TCP_LATENCY, &[POD_B4, "80", "30"])
        .parse()
        .unwrap();
    let mut no_queue = topo.rules.clone();
    no_queue.config.verdict_queue = false;
    apply(&topo.node.runner(), &no_queue).unwrap();
    let without: u64 = topo
        .pod_a
        .python(TCP_LATENCY, &[POD_B4, "80", "30"])
        .parse()
        .unwrap();
    apply(&topo.node.runner(), &topo.rules).unwrap();
    let s = STATS.snapshot();
    eprintln!(
        "latency: median connect {with_queue} us with the verdict queue, {without} us without \
         (added {} us); mean time in run_queue per packet {:?}; counters {s:?}",
        with_queue.saturating_sub(without),
        s.mean_latency().unwrap()
    );
    listener.drain();
    queue.stop().unwrap();
}

#[test]
fn fails_closed_without_a_reader_and_recovers() {
    require_root!();
    let _serial = serial();
    let topo = Topology::new();
    let listener = Listener::start(&topo.node, topo.rules.config.tcp_port);
    let decider = Arc::new(Decider::default());
    decider.set(Protocol::Tcp, 80, Action::Accept);

    let queue = QueueThread::start(&topo, &decider);
    assert_eq!(topo.tcp(POD_B4, 80, 2.0).result, "connected");
    assert!(listener.next(WAIT).is_some());

    // A second reader of the same queue is refused, and says what it needs.
    let stop = Arc::new(AtomicBool::new(false));
    let second = spawn_queue(&topo, &decider, &stop).join().unwrap();
    let err = second.expect_err("the queue is taken");
    assert!(
        matches!(err, verdict::Error::Bind { queue: 4242, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    assert_eq!(
        topo.tcp(POD_B4, 80, 2.0).result,
        "connected",
        "first reader unharmed"
    );
    assert!(listener.next(WAIT).is_some());

    // 6. Reader stopped: SYNs are dropped, nothing reaches the listener.
    let started = Instant::now();
    queue.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "stop is prompt"
    );
    for dst in [POD_B4, POD_B6] {
        assert_eq!(
            topo.tcp(dst, 80, 1.0).result,
            "timeout",
            "fail closed to {dst}"
        );
    }
    assert_eq!(listener.next(Duration::from_millis(100)), None);

    // Restarted: connections go through again at once.
    let calls_before = decider.calls.lock().unwrap().len();
    let _queue = QueueThread::start(&topo, &decider);
    let t = topo.tcp(POD_B4, 80, 2.0);
    assert_eq!(t.result, "connected", "{t:?}");
    assert!(t.ms < 2000);
    assert_eq!(listener.next(WAIT).map(|(l, _)| l), Some(sock(POD_B4, 80)));
    assert!(decider.calls.lock().unwrap().len() > calls_before);
}

#[test]
fn sctp_flows_are_queued() {
    require_root!();
    let _serial = serial();
    let kernel_sctp = std::path::Path::new("/proc/net/sctp").exists();
    eprintln!(
        "kernel SCTP {}: the SCTP flow is a raw INIT packet, checked at pod B with a raw socket",
        if kernel_sctp { "present" } else { "absent" }
    );
    let topo = Topology::new();
    let sniffer = Background::spawn(&topo.pod_b, SCTP_SNIFFER);
    assert_eq!(sniffer.next_line(WAIT).as_deref(), Some("ready"));
    let decider = Arc::new(Decider::default());
    decider.set(Protocol::Sctp, 3868, Action::Accept);
    decider.set(Protocol::Sctp, 3869, Action::Drop);
    let _queue = QueueThread::start(&topo, &decider);

    let init = |sport: u16, dport: u16| {
        let out = topo
            .pod_a
            .python(SCTP_INIT, &[POD_B4, &sport.to_string(), &dport.to_string()]);
        assert_eq!(out, "sent");
    };
    init(5000, 3868);
    assert_eq!(sniffer.next_line(WAIT).as_deref(), Some("sctp 5000 3868"));
    assert_eq!(
        decider.calls_to(sock(POD_B4, 3868)),
        [FlowKey {
            protocol: Protocol::Sctp,
            src: sock(POD_A4, 5000),
            dst: sock(POD_B4, 3868),
        }]
    );

    init(5001, 3869);
    assert_eq!(
        sniffer.next_line(Duration::from_millis(500)),
        None,
        "dropped"
    );
    assert_eq!(decider.calls_to(sock(POD_B4, 3869)).len(), 1);
}
