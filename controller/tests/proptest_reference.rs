//! Property tests: the compiled engine against a deliberately simple reference
//! evaluator written straight from the Kubernetes API documentation, over random
//! namespaces, pods, labels and policies; and incremental pod updates against a
//! full recompile.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netward_controller::model::{
    ContainerPort, Direction, Mode, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, PortSpec,
};
use netward_controller::{Cluster, Endpoint, Flow, Protocol, Snapshot, Transport};
use proptest::prelude::*;

// ---------- the reference evaluator: no compilation, no indexes, no shortcuts ----------

/// Where a connection end is: a pod (by key) or a bare IP.
#[derive(Clone, Debug)]
enum End {
    Pod(String, String),
    Ip(IpAddr),
}

fn ref_pod<'a>(c: &'a Cluster, e: &End) -> Option<&'a Pod> {
    match e {
        End::Pod(ns, n) => c
            .pods
            .get(&(ns.clone(), n.clone()))
            .filter(|p| !p.host_network && !p.terminated),
        End::Ip(_) => None,
    }
}

fn ref_ip(c: &Cluster, e: &End) -> Option<IpAddr> {
    match e {
        End::Pod(ns, n) => c
            .pods
            .get(&(ns.clone(), n.clone()))
            .and_then(|p| p.ips.first().copied()),
        End::Ip(ip) => Some(*ip),
    }
}

fn ref_peer_ok(
    c: &Cluster,
    policy: &NetworkPolicy,
    peers: &Option<Vec<Peer>>,
    other: &End,
) -> bool {
    let Some(peers) = peers else { return true };
    peers.iter().any(|peer| match peer {
        Peer::IpBlock(b) => ref_ip(c, other).is_some_and(|ip| b.contains(ip)),
        Peer::Pods { namespaces, pods } => {
            let Some(p) = ref_pod(c, other) else {
                return false;
            };
            let ns_ok = match namespaces {
                NamespaceScope::Own => p.namespace == policy.namespace,
                NamespaceScope::Selected(s) => s.matches(&c.namespaces[&p.namespace].labels),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&p.labels))
        }
    })
}

fn ref_port_ok(
    rule: &netward_controller::model::Rule,
    dst_pod: Option<&Pod>,
    proto: Protocol,
    port: u16,
) -> bool {
    let Some(ports) = &rule.ports else {
        return true;
    };
    ports.iter().any(|pm| {
        pm.protocol == proto
            && match &pm.port {
                PortSpec::Any => true,
                PortSpec::Range(a, b) => *a <= port && port <= *b,
                PortSpec::Named(n) => dst_pod.is_some_and(|p| {
                    p.ports.iter().any(|cp| {
                        cp.name.as_deref() == Some(n) && cp.protocol == proto && cp.port == port
                    })
                }),
            }
    })
}

fn ref_side(
    c: &Cluster,
    subject: &Pod,
    dir: Direction,
    other: &End,
    dst_pod: Option<&Pod>,
    proto: Protocol,
    port: u16,
) -> bool {
    let ns_audit = c.namespaces[&subject.namespace].mode == Mode::Audit;
    let isolating: Vec<&NetworkPolicy> = c
        .policies
        .values()
        .filter(|p| p.namespace == subject.namespace)
        .filter(|p| p.mode == Mode::Enforce && !ns_audit)
        .filter(|p| {
            p.pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&subject.labels))
        })
        .filter(|p| p.rules(dir).is_some())
        .collect();
    if isolating.is_empty() {
        return true;
    }
    isolating.iter().any(|p| {
        p.rules(dir)
            .unwrap()
            .iter()
            .any(|r| ref_peer_ok(c, p, &r.peers, other) && ref_port_ok(r, dst_pod, proto, port))
    })
}

