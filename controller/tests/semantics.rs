//! Table-driven tests: one case per NetworkPolicy semantic point, each with the
//! expected reason on both sides.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use common::{flow, side, snap};
use netward_controller::Protocol::{self, Sctp, Tcp, Udp};

/// ICMP and ICMPv6: protocols without ports, which only rules without `ports` match.
const ICMP: Protocol = Protocol::Other(1);
const ICMP6: Protocol = Protocol::Other(58);
/// GRE, for "any other protocol".
const GRE: Protocol = Protocol::Other(47);

struct Case {
    name: &'static str,
    policies: &'static str,
    /// (from, to, protocol, port, egress side, ingress side)
    checks: &'static [(
        &'static str,
        &'static str,
        Protocol,
        u16,
        &'static str,
        &'static str,
    )],
}

const CASES: &[Case] = &[
    Case {
        name: "no policy: nothing is isolated",
        policies: "",
        checks: &[
            ("a/client", "a/web", Tcp, 80, "not-isolated", "not-isolated"),
            ("b/other", "c/x", Udp, 53, "not-isolated", "not-isolated"),
        ],
    },
    Case {
        name: "isolation is per direction: an ingress policy leaves egress open",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in-only, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "denied:a/in-only",
            ),
            ("a/web", "b/other", Tcp, 80, "not-isolated", "not-isolated"),
        ],
    },
    Case {
        name: "policyTypes absent with only ingress rules: Ingress only",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/p[0]",
            ),
            ("a/db", "a/web", Tcp, 80, "not-isolated", "denied:a/p"),
            ("a/web", "c/x", Tcp, 80, "not-isolated", "not-isolated"),
        ],
    },
    Case {
        name: "policyTypes absent with egress rules: Ingress and Egress",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
"#,
        checks: &[
            ("a/web", "a/db", Tcp, 5432, "allowed:a/p[0]", "not-isolated"),
            ("a/web", "c/x", Tcp, 80, "denied:a/p", "not-isolated"),
            ("a/client", "a/web", Tcp, 80, "not-isolated", "denied:a/p"),
        ],
    },
    Case {
        name: "policyTypes absent with an empty egress list: Egress not isolated",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: []
"#,
        checks: &[
            ("a/web", "c/x", Tcp, 80, "not-isolated", "not-isolated"),
            ("c/x", "a/web", Tcp, 80, "not-isolated", "denied:a/p"),
        ],
    },
    Case {
        name: "explicit policyTypes [Egress]: ingress rules are ignored",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#,
        checks: &[
            ("c/x", "a/web", Tcp, 80, "not-isolated", "not-isolated"),
            ("a/web", "c/x", Tcp, 80, "denied:a/p", "not-isolated"),
        ],
    },
    Case {
        name: "podSelector and namespaceSelector in one peer: AND",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
          podSelector: {matchLabels: {app: client}}
"#,
        checks: &[
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/and[0]",
            ),
            ("b/other", "a/web", Tcp, 80, "not-isolated", "denied:a/and"),
            ("a/client", "a/web", Tcp, 80, "not-isolated", "denied:a/and"),
        ],
    },
    Case {
        name: "separate peers: OR",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
        - podSelector: {matchLabels: {app: client}}
"#,
        checks: &[
            (
                "b/other",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/or[0]",
            ),
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/or[0]",
            ),
            ("a/db", "a/web", Tcp, 80, "not-isolated", "denied:a/or"),
            ("c/x", "a/web", Tcp, 80, "not-isolated", "denied:a/or"),
        ],
    },
    Case {
        name: "empty podSelector in a peer: every pod of the policy's namespace, no other",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-ns, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/same-ns[0]",
            ),
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "denied:a/same-ns",
            ),
            (
                "198.19.255.1",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "denied:a/same-ns",
            ),
        ],
    },
    Case {
        name: "empty namespaceSelector: every pod in every namespace, but not external IPs",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-ns, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
"#,
        checks: &[
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/all-ns[0]",
            ),
            (
                "c/x",
                "a/db",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/all-ns[0]",
            ),
            (
                "198.19.255.1",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "denied:a/all-ns",
            ),
        ],
    },
    Case {
        name: "absent from: all peers, external IPs included; absent ports: every port and protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
"#,
        checks: &[
            (
                "198.19.255.1",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "allowed:a/open[0]",
            ),
            (
                "c/x",
                "a/web",
                Udp,
                5353,
                "not-isolated",
                "allowed:a/open[0]",
            ),
            ("c/x", "a/web", Sctp, 9, "not-isolated", "allowed:a/open[0]"),
        ],
    },
    Case {
        name: "matchExpressions: In, NotIn (a missing label matches), Exists, DoesNotExist",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client, db]}]}}]
      ports: [{port: 1}]
    - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}}]
      ports: [{port: 2}]
    - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: env, operator: Exists}]}}]
      ports: [{port: 3}]
    - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}}]
      ports: [{port: 4}]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                1,
                "not-isolated",
                "allowed:a/in[0]",
            ),
            ("b/other", "a/web", Tcp, 1, "not-isolated", "denied:a/in"),
            (
                "a/client",
                "a/web",
                Tcp,
                2,
                "not-isolated",
                "allowed:a/in[1]",
            ),
            ("b/other", "a/web", Tcp, 2, "not-isolated", "denied:a/in"),
            (
                "b/other",
                "a/web",
                Tcp,
                3,
                "not-isolated",
                "allowed:a/in[2]",
            ),
            ("a/client", "a/web", Tcp, 3, "not-isolated", "denied:a/in"),
            ("c/x", "a/web", Tcp, 4, "not-isolated", "allowed:a/in[3]"),
            ("a/client", "a/web", Tcp, 4, "not-isolated", "denied:a/in"),
        ],
    },
    Case {
        name: "namespaces always carry kubernetes.io/metadata.name",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-c, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: c}}}]}]
