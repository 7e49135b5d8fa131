//! The one authorization engine: is a connection from A to B on (protocol, port)
//! allowed, and why? The proxy, the audit log, `explain`, `matrix`, the lab and the
//! tests all call [`Snapshot::authorize`]; `explain` traces the same rule predicates.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster_policy::{Action, ClusterPort, Tier};
use crate::model::{Direction, Mode, PortSpec, Protocol};
use crate::snapshot::{
    ClusterPolicyId, CompiledClusterPolicy, CompiledClusterRule, CompiledRule, Isolation, PodId,
    PolicyId, Snapshot,
};

/// One end of a connection: an IP, the pod behind it, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// The address, when known (ipBlock peers and node/self checks need it).
    pub ip: Option<IpAddr>,
    /// The pod, when the address belongs to a live pod (or the pod was named).
    pub pod: Option<PodId>,
}

/// How a connection reaches the destination's node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// The packets themselves: same node, or across nodes in clear.
    #[default]
    Plaintext,
    /// Inside the authenticated mTLS tunnel between node proxies.
    Tunnel,
}

impl Transport {
    /// The name used in reports and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Tunnel => "tunnel",
        }
    }
}

/// A connection to decide: its first packet's addresses after any Service DNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client.
    pub src: Endpoint,
    /// The server (the backend pod for a Service).
    pub dst: Endpoint,
    /// IP protocol: TCP, UDP, SCTP, or any other (ICMP, ...), which only rules
    /// without `ports` match.
    pub protocol: Protocol,
    /// Destination port (after DNAT); 0 for a protocol without ports (it is ignored).
    pub port: u16,
    /// Plaintext or through the tunnel (only strict-mTLS namespaces care).
    pub transport: Transport,
}

/// Why a side is exempt from policy, as Calico and Cilium do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exemption {
    /// A pod talking to itself.
    SelfTraffic,
    /// Traffic into a pod from its own node (kubelet probes, host processes).
    FromOwnNode,
}

/// The verdict for one side (the source pod's egress or the destination pod's ingress).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// This endpoint is not a pod netward enforces (external IP, node, host-network pod).
    NotPod,
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// Exempt by design.
    Exempt(Exemption),
    /// Allowed by this policy's rule.
    Allowed {
        /// The policy.
        policy: PolicyId,
        /// The rule's index in the policy's `ingress` or `egress` list.
        rule: usize,
    },
    /// No enforcing policy isolates the pod, but audit-mode policies do and none
    /// allows this: the traffic flows and is logged as `audit-allow`.
    AuditDenied {
        /// The audit-mode policies that would have denied it.
        would_be_isolated_by: Arc<[PolicyId]>,
    },
    /// Isolated by these policies, and no rule of theirs allows it.
    Denied {
        /// The isolating policies.
        isolated_by: Arc<[PolicyId]>,
    },
    /// The destination's namespace is `netward.io/mtls: strict` and this connection
    /// comes from another node in clear: only the tunnel may carry it.
    PlaintextUnderStrictMtls,
    /// A ClusterNetworkPolicy rule with action Accept decided (Admin tier, or Baseline
    /// tier for a pod no NetworkPolicy isolates).
    ClusterAccepted {
        /// The ClusterNetworkPolicy (its tier and name are in the snapshot).
        policy: ClusterPolicyId,
        /// The rule's index in its `ingress` or `egress` list.
        rule: usize,
    },
    /// A ClusterNetworkPolicy rule with action Deny decided.
    ClusterDenied {
        /// The ClusterNetworkPolicy.
        policy: ClusterPolicyId,
        /// The rule's index in its `ingress` or `egress` list.
        rule: usize,
    },
}

impl Side {
    /// Whether this side lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(
            self,
            Side::Denied { .. } | Side::PlaintextUnderStrictMtls | Side::ClusterDenied { .. }
        )
    }
}

/// Both sides of a decision. The connection is allowed only when both allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The source pod's egress.
    pub egress: Side,
    /// The destination pod's ingress.
    pub ingress: Side,
}

