//! An in-process Kubernetes API server for tests (feature `fake-api`): list and watch of
//! the [`WATCHED`](super::WATCHED) resources over plain HTTP/1.1, so the real kube-rs
//! client and watcher code runs against it.
//!
//! It serves what the watchers use: paginated lists (`limit`, `continue`), watches from a
//! `resourceVersion` (`?watch=true`), `allowWatchBookmarks` (BOOKMARK events), and the
//! faults a node agent must survive: 410 Gone (as an `ERROR` event or an HTTP 410
//! response), dropped connections, and an outage (connections closed on accept).
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
}

struct Entry {
    rv: u64,
    kind: Kind,
    typ: &'static str,
    object: Arc<Value>,
}

struct State {
    rv: u64,
    objects: [BTreeMap<(String, String), Arc<Value>>; 4],
    kind_names: [&'static str; 4],
    api_versions: [&'static str; 4],
    /// Every change with its resourceVersion, oldest first (those after `compacted`).
    history: Vec<Entry>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    down: bool,
    /// Per kind: answer 500 to its lists and watches.
    unavailable: [bool; 4],
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

fn kind_of<K: k8s_openapi::Resource>() -> Kind {
    Kind::ALL
        .into_iter()
        .find(|k| k.resource() == K::URL_PATH_SEGMENT)
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
                    kind_names: ["Namespace", "Node", "Pod", "NetworkPolicy"],
                    api_versions: ["v1", "v1", "v1", "networking.k8s.io/v1"],
                    history: Vec::new(),
                    compacted: 0,
                    down: false,
                    unavailable: [false; 4],
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
                let typ = match s.objects[kind as usize].insert(key, v.clone()) {
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
            let Some(old) =
                s.objects[kind as usize].remove(&(namespace.to_owned(), name.to_owned()))
            else {
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
        self.with_state(|s| s.unavailable[kind as usize] = unavailable);
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
                                let mut st = api.inner.state.lock().unwrap();
                                if st.down {
                                    st.stats.refused += 1;
                                    return Err(std::io::Error::other("the API server is down"));
                                }
                                drop(st);
                                Ok(api.handle(req))
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

    fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let kind = match path.as_str() {
            "/api/v1/namespaces" => Kind::Namespace,
            "/api/v1/nodes" => Kind::Node,
            "/api/v1/pods" => Kind::Pod,
            "/apis/networking.k8s.io/v1/networkpolicies" => Kind::NetworkPolicy,
            _ => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{path} not found"),
                );
            }
        };
        if self.inner.state.lock().unwrap().unavailable[kind as usize] {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the fake says so",
            );
        }
        if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            self.watch(kind, &query)
        } else {
            self.list(kind, &query)
        }
    }

    fn list(&self, kind: Kind, query: &BTreeMap<String, String>) -> Response<Body> {
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
        let objects = &s.objects[kind as usize];
        let items: Vec<&Value> = objects
            .values()
            .skip(offset)
            .take(limit)
            .map(|v| v.as_ref())
            .collect();
        let next = offset + items.len();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if next < objects.len() {
            meta["continue"] = json!(format!("{rv}-{next}"));
        }
        let body = json!({
            "kind": format!("{}List", s.kind_names[kind as usize]),
            "apiVersion": s.api_versions[kind as usize],
            "metadata": meta,
            "items": items,
        });
        drop(s);
        full(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        )
    }

    fn watch(&self, kind: Kind, query: &BTreeMap<String, String>) -> Response<Body> {
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
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
        let mut s = self.inner.state.lock().unwrap();
        let mut pending: Vec<Bytes> = Vec::new();
        let mut gone = false;
        if from == 0 {
            // "Any" semantics: the current objects as ADDED, then changes.
            for v in s.objects[kind as usize].values() {
                pending.push(event_line("ADDED", v));
            }
        } else if from < s.compacted {
            s.stats.gone += 1;
            gone = true;
        } else {
            for e in s.history.iter().filter(|e| e.kind == kind && e.rv > from) {
                pending.push(event_line(e.typ, &e.object));
            }
        }
        s.stats.watches += 1;
        // Everything up to here is in `pending` (or the watch is gone).
        let start_rv = s.rv;
        let (drop_epoch, gone_epoch) = (s.drop_epoch, s.gone_epoch);
        let kind_name = s.kind_names[kind as usize];
        let api_version = s.api_versions[kind as usize];
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
                            .filter(|e| e.kind == kind)
                            .map(|e| event_line(e.typ, &e.object))
                            .collect();
                        sent = sent.max(s.rv);
                        let mut lines = lines;
                        if bookmarks && last_bookmark.elapsed() >= s.bookmark_every {
                            s.stats.bookmarks += 1;
                            last_bookmark = tokio::time::Instant::now();
                            lines.push(bookmark_line(kind_name, api_version, s.rv));
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