"#,
        checks: &[
            (
                "c/x",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/from-c[0]",
            ),
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "denied:a/from-c",
            ),
        ],
    },
    Case {
        name: "ipBlock with except",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 198.19.0.0/16, except: [198.19.255.254/32, 198.19.128.0/17]}}]
"#,
        checks: &[
            (
                "a/web",
                "198.19.1.1",
                Tcp,
                80,
                "allowed:a/cidr[0]",
                "not-pod",
            ),
            (
                "a/web",
                "198.19.255.254",
                Tcp,
                80,
                "denied:a/cidr",
                "not-pod",
            ),
            ("a/web", "198.19.200.1", Tcp, 80, "denied:a/cidr", "not-pod"),
            ("a/web", "198.18.9.9", Tcp, 80, "denied:a/cidr", "not-pod"),
        ],
    },
    Case {
        name: "ipBlock matches pod IPs too (Calico semantics)",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 198.18.2.0/24, except: [198.18.2.2/32]}}]}]
"#,
        checks: &[
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/cidr[0]",
            ),
            ("b/other", "a/web", Tcp, 80, "not-isolated", "denied:a/cidr"),
        ],
    },
    Case {
        name: "numeric port and protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: port, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}, {protocol: UDP, port: 53}]}]
"#,
        checks: &[
            ("c/x", "a/web", Tcp, 80, "not-isolated", "allowed:a/port[0]"),
            ("c/x", "a/web", Tcp, 81, "not-isolated", "denied:a/port"),
            ("c/x", "a/web", Udp, 80, "not-isolated", "denied:a/port"),
            ("c/x", "a/web", Udp, 53, "not-isolated", "allowed:a/port[0]"),
            ("c/x", "a/web", Tcp, 53, "not-isolated", "denied:a/port"),
        ],
    },
    Case {
        name: "named ports in ingress resolve against the destination pod, per protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: a}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]
"#,
        checks: &[
            (
                "c/x",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/named[0]",
            ),
            ("c/x", "a/web", Tcp, 8080, "not-isolated", "denied:a/named"),
            (
                "c/x",
                "a/db",
                Tcp,
                8080,
                "not-isolated",
                "allowed:a/named[0]",
            ),
            ("c/x", "a/db", Tcp, 80, "not-isolated", "denied:a/named"),
            (
                "c/x",
                "a/web",
                Udp,
                53,
                "not-isolated",
                "allowed:a/named[0]",
            ),
            ("c/x", "a/web", Tcp, 53, "not-isolated", "denied:a/named"),
            ("c/x", "a/client", Tcp, 80, "not-isolated", "denied:a/named"),
        ],
    },
    Case {
        name: "named ports in egress resolve against the destination pod, never for non-pods",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-out, namespace: b}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
