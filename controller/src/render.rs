//! Decisions rendered with names instead of ids: the one shape shared by
//! `explain -o json`, the audit log and the metrics labels.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use serde::Serialize;

use crate::cluster_policy::{Action, ClusterRule, Tier};
use crate::engine::{
    ClusterPolicyTrace, Decision, Endpoint, Explanation, Flow, Matrix, PolicyTrace, Side,
    Transport, Verdict,
};
use crate::model::{Direction, Mode, Protocol};
use crate::snapshot::{ClusterPolicyId, PodId, PolicyId, Snapshot};

/// A reference to the rule that allowed a side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleRef {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Index in its `ingress` or `egress` list.
    pub rule: usize,
}

/// The ClusterNetworkPolicy rule that decided a side (Accept or Deny).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterRuleRef {
    /// `Admin` or `Baseline`.
    pub tier: Tier,
    /// The ClusterNetworkPolicy's name.
    pub policy: String,
    /// Its priority in its tier.
    pub priority: u16,
    /// The rule's index in its `ingress` or `egress` list.
    pub rule: usize,
    /// The rule's `name`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// `Accept` or `Deny`.
    pub action: Action,
}

impl ClusterRuleRef {
    /// Names a ClusterNetworkPolicy rule that decided with `action`; the rule's name is
    /// looked up when the direction is known.
    pub fn new(
        snap: &Snapshot,
        id: ClusterPolicyId,
        dir: Option<Direction>,
        rule: usize,
        action: Action,
    ) -> ClusterRuleRef {
        let p = snap.cluster_policy(id);
        let spec = dir.and_then(|d| p.rules(d)).and_then(|r| r.get(rule));
        ClusterRuleRef {
            tier: p.tier,
            policy: p.name.clone(),
            priority: p.priority,
            rule,
            rule_name: spec.and_then(|r| r.name.clone()),
            action,
        }
    }

    /// `ClusterNetworkPolicy/NAME`, how the audit summary and metrics label it.
    pub fn key(&self) -> String {
        format!("ClusterNetworkPolicy/{}", self.policy)
    }

    /// `ClusterNetworkPolicy block-metadata (Admin tier, priority 0) egress[0] "deny-metadata"`.
    pub fn describe(&self, dir: Direction) -> String {
        let name = self
            .rule_name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        format!(
            "ClusterNetworkPolicy {} ({} tier, priority {}) {dir}[{}]{name}",
            self.policy, self.tier, self.priority, self.rule
        )
    }
}

/// One side of a decision, with names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SideReport {
    /// `not-pod`, `not-isolated`, `exempt`, `allowed`, `audit-denied`, `denied` or
    /// `plaintext-under-strict-mtls`.
    pub result: String,
    /// The pod this side is about (`namespace/name`), when it is a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The rule that allowed it (`allowed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<RuleRef>,
    /// The isolating policies (`denied`), or the audit policies that would deny (`audit-denied`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Why it is exempt (`exempt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exemption: Option<crate::engine::Exemption>,
    /// The ClusterNetworkPolicy rule that decided it (`allowed` by an Accept, `denied` by
    /// a Deny); absent when a NetworkPolicy or the default decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_policy: Option<ClusterRuleRef>,
}

impl SideReport {
    /// Names a side of a decision. `pod` is the endpoint this side is about.
    pub fn new(snap: &Snapshot, side: &Side, pod: Option<crate::snapshot::PodId>) -> SideReport {
        SideReport::for_direction(snap, side, pod, None)
    }

    /// As [`SideReport::new`], knowing the direction, so that a ClusterNetworkPolicy
    /// rule's name can be looked up (the decision's sides: egress, then ingress).
    pub fn for_direction(
        snap: &Snapshot,
        side: &Side,
        pod: Option<crate::snapshot::PodId>,
        dir: Option<Direction>,
    ) -> SideReport {
        let names = |ids: &[PolicyId]| ids.iter().map(|id| snap.policy(*id).key()).collect();
        let mut r = SideReport {
            result: String::new(),
            pod: pod.map(|p| snap.pod(p).key()),
            allowed_by: None,
            isolated_by: Vec::new(),
            exemption: None,
            cluster_policy: None,
        };
        match side {
            Side::NotPod => r.result = "not-pod".to_owned(),
            Side::NotIsolated => r.result = "not-isolated".to_owned(),
            Side::Exempt(e) => {
                r.result = "exempt".to_owned();
                r.exemption = Some(*e);
            }
            Side::Allowed { policy, rule } => {
                r.result = "allowed".to_owned();
                r.allowed_by = Some(RuleRef {
                    policy: snap.policy(*policy).key(),
                    rule: *rule,
                });
            }
            Side::AuditDenied {
                would_be_isolated_by,
            } => {
                r.result = "audit-denied".to_owned();
                r.isolated_by = names(would_be_isolated_by);
            }
            Side::Denied { isolated_by } => {
                r.result = "denied".to_owned();
                r.isolated_by = names(isolated_by);
            }
            Side::PlaintextUnderStrictMtls => r.result = "plaintext-under-strict-mtls".to_owned(),
            Side::ClusterAccepted { policy, rule } => {
                r.result = "allowed".to_owned();
                r.cluster_policy = Some(ClusterRuleRef::new(
                    snap,
                    *policy,
                    dir,
                    *rule,
                    Action::Accept,
                ));
            }
            Side::ClusterDenied { policy, rule } => {
                r.result = "denied".to_owned();
                r.cluster_policy =
                    Some(ClusterRuleRef::new(snap, *policy, dir, *rule, Action::Deny));
            }
        }
        r
    }

