//! The bench's manifests: two pods on `node-a` with policies that allow the client to
//! reach the server's bench ports, and (for the policy-scale path) 10,000 more pods on
//! other nodes with 1,000 NetworkPolicies, ten of which also select the server.

use std::fmt::Write as _;

/// The server pod's IPv4 address.
pub(crate) const SERVER_IP: &str = "198.18.1.10";
/// The client pod's IPv4 address.
pub(crate) const CLIENT_IP: &str = "198.18.1.11";
/// The node both pods run on.
pub(crate) const NODE: &str = "node-a";
/// `namespace/name` of the server pod.
pub(crate) const SERVER: &str = "bench/server";
/// `namespace/name` of the client pod.
pub(crate) const CLIENT: &str = "bench/client";

/// The ports the server pod serves; every policy that matters allows all of them.
pub(crate) const PORTS: [u16; 4] = [
    crate::servers::IPERF_PORT,
    crate::servers::ECHO_PORT,
    crate::servers::RR_PORT,
    crate::servers::HOLD_PORT,
];

fn port_list() -> String {
    PORTS
        .iter()
        .map(|p| format!("{{port: {p}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pods and the policies of the bench namespace: both pods isolated both ways
/// (default deny), the client's egress and the server's ingress allowed on the bench
/// ports, so every verdict evaluates both sides.
pub(crate) fn base() -> String {
    let ports = port_list();
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: bench, labels: {{team: bench}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
spec: {{nodeName: {NODE}, containers: [{{name: c, image: x}}]}}
status: {{podIPs: [{{ip: {SERVER_IP}}}, {{ip: "fd00::1:10"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: bench, labels: {{app: client}}}}
spec: {{nodeName: {NODE}, containers: [{{name: c, image: x}}]}}
status: {{podIPs: [{{ip: {CLIENT_IP}}}, {{ip: "fd00::1:11"}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: bench}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server-from-client, namespace: bench}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
      ports: [{ports}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-to-server, namespace: bench}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
    - to: [{{podSelector: {{matchLabels: {{app: server}}}}}}]
      ports: [{ports}]
"#
    )
}

/// The two-node lab: the server pod's IPv4 address (on `node-b`).
pub(crate) const SERVER_2N_IP: &str = "198.18.2.10";
/// The two-node lab: the node the server pod runs on.
pub(crate) const NODE_B: &str = "node-b";

/// The two-node lab's manifests: the same pods and policies as [`base`], but the server
/// on `node-b` (198.18.2.10) and the client on `node-a`. With `strict`, the namespace has
/// `netward.io/mtls: strict`, so cross-node plaintext into it is denied: the server is
/// reachable only through the tunnel.
pub(crate) fn two_node(strict: bool) -> String {
    let labels = if strict {
        "team: bench, netward.io/mtls: strict"
    } else {
        "team: bench"
    };
    base()
        .replacen(
            "labels: {team: bench}",
            &format!("labels: {{{labels}}}"),
            1,
        )
        .replacen(
            &format!("spec: {{nodeName: {NODE}, containers: [{{name: c, image: x}}]}}\nstatus: {{podIPs: [{{ip: {SERVER_IP}}}, {{ip: \"fd00::1:10\"}}]}}"),
            &format!("spec: {{nodeName: {NODE_B}, containers: [{{name: c, image: x}}]}}\nstatus: {{podIPs: [{{ip: {SERVER_2N_IP}}}, {{ip: \"fd00::2:10\"}}]}}"),
            1,
        )
}

/// Namespaces, pods per namespace and policies per namespace of the scale manifests.
pub(crate) const SCALE_NAMESPACES: usize = 100;
/// Pods in each generated namespace (100 × 100 = 10,000).
pub(crate) const SCALE_PODS_PER_NS: usize = 100;
/// Policies in each generated namespace, the last one of them in the bench namespace
/// instead (99 × 10 + 10 = 1,000).
pub(crate) const SCALE_POLICIES_PER_NS: usize = 10;

/// 10,000 pods in 100 namespaces on 100 other nodes (198.18.64.0 onwards) and 1,000
/// policies: 990 in the generated namespaces (default deny, same-namespace, app-to-app,
/// cross-namespace by team, ipBlock with except, egress to DNS, port ranges) and 10 in
/// the bench namespace that select the server and allow only other namespaces' pods,
/// named to sort before `server-from-client`, so the server's ingress verdict walks 12
/// isolating policies before the one that allows the client.
pub(crate) fn scale() -> String {
    let mut out = String::with_capacity(4 << 20);
    let mut pod_index: u32 = 0;
    for ns in 0..SCALE_NAMESPACES {
        let team = ns % 10;
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: scale-{ns:03}, labels: {{team: t{team}, env: {}}}}}\n",
            ["prod", "staging", "dev"][ns % 3]
        );
        for p in 0..SCALE_PODS_PER_NS {
            // 198.18.64.0 + index: inside 198.18.0.0/15, away from the lab's nodes and pods.
            let ip = 198u32 << 24 | 18 << 16 | 64 << 8 | pod_index;
            let ip = std::net::Ipv4Addr::from(ip);
            pod_index += 1;
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{p:03}, namespace: scale-{ns:03}, labels: {{app: app{}, tier: {}, version: v{}}}}}\nspec: {{nodeName: node-s{ns:02}, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n",
                p % 20,
                ["web", "api", "db"][p % 3],
                p % 4
            );
        }
        let policies = if ns == SCALE_NAMESPACES - 1 {
            0
        } else {
            SCALE_POLICIES_PER_NS
        };
        for k in 0..policies {
            out.push_str(&scale_policy(ns, k));
        }
    }
    for k in 0..SCALE_POLICIES_PER_NS {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-scale-{k:02}, namespace: bench}}\nspec:\n  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [server, other{k}]}}]}}\n  ingress:\n    - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: app{k}}}}}}}]\n      ports: [{{port: {}}}]\n    - from: [{{ipBlock: {{cidr: 198.18.64.0/18, except: [198.18.64.0/24]}}}}]\n",
            k % 10,
            8000 + k
        );
    }
    out
}