"#,
        checks: &[
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "allowed:b/named-out[0]",
                "not-isolated",
            ),
            (
                "b/client",
                "a/db",
                Tcp,
                8080,
                "allowed:b/named-out[0]",
                "not-isolated",
            ),
            (
                "b/client",
                "a/db",
                Tcp,
                80,
                "denied:b/named-out",
                "not-isolated",
            ),
            (
                "b/client",
                "198.19.255.1",
                Tcp,
                80,
                "denied:b/named-out",
                "not-pod",
            ),
        ],
    },
    Case {
        name: "endPort ranges are inclusive",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{protocol: TCP, port: 8000, endPort: 8100}]}]
"#,
        checks: &[
            (
                "c/x",
                "a/web",
                Tcp,
                8000,
                "not-isolated",
                "allowed:a/range[0]",
            ),
            (
                "c/x",
                "a/web",
                Tcp,
                8050,
                "not-isolated",
                "allowed:a/range[0]",
            ),
            (
                "c/x",
                "a/web",
                Tcp,
                8100,
                "not-isolated",
                "allowed:a/range[0]",
            ),
            ("c/x", "a/web", Tcp, 7999, "not-isolated", "denied:a/range"),
            ("c/x", "a/web", Tcp, 8101, "not-isolated", "denied:a/range"),
            ("c/x", "a/web", Udp, 8050, "not-isolated", "denied:a/range"),
        ],
    },
    Case {
        name: "SCTP is its own protocol",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{protocol: SCTP, port: 9999}]}]
"#,
        checks: &[
            (
                "c/x",
                "a/web",
                Sctp,
                9999,
                "not-isolated",
                "allowed:a/sctp[0]",
            ),
            ("c/x", "a/web", Tcp, 9999, "not-isolated", "denied:a/sctp"),
            ("c/x", "a/web", Udp, 9999, "not-isolated", "denied:a/sctp"),
        ],
    },
    Case {
        name: "policies add up; the first allowing policy (by namespace/name) and rule is named",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2, namespace: a}
spec:
  podSelector: {matchLabels: {tier: front}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: nothing}}}]
    - from: [{podSelector: {matchLabels: {app: client}}}]
"#,
        checks: &[
            ("a/db", "a/web", Tcp, 80, "not-isolated", "allowed:a/p1[0]"),
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/p2[1]",
            ),
            ("c/x", "a/web", Tcp, 80, "not-isolated", "denied:a/p1,a/p2"),
        ],
    },
    Case {
        name: "both sides must allow",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: b}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}, namespaceSelector: {}}]}]