    /// One line for humans, e.g. `denied: isolated by ns/a, ns/b; no rule allows it`.
    pub fn describe(&self, dir: Direction) -> String {
        if let Some(c) = &self.cluster_policy {
            return match self.result.as_str() {
                "allowed" => format!("allowed by {} (Accept)", c.describe(dir)),
                _ => format!("denied by {} (Deny)", c.describe(dir)),
            };
        }
        match self.result.as_str() {
            "not-pod" => "not enforced: this end is not a pod".to_owned(),
            "not-isolated" => format!("allowed: no NetworkPolicy selects this pod for {dir}"),
            "exempt" => match self.exemption {
                Some(crate::engine::Exemption::SelfTraffic) => {
                    "allowed: a pod may always reach itself".to_owned()
                }
                Some(crate::engine::Exemption::FromOwnNode) => {
                    "allowed: traffic from the pod's own node is always allowed (kubelet probes)"
                        .to_owned()
                }
                None => "allowed: exempt".to_owned(),
            },
            "allowed" => match &self.allowed_by {
                Some(r) => format!("allowed by {} {dir}[{}]", r.policy, r.rule),
                None => "allowed".to_owned(),
            },
            "plaintext-under-strict-mtls" => {
                "denied: the pod's namespace is netward.io/mtls=strict \
                 and this connection comes from another node in clear (only the mTLS tunnel \
                 may carry it)"
                    .to_owned()
            }
            "audit-denied" => format!(
                "allowed (audit mode): would be denied by {}",
                self.isolated_by.join(", ")
            ),
            _ => format!(
                "denied: isolated by {}; no {dir} rule allows it",
                self.isolated_by.join(", ")
            ),
        }
    }
}

/// A whole decision, with names: the `explain -o json` body and the audit record's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionReport {
    /// `allow`, `deny` or `audit-allow`.
    pub verdict: Verdict,
    /// The source pod's egress.
    pub egress: SideReport,
    /// The destination pod's ingress.
    pub ingress: SideReport,
}

impl DecisionReport {
    /// Names a decision.
    pub fn new(snap: &Snapshot, flow: &Flow, d: &Decision) -> DecisionReport {
        DecisionReport {
            verdict: d.verdict(),
            egress: SideReport::for_direction(
                snap,
                &d.egress,
                flow.src.pod,
                Some(Direction::Egress),
            ),
            ingress: SideReport::for_direction(
                snap,
                &d.ingress,
                flow.dst.pod,
                Some(Direction::Ingress),
            ),
        }
    }
}

/// One rule of an isolating policy compared with a flow: the line `explain` prints for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    /// Its index in the policy's `ingress` or `egress` list.
    pub index: usize,
    /// Its peers, e.g. `from [pods app=web (same namespace)]` or `to anywhere`.
    pub peers: String,
    /// Its ports, e.g. `TCP/80, UDP/53` or `any port`.
    pub ports: String,
    /// Whether its peers match the other end.
    pub peer_matches: bool,
    /// Whether its ports match the protocol and port.
    pub port_matches: bool,
    /// Whether it matches the flow (peer and port).
    pub matches: bool,
    /// `MATCH`, or why not, e.g. `no match: TCP/5432 is not in UDP/53, TCP/53`.
    pub why: String,
    /// A ClusterNetworkPolicy rule's `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A ClusterNetworkPolicy rule's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// One ClusterNetworkPolicy whose subject is a side's pod, with each of its rules for
/// that direction, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterPolicyReport {
    /// Its name.
    pub policy: String,
    /// `Admin` or `Baseline`.
    pub tier: Tier,
    /// Its priority in its tier.
    pub priority: u16,
    /// Its validation errors. An invalid one fails closed: an invalid rule matches nothing
    /// (Accept) or denies all (Deny, Pass); an invalid object denies everything its subject
    /// selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
    /// Set when evaluation never reached it, e.g. `not reached: the Admin tier decided`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Every rule for this direction, in order.
    pub rules: Vec<RuleReport>,
}

/// One policy that isolates a side, with each of its rules for that direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// `namespace/name`.
    pub policy: String,
    /// `enforce`, or `audit` (evaluated and logged, never enforced).
    pub mode: Mode,
    /// Its validation errors: an invalid policy isolates and allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
    /// Set when it has no rules for this direction: it denies everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Every rule for this direction, in order.
    pub rules: Vec<RuleReport>,
}

/// One side of an explanation: its reason, and every isolating policy's rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideTrace {
    /// The pod this side is about (`namespace/name`), when it is a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// How the end was named: the pod, or what was given (an IP).
    pub who: String,
    /// As [`SideReport::result`].
    pub result: String,
    /// The line `explain` prints for this side, e.g. `allowed by ns/p ingress[0]`.
    pub reason: String,
    /// The policies that isolate the pod in this direction, enforcing ones first.
    pub policies: Vec<PolicyReport>,
    /// The ClusterNetworkPolicies whose subject the pod is for this direction, in
    /// evaluation order (Admin tier, then Baseline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_policies: Vec<ClusterPolicyReport>,
}

/// Both sides of an explanation, as `explain` prints them: the JSON `trace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceReport {
    /// The source pod's egress.
    pub egress: SideTrace,
    /// The destination pod's ingress.
    pub ingress: SideTrace,
}

