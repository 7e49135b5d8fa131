//! Engine benchmarks on a generated cluster of 10,000 pods in 100 namespaces with
//! 1,000 NetworkPolicies: full compile, one pod's incremental update, one
//! authorization decision per datapath path, and the compiled snapshot's memory
//! (the engine's own estimate and a counting global allocator).
//!
//! `cargo bench -p netward-controller --bench engine` measures;
//! `cargo bench -p netward-controller --bench engine -- --test` runs every bench once.
//! See `benches/README.md` for the figures and the targets.

// Set-up code in a benchmark: a panic (with its message) is the right way to fail.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use netward_controller::model::{Peer, Pod};
use netward_controller::{Cluster, Decision, Flow, Protocol, Side, Snapshot, Transport};

// ---------------------------------------------------------------------------
// Counting allocator: live heap bytes, and the peak while a window is open.
// ---------------------------------------------------------------------------

#[path = "engine/sys.rs"]
mod sys;
use sys::{LIVE, PEAK, TRACK_PEAK};

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/status` (0 when unavailable).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------
// Deterministic cluster generator.
// ---------------------------------------------------------------------------

mod fixture {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use k8s_openapi::api::networking::v1 as net;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use netward_controller::Cluster;
    use netward_controller::Protocol;
    use netward_controller::model::{ContainerPort, Labels, Namespace, NetworkPolicy, Pod};

    /// The size and seed of a generated cluster.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Params {
        pub(crate) namespaces: usize,
        pub(crate) pods_per_namespace: usize,
        pub(crate) policies_per_namespace: usize,
        pub(crate) seed: u64,
    }

    impl Params {
        /// 100 namespaces x 100 pods, 10 policies each: 10,000 pods, 1,000 policies.
        pub(crate) const STANDARD: Params = Params {
            namespaces: 100,
            pods_per_namespace: 100,
            policies_per_namespace: 10,
            seed: 0x6e65_7477_6172_6421,
        };
    }

    /// Pod IPs are `POD_BASE + 1 + index` (10,000 pods end at 198.18.39.16).
    pub(crate) const POD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
    /// Addresses outside the cluster that ipBlocks name: 198.19.0.0/16 (no pod uses it).
    pub(crate) const EXTERNAL_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

    /// xorshift64: deterministic, dependency-free, good enough to spread choices.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            // splitmix64 once so that small seeds still start well mixed (and never 0).
            let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            Rng((z ^ (z >> 31)) | 1)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        /// True with probability `pct`%.
        pub(crate) fn chance(&mut self, pct: usize) -> bool {
            self.below(100) < pct
        }

        pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
    }

    const TEAMS: [&str; 10] = [
        "payments", "search", "identity", "catalog", "checkout", "platform", "data", "ml",
        "growth", "infra",
    ];
    const APPS: [&str; 12] = [
        "frontend",
        "gateway",
        "api",
        "auth",
        "orders",
        "cart",
        "search",
        "db",
        "cache",
        "queue",
        "worker",
        "reporting",
    ];
    const MONITORING_APPS: [&str; 4] = ["prometheus", "alertmanager", "grafana", "loki"];
    const DNS_APPS: [&str; 2] = ["coredns", "node-local-dns"];
    const INGRESS_APPS: [&str; 2] = ["ingress-nginx", "oauth-proxy"];
    const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

    fn tier_of(app: &str) -> &'static str {
        match app {
            "frontend" | "gateway" | "ingress-nginx" | "oauth-proxy" => "web",
            "api" | "auth" | "orders" | "cart" | "search" => "api",
            "db" | "cache" | "queue" => "data",
            "worker" | "reporting" => "batch",
            _ => "ops",
        }
    }

    /// The name of namespace `i` (`ns-000` monitoring, `ns-001` DNS, `ns-002` ingress).
    pub(crate) fn namespace_name(i: usize) -> String {
        format!("ns-{i:03}")
    }

    fn apps_of(ns: usize) -> &'static [&'static str] {
        match ns {
            0 => &MONITORING_APPS,
            1 => &DNS_APPS,
            2 => &INGRESS_APPS,
            _ => &APPS,
        }
    }

    // --- k8s-openapi builders -------------------------------------------------

    fn s(x: &str) -> String {
        x.to_owned()
    }

    fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(pairs.iter().map(|(k, v)| (s(k), s(v))).collect()),
            match_expressions: None,
        }
    }

    fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// `(key, operator, values)` requirements.
    fn match_exprs(reqs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(
                reqs.iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: s(k),
                        operator: s(op),
                        values: (!vs.is_empty()).then(|| vs.iter().map(|v| s(v)).collect()),
                    })
                    .collect(),
            ),
        }
    }

    fn pods_peer(sel: LabelSelector) -> net::NetworkPolicyPeer {
        net::NetworkPolicyPeer {
            pod_selector: Some(sel),
            ..Default::default()
        }
    }

    fn ns_peer(sel: LabelSelector) -> net::NetworkPolicyPeer {
        net::NetworkPolicyPeer {
            namespace_selector: Some(sel),
            ..Default::default()
        }
    }

    fn ns_pods_peer(ns: LabelSelector, pods: LabelSelector) -> net::NetworkPolicyPeer {
        net::NetworkPolicyPeer {
            namespace_selector: Some(ns),
            pod_selector: Some(pods),
            ..Default::default()
        }
    }

    fn ip_peer(cidr: &str, except: &[String]) -> net::NetworkPolicyPeer {
        net::NetworkPolicyPeer {
            ip_block: Some(net::IPBlock {
                cidr: s(cidr),
                except: (!except.is_empty()).then(|| except.to_vec()),
            }),
            ..Default::default()
        }
    }

    fn port(proto: &str, p: i32) -> net::NetworkPolicyPort {
        net::NetworkPolicyPort {
            protocol: Some(s(proto)),
            port: Some(IntOrString::Int(p)),
            end_port: None,
        }
    }

    fn port_range(proto: &str, lo: i32, hi: i32) -> net::NetworkPolicyPort {
        net::NetworkPolicyPort {
            protocol: Some(s(proto)),
            port: Some(IntOrString::Int(lo)),
            end_port: Some(hi),
        }
    }

    fn named(name: &str) -> net::NetworkPolicyPort {
        net::NetworkPolicyPort {
            protocol: None,
            port: Some(IntOrString::String(s(name))),
            end_port: None,
        }
    }

    type RuleSpec = (
        Option<Vec<net::NetworkPolicyPeer>>,
        Option<Vec<net::NetworkPolicyPort>>,
    );

    fn policy(
        ns: &str,
        name: &str,
        pod_selector: LabelSelector,
        types: &[&str],
        ingress: Vec<RuleSpec>,
        egress: Vec<RuleSpec>,
    ) -> net::NetworkPolicy {
        net::NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(s(name)),
                namespace: Some(s(ns)),
                ..Default::default()
            },
            spec: Some(net::NetworkPolicySpec {
                pod_selector: Some(pod_selector),
                policy_types: Some(types.iter().map(|t| s(t)).collect()),
                ingress: (!ingress.is_empty()).then(|| {
                    ingress
                        .into_iter()
                        .map(|(from, ports)| net::NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: (!egress.is_empty()).then(|| {
                    egress
                        .into_iter()
                        .map(|(to, ports)| net::NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
            }),
        }
    }

    // --- the generator --------------------------------------------------------

    /// A pod's labels: always `app` and `tier`, then team/env/version/track, 3-6 in all.
    fn pod_labels(rng: &mut Rng, app: &str, team: &str, env: &str) -> Labels {
        let mut l = Labels::new();
        l.insert(s("app"), s(app));
        l.insert(s("tier"), s(tier_of(app)));
        if rng.chance(85) {
            l.insert(s("team"), s(team));
        }
        if rng.chance(60) {
            l.insert(s("env"), s(env));
        }
        if rng.chance(75) || l.len() < 3 {
            l.insert(s("version"), s(VERSIONS[rng.below(VERSIONS.len())]));
        }
        if rng.chance(25) {
            l.insert(
                s("track"),
                s(if rng.chance(80) { "stable" } else { "canary" }),
            );
        }
        l
    }

    /// A pod with the container ports named policies refer to.
    pub(crate) fn make_pod(ns: &str, name: &str, labels: Labels, index: usize) -> Pod {
        let api = labels.get("tier").is_some_and(|t| t == "api");
        let mut pod = Pod::new(ns, name, labels);
        let offset = u32::try_from(index + 1).unwrap();
        pod.ips = vec![IpAddr::V4(Ipv4Addr::from(u32::from(POD_BASE) + offset))];
        pod.node = Some(format!("node-{:02}", index % 50));
        let cp = |name: &str, port| ContainerPort {
            name: Some(s(name)),
            port,
            protocol: Protocol::Tcp,
        };
        pod.ports.push(cp("http", 8080));
        if api || index.is_multiple_of(3) {
            pod.ports.push(cp("grpc", 9090));
        }
        if !index.is_multiple_of(5) {
            pod.ports.push(cp("metrics", 9100));
        }
        pod
    }

    /// One policy for namespace `ns` (index `i`), slot `k`.
    fn make_policy(rng: &mut Rng, i: usize, k: usize, env: &str) -> net::NetworkPolicy {
        let ns = namespace_name(i);
        let apps = apps_of(i);
        let app = *rng.pick(apps);
        let other = *rng.pick(apps);
        let ing = &["Ingress"][..];
        let eg = &["Egress"][..];
        let both = &["Ingress", "Egress"][..];
        if k == 0 {
            let r = rng.below(100);
            if r < 40 {
                return policy(
                    &ns,
                    "default-deny-ingress",
                    everything(),
                    ing,
                    vec![],
                    vec![],
                );
            } else if r < 50 {
                return policy(&ns, "default-deny-all", everything(), both, vec![], vec![]);
            } else if r < 70 {
                let rule = (Some(vec![pods_peer(everything())]), None);
                return policy(
                    &ns,
                    "allow-same-namespace",
                    everything(),
                    ing,
                    vec![rule],
                    vec![],
                );
            }
        }
        if k == 1 {
            if env == "prod" {
                let dns = (
                    Some(vec![ns_pods_peer(
                        match_labels(&[("purpose", "dns")]),
                        match_labels(&[("app", "coredns")]),
                    )]),
                    Some(vec![port("UDP", 53), port("TCP", 53)]),
                );
                let internal = (
                    Some(vec![ns_peer(match_labels(&[("env", "prod")]))]),
                    Some(vec![named("http"), named("grpc")]),
                );
                let external = (
                    Some(vec![ip_peer(
                        "198.19.0.0/16",
                        &[s("198.19.128.0/17"), s("198.19.64.0/24")],
                    )]),
                    Some(vec![port("TCP", 443)]),
                );
                return policy(
                    &ns,
                    "egress-baseline",
                    everything(),
                    eg,
                    vec![],
                    vec![dns, internal, external],
                );
            }
            let scrape = (
                Some(vec![ns_pods_peer(
                    match_labels(&[("purpose", "monitoring")]),
                    match_labels(&[("app", "prometheus")]),
                )]),
                Some(vec![named("metrics")]),
            );
            return policy(&ns, "allow-scrape", everything(), ing, vec![scrape], vec![]);
        }
        let name = |kind: &str| format!("{kind}-{k}");
        match rng.below(8) {
            // Same-namespace app-to-app, matchLabels, named and numeric ports.
            0 => {
                let third = *rng.pick(apps);
                let rule = (
                    Some(vec![
                        pods_peer(match_labels(&[("app", other)])),
                        pods_peer(match_labels(&[("app", third), ("tier", tier_of(third))])),
                    ]),
                    Some(vec![named("http"), port("TCP", 8443)]),
                );
                policy(
                    &ns,
                    &name(&format!("allow-to-{app}")),
                    match_labels(&[("app", app)]),
                    ing,
                    vec![rule],
                    vec![],
                )
            }
            // matchExpressions In/NotIn/Exists; numeric port and an endPort range.
            1 => {
                let sel = match_exprs(&[
                    ("tier", "In", &["api", "data"]),
                    ("version", "NotIn", &["v1"]),
                ]);
                let rule = (
                    Some(vec![pods_peer(match_exprs(&[
                        ("tier", "In", &["web", "api"]),
                        ("team", "Exists", &[]),
                    ]))]),
                    Some(vec![port("TCP", 443), port_range("TCP", 8000, 8100)]),
                );
                policy(&ns, &name("tiered-access"), sel, ing, vec![rule], vec![])
            }
            // Cross-namespace: (namespaceSelector AND podSelector), and a team's namespaces.
            2 => {
                let team = *rng.pick(&TEAMS);
                let rule = (
                    Some(vec![
                        ns_pods_peer(
                            match_exprs(&[("env", "In", &["prod", "staging"])]),
                            match_labels(&[("app", "gateway")]),
                        ),
                        ns_peer(match_labels(&[("team", team)])),
                    ]),
                    Some(vec![named("grpc"), port("TCP", 8080)]),
                );
                policy(
                    &ns,
                    &name(&format!("allow-{team}-to-{app}")),
                    match_labels(&[("app", app)]),
                    ing,
                    vec![rule],
                    vec![],
                )
            }
            // Every namespace ({}), plus the ingress controllers.
            3 => {
                let rule = (
                    Some(vec![
                        ns_peer(everything()),
                        ns_pods_peer(
                            match_labels(&[("purpose", "ingress")]),
                            match_exprs(&[("app", "In", &["ingress-nginx", "oauth-proxy"])]),
                        ),
                    ]),
                    Some(vec![port("TCP", 8080), named("metrics")]),
                );
                policy(
                    &ns,
                    &name(&format!("cluster-wide-{app}")),
                    match_labels(&[("app", app)]),
                    ing,
                    vec![rule],
                    vec![],
                )
            }
            // Egress to external ranges (ipBlock with except) and to the data tier.
            4 => {
                let x = rng.below(8) * 16; // 198.19.{0,16,..,112}.0/20
                let cidr = format!("198.19.{x}.0/20");
                let except = [
                    format!("198.19.{}.0/24", x + 1),
                    format!("198.19.{}.128/25", x + 2),
                ];
                let ext = (
                    Some(vec![ip_peer(&cidr, &except)]),
                    Some(vec![port("TCP", 443), port_range("TCP", 30000, 32767)]),
                );
                let data = (
                    Some(vec![pods_peer(match_labels(&[("tier", "data")]))]),
                    Some(vec![port("TCP", 5432), port("TCP", 6379)]),
                );
                let sel = match_exprs(&[("tier", "In", &["api", "batch"])]);
                policy(
                    &ns,
                    &name("egress-external"),
                    sel,
                    eg,
                    vec![],
                    vec![ext, data],
                )
            }
            // Both directions, egress to several teams' namespaces.
            5 => {
                let teams = [*rng.pick(&TEAMS), *rng.pick(&TEAMS), *rng.pick(&TEAMS)];
                let ingress = (
                    Some(vec![pods_peer(match_labels(&[("app", other)]))]),
                    Some(vec![named("http")]),
                );
                let egress = (
                    Some(vec![ns_peer(match_exprs(&[("team", "In", &teams)]))]),
                    Some(vec![named("grpc"), named("http")]),
                );
                policy(
                    &ns,
                    &name(&format!("{app}-both-ways")),
                    match_labels(&[("app", app)]),
                    both,
                    vec![ingress],
                    vec![egress],
                )
            }
            // Ingress from outside the pod range (198.18.0.0/15 minus the pods' /18).
            6 => {
                let rule = (
                    Some(vec![ip_peer("198.18.0.0/15", &[s("198.18.0.0/18")])]),
                    Some(vec![port("TCP", 80), port("TCP", 443)]),
                );
                let sel = match_exprs(&[("tier", "In", &["web"])]);
                policy(
                    &ns,
                    &name("allow-external-web"),
                    sel,
                    ing,
                    vec![rule],
                    vec![],
                )
            }
            // NotIn / Exists on both selectors, UDP endPort range, non-dev namespaces.
            _ => {
                let sel = match_exprs(&[("track", "NotIn", &["canary"]), ("app", "Exists", &[])]);
                let rule = (
                    Some(vec![ns_pods_peer(
                        match_exprs(&[("env", "NotIn", &["dev"])]),
                        match_exprs(&[("version", "Exists", &[])]),
                    )]),
                    Some(vec![port_range("UDP", 9000, 9100), named("metrics")]),
                );
                policy(
                    &ns,
                    &name("stable-from-versioned"),
                    sel,
                    ing,
                    vec![rule],
                    vec![],
                )
            }
        }
    }

    /// The deterministic cluster for `params`. Policies go through `NetworkPolicy::from_api`,
    /// so they are validated like real input (and the generator asserts none is invalid).
    pub(crate) fn generate(params: Params) -> Cluster {
        let mut rng = Rng::new(params.seed);
        let mut cluster = Cluster::default();
        let mut index = 0;
        for i in 0..params.namespaces {
            let name = namespace_name(i);
            let team = TEAMS[i % TEAMS.len()];
            let env = match rng.below(10) {
                0..5 => "prod",
                5..8 => "staging",
                _ => "dev",
            };
            let mut labels = BTreeMap::new();
            labels.insert(s("team"), s(team));
            labels.insert(s("env"), s(env));
            let purpose = match i {
                0 => Some("monitoring"),
                1 => Some("dns"),
                2 => Some("ingress"),
                _ => None,
            };
            if let Some(p) = purpose {
                labels.insert(s("purpose"), s(p));
            }
            cluster.upsert_namespace(Namespace::with_labels(&name, labels));
            // Workloads (Deployments): 1-16 replicas that share one label set, as real
            // replicas do, until the namespace has its pods.
            let mut placed = 0;
            let mut workload = 0;
            while placed < params.pods_per_namespace {
                let app = *rng.pick(apps_of(i));
                let labels = pod_labels(&mut rng, app, team, env);
                let replicas = (1 + rng.below(16)).min(params.pods_per_namespace - placed);
                for r in 0..replicas {
                    let pod_name = format!("{app}-{workload}-{r:02}");
                    cluster.upsert_pod(make_pod(&name, &pod_name, labels.clone(), index));
                    index += 1;
                }
                placed += replicas;
                workload += 1;
            }
            for k in 0..params.policies_per_namespace {
                let np = make_policy(&mut rng, i, k, env);
                cluster.upsert_policy(NetworkPolicy::from_api(&np));
            }
        }
        let invalid: Vec<String> = cluster
            .invalid_policies()
            .map(|p| format!("{}: {:?}", p.key(), p.errors))
            .collect();
        assert!(
            invalid.is_empty(),
            "generator produced invalid policies: {invalid:?}"
        );
        assert_eq!(
            cluster.pods.len(),
            params.namespaces * params.pods_per_namespace
        );
        assert_eq!(
            cluster.policies.len(),
            params.namespaces * params.policies_per_namespace,
            "policy names collided"
        );
        cluster
    }
}

/// ClusterNetworkPolicies added to the standard cluster (issue #18's target: 100 of them
/// keep a decision under 1 µs and a compile under 250 ms at 10k pods).
mod cluster_policies {
    use netward_controller::cluster_policy::api;
    use netward_controller::{Cluster, ClusterNetworkPolicy};
    use serde_json::json;

    use super::fixture::Rng;

    const TEAMS: [&str; 10] = [
        "payments", "search", "identity", "catalog", "checkout", "platform", "data", "ml",
        "growth", "infra",
    ];
    const APPS: [&str; 6] = ["frontend", "api", "db", "cache", "worker", "orders"];

    /// Namespaces by team (a tenth of them), env (a third), both, or every
    /// namespace but the system ones (rarely: such peers decide most flows).
    fn ns_sel(rng: &mut Rng) -> serde_json::Value {
        match rng.below(10) {
            0..4 => json!({"matchLabels": {"team": TEAMS[rng.below(TEAMS.len())]}}),
            4..7 => json!({"matchLabels": {"env": (["prod", "staging", "dev"][rng.below(3)])}}),
            7..9 => json!({"matchLabels": {"team": TEAMS[rng.below(TEAMS.len())],
                                           "env": (["prod", "staging", "dev"][rng.below(3)])}}),
            _ => json!({"matchExpressions": [{"key": "purpose", "operator": "DoesNotExist"}]}),
        }
    }

    fn pods_sel(rng: &mut Rng) -> serde_json::Value {
        json!({"namespaceSelector": ns_sel(rng),
               "podSelector": {"matchLabels": {"app": APPS[rng.below(APPS.len())]}}})
    }

    fn protocols(rng: &mut Rng) -> Option<serde_json::Value> {
        match rng.below(4) {
            0 => None,
            1 => Some(
                json!([{"tcp": {"destinationPort": {"number": ([80, 443, 8080, 5432][rng.below(4)])}}}]),
            ),
            2 => Some(
                json!([{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8999}}}},
                             {"udp": {"destinationPort": {"number": 53}}}]),
            ),
            _ => Some(json!([{"destinationNamedPort": "http"}])),
        }
    }

    fn rule(rng: &mut Rng, egress: bool, i: usize) -> serde_json::Value {
        let action = ["Accept", "Deny", "Pass"][rng.below(3)];
        let mut peers = Vec::new();
        for _ in 0..1 + rng.below(3) {
            peers.push(match rng.below(if egress { 4 } else { 2 }) {
                0 => json!({"namespaces": ns_sel(rng)}),
                1 => json!({"pods": pods_sel(rng)}),
                2 => json!({"networks": ["198.19.255.0/24", "198.19.0.0/20"]}),
                _ => json!({"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}),
            });
        }
        let named_ok = !peers
            .iter()
            .any(|p| p.get("networks").is_some() || p.get("nodes").is_some());
        let mut r = json!({"name": format!("rule-{i}"), "action": action});
        r[if egress { "to" } else { "from" }] = json!(peers);
        if let Some(p) = protocols(rng).filter(|p| named_ok || !p.to_string().contains("Named")) {
            r["protocols"] = p;
        }
        r
    }

    /// `n` policies: three in four in the Admin tier, priorities 0-1000 (some tied),
    /// subjects by namespace (team, env) or by app, 1-4 rules each way.
    pub(crate) fn add(cluster: &mut Cluster, n: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        for i in 0..n {
            let subject = if rng.chance(50) {
                json!({"namespaces": ns_sel(&mut rng)})
            } else {
                json!({"pods": pods_sel(&mut rng)})
            };
            let ingress: Vec<_> = (0..rng.below(4))
                .map(|k| rule(&mut rng, false, k))
                .collect();
            let egress: Vec<_> = (0..1 + rng.below(3))
                .map(|k| rule(&mut rng, true, k))
                .collect();
            let obj = json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": format!("cnp-{i:03}")},
                "spec": {
                    "tier": if rng.chance(75) { "Admin" } else { "Baseline" },
                    "priority": rng.below(100) * 10,
                    "subject": subject,
                    "ingress": ingress,
                    "egress": egress,
                },
            });
            let obj: api::ClusterNetworkPolicy = serde_json::from_value(obj).unwrap();
            let cnp = ClusterNetworkPolicy::from_api(&obj);
            assert!(cnp.errors.is_empty(), "generator: {:?}", cnp.errors);
            cluster.upsert_cluster_policy(cnp);
        }
        assert_eq!(cluster.cluster_policies.len(), n);
    }
}

use fixture::{EXTERNAL_BASE, Params, Rng};

// ---------------------------------------------------------------------------
// Flows: chosen so that each really takes the path its bench is named after.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct FlowSpec {
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
}

/// What the datapath does per new flow: resolve both addresses, then decide.
#[inline]
fn decide(snap: &Snapshot, f: &FlowSpec) -> Decision {
    let flow = Flow {
        src: snap.endpoint_for_ip(f.src),
        dst: snap.endpoint_for_ip(f.dst),
        protocol: f.protocol,
        port: f.port,
        transport: Transport::Plaintext,
    };
    snap.authorize(&flow)
}

/// An address no pod, node or ipBlock rule uses: traces reveal isolation without matching.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

struct Flows {
    allowed: FlowSpec,
    denied: FlowSpec,
    external: FlowSpec,
    unisolated: FlowSpec,
    mixed: Vec<FlowSpec>,
}

fn pod_ip(p: &Pod) -> IpAddr {
    p.ips[0]
}

/// Isolating policy counts per pod: (ingress, egress), from `explain`.
fn isolation_counts(snap: &Snapshot, ip: IpAddr) -> (usize, usize) {
    let nowhere = snap.endpoint_for_ip(IpAddr::V4(NOWHERE));
    let me = snap.endpoint_for_ip(ip);
    let probe = |src, dst| Flow {
        src,
        dst,
        protocol: Protocol::Sctp,
        port: 1,
        transport: Transport::Plaintext,
    };
    let ing = snap.explain(&probe(nowhere, me)).ingress.len();
    let eg = snap.explain(&probe(me, nowhere)).egress.len();
    (ing, eg)
}

fn rules_in(snap: &Snapshot, ids: &[netward_controller::PolicyId], ingress: bool) -> usize {
    ids.iter()
        .map(|id| {
            let p = snap.policy(*id);
            if ingress {
                p.ingress.as_ref()
            } else {
                p.egress.as_ref()
            }
            .map_or(0, Vec::len)
        })
        .sum()
}

fn pick_flows(cluster: &Cluster, snap: &Snapshot) -> Flows {
    let pods: Vec<&Pod> = cluster.pods.values().collect();
    let counts: Vec<(usize, usize)> = pods
        .iter()
        .map(|p| isolation_counts(snap, pod_ip(p)))
        .collect();
    let mut rng = Rng::new(7);
    let tcp = |src, dst, port| FlowSpec {
        src,
        dst,
        protocol: Protocol::Tcp,
        port,
    };
    let egress_ok = |d: &Decision| matches!(d.egress, Side::Allowed { .. } | Side::NotIsolated);

    // By ingress isolation, most first.
    let mut by_ingress: Vec<usize> = (0..pods.len()).collect();
    by_ingress.sort_by_key(|i| std::cmp::Reverse(counts[*i].0));

    // (b) Denied at the destination after scanning every isolating policy (the most
    // isolated pod), with the source's egress allowed so both sides are evaluated.
    let denied = by_ingress
        .iter()
        .find_map(|&d| {
            (0..pods.len()).find_map(|s| {
                let f = tcp(pod_ip(pods[s]), pod_ip(pods[d]), 8080);
                let dec = decide(snap, &f);
                (s != d && egress_ok(&dec) && matches!(dec.ingress, Side::Denied { .. }))
                    .then_some(f)
            })
        })
        .expect("a denied pod-to-pod flow");

    // (a) Allowed by a rule at an isolated destination (the most isolated pod that some
    // other pod may reach), ports a client would use.
    let ports = [8080u16, 9090, 443, 8443, 8050];
    let allowed = by_ingress
        .iter()
        .find_map(|&d| {
            (0..3000).find_map(|_| {
                let s = rng.below(pods.len());
                let f = tcp(pod_ip(pods[s]), pod_ip(pods[d]), *rng.pick(&ports));
                let dec = decide(snap, &f);
                (s != d && egress_ok(&dec) && matches!(dec.ingress, Side::Allowed { .. }))
                    .then_some(f)
            })
        })
        .expect("an allowed pod-to-pod flow");

    // (c) Pod to an external address, allowed by an ipBlock rule of an egress policy.
    let mut by_egress: Vec<usize> = (0..pods.len()).collect();
    by_egress.sort_by_key(|i| std::cmp::Reverse(counts[*i].1));
    let external = by_egress
        .iter()
        .take_while(|&&s| counts[s].1 > 0)
        .find_map(|&s| {
            (0u32..256).find_map(|third| {
                let ip = IpAddr::V4(Ipv4Addr::from(u32::from(EXTERNAL_BASE) + third * 256 + 10));
                let f = tcp(pod_ip(pods[s]), ip, 443);
                let dec = decide(snap, &f);
                let Side::Allowed { policy, rule } = dec.egress else {
                    return None;
                };
                let by_block = snap.policy(policy).egress.as_ref().unwrap()[rule]
                    .peers
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, Peer::IpBlock(b) if b.contains(ip)));
                (by_block && dec.ingress == Side::NotPod).then_some(f)
            })
        })
        .expect("an egress flow to an external address allowed by an ipBlock");

    // (d) Neither side isolated.
    let src = (0..pods.len())
        .find(|i| counts[*i].1 == 0)
        .expect("an egress-unisolated pod");
    let dst = (0..pods.len())
        .find(|i| counts[*i].0 == 0 && *i != src)
        .expect("an ingress-unisolated pod");
    let unisolated = tcp(pod_ip(pods[src]), pod_ip(pods[dst]), 8080);
    let dec = decide(snap, &unisolated);
    assert_eq!(
        (dec.egress, dec.ingress),
        (Side::NotIsolated, Side::NotIsolated)
    );

    // A batch of random pod-to-pod flows, for an average over the whole mix.
    let mixed_ports = [
        (Protocol::Tcp, 8080u16),
        (Protocol::Tcp, 9090),
        (Protocol::Tcp, 9100),
        (Protocol::Tcp, 443),
        (Protocol::Tcp, 5432),
        (Protocol::Udp, 53),
    ];
    // Half the pairs share a namespace (pods are in namespace order, 100 per namespace).
    let per_ns = pods.len() / cluster.namespaces.len().max(1);
    let mixed = (0..1024)
        .map(|i| {
            let (protocol, port) = *rng.pick(&mixed_ports);
            let s = rng.below(pods.len());
            let d = if i % 2 == 0 {
                s - s % per_ns + rng.below(per_ns)
            } else {
                rng.below(pods.len())
            };
            FlowSpec {
                src: pod_ip(pods[s]),
                dst: pod_ip(pods[d.min(pods.len() - 1)]),
                protocol,
                port,
            }
        })
        .collect();

    Flows {
        allowed,
        denied,
        external,
        unisolated,
        mixed,
    }
}

fn describe_flows(snap: &Snapshot, flows: &Flows) {
    let pod_name = |ip| {
        snap.endpoint_for_ip(ip)
            .pod
            .map_or_else(|| ip.to_string(), |id| snap.pod(id).key())
    };
    for (name, f) in [
        ("allowed", &flows.allowed),
        ("denied", &flows.denied),
        ("external_ipblock", &flows.external),
        ("unisolated", &flows.unisolated),
    ] {
        let d = decide(snap, f);
        let side = |s: &Side, ingress: bool| match s {
            Side::Allowed { policy, rule } => {
                let (pos, n, rules) = isolation_position(snap, f, ingress, *policy);
                format!(
                    "allowed by {} rule {rule} (isolating policy {pos} of {n}, {rules} rules)",
                    snap.policy(*policy).key()
                )
            }
            Side::Denied { isolated_by } => format!(
                "denied after {} isolating policies ({} rules)",
                isolated_by.len(),
                rules_in(snap, isolated_by, ingress)
            ),
            other => format!("{other:?}"),
        };
        println!(
            "flow {name}: {} -> {} {}/{}: {}; egress: {}; ingress: {}",
            pod_name(f.src),
            pod_name(f.dst),
            f.protocol,
            f.port,
            d.verdict(),
            side(&d.egress, false),
            side(&d.ingress, true),
        );
    }
    let allowed = flows
        .mixed
        .iter()
        .filter(|f| decide(snap, f).allowed())
        .count();
    println!(
        "flow mixed: {} random pod-to-pod flows, {allowed} allowed",
        flows.mixed.len()
    );
}

/// Where the allowing policy sits among the subject's isolating ones: (1-based position,
/// how many, total rules up to and including it).
fn isolation_position(
    snap: &Snapshot,
    f: &FlowSpec,
    ingress: bool,
    policy: netward_controller::PolicyId,
) -> (usize, usize, usize) {
    let flow = Flow {
        src: snap.endpoint_for_ip(f.src),
        dst: snap.endpoint_for_ip(f.dst),
        protocol: f.protocol,
        port: f.port,
        transport: Transport::Plaintext,
    };
    let e = snap.explain(&flow);
    let traces = if ingress { e.ingress } else { e.egress };
    let pos = traces
        .iter()
        .position(|t| t.policy == policy)
        .map_or(0, |p| p + 1);
    let ids: Vec<_> = traces.iter().take(pos).map(|t| t.policy).collect();
    (pos, traces.len(), rules_in(snap, &ids, ingress))
}

// ---------------------------------------------------------------------------
// The changed pod for the incremental bench.
// ---------------------------------------------------------------------------

/// A pod whose label change moves it between policies and peer sets: `app` and `version`
/// change, so selectors on both flip. Returns (old, new).
fn changed_pod(cluster: &Cluster, snap: &Snapshot) -> (Pod, Pod) {
    let candidates: Vec<&Pod> = cluster
        .pods
        .values()
        .filter(|p| p.labels.get("app").is_some_and(|a| a == "api"))
        .collect();
    for old in candidates.iter().skip(candidates.len() / 2) {
        let mut new = (*old).clone();
        new.labels.insert("app".to_owned(), "orders".to_owned());
        new.labels.insert("tier".to_owned(), "api".to_owned());
        new.labels.insert("version".to_owned(), "v1".to_owned());
        let next = snap.with_pod(new.clone());
        if isolation_counts(snap, pod_ip(old)) != isolation_counts(&next, pod_ip(old)) {
            return ((*old).clone(), new);
        }
    }
    panic!("no pod whose label change alters its isolation");
}

// ---------------------------------------------------------------------------
// Compile workload: how many pod-selector evaluations compile does (counted, not timed).
// ---------------------------------------------------------------------------

/// `(peer pod-selector evaluations, podSelector evaluations, distinct pod label sets)`:
/// compile matches each pod peer's selector against every live pod of every namespace
/// the peer's scope selects, and each policy's podSelector against its namespace's pods.
fn selector_workload(cluster: &Cluster) -> (usize, usize, usize) {
    use netward_controller::model::NamespaceScope;
    let mut per_ns: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in cluster.pods.values() {
        *per_ns.entry(p.namespace.as_str()).or_default() += 1;
    }
    let mut peer_evals = 0;
    let mut select_evals = 0;
    for pol in cluster.policies.values() {
        select_evals += per_ns.get(pol.namespace.as_str()).copied().unwrap_or(0);
        for rules in [&pol.ingress, &pol.egress].into_iter().flatten() {
            for peer in rules.iter().flat_map(|r| r.peers.iter().flatten()) {
                let Peer::Pods {
                    namespaces,
                    pods: Some(_),
                } = peer
                else {
                    continue;
                };
                for ns in cluster.namespaces.values() {
                    let in_scope = match namespaces {
                        NamespaceScope::Own => ns.name == pol.namespace,
                        NamespaceScope::Selected(sel) => sel.matches(&ns.labels),
                    };
                    if in_scope {
                        peer_evals += per_ns.get(ns.name.as_str()).copied().unwrap_or(0);
                    }
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = cluster.pods.values().map(|p| &p.labels).collect();
    (peer_evals, select_evals, distinct.len())
}

// ---------------------------------------------------------------------------
// Memory.
// ---------------------------------------------------------------------------

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Compiles with the counters around it and prints the figures. Returns the snapshot.
fn measure_memory(cluster: &Cluster, changed: &Pod) -> Snapshot {
    let pods = cluster.pods.len();
    let (live0, rss0) = (live_bytes(), rss_bytes());
    PEAK.store(live0, Ordering::Relaxed);
    TRACK_PEAK.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let snap = Snapshot::compile(cluster);
    let took = t.elapsed();
    TRACK_PEAK.store(false, Ordering::Relaxed);
    let (live1, rss1, peak) = (live_bytes(), rss_bytes(), PEAK.load(Ordering::Relaxed));
    let held = live1.saturating_sub(live0);
    let approx = snap.approx_heap_bytes();
    println!(
        "cluster: {pods} pods, {} namespaces, {} policies",
        cluster.namespaces.len(),
        cluster.policies.len()
    );
    println!("compile (one cold run, counting allocator on): {took:.2?}");
    println!(
        "memory snapshot.approx_heap_bytes(): {approx} B ({:.1} MiB, {} B/pod)",
        mib(approx),
        approx / pods
    );
    println!(
        "memory allocator live bytes held by the snapshot: {held} B ({:.1} MiB, {} B/pod)",
        mib(held),
        held / pods
    );
    println!(
        "memory allocator peak during compile: +{:.1} MiB over the start",
        mib(peak.saturating_sub(live0))
    );
    println!(
        "memory RSS delta around compile (rough, allocator reuse hides some): {:+.1} MiB",
        (rss1 as f64 - rss0 as f64) / (1024.0 * 1024.0)
    );

    // What one incremental update costs in memory while the previous snapshot is alive.
    let live2 = live_bytes();
    let next = snap.with_pod(changed.clone());
    let extra = live_bytes().saturating_sub(live2);
    println!(
        "memory with_pod: new snapshot holds {extra} B ({:.2} MiB) not shared with the old one",
        mib(extra)
    );
    drop(next);
    snap
}

// ---------------------------------------------------------------------------
// Benches.
// ---------------------------------------------------------------------------

fn main() {
    let t = Instant::now();
    let cluster = fixture::generate(Params::STANDARD);
    println!("generate: {:.2?}", t.elapsed());

    let probe = Snapshot::compile(&cluster);
    let (old, changed) = changed_pod(&cluster, &probe);
    drop(probe);
    let snap = measure_memory(&cluster, &changed);
    let (peer_evals, select_evals, distinct) = selector_workload(&cluster);
    println!(
        "compile workload: {peer_evals} peer pod-selector matches + {select_evals} podSelector \
         matches; {distinct} distinct pod label sets"
    );
    {
        let (before, after) = (
            isolation_counts(&snap, pod_ip(&old)),
            isolation_counts(&snap.with_pod(changed.clone()), pod_ip(&old)),
        );
        println!(
            "changed pod {}: labels {:?} -> {:?}; isolating policies (ingress, egress) {before:?} -> {after:?}",
            old.key(),
            old.labels,
            changed.labels
        );
    }
    let flows = pick_flows(&cluster, &snap);
    describe_flows(&snap, &flows);

    let mut c = Criterion::default().configure_from_args();

    {
        let mut g = c.benchmark_group("compile");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8));
        g.bench_function("full", |b| {
            b.iter(|| Snapshot::compile(black_box(&cluster)));
        });
        g.sample_size(20).measurement_time(Duration::from_secs(5));
        g.bench_function("one_pod_labels", |b| {
            b.iter(|| snap.with_pod(black_box(changed.clone())));
        });
        // A pod created (new key, new address) and one deleted: pod churn during rollouts.
        let added = {
            let mut p = changed.clone();
            p.name.push_str("-new");
            p.ips = vec![IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1))];
            p
        };
        g.bench_function("one_pod_added", |b| {
            b.iter(|| snap.with_pod(black_box(added.clone())));
        });
        g.bench_function("one_pod_removed", |b| {
            b.iter(|| snap.without_pod(black_box(&old.namespace), black_box(&old.name)));
        });
        // Diagnostic: the copy `with_pod` starts with (`Snapshot::clone`).
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        g.bench_function("snapshot_clone", |b| {
            b.iter(|| black_box(&snap).clone());
        });
        g.finish();
    }

    {
        let mut g = c.benchmark_group("authorize");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (name, f) in [
            ("pod_to_pod_allowed", &flows.allowed),
            ("pod_to_pod_denied", &flows.denied),
            ("pod_to_external_ipblock", &flows.external),
            ("unisolated", &flows.unisolated),
        ] {
            g.bench_function(name, |b| b.iter(|| decide(&snap, black_box(f))));
        }
        g.throughput(Throughput::Elements(flows.mixed.len() as u64))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("mixed_1024", |b| {
            b.iter(|| {
                for f in &flows.mixed {
                    black_box(decide(&snap, black_box(f)));
                }
            });
        });
        g.finish();
    }

    // The same cluster with 100 ClusterNetworkPolicies (issue #18): a full compile, and
    // the same flows decided through the tiers.
    {
        let mut with_cnp = cluster.clone();
        cluster_policies::add(&mut with_cnp, 100, 0x636e_7073);
        let t = Instant::now();
        let snap = Snapshot::compile(&with_cnp);
        println!(
            "compile with 100 ClusterNetworkPolicies: {:.2?}",
            t.elapsed()
        );
        let cnp_decided = flows
            .mixed
            .iter()
            .filter(|f| {
                let d = decide(&snap, f);
                matches!(
                    d.egress,
                    Side::ClusterAccepted { .. } | Side::ClusterDenied { .. }
                ) || matches!(
                    d.ingress,
                    Side::ClusterAccepted { .. } | Side::ClusterDenied { .. }
                )
            })
            .count();
        println!(
            "with 100 ClusterNetworkPolicies: {cnp_decided} of {} mixed flows decided by one",
            flows.mixed.len()
        );
        let mut g = c.benchmark_group("cnp_100");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8));
        g.bench_function("compile_full", |b| {
            b.iter(|| Snapshot::compile(black_box(&with_cnp)));
        });
        g.sample_size(100)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (name, f) in [
            ("pod_to_pod_allowed", &flows.allowed),
            ("pod_to_pod_denied", &flows.denied),
            ("pod_to_external_ipblock", &flows.external),
            ("unisolated", &flows.unisolated),
        ] {
            g.bench_function(name, |b| b.iter(|| decide(&snap, black_box(f))));
        }
        g.throughput(Throughput::Elements(flows.mixed.len() as u64))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("mixed_1024", |b| {
            b.iter(|| {
                for f in &flows.mixed {
                    black_box(decide(&snap, black_box(f)));
                }
            });
        });
        g.finish();
    }

    c.final_summary();
}
