//! The splice(2) relay between a client and its upstream.
//!
//! Each direction moves bytes socket → pipe → socket with splice(2), so they
//! never enter user space. The shape follows tokio's `copy_bidirectional`: one
//! small state machine per direction, both polled from a single future, byte
//! counts per direction, and half-close propagated with `shutdown(Write)`.
//!
//! A direction only reads into its pipe when the pipe is empty. That keeps the
//! meaning of `EAGAIN` exact: from socket → empty pipe it can only mean "the
//! socket has no data", and from pipe → socket only "the socket's send buffer
//! is full". A pipe can fill up on fewer bytes than its size (one page slot
//! per socket buffer fragment), so reading into a non-empty pipe could get an
//! `EAGAIN` that says nothing about the socket, and clearing the socket's
//! readiness on it could stall the connection.
//!
//! A direction holds its pipe only while bytes move: when its source has
//! nothing to read, the empty pipe goes back to the pool (`Mover::Parked`) and
//! is taken again on the next readiness. An idle connection then holds two
//! descriptors (its sockets) instead of six, and no pipe in the kernel.
//!
//! Splice into a socket whose peer is gone raises `SIGPIPE`; the relay relies
//! on Rust's default of ignoring it.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::pipe as sys;

/// Relay directions that wanted splice but fell back to the copy loop since
/// the process started (splice unsupported, or no pipe could be created).
pub static SPLICE_FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Set once the "splice unavailable" warning has been logged.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Set once the "splice disabled" note has been logged.
static COPY_MODE_NOTED: AtomicBool = AtomicBool::new(false);

/// The default size of each direction's pipe (or copy buffer).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Smaller sizes are raised to this: a zero-length splice or read would look
/// like end of stream.
const MIN_BUFFER_SIZE: usize = 4096;

/// How many empty pipes are kept for reuse across connections.
pub const PIPE_POOL_MAX: usize = 64;

/// How the relay moves bytes; read once from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// Use splice(2); `false` forces the copy loop (netward's "copy" mode).
    pub splice: bool,
    /// Size of each direction's pipe, or of its buffer in copy mode. It is
    /// the most a connection holds in flight per direction, so it bounds the
    /// proxy's memory: 2 × this per connection.
    pub buffer_size: usize,
    /// Close both sides with a reset after this long without a byte moving in
    /// either direction. `None` waits forever.
    pub idle_timeout: Option<Duration>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            splice: true,
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// One end of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client whose connection was intercepted.
    Client,
    /// Our connection to the original destination.
    Upstream,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Self {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// Both sides sent FIN; `first` sent it first.
    Fin {
        /// The side that finished sending first.
        first: Side,
    },
    /// `side` reset the connection (or vanished); the other side was reset too.
    Rst {
        /// The side that reset.
        side: Side,
    },
    /// No byte moved for the idle timeout; both sides were reset.
    IdleTimeout,
    /// The policy stopped allowing the connection; both sides were reset.
    Revoked,
    /// `side` failed with an error other than a reset; the other side was
    /// reset. Only found in a [`RelayError`]'s outcome.
    Error {
        /// The side that failed.
        side: Side,
    },
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Fin { first } => write!(f, "fin ({first} first)"),
            End::Rst { side } => write!(f, "rst from {side}"),
            End::IdleTimeout => f.write_str("idle timeout"),
            End::Revoked => f.write_str("revoked"),
            End::Error { side } => write!(f, "{side} error"),
        }
    }
}

/// What a finished relay did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Bytes delivered to the upstream.
    pub client_to_upstream: u64,
    /// Bytes delivered to the client.
    pub upstream_to_client: u64,
    /// Time from the start of the relay to its end.
    pub duration: Duration,
    /// How it ended.
    pub end: End,
    /// Both directions used splice all along (no copy loop).
    pub spliced: bool,
}

/// A relay that ended on an I/O error other than a reset.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client's socket failed.
    #[error("client connection failed: {source}")]
    Client {
        /// The underlying error.
        #[source]
        source: io::Error,
        /// Byte counts and duration up to the failure.
        outcome: RelayOutcome,
    },
    /// The upstream socket failed.
    #[error("upstream connection failed: {source} (the destination may have gone away)")]
    Upstream {
        /// The underlying error.
        #[source]
        source: io::Error,
        /// Byte counts and duration up to the failure.
        outcome: RelayOutcome,
    },
}

