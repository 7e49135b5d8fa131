//! The two-node paths (issue #9): a client pod on `node-a`, a server pod on `node-b`, the
//! nodes joined by the lab's bridge. Direct forwarding, netward on both nodes without and
//! with the mTLS tunnel, and HAProxy with mutual TLS 1.3 on both ends.
//!
//! Every path is checked before it is measured: the netward paths by node B's audit
//! records (`"mtls":true` from `node-a` through the tunnel, `"mtls":false` without) and
//! the tunnel listener's connections, HAProxy's by a plaintext connection that node B's
//! TLS listener must refuse.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use netward_proxy::lab::netns::Netns;
use netward_proxy::mtls::identity;

use crate::manifests::{NODE, NODE_B, SERVER_2N_IP};
use crate::paths::PathKind;
use crate::servers::{ECHO_PORT, HOLD_PORT, IPERF_PORT, RR_PORT};

/// The tunnel port on each node's address (as in docs/mtls.md).
pub(crate) const TUNNEL_PORT: u16 = 15008;
/// HAProxy's TLS listeners on node B: each bench port plus this.
const TLS_PORT_OFFSET: u16 = 10_000;
/// How long a path may take to come up or to show its audit records.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The two nodes, the manifests, the PKI and the tools.
pub(crate) struct Env2n<'a> {
    /// `node-a` (the client's) and `node-b` (the server's) namespaces.
    pub(crate) nodes: [&'a Netns; 2],
    /// Their IPv4 addresses.
    pub(crate) node_ips: [Ipv4Addr; 2],
    /// The `netward` binary.
    pub(crate) netward: &'a Path,
    /// Manifests without the mTLS label.
    pub(crate) manifests_plain: &'a Path,
    /// The same with `netward.io/mtls: strict` on the bench namespace.
    pub(crate) manifests_strict: &'a Path,
    /// The CA (`ca/`), the node identities (`node-a/`, `node-b/`) and HAProxy's PEMs.
    pub(crate) pki: &'a Path,
    /// Logs, configuration files, advertisement directories.
    pub(crate) workdir: &'a Path,
    /// Extra arguments for both nodes' `netward run` on the mTLS path (experiments).
    pub(crate) mtls_args: &'a [String],
}

impl Env2n<'_> {
    /// Where the client connects for `kind`: the server pod, except for HAProxy, which
    /// is not transparent (the client connects to node A's address, the same ports).
    pub(crate) fn target(&self, kind: PathKind) -> Result<IpAddr> {
        Ok(match kind {
            PathKind::Haproxy2nTls => IpAddr::V4(self.node_ips[0]),
            _ => SERVER_2N_IP.parse().context("server address")?,
        })
    }
}

/// Creates the CA and both node identities (ECDSA P-256, SPIFFE URI SANs), and for
/// HAProxy a `crt` file per node (certificate chain then key, one PEM).
pub(crate) fn make_pki(dir: &Path) -> Result<()> {
    let td = identity::DEFAULT_TRUST_DOMAIN;
    identity::init_ca(&dir.join("ca"), td, identity::DEFAULT_CA_VALIDITY)
        .context("creating the bench CA")?;
    for node in [NODE, NODE_B] {
        let files = identity::issue(
            &dir.join("ca"),
            node,
            &dir.join(node),
            td,
            identity::DEFAULT_NODE_VALIDITY,
        )
        .with_context(|| format!("issuing {node}'s certificate"))?;
        let mut pem = std::fs::read_to_string(&files.cert)?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&std::fs::read_to_string(&files.key)?);
        std::fs::write(dir.join(format!("{node}.haproxy.pem")), pem)?;
    }
    Ok(())
}

/// The processes of one two-node path (none for `direct-2n`); stopped when dropped.
pub(crate) struct Pair {
    kind: PathKind,
    /// `(node index, process, log)`.
    children: Vec<(usize, Child, PathBuf)>,
    /// Node names, for `ss` after the namespaces' objects are out of reach.
    node_ns: [String; 2],
}

