//! What the server pod runs: three small TCP servers on one tokio thread, and iperf3.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netward_proxy::lab::netns::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// iperf3's port.
pub(crate) const IPERF_PORT: u16 = 5201;
/// Echo with a 64 KiB buffer, `TCP_NODELAY`: checksummed transfers and ping-pong.
pub(crate) const ECHO_PORT: u16 = 7001;
/// One 16-byte request, one 16-byte response, then the server closes: connection rate.
pub(crate) const RR_PORT: u16 = 7002;

/// Connections the request-response server accepted (each upstream a proxy opens,
/// used or not): against the client's connections, it shows second connects.
pub(crate) static RR_ACCEPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Echo with a 64-byte buffer: the idle connections (10,000 of them must stay cheap).
pub(crate) const HOLD_PORT: u16 = 7003;

/// The response to a connection-rate request: every byte complemented.
pub(crate) fn rr_response(req: &[u8; 16]) -> [u8; 16] {
    req.map(|b| !b)
}

/// The servers; stopped when dropped.
pub(crate) struct Servers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
}

impl Servers {
    /// Binds every port in `ns` and serves until dropped.
    pub(crate) fn start(ns: &Netns) -> Result<Servers> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = ns.spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let bind = |port| {
                    netward_proxy::lab::servers::bind_tcp(SocketAddr::from((
                        Ipv4Addr::UNSPECIFIED,
                        port,
                    )))
                };
                let listeners = (|| {
                    Ok::<_, std::io::Error>((bind(ECHO_PORT)?, bind(RR_PORT)?, bind(HOLD_PORT)?))
                })();
                let (echo, rr, hold) = match listeners {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut tasks = tokio::task::JoinSet::new();
                tasks.spawn(serve(echo, |s| echo_conn(s, 64 * 1024)));
                tasks.spawn(serve(rr, |s| {
                    RR_ACCEPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    rr_conn(s)
                }));
                tasks.spawn(serve(hold, |s| echo_conn(s, 64)));
                let _ = stop_rx.await;
                tasks.abort_all();
            });
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Servers {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e).context("binding the bench servers"),
            Err(_) => bail!("the bench servers did not start within 10 s"),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler(stream));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Echoes until EOF, then half-closes so the client sees every byte.
async fn echo_conn(mut stream: TcpStream, buf_size: usize) {
    let mut buf = vec![0u8; buf_size];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn rr_conn(mut stream: TcpStream) {
    let mut req = [0u8; 16];
    if stream.read_exact(&mut req).await.is_err() {
        return;
    }
    let _ = stream.write_all(&rr_response(&req)).await;
    let _ = stream.shutdown().await;
}

/// `iperf3 -s` in a namespace; killed when dropped.
pub(crate) struct Iperf {
    child: Child,
}

impl Iperf {
    /// Starts the server and waits (at most 5 s) until it listens.
    pub(crate) fn start(ns: &Netns, log: &Path) -> Result<Iperf> {
        let file = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iperf3", "-s", "-p"])
            .arg(IPERF_PORT.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting iperf3 -s")?;
        let mut iperf = Iperf { child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = iperf.child.try_wait() {
                bail!("iperf3 -s exited at once ({status})");
            }
            let ss = ns.exec(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])?;
            if !ss.trim().is_empty() {
                return Ok(iperf);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("iperf3 -s did not listen within 5 s")
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
