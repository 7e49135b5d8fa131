//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, kubernetes-sigs/network-policy-api
//! v0.2.0): cluster-wide policies in an Admin tier, evaluated before NetworkPolicy, and a
//! Baseline tier, evaluated after it, each ordered by priority, with Accept, Deny and
//! Pass actions.
//!
//! [`api`] is the wire shape, decoded strictly like every other object; the model
//! ([`ClusterNetworkPolicy`]) is validated as the CRD's schema and CEL rules validate it,
//! and never fails as a whole: an object with errors fails closed, per rule (a rule
//! netward cannot understand) or as a Deny-everything policy for its subject (an object
//! it cannot understand; see [`ClusterNetworkPolicy::from_api`]), so a policy netward
//! cannot understand never opens traffic.

use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::{Direction, FieldError, PortMatch, PortSpec, Protocol, Selector};

/// The API group and version netward reads.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// The kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// The most rules one direction may hold, as the CRD says.
const MAX_RULES: usize = 25;
/// The most peers, protocols or networks one rule may hold, as the CRD says.
const MAX_ITEMS: usize = 25;

/// The wire shape of a ClusterNetworkPolicy, as the upstream CRD's schema defines it.
/// Every field is optional here so that a missing one is reported with its path.
pub mod api {
    #![allow(missing_docs)] // the upstream CRD documents each field

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::{Deserialize, Serialize};

    /// A whole object.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ClusterNetworkPolicy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub api_version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        #[serde(default)]
        pub metadata: ObjectMeta,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub spec: Option<Spec>,
        /// Written by implementations; not read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<serde_yaml::Value>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Spec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tier: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priority: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub subject: Option<Subject>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ingress: Option<Vec<IngressRule>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub egress: Option<Vec<EgressRule>>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Subject {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespaces: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pods: Option<NamespacedPod>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct NamespacedPod {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace_selector: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pod_selector: Option<LabelSelector>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct IngressRule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub action: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from: Option<Vec<IngressPeer>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocols: Option<Vec<ProtocolMatch>>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EgressRule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub action: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<Vec<EgressPeer>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub protocols: Option<Vec<ProtocolMatch>>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct IngressPeer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespaces: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pods: Option<NamespacedPod>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct EgressPeer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespaces: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pods: Option<NamespacedPod>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub nodes: Option<LabelSelector>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub networks: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub domain_names: Option<Vec<String>>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProtocolMatch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tcp: Option<ProtocolPort>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub udp: Option<ProtocolPort>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sctp: Option<ProtocolPort>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub destination_named_port: Option<String>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProtocolPort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub destination_port: Option<Port>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Port {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub number: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub range: Option<PortRange>,
    }

    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PortRange {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub start: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub end: Option<i64>,
    }

    impl k8s_openapi::Resource for ClusterNetworkPolicy {
        const API_VERSION: &'static str = "policy.networking.k8s.io/v1alpha2";
        const GROUP: &'static str = "policy.networking.k8s.io";
        const KIND: &'static str = "ClusterNetworkPolicy";
        const VERSION: &'static str = "v1alpha2";
        const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
        type Scope = k8s_openapi::ClusterResourceScope;
    }

    impl k8s_openapi::Metadata for ClusterNetworkPolicy {
        type Ty = ObjectMeta;

        fn metadata(&self) -> &ObjectMeta {
            &self.metadata
        }

        fn metadata_mut(&mut self) -> &mut ObjectMeta {
            &mut self.metadata
        }
    }
}

/// The tier a ClusterNetworkPolicy sits in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Tier {
    /// Before NetworkPolicy: cluster-wide rules namespaces cannot override.
    Admin,
    /// After NetworkPolicy: defaults for the pods no NetworkPolicy selects.
    Baseline,
}

impl Tier {
    /// `Admin` or `Baseline`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a matching rule does.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Action {
    /// Allows this side; no later rule or tier is looked at.
    Accept,
    /// Denies; no later rule or tier is looked at.
    Deny,
    /// Skips the rest of this tier: the next tier decides.
    Pass,
}

