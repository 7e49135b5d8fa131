//! Every policy and every expected outcome in the tutorials of `shared/seeds/`,
//! and the bundled `examples/` checked against their Expectations and golden matrices.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

mod common;

use std::path::{Path, PathBuf};

use common::{flow, manifests};
use netward_controller::{Cluster, Manifests, Protocol, Snapshot};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One tutorial check: (from, to, protocol, port, allowed).
type Check = (&'static str, &'static str, Protocol, u16, bool);

fn check_all(yaml: &str, checks: &[Check]) {
    let m = manifests(yaml);
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    let s = Snapshot::compile(&m.cluster);
    for (from, to, proto, port, want) in checks {
        let d = s.authorize(&flow(&s, from, to, *proto, *port));
        assert_eq!(d.allowed(), *want, "{from} -> {to} {proto}/{port}: {d:?}");
    }
}

const PODS_001_EXERCISES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-server, namespace: netpol-exercise, labels: {app: api}}
spec: {containers: [{name: api, image: nginx:alpine, ports: [{containerPort: 80}]}]}
status: {podIP: 198.18.10.1}
---
apiVersion: v1
kind: Pod
metadata: {name: test-client, namespace: netpol-exercise, labels: {app: client}}
spec: {containers: [{name: curl, image: curlimages/curl:latest}]}
status: {podIP: 198.18.10.2}
"#;

/// Seed 001, exercise 01: allow ingress only on 8080; 80 (and the debug port 9090) denied.
#[test]
fn seed_001_exercise_01_port_only() {
    let yaml = format!(
        "{PODS_001_EXERCISES}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-api-port-only
  namespace: netpol-exercise
spec:
  podSelector:
    matchLabels:
      app: api
  policyTypes:
  - Ingress
  ingress:
  - ports:
    - protocol: TCP
      port: 8080
"#
    );
    check_all(
        &yaml,
        &[
            (
                "netpol-exercise/test-client",
                "netpol-exercise/api-server",
                Protocol::Tcp,
                8080,
                true,
            ),
            (
                "netpol-exercise/test-client",
                "netpol-exercise/api-server",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "netpol-exercise/test-client",
                "netpol-exercise/api-server",
                Protocol::Tcp,
                9090,
                false,
            ),
        ],
    );
}

