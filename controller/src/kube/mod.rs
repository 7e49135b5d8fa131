//! The Kubernetes API source of `netward node`: watchers on Namespaces, Nodes, Pods,
//! NetworkPolicies and ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`; its
//! CRD must be installed, `deploy/crds/`: until it can be listed the node agent is not
//! ready and denies every new flow) that feed the same [`Cluster`] → [`Snapshot::compile`] as the
//! manifest files.
//!
//! - Objects are converted to the engine's model on every event and the k8s objects
//!   dropped: no reflector store keeps whole API objects.
//! - The first snapshot is published only once every watcher has finished its initial
//!   list (`InitDone`); until then the channel holds [`Snapshot::not_ready`], which the
//!   datapath treats as "deny every new flow".
//! - Changes are batched: the first change after a publish starts a [`Options::debounce`]
//!   window, and everything that arrives in it becomes one snapshot (pod-only batches
//!   are applied with [`Snapshot::with_pod`], others recompile).
//! - API trouble (dropped watches, 410 Gone relists, an unreachable server) never
//!   clears the policy: the last snapshot stays enforced, watchers back off with
//!   jitter (kube-runtime's default, client-go's parameters), and [`SyncStatus`]
//!   reports how stale it may be.

#[cfg(feature = "fake-api")]
pub mod fake;
pub mod signer_api;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, ObjectKey};
use crate::cluster_policy::{self, ClusterNetworkPolicy};
use crate::model::{Namespace, NetworkPolicy, Node, Pod};
use crate::snapshot::Snapshot;

/// Every resource the watchers list and watch, as `(apiGroup, resource)`: exactly what
/// the ClusterRole in `deploy/rbac.yaml` grants (get, list, watch), checked by a test.
pub const WATCHED: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "nodes"),
    ("", "pods"),
    ("networking.k8s.io", "networkpolicies"),
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
];

/// Errors of the API source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file given could not be read or used.
    #[error("cannot use the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither `$KUBECONFIG`/`~/.kube/config` nor the in-cluster service account works.
    #[error(
        "no Kubernetes API configuration: {0} (in a pod, check the ServiceAccount token mount; elsewhere pass --kubeconfig)"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration (TLS material, proxy).
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The watched resources, in [`WATCHED`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `namespaces`.
    Namespace,
    /// `nodes`.
    Node,
    /// `pods`.
    Pod,
    /// `networking.k8s.io/networkpolicies`.
    NetworkPolicy,
    /// `policy.networking.k8s.io/clusternetworkpolicies` (v1alpha2).
    ClusterNetworkPolicy,
}

impl Kind {
    /// Every kind, in [`WATCHED`] order.
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The plural resource name (the last segment of its list URL).
    pub fn resource(self) -> &'static str {
        WATCHED[self.index()].1
    }

    /// Which kind a request path lists or watches (`/api/v1/pods`,
    /// `/apis/networking.k8s.io/v1/networkpolicies`, namespaced forms too).
    pub fn from_path(path: &str) -> Option<Kind> {
        let last = path.trim_end_matches('/').rsplit('/').next()?;
        Kind::ALL.into_iter().find(|k| k.resource() == last)
    }
}

/// How healthy the API source is: shared with the health and metrics endpoints.
/// All counters only grow; times are Unix seconds (0: never).
#[derive(Debug)]
pub struct SyncStatus {
    started: Instant,
    started_unix: u64,
    ready: AtomicBool,
    /// Per kind: ms since `started` of the last successful API response or event (+1, 0 = never).
    last_ok_ms: [AtomicU64; 5],
    /// Per kind: ms since `started` of the last error (+1, 0 = never).
    last_error_ms: [AtomicU64; 5],
    relists: AtomicU64,
    errors: AtomicU64,
    events: AtomicU64,
    snapshots: AtomicU64,
    full_compiles: AtomicU64,
}

