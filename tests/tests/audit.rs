//! The audit log, the metrics and the review command on real traffic (issue #5).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netward_e2e::{Lab, PROBE, example, root};
use netward_proxy::lab::probe::Outcome;

/// GETs a path from the admin server inside the node's namespace (`/debug/*` from the
/// loopback-only debug listener, `--debug-addr 127.0.0.1:15022`).
fn admin_get(lab: &Lab, path: &'static str) -> (u16, String) {
    let port = if path.starts_with("/debug/") {
        15022
    } else {
        15021
    };
    netward_e2e::admin_get(lab.node(), port, path).expect("the admin server answers")
}

/// The audit records in a file (JSON lines), parsed.
fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Sum of a metric's samples whose labels contain all `want` pairs, parsed with a
/// Prometheus text-format parser (not by eye).
fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .expect("the metrics text parses as Prometheus exposition");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn rogue_pod_lab() -> Lab {
    let docs = example("rogue-pod");
    let refs: Vec<(&str, &str)> = docs.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let lab = Lab::single_node(&refs);
    // The Service, as kube-proxy would write it.
    let routes = netward_proxy::lab::services::routes(&lab.cluster);
    netward_proxy::lab::services::install(lab.node(), &routes).unwrap();
    lab
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn rogue_pod_audit_records_metrics_and_review() {
    if !root() {
        return;
    }
    let lab = rogue_pod_lab();
    let log = lab.dir.path().join("audit.log");
    let mut nw = lab.start_netward(
        0,
        &[
            "--debug-addr",
            "127.0.0.1:15022",
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-deny-window-secs",
            "1",
        ],
    );
    // Allowed, through the Service: one close record naming the Service and the rule.
    let (o, _) = lab.http_get("netpol-test/frontend", "198.19.0.10", 80, false, PROBE);
    assert_eq!(o, Outcome::Ok, "{}", nw.log());
    // Denied: the client retransmits its SYN (a 3.5 s connect: SYNs at 0, 1 and 3 s).
    let (o, _) = lab.connect(
        "netpol-test/rogue-pod",
        "netpol-test/backend",
        80,
        false,
        Duration::from_millis(3500),
    );
    assert_eq!(o, Outcome::Timeout);
    assert!(
        wait_until(Duration::from_secs(5), || records(&log).len() >= 2),
        "{}",
        nw.log()
    );
    let recs = records(&log);
    let close: Vec<_> = recs.iter().filter(|r| r["event"] == "close").collect();
    assert_eq!(close.len(), 1, "{recs:#?}");
    let c = close[0];
    assert_eq!(c["v"], 1);
    assert_eq!(c["verdict"], "allow");
    assert_eq!(c["direction"], "both");
    assert_eq!(c["src"]["pod"], "frontend");
    assert_eq!(c["dst"]["pod"], "backend");
    assert_eq!(c["service"]["name"], "netpol-test/backend-svc");
    assert_eq!(c["service"]["ip"], "198.19.0.10");
    assert_eq!(
        c["ingress"]["allowed_by"]["policy"],
        "netpol-test/backend-access-policy"
    );
    assert_eq!(c["ingress"]["allowed_by"]["rule"], 0);
    assert!(
        c["bytes"]["to_server"].as_u64().unwrap() > 0
            && c["bytes"]["to_client"].as_u64().unwrap() > 0,
        "{c}"
    );
    assert!(c["close"] == "fin" && c["closed_by"].is_string(), "{c}");
    let deny: Vec<_> = recs.iter().filter(|r| r["event"] == "deny").collect();
    assert_eq!(
        deny.len(),
        1,
        "one record however many SYN retries: {recs:#?}"
    );
    let d = deny[0];
    assert_eq!(
        (d["verdict"].as_str(), d["count"].as_u64()),
        (Some("deny"), Some(1))
    );
    assert_eq!(d["src"]["pod"], "rogue-pod");
    assert_eq!(d["ingress"]["result"], "denied");
    assert_eq!(
        d["ingress"]["isolated_by"][0],
        "netpol-test/backend-access-policy"
    );

    // /metrics parses as Prometheus text and shows the same denial count as the log.
    let (status, metrics) = admin_get(&lab, "/metrics");
    assert_eq!(status, 200);
    let denied_metric = metric_sum(
        &metrics,
        "netward_connections_total",
        &[
            ("verdict", "deny"),
            ("policy", "netpol-test/backend-access-policy"),
        ],
    );
    let denied_log: u64 = deny.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(denied_metric, denied_log as f64, "{metrics}");
    assert!(
        metric_sum(&metrics, "netward_verdict_retransmissions_total", &[]) >= 1.0,
        "the SYN retries were seen and not counted again:\n{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "netward_connections_total",
            &[("verdict", "allow")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "netward_ready", &[]), 1.0);
    assert_eq!(admin_get(&lab, "/healthz").0, 200);
    assert_eq!(admin_get(&lab, "/readyz").0, 200);
    let (_, dump) = admin_get(&lab, "/debug/snapshot");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["policies"][0]["policy"],
        "netpol-test/backend-access-policy"
    );

    // Review: the top denied flows name the rogue pod, the backend, port 80 and the policy.
    let bin = netward_e2e::netward_bin();
    let out = std::process::Command::new(&bin)
        .args([
            "audit",
            log.to_str().unwrap(),
            "--verdict",
            "deny",
            "--top",
            "5",
        ])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{top}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "rogue-pod",
        "backend",
        "80",
        "netpol-test/backend-access-policy",
    ] {
        assert!(top.contains(needle), "--top lacks {needle}:\n{top}");
    }
    // --suggest: a policy that, once applied, lets exactly that flow through.
    let out = std::process::Command::new(&bin)
        .args([
            "audit",
            log.to_str().unwrap(),
            "--verdict",
            "deny",
            "--suggest",
            "-f",
            lab.dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let suggestion = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && suggestion.contains("kind: NetworkPolicy"),
        "{suggestion}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = nw.count("policy reloaded");
    std::fs::write(lab.dir.path().join("50-suggested.yaml"), &suggestion).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || nw.count("policy reloaded")
            > before),
        "{}",
        nw.log()
    );
    assert_eq!(
        lab.http_get(
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            80,
            false,
            PROBE
        )
        .0,
        Outcome::Ok,
        "{suggestion}"
    );
    // ...and nothing more: another port of the backend stays closed to the rogue pod.
    assert_eq!(
        lab.connect(
            "netpol-test/rogue-pod",
            "netpol-test/backend",
            81,
            false,
            PROBE
        )
        .0,
        Outcome::Timeout
    );
    nw.stop();
}

