//! Node identities: real mutual TLS 1.3 handshakes over 127.0.0.1 between
//! `TlsIdentity` configurations, the refusals an operator must be able to read, rotation
//! of node certificates and of the trust bundle, and `netward ca`.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use netward_proxy::mtls::identity::{
    self, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_CA_VALIDITY, DEFAULT_NODE_VALIDITY, EXTRA_ROOTS_FILE,
    IdentityError, IssueOptions, NODE_CERT_FILE, NODE_KEY_FILE, TRUST_BUNDLE_FILE, TlsIdentity,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Fixtures

/// A CA and node directories under one temporary directory.
struct Pki {
    root: TempDir,
}

impl Pki {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn ca(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        identity::init_ca(&dir, TD, DEFAULT_CA_VALIDITY).unwrap();
        dir
    }

    /// Issues `node` from `ca` into `<root>/<dir>`.
    fn issue(&self, ca: &Path, node: &str, dir: &str) -> PathBuf {
        let out = self.path(dir);
        identity::issue(ca, node, &out, TD, DEFAULT_NODE_VALIDITY).unwrap();
        out
    }

    fn node(&self, ca: &Path, node: &str) -> TlsIdentity {
        let dir = self.issue(ca, node, node);
        TlsIdentity::load(&dir, TD, node).unwrap()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(&fs::read(path).unwrap())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(&fs::read(path).unwrap()).unwrap()
}

fn serial(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert)
        .unwrap()
        .1
        .raw_serial_as_string()
}

/// A server verifier that accepts anything: for clients whose own certificate is what
/// a test is about.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client that trusts any server and presents `cert` (or nothing).
fn raw_client(
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A client presenting the files of a node directory, without `TlsIdentity`'s checks
/// (for certificates it would refuse to load: expired, from another CA).
fn raw_client_from_dir(dir: &Path) -> Arc<ClientConfig> {
    raw_client(Some((
        pem_certs(&dir.join(NODE_CERT_FILE)),
        pem_key(&dir.join(NODE_KEY_FILE)),
    )))
}

/// A leaf signed by the CA in `ca_dir`, made with rcgen directly: for certificates
/// `identity::issue` would never write.
fn custom_leaf(
    ca_dir: &Path,
    sans: Vec<rcgen::SanType>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(),
        ca_key,
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
    params.not_after = (SystemTime::now() + Duration::from_secs(3600)).into();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

fn uri_san(uri: &str) -> rcgen::SanType {
    rcgen::SanType::URI(uri.try_into().unwrap())
}

// ---------------------------------------------------------------------------------------
// Handshakes

/// What each side saw of one handshake: the peer's node name and certificate serial,
/// or the error text.
#[derive(Debug)]
struct Outcome {
    server: Result<(String, String), String>,
    client: Result<(String, String), String>,
}

fn peer(certs: Option<&[CertificateDer<'static>]>) -> Result<(String, String), String> {
    let leaf = certs.and_then(|c| c.first()).ok_or("no peer certificate")?;
    let node = identity::node_from_cert(leaf, TD).map_err(|e| e.to_string())?;
    Ok((node, serial(leaf)))
}

/// One connection: the server accepts, reports its peer and writes one byte; the client
/// connects, reads that byte (which surfaces a refusal of its certificate) and reports
/// its peer.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let seen = peer(conn.peer_certificates());
        tls.write_all(b"S").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        // Hold the connection until the client has read the byte.
        let mut end = [0u8; 1];
        let _ = tls.read(&mut end).await;
        seen
    });
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(ServerName::try_from("netward-tunnel.invalid").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let seen = peer(tls.get_ref().1.peer_certificates());
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        seen
    };
    let client = timeout(WAIT, client_side).await.expect("client timed out");
    let server = timeout(WAIT, server_side)
        .await
        .expect("server timed out")
        .unwrap();
    Outcome { server, client }
}

