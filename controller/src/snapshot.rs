//! The compiled, immutable policy snapshot.
//!
//! Compilation resolves every selector once: each pod gets the list of policies
//! that isolate it (per direction), and each rule gets the set of pods its peers
//! select, as a bitset. A decision is then a handful of lookups (see [`crate::engine`]).
//! A single pod's change is applied incrementally ([`Snapshot::with_pod`]), sharing
//! everything it does not touch with the previous snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Cluster, ObjectKey};
use crate::model::{
    IpBlock, Mode, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, Rule, Service,
};

/// Index of a pod in a snapshot (stable across incremental updates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub(crate) u32);

/// Index of a policy in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub(crate) u32);

/// A fixed-size bitset over pod ids. Bits beyond the end read as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodSet {
    words: Vec<u64>,
}

impl PodSet {
    fn with_len(n: usize) -> PodSet {
        PodSet {
            words: vec![0; n.div_ceil(64)],
        }
    }

    #[inline]
    pub(crate) fn contains(&self, id: PodId) -> bool {
        let i = id.0 as usize;
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn set(&mut self, id: PodId, on: bool) {
        let i = id.0 as usize;
        if i / 64 >= self.words.len() {
            if !on {
                return;
            }
            self.words.resize(i / 64 + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        if on {
            self.words[i / 64] |= bit;
        } else {
            self.words[i / 64] &= !bit;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// A rule with its peers resolved.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    /// `None`: the rule matches every peer.
    pub(crate) peers: Option<ResolvedPeers>,
}

/// The pods and IP blocks a rule's peers select.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedPeers {
    pub(crate) pods: Arc<PodSet>,
    pub(crate) blocks: Arc<[IpBlock]>,
}

/// A policy with its rules resolved.
#[derive(Clone, Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) spec: Arc<NetworkPolicy>,
    /// Audit when the policy or its namespace says so.
    pub(crate) mode: Mode,
    pub(crate) ingress: Option<Arc<Vec<CompiledRule>>>,
    pub(crate) egress: Option<Arc<Vec<CompiledRule>>>,
}

/// The policies that isolate a pod in one direction, split by mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Isolation {
    pub(crate) enforce: Arc<[PolicyId]>,
    pub(crate) audit: Arc<[PolicyId]>,
}

/// A pod as the snapshot holds it.
#[derive(Clone, Debug)]
pub(crate) struct PodEntry {
    pub(crate) pod: Arc<Pod>,
    /// Whether the pod still exists (deleted pods stay as tombstones so ids are stable).
    pub(crate) present: bool,
    /// Whether the pod is a policy endpoint (present, running, not host-network).
    pub(crate) live: bool,
    pub(crate) ingress: Isolation,
    pub(crate) egress: Isolation,
}

/// The immutable compiled policy state. Share it as `Arc<Snapshot>`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    pub(crate) pods: Vec<PodEntry>,
    pub(crate) pod_by_key: HashMap<ObjectKey, PodId>,
    pub(crate) pod_by_ip: HashMap<IpAddr, PodId>,
    pub(crate) node_by_ip: Arc<HashMap<IpAddr, Arc<str>>>,
    pub(crate) policies: Vec<CompiledPolicy>,
    pub(crate) policy_by_key: Arc<HashMap<ObjectKey, PolicyId>>,
    pub(crate) services_by_ip: Arc<HashMap<IpAddr, Arc<Service>>>,
    pub(crate) services: Arc<Vec<Arc<Service>>>,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot::compile(&Cluster::default())
    }
}

fn policy_mode(policy: &NetworkPolicy, namespaces: &BTreeMap<String, Arc<Namespace>>) -> Mode {
    let ns_audit = namespaces
        .get(&policy.namespace)
        .is_some_and(|n| n.mode == Mode::Audit);
    if policy.mode == Mode::Audit || ns_audit {
        Mode::Audit
    } else {
        Mode::Enforce
    }
}

/// Whether a policy's `podSelector` selects this pod (an invalid selector selects all: fail closed).
fn selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    policy.namespace == pod.namespace
        && policy
            .pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(&pod.labels))
}

/// Whether one pod peer selects this pod (which must be live).
fn peer_selects(
    peer: &Peer,
    policy_ns: &str,
    pod: &Pod,
    namespaces: &BTreeMap<String, Arc<Namespace>>,
) -> bool {
    let Peer::Pods {
        namespaces: scope,
        pods,
    } = peer
    else {
        return false;
    };
    let ns_ok = match scope {
        NamespaceScope::Own => pod.namespace == policy_ns,
        NamespaceScope::Selected(sel) => namespaces
            .get(&pod.namespace)
            .is_some_and(|ns| sel.matches(&ns.labels)),
    };
    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
}

