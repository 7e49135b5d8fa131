//! `netward.io/mtls`: a strict namespace takes cross-node connections only through the
//! tunnel, and the engine says so with its own reason.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use common::{ep, manifests, side};
use netward_controller::{Flow, MtlsMode, Protocol, Snapshot, Transport};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: strict, labels: {netward.io/mtls: strict}}
---
apiVersion: v1
kind: Namespace
metadata: {name: permissive, labels: {netward.io/mtls: permissive}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: strict, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: strict, labels: {app: peer}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: permissive, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.12}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: plain, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.13}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: plain, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 198.18.1.10}
"#;

fn snap(extra: &str) -> Snapshot {
    let m = manifests(&format!("{CLUSTER}\n---\n{extra}"));
    assert!(m.errors.is_empty(), "unexpected errors: {:#?}", m.errors);
    Snapshot::compile(&m.cluster)
}

fn ingress(s: &Snapshot, from: &str, to: &str, transport: Transport) -> String {
    let flow = Flow {
        src: ep(s, from),
        dst: ep(s, to),
        protocol: Protocol::Tcp,
        port: 80,
        transport,
    };
    side(s, &s.authorize(&flow).ingress)
}

#[test]
fn strict_refuses_cross_node_plaintext_and_nothing_else() {
    use Transport::{Plaintext, Tunnel};
    let s = snap("");
    let cases = [
        // Cross-node pod to a strict pod: only through the tunnel.
        (
            "plain/client",
            "strict/web",
            Plaintext,
            "plaintext-under-strict-mtls",
        ),
        ("plain/client", "strict/web", Tunnel, "not-isolated"),
        // Same node: local and in clear.
        ("strict/peer", "strict/web", Plaintext, "not-isolated"),
        // The destination's own node (kubelet probes) stays exempt.
        (
            "198.18.0.2",
            "strict/web",
            Plaintext,
            "exempt:from-own-node",
        ),
        // Another node's address, or an address outside the cluster, is off-node.
        (
            "198.18.0.1",
            "strict/web",
            Plaintext,
            "plaintext-under-strict-mtls",
        ),
        (
            "198.19.9.9",
            "strict/web",
            Plaintext,
            "plaintext-under-strict-mtls",
        ),
        // Permissive and disabled namespaces take both.
        ("plain/client", "permissive/web", Plaintext, "not-isolated"),
        ("plain/client", "permissive/web", Tunnel, "not-isolated"),
        ("plain/client", "plain/web", Plaintext, "not-isolated"),
    ];
    for (from, to, via, want) in cases {
        assert_eq!(
            ingress(&s, from, to, via),
            want,
            "{from} -> {to} via {}",
            via.as_str()
        );
    }
}

#[test]
fn strict_governs_tcp_only_as_the_tunnel_carries_tcp_only() {
    let s = snap("");
    for protocol in [Protocol::Udp, Protocol::Sctp] {
        let flow = Flow {
            src: ep(&s, "plain/client"),
            dst: ep(&s, "strict/web"),
            protocol,
            port: 53,
            transport: Transport::Plaintext,
        };
        assert_eq!(side(&s, &s.authorize(&flow).ingress), "not-isolated");
    }
}

#[test]
fn the_tunnel_never_bypasses_policy() {
    let s = snap(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: strict}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
    );
    assert_eq!(
        ingress(&s, "plain/client", "strict/web", Transport::Tunnel),
        "denied:strict/deny-all"
    );
    // Plaintext is refused for being plaintext first: that is the reason operators need.
    assert_eq!(
        ingress(&s, "plain/client", "strict/web", Transport::Plaintext),
        "plaintext-under-strict-mtls"
    );
    let flow = Flow {
        src: ep(&s, "plain/client"),
        dst: ep(&s, "strict/web"),
        protocol: Protocol::Tcp,
        port: 80,
        transport: Transport::Plaintext,
    };
    assert!(!s.authorize(&flow).allowed());
    // `explain` renders the same reason.
    let e = s.explain(&flow);
    let text =
        netward_controller::render::explain_text(&s, "plain/client", "strict/web", &flow, &e);
    assert!(text.contains("netward.io/mtls=strict"), "{text}");
}

#[test]
fn an_unknown_mtls_value_is_an_error_and_fails_closed() {
    let m = manifests(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: typo, labels: {netward.io/mtls: strcit}}
"#,
    );
    let text = format!("{:?}", m.errors);
    assert!(
        text.contains("netward.io/mtls") && text.contains("strcit"),
        "{text}"
    );
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("netward.io/mtls".to_owned(), "strcit".to_owned());
    let ns = netward_controller::model::Namespace::fallback("typo", Some(&labels));
    assert_eq!(ns.mtls, MtlsMode::Strict);
    assert_eq!(
        netward_controller::model::Namespace::with_labels("typo", labels).mtls,
        MtlsMode::Strict
    );
}
