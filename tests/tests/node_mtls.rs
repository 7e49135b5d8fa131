//! `netward node --mtls` end to end (issue #9 items 2 and 3): two node agents in a
//! two-node lab against the fake Kubernetes API server (served from node A's namespace
//! on its node IP, so both nodes reach it), with `netward signer` running in-process.
//! Each node gets its certificate through a CSR, advertises its tunnel with a Lease,
//! carries a cross-node connection into a `strict` namespace through the tunnel, and
//! withdraws its Lease on SIGTERM. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use netward_controller::Cluster;
use netward_controller::kube::fake::{FakeApi, UserInfo};
use netward_controller::kube::{self as source, SyncStatus};
use netward_e2e::{Lab, Netward, PROBE, root};
use netward_proxy::lab::netns::Netns;
use netward_proxy::lab::probe::Outcome;
use netward_proxy::lab::topology;
use netward_proxy::mtls::signer::{self, SignerConfig, SignerStatus};
use serde_json::json;

const NS: &str = "netward-system";

/// Namespace `x` (strict) with a client on node-a and a server on node-b.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {netward.io/mtls: strict}}
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
"#;

/// Port 81 of x/server is closed by policy.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{ports: [{port: 80}]}]
"#;

fn pod_json(p: &netward_controller::model::Pod) -> Pod {
    let ips: Vec<_> = p
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let ports: Vec<_> = p
        .ports
        .iter()
        .map(|cp| json!({"name": cp.name, "containerPort": cp.port, "protocol": cp.protocol.as_str()}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {"nodeName": p.node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
        "status": {"phase": "Running", "podIP": p.ips.first().map(ToString::to_string), "podIPs": ips}
    }))
    .unwrap()
}

/// The lab's cluster (with its addresses and Nodes) in the fake API server.
fn load(fake: &FakeApi, cluster: &Cluster) {
    for n in cluster.namespaces.values() {
        let labels: serde_json::Map<String, serde_json::Value> = n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        fake.apply::<Namespace>(
            &serde_json::from_value(json!({"metadata": {"name": n.name, "labels": labels}}))
                .unwrap(),
        );
    }
    for n in topology::node_objects(cluster) {
        let addrs: Vec<_> = n
            .ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        fake.apply::<Node>(
            &serde_json::from_value(
                json!({"metadata": {"name": n.name}, "spec": {"podCIDRs": n.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()}, "status": {"addresses": addrs}}),
            )
            .unwrap(),
        );
    }
    let pods: Vec<Pod> = cluster.pods.values().map(pod_json).collect();
    fake.apply_all(&pods);
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_yaml::from_str(POLICY).unwrap();
    fake.apply(&policy);
}

/// The fake API server in node A's namespace on its node IP; stopped on drop.
struct Api {
    fake: FakeApi,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<Option<std::io::Result<()>>>>,
    dir: tempfile::TempDir,
}

impl Api {
    fn start(ns: &Netns, ip: IpAddr, fake: FakeApi) -> Api {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = fake.clone();
        let thread = ns
            .spawn(move || {
                server.serve_blocking(SocketAddr::new(ip, 0), |a| {
                    let _ = tx.send(a);
                })
            })
            .unwrap();
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Api {
            fake,
            addr,
            thread: Some(thread),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubeconfig for `user`, authenticated by a token of its own.
    fn kubeconfig(&self, token: &str, user: UserInfo) -> PathBuf {
        self.fake.add_user(token, user);
        let path = self.dir.path().join(format!("{token}.kubeconfig"));
        std::fs::write(&path, FakeApi::kubeconfig_with_token(self.addr, token)).unwrap();
        path
    }

    /// netward's service account, bound to its pod on `node`.
    fn node_kubeconfig(&self, node: &str) -> PathBuf {
        let user = UserInfo::service_account(
            NS,
            "netward",
            Some((&format!("netward-{node}"), &format!("uid-{node}"))),
            Some(node),
        );
        self.kubeconfig(&format!("node-{node}"), user)
    }

    fn lease(&self, node: &str) -> Option<Lease> {
        self.fake.get(NS, &format!("netward-tunnel-{node}"))
    }

    fn approved_csrs(&self, node: &str) -> usize {
        self.fake
            .list_all::<CertificateSigningRequest>()
            .into_iter()
            .filter(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("netward-node-{node}-")))
                    && c.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Approved"))
                    && c.status.as_ref().is_some_and(|s| s.certificate.is_some())
            })
            .count()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.fake.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `netward signer` in a thread of node A's namespace; stopped on drop.
struct Signer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
    status: Arc<SignerStatus>,
}

