//! The manifest-file source: standard Kubernetes YAML or JSON, multi-document
//! files, `kind: List`, and directories of `.yaml`/`.yml`/`.json` files.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::model::{FieldError, Namespace, NetworkPolicy, Node, Pod, Service};

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

/// What reading manifests produced: the objects, and every problem found.
///
/// Invalid NetworkPolicies are *in* `cluster` as isolating-only policies (fail closed);
/// their problems are in `errors` too.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The objects read.
    pub cluster: Cluster,
    /// Every problem, in file order.
    pub errors: Vec<Error>,
    /// Objects of kinds netward does not read (Deployment, ConfigMap, ...), as `file: Kind ns/name`.
    pub ignored: Vec<String>,
    /// netward's own objects (`apiVersion: netward.io/...`), for the lab and tests.
    pub netward: Vec<serde_yaml::Value>,
    /// Where each object came from, for duplicate detection: `Kind/ns/name` -> `file#doc`.
    origins: std::collections::HashMap<String, String>,
}

impl Manifests {
    /// Reads every path (a file, or a directory of `.yaml`/`.yml`/`.json` files, recursively, sorted).
    pub fn read_paths<P: AsRef<Path>>(paths: &[P]) -> Manifests {
        let mut m = Manifests::default();
        for p in paths {
            m.read_path(p.as_ref());
        }
        m
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
        let object = if ns.is_empty() || kind == "Namespace" || kind == "Node" {
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
            if kind == "NetworkPolicy" {
                // Still isolate what it might select: fail closed.
                let ns = if ns.is_empty() { "default" } else { ns };
                let policy = NetworkPolicy::unreadable(
                    ns,
                    name,
                    FieldError {
                        field: "apiVersion".to_owned(),
                        message: "missing apiVersion".to_owned(),
                    },
                );
                if self.note_origin(
                    path,
                    doc,
                    &object,
                    format!("NetworkPolicy/{}", policy.key()),
                ) {
                    self.cluster.upsert_policy(policy);
                }
            }
            return;
        }
        match kind.as_str() {
            "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" | "ServiceList"
            | "NodeList" => match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => {
                    for item in items.clone() {
                        self.read_value(path, doc, item);
                    }
                }
                None | Some(serde_yaml::Value::Null) => {}
                Some(_) => self
                    .errors
                    .push(object_err("items", "expected a list of objects".to_owned())),
            },
            "Namespace" => {
                if let Some(ns) = self.typed::<core::Namespace>(path, doc, &object, value) {
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
                if let Some(pod) = self.typed::<core::Pod>(path, doc, &object, value) {
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
                if let Some(svc) = self.typed::<core::Service>(path, doc, &object, value) {
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
                if let Some(node) = self.typed::<core::Node>(path, doc, &object, value) {
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
                        Some(np) => (NetworkPolicy::from_api(&np), false),
                        // Undecodable: still isolate (fail closed). `typed` recorded the error.
                        None => (
                            NetworkPolicy::unreadable(
                                &ns_name,
                                &name,
                                FieldError {
                                    field: String::new(),
                                    message: "the object could not be decoded".to_owned(),
                                },
                            ),
                            true,
                        ),
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
            "" => self
                .errors
                .push(object_err("kind", "missing kind".to_owned())),
            other => self.ignored.push(format!(
                "{}: {other} {}",
                path.display(),
                object.trim_start_matches(other).trim()
            )),
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

    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &Path,
        doc: usize,
        object: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                self.errors.push(Error::Object {
                    path: path.to_owned(),
                    doc,
                    object: object.to_owned(),
                    error: FieldError {
                        field,
                        message: e.into_inner().to_string(),
                    },
                });
                None
            }
        }
    }

    /// Fails with every error if there were any (for commands that need clean input).
    pub fn into_clean(self) -> Result<Cluster, Vec<Error>> {
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
