//! The byte pump of a tunneled stream, on both nodes: a TCP socket on one end, the
//! HTTP/2 stream on the other. Shaped like tokio's `copy_bidirectional`, with an
//! explicit state per direction, half-close, resets and an idle timeout.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::{StreamEnd, StreamOutcome, TunnelSide, TunnelStream, error_chain};

/// Bytes buffered per direction.
const BUF_SIZE: usize = 64 * 1024;
/// Times the reader yields, after the peer's `END_STREAM`, before waiting on the grace
/// timer for a reset to show on the write side.
const RESET_PROBE_YIELDS: u8 = 4;

/// One end of the pump: how it reports a reset and how it is aborted.
pub(super) trait End: AsyncRead + AsyncWrite + Unpin {
    /// Whether an I/O error of this end is a reset (rather than another failure).
    fn is_reset(&self, e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
    }

    /// Ends it abruptly: a TCP RST, or an HTTP/2 stream reset.
    fn abort(self);
}

impl End for TcpStream {
    fn abort(self) {
        // SO_LINGER 0: close sends an RST, so the peer never mistakes it for a FIN.
        let _ = socket2::SockRef::from(&self).set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

/// The HTTP/2 side of a stream: hyper's upgraded `CONNECT` stream, plus the state of
/// the reset probe (see the module documentation of `tunnel`).
pub(super) struct H2Io {
    io: TokioIo<Upgraded>,
    grace: Duration,
    eof: Eof,
    /// Our direction was ended cleanly (`END_STREAM` sent).
    write_closed: bool,
    yields: u8,
    timer: Option<Pin<Box<Sleep>>>,
}

/// What the reader knows about the end of the peer's direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Eof {
    /// Not seen yet.
    No,
    /// Seen; checking whether it was a reset.
    Probing,
    /// A clean `END_STREAM`.
    Clean,
    /// A reset.
    Reset,
}

impl H2Io {
    pub(super) fn new(upgraded: Upgraded, grace: Duration) -> Self {
        Self {
            io: TokioIo::new(upgraded),
            grace,
            eof: Eof::No,
            write_closed: false,
            yields: 0,
            timer: None,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.eof == Eof::No {
            let before = buf.filled().len();
            let had_room = buf.remaining() > 0;
            ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            if !had_room || buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            self.eof = Eof::Probing;
        }
        if self.eof == Eof::Probing {
            self.eof = if ready!(self.poll_probe_reset(cx)) {
                Eof::Reset
            } else {
                Eof::Clean
            };
        }
        Poll::Ready(match self.eof {
            Eof::Reset => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the tunnel stream was reset by the peer",
            )),
            _ => Ok(()),
        })
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        self.write_closed = true;
        Poll::Ready(Ok(()))
    }
}

impl H2Io {
    /// After the peer's direction ended: `true` when that end was really a reset.
    fn poll_probe_reset(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.write_closed {
            // Both directions are done: a peer that aborts now sends no RST_STREAM.
            return Poll::Ready(false);
        }
        // hyper reads RST_STREAM(CANCEL | NO_ERROR) as EOF, and an aborting peer sends
        // END_STREAM first anyway; the reset shows on our write side, whose task ends
        // with an error. A flush reports that error once the task has seen it.
        if let Poll::Ready(Err(_)) = Pin::new(&mut self.io).poll_flush(cx) {
            return Poll::Ready(true);
        }
        if self.yields < RESET_PROBE_YIELDS {
            // Let the write task run: the reset usually arrived in the same read.
            self.yields += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.grace.is_zero() {
            return Poll::Ready(false);
        }
        let grace = self.grace;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(matches!(
            Pin::new(&mut self.io).poll_flush(cx),
            Poll::Ready(Err(_))
        ))
    }
}

impl End for H2Io {
    fn is_reset(&self, e: &io::Error) -> bool {
        // hyper reports a reset stream as `Other` wrapping an h2 "stream error".
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ) || error_chain(e).contains("stream error")
    }

    fn abort(self) {
        // Dropping an unfinished upgraded stream resets it (after END_STREAM; see above).
        drop(self);
    }
}

impl End for TunnelStream {
    fn is_reset(&self, e: &io::Error) -> bool {
        self.io().is_reset(e)
    }

    fn abort(self) {
        drop(self);
    }
}

