//! The daemons' configuration layer (`netward run`, `node` and `signer`): typed clap
//! flags, each with its environment variable where the manifests in `deploy/` set one,
//! parsed once by the value parsers here. A bad value, whether from a flag or the
//! environment, and any clap usage error of these subcommands exit 64 (EX_USAGE) with
//! the flag, the variable, the value and the reason, so that a DaemonSet's log and
//! restart reason say "configuration" (STYLE.md). The offline tools keep clap's 2.

use std::ffi::OsString;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use netward_iptables::Config as RulesConfig;
use netward_proxy::audit;
use netward_proxy::relay::RelayOptions;

/// EX_USAGE: a bad flag, environment variable or configuration value.
pub(crate) const EXIT_USAGE: u8 = 64;

/// The subcommands whose configuration and usage errors exit [`EXIT_USAGE`].
const DAEMONS: [&str; 3] = ["run", "node", "signer"];

/// A configuration value that cannot be used: its flag (and variable), its value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub(crate) struct ConfigError {
    /// `--flag/ENV_VAR`, or `--flag` when it has no variable.
    pub(crate) name: String,
    /// The value given (empty when none was).
    pub(crate) value: String,
    /// Why it cannot be used.
    pub(crate) reason: String,
}

impl ConfigError {
    /// A bad `value` of `name` (`--flag/ENV_VAR`).
    pub(crate) fn new(
        name: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Reports the error on stderr; the exit code is [`EXIT_USAGE`].
    pub(crate) fn exit(&self) -> ExitCode {
        eprintln!("netward: error: {self}");
        ExitCode::from(EXIT_USAGE)
    }
}

// ---------------------------------------------------------------------------------------
// Value parsers: each returns the reason alone; clap adds the flag and the value, and
// `from_clap` turns that into a `ConfigError`.

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, in any case).
pub(crate) fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A whole number in `min..=max` (unsigned: a sign is not a digit).
pub(crate) fn number<T>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u128> + Into<u128> + Display + Copy + Send + Sync + 'static,
{
    move |v: &str| {
        let n: u128 = v
            .trim()
            .parse()
            .map_err(|e| format!("not a whole number ({e})"))?;
        if n < min.into() || n > max.into() {
            return Err(format!("must be between {min} and {max}"));
        }
        T::try_from(n).map_err(|_| format!("must be between {min} and {max}"))
    }
}

/// A Kubernetes node name: a DNS-1123 subdomain.
pub(crate) fn node_name(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(
            "empty: give this node's name (the DaemonSet sets it from spec.nodeName)".to_owned(),
        );
    }
    netward_controller::names::dns1123_subdomain(v)
        .map(|()| v.to_owned())
        .map_err(|e| format!("not a node name: {e} (a DNS-1123 subdomain)"))
}

/// A namespace or service-account name: a DNS-1123 label.
pub(crate) fn dns_label(v: &str) -> Result<String, String> {
    netward_controller::names::dns1123_label(v)
        .map(|()| v.to_owned())
        .map_err(|e| format!("not a DNS label: {e} (at most 63 characters)"))
}

/// A SPIFFE trust domain.
pub(crate) fn trust_domain(v: &str) -> Result<String, String> {
    netward_proxy::mtls::identity::validate_trust_domain(v)
        .map(|()| v.to_owned())
        .map_err(|e| e.to_string())
}

/// A duration such as `24h`, `30m` or `7d`.
pub(crate) fn duration(v: &str) -> Result<Duration, String> {
    netward_proxy::mtls::identity::parse_duration(v).map_err(|e| e.to_string())
}

/// A node certificate's validity: at least the CSR API's shortest.
pub(crate) fn cert_validity(v: &str) -> Result<Duration, String> {
    let d = duration(v)?;
    if d < netward_proxy::mtls::signer::MIN_VALIDITY {
        return Err("at least 10m (the shortest certificate the CSR API issues)".to_owned());
    }
    Ok(d)
}

/// An absolute path.
pub(crate) fn absolute_path(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err("must be an absolute path".to_owned())
    }
}

/// An existing file.
pub(crate) fn existing_file(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_file() {
        Ok(p)
    } else {
        Err("no such file".to_owned())
    }
}

/// An IP address; empty is "not given" (as an unset variable).
pub(crate) fn ip_or_empty(v: &str) -> Result<Blank<IpAddr>, String> {
    match v.trim() {
        "" => Ok(Blank(None)),
        v => v
            .parse()
            .map(|ip| Blank(Some(ip)))
            .map_err(|e| format!("not an IP address ({e})")),
    }
}

