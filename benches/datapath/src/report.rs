//! The results: a Markdown table (each figure as the median of the rounds with its
//! min–max, and as a ratio to direct), the goals, the machine, and the same as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::paths::PathKind;
use crate::stats::Summary;
use crate::{Metrics, Sizes};

/// The machine the run was taken on.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    kernel: String,
    os: String,
    cpu: String,
    cores: usize,
    mem_gib: f64,
    load_start: String,
    load_end: String,
    haproxy: String,
    iperf3: String,
    commit: String,
    dirty: bool,
    date: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// Reads the kernel, CPU, memory, load, tool versions and the workspace's commit.
    pub(crate) fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ws = workspace.to_string_lossy().into_owned();
        let commit = first_line("git", &["-C", &ws, "rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args(["-C", &ws, "status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            os: std::fs::read_to_string("/etc/os-release")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
                .unwrap_or_default(),
            cpu: format!(
                "{} ({} MHz, {} cache)",
                field("model name"),
                field("cpu MHz"),
                field("cache size")
            ),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            mem_gib: crate::procfs::meminfo_bytes("MemTotal").unwrap_or(0) as f64
                / (1u64 << 30) as f64,
            load_start: loadavg(),
            load_end: String::new(),
            haproxy: first_line("haproxy", &["-v"]),
            iperf3: first_line("iperf3", &["--version"]),
            commit: if commit.is_empty() {
                "nogit".to_owned()
            } else {
                commit
            },
            dirty,
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }

    /// One line for the progress log.
    pub(crate) fn summary(&self) -> String {
        format!(
            "kernel {}, {} × {}, load {}",
            self.kernel, self.cores, self.cpu, self.load_start
        )
    }
}

/// How a figure is shown.
struct Figure {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    decimals: usize,
    /// Only proxies have it (their own process's CPU or memory): no ratio to direct.
    proxy_only: bool,
}

const fn fig(
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    decimals: usize,
    proxy_only: bool,
) -> Figure {
    Figure {
        id,
        label,
        unit,
        decimals,
        proxy_only,
    }
}

const FIGURES: &[Figure] = &[
    fig("bulk1_gbps", "bulk, 1 stream (iperf3)", "Gbit/s", 2, false),
    fig(
        "bulk8_gbps",
        "bulk, 8 streams (iperf3 -P 8)",
        "Gbit/s",
        2,
        false,
    ),
    fig(
        "conn_rate",
        "connection rate (16 B request + response + close)",
        "conn/s",
        0,
        false,
    ),
    fig("pp_p50", "persistent conn, 1-byte RTT p50", "µs", 1, false),
    fig("pp_p99", "persistent conn, 1-byte RTT p99", "µs", 1, false),
    fig(
        "pp_p999",
        "persistent conn, 1-byte RTT p99.9",
        "µs",
        1,
        false,
    ),
    fig(
        "new_p50",
        "new conn (connect + 1-byte RTT) p50",
        "µs",
        0,
        false,
    ),
    fig(
        "new_p99",
        "new conn (connect + 1-byte RTT) p99",
        "µs",
        0,
        false,
    ),
    fig(
        "new_p999",
        "new conn (connect + 1-byte RTT) p99.9",
        "µs",
        0,
        false,
    ),
    fig(
        "bulk1_cpu_s_per_gb",
        "proxy CPU per GB relayed, 1 stream",
        "s/GB",
        3,
        true,
    ),
    fig(
        "bulk8_cpu_s_per_gb",
        "proxy CPU per GB relayed, 8 streams",
        "s/GB",
        3,
        true,
    ),
    fig(
        "conn_cpu_s_per_1k",
        "proxy CPU per 1,000 connections",
        "s",
        3,
        true,
    ),
    fig(
        "conn_upstreams_per_conn",
        "server accepts per client connection (upstreams opened)",
        "×",
        3,
        false,
    ),
    fig(
        "idle_rss_per_conn",
        "proxy RSS per idle connection",
        "B",
        0,
        true,
    ),
    fig(
        "idle_anon_per_conn",
        "proxy anonymous RSS per idle connection",
        "B",
        0,
        true,
    ),
    fig(
        "idle_fds_per_conn",
        "proxy fds per idle connection",
        "",
        2,
        true,
    ),
    fig("idle_pipes_per_conn", "of which pipe ends", "", 2, true),
    fig(
        "idle_skmem_per_conn",
        "socket buffer memory per idle conn (`ss -m`, node ns)",
        "B",
        0,
        true,
    ),
    fig(
        "idle_slab_per_conn",
        "kernel slab per idle conn (whole machine, incl. client+server)",
        "B",
        0,
        false,
    ),
    fig("startup_s", "proxy start to ready", "s", 2, true),
];

