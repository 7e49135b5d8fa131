//! The admin server: `/metrics`, `/healthz`, `/readyz` and `/debug/snapshot`, on its own
//! thread and runtime, off the data plane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use netward_controller::Snapshot;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// `/healthz` fails when a loop that reports heartbeats ([`Metrics::beat`]) has been
/// silent this long: the process is up but wedged, and a restart is the fix.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

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
}

/// Starts the admin server on `addr` (its own thread). Returns the address it bound.
pub fn start(
    addr: SocketAddr,
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
    std::thread::Builder::new()
        .name("netward-admin".into())
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
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (metrics, snapshots) = (metrics.clone(), snapshots.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (metrics, snapshots) = (metrics.clone(), snapshots.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(route(&req, &metrics, &snapshots))
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            });
        })
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(bound)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(
    req: &Request<Incoming>,
    metrics: &Arc<Metrics>,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
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
        "/debug/snapshot" => {
            let snap = snapshots.borrow().clone();
            reply(
                StatusCode::OK,
                "application/json",
                debug_snapshot(&snap).to_string(),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /debug/snapshot\n".into(),
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
    let services: Vec<serde_json::Value> = snap
        .services()
        .map(|s| serde_json::json!({"service": s.key(), "cluster_ips": s.cluster_ips}))
        .collect();
    serde_json::json!({
        "generation": snap.generation(),
        "pods": pods,
        "policies": policies,
        "services": services,
    })
}