"#,
        checks: &[
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "denied:b/client-out",
                "allowed:a/web-in[0]",
            ),
            (
                "b/client",
                "a/db",
                Tcp,
                80,
                "allowed:b/client-out[0]",
                "not-isolated",
            ),
            (
                "198.19.255.1",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "denied:a/web-in",
            ),
        ],
    },
    Case {
        name: "default deny: podSelector {} with both types and no rules",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "denied:a/default-deny",
                "denied:a/default-deny",
            ),
            (
                "a/web",
                "c/x",
                Udp,
                53,
                "denied:a/default-deny",
                "not-isolated",
            ),
            (
                "c/x",
                "a/db",
                Tcp,
                80,
                "not-isolated",
                "denied:a/default-deny",
            ),
        ],
    },
    Case {
        name: "a policy in another namespace selects nothing here",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
        checks: &[
            ("c/x", "a/web", Tcp, 80, "not-isolated", "not-isolated"),
            ("c/x", "b/other", Tcp, 80, "not-isolated", "denied:b/deny"),
        ],
    },
    Case {
        name: "a pod may always reach itself",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
        checks: &[
            (
                "a/web",
                "a/web",
                Tcp,
                80,
                "exempt:self-traffic",
                "exempt:self-traffic",
            ),
            (
                "198.18.1.1",
                "198.18.1.1",
                Tcp,
                80,
                "exempt:self-traffic",
                "exempt:self-traffic",
            ),
        ],
    },
    Case {
        name: "traffic from the pod's own node is allowed; from another node it is not",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
        checks: &[
            (
                "198.18.0.1",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "exempt:from-own-node",
            ),
            (
                "198.18.0.2",
                "a/web",
                Tcp,
                80,
                "not-pod",
                "denied:a/default-deny",
            ),
        ],
    },
    Case {
        name: "host-network pods are the node: never selected, never matched by podSelector",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: c}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}]}]
"#,
        checks: &[
            ("c/hostnet", "a/web", Tcp, 80, "not-pod", "denied:a/clients"),
            (
                "b/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/clients[0]",
            ),
        ],
    },
    Case {
        name: "terminated pods are not endpoints: their IP is just an IP",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#,
        checks: &[(
            "198.18.1.9",
            "a/web",
            Tcp,
            80,
            "not-pod",
            "denied:a/clients",
        )],
    },
    Case {
        name: "audit mode: evaluated, logged, not enforced, and never opens what an enforcing policy closes",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: staged-deny, namespace: a, annotations: {netward.io/mode: audit}}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: enforced, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
        checks: &[
            (
                "c/x",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "audit-denied:a/staged-deny",
            ),
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/staged-deny[0]",
            ),
            (
                "a/client",
                "a/db",
                Tcp,
                80,
                "not-isolated",
                "denied:a/enforced",
            ),
            (
                "a/web",
                "a/db",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/enforced[0]",
            ),
        ],
    },
    Case {
        name: "other protocols (ICMP, GRE): not isolated, allowed",
        policies: "",
        checks: &[
            ("a/client", "a/web", ICMP, 0, "not-isolated", "not-isolated"),
            ("b/other", "c/x", GRE, 0, "not-isolated", "not-isolated"),
            ("198.19.0.1", "a/web", ICMP6, 0, "not-pod", "not-isolated"),
        ],
    },
    Case {
        name: "other protocols: a rule without ports allows them from its peers",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                ICMP,
                0,
                "not-isolated",
                "allowed:a/from-clients[0]",
            ),
            (
                "a/client",
                "a/web",
                GRE,
                0,
                "not-isolated",
                "allowed:a/from-clients[0]",
            ),
            // Not a peer of the rule: denied, as TCP would be.
            (
                "a/db",
                "a/web",
                ICMP,
                0,
                "not-isolated",
                "denied:a/from-clients",
            ),
            (
                "a/db",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "denied:a/from-clients",
            ),
        ],
    },
    Case {
        name: "other protocols: rules with ports never match them, so an isolated pod denies them",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-only, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {}}]
      ports: [{port: 80}, {protocol: UDP}, {protocol: SCTP}, {port: http}]
  egress:
    - ports: [{protocol: TCP}, {protocol: UDP, port: 53}]