/// Everything a run produced.
pub(crate) struct Report {
    machine: Machine,
    sizes: Sizes,
    rounds: usize,
    kinds: Vec<PathKind>,
    /// `(figure id, path) → summary over rounds`.
    summaries: BTreeMap<(&'static str, PathKind), Summary>,
    /// Per-round values, for JSON and paired differences.
    per_round: BTreeMap<(&'static str, PathKind), Vec<(usize, f64)>>,
    failures: Vec<(PathKind, usize, String)>,
    elapsed: Duration,
}

fn key_order(k: PathKind) -> usize {
    PathKind::ALL
        .iter()
        .position(|p| *p == k)
        .unwrap_or(usize::MAX)
}

impl PartialOrd for PathKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PathKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        key_order(*self).cmp(&key_order(*other))
    }
}

impl Report {
    /// Summarizes the rounds.
    pub(crate) fn new(
        mut machine: Machine,
        sizes: &Sizes,
        rounds: usize,
        kinds: &[PathKind],
        results: &[(PathKind, usize, Result<Metrics, String>)],
        elapsed: Duration,
    ) -> Report {
        machine.load_end = loadavg();
        let mut per_round: BTreeMap<(&'static str, PathKind), Vec<(usize, f64)>> = BTreeMap::new();
        let mut failures = Vec::new();
        for (kind, round, r) in results {
            match r {
                Ok(m) => {
                    for (id, v) in m {
                        per_round.entry((id, *kind)).or_default().push((*round, *v));
                    }
                }
                Err(e) => failures.push((*kind, *round, e.clone())),
            }
        }
        let summaries = per_round
            .iter()
            .filter_map(|(k, v)| {
                let vals: Vec<f64> = v.iter().map(|(_, x)| *x).collect();
                Summary::of(&vals).map(|s| (*k, s))
            })
            .collect();
        Report {
            machine,
            sizes: *sizes,
            rounds,
            kinds: kinds.to_vec(),
            summaries,
            per_round,
            failures,
            elapsed,
        }
    }

    /// `YYYY-MM-DD` of the run.
    pub(crate) fn date_stem(&self) -> String {
        self.machine
            .date
            .split_whitespace()
            .next()
            .unwrap_or("undated")
            .to_owned()
    }

    /// The workspace commit, short.
    pub(crate) fn commit_short(&self) -> &str {
        &self.machine.commit
    }

    fn median(&self, id: &'static str, k: PathKind) -> Option<f64> {
        self.summaries.get(&(id, k)).map(|s| s.median)
    }

    /// Median over rounds of `a - b` (same round), with its min and max.
    fn paired_diff(&self, id: &'static str, a: PathKind, b: PathKind) -> Option<Summary> {
        let av = self.per_round.get(&(id, a))?;
        let bv: BTreeMap<usize, f64> = self.per_round.get(&(id, b))?.iter().copied().collect();
        let diffs: Vec<f64> = av
            .iter()
            .filter_map(|(r, x)| bv.get(r).map(|y| x - y))
            .collect();
        Summary::of(&diffs)
    }

    /// Median over rounds of `a / b` (same round).
    fn paired_ratio(&self, id: &'static str, a: PathKind, b: PathKind) -> Option<Summary> {
        let av = self.per_round.get(&(id, a))?;
        let bv: BTreeMap<usize, f64> = self.per_round.get(&(id, b))?.iter().copied().collect();
        let r: Vec<f64> = av
            .iter()
            .filter_map(|(r, x)| bv.get(r).filter(|y| **y != 0.0).map(|y| x / y))
            .collect();
        Summary::of(&r)
    }

    fn cell(&self, f: &Figure, k: PathKind) -> String {
        let Some(s) = self.summaries.get(&(f.id, k)) else {
            return "—".to_owned();
        };
        let d = f.decimals;
        let mut c = format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max);
        if !f.proxy_only
            && k != k.reference()
            && let Some(base) = self.median(f.id, k.reference())
            && base != 0.0
        {
            let _ = write!(c, " **{:.2}×**", s.median / base);
        }
        c
    }

    fn goals(&self) -> Vec<(String, String, bool)> {
        let mut g = self.single_node_goals();
        g.extend(self.two_node_goals());
        g
    }