fn is_live(pod: &Pod) -> bool {
    !pod.terminated && !pod.host_network
}

impl Snapshot {
    /// Compiles a cluster into a snapshot.
    pub fn compile(cluster: &Cluster) -> Snapshot {
        let namespaces: BTreeMap<String, Arc<Namespace>> = cluster
            .namespaces
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();

        // Pods, in key order.
        let mut pods = Vec::with_capacity(cluster.pods.len());
        let mut pod_by_key = HashMap::with_capacity(cluster.pods.len());
        let mut pod_by_ip = HashMap::with_capacity(cluster.pods.len() * 2);
        let mut pods_by_ns: HashMap<&str, Vec<PodId>> = HashMap::new();
        for (i, (key, pod)) in cluster.pods.iter().enumerate() {
            let id = PodId(u32::try_from(i).unwrap_or(u32::MAX));
            let live = is_live(pod);
            if live {
                for ip in &pod.ips {
                    pod_by_ip.entry(*ip).or_insert(id);
                }
                pods_by_ns
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push(id);
            }
            pod_by_key.insert(key.clone(), id);
            pods.push(PodEntry {
                pod: Arc::new(pod.clone()),
                present: true,
                live,
                ingress: Isolation::default(),
                egress: Isolation::default(),
            });
        }

        // Policies, in key order; per-pod isolation lists built alongside.
        let mut iso_in: Vec<(Vec<PolicyId>, Vec<PolicyId>)> = vec![Default::default(); pods.len()];
        let mut iso_eg: Vec<(Vec<PolicyId>, Vec<PolicyId>)> = vec![Default::default(); pods.len()];
        let mut policies = Vec::with_capacity(cluster.policies.len());
        let mut policy_by_key = HashMap::with_capacity(cluster.policies.len());
        for (i, (key, spec)) in cluster.policies.iter().enumerate() {
            let id = PolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            let mode = policy_mode(spec, &namespaces);
            let compile_rules = |rules: &[Rule]| {
                Arc::new(
                    rules
                        .iter()
                        .map(|r| compile_rule(r, &spec.namespace, &namespaces, &pods, &pods_by_ns))
                        .collect::<Vec<_>>(),
                )
            };
            let ingress = spec.ingress.as_deref().map(compile_rules);
            let egress = spec.egress.as_deref().map(compile_rules);
            for pid in pods_by_ns
                .get(spec.namespace.as_str())
                .into_iter()
                .flatten()
            {
                let entry = &pods[pid.0 as usize];
                if !selects(spec, &entry.pod) {
                    continue;
                }
                let slot = |lists: &mut (Vec<PolicyId>, Vec<PolicyId>)| match mode {
                    Mode::Enforce => lists.0.push(id),
                    Mode::Audit => lists.1.push(id),
                };
                if ingress.is_some() {
                    slot(&mut iso_in[pid.0 as usize]);
                }
                if egress.is_some() {
                    slot(&mut iso_eg[pid.0 as usize]);
                }
            }
            policy_by_key.insert(key.clone(), id);
            policies.push(CompiledPolicy {
                spec: Arc::new(spec.clone()),
                mode,
                ingress,
                egress,
            });
        }

        // Intern the isolation lists: most pods share a handful of them.
        let mut interned: HashMap<Vec<PolicyId>, Arc<[PolicyId]>> = HashMap::new();
        let mut intern = |v: Vec<PolicyId>| -> Arc<[PolicyId]> {
            interned
                .entry(v)
                .or_insert_with_key(|k| Arc::from(k.as_slice()))
                .clone()
        };
        for (entry, ((ie, ia), (ee, ea))) in pods.iter_mut().zip(iso_in.into_iter().zip(iso_eg)) {
            entry.ingress = Isolation {
                enforce: intern(ie),
                audit: intern(ia),
            };
            entry.egress = Isolation {
                enforce: intern(ee),
                audit: intern(ea),
            };
        }

        let mut node_by_ip = HashMap::new();
        for node in cluster.nodes.values() {
            let name: Arc<str> = Arc::from(node.name.as_str());
            for ip in &node.ips {
                node_by_ip.insert(*ip, name.clone());
            }
        }
        let services: Vec<Arc<Service>> = cluster
            .services
            .values()
            .map(|s| Arc::new(s.clone()))
            .collect();
        let mut services_by_ip = HashMap::new();
        for s in &services {
            for ip in &s.cluster_ips {
                services_by_ip.insert(*ip, s.clone());
            }
        }

        Snapshot {
            generation: 1,
            namespaces: Arc::new(namespaces),
            pods,
            pod_by_key,
            pod_by_ip,
            node_by_ip: Arc::new(node_by_ip),
            policies,
            policy_by_key: Arc::new(policy_by_key),
            services_by_ip: Arc::new(services_by_ip),
            services: Arc::new(services),
        }
    }