impl RelayError {
    /// Byte counts and duration up to the failure.
    pub fn outcome(&self) -> &RelayOutcome {
        match self {
            RelayError::Client { outcome, .. } | RelayError::Upstream { outcome, .. } => outcome,
        }
    }

    /// The side that failed.
    pub fn side(&self) -> Side {
        match self {
            RelayError::Client { .. } => Side::Client,
            RelayError::Upstream { .. } => Side::Upstream,
        }
    }
}

/// Relays bytes both ways between `client` and `upstream` until both sides
/// have finished, one resets or fails, or the idle timeout expires.
///
/// Both sockets are closed on return: gracefully after a FIN on both sides,
/// with a reset (`SO_LINGER` 0) otherwise, so that neither peer mistakes a
/// broken connection for a complete one. A reset from a peer is a normal end
/// and gives `Ok` with [`End::Rst`]; other I/O errors give `Err`.
///
/// The future owns everything it needs (`'static`), so it can be spawned
/// while `opts` stays with the caller. Dropping it closes both sockets.
pub fn relay(
    client: TcpStream,
    upstream: TcpStream,
    opts: &RelayOptions,
) -> impl Future<Output = Result<RelayOutcome, RelayError>> + Send + 'static {
    relay_until(client, upstream, opts, std::future::pending())
}

/// [`relay`], ended early when `revoke` completes: the policy no longer allows the
/// connection. Both sides are then reset and the outcome says [`End::Revoked`].
pub fn relay_until<R>(
    client: TcpStream,
    upstream: TcpStream,
    opts: &RelayOptions,
    revoke: R,
) -> impl Future<Output = Result<RelayOutcome, RelayError>> + Send + 'static
where
    R: Future<Output = ()> + Send + 'static,
{
    // A plain fn rather than `async fn`: the sockets go straight into `Conn`
    // instead of being stored twice in the future (arguments, then locals).
    let start = Instant::now();
    let mut conn = Conn {
        c2u: Direction::new(Side::Client, opts),
        u2c: Direction::new(Side::Upstream, opts),
        client,
        upstream,
        first_fin: None,
        last_activity: start,
    };
    let idle = opts.idle_timeout;
    async move {
        let sleep = idle.map(tokio::time::sleep);
        tokio::pin!(sleep);
        tokio::pin!(revoke);
        let result = poll_fn(|cx| {
            if revoke.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(End::Revoked));
            }
            conn.poll_relay(cx, sleep.as_mut(), idle)
        })
        .await;
        conn.finish(result, start)
    }
}

/// Everything one relayed connection holds.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    c2u: Direction,
    u2c: Direction,
    /// The side whose FIN was passed on first.
    first_fin: Option<Side>,
    /// When a byte last moved, as of the last time both directions waited.
    last_activity: Instant,
}

