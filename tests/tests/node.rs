//! `netward node` end to end (issue #6): the real binary in a node namespace, watching
//! the fake Kubernetes API server (a thread inside that namespace, on 127.0.0.1), with
//! real clients in pod namespaces. Enforcement must follow API events, survive a 410
//! Gone and an API outage, and fail closed throughout.
//!
//! `NETWARD_E2E_OUTAGE_SECS` sets the outage (default 10; the acceptance run uses 60).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward_controller::Cluster;
use netward_controller::kube::Kind;
use netward_controller::kube::fake::FakeApi;
use netward_e2e::{Lab, Netward, eventually, root};
use netward_proxy::lab::netns::Netns;
use netward_proxy::lab::probe::Outcome;
use netward_proxy::lab::topology;
use serde_json::json;

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: t, labels: {app: a}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 198.18.1.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: t, labels: {app: b}}
spec:
  containers:
    - name: c
      image: x
      ports: [{name: http, containerPort: 80}]
status: {podIPs: [{ip: 198.18.1.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: t, labels: {app: c}}
spec: {containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 198.18.1.12}]}
"#;

/// How long one probe waits: a denied connect times out after this.
const PROBE: Duration = Duration::from_millis(700);

/// The fake API server, serving from a thread inside a namespace; stopped on drop.
struct NsApi {
    fake: FakeApi,
    thread: Option<std::thread::JoinHandle<Option<std::io::Result<()>>>>,
    kubeconfig: tempfile::NamedTempFile,
}

impl NsApi {
    fn start(ns: &Netns, fake: FakeApi) -> NsApi {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = fake.clone();
        let thread = ns
            .spawn(move || {
                server.serve_blocking(SocketAddr::from(([127, 0, 0, 1], 0)), |a| {
                    let _ = tx.send(a);
                })
            })
            .unwrap();
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let kubeconfig = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(kubeconfig.path(), FakeApi::kubeconfig(addr)).unwrap();
        NsApi {
            fake,
            thread: Some(thread),
            kubeconfig,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().to_owned()
    }
}

impl Drop for NsApi {
    fn drop(&mut self) {
        self.fake.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pod_json(p: &netward_controller::model::Pod) -> Pod {
    let ips: Vec<_> = p
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let ports: Vec<_> = p
        .ports
        .iter()
        .map(|cp| json!({"name": cp.name, "containerPort": cp.port, "protocol": cp.protocol.as_str()}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": {"nodeName": p.node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
        "status": {"phase": "Running", "podIP": p.ips.first().map(ToString::to_string), "podIPs": ips}
    }))
    .unwrap()
}

/// Loads the lab's cluster (with its addresses) into the fake API server.
fn load(fake: &FakeApi, cluster: &Cluster) {
    for n in cluster.namespaces.values() {
        let labels: serde_json::Map<String, serde_json::Value> = n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        fake.apply::<Namespace>(
            &serde_json::from_value(json!({"metadata": {"name": n.name, "labels": labels}}))
                .unwrap(),
        );
    }
    for n in topology::node_objects(cluster) {
        let addrs: Vec<_> = n
            .ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        fake.apply::<Node>(
            &serde_json::from_value(
                json!({"metadata": {"name": n.name}, "spec": {"podCIDRs": n.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()}, "status": {"addresses": addrs}}),
            )
            .unwrap(),
        );
    }
    let pods: Vec<Pod> = cluster.pods.values().map(pod_json).collect();
    fake.apply_all(&pods);
}

fn relabel(fake: &FakeApi, lab: &Lab, key: &str, app: &str) {
    let mut p = lab
        .cluster
        .pods
        .values()
        .find(|p| p.key() == key)
        .unwrap()
        .clone();
    p.labels.insert("app".into(), app.into());
    fake.apply(&pod_json(&p));
}

/// Isolates `t/b` for ingress; allows TCP/80 from pods with `app=<from>`.
fn allow_b_from(app: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": "b-ingress", "namespace": "t"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}}], "ports": [{"port": 80}]}]}
    }))
    .unwrap()
}

fn start_node(lab: &Lab, api: &NsApi) -> Netward {
    let kc = api.kubeconfig();
    Netward::start(
        lab.node(),
        &[
            "node",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--drain-grace-secs",
            "2",
        ],
    )
}

