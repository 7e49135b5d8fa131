//! The workloads, run from the client pod against the server pod. Each one checks the
//! bytes it gets back, so a path that corrupts, truncates or drops a stream fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use netward_proxy::lab::netns::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::servers::{IPERF_PORT, rr_response};

/// How long any single socket operation may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What an iperf3 run measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bulk {
    /// Received bits per second, all streams.
    pub(crate) bits_per_second: f64,
    /// Bytes received by the server.
    pub(crate) bytes: f64,
}

/// `iperf3 -c` from the client pod: `-P streams`, for `secs` seconds or `bytes` bytes.
pub(crate) fn iperf(
    client: &Netns,
    server: &str,
    streams: u32,
    amount: Amount,
    out: &Path,
) -> Result<Bulk> {
    let file = std::fs::File::create(out)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client.name(), "iperf3", "-c", server, "-J"])
        .args(["-p", &IPERF_PORT.to_string(), "-P", &streams.to_string()])
        .args(["--connect-timeout", "5000"])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let limit = match amount {
        Amount::Seconds(s) => {
            cmd.args(["-t", &s.to_string()]);
            Duration::from_secs(u64::from(s) + 30)
        }
        Amount::Bytes(b) => {
            cmd.args(["-n", &b.to_string()]);
            Duration::from_secs(60)
        }
    };
    let mut child = cmd.spawn().context("starting iperf3 -c")?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("iperf3 -c did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(out)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("iperf3 printed no JSON ({status}): {text}"))?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    let sum = &json["end"]["sum_received"];
    let (Some(bits_per_second), Some(bytes)) =
        (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64())
    else {
        bail!("iperf3 JSON without end.sum_received: {text}");
    };
    ensure!(status.success(), "iperf3 -c failed ({status})");
    Ok(Bulk {
        bits_per_second,
        bytes,
    })
}

/// How long an iperf3 run lasts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Amount {
    /// `-t`.
    Seconds(u32),
    /// `-n`.
    Bytes(u64),
}

/// FNV-1a over a byte stream, and its length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sum(u64, u64);

impl Sum {
    fn add(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        self.1 += data.len() as u64;
    }
}

/// `streams` connections to the echo server, each sending `bytes` of a pattern and
/// reading the echo back at the same time; fails unless every echo has the sender's
/// checksum and length. Returns the bytes moved (both ways).
pub(crate) fn checked_echo(
    client: &Netns,
    dst: SocketAddr,
    streams: usize,
    bytes: u64,
) -> Result<u64> {
    client.run(move || -> Result<u64> {
        let mut handles = Vec::new();
        for s in 0..streams {
            handles.push(std::thread::spawn(move || -> Result<u64> {
                let conn = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
                conn.set_read_timeout(Some(IO_TIMEOUT))?;
                conn.set_write_timeout(Some(IO_TIMEOUT))?;
                let mut w = conn.try_clone()?;
                let writer = std::thread::spawn(move || -> std::io::Result<Sum> {
                    let mut sum = Sum::default();
                    let mut chunk = vec![0u8; 64 * 1024];
                    let mut sent = 0u64;
                    let mut i = s as u64;
                    while sent < bytes {
                        let n = chunk.len().min((bytes - sent) as usize);
                        for (j, b) in chunk[..n].iter_mut().enumerate() {
                            *b = (i.wrapping_mul(31).wrapping_add(j as u64 * 7) % 251) as u8;
                        }
                        sum.add(&chunk[..n]);
                        w.write_all(&chunk[..n])?;
                        sent += n as u64;
                        i += 1;
                    }
                    w.shutdown(std::net::Shutdown::Write)?;
                    Ok(sum)
                });
                let mut r = conn;
                let mut sum = Sum::default();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = r.read(&mut buf).context("reading the echo")?;
                    if n == 0 {
                        break;
                    }
                    sum.add(&buf[..n]);
                }
                let sent = writer
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer panicked"))??;
                ensure!(
                    sent == sum,
                    "stream {s}: sent {} bytes (checksum {:#x}), echo {} bytes (checksum {:#x})",
                    sent.1,
                    sent.0,
                    sum.1,
                    sum.0
                );
                Ok(sent.1 * 2)
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| anyhow::anyhow!("stream panicked"))??;
        }
        Ok(total)
    })?
}

/// Connection rate: `total` connections, `concurrency` at a time, each one 16-byte
/// request, the server's 16-byte answer (checked), and the server's close.
/// Returns connections per second.
pub(crate) fn conn_rate(
    client: &Netns,
    dst: SocketAddr,
    total: usize,
    concurrency: usize,
) -> Result<f64> {
    client.run(move || -> Result<f64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let next = next.clone();
                set.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok::<(), anyhow::Error>(());
                        }
                        tokio::time::timeout(IO_TIMEOUT, one_request(dst, i as u64))
                            .await
                            .with_context(|| format!("connection {i} timed out"))?
                            .with_context(|| format!("connection {i}"))?;
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            Ok(total as f64 / start.elapsed().as_secs_f64())
        })
    })?
}

async fn one_request(dst: SocketAddr, i: u64) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(dst).await?;
    s.set_nodelay(true)?;
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&i.to_le_bytes());
    req[8..].copy_from_slice(b"netward!");
    s.write_all(&req).await?;
    let mut resp = [0u8; 16];
    s.read_exact(&mut resp).await?;
    ensure!(resp == rr_response(&req), "wrong response");
    let mut rest = [0u8; 1];
    ensure!(s.read(&mut rest).await? == 0, "no close after the response");
    Ok(())
}

/// 1-byte ping-pong on one connection: `samples` round trips (after `warmup`), in µs.
pub(crate) fn ping_pong(
    client: &Netns,
    dst: SocketAddr,
    warmup: usize,
    samples: usize,
) -> Result<Vec<f64>> {
    client.run(move || -> Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut out = Vec::with_capacity(samples);
        let mut byte = [0u8; 1];
        for i in 0..warmup + samples {
            let b = (i % 251) as u8;
            let t = Instant::now();
            s.write_all(&[b])?;
            s.read_exact(&mut byte)?;
            let dt = t.elapsed();
            ensure!(byte[0] == b, "round trip {i}: sent {b}, got {}", byte[0]);
            if i >= warmup {
                out.push(dt.as_secs_f64() * 1e6);
            }
        }
        Ok(out)
    })?
}

/// Connect, 1-byte ping-pong, close: `samples` new connections, in µs each (connect to
/// the answer).
pub(crate) fn new_conn_latency(
    client: &Netns,
    dst: SocketAddr,
    samples: usize,
) -> Result<Vec<f64>> {
    client.run(move || -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(samples);
        let mut byte = [0u8; 1];
        for i in 0..samples {
            let b = (i % 251) as u8;
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(&[b])?;
            s.read_exact(&mut byte)?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
            ensure!(byte[0] == b, "connection {i}: sent {b}, got {}", byte[0]);
        }
        Ok(out)
    })?
}

/// Opens `n` connections to the hold server and checks each with a 1-byte echo; they
/// stay open (idle, established end to end) until the returned sockets are dropped.
pub(crate) fn open_idle(client: &Netns, dst: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    client.run(move || -> Result<Vec<TcpStream>> {
        let mut conns = Vec::with_capacity(n);
        let mut byte = [0u8; 1];
        for i in 0..n {
            let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
                .with_context(|| format!("idle connection {i}"))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(&[7])?;
            s.read_exact(&mut byte)
                .with_context(|| format!("idle connection {i}: no echo"))?;
            ensure!(byte[0] == 7, "idle connection {i}: wrong echo");
            conns.push(s);
        }
        Ok(conns)
    })?
}
