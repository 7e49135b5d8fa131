//! The destination node's side: accepts mutual-TLS connections, answers `CONNECT`
//! streams after the checks, and relays them to the pods.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::http::{self, HeaderMap, Method, Request, Response, StatusCode};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use super::pump::{H2Io, pump};
use super::{
    Handler, REASON_HEADER, RefusalKind, RefusedEvent, SOURCE_ADDR_HEADER, SOURCE_UID_HEADER,
    StreamEnd, StreamOutcome, StreamRequest, TunnelConfig, TunnelSide, error_chain, header_safe,
    peer_node_of, socket_options, tls_error,
};

/// Per-stream HTTP/2 flow-control window (as ztunnel).
pub(super) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection HTTP/2 flow-control window.
pub(super) const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame accepted.
pub(super) const MAX_FRAME: u32 = 1024 * 1024;

/// Serves the tunnel on `listener` (the node IP, port 15008 by default) until
/// `shutdown` completes: then stops accepting, sends GOAWAY on every connection, and
/// returns once their live streams have ended. Dropping the future aborts every
/// connection and stream at once. Each connection and stream runs in its own task.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cfg: TunnelConfig,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(cfg.max_handshakes));
    let per_node: PerNode = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let local = listener.local_addr().ok();
    info!(listen.addr = ?local, "tunnel listener up");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer_addr)) => {
                    // Unauthenticated work is bounded: past the limit, close at once.
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        drop(tcp);
                        limited(&*handler, peer_addr, None, &format!(
                            "{} TLS handshakes in flight already", cfg.max_handshakes
                        ));
                        continue;
                    };
                    let span = info_span!("tunnel_conn", peer.addr = %peer_addr, peer.node = tracing::field::Empty);
                    let ctx = Accepted { acceptor: acceptor.clone(), cfg: cfg.clone(), handler: handler.clone(), per_node: per_node.clone() };
                    conns.spawn(
                        serve_conn(tcp, peer_addr, ctx, permit, stop_rx.clone())
                            .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    info!(
        connections = conns.len(),
        "tunnel listener stopped; draining connections"
    );
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    info!("tunnel drained");
}

/// Per-connection context of the request handler.
struct ConnCtx<H> {
    handler: Arc<H>,
    cfg: Arc<TunnelConfig>,
    peer_addr: SocketAddr,
    peer_node: String,
}

/// Live authenticated connections per peer node.
type PerNode = Arc<std::sync::Mutex<HashMap<String, usize>>>;

/// What every accepted connection is served with.
struct Accepted<H> {
    acceptor: TlsAcceptor,
    cfg: Arc<TunnelConfig>,
    handler: Arc<H>,
    per_node: PerNode,
}

/// One live connection from a peer node, counted in [`PerNode`] until dropped.
struct NodeSlot {
    per_node: PerNode,
    node: String,
}

impl NodeSlot {
    /// Takes a slot for `node`, unless `max` of its connections are live.
    fn take(per_node: &PerNode, node: &str, max: usize) -> Option<NodeSlot> {
        let mut map = per_node.lock().ok()?;
        let n = map.entry(node.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(NodeSlot {
            per_node: per_node.clone(),
            node: node.to_owned(),
        })
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.per_node.lock()
            && let Some(n) = map.get_mut(&self.node)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.node);
            }
        }
    }
}

fn limited<H: Handler>(handler: &H, peer_addr: SocketAddr, peer_node: Option<&str>, reason: &str) {
    debug!(reason = %reason, "tunnel connection refused: limit");
    handler.refused(RefusedEvent {
        kind: RefusalKind::Limit,
        peer_addr,
        peer_node,
        request: None,
        status: None,
        reason,
    });
}

