//! Workloads (issue #15, point 3): Deployments, StatefulSets, DaemonSets, ReplicaSets,
//! Jobs and CronJobs become the Pods their controllers would create, with deterministic
//! names, so that policies select them offline as they would in a cluster.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use std::net::IpAddr;

use common::flow;
use netward_controller::model::Pod;
use netward_controller::workloads::MAX_PODS;
use netward_controller::{Manifests, Protocol, Snapshot};
use proptest::prelude::*;

fn read(yaml: &str) -> Manifests {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.yaml"), yaml).unwrap();
    Manifests::read_paths(&[dir.path()])
}

fn errors(m: &Manifests) -> String {
    m.errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pods of namespace `ns`, by name.
fn pods<'a>(m: &'a Manifests, ns: &str) -> Vec<(&'a str, &'a Pod)> {
    m.cluster
        .pods
        .iter()
        .filter(|((n, _), _)| n == ns)
        .map(|((_, name), p)| (name.as_str(), p))
        .collect()
}

fn names(m: &Manifests, ns: &str) -> Vec<String> {
    pods(m, ns).iter().map(|(n, _)| (*n).to_owned()).collect()
}

const TEMPLATE: &str = r#"
    metadata:
      labels: {app: APP}
    spec:
      containers:
        - name: c
          image: x
          ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]"#;

fn workload(api: &str, kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: w}}\nspec:\n{spec}\n"
    )
}

fn template(app: &str) -> String {
    format!("  template:{}", TEMPLATE.replace("APP", app))
}

#[test]
fn every_workload_kind_expands_as_documented() {
    let yaml = [
        workload(
            "apps/v1",
            "Deployment",
            "web",
            &format!(
                "  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web")
            ),
        ),
        workload(
            "apps/v1",
            "Deployment",
            "one",
            &format!(
                "  selector: {{matchLabels: {{app: one}}}}\n{}",
                template("one")
            ),
        ),
        workload(
            "apps/v1",
            "StatefulSet",
            "db",
            &format!(
                "  replicas: 3\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n{}",
                template("db")
            ),
        ),
        workload(
            "apps/v1",
            "ReplicaSet",
            "rs",
            &format!(
                "  replicas: 2\n  selector: {{matchExpressions: [{{key: app, operator: In, values: [rs]}}]}}\n{}",
                template("rs")
            ),
        ),
        workload(
            "batch/v1",
            "Job",
            "batch",
            &format!("  parallelism: 3\n  completions: 2\n{}", template("batch"))
                .replace("    spec:\n", "    spec:\n      restartPolicy: Never\n"),
        ),
        workload(
            "batch/v1",
            "Job",
            "single",
            &template("single").replace("    spec:\n", "    spec:\n      restartPolicy: Never\n"),
        ),
        workload(
            "batch/v1",
            "CronJob",
            "nightly",
            &format!(
                "  schedule: '0 3 * * *'\n  jobTemplate:\n    spec:\n      parallelism: 4\n{}",
                template("nightly")
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ),
        workload(
            "apps/v1",
            "DaemonSet",
            "agent",
            &format!(
                "  selector: {{matchLabels: {{app: agent}}}}\n{}",
                template("agent")
            ),
        ),
        // Nodes come after the DaemonSet: placement does not depend on document order.
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n".to_owned(),
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: lone, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\n".to_owned(),
    ]
    .concat();
    let m = read(&yaml);
    assert!(m.errors.is_empty(), "{}", errors(&m));
    assert_eq!(
        names(&m, "w"),
        [
            "agent-n1",
            "agent-n2",
            "batch-0",
            "batch-1",
            "db-0",
            "db-1",
            "db-2",
            "nightly-0",
            "one-0",
            "rs-0",
            "rs-1",
            "single-0",
            "web-0",
            "web-1",
        ]
    );
    for (name, pod) in pods(&m, "w") {
        let app = name.rsplit_once('-').unwrap().0;
        assert_eq!(
            pod.labels.get("app").map(String::as_str),
            Some(app),
            "{name}"
        );
        assert_eq!(pod.named_port("http", Protocol::Tcp), Some(8080), "{name}");
        assert_eq!(pod.named_port("dns", Protocol::Udp), Some(53), "{name}");
        assert!(pod.ips.is_empty(), "{name}");
        let kind = match app {
            "web" | "one" => "Deployment",
            "db" => "StatefulSet",
            "rs" => "ReplicaSet",
            "batch" | "single" => "Job",
            "nightly" => "CronJob",
            _ => "DaemonSet",
        };
        assert_eq!(pod.owner.as_deref(), Some(format!("{kind} {app}").as_str()));
    }
    let agent = |n: &str| {
        m.cluster.pods[&("w".into(), format!("agent-{n}"))]
            .node
            .clone()
    };
    assert_eq!(agent("n1").as_deref(), Some("n1"));
    assert_eq!(agent("n2").as_deref(), Some("n2"));
    // What was expanded, for the CLI's notes.
    let listed: Vec<String> = m
        .workloads
        .iter()
        .map(|w| {
            format!(
                "{} {}/{}: {}",
                w.kind,
                w.namespace,
                w.name,
                w.pods.join(", ")
            )
        })
        .collect();
    assert!(
        listed.contains(&"Deployment w/web: web-0, web-1".to_owned()),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 8, "{listed:?}");
    // An explicit Pod has no owner.
    assert_eq!(m.cluster.pods[&("x".into(), "lone".into())].owner, None);
}

