//! `netward signer` against the in-process fake API server: the real kube-rs client, the
//! real CSR, Lease, Secret and ConfigMap calls. Plus unit tests of the pure policy
//! (`review`). Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use netward_controller::kube::fake::{FakeApi, FakeServer, UserInfo};
use netward_controller::kube::{self as source, SyncStatus};
use netward_proxy::mtls::identity;
use netward_proxy::mtls::signer::{
    self, CA_SECRET, LEASE_NAME, Refusal, SIGNER_NAME, SignerConfig, SignerError, SignerStatus,
    TRUST_BUNDLE_CONFIGMAP,
};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NS: &str = "netward-system";
const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    fake: FakeApi,
    server: FakeServer,
    _files: Vec<tempfile::NamedTempFile>,
}

impl Env {
    fn new() -> Env {
        let fake = FakeApi::new();
        let server = fake.start().unwrap();
        Env {
            fake,
            server,
            _files: Vec::new(),
        }
    }

    /// A client authenticated as `user`.
    async fn client_as(&mut self, token: &str, user: UserInfo) -> Client {
        self.fake.add_user(token, user);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            FakeApi::kubeconfig_with_token(self.server.addr, token),
        )
        .unwrap();
        let client = source::client(Some(file.path()), &Arc::new(SyncStatus::new()))
            .await
            .unwrap();
        self._files.push(file);
        client
    }

    /// The node agent of `node`: netward's service account, a token bound to a pod on it.
    async fn node_agent(&mut self, node: &str) -> Client {
        let user = UserInfo::service_account(
            NS,
            "netward",
            Some((&format!("netward-{node}"), &format!("uid-{node}"))),
            Some(node),
        );
        self.client_as(&format!("node-{node}"), user).await
    }

    async fn start_signer(&mut self, holder: &str) -> Signer {
        let user = UserInfo::service_account(NS, "netward-signer", None, None);
        let client = self.client_as(&format!("signer-{holder}"), user).await;
        let status = Arc::new(SignerStatus::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(signer::run(
            client,
            test_config(holder),
            status.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Signer {
            status,
            stop: Some(stop),
            task,
        }
    }

    fn lease_holder(&self) -> Option<String> {
        self.fake
            .get::<Lease>(NS, LEASE_NAME)
            .and_then(|l| l.spec?.holder_identity)
    }
}

struct Signer {
    status: Arc<SignerStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SignerError>>,
}

impl Signer {
    /// A graceful stop: the Lease is released.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the signer stops in time")
            .unwrap()
            .unwrap();
    }
}

fn test_config(holder: &str) -> SignerConfig {
    SignerConfig {
        holder: holder.to_owned(),
        lease_duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(250),
        resync_every: Duration::from_secs(1),
        ..SignerConfig::default()
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    pem.contents
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn request_csr(env: &Env, name_prefix: &str) -> CertificateSigningRequest {
    env.fake
        .list_all::<CertificateSigningRequest>()
        .into_iter()
        .find(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(name_prefix))
        })
        .expect("the CSR object exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_request_is_approved_and_signed_by_the_ca_in_the_secret() {
    let mut env = Env::new();
    let signer = env.start_signer("signer-a").await;
    eventually("the signer to lead", || signer.status.is_leader()).await;

    let node = env.node_agent("node-a").await;
    let (cert_pem, key_pem) =
        signer::request_certificate(node, "node-a", TD, Duration::from_secs(3600), WAIT)
            .await
            .unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));

    // The CA was generated on the first run and stored in the Secret.
    let secret: Secret = env.fake.get(NS, CA_SECRET).expect("the CA secret");
    let ca_pem = secret_text(&secret, "ca.pem");
    assert!(secret_text(&secret, "ca-key.pem").contains("PRIVATE KEY"));

    // The certificate chains to it (webpki, as the tunnel's verifier does) ...
    let ca_der = pem_der(&ca_pem);
    let leaf_der = pem_der(&cert_pem);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.clone())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(
            &CertificateDer::from(leaf_der.clone()),
            &[],
            UnixTime::now(),
        )
        .expect("the node certificate chains to the CA in the Secret");
    // ... and names the node (SPIFFE URI SAN), for at most the asked validity.
    let leaf = CertificateDer::from(leaf_der.clone());
    assert_eq!(identity::node_from_cert(&leaf, TD).unwrap(), "node-a");
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    x509.verify_signature(Some(ca.public_key())).unwrap();
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, ["URI(spiffe://cluster.local/netward/node/node-a)"]);
    let lifetime = x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
    assert!(lifetime <= 3600 + 5 * 60, "{lifetime}");

    // The CSR object: approved, with the certificate.
    let csr = request_csr(&env, "netward-node-node-a-");
    let conditions = csr.status.unwrap().conditions.unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].type_, "Approved");

    // The trust bundle holds the CA.
    eventually("the trust bundle", || {
        env.fake
            .get::<ConfigMap>(NS, TRUST_BUNDLE_CONFIGMAP)
            .is_some()
    })
    .await;
    let cm: ConfigMap = env.fake.get(NS, TRUST_BUNDLE_CONFIGMAP).unwrap();
    let bundle = &cm.data.unwrap()["trust-bundle.pem"];
    assert_eq!(pem_der(bundle), ca_der);

    assert_eq!(signer.status.signed(), 1);
    assert_eq!(signer.status.refused(), 0);
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_from_another_service_account_is_denied_naming_the_username() {
    let mut env = Env::new();
    let signer = env.start_signer("signer-a").await;
    eventually("the signer to lead", || signer.status.is_leader()).await;

    let evil = env
        .client_as(
            "evil",
            UserInfo::service_account("default", "evil", None, Some("node-a")),
        )
        .await;
    let err = signer::request_certificate(evil, "node-a", TD, Duration::from_secs(3600), WAIT)
        .await
        .unwrap_err();
    let SignerError::Refused {
        condition,
        reason,
        message,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(condition, "Denied");
    assert_eq!(reason, "NotNetwardServiceAccount");
    assert!(
        message.contains(
            "username system:serviceaccount:default:evil is not netward's service account"
        ),
        "{message}"
    );
    let csr = request_csr(&env, "netward-node-node-a-");
    assert!(csr.status.unwrap().certificate.is_none(), "never signed");
    assert_eq!(signer.status.signed(), 0);
    assert_eq!(signer.status.refused(), 1);
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn san_naming_another_node_is_denied_naming_both_nodes() {
    let mut env = Env::new();
    let signer = env.start_signer("signer-a").await;
    eventually("the signer to lead", || signer.status.is_leader()).await;

    // The node agent on node-b asks for node-a's identity.
    let node_b = env.node_agent("node-b").await;
    let err = signer::request_certificate(node_b, "node-a", TD, Duration::from_secs(3600), WAIT)
        .await
        .unwrap_err();
    let SignerError::Refused {
        condition, message, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(condition, "Denied");
    assert!(
        message.contains("node-a") && message.contains("node-b"),
        "{message}"
    );
    assert_eq!(
        message,
        "the SAN names node node-a but the request comes from node node-b"
    );
    let csr = request_csr(&env, "netward-node-node-a-");
    assert!(csr.status.unwrap().certificate.is_none(), "never signed");
    assert_eq!(signer.status.signed(), 0);
    signer.stop().await;
}

fn pod(name: &str, uid: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            uid: Some(uid.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_node_name_the_requesting_pod_is_looked_up() {
    let mut env = Env::new();
    env.fake.apply(&pod("netward-x1", "uid-x1", "node-a"));
    let signer = env.start_signer("signer-a").await;
    eventually("the signer to lead", || signer.status.is_leader()).await;

    // A token bound to a pod, without the node-name extra (older API servers).
    let user = UserInfo::service_account(NS, "netward", Some(("netward-x1", "uid-x1")), None);
    let client = env.client_as("pod-x1", user).await;
    signer::request_certificate(client.clone(), "node-a", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap();
    let err = signer::request_certificate(client, "node-c", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the SAN names node node-c but the request comes from node node-a"),
        "{err}"
    );

    // A pod that was replaced (same name, another uid) vouches for nothing.
    let user = UserInfo::service_account(NS, "netward", Some(("netward-x1", "uid-old")), None);
    let client = env.client_as("pod-x1-old", user).await;
    let err = signer::request_certificate(client, "node-a", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the pod was replaced"), "{err}");
    assert_eq!(signer.status.signed(), 1);
    assert_eq!(signer.status.refused(), 2);
    signer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_signs_and_another_replica_takes_over() {
    let mut env = Env::new();
    let a = env.start_signer("signer-a").await;
    eventually("signer-a to lead", || a.status.is_leader()).await;
    let b = env.start_signer("signer-b").await;

    // For longer than a lease duration, b follows and a keeps the lease.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(a.status.is_leader(), "a keeps leading");
        assert!(!b.status.is_leader(), "b never leads while a renews");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.lease_holder().as_deref(), Some("signer-a"));

    let node = env.node_agent("node-a").await;
    signer::request_certificate(node.clone(), "node-a", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap();
    assert_eq!((a.status.signed(), b.status.signed()), (1, 0));

    // a crashes (no release): b takes over once the lease has expired.
    a.task.abort();
    let crashed = Instant::now();
    eventually("signer-b to take over", || b.status.is_leader()).await;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "not before expiry: {took:?}"
    );
    assert_eq!(env.lease_holder().as_deref(), Some("signer-b"));
    let lease = env.fake.get::<Lease>(NS, LEASE_NAME).unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));

    signer::request_certificate(node.clone(), "node-a", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap();
    assert_eq!((a.status.signed(), b.status.signed()), (1, 1));

    // A graceful stop releases the lease at once; a new replica leads without waiting.
    b.stop().await;
    assert_eq!(env.lease_holder(), None);
    let c = env.start_signer("signer-c").await;
    let stopped = Instant::now();
    eventually("signer-c to lead", || c.status.is_leader()).await;
    assert!(stopped.elapsed() < Duration::from_millis(1500));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_ca_secret_is_used_and_extra_roots_are_published() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    let ca = identity::init_ca(dir.path(), TD, Duration::from_secs(86400)).unwrap();
    let old_ca = identity::init_ca(old.path(), TD, Duration::from_secs(86400)).unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    env.fake.apply(&Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(NS.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            ("ca.pem".to_owned(), ByteString(read(&ca.cert))),
            ("ca-key.pem".to_owned(), ByteString(read(&ca.key))),
            (
                "trust-bundle-extra.pem".to_owned(),
                ByteString(read(&old_ca.cert)),
            ),
        ])),
        ..Secret::default()
    });
    let signer = env.start_signer("signer-a").await;
    eventually("the trust bundle", || {
        env.fake
            .get::<ConfigMap>(NS, TRUST_BUNDLE_CONFIGMAP)
            .is_some()
    })
    .await;
    let cm: ConfigMap = env.fake.get(NS, TRUST_BUNDLE_CONFIGMAP).unwrap();
    let bundle = cm.data.unwrap()["trust-bundle.pem"].clone();
    let ca_pem = String::from_utf8(read(&ca.cert)).unwrap();
    let old_pem = String::from_utf8(read(&old_ca.cert)).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert!(bundle.starts_with(ca_pem.trim()));
    assert!(bundle.contains(old_pem.trim()));

    let node = env.node_agent("node-a").await;
    let (cert, _) = signer::request_certificate(node, "node-a", TD, Duration::from_secs(600), WAIT)
        .await
        .unwrap();
    let leaf_der = pem_der(&cert);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let ca_der = pem_der(&ca_pem);
    let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    leaf.verify_signature(Some(ca_x509.public_key())).unwrap();
    signer.stop().await;
}

// ---------------------------------------------------------------------------------------
// review(): the pure policy

fn csr_object(csr_pem: &str, extra: &[(&str, &str)]) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some("netward-node-node-a-0001".to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: SIGNER_NAME.to_owned(),
            username: Some("system:serviceaccount:netward-system:netward".to_owned()),
            usages: Some(
                ["digital signature", "server auth", "client auth"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            expiration_seconds: Some(3600),
            extra: Some(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                    .collect(),
            ),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

fn valid_csr() -> CertificateSigningRequest {
    let (pem, _) = identity::make_csr("node-a", TD).unwrap();
    csr_object(&pem, &[(signer::EXTRA_NODE_NAME, "node-a")])
}

fn csr_with(sans: Vec<SanType>, alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn node_uri(node: &str) -> SanType {
    SanType::URI(identity::spiffe_id(TD, node).try_into().unwrap())
}

#[test]
fn review_approves_a_valid_request() {
    let approved = signer::review(&valid_csr(), &SignerConfig::default()).unwrap();
    assert_eq!(approved.node, "node-a");
    assert_eq!(
        approved.spiffe_id,
        "spiffe://cluster.local/netward/node/node-a"
    );
    assert_eq!(approved.validity, Duration::from_secs(3600));
    // Never longer than the configured maximum.
    let mut csr = valid_csr();
    csr.spec.expiration_seconds = Some(10 * 86400);
    let approved = signer::review(&csr, &SignerConfig::default()).unwrap();
    assert_eq!(approved.validity, Duration::from_secs(86400));
}

#[test]
fn review_denies_an_extra_dns_san() {
    let pem = csr_with(
        vec![
            node_uri("node-a"),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let csr = csr_object(&pem, &[(signer::EXTRA_NODE_NAME, "node-a")]);
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert!(matches!(refusal, Refusal::BadSans { .. }), "{refusal:?}");
    assert!(
        refusal.to_string().contains("DNS name evil.example"),
        "{refusal}"
    );
}

#[test]
fn review_denies_an_ip_san_and_two_uris() {
    let pem = csr_with(
        vec![node_uri("node-a"), SanType::IpAddress([10, 0, 0, 1].into())],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let csr = csr_object(&pem, &[(signer::EXTRA_NODE_NAME, "node-a")]);
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert!(
        refusal.to_string().contains("IP address 10.0.0.1"),
        "{refusal}"
    );

    let pem = csr_with(
        vec![node_uri("node-a"), node_uri("node-b")],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let csr = csr_object(&pem, &[(signer::EXTRA_NODE_NAME, "node-a")]);
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert!(refusal.to_string().contains("2 URI SANs"), "{refusal}");
}

#[test]
fn review_refuses_another_signer_name() {
    let mut csr = valid_csr();
    csr.spec.signer_name = "kubernetes.io/kube-apiserver-client".to_owned();
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::WrongSigner {
            signer_name: "kubernetes.io/kube-apiserver-client".to_owned()
        }
    );
    assert_eq!(refusal.reason(), "WrongSignerName");
}

#[test]
fn review_denies_a_request_without_node_information() {
    let (pem, _) = identity::make_csr("node-a", TD).unwrap();
    let csr = csr_object(&pem, &[]);
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert_eq!(refusal, Refusal::NoNode);
    // A pod name alone needs the pod: review() does not look it up.
    let csr = csr_object(&pem, &[(signer::EXTRA_POD_NAME, "netward-x1")]);
    let refusal = signer::review(&csr, &SignerConfig::default()).unwrap_err();
    assert!(matches!(refusal, Refusal::BadPod { .. }), "{refusal:?}");
    // With the pod, its node counts.
    let p = pod("netward-x1", "uid-x1", "node-a");
    let approved = signer::review_with_pod(&csr, &SignerConfig::default(), Some(&p)).unwrap();
    assert_eq!(approved.node, "node-a");
    let p = pod("netward-x1", "uid-x1", "node-b");
    let refusal = signer::review_with_pod(&csr, &SignerConfig::default(), Some(&p)).unwrap_err();
    assert!(
        matches!(refusal, Refusal::NodeMismatch { .. }),
        "{refusal:?}"
    );
}

#[test]
fn review_denies_other_keys_usages_users_and_trust_domains() {
    let cfg = SignerConfig::default();
    let extra = [(signer::EXTRA_NODE_NAME, "node-a")];

    let pem = csr_with(vec![node_uri("node-a")], &rcgen::PKCS_ECDSA_P384_SHA384);
    let refusal = signer::review(&csr_object(&pem, &extra), &cfg).unwrap_err();
    assert!(matches!(refusal, Refusal::BadKey { .. }), "{refusal:?}");

    let mut csr = valid_csr();
    csr.spec.usages = Some(vec![
        "client auth".to_owned(),
        "key encipherment".to_owned(),
    ]);
    let refusal = signer::review(&csr, &cfg).unwrap_err();
    assert!(matches!(refusal, Refusal::BadUsages { .. }), "{refusal:?}");

    let mut csr = valid_csr();
    csr.spec.username = Some("system:node:node-a".to_owned());
    let refusal = signer::review(&csr, &cfg).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "username system:node:node-a is not netward's service account system:serviceaccount:netward-system:netward"
    );

    let (pem, _) = identity::make_csr("node-a", "other.example").unwrap();
    let refusal = signer::review(&csr_object(&pem, &extra), &cfg).unwrap_err();
    assert!(matches!(refusal, Refusal::BadSans { .. }), "{refusal:?}");

    let mut csr = valid_csr();
    csr.spec.request = ByteString(
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
    );
    let refusal = signer::review(&csr, &cfg).unwrap_err();
    assert!(matches!(refusal, Refusal::BadCsr { .. }), "{refusal:?}");
}
