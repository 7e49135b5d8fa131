//! Workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) expanded into
//! the Pods their controllers would create, so that policies written for a tutorial's
//! Deployments select something when the manifests are read offline.
//!
//! Each pod gets the template's labels, container ports and `spec.nodeName` /
//! `spec.hostNetwork`, the workload's namespace (`default` when none is given), no
//! address (see [`crate::addresses`]) and [`Pod::owner`] `Kind name`. How many, and
//! their names (deterministic, unlike a cluster's random suffixes):
//!
//! | kind | pods | names |
//! |---|---|---|
//! | Deployment, ReplicaSet | `spec.replicas` (default 1) | `<name>-0`, `<name>-1`, ... |
//! | StatefulSet | `spec.replicas` (default 1) | `<name>-<ordinal>` from `spec.ordinals.start` (default 0), as a cluster names them |
//! | Job | `spec.parallelism` (default 1), at most `spec.completions` | `<name>-0`, ... |
//! | CronJob | one, from `spec.jobTemplate` | `<name>-0` |
//! | DaemonSet | one per known node (Node objects and the nodes pods name), or one on the template's `spec.nodeName`, or one on no node when none is known | `<name>-<node>` (`<name>-0` without a node) |
//!
//! DaemonSets ignore `nodeSelector`, affinity and taints (every known node gets one);
//! `suspend` is not read. A workload is checked as the API server would check it: its
//! selector must be valid, non-empty (apps/v1) and match the template's labels; replica
//! counts are not negative; the template has a spec with containers, valid labels and
//! ports. At most [`MAX_PODS`] pods per workload.

use std::fmt;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::cluster::Cluster;
use crate::model::{FieldError, Labels, Pod, Selector};

/// The most pods one workload expands to (a typo'd `replicas: 100000` stays an error,
/// not a hundred thousand pods).
pub const MAX_PODS: u32 = 1024;

/// The workload kinds netward expands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `apps/v1` ReplicaSet.
    ReplicaSet,
    /// `batch/v1` Job.
    Job,
    /// `batch/v1` CronJob.
    CronJob,
}

impl WorkloadKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [WorkloadKind; 6] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    /// The kind for a manifest's `kind`, exactly as the API spells it.
    pub fn parse(kind: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// Where the pod template is in the object: `spec.template`, or
    /// `spec.jobTemplate.spec.template` for a CronJob.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many pods a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// This many, named `<name>-<first + i>`.
    Count {
        /// How many.
        n: u32,
        /// The first ordinal (a StatefulSet's `spec.ordinals.start`, else 0).
        first: u32,
    },
    /// One per node (a DaemonSet).
    PerNode,
}

/// A workload read from a manifest: its validated pod template and how many pods it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its namespace (`default` when the manifest gives none).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pod its template describes (named after the workload, owner set).
    pub template: Pod,
    /// How many pods.
    pub replicas: Replicas,
    /// The names of the pods it was expanded to (filled in by the manifest reader).
    pub pods: Vec<String>,
}

