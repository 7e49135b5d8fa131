//! `netward audit` as an operator runs it: filters, the table, `--top`, `--suggest` (and the
//! suggestion checked back through `netward explain`), rotated and gzip-compressed files,
//! standard input, lines that are not records, bad input, and a million-line log streamed
//! in bounded memory.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use netward_controller::render::{RuleRef, SideReport};
use netward_proxy::audit::{Peer, Record, ServiceRef, rfc3339};

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

fn netward_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netward"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

// ---- records ------------------------------------------------------------------------

fn pod(ip: &str, port: u16, ns: &str, name: &str) -> Peer {
    Peer {
        ip: ip.into(),
        port,
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        labels: Some("0123456789abcdef".into()),
        node: Some("node-a".into()),
    }
}

fn ip(ip: &str, port: u16) -> Peer {
    Peer {
        ip: ip.into(),
        port,
        ..Peer::default()
    }
}

fn side(result: &str, pod: &Peer) -> SideReport {
    SideReport {
        result: result.into(),
        pod: pod
            .pod
            .as_ref()
            .map(|p| format!("{}/{p}", pod.namespace.as_deref().unwrap())),
        allowed_by: None,
        isolated_by: Vec::new(),
        exemption: None,
        cluster_policy: None,
    }
}

fn side_of(p: &Peer) -> SideReport {
    if p.pod.is_some() {
        side("not-isolated", p)
    } else {
        side("not-pod", p)
    }
}

/// A deny record; the side(s) named deny with the policies given.
fn deny(time: &str, src: Peer, dst: Peer, egress: &[&str], ingress: &[&str]) -> Record {
    let mut r = base(time, "deny", src, dst);
    r.event = "deny".into();
    if !egress.is_empty() {
        r.egress = side("denied", &r.src);
        r.egress.isolated_by = egress.iter().map(|s| s.to_string()).collect();
    }
    if !ingress.is_empty() {
        r.ingress = side("denied", &r.dst);
        r.ingress.isolated_by = ingress.iter().map(|s| s.to_string()).collect();
    }
    r
}

/// An allowed close record, the ingress side allowed by `policy` rule `rule`.
fn allow(time: &str, src: Peer, dst: Peer, policy: &str, rule: usize) -> Record {
    let mut r = base(time, "allow", src, dst);
    r.ingress = side("allowed", &r.dst);
    r.ingress.allowed_by = Some(RuleRef {
        policy: policy.into(),
        rule,
    });
    r
}

fn base(time: &str, verdict: &str, src: Peer, dst: Peer) -> Record {
    Record {
        v: 1,
        time: time.into(),
        node: Some("node-a".into()),
        event: "close".into(),
        verdict: verdict.into(),
        direction: "both".into(),
        protocol: "TCP".into(),
        egress: side_of(&src),
        ingress: side_of(&dst),
        src,
        dst,
        service: None,
        generation: 2,
        count: 1,
        first_seen: None,
        last_seen: None,
        bytes: None,
        duration_ms: None,
        closed_by: None,
        close: None,
        mtls: false,
        peer_node: None,
        detail: None,
    }
}

fn lines(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect()
}

