//! `netward node` end to end (issue #6): the real binary in a node namespace, watching
//! the fake Kubernetes API server (a thread inside that namespace, on 127.0.0.1), with
//! real clients in pod namespaces. Enforcement must follow API events, survive a 410
//! Gone and an API outage, and fail closed throughout.
//!
//! `NETWARD_E2E_OUTAGE_SECS` sets the outage (default 10; the acceptance run uses 60).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward_controller::Cluster;
use netward_controller::kube::fake::FakeApi;
use netward_e2e::{Lab, Netward, root};
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
                json!({"metadata": {"name": n.name}, "status": {"addresses": addrs}}),
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
    for (what, took) in &latencies {
        eprintln!("event -> enforcement: {what}: {took:?}");
        assert!(*took < Duration::from_secs(2), "{what}: {took:?}");
    }
    assert!(nw.count("policy updated from the API") >= 4, "{}", nw.log());
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
