//! Node identities for the mTLS tunnel: the SPIFFE ID a node certificate carries, the
//! offline CA and node certificate files on disk, and rustls configurations whose
//! certificate, key and trust bundle are reloaded without rebuilding them.
//!
//! A node's identity is the one URI SAN `spiffe://<trust-domain>/netward/node/<node>`
//! of its leaf certificate (ECDSA P-256, generated on the node). One directory per node
//! holds [`NODE_CERT_FILE`], [`NODE_KEY_FILE`] (mode 0600) and [`TRUST_BUNDLE_FILE`]
//! (one or more roots: several roots are the overlap of a trust-bundle rotation).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName as TlsDn, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use tracing::{debug, info, warn};

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// A node's leaf certificate, then any intermediates (PEM).
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node's PKCS#8 ECDSA P-256 private key (PEM, mode 0600).
pub const NODE_KEY_FILE: &str = "node-key.pem";
/// The roots a node trusts (PEM, one or more certificates).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";
/// The offline CA's certificate (PEM).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The offline CA's private key (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Extra roots, in the CA directory, that [`issue`] appends to every trust bundle it
/// writes: the other CA of a trust-bundle rotation.
pub const EXTRA_ROOTS_FILE: &str = "trust-bundle-extra.pem";
/// The default lifetime of a node certificate: short, renewed at half-life.
pub const DEFAULT_NODE_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The default lifetime of the offline CA.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The one ALPN protocol the tunnel speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// How far back `not_before` is set, so that a peer whose clock is a little behind
/// still accepts a certificate issued just now.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const SPIFFE_SCHEME: &str = "spiffe://";
const NODE_PATH: &str = "/netward/node/";

/// Errors of node identities: each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file that must exist does not.
    #[error("{} does not exist; create it with `netward ca init` / `netward ca issue`", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A CA already exists where `init_ca` would write one.
    #[error("{} already exists; refusing to overwrite a CA (choose another directory)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file is not valid PEM.
    #[error("{}: bad PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A file holds no certificate.
    #[error("{}: no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key (expected a PKCS#8 \"PRIVATE KEY\" block)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key does not belong to the certificate next to it.
    #[error("the key in {} does not match the certificate in {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// A certificate cannot be parsed.
    #[error("cannot parse certificate: {reason}")]
    BadCertificate {
        /// What the parser said.
        reason: String,
    },
    /// A certificate does not carry a netward node identity.
    #[error(
        "certificate carries no netward node identity (a single URI SAN spiffe://<trust-domain>/netward/node/<node>): {reason}"
    )]
    NoIdentity {
        /// What was found instead.
        reason: String,
    },
    /// A certificate's SPIFFE ID is in another trust domain.
    #[error("certificate's SPIFFE ID {uri} is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The SPIFFE ID found.
        uri: String,
        /// The trust domain expected.
        expected: String,
    },
    /// A node name is not a DNS-1123 subdomain.
    #[error("invalid node name {name:?}: {reason} (a node name is a DNS-1123 subdomain)")]
    InvalidNodeName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A trust domain is not a valid SPIFFE trust domain name.
    #[error("invalid trust domain {name:?}: {reason}")]
    InvalidTrustDomain {
        /// The trust domain.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A problem with the leaf certificate of a file.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with its leaf.
        error: Box<IdentityError>,
    },
    /// The leaf certificate names another node.
    #[error("{} names node {found:?}, expected {expected:?}; issue this node its own certificate", path.display())]
    WrongNode {
        /// The certificate file.
        path: PathBuf,
        /// The node it names.
        found: String,
        /// The node it should name.
        expected: String,
    },
    /// The leaf certificate has expired.
    #[error("{} expired at {}; issue a new certificate", path.display(), rfc3339(*not_after))]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its end of validity.
        not_after: SystemTime,
    },
    /// The leaf certificate is not valid yet.
    #[error("{} is not valid before {} (check this node's clock)", path.display(), rfc3339(*not_before))]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its start of validity.
        not_before: SystemTime,
    },
    /// The leaf certificate does not chain to a root of the trust bundle.
    #[error("{} does not chain to a root in {}: {reason}", cert.display(), bundle.display())]
    Untrusted {
        /// The certificate file.
        cert: PathBuf,
        /// The trust bundle file.
        bundle: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// A requested validity period is empty or out of range.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// Why.
        reason: String,
    },
    /// A duration could not be parsed.
    #[error("invalid duration {value:?}: {reason} (examples: 24h, 30m, 90s, 365d)")]
    InvalidDuration {
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
    /// A certificate signing request cannot be parsed or verified.
    #[error("bad certificate signing request: {reason}")]
    BadCsr {
        /// What the parser said.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// Building a rustls configuration failed.
    #[error("cannot build the TLS configuration")]
    Tls {
        /// The rustls error.
        #[from]
        source: rustls::Error,
    },
}

type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// Why a peer's certificate was refused, inside the `rustls::Error` a handshake fails
/// with (`InvalidCertificate(Other(..))`): downcast it to read the [`IdentityError`].
pub struct PeerRejected(pub IdentityError);

// rustls formats `CertificateError::Other` with `Debug`: print the operator's message.
impl fmt::Debug for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for PeerRejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The SPIFFE ID of a node: `spiffe://<trust_domain>/netward/node/<node>`.
pub fn spiffe_id(trust_domain: &str, node: &str) -> String {
    format!("{SPIFFE_SCHEME}{trust_domain}{NODE_PATH}{node}")
}

/// The node a certificate names: its one SPIFFE URI SAN, which must be a netward node ID
/// in `trust_domain`. The tunnel calls it on `peer_certificates()[0]`.
pub fn node_from_cert(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<String> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| IdentityError::BadCertificate {
            reason: e.to_string(),
        })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate {
            reason: format!("subjectAltName: {e}"),
        })?;
    let Some(san) = san else {
        return Err(IdentityError::NoIdentity {
            reason: "no subjectAltName extension".into(),
        });
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    one_node_uri(&uris, trust_domain)
}

