//! Property tests: the compiled engine against a deliberately simple reference
//! evaluator written straight from the Kubernetes API documentation (and, for
//! ClusterNetworkPolicy's tiers, the network-policy-api's), over random namespaces, pods,
//! labels, NetworkPolicies and ClusterNetworkPolicies; and incremental pod updates
//! against a full recompile.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netward_controller::cluster_policy::{self, Action, ClusterPeer, ClusterPort, Tier};
use netward_controller::model::{
    ContainerPort, Direction, Mode, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, PortSpec,
};
use netward_controller::{
    Cluster, ClusterNetworkPolicy, Endpoint, Flow, Protocol, Snapshot, Transport,
};
use proptest::prelude::*;

// ---------- the reference evaluator: no compilation, no indexes, no shortcuts ----------

/// Where a connection end is: a pod (by key) or a bare IP.
#[derive(Clone, Debug)]
enum End {
    Pod(String, String),
    Ip(IpAddr),
}

/// Which live pod an address belongs to when several claim it: the newest (no creation
/// time: the oldest), then the first by `namespace/name`.
fn ref_owner(c: &Cluster, ip: IpAddr) -> Option<&Pod> {
    c.pods
        .values()
        .filter(|p| !p.host_network && !p.terminated && p.ips.contains(&ip))
        .min_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        })
}

