//! The CEL of the admission policies in `deploy/`, evaluated against example requests
//! (as the API server would, without a cluster): the node agent writes only its own
//! tunnel Lease (`lease-admission.yaml`), and the signer creates only the three objects
//! it owns (`signer-admission.yaml`). Issue #14, point 2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::path::Path;

use cel_interpreter::{Context, Program, Value};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use netward_proxy::mtls::kube_peers::LEASE_PREFIX;
use netward_proxy::mtls::signer::{CA_SECRET, LEASE_NAME, TRUST_BUNDLE_CONFIGMAP};
use serde::Deserialize;
use serde_json::json;

fn policy(file: &str) -> ValidatingAdmissionPolicy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc = serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .map(Result::unwrap)
        .find(|v| v["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    serde_yaml::from_value(doc).unwrap()
}

/// Evaluates one CEL expression with `request` and `object` bound.
fn eval(expr: &str, request: &serde_json::Value, object: &serde_json::Value) -> bool {
    let program = Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut ctx = Context::default();
    ctx.add_variable("request", request.clone()).unwrap();
    ctx.add_variable("object", object.clone()).unwrap();
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => b,
        // A missing key is an evaluation error; the API server fails the request
        // closed (failurePolicy: Fail), so it counts as a denial.
        Ok(other) => panic!("{expr}: not a boolean: {other:?}"),
        Err(_) => false,
    }
}

/// Whether the policy admits the request: it applies (every match condition holds) and
/// every validation holds; one that does not apply admits.
fn admits(
    p: &ValidatingAdmissionPolicy,
    request: &serde_json::Value,
    object: &serde_json::Value,
) -> bool {
    let spec = p.spec.as_ref().unwrap();
    let applies = spec
        .match_conditions
        .iter()
        .flatten()
        .all(|c| eval(&c.expression, request, object));
    !applies
        || spec
            .validations
            .iter()
            .flatten()
            .all(|v| eval(&v.expression, request, object))
}

fn request(user: &str, node: Option<&str>, resource: &str, name: &str) -> serde_json::Value {
    let mut user_info = json!({"username": user});
    if let Some(node) = node {
        user_info["extra"] = json!({"authentication.kubernetes.io/node-name": [node]});
    }
    json!({
        "userInfo": user_info,
        "resource": {"resource": resource},
        "name": name,
        "namespace": "netward-system",
    })
}

fn object(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "netward-system"}})
}

const NODE_SA: &str = "system:serviceaccount:netward-system:netward";
const SIGNER_SA: &str = "system:serviceaccount:netward-system:netward-signer";

#[test]
fn the_node_agent_writes_only_its_own_tunnel_lease() {
    let p = policy("lease-admission.yaml");
    let own = format!("{LEASE_PREFIX}node-a");
    let other = format!("{LEASE_PREFIX}node-b");
    let ok = |node: Option<&str>, name: &str| {
        admits(&p, &request(NODE_SA, node, "leases", name), &object(name))
    };
    assert!(ok(Some("node-a"), &own), "its own tunnel Lease");
    assert!(!ok(Some("node-a"), &other), "another node's tunnel Lease");
    assert!(
        !ok(Some("node-a"), LEASE_NAME),
        "the signer's election Lease"
    );
    assert!(
        !ok(None, &own),
        "a token without a node name writes no Lease"
    );
    // Other users are not this policy's business.
    let signer = request(SIGNER_SA, None, "leases", LEASE_NAME);
    assert!(admits(&p, &signer, &object(LEASE_NAME)));
}

#[test]
fn the_signer_creates_only_the_objects_it_owns() {
    let p = policy("signer-admission.yaml");
    let ok = |resource: &str, name: &str| {
        admits(&p, &request(SIGNER_SA, None, resource, name), &object(name))
    };
    assert!(ok("secrets", CA_SECRET));
    assert!(ok("configmaps", TRUST_BUNDLE_CONFIGMAP));
    assert!(ok("leases", LEASE_NAME));
    assert!(!ok("secrets", "netward-token"), "any other Secret");
    assert!(
        !ok("secrets", TRUST_BUNDLE_CONFIGMAP),
        "a name of the wrong kind"
    );
    assert!(!ok("configmaps", "kube-root-ca.crt"));
    assert!(
        !ok("leases", &format!("{LEASE_PREFIX}node-a")),
        "a node's tunnel Lease"
    );
    // The node agent's creates are not this policy's business.
    let node = request(NODE_SA, Some("node-a"), "secrets", "x");
    assert!(admits(&p, &node, &object("x")));
}
