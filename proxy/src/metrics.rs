//! Prometheus metrics (`/metrics`), with bounded cardinality: labels carry verdicts,
//! protocols, directions and policy names, never pod names or IPs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use netward_controller::kube::{Kind, SyncStatus};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `netward_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `allow`, `deny`, `audit-allow`.
    pub verdict: String,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    /// Sides enforced on this node: `egress`, `ingress`, `both`, `none`.
    pub direction: String,
    /// The deciding policy (`namespace/name`), `default-deny` (denied, no rule allows it:
    /// the first isolating policy is in `isolating`), or `none` (not isolated).
    pub policy: String,
}

/// Labels of `netward_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `to_server` or `to_client`.
    pub direction: String,
}

/// Labels of the per-resource `netward_kube_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    /// The watched resource (`pods`, `namespaces`, `nodes`, `networkpolicies`).
    resource: &'static str,
}

/// Everything the datapath counts.
#[derive(Debug)]
pub struct Metrics {
    /// Flows decided (distinct attempts: SYN retransmissions are not counted again).
    pub connections: Family<ConnLabels, Counter>,
    /// Relayed TCP connections open now.
    pub active: Gauge,
    /// Bytes relayed.
    pub bytes: Family<BytesLabels, Counter>,
    /// Time to decide one queued first packet, in seconds.
    pub verdict_seconds: Histogram,
    /// Generation of the snapshot in force.
    pub generation: AtomicU64,
    /// Unix time (s) when it was published.
    pub published_at: AtomicI64,
    /// NetworkPolicies in the snapshot that failed validation (they fail closed).
    pub invalid_policies: AtomicU64,
    /// Manifest reloads refused because the files could not be read (the previous
    /// snapshot stays in force).
    pub reload_errors: AtomicU64,
    /// Whether the rules are installed and the first complete snapshot is loaded.
    pub ready: AtomicBool,
    /// Set on SIGTERM: the process is stopping, so `/readyz` fails whatever else holds.
    pub draining: AtomicBool,
    runtime: Mutex<Option<tokio_metrics::RuntimeMonitor>>,
    /// The Kubernetes API source (`netward node`), when there is one.
    kube: OnceLock<Arc<SyncStatus>>,
    /// The mTLS tunnel, when this node takes part.
    mtls: OnceLock<MtlsMetrics>,
    /// Loops that report they are alive (`/healthz`), with their last report.
    heartbeats: Mutex<BTreeMap<&'static str, (Instant, Duration)>>,
    busy_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections: Family::default(),
            active: Gauge::default(),
            bytes: Family::default(),
            // 10 µs .. ~80 ms.
            verdict_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 14),
            ),
            generation: AtomicU64::new(0),
            published_at: AtomicI64::new(0),
            invalid_policies: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            runtime: Mutex::new(None),
            kube: OnceLock::new(),
            mtls: OnceLock::new(),
            heartbeats: Mutex::new(BTreeMap::new()),
            busy_micros: AtomicU64::new(0),
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    /// Notes a new snapshot.
    pub fn published(&self, snap: &netward_controller::Snapshot) {
        self.generation.store(snap.generation(), Ordering::Relaxed);
        self.published_at.store(now_secs(), Ordering::Relaxed);
        self.invalid_policies.store(
            (snap.invalid_policies().count() + snap.invalid_cluster_policies().count()) as u64,
            Ordering::Relaxed,
        );
    }

    /// Samples this tokio runtime's metrics at each scrape.
    pub fn watch_runtime(&self, handle: &tokio::runtime::Handle) {
        if let Ok(mut rt) = self.runtime.lock() {
            *rt = Some(tokio_metrics::RuntimeMonitor::new(handle));
        }
    }

    /// Reports the Kubernetes API source's health at each scrape (`netward_kube_*`) and
    /// makes `/readyz` wait for its initial lists. Only the first call counts.
    pub fn watch_kube(&self, status: Arc<SyncStatus>) {
        let _ = self.kube.set(status);
    }

    /// Whether `/readyz` passes: the datapath serves (rules installed, listeners up),
    /// the API source (if any) has completed its initial lists, and no drain has begun.
    /// Once synced, API trouble does not make it false: the last snapshot is enforced,
    /// and the staleness is in the metrics.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why `/readyz` fails, for its body (`None`: ready).
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining: netward is stopping")
        } else if self.kube.get().is_some_and(|s| !s.is_ready()) {
            Some("the Kubernetes API watchers have not completed their initial lists")
        } else if !self.ready.load(Ordering::Relaxed) {
            Some("the interception rules or listeners are not in place yet")
        } else {
            None
        }
    }

    /// Notes that the loop `name` is alive (see [`Metrics::stalled`]); it counts as
    /// stalled after [`crate::admin::STALL_LIMIT`] without another beat.
    pub fn beat(&self, name: &'static str) {
        self.beat_within(name, crate::admin::STALL_LIMIT);
    }

    /// Notes that the loop `name` is alive, and that it must beat again within `limit`.
    pub fn beat_within(&self, name: &'static str, limit: Duration) {
        if let Ok(mut beats) = self.heartbeats.lock() {
            beats.insert(name, (Instant::now(), limit));
        }
    }

    /// The loops that reported with [`Metrics::beat`] but not within their limit, with
    /// that limit (`/healthz` fails while any is stalled). Loops that never reported are
    /// not watched.
    pub fn stalled(&self) -> Vec<(&'static str, Duration)> {
        self.heartbeats.lock().map_or_else(
            |_| Vec::new(),
            |beats| {
                beats
                    .iter()
                    .filter(|(_, (at, limit))| at.elapsed() > *limit)
                    .map(|(name, (_, limit))| (*name, *limit))
                    .collect()
            },
        )
    }

    /// A registry with every metric, for the admin server.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("netward");
        r.register(
            "connections",
            "Flows decided, by verdict, protocol, enforced direction and deciding policy",
            self.connections.clone(),
        );
        r.register(
            "active_connections",
            "Relayed TCP connections open now",
            self.active.clone(),
        );
        r.register("bytes", "Bytes relayed", self.bytes.clone());
        r.register(
            "verdict_seconds",
            "Time to decide a queued first packet",
            self.verdict_seconds.clone(),
        );
        r.register_collector(Box::new(Atomics(self.clone())));
        r
    }

    /// Renders the Prometheus text exposition.
    pub fn encode(self: &Arc<Self>) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry()).is_err() {
            out.clear();
        }
        out
    }
}

