//! The compiled, immutable policy snapshot.
//!
//! Compilation resolves every selector once: each pod gets the list of policies
//! that isolate it (per direction), and each rule gets the set of pods its peers
//! select, as a bitset. A decision is then a handful of lookups (see [`crate::engine`]).
//! Compilation groups live pods by namespace and label set (pods of one workload share
//! one) and evaluates each distinct selector once per distinct label set.
//!
//! A single pod's change is applied incrementally ([`Snapshot::with_pod`]), sharing
//! everything it does not touch with the previous snapshot: pods are stored in shared
//! chunks and the key and address indexes in shared shards, so an update copies one
//! chunk, the shards it writes to (none for a label change) and the rule peer sets
//! whose membership changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::{Cluster, ObjectKey};
use crate::cluster_policy::{ClusterNetworkPolicy, ClusterPeer, PodsIn};
use crate::model::{
    IpBlock, Labels, Mode, Namespace, NamespaceScope, NetworkPolicy, Peer, Pod, Rule, Selector,
    Service,
};

/// Index of a pod in a snapshot (stable across incremental updates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub(crate) u32);

/// Index of a policy in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub(crate) u32);

/// Index of a ClusterNetworkPolicy in a snapshot. Ids follow evaluation order: the
/// Admin tier, then the Baseline tier, each by priority, then by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterPolicyId(pub(crate) u32);

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

/// The policies that isolate a pod in one direction, split by mode, and the
/// ClusterNetworkPolicies whose subject it is for that direction, in evaluation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Isolation {
    pub(crate) enforce: Arc<[PolicyId]>,
    pub(crate) audit: Arc<[PolicyId]>,
    pub(crate) cluster: Arc<[ClusterPolicyId]>,
}

/// A ClusterNetworkPolicy rule with its peers resolved.
#[derive(Clone, Debug)]
pub(crate) struct CompiledClusterRule {
    /// The live pods its `namespaces` and `pods` peers select.
    pub(crate) pods: Arc<PodSet>,
    /// Its `networks`.
    pub(crate) networks: Arc<[IpNet]>,
    /// The addresses of the nodes its `nodes` peers select, sorted.
    pub(crate) node_ips: Arc<[IpAddr]>,
    /// The fail-closed rule of an invalid policy: every peer.
    pub(crate) everything: bool,
}

/// A ClusterNetworkPolicy with its rules resolved.
#[derive(Clone, Debug)]
pub(crate) struct CompiledClusterPolicy {
    pub(crate) spec: Arc<ClusterNetworkPolicy>,
    pub(crate) ingress: Option<Arc<Vec<CompiledClusterRule>>>,
    pub(crate) egress: Option<Arc<Vec<CompiledClusterRule>>>,
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

/// Pods per storage chunk, as a power of two: changing one pod copies its chunk
/// (256 entries, ~20 KB), not the whole table.
const CHUNK_BITS: u32 = 8;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The pods of a snapshot in fixed-size shared chunks. Cloning the table copies one
/// pointer per chunk; [`PodTable::get_mut`] copies only the chunk it writes to.
#[derive(Clone, Debug, Default)]
pub(crate) struct PodTable {
    chunks: Vec<Arc<[PodEntry]>>,
    len: usize,
}

impl PodTable {
    fn from_vec(entries: Vec<PodEntry>) -> PodTable {
        let len = entries.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut rest = entries.into_iter();
        loop {
            let chunk: Arc<[PodEntry]> = rest.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        PodTable { chunks, len }
    }

    /// How many entries (tombstones included).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entries in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &PodEntry> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The entry for `id`, copying its chunk first if another snapshot shares it.
    fn get_mut(&mut self, id: PodId) -> &mut PodEntry {
        let i = id.0 as usize;
        &mut Arc::make_mut(&mut self.chunks[i >> CHUNK_BITS])[i & (CHUNK - 1)]
    }

    /// Appends an entry, returning its id.
    fn push(&mut self, entry: PodEntry) -> PodId {
        let id = PodId(u32::try_from(self.len).unwrap_or(u32::MAX));
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                let mut grown = Vec::with_capacity(last.len() + 1);
                grown.extend_from_slice(last);
                grown.push(entry);
                *last = grown.into();
            }
            _ => self.chunks.push(Arc::from([entry])),
        }
        self.len += 1;
        id
    }

    fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * size_of::<Arc<[PodEntry]>>()
            + self
                .chunks
                .iter()
                .map(|c| ARC_HEADER + size_of_val::<[PodEntry]>(c))
                .sum::<usize>()
    }
}

impl std::ops::Index<usize> for PodTable {
    type Output = PodEntry;

    #[inline]
    fn index(&self, i: usize) -> &PodEntry {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

/// Shards per index, as a power of two: adding, removing or re-addressing one pod
/// copies one shard (~1/64 of the index), not the whole map.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// A key of a sharded index, with a cheap hash that picks its shard.
pub(crate) trait ShardKey: Eq + std::hash::Hash {
    /// The hasher within a shard.
    type Hasher: std::hash::BuildHasher + Default + Clone;

    /// The shard, in `0..SHARDS`.
    fn shard(&self) -> usize;

    /// Heap bytes the key owns.
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// Spreads a 64-bit value's bits into the top `SHARD_BITS` (Fibonacci hashing).
#[inline]
fn shard_of(x: u64) -> usize {
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARD_BITS)) as usize
}

/// The IP index's hasher: a multiply-rotate over the address's words, several times
/// cheaper than SipHash on the datapath's per-packet lookup. Its keys are pod addresses
/// from pod status (IPAM), not the addresses looked up, so crowding one bucket would
/// take control of many pods' IPs; the key index keeps SipHash (pod names are chosen
/// by users).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AddrHasher(u64);

impl AddrHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::hash::Hasher for AddrHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Fold the well-mixed high bits into the low ones the table indexes by.
        self.0 ^ (self.0 >> 32)
    }
}

impl ShardKey for IpAddr {
    type Hasher = std::hash::BuildHasherDefault<AddrHasher>;

    #[inline]
    fn shard(&self) -> usize {
        shard_of(match self {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => {
                let b = a.to_bits();
                (b as u64) ^ ((b >> 64) as u64)
            }
        })
    }
}