impl Pair {
    /// Starts the path's proxies on both nodes, waits until they serve, and checks that
    /// a connection from `client` takes the path it is named after.
    pub(crate) fn start(kind: PathKind, env: &Env2n<'_>, client: &Netns) -> Result<Pair> {
        let mut pair = Pair {
            kind,
            children: Vec::new(),
            node_ns: [
                env.nodes[0].name().to_owned(),
                env.nodes[1].name().to_owned(),
            ],
        };
        match kind {
            PathKind::Direct2n => return Ok(pair),
            PathKind::Netward2nPlaintext | PathKind::Netward2nMtls => {
                let mtls = kind == PathKind::Netward2nMtls;
                // A fresh advertisement directory: nothing left by an earlier run.
                let peers = env.workdir.join(format!("peers-{}", unique()));
                std::fs::create_dir_all(&peers)?;
                for (i, name) in [NODE, NODE_B].into_iter().enumerate() {
                    let mut cmd = Command::new(env.netward);
                    cmd.arg("run")
                        .arg("--manifests")
                        .arg(if mtls {
                            env.manifests_strict
                        } else {
                            env.manifests_plain
                        })
                        .args(["--node", name, "--reload-ms", "1000"]);
                    if mtls {
                        cmd.arg("--mtls-identity")
                            .arg(env.pki.join(name))
                            .arg("--tunnel-listen")
                            .arg(SocketAddr::from((env.node_ips[i], TUNNEL_PORT)).to_string())
                            .arg("--tunnel-peers")
                            .arg(&peers)
                            .args(env.mtls_args);
                    }
                    pair.spawn(i, env, cmd)?;
                }
                for i in 0..2 {
                    pair.wait_log(i, "datapath ready")?;
                    if mtls {
                        pair.wait_log(i, "mTLS tunnel listener up")?;
                    }
                }
                if mtls {
                    // Each node re-reads the advertisements every 200 ms.
                    let start = Instant::now();
                    while [NODE, NODE_B]
                        .iter()
                        .any(|n| !peers.join(format!("{n}.tunnel")).exists())
                    {
                        ensure!(
                            start.elapsed() < READY_LIMIT,
                            "the nodes did not advertise their tunnels within {READY_LIMIT:?}"
                        );
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    std::thread::sleep(Duration::from_millis(600));
                }
            }
            PathKind::Haproxy2nTls => {
                for i in 0..2 {
                    let conf = env.workdir.join(format!("haproxy-2n-{i}.cfg"));
                    std::fs::write(&conf, haproxy_tls_cfg(i, env))?;
                    let mut cmd = Command::new("haproxy");
                    cmd.arg("-db").arg("-f").arg(&conf);
                    pair.spawn(i, env, cmd)?;
                }
                let start = Instant::now();
                for (i, port) in [(0, IPERF_PORT), (1, IPERF_PORT + TLS_PORT_OFFSET)] {
                    loop {
                        pair.check_alive()?;
                        let ss =
                            env.nodes[i].exec(&["ss", "-Hltn", &format!("sport = :{port}")])?;
                        if !ss.trim().is_empty() {
                            break;
                        }
                        ensure!(
                            start.elapsed() < READY_LIMIT,
                            "haproxy on node {i} not listening within {READY_LIMIT:?}:{}",
                            pair.logs()
                        );
                        std::thread::sleep(Duration::from_millis(25));
                    }
                }
            }
            other => bail!("{} is not a two-node path", other.name()),
        }
        pair.verify(env, client)
            .with_context(|| format!("{}: checking the path before measuring", kind.name()))?;
        Ok(pair)
    }

    fn spawn(&mut self, i: usize, env: &Env2n<'_>, cmd: Command) -> Result<()> {
        let log = env
            .workdir
            .join(format!("{}-{}.log", self.kind.name(), [NODE, NODE_B][i]));
        let file = std::fs::File::create(&log)?;
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", env.nodes[i].name()])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = wrapped
            .spawn()
            .with_context(|| format!("starting {} on node {i}", self.kind.name()))?;
        self.children.push((i, child, log));
        Ok(())
    }

    fn log_of(&self, node: usize) -> String {
        let mut s = String::new();
        for (i, _, log) in &self.children {
            if *i == node
                && let Ok(mut f) = std::fs::File::open(log)
            {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    /// Both nodes' logs, for error messages (the last 40 lines of each non-empty one,
    /// each line on its own; empty when neither process wrote anything).
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for node in 0..2 {
            let text = self.log_of(node);
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let tail = &lines[lines.len().saturating_sub(40)..];
            let _ = write!(
                out,
                "\n--- {} (last {} lines) ---\n{}",
                [NODE, NODE_B][node],
                tail.len(),
                tail.join("\n")
            );
        }
        out
    }

    fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        for (i, child, _) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                dead.push(format!("node {i} exited ({status})"));
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            bail!(
                "{}: {} before it was ready:{}",
                self.kind.name(),
                dead.join(", "),
                self.logs()
            )
        }
    }

    fn wait_log(&mut self, node: usize, needle: &str) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            self.check_alive()?;
            if self.log_of(node).contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "{}: node {node} did not log {needle:?} within {READY_LIMIT:?}:{}",
            self.kind.name(),
            self.logs()
        )
    }

    /// Node B's audit `close` records that contain every one of `needles`, waiting (at
    /// most [`READY_LIMIT`]) for one.
    fn wait_close_record(&mut self, needles: &[&str]) -> Result<String> {
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            self.check_alive()?;
            if let Some(l) = self.log_of(1).lines().find(|l| {
                l.starts_with('{')
                    && l.contains("\"event\":\"close\"")
                    && needles.iter().all(|n| l.contains(n))
            }) {
                return Ok(l.to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "node B wrote no close record with {needles:?} within {READY_LIMIT:?}:{}",
            self.logs()
        )
    }

    /// One echo through the path, then the evidence that it took the path it is named
    /// after. A benchmark of the wrong path is worse than none.
    fn verify(&mut self, env: &Env2n<'_>, client: &Netns) -> Result<()> {
        let target = SocketAddr::new(env.target(self.kind)?, ECHO_PORT);
        let marker = format!("netward-bench-{}-{}", self.kind.name(), unique());
        let sent = marker.clone();
        let echoed = client.run(move || echo_once(target, sent.as_bytes()))??;
        ensure!(
            echoed == marker.as_bytes(),
            "echo through {target} returned {:?}, not the marker",
            String::from_utf8_lossy(&echoed)
        );
        let tunnel_conns = |ns: &Netns| -> Result<usize> {
            let out = ns.exec(&[
                "ss",
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{TUNNEL_PORT} )"),
            ])?;
            Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
        };
        match self.kind {
            PathKind::Netward2nMtls => {
                let rec = self.wait_close_record(&[
                    "\"mtls\":true",
                    "\"peer_node\":\"node-a\"",
                    &format!("\"dst\":{{\"ip\":\"{SERVER_2N_IP}\",\"port\":{ECHO_PORT}"),
                ])?;
                let n = tunnel_conns(env.nodes[1])?;
                ensure!(
                    n > 0,
                    "no established connection on node B's tunnel listener after an echo went \
                     through; close record: {rec}"
                );
                eprintln!(
                    "  {}: checked: node B's close record has \"mtls\":true from node-a; {n} \
                     TLS connection(s) on node B's :{TUNNEL_PORT}",
                    self.kind.name()
                );
            }
            PathKind::Netward2nPlaintext => {
                self.wait_close_record(&[
                    "\"mtls\":false",
                    &format!("\"dst\":{{\"ip\":\"{SERVER_2N_IP}\",\"port\":{ECHO_PORT}"),
                ])?;
                ensure!(
                    tunnel_conns(env.nodes[1])? == 0,
                    "a tunnel connection exists on the plaintext path"
                );
                eprintln!(
                    "  {}: checked: node B's close record has \"mtls\":false; no tunnel",
                    self.kind.name()
                );
            }
            PathKind::Haproxy2nTls => {
                // Node B's listener must speak TLS only: plaintext gets no echo.
                let b = SocketAddr::from((env.node_ips[1], ECHO_PORT + TLS_PORT_OFFSET));
                let plain = env.nodes[0].run(move || echo_once(b, b"plaintext?"))?;
                ensure!(
                    !matches!(&plain, Ok(e) if e == b"plaintext?"),
                    "node B's TLS listener {b} echoed plaintext"
                );
                eprintln!(
                    "  {}: checked: echo through node A's haproxy; node B's :{} refuses plaintext",
                    self.kind.name(),
                    ECHO_PORT + TLS_PORT_OFFSET
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The process ids (both nodes).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c, _)| c.id()).collect()
    }

    /// User + system CPU seconds of the proxies on both nodes, so far.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        if self.children.is_empty() {
            return None;
        }
        self.pids()
            .into_iter()
            .map(crate::procfs::cpu_seconds)
            .sum::<Option<f64>>()
    }

    /// Stops every process (SIGTERM, then SIGKILL after 10 s).
    pub(crate) fn stop(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        for (_, child, _) in &mut self.children {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for (i, mut child, _) in std::mem::take(&mut self.children) {
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
                problems.push(format!(
                    "{} on {} did not stop within 10 s",
                    self.kind.name(),
                    self.node_ns[i]
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}

/// A number that differs between calls in this process (names, markers).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends `data`, half-closes, and reads the echo to EOF (bounded by timeouts).
fn echo_once(dst: SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    let limit = Duration::from_secs(5);
    let mut s =
        TcpStream::connect_timeout(&dst, limit).with_context(|| format!("connect {dst}"))?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .with_context(|| format!("reading the echo from {dst}"))?;
    Ok(out)
}

/// HAProxy 2.6 with TLS on both ends, one frontend per bench port. Node A (`i == 0`)
/// listens in clear on its own address and originates mutual TLS 1.3 to node B's
/// `port + 10000`; node B terminates it (client certificate required, chained to the
/// bench CA) and connects to the server pod from its own address. Same certificates
/// as the tunnel (ECDSA P-256 from the netward CA); OpenSSL's default TLS 1.3 suites.
fn haproxy_tls_cfg(i: usize, env: &Env2n<'_>) -> String {
    let node = [NODE, NODE_B][i];
    let crt = env.pki.join(format!("{node}.haproxy.pem"));
    let ca = env.pki.join("ca").join(identity::CA_CERT_FILE);
    let (crt, ca) = (crt.display(), ca.display());
    let mut cfg = String::from(
        "global
    maxconn 7000
    ulimit-n 19500
    nbthread 2
    log stderr format short local0 err
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout client-fin 10s
    timeout server-fin 10s
",
    );
    for port in [IPERF_PORT, ECHO_PORT, RR_PORT, HOLD_PORT] {
        let tls_port = port + TLS_PORT_OFFSET;
        if i == 0 {
            cfg.push_str(&format!(
                "
frontend plain_{port}
    bind {a}:{port}
    maxconn 7000
    default_backend tls_{port}

backend tls_{port}
    server b {b}:{tls_port} ssl crt {crt} ca-file {ca} verify required maxconn 7000
",
                a = env.node_ips[0],
                b = env.node_ips[1],
            ));
        } else {
            cfg.push_str(&format!(
                "
frontend tls_{port}
    bind {b}:{tls_port} ssl crt {crt} ca-file {ca} verify required
    maxconn 7000
    default_backend pod_{port}

backend pod_{port}
    server pod {SERVER_2N_IP}:{port} maxconn 7000
",
                b = env.node_ips[1],
            ));
        }
    }
    cfg
}