fn write_log(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

const BACKEND_POLICY: &str = "netpol-test/backend-access-policy";

fn rogue(port: u16) -> Peer {
    pod("198.18.1.12", port, "netpol-test", "rogue-pod")
}
fn frontend(port: u16) -> Peer {
    pod("198.18.1.11", port, "netpol-test", "frontend")
}
fn backend(port: u16) -> Peer {
    pod("198.18.1.10", port, "netpol-test", "backend")
}

/// A small mixed log: the documented examples and a few more.
fn sample() -> Vec<Record> {
    let mut flood = deny(
        "2026-11-23T16:20:19.871Z",
        rogue(61022),
        backend(80),
        &[],
        &[BACKEND_POLICY],
    );
    flood.count = 19_999;
    flood.first_seen = Some("2026-11-23T16:20:12.004Z".into());
    flood.last_seen = Some("2026-11-23T16:20:15.310Z".into());
    let mut via_svc = allow(
        "2026-11-23T16:20:11.482Z",
        frontend(40774),
        backend(80),
        BACKEND_POLICY,
        0,
    );
    via_svc.service = Some(ServiceRef {
        name: "netpol-test/backend-svc".into(),
        ip: "198.19.0.10".into(),
        port: 80,
    });
    let mut audit = base(
        "2026-11-23T16:21:02.114Z",
        "audit-allow",
        pod("198.18.1.21", 51200, "shop", "client"),
        pod("198.18.1.20", 8080, "staged", "api"),
    );
    audit.ingress = side("audit-denied", &audit.dst);
    audit.ingress.isolated_by = vec!["staged/default-deny".into()];
    let mut dns = base(
        "2026-11-23T16:21:05.551Z",
        "allow",
        pod("198.18.1.30", 41000, "zero-trust", "frontend"),
        pod("198.18.1.33", 53, "kube-system", "coredns"),
    );
    dns.event = "flow".into();
    dns.protocol = "UDP".into();
    dns.egress = side("allowed", &dns.src);
    dns.egress.allowed_by = Some(RuleRef {
        policy: "zero-trust/frontend-policy".into(),
        rule: 1,
    });
    let external = deny(
        "2026-11-23T16:22:00.000Z",
        ip("203.0.113.9", 5000),
        backend(80),
        &[],
        &[BACKEND_POLICY],
    );
    vec![
        via_svc, // 0
        deny(
            "2026-11-23T16:20:12.003Z",
            rogue(48394),
            backend(80),
            &[],
            &[BACKEND_POLICY],
        ), // 1
        flood,   // 2
        audit,   // 3
        dns,     // 4
        external, // 5
    ]
}

/// Runs `netward audit LOG -o json ARGS` on the sample and returns the indexes selected.
fn select(log: &Path, args: &[&str]) -> Vec<usize> {
    let all = lines(&sample());
    let mut a = vec!["audit", log.to_str().unwrap(), "-o", "json"];
    a.extend_from_slice(args);
    let o = netward(&a);
    assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
    assert_eq!(stderr(&o), "", "{args:?}");
    stdout(&o)
        .lines()
        .map(|l| {
            all.iter()
                .position(|x| x == l)
                .unwrap_or_else(|| panic!("{args:?}: changed line {l}"))
        })
        .collect()
}

// ---- filters and the table -----------------------------------------------------------

#[test]
fn each_filter_selects_exactly_its_records_and_json_keeps_lines_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    write_log(&log, &lines(&sample()));
    let cases: &[(&[&str], &[usize])] = &[
        (&[], &[0, 1, 2, 3, 4, 5]),
        (&["--verdict", "deny"], &[1, 2, 5]),
        (&["--verdict", "allow"], &[0, 4]),
        (&["--verdict", "audit-allow"], &[3]),
        (&["--verdict", "allow,audit-allow"], &[0, 3, 4]),
        (&["--namespace", "netpol-test"], &[0, 1, 2]),
        (&["--pod", "netpol-test/rogue-pod"], &[1, 2]),
        (&["--pod", "frontend"], &[0, 4]),
        (&["--pod", "other-ns/frontend"], &[]),
        (&["--to-namespace", "staged"], &[3]),
        (&["--to-pod", "kube-system/coredns"], &[4]),
        (&["--to-pod", "backend", "--verdict", "deny"], &[1, 2, 5]),
        (&["--port", "53"], &[4]),
        (&["--protocol", "udp"], &[4]),
        (&["--protocol", "TCP", "--port", "8080"], &[3]),
        (&["--policy", BACKEND_POLICY], &[0, 1, 2, 5]),
        (&["--policy", "staged/default-deny"], &[3]),
        (&["--policy", "zero-trust/frontend-policy"], &[4]),
        (&["--policy", "netpol-test/nope"], &[]),
        // Aggregated records span first_seen..last_seen: the flood (16:20:12.004..16:20:15.310)
        // overlaps a window that starts after its first attempt.
        (
            &[
                "--since",
                "2026-11-23T16:20:13Z",
                "--until",
                "2026-11-23T16:21:00Z",
            ],
            &[2],
        ),
        (&["--since", "2026-11-23T16:21:03Z"], &[4, 5]),
        (&["--until", "2026-11-23T16:20:12Z"], &[0]),
        (
            &["--since", "2026-11-23T17:20:13+01:00", "--verdict", "deny"],
            &[2, 5],
        ),
    ];
    for (args, want) in cases {
        assert_eq!(select(&log, args), *want, "{args:?}");
    }
}

