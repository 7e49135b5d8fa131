//! The paths a flow can take through the node, and the proxy process of each.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netward_iptables::{CommandRunner, Config as RulesConfig, Ruleset, Runner};
use netward_proxy::lab::netns::Netns;
use serde::Serialize;

use crate::manifests::{CLIENT_IP, NODE, SERVER_IP};

/// One way through the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathKind {
    /// Kernel forwarding, no interception.
    Direct,
    /// `netward run` (splice).
    Netward,
    /// `netward run` of another build (`--netward-before`): before/after figures of a
    /// change, interleaved in one run. Only when asked for in `--paths`.
    NetwardBefore,
    /// HAProxy in transparent TCP mode with splicing, behind the same TPROXY rules.
    Haproxy,
    /// `netward run --no-splice`.
    Copy,
    /// `netward run` with 10,000 pods and 1,000 policies loaded.
    NetwardScale,
    /// Two nodes: kernel forwarding across the bridge, no interception.
    Direct2n,
    /// Two nodes: `netward run` on both, no tunnel (cross-node plaintext).
    Netward2nPlaintext,
    /// Two nodes: `netward run` on both with the mTLS tunnel, server namespace `strict`.
    Netward2nMtls,
    /// Two nodes: HAProxy with TLS 1.3 on both ends (mutual TLS), not transparent: the
    /// client connects to node A's address.
    Haproxy2nTls,
}

impl PathKind {
    /// Every path, in run order.
    pub(crate) const ALL: [PathKind; 10] = [
        PathKind::Direct,
        PathKind::Netward,
        PathKind::NetwardBefore,
        PathKind::Haproxy,
        PathKind::Copy,
        PathKind::NetwardScale,
        PathKind::Direct2n,
        PathKind::Netward2nPlaintext,
        PathKind::Netward2nMtls,
        PathKind::Haproxy2nTls,
    ];

    /// The single-node paths (the default run).
    pub(crate) const SINGLE_NODE: [PathKind; 5] = [
        PathKind::Direct,
        PathKind::Netward,
        PathKind::Haproxy,
        PathKind::Copy,
        PathKind::NetwardScale,
    ];

    /// The two-node paths (`--two-node`).
    pub(crate) const TWO_NODE: [PathKind; 4] = [
        PathKind::Direct2n,
        PathKind::Netward2nPlaintext,
        PathKind::Netward2nMtls,
        PathKind::Haproxy2nTls,
    ];

    /// Whether it runs in the two-node lab.
    pub(crate) fn two_node(self) -> bool {
        PathKind::TWO_NODE.contains(&self)
    }

    /// The path its ratios are taken to: direct forwarding in the same lab.
    pub(crate) fn reference(self) -> PathKind {
        if self.two_node() {
            PathKind::Direct2n
        } else {
            PathKind::Direct
        }
    }

