//! `netward matrix` and `netward explain` on the manifests people actually have
//! (issue #15): misspelled fields, Deployments instead of Pods, pods without addresses,
//! and directories without any pods. The binary runs on manifests in a temp directory.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use std::path::Path;
use std::process::{Command, Output};

fn netward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A temp directory holding `files`.
fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

fn path(d: &tempfile::TempDir) -> &str {
    d.path().to_str().unwrap()
}

const DEPLOYMENTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: nginx
          image: nginx
          ports: [{name: http, containerPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec: {containers: [{name: c, image: busybox}]}
"#;

fn web_policy(ingress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n{ingress}\n"
    )
}

#[test]
fn a_misspelled_policy_exits_2_with_the_field_and_a_suggestion() {
    let d = dir(&[
        ("app.yaml", DEPLOYMENTS),
        (
            "policy.yaml",
            &web_policy("    - form: [{podSelector: {matchLabels: {app: nobody}}}]"),
        ),
    ]);
    let o = netward(&["matrix", "-f", path(&d)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("policy.yaml: document 1: NetworkPolicy default/web: spec.ingress[0].form: unknown field \"form\": did you mean \"from\"?"),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));

    let d = dir(&[
        ("app.yaml", DEPLOYMENTS),
        (
            "policy.yaml",
            &web_policy("    - from: [{podSelector: {}}]")
                .replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        ),
    ]);
    let o = netward(&[
        "explain",
        "-f",
        path(&d),
        "--from",
        "client-0",
        "--to",
        "web-0",
        "--port",
        "80",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown kind \"Networkpolicy\"")
            && err.contains("did you mean \"NetworkPolicy\"?"),
        "{err}"
    );
}

#[test]
fn a_deployment_only_directory_gives_a_matrix_of_its_pods() {
    let d = dir(&[
        ("app.yaml", DEPLOYMENTS),
        (
            "policy.yaml",
            &web_policy(
                "    - from: [{podSelector: {matchLabels: {app: client}}}]\n      ports: [{port: http}]",
            ),
        ),
    ]);
    let o = netward(&["matrix", "-f", path(&d), "-o", "json"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        stdout(&o),
        concat!(
            r#"{"port":80,"protocol":"TCP","pods":["default/client-0","default/web-0","default/web-1"],"#,
            r#""allowed":[[true,true,true],[true,true,false],[true,false,true]]}"#,
            "\n"
        )
    );
    assert!(
        err.contains("netward: note: Deployment default/web: 2 pods web-0, web-1"),
        "{err}"
    );
    assert!(
        err.contains("netward: note: Deployment default/client: 1 pod client-0"),
        "{err}"
    );

    let o = netward(&[
        "explain",
        "-f",
        path(&d),
        "--from",
        "default/client-0",
        "--to",
        "default/web-1",
        "--port",
        "80",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn pods_without_addresses_get_the_labs_and_a_note() {
    // The client has no status.podIPs: the ipBlock rule sees the address `netward lab`
    // gives it (198.18.1.x on the first node), whether or not the file writes it.
    let d = dir(&[
        ("app.yaml", DEPLOYMENTS),
        (
            "policy.yaml",
            &web_policy("    - from: [{ipBlock: {cidr: 198.18.1.0/24}}]"),
        ),
    ]);
    let o = netward(&[
        "explain",
        "-f",
        path(&d),
        "--from",
        "client-0",
        "--to",
        "web-0",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\n{}", stdout(&o));
    assert!(
        err.contains("netward: note: 3 pods without status.podIPs got addresses from the default pod CIDRs (198.18.<node>.0/24, fd00::<node>:0/112), as netward lab gives them"),
        "{err}"
    );
    assert!(stdout(&o).contains(r#""allowed":true"#), "{}", stdout(&o));

    // With every address written, there is no note.
    let written = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 198.18.1.10}]}
"#;
    let d = dir(&[("p.yaml", written)]);
    let o = netward(&["matrix", "-f", path(&d)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("podIPs"), "{}", stderr(&o));
}

#[test]
fn a_directory_without_pods_exits_2_and_says_why() {
    let d = dir(&[
        (
            "policy.yaml",
            &web_policy("    - from: [{podSelector: {}}]"),
        ),
        (
            "config.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
        ),
    ]);
    for args in [
        vec!["matrix", "-f", path(&d)],
        vec![
            "explain",
            "-f",
            path(&d),
            "--from",
            "a",
            "--to",
            "b",
            "--port",
            "80",
        ],
    ] {
        let o = netward(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("-f {}: no pods: netward reads Pods and workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)", path(&d))),
            "{args:?}: {err}"
        );
        assert!(stdout(&o).is_empty());
    }
    // An empty directory too.
    let d = dir(&[]);
    let o = netward(&["matrix", "-f", path(&d)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no pods"), "{}", stderr(&o));
    assert!(Path::new(path(&d)).exists());
}
