//! `netward audit`: review the audit log offline. Filter records, aggregate the top
//! denied flows by workload, and suggest the label-based NetworkPolicies that would
//! allow them. Reads files line by line (rotated, gzip-compressed, or standard input)
//! in constant memory: `--top` keeps only its aggregates, `--suggest` only distinct flows.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use netward_controller::{Cluster, Manifests, Protocol};
use netward_proxy::review::{self, Filter, Flows, Line, Millis, PodFilter, Top};

use super::offline::{TableOrJson, parse_protocol};

/// Exit code for bad input: a bad flag value, an unreadable file, `--suggest` without manifests.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum VerdictArg {
    Allow,
    Deny,
    AuditAllow,
}

impl VerdictArg {
    fn as_str(self) -> &'static str {
        match self {
            VerdictArg::Allow => "allow",
            VerdictArg::Deny => "deny",
            VerdictArg::AuditAllow => "audit-allow",
        }
    }
}

#[derive(Args)]
#[command(after_help = "\
Examples:
  netward audit /var/log/netward/audit.log* --verdict deny --since 1h
  netward audit audit.log --top 10 --namespace shop
  netward audit audit.log --to-pod netpol-test/backend --suggest -f manifests/ > allow.yaml

Every filter given must hold. Exit codes: 0 done (even with no matches); 2 bad input \
(a bad flag value, an unreadable file, --suggest without manifests, a pod missing from them).")]
pub(crate) struct AuditArgs {
    /// Audit log files, `-` for standard input. Gzip-compressed files (`.gz`) are read as
    /// they are; a rotation set (FILE, FILE.1, FILE.2.gz, ...) is read oldest first.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Only records with this verdict (repeatable, or comma-separated). `--top` and
    /// `--suggest` look at `deny` unless this is given.
    #[arg(long, value_enum, value_delimiter = ',')]
    verdict: Vec<VerdictArg>,
    /// Only flows from pods in this namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Only flows from this pod: `namespace/name` or `name`, a pod's or its workload's
    /// (`web` matches `web-7d9f8b6c5d-x2x9k` and `web-0`).
    #[arg(long, value_name = "POD", value_parser = parse_pod)]
    pod: Option<PodFilter>,
    /// Only flows to pods in this namespace.
    #[arg(long, value_name = "NS")]
    to_namespace: Option<String>,
    /// Only flows to this pod (as `--pod`).
    #[arg(long, value_name = "POD", value_parser = parse_pod)]
    to_pod: Option<PodFilter>,
    /// Only flows to this destination port (after Service DNAT: the pod's port).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Only flows of this protocol: TCP, UDP or SCTP.
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<Protocol>,
    /// Only records seen at or after this time: RFC 3339 (2026-11-23T16:00:00Z), or how
    /// long before now (30s, 15m, 1h, 2d). An aggregated deny record spans its
    /// first_seen..last_seen.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<Millis>,
    /// Only records seen at or before this time (as `--since`).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<Millis>,
    /// Only records whose egress or ingress side names this policy (`namespace/name`), as
    /// the rule that allowed it or as an isolating policy; or
    /// `ClusterNetworkPolicy/NAME`, the ClusterNetworkPolicy whose rule decided a side.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_policy)]
    policy: Option<String>,
    /// Output: `table`, or `json` (the matching records as JSON lines, unchanged; with
    /// `--top`, one JSON object per aggregated flow).
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        conflicts_with = "suggest"
    )]
    output: TableOrJson,
    /// Aggregate the denied flows by (source workload, destination workload, protocol/port)
    /// and print the N with the most attempts, with first/last seen and the deciding policies.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    top: Option<u32>,
    /// Print NetworkPolicy YAML that would allow the selected denied flows, selecting pods by
    /// labels (never by IP): an ingress policy per destination workload whose ingress denied,
    /// an egress policy per source workload whose egress denied. Needs the Pods: `-f`.
    #[arg(long, conflicts_with = "top")]
    suggest: bool,
    /// With `--suggest`: manifest files or directories with the Pods named in the records,
    /// for their labels (repeat `-f` for each).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "MANIFESTS",
        requires = "suggest"
    )]
    manifests: Vec<PathBuf>,
}

fn parse_pod(s: &str) -> Result<PodFilter, String> {
    PodFilter::parse(s).ok_or_else(|| format!("invalid pod {s:?}: give namespace/name or name"))
}

fn parse_when(s: &str) -> Result<Millis, String> {
    review::parse_when(s, review::now()).map_err(|e| e.to_string())
}

fn parse_policy(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_owned())
        }
        _ => Err(format!("invalid policy {s:?}: give namespace/name")),
    }
}