    /// The mTLS tunnel's goals (issue #9): throughput ≥ 60 % of plaintext netward and
    /// ahead of the TLS peer; added latency on a warm pool ≤ one round trip of direct-2n.
    fn two_node_goals(&self) -> Vec<(String, String, bool)> {
        use PathKind::{Direct2n, Haproxy2nTls, Netward2nMtls, Netward2nPlaintext};
        let mut g = Vec::new();
        let range = |s: &Summary| format!("{:.2}× ({:.2}–{:.2})", s.median, s.min, s.max);
        for (id, what) in [("bulk1_gbps", "1 stream"), ("bulk8_gbps", "8 streams")] {
            if let Some(r) = self.paired_ratio(id, Netward2nMtls, Netward2nPlaintext) {
                g.push((
                    format!("mTLS bulk {what} ≥ 0.60× plaintext netward (2 nodes)"),
                    range(&r),
                    r.median >= 0.6,
                ));
            }
        }
        for (id, what, higher) in [
            ("bulk1_gbps", "bulk 1 stream", true),
            ("bulk8_gbps", "bulk 8 streams", true),
            ("conn_rate", "connection rate", true),
            ("pp_p99", "persistent 1-byte RTT p99", false),
        ] {
            if let Some(r) = self.paired_ratio(id, Netward2nMtls, Haproxy2nTls) {
                g.push((
                    format!("mTLS ahead of HAProxy TLS 1.3 (both ends): {what}"),
                    format!(
                        "{} HAProxy ({})",
                        range(&r),
                        if higher {
                            "higher is better"
                        } else {
                            "lower is better"
                        }
                    ),
                    if higher {
                        r.median > 1.0
                    } else {
                        r.median < 1.0
                    },
                ));
            }
        }
        let rtt = self.summaries.get(&("pp_p50", Direct2n)).map(|s| s.median);
        for (id, what) in [
            ("pp_p50", "persistent 1-byte RTT p50"),
            ("pp_p99", "persistent 1-byte RTT p99"),
            ("new_p50", "new connection + 1-byte RTT p50 (warm pool)"),
        ] {
            if let (Some(d), Some(rtt)) =
                (self.paired_diff(id, Netward2nMtls, Netward2nPlaintext), rtt)
            {
                g.push((
                    format!("tunnel's added latency ≤ one round trip: {what}"),
                    format!(
                        "{:+.1} µs ({:+.1}…{:+.1}) over plaintext netward; direct-2n RTT p50 {rtt:.1} µs",
                        d.median, d.min, d.max
                    ),
                    d.median <= rtt,
                ));
            }
        }
        g
    }

    /// Paired ratios of the mTLS path to plaintext netward and to the TLS peer, per
    /// figure (two-node runs).
    fn two_node_ratios(&self) -> String {
        use PathKind::{Haproxy2nTls, Netward2nMtls, Netward2nPlaintext};
        let mut s = String::new();
        let ids = [
            "bulk1_gbps",
            "bulk8_gbps",
            "conn_rate",
            "pp_p50",
            "pp_p99",
            "new_p50",
            "new_p99",
            "bulk1_cpu_s_per_gb",
            "bulk8_cpu_s_per_gb",
            "conn_cpu_s_per_1k",
        ];
        for id in ids {
            let Some(f) = FIGURES.iter().find(|f| f.id == id) else {
                continue;
            };
            let cell = |b: PathKind| {
                self.paired_ratio(id, Netward2nMtls, b)
                    .map_or("—".to_owned(), |r| {
                        format!("**{:.2}×** ({:.2}–{:.2})", r.median, r.min, r.max)
                    })
            };
            let (p, h) = (cell(Netward2nPlaintext), cell(Haproxy2nTls));
            if p == "—" && h == "—" {
                continue;
            }
            let _ = writeln!(s, "| {} | {} | {p} | {h} |", f.label, f.unit);
        }
        if s.is_empty() {
            return s;
        }
        format!(
            "\n| figure | unit | netward-2n-mtls / netward-2n-plaintext | netward-2n-mtls / haproxy-2n-tls |\n|---|---|---|---|\n{s}"
        )
    }

    /// Paired ratios of `netward` to `netward-before` per figure: a change's before and
    /// after, interleaved in one run.
    fn before_after(&self) -> String {
        use PathKind::{Netward, NetwardBefore};
        let mut s = String::new();
        for f in FIGURES {
            if let Some(r) = self.paired_ratio(f.id, Netward, NetwardBefore) {
                let _ = writeln!(
                    s,
                    "| {} | {} | **{:.2}×** ({:.2}–{:.2}) |",
                    f.label, f.unit, r.median, r.min, r.max,
                );
            }
        }
        if s.is_empty() {
            return s;
        }
        format!("\n| figure | unit | netward / netward-before |\n|---|---|---|\n{s}")
    }

