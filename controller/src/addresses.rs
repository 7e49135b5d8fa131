//! The address plan for pods, Services and nodes that manifests leave without addresses:
//! one plan, so that `netward lab` (which builds them) and `netward matrix`/`explain`
//! (which only reason about them) see the same cluster.
//!
//! Nodes are the node names the pods use, sorted (`node-a` when none names one); pods
//! without `spec.nodeName` are placed on the first. Node k (1-based) gets:
//! - the node addresses 198.18.0.k and fd00:0:0:a::k;
//! - the default pod CIDRs **198.18.k.0/24 and fd00::k:0/112**: its pods without
//!   `status.podIPs` get 198.18.k.(10+i) and fd00::k:(10+i) (i counts from 0 per node,
//!   in `namespace/name` order; the IPv6 suffix is hexadecimal, so the first is fd00::k:a).
//!
//! Services without `clusterIPs` get 198.19.0.(10+i) and fd00::ffff:0:(10+i), i being the
//! Service's index among all Services in `namespace/name` order. Host-network pods keep
//! no address of their own (they are their node). Only 198.18.0.0/15 and fd00::/8 are
//! used: addresses reserved for testing and unique local ones, never real hosts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::cluster::Cluster;
use crate::model::Node;

/// The node a cluster without any `spec.nodeName` runs its pods on.
pub const DEFAULT_NODE: &str = "node-a";

/// How many objects [`assign`] gave addresses to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    /// Pods that had no `status.podIPs` (host-network pods excluded).
    pub pods: usize,
    /// Services that had no `clusterIPs`.
    pub services: usize,
}

/// The node names a cluster's pods use, sorted; `[node-a]` when none names one.
pub fn node_names(cluster: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .pods
        .values()
        .filter_map(|p| p.node.clone())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        names.push(DEFAULT_NODE.to_owned());
    }
    names
}

/// Gives addresses to the pods and Services that have none, and places pods without a
/// node on the first node, as the module documentation describes. Objects that have
/// addresses keep them; running it again changes nothing.
pub fn assign(cluster: &mut Cluster) -> Assigned {
    let nodes = node_names(cluster);
    let first = nodes
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_NODE.to_owned());
    let mut assigned = Assigned::default();
    let mut next: BTreeMap<usize, u16> = BTreeMap::new();
    for pod in cluster.pods.values_mut() {
        if pod.node.is_none() {
            pod.node = Some(first.clone());
        }
        if pod.host_network || !pod.ips.is_empty() {
            continue;
        }
        let k = nodes
            .iter()
            .position(|n| Some(n) == pod.node.as_ref())
            .unwrap_or(0)
            + 1;
        let i = next.entry(k).or_insert(10);
        let (hi, lo) = (
            u8::try_from(*i / 256).unwrap_or(0),
            u8::try_from(*i % 256).unwrap_or(0),
        );
        let k8 = u8::try_from(k).unwrap_or(u8::MAX);
        pod.ips.push(IpAddr::V4(Ipv4Addr::new(
            198,
            18,
            k8.saturating_add(hi.saturating_mul(64)),
            lo,
        )));
        pod.ips.push(IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            u16::from(k8),
            *i,
        )));
        *i = i.saturating_add(1);
        assigned.pods += 1;
    }
    for (i, svc) in cluster.services.values_mut().enumerate() {
        if svc.cluster_ips.is_empty() {
            let i = u16::try_from(i + 10).unwrap_or(u16::MAX);
            svc.cluster_ips.push(IpAddr::V4(Ipv4Addr::new(
                198,
                19,
                u8::try_from(i / 256).unwrap_or(0),
                u8::try_from(i % 256).unwrap_or(0),
            )));
            svc.cluster_ips
                .push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0xffff, 0, i)));
            assigned.services += 1;
        }
    }
    assigned
}

/// Gives the pods and Services of `step` (a scenario up to one of its files) the node and
/// addresses `whole` (the same scenario, every file, after [`assign`]) has for them: the
/// lab plans addresses once for every step, so a pod keeps its address when a later file
/// adds others. What `whole` does not have is assigned as [`assign`] does.
pub fn assign_from(step: &mut Cluster, whole: &Cluster) -> Assigned {
    for (key, pod) in &mut step.pods {
        if let Some(planned) = whole.pods.get(key) {
            if pod.node.is_none() {
                pod.node.clone_from(&planned.node);
            }
            if pod.ips.is_empty() && !pod.host_network {
                pod.ips.clone_from(&planned.ips);
            }
        }
    }
    for (key, svc) in &mut step.services {
        if let Some(planned) = whole.services.get(key)
            && svc.cluster_ips.is_empty()
        {
            svc.cluster_ips.clone_from(&planned.cluster_ips);
        }
    }
    assign(step)
}

/// The addresses of node k (1-based).
pub fn node_ips(k: usize) -> (Ipv4Addr, Ipv6Addr) {
    let k8 = u8::try_from(k).unwrap_or(u8::MAX);
    (
        Ipv4Addr::new(198, 18, 0, k8),
        Ipv6Addr::new(0xfd00, 0, 0, 0xa, 0, 0, 0, u16::from(k8)),
    )
}

/// The default pod CIDRs of node k (1-based): where [`assign`] puts its pods, and what
/// the Node objects the lab writes say (`spec.podCIDRs`), so that netward intercepts the
/// node's whole pod range, pods it has not learned yet included.
pub fn node_pod_cidrs(k: usize) -> [IpNet; 2] {
    let k8 = u8::try_from(k).unwrap_or(u8::MAX);
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(198, 18, k8, 0), 24).unwrap_or_default()),
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, u16::from(k8), 0), 112)
                .unwrap_or_default(),
        ),
    ]
}

/// The Node objects for a cluster's node names, with their addresses and pod CIDRs.
pub fn node_objects(cluster: &Cluster) -> Vec<Node> {
    node_names(cluster)
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let (v4, v6) = node_ips(i + 1);
            Node {
                labels: cluster
                    .nodes
                    .get(&name)
                    .map(|n| n.labels.clone())
                    .unwrap_or_default(),
                name,
                ips: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
                pod_cidrs: node_pod_cidrs(i + 1).to_vec(),
            }
        })
        .collect()
}
