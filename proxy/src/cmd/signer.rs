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

use super::config::{self, ConfigError};

/// Every option is a flag and an environment variable, parsed by typed value parsers: a
/// bad one exits 64 with its name, its value and the reason.
#[derive(Args, Clone, Debug)]
#[command(after_help = "\
Examples:
  netward signer --kubeconfig ~/.kube/config --namespace netward-system
  POD_NAME=netward-signer-0 POD_NAMESPACE=netward-system netward signer --log-format json
  netward signer --max-validity-secs 3600 --lease-duration-secs 30 --renew-secs 10

The Deployment (deploy/signer.yaml) sets POD_NAME and POD_NAMESPACE from the downward API, \
and NETWARD_SERVICE_ACCOUNT, NETWARD_TRUST_DOMAIN and NETWARD_MAX_VALIDITY_SECS; a flag \
wins over its variable. Exit codes: 0 stopped; 1 runtime failure; 64 a bad flag or \
variable (named, with its value).")]
pub(crate) struct SignerArgs {
    /// A kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, or the pod's
    /// ServiceAccount (in cluster).
    #[arg(long, env = "NETWARD_KUBECONFIG", value_name = "FILE", value_parser = config::existing_file)]
    kubeconfig: Option<PathBuf>,
    /// netward's namespace: the node agent's service account, the CA Secret, the Lease
    /// and the trust-bundle ConfigMap (the Deployment sets it from metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS", default_value = "netward-system", value_parser = config::dns_label)]
    namespace: String,
    /// The node agent's service account, the only one whose requests are signed.
    #[arg(long, env = "NETWARD_SERVICE_ACCOUNT", value_name = "NAME", default_value = "netward", value_parser = config::dns_label)]
    service_account: String,
    /// The SPIFFE trust domain of node identities.
    #[arg(long, env = "NETWARD_TRUST_DOMAIN", value_name = "DOMAIN", default_value = identity::DEFAULT_TRUST_DOMAIN, value_parser = config::trust_domain)]
    trust_domain: String,
    /// The longest certificate issued, in seconds (a request may ask for less).
    #[arg(long, env = "NETWARD_MAX_VALIDITY_SECS", value_name = "SECS", default_value_t = 86_400, value_parser = config::number(signer::MIN_VALIDITY.as_secs(), 365 * 24 * 3600))]
    max_validity_secs: u64,
    /// Validity of a CA generated on the first run, in days.
    #[arg(long, env = "NETWARD_CA_VALIDITY_DAYS", value_name = "DAYS", default_value_t = 365, value_parser = config::number(1u64, 20 * 365))]
    ca_validity_days: u64,
    /// This replica's identity in the Lease (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    holder: Option<String>,
    /// The Lease duration in seconds.
    #[arg(long, env = "NETWARD_LEASE_DURATION_SECS", value_name = "SECS", default_value_t = 15, value_parser = config::number(2u64, 600))]
    lease_duration_secs: u64,
    /// How often the leader renews the Lease, in seconds (at most 2/3 of the Lease
    /// duration).
    #[arg(long, env = "NETWARD_LEASE_RENEW_SECS", value_name = "SECS", default_value_t = 5, value_parser = config::number(1u64, 600))]
    renew_secs: u64,
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl SignerArgs {
    /// Checks what the value parsers cannot see alone: the renewal against the Lease
    /// duration, and a holder name.
    pub(crate) fn validate(&self) -> Result<(Option<PathBuf>, SignerConfig), ConfigError> {
        let (lease, renew) = (self.lease_duration_secs, self.renew_secs);
        if renew * 3 > lease * 2 {
            return Err(ConfigError::new(
                "--renew-secs/NETWARD_LEASE_RENEW_SECS",
                renew.to_string(),
                format!("must be at most 2/3 of the lease duration ({lease} s)"),
            ));
        }
        let holder = match self.holder.clone().filter(|h| !h.is_empty()) {
            Some(h) => h,
            None => hostname().ok_or_else(|| {
                ConfigError::new(
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
            max_validity: Duration::from_secs(self.max_validity_secs),
            ca_validity: Duration::from_secs(self.ca_validity_days * 24 * 3600),
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
        Err(e) => return e.exit(),
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
