//! Decisions rendered with names instead of ids: the one shape shared by
//! `explain -o json`, the audit log and the metrics labels.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::engine::{Decision, Explanation, Flow, Matrix, Side, Verdict};
use crate::model::{Direction, Mode};
use crate::snapshot::{PolicyId, Snapshot};

/// A reference to the rule that allowed a side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleRef {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Index in its `ingress` or `egress` list.
    pub rule: usize,
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
}

impl SideReport {
    /// Names a side of a decision. `pod` is the endpoint this side is about.
    pub fn new(snap: &Snapshot, side: &Side, pod: Option<crate::snapshot::PodId>) -> SideReport {
        let names = |ids: &[PolicyId]| ids.iter().map(|id| snap.policy(*id).key()).collect();
        let mut r = SideReport {
            result: String::new(),
            pod: pod.map(|p| snap.pod(p).key()),
            allowed_by: None,
            isolated_by: Vec::new(),
            exemption: None,
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
        }
        r
    }

    /// One line for humans, e.g. `denied: isolated by ns/a, ns/b; no rule allows it`.
    pub fn describe(&self, dir: Direction) -> String {
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
            egress: SideReport::new(snap, &d.egress, flow.src.pod),
            ingress: SideReport::new(snap, &d.ingress, flow.dst.pod),
        }
    }
}

/// Renders an explanation as text: the verdict, each side's reason, and every
/// isolating policy's rules with what matched.
pub fn explain_text(snap: &Snapshot, from: &str, to: &str, flow: &Flow, e: &Explanation) -> String {
    let report = DecisionReport::new(snap, flow, &e.decision);
    let mut out = String::new();
    let verdict = match report.verdict {
        Verdict::Allow => "ALLOWED",
        Verdict::Deny => "DENIED",
        Verdict::AuditAllow => "ALLOWED (audit mode: would be denied)",
    };
    let what = flow_label(flow.protocol, flow.port);
    let _ = writeln!(out, "{from} -> {to} {what}: {verdict}");
    for (dir, side, traces) in [
        (Direction::Egress, &report.egress, &e.egress),
        (Direction::Ingress, &report.ingress, &e.ingress),
    ] {
        let who = side.pod.as_deref().unwrap_or(match dir {
            Direction::Egress => from,
            Direction::Ingress => to,
        });
        let _ = writeln!(out, "  {dir} ({who}): {}", side.describe(dir));
        for t in traces {
            let p = snap.policy(t.policy);
            let mode = if t.mode == Mode::Audit {
                " [audit mode]"
            } else {
                ""
            };
            let _ = writeln!(out, "    policy {}{mode} selects {who} for {dir}", p.key());
            if !p.errors.is_empty() {
                let _ = writeln!(
                    out,
                    "      INVALID, so it allows nothing: {}",
                    p.errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if t.rules.is_empty() && p.errors.is_empty() {
                let _ = writeln!(out, "      no {dir} rules: denies all {dir}");
            }
            let specs = p.rules(dir).unwrap_or_default();
            for r in &t.rules {
                let spec = &specs[r.index];
                let peers = describe_peers(spec, dir);
                let ports = match &spec.ports {
                    None => "any port".to_owned(),
                    Some(ps) => ps
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let status = match (r.peer_matches, r.port_matches) {
                    (true, true) => "MATCH".to_owned(),
                    (false, true) => format!(
                        "no match: {} is none of these peers",
                        if dir == Direction::Ingress { from } else { to }
                    ),
                    (true, false) if !flow.protocol.has_ports() => {
                        format!("no match: a rule with ports never matches {what}")
                    }
                    (true, false) => format!("no match: {what} is not in {ports}"),
                    (false, false) => "no match: neither peer nor port".to_owned(),
                };
                let _ = writeln!(out, "      {dir}[{}] {peers} on {ports}: {status}", r.index);
            }
        }
    }
    out
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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (rows: from, columns: to; . allowed, X denied)",
        flow_label(m.protocol, m.port)
    );
    let width = m.pods.iter().map(String::len).max().unwrap_or(0);
    for (j, p) in m.pods.iter().enumerate() {
        let _ = writeln!(out, "{:width$}  {}{p}", "", "| ".repeat(j));
    }
    for (i, from) in m.pods.iter().enumerate() {
        let row: Vec<&str> = m.allowed[i]
            .iter()
            .map(|a| if *a { "." } else { "X" })
            .collect();
        let _ = writeln!(out, "{from:width$}  {}", row.join(" "));
    }
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