#[test]
fn relative_times_count_back_from_now() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let ago = |secs: u64| rfc3339(SystemTime::now() - Duration::from_secs(secs));
    let recs = [
        deny(&ago(20), rogue(1), backend(80), &[], &[BACKEND_POLICY]),
        deny(&ago(10 * 60), rogue(2), backend(80), &[], &[BACKEND_POLICY]),
        deny(
            &ago(2 * 3600),
            rogue(3),
            backend(80),
            &[],
            &[BACKEND_POLICY],
        ),
        deny(
            &ago(3 * 86_400),
            rogue(4),
            backend(80),
            &[],
            &[BACKEND_POLICY],
        ),
    ];
    write_log(&log, &lines(&recs));
    let ports = |args: &[&str]| -> Vec<u16> {
        let mut a = vec!["audit", log.to_str().unwrap(), "-o", "json"];
        a.extend_from_slice(args);
        let o = netward(&a);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().src.port)
            .collect()
    };
    assert_eq!(ports(&["--since", "60s"]), [1]);
    assert_eq!(ports(&["--since", "15m"]), [1, 2]);
    assert_eq!(ports(&["--since", "3h"]), [1, 2, 3]);
    assert_eq!(ports(&["--since", "4d"]), [1, 2, 3, 4]);
    assert_eq!(ports(&["--since", "1d", "--until", "1h"]), [3]);
}

#[test]
fn the_table_names_both_ends_the_service_and_a_short_reason() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    write_log(&log, &lines(&sample()));
    let o = netward(&["audit", log.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 7, "{out}");
    for col in [
        "TIME",
        "VERDICT",
        "SRC",
        "DST",
        "SERVICE",
        "PROTO/PORT",
        "COUNT",
        "REASON",
    ] {
        assert!(rows[0].contains(col), "{}", rows[0]);
    }
    let words = |i: usize| rows[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        words(1),
        [
            "2026-11-23T16:20:11.482Z",
            "allow",
            "netpol-test/frontend",
            "netpol-test/backend",
            "netpol-test/backend-svc:80",
            "TCP/80",
            "1",
            "allowed",
            "by",
            BACKEND_POLICY,
            "ingress[0]"
        ]
    );
    assert!(rows[3].contains(" 19999 "), "{}", rows[3]);
    assert!(
        rows[3].ends_with(&format!("ingress denied by {BACKEND_POLICY}")),
        "{}",
        rows[3]
    );
    assert!(
        rows[4].ends_with("ingress would be denied by staged/default-deny (audit mode)"),
        "{}",
        rows[4]
    );
    assert!(
        rows[5].contains("UDP/53")
            && rows[5].ends_with("allowed by zero-trust/frontend-policy egress[1]")
    );
    assert_eq!(
        words(6)[2],
        "203.0.113.9:5000",
        "a non-pod is ip:port: {}",
        rows[6]
    );
}

// ---- input ---------------------------------------------------------------------------

#[test]
fn reads_rotated_gzip_and_standard_input_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let all = lines(&sample());
    let log = dir.path().join("audit.log");
    // audit.log.2.gz (oldest) holds 0-1, audit.log.1 holds 2-3, audit.log (live) 4-5.
    std::fs::write(
        dir.path().join("audit.log.2.gz"),
        gzip(&format!("{}\n{}\n", all[0], all[1])),
    )
    .unwrap();
    write_log(&dir.path().join("audit.log.1"), &all[2..4]);
    write_log(&log, &all[4..]);
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    // In the shell's glob order.
    let o = netward(&[
        "audit",
        "-o",
        "json",
        &p("audit.log"),
        &p("audit.log.1"),
        &p("audit.log.2.gz"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), all);

    // Standard input, plain and compressed (two gzip members, as `cat a.gz b.gz` gives).
    let text: String = all.iter().map(|l| format!("{l}\n")).collect();
    let o = netward_stdin(
        &["audit", "-", "-o", "json", "--verdict", "deny"],
        text.as_bytes(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3);
    let mut two = gzip(&format!("{}\n{}\n", all[0], all[1]));
    two.extend(gzip(&format!("{}\n", all[2])));
    let o = netward_stdin(&["audit", "-o", "json", "-"], &two);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), all[..3]);
    // A file and standard input together; no trailing newline on the last line.
    let o = netward_stdin(
        &["audit", "-o", "json", &p("audit.log.1"), "-"],
        all[5].as_bytes(),
    );
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        [&all[2], &all[3], &all[5]]
    );
}