/// A value that an empty variable leaves unset (`NODE_IP=""`, `NETWARD_DEBUG_ADDR=""`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blank<T>(pub(crate) Option<T>);

/// Where a listener binds, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// Not started.
    Off,
    /// Bound here.
    At(SocketAddr),
}

/// `IP:PORT` with a known port (not 0), or `none`.
pub(crate) fn listen(v: &str) -> Result<Listen, String> {
    let v = v.trim();
    if v == "none" {
        return Ok(Listen::Off);
    }
    let addr: SocketAddr = v
        .parse()
        .map_err(|e| format!("expected IP:PORT, like 0.0.0.0:15021, or none ({e})"))?;
    if addr.port() == 0 {
        return Err("the port must not be 0: the probes need a known port".to_owned());
    }
    Ok(Listen::At(addr))
}

/// A loopback `IP:PORT`; empty or `none`: off.
pub(crate) fn loopback(v: &str) -> Result<Listen, String> {
    match v.trim() {
        "" | "none" => Ok(Listen::Off),
        v => netward_proxy::admin::parse_debug_addr(v).map(Listen::At),
    }
}

/// Where audit records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuditLog {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// A file, rotated by size.
    File(PathBuf),
}

/// `none`, `-` for stdout, or a file.
pub(crate) fn audit_log(v: &str) -> Result<AuditLog, String> {
    match v.trim() {
        "none" => Ok(AuditLog::Off),
        "-" => Ok(AuditLog::Stdout),
        "" => Err("expected none, - or a file".to_owned()),
        path => Ok(AuditLog::File(PathBuf::from(path))),
    }
}

// ---------------------------------------------------------------------------------------
// The datapath's flags, the same for `netward run` and `netward node`.

