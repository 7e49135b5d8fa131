//! `netward signer`: signs netward's node-tunnel CertificateSigningRequests.
//!
//! - **Policy** ([`review`]): a pure function of the CSR object. It approves only a
//!   request for [`SIGNER_NAME`] from netward's service account whose requesting node
//!   (the `authentication.kubernetes.io/node-name` extra of a bound token, or else the
//!   node of the pod named in `authentication.kubernetes.io/pod-name`) is the node named
//!   by the request's one SAN, a SPIFFE URI `spiffe://<trust-domain>/netward/node/<node>`,
//!   with an ECDSA P-256 key and the usages `digital signature`, `server auth`,
//!   `client auth` exactly. Anything else is denied with a reason naming what is wrong.
//! - **Controller** ([`run`]): replicas elect a leader on the Lease [`LEASE_NAME`]
//!   (15 s lease, renewed every 5 s, taken over once it has not been renewed for a lease
//!   duration, released on shutdown); only the leader approves, denies and signs. It
//!   list-watches the CSRs of its signerName and handles every pending one.
//! - **CA**: the Secret [`CA_SECRET`] (`ca.pem`, `ca-key.pem`, and optionally
//!   `trust-bundle-extra.pem`: more roots to trust). On the first run, if the Secret does
//!   not exist, the leader generates an ECDSA P-256 CA (valid one year) and creates it.
//!   The leader publishes the trust bundle (`ca.pem` then the extra roots) in the
//!   ConfigMap [`TRUST_BUNDLE_CONFIGMAP`] (key `trust-bundle.pem`) and re-reads the Secret
//!   on every signature and every resync (60 s).
//! - **CA rotation** without a flag day: (1) add the new CA certificate to
//!   `trust-bundle-extra.pem`; the bundle now holds both roots; wait until every node has
//!   reloaded it. (2) Put the new CA in `ca.pem`/`ca-key.pem` and the old certificate in
//!   `trust-bundle-extra.pem`; new certificates come from the new CA, both are trusted.
//!   (3) Once every node has renewed (one certificate lifetime, 24 h), remove the old root.
//! - **Requesting** ([`request_certificate`]): what the node agent calls: a new key
//!   that never leaves the node, a CSR object, a bounded wait for the certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_COMMON_NAME};
use x509_parser::prelude::FromDer;

use super::identity::{self, IdentityError};

pub use netward_controller::kube::signer_api::{
    CA_SECRET, LEASE_NAME, SIGNER_API, SIGNER_NAME, TRUST_BUNDLE_CONFIGMAP,
};

/// The user-info extra a bound service-account token carries: the node of its pod.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The user-info extra a bound service-account token carries: its pod's name.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The user-info extra a bound service-account token carries: its pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The CA certificate's key in the CA Secret.
pub const CA_CERT_KEY: &str = "ca.pem";
/// The CA private key's key in the CA Secret.
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// Optional key of the CA Secret: more roots to trust (the old CA during a rotation).
pub const EXTRA_ROOTS_KEY: &str = "trust-bundle-extra.pem";
/// The trust bundle's key in the trust-bundle ConfigMap.
pub const TRUST_BUNDLE_KEY: &str = "trust-bundle.pem";
/// The usages a node-tunnel request must ask for, exactly (any order).
pub const USAGES: &[&str] = &["digital signature", "server auth", "client auth"];
/// The shortest certificate the API lets a request ask for (`expirationSeconds`).
pub const MIN_VALIDITY: Duration = Duration::from_secs(600);

