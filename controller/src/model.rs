//! The Kubernetes objects netward needs, reduced to the fields the engine reads,
//! and validated the way the API server would validate them.
//!
//! Conversion from the `k8s-openapi` types never fails as a whole: every problem
//! is recorded as a [`FieldError`] naming the field path and the bad value. A
//! NetworkPolicy with errors is kept as an *isolating-only* policy (it selects pods
//! but allows nothing), so a policy that cannot be understood never opens traffic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sLabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::labels::{Expression, Selector as KubeSelector};
use kube_core::{ParseExpressionError, SelectorExt};

/// Labels as the API stores them (sorted, so digests and output are stable).
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries automatically since Kubernetes 1.21.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Annotation (on a policy) or label (on a namespace) that stages policies in audit mode.
pub const MODE_KEY: &str = "netward.io/mode";
/// The namespace label that adopts mTLS between node proxies: `disabled` (the default),
/// `permissive` or `strict`.
pub const MTLS_KEY: &str = "netward.io/mtls";

/// The IP protocol of a flow: one of the three a NetworkPolicy port can name, or any
/// other (ICMP, ICMPv6, GRE, ...), which only rules without `ports` match.
///
/// Build it from a packet with [`Protocol::from_ip_number`]: [`Protocol::Other`] never
/// holds 6, 17 or 132 when it comes from there, and the engine treats one that does as
/// the named protocol. Policies and container ports never name `Other` (their
/// validation accepts TCP, UDP and SCTP only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP, the API's default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Any other IP protocol, by its IANA number (1 ICMP, 58 ICMPv6, 47 GRE, ...).
    Other(u8),
}

/// IANA keywords for the other protocols worth naming; the rest are `IP-<number>`.
const NAMED: &[(u8, &str)] = &[
    (1, "ICMP"),
    (2, "IGMP"),
    (4, "IPIP"),
    (41, "IPv6"),
    (47, "GRE"),
    (50, "ESP"),
    (51, "AH"),
    (58, "ICMPv6"),
    (89, "OSPF"),
    (103, "PIM"),
    (112, "VRRP"),
    (115, "L2TP"),
    (136, "UDPLite"),
];

/// `IP-<n>` for every protocol number, as static text: (bytes, length).
static GENERIC_NAMES: [([u8; 6], usize); 256] = {
    let mut table = [([0u8; 6], 0usize); 256];
    let mut n = 0;
    while n < 256 {
        let mut b = *b"IP-\0\0\0";
        let mut len = 3;
        if n >= 100 {
            b[len] = b'0' + (n / 100) as u8;
            len += 1;
        }
        if n >= 10 {
            b[len] = b'0' + (n / 10 % 10) as u8;
            len += 1;
        }
        b[len] = b'0' + (n % 10) as u8;
        len += 1;
        table[n] = (b, len);
        n += 1;
    }
    table
};