impl Action {
    /// `Accept`, `Deny` or `Pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }

    /// Among policies tied on priority, the action that wins (lower first): Deny, then
    /// Pass, then Accept. The API leaves ties to the implementation; netward picks the
    /// most restrictive so that a tie never opens what one of the policies closes.
    pub(crate) fn tie_rank(self) -> u8 {
        match self {
            Action::Deny => 0,
            Action::Pass => 1,
            Action::Accept => 2,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pods a subject or a pod peer selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodsIn {
    /// Every pod of the namespaces this selects.
    Namespaces(Selector),
    /// The pods `pods` selects in the namespaces `namespaces` selects.
    Pods {
        /// The namespaces.
        namespaces: Selector,
        /// The pods there.
        pods: Selector,
    },
    /// Every pod: what an invalid subject selects (fail closed).
    All,
}

impl PodsIn {
    /// Whether a pod with these labels, in a namespace with these labels, is selected.
    pub fn matches(
        &self,
        ns_labels: &crate::model::Labels,
        pod_labels: &crate::model::Labels,
    ) -> bool {
        match self {
            PodsIn::Namespaces(n) => n.matches(ns_labels),
            PodsIn::Pods { namespaces, pods } => {
                namespaces.matches(ns_labels) && pods.matches(pod_labels)
            }
            PodsIn::All => true,
        }
    }
}

impl fmt::Display for PodsIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodsIn::Namespaces(n) => write!(f, "pods in namespaces {n}"),
            PodsIn::Pods { namespaces, pods } => {
                write!(f, "pods {pods} in namespaces {namespaces}")
            }
            PodsIn::All => f.write_str("every pod"),
        }
    }
}

/// One element of a rule's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// `namespaces` or `pods`: live, non-host-network pods.
    Pods(PodsIn),
    /// `nodes` (egress): the addresses of the nodes whose labels match.
    Nodes(Selector),
    /// `networks` (egress): any address in these CIDRs, pods' included.
    Networks(Vec<IpNet>),
    /// Everything: the peer of the Deny rule an invalid policy is reduced to.
    Everything,
}

impl fmt::Display for ClusterPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPeer::Pods(p) => write!(f, "{p}"),
            ClusterPeer::Nodes(s) => write!(f, "nodes {s}"),
            ClusterPeer::Networks(n) => {
                let list: Vec<String> = n.iter().map(ToString::to_string).collect();
                write!(f, "networks {}", list.join(", "))
            }
            ClusterPeer::Everything => f.write_str("anywhere"),
        }
    }
}

/// One entry of a rule's `protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPort {
    /// `tcp`, `udp` or `sctp`, with or without a port or range.
    Protocol(PortMatch),
    /// `destinationNamedPort`: the destination pod's container port of that name, with
    /// that port's own protocol.
    Named(String),
}

impl fmt::Display for ClusterPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPort::Protocol(p) => write!(f, "{p}"),
            ClusterPort::Named(n) => write!(f, "named port {n}"),
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// `name`, when given.
    pub name: Option<String>,
    /// What it does.
    pub action: Action,
    /// `from` / `to` (never empty).
    pub peers: Vec<ClusterPeer>,
    /// `protocols`: `None` matches every protocol and port.
    pub ports: Option<Vec<ClusterPort>>,
}

/// A ClusterNetworkPolicy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicy {
    /// `metadata.name` (cluster-scoped: no namespace).
    pub name: String,
    /// Admin or Baseline (Admin when the tier is invalid: fail closed).
    pub tier: Tier,
    /// 0 (first) to 1000 (0 when the priority is invalid: fail closed).
    pub priority: u16,
    /// The pods it applies to (every pod when the subject is invalid).
    pub subject: PodsIn,
    /// Ingress rules; `None` when it has none (it does not touch ingress).
    pub ingress: Option<Vec<ClusterRule>>,
    /// Egress rules; `None` when it has none.
    pub egress: Option<Vec<ClusterRule>>,
    /// Validation errors. When non-empty, the policy is invalid and has failed closed:
    /// per rule, or (an error in the object itself) as a whole, one rule denying
    /// everything in each direction it has (see [`ClusterNetworkPolicy::from_api`]).
    pub errors: Arc<[FieldError]>,
}

