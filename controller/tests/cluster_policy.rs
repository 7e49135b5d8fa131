//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): the upstream conformance
//! suite's cases (kubernetes-sigs/network-policy-api `conformance/tests`, the
//! `CNPAdminTier*` and `CNPBaselineTier*` tests) written as table tests from their
//! published expectations, on the suite's own cast: four houses of two pods each.
//!
//! Each case names the upstream test it comes from; where netward decides something the
//! API leaves to the implementation (ties between equal priorities), the case says so.
//! Cases labelled `netward:` are netward's own, in the suite's style, not upstream's.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use common::{flow, manifests};
use netward_controller::Protocol::{self, Sctp, Tcp, Udp};
use netward_controller::Snapshot;

const HARRY0: &str = "network-policy-conformance-gryffindor/harry-potter-0";
const HARRY1: &str = "network-policy-conformance-gryffindor/harry-potter-1";
const DRACO0: &str = "network-policy-conformance-slytherin/draco-malfoy-0";
const DRACO1: &str = "network-policy-conformance-slytherin/draco-malfoy-1";
const CEDRIC0: &str = "network-policy-conformance-hufflepuff/cedric-diggory-0";
const CEDRIC1: &str = "network-policy-conformance-hufflepuff/cedric-diggory-1";
const LUNA0: &str = "network-policy-conformance-ravenclaw/luna-lovegood-0";
const LUNA1: &str = "network-policy-conformance-ravenclaw/luna-lovegood-1";
/// Only in the omitted-namespaceSelector case.
const KRUM0: &str = "network-policy-conformance-durmstrang/viktor-krum-0";
/// node-1 (kubernetes.io/os: linux), where the host-networked centaur-1 runs.
const NODE1: &str = "198.18.0.1";
/// node-3 (kubernetes.io/os: windows).
const NODE3: &str = "198.18.0.3";
/// The metadata endpoint's stand-in (169.254.169.254 in the tutorials).
const METADATA: &str = "198.19.255.254";
/// A host on the internet.
const INTERNET: &str = "198.19.255.1";

/// The conformance suite's base (`conformance/base/manifests.yaml`): four namespaces
/// labelled `conformance-house`, two pods each (StatefulSet pods, with their
/// `statefulset.kubernetes.io/pod-name` label), serving TCP 80 and 8080, UDP 53 and
/// 5353, SCTP 9003 and 9005; the experimental tests' named port `web` (TCP 80) and a
/// `dns` port (UDP 53) for named ports per protocol; nodes, and a host-networked pod.
fn base() -> String {
    let mut y = String::new();
    for (i, (house, who)) in [
        ("gryffindor", "harry-potter"),
        ("slytherin", "draco-malfoy"),
        ("hufflepuff", "cedric-diggory"),
        ("ravenclaw", "luna-lovegood"),
    ]
    .iter()
    .enumerate()
    {
        y.push_str(&format!(
            r#"
---
apiVersion: v1
kind: Namespace
metadata: {{name: network-policy-conformance-{house}, labels: {{conformance-house: {house}}}}}
"#
        ));
        for n in 0..2 {
            y.push_str(&format!(
                r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {who}-{n}, namespace: network-policy-conformance-{house}, labels: {{conformance-house: {house}, statefulset.kubernetes.io/pod-name: {who}-{n}}}}}
spec:
  nodeName: node-2
  containers:
    - name: c
      image: agnhost
      ports:
        - {{name: web, containerPort: 80}}
        - {{containerPort: 8080}}
        - {{name: dns, containerPort: 53, protocol: UDP}}
        - {{containerPort: 5353, protocol: UDP}}
        - {{containerPort: 9003, protocol: SCTP}}
        - {{containerPort: 9005, protocol: SCTP}}
status: {{podIP: 198.18.{}.{}}}
"#,
                10 + i,
                n + 1
            ));
        }
    }
    y.push_str(
        r#"
---
apiVersion: v1
kind: Namespace
metadata: {name: network-policy-conformance-forbidden-forrest, labels: {conformance-house: forbidden-forrest}}
---
apiVersion: v1
kind: Pod
metadata: {name: centaur-1, namespace: network-policy-conformance-forbidden-forrest, labels: {conformance-house: forbidden-forrest}}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c, image: agnhost}]}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/os: linux}}
status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {kubernetes.io/os: linux}}
status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-3, labels: {kubernetes.io/os: windows}}
status: {addresses: [{type: InternalIP, address: 198.18.0.3}]}
"#,
    );
    y
}

/// Compiles the base plus `extra`, which must read without errors.
fn compile(extra: &str) -> Snapshot {
    let m = manifests(&format!("{}\n---\n{extra}", base()));
    assert!(m.errors.is_empty(), "unexpected errors: {:#?}", m.errors);
    Snapshot::compile(&m.cluster)
}

struct Case {
    /// The upstream conformance test (and sub-test) the expectations come from.
    upstream: &'static str,
    policies: &'static str,
    /// (from, to, protocol, port, allowed)
    checks: &'static [(&'static str, &'static str, Protocol, u16, bool)],
}

/// `conformance/base/admin_tier/standard-priority-field.yaml`, with the second
/// policy's priority as the test sets it.
const PRIORITY_FIELD: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: priority-50-example}
spec:
  tier: Admin
  priority: 50
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: deny-all-ingress-from-slytherin
    action: Deny
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: deny-all-egress-to-slytherin
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: old-priority-60-new-priority-40-example}
spec:
  tier: Admin
  priority: PRIORITY
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: pass-all-ingress-from-slytherin
    action: Pass
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: pass-all-egress-to-slytherin
    action: Pass
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: allow-all-ingress-from-slytherin
    action: Accept
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: allow-all-egress-to-slytherin
    action: Accept
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
"#;

/// `conformance/base/api_integration/standard-anp-np-banp.yaml`: an Admin policy whose
/// actions the test turns from Deny to Pass, a NetworkPolicy, a Baseline Deny.
const INTEGRATION: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pass-example}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: deny-all-ingress-from-slytherin
    action: INGRESS_ACTION
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: deny-all-egress-to-slytherin
    action: EGRESS_ACTION
    to:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: deny-all-ingress-from-slytherin
    action: Deny
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
  egress:
  - name: deny-all-egress-to-slytherin
    action: Deny
    to:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
"#;

/// The integration test's NetworkPolicy (deleted by its last two sub-tests).
const INTEGRATION_NP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-gress-from-to-slytherin-to-gryffindor, namespace: network-policy-conformance-gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {conformance-house: slytherin}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {conformance-house: slytherin}}
"#;

/// `conformance/base/admin_tier/standard-same-priority.yaml`.
const SAME_PRIORITY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: same-priority-gryffindor-slytherin}
spec:
  tier: Admin
  priority: 15
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-gryffindor}}
  ingress:
  - name: deny-from-slytherin-at-port-80
    action: Deny
    from:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
  egress:
  - name: deny-to-slytherin-at-port-80
    action: Deny
    to:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: same-priority-gryffindor-hufflepuff}
spec:
  tier: Admin
  priority: 15
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-gryffindor}}
  ingress:
  - name: deny-from-hufflepuff-at-port-80
    action: Deny
    from:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-hufflepuff}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
  egress:
  - name: deny-to-hufflepuff-at-port-80
    action: Deny
    to:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-hufflepuff}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: same-priority-hufflepuff-slytherin}
spec:
  tier: Admin
  priority: 15
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-hufflepuff}}
  ingress:
  - name: deny-from-slytherin-at-port-8080
    action: Deny
    from:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}
    protocols:
    - tcp: {destinationPort: {number: 8080}}
  egress:
  - name: deny-to-slytherin-at-port-8080
    action: Deny
    to:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}
    protocols:
    - tcp: {destinationPort: {number: 8080}}
"#;

/// `conformance/base/{admin,baseline}_tier/standard-port-range-rules-combined.yaml`
/// (TIER and PRIORITY as the tier's file sets them).
const PORT_RANGE_COMBINED: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: port-range-rules}
spec:
  tier: TIER
  priority: PRIORITY
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-gryffindor}}
  egress:
  - name: allow-to-ravenclaw-tcp-port-range
    action: Accept
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-ravenclaw}}}]
    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 8080}}}}]
  - name: allow-to-hufflepuff-udp-port-range
    action: Accept
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-hufflepuff}}}]
    protocols: [{udp: {destinationPort: {range: {start: 53, end: 5353}}}}]
  - name: allow-to-slytherin-sctp-port-range
    action: Accept
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}}]
    protocols: [{sctp: {destinationPort: {range: {start: 9003, end: 9005}}}}]
  - name: deny-all-egress
    action: Deny
    to: [{namespaces: {matchExpressions: [{key: conformance-house, operator: Exists}]}}]
  ingress:
  - name: allow-from-ravenclaw-tcp-port-range
    action: Accept
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-ravenclaw}}}]
    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 8080}}}}]
  - name: allow-from-hufflepuff-udp-port-range
    action: Accept
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-hufflepuff}}}]
    protocols: [{udp: {destinationPort: {range: {start: 53, end: 5353}}}}]
  - name: allow-from-slytherin-sctp-port-range
    action: Accept
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}}]
    protocols: [{sctp: {destinationPort: {range: {start: 9003, end: 9005}}}}]
  - name: deny-all-ingress
    action: Deny
    from: [{namespaces: {matchExpressions: [{key: conformance-house, operator: Exists}]}}]