/// The node a CSR (PEM) asks for, checked like [`node_from_cert`]: the signer validates
/// it against the requester before calling [`sign_csr`].
pub fn csr_node(csr_pem: &str, trust_domain: &str) -> Result<String> {
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| IdentityError::BadCsr {
            reason: e.to_string(),
        })?;
    let uris: Vec<&str> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    if uris.len() != csr.params.subject_alt_names.len() {
        return Err(IdentityError::BadCsr {
            reason: "a node certificate request carries URI SANs only".into(),
        });
    }
    one_node_uri(&uris, trust_domain)
}

fn one_node_uri(uris: &[&str], trust_domain: &str) -> Result<String> {
    let spiffe: Vec<&str> = uris
        .iter()
        .copied()
        .filter(|u| {
            u.get(..SPIFFE_SCHEME.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(SPIFFE_SCHEME))
        })
        .collect();
    match spiffe.as_slice() {
        [] if uris.is_empty() => Err(IdentityError::NoIdentity {
            reason: "no URI SAN".into(),
        }),
        [] => Err(IdentityError::NoIdentity {
            reason: format!("no spiffe:// URI SAN among {uris:?}"),
        }),
        [uri] => parse_node_uri(uri, trust_domain),
        many => Err(IdentityError::NoIdentity {
            reason: format!(
                "{} SPIFFE URI SANs {many:?}, expected exactly one",
                many.len()
            ),
        }),
    }
}

fn parse_node_uri(uri: &str, trust_domain: &str) -> Result<String> {
    let no_identity = |reason: String| IdentityError::NoIdentity { reason };
    let rest = uri
        .strip_prefix(SPIFFE_SCHEME)
        .ok_or_else(|| no_identity(format!("{uri}: the scheme must be lowercase spiffe://")))?;
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain != trust_domain {
        return Err(IdentityError::WrongTrustDomain {
            uri: uri.to_owned(),
            expected: trust_domain.to_owned(),
        });
    }
    let node = path.strip_prefix(NODE_PATH).ok_or_else(|| {
        no_identity(format!(
            "{uri} is not a netward node ID (path {NODE_PATH}<node>)"
        ))
    })?;
    validate_node_name(node).map_err(|e| no_identity(format!("{uri}: {e}")))?;
    Ok(node.to_owned())
}