/// What `/metrics` reads of the mTLS tunnel.
#[derive(Clone)]
pub struct MtlsMetrics {
    /// Whether the kernel offers TLS offload (reported only: the tunnel uses rustls).
    pub ktls: bool,
    /// This node's identity (its certificate's expiry).
    pub identity: crate::mtls::identity::TlsIdentity,
    /// The source side's connection pool.
    pub client: crate::mtls::tunnel::TunnelClient,
}

impl std::fmt::Debug for MtlsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsMetrics")
            .field("ktls", &self.ktls)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Reports the mTLS tunnel from now on (once).
    pub fn watch_mtls(&self, m: MtlsMetrics) {
        let _ = self.mtls.set(m);
    }
}

fn encode_mtls(enc: &mut DescriptorEncoder, m: &MtlsMetrics) -> Result<(), std::fmt::Error> {
    use crate::mesh::TUNNEL_STATS as T;
    let g = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
    gauge(
        enc,
        "tunnel_enabled",
        "1 when this node takes part in the mTLS tunnel",
        1,
    )?;
    gauge(
        enc,
        "ktls_available",
        "1 when the kernel offers TLS offload (CONFIG_TLS); the tunnel uses userspace rustls either way",
        i64::from(m.ktls),
    )?;
    let left = m
        .identity
        .not_after()
        .duration_since(SystemTime::now())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    gauge(
        enc,
        "tunnel_certificate_expiry_seconds",
        "Seconds until this node's tunnel certificate expires (0: expired)",
        left,
    )?;
    let pool = m.client.pool_stats();
    gauge(
        enc,
        "tunnel_connections",
        "Pooled TLS connections to other nodes' tunnels",
        g(pool.connections),
    )?;
    gauge(
        enc,
        "tunnel_streams",
        "Live streams on those connections",
        g(pool.live_streams),
    )?;
    counter(
        enc,
        "tunnel_handshakes",
        "TLS handshakes made toward other nodes",
        pool.handshakes,
    )?;
    for (name, help, c) in [
        (
            "tunnel_streams_opened",
            "Streams this node opened and the destination node accepted (200)",
            &T.opened,
        ),
        (
            "tunnel_open_failures",
            "Streams this node could not open: refused by the far end (400/403/503) or failed (TLS, connect, timeout); the SYN was dropped or rejected",
            &T.open_failed,
        ),
        (
            "tunnel_streams_accepted",
            "Streams this node accepted as the destination",
            &T.accepted,
        ),
        (
            "tunnel_refused",
            "Connections or streams this node refused as the destination (TLS, identity, bad request, policy, unavailable)",
            &T.refused,
        ),
        (
            "tunnel_limited",
            "Tunnel connections refused at a bound: TLS handshakes in flight, or connections from one node",
            &T.limited,
        ),
    ] {
        counter(enc, name, help, c.load(Ordering::Relaxed))?;
    }
    Ok(())
}