"#,
        checks: &[
            (
                "a/client",
                "a/web",
                Tcp,
                80,
                "not-isolated",
                "allowed:a/http-only[0]",
            ),
            (
                "a/client",
                "a/web",
                ICMP,
                0,
                "not-isolated",
                "denied:a/http-only",
            ),
            // Whatever port the caller passes, a protocol without ports matches no port.
            (
                "a/client",
                "a/web",
                ICMP,
                80,
                "not-isolated",
                "denied:a/http-only",
            ),
            (
                "a/client",
                "a/web",
                ICMP6,
                0,
                "not-isolated",
                "denied:a/http-only",
            ),
            (
                "a/web",
                "b/other",
                ICMP,
                0,
                "denied:a/http-only",
                "not-isolated",
            ),
            (
                "a/web",
                "b/other",
                Tcp,
                443,
                "allowed:a/http-only[0]",
                "not-isolated",
            ),
            // Exemptions still apply: the pod itself, and its own node.
            (
                "a/web",
                "a/web",
                ICMP,
                0,
                "exempt:self-traffic",
                "exempt:self-traffic",
            ),
            (
                "198.18.0.1",
                "a/web",
                ICMP,
                0,
                "not-pod",
                "exempt:from-own-node",
            ),
            (
                "198.18.0.2",
                "a/web",
                ICMP,
                0,
                "not-pod",
                "denied:a/http-only",
            ),
        ],
    },
    Case {
        name: "other protocols: a default deny denies them; allow-all allows them",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: c}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{}]
  egress: [{}]
"#,
        checks: &[
            (
                "b/client",
                "b/other",
                ICMP,
                0,
                "denied:b/deny-all",
                "denied:b/deny-all",
            ),
            (
                "c/x",
                "a/web",
                ICMP,
                0,
                "allowed:c/allow-all[0]",
                "not-isolated",
            ),
            (
                "a/web",
                "c/x",
                GRE,
                0,
                "not-isolated",
                "allowed:c/allow-all[0]",
            ),
        ],
    },
];

#[test]
fn semantics_table() {
    let mut failures = Vec::new();
    for case in CASES {
        let s = snap(case.policies);
        for (from, to, proto, port, eg, ing) in case.checks {
            let f = flow(&s, from, to, *proto, *port);
            let d = s.authorize(&f);
            let got = (side(&s, &d.egress), side(&s, &d.ingress));
            if got.0 != *eg || got.1 != *ing {
                failures.push(format!(
                    "[{}] {from} -> {to} {proto}/{port}: want egress={eg} ingress={ing}, got egress={} ingress={}",
                    case.name, got.0, got.1
                ));
            }
            // The verdict is the AND of both sides.
            let both = !eg.starts_with("denied") && !ing.starts_with("denied");
            if d.allowed() != both {
                failures.push(format!(
                    "[{}] {from} -> {to}: allowed() != AND of sides",
                    case.name
                ));
            }
            // explain returns the very same decision.
            if s.explain(&f).decision != d {
                failures.push(format!(
                    "[{}] {from} -> {to}: explain disagrees with authorize",
                    case.name
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

#[test]
fn audit_mode_from_namespace_label() {
    let s = common::snap(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: staged, labels: {netward.io/mode: audit}}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: staged}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.4.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: staged}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
    );
    let d = s.authorize(&flow(&s, "c/x", "staged/p", Tcp, 80));
    assert_eq!(side(&s, &d.ingress), "audit-denied:staged/deny");
    assert!(d.allowed());
    assert_eq!(d.verdict(), netward_controller::Verdict::AuditAllow);
}

#[test]
fn explain_traces_every_rule_with_the_same_predicates() {
    let s = snap(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 443}]
    - from: [{podSelector: {matchLabels: {app: db}}}]
      ports: [{port: 80}]
"#,
    );
    let e = s.explain(&flow(&s, "a/client", "a/web", Tcp, 80));
    assert!(!e.decision.allowed());
    assert_eq!(e.ingress.len(), 1);
    let r = &e.ingress[0].rules;
    assert_eq!((r[0].peer_matches, r[0].port_matches), (true, false));
    assert_eq!((r[1].peer_matches, r[1].port_matches), (false, true));
    let text = netward_controller::render::explain_text(
        &s,
        "a/client",
        "a/web",
        &flow(&s, "a/client", "a/web", Tcp, 80),
        &e,
    );
    assert!(text.contains("DENIED"), "{text}");
    assert!(
        text.contains("ingress[0]") && text.contains("TCP/80 is not in TCP/443"),
        "{text}"
    );
}

#[test]
fn ipv6_endpoints_and_blocks() {
    let s = snap(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: "fd00:1::/32", except: ["fd00:1:0:1::/64"]}}]}]