impl ClusterNetworkPolicy {
    /// The rules for one direction, if the policy has any.
    pub fn rules(&self, dir: Direction) -> Option<&[ClusterRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Converts and validates an API object. Never fails: problems are in `errors`, and
    /// the policy fails closed. An error inside a rule (a peer netward cannot honour such
    /// as `domainNames`, an invalid peer, protocol or action) fails that rule closed, as
    /// upstream says for peers: an Accept rule matches nothing once its bad peers are
    /// dropped (nothing at all if the problem is elsewhere in it), a Deny or Pass rule
    /// (or one whose action is unknown) becomes "Deny all" in its place. An error in the
    /// object itself (name, version, tier, priority, subject, too many rules) makes the
    /// whole policy one rule denying everything: for its subject (every pod if the
    /// subject itself is invalid), in each direction it has rules for (both if it has
    /// none), at its tier and priority (Admin and 0 if those are invalid).
    pub fn from_api(obj: &api::ClusterNetworkPolicy) -> ClusterNetworkPolicy {
        Self::from_api_with_unknown_peers(obj, &[])
    }

    /// [`ClusterNetworkPolicy::from_api`] for an object that had unknown fields inside
    /// rule peers (`unknown`, each at its path, see [`peer_of`]): each such peer is one
    /// netward does not understand, and its rule fails closed, as upstream says for
    /// peers an implementation does not know.
    pub fn from_api_with_unknown_peers(
        obj: &api::ClusterNetworkPolicy,
        unknown: &[FieldError],
    ) -> ClusterNetworkPolicy {
        let mut errs = Vec::new();
        let push = |errs: &mut Vec<FieldError>, field: String, message: String| {
            errs.push(FieldError { field, message });
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            push(
                &mut errs,
                "metadata.name".into(),
                "a ClusterNetworkPolicy needs a name".into(),
            );
        }
        if let Some(ns) = obj.metadata.namespace.as_deref().filter(|n| !n.is_empty()) {
            push(
                &mut errs,
                "metadata.namespace".into(),
                format!("ClusterNetworkPolicy is cluster-scoped: remove namespace {ns:?}"),
            );
        }
        if let Some(v) = obj.api_version.as_deref()
            && v != API_VERSION
        {
            push(
                &mut errs,
                "apiVersion".into(),
                format!("unsupported version {v:?}: netward reads {API_VERSION}"),
            );
        }
        let spec = obj.spec.clone().unwrap_or_default();
        if obj.spec.is_none() {
            push(
                &mut errs,
                "spec".into(),
                "a ClusterNetworkPolicy needs a spec".into(),
            );
        }
        let tier = match spec.tier.as_deref() {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            Some(other) => {
                push(
                    &mut errs,
                    "spec.tier".into(),
                    format!("unknown tier {other:?}: expected Admin or Baseline"),
                );
                Tier::Admin
            }
            None => {
                push(
                    &mut errs,
                    "spec.tier".into(),
                    "required: Admin or Baseline".into(),
                );
                Tier::Admin
            }
        };
        let priority = match spec.priority {
            Some(p) if (0..=1000).contains(&p) => u16::try_from(p).unwrap_or(0),
            Some(p) => {
                push(
                    &mut errs,
                    "spec.priority".into(),
                    format!("priority {p} is out of range 0-1000"),
                );
                0
            }
            None => {
                push(
                    &mut errs,
                    "spec.priority".into(),
                    "required: 0 to 1000".into(),
                );
                0
            }
        };
        let subject = match &spec.subject {
            None => {
                push(
                    &mut errs,
                    "spec.subject".into(),
                    "required: namespaces or pods".into(),
                );
                None
            }
            Some(s) => pods_in(
                s.namespaces.as_ref(),
                s.pods.as_ref(),
                "spec.subject",
                &mut errs,
            ),
        };
        // Up to here, and too many rules, the object as a whole is broken; past here each
        // error belongs to one rule, which fails closed on its own (see `rules`).
        let too_many = |n: Option<usize>| n.is_some_and(|n| n > MAX_RULES);
        let structural = !errs.is_empty()
            || too_many(spec.ingress.as_ref().map(Vec::len))
            || too_many(spec.egress.as_ref().map(Vec::len));
        let ingress = rules(
            spec.ingress.as_deref(),
            "spec.ingress",
            "from",
            &mut errs,
            |r, f, errs| {
                let peers = r.from.as_deref().map(|list| {
                    list.iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let f = format!("{f}.from[{i}]");
                            let before = errs.len();
                            if unknown_peer(unknown, &f, errs) {
                                return None;
                            }
                            peer(
                                p.namespaces.as_ref(),
                                p.pods.as_ref(),
                                None,
                                None,
                                None,
                                &f,
                                errs,
                            )
                            .filter(|_| errs.len() == before)
                        })
                        .collect()
                });
                (
                    r.name.as_deref(),
                    r.action.as_deref(),
                    peers,
                    r.from.as_ref().map(Vec::len),
                    r.protocols.as_deref(),
                )
            },
        );
        let egress = rules(
            spec.egress.as_deref(),
            "spec.egress",
            "to",
            &mut errs,
            |r, f, errs| {
                let peers = r.to.as_deref().map(|list| {
                    list.iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let f = format!("{f}.to[{i}]");
                            let before = errs.len();
                            if unknown_peer(unknown, &f, errs) {
                                return None;
                            }
                            peer(
                                p.namespaces.as_ref(),
                                p.pods.as_ref(),
                                p.nodes.as_ref(),
                                p.networks.as_deref(),
                                p.domain_names.as_deref(),
                                &f,
                                errs,
                            )
                            .filter(|_| errs.len() == before)
                        })
                        .collect()
                });
                (
                    r.name.as_deref(),
                    r.action.as_deref(),
                    peers,
                    r.to.as_ref().map(Vec::len),
                    r.protocols.as_deref(),
                )
            },
        );
        let has_ingress = spec.ingress.as_ref().is_some_and(|r| !r.is_empty());
        let has_egress = spec.egress.as_ref().is_some_and(|r| !r.is_empty());
        if !structural {
            return ClusterNetworkPolicy {
                name,
                tier,
                priority,
                subject: subject.unwrap_or(PodsIn::All),
                ingress: ingress.filter(|r| !r.is_empty()),
                egress: egress.filter(|r| !r.is_empty()),
                errors: errs.into(),
            };
        }
        // Fail closed: what its subject selects is denied in the directions it has.
        let (in_on, eg_on) = if has_ingress || has_egress {
            (has_ingress, has_egress)
        } else {
            (true, true)
        };
        ClusterNetworkPolicy {
            name,
            tier,
            priority,
            subject: subject.unwrap_or(PodsIn::All),
            ingress: in_on.then(|| vec![deny_all(None)]),
            egress: eg_on.then(|| vec![deny_all(None)]),
            errors: errs.into(),
        }
    }

    /// A policy that could not even be decoded: every pod, both directions, denied, in the
    /// Admin tier at priority 0.
    pub fn unreadable(name: &str, error: FieldError) -> ClusterNetworkPolicy {
        ClusterNetworkPolicy {
            name: name.to_owned(),
            tier: Tier::Admin,
            priority: 0,
            subject: PodsIn::All,
            ingress: Some(vec![deny_all(None)]),
            egress: Some(vec![deny_all(None)]),
            errors: vec![error].into(),
        }
    }
}

