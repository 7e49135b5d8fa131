//! The Kubernetes API access of the certificate path of issue #9: what `netward signer`
//! uses ([`SIGNER_API`]) and what the node agent uses to request its certificate
//! ([`NODE_CERT_API`]) and to advertise its tunnel ([`NODE_TUNNEL_API`]). `deploy/signer.yaml` and `deploy/rbac.yaml` grant exactly these;
//! `controller/tests/kube_rbac.rs` compares them.

/// The signerName of netward's node-tunnel certificates.
pub const SIGNER_NAME: &str = "netward.io/node-tunnel";
/// The Lease the signer replicas elect a leader on (in netward's namespace).
pub const LEASE_NAME: &str = "netward-signer";
/// The Secret that holds the CA (`ca.pem`, `ca-key.pem`), in netward's namespace.
pub const CA_SECRET: &str = "netward-ca";
/// The ConfigMap the signer publishes the trust bundle in (`trust-bundle.pem`).
pub const TRUST_BUNDLE_CONFIGMAP: &str = "netward-trust-bundle";

/// Where a grant applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Cluster-wide (a ClusterRole).
    Cluster,
    /// netward's own namespace only (a Role).
    Namespace,
}

/// One API permission: `verbs` on `group`/`resource` (a subresource as
/// `resource/sub`), limited to `names` unless empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Cluster-wide or in netward's namespace.
    pub scope: Scope,
    /// The API group (`""`: core).
    pub group: &'static str,
    /// The plural resource, or `resource/subresource`.
    pub resource: &'static str,
    /// The verbs.
    pub verbs: &'static [&'static str],
    /// `resourceNames`: empty means every object.
    pub names: &'static [&'static str],
}

const fn access(
    scope: Scope,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    names: &'static [&'static str],
) -> Access {
    Access {
        scope,
        group,
        resource,
        verbs,
        names,
    }
}

const CERTS: &str = "certificates.k8s.io";

/// Everything `netward signer` calls. `create` cannot be limited by name in RBAC, so it
/// is granted on its own.
pub const SIGNER_API: &[Access] = &[
    // Watch the requests (list + watch), read one again before acting on it.
    access(
        Scope::Cluster,
        CERTS,
        "certificatesigningrequests",
        &["get", "list", "watch"],
        &[],
    ),
    // Approve or deny, then issue.
    access(
        Scope::Cluster,
        CERTS,
        "certificatesigningrequests/approval",
        &["update"],
        &[],
    ),
    access(
        Scope::Cluster,
        CERTS,
        "certificatesigningrequests/status",
        &["update"],
        &[],
    ),
    // The API server's own checks for approving and signing with a signerName.
    access(
        Scope::Cluster,
        CERTS,
        "signers",
        &["approve", "sign"],
        &[SIGNER_NAME],
    ),
    // Leader election.
    access(
        Scope::Namespace,
        "coordination.k8s.io",
        "leases",
        &["get", "update"],
        &[LEASE_NAME],
    ),
    access(
        Scope::Namespace,
        "coordination.k8s.io",
        "leases",
        &["create"],
        &[],
    ),
    // The CA: read, or generated and stored on the first run.
    access(Scope::Namespace, "", "secrets", &["get"], &[CA_SECRET]),
    access(Scope::Namespace, "", "secrets", &["create"], &[]),
    // The trust bundle.
    access(
        Scope::Namespace,
        "",
        "configmaps",
        &["get", "update"],
        &[TRUST_BUNDLE_CONFIGMAP],
    ),
    access(Scope::Namespace, "", "configmaps", &["create"], &[]),
    // The requesting pod's node, when the request's user info names only the pod.
    access(Scope::Namespace, "", "pods", &["get"], &[]),
];

/// What the node agent calls to request its certificate and follow the trust bundle,
/// on top of [`WATCHED`](super::WATCHED).
pub const NODE_CERT_API: &[Access] = &[
    access(
        Scope::Cluster,
        CERTS,
        "certificatesigningrequests",
        &["create", "get", "list", "watch"],
        &[],
    ),
    access(
        Scope::Namespace,
        "",
        "configmaps",
        &["get", "list", "watch"],
        &[TRUST_BUNDLE_CONFIGMAP],
    ),
];

/// What the node agent calls with `--mtls` to advertise its tunnel and follow the other
/// nodes': a Lease `netward-tunnel-<node>` each, in netward's namespace. Names are per
/// node, so RBAC cannot narrow them; the Role is limited to netward's namespace.
pub const NODE_TUNNEL_API: &[Access] = &[access(
    Scope::Namespace,
    "coordination.k8s.io",
    "leases",
    &["get", "list", "watch", "create", "update", "delete"],
    &[],
)];