    fn single_node_goals(&self) -> Vec<(String, String, bool)> {
        use PathKind::{Direct, Haproxy, Netward, NetwardScale};
        let mut g = Vec::new();
        let pct = |s: &Summary| {
            format!(
                "{:.0} % ({:.0}–{:.0} %)",
                s.median * 100.0,
                s.min * 100.0,
                s.max * 100.0
            )
        };
        for (id, what) in [("bulk1_gbps", "1 stream"), ("bulk8_gbps", "8 streams")] {
            if let (Some(r), Some(h)) = (
                self.paired_ratio(id, Netward, Direct),
                self.paired_ratio(id, Netward, Haproxy),
            ) {
                g.push((
                    format!("bulk {what} ≥ 90 % of direct and above HAProxy"),
                    format!("{} of direct; {:.2}× HAProxy", pct(&r), h.median),
                    r.median >= 0.9 && h.median > 1.0,
                ));
            }
        }
        if let Some(h) = self.paired_ratio("conn_rate", Netward, Haproxy) {
            g.push((
                "connection rate ≥ HAProxy's".to_owned(),
                format!("{:.2}× HAProxy ({:.2}–{:.2})", h.median, h.min, h.max),
                h.median >= 1.0,
            ));
        }
        // Issue #16's goals.
        if let (Some(d), Some(h)) = (
            self.paired_ratio("conn_rate", Netward, Direct),
            self.paired_ratio("conn_rate", Netward, Haproxy),
        ) {
            g.push((
                "#16: connections/s ≥ 0.5× direct and ≥ 2× HAProxy".to_owned(),
                format!(
                    "{:.2}× direct ({:.2}–{:.2}); {:.2}× HAProxy ({:.2}–{:.2})",
                    d.median, d.min, d.max, h.median, h.min, h.max
                ),
                d.median >= 0.5 && h.median >= 2.0,
            ));
        }
        if let Some(r) = self.paired_ratio("bulk1_gbps", Netward, Direct) {
            g.push((
                "#16: one-stream bulk ≥ 0.85× direct".to_owned(),
                format!("{:.2}× ({:.2}–{:.2})", r.median, r.min, r.max),
                r.median >= 0.85,
            ));
        }
        if let Some(d) = self.paired_diff("new_p50", Netward, Direct) {
            g.push((
                "#16: added new-connection p50 ≤ 60 µs".to_owned(),
                format!("+{:.0} µs ({:.0}–{:.0})", d.median, d.min, d.max),
                d.median <= 60.0,
            ));
        }
        if let Some(d) = self.paired_diff("pp_p99", Netward, Direct) {
            g.push((
                "added p99, persistent connection ≤ 20 µs over direct".to_owned(),
                format!("+{:.1} µs ({:.1}–{:.1})", d.median, d.min, d.max),
                d.median <= 20.0,
            ));
        }
        if let Some(s) = self.summaries.get(&("idle_rss_per_conn", Netward)) {
            g.push((
                "userspace memory per idle connection < 1 KiB".to_owned(),
                format!("{:.0} B ({:.0}–{:.0})", s.median, s.min, s.max),
                s.median < 1024.0,
            ));
        }
        if let (Some(c), Some(n)) = (
            self.paired_ratio("conn_rate", NetwardScale, Netward),
            self.paired_diff("new_p50", NetwardScale, Netward),
        ) {
            g.push((
                "verdict cost flat at 10k pods / 1k policies".to_owned(),
                format!(
                    "conn rate {:.2}× ({:.2}–{:.2}) of netward with 2 pods; new-conn p50 {:+.0} µs ({:+.0}–{:+.0})",
                    c.median, c.min, c.max, n.median, n.min, n.max
                ),
                c.median >= 0.9 && n.median <= 20.0,
            ));
        }
        g
    }

