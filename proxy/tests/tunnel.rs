//! The mTLS tunnel between node proxies, over loopback (IPv4 and IPv6), without root:
//! node certificates from the offline CA in temporary directories, a test handler that
//! authorizes from a table and connects to local upstream servers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "tests: a panic is a failed test"
)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netward_proxy::mtls::identity::{
    self, CA_CERT_FILE, DEFAULT_CA_VALIDITY, DEFAULT_NODE_VALIDITY, EXTRA_ROOTS_FILE, TlsIdentity,
};
use netward_proxy::mtls::tunnel::{
    self, Handler, OpenError, Refusal, RefusalKind, RefusedEvent, StreamEnd, StreamOutcome,
    StreamRequest, TunnelClient, TunnelConfig, TunnelSide,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------
// Certificates

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        identity::init_ca(&dir.path().join("ca"), TD, DEFAULT_CA_VALIDITY).unwrap();
        Self { dir }
    }

    fn node(&self, node: &str) -> TlsIdentity {
        let out = self.dir.path().join(node);
        identity::issue(
            &self.dir.path().join("ca"),
            node,
            &out,
            TD,
            DEFAULT_NODE_VALIDITY,
        )
        .unwrap();
        TlsIdentity::load(&out, TD, node).unwrap()
    }

    /// `node` from a second CA, whose bundle also trusts this CA (so the client accepts
    /// our servers, and only the server can refuse it).
    fn foreign_node(&self, node: &str) -> TlsIdentity {
        let other = self.dir.path().join("other-ca");
        identity::init_ca(&other, TD, DEFAULT_CA_VALIDITY).unwrap();
        std::fs::copy(
            self.dir.path().join("ca").join(CA_CERT_FILE),
            other.join(EXTRA_ROOTS_FILE),
        )
        .unwrap();
        let out = self.dir.path().join(format!("foreign-{node}"));
        identity::issue(&other, node, &out, TD, DEFAULT_NODE_VALIDITY).unwrap();
        TlsIdentity::load(&out, TD, node).unwrap()
    }
}

/// A client configuration without any certificate, that accepts any server.
fn anonymous_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------
// The test handler

#[derive(Clone, Debug)]
struct Refused {
    kind: RefusalKind,
    peer_addr: SocketAddr,
    peer_node: Option<String>,
    request: Option<StreamRequest>,
    status: Option<u16>,
    reason: String,
}

struct TestHandler {
    /// Destinations refused, with the refusal; everything else from node-a is allowed.
    deny: Mutex<HashMap<SocketAddr, Refusal>>,
    refused: Mutex<Vec<Refused>>,
    finished: mpsc::UnboundedSender<(StreamRequest, StreamOutcome)>,
}

impl TestHandler {
    fn refused(&self) -> Vec<Refused> {
        self.refused.lock().unwrap().clone()
    }