fn ref_pod<'a>(c: &'a Cluster, e: &End) -> Option<&'a Pod> {
    match e {
        End::Pod(ns, n) => c
            .pods
            .get(&(ns.clone(), n.clone()))
            .filter(|p| !p.host_network && !p.terminated),
        End::Ip(ip) => ref_owner(c, *ip),
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
    // Only TCP, UDP and SCTP have ports; a rule that lists ports matches nothing else
    // (ICMP, ...), as Calico and Cilium do.
    if !matches!(proto, Protocol::Tcp | Protocol::Udp | Protocol::Sctp) {
        return false;
    }
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

/// Whether a ClusterNetworkPolicy rule matches: any peer, and the protocols.
fn ref_cnp_rule_ok(
    c: &Cluster,
    rule: &cluster_policy::ClusterRule,
    other: &End,
    dst_pod: Option<&Pod>,
    proto: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule.peers.iter().any(|peer| match peer {
        ClusterPeer::Everything => true,
        ClusterPeer::Pods(sel) => ref_pod(c, other)
            .is_some_and(|p| sel.matches(&c.namespaces[&p.namespace].labels, &p.labels)),
        ClusterPeer::Networks(nets) => {
            ref_ip(c, other).is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
        }
        ClusterPeer::Nodes(sel) => ref_ip(c, other).is_some_and(|ip| {
            c.nodes
                .values()
                .any(|n| sel.matches(&n.labels) && n.ips.contains(&ip))
        }),
    });
    let port_ok = match &rule.ports {
        None => true,
        Some(_) if !matches!(proto, Protocol::Tcp | Protocol::Udp | Protocol::Sctp) => false,
        Some(ports) => ports.iter().any(|p| match p {
            ClusterPort::Protocol(pm) => {
                pm.protocol == proto
                    && match &pm.port {
                        PortSpec::Any => true,
                        PortSpec::Range(a, b) => *a <= port && port <= *b,
                        PortSpec::Named(_) => false,
                    }
            }
            ClusterPort::Named(n) => dst_pod.is_some_and(|p| {
                p.ports.iter().any(|cp| {
                    cp.name.as_deref() == Some(n.as_str())
                        && cp.protocol == proto
                        && cp.port == port
                })
            }),
        }),
    };
    peer_ok && port_ok
}

/// One tier's verdict: the lowest priority with a matching rule; per policy its first
/// matching rule; among tied policies Deny, then Pass, then Accept (netward's choice).
#[allow(clippy::too_many_arguments)] // a flow's parts, spelled out
fn ref_tier(
    c: &Cluster,
    tier: Tier,
    subject: &Pod,
    dir: Direction,
    other: &End,
    dst_pod: Option<&Pod>,
    proto: Protocol,
    port: u16,
) -> Option<Action> {
    let ns_labels = &c.namespaces[&subject.namespace].labels;
    let mut by_priority: BTreeMap<u16, Vec<&ClusterNetworkPolicy>> = BTreeMap::new();
    for p in c.cluster_policies.values() {
        if p.tier == tier && p.rules(dir).is_some() && p.subject.matches(ns_labels, &subject.labels)
        {
            by_priority.entry(p.priority).or_default().push(p);
        }
    }
    for policies in by_priority.values() {
        let actions: Vec<Action> = policies
            .iter()
            .filter_map(|p| {
                p.rules(dir)
                    .unwrap()
                    .iter()
                    .find(|r| ref_cnp_rule_ok(c, r, other, dst_pod, proto, port))
                    .map(|r| r.action)
            })
            .collect();
        for want in [Action::Deny, Action::Pass, Action::Accept] {
            if actions.contains(&want) {
                return Some(want);
            }
        }
    }
    None
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
    match ref_tier(c, Tier::Admin, subject, dir, other, dst_pod, proto, port) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
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
        // The Baseline tier: only a Deny changes the default.
        return ref_tier(c, Tier::Baseline, subject, dir, other, dst_pod, proto, port)
            != Some(Action::Deny);
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
    // Self traffic: one pod at both ends, or (when at most one end is a pod) one address.
    let same = match (sp, dp) {
        (Some(a), Some(b)) => a.namespace == b.namespace && a.name == b.name,
        _ => ref_ip(c, src).is_some() && ref_ip(c, src) == ref_ip(c, dst),
    };
    if same {
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
/// ICMP: a protocol without ports.
const ICMP: Protocol = Protocol::Other(1);

/// Every (protocol, port) the small tests decide: the API protocols on every port, and
/// ICMP (port 0).
fn proto_ports() -> impl Iterator<Item = (Protocol, u16)> {
    Protocol::ALL
        .into_iter()
        .flat_map(|p| PORTS.map(move |port| (p, port)))
        .chain([(ICMP, 0)])
}

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

fn cnp_pods_in() -> impl Strategy<Value = cluster_policy::api::NamespacedPod> {
    (prop::option::of(selector()), selector()).prop_map(|(n, p)| {
        cluster_policy::api::NamespacedPod {
            namespace_selector: n,
            pod_selector: Some(p),
        }
    })
}

fn cnp_protocols() -> impl Strategy<Value = Option<Vec<cluster_policy::api::ProtocolMatch>>> {
    use cluster_policy::api::{Port, PortRange, ProtocolMatch, ProtocolPort};
    let port = prop_oneof![
        prop::sample::select(&PORTS[..]).prop_map(|p| Port {
            number: Some(i64::from(p)),
            range: None
        }),
        (prop::sample::select(&PORTS[..]), 1i64..100).prop_map(|(p, w)| Port {
            number: None,
            range: Some(PortRange {
                start: Some(i64::from(p)),
                end: Some(i64::from(p) + w)
            }),
        }),
    ];
    let entry = prop_oneof![
        (0usize..3, port).prop_map(|(k, port)| {
            let pp = Some(ProtocolPort {
                destination_port: Some(port),
            });
            match k {
                0 => ProtocolMatch {
                    tcp: pp,
                    ..Default::default()
                },
                1 => ProtocolMatch {
                    udp: pp,
                    ..Default::default()
                },
                _ => ProtocolMatch {
                    sctp: pp,
                    ..Default::default()
                },
            }
        }),
        prop::sample::select(&["http", "dns", "metrics"][..]).prop_map(|n| ProtocolMatch {
            destination_named_port: Some(n.to_owned()),
            ..Default::default()
        }),
    ];
    prop::option::weighted(0.5, prop::collection::vec(entry, 1..3))
}

fn cnp_action() -> impl Strategy<Value = String> {
    prop::sample::select(&["Accept", "Deny", "Pass"][..]).prop_map(str::to_owned)
}

fn cnp_egress_peer() -> impl Strategy<Value = cluster_policy::api::EgressPeer> {
    use cluster_policy::api::EgressPeer;
    prop_oneof![
        selector().prop_map(|s| EgressPeer {
            namespaces: Some(s),
            ..Default::default()
        }),
        cnp_pods_in().prop_map(|p| EgressPeer {
            pods: Some(p),
            ..Default::default()
        }),
        selector().prop_map(|s| EgressPeer {
            nodes: Some(s),
            ..Default::default()
        }),
        prop::sample::subsequence(
            vec![
                "198.18.0.0/30",
                "198.18.0.4/31",
                "198.19.0.0/16",
                "198.18.0.100/32"
            ],
            1..3
        )
        .prop_map(|n| EgressPeer {
            networks: Some(n.into_iter().map(str::to_owned).collect()),
            ..Default::default()
        }),
    ]
}

/// A ClusterNetworkPolicy: either tier, priorities from a tiny range (so they tie),
/// occasionally invalid (priority out of range: it must fail closed).
fn cluster_policy_strategy(i: usize) -> impl Strategy<Value = ClusterNetworkPolicy> {
    use cluster_policy::api::{self as api, EgressRule, IngressPeer, IngressRule};
    let ingress_peer = prop_oneof![
        selector().prop_map(|s| IngressPeer {
            namespaces: Some(s),
            pods: None
        }),
        cnp_pods_in().prop_map(|p| IngressPeer {
            namespaces: None,
            pods: Some(p)
        }),
    ];
    let ingress_rule = (
        cnp_action(),
        prop::collection::vec(ingress_peer, 1..3),
        cnp_protocols(),
    )
        .prop_map(|(action, from, protocols)| IngressRule {
            name: None,
            action: Some(action),
            from: Some(from),
            protocols,
        });
    let egress_rule = (
        cnp_action(),
        prop::collection::vec(cnp_egress_peer(), 1..3),
        cnp_protocols(),
    )
        .prop_map(|(action, to, protocols)| EgressRule {
            name: None,
            action: Some(action),
            to: Some(to),
            protocols,
        });
    let subject = prop_oneof![
        selector().prop_map(|s| api::Subject {
            namespaces: Some(s),
            pods: None
        }),
        cnp_pods_in().prop_map(|p| api::Subject {
            namespaces: None,
            pods: Some(p)
        }),
    ];
    (
        prop::bool::ANY,
        prop_oneof![20 => 0i64..3, 1 => Just(2000i64)],
        subject,
        prop::option::of(prop::collection::vec(ingress_rule, 0..3)),
        prop::option::of(prop::collection::vec(egress_rule, 0..3)),
    )
        .prop_map(move |(admin, priority, subject, ingress, egress)| {
            let obj = api::ClusterNetworkPolicy {
                api_version: Some(cluster_policy::API_VERSION.to_owned()),
                kind: Some(cluster_policy::KIND.to_owned()),
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(format!("cnp{i}")),
                    ..Default::default()
                },
                spec: Some(api::Spec {
                    tier: Some(if admin { "Admin" } else { "Baseline" }.to_owned()),
                    priority: Some(priority),
                    subject: Some(subject),
                    ingress,
                    egress,
                }),
                status: None,
            };
            ClusterNetworkPolicy::from_api(&obj)
        })
}

/// Pod addresses come from a small pool so that pods share and reuse them: mostly a
/// pod's own slot, sometimes one of the first four (shared with other pods).
fn small_ip(slot: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, slot))
}

