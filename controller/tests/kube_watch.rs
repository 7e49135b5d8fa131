//! The API source against the in-process fake API server: the real kube-rs client and
//! watchers, plain HTTP. Each scenario changes objects through the fake and checks the
//! verdicts of the snapshots the source publishes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netward_controller::kube::fake::{FakeApi, FakeServer};
use netward_controller::kube::{self as source, Kind, SyncStatus};
use netward_controller::{Flow, Protocol, Snapshot, Transport};
use serde_json::json;
use tokio::sync::watch;

const A: &str = "198.18.1.10";
const B: &str = "198.18.1.11";

fn ns(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn node(name: &str, ip: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    }))
    .unwrap()
}

/// Isolates `app=b` pods in `ns` for ingress, allowing `from` (a peer) on port 80.
fn policy(ns: &str, name: &str, from: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                 "ingress": [{"from": [from], "ports": [{"port": 80}]}]}
    }))
    .unwrap()
}

fn allowed(s: &Snapshot, from: &str, to: &str) -> bool {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let flow = Flow {
        src: s.endpoint_for_ip(ip(from)),
        dst: s.endpoint_for_ip(ip(to)),
        protocol: Protocol::Tcp,
        port: 80,
        transport: Transport::Plaintext,
    };
    s.authorize(&flow).allowed()
}

struct Source {
    fake: FakeApi,
    _server: FakeServer,
    rx: watch::Receiver<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
    _kubeconfig: tempfile::NamedTempFile,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(fake: FakeApi, opts: source::Options) -> Source {
    let server = fake.start().unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), FakeApi::kubeconfig(server.addr)).unwrap();
    let status = Arc::new(SyncStatus::new());
    let client = source::client(Some(kubeconfig.path()), &status)
        .await
        .unwrap();
    let (tx, rx) = watch::channel(Arc::new(Snapshot::not_ready()));
    let task = tokio::spawn(source::run(client, opts, tx, status.clone()));
    Source {
        fake,
        _server: server,
        rx,
        status,
        _kubeconfig: kubeconfig,
        task,
    }
}

impl Source {
    /// Waits (at most `limit`) until the published snapshot satisfies `f`.
    async fn wait(&mut self, what: &str, limit: Duration, f: impl Fn(&Snapshot) -> bool) {
        let ok = matches!(
            tokio::time::timeout(limit, self.rx.wait_for(|s| f(s))).await,
            Ok(Ok(_))
        );
        assert!(
            ok,
            "{what}: not seen within {limit:?} (generation {}, status {:?})",
            self.rx.borrow().generation(),
            self.status
        );
    }
}