    /// Waits until a refusal matching `pred` was reported.
    async fn wait_refused(&self, pred: impl Fn(&Refused) -> bool) -> Refused {
        within("a refusal reported to the handler", async {
            loop {
                if let Some(r) = self.refused().into_iter().find(|r| pred(r)) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

impl Handler for TestHandler {
    type Ticket = StreamRequest;

    fn authorize(&self, peer_node: &str, req: &StreamRequest) -> Result<StreamRequest, Refusal> {
        if peer_node != "node-a" {
            return Err(Refusal::bad_request(format!(
                "source pod {} is not on node {peer_node}",
                req.src
            )));
        }
        match self.deny.lock().unwrap().get(&req.dst) {
            Some(refusal) => Err(refusal.clone()),
            None => Ok(req.clone()),
        }
    }

    fn connect(
        &self,
        _ticket: &StreamRequest,
        req: &StreamRequest,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send {
        TcpStream::connect(req.dst)
    }

    fn finished(&self, ticket: StreamRequest, outcome: StreamOutcome) {
        let _ = self.finished.send((ticket, outcome));
    }

    fn refused(&self, event: RefusedEvent<'_>) {
        self.refused.lock().unwrap().push(Refused {
            kind: event.kind,
            peer_addr: event.peer_addr,
            peer_node: event.peer_node.map(str::to_owned),
            request: event.request.cloned(),
            status: event.status,
            reason: event.reason.to_owned(),
        });
    }
}

/// A tunnel server on `ip` for `identity`.
struct Server {
    addr: SocketAddr,
    handler: Arc<TestHandler>,
    finished: mpsc::UnboundedReceiver<(StreamRequest, StreamOutcome)>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(ip: &str, identity: &TlsIdentity) -> Self {
        Self::start_with(ip, identity, config()).await
    }

    async fn start_with(ip: &str, identity: &TlsIdentity, cfg: TunnelConfig) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, finished) = mpsc::unbounded_channel();
        let handler = Arc::new(TestHandler {
            deny: Mutex::new(HashMap::new()),
            refused: Mutex::new(Vec::new()),
            finished: tx,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tunnel::serve(
            listener,
            identity.server_config(),
            cfg,
            handler.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            handler,
            finished,
            stop: Some(stop),
            task,
        }
    }

    async fn next_finished(&mut self) -> (StreamRequest, StreamOutcome) {
        within("a finished stream", self.finished.recv())
            .await
            .expect("server gone")
    }
}

fn config() -> TunnelConfig {
    TunnelConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        // Above the 5 ms default: CI machines are loaded (the default passed 15/15 at load 6).
        reset_grace: Duration::from_millis(20),
        ..TunnelConfig::default()
    }
}

fn request(dst: SocketAddr, src: &str) -> StreamRequest {
    StreamRequest {
        dst,
        src: src.parse().unwrap(),
        src_uid: Some("6b5a1a4e-0000-4000-8000-000000000001".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Upstream servers and data

/// Accepts connections on `ip` and runs `serve` on each.
async fn upstream<F, Fut>(ip: &str, serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// Echoes until EOF, then half-closes.
async fn echo(mut tcp: TcpStream) {
    let (mut r, mut w) = tcp.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `data` then half-closes, while reading everything the peer sends.
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, data: &[u8]) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (wrote, got) = tokio::join!(write, read);
    wrote?;
    got
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Tests

/// 10 MiB each way through a source-side `relay` and the tunnel; checksums and the byte
/// counts reported on both nodes agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_stream_10_mib_each_way() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let mut server = Server::start("127.0.0.1", &b).await;

    let upstream_sum = Arc::new(Mutex::new(None));
    let sum = upstream_sum.clone();
    let dst = upstream("127.0.0.1", move |tcp| {
        let sum = sum.clone();
        async move {
            let got = exchange(tcp, &pattern(2, 10 * MIB)).await.unwrap();
            *sum.lock().unwrap() = Some((got.len(), checksum(&got)));
        }
    })
    .await;

    // The pod's connection, intercepted on the source node.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(local.local_addr().unwrap());
    let (app, accepted) = tokio::join!(app, local.accept());
    let (app, (intercepted, pod_addr)) = (app.unwrap(), accepted.unwrap());

    let client = TunnelClient::new(a.client_config(), config());
    let req = StreamRequest {
        dst,
        src: pod_addr,
        src_uid: None,
    };
    let stream = within("open", client.open("node-b", server.addr, &req))
        .await
        .unwrap();
    assert_eq!(stream.peer_node(), "node-b");
    let relay = tokio::spawn(tunnel::relay(intercepted, stream, Duration::from_secs(60)));

    let sent = pattern(1, 10 * MIB);
    let got = within("10 MiB exchange", exchange(app, &sent))
        .await
        .unwrap();
    assert_eq!(got.len(), 10 * MIB);
    assert_eq!(checksum(&got), checksum(&pattern(2, 10 * MIB)));

    let source = within("source relay", relay).await.unwrap();
    let (ticket, dest) = server.next_finished().await;
    assert_eq!(ticket.src, pod_addr);
    assert_eq!(ticket.src_uid, None);
    assert_eq!(
        *upstream_sum.lock().unwrap(),
        Some((10 * MIB, checksum(&sent)))
    );
    for outcome in [&source, &dest] {
        assert_eq!(outcome.to_server, (10 * MIB) as u64, "{outcome:?}");
        assert_eq!(outcome.to_client, (10 * MIB) as u64, "{outcome:?}");
        assert!(matches!(outcome.end, StreamEnd::Fin { .. }), "{outcome:?}");
    }
    let stats = client.pool_stats();
    assert_eq!(
        (stats.connections, stats.live_streams, stats.handshakes),
        (1, 0, 1)
    );
}

/// Half-close both ways, over IPv6: the client ends its direction and still receives
/// the server's remaining data; the server ends first and still receives the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways_ipv6() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let mut server = Server::start("::1", &b).await;
    let client = TunnelClient::new(a.client_config(), config());

    // Client first: the upstream answers only after the client's FIN.
    let dst = upstream("::1", |mut tcp| async move {
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        tcp.write_all(&pattern(3, 100_000)).await.unwrap();
        tcp.shutdown().await.unwrap();
    })
    .await;
    let req = request(dst, "[fd00::a]:40000");
    let mut stream = within("open", client.open("node-b", server.addr, &req))
        .await
        .unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("read after our FIN", stream.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        got.starts_with(b"got 5 bytes"),
        "{:?}",
        &got[..20.min(got.len())]
    );
    assert_eq!(got.len(), "got 5 bytes".len() + 100_000);
    drop(stream);
    let (ticket, outcome) = server.next_finished().await;
    assert_eq!(ticket.dst, dst);
    assert_eq!(ticket.src, "[fd00::a]:40000".parse().unwrap());
    assert_eq!(ticket.src_uid.as_deref(), req.src_uid.as_deref());
    assert_eq!(
        outcome.end,
        StreamEnd::Fin {
            first: TunnelSide::Client
        }
    );
    assert_eq!(
        (outcome.to_server, outcome.to_client),
        (5, got.len() as u64)
    );

    // Server first: the upstream says goodbye and half-closes, then reads on.
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let dst = upstream("::1", move |mut tcp| {
        let tx = tx.clone();
        async move {
            tcp.write_all(b"bye").await.unwrap();
            tcp.shutdown().await.unwrap();
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await.unwrap();
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    let mut stream = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "[fd00::a]:40001")),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    within("read to the server's FIN", stream.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    let late = pattern(4, 300_000);
    stream.write_all(&late).await.unwrap();
    stream.shutdown().await.unwrap();
    let upstream_got = within("upstream reads after its FIN", rx).await.unwrap();
    assert_eq!(checksum(&upstream_got), checksum(&late));
    let (_, outcome) = server.next_finished().await;
    assert_eq!(
        outcome.end,
        StreamEnd::Fin {
            first: TunnelSide::Server
        }
    );
    assert_eq!((outcome.to_server, outcome.to_client), (300_000, 3));
    // Both streams shared one connection.
    assert_eq!(client.pool_stats().handshakes, 1);
}

/// A policy refusal is a 403 with its reason on the client, and reported on the server;
/// a failed upstream connect is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_403_and_unavailable_503() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let server = Server::start("127.0.0.1", &b).await;
    let client = TunnelClient::new(a.client_config(), config());

    let denied = upstream("127.0.0.1", echo).await;
    server.handler.deny.lock().unwrap().insert(
        denied,
        Refusal::forbidden("denied: ingress of default/db isolated by default/deny-all"),
    );
    let req = request(denied, "10.244.1.5:33000");
    let err = within("open", client.open("node-b", server.addr, &req))
        .await
        .unwrap_err();
    match &err {
        OpenError::Refused {
            peer_node,
            status,
            reason,
        } => {
            assert_eq!((peer_node.as_str(), *status), ("node-b", 403));
            assert_eq!(
                reason,
                "denied: ingress of default/db isolated by default/deny-all"
            );
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert!(err.to_string().contains("403"), "{err}");
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Policy)
        .await;
    assert_eq!(event.status, Some(403));
    assert_eq!(event.peer_node.as_deref(), Some("node-a"));
    assert_eq!(event.request.as_ref(), Some(&req));
    assert!(event.peer_addr.ip().is_loopback());

    // Nothing listens on `closed`.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let err = within(
        "open",
        client.open("node-b", server.addr, &request(closed, "10.244.1.5:33001")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, OpenError::Unavailable { reason, .. } if reason.contains("refused")),
        "{err:?}"
    );
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Unavailable)
        .await;
    assert_eq!(event.status, Some(503));

    // A stream that does not check out (the handler's 400) is a refusal too.
    let stranger = pki.node("node-x");
    let client_x = TunnelClient::new(stranger.client_config(), config());
    let err = within(
        "open",
        client_x.open("node-b", server.addr, &request(denied, "10.244.9.9:1")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, OpenError::Refused { status: 400, reason, .. } if reason.contains("not on node node-x")),
        "{err:?}"
    );
    // The pool keeps working after refusals.
    let ok = upstream("127.0.0.1", echo).await;
    let stream = within(
        "open",
        client.open("node-b", server.addr, &request(ok, "10.244.1.5:33002")),
    )
    .await
    .unwrap();
    assert_eq!(
        within("echo", exchange(stream, b"ping")).await.unwrap(),
        b"ping"
    );
    assert_eq!(client.pool_stats().handshakes, 1);
}

/// 250 concurrent opens toward one peer share 3 connections, and all streams work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooling_250_concurrent_opens_use_3_connections() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let server = Server::start("127.0.0.1", &b).await;
    let client = TunnelClient::new(a.client_config(), config());
    let dst = upstream("127.0.0.1", echo).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..250u16 {
        let client = client.clone();
        let peer = server.addr;
        tasks.spawn(async move {
            let req = request(dst, &format!("10.244.1.5:{}", 20000 + i));
            let mut stream = client.open("node-b", peer, &req).await?;
            let msg = format!("stream {i}");
            stream.write_all(msg.as_bytes()).await?;
            let mut buf = vec![0; msg.len()];
            stream.read_exact(&mut buf).await?;
            assert_eq!(buf, msg.as_bytes());
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(stream)
        });
    }
    let mut streams = Vec::new();
    within("250 opens", async {
        while let Some(res) = tasks.join_next().await {
            streams.push(res.unwrap().unwrap());
        }
    })
    .await;
    let stats = client.pool_stats();
    assert_eq!(stats.live_streams, 250, "{stats:?}");
    assert_eq!(stats.connections, 3, "{stats:?}");
    assert_eq!(stats.handshakes, 3, "{stats:?}");
    assert_eq!(stats.peers.len(), 1);
    assert_eq!(stats.peers[0].node, "node-b");

    // Closing them frees the slots; the next opens reuse the pool.
    for stream in streams.drain(..) {
        within("close", exchange(stream, b"")).await.unwrap();
    }
    assert_eq!(client.pool_stats().live_streams, 0);
    let stream = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:1")),
    )
    .await
    .unwrap();
    assert_eq!(
        within("echo", exchange(stream, b"again")).await.unwrap(),
        b"again"
    );
    assert_eq!(client.pool_stats().handshakes, 3);
    assert!(server.handler.refused().is_empty());
}

/// A server holding node-c's certificate where node-b was expected is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_identity_mismatch() {
    let pki = Pki::new();
    let (a, c) = (pki.node("node-a"), pki.node("node-c"));
    let server = Server::start("127.0.0.1", &c).await;
    let client = TunnelClient::new(a.client_config(), config());
    let dst = upstream("127.0.0.1", echo).await;
    let err = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:1")),
    )
    .await
    .unwrap_err();
    match &err {
        OpenError::PeerIdentity { expected, got, .. } => {
            assert_eq!((expected.as_str(), got.as_str()), ("node-b", "node-c"));
        }
        other => panic!("expected PeerIdentity, got {other:?}"),
    }
    assert!(err.to_string().contains("node-c"), "{err}");
    assert_eq!(client.pool_stats().connections, 0);
}

/// A client without a certificate, and one from another CA: the TLS handshake fails on
/// both ends, and the server reports it with the peer's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_refused_and_reported() {
    let pki = Pki::new();
    let b = pki.node("node-b");
    let server = Server::start("127.0.0.1", &b).await;
    let dst = upstream("127.0.0.1", echo).await;

    let anonymous = TunnelClient::new(anonymous_client(), config());
    let err = within(
        "open",
        anonymous.open("node-b", server.addr, &request(dst, "10.244.1.5:1")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpenError::Tls { .. }), "{err:?}");
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Tls)
        .await;
    assert!(event.peer_addr.ip().is_loopback(), "{event:?}");
    assert_ne!(event.peer_addr, server.addr);
    assert_eq!(event.status, None);
    assert!(event.reason.contains("certificate"), "{event:?}");
    let first = event.reason.clone();

    let foreign = pki.foreign_node("node-a");
    let client = TunnelClient::new(foreign.client_config(), config());
    let err = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:2")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpenError::Tls { .. }), "{err:?}");
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Tls && r.reason != first)
        .await;
    assert!(event.peer_addr.ip().is_loopback());
    assert!(
        event.reason.contains("invalid peer certificate"),
        "{event:?}"
    );
    assert!(
        server
            .handler
            .refused()
            .iter()
            .all(|r| r.kind == RefusalKind::Tls),
        "no stream got as far as a request"
    );
}