impl TraceReport {
    /// Names an explanation. `from` and `to` are how the ends were named (for non-pods).
    pub fn new(snap: &Snapshot, from: &str, to: &str, flow: &Flow, e: &Explanation) -> TraceReport {
        let report = DecisionReport::new(snap, flow, &e.decision);
        let what = flow_label(flow.protocol, flow.port);
        let side = |dir: Direction,
                    side: &SideReport,
                    traces: &[PolicyTrace],
                    ctraces: &[ClusterPolicyTrace]| {
            let who = side.pod.clone().unwrap_or_else(|| match dir {
                Direction::Egress => from.to_owned(),
                Direction::Ingress => to.to_owned(),
            });
            let peer = if dir == Direction::Ingress { from } else { to };
            // Which tiers evaluation reached: the Admin tier's decision ends it; an
            // enforcing NetworkPolicy ends it before the Baseline tier.
            let admin = side
                .cluster_policy
                .as_ref()
                .filter(|c| c.tier == Tier::Admin);
            let np_decides = traces.iter().any(|t| t.mode == Mode::Enforce);
            let mut policies: Vec<PolicyReport> = traces
                .iter()
                .map(|t| policy_report(snap, dir, t, flow, &what, peer))
                .collect();
            if admin.is_some() {
                for p in &mut policies {
                    p.note = Some("not reached: the Admin tier decided".to_owned());
                }
            }
            let mut cluster_policies: Vec<ClusterPolicyReport> = ctraces
                .iter()
                .map(|t| cluster_policy_report(snap, dir, t, flow, &what, peer))
                .collect();
            for c in &mut cluster_policies {
                c.note = match (c.tier, admin) {
                    (Tier::Admin, Some(a)) if c.priority > a.priority => {
                        Some("not reached: an Admin rule of a lower priority value decided".to_owned())
                    }
                    (Tier::Baseline, Some(_)) => {
                        Some("not reached: the Admin tier decided".to_owned())
                    }
                    (Tier::Baseline, None) if np_decides => Some(
                        "not reached: a NetworkPolicy isolates the pod, so the NetworkPolicy tier decided"
                            .to_owned(),
                    ),
                    _ => None,
                };
            }
            SideTrace {
                pod: side.pod.clone(),
                result: side.result.clone(),
                reason: side.describe(dir),
                policies,
                cluster_policies,
                who,
            }
        };
        TraceReport {
            egress: side(
                Direction::Egress,
                &report.egress,
                &e.egress,
                &e.cluster_egress,
            ),
            ingress: side(
                Direction::Ingress,
                &report.ingress,
                &e.ingress,
                &e.cluster_ingress,
            ),
        }
    }
}