fn cluster(fake: &FakeApi) {
    fake.apply(&ns("t", json!({"team": "x"})));
    fake.apply(&node("node-a", "198.18.0.1"));
    fake.apply(&pod("t", "a", "a", A));
    fake.apply(&pod("t", "b", "b", B));
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_only_after_every_initial_list_then_follows_changes() {
    let fake = FakeApi::new();
    cluster(&fake);
    fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "a"}}}),
    ));
    // The NetworkPolicy list fails at first: nothing may be published until it is listed.
    fake.set_unavailable(Kind::NetworkPolicy, true);
    let mut src = start(fake, source::Options::default()).await;
    wait_until("pods listed", || src.status.events() >= 4).await;
    // The client retries a 503 itself before the watcher sees the error.
    wait_until("policy list failing", || {
        src.status.failing().contains(&Kind::NetworkPolicy)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !src.rx.borrow().is_ready(),
        "nothing published without the policies"
    );
    assert!(!src.status.is_ready());
    assert!(src.status.staleness() > Duration::ZERO);
    src.fake.set_unavailable(Kind::NetworkPolicy, false);
    src.wait("first sync", LIMIT, |s| s.is_ready()).await;
    assert!(src.status.is_ready());
    let s = src.rx.borrow().clone();
    assert_eq!(s.all_pods().count(), 2, "both pods listed");
    assert!(
        s.policy_id("t", "b-from-a").is_some(),
        "the policy was listed before publishing"
    );
    assert!(allowed(&s, A, B), "a -> b allowed by the policy");
    assert!(
        s.node_for_ip("198.18.0.1".parse().unwrap()).is_some(),
        "nodes listed"
    );

    // Pod relabelled: a is no longer app=a.
    src.fake.apply(&pod("t", "a", "other", A));
    src.wait("pod relabelled", LIMIT, |s| !allowed(s, A, B))
        .await;
    // ... and back.
    src.fake.apply(&pod("t", "a", "a", A));
    src.wait("pod relabelled back", LIMIT, |s| allowed(s, A, B))
        .await;

    // Policy updated: only from namespaces labelled team=y (t is team=x).
    src.fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"namespaceSelector": {"matchLabels": {"team": "y"}}}),
    ));
    src.wait("policy updated", LIMIT, |s| !allowed(s, A, B))
        .await;
    // Namespace relabelled to team=y: allowed again.
    src.fake.apply(&ns("t", json!({"team": "y"})));
    src.wait("namespace relabelled", LIMIT, |s| allowed(s, A, B))
        .await;

    // Policy deleted, then a deny-all added: b is isolated with no rule.
    assert!(src.fake.delete::<NetworkPolicy>("t", "b-from-a"));
    src.wait("policy deleted", LIMIT, |s| {
        s.policy_id("t", "b-from-a").is_none()
    })
    .await;
    assert!(allowed(&src.rx.borrow(), A, B), "no policy: not isolated");
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny", "namespace": "t"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    src.fake.apply(&deny);
    src.wait("deny-all added", LIMIT, |s| !allowed(s, A, B))
        .await;

    // Pod added (a second client with app=a, allowed by nothing now) and deleted.
    src.fake.apply(&pod("t", "c", "a", "198.18.1.12"));
    src.wait("pod added", LIMIT, |s| s.all_pods().any(|p| p.name == "c"))
        .await;
    assert!(src.fake.delete::<Pod>("t", "c"));
    src.wait("pod deleted", LIMIT, |s| {
        !s.all_pods().any(|p| p.name == "c")
    })
    .await;
    assert_eq!(src.status.relists(), 0, "no relist without a fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_pod_events_gives_a_few_snapshots() {
    let fake = FakeApi::new();
    cluster(&fake);
    fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "a"}}}),
    ));
    let mut src = start(fake, source::Options::default()).await;
    src.wait("first sync", LIMIT, |s| s.is_ready()).await;
    let before = src.status.snapshots();
    let pods: Vec<Pod> = (0..1000)
        .map(|i| {
            pod(
                "t",
                &format!("p{i}"),
                "a",
                &format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250),
            )
        })
        .collect();
    let t0 = Instant::now();
    src.fake.apply_all(&pods);
    src.wait("1000 pods", LIMIT, |s| s.all_pods().count() == 1002)
        .await;
    let took = t0.elapsed();
    let published = src.status.snapshots() - before;
    eprintln!("1000 pod events: {published} snapshots, all applied after {took:?}");
    assert!(published <= 10, "{published} snapshots for one burst");
    let s = src.rx.borrow().clone();
    assert!(
        allowed(&s, "198.18.5.250", B),
        "the last pod of the burst is a peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_410_gone_dropped_watches_and_an_outage() {
    let fake = FakeApi::new();
    fake.set_bookmark_every(Duration::from_millis(100));
    cluster(&fake);
    let mut src = start(fake, source::Options::default()).await;
    src.wait("first sync", LIMIT, |s| s.is_ready()).await;
    let watches_up = |f: &FakeApi| f.open_watches() == Kind::ALL.len();
    wait_fake(&src.fake, "a watch per kind", watches_up).await;

    // 410 Gone as an ERROR event on the open watches: every watcher relists.
    src.fake.expire_watches();
    src.fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "nobody"}}}),
    ));
    src.wait("policy after 410", LIMIT, |s| !allowed(s, A, B))
        .await;
    wait_until("a relist per kind", || {
        src.status.relists() >= Kind::ALL.len() as u64
    })
    .await;
    assert!(
        src.fake.stats().gone >= Kind::ALL.len() as u64,
        "{:?}",
        src.fake.stats()
    );
    // Bookmarks come every 100 ms on an open watch: the relists above can all happen
    // before the first one (seen in CI), so wait for it rather than assume it.
    wait_until("bookmarks were requested and sent", || {
        src.fake.stats().bookmarks > 0
    })
    .await;

    // 410 as an HTTP response, on a paginated relist (more than one 500-item page of
    // pods): the continue token expires, the list restarts, and completes.
    let relists = src.status.relists();
    let gone = src.fake.stats().gone;
    let many: Vec<Pod> = (0..600)
        .map(|i| {
            pod(
                "t",
                &format!("m{i}"),
                "m",
                &format!("198.18.{}.{}", 10 + i / 250, 1 + i % 250),
            )
        })
        .collect();
    src.fake.apply_all(&many);
    src.wait("600 pods", LIMIT, |s| s.all_pods().count() == 602)
        .await;
    wait_fake(&src.fake, "a watch per kind", watches_up).await;
    src.fake.expire_next_continue();
    src.fake.expire_watches();
    src.fake.apply(&pod("t", "a", "nobody", A));
    let app_of_a = |s: &Snapshot| {
        s.all_pods()
            .find(|p| p.name == "a")
            .and_then(|p| p.labels.get("app").cloned())
    };
    src.wait("pod after HTTP 410", LIMIT, |s| {
        app_of_a(s).as_deref() == Some("nobody")
    })
    .await;
    wait_until("relists after HTTP 410", || {
        src.status.relists() >= relists + Kind::ALL.len() as u64
    })
    .await;
    assert!(
        src.fake.stats().gone > gone + Kind::ALL.len() as u64,
        "an ERROR event per kind and one HTTP 410: {:?}",
        src.fake.stats()
    );
    assert!(
        allowed(&src.rx.borrow(), A, B),
        "a is app=nobody, which the policy allows"
    );
    assert_eq!(
        src.rx.borrow().all_pods().count(),
        602,
        "the restarted list is complete"
    );

    // An outage: the last snapshot stays; staleness grows; changes made meanwhile
    // arrive after it.
    wait_fake(&src.fake, "a watch per kind", watches_up).await;
    wait_until("healthy", || src.status.failing().is_empty()).await;
    let gen_before = src.rx.borrow().generation();
    src.fake.set_down(true);
    wait_until("failing watches", || {
        src.status.failing().len() == Kind::ALL.len()
    })
    .await;
    src.fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "c"}}}),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        src.rx.borrow().generation(),
        gen_before,
        "nothing published during the outage"
    );
    assert!(
        src.rx.borrow().is_ready(),
        "the last snapshot stays enforced"
    );
    assert!(
        allowed(&src.rx.borrow(), A, B),
        "the old policy still applies"
    );
    assert!(
        src.status.staleness() >= Duration::from_secs(2),
        "{:?}",
        src.status.staleness()
    );
    assert!(src.fake.stats().refused > 0);
    src.fake.set_down(false);
    // The default backoff (client-go's: 0.8 s doubling to 30 s; backon's jitter adds up to
    // one more delay, and it only resets after 120 s without errors) bounds recovery at ~60 s.
    src.wait(
        "the change made during the outage",
        Duration::from_secs(75),
        |s| !allowed(s, A, B),
    )
    .await;
    wait_until("healthy again", || src.status.failing().is_empty()).await;
    assert_eq!(src.status.staleness(), Duration::ZERO);
    assert!(src.status.errors() >= 8);
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{what}: not within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_fake(fake: &FakeApi, what: &str, f: impl Fn(&FakeApi) -> bool) {
    wait_until(what, || f(fake)).await;
}