/// Errors of the signer and of certificate requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// An API call failed.
    #[error("cannot {action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Making the key or CSR, or signing, failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Generating the CA failed.
    #[error("cannot generate the CA: {0}")]
    Generate(#[source] rcgen::Error),
    /// The CA Secret is unusable.
    #[error(
        "the CA Secret {namespace}/{name} is unusable: {reason} (it needs {CA_CERT_KEY} and {CA_KEY_KEY}; delete it to have a new CA generated)"
    )]
    CaSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The signer refused the request (`Denied`) or failed it (`Failed`).
    #[error("certificate request {name} was {condition}: {reason}: {message}")]
    Refused {
        /// The CSR object.
        name: String,
        /// `Denied` or `Failed`.
        condition: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// No certificate came in time.
    #[error(
        "no certificate for request {name} after {waited:?}; is `netward signer` running and leading (kubectl -n netward-system get deploy,lease netward-signer)?"
    )]
    Timeout {
        /// The CSR object.
        name: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The issued certificate does not fit the request.
    #[error("the certificate issued for request {name} is unusable: {reason}")]
    BadCertificate {
        /// The CSR object.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = SignerError> = std::result::Result<T, E>;

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SignerError {
    let action = action.into();
    move |source| SignerError::Kube { action, source }
}

/// The signer's configuration, validated by `netward signer`.
#[derive(Clone, Debug)]
pub struct SignerConfig {
    /// netward's namespace: its service account, pods, CA Secret, Lease, ConfigMap.
    pub namespace: String,
    /// The node agent's service account (in `namespace`).
    pub service_account: String,
    /// The SPIFFE trust domain of node identities.
    pub trust_domain: String,
    /// The longest certificate issued; a request's `expirationSeconds` may shorten it.
    pub max_validity: Duration,
    /// A generated CA's validity.
    pub ca_validity: Duration,
    /// This replica's identity in the Lease (the pod name).
    pub holder: String,
    /// The Lease's duration: another replica takes over after this long without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews (and a follower retries).
    pub renew_every: Duration,
    /// How often the leader re-reads the CA and republishes the trust bundle.
    pub resync_every: Duration,
}

impl Default for SignerConfig {
    fn default() -> SignerConfig {
        SignerConfig {
            namespace: "netward-system".to_owned(),
            service_account: "netward".to_owned(),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            max_validity: identity::DEFAULT_NODE_VALIDITY,
            ca_validity: identity::DEFAULT_CA_VALIDITY,
            holder: "netward-signer".to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            resync_every: Duration::from_secs(60),
        }
    }
}

impl SignerConfig {
    /// The username the API server records for netward's service account.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// A request [`review`] approves: what to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedRequest {
    /// The CSR object's name.
    pub name: String,
    /// The node, which the SAN and the requester agree on.
    pub node: String,
    /// The SPIFFE ID the certificate carries.
    pub spiffe_id: String,
    /// How long the certificate is valid.
    pub validity: Duration,
    /// The PEM CSR to sign.
    pub csr_pem: String,
}

/// Why [`review`] refuses a request. The display text is the condition's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Another signer's request (the controller never touches these).
    #[error("signerName {signer_name} is not {SIGNER_NAME}")]
    WrongSigner {
        /// The request's signerName.
        signer_name: String,
    },
    /// The API server recorded another user.
    #[error("username {username} is not netward's service account {expected}")]
    WrongUser {
        /// Who asked.
        username: String,
        /// Who may.
        expected: String,
    },
    /// Neither a node name nor a pod name in the user info.
    #[error(
        "the requester's user info names no node ({EXTRA_NODE_NAME}) and no pod ({EXTRA_POD_NAME}): use a bound service-account token"
    )]
    NoNode,
    /// The user info's pod cannot vouch for a node.
    #[error("the requesting pod {pod}: {reason}")]
    BadPod {
        /// `namespace/name`.
        pod: String,
        /// What is wrong.
        reason: String,
    },
    /// `spec.request` is not a valid signed PKCS#10 request.
    #[error("spec.request is not a valid certificate signing request: {reason}")]
    BadCsr {
        /// What is wrong.
        reason: String,
    },
    /// The key is not ECDSA P-256.
    #[error("the key is {found}, netward node keys are ECDSA P-256")]
    BadKey {
        /// What the request holds.
        found: String,
    },
    /// The SANs are not exactly one netward SPIFFE URI.
    #[error("the request must carry exactly one SAN, the URI {expected_form}: {reason}")]
    BadSans {
        /// `spiffe://<trust-domain>/netward/node/<node>`.
        expected_form: String,
        /// What it carries instead.
        reason: String,
    },
    /// The subject carries more than `CN=<node>`.
    #[error("the subject {subject} is not empty or CN={node}")]
    BadSubject {
        /// The requested subject.
        subject: String,
        /// The node of the SAN.
        node: String,
    },
    /// The request asks for a CA certificate.
    #[error("the request asks for a CA certificate")]
    CaRequested,
    /// The usages are not the node-tunnel ones.
    #[error("usages {usages:?} are not exactly {USAGES:?}")]
    BadUsages {
        /// What it asks for.
        usages: Vec<String>,
    },
    /// The SAN names another node than the requester's.
    #[error("the SAN names node {san_node} but the request comes from node {requester_node}")]
    NodeMismatch {
        /// The node in the SAN.
        san_node: String,
        /// The node the requester runs on.
        requester_node: String,
    },
}

