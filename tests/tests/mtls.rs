//! The mTLS tunnel between node proxies (issue #9), in the two-node lab: the matrix is
//! unchanged under `strict`, nothing crosses the wire in clear, identity failures are
//! refused and audited, and a certificate rotation leaves a long transfer intact.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use netward_e2e::{Lab, Netward, PROBE, netward_bin, root};
use netward_proxy::lab::probe::Outcome;
use netward_proxy::mtls::identity::{self, IssueOptions, TlsIdentity};
use netward_proxy::mtls::tunnel::{OpenError, StreamRequest, TunnelClient, TunnelConfig};

const TD: &str = identity::DEFAULT_TRUST_DOMAIN;
const TUNNEL_PORT: u16 = 15008;
const MARKER: &str = "netward-mtls-marker-7f3a9c";

/// Namespace `x` (strict) with a client on node-a, a server on node-b; `open` (no mTLS
/// label) with a second server on node-b.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {netward.io/mtls: strict}}
---
apiVersion: v1
kind: Namespace
metadata: {name: open}
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
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 81}, {containerPort: 9000}]}]}
status: {podIPs: [{ip: 198.18.2.10}, {ip: "fd00::2:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: open, labels: {app: server}}
spec: {nodeName: node-b, containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 198.18.2.11}, {ip: "fd00::2:11"}]}
"#;

/// Port 81 of x/server is closed by policy; 80, 9000 and 9001 (the rotation test's
/// sink) are open.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{ports: [{port: 80}, {port: 9000}, {port: 9001}]}]
"#;

/// A two-node lab with a CA, each node's identity, and the advertisement directory.
struct MeshLab {
    lab: Lab,
    pki: tempfile::TempDir,
}

impl MeshLab {
    fn new() -> MeshLab {
        let lab = Lab::build_with_ports(&[("00.yaml", CLUSTER), ("10.yaml", POLICY)], false, &[]);
        let pki = tempfile::tempdir().unwrap();
        identity::init_ca(&pki.path().join("ca"), TD, identity::DEFAULT_CA_VALIDITY).unwrap();
        for node in ["node-a", "node-b"] {
            self::issue(pki.path(), "ca", node, node);
        }
        std::fs::create_dir_all(pki.path().join("peers")).unwrap();
        MeshLab { lab, pki }
    }

    fn node_ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.lab.topo.nodes[i].ip4)
    }

    /// `netward run` on node `i` with the tunnel, its identity in `pki/<dir>`.
    fn start(&self, i: usize, dir: &str) -> Netward {
        self.start_with(i, dir, &[])
    }

    /// [`MeshLab::start`] with more `netward run` flags.
    fn start_with(&self, i: usize, dir: &str, extra: &[&str]) -> Netward {
        let id = self.pki.path().join(dir);
        let peers = self.pki.path().join("peers");
        let listen = SocketAddr::new(self.node_ip(i), TUNNEL_PORT).to_string();
        let mut args = vec![
            "--mtls-identity",
            id.to_str().unwrap(),
            "--tunnel-listen",
            &listen,
            "--tunnel-peers",
            peers.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut n = self.lab.start_netward(i, &args);
        n.wait_for("mTLS tunnel listener up", Duration::from_secs(10));
        n
    }

    /// Both nodes with the tunnel, each advertised to the other.
    fn start_both(&self) -> (Netward, Netward) {
        let a = self.start(0, "node-a");
        let b = self.start(1, "node-b");
        // Each node re-reads the advertisements every 200 ms.
        std::thread::sleep(Duration::from_millis(600));
        (a, b)
    }
}

fn issue(pki: &Path, ca: &str, node: &str, out: &str) {
    identity::issue(
        &pki.join(ca),
        node,
        &pki.join(out),
        TD,
        identity::DEFAULT_NODE_VALIDITY,
    )
    .unwrap();
}