/// 20,000 denied connection attempts from one pod within a few seconds: allowed traffic
/// stays responsive, the audit output stays bounded, and the counts in the records plus
/// the dropped counter add up to the attempts sent.
#[test]
fn denied_syn_flood_is_aggregated_and_accounted() {
    if !root() {
        return;
    }
    let lab = rogue_pod_lab();
    let log = lab.dir.path().join("audit.log");
    let nw = lab.start_netward(
        0,
        &[
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-deny-window-secs",
            "2",
        ],
    );
    const ATTEMPTS: u16 = 20_000;
    let dst = SocketAddr::new(lab.ip("netpol-test/backend", false), 80);
    let flood = lab
        .pod("netpol-test/rogue-pod")
        .spawn(move || {
            let start = Instant::now();
            for i in 0..ATTEMPTS {
                // A distinct source port for each attempt: 20,000 distinct 5-tuples.
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_reuse_address(true).unwrap();
                s.bind(&SocketAddr::from(([0, 0, 0, 0], 30_000 + i)).into())
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&dst.into());
                // Closing a SYN_SENT socket sends nothing more: one SYN per attempt.
            }
            start.elapsed()
        })
        .unwrap();
    // Allowed traffic during the flood.
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let (o, _) = lab.http_get(
            "netpol-test/frontend",
            "netpol-test/backend",
            80,
            false,
            Duration::from_secs(3),
        );
        assert_eq!(o, Outcome::Ok, "allowed traffic failed during the flood");
        worst = worst.max(t.elapsed());
    }
    let took = flood.join().unwrap().unwrap();
    eprintln!(
        "20,000 denied attempts sent in {took:?}; slowest allowed request during the flood: {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "allowed traffic was slowed to {worst:?}"
    );
    // Wait for the aggregation window to close.
    let sum = |recs: &[serde_json::Value]| -> u64 {
        recs.iter()
            .filter(|r| r["event"] == "deny")
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    };
    let (_, metrics) = admin_get(&lab, "/metrics");
    let mut dropped = metric_sum(&metrics, "netward_audit_records_dropped_total", &[]) as u64;
    // Packets the kernel dropped before netward could decide them (queue full, or the
    // netlink socket full): denied all the same (fail closed), and counted.
    let kernel_dropped = (metric_sum(&metrics, "netward_verdict_kernel_queue_dropped_total", &[])
        + metric_sum(&metrics, "netward_verdict_kernel_user_dropped_total", &[]))
        as u64;
    wait_until(Duration::from_secs(10), || {
        let (_, m) = admin_get(&lab, "/metrics");
        dropped = metric_sum(&m, "netward_audit_records_dropped_total", &[]) as u64;
        sum(&records(&log)) + dropped + kernel_dropped >= u64::from(ATTEMPTS)
    });
    let recs = records(&log);
    let deny_records = recs.iter().filter(|r| r["event"] == "deny").count();
    assert!(
        deny_records <= 20,
        "the audit output is not bounded: {deny_records} deny records"
    );
    assert_eq!(
        sum(&recs) + dropped + kernel_dropped,
        u64::from(ATTEMPTS),
        "records' counts ({}) + dropped ({dropped}) + kernel queue drops ({kernel_dropped}) != attempts",
        sum(&recs)
    );
    let (_, metrics) = admin_get(&lab, "/metrics");
    let counted = metric_sum(
        &metrics,
        "netward_connections_total",
        &[("verdict", "deny")],
    ) as u64;
    assert_eq!(counted + kernel_dropped, u64::from(ATTEMPTS), "{metrics}");
    eprintln!(
        "{deny_records} deny records; counts {}; audit dropped {dropped}; kernel queue drops {kernel_dropped}",
        sum(&recs)
    );
    drop(nw);
}