/// The peer (`spec.ingress[0].from[1]`) an unknown field's path (`spec.ingress[0].from[1].x`)
/// is in, if it is in one.
pub fn peer_of(path: &str) -> Option<&str> {
    let (rest, peers) = match path.strip_prefix("spec.ingress[") {
        Some(r) => (r, "from["),
        None => (path.strip_prefix("spec.egress[")?, "to["),
    };
    let d1 = rest.find(|c: char| !c.is_ascii_digit())?;
    let rest = rest.get(d1..)?.strip_prefix("].")?.strip_prefix(peers)?;
    let d2 = rest.find(|c: char| !c.is_ascii_digit())?;
    if d1 == 0 || d2 == 0 || !rest.get(d2..)?.starts_with("].") {
        return None;
    }
    path.get(..path.len() - rest.len() + d2 + 1)
}

/// Whether the peer at `field` had unknown fields; if so, they are errors here.
fn unknown_peer(unknown: &[FieldError], field: &str, errs: &mut Vec<FieldError>) -> bool {
    let mut found = false;
    for u in unknown.iter().filter(|u| peer_of(&u.field) == Some(field)) {
        found = true;
        errs.push(FieldError {
            field: u.field.clone(),
            message: format!(
                "{}: a peer netward does not understand (its rule fails closed)",
                u.message
            ),
        });
    }
    found
}

