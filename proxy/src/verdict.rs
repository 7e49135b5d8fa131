//! The verdict queue: the kernel queues the first packet of every new flow of a
//! local pod (NFQUEUE), and netward answers accept, drop or reject.
//!
//! A TCP SYN is queued after TPROXY has assigned it to the proxy's listener, so
//! a denied connection never reaches `accept()`. New UDP and SCTP flows are
//! queued on FORWARD and, once accepted, forwarded by the kernel. Reject is an
//! accept that sets netward's REJECT mark, which `filter NETWARD-REJECT` turns
//! into a TCP reset or an ICMP error.
//!
//! The queue fails closed: it is bound with fail-open off, the rules have no
//! `--queue-bypass`, a packet the parser cannot read is dropped, and when the
//! reader stops (its socket closes) the kernel drops every packet still waiting.
//!
//! The nfnetlink protocol is spoken directly over a netlink socket (a handful
//! of fixed-layout messages, encoded and decoded by pure functions tested
//! below). The `nfq` crate would do the same, but it does not expose its socket,
//! so a blocking receive could not be given the timeout that lets `stop` be
//! seen without polling, and it panics on attributes it finds malformed.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
};
use socket2::SockRef;
use thiserror::Error;

use crate::netlink::{self, NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, finish, put_attr};

pub use crate::packet::{FlowKey, ParseError, parse_packet};

/// Bytes of each queued packet copied to the proxy: room for an IPv6 header, a
/// few extension headers and the transport ports. Longer packets are truncated.
pub const COPY_RANGE: u32 = 256;

/// The kernel's default limit of packets waiting for a verdict.
pub const DEFAULT_QUEUE_MAXLEN: u32 = 1024;

/// How long a receive blocks before `stop` is checked again.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// How often `run_queue_with` calls its heartbeat at most.
const TICK_EVERY: Duration = Duration::from_millis(250);

/// How long binding and configuring the queue may take.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer: a 64 KiB datagram plus slack. One message per packet, each
/// at most `COPY_RANGE` plus a few hundred bytes of metadata.
const RECV_BUFFER: usize = 64 * 1024 + 4096;

/// Socket buffer bytes reserved per waiting packet (kernel skb truesize of a
/// small netlink message), so a full queue fits before ENOBUFS.
const SOCKET_BUFFER_PER_PACKET: usize = 2048;

/// What to do with a queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through: TCP to the proxy's listener, UDP/SCTP to the kernel's forwarding.
    Accept,
    /// Discard it silently; the client times out.
    Drop,
    /// Accept it with the REJECT mark: the client gets a TCP reset or an ICMP error.
    Reject,
    /// Hold it: the decider took the packet's [`Later`] and answers when it knows
    /// (the mTLS tunnel's far end has accepted or refused the connection).
    Defer,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Reject => "reject",
            Action::Defer => "defer",
        })
    }
}

/// Which queue to read and how to mark rejected packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictConfig {
    /// The NFQUEUE number the rules send packets to.
    pub queue_num: u16,
    /// The mark a rejected packet gets, under `mark_mask`.
    pub reject_mark: u32,
    /// The mark bits netward owns; the others are kept.
    pub mark_mask: u32,
    /// Packets that may wait for a verdict; more are dropped by the kernel.
    pub queue_maxlen: u32,
}

impl VerdictConfig {
    /// The queue and marks the installed rules use, with the kernel's default queue length.
    pub fn from_rules(rules: &netward_iptables::Config) -> Self {
        Self {
            queue_num: rules.queue_num,
            reject_mark: rules.marks.reject,
            mark_mask: rules.marks.mask,
            queue_maxlen: DEFAULT_QUEUE_MAXLEN,
        }
    }

    /// Checks that the REJECT mark is non-zero and inside the mask, and the queue can hold a packet.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, value: String, reason| {
            Err(Error::Config {
                field,
                value,
                reason,
            })
        };
        if self.mark_mask == 0 {
            return invalid("mark_mask", "0x0".into(), "must not be zero");
        }
        if self.reject_mark == 0 || self.reject_mark & !self.mark_mask != 0 {
            return invalid(
                "reject_mark",
                format!("{:#x}", self.reject_mark),
                "must be non-zero and only use bits of mark_mask",
            );
        }
        if self.queue_maxlen == 0 {
            return invalid("queue_maxlen", "0".into(), "must not be zero");
        }
        Ok(())
    }

    /// The mark a rejected packet leaves with: netward's bits replaced, the others kept.
    pub fn reject(&self, mark: u32) -> u32 {
        (mark & !self.mark_mask) | (self.reject_mark & self.mark_mask)
    }
}