"#;

/// `conformance/base/admin_tier/standard-pod-selector-rules.yaml`.
const POD_SELECTOR: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pod-selector-rules}
spec:
  tier: Admin
  priority: 20
  subject:
    pods: {podSelector: {matchLabels: {conformance-house: gryffindor}}}
  egress:
  - name: deny-to-ravenclaw-pods
    action: Deny
    to: [{pods: {podSelector: {matchLabels: {conformance-house: ravenclaw}}}}]
  - name: deny-to-cedric-diggory-0
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: hufflepuff}}
        podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: cedric-diggory-0}}
  ingress:
  - name: deny-from-slytherin-pods
    action: Deny
    from: [{pods: {podSelector: {matchLabels: {conformance-house: slytherin}}}}]
  - name: deny-from-cedric-diggory-0
    action: Deny
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: hufflepuff}}
        podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: cedric-diggory-0}}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: pod-name-subject-rules}
spec:
  tier: Admin
  priority: 21
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: ravenclaw}}
      podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: luna-lovegood-0}}
  egress:
  - name: deny-to-slytherin
    action: Deny
    to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-slytherin}}}]
"#;

const CASES: &[Case] = &[
    Case {
        upstream: "CNPAdminTierPriorityField: priority 50 Deny before priority 60 Pass",
        policies: "PRIORITY_FIELD:60",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO1, HARRY0, Tcp, 8080, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY1, DRACO0, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierPriorityField: priority 40 Pass before priority 50 Deny, Baseline Accept decides",
        policies: "PRIORITY_FIELD:40",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, true),
            (DRACO1, HARRY0, Tcp, 8080, true),
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY1, DRACO0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIntegration: Admin Deny beats the NetworkPolicy's allow",
        policies: "INTEGRATION:Deny:Deny:NP",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO1, HARRY0, Tcp, 8080, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY1, DRACO0, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIntegration: pass-ingress, the NetworkPolicy allows",
        policies: "INTEGRATION:Pass:Deny:NP",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, true),
            (DRACO1, HARRY0, Tcp, 8080, true),
            (HARRY0, DRACO0, Tcp, 80, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIntegration: pass-egress, the NetworkPolicy allows",
        policies: "INTEGRATION:Pass:Pass:NP",
        checks: &[
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY1, DRACO0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIntegration: Pass with the NetworkPolicy deleted, the Baseline Deny decides",
        policies: "INTEGRATION:Pass:Pass",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO1, HARRY0, Tcp, 8080, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY1, DRACO0, Tcp, 8080, false),
            // Not a peer of any rule: the default (allow).
            (LUNA0, HARRY0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierSamePriority: every same-priority policy applies, none bleeds onto another's subject",
        policies: "SAME_PRIORITY",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (CEDRIC0, HARRY0, Tcp, 80, false),
            (HARRY1, CEDRIC0, Tcp, 80, false),
            (DRACO1, CEDRIC0, Tcp, 8080, false),
            (CEDRIC1, DRACO0, Tcp, 8080, false),
            (DRACO0, HARRY0, Tcp, 8080, true),
            (HARRY0, DRACO0, Tcp, 8080, true),
            (DRACO1, CEDRIC0, Tcp, 80, true),
            (CEDRIC0, DRACO0, Tcp, 80, true),
            (LUNA0, HARRY0, Tcp, 80, true),
            (HARRY1, LUNA0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "netward: CNPBaselineTier*: a NetworkPolicy that selects the pod overrides the Baseline tier",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {}
  ingress:
  - name: default-deny
    action: Deny
    from:
    - namespaces: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-slytherin, namespace: network-policy-conformance-gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {conformance-house: slytherin}}
"#,
        checks: &[
            // The NetworkPolicy selects gryffindor's pods: its answer is final.
            (DRACO0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 80, false),
            // No NetworkPolicy selects hufflepuff's pods: the Baseline Deny decides.
            (DRACO0, CEDRIC0, Tcp, 80, false),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            // Egress is not in the Baseline policy.
            (CEDRIC0, INTERNET, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "netward: CNPBaselineTier*: Pass in the Baseline tier goes to the default (allow)",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: default}
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces: {}
  ingress:
  - name: pass-slytherin
    action: Pass
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
  - name: default-deny
    action: Deny
    from:
    - namespaces: {}
"#,
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 80, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressNamedPort (experimental): destinationNamedPort web is TCP 80 on the destination",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress-tcp}
spec:
  tier: Admin
  priority: 3
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: allow-to-hufflepuff-at-web
    action: Accept
    to:
    - namespaces: {matchLabels: {conformance-house: hufflepuff}}
    protocols:
    - destinationNamedPort: web
  - name: allow-to-hufflepuff-at-dns
    action: Accept
    to:
    - namespaces: {matchLabels: {conformance-house: hufflepuff}}
    protocols:
    - destinationNamedPort: dns
  - name: deny-to-hufflepuff
    action: Deny
    to:
    - namespaces: {matchLabels: {conformance-house: hufflepuff}}
"#,
        checks: &[
            (HARRY0, CEDRIC1, Tcp, 80, true),
            (HARRY1, CEDRIC1, Tcp, 8080, false),
            // A named port names one protocol: `web` is TCP, `dns` is UDP.
            (HARRY0, CEDRIC1, Udp, 80, false),
            (HARRY0, CEDRIC1, Udp, 53, true),
            (HARRY0, CEDRIC1, Tcp, 53, false),
        ],
    },
    Case {
        upstream: "netward: CNPAdminTier*PortRange: port ranges per protocol, and single numbers",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: port-ranges}
spec:
  tier: Admin
  priority: 4
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: deny-ranges-from-slytherin
    action: Deny
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
    protocols:
    - tcp: {destinationPort: {range: {start: 8080, end: 8090}}}
    - udp: {destinationPort: {range: {start: 5300, end: 5400}}}
    - sctp: {destinationPort: {number: 9003}}
"#,
        checks: &[
            (DRACO0, HARRY0, Tcp, 8080, false),
            (DRACO0, HARRY0, Tcp, 8090, false),
            (DRACO0, HARRY0, Tcp, 80, true),
            (DRACO0, HARRY0, Tcp, 8091, true),
            (DRACO0, HARRY0, Udp, 5353, false),
            (DRACO0, HARRY0, Udp, 53, true),
            // The UDP range does not cover TCP.
            (DRACO0, HARRY0, Tcp, 5353, true),
            (DRACO0, HARRY0, Sctp, 9003, false),
            (DRACO0, HARRY0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "netward: CNPAdminTierEgressInlineCIDR: networks peers, pod addresses included",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: inline-cidrs}
spec:
  tier: Admin
  priority: 5
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: deny-metadata
    action: Deny
    to:
    - networks: [198.19.255.254/32]
  - name: deny-slytherin-by-cidr
    action: Deny
    to:
    - networks: [198.18.11.0/24, "fd00::/64"]
"#,
        checks: &[
            (HARRY0, METADATA, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 80, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY0, CEDRIC0, Tcp, 80, true),
            // Only gryffindor is the subject.
            (CEDRIC0, METADATA, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressNodePeers (experimental): Accept, Pass and Deny to nodes",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: node-and-cidr-as-peers-example}
spec:
  tier: Admin
  priority: 75
  subject:
    pods:
      namespaceSelector: {matchLabels: {conformance-house: gryffindor}}
      podSelector: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: allow-egress-to-34345-on-nodes
    action: Accept
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    protocols:
    - tcp: {destinationPort: {number: 34345}}
  - name: pass-egress-to-34347-on-nodes
    action: Pass
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    protocols:
    - udp: {destinationPort: {number: 34347}}
  - name: deny-egress-to-slytherin-and-nodes-and-internet
    action: Deny
    to:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {matchLabels: {conformance-house: slytherin}}
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
    - networks: [0.0.0.0/0, "::/0"]
"#,
        checks: &[
            (HARRY1, NODE1, Tcp, 34345, true),
            (HARRY1, NODE1, Udp, 34347, true),
            (HARRY1, NODE1, Tcp, 34346, false),
            (HARRY1, NODE1, Udp, 34348, false),
            (HARRY1, NODE1, Sctp, 34350, false),
            (HARRY1, DRACO0, Tcp, 80, false),
            (HARRY1, INTERNET, Tcp, 80, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressNodePeers (experimental): a nodes selector selects by the node's labels",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: linux-nodes-only}
spec:
  tier: Admin
  priority: 75
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: allow-linux-nodes
    action: Accept
    to:
    - nodes: {matchLabels: {kubernetes.io/os: linux}}
  - name: deny-node-network
    action: Deny
    to:
    - networks: [198.18.0.0/24]
"#,
        checks: &[
            (HARRY0, NODE1, Tcp, 10250, true),
            (HARRY0, NODE3, Tcp, 10250, false),
        ],
    },
    Case {
        upstream: "netward: CNPAdminTier ingress: an Admin Accept overrides a NetworkPolicy's deny; other sources still meet it",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: accept-slytherin}
spec:
  tier: Admin
  priority: 20
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: accept-slytherin
    action: Accept
    from:
    - pods:
        namespaceSelector: {matchLabels: {conformance-house: slytherin}}
        podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: network-policy-conformance-gryffindor}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 80, false),
        ],
    },
    Case {
        upstream: "netward: CNPAdminTier egress Accept: the destination's ingress still applies",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: accept-egress}
spec:
  tier: Admin
  priority: 20
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  egress:
  - name: accept-to-slytherin
    action: Accept
    to:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: network-policy-conformance-slytherin}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
        checks: &[(HARRY0, DRACO0, Tcp, 80, false)],
    },
    Case {
        upstream: "netward: CNPAdminTier*Rules: rules within one policy apply in the order written",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ordered}
