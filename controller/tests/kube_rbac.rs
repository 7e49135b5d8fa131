//! The RBAC in `deploy/` grants exactly what the code uses:
//! - `deploy/rbac.yaml` (the node agent): the watched resources read-only
//!   (`netward_controller::kube::WATCHED`) plus its certificate requests and the trust
//!   bundle (`signer_api::NODE_CERT_API`);
//! - `deploy/signer.yaml` (`netward signer`): `signer_api::SIGNER_API`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use netward_controller::kube::WATCHED;
use netward_controller::kube::signer_api::{
    Access, NODE_CERT_API, NODE_TUNNEL_API, SIGNER_API, Scope,
};
use serde::Deserialize;

const NAMESPACE: &str = "netward-system";

/// (scope, apiGroup, resource, verb, resourceName or "").
type Grant = (Scope, String, String, String, String);

fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .map(Result::unwrap)
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|v| v["kind"] == kind)
        .map(|v| serde_yaml::from_value(v.clone()).unwrap())
        .collect()
}

fn grants(scope: Scope, rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        let names = rule.resource_names.clone().unwrap_or_default();
        assert!(
            names.is_empty() || !rule.verbs.iter().any(|v| v == "create"),
            "create cannot be limited by resourceNames: {rule:?}"
        );
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule:?}"
                    );
                    for name in &names {
                        let grant = (
                            scope,
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            name.clone(),
                        );
                        assert!(out.insert(grant.clone()), "granted twice: {grant:?}");
                    }
                }
            }
        }
    }
    out
}

fn expected(access: &[Access]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for a in access {
        let names: Vec<&str> = if a.names.is_empty() {
            vec![""]
        } else {
            a.names.to_vec()
        };
        for verb in a.verbs {
            for name in &names {
                assert!(
                    out.insert((
                        a.scope,
                        a.group.to_owned(),
                        a.resource.to_owned(),
                        (*verb).to_owned(),
                        (*name).to_owned(),
                    )),
                    "listed twice: {a:?}"
                );
            }
        }
    }
    out
}

/// The grants of a file's one ClusterRole and (optional) one Role, each bound to
/// `service_account`.
fn file_grants(file: &str, service_account: &str) -> BTreeSet<Grant> {
    let docs = documents(file);
    let cluster_roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole in {file}");
    let roles: Vec<Role> = of_kind(&docs, "Role");
    assert!(roles.len() <= 1, "at most one Role in {file}");
    let mut all = grants(
        Scope::Cluster,
        cluster_roles[0].rules.as_deref().unwrap_or_default(),
    );
    let crb: Vec<ClusterRoleBinding> = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(crb.len(), 1, "{file}");
    assert_eq!(
        crb[0].role_ref.name,
        cluster_roles[0].metadata.name.clone().unwrap()
    );
    let subjects = crb[0].subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{file}");
    assert_eq!(subjects[0].name, service_account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    if let Some(role) = roles.first() {
        assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
        all.extend(grants(
            Scope::Namespace,
            role.rules.as_deref().unwrap_or_default(),
        ));
        let rb: Vec<RoleBinding> = of_kind(&docs, "RoleBinding");
        assert_eq!(rb.len(), 1, "{file}");
        assert_eq!(rb[0].metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(rb[0].role_ref.kind, "Role");
        assert_eq!(rb[0].role_ref.name, role.metadata.name.clone().unwrap());
        let subjects = rb[0].subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{file}");
        assert_eq!(subjects[0].name, service_account);
    }
    all
}

#[test]
fn node_agent_rbac_grants_exactly_the_watched_resources_and_its_certificate_requests() {
    let granted = file_grants("rbac.yaml", "netward");
    let mut want = BTreeSet::new();
    for (group, resource) in WATCHED {
        for verb in ["get", "list", "watch"] {
            want.insert((
                Scope::Cluster,
                (*group).to_owned(),
                (*resource).to_owned(),
                verb.to_owned(),
                String::new(),
            ));
        }
    }
    want.extend(expected(NODE_CERT_API));
    want.extend(expected(NODE_TUNNEL_API));
    assert_eq!(
        granted, want,
        "deploy/rbac.yaml and kube::WATCHED + signer_api::NODE_CERT_API + NODE_TUNNEL_API differ"
    );
    // The watched resources stay read-only: the only writes are creating CSRs and the
    // tunnel Leases in netward's namespace.
    let writes: Vec<&Grant> = granted
        .iter()
        .filter(|g| !["get", "list", "watch"].contains(&g.3.as_str()))
        .collect();
    let lease = |verb: &str| {
        (
            Scope::Namespace,
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
            String::new(),
        )
    };
    assert_eq!(
        writes,
        [
            &(
                Scope::Cluster,
                "certificates.k8s.io".to_owned(),
                "certificatesigningrequests".to_owned(),
                "create".to_owned(),
                String::new()
            ),
            &lease("create"),
            &lease("delete"),
            &lease("update"),
        ]
    );
}

#[test]
fn signer_rbac_grants_exactly_what_the_signer_calls() {
    let granted = file_grants("signer.yaml", "netward-signer");
    assert_eq!(
        granted,
        expected(SIGNER_API),
        "deploy/signer.yaml and signer_api::SIGNER_API differ"
    );
    // Approving and signing only for netward's signerName.
    for g in granted.iter().filter(|g| g.2 == "signers") {
        assert_eq!(g.4, "netward.io/node-tunnel", "{g:?}");
    }
}

#[test]
fn signer_deployment_runs_one_signer_replica_as_its_service_account() {
    let docs = documents("signer.yaml");
    let deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "netward-signer");
    assert_eq!(pod["containers"][0]["args"][0], "signer");
}
