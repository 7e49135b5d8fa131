//! A cluster built from network namespaces: one per node, one per pod (on a veth to its
//! node), nodes joined by a bridge, and external hosts behind the first node.
//!
//! Addresses (only 198.18.0.0/15 and fd00::/8 are used):
//! - node k (1-based): 198.18.0.k and fd00:0:0:a::k, on the wire between nodes, and as
//!   the gateway address on each of its pod veths;
//! - pods: their `status.podIPs`, or 198.18.k.(10+i) and fd00::k:(10+i) when absent;
//! - Services: their `clusterIPs`, or 198.19.0.(10+i) and fd00::ffff:0:(10+i);
//!   (this plan is [`netward_controller::addresses`], which the offline tools use too);
//! - external hosts: whatever their `ExternalHosts` object says (inside those ranges).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netward_controller::Cluster;

use super::netns::{Error, Netns, Result};

/// The IPv4 network every lab address must be in.
pub const LAB_V4: &str = "198.18.0.0/15";
/// The IPv6 network every lab address must be in.
pub const LAB_V6: &str = "fd00::/8";

/// Whether an address is one the lab may use.
pub fn is_lab_address(ip: IpAddr) -> bool {
    let nets: [IpNet; 2] = [
        LAB_V4.parse().unwrap_or_else(|_| IpNet::default()),
        LAB_V6.parse().unwrap_or_else(|_| IpNet::default()),
    ];
    nets.iter().any(|n| n.contains(&ip))
}

/// A host outside the cluster (a stand-in for the internet or a metadata endpoint).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// A short name.
    pub name: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// TCP ports it serves (and probes use).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// One node namespace.
#[derive(Debug)]
pub struct LabNode {
    /// `spec.nodeName`.
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its IPv4 address.
    pub ip4: Ipv4Addr,
    /// Its IPv6 address.
    pub ip6: Ipv6Addr,
}