/// An upstream RST reaches the client as a reset, not a clean end, both on a bare
/// tunnel stream and through the source-side relay; a client abort resets the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_propagate() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let mut server = Server::start("127.0.0.1", &b).await;
    let client = TunnelClient::new(a.client_config(), config());

    // Reads one message, then resets.
    let rst = upstream("127.0.0.1", |mut tcp| async move {
        let mut buf = [0u8; 5];
        tcp.read_exact(&mut buf).await.unwrap();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;

    let mut stream = within(
        "open",
        client.open("node-b", server.addr, &request(rst, "10.244.1.5:1")),
    )
    .await
    .unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    let read = within("read after the upstream RST", stream.read_to_end(&mut buf)).await;
    let err = read.expect_err("a reset, not a clean EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let (_, outcome) = server.next_finished().await;
    assert_eq!(
        outcome.end,
        StreamEnd::Rst {
            side: TunnelSide::Server
        }
    );

    // Through the relay: the pod's socket gets an RST.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(local.local_addr().unwrap());
    let (app, accepted) = tokio::join!(app, local.accept());
    let (mut app, (intercepted, pod)) = (app.unwrap(), accepted.unwrap());
    let stream = within(
        "open",
        client.open(
            "node-b",
            server.addr,
            &StreamRequest {
                dst: rst,
                src: pod,
                src_uid: None,
            },
        ),
    )
    .await
    .unwrap();
    let relay = tokio::spawn(tunnel::relay(intercepted, stream, Duration::from_secs(60)));
    app.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    let err = within("app read after the RST", app.read_to_end(&mut buf))
        .await
        .expect_err("a reset, not a clean EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let source = within("relay", relay).await.unwrap();
    assert_eq!(
        source.end,
        StreamEnd::Rst {
            side: TunnelSide::Server
        }
    );
    assert_eq!(source.to_server, 5);
    server.next_finished().await;

    // The other way: the client aborts, the upstream sees an RST.
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let watcher = upstream("127.0.0.1", move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let res = tcp.read_to_end(&mut buf).await;
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send((res.map_err(|e| e.kind()), buf));
            }
        }
    })
    .await;
    let mut stream = within(
        "open",
        client.open("node-b", server.addr, &request(watcher, "10.244.1.5:3")),
    )
    .await
    .unwrap();
    stream.write_all(b"partial").await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.abort();
    let (res, got) = within("upstream sees the abort", rx).await.unwrap();
    assert_eq!(got, b"partial");
    assert_eq!(res, Err(io::ErrorKind::ConnectionReset));
    let (_, outcome) = server.next_finished().await;
    assert_eq!(
        outcome.end,
        StreamEnd::Rst {
            side: TunnelSide::Client
        }
    );
}