fn policy_report(
    snap: &Snapshot,
    dir: Direction,
    t: &PolicyTrace,
    flow: &Flow,
    what: &str,
    peer: &str,
) -> PolicyReport {
    let p = snap.policy(t.policy);
    let specs = p.rules(dir).unwrap_or_default();
    let rules = t
        .rules
        .iter()
        .filter_map(|r| {
            let spec = specs.get(r.index)?;
            let ports = match &spec.ports {
                None => "any port".to_owned(),
                Some(ps) => ps
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let why = match (r.peer_matches, r.port_matches) {
                (true, true) => "MATCH".to_owned(),
                (false, true) => format!("no match: {peer} is none of these peers"),
                (true, false) if !flow.protocol.has_ports() => {
                    format!("no match: a rule with ports never matches {what}")
                }
                (true, false) => format!("no match: {what} is not in {ports}"),
                (false, false) => "no match: neither peer nor port".to_owned(),
            };
            Some(RuleReport {
                index: r.index,
                peers: describe_peers(spec, dir),
                ports,
                peer_matches: r.peer_matches,
                port_matches: r.port_matches,
                matches: r.peer_matches && r.port_matches,
                why,
                name: None,
                action: None,
            })
        })
        .collect();
    PolicyReport {
        policy: p.key(),
        mode: t.mode,
        invalid: p.errors.iter().map(|e| e.to_string()).collect(),
        note: (t.rules.is_empty() && p.errors.is_empty())
            .then(|| format!("no {dir} rules: denies all {dir}")),
        rules,
    }
}

fn why(
    peer_matches: bool,
    port_matches: bool,
    flow: &Flow,
    what: &str,
    peer: &str,
    ports: &str,
) -> String {
    match (peer_matches, port_matches) {
        (true, true) => "MATCH".to_owned(),
        (false, true) => format!("no match: {peer} is none of these peers"),
        (true, false) if !flow.protocol.has_ports() => {
            format!("no match: a rule with ports never matches {what}")
        }
        (true, false) => format!("no match: {what} is not in {ports}"),
        (false, false) => "no match: neither peer nor port".to_owned(),
    }
}

fn cluster_policy_report(
    snap: &Snapshot,
    dir: Direction,
    t: &ClusterPolicyTrace,
    flow: &Flow,
    what: &str,
    peer: &str,
) -> ClusterPolicyReport {
    let p = snap.cluster_policy(t.policy);
    let specs: &[ClusterRule] = p.rules(dir).unwrap_or_default();
    let rules = t
        .rules
        .iter()
        .filter_map(|r| {
            let spec = specs.get(r.index)?;
            let ports = match &spec.ports {
                None => "any port".to_owned(),
                Some(ps) => ps
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let peers = if spec.peers.is_empty() {
                // An Accept rule whose every peer was invalid (fail closed).
                "nothing: its peers are invalid".to_owned()
            } else {
                spec.peers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Some(RuleReport {
                index: r.index,
                peers: format!(
                    "{} [{peers}]",
                    if dir == Direction::Ingress {
                        "from"
                    } else {
                        "to"
                    }
                ),
                why: why(r.peer_matches, r.port_matches, flow, what, peer, &ports),
                ports,
                peer_matches: r.peer_matches,
                port_matches: r.port_matches,
                matches: r.peer_matches && r.port_matches,
                name: spec.name.clone(),
                action: Some(spec.action),
            })
        })
        .collect();
    ClusterPolicyReport {
        policy: p.name.clone(),
        tier: p.tier,
        priority: p.priority,
        invalid: p.errors.iter().map(ToString::to_string).collect(),
        note: None,
        rules,
    }
}

/// An end of a flow with its address and node, for `explain -o wide` and JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointReport {
    /// The pod (`namespace/name`), when it is a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address the flow uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The pod's node, or the node that owns the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What a non-pod address is: `node`, `service` (a ClusterIP), or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

impl EndpointReport {
    /// Names an endpoint.
    pub fn new(snap: &Snapshot, e: &Endpoint) -> EndpointReport {
        match e.pod {
            Some(id) => {
                let pod = snap.pod(id);
                EndpointReport {
                    pod: Some(pod.key()),
                    ip: e.ip,
                    node: pod.node.clone(),
                    kind: None,
                }
            }
            None => {
                let node = e.ip.and_then(|ip| snap.node_for_ip(ip)).map(str::to_owned);
                let kind = match e.ip {
                    _ if node.is_some() => "node",
                    Some(ip) if snap.service_for_ip(ip).is_some() => "service",
                    _ => "external",
                };
                EndpointReport {
                    pod: None,
                    ip: e.ip,
                    node,
                    kind: Some(kind),
                }
            }
        }
    }

    /// `ns/pod 198.18.1.5 on node node-a`, `198.18.0.1 (node node-a)`, `203.0.113.9 (not a pod)`.
    pub fn describe(&self) -> String {
        let ip = self
            .ip
            .map_or_else(|| "(no address)".to_owned(), |ip| ip.to_string());
        match (&self.pod, &self.node) {
            (Some(pod), Some(node)) => format!("{pod} {ip} on node {node}"),
            (Some(pod), None) => format!("{pod} {ip} (no node in the manifests)"),
            (None, Some(node)) => format!("{ip} (node {node})"),
            (None, None) if self.kind == Some("service") => {
                format!("{ip} (a Service ClusterIP, not a pod)")
            }
            (None, None) => format!("{ip} (not a pod)"),
        }
    }
}

/// `explain -o json|yaml` between two ends: the verdict, both sides' reasons, the
/// trace of every isolating policy's rules, and the ends' addresses and nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplainReport {
    /// The client, as given.
    pub from: String,
    /// The server, as given.
    pub to: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port (after a named port is resolved).
    pub port: u16,
    /// `plaintext` or `tunnel`.
    pub via: Transport,
    /// Whether the connection is allowed.
    pub allowed: bool,
    /// Both sides' results, with names.
    pub decision: DecisionReport,
    /// Every isolating policy's rules and why each matched or not.
    pub trace: TraceReport,
    /// The ends' addresses and nodes.
    pub endpoints: Endpoints,
}

/// Both ends of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// The client.
    pub from: EndpointReport,
    /// The server.
    pub to: EndpointReport,
}

impl ExplainReport {
    /// Names an explanation; `from` and `to` are how the ends were given.
    pub fn new(
        snap: &Snapshot,
        from: &str,
        to: &str,
        flow: &Flow,
        e: &Explanation,
    ) -> ExplainReport {
        ExplainReport {
            from: from.to_owned(),
            to: to.to_owned(),
            protocol: flow.protocol,
            port: flow.port,
            via: flow.transport,
            allowed: e.decision.allowed(),
            decision: DecisionReport::new(snap, flow, &e.decision),
            trace: TraceReport::new(snap, from, to, flow, e),
            endpoints: Endpoints {
                from: EndpointReport::new(snap, &flow.src),
                to: EndpointReport::new(snap, &flow.dst),
            },
        }
    }

    /// The text `explain` prints; `wide` adds the ends' addresses and nodes.
    pub fn text(&self, wide: bool) -> String {
        let mut out = String::new();
        let verdict = match self.decision.verdict {
            Verdict::Allow => "ALLOWED",
            Verdict::Deny => "DENIED",
            Verdict::AuditAllow => "ALLOWED (audit mode: would be denied)",
        };
        let what = flow_label(self.protocol, self.port);
        let _ = writeln!(out, "{} -> {} {what}: {verdict}", self.from, self.to);
        if wide {
            let _ = writeln!(out, "  from: {}", self.endpoints.from.describe());
            let _ = writeln!(out, "  to: {}", self.endpoints.to.describe());
        }
        for (dir, side) in [
            (Direction::Egress, &self.trace.egress),
            (Direction::Ingress, &self.trace.ingress),
        ] {
            let who = &side.who;
            let _ = writeln!(out, "  {dir} ({who}): {}", side.reason);
            for c in &side.cluster_policies {
                let _ = writeln!(
                    out,
                    "    ClusterNetworkPolicy {} [{} tier, priority {}] selects {who} for {dir}",
                    c.policy, c.tier, c.priority
                );
                if !c.invalid.is_empty() {
                    let _ = writeln!(
                        out,
                        "      INVALID, so it fails closed (an invalid rule matches nothing if it \
                         accepts, denies all if it denies or passes; an invalid object denies \
                         everything): {}",
                        c.invalid.join("; ")
                    );
                }
                if let Some(note) = &c.note {
                    let _ = writeln!(out, "      {note}");
                }
                for r in &c.rules {
                    let name = r
                        .name
                        .as_deref()
                        .map(|n| format!(" {n:?}"))
                        .unwrap_or_default();
                    let action = r.action.map(Action::as_str).unwrap_or("?");
                    let _ = writeln!(
                        out,
                        "      {dir}[{}]{name} {action} {} on {}: {}",
                        r.index, r.peers, r.ports, r.why
                    );
                }
            }
            for p in &side.policies {
                let mode = if p.mode == Mode::Audit {
                    " [audit mode]"
                } else {
                    ""
                };
                let _ = writeln!(out, "    policy {}{mode} selects {who} for {dir}", p.policy);
                if !p.invalid.is_empty() {
                    let _ = writeln!(
                        out,
                        "      INVALID, so it allows nothing: {}",
                        p.invalid.join("; ")
                    );
                }
                if let Some(note) = &p.note {
                    let _ = writeln!(out, "      {note}");
                }
                for r in &p.rules {
                    let _ = writeln!(
                        out,
                        "      {dir}[{}] {} on {}: {}",
                        r.index, r.peers, r.ports, r.why
                    );
                }
            }
        }
        out
    }
}

/// Renders an explanation as text: the verdict, each side's reason, and every
/// isolating policy's rules with what matched.
pub fn explain_text(snap: &Snapshot, from: &str, to: &str, flow: &Flow, e: &Explanation) -> String {
    ExplainReport::new(snap, from, to, flow, e).text(false)
}

/// The Service an `explain` went to, and the port it was asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceReport {
    /// `namespace/name`.
    pub name: String,
    /// Its ClusterIPs.
    pub cluster_ips: Vec<IpAddr>,
    /// Its selector (`null`: none, its EndpointSlices are managed by hand).
    pub selector: Option<crate::model::Labels>,
    /// The Service port asked about.
    pub port: u16,
    /// That port's name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// Where that port sends: a number, or a container port name resolved per pod.
    pub target_port: crate::model::PortRef,
}

