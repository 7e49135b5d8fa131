//! `deploy/lease-admission.yaml`: the node agent's ServiceAccount may write (create,
//! update, delete) only the Lease named after its own node, `netward-tunnel-<node>`
//! (the prefix the code uses, `kube_peers::LEASE_PREFIX`), the node taken from the
//! token's `authentication.kubernetes.io/node-name`. RBAC alone lets it write every
//! Lease of the namespace, the signer's election Lease included (issue #14).
//!
//! This checks the manifest's shape and ties it to the code and to the other manifests;
//! the CEL itself is evaluated by the API server only (no cluster here).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use netward_proxy::mtls::kube_peers::LEASE_PREFIX;
use serde::Deserialize;

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .map(Result::unwrap)
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str) -> T {
    let found: Vec<_> = docs.iter().filter(|v| v["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    serde_yaml::from_value(found[0].clone()).unwrap()
}

#[test]
fn node_agent_writes_only_its_own_tunnel_lease() {
    let docs = documents("lease-admission.yaml");
    let policy: ValidatingAdmissionPolicy = one(&docs, "ValidatingAdmissionPolicy");
    let binding: ValidatingAdmissionPolicyBinding = one(&docs, "ValidatingAdmissionPolicyBinding");
    let spec = policy.spec.unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "fail closed");

    // Every write to a Lease of netward's namespace.
    let constraints = spec.match_constraints.unwrap();
    let rules = constraints.resource_rules.unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["coordination.k8s.io".to_owned()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["leases".to_owned()][..]));
    let mut ops = rule.operations.clone().unwrap();
    ops.sort();
    assert_eq!(ops, ["CREATE", "DELETE", "UPDATE"]);
    let ns = constraints
        .namespace_selector
        .unwrap()
        .match_labels
        .unwrap();
    let sa_docs = documents("serviceaccount.yaml");
    let sa = &sa_docs[0];
    let namespace = sa["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(ns["kubernetes.io/metadata.name"], namespace);

    // Only for the node agent's ServiceAccount (the signer keeps its election Lease).
    let username = format!(
        "system:serviceaccount:{namespace}:{}",
        sa["metadata"]["name"].as_str().unwrap()
    );
    let conditions = spec.match_conditions.unwrap();
    assert_eq!(conditions.len(), 1);
    assert!(
        conditions[0]
            .expression
            .contains(&format!("request.userInfo.username == '{username}'")),
        "{}",
        conditions[0].expression
    );

    // The name must be LEASE_PREFIX + the token's node.
    let validations = spec.validations.unwrap();
    assert_eq!(validations.len(), 1);
    let expr = &validations[0].expression;
    assert!(
        expr.contains(&format!("request.name == '{LEASE_PREFIX}' + "))
            && expr.contains(&format!("request.userInfo.extra['{NODE_NAME_EXTRA}'][0]")),
        "{expr}"
    );
    assert!(
        expr.contains(&format!("'{NODE_NAME_EXTRA}' in request.userInfo.extra")),
        "a token without a node name is refused, not an evaluation error: {expr}"
    );
    assert!(!"netward-signer".starts_with(LEASE_PREFIX));

    // Bound, enforcing.
    let b = binding.spec.unwrap();
    assert_eq!(b.policy_name, policy.metadata.name);
    assert_eq!(b.validation_actions, Some(vec!["Deny".to_owned()]));
    assert!(b.match_resources.is_none(), "no narrowing in the binding");

    // Installed with the rest.
    let kustomization = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kustomization.yaml"),
    )
    .unwrap();
    assert!(kustomization.contains("  - lease-admission.yaml\n"));
}