#[test]
fn defaults_namespace_node_and_host_network() {
    let m = read(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeName: n7
      hostNetwork: true
      containers: [{name: c, image: x}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: x}]}
"#,
    );
    assert!(m.errors.is_empty(), "{}", errors(&m));
    let web = &m.cluster.pods[&("default".into(), "web-0".into())];
    assert_eq!(web.node.as_deref(), Some("n7"));
    assert!(web.host_network);
    // The only known node is the one the Deployment's template names.
    assert_eq!(names(&m, "default"), ["agent-n7", "web-0"]);
}

#[test]
fn a_daemonset_without_known_nodes_makes_one_pod() {
    let m = read(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: x}]}
"#,
    );
    assert!(m.errors.is_empty(), "{}", errors(&m));
    assert_eq!(names(&m, "kube-system"), ["agent-0"]);
    assert_eq!(
        m.cluster.pods[&("kube-system".into(), "agent-0".into())].node,
        None
    );
}

#[test]
fn a_workload_pod_named_like_an_explicit_pod_is_a_duplicate() {
    let m = read(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: w}}\nspec: {{containers: []}}\n{}",
        workload(
            "apps/v1",
            "Deployment",
            "web",
            &format!(
                "  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web")
            )
        )
    ));
    let all = errors(&m);
    assert!(
        all.contains(
            "w.yaml: document 2: Pod w/web-1 (of Deployment w/web) is defined twice (first in "
        ) && all.contains("w.yaml#1"),
        "{all}"
    );
}

#[test]
fn invalid_templates_are_errors_naming_the_workload_and_the_field() {
    let deployment = |spec: &str| {
        workload("apps/v1", "Deployment", "web", spec)
            .trim_start_matches("---\n")
            .to_owned()
    };
    let cases = [
        (
            deployment(&format!(
                "  selector: {{matchLabels: {{app: other}}}}\n{}",
                template("web")
            )),
            "Deployment w/web: spec.template.metadata.labels: `selector` does not match template `labels`",
        ),
        (
            deployment(&format!("  selector: {{}}\n{}", template("web"))),
            "Deployment w/web: spec.selector: empty selector",
        ),
        (
            deployment(&format!(
                "  replicas: -1\n  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web")
            )),
            "Deployment w/web: spec.replicas: must be greater than or equal to 0",
        ),
        (
            deployment(&format!(
                "  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web").replace("8080", "70000")
            )),
            "Deployment w/web: spec.template.spec.containers[0].ports[0].containerPort",
        ),
        (
            deployment(&format!(
                "  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web").replace("{app: web}", "{app: web, 'bad key!': x}")
            )),
            "Deployment w/web: spec.template.metadata.labels",
        ),
        (
            deployment(
                "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n",
            ),
            "Deployment w/web: spec.template.spec",
        ),
        (
            deployment("  selector: {matchLabels: {app: web}}\n"),
            "Deployment w/web: spec",
        ),
        (
            deployment(&format!(
                "  selector: {{matchExpressions: [{{key: app, operator: Maybe}}]}}\n{}",
                template("web")
            )),
            "Deployment w/web: spec.selector.matchExpressions[0].operator",
        ),
    ];
    for (yaml, needle) in cases {
        let m = read(&yaml);
        let all = errors(&m);
        assert!(
            all.contains(&format!("w.yaml: document 1: {needle}")),
            "{yaml}\n{all}"
        );
        assert!(m.cluster.pods.is_empty(), "{yaml}");
    }
}

#[test]
fn policies_select_workload_pods() {
    let yaml = [
        workload(
            "apps/v1",
            "Deployment",
            "web",
            &format!(
                "  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n{}",
                template("web")
            ),
        ),
        workload(
            "apps/v1",
            "Deployment",
            "client",
            &format!(
                "  selector: {{matchLabels: {{app: client}}}}\n{}",
                template("client")
            ),
        ),
        workload(
            "apps/v1",
            "Deployment",
            "other",
            &format!(
                "  selector: {{matchLabels: {{app: other}}}}\n{}",
                template("other")
            ),
        ),
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: w}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]\n".to_owned(),
    ]
    .concat();
    let mut m = read(&yaml);
    assert!(m.errors.is_empty(), "{}", errors(&m));
    netward_controller::addresses::assign(&mut m.cluster);
    let s = Snapshot::compile(&m.cluster);
    let allowed = |from: &str, to: &str, port: u16| {
        s.authorize(&flow(&s, from, to, Protocol::Tcp, port))
            .allowed()
    };
    assert!(allowed("w/client-0", "w/web-0", 8080));
    assert!(allowed("w/client-0", "w/web-1", 8080));
    assert!(!allowed("w/client-0", "w/web-1", 80));
    assert!(!allowed("w/other-0", "w/web-0", 8080));
    let matrix = s.matrix(Protocol::Tcp, 8080);
    assert_eq!(
        matrix.pods,
        ["w/client-0", "w/other-0", "w/web-0", "w/web-1"]
    );
}

