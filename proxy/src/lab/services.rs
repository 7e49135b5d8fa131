//! Services as kube-proxy would write them: DNAT from each ClusterIP:port to one of
//! the backend pods (chosen at random), in nat prerouting and output at priority
//! `dstnat`, so netward's divert (at `dstnat + 10`) sees the chosen backend.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use netward_controller::model::{Protocol, Service};
use netward_controller::{Cluster, Snapshot};

use super::netns::{Netns, Result};

/// One Service port and the backends it balances over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRoute {
    /// `namespace/name`.
    pub service: String,
    /// The protocol.
    pub protocol: Protocol,
    /// ClusterIP and port.
    pub frontend: SocketAddr,
    /// Backend pod keys and their addresses (same family as the frontend).
    pub backends: Vec<(String, SocketAddr)>,
}

/// The routes of every Service with a selector: ClusterIP:port to each backend's port
/// (`Snapshot::service_backends`, the resolution `netward explain` uses too).
pub fn routes(cluster: &Cluster) -> Vec<ServiceRoute> {
    let snap = Snapshot::compile(cluster);
    let mut out = Vec::new();
    for svc in snap.services().filter(|s| s.selector.is_some()) {
        for sp in &svc.ports {
            let backends = snap.service_backends(svc, sp);
            for cip in &svc.cluster_ips {
                let backends = backends
                    .iter()
                    .filter_map(|b| {
                        let p = snap.pod(b.pod);
                        let ip = p.ips.iter().find(|ip| ip.is_ipv6() == cip.is_ipv6())?;
                        Some((p.key(), SocketAddr::new(*ip, b.port)))
                    })
                    .collect();
                out.push(ServiceRoute {
                    service: svc.key(),
                    protocol: sp.protocol,
                    frontend: SocketAddr::new(*cip, sp.port),
                    backends,
                });
            }
        }
    }
    out
}

/// The `nft -f` script for one node: `table inet netward-lab-services`.
pub fn render(routes: &[ServiceRoute]) -> String {
    let mut s = String::from(
        "table inet netward-lab-services {}\ndelete table inet netward-lab-services\ntable inet netward-lab-services {\n",
    );
    let mut rules = String::new();
    for r in routes
        .iter()
        .filter(|r| !r.backends.is_empty() && r.protocol != Protocol::Sctp)
    {
        let fam = if r.frontend.is_ipv4() { "ip" } else { "ip6" };
        let proto = r.protocol.as_str().to_lowercase();
        let map: Vec<String> = r
            .backends
            .iter()
            .enumerate()
            .map(|(i, (_, b))| match b.ip() {
                IpAddr::V4(ip) => format!("{i} : {ip} . {}", b.port()),
                IpAddr::V6(ip) => format!("{i} : {ip} . {}", b.port()),
            })
            .collect();
        let _ = writeln!(
            rules,
            "\t\t{fam} daddr {} {proto} dport {} dnat {fam} to numgen random mod {} map {{ {} }} comment \"{}\"",
            r.frontend.ip(),
            r.frontend.port(),
            r.backends.len(),
            map.join(", "),
            r.service
        );
    }
    // `dstnat` (-100) is only a name in prerouting; output uses the number.
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", "dstnat"),
        ("output", "output", "-100"),
    ] {
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype nat hook {hook} priority {prio}; policy accept;\n{rules}\t}}"
        );
    }
    s.push_str("}\n");
    s
}

/// Installs the Service rules in a node namespace.
pub fn install(node: &Netns, routes: &[ServiceRoute]) -> Result<()> {
    let script = render(routes);
    let path = std::env::temp_dir().join(format!(
        "netward-lab-services-{}-{}.nft",
        std::process::id(),
        node.name()
    ));
    std::fs::write(&path, script).map_err(|source| super::netns::Error::Enter {
        name: node.name().to_owned(),
        source,
    })?;
    let r = node.exec(&["nft", "-f", path.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

/// The Service a snapshot knows for a ClusterIP, by name (for reports).
pub fn name_for(snap: &Snapshot, ip: IpAddr) -> Option<String> {
    snap.service_for_ip(ip).map(Service::key)
}