/// The datapath's options, flattened into `netward run` and `netward node`: the same
/// flags, the same forms (`--reject`, `--reject=false`), the same variables.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Datapath options")]
pub(crate) struct DatapathArgs {
    /// This node's name: its pods are those with this spec.nodeName. `node` needs it
    /// (the DaemonSet sets it from the downward API); without it `run` takes every pod.
    #[arg(long, visible_alias = "node", env = "NODE_NAME", value_name = "NAME", value_parser = node_name)]
    pub(crate) node_name: Option<String>,
    /// Refuse denied TCP connections with a reset instead of dropping their SYN.
    #[arg(long, env = "NETWARD_REJECT", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = boolean)]
    pub(crate) reject: bool,
    /// Port of the transparent TCP listener.
    #[arg(long, env = "NETWARD_TPROXY_PORT", value_name = "PORT", default_value_t = netward_iptables::config::TPROXY_PORT, value_parser = number(1u16, u16::MAX))]
    pub(crate) tproxy_port: u16,
    /// Relay with splice(2); false: a copy loop (for comparison).
    #[arg(long, env = "NETWARD_SPLICE", value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = boolean)]
    splice: bool,
    /// The same as --splice=false.
    #[arg(long, hide = true)]
    no_splice: bool,
    /// Intercept IPv6 too.
    #[arg(long, env = "NETWARD_IPV6", value_name = "BOOL", num_args = 0..=1, default_value = "true", default_missing_value = "true", value_parser = boolean)]
    ipv6: bool,
    /// The same as --ipv6=false.
    #[arg(long, hide = true)]
    no_ipv6: bool,
    /// Close connections idle for this many seconds (at most 7 days).
    #[arg(long, env = "NETWARD_IDLE_TIMEOUT_SECS", value_name = "SECS", default_value_t = 3600, value_parser = number(1u64, 7 * 24 * 3600))]
    idle_timeout_secs: u64,
    /// Remove the interception rules on exit. Default: true for `run`; false for `node`,
    /// so that during an upgrade the node stays fail closed until the next start.
    #[arg(long, env = "NETWARD_CLEANUP_ON_EXIT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = boolean)]
    cleanup_on_exit: Option<bool>,
    /// Keep the interception rules on exit (fail closed until the next start); wins
    /// over --cleanup-on-exit.
    #[arg(long)]
    keep_rules: bool,
    /// Address of the admin server (/metrics, /healthz, /readyz); `none` to disable
    /// (`run` only: the DaemonSet's probes need it). Default: 127.0.0.1:15021 for `run`;
    /// NODE_IP port 15021 for `node` (127.0.0.1 without NODE_IP).
    #[arg(long, env = "NETWARD_ADMIN_ADDR", value_name = "IP:PORT", value_parser = listen)]
    admin_addr: Option<Listen>,
    /// Serve /debug/snapshot (every pod's IPs and labels, every policy) on this loopback
    /// address, e.g. 127.0.0.1:15022. Off by default; not loopback: exit 64.
    #[arg(long, env = "NETWARD_DEBUG_ADDR", value_name = "IP:PORT", value_parser = loopback)]
    debug_addr: Option<Listen>,
    /// Audit log: a file (rotated by size), `-` for stdout, or `none`. Default: `-` for
    /// `run`, `none` for `node`.
    #[arg(long, env = "NETWARD_AUDIT_LOG", value_name = "FILE", value_parser = audit_log)]
    audit_log: Option<AuditLog>,
    /// Rotate the audit log file when it would pass this many bytes.
    #[arg(long, env = "NETWARD_AUDIT_MAX_BYTES", value_name = "BYTES", default_value_t = 100 * 1024 * 1024, value_parser = number(1u64, u64::MAX))]
    audit_max_bytes: u64,
    /// Rotated audit log files to keep (FILE.1 ... FILE.N).
    #[arg(long, env = "NETWARD_AUDIT_KEEP", value_name = "N", default_value_t = 5, value_parser = number(0u32, u32::MAX))]
    audit_keep: u32,
    /// Also write an `open` record when an allowed TCP connection starts.
    #[arg(long, env = "NETWARD_AUDIT_OPEN", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = boolean)]
    pub(crate) audit_open: bool,
    /// Denied attempts between the same source IP, destination IP and port within this
    /// many seconds are aggregated into one record with a count.
    #[arg(long, env = "NETWARD_AUDIT_DENY_WINDOW_SECS", value_name = "SECS", default_value_t = 10, value_parser = number(0u64, u64::MAX))]
    audit_deny_window_secs: u64,
    /// The SPIFFE trust domain of node identities.
    #[arg(long, env = "NETWARD_TRUST_DOMAIN", value_name = "DOMAIN", default_value = netward_proxy::mtls::identity::DEFAULT_TRUST_DOMAIN, value_parser = trust_domain)]
    pub(crate) trust_domain: String,
    /// Tunnel client: live streams per pooled TLS connection before another is opened.
    #[arg(long, env = "NETWARD_TUNNEL_STREAMS_PER_CONN", value_name = "N", default_value_t = 100, value_parser = number(1u32, u32::MAX))]
    tunnel_streams_per_conn: u32,
    /// Tunnel server: TLS handshakes in flight at once (unauthenticated work); more
    /// connections are closed at once, counted and audited.
    #[arg(long, env = "NETWARD_TUNNEL_MAX_HANDSHAKES", value_name = "N", default_value_t = 128, value_parser = number(1u32, 1 << 20))]
    tunnel_max_handshakes: u32,
    /// Tunnel server: live connections from one peer node; more are refused.
    #[arg(long, env = "NETWARD_TUNNEL_MAX_CONNS_PER_NODE", value_name = "N", default_value_t = 16, value_parser = number(1u32, 1 << 20))]
    tunnel_max_conns_per_node: u32,
}

/// The admin server's port when `--admin-addr` is not given.
pub(crate) const ADMIN_PORT: u16 = 15021;

impl DatapathArgs {
    /// The interception rules' settings.
    pub(crate) fn rules(&self) -> Result<RulesConfig, ConfigError> {
        let rules = RulesConfig {
            tcp_port: self.tproxy_port,
            ipv6: self.ipv6 && !self.no_ipv6,
            ..RulesConfig::default()
        };
        rules.validate().map_err(|e| {
            ConfigError::new(
                "--tproxy-port/NETWARD_TPROXY_PORT",
                self.tproxy_port.to_string(),
                e.to_string(),
            )
        })?;
        Ok(rules)
    }

    /// Whether the relay uses splice(2).
    pub(crate) fn splice(&self) -> bool {
        self.splice && !self.no_splice
    }

    /// The idle timeout of relayed connections (and tunnel connections).
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The relay's options.
    pub(crate) fn relay(&self) -> RelayOptions {
        RelayOptions {
            splice: self.splice(),
            idle_timeout: Some(self.idle_timeout()),
            ..RelayOptions::default()
        }
    }

