//! The manifest loader: formats it reads, errors that name the file, object and
//! field, fail-closed handling of invalid policies, and fuzzing for panics.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use std::path::Path;

use common::{flow, manifests};
use netward_controller::{Manifests, Protocol, Snapshot};
use proptest::prelude::*;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.1.2}
"#;

fn policy_with(rule: &str) -> String {
    format!(
        r#"{POD}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: bad, namespace: a}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
{rule}
"#
    )
}

/// Each bad input: the YAML fragment, and what the error must mention.
const BAD: &[(&str, &[&str])] = &[
    (
        "  ingress: [{from: [{ipBlock: {cidr: 10.0.0/8}}]}]",
        &[
            "spec.ingress[0].from[0].ipBlock.cidr",
            "invalid CIDR",
            "10.0.0/8",
        ],
    ),
    (
        "  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.19.0.0/24]}}]}]",
        &[
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "not strictly inside",
        ],
    ),
    (
        "  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}}]}]",
        &[
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            "unknown selector operator",
            "Equals",
        ],
    ),
    (
        "  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]",
        &["matchExpressions[0].values", "needs at least one value"],
    ),
    (
        "  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}}]}]",
        &["matchExpressions[0].values", "takes no values"],
    ),
    (
        "  ingress: [{ports: [{endPort: 90}]}]",
        &["spec.ingress[0].ports[0].endPort", "needs a numeric port"],
    ),
    (
        "  ingress: [{ports: [{port: 90, endPort: 80}]}]",
        &["spec.ingress[0].ports[0].endPort", "below port 90"],
    ),
    (
        "  ingress: [{ports: [{port: http, endPort: 80}]}]",
        &["spec.ingress[0].ports[0].endPort", "named port"],
    ),
    (
        "  ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
        &[
            "spec.ingress[0].ports[0].protocol",
            "unknown protocol",
            "ICMP",
        ],
    ),
    (
        "  ingress: [{ports: [{port: 70000}]}]",
        &["spec.ingress[0].ports[0].port", "70000", "out of range"],
    ),
    (
        "  ingress: [{ports: [{port: Not_A_Name}]}]",
        &["spec.ingress[0].ports[0].port", "invalid port name"],
    ),
    (
        "  egress: [{to: [{ipBlock: {cidr: 198.18.0.0/16}, podSelector: {}}]}]",
        &["spec.egress[0].to[0]", "cannot be combined"],
    ),
    (
        "  egress: [{to: [{}]}]",
        &["spec.egress[0].to[0]", "needs podSelector"],
    ),
    (
        "  policyTypes: [Ingres]",
        &["spec.policyTypes[0]", "unknown policy type", "Ingres"],
    ),
    (
        "  ingress: [{ports: [{port: [80]}]}]",
        &["spec.ingress[0].ports[0].port"],
    ),
    ("  ingress: {from: []}", &["spec.ingress"]),
];

#[test]
fn every_bad_input_is_named_and_fails_closed() {
    for (rule, needles) in BAD {
        let m = manifests(&policy_with(rule));
        assert!(!m.errors.is_empty(), "{rule}: no error");
        let text: Vec<String> = m.errors.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        assert!(
            all.contains("test.yaml: document 3: NetworkPolicy a/bad"),
            "{rule}: error does not name file and object: {all}"
        );
        for n in *needles {
            assert!(
                all.contains(n),
                "{rule}: error does not mention {n:?}: {all}"
            );
        }
        // The invalid policy still isolates web, and allows nothing: client -> web denied,
        // where a valid version of most of these rules would have allowed it.
        let s = Snapshot::compile(&m.cluster);
        let d = s.authorize(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80));
        assert!(
            !d.allowed(),
            "{rule}: an invalid policy opened traffic: {d:?}"
        );
        assert_eq!(s.invalid_policies().count(), 1, "{rule}");
        // Unselected pods are untouched.
        let d = s.authorize(&flow(&s, "a/web", "a/client", Protocol::Tcp, 80));
        // Undecodable objects (ill-typed fields) isolate both directions: fail closed.
        let undecodable = rule.contains("[80]") || rule.contains("{from: []}");
        let egress_isolated =
            rule.contains("egress") || rule.contains("policyTypes") || undecodable;
        assert_eq!(d.allowed(), !egress_isolated, "{rule}: {d:?}");
    }
}