impl Protocol {
    /// The three protocols a NetworkPolicy can name, in a stable order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The protocol for an IP protocol number (IPv4 `protocol`, IPv6 next header).
    pub fn from_ip_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            other => Protocol::Other(other),
        }
    }

    /// The IP protocol number.
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    /// The same protocol, with an `Other` that holds 6, 17 or 132 turned into its name.
    pub fn canonical(self) -> Protocol {
        Protocol::from_ip_number(self.ip_number())
    }

    /// Whether the protocol has ports a NetworkPolicy can name (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        !matches!(self.canonical(), Protocol::Other(_))
    }

    /// Parses a name for CLI use, case-insensitively: the API's `TCP`, `UDP`, `SCTP`,
    /// and every name [`Protocol::as_str`] gives (`ICMP`, `ICMPv6`, `GRE`, `IP-<n>`, ...).
    pub fn parse(s: &str) -> Option<Protocol> {
        let upper = s.to_ascii_uppercase();
        match upper.as_str() {
            "TCP" => return Some(Protocol::Tcp),
            "UDP" => return Some(Protocol::Udp),
            "SCTP" => return Some(Protocol::Sctp),
            _ => {}
        }
        if let Some((n, _)) = NAMED.iter().find(|(_, name)| name.eq_ignore_ascii_case(s)) {
            return Some(Protocol::from_ip_number(*n));
        }
        let digits = upper.strip_prefix("IP-")?;
        if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u8>().ok().map(Protocol::from_ip_number)
    }

    /// The name the API, the audit log and `explain` use: `TCP`, `UDP`, `SCTP`; for other
    /// protocols the IANA keyword where one is well known (`ICMP` for 1, `ICMPv6` for 58,
    /// `GRE` for 47, ...), else `IP-<number>` (`IP-253`). Stable: it never changes for a
    /// number once released.
    pub fn as_str(self) -> &'static str {
        match self.canonical() {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Other(n) => {
                if let Some((_, name)) = NAMED.iter().find(|(k, _)| *k == n) {
                    return name;
                }
                let (bytes, len) = &GENERIC_NAMES[usize::from(n)];
                bytes
                    .get(..*len)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or("IP")
            }
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One problem in one field of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong, including the offending value.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects field errors while converting one object.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// A validated label selector. Matching is kube-core's; validation is the API server's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    inner: KubeSelector,
}

impl Selector {
    /// The empty selector `{}`: selects everything.
    pub fn everything() -> Selector {
        Selector {
            inner: KubeSelector::default(),
        }
    }

    /// A selector from `matchLabels` alone.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector {
            inner: labels
                .into_iter()
                .map(|(k, v)| Expression::Equal(k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// Whether the selector selects these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.inner.matches(labels)
    }

    /// Whether this is `{}`.
    pub fn selects_all(&self) -> bool {
        self.inner.selects_all()
    }

    /// Validates and converts an API label selector (a workload's `spec.selector`, say);
    /// the errors name fields under `field`.
    pub fn from_api(sel: &K8sLabelSelector, field: &str) -> Result<Selector, Vec<FieldError>> {
        let mut errs = Errors::default();
        match Selector::parse(sel, field, &mut errs) {
            Some(s) if errs.0.is_empty() => Ok(s),
            _ => Err(errs.0),
        }
    }

    /// Validates and converts an API label selector; errors are recorded under `field`.
    fn parse(sel: &K8sLabelSelector, field: &str, errs: &mut Errors) -> Option<Selector> {
        let before = errs.0.len();
        if let Some(labels) = &sel.match_labels {
            for (k, v) in labels {
                check_label_key(k, &format!("{field}.matchLabels"), errs);
                check_label_value(v, &format!("{field}.matchLabels[{k}]"), errs);
            }
        }
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            check_label_key(&req.key, &format!("{f}.key"), errs);
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        errs.push(
                            format!("{f}.values"),
                            format!(
                                "operator {:?} needs at least one value (key {:?})",
                                req.operator, req.key
                            ),
                        );
                    }
                    for (j, v) in values.iter().enumerate() {
                        check_label_value(v, &format!("{f}.values[{j}]"), errs);
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        errs.push(
                            format!("{f}.values"),
                            format!(
                                "operator {:?} takes no values, got {values:?}",
                                req.operator
                            ),
                        );
                    }
                }
                other => errs.push(
                    format!("{f}.operator"),
                    format!(
                        "unknown selector operator {other:?}: expected In, NotIn, Exists or DoesNotExist"
                    ),
                ),
            }
        }
        if errs.0.len() != before {
            return None;
        }
        match KubeSelector::try_from(sel.clone()) {
            Ok(inner) => Some(Selector { inner }),
            Err(ParseExpressionError(e)) => {
                errs.push(field, e);
                None
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.selects_all() {
            f.write_str("{}")
        } else {
            write!(f, "{}", self.inner)
        }
    }
}