/// The audit lines (stdout) of a node with `needle`, waiting up to 5 s for one.
fn audit_lines(n: &Netward, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = n
            .log()
            .lines()
            .filter(|l| l.starts_with('{') && l.contains(needle))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cross_node_traffic_goes_through_the_tunnel_and_policy_still_holds() {
    if !root() {
        return;
    }
    let m = MeshLab::new();
    let (a, b) = m.start_both();
    let lab = &m.lab;
    for v6 in [false, true] {
        let (o, body) = lab.http_get("x/client", "x/server", 80, v6, PROBE);
        assert_eq!(o, Outcome::Ok, "v6={v6}\nA:\n{}\nB:\n{}", a.log(), b.log());
        // The server saw the client's own address: kept through the tunnel.
        assert!(
            body.contains(&lab.ip("x/client", v6).to_string()),
            "server reply: {body}"
        );
        // Closed by policy at the destination: a drop, as without the tunnel.
        let (o, _) = lab.connect("x/client", "x/server", 81, v6, PROBE);
        assert_eq!(o, Outcome::Timeout, "port 81, v6={v6}");
    }
    let close = audit_lines(&b, "\"event\":\"close\"");
    assert!(
        close
            .iter()
            .any(|l| l.contains("\"mtls\":true") && l.contains("\"peer_node\":\"node-a\"")),
        "node B's close records: {close:#?}"
    );
    // The tunnel's metrics on both ends.
    let metric = |node: usize, name: &str| -> f64 {
        let text = m.lab.topo.nodes[node]
            .ns
            .run(|| {
                let mut s = TcpStream::connect("127.0.0.1:15021").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(metric(0, "netward_tunnel_streams_opened_total") >= 2.0);
    assert!(metric(0, "netward_tunnel_connections") >= 1.0);
    assert!(metric(1, "netward_tunnel_streams_accepted_total") >= 2.0);
    // Port 81 was denied by node A itself (it applies B's ingress before any stream).
    assert_eq!(metric(0, "netward_tunnel_open_failures_total"), 0.0);
    assert_eq!(metric(1, "netward_tunnel_refused_total"), 0.0);
    assert!(metric(1, "netward_tunnel_certificate_expiry_seconds") > 3600.0);
    assert_eq!(metric(1, "netward_tunnel_enabled"), 1.0);
    let _ = metric(1, "netward_ktls_available");
    let close_a = audit_lines(&a, "\"event\":\"close\"");
    assert!(
        close_a
            .iter()
            .any(|l| l.contains("\"mtls\":true") && l.contains("\"peer_node\":\"node-b\"")),
        "node A's close records: {close_a:#?}"
    );
}

/// A tunnel that cannot be opened (node B advertised, then crashed) denies the client's
/// connection once: its SYN retransmissions neither open the tunnel again nor write
/// more records (docs/audit-log.md: one record per denied flow).
#[test]
fn a_failed_tunnel_gives_one_record_per_denied_flow() {
    if !root() {
        return;
    }
    let m = MeshLab::new();
    let (a, mut b) = m.start_both();
    assert_eq!(
        m.lab.http_get("x/client", "x/server", 80, false, PROBE).0,
        Outcome::Ok,
        "through the tunnel first\n{}",
        a.log()
    );
    // A crash: the advertisement stays, nothing listens on B's tunnel port.
    b.kill();
    let (o, _) = m
        .lab
        .connect("x/client", "x/server", 80, false, Duration::from_secs(5));
    assert_eq!(o, Outcome::Timeout, "{}", a.log());
    let denials: Vec<String> = audit_lines(&a, "\"event\":\"deny\"")
        .into_iter()
        .filter(|l| l.contains("\"mtls\":true") && l.contains("\"peer_node\":\"node-b\""))
        .collect();
    assert_eq!(
        denials.len(),
        1,
        "one record for one denied flow (its SYN was retransmitted at 1 s and 3 s):\n{denials:#?}\n{}",
        a.log()
    );
}

#[test]
fn nothing_crosses_the_wire_in_clear_under_mtls() {
    if !root() {
        return;
    }
    // With the tunnel: the marker never appears between the nodes.
    let m = MeshLab::new();
    let (a, b) = m.start_both();
    let seen = capture_while(&m.lab, || send_marker(&m.lab, 9000));
    assert!(
        seen.0,
        "the marker did not get through:\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(seen.1 > 0, "the capture saw no packets at all");
    assert!(
        !seen.2,
        "the marker crossed the wire in clear with mTLS on ({} packets captured)",
        seen.1
    );
    drop((a, b));

    // Without the tunnel (plaintext between nodes, namespace `open`): it does appear,
    // which shows the capture would have caught it.
    let m = MeshLab::new();
    let a = m.lab.start_netward(0, &[]);
    let b = m.lab.start_netward(1, &[]);
    let seen = capture_while(&m.lab, || send_marker_to(&m.lab, "open/server", 80));
    assert!(seen.0, "plaintext marker did not get through:\n{}", b.log());
    assert!(
        seen.2,
        "the capture missed the plaintext marker ({} packets)",
        seen.1
    );
    drop((a, b));
}

/// Sends the marker from x/client to x/server:`port` and waits for the reply.
fn send_marker(lab: &Lab, port: u16) -> bool {
    send_marker_to(lab, "x/server", port)
}

fn send_marker_to(lab: &Lab, to: &str, port: u16) -> bool {
    let dst = SocketAddr::new(lab.ip(to, false), port);
    lab.pod("x/client")
        .run(move || {
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(3)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let req = format!("GET /{MARKER} HTTP/1.0\r\nX-Marker: {MARKER}\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                return false;
            }
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            !buf.is_empty()
        })
        .unwrap()
}

/// Captures every frame on the bridge between the nodes while `f` runs. Returns
/// (f's result, frames captured, whether any frame contained the marker).
fn capture_while(lab: &Lab, f: impl FnOnce() -> bool) -> (bool, usize, bool) {
    let wire = lab.topo.wire().expect("a two-node lab has a wire");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = {
        let stop = stop.clone();
        wire.spawn(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            // ETH_P_ALL in network byte order: every frame on every interface here.
            let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0x0300)))
                .expect("packet socket");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let _ = ready_tx.send(());
            let (mut frames, mut found) = (0usize, false);
            let mut buf = vec![0u8; 65536];
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(n) = (&sock).read(&mut buf) else {
                    continue;
                };
                frames += 1;
                if buf[..n]
                    .windows(MARKER.len())
                    .any(|w| w == MARKER.as_bytes())
                {
                    found = true;
                }
            }
            (frames, found)
        })
        .unwrap()
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let ok = f();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (frames, found) = handle.join().unwrap().unwrap();
    (ok, frames, found)
}

#[test]
fn identity_failures_are_refused_and_audited() {
    if !root() {
        return;
    }
    let m = MeshLab::new();
    let pki = m.pki.path();
    // Node B holds a valid identity; the clients below dial its tunnel port from node A.
    // Refusals from one address are aggregated over the deny window (1 s here).
    let b = m.start_with(1, "node-b", &["--audit-deny-window-secs", "1"]);
    let b_addr = SocketAddr::new(m.node_ip(1), TUNNEL_PORT);
    let req = StreamRequest {
        dst: SocketAddr::new(m.lab.ip("x/server", false), 80),
        src: SocketAddr::new(m.lab.ip("x/client", false), 40000),
        src_uid: None,
    };

    // 1. A certificate from another CA.
    identity::init_ca(&pki.join("ca2"), TD, identity::DEFAULT_CA_VALIDITY).unwrap();
    issue(pki, "ca2", "node-a", "rogue-a");
    let rogue = TlsIdentity::load(&pki.join("rogue-a"), TD, "node-a").unwrap();
    let e = open_from_node_a(&m, &rogue, b_addr, &req);
    assert!(matches!(e, Err(OpenError::Tls { .. })), "other CA: {e:?}");

    // 2. An expired certificate (from the right CA).
    let now = SystemTime::now();
    identity::issue_with(
        &pki.join("ca"),
        "node-a",
        &pki.join("expired-a"),
        TD,
        IssueOptions {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
    )
    .unwrap();
    let expired = raw_handshake_from_node_a(&m, &pki.join("expired-a"), b_addr, true);
    assert!(expired.is_err(), "the expired certificate was accepted");

    // 3. No client certificate at all.
    let none = raw_handshake_from_node_a(&m, &pki.join("node-a"), b_addr, false);
    assert!(none.is_err(), "a client without a certificate was accepted");

    // 4. A valid node certificate whose node does not host the claimed source pod.
    issue(pki, "ca", "node-c", "node-c");
    let c = TlsIdentity::load(&pki.join("node-c"), TD, "node-c").unwrap();
    let e = open_from_node_a(&m, &c, b_addr, &req);
    match e {
        Err(OpenError::Refused { status, reason, .. }) => {
            assert_eq!(status, 400, "{reason}");
            assert!(
                reason.contains("node-a") && reason.contains("node-c"),
                "{reason}"
            );
        }
        other => panic!("node-c claiming node-a's pod: {other:?}"),
    }

    // Every refusal is in node B's audit log; the three TLS failures from node A's
    // address are one record plus, after the window, one aggregated record with a count.
    let tls_count = |b: &Netward| -> u64 {
        audit_lines(b, "\"detail\":\"tls")
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_count(&b) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let denied = audit_lines(&b, "\"detail\"");
    let text = denied.join("\n");
    assert_eq!(
        tls_count(&b),
        3,
        "TLS refusals (other CA, expired, none) in node B's audit:\n{text}\n\nlog:\n{}",
        b.log()
    );
    assert!(
        denied
            .iter()
            .filter(|l| l.contains("\"detail\":\"tls"))
            .count()
            < 3,
        "TLS refusals from one address are aggregated, not one record each:\n{text}"
    );
    assert!(
        denied.iter().any(|l| l.contains("\"peer_node\":\"node-c\"")
            && l.contains("\"detail\":\"bad-request: ")
            && l.contains("runs on node node-a")),
        "the node-c claim in node B's audit (with docs/audit-log.md's bad-request: prefix):\n{text}"
    );

    // 5. Plaintext into the strict namespace from the other node: denied with its reason.
    let dst = SocketAddr::new(m.lab.ip("x/server", false), 80);
    let o = m.lab.topo.nodes[0]
        .ns
        .run(move || netward_proxy::lab::probe::tcp_connect(dst, PROBE))
        .unwrap()
        .0;
    assert_eq!(
        o,
        Outcome::Timeout,
        "plaintext from node A into strict x/server"
    );
    let plain = audit_lines(&b, "plaintext-under-strict-mtls");
    assert!(!plain.is_empty(), "node B's audit:\n{}", b.log());
}

/// Opens a tunnel stream to node B from inside node A's namespace with `id`.
fn open_from_node_a(
    m: &MeshLab,
    id: &TlsIdentity,
    b_addr: SocketAddr,
    req: &StreamRequest,
) -> Result<(), OpenError> {
    let (cfg, req) = (id.client_config(), req.clone());
    m.lab.topo.nodes[0]
        .ns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = TunnelClient::new(cfg, TunnelConfig::default());
                client.open("node-b", b_addr, &req).await.map(|_| ())
            })
        })
        .unwrap()
}

