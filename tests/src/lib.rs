//! The end-to-end harness: a lab topology in network namespaces, the real `netward`
//! binary running in a node namespace, and real clients in pod namespaces.
//!
//! Tests need root; without it they print why and pass vacuously (CI runs as root).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a panic is a test failure

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netward_controller::{Cluster, Manifests};
use netward_proxy::lab::netns::{self, Netns};
use netward_proxy::lab::probe::{self, Outcome};
use netward_proxy::lab::servers::{PodServers, Ports};
use netward_proxy::lab::topology::{self, ExternalSpec, Topology};

/// Whether the process can build namespaces; tests skip (with a message) otherwise.
pub fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        netns::sweep_stale();
        true
    } else {
        eprintln!("skipped: needs root (network namespaces, nftables, iptables)");
        false
    }
}

/// The `netward` binary: `$NETWARD_BIN`, or `target/<profile>/netward` next to the test binary.
pub fn netward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("netward");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p netward-proxy)",
        bin.display()
    );
    bin
}

/// A scenario: its manifests (in a temp dir the test may edit), the cluster, and the lab.
pub struct Lab {
    /// The manifests netward reads.
    pub dir: tempfile::TempDir,
    /// The cluster as read (with addresses assigned).
    pub cluster: Cluster,
    /// The pods' servers (stopped on drop, before the namespaces go).
    pub servers: Vec<PodServers>,
    /// The namespaces. Declared last: dropped after the servers.
    pub topo: Topology,
}

impl Lab {
    /// Builds a one-node lab from YAML documents (each written to its own file, in order).
    pub fn single_node(docs: &[(&str, &str)]) -> Lab {
        Lab::build(docs, true)
    }

    /// Builds a lab from YAML documents, keeping `spec.nodeName` (several nodes) unless `single`.
    pub fn build(docs: &[(&str, &str)], single: bool) -> Lab {
        Lab::build_with_ports(docs, single, &[])
    }

    /// [`Lab::build`], with extra ports served: `(pod key or external IP, TCP?, port)`.
    pub fn build_with_ports(
        docs: &[(&str, &str)],
        single: bool,
        extra: &[(String, bool, u16)],
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in docs {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let m = Manifests::read_paths(&[dir.path()]);
        assert!(m.errors.is_empty(), "{:#?}", m.errors);
        let mut cluster = m.cluster;
        if single {
            for p in cluster.pods.values_mut() {
                p.node = Some("node-a".into());
            }
        }
        topology::assign_addresses(&mut cluster);
        let externals: Vec<ExternalSpec> = m
            .netward
            .iter()
            .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("ExternalHosts"))
            .flat_map(|v| {
                serde_yaml::from_value::<Vec<ExternalSpec>>(v["spec"]["hosts"].clone()).unwrap()
            })
            .collect();
        let topo = Topology::build(&cluster, &externals).unwrap();
        // The nodes' addresses, for the engine (traffic from a pod's own node).
        let nodes: String = topology::node_objects(&cluster)
            .iter()
            .map(|n| {
                let ips: Vec<String> = n.ips.iter().map(|ip| format!("{{type: InternalIP, address: \"{ip}\"}}")).collect();
                let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| format!("\"{c}\"")).collect();
                format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDRs: [{}]}}\nstatus: {{addresses: [{}]}}\n", n.name, cidrs.join(", "), ips.join(", "))
            })
            .collect();
        std::fs::write(dir.path().join("zz-nodes.yaml"), nodes).unwrap();
        let mut servers = Vec::new();
        for pod in cluster.pods.values() {
            let Some(lp) = topo.pods.get(&pod.key()) else {
                continue;
            };
            let mut ports = Ports::default();
            for cp in &pod.ports {
                match cp.protocol {
                    netward_controller::Protocol::Tcp => ports.tcp.push(cp.port),
                    netward_controller::Protocol::Udp => ports.udp.push(cp.port),
                    netward_controller::Protocol::Sctp | netward_controller::Protocol::Other(_) => {
                    }
                }
            }
            for (key, tcp, port) in extra {
                if *key == pod.key() {
                    if *tcp {
                        ports.tcp.push(*port)
                    } else {
                        ports.udp.push(*port)
                    }
                }
            }
            for list in [&mut ports.tcp, &mut ports.udp] {
                list.sort_unstable();
                list.dedup();
            }
            servers.push(PodServers::start(&lp.ns, &pod.key(), &ports).unwrap());
        }
        for ext in &topo.externals {
            let mut ports = Ports {
                tcp: ext.spec.ports.clone(),
                udp: vec![53],
            };
            for (key, tcp, port) in extra {
                if ext.spec.ips.iter().any(|ip| ip.to_string() == *key) && *tcp {
                    ports.tcp.push(*port);
                }
            }
            ports.tcp.sort_unstable();
            ports.tcp.dedup();
            servers.push(PodServers::start(&ext.ns, &ext.spec.name, &ports).unwrap());
        }
        Lab {
            dir,
            cluster,
            servers,
            topo,
        }
    }

    /// The namespace of a pod (`ns/name`).
    pub fn pod(&self, key: &str) -> &Netns {
        &self
            .topo
            .pods
            .get(key)
            .unwrap_or_else(|| panic!("no pod {key}"))
            .ns
    }

    /// A pod's address in one family.
    pub fn ip(&self, key: &str, v6: bool) -> IpAddr {
        if let Ok(ip) = key.parse() {
            return ip;
        }
        *self.topo.pods[key]
            .ips
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .unwrap()
    }

    /// The node namespace (the first node by default).
    pub fn node(&self) -> &Netns {
        &self.topo.nodes[0].ns
    }

    /// A TCP connect from a pod to `to` (a pod key or an IP) on `port`.
    pub fn connect(
        &self,
        from: &str,
        to: &str,
        port: u16,
        v6: bool,
        timeout: Duration,
    ) -> (Outcome, Duration) {
        let dst = SocketAddr::new(self.ip(to, v6), port);
        self.pod(from)
            .run(move || probe::tcp_connect(dst, timeout))
            .unwrap()
    }

    /// An HTTP GET from a pod.
    pub fn http_get(
        &self,
        from: &str,
        to: &str,
        port: u16,
        v6: bool,
        timeout: Duration,
    ) -> (Outcome, String) {
        let dst = SocketAddr::new(self.ip(to, v6), port);
        self.pod(from)
            .run(move || probe::http_get(dst, timeout))
            .unwrap()
    }

    /// A UDP request and response from a pod.
    pub fn udp(&self, from: &str, to: &str, port: u16, v6: bool, timeout: Duration) -> Outcome {
        let dst = SocketAddr::new(self.ip(to, v6), port);
        self.pod(from)
            .run(move || probe::udp_exchange(dst, timeout))
            .unwrap()
    }

    /// Starts `netward run` on a node of this lab.
    pub fn start_netward(&self, node: usize, extra: &[&str]) -> Netward {
        self.start_netward_in(node, self.dir.path(), extra)
    }

    /// Starts `netward run` on a node, reading the manifests in `dir` (a node with its
    /// own, possibly stale, view of the cluster).
    pub fn start_netward_in(&self, node: usize, dir: &Path, extra: &[&str]) -> Netward {
        let n = &self.topo.nodes[node];
        let mut args = vec![
            "run",
            "--manifests",
            dir.to_str().unwrap(),
            "--reload-ms",
            "100",
        ];
        if self.topo.nodes.len() > 1 {
            args.extend(["--node", &n.name]);
        }
        args.extend(extra);
        Netward::start(&n.ns, &args)
    }
}