fn check_label_key(key: &str, field: &str, errs: &mut Errors) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| crate::names::dns1123_subdomain(p).is_ok());
    if !(name_ok && prefix_ok) {
        errs.push(field, format!("invalid label key {key:?}"));
    }
}

fn check_label_value(value: &str, field: &str, errs: &mut Errors) {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    if !ok {
        errs.push(field, format!("invalid label value {value:?}"));
    }
}

fn parse_protocol(p: Option<&str>, field: &str, errs: &mut Errors) -> Option<Protocol> {
    match p {
        None => Some(Protocol::Tcp),
        Some(s) => match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            other => {
                errs.push(
                    field,
                    format!("unknown protocol {other:?}: expected TCP, UDP or SCTP"),
                );
                None
            }
        },
    }
}

fn parse_port_number(n: i32, field: &str, errs: &mut Errors) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(field, format!("port {n} is out of range 1-65535"));
            None
        }
    }
}

fn check_port_name(name: &str, field: &str, errs: &mut Errors) -> bool {
    // IANA_SVC_NAME: at most 15 chars, lowercase alphanumerics and '-', at least one letter,
    // no leading/trailing or double hyphen.
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
        errs.push(field, format!("invalid port name {name:?}"));
    }
    ok
}

fn parse_ip(s: &str, field: &str, errs: &mut Errors) -> Option<IpAddr> {
    match s.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.push(field, format!("invalid IP address {s:?}"));
            None
        }
    }
}

/// Whether a policy is enforced or only evaluated and logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Enforced.
    #[default]
    Enforce,
    /// Evaluated and logged as `audit-allow`, never enforced.
    Audit,
}

/// How a namespace's pods take cross-node connections (label `netward.io/mtls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plaintext between nodes; the tunnel is not used toward these pods.
    #[default]
    Disabled,
    /// The source uses the tunnel when the destination node offers it; plaintext is
    /// still accepted.
    Permissive,
    /// Cross-node connections are accepted only through the tunnel.
    Strict,
}

impl MtlsMode {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Disabled => "disabled",
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }

    /// Parses the label value.
    pub fn parse(v: &str) -> Option<MtlsMode> {
        match v {
            "disabled" => Some(MtlsMode::Disabled),
            "permissive" => Some(MtlsMode::Permissive),
            "strict" => Some(MtlsMode::Strict),
            _ => None,
        }
    }
}

fn parse_mode(v: Option<&String>, field: &str, errs: &mut Errors) -> Mode {
    match v.map(String::as_str) {
        None | Some("enforce") => Mode::Enforce,
        Some("audit") => Mode::Audit,
        Some(other) => {
            // Fail closed: an unknown mode is enforced.
            errs.push(
                field,
                format!("unknown mode {other:?}: expected \"enforce\" or \"audit\""),
            );
            Mode::Enforce
        }
    }
}

/// A namespace and its labels (always including `kubernetes.io/metadata.name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// Its labels, with the automatic name label added.
    pub labels: Labels,
    /// Audit mode for every policy in this namespace (label `netward.io/mode: audit`).
    pub mode: Mode,
    /// mTLS adoption (label `netward.io/mtls`). An unknown value is `strict`: it fails closed.
    pub mtls: MtlsMode,
}

impl Namespace {
    /// A namespace with only the automatic label, as `kubectl create namespace` makes it.
    pub fn new(name: &str) -> Namespace {
        Namespace::with_labels(name, Labels::new())
    }