async fn serve_conn<H: Handler>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    accepted: Accepted<H>,
    handshake: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let Accepted {
        acceptor,
        cfg,
        handler,
        per_node,
    } = accepted;
    if let Err(e) = socket_options(socket2::SockRef::from(&tcp), cfg.mark) {
        warn!(error = %e, "cannot set the tunnel socket options");
    }
    let tls = match tokio::time::timeout(cfg.connect_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = tls_error(&e).unwrap_or_else(|| error_chain(&e));
            tls_refused(&*handler, peer_addr, &reason);
            return;
        }
        Err(_) => {
            let reason = format!("TLS handshake timed out after {:?}", cfg.connect_timeout);
            tls_refused(&*handler, peer_addr, &reason);
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let peer_node = match peer_node_of(session.peer_certificates(), &cfg.trust_domain) {
        Ok(node) => node,
        Err(why) => {
            let reason = format!("the client certificate names no netward node: {why}");
            warn!(reason = %reason, "tunnel peer refused");
            handler.refused(RefusedEvent {
                kind: RefusalKind::PeerIdentity,
                peer_addr,
                peer_node: None,
                request: None,
                status: None,
                reason: &reason,
            });
            return;
        }
    };
    drop(handshake);
    let Some(_slot) = NodeSlot::take(&per_node, &peer_node, cfg.max_conns_per_node) else {
        limited(
            &*handler,
            peer_addr,
            Some(&peer_node),
            &format!(
                "{} connections from node {peer_node} already",
                cfg.max_conns_per_node
            ),
        );
        return;
    };
    tracing::Span::current().record("peer.node", peer_node.as_str());
    debug!("tunnel connection accepted");

    let ctx = Arc::new(ConnCtx {
        handler,
        cfg: cfg.clone(),
        peer_addr,
        peer_node,
    });
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, ctx).await) }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(cfg.max_header_list_size)
        .max_concurrent_streams(u32::try_from(cfg.max_streams_per_conn).unwrap_or(u32::MAX))
        .keep_alive_interval(cfg.keepalive)
        .keep_alive_timeout(cfg.keepalive);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => debug!("tunnel connection closed"),
        Err(e) => match tls_error(&e) {
            Some(tls) => warn!(error = %tls, "tunnel connection ended on a TLS error"),
            None => debug!(error = %error_chain(&e), "tunnel connection ended"),
        },
    }
}

fn tls_refused<H: Handler>(handler: &H, peer_addr: SocketAddr, reason: &str) {
    warn!(reason = %reason, "tunnel TLS handshake failed");
    handler.refused(RefusedEvent {
        kind: RefusalKind::Tls,
        peer_addr,
        peer_node: None,
        request: None,
        status: None,
        reason,
    });
}

/// One `CONNECT`: checks, connect, answer; the relay runs in its own task.
async fn handle<H: Handler>(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx<H>>,
) -> Response<Empty<Bytes>> {
    let parsed = match parse(&req) {
        Ok(parsed) => parsed,
        Err(reason) => return refuse(&ctx, RefusalKind::BadRequest, 400, &reason, None),
    };
    let span = info_span!(
        "tunnel_stream",
        dst.addr = %parsed.dst,
        src.addr = %parsed.src,
        status = tracing::field::Empty,
    );
    let _entered = span.enter();
    let ticket = match ctx.handler.authorize(&ctx.peer_node, &parsed) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            let status = match refusal.status {
                s @ 400..=599 => s,
                _ => 403,
            };
            span.record("status", status);
            return refuse(
                &ctx,
                RefusalKind::Policy,
                status,
                &refusal.reason,
                Some(&parsed),
            );
        }
    };
    drop(_entered);
    let connected = tokio::time::timeout(
        ctx.cfg.connect_timeout,
        ctx.handler.connect(&ticket, &parsed),
    )
    .instrument(span.clone())
    .await;
    let upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            span.record("status", 503);
            let reason = format!("connect to {} failed: {e}", parsed.dst);
            let _entered = span.enter();
            return refuse(&ctx, RefusalKind::Unavailable, 503, &reason, Some(&parsed));
        }
        Err(_) => {
            span.record("status", 503);
            let reason = format!(
                "connect to {} timed out after {:?}",
                parsed.dst, ctx.cfg.connect_timeout
            );
            let _entered = span.enter();
            return refuse(&ctx, RefusalKind::Unavailable, 503, &reason, Some(&parsed));
        }
    };
    if let Err(e) = upstream.set_nodelay(true) {
        debug!(parent: &span, error = %e, "cannot set TCP_NODELAY on the upstream socket");
    }
    span.record("status", 200);
    debug!(parent: &span, "tunnel stream accepted");

    let on_upgrade = hyper::upgrade::on(&mut req);
    let handler = ctx.handler.clone();
    let idle = ctx.cfg.idle_timeout;
    let grace = ctx.cfg.reset_grace;
    let relay_span = span.clone();
    tokio::spawn(
        async move {
            let outcome = match on_upgrade.await {
                Ok(upgraded) => pump(H2Io::new(upgraded, grace), upstream, idle).await,
                Err(e) => {
                    super::pump::End::abort(upstream);
                    StreamOutcome {
                        to_server: 0,
                        to_client: 0,
                        duration: Duration::ZERO,
                        end: StreamEnd::Error {
                            side: TunnelSide::Client,
                            msg: format!(
                                "the CONNECT stream was not handed over: {}",
                                error_chain(&e)
                            ),
                        },
                    }
                }
            };
            debug!(
                to_server = outcome.to_server,
                to_client = outcome.to_client,
                end = %outcome.end,
                "tunnel stream ended"
            );
            handler.finished(ticket, outcome);
        }
        .instrument(relay_span),
    );
    Response::new(Empty::new())
}