    /// A new snapshot with one pod added or replaced, sharing everything else.
    /// Equivalent to recompiling the cluster with that pod changed.
    pub fn with_pod(&self, pod: Pod) -> Snapshot {
        let mut next = self.clone();
        next.generation += 1;
        if !next.namespaces.contains_key(&pod.namespace) {
            Arc::make_mut(&mut next.namespaces).insert(
                pod.namespace.clone(),
                Arc::new(Namespace::new(&pod.namespace)),
            );
        }
        let key = (pod.namespace.clone(), pod.name.clone());
        let id = match next.pod_by_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = PodId(u32::try_from(next.pods.len()).unwrap_or(u32::MAX));
                next.pod_by_key.insert(key, id);
                next.pods.push(PodEntry {
                    pod: Arc::new(pod.clone()),
                    present: true,
                    live: false,
                    ingress: Isolation::default(),
                    egress: Isolation::default(),
                });
                id
            }
        };
        next.update_pod(id, Some(pod));
        next
    }

    /// A new snapshot with one pod removed.
    pub fn without_pod(&self, namespace: &str, name: &str) -> Snapshot {
        let mut next = self.clone();
        next.generation += 1;
        if let Some(id) = next
            .pod_by_key
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            next.update_pod(id, None);
            next.pods[id.0 as usize].present = false;
        }
        next
    }

    /// Recomputes everything that depends on one pod: its IP index entries, the
    /// policies that isolate it, and its membership in every rule's peer set.
    fn update_pod(&mut self, id: PodId, pod: Option<Pod>) {
        let idx = id.0 as usize;
        // Drop the old IP index entries.
        for ip in &self.pods[idx].pod.ips {
            if self.pod_by_ip.get(ip) == Some(&id) {
                self.pod_by_ip.remove(ip);
            }
        }
        let (pod, live) = match pod {
            Some(p) => {
                let live = is_live(&p);
                (Arc::new(p), live)
            }
            None => (self.pods[idx].pod.clone(), false),
        };
        if live {
            for ip in &pod.ips {
                self.pod_by_ip.entry(*ip).or_insert(id);
            }
        }
        let mut iso_in = (Vec::new(), Vec::new());
        let mut iso_eg = (Vec::new(), Vec::new());
        let namespaces = self.namespaces.clone();
        for (i, pol) in self.policies.iter_mut().enumerate() {
            let pid = PolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            if live && selects(&pol.spec, &pod) {
                let lists_in = &mut iso_in;
                let lists_eg = &mut iso_eg;
                let push = |l: &mut (Vec<PolicyId>, Vec<PolicyId>)| match pol.mode {
                    Mode::Enforce => l.0.push(pid),
                    Mode::Audit => l.1.push(pid),
                };
                if pol.ingress.is_some() {
                    push(lists_in);
                }
                if pol.egress.is_some() {
                    push(lists_eg);
                }
            }
            let spec = pol.spec.clone();
            for (rules, specs) in [
                (&mut pol.ingress, spec.ingress.as_deref()),
                (&mut pol.egress, spec.egress.as_deref()),
            ] {
                let (Some(rules), Some(specs)) = (rules.as_mut(), specs) else {
                    continue;
                };
                for (r, rspec) in specs.iter().enumerate() {
                    let Some(peers) = &rules[r].peers else {
                        continue;
                    };
                    let want = live
                        && rspec
                            .peers
                            .iter()
                            .flatten()
                            .any(|p| peer_selects(p, &spec.namespace, &pod, &namespaces));
                    if peers.pods.contains(id) != want {
                        let rule = &mut Arc::make_mut(rules)[r];
                        if let Some(peers) = rule.peers.as_mut() {
                            Arc::make_mut(&mut peers.pods).set(id, want);
                        }
                    }
                }
            }
        }
        let entry = &mut self.pods[idx];
        entry.pod = pod;
        entry.live = live;
        entry.ingress = Isolation {
            enforce: iso_in.0.into(),
            audit: iso_in.1.into(),
        };
        entry.egress = Isolation {
            enforce: iso_eg.0.into(),
            audit: iso_eg.1.into(),
        };
    }

    /// Increments with every change; 1 for a fresh compile.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets the generation (sources number their snapshots).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The pod behind an id.
    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize].pod
    }

    /// The policy behind an id.
    pub fn policy(&self, id: PolicyId) -> &NetworkPolicy {
        &self.policies[id.0 as usize].spec
    }

    /// Whether a policy is enforced or audit-only (its own mode or its namespace's).
    pub fn policy_mode(&self, id: PolicyId) -> Mode {
        self.policies[id.0 as usize].mode
    }

    /// Looks a policy up by namespace and name.
    pub fn policy_id(&self, namespace: &str, name: &str) -> Option<PolicyId> {
        self.policy_by_key
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// Every pod that is a policy endpoint, sorted by `namespace/name`.
    pub fn pod_ids(&self) -> Vec<PodId> {
        let mut ids: Vec<PodId> = (0..self.pods.len())
            .filter(|i| self.pods[*i].live)
            .map(|i| PodId(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        ids.sort_by(|a, b| {
            let (pa, pb) = (self.pod(*a), self.pod(*b));
            (&pa.namespace, &pa.name).cmp(&(&pb.namespace, &pb.name))
        });
        ids
    }

    /// Every pod in the snapshot (including host-network and terminated ones), sorted.
    pub fn all_pods(&self) -> impl Iterator<Item = &Pod> {
        let mut v: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|e| e.present)
            .map(|e| e.pod.as_ref())
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v.into_iter()
    }

    /// Every policy, in `namespace/name` order.
    pub fn policy_ids(&self) -> impl Iterator<Item = PolicyId> {
        (0..self.policies.len()).map(|i| PolicyId(u32::try_from(i).unwrap_or(u32::MAX)))
    }

    /// The Service whose ClusterIP this is.
    pub fn service_for_ip(&self, ip: IpAddr) -> Option<&Service> {
        self.services_by_ip.get(&ip).map(|s| s.as_ref())
    }

    /// Every Service, in `namespace/name` order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().map(|s| s.as_ref())
    }

    /// The node that owns this IP, if it is a node address.
    pub fn node_for_ip(&self, ip: IpAddr) -> Option<&str> {
        self.node_by_ip.get(&ip).map(|s| s.as_ref())
    }

    /// The namespace with this name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name).map(|n| n.as_ref())
    }

    /// Policies that failed validation (they isolate, and allow nothing).
    pub fn invalid_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies
            .iter()
            .map(|p| p.spec.as_ref())
            .filter(|p| !p.errors.is_empty())
    }

    /// An estimate of the heap memory the snapshot holds (pods, indexes, peer sets).
    pub fn approx_heap_bytes(&self) -> usize {
        let pod_bytes: usize = self
            .pods
            .iter()
            .map(|e| {
                let p = &e.pod;
                std::mem::size_of::<PodEntry>()
                    + std::mem::size_of::<Pod>()
                    + p.namespace.capacity()
                    + p.name.capacity()
                    + p.labels
                        .iter()
                        .map(|(k, v)| k.capacity() + v.capacity() + 48)
                        .sum::<usize>()
                    + p.ips.capacity() * std::mem::size_of::<IpAddr>()
                    + p.ports.capacity() * 48
            })
            .sum();
        let index_bytes = (self.pod_by_ip.capacity() + self.pod_by_key.capacity()) * 48;
        let mut seen = std::collections::HashSet::new();
        let mut rule_bytes = 0;
        for p in &self.policies {
            for rules in [&p.ingress, &p.egress].into_iter().flatten() {
                for r in rules.iter() {
                    if let Some(peers) = &r.peers
                        && seen.insert(Arc::as_ptr(&peers.pods))
                    {
                        rule_bytes += peers.pods.heap_bytes();
                    }
                    rule_bytes += std::mem::size_of::<CompiledRule>();
                }
            }
        }
        pod_bytes + index_bytes + rule_bytes + self.policies.len() * 512
    }
}