/// A running `netward` process in a namespace; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Netward {
    child: Option<Child>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Netward {
    /// Starts `netward ARGS` in `ns` and waits (at most 15 s) until its datapath is ready.
    pub fn start(ns: &Netns, args: &[&str]) -> Netward {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("netward.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(netward_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut nw = Netward {
            child: Some(child),
            log,
            _logdir: logdir,
        };
        nw.wait_for("datapath ready", Duration::from_secs(15));
        nw
    }

    /// The log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` (panics with the log after `limit`).
    pub fn wait_for(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(needle) {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "netward exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "netward did not log {needle:?} within {limit:?}:\n{}",
            self.log()
        );
    }

    /// Counts the log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// SIGTERM, then waits (at most 10 s) for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL: a crash. The rules stay behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netward {
    fn drop(&mut self) {
        if self.child.is_some() && !self.stop() {
            eprintln!("netward did not stop cleanly; its log:\n{}", self.log());
        }
    }
}

/// Everything the kernel lists about rules and routes in a namespace: nft ruleset,
/// iptables-save and ip6tables-save (without counters), ip rules and routes.
pub fn kernel_state(ns: &Netns) -> String {
    let mut out = String::new();
    for cmd in [
        "nft list ruleset",
        "iptables-save",
        "ip6tables-save",
        "ip rule show",
        "ip -6 rule show",
        "ip route show table all",
        "ip -6 route show table all",
    ] {
        let text = ns.sh(cmd).unwrap_or_default();
        out.push_str(&format!("## {cmd}\n"));
        for line in text.lines() {
            // Comments carry timestamps; empty builtin chains are created by the first
            // iptables-nft call and are not netward's to delete.
            if line.starts_with('#') {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The files of a bundled example, in order: `(file name, text)`.
pub fn example(name: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "expect.yaml")
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

pub use netward_proxy::lab::expect::Expect;

/// The expectations of a bundled example.
pub fn expectations(name: &str) -> Vec<Expect> {
    expectations_at(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name),
    )
}

/// The expectations of a scenario directory (the `Expectations` in its `expect.yaml`).
pub fn expectations_at(dir: &Path) -> Vec<Expect> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(dir.join("expect.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| doc["kind"].as_str() == Some("Expectations"))
        .flat_map(|doc| {
            serde_yaml::from_value::<Vec<Expect>>(doc["spec"]["expect"].clone()).unwrap()
        })
        .collect()
}

/// `GET path` on a node's admin server (`127.0.0.1:port` inside `ns`): `(status, body)`,
/// `None` if nothing answers within a few seconds.
pub fn admin_get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let path = path.to_owned();
    ns.run(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    })
    .unwrap()
}

/// Waits (polling every 50 ms) until `f` holds; panics naming `what` after `limit`.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// The standard probe timeout: long enough for a verdict, short enough for many probes.
pub const PROBE: Duration = Duration::from_millis(1500);

/// Two nodes: `x/client` on node-a, `x/server` (ports 80, 81) on node-b, and a Service.
pub const TWO_NODES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 198.18.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 81}]}]}
status: {podIPs: [{ip: 198.18.2.10}, {ip: "fd00::2:10"}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: x}
spec:
  selector: {app: server}
  clusterIPs: [198.19.0.50, "fd00::ffff:0:50"]
  ports: [{port: 8080, targetPort: 80}]
"#;

/// `x/server` admits port 80 only.
pub const SERVER_ONLY_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-80, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{ports: [{port: 80}]}]
"#;
