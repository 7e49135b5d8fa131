//! An in-process Kubernetes API server for tests (feature `fake-api`): list and watch of
//! the [`WATCHED`](super::WATCHED) resources over plain HTTP/1.1, so the real kube-rs
//! client and watcher code runs against it.
//!
//! It serves what the watchers use: paginated lists (`limit`, `continue`), watches from a
//! `resourceVersion` (`?watch=true`), `allowWatchBookmarks` (BOOKMARK events), and the
//! faults a node agent must survive: 410 Gone (as an `ERROR` event or an HTTP 410
//! response), dropped connections, and an outage (connections closed on accept).
//!
//! For `netward signer` and the node agent's certificate requests it also serves
//! `certificates.k8s.io/v1` CertificateSigningRequests (create, get, list, watch, and the
//! `approval` and `status` subresources), `coordination.k8s.io/v1` Leases, and core
//! Secrets, ConfigMaps and Pods by name in a namespace (get, create, replace). A replace
//! whose `metadata.resourceVersion` is not the stored one is answered `409 Conflict`,
//! as optimistic concurrency requires. `fieldSelector` equality on any field path
//! (`metadata.name=…`, `spec.signerName=…`) filters lists and watches.
//!
//! Requests are authenticated by bearer token ([`FakeApi::add_user`],
//! [`FakeApi::kubeconfig_with_token`]): like a real API server, the fake overwrites a
//! created CSR's `spec.username`, `groups`, `uid` and `extra` with the caller's user
//! info (`system:anonymous` without a known token).
#![allow(clippy::unwrap_used)] // test support: a poisoned lock is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::Kind;

type Body = BoxBody<Bytes, std::io::Error>;

/// A resource the fake serves: its index in [`RESOURCES`] (the first five are
/// [`Kind`]s, in [`Kind::ALL`] order).
type Res = usize;

struct ResInfo {
    /// `""` for the core group.
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResInfo {
    ResInfo {
        group,
        version,
        plural,
        kind,
        namespaced,
    }
}

/// Everything served: the watched kinds first, then what the signer uses.
const RESOURCES: [ResInfo; 9] = [
    res("", "v1", "namespaces", "Namespace", false),
    res("", "v1", "nodes", "Node", false),
    res("", "v1", "pods", "Pod", true),
    res(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    res(
        "policy.networking.k8s.io",
        "v1alpha2",
        "clusternetworkpolicies",
        "ClusterNetworkPolicy",
        false,
    ),
    res(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "CertificateSigningRequest",
        false,
    ),
    res("coordination.k8s.io", "v1", "leases", "Lease", true),
    res("", "v1", "secrets", "Secret", true),
    res("", "v1", "configmaps", "ConfigMap", true),
];
const N_RES: usize = RESOURCES.len();
const CSR: Res = 5;

impl ResInfo {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// A caller's identity, as the API server's authenticator would report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its uid.
    pub uid: String,
    /// Extra attributes: a bound service-account token carries
    /// `authentication.kubernetes.io/pod-name`, `pod-uid` and `node-name`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A service account's user info, with the extras of a token bound to a pod on a
    /// node (either may be absent).
    pub fn service_account(
        namespace: &str,
        name: &str,
        pod: Option<(&str, &str)>,
        node: Option<&str>,
    ) -> UserInfo {
        let mut extra = BTreeMap::new();
        if let Some((pod_name, pod_uid)) = pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod_name.to_owned()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec![pod_uid.to_owned()],
            );
        }
        if let Some(node) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec![node.to_owned()],
            );
        }
        UserInfo {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
            uid: format!("uid-{namespace}-{name}"),
            extra,
        }
    }
}

/// What the server has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// List requests answered (each page counts).
    pub lists: u64,
    /// Watch requests answered with a stream.
    pub watches: u64,
    /// 410 Gone answers (events and HTTP responses).
    pub gone: u64,
    /// BOOKMARK events sent.
    pub bookmarks: u64,
    /// Connections closed on accept during an outage.
    pub refused: u64,
    /// Watch streams cut mid-stream.
    pub dropped: u64,
    /// Objects created through the API (POST).
    pub creates: u64,
    /// Objects replaced through the API (PUT, subresources included).
    pub replaces: u64,
    /// Replaces refused with 409 Conflict (stale resourceVersion) and creates refused
    /// with 409 AlreadyExists.
    pub conflicts: u64,
}