/// Seed 001, exercise 02: team-b receives only from team-a.
#[test]
fn seed_001_exercise_02_between_namespaces() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: team-b, labels: {app: backend}}
spec: {containers: [{name: nginx, image: nginx:alpine, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: team-a, labels: {app: frontend}}
spec: {containers: [{name: curl, image: curlimages/curl:latest}]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: default, labels: {app: frontend}}
spec: {containers: [{name: curl, image: curlimages/curl:latest}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all-ingress
  namespace: team-b
spec:
  podSelector: {}
  policyTypes:
  - Ingress
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-team-a
  namespace: team-b
spec:
  podSelector:
    matchLabels:
      app: backend
  policyTypes:
  - Ingress
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: a
    ports:
    - protocol: TCP
      port: 80
"#;
    check_all(
        yaml,
        &[
            ("team-a/frontend", "team-b/backend", Protocol::Tcp, 80, true),
            (
                "default/stranger",
                "team-b/backend",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "team-a/frontend",
                "team-b/backend",
                Protocol::Tcp,
                443,
                false,
            ),
        ],
    );
}

/// Seed 001, exercise 03 (and section 05's DNS rule): egress only DNS (UDP/TCP 53) and HTTPS.
#[test]
fn seed_001_exercise_03_egress_dns_https() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: secure-app, namespace: egress-test, labels: {app: secure-app}}
spec: {containers: [{name: curl, image: curlimages/curl:latest}]}
status: {podIP: 198.18.11.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: restrict-egress-dns-https
  namespace: egress-test
spec:
  podSelector:
    matchLabels:
      app: secure-app
  policyTypes:
  - Egress
  egress:
  - ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  - ports:
    - protocol: TCP
      port: 443
"#;
    check_all(
        yaml,
        &[
            (
                "egress-test/secure-app",
                "198.19.0.1",
                Protocol::Tcp,
                443,
                true,
            ),
            (
                "egress-test/secure-app",
                "198.19.0.10",
                Protocol::Udp,
                53,
                true,
            ),
            (
                "egress-test/secure-app",
                "198.19.0.10",
                Protocol::Tcp,
                53,
                true,
            ),
            (
                "egress-test/secure-app",
                "198.19.0.1",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "egress-test/secure-app",
                "198.19.0.1",
                Protocol::Tcp,
                22,
                false,
            ),
            (
                "egress-test/secure-app",
                "198.19.0.1",
                Protocol::Tcp,
                5432,
                false,
            ),
        ],
    );
}

/// Seed 001 sections 05 and 06: restrict-egress (DNS to anywhere via `to: []`, and pods in
/// namespaces labelled role=backend), then default-deny-all alone.
#[test]
fn seed_001_sections_05_06() {
    let base =
        std::fs::read_to_string(examples().join("namespace-isolation/00-cluster.yaml")).unwrap();
    let restrict = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: restrict-egress
  namespace: netpol-backend
spec:
  podSelector:
    matchLabels:
      app: web
  policyTypes:
  - Egress
  egress:
  - to: []
    ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
  - to:
    - namespaceSelector:
        matchLabels:
          role: backend
"#;
    check_all(
        &format!("{base}\n---\n{restrict}"),
        &[
            ("netpol-backend/web", "198.19.0.53", Protocol::Udp, 53, true),
            (
                "netpol-backend/web",
                "netpol-frontend/client",
                Protocol::Tcp,
                53,
                true,
            ),
            (
                "netpol-backend/web",
                "netpol-frontend/client",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "netpol-backend/web",
                "198.19.0.1",
                Protocol::Tcp,
                443,
                false,
            ),
        ],
    );
    let deny_all = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: netpol-backend
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
"#;
    check_all(
        &format!("{base}\n---\n{deny_all}"),
        &[
            (
                "netpol-frontend/client",
                "netpol-backend/web",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "netpol-backend/web",
                "netpol-frontend/client",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "netpol-backend/web",
                "198.19.0.53",
                Protocol::Udp,
                53,
                false,
            ),
            (
                "netpol-frontend/client",
                "netpol-frontend/rogue",
                Protocol::Tcp,
                80,
                true,
            ),
        ],
    );
}

/// Seed 002: production namespace with deny-all, frontend -> backend-api on 8080,
/// database egress only to backend-api:5432, and the cross-namespace test-runner rule.
#[test]
fn seed_002_production() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: staging, labels: {environment: staging}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-api, namespace: production, labels: {app: backend-api}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: database, namespace: production, labels: {app: database}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment-service, namespace: production, labels: {app: payment-service}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: test-runner, namespace: staging, labels: {app: test-runner}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: staging, labels: {app: other}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-frontend-to-backend
  namespace: production
spec:
  podSelector:
    matchLabels:
      app: backend-api        # This policy targets backend-api Pods
  policyTypes:
  - Ingress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend       # Only pods labeled app=frontend can connect
    ports:
    - protocol: TCP
      port: 8080
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: database-egress
  namespace: production
spec:
  podSelector:
    matchLabels:
      app: database
  policyTypes:
  - Egress
  egress:
  - to:
    - podSelector:
        matchLabels:
          app: backend-api
    ports:
    - port: 5432
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: from-staging-test-runner
  namespace: production
spec:
  podSelector:
    matchLabels:
      app: payment-service
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          environment: staging
      podSelector:
        matchLabels:
          app: test-runner
"#;
    check_all(
        yaml,
        &[
            // "the backend-api Pods accept connections only from Pods labeled app=frontend on port 8080"
            (
                "production/frontend",
                "production/backend-api",
                Protocol::Tcp,
                8080,
                true,
            ),
            (
                "production/frontend",
                "production/backend-api",
                Protocol::Tcp,
                80,
                false,
            ),
            (
                "production/payment-service",
                "production/backend-api",
                Protocol::Tcp,
                8080,
                false,
            ),
            // "restrict the database Pods so they can only respond to the backend-api"
            (
                "production/database",
                "production/backend-api",
                Protocol::Tcp,
                5432,
                false,
            ),
            (
                "production/database",
                "production/frontend",
                Protocol::Tcp,
                5432,
                false,
            ),
            // ... the egress side itself allows backend-api:5432; ingress of backend-api does not.
            // Cross-namespace: test-runner in staging-labelled namespaces.
            (
                "staging/test-runner",
                "production/payment-service",
                Protocol::Tcp,
                443,
                true,
            ),
            (
                "staging/other",
                "production/payment-service",
                Protocol::Tcp,
                443,
                false,
            ),
            (
                "production/frontend",
                "production/payment-service",
                Protocol::Tcp,
                443,
                false,
            ),
        ],
    );
    // With allow-frontend-to-backend dropped, database -> backend-api:5432 passes both sides.
    let s = Snapshot::compile(&{
        let mut c = common::cluster(yaml);
        c.policies
            .remove(&("production".into(), "allow-frontend-to-backend".into()));
        c
    });
    assert!(
        s.authorize(&flow(
            &s,
            "production/database",
            "production/backend-api",
            Protocol::Tcp,
            5432
        ))
        .allowed()
    );
    assert!(
        !s.authorize(&flow(
            &s,
            "production/database",
            "production/backend-api",
            Protocol::Tcp,
            80
        ))
        .allowed()
    );
}

/// Seed 002 "Deny All Traffic First, Then Allow Specifically" and seed 003's
/// reminder that the client's egress must allow it too.
#[test]
fn seed_002_003_deny_all_then_allow_needs_egress_too() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: netpol-lab, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: netpol-lab, labels: {app: frontend}}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: netpol-lab}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-to-frontend, namespace: netpol-lab}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 80}]
"#;
    // "If the client's outgoing traffic is blocked by a global deny rule, the connection will fail."
    check_all(
        yaml,
        &[(
            "netpol-lab/client",
            "netpol-lab/frontend",
            Protocol::Tcp,
            80,
            false,
        )],
    );
    let with_egress = format!(
        "{yaml}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: netpol-lab}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{protocol: TCP, port: 80}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
"#
    );
    check_all(
        &with_egress,
        &[
            (
                "netpol-lab/client",
                "netpol-lab/frontend",
                Protocol::Tcp,
                80,
                true,
            ),
            (
                "netpol-lab/client",
                "netpol-lab/frontend",
                Protocol::Tcp,
                8080,
                false,
            ),
            // "ipBlock with a cidr of 0.0.0.0/0 ... allow it to go outside the cluster"
            (
                "netpol-lab/client",
                "198.19.200.1",
                Protocol::Tcp,
                443,
                true,
            ),
            (
                "netpol-lab/frontend",
                "198.19.200.1",
                Protocol::Tcp,
                443,
                false,
            ),
        ],
    );
}

