//! Strict decoding (issue #15, point 1): an unknown or misspelled field, or a kind that
//! is a near miss of one netward reads, is an error naming the file, document, object,
//! field path and the nearest valid name, as kubectl's strict field validation would
//! reject it. A policy with such an error still isolates what it may select (fail closed).
//! Real-world YAML (exported objects, full pod templates) decodes without errors.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

mod common;

use std::path::{Path, PathBuf};

use common::flow;
use netward_controller::{Manifests, Protocol, Snapshot};

/// Reads YAML text as one file of a directory (`read_paths`, as the CLI does).
fn read(yaml: &str) -> Manifests {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.yaml"), yaml).unwrap();
    Manifests::read_paths(&[dir.path()])
}

fn errors(m: &Manifests) -> String {
    m.errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const PODS: &str = r#"
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
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: a, labels: {app: other}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.1.3}
"#;

/// A policy document (document 4 of the text) with `body` under its top level.
fn policy(body: &str) -> String {
    format!("{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{body}\n")
}

/// `(policy body, field path, suggestion)`: each is a typo that today changes what the
/// policy means (selects every pod, or allows everything).
const TYPOS: &[(&str, &str, &str)] = &[
    (
        // Selects every pod of the namespace instead of web.
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelectr: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]",
        "spec.podSelectr",
        "podSelector",
    ),
    (
        // `matchLabel` dropped: an empty selector, every pod.
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabel: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]",
        "spec.podSelector.matchLabel",
        "matchLabels",
    ),
    (
        // `form` dropped: a rule without peers allows every source.
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{form: [{podSelector: {matchLabels: {app: client}}}]}]",
        "spec.ingress[0].form",
        "from",
    ),
    (
        // `prot` dropped: a port entry without a port allows every port.
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{prot: 443}]}]",
        "spec.ingress[0].ports[0].prot",
        "port",
    ),
    (
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}, namespaceSelectr: {}}]}]",
        "spec.ingress[0].from[0].namespaceSelectr",
        "namespaceSelector",
    ),
    (
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipblock: {cidr: 198.18.0.0/15}}]}]",
        "spec.ingress[0].from[0].ipblock",
        "ipBlock",
    ),
    (
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyType: [Ingress]",
        "spec.policyType",
        "policyTypes",
    ),
    (
        "metadata: {name: bad, namespace: a, anotations: {netward.io/mode: audit}}\nspec:\n  podSelector: {matchLabels: {app: web}}",
        "metadata.anotations",
        "annotations",
    ),
    (
        "metadata: {name: bad, namespace: a}\nspce:\n  podSelector: {matchLabels: {app: web}}",
        "spce",
        "spec",
    ),
];

#[test]
fn a_misspelled_policy_field_is_an_error_with_its_path_and_a_suggestion_and_fails_closed() {
    for (body, field, suggestion) in TYPOS {
        let m = read(&policy(body));
        let all = errors(&m);
        assert!(
            all.contains("test.yaml: document 4: NetworkPolicy a/bad"),
            "{field}: the error does not name file, document and object: {all:?}"
        );
        assert!(
            all.contains(&format!("{field}: unknown field")),
            "{field}: the error does not name the field path: {all:?}"
        );
        assert!(
            all.contains(&format!("did you mean \"{suggestion}\"?")),
            "{field}: no suggestion {suggestion:?}: {all:?}"
        );
        // Fail closed: the policy is there, invalid, and isolates web (and, as a policy
        // that could not be read, every pod of its namespace) in both directions.
        let s = Snapshot::compile(&m.cluster);
        assert_eq!(s.invalid_policies().count(), 1, "{field}");
        for (from, to) in [
            ("a/client", "a/web"),
            ("a/other", "a/web"),
            ("a/web", "a/client"),
        ] {
            let d = s.authorize(&flow(&s, from, to, Protocol::Tcp, 80));
            assert!(!d.allowed(), "{field}: {from} -> {to} allowed: {d:?}");
        }
        let explained = s.explain(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80));
        assert!(!explained.decision.allowed(), "{field}");
    }
}

#[test]
fn an_unknown_field_without_a_near_name_lists_the_valid_ones() {
    let m = read(&policy(
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{allowAll: true}]",
    ));
    let all = errors(&m);
    assert!(
        all.contains("spec.ingress[0].allowAll: unknown field \"allowAll\"")
            && all.contains("from, ports"),
        "{all}"
    );
}