/// Shutdown stops accepting and lets live streams finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let mut server = Server::start("127.0.0.1", &b).await;
    let client = TunnelClient::new(a.client_config(), config());
    let dst = upstream("127.0.0.1", echo).await;
    let mut stream = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:1")),
    )
    .await
    .unwrap();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.task.is_finished(),
        "a live stream keeps the server draining"
    );
    // The live stream still works.
    stream.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    within("echo during drain", stream.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"still here");
    // New streams are refused (the listener is closed).
    let err = within(
        "open after shutdown",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:2")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, OpenError::Connect { .. } | OpenError::Protocol { .. }),
        "{err:?}"
    );
    within("close", exchange(stream, b"")).await.unwrap();
    server.next_finished().await;
    within("server drained", &mut server.task).await.unwrap();
}

/// A stream on which nothing moves for the idle timeout is reset on both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_resets_both_ends() {
    let pki = Pki::new();
    let (a, b) = (pki.node("node-a"), pki.node("node-b"));
    let idle = TunnelConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    };
    let mut server = Server::start_with("127.0.0.1", &b, idle).await;
    let client = TunnelClient::new(a.client_config(), config());
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let dst = upstream("127.0.0.1", move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let res = tcp.read_to_end(&mut buf).await.map_err(|e| e.kind());
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(res);
            }
        }
    })
    .await;
    let mut stream = within(
        "open",
        client.open("node-b", server.addr, &request(dst, "10.244.1.5:1")),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let err = within("read until the idle timeout", stream.read_to_end(&mut buf))
        .await
        .expect_err("a reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        within("upstream", rx).await.unwrap(),
        Err(io::ErrorKind::ConnectionReset)
    );
    let (_, outcome) = server.next_finished().await;
    assert_eq!(outcome.end, StreamEnd::IdleTimeout);
}