#[test]
fn an_invalid_pod_selector_isolates_the_whole_namespace() {
    let yaml = format!(
        r#"{POD}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: bad, namespace: a}}
spec:
  podSelector: {{matchExpressions: [{{key: app, operator: Sometimes}}]}}
  policyTypes: [Ingress]
  ingress: [{{}}]
"#
    );
    let m = manifests(&yaml);
    assert!(
        m.errors[0]
            .to_string()
            .contains("spec.podSelector.matchExpressions[0].operator"),
        "{}",
        m.errors[0]
    );
    let s = Snapshot::compile(&m.cluster);
    assert!(
        !s.authorize(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80))
            .allowed()
    );
    assert!(
        !s.authorize(&flow(&s, "a/web", "a/client", Protocol::Tcp, 80))
            .allowed()
    );
}

#[test]
fn an_undecodable_policy_still_isolates() {
    let yaml = format!(
        r#"{POD}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: garbled, namespace: a}}
spec: [this, is, not, a, spec]
"#
    );
    let m = manifests(&yaml);
    let e = m.errors[0].to_string();
    assert!(
        e.contains("NetworkPolicy a/garbled") && e.contains("spec"),
        "{e}"
    );
    let s = Snapshot::compile(&m.cluster);
    assert!(
        !s.authorize(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80))
            .allowed()
    );
}

#[test]
fn other_objects_are_validated_too() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 198.18.999.1}\nspec: {containers: []}\n",
            "status.podIP",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {'bad key!': x}}\nspec: {containers: []}\n",
            "metadata.labels",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n",
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, protocol: TCPP}]}\n",
            "spec.ports[0].protocol",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDRs: [198.18.1.0/24, 198.18.2.0]}\n",
            "spec.podCIDRs[1]: invalid CIDR \"198.18.2.0\"",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: fd00::/300}\n",
            "spec.podCIDR: invalid CIDR \"fd00::/300\"",
        ),
        ("kind: Pod\nmetadata: {name: p}\n", "apiVersion"),
        ("apiVersion: v1\nmetadata: {name: p}\n", "kind"),
    ];
    for (yaml, field) in cases {
        let m = manifests(yaml);
        assert!(!m.errors.is_empty(), "{yaml}: no error");
        let e = m.errors[0].to_string();
        assert!(
            e.starts_with("test.yaml: document 1:") && e.contains(field),
            "{yaml}: {e}"
        );
    }
}

#[test]
fn node_pod_cidrs_reach_the_snapshot() {
    let s = Snapshot::compile(&common::cluster(
        r#"
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDRs: [198.18.2.7/24, "fd00::2:0/112"]}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 198.18.1.0/24}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
spec: {podCIDR: 198.18.3.0/24, podCIDRs: [198.18.3.0/24]}
---
apiVersion: v1
kind: Node
metadata: {name: node-d}
status: {addresses: [{type: InternalIP, address: 198.18.0.4}]}
"#,
    ));
    let nets = |v: &[&str]| -> Vec<ipnet::IpNet> { v.iter().map(|n| n.parse().unwrap()).collect() };
    // podCIDRs, host bits cleared; podCIDR alone on old API servers; no repeats.
    assert_eq!(
        s.pod_cidrs(Some("node-b")),
        nets(&["198.18.2.0/24", "fd00::2:0/112"])
    );
    assert_eq!(s.pod_cidrs(Some("node-a")), nets(&["198.18.1.0/24"]));
    assert_eq!(s.pod_cidrs(Some("node-c")), nets(&["198.18.3.0/24"]));
    assert_eq!(s.pod_cidrs(Some("node-d")), nets(&[]));
    assert_eq!(s.pod_cidrs(Some("nowhere")), nets(&[]));
    assert_eq!(
        s.pod_cidrs(None),
        nets(&[
            "198.18.1.0/24",
            "198.18.2.0/24",
            "fd00::2:0/112",
            "198.18.3.0/24"
        ])
    );
    // Pod updates are incremental and keep the nodes' ranges.
    let mut pod = netward_controller::model::Pod::new("a", "p", Default::default());
    pod.ips = vec!["198.18.2.9".parse().unwrap()];
    let s2 = s.with_pod(pod).without_pod("a", "p");
    assert_eq!(s2.pod_cidrs(None), s.pod_cidrs(None));
}

#[test]
fn formats_lists_directories_json_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x, labels: {k: v}}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: x}\n  spec: {containers: [{name: c, image: i}]}\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/b.json"),
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"np","namespace":"x"},"spec":{"podSelector":{}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.yml"),
        "---\n# empty\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not read").unwrap();
    let m = Manifests::read_paths(&[dir.path()]);
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.cluster.pods.len(), 1);
    assert_eq!(m.cluster.policies.len(), 1);
    assert_eq!(
        m.cluster.namespaces["x"]
            .labels
            .get("kubernetes.io/metadata.name")
            .unwrap(),
        "x"
    );
    assert_eq!(m.ignored.len(), 1, "{:?}", m.ignored);

    // The same object twice is an error naming both places.
    let again = dir.path().join("again.yaml");
    std::fs::write(
        &again,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: []}\n",
    )
    .unwrap();
    let m = Manifests::read_paths(&[dir.path().join("a.yaml"), again]);
    assert!(
        m.errors
            .iter()
            .any(|e| e.to_string().contains("defined twice")),
        "{:#?}",
        m.errors
    );

    let m = Manifests::read_paths(&[dir.path().join("missing.yaml")]);
    assert!(
        m.errors[0]
            .to_string()
            .contains("missing.yaml: cannot read"),
        "{}",
        m.errors[0]
    );
}

