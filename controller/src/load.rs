//! The manifest-file source: standard Kubernetes YAML or JSON, multi-document
//! files, `kind: List`, and directories of `.yaml`/`.yml`/`.json` files.
//!
//! Objects are decoded strictly ([`crate::strict`]): a field the API does not have is an
//! error with the nearest valid name, as kubectl's strict field validation rejects it,
//! and so is a `kind` that is a near miss of one netward reads. Workloads (Deployments,
//! ...) become the pods they would run ([`crate::workloads`]) once every file is read
//! ([`Manifests::finish`]), since a DaemonSet needs every node.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::cluster_policy::{self, ClusterNetworkPolicy};
use crate::model::{FieldError, Namespace, NetworkPolicy, Node, Pod, Service};
use crate::strict;
use crate::workloads::{Replicas, Workload, WorkloadKind};

/// Errors while reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML/JSON.
    #[error("{path}: document {doc}: not valid YAML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based document index in the file.
        doc: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An object is invalid.
    #[error("{path}: document {doc}: {object}: {error}")]
    Object {
        /// The file.
        path: PathBuf,
        /// 1-based document index in the file.
        doc: usize,
        /// `Kind namespace/name`.
        object: String,
        /// The field and what is wrong with it.
        error: FieldError,
    },
    /// Two documents define the same object.
    #[error("{path}: document {doc}: {object} is defined twice (first in {first})")]
    Duplicate {
        /// The file with the second definition.
        path: PathBuf,
        /// 1-based document index.
        doc: usize,
        /// `Kind namespace/name`.
        object: String,
        /// Where the first definition is.
        first: String,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds netward reads (besides lists of them).
pub const READ_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "Node",
    "NetworkPolicy",
    "ClusterNetworkPolicy",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// Kinds of the API groups netward reads from that it knowingly skips: never taken for
/// a misspelling of one it reads.
const SKIPPED_KINDS: &[&str] = &[
    "Binding",
    "ComponentStatus",
    "ConfigMap",
    "ControllerRevision",
    "Endpoints",
    "Event",
    "Ingress",
    "IngressClass",
    "IPAddress",
    "LimitRange",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodTemplate",
    "ReplicationController",
    "ResourceQuota",
    "Secret",
    "ServiceAccount",
    "ServiceCIDR",
];

/// The API groups whose kinds can be misspellings of the ones netward reads (a custom
/// resource in its own group, `cilium.io/v2 CiliumNetworkPolicy`, never is).
const READ_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "networking.k8s.io",
    "extensions",
    "policy.networking.k8s.io",
];

/// The network-policy-api group of ClusterNetworkPolicy.
const CNP_GROUP: &str = "policy.networking.k8s.io";

/// Kinds of the network-policy-api group that netward does not read: an error, never
/// skipped, since skipping a policy someone expects enforced would fail open.
const UNSUPPORTED_POLICY_KINDS: &[&str] = &["AdminNetworkPolicy", "BaselineAdminNetworkPolicy"];

/// The kind netward reads that `kind` is most likely a misspelling of: equal but for
/// case, a plural, or a small edit away. `None` for a kind it knowingly skips.
fn near_kind(kind: &str) -> Option<&'static str> {
    if SKIPPED_KINDS.contains(&kind)
        || kind.ends_with("List") && READ_KINDS.contains(&&kind[..kind.len() - 4])
    {
        return None;
    }
    let lower = kind.to_ascii_lowercase();
    let plural = |k: &str| {
        let k = k.to_ascii_lowercase();
        let ies = k.strip_suffix('y').map(|stem| format!("{stem}ies"));
        lower == k
            || lower == format!("{k}s")
            || lower == format!("{k}es")
            || Some(&lower) == ies.as_ref()
    };
    READ_KINDS
        .iter()
        .copied()
        .find(|k| plural(k))
        .or_else(|| strict::nearest(kind, READ_KINDS.iter().copied()))
}

/// A workload read but not yet expanded into pods (see [`Manifests::finish`]).
#[derive(Debug)]
struct Pending {
    path: PathBuf,
    doc: usize,
    object: String,
    workload: Workload,
}