    /// A namespace with these labels plus the automatic name label.
    pub fn with_labels(name: &str, mut labels: Labels) -> Namespace {
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        let mode = if labels.get(MODE_KEY).map(String::as_str) == Some("audit") {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        let mtls = labels.get(MTLS_KEY).map_or(MtlsMode::Disabled, |v| {
            MtlsMode::parse(v).unwrap_or(MtlsMode::Strict)
        });
        Namespace {
            name: name.to_owned(),
            labels,
            mode,
            mtls,
        }
    }

    /// What stands in for a Namespace whose labels failed validation: only its name
    /// label, so no policy's namespaceSelector matches it by accident, and strict mTLS
    /// unless its `netward.io/mtls` label reads `disabled` or `permissive` (fail closed).
    pub fn fallback(name: &str, labels: Option<&Labels>) -> Namespace {
        let mut ns = Namespace::new(name);
        if let Some(v) = labels.and_then(|l| l.get(MTLS_KEY)) {
            ns.mtls = MtlsMode::parse(v).unwrap_or(MtlsMode::Strict);
        }
        ns
    }

    /// Converts an API Namespace.
    pub fn from_api(ns: &core::Namespace) -> Result<Namespace, Vec<FieldError>> {
        let mut errs = Errors::default();
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push("metadata.name", "a Namespace needs a name");
        }
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        for (k, v) in &labels {
            check_label_key(k, "metadata.labels", &mut errs);
            check_label_value(v, &format!("metadata.labels[{k}]"), &mut errs);
        }
        let _ = parse_mode(
            labels.get(MODE_KEY),
            "metadata.labels[netward.io/mode]",
            &mut errs,
        );
        if let Some(v) = labels.get(MTLS_KEY)
            && MtlsMode::parse(v).is_none()
        {
            errs.push(
                "metadata.labels[netward.io/mtls]",
                format!(
                    "unknown mTLS mode {v:?}: expected \"disabled\", \"permissive\" or \"strict\""
                ),
            );
        }
        if errs.0.is_empty() {
            Ok(Namespace::with_labels(&name, labels))
        } else {
            Err(errs.0)
        }
    }
}

/// A container port, as named ports resolve against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name, when it has one.
    pub name: Option<String>,
    /// The number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

/// The parts of a Pod the engine needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when the API gave one.
    pub uid: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// IPs from `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `spec.hostNetwork`: such pods are the node, not policy endpoints.
    pub host_network: bool,
    /// Whether the pod has terminated (phase Succeeded or Failed): its IPs may be reused.
    pub terminated: bool,
    /// Container ports (for named ports).
    pub ports: Vec<ContainerPort>,
    /// `metadata.creationTimestamp` in Unix seconds, when the API gave one: when several
    /// live pods claim one address, the newest owns it (see [`Pod::claims_ip_before`]).
    pub created: Option<i64>,
    /// The workload this pod was expanded from when read from manifests, as
    /// `Kind name` (e.g. `Deployment web`, in the pod's namespace); `None` for a Pod object.
    pub owner: Option<String>,
}