impl ShardKey for ObjectKey {
    type Hasher = std::hash::RandomState;

    fn shard(&self) -> usize {
        // FNV-1a over `namespace \xff name`.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes().chain([0xff]).chain(self.1.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        shard_of(h)
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() + self.1.capacity()
    }
}

/// A map to pod ids split into shared shards: cloning copies `SHARDS` pointers, and a
/// write copies only its shard, and only when the value actually changes.
#[derive(Clone, Debug)]
pub(crate) struct ShardedIndex<K: ShardKey> {
    shards: Vec<Arc<HashMap<K, PodId, K::Hasher>>>,
}

impl<K: ShardKey + Clone> ShardedIndex<K> {
    /// Builds the index; for a repeated key the first entry wins.
    fn build(entries: impl IntoIterator<Item = (K, PodId)>, expected: usize) -> ShardedIndex<K> {
        ShardedIndex::build_with(entries, expected, |_, _, _| {})
    }

    /// Builds the index; for a repeated key, `conflict(key, held, new)` decides, by
    /// writing to `held`, which id the index keeps.
    fn build_with(
        entries: impl IntoIterator<Item = (K, PodId)>,
        expected: usize,
        mut conflict: impl FnMut(&K, &mut PodId, PodId),
    ) -> ShardedIndex<K> {
        let per_shard = expected.div_ceil(SHARDS) + expected.div_ceil(SHARDS) / 4;
        let mut maps: Vec<HashMap<K, PodId, K::Hasher>> = (0..SHARDS)
            .map(|_| HashMap::with_capacity_and_hasher(per_shard, K::Hasher::default()))
            .collect();
        for (k, id) in entries {
            match maps[k.shard()].entry(k) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(id);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let (k, held) = (o.key().clone(), o.get_mut());
                    conflict(&k, held, id);
                }
            }
        }
        ShardedIndex {
            shards: maps.into_iter().map(Arc::new).collect(),
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<&PodId> {
        self.shards[key.shard()].get(key)
    }

    fn insert(&mut self, key: K, id: PodId) {
        Arc::make_mut(&mut self.shards[key.shard()]).insert(key, id);
    }

    fn remove(&mut self, key: &K) -> Option<PodId> {
        let shard = &mut self.shards[key.shard()];
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).remove(key)
    }

    fn heap_bytes(&self) -> usize {
        self.shards.capacity() * size_of::<Arc<HashMap<K, PodId, K::Hasher>>>()
            + self
                .shards
                .iter()
                .map(|m| {
                    ARC_HEADER
                        + size_of::<HashMap<K, PodId, K::Hasher>>()
                        + hash_table_bytes::<(K, PodId)>(m.capacity())
                        + m.keys().map(ShardKey::heap_bytes).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// The immutable compiled policy state. Share it as `Arc<Snapshot>`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) generation: u64,
    /// False only for [`Snapshot::not_ready`]: the source has not seen the whole cluster yet.
    pub(crate) ready: bool,
    pub(crate) namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    pub(crate) pods: PodTable,
    pub(crate) pod_by_key: ShardedIndex<ObjectKey>,
    /// Each address's owner among the live pods claiming it ([`Pod::claims_ip_before`]).
    pub(crate) pod_by_ip: ShardedIndex<IpAddr>,
    /// For the rare address several live pods claim: the claimants that do not own it,
    /// sorted by id, so that the next one takes over when the owner goes.
    pub(crate) ip_contenders: Arc<HashMap<IpAddr, Vec<PodId>>>,
    pub(crate) node_by_ip: Arc<HashMap<IpAddr, Arc<str>>>,
    /// Each node's pod CIDRs, by node name (nodes without any are left out).
    pub(crate) node_pod_cidrs: Arc<BTreeMap<String, Vec<IpNet>>>,
    pub(crate) policies: Arc<Vec<CompiledPolicy>>,
    pub(crate) policy_by_key: Arc<HashMap<ObjectKey, PolicyId>>,
    /// In evaluation order (see [`ClusterPolicyId`]).
    pub(crate) cluster_policies: Arc<Vec<CompiledClusterPolicy>>,
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

/// Whether one pod peer selects this pod (which must be live); `ns_labels` are the
/// labels of the pod's namespace, if it exists.
fn peer_selects(peer: &Peer, policy_ns: &str, pod: &Pod, ns_labels: Option<&Labels>) -> bool {
    let Peer::Pods {
        namespaces: scope,
        pods,
    } = peer
    else {
        return false;
    };
    let ns_ok = match scope {
        NamespaceScope::Own => pod.namespace == policy_ns,
        NamespaceScope::Selected(sel) => ns_labels.is_some_and(|l| sel.matches(l)),
    };
    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
}

/// Whether a ClusterNetworkPolicy's subject selects this (live) pod.
fn cnp_selects(policy: &ClusterNetworkPolicy, pod: &Pod, ns_labels: Option<&Labels>) -> bool {
    match &policy.subject {
        PodsIn::All => true,
        subject => ns_labels.is_some_and(|l| subject.matches(l, &pod.labels)),
    }
}

/// Whether one ClusterNetworkPolicy peer selects this (live) pod.
fn cnp_peer_selects(peer: &ClusterPeer, pod: &Pod, ns_labels: Option<&Labels>) -> bool {
    match peer {
        ClusterPeer::Pods(PodsIn::All) => true,
        ClusterPeer::Pods(p) => ns_labels.is_some_and(|l| p.matches(l, &pod.labels)),
        _ => false,
    }
}

/// `new` as a shared list, keeping `old`'s allocation when they are equal.
fn reuse<T: PartialEq>(old: &Arc<[T]>, new: Vec<T>) -> Arc<[T]> {
    if **old == *new {
        old.clone()
    } else {
        new.into()
    }
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
        let live: Vec<bool> = cluster.pods.values().map(is_live).collect();
        let mut pods = Vec::with_capacity(cluster.pods.len());
        for (pod, live) in cluster.pods.values().zip(&live) {
            pods.push(PodEntry {
                pod: Arc::new(pod.clone()),
                present: true,
                live: *live,
                ingress: Isolation::default(),
                egress: Isolation::default(),
            });
        }
        let id_of = |i: usize| PodId(u32::try_from(i).unwrap_or(u32::MAX));
        let pod_by_key = ShardedIndex::build(
            cluster
                .pods
                .keys()
                .enumerate()
                .map(|(i, k)| (k.clone(), id_of(i))),
            cluster.pods.len(),
        );
        // One owner per address; the other live claimants wait in `ip_contenders`.
        let mut ip_contenders: HashMap<IpAddr, Vec<PodId>> = HashMap::new();
        let pod_by_ip = ShardedIndex::build_with(
            cluster
                .pods
                .values()
                .enumerate()
                .filter(|(i, _)| live[*i])
                .flat_map(|(i, p)| p.ips.iter().map(move |ip| (*ip, id_of(i)))),
            cluster.pods.len(),
            |ip, held, new| {
                if *held == new {
                    return; // one pod listing an address twice
                }
                let loser = if pods[new.0 as usize]
                    .pod
                    .claims_ip_before(&pods[held.0 as usize].pod)
                {
                    std::mem::replace(held, new)
                } else {
                    new
                };
                ip_contenders.entry(*ip).or_default().push(loser);
            },
        );
        for others in ip_contenders.values_mut() {
            others.sort_unstable();
        }
        // Live pods grouped by namespace and label set: selectors are evaluated once
        // per distinct label set, not once per pod.
        let mut cx = CompileCx::new(cluster, &live);

        // Policies, in key order; per-pod isolation lists built alongside.
        let mut iso_in: Vec<(Vec<PolicyId>, Vec<PolicyId>)> = vec![Default::default(); pods.len()];
        let mut iso_eg: Vec<(Vec<PolicyId>, Vec<PolicyId>)> = vec![Default::default(); pods.len()];
        let mut policies = Vec::with_capacity(cluster.policies.len());
        let mut policy_by_key = HashMap::with_capacity(cluster.policies.len());
        for (i, (key, spec)) in cluster.policies.iter().enumerate() {
            let id = PolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            let mode = policy_mode(spec, &namespaces);
            let ingress = spec
                .ingress
                .as_deref()
                .map(|rules| cx.compile_rules(rules, &spec.namespace));
            let egress = spec
                .egress
                .as_deref()
                .map(|rules| cx.compile_rules(rules, &spec.namespace));
            // The pods it isolates: `selects()`, one label-set group at a time.
            let sel = spec.pod_selector.as_ref().map(|s| cx.pod_memo.id(s));
            cx.for_selected(&spec.namespace, sel, |group| {
                for pid in group {
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
            });
            policy_by_key.insert(key.clone(), id);
            policies.push(CompiledPolicy {
                spec: Arc::new(spec.clone()),
                mode,
                ingress,
                egress,
            });
        }
        // ClusterNetworkPolicies, in evaluation order; per-pod subject lists alongside.
        let mut cnp_in: Vec<Vec<ClusterPolicyId>> = vec![Vec::new(); pods.len()];
        let mut cnp_eg: Vec<Vec<ClusterPolicyId>> = vec![Vec::new(); pods.len()];
        let mut order: Vec<&ClusterNetworkPolicy> = cluster.cluster_policies.values().collect();
        order.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
        let mut cluster_policies = Vec::with_capacity(order.len());
        for (i, spec) in order.into_iter().enumerate() {
            let id = ClusterPolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            let ingress = spec
                .ingress
                .as_deref()
                .map(|rules| cx.compile_cluster_rules(rules, cluster));
            let egress = spec
                .egress
                .as_deref()
                .map(|rules| cx.compile_cluster_rules(rules, cluster));
            cx.for_pods_in(&spec.subject, |group| {
                for pid in group {
                    if ingress.is_some() {
                        cnp_in[pid.0 as usize].push(id);
                    }
                    if egress.is_some() {
                        cnp_eg[pid.0 as usize].push(id);
                    }
                }
            });
            cluster_policies.push(CompiledClusterPolicy {
                spec: Arc::new(spec.clone()),
                ingress,
                egress,
            });
        }
        drop(cx);
        let mut interned_cnp: HashMap<Vec<ClusterPolicyId>, Arc<[ClusterPolicyId]>> =
            HashMap::new();
        for (entry, (ci, ce)) in pods.iter_mut().zip(cnp_in.into_iter().zip(cnp_eg)) {
            for (iso, list) in [(&mut entry.ingress, ci), (&mut entry.egress, ce)] {
                iso.cluster = interned_cnp
                    .entry(list)
                    .or_insert_with_key(|k| Arc::from(k.as_slice()))
                    .clone();
            }
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
            entry.ingress.enforce = intern(ie);
            entry.ingress.audit = intern(ia);
            entry.egress.enforce = intern(ee);
            entry.egress.audit = intern(ea);
        }

        let mut node_by_ip = HashMap::new();
        for node in cluster.nodes.values() {
            let name: Arc<str> = Arc::from(node.name.as_str());
            for ip in &node.ips {
                node_by_ip.insert(*ip, name.clone());
            }
        }
        let node_pod_cidrs: BTreeMap<String, Vec<IpNet>> = cluster
            .nodes
            .values()
            .filter(|n| !n.pod_cidrs.is_empty())
            .map(|n| (n.name.clone(), n.pod_cidrs.clone()))
            .collect();
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
            ready: true,
            namespaces: Arc::new(namespaces),
            pods: PodTable::from_vec(pods),
            pod_by_key,
            pod_by_ip,
            ip_contenders: Arc::new(ip_contenders),
            node_by_ip: Arc::new(node_by_ip),
            node_pod_cidrs: Arc::new(node_pod_cidrs),
            policies: Arc::new(policies),
            policy_by_key: Arc::new(policy_by_key),
            cluster_policies: Arc::new(cluster_policies),
            services_by_ip: Arc::new(services_by_ip),
            services: Arc::new(services),
        }
    }

    /// The placeholder a source publishes before it has seen the whole cluster (the
    /// API watchers before their initial lists complete). Empty, generation 0, and
    /// [`Snapshot::is_ready`] is false: the datapath denies every new flow it sees
    /// while this is published, because an empty *ready* snapshot would allow everything.
    pub fn not_ready() -> Snapshot {
        let mut s = Snapshot::compile(&Cluster::default());
        s.generation = 0;
        s.ready = false;
        s
    }

    /// False for [`Snapshot::not_ready`]: nothing may be allowed from this snapshot.
    pub fn is_ready(&self) -> bool {
        self.ready
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
        let pod = Arc::new(pod);
        let id = match next.pod_by_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = next.pods.push(PodEntry {
                    pod: pod.clone(),
                    present: true,
                    live: false,
                    ingress: Isolation::default(),
                    egress: Isolation::default(),
                });
                next.pod_by_key.insert(key, id);
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
            next.pods.get_mut(id).present = false;
        }
        next
    }

    /// Recomputes everything that depends on one pod: its IP index entries, the
    /// policies that isolate it, and its membership in every rule's peer set. Only
    /// what changes is written (and so copied away from the previous snapshot).
    fn update_pod(&mut self, id: PodId, pod: Option<Arc<Pod>>) {
        let old = self.pods[id.0 as usize].pod.clone();
        let (pod, live) = match pod {
            Some(p) => {
                let live = is_live(&p);
                (p, live)
            }
            None => (old.clone(), false),
        };
        // Every address the pod claimed or claims gets its owner again, by the same
        // order the full compile applies; an unchanged entry is not written (a label
        // change writes nothing).
        let old_claims: &[IpAddr] = if self.pods[id.0 as usize].live {
            &old.ips
        } else {
            &[]
        };
        let new_claims: &[IpAddr] = if live { &pod.ips } else { &[] };
        for ip in old_claims.iter().chain(new_claims) {
            self.settle_ip(*ip, id, new_claims.contains(ip).then_some(&*pod));
        }

        // Read everything first; then copy and write only the rule sets that change.
        let ns_labels = self.namespaces.get(&pod.namespace).map(|n| &n.labels);
        let mut iso_in = (Vec::new(), Vec::new());
        let mut iso_eg = (Vec::new(), Vec::new());
        // (policy index, egress?, rule index, member?)
        let mut flips: Vec<(usize, bool, usize, bool)> = Vec::new();
        for (i, pol) in self.policies.iter().enumerate() {
            let pid = PolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            if live && selects(&pol.spec, &pod) {
                let push = |l: &mut (Vec<PolicyId>, Vec<PolicyId>)| match pol.mode {
                    Mode::Enforce => l.0.push(pid),
                    Mode::Audit => l.1.push(pid),
                };
                if pol.ingress.is_some() {
                    push(&mut iso_in);
                }
                if pol.egress.is_some() {
                    push(&mut iso_eg);
                }
            }
            let spec = &pol.spec;
            for (egress, rules, specs) in [
                (false, &pol.ingress, spec.ingress.as_deref()),
                (true, &pol.egress, spec.egress.as_deref()),
            ] {
                let (Some(rules), Some(specs)) = (rules.as_ref(), specs) else {
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
                            .any(|p| peer_selects(p, &spec.namespace, &pod, ns_labels));
                    if peers.pods.contains(id) != want {
                        flips.push((i, egress, r, want));
                    }
                }
            }
        }
        // ClusterNetworkPolicies: subject lists and `namespaces`/`pods` peer sets.
        let mut cnp_in = Vec::new();
        let mut cnp_eg = Vec::new();
        let mut cnp_flips: Vec<(usize, bool, usize, bool)> = Vec::new();
        for (i, cnp) in self.cluster_policies.iter().enumerate() {
            let cid = ClusterPolicyId(u32::try_from(i).unwrap_or(u32::MAX));
            if live && cnp_selects(&cnp.spec, &pod, ns_labels) {
                if cnp.ingress.is_some() {
                    cnp_in.push(cid);
                }
                if cnp.egress.is_some() {
                    cnp_eg.push(cid);
                }
            }
            for (egress, rules, specs) in [
                (false, &cnp.ingress, cnp.spec.ingress.as_deref()),
                (true, &cnp.egress, cnp.spec.egress.as_deref()),
            ] {
                let (Some(rules), Some(specs)) = (rules.as_ref(), specs) else {
                    continue;
                };
                for (r, rspec) in specs.iter().enumerate() {
                    let want = live
                        && rspec
                            .peers
                            .iter()
                            .any(|p| cnp_peer_selects(p, &pod, ns_labels));
                    if rules[r].pods.contains(id) != want {
                        cnp_flips.push((i, egress, r, want));
                    }
                }
            }
        }
        if !cnp_flips.is_empty() {
            let cnps = Arc::make_mut(&mut self.cluster_policies);
            for (i, egress, r, want) in cnp_flips {
                let cnp = &mut cnps[i];
                let rules = if egress {
                    &mut cnp.egress
                } else {
                    &mut cnp.ingress
                };
                if let Some(rules) = rules.as_mut() {
                    Arc::make_mut(&mut Arc::make_mut(rules)[r].pods).set(id, want);
                }
            }
        }
        if !flips.is_empty() {
            let policies = Arc::make_mut(&mut self.policies);
            for (i, egress, r, want) in flips {
                let pol = &mut policies[i];
                let rules = if egress {
                    &mut pol.egress
                } else {
                    &mut pol.ingress
                };
                if let Some(rules) = rules.as_mut()
                    && let Some(peers) = Arc::make_mut(rules)[r].peers.as_mut()
                {
                    Arc::make_mut(&mut peers.pods).set(id, want);
                }
            }
        }

        let entry = self.pods.get_mut(id);
        entry.pod = pod;
        entry.live = live;
        entry.ingress = Isolation {
            enforce: reuse(&entry.ingress.enforce, iso_in.0),
            audit: reuse(&entry.ingress.audit, iso_in.1),
            cluster: reuse(&entry.ingress.cluster, cnp_in),
        };
        entry.egress = Isolation {
            enforce: reuse(&entry.egress.enforce, iso_eg.0),
            audit: reuse(&entry.egress.audit, iso_eg.1),
            cluster: reuse(&entry.egress.cluster, cnp_eg),
        };
    }

    /// Gives `ip` its owner again after pod `id`'s claim changed: `claim` is the pod's
    /// new state when it (live) lists the address, `None` when it no longer does.
    fn settle_ip(&mut self, ip: IpAddr, id: PodId, claim: Option<&Pod>) {
        let owner = self.pod_by_ip.get(&ip).copied();
        let before = self.ip_contenders.get(&ip);
        let mut claimants: Vec<PodId> = owner
            .into_iter()
            .chain(before.into_iter().flatten().copied())
            .filter(|c| *c != id)
            .chain(claim.map(|_| id))
            .collect();
        let pod_of = |c: PodId| -> &Pod {
            match claim {
                Some(p) if c == id => p,
                _ => &self.pods[c.0 as usize].pod,
            }
        };
        let mut best: Option<PodId> = None;
        for c in &claimants {
            if best.is_none_or(|b| pod_of(*c).claims_ip_before(pod_of(b))) {
                best = Some(*c);
            }
        }
        claimants.retain(|c| Some(*c) != best);
        claimants.sort_unstable();
        let contenders_changed = before.map_or(!claimants.is_empty(), |b| *b != claimants);
        match best {
            Some(b) if owner != Some(b) => self.pod_by_ip.insert(ip, b),
            None if owner.is_some() => {
                self.pod_by_ip.remove(&ip);
            }
            _ => {}
        }
        if contenders_changed {
            let map = Arc::make_mut(&mut self.ip_contenders);
            if claimants.is_empty() {
                map.remove(&ip);
            } else {
                map.insert(ip, claimants);
            }
        }
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

    /// The ClusterNetworkPolicy behind an id.
    pub fn cluster_policy(&self, id: ClusterPolicyId) -> &ClusterNetworkPolicy {
        &self.cluster_policies[id.0 as usize].spec
    }

    /// Every ClusterNetworkPolicy, in evaluation order (Admin tier, then Baseline; each
    /// by priority, then name).
    pub fn cluster_policy_ids(&self) -> impl Iterator<Item = ClusterPolicyId> {
        (0..self.cluster_policies.len())
            .map(|i| ClusterPolicyId(u32::try_from(i).unwrap_or(u32::MAX)))
    }

    /// Looks a ClusterNetworkPolicy up by name.
    pub fn cluster_policy_id(&self, name: &str) -> Option<ClusterPolicyId> {
        self.cluster_policy_ids()
            .find(|id| self.cluster_policy(*id).name == name)
    }

    /// ClusterNetworkPolicies that failed validation (they deny what their subject selects).
    pub fn invalid_cluster_policies(&self) -> impl Iterator<Item = &ClusterNetworkPolicy> {
        self.cluster_policies
            .iter()
            .map(|p| p.spec.as_ref())
            .filter(|p| !p.errors.is_empty())
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

    /// The pod CIDRs of one node (`spec.podCIDRs`), or of every node (in name order,
    /// without repeats) when `node` is `None`: the ranges to intercept whole, so a pod
    /// is enforced from its first packet even before the snapshot has learned it. Empty
    /// for an unknown node or one without pod CIDRs.
    pub fn pod_cidrs(&self, node: Option<&str>) -> Vec<IpNet> {
        match node {
            Some(name) => self.node_pod_cidrs.get(name).cloned().unwrap_or_default(),
            None => {
                let mut all: Vec<IpNet> = Vec::new();
                for net in self.node_pod_cidrs.values().flatten() {
                    if !all.contains(net) {
                        all.push(*net);
                    }
                }
                all
            }
        }
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

    /// An estimate of the heap memory the snapshot holds (pods, indexes, peer sets,
    /// policies), counting what it shares with other snapshots in full and each shared
    /// allocation once. Sizes are the requested bytes, as a counting allocator sees them.
    pub fn approx_heap_bytes(&self) -> usize {
        let mut seen: HashSet<*const ()> = HashSet::new();
        let mut once = |p: *const ()| seen.insert(p);

        let mut pod_bytes = self.pods.heap_bytes();
        for e in self.pods.iter() {
            pod_bytes += ARC_HEADER + size_of::<Pod>() + pod_heap_bytes(&e.pod);
            for list in [
                &e.ingress.enforce,
                &e.ingress.audit,
                &e.egress.enforce,
                &e.egress.audit,
            ] {
                if once(Arc::as_ptr(list).cast()) {
                    pod_bytes += ARC_HEADER + size_of_val::<[PolicyId]>(list);
                }
            }
            for list in [&e.ingress.cluster, &e.egress.cluster] {
                if once(Arc::as_ptr(list).cast()) {
                    pod_bytes += ARC_HEADER + size_of_val::<[ClusterPolicyId]>(list);
                }
            }
        }
        let index_bytes = self.pod_by_key.heap_bytes()
            + self.pod_by_ip.heap_bytes()
            + ARC_HEADER
            + size_of::<HashMap<IpAddr, Vec<PodId>>>()
            + hash_table_bytes::<(IpAddr, Vec<PodId>)>(self.ip_contenders.capacity())
            + self
                .ip_contenders
                .values()
                .map(|v| v.capacity() * size_of::<PodId>())
                .sum::<usize>();

        let mut policy_bytes = size_of::<Vec<CompiledPolicy>>()
            + ARC_HEADER
            + self.policies.capacity() * size_of::<CompiledPolicy>()
            + ARC_HEADER
            + size_of::<HashMap<ObjectKey, PolicyId>>()
            + hash_table_bytes::<(ObjectKey, PolicyId)>(self.policy_by_key.capacity())
            + self
                .policy_by_key
                .keys()
                .map(|(ns, n)| ns.capacity() + n.capacity())
                .sum::<usize>();
        for p in self.policies.iter() {
            if once(Arc::as_ptr(&p.spec).cast()) {
                policy_bytes +=
                    ARC_HEADER + size_of::<NetworkPolicy>() + policy_heap_bytes(&p.spec);
            }
            for rules in [&p.ingress, &p.egress].into_iter().flatten() {
                if !once(Arc::as_ptr(rules).cast()) {
                    continue;
                }
                policy_bytes += ARC_HEADER
                    + size_of::<Vec<CompiledRule>>()
                    + rules.capacity() * size_of::<CompiledRule>();
                for peers in rules.iter().filter_map(|r| r.peers.as_ref()) {
                    if once(Arc::as_ptr(&peers.pods).cast()) {
                        policy_bytes += ARC_HEADER + size_of::<PodSet>() + peers.pods.heap_bytes();
                    }
                    if once(Arc::as_ptr(&peers.blocks).cast()) {
                        policy_bytes += ARC_HEADER
                            + size_of_val::<[IpBlock]>(&peers.blocks)
                            + peers
                                .blocks
                                .iter()
                                .map(|b| b.except.capacity() * size_of::<ipnet::IpNet>())
                                .sum::<usize>();
                    }
                }
            }
        }

        // ClusterNetworkPolicies: the compiled rules and their peer sets (the specs are
        // small next to them and estimated by their names only).
        policy_bytes += ARC_HEADER
            + size_of::<Vec<CompiledClusterPolicy>>()
            + self.cluster_policies.capacity() * size_of::<CompiledClusterPolicy>();
        for p in self.cluster_policies.iter() {
            if once(Arc::as_ptr(&p.spec).cast()) {
                policy_bytes +=
                    ARC_HEADER + size_of::<ClusterNetworkPolicy>() + p.spec.name.capacity();
            }
            for rules in [&p.ingress, &p.egress].into_iter().flatten() {
                if !once(Arc::as_ptr(rules).cast()) {
                    continue;
                }
                policy_bytes += ARC_HEADER
                    + size_of::<Vec<CompiledClusterRule>>()
                    + rules.capacity() * size_of::<CompiledClusterRule>();
                for r in rules.iter() {
                    if once(Arc::as_ptr(&r.pods).cast()) {
                        policy_bytes += ARC_HEADER + size_of::<PodSet>() + r.pods.heap_bytes();
                    }
                    policy_bytes += 2 * ARC_HEADER
                        + size_of_val::<[IpNet]>(&r.networks)
                        + size_of_val::<[IpAddr]>(&r.node_ips);
                }
            }
        }

        let mut other_bytes = ARC_HEADER
            + size_of::<BTreeMap<String, Arc<Namespace>>>()
            + btree_node_bytes::<String, Arc<Namespace>>(self.namespaces.len());
        for (name, ns) in self.namespaces.iter() {
            other_bytes += name.capacity()
                + ARC_HEADER
                + size_of::<Namespace>()
                + ns.name.capacity()
                + labels_heap_bytes(&ns.labels);
        }
        other_bytes += ARC_HEADER
            + size_of::<HashMap<IpAddr, Arc<str>>>()
            + hash_table_bytes::<(IpAddr, Arc<str>)>(self.node_by_ip.capacity());
        for name in self.node_by_ip.values() {
            if once(Arc::as_ptr(name).cast()) {
                other_bytes += ARC_HEADER + name.len();
            }
        }
        other_bytes += ARC_HEADER
            + size_of::<BTreeMap<String, Vec<IpNet>>>()
            + btree_node_bytes::<String, Vec<IpNet>>(self.node_pod_cidrs.len())
            + self
                .node_pod_cidrs
                .iter()
                .map(|(name, nets)| name.capacity() + nets.capacity() * size_of::<IpNet>())
                .sum::<usize>();
        other_bytes += ARC_HEADER
            + size_of::<HashMap<IpAddr, Arc<Service>>>()
            + hash_table_bytes::<(IpAddr, Arc<Service>)>(self.services_by_ip.capacity())
            + ARC_HEADER
            + size_of::<Vec<Arc<Service>>>()
            + self.services.capacity() * size_of::<Arc<Service>>();
        for s in self.services.iter() {
            other_bytes += ARC_HEADER
                + size_of::<Service>()
                + s.namespace.capacity()
                + s.name.capacity()
                + s.cluster_ips.capacity() * size_of::<IpAddr>()
                + s.selector.as_ref().map_or(0, labels_heap_bytes)
                + s.ports.capacity() * size_of::<crate::model::ServicePort>()
                + s.ports
                    .iter()
                    .map(|p| {
                        p.name.as_ref().map_or(0, String::capacity)
                            + match &p.target {
                                crate::model::PortRef::Name(n) => n.capacity(),
                                crate::model::PortRef::Number(_) => 0,
                            }
                    })
                    .sum::<usize>();
        }
        pod_bytes + index_bytes + policy_bytes + other_bytes
    }
}

/// Selector results memoized per distinct selector and distinct label set: compile
/// evaluates each (selector, label set) pair at most once, however many pods share
/// the label set and however many peers repeat the selector.
struct SelectorMemo<'a> {
    /// The label sets, by id.
    sets: Vec<&'a Labels>,
    /// The distinct selectors, by id.
    selectors: Vec<&'a Selector>,
    /// Selector ids by the selector's `Debug` text (a hit is confirmed with `==`).
    ids: HashMap<String, Vec<usize>>,
    /// Per selector id, per label set id: 0 not evaluated yet, 1 no match, 2 match.
    results: Vec<Vec<u8>>,
}

impl<'a> SelectorMemo<'a> {
    fn new(sets: Vec<&'a Labels>) -> SelectorMemo<'a> {
        SelectorMemo {
            sets,
            selectors: Vec::new(),
            ids: HashMap::new(),
            results: Vec::new(),
        }
    }

    /// The id of a selector (equal selectors share one).
    fn id(&mut self, sel: &'a Selector) -> usize {
        let same = self.ids.entry(format!("{sel:?}")).or_default();
        if let Some(id) = same.iter().find(|id| self.selectors[**id] == sel) {
            return *id;
        }
        let id = self.selectors.len();
        self.selectors.push(sel);
        self.results.push(vec![0; self.sets.len()]);
        same.push(id);
        id
    }

    /// Whether selector `sel` selects label set `set`.
    #[inline]
    fn matches(&mut self, sel: usize, set: u32) -> bool {
        let slot = &mut self.results[sel][set as usize];
        if *slot == 0 {
            *slot = if self.selectors[sel].matches(self.sets[set as usize]) {
                2
            } else {
                1
            };
        }
        *slot == 2
    }
}

/// The live pods of one namespace that share one label set.
struct Group {
    labels: u32,
    pods: Vec<PodId>,
}

/// What compiling rules needs: live pods grouped by namespace and label set, and the
/// selector memos for pods and namespaces.
struct CompileCx<'a> {
    pod_count: usize,
    /// Live pods by namespace, then by label set.
    groups: HashMap<&'a str, Vec<Group>>,
    /// Namespace names, in the order of `namespaces` (the ids of `ns_memo`'s label sets).
    ns_names: Vec<&'a str>,
    /// Over the distinct pod label sets.
    pod_memo: SelectorMemo<'a>,
    /// Over the namespaces' labels.
    ns_memo: SelectorMemo<'a>,
}

impl<'a> CompileCx<'a> {
    fn new(cluster: &'a Cluster, live: &[bool]) -> CompileCx<'a> {
        let mut set_ids: HashMap<&'a Labels, u32> = HashMap::new();
        let mut sets: Vec<&'a Labels> = Vec::new();
        let mut groups: HashMap<&'a str, Vec<Group>> = HashMap::new();
        let mut group_of: HashMap<(&'a str, u32), usize> = HashMap::new();
        for (i, pod) in cluster.pods.values().enumerate() {
            if !live[i] {
                continue;
            }
            let id = PodId(u32::try_from(i).unwrap_or(u32::MAX));
            let labels = *set_ids.entry(&pod.labels).or_insert_with(|| {
                sets.push(&pod.labels);
                u32::try_from(sets.len() - 1).unwrap_or(u32::MAX)
            });
            let ns = pod.namespace.as_str();
            let in_ns = groups.entry(ns).or_default();
            let g = *group_of.entry((ns, labels)).or_insert_with(|| {
                in_ns.push(Group {
                    labels,
                    pods: Vec::new(),
                });
                in_ns.len() - 1
            });
            in_ns[g].pods.push(id);
        }
        CompileCx {
            pod_count: cluster.pods.len(),
            groups,
            ns_names: cluster
                .namespaces
                .values()
                .map(|n| n.name.as_str())
                .collect(),
            pod_memo: SelectorMemo::new(sets),
            ns_memo: SelectorMemo::new(cluster.namespaces.values().map(|n| &n.labels).collect()),
        }
    }

    /// Calls `f` with the live pods of namespace `ns` that `sel` (a `pod_memo` id;
    /// `None`: every pod) selects, one label-set group at a time.
    fn for_selected(&mut self, ns: &str, sel: Option<usize>, mut f: impl FnMut(&[PodId])) {
        for g in self.groups.get(ns).into_iter().flatten() {
            if sel.is_none_or(|s| self.pod_memo.matches(s, g.labels)) {
                f(&g.pods);
            }
        }
    }

    /// Calls `f` with the live pods a ClusterNetworkPolicy subject or pod peer selects.
    fn for_pods_in(&mut self, sel: &'a PodsIn, mut f: impl FnMut(&[PodId])) {
        let (nsel, psel) = match sel {
            PodsIn::All => (None, None),
            PodsIn::Namespaces(n) => (Some(self.ns_memo.id(n)), None),
            PodsIn::Pods { namespaces, pods } => (
                Some(self.ns_memo.id(namespaces)),
                Some(self.pod_memo.id(pods)),
            ),
        };
        for i in 0..self.ns_names.len() {
            let set_id = u32::try_from(i).unwrap_or(u32::MAX);
            if nsel.is_none_or(|n| self.ns_memo.matches(n, set_id)) {
                self.for_selected(self.ns_names[i], psel, &mut f);
            }
        }
    }

    fn compile_cluster_rules(
        &mut self,
        rules: &'a [crate::cluster_policy::ClusterRule],
        cluster: &Cluster,
    ) -> Arc<Vec<CompiledClusterRule>> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut set = PodSet::with_len(self.pod_count);
            let mut networks = Vec::new();
            let mut node_ips = Vec::new();
            let mut everything = false;
            for peer in &rule.peers {
                match peer {
                    ClusterPeer::Pods(p) => self.for_pods_in(p, |pods| {
                        for id in pods {
                            set.set(*id, true);
                        }
                    }),
                    ClusterPeer::Networks(n) => networks.extend(n.iter().copied()),
                    ClusterPeer::Nodes(sel) => {
                        for node in cluster.nodes.values() {
                            if sel.matches(&node.labels) {
                                node_ips.extend(node.ips.iter().copied());
                            }
                        }
                    }
                    ClusterPeer::Everything => everything = true,
                }
            }
            node_ips.sort_unstable();
            node_ips.dedup();
            out.push(CompiledClusterRule {
                pods: Arc::new(set),
                networks: networks.into(),
                node_ips: node_ips.into(),
                everything,
            });
        }
        Arc::new(out)
    }

    fn compile_rules(&mut self, rules: &'a [Rule], policy_ns: &str) -> Arc<Vec<CompiledRule>> {
        Arc::new(
            rules
                .iter()
                .map(|r| self.compile_rule(r, policy_ns))
                .collect(),
        )
    }

    fn compile_rule(&mut self, rule: &'a Rule, policy_ns: &str) -> CompiledRule {
        let Some(peers) = &rule.peers else {
            return CompiledRule { peers: None };
        };
        let mut set = PodSet::with_len(self.pod_count);
        let mut blocks = Vec::new();
        let mut add = |pods: &[PodId]| {
            for id in pods {
                set.set(*id, true);
            }
        };
        for peer in peers {
            match peer {
                Peer::IpBlock(b) => blocks.push(b.clone()),
                Peer::Pods {
                    namespaces: scope,
                    pods: sel,
                } => {
                    let sel = sel.as_ref().map(|s| self.pod_memo.id(s));
                    match scope {
                        NamespaceScope::Own => self.for_selected(policy_ns, sel, &mut add),
                        NamespaceScope::Selected(nsel) => {
                            let nsel = self.ns_memo.id(nsel);
                            for i in 0..self.ns_names.len() {
                                let set_id = u32::try_from(i).unwrap_or(u32::MAX);
                                if self.ns_memo.matches(nsel, set_id) {
                                    self.for_selected(self.ns_names[i], sel, &mut add);
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
}

// ---------- heap size estimates (for `approx_heap_bytes`) ----------

/// An `Arc`'s strong and weak counts, in front of its value.
const ARC_HEADER: usize = 2 * size_of::<usize>();

/// A `HashMap`'s table for a reported capacity (hashbrown: a power-of-two number of
/// buckets holding 7/8 of it, one control byte per bucket plus a 16-byte group).
fn hash_table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    (buckets * size_of::<T>()).next_multiple_of(16) + buckets + 16
}

/// A `BTreeMap`'s nodes. Every node is allocated at full size (11 slots) however few
/// entries it holds: a map of up to 11 entries is one leaf; bigger maps are estimated
/// at two thirds occupancy.
fn btree_node_bytes<K, V>(len: usize) -> usize {
    const SLOTS: usize = 11;
    if len == 0 {
        return 0;
    }
    // Parent pointer, parent index and length, then the keys and values.
    let leaf = (size_of::<usize>() + 4 + SLOTS * (size_of::<K>() + size_of::<V>()))
        .next_multiple_of(align_of::<usize>());
    if len <= SLOTS {
        return leaf;
    }
    let leaves = len.div_ceil(SLOTS * 2 / 3);
    let internal = leaf + (SLOTS + 1) * size_of::<usize>();
    leaves * leaf + leaves.div_ceil(SLOTS * 2 / 3) * internal
}

fn labels_heap_bytes(labels: &Labels) -> usize {
    btree_node_bytes::<String, String>(labels.len())
        + labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity())
            .sum::<usize>()
}

fn pod_heap_bytes(p: &Pod) -> usize {
    p.namespace.capacity()
        + p.name.capacity()
        + p.uid.as_ref().map_or(0, String::capacity)
        + p.node.as_ref().map_or(0, String::capacity)
        + labels_heap_bytes(&p.labels)
        + p.ips.capacity() * size_of::<IpAddr>()
        + p.ports.capacity() * size_of::<crate::model::ContainerPort>()
        + p.ports
            .iter()
            .map(|c| c.name.as_ref().map_or(0, String::capacity))
            .sum::<usize>()
}

/// A selector's heap, from its text (its expressions are private to the model):
/// the expression vector, the key and value strings, and a set node per `in`/`notin`.
fn selector_heap_bytes(sel: &Selector) -> usize {
    if sel.selects_all() {
        return 0;
    }
    let text = sel.to_string();
    let (mut exprs, mut depth, mut chars) = (1, 0usize, 0);
    let mut sets = 0;
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                sets += 1;
            }
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => exprs += 1,
            ',' | ' ' | '=' | '!' => {}
            _ => chars += 1,
        }
    }
    // The ` in ` / ` notin ` operator words are not stored.
    chars -= text.matches(" in (").count() * 2 + text.matches(" notin (").count() * 5;
    exprs * size_of::<kube_core::labels::Expression>()
        + chars
        + sets * btree_node_bytes::<String, ()>(1)
}

fn rules_heap_bytes(rules: &[Rule]) -> usize {
    rules
        .iter()
        .map(|r| {
            let peers = r.peers.as_ref().map_or(0, |ps| {
                ps.capacity() * size_of::<Peer>()
                    + ps.iter()
                        .map(|p| match p {
                            Peer::IpBlock(b) => b.except.capacity() * size_of::<ipnet::IpNet>(),
                            Peer::Pods { namespaces, pods } => {
                                pods.as_ref().map_or(0, selector_heap_bytes)
                                    + match namespaces {
                                        NamespaceScope::Own => 0,
                                        NamespaceScope::Selected(s) => selector_heap_bytes(s),
                                    }
                            }
                        })
                        .sum::<usize>()
            });
            let ports = r.ports.as_ref().map_or(0, |ps| {
                ps.capacity() * size_of::<crate::model::PortMatch>()
                    + ps.iter()
                        .map(|p| match &p.port {
                            crate::model::PortSpec::Named(n) => n.capacity(),
                            _ => 0,
                        })
                        .sum::<usize>()
            });
            peers + ports
        })
        .sum()
}

fn policy_heap_bytes(p: &NetworkPolicy) -> usize {
    p.namespace.capacity()
        + p.name.capacity()
        + p.pod_selector.as_ref().map_or(0, selector_heap_bytes)
        + [&p.ingress, &p.egress]
            .into_iter()
            .flatten()
            .map(|rules| rules.capacity() * size_of::<Rule>() + rules_heap_bytes(rules))
            .sum::<usize>()
        + ARC_HEADER
        + size_of_val::<[crate::model::FieldError]>(&p.errors)
        + p.errors
            .iter()
            .map(|e| e.field.capacity() + e.message.capacity())
            .sum::<usize>()
}

impl Snapshot {
    /// The decision behind every cell of a matrix over `pods` (rows from, columns to),
    /// each flow taken as [`Snapshot::matrix`] takes it: the pods' first addresses,
    /// through the tunnel (the matrix assumes every node runs netward with the tunnel).
    /// [`Snapshot::matrix`] is `allowed()` of each over every pod; the CLI takes the
    /// decisions for the cells' reasons (`matrix -o wide`) and for subsets (`matrix -n`).
    pub fn matrix_decisions(
        &self,
        pods: &[PodId],
        protocol: crate::model::Protocol,
        port: u16,
    ) -> Vec<Vec<crate::engine::Decision>> {
        use crate::engine::{Endpoint, Flow, Transport};
        let endpoint = |id: PodId| Endpoint {
            ip: self.pod(id).ips.first().copied(),
            pod: Some(id),
        };
        pods.iter()
            .map(|from| {
                pods.iter()
                    .map(|to| {
                        self.authorize(&Flow {
                            src: endpoint(*from),
                            dst: endpoint(*to),
                            protocol,
                            port,
                            transport: Transport::Tunnel,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod matrix_decisions_tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;
    use crate::model::Protocol;

    /// The cells' decisions are the matrix's cells, on every bundled example.
    #[test]
    fn matrix_decisions_agree_with_matrix() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(&examples).unwrap() {
            let m = crate::Manifests::read_paths(&[entry.unwrap().path()]);
            let snap = Snapshot::compile(&m.cluster);
            for (protocol, port) in [
                (Protocol::Tcp, 80),
                (Protocol::Udp, 53),
                (Protocol::Other(1), 0),
            ] {
                let ids = snap.pod_ids();
                let d = snap.matrix_decisions(&ids, protocol, port);
                let allowed: Vec<Vec<bool>> = d
                    .iter()
                    .map(|row| row.iter().map(|d| d.allowed()).collect())
                    .collect();
                assert_eq!(allowed, snap.matrix(protocol, port).allowed);
            }
        }
    }
}
