//! The admin server, on its own thread and runtime, off the data plane. Two surfaces:
//! the main listener (`/metrics`, `/healthz`, `/readyz`: probes and Prometheus, on the
//! node IP in `netward node`) and, only when asked for, a loopback-only debug listener
//! (`/debug/snapshot`, which names every pod's IPs and labels and every policy,
//! ClusterNetworkPolicies included).
//!
//! Both are hardened the same way: a header read timeout, a cap on concurrent
//! connections (the excess is closed at once), a maximum connection age, and a backoff
//! on accept errors (EMFILE) instead of a spin.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use netward_controller::Snapshot;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;

/// `/healthz` fails when a loop that reports heartbeats ([`Metrics::beat`]) has been
/// silent this long: the process is up but wedged, and a restart is the fix.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// A client must send a request's whole header within this time, or be disconnected
/// (slowloris); a connection that sends nothing at all is closed after it too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once per listener; more are closed as soon as accepted, so
/// that no client can exhaust the process's descriptors through the admin port.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection is asked to close (after its request in flight) once this old, so a
/// kept-alive idle client cannot hold one of the [`MAX_CONNECTIONS`] slots forever.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// The first wait after an accept error; it doubles up to [`ACCEPT_BACKOFF_MAX`] while
/// the errors last, and resets on the next accepted connection.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest wait between accepts after errors.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Counters for the metrics endpoint (all listeners together).
#[derive(Debug, Default)]
pub struct Stats {
    /// `accept()` failures (EMFILE, ENFILE, ENOMEM...), each followed by a backoff.
    pub accept_errors: AtomicU64,
    /// Connections closed unserved because [`MAX_CONNECTIONS`] were open.
    pub connections_refused: AtomicU64,
}

/// The process's admin server counters.
pub static STATS: Stats = Stats {
    accept_errors: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
};

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// `/metrics`, `/healthz`, `/readyz`.
    Main,
    /// `/debug/*`: loopback only.
    Debug,
}

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The port is taken or not allowed.
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The debug listener was given an address other hosts or pods could reach.
    #[error(
        "the debug listener must be on a loopback address (127.0.0.0/8 or ::1), not {addr}: /debug/snapshot names every pod and policy"
    )]
    NotLoopback {
        /// The address refused.
        addr: SocketAddr,
    },
}

/// Parses the debug listener's address: `IP:PORT` on loopback. The error is the reason,
/// for the caller to report with the flag's name and value.
pub fn parse_debug_addr(v: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = v
        .trim()
        .parse()
        .map_err(|e| format!("expected IP:PORT on loopback, like 127.0.0.1:15022 ({e})"))?;
    if !addr.ip().is_loopback() {
        return Err(Error::NotLoopback { addr }.to_string());
    }
    Ok(addr)
}

/// Starts the main admin server (`/metrics`, `/healthz`, `/readyz`) on `addr`, on its
/// own thread. Returns the address it bound.
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Result<SocketAddr, Error> {
    start_surface(addr, Surface::Main, metrics, snapshots)
}

/// Starts the debug listener (`/debug/snapshot`) on `addr`, which must be loopback.
pub fn start_debug(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Result<SocketAddr, Error> {
    if !addr.ip().is_loopback() {
        return Err(Error::NotLoopback { addr });
    }
    start_surface(addr, Surface::Debug, metrics, snapshots)
}

fn start_surface(
    addr: SocketAddr,
    surface: Surface,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Result<SocketAddr, Error> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = std_listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let name = match surface {
        Surface::Main => "netward-admin",
        Surface::Debug => "netward-debug",
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let state = Arc::new(State {
                    surface,
                    metrics,
                    snapshots,
                });
                serve(
                    || async { listener.accept().await.map(|(s, _)| s) },
                    state,
                    MAX_CONNECTIONS,
                )
                .await;
            });
        })
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(bound)
}

/// What a connection's requests are answered from.
struct State {
    surface: Surface,
    metrics: Arc<Metrics>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// The accept loop: at most `max_connections` served at once, the excess closed at once,
/// and a doubling backoff while `accept` fails. Generic over the accept so that the
/// backoff can be tested without running out of descriptors.
async fn serve<A, F, S>(mut accept: A, state: Arc<State>, max_connections: usize)
where
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let stream = match accept().await {
            Ok(s) => {
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) => {
                STATS.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis(), "admin server cannot accept; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            STATS.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            connection(stream, state).await;
            drop(permit);
        });
    }
}

/// Serves one connection, within [`HEADER_READ_TIMEOUT`] per header and
/// [`MAX_CONNECTION_AGE`] in all.
async fn connection<S>(stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&req, &state)) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match state.surface {
        Surface::Main => route_main(req.uri().path(), &state.metrics),
        Surface::Debug => match req.uri().path() {
            "/debug/snapshot" => {
                let snap = state.snapshots.borrow().clone();
                reply(
                    StatusCode::OK,
                    "application/json",
                    debug_snapshot(&snap).to_string(),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /debug/snapshot\n".into(),
            ),
        },
    }
}

fn route_main(path: &str, metrics: &Arc<Metrics>) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => {
            let stalled = metrics.stalled();
            if stalled.is_empty() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                let which: Vec<String> = stalled
                    .iter()
                    .map(|(name, limit)| format!("{name} (none for {}s)", limit.as_secs()))
                    .collect();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("unhealthy: no heartbeat from {}\n", which.join(", ")),
                )
            }
        }
        "/readyz" => match metrics.not_ready_reason() {
            None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz (/debug/snapshot is on the --debug-addr listener)\n".into(),
        ),
    }
}

/// A JSON dump of the compiled snapshot, for support.
pub fn debug_snapshot(snap: &Snapshot) -> serde_json::Value {
    let pods: Vec<serde_json::Value> = snap
        .all_pods()
        .map(|p| {
            serde_json::json!({
                "pod": p.key(),
                "ips": p.ips,
                "node": p.node,
                "labels": p.labels,
                "host_network": p.host_network,
                "terminated": p.terminated,
                "ports": p.ports.iter().map(|c| serde_json::json!({"name": c.name, "port": c.port, "protocol": c.protocol})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let policies: Vec<serde_json::Value> = snap
        .policy_ids()
        .map(|id| {
            let p = snap.policy(id);
            serde_json::json!({
                "policy": p.key(),
                "mode": snap.policy_mode(id),
                "pod_selector": p.pod_selector.as_ref().map_or("INVALID (selects every pod of its namespace)".to_owned(), ToString::to_string),
                "ingress_rules": p.ingress.as_ref().map(Vec::len),
                "egress_rules": p.egress.as_ref().map(Vec::len),
                "errors": p.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let cluster_policies: Vec<serde_json::Value> = snap
        .cluster_policy_ids()
        .map(|id| {
            let p = snap.cluster_policy(id);
            serde_json::json!({
                "policy": p.name,
                "tier": p.tier,
                "priority": p.priority,
                "subject": p.subject.to_string(),
                "ingress_rules": p.ingress.as_ref().map(Vec::len),
                "egress_rules": p.egress.as_ref().map(Vec::len),
                "errors": p.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let services: Vec<serde_json::Value> = snap
        .services()
        .map(|s| serde_json::json!({"service": s.key(), "cluster_ips": s.cluster_ips}))
        .collect();
    serde_json::json!({
        "generation": snap.generation(),
        "pods": pods,
        "policies": policies,
        "cluster_policies": cluster_policies,
        "services": services,
    })
}
