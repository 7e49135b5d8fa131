//! The node agent's certificate on Kubernetes (issue #9): requested through the CSR API
//! ([`request_certificate`]), written with the trust bundle from the signer's ConfigMap
//! into an identity directory, renewed at half-life and kept in step with the bundle.
//! The datapath's [`TlsIdentity`](super::identity::TlsIdentity) reloader picks the
//! files up; nothing here talks to the datapath.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::identity::{self, NODE_CERT_FILE, NODE_KEY_FILE, TRUST_BUNDLE_FILE};
use super::signer::{SignerError, TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, request_certificate};

/// Errors of the certificate manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate request failed.
    #[error(transparent)]
    Request(#[from] SignerError),
    /// Reading the trust bundle failed.
    #[error(
        "cannot read the trust bundle from configmap {namespace}/{TRUST_BUNDLE_CONFIGMAP}: {source} (is `netward signer` running?)"
    )]
    Bundle {
        /// netward's namespace.
        namespace: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The ConfigMap exists without a usable bundle.
    #[error(
        "configmap {namespace}/{TRUST_BUNDLE_CONFIGMAP} has no {TRUST_BUNDLE_KEY} (the signer publishes it once it leads)"
    )]
    NoBundle {
        /// netward's namespace.
        namespace: String,
    },
    /// The issued certificate could not be read back.
    #[error("the issued certificate is unreadable: {0}")]
    Certificate(String),
    /// Writing the identity directory failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = CertError> = std::result::Result<T, E>;

/// What the certificate manager needs.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// This node's name (the certificate's SPIFFE ID names it).
    pub node: String,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// netward's namespace (the trust bundle ConfigMap).
    pub namespace: String,
    /// Where `node.pem`, `node-key.pem` and `trust-bundle.pem` are written.
    pub dir: PathBuf,
    /// The validity asked for.
    pub validity: Duration,
    /// How long one request waits for the signer.
    pub request_timeout: Duration,
    /// How often the trust bundle is read again.
    pub bundle_every: Duration,
    /// The first retry delay after a failed renewal (doubled up to `backoff_max`).
    pub backoff_min: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// Renew this long after issue instead of at half-life (tests).
    pub renew_after: Option<Duration>,
}

impl CertConfig {
    /// Defaults for `node` in `namespace`, writing into `dir`.
    pub fn new(node: &str, namespace: &str, dir: &Path) -> CertConfig {
        CertConfig {
            node: node.to_owned(),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            namespace: namespace.to_owned(),
            dir: dir.to_owned(),
            validity: identity::DEFAULT_NODE_VALIDITY,
            request_timeout: Duration::from_secs(60),
            bundle_every: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            renew_after: None,
        }
    }
}

/// Keeps this node's certificate and trust bundle current in [`CertConfig::dir`].
pub struct CertManager {
    client: Client,
    cfg: CertConfig,
    /// The current certificate's validity.
    not_before: SystemTime,
    not_after: SystemTime,
    /// When it was written.
    issued: SystemTime,
    bundle: String,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("cfg", &self.cfg)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Requests a certificate, reads the trust bundle and writes both: once this
    /// returns, [`TlsIdentity::load`](super::identity::TlsIdentity::load) on the
    /// directory succeeds.
    pub async fn start(client: Client, cfg: CertConfig) -> Result<CertManager> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| CertError::Write {
            path: cfg.dir.clone(),
            source,
        })?;
        let (chain, key) = request(&client, &cfg).await?;
        // The signer publishes the bundle when it starts leading; allow it a moment.
        let deadline = tokio::time::Instant::now() + cfg.request_timeout;
        let mut failures = 0;
        let bundle = loop {
            match fetch_bundle(&client, &cfg.namespace).await {
                Ok(b) => break b,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    debug!(error = %e, "waiting for the trust bundle");
                    tokio::time::sleep(backoff(&cfg, failures).min(Duration::from_secs(2))).await;
                    failures += 1;
                }
            }
        };
        write_atomic(&cfg.dir.join(TRUST_BUNDLE_FILE), &bundle, 0o644)?;
        let (not_before, not_after) = write_identity(&cfg, &chain, &key)?;
        Ok(CertManager {
            client,
            cfg,
            not_before,
            not_after,
            issued: SystemTime::now(),
            bundle,
        })
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the current certificate is renewed: at half its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        if let Some(after) = self.cfg.renew_after {
            return self.issued + after;
        }
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// Renews at half-life (retrying with jittered exponential backoff) and follows the
    /// trust bundle, until the task is aborted.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let mut bundle_tick = tokio::time::interval(self.cfg.bundle_every);
        bundle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        bundle_tick.tick().await;
        let mut failures: u32 = 0;
        let mut next = tokio::time::Instant::now() + until(self.renew_at());
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    match renew(&self.client, &self.cfg).await {
                        Ok((nb, na)) => {
                            failures = 0;
                            self.not_before = nb;
                            self.not_after = na;
                            self.issued = SystemTime::now();
                            next = tokio::time::Instant::now() + until(self.renew_at());
                            info!(node = %self.cfg.node, not_after = %identity::rfc3339(na), "node certificate renewed");
                        }
                        Err(e) => {
                            let wait = backoff(&self.cfg, failures);
                            next = tokio::time::Instant::now() + wait;
                            failures = failures.saturating_add(1);
                            error!(
                                node = %self.cfg.node,
                                error = %e,
                                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                                expires = %identity::rfc3339(self.not_after),
                                "cannot renew the node certificate"
                            );
                        }
                    }
                }
                _ = bundle_tick.tick() => self.refresh_bundle().await,
            }
        }
    }

    async fn refresh_bundle(&mut self) {
        match fetch_bundle(&self.client, &self.cfg.namespace).await {
            Ok(b) if b == self.bundle => debug!("trust bundle unchanged"),
            Ok(b) => match write_atomic(&self.cfg.dir.join(TRUST_BUNDLE_FILE), &b, 0o644) {
                Ok(()) => {
                    info!("trust bundle changed: written");
                    self.bundle = b;
                }
                Err(e) => warn!(error = %e, "cannot write the new trust bundle"),
            },
            Err(e) => warn!(error = %e, "cannot read the trust bundle; keeping the last one"),
        }
    }
}