impl Conn {
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Option<Sleep>>,
        idle: Option<Duration>,
    ) -> Poll<Result<End, Failure>> {
        let mut active = false;
        loop {
            // Round robin, one syscall per direction per turn, so that a busy
            // direction cannot starve the other; tokio's cooperative budget
            // (spent by every readiness poll) makes the task yield eventually.
            let a = self.c2u.poll_step(cx, &self.client, &self.upstream);
            let b = self.u2c.poll_step(cx, &self.upstream, &self.client);
            let mut progressed = false;
            for (step, from) in [(a, Side::Client), (b, Side::Upstream)] {
                match step {
                    Poll::Ready(Ok(Step::Moved)) => progressed = true,
                    Poll::Ready(Ok(Step::Finished)) => {
                        self.first_fin.get_or_insert(from);
                        progressed = true;
                    }
                    Poll::Ready(Ok(Step::Done)) | Poll::Pending => {}
                    Poll::Ready(Err(failure)) => return Poll::Ready(Err(failure)),
                }
            }
            if self.c2u.state == State::Done && self.u2c.state == State::Done {
                let first = self.first_fin.unwrap_or(Side::Client);
                return Poll::Ready(Ok(End::Fin { first }));
            }
            if !progressed {
                break;
            }
            active = true;
        }

        // Both directions wait for readiness. Check the idle timer; it is
        // only moved when it fires, not on every chunk.
        let now = Instant::now();
        if active {
            self.last_activity = now;
        }
        if let (Some(mut sleep), Some(idle)) = (sleep.as_mut().as_pin_mut(), idle) {
            while sleep.as_mut().poll(cx).is_ready() {
                // No deadline representable: the timeout is in effect infinite.
                let Some(deadline) = self.last_activity.checked_add(idle) else {
                    break;
                };
                if deadline <= now {
                    return Poll::Ready(Ok(End::IdleTimeout));
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }

    /// Closes both sockets (with a reset unless both sides sent FIN) and
    /// reports.
    fn finish(
        self,
        result: Result<End, Failure>,
        start: Instant,
    ) -> Result<RelayOutcome, RelayError> {
        let (end, error) = match result {
            Ok(end) => (end, None),
            Err(Failure { side, error }) if is_reset(&error) => (End::Rst { side }, None),
            Err(Failure { side, error }) => (End::Error { side }, Some(error)),
        };
        if !matches!(end, End::Fin { .. }) {
            // Abortive close: the peer gets an RST, not a FIN that would make
            // a truncated stream look complete. Best effort: a socket that
            // was itself reset may refuse the option.
            let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
            let _ = SockRef::from(&self.upstream).set_linger(Some(Duration::ZERO));
        }
        let outcome = RelayOutcome {
            client_to_upstream: self.c2u.moved,
            upstream_to_client: self.u2c.moved,
            duration: start.elapsed(),
            end,
            spliced: self.c2u.is_splice() && self.u2c.is_splice(),
        };
        // `self` drops here: sockets close, empty pipes go back to the pool.
        match (error, end) {
            (Some(source), End::Error { side: Side::Client }) => {
                Err(RelayError::Client { source, outcome })
            }
            (Some(source), _) => Err(RelayError::Upstream { source, outcome }),
            (None, _) => Ok(outcome),
        }
    }
}

/// The peer is gone: a reset, or a write after it closed.
fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED)
    )
}

/// The errors a first splice gives where splice cannot be used at all.
fn splice_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::EPERM)
    )
}

/// An I/O error and the side whose socket gave it.
struct Failure {
    side: Side,
    error: io::Error,
}

/// What one step of a direction did.
enum Step {
    /// Bytes were read or written.
    Moved,
    /// The source sent FIN and it was passed on: this direction is over.
    Finished,
    /// The direction was already over.
    Done,
}

/// Where a direction is. Bytes are either being read into the empty pipe
/// (buffer), or written out of it; never both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing buffered: wait for the source to be readable.
    Read,
    /// `buffered` bytes wait for the destination to be writable.
    Write,
    /// The source sent FIN and everything was written: shut down the
    /// destination's write side.
    Shutdown,
    /// Over.
    Done,
}

/// How a direction holds bytes in flight.
enum Mover {
    /// A pipe: the bytes stay in the kernel.
    Splice(Pipe),
    /// Splice mode while the source has nothing to read: the empty pipe (of
    /// this size) is back in the pool, so an idle direction holds no
    /// descriptors and no pipe buffers. Taken again when the source is readable.
    Parked(usize),
    /// A user-space buffer; `buf[start..start + buffered]` is unwritten.
    Copy { buf: Box<[u8]>, start: usize },
    /// The pipe went back to the pool (only seen while dropping).
    Released,
}

/// One direction of the relay: reads from `from`, writes to the other side.
struct Direction {
    from: Side,
    state: State,
    mover: Mover,
    /// Bytes read but not yet written.
    buffered: usize,
    /// Bytes written to the destination.
    moved: u64,
}

// Per-connection state is two of these plus the sockets and the idle timer.
const _: () = assert!(size_of::<Direction>() <= 64);