#[test]
fn config_validation() {
    TunnelConfig::default().validate().unwrap();
    let bad = TunnelConfig {
        max_streams_per_conn: 0,
        ..TunnelConfig::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("max_streams_per_conn = 0"), "{err}");
    let bad = TunnelConfig {
        trust_domain: "Not A Domain".into(),
        ..TunnelConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("trust_domain")
    );
}

/// Unauthenticated work is bounded: with two TLS handshakes in flight (clients that
/// connect and never speak), a third connection is closed at once and reported as a
/// limit; once the two are gone, a node connects as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_in_flight_are_bounded() {
    let pki = Pki::new();
    let b = pki.node("node-b");
    let cfg = TunnelConfig {
        max_handshakes: 2,
        ..config()
    };
    let server = Server::start_with("127.0.0.1", &b, cfg).await;
    let dst = upstream("127.0.0.1", echo).await;
    let silent1 = TcpStream::connect(server.addr).await.unwrap();
    let silent2 = TcpStream::connect(server.addr).await.unwrap();
    // Let the server take both (their handshakes now wait for a ClientHello).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("the third connection was kept waiting instead of closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Limit)
        .await;
    assert!(event.reason.contains("2 TLS handshakes"), "{event:?}");
    drop((silent1, silent2));
    let a = pki.node("node-a");
    let client = TunnelClient::new(a.client_config(), config());
    let stream = within("open after the silent clients left", async {
        loop {
            match client
                .open("node-b", server.addr, &request(dst, "10.244.1.5:7"))
                .await
            {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    let back = exchange(stream, b"ping").await.unwrap();
    assert_eq!(back, b"ping");
}

/// Connections from one peer node are bounded: with one allowed, a second connection
/// from node-a (another pool) is refused after its handshake and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_node_are_bounded() {
    let pki = Pki::new();
    let b = pki.node("node-b");
    let cfg = TunnelConfig {
        max_conns_per_node: 1,
        ..config()
    };
    let server = Server::start_with("127.0.0.1", &b, cfg).await;
    let dst = upstream("127.0.0.1", echo).await;
    let a = pki.node("node-a");
    let first = TunnelClient::new(a.client_config(), config());
    let _held = within(
        "first open",
        first.open("node-b", server.addr, &request(dst, "10.244.1.5:8")),
    )
    .await
    .unwrap();
    let second = TunnelClient::new(a.client_config(), config());
    let err = within(
        "second open",
        second.open("node-b", server.addr, &request(dst, "10.244.1.5:9")),
    )
    .await;
    assert!(err.is_err(), "a second connection from node-a was served");
    let event = server
        .handler
        .wait_refused(|r| r.kind == RefusalKind::Limit)
        .await;
    assert_eq!(event.peer_node.as_deref(), Some("node-a"), "{event:?}");
    assert!(
        event.reason.contains("1 connections from node node-a"),
        "{event:?}"
    );
}

/// Sends one `CONNECT` for `dst` from node-a's identity over a fresh connection, with an
/// extra header of `pad` bytes, and returns the answer's status (or the stream error).
async fn connect_with_padding(
    a: &TlsIdentity,
    server: SocketAddr,
    dst: SocketAddr,
    pad: usize,
) -> Result<u16, String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(a.client_config())
        .connect(
            rustls::pki_types::ServerName::try_from("node-b").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(
            hyper::Uri::builder()
                .authority(dst.to_string())
                .build()
                .unwrap(),
        )
        .header("forwarded", "for=\"10.244.1.5:11\"")
        .header(tunnel::SOURCE_ADDR_HEADER, "10.244.1.5:11")
        .header("x-padding", "p".repeat(pad))
        .body(Empty::new())
        .unwrap();
    match within("the CONNECT answer", send.send_request(req)).await {
        Ok(res) => Ok(res.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// A peer's request headers are bounded (`max_header_list_size`): a `CONNECT` whose
/// header list is over it is answered 431 by the HTTP/2 layer and never reaches
/// authorization (and far over it, the connection is closed); one under it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_are_bounded() {
    let pki = Pki::new();
    let b = pki.node("node-b");
    let cfg = config();
    assert_eq!(
        cfg.max_header_list_size,
        16 * 1024,
        "the documented default"
    );
    let server = Server::start_with("127.0.0.1", &b, cfg).await;
    let dst = upstream("127.0.0.1", echo).await;
    let a = pki.node("node-a");
    let small = connect_with_padding(&a, server.addr, dst, 4 * 1024).await;
    assert_eq!(small, Ok(200), "a 4 KiB header list is served");
    let over = connect_with_padding(&a, server.addr, dst, 24 * 1024).await;
    assert_eq!(over, Ok(431), "a 24 KiB header list is refused");
    // Far over the bound, HTTP/2 does not decode the rest: the connection is closed.
    let far = connect_with_padding(&a, server.addr, dst, 256 * 1024).await;
    assert!(
        far.as_ref().is_err_and(|e| e.contains("ENHANCE_YOUR_CALM")),
        "a 256 KiB header list: {far:?}"
    );
}