/// Checks that `name` is a DNS-1123 subdomain, as Kubernetes node names are.
pub fn validate_node_name(name: &str) -> Result<()> {
    netward_controller::names::dns1123_subdomain(name).map_err(|e| IdentityError::InvalidNodeName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks that `name` is a SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(name: &str) -> Result<()> {
    let invalid = |reason: &str| IdentityError::InvalidTrustDomain {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 255 {
        return Err(invalid("longer than 255 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid(
            "only lowercase letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

/// Parses a duration such as `24h`, `30m`, `90s` or `365d`: one whole number, one unit
/// (a day is 24 hours; jiff does the arithmetic).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let invalid = |reason: &str| IdentityError::InvalidDuration {
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| invalid("missing unit (s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(invalid("expected a number then a unit"));
    }
    if !matches!(unit, "s" | "m" | "h" | "d") {
        return Err(invalid("unknown unit (s, m, h or d)"));
    }
    let duration = text
        .parse::<jiff::Span>()
        .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
        .map_err(|_| invalid("too large"))?;
    if !duration.is_positive() {
        return Err(invalid("must be positive"));
    }
    Duration::try_from(duration).map_err(|_| invalid("too large"))
}

/// The files `init_ca` wrote.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// The CA certificate.
    pub cert: PathBuf,
    /// The CA private key (mode 0600).
    pub key: PathBuf,
    /// The end of the CA's validity.
    pub not_after: SystemTime,
}

/// The files `issue` wrote.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node certificate (leaf then intermediates).
    pub cert: PathBuf,
    /// The node private key (mode 0600).
    pub key: PathBuf,
    /// The trust bundle.
    pub bundle: PathBuf,
    /// The node certificate's SPIFFE ID.
    pub spiffe_id: String,
    /// The end of the node certificate's validity.
    pub not_after: SystemTime,
}

/// The validity period of a certificate to issue; tests set it to make expired ones.
#[derive(Debug, Clone, Copy)]
pub struct IssueOptions {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssueOptions {
    /// Valid from a few minutes ago (clock skew) until `validity` from now.
    pub fn valid_for(validity: Duration) -> Result<Self> {
        let now = SystemTime::now();
        let not_after =
            now.checked_add(validity)
                .ok_or_else(|| IdentityError::InvalidValidity {
                    reason: format!("{validity:?} is too long"),
                })?;
        Ok(Self {
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after,
        })
    }
}

/// Creates a new offline CA (ECDSA P-256) in `dir`: [`CA_CERT_FILE`] and [`CA_KEY_FILE`].
/// Refuses to overwrite an existing CA key.
pub fn init_ca(dir: &Path, trust_domain: &str, validity: Duration) -> Result<CaFiles> {
    validate_trust_domain(trust_domain)?;
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    for path in [&key_path, &cert_path] {
        if path.exists() {
            return Err(IdentityError::AlreadyExists { path: path.clone() });
        }
    }
    let period = IssueOptions::valid_for(validity)?;
    let key = generate_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let serial = random_serial()?;
    // A CA's name is unique (part of its serial in it): during a rotation, two roots with
    // the same subject would make a peer try the wrong one and report a bad signature.
    let id: String = serial
        .to_bytes()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "netward");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("netward node CA {trust_domain} {id}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_period(&mut params, &period)?;
    params.serial_number = Some(serial);
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Generate {
            what: "the CA certificate",
            source,
        })?;
    create_dir(dir)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(CaFiles {
        cert: cert_path,
        key: key_path,
        not_after: period.not_after,
    })
}

/// Issues `node` a certificate from the CA in `ca_dir`, valid for `validity`: generates
/// the node's key and writes [`NODE_CERT_FILE`], [`NODE_KEY_FILE`] and
/// [`TRUST_BUNDLE_FILE`] (the CA plus the CA directory's [`EXTRA_ROOTS_FILE`]) into `out_dir`.
pub fn issue(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
    trust_domain: &str,
    validity: Duration,
) -> Result<NodeFiles> {
    issue_with(
        ca_dir,
        node,
        out_dir,
        trust_domain,
        IssueOptions::valid_for(validity)?,
    )
}

/// [`issue`] with an explicit validity period (for example an expired one, in tests).
pub fn issue_with(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
    trust_domain: &str,
    options: IssueOptions,
) -> Result<NodeFiles> {
    validate_node_name(node)?;
    validate_trust_domain(trust_domain)?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_cert_pem = read_string(&ca_cert_path)?;
    let ca_key_pem = read_string(&ca_dir.join(CA_KEY_FILE))?;
    let issuer = load_issuer(
        &ca_cert_path,
        &ca_cert_pem,
        &ca_dir.join(CA_KEY_FILE),
        &ca_key_pem,
    )?;

    let key = generate_key()?;
    let mut params = node_params(node, trust_domain)?;
    set_period(&mut params, &options)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| IdentityError::Generate {
            what: "the node certificate",
            source,
        })?;

    // The bundle: the CA's own certificate(s), then the extra roots of a rotation.
    let mut bundle = checked_certs_text(&ca_cert_path, ca_cert_pem.as_bytes())?;
    let extra_path = ca_dir.join(EXTRA_ROOTS_FILE);
    if extra_path.exists() {
        let extra = read_bytes(&extra_path)?;
        bundle.push_str(&checked_certs_text(&extra_path, &extra)?);
    }

    create_dir(out_dir)?;
    let files = NodeFiles {
        cert: out_dir.join(NODE_CERT_FILE),
        key: out_dir.join(NODE_KEY_FILE),
        bundle: out_dir.join(TRUST_BUNDLE_FILE),
        spiffe_id: spiffe_id(trust_domain, node),
        not_after: options.not_after,
    };
    // Key first, then certificate: a reload in between sees a mismatch and keeps the
    // old material until the next poll.
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&files.bundle, bundle.as_bytes(), 0o644)?;
    Ok(files)
}

/// A node's certificate signing request (PEM) for its SPIFFE ID, and the new private key
/// (PKCS#8 PEM) that stays on the node.
pub fn make_csr(node: &str, trust_domain: &str) -> Result<(String, String)> {
    validate_node_name(node)?;
    validate_trust_domain(trust_domain)?;
    let key = generate_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.subject_alt_names = vec![spiffe_san(trust_domain, node)?];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| IdentityError::Generate {
            what: "the certificate signing request",
            source,
        })?;
    Ok((csr, key.serialize_pem()))
}

/// Signs a CSR (PEM) with a CA, as a node leaf valid for `validity`: the CSR's subject and
/// SANs are kept, everything else (usages, validity, serial) is ours. The caller checks the
/// requested identity first (see [`csr_node`]).
pub fn sign_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    validity: Duration,
) -> Result<String> {
    let issuer = load_issuer(
        Path::new("<ca certificate>"),
        ca_cert_pem,
        Path::new("<ca key>"),
        ca_key_pem,
    )?;
    let mut csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| IdentityError::BadCsr {
            reason: e.to_string(),
        })?;
    let requested = std::mem::take(&mut csr.params);
    let mut params = CertificateParams::default();
    params.distinguished_name = requested.distinguished_name;
    params.subject_alt_names = requested.subject_alt_names;
    leaf_usages(&mut params)?;
    set_period(&mut params, &IssueOptions::valid_for(validity)?)?;
    csr.params = params;
    let cert = csr
        .signed_by(&issuer)
        .map_err(|source| IdentityError::Generate {
            what: "the certificate from the CSR",
            source,
        })?;
    Ok(cert.pem())
}