    /// The Markdown report.
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# Datapath benchmark, {}\n", m.date);
        let _ = writeln!(
            s,
            "Commit `{}`{}; kernel `{}` ({}); {} cores of {}; {:.0} GiB RAM; {}; {}. \
             Load average (1/5/15 min) {} at the start, {} at the end. {} rounds, paths interleaved \
             ({}; the paths after the reference reversed in odd rounds), {:.0} s in all.\n",
            m.commit,
            if m.dirty {
                " + uncommitted changes"
            } else {
                ""
            },
            m.kernel,
            m.os,
            m.cores,
            m.cpu,
            m.mem_gib,
            m.haproxy,
            m.iperf3,
            m.load_start,
            m.load_end,
            self.rounds,
            self.kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(" → "),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "Each cell: median of the rounds (min–max), and **the ratio of the median to direct** \
             (`direct-2n` for the two-node paths; proxy CPU there is both nodes' proxies). \
             Sizes: bulk {}, connection rate {} connections {} at a time, {} round trips per \
             persistent run (after {} warm-up), {} new connections{}.\n",
            match self.sizes.bulk {
                crate::work::Amount::Seconds(v) => format!("{v} s per iperf3 run"),
                crate::work::Amount::Bytes(v) => format!("{v} B per iperf3 run"),
            },
            self.sizes.conns,
            self.sizes.concurrency,
            self.sizes.pings,
            self.sizes.ping_warmup,
            self.sizes.new_conns,
            if self.summaries.keys().any(|(id, _)| id.starts_with("idle")) {
                format!(", {} idle connections", self.sizes.idle)
            } else {
                String::new()
            }
        );
        let _ = write!(s, "| figure | unit |");
        for k in &self.kinds {
            let _ = write!(s, " {} |", k.name());
        }
        let _ = write!(s, "\n|---|---|");
        for _ in &self.kinds {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        for f in FIGURES {
            if !self
                .kinds
                .iter()
                .any(|k| self.summaries.contains_key(&(f.id, *k)))
            {
                continue;
            }
            let _ = write!(s, "| {} | {} |", f.label, f.unit);
            for k in &self.kinds {
                let _ = write!(s, " {} |", self.cell(f, *k));
            }
            s.push('\n');
        }
        let before = self.before_after();
        if !before.is_empty() {
            let _ = writeln!(
                s,
                "\nnetward against netward-before (`--netward-before`), paired by round (median of the per-round ratios, min–max):"
            );
            s.push_str(&before);
        }
        let ratios = self.two_node_ratios();
        if !ratios.is_empty() {
            let _ = writeln!(
                s,
                "\nTwo-node ratios, paired by round (median of the per-round ratios, min–max):"
            );
            s.push_str(&ratios);
        }
        let goals = self.goals();
        if !goals.is_empty() {
            let _ = writeln!(
                s,
                "\n| goal (netward) | measured (paired by round: median, min–max) | |\n|---|---|---|"
            );
            for (goal, measured, met) in goals {
                let _ = writeln!(
                    s,
                    "| {goal} | {measured} | {} |",
                    if met { "met" } else { "**missed**" }
                );
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\nFailed runs (left out of the figures):\n");
            for (k, r, e) in &self.failures {
                let _ = writeln!(
                    s,
                    "- round {} {}: {}",
                    r + 1,
                    k.name(),
                    e.replace('\n', " ")
                );
            }
        }
        s
    }

    /// The JSON report: machine, sizes, every round's value and the summaries.
    pub(crate) fn json(&self) -> serde_json::Value {
        let mut figures = serde_json::Map::new();
        for f in FIGURES {
            let mut per_path = serde_json::Map::new();
            for k in &self.kinds {
                if let Some(sum) = self.summaries.get(&(f.id, *k)) {
                    let ratio = (!f.proxy_only && *k != k.reference())
                        .then(|| self.median(f.id, k.reference()))
                        .flatten()
                        .filter(|b| *b != 0.0)
                        .map(|b| sum.median / b);
                    per_path.insert(
                        k.name().to_owned(),
                        json!({ "median": sum.median, "min": sum.min, "max": sum.max,
                                "runs": sum.runs, "ratio_to_direct": ratio }),
                    );
                }
            }
            if !per_path.is_empty() {
                figures.insert(
                    f.id.to_owned(),
                    json!({ "label": f.label, "unit": f.unit, "paths": per_path }),
                );
            }
        }
        let goals: Vec<_> = self
            .goals()
            .into_iter()
            .map(|(goal, measured, met)| json!({ "goal": goal, "measured": measured, "met": met }))
            .collect();
        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(k, r, e)| json!({ "path": k.name(), "round": r + 1, "error": e }))
            .collect();
        json!({
            "machine": self.machine,
            "sizes": self.sizes,
            "rounds": self.rounds,
            "paths": self.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "figures": figures,
            "goals": goals,
            "failures": failures,
        })
    }
}