pub(crate) fn audit(args: &AuditArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`| head`) is not an error worth a message.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("netward: error: {e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// What the records read are for.
enum Mode {
    Records,
    Top(Top),
    Suggest(Flows, Cluster),
}

/// Lines that were not records, reported once at the end.
#[derive(Default)]
struct Skipped {
    malformed: u64,
    first_malformed: Option<String>,
    other_version: u64,
}

fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let mut mode = if args.suggest {
        if args.manifests.is_empty() {
            bail!(
                "--suggest needs the manifests with the Pods named in the records (-f FILE or DIR): \
                 records carry only a digest of the labels, and policies select pods by labels"
            );
        }
        Mode::Suggest(Flows::default(), load_cluster(&args.manifests)?)
    } else if args.top.is_some() {
        Mode::Top(Top::default())
    } else {
        Mode::Records
    };
    let mut verdicts: Vec<String> = args.verdict.iter().map(|v| v.as_str().to_owned()).collect();
    if verdicts.is_empty() && !matches!(mode, Mode::Records) {
        verdicts.push("deny".to_owned());
    }
    let filter = Filter {
        verdicts,
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        to_namespace: args.to_namespace.clone(),
        to_pod: args.to_pod.clone(),
        port: args.port,
        protocol: args.protocol.map(|p| p.as_str().to_owned()),
        since: args.since,
        until: args.until,
        policy: args.policy.clone(),
    };
    if args.files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        bail!("`-` (standard input) can be given once");
    }

    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let json = matches!(args.output, TableOrJson::Json);
    if matches!(mode, Mode::Records) && !json {
        out.write_all(review::table_header().as_bytes())?;
    }
    let mut skipped = Skipped::default();
    let mut buf = Vec::with_capacity(4096);
    for path in review::order_rotated(&args.files) {
        let name = path.display().to_string();
        let mut reader = review::open(&path)?;
        let mut line_no: u64 = 0;
        let mut version_noted = false;
        loop {
            let complete = match review::read_line(&mut *reader, &mut buf, review::MAX_LINE) {
                Ok(Some(complete)) => complete,
                Ok(None) => break,
                Err(e) => {
                    return Err(anyhow!(e)).context(format!("{name}:{}: cannot read", line_no + 1));
                }
            };
            line_no += 1;
            let mut not_a_record = |why: &str| {
                skipped.malformed += 1;
                if skipped.first_malformed.is_none() {
                    skipped.first_malformed = Some(format!("{name}:{line_no}: {why}"));
                }
            };
            if !complete {
                not_a_record(&format!("longer than {} bytes", review::MAX_LINE));
                continue;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = match review::parse_line(&buf) {
                Line::Record(r) => r,
                Line::OtherVersion(v) => {
                    skipped.other_version += 1;
                    if !version_noted {
                        version_noted = true;
                        eprintln!(
                            "netward: note: {name}:{line_no}: a record of schema version {v} \
                             (this netward reads version {}): skipped",
                            netward_proxy::audit::VERSION
                        );
                    }
                    continue;
                }
                Line::Malformed(why) => {
                    not_a_record(&why);
                    continue;
                }
            };
            match filter.matches(&record) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(why) => {
                    not_a_record(why);
                    continue;
                }
            }
            match &mut mode {
                Mode::Records if json => {
                    out.write_all(&buf)?;
                    out.write_all(b"\n")?;
                }
                Mode::Records => out.write_all(review::table_row(&record).as_bytes())?,
                Mode::Top(top) => {
                    if let Err(why) = top.add(&record) {
                        not_a_record(why);
                    }
                }
                Mode::Suggest(flows, _) => flows.add(&record, || format!("{name}:{line_no}")),
            }
        }
    }

    let result = match mode {
        Mode::Records => Ok(()),
        Mode::Top(top) => {
            let n = args.top.map_or(usize::MAX, |n| n as usize);
            let flows = top.top(n);
            if json {
                for f in &flows {
                    serde_json::to_writer(&mut out, f)?;
                    out.write_all(b"\n")?;
                }
            } else {
                let verdict = filter.verdicts.first().map_or("deny", String::as_str);
                out.write_all(review::top_table(&flows, verdict).as_bytes())?;
            }
            Ok(())
        }
        Mode::Suggest(flows, cluster) => suggest(&mut out, &flows, &cluster),
    };
    out.flush()?;
    report(&skipped);
    result
}

fn suggest(out: &mut impl Write, flows: &Flows, cluster: &Cluster) -> anyhow::Result<()> {
    if flows.is_empty() {
        eprintln!("netward: no denied flows matched: nothing to suggest");
        return Ok(());
    }
    let s = review::suggest(flows, cluster)?;
    out.write_all(s.yaml.as_bytes())?;
    let mut seen = std::collections::HashSet::new();
    for note in &s.notes {
        if seen.insert(note) {
            eprintln!("netward: note: {note}");
        }
    }
    eprintln!(
        "netward: suggested {} polic{} for {} distinct denied flow{}; review before applying",
        s.policies,
        if s.policies == 1 { "y" } else { "ies" },
        flows.len(),
        if flows.len() == 1 { "" } else { "s" },
    );
    Ok(())
}

fn report(skipped: &Skipped) {
    if skipped.malformed > 0 {
        let n = skipped.malformed;
        eprintln!(
            "netward: {n} line{} skipped (not audit records); the first: {}",
            if n == 1 { "" } else { "s" },
            skipped.first_malformed.as_deref().unwrap_or("")
        );
    }
    if skipped.other_version > 0 {
        let n = skipped.other_version;
        eprintln!(
            "netward: {n} record{} of another schema version skipped",
            if n == 1 { "" } else { "s" }
        );
    }
}

/// Reads the manifests `--suggest` takes the pods' labels from; any error is fatal.
fn load_cluster(files: &[PathBuf]) -> anyhow::Result<Cluster> {
    Manifests::read_paths(files).into_clean().map_err(|errors| {
        let n = errors.len();
        let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow!(
            "{n} error{} in the manifests given with -f:\n{}",
            if n == 1 { "" } else { "s" },
            list.join("\n")
        )
    })
}