#[test]
fn rotation_never_loses_a_line() {
    if !root() {
        return;
    }
    let lab = rogue_pod_lab();
    let log = lab.dir.path().join("audit.log");
    // Tiny files: every few records rotate.
    let mut nw = lab.start_netward(
        0,
        &[
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-max-bytes",
            "4000",
            "--audit-keep",
            "1000",
        ],
    );
    const N: usize = 200;
    let dst = SocketAddr::new(lab.ip("netpol-test/backend", false), 80);
    lab.pod("netpol-test/frontend")
        .run(move || {
            for _ in 0..N {
                let mut s = TcpStream::connect_timeout(&dst, PROBE).unwrap();
                s.write_all(b"x").unwrap();
                let mut b = [0; 1];
                s.read_exact(&mut b).unwrap();
            }
        })
        .unwrap();
    let all = || -> Vec<serde_json::Value> {
        let mut v = records(&log);
        for i in 1..1000 {
            let p = std::path::PathBuf::from(format!("{}.{i}", log.display()));
            if !p.exists() {
                break;
            }
            v.extend(records(&p));
        }
        v
    };
    assert!(wait_until(Duration::from_secs(10), || all()
        .iter()
        .filter(|r| r["event"] == "close")
        .count()
        >= N));
    // Count once the writer has stopped: reading while it renames files can miss one.
    nw.stop();
    let recs = all();
    assert_eq!(
        recs.iter().filter(|r| r["event"] == "close").count(),
        N,
        "lines lost or duplicated across rotation"
    );
    assert!(
        std::path::PathBuf::from(format!("{}.2", log.display())).exists(),
        "no rotation happened"
    );
    for i in 1..1000 {
        let p = std::path::PathBuf::from(format!("{}.{i}", log.display()));
        if !p.exists() {
            break;
        }
        assert!(
            std::fs::metadata(&p).unwrap().len() <= 4000,
            "{} is over the limit",
            p.display()
        );
    }
    drop(nw);
}