impl Direction {
    fn new(from: Side, opts: &RelayOptions) -> Self {
        let size = opts.buffer_size.max(MIN_BUFFER_SIZE);
        let mover = if opts.splice {
            match Pipe::take(size) {
                Ok(pipe) => Mover::Splice(pipe),
                Err(error) => {
                    note_fallback(&error);
                    Mover::copy(size)
                }
            }
        } else {
            if !COPY_MODE_NOTED.swap(true, Ordering::Relaxed) {
                tracing::info!("splice disabled by configuration; relaying with a copy loop");
            }
            Mover::copy(size)
        };
        Self {
            from,
            state: State::Read,
            mover,
            buffered: 0,
            moved: 0,
        }
    }

    fn is_splice(&self) -> bool {
        matches!(self.mover, Mover::Splice(_) | Mover::Parked(_))
    }

    /// Gives the (empty) pipe back to the pool while the source has nothing to read.
    fn park_pipe(&mut self) {
        if let Mover::Splice(pipe) = &self.mover
            && self.buffered == 0
        {
            let size = pipe.size;
            if let Mover::Splice(pipe) = std::mem::replace(&mut self.mover, Mover::Parked(size)) {
                pipe.recycle();
            }
        }
    }

    /// Takes a pipe again for a parked direction whose source became readable.
    fn unpark_pipe(&mut self) {
        if let Mover::Parked(size) = self.mover {
            self.mover = match Pipe::take(size) {
                Ok(pipe) => Mover::Splice(pipe),
                Err(error) => {
                    note_fallback(&error);
                    Mover::copy(size)
                }
            };
        }
    }

    /// Makes one syscall succeed, or registers for readiness and returns
    /// `Pending`. `src` is the socket this direction reads from.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
    ) -> Poll<Result<Step, Failure>> {
        loop {
            match self.state {
                State::Read => {
                    let Poll::Ready(ready) = src.poll_read_ready(cx) else {
                        // The pipe is empty in this state: park it until data comes.
                        self.park_pipe();
                        return Poll::Pending;
                    };
                    ready.map_err(|e| self.fail_src(e))?;
                    self.unpark_pipe();
                    let read = match &mut self.mover {
                        Mover::Splice(pipe) => src.try_io(Interest::READABLE, || {
                            sys::splice(src.as_fd(), pipe.write.as_fd(), pipe.size)
                        }),
                        Mover::Copy { buf, start } => {
                            *start = 0;
                            src.try_read(buf)
                        }
                        // Not reached: unparked just above; released only while dropping.
                        Mover::Parked(_) | Mover::Released => Ok(0),
                    };
                    match read {
                        Ok(0) => self.state = State::Shutdown,
                        Ok(n) => {
                            self.buffered = n;
                            self.state = State::Write;
                            return Poll::Ready(Ok(Step::Moved));
                        }
                        // Readiness was cleared; poll again to register.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if self.moved == 0 && self.is_splice() && splice_unsupported(&e) => {
                            note_fallback(&e);
                            let size = match &self.mover {
                                Mover::Splice(pipe) => pipe.size,
                                _ => DEFAULT_BUFFER_SIZE,
                            };
                            self.release_pipe();
                            self.mover = Mover::copy(size);
                        }
                        Err(e) => return Poll::Ready(Err(self.fail_src(e))),
                    }
                }
                State::Write => {
                    ready!(dst.poll_write_ready(cx)).map_err(|e| self.fail_dst(e))?;
                    let buffered = self.buffered;
                    let written = match &self.mover {
                        Mover::Splice(pipe) => dst.try_io(Interest::WRITABLE, || {
                            sys::splice(pipe.read.as_fd(), dst.as_fd(), buffered)
                        }),
                        Mover::Copy { buf, start } => {
                            dst.try_write(&buf[*start..*start + buffered])
                        }
                        // Not reached: bytes are buffered, so the pipe is held.
                        Mover::Parked(_) | Mover::Released => Ok(0),
                    };
                    match written {
                        Ok(0) => {
                            return Poll::Ready(
                                Err(self.fail_dst(io::ErrorKind::WriteZero.into())),
                            );
                        }
                        Ok(n) => {
                            self.buffered -= n;
                            self.moved += n as u64;
                            if let Mover::Copy { start, .. } = &mut self.mover {
                                *start += n;
                            }
                            if self.buffered == 0 {
                                self.state = State::Read;
                            }
                            return Poll::Ready(Ok(Step::Moved));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(self.fail_dst(e))),
                    }
                }
                State::Shutdown => {
                    match SockRef::from(dst).shutdown(Shutdown::Write) {
                        // The destination is already gone; its own direction
                        // reports that.
                        Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                            return Poll::Ready(Err(self.fail_dst(e)));
                        }
                        _ => {}
                    }
                    self.state = State::Done;
                    return Poll::Ready(Ok(Step::Finished));
                }
                State::Done => return Poll::Ready(Ok(Step::Done)),
            }
        }
    }

    fn fail_src(&self, error: io::Error) -> Failure {
        Failure {
            side: self.from,
            error,
        }
    }

    fn fail_dst(&self, error: io::Error) -> Failure {
        Failure {
            side: self.from.other(),
            error,
        }
    }

    /// Gives the pipe back to the pool if it is empty; a pipe still holding
    /// bytes of this connection is closed instead.
    fn release_pipe(&mut self) {
        if let Mover::Splice(pipe) = std::mem::replace(&mut self.mover, Mover::Released)
            && self.buffered == 0
        {
            pipe.recycle();
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.release_pipe();
    }
}

