//! The audit log: one JSON line per connection or flow, allowed or denied, naming the
//! policy and rule that decided it. Its own stream (a rotated file or stdout), written
//! by a bounded, asynchronous writer that never blocks the datapath and counts
//! everything it sheds. The schema (`"v":1`) is documented in `docs/audit-log.md`.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use netward_controller::render::{DecisionReport, SideReport};
use netward_controller::{Endpoint, Protocol, Snapshot, Verdict};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The schema version written in every record.
pub const VERSION: u32 = 1;

/// One end of a flow, as the audit record names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Address.
    pub ip: String,
    /// Port (0 when the protocol has none).
    pub port: u16,
    /// The pod's namespace, when the address is a pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A stable digest of the pod's labels (FNV-1a 64 over sorted `key=value\n` lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// The pod's node, or the node this address belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The Service a connection was addressed to, before the service proxy's DNAT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// `namespace/name` (empty when the ClusterIP is unknown to the snapshot).
    pub name: String,
    /// The ClusterIP.
    pub ip: String,
    /// The Service port.
    pub port: u16,
}

/// Bytes moved, for allowed TCP connections at close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// From the client to the server.
    pub to_server: u64,
    /// From the server to the client.
    pub to_client: u64,
}

/// One audit record: the stable, documented schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Schema version: 1.
    pub v: u32,
    /// RFC 3339 time, UTC, millisecond precision.
    pub time: String,
    /// The node whose netward wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `close` (an allowed TCP connection ended), `open` (it began; optional),
    /// `flow` (an allowed UDP/SCTP flow began), or `deny`.
    pub event: String,
    /// `allow`, `deny` or `audit-allow`.
    pub verdict: String,
    /// Which sides this node enforced: `egress`, `ingress`, `both`, `none`.
    pub direction: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The client.
    pub src: Peer,
    /// The server (after Service DNAT: the backend).
    pub dst: Peer,
    /// The Service, when the client addressed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The source pod's egress decision.
    pub egress: SideReport,
    /// The destination pod's ingress decision.
    pub ingress: SideReport,
    /// The policy snapshot generation that decided.
    pub generation: u64,
    /// How many flows this record stands for: 1, or the repeats a `deny` record aggregates.
    pub count: u64,
    /// For aggregated deny records: when the first and last of them were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    /// See `first_seen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Bytes each way (`close`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Bytes>,
    /// Connection duration in milliseconds (`close`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Who ended it: `client`, `server`, or `netward` (idle timeout, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// How: `fin`, `rst`, `idle-timeout`, `revoked`, `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
    /// Whether the connection crossed between nodes inside the mTLS tunnel.
    #[serde(default)]
    pub mtls: bool,
    /// The other node of the tunnel, from its certificate (the destination node at the
    /// source, the source node at the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
    /// What went wrong beyond the policy decision: a tunnel refusal by the far end, a
    /// tunnel that could not be opened, or a refused TLS handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Formats a time as RFC 3339 UTC with milliseconds, always three digits and truncated
/// (`2026-11-23T10:12:03.456Z`): the audit records' format. Before 1970: the epoch; past
/// jiff's range (year 9999): its end.
pub fn rfc3339(t: SystemTime) -> String {
    const MILLIS: jiff::fmt::temporal::DateTimePrinter =
        jiff::fmt::temporal::DateTimePrinter::new().precision(Some(3));
    let t =
        jiff::Timestamp::try_from(t.max(SystemTime::UNIX_EPOCH)).unwrap_or(jiff::Timestamp::MAX);
    MILLIS.timestamp_to_string(&t)
}