impl Refusal {
    /// The condition's `reason`: a CamelCase word for this kind of refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::WrongSigner { .. } => "WrongSignerName",
            Refusal::WrongUser { .. } => "NotNetwardServiceAccount",
            Refusal::NoNode => "RequesterNodeUnknown",
            Refusal::BadPod { .. } => "RequesterPodInvalid",
            Refusal::BadCsr { .. } => "InvalidRequest",
            Refusal::BadKey { .. } => "KeyNotP256",
            Refusal::BadSans { .. } => "SANsNotOneNodeID",
            Refusal::BadSubject { .. } => "SubjectNotAllowed",
            Refusal::CaRequested => "CARequested",
            Refusal::BadUsages { .. } => "UsagesNotAllowed",
            Refusal::NodeMismatch { .. } => "NodeMismatch",
        }
    }
}

/// Reviews a request without looking anything up: a request whose user info names only
/// a pod is refused ([`Refusal::BadPod`]); the controller looks the pod up and calls
/// [`review_with_pod`].
pub fn review(
    csr: &CertificateSigningRequest,
    cfg: &SignerConfig,
) -> Result<ApprovedRequest, Refusal> {
    review_with_pod(csr, cfg, None)
}

/// Reviews a request; `pod` is the pod named by its `authentication.kubernetes.io/pod-name`
/// extra, looked up in netward's namespace (`None`: not found). Pure.
pub fn review_with_pod(
    csr: &CertificateSigningRequest,
    cfg: &SignerConfig,
    pod: Option<&Pod>,
) -> Result<ApprovedRequest, Refusal> {
    let spec = &csr.spec;
    if spec.signer_name != SIGNER_NAME {
        return Err(Refusal::WrongSigner {
            signer_name: spec.signer_name.clone(),
        });
    }
    let expected = cfg.username();
    let username = spec.username.clone().unwrap_or_default();
    if username != expected {
        return Err(Refusal::WrongUser { username, expected });
    }
    let csr_pem = std::str::from_utf8(&spec.request.0)
        .map_err(|_| Refusal::BadCsr {
            reason: "not UTF-8 PEM".to_owned(),
        })?
        .to_owned();
    let san_node = check_csr(&csr_pem, &cfg.trust_domain)?;
    check_usages(spec)?;
    let requester_node = requester_node(spec, &cfg.namespace, pod)?;
    if requester_node != san_node {
        return Err(Refusal::NodeMismatch {
            san_node,
            requester_node,
        });
    }
    let requested = spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(cfg.max_validity, Duration::from_secs);
    Ok(ApprovedRequest {
        name: csr.metadata.name.clone().unwrap_or_default(),
        spiffe_id: identity::spiffe_id(&cfg.trust_domain, &san_node),
        node: san_node,
        validity: requested.clamp(MIN_VALIDITY, cfg.max_validity.max(MIN_VALIDITY)),
        csr_pem,
    })
}

fn check_usages(spec: &CertificateSigningRequestSpec) -> Result<(), Refusal> {
    let usages = spec.usages.clone().unwrap_or_default();
    let asked: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    if asked != USAGES.iter().copied().collect() {
        return Err(Refusal::BadUsages { usages });
    }
    Ok(())
}