#[test]
fn lines_that_are_not_records_are_skipped_counted_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let all = lines(&sample());
    let v2 = all[1].replacen(r#""v":1"#, r#""v":2"#, 1);
    let text = [
        all[0].as_str(),
        "not json at all",
        "",
        r#"{"v":1,"time":"2026-11-23T16:20:11.482Z"}"#,
        &v2,
        r#"{"v":3,"something":"else"}"#,
        &all[1],
        &"x".repeat(2 << 20),
        &all[2].replace("2026-11-23T16:20:19.871Z", "yesterday"),
        &all[2],
    ]
    .join("\n");
    std::fs::write(&log, text).unwrap();
    let o = netward(&["audit", "-o", "json", log.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The bad time is only a problem where times are compared.
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));
    let err = stderr(&o);
    let name = log.display();
    assert!(
        err.contains(&format!(
            "netward: 3 lines skipped (not audit records); the first: {name}:2: "
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "note: {name}:5: a record of schema version 2 (this netward reads version 1): skipped"
        )),
        "{err}"
    );
    assert!(
        err.contains("2 records of another schema version skipped"),
        "{err}"
    );

    // With a time filter, the record with a bad time is not a record.
    let o = netward(&[
        "audit",
        "-o",
        "json",
        log.to_str().unwrap(),
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(stdout(&o).lines().count(), 3);
    assert!(
        stderr(&o).contains("4 lines skipped (not audit records)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_input_exits_2_and_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    write_log(&log, &lines(&sample()));
    let l = log.to_str().unwrap();
    let missing = dir.path().join("missing.log");
    let truncated = dir.path().join("old.log.1.gz");
    let gz = gzip(&lines(&sample()).join("\n").repeat(50));
    std::fs::write(&truncated, &gz[..gz.len() / 2]).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["audit", l, "--since", "yesterday"],
            "invalid time \"yesterday\"",
        ),
        (
            &["audit", l, "--until", "2026-11-23"],
            "not a valid RFC 3339 time",
        ),
        (&["audit", l, "--since", "5w"], "unknown unit"),
        (
            &["audit", l, "--verdict", "maybe"],
            "invalid value 'maybe' for '--verdict",
        ),
        (&["audit", l, "--port", "http"], "--port"),
        (&["audit", l, "--protocol", "tcpx"], "unknown protocol"),
        (&["audit", l, "--pod", "a/b/c"], "invalid pod"),
        (
            &["audit", l, "--policy", "default-deny"],
            "invalid policy \"default-deny\": give namespace/name",
        ),
        (&["audit", l, "--top", "0"], "--top"),
        (
            &["audit", l, "--top", "3", "--suggest"],
            "cannot be used with",
        ),
        (
            &[
                "audit",
                l,
                "--suggest",
                "-o",
                "json",
                "-f",
                "examples/rogue-pod",
            ],
            "cannot be used with",
        ),
        (&["audit", l, "-f", "examples/rogue-pod"], "--suggest"),
        (&["audit", l, "--suggest"], "--suggest needs the manifests"),
        (
            &["audit", l, "--suggest", "-f", missing.to_str().unwrap()],
            "missing.log: cannot read",
        ),
        (
            &["audit", l, missing.to_str().unwrap()],
            &format!("{}: cannot read: No such file", missing.display()),
        ),
        (
            &["audit", l, "-", "-"],
            "`-` (standard input) can be given once",
        ),
        (
            &["audit", truncated.to_str().unwrap()],
            &format!("{}:", truncated.display()),
        ),
    ];
    for (args, msg) in cases {
        let o = netward(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
    // No matches is not an error.
    let o = netward(&["audit", l, "--namespace", "nowhere"]);
    assert_eq!(code(&o), 0);
    assert_eq!(stdout(&o).lines().count(), 1, "just the header");
}

// ---- --top ---------------------------------------------------------------------------

#[test]
fn top_sums_denied_flows_by_workload_with_first_last_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let web = |i: usize| {
        let name = [
            "web-7d9f8b6c5d-x2x9k",
            "web-7d9f8b6c5d-qr5tz",
            "web-6c5d7d9f8b-zz2xq",
        ][i];
        pod(&format!("10.0.0.{i}"), 40_000, "shop", name)
    };
    let db = |i: u8| pod(&format!("10.0.1.{i}"), 5432, "data", &format!("db-{i}"));
    let t = |s: u32| format!("2026-11-23T16:{:02}:{:02}.000Z", s / 60, s % 60);
    let mut recs = vec![
        deny(&t(10), web(0), db(0), &["shop/deny-egress"], &[]),
        deny(&t(5), web(1), db(1), &[], &["data/default-deny"]),
        deny(
            &t(20),
            web(2),
            db(0),
            &[],
            &["data/default-deny", "data/other"],
        ),
        deny(&t(30), rogue(1), backend(80), &[], &[BACKEND_POLICY]),
        deny(
            &t(40),
            ip("203.0.113.9", 1),
            db(0),
            &[],
            &["data/default-deny"],
        ),
        allow(&t(50), web(0), db(0), "data/allow-web", 0),
    ];
    recs[1].count = 7;
    recs[1].first_seen = Some(t(1));
    recs[1].last_seen = Some(t(4));
    let mut udp = deny(&t(60), web(0), db(0), &["shop/deny-egress"], &[]);
    udp.protocol = "UDP".into();
    recs.push(udp);
    write_log(&log, &lines(&recs));

    let o = netward(&["audit", log.to_str().unwrap(), "--top", "10", "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows[0],
        serde_json::json!({
            "count": 9, "records": 3, "src": "shop/web", "dst": "data/db", "protocol": "TCP", "port": 5432,
            "first_seen": t(1), "last_seen": t(20),
            "policies": ["egress: shop/deny-egress", "ingress: data/default-deny", "ingress: data/other"],
        })
    );
    let keys: Vec<(String, String, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["src"].as_str().unwrap().to_owned(),
                r["dst"].as_str().unwrap().to_owned(),
                r["protocol"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("shop/web".into(), "data/db".into(), "TCP".into(), 9),
            ("203.0.113.9".into(), "data/db".into(), "TCP".into(), 1),
            (
                "netpol-test/rogue-pod".into(),
                "netpol-test/backend".into(),
                "TCP".into(),
                1
            ),
            ("shop/web".into(), "data/db".into(), "UDP".into(), 1),
        ]
    );

    // The table, limited to N, and filters apply before aggregating.
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--top",
        "1",
        "--to-namespace",
        "data",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        [
            "COUNT",
            "SRC",
            "DST",
            "PROTO/PORT",
            "FIRST",
            "SEEN",
            "LAST",
            "SEEN",
            "DENIED",
            "BY"
        ]
    );
    assert!(
        rows[1]
            .trim_start()
            .starts_with("9  shop/web  data/db  TCP/5432  "),
        "{}",
        rows[1]
    );
    // `--verdict allow` aggregates what was allowed, with the allowing rules.
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--top",
        "5",
        "--verdict",
        "allow",
        "-o",
        "json",
    ]);
    assert!(
        stdout(&o).contains(r#""policies":["ingress: data/allow-web[0]"]"#),
        "{}",
        stdout(&o)
    );
}

// ---- --suggest -----------------------------------------------------------------------

/// `netward explain -f ... --from --to --port [--protocol]`: the exit code (0 allowed, 1 denied).
fn explain(files: &[&str], from: &str, to: &str, port: u16, proto: &str) -> i32 {
    let mut a = vec!["explain"];
    for f in files {
        a.extend(["-f", f]);
    }
    let port = port.to_string();
    a.extend([
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port,
        "--protocol",
        proto,
    ]);
    let o = netward(&a);
    assert!(matches!(code(&o), 0 | 1), "{a:?}: {}", stderr(&o));
    code(&o)
}

fn matrix(files: &[&str], proto: &str, port: u16) -> serde_json::Value {
    let mut a = vec!["matrix"];
    for f in files {
        a.extend(["-f", f]);
    }
    let port = port.to_string();
    a.extend(["--protocol", proto, "--port", &port, "-o", "json"]);
    let o = netward(&a);
    assert_eq!(code(&o), 0, "{a:?}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn suggest_on_rogue_pod_allows_the_denied_flow_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    write_log(&log, &lines(&sample()));
    // Only the rogue pod's denials: the external client's (index 5) has no pod to select.
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--pod",
        "netpol-test/rogue-pod",
        "--suggest",
        "-f",
        "examples/rogue-pod",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let yaml = stdout(&o);
    assert!(
        stderr(&o).contains("suggested 1 policy for 1 distinct denied flow"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        yaml,
        "\
# Suggested by `netward audit --suggest`: allows ingress to netpol-test/backend for these flows the audit log shows denied:
#   netpol-test/rogue-pod -> netpol-test/backend TCP/80: 20000 denied
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: netward-suggest-backend-ingress
  namespace: netpol-test
spec:
  podSelector:
    matchLabels:
      app: backend
  policyTypes:
  - Ingress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: rogue
    ports:
    - protocol: TCP
      port: 80
"
    );
    let suggestion = dir.path().join("suggestion.yaml");
    std::fs::write(&suggestion, &yaml).unwrap();
    let before: &[&str] = &["examples/rogue-pod"];
    let after: &[&str] = &["examples/rogue-pod", suggestion.to_str().unwrap()];

    // The flow in the records is allowed now (it was not).
    assert_eq!(
        explain(
            before,
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            80,
            "TCP"
        ),
        1
    );
    assert_eq!(
        explain(
            after,
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            80,
            "TCP"
        ),
        0
    );
    // Flows not in the records stay as they were.
    assert_eq!(
        explain(
            after,
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            81,
            "TCP"
        ),
        1
    );
    assert_eq!(
        explain(
            after,
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            80,
            "UDP"
        ),
        1
    );
    assert_eq!(
        explain(
            after,
            "netpol-test/frontend",
            "netpol-test/backend",
            80,
            "TCP"
        ),
        0
    );
    assert_eq!(
        explain(after, "198.18.1.200", "netpol-test/backend", 80, "TCP"),
        1
    );
    // The whole matrix: exactly one cell changes (rogue-pod -> backend on TCP/80).
    let (m0, m1) = (matrix(before, "TCP", 80), matrix(after, "TCP", 80));
    let pods = m0["pods"].as_array().unwrap();
    let (rogue_i, backend_i) = (
        pods.iter()
            .position(|p| p == "netpol-test/rogue-pod")
            .unwrap(),
        pods.iter()
            .position(|p| p == "netpol-test/backend")
            .unwrap(),
    );
    for (i, row) in m0["allowed"].as_array().unwrap().iter().enumerate() {
        for (j, cell) in row.as_array().unwrap().iter().enumerate() {
            let now = &m1["allowed"][i][j];
            if (i, j) == (rogue_i, backend_i) {
                assert_eq!((cell, now), (&false.into(), &true.into()));
            } else {
                assert_eq!(cell, now, "{} -> {}", pods[i], pods[j]);
            }
        }
    }
    for (proto, port) in [("TCP", 81), ("TCP", 443), ("UDP", 80), ("SCTP", 80)] {
        assert_eq!(
            matrix(before, proto, port),
            matrix(after, proto, port),
            "{proto}/{port}"
        );
    }
}

const TWO_NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: data}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7d9f8b6c5d-x2x9k, namespace: shop, labels: {app: web, pod-template-hash: 7d9f8b6c5d}}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7d9f8b6c5d-qr5tz, namespace: shop, labels: {app: web, pod-template-hash: 7d9f8b6c5d}}
status: {podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: shop, labels: {app: admin}}
status: {podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: data
  labels: {app.kubernetes.io/name: db, statefulset.kubernetes.io/pod-name: db-0, controller-revision-hash: db-5d}
status: {podIPs: [{ip: 10.0.1.0}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-1
  namespace: data
  labels: {app.kubernetes.io/name: db, statefulset.kubernetes.io/pod-name: db-1, controller-revision-hash: db-5d}
status: {podIPs: [{ip: 10.0.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: data, labels: {app: cache}}
status: {podIPs: [{ip: 10.0.1.9}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: shop}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: data}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

#[test]
fn suggest_across_namespaces_writes_ingress_and_egress_policies_by_labels() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("cluster.yaml");
    std::fs::write(&manifests, TWO_NAMESPACES).unwrap();
    let m = manifests.to_str().unwrap();
    let web0 = pod("10.0.0.1", 40_000, "shop", "web-7d9f8b6c5d-x2x9k");
    let web1 = pod("10.0.0.2", 40_001, "shop", "web-7d9f8b6c5d-qr5tz");
    let db = |i: u8| pod(&format!("10.0.1.{i}"), 5432, "data", &format!("db-{i}"));
    let both = (&["shop/deny-egress"][..], &["data/default-deny"][..]);
    let mut recs = vec![
        deny(
            "2026-11-23T16:00:00.000Z",
            web0.clone(),
            db(0),
            both.0,
            both.1,
        ),
        deny(
            "2026-11-23T16:00:01.000Z",
            web1.clone(),
            db(1),
            both.0,
            both.1,
        ),
        deny(
            "2026-11-23T16:00:02.000Z",
            web0.clone(),
            db(1),
            both.0,
            both.1,
        ),
    ];
    let mut metrics = deny(
        "2026-11-23T16:00:03.000Z",
        web0.clone(),
        db(0),
        both.0,
        both.1,
    );
    metrics.dst.port = 9187;
    recs.push(metrics);
    // Denied only by egress: an external address gets no rule (never by IP).
    recs.push(deny(
        "2026-11-23T16:00:04.000Z",
        web1,
        ip("93.184.216.34", 443),
        both.0,
        &[],
    ));
    let log = dir.path().join("audit.log");
    write_log(&log, &lines(&recs));

    let o = netward(&["audit", log.to_str().unwrap(), "--suggest", "-f", m]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let yaml = stdout(&o);
    let err = stderr(&o);
    assert!(
        err.contains("suggested 2 policies for 5 distinct denied flows"),
        "{err}"
    );
    assert!(
        err.contains(
            "left out shop/web-7d9f8b6c5d-qr5tz -> 93.184.216.34 TCP/443: 1 denied (first at "
        ) && err.contains("audit.log:5): 93.184.216.34 is not a pod"),
        "{err}"
    );
    assert!(
        !yaml.contains("ipBlock") && !yaml.contains("10.0.") && !yaml.contains("93.184"),
        "{yaml}"
    );
    let docs: Vec<serde_yaml::Value> = yaml
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let ingress: serde_yaml::Value = serde_yaml::from_str(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: netward-suggest-db-ingress, namespace: data}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: db}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
    ports: [{protocol: TCP, port: 5432}, {protocol: TCP, port: 9187}]
",
    )
    .unwrap();
    let egress: serde_yaml::Value = serde_yaml::from_str(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: netward-suggest-web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app.kubernetes.io/name: db}}
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}
    ports: [{protocol: TCP, port: 5432}, {protocol: TCP, port: 9187}]
",
    )
    .unwrap();
    assert_eq!(docs, [ingress, egress], "{yaml}");

    let suggestion = dir.path().join("suggestion.yaml");
    std::fs::write(&suggestion, &yaml).unwrap();
    let before: &[&str] = &[m];
    let after: &[&str] = &[m, suggestion.to_str().unwrap()];
    for (from, to, port) in [
        ("shop/web-7d9f8b6c5d-x2x9k", "data/db-0", 5432),
        ("shop/web-7d9f8b6c5d-qr5tz", "data/db-1", 5432),
        ("shop/web-7d9f8b6c5d-x2x9k", "data/db-0", 9187),
        // The policy describes workloads: the other replica pairings are allowed too.
        ("shop/web-7d9f8b6c5d-qr5tz", "data/db-0", 5432),
    ] {
        assert_eq!(
            explain(before, from, to, port, "TCP"),
            1,
            "{from} -> {to}:{port} before"
        );
        assert_eq!(
            explain(after, from, to, port, "TCP"),
            0,
            "{from} -> {to}:{port} after"
        );
    }
    for (from, to, port, proto) in [
        ("shop/web-7d9f8b6c5d-x2x9k", "data/db-0", 5433, "TCP"),
        ("shop/web-7d9f8b6c5d-x2x9k", "data/db-0", 5432, "UDP"),
        ("shop/web-7d9f8b6c5d-x2x9k", "data/cache", 5432, "TCP"),
        ("shop/admin", "data/db-0", 5432, "TCP"),
        ("shop/web-7d9f8b6c5d-x2x9k", "93.184.216.34", 443, "TCP"),
        ("data/cache", "data/db-0", 5432, "TCP"),
    ] {
        assert_eq!(
            explain(after, from, to, port, proto),
            1,
            "{from} -> {to}:{port}/{proto} after"
        );
    }
    // Every port the records do not name is as it was.
    for port in [80, 443, 5433] {
        assert_eq!(
            matrix(before, "TCP", port),
            matrix(after, "TCP", port),
            "TCP/{port}"
        );
    }
}

#[test]
fn suggest_needs_every_pod_in_the_manifests_and_says_which_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let recs = [
        deny(
            "2026-11-23T16:00:00.000Z",
            rogue(1),
            backend(80),
            &[],
            &[BACKEND_POLICY],
        ),
        deny(
            "2026-11-23T16:00:01.000Z",
            pod("10.9.9.9", 2, "netpol-test", "ghost"),
            backend(80),
            &[],
            &[BACKEND_POLICY],
        ),
    ];
    write_log(&log, &lines(&recs));
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--suggest",
        "-f",
        "examples/rogue-pod",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "pod netpol-test/ghost (first seen at {}:2) is not in the manifests",
            log.display()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
    // Filtering it out is enough; and nothing denied means nothing to suggest.
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--pod",
        "rogue-pod",
        "--suggest",
        "-f",
        "examples/rogue-pod",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = netward(&[
        "audit",
        log.to_str().unwrap(),
        "--port",
        "1",
        "--suggest",
        "-f",
        "examples/rogue-pod",
    ]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""));
    assert!(stderr(&o).contains("nothing to suggest"));
}