/// A TLS 1.3 handshake plus one read, with the certificate in `dir` (or none), trusting
/// any server: only the server's refusal is under test.
fn raw_handshake_from_node_a(
    m: &MeshLab,
    dir: &Path,
    b_addr: SocketAddr,
    with_cert: bool,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_file_iter(dir.join("node.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("node-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut cfg = if with_cert {
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    m.lab.topo.nodes[0]
        .ns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let tcp = tokio::net::TcpStream::connect(b_addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let name =
                    rustls::pki_types::ServerName::try_from("netward-tunnel.invalid").unwrap();
                let mut tls = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
                )
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|e| e.to_string())?;
                // TLS 1.3: the server's verdict on our certificate arrives after our
                // Finished; a write and a read surface it.
                tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => Ok(()),
                    Ok(Ok(_)) => Err("closed".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer".to_owned()),
                }
            })
        })
        .unwrap()
}

/// Accepts any server certificate (the test is about the server refusing the client).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn a_certificate_rotation_does_not_break_a_long_transfer() {
    if !root() {
        return;
    }
    let m = MeshLab::new();
    let (a, b) = m.start_both();
    // A sink on x/server:9001 that answers with the byte count and a checksum.
    let server_ns = m.lab.pod("x/server");
    let listener_ready = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = listener_ready;
    let sink = server_ns
        .spawn(move || {
            let l = std::net::TcpListener::bind("0.0.0.0:9001").unwrap();
            let _ = ready_tx.send(());
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut n, mut sum) = (0u64, 0u64);
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        n += k as u64;
                        sum = checksum(sum, &buf[..k]);
                    }
                }
            }
            let _ = s.write_all(format!("{n} {sum}\n").as_bytes());
        })
        .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // 64 MiB at a bounded pace (about 10 s), so that the rotation lands mid-transfer.
    let dst = SocketAddr::new(m.lab.ip("x/server", false), 9001);
    let transfer = m
        .lab
        .pod("x/client")
        .spawn(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut sum = 0u64;
            let mut chunk = vec![0u8; 1 << 20];
            for i in 0..64u64 {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
                }
                sum = checksum(sum, &chunk);
                s.write_all(&chunk).unwrap();
                std::thread::sleep(Duration::from_millis(160));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            (64u64 << 20, sum, reply)
        })
        .unwrap();

    // Re-issue both nodes' certificates in place while the bytes flow; each netward
    // picks them up within its 5 s reload period.
    std::thread::sleep(Duration::from_secs(2));
    for node in ["node-a", "node-b"] {
        issue(m.pki.path(), "ca", node, node);
    }
    // Both nodes pick up their new certificate while the transfer is still running.
    let reloaded = |n: &Netward| n.log().contains("node certificate reloaded");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(reloaded(&a) && reloaded(&b)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloaded(&a), "node A never reloaded:\n{}", a.log());
    assert!(reloaded(&b), "node B never reloaded:\n{}", b.log());
    assert!(
        !transfer.is_finished(),
        "the transfer ended before the rotation: the test proves nothing"
    );
    let (sent, sum, reply) = transfer.join().unwrap().unwrap();
    sink.join().unwrap().unwrap();
    assert_eq!(
        reply.trim(),
        format!("{sent} {sum}"),
        "bytes or checksum differ after the rotation\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // A new connection after the rotation works too.
    assert_eq!(
        m.lab.http_get("x/client", "x/server", 80, false, PROBE).0,
        Outcome::Ok
    );
}

fn checksum(mut sum: u64, data: &[u8]) -> u64 {
    for &b in data {
        sum = sum
            .wrapping_mul(1_099_511_628_211)
            .wrapping_add(u64::from(b));
    }
    sum
}

/// The observed matrices of `netward lab three-tier` with and without strict mTLS.
#[test]
fn three_tier_under_strict_mtls_matches_plaintext() {
    if !root() {
        return;
    }
    let run = |extra: &[&str]| {
        let out = Command::new(netward_bin())
            .args(["lab", "three-tier", "--ipv4-only"])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok_plain, plain, e1) = run(&[]);
    assert!(ok_plain, "netward lab three-tier:\n{plain}\n{e1}");
    let (ok_mtls, mtls, e2) = run(&["--mtls"]);
    assert!(ok_mtls, "netward lab three-tier --mtls:\n{mtls}\n{e2}");
    assert_eq!(
        matrix_lines(&plain),
        matrix_lines(&mtls),
        "observed matrices differ"
    );
    assert!(!matrix_lines(&plain).is_empty(), "no matrix in:\n{plain}");
}

/// The lines of the lab's matrix tables (rows of pods and their cells).
fn matrix_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains('✓') || l.contains('✗') || l.contains(" ok ") || l.contains(" - "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