fn node_params(node: &str, trust_domain: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.subject_alt_names = vec![spiffe_san(trust_domain, node)?];
    leaf_usages(&mut params)?;
    Ok(params)
}

fn leaf_usages(params: &mut CertificateParams) -> Result<()> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

fn spiffe_san(trust_domain: &str, node: &str) -> Result<SanType> {
    let uri = spiffe_id(trust_domain, node);
    let ia5 = uri
        .as_str()
        .try_into()
        .map_err(|source| IdentityError::Generate {
            what: "the SPIFFE URI SAN",
            source,
        })?;
    Ok(SanType::URI(ia5))
}

fn set_period(params: &mut CertificateParams, options: &IssueOptions) -> Result<()> {
    if options.not_after <= options.not_before {
        return Err(IdentityError::InvalidValidity {
            reason: "not_after is not after not_before".into(),
        });
    }
    params.not_before = options.not_before.into();
    params.not_after = options.not_after.into();
    Ok(())
}

fn generate_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| IdentityError::Generate {
        what: "an ECDSA P-256 key",
        source,
    })
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Generate {
            what: "a serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn load_issuer(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::BadPem {
        path: key_path.to_owned(),
        reason: format!("not a CA private key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| IdentityError::BadPem {
        path: cert_path.to_owned(),
        reason: format!("not a CA certificate: {e}"),
    })
}