impl Workload {
    /// `Kind name`, what [`Pod::owner`] says for its pods.
    pub fn owner(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// Checks and reads an API Deployment.
    pub fn from_deployment(d: &apps::Deployment) -> Result<Workload, Vec<FieldError>> {
        let spec = d.spec.as_ref();
        let parts = Parts {
            kind: WorkloadKind::Deployment,
            meta: &d.metadata,
            has_spec: spec.is_some(),
            selector: spec.map(|s| &s.selector),
            selector_required: true,
            template: spec.map(|s| &s.template),
            replicas: Some(spec.and_then(|s| s.replicas).unwrap_or(1)),
            first: 0,
        };
        parts.build()
    }

    /// Checks and reads an API StatefulSet.
    pub fn from_stateful_set(s: &apps::StatefulSet) -> Result<Workload, Vec<FieldError>> {
        let spec = s.spec.as_ref();
        let start = spec
            .and_then(|s| s.ordinals.as_ref())
            .and_then(|o| o.start)
            .unwrap_or(0);
        let parts = Parts {
            kind: WorkloadKind::StatefulSet,
            meta: &s.metadata,
            has_spec: spec.is_some(),
            selector: spec.map(|s| &s.selector),
            selector_required: true,
            template: spec.map(|s| &s.template),
            replicas: Some(spec.and_then(|s| s.replicas).unwrap_or(1)),
            first: start,
        };
        parts.build()
    }

    /// Checks and reads an API DaemonSet.
    pub fn from_daemon_set(d: &apps::DaemonSet) -> Result<Workload, Vec<FieldError>> {
        let spec = d.spec.as_ref();
        let parts = Parts {
            kind: WorkloadKind::DaemonSet,
            meta: &d.metadata,
            has_spec: spec.is_some(),
            selector: spec.map(|s| &s.selector),
            selector_required: true,
            template: spec.map(|s| &s.template),
            replicas: None,
            first: 0,
        };
        parts.build()
    }

    /// Checks and reads an API ReplicaSet.
    pub fn from_replica_set(r: &apps::ReplicaSet) -> Result<Workload, Vec<FieldError>> {
        let spec = r.spec.as_ref();
        let parts = Parts {
            kind: WorkloadKind::ReplicaSet,
            meta: &r.metadata,
            has_spec: spec.is_some(),
            selector: spec.map(|s| &s.selector),
            selector_required: true,
            template: spec.and_then(|s| s.template.as_ref()),
            replicas: Some(spec.and_then(|s| s.replicas).unwrap_or(1)),
            first: 0,
        };
        parts.build()
    }

    /// Checks and reads an API Job.
    pub fn from_job(j: &batch::Job) -> Result<Workload, Vec<FieldError>> {
        job(WorkloadKind::Job, &j.metadata, j.spec.as_ref(), "spec")
    }

    /// Checks and reads an API CronJob (one pod, from its job template).
    pub fn from_cron_job(c: &batch::CronJob) -> Result<Workload, Vec<FieldError>> {
        let job_spec = c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref());
        let mut w = job(
            WorkloadKind::CronJob,
            &c.metadata,
            job_spec,
            "spec.jobTemplate.spec",
        )
        .map_err(|mut errs| {
            if c.spec.is_none() {
                errs.retain(|e| !e.field.starts_with("spec.jobTemplate"));
                errs.push(FieldError {
                    field: "spec".to_owned(),
                    message: "a CronJob needs a spec".to_owned(),
                });
            }
            errs
        })?;
        w.replicas = Replicas::Count { n: 1, first: 0 };
        Ok(w)
    }

    /// The pods: named, placed and labelled as the module documentation says. `nodes` are
    /// the known node names (sorted), used by DaemonSets only.
    pub fn expand(&self, nodes: &[String]) -> Vec<Pod> {
        let pod = |name: String, node: Option<String>| Pod {
            name,
            node,
            owner: Some(self.owner()),
            ..self.template.clone()
        };
        match self.replicas {
            Replicas::Count { n, first } => (0..n)
                .map(|i| {
                    pod(
                        format!("{}-{}", self.name, u64::from(first) + u64::from(i)),
                        self.template.node.clone(),
                    )
                })
                .collect(),
            Replicas::PerNode => match (&self.template.node, nodes) {
                (Some(node), _) => vec![pod(format!("{}-{node}", self.name), Some(node.clone()))],
                (None, []) => vec![pod(format!("{}-0", self.name), None)],
                (None, nodes) => nodes
                    .iter()
                    .map(|n| pod(format!("{}-{n}", self.name), Some(n.clone())))
                    .collect(),
            },
        }
    }
}

/// The nodes a DaemonSet runs on: the cluster's Node objects and every node a pod names.
pub fn known_nodes(cluster: &Cluster) -> Vec<String> {
    let mut nodes: Vec<String> = cluster
        .nodes
        .keys()
        .cloned()
        .chain(cluster.pods.values().filter_map(|p| p.node.clone()))
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn job(
    kind: WorkloadKind,
    meta: &ObjectMeta,
    spec: Option<&batch::JobSpec>,
    at: &str,
) -> Result<Workload, Vec<FieldError>> {
    let mut errs = Vec::new();
    let count = |v: Option<i32>, field: &str, errs: &mut Vec<FieldError>| match v {
        Some(n) if n < 0 => {
            errs.push(FieldError {
                field: format!("{at}.{field}"),
                message: format!("must be greater than or equal to 0, got {n}"),
            });
            None
        }
        other => other,
    };
    let parallelism = count(spec.and_then(|s| s.parallelism), "parallelism", &mut errs);
    let completions = count(spec.and_then(|s| s.completions), "completions", &mut errs);
    // Pods running at once: parallelism, never more than the completions left.
    let n = match (parallelism.unwrap_or(1), completions) {
        (p, Some(c)) => p.min(c),
        (p, None) => p,
    };
    let parts = Parts {
        kind,
        meta,
        has_spec: spec.is_some(),
        selector: spec.and_then(|s| s.selector.as_ref()),
        selector_required: false,
        template: spec.map(|s| &s.template),
        replicas: Some(n),
        first: 0,
    };
    let result = parts.build_at(at);
    match (result, errs.is_empty()) {
        (Ok(w), true) => Ok(w),
        (Ok(_), false) => Err(errs),
        (Err(more), _) => {
            errs.extend(more);
            Err(errs)
        }
    }
}

/// What every workload kind has, borrowed from its API object.
struct Parts<'a> {
    kind: WorkloadKind,
    meta: &'a ObjectMeta,
    has_spec: bool,
    selector: Option<&'a LabelSelector>,
    /// apps/v1 requires a non-empty selector; a Job generates its own.
    selector_required: bool,
    template: Option<&'a core::PodTemplateSpec>,
    /// `None`: one per node (DaemonSet).
    replicas: Option<i32>,
    first: i32,
}