/// Relays a pod's connection (`client`, on the source node) through a tunneled stream
/// until both directions have ended, one side resets or fails, or no byte moves for
/// `idle`. Half-close and resets propagate (see the module documentation). Both ends are
/// closed on return: gracefully after a clean end, with resets otherwise.
pub async fn relay(client: TcpStream, stream: TunnelStream, idle: Duration) -> StreamOutcome {
    pump(client, stream, idle).await
}

/// The pump itself, for both nodes: `client` is the end toward the connecting pod.
pub(super) async fn pump<C: End, S: End>(
    mut client: C,
    mut server: S,
    idle: Duration,
) -> StreamOutcome {
    let start = Instant::now();
    let mut to_server = Direction::new(TunnelSide::Client);
    let mut to_client = Direction::new(TunnelSide::Server);
    let mut last_activity = Instant::now();
    let mut idle_timer = Box::pin(tokio::time::sleep(idle));
    let mut first_fin: Option<TunnelSide> = None;

    let end = poll_fn(|cx| {
        let before = (to_server.bytes, to_client.bytes);
        let a = to_server.poll(cx, &mut client, &mut server);
        let b = to_client.poll(cx, &mut server, &mut client);
        if (to_server.bytes, to_client.bytes) != before {
            last_activity = Instant::now();
        }
        for dir in [&to_server, &to_client] {
            if dir.read_eof && first_fin.is_none() {
                first_fin = Some(dir.from);
            }
        }
        match (a, b) {
            (Poll::Ready(Err(end)), _) | (_, Poll::Ready(Err(end))) => return Poll::Ready(end),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                return Poll::Ready(StreamEnd::Fin {
                    first: first_fin.unwrap_or(TunnelSide::Client),
                });
            }
            _ => {}
        }
        loop {
            ready!(idle_timer.as_mut().poll(cx));
            let deadline = last_activity + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(StreamEnd::IdleTimeout);
            }
            idle_timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    })
    .await;

    let outcome = StreamOutcome {
        to_server: to_server.bytes,
        to_client: to_client.bytes,
        duration: start.elapsed(),
        end,
    };
    if !matches!(outcome.end, StreamEnd::Fin { .. }) {
        client.abort();
        server.abort();
    }
    outcome
}

/// One direction of the pump.
struct Direction {
    /// The side it reads from.
    from: TunnelSide,
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_eof: bool,
    shut_down: bool,
    need_flush: bool,
    bytes: u64,
}

impl Direction {
    fn new(from: TunnelSide) -> Self {
        Self {
            from,
            buf: None,
            pos: 0,
            cap: 0,
            read_eof: false,
            shut_down: false,
            need_flush: false,
            bytes: 0,
        }
    }

    fn to(&self) -> TunnelSide {
        match self.from {
            TunnelSide::Client => TunnelSide::Server,
            TunnelSide::Server => TunnelSide::Client,
        }
    }

    /// Moves bytes until this direction is done (`Ok`), fails (`Err`), or must wait.
    fn poll<R: End, W: End>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<Result<(), StreamEnd>> {
        loop {
            if self.shut_down {
                return Poll::Ready(Ok(()));
            }
            // Write out what is buffered.
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                match Pin::new(&mut *to).poll_write(cx, &buf[self.pos..self.cap]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(self.failed(
                            to,
                            self.to(),
                            io::ErrorKind::WriteZero.into(),
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(self.failed(to, self.to(), e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.read_eof {
                return match ready!(Pin::new(&mut *to).poll_shutdown(cx)) {
                    Ok(()) => {
                        self.shut_down = true;
                        self.buf = None;
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => Poll::Ready(Err(self.failed(to, self.to(), e))),
                };
            }
            // Read more.
            let buf = self
                .buf
                .get_or_insert_with(|| vec![0u8; BUF_SIZE].into_boxed_slice());
            let mut read_buf = ReadBuf::new(buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.read_eof = true;
                    } else {
                        self.pos = 0;
                        self.cap = n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.failed(from, self.from, e))),
                Poll::Pending => {
                    if self.need_flush {
                        match Pin::new(&mut *to).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => {
                                return Poll::Ready(Err(self.failed(to, self.to(), e)));
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn failed<E: End>(&self, end: &E, side: TunnelSide, e: io::Error) -> StreamEnd {
        if end.is_reset(&e) {
            StreamEnd::Rst { side }
        } else {
            StreamEnd::Error {
                side,
                msg: error_chain(&e),
            }
        }
    }
}
