//! `netward signer`: signs netward's node-tunnel CertificateSigningRequests (a
//! one-replica Deployment, `deploy/signer.yaml`; replicas elect a leader on a Lease).
//! The policy, the leader election and the CA handling are in
//! `netward_proxy::mtls::signer`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use netward_controller::kube::{self as source, SyncStatus};
use netward_proxy::mtls::identity;
use netward_proxy::mtls::signer::{self, SignerConfig, SignerStatus};
use tracing::{error, info};

/// EX_USAGE: a bad flag or environment variable.
const EXIT_USAGE: u8 = 64;

/// Every option is a flag and an environment variable; values are validated once.
#[derive(Args, Clone, Debug)]
pub(crate) struct SignerArgs {
    /// A kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, or the pod's
    /// ServiceAccount (in cluster).
    #[arg(long, env = "NETWARD_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// netward's namespace: the node agent's service account, the CA Secret, the Lease
    /// and the trust-bundle ConfigMap (the Deployment sets it from metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "netward-system")]
    namespace: String,
    /// The node agent's service account, the only one whose requests are signed.
    #[arg(long, env = "NETWARD_SERVICE_ACCOUNT", default_value = "netward")]
    service_account: String,
    /// The SPIFFE trust domain of node identities.
    #[arg(long, env = "NETWARD_TRUST_DOMAIN", default_value = identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The longest certificate issued, in seconds (a request may ask for less).
    #[arg(long, env = "NETWARD_MAX_VALIDITY_SECS", default_value = "86400")]
    max_validity_secs: String,
    /// Validity of a CA generated on the first run, in days.
    #[arg(long, env = "NETWARD_CA_VALIDITY_DAYS", default_value = "365")]
    ca_validity_days: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    holder: Option<String>,
    /// The Lease duration in seconds.
    #[arg(long, env = "NETWARD_LEASE_DURATION_SECS", default_value = "15")]
    lease_duration_secs: String,
    /// How often the leader renews the Lease, in seconds.
    #[arg(long, env = "NETWARD_LEASE_RENEW_SECS", default_value = "5")]
    renew_secs: String,
}

/// A configuration value that cannot be used: its name, its value and why.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub(crate) struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

fn bad(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_num(name: &'static str, v: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|e| bad(name, v, format!("not a whole number ({e})")))?;
    if n < min || n > max {
        return Err(bad(name, v, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

/// A DNS-1123 label, as namespace and service-account names are.
fn check_label(name: &'static str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(
            name,
            v,
            "not a DNS label (lowercase letters, digits and '-', at most 63 characters)",
        ))
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl SignerArgs {
    /// Validates every value once.
    pub(crate) fn validate(&self) -> Result<(Option<PathBuf>, SignerConfig), ConfigError> {
        if let Some(path) = &self.kubeconfig
            && !path.is_file()
        {
            return Err(bad(
                "--kubeconfig/NETWARD_KUBECONFIG",
                &path.display().to_string(),
                "no such file",
            ));
        }
        check_label("--namespace/POD_NAMESPACE", &self.namespace)?;
        check_label(
            "--service-account/NETWARD_SERVICE_ACCOUNT",
            &self.service_account,
        )?;
        identity::validate_trust_domain(&self.trust_domain).map_err(|e| {
            bad(
                "--trust-domain/NETWARD_TRUST_DOMAIN",
                &self.trust_domain,
                e.to_string(),
            )
        })?;
        let max_validity = parse_num(
            "--max-validity-secs/NETWARD_MAX_VALIDITY_SECS",
            &self.max_validity_secs,
            signer::MIN_VALIDITY.as_secs(),
            365 * 24 * 3600,
        )?;
        let ca_days = parse_num(
            "--ca-validity-days/NETWARD_CA_VALIDITY_DAYS",
            &self.ca_validity_days,
            1,
            20 * 365,
        )?;
        let lease = parse_num(
            "--lease-duration-secs/NETWARD_LEASE_DURATION_SECS",
            &self.lease_duration_secs,
            2,
            600,
        )?;
        let renew = parse_num(
            "--renew-secs/NETWARD_LEASE_RENEW_SECS",
            &self.renew_secs,
            1,
            600,
        )?;
        if renew * 3 > lease * 2 {
            return Err(bad(
                "--renew-secs/NETWARD_LEASE_RENEW_SECS",
                &self.renew_secs,
                format!("must be at most 2/3 of the lease duration ({lease} s)"),
            ));
        }
        let holder = match self.holder.clone().filter(|h| !h.is_empty()) {
            Some(h) => h,
            None => hostname().ok_or_else(|| {
                bad(
                    "--holder/POD_NAME",
                    "",
                    "required when the hostname is unknown (the Deployment sets it from metadata.name)",
                )
            })?,
        };
        let cfg = SignerConfig {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            trust_domain: self.trust_domain.clone(),
            max_validity: Duration::from_secs(max_validity),
            ca_validity: Duration::from_secs(ca_days * 24 * 3600),
            holder,
            lease_duration: Duration::from_secs(lease),
            renew_every: Duration::from_secs(renew),
            ..SignerConfig::default()
        };
        Ok((self.kubeconfig.clone(), cfg))
    }
}

/// `netward signer`.
pub(crate) fn signer(args: &SignerArgs) -> ExitCode {
    let (kubeconfig, cfg) = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netward: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(kubeconfig, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("netward: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(kubeconfig: Option<PathBuf>, cfg: SignerConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let client = source::client(kubeconfig.as_deref(), &Arc::new(SyncStatus::new()))
            .await
            .context("cannot build the Kubernetes client")?;
        info!(
            namespace = %cfg.namespace,
            service_account = %cfg.service_account,
            trust_domain = %cfg.trust_domain,
            holder = %cfg.holder,
            signer_name = signer::SIGNER_NAME,
            "netward signer starting"
        );
        signer::run(
            client,
            cfg,
            Arc::new(SignerStatus::default()),
            super::run::shutdown_signal(),
        )
        .await
        .context("the signer stopped")?;
        info!("netward signer stopped");
        Ok(())
    })
}