/// The rule an invalid policy (`name` `None`), or an invalid Deny or Pass rule (its
/// name, if any), is reduced to.
fn deny_all(name: Option<String>) -> ClusterRule {
    ClusterRule {
        name: Some(name.map_or_else(
            || "invalid-policy-denies-all".to_owned(),
            |n| format!("{n} (invalid: denies all)"),
        )),
        action: Action::Deny,
        peers: vec![ClusterPeer::Everything],
        ports: None,
    }
}

/// A rule's name, action, peers (`None` for a peer with errors), number of peers and
/// protocols.
type RuleParts<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<Vec<Option<ClusterPeer>>>,
    Option<usize>,
    Option<&'a [api::ProtocolMatch]>,
);

fn rules<'a, R>(
    list: Option<&'a [R]>,
    field: &str,
    peers_name: &str,
    errs: &mut Vec<FieldError>,
    parts: impl Fn(&'a R, &str, &mut Vec<FieldError>) -> RuleParts<'a>,
) -> Option<Vec<ClusterRule>> {
    let list = list?;
    if list.len() > MAX_RULES {
        errs.push(FieldError {
            field: field.to_owned(),
            message: format!("{} rules: at most {MAX_RULES} are allowed", list.len()),
        });
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let before = errs.len();
        let (name, action, peers, n_peers, protocols) = parts(r, &f, errs);
        let peer_errors = errs.len() > before;
        let before = errs.len();
        if let Some(n) = name
            && n.chars().count() > 100
        {
            errs.push(FieldError {
                field: format!("{f}.name"),
                message: format!(
                    "rule name is {} characters long: at most 100",
                    n.chars().count()
                ),
            });
        }
        let action = match action {
            Some("Accept") => Some(Action::Accept),
            Some("Deny") => Some(Action::Deny),
            Some("Pass") => Some(Action::Pass),
            Some(other) => {
                errs.push(FieldError {
                    field: format!("{f}.action"),
                    message: format!("unknown action {other:?}: expected Accept, Deny or Pass"),
                });
                None
            }
            None => {
                errs.push(FieldError {
                    field: format!("{f}.action"),
                    message: "required: Accept, Deny or Pass".to_owned(),
                });
                None
            }
        };
        match n_peers {
            None | Some(0) => errs.push(FieldError {
                field: format!("{f}.{peers_name}"),
                message: "required: at least one peer".to_owned(),
            }),
            Some(n) if n > MAX_ITEMS => errs.push(FieldError {
                field: format!("{f}.{peers_name}"),
                message: format!("{n} peers: at most {MAX_ITEMS} are allowed"),
            }),
            Some(_) => {}
        }
        let ports: Option<Vec<ClusterPort>> = protocols.map(|list| {
            if list.is_empty() {
                errs.push(FieldError {
                    field: format!("{f}.protocols"),
                    message: "an empty list: omit protocols to match every protocol".to_owned(),
                });
            }
            if list.len() > MAX_ITEMS {
                errs.push(FieldError {
                    field: format!("{f}.protocols"),
                    message: format!("{} entries: at most {MAX_ITEMS} are allowed", list.len()),
                });
            }
            list.iter()
                .enumerate()
                .filter_map(|(j, p)| protocol(p, &format!("{f}.protocols[{j}]"), errs))
                .collect()
        });
        let peers = peers.unwrap_or_default();
        // Named ports need a pod at the other end (the CRD's CEL rule).
        let non_pod = peers
            .iter()
            .flatten()
            .any(|p| matches!(p, ClusterPeer::Nodes(_) | ClusterPeer::Networks(_)));
        let named = ports
            .iter()
            .flatten()
            .any(|p| matches!(p, ClusterPort::Named(_)));
        if non_pod && named {
            errs.push(FieldError {
                field: f.clone(),
                message: "networks/nodes peers cannot be set with destinationNamedPort: they have no named ports".into(),
            });
        }
        let rule_errors = errs.len() > before;
        let name = name.filter(|n| !n.is_empty()).map(str::to_owned);
        // Upstream's "fail closed", per rule: an Accept rule with a peer it cannot
        // understand matches nothing once that peer is removed (nothing at all when the
        // problem is elsewhere in the rule); a Deny or Pass rule, or one whose action
        // is unknown, becomes "Deny all" in its place.
        out.push(match action {
            Some(Action::Accept) if !rule_errors => ClusterRule {
                name,
                action: Action::Accept,
                peers: peers.into_iter().flatten().collect(),
                ports,
            },
            Some(Action::Accept) => ClusterRule {
                name,
                action: Action::Accept,
                peers: Vec::new(),
                ports,
            },
            Some(action) if !peer_errors && !rule_errors => ClusterRule {
                name,
                action,
                peers: peers.into_iter().flatten().collect(),
                ports,
            },
            _ => deny_all(Some(name.unwrap_or_else(|| "invalid-rule".to_owned()))),
        });
    }
    Some(out)
}