spec:
  tier: Admin
  priority: 30
  subject:
    namespaces: {matchLabels: {conformance-house: gryffindor}}
  ingress:
  - name: accept-80-from-slytherin
    action: Accept
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
  - name: deny-slytherin
    action: Deny
    from:
    - namespaces: {matchLabels: {conformance-house: slytherin}}
"#,
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, true),
            (DRACO0, HARRY0, Tcp, 8080, false),
            (DRACO0, HARRY0, Udp, 53, false),
        ],
    },
    Case {
        upstream: "netward: subject and peers: host-networked pods are neither subjects nor namespaces/pods peers",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-pods-everywhere}
spec:
  tier: Admin
  priority: 1
  subject:
    namespaces: {}
  ingress:
  - name: deny-from-every-pod
    action: Deny
    from:
    - namespaces: {}
"#,
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            // centaur-1's address is node-1's: not a pod peer.
            (NODE1, HARRY0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "netward: metadata tutorial (seed 004) as an Admin Deny: a namespace's allow-all cannot reopen it",
        policies: r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: block-metadata}
spec:
  tier: Admin
  priority: 0
  subject:
    namespaces: {}
  egress:
  - name: deny-metadata
    action: Deny
    to:
    - networks: [198.19.255.254/32]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-egress, namespace: network-policy-conformance-gryffindor}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]
