//! The five seed tutorials, their own YAML kept in `examples/seeds/` (issue #15): every
//! outcome each tutorial states holds through `explain`, and `matrix`, `explain` and
//! `lab` agree cell for cell at every step.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use netward_e2e::{expectations_at, netward_bin, root};

fn seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(out.len() >= 5, "the seed examples: {out:?}");
    out
}

fn netward(args: &[&str]) -> Output {
    Command::new(netward_bin()).args(args).output().unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of `dir` holding the files up to `last` (name order): the scenario at that step.
fn upto(dir: &Path, last: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".yaml") && name.as_str() <= last {
            std::fs::copy(&p, tmp.path().join(&name)).unwrap();
        }
    }
    tmp
}

/// The files of a scenario that hold Kubernetes objects, in order.
fn step_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .filter(|n| n.ends_with(".yaml") && n != "expect.yaml")
        .collect();
    names.sort();
    names
}

/// `explain` exits 0 for allowed and 1 for denied; anything else is a failure to answer.
fn explain(dir: &Path, from: &str, to: &str, port: u16, protocol: &str) -> (bool, String) {
    let o = netward(&[
        "explain",
        "-f",
        dir.to_str().unwrap(),
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port.to_string(),
        "--protocol",
        protocol,
    ]);
    let out = text_of(&o);
    match o.status.code() {
        Some(0) => (true, out),
        Some(1) => (false, out),
        other => panic!("explain {from} -> {to} {protocol}/{port} exited {other:?}:\n{out}"),
    }
}

