//! Reviewing the audit log offline (`netward audit`): reading rotated and gzip-compressed
//! files line by line, filtering records, aggregating the top denied flows, and
//! suggesting the label-based NetworkPolicies that would allow them. Everything here
//! streams: memory grows with the distinct flows kept, never with the lines read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use netward_controller::Cluster;
use netward_controller::model::{Labels, NAMESPACE_NAME_LABEL, Pod};
use netward_controller::render::SideReport;
use serde::Serialize;

use crate::audit::{Peer, Record, VERSION};

/// Errors while reviewing the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An audit log could not be opened or read.
    #[error("{name}: cannot read: {source}")]
    Read {
        /// The file (`-` for standard input), with the line when reading failed mid-file.
        name: String,
        /// The OS or decompression error.
        #[source]
        source: io::Error,
    },
    /// A `--since`/`--until` value is neither RFC 3339 nor a duration.
    #[error(
        "invalid time {value:?}: {reason} (give RFC 3339 like 2026-11-23T16:00:00Z, \
         or how long before now like 30s, 15m, 1h, 2d)"
    )]
    Time {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pod named in the records is missing from the manifests `--suggest` reads.
    #[error(
        "pod {pod} (first seen at {at}) is not in the manifests: its labels are needed to \
         select it (give the manifests that define it with -f, or narrow the records with filters)"
    )]
    UnknownPod {
        /// `namespace/name`.
        pod: String,
        /// `file:line` of the first record naming it.
        at: String,
    },
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch (negative before 1970).
pub type Millis = i64;

/// Lines longer than this are not audit records (a record is well under 4 KiB); they are
/// skipped without being buffered whole, so a stray binary file cannot exhaust memory.
pub const MAX_LINE: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Time

/// Parses an RFC 3339 timestamp (`2026-11-23T16:00:00Z`, fractional seconds and offsets
/// allowed). Digits past the millisecond are dropped. jiff reads it; the forms jiff takes
/// beyond RFC 3339 (`+0100`, `[UTC]`, `20261123T...`) are refused here.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    if !is_rfc3339(s) {
        return None;
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Whether `s` has RFC 3339's `date-time` syntax (the calendar is jiff's to check).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    let shape = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt ")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        let fraction = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if fraction == 0 {
            return false;
        }
        i += 1 + fraction;
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', _, _, b':', _, _] => digits(i + 1..i + 3) && digits(i + 4..i + 6),
        _ => false,
    }
}

/// The current time.
pub fn now() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// Parses a `--since`/`--until` value: RFC 3339, or a duration before `now`: a whole
/// number and a unit, `s`, `m`, `h` or `d` (`30s`, `15m`, `1h`, `2d`; a day is 24 hours).
pub fn parse_when(value: &str, now: Millis) -> Result<Millis> {
    let bad = |reason: &str| Error::Time {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let v = value.trim();
    if let Some(t) = parse_rfc3339(v) {
        return Ok(t);
    }
    if v.contains('-') || v.contains(':') {
        return Err(bad("not a valid RFC 3339 time"));
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    if n.is_empty() {
        return Err(bad("not a time or a duration"));
    }
    match unit {
        "s" | "m" | "h" | "d" => {}
        "" => return Err(bad("a duration needs a unit: s, m, h or d")),
        _ => return Err(bad("unknown unit (use s, m, h or d)")),
    }
    let ago = v
        .parse::<jiff::Span>()
        .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
        .map_err(|_| bad("number too large"))?;
    i64::try_from(ago.as_millis())
        .ok()
        .and_then(|ms| now.checked_sub(ms))
        .ok_or_else(|| bad("duration too large"))
}

/// A record's span: its first attempt to its last, `first_seen` to `last_seen` for an
/// aggregated deny record (whose `time` is when the window closed), else just `time`.
pub fn span(r: &Record) -> Option<(Millis, Millis)> {
    let time = parse_rfc3339(&r.time)?;
    let first = match &r.first_seen {
        Some(t) => parse_rfc3339(t)?,
        None => time,
    };
    let last = match &r.last_seen {
        Some(t) => parse_rfc3339(t)?,
        None => time,
    };
    Some((first.min(last), last.max(first)))
}

// ---------------------------------------------------------------------------------------
// Workloads

/// The characters Kubernetes uses for generated name suffixes (`rand.SafeEncodeString`).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn safe_encoded(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| SAFE_ALPHABET.contains(&b))
}

/// The workload a pod belongs to, from its name: a Deployment's pod
/// `web-7d9f8b6c5d-x2x9k` gives `web`, a StatefulSet's `db-0` gives `db`; any other
/// name is kept as it is.
pub fn workload(pod: &str) -> &str {
    // Deployment: NAME-<pod-template-hash, 6..10 chars>-<5 chars>, both safe-encoded.
    if let Some((rest, suffix)) = pod.rsplit_once('-')
        && let Some((name, hash)) = rest.rsplit_once('-')
        && !name.is_empty()
        && safe_encoded(suffix, 5..=5)
        && safe_encoded(hash, 6..=10)
    {
        return name;
    }
    // StatefulSet: NAME-<ordinal>, a plain number (no leading zero).
    if let Some((name, ordinal)) = pod.rsplit_once('-')
        && !name.is_empty()
        && (1..=5).contains(&ordinal.len())
        && ordinal.bytes().all(|b| b.is_ascii_digit())
        && (ordinal == "0" || !ordinal.starts_with('0'))
    {
        return name;
    }
    pod
}

/// `namespace/pod` for a pod, or `None` when the peer is not a pod.
pub fn pod_key(p: &Peer) -> Option<String> {
    match (&p.namespace, &p.pod) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => None,
    }
}