impl Default for SyncStatus {
    fn default() -> SyncStatus {
        SyncStatus::new()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SyncStatus {
    /// A status for a source that has not synced yet.
    pub fn new() -> SyncStatus {
        SyncStatus {
            started: Instant::now(),
            started_unix: unix_now(),
            ready: AtomicBool::new(false),
            last_ok_ms: Default::default(),
            last_error_ms: Default::default(),
            relists: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            events: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            full_compiles: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Whether the first complete snapshot has been published (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records a successful response or event for a kind; logs a recovery.
    pub fn note_ok(&self, kind: Kind) {
        let now = self.now_ms();
        let before = self.last_ok_ms[kind.index()].swap(now, Ordering::AcqRel);
        let err = self.last_error_ms[kind.index()].load(Ordering::Acquire);
        if err != 0 && err >= before {
            info!(
                resource = kind.resource(),
                stale_ms = now.saturating_sub(before),
                "API watch recovered"
            );
        }
    }

    /// Records an error for a kind.
    pub fn note_error(&self, kind: Kind) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms[kind.index()].store(self.now_ms(), Ordering::Release);
    }

    /// The kinds whose last contact with the API failed.
    pub fn failing(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| {
                self.last_error_ms[k.index()].load(Ordering::Acquire)
                    > self.last_ok_ms[k.index()].load(Ordering::Acquire)
            })
            .collect()
    }

    /// How long the enforced policy may lag the API: zero while every watch is
    /// healthy, otherwise the time since the failing watches last succeeded (since the
    /// start, before the first sync).
    pub fn staleness(&self) -> Duration {
        let now = self.now_ms();
        let stale_since = Kind::ALL
            .into_iter()
            .filter_map(|k| {
                let ok = self.last_ok_ms[k.index()].load(Ordering::Acquire);
                let err = self.last_error_ms[k.index()].load(Ordering::Acquire);
                (err > ok || ok == 0).then_some(ok)
            })
            .min();
        match stale_since {
            Some(since) if self.is_ready() || since > 0 => {
                Duration::from_millis(now.saturating_sub(since.max(1)))
            }
            Some(_) => self.started.elapsed(),
            None => Duration::ZERO,
        }
    }

    /// Per kind: the time since its last successful API response or event (`None`:
    /// never). A healthy but quiet watch also ages here (until its next event or
    /// re-established watch): [`SyncStatus::kind_staleness`] is the alarm signal.
    pub fn since_ok(&self, kind: Kind) -> Option<Duration> {
        let ok = self.last_ok_ms[kind.index()].load(Ordering::Acquire);
        (ok != 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(ok)))
    }

    /// Per kind: how long its view may lag the API: zero while its watch is healthy,
    /// otherwise the time since it last succeeded (since the start if it never did).
    pub fn kind_staleness(&self, kind: Kind) -> Duration {
        let ok = self.last_ok_ms[kind.index()].load(Ordering::Acquire);
        let err = self.last_error_ms[kind.index()].load(Ordering::Acquire);
        if ok == 0 {
            self.started.elapsed()
        } else if err > ok {
            Duration::from_millis(self.now_ms().saturating_sub(ok))
        } else {
            Duration::ZERO
        }
    }

    /// Unix time (seconds) up to which the enforced policy is known to match the API.
    pub fn last_successful_sync_unix(&self) -> u64 {
        if !self.is_ready() {
            return 0;
        }
        let stale = self.staleness().as_secs();
        unix_now().saturating_sub(stale).max(self.started_unix)
    }

    /// Relists after the initial one (410 Gone, restarts).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Watch and list errors.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Watch events received (all kinds).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Snapshots published.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Snapshots built by a full compile (the rest were incremental).
    pub fn full_compiles(&self) -> u64 {
        self.full_compiles.load(Ordering::Relaxed)
    }
}

/// How the source runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long after the first change of a batch the snapshot is rebuilt.
    pub debounce: Duration,
    /// Up to this many pod changes in a batch (and nothing else) are applied
    /// incrementally; more trigger a full compile.
    pub incremental_max: usize,
    /// After this many incremental updates, the next batch recompiles (drops tombstones).
    pub compact_after: usize,
    /// How often staleness is logged while a watch is failing.
    pub stale_log_every: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            debounce: Duration::from_millis(100),
            incremental_max: 32,
            compact_after: 512,
            stale_log_every: Duration::from_secs(30),
        }
    }
}

/// Builds a client from a kubeconfig file, or else `$KUBECONFIG`, `~/.kube/config` or
/// the in-cluster service account; every response is reported to `status`.
pub async fn client(kubeconfig: Option<&Path>, status: &Arc<SyncStatus>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    let builder = kube::client::ClientBuilder::try_from(config).map_err(Error::Client)?;
    Ok(builder.with_layer(&ObserveLayer(status.clone())).build())
}