/// Every outcome the tutorials state, at the step they state it, through `explain`, and
/// through `matrix` when both ends are pods (no root: the engine on the YAML).
#[test]
fn every_tutorial_statement_holds_through_explain_and_matrix() {
    let mut checked = 0;
    let mut in_matrix = 0;
    for dir in seeds() {
        let steps = step_files(&dir);
        for e in expectations_at(&dir) {
            let last = e
                .step
                .clone()
                .unwrap_or_else(|| steps.last().unwrap().clone());
            let at = upto(&dir, &last);
            let protocol = e.protocol().as_str();
            let (allowed, out) = explain(at.path(), &e.from, &e.to, e.port, protocol);
            assert_eq!(
                allowed,
                e.allowed,
                "{}: {} -> {} {}/{} after {last}:\n{out}",
                dir.display(),
                e.from,
                e.to,
                protocol,
                e.port
            );
            // The same statement in the matrix, when both ends are pods.
            if e.to.matches('/').count() == 1 && e.from.contains('/') {
                let o = netward(&[
                    "matrix",
                    "-f",
                    at.path().to_str().unwrap(),
                    "--protocol",
                    protocol,
                    "--port",
                    &e.port.to_string(),
                    "-o",
                    "json",
                    "-A",
                ]);
                assert!(o.status.success(), "matrix: {}", text_of(&o));
                let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                let pods = m["pods"].as_array().unwrap();
                let at_pod = |p: &str| pods.iter().position(|x| x.as_str() == Some(p)).unwrap();
                assert_eq!(
                    m["allowed"][at_pod(&e.from)][at_pod(&e.to)].as_bool(),
                    Some(e.allowed),
                    "{}: matrix: {} -> {} {protocol}/{} after {last}",
                    dir.display(),
                    e.from,
                    e.to,
                    e.port
                );
                in_matrix += 1;
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} statements");
    assert!(in_matrix >= 20, "only {in_matrix} statements between pods");
}

/// `lab --step` on each tutorial: real traffic agrees with the engine on every cell at
/// every step, and the tutorial's statements hold; then each of those cells is the same
/// in `matrix -o json` and in `explain` on the YAML up to that step.
#[test]
fn matrix_explain_and_lab_agree_cell_for_cell() {
    if !root() {
        return;
    }
    let mut cells_checked = 0;
    for dir in seeds() {
        let report_file = tempfile::NamedTempFile::new().unwrap();
        let o = netward(&[
            "lab",
            dir.to_str().unwrap(),
            "--step",
            "--ipv4-only",
            "--report",
            report_file.path().to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "lab {}:\n{}",
            dir.display(),
            text_of(&o)
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report_file.path()).unwrap()).unwrap();
        // A tutorial with one pod has no pod-to-pod cells (its flows go to external hosts,
        // which the lab checked against the engine above).
        let cells = report["cells"].as_array().unwrap();
        // `matrix --step` once per protocol, with every port the lab probed: the same
        // steps, and the addresses planned once for every step, as the lab plans them.
        let mut ports: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for c in cells {
            ports
                .entry(c["protocol"].as_str().unwrap().to_owned())
                .or_default()
                .insert(c["port"].as_u64().unwrap());
        }
        let mut matrices: BTreeMap<(String, String, u64), serde_json::Value> = BTreeMap::new();
        for (proto, ports) in &ports {
            let list: Vec<String> = ports.iter().map(u64::to_string).collect();
            let o = netward(&[
                "matrix",
                "-f",
                dir.to_str().unwrap(),
                "--step",
                "--protocol",
                proto,
                "--port",
                &list.join(","),
                "-o",
                "json",
                "-A",
            ]);
            assert!(o.status.success(), "matrix --step: {}", text_of(&o));
            let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            for step in doc["steps"].as_array().unwrap() {
                for m in step["matrices"].as_array().unwrap() {
                    matrices.insert(
                        (
                            step["file"].as_str().unwrap().to_owned(),
                            proto.clone(),
                            m["port"].as_u64().unwrap(),
                        ),
                        m.clone(),
                    );
                }
            }
        }
        for c in cells {
            let file = c["file"].as_str().unwrap().to_owned();
            let proto = c["protocol"].as_str().unwrap().to_owned();
            let port = c["port"].as_u64().unwrap();
            let (from, to) = (c["from"].as_str().unwrap(), c["to"].as_str().unwrap());
            let observed = c["observed"].as_bool();
            let expected = c["expected"].as_bool();
            assert_eq!(
                observed,
                expected,
                "{}: lab observed != engine: {c}",
                dir.display()
            );
            let m = &matrices[&(file.clone(), proto.clone(), port)];
            let pods: Vec<&str> = m["pods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            let i = pods.iter().position(|p| *p == from).unwrap();
            let j = pods.iter().position(|p| *p == to).unwrap();
            let in_matrix = m["allowed"][i][j].as_bool();
            assert_eq!(
                in_matrix,
                observed,
                "{} after {file}: matrix != lab for {from} -> {to} {proto}/{port}",
                dir.display()
            );
            // `explain` on the files up to this step (it names pods, not addresses; no
            // seed's rule depends on a pod's address).
            let at = upto(&dir, &file);
            let (by_explain, out) =
                explain(at.path(), from, to, u16::try_from(port).unwrap(), &proto);
            assert_eq!(
                Some(by_explain),
                observed,
                "{} after {file}: explain != lab for {from} -> {to} {proto}/{port}:\n{out}",
                dir.display()
            );
            cells_checked += 1;
        }
    }
    assert!(cells_checked >= 50, "only {cells_checked} cells");
}

/// A tutorial's own directory at `name`, copied so a test may change it.
fn seed_copy(name: &str) -> tempfile::TempDir {
    let src = seeds()
        .into_iter()
        .find(|d| d.file_name().unwrap().to_str().unwrap().starts_with(name))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

/// Issue #15 point 1 on a tutorial's own policy: one misspelled field is an error with the
/// nearest valid name (before, `podSelectr` made the policy select every pod and the
/// matrix answered as if nothing were wrong).
#[test]
fn a_typo_in_a_tutorial_policy_is_an_error() {
    let dir = seed_copy("000-");
    let policy = dir.path().join("20-backend-policy.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("\n  podSelector:\n"), "{text}");
    std::fs::write(
        &policy,
        text.replace("\n  podSelector:\n", "\n  podSelectr:\n"),
    )
    .unwrap();
    let o = netward(&["matrix", "-f", dir.path().to_str().unwrap()]);
    let out = text_of(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("20-backend-policy.yaml: document 1: NetworkPolicy netpol-test/backend-access-policy: spec.podSelectr: unknown field \"podSelectr\": did you mean \"podSelector\"?"),
        "{out}"
    );
}

/// Issue #15 points 5 and 6 on a tutorial's own YAML: `-n`, several ports, `-o dot`.
#[test]
fn matrix_habits_on_a_tutorial() {
    let dir = seeds()
        .into_iter()
        .find(|d| d.ends_with("001-pod-level-firewall"))
        .unwrap();
    let dir = dir.to_str().unwrap();
    let o = netward(&[
        "matrix",
        "-f",
        dir,
        "-n",
        "netpol-frontend",
        "--port",
        "80,53",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", text_of(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ms = doc["matrices"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{doc}");
    for m in ms {
        assert_eq!(
            m["pods"],
            serde_json::json!(["netpol-frontend/client", "netpol-frontend/rogue"]),
            "{doc}"
        );
    }
    let o = netward(&["matrix", "-f", dir, "-o", "dot"]);
    let dot = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text_of(&o));
    // After every file: the client reaches every pod on 80 (one edge to "*"), the rogue
    // pod reaches the client only, web-0 nobody.
    assert!(
        dot.contains("\"netpol-frontend/client\" -> \"*\" [label=\"TCP/80\"];"),
        "{dot}"
    );
    assert!(
        dot.contains("\"netpol-frontend/rogue\" -> \"netpol-frontend/client\" [label=\"TCP/80\"];"),
        "{dot}"
    );
    assert_eq!(dot.matches(" -> ").count(), 2, "{dot}");
}
