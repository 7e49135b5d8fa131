//! Whether this kernel can do kernel TLS (kTLS). netward only reports it: the tunnel runs
//! userspace rustls either way, since our kernels are built without `CONFIG_TLS`.

use std::fmt;
use std::path::Path;

/// The kernel's kTLS support, as probed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KtlsSupport {
    /// The `tls` TCP ULP is registered, or its module can be loaded.
    Available,
    /// No kTLS: the tunnel uses userspace rustls.
    Unavailable {
        /// Why, for the logs.
        reason: String,
    },
}

impl KtlsSupport {
    /// Whether kTLS is available.
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available)
    }
}

impl fmt::Display for KtlsSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Available => f.write_str("available"),
            Self::Unavailable { reason } => write!(f, "unavailable: {reason}"),
        }
    }
}

const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Probes for kTLS: the `tls` ULP in `/proc/sys/net/ipv4/tcp_available_ulp`, else a `tls`
/// module (loadable on demand, or built in) under `/lib/modules/<release>`.
pub fn probe() -> KtlsSupport {
    let release = nix::sys::utsname::uname()
        .ok()
        .map(|u| u.release().to_string_lossy().into_owned());
    probe_in(
        Path::new(AVAILABLE_ULP),
        Path::new("/lib/modules"),
        release.as_deref(),
    )
}

fn probe_in(available_ulp: &Path, modules_root: &Path, release: Option<&str>) -> KtlsSupport {
    let ulps = match std::fs::read_to_string(available_ulp) {
        Ok(text) => {
            if text.split_whitespace().any(|ulp| ulp == "tls") {
                return KtlsSupport::Available;
            }
            format!(
                "the tls ULP is not in {} ({:?})",
                available_ulp.display(),
                text.trim()
            )
        }
        Err(e) => format!("cannot read {}: {e}", available_ulp.display()),
    };
    let Some(release) = release else {
        return KtlsSupport::Unavailable {
            reason: format!("{ulps}, and uname failed"),
        };
    };
    let dir = modules_root.join(release);
    if has_tls_module(&dir) {
        return KtlsSupport::Available;
    }
    KtlsSupport::Unavailable {
        reason: format!(
            "{ulps}, and no tls module under {} (kernel built without CONFIG_TLS?); using userspace TLS",
            dir.display()
        ),
    }
}

/// The module as a file (`kernel/net/tls/tls.ko[.xz|.zst|.gz]`) or listed as built in.
fn has_tls_module(dir: &Path) -> bool {
    let tls_dir = dir.join("kernel/net/tls");
    let as_file = ["tls.ko", "tls.ko.xz", "tls.ko.zst", "tls.ko.gz"]
        .iter()
        .any(|name| tls_dir.join(name).is_file());
    let built_in = std::fs::read_to_string(dir.join("modules.builtin"))
        .map(|list| {
            list.lines()
                .any(|line| line.trim() == "kernel/net/tls/tls.ko")
        })
        .unwrap_or(false);
    as_file || built_in
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn probe_reports_a_reason_when_unavailable() {
        match probe() {
            KtlsSupport::Available => {}
            KtlsSupport::Unavailable { reason } => assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn probe_reads_the_ulp_list_then_the_modules() {
        let dir = tempfile::tempdir().unwrap();
        let ulp = dir.path().join("tcp_available_ulp");
        let modules = dir.path().join("modules");

        std::fs::write(&ulp, "mptcp tls\n").unwrap();
        assert_eq!(
            probe_in(&ulp, &modules, Some("6.1.0")),
            KtlsSupport::Available
        );

        std::fs::write(&ulp, "mptcp\n").unwrap();
        let support = probe_in(&ulp, &modules, Some("6.1.0"));
        assert!(!support.is_available());
        assert!(support.to_string().contains("CONFIG_TLS"), "{support}");

        std::fs::create_dir_all(modules.join("6.1.0/kernel/net/tls")).unwrap();
        std::fs::write(modules.join("6.1.0/kernel/net/tls/tls.ko.xz"), b"").unwrap();
        assert_eq!(
            probe_in(&ulp, &modules, Some("6.1.0")),
            KtlsSupport::Available
        );

        std::fs::create_dir_all(modules.join("6.2.0")).unwrap();
        std::fs::write(
            modules.join("6.2.0/modules.builtin"),
            "kernel/net/tls/tls.ko\n",
        )
        .unwrap();
        assert_eq!(
            probe_in(&ulp, &modules, Some("6.2.0")),
            KtlsSupport::Available
        );

        let missing = probe_in(&dir.path().join("nope"), &modules, None);
        assert!(!missing.is_available());
    }
}