/// The certificates of a PEM file, checked, as text ending with a newline.
fn checked_certs_text(path: &Path, pem: &[u8]) -> Result<String> {
    parse_certs(path, pem)?;
    let mut text = String::from_utf8(pem.to_vec()).map_err(|_| IdentityError::BadPem {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => IdentityError::NoKey {
            path: path.to_owned(),
        },
        e => IdentityError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            IdentityError::Missing {
                path: path.to_owned(),
            }
        } else {
            IdentityError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn read_string(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes(path)?).map_err(|_| IdentityError::BadPem {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `path` atomically (a temporary file renamed over it) with `mode`, so that a
/// reader never sees half a file and a key is never readable by others, even briefly.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `t` as RFC 3339 text, for logs and messages (`2026-11-24T10:12:03Z`).
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{}s after the epoch", unix_secs(t)))
}

/// The raw contents of a node's three files, to tell whether a reload changes anything.
#[derive(PartialEq, Eq)]
struct RawFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    bundle: Vec<u8>,
}

/// One generation of a node's TLS material, validated.
struct Material {
    raw: RawFiles,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    not_after: SystemTime,
    serial: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("serial", &self.serial)
            .field("not_after", &rfc3339(self.not_after))
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

struct Paths {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
            bundle: dir.join(TRUST_BUNDLE_FILE),
        }
    }

    fn read(&self) -> Result<RawFiles> {
        Ok(RawFiles {
            cert: read_bytes(&self.cert)?,
            key: read_bytes(&self.key)?,
            bundle: read_bytes(&self.bundle)?,
        })
    }
}

impl Material {
    fn from_raw(
        raw: RawFiles,
        paths: &Paths,
        trust_domain: &str,
        expected_node: &str,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self> {
        let chain = parse_certs(&paths.cert, &raw.cert)?;
        let key = parse_key(&paths.key, &raw.key)?;
        let bundle = parse_certs(&paths.bundle, &raw.bundle)?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(IdentityError::NoCertificate {
                path: paths.cert.clone(),
            });
        };

        let in_cert = |error| IdentityError::InFile {
            path: paths.cert.clone(),
            error: Box::new(error),
        };
        let node = node_from_cert(leaf, trust_domain).map_err(in_cert)?;
        if node != expected_node {
            return Err(IdentityError::WrongNode {
                path: paths.cert.clone(),
                found: node,
                expected: expected_node.to_owned(),
            });
        }
        let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            in_cert(IdentityError::BadCertificate {
                reason: e.to_string(),
            })
        })?;
        let not_before = SystemTime::from(x509.validity().not_before.to_datetime());
        let not_after = SystemTime::from(x509.validity().not_after.to_datetime());
        let now = SystemTime::now();
        if now < not_before {
            return Err(IdentityError::NotYetValid {
                path: paths.cert.clone(),
                not_before,
            });
        }
        if now > not_after {
            return Err(IdentityError::Expired {
                path: paths.cert.clone(),
                not_after,
            });
        }
        let serial = x509.raw_serial_as_string();

        let mut roots = RootCertStore::empty();
        for root in bundle {
            roots.add(root).map_err(|e| IdentityError::BadPem {
                path: paths.bundle.clone(),
                reason: format!("unusable root certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let untrusted = |e: rustls::Error| IdentityError::Untrusted {
            cert: paths.cert.clone(),
            bundle: paths.bundle.clone(),
            reason: e.to_string(),
        };
        // Our certificate must be acceptable to peers holding this bundle, in both roles.
        let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(untrusted)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(untrusted)?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| IdentityError::BadPem {
                    path: paths.bundle.clone(),
                    reason: format!("unusable trust bundle: {e}"),
                })?;
        client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(untrusted)?;

        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            IdentityError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            raw,
            key: Arc::new(key),
            roots,
            client_verifier,
            not_after,
            serial,
        })
    }
}

/// What the resolvers and verifiers share: the current material, swapped by `reload`.
struct Shared {
    dir: PathBuf,
    paths: Paths,
    trust_domain: String,
    node: String,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
}

impl Shared {
    fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The peer's certificate carries a netward node ID in our trust domain.
    fn check_peer_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        node_from_cert(end_entity, &self.trust_domain)
            .map(|_| ())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    PeerRejected(e),
                ))))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .field("node", &self.node)
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