/// The overall verdict, as the audit log spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Allowed only because the policies that would deny it are in audit mode.
    AuditAllow,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditAllow => "audit-allow",
        })
    }
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    /// `allow`, `deny` or `audit-allow`.
    pub fn verdict(&self) -> Verdict {
        if !self.allowed() {
            Verdict::Deny
        } else if matches!(self.egress, Side::AuditDenied { .. })
            || matches!(self.ingress, Side::AuditDenied { .. })
        {
            Verdict::AuditAllow
        } else {
            Verdict::Allow
        }
    }
}

/// How one rule compared with a flow, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// The rule's index.
    pub index: usize,
    /// Whether its `from`/`to` matched the peer.
    pub peer_matches: bool,
    /// Whether its `ports` matched the protocol and port.
    pub port_matches: bool,
}

/// How one isolating policy's rules compared with a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyId,
    /// Enforced or audit-only.
    pub mode: Mode,
    /// Every rule of the policy for this direction.
    pub rules: Vec<RuleTrace>,
}

/// How one ClusterNetworkPolicy's rules for a direction compared with a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicyTrace {
    /// The policy.
    pub policy: ClusterPolicyId,
    /// Every rule of the policy for this direction.
    pub rules: Vec<RuleTrace>,
}

/// The verdict with the evaluation behind it, for `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, exactly as [`Snapshot::authorize`] returns it.
    pub decision: Decision,
    /// The policies isolating the source pod for egress, with each rule's result.
    pub egress: Vec<PolicyTrace>,
    /// The policies isolating the destination pod for ingress, with each rule's result.
    pub ingress: Vec<PolicyTrace>,
    /// The ClusterNetworkPolicies whose subject is the source pod (egress), in evaluation
    /// order, with each rule's result.
    pub cluster_egress: Vec<ClusterPolicyTrace>,
    /// The ClusterNetworkPolicies whose subject is the destination pod (ingress).
    pub cluster_ingress: Vec<ClusterPolicyTrace>,
}

/// A reachability matrix over pods, for one protocol and port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// `namespace/name`, sorted.
    pub pods: Vec<String>,
    /// `allowed[i][j]`: from `pods[i]` to `pods[j]`.
    pub allowed: Vec<Vec<bool>>,
}

impl Snapshot {
    /// The endpoint for an address: the live pod that owns it, if any.
    pub fn endpoint_for_ip(&self, ip: IpAddr) -> Endpoint {
        Endpoint {
            ip: Some(ip),
            pod: self.pod_by_ip.get(&ip).copied(),
        }
    }

    /// The endpoint for a pod by name, with its first IP (of the family asked for, if any).
    /// Host-network and terminated pods are not policy endpoints: they resolve to their IP only.
    pub fn endpoint_for_pod(
        &self,
        namespace: &str,
        name: &str,
        v6: Option<bool>,
    ) -> Option<Endpoint> {
        let id = *self
            .pod_by_key
            .get(&(namespace.to_owned(), name.to_owned()))?;
        let entry = &self.pods[id.0 as usize];
        let ip = entry
            .pod
            .ips
            .iter()
            .find(|ip| v6.is_none_or(|v6| ip.is_ipv6() == v6))
            .copied();
        Some(Endpoint {
            ip,
            pod: entry.live.then_some(id),
        })
    }

    /// Decides a flow. This is the only policy evaluation in netward.
    ///
    /// A protocol other than TCP, UDP and SCTP (ICMP, ICMPv6, GRE, ...) is decided as
    /// Calico and Cilium do: only rules without `ports` match it, so an isolated pod's
    /// such traffic is denied unless a portless rule allows its peer; the exemptions
    /// (self, own node) still apply.
    pub fn authorize(&self, flow: &Flow) -> Decision {
        let flow = &Flow {
            protocol: flow.protocol.canonical(),
            ..*flow
        };
        if self.is_self(flow) {
            let side = Side::Exempt(Exemption::SelfTraffic);
            return Decision {
                egress: if flow.src.pod.is_some() {
                    side.clone()
                } else {
                    Side::NotPod
                },
                ingress: if flow.dst.pod.is_some() {
                    side
                } else {
                    Side::NotPod
                },
            };
        }
        let egress = match flow.src.pod {
            None => Side::NotPod,
            Some(src) => self.side(src, Direction::Egress, &flow.dst, flow, None),
        };
        let ingress = match flow.dst.pod {
            None => Side::NotPod,
            Some(dst) if self.is_from_own_node(dst, &flow.src) => {
                Side::Exempt(Exemption::FromOwnNode)
            }
            Some(dst) if self.is_plaintext_under_strict(dst, flow) => {
                Side::PlaintextUnderStrictMtls
            }
            Some(dst) => self.side(dst, Direction::Ingress, &flow.src, flow, None),
        };
        Decision { egress, ingress }
    }