impl Signer {
    fn start(ns: &Netns, kubeconfig: PathBuf) -> Signer {
        let status = Arc::new(SignerStatus::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = status.clone();
        let thread = ns
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = source::client(Some(&kubeconfig), &Arc::new(SyncStatus::new()))
                        .await
                        .unwrap();
                    let cfg = SignerConfig {
                        holder: "signer-test".to_owned(),
                        lease_duration: Duration::from_secs(2),
                        renew_every: Duration::from_millis(250),
                        resync_every: Duration::from_secs(1),
                        ..SignerConfig::default()
                    };
                    let r = signer::run(client, cfg, st, async move {
                        let _ = stopped.await;
                    })
                    .await;
                    if let Err(e) = r {
                        eprintln!("signer: {e}");
                    }
                });
            })
            .unwrap();
        Signer {
            stop: Some(stop),
            thread: Some(thread),
            status,
        }
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_node(lab: &Lab, i: usize, kubeconfig: &Path, identity: &Path, extra: &[&str]) -> Netward {
    let n = &lab.topo.nodes[i];
    let mut args = vec![
        "node",
        "--node-name",
        &n.name,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--mtls",
        "--identity-dir",
        identity.to_str().unwrap(),
        "--cert-wait-secs",
        "20",
        "--audit-log",
        "-",
        "--drain-grace-secs",
        "1",
        "--cleanup-on-exit",
    ];
    args.extend(extra);
    let mut nw = Netward::start(&n.ns, &args);
    nw.wait_for("mTLS tunnel listener up", Duration::from_secs(10));
    nw
}

fn tunnel_addr(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get("netward.io/tunnel-addr")
        .cloned()
}