    /// Whether the rules are removed on exit, `default` unless a flag says.
    pub(crate) fn cleanup_on_exit(&self, default: bool) -> bool {
        !self.keep_rules && self.cleanup_on_exit.unwrap_or(default)
    }

    /// The admin server's address: `--admin-addr`, else `default`. `None` only when
    /// `none` is given and `may_be_off`. Never the transparent listener's port.
    pub(crate) fn admin_addr(
        &self,
        default: SocketAddr,
        may_be_off: bool,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        const NAME: &str = "--admin-addr/NETWARD_ADMIN_ADDR";
        let addr = match self.admin_addr.unwrap_or(Listen::At(default)) {
            Listen::Off if may_be_off => return Ok(None),
            Listen::Off => {
                return Err(ConfigError::new(
                    NAME,
                    "none",
                    "the DaemonSet's probes need the admin server",
                ));
            }
            Listen::At(addr) => addr,
        };
        if addr.port() == self.tproxy_port {
            return Err(ConfigError::new(
                NAME,
                addr.to_string(),
                format!(
                    "port {} is the transparent listener's (--tproxy-port)",
                    self.tproxy_port
                ),
            ));
        }
        Ok(Some(addr))
    }

    /// The tunnel's settings from these flags (the node-specific ones are the caller's).
    pub(crate) fn tunnel(
        &self,
        rules: &RulesConfig,
        bind: IpAddr,
    ) -> Result<netward_proxy::mtls::tunnel::TunnelConfig, ConfigError> {
        let wide = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let tunnel = netward_proxy::mtls::tunnel::TunnelConfig {
            max_streams_per_conn: wide(self.tunnel_streams_per_conn),
            max_handshakes: wide(self.tunnel_max_handshakes),
            max_conns_per_node: wide(self.tunnel_max_conns_per_node),
            idle_timeout: self.idle_timeout(),
            mark: Some(rules.marks.bypass),
            bind: Some(bind),
            trust_domain: self.trust_domain.clone(),
            ..netward_proxy::mtls::tunnel::TunnelConfig::default()
        };
        tunnel.validate().map_err(|e| {
            let flag = match e.name {
                "max_streams_per_conn" => {
                    "--tunnel-streams-per-conn/NETWARD_TUNNEL_STREAMS_PER_CONN"
                }
                "max_handshakes" => "--tunnel-max-handshakes/NETWARD_TUNNEL_MAX_HANDSHAKES",
                "max_conns_per_node" => {
                    "--tunnel-max-conns-per-node/NETWARD_TUNNEL_MAX_CONNS_PER_NODE"
                }
                "idle_timeout" => "--idle-timeout-secs/NETWARD_IDLE_TIMEOUT_SECS",
                "trust_domain" => "--trust-domain/NETWARD_TRUST_DOMAIN",
                other => other,
            };
            ConfigError::new(flag, e.value, e.reason)
        })?;
        Ok(tunnel)
    }

    /// The debug listener's address, if asked for.
    pub(crate) fn debug_addr(&self) -> Option<SocketAddr> {
        match self.debug_addr {
            Some(Listen::At(addr)) => Some(addr),
            Some(Listen::Off) | None => None,
        }
    }