fn selector(sel: &LabelSelector, field: &str, errs: &mut Vec<FieldError>) -> Option<Selector> {
    match Selector::from_api(sel, field) {
        Ok(s) => Some(s),
        Err(e) => {
            errs.extend(e);
            None
        }
    }
}

/// A `namespaces` / `pods` pair (subject or peer): exactly one must be set.
fn pods_in(
    namespaces: Option<&LabelSelector>,
    pods: Option<&api::NamespacedPod>,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<PodsIn> {
    match (namespaces, pods) {
        (Some(n), None) => {
            selector(n, &format!("{field}.namespaces"), errs).map(PodsIn::Namespaces)
        }
        (None, Some(p)) => {
            let f = format!("{field}.pods");
            let namespaces = match &p.namespace_selector {
                // Optional upstream; empty selects every namespace.
                None => Some(Selector::everything()),
                Some(s) => selector(s, &format!("{f}.namespaceSelector"), errs),
            };
            let pods = match &p.pod_selector {
                None => {
                    errs.push(FieldError {
                        field: format!("{f}.podSelector"),
                        message: "required ({} selects every pod)".to_owned(),
                    });
                    None
                }
                Some(s) => selector(s, &format!("{f}.podSelector"), errs),
            };
            Some(PodsIn::Pods {
                namespaces: namespaces?,
                pods: pods?,
            })
        }
        (Some(_), Some(_)) => {
            errs.push(FieldError {
                field: field.to_owned(),
                message: "set exactly one of namespaces or pods, not both".to_owned(),
            });
            None
        }
        (None, None) => {
            errs.push(FieldError {
                field: field.to_owned(),
                message: "set exactly one of namespaces or pods".to_owned(),
            });
            None
        }
    }
}

fn peer(
    namespaces: Option<&LabelSelector>,
    pods: Option<&api::NamespacedPod>,
    nodes: Option<&LabelSelector>,
    networks: Option<&[String]>,
    domain_names: Option<&[String]>,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<ClusterPeer> {
    let set = [
        namespaces.is_some(),
        pods.is_some(),
        nodes.is_some(),
        networks.is_some(),
        domain_names.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        errs.push(FieldError {
            field: field.to_owned(),
            message: format!(
                "set exactly one of {} ({set} set)",
                if field.contains(".from[") {
                    "namespaces or pods"
                } else {
                    "namespaces, pods, nodes or networks"
                }
            ),
        });
        return None;
    }
    if let Some(names) = domain_names {
        errs.push(FieldError {
            field: format!("{field}.domainNames"),
            message: format!(
                "domain name peers ({}) are not supported: netward decides on a connection's \
                 first packet and cannot tell which name an address was resolved from; use \
                 networks with the addresses instead",
                names.join(", ")
            ),
        });
        return None;
    }
    if let Some(sel) = nodes {
        return selector(sel, &format!("{field}.nodes"), errs).map(ClusterPeer::Nodes);
    }
    if let Some(list) = networks {
        let f = format!("{field}.networks");
        if list.is_empty() || list.len() > MAX_ITEMS {
            errs.push(FieldError {
                field: f.clone(),
                message: format!("{} CIDRs: 1 to {MAX_ITEMS} are allowed", list.len()),
            });
        }
        let mut nets = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            match s.parse::<IpNet>() {
                Ok(n) => nets.push(n),
                Err(_) => errs.push(FieldError {
                    field: format!("{f}[{i}]"),
                    message: format!(
                        "invalid CIDR {s:?}: expected an address/prefix like 198.18.0.0/16 or fd00::/64"
                    ),
                }),
            }
        }
        return Some(ClusterPeer::Networks(nets));
    }
    pods_in(namespaces, pods, field, errs).map(ClusterPeer::Pods)
}

fn port_number(n: i64, field: String, errs: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(FieldError {
                field,
                message: format!("port {n} is out of range 1-65535"),
            });
            None
        }
    }
}