fn assert_ok(outcome: &Outcome, server_node: &str, client_node: &str) {
    let server = outcome
        .server
        .as_ref()
        .unwrap_or_else(|e| panic!("server: {e}"));
    let client = outcome
        .client
        .as_ref()
        .unwrap_or_else(|e| panic!("client: {e}"));
    assert_eq!(server.0, client_node, "the server sees the client's node");
    assert_eq!(client.0, server_node, "the client sees the server's node");
}

fn server_refused(outcome: &Outcome, needle: &str) {
    let err = outcome
        .server
        .as_ref()
        .expect_err("the server should refuse");
    assert!(
        err.contains(needle),
        "server error {err:?} lacks {needle:?}"
    );
    assert!(
        outcome.client.is_err(),
        "the client sees the refusal too: {outcome:?}"
    );
}

fn client_refused(outcome: &Outcome, needle: &str) {
    let err = outcome
        .client
        .as_ref()
        .expect_err("the client should refuse");
    assert!(
        err.contains(needle),
        "client error {err:?} lacks {needle:?}"
    );
    assert!(
        outcome.server.is_err(),
        "the server sees the refusal too: {outcome:?}"
    );
}

/// An echo server on 127.0.0.1 for long-lived connections.
async fn echo_server(server: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(server.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, client: Arc<ClientConfig>) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    timeout(
        WAIT,
        TlsConnector::from(client)
            .connect(ServerName::try_from("netward-tunnel.invalid").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

async fn echo(conn: &mut Client, message: &[u8]) {
    conn.write_all(message).await.unwrap();
    conn.flush().await.unwrap();
    let mut back = vec![0u8; message.len()];
    timeout(WAIT, conn.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, message);
}

fn server_serial(conn: &Client) -> String {
    serial(&conn.get_ref().1.peer_certificates().unwrap()[0])
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_node_pair_completes_mutual_tls_and_sees_each_other() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let b = pki.node(&ca, "node-b.zone-1");
    assert_eq!(a.node(), "node-a");
    assert_eq!(a.trust_domain(), TD);
    assert_eq!(a.spiffe_id(), "spiffe://cluster.local/netward/node/node-a");
    let lifetime = a.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(23 * 3600) && lifetime <= DEFAULT_NODE_VALIDITY);

    assert_ok(
        &handshake(a.server_config(), b.client_config()).await,
        "node-a",
        "node-b.zone-1",
    );
    assert_ok(
        &handshake(b.server_config(), a.client_config()).await,
        "node-b.zone-1",
        "node-a",
    );
    // The configurations are built once.
    assert!(Arc::ptr_eq(&a.server_config(), &a.clone().server_config()));
}

#[tokio::test]
async fn the_server_refuses_a_client_certificate_from_another_ca() {
    let pki = Pki::new();
    let a = pki.node(&pki.ca("ca"), "node-a");
    let other = pki.ca("other-ca");
    let intruder = pki.issue(&other, "node-b", "intruder");
    server_refused(
        &handshake(a.server_config(), raw_client_from_dir(&intruder)).await,
        "UnknownIssuer",
    );
    // And the real client configuration of such a node refuses our server first.
    let intruder = TlsIdentity::load(&intruder, TD, "node-b").unwrap();
    client_refused(
        &handshake(a.server_config(), intruder.client_config()).await,
        "UnknownIssuer",
    );
}

#[tokio::test]
async fn the_server_refuses_an_expired_client_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let expired_dir = pki.path("expired");
    let now = SystemTime::now();
    identity::issue_with(
        &ca,
        "node-b",
        &expired_dir,
        TD,
        IssueOptions {
            not_before: now - Duration::from_secs(2 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        },
    )
    .unwrap();
    server_refused(
        &handshake(a.server_config(), raw_client_from_dir(&expired_dir)).await,
        "certificate expired",
    );
    // Loading it is refused with the date, and names the file.
    let err = TlsIdentity::load(&expired_dir, TD, "node-b").unwrap_err();
    assert!(matches!(err, IdentityError::Expired { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("node.pem") && text.contains("expired at"),
        "{text}"
    );
}

#[tokio::test]
async fn the_server_refuses_a_client_without_a_certificate() {
    let pki = Pki::new();
    let a = pki.node(&pki.ca("ca"), "node-a");
    server_refused(
        &handshake(a.server_config(), raw_client(None)).await,
        "peer sent no certificates",
    );
}

#[tokio::test]
async fn the_server_refuses_a_certificate_without_a_netward_node_id() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let cases = [
        (
            vec![rcgen::SanType::DnsName("node-b".try_into().unwrap())],
            "no URI SAN",
        ),
        (
            vec![uri_san("spiffe://cluster.local/ns/default/sa/web")],
            "is not a netward node ID",
        ),
        (
            vec![uri_san("spiffe://other.domain/netward/node/node-b")],
            "not in trust domain cluster.local",
        ),
        (
            vec![
                uri_san("spiffe://cluster.local/netward/node/node-b"),
                uri_san("spiffe://cluster.local/netward/node/node-c"),
            ],
            "expected exactly one",
        ),
    ];
    for (sans, needle) in cases {
        let outcome = handshake(a.server_config(), raw_client(Some(custom_leaf(&ca, sans)))).await;
        server_refused(&outcome, needle);
        let err = outcome.server.unwrap_err();
        assert!(
            err.contains("netward node identity") || err.contains("trust domain"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_client_refuses_a_server_from_another_ca_or_without_a_node_id() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let b = pki.node(&ca, "node-b");
    let other = pki.ca("other-ca");
    let intruder = pki.node(&other, "node-a");
    client_refused(
        &handshake(intruder.server_config(), b.client_config()).await,
        "UnknownIssuer",
    );

    // Same CA, but a DNS name where the node ID belongs.
    let (chain, key) = custom_leaf(
        &ca,
        vec![rcgen::SanType::DnsName(
            "netward-tunnel.invalid".try_into().unwrap(),
        )],
    );
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    client_refused(
        &handshake(Arc::new(server), b.client_config()).await,
        "netward node identity",
    );
}

#[tokio::test]
async fn reissuing_in_place_changes_new_handshakes_and_keeps_live_connections() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let b = pki.node(&ca, "node-b");
    let addr = echo_server(a.server_config()).await;

    let mut live = connect(addr, b.client_config()).await;
    echo(&mut live, b"before rotation").await;
    let old_serial = a.serial();
    assert_eq!(server_serial(&live), old_serial);
    let old_not_after = a.not_after();

    assert!(!a.reload().unwrap(), "nothing changed yet");
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later not_after, to the second
    pki.issue(&ca, "node-a", "node-a");
    assert!(a.reload().unwrap());
    assert!(!a.reload().unwrap());
    assert_ne!(a.serial(), old_serial);
    assert!(a.not_after() > old_not_after);

    let mut fresh = connect(addr, b.client_config()).await;
    assert_eq!(
        server_serial(&fresh),
        a.serial(),
        "a new handshake presents the new certificate"
    );
    echo(&mut fresh, b"after rotation").await;
    // The connection established before the rotation keeps exchanging data.
    for i in 0..10 {
        echo(&mut live, format!("still alive {i}").as_bytes()).await;
    }
    assert_eq!(server_serial(&live), old_serial);
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_current_material() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let b = pki.node(&ca, "node-b");
    let dir = pki.path("node-a");
    let serial = a.serial();

    let good = fs::read(dir.join(NODE_CERT_FILE)).unwrap();
    fs::write(dir.join(NODE_CERT_FILE), b"not a certificate\n").unwrap();
    let err = a.reload().unwrap_err();
    assert!(
        matches!(err, IdentityError::NoCertificate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("node.pem"), "{err}");
    assert_eq!(a.serial(), serial);
    assert_ok(
        &handshake(a.server_config(), b.client_config()).await,
        "node-a",
        "node-b",
    );

    // A certificate for another node is refused with both names.
    pki.issue(&ca, "node-c", "node-a");
    let err = a.reload().unwrap_err();
    assert!(matches!(err, IdentityError::WrongNode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("\"node-c\"") && err.to_string().contains("\"node-a\""),
        "{err}"
    );

    // A key that is not the certificate's.
    pki.issue(&ca, "node-a", "node-a");
    fs::write(dir.join(NODE_CERT_FILE), &good).unwrap();
    let err = a.reload().unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
    assert_eq!(a.serial(), serial);
    assert_ok(
        &handshake(a.server_config(), b.client_config()).await,
        "node-a",
        "node-b",
    );
}

#[tokio::test]
async fn load_errors_name_the_file_and_the_problem() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other = pki.ca("other-ca");

    let err = TlsIdentity::load(&pki.path("nowhere"), TD, "node-a").unwrap_err();
    assert!(matches!(err, IdentityError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere/node.pem"), "{err}");

    let dir = pki.issue(&ca, "node-a", "node-a");
    let err = TlsIdentity::load(&dir, TD, "node-b").unwrap_err();
    assert!(matches!(err, IdentityError::WrongNode { .. }), "{err:?}");

    let err = TlsIdentity::load(&dir, "other.domain", "node-a").unwrap_err();
    assert!(
        err.to_string().contains("not in trust domain other.domain"),
        "{err}"
    );

    // A bundle of another CA: the leaf does not chain.
    fs::copy(other.join(CA_CERT_FILE), dir.join(TRUST_BUNDLE_FILE)).unwrap();
    let err = TlsIdentity::load(&dir, TD, "node-a").unwrap_err();
    assert!(matches!(err, IdentityError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("trust-bundle.pem"), "{err}");

    fs::write(
        dir.join(NODE_KEY_FILE),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = TlsIdentity::load(&dir, TD, "node-a").unwrap_err();
    assert!(matches!(err, IdentityError::NoKey { .. }), "{err:?}");

    let err = TlsIdentity::load(&dir, TD, "Bad_Name").unwrap_err();
    assert!(
        matches!(err, IdentityError::InvalidNodeName { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn trust_bundle_rotation_overlaps_then_drops_the_old_root() {
    let pki = Pki::new();
    let old_ca = pki.ca("old-ca");
    let new_ca = pki.ca("new-ca");
    // Overlap: every bundle holds both roots.
    fs::copy(new_ca.join(CA_CERT_FILE), old_ca.join(EXTRA_ROOTS_FILE)).unwrap();
    fs::copy(old_ca.join(CA_CERT_FILE), new_ca.join(EXTRA_ROOTS_FILE)).unwrap();
    let a = pki.node(&old_ca, "node-a");
    let b = pki.node(&new_ca, "node-b");
    assert_eq!(
        pem_certs(&pki.path("node-a").join(TRUST_BUNDLE_FILE)).len(),
        2
    );
    assert_ok(
        &handshake(a.server_config(), b.client_config()).await,
        "node-a",
        "node-b",
    );
    assert_ok(
        &handshake(b.server_config(), a.client_config()).await,
        "node-b",
        "node-a",
    );

    // End of the overlap for node-b: its bundle holds only the new root.
    fs::remove_file(new_ca.join(EXTRA_ROOTS_FILE)).unwrap();
    pki.issue(&new_ca, "node-b", "node-b");
    assert!(b.reload().unwrap());
    assert_eq!(
        pem_certs(&pki.path("node-b").join(TRUST_BUNDLE_FILE)).len(),
        1
    );
    server_refused(
        &handshake(b.server_config(), a.client_config()).await,
        "UnknownIssuer",
    );
    client_refused(
        &handshake(a.server_config(), b.client_config()).await,
        "UnknownIssuer",
    );

    // node-a moves to the new CA: they interoperate again.
    pki.issue(&new_ca, "node-a", "node-a");
    assert!(a.reload().unwrap());
    assert_ok(
        &handshake(a.server_config(), b.client_config()).await,
        "node-a",
        "node-b",
    );
    assert_ok(
        &handshake(b.server_config(), a.client_config()).await,
        "node-b",
        "node-a",
    );
}

#[tokio::test]
async fn the_reloader_picks_up_a_rotation() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let a = pki.node(&ca, "node-a");
    let old = a.serial();
    let reloader = a.spawn_reloader(Duration::from_millis(50));
    pki.issue(&ca, "node-a", "node-a");
    timeout(WAIT, async {
        while a.serial() == old {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the reloader did not pick up the new certificate");
    reloader.abort();
}

#[test]
fn csr_helpers_sign_the_requested_identity() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let (csr, key) = identity::make_csr("node-z", TD).unwrap();
    assert_eq!(identity::csr_node(&csr, TD).unwrap(), "node-z");
    let cert = identity::sign_csr(
        &fs::read_to_string(ca.join(CA_CERT_FILE)).unwrap(),
        &fs::read_to_string(ca.join(CA_KEY_FILE)).unwrap(),
        &csr,
        Duration::from_secs(3600),
    )
    .unwrap();
    let dir = pki.path("node-z");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(NODE_CERT_FILE), cert).unwrap();
    fs::write(dir.join(NODE_KEY_FILE), key).unwrap();
    fs::copy(ca.join(CA_CERT_FILE), dir.join(TRUST_BUNDLE_FILE)).unwrap();
    let z = TlsIdentity::load(&dir, TD, "node-z").unwrap();
    let left = z.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3500),
        "{left:?}"
    );
    assert!(identity::sign_csr("x", "y", &csr, Duration::from_secs(1)).is_err());
    assert!(identity::csr_node("not a csr", TD).is_err());
}

fn netward(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn netward_ca_init_and_issue_write_loadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("node-1");
    let (ca_s, out_s) = (ca.to_str().unwrap(), out.to_str().unwrap());

    let init = netward(&[
        "ca",
        "init",
        "--dir",
        ca_s,
        "--trust-domain",
        "lab.example",
        "--validity",
        "30d",
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(
        stdout.contains("ca.pem") && stdout.contains("ca-key.pem"),
        "{stdout}"
    );
    assert_eq!(mode(&ca.join(CA_KEY_FILE)), 0o600);

    let issue = netward(&[
        "ca",
        "issue",
        "--ca-dir",
        ca_s,
        "--node",
        "node-1",
        "--out",
        out_s,
        "--trust-domain",
        "lab.example",
        "--validity",
        "90m",
    ]);
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let stdout = String::from_utf8_lossy(&issue.stdout);
    for file in [
        NODE_CERT_FILE,
        NODE_KEY_FILE,
        TRUST_BUNDLE_FILE,
        "spiffe://lab.example/netward/node/node-1",
    ] {
        assert!(stdout.contains(file), "{file} missing from {stdout}");
    }
    assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
    let id = TlsIdentity::load(&out, "lab.example", "node-1").unwrap();
    let left = id.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(5400) && left > Duration::from_secs(5300),
        "{left:?}"
    );

    // Bad arguments: a usage error (2, as clap's), naming the flag; nothing written.
    for args in [
        vec![
            "ca", "issue", "--ca-dir", ca_s, "--node", "Node_1", "--out", out_s,
        ],
        vec![
            "ca",
            "issue",
            "--ca-dir",
            ca_s,
            "--node",
            "n",
            "--out",
            out_s,
            "--validity",
            "10x",
        ],
        vec![
            "ca",
            "init",
            "--dir",
            "/nonexistent/x",
            "--trust-domain",
            "UPPER",
        ],
    ] {
        let run = netward(&args);
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("--"), "{stderr}");
    }
    // Failures: 1, with the reason.
    let again = netward(&["ca", "init", "--dir", ca_s]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let no_ca = netward(&[
        "ca", "issue", "--ca-dir", out_s, "--node", "n", "--out", out_s,
    ]);
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("ca.pem does not exist"));
}