/// A flow a ClusterNetworkPolicy denies (issue #18): the audit record names the tier, the
/// policy and the rule; the metrics label it; `netward audit --top` and `--policy` group
/// and select by it.
#[test]
fn cluster_policy_denials_are_audited_labelled_and_reviewed() {
    if !root() {
        return;
    }
    let docs = example("cluster-guardrails");
    let refs: Vec<(&str, &str)> = docs.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let lab = Lab::single_node(&refs);
    let log = lab.dir.path().join("audit.log");
    let mut nw = lab.start_netward(
        0,
        &[
            "--debug-addr",
            "127.0.0.1:15022",
            "--audit-log",
            log.to_str().unwrap(),
            "--audit-deny-window-secs",
            "1",
        ],
    );
    // The Baseline default deny: worker -> web (no NetworkPolicy selects web for ingress).
    let (o, _) = lab.connect(
        "apps/worker",
        "apps/web",
        80,
        false,
        Duration::from_millis(1500),
    );
    assert_eq!(o, Outcome::Timeout, "{}", nw.log());
    // The shop's NetworkPolicy overrides it: frontend -> api.
    let (o, _) = lab.http_get("shop/frontend", "198.18.1.61", 80, false, PROBE);
    assert_eq!(o, Outcome::Ok, "{}", nw.log());
    assert!(
        wait_until(Duration::from_secs(5), || {
            records(&log).iter().any(|r| r["event"] == "deny")
                && records(&log).iter().any(|r| r["event"] == "close")
        }),
        "{}",
        nw.log()
    );
    let recs = records(&log);
    let d = recs
        .iter()
        .find(|r| r["event"] == "deny")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(d["v"], 1);
    assert_eq!(d["ingress"]["result"], "denied");
    assert_eq!(
        d["ingress"]["cluster_policy"],
        serde_json::json!({"tier": "Baseline", "policy": "default-deny-ingress", "priority": 100,
            "rule": 0, "rule_name": "deny-from-every-pod", "action": "Deny"}),
        "{d}"
    );
    let c = recs.iter().find(|r| r["event"] == "close").unwrap();
    assert_eq!(
        c["ingress"]["allowed_by"]["policy"],
        "shop/api-from-frontend"
    );
    assert!(c["ingress"].get("cluster_policy").is_none(), "{c}");

    let (status, metrics) = admin_get(&lab, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metric_sum(
            &metrics,
            "netward_connections_total",
            &[
                ("verdict", "deny"),
                ("policy", "ClusterNetworkPolicy/default-deny-ingress"),
            ],
        ) >= 1.0,
        "{metrics}"
    );

    let (_, dump) = admin_get(&lab, "/debug/snapshot");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = dump["cluster_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["block-metadata", "default-deny-ingress"], "{dump}");
    assert_eq!(dump["cluster_policies"][1]["tier"], "Baseline");

    let bin = netward_e2e::netward_bin();
    let out = std::process::Command::new(&bin)
        .args([
            "audit",
            log.to_str().unwrap(),
            "--verdict",
            "deny",
            "--top",
            "5",
        ])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{top}");
    assert!(
        top.contains("ClusterNetworkPolicy/default-deny-ingress[0] (Baseline)"),
        "{top}"
    );
    let out = std::process::Command::new(&bin)
        .args([
            "audit",
            log.to_str().unwrap(),
            "--policy",
            "ClusterNetworkPolicy/default-deny-ingress",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("apps/worker") || listed.contains("worker"),
        "{listed}"
    );
    assert!(
        !listed.contains("frontend"),
        "only the denied flow: {listed}"
    );
    assert!(nw.stop(), "{}", nw.log());
}