    /// Its name in tables, JSON and `--paths`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Netward => "netward",
            PathKind::NetwardBefore => "netward-before",
            PathKind::Haproxy => "haproxy",
            PathKind::Copy => "copy",
            PathKind::NetwardScale => "netward-scale",
            PathKind::Direct2n => "direct-2n",
            PathKind::Netward2nPlaintext => "netward-2n-plaintext",
            PathKind::Netward2nMtls => "netward-2n-mtls",
            PathKind::Haproxy2nTls => "haproxy-2n-tls",
        }
    }

    /// Parses a `--paths` entry.
    pub(crate) fn parse(s: &str) -> Result<PathKind> {
        PathKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .with_context(|| {
                let names: Vec<&str> = PathKind::ALL.iter().map(|p| p.name()).collect();
                format!("unknown path {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// Where the proxies find what they need.
pub(crate) struct Env<'a> {
    /// The node's namespace.
    pub(crate) node: &'a Netns,
    /// The `netward` binary.
    pub(crate) netward: &'a Path,
    /// The `netward` binary of the `netward-before` path, when given.
    pub(crate) netward_before: Option<&'a Path>,
    /// Manifests with the two bench pods.
    pub(crate) manifests: &'a Path,
    /// The same plus the scale manifests.
    pub(crate) scale_manifests: &'a Path,
    /// Logs and configuration files.
    pub(crate) workdir: &'a Path,
}

/// A running proxy (none for `direct`); stopped and its rules removed when dropped.
pub(crate) struct Proxy {
    kind: PathKind,
    child: Option<Child>,
    log: PathBuf,
    node: String,
    /// HAProxy's rules, installed by the bench (netward installs and removes its own).
    haproxy_rules: Option<RulesConfig>,
}

/// The HAProxy 2.6 configuration: a transparent listener on the TPROXY port, upstream
/// to the original destination (`server ... 0.0.0.0:0`) from the client's address
/// (`usesrc clientip`), kernel splicing both ways.
pub(crate) const HAPROXY_CFG: &str = "\
global
    maxconn 7000
    # The hard RLIMIT_NOFILE here is 20,000 (no CAP_SYS_RESOURCE to raise it).
    ulimit-n 19500
    nbthread 2
    log stderr format short local0 err

defaults
    mode tcp
    log global
    option splice-request
    option splice-response
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout client-fin 10s
    timeout server-fin 10s

frontend intercepted
    bind 0.0.0.0:15001 transparent
    maxconn 7000
    default_backend original_destination

backend original_destination
    source 0.0.0.0 usesrc clientip
    server orig 0.0.0.0:0 maxconn 7000
";

/// HAProxy 2.6 cannot put a mark on its backend connections (`set-mark` only marks
/// packets to the client), so the bench marks them in nftables the way `SO_MARK` would:
/// packets from the node to the server's bench ports get the BYPASS mark (before
/// netward's `zone_output` puts them in the upstream conntrack zone), and the
/// server's answers to them go to that zone too. Only the bench's own addresses match.
fn haproxy_mark_rules(cfg: &RulesConfig) -> String {
    let ports = crate::manifests::PORTS
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip nwbench {{
    chain output {{
        type filter hook output priority raw - 10; policy accept;
        ip daddr {SERVER_IP} tcp dport {{ {ports} }} meta mark set meta mark | {bypass:#x}
    }}
    chain prerouting {{
        type filter hook prerouting priority raw - 10; policy accept;
        ip saddr {SERVER_IP} ip daddr {CLIENT_IP} tcp sport {{ {ports} }} socket transparent 1 ct zone set {zone}
    }}
}}
",
        bypass = cfg.marks.bypass,
        zone = cfg.upstream_ct_zone,
    )
}

impl Proxy {
    /// Starts the proxy of `kind` and waits until it serves.
    pub(crate) fn start(kind: PathKind, env: &Env<'_>) -> Result<Proxy> {
        let log = env.workdir.join(format!("{}.log", kind.name()));
        let mut proxy = Proxy {
            kind,
            child: None,
            log: log.clone(),
            node: env.node.name().to_owned(),
            haproxy_rules: None,
        };
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", env.node.name()])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        match kind {
            PathKind::Direct => return Ok(proxy),
            PathKind::Direct2n
            | PathKind::Netward2nPlaintext
            | PathKind::Netward2nMtls
            | PathKind::Haproxy2nTls => bail!("{} runs in the two-node lab", kind.name()),
            PathKind::Netward
            | PathKind::NetwardBefore
            | PathKind::Copy
            | PathKind::NetwardScale => {
                let manifests = if kind == PathKind::NetwardScale {
                    env.scale_manifests
                } else {
                    env.manifests
                };
                let bin = match (kind, env.netward_before) {
                    (PathKind::NetwardBefore, Some(before)) => before,
                    (PathKind::NetwardBefore, None) => {
                        bail!("the netward-before path needs --netward-before BINARY")
                    }
                    _ => env.netward,
                };
                cmd.arg(bin)
                    .arg("run")
                    .arg("--manifests")
                    .arg(manifests)
                    .args(["--node", NODE, "--reload-ms", "1000"]);
                if kind == PathKind::Copy {
                    cmd.arg("--no-splice");
                }
                // netward's default log level (info), as it runs on a node.
                cmd.env_remove("RUST_LOG");
            }
            PathKind::Haproxy => {
                let cfg = RulesConfig {
                    verdict_queue: false,
                    ipv6: false,
                    ..RulesConfig::default()
                };
                let mut ruleset = Ruleset::new(cfg.clone());
                ruleset.set_local(
                    [SERVER_IP, CLIENT_IP]
                        .iter()
                        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok()),
                );
                let runner = CommandRunner::new()
                    .in_netns(env.node.name())
                    .with_timeout(Duration::from_secs(20));
                proxy.haproxy_rules = Some(cfg.clone());
                netward_iptables::apply(&runner, &ruleset)
                    .context("installing the TPROXY rules for haproxy")?;
                let nft = env.workdir.join("haproxy-mark.nft");
                std::fs::write(&nft, haproxy_mark_rules(&cfg))?;
                env.node
                    .exec(&["nft", "-f", &nft.to_string_lossy()])
                    .context("installing the backend mark rules for haproxy")?;
                let conf = env.workdir.join("haproxy.cfg");
                std::fs::write(&conf, HAPROXY_CFG)?;
                cmd.arg("haproxy").arg("-db").arg("-f").arg(&conf);
            }
        }
        proxy.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", kind.name()))?,
        );
        proxy.wait_ready(env.node)?;
        Ok(proxy)
    }

    fn wait_ready(&mut self, node: &Netns) -> Result<()> {
        let limit = Duration::from_secs(90);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.kind.name(),
                    self.log_text()
                );
            }
            let ready = match self.kind {
                PathKind::Haproxy => !node
                    .exec(&["ss", "-Hltn", "sport = :15001"])?
                    .trim()
                    .is_empty(),
                _ => self.log_text().contains("datapath ready"),
            };
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "{} not ready within {limit:?}:\n{}",
            self.kind.name(),
            self.log_text()
        )
    }

    /// The proxy's log so far.
    pub(crate) fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The proxy's process id (`ip netns exec` execs it, so it is the child's).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// User + system CPU seconds of the whole process so far.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.pid().and_then(crate::procfs::cpu_seconds)
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after 10 s) and removes HAProxy's rules.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            let mut exited = false;
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
                problems.push(format!("{} did not stop within 10 s", self.kind.name()));
            }
        }
        if let Some(cfg) = self.haproxy_rules.take() {
            let runner = CommandRunner::new()
                .in_netns(&self.node)
                .with_timeout(Duration::from_secs(20));
            if let Err(e) = netward_iptables::remove(&runner, &cfg) {
                problems.push(format!("removing haproxy's TPROXY rules: {e}"));
            }
            let _ = runner.run("nft", &["delete", "table", "ip", "nwbench"], None);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}
