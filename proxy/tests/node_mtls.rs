//! The node agent's mTLS building blocks against the in-process fake API server, with
//! `netward signer` running in-process: the certificate manager (CSR, trust bundle,
//! files, renewal, bundle changes) and the Lease advertisements (advertise, renew,
//! expiry, withdraw). No root, no namespaces. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use netward_controller::kube::fake::{FakeApi, FakeServer, UserInfo};
use netward_controller::kube::{self as source, SyncStatus};
use netward_proxy::mesh::Advertiser;
use netward_proxy::mtls::identity::{
    NODE_CERT_FILE, NODE_KEY_FILE, TRUST_BUNDLE_FILE, TlsIdentity,
};
use netward_proxy::mtls::kube_peers::{ADDR_ANNOTATION, LeaseConfig, LeasePeers, lease_name};
use netward_proxy::mtls::node_cert::{CertConfig, CertManager};
use netward_proxy::mtls::peers::Peers;
use netward_proxy::mtls::signer::{
    self, SignerConfig, SignerStatus, TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY,
};
use tokio::sync::watch;

const NS: &str = "netward-system";
const TD: &str = "cluster.local";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    fake: FakeApi,
    server: FakeServer,
    files: Vec<tempfile::NamedTempFile>,
}

impl Env {
    fn new() -> Env {
        let fake = FakeApi::new();
        let server = fake.start().unwrap();
        Env {
            fake,
            server,
            files: Vec::new(),
        }
    }

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
        self.files.push(file);
        client
    }

    /// netward's service account, with a token bound to its pod on `node`.
    async fn node_agent(&mut self, node: &str) -> Client {
        let user = UserInfo::service_account(
            NS,
            "netward",
            Some((&format!("netward-{node}"), &format!("uid-{node}"))),
            Some(node),
        );
        self.client_as(&format!("node-{node}"), user).await
    }

    async fn start_signer(&mut self) -> Arc<SignerStatus> {
        let (status, stop) = self.start_stoppable_signer("signer-a").await;
        std::mem::forget(stop);
        status
    }

    /// A signer that stops (releasing its Lease) when the sender is used or dropped.
    async fn start_stoppable_signer(
        &mut self,
        holder: &str,
    ) -> (Arc<SignerStatus>, tokio::sync::oneshot::Sender<()>) {
        let user = UserInfo::service_account(NS, "netward-signer", None, None);
        let client = self.client_as(&format!("signer-{holder}"), user).await;
        let status = Arc::new(SignerStatus::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = SignerConfig {
            holder: holder.to_owned(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(250),
            resync_every: Duration::from_secs(1),
            ..SignerConfig::default()
        };
        tokio::spawn(signer::run(client, cfg, status.clone(), async move {
            let _ = stopped.await;
        }));
        (status, stop)
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn approved_csrs(fake: &FakeApi, node: &str) -> usize {
    fake.list_all::<CertificateSigningRequest>()
        .into_iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("netward-node-{node}-")))
        })
        .filter(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Approved"))
        })
        .count()
}

