//! Builders shared by the engine tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::net::IpAddr;
use std::path::Path;

use netward_controller::render::SideReport;
use netward_controller::{Cluster, Flow, Manifests, Protocol, Side, Snapshot, Transport};

/// Reads YAML text; panics (failing the test) on any error.
pub(crate) fn cluster(yaml: &str) -> Cluster {
    let mut m = Manifests::default();
    m.read_str(Path::new("test.yaml"), yaml);
    m.finish();
    assert!(m.errors.is_empty(), "unexpected errors: {:#?}", m.errors);
    m.cluster
}

/// Reads YAML text and returns the manifests (errors included).
pub(crate) fn manifests(yaml: &str) -> Manifests {
    let mut m = Manifests::default();
    m.read_str(Path::new("test.yaml"), yaml);
    m.finish();
    m
}

/// `ns/name` or an IP to an endpoint.
pub(crate) fn ep(snap: &Snapshot, what: &str) -> netward_controller::Endpoint {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return snap.endpoint_for_ip(ip);
    }
    let (ns, name) = what.split_once('/').unwrap();
    snap.endpoint_for_pod(ns, name, Some(false))
        .unwrap_or_else(|| panic!("no pod {what}"))
}

pub(crate) fn flow(snap: &Snapshot, from: &str, to: &str, protocol: Protocol, port: u16) -> Flow {
    Flow {
        src: ep(snap, from),
        dst: ep(snap, to),
        protocol,
        port,
        transport: Transport::Plaintext,
    }
}

/// A side as a short string: `allowed:ns/p[0]`, `denied:ns/a,ns/b`, `not-isolated`,
/// `not-pod`, `exempt:self-traffic`, `audit-denied:ns/p`.
pub(crate) fn side(snap: &Snapshot, s: &Side) -> String {
    let r = SideReport::new(snap, s, None);
    match r.result.as_str() {
        "allowed" => {
            let a = r.allowed_by.unwrap();
            format!("allowed:{}[{}]", a.policy, a.rule)
        }
        "denied" | "audit-denied" => format!("{}:{}", r.result, r.isolated_by.join(",")),
        "exempt" => format!(
            "exempt:{}",
            serde_json::to_value(r.exemption.unwrap())
                .unwrap()
                .as_str()
                .unwrap()
        ),
        other => other.to_owned(),
    }
}

/// The base cluster the semantic tests share.
pub(crate) const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: a, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
---
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
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web, tier: front}}
spec:
  nodeName: n1
  containers:
    - name: web
      image: x
      ports:
        - {name: http, containerPort: 80}
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: metrics, containerPort: 9090}
status: {podIPs: [{ip: 198.18.1.1}, {ip: "fd00::1:1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec:
  nodeName: n1
  containers:
    - name: db
      image: x
      ports: [{name: http, containerPort: 8080}]
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 198.18.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: b, labels: {app: other, env: dev}}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: c}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
status: {podIP: 198.18.3.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: c, labels: {app: client}}
spec: {nodeName: n2, hostNetwork: true, containers: [{name: c, image: x}]}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: a, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 198.18.1.9, phase: Succeeded}
"#;

/// Compiles BASE plus extra YAML.
pub(crate) fn snap(extra: &str) -> Snapshot {
    Snapshot::compile(&cluster(&format!("{BASE}\n---\n{extra}")))
}