/// One backend's verdict, as the datapath decides it after DNAT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendReport {
    /// The pod (`namespace/name`).
    pub pod: String,
    /// Its address the connection goes to (of the ClusterIP's family).
    pub ip: IpAddr,
    /// Its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's port (the resolved `targetPort`).
    pub port: u16,
    /// Whether this backend's connection is allowed.
    pub allowed: bool,
    /// Both sides' results.
    pub decision: DecisionReport,
    /// Every isolating policy's rules and why each matched or not.
    pub trace: TraceReport,
    #[serde(skip)]
    text: ExplainReport,
}

/// A pod the Service's selector picks that kube-proxy would not send to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotBackend {
    /// The pod.
    pub pod: String,
    /// Why not.
    pub reason: String,
}

/// `explain` toward a Service (by name or ClusterIP): what the datapath decides for
/// each backend after kube-proxy's DNAT. Allowed only when every backend allows it: a
/// connection goes to whichever backend kube-proxy picks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceExplanation {
    /// The client, as given.
    pub from: String,
    /// The Service, as given.
    pub to: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// `plaintext` or `tunnel`.
    pub via: Transport,
    /// Whether every backend allows it (false with no backends: nothing to connect to).
    pub allowed: bool,
    /// The Service and port.
    pub service: ServiceReport,
    /// Each backend's verdict, in pod name order.
    pub backends: Vec<BackendReport>,
    /// How many backends deny.
    pub denied: usize,
    /// e.g. `2 of 3 backends deny`, or why there is nothing to connect to.
    pub summary: String,
    /// Pods the selector picks that are no backends, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_backends: Vec<NotBackend>,
    /// The ClusterIP the Service was named by, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
}

/// What `explain` needs to decide a connection to a Service.
#[derive(Clone, Copy, Debug)]
pub struct ServiceQuery<'a> {
    /// The client, as given.
    pub from: &'a str,
    /// The Service, as given.
    pub to: &'a str,
    /// The client.
    pub src: Endpoint,
    /// The Service.
    pub service: &'a crate::model::Service,
    /// The Service port asked about.
    pub port: &'a crate::model::ServicePort,
    /// The ClusterIP the Service was named by, if it was: its family is the connection's.
    pub cluster_ip: Option<IpAddr>,
    /// The address family the connection uses (`Some(true)`: IPv6), when known otherwise.
    pub v6: Option<bool>,
    /// Plaintext or through the tunnel.
    pub transport: Transport,
}

