//! Root tests: apply, re-apply, reconcile and remove netward's rules inside
//! throwaway network namespaces, and check the rules' effect on real packets.
//!
//! Each test makes its own namespaces (`nwipt-<pid>-<n>`), removed on every exit
//! path by a guard. Without root they print why and pass. Addresses come from
//! 198.18.0.0/15 and fd00::/8 only; every wait is bounded.
#![allow(missing_docs, reason = "test crate")]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use netward_iptables::{
    CommandRunner, Config, Output, Ruleset, Runner, apply, installed_state, probe, remove,
    update_local,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

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
            eprintln!("skipping: needs root to create network namespaces");
            return;
        }
    };
}

/// A network namespace deleted on drop, panics included.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "nwipt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        host(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    fn runner(&self) -> CommandRunner {
        CommandRunner::new()
            .in_netns(&self.name)
            .with_timeout(Duration::from_secs(20))
    }

    /// Runs a shell snippet inside the namespace; it must succeed.
    fn sh(&self, script: &str) -> String {
        let out = self.runner().run("sh", &["-ec", script], None).unwrap();
        assert!(out.success(), "`{script}` in {} failed: {out:?}", self.name);
        out.stdout
    }

    /// Everything the kernel tools list: nft, both xtables families, rules and routes.
    fn listing(&self) -> String {
        let raw = self.sh("echo '## nft'; nft list ruleset; \
             echo '## iptables'; iptables-save; echo '## ip6tables'; ip6tables-save; \
             echo '## rules'; ip -4 rule; ip -6 rule; \
             echo '## routes'; ip -4 route show table all; ip -6 route show table all");
        // Drop iptables-save's timestamped comments.
        raw.lines()
            .filter(|l| !l.starts_with("# "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// [`Netns::listing`] without the empty, accept-policy builtin chains that
    /// iptables-nft creates on first use and, like `iptables -F`, never deletes.
    /// `iptables-save` always prints builtin chains, so only `nft list` shows them.
    fn listing_without_empty_builtins(&self) -> String {
        let listing = self.listing();
        let lines: Vec<&str> = listing.lines().filter(|l| !l.is_empty()).collect();
        let mut out = String::new();
        let mut i = 0;
        while i < lines.len() {
            let empty_base = lines[i].starts_with("\tchain ")
                && lines.get(i + 1).is_some_and(|l| {
                    l.starts_with("\t\ttype filter hook ") && l.ends_with("policy accept;")
                })
                && lines.get(i + 2) == Some(&"\t}");
            if empty_base {
                i += 3;
                continue;
            }
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn host(args: &[&str]) {
    let out = CommandRunner::new().run(args[0], &args[1..], None).unwrap();
    assert!(out.success(), "{args:?} failed: {out:?}");
}

fn nets(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

fn ruleset(addrs: &[&str]) -> Ruleset {
    let mut r = Ruleset::new(Config::default());
    r.set_local(nets(addrs));
    r
}

/// Rules that belong to someone else and must survive every netward operation.
const FOREIGN: &str = "
nft add table inet foreign
nft add chain inet foreign input '{ type filter hook input priority 0; policy accept; }'
nft add rule inet foreign input tcp dport 9 counter accept
for t in iptables ip6tables; do
  $t -N USER-CHAIN
  $t -A USER-CHAIN -p tcp --dport 7 -j ACCEPT
  $t -A INPUT -j USER-CHAIN
  $t -t mangle -A PREROUTING -j MARK --set-xmark 0x1/0x1
done
ip -4 rule add from 198.18.9.0/24 lookup 100 priority 100
ip -6 rule add from fd00:9::/64 lookup 100 priority 100
ip -4 route add 198.18.9.0/24 dev lo table 100
ip -6 route add fd00:9::/64 dev lo table 100
";

fn section<'a>(listing: &'a str, name: &str) -> &'a str {
    let start = listing.find(&format!("## {name}\n")).unwrap();
    let rest = &listing[start + name.len() + 4..];
    &rest[..rest.find("\n## ").map_or(rest.len(), |i| i + 1)]
}

#[test]
fn apply_reapply_reconcile_remove() {
    require_root!();
    let ns = Netns::new();
    ns.sh(FOREIGN);
    let runner = ns.runner();
    let cfg = Config::default();
    let before = ns.listing();
    let before_normalized = ns.listing_without_empty_builtins();
    assert!(installed_state(&runner, &cfg).unwrap().is_empty());

    // Apply: everything present, jumps first in their builtin chains, foreign rules kept.
    let r1 = ruleset(&["198.18.1.2", "198.18.2.2", "fd00:1::2"]);
    apply(&runner, &r1).unwrap();
    let l1 = ns.listing();
    let nft = section(&l1, "nft");
    for want in [
        "table inet netward",
        "elements = { 198.18.1.2, 198.18.2.2 }",
        "elements = { fd00:1::2 }",
        "type filter hook prerouting priority dstnat + 10; policy accept;",
        "ip saddr @local4",
        "tproxy ip to :15001",
        "tproxy ip6 to :15001",
        "socket transparent 1",
        "table inet foreign",
    ] {
        assert!(nft.contains(want), "nft lacks {want:?}:\n{nft}");
    }
    let v4 = section(&l1, "iptables");
    for want in [
        "-A INPUT -m comment --comment netward -j NETWARD-REJECT\n-A INPUT -j USER-CHAIN\n",
        "-A FORWARD -m comment --comment netward -j NETWARD-REJECT\n",
        "-A INPUT -m comment --comment netward -j NETWARD-INPUT\n",
        "-A FORWARD -m comment --comment netward -j NETWARD-FORWARD\n",
        "-A NETWARD-QUEUE -s 198.18.1.2/32 -j NFQUEUE --queue-num 4242\n",
        "-A NETWARD-REJECT -p tcp -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with tcp-reset\n",
        "-A USER-CHAIN -p tcp -m tcp --dport 7 -j ACCEPT\n",
    ] {
        assert!(v4.contains(want), "iptables-save lacks {want:?}:\n{v4}");
    }
    let v6 = section(&l1, "ip6tables");
    assert!(v6.contains("-A NETWARD-QUEUE -d fd00:1::2/128 -j NFQUEUE --queue-num 4242\n"));
    assert!(v6.contains("--reject-with icmp6-adm-prohibited"));
    let rules = section(&l1, "rules");
    assert_eq!(
        rules
            .matches("4242:\tfrom all fwmark 0x100000/0xf00000 lookup 4242")
            .count(),
        2
    );
    assert!(rules.contains("100:\tfrom 198.18.9.0/24 lookup 100"));
    let routes = section(&l1, "routes");
    assert!(routes.contains("local default dev lo table 4242 scope host"));
    assert!(routes.contains("local default dev lo table 4242 metric 1024"));
    let state = installed_state(&runner, &cfg).unwrap();
    assert!(state.nft.is_some() && !state.xtables_v4.is_empty() && !state.xtables_v6.is_empty());
    assert_eq!(
        state.ip_rules_v4,
        ["priority 4242 src all fwmark 0x100000/0xf00000 lookup 4242"]
    );
    assert_eq!(state.routes_v6, ["local default dev lo"]);

    // Re-apply: identical listings, and xtables and routing not even rewritten.
    let again = apply(&runner, &r1).unwrap();
    assert!(again.xtables_and_routing_unchanged(), "{again:?}");
    assert_eq!(ns.listing(), l1);

    // Reconcile pods: only the sets and the per-pod queue chain change.
    let r2 = ruleset(&["198.18.2.2", "198.18.3.2", "fd00:2::2"]);
    let changes = apply(&runner, &r2).unwrap();
    assert_eq!(changes.ip_rules + changes.routes, 0);
    let l2 = ns.listing();
    assert!(section(&l2, "nft").contains("elements = { 198.18.2.2, 198.18.3.2 }"));
    assert!(section(&l2, "nft").contains("elements = { fd00:2::2 }"));
    assert!(!l2.contains("198.18.1.2") && !l2.contains("fd00:1::2"));
    assert!(section(&l2, "iptables").contains("-A NETWARD-QUEUE -d 198.18.3.2/32"));
    let changed: Vec<&str> = diff(&l1, &l2);
    assert!(
        // `nft list` shows iptables-nft's compat NFQUEUE rules as `queue num`.
        changed.iter().all(|l| l.contains("elements")
            || l.contains("NETWARD-QUEUE -")
            || l.ends_with("queue num 4242")),
        "unexpected changes: {changed:#?}"
    );

    // The set-only path gives the same result as a full apply.
    let r3 = ruleset(&["198.18.4.2", "fd00:4::2"]);
    update_local(&runner, &r3).unwrap();
    let l3 = ns.listing();
    apply(&runner, &r3).unwrap();
    assert_eq!(ns.listing(), l3);

    // Stale state: duplicated and misplaced jumps, a stale rule and chain, a stray route.
    ns.sh(
        "iptables -A INPUT -m comment --comment netward -j NETWARD-REJECT
         iptables -t mangle -I INPUT 1 -p udp --dport 5 -j ACCEPT
         iptables -t mangle -N NETWARD-OLD
         iptables -t mangle -A NETWARD-OLD -j ACCEPT
         ip6tables -t mangle -D FORWARD -m comment --comment netward -j NETWARD-FORWARD
         ip -4 rule add fwmark 0x1 lookup 4242 priority 4000
         ip -6 rule add fwmark 0x100000/0xf00000 lookup 4242 priority 4243
         ip -4 route add 198.18.9.0/24 dev lo table 4242",
    );
    let fixed = apply(&runner, &r3).unwrap();
    assert_eq!(fixed.xtables.len(), 2, "{fixed:?}");
    let l4 = ns.listing();
    let without_foreign: String = l4
        .lines()
        .filter(|l| !l.contains("dport 5"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        without_foreign, l3,
        "all stale state is gone, in the same order"
    );
    let mangle_input: Vec<&str> = section(&l4, "iptables")
        .lines()
        .filter(|l| l.starts_with("-A INPUT"))
        .collect();
    assert_eq!(
        mangle_input[0],
        "-A INPUT -m comment --comment netward -j NETWARD-INPUT"
    );
    ns.sh("iptables -t mangle -D INPUT -p udp --dport 5 -j ACCEPT");

    // Remove: exactly the listing from before, twice.
    let removed = remove(&runner, &cfg).unwrap();
    assert!(removed.nft && removed.xtables.len() == 2, "{removed:?}");
    let after = ns.listing();
    assert_eq!(section(&after, "iptables"), section(&before, "iptables"));
    assert_eq!(section(&after, "ip6tables"), section(&before, "ip6tables"));
    assert_eq!(section(&after, "rules"), section(&before, "rules"));
    assert_eq!(section(&after, "routes"), section(&before, "routes"));
    assert_eq!(ns.listing_without_empty_builtins(), before_normalized);
    assert!(installed_state(&runner, &cfg).unwrap().is_empty());
    assert_eq!(remove(&runner, &cfg).unwrap(), Default::default());
    assert_eq!(ns.listing(), after, "a second remove changes nothing");
}

/// Lines of `b` that are not in `a`, and lines of `a` that are not in `b`.
fn diff<'a>(a: &'a str, b: &'a str) -> Vec<&'a str> {
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out: Vec<&str> = bl.iter().filter(|l| !al.contains(l)).copied().collect();
    out.extend(al.iter().filter(|l| !bl.contains(l)).copied());
    out
}

#[test]
fn remove_in_a_fresh_namespace_changes_nothing() {
    require_root!();
    let ns = Netns::new();
    let runner = ns.runner();
    let before = ns.listing();
    assert_eq!(
        remove(&runner, &Config::default()).unwrap(),
        Default::default()
    );
    assert_eq!(ns.listing(), before);
    let state = installed_state(&runner, &Config::default()).unwrap();
    assert!(state.is_empty(), "{state}");
}

#[test]
fn probe_finds_what_the_rules_need() {
    require_root!();
    let ns = Netns::new();
    let runner = ns.runner();
    let f = probe(&runner, &Config::default());
    eprintln!("features: {f}");
    assert!(f.nft_tproxy && f.nft_socket && f.xt_nfqueue, "{f}");
    assert!(
        installed_state(&runner, &Config::default())
            .unwrap()
            .is_empty()
    );
}

/// A transparent listener on the tproxy port (IPv4 and IPv6) that prints
/// `accepted <local addr> <local port> <peer addr>` per connection.
const LISTENER: &str = r#"
import select, socket, sys
port = int(sys.argv[1])
socks = []
for fam, any_addr, level, opt in ((socket.AF_INET, "0.0.0.0", socket.SOL_IP, 19),
                                  (socket.AF_INET6, "::", socket.IPPROTO_IPV6, 75)):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(level, opt, 1)  # IP_TRANSPARENT / IPV6_TRANSPARENT
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((any_addr, port))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 60)
    if not ready:
        break
    for s in ready:
        c, peer = s.accept()
        local = c.getsockname()
        print("accepted", local[0], local[1], peer[0], flush=True)
        c.close()
"#;

/// Connects once with a bounded timeout and prints `connected`, `refused` or `timeout`.
const CLIENT: &str = r#"
import socket, sys
dst, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    s.connect((dst, port))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"#;

/// A child process killed and reaped on drop; its stdout lines arrive on a channel.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    fn spawn(netns: &Netns, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .args(args)
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

/// A node namespace with two pod namespaces on veth pairs:
/// pod A 198.18.1.2 / fd00:1::2 and pod B 198.18.2.2 / fd00:2::2, routed by the node.
struct Topology {
    node: Netns,
    pod_a: Netns,
    pod_b: Netns,
}

const POD_A4: &str = "198.18.1.2";
const POD_B4: &str = "198.18.2.2";
const POD_A6: &str = "fd00:1::2";
const POD_B6: &str = "fd00:2::2";

impl Topology {
    fn new() -> Self {
        let (node, pod_a, pod_b) = (Netns::new(), Netns::new(), Netns::new());
        for ns in [&node, &pod_a, &pod_b] {
            // No duplicate address detection: addresses are usable at once.
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
        Self { node, pod_a, pod_b }
    }

    /// Connects from pod A to `dst:8080` with a one-second timeout.
    fn connect_from_a(&self, dst: &str) -> String {
        let out: Output = self
            .pod_a
            .runner()
            .run("python3", &["-c", CLIENT, dst, "8080", "1.0"], None)
            .unwrap();
        assert!(out.success(), "client failed: {out:?}");
        out.stdout.trim().to_string()
    }
}

#[test]
fn tproxy_diverts_after_routing_and_the_queue_fails_closed() {
    require_root!();
    let topo = Topology::new();
    let runner = topo.node.runner();
    let wait = Duration::from_secs(3);
    let listener = Background::spawn(&topo.node, &["python3", "-c", LISTENER, "15001"]);
    assert_eq!(listener.next_line(wait).as_deref(), Some("ready"));

    // No rules: pod B is reachable and nothing listens on 8080, so B resets.
    for dst in [POD_B4, POD_B6] {
        assert_eq!(topo.connect_from_a(dst), "refused", "baseline to {dst}");
    }

    // Rules with the verdict queue and no queue reader: the SYN is queued and
    // dropped, so the connection times out (fail closed) and never reaches the proxy.
    let mut r = ruleset(&[POD_A4, POD_B4, POD_A6, POD_B6]);
    apply(&runner, &r).unwrap();
    for dst in [POD_B4, POD_B6] {
        assert_eq!(topo.connect_from_a(dst), "timeout", "fail closed to {dst}");
    }
    assert_eq!(listener.next_line(Duration::from_millis(200)), None);

    // Without the queue the SYN reaches the transparent listener, whose socket
    // carries pod B's address as its local address.
    r.config.verdict_queue = false;
    apply(&runner, &r).unwrap();
    for (dst, want) in [
        (POD_B4, format!("accepted {POD_B4} 8080 {POD_A4}")),
        (POD_B6, format!("accepted {POD_B6} 8080 {POD_A6}")),
    ] {
        assert_eq!(topo.connect_from_a(dst), "connected", "diverted to {dst}");
        assert_eq!(listener.next_line(wait), Some(want));
    }

    // Service traffic: a kube-proxy style DNAT in nat PREROUTING (priority dstnat)
    // runs before netward's chain, so the proxy sees the backend, not the VIP.
    topo.node.sh(&format!(
        "iptables -t nat -A PREROUTING -d 198.18.100.1 -p tcp --dport 8080 -j DNAT --to-destination {POD_B4}:8080"
    ));
    assert_eq!(topo.connect_from_a("198.18.100.1"), "connected");
    assert_eq!(
        listener.next_line(wait),
        Some(format!("accepted {POD_B4} 8080 {POD_A4}"))
    );

    // Ingress: with only pod B local, A -> B is still diverted (destination match).
    r.set_local(nets(&[POD_B4, POD_B6]));
    update_local(&runner, &r).unwrap();
    assert_eq!(topo.connect_from_a(POD_B4), "connected");
    assert_eq!(
        listener.next_line(wait),
        Some(format!("accepted {POD_B4} 8080 {POD_A4}"))
    );

    // Neither pod local: nothing is diverted, B answers itself again.
    r.set_local(Vec::<std::net::IpAddr>::new());
    update_local(&runner, &r).unwrap();
    assert_eq!(topo.connect_from_a(POD_B4), "refused");

    remove(&runner, &r.config).unwrap();
    assert_eq!(topo.connect_from_a(POD_B6), "refused");
    assert_eq!(listener.next_line(Duration::from_millis(200)), None);
}

/// A minimal NFQUEUE reader over raw netlink: binds queue `argv[1]`, accepts every
/// packet and sets its mark to `argv[2]` when non-zero (the proxy's REJECT verdict).
const QUEUE_READER: &str = r#"
import socket, struct, sys
queue, mark = int(sys.argv[1]), int(sys.argv[2], 0)
CFG, VERDICT, PACKET = (3 << 8) | 2, (3 << 8) | 1, (3 << 8) | 0
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)
def send(kind, flags, body):
    nfgen = struct.pack("=BBH", 0, 0, socket.htons(queue))
    s.send(struct.pack("=IHHII", 20 + len(body), kind, flags, 0, 0) + nfgen + body)
send(CFG, 1 | 4, attr(1, struct.pack("=BBH", 1, 0, 0)))   # NFQNL_CFG_CMD_BIND
send(CFG, 1 | 4, attr(2, struct.pack(">IB", 0xffff, 1)))  # NFQNL_COPY_META
for _ in range(2):
    data = s.recv(65536)
    kind, = struct.unpack_from("=H", data, 4)
    err, = struct.unpack_from("=i", data, 16)
    if kind == 2 and err != 0:
        print("bind failed", err, flush=True)
        sys.exit(1)
print("ready", flush=True)
while True:
    data = s.recv(65536)
    off = 0
    while off < len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == PACKET:
            a, packet_id = off + 20, None
            while a < off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == 1:  # NFQA_PACKET_HDR
                    packet_id, = struct.unpack_from(">I", data, a + 4)
                a += (alen + 3) & ~3
            body = attr(2, struct.pack(">II", 1, packet_id))  # NF_ACCEPT
            if mark:
                body += attr(3, struct.pack(">I", mark))     # NFQA_MARK
            send(VERDICT, 1, body)
            print("verdict", packet_id, flush=True)
        off += (length + 3) & ~3
"#;

/// A UDP echo server on port 8080, IPv4 and IPv6.
const UDP_ECHO: &str = r#"
import select, socket
socks = []
for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((any_addr, 8080))
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

/// Sends one datagram to `dst:8080` and prints `echo`, `refused` or `timeout`.
const UDP_CLIENT: &str = r#"
import socket, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((dst, 8080))
try:
    s.send(b"ping")
    print("echo" if s.recv(16) == b"ping" else "garbled")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"#;

impl Topology {
    fn udp_from_a(&self, dst: &str) -> String {
        let out = self
            .pod_a
            .runner()
            .run("python3", &["-c", UDP_CLIENT, dst], None)
            .unwrap();
        assert!(out.success(), "udp client failed: {out:?}");
        out.stdout.trim().to_string()
    }
}

#[test]
fn queue_verdicts_accept_or_reject_tcp_and_udp() {
    require_root!();
    let topo = Topology::new();
    let runner = topo.node.runner();
    let wait = Duration::from_secs(3);
    let listener = Background::spawn(&topo.node, &["python3", "-c", LISTENER, "15001"]);
    assert_eq!(listener.next_line(wait).as_deref(), Some("ready"));
    let echo = Background::spawn(&topo.pod_b, &["python3", "-c", UDP_ECHO]);
    assert_eq!(echo.next_line(wait).as_deref(), Some("ready"));
    for dst in [POD_B4, POD_B6] {
        assert_eq!(topo.udp_from_a(dst), "echo", "baseline udp to {dst}");
    }

    let r = ruleset(&[POD_A4, POD_B4, POD_A6, POD_B6]);
    apply(&runner, &r).unwrap();
    let queue = r.config.queue_num.to_string();

    // No reader: new UDP flows of local pods are queued and dropped too.
    for dst in [POD_B4, POD_B6] {
        assert_eq!(topo.udp_from_a(dst), "timeout", "udp fail closed to {dst}");
    }

    // A reader that accepts: TCP reaches the proxy, UDP is forwarded to pod B.
    {
        let reader = Background::spawn(&topo.node, &["python3", "-c", QUEUE_READER, &queue, "0"]);
        assert_eq!(reader.next_line(wait).as_deref(), Some("ready"));
        for (dst, src) in [(POD_B4, POD_A4), (POD_B6, POD_A6)] {
            assert_eq!(
                topo.connect_from_a(dst),
                "connected",
                "accepted tcp to {dst}"
            );
            assert_eq!(
                listener.next_line(wait),
                Some(format!("accepted {dst} 8080 {src}"))
            );
            assert_eq!(topo.udp_from_a(dst), "echo", "accepted udp to {dst}");
        }
        assert!(
            reader
                .next_line(wait)
                .is_some_and(|l| l.starts_with("verdict"))
        );
    }

    // A reader that accepts with the REJECT mark: TCP gets a reset, UDP an ICMP error.
    {
        let reject = format!("{:#x}", r.config.marks.reject);
        let reader = Background::spawn(
            &topo.node,
            &["python3", "-c", QUEUE_READER, &queue, &reject],
        );
        assert_eq!(reader.next_line(wait).as_deref(), Some("ready"));
        for dst in [POD_B4, POD_B6] {
            assert_eq!(topo.connect_from_a(dst), "refused", "rejected tcp to {dst}");
            assert_eq!(topo.udp_from_a(dst), "refused", "rejected udp to {dst}");
        }
        assert_eq!(listener.next_line(Duration::from_millis(200)), None);
    }
}