"#,
    );
    let d = s.authorize(&flow(&s, "fd00:1::5", "fd00::1:1", Tcp, 80));
    assert_eq!(side(&s, &d.ingress), "allowed:a/v6[0]");
    let d = s.authorize(&flow(&s, "fd00:1:0:1::5", "fd00::1:1", Tcp, 80));
    assert_eq!(side(&s, &d.ingress), "denied:a/v6");
}

/// Who owns an address, after applying pod changes to a snapshot in order; and the
/// same from a full compile of the final pods.
fn owners_after(
    steps: &[(&netward_controller::model::Pod, bool)],
    ip: std::net::IpAddr,
) -> (Option<String>, Option<String>) {
    let mut s = netward_controller::Snapshot::default();
    let mut c = netward_controller::Cluster::default();
    for (pod, present) in steps {
        if *present {
            s = s.with_pod((*pod).clone());
            c.upsert_pod((*pod).clone());
        } else {
            s = s.without_pod(&pod.namespace, &pod.name);
            c.pods.remove(&(pod.namespace.clone(), pod.name.clone()));
        }
    }
    let full = netward_controller::Snapshot::compile(&c);
    let owner =
        |s: &netward_controller::Snapshot| s.endpoint_for_ip(ip).pod.map(|id| s.pod(id).key());
    (owner(&s), owner(&full))
}

#[test]
fn a_reused_address_belongs_to_the_same_pod_whatever_the_event_order() {
    use netward_controller::model::Pod;
    let ip: std::net::IpAddr = "198.18.1.50".parse().unwrap();
    let pod = |ns: &str, name: &str, created: Option<i64>, terminated: bool| {
        let mut p = Pod::new(ns, name, Default::default());
        p.ips = vec![ip];
        p.created = created;
        p.terminated = terminated;
        p
    };
    // X held the address; Y, created later, got it after X went away.
    let x = pod("b", "x", Some(100), false);
    let y = pod("a", "y", Some(200), false);
    let y_only = (Some("a/y".to_owned()), Some("a/y".to_owned()));
    // "delete X after add Y" and "add Y after delete X".
    assert_eq!(
        owners_after(&[(&x, true), (&y, true), (&x, false)], ip),
        y_only
    );
    assert_eq!(
        owners_after(&[(&y, true), (&x, true), (&x, false)], ip),
        y_only
    );
    assert_eq!(
        owners_after(&[(&x, true), (&x, false), (&y, true)], ip),
        y_only
    );
    // Both still listed (X's deletion not seen yet), in either order: the newer pod.
    assert_eq!(owners_after(&[(&x, true), (&y, true)], ip), y_only);
    assert_eq!(owners_after(&[(&y, true), (&x, true)], ip), y_only);
    // Y goes while X is still listed: X takes the address back.
    let x_only = (Some("b/x".to_owned()), Some("b/x".to_owned()));
    assert_eq!(
        owners_after(&[(&x, true), (&y, true), (&y, false)], ip),
        x_only
    );
    // A terminated pod never owns it, however new.
    let done = pod("a", "done", Some(300), true);
    assert_eq!(owners_after(&[(&done, true), (&x, true)], ip), x_only);
    assert_eq!(owners_after(&[(&x, true), (&done, true)], ip), x_only);
    // The address moves from X to Y by an update of Y; then X's update drops it.
    let mut y_elsewhere = y.clone();
    y_elsewhere.ips = vec!["198.18.1.51".parse().unwrap()];
    assert_eq!(
        owners_after(&[(&x, true), (&y_elsewhere, true), (&y, true)], ip),
        y_only
    );
    let mut x_moved = x.clone();
    x_moved.ips = vec!["198.18.1.52".parse().unwrap()];
    assert_eq!(
        owners_after(&[(&y, true), (&x, true), (&x_moved, true)], ip),
        y_only
    );
    // Without creation times (manifests), the first by namespace/name.
    let (p, q) = (pod("b", "p", None, false), pod("a", "q", None, false));
    let q_only = (Some("a/q".to_owned()), Some("a/q".to_owned()));
    assert_eq!(owners_after(&[(&p, true), (&q, true)], ip), q_only);
    assert_eq!(owners_after(&[(&q, true), (&p, true)], ip), q_only);
    // Nobody left: nobody owns it.
    assert_eq!(
        owners_after(&[(&x, true), (&y, true), (&y, false), (&x, false)], ip),
        (None, None)
    );
}