fn compile_rule(
    rule: &Rule,
    policy_ns: &str,
    namespaces: &BTreeMap<String, Arc<Namespace>>,
    pods: &[PodEntry],
    pods_by_ns: &HashMap<&str, Vec<PodId>>,
) -> CompiledRule {
    let Some(peers) = &rule.peers else {
        return CompiledRule { peers: None };
    };
    let mut set = PodSet::with_len(pods.len());
    let mut blocks = Vec::new();
    for peer in peers {
        match peer {
            Peer::IpBlock(b) => blocks.push(b.clone()),
            Peer::Pods {
                namespaces: scope,
                pods: sel,
            } => {
                let mut add_ns = |ns: &str| {
                    for id in pods_by_ns.get(ns).into_iter().flatten() {
                        if sel
                            .as_ref()
                            .is_none_or(|s| s.matches(&pods[id.0 as usize].pod.labels))
                        {
                            set.set(*id, true);
                        }
                    }
                };
                match scope {
                    NamespaceScope::Own => add_ns(policy_ns),
                    NamespaceScope::Selected(nsel) => {
                        for ns in namespaces.values() {
                            if nsel.matches(&ns.labels) {
                                add_ns(&ns.name);
                            }
                        }
                    }
                }
            }
        }
    }
    CompiledRule {
        peers: Some(ResolvedPeers {
            pods: Arc::new(set),
            blocks: blocks.into(),
        }),
    }
}