impl Pod {
    /// A pod with labels and nothing else, for tests and builders.
    pub fn new(namespace: &str, name: &str, labels: Labels) -> Pod {
        Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: None,
            labels,
            ips: Vec::new(),
            node: None,
            host_network: false,
            terminated: false,
            ports: Vec::new(),
            created: None,
            owner: None,
        }
    }

    /// Whether this pod's claim to an address beats `other`'s, when both are live policy
    /// endpoints listing it. IPAM hands an address out again only once its holder has
    /// released it, so when two live pods claim one, the older one's status is stale
    /// (its deletion or termination has not reached us yet): the pod created later wins
    /// (a pod without a creation time counts as the oldest), then the smaller
    /// `namespace/name`. The full compile and every incremental update apply this one
    /// order, so the owner does not depend on the order events arrive in.
    pub fn claims_ip_before(&self, other: &Pod) -> bool {
        match self.created.cmp(&other.created) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                (&self.namespace, &self.name) < (&other.namespace, &other.name)
            }
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Resolves a named port for a protocol against this pod's container ports.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }

    /// Converts an API Pod.
    pub fn from_api(pod: &core::Pod) -> Result<Pod, Vec<FieldError>> {
        let mut errs = Errors::default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push("metadata.name", "a Pod needs a name");
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        for (k, v) in &labels {
            check_label_key(k, "metadata.labels", &mut errs);
            check_label_value(v, &format!("metadata.labels[{k}]"), &mut errs);
        }
        let mut ips = Vec::new();
        let status = pod.status.as_ref();
        if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
            for (i, p) in list.iter().enumerate() {
                if let Some(ip) = parse_ip(&p.ip, &format!("status.podIPs[{i}].ip"), &mut errs)
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        if let Some(s) = status.and_then(|s| s.pod_ip.as_ref())
            && let Some(ip) = parse_ip(s, "status.podIP", &mut errs)
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        let terminated = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let f = format!("spec.containers[{ci}].ports[{pi}]");
                let number =
                    parse_port_number(p.container_port, &format!("{f}.containerPort"), &mut errs);
                let protocol =
                    parse_protocol(p.protocol.as_deref(), &format!("{f}.protocol"), &mut errs);
                if let Some(n) = &p.name {
                    check_port_name(n, &format!("{f}.name"), &mut errs);
                }
                if let (Some(port), Some(protocol)) = (number, protocol) {
                    ports.push(ContainerPort {
                        name: p.name.clone(),
                        port,
                        protocol,
                    });
                }
            }
        }
        if errs.0.is_empty() {
            Ok(Pod {
                namespace,
                name,
                uid: pod.metadata.uid.clone(),
                labels,
                ips,
                node: spec.and_then(|s| s.node_name.clone()),
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                terminated,
                ports,
                created: pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                owner: None,
            })
        } else {
            Err(errs.0)
        }
    }
}

/// A node and its addresses (traffic from a pod's own node is always allowed in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Its labels (ClusterNetworkPolicy `nodes` peers select by them).
    pub labels: Labels,
    /// Its InternalIP / ExternalIP addresses.
    pub ips: Vec<IpAddr>,
    /// The ranges its pods get addresses from (`spec.podCIDRs`, else `spec.podCIDR`),
    /// host bits cleared: the datapath intercepts them whole, pods it has not learned
    /// yet included. Empty when the cluster does not allocate per-node ranges.
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    /// Converts an API Node.
    pub fn from_api(node: &core::Node) -> Result<Node, Vec<FieldError>> {
        let mut errs = Errors::default();
        let name = node.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push("metadata.name", "a Node needs a name");
        }
        let labels = node.metadata.labels.clone().unwrap_or_default();
        for (k, v) in &labels {
            check_label_key(k, "metadata.labels", &mut errs);
            check_label_value(v, &format!("metadata.labels[{k}]"), &mut errs);
        }
        let mut ips = Vec::new();
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in addrs.into_iter().flatten().enumerate() {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && let Some(ip) = parse_ip(
                    &a.address,
                    &format!("status.addresses[{i}].address"),
                    &mut errs,
                )
            {
                ips.push(ip);
            }
        }
        let spec = node.spec.as_ref();
        let mut pod_cidrs = Vec::new();
        let listed = spec
            .and_then(|s| s.pod_cidrs.as_deref())
            .unwrap_or_default();
        for (i, c) in listed.iter().enumerate() {
            if let Some(net) = parse_cidr(c, &format!("spec.podCIDRs[{i}]"), &mut errs)
                && !pod_cidrs.contains(&net.trunc())
            {
                pod_cidrs.push(net.trunc());
            }
        }
        // `podCIDR` is `podCIDRs[0]` on every API server since 1.16; alone only on older ones.
        if listed.is_empty()
            && let Some(c) = spec
                .and_then(|s| s.pod_cidr.as_deref())
                .filter(|c| !c.is_empty())
            && let Some(net) = parse_cidr(c, "spec.podCIDR", &mut errs)
        {
            pod_cidrs.push(net.trunc());
        }
        if errs.0.is_empty() {
            Ok(Node {
                name,
                labels,
                ips,
                pod_cidrs,
            })
        } else {
            Err(errs.0)
        }
    }
}