#[test]
fn a_near_miss_kind_is_an_error_and_a_near_miss_policy_still_isolates() {
    for kind in [
        "Networkpolicy",
        "networkPolicy",
        "NetworkPolicies",
        "NetworkPolcy",
    ] {
        let m = read(&policy(
            "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{}]",
        )
        .replace("kind: NetworkPolicy", &format!("kind: {kind}")));
        let all = errors(&m);
        assert!(
            all.contains("test.yaml: document 4:")
                && all.contains(&format!("unknown kind \"{kind}\""))
                && all.contains("did you mean \"NetworkPolicy\"?"),
            "{kind}: {all:?}"
        );
        assert!(m.ignored.is_empty(), "{kind}: {:?}", m.ignored);
        let s = Snapshot::compile(&m.cluster);
        let d = s.authorize(&flow(&s, "a/client", "a/web", Protocol::Tcp, 80));
        assert!(
            !d.allowed(),
            "{kind}: an unread policy opened traffic: {d:?}"
        );
    }
    for (kind, meant) in [
        ("Deploymnet", "Deployment"),
        ("deployment", "Deployment"),
        ("Pods", "Pod"),
        ("Statefulset", "StatefulSet"),
        ("Namespce", "Namespace"),
        ("Servce", "Service"),
    ] {
        let m = read(&format!(
            "apiVersion: v1\nkind: {kind}\nmetadata: {{name: x}}\n"
        ));
        let all = errors(&m);
        assert!(
            all.contains(&format!("did you mean \"{meant}\"?")),
            "{kind}: {all:?}"
        );
    }
}

#[test]
fn kinds_netward_does_not_read_stay_notes() {
    let mut yaml = String::new();
    for (api, kind) in [
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("v1", "Endpoints"),
        ("v1", "PersistentVolumeClaim"),
        ("networking.k8s.io/v1", "Ingress"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("cilium.io/v2", "CiliumNetworkPolicy"),
        ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ] {
        yaml.push_str(&format!(
            "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nsomething: {{else: 1}}\n"
        ));
    }
    let m = read(&yaml);
    assert!(m.errors.is_empty(), "{}", errors(&m));
    assert_eq!(m.ignored.len(), 14, "{:?}", m.ignored);
}

#[test]
fn every_kind_netward_reads_is_strict() {
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, lables: {app: x}}\nspec: {containers: []}\n",
            "Pod default/p: metadata.lables: unknown field",
            "labels",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 80, nmae: http}]}]}\n",
            "spec.containers[0].ports[0].nmae: unknown field",
            "name",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodename: n1, containers: []}\n",
            "spec.nodename",
            "nodeName",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, label: {team: a}}\n",
            "Namespace n: metadata.label: unknown field",
            "labels",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selectr: {app: x}, ports: [{port: 80}]}\n",
            "Service default/s: spec.selectr: unknown field",
            "selector",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: x}, ports: [{port: 80, targetport: 8080}]}\n",
            "spec.ports[0].targetport",
            "targetPort",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCidrs: [198.18.1.0/24]}\n",
            "Node n: spec.podCidrs: unknown field",
            "podCIDRs",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replica: 3\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: x}]}\n",
            "Deployment default/d: spec.replica: unknown field",
            "replicas",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c, image: x, prots: [{containerPort: 80}]}]}\n",
            "spec.template.spec.containers[0].prots: unknown field",
            "ports",
        ),
        (
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: j}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        metadata: {labels: {app: j}}\n        spec: {restartPolicy: Never, containers: [{name: c, image: x, imagePullPolcy: Always}]}\n",
            "spec.jobTemplate.spec.template.spec.containers[0].imagePullPolcy",
            "imagePullPolicy",
        ),
    ];
    for (yaml, needle, suggestion) in cases {
        let m = read(yaml);
        let all = errors(&m);
        assert!(
            all.contains("test.yaml: document 1: ") && all.contains(needle),
            "{yaml}\n{all:?}"
        );
        assert!(
            all.contains(&format!("did you mean \"{suggestion}\"?")),
            "{yaml}\n{all:?}"
        );
    }
}

#[test]
fn type_errors_keep_their_paths() {
    let m = read(&policy(
        "metadata: {name: bad, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: [80]}]}]",
    ));
    let all = errors(&m);
    assert!(
        all.contains("NetworkPolicy a/bad: spec.ingress[0].ports[0].port:"),
        "{all}"
    );
    let m = read(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: two\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c}]}\n",
    );
    assert!(
        errors(&m).contains("Deployment default/d: spec.replicas:"),
        "{}",
        errors(&m)
    );
}

/// What `kubectl get -o yaml` and tutorials write: defaults, nulls, status, probes,
/// resources, env, volumes. None of it is an error.
const REAL_WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  creationTimestamp: null
  labels: {team: shop}
  annotations: {owner: someone}
spec:
  finalizers: [kubernetes]