fn protocol(
    p: &api::ProtocolMatch,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Option<ClusterPort> {
    let set = [
        p.tcp.is_some(),
        p.udp.is_some(),
        p.sctp.is_some(),
        p.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        errs.push(FieldError {
            field: field.to_owned(),
            message: format!(
                "set exactly one of tcp, udp, sctp or destinationNamedPort ({set} set)"
            ),
        });
        return None;
    }
    if let Some(name) = &p.destination_named_port {
        let ok = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.chars().any(|c| c.is_ascii_lowercase())
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !ok {
            errs.push(FieldError {
                field: format!("{field}.destinationNamedPort"),
                message: format!("invalid port name {name:?}"),
            });
            return None;
        }
        return Some(ClusterPort::Named(name.clone()));
    }
    let (proto, key, pp) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(pp), _, _) => (Protocol::Tcp, "tcp", pp),
        (_, Some(pp), _) => (Protocol::Udp, "udp", pp),
        (_, _, Some(pp)) => (Protocol::Sctp, "sctp", pp),
        _ => return None,
    };
    let f = format!("{field}.{key}.destinationPort");
    let port = match &pp.destination_port {
        None => {
            errs.push(FieldError {
                field: f,
                message: "required (the CRD's minProperties: 1); omit the protocol entry to match every port"
                    .to_owned(),
            });
            return None;
        }
        Some(api::Port {
            number: Some(n),
            range: None,
        }) => {
            let n = port_number(*n, format!("{f}.number"), errs)?;
            PortSpec::Range(n, n)
        }
        Some(api::Port {
            number: None,
            range: Some(r),
        }) => {
            let start = match r.start {
                Some(s) => port_number(s, format!("{f}.range.start"), errs),
                None => {
                    errs.push(FieldError {
                        field: format!("{f}.range.start"),
                        message: "required".to_owned(),
                    });
                    None
                }
            };
            let end = match r.end {
                Some(e) => port_number(e, format!("{f}.range.end"), errs),
                None => {
                    errs.push(FieldError {
                        field: format!("{f}.range.end"),
                        message: "required".to_owned(),
                    });
                    None
                }
            };
            let (start, end) = (start?, end?);
            if start >= end {
                errs.push(FieldError {
                    field: format!("{f}.range"),
                    message: format!("start port {start} must be less than end port {end}"),
                });
                return None;
            }
            PortSpec::Range(start, end)
        }
        Some(_) => {
            errs.push(FieldError {
                field: f,
                message: "set exactly one of number or range".to_owned(),
            });
            return None;
        }
    };
    Some(ClusterPort::Protocol(PortMatch {
        protocol: proto,
        port,
    }))
}