struct Entry {
    rv: u64,
    kind: Res,
    typ: &'static str,
    object: Arc<Value>,
}

struct State {
    rv: u64,
    objects: [BTreeMap<(String, String), Arc<Value>>; N_RES],
    /// Every change with its resourceVersion, oldest first (those after `compacted`).
    history: Vec<Entry>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    down: bool,
    /// Per kind: answer 500 to its lists and watches.
    unavailable: [bool; N_RES],
    /// Resources whose CRD is not installed: 404 to their lists and watches.
    not_installed: [bool; N_RES],
    /// Bearer token → user.
    users: BTreeMap<String, UserInfo>,
    /// For uids and generated names.
    serial: u64,
    /// Answer the next continued list with HTTP 410.
    gone_as_http: bool,
    bookmark_every: Duration,
    /// Bumped to cut every open watch (a dropped connection).
    drop_epoch: u64,
    /// Bumped to end every open watch with a 410 `ERROR` event.
    gone_epoch: u64,
    shutdown: bool,
    stats: Stats,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change: wakes the watch streams and the accept loop.
    tick: watch::Sender<u64>,
    open_watches: AtomicUsize,
}

/// The fake API server's state and controls. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

impl Default for FakeApi {
    fn default() -> FakeApi {
        FakeApi::new()
    }
}

fn kind_of<K: k8s_openapi::Resource>() -> Res {
    RESOURCES
        .iter()
        .position(|r| r.plural == K::URL_PATH_SEGMENT && r.group == K::GROUP)
        .unwrap_or_else(|| panic!("the fake API server does not serve {}", K::KIND))
}