// ---- a million lines -----------------------------------------------------------------

/// Peak resident memory of the children this process has waited for, in KiB.
fn children_max_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
}

#[test]
fn top_streams_a_million_lines_in_bounded_memory() {
    // Release builds (CI) read a million lines (~450 MB); debug builds a tenth of that.
    let n: usize = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let started = Instant::now();
    // 40 source workloads x 3 replicas, 10 destination workloads (StatefulSets), 3 ports.
    let mut want: std::collections::HashMap<(usize, usize, u16), u64> = Default::default();
    {
        let mut w =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&log).unwrap());
        let replicas = ["x2x9k", "qr5tz", "zz2xq"];
        let mut r = deny(
            "2026-11-23T16:00:00.000Z",
            web_pod(0, 0),
            backend(80),
            &[],
            &[],
        );
        for i in 0..n {
            if i % 100_000 == 99_999 {
                writeln!(w, "garbage line {i}").unwrap();
                continue;
            }
            let (s, d, port) = (i % 40, (i / 40) % 10, [80, 443, 5432][i % 3]);
            let count = 1 + (i % 5) as u64;
            r.time = format!(
                "2026-11-23T{:02}:{:02}:{:02}.{:03}Z",
                10 + i / 3_600_000 % 10,
                i / 60_000 % 60,
                i / 1000 % 60,
                i % 1000
            );
            r.src = pod(
                &format!("10.1.{s}.{}", i % 3),
                30_000 + (i % 30_000) as u16,
                "shop",
                &format!("svc{s}-7d9f8b6c5d-{}", replicas[i % 3]),
            );
            r.dst = pod(
                &format!("10.2.{d}.{}", i % 2),
                port,
                "data",
                &format!("db{d}-{}", i % 2),
            );
            r.ingress = side("denied", &r.dst);
            r.ingress.isolated_by = vec![format!("data/deny-{d}")];
            r.count = count;
            serde_json::to_writer(&mut w, &r).unwrap();
            w.write_all(b"\n").unwrap();
            *want.entry((s, d, port)).or_default() += count;
        }
        w.flush().unwrap();
    }
    let size = std::fs::metadata(&log).unwrap().len();
    let generated = started.elapsed();

    let started = Instant::now();
    let o = netward(&["audit", log.to_str().unwrap(), "--top", "5", "-o", "json"]);
    let took = started.elapsed();
    let rss_kib = children_max_rss_kib();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let skipped = n / 100_000;
    // One in debug builds: the message says "1 line".
    let lines = if skipped == 1 { "line" } else { "lines" };
    assert!(
        stderr(&o).contains(&format!(
            "netward: {skipped} {lines} skipped (not audit records)"
        )),
        "{}",
        stderr(&o)
    );
    let mut want: Vec<((usize, usize, u16), u64)> = want.into_iter().collect();
    want.sort_by(|a, b| {
        b.1.cmp(&a.1).then_with(|| {
            let key = |((s, d, p), _): &((usize, usize, u16), u64)| {
                (format!("shop/svc{s}"), format!("data/db{d}"), *p)
            };
            key(a).cmp(&key(b))
        })
    });
    let got: Vec<(String, String, u64, u64)> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["src"].as_str().unwrap().to_owned(),
                v["dst"].as_str().unwrap().to_owned(),
                v["port"].as_u64().unwrap(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, u64)> = want[..5]
        .iter()
        .map(|((s, d, p), c)| {
            (
                format!("shop/svc{s}"),
                format!("data/db{d}"),
                u64::from(*p),
                *c,
            )
        })
        .collect();
    assert_eq!(got, expected);
    eprintln!(
        "audit --top 5: {n} lines, {:.0} MB (generated in {:.1?}): {took:.2?}, peak RSS {:.1} MiB",
        size as f64 / 1e6,
        generated,
        rss_kib as f64 / 1024.0
    );
    if !cfg!(debug_assertions) {
        assert!(size > 400_000_000, "{size}");
    }
    // getrusage(RUSAGE_CHILDREN) gives the largest child this test binary waited for:
    // an upper bound on this one's.
    assert!(
        rss_kib < 64 * 1024,
        "peak RSS {rss_kib} KiB for a {size}-byte log"
    );
}

fn web_pod(s: usize, r: usize) -> Peer {
    pod(
        &format!("10.1.{s}.{r}"),
        30_000,
        "shop",
        &format!("svc{s}-7d9f8b6c5d-x2x9k"),
    )
}