/// One pod namespace.
#[derive(Debug)]
pub struct LabPod {
    /// `namespace/name`.
    pub key: String,
    /// Its namespace.
    pub ns: Netns,
    /// The node it runs on.
    pub node: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// One external host namespace.
#[derive(Debug)]
pub struct LabExternal {
    /// What it is.
    pub spec: ExternalSpec,
    /// Its namespace.
    pub ns: Netns,
}

/// The whole lab network. Dropping it deletes every namespace.
#[derive(Debug)]
pub struct Topology {
    /// The nodes, in name order.
    pub nodes: Vec<LabNode>,
    /// The pods by `namespace/name`.
    pub pods: BTreeMap<String, LabPod>,
    /// External hosts.
    pub externals: Vec<LabExternal>,
    /// The bridge joining the nodes (multi-node only). Declared last: dropped last.
    wire: Option<Netns>,
}

// The address plan is the controller's, shared with `netward matrix` and `explain`.
pub use netward_controller::addresses::{
    assign as assign_addresses, node_ips, node_names, node_objects, node_pod_cidrs,
};

const NODE_SYSCTLS: &str = "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0";

const HOST_SYSCTLS: &str =
    "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0";

fn check(ips: &[IpAddr], what: &str) -> Result<()> {
    for ip in ips {
        if !is_lab_address(*ip) {
            return Err(Error::Command {
                command: format!("address {ip} of {what}"),
                detail: format!(
                    "the lab only uses {LAB_V4} and {LAB_V6}; give {what} an address there"
                ),
            });
        }
    }
    Ok(())
}

impl Topology {
    /// Builds namespaces, veths, addresses and routes for every node, pod and external host.
    /// Call [`assign_addresses`] first.
    pub fn build(cluster: &Cluster, externals: &[ExternalSpec]) -> Result<Topology> {
        let names = node_names(cluster);
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (ip4, ip6) = node_ips(i + 1);
            let ns = Netns::new(&format!("node{}", i + 1))?;
            ns.sh(NODE_SYSCTLS)?;
            // The node's addresses live on loopback too, so they exist with no pods.
            ns.sh(&format!(
                "ip addr add {ip4}/32 dev lo\nip -6 addr add {ip6}/128 dev lo nodad"
            ))?;
            nodes.push(LabNode {
                name: name.clone(),
                ns,
                ip4,
                ip6,
            });
        }
        let mut topo = Topology {
            nodes,
            pods: BTreeMap::new(),
            externals: Vec::new(),
            wire: None,
        };
        if topo.nodes.len() > 1 {
            let wire = Netns::new("wire")?;
            wire.sh("ip link add br0 type bridge\nip link set br0 up")?;
            for (i, node) in topo.nodes.iter().enumerate() {
                let k = i + 1;
                wire.exec(&[
                    "ip",
                    "link",
                    "add",
                    &format!("n{k}"),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "wire",
                    "netns",
                    node.ns.name(),
                ])?;
                wire.sh(&format!("ip link set n{k} master br0\nip link set n{k} up"))?;
                node.ns.sh(&format!(
                    "ip link set wire up\nip addr add {}/24 dev wire\nip -6 addr add {}/64 dev wire nodad",
                    node.ip4, node.ip6
                ))?;
            }
            topo.wire = Some(wire);
        }
        for (i, pod) in cluster
            .pods
            .values()
            .filter(|p| !p.host_network && !p.terminated)
            .enumerate()
        {
            let key = pod.key();
            check(&pod.ips, &format!("pod {key}"))?;
            let node_name = pod.node.clone().unwrap_or_else(|| names[0].clone());
            let ns = Netns::new(&format!("pod{i}"))?;
            ns.sh(HOST_SYSCTLS)?;
            let node = topo.node(&node_name)?;
            let dev = format!("p{i}");
            node.ns.exec(&[
                "ip",
                "link",
                "add",
                &dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            let mut node_script = format!(
                "ip link set {dev} up\nip addr add {}/32 dev {dev}\nip -6 addr add {}/128 dev {dev} nodad\n",
                node.ip4, node.ip6
            );
            let mut pod_script = format!(
                "ip link set eth0 up\nip route add {}/32 dev eth0\nip route add default via {} dev eth0\nip -6 route add {}/128 dev eth0\nip -6 route add default via {} dev eth0\n",
                node.ip4, node.ip4, node.ip6, node.ip6
            );
            for ip in &pod.ips {
                let (fam, plen, flags) = if ip.is_ipv4() {
                    ("-4", 32, "")
                } else {
                    ("-6", 128, " nodad")
                };
                pod_script.push_str(&format!("ip {fam} addr add {ip}/{plen} dev eth0{flags}\n"));
                node_script.push_str(&format!("ip {fam} route add {ip}/{plen} dev {dev}\n"));
            }
            node.ns.sh(&node_script)?;
            ns.sh(&pod_script)?;
            topo.pods.insert(
                key.clone(),
                LabPod {
                    key,
                    ns,
                    node: node_name,
                    ips: pod.ips.clone(),
                },
            );
        }
        for (i, spec) in externals.iter().enumerate() {
            check(&spec.ips, &format!("external host {}", spec.name))?;
            let ns = Netns::new(&format!("ext{i}"))?;
            ns.sh(HOST_SYSCTLS)?;
            let node = &topo.nodes[0];
            let dev = format!("x{i}");
            node.ns.exec(&[
                "ip",
                "link",
                "add",
                &dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            let mut node_script = format!(
                "ip link set {dev} up\nip addr add {}/32 dev {dev}\nip -6 addr add {}/128 dev {dev} nodad\n",
                node.ip4, node.ip6
            );
            let mut ext_script = format!(
                "ip link set eth0 up\nip route add {}/32 dev eth0\nip route add default via {} dev eth0\nip -6 route add {}/128 dev eth0\nip -6 route add default via {} dev eth0\n",
                node.ip4, node.ip4, node.ip6, node.ip6
            );
            for ip in &spec.ips {
                let (fam, plen, flags) = if ip.is_ipv4() {
                    ("-4", 32, "")
                } else {
                    ("-6", 128, " nodad")
                };
                ext_script.push_str(&format!("ip {fam} addr add {ip}/{plen} dev eth0{flags}\n"));
                node_script.push_str(&format!("ip {fam} route add {ip}/{plen} dev {dev}\n"));
            }
            node.ns.sh(&node_script)?;
            ns.sh(&ext_script)?;
            topo.externals.push(LabExternal {
                spec: spec.clone(),
                ns,
            });
        }
        // Routes between nodes: every pod and external host is reached through its node.
        if topo.nodes.len() > 1 {
            for (i, node) in topo.nodes.iter().enumerate() {
                let mut script = String::new();
                for pod in topo.pods.values().filter(|p| p.node != node.name) {
                    let via = topo.node(&pod.node)?;
                    for ip in &pod.ips {
                        script.push_str(&route_via(*ip, via));
                    }
                }
                if i > 0 {
                    for ext in &topo.externals {
                        for ip in &ext.spec.ips {
                            script.push_str(&route_via(*ip, &topo.nodes[0]));
                        }
                    }
                }
                if !script.is_empty() {
                    node.ns.sh(&script)?;
                }
            }
        }
        Ok(topo)
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Result<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::Command {
                command: format!("node {name}"),
                detail: "no such node in the lab".to_owned(),
            })
    }

    /// Leaves every namespace in place when dropped (`netward lab --keep`).
    pub fn keep(&mut self) {
        for n in &mut self.nodes {
            n.ns.keep();
        }
        for p in self.pods.values_mut() {
            p.ns.keep();
        }
        for e in &mut self.externals {
            e.ns.keep();
        }
        if let Some(w) = &mut self.wire {
            w.keep();
        }
    }

    /// The namespace of the link between nodes, when there are several.
    pub fn wire(&self) -> Option<&Netns> {
        self.wire.as_ref()
    }
}

fn route_via(ip: IpAddr, via: &LabNode) -> String {
    match ip {
        IpAddr::V4(_) => format!("ip -4 route add {ip}/32 via {} dev wire\n", via.ip4),
        IpAddr::V6(_) => format!("ip -6 route add {ip}/128 via {} dev wire\n", via.ip6),
    }
}