#[test]
fn a_policy_without_api_version_still_isolates() {
    let m = manifests(&format!(
        "{POD}---\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: a}}\nspec: {{podSelector: {{}}, ingress: [{{}}]}}\n"
    ));
    assert!(
        m.errors[0]
            .to_string()
            .contains("NetworkPolicy a/np: apiVersion: missing apiVersion"),
        "{}",
        m.errors[0]
    );
    let s = Snapshot::compile(&m.cluster);
    assert!(
        !s.authorize(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80))
            .allowed()
    );
}

#[test]
fn yaml_syntax_errors_name_the_document() {
    let mut m = Manifests::default();
    m.read_str(
        Path::new("x.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n",
    );
    let e = m.errors[0].to_string();
    assert!(e.starts_with("x.yaml: document 2: not valid YAML"), "{e}");
}

fn yaml_value() -> impl Strategy<Value = serde_yaml::Value> {
    let leaf = prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        "[a-zA-Z0-9./:_-]{0,12}".prop_map(serde_yaml::Value::String),
        prop::sample::select(vec![
            "TCP",
            "UDP",
            "In",
            "NotIn",
            "Exists",
            "198.18.0.0/16",
            "0.0.0.0/0",
            "::/0",
            "http",
            "Ingress",
            "Egress"
        ])
        .prop_map(|s| serde_yaml::Value::String(s.to_owned())),
    ];
    let keys = prop::sample::select(vec![
        "podSelector",
        "namespaceSelector",
        "ipBlock",
        "cidr",
        "except",
        "ports",
        "port",
        "endPort",
        "protocol",
        "from",
        "to",
        "ingress",
        "egress",
        "policyTypes",
        "matchLabels",
        "matchExpressions",
        "key",
        "operator",
        "values",
        "name",
        "namespace",
        "labels",
        "podIP",
        "podIPs",
        "ip",
        "containers",
        "containerPort",
    ]);
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
            prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|kv| {
                serde_yaml::Value::Mapping(
                    kv.into_iter()
                        .map(|(k, v)| (serde_yaml::Value::String(k.to_owned()), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text never panics the loader.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let mut m = Manifests::default();
        m.read_str(Path::new("fuzz.yaml"), &text);
        let _ = Snapshot::compile(&m.cluster);
    }

    /// Objects of every kind with random, often ill-typed, fields never panic the loader
    /// or the compiler, and any error names the file.
    #[test]
    fn random_objects_never_panic(kind in prop::sample::select(vec!["NetworkPolicy", "Pod", "Namespace", "Service", "Node", "List", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]),
                                  spec in yaml_value(), metadata in yaml_value(), status in yaml_value()) {
        let mut obj = serde_yaml::Mapping::new();
        let api = match kind {
            "NetworkPolicy" => "networking.k8s.io/v1",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        obj.insert("apiVersion".into(), api.into());
        obj.insert("kind".into(), kind.into());
        obj.insert("metadata".into(), metadata);
        obj.insert("spec".into(), spec.clone());
        obj.insert("status".into(), status);
        obj.insert("items".into(), serde_yaml::Value::Sequence(vec![spec]));
        let text = serde_yaml::to_string(&obj).unwrap();
        let mut m = Manifests::default();
        m.read_str(Path::new("fuzz.yaml"), &text);
        m.finish();
        for e in &m.errors {
            prop_assert!(e.to_string().starts_with("fuzz.yaml"), "{}", e);
        }
        netward_controller::addresses::assign(&mut m.cluster);
        let s = Snapshot::compile(&m.cluster);
        let _ = s.matrix(Protocol::Tcp, 80);
    }

    /// Byte-level mutations of a real example never panic.
    #[test]
    fn mutated_examples_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..8)) {
        let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/three-tier/20-frontend-policy.yaml")).unwrap();
        let mut chars: Vec<char> = base.chars().collect();
        for (i, c) in edits {
            let at = i.index(chars.len());
            chars[at] = c;
        }
        let text: String = chars.into_iter().collect();
        let mut m = Manifests::default();
        m.read_str(Path::new("mut.yaml"), &text);
        let _ = Snapshot::compile(&m.cluster).matrix(Protocol::Udp, 53);
    }
}