/// A tower layer that reports successful API responses per resource: a watch that was
/// re-established yields no event, but its `200 OK` shows the source is in sync again.
#[derive(Clone)]
struct ObserveLayer(Arc<SyncStatus>);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            status: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Observe<S> {
    inner: S,
    status: Arc<SyncStatus>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let kind = Kind::from_path(req.uri().path());
        let status = self.status.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let (Some(kind), Ok(resp)) = (kind, &res)
                && resp.status().is_success()
            {
                status.note_ok(kind);
            }
            res
        })
    }
}

/// One watched object, converted to the model.
#[derive(Debug)]
enum Obj {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Policy(NetworkPolicy),
    ClusterPolicy(ClusterNetworkPolicy),
    /// Could not be converted: treated as absent (a pod that cannot be parsed cannot be
    /// enforced, and its IPs are not diverted).
    Invalid(ObjectKey),
}

/// A watcher event, converted.
#[derive(Debug)]
enum Change {
    Init,
    InitApply(Obj),
    InitDone,
    Apply(Obj),
    Delete(ObjectKey),
}

fn meta_key(meta: &kube::core::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn convert_namespace(ns: &core::Namespace) -> Obj {
    match Namespace::from_api(ns) {
        Ok(n) => Obj::Namespace(n),
        Err(errors) => {
            let name = ns.metadata.name.clone().unwrap_or_default();
            warn!(namespace = %name, errors = ?errors, "invalid Namespace: only its name label is used");
            if name.is_empty() {
                Obj::Invalid(meta_key(&ns.metadata))
            } else {
                Obj::Namespace(Namespace::fallback(&name, ns.metadata.labels.as_ref()))
            }
        }
    }
}

fn convert_node(node: &core::Node) -> Obj {
    match Node::from_api(node) {
        Ok(n) => Obj::Node(n),
        Err(errors) => {
            warn!(node = ?node.metadata.name, errors = ?errors, "invalid Node: its addresses are ignored");
            Obj::Invalid(meta_key(&node.metadata))
        }
    }
}

fn convert_pod(pod: &core::Pod) -> Obj {
    match Pod::from_api(pod) {
        Ok(p) => Obj::Pod(p),
        Err(errors) => {
            warn!(pod = ?meta_key(&pod.metadata), errors = ?errors, "invalid Pod: not a policy endpoint");
            Obj::Invalid(meta_key(&pod.metadata))
        }
    }
}

fn convert_policy(np: &net::NetworkPolicy) -> Obj {
    let p = NetworkPolicy::from_api(np);
    if !p.errors.is_empty() {
        let errors: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        warn!(policy.name = %p.key(), errors = ?errors, "invalid NetworkPolicy: it isolates the pods it selects and allows nothing");
    }
    Obj::Policy(p)
}

fn convert_cluster_policy(cnp: &cluster_policy::api::ClusterNetworkPolicy) -> Obj {
    let p = ClusterNetworkPolicy::from_api(cnp);
    if !p.errors.is_empty() {
        let errors: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        warn!(policy.name = %p.name, errors = ?errors, "invalid ClusterNetworkPolicy: it fails closed (an invalid rule denies all or matches nothing; an invalid object denies what its subject selects)");
    }
    Obj::ClusterPolicy(p)
}

type Item = (Kind, std::result::Result<Change, watcher::Error>);

fn stream<K>(client: &Client, kind: Kind, convert: fn(&K) -> Obj) -> BoxStream<'static, Item>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    cluster_stream(Api::<K>::all(client.clone()), kind, convert)
}

fn namespaced_stream<K>(
    client: &Client,
    kind: Kind,
    convert: fn(&K) -> Obj,
) -> BoxStream<'static, Item>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    cluster_stream(Api::<K>::all(client.clone()), kind, convert)
}

fn cluster_stream<K>(api: Api<K>, kind: Kind, convert: fn(&K) -> Obj) -> BoxStream<'static, Item>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |r| {
            let change = r.map(|ev| match ev {
                Event::Init => Change::Init,
                Event::InitApply(o) => Change::InitApply(convert(&o)),
                Event::InitDone => Change::InitDone,
                Event::Apply(o) => Change::Apply(convert(&o)),
                Event::Delete(o) => Change::Delete(meta_key(o.meta())),
            });
            (kind, change)
        })
        .boxed()
}