#[test]
fn node_agents_get_certificates_advertise_leases_and_tunnel_cross_node_traffic() {
    if !root() {
        return;
    }
    let lab = Lab::build_with_ports(&[("00.yaml", CLUSTER), ("10.yaml", POLICY)], false, &[]);
    let ip = |i: usize| IpAddr::V4(lab.topo.nodes[i].ip4);
    let fake = FakeApi::new();
    load(&fake, &lab.cluster);
    let api = Api::start(&lab.topo.nodes[0].ns, ip(0), fake);
    let signer_kc = api.kubeconfig(
        "signer",
        UserInfo::service_account(NS, "netward-signer", None, None),
    );
    let signer = Signer::start(&lab.topo.nodes[0].ns, signer_kc);
    eventually("the signer to lead", Duration::from_secs(20), || {
        signer.status.is_leader()
    });

    let ids = tempfile::tempdir().unwrap();
    let (kc_a, kc_b) = (api.node_kubeconfig("node-a"), api.node_kubeconfig("node-b"));
    // Node A is given its IP (NODE_IP, as the DaemonSet does); node B finds it in its
    // Node object's InternalIP.
    let node_ip_a = ip(0).to_string();
    let a = start_node(
        &lab,
        0,
        &kc_a,
        &ids.path().join("a"),
        &["--node-ip", &node_ip_a],
    );
    let mut b = start_node(&lab, 1, &kc_b, &ids.path().join("b"), &[]);

    // Each node's certificate came through an approved CSR.
    assert!(api.approved_csrs("node-a") >= 1, "node-a's CSR");
    assert!(api.approved_csrs("node-b") >= 1, "node-b's CSR");
    for (dir, node) in [("a", "node-a"), ("b", "node-b")] {
        let id = netward_proxy::mtls::identity::TlsIdentity::load(
            &ids.path().join(dir),
            "cluster.local",
            node,
        )
        .unwrap();
        assert_eq!(id.node(), node);
    }

    // Both advertise their tunnel on their node IP.
    for (i, node) in [(0, "node-a"), (1, "node-b")] {
        eventually(&format!("{node}'s lease"), Duration::from_secs(10), || {
            api.lease(node).is_some()
        });
        let lease = api.lease(node).unwrap();
        assert_eq!(
            tunnel_addr(&lease).as_deref(),
            Some(SocketAddr::new(ip(i), 15008).to_string().as_str())
        );
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(node));
        assert_eq!(spec.lease_duration_seconds, Some(30));
    }

    // Cross-node into the strict namespace: through the tunnel. The peers feed follows
    // the Leases; allow it a moment.
    let start = Instant::now();
    loop {
        let (o, _) = lab.http_get("x/client", "x/server", 80, false, PROBE);
        if o == Outcome::Ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "x/client -> x/server:80: {o:?}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Still closed by policy.
    let (o, _) = lab.connect("x/client", "x/server", 81, false, PROBE);
    assert_eq!(o, Outcome::Timeout, "port 81");
    let deadline = Instant::now() + Duration::from_secs(5);
    let close = loop {
        let close: Vec<String> = b
            .log()
            .lines()
            .filter(|l| l.starts_with('{') && l.contains("\"event\":\"close\""))
            .map(str::to_owned)
            .collect();
        if !close.is_empty() || Instant::now() > deadline {
            break close;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        close
            .iter()
            .any(|l| l.contains("\"mtls\":true") && l.contains("\"peer_node\":\"node-a\"")),
        "node B's close records: {close:#?}\n{}",
        b.log()
    );

    // SIGTERM of node B: its Lease is withdrawn.
    assert!(b.stop(), "node B exits cleanly:\n{}", b.log());
    eventually("node-b's lease to go", Duration::from_secs(5), || {
        api.lease("node-b").is_none()
    });
    assert!(api.lease("node-a").is_some(), "node A still advertises");
    drop(a);
    drop(signer);
    drop(api);
}

#[test]
fn node_without_a_signer_enforces_without_the_tunnel() {
    if !root() {
        return;
    }
    let lab = Lab::build_with_ports(&[("00.yaml", CLUSTER), ("10.yaml", POLICY)], false, &[]);
    let ip = IpAddr::V4(lab.topo.nodes[0].ip4);
    let fake = FakeApi::new();
    load(&fake, &lab.cluster);
    let api = Api::start(&lab.topo.nodes[0].ns, ip, fake);
    let kc = api.node_kubeconfig("node-a");
    let ids = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let node_ip = ip.to_string();
    let a = Netward::start(
        &lab.topo.nodes[0].ns,
        &[
            "node",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--mtls",
            "--node-ip",
            &node_ip,
            "--identity-dir",
            ids.path().to_str().unwrap(),
            "--cert-wait-secs",
            "2",
            "--drain-grace-secs",
            "1",
            "--cleanup-on-exit",
        ],
    );
    // Enforcing within the bounded wait, with the error said, and nothing advertised.
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    let log = a.log();
    assert!(
        log.contains("mTLS unavailable: enforcing without the tunnel"),
        "{log}"
    );
    assert!(!log.contains("mTLS tunnel listener up"), "{log}");
    assert!(api.lease("node-a").is_none());
    // The node enforces: port 81 of the server stays closed from node A's own pod.
    let (o, _) = lab.connect("x/client", "x/server", 81, false, PROBE);
    assert_eq!(o, Outcome::Timeout, "port 81");
    drop(a);
}