/// Errors of the verdict queue; each says which queue.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration was refused before anything was opened.
    #[error("invalid verdict queue config: {field} {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The netfilter netlink socket could not be opened.
    #[error("cannot open a netfilter netlink socket for nfqueue {queue}: {source}")]
    Open {
        /// The queue number.
        queue: u16,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Binding the queue was refused.
    #[error(
        "cannot bind nfqueue {queue}: {source}; binding needs CAP_NET_ADMIN in the node's network \
         namespace, and no other process may be reading the queue"
    )]
    Bind {
        /// The queue number.
        queue: u16,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A queue setting was refused.
    #[error("cannot set {what} on nfqueue {queue}: {source}")]
    Configure {
        /// The setting.
        what: &'static str,
        /// The queue number.
        queue: u16,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Receiving from the queue failed; packets waiting are dropped when it closes.
    #[error("cannot read nfqueue {queue}: {source}")]
    Recv {
        /// The queue number.
        queue: u16,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A verdict could not be sent; the packet stays queued until the queue closes.
    #[error("cannot send a verdict on nfqueue {queue}: {source}")]
    Verdict {
        /// The queue number.
        queue: u16,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Verdict counters since the process started, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets received from the queue.
    pub seen: AtomicU64,
    /// Accept verdicts.
    pub accepted: AtomicU64,
    /// Drop verdicts, parse errors included.
    pub dropped: AtomicU64,
    /// Reject verdicts (accepted with the REJECT mark).
    pub rejected: AtomicU64,
    /// Packets whose flow could not be read (dropped).
    pub parse_errors: AtomicU64,
    /// Times the socket buffer overflowed (ENOBUFS): the kernel dropped packets.
    pub overflows: AtomicU64,
    /// Errors the kernel reported for verdicts (e.g. an unknown packet id).
    pub verdict_errors: AtomicU64,
    /// Sum of the time from reading a packet's message to sending its verdict, in
    /// nanoseconds. The send includes the kernel re-injecting an accepted packet
    /// (up to the SYN-ACK for TCP), so this bounds what netward adds from above.
    pub latency_ns_sum: AtomicU64,
    /// Verdicts timed in `latency_ns_sum`.
    pub latency_count: AtomicU64,
    /// Packets held for a later verdict ([`Action::Defer`]).
    pub deferred: AtomicU64,
    /// Held packets answered (by the decider, or dropped when its answer was lost).
    pub deferred_answered: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::seen`].
    pub seen: u64,
    /// See [`Stats::accepted`].
    pub accepted: u64,
    /// See [`Stats::dropped`].
    pub dropped: u64,
    /// See [`Stats::rejected`].
    pub rejected: u64,
    /// See [`Stats::parse_errors`].
    pub parse_errors: u64,
    /// See [`Stats::overflows`].
    pub overflows: u64,
    /// See [`Stats::verdict_errors`].
    pub verdict_errors: u64,
    /// See [`Stats::latency_ns_sum`].
    pub latency_ns_sum: u64,
    /// See [`Stats::latency_count`].
    pub latency_count: u64,
}

impl Stats {
    /// All counters at zero.
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            verdict_errors: AtomicU64::new(0),
            latency_ns_sum: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            deferred_answered: AtomicU64::new(0),
        }
    }

    /// Reads every counter (each atomically, not all together).
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            seen: get(&self.seen),
            accepted: get(&self.accepted),
            dropped: get(&self.dropped),
            rejected: get(&self.rejected),
            parse_errors: get(&self.parse_errors),
            overflows: get(&self.overflows),
            verdict_errors: get(&self.verdict_errors),
            latency_ns_sum: get(&self.latency_ns_sum),
            latency_count: get(&self.latency_count),
        }
    }
}

impl StatsSnapshot {
    /// Mean time from receiving a packet to sending its verdict.
    pub fn mean_latency(&self) -> Option<Duration> {
        self.latency_ns_sum
            .checked_div(self.latency_count)
            .map(Duration::from_nanos)
    }

    /// The counters that grew since `earlier`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            seen: self.seen - earlier.seen,
            accepted: self.accepted - earlier.accepted,
            dropped: self.dropped - earlier.dropped,
            rejected: self.rejected - earlier.rejected,
            parse_errors: self.parse_errors - earlier.parse_errors,
            overflows: self.overflows - earlier.overflows,
            verdict_errors: self.verdict_errors - earlier.verdict_errors,
            latency_ns_sum: self.latency_ns_sum - earlier.latency_ns_sum,
            latency_count: self.latency_count - earlier.latency_count,
        }
    }
}

/// The process's verdict counters.
pub static STATS: Stats = Stats::new();

/// Reads the queue on the calling thread until `stop` is set, answering each
/// packet with what `decide` says about its flow.
///
/// `stop` is checked at least every 100 ms. Packets whose flow cannot be read
/// are dropped without asking `decide`. Returning (stop or error) closes the
/// queue, and the kernel drops every packet still waiting for a verdict.
pub fn run_queue(
    cfg: &VerdictConfig,
    decide: &(dyn Fn(&FlowKey) -> Action + Sync),
    stop: &AtomicBool,
) -> Result<()> {
    run_queue_deferrable(cfg, &|key, _later| decide(key), stop)
}

/// A queued packet whose verdict is given later, from any thread. Dropping it without
/// answering drops the packet (fail closed).
#[derive(Debug)]
pub struct Later {
    fd: Arc<OwnedFd>,
    cfg: VerdictConfig,
    id: u32,
    mark: u32,
    answered: bool,
}

impl Later {
    /// Answers the held packet: accept, drop or reject (`Defer` counts as drop).
    pub fn answer(mut self, action: Action) {
        self.send(action);
    }

    fn send(&mut self, action: Action) {
        if self.answered {
            return;
        }
        self.answered = true;
        STATS.deferred_answered.fetch_add(1, Ordering::Relaxed);
        let (verdict, mark, counter) = verdict_of(&self.cfg, action, self.mark);
        counter.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(64);
        encode_verdict(&mut out, self.cfg.queue_num, self.id, verdict, mark);
        loop {
            match socket::send(self.fd.as_raw_fd(), &out, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // The packet stays queued until the queue closes: the client times out.
                    STATS.verdict_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(queue = self.cfg.queue_num, error = %e, "cannot send a deferred verdict");
                }
                Ok(_) => {}
            }
            break;
        }
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        self.send(Action::Drop);
    }
}

/// Hands out the [`Later`] of the packet being decided; only taken when the decider
/// returns [`Action::Defer`].
pub struct LaterSlot<'a> {
    fd: &'a Arc<OwnedFd>,
    cfg: &'a VerdictConfig,
    id: u32,
    mark: u32,
    taken: &'a std::cell::Cell<bool>,
}

impl LaterSlot<'_> {
    /// Takes the packet's later answer; the decider must then return [`Action::Defer`].
    pub fn take(&self) -> Later {
        self.taken.set(true);
        STATS.deferred.fetch_add(1, Ordering::Relaxed);
        Later {
            fd: self.fd.clone(),
            cfg: *self.cfg,
            id: self.id,
            mark: self.mark,
            answered: false,
        }
    }
}

/// The verdict, the mark to set and the counter of an action.
fn verdict_of(
    cfg: &VerdictConfig,
    action: Action,
    mark: u32,
) -> (u32, Option<u32>, &'static AtomicU64) {
    match action {
        Action::Accept => (VERDICT_ACCEPT, None, &STATS.accepted),
        Action::Drop | Action::Defer => (VERDICT_DROP, None, &STATS.dropped),
        Action::Reject => (VERDICT_ACCEPT, Some(cfg.reject(mark)), &STATS.rejected),
    }
}

/// Like [`run_queue`], but the decider may hold a packet ([`Action::Defer`]) after taking
/// its [`Later`] from the slot, and answer it from another thread.
pub fn run_queue_deferrable(
    cfg: &VerdictConfig,
    decide: &(dyn Fn(&FlowKey, &LaterSlot<'_>) -> Action + Sync),
    stop: &AtomicBool,
) -> Result<()> {
    run_queue_with(cfg, decide, stop, &|| {})
}

/// Like [`run_queue_deferrable`], calling `tick` at least every 250 ms while the queue is
/// bound and read (after each batch of packets, and on each receive timeout): a
/// heartbeat that stops when the reader is wedged or the queue cannot be bound.
pub fn run_queue_with(
    cfg: &VerdictConfig,
    decide: &(dyn Fn(&FlowKey, &LaterSlot<'_>) -> Action + Sync),
    stop: &AtomicBool,
    tick: &(dyn Fn() + Sync),
) -> Result<()> {
    cfg.validate()?;
    let mut queue = Queue::open(cfg)?;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut last_tick = Instant::now();
    tick();
    while !stop.load(Ordering::Relaxed) {
        if last_tick.elapsed() >= TICK_EVERY {
            tick();
            last_tick = Instant::now();
        }
        let len = match queue.recv(&mut buf)? {
            Some(len) => len,
            None => continue,
        };
        queue.answer_all(cfg, &buf[..len], decide)?;
    }
    tracing::info!(queue = cfg.queue_num, "verdict queue stopped");
    Ok(())
}

/// Datagrams read per wake-up of [`run_queue_async`] before it lets other tasks run.
const ASYNC_BATCH: usize = 64;

/// Like [`run_queue_with`], as a task on the caller's tokio runtime: the queue's socket
/// is read when the reactor reports it readable, and each packet is decided on the
/// worker that read it. Work the decider spawns (the upstream connect of a held SYN)
/// then starts on that same worker, with no hand-off between threads. `tick` is called
/// at least every 250 ms while the queue is bound and read; `stop` is seen as often.
pub async fn run_queue_async(
    cfg: &VerdictConfig,
    decide: &(dyn Fn(&FlowKey, &LaterSlot<'_>) -> Action + Sync),
    stop: &AtomicBool,
    tick: &(dyn Fn() + Sync),
) -> Result<()> {
    cfg.validate()?;
    // Binding waits for the kernel's acknowledgements (blocking, bounded): off the workers.
    let bind_cfg = *cfg;
    let mut queue = tokio::task::spawn_blocking(move || Queue::open(&bind_cfg))
        .await
        .map_err(|e| Error::Open {
            queue: cfg.queue_num,
            source: io::Error::other(e),
        })??;
    let ready = crate::sys::register_shared_fd(queue.fd.clone(), tokio::io::Interest::READABLE)
        .map_err(|source| Error::Open {
            queue: cfg.queue_num,
            source,
        })?;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut beat = tokio::time::interval(TICK_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    tick();
    while !stop.load(Ordering::Relaxed) {
        let mut guard = tokio::select! {
            biased;
            r = ready.readable() => r.map_err(|source| Error::Recv { queue: cfg.queue_num, source })?,
            _ = beat.tick() => {
                tick();
                last_tick = Instant::now();
                continue;
            }
        };
        for _ in 0..ASYNC_BATCH {
            match queue.recv_now(&mut buf)? {
                Received::Data(len) => queue.answer_all(cfg, &buf[..len], decide)?,
                Received::Empty => {
                    guard.clear_ready();
                    break;
                }
                Received::Overflow => {}
            }
        }
        drop(guard);
        // A busy queue keeps the reactor's branch first: beat between batches too.
        if last_tick.elapsed() >= TICK_EVERY {
            tick();
            last_tick = Instant::now();
        }
    }
    tracing::info!(queue = cfg.queue_num, "verdict queue stopped");
    Ok(())
}

/// What one non-blocking receive got.
enum Received {
    /// A datagram of this many bytes.
    Data(usize),
    /// Nothing waiting.
    Empty,
    /// The socket buffer overflowed (the kernel dropped packets); read on.
    Overflow,
}

/// An open, bound queue.
struct Queue {
    fd: Arc<OwnedFd>,
    num: u16,
    seq: u32,
    out: Vec<u8>,
}

impl Queue {
    /// Opens the socket, binds the queue and sets copy range, length and fail-closed.
    fn open(cfg: &VerdictConfig) -> Result<Self> {
        let queue = cfg.queue_num;
        let open = |e: Errno| Error::Open {
            queue,
            source: e.into(),
        };
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(open)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(open)?;
        SockRef::from(&fd)
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|source| Error::Open { queue, source })?;
        let rcvbuf = usize::try_from(cfg.queue_maxlen)
            .unwrap_or(usize::MAX)
            .saturating_mul(SOCKET_BUFFER_PER_PACKET)
            .min(64 << 20);
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_err() {
            // Without CAP_NET_ADMIN the bind below fails anyway; this keeps the message about it.
            let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &rcvbuf);
        }
        let mut q = Self {
            fd: Arc::new(fd),
            num: queue,
            seq: 0,
            out: Vec::with_capacity(128),
        };
        q.configure(&[Attr::Cmd(CMD_BIND)])
            .map_err(|source| Error::Bind { queue, source })?;
        for (what, attrs) in [
            (
                "the copy range",
                &[Attr::Params {
                    range: COPY_RANGE,
                    mode: COPY_PACKET,
                }][..],
            ),
            ("the queue length", &[Attr::MaxLen(cfg.queue_maxlen)][..]),
            (
                "fail-open off",
                &[Attr::Flags {
                    flags: 0,
                    mask: CFG_F_FAIL_OPEN,
                }][..],
            ),
        ] {
            q.configure(attrs).map_err(|source| Error::Configure {
                what,
                queue,
                source,
            })?;
        }
        tracing::info!(queue, maxlen = cfg.queue_maxlen, "verdict queue bound");
        Ok(q)
    }

    /// Sends one config message and waits for its acknowledgement. Packets that
    /// arrive meanwhile (before the copy range is set) are dropped: fail closed.
    fn configure(&mut self, attrs: &[Attr]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        encode_config(&mut self.out, self.num, seq, attrs);
        self.send()?;
        let deadline = Instant::now() + CONFIG_TIMEOUT;
        let mut buf = vec![0u8; RECV_BUFFER];
        while Instant::now() < deadline {
            let len = match self.recv_raw(&mut buf) {
                Ok(len) => len,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for msg in messages(&buf[..len]) {
                match msg {
                    Message::Error { errno: 0, seq: s } if s == seq => return Ok(()),
                    Message::Error { errno, seq: s } if s == seq => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Message::Packet(p) => {
                        STATS.seen.fetch_add(1, Ordering::Relaxed);
                        STATS.dropped.fetch_add(1, Ordering::Relaxed);
                        encode_verdict(&mut self.out, self.num, p.id, VERDICT_DROP, None);
                        self.send()?;
                    }
                    _ => {}
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the kernel; is nfnetlink_queue available?",
        ))
    }

    /// Parses, decides and answers one packet.
    fn answer(
        &mut self,
        cfg: &VerdictConfig,
        p: &PacketMsg<'_>,
        decide: &(dyn Fn(&FlowKey, &LaterSlot<'_>) -> Action + Sync),
    ) -> Result<()> {
        STATS.seen.fetch_add(1, Ordering::Relaxed);
        let taken = std::cell::Cell::new(false);
        let slot = LaterSlot {
            fd: &self.fd,
            cfg,
            id: p.id,
            mark: p.mark,
            taken: &taken,
        };
        let action = match parse_packet(p.payload) {
            Ok(flow) => {
                let action = decide(&flow, &slot);
                tracing::debug!(flow = %flow, %action, "verdict");
                if action == Action::Defer {
                    if taken.get() {
                        return Ok(());
                    }
                    // A decider that defers without taking the answer: fail closed.
                    Action::Drop
                } else {
                    action
                }
            }
            Err(e) => {
                STATS.parse_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(queue = self.num, error = %e, "dropping an unreadable packet");
                Action::Drop
            }
        };
        let (verdict, mark, counter) = verdict_of(cfg, action, p.mark);
        counter.fetch_add(1, Ordering::Relaxed);
        encode_verdict(&mut self.out, self.num, p.id, verdict, mark);
        self.send().map_err(|source| Error::Verdict {
            queue: self.num,
            source,
        })
    }

    /// Receives one datagram; `None` on timeout or a socket buffer overflow.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        match self.recv_raw(buf) {
            Ok(len) => Ok(Some(len)),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(Errno::ENOBUFS) => {
                STATS.overflows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    queue = self.num,
                    "verdict queue socket buffer overflowed; the kernel dropped packets"
                );
                Ok(None)
            }
            Err(e) => Err(Error::Recv {
                queue: self.num,
                source: e.into(),
            }),
        }
    }

    /// Receives one datagram without blocking.
    fn recv_now(&mut self, buf: &mut [u8]) -> Result<Received> {
        loop {
            return match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => Ok(Received::Data(len)),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => Ok(Received::Empty),
                Err(Errno::ENOBUFS) => {
                    STATS.overflows.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        queue = self.num,
                        "verdict queue socket buffer overflowed; the kernel dropped packets"
                    );
                    Ok(Received::Overflow)
                }
                Err(e) => Err(Error::Recv {
                    queue: self.num,
                    source: e.into(),
                }),
            };
        }
    }

    /// Decides and answers every packet of one datagram.
    fn answer_all(
        &mut self,
        cfg: &VerdictConfig,
        datagram: &[u8],
        decide: &(dyn Fn(&FlowKey, &LaterSlot<'_>) -> Action + Sync),
    ) -> Result<()> {
        for msg in messages(datagram) {
            match msg {
                Message::Packet(p) => {
                    let started = Instant::now();
                    self.answer(cfg, &p, decide)?;
                    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    STATS.latency_ns_sum.fetch_add(ns, Ordering::Relaxed);
                    STATS.latency_count.fetch_add(1, Ordering::Relaxed);
                }
                Message::Error { errno, seq } if errno != 0 => {
                    STATS.verdict_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        queue = cfg.queue_num,
                        seq,
                        error = %Errno::from_raw(errno),
                        "the kernel refused a verdict"
                    );
                }
                Message::Error { .. } | Message::Other(_) => {}
                Message::Malformed(reason) => {
                    tracing::warn!(queue = cfg.queue_num, reason, "malformed netlink message");
                }
            }
        }
        Ok(())
    }

    fn recv_raw(&self, buf: &mut [u8]) -> nix::Result<usize> {
        socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty())
    }

    fn send(&self) -> io::Result<()> {
        loop {
            match socket::send(self.fd.as_raw_fd(), &self.out, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// nfnetlink_queue protocol constants (linux/netfilter/nfnetlink_queue.h).
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_PAYLOAD: u16 = 10;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
const CFG_F_FAIL_OPEN: u32 = 1;

const VERDICT_DROP: u32 = 0;
const VERDICT_ACCEPT: u32 = 1;

/// One attribute of a config message.
#[derive(Clone, Copy, Debug)]
enum Attr {
    Cmd(u8),
    Params { range: u32, mode: u8 },
    MaxLen(u32),
    Flags { flags: u32, mask: u32 },
}

/// Starts an nfqueue message for `queue`; [`finish`] patches its length.
fn begin(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, queue: u16) {
    // nfgenmsg: family AF_UNSPEC, version 0, the queue number (big endian).
    let [q0, q1] = queue.to_be_bytes();
    netlink::begin(out, NFNL_SUBSYS_QUEUE, kind, flags, seq, [0, 0, q0, q1]);
}

fn encode_config(out: &mut Vec<u8>, queue: u16, seq: u32, attrs: &[Attr]) {
    begin(out, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
    for attr in attrs {
        match *attr {
            // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf; }
            Attr::Cmd(cmd) => put_attr(out, NFQA_CFG_CMD, &[cmd, 0, 0, 0]),
            // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode; } (packed)
            Attr::Params { range, mode } => {
                let r = range.to_be_bytes();
                put_attr(out, NFQA_CFG_PARAMS, &[r[0], r[1], r[2], r[3], mode]);
            }
            Attr::MaxLen(len) => put_attr(out, NFQA_CFG_QUEUE_MAXLEN, &len.to_be_bytes()),
            Attr::Flags { flags, mask } => {
                put_attr(out, NFQA_CFG_FLAGS, &flags.to_be_bytes());
                put_attr(out, NFQA_CFG_MASK, &mask.to_be_bytes());
            }
        }
    }
    finish(out);
}

fn encode_verdict(out: &mut Vec<u8>, queue: u16, id: u32, verdict: u32, mark: Option<u32>) {
    begin(out, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue);
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    put_attr(out, NFQA_VERDICT_HDR, &hdr);
    if let Some(mark) = mark {
        put_attr(out, NFQA_MARK, &mark.to_be_bytes());
    }
    finish(out);
}

/// A queued packet, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PacketMsg<'a> {
    id: u32,
    mark: u32,
    payload: &'a [u8],
}

/// One netlink message from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message<'a> {
    Packet(PacketMsg<'a>),
    /// An acknowledgement (errno 0) or an error, positive errno.
    Error {
        errno: i32,
        seq: u32,
    },
    Other(u16),
    Malformed(&'static str),
}

/// Splits a datagram into its netlink messages.
fn messages(buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    netlink::frames(buf).map(|frame| match frame {
        Ok(frame) => decode(&frame),
        Err(reason) => Message::Malformed(reason),
    })
}

fn decode<'a>(frame: &netlink::Frame<'a>) -> Message<'a> {
    if frame.kind == NLMSG_ERROR {
        return match frame.error() {
            Ok((errno, seq)) => Message::Error { errno, seq },
            Err(reason) => Message::Malformed(reason),
        };
    }
    if frame.kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
        return Message::Other(frame.kind);
    }
    let Some(attrs) = frame.body.get(NFGENMSG_LEN..) else {
        return Message::Malformed("short nfqueue packet message");
    };
    let (mut id, mut mark, mut payload) = (None, 0, &[][..]);
    for attr in netlink::attrs(attrs, "nfqueue attribute length out of bounds") {
        match attr {
            Ok((NFQA_PACKET_HDR, [a, b, c, d, ..])) => {
                id = Some(u32::from_be_bytes([*a, *b, *c, *d]));
            }
            Ok((NFQA_MARK, [a, b, c, d])) => mark = u32::from_be_bytes([*a, *b, *c, *d]),
            Ok((NFQA_PAYLOAD, v)) => payload = v,
            Ok(_) => {}
            Err(reason) => return Message::Malformed(reason),
        }
    }
    match id {
        Some(id) => Message::Packet(PacketMsg { id, mark, payload }),
        None => Message::Malformed("nfqueue packet without a packet header"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attr(&mut v, kind, payload);
        v
    }

    /// A packet message as the kernel sends it.
    fn packet_msg(id: u32, mark: Option<u32>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        begin(&mut out, NFQNL_MSG_PACKET, 0, 0, 4242);
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 1]); // hw protocol IPv4, hook LOCAL_IN
        out.extend(attr(NFQA_PACKET_HDR, &hdr));
        if let Some(m) = mark {
            out.extend(attr(NFQA_MARK, &m.to_be_bytes()));
        }
        out.extend(attr(5, &7u32.to_be_bytes())); // NFQA_IFINDEX_INDEV, ignored
        out.extend(attr(NFQA_PAYLOAD | 0x4000, payload)); // byte-order flag is masked off
        finish(&mut out);
        out
    }

    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&36u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&(-errno).to_ne_bytes());
        // The request's header: length, type, flags, seq, pid.
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&[0; 4]);
        out
    }

    #[test]
    fn config_messages_match_the_kernel_layout() {
        let mut out = Vec::new();
        encode_config(&mut out, 4242, 9, &[Attr::Cmd(CMD_BIND)]);
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes());
        want.extend_from_slice(&0x0302u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0x10, 0x92]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(out, want);

        encode_config(
            &mut out,
            1,
            10,
            &[Attr::Params {
                range: 256,
                mode: COPY_PACKET,
            }],
        );
        // 9-byte attribute padded to 12.
        assert_eq!(out.len(), 20 + 12);
        assert_eq!(&out[20..22], &9u16.to_ne_bytes());
        assert_eq!(&out[24..29], &[0, 0, 1, 0, 2]);

        encode_config(
            &mut out,
            1,
            11,
            &[
                Attr::MaxLen(1024),
                Attr::Flags {
                    flags: 0,
                    mask: CFG_F_FAIL_OPEN,
                },
            ],
        );
        assert_eq!(out.len(), 20 + 3 * 8);
        assert_eq!(&out[22..24], &NFQA_CFG_QUEUE_MAXLEN.to_ne_bytes());
        assert_eq!(&out[24..28], &[0, 0, 4, 0]);
        assert_eq!(&out[30..32], &NFQA_CFG_FLAGS.to_ne_bytes());
        assert_eq!(&out[32..36], &[0, 0, 0, 0]);
        assert_eq!(&out[38..40], &NFQA_CFG_MASK.to_ne_bytes());
        assert_eq!(&out[40..44], &[0, 0, 0, 1]);
    }

    #[test]
    fn verdicts_match_the_kernel_layout() {
        let mut out = Vec::new();
        encode_verdict(
            &mut out,
            4242,
            0x0102_0304,
            VERDICT_ACCEPT,
            Some(0x0030_0001),
        );
        assert_eq!(out.len(), 20 + 12 + 8);
        assert_eq!(&out[4..6], &0x0301u16.to_ne_bytes());
        assert_eq!(&out[6..8], &NLM_F_REQUEST.to_ne_bytes());
        assert_eq!(&out[18..20], &4242u16.to_be_bytes());
        assert_eq!(&out[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(&out[34..36], &NFQA_MARK.to_ne_bytes());
        assert_eq!(&out[36..40], &[0, 0x30, 0, 1]);
        encode_verdict(&mut out, 4242, 7, VERDICT_DROP, None);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[24..32], &[0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn packets_and_acks_are_decoded() {
        let mut buf = packet_msg(77, Some(0x0010_0000), b"\x45abc");
        buf.extend(packet_msg(78, None, b"xyz")); // odd payload: padded
        buf.extend(ack(3, 0));
        buf.extend(ack(4, 16));
        let got: Vec<Message<'_>> = messages(&buf).collect();
        assert_eq!(
            got,
            [
                Message::Packet(PacketMsg {
                    id: 77,
                    mark: 0x0010_0000,
                    payload: b"\x45abc"
                }),
                Message::Packet(PacketMsg {
                    id: 78,
                    mark: 0,
                    payload: b"xyz"
                }),
                Message::Error { errno: 0, seq: 3 },
                Message::Error { errno: 16, seq: 4 },
            ]
        );
    }

    #[test]
    fn malformed_messages_do_not_panic() {
        let good = packet_msg(1, Some(2), &[0x45; 40]);
        for len in 0..good.len() {
            let mut cut = good[..len].to_vec();
            if len >= 4 {
                // Claim the truncated length so the attribute walk sees the cut.
                finish(&mut cut);
            }
            let _: Vec<_> = messages(&cut).collect();
        }
        let mut bad_len = good.clone();
        bad_len[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(
            messages(&bad_len).collect::<Vec<_>>(),
            [Message::Malformed("netlink message length out of bounds")]
        );
        let mut no_hdr = Vec::new();
        begin(&mut no_hdr, NFQNL_MSG_PACKET, 0, 0, 1);
        finish(&mut no_hdr);
        assert_eq!(
            messages(&no_hdr).collect::<Vec<_>>(),
            [Message::Malformed("nfqueue packet without a packet header")]
        );
    }

    #[test]
    fn reject_keeps_foreign_mark_bits() {
        let cfg = VerdictConfig::from_rules(&netward_iptables::Config::default());
        assert_eq!(cfg.reject(0x0010_0000), 0x0030_0000);
        assert_eq!(cfg.reject(0x0010_4001), 0x0030_4001);
        assert_eq!(cfg.reject(0), 0x0030_0000);
        assert_eq!(cfg.validate().ok(), Some(()));
        let bad = VerdictConfig {
            reject_mark: 0x0100_0000,
            ..cfg
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid verdict queue config: reject_mark 0x1000000: \
             must be non-zero and only use bits of mark_mask"
        );
        let bad = VerdictConfig {
            queue_maxlen: 0,
            ..cfg
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn stats_differences_and_mean() {
        let s = Stats::new();
        let before = s.snapshot();
        s.seen.fetch_add(3, Ordering::Relaxed);
        s.latency_ns_sum.fetch_add(3000, Ordering::Relaxed);
        s.latency_count.fetch_add(3, Ordering::Relaxed);
        let d = s.snapshot().since(&before);
        assert_eq!(d.seen, 3);
        assert_eq!(d.mean_latency(), Some(Duration::from_micros(1)));
        assert_eq!(before.mean_latency(), None);
    }
}