status:
  phase: Active
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  creationTimestamp: null
  generation: 3
  labels: {app: web}
  annotations:
    deployment.kubernetes.io/revision: "2"
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"apps/v1","kind":"Deployment"}
spec:
  replicas: 2
  revisionHistoryLimit: 10
  progressDeadlineSeconds: 600
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      creationTimestamp: null
      labels: {app: web, tier: front}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 30
      dnsPolicy: ClusterFirst
      restartPolicy: Always
      schedulerName: default-scheduler
      securityContext: {runAsNonRoot: true, fsGroup: 2000}
      nodeSelector: {kubernetes.io/os: linux}
      tolerations: [{key: dedicated, operator: Equal, value: web, effect: NoSchedule}]
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                labelSelector: {matchLabels: {app: web}}
                topologyKey: kubernetes.io/hostname
      initContainers:
        - name: init
          image: busybox:1.36
          command: [sh, -c, "true"]
      containers:
        - name: nginx
          image: nginx:1.25
          imagePullPolicy: IfNotPresent
          args: ["-g", "daemon off;"]
          ports:
            - {name: http, containerPort: 80, protocol: TCP}
            - {name: metrics, containerPort: 9113}
          env:
            - {name: MODE, value: prod}
            - name: POD_IP
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: status.podIP}}
            - name: PASSWORD
              valueFrom: {secretKeyRef: {name: db, key: password, optional: false}}
          envFrom: [{configMapRef: {name: web-config}}]
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 1, memory: 128Mi, ephemeral-storage: 1Gi}
          livenessProbe:
            httpGet: {path: /healthz, port: http, scheme: HTTP}
            initialDelaySeconds: 5
            periodSeconds: 10
            successThreshold: 1
            failureThreshold: 3
            timeoutSeconds: 1
          readinessProbe:
            tcpSocket: {port: 80}
          startupProbe:
            exec: {command: [cat, /tmp/ready]}
          lifecycle:
            preStop: {exec: {command: [sleep, "5"]}}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: cache, mountPath: /var/cache/nginx}
            - {name: config, mountPath: /etc/nginx/conf.d, readOnly: true}
          terminationMessagePath: /dev/termination-log
          terminationMessagePolicy: File
      volumes:
        - name: cache
          emptyDir: {}
        - name: config
          configMap: {name: web-config, defaultMode: 420}
        - name: data
          persistentVolumeClaim: {claimName: data}
status:
  availableReplicas: 2
  observedGeneration: 3
  someFieldFromANewerVersion: {x: 1}
  conditions:
    - type: Available
      status: "True"
      lastTransitionTime: "2024-01-01T00:00:00Z"
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  creationTimestamp: null
spec:
  type: ClusterIP
  sessionAffinity: None
  internalTrafficPolicy: Cluster
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, protocol: TCP}
status:
  loadBalancer: {}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  labels: {app: client}
  ownerReferences: []
  managedFields:
    - manager: kubectl
      operation: Update
      apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1: {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}
spec:
  nodeName: node-a
  containers:
    - name: c
      image: busybox
      stdin: true
      tty: true
      resources: {}
status:
  phase: Running
  podIP: 198.18.1.20
  podIPs: [{ip: 198.18.1.20}]
  hostIP: 198.18.0.1
  qosClass: BestEffort
  startTime: "2024-01-01T00:00:00Z"
  containerStatuses:
    - name: c
      ready: true
      restartCount: 0
      image: busybox
      imageID: ""
      state: {running: {startedAt: "2024-01-01T00:00:00Z"}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: shop
  creationTimestamp: null
  annotations: {description: "only the client"}
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  egress: null
  ingress:
    - from:
        - podSelector: {matchLabels: {app: client}}
        - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [shop]}]}
          podSelector: null
      ports:
        - {protocol: TCP, port: http}
        - {port: 9100, endPort: 9200}
status: {}
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {kubernetes.io/hostname: node-a}
spec:
  podCIDR: 198.18.1.0/24
  podCIDRs: [198.18.1.0/24]
  taints: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
status:
  addresses: [{type: InternalIP, address: 198.18.0.1}, {type: Hostname, address: node-a}]
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  nodeInfo: {architecture: amd64, kubeletVersion: v1.33.0}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: shop}
data: {default.conf: "server {}"}
"#;

#[test]
fn real_world_yaml_has_no_errors() {
    let m = read(REAL_WORLD);
    assert!(m.errors.is_empty(), "{}", errors(&m));
    assert_eq!(m.ignored.len(), 1, "{:?}", m.ignored);
    assert_eq!(m.cluster.policies.len(), 1);
    assert!(
        m.cluster
            .pods
            .contains_key(&("shop".into(), "client".into()))
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn our_own_examples_and_deploy_files_load_without_errors() {
    // Each scenario on its own (examples/seeds/ holds one directory per tutorial part).
    let scenarios = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect()
    };
    let mut dirs: Vec<PathBuf> = scenarios(root().join("examples"))
        .into_iter()
        .filter(|d| !d.ends_with("seeds"))
        .collect();
    dirs.extend(scenarios(root().join("examples/seeds")));
    dirs.push(root().join("deploy"));
    dirs.sort();
    for dir in dirs {
        let m = Manifests::read_paths(&[&dir]);
        assert!(m.errors.is_empty(), "{}: {}", dir.display(), errors(&m));
    }
}