/// The API streams of every watched kind.
fn api_streams(client: &Client) -> SelectAll<BoxStream<'static, Item>> {
    futures::stream::select_all([
        stream::<core::Namespace>(client, Kind::Namespace, convert_namespace),
        stream::<core::Node>(client, Kind::Node, convert_node),
        namespaced_stream::<core::Pod>(client, Kind::Pod, convert_pod),
        namespaced_stream::<net::NetworkPolicy>(client, Kind::NetworkPolicy, convert_policy),
        stream::<cluster_policy::api::ClusterNetworkPolicy>(
            client,
            Kind::ClusterNetworkPolicy,
            convert_cluster_policy,
        ),
    ])
}

/// What changed since the last published snapshot.
#[derive(Debug, Default)]
enum Dirty {
    #[default]
    Clean,
    /// Only these pods (`None`: deleted).
    Pods(BTreeMap<ObjectKey, Option<Pod>>),
    /// Anything else: recompile.
    Full,
}

/// The cluster as the watchers see it, and what to publish next.
struct State {
    cluster: Cluster,
    /// Per kind: the objects of a list in progress (between `Init` and `InitDone`).
    listing: [Option<Vec<Obj>>; 5],
    /// Per kind: how many initial lists completed.
    lists_done: [u64; 5],
    dirty: Dirty,
}

impl State {
    fn new() -> State {
        State {
            cluster: Cluster::default(),
            listing: Default::default(),
            lists_done: [0; 5],
            dirty: Dirty::Clean,
        }
    }

    fn synced(&self) -> bool {
        self.lists_done.iter().all(|n| *n > 0)
    }

    fn mark_full(&mut self) {
        self.dirty = Dirty::Full;
    }

    fn mark_pod(&mut self, key: ObjectKey, pod: Option<Pod>) {
        match &mut self.dirty {
            Dirty::Full => {}
            Dirty::Clean => self.dirty = Dirty::Pods(BTreeMap::from([(key, pod)])),
            Dirty::Pods(m) => {
                m.insert(key, pod);
            }
        }
    }

    fn apply(&mut self, kind: Kind, change: Change, status: &SyncStatus) {
        status.events.fetch_add(1, Ordering::Relaxed);
        match change {
            Change::Init => {
                if self.lists_done[kind.index()] > 0 {
                    status.relists.fetch_add(1, Ordering::Relaxed);
                    info!(resource = kind.resource(), "relisting");
                }
                self.listing[kind.index()] = Some(Vec::new());
            }
            Change::InitApply(obj) => {
                if let Some(buf) = self.listing[kind.index()].as_mut() {
                    buf.push(obj);
                }
            }
            Change::InitDone => {
                let objs = self.listing[kind.index()].take().unwrap_or_default();
                info!(
                    resource = kind.resource(),
                    objects = objs.len(),
                    "list complete"
                );
                self.replace(kind, objs);
                self.lists_done[kind.index()] += 1;
                self.mark_full();
            }
            Change::Apply(obj) => self.upsert(kind, obj),
            Change::Delete(key) => self.remove(kind, &key),
        }
    }

    /// Replaces every object of a kind with a complete list.
    fn replace(&mut self, kind: Kind, objs: Vec<Obj>) {
        let c = &mut self.cluster;
        match kind {
            Kind::Namespace => c.namespaces.clear(),
            Kind::Node => c.nodes.clear(),
            Kind::Pod => c.pods.clear(),
            Kind::NetworkPolicy => c.policies.clear(),
            Kind::ClusterNetworkPolicy => c.cluster_policies.clear(),
        }
        for obj in objs {
            insert(c, obj);
        }
        ensure_namespaces(c);
    }