/// The counters kept as plain atomics elsewhere (audit, verdict queue, relay), read at scrape.
#[derive(Debug)]
struct Atomics(Arc<Metrics>);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Atomics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let audit = &crate::audit::STATS;
        let v = crate::verdict::STATS.snapshot();
        let published = m.published_at.load(Ordering::Relaxed);
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "ready",
            "1 when /readyz passes: rules installed, listeners up, first complete policy snapshot loaded, not draining",
            i64::from(m.is_ready()),
        )?;
        gauge(
            &mut enc,
            "draining",
            "1 once a SIGTERM started the drain",
            i64::from(m.draining.load(Ordering::Relaxed)),
        )?;
        if let Some(status) = m.kube.get() {
            encode_kube(&mut enc, status)?;
        }
        if let Some(mtls) = m.mtls.get() {
            encode_mtls(&mut enc, mtls)?;
        }
        gauge(
            &mut enc,
            "snapshot_generation",
            "Generation of the policy snapshot in force",
            g(m.generation.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut enc,
            "snapshot_age_seconds",
            "Seconds since the policy snapshot in force was published",
            if published == 0 {
                -1
            } else {
                now_secs() - published
            },
        )?;
        gauge(
            &mut enc,
            "policy_invalid",
            "NetworkPolicies (they isolate and allow nothing) and ClusterNetworkPolicies (they deny what their subject selects) that failed validation",
            g(m.invalid_policies.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            "policy_reload_errors",
            "Manifest reloads refused (the previous policy stays in force)",
            m.reload_errors.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_records_written",
            "Audit records written",
            audit.written.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_records_suppressed",
            "Denied attempts folded into aggregated audit records",
            audit.suppressed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_records_dropped",
            "Audit events dropped (writer behind, or write failed)",
            audit.dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_rotations",
            "Audit log rotations",
            audit.rotations.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_rotation_errors",
            "Audit log rotations that failed (retried later; records go on into the current file)",
            audit.rotation_errors.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "audit_flush_errors",
            "Audit log flushes that failed",
            audit.flush_errors.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "admin_accept_errors",
            "Admin server accept() failures (EMFILE...), each followed by a backoff",
            crate::admin::STATS.accept_errors.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "admin_connections_refused",
            "Admin server connections closed unserved: too many open at once",
            crate::admin::STATS
                .connections_refused
                .load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "verdict_packets",
            "First packets queued for a verdict (retransmissions included)",
            v.seen,
        )?;
        counter(
            &mut enc,
            "verdict_retransmissions",
            "Queued packets recognised as retransmissions of a flow just decided (denied, held, or with its upstream connected)",
            crate::datapath::RETRANSMISSIONS.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "verdict_parse_errors",
            "Queued packets that could not be parsed (dropped)",
            v.parse_errors,
        )?;
        counter(
            &mut enc,
            "verdict_queue_overflows",
            "Times the verdict socket's buffer overflowed (packets dropped by the kernel)",
            v.overflows,
        )?;
        let (queue_dropped, user_dropped) = kernel_queue_drops();
        counter(
            &mut enc,
            "verdict_kernel_queue_dropped",
            "Packets the kernel dropped because the verdict queue was full (fail closed)",
            queue_dropped,
        )?;
        counter(
            &mut enc,
            "verdict_kernel_user_dropped",
            "Packets the kernel dropped because it could not hand them to netward (fail closed)",
            user_dropped,
        )?;
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            gauge(
                &mut enc,
                "open_files_limit",
                "The process's open-file limit (RLIMIT_NOFILE, soft; netward raises it to the hard limit at start)",
                g(soft),
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "open_files",
                "File descriptors the process holds now",
                i64::try_from(dir.count()).unwrap_or(i64::MAX),
            )?;
        }
        let h = &crate::datapath::HOLD_STATS;
        gauge(
            &mut enc,
            "held_flows",
            "First packets held now: SYNs waiting for their upstream's answer, flows waiting for an unknown pod to be learned",
            g(h.held.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            "held_overflow",
            "First packets dropped because too many flows were held (in all, or from one source)",
            h.held_overflow.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "unknown_pod_denials",
            "Flows denied because an end was an address of the node's pod CIDRs that no known pod has (unknown-pod)",
            h.unknown_pod.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "upstream_refused",
            "Allowed TCP connections refused by their destination (the client was refused too)",
            h.upstream_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "upstream_failed",
            "Allowed TCP connections whose destination never answered or was unreachable (the client's SYN was dropped)",
            h.upstream_failed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "tproxy_port_refused",
            "Direct connections to the transparent listener's port, refused",
            h.tproxy_port_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "ready_upstreams_dropped",
            "Connected upstreams closed because their client's handshake did not complete in time or the map was full",
            h.ready_dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "flows_revoked",
            "UDP/SCTP/ICMP flows whose conntrack entry was deleted because a new snapshot denies them",
            h.flows_revoked.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "splice_fallbacks",
            "Relay directions that fell back from splice(2) to copying",
            crate::relay::SPLICE_FALLBACKS.load(Ordering::Relaxed),
        )?;
        if let Ok(mut guard) = m.runtime.lock()
            && let Some(rt) = guard.as_mut()
            && let Some(s) = rt.intervals().next()
        {
            gauge(
                &mut enc,
                "runtime_workers",
                "Tokio worker threads of the datapath runtime",
                i64::try_from(s.workers_count).unwrap_or(0),
            )?;
            gauge(
                &mut enc,
                "runtime_live_tasks",
                "Tokio tasks alive in the datapath runtime",
                i64::try_from(s.live_tasks_count).unwrap_or(0),
            )?;
            let busy = m.busy_micros.fetch_add(
                u64::try_from(s.total_busy_duration.as_micros()).unwrap_or(0),
                Ordering::Relaxed,
            ) + u64::try_from(s.total_busy_duration.as_micros()).unwrap_or(0);
            let c = ConstCounter::new(busy as f64 / 1e6);
            c.encode(enc.encode_descriptor(
                "runtime_busy_seconds",
                "Time the datapath runtime's workers were busy",
                None,
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn gauge_f64(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One gauge per watched resource.
fn per_resource(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl Fn(Kind) -> f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0.0_f64);
    let mut family = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for kind in Kind::ALL {
        let labels = ResourceLabels {
            resource: kind.resource(),
        };
        ConstGauge::new(value(kind)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The Kubernetes API source's figures (`netward node`).
fn encode_kube(enc: &mut DescriptorEncoder, s: &SyncStatus) -> Result<(), std::fmt::Error> {
    gauge(
        enc,
        "kube_initial_sync_done",
        "1 once every watcher completed its initial list and the first snapshot was published",
        i64::from(s.is_ready()),
    )?;
    per_resource(
        enc,
        "kube_staleness_seconds",
        "How long this resource's view may lag the API: 0 while its watch is healthy, else seconds since it last succeeded",
        |k| s.kind_staleness(k).as_secs_f64(),
    )?;
    per_resource(
        enc,
        "kube_last_success_age_seconds",
        "Seconds since the last successful API response or event for this resource (-1: never); grows on a quiet healthy watch too",
        |k| s.since_ok(k).map_or(-1.0, |d| d.as_secs_f64()),
    )?;
    gauge_f64(
        enc,
        "kube_staleness_max_seconds",
        "How long the enforced policy may lag the API (the largest per-resource staleness; 0 when every watch is healthy)",
        s.staleness().as_secs_f64(),
    )?;
    gauge(
        enc,
        "kube_last_sync_timestamp_seconds",
        "Unix time up to which the enforced policy is known to match the API (0 before the initial sync)",
        i64::try_from(s.last_successful_sync_unix()).unwrap_or(i64::MAX),
    )?;
    counter(
        enc,
        "kube_relists",
        "Relists after the initial one (410 Gone, watcher restarts)",
        s.relists(),
    )?;
    counter(
        enc,
        "kube_watch_errors",
        "Failed API lists and watches (retried with backoff)",
        s.errors(),
    )?;
    counter(
        enc,
        "kube_events",
        "Watch events received (every resource)",
        s.events(),
    )?;
    counter(
        enc,
        "kube_snapshots",
        "Policy snapshots published from the API",
        s.snapshots(),
    )?;
    counter(
        enc,
        "kube_full_compiles",
        "Snapshots built by a full compile (the others were incremental)",
        s.full_compiles(),
    )
}

/// The kernel's drop counters of netward's queues, from /proc/net/netfilter/nfnetlink_queue
/// (fields: queue, portid, waiting, mode, range, queue_dropped, user_dropped, id, 1).
fn kernel_queue_drops() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue") else {
        return (0, 0);
    };
    text.lines().fold((0, 0), |(q, u), line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (
            q + f.get(5).copied().unwrap_or(0),
            u + f.get(6).copied().unwrap_or(0),
        )
    })
}