/// What reading manifests produced: the objects, and every problem found.
///
/// Invalid NetworkPolicies are *in* `cluster` as isolating-only policies (fail closed);
/// their problems are in `errors` too.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The objects read, workloads' pods included once [`Manifests::finish`] has run.
    pub cluster: Cluster,
    /// Every problem, in file order (the expansion of workloads' pods comes last).
    pub errors: Vec<Error>,
    /// Objects of kinds netward does not read (ConfigMap, Secret, ...), as `file: Kind ns/name`.
    pub ignored: Vec<String>,
    /// The workloads expanded into pods by [`Manifests::finish`], each with its pods' names.
    pub workloads: Vec<Workload>,
    /// netward's own objects (`apiVersion: netward.io/...`), for the lab and tests.
    pub netward: Vec<serde_yaml::Value>,
    /// Where each object came from, for duplicate detection: `Kind/ns/name` -> `file#doc`.
    origins: std::collections::HashMap<String, String>,
    /// Workloads read since the last `finish`.
    pending: Vec<Pending>,
}

impl Manifests {
    /// Reads every path (a file, or a directory of `.yaml`/`.yml`/`.json` files,
    /// recursively, sorted), then expands the workloads ([`Manifests::finish`]).
    pub fn read_paths<P: AsRef<Path>>(paths: &[P]) -> Manifests {
        let mut m = Manifests::default();
        for p in paths {
            m.read_path(p.as_ref());
        }
        m.finish();
        m
    }