/// A Service port and where it sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name.
    pub name: Option<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service's port.
    pub port: u16,
    /// The backend port: a number, or a container port name.
    pub target: PortRef,
}

/// A port given as a number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// The parts of a Service that netward needs to name it in verdicts and to build the lab's DNAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs (may be empty in a manifest written by hand; the lab assigns them).
    pub cluster_ips: Vec<IpAddr>,
    /// The pod selector (None: a Service without selector).
    pub selector: Option<Labels>,
    /// Ports.
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// Converts an API Service.
    pub fn from_api(svc: &core::Service) -> Result<Service, Vec<FieldError>> {
        let mut errs = Errors::default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push("metadata.name", "a Service needs a name");
        }
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let spec = svc.spec.clone().unwrap_or_default();
        let mut cluster_ips = Vec::new();
        for (i, s) in spec.cluster_ips.iter().flatten().enumerate() {
            if s == "None" {
                continue;
            }
            if let Some(ip) = parse_ip(s, &format!("spec.clusterIPs[{i}]"), &mut errs) {
                cluster_ips.push(ip);
            }
        }
        if let Some(s) = spec
            .cluster_ip
            .as_deref()
            .filter(|s| *s != "None" && !s.is_empty())
            && let Some(ip) = parse_ip(s, "spec.clusterIP", &mut errs)
            && !cluster_ips.contains(&ip)
        {
            cluster_ips.insert(0, ip);
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let f = format!("spec.ports[{i}]");
            let protocol =
                parse_protocol(p.protocol.as_deref(), &format!("{f}.protocol"), &mut errs);
            let port = parse_port_number(p.port, &format!("{f}.port"), &mut errs);
            let target = match &p.target_port {
                None => port.map(PortRef::Number),
                Some(IntOrString::Int(n)) => {
                    parse_port_number(*n, &format!("{f}.targetPort"), &mut errs)
                        .map(PortRef::Number)
                }
                Some(IntOrString::String(s)) => {
                    if let Ok(n) = s.parse::<i32>() {
                        parse_port_number(n, &format!("{f}.targetPort"), &mut errs)
                            .map(PortRef::Number)
                    } else if check_port_name(s, &format!("{f}.targetPort"), &mut errs) {
                        Some(PortRef::Name(s.clone()))
                    } else {
                        None
                    }
                }
            };
            if let (Some(protocol), Some(port), Some(target)) = (protocol, port, target) {
                ports.push(ServicePort {
                    name: p.name.clone(),
                    protocol,
                    port,
                    target,
                });
            }
        }
        if errs.0.is_empty() {
            Ok(Service {
                namespace,
                name,
                cluster_ips,
                // An empty selector reads back from the API server as none (the map is
                // omitted when empty), and such a Service gets no endpoints.
                selector: spec.selector.filter(|s| !s.is_empty()),
                ports,
            })
        } else {
            Err(errs.0)
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// An `ipBlock` peer: a CIDR minus its exceptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Excluded sub-blocks.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in the block and in none of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The policy's own namespace (no `namespaceSelector`).
    Own,
    /// Namespaces whose labels match.
    Selected(Selector),
}

/// One element of a rule's `from` or `to` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (both in one peer means AND).
    Pods {
        /// Where to look.
        namespaces: NamespaceScope,
        /// Which pods there (`None`: all of them).
        pods: Option<Selector>,
    },
    /// `ipBlock`.
    IpBlock(IpBlock),
}

/// The port part of a NetworkPolicyPort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// `port` omitted: every port of the protocol.
    Any,
    /// A number, or a range with `endPort`.
    Range(u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(String),
}

/// One entry of a rule's `ports` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    /// The protocol (TCP when absent).
    pub protocol: Protocol,
    /// The port(s).
    pub port: PortSpec,
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "{}/*", self.protocol),
            PortSpec::Range(a, b) if a == b => write!(f, "{}/{a}", self.protocol),
            PortSpec::Range(a, b) => write!(f, "{}/{a}-{b}", self.protocol),
            PortSpec::Named(n) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