/// Seed 004: role=frontend in namespace frontend reaches backend on 80; role=backend in
/// namespace backend reaches database on 3306; nothing else reaches them, they reach
/// nothing outside; and the instance metadata endpoint is blocked (the literal
/// 169.254.169.254 is only data here: no traffic is sent).
#[test]
fn seed_004_requirements_and_metadata() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: frontend}
---
apiVersion: v1
kind: Namespace
metadata: {name: backend}
---
apiVersion: v1
kind: Namespace
metadata: {name: database}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: frontend, labels: {role: frontend}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.20.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: backend, labels: {role: backend}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.20.2}
---
apiVersion: v1
kind: Pod
metadata: {name: mysql, namespace: database, labels: {role: database}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.20.3}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: default, labels: {role: frontend}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.20.4}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-frontend, namespace: backend}
spec:
  podSelector: {matchLabels: {role: backend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: frontend}}
      podSelector: {matchLabels: {role: frontend}}
    ports: [{port: 80}]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: database}}
      podSelector: {matchLabels: {role: database}}
    ports: [{port: 3306}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: database-from-backend, namespace: database}
spec:
  podSelector: {matchLabels: {role: database}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backend}}
      podSelector: {matchLabels: {role: backend}}
    ports: [{port: 3306}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress, namespace: frontend}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backend}}
      podSelector: {matchLabels: {role: backend}}
    ports: [{port: 80}]
  - to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except: [169.254.169.254/32, 198.18.0.0/15]
