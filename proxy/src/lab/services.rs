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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use std::path::Path;

    use netward_controller::Manifests;

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIPs: [{ip: 198.18.1.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 198.18.1.12}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-old, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Succeeded, podIPs: [{ip: 198.18.1.13}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [198.19.0.10, "fd00::ffff:0:10"]
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: shop}
spec: {clusterIP: 198.19.0.11, ports: [{port: 80}]}
"#;

    #[test]
    fn routes_go_to_each_backends_resolved_port_in_the_frontends_family() {
        let mut m = Manifests::default();
        m.read_str(Path::new("cluster.yaml"), CLUSTER);
        let cluster = m.into_clean().unwrap();
        let r = routes(&cluster);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let route = |frontend: &str, backends: &[(&str, &str)]| ServiceRoute {
            service: "shop/web".to_owned(),
            protocol: Protocol::Tcp,
            frontend: sa(frontend),
            backends: backends
                .iter()
                .map(|(p, a)| ((*p).to_owned(), sa(a)))
                .collect(),
        };
        // The Service without selector has no routes; web-3 lacks the named port and
        // web-old has terminated; web-2 has no IPv6 address.
        assert_eq!(
            r,
            vec![
                route(
                    "198.19.0.10:80",
                    &[
                        ("shop/web-1", "198.18.1.10:8080"),
                        ("shop/web-2", "198.18.1.11:9090")
                    ]
                ),
                route(
                    "[fd00::ffff:0:10]:80",
                    &[("shop/web-1", "[fd00::1:10]:8080")]
                ),
                route(
                    "198.19.0.10:81",
                    &[
                        ("shop/web-1", "198.18.1.10:7000"),
                        ("shop/web-2", "198.18.1.11:7000"),
                        ("shop/web-3", "198.18.1.12:7000"),
                    ]
                ),
                route(
                    "[fd00::ffff:0:10]:81",
                    &[("shop/web-1", "[fd00::1:10]:7000")]
                ),
            ]
        );
    }
}