/// The requesting node: the token's node-name extra, or the node of its pod.
fn requester_node(
    spec: &CertificateSigningRequestSpec,
    namespace: &str,
    pod: Option<&Pod>,
) -> Result<String, Refusal> {
    let extra = |key: &str| -> Option<&Vec<String>> { spec.extra.as_ref()?.get(key) };
    if let Some(values) = extra(EXTRA_NODE_NAME) {
        return match values.as_slice() {
            [node] if !node.is_empty() => Ok(node.clone()),
            _ => Err(Refusal::NoNode),
        };
    }
    let Some(pod_name) = extra(EXTRA_POD_NAME).and_then(|v| match v.as_slice() {
        [name] if !name.is_empty() => Some(name.clone()),
        _ => None,
    }) else {
        return Err(Refusal::NoNode);
    };
    let bad = |reason: String| Refusal::BadPod {
        pod: format!("{namespace}/{pod_name}"),
        reason,
    };
    let Some(pod) = pod else {
        return Err(bad("not found".to_owned()));
    };
    let meta = &pod.metadata;
    if meta.name.as_deref() != Some(pod_name.as_str())
        || meta.namespace.as_deref() != Some(namespace)
    {
        return Err(bad(format!(
            "the pod looked up is {}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )));
    }
    if let Some([uid]) = extra(EXTRA_POD_UID).map(Vec::as_slice)
        && meta.uid.as_deref() != Some(uid.as_str())
    {
        return Err(bad(format!(
            "its uid is {}, the token's is {uid} (the pod was replaced)",
            meta.uid.as_deref().unwrap_or("none")
        )));
    }
    match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        Some(node) if !node.is_empty() => Ok(node),
        _ => Err(bad("it is not scheduled on a node".to_owned())),
    }
}

/// Checks the PKCS#10 request itself; returns the node its SAN names.
fn check_csr(csr_pem: &str, trust_domain: &str) -> Result<String, Refusal> {
    let bad = |reason: String| Refusal::BadCsr { reason };
    // The signature (and rcgen's own limits on extensions) first.
    rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| bad(e.to_string()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(bad(format!(
            "a PEM {} block, not a CERTIFICATE REQUEST",
            pem.label
        )));
    }
    let (_, req) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|e| bad(e.to_string()))?;
    let info = &req.certification_request_info;

    let spki = &info.subject_pki.algorithm;
    let curve = spki.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        return Err(Refusal::BadKey {
            found: match curve {
                Some(curve) => format!("{} on {curve}", spki.algorithm),
                None => spki.algorithm.to_string(),
            },
        });
    }

    let expected_form = identity::spiffe_id(trust_domain, "<node>");
    let bad_sans = |reason: String| Refusal::BadSans {
        expected_form: expected_form.clone(),
        reason,
    };
    let mut uris = Vec::new();
    let mut others = Vec::new();
    for ext in req.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                        GeneralName::DNSName(dns) => others.push(format!("DNS name {dns}")),
                        GeneralName::IPAddress(ip) => {
                            others.push(format!("IP address {}", ip_text(ip)));
                        }
                        GeneralName::RFC822Name(mail) => others.push(format!("email {mail}")),
                        other => others.push(format!("{other:?}")),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(Refusal::CaRequested),
            _ => {}
        }
    }
    if !others.is_empty() {
        return Err(bad_sans(format!("it also has {}", others.join(", "))));
    }
    let [uri] = uris.as_slice() else {
        return Err(bad_sans(format!("it has {} URI SANs {uris:?}", uris.len())));
    };
    let prefix = identity::spiffe_id(trust_domain, "");
    let node = uri.strip_prefix(&prefix).ok_or_else(|| {
        bad_sans(format!(
            "{uri} is not a node ID of trust domain {trust_domain}"
        ))
    })?;
    identity::validate_node_name(node).map_err(|e| bad_sans(format!("{uri}: {e}")))?;

    let mut attributes = info.subject.iter_attributes();
    let subject_ok = attributes
        .all(|a| a.attr_type() == &OID_X509_COMMON_NAME && a.as_str().is_ok_and(|cn| cn == node));
    if !subject_ok {
        return Err(Refusal::BadSubject {
            subject: info.subject.to_string(),
            node: node.to_owned(),
        });
    }
    Ok(node.to_owned())
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).map_or_else(
            |_| format!("{bytes:?}"),
            |b| std::net::Ipv4Addr::from(b).to_string(),
        ),
        16 => <[u8; 16]>::try_from(bytes).map_or_else(
            |_| format!("{bytes:?}"),
            |b| std::net::Ipv6Addr::from(b).to_string(),
        ),
        _ => format!("{bytes:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The controller

/// What a running signer has done, for tests and logs. Counters only grow.
#[derive(Debug, Default)]
pub struct SignerStatus {
    leader: AtomicBool,
    signed: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

impl SignerStatus {
    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
    /// Certificates issued.
    pub fn signed(&self) -> u64 {
        self.signed.load(Ordering::Acquire)
    }
    /// Requests denied or failed.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Acquire)
    }
    /// API or signing errors (each retried or logged).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Acquire)
    }
}

/// Runs the signer until `shutdown` completes: leader election, and while leading, the
/// CA, the trust bundle and the CSRs. On shutdown the Lease is released, so that
/// another replica takes over at once.
pub async fn run(
    client: Client,
    cfg: SignerConfig,
    status: Arc<SignerStatus>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let election = elect(
        leases,
        cfg.clone(),
        status.clone(),
        leader_tx,
        stop_rx.clone(),
    );
    let work = async {
        let mut leader_rx = leader_rx;
        loop {
            if leader_rx.wait_for(|l| *l).await.is_err() {
                return;
            }
            info!(holder = %cfg.holder, "leading: signing node-tunnel certificates");
            lead(&client, &cfg, &status, &mut leader_rx).await;
            info!(holder = %cfg.holder, "no longer leading");
        }
    };
    let mut election = pin!(election);
    tokio::select! {
        () = shutdown => {}
        () = work => {}
        () = &mut election => {}
    }
    // Stop leading first, then release the Lease (the election loop sees the stop).
    let _ = stop_tx.send(true);
    election.await;
    Ok(())
}