    fn upsert(&mut self, kind: Kind, obj: Obj) {
        match obj {
            Obj::Pod(p) => {
                let key = (p.namespace.clone(), p.name.clone());
                let new_ns = !self.cluster.namespaces.contains_key(&p.namespace);
                if self.cluster.pods.get(&key) == Some(&p) {
                    return; // a status-only update the engine does not see
                }
                self.cluster.upsert_pod(p.clone());
                if new_ns {
                    self.mark_full();
                } else {
                    self.mark_pod(key, Some(p));
                }
            }
            Obj::Invalid(key) => self.remove(kind, &key),
            other => {
                if unchanged(&self.cluster, &other) {
                    return;
                }
                insert(&mut self.cluster, other);
                self.mark_full();
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) {
        let c = &mut self.cluster;
        let removed = match kind {
            Kind::Namespace => c.namespaces.remove(&key.1).is_some(),
            Kind::Node => c.nodes.remove(&key.1).is_some(),
            Kind::Pod => {
                if c.pods.remove(key).is_some() {
                    self.mark_pod(key.clone(), None);
                }
                return;
            }
            Kind::NetworkPolicy => c.policies.remove(key).is_some(),
            Kind::ClusterNetworkPolicy => c.cluster_policies.remove(&key.1).is_some(),
        };
        if removed {
            ensure_namespaces(c);
            self.mark_full();
        }
    }
}

fn unchanged(c: &Cluster, obj: &Obj) -> bool {
    match obj {
        Obj::Namespace(n) => c.namespaces.get(&n.name) == Some(n),
        Obj::Node(n) => c.nodes.get(&n.name) == Some(n),
        Obj::Policy(p) => c.policies.get(&(p.namespace.clone(), p.name.clone())) == Some(p),
        Obj::Pod(p) => c.pods.get(&(p.namespace.clone(), p.name.clone())) == Some(p),
        Obj::ClusterPolicy(p) => c.cluster_policies.get(&p.name) == Some(p),
        Obj::Invalid(_) => false,
    }
}

fn insert(c: &mut Cluster, obj: Obj) {
    match obj {
        Obj::Namespace(n) => c.upsert_namespace(n),
        Obj::Node(n) => c.upsert_node(n),
        Obj::Pod(p) => c.upsert_pod(p),
        Obj::Policy(p) => c.upsert_policy(p),
        Obj::ClusterPolicy(p) => c.upsert_cluster_policy(p),
        Obj::Invalid(_) => {}
    }
}

/// Pods and policies whose Namespace is not (or no longer) known get one with only the
/// automatic name label, as the manifest source does.
fn ensure_namespaces(c: &mut Cluster) {
    let missing: Vec<String> = c
        .pods
        .keys()
        .chain(c.policies.keys())
        .map(|(ns, _)| ns)
        .filter(|ns| !c.namespaces.contains_key(*ns))
        .cloned()
        .collect();
    for ns in missing {
        c.upsert_namespace(Namespace::new(&ns));
    }
}

/// Whether a watch error says the resource does not exist on the server (its CRD is not
/// installed): a 404 to the initial list.
fn crd_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.is_not_found(),
        _ => false,
    }
}

/// Publishes snapshots of what the watchers see on `tx`: the first once every kind
/// is listed, then one per debounced batch of changes. Returns when every receiver
/// of `tx` is gone.
pub async fn run(
    client: Client,
    opts: Options,
    tx: watch::Sender<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
) {
    run_streams(api_streams(&client), opts, tx, status).await;
}