/// One ingress or egress rule. `None` lists mean "all", as in the API.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    /// `from` / `to`: `None` (absent or empty) matches every peer.
    pub peers: Option<Vec<Peer>>,
    /// `ports`: `None` (absent or empty) matches every port and protocol.
    pub ports: Option<Vec<PortMatch>>,
}

/// A policy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic into the selected pods.
    Ingress,
    /// Traffic out of the selected pods.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A NetworkPolicy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pods it applies to. `None` when the selector itself is invalid: the policy
    /// then isolates every pod in its namespace (fail closed).
    pub pod_selector: Option<Selector>,
    /// Ingress rules when the policy isolates ingress, else `None`.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules when the policy isolates egress, else `None`.
    pub egress: Option<Vec<Rule>>,
    /// Enforced or audit-only.
    pub mode: Mode,
    /// Validation errors. When non-empty, the rules above are empty: the policy
    /// isolates but allows nothing.
    pub errors: Arc<[FieldError]>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The rules for one direction, if the policy isolates it.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Converts an API NetworkPolicy. Never fails: problems are in `errors`.
    pub fn from_api(np: &net::NetworkPolicy) -> NetworkPolicy {
        let mut errs = Errors::default();
        let name = np.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push("metadata.name", "a NetworkPolicy needs a name");
        }
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let mode = parse_mode(
            np.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MODE_KEY)),
            "metadata.annotations[netward.io/mode]",
            &mut errs,
        );
        let spec = np.spec.clone().unwrap_or_default();
        if np.spec.is_none() {
            errs.push("spec", "a NetworkPolicy needs a spec");
        }
        let pod_selector = match &spec.pod_selector {
            // The API server defaults a missing podSelector to {}.
            None => Some(Selector::everything()),
            Some(s) => Selector::parse(s, "spec.podSelector", &mut errs),
        };
        // policyTypes, defaulted as the API server does.
        let (mut ingress_on, mut egress_on) = (false, false);
        match &spec.policy_types {
            Some(types) if !types.is_empty() => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => ingress_on = true,
                        "Egress" => egress_on = true,
                        other => {
                            // Unknown type: isolate both directions (fail closed).
                            ingress_on = true;
                            egress_on = true;
                            errs.push(
                                format!("spec.policyTypes[{i}]"),
                                format!(
                                    "unknown policy type {other:?}: expected Ingress or Egress"
                                ),
                            );
                        }
                    }
                }
            }
            _ => {
                ingress_on = true;
                egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }
        let ingress: Vec<Rule> = spec
            .ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                parse_rule(
                    r.from.as_deref(),
                    r.ports.as_deref(),
                    &format!("spec.ingress[{i}]"),
                    "from",
                    &mut errs,
                )
            })
            .collect();
        let egress: Vec<Rule> = spec
            .egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                parse_rule(
                    r.to.as_deref(),
                    r.ports.as_deref(),
                    &format!("spec.egress[{i}]"),
                    "to",
                    &mut errs,
                )
            })
            .collect();
        let valid = errs.0.is_empty();
        let keep = |on: bool, rules: Vec<Rule>| on.then(|| if valid { rules } else { Vec::new() });
        NetworkPolicy {
            namespace,
            name,
            pod_selector,
            ingress: keep(ingress_on, ingress),
            egress: keep(egress_on, egress),
            mode,
            errors: errs.0.into(),
        }
    }

    /// A policy that could not even be decoded: it isolates every pod of its namespace
    /// in both directions and allows nothing.
    pub fn unreadable(namespace: &str, name: &str, error: FieldError) -> NetworkPolicy {
        NetworkPolicy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod_selector: None,
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
            mode: Mode::Enforce,
            errors: vec![error].into(),
        }
    }
}