/// An Admin-tier ClusterNetworkPolicy denying `app=a` -> `app=b` on port 80.
fn cluster_policy(
    name: &str,
    action: &str,
) -> netward_controller::cluster_policy::api::ClusterNetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": 10,
                 "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}},
                 "ingress": [{"name": "from-a", "action": action,
                              "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}}],
                              "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}
    }))
    .unwrap()
}

/// ClusterNetworkPolicies are listed before the first snapshot, and their changes and
/// deletion are followed; an Admin Deny beats a NetworkPolicy's allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_are_watched() {
    use netward_controller::cluster_policy::api::ClusterNetworkPolicy;
    let fake = FakeApi::new();
    cluster(&fake);
    fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "a"}}}),
    ));
    fake.apply(&cluster_policy("guard", "Deny"));
    // Not listed yet: nothing may be published.
    fake.set_unavailable(Kind::ClusterNetworkPolicy, true);
    let mut src = start(fake, source::Options::default()).await;
    wait_until("ClusterNetworkPolicy list failing", || {
        src.status.failing().contains(&Kind::ClusterNetworkPolicy)
    })
    .await;
    assert!(!src.rx.borrow().is_ready(), "published before every list");
    src.fake.set_unavailable(Kind::ClusterNetworkPolicy, false);
    src.wait("the Admin Deny enforced", LIMIT, |s| {
        s.is_ready() && !allowed(s, A, B)
    })
    .await;
    // Pass hands the flow to the NetworkPolicy, which allows it.
    src.fake.apply(&cluster_policy("guard", "Pass"));
    src.wait("Pass: the NetworkPolicy decides", LIMIT, |s| {
        allowed(s, A, B)
    })
    .await;
    src.fake.apply(&cluster_policy("guard", "Deny"));
    src.wait("Deny again", LIMIT, |s| !allowed(s, A, B)).await;
    assert!(src.fake.delete::<ClusterNetworkPolicy>("", "guard"));
    src.wait("deleted: the NetworkPolicy decides", LIMIT, |s| {
        s.cluster_policy_id("guard").is_none() && allowed(s, A, B)
    })
    .await;
}

/// Without the ClusterNetworkPolicy CRD (404 to its list) the node enforces
/// NetworkPolicies alone instead of staying not ready, and picks ClusterNetworkPolicies
/// up once the CRD is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cluster_network_policy_crd_is_an_empty_tier_not_an_outage() {
    let fake = FakeApi::new();
    cluster(&fake);
    fake.apply(&policy(
        "t",
        "b-from-a",
        json!({"podSelector": {"matchLabels": {"app": "a"}}}),
    ));
    fake.set_not_installed(Kind::ClusterNetworkPolicy, true);
    let mut src = start(fake, source::Options::default()).await;
    src.wait("ready without the CRD", LIMIT, |s| {
        s.is_ready() && allowed(s, A, B)
    })
    .await;
    assert!(
        !src.status.failing().contains(&Kind::ClusterNetworkPolicy),
        "a missing CRD is not a failing watch"
    );
    // The CRD is installed and a policy created: the retrying watcher picks it up.
    src.fake
        .set_not_installed(Kind::ClusterNetworkPolicy, false);
    src.fake.apply(&cluster_policy("guard", "Deny"));
    src.wait(
        "the Admin Deny enforced once the CRD exists",
        Duration::from_secs(40),
        |s| !allowed(s, A, B),
    )
    .await;
}