fn reference(c: &Cluster, src: &End, dst: &End, proto: Protocol, port: u16) -> bool {
    let (sp, dp) = (ref_pod(c, src), ref_pod(c, dst));
    if let (Some(a), Some(b)) = (sp, dp)
        && a.namespace == b.namespace
        && a.name == b.name
    {
        return true;
    }
    if sp.is_none() && dp.is_none() && ref_ip(c, src).is_some() && ref_ip(c, src) == ref_ip(c, dst)
    {
        return true;
    }
    let egress = sp.is_none_or(|p| ref_side(c, p, Direction::Egress, dst, dp, proto, port));
    let ingress = dp.is_none_or(|p| {
        let from_node = sp.is_none()
            && ref_ip(c, src).is_some_and(|ip| {
                c.nodes
                    .values()
                    .any(|n| Some(&n.name) == p.node.as_ref() && n.ips.contains(&ip))
            });
        from_node || ref_side(c, p, Direction::Ingress, src, Some(p), proto, port)
    });
    egress && ingress
}

// ---------- generators ----------

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 3] = ["x", "y", "z"];
const PORTS: [u16; 4] = [53, 80, 81, 8080];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(&KEYS[..]),
        prop::sample::select(&VALUES[..]),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let req = (
        prop::sample::select(&KEYS[..]),
        prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        prop::collection::vec(prop::sample::select(&VALUES[..]), 1..3),
    )
        .prop_map(|(k, op, vals)| LabelSelectorRequirement {
            key: k.to_owned(),
            operator: op.to_owned(),
            values: matches!(op, "In" | "NotIn")
                .then(|| vals.iter().map(|v| (*v).to_owned()).collect()),
        });
    (
        prop::option::of(labels()),
        prop::option::of(prop::collection::vec(req, 0..2)),
    )
        .prop_map(|(ml, me)| LabelSelector {
            match_labels: ml,
            match_expressions: me,
        })
}

fn peer() -> impl Strategy<Value = net::NetworkPolicyPeer> {
    prop_oneof![
        selector().prop_map(|s| net::NetworkPolicyPeer {
            pod_selector: Some(s),
            ..Default::default()
        }),
        selector().prop_map(|s| net::NetworkPolicyPeer {
            namespace_selector: Some(s),
            ..Default::default()
        }),
        (selector(), selector()).prop_map(|(a, b)| net::NetworkPolicyPeer {
            pod_selector: Some(a),
            namespace_selector: Some(b),
            ..Default::default()
        }),
        (0u8..4, prop::option::of(0u8..8)).prop_map(|(base, ex)| {
            // 198.18.0.0/29-ish blocks over the pod IPs, with an optional /32 exception.
            let cidr = format!("198.18.0.{}/30", base * 4);
            let except = ex.map(|e| vec![format!("198.18.0.{}/32", base * 4 + e % 4)]);
            net::NetworkPolicyPeer {
                ip_block: Some(net::IPBlock { cidr, except }),
                ..Default::default()
            }
        }),
    ]
}

fn port() -> impl Strategy<Value = net::NetworkPolicyPort> {
    let proto = prop::option::of(prop::sample::select(&["TCP", "UDP", "SCTP"][..]));
    let spec = prop_oneof![
        Just((None, None)),
        prop::sample::select(&PORTS[..]).prop_map(|p| (Some(IntOrString::Int(i32::from(p))), None)),
        (prop::sample::select(&PORTS[..]), 0i32..100)
            .prop_map(|(p, w)| (Some(IntOrString::Int(i32::from(p))), Some(i32::from(p) + w))),
        prop::sample::select(&["http", "dns", "metrics"][..])
            .prop_map(|n| (Some(IntOrString::String(n.to_owned())), None)),
    ];
    (proto, spec).prop_map(|(pr, (p, e))| net::NetworkPolicyPort {
        protocol: pr.map(str::to_owned),
        port: p,
        end_port: e,
    })
}