/// Leader election on the Lease: acquire, renew, take over an expired one, release on
/// stop. Leadership is published on `leader`; it is dropped before the Lease could
/// expire when renewals fail.
async fn elect(
    api: Api<Lease>,
    cfg: SignerConfig,
    status: Arc<SignerStatus>,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let set = |is: bool| {
        status.leader.store(is, Ordering::Release);
        leader.send_if_modified(|l| std::mem::replace(l, is) != is);
    };
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    // Step down when renewals have failed for 2/3 of the lease (client-go's
    // renewDeadline): before any other replica may take over.
    let deadline = cfg.lease_duration * 2 / 3;
    loop {
        match try_acquire(&api, &cfg, &mut observed).await {
            Ok(true) => {
                if last_renew.is_none() {
                    info!(lease = LEASE_NAME, holder = %cfg.holder, "acquired the lease");
                }
                last_renew = Some(Instant::now());
                set(true);
            }
            Ok(false) => {
                if last_renew.take().is_some() {
                    warn!(lease = LEASE_NAME, holder = %cfg.holder, "lost the lease");
                }
                set(false);
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                warn!(lease = LEASE_NAME, error = %e, "lease renewal failed");
                if last_renew.is_some_and(|t| t.elapsed() >= deadline) {
                    warn!(lease = LEASE_NAME, "stepping down: renewals failed");
                    last_renew = None;
                    set(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.renew_every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let was_leader = *leader.borrow();
    set(false);
    if was_leader {
        match release(&api, &cfg).await {
            Ok(()) => info!(lease = LEASE_NAME, "released the lease"),
            Err(e) => warn!(lease = LEASE_NAME, error = %e, "cannot release the lease"),
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: true if this replica holds the Lease afterwards.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &SignerConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool> {
    let me = cfg.holder.as_str();
    let Some(lease) = api
        .get_opt(LEASE_NAME)
        .await
        .map_err(kube_err("read the lease"))?
    else {
        let now = micro_now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_owned()),
                lease_duration_seconds: Some(secs_i32(cfg.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
            Err(e) => Err(kube_err("create the lease")(e)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    // Expiry by local observation (as client-go): the record must stay unchanged for a
    // whole lease duration, whatever the clocks of the other replicas say.
    let record = format!(
        "{holder}|{:?}|{}",
        spec.renew_time.as_ref().map(|t| t.0),
        lease
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    );
    let since = match observed {
        Some((seen, at)) if *seen == record => *at,
        _ => {
            let now = Instant::now();
            *observed = Some((record, now));
            now
        }
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(cfg.lease_duration, Duration::from_secs);
    let expired = holder.is_empty() || since.elapsed() >= duration;
    if holder != me && !expired {
        return Ok(false);
    }
    let now = micro_now();
    let mut renewed = lease.clone();
    let taking_over = holder != me;
    renewed.spec = Some(LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(secs_i32(cfg.lease_duration)),
        acquire_time: if taking_over {
            Some(now.clone())
        } else {
            spec.acquire_time.clone()
        },
        renew_time: Some(now),
        lease_transitions: Some(
            spec.lease_transitions.unwrap_or(0) + i32::from(taking_over && !holder.is_empty()),
        ),
        ..spec
    });
    match api
        .replace(LEASE_NAME, &PostParams::default(), &renewed)
        .await
    {
        Ok(_) => {
            if taking_over {
                info!(lease = LEASE_NAME, previous = %holder, holder = %me, "took over the lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(kube_err("renew the lease")(e)),
    }
}

/// Gives the Lease up (empty holder), if this replica still holds it.
async fn release(api: &Api<Lease>, cfg: &SignerConfig) -> Result<()> {
    let Some(mut lease) = api
        .get_opt(LEASE_NAME)
        .await
        .map_err(kube_err("read the lease"))?
    else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.holder.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro_now());
    api.replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .map_err(kube_err("release the lease"))?;
    Ok(())
}

/// The CA material from the Secret.
struct Ca {
    cert_pem: String,
    key_pem: String,
    bundle: String,
}

/// Reads the CA Secret, or generates the CA and creates it when absent.
async fn load_or_create_ca(client: &Client, cfg: &SignerConfig) -> Result<Ca> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Some(secret) = secrets
        .get_opt(CA_SECRET)
        .await
        .map_err(kube_err(format!("read the secret {CA_SECRET}")))?
    {
        return ca_from_secret(&secret, cfg);
    }
    let (cert_pem, key_pem) = generate_ca(&cfg.trust_domain, cfg.ca_validity)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "netward".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (CA_CERT_KEY.to_owned(), ByteString(cert_pem.into_bytes())),
            (CA_KEY_KEY.to_owned(), ByteString(key_pem.into_bytes())),
        ])),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            info!(secret = CA_SECRET, namespace = %cfg.namespace, "generated a new CA");
            ca_from_secret(&created, cfg)
        }
        // Another replica was first: use its CA.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let secret = secrets
                .get(CA_SECRET)
                .await
                .map_err(kube_err(format!("read the secret {CA_SECRET}")))?;
            ca_from_secret(&secret, cfg)
        }
        Err(e) => Err(kube_err(format!("create the secret {CA_SECRET}"))(e)),
    }
}

fn ca_from_secret(secret: &Secret, cfg: &SignerConfig) -> Result<Ca> {
    let bad = |reason: String| SignerError::CaSecret {
        namespace: cfg.namespace.clone(),
        name: CA_SECRET.to_owned(),
        reason,
    };
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>> {
        data.get(key)
            .map(|v| String::from_utf8(v.0.clone()).map_err(|_| bad(format!("{key} is not PEM"))))
            .transpose()
    };
    let cert_pem = text(CA_CERT_KEY)?.ok_or_else(|| bad(format!("no {CA_CERT_KEY}")))?;
    let key_pem = text(CA_KEY_KEY)?.ok_or_else(|| bad(format!("no {CA_KEY_KEY}")))?;
    let extra = text(EXTRA_ROOTS_KEY)?.unwrap_or_default();
    let mut bundle = String::new();
    for (key, pem) in [(CA_CERT_KEY, &cert_pem), (EXTRA_ROOTS_KEY, &extra)] {
        for block in certificate_blocks(pem) {
            let (_, parsed) = x509_parser::pem::parse_x509_pem(block.as_bytes())
                .map_err(|e| bad(format!("{key}: {e}")))?;
            parsed
                .parse_x509()
                .map_err(|e| bad(format!("{key}: {e}")))?;
            bundle.push_str(block);
            bundle.push('\n');
        }
    }
    if bundle.is_empty() {
        return Err(bad(format!("{CA_CERT_KEY} holds no certificate")));
    }
    Ok(Ca {
        cert_pem,
        key_pem,
        bundle,
    })
}

/// The `CERTIFICATE` PEM blocks of a text, each from its BEGIN to its END line.
fn certificate_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(&rest[start..end]);
        rest = &rest[end..];
    }
    blocks
}

/// A new self-signed ECDSA P-256 CA for node identities (PEM certificate, PEM key).
fn generate_ca(trust_domain: &str, validity: Duration) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(SignerError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "netward");
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "netward node CA {trust_domain} {}",
            Timestamp::now().as_second()
        ),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    let mut serial = random_bytes::<16>()?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.self_signed(&key).map_err(SignerError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| SignerError::Generate(rcgen::Error::RingUnspecified))?;
    Ok(bytes)
}

/// Writes the trust bundle to the ConfigMap when it differs.
async fn publish_bundle(client: &Client, cfg: &SignerConfig, bundle: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let action = format!("publish the trust bundle in the configmap {TRUST_BUNDLE_CONFIGMAP}");
    let data = BTreeMap::from([(TRUST_BUNDLE_KEY.to_owned(), bundle.to_owned())]);
    match api
        .get_opt(TRUST_BUNDLE_CONFIGMAP)
        .await
        .map_err(kube_err(action.clone()))?
    {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(TRUST_BUNDLE_CONFIGMAP.to_owned()),
                    namespace: Some(cfg.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_owned(),
                        "netward".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &cm)
                .await
                .map_err(kube_err(action))?;
            info!(
                configmap = TRUST_BUNDLE_CONFIGMAP,
                "published the trust bundle"
            );
        }
        Some(mut cm) => {
            if cm.data.as_ref() == Some(&data) {
                return Ok(());
            }
            cm.data = Some(data);
            api.replace(TRUST_BUNDLE_CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map_err(kube_err(action))?;
            info!(
                configmap = TRUST_BUNDLE_CONFIGMAP,
                "updated the trust bundle"
            );
        }
    }
    Ok(())
}

/// The CA and the bundle, with bounded retries.
async fn sync_ca(client: &Client, cfg: &SignerConfig, status: &SignerStatus) -> Result<Ca> {
    retry("sync the CA and trust bundle", status, || async {
        let ca = load_or_create_ca(client, cfg).await?;
        publish_bundle(client, cfg, &ca.bundle).await?;
        Ok(ca)
    })
    .await
}

const RETRIES: u32 = 5;

/// Up to [`RETRIES`] attempts, backing off 200 ms, 400 ms, … .
async fn retry<T, F, Fut>(what: &str, status: &SignerStatus, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < RETRIES => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                debug!(what, attempt, error = %e, "retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
}

/// While leading: the CA, the bundle, and every pending CSR of our signerName.
async fn lead(
    client: &Client,
    cfg: &SignerConfig,
    status: &Arc<SignerStatus>,
    leader: &mut watch::Receiver<bool>,
) {
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Err(e) = sync_ca(client, cfg, status).await {
        warn!(error = %e, "cannot load the CA; will retry");
    }
    let stream = watch_stream(
        csrs.clone(),
        watcher::Config::default().fields(&format!("spec.signerName={SIGNER_NAME}")),
    )
    .default_backoff();
    let mut stream = pin!(stream);
    let mut resync = tokio::time::interval(cfg.resync_every);
    resync.tick().await;
    loop {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() || !*leader.borrow() {
                    return;
                }
            }
            _ = resync.tick() => {
                if let Err(e) = sync_ca(client, cfg, status).await {
                    warn!(error = %e, "cannot sync the CA and trust bundle");
                }
            }
            event = stream.next() => match event {
                None => return,
                Some(Ok(Event::Apply(csr) | Event::InitApply(csr))) => {
                    if !*leader.borrow() {
                        return;
                    }
                    handle(&csrs, &pods, client, cfg, status, csr).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    status.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "watching certificate signing requests");
                }
            },
        }
    }
}