"#;
    check_all(
        yaml,
        &[
            ("frontend/web", "backend/api", Protocol::Tcp, 80, true),
            ("frontend/web", "backend/api", Protocol::Tcp, 8080, false),
            ("backend/api", "database/mysql", Protocol::Tcp, 3306, true),
            ("frontend/web", "database/mysql", Protocol::Tcp, 3306, false),
            ("default/intruder", "backend/api", Protocol::Tcp, 80, false),
            (
                "default/intruder",
                "database/mysql",
                Protocol::Tcp,
                3306,
                false,
            ),
            ("backend/api", "198.19.0.1", Protocol::Tcp, 443, false),
            ("database/mysql", "198.19.0.1", Protocol::Tcp, 443, false),
            ("frontend/web", "169.254.169.254", Protocol::Tcp, 80, false),
            ("frontend/web", "198.19.0.1", Protocol::Tcp, 443, false),
            ("frontend/web", "203.0.113.7", Protocol::Tcp, 443, true),
        ],
    );
}

#[derive(serde::Deserialize)]
struct Expect {
    from: String,
    to: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    allowed: bool,
    #[serde(default)]
    step: Option<String>,
    says: String,
}

/// Reads an example directory, stopping after the file named `step` (all files if None).
fn example_until(dir: &Path, step: Option<&str>) -> (Cluster, Vec<serde_yaml::Value>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut m = Manifests::default();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        if name == "expect.yaml" {
            continue;
        }
        m.read_path(&f);
        if step == Some(name.as_str()) {
            break;
        }
    }
    m.finish();
    assert!(m.errors.is_empty(), "{}: {:#?}", dir.display(), m.errors);
    (m.cluster, m.netward)
}

#[test]
fn bundled_examples_meet_their_tutorial_expectations() {
    let mut checked = 0;
    for name in [
        "rogue-pod",
        "namespace-isolation",
        "three-tier",
        "dns-egress",
        "metadata-block",
    ] {
        let dir = examples().join(name);
        let text = std::fs::read_to_string(dir.join("expect.yaml")).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let expects: Vec<Expect> = serde_yaml::from_value(doc["spec"]["expect"].clone()).unwrap();
        assert!(!expects.is_empty(), "{name}: no expectations");
        for e in expects {
            let (cluster, _) = example_until(&dir, e.step.as_deref());
            let s = Snapshot::compile(&cluster);
            let proto = e
                .protocol
                .as_deref()
                .map_or(Protocol::Tcp, |p| Protocol::parse(p).unwrap());
            let d = s.authorize(&flow(&s, &e.from, &e.to, proto, e.port));
            assert_eq!(
                d.allowed(),
                e.allowed,
                "{name}: {} -> {} {proto}/{} (step {:?}): the tutorial says {:?}; got {d:?}",
                e.from,
                e.to,
                e.port,
                e.step,
                e.says
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} expectations checked");
}

/// `netward matrix -o json` on each example is the committed golden file, whose cells
/// the tutorials describe (the expectations above pin the ones they state).
#[test]
fn bundled_examples_matrices_match_golden() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, proto, port) in [
        ("rogue-pod", Protocol::Tcp, 80),
        ("namespace-isolation", Protocol::Tcp, 80),
        ("three-tier", Protocol::Tcp, 80),
        ("three-tier", Protocol::Udp, 53),
        ("dns-egress", Protocol::Udp, 53),
        ("metadata-block", Protocol::Tcp, 80),
    ] {
        let (cluster, _) = example_until(&examples().join(name), None);
        let m = Snapshot::compile(&cluster).matrix(proto, port);
        let json = serde_json::to_string(&m).unwrap() + "\n";
        let path = golden_dir.join(format!(
            "{name}.{}-{port}.matrix.json",
            proto.as_str().to_lowercase()
        ));
        if update {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&path, &json).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(
            json,
            want,
            "{name} {proto}/{port} matrix differs from {}",
            path.display()
        );
    }
}

#[test]
fn rogue_pod_matrix_is_the_tutorials() {
    let (cluster, _) = example_until(&examples().join("rogue-pod"), None);
    let m = Snapshot::compile(&cluster).matrix(Protocol::Tcp, 80);
    assert_eq!(
        m.pods,
        [
            "netpol-test/backend",
            "netpol-test/frontend",
            "netpol-test/rogue-pod"
        ]
    );
    // Rows from, columns to: only rogue-pod -> backend is denied.
    assert_eq!(
        m.allowed,
        vec![
            vec![true, true, true],
            vec![true, true, true],
            vec![false, true, true]
        ]
    );
}