    /// Decides a flow and traces every isolating policy's rules, for `explain`.
    pub fn explain(&self, flow: &Flow) -> Explanation {
        let flow = &Flow {
            protocol: flow.protocol.canonical(),
            ..*flow
        };
        let decision = self.authorize(flow);
        let mut egress = Vec::new();
        let mut ingress = Vec::new();
        let mut cluster_egress = Vec::new();
        let mut cluster_ingress = Vec::new();
        if !self.is_self(flow) {
            if let Some(src) = flow.src.pod {
                let _ = self.side(src, Direction::Egress, &flow.dst, flow, Some(&mut egress));
                cluster_egress = self.cluster_trace(src, Direction::Egress, &flow.dst, flow);
            }
            if let Some(dst) = flow.dst.pod
                && !self.is_from_own_node(dst, &flow.src)
                && !self.is_plaintext_under_strict(dst, flow)
            {
                let _ = self.side(dst, Direction::Ingress, &flow.src, flow, Some(&mut ingress));
                cluster_ingress = self.cluster_trace(dst, Direction::Ingress, &flow.src, flow);
            }
        }
        Explanation {
            decision,
            egress,
            ingress,
            cluster_egress,
            cluster_ingress,
        }
    }

    /// The reachability matrix over every live pod, for one protocol and port.
    pub fn matrix(&self, protocol: Protocol, port: u16) -> Matrix {
        let ids = self.pod_ids();
        let allowed = self
            .matrix_decisions(&ids, protocol, port)
            .iter()
            .map(|row| row.iter().map(Decision::allowed).collect())
            .collect();
        Matrix {
            port,
            protocol,
            pods: ids.iter().map(|id| self.pod(*id).key()).collect(),
            allowed,
        }
    }

    fn is_self(&self, flow: &Flow) -> bool {
        match (flow.src.pod, flow.dst.pod) {
            (Some(a), Some(b)) => a == b,
            _ => flow.src.ip.is_some() && flow.src.ip == flow.dst.ip,
        }
    }

    /// The mTLS mode of a pod's namespace (`disabled` for an unknown namespace).
    pub fn mtls_mode(&self, pod: PodId) -> crate::model::MtlsMode {
        self.namespace(&self.pod(pod).namespace)
            .map(|n| n.mtls)
            .unwrap_or_default()
    }

    /// Whether a plaintext TCP connection into `dst` comes from another node while
    /// `dst`'s namespace is strict. Same-node traffic stays local and in clear. A source pod
    /// whose node is unknown, or a destination without a node, counts as local (the
    /// datapath always knows the node of the pods it enforces for).
    fn is_plaintext_under_strict(&self, dst: PodId, flow: &Flow) -> bool {
        // The tunnel carries TCP only; UDP and SCTP keep flowing as before (as with
        // ztunnel), so strict governs TCP connections.
        if flow.transport == Transport::Tunnel
            || flow.protocol != Protocol::Tcp
            || self.mtls_mode(dst) != crate::model::MtlsMode::Strict
        {
            return false;
        }
        let Some(dst_node) = self.pod(dst).node.as_deref() else {
            return false;
        };
        match flow.src.pod {
            Some(src) => self.pod(src).node.as_deref().is_some_and(|n| n != dst_node),
            // Not a pod: the destination's own node is exempt before this check; any
            // other address (another node, an external client) is off-node.
            None => true,
        }
    }

    fn is_from_own_node(&self, dst: PodId, src: &Endpoint) -> bool {
        let (Some(ip), Some(node)) = (src.ip, self.pod(dst).node.as_deref()) else {
            return false;
        };
        src.pod.is_none() && self.node_for_ip(ip) == Some(node)
    }