    /// Expands the workloads read since the last call into their pods, in `cluster`.
    ///
    /// Call it once every file is read ([`Manifests::read_paths`] and
    /// [`Manifests::into_clean`] do): a DaemonSet runs one pod per node, and the nodes may
    /// come from any file. Other workloads first, in the order read, then DaemonSets.
    /// A pod named like one already read is a [`Error::Duplicate`].
    pub fn finish(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let (per_node, counted): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| p.workload.replicas == Replicas::PerNode);
        for p in counted {
            self.expand(p, &[]);
        }
        let nodes = crate::workloads::known_nodes(&self.cluster);
        for p in per_node {
            self.expand(p, &nodes);
        }
    }

    fn expand(&mut self, p: Pending, nodes: &[String]) {
        let mut w = p.workload;
        for pod in w.expand(nodes) {
            let object = format!("Pod {} (of {})", pod.key(), p.object);
            if self.note_origin(&p.path, p.doc, &object, format!("Pod/{}", pod.key())) {
                w.pods.push(pod.name.clone());
                self.cluster.upsert_pod(pod);
            }
        }
        self.workloads.push(w);
    }

    /// Reads one file or directory into this set.
    pub fn read_path(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Err(source) => self.errors.push(Error::Io {
                path: path.to_owned(),
                source,
            }),
            Ok(md) if md.is_dir() => match list_dir(path) {
                Ok(files) => {
                    for f in files {
                        self.read_file(&f);
                    }
                }
                Err(source) => self.errors.push(Error::Io {
                    path: path.to_owned(),
                    source,
                }),
            },
            Ok(_) => self.read_file(path),
        }
    }

    fn read_file(&mut self, path: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => self.read_str(path, &text),
            Err(source) => self.errors.push(Error::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads manifest text (YAML or JSON, possibly several documents); `path` names it in errors.
    pub fn read_str(&mut self, path: &Path, text: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_no = i + 1;
            match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(value) => self.read_value(path, doc_no, value),
                Err(e) => {
                    self.errors.push(Error::Syntax {
                        path: path.to_owned(),
                        doc: doc_no,
                        message: e.to_string(),
                    });
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            }
        }
    }

    fn read_value(&mut self, path: &Path, doc: usize, value: serde_yaml::Value) {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let ns = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("<unnamed>");
        let namespaced = matches!(kind.as_str(), "Pod" | "Service" | "NetworkPolicy")
            || WorkloadKind::parse(&kind).is_some();
        let object = if namespaced && ns.is_empty() {
            format!("{kind} default/{name}")
        } else if ns.is_empty() || kind == "Namespace" || kind == "Node" {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        let object_err = |field: &str, message: String| Error::Object {
            path: path.to_owned(),
            doc,
            object: if kind.is_empty() {
                format!("object {name}")
            } else {
                object.clone()
            },
            error: FieldError {
                field: field.to_owned(),
                message,
            },
        };
        if !value.is_mapping() {
            self.errors.push(object_err(
                "",
                "expected a Kubernetes object (a mapping)".to_owned(),
            ));
            return;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if api_version.starts_with("netward.io/") {
            // netward's own objects (lab scenarios, expectations) are read by their tools.
            self.netward.push(value);
            return;
        }
        if api_version.is_empty() && !kind.is_empty() {
            self.errors
                .push(object_err("apiVersion", "missing apiVersion".to_owned()));
            let missing = FieldError {
                field: "apiVersion".to_owned(),
                message: "missing apiVersion".to_owned(),
            };
            if kind == "NetworkPolicy" {
                // Still isolate what it might select: fail closed.
                let ns = if ns.is_empty() { "default" } else { ns };
                let policy = NetworkPolicy::unreadable(ns, name, missing.clone());
                if self.note_origin(
                    path,
                    doc,
                    &object,
                    format!("NetworkPolicy/{}", policy.key()),
                ) {
                    self.cluster.upsert_policy(policy);
                }
            }
            if kind == cluster_policy::KIND {
                let policy = ClusterNetworkPolicy::unreadable(name, missing);
                if self.note_origin(
                    path,
                    doc,
                    &object,
                    format!("{}/{name}", cluster_policy::KIND),
                ) {
                    self.cluster.upsert_cluster_policy(policy);
                }
            }
            return;
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        match kind.as_str() {
            k if k == "List"
                || k.strip_suffix("List")
                    .is_some_and(|k| READ_KINDS.contains(&k)) =>
            {
                match value.get("items") {
                    Some(serde_yaml::Value::Sequence(items)) => {
                        for item in items.clone() {
                            self.read_value(path, doc, item);
                        }
                    }
                    None | Some(serde_yaml::Value::Null) => {}
                    Some(_) => self
                        .errors
                        .push(object_err("items", "expected a list of objects".to_owned())),
                }
            }
            "Namespace" => {
                if let Ok(ns) = self.typed::<core::Namespace>(path, doc, &object, value) {
                    match Namespace::from_api(&ns) {
                        Ok(ns) => {
                            if self.note_origin(
                                path,
                                doc,
                                &object,
                                format!("Namespace/{}", ns.name),
                            ) {
                                self.cluster.upsert_namespace(ns);
                            }
                        }
                        Err(errs) => self.object_errors(path, doc, &object, errs),
                    }
                }
            }
            "Pod" => {
                if let Ok(pod) = self.typed::<core::Pod>(path, doc, &object, value) {
                    match Pod::from_api(&pod) {
                        Ok(pod) => {
                            if self.note_origin(path, doc, &object, format!("Pod/{}", pod.key())) {
                                self.cluster.upsert_pod(pod);
                            }
                        }
                        Err(errs) => self.object_errors(path, doc, &object, errs),
                    }
                }
            }
            "Service" => {
                if let Ok(svc) = self.typed::<core::Service>(path, doc, &object, value) {
                    match Service::from_api(&svc) {
                        Ok(svc) => {
                            if self.note_origin(
                                path,
                                doc,
                                &object,
                                format!("Service/{}", svc.key()),
                            ) {
                                self.cluster.upsert_service(svc);
                            }
                        }
                        Err(errs) => self.object_errors(path, doc, &object, errs),
                    }
                }
            }
            "Node" => {
                if let Ok(node) = self.typed::<core::Node>(path, doc, &object, value) {
                    match Node::from_api(&node) {
                        Ok(node) => {
                            if self.note_origin(path, doc, &object, format!("Node/{}", node.name)) {
                                self.cluster.upsert_node(node);
                            }
                        }
                        Err(errs) => self.object_errors(path, doc, &object, errs),
                    }
                }
            }
            "NetworkPolicy" => {
                let ns_name = if ns.is_empty() { "default" } else { ns }.to_owned();
                let name = name.to_owned();
                let (policy, reported) =
                    match self.typed::<net::NetworkPolicy>(path, doc, &object, value) {
                        Ok(np) => (NetworkPolicy::from_api(&np), false),
                        // Undecodable, or with unknown fields (whose meaning is lost): still
                        // isolate (fail closed). `typed` recorded the errors.
                        Err(first) => (NetworkPolicy::unreadable(&ns_name, &name, first), true),
                    };
                if !self.note_origin(
                    path,
                    doc,
                    &object,
                    format!("NetworkPolicy/{}", policy.key()),
                ) {
                    return;
                }
                if !reported {
                    self.object_errors(path, doc, &object, policy.errors.to_vec());
                }
                self.cluster.upsert_policy(policy);
            }
            cluster_policy::KIND if group == CNP_GROUP => {
                let name = name.to_owned();
                // Unknown fields only inside rule peers: those peers are ones netward
                // does not understand, and only their rules fail closed (upstream's rule
                // for peers); any other unknown field loses the object's meaning.
                let peers_only = match strict::decode::<cluster_policy::api::ClusterNetworkPolicy>(
                    value.clone(),
                ) {
                    Ok((obj, unknown))
                        if !unknown.is_empty()
                            && unknown
                                .iter()
                                .all(|u| cluster_policy::peer_of(&u.path).is_some()) =>
                    {
                        let unknown: Vec<FieldError> = unknown
                            .iter()
                            .map(|u| FieldError {
                                field: u.path.clone(),
                                message: u.message(),
                            })
                            .collect();
                        Some(ClusterNetworkPolicy::from_api_with_unknown_peers(
                            &obj, &unknown,
                        ))
                    }
                    _ => None,
                };
                let (policy, reported) = match peers_only {
                    Some(policy) => (policy, false),
                    None => match self.typed::<cluster_policy::api::ClusterNetworkPolicy>(
                        path, doc, &object, value,
                    ) {
                        Ok(obj) => (ClusterNetworkPolicy::from_api(&obj), false),
                        // Undecodable, or with unknown fields: deny what it may cover (fail
                        // closed). `typed` recorded the errors.
                        Err(first) => (ClusterNetworkPolicy::unreadable(&name, first), true),
                    },
                };
                if !self.note_origin(
                    path,
                    doc,
                    &object,
                    format!("{}/{}", cluster_policy::KIND, policy.name),
                ) {
                    return;
                }
                if !reported {
                    self.object_errors(path, doc, &object, policy.errors.to_vec());
                }
                self.cluster.upsert_cluster_policy(policy);
            }
            k if group == CNP_GROUP && UNSUPPORTED_POLICY_KINDS.contains(&k) => {
                self.errors.push(object_err(
                    "kind",
                    format!(
                        "{k} ({api_version}) is not supported: netward reads {} {}, the \
                         network-policy-api's successor of AdminNetworkPolicy and \
                         BaselineAdminNetworkPolicy (tier Admin or Baseline)",
                        cluster_policy::API_VERSION,
                        cluster_policy::KIND
                    ),
                ));
            }
            k if WorkloadKind::parse(k).is_some() => self.read_workload(path, doc, &object, value),
            "" => self
                .errors
                .push(object_err("kind", "missing kind".to_owned())),
            other => match near_kind(other).filter(|_| READ_GROUPS.contains(&group)) {
                Some(meant) => self.misspelled_kind(path, doc, other, meant, ns, name),
                None => self.ignored.push(format!(
                    "{}: {other} {}",
                    path.display(),
                    object.trim_start_matches(other).trim()
                )),
            },
        }
    }

    /// A kind that is a near miss of `meant`: an error; a would-be NetworkPolicy still
    /// isolates every pod of its namespace (fail closed).
    fn misspelled_kind(
        &mut self,
        path: &Path,
        doc: usize,
        kind: &str,
        meant: &str,
        ns: &str,
        name: &str,
    ) {
        let error = FieldError {
            field: "kind".to_owned(),
            message: format!("unknown kind {kind:?}: did you mean {meant:?}?"),
        };
        let ns = if ns.is_empty() { "default" } else { ns };
        let cluster_scoped =
            meant == "Namespace" || meant == "Node" || meant == cluster_policy::KIND;
        let object = if cluster_scoped {
            format!("{meant} {name}")
        } else {
            format!("{meant} {ns}/{name}")
        };
        if meant == "NetworkPolicy" {
            let key = format!("NetworkPolicy/{ns}/{name}");
            if self.note_origin(path, doc, &object, key) {
                self.cluster
                    .upsert_policy(NetworkPolicy::unreadable(ns, name, error.clone()));
            }
        }
        if meant == cluster_policy::KIND {
            let key = format!("{meant}/{name}");
            if self.note_origin(path, doc, &object, key) {
                self.cluster
                    .upsert_cluster_policy(ClusterNetworkPolicy::unreadable(name, error.clone()));
            }
        }
        self.errors.push(Error::Object {
            path: path.to_owned(),
            doc,
            object,
            error,
        });
    }

    /// A Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob: checked now,
    /// expanded into pods by [`Manifests::finish`].
    fn read_workload(&mut self, path: &Path, doc: usize, object: &str, value: serde_yaml::Value) {
        let Some(kind) = value
            .get("kind")
            .and_then(|k| k.as_str())
            .and_then(WorkloadKind::parse)
        else {
            return;
        };
        let read = match kind {
            WorkloadKind::Deployment => self
                .typed::<apps::Deployment>(path, doc, object, value)
                .map(|w| Workload::from_deployment(&w)),
            WorkloadKind::StatefulSet => self
                .typed::<apps::StatefulSet>(path, doc, object, value)
                .map(|w| Workload::from_stateful_set(&w)),
            WorkloadKind::DaemonSet => self
                .typed::<apps::DaemonSet>(path, doc, object, value)
                .map(|w| Workload::from_daemon_set(&w)),
            WorkloadKind::ReplicaSet => self
                .typed::<apps::ReplicaSet>(path, doc, object, value)
                .map(|w| Workload::from_replica_set(&w)),
            WorkloadKind::Job => self
                .typed::<batch::Job>(path, doc, object, value)
                .map(|w| Workload::from_job(&w)),
            WorkloadKind::CronJob => self
                .typed::<batch::CronJob>(path, doc, object, value)
                .map(|w| Workload::from_cron_job(&w)),
        };
        match read {
            // `typed` recorded the error.
            Err(_) => {}
            Ok(Err(errs)) => self.object_errors(path, doc, object, errs),
            Ok(Ok(workload)) => {
                let key = format!("{kind}/{}/{}", workload.namespace, workload.name);
                if self.note_origin(path, doc, object, key) {
                    self.pending.push(Pending {
                        path: path.to_owned(),
                        doc,
                        object: object.to_owned(),
                        workload,
                    });
                }
            }
        }
    }

    /// Records where an object was defined; false (and an error) if it already was.
    fn note_origin(&mut self, path: &Path, doc: usize, object: &str, key: String) -> bool {
        let here = format!("{}#{doc}", path.display());
        if let Some(first) = self.origins.get(&key) {
            self.errors.push(Error::Duplicate {
                path: path.to_owned(),
                doc,
                object: object.to_owned(),
                first: first.clone(),
            });
            return false;
        }
        self.origins.insert(key, here);
        true
    }

    fn object_errors(&mut self, path: &Path, doc: usize, object: &str, errs: Vec<FieldError>) {
        for error in errs {
            self.errors.push(Error::Object {
                path: path.to_owned(),
                doc,
                object: object.to_owned(),
                error,
            });
        }
    }

    /// Decodes an object strictly; every problem is recorded, and the first is returned.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &Path,
        doc: usize,
        object: &str,
        value: serde_yaml::Value,
    ) -> Result<T, FieldError> {
        let errs = match strict::decode::<T>(value) {
            Ok((t, unknown)) if unknown.is_empty() => return Ok(t),
            Ok((_, unknown)) => unknown
                .iter()
                .map(|u| FieldError {
                    field: u.path.clone(),
                    message: u.message(),
                })
                .collect(),
            Err(e) => {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                vec![FieldError {
                    field,
                    message: e.into_inner().to_string(),
                }]
            }
        };
        let first = errs.first().cloned().unwrap_or_else(|| FieldError {
            field: String::new(),
            message: "the object could not be decoded".to_owned(),
        });
        self.object_errors(path, doc, object, errs);
        Err(first)
    }

    /// Expands the workloads ([`Manifests::finish`]), then fails with every error if there
    /// were any (for commands that need clean input).
    pub fn into_clean(mut self) -> Result<Cluster, Vec<Error>> {
        self.finish();
        if self.errors.is_empty() {
            Ok(self.cluster)
        } else {
            Err(self.errors)
        }
    }
}

impl fmt::Display for Manifests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} namespaces, {} pods, {} policies, {} services, {} nodes, {} errors",
            self.cluster.namespaces.len(),
            self.cluster.pods.len(),
            self.cluster.policies.len(),
            self.cluster.services.len(),
            self.cluster.nodes.len(),
            self.errors.len()
        )
    }
}

fn list_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if e.file_type()?.is_dir() {
            out.extend(list_dir(&p)?);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(out)
}