    /// Starts the audit writer (`default` unless `--audit-log` says): its sink (disabled
    /// when off) and its thread.
    pub(crate) fn start_audit(
        &self,
        default: AuditLog,
        node: Option<&str>,
    ) -> Result<(audit::Sink, Option<std::thread::JoinHandle<()>>), ConfigError> {
        let output = match self.audit_log.clone().unwrap_or(default) {
            AuditLog::Off => return Ok((audit::Sink::disabled(), None)),
            AuditLog::Stdout => audit::Output::Stdout,
            AuditLog::File(path) => audit::Output::File {
                path,
                max_bytes: self.audit_max_bytes,
                keep: usize::try_from(self.audit_keep).unwrap_or(usize::MAX),
            },
        };
        let shown = match &output {
            audit::Output::Stdout => "-".to_owned(),
            audit::Output::File { path, .. } => path.display().to_string(),
        };
        let cfg = audit::Config {
            output,
            deny_window: Duration::from_secs(self.audit_deny_window_secs),
            ..audit::Config::default()
        };
        match audit::start(cfg, node) {
            Ok((sink, writer)) => Ok((sink, Some(writer))),
            Err(e) => Err(ConfigError::new(
                "--audit-log/NETWARD_AUDIT_LOG",
                shown,
                e.to_string(),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clap's errors.

/// `--flag/ENV_VAR` (or `--flag`) for an argument of `cmd` named in a clap error
/// (`--tproxy-port <PORT>`).
fn arg_name(cmd: &clap::Command, shown: &str) -> String {
    let long = shown
        .split([' ', '='])
        .next()
        .unwrap_or(shown)
        .trim_start_matches('-');
    let env = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    match env {
        Some(env) => format!("--{long}/{env}"),
        None => format!("--{long}"),
    }
}

/// A clap error about one value of one argument of `cmd` as a [`ConfigError`]; `None`
/// for the other errors (an unknown flag, a missing one, a conflict).
pub(crate) fn from_clap(err: &clap::Error, cmd: &clap::Command) -> Option<ConfigError> {
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let shown = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let reason = match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => match err.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
            _ => "invalid value".to_owned(),
        },
    };
    Some(ConfigError::new(arg_name(cmd, &shown), value, reason))
}

/// The subcommand named on the command line (after the global options).
fn subcommand(args: impl IntoIterator<Item = OsString>) -> Option<String> {
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--log-format" {
            args.next();
        } else if arg == "--" {
            return None;
        } else if !arg.starts_with('-') {
            return Some(arg.into_owned());
        }
    }
    None
}

/// Reports a failed parse of the command line: help and version as clap prints them; an
/// error of `run`, `node` or `signer` exits 64 (a bad value as a [`ConfigError`]), the
/// other subcommands' exit 2.
pub(crate) fn parse_failed(err: clap::Error, root: &clap::Command) -> ExitCode {
    let code = u8::try_from(err.exit_code()).unwrap_or(2);
    if !err.use_stderr() {
        let _ = err.print();
        return ExitCode::from(code);
    }
    let Some(daemon) = subcommand(std::env::args_os())
        .filter(|s| DAEMONS.contains(&s.as_str()))
        .and_then(|s| root.find_subcommand(&s).cloned())
    else {
        let _ = err.print();
        return ExitCode::from(code);
    };
    match from_clap(&err, &daemon) {
        Some(e) => {
            eprintln!(
                "netward: error: {e}\n\nFor more information, try 'netward {} --help'.",
                daemon.get_name()
            );
        }
        None => {
            let _ = err.print();
        }
    }
    ExitCode::from(EXIT_USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_with_their_reason() {
        assert_eq!(boolean("TRUE"), Ok(true));
        assert_eq!(boolean("off"), Ok(false));
        assert_eq!(boolean("maybe"), Err("expected true or false".to_owned()));
        let port = number(1u16, u16::MAX);
        assert_eq!(port(" 15001 "), Ok(15001));
        assert_eq!(port("0"), Err("must be between 1 and 65535".to_owned()));
        assert!(port("x").is_err_and(|e| e.starts_with("not a whole number")));
        assert_eq!(port("70000"), Err("must be between 1 and 65535".to_owned()));
        assert!(port("-1").is_err_and(|e| e.starts_with("not a whole number")));
        assert_eq!(listen("none"), Ok(Listen::Off));
        assert_eq!(
            listen("0.0.0.0:15021"),
            Ok(Listen::At(SocketAddr::from(([0, 0, 0, 0], 15021))))
        );
        assert!(listen("0.0.0.0:0").is_err_and(|e| e.contains("must not be 0")));
        assert_eq!(loopback(""), Ok(Listen::Off));
        assert!(loopback("0.0.0.0:15022").is_err_and(|e| e.contains("loopback")));
        assert_eq!(ip_or_empty(""), Ok(Blank(None)));
        assert_eq!(audit_log("-"), Ok(AuditLog::Stdout));
        assert!(audit_log("").is_err());
        assert!(node_name("Node_A").is_err_and(|e| e.starts_with("not a node name")));
        assert!(node_name("").is_err_and(|e| e.starts_with("empty")));
        assert!(dns_label("a.b").is_err_and(|e| e.starts_with("not a DNS label")));
        assert_eq!(
            absolute_path("rel"),
            Err("must be an absolute path".to_owned())
        );
    }

    #[test]
    fn the_subcommand_is_found_after_the_global_options() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            subcommand(args(&["netward", "--log-format", "json", "node", "--x"])).as_deref(),
            Some("node")
        );
        assert_eq!(
            subcommand(args(&["netward", "--log-format=json", "signer"])).as_deref(),
            Some("signer")
        );
        assert_eq!(subcommand(args(&["netward", "--help"])), None);
    }
}
