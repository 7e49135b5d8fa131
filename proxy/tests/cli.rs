//! The offline commands as an operator runs them: `netward matrix` and `netward explain`
//! on the bundled examples, with their output formats and exit codes.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn netward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn matrix_json_is_exactly_the_documented_shape() {
    let o = netward(&[
        "matrix",
        "-f",
        "examples/rogue-pod",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        concat!(
            r#"{"port":80,"protocol":"TCP","pods":["netpol-test/backend","netpol-test/frontend","netpol-test/rogue-pod"],"#,
            r#""allowed":[[true,true,true],[true,true,true],[false,true,true]]}"#,
            "\n"
        )
    );
}

#[test]
fn matrix_json_on_every_example_is_the_golden_matrix() {
    for (name, proto, port) in [
        ("rogue-pod", "TCP", "80"),
        ("namespace-isolation", "TCP", "80"),
        ("three-tier", "TCP", "80"),
        ("three-tier", "UDP", "53"),
        ("dns-egress", "UDP", "53"),
        ("metadata-block", "TCP", "80"),
    ] {
        let o = netward(&[
            "matrix",
            "-f",
            &format!("examples/{name}"),
            "--protocol",
            proto,
            "--port",
            port,
            "-o",
            "json",
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let golden = root().join(format!(
            "controller/tests/testdata/{name}.{}-{port}.matrix.json",
            proto.to_lowercase()
        ));
        assert_eq!(
            stdout(&o),
            std::fs::read_to_string(&golden).unwrap(),
            "{name} {proto}/{port}"
        );
    }
}

#[test]
fn matrix_table_uses_dots_and_crosses() {
    let o = netward(&["matrix", "-f", "examples/rogue-pod"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("netpol-test/rogue-pod  X . ."), "{out}");
    assert!(out.contains("netpol-test/frontend   . . ."), "{out}");
}

#[test]
fn explain_exit_codes_and_reasons() {
    let allowed = netward(&[
        "explain",
        "-f",
        "examples/rogue-pod",
        "--from",
        "netpol-test/frontend",
        "--to",
        "netpol-test/backend",
        "--port",
        "80",
    ]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert!(
        stdout(&allowed).contains("allowed by netpol-test/backend-access-policy ingress[0]"),
        "{}",
        stdout(&allowed)
    );

    let denied = netward(&[
        "explain",
        "-f",
        "examples/rogue-pod",
        "--from",
        "netpol-test/rogue-pod",
        "--to",
        "netpol-test/backend",
        "--port",
        "80",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    let out = stdout(&denied);
    assert!(out.contains("DENIED"), "{out}");
    assert!(
        out.contains("isolated by netpol-test/backend-access-policy"),
        "{out}"
    );
    assert!(out.contains("no match"), "{out}");

    // By IP, with JSON output.
    let json = netward(&[
        "explain",
        "-f",
        "examples/metadata-block",
        "--from",
        "apps/web",
        "--to",
        "198.19.255.254",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["decision"]["verdict"], "deny");
    assert_eq!(v["decision"]["egress"]["result"], "denied");
    assert_eq!(
        v["decision"]["egress"]["isolated_by"][0],
        "apps/block-metadata"
    );
    assert_eq!(v["decision"]["ingress"]["result"], "not-pod");
}

#[test]
fn bad_input_exits_2_and_names_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 300.1.2.3/8}}]}]\n",
    )
    .unwrap();
    let fs = f.to_str().unwrap();
    for args in [
        vec![
            "explain", "-f", fs, "--from", "1.2.3.4", "--to", "x/y", "--port", "80",
        ],
        vec!["matrix", "-f", fs],
    ] {
        let o = netward(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(
            e.contains(
                "bad.yaml: document 1: NetworkPolicy x/np: spec.ingress[0].from[0].ipBlock.cidr"
            ),
            "{e}"
        );
        assert!(e.contains("300.1.2.3/8"), "{e}");
    }
    let o = netward(&[
        "explain",
        "-f",
        "examples/rogue-pod",
        "--from",
        "netpol-test/nobody",
        "--to",
        "netpol-test/backend",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no pod netpol-test/nobody"),
        "{}",
        stderr(&o)
    );
    let o = netward(&["matrix", "-f", "examples/rogue-pod", "--protocol", "TCPX"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown protocol"), "{}", stderr(&o));
}