/// The FNV-1a 64 digest of a pod's labels, as 16 hex digits.
pub fn labels_digest(labels: &netward_controller::model::Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k
            .bytes()
            .chain(std::iter::once(b'='))
            .chain(v.bytes())
            .chain(std::iter::once(b'\n'))
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Names one end of a flow from the snapshot.
pub fn peer(snap: &Snapshot, ep: &Endpoint, addr: SocketAddr) -> Peer {
    let mut p = Peer {
        ip: addr.ip().to_string(),
        port: addr.port(),
        ..Peer::default()
    };
    if let Some(id) = ep.pod {
        let pod = snap.pod(id);
        p.namespace = Some(pod.namespace.clone());
        p.pod = Some(pod.name.clone());
        p.labels = Some(labels_digest(&pod.labels));
        p.node.clone_from(&pod.node);
    } else if let Some(node) = snap.node_for_ip(addr.ip()) {
        p.node = Some(node.to_owned());
    }
    p
}

/// What the datapath hands the audit writer.
pub enum Event {
    /// A finished or starting record, ready to write.
    Record(Box<Record>),
    /// A denied attempt (the datapath already dropped SYN retransmissions of it).
    Deny(Deny),
}

/// A denied attempt. Its record is built by the writer, and only if it is written:
/// under a flood most attempts are only counted, and the verdict task must not spend
/// its time naming them.
pub struct Deny {
    /// What attempts are aggregated by: protocol, source IP, destination IP and port.
    pub key: (Protocol, IpAddr, IpAddr, u16),
    /// When it was denied.
    pub at: SystemTime,
    /// Builds the record.
    pub make: Box<dyn FnOnce() -> Record + Send>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Record(r) => f.debug_tuple("Record").field(r).finish(),
            Event::Deny(d) => f.debug_struct("Deny").field("key", &d.key).finish(),
        }
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records written to the stream.
    pub written: AtomicU64,
    /// Denied attempts folded into an aggregated record (not written on their own).
    pub suppressed: AtomicU64,
    /// Events dropped because the queue to the writer was full, or the write failed.
    pub dropped: AtomicU64,
    /// Rotations done.
    pub rotations: AtomicU64,
    /// Rotations that failed: nothing is renamed before the next file is open, the
    /// records go on into the current file, and the next attempt waits a backoff.
    pub rotation_errors: AtomicU64,
    /// Flushes of the stream that failed (the buffered records may be lost).
    pub flush_errors: AtomicU64,
}

/// The process's audit counters.
pub static STATS: Stats = Stats {
    written: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    rotations: AtomicU64::new(0),
    rotation_errors: AtomicU64::new(0),
    flush_errors: AtomicU64::new(0),
};

/// The datapath's handle on the audit stream: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: Option<mpsc::Sender<Event>>,
    node: Option<Arc<str>>,
}

impl Sink {
    /// A sink that writes nothing (no audit log configured).
    pub fn disabled() -> Sink {
        Sink {
            tx: None,
            node: None,
        }
    }

    /// Whether records go anywhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an event; if the writer is behind, drops it and counts it.
    pub fn send(&self, mut event: Event) {
        let Some(tx) = &self.tx else { return };
        if let Event::Record(r) = &mut event
            && r.node.is_none()
        {
            r.node = self.node.as_deref().map(str::to_owned);
        }
        if tx.try_send(event).is_err() {
            STATS.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the records go.
#[derive(Clone, Debug)]
pub enum Output {
    /// A file, rotated by size: FILE, FILE.1, ... FILE.keep.
    File {
        /// The live file.
        path: PathBuf,
        /// Rotate when it would grow past this many bytes.
        max_bytes: u64,
        /// Rotated files kept.
        keep: usize,
    },
    /// Standard output.
    Stdout,
}

/// How the writer works.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to write.
    pub output: Output,
    /// Events queued for the writer at most; more are dropped and counted.
    pub queue: usize,
    /// Deny records for one (protocol, source IP, destination IP, port) are aggregated
    /// over this window: the first is written at once, the rest in one record with a count.
    pub deny_window: Duration,
    /// Aggregation keys tracked at most; beyond, deny events are dropped and counted.
    pub max_keys: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            output: Output::Stdout,
            queue: 16_384,
            deny_window: Duration::from_secs(10),
            max_keys: 65_536,
        }
    }
}

/// Starts the writer on its own thread; returns the datapath's sink. The writer ends
/// (after flushing every pending aggregate) when every sink clone is dropped.
pub fn start(
    cfg: Config,
    node: Option<&str>,
) -> std::io::Result<(Sink, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let mut out = Writer::open(&cfg.output)?;
    out.node = node.map(str::to_owned);
    let handle = std::thread::Builder::new()
        .name("netward-audit".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                return;
            };
            rt.block_on(write_loop(rx, &mut out, &cfg));
        })?;
    Ok((
        Sink {
            tx: Some(tx),
            node: node.map(Arc::from),
        },
        handle,
    ))
}

/// Aggregation state for one (protocol, source IP, destination IP, port).
struct Agg {
    started: Instant,
    /// New attempts since the first record.
    suppressed: u64,
    first: Option<SystemTime>,
    last: Option<Deny>,
}

type Key = (Protocol, IpAddr, IpAddr, u16);

/// How long the writer sleeps between drains of its queue while events come; it backs
/// off to [`DRAIN_IDLE`] while none do. Polled, not woken: a record costs the data
/// path one queue push (no wake-up of this thread) and the writer one `write` per
/// batch. A record reaches the output at most this long (or [`DRAIN_IDLE`]) after it
/// is queued.
pub const DRAIN_BUSY: Duration = Duration::from_millis(20);