impl ServiceExplanation {
    /// Resolves the Service port's backends ([`Snapshot::service_backends`]) and explains
    /// the connection to each, as the datapath sees it after DNAT.
    pub fn new(snap: &Snapshot, q: &ServiceQuery<'_>) -> ServiceExplanation {
        let (svc, sp) = (q.service, q.port);
        let selector = svc.selector.as_ref().map(selector_text);
        let backend_ids = snap.service_backends(svc, sp);
        let mut not_backends = Vec::new();
        for id in snap.service_pods(svc) {
            if !backend_ids.iter().any(|b| b.pod == id) {
                not_backends.push(NotBackend {
                    pod: snap.pod(id).key(),
                    reason: format!(
                        "no {} container port named {}: not a backend (as in its EndpointSlices)",
                        sp.protocol, sp.target
                    ),
                });
            }
        }
        let family = q
            .cluster_ip
            .map(|ip| ip.is_ipv6())
            .or(q.v6)
            .or_else(|| q.src.ip.map(|ip| ip.is_ipv6()));
        let mut backends = Vec::new();
        for b in &backend_ids {
            let pod = snap.pod(b.pod);
            let ip = pod
                .ips
                .iter()
                .find(|ip| family.is_none_or(|v6| ip.is_ipv6() == v6))
                .copied();
            let Some(ip) = ip else {
                // kube-proxy sends only to addresses of the ClusterIP's family.
                let reason = match family {
                    _ if pod.ips.is_empty() => "no address in the manifests: not a backend",
                    Some(true) => "no IPv6 address: not a backend for this address family",
                    _ => "no IPv4 address: not a backend for this address family",
                };
                not_backends.push(NotBackend {
                    pod: pod.key(),
                    reason: reason.to_owned(),
                });
                continue;
            };
            let dst = snap
                .endpoint_for_pod(&pod.namespace, &pod.name, family)
                .unwrap_or(Endpoint {
                    ip: Some(ip),
                    pod: None,
                });
            let flow = Flow {
                src: q.src,
                dst,
                protocol: sp.protocol,
                port: b.port,
                transport: q.transport,
            };
            let e = snap.explain(&flow);
            let label = format!("{} ({ip})", pod.key());
            let text = ExplainReport::new(snap, q.from, &label, &flow, &e);
            backends.push(BackendReport {
                pod: pod.key(),
                ip,
                node: pod.node.clone(),
                port: b.port,
                allowed: e.decision.allowed(),
                decision: text.decision.clone(),
                trace: text.trace.clone(),
                text,
            });
        }
        let n = backends.len();
        let denied = backends.iter().filter(|b| !b.allowed).count();
        let audit = backends
            .iter()
            .filter(|b| b.decision.verdict == Verdict::AuditAllow)
            .count();
        let summary = match (&selector, n) {
            (None, _) => "no backends: the Service has no selector, so its endpoints are \
                          EndpointSlices managed by hand, which netward does not read (explain \
                          the backend itself: --to <pod or IP>)"
                .to_owned(),
            (Some(sel), 0) if not_backends.is_empty() => format!(
                "no backends: no pod in namespace {} matches the selector {sel}",
                svc.namespace
            ),
            (Some(sel), 0) => format!(
                "no backends: {} pod{} match the selector {sel}, and none can take this port",
                not_backends.len(),
                if not_backends.len() == 1 { "" } else { "s" },
            ),
            (_, 1) if denied == 1 => "its only backend denies".to_owned(),
            (_, 1) => "its only backend allows".to_owned(),
            (_, _) if denied > 0 => format!("{denied} of {n} backends deny"),
            (_, _) => format!("all {n} backends allow"),
        };
        let summary = if audit > 0 && denied == 0 && n > 0 {
            format!(
                "{summary} ({audit} only because the policies that would deny are in audit mode)"
            )
        } else {
            summary
        };
        ServiceExplanation {
            from: q.from.to_owned(),
            to: q.to.to_owned(),
            protocol: sp.protocol,
            port: sp.port,
            via: q.transport,
            allowed: n > 0 && denied == 0,
            service: ServiceReport {
                name: svc.key(),
                cluster_ips: svc.cluster_ips.clone(),
                selector: svc.selector.clone(),
                port: sp.port,
                port_name: sp.name.clone(),
                protocol: sp.protocol,
                target_port: sp.target.clone(),
            },
            backends,
            denied,
            summary,
            not_backends,
            cluster_ip: q.cluster_ip,
        }
    }