    /// Evaluates one side. `subject` is the pod whose policies apply; `peer` the other end.
    ///
    /// The tiers, as the network-policy-api defines them: the Admin tier's
    /// ClusterNetworkPolicies by priority (Accept and Deny are final, Pass skips the rest
    /// of the tier), then NetworkPolicy (final for a pod it isolates), then the Baseline
    /// tier (Accept and Deny final; Pass, or no match, leaves the default: allowed).
    fn side(
        &self,
        subject: PodId,
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
        trace: Option<&mut Vec<PolicyTrace>>,
    ) -> Side {
        let entry = &self.pods[subject.0 as usize];
        let iso: &Isolation = match dir {
            Direction::Ingress => &entry.ingress,
            Direction::Egress => &entry.egress,
        };
        // Named ports resolve against the destination pod: the subject for ingress, the
        // peer for egress (and only when the peer is a pod).
        let port_pod = match dir {
            Direction::Ingress => Some(subject),
            Direction::Egress => peer.pod,
        };
        if iso.cluster.is_empty() {
            return self.network_policy_side(iso, dir, peer, flow, port_pod, trace);
        }
        let split = iso
            .cluster
            .partition_point(|id| self.cnp(*id).spec.tier == Tier::Admin);
        let (admin, baseline) = iso.cluster.split_at(split);
        let admin = match self.cluster_tier(admin, dir, peer, flow, port_pod) {
            Some((policy, rule, Action::Accept)) => Some(Side::ClusterAccepted { policy, rule }),
            Some((policy, rule, Action::Deny)) => Some(Side::ClusterDenied { policy, rule }),
            Some((_, _, Action::Pass)) | None => None,
        };
        if let Some(decided) = admin {
            if let Some(t) = trace {
                // Shown by `explain`, not part of the verdict.
                let _ = self.network_policy_side(iso, dir, peer, flow, port_pod, Some(t));
            }
            return decided;
        }
        let np = self.network_policy_side(iso, dir, peer, flow, port_pod, trace);
        let np_final = !iso.enforce.is_empty();
        if np_final {
            return np;
        }
        // Not isolated, or isolated by audit-mode policies only (which enforce nothing):
        // the Baseline tier decides what is enforced.
        match self.cluster_tier(baseline, dir, peer, flow, port_pod) {
            Some((policy, rule, Action::Deny)) => Side::ClusterDenied { policy, rule },
            Some((policy, rule, Action::Accept)) if np == Side::NotIsolated => {
                Side::ClusterAccepted { policy, rule }
            }
            _ => np,
        }
    }

    fn cnp(&self, id: ClusterPolicyId) -> &CompiledClusterPolicy {
        &self.cluster_policies[id.0 as usize]
    }

    /// The deciding (policy, rule, action) of one tier: the first priority level with a
    /// matching rule decides; within one policy the first matching rule counts; between
    /// policies tied on priority the most restrictive action wins (Deny, then Pass, then
    /// Accept), then the first by name. `ids` are in evaluation order.
    fn cluster_tier(
        &self,
        ids: &[ClusterPolicyId],
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
        port_pod: Option<PodId>,
    ) -> Option<(ClusterPolicyId, usize, Action)> {
        let mut best: Option<(ClusterPolicyId, usize, Action)> = None;
        let mut level = None;
        for &id in ids {
            let cnp = self.cnp(id);
            if level.is_some_and(|p| p != cnp.spec.priority) {
                break;
            }
            let Some((rule, action)) = self.cluster_first_match(cnp, dir, peer, flow, port_pod)
            else {
                continue;
            };
            level = Some(cnp.spec.priority);
            if best.is_none_or(|(_, _, a)| action.tie_rank() < a.tie_rank()) {
                best = Some((id, rule, action));
            }
        }
        best
    }