async fn run_streams<S>(
    mut streams: S,
    opts: Options,
    tx: watch::Sender<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
) where
    S: Stream<Item = Item> + Unpin,
{
    let mut state = State::new();
    let mut current: Option<Arc<Snapshot>> = None;
    let mut incremental_since_full = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut stale_tick = tokio::time::interval(opts.stale_log_every);
    stale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    info!(
        resources = ?WATCHED.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        "watching the Kubernetes API; denying every new flow until the initial lists complete"
    );
    loop {
        tokio::select! {
            item = streams.next() => {
                let Some((kind, change)) = item else { return };
                match change {
                    Ok(change) => {
                        // `Init` is the watcher's own marker before a list request, not
                        // an answer from the API.
                        if !matches!(change, Change::Init) {
                            status.note_ok(kind);
                        }
                        let was_synced = state.synced();
                        state.apply(kind, change, &status);
                        if !was_synced && state.synced() {
                            // The first complete view: publish now, no debounce.
                            deadline = Some(tokio::time::Instant::now());
                        } else if state.synced() && deadline.is_none() && !matches!(state.dirty, Dirty::Clean) {
                            deadline = Some(tokio::time::Instant::now() + opts.debounce);
                        }
                    }
                    Err(e) if kind == Kind::ClusterNetworkPolicy && crd_missing(&e) => {
                        // Without its CRD no ClusterNetworkPolicy can exist: the tiers are
                        // empty (not an outage), and the watcher keeps retrying, so an
                        // installed CRD is picked up.
                        status.note_ok(kind);
                        if state.lists_done[kind.index()] == 0 || !state.cluster.cluster_policies.is_empty() {
                            warn!(
                                resource = kind.resource(),
                                "the ClusterNetworkPolicy CRD is not installed: enforcing NetworkPolicies \
                                 only; install deploy/crds/ to use ClusterNetworkPolicies"
                            );
                            let was_synced = state.synced();
                            state.apply(kind, Change::Init, &status);
                            state.apply(kind, Change::InitDone, &status);
                            if !was_synced && state.synced() {
                                deadline = Some(tokio::time::Instant::now());
                            } else if state.synced() && deadline.is_none() {
                                deadline = Some(tokio::time::Instant::now() + opts.debounce);
                            }
                        }
                    }
                    Err(e) => {
                        let first = !status.failing().contains(&kind);
                        status.note_error(kind);
                        if first {
                            warn!(resource = kind.resource(), error = %e, "API watch failed: enforcing the last snapshot; retrying with backoff");
                        } else {
                            debug!(resource = kind.resource(), error = %e, "API watch still failing");
                        }
                    }
                }
            }
            () = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                deadline = None;
                let dirty = std::mem::take(&mut state.dirty);
                let next_gen = current.as_ref().map_or(1, |s| s.generation() + 1);
                let t0 = Instant::now();
                let (mut snap, full) = match (&current, dirty) {
                    (Some(cur), Dirty::Pods(pods))
                        if pods.len() <= opts.incremental_max
                            && incremental_since_full + pods.len() <= opts.compact_after =>
                    {
                        let mut s: Snapshot = (**cur).clone();
                        for ((ns, name), pod) in pods {
                            s = match pod {
                                Some(p) => s.with_pod(p),
                                None => s.without_pod(&ns, &name),
                            };
                            incremental_since_full += 1;
                        }
                        (s, false)
                    }
                    (_, Dirty::Clean) => continue,
                    _ => {
                        incremental_since_full = 0;
                        (Snapshot::compile(&state.cluster), true)
                    }
                };
                snap.set_generation(next_gen);
                let snap = Arc::new(snap);
                let first = current.is_none();
                current = Some(snap.clone());
                if full {
                    status.full_compiles.fetch_add(1, Ordering::Relaxed);
                }
                status.snapshots.fetch_add(1, Ordering::Relaxed);
                let took_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                if first {
                    status.ready.store(true, Ordering::Release);
                    info!(
                        snapshot.generation = next_gen,
                        pods = state.cluster.pods.len(),
                        namespaces = state.cluster.namespaces.len(),
                        policies = state.cluster.policies.len(),
                        cluster_policies = state.cluster.cluster_policies.len(),
                        nodes = state.cluster.nodes.len(),
                        sync_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        compile_ms = took_ms,
                        "initial sync complete: enforcing"
                    );
                } else {
                    info!(snapshot.generation = next_gen, full, compile_ms = took_ms, "policy updated from the API");
                }
                if tx.send(snap).is_err() {
                    return;
                }
            }
            _ = stale_tick.tick() => {
                let failing = status.failing();
                if !failing.is_empty() {
                    warn!(
                        resources = ?failing.iter().map(|k| k.resource()).collect::<Vec<_>>(),
                        staleness_s = status.staleness().as_secs(),
                        ready = status.is_ready(),
                        "Kubernetes API unreachable: enforcing the last snapshot"
                    );
                }
            }
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_watched() {
        for k in Kind::ALL {
            assert_eq!(
                Kind::from_path(&format!("/api/v1/{}", k.resource())),
                Some(k)
            );
        }
        assert_eq!(
            Kind::from_path("/apis/networking.k8s.io/v1/networkpolicies"),
            Some(Kind::NetworkPolicy)
        );
        assert_eq!(Kind::from_path("/api/v1/services"), None);
    }

    #[test]
    fn staleness_is_zero_when_healthy_and_grows_while_failing() {
        let s = SyncStatus::new();
        for k in Kind::ALL {
            s.note_ok(k);
        }
        s.ready.store(true, Ordering::Release);
        assert_eq!(s.staleness(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        s.note_error(Kind::Pod);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.failing(), vec![Kind::Pod]);
        assert!(
            s.staleness() >= Duration::from_millis(20),
            "{:?}",
            s.staleness()
        );
        assert!(s.kind_staleness(Kind::Pod) >= Duration::from_millis(20));
        assert_eq!(s.kind_staleness(Kind::Node), Duration::ZERO);
        assert!(s.since_ok(Kind::Node).is_some());
        s.note_ok(Kind::Pod);
        assert_eq!(s.staleness(), Duration::ZERO);
        assert_eq!(s.kind_staleness(Kind::Pod), Duration::ZERO);
        assert_eq!(s.errors(), 1);
        assert_eq!(SyncStatus::new().since_ok(Kind::Pod), None);
    }
}