fn ip_slot(own: usize) -> impl Strategy<Value = u8> {
    let own = u8::try_from(own).unwrap();
    prop_oneof![2 => Just(own), 1 => 0u8..4]
}

/// Creation times from a tiny range, so that pods sharing an address often tie.
fn created() -> impl Strategy<Value = Option<i64>> {
    prop::option::weighted(0.8, 0i64..3)
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
        ip_slot(i),
        created(),
    )
        .prop_map(
            move |(ns, labels, node, host, done, ports, slot, created)| {
                let mut p = Pod::new(ns, &format!("pod{i}"), labels);
                p.ips = vec![small_ip(slot)];
                p.created = created;
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
            },
        )
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let namespaces = prop::collection::vec((labels(), prop::bool::weighted(0.1)), 3);
    let pods = (1usize..7).prop_flat_map(|n| (0..n).map(pod).collect::<Vec<_>>());
    let policies = (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    let cnps =
        (0usize..4).prop_flat_map(|n| (0..n).map(cluster_policy_strategy).collect::<Vec<_>>());
    (namespaces, pods, policies, cnps).prop_map(|(nss, pods, policies, cnps)| {
        let mut c = Cluster::default();
        for (name, (mut labels, audit)) in NAMESPACES.iter().zip(nss) {
            if audit {
                labels.insert("netward.io/mode".into(), "audit".into());
            }
            c.upsert_namespace(Namespace::with_labels(name, labels));
        }
        c.upsert_node(netward_controller::model::Node {
            name: "node-a".into(),
            labels: [("env".to_owned(), "x".to_owned())].into(),
            ips: vec!["198.18.0.100".parse().unwrap()],
            pod_cidrs: vec!["198.18.0.0/24".parse().unwrap()],
        });
        c.upsert_node(netward_controller::model::Node {
            name: "node-b".into(),
            labels: [("env".to_owned(), "y".to_owned())].into(),
            ips: vec!["198.18.0.101".parse().unwrap()],
            pod_cidrs: Vec::new(),
        });
        for p in pods {
            c.upsert_pod(p);
        }
        for p in policies {
            c.upsert_policy(p);
        }
        for p in cnps {
            c.upsert_cluster_policy(p);
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
    // Every pod address (the live pod that owns it, if any), an outside IP, one inside
    // the ipBlocks, and the node.
    let mut ips: Vec<IpAddr> = c.pods.values().flat_map(|p| p.ips.clone()).collect();
    ips.sort();
    ips.dedup();
    v.extend(ips.into_iter().map(End::Ip));
    v.push(End::Ip("198.19.9.9".parse().unwrap()));
    v.push(End::Ip("198.18.0.14".parse().unwrap()));
    v.push(End::Ip("198.18.0.100".parse().unwrap()));
    v.push(End::Ip("198.18.0.101".parse().unwrap()));
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
    for slot in 0..8 {
        let ip = small_ip(slot);
        let owner = s.endpoint_for_ip(ip).pod.map(|id| s.pod(id).key());
        out.push((format!("{ip} owned by {owner:?}"), true));
    }
    for a in ends(c) {
        for b in ends(c) {
            for (proto, port) in proto_ports() {
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
    out
}

/// One change in a batch of pod events.
#[derive(Clone, Debug)]
enum SmallOp {
    /// Pod `which` (modulo the pods there are) gets new labels, the address in `slot`,
    /// and maybe terminates.
    Update(usize, BTreeMap<String, String>, u8, bool),
    /// A new pod in namespace `ns`, at the address in `slot`, created then.
    Add(usize, BTreeMap<String, String>, u8, Option<i64>),
    /// Pod `which` is deleted.
    Delete(usize),
    /// Pod `to` takes pod `from`'s address (a terminated pod's IP reused, or a stale status).
    TakeIp(usize, usize),
}

fn small_op() -> impl Strategy<Value = SmallOp> {
    prop_oneof![
        3 => (any::<usize>(), labels(), 0u8..8, prop::bool::weighted(0.2))
            .prop_map(|(w, l, s, t)| SmallOp::Update(w, l, s, t)),
        2 => (0..NAMESPACES.len(), labels(), 0u8..8, created())
            .prop_map(|(n, l, s, t)| SmallOp::Add(n, l, s, t)),
        2 => any::<usize>().prop_map(SmallOp::Delete),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| SmallOp::TakeIp(a, b)),
    ]
}

/// Applies one pod's last state to a snapshot, as the node agent does.
fn apply_pod(s: &Snapshot, key: &(String, String), pod: Option<Pod>) -> Snapshot {
    match pod {
        Some(p) => s.with_pod(p),
        None => s.without_pod(&key.0, &key.1),
    }
}

/// An arbitrary but reproducible order for a batch's keys.
fn shuffled<T>(
    seed: u64,
    entries: impl IntoIterator<Item = ((String, String), T)>,
) -> Vec<((String, String), T)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut v: Vec<_> = entries.into_iter().collect();
    v.sort_by_cached_key(|(k, _)| {
        let mut h = DefaultHasher::new();
        (seed, k).hash(&mut h);
        h.finish()
    });
    v
}

/// The first difference between what an incremental snapshot and a full compile say,
/// if any (the whole lists are too long to read in a failure).
fn first_difference<T: PartialEq + std::fmt::Debug>(
    incremental: &[T],
    full: &[T],
) -> Option<String> {
    if let Some(i) = (0..incremental.len().min(full.len())).find(|i| incremental[*i] != full[*i]) {
        return Some(format!(
            "incremental: {:?}, full compile: {:?}",
            incremental[i], full[i]
        ));
    }
    (incremental.len() != full.len()).then(|| {
        format!(
            "incremental gives {} results, full compile {}",
            incremental.len(),
            full.len()
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference(c in cluster()) {
        let s = Snapshot::compile(&c);
        for a in ends(&c) {
            for b in ends(&c) {
                for (proto, port) in proto_ports() {
                    let f = Flow { src: endpoint(&s, &a), dst: endpoint(&s, &b), protocol: proto, port, transport: Transport::Plaintext };
                    let got = s.authorize(&f).allowed();
                    let want = reference(&c, &a, &b, proto, port);
                    prop_assert_eq!(got, want, "{:?} -> {:?} {}/{}: engine {:?}", a, b, proto, port, s.authorize(&f));
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
        let diff = first_difference(&all_decisions(&incremental, &changed), &all_decisions(&full, &changed));
        prop_assert!(diff.is_none(), "{}", diff.unwrap_or_default());
        prop_assert!(incremental.generation() > before.generation());
    }

    /// Pods sharing and reusing addresses: a chain of changes (a pod deleted and another
    /// created on its address, an address moving from one pod to another, terminations)
    /// applied one event at a time, or batched by key (each key's last state) in an
    /// arbitrary order, as the node agent does, equals a full compile.
    #[test]
    fn pod_batches_in_any_order_equal_full_compile(
        c in cluster(),
        ops in prop::collection::vec(small_op(), 1..8),
        seed in any::<u64>(),
        by_event in any::<bool>(),
    ) {
        let mut cluster = c.clone();
        let mut snap = Snapshot::compile(&c);
        let mut batch: BTreeMap<(String, String), Option<Pod>> = BTreeMap::new();
        for (k, op) in ops.into_iter().enumerate() {
            let keys: Vec<_> = cluster.pods.keys().cloned().collect();
            let pick = |w: usize| keys[w % keys.len()].clone();
            let change = match op {
                SmallOp::Update(w, labels, slot, done) if !keys.is_empty() => {
                    let key = pick(w);
                    let mut p = cluster.pods[&key].clone();
                    p.labels = labels;
                    p.ips = vec![small_ip(slot)];
                    p.terminated = done;
                    Some((key, Some(p)))
                }
                SmallOp::Add(ns, labels, slot, created) => {
                    let mut p = Pod::new(NAMESPACES[ns], &format!("new{k}"), labels);
                    p.ips = vec![small_ip(slot)];
                    p.created = created;
                    p.node = Some("node-a".to_owned());
                    Some(((p.namespace.clone(), p.name.clone()), Some(p)))
                }
                SmallOp::Delete(w) if !keys.is_empty() => Some((pick(w), None)),
                SmallOp::TakeIp(from, to) if !keys.is_empty() => {
                    let key = pick(to);
                    let mut p = cluster.pods[&key].clone();
                    p.ips.clone_from(&cluster.pods[&pick(from)].ips);
                    Some((key, Some(p)))
                }
                SmallOp::Update(..) | SmallOp::Delete(_) | SmallOp::TakeIp(..) => None,
            };
            let Some((key, pod)) = change else { continue };
            match &pod {
                Some(p) => cluster.upsert_pod(p.clone()),
                None => {
                    cluster.pods.remove(&key);
                }
            }
            if by_event {
                snap = apply_pod(&snap, &key, pod.clone());
            }
            batch.insert(key, pod);
        }
        if !by_event {
            for (key, pod) in shuffled(seed, batch) {
                snap = apply_pod(&snap, &key, pod);
            }
        }
        let full = Snapshot::compile(&cluster);
        let diff = first_difference(&all_decisions(&snap, &cluster), &all_decisions(&full, &cluster));
        prop_assert!(diff.is_none(), "{}", diff.unwrap_or_default());
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
    // Later pods are newer; some have no creation time (manifests).
    p.created = (!i.is_multiple_of(7)).then(|| i64::try_from(i / 2).unwrap());
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
    /// Pod `to` takes pod `from`'s address.
    TakeIp(usize, usize),
    /// Add a new pod on the address pod `which` was created with (live, moved or deleted).
    AddReusing(BigPod, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), big_pod_parts(), prop::bool::weighted(0.3))
            .prop_map(|(w, p, m)| Op::Update(w, p, m)),
        3 => big_pod_parts().prop_map(Op::Add),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::TakeIp(a, b)),
        1 => (big_pod_parts(), any::<usize>()).prop_map(|(p, w)| Op::AddReusing(p, w)),
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
                for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53), (ICMP, 0)] {
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
    fn shared_label_sets_and_update_chains(
        c in big_cluster(),
        ops in prop::collection::vec(op(), 1..8),
        seed in any::<u64>(),
        by_event in any::<bool>(),
    ) {
        let mut cluster = c.clone();
        let mut snap = Snapshot::compile(&c);
        let mut next_index = c.pods.len();
        let mut probes: Vec<(String, String)> = c.pods.keys().step_by(97).cloned().collect();
        let mut batch: BTreeMap<(String, String), Option<Pod>> = BTreeMap::new();
        for op in ops {
            let keys: Vec<_> = cluster.pods.keys().cloned().collect();
            let change = match op {
                Op::Update(which, parts, moved) if !keys.is_empty() => {
                    let key = keys[which % keys.len()].clone();
                    let i: usize = key.1.trim_start_matches("pod").parse().unwrap();
                    let mut p = big_pod(i, parts, moved);
                    // Keep the pod in its namespace: a key is (namespace, name).
                    p.namespace.clone_from(&key.0);
                    Some((key, Some(p)))
                }
                Op::Add(parts) => {
                    let p = big_pod(next_index, parts, false);
                    next_index += 1;
                    Some(((p.namespace.clone(), p.name.clone()), Some(p)))
                }
                Op::AddReusing(parts, which) => {
                    let mut p = big_pod(next_index, parts, false);
                    next_index += 1;
                    p.ips = vec![big_ip(which % next_index, false)];
                    Some(((p.namespace.clone(), p.name.clone()), Some(p)))
                }
                Op::TakeIp(from, to) if !keys.is_empty() => {
                    let key = keys[to % keys.len()].clone();
                    let mut p = cluster.pods[&key].clone();
                    p.ips.clone_from(&cluster.pods[&keys[from % keys.len()]].ips);
                    Some((key, Some(p)))
                }
                Op::Delete(which) if !keys.is_empty() => {
                    Some((keys[which % keys.len()].clone(), None))
                }
                Op::Update(..) | Op::Delete(_) | Op::TakeIp(..) => None,
            };
            let Some((key, pod)) = change else { continue };
            match &pod {
                Some(p) => {
                    cluster.upsert_pod(p.clone());
                    probes.push(key.clone());
                }
                None => {
                    cluster.pods.remove(&key);
                }
            }
            if by_event {
                snap = apply_pod(&snap, &key, pod.clone());
            }
            batch.insert(key, pod);
        }
        if !by_event {
            for (key, pod) in shuffled(seed, batch) {
                snap = apply_pod(&snap, &key, pod);
            }
        }
        let full = Snapshot::compile(&cluster);
        let diff = first_difference(&probe_decisions(&snap, &cluster, &probes), &probe_decisions(&full, &cluster, &probes));
        prop_assert!(diff.is_none(), "{}", diff.unwrap_or_default());

        let ends: Vec<End> = probes
            .iter()
            .filter(|k| cluster.pods.contains_key(*k))
            .map(|(ns, n)| End::Pod(ns.clone(), n.clone()))
            .collect();
        for a in &ends {
            for b in &ends {
                for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53), (Protocol::Tcp, 8080), (ICMP, 0)] {
                    let f = Flow { src: endpoint(&full, a), dst: endpoint(&full, b), protocol: proto, port, transport: Transport::Plaintext };
                    prop_assert_eq!(full.authorize(&f).allowed(), reference(&cluster, a, b, proto, port), "{:?} -> {:?} {}/{}", a, b, proto, port);
                }
            }
        }
    }
}