    /// The first rule of one ClusterNetworkPolicy (for a direction) that matches the flow.
    fn cluster_first_match(
        &self,
        cnp: &CompiledClusterPolicy,
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
        port_pod: Option<PodId>,
    ) -> Option<(usize, Action)> {
        let (rules, specs) = match dir {
            Direction::Ingress => (cnp.ingress.as_deref()?, cnp.spec.ingress.as_deref()?),
            Direction::Egress => (cnp.egress.as_deref()?, cnp.spec.egress.as_deref()?),
        };
        rules
            .iter()
            .zip(specs)
            .position(|(r, spec)| {
                cluster_peer_matches(r, peer)
                    && cluster_ports_match(&spec.ports, flow, port_pod, self)
            })
            .map(|i| (i, specs[i].action))
    }

    /// Every ClusterNetworkPolicy rule of `subject` for a direction, compared with a flow.
    fn cluster_trace(
        &self,
        subject: PodId,
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
    ) -> Vec<ClusterPolicyTrace> {
        let entry = &self.pods[subject.0 as usize];
        let iso = match dir {
            Direction::Ingress => &entry.ingress,
            Direction::Egress => &entry.egress,
        };
        let port_pod = match dir {
            Direction::Ingress => Some(subject),
            Direction::Egress => peer.pod,
        };
        iso.cluster
            .iter()
            .map(|&id| {
                let cnp = self.cnp(id);
                let (rules, specs) = match dir {
                    Direction::Ingress => (
                        cnp.ingress.as_deref().map(Vec::as_slice),
                        cnp.spec.ingress.as_deref(),
                    ),
                    Direction::Egress => (
                        cnp.egress.as_deref().map(Vec::as_slice),
                        cnp.spec.egress.as_deref(),
                    ),
                };
                let rules = rules
                    .unwrap_or_default()
                    .iter()
                    .zip(specs.unwrap_or_default())
                    .enumerate()
                    .map(|(index, (r, spec))| RuleTrace {
                        index,
                        peer_matches: cluster_peer_matches(r, peer),
                        port_matches: cluster_ports_match(&spec.ports, flow, port_pod, self),
                    })
                    .collect();
                ClusterPolicyTrace { policy: id, rules }
            })
            .collect()
    }

    /// The NetworkPolicy tier of one side, as before ClusterNetworkPolicy existed.
    fn network_policy_side(
        &self,
        iso: &Isolation,
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
        port_pod: Option<PodId>,
        mut trace: Option<&mut Vec<PolicyTrace>>,
    ) -> Side {
        // Enforcing policies decide. Audit policies only matter when none enforce:
        // they can never open what an enforcing policy closes.
        let eval = |ids: &[PolicyId], mode, trace: Option<&mut Vec<PolicyTrace>>| {
            self.first_allowing(ids, mode, dir, peer, flow, port_pod, trace)
        };
        if !iso.enforce.is_empty() {
            let hit = eval(&iso.enforce, Mode::Enforce, trace.as_deref_mut());
            if let Some(t) = trace {
                // Shown by `explain`, never part of the verdict.
                let _ = eval(&iso.audit, Mode::Audit, Some(t));
            }
            return match hit {
                Some((policy, rule)) => Side::Allowed { policy, rule },
                None => Side::Denied {
                    isolated_by: iso.enforce.clone(),
                },
            };
        }
        if iso.audit.is_empty() {
            return Side::NotIsolated;
        }
        match eval(&iso.audit, Mode::Audit, trace) {
            Some((policy, rule)) => Side::Allowed { policy, rule },
            None => Side::AuditDenied {
                would_be_isolated_by: iso.audit.clone(),
            },
        }
    }

    /// The first (policy, rule) among `ids` that allows the flow. With a trace,
    /// every rule is evaluated and recorded; without, it stops at the first match.
    #[allow(clippy::too_many_arguments)] // the flow's parts, resolved once by the caller
    fn first_allowing(
        &self,
        ids: &[PolicyId],
        mode: Mode,
        dir: Direction,
        peer: &Endpoint,
        flow: &Flow,
        port_pod: Option<PodId>,
        mut trace: Option<&mut Vec<PolicyTrace>>,
    ) -> Option<(PolicyId, usize)> {
        let mut hit = None;
        for &pid in ids {
            let Some(rules) = self.rules(pid, dir) else {
                continue;
            };
            let specs = self.policy(pid).rules(dir).unwrap_or_default();
            let mut rtrace = Vec::new();
            for (i, (rule, spec)) in rules.iter().zip(specs).enumerate() {
                let peer_matches = self.peer_matches(rule, peer);
                let port_matches = peer_matches || trace.is_some();
                let port_matches = port_matches && port_matches_flow(spec, flow, port_pod, self);
                if hit.is_none() && peer_matches && port_matches {
                    hit = Some((pid, i));
                    if trace.is_none() {
                        return hit;
                    }
                }
                if trace.is_some() {
                    rtrace.push(RuleTrace {
                        index: i,
                        peer_matches,
                        port_matches,
                    });
                }
            }
            if let Some(t) = trace.as_deref_mut() {
                t.push(PolicyTrace {
                    policy: pid,
                    mode,
                    rules: rtrace,
                });
            }
        }
        hit
    }