/// How a peer is shown: `namespace/pod`, or `ip:port` when it is not a pod.
pub fn peer_name(p: &Peer) -> String {
    pod_key(p).unwrap_or_else(|| addr(&p.ip, p.port))
}

fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A peer's workload: `namespace/workload` for a pod, the IP otherwise.
pub fn peer_workload(p: &Peer) -> String {
    match (&p.namespace, &p.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{}", workload(pod)),
        _ => p.ip.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Filters

/// A pod named on the command line: `namespace/name` or just `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFilter {
    /// The namespace, when given.
    pub namespace: Option<String>,
    /// The pod's name, or its workload's.
    pub name: String,
}

impl PodFilter {
    /// Parses `namespace/name` or `name`.
    pub fn parse(s: &str) -> Option<PodFilter> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Some(PodFilter {
                    namespace: Some(ns.to_owned()),
                    name: name.to_owned(),
                })
            }
            None if !s.is_empty() => Some(PodFilter {
                namespace: None,
                name: s.to_owned(),
            }),
            _ => None,
        }
    }

    /// Whether the peer is this pod, or a replica of this workload.
    pub fn matches(&self, p: &Peer) -> bool {
        let (Some(ns), Some(pod)) = (&p.namespace, &p.pod) else {
            return false;
        };
        self.namespace.as_ref().is_none_or(|n| n == ns)
            && (*pod == self.name || workload(pod) == self.name)
    }
}

/// Which records to keep. Every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `allow`, `deny` or `audit-allow`.
    pub verdicts: Vec<String>,
    /// The source pod's namespace.
    pub namespace: Option<String>,
    /// The source pod (or its workload).
    pub pod: Option<PodFilter>,
    /// The destination pod's namespace.
    pub to_namespace: Option<String>,
    /// The destination pod (or its workload).
    pub to_pod: Option<PodFilter>,
    /// The destination port (after Service DNAT: the backend's).
    pub port: Option<u16>,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Option<String>,
    /// Records whose span ends at or after this.
    pub since: Option<Millis>,
    /// Records whose span starts at or before this.
    pub until: Option<Millis>,
    /// `namespace/name`: records where either side names it (allowed_by or isolated_by);
    /// or a ClusterNetworkPolicy, as `ClusterNetworkPolicy/NAME` or `NAME`, that decided a side.
    pub policy: Option<String>,
}

impl Filter {
    /// Whether the record is selected; `Err` when a time filter is set and the record's
    /// times are not RFC 3339.
    pub fn matches(&self, r: &Record) -> Result<bool, &'static str> {
        if !self.verdicts.is_empty() && !self.verdicts.contains(&r.verdict) {
            return Ok(false);
        }
        if let Some(ns) = &self.namespace
            && r.src.namespace.as_ref() != Some(ns)
        {
            return Ok(false);
        }
        if let Some(ns) = &self.to_namespace
            && r.dst.namespace.as_ref() != Some(ns)
        {
            return Ok(false);
        }
        if self.pod.as_ref().is_some_and(|p| !p.matches(&r.src))
            || self.to_pod.as_ref().is_some_and(|p| !p.matches(&r.dst))
            || self.port.is_some_and(|p| p != r.dst.port)
            || self
                .protocol
                .as_ref()
                .is_some_and(|p| !p.eq_ignore_ascii_case(&r.protocol))
        {
            return Ok(false);
        }
        if let Some(policy) = &self.policy
            && !(names_policy(&r.egress, policy) || names_policy(&r.ingress, policy))
        {
            return Ok(false);
        }
        if self.since.is_some() || self.until.is_some() {
            let (first, last) = span(r).ok_or("time, first_seen or last_seen is not RFC 3339")?;
            if self.since.is_some_and(|s| last < s) || self.until.is_some_and(|u| first > u) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn names_policy(side: &SideReport, policy: &str) -> bool {
    side.allowed_by.as_ref().is_some_and(|a| a.policy == policy)
        || side.isolated_by.iter().any(|p| p == policy)
        || side
            .cluster_policy
            .as_ref()
            .is_some_and(|c| c.policy == policy || c.key() == policy)
}

/// `ClusterNetworkPolicy/NAME[1] (Admin)`: a ClusterNetworkPolicy rule that decided a side,
/// as `reason` and `--top` name it.
fn cluster_rule_label(c: &netward_controller::render::ClusterRuleRef) -> String {
    format!("{}[{}] ({})", c.key(), c.rule, c.tier)
}

// ---------------------------------------------------------------------------------------
// Reading

/// Opens an audit log (`-` is standard input), decompressing gzip data (`.gz` files, and
/// anything else that starts with the gzip magic number).
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let name = path.display().to_string();
    let raw: Box<dyn Read> = if path == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        match std::fs::File::open(path) {
            Ok(f) => Box::new(f),
            Err(source) => return Err(Error::Read { name, source }),
        }
    };
    let mut buf = BufReader::with_capacity(64 * 1024, raw);
    let gzip = loop {
        match buf.fill_buf() {
            Ok(b) => break b.starts_with(&[0x1f, 0x8b]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Read { name, source }),
        }
    };
    if gzip {
        // Multi-member: `cat a.gz b.gz` and some log rotators give several gzip members.
        let gz = flate2::bufread::MultiGzDecoder::new(buf);
        Ok(Box::new(BufReader::with_capacity(64 * 1024, gz)))
    } else {
        Ok(Box::new(buf))
    }
}

/// Reads the next line into `buf` (without the line end). `Ok(None)` at the end;
/// `Ok(Some(false))` when the line was longer than `max` (it is consumed, `buf` is empty).
pub fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut too_long) = (false, false);
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        any = true;
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(!too_long))
}

/// What one line of an audit log holds.
#[derive(Debug)]
pub enum Line {
    /// A v1 record.
    Record(Box<Record>),
    /// An object with another `"v"` (shown as JSON).
    OtherVersion(String),
    /// Not an audit record: why.
    Malformed(String),
}