type RuleParts = (
    Option<Vec<net::NetworkPolicyPeer>>,
    Option<Vec<net::NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(&NAMESPACES[..]),
        selector(),
        prop::sample::select(vec![
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::bool::weighted(0.15),
    )
        .prop_map(move |(ns, sel, types, ing, eg, audit)| {
            let np = net::NetworkPolicy {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(format!("p{i}")),
                    namespace: Some(ns.to_owned()),
                    annotations: audit
                        .then(|| [("netward.io/mode".to_owned(), "audit".to_owned())].into()),
                    ..Default::default()
                },
                spec: Some(net::NetworkPolicySpec {
                    pod_selector: Some(sel),
                    policy_types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
                    ingress: ing.map(|rs| {
                        rs.into_iter()
                            .map(|(from, ports)| net::NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: eg.map(|rs| {
                        rs.into_iter()
                            .map(|(to, ports)| net::NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                }),
            };
            NetworkPolicy::from_api(&np)
        })
}

fn pod(i: usize) -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(&NAMESPACES[..]),
        labels(),
        prop::sample::select(&["node-a", "node-b"][..]),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
        prop::sample::subsequence(
            vec![
                ("http", 80u16, Protocol::Tcp),
                ("dns", 53, Protocol::Udp),
                ("metrics", 8080, Protocol::Tcp),
                ("http", 81, Protocol::Sctp),
            ],
            0..3,
        ),
    )
        .prop_map(move |(ns, labels, node, host, done, ports)| {
            let mut p = Pod::new(ns, &format!("pod{i}"), labels);
            p.ips = vec![IpAddr::V4(Ipv4Addr::new(
                198,
                18,
                0,
                u8::try_from(i).unwrap(),
            ))];
            p.node = Some(node.to_owned());
            p.host_network = host;
            p.terminated = done;
            p.ports = ports
                .into_iter()
                .map(|(n, port, protocol)| ContainerPort {
                    name: Some(n.to_owned()),
                    port,
                    protocol,
                })
                .collect();
            p
        })
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let namespaces = prop::collection::vec((labels(), prop::bool::weighted(0.1)), 3);
    let pods = (1usize..7).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>());
    let policies = (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    (namespaces, pods, policies).prop_map(|(nss, pods, policies)| {
        let mut c = Cluster::default();
        for (name, (mut labels, audit)) in NAMESPACES.iter().zip(nss) {
            if audit {
                labels.insert("netward.io/mode".into(), "audit".into());
            }
            c.upsert_namespace(Namespace::with_labels(name, labels));
        }
        c.upsert_node(netward_controller::model::Node {
            name: "node-a".into(),
            ips: vec!["198.18.0.100".parse().unwrap()],
            pod_cidrs: vec!["198.18.0.0/24".parse().unwrap()],
        });
        for p in pods {
            c.upsert_pod(p);
        }
        for p in policies {
            c.upsert_policy(p);
        }
        c
    })
}

fn ends(c: &Cluster) -> Vec<End> {
    let mut v: Vec<End> = c
        .pods
        .keys()
        .map(|(ns, n)| End::Pod(ns.clone(), n.clone()))
        .collect();
    // An outside IP, one inside the ipBlocks, and the node.
    v.push(End::Ip("198.19.9.9".parse().unwrap()));
    v.push(End::Ip("198.18.0.14".parse().unwrap()));
    v.push(End::Ip("198.18.0.100".parse().unwrap()));
    v
}

fn endpoint(s: &Snapshot, e: &End) -> Endpoint {
    match e {
        End::Pod(ns, n) => s.endpoint_for_pod(ns, n, None).unwrap(),
        End::Ip(ip) => s.endpoint_for_ip(*ip),
    }
}

fn all_decisions(s: &Snapshot, c: &Cluster) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for a in ends(c) {
        for b in ends(c) {
            for proto in Protocol::ALL {
                for port in PORTS {
                    let f = Flow {
                        src: endpoint(s, &a),
                        dst: endpoint(s, &b),
                        protocol: proto,
                        port,
                        transport: Transport::Plaintext,
                    };
                    out.push((
                        format!("{a:?} -> {b:?} {proto}/{port}"),
                        s.authorize(&f).allowed(),
                    ));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference(c in cluster()) {
        let s = Snapshot::compile(&c);
        for a in ends(&c) {
            for b in ends(&c) {
                for proto in Protocol::ALL {
                    for port in PORTS {
                        let f = Flow { src: endpoint(&s, &a), dst: endpoint(&s, &b), protocol: proto, port, transport: Transport::Plaintext };
                        let got = s.authorize(&f).allowed();
                        let want = reference(&c, &a, &b, proto, port);
                        prop_assert_eq!(got, want, "{:?} -> {:?} {}/{}: engine {:?}", a, b, proto, port, s.authorize(&f));
                    }
                }
            }
        }
    }

    #[test]
    fn incremental_pod_update_equals_full_compile(c in cluster(), new_labels in labels(), which in 0usize..6, delete in prop::bool::weighted(0.3)) {
        let keys: Vec<_> = c.pods.keys().cloned().collect();
        let key = keys[which % keys.len()].clone();
        let before = Snapshot::compile(&c);
        let mut changed = c.clone();
        let incremental = if delete {
            changed.pods.remove(&key);
            before.without_pod(&key.0, &key.1)
        } else {
            let mut p = changed.pods[&key].clone();
            p.labels = new_labels;
            changed.upsert_pod(p.clone());
            before.with_pod(p)
        };
        let full = Snapshot::compile(&changed);
        prop_assert_eq!(all_decisions(&incremental, &changed), all_decisions(&full, &changed));
        prop_assert!(incremental.generation() > before.generation());
    }
}

// ---------- larger clusters: shared label sets, several storage chunks, update chains ----------

/// A handful of label sets that pods in every namespace share (so one label set spans
/// namespaces and many pods), including the empty set.
const SHARED_LABELS: [&[(&str, &str)]; 5] = [
    &[],
    &[("app", "x")],
    &[("app", "x"), ("tier", "y")],
    &[("app", "y"), ("env", "z")],
    &[("tier", "x"), ("env", "x")],
];

fn shared_labels(i: usize) -> BTreeMap<String, String> {
    SHARED_LABELS[i % SHARED_LABELS.len()]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pod `i`'s address: unique per pod; `moved` gives it a different, still unique one.
fn big_ip(i: usize, moved: bool) -> IpAddr {
    let i = u32::try_from(i).unwrap();
    let base = if moved { 0x0a01_0000 } else { 0xc612_0000 }; // 10.1.0.0 / 198.18.0.0
    IpAddr::V4(Ipv4Addr::from(base + i))
}

/// `(namespace, label set, host network, terminated)`.
type BigPod = (usize, usize, bool, bool);

fn big_pod(i: usize, (ns, labels, host, done): BigPod, moved: bool) -> Pod {
    let mut p = Pod::new(NAMESPACES[ns], &format!("pod{i:04}"), shared_labels(labels));
    p.ips = vec![big_ip(i, moved)];
    p.node = Some(
        if i.is_multiple_of(2) {
            "node-a"
        } else {
            "node-b"
        }
        .to_owned(),
    );
    p.host_network = host;
    p.terminated = done;
    if i.is_multiple_of(3) {
        p.ports = vec![ContainerPort {
            name: Some("http".to_owned()),
            port: 80,
            protocol: Protocol::Tcp,
        }];
    }
    p
}

fn big_pod_parts() -> impl Strategy<Value = BigPod> {
    (
        0..NAMESPACES.len(),
        0..SHARED_LABELS.len(),
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.05),
    )
}

/// One incremental change.
#[derive(Clone, Debug)]
enum Op {
    /// Replace pod `which` (modulo the pods there are): new parts, maybe a new address.
    Update(usize, BigPod, bool),
    /// Add a new pod.
    Add(BigPod),
    /// Delete pod `which`.
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), big_pod_parts(), prop::bool::weighted(0.3))
            .prop_map(|(w, p, m)| Op::Update(w, p, m)),
        3 => big_pod_parts().prop_map(Op::Add),
        1 => any::<usize>().prop_map(Op::Delete),
    ]
}

fn big_cluster() -> impl Strategy<Value = Cluster> {
    let namespaces = prop::collection::vec(labels(), 3);
    // Sizes just below a 256-pod chunk boundary are over-weighted so that additions
    // start new chunks.
    let pods = prop_oneof![200usize..700, 252usize..=256, 508usize..=512]
        .prop_flat_map(|n| prop::collection::vec(big_pod_parts(), n));
    let policies = (0usize..6).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    (namespaces, pods, policies).prop_map(|(nss, pods, policies)| {
        let mut c = Cluster::default();
        for (name, labels) in NAMESPACES.iter().zip(nss) {
            c.upsert_namespace(Namespace::with_labels(name, labels));
        }
        for (i, parts) in pods.into_iter().enumerate() {
            c.upsert_pod(big_pod(i, parts, false));
        }
        for p in policies {
            c.upsert_policy(p);
        }
        c
    })
}

/// Decisions between every pod and a few probe pods (both ways, two ports), and where
/// each pod address resolves: enough to see any difference in isolation, peer sets or
/// the address index.
fn probe_decisions(s: &Snapshot, c: &Cluster, probes: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let ep = |k: &(String, String)| s.endpoint_for_pod(&k.0, &k.1, None).unwrap();
    for k in c.pods.keys() {
        for p in probes.iter().filter(|p| c.pods.contains_key(*p)) {
            for (a, b) in [(k, p), (p, k)] {
                for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
                    let f = Flow {
                        src: ep(a),
                        dst: ep(b),
                        protocol,
                        port,
                        transport: Transport::Plaintext,
                    };
                    out.push(format!(
                        "{a:?} -> {b:?} {protocol}/{port}: {}",
                        s.authorize(&f).verdict()
                    ));
                }
            }
        }
    }
    for i in 0..c.pods.len() + 16 {
        for moved in [false, true] {
            let ip = big_ip(i, moved);
            let owner = s.endpoint_for_ip(ip).pod.map(|id| s.pod(id).key());
            out.push(format!("{ip} -> {owner:?}"));
        }
    }
    out.push(format!(
        "{:?}",
        s.pod_ids()
            .iter()
            .map(|id| s.pod(*id).key())
            .collect::<Vec<_>>()
    ));
    out.push(format!(
        "{:?}",
        s.all_pods().map(Pod::key).collect::<Vec<_>>()
    ));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Several hundred pods (two or three 256-pod storage chunks) sharing five label sets
    /// across namespaces; a chain of updates, additions (into a partial or a new chunk) and
    /// deletions, each applied incrementally, equals a full compile; and the full compile
    /// agrees with the reference evaluator on flows between the probe pods.
    #[test]
    fn shared_label_sets_and_update_chains(c in big_cluster(), ops in prop::collection::vec(op(), 1..8)) {
        let mut cluster = c.clone();
        let mut snap = Snapshot::compile(&c);
        let mut next_index = c.pods.len();
        let mut probes: Vec<(String, String)> = c.pods.keys().step_by(97).cloned().collect();
        for op in ops {
            let keys: Vec<_> = cluster.pods.keys().cloned().collect();
            match op {
                Op::Update(which, parts, moved) if !keys.is_empty() => {
                    let key = keys[which % keys.len()].clone();
                    let i: usize = key.1.trim_start_matches("pod").parse().unwrap();
                    let mut p = big_pod(i, parts, moved);
                    // Keep the pod in its namespace: a key is (namespace, name).
                    p.namespace.clone_from(&key.0);
                    cluster.upsert_pod(p.clone());
                    snap = snap.with_pod(p);
                    probes.push(key);
                }
                Op::Add(parts) => {
                    let p = big_pod(next_index, parts, false);
                    next_index += 1;
                    probes.push((p.namespace.clone(), p.name.clone()));
                    cluster.upsert_pod(p.clone());
                    snap = snap.with_pod(p);
                }
                Op::Delete(which) if !keys.is_empty() => {
                    let key = keys[which % keys.len()].clone();
                    cluster.pods.remove(&key);
                    snap = snap.without_pod(&key.0, &key.1);
                }
                Op::Update(..) | Op::Delete(_) => {}
            }
        }
        let full = Snapshot::compile(&cluster);
        prop_assert_eq!(probe_decisions(&snap, &cluster, &probes), probe_decisions(&full, &cluster, &probes));

        let ends: Vec<End> = probes
            .iter()
            .filter(|k| cluster.pods.contains_key(*k))
            .map(|(ns, n)| End::Pod(ns.clone(), n.clone()))
            .collect();
        for a in &ends {
            for b in &ends {
                for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53), (Protocol::Tcp, 8080)] {
                    let f = Flow { src: endpoint(&full, a), dst: endpoint(&full, b), protocol: proto, port, transport: Transport::Plaintext };
                    prop_assert_eq!(full.authorize(&f).allowed(), reference(&cluster, a, b, proto, port), "{:?} -> {:?} {}/{}", a, b, proto, port);
                }
            }
        }
    }
}