impl Mover {
    fn copy(size: usize) -> Self {
        Mover::Copy {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
        }
    }
}

/// Logs the first fallback to the copy loop and counts every one.
fn note_fallback(error: &io::Error) {
    SPLICE_FALLBACKS.fetch_add(1, Ordering::Relaxed);
    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            %error,
            "splice unavailable; relaying with a copy loop (logged once, see the fallback counter)"
        );
    }
}

/// A pipe and the size it was asked for (its key in the pool).
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

/// Empty pipes kept for the next connections: it saves four syscalls per
/// direction (pipe2, fcntl, two closes).
static PIPE_POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

fn pipe_pool() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
    // A panic while holding the lock cannot leave the Vec inconsistent.
    PIPE_POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pipe {
    /// An empty pipe of `size` bytes, from the pool or new.
    fn take(size: usize) -> io::Result<Self> {
        {
            let mut pool = pipe_pool();
            if let Some(i) = pool.iter().rposition(|p| p.size == size) {
                return Ok(pool.swap_remove(i));
            }
        }
        let (read, write) = sys::pipe2()?;
        if let Err(error) = sys::set_pipe_size(write.as_fd(), size) {
            // Over fs.pipe-max-size without CAP_SYS_RESOURCE: the default
            // capacity still works, splice just moves less per call.
            tracing::debug!(%error, size, "cannot resize pipe; keeping the default size");
        }
        Ok(Self { read, write, size })
    }

    /// Puts an empty pipe back in the pool, or closes it if the pool is full.
    fn recycle(self) {
        let mut pool = pipe_pool();
        if pool.len() < PIPE_POOL_MAX {
            pool.push(self);
            return;
        }
        drop(pool);
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

    use super::*;

    fn pooled(size: usize) -> usize {
        pipe_pool().iter().filter(|p| p.size == size).count()
    }

    #[test]
    fn pool_reuses_only_empty_pipes() {
        // A size no other test uses, so the count is ours alone.
        let size = 3 * 4096 + 17;
        let opts = RelayOptions {
            buffer_size: size,
            ..RelayOptions::default()
        };

        let mut dir = Direction::new(Side::Client, &opts);
        assert!(dir.is_splice());
        // Pretend bytes are stuck in the pipe: it must not be reused.
        dir.buffered = 5;
        drop(dir);
        assert_eq!(pooled(size), 0);

        let dir = Direction::new(Side::Client, &opts);
        drop(dir);
        assert_eq!(pooled(size), 1);
        let dir = Direction::new(Side::Upstream, &opts);
        assert_eq!(pooled(size), 0, "the pooled pipe was taken again");
        drop(dir);
    }

    #[test]
    fn tiny_buffer_size_is_raised() {
        let opts = RelayOptions {
            splice: false,
            buffer_size: 0,
            ..RelayOptions::default()
        };
        let dir = Direction::new(Side::Client, &opts);
        match &dir.mover {
            Mover::Copy { buf, .. } => assert_eq!(buf.len(), MIN_BUFFER_SIZE),
            _ => panic!("copy mode expected"),
        }
    }
}