/// Presents the current node certificate as a server.
#[derive(Debug)]
struct ServerResolver(Arc<Shared>);

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// Presents the current node certificate as a client.
#[derive(Debug)]
struct ClientResolver(Arc<Shared>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Requires a client certificate that chains to the current bundle and names a node.
#[derive(Debug)]
struct NodeClientVerifier(Arc<Shared>);

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[TlsDn] {
        // The roots change on reload and cannot be borrowed through the lock; an empty
        // list tells the client to send the certificate it has, which is what it does.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.0.current();
        current
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        self.0.check_peer_identity(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Requires a server certificate that chains to the current bundle and names a node. The
/// server name is a placeholder: which node is checked by the tunnel, on the peer's
/// certificate, with [`node_from_cert`].
#[derive(Debug)]
struct NodeServerVerifier(Arc<Shared>);

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.0.current();
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.roots,
            intermediates,
            now,
            self.0.provider.signature_verification_algorithms.all,
        )?;
        self.0.check_peer_identity(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

struct Inner {
    shared: Arc<Shared>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A node's TLS identity: its certificate, key and trust bundle, read from a directory
/// and reloadable. Cheap to clone. The configurations it hands out are built once and
/// always use the current material: a reload affects new handshakes only, and live
/// connections are never dropped.
#[derive(Clone)]
pub struct TlsIdentity {
    inner: Arc<Inner>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsIdentity")
            .field(&self.inner.shared)
            .finish()
    }
}

impl TlsIdentity {
    /// Reads `dir`'s node certificate, key and trust bundle. The leaf must name
    /// `expected_node` in `trust_domain`, be valid now, and chain to the bundle.
    pub fn load(dir: &Path, trust_domain: &str, expected_node: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        validate_node_name(expected_node)?;
        let provider = Arc::new(provider());
        let paths = Paths::new(dir);
        let material = Material::from_raw(
            paths.read()?,
            &paths,
            trust_domain,
            expected_node,
            &provider,
        )?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            paths,
            trust_domain: trust_domain.to_owned(),
            node: expected_node.to_owned(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(material)),
        });

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(NodeClientVerifier(shared.clone())))
            .with_cert_resolver(Arc::new(ServerResolver(shared.clone())));
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: a resumed session skips certificate verification, so it would
        // outlive a trust-bundle rotation. Connections are pooled; full handshakes are rare.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeServerVerifier(shared.clone())))
            .with_client_cert_resolver(Arc::new(ClientResolver(shared.clone())));
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        client.resumption = Resumption::disabled();

        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                server: Arc::new(server),
                client: Arc::new(client),
            }),
        })
    }

    /// The server side of the tunnel: TLS 1.3, ALPN `h2`, a client certificate required
    /// (chaining to the current bundle and naming a node in our trust domain).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server.clone()
    }

    /// The client side of the tunnel: TLS 1.3, ALPN `h2`, presents our certificate and
    /// requires the server's to chain to the current bundle and name a node. Which node
    /// is the caller's check ([`node_from_cert`] on the peer certificates).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.client.clone()
    }

    /// Reads the files again. Returns whether anything changed; on an error the current
    /// material stays in use.
    pub fn reload(&self) -> Result<bool> {
        let shared = &self.inner.shared;
        let raw = shared.paths.read()?;
        if raw == shared.current().raw {
            return Ok(false);
        }
        let material = Material::from_raw(
            raw,
            &shared.paths,
            &shared.trust_domain,
            &shared.node,
            &shared.provider,
        )?;
        *shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(material);
        Ok(true)
    }

    /// Polls the files every `every` and reloads them when they change: logs the new
    /// certificate on rotation, and warns (once per distinct error) when they are bad.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let identity = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut last_error: Option<String> = None;
            let mut warned_expired = false;
            loop {
                ticker.tick().await;
                match identity.reload() {
                    Ok(true) => {
                        last_error = None;
                        warned_expired = false;
                        info!(
                            node = identity.node(),
                            dir = %identity.inner.shared.dir.display(),
                            serial = %identity.serial(),
                            not_after = %rfc3339(identity.not_after()),
                            "node certificate reloaded"
                        );
                    }
                    Ok(false) => {
                        last_error = None;
                        debug!(node = identity.node(), "node certificate unchanged");
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if last_error.as_deref() != Some(&text) {
                            warn!(
                                node = identity.node(),
                                error = %text,
                                "cannot reload the node certificate; keeping the current one"
                            );
                            last_error = Some(text);
                        }
                    }
                }
                if !warned_expired && SystemTime::now() > identity.not_after() {
                    warned_expired = true;
                    warn!(
                        node = identity.node(),
                        not_after = %rfc3339(identity.not_after()),
                        "the node certificate in use has expired; peers will refuse new tunnel connections"
                    );
                }
            }
        })
    }

    /// The end of the current certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.inner.shared.current().not_after
    }

    /// The current certificate's serial number (hex, colon-separated).
    pub fn serial(&self) -> String {
        self.inner.shared.current().serial.clone()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.shared.node
    }

    /// The trust domain of this node and its peers.
    pub fn trust_domain(&self) -> &str {
        &self.inner.shared.trust_domain
    }

    /// This node's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        spiffe_id(self.trust_domain(), self.node())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn node_names() {
        for ok in ["node-1", "a", "worker.eu-west-1.example", "0abc"] {
            validate_node_name(ok).unwrap();
        }
        for bad in [
            "",
            "Node",
            "-a",
            "a-",
            "a..b",
            "a_b",
            &"x".repeat(64),
            "a/b",
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_for_messages() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_515_123);
        assert_eq!(rfc3339(t), "2026-11-24T10:12:03Z");
        assert_eq!(
            rfc3339(t + Duration::from_millis(120)),
            "2026-11-24T10:12:03.12Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("365d").unwrap(), DEFAULT_CA_VALIDITY);
        for bad in [
            "",
            "24",
            "h",
            "0h",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "1h30m",
            "PT24H",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spiffe_uris() {
        assert_eq!(
            spiffe_id("cluster.local", "n1"),
            "spiffe://cluster.local/netward/node/n1"
        );
        assert_eq!(
            parse_node_uri("spiffe://cluster.local/netward/node/n1", "cluster.local").unwrap(),
            "n1"
        );
        assert!(matches!(
            parse_node_uri("spiffe://other/netward/node/n1", "cluster.local"),
            Err(IdentityError::WrongTrustDomain { .. })
        ));
        for bad in [
            "spiffe://cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/netward/node/",
            "spiffe://cluster.local/netward/node/a/b",
            "spiffe://cluster.local/netward/node/N1",
        ] {
            assert!(
                matches!(
                    parse_node_uri(bad, "cluster.local"),
                    Err(IdentityError::NoIdentity { .. })
                ),
                "{bad}"
            );
        }
        assert!(
            one_node_uri(
                &["spiffe://a/netward/node/x", "spiffe://a/netward/node/y"],
                "a"
            )
            .is_err()
        );
        assert!(one_node_uri(&["https://example.com"], "a").is_err());
    }

    #[test]
    fn csr_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "cluster.local", DEFAULT_CA_VALIDITY).unwrap();
        let ca_cert = fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let ca_key = fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap();
        let (csr, key) = make_csr("node-a", "cluster.local").unwrap();
        assert!(key.contains("BEGIN PRIVATE KEY"));
        assert_eq!(csr_node(&csr, "cluster.local").unwrap(), "node-a");
        assert!(csr_node(&csr, "other.domain").is_err());
        let cert = sign_csr(&ca_cert, &ca_key, &csr, DEFAULT_NODE_VALIDITY).unwrap();
        let der = parse_certs(Path::new("cert"), cert.as_bytes()).unwrap();
        assert_eq!(node_from_cert(&der[0], "cluster.local").unwrap(), "node-a");
        // The signed certificate works with the CSR's key, as a loadable identity.
        let node_dir = tempfile::tempdir().unwrap();
        fs::write(node_dir.path().join(NODE_CERT_FILE), &cert).unwrap();
        fs::write(node_dir.path().join(NODE_KEY_FILE), &key).unwrap();
        fs::write(node_dir.path().join(TRUST_BUNDLE_FILE), &ca_cert).unwrap();
        let id = TlsIdentity::load(node_dir.path(), "cluster.local", "node-a").unwrap();
        assert!(id.not_after() > SystemTime::now() + Duration::from_secs(23 * 3600));
    }
}