/// Requests a certificate and writes it.
async fn renew(client: &Client, cfg: &CertConfig) -> Result<(SystemTime, SystemTime)> {
    let (chain, key) = request(client, cfg).await?;
    write_identity(cfg, &chain, &key)
}

async fn request(client: &Client, cfg: &CertConfig) -> Result<(String, String)> {
    Ok(request_certificate(
        client.clone(),
        &cfg.node,
        &cfg.trust_domain,
        cfg.validity,
        cfg.request_timeout,
    )
    .await?)
}

/// Writes the key, then the chain; returns the leaf's validity.
fn write_identity(cfg: &CertConfig, chain: &str, key: &str) -> Result<(SystemTime, SystemTime)> {
    let validity = validity_of(chain)?;
    write_atomic(&cfg.dir.join(NODE_KEY_FILE), key, 0o600)?;
    write_atomic(&cfg.dir.join(NODE_CERT_FILE), chain, 0o644)?;
    Ok(validity)
}

/// The leaf's notBefore and notAfter.
fn validity_of(chain_pem: &str) -> Result<(SystemTime, SystemTime)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| CertError::Certificate(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Certificate(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

/// The bundle from the signer's ConfigMap.
async fn fetch_bundle(client: &Client, namespace: &str) -> Result<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get(TRUST_BUNDLE_CONFIGMAP)
        .await
        .map_err(|source| CertError::Bundle {
            namespace: namespace.to_owned(),
            source,
        })?;
    cm.data
        .and_then(|mut d| d.remove(TRUST_BUNDLE_KEY))
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| CertError::NoBundle {
            namespace: namespace.to_owned(),
        })
}

/// Writes `path` through a temporary file in the same directory and a rename, so that a
/// reader sees the old or the new content, never a mix.
fn write_atomic(path: &Path, content: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

/// `backoff_min * 2^failures`, capped at `backoff_max`, minus up to half of it at random.
pub(crate) fn backoff(cfg: &CertConfig, failures: u32) -> Duration {
    let base = cfg
        .backoff_min
        .saturating_mul(1u32 << failures.min(20))
        .min(cfg.backoff_max);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(failures);
    let jitter = h.finish() % 1000;
    base - base / 2 * u32::try_from(jitter).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        let cfg = CertConfig::new("n", "ns", Path::new("/x"));
        for f in 0..40 {
            let b = backoff(&cfg, f);
            let base = (cfg.backoff_min * (1u32 << f.min(20))).min(cfg.backoff_max);
            assert!(b <= base && b >= base / 2, "{f}: {b:?}");
        }
        assert!(backoff(&cfg, 40) <= cfg.backoff_max);
    }

    #[test]
    fn writes_atomically_with_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("k.pem");
        write_atomic(&p, "one", 0o600).unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&p, "two", 0o600).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&p).unwrap_or_default(), "two");
        let mode = std::fs::metadata(&p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        assert_eq!(mode & 0o777, 0o600);
    }
}