    fn rules(&self, pid: PolicyId, dir: Direction) -> Option<&[CompiledRule]> {
        let p = &self.policies[pid.0 as usize];
        match dir {
            Direction::Ingress => p.ingress.as_deref().map(Vec::as_slice),
            Direction::Egress => p.egress.as_deref().map(Vec::as_slice),
        }
    }

    /// Whether a rule's `from`/`to` matches the peer.
    #[inline]
    fn peer_matches(&self, rule: &CompiledRule, peer: &Endpoint) -> bool {
        match &rule.peers {
            None => true,
            Some(p) => {
                peer.pod.is_some_and(|id| p.pods.contains(id))
                    || peer
                        .ip
                        .is_some_and(|ip| p.blocks.iter().any(|b| b.contains(ip)))
            }
        }
    }
}

/// Whether a rule's `ports` match the flow. Named ports resolve against `port_pod`.
/// A rule without ports matches every protocol; one with ports never matches a
/// protocol that has none (ICMP, ...).
#[inline]
fn port_matches_flow(
    rule: &crate::model::Rule,
    flow: &Flow,
    port_pod: Option<PodId>,
    snap: &Snapshot,
) -> bool {
    let Some(ports) = &rule.ports else {
        return true;
    };
    if !flow.protocol.has_ports() {
        return false;
    }
    ports.iter().any(|pm| port_match(pm, flow, port_pod, snap))
}

/// Whether one `ports` entry (protocol and port, range or name) matches the flow.
#[inline]
fn port_match(
    pm: &crate::model::PortMatch,
    flow: &Flow,
    port_pod: Option<PodId>,
    snap: &Snapshot,
) -> bool {
    pm.protocol == flow.protocol
        && match &pm.port {
            PortSpec::Any => true,
            PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&flow.port),
            PortSpec::Named(name) => port_pod
                .and_then(|id| snap.pod(id).named_port(name, flow.protocol))
                .is_some_and(|p| p == flow.port),
        }
}

/// Whether a ClusterNetworkPolicy rule's peers match the other end.
#[inline]
fn cluster_peer_matches(rule: &CompiledClusterRule, peer: &Endpoint) -> bool {
    rule.everything
        || peer.pod.is_some_and(|id| rule.pods.contains(id))
        || peer.ip.is_some_and(|ip| {
            rule.networks.iter().any(|n| n.contains(&ip))
                || rule.node_ips.binary_search(&ip).is_ok()
        })
}

/// Whether a ClusterNetworkPolicy rule's `protocols` match the flow. No `protocols`:
/// every protocol, ICMP included. A named port is the destination pod's container port of
/// that name, in that port's protocol.
#[inline]
fn cluster_ports_match(
    ports: &Option<Vec<ClusterPort>>,
    flow: &Flow,
    port_pod: Option<PodId>,
    snap: &Snapshot,
) -> bool {
    let Some(ports) = ports else {
        return true;
    };
    if !flow.protocol.has_ports() {
        return false;
    }
    ports.iter().any(|p| match p {
        ClusterPort::Protocol(pm) => port_match(pm, flow, port_pod, snap),
        ClusterPort::Named(name) => port_pod.is_some_and(|id| {
            snap.pod(id).ports.iter().any(|c| {
                c.name.as_deref() == Some(name.as_str())
                    && c.protocol == flow.protocol
                    && c.port == flow.port
            })
        }),
    })
}