"#,
        checks: &[
            (HARRY0, METADATA, Tcp, 80, false),
            (LUNA0, METADATA, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 80, true),
        ],
    },
    // Transcribed from the upstream v1alpha2 conformance manifests
    // (`conformance/base/{admin_tier,baseline_tier}/standard-*-rules.yaml`); each
    // sub-test's rule swap is applied on top of the previous ones, as upstream patches
    // the live object. The UDP and SCTP probes follow the TCP tests' probes on those
    // manifests' own ports and houses.
    Case {
        upstream: "CNPAdminTierIngressTCP: allow-ingress (ordering, at port), deny at port, egress unaffected",
        policies: "GRESS:Admin:3:ingress:gryffindor:tcp:A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-80,P-slytherin-80,A-hufflepuff-80,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Tcp, 80, true),
            (LUNA1, HARRY0, Tcp, 8080, true),
            (CEDRIC0, HARRY1, Tcp, 80, true),
            (CEDRIC1, HARRY1, Tcp, 8080, false),
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY1, DRACO0, Tcp, 80, true),
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO1, HARRY0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressTCP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:3:ingress:gryffindor:tcp:D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-80,P-slytherin-80,A-hufflepuff-80,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY1, Tcp, 80, false),
            (LUNA1, HARRY1, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressTCP: pass-ingress, then rules 0 and 2 swapped; pass at port, rules 3 and 4 swapped",
        policies: "GRESS:Admin:3:ingress:gryffindor:tcp:P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-80,D-slytherin-80,A-hufflepuff-80,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Tcp, 80, true),
            (LUNA1, HARRY0, Tcp, 8080, true),
            (DRACO0, HARRY0, Tcp, 80, true),
            (DRACO1, HARRY0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressUDP: allow-ingress (ordering, at port), deny at port",
        policies: "GRESS:Admin:4:ingress:hufflepuff:udp:A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-5353,P-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (LUNA0, CEDRIC0, Udp, 53, true),
            (LUNA1, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC1, Udp, 53, true),
            (HARRY1, CEDRIC1, Udp, 5353, false),
            (DRACO0, CEDRIC0, Udp, 5353, false),
            (DRACO1, CEDRIC0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressUDP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:4:ingress:hufflepuff:udp:D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-5353,P-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (LUNA0, CEDRIC1, Udp, 53, false),
            (LUNA1, CEDRIC1, Udp, 5353, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressUDP: pass-ingress (rules 0 and 2 swapped), pass at port (3 and 4)",
        policies: "GRESS:Admin:4:ingress:hufflepuff:udp:P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-5353,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (LUNA0, CEDRIC0, Udp, 53, true),
            (LUNA1, CEDRIC0, Udp, 5353, true),
            (DRACO0, CEDRIC0, Udp, 5353, true),
            (DRACO1, CEDRIC0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressSCTP: allow-ingress (ordering, at port), deny at port",
        policies: "GRESS:Admin:5:ingress:ravenclaw:sctp:A-gryffindor,D-gryffindor,P-gryffindor,D-slytherin-9003,P-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Sctp, 9003, true),
            (HARRY1, LUNA0, Sctp, 9005, true),
            (CEDRIC0, LUNA1, Sctp, 9003, true),
            (CEDRIC1, LUNA1, Sctp, 9005, false),
            (DRACO0, LUNA0, Sctp, 9003, false),
            (DRACO1, LUNA0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressSCTP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:5:ingress:ravenclaw:sctp:D-gryffindor,A-gryffindor,P-gryffindor,D-slytherin-9003,P-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA1, Sctp, 9003, false),
            (HARRY1, LUNA1, Sctp, 9005, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressSCTP: pass-ingress (rules 0 and 2 swapped), pass at port (3 and 4)",
        policies: "GRESS:Admin:5:ingress:ravenclaw:sctp:P-gryffindor,A-gryffindor,D-gryffindor,P-slytherin-9003,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Sctp, 9003, true),
            (HARRY1, LUNA0, Sctp, 9005, true),
            (DRACO0, LUNA0, Sctp, 9003, true),
            (DRACO1, LUNA0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressTCP: allow-egress (ordering, at port), deny at port; ingress unaffected",
        policies: "GRESS:Admin:6:egress:gryffindor:tcp:A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-80,P-slytherin-80,A-hufflepuff-8080,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY1, LUNA0, Tcp, 8080, true),
            (HARRY0, CEDRIC1, Tcp, 8080, true),
            (HARRY1, CEDRIC1, Tcp, 80, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY1, DRACO0, Tcp, 8080, true),
            (DRACO0, HARRY0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressTCP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:6:egress:gryffindor:tcp:D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-80,P-slytherin-80,A-hufflepuff-8080,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA1, Tcp, 80, false),
            (HARRY1, LUNA1, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressTCP: pass-egress (rules 0 and 2 swapped), pass at port (3 and 4)",
        policies: "GRESS:Admin:6:egress:gryffindor:tcp:P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-80,D-slytherin-80,A-hufflepuff-8080,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY1, LUNA0, Tcp, 8080, true),
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY1, DRACO0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressUDP: allow-egress (ordering, at port), deny at port",
        policies: "GRESS:Admin:7:egress:hufflepuff:udp:A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-5353,P-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (CEDRIC0, LUNA0, Udp, 53, true),
            (CEDRIC1, LUNA0, Udp, 5353, true),
            (CEDRIC0, HARRY1, Udp, 53, true),
            (CEDRIC1, HARRY1, Udp, 5353, false),
            (CEDRIC0, DRACO0, Udp, 5353, false),
            (CEDRIC1, DRACO0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressUDP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:7:egress:hufflepuff:udp:D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-5353,P-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (CEDRIC0, LUNA1, Udp, 53, false),
            (CEDRIC1, LUNA1, Udp, 5353, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressUDP: pass-egress (rules 0 and 2 swapped), pass at port (3 and 4)",
        policies: "GRESS:Admin:7:egress:hufflepuff:udp:P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-5353,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (CEDRIC0, LUNA0, Udp, 53, true),
            (CEDRIC1, LUNA0, Udp, 5353, true),
            (CEDRIC0, DRACO0, Udp, 5353, true),
            (CEDRIC1, DRACO0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressTCP: allow-ingress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:ingress:gryffindor:tcp:A-ravenclaw,D-ravenclaw,D-slytherin-80,A-hufflepuff-80,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Tcp, 80, true),
            (LUNA1, HARRY0, Tcp, 8080, true),
            (CEDRIC0, HARRY1, Tcp, 80, true),
            (CEDRIC1, HARRY1, Tcp, 8080, false),
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO1, HARRY0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressTCP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:ingress:gryffindor:tcp:D-ravenclaw,A-ravenclaw,D-slytherin-80,A-hufflepuff-80,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY1, Tcp, 80, false),
            (LUNA1, HARRY1, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierIngressRulesEgressUnaffected (standard-ingress-isolation.yaml)",
        policies: "GRESS:Admin:20:ingress:gryffindor:tcp:D-slytherin",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY0, CEDRIC0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressRulesIngressUnaffected (standard-egress-isolation.yaml)",
        policies: "GRESS:Admin:20:egress:gryffindor:tcp:D-slytherin",
        checks: &[
            (HARRY0, DRACO0, Tcp, 80, false),
            (LUNA0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressSCTP: allow-egress (ordering, at port), deny at port",
        policies: "GRESS:Admin:8:egress:ravenclaw:sctp:A-gryffindor,D-gryffindor,P-gryffindor,D-slytherin-9003,P-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Sctp, 9003, true),
            (LUNA1, HARRY0, Sctp, 9005, true),
            (LUNA0, CEDRIC1, Sctp, 9003, true),
            (LUNA1, CEDRIC1, Sctp, 9005, false),
            (LUNA0, DRACO0, Sctp, 9003, false),
            (LUNA1, DRACO0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressSCTP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Admin:8:egress:ravenclaw:sctp:D-gryffindor,A-gryffindor,P-gryffindor,D-slytherin-9003,P-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY1, Sctp, 9003, false),
            (LUNA1, HARRY1, Sctp, 9005, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierEgressSCTP: pass-egress (rules 0 and 2 swapped), pass at port (3 and 4)",
        policies: "GRESS:Admin:8:egress:ravenclaw:sctp:P-gryffindor,A-gryffindor,D-gryffindor,P-slytherin-9003,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Sctp, 9003, true),
            (LUNA1, HARRY0, Sctp, 9005, true),
            (LUNA0, DRACO0, Sctp, 9003, true),
            (LUNA1, DRACO0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressUDP: allow-ingress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:ingress:hufflepuff:udp:A-ravenclaw,D-ravenclaw,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (LUNA0, CEDRIC0, Udp, 53, true),
            (LUNA1, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC1, Udp, 53, true),
            (HARRY1, CEDRIC1, Udp, 5353, false),
            (DRACO0, CEDRIC0, Udp, 5353, false),
            (DRACO1, CEDRIC0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressUDP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:ingress:hufflepuff:udp:D-ravenclaw,A-ravenclaw,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (LUNA0, CEDRIC1, Udp, 53, false),
            (LUNA1, CEDRIC1, Udp, 5353, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressSCTP: allow-ingress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:ingress:ravenclaw:sctp:A-gryffindor,D-gryffindor,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Sctp, 9003, true),
            (HARRY1, LUNA0, Sctp, 9005, true),
            (CEDRIC0, LUNA1, Sctp, 9003, true),
            (CEDRIC1, LUNA1, Sctp, 9005, false),
            (DRACO0, LUNA0, Sctp, 9003, false),
            (DRACO1, LUNA0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressSCTP: deny-ingress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:ingress:ravenclaw:sctp:D-gryffindor,A-gryffindor,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA1, Sctp, 9003, false),
            (HARRY1, LUNA1, Sctp, 9005, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressTCP: allow-egress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:egress:gryffindor:tcp:A-ravenclaw,D-ravenclaw,D-slytherin-80,A-hufflepuff-8080,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY1, LUNA0, Tcp, 8080, true),
            (HARRY0, CEDRIC1, Tcp, 8080, true),
            (HARRY1, CEDRIC1, Tcp, 80, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY1, DRACO0, Tcp, 8080, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressTCP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:egress:gryffindor:tcp:D-ravenclaw,A-ravenclaw,D-slytherin-80,A-hufflepuff-8080,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA1, Tcp, 80, false),
            (HARRY1, LUNA1, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressUDP: allow-egress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:egress:hufflepuff:udp:A-ravenclaw,D-ravenclaw,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (CEDRIC0, LUNA0, Udp, 53, true),
            (CEDRIC1, LUNA0, Udp, 5353, true),
            (CEDRIC0, HARRY1, Udp, 53, true),
            (CEDRIC1, HARRY1, Udp, 5353, false),
            (CEDRIC0, DRACO0, Udp, 5353, false),
            (CEDRIC1, DRACO0, Udp, 53, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressUDP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:egress:hufflepuff:udp:D-ravenclaw,A-ravenclaw,D-slytherin-5353,A-gryffindor-53,D-gryffindor",
        checks: &[
            (CEDRIC0, LUNA1, Udp, 53, false),
            (CEDRIC1, LUNA1, Udp, 5353, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressSCTP: allow-egress (ordering, at port), deny at port",
        policies: "GRESS:Baseline:10:egress:ravenclaw:sctp:A-gryffindor,D-gryffindor,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY0, Sctp, 9003, true),
            (LUNA1, HARRY0, Sctp, 9005, true),
            (LUNA0, CEDRIC1, Sctp, 9003, true),
            (LUNA1, CEDRIC1, Sctp, 9005, false),
            (LUNA0, DRACO0, Sctp, 9003, false),
            (LUNA1, DRACO0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressSCTP: deny-egress, rules 0 and 1 swapped",
        policies: "GRESS:Baseline:10:egress:ravenclaw:sctp:D-gryffindor,A-gryffindor,D-slytherin-9003,A-hufflepuff-9003,D-hufflepuff",
        checks: &[
            (LUNA0, HARRY1, Sctp, 9003, false),
            (LUNA1, HARRY1, Sctp, 9005, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierGressRulesCombined (standard-gress-rules-combined.yaml): every protocol of a rule, both directions",
        policies: "GRESS:Admin:15:both:gryffindor:tcp:A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,P-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp80+udp5353+sctp9003,D-hufflepuff|A-ravenclaw,D-ravenclaw,P-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,P-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp8080+udp5353+sctp9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (LUNA0, HARRY0, Udp, 53, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY0, DRACO0, Udp, 53, false),
            (HARRY0, DRACO0, Sctp, 9003, false),
            (HARRY0, DRACO0, Tcp, 8080, true),
            (HARRY0, DRACO0, Udp, 5353, true),
            (HARRY0, DRACO0, Sctp, 9005, true),
            (DRACO0, HARRY0, Tcp, 80, false),
            (DRACO0, HARRY0, Udp, 53, false),
            (DRACO0, HARRY0, Sctp, 9003, false),
            (DRACO0, HARRY0, Tcp, 8080, true),
            (HARRY0, CEDRIC0, Tcp, 8080, true),
            (HARRY0, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC0, Sctp, 9003, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, CEDRIC0, Udp, 53, false),
            (HARRY0, CEDRIC0, Sctp, 9005, false),
            (CEDRIC0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Udp, 5353, true),
            (CEDRIC0, HARRY0, Sctp, 9003, true),
            (CEDRIC0, HARRY0, Tcp, 8080, false),
            (CEDRIC0, HARRY0, Udp, 53, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierGressRulesCombined: rules 0 and 1 swapped in both directions",
        policies: "GRESS:Admin:15:both:gryffindor:tcp:D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,P-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp80+udp5353+sctp9003,D-hufflepuff|D-ravenclaw,A-ravenclaw,P-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,P-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp8080+udp5353+sctp9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, false),
            (LUNA0, HARRY0, Udp, 53, false),
            (HARRY0, LUNA1, Sctp, 9003, false),
        ],
    },
    Case {
        upstream: "CNPAdminTierGressRulesCombined: Pass first (rules 0 and 2, then 3 and 4, swapped)",
        policies: "GRESS:Admin:15:both:gryffindor:tcp:P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-tcp80+udp53+sctp9003,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp80+udp5353+sctp9003,D-hufflepuff|P-ravenclaw,A-ravenclaw,D-ravenclaw,P-slytherin-tcp80+udp53+sctp9003,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp8080+udp5353+sctp9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (LUNA0, HARRY0, Udp, 53, true),
            (HARRY0, DRACO0, Tcp, 80, true),
            (DRACO0, HARRY0, Sctp, 9003, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierGressRulesCombined (standard-gress-rules-combined.yaml)",
        policies: "GRESS:Baseline:10:both:gryffindor:tcp:A-ravenclaw,D-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp80+udp5353+sctp9003,D-hufflepuff|A-ravenclaw,D-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp8080+udp5353+sctp9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (LUNA0, HARRY0, Udp, 53, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY0, DRACO0, Udp, 53, false),
            (HARRY0, DRACO0, Sctp, 9003, false),
            (HARRY0, DRACO0, Tcp, 8080, true),
            (DRACO0, HARRY0, Udp, 53, false),
            (DRACO0, HARRY0, Sctp, 9005, true),
            (HARRY0, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (CEDRIC0, HARRY0, Sctp, 9003, true),
            (CEDRIC0, HARRY0, Tcp, 8080, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierGressRulesCombined: rules 0 and 1 swapped in both directions",
        policies: "GRESS:Baseline:10:both:gryffindor:tcp:D-ravenclaw,A-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp80+udp5353+sctp9003,D-hufflepuff|D-ravenclaw,A-ravenclaw,D-slytherin-tcp80+udp53+sctp9003,A-hufflepuff-tcp8080+udp5353+sctp9003,D-hufflepuff",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, false),
            (LUNA0, HARRY0, Udp, 53, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierSamePriority (baseline_tier/standard-same-priority.yaml)",
        policies: "SAME_PRIORITY_BASELINE",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (HARRY0, DRACO0, Tcp, 80, false),
            (CEDRIC0, HARRY0, Tcp, 80, false),
            (HARRY1, CEDRIC0, Tcp, 80, false),
            (DRACO1, CEDRIC0, Tcp, 8080, false),
            (CEDRIC1, DRACO0, Tcp, 8080, false),
            (DRACO0, HARRY0, Tcp, 8080, true),
            (HARRY0, DRACO0, Tcp, 8080, true),
            (DRACO1, CEDRIC0, Tcp, 80, true),
            (CEDRIC0, DRACO0, Tcp, 80, true),
            (LUNA0, HARRY0, Tcp, 80, true),
            (HARRY1, LUNA0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierPortRangeRulesCombined (standard-port-range-rules-combined.yaml)",
        policies: "PORT_RANGE_COMBINED:Admin:9",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY0, LUNA0, Tcp, 8080, true),
            (HARRY0, LUNA0, Udp, 53, false),
            (HARRY0, CEDRIC0, Udp, 53, true),
            (HARRY0, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, DRACO0, Sctp, 9003, true),
            (HARRY0, DRACO0, Sctp, 9005, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (LUNA0, HARRY0, Tcp, 80, true),
            (LUNA0, HARRY0, Udp, 53, false),
            (CEDRIC0, HARRY0, Udp, 5353, true),
            (CEDRIC0, HARRY0, Tcp, 8080, false),
            (DRACO0, HARRY0, Sctp, 9005, true),
            (DRACO0, HARRY0, Udp, 53, false),
        ],
    },
    Case {
        upstream: "CNPBaselineTierPortRangeRulesCombined (baseline_tier/standard-port-range-rules-combined.yaml)",
        policies: "PORT_RANGE_COMBINED:Baseline:10",
        checks: &[
            (HARRY0, LUNA0, Tcp, 8080, true),
            (HARRY0, LUNA0, Udp, 53, false),
            (HARRY0, CEDRIC0, Udp, 5353, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, DRACO0, Sctp, 9003, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (LUNA0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 8080, false),
            (DRACO0, HARRY0, Sctp, 9005, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierPodSelectorRules (standard-pod-selector-rules.yaml): pod-label subjects and peers, by pod name too",
        policies: "POD_SELECTOR",
        checks: &[
            (HARRY0, LUNA0, Tcp, 80, false),
            (HARRY1, LUNA1, Tcp, 80, false),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, CEDRIC1, Tcp, 80, true),
            (HARRY0, DRACO0, Tcp, 80, true),
            (DRACO0, HARRY0, Tcp, 80, false),
            (CEDRIC0, HARRY1, Tcp, 80, false),
            (CEDRIC1, HARRY1, Tcp, 80, true),
            (LUNA1, HARRY0, Tcp, 80, true),
            (LUNA0, DRACO0, Tcp, 80, false),
            (LUNA1, DRACO0, Tcp, 80, true),
            (CEDRIC0, DRACO0, Tcp, 80, true),
            (DRACO0, LUNA0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPAdminTierGressOmittedNamespaceSelector (standard-gress-omitted-namespaceselector.yaml; the durmstrang pod is netward's stand-in: the test's own cast is not in the stored copy)",
        policies: r#"
apiVersion: v1
kind: Namespace
metadata: {name: network-policy-conformance-durmstrang, labels: {conformance-house: durmstrang}}
---
apiVersion: v1
kind: Pod
metadata: {name: viktor-krum-0, namespace: network-policy-conformance-durmstrang, labels: {conformance-house: durmstrang}}
spec: {nodeName: node-2, containers: [{name: c, image: agnhost, ports: [{containerPort: 80}]}]}
status: {podIP: 198.18.14.1}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: gress-omitted-namespaceselector}
spec:
  tier: Admin
  priority: 3
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: network-policy-conformance-durmstrang}}
  ingress:
  - name: deny-from-all-conformance-pods
    action: Deny
    from: [{pods: {podSelector: {matchExpressions: [{key: conformance-house, operator: Exists}]}}}]
"#,
        checks: &[
            (HARRY0, KRUM0, Tcp, 80, false),
            (LUNA0, KRUM0, Tcp, 80, false),
            (DRACO1, KRUM0, Tcp, 80, false),
            (KRUM0, HARRY0, Tcp, 80, true),
            (HARRY0, LUNA0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierIngressRulesEgressUnaffected (baseline_tier/standard-ingress-isolation.yaml)",
        policies: "GRESS:Baseline:20:ingress:gryffindor:tcp:D-slytherin",
        checks: &[
            (DRACO0, HARRY0, Tcp, 80, false),
            (HARRY0, LUNA0, Tcp, 80, true),
            (HARRY0, CEDRIC0, Tcp, 80, true),
        ],
    },
    Case {
        upstream: "CNPBaselineTierEgressRulesIngressUnaffected (baseline_tier/standard-egress-isolation.yaml)",
        policies: "GRESS:Baseline:20:egress:gryffindor:tcp:D-slytherin",
        checks: &[
            (HARRY0, DRACO0, Tcp, 80, false),
            (LUNA0, HARRY0, Tcp, 80, true),
            (CEDRIC0, HARRY0, Tcp, 80, true),
        ],
    },
];

/// The `standard-{ingress,egress}-{tcp,udp,sctp}-rules.yaml` and
/// `standard-gress-rules-combined.yaml` shape:
/// `GRESS:<tier>:<priority>:<ingress|egress|both>:<subject house>:<protocol>:<rules>`,
/// the rules comma-separated as `<A|D|P>-<house>[-<port>]` in the order written (so the
/// tests' rule swaps are other orders); a port may also be `tcp80+udp53+sctp9003`;
/// `both` takes `<ingress rules>|<egress rules>`.
fn gress(spec: &str) -> String {
    let f: Vec<&str> = spec.split(':').collect();
    let (tier, priority, dir, subject, proto, rules) = (f[1], f[2], f[3], f[4], f[5], f[6]);
    let mut y = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {dir}-{proto}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: network-policy-conformance-{subject}}}}}}}\n"
    );
    let sections: Vec<(&str, &str)> = match dir {
        "both" => {
            let (i, e) = rules.split_once('|').unwrap();
            vec![("ingress", i), ("egress", e)]
        }
        _ => vec![(dir, rules)],
    };
    for (dir, rules) in sections {
        let peers = if dir == "ingress" { "from" } else { "to" };
        y.push_str(&format!("  {dir}:\n"));
        for rule in rules.split(',') {
            let r: Vec<&str> = rule.split('-').collect();
            let action = match r[0] {
                "A" => "Accept",
                "D" => "Deny",
                _ => "Pass",
            };
            y.push_str(&format!(
                "  - action: {action}\n    {peers}: [{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: network-policy-conformance-{}}}}}}}]\n",
                r[1]
            ));
            if let Some(ports) = r.get(2) {
                let list: Vec<String> = ports
                    .split('+')
                    .map(|p| {
                        let (proto, number) = match p.find(|c: char| c.is_ascii_digit()) {
                            Some(0) | None => (proto, p),
                            Some(i) => p.split_at(i),
                        };
                        format!("{{{proto}: {{destinationPort: {{number: {number}}}}}}}")
                    })
                    .collect();
                y.push_str(&format!("    protocols: [{}]\n", list.join(", ")));
            }
        }
    }
    y
}

fn policies(spec: &str) -> String {
    let mut parts = spec.split(':');
    match parts.next() {
        Some("GRESS") => gress(spec),
        Some("PRIORITY_FIELD") => PRIORITY_FIELD.replace("PRIORITY", parts.next().unwrap()),
        Some("INTEGRATION") => {
            let ingress = parts.next().unwrap();
            let egress = parts.next().unwrap();
            let mut y = INTEGRATION
                .replace("INGRESS_ACTION", ingress)
                .replace("EGRESS_ACTION", egress);
            if parts.next() == Some("NP") {
                y.push_str("\n---\n");
                y.push_str(INTEGRATION_NP);
            }
            y
        }
        Some("SAME_PRIORITY") => SAME_PRIORITY.to_owned(),
        // `conformance/base/baseline_tier/standard-same-priority.yaml`: the Admin file's
        // three policies in the Baseline tier, at priority 10.
        Some("SAME_PRIORITY_BASELINE") => SAME_PRIORITY
            .replace("tier: Admin", "tier: Baseline")
            .replace("priority: 15", "priority: 10"),
        Some("PORT_RANGE_COMBINED") => {
            let tier = parts.next().unwrap();
            let priority = parts.next().unwrap();
            PORT_RANGE_COMBINED
                .replace("TIER", tier)
                .replace("PRIORITY", priority)
        }
        Some("POD_SELECTOR") => POD_SELECTOR.to_owned(),
        _ => spec.to_owned(),
    }
}

#[test]
fn upstream_conformance_expectations() {
    let mut failures = Vec::new();
    for case in CASES {
        let snap = compile(&policies(case.policies));
        for (from, to, proto, port, want) in case.checks {
            let d = snap.authorize(&flow(&snap, from, to, *proto, *port));
            if d.allowed() != *want {
                failures.push(format!(
                    "{}: {from} -> {to} {proto}/{port}: want {}, got {} ({d:?})",
                    case.upstream,
                    if *want { "allowed" } else { "denied" },
                    if d.allowed() { "allowed" } else { "denied" },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A side as a short string, naming the ClusterNetworkPolicy rule that decided it:
/// `Admin/NAME[ingress 0 "rule-name"]:Deny`, or the NetworkPolicy side as `common::side`.
fn reason(snap: &Snapshot, d: &netward_controller::Decision, ingress: bool) -> String {
    use netward_controller::render::DecisionReport;
    let f = flow_placeholder();
    let r = DecisionReport::new(snap, &f, d);
    let side = if ingress { r.ingress } else { r.egress };
    match &side.cluster_policy {
        Some(c) => format!(
            "{}/{}[{}{}]:{}",
            c.tier,
            c.policy,
            c.rule,
            c.rule_name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default(),
            c.action
        ),
        None => common::side(snap, if ingress { &d.ingress } else { &d.egress }),
    }
}

/// A flow for naming a decision's sides (the pods are not shown by `reason`).
fn flow_placeholder() -> netward_controller::Flow {
    netward_controller::Flow {
        src: netward_controller::Endpoint::default(),
        dst: netward_controller::Endpoint::default(),
        protocol: Tcp,
        port: 80,
        transport: netward_controller::Transport::Plaintext,
    }
}

/// The reason names the tier, the ClusterNetworkPolicy and its rule (index and name);
/// `explain` prints them.
#[test]
fn reasons_name_tier_policy_and_rule() {
    // (policies, from, to, proto, port, egress reason, ingress reason)
    let cases: &[(&str, &str, &str, Protocol, u16, &str, &str)] = &[
        (
            "PRIORITY_FIELD:60",
            DRACO0,
            HARRY0,
            Tcp,
            80,
            "not-isolated",
            "Admin/priority-50-example[0 deny-all-ingress-from-slytherin]:Deny",
        ),
        (
            "PRIORITY_FIELD:40",
            HARRY0,
            DRACO0,
            Tcp,
            80,
            "Baseline/default[0 allow-all-egress-to-slytherin]:Accept",
            "not-isolated",
        ),
        (
            "INTEGRATION:Pass:Pass:NP",
            DRACO0,
            HARRY0,
            Tcp,
            80,
            "not-isolated",
            "allowed:network-policy-conformance-gryffindor/allow-gress-from-to-slytherin-to-gryffindor[0]",
        ),
        (
            "INTEGRATION:Pass:Pass",
            HARRY0,
            DRACO0,
            Tcp,
            80,
            "Baseline/default[0 deny-all-egress-to-slytherin]:Deny",
            "not-isolated",
        ),
    ];
    for (pol, from, to, proto, port, eg, ing) in cases {
        let snap = compile(&policies(pol));
        let f = flow(&snap, from, to, *proto, *port);
        let d = snap.authorize(&f);
        assert_eq!(
            (
                reason(&snap, &d, false).as_str(),
                reason(&snap, &d, true).as_str()
            ),
            (*eg, *ing),
            "{pol}: {from} -> {to}"
        );
    }
    // explain's text and JSON carry the same.
    let snap = compile(&policies("PRIORITY_FIELD:60"));
    let f = flow(&snap, DRACO0, HARRY0, Tcp, 80);
    let text =
        netward_controller::render::explain_text(&snap, DRACO0, HARRY0, &f, &snap.explain(&f));
    assert!(
        text.contains(
            "ingress (network-policy-conformance-gryffindor/harry-potter-0): denied by \
             ClusterNetworkPolicy priority-50-example (Admin tier, priority 50) ingress[0] \
             \"deny-all-ingress-from-slytherin\" (Deny)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ClusterNetworkPolicy old-priority-60-new-priority-40-example [Admin tier, priority 60]"
        ),
        "{text}"
    );
    let json = serde_json::to_value(netward_controller::render::ExplainReport::new(
        &snap,
        DRACO0,
        HARRY0,
        &f,
        &snap.explain(&f),
    ))
    .unwrap();
    assert_eq!(
        json["decision"]["ingress"]["cluster_policy"],
        serde_json::json!({"tier": "Admin", "policy": "priority-50-example", "priority": 50,
            "rule": 0, "rule_name": "deny-all-ingress-from-slytherin", "action": "Deny"})
    );
    // A NetworkPolicy's decision carries no cluster_policy (the audit record is unchanged).
    assert!(json["decision"]["egress"].get("cluster_policy").is_none());
}

/// Ties between equal priorities are the implementation's choice upstream ("the
/// implementation can apply any of the matching policies"); netward's is deterministic and
/// fails closed: Deny, then Pass, then Accept, then the first by name.
#[test]
fn equal_priorities_tie_on_the_most_restrictive_action() {
    let tie = |a: &str, b: &str| {
        format!(
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: a-first}}
spec:
  tier: Admin
  priority: 7
  subject: {{namespaces: {{matchLabels: {{conformance-house: gryffindor}}}}}}
  ingress: [{{name: a-rule, action: {a}, from: [{{namespaces: {{matchLabels: {{conformance-house: slytherin}}}}}}]}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: b-second}}
spec:
  tier: Admin
  priority: 7
  subject: {{namespaces: {{matchLabels: {{conformance-house: gryffindor}}}}}}
  ingress: [{{name: b-rule, action: {b}, from: [{{namespaces: {{matchLabels: {{conformance-house: slytherin}}}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-all, namespace: network-policy-conformance-gryffindor}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
"#
        )
    };
    let cases = [
        ("Accept", "Deny", "Admin/b-second[0 b-rule]:Deny"),
        ("Deny", "Accept", "Admin/a-first[0 a-rule]:Deny"),
        // Pass beats Accept: the NetworkPolicy then decides (it denies).
        (
            "Accept",
            "Pass",
            "denied:network-policy-conformance-gryffindor/deny-all",
        ),
        ("Accept", "Accept", "Admin/a-first[0 a-rule]:Accept"),
    ];
    for (a, b, want) in cases {
        let snap = compile(&tie(a, b));
        let d = snap.authorize(&flow(&snap, DRACO0, HARRY0, Tcp, 80));
        assert_eq!(reason(&snap, &d, true), want, "{a} vs {b}");
    }
}

/// Invalid objects: each error names the object, the field and the value. An invalid
/// rule fails closed on its own (an Accept rule matches nothing, a Deny or Pass rule, or
/// an unknown action, denies all in its place); an invalid object (tier, priority,
/// subject, undecodable) denies what its subject selects, in the directions it has
/// (both when it cannot be decoded), at its tier and priority (Admin and 0 when those
/// are the problem).
#[test]
fn invalid_cluster_policies_fail_closed_with_field_errors() {
    // (spec or whole object, field, message fragment, probes that must be denied,
    //  probes that must stay allowed)
    type Probe = (&'static str, &'static str);
    type InvalidCase = (
        &'static str,
        &'static str,
        &'static str,
        &'static [Probe],
        &'static [Probe],
    );
    let cases: &[InvalidCase] = &[
        (
            "tier: Admin\n  priority: 1001\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]",
            "spec.priority",
            "priority 1001 is out of range 0-1000",
            &[(DRACO0, HARRY0)],
            &[(HARRY0, DRACO0), (HARRY0, CEDRIC0)],
        ),
        (
            "tier: Platform\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress: [{action: Accept, to: [{namespaces: {}}]}]",
            "spec.tier",
            "unknown tier \"Platform\"",
            &[(HARRY0, DRACO0)],
            &[(DRACO0, HARRY0)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Allow, from: [{namespaces: {}}]}]",
            "spec.ingress[0].action",
            "unknown action \"Allow\"",
            &[(DRACO0, HARRY0)],
            &[(DRACO0, CEDRIC0)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}, pods: {podSelector: {}}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]",
            "spec.subject",
            "not both",
            // The subject itself is invalid: every pod.
            &[(DRACO0, HARRY0), (HARRY0, CEDRIC0)],
            &[],
        ),
        (
            "tier: Baseline\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress: [{action: Deny, to: [{pods: {namespaceSelector: {}}}]}]",
            "spec.egress[0].to[0].pods.podSelector",
            "required",
            &[(HARRY0, DRACO0)],
            &[(DRACO0, HARRY0)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress: [{action: Deny, to: [{networks: [198.19.255.0/33]}]}]",
            "spec.egress[0].to[0].networks[0]",
            "invalid CIDR \"198.19.255.0/33\"",
            &[(HARRY0, INTERNET)],
            &[(CEDRIC0, INTERNET)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress: [{action: Accept, to: [{domainNames: [\"*.example.org\"]}]}]",
            "spec.egress[0].to[0].domainNames",
            "not supported",
            // An Accept rule fails closed by matching nothing (upstream): the policy
            // adds nothing, so harry's egress stays as it was.
            &[],
            &[(HARRY0, INTERNET), (CEDRIC0, INTERNET)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}]",
            "spec.ingress[0].protocols[0].tcp.destinationPort.range",
            "start port 90 must be less than end port 80",
            &[(DRACO0, HARRY0)],
            &[],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress: [{action: Accept, to: [{networks: [198.19.0.0/16]}], protocols: [{destinationNamedPort: web}]}]",
            "spec.egress[0]",
            "destinationNamedPort",
            // An invalid Accept rule matches nothing.
            &[],
            &[(HARRY0, INTERNET)],
        ),
        (
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Accept, form: [{namespaces: {}}]}]",
            "spec.ingress[0].form",
            "did you mean \"from\"",
            // Undecodable: every pod, both directions.
            &[(DRACO0, CEDRIC0), (LUNA0, INTERNET)],
            &[],
        ),
        (
            // Ingress peers have no nodes (only egress ones do).
            "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Accept, from: [{nodes: {}}]}]",
            "spec.ingress[0].from[0].nodes",
            "unknown field \"nodes\"",
            // An unknown peer: its Accept rule matches nothing (upstream), the rest of
            // the object stands.
            &[],
            &[(DRACO0, HARRY0), (DRACO0, CEDRIC0)],
        ),
    ];
    for (spec, field, fragment, denied, allowed) in cases {
        let yaml = format!(
            "{}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: broken}}\nspec:\n  {spec}\n",
            base()
        );
        let m = manifests(&yaml);
        let errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("ClusterNetworkPolicy broken")
                    && e.contains(&format!("{field}: "))
                    && e.contains(fragment)),
            "{field}: want an error naming it with {fragment:?}, got {errors:#?}"
        );
        let snap = Snapshot::compile(&m.cluster);
        assert_eq!(snap.invalid_cluster_policies().count(), 1, "{field}");
        for (from, to) in *denied {
            let d = snap.authorize(&flow(&snap, from, to, Tcp, 80));
            assert!(
                !d.allowed(),
                "{field}: {from} -> {to} must be denied: {d:?}"
            );
        }
        for (from, to) in *allowed {
            let d = snap.authorize(&flow(&snap, from, to, Tcp, 80));
            assert!(
                d.allowed(),
                "{field}: {from} -> {to} must stay allowed: {d:?}"
            );
        }
    }
}

/// Other network-policy-api kinds are errors, never silently skipped, and so is a
/// ClusterNetworkPolicy of another version.
#[test]
fn unsupported_policy_kinds_and_versions_are_errors() {
    let m = manifests(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: anp}
spec: {priority: 1, subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: newer}
spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{namespaces: {}}]}]}
"#,
    );
    let errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("AdminNetworkPolicy anp") && e.contains("is not supported")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ClusterNetworkPolicy newer")
                && e.contains(
                    "apiVersion: unsupported version \"policy.networking.k8s.io/v1beta1\""
                )),
        "{errors:#?}"
    );
    assert_eq!(m.cluster.invalid_cluster_policies().count(), 1);
}

/// One pod's change (labels that make it a subject or a peer) applied incrementally
/// equals a full compile.
#[test]
fn incremental_pod_updates_follow_subjects_and_peers() {
    let m = manifests(&format!("{}\n---\n{}", base(), policies("SAME_PRIORITY")));
    let snap = Snapshot::compile(&m.cluster);
    let mut cluster = m.cluster.clone();
    // A new gryffindor pod (a subject of two policies, a peer of none) and a slytherin
    // pod gone (a peer of three).
    let mut newcomer = netward_controller::model::Pod::new(
        "network-policy-conformance-gryffindor",
        "hermione-granger-0",
        [("conformance-house".to_owned(), "gryffindor".to_owned())].into(),
    );
    newcomer.ips = vec!["198.18.10.9".parse().unwrap()];
    newcomer.node = Some("node-2".to_owned());
    cluster.upsert_pod(newcomer.clone());
    cluster.pods.remove(&(
        "network-policy-conformance-slytherin".to_owned(),
        "draco-malfoy-1".to_owned(),
    ));
    let incremental = snap
        .with_pod(newcomer)
        .without_pod("network-policy-conformance-slytherin", "draco-malfoy-1");
    let full = Snapshot::compile(&cluster);
    let probes = [
        (
            DRACO0,
            "network-policy-conformance-gryffindor/hermione-granger-0",
        ),
        (
            "network-policy-conformance-gryffindor/hermione-granger-0",
            DRACO0,
        ),
        (
            "network-policy-conformance-gryffindor/hermione-granger-0",
            CEDRIC0,
        ),
        (
            LUNA0,
            "network-policy-conformance-gryffindor/hermione-granger-0",
        ),
        ("198.18.11.2", HARRY0),
    ];
    for (from, to) in probes {
        for port in [80, 8080] {
            let a = incremental.authorize(&flow(&incremental, from, to, Tcp, port));
            let b = full.authorize(&flow(&full, from, to, Tcp, port));
            assert_eq!(a.allowed(), b.allowed(), "{from} -> {to} {port}");
        }
    }
    // And the newcomer is a subject: slytherin cannot reach it on 80.
    let d = incremental.authorize(&flow(
        &incremental,
        DRACO0,
        "network-policy-conformance-gryffindor/hermione-granger-0",
        Tcp,
        80,
    ));
    assert!(!d.allowed());
}

/// `deploy/crds/clusternetworkpolicies.yaml` (written for netward after the upstream
/// CRD) has the shape the decoder reads: the same fields at every level, the tier and
/// action enums, the priority bounds. A field in one and not the other would be an
/// object the API server accepts and netward rejects (or the reverse).
#[test]
fn the_bundled_crd_matches_the_decoder() {
    use std::collections::BTreeSet;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/crds/clusternetworkpolicies.yaml");
    let crd: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(crd["spec"]["group"], "policy.networking.k8s.io");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha2");
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let keys = |v: &serde_yaml::Value| -> BTreeSet<String> {
        v["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let set = |xs: &[&str]| -> BTreeSet<String> { xs.iter().map(|s| (*s).to_owned()).collect() };
    assert_eq!(
        keys(spec),
        set(&["tier", "priority", "subject", "ingress", "egress"])
    );
    assert_eq!(spec["properties"]["priority"]["minimum"], 0);
    assert_eq!(spec["properties"]["priority"]["maximum"], 1000);
    assert_eq!(
        spec["properties"]["tier"]["enum"],
        serde_yaml::to_value(["Admin", "Baseline"]).unwrap()
    );
    assert_eq!(
        keys(&spec["properties"]["subject"]),
        set(&["namespaces", "pods"])
    );
    let ingress = &spec["properties"]["ingress"]["items"];
    let egress = &spec["properties"]["egress"]["items"];
    assert_eq!(keys(ingress), set(&["name", "action", "from", "protocols"]));
    assert_eq!(keys(egress), set(&["name", "action", "to", "protocols"]));
    assert_eq!(
        ingress["properties"]["action"]["enum"],
        serde_yaml::to_value(["Accept", "Deny", "Pass"]).unwrap()
    );
    assert_eq!(
        keys(&ingress["properties"]["from"]["items"]),
        set(&["namespaces", "pods"])
    );
    assert_eq!(
        keys(&egress["properties"]["to"]["items"]),
        set(&["namespaces", "pods", "nodes", "networks", "domainNames"])
    );
    let protocol = &ingress["properties"]["protocols"]["items"];
    assert_eq!(
        keys(protocol),
        set(&["tcp", "udp", "sctp", "destinationNamedPort"])
    );
    let port = &protocol["properties"]["tcp"]["properties"]["destinationPort"];
    assert_eq!(keys(port), set(&["number", "range"]));
    assert_eq!(keys(&port["properties"]["range"]), set(&["start", "end"]));
    assert_eq!(
        keys(&spec["properties"]["subject"]["properties"]["pods"]),
        set(&["namespaceSelector", "podSelector"])
    );
    // Every field the CRD has, the decoder reads without an unknown-field error: an
    // object using all of them (but domainNames) decodes cleanly and is valid.
    let m = manifests(
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: every-field}
spec:
  tier: Baseline
  priority: 1000
  subject: {pods: {namespaceSelector: {matchExpressions: [{key: a, operator: Exists}]}, podSelector: {matchLabels: {a: b}}}}
  ingress:
  - name: r
    action: Pass
    from: [{namespaces: {}}, {pods: {podSelector: {}}}]
    protocols: [{tcp: {destinationPort: {number: 1}}}, {udp: {destinationPort: {range: {start: 1, end: 2}}}}, {sctp: {destinationPort: {number: 3}}}, {destinationNamedPort: web}]
  egress:
  - action: Accept
    to: [{nodes: {matchLabels: {a: b}}}, {networks: ["198.18.0.0/15"]}]
status: {conditions: []}
"#,
    );
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.cluster.cluster_policies.len(), 1);
}

/// Runs `spec` as ClusterNetworkPolicy `broken` over the base: it must have an error
/// naming `field` with `fragment`, and each check must hold.
fn check_invalid(
    spec: &str,
    field: &str,
    fragment: &str,
    checks: &[(&str, &str, Protocol, u16, bool)],
) {
    let yaml = format!(
        "{}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: broken}}\nspec:\n  {spec}\n",
        base()
    );
    let m = manifests(&yaml);
    let errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ClusterNetworkPolicy broken")
                && e.contains(&format!("{field}: "))
                && e.contains(fragment)),
        "{field}: want an error naming it with {fragment:?}, got {errors:#?}"
    );
    let snap = Snapshot::compile(&m.cluster);
    assert_eq!(snap.invalid_cluster_policies().count(), 1, "{field}");
    for (from, to, proto, port, want) in checks {
        let d = snap.authorize(&flow(&snap, from, to, *proto, *port));
        assert_eq!(
            d.allowed(),
            *want,
            "{field}: {from} -> {to} {proto:?}/{port}: {d:?}"
        );
    }
}

/// Upstream (IngressPeer/EgressPeer): an unsupported peer fails closed per rule: an
/// Accept rule matches nothing (the peer is dropped), a Deny or Pass rule becomes "Deny
/// all" in its place; the other rules keep their meaning.
#[test]
fn unsupported_peers_fail_closed_per_rule() {
    // An allowlist: Accept DNS, Accept a domain, Deny the rest. The domain rule matches
    // nothing; DNS stays open.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {name: dns, action: Accept, to: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 53}}}]}\n  - {name: domain, action: Accept, to: [{domainNames: [\"*.example.org\"]}]}\n  - {name: rest, action: Deny, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[1].to[0].domainNames",
        "not supported",
        &[
            (HARRY0, DRACO0, Udp, 53, true),
            (HARRY0, DRACO0, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 443, false),
            (DRACO0, HARRY0, Tcp, 80, true),
        ],
    );
    // An Accept rule keeps its other peers: only the domain peer is dropped.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{domainNames: [\"*.example.org\"]}, {namespaces: {matchLabels: {conformance-house: slytherin}}}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[0].to[0].domainNames",
        "not supported",
        &[
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 80, false),
        ],
    );
    // A Deny rule becomes Deny all in its place: the Accept before it still accepts.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]}\n  - {action: Deny, to: [{domainNames: [\"*.example.org\"]}]}\n  - {action: Accept, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[1].to[0].domainNames",
        "not supported",
        &[
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 80, false),
            (CEDRIC0, INTERNET, Tcp, 80, true),
        ],
    );
    // A Pass rule too (Deny all, not Pass all), and only in its own direction.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]\n  egress: [{action: Pass, to: [{domainNames: [\"*.example.org\"]}]}]",
        "spec.egress[0].to[0].domainNames",
        "not supported",
        &[
            (HARRY0, DRACO0, Tcp, 80, false),
            (DRACO0, HARRY0, Tcp, 80, true),
        ],
    );
    // A bad CIDR in an Accept rule drops that peer only.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{networks: [198.19.255.0/33]}, {namespaces: {matchLabels: {conformance-house: slytherin}}}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[0].to[0].networks[0]",
        "invalid CIDR",
        &[
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY0, INTERNET, Tcp, 80, false),
        ],
    );
}

/// A peer of a kind netward does not know (an unknown field in a peer, e.g. a newer
/// API's peer type) fails its rule closed, not the object; an unknown field elsewhere
/// still makes the whole object deny.
#[test]
fn unknown_peer_types_fail_closed_per_rule() {
    use netward_controller::cluster_policy::peer_of;
    assert_eq!(
        peer_of("spec.egress[12].to[3].pods.x"),
        Some("spec.egress[12].to[3]")
    );
    assert_eq!(
        peer_of("spec.ingress[0].from[0].nodes"),
        Some("spec.ingress[0].from[0]")
    );
    assert_eq!(peer_of("spec.ingress[0].to[0].x"), None);
    assert_eq!(peer_of("spec.egress[0].portz"), None);
    assert_eq!(peer_of("spec.egress[].to[0].x"), None);
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{namespaces: {matchLabels: {conformance-house: slytherin}}}]}\n  - {action: Accept, to: [{services: [{name: web}]}]}\n  - {action: Deny, to: [{fqdn: x.example}, {networks: [198.19.0.0/16]}]}\n  - {action: Accept, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[2].to[0].fqdn",
        "a peer netward does not understand",
        &[
            (HARRY0, DRACO0, Tcp, 80, true),
            (HARRY0, CEDRIC0, Tcp, 80, false),
            (HARRY0, INTERNET, Tcp, 80, false),
            (DRACO0, HARRY0, Tcp, 80, true),
        ],
    );
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{services: [{name: web}]}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}",
        "spec.egress[0].to[0].services",
        "unknown field \"services\"",
        &[
            (HARRY0, DRACO0, Tcp, 80, false),
            (DRACO0, HARRY0, Tcp, 80, true),
        ],
    );
    // Not in a peer: the object's meaning is lost, every pod is denied both ways.
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Accept, to: [{networks: [0.0.0.0/0]}], portz: []}",
        "spec.egress[0].portz",
        "unknown field",
        &[
            (DRACO0, CEDRIC0, Tcp, 80, false),
            (HARRY0, DRACO0, Tcp, 80, false),
        ],
    );
}

/// Errors name the rule by its index in the spec, even after a rule with an invalid
/// action.
#[test]
fn rule_errors_name_the_spec_index() {
    check_invalid(
        "tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {conformance-house: gryffindor}}}\n  egress:\n  - {action: Allow, to: [{namespaces: {}}]}\n  - {action: Accept, to: [{networks: [198.19.0.0/16]}], protocols: [{destinationNamedPort: web}]}",
        "spec.egress[1]",
        "destinationNamedPort",
        &[(HARRY0, DRACO0, Tcp, 80, false)],
    );
}

/// The model of a policy with invalid rules: each keeps its place; an Accept rule keeps
/// only its valid peers (none: it matches nothing), a Deny or Pass rule (or an unknown
/// action) is Deny all; a valid rule is untouched.
#[test]
fn invalid_rules_keep_their_place() {
    use netward_controller::cluster_policy::ClusterPeer;
    let yaml = format!(
        "{}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: broken}}\nspec:\n  tier: Baseline\n  priority: 7\n  subject: {{namespaces: {{}}}}\n  egress:\n  - {{name: ok, action: Accept, to: [{{networks: [198.19.0.0/16]}}]}}\n  - {{name: some, action: Accept, to: [{{domainNames: [a.example]}}, {{networks: [198.20.0.0/16]}}]}}\n  - {{action: Accept, to: [{{domainNames: [b.example]}}]}}\n  - {{name: pass, action: Pass, to: [{{domainNames: [c.example]}}]}}\n  - {{action: Allow, to: [{{networks: [198.21.0.0/16]}}]}}\n",
        base()
    );
    let m = manifests(&yaml);
    assert_eq!(m.errors.len(), 4, "{:#?}", m.errors);
    let p = &m.cluster.cluster_policies["broken"];
    // The object itself is fine: its tier and priority stand.
    assert_eq!(
        (p.tier, p.priority),
        (netward_controller::Tier::Baseline, 7)
    );
    assert_eq!(p.errors.len(), 4);
    let rules = p.egress.as_deref().unwrap();
    let got: Vec<(Option<&str>, netward_controller::Action, usize, bool)> = rules
        .iter()
        .map(|r| {
            (
                r.name.as_deref(),
                r.action,
                r.peers.len(),
                r.peers.contains(&ClusterPeer::Everything),
            )
        })
        .collect();
    use netward_controller::Action::{Accept, Deny};
    assert_eq!(
        got,
        vec![
            (Some("ok"), Accept, 1, false),
            (Some("some"), Accept, 1, false),
            (None, Accept, 0, false),
            (Some("pass (invalid: denies all)"), Deny, 1, true),
            (Some("invalid-rule (invalid: denies all)"), Deny, 1, true),
        ]
    );
    assert!(p.ingress.is_none());
}