#[test]
fn protocols_without_ports_have_stable_names_and_explain_says_why() {
    use netward_controller::render::explain_text;
    assert_eq!(Protocol::from_ip_number(6), Tcp);
    assert_eq!(Protocol::from_ip_number(17), Udp);
    assert_eq!(Protocol::from_ip_number(132), Sctp);
    assert_eq!(Protocol::from_ip_number(1), ICMP);
    for n in 0..=255u8 {
        let p = Protocol::from_ip_number(n);
        assert_eq!(p.ip_number(), n);
        // The name parses back (the CLI's --protocol), whatever its case.
        assert_eq!(Protocol::parse(p.as_str()), Some(p), "{p}");
        assert_eq!(Protocol::parse(&p.as_str().to_lowercase()), Some(p), "{p}");
    }
    assert_eq!(ICMP.as_str(), "ICMP");
    assert_eq!(ICMP6.as_str(), "ICMPv6");
    assert_eq!(GRE.to_string(), "GRE");
    assert_eq!(Protocol::Other(253).as_str(), "IP-253");
    assert_eq!(Protocol::Other(0).as_str(), "IP-0");
    assert_eq!(serde_json::to_value(ICMP6).unwrap(), "ICMPv6");
    assert_eq!(serde_json::to_value(Tcp).unwrap(), "TCP");
    for bad in ["", "IP-", "IP-256", "IP-1x", "IP-0001", "ICMP4"] {
        assert_eq!(Protocol::parse(bad), None, "{bad:?}");
    }
    // An Other that holds a named protocol's number is that protocol.
    assert_eq!(Protocol::Other(6).as_str(), "TCP");
    assert!(!ICMP.has_ports() && Tcp.has_ports() && Protocol::Other(17).has_ports());

    let s = snap(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-only, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}, {from: [{podSelector: {matchLabels: {app: db}}}]}]
"#,
    );
    let f = flow(&s, "a/client", "a/web", ICMP, 0);
    let text = explain_text(&s, "a/client", "a/web", &f, &s.explain(&f));
    assert!(text.starts_with("a/client -> a/web ICMP: DENIED"), "{text}");
    assert!(
        text.contains(
            "ingress[0] from anywhere on TCP/80: no match: a rule with ports never matches ICMP"
        ),
        "{text}"
    );
    // The same pair on TCP/80, and ICMP from the portless rule's peer, are allowed.
    assert!(
        s.authorize(&flow(&s, "a/client", "a/web", Tcp, 80))
            .allowed()
    );
    assert!(s.authorize(&flow(&s, "a/db", "a/web", ICMP, 0)).allowed());
    // A non-canonical Other(6) is TCP: the TCP rule matches it.
    assert!(
        s.authorize(&flow(&s, "a/client", "a/web", Protocol::Other(6), 80))
            .allowed()
    );
}