/// Parses one line.
pub fn parse_line(line: &[u8]) -> Line {
    match serde_json::from_slice::<Record>(line) {
        Ok(r) if r.v == VERSION => Line::Record(Box::new(r)),
        Ok(r) => Line::OtherVersion(r.v.to_string()),
        Err(e) => {
            #[derive(serde::Deserialize)]
            struct Versioned {
                v: serde_json::Value,
            }
            match serde_json::from_slice::<Versioned>(line) {
                Ok(x) if x.v != serde_json::json!(VERSION) => Line::OtherVersion(x.v.to_string()),
                _ => Line::Malformed(e.to_string()),
            }
        }
    }
}

/// Orders paths so that each rotation set (`FILE`, `FILE.1`, `FILE.2.gz`, ...) is read
/// oldest first (highest number first, `FILE` last), whatever order the shell gave.
/// Paths of different sets keep their relative places.
pub fn order_rotated(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn split(p: &Path) -> (String, u64) {
        let s = p.to_string_lossy();
        let s = s.strip_suffix(".gz").unwrap_or(&s);
        if let Some((base, n)) = s.rsplit_once('.')
            && !base.is_empty()
            && !n.is_empty()
            && n.len() <= 6
            && n.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = n.parse()
        {
            return (base.to_owned(), n);
        }
        (s.to_owned(), 0)
    }
    let keys: Vec<(String, u64)> = paths.iter().map(|p| split(p)).collect();
    let mut out: Vec<PathBuf> = paths.to_vec();
    let mut done = vec![false; paths.len()];
    for i in 0..paths.len() {
        if done[i] {
            continue;
        }
        let slots: Vec<usize> = (i..paths.len())
            .filter(|&j| !done[j] && keys[j].0 == keys[i].0)
            .collect();
        let mut members = slots.clone();
        members.sort_by_key(|&j| std::cmp::Reverse(keys[j].1));
        for (&slot, &j) in slots.iter().zip(&members) {
            out[slot] = paths[j].clone();
            done[slot] = true;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The table of records

/// A short reason for a record's verdict: `ingress denied by ns/p`, `allowed by ns/p ingress[0]`.
pub fn reason(r: &Record) -> String {
    let sides = [("egress", &r.egress), ("ingress", &r.ingress)];
    let mut parts = Vec::new();
    for (name, side) in sides {
        match side.result.as_str() {
            "denied" if side.cluster_policy.is_some() => {
                if let Some(c) = &side.cluster_policy {
                    parts.push(format!("{name} denied by {}", cluster_rule_label(c)));
                }
            }
            "denied" => parts.push(format!("{name} denied by {}", side.isolated_by.join(", "))),
            "audit-denied" => parts.push(format!(
                "{name} would be denied by {} (audit mode)",
                side.isolated_by.join(", ")
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        for (name, side) in sides {
            if let Some(a) = &side.allowed_by {
                parts.push(format!("allowed by {} {name}[{}]", a.policy, a.rule));
            } else if let Some(c) = &side.cluster_policy {
                parts.push(format!("{name} allowed by {}", cluster_rule_label(c)));
            } else if side.result == "exempt" {
                let why = side
                    .exemption
                    .and_then(|e| serde_json::to_value(e).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                parts.push(format!("{name} exempt ({why})"));
            }
        }
    }
    if parts.is_empty() {
        "not isolated".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The header of `-o table`.
pub fn table_header() -> String {
    table_line([
        "TIME",
        "VERDICT",
        "SRC",
        "DST",
        "SERVICE",
        "PROTO/PORT",
        "COUNT",
        "REASON",
    ])
}

/// One record as a line of `-o table`.
pub fn table_row(r: &Record) -> String {
    let service = r
        .service
        .as_ref()
        .map(|s| {
            if s.name.is_empty() {
                addr(&s.ip, s.port)
            } else {
                format!("{}:{}", s.name, s.port)
            }
        })
        .unwrap_or_else(|| "-".to_owned());
    table_line([
        &r.time,
        &r.verdict,
        &peer_name(&r.src),
        &peer_name(&r.dst),
        &service,
        &format!("{}/{}", r.protocol, r.dst.port),
        &r.count.to_string(),
        &reason(r),
    ])
}

fn table_line(cols: [&str; 8]) -> String {
    // Fixed widths (the table streams); longer values push the rest right.
    const WIDTHS: [usize; 7] = [24, 11, 32, 32, 28, 10, 6];
    let mut s = String::new();
    for (i, c) in cols.iter().enumerate() {
        match WIDTHS.get(i) {
            Some(&w) => {
                let _ = write!(s, "{c:<w$}  ");
            }
            None => s.push_str(c),
        }
    }
    s.truncate(s.trim_end().len());
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------
// --top

/// One aggregated flow of `--top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopFlow {
    /// Flows (the sum of the records' `count`).
    pub count: u64,
    /// Records folded in.
    pub records: u64,
    /// Source workload: `namespace/workload`, or an IP.
    pub src: String,
    /// Destination workload.
    pub dst: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Destination port.
    pub port: u16,
    /// The earliest attempt.
    pub first_seen: String,
    /// The latest attempt.
    pub last_seen: String,
    /// The deciding policies, as `egress: ns/p` or `ingress: ns/p` (for allowed flows,
    /// `ingress: ns/p[0]`, the allowing rule).
    pub policies: BTreeSet<String>,
    #[serde(skip)]
    first_ms: Millis,
    #[serde(skip)]
    last_ms: Millis,
}

/// Aggregates flows by (source workload, destination workload, protocol, port).
#[derive(Debug, Default)]
pub struct Top {
    flows: HashMap<(String, String, String, u16), TopFlow>,
}

impl Top {
    /// Folds a record in; `Err` when its times are not RFC 3339.
    pub fn add(&mut self, r: &Record) -> Result<(), &'static str> {
        let (first_ms, last_ms) = span(r).ok_or("time, first_seen or last_seen is not RFC 3339")?;
        let key = (
            peer_workload(&r.src),
            peer_workload(&r.dst),
            r.protocol.clone(),
            r.dst.port,
        );
        let f = self.flows.entry(key).or_insert_with_key(|k| TopFlow {
            count: 0,
            records: 0,
            src: k.0.clone(),
            dst: k.1.clone(),
            protocol: k.2.clone(),
            port: k.3,
            first_seen: String::new(),
            last_seen: String::new(),
            policies: BTreeSet::new(),
            first_ms: Millis::MAX,
            last_ms: Millis::MIN,
        });
        f.count = f.count.saturating_add(r.count);
        f.records += 1;
        if first_ms < f.first_ms {
            f.first_ms = first_ms;
            f.first_seen = r.first_seen.clone().unwrap_or_else(|| r.time.clone());
        }
        if last_ms > f.last_ms {
            f.last_ms = last_ms;
            f.last_seen = r.last_seen.clone().unwrap_or_else(|| r.time.clone());
        }
        for (name, side) in [("egress", &r.egress), ("ingress", &r.ingress)] {
            if let Some(c) = &side.cluster_policy {
                // A ClusterNetworkPolicy decided this side (Deny, or Accept).
                if side.result == "denied" || r.verdict == "allow" {
                    f.policies
                        .insert(format!("{name}: {}", cluster_rule_label(c)));
                }
            } else if matches!(side.result.as_str(), "denied" | "audit-denied") {
                for p in &side.isolated_by {
                    f.policies.insert(format!("{name}: {p}"));
                }
            } else if r.verdict == "allow"
                && let Some(a) = &side.allowed_by
            {
                f.policies
                    .insert(format!("{name}: {}[{}]", a.policy, a.rule));
            }
        }
        Ok(())
    }

    /// The `n` flows with the highest counts (ties in name order).
    pub fn top(self, n: usize) -> Vec<TopFlow> {
        let mut v: Vec<TopFlow> = self.flows.into_values().collect();
        v.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.src, &a.dst, &a.protocol, a.port).cmp(&(&b.src, &b.dst, &b.protocol, b.port))
            })
        });
        v.truncate(n);
        v
    }
}

/// `--top` as a table.
pub fn top_table(flows: &[TopFlow], verdict: &str) -> String {
    let decided = if verdict == "allow" {
        "ALLOWED BY"
    } else {
        "DENIED BY"
    };
    let rows: Vec<[String; 7]> = flows
        .iter()
        .map(|f| {
            [
                f.count.to_string(),
                f.src.clone(),
                f.dst.clone(),
                format!("{}/{}", f.protocol, f.port),
                f.first_seen.clone(),
                f.last_seen.clone(),
                f.policies.iter().cloned().collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    let header = [
        "COUNT",
        "SRC",
        "DST",
        "PROTO/PORT",
        "FIRST SEEN",
        "LAST SEEN",
        decided,
    ]
    .map(str::to_owned);
    let mut widths = header.each_ref().map(String::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i == 0 {
                let _ = write!(line, "{c:>w$}  ");
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// --suggest

/// A distinct flow `--suggest` keeps: pods by `namespace/name` (or the IP when not a pod).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FlowKey {
    src: String,
    dst: String,
    protocol: String,
    port: u16,
}

#[derive(Clone, Debug, Default)]
struct FlowInfo {
    /// The source's egress denied it: it needs an egress rule.
    egress: bool,
    /// The destination's ingress denied it: it needs an ingress rule.
    ingress: bool,
    count: u64,
    /// `file:line` of the first record.
    at: String,
}

/// The distinct denied flows `--suggest` allows, and what each side needs.
#[derive(Debug, Default)]
pub struct Flows {
    flows: BTreeMap<FlowKey, FlowInfo>,
}

impl Flows {
    /// Keeps the record's flow, with the sides that denied it (`denied`, or `audit-denied`
    /// for records an audit-mode policy would deny). `at` is `file:line`.
    pub fn add(&mut self, r: &Record, at: impl FnOnce() -> String) {
        let needs = |s: &SideReport| matches!(s.result.as_str(), "denied" | "audit-denied");
        let (egress, ingress) = (needs(&r.egress), needs(&r.ingress));
        if !egress && !ingress {
            return;
        }
        let key = FlowKey {
            src: pod_key(&r.src).unwrap_or_else(|| r.src.ip.clone()),
            dst: pod_key(&r.dst).unwrap_or_else(|| r.dst.ip.clone()),
            protocol: r.protocol.clone(),
            port: r.dst.port,
        };
        let f = match self.flows.get_mut(&key) {
            Some(f) => f,
            None => self.flows.entry(key).or_insert_with(|| FlowInfo {
                at: at(),
                ..FlowInfo::default()
            }),
        };
        f.egress |= egress;
        f.ingress |= ingress;
        f.count = f.count.saturating_add(r.count);
    }

    /// How many distinct flows are kept.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// What `--suggest` produced.
#[derive(Debug, Default)]
pub struct Suggestion {
    /// The policies, as YAML documents separated by `---`.
    pub yaml: String,
    /// How many policies.
    pub policies: usize,
    /// Things the operator should know (flows left out, selectors that select more).
    pub notes: Vec<String>,
}

/// Labels that differ between replicas or revisions of one workload: never selected on.
const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

/// Chooses the labels that select a workload's pods. The candidates, in order:
/// `app.kubernetes.io/name` (with `app.kubernetes.io/instance` and `/component` when
/// present), then `app`, then every label but the per-replica ones (`pod-template-hash`,
/// ...). The first candidate that every pod of the workload carries and that selects no
/// other workload's pod in the namespace wins; if none is that exact, the last one is used
/// and a note names the other pods it selects. `None` when the pods have no stable labels.
fn choose_selector(
    cluster: &Cluster,
    ns: &str,
    workload_name: &str,
    pods: &[&Pod],
    notes: &mut Vec<String>,
) -> Option<Labels> {
    let first = pods.first()?;
    let pick = |keys: &[&str]| -> Labels {
        keys.iter()
            .filter_map(|k| first.labels.get_key_value(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut candidates = Vec::new();
    if first.labels.contains_key("app.kubernetes.io/name") {
        candidates.push(pick(&[
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        ]));
    }
    if first.labels.contains_key("app") {
        candidates.push(pick(&["app"]));
    }
    candidates.push(
        first
            .labels
            .iter()
            .filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let selects = |sel: &Labels, labels: &Labels| sel.iter().all(|(k, v)| labels.get(k) == Some(v));
    let usable: Vec<Labels> = candidates
        .into_iter()
        .filter(|c| !c.is_empty() && pods.iter().all(|p| selects(c, &p.labels)))
        .collect();
    let others = |sel: &Labels| -> Vec<String> {
        cluster
            .pods
            .range((ns.to_owned(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .filter(|((_, name), p)| workload(name) != workload_name && selects(sel, &p.labels))
            .map(|((_, name), _)| name.clone())
            .collect()
    };
    for c in &usable {
        if others(c).is_empty() {
            return Some(c.clone());
        }
    }
    let last = usable.last()?;
    notes.push(format!(
        "the labels of {ns}/{workload_name} ({}) also select {} in {ns}: the suggested policy \
         applies to those pods too; give the workload a distinguishing label",
        show_labels(last),
        others(last).join(", ")
    ));
    Some(last.clone())
}

fn show_labels(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A peer workload of a [`PolicyPlan`]: its pods seen, and the (protocol, port)s.
type PeerPlan = (BTreeSet<String>, BTreeSet<(String, u16)>);

/// One side (ingress or egress) of the policies to write, for one workload.
#[derive(Default)]
struct PolicyPlan {
    /// A pod of the workload, for its labels (all the workload's pods seen, in fact).
    pods: BTreeSet<String>,
    /// Peer workload (`ns`, `workload`) -> its pods seen, and the ports.
    peers: BTreeMap<(String, String), PeerPlan>,
    /// `src -> dst proto/port: N denied`.
    flows: Vec<String>,
}

fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// Builds the NetworkPolicies that allow the kept flows, selecting pods by their labels
/// in `cluster` (the manifests): one ingress policy per destination workload whose
/// ingress denied, one egress policy per source workload whose egress denied.
pub fn suggest(flows: &Flows, cluster: &Cluster) -> Result<Suggestion> {
    let mut out = Suggestion::default();
    // (namespace, workload) -> plan, for each direction.
    let mut ingress: BTreeMap<(String, String), PolicyPlan> = BTreeMap::new();
    let mut egress: BTreeMap<(String, String), PolicyPlan> = BTreeMap::new();
    for (k, f) in &flows.flows {
        let src = split_key(&k.src);
        let dst = split_key(&k.dst);
        // Every pod named must be in the manifests.
        for pod in [src, dst].into_iter().flatten() {
            if !cluster
                .pods
                .contains_key(&(pod.0.to_owned(), pod.1.to_owned()))
            {
                return Err(Error::UnknownPod {
                    pod: format!("{}/{}", pod.0, pod.1),
                    at: f.at.clone(),
                });
            }
        }
        let what = format!(
            "{} -> {} {}/{}: {} denied",
            k.src, k.dst, k.protocol, k.port, f.count
        );
        let (Some((sns, spod)), Some((dns, dpod))) = (src, dst) else {
            let ip = if src.is_none() { &k.src } else { &k.dst };
            out.notes.push(format!(
                "left out {what} (first at {}): {ip} is not a pod, and netward never suggests \
                 IP-based rules; write an ipBlock rule by hand if it is wanted",
                f.at
            ));
            continue;
        };
        let port = (k.protocol.clone(), k.port);
        for (needed, plans, (own_ns, own_pod), (peer_ns, peer_pod)) in [
            (f.ingress, &mut ingress, (dns, dpod), (sns, spod)),
            (f.egress, &mut egress, (sns, spod), (dns, dpod)),
        ] {
            if !needed {
                continue;
            }
            let plan = plans
                .entry((own_ns.to_owned(), workload(own_pod).to_owned()))
                .or_default();
            plan.pods.insert(own_pod.to_owned());
            let peer = plan
                .peers
                .entry((peer_ns.to_owned(), workload(peer_pod).to_owned()))
                .or_default();
            peer.0.insert(peer_pod.to_owned());
            peer.1.insert(port.clone());
            plan.flows.push(what.clone());
        }
    }
    let pods_of = |ns: &str, names: &BTreeSet<String>| -> Vec<&Pod> {
        names
            .iter()
            .filter_map(|n| cluster.pods.get(&(ns.to_owned(), n.clone())))
            .collect()
    };
    let mut docs = Vec::new();
    for (dir, plans) in [("ingress", &ingress), ("egress", &egress)] {
        for ((ns, wl), plan) in plans {
            let Some(own) =
                choose_selector(cluster, ns, wl, &pods_of(ns, &plan.pods), &mut out.notes)
            else {
                out.notes.push(format!(
                    "no {dir} policy for {ns}/{wl}: its pods have no labels to select them by \
                     (netward never suggests IP-based rules); label them and run again"
                ));
                continue;
            };
            let mut rules = Vec::new();
            for ((peer_ns, peer_wl), (peer_pods, ports)) in &plan.peers {
                let Some(peer) = choose_selector(
                    cluster,
                    peer_ns,
                    peer_wl,
                    &pods_of(peer_ns, peer_pods),
                    &mut out.notes,
                ) else {
                    out.notes.push(format!(
                        "no {dir} rule for {ns}/{wl} <-> {peer_ns}/{peer_wl}: the peer's pods have \
                         no labels to select them by; label them and run again"
                    ));
                    continue;
                };
                let mut peer_map = serde_yaml::Mapping::new();
                peer_map.insert("podSelector".into(), match_labels(&peer));
                if peer_ns != ns {
                    let ns_labels: Labels =
                        [(NAMESPACE_NAME_LABEL.to_owned(), peer_ns.clone())].into();
                    peer_map.insert("namespaceSelector".into(), match_labels(&ns_labels));
                }
                let ports: Vec<serde_yaml::Value> = ports
                    .iter()
                    .map(|(proto, port)| {
                        let mut m = serde_yaml::Mapping::new();
                        m.insert("protocol".into(), proto.as_str().into());
                        m.insert("port".into(), u64::from(*port).into());
                        m.into()
                    })
                    .collect();
                let mut rule = serde_yaml::Mapping::new();
                rule.insert(
                    if dir == "ingress" { "from" } else { "to" }.into(),
                    vec![serde_yaml::Value::from(peer_map)].into(),
                );
                rule.insert("ports".into(), ports.into());
                rules.push(serde_yaml::Value::from(rule));
            }
            if rules.is_empty() {
                continue;
            }
            let mut metadata = serde_yaml::Mapping::new();
            metadata.insert("name".into(), policy_name(wl, dir).into());
            metadata.insert("namespace".into(), ns.as_str().into());
            let mut spec = serde_yaml::Mapping::new();
            spec.insert("podSelector".into(), match_labels(&own));
            spec.insert(
                "policyTypes".into(),
                vec![serde_yaml::Value::from(if dir == "ingress" {
                    "Ingress"
                } else {
                    "Egress"
                })]
                .into(),
            );
            spec.insert(dir.into(), rules.into());
            let mut doc = serde_yaml::Mapping::new();
            doc.insert("apiVersion".into(), "networking.k8s.io/v1".into());
            doc.insert("kind".into(), "NetworkPolicy".into());
            doc.insert("metadata".into(), metadata.into());
            doc.insert("spec".into(), spec.into());
            let body = serde_yaml::to_string(&doc).unwrap_or_default();
            let mut text = format!(
                "# Suggested by `netward audit --suggest`: allows {dir} to {ns}/{wl} for these \
                 flows the audit log shows denied:\n"
            );
            if dir == "egress" {
                text = format!(
                    "# Suggested by `netward audit --suggest`: allows egress from {ns}/{wl} for \
                     these flows the audit log shows denied:\n"
                );
            }
            for f in &plan.flows {
                let _ = writeln!(text, "#   {f}");
            }
            text.push_str(&body);
            docs.push(text);
        }
    }
    out.policies = docs.len();
    out.yaml = docs.join("---\n");
    Ok(out)
}

fn match_labels(l: &Labels) -> serde_yaml::Value {
    let mut inner = serde_yaml::Mapping::new();
    for (k, v) in l {
        inner.insert(k.as_str().into(), v.as_str().into());
    }
    let mut m = serde_yaml::Mapping::new();
    m.insert("matchLabels".into(), inner.into());
    m.into()
}

/// `netward-suggest-<workload>-<ingress|egress>`, within the 253 characters a name may have.
fn policy_name(workload: &str, dir: &str) -> String {
    let room = 253 - "netward-suggest-".len() - dir.len() - 1;
    let wl = workload.get(..room.min(workload.len())).unwrap_or(workload);
    format!("netward-suggest-{}-{dir}", wl.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn rfc3339_parses_what_netward_writes_and_what_operators_type() {
        let t = parse_rfc3339("2026-11-23T10:12:03.456Z").unwrap();
        assert_eq!(t, 1_795_428_723_456);
        assert_eq!(
            crate::audit::rfc3339(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(t as u64)
            ),
            "2026-11-23T10:12:03.456Z"
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T10:12:03Z"),
            Some(1_795_428_723_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T11:12:03.4+01:00"),
            Some(1_795_428_723_400)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T10:12:03.123456789Z"),
            Some(1_795_428_723_123)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(
            parse_rfc3339("2026-11-23 10:12:03-01:30"),
            Some(1_795_434_123_000)
        );
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T10:12:03",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:12:03.Z",
            "2026-11-23T10:12:03+0100",
            "2026-11-23T10:12:03Zjunk",
            "2026-1a-23T10:12:03Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn when_is_absolute_or_before_now() {
        let now = 1_000_000_000;
        assert_eq!(parse_when("30s", now).unwrap(), now - 30_000);
        assert_eq!(parse_when("15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_when("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_when("2d", now).unwrap(), now - 172_800_000);
        assert_eq!(
            parse_when("2026-11-23T16:00:00Z", now).unwrap(),
            1_795_449_600_000
        );
        for bad in [
            "",
            "h",
            "15",
            "15w",
            "1.5h",
            "-1h",
            "2026-11-23",
            "99999999999999999999d",
            "1h30m",
            "2026-11-23T10:12:03Z[UTC]",
        ] {
            let e = parse_when(bad, now).unwrap_err().to_string();
            assert!(
                e.contains("invalid time") && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn workloads_strip_replica_suffixes_only_when_they_look_generated() {
        for (pod, wl) in [
            ("web-7d9f8b6c5d-x2x9k", "web"),
            ("my-api-5c6b7d8f9-qwz2p", "my-api"),
            ("db-0", "db"),
            ("kafka-broker-12", "kafka-broker"),
            ("backend", "backend"),
            ("rogue-pod", "rogue-pod"),
            ("web-01", "web-01"),
            ("web-123456", "web-123456"),
            ("web-7d9f8b6c5d-xaxak", "web-7d9f8b6c5d-xaxak"), // vowels are never generated
            ("web-short-x2x9k", "web-short-x2x9k"),
            ("-0", "-0"),
            ("7d9f8b6c5d-x2x9k", "7d9f8b6c5d-x2x9k"),
        ] {
            assert_eq!(workload(pod), wl, "{pod}");
        }
    }

    #[test]
    fn pod_filters_take_namespace_and_name_or_workload() {
        let peer = |ns: &str, pod: &str| Peer {
            ip: "10.0.0.1".into(),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ..Peer::default()
        };
        let f = PodFilter::parse("shop/web").unwrap();
        assert!(f.matches(&peer("shop", "web")));
        assert!(f.matches(&peer("shop", "web-7d9f8b6c5d-x2x9k")));
        assert!(!f.matches(&peer("other", "web")));
        assert!(!f.matches(&peer("shop", "web2")));
        let any_ns = PodFilter::parse("web").unwrap();
        assert!(any_ns.matches(&peer("other", "web")));
        assert!(!any_ns.matches(&Peer::default()));
        for bad in ["", "/", "ns/", "/x", "a/b/c"] {
            assert_eq!(PodFilter::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rotation_sets_are_read_oldest_first() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            order_rotated(&p(&["a.log", "a.log.1", "a.log.10", "a.log.2.gz", "other"])),
            p(&["a.log.10", "a.log.2.gz", "a.log.1", "a.log", "other"])
        );
        assert_eq!(
            order_rotated(&p(&["x", "a.log", "y", "a.log.1"])),
            p(&["x", "a.log.1", "y", "a.log"])
        );
        assert_eq!(order_rotated(&p(&["-"])), p(&["-"]));
    }

    #[test]
    fn long_lines_are_consumed_without_being_kept() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        let mut r: Box<dyn BufRead> = Box::new(BufReader::with_capacity(16, text.as_bytes()));
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut *r, &mut buf, 50).unwrap(), Some(true));
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut *r, &mut buf, 50).unwrap(), Some(false));
        assert!(buf.is_empty());
        assert_eq!(read_line(&mut *r, &mut buf, 50).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut *r, &mut buf, 50).unwrap(), None);
    }

    /// A side a ClusterNetworkPolicy decided: the reason, `--policy` and `--top` name it.
    #[test]
    fn cluster_policy_decisions_are_named_filtered_and_grouped() {
        let deny = r#"{"v":1,"time":"2026-11-23T16:20:12.003Z","event":"deny","verdict":"deny","direction":"egress","protocol":"TCP","src":{"ip":"198.18.1.50","port":40000,"namespace":"apps","pod":"web"},"dst":{"ip":"198.19.255.254","port":80},"egress":{"result":"denied","cluster_policy":{"tier":"Admin","policy":"block-metadata","priority":0,"rule":0,"rule_name":"deny-metadata","action":"Deny"}},"ingress":{"result":"not-pod"},"generation":2,"count":3}"#;
        let Line::Record(r) = parse_line(deny.as_bytes()) else {
            panic!("not a record")
        };
        assert_eq!(
            reason(&r),
            "egress denied by ClusterNetworkPolicy/block-metadata[0] (Admin)"
        );
        for name in ["block-metadata", "ClusterNetworkPolicy/block-metadata"] {
            let f = Filter {
                policy: Some(name.to_owned()),
                ..Filter::default()
            };
            assert_eq!(f.matches(&r), Ok(true), "{name}");
        }
        let other = Filter {
            policy: Some("apps/block-metadata".to_owned()),
            ..Filter::default()
        };
        assert_eq!(other.matches(&r), Ok(false));
        let mut top = Top::default();
        top.add(&r).unwrap();
        let flows = top.top(10);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].count, 3);
        assert!(
            flows[0]
                .policies
                .contains("egress: ClusterNetworkPolicy/block-metadata[0] (Admin)"),
            "{:?}",
            flows[0].policies
        );
    }

    #[test]
    fn lines_are_records_other_versions_or_not_records() {
        let deny = r#"{"v":1,"time":"2026-11-23T16:20:12.003Z","event":"deny","verdict":"deny","direction":"both","protocol":"TCP","src":{"ip":"198.18.1.12","port":48394,"namespace":"netpol-test","pod":"rogue-pod"},"dst":{"ip":"198.18.1.10","port":80,"namespace":"netpol-test","pod":"backend"},"egress":{"result":"not-isolated"},"ingress":{"result":"denied","isolated_by":["netpol-test/backend-access-policy"]},"generation":2,"count":1}"#;
        let Line::Record(r) = parse_line(deny.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            reason(&r),
            "ingress denied by netpol-test/backend-access-policy"
        );
        assert!(
            matches!(parse_line(deny.replace(r#""v":1"#, r#""v":2"#).as_bytes()), Line::OtherVersion(v) if v == "2")
        );
        assert!(matches!(parse_line(br#"{"v":"2","x":1}"#), Line::OtherVersion(v) if v == "\"2\""));
        assert!(matches!(
            parse_line(br#"{"v":1,"x":1}"#),
            Line::Malformed(_)
        ));
        assert!(matches!(parse_line(b"hello"), Line::Malformed(_)));
    }

    #[test]
    fn policy_names_fit_the_api_limit() {
        assert_eq!(
            policy_name("backend", "ingress"),
            "netward-suggest-backend-ingress"
        );
        assert!(policy_name(&"a".repeat(300), "egress").len() <= 253);
    }

    fn labels(l: &[(&str, &str)]) -> Labels {
        l.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A deny record from `src` to `dst` (`ns/pod`, or an IP), denied by the sides named.
    fn denied(src: &str, dst: &str, port: u16, egress: bool, ingress: bool) -> Record {
        let peer = |s: &str| match s.split_once('/') {
            Some((ns, pod)) => {
                serde_json::json!({"ip": "10.0.0.1", "port": port, "namespace": ns, "pod": pod})
            }
            None => serde_json::json!({"ip": s, "port": port}),
        };
        let side = |d: bool| serde_json::json!({"result": if d { "denied" } else { "not-isolated" }, "isolated_by": ["x/y"]});
        serde_json::from_value(serde_json::json!({
            "v": 1, "time": "2026-11-23T16:00:00.000Z", "event": "deny", "verdict": "deny",
            "direction": "both", "protocol": "TCP", "src": peer(src), "dst": peer(dst),
            "egress": side(egress), "ingress": side(ingress), "generation": 1, "count": 1,
        }))
        .unwrap()
    }

    #[test]
    fn selectors_are_the_smallest_that_select_just_the_workload() {
        let mut cluster = Cluster::default();
        for (name, l) in [
            (
                "api-7d9f8b6c5d-x2x9k",
                &[
                    ("app", "shop"),
                    ("tier", "api"),
                    ("pod-template-hash", "7d9f8b6c5d"),
                ][..],
            ),
            (
                "api-7d9f8b6c5d-qr5tz",
                &[
                    ("app", "shop"),
                    ("tier", "api"),
                    ("pod-template-hash", "7d9f8b6c5d"),
                ],
            ),
            (
                "web-6c5d7d9f8b-zz2xq",
                &[
                    ("app", "shop"),
                    ("tier", "web"),
                    ("pod-template-hash", "6c5d7d9f8b"),
                ],
            ),
            ("nolabels", &[]),
            (
                "queue-0",
                &[
                    ("app.kubernetes.io/name", "queue"),
                    ("app.kubernetes.io/instance", "q1"),
                    ("app", "q"),
                ],
            ),
            ("lonely", &[("role", "x")]),
            ("twin", &[("role", "x")]),
        ] {
            cluster.upsert_pod(Pod::new("shop", name, labels(l)));
        }
        let mut flows = Flows::default();
        for (i, r) in [
            denied(
                "shop/web-6c5d7d9f8b-zz2xq",
                "shop/api-7d9f8b6c5d-x2x9k",
                8080,
                false,
                true,
            ),
            denied(
                "shop/web-6c5d7d9f8b-zz2xq",
                "shop/api-7d9f8b6c5d-qr5tz",
                8080,
                false,
                true,
            ),
            denied(
                "shop/queue-0",
                "shop/api-7d9f8b6c5d-x2x9k",
                8080,
                false,
                true,
            ),
            denied(
                "shop/nolabels",
                "shop/api-7d9f8b6c5d-x2x9k",
                8080,
                false,
                true,
            ),
            denied("shop/lonely", "shop/queue-0", 5672, true, false),
            denied("192.0.2.1", "shop/queue-0", 5672, false, true),
        ]
        .iter()
        .enumerate()
        {
            flows.add(r, || format!("log:{}", i + 1));
        }
        assert_eq!(flows.len(), 6);
        let s = suggest(&flows, &cluster).unwrap();
        let docs: Vec<serde_yaml::Value> = s
            .yaml
            .split("\n---\n")
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(s.policies, 2);
        let expected: Vec<serde_yaml::Value> = [
            // `app: shop` also selects web: the tier label tells them apart.
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy,
              metadata: {name: netward-suggest-api-ingress, namespace: shop},
              spec: {podSelector: {matchLabels: {app: shop, tier: api}}, policyTypes: [Ingress],
                     ingress: [{from: [{podSelector: {matchLabels: {app.kubernetes.io/instance: q1, app.kubernetes.io/name: queue}}}],
                                ports: [{protocol: TCP, port: 8080}]},
                               {from: [{podSelector: {matchLabels: {app: shop, tier: web}}}],
                                ports: [{protocol: TCP, port: 8080}]}]}}",
            // lonely's only label also selects twin: used anyway, with a note.
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy,
              metadata: {name: netward-suggest-lonely-egress, namespace: shop},
              spec: {podSelector: {matchLabels: {role: x}}, policyTypes: [Egress],
                     egress: [{to: [{podSelector: {matchLabels: {app.kubernetes.io/instance: q1, app.kubernetes.io/name: queue}}}],
                               ports: [{protocol: TCP, port: 5672}]}]}}",
        ]
        .iter()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect();
        assert_eq!(docs, expected, "{}", s.yaml);
        let notes = s.notes.join("\n");
        assert!(
            notes.contains("the labels of shop/lonely (role=x) also select twin in shop"),
            "{notes}"
        );
        assert!(
            notes.contains("shop/nolabels: the peer's pods have no labels"),
            "{notes}"
        );
        assert!(notes.contains("left out 192.0.2.1 -> shop/queue-0 TCP/5672: 1 denied (first at log:6): 192.0.2.1 is not a pod"), "{notes}");
        assert!(!s.yaml.contains("10.0.0.1") && !s.yaml.contains("192.0.2.1"));

        // A pod the manifests lack is an error naming where it was first seen.
        flows.add(
            &denied("shop/ghost", "shop/api-7d9f8b6c5d-x2x9k", 1, false, true),
            || "log:7".to_owned(),
        );
        assert_eq!(
            suggest(&flows, &cluster).unwrap_err().to_string(),
            "pod shop/ghost (first seen at log:7) is not in the manifests: its labels are needed to \
             select it (give the manifests that define it with -f, or narrow the records with filters)"
        );
    }
}