fn parse_rule(
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
    errs: &mut Errors,
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| parse_peer(p, &format!("{field}.{peers_name}[{i}]"), errs))
            .collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| parse_port(p, &format!("{field}.ports[{i}]"), errs))
            .collect()
    });
    Rule { peers, ports }
}

fn parse_peer(p: &net::NetworkPolicyPeer, field: &str, errs: &mut Errors) -> Option<Peer> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(block), None, None) => {
            parse_ip_block(block, &format!("{field}.ipBlock"), errs).map(Peer::IpBlock)
        }
        (Some(_), _, _) => {
            errs.push(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            );
            None
        }
        (None, None, None) => {
            errs.push(
                field,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            );
            None
        }
        (None, pods, nss) => {
            let pods = match pods {
                Some(s) => Some(Selector::parse(s, &format!("{field}.podSelector"), errs)?),
                None => None,
            };
            let namespaces = match nss {
                Some(s) => NamespaceScope::Selected(Selector::parse(
                    s,
                    &format!("{field}.namespaceSelector"),
                    errs,
                )?),
                None => NamespaceScope::Own,
            };
            Some(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(s: &str, field: &str, errs: &mut Errors) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(net) => Some(net),
        Err(_) => {
            errs.push(
                field,
                format!(
                    "invalid CIDR {s:?}: expected an address/prefix like 198.18.0.0/16 or fd00::/64"
                ),
            );
            None
        }
    }
}

fn parse_ip_block(b: &net::IPBlock, field: &str, errs: &mut Errors) -> Option<IpBlock> {
    let cidr = parse_cidr(&b.cidr, &format!("{field}.cidr"), errs)?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let Some(net) = parse_cidr(e, &f, errs) else {
            continue;
        };
        // The API server requires each exception to be a strict subset of the block.
        let strict_subset = cidr.contains(&net) && net.prefix_len() > cidr.prefix_len();
        if !strict_subset {
            errs.push(
                f,
                format!("except {e:?} is not strictly inside cidr {:?}", b.cidr),
            );
            continue;
        }
        except.push(net);
    }
    Some(IpBlock { cidr, except })
}

fn parse_port(p: &net::NetworkPolicyPort, field: &str, errs: &mut Errors) -> Option<PortMatch> {
    let protocol = parse_protocol(p.protocol.as_deref(), &format!("{field}.protocol"), errs);
    let port = match (&p.port, p.end_port) {
        (None, None) => Some(PortSpec::Any),
        (None, Some(end)) => {
            errs.push(
                format!("{field}.endPort"),
                format!("endPort {end} needs a numeric port"),
            );
            None
        }
        (Some(IntOrString::String(s)), end) => {
            if let Ok(n) = s.parse::<i32>() {
                // "80" as a string is how some YAML writers quote numbers.
                numeric_port(n, end, field, errs)
            } else {
                if let Some(end) = end {
                    errs.push(
                        format!("{field}.endPort"),
                        format!("endPort {end} needs a numeric port, not the named port {s:?}"),
                    );
                    return None;
                }
                check_port_name(s, &format!("{field}.port"), errs)
                    .then(|| PortSpec::Named(s.clone()))
            }
        }
        (Some(IntOrString::Int(n)), end) => numeric_port(*n, end, field, errs),
    };
    Some(PortMatch {
        protocol: protocol?,
        port: port?,
    })
}

fn numeric_port(n: i32, end: Option<i32>, field: &str, errs: &mut Errors) -> Option<PortSpec> {
    let start = parse_port_number(n, &format!("{field}.port"), errs)?;
    let end = match end {
        None => start,
        Some(e) => {
            let e = parse_port_number(e, &format!("{field}.endPort"), errs)?;
            if e < start {
                errs.push(
                    format!("{field}.endPort"),
                    format!("endPort {e} is below port {start}"),
                );
                return None;
            }
            e
        }
    };
    Some(PortSpec::Range(start, end))
}