    /// The text `explain` prints: the verdict over all backends, then each backend's
    /// explanation; `wide` adds the ends' addresses and nodes.
    pub fn text(&self, wide: bool) -> String {
        let mut out = String::new();
        let what = flow_label(self.protocol, self.port);
        let ip = match (self.cluster_ip, self.service.cluster_ips.as_slice()) {
            (Some(ip), _) => ip.to_string(),
            (None, []) => "no ClusterIP".to_owned(),
            (None, ips) => ips
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let head = format!(
            "{} -> service {} ({ip}) {what}",
            self.from, self.service.name
        );
        if self.backends.is_empty() {
            let _ = writeln!(out, "{head}: NOTHING TO CONNECT TO\n  {}", self.summary);
        } else {
            let verdict = if self.allowed { "ALLOWED" } else { "DENIED" };
            let _ = writeln!(out, "{head}: {verdict} ({})", self.summary);
        }
        if let Some(sel) = &self.service.selector
            && !self.backends.is_empty()
        {
            let _ = writeln!(
                out,
                "  kube-proxy sends it to one of the backends (pods {} in {}, targetPort {}); \
                 netward decides each after DNAT:",
                selector_text(sel),
                self.service.name.split('/').next().unwrap_or_default(),
                self.service.target_port
            );
        }
        for nb in &self.not_backends {
            let _ = writeln!(out, "  {}: {}", nb.pod, nb.reason);
        }
        for b in &self.backends {
            out.push('\n');
            out.push_str(&b.text.text(wide));
        }
        out
    }
}

/// `app=web,tier=front`, as kubectl prints a selector.
fn selector_text(labels: &crate::model::Labels) -> String {
    if labels.is_empty() {
        return "(all pods)".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_peers(rule: &crate::model::Rule, dir: Direction) -> String {
    use crate::model::{NamespaceScope, Peer};
    let word = if dir == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let Some(peers) = &rule.peers else {
        return format!("{word} anywhere");
    };
    let parts: Vec<String> = peers
        .iter()
        .map(|p| match p {
            Peer::IpBlock(b) => {
                if b.except.is_empty() {
                    format!("ipBlock {}", b.cidr)
                } else {
                    let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                    format!("ipBlock {} except {}", b.cidr, ex.join(","))
                }
            }
            Peer::Pods { namespaces, pods } => {
                let pods = pods
                    .as_ref()
                    .map_or("all pods".to_owned(), |s| format!("pods {s}"));
                match namespaces {
                    NamespaceScope::Own => format!("{pods} (same namespace)"),
                    NamespaceScope::Selected(s) => format!("{pods} in namespaces {s}"),
                }
            }
        })
        .collect();
    format!("{word} [{}]", parts.join(" OR "))
}

/// Renders a matrix like the Kubernetes e2e truth tables: `.` allowed, `X` denied,
/// rows are sources, columns destinations.
pub fn matrix_table(m: &Matrix) -> String {
    table(m, None)
}

/// A cell that changed between two matrices of the same protocol and port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CellChange {
    /// The source pod.
    pub from: String,
    /// The destination pod.
    pub to: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
    /// Whether it is allowed now (it was not before), or denied now.
    pub allowed: bool,
}

/// The cells of `m` that differ from `previous` (pods in both), in row order.
pub fn matrix_changes(m: &Matrix, previous: &Matrix) -> Vec<CellChange> {
    let was = |from: &str, to: &str| {
        let i = previous.pods.iter().position(|p| p == from)?;
        let j = previous.pods.iter().position(|p| p == to)?;
        previous.allowed.get(i)?.get(j).copied()
    };
    let mut out = Vec::new();
    for (i, from) in m.pods.iter().enumerate() {
        for (j, to) in m.pods.iter().enumerate() {
            let now = m.allowed[i][j];
            if was(from, to).is_some_and(|w| w != now) {
                out.push(CellChange {
                    from: from.clone(),
                    to: to.clone(),
                    protocol: m.protocol,
                    port: m.port,
                    allowed: now,
                });
            }
        }
    }
    out
}

/// [`matrix_table`] for one step of a walk through files: cells that changed since
/// `previous` are `+` (now allowed) or `-` (now denied), and listed after the table
/// with the pods that are new.
pub fn matrix_table_since(m: &Matrix, previous: &Matrix) -> String {
    let changes = matrix_changes(m, previous);
    let mut out = table(m, Some(&changes));
    let new: Vec<&str> = m
        .pods
        .iter()
        .filter(|p| !previous.pods.contains(p))
        .map(String::as_str)
        .collect();
    if !new.is_empty() {
        let _ = writeln!(out, "new pods: {}", new.join(", "));
    }
    if changes.is_empty() {
        let _ = writeln!(out, "no cell changed since the previous step");
    } else {
        let _ = writeln!(out, "changed since the previous step:");
        for c in &changes {
            let now = if c.allowed {
                "now allowed"
            } else {
                "now denied"
            };
            let _ = writeln!(out, "  {} -> {}: {now}", c.from, c.to);
        }
    }
    out
}

fn table(m: &Matrix, changes: Option<&[CellChange]>) -> String {
    let mut out = String::new();
    let legend = if changes.is_some() {
        "; + now allowed, - now denied"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{} (rows: from, columns: to; . allowed, X denied{legend})",
        flow_label(m.protocol, m.port)
    );
    let width = m.pods.iter().map(String::len).max().unwrap_or(0);
    for (j, p) in m.pods.iter().enumerate() {
        let _ = writeln!(out, "{:width$}  {}{p}", "", "| ".repeat(j));
    }
    let changed = |from: &str, to: &str| {
        changes
            .unwrap_or_default()
            .iter()
            .any(|c| c.from == from && c.to == to)
    };
    for (i, from) in m.pods.iter().enumerate() {
        let row: Vec<&str> = m.allowed[i]
            .iter()
            .zip(&m.pods)
            .map(|(a, to)| match (*a, changed(from, to)) {
                (true, false) => ".",
                (false, false) => "X",
                (true, true) => "+",
                (false, true) => "-",
            })
            .collect();
        let _ = writeln!(out, "{from:width$}  {}", row.join(" "));
    }
    out
}

/// For `matrix -o wide`: after the table, each cell a policy decided (the others are
/// open: no policy isolates either end, or a pod reaches itself), with the rule that
/// allowed it or the policies that isolate and allow nothing, per side.
/// `decisions[i][j]` is the decision from `pods[i]` to `pods[j]`.
pub fn matrix_reasons(snap: &Snapshot, pods: &[PodId], decisions: &[Vec<Decision>]) -> String {
    let names = |ids: &[PolicyId]| {
        ids.iter()
            .map(|id| snap.policy(*id).key())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = Vec::new();
    for (i, row) in decisions.iter().enumerate() {
        for (j, d) in row.iter().enumerate() {
            let mut parts = Vec::new();
            for (dir, side) in [
                (Direction::Egress, &d.egress),
                (Direction::Ingress, &d.ingress),
            ] {
                match side {
                    Side::Allowed { policy, rule } => parts.push(format!(
                        "{dir} allowed by {} {dir}[{rule}]",
                        snap.policy(*policy).key()
                    )),
                    Side::Denied { isolated_by } => {
                        parts.push(format!("{dir} denied (isolated by {})", names(isolated_by)));
                    }
                    Side::AuditDenied {
                        would_be_isolated_by,
                    } => parts.push(format!(
                        "{dir} allowed in audit mode (would be denied by {})",
                        names(would_be_isolated_by)
                    )),
                    Side::PlaintextUnderStrictMtls => parts.push(format!(
                        "{dir} denied (plaintext under netward.io/mtls=strict)"
                    )),
                    Side::ClusterAccepted { policy, rule } => parts.push(format!(
                        "{dir} allowed by {}",
                        ClusterRuleRef::new(snap, *policy, Some(dir), *rule, Action::Accept)
                            .describe(dir)
                    )),
                    Side::ClusterDenied { policy, rule } => parts.push(format!(
                        "{dir} denied by {}",
                        ClusterRuleRef::new(snap, *policy, Some(dir), *rule, Action::Deny)
                            .describe(dir)
                    )),
                    Side::NotPod | Side::NotIsolated | Side::Exempt(_) => {}
                }
            }
            if parts.is_empty() {
                continue;
            }
            let (Some(from), Some(to)) = (pods.get(i), pods.get(j)) else {
                continue;
            };
            lines.push(format!(
                "  {} {} -> {}: {}",
                if d.allowed() { "." } else { "X" },
                snap.pod(*from).key(),
                snap.pod(*to).key(),
                parts.join("; ")
            ));
        }
    }
    let mut out = String::new();
    if lines.is_empty() {
        let _ = writeln!(
            out,
            "no policy isolates any of these pods: every cell is open"
        );
    } else {
        let _ = writeln!(
            out,
            "why (each cell a policy decided; the others are open: no policy isolates their ends):"
        );
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

/// A Graphviz `digraph` of the allowed flows in matrices over the same pods (one per
/// port): a node per pod, grouped in a `subgraph "cluster_<namespace>"` per namespace;
/// an edge per allowed (from, to) pair, labelled with every port it is allowed on. A
/// pod reaches itself always: no self edges. A pod that reaches every other pod on
/// every port asked (three pods or more) gets one edge to the node `"*"` ("every pod")
/// instead of one edge per pod.
pub fn matrix_dot(matrices: &[Matrix]) -> String {
    let mut out = String::new();
    let Some(first) = matrices.first() else {
        return "digraph netward {\n}\n".to_owned();
    };
    let pods = &first.pods;
    let labels: Vec<String> = matrices
        .iter()
        .map(|m| flow_label(m.protocol, m.port))
        .collect();
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let _ = writeln!(out, "digraph netward {{");
    let _ = writeln!(
        out,
        "  label={};",
        q(&format!("netward: allowed flows, {}", labels.join(", ")))
    );
    let _ = writeln!(out, "  labelloc=t;");
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [shape=box, style=rounded];");
    let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in pods {
        let (ns, name) = p.split_once('/').unwrap_or(("", p));
        by_ns.entry(ns).or_default().push(name);
    }
    for (ns, names) in &by_ns {
        let _ = writeln!(out, "  subgraph {} {{", q(&format!("cluster_{ns}")));
        let _ = writeln!(out, "    label={};", q(ns));
        for name in names {
            let _ = writeln!(
                out,
                "    {} [label={}];",
                q(&format!("{ns}/{name}")),
                q(name)
            );
        }
        let _ = writeln!(out, "  }}");
    }
    // The ports each (from, to) pair is allowed on.
    let allowed_on = |i: usize, j: usize| -> Vec<&str> {
        matrices
            .iter()
            .zip(&labels)
            .filter(|(m, _)| m.allowed.get(i).and_then(|r| r.get(j)).copied() == Some(true))
            .map(|(_, l)| l.as_str())
            .collect()
    };
    let every = labels.iter().map(String::as_str).collect::<Vec<_>>();
    let n = pods.len();
    let reaches_all: Vec<bool> = (0..n)
        .map(|i| {
            n >= 3
                && (0..n)
                    .filter(|j| *j != i)
                    .all(|j| allowed_on(i, j) == every)
        })
        .collect();
    if reaches_all.contains(&true) {
        let _ = writeln!(
            out,
            "  {} [label=\"every pod\", shape=ellipse, style=dashed];",
            q("*")
        );
    }
    for i in 0..n {
        if reaches_all[i] {
            let _ = writeln!(
                out,
                "  {} -> {} [label={}];",
                q(&pods[i]),
                q("*"),
                q(&every.join(", "))
            );
            continue;
        }
        for j in (0..n).filter(|j| *j != i) {
            let on = allowed_on(i, j);
            if !on.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label={}];",
                    q(&pods[i]),
                    q(&pods[j]),
                    q(&on.join(", "))
                );
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.policy, self.rule)
    }
}

/// `TCP/80`, or just `ICMP` for a protocol without ports.
fn flow_label(protocol: crate::model::Protocol, port: u16) -> String {
    if protocol.has_ports() {
        format!("{protocol}/{port}")
    } else {
        protocol.to_string()
    }
}