/// The writer's longest sleep between drains, when nothing came.
pub const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// How often aggregated deny windows are checked for records to write.
const AGGREGATE_EVERY: Duration = Duration::from_millis(500);

async fn write_loop(mut rx: mpsc::Receiver<Event>, out: &mut Writer, cfg: &Config) {
    let mut aggs: HashMap<Key, Agg> = HashMap::new();
    let mut pause = DRAIN_BUSY;
    let mut aggregated = Instant::now();
    let mut open = true;
    while open {
        tokio::time::sleep(pause).await;
        let mut got = 0usize;
        loop {
            match rx.try_recv() {
                Ok(Event::Record(r)) => out.write(&r),
                Ok(Event::Deny(r)) => deny(&mut aggs, r, out, cfg),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
            got += 1;
        }
        pause = if got > 0 {
            DRAIN_BUSY
        } else {
            (pause * 2).min(DRAIN_IDLE)
        };
        if aggregated.elapsed() >= AGGREGATE_EVERY {
            flush(&mut aggs, out, cfg.deny_window, false);
            aggregated = Instant::now();
        } else if got > 0 {
            out.flush();
        }
    }
    flush(&mut aggs, out, cfg.deny_window, true);
    out.flush();
}

fn deny(aggs: &mut HashMap<Key, Agg>, d: Deny, out: &mut Writer, cfg: &Config) {
    match aggs.get_mut(&d.key) {
        Some(a) if a.started.elapsed() < cfg.deny_window => {
            a.suppressed += 1;
            STATS.suppressed.fetch_add(1, Ordering::Relaxed);
            if a.first.is_none() {
                a.first = Some(d.at);
            }
            a.last = Some(d);
        }
        _ => {
            if aggs.len() >= cfg.max_keys && !aggs.contains_key(&d.key) {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let key = d.key;
            let at = d.at;
            let mut r = (d.make)();
            r.time = rfc3339(at);
            out.write(&r);
            aggs.insert(
                key,
                Agg {
                    started: Instant::now(),
                    suppressed: 0,
                    first: None,
                    last: None,
                },
            );
        }
    }
}

/// Writes the aggregated record of every window that ended (or of all, at shutdown).
fn flush(aggs: &mut HashMap<Key, Agg>, out: &mut Writer, window: Duration, all: bool) {
    aggs.retain(|_, a| {
        if !all && a.started.elapsed() < window {
            return true;
        }
        if let Some(last) = a.last.take()
            && a.suppressed > 0
        {
            let at = last.at;
            let mut r = (last.make)();
            r.count = a.suppressed;
            r.time = rfc3339(at);
            r.first_seen = a.first.take().map(rfc3339);
            r.last_seen = Some(rfc3339(at));
            out.write(&r);
            STATS.suppressed.fetch_sub(a.suppressed, Ordering::Relaxed);
        }
        false
    });
    out.flush();
}

/// The output stream, with size-based rotation that never loses a line: a line is
/// written whole to the file it starts in, and rotation happens between lines.
struct Writer {
    node: Option<String>,
    sink: Box<dyn Write + Send>,
    output: Output,
    size: u64,
    buf: Vec<u8>,
    /// Opens a file for appending (a seam: the tests make it fail).
    open_file: fn(&Path) -> std::io::Result<std::fs::File>,
    /// After a failed rotation, how long until the next attempt.
    rotate_retry: Duration,
    /// No rotation is attempted before this instant (set by a failure).
    retry_at: Option<Instant>,
}

/// After a failed rotation, the writer waits this long before trying again, so that a
/// persistent failure costs one attempt (and one lost oldest file at worst) per minute.
pub const ROTATE_RETRY: Duration = Duration::from_secs(60);

/// The writer's output buffer: one `write` carries many records.
const WRITE_BUFFER: usize = 64 * 1024;

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Writer {
    fn open(output: &Output) -> std::io::Result<Writer> {
        let (sink, size): (Box<dyn Write + Send>, u64) = match output {
            // Buffered: the writer flushes once per drain, not once per line.
            Output::Stdout => (
                Box::new(std::io::BufWriter::with_capacity(
                    WRITE_BUFFER,
                    std::io::stdout(),
                )),
                0,
            ),
            Output::File { path, .. } => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                (
                    Box::new(std::io::BufWriter::with_capacity(WRITE_BUFFER, f)),
                    size,
                )
            }
        };
        Ok(Writer {
            node: None,
            sink,
            output: output.clone(),
            size,
            buf: Vec::with_capacity(1024),
            open_file: open_append,
            rotate_retry: ROTATE_RETRY,
            retry_at: None,
        })
    }

    fn write(&mut self, r: &Record) {
        if r.node.is_none() && self.node.is_some() {
            let mut r = r.clone();
            r.node.clone_from(&self.node);
            return self.write(&r);
        }
        self.buf.clear();
        if serde_json::to_writer(&mut self.buf, r).is_err() {
            STATS.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.buf.push(b'\n');
        if let Output::File {
            path,
            max_bytes,
            keep,
        } = &self.output
            && self.size > 0
            && self.size + self.buf.len() as u64 > *max_bytes
            && self.retry_at.is_none_or(|t| Instant::now() >= t)
        {
            let (path, keep) = (path.clone(), *keep);
            match self.rotate(&path, keep) {
                Ok(()) => self.retry_at = None,
                Err(e) => {
                    STATS.rotation_errors.fetch_add(1, Ordering::Relaxed);
                    self.retry_at = Some(Instant::now() + self.rotate_retry);
                    tracing::warn!(
                        error = %e,
                        path = %path.display(),
                        retry_in_s = self.rotate_retry.as_secs(),
                        "audit log rotation failed; writing on in the current file"
                    );
                }
            }
        }
        match self.sink.write_all(&self.buf) {
            Ok(()) => {
                self.size += self.buf.len() as u64;
                STATS.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                STATS.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Rotates FILE to FILE.1 (and FILE.i to FILE.i+1, the oldest dropped). The next
    /// file is opened first, as FILE.new: if that fails nothing has moved, and the
    /// caller writes on into the current file. FILE.new is never removed (it may hold
    /// records after a half-done rotation); the next rotation appends to it.
    fn rotate(&mut self, path: &Path, keep: usize) -> std::io::Result<()> {
        if let Err(e) = self.sink.flush() {
            STATS.flush_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let name = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
        let fresh = PathBuf::from(format!("{}.new", path.display()));
        let f = (self.open_file)(&fresh)?;
        if keep == 0 {
            if path.exists() {
                std::fs::remove_file(path)?;
            }
        } else {
            for i in (1..keep).rev() {
                if name(i).exists() {
                    std::fs::rename(name(i), name(i + 1))?;
                }
            }
            if path.exists() {
                std::fs::rename(path, name(1))?;
            }
        }
        self.sink = Box::new(std::io::BufWriter::with_capacity(WRITE_BUFFER, f));
        self.size = fresh.metadata().map(|m| m.len()).unwrap_or(0);
        STATS.rotations.fetch_add(1, Ordering::Relaxed);
        std::fs::rename(&fresh, path)
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.flush() {
            STATS.flush_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "audit log flush failed");
        }
    }
}

/// Builds a record for a decided flow.
#[allow(clippy::too_many_arguments)] // the parts of one record, gathered by the datapath
pub fn record(
    snap: &Snapshot,
    event: &str,
    report: &DecisionReport,
    direction: &str,
    protocol: Protocol,
    (src_ep, src): (&Endpoint, SocketAddr),
    (dst_ep, dst): (&Endpoint, SocketAddr),
    service: Option<ServiceRef>,
) -> Record {
    let verdict = match report.verdict {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::AuditAllow => "audit-allow",
    };
    Record {
        v: VERSION,
        time: rfc3339(SystemTime::now()),
        node: None,
        event: event.to_owned(),
        verdict: verdict.to_owned(),
        direction: direction.to_owned(),
        protocol: protocol.as_str().to_owned(),
        src: peer(snap, src_ep, src),
        dst: peer(snap, dst_ep, dst),
        service,
        egress: report.egress.clone(),
        ingress: report.ingress.clone(),
        generation: snap.generation(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_428_723_456);
        assert_eq!(rfc3339(t), "2026-11-23T10:12:03.456Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    /// The audit log's `time`, `first_seen` and `last_seen`, byte for byte as the
    /// hand-written formatter wrote them before jiff (pinned against it): milliseconds
    /// always three digits and truncated (never rounded), `Z`, before 1970 the epoch.
    #[test]
    fn rfc3339_is_byte_for_byte_the_audit_format() {
        let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let cases = [
            (at(0, 0), "1970-01-01T00:00:00.000Z"),
            (at(0, 1), "1970-01-01T00:00:00.000Z"),
            (at(0, 999_999), "1970-01-01T00:00:00.000Z"),
            (at(0, 1_000_000), "1970-01-01T00:00:00.001Z"),
            (at(946_684_799, 999_999_999), "1999-12-31T23:59:59.999Z"),
            (at(946_684_800, 0), "2000-01-01T00:00:00.000Z"),
            (at(951_825_600, 1_000_000), "2000-02-29T12:00:00.001Z"),
            (at(1_709_251_199, 999_000_000), "2024-02-29T23:59:59.999Z"),
            (at(1_709_251_200, 0), "2024-03-01T00:00:00.000Z"),
            (at(1_795_428_723, 456_789_000), "2026-11-23T10:12:03.456Z"),
            (at(1_798_761_599, 500_000_000), "2026-12-31T23:59:59.500Z"),
            (at(1_798_761_600, 50_000_000), "2027-01-01T00:00:00.050Z"),
            (at(2_147_483_648, 0), "2038-01-19T03:14:08.000Z"),
            (at(4_107_542_399, 999_999_999), "2100-02-28T23:59:59.999Z"),
            (at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z"),
            (
                SystemTime::UNIX_EPOCH - Duration::from_millis(1),
                "1970-01-01T00:00:00.000Z",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(rfc3339(t), want, "{t:?}");
        }
    }

    #[test]
    fn labels_digest_is_stable_and_order_free() {
        let a: netward_controller::model::Labels = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        assert_eq!(labels_digest(&a), labels_digest(&a.clone()));
        let b: netward_controller::model::Labels = [("app".to_owned(), "web".to_owned())].into();
        assert_ne!(labels_digest(&a), labels_digest(&b));
        assert_eq!(labels_digest(&a).len(), 16);
    }

    fn rec(generation: u64) -> Record {
        serde_json::from_value(serde_json::json!({
            "v": 1, "time": "2026-12-03T12:00:00.000Z", "event": "close", "verdict": "allow",
            "direction": "both", "protocol": "TCP",
            "src": {"ip": "198.18.0.1", "port": 40000}, "dst": {"ip": "198.18.0.2", "port": 80},
            "egress": {"result": "not-pod"}, "ingress": {"result": "not-pod"},
            "generation": generation, "count": 1,
        }))
        .unwrap()
    }

    /// The generations of the records in a file, in order (empty if there is no file).
    fn gens(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().generation)
            .collect()
    }

    fn cannot_open(path: &Path) -> std::io::Result<std::fs::File> {
        Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("test: cannot open {}", path.display()),
        ))
    }

    #[test]
    fn a_failed_open_during_rotation_keeps_history_and_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let name = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
        let line = serde_json::to_vec(&rec(10)).unwrap().len() as u64 + 1;
        let output = Output::File {
            path: path.clone(),
            max_bytes: 2 * line,
            keep: 3,
        };
        let mut w = Writer::open(&output).unwrap();
        w.rotate_retry = Duration::from_millis(200);
        for g in 10..=15 {
            w.write(&rec(g));
        }
        w.flush();
        assert_eq!(
            (gens(&name(2)), gens(&name(1)), gens(&path)),
            (vec![10, 11], vec![12, 13], vec![14, 15])
        );
        let errors_before = STATS.rotation_errors.load(Ordering::Relaxed);
        w.open_file = cannot_open;
        for g in 16..=25 {
            w.write(&rec(g));
        }
        w.flush();
        assert_eq!(
            (gens(&name(3)), gens(&name(2)), gens(&name(1))),
            (vec![], vec![10, 11], vec![12, 13]),
            "a failed rotation shifted the history"
        );
        assert_eq!(
            gens(&path),
            (14..=25).collect::<Vec<_>>(),
            "records after the failed rotation go on in the live file"
        );
        let failed = STATS.rotation_errors.load(Ordering::Relaxed) - errors_before;
        assert_eq!(
            failed, 1,
            "one failure, then no retry until the backoff passes"
        );
        // Once the open works again (after the backoff), rotation resumes.
        w.open_file = open_append;
        std::thread::sleep(Duration::from_millis(250));
        w.write(&rec(26));
        w.flush();
        assert_eq!(
            (gens(&name(3)), gens(&name(2)), gens(&name(1)), gens(&path)),
            (
                vec![10, 11],
                vec![12, 13],
                (14..=25).collect::<Vec<_>>(),
                vec![26]
            )
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("audit.log") || n.ends_with(".new"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("test: broken"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("test: broken"))
        }
    }

    #[test]
    fn flush_errors_are_counted() {
        let mut w = Writer::open(&Output::Stdout).unwrap();
        w.sink = Box::new(Broken);
        let before = STATS.flush_errors.load(Ordering::Relaxed);
        w.flush();
        assert_eq!(STATS.flush_errors.load(Ordering::Relaxed) - before, 1);
    }
}