/// A refusal: reported to the handler, answered with `status` and `netward-reason`.
fn refuse<H: Handler>(
    ctx: &ConnCtx<H>,
    kind: RefusalKind,
    status: u16,
    reason: &str,
    request: Option<&StreamRequest>,
) -> Response<Empty<Bytes>> {
    let reason = header_safe(reason);
    info!(
        peer.node = %ctx.peer_node,
        status,
        reason = %reason,
        kind = %kind,
        "tunnel stream refused"
    );
    ctx.handler.refused(RefusedEvent {
        kind,
        peer_addr: ctx.peer_addr,
        peer_node: Some(&ctx.peer_node),
        request,
        status: Some(status),
        reason: &reason,
    });
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    if let Ok(value) = http::HeaderValue::from_str(&reason) {
        resp.headers_mut().insert(REASON_HEADER, value);
    }
    resp
}

/// The stream request a `CONNECT` carries, or why it is malformed.
fn parse<B>(req: &Request<B>) -> Result<StreamRequest, String> {
    if req.method() != Method::CONNECT {
        return Err(format!("method {} is not CONNECT", req.method()));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| "CONNECT without :authority".to_owned())?;
    let dst = SocketAddr::from_str(authority.as_str())
        .map_err(|_| format!("authority {authority} is not an ip:port"))?;
    let headers = req.headers();
    let src = match header_str(headers, SOURCE_ADDR_HEADER)? {
        Some(value) => SocketAddr::from_str(value)
            .map_err(|_| format!("{SOURCE_ADDR_HEADER} {value:?} is not an ip:port"))?,
        None => forwarded_for(headers)?.ok_or_else(|| {
            format!("no source address ({SOURCE_ADDR_HEADER} or forwarded: for=)")
        })?,
    };
    let src_uid = header_str(headers, SOURCE_UID_HEADER)?
        .filter(|uid| !uid.is_empty())
        .map(str::to_owned);
    Ok(StreamRequest { dst, src, src_uid })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| format!("{name} is not ASCII")))
        .transpose()
}

/// The `for=` address of an RFC 7239 `forwarded` header (its first element).
fn forwarded_for(headers: &HeaderMap) -> Result<Option<SocketAddr>, String> {
    let Some(value) = header_str(headers, http::header::FORWARDED.as_str())? else {
        return Ok(None);
    };
    let first = value.split(',').next().unwrap_or("");
    for pair in first.split(';') {
        let Some((key, val)) = pair.trim().split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("for") {
            let val = val.trim().trim_matches('"');
            return SocketAddr::from_str(val)
                .map(Some)
                .map_err(|_| format!("forwarded for={val:?} is not an ip:port"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn connect(authority: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::CONNECT)
            .uri(http::Uri::builder().authority(authority).build().unwrap())
    }

    #[test]
    fn parses_requests() {
        let req = connect("[fd00::3]:8080")
            .header(SOURCE_ADDR_HEADER, "[fd00::1]:4000")
            .header(SOURCE_UID_HEADER, "uid-1")
            .body(())
            .unwrap();
        let parsed = parse(&req).unwrap();
        assert_eq!(parsed.dst, "[fd00::3]:8080".parse().unwrap());
        assert_eq!(parsed.src, "[fd00::1]:4000".parse().unwrap());
        assert_eq!(parsed.src_uid.as_deref(), Some("uid-1"));

        let req = connect("10.0.0.3:80")
            .header(
                "forwarded",
                "for=\"[fd00::1]:4000\";proto=http, for=1.2.3.4",
            )
            .body(())
            .unwrap();
        assert_eq!(parse(&req).unwrap().src, "[fd00::1]:4000".parse().unwrap());
    }

    #[test]
    fn rejects_bad_requests() {
        let get = Request::builder().uri("http://x/").body(()).unwrap();
        assert!(parse(&get).unwrap_err().contains("not CONNECT"));
        let no_src = connect("10.0.0.3:80").body(()).unwrap();
        assert!(parse(&no_src).unwrap_err().contains("no source"));
        let bad_dst = connect("pod.example:80")
            .header(SOURCE_ADDR_HEADER, "10.0.0.1:1")
            .body(())
            .unwrap();
        assert!(parse(&bad_dst).unwrap_err().contains("not an ip:port"));
        let bad_src = connect("10.0.0.3:80")
            .header(SOURCE_ADDR_HEADER, "10.0.0.1")
            .body(())
            .unwrap();
        assert!(parse(&bad_src).is_err());
    }
}
