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
        ("cluster-guardrails", "TCP", "80"),
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

// ---- Services, kubectl habits, --step and dot (issue #15, points 2, 5 and 6) ----

/// A shop: a client, three backends of Service `web` (targetPort named `http`: 8080 on
/// web-1 and web-2, 9090 on web-3; web-4 has no such port so it is no backend), a
/// database, a Service without selector and one whose selector matches nothing. The
/// policy lets the client reach app=web on TCP/8080 only, so web-3 (9090) denies.
const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node-a, containers: [{name: c, image: busybox}]}
status: {podIPs: [{ip: 198.18.1.5}, {ip: "fd00::1:5"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
status: {podIPs: [{ip: 198.18.2.11}, {ip: "fd00::2:11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: shop, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 9090}]}]}
status: {podIPs: [{ip: 198.18.2.12}, {ip: "fd00::2:12"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-4, namespace: shop, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: nginx}]}
status: {podIPs: [{ip: 198.18.2.13}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: node-a, containers: [{name: c, image: postgres, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIPs: [{ip: 198.18.1.20}]}
---
apiVersion: v1
kind: Pod
metadata: {name: monitor, namespace: ops, labels: {app: monitor}}
spec: {nodeName: node-a, containers: [{name: c, image: busybox}]}
status: {podIPs: [{ip: 198.18.1.30}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [198.19.0.10, "fd00::ffff:0:10"]
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  clusterIP: 198.19.0.20
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec:
  clusterIP: 198.19.0.30
  ports: [{port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: shop}
spec:
  selector: {app: nobody}
  clusterIP: 198.19.0.40
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{protocol: TCP, port: 8080}]
"#;

fn shop() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), SHOP).unwrap();
    dir
}

fn shop_explain(dir: &tempfile::TempDir, extra: &[&str]) -> Output {
    let d = dir.path().to_str().unwrap();
    let mut args = vec!["explain", "-f", d];
    args.extend_from_slice(extra);
    netward(&args)
}

#[test]
fn explain_cluster_ip_decides_each_backend_after_dnat() {
    let dir = shop();
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "198.19.0.10",
            "--port",
            "80",
        ],
    );
    let out = stdout(&o);
    // The datapath sees the connection after kube-proxy's DNAT: web-3 (9090) denies.
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(!out.contains("not a pod"), "{out}");
    assert!(out.contains("service shop/web"), "{out}");
    assert!(out.contains("1 of 3 backends deny"), "{out}");
    assert!(
        out.contains("shop/client -> shop/web-1 (198.18.1.10) TCP/8080: ALLOWED"),
        "{out}"
    );
    assert!(
        out.contains("shop/client -> shop/web-2 (198.18.2.11) TCP/8080: ALLOWED"),
        "{out}"
    );
    assert!(
        out.contains("shop/client -> shop/web-3 (198.18.2.12) TCP/9090: DENIED"),
        "{out}"
    );
    assert!(
        out.contains("allowed by shop/web-ingress ingress[0]"),
        "{out}"
    );
    // web-4 matches the selector but has no port named http: no backend, and said so.
    assert!(out.contains("shop/web-4"), "{out}");
    assert!(out.contains("no TCP container port named http"), "{out}");

    // The IPv6 ClusterIP resolves the backends' IPv6 addresses.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "fd00::ffff:0:10",
            "--port",
            "80",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("shop/web-3 (fd00::2:12) TCP/9090: DENIED"),
        "{}",
        stdout(&o)
    );

    // All backends allow: exit 0.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "198.19.0.20",
            "--port",
            "5432",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("ALLOWED"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("shop/db (198.18.1.20) TCP/5432: ALLOWED"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_service_by_name_in_every_kubectl_form() {
    let dir = shop();
    for to in [
        vec!["--to", "shop/web"],
        vec!["--to", "shop/svc/web"],
        vec!["--to", "shop/service/web"],
        vec!["-n", "shop", "--to", "svc/web"],
        vec!["--namespace", "shop", "--to", "service/web"],
    ] {
        let mut args = vec!["--from", "shop/client", "--port", "80"];
        args.extend(to.iter().copied());
        let o = shop_explain(&dir, &args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{to:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(
            stdout(&o).contains("1 of 3 backends deny"),
            "{to:?}: {}",
            stdout(&o)
        );
    }
    // `-n` also qualifies the client.
    let o = shop_explain(
        &dir,
        &[
            "-n", "shop", "--from", "client", "--to", "svc/db", "--port", "5432",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // The service port may be named, as in the Service.
    let o = shop_explain(
        &dir,
        &[
            "-n", "shop", "--from", "client", "--to", "svc/web", "--port", "http",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("1 of 3 backends deny"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_service_json_has_every_backend_with_its_trace() {
    let dir = shop();
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/svc/web",
            "--port",
            "80",
            "-o",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["service"]["name"], "shop/web");
    assert_eq!(v["service"]["target_port"], "http");
    let backends = v["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3, "{v}");
    assert_eq!(v["denied"], 1);
    let web3 = backends.iter().find(|b| b["pod"] == "shop/web-3").unwrap();
    assert_eq!(web3["port"], 9090);
    assert_eq!(web3["allowed"], false);
    assert_eq!(web3["decision"]["ingress"]["result"], "denied");
    let policy = &web3["trace"]["ingress"]["policies"][0];
    assert_eq!(policy["policy"], "shop/web-ingress", "{web3}");
    assert_eq!(policy["rules"][0]["peer_matches"], true);
    assert_eq!(policy["rules"][0]["port_matches"], false);
    assert_eq!(
        policy["rules"][0]["why"],
        "no match: TCP/9090 is not in TCP/8080"
    );
    let not = v["not_backends"].as_array().unwrap();
    assert_eq!(not[0]["pod"], "shop/web-4", "{v}");
}

#[test]
fn explain_service_usage_errors_and_nothing_to_connect_to() {
    let dir = shop();
    // An unknown service port: a usage error listing the ports.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "198.19.0.10",
            "--port",
            "8080",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("no TCP port 8080"), "{}", stderr(&o));
    assert!(stderr(&o).contains("80/TCP"), "{}", stderr(&o));
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/svc/web",
            "--port",
            "80",
            "--protocol",
            "udp",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    // No selector: nothing netward can resolve.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/svc/external",
            "--port",
            "443",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no selector"), "{}", stdout(&o));
    // A selector no pod matches: no backends.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "198.19.0.40",
            "--port",
            "80",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no backends"), "{}", stdout(&o));
    assert!(stdout(&o).contains("app=nobody"), "{}", stdout(&o));
    // Neither a pod nor a Service.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/nothing",
            "--port",
            "80",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no pod or service shop/nothing"),
        "{}",
        stderr(&o)
    );
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "svc/nothing",
            "-n",
            "shop",
            "--port",
            "80",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no service shop/nothing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_named_port_on_the_destination_pod() {
    let dir = shop();
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web-3",
            "--port",
            "http",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("TCP/9090: DENIED"), "{}", stdout(&o));
    let o = shop_explain(
        &dir,
        &[
            "-n", "shop", "--from", "client", "--to", "web-1", "--port", "http",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("TCP/8080: ALLOWED"), "{}", stdout(&o));
    // No such port on the pod: a usage error naming the pod's ports.
    let o = shop_explain(
        &dir,
        &["--from", "shop/client", "--to", "shop/db", "--port", "http"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("shop/db has no TCP container port named http"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("pg: 5432/TCP"), "{}", stderr(&o));
    // Protocol names are case-insensitive.
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web-1",
            "--port",
            "http",
            "--protocol",
            "tcp",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn explain_json_carries_the_trace_the_text_shows() {
    let o = netward(&[
        "explain",
        "-f",
        "examples/three-tier",
        "--from",
        "zero-trust/frontend",
        "--to",
        "zero-trust/database",
        "--port",
        "5432",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // The existing keys stay.
    assert_eq!(v["decision"]["verdict"], "deny");
    let eg = &v["trace"]["egress"];
    assert_eq!(eg["pod"], "zero-trust/frontend");
    assert!(
        eg["reason"]
            .as_str()
            .unwrap()
            .starts_with("denied: isolated by"),
        "{eg}"
    );
    assert_eq!(eg["policies"][0]["policy"], "zero-trust/default-deny-all");
    assert_eq!(eg["policies"][0]["rules"].as_array().unwrap().len(), 0);
    let fp = &eg["policies"][1];
    assert_eq!(fp["policy"], "zero-trust/frontend-policy");
    assert_eq!(fp["mode"], "enforce");
    assert_eq!(fp["rules"][0]["index"], 0);
    assert_eq!(
        fp["rules"][0]["peers"],
        "to [pods tier=backend (same namespace)]"
    );
    assert_eq!(fp["rules"][0]["ports"], "any port");
    assert_eq!(fp["rules"][0]["peer_matches"], false);
    assert_eq!(fp["rules"][0]["matches"], false);
    assert_eq!(
        fp["rules"][0]["why"],
        "no match: zero-trust/database is none of these peers"
    );
    assert_eq!(
        fp["rules"][1]["why"],
        "no match: TCP/5432 is not in UDP/53, TCP/53"
    );
    let ing = &v["trace"]["ingress"];
    assert_eq!(ing["policies"][1]["policy"], "zero-trust/default-deny-all");
    // Every rule line the text prints is in the JSON.
    let text = netward(&[
        "explain",
        "-f",
        "examples/three-tier",
        "--from",
        "zero-trust/frontend",
        "--to",
        "zero-trust/database",
        "--port",
        "5432",
    ]);
    let text = stdout(&text);
    for side in ["egress", "ingress"] {
        for p in v["trace"][side]["policies"].as_array().unwrap() {
            assert!(text.contains(p["policy"].as_str().unwrap()), "{text}");
            for r in p["rules"].as_array().unwrap() {
                assert!(
                    text.contains(r["why"].as_str().unwrap()),
                    "{r} not in {text}"
                );
            }
        }
    }
    // YAML is the same document.
    let y = netward(&[
        "explain",
        "-f",
        "examples/three-tier",
        "--from",
        "zero-trust/frontend",
        "--to",
        "zero-trust/database",
        "--port",
        "5432",
        "-o",
        "yaml",
    ]);
    assert_eq!(y.status.code(), Some(1));
    let yv: serde_json::Value = serde_yaml::from_str(&stdout(&y)).unwrap();
    assert_eq!(yv, v);
}

#[test]
fn explain_wide_names_addresses_and_nodes() {
    let dir = shop();
    let o = shop_explain(
        &dir,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web-2",
            "--port",
            "8080",
            "-o",
            "wide",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("shop/client 198.18.1.5 on node node-a"),
        "{out}"
    );
    assert!(
        out.contains("shop/web-2 198.18.2.11 on node node-b"),
        "{out}"
    );
}

#[test]
fn matrix_namespace_filters_rows_and_columns() {
    let dir = shop();
    let d = dir.path().to_str().unwrap();
    let o = netward(&["matrix", "-f", d, "-n", "ops", "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pods"], serde_json::json!(["ops/monitor"]));
    let o = netward(&["matrix", "-f", d, "--namespace", "shop", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pods"].as_array().unwrap().len(), 6, "{v}");
    // -A: every namespace, as without -n.
    let o = netward(&["matrix", "-f", d, "-n", "shop", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pods"].as_array().unwrap().len(), 7, "{v}");
    // An unknown namespace is a usage error.
    let o = netward(&["matrix", "-f", d, "-n", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no pods in namespace nope"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn matrix_several_ports_yaml_and_wide() {
    let dir = shop();
    let d = dir.path().to_str().unwrap();
    for ports in [
        vec!["--port", "8080,9090"],
        vec!["--port", "8080", "--port", "9090"],
    ] {
        let mut args = vec!["matrix", "-f", d, "-n", "shop", "-o", "json"];
        args.extend(ports.iter().copied());
        let o = netward(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let ms = v["matrices"].as_array().unwrap();
        assert_eq!(ms.len(), 2, "{v}");
        assert_eq!(ms[0]["port"], 8080);
        assert_eq!(ms[1]["port"], 9090);
        assert_eq!(ms[0]["protocol"], "TCP");
        // Each is the single-port shape.
        let pods: Vec<&str> = ms[0]["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let (c, w1) = (
            pods.iter().position(|p| *p == "shop/client").unwrap(),
            pods.iter().position(|p| *p == "shop/web-1").unwrap(),
        );
        assert_eq!(ms[0]["allowed"][c][w1], true);
        assert_eq!(ms[1]["allowed"][c][w1], false);
    }
    let o = netward(&["matrix", "-f", d, "-n", "shop", "--port", "8080,9090"]);
    let out = stdout(&o);
    assert!(out.contains("TCP/8080 (rows"), "{out}");
    assert!(out.contains("TCP/9090 (rows"), "{out}");

    let o = netward(&[
        "matrix", "-f", d, "-n", "shop", "--port", "8080", "-o", "yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let y: serde_json::Value = serde_yaml::from_str(&stdout(&o)).unwrap();
    let j = netward(&[
        "matrix", "-f", d, "-n", "shop", "--port", "8080", "-o", "json",
    ]);
    assert_eq!(
        y,
        serde_json::from_str::<serde_json::Value>(&stdout(&j)).unwrap()
    );

    // wide: the rule or the isolating policies behind each cell that a policy decided.
    let o = netward(&[
        "matrix", "-f", d, "-n", "shop", "--port", "8080", "-o", "wide",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("shop/client  . ."), "{out}");
    assert!(
        out.contains(". shop/client -> shop/web-1: ingress allowed by shop/web-ingress ingress[0]"),
        "{out}"
    );
    assert!(
        out.contains("X shop/db -> shop/web-1: ingress denied (isolated by shop/web-ingress)"),
        "{out}"
    );
}

#[test]
fn matrix_step_marks_what_each_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: t, labels: {app: a}}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: t, labels: {app: b}}
status: {podIP: 198.18.1.2}
"#;
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: t}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;
    let allow = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a-to-b, namespace: t}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
"#;
    let expect = "apiVersion: netward.io/v1alpha1\nkind: Expectations\nmetadata: {name: x}\nspec: {expect: []}\n";
    std::fs::write(dir.path().join("00-pods.yaml"), pods).unwrap();
    std::fs::write(dir.path().join("10-deny.yaml"), deny).unwrap();
    std::fs::write(dir.path().join("20-allow.yaml"), allow).unwrap();
    std::fs::write(dir.path().join("expect.yaml"), expect).unwrap();
    let d = dir.path().to_str().unwrap();
    let o = netward(&["matrix", "-f", d, "--step"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("== step ").count(), 3, "{out}");
    assert!(out.contains("== step 1/3: 00-pods.yaml"), "{out}");
    assert!(out.contains("== step 2/3: 10-deny.yaml"), "{out}");
    assert!(out.contains("== step 3/3: 20-allow.yaml"), "{out}");
    let steps: Vec<&str> = out.split("== step ").skip(1).collect();
    // Step 1: open; nothing to compare with.
    assert!(steps[0].contains("t/a  . ."), "{}", steps[0]);
    assert!(steps[0].contains("t/b  . ."), "{}", steps[0]);
    // Step 2: the deny closes a->b and b->a (not self): marked as changed.
    assert!(steps[1].contains("t/a  . -"), "{}", steps[1]);
    assert!(steps[1].contains("t/b  - ."), "{}", steps[1]);
    assert!(steps[1].contains("t/a -> t/b: now denied"), "{}", steps[1]);
    // Step 3: a->b reopens.
    assert!(steps[2].contains("t/a  . +"), "{}", steps[2]);
    assert!(steps[2].contains("t/b  X ."), "{}", steps[2]);
    assert!(steps[2].contains("t/a -> t/b: now allowed"), "{}", steps[2]);
    assert!(!steps[2].contains("t/b -> t/a"), "{}", steps[2]);

    let o = netward(&["matrix", "-f", d, "--step", "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[2]["file"], "20-allow.yaml");
    assert_eq!(
        steps[2]["changes"],
        serde_json::json!([{"from": "t/a", "to": "t/b", "protocol": "TCP", "port": 80, "allowed": true}])
    );
}

#[test]
fn matrix_dot_is_a_graph_of_the_allowed_flows() {
    let o = netward(&["matrix", "-f", "examples/rogue-pod", "-o", "dot"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dot = stdout(&o);
    check_dot(&dot);
    assert!(dot.starts_with("digraph netward {"), "{dot}");
    assert!(dot.contains("subgraph \"cluster_netpol-test\" {"), "{dot}");
    // frontend and backend reach everyone: collapsed to one edge each to "all pods".
    assert!(
        dot.contains("\"netpol-test/frontend\" -> \"*\" [label=\"TCP/80\"]"),
        "{dot}"
    );
    // rogue-pod does not reach the backend, but reaches the frontend.
    assert!(
        dot.contains("\"netpol-test/rogue-pod\" -> \"netpol-test/frontend\" [label=\"TCP/80\"]"),
        "{dot}"
    );
    assert!(
        !dot.contains("\"netpol-test/rogue-pod\" -> \"netpol-test/backend\""),
        "{dot}"
    );

    // Several ports label one edge with each port it is allowed on.
    let dir = shop();
    let d = dir.path().to_str().unwrap();
    let o = netward(&[
        "matrix",
        "-f",
        d,
        "-n",
        "shop",
        "--port",
        "8080,9090",
        "-o",
        "dot",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dot = stdout(&o);
    check_dot(&dot);
    assert!(
        dot.contains("\"shop/client\" -> \"shop/web-1\" [label=\"TCP/8080\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("\"shop/client\" -> \"shop/db\" [label=\"TCP/8080, TCP/9090\"]"),
        "{dot}"
    );
    assert!(!dot.contains("\"shop/db\" -> \"shop/web-1\""), "{dot}");
}

/// Balanced braces and brackets, and every edge endpoint declared as a node.
fn check_dot(dot: &str) {
    let mut depth = 0i32;
    let mut in_str = false;
    for c in dot.chars() {
        match c {
            '"' => in_str = !in_str,
            '{' if !in_str => depth += 1,
            '}' if !in_str => {
                depth -= 1;
                assert!(depth >= 0, "unbalanced: {dot}");
            }
            _ => {}
        }
    }
    assert_eq!(depth, 0, "unbalanced: {dot}");
    assert!(!in_str, "unterminated string: {dot}");
    let mut declared = std::collections::HashSet::new();
    let mut edges = Vec::new();
    for line in dot.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let Some((first, rest)) = rest.split_once('"') else {
            panic!("bad line {line}");
        };
        if let Some(rest) = rest.trim_start().strip_prefix("->") {
            let to = rest.trim_start().strip_prefix('"').unwrap();
            let (to, _) = to.split_once('"').unwrap();
            edges.push((first.to_owned(), to.to_owned()));
        } else {
            declared.insert(first.to_owned());
        }
    }
    assert!(!declared.is_empty(), "{dot}");
    for (a, b) in &edges {
        assert!(declared.contains(a), "edge from undeclared {a}: {dot}");
        assert!(declared.contains(b), "edge to undeclared {b}: {dot}");
    }
}

#[test]
fn usage_errors_exit_2_in_every_offline_tool() {
    let dir = shop();
    let d = dir.path().to_str().unwrap();
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        bad_dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: 300.1.1.1}\n",
    )
    .unwrap();
    let bad = bad_dir.path().to_str().unwrap();
    for args in [
        // matrix
        vec!["matrix", "-f", d, "--port", "http"],
        vec!["matrix", "-f", d, "--port", "0x50"],
        vec!["matrix", "-f", d, "-o", "svg"],
        vec!["matrix", "-f", "/nonexistent/netward"],
        vec!["matrix", "-f", bad],
        vec!["matrix", "-f", d, "--step", "-f", d],
        // explain
        vec![
            "explain",
            "-f",
            d,
            "--from",
            "shop/client",
            "--to",
            "shop/web-1",
        ],
        vec![
            "explain",
            "-f",
            d,
            "--from",
            "shop/client",
            "--to",
            "shop/web-1",
            "--port",
            "99999",
        ],
        vec![
            "explain",
            "-f",
            d,
            "--from",
            "shop/svc/web",
            "--to",
            "shop/web-1",
            "--port",
            "80",
        ],
        vec![
            "explain",
            "-f",
            d,
            "--from",
            "198.18.9.9",
            "--to",
            "198.18.9.8",
            "--port",
            "http",
        ],
        vec![
            "explain",
            "-f",
            d,
            "--from",
            "shop/client",
            "--to",
            "shop/web-1",
            "--port",
            "80",
            "-o",
            "dot",
        ],
        // audit
        vec!["audit", "/nonexistent/netward-audit.log"],
        vec!["audit", "-", "--since", "yesterday"],
        vec!["audit", "-", "--suggest"],
        // lab
        vec!["lab", "/nonexistent/netward-scenario"],
        vec!["lab", bad],
        vec!["lab", "--timeout-ms", "soon"],
        // ca (an offline tool too)
        vec![
            "ca",
            "init",
            "--dir",
            "/nonexistent/x",
            "--trust-domain",
            "UPPER",
        ],
    ] {
        let o = netward(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
}

// ---------------------------------------------------------------------------------------
// The daemons' configuration: `run`, `node` and `signer`.

/// `netward ARGS` with exactly the variables `env` (nothing inherited: a variable of the
/// test's own environment must not decide its outcome).
fn netward_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap()
}

/// Every variable the manifests in `deploy/` give a container, with its value and the
/// subcommand that reads it (`node` for the DaemonSet and its ConfigMap, `signer` for the
/// signer's Deployment). A `valueFrom` variable gets a placeholder a cluster would give.
fn deploy_env() -> Vec<(&'static str, String, String)> {
    let read = |file: &str| -> Vec<serde_yaml::Value> {
        let text = std::fs::read_to_string(root().join("deploy").join(file)).unwrap();
        text.split("\n---")
            .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
            .collect()
    };
    let from_api = |name: &str| match name {
        "NODE_NAME" => "node-a".to_owned(),
        "NODE_IP" => "127.0.0.1".to_owned(),
        "POD_NAMESPACE" => "netward-system".to_owned(),
        "POD_NAME" => "netward-signer-0".to_owned(),
        other => panic!("{other}: a valueFrom variable this test does not know"),
    };
    let mut out = Vec::new();
    for (file, sub) in [("daemonset.yaml", "node"), ("signer.yaml", "signer")] {
        for doc in read(file) {
            let containers = &doc["spec"]["template"]["spec"]["containers"];
            for c in containers.as_sequence().into_iter().flatten() {
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap().to_owned();
                    let value = match e["value"].as_str() {
                        Some(v) => v.to_owned(),
                        None => from_api(&name),
                    };
                    out.push((sub, name, value));
                }
            }
        }
    }
    for doc in read("configmap.yaml") {
        for (k, v) in doc["data"].as_mapping().into_iter().flatten() {
            out.push((
                "node",
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            ));
        }
    }
    // `RUST_LOG` is tracing's filter, not a flag.
    out.retain(|(_, name, _)| name != "RUST_LOG");
    assert!(out.len() > 20, "{out:?}");
    out
}

/// A value each variable of `deploy/` refuses, or `None` when it takes any text (the
/// signer's Lease holder name).
fn bad_value(name: &str) -> Option<&'static str> {
    Some(match name {
        "NODE_NAME" => "Node_A",
        "NODE_IP" => "node-a",
        "POD_NAMESPACE" => "Not_A_Namespace",
        "POD_NAME" => return None,
        "NETWARD_IDENTITY_DIR" => "relative/dir",
        "NETWARD_REJECT"
        | "NETWARD_SPLICE"
        | "NETWARD_IPV6"
        | "NETWARD_CLEANUP_ON_EXIT"
        | "NETWARD_MTLS" => "maybe",
        "NETWARD_TPROXY_PORT" => "x",
        "NETWARD_IDLE_TIMEOUT_SECS" => "0",
        "NETWARD_DRAIN_GRACE_SECS" => "-1",
        "NETWARD_DEBOUNCE_MS" => "10s",
        "NETWARD_TRUST_DOMAIN" => "Bad Domain",
        "NETWARD_TUNNEL_PORT" => "70000",
        "NETWARD_CERT_VALIDITY" => "soon",
        "NETWARD_CERT_WAIT_SECS" => "0",
        "NETWARD_AUDIT_LOG" => "",
        "NETWARD_TUNNEL_MAX_HANDSHAKES" | "NETWARD_TUNNEL_MAX_CONNS_PER_NODE" => "0",
        "NETWARD_SERVICE_ACCOUNT" => "Bad_Account",
        "NETWARD_MAX_VALIDITY_SECS" => "10",
        other => panic!("{other} is set in deploy/: give it a bad value here"),
    })
}

#[test]
fn every_variable_in_deploy_is_a_flag_that_reports_a_bad_value() {
    for (sub, name, _) in deploy_env() {
        let help = stdout(&netward_env(&[sub, "--help"], &[]));
        assert!(
            help.contains(&format!("[env: {name}=")),
            "netward {sub} has no flag reading {name}:\n{help}"
        );
        let Some(bad) = bad_value(&name) else {
            continue;
        };
        // `node` needs a node name; the variable under test wins when it is NODE_NAME.
        let mut env = vec![(name.as_str(), bad)];
        if sub == "node" && name != "NODE_NAME" {
            env.push(("NODE_NAME", "node-a"));
        }
        if name.starts_with("NETWARD_CERT") || name == "NETWARD_TUNNEL_PORT" {
            env.push(("NETWARD_MTLS", "true"));
        }
        let o = netward_env(&[sub], &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{sub} {name}={bad:?}: {err}");
        assert!(
            err.contains(&format!("/{name}={bad:?}: ")),
            "{sub} {name}={bad:?}: the message names neither the variable nor the value: {err}"
        );
    }
}

#[test]
fn the_values_in_deploy_are_accepted_and_set_their_flags() {
    // With every value of deploy/ but the transparent port on the admin server's, the
    // one error left is that clash: every other value parsed, and the variable set
    // --tproxy-port.
    for (sub, trigger, want) in [
        (
            "node",
            ("NETWARD_TPROXY_PORT", "15021"),
            "--admin-addr/NETWARD_ADMIN_ADDR=\"127.0.0.1:15021\": port 15021 is the transparent listener's (--tproxy-port)",
        ),
        (
            "signer",
            ("NETWARD_LEASE_RENEW_SECS", "15"),
            "--renew-secs/NETWARD_LEASE_RENEW_SECS=\"15\": must be at most 2/3 of the lease duration (15 s)",
        ),
    ] {
        let all = deploy_env();
        let mut env: Vec<(&str, &str)> = all
            .iter()
            .filter(|(s, _, _)| *s == sub)
            .map(|(_, n, v)| (n.as_str(), v.as_str()))
            .filter(|(n, _)| *n != trigger.0)
            .collect();
        env.push(trigger);
        let o = netward_env(&[sub], &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{sub}: {err}");
        assert_eq!(err.trim_end(), format!("netward: error: {want}"), "{sub}");
    }
    // A flag wins over its variable.
    let o = netward_env(
        &["node", "--node-name", "node-a", "--tproxy-port", "15001"],
        &[
            ("NETWARD_TPROXY_PORT", "x"),
            ("NETWARD_DEBUG_ADDR", "0.0.0.0:1"),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--debug-addr/NETWARD_DEBUG_ADDR=\"0.0.0.0:1\""),
        "{err}"
    );
}

#[test]
fn bad_values_and_usage_errors_of_the_daemons_exit_64() {
    let ex = "examples/rogue-pod";
    for (args, env, want) in [
        (
            vec!["run", "-f", ex, "--tproxy-port", "0"],
            vec![],
            "--tproxy-port/NETWARD_TPROXY_PORT=\"0\": must be between 1 and 65535",
        ),
        (
            vec!["run", "-f", ex, "--node", "Node_A"],
            vec![],
            "--node-name/NODE_NAME=\"Node_A\": not a node name",
        ),
        (
            vec!["run", "-f", ex],
            vec![("NETWARD_IDLE_TIMEOUT_SECS", "forever")],
            "--idle-timeout-secs/NETWARD_IDLE_TIMEOUT_SECS=\"forever\": not a whole number",
        ),
        (
            vec!["run", "-f", ex, "--admin-addr", "localhost:15021"],
            vec![],
            "--admin-addr/NETWARD_ADMIN_ADDR=\"localhost:15021\": expected IP:PORT",
        ),
        (
            vec!["node", "--reject=perhaps"],
            vec![("NODE_NAME", "node-a")],
            "--reject/NETWARD_REJECT=\"perhaps\": expected true or false",
        ),
        (
            vec!["node", "--node-name", "node-a"],
            vec![("NETWARD_KUBECONFIG", "/nonexistent/kubeconfig")],
            "--kubeconfig/NETWARD_KUBECONFIG=\"/nonexistent/kubeconfig\": no such file",
        ),
        (
            vec!["signer", "--namespace", "Kube_System"],
            vec![],
            "--namespace/POD_NAMESPACE=\"Kube_System\": not a DNS label",
        ),
        (
            vec!["signer"],
            vec![("NETWARD_CA_VALIDITY_DAYS", "0")],
            "--ca-validity-days/NETWARD_CA_VALIDITY_DAYS=\"0\": must be between 1 and 7300",
        ),
    ] {
        let o = netward_env(&args, &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?} {env:?}: {err}");
        assert!(
            err.starts_with(&format!("netward: error: {want}")),
            "{args:?} {env:?}: {err}"
        );
    }
    // clap's own errors (an unknown or missing flag, a missing value) are usage errors
    // of the configuration too.
    for args in [
        vec!["run", "-f", ex, "--no-such-flag"],
        vec!["run"],
        vec!["node", "--tproxy-port"],
        vec!["signer", "--no-such-flag"],
    ] {
        let o = netward_env(&args, &[]);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
    // Help and version are not errors.
    for args in [
        vec!["node", "--help"],
        vec!["--version"],
        vec!["signer", "-h"],
    ] {
        assert_eq!(netward_env(&args, &[]).status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn help_describes_netward_and_each_command_shows_examples() {
    let top = stdout(&netward(&["--help"]));
    assert!(
        top.starts_with("Kubernetes NetworkPolicy enforcement on each node"),
        "{top}"
    );
    assert!(!top.contains("The netward data plane and"), "{top}");
    for cmd in [
        &["matrix"][..],
        &["explain"],
        &["audit"],
        &["run"],
        &["cleanup"],
        &["node"],
        &["signer"],
        &["lab"],
        &["ca"],
        &["ca", "init"],
        &["ca", "issue"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = netward(&args);
        let out = stdout(&o);
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        let examples = out
            .split_once("\nExamples:\n")
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("{cmd:?} --help has no examples:\n{out}"));
        let prefix = format!("netward {}", cmd.join(" "));
        assert!(
            examples.lines().any(|l| l
                .trim_start()
                .trim_start_matches("sudo ")
                .starts_with(&prefix)),
            "{cmd:?}: no example starts with {prefix:?}:\n{examples}"
        );
    }
}

/// `explain` names the ClusterNetworkPolicy, its tier and rule, in text and JSON.
#[test]
fn explain_names_the_cluster_network_policy_rule() {
    let text = netward(&[
        "explain",
        "-f",
        "examples/cluster-guardrails",
        "--from",
        "apps/web",
        "--to",
        "198.19.255.254",
        "--port",
        "80",
    ]);
    assert_eq!(text.status.code(), Some(1), "{}", stderr(&text));
    let out = stdout(&text);
    assert!(
        out.contains(
            "denied by ClusterNetworkPolicy block-metadata (Admin tier, priority 0) egress[0] \"deny-cloud-metadata\" (Deny)"
        ),
        "{out}"
    );
    let json = netward(&[
        "explain",
        "-f",
        "examples/cluster-guardrails",
        "--from",
        "apps/worker",
        "--to",
        "apps/web",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(
        v["decision"]["ingress"]["cluster_policy"]["policy"],
        "default-deny-ingress"
    );
    assert_eq!(
        v["decision"]["ingress"]["cluster_policy"]["tier"],
        "Baseline"
    );
    assert_eq!(
        v["decision"]["ingress"]["cluster_policy"]["rule_name"],
        "deny-from-every-pod"
    );
}
