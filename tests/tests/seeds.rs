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

fn text(o: &Output) -> String {
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
    let out = text(&o);
    match o.status.code() {
        Some(0) => (true, out),
        Some(1) => (false, out),
        other => panic!("explain {from} -> {to} {protocol}/{port} exited {other:?}:\n{out}"),
    }
}

/// Every outcome the tutorials state, at the step they state it, through `explain` (no
/// root: the engine on the YAML).
#[test]
fn every_tutorial_statement_holds_through_explain() {
    let mut checked = 0;
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
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} statements");
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
        assert!(o.status.success(), "lab {}:\n{}", dir.display(), text(&o));
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
            assert!(o.status.success(), "matrix --step: {}", text(&o));
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
