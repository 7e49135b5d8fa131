//! A scenario's own objects (`apiVersion: netward.io/v1alpha1`): `Expectations`, what
//! the tutorial says happens, and `ExternalHosts`, hosts outside the cluster. They are
//! read strictly: a malformed one is an error that names the file, the document and the
//! field, never skipped (a skipped expectation would be a check that silently passes).
//! `docs/scenarios.md` documents both.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netward_controller::{Cluster, Protocol};
use serde::Deserialize;

use super::topology::ExternalSpec;

/// The only version of netward's scenario objects.
pub const API_VERSION: &str = "netward.io/v1alpha1";

/// A malformed scenario object.
#[derive(Debug, thiserror::Error)]
#[error("{file}: document {doc}: {object}: {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
pub struct Error {
    /// The file.
    pub file: String,
    /// 1-based document index in the file.
    pub doc: usize,
    /// `Kind name`.
    pub object: String,
    /// The field path (`spec.expect[2].port`), or empty.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One thing a tutorial says about a flow.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The client: `namespace/pod` or an IP.
    pub from: String,
    /// The server: `namespace/pod`, `namespace/svc/service`, or an IP.
    pub to: String,
    /// The port the client connects to (a Service's port when `to` is a Service).
    pub port: u16,
    /// TCP (the default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
    /// What the tutorial says.
    pub allowed: bool,
    /// The file after which it holds; without it, after the last one.
    #[serde(default)]
    pub step: Option<String>,
    /// The tutorial's words.
    pub says: String,
}

impl Expect {
    /// The protocol (validated when read).
    pub fn protocol(&self) -> Protocol {
        self.protocol
            .as_deref()
            .and_then(Protocol::parse)
            .unwrap_or(Protocol::Tcp)
    }
}

/// One end of an expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A pod, `(namespace, name)`.
    Pod(String, String),
    /// A Service, `(namespace, name)`: the flow goes to its backends.
    Service(String, String),
    /// An address.
    Ip(IpAddr),
}

