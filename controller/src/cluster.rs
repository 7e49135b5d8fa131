//! The cluster state the engine compiles from: every object keyed by name.

use std::collections::BTreeMap;

use crate::cluster_policy::ClusterNetworkPolicy;
use crate::model::{Namespace, NetworkPolicy, Node, Pod, Service};

/// `(namespace, name)`.
pub type ObjectKey = (String, String);

/// Every object the engine reads, by key. Sources (manifest files, kube watchers)
/// fill it; [`crate::Snapshot::compile`] turns it into an immutable snapshot.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by `(namespace, name)`.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// NetworkPolicies by `(namespace, name)`.
    pub policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// Services by `(namespace, name)`.
    pub services: BTreeMap<ObjectKey, Service>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// ClusterNetworkPolicies by name (cluster-scoped).
    pub cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
}

impl Cluster {
    /// Adds or replaces a namespace.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Adds or replaces a pod, creating its namespace (with only the automatic label) if unknown.
    pub fn upsert_pod(&mut self, pod: Pod) {
        self.ensure_namespace(&pod.namespace);
        self.pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    /// Adds or replaces a policy.
    pub fn upsert_policy(&mut self, policy: NetworkPolicy) {
        self.ensure_namespace(&policy.namespace);
        self.policies
            .insert((policy.namespace.clone(), policy.name.clone()), policy);
    }

    /// Adds or replaces a service.
    pub fn upsert_service(&mut self, svc: Service) {
        self.ensure_namespace(&svc.namespace);
        self.services
            .insert((svc.namespace.clone(), svc.name.clone()), svc);
    }

    /// Adds or replaces a node.
    pub fn upsert_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Adds or replaces a ClusterNetworkPolicy.
    pub fn upsert_cluster_policy(&mut self, policy: ClusterNetworkPolicy) {
        self.cluster_policies.insert(policy.name.clone(), policy);
    }

    /// ClusterNetworkPolicies that failed validation (they deny what their subject selects).
    pub fn invalid_cluster_policies(&self) -> impl Iterator<Item = &ClusterNetworkPolicy> {
        self.cluster_policies
            .values()
            .filter(|p| !p.errors.is_empty())
    }

    fn ensure_namespace(&mut self, name: &str) {
        if !self.namespaces.contains_key(name) {
            self.namespaces
                .insert(name.to_owned(), Namespace::new(name));
        }
    }

    /// Whether any policy failed validation.
    pub fn invalid_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values().filter(|p| !p.errors.is_empty())
    }
}