fn scale_policy(ns: usize, k: usize) -> String {
    let name = format!("scale-{ns:03}");
    let head = |pname: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {pname}, namespace: {name}}}\nspec:\n"
        )
    };
    let app = (ns + k) % 20;
    match k {
        0 => head("default-deny") + "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
        1 => {
            head("same-namespace")
                + "  podSelector: {}\n  ingress:\n    - from: [{podSelector: {}}]\n"
        }
        2 => {
            head("dns-egress")
                + "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to: [{namespaceSelector: {matchLabels: {team: t1}}, podSelector: {matchLabels: {app: app1}}}]\n      ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n"
        }
        3 => {
            head(&format!("app{app}-from-team"))
                + &format!(
                    "  podSelector: {{matchLabels: {{app: app{app}}}}}\n  ingress:\n    - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n      ports: [{{port: http}}]\n",
                    (ns + 3) % 10
                )
        }
        4 => {
            head(&format!("app{app}-expr"))
                + &format!(
                    "  podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [api, db]}}, {{key: version, operator: NotIn, values: [v{}]}}]}}\n  ingress:\n    - from: [{{podSelector: {{matchExpressions: [{{key: app, operator: Exists}}]}}}}]\n      ports: [{{port: 8000, endPort: 8100}}]\n",
                    k % 4
                )
        }
        5 => {
            head("egress-ipblock")
                + "  podSelector: {matchLabels: {tier: web}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{ipBlock: {cidr: 198.19.0.0/16, except: [198.19.1.0/24, 198.19.2.0/24]}}]\n      ports: [{port: 443}]\n"
        }
        6 => {
            head("from-prod")
                + "  podSelector: {matchLabels: {tier: api}}\n  ingress:\n    - from: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod, staging]}]}, podSelector: {matchLabels: {tier: web}}}]\n"
        }
        7 => {
            head("both-ways")
                + &format!(
                    "  podSelector: {{matchLabels: {{app: app{app}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - from: [{{ipBlock: {{cidr: 198.18.0.0/15, except: [198.18.0.0/18]}}}}]\n  egress:\n    - to: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}]\n      ports: [{{port: 30000, endPort: 32767}}]\n",
                    (app + 1) % 20
                )
        }
        8 => {
            head("monitoring")
                + "  podSelector: {}\n  ingress:\n    - from: [{namespaceSelector: {matchLabels: {team: t0}}}]\n      ports: [{port: 9100}]\n"
        }
        _ => {
            head("udp-range")
                + "  podSelector: {matchLabels: {tier: db}}\n  ingress:\n    - from: [{namespaceSelector: {}}]\n      ports: [{port: 9000, endPort: 9100, protocol: UDP}]\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_node_moves_the_server_and_labels_only_when_strict() {
        for strict in [false, true] {
            let text = two_node(strict);
            assert!(text.contains("nodeName: node-b, containers: [{name: c, image: x}]}\nstatus: {podIPs: [{ip: 198.18.2.10}"));
            assert_eq!(text.matches("nodeName: node-a").count(), 1);
            assert_eq!(text.contains("netward.io/mtls: strict"), strict);
        }
    }

    #[test]
    fn scale_counts() {
        let text = scale();
        assert_eq!(text.matches("\nkind: Pod\n").count(), 10_000);
        assert_eq!(text.matches("\nkind: NetworkPolicy\n").count(), 1_000);
        assert_eq!(text.matches("\nkind: Namespace\n").count(), 100);
    }
}