impl Parts<'_> {
    fn build(self) -> Result<Workload, Vec<FieldError>> {
        self.build_at("spec")
    }

    /// Builds it; `at` is where the workload's pod spec fields are (`spec`, or
    /// `spec.jobTemplate.spec` for a CronJob).
    fn build_at(self, at: &str) -> Result<Workload, Vec<FieldError>> {
        let mut errs = Vec::new();
        let name = self.meta.name.clone().unwrap_or_default();
        if name.is_empty() {
            push(
                &mut errs,
                "metadata.name".to_owned(),
                format!("a {} needs a name", self.kind),
            );
        }
        let namespace = self
            .meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        if !self.has_spec {
            push(
                &mut errs,
                at.to_owned(),
                format!("a {} needs a spec", self.kind),
            );
            return Err(errs);
        }
        let replicas = match self.replicas {
            None => Replicas::PerNode,
            Some(n) if n < 0 => {
                push(
                    &mut errs,
                    format!("{at}.replicas"),
                    format!("must be greater than or equal to 0, got {n}"),
                );
                Replicas::Count { n: 0, first: 0 }
            }
            Some(n) => {
                let n = u32::try_from(n).unwrap_or(0);
                if n > MAX_PODS {
                    push(
                        &mut errs,
                        format!("{at}.replicas"),
                        format!("{n} pods: netward expands at most {MAX_PODS} per workload"),
                    );
                }
                let first = match u32::try_from(self.first) {
                    Ok(f) => f,
                    Err(_) => {
                        push(
                            &mut errs,
                            format!("{at}.ordinals.start"),
                            format!("must be greater than or equal to 0, got {}", self.first),
                        );
                        0
                    }
                };
                Replicas::Count { n, first }
            }
        };
        let tpl_field = format!("{at}.template");
        let Some(template) = self.template else {
            push(
                &mut errs,
                tpl_field,
                format!("a {} needs a pod template", self.kind),
            );
            return Err(errs);
        };
        let labels: Labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector_field = format!("{at}.selector");
        match self.selector {
            None if self.selector_required => push(
                &mut errs,
                selector_field,
                format!("a {} needs a selector", self.kind),
            ),
            None => {}
            Some(sel) => {
                let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
                if empty && self.selector_required {
                    push(
                        &mut errs,
                        selector_field,
                        format!(
                            "empty selector is invalid for a {}: give matchLabels",
                            self.kind
                        ),
                    );
                } else {
                    match Selector::from_api(sel, &selector_field) {
                        Ok(s) if !s.matches(&labels) => push(
                            &mut errs,
                            format!("{tpl_field}.metadata.labels"),
                            format!(
                                "`selector` does not match template `labels` (selector {s}, labels {})",
                                show_labels(&labels)
                            ),
                        ),
                        Ok(_) => {}
                        Err(more) => errs.extend(more),
                    }
                }
            }
        }
        let Some(pod_spec) = template.spec.clone() else {
            errs.push(FieldError {
                field: format!("{tpl_field}.spec"),
                message: "a pod template needs a spec with containers".to_owned(),
            });
            return Err(errs);
        };
        if pod_spec.containers.is_empty() {
            errs.push(FieldError {
                field: format!("{tpl_field}.spec.containers"),
                message: "a pod template needs at least one container".to_owned(),
            });
        }
        let api_pod = core::Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(pod_spec),
            status: None,
        };
        let template = match Pod::from_api(&api_pod) {
            Ok(p) => Some(p),
            Err(more) => {
                errs.extend(more.into_iter().map(|e| FieldError {
                    field: format!("{tpl_field}.{}", e.field),
                    message: e.message,
                }));
                None
            }
        };
        match template {
            Some(template) if errs.is_empty() => {
                let mut w = Workload {
                    kind: self.kind,
                    namespace,
                    name,
                    template,
                    replicas,
                    pods: Vec::new(),
                };
                w.template.owner = Some(w.owner());
                Ok(w)
            }
            _ => Err(errs),
        }
    }
}

fn push(errs: &mut Vec<FieldError>, field: String, message: String) {
    errs.push(FieldError { field, message });
}

fn show_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "none".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