fn cert_config(node: &str, dir: &std::path::Path) -> CertConfig {
    CertConfig {
        request_timeout: Duration::from_secs(10),
        bundle_every: Duration::from_millis(200),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        validity: Duration::from_secs(3600),
        ..CertConfig::new(node, NS, dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_gets_a_certificate_renews_it_and_follows_the_bundle() {
    let mut env = Env::new();
    let status = env.start_signer().await;
    eventually("the signer to lead", || status.is_leader()).await;
    let client = env.node_agent("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    let id_dir = dir.path().join("identity");
    let cfg = CertConfig {
        renew_after: Some(Duration::from_secs(1)),
        ..cert_config("node-a", &id_dir)
    };

    let manager = tokio::time::timeout(WAIT, CertManager::start(client, cfg))
        .await
        .expect("in time")
        .expect("a certificate");
    // The CSR went through the signer and was approved.
    assert_eq!(approved_csrs(&env.fake, "node-a"), 1);
    // The files: the key private, the identity loadable for this node.
    let mode = |f: &str| {
        std::fs::metadata(id_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(NODE_KEY_FILE), 0o600);
    assert!(
        std::fs::read_to_string(id_dir.join(NODE_CERT_FILE))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let identity = TlsIdentity::load(&id_dir, TD, "node-a").expect("the identity loads");
    assert_eq!(identity.node(), "node-a");
    let first_serial = identity.serial();
    let not_after = manager.not_after();
    assert!(not_after > std::time::SystemTime::now() + Duration::from_secs(3000));

    // Renewal (here 1 s after issue instead of at half-life): a new CSR, a new
    // certificate, picked up by reload.
    let task = manager.spawn();
    eventually("a renewal", || approved_csrs(&env.fake, "node-a") >= 2).await;
    eventually("the renewed certificate to load", || {
        identity.reload().is_ok() && identity.serial() != first_serial
    })
    .await;

    // A changed trust bundle in the ConfigMap is written.
    let mut cm: ConfigMap = env.fake.get(NS, TRUST_BUNDLE_CONFIGMAP).unwrap();
    let old = cm.data.as_ref().unwrap()[TRUST_BUNDLE_KEY].clone();
    let extra = rcgen::generate_simple_self_signed(vec!["extra.example".to_owned()])
        .unwrap()
        .cert
        .pem();
    let new = format!("{old}{extra}");
    cm.data = Some(BTreeMap::from([(TRUST_BUNDLE_KEY.to_owned(), new.clone())]));
    cm.metadata.resource_version = None;
    env.fake.apply(&cm);
    eventually("the new bundle on disk", || {
        std::fs::read_to_string(id_dir.join(TRUST_BUNDLE_FILE)).unwrap_or_default() == new
    })
    .await;
    assert!(
        identity.reload().is_ok(),
        "the identity still loads with the bigger bundle"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_without_a_signer_fails_in_bounded_time() {
    let mut env = Env::new();
    let client = env.node_agent("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = CertConfig {
        request_timeout: Duration::from_secs(1),
        ..cert_config("node-a", dir.path())
    };
    let start = Instant::now();
    let err = CertManager::start(client, cfg)
        .await
        .expect_err("no signer");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("no certificate"), "{err}");
}

fn fast_leases() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(300),
        expiry_check: Duration::from_millis(100),
        ..LeaseConfig::new(NS)
    }
}

async fn wait_peers(rx: &mut watch::Receiver<Arc<Peers>>, what: &str, f: impl Fn(&Peers) -> bool) {
    let ok = tokio::time::timeout(WAIT, rx.wait_for(|p| f(p)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(ok, "timed out waiting for {what}: {:?}", rx.borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_advertise_renew_expire_and_withdraw() {
    let mut env = Env::new();
    let a = Arc::new(LeasePeers::new(
        env.node_agent("node-a").await,
        fast_leases(),
    ));
    let b = Arc::new(LeasePeers::new(
        env.node_agent("node-b").await,
        fast_leases(),
    ));
    let mut feed = a.watch();
    let addr_a: SocketAddr = "10.0.0.1:15008".parse().unwrap();
    let addr_b: SocketAddr = "10.0.0.2:15008".parse().unwrap();

    a.advertise("node-a", addr_a).await.unwrap();
    b.advertise("node-b", addr_b).await.unwrap();
    wait_peers(&mut feed, "both nodes", |p| {
        p.get("node-a") == Some(addr_a) && p.get("node-b") == Some(addr_b) && p.len() == 2
    })
    .await;

    // The Lease as specified.
    let lease: Lease = env.fake.get(NS, &lease_name("node-b")).unwrap();
    assert_eq!(
        lease.metadata.name.as_deref(),
        Some("netward-tunnel-node-b")
    );
    assert_eq!(
        lease.metadata.annotations.as_ref().unwrap()[ADDR_ANNOTATION],
        "10.0.0.2:15008"
    );
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-b"));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(LeaseConfig::new(NS).lease_duration, Duration::from_secs(30));
    assert_eq!(LeaseConfig::new(NS).renew_every, Duration::from_secs(10));

    // Renewed: renewTime moves, and the advertisement outlives leaseDurationSeconds.
    let renewed = |env: &Env| {
        env.fake
            .get::<Lease>(NS, &lease_name("node-b"))
            .and_then(|l| l.spec?.renew_time)
            .map(|t| t.0)
    };
    let t0 = renewed(&env).unwrap();
    eventually("a renewal", || renewed(&env).is_some_and(|t| t > t0)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(feed.borrow().get("node-b"), Some(addr_b), "kept alive");

    // A Lease nobody renews expires out of the feed.
    let mut stale = lease.clone();
    stale.metadata.name = Some(lease_name("node-c"));
    stale.metadata.resource_version = None;
    let spec = stale.spec.as_mut().unwrap();
    spec.holder_identity = Some("node-c".to_owned());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    env.fake.apply(&stale);
    wait_peers(&mut feed, "node-c", |p| p.get("node-c").is_some()).await;
    wait_peers(&mut feed, "node-c to expire", |p| p.get("node-c").is_none()).await;
    assert!(env.fake.get::<Lease>(NS, &lease_name("node-c")).is_some());

    // Withdraw deletes the Lease, and stops renewing it.
    b.withdraw("node-b").await.unwrap();
    assert!(env.fake.get::<Lease>(NS, &lease_name("node-b")).is_none());
    wait_peers(&mut feed, "node-b gone", |p| {
        p.get("node-b").is_none() && p.get("node-a") == Some(addr_a)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        env.fake.get::<Lease>(NS, &lease_name("node-b")).is_none(),
        "not recreated by a renewal"
    );
    // Withdrawing twice is fine.
    b.withdraw("node-b").await.unwrap();
}

fn csrs(fake: &FakeApi, node: &str) -> usize {
    fake.list_all::<CertificateSigningRequest>()
        .into_iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("netward-node-{node}-")))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_retries_a_failed_renewal_with_backoff_and_recovers() {
    let mut env = Env::new();
    let (status, stop) = env.start_stoppable_signer("signer-a").await;
    eventually("the signer to lead", || status.is_leader()).await;
    let client = env.node_agent("node-a").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = CertConfig {
        renew_after: Some(Duration::from_millis(500)),
        request_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
        ..cert_config("node-a", dir.path())
    };
    let manager = CertManager::start(client, cfg).await.unwrap();
    let identity = TlsIdentity::load(dir.path(), TD, "node-a").unwrap();
    let first = identity.serial();
    // The signer goes away: renewals time out and are retried, each a new request.
    stop.send(()).unwrap();
    eventually("the signer to stop", || !status.is_leader()).await;
    let task = manager.spawn();
    eventually("three failed renewals", || csrs(&env.fake, "node-a") >= 4).await;
    assert_eq!(approved_csrs(&env.fake, "node-a"), 1);
    assert!(
        !identity.reload().unwrap(),
        "the files are untouched while renewals fail"
    );
    // A signer again: the next retry gets a certificate.
    let (status, _stop) = env.start_stoppable_signer("signer-b").await;
    eventually("the new signer to lead", || status.is_leader()).await;
    eventually("a renewed certificate", || {
        identity.reload().is_ok() && identity.serial() != first
    })
    .await;
    task.abort();
}