/// The lab's address plan, as it was in `proxy/src/lab/topology.rs`: pods on node k
/// (k-th node name in sorted order, 1-based; pods without a node on the first) get
/// 198.18.k.(10+i) and fd00::k:(10+i) in name order, Services 198.19.0.(10+i) and
/// fd00::ffff:0:(10+i) by their index among all Services.
#[test]
fn addresses_are_the_labs() {
    let mut c = common::cluster(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a1, namespace: a}
spec: {nodeName: node-b, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: a2, namespace: a}
spec: {containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: a3, namespace: a}
spec: {nodeName: node-a, containers: []}
status: {podIPs: [{ip: 198.18.1.99}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a4, namespace: a}
spec: {nodeName: node-b, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: a}
spec: {nodeName: node-b, hostNetwork: true, containers: []}
---
apiVersion: v1
kind: Pod
metadata: {name: z, namespace: b}
spec: {nodeName: node-a, containers: []}
---
apiVersion: v1
kind: Service
metadata: {name: s1, namespace: a}
spec: {clusterIPs: [198.19.0.99], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: s2, namespace: a}
spec: {ports: [{port: 80}]}
"#,
    );
    let assigned = netward_controller::addresses::assign(&mut c);
    assert_eq!((assigned.pods, assigned.services), (4, 1));
    let ips = |ns: &str, name: &str| -> Vec<String> {
        c.pods[&(ns.into(), name.into())]
            .ips
            .iter()
            .map(IpAddr::to_string)
            .collect()
    };
    assert_eq!(ips("a", "a1"), ["198.18.2.10", "fd00::2:a"]);
    assert_eq!(ips("a", "a2"), ["198.18.1.10", "fd00::1:a"]);
    assert_eq!(ips("a", "a3"), ["198.18.1.99"]);
    assert_eq!(ips("a", "a4"), ["198.18.2.11", "fd00::2:b"]);
    assert!(ips("a", "host").is_empty());
    assert_eq!(ips("b", "z"), ["198.18.1.11", "fd00::1:b"]);
    assert_eq!(
        c.pods[&("a".into(), "a2".into())].node.as_deref(),
        Some("node-a")
    );
    let svc = |name: &str| -> Vec<String> {
        c.services[&("a".into(), name.into())]
            .cluster_ips
            .iter()
            .map(IpAddr::to_string)
            .collect()
    };
    assert_eq!(svc("s1"), ["198.19.0.99"]);
    assert_eq!(svc("s2"), ["198.19.0.11", "fd00::ffff:0:b"]);
    // The same plan a second time changes nothing.
    let again = netward_controller::addresses::assign(&mut c);
    assert_eq!((again.pods, again.services), (0, 0));
    // The nodes and their pod CIDRs, as the lab writes them.
    let nodes = netward_controller::addresses::node_objects(&c);
    let described: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{} {:?} {:?}",
                n.name,
                n.ips.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                n.pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            r#"node-a ["198.18.0.1", "fd00:0:0:a::1"] ["198.18.1.0/24", "fd00::1:0/112"]"#,
            r#"node-b ["198.18.0.2", "fd00:0:0:a::2"] ["198.18.2.0/24", "fd00::2:0/112"]"#,
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any counts, negative or huge, are errors or at most MAX_PODS pods, never a panic.
    #[test]
    fn any_counts_are_bounded(replicas in any::<i32>(), parallelism in any::<i32>(),
                              completions in any::<i32>(), start in any::<i32>()) {
        let yaml = [
            workload("apps/v1", "StatefulSet", "s", &format!(
                "  replicas: {replicas}\n  ordinals: {{start: {start}}}\n  selector: {{matchLabels: {{app: s}}}}\n{}",
                template("s"))),
            workload("batch/v1", "Job", "j", &format!(
                "  parallelism: {parallelism}\n  completions: {completions}\n{}", template("j"))),
        ].concat();
        let mut m = read(&yaml);
        for w in &m.workloads {
            prop_assert!(w.pods.len() <= MAX_PODS as usize);
        }
        netward_controller::addresses::assign(&mut m.cluster);
        let _ = Snapshot::compile(&m.cluster);
    }
}