impl FakeApi {
    /// An empty cluster (resourceVersion 1), bookmarks every 500 ms.
    pub fn new() -> FakeApi {
        let (tick, _) = watch::channel(0);
        FakeApi {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rv: 1,
                    objects: Default::default(),
                    history: Vec::new(),
                    compacted: 0,
                    down: false,
                    unavailable: [false; N_RES],
                    not_installed: [false; N_RES],
                    users: BTreeMap::new(),
                    serial: 0,
                    gone_as_http: false,
                    bookmark_every: Duration::from_millis(500),
                    drop_epoch: 0,
                    gone_epoch: 0,
                    shutdown: false,
                    stats: Stats::default(),
                }),
                tick,
                open_watches: AtomicUsize::new(0),
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.inner.state.lock().unwrap());
        self.inner.tick.send_modify(|t| *t += 1);
        out
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, obj: &K) -> u64 {
        self.apply_all(std::slice::from_ref(obj))
    }

    /// Creates or replaces many objects (one resourceVersion each); returns the last.
    pub fn apply_all<K: k8s_openapi::Resource + serde::Serialize>(&self, objs: &[K]) -> u64 {
        let kind = kind_of::<K>();
        let values: Vec<Value> = objs
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect();
        self.with_state(|s| {
            for mut v in values {
                s.rv += 1;
                let rv = s.rv;
                let meta = &mut v["metadata"];
                meta["resourceVersion"] = json!(rv.to_string());
                let key = (
                    meta["namespace"].as_str().unwrap_or_default().to_owned(),
                    meta["name"].as_str().unwrap_or_default().to_owned(),
                );
                let v = Arc::new(v);
                let typ = match s.objects[kind].insert(key, v.clone()) {
                    Some(_) => "MODIFIED",
                    None => "ADDED",
                };
                s.history.push(Entry {
                    rv,
                    kind,
                    typ,
                    object: v,
                });
            }
            s.rv
        })
    }

    /// Deletes an object (`namespace` empty for cluster-scoped kinds); false if absent.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let kind = kind_of::<K>();
        self.with_state(|s| {
            let Some(old) = s.objects[kind].remove(&(namespace.to_owned(), name.to_owned())) else {
                return false;
            };
            s.rv += 1;
            let mut v = (*old).clone();
            v["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let rv = s.rv;
            s.history.push(Entry {
                rv,
                kind,
                typ: "DELETED",
                object: Arc::new(v),
            });
            true
        })
    }

    /// An outage: while `down`, every connection is closed as soon as it is accepted and
    /// every open watch is cut.
    pub fn set_down(&self, down: bool) {
        self.with_state(|s| {
            s.down = down;
            if down {
                s.drop_epoch += 1;
            }
        });
    }

    /// Makes one resource unavailable (HTTP 500 to its lists and watches; kube's client retries a 503 itself for minutes) or available.
    pub fn set_unavailable(&self, kind: Kind, unavailable: bool) {
        self.with_state(|s| s.unavailable[kind as Res] = unavailable);
    }

    /// Uninstalls (or installs) one resource's CRD: while uninstalled, its lists and
    /// watches are answered 404 NotFound, as the API server answers for a missing CRD.
    pub fn set_not_installed(&self, kind: Kind, not_installed: bool) {
        self.with_state(|s| s.not_installed[kind as Res] = not_installed);
    }

    /// Cuts every open watch mid-stream (the client sees a broken connection).
    pub fn drop_watches(&self) {
        self.with_state(|s| s.drop_epoch += 1);
    }

    /// Forgets the history (etcd compaction) and ends every open watch with a 410 Gone
    /// `ERROR` event: the watchers must relist.
    pub fn expire_watches(&self) {
        self.with_state(|s| {
            s.compacted = s.rv;
            s.history.clear();
            s.gone_epoch += 1;
        });
    }

    /// Forgets the history: a watch resumed from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.with_state(|s| {
            s.compacted = s.rv;
            s.history.clear();
        });
    }

    /// Answers the next list request that carries a `continue` token with HTTP 410
    /// Gone (the token expired, as after a compaction): the watcher restarts its list.
    /// (A watch from a compacted resourceVersion gets a `200` stream holding a 410
    /// `ERROR` event, as from a real API server.)
    pub fn expire_next_continue(&self) {
        self.with_state(|s| s.gone_as_http = true);
    }

    /// How often open watches get a BOOKMARK event (when they asked for bookmarks).
    pub fn set_bookmark_every(&self, every: Duration) {
        self.with_state(|s| s.bookmark_every = every);
    }

    /// One stored object (`namespace` empty for cluster-scoped kinds), as the API would
    /// return it.
    pub fn get<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let kind = kind_of::<K>();
        let v = self.inner.state.lock().unwrap().objects[kind]
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()?;
        Some(serde_json::from_value((*v).clone()).unwrap())
    }

    /// Every stored object of a kind, in (namespace, name) order.
    pub fn list_all<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(&self) -> Vec<K> {
        let kind = kind_of::<K>();
        let values: Vec<Arc<Value>> = self.inner.state.lock().unwrap().objects[kind]
            .values()
            .cloned()
            .collect();
        values
            .into_iter()
            .map(|v| serde_json::from_value((*v).clone()).unwrap())
            .collect()
    }

    /// Makes requests that carry `Authorization: Bearer <token>` come from `user`.
    pub fn add_user(&self, token: &str, user: UserInfo) {
        self.with_state(|s| s.users.insert(token.to_owned(), user));
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.state.lock().unwrap().rv
    }

    /// What the server has done so far.
    pub fn stats(&self) -> Stats {
        self.inner.state.lock().unwrap().stats
    }

    /// Watch streams open right now.
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::Acquire)
    }

    /// Stops every server loop and stream of this fake.
    pub fn shutdown(&self) {
        self.with_state(|s| s.shutdown = true);
    }

    /// A kubeconfig that points a client at `addr` over plain HTTP.
    pub fn kubeconfig(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
        )
    }

    /// A kubeconfig that points a client at `addr` over plain HTTP and authenticates
    /// with a bearer token (see [`FakeApi::add_user`]).
    pub fn kubeconfig_with_token(addr: SocketAddr, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
        )
    }

    /// Serves on a listener until [`FakeApi::shutdown`].
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        let mut tick = self.inner.tick.subscribe();
        loop {
            if self.inner.state.lock().unwrap().shutdown {
                return;
            }
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let down = {
                        let mut s = self.inner.state.lock().unwrap();
                        if s.down {
                            s.stats.refused += 1;
                        }
                        s.down
                    };
                    if down {
                        drop(stream);
                        continue;
                    }
                    let api = self.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let api = api.clone();
                            async move {
                                // Kept-alive connections must not outlive an outage either:
                                // an error from the service makes hyper close the connection.
                                let down = {
                                    let mut st = api.inner.state.lock().unwrap();
                                    if st.down {
                                        st.stats.refused += 1;
                                    }
                                    st.down
                                };
                                if down {
                                    return Err(std::io::Error::other("the API server is down"));
                                }
                                Ok(api.handle(req).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                _ = tick.changed() => {}
            }
        }
    }

    /// Binds `addr` (in the calling thread's network namespace), reports the bound
    /// address, and serves on a current-thread runtime until [`FakeApi::shutdown`].
    pub fn serve_blocking(
        &self,
        addr: SocketAddr,
        bound: impl FnOnce(SocketAddr),
    ) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            bound(listener.local_addr()?);
            self.serve(listener).await;
            Ok(())
        })
    }

    /// Serves on 127.0.0.1 (a free port) in a thread; stopped when the guard drops.
    pub fn start(&self) -> std::io::Result<FakeServer> {
        let (tx, rx) = std::sync::mpsc::channel();
        let api = self.clone();
        let thread = std::thread::Builder::new()
            .name("fake-api".into())
            .spawn(move || {
                let tx2 = tx.clone();
                if let Err(e) = api.serve_blocking(SocketAddr::from(([127, 0, 0, 1], 0)), |a| {
                    let _ = tx2.send(Ok(a));
                }) {
                    let _ = tx.send(Err(e));
                }
            })?;
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| std::io::Error::other("the fake API server did not start"))??;
        Ok(FakeServer {
            api: self.clone(),
            addr,
            thread: Some(thread),
        })
    }

    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        let Some(route) = route(&path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} not found"),
            );
        };
        let (unavailable, not_installed) = {
            let s = self.inner.state.lock().unwrap();
            (s.unavailable[route.res], s.not_installed[route.res])
        };
        if not_installed {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        if unavailable {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the fake says so",
            );
        }
        let user = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .and_then(|token| self.inner.state.lock().unwrap().users.get(token).cloned());
        let method = req.method().clone();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
            }
        };
        let ns = route.namespace.as_deref();
        match (&method, route.name.as_deref(), route.subresource.as_deref()) {
            (&hyper::Method::GET, None, None) => {
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    self.watch(route.res, ns, &query)
                } else {
                    self.list(route.res, ns, &query)
                }
            }
            (&hyper::Method::GET, Some(name), None) => self.get_one(route.res, ns, name),
            (&hyper::Method::POST, None, None) => match serde_json::from_slice(&body) {
                Ok(obj) => self.create(route.res, ns, obj, user.as_ref()),
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            },
            (&hyper::Method::PUT, Some(name), sub) => match serde_json::from_slice(&body) {
                Ok(obj) => self.replace(route.res, ns, name, sub, obj),
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            },
            (&hyper::Method::DELETE, Some(name), None) => {
                let key = (ns.unwrap_or_default().to_owned(), name.to_owned());
                let res = route.res;
                let removed = self.with_state(|s| {
                    let old = s.objects[res].remove(&key)?;
                    s.rv += 1;
                    let mut v = (*old).clone();
                    v["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    let v = Arc::new(v);
                    let rv = s.rv;
                    s.history.push(Entry {
                        rv,
                        kind: res,
                        typ: "DELETED",
                        object: v.clone(),
                    });
                    Some(v)
                });
                match removed {
                    Some(v) => full(StatusCode::OK, serde_json::to_vec(&*v).unwrap_or_default()),
                    None => not_found(res, name),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} {path} is not served by the fake"),
            ),
        }
    }

    fn get_one(&self, res: Res, ns: Option<&str>, name: &str) -> Response<Body> {
        let key = (ns.unwrap_or_default().to_owned(), name.to_owned());
        let found = self.inner.state.lock().unwrap().objects[res]
            .get(&key)
            .cloned();
        match found {
            Some(v) => full(StatusCode::OK, serde_json::to_vec(&*v).unwrap_or_default()),
            None => not_found(res, name),
        }
    }

    fn create(
        &self,
        res: Res,
        ns: Option<&str>,
        mut obj: Value,
        user: Option<&UserInfo>,
    ) -> Response<Body> {
        let info = &RESOURCES[res];
        obj["kind"] = json!(info.kind);
        obj["apiVersion"] = json!(info.api_version());
        if res == CSR {
            // The API server records who asked, whatever the request says.
            let anonymous = UserInfo {
                username: "system:anonymous".to_owned(),
                groups: vec!["system:unauthenticated".to_owned()],
                ..UserInfo::default()
            };
            let user = user.unwrap_or(&anonymous);
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "spec: Required value",
                );
            }
            spec["username"] = json!(user.username);
            spec["groups"] = json!(user.groups);
            spec["uid"] = json!(user.uid);
            if user.extra.is_empty() {
                if let Some(spec) = spec.as_object_mut() {
                    spec.remove("extra");
                }
            } else {
                spec["extra"] = json!(user.extra);
            }
        }
        let out = self.with_state(|s| {
            s.serial += 1;
            let serial = s.serial;
            let meta = &mut obj["metadata"];
            if !meta.is_object() {
                *meta = json!({});
            }
            if meta["name"].as_str().is_none_or(str::is_empty) {
                match meta["generateName"].as_str() {
                    Some(prefix) => meta["name"] = json!(format!("{prefix}{serial:05x}")),
                    None => {
                        return Err(Box::new(status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.name: Required value",
                        )));
                    }
                }
            }
            if info.namespaced {
                meta["namespace"] = json!(ns.unwrap_or("default"));
            }
            let key = (
                meta["namespace"].as_str().unwrap_or_default().to_owned(),
                meta["name"].as_str().unwrap_or_default().to_owned(),
            );
            if s.objects[res].contains_key(&key) {
                s.stats.conflicts += 1;
                return Err(Box::new(status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{}\" already exists", info.plural, key.1),
                )));
            }
            s.rv += 1;
            let rv = s.rv;
            meta["resourceVersion"] = json!(rv.to_string());
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{serial:012x}"));
            meta["creationTimestamp"] = json!(now_rfc3339());
            let v = Arc::new(obj);
            s.objects[res].insert(key, v.clone());
            s.history.push(Entry {
                rv,
                kind: res,
                typ: "ADDED",
                object: v.clone(),
            });
            s.stats.creates += 1;
            Ok(v)
        });
        match out {
            Ok(v) => full(
                StatusCode::CREATED,
                serde_json::to_vec(&*v).unwrap_or_default(),
            ),
            Err(resp) => *resp,
        }
    }

    fn replace(
        &self,
        res: Res,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        obj: Value,
    ) -> Response<Body> {
        let key = (ns.unwrap_or_default().to_owned(), name.to_owned());
        let out = self.with_state(|s| {
            let Some(old) = s.objects[res].get(&key).cloned() else {
                return Err(Box::new(not_found(res, name)));
            };
            let given = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
            let stored = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if !given.is_empty() && given != stored {
                s.stats.conflicts += 1;
                return Err(Box::new(status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        RESOURCES[res].plural
                    ),
                )));
            }
            let mut new = match (res, sub) {
                (CSR, Some("approval")) => {
                    let mut new = (*old).clone();
                    new["status"]["conditions"] = obj["status"]["conditions"].clone();
                    new
                }
                (_, Some("status")) => {
                    let mut new = (*old).clone();
                    new["status"] = obj["status"].clone();
                    new
                }
                (CSR, None) => {
                    // spec is immutable and status has its own subresources.
                    let mut new = obj.clone();
                    new["spec"] = old["spec"].clone();
                    new["status"] = old["status"].clone();
                    new
                }
                (_, None) => obj.clone(),
                (_, Some(other)) => {
                    return Err(Box::new(status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("subresource {other} not found"),
                    )));
                }
            };
            if res == CSR
                && let Err(why) = check_csr_status(&old["status"], &new["status"])
            {
                return Err(Box::new(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &why)));
            }
            // Identity fields are the server's.
            for field in ["uid", "creationTimestamp", "name", "namespace"] {
                new["metadata"][field] = old["metadata"][field].clone();
            }
            new["kind"] = old["kind"].clone();
            new["apiVersion"] = old["apiVersion"].clone();
            s.rv += 1;
            let rv = s.rv;
            new["metadata"]["resourceVersion"] = json!(rv.to_string());
            let v = Arc::new(new);
            s.objects[res].insert(key.clone(), v.clone());
            s.history.push(Entry {
                rv,
                kind: res,
                typ: "MODIFIED",
                object: v.clone(),
            });
            s.stats.replaces += 1;
            Ok(v)
        });
        match out {
            Ok(v) => full(StatusCode::OK, serde_json::to_vec(&*v).unwrap_or_default()),
            Err(resp) => *resp,
        }
    }

    fn list(
        &self,
        kind: Res,
        ns: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let mut s = self.inner.state.lock().unwrap();
        s.stats.lists += 1;
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        // continue token: "<rv>-<offset>"
        let (rv, offset) = match query.get("continue").and_then(|c| c.split_once('-')) {
            Some((rv, off)) => (rv.parse().unwrap_or(0), off.parse().unwrap_or(0)),
            None => (s.rv, 0usize),
        };
        if query.contains_key("continue") && std::mem::take(&mut s.gone_as_http) {
            s.stats.gone += 1;
            drop(s);
            return status(
                StatusCode::GONE,
                "Expired",
                "the continue token has expired",
            );
        }
        if rv < s.compacted {
            s.stats.gone += 1;
            drop(s);
            return status(
                StatusCode::GONE,
                "Expired",
                "the continue token has expired",
            );
        }
        let fields = field_selector(query);
        let selected: Vec<&Value> = s.objects[kind]
            .values()
            .map(|v| v.as_ref())
            .filter(|v| selects(v, ns, &fields))
            .collect();
        let total = selected.len();
        let items: Vec<&Value> = selected.into_iter().skip(offset).take(limit).collect();
        let next = offset + items.len();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if next < total {
            meta["continue"] = json!(format!("{rv}-{next}"));
        }
        let body = json!({
            "kind": format!("{}List", RESOURCES[kind].kind),
            "apiVersion": RESOURCES[kind].api_version(),
            "metadata": meta,
            "items": items,
        });
        drop(s);
        full(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }

    fn watch(
        &self,
        kind: Res,
        ns: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let ns = ns.map(str::to_owned);
        let fields = field_selector(query);
        let selected = move |v: &Value| selects(v, ns.as_deref(), &fields);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
        let mut s = self.inner.state.lock().unwrap();
        let mut pending: Vec<Bytes> = Vec::new();
        let mut gone = false;
        if from == 0 {
            // "Any" semantics: the current objects as ADDED, then changes.
            for v in s.objects[kind].values().filter(|v| selected(v)) {
                pending.push(event_line("ADDED", v));
            }
        } else if from < s.compacted {
            s.stats.gone += 1;
            gone = true;
        } else {
            for e in s
                .history
                .iter()
                .filter(|e| e.kind == kind && e.rv > from && selected(&e.object))
            {
                pending.push(event_line(e.typ, &e.object));
            }
        }
        s.stats.watches += 1;
        // Everything up to here is in `pending` (or the watch is gone).
        let start_rv = s.rv;
        let (drop_epoch, gone_epoch) = (s.drop_epoch, s.gone_epoch);
        let kind_name = RESOURCES[kind].kind;
        let api_version = RESOURCES[kind].api_version();
        drop(s);

        let api = self.clone();
        let mut tick = self.inner.tick.subscribe();
        tokio::spawn(async move {
            api.inner.open_watches.fetch_add(1, Ordering::AcqRel);
            let _guard = OpenWatch(api.inner.clone());
            if gone {
                let _ = tx.send(Ok(Frame::data(gone_event()))).await;
                return;
            }
            for line in pending {
                if tx.send(Ok(Frame::data(line))).await.is_err() {
                    return;
                }
            }
            let mut sent = start_rv;
            let deadline = tokio::time::Instant::now() + timeout;
            let mut last_bookmark = tokio::time::Instant::now();
            loop {
                let (lines, cut, expired, every) = {
                    let mut s = api.inner.state.lock().unwrap();
                    if s.shutdown || s.drop_epoch != drop_epoch {
                        s.stats.dropped += 1;
                        (Vec::new(), true, false, s.bookmark_every)
                    } else if s.gone_epoch != gone_epoch {
                        s.stats.gone += 1;
                        (Vec::new(), false, true, s.bookmark_every)
                    } else {
                        let start = s.history.partition_point(|e| e.rv <= sent);
                        let lines: Vec<Bytes> = s.history[start..]
                            .iter()
                            .filter(|e| e.kind == kind && selected(&e.object))
                            .map(|e| event_line(e.typ, &e.object))
                            .collect();
                        sent = sent.max(s.rv);
                        let mut lines = lines;
                        if bookmarks && last_bookmark.elapsed() >= s.bookmark_every {
                            s.stats.bookmarks += 1;
                            last_bookmark = tokio::time::Instant::now();
                            lines.push(bookmark_line(kind_name, &api_version, s.rv));
                        }
                        (lines, false, false, s.bookmark_every)
                    }
                };
                if cut {
                    // An error frame aborts the response: the client sees a broken stream.
                    let _ = tx
                        .send(Err(std::io::Error::other("connection dropped")))
                        .await;
                    return;
                }
                if expired {
                    let _ = tx.send(Ok(Frame::data(gone_event()))).await;
                    return;
                }
                for line in lines {
                    if tx.send(Ok(Frame::data(line))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tick.changed() => {}
                    () = tokio::time::sleep(every) => {}
                    () = tokio::time::sleep_until(deadline) => return,
                    () = tx.closed() => return,
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A fake API server running in its own thread; shut down and joined on drop.
pub struct FakeServer {
    api: FakeApi,
    /// Where it listens.
    pub addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.api.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn event_line(typ: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": typ, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark_line(kind: &str, api_version: &str, rv: u64) -> Bytes {
    event_line(
        "BOOKMARK",
        &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

fn status_json(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn gone_event() -> Bytes {
    event_line(
        "ERROR",
        &status_json(
            StatusCode::GONE,
            "Expired",
            "too old resource version: the history was compacted",
        ),
    )
}

fn full(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        serde_json::to_vec(&status_json(code, reason, message)).unwrap_or_default(),
    )
}

struct Route {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]` and
/// `/apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]`.
fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let own = |s: &&str| Some((*s).to_owned());
    let (res, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] => {
            let res = find(plural).filter(|r| RESOURCES[*r].namespaced)?;
            (res, own(ns), tail)
        }
        [plural, tail @ ..] => (find(plural)?, None, tail),
        [] => return None,
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (own(name), None),
        [name, sub] => (own(name), own(sub)),
        _ => return None,
    };
    Some(Route {
        res,
        namespace,
        name,
        subresource,
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fieldSelector=a.b=c,d=e`: (path, value) pairs, all of which must hold.
fn field_selector(query: &BTreeMap<String, String>) -> Vec<(Vec<String>, String)> {
    query
        .get("fieldSelector")
        .map(|sel| {
            sel.split(',')
                .filter_map(|term| term.split_once('='))
                .map(|(path, value)| {
                    (
                        path.trim_end_matches('=')
                            .split('.')
                            .map(str::to_owned)
                            .collect(),
                        value.trim_start_matches('=').to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn selects(v: &Value, ns: Option<&str>, fields: &[(Vec<String>, String)]) -> bool {
    if let Some(ns) = ns
        && v["metadata"]["namespace"].as_str() != Some(ns)
    {
        return false;
    }
    fields.iter().all(|(path, want)| {
        let got = path.iter().fold(v, |v, seg| &v[seg.as_str()]);
        got.as_str() == Some(want.as_str())
    })
}

fn not_found(res: Res, name: &str) -> Response<Body> {
    let info = &RESOURCES[res];
    let group = if info.group.is_empty() {
        String::new()
    } else {
        format!(".{}", info.group)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{}{group} \"{name}\" not found", info.plural),
    )
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// What the API server's CSR validation enforces on a status change: a certificate
/// only on an approved, not denied or failed, request; approval and denial exclusive;
/// an issued certificate never changes.
fn check_csr_status(old: &Value, new: &Value) -> Result<(), String> {
    let has = |status: &Value, typ: &str| {
        status["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == typ && c["status"] == "True"))
    };
    if has(new, "Approved") && has(new, "Denied") {
        return Err(
            "status.conditions: Approved and Denied conditions are mutually exclusive".to_owned(),
        );
    }
    let cert = new["certificate"].as_str().unwrap_or_default();
    let old_cert = old["certificate"].as_str().unwrap_or_default();
    if !old_cert.is_empty() && cert != old_cert {
        return Err(
            "status.certificate: Forbidden: updates may not modify existing certificate content"
                .to_owned(),
        );
    }
    if !cert.is_empty() && (!has(new, "Approved") || has(new, "Denied") || has(new, "Failed")) {
        return Err("status.certificate: Forbidden: certificate may only be set on an approved request that has not failed".to_owned());
    }
    Ok(())
}