impl Target {
    /// Parses `namespace/pod`, `namespace/svc/name` (or `service/`), or an IP.
    pub fn parse(s: &str) -> Option<Target> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(Target::Ip(ip));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [ns, name] if !ns.is_empty() && !name.is_empty() => {
                Some(Target::Pod((*ns).to_owned(), (*name).to_owned()))
            }
            [ns, "svc" | "service", name] if !ns.is_empty() && !name.is_empty() => {
                Some(Target::Service((*ns).to_owned(), (*name).to_owned()))
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectationsSpec {
    #[serde(default)]
    #[allow(dead_code, reason = "read for strictness; shown to people, not used")]
    tutorial: Option<String>,
    expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExternalHostsSpec {
    hosts: Vec<ExternalSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Object<S> {
    #[allow(dead_code, reason = "checked before decoding")]
    api_version: String,
    #[allow(dead_code, reason = "checked before decoding")]
    kind: String,
    #[allow(dead_code, reason = "names the object in errors; read for strictness")]
    metadata: serde_yaml::Value,
    spec: S,
}

/// What a scenario's netward objects say.
#[derive(Debug, Default)]
pub struct ScenarioObjects {
    /// Every expectation, in file order.
    pub expects: Vec<Expect>,
    /// Every external host.
    pub externals: Vec<ExternalSpec>,
}

/// Reads the netward objects of a scenario's files, `(file name, text)` in order, and
/// checks each expectation against the cluster those files describe: its ends exist,
/// its protocol is known, its step is one of the files, its port is a Service port when
/// it goes to a Service. `steps` are the files that hold Kubernetes objects.
pub fn read(
    files: &[(String, String)],
    steps: &[&str],
    cluster: &Cluster,
) -> Result<ScenarioObjects, Vec<Error>> {
    let mut out = ScenarioObjects::default();
    let mut errors = Vec::new();
    for (file, text) in files {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_no = i + 1;
            // Syntax errors are the manifest reader's to report.
            let Ok(value) = serde_yaml::Value::deserialize(doc) else {
                break;
            };
            let api = value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if !api.starts_with("netward.io/") {
                continue;
            }
            let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|v| v.as_str())
                .unwrap_or("<unnamed>");
            let object = format!("{kind} {name}");
            let mut err = |field: &str, message: String| {
                errors.push(Error {
                    file: file.clone(),
                    doc: doc_no,
                    object: object.clone(),
                    field: field.to_owned(),
                    message,
                });
            };
            if api != API_VERSION {
                err(
                    "apiVersion",
                    format!("unknown version {api:?}: netward reads {API_VERSION}"),
                );
                continue;
            }
            match kind {
                "Expectations" => match decode::<ExpectationsSpec>(value) {
                    Ok(spec) => {
                        for (k, e) in spec.expect.into_iter().enumerate() {
                            let field = format!("spec.expect[{k}]");
                            match check(&e, steps, cluster) {
                                Ok(()) => out.expects.push(e),
                                Err((f, message)) => err(&format!("{field}.{f}"), message),
                            }
                        }
                    }
                    Err((field, message)) => err(&field, message),
                },
                "ExternalHosts" => match decode::<ExternalHostsSpec>(value) {
                    Ok(spec) => out.externals.extend(spec.hosts),
                    Err((field, message)) => err(&field, message),
                },
                other => err(
                    "kind",
                    format!(
                        "unknown kind {other:?}: {API_VERSION} has Expectations and ExternalHosts"
                    ),
                ),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn decode<S: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<S, (String, String)> {
    serde_path_to_error::deserialize::<_, Object<S>>(value)
        .map(|o| o.spec)
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            (path, e.into_inner().to_string())
        })
}

/// Checks one expectation; `Err((field, message))`.
fn check(e: &Expect, steps: &[&str], cluster: &Cluster) -> Result<(), (String, String)> {
    let bad = |field: &str, message: String| Err((field.to_owned(), message));
    let protocol = match e.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(p) => match Protocol::parse(p) {
            Some(p) if p.has_ports() => p,
            _ => return bad("protocol", format!("{p:?} is not TCP, UDP or SCTP")),
        },
    };
    if e.port == 0 {
        return bad("port", "0 is not a port".to_owned());
    }
    if let Some(step) = &e.step
        && !steps.contains(&step.as_str())
    {
        let known: BTreeSet<&str> = steps.iter().copied().collect();
        return bad(
            "step",
            format!(
                "{step:?} is not one of the scenario's files ({})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    for (field, value, may_be_service) in [("from", &e.from, false), ("to", &e.to, true)] {
        match Target::parse(value) {
            None => {
                return bad(
                    field,
                    format!(
                        "{value:?} is not namespace/pod{} or an IP",
                        if may_be_service {
                            ", namespace/svc/service"
                        } else {
                            ""
                        }
                    ),
                );
            }
            Some(Target::Ip(_)) => {}
            Some(Target::Pod(ns, name)) => {
                if !cluster.pods.contains_key(&(ns.clone(), name.clone())) {
                    let hint = if cluster.services.contains_key(&(ns.clone(), name.clone())) {
                        format!(" ({ns}/{name} is a Service: write {ns}/svc/{name})")
                    } else {
                        String::new()
                    };
                    return bad(field, format!("no pod {ns}/{name} in the scenario{hint}"));
                }
            }
            Some(Target::Service(ns, name)) => {
                if !may_be_service {
                    return bad(
                        field,
                        format!("{value:?}: a client is a pod or an IP, not a Service"),
                    );
                }
                let Some(svc) = cluster.services.get(&(ns.clone(), name.clone())) else {
                    return bad(field, format!("no Service {ns}/{name} in the scenario"));
                };
                if !svc
                    .ports
                    .iter()
                    .any(|p| p.port == e.port && p.protocol == protocol)
                {
                    let ports: Vec<String> = svc
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}", p.protocol, p.port))
                        .collect();
                    return bad(
                        "port",
                        format!(
                            "Service {ns}/{name} has no port {protocol}/{} (it has {})",
                            e.port,
                            if ports.is_empty() {
                                "none".to_owned()
                            } else {
                                ports.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use netward_controller::Manifests;
    use std::path::Path;

    const CLUSTER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n";

    fn read_with(expect: &str) -> Result<ScenarioObjects, Vec<Error>> {
        let files = vec![
            ("00-cluster.yaml".to_owned(), CLUSTER.to_owned()),
            ("expect.yaml".to_owned(), expect.to_owned()),
        ];
        let mut m = Manifests::default();
        m.read_str(Path::new("00-cluster.yaml"), CLUSTER);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        read(&files, &["00-cluster.yaml"], &m.cluster)
    }

    fn one_error(expect: &str) -> String {
        let errs = read_with(expect).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs[0].to_string()
    }

    const HEAD: &str = "apiVersion: netward.io/v1alpha1\nkind: Expectations\nmetadata: {name: t}\nspec:\n  expect:\n";

    #[test]
    fn good_expectations_are_read() {
        let got = read_with(&format!(
            "{HEAD}    - {{from: x/a, to: x/svc/web, port: 80, allowed: true, says: ok}}\n    - {{from: x/a, to: 198.18.0.9, port: 53, protocol: udp, step: 00-cluster.yaml, allowed: false, says: no}}\n"
        ))
        .unwrap();
        assert_eq!(got.expects.len(), 2);
        assert_eq!(got.expects[1].protocol(), Protocol::Udp);
    }

    #[test]
    fn malformed_expectations_are_errors_not_skipped() {
        for (entry, wants) in [
            (
                "{from: x/a, to: x/a, port: 80, alowed: true, says: s}",
                "expect.yaml: document 1: Expectations t: spec.expect[0].alowed: unknown field `alowed`",
            ),
            (
                "{from: x/a, to: x/a, port: http, allowed: true, says: s}",
                "spec.expect[0].port: invalid type",
            ),
            (
                "{from: x/a, to: x/b, port: 80, allowed: true, says: s}",
                "spec.expect[0].to: no pod x/b in the scenario",
            ),
            (
                "{from: x/a, to: x/web, port: 80, allowed: true, says: s}",
                "(x/web is a Service: write x/svc/web)",
            ),
            (
                "{from: x/a, to: x/svc/web, port: 8080, allowed: true, says: s}",
                "spec.expect[0].port: Service x/web has no port TCP/8080 (it has TCP/80)",
            ),
            (
                "{from: x/a, to: x/a, port: 80, protocol: tcpp, allowed: true, says: s}",
                "spec.expect[0].protocol: \"tcpp\" is not TCP, UDP or SCTP",
            ),
            (
                "{from: x/a, to: x/a, port: 80, step: 10-nope.yaml, allowed: true, says: s}",
                "spec.expect[0].step: \"10-nope.yaml\" is not one of the scenario's files (00-cluster.yaml)",
            ),
            (
                "{from: x/svc/web, to: x/a, port: 80, allowed: true, says: s}",
                "spec.expect[0].from: \"x/svc/web\": a client is a pod or an IP, not a Service",
            ),
            (
                "{from: x/a, to: x/a, port: 80, says: s}",
                "missing field `allowed`",
            ),
        ] {
            let e = one_error(&format!("{HEAD}    - {entry}\n"));
            assert!(e.contains(wants), "{entry}: {e}");
        }
        let e = one_error(
            "apiVersion: netward.io/v1alpha1\nkind: Expectation\nmetadata: {name: t}\nspec: {}\n",
        );
        assert!(e.contains("unknown kind \"Expectation\""), "{e}");
        let e = one_error(
            "apiVersion: netward.io/v1\nkind: Expectations\nmetadata: {name: t}\nspec: {}\n",
        );
        assert!(e.contains("unknown version"), "{e}");
        let e = one_error(
            "apiVersion: netward.io/v1alpha1\nkind: ExternalHosts\nmetadata: {name: h}\nspec:\n  hosts: [{name: m, ips: [198.19.255.1], port: [80]}]\n",
        );
        assert!(
            e.contains("spec.hosts[0].port: unknown field `port`"),
            "{e}"
        );
    }
}