fn has_condition(csr: &CertificateSigningRequest, typ: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == typ && c.status == "True"))
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// Done with: issued, denied or failed.
fn settled(csr: &CertificateSigningRequest) -> bool {
    issued(csr) || has_condition(csr, "Denied") || has_condition(csr, "Failed")
}

fn condition(typ: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    let now = Time(Timestamp::now());
    CertificateSigningRequestCondition {
        type_: typ.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

fn with_condition(
    mut csr: CertificateSigningRequest,
    cond: CertificateSigningRequestCondition,
) -> CertificateSigningRequest {
    let status = csr
        .status
        .get_or_insert_with(CertificateSigningRequestStatus::default);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
    csr
}

async fn handle(
    csrs: &Api<CertificateSigningRequest>,
    pods: &Api<Pod>,
    client: &Client,
    cfg: &SignerConfig,
    status: &SignerStatus,
    csr: CertificateSigningRequest,
) {
    if csr.spec.signer_name != SIGNER_NAME || settled(&csr) {
        return;
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let mut current = Some(csr);
    let name_ref = name.as_str();
    let outcome = retry("handle a certificate signing request", status, || {
        let csr = current.take();
        let name = name_ref;
        async move {
            // After a conflict (or any failure), act on the latest version.
            let csr = match csr {
                Some(csr) => csr,
                None => csrs
                    .get(name)
                    .await
                    .map_err(kube_err(format!("read certificate signing request {name}")))?,
            };
            decide(csrs, pods, client, cfg, csr).await
        }
    })
    .await;
    match outcome {
        Ok(Decision::Signed { node }) => {
            status.signed.fetch_add(1, Ordering::Relaxed);
            info!(csr.name = %name, node = %node, decision = "signed", "issued a node certificate");
        }
        Ok(Decision::Refused {
            condition,
            refusal,
            node,
        }) => {
            status.refused.fetch_add(1, Ordering::Relaxed);
            warn!(
                csr.name = %name,
                node = node.as_deref().unwrap_or(""),
                decision = condition,
                reason = refusal.reason(),
                message = %refusal,
                "refused a certificate signing request"
            );
        }
        Ok(Decision::Skipped) => {}
        Err(e) => {
            warn!(csr.name = %name, error = %e, "cannot handle the certificate signing request");
        }
    }
}

enum Decision {
    Signed {
        node: String,
    },
    Refused {
        condition: &'static str,
        refusal: Refusal,
        node: Option<String>,
    },
    Skipped,
}

async fn decide(
    csrs: &Api<CertificateSigningRequest>,
    pods: &Api<Pod>,
    client: &Client,
    cfg: &SignerConfig,
    csr: CertificateSigningRequest,
) -> Result<Decision> {
    if settled(&csr) {
        return Ok(Decision::Skipped);
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let extra = csr.spec.extra.clone().unwrap_or_default();
    let pod = match (extra.get(EXTRA_NODE_NAME), extra.get(EXTRA_POD_NAME)) {
        (None, Some(pod_names)) => match pod_names.as_slice() {
            [pod_name] => pods
                .get_opt(pod_name)
                .await
                .map_err(kube_err(format!("read pod {}/{pod_name}", cfg.namespace)))?,
            _ => None,
        },
        _ => None,
    };
    let pp = PostParams::default();
    match review_with_pod(&csr, cfg, pod.as_ref()) {
        Ok(approved) => {
            let mut csr = csr;
            if !has_condition(&csr, "Approved") {
                let message = format!(
                    "{} on node {} requests {}",
                    cfg.username(),
                    approved.node,
                    approved.spiffe_id
                );
                let body = with_condition(csr, condition("Approved", "NetwardNode", &message));
                csr = csrs
                    .replace_subresource("approval", &name, &pp, &body)
                    .await
                    .map_err(kube_err(format!("approve {name}")))?;
            }
            let ca = load_or_create_ca(client, cfg).await?;
            let cert = identity::sign_csr(
                &ca.cert_pem,
                &ca.key_pem,
                &approved.csr_pem,
                approved.validity,
            )?;
            csr.status
                .get_or_insert_with(CertificateSigningRequestStatus::default)
                .certificate = Some(ByteString(cert.into_bytes()));
            csrs.replace_status(&name, &pp, &csr)
                .await
                .map_err(kube_err(format!("issue the certificate of {name}")))?;
            Ok(Decision::Signed {
                node: approved.node,
            })
        }
        Err(refusal) => {
            let node = extra
                .get(EXTRA_NODE_NAME)
                .and_then(|n| n.first().cloned())
                .or_else(|| {
                    pod.as_ref()
                        .and_then(|p| p.spec.as_ref()?.node_name.clone())
                });
            // A request someone else approved can no longer be denied: it fails.
            let typ = if has_condition(&csr, "Approved") {
                "Failed"
            } else {
                "Denied"
            };
            let body = with_condition(csr, condition(typ, refusal.reason(), &refusal.to_string()));
            if typ == "Denied" {
                csrs.replace_subresource("approval", &name, &pp, &body)
                    .await
                    .map_err(kube_err(format!("deny {name}")))?;
            } else {
                csrs.replace_status(&name, &pp, &body)
                    .await
                    .map_err(kube_err(format!("fail {name}")))?;
            }
            Ok(Decision::Refused {
                condition: typ,
                refusal,
                node,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requesting a certificate (the node agent)

/// Requests a node certificate through the CSR API: generates a P-256 key (it never
/// leaves this process), creates the CSR `netward-node-<node>-<random>` for
/// [`SIGNER_NAME`], and waits up to `timeout` for the signer. Returns the certificate
/// chain and the private key (PEM). A denied or failed request fails with its reason.
pub async fn request_certificate(
    client: Client,
    node: &str,
    trust_domain: &str,
    validity: Duration,
    timeout: Duration,
) -> Result<(String, String)> {
    let (csr_pem, key_pem) = identity::make_csr(node, trust_domain)?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let suffix: String = random_bytes::<4>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Object names are at most 253 characters.
    let node_part: String = node
        .chars()
        .take(253 - "netward-node--".len() - 8)
        .collect();
    let name = format!("netward-node-{node_part}-{suffix}");
    let expiration = validity.max(MIN_VALIDITY);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "netward".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: SIGNER_NAME.to_owned(),
            expiration_seconds: Some(secs_i32(expiration)),
            usages: Some(USAGES.iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(kube_err(format!(
            "create certificate signing request {name}"
        )))?;
    info!(csr.name = %name, node, "requested a node certificate");

    let wait = async {
        let stream = watch_stream(
            api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff();
        let mut stream = pin!(stream);
        while let Some(event) = stream.next().await {
            let csr = match event {
                Ok(Event::Apply(csr) | Event::InitApply(csr)) => csr,
                Ok(_) => continue,
                Err(e) => {
                    debug!(csr.name = %name, error = %e, "watching the request");
                    continue;
                }
            };
            let conditions = csr
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if let Some(c) = conditions
                .iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            {
                return Err(SignerError::Refused {
                    name: name.clone(),
                    condition: c.type_.clone(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                });
            }
            if let Some(cert) = csr.status.and_then(|s| s.certificate)
                && !cert.0.is_empty()
            {
                return Ok(cert.0);
            }
        }
        Err(SignerError::Timeout {
            name: name.clone(),
            waited: timeout,
        })
    };
    let cert = tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| SignerError::Timeout {
            name: name.clone(),
            waited: timeout,
        })??;
    let bad = |reason: String| SignerError::BadCertificate {
        name: name.clone(),
        reason,
    };
    let cert_pem = String::from_utf8(cert).map_err(|_| bad("not PEM".to_owned()))?;
    check_issued(&cert_pem, &key_pem).map_err(bad)?;
    info!(csr.name = %name, node, "received the node certificate");
    Ok((cert_pem, key_pem))
}

/// The issued certificate's key must be ours.
fn check_issued(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
    if &*cert.public_key().subject_public_key.data != key.public_key_raw() {
        return Err("it is not for the key of the request".to_owned());
    }
    Ok(())
}
