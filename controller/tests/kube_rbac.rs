//! The ClusterRole in `deploy/rbac.yaml` grants exactly what the watchers use
//! (`netward_controller::kube::WATCHED`), read-only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::rbac::v1::ClusterRole;
use netward_controller::kube::WATCHED;
use serde::Deserialize;

fn cluster_role() -> ClusterRole {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let roles: Vec<ClusterRole> = serde_yaml::Deserializer::from_str(&text)
        .map(serde_yaml::Value::deserialize)
        .map(Result::unwrap)
        .filter(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_yaml::from_value(v).unwrap())
        .collect();
    assert_eq!(roles.len(), 1, "one ClusterRole in {}", path.display());
    roles.into_iter().next().unwrap()
}

#[test]
fn cluster_role_grants_exactly_the_watched_resources_read_only() {
    let role = cluster_role();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["get", "list", "watch"]),
            "read-only verbs, exactly: {rule:?}"
        );
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(
                    granted.insert((group.clone(), resource.clone())),
                    "granted twice: {group}/{resource}"
                );
            }
        }
    }
    let watched: BTreeSet<(String, String)> = WATCHED
        .iter()
        .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(
        granted, watched,
        "deploy/rbac.yaml and kube::WATCHED differ"
    );
}