fn single_node_lab() -> Lab {
    Lab::single_node(&[("pods.yaml", PODS)])
}

/// Whether `from` can connect to `t/b`:80 now.
fn reach(lab: &Lab, from: &str) -> bool {
    reach_within(lab, from, PROBE)
}

fn reach_within(lab: &Lab, from: &str, timeout: Duration) -> bool {
    lab.connect(from, "t/b", 80, false, timeout).0 == Outcome::Ok
}

/// A latency probe: an allowed connect over the lab's veths takes well under 5 ms, so
/// 50 ms probes resolve the moment enforcement changes to about 60 ms.
const FAST_PROBE: Duration = Duration::from_millis(50);

/// Probes until `from → t/b:80` gives `want`; returns the time from `since` to the start
/// of the first probe that did (bounded by `limit`).
fn until(
    lab: &Lab,
    nw: &Netward,
    from: &str,
    want: bool,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let at = Instant::now();
        // A fast timeout is confirmed by a full probe (a slow host must not fake a denial).
        if reach_within(lab, from, FAST_PROBE) == want && (want || !reach(lab, from)) {
            return at - since;
        }
        assert!(
            since.elapsed() < limit,
            "{from} -> t/b: still {} after {limit:?}:\n{}",
            if want { "denied" } else { "allowed" },
            nw.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn node_enforcement_follows_api_events() {
    if !root() {
        return;
    }
    let lab = single_node_lab();
    let fake = FakeApi::new();
    load(&fake, &lab.cluster);
    let api = NsApi::start(lab.node(), fake);
    let mut nw = start_node(&lab, &api);
    nw.wait_for("initial sync complete", Duration::from_secs(10));
    assert!(reach(&lab, "t/a"), "no policy: allowed\n{}", nw.log());

    let mut latencies = Vec::new();
    // Policy added: only app=c may reach b.
    let t0 = Instant::now();
    api.fake.apply(&allow_b_from("c"));
    latencies.push((
        "policy added -> a denied",
        until(&lab, &nw, "t/a", false, t0, Duration::from_secs(5)),
    ));
    assert!(reach(&lab, "t/c"), "c is allowed by the policy");
    // Pod relabelled: a becomes app=c.
    let t0 = Instant::now();
    relabel(&api.fake, &lab, "t/a", "c");
    latencies.push((
        "pod relabelled -> a allowed",
        until(&lab, &nw, "t/a", true, t0, Duration::from_secs(5)),
    ));
    // Policy updated: from app=a only (a is app=c now, c is app=c).
    let t0 = Instant::now();
    api.fake.apply(&allow_b_from("a"));
    latencies.push((
        "policy updated -> c denied",
        until(&lab, &nw, "t/c", false, t0, Duration::from_secs(5)),
    ));
    // Policy deleted: everything allowed again.
    let t0 = Instant::now();
    assert!(api.fake.delete::<NetworkPolicy>("t", "b-ingress"));
    latencies.push((
        "policy deleted -> c allowed",
        until(&lab, &nw, "t/c", true, t0, Duration::from_secs(5)),
    ));
    // A ClusterNetworkPolicy (issue #18): an Admin-tier Deny of app=c into app=b.
    let t0 = Instant::now();
    api.fake.apply(&admin_deny_b_from("c"));
    latencies.push((
        "Admin ClusterNetworkPolicy added -> c denied",
        until(&lab, &nw, "t/c", false, t0, Duration::from_secs(5)),
    ));
    let t0 = Instant::now();
    assert!(
        api.fake
            .delete::<netward_controller::cluster_policy::api::ClusterNetworkPolicy>("", "guard-b")
    );
    latencies.push((
        "ClusterNetworkPolicy deleted -> c allowed",
        until(&lab, &nw, "t/c", true, t0, Duration::from_secs(5)),
    ));
    for (what, took) in &latencies {
        eprintln!("event -> enforcement: {what}: {took:?}");
        assert!(*took < Duration::from_secs(2), "{what}: {took:?}");
    }
    assert!(nw.count("policy updated from the API") >= 6, "{}", nw.log());
    assert!(nw.stop(), "clean exit on SIGTERM:\n{}", nw.log());
    assert!(nw.log().contains("interception rules kept"), "{}", nw.log());
    // The rules were kept (fail closed until the next start): remove them.
    assert!(
        lab.node().sh("nft list table inet netward").is_ok(),
        "rules kept"
    );
    lab.node()
        .exec(&[netward_e2e::netward_bin().to_str().unwrap(), "cleanup"])
        .unwrap();
}

#[test]
fn node_survives_410_gone_and_an_api_outage() {
    if !root() {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("NETWARD_E2E_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let lab = single_node_lab();
    let fake = FakeApi::new();
    fake.set_bookmark_every(Duration::from_millis(200));
    load(&fake, &lab.cluster);
    fake.apply(&allow_b_from("a"));
    let api = NsApi::start(lab.node(), fake);
    let mut nw = start_node(&lab, &api);
    nw.wait_for("initial sync complete", Duration::from_secs(10));
    assert!(reach(&lab, "t/a") && !reach(&lab, "t/c"), "{}", nw.log());

    // 410 Gone on every watch: netward relists and keeps enforcing.
    api.fake.expire_watches();
    nw.wait_for("relisting", Duration::from_secs(10));
    assert!(
        reach(&lab, "t/a") && !reach(&lab, "t/c"),
        "enforcing through the relist"
    );
    let t0 = Instant::now();
    api.fake.apply(&allow_b_from("c"));
    let after_410 = until(&lab, &nw, "t/c", true, t0, Duration::from_secs(10));
    assert!(!reach(&lab, "t/a"), "a is no longer allowed");
    eprintln!("410 Gone: relisted; next change enforced after {after_410:?}");

    // The outage: the API server closes every connection. The last snapshot stays:
    // every probe must match it (a denied, c allowed), the whole time.
    api.fake.set_down(true);
    let start = Instant::now();
    let (mut checked, mut changed_during) = (0, false);
    while start.elapsed() < outage {
        if !changed_during && start.elapsed() > outage / 2 {
            // A change during the outage cannot be seen until the API is back.
            api.fake.apply(&allow_b_from("a"));
            changed_during = true;
        }
        assert!(
            !reach(&lab, "t/a"),
            "a allowed during the outage after {:?}:\n{}",
            start.elapsed(),
            nw.log()
        );
        assert!(
            reach(&lab, "t/c"),
            "c denied during the outage after {:?}:\n{}",
            start.elapsed(),
            nw.log()
        );
        checked += 2;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(nw.log().contains("API watch failed"), "{}", nw.log());
    let refused = api.fake.stats().refused;
    api.fake.set_down(false);
    let back = Instant::now();
    // kube-runtime's default backoff (client-go's: 0.8 s doubling to 30 s; the jitter
    // adds up to one more delay): recovery within ~60 s of the API's return.
    let recovered = until(&lab, &nw, "t/a", true, back, Duration::from_secs(75));
    assert!(!reach(&lab, "t/c"));
    nw.wait_for("API watch recovered", Duration::from_secs(10));
    eprintln!(
        "outage of {outage:?}: {checked} probes all matched the last snapshot; {refused} connections refused; \
         the change made during it was enforced {recovered:?} after the API came back"
    );
    assert!(nw.stop(), "{}", nw.log());
    lab.node()
        .exec(&[netward_e2e::netward_bin().to_str().unwrap(), "cleanup"])
        .unwrap();
}

/// Reads `VmRSS` and `VmHWM` (KiB) of the process whose command line holds `needle`.
fn rss_of(needle: &str) -> Option<(u64, u64)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(needle) || !cmdline.contains("node") || cmdline.starts_with("ip\0") {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        return Some((field("VmRSS:")?, field("VmHWM:")?));
    }
    None
}

/// 10,000 pods (100 namespaces, 1,000 policies) served by the fake API: netward's
/// memory and its event → enforcement time at that size.
#[test]
fn node_at_10000_pods() {
    if !root() {
        return;
    }
    let lab = single_node_lab();
    let fake = FakeApi::new();
    load(&fake, &lab.cluster);
    fake.apply(&allow_b_from("a"));
    let mut pods = Vec::new();
    for n in 0..100u32 {
        let name = format!("ns-{n:03}");
        fake.apply::<Namespace>(
            &serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"team": format!("team-{}", n % 10)}}}),
            )
            .unwrap(),
        );
        for i in 0..100u32 {
            let k = n * 100 + i;
            let ip = format!("198.19.{}.{}", 100 + k / 250, 1 + k % 250);
            let tier = ["web", "api", "db"][(i % 3) as usize];
            pods.push(serde_json::from_value::<Pod>(json!({
                "metadata": {"name": format!("w{}-{i}", i / 10), "namespace": name,
                             "labels": {"app": format!("app-{}", i / 10), "tier": tier}},
                "spec": {"nodeName": format!("node-{}", 1 + k % 50), "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            })).unwrap());
        }
        let mut policies = vec![
            json!({"metadata": {"name": "default-deny", "namespace": name}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ];
        for j in 0..9u32 {
            policies.push(json!({"metadata": {"name": format!("allow-{j}"), "namespace": name},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app-{j}")}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (j + 1) % 10)}}},
                                               {"namespaceSelector": {"matchLabels": {"team": format!("team-{j}")}}, "podSelector": {"matchLabels": {"tier": "api"}}}],
                                      "ports": [{"port": "http"}]}]}}));
        }
        let policies: Vec<NetworkPolicy> = policies
            .into_iter()
            .map(|p| serde_json::from_value(p).unwrap())
            .collect();
        fake.apply_all(&policies);
    }
    fake.apply_all(&pods);
    drop(pods);
    let api = NsApi::start(lab.node(), fake);
    let t0 = Instant::now();
    let mut nw = start_node(&lab, &api);
    nw.wait_for("initial sync complete", Duration::from_secs(60));
    let sync = t0.elapsed();
    let kc = api.kubeconfig();
    let (rss, hwm) = rss_of(kc.to_str().unwrap()).expect("netward's /proc status");
    assert!(reach(&lab, "t/a") && !reach(&lab, "t/c"), "{}", nw.log());
    // A change that needs a full compile at this size (a policy), then a pod relabel.
    let t1 = Instant::now();
    api.fake.apply(&allow_b_from("c"));
    let policy_latency = until(&lab, &nw, "t/c", true, t1, Duration::from_secs(10));
    let t2 = Instant::now();
    relabel(&api.fake, &lab, "t/a", "c");
    let pod_latency = until(&lab, &nw, "t/a", true, t2, Duration::from_secs(10));
    let (rss2, hwm2) = rss_of(kc.to_str().unwrap()).expect("netward's /proc status");
    eprintln!(
        "10,000 pods + 1,003 policies: initial sync (start -> enforcing) {sync:?}; RSS {} MiB (peak {} MiB) after sync, \
         {} MiB (peak {} MiB) after two updates; event -> enforcement: policy {policy_latency:?}, pod relabel {pod_latency:?}; \
         API server stats {:?}",
        rss / 1024,
        hwm / 1024,
        rss2 / 1024,
        hwm2 / 1024,
        api.fake.stats()
    );
    assert!(
        hwm2 < 512 * 1024,
        "peak RSS {hwm2} KiB exceeds the DaemonSet's 512 MiB limit"
    );
    assert!(policy_latency < Duration::from_secs(3) && pod_latency < Duration::from_secs(3));
    assert!(nw.stop(), "{}", nw.log());
    lab.node()
        .exec(&[netward_e2e::netward_bin().to_str().unwrap(), "cleanup"])
        .unwrap();
}

/// The admin port `netward node` listens on by default (`--admin-addr`: NODE_IP, else 127.0.0.1, port 15021).
const ADMIN_PORT: u16 = 15021;

/// `netward node` started by hand rather than with `Netward::start` (which waits for the
/// datapath): to probe it before its initial sync and to time its exit after SIGTERM.
/// Killed on drop if still running.
struct NodeProc {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl NodeProc {
    fn start(ns: &Netns, args: &[&str]) -> NodeProc {
        let log = tempfile::NamedTempFile::new().unwrap();
        // One open file for both streams: a shared offset, so neither overwrites the other.
        let out = log.reopen().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(netward_e2e::netward_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        NodeProc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "netward exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "netward did not log {needle:?} within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn term(&self) {
        let pid = i32::try_from(self.child.as_ref().unwrap().id()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// The exit status, if it exits within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes the rules a `netward node` kept, when the test ends (even by a panic).
struct CleanupRules<'a>(&'a Netns);

impl Drop for CleanupRules<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .exec(&[netward_e2e::netward_bin().to_str().unwrap(), "cleanup"]);
    }
}

/// `GET path` on the admin server, from inside the node namespace: `(status, body)`,
/// `None` if nothing answers.
fn admin_get(ns: &Netns, path: &str) -> Option<(u16, String)> {
    netward_e2e::admin_get(ns, ADMIN_PORT, path)
}

fn status_of(ns: &Netns, path: &str) -> Option<u16> {
    admin_get(ns, path).map(|(s, _)| s)
}

/// `/metrics`, parsed with a Prometheus text-format parser.
fn scrape(ns: &Netns) -> prometheus_parse::Scrape {
    let (status, body) = admin_get(ns, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{body}"))
}

/// The value of the sample `name` whose labels include `want` (`None`: absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// [`sample`], which must be present.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    sample(scrape, name, want).unwrap_or_else(|| {
        let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        panic!("no sample {name} {want:?} in /metrics; have {names:?}")
    })
}

const RESOURCES: [&str; 4] = ["namespaces", "nodes", "pods", "networkpolicies"];

/// The admin server is up before the initial sync: `/healthz` passes while the
/// NetworkPolicy list is held (HTTP 500s), `/readyz` fails until every list completed
/// and the datapath serves, then passes, and keeps passing through an API outage and a
/// 410 Gone relist (staleness shows in `/metrics` instead).
#[test]
fn node_admin_probes_follow_the_initial_sync_and_survive_api_trouble() {
    if !root() {
        return;
    }
    let lab = single_node_lab();
    let fake = FakeApi::new();
    fake.set_bookmark_every(Duration::from_millis(200));
    load(&fake, &lab.cluster);
    fake.set_unavailable(Kind::NetworkPolicy, true);
    let api = NsApi::start(lab.node(), fake);
    let _cleanup = CleanupRules(lab.node());
    let kc = api.kubeconfig();
    // The default --admin-addr (127.0.0.1:15021: the test sets no NODE_IP).
    let mut nw = NodeProc::start(
        lab.node(),
        &[
            "node",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ],
    );
    let ns = lab.node();
    let up = eventually("/healthz answers 200", Duration::from_secs(10), || {
        status_of(ns, "/healthz") == Some(200)
    });
    eprintln!("admin server up {up:?} after start");
    // The lists of NetworkPolicies fail: not ready, but alive.
    eventually("a failed list is counted", Duration::from_secs(10), || {
        metric(&scrape(ns), "netward_kube_watch_errors_total", &[]) >= 1.0
    });
    for _ in 0..10 {
        let (status, body) = admin_get(ns, "/readyz").unwrap();
        assert_eq!(status, 503, "not ready before the initial lists: {body}");
        assert!(body.contains("initial lists"), "{body}");
        assert_eq!(status_of(ns, "/healthz"), Some(200));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!nw.log().contains("datapath ready"), "{}", nw.log());
    let m = scrape(ns);
    assert_eq!(metric(&m, "netward_kube_initial_sync_done", &[]), 0.0);
    // Like `netward run`, the node agent raises its open-file limit to the hard one.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(
        metric(&m, "netward_open_files_limit", &[]),
        hard as f64,
        "RLIMIT_NOFILE in /metrics"
    );
    assert!(metric(&m, "netward_open_files", &[]) > 3.0);
    assert_eq!(metric(&m, "netward_ready", &[]), 0.0);
    assert_eq!(
        metric(&m, "netward_kube_last_sync_timestamp_seconds", &[]),
        0.0
    );
    assert!(
        metric(
            &m,
            "netward_kube_staleness_seconds",
            &[("resource", "networkpolicies")]
        ) > 0.0
    );
    assert_eq!(
        metric(
            &m,
            "netward_kube_last_success_age_seconds",
            &[("resource", "networkpolicies")]
        ),
        -1.0,
        "never listed"
    );

    // Release the list: ready once listed and the datapath serves.
    let released = Instant::now();
    api.fake.set_unavailable(Kind::NetworkPolicy, false);
    let took = eventually(
        "/readyz 200 after the lists",
        Duration::from_secs(45),
        || status_of(ns, "/readyz") == Some(200),
    );
    eprintln!("/readyz 200 {took:?} after the API served the lists (kube backoff included)");
    assert!(nw.log().contains("initial sync complete") && nw.log().contains("datapath ready"));
    let m = scrape(ns);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(metric(&m, "netward_kube_initial_sync_done", &[]), 1.0);
    assert_eq!(metric(&m, "netward_ready", &[]), 1.0);
    assert_eq!(metric(&m, "netward_draining", &[]), 0.0);
    assert_eq!(metric(&m, "netward_active_connections", &[]), 0.0);
    assert_eq!(metric(&m, "netward_kube_relists_total", &[]), 0.0);
    assert!(metric(&m, "netward_kube_watch_errors_total", &[]) >= 1.0);
    // 1 namespace + 1 node + 3 pods, plus the Init/InitDone markers of each list.
    assert!(metric(&m, "netward_kube_events_total", &[]) >= 5.0);
    assert!(metric(&m, "netward_kube_snapshots_total", &[]) >= 1.0);
    assert!(metric(&m, "netward_kube_full_compiles_total", &[]) >= 1.0);
    let synced = metric(&m, "netward_kube_last_sync_timestamp_seconds", &[]);
    assert!(
        (now - 60.0..=now + 1.0).contains(&synced),
        "last sync {synced}, now {now}"
    );
    for r in RESOURCES {
        assert_eq!(
            metric(&m, "netward_kube_staleness_seconds", &[("resource", r)]),
            0.0,
            "{r}"
        );
        let age = metric(
            &m,
            "netward_kube_last_success_age_seconds",
            &[("resource", r)],
        );
        assert!(
            (0.0..=released.elapsed().as_secs_f64() + 60.0).contains(&age),
            "{r}: {age}"
        );
    }
    assert_eq!(metric(&m, "netward_kube_staleness_max_seconds", &[]), 0.0);

    // An API outage: still ready (the last snapshot is enforced), staleness grows.
    api.fake.set_down(true);
    let mut checks = 0;
    eventually("staleness above 2 s", Duration::from_secs(20), || {
        checks += 1;
        assert_eq!(
            status_of(ns, "/readyz"),
            Some(200),
            "an API outage must not make the pod unready"
        );
        metric(&scrape(ns), "netward_kube_staleness_max_seconds", &[]) > 2.0
    });
    let m = scrape(ns);
    assert!(RESOURCES.iter().all(|r| metric(
        &m,
        "netward_kube_staleness_seconds",
        &[("resource", r)]
    ) > 0.0));
    let errors = metric(&m, "netward_kube_watch_errors_total", &[]);
    assert!(errors >= 5.0, "{errors}");
    // Back: fresh again (kube's backoff), still ready.
    api.fake.set_down(false);
    let recovered = ready_until(&nw, ns, "fresh again", Duration::from_secs(75), |m| {
        metric(m, "netward_kube_staleness_max_seconds", &[]) == 0.0
    });
    // A 410 Gone on the open watches: relisted, still ready.
    api.fake.expire_watches();
    ready_until(&nw, ns, "relisted", Duration::from_secs(30), |m| {
        metric(m, "netward_kube_relists_total", &[]) >= 1.0
            && metric(m, "netward_kube_staleness_max_seconds", &[]) == 0.0
    });
    eprintln!(
        "outage: /readyz stayed 200 over {checks} checks; fresh {recovered:?} after the API came back; relisted after 410 Gone"
    );

    nw.term();
    let status = nw.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        nw.log()
    );
    assert!(
        nw.log().contains("no live connections to drain"),
        "{}",
        nw.log()
    );
}

/// Scrapes every 100 ms until `done` holds, asserting `/readyz` is 200 at each step;
/// panics with the metrics and the log after `limit`.
fn ready_until(
    nw: &NodeProc,
    ns: &Netns,
    what: &str,
    limit: Duration,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        assert_eq!(
            status_of(ns, "/readyz"),
            Some(200),
            "{what}: must stay ready"
        );
        if done(&scrape(ns)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}:\n{}\n{}",
            admin_get(ns, "/metrics").unwrap().1,
            nw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens a TCP connection from a pod to `t/b`:80 (the lab's echo server) and checks
/// that it echoes.
fn open_echo(lab: &Lab, from: &str) -> TcpStream {
    let dst = SocketAddr::new(lab.ip("t/b", false), 80);
    let mut s = lab
        .pod(from)
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
        .unwrap()
        .expect("connect t/b:80");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    echo(&mut s, b"hello");
    s
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

fn start_drain_node(lab: &Lab, kc: &std::path::Path, grace: &str) -> NodeProc {
    let mut nw = NodeProc::start(
        lab.node(),
        &[
            "node",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:15021",
            "--drain-grace-secs",
            grace,
        ],
    );
    nw.wait_for("datapath ready", Duration::from_secs(20));
    eventually("/readyz 200", Duration::from_secs(10), || {
        status_of(lab.node(), "/readyz") == Some(200)
    });
    nw
}

/// SIGTERM with a live relayed connection: `/readyz` fails at once, the process waits
/// for the connection (which still works) and exits as soon as the client closes it;
/// with a short grace it exits at the deadline and the connection is closed. The rules
/// stay after either exit (no `--cleanup-on-exit`).
#[test]
fn node_drains_live_connections_on_sigterm() {
    if !root() {
        return;
    }
    let lab = single_node_lab();
    let fake = FakeApi::new();
    load(&fake, &lab.cluster);
    let api = NsApi::start(lab.node(), fake);
    let _cleanup = CleanupRules(lab.node());
    let kc = api.kubeconfig();
    let ns = lab.node();

    // 1. The client closes within the grace period.
    let mut nw = start_drain_node(&lab, &kc, "20");
    let mut conn = open_echo(&lab, "t/a");
    assert_eq!(
        metric(&scrape(ns), "netward_active_connections", &[]),
        1.0,
        "the connection is relayed by netward"
    );
    let t0 = Instant::now();
    nw.term();
    nw.wait_for("draining live connections", Duration::from_secs(5));
    let (status, body) = admin_get(ns, "/readyz").expect("the admin server answers while draining");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(status_of(ns, "/healthz"), Some(200));
    assert_eq!(metric(&scrape(ns), "netward_draining", &[]), 1.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        nw.wait_exit(Duration::ZERO).is_none(),
        "exited with a live connection:\n{}",
        nw.log()
    );
    echo(&mut conn, b"still relayed while draining");
    let closed = Instant::now();
    drop(conn);
    let status = nw.wait_exit(Duration::from_secs(5));
    let after_close = closed.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        nw.log()
    );
    eprintln!(
        "drain: exited {after_close:?} after the client closed ({:?} after SIGTERM, grace 20 s)",
        t0.elapsed()
    );
    assert!(after_close < Duration::from_secs(2), "{after_close:?}");
    let log = nw.log();
    assert!(
        log.contains("drained") && !log.contains("grace period over"),
        "{log}"
    );
    assert!(log.contains("interception rules kept"), "{log}");
    assert!(
        ns.sh("nft list table inet netward").is_ok(),
        "rules kept after the exit"
    );

    // 2. The client keeps its connection past a 2 s grace.
    let mut nw = start_drain_node(&lab, &kc, "2");
    let mut conn = open_echo(&lab, "t/a");
    let t0 = Instant::now();
    nw.term();
    let status = nw.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        nw.log()
    );
    eprintln!("drain: exited {took:?} after SIGTERM with the connection still open (grace 2 s)");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&took),
        "{took:?}:\n{}",
        nw.log()
    );
    let log = nw.log();
    assert!(
        log.contains("drain grace period over") && log.contains("remaining=1"),
        "{log}"
    );
    assert!(log.contains("interception rules kept"), "{log}");
    assert!(
        ns.sh("nft list table inet netward").is_ok(),
        "rules kept after the exit"
    );
    // netward's end of the relay is gone: the client sees the close.
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("the connection outlived netward: {other:?}"),
    }
}

/// An Admin-tier ClusterNetworkPolicy denying `app=<from>` pods into `app=b` pods.
fn admin_deny_b_from(from: &str) -> netward_controller::cluster_policy::api::ClusterNetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "guard-b"},
        "spec": {"tier": "Admin", "priority": 0,
                 "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}},
                 "ingress": [{"name": "deny-from", "action": "Deny",
                              "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": from}}}}]}]}
    }))
    .unwrap()
}
