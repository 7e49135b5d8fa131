//! Conntrack entries over ctnetlink: list the flows the kernel tracks, and delete one
//! so that a flow allowed under an old policy is decided again.
//!
//! netward decides a UDP, SCTP or ICMP flow on its first packet (`ctstate NEW` is
//! queued); the rest of the flow rides on the conntrack entry. When the policy
//! changes, deleting the entry makes the flow's next packet `NEW` again, so it is
//! queued and decided under the new policy.
//!
//! Like [`crate::verdict`], this speaks nfnetlink directly over a netlink socket: a
//! dump request, a delete request and the entry messages of the answer are encoded
//! and decoded by pure functions tested below. Both calls work in the calling
//! thread's network namespace and need CAP_NET_ADMIN there.
//!
//! A ctnetlink delete without a tuple flushes the whole table, so the delete
//! request is only ever built from a complete original tuple.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use socket2::SockRef;
use thiserror::Error;

use crate::netlink::{
    self, NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, finish, ne_u32, nest,
    put_attr,
};

/// How long one receive may wait for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Receive buffer: the kernel fills dump datagrams up to 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// Dumps restarted after the socket buffer overflowed (ENOBUFS) or the table changed
/// under the dump (NLM_F_DUMP_INTR), before giving up.
const DUMP_ATTEMPTS: u32 = 3;

/// Datagrams plus messages one dump may take: far above any node's conntrack table.
const MAX_DUMP_MESSAGES: usize = 8 << 20;

/// Datagrams read while waiting for the acknowledgement of a delete.
const MAX_ACK_DATAGRAMS: usize = 64;

/// The ICMP type and code of an entry's original direction, which a delete must name
/// (an echo request is 8/0, or 128/0 for ICMPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Icmp {
    /// The ICMP type.
    pub kind: u8,
    /// The ICMP code.
    pub code: u8,
}

/// One conntrack entry, as the kernel lists it.
///
/// For ICMP and ICMPv6 the echo id is the port of `orig_src` and `reply_src` (the
/// kernel keeps it as the source of both tuples), the other ports are 0, and `icmp`
/// holds the original direction's type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entry {
    /// The IP protocol number (17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// Source of the first packet.
    pub orig_src: SocketAddr,
    /// Destination of the first packet.
    pub orig_dst: SocketAddr,
    /// Source of the expected answers (differs from `orig_dst` under DNAT).
    pub reply_src: SocketAddr,
    /// Destination of the expected answers (differs from `orig_src` under SNAT).
    pub reply_dst: SocketAddr,
    /// The conntrack zone of the original direction; 0 is the default zone.
    pub zone: u16,
    /// Type and code of the original direction, for ICMP and ICMPv6 only.
    pub icmp: Option<Icmp>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            IPPROTO_ICMP => f.write_str("icmp")?,
            6 => f.write_str("tcp")?,
            17 => f.write_str("udp")?,
            IPPROTO_ICMPV6 => f.write_str("icmpv6")?,
            132 => f.write_str("sctp")?,
            p => write!(f, "protocol {p}")?,
        }
        write!(f, " {} -> {}", self.orig_src, self.orig_dst)?;
        if let Some(icmp) = self.icmp {
            write!(f, " type {} code {}", icmp.kind, icmp.code)?;
        }
        if self.zone != 0 {
            write!(f, " zone {}", self.zone)?;
        }
        Ok(())
    }
}

/// Errors of the conntrack client; each names the request that failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The netfilter netlink socket could not be opened.
    #[error("cannot open a netfilter netlink socket for conntrack: {source}")]
    Open {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A request could not be sent.
    #[error("cannot send the conntrack {what} request: {source}{}", hint(.source))]
    Send {
        /// The request.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the answer failed.
    #[error("cannot read the answer to the conntrack {what}: {source}")]
    Recv {
        /// The request.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("the kernel refused the conntrack {what}: {source}{}", hint(.source))]
    Refused {
        /// The request.
        what: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel did not answer in time.
    #[error(
        "no answer to the conntrack {what} within {timeout:?}; is ctnetlink available \
         (modprobe nf_conntrack_netlink)?"
    )]
    Timeout {
        /// The request.
        what: String,
        /// How long one receive waited.
        timeout: Duration,
    },
    /// Every attempt of a dump overflowed the socket buffer or was interrupted.
    #[error(
        "the conntrack {what} failed {attempts} times: the socket buffer overflowed (ENOBUFS) \
         or the table changed under the dump; try again later"
    )]
    Overflow {
        /// The request.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A dump went on for longer than any real table.
    #[error("the conntrack {what} exceeded {limit} messages; stopped reading it")]
    TooLarge {
        /// The request.
        what: String,
        /// The message limit.
        limit: usize,
    },
    /// The kernel's answer could not be read.
    #[error("malformed answer to the conntrack {what}: {reason}")]
    Malformed {
        /// The request.
        what: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// The entry cannot be turned into a delete request.
    #[error("cannot delete conntrack entry {entry}: {reason}")]
    Invalid {
        /// The entry.
        entry: String,
        /// What is missing or inconsistent.
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to do about an errno, appended to the error message.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPERM | Errno::EACCES) => {
            "; ctnetlink needs CAP_NET_ADMIN in this network namespace"
        }
        Some(Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT) => {
            "; is ctnetlink available (modprobe nf_conntrack_netlink)?"
        }
        Some(Errno::EINVAL) => {
            "; the kernel could not read the tuple (ICMP needs the id, type and code of a request)"
        }
        _ => "",
    }
}

/// Lists the conntrack entries of the given IP protocols (e.g. 17, 132, 1, 58), IPv4
/// and IPv6, in the current network namespace.
///
/// An entry moved during the dump (the table was resized) is listed once.
pub fn list(protocols: &[u8]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    if protocols.is_empty() {
        return Ok(out);
    }
    for family in [AF_INET, AF_INET6] {
        dump(family, protocols, &mut out)?;
    }
    let mut seen = HashSet::with_capacity(out.len());
    out.retain(|e| seen.insert(*e));
    Ok(out)
}

/// Deletes an entry by its original tuple and zone; `Ok(false)` if it was already gone.
///
/// The flow's next packet then creates a new entry (`ctstate NEW`).
pub fn delete(e: &Entry) -> Result<bool> {
    let what = format!("delete of {e}");
    let mut out = Vec::with_capacity(128);
    let seq = next_seq();
    encode_delete(&mut out, e, seq).map_err(|reason| Error::Invalid {
        entry: e.to_string(),
        reason,
    })?;
    let sock = Socket::open()?;
    sock.send(&out, &what)?;
    let mut buf = vec![0u8; RECV_BUFFER];
    for _ in 0..MAX_ACK_DATAGRAMS {
        let len = match sock.recv(&mut buf, &what)? {
            Recv::Data(len) => len,
            Recv::Interrupted => continue,
            Recv::Overflow => {
                return Err(Error::Recv {
                    what,
                    source: Errno::ENOBUFS.into(),
                });
            }
        };
        for msg in messages(&buf[..len]) {
            match msg {
                Message::Error { errno: 0, seq: s } if s == seq => return Ok(true),
                Message::Error { errno, seq: s } if s == seq => {
                    if errno == Errno::ENOENT as i32 {
                        return Ok(false);
                    }
                    return Err(Error::Refused {
                        what,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                Message::Malformed(reason) => return Err(Error::Malformed { what, reason }),
                _ => {}
            }
        }
    }
    Err(Error::Malformed {
        what,
        reason: "no acknowledgement among the datagrams received",
    })
}

/// Appends the entries of one address family to `out`, restarting the dump when the
/// socket buffer overflows.
fn dump(family: u8, protocols: &[u8], out: &mut Vec<Entry>) -> Result<()> {
    let what = format!("{} dump", family_name(family));
    let mut batch = Vec::new();
    for _ in 0..DUMP_ATTEMPTS {
        batch.clear();
        let sock = Socket::open()?;
        if dump_once(&sock, family, protocols, &mut batch, &what)? {
            out.append(&mut batch);
            return Ok(());
        }
        tracing::debug!(%what, "conntrack dump overflowed or was interrupted; restarting it");
    }
    Err(Error::Overflow {
        what,
        attempts: DUMP_ATTEMPTS,
    })
}

/// Runs one dump to its end: `Ok(false)` if it must be restarted.
fn dump_once(
    sock: &Socket,
    family: u8,
    protocols: &[u8],
    out: &mut Vec<Entry>,
    what: &str,
) -> Result<bool> {
    let seq = next_seq();
    let mut req = Vec::with_capacity(32);
    encode_dump(&mut req, family, seq);
    sock.send(&req, what)?;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut interrupted = false;
    let mut count = 0usize;
    loop {
        count += 1;
        if count > MAX_DUMP_MESSAGES {
            return Err(Error::TooLarge {
                what: what.into(),
                limit: MAX_DUMP_MESSAGES,
            });
        }
        let len = match sock.recv(&mut buf, what)? {
            Recv::Data(len) => len,
            Recv::Interrupted => continue,
            Recv::Overflow => return Ok(false),
        };
        for msg in messages(&buf[..len]) {
            count += 1;
            match msg {
                Message::Entry {
                    seq: s,
                    flags,
                    entry,
                } if s == seq => {
                    interrupted |= flags & NLM_F_DUMP_INTR != 0;
                    if protocols.contains(&entry.protocol) {
                        out.push(entry);
                    }
                }
                Message::Done { seq: s, errno } if s == seq => {
                    return match errno {
                        0 => Ok(!interrupted),
                        e if e == Errno::ENOBUFS as i32 => Ok(false),
                        e => Err(Error::Refused {
                            what: what.into(),
                            source: io::Error::from_raw_os_error(e),
                        }),
                    };
                }
                Message::Error { seq: s, errno } if s == seq && errno != 0 => {
                    return Err(Error::Refused {
                        what: what.into(),
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                Message::Malformed(reason) => {
                    return Err(Error::Malformed {
                        what: what.into(),
                        reason,
                    });
                }
                _ => {}
            }
        }
    }
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET6 { "ipv6" } else { "ipv4" }
}

fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A netfilter netlink socket with a receive timeout, used for one request.
struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open() -> Result<Self> {
        let open = |e: Errno| Error::Open { source: e.into() };
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
            .map_err(|source| Error::Open { source })?;
        Ok(Self { fd })
    }

    fn send(&self, msg: &[u8], what: &str) -> Result<()> {
        loop {
            match socket::send(self.fd.as_raw_fd(), msg, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Send {
                        what: what.into(),
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Receives one datagram.
    fn recv(&self, buf: &mut [u8], what: &str) -> Result<Recv> {
        // MSG_TRUNC: the datagram's real length, so a truncated one is noticed.
        match socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
            Ok(len) if len > buf.len() => Err(Error::Malformed {
                what: what.into(),
                reason: "a datagram larger than the receive buffer",
            }),
            Ok(len) => Ok(Recv::Data(len)),
            Err(Errno::EINTR) => Ok(Recv::Interrupted),
            Err(Errno::ENOBUFS) => Ok(Recv::Overflow),
            Err(Errno::EAGAIN) => Err(Error::Timeout {
                what: what.into(),
                timeout: RECV_TIMEOUT,
            }),
            Err(e) => Err(Error::Recv {
                what: what.into(),
                source: e.into(),
            }),
        }
    }
}

/// What one receive got.
enum Recv {
    /// A datagram of this length.
    Data(usize),
    /// A signal came first; try again.
    Interrupted,
    /// The socket buffer overflowed (ENOBUFS): messages were lost.
    Overflow,
}

// ctnetlink protocol constants (linux/netfilter/nfnetlink_conntrack.h, linux/netlink.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

/// Starts a ctnetlink message for `family`; [`finish`] patches its length.
fn begin(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8) {
    // nfgenmsg: the family, version 0 (NFNETLINK_V0), resource id 0.
    netlink::begin(
        out,
        NFNL_SUBSYS_CTNETLINK,
        kind,
        flags,
        seq,
        [family, 0, 0, 0],
    );
}

fn encode_dump(out: &mut Vec<u8>, family: u8, seq: u32) {
    begin(
        out,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
    );
    finish(out);
}

/// Encodes the delete of `e` by its original tuple and zone.
fn encode_delete(out: &mut Vec<u8>, e: &Entry, seq: u32) -> Result<(), &'static str> {
    let (family, src, dst) = match (e.orig_src.ip(), e.orig_dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            AF_INET,
            (CTA_IP_V4_SRC, s.octets().to_vec()),
            (CTA_IP_V4_DST, d.octets().to_vec()),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            AF_INET6,
            (CTA_IP_V6_SRC, s.octets().to_vec()),
            (CTA_IP_V6_DST, d.octets().to_vec()),
        ),
        _ => return Err("its source and destination are of different IP families"),
    };
    // The kernel needs the id, type and code of an ICMP tuple, and both ports otherwise.
    let icmp_attrs = match e.protocol {
        IPPROTO_ICMP => Some((CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)),
        IPPROTO_ICMPV6 => Some((
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
        )),
        _ => None,
    };
    let icmp = match (icmp_attrs, e.icmp) {
        (Some(attrs), Some(icmp)) => Some((attrs, icmp)),
        (Some(_), None) => return Err("an ICMP entry needs its type and code"),
        (None, _) => None,
    };
    begin(
        out,
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
    );
    nest(out, CTA_TUPLE_ORIG, |out| {
        nest(out, CTA_TUPLE_IP, |out| {
            put_attr(out, src.0, &src.1);
            put_attr(out, dst.0, &dst.1);
        });
        nest(out, CTA_TUPLE_PROTO, |out| {
            put_attr(out, CTA_PROTO_NUM, &[e.protocol]);
            match icmp {
                Some(((id, kind, code), icmp)) => {
                    put_attr(out, id, &e.orig_src.port().to_be_bytes());
                    put_attr(out, kind, &[icmp.kind]);
                    put_attr(out, code, &[icmp.code]);
                }
                None => {
                    put_attr(out, CTA_PROTO_SRC_PORT, &e.orig_src.port().to_be_bytes());
                    put_attr(out, CTA_PROTO_DST_PORT, &e.orig_dst.port().to_be_bytes());
                }
            }
        });
    });
    // Absent means the default zone; kernels without zone support refuse the attribute.
    if e.zone != 0 {
        put_attr(out, CTA_ZONE, &e.zone.to_be_bytes());
    }
    finish(out);
    Ok(())
}

/// One netlink message from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    /// A conntrack entry of a dump, with the message's flags.
    Entry {
        seq: u32,
        flags: u16,
        entry: Entry,
    },
    /// The end of a dump; a positive errno if it failed.
    Done {
        seq: u32,
        errno: i32,
    },
    /// An acknowledgement (errno 0) or an error, positive errno.
    Error {
        seq: u32,
        errno: i32,
    },
    Other(u16),
    Malformed(&'static str),
}

/// Splits a datagram into its netlink messages.
fn messages(buf: &[u8]) -> impl Iterator<Item = Message> + '_ {
    netlink::frames(buf).map(|frame| match frame {
        Ok(frame) => decode(&frame),
        Err(reason) => Message::Malformed(reason),
    })
}

/// Decodes one message.
fn decode(frame: &netlink::Frame<'_>) -> Message {
    let (seq, flags, body) = (frame.seq, frame.flags, frame.body);
    match frame.kind {
        NLMSG_ERROR => match frame.error() {
            Ok((errno, seq)) => Message::Error { seq, errno },
            Err(reason) => Message::Malformed(reason),
        },
        NLMSG_DONE => Message::Done {
            seq,
            // The dump's status; older kernels may send an empty body.
            errno: ne_u32(body, 0).cast_signed().saturating_neg(),
        },
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
            match body.get(NFGENMSG_LEN..).map(decode_entry) {
                Some(Ok(entry)) => Message::Entry { seq, flags, entry },
                Some(Err(reason)) => Message::Malformed(reason),
                None => Message::Malformed("short conntrack message"),
            }
        }
        k => Message::Other(k),
    }
}

/// Walks attributes: `(type without flags, value)`, or an error where a length is wrong.
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), &'static str>> {
    netlink::attrs(buf, "conntrack attribute length out of bounds")
}

/// One direction's tuple, as far as the message gave it.
#[derive(Clone, Copy, Debug, Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    src_port: u16,
    dst_port: u16,
    icmp_id: Option<u16>,
    icmp: Option<Icmp>,
    zone: Option<u16>,
}

impl Tuple {
    /// Source and destination; ICMP keeps its id where a source port would be.
    fn addrs(&self) -> Result<(SocketAddr, SocketAddr), &'static str> {
        let (Some(src), Some(dst)) = (self.src, self.dst) else {
            return Err("conntrack tuple without addresses");
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Err("conntrack tuple with mixed address families");
        }
        Ok(match self.icmp_id {
            Some(id) => (SocketAddr::new(src, id), SocketAddr::new(dst, 0)),
            None => (
                SocketAddr::new(src, self.src_port),
                SocketAddr::new(dst, self.dst_port),
            ),
        })
    }
}

fn decode_entry(body: &[u8]) -> Result<Entry, &'static str> {
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for attr in attrs(body) {
        match attr? {
            (CTA_TUPLE_ORIG, v) => orig = Some(decode_tuple(v)?),
            (CTA_TUPLE_REPLY, v) => reply = Some(decode_tuple(v)?),
            (CTA_ZONE, v) => zone = Some(be16(v)?),
            _ => {}
        }
    }
    let (Some(orig), Some(reply)) = (orig, reply) else {
        return Err("conntrack entry without both tuples");
    };
    let protocol = orig
        .protocol
        .ok_or("conntrack tuple without a protocol number")?;
    let (orig_src, orig_dst) = orig.addrs()?;
    let (reply_src, reply_dst) = reply.addrs()?;
    Ok(Entry {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
        // A zone of both directions is CTA_ZONE; one of the original direction only is
        // inside the original tuple. A reply-only zone does not change the lookup.
        zone: zone.or(orig.zone).unwrap_or(0),
        icmp: orig.icmp,
    })
}

fn decode_tuple(buf: &[u8]) -> Result<Tuple, &'static str> {
    let mut t = Tuple::default();
    for attr in attrs(buf) {
        match attr? {
            (CTA_TUPLE_IP, v) => {
                for attr in attrs(v) {
                    match attr? {
                        (CTA_IP_V4_SRC, v) => t.src = Some(ipv4(v)?),
                        (CTA_IP_V4_DST, v) => t.dst = Some(ipv4(v)?),
                        (CTA_IP_V6_SRC, v) => t.src = Some(ipv6(v)?),
                        (CTA_IP_V6_DST, v) => t.dst = Some(ipv6(v)?),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, v) => {
                for attr in attrs(v) {
                    match attr? {
                        (CTA_PROTO_NUM, v) => t.protocol = Some(u8_of(v)?),
                        (CTA_PROTO_SRC_PORT, v) => t.src_port = be16(v)?,
                        (CTA_PROTO_DST_PORT, v) => t.dst_port = be16(v)?,
                        (CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID, v) => {
                            t.icmp_id = Some(be16(v)?);
                        }
                        (CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE, v) => {
                            t.icmp.get_or_insert(Icmp { kind: 0, code: 0 }).kind = u8_of(v)?;
                        }
                        (CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE, v) => {
                            t.icmp.get_or_insert(Icmp { kind: 0, code: 0 }).code = u8_of(v)?;
                        }
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_ZONE, v) => t.zone = Some(be16(v)?),
            _ => {}
        }
    }
    Ok(t)
}

fn ipv4(v: &[u8]) -> Result<IpAddr, &'static str> {
    <[u8; 4]>::try_from(v)
        .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
        .map_err(|_| "ipv4 address of the wrong length")
}

fn ipv6(v: &[u8]) -> Result<IpAddr, &'static str> {
    <[u8; 16]>::try_from(v)
        .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
        .map_err(|_| "ipv6 address of the wrong length")
}

fn be16(v: &[u8]) -> Result<u16, &'static str> {
    match v {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err("16-bit conntrack attribute of the wrong length"),
    }
}

fn u8_of(v: &[u8]) -> Result<u8, &'static str> {
    match v {
        [a] => Ok(*a),
        _ => Err("8-bit conntrack attribute of the wrong length"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;
    use crate::netlink::{NLA_F_NESTED, NLMSG_HDRLEN};

    /// An attribute header as the kernel lays it out.
    fn hdr(len: u16, kind: u16) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v
    }

    /// A hand-built attribute, padded to 4 bytes.
    fn a(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = hdr(u16::try_from(4 + payload.len()).unwrap(), kind);
        v.extend_from_slice(payload);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// A hand-built nested attribute, with the flag the kernel sets.
    fn n(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        a(kind | NLA_F_NESTED, &parts.concat())
    }

    /// A hand-built netlink message with an nfgenmsg header.
    fn msg(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body = attrs.concat();
        let mut v = u32::try_from(20 + body.len())
            .unwrap()
            .to_ne_bytes()
            .to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0x1234u32.to_ne_bytes()); // our port id
        v.extend_from_slice(&[family, 0, 0, 0]);
        v.extend(body);
        v
    }

    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut v = 36u32.to_ne_bytes().to_vec();
        v.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(&(-errno).to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&[0; 4]);
        v
    }

    fn done(seq: u32, errno: i32) -> Vec<u8> {
        let mut v = 20u32.to_ne_bytes().to_vec();
        v.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        v.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(-errno).to_ne_bytes());
        v
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const ENTRY: u16 = 0x0100; // IPCTNL_MSG_CT_NEW
    const MULTI: u16 = 2;

    fn ip4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        n(1, &[a(1, &src), a(2, &dst)])
    }

    fn ip6(src: &str, dst: &str) -> Vec<u8> {
        let s: Ipv6Addr = src.parse().unwrap();
        let d: Ipv6Addr = dst.parse().unwrap();
        n(1, &[a(3, &s.octets()), a(4, &d.octets())])
    }

    fn ports(protocol: u8, src: u16, dst: u16) -> Vec<u8> {
        n(
            2,
            &[
                a(1, &[protocol]),
                a(2, &src.to_be_bytes()),
                a(3, &dst.to_be_bytes()),
            ],
        )
    }

    fn icmp(id: u16, kind: u8, code: u8) -> Vec<u8> {
        n(
            2,
            &[
                a(1, &[1]),
                a(4, &id.to_be_bytes()),
                a(5, &[kind]),
                a(6, &[code]),
            ],
        )
    }

    /// What the kernel also sends with every entry, which the decoder skips.
    fn extras() -> Vec<Vec<u8>> {
        vec![
            a(3 | 0x4000, &0x18eu32.to_be_bytes()), // CTA_STATUS, byte-order flag masked
            a(7, &30u32.to_be_bytes()),             // CTA_TIMEOUT
            a(8, &0u32.to_be_bytes()),              // CTA_MARK
            a(12, &0xdead_beefu32.to_be_bytes()),   // CTA_ID
            a(11, &1u32.to_be_bytes()),             // CTA_USE
            n(9, &[a(1, &[0; 8]), a(2, &[0; 8])]),  // CTA_COUNTERS_ORIG
        ]
    }

    /// A dump datagram: v4 UDP, v6 UDP through DNAT in zone 5, an ICMP echo in an
    /// original-direction zone, SCTP with protocol info, and the end of the dump.
    fn dump_datagram(seq: u32) -> Vec<u8> {
        let mut udp4 = vec![
            n(1, &[ip4([10, 0, 0, 1], [10, 0, 0, 2]), ports(17, 5000, 53)]),
            n(2, &[ip4([10, 0, 0, 2], [10, 0, 0, 1]), ports(17, 53, 5000)]),
        ];
        udp4.extend(extras());
        let mut udp6 = vec![
            n(1, &[ip6("fd00::1", "fd00::a"), ports(17, 4000, 53)]),
            n(2, &[ip6("fd00::b", "fd00::1"), ports(17, 5353, 4000)]),
            a(18, &5u16.to_be_bytes()),
        ];
        udp6.extend(extras());
        let echo = [
            n(
                1,
                &[
                    ip4([10, 0, 0, 1], [10, 0, 0, 3]),
                    icmp(0x1234, 8, 0),
                    a(3, &9u16.to_be_bytes()),
                ],
            ),
            n(2, &[ip4([10, 0, 0, 3], [10, 0, 0, 1]), icmp(0x1234, 0, 0)]),
        ];
        let sctp = [
            n(1, &[ip4([10, 0, 0, 1], [10, 0, 0, 4]), ports(132, 7, 9)]),
            n(2, &[ip4([10, 0, 0, 4], [10, 0, 0, 1]), ports(132, 9, 7)]),
            n(4, &[n(3, &[a(1, &[3]), a(2, &[0; 4]), a(3, &[0; 4])])]), // CTA_PROTOINFO_SCTP
        ];
        [
            msg(ENTRY, MULTI, seq, AF_INET, &udp4),
            msg(ENTRY, MULTI, seq, AF_INET6, &udp6),
            msg(ENTRY, MULTI, seq, AF_INET, &echo),
            msg(ENTRY, MULTI, seq, AF_INET, &sctp),
            done(seq, 0),
        ]
        .concat()
    }

    fn udp4() -> Entry {
        Entry {
            protocol: 17,
            orig_src: sa("10.0.0.1:5000"),
            orig_dst: sa("10.0.0.2:53"),
            reply_src: sa("10.0.0.2:53"),
            reply_dst: sa("10.0.0.1:5000"),
            zone: 0,
            icmp: None,
        }
    }

    #[test]
    fn delete_matches_the_kernel_layout() {
        let mut out = Vec::new();
        encode_delete(&mut out, &udp4(), 7).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&72u32.to_ne_bytes());
        want.extend_from_slice(&0x0102u16.to_ne_bytes()); // CTNETLINK << 8 | CT_DELETE
        want.extend_from_slice(&5u16.to_ne_bytes()); // REQUEST | ACK
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]); // AF_INET, NFNETLINK_V0, res_id 0
        want.extend(hdr(52, 0x8001)); // CTA_TUPLE_ORIG, nested
        want.extend(hdr(20, 0x8001)); // CTA_TUPLE_IP, nested
        want.extend(hdr(8, 1));
        want.extend_from_slice(&[10, 0, 0, 1]);
        want.extend(hdr(8, 2));
        want.extend_from_slice(&[10, 0, 0, 2]);
        want.extend(hdr(28, 0x8002)); // CTA_TUPLE_PROTO, nested
        want.extend(hdr(5, 1));
        want.extend_from_slice(&[17, 0, 0, 0]);
        want.extend(hdr(6, 2));
        want.extend_from_slice(&[0x13, 0x88, 0, 0]); // 5000
        want.extend(hdr(6, 3));
        want.extend_from_slice(&[0, 53, 0, 0]);
        assert_eq!(out, want);

        // ICMPv6 in zone 7: the id, type and code, and CTA_ZONE after the tuple.
        let echo6 = Entry {
            protocol: 58,
            orig_src: sa("[fd00::1]:4660"),
            orig_dst: sa("[fd00::2]:0"),
            reply_src: sa("[fd00::2]:4660"),
            reply_dst: sa("[fd00::1]:0"),
            zone: 7,
            icmp: Some(Icmp { kind: 128, code: 0 }),
        };
        encode_delete(&mut out, &echo6, 8).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&112u32.to_ne_bytes());
        want.extend_from_slice(&0x0102u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&8u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 0]); // AF_INET6
        want.extend(hdr(84, 0x8001));
        want.extend(hdr(44, 0x8001));
        want.extend(hdr(20, 3));
        want.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend(hdr(20, 4));
        want.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        want.extend(hdr(36, 0x8002));
        want.extend(hdr(5, 1));
        want.extend_from_slice(&[58, 0, 0, 0]);
        want.extend(hdr(6, 7)); // CTA_PROTO_ICMPV6_ID
        want.extend_from_slice(&[0x12, 0x34, 0, 0]);
        want.extend(hdr(5, 8)); // CTA_PROTO_ICMPV6_TYPE
        want.extend_from_slice(&[128, 0, 0, 0]);
        want.extend(hdr(5, 9)); // CTA_PROTO_ICMPV6_CODE
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend(hdr(6, 18)); // CTA_ZONE
        want.extend_from_slice(&[0, 7, 0, 0]);
        assert_eq!(out, want);

        // ICMP over IPv4 uses the CTA_PROTO_ICMP_* attributes.
        let echo4 = Entry {
            protocol: 1,
            orig_src: sa("10.0.0.1:4660"),
            orig_dst: sa("10.0.0.3:0"),
            reply_src: sa("10.0.0.3:4660"),
            reply_dst: sa("10.0.0.1:0"),
            zone: 0,
            icmp: Some(Icmp { kind: 8, code: 0 }),
        };
        encode_delete(&mut out, &echo4, 9).unwrap();
        assert_eq!(out.len(), 80);
        assert_eq!(
            &out[44..],
            &[
                hdr(36, 0x8002),
                hdr(5, 1),
                vec![1, 0, 0, 0],
                hdr(6, 4),
                vec![0x12, 0x34, 0, 0],
                hdr(5, 5),
                vec![8, 0, 0, 0],
                hdr(5, 6),
                vec![0, 0, 0, 0],
            ]
            .concat()[..]
        );
    }

    #[test]
    fn deletes_that_would_be_wrong_are_refused() {
        let mut out = Vec::new();
        let mixed = Entry {
            orig_dst: sa("[::1]:53"),
            ..udp4()
        };
        assert!(encode_delete(&mut out, &mixed, 1).is_err());
        let no_type = Entry {
            protocol: 1,
            ..udp4()
        };
        assert_eq!(
            encode_delete(&mut out, &no_type, 1),
            Err("an ICMP entry needs its type and code")
        );
        let err = Error::Invalid {
            entry: no_type.to_string(),
            reason: "an ICMP entry needs its type and code",
        };
        assert_eq!(
            err.to_string(),
            "cannot delete conntrack entry icmp 10.0.0.1:5000 -> 10.0.0.2:53: \
             an ICMP entry needs its type and code"
        );
    }

    #[test]
    fn dump_requests_match_the_kernel_layout() {
        let mut out = Vec::new();
        encode_dump(&mut out, AF_INET6, 3);
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&0x0101u16.to_ne_bytes()); // CTNETLINK << 8 | CT_GET
        want.extend_from_slice(&0x0301u16.to_ne_bytes()); // REQUEST | DUMP
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn dump_messages_are_decoded() {
        let buf = dump_datagram(42);
        let got: Vec<Message> = messages(&buf).collect();
        let entry = |entry| Message::Entry {
            seq: 42,
            flags: MULTI,
            entry,
        };
        assert_eq!(
            got,
            [
                entry(udp4()),
                entry(Entry {
                    protocol: 17,
                    orig_src: sa("[fd00::1]:4000"),
                    orig_dst: sa("[fd00::a]:53"),
                    reply_src: sa("[fd00::b]:5353"),
                    reply_dst: sa("[fd00::1]:4000"),
                    zone: 5,
                    icmp: None,
                }),
                entry(Entry {
                    protocol: 1,
                    orig_src: sa("10.0.0.1:4660"),
                    orig_dst: sa("10.0.0.3:0"),
                    reply_src: sa("10.0.0.3:4660"),
                    reply_dst: sa("10.0.0.1:0"),
                    zone: 9,
                    icmp: Some(Icmp { kind: 8, code: 0 }),
                }),
                entry(Entry {
                    protocol: 132,
                    orig_src: sa("10.0.0.1:7"),
                    orig_dst: sa("10.0.0.4:9"),
                    reply_src: sa("10.0.0.4:9"),
                    reply_dst: sa("10.0.0.1:7"),
                    zone: 0,
                    icmp: None,
                }),
                Message::Done { seq: 42, errno: 0 },
            ]
        );
        let mut more = ack(5, 0);
        more.extend(ack(6, 2));
        more.extend(done(7, 105));
        more.extend(msg(0x0200, 0, 8, 0, &[])); // another subsystem
        assert_eq!(
            messages(&more).collect::<Vec<_>>(),
            [
                Message::Error { seq: 5, errno: 0 },
                Message::Error { seq: 6, errno: 2 },
                Message::Done { seq: 7, errno: 105 },
                Message::Other(0x0200),
            ]
        );
    }

    #[test]
    fn malformed_messages_do_not_panic() {
        let good = dump_datagram(1);
        // Every prefix of the datagram, as received.
        for len in 0..good.len() {
            let _: Vec<_> = messages(&good[..len]).collect();
        }
        // Every prefix of one message, with its length claiming the cut.
        let one = msg(
            ENTRY,
            MULTI,
            1,
            AF_INET,
            &[
                n(1, &[ip4([10, 0, 0, 1], [10, 0, 0, 3]), icmp(7, 8, 0)]),
                n(2, &[ip4([10, 0, 0, 3], [10, 0, 0, 1]), icmp(7, 0, 0)]),
            ],
        );
        for len in 0..one.len() {
            let mut cut = one[..len].to_vec();
            if len >= 4 {
                finish(&mut cut);
            }
            let got: Vec<_> = messages(&cut).collect();
            if len >= NLMSG_HDRLEN {
                assert!(matches!(got[..], [Message::Malformed(_)]), "{len}: {got:?}");
            }
        }
        // Every byte replaced by a few troublesome values.
        for at in 0..good.len() {
            for value in [0, 1, 3, 4, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _: Vec<_> = messages(&bad).collect();
            }
        }
        let mut bad_len = good.clone();
        bad_len[..4].copy_from_slice(&100_000u32.to_ne_bytes());
        assert_eq!(
            messages(&bad_len).collect::<Vec<_>>(),
            [Message::Malformed("netlink message length out of bounds")]
        );
        let short_addr = msg(
            ENTRY,
            0,
            1,
            AF_INET,
            &[n(1, &[n(1, &[a(1, &[10, 0, 0]), a(2, &[10, 0, 0, 2])])])],
        );
        assert_eq!(
            messages(&short_addr).collect::<Vec<_>>(),
            [Message::Malformed("ipv4 address of the wrong length")]
        );
        let no_reply = msg(
            ENTRY,
            0,
            1,
            AF_INET,
            &[n(1, &[ip4([10, 0, 0, 1], [10, 0, 0, 2]), ports(17, 1, 2)])],
        );
        assert_eq!(
            messages(&no_reply).collect::<Vec<_>>(),
            [Message::Malformed("conntrack entry without both tuples")]
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let err = Error::Refused {
            what: "ipv4 dump".into(),
            source: io::Error::from_raw_os_error(Errno::EPERM as i32),
        };
        assert!(
            err.to_string()
                .ends_with("; ctnetlink needs CAP_NET_ADMIN in this network namespace"),
            "{err}"
        );
    }

    /// Tests in a network namespace of their own, with conntrack enabled in it.
    mod netns {
        use std::net::UdpSocket;
        use std::time::Instant;

        use socket2::{Domain, Protocol, SockAddr, Type};

        use super::*;
        use crate::lab::netns::Netns;

        /// A namespace where nftables tracks every new outgoing flow, with extra rules.
        fn lab(tag: &str, rules: &str) -> Option<Netns> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipped: needs root (network namespaces, nftables, CAP_NET_ADMIN)");
                return None;
            }
            let ns = Netns::new(tag).unwrap();
            ns.sh(&format!(
                "nft add table inet t\n\
                 nft add chain inet t c '{{ type filter hook output priority 0; }}'\n\
                 nft add rule inet t c ct state new accept\n{rules}"
            ))
            .unwrap();
            Some(ns)
        }

        /// Sends one datagram from an ephemeral port to `dst_port` on `ip` and waits for it.
        fn udp_flow(ip: &str, dst_port: u16) -> Entry {
            let a = UdpSocket::bind((ip, 0)).unwrap();
            let b = UdpSocket::bind((ip, dst_port)).unwrap();
            b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            a.send_to(b"netward", b.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 16];
            let (_, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            let (src, dst) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            Entry {
                protocol: 17,
                orig_src: src,
                orig_dst: dst,
                reply_src: dst,
                reply_dst: src,
                zone: 0,
                icmp: None,
            }
        }

        fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
            v.sort();
            v
        }

        #[test]
        fn udp_entries_are_listed_and_deleted() {
            let Some(ns) = lab("ctudp", "") else { return };
            ns.run(|| {
                let flows = sorted(vec![udp_flow("127.0.0.1", 0), udp_flow("::1", 0)]);
                assert_eq!(sorted(list(&[17]).unwrap()), flows);
                assert_eq!(list(&[132, 1, 58]).unwrap(), []);
                assert_eq!(list(&[]).unwrap(), []);
                for e in &flows {
                    assert!(delete(e).unwrap(), "{e}");
                    assert!(!delete(e).unwrap(), "{e} deleted twice");
                }
                assert_eq!(list(&[17]).unwrap(), []);
            })
            .unwrap();
        }

        #[test]
        fn a_delete_names_the_zone() {
            let rules = "nft add chain inet t z '{ type filter hook output priority -300; }'\n\
                         nft add rule inet t z udp dport 4242 ct zone set 7";
            let Some(ns) = lab("ctzone", rules) else {
                return;
            };
            ns.run(|| {
                let flow = Entry {
                    zone: 7,
                    ..udp_flow("127.0.0.1", 4242)
                };
                assert_eq!(list(&[17]).unwrap(), [flow]);
                let default_zone = Entry { zone: 0, ..flow };
                assert!(!delete(&default_zone).unwrap());
                assert!(delete(&flow).unwrap());
                assert_eq!(list(&[17]).unwrap(), []);
            })
            .unwrap();
        }

        fn checksum(data: &[u8]) -> u16 {
            let mut sum: u32 = data
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !u16::try_from(sum).unwrap()
        }

        /// Sends one echo request with `id` to `dst` from a raw socket.
        fn ping(dst: IpAddr, id: u16) -> Entry {
            let (domain, protocol, number, kind) = match dst {
                IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 1, 8),
                IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 58, 128),
            };
            let sock = socket2::Socket::new(domain, Type::RAW, Some(protocol)).unwrap();
            let [hi, lo] = id.to_be_bytes();
            let mut packet = [kind, 0, 0, 0, hi, lo, 0, 1, b'n', b'w'];
            if dst.is_ipv4() {
                // The kernel fills in the ICMPv6 checksum, not the ICMP one.
                let [c0, c1] = checksum(&packet).to_be_bytes();
                packet[2..4].copy_from_slice(&[c0, c1]);
            }
            sock.send_to(&packet, &SockAddr::from(SocketAddr::new(dst, 0)))
                .unwrap();
            Entry {
                protocol: number,
                orig_src: SocketAddr::new(dst, id),
                orig_dst: SocketAddr::new(dst, 0),
                reply_src: SocketAddr::new(dst, id),
                reply_dst: SocketAddr::new(dst, 0),
                zone: 0,
                icmp: Some(Icmp { kind, code: 0 }),
            }
        }

        #[test]
        fn icmp_echo_entries_are_listed_and_deleted() {
            let Some(ns) = lab("cticmp", "") else { return };
            ns.run(|| {
                let pings = sorted(vec![
                    ping(IpAddr::V4(Ipv4Addr::LOCALHOST), 0x4e57),
                    ping(IpAddr::V6(Ipv6Addr::LOCALHOST), 0x4e58),
                ]);
                // The echo replies are answered by the kernel; give them a bounded moment.
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut got = sorted(list(&[1, 58]).unwrap());
                while got != pings && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    got = sorted(list(&[1, 58]).unwrap());
                }
                assert_eq!(got, pings);
                for e in &pings {
                    assert!(delete(e).unwrap(), "{e}");
                    assert!(!delete(e).unwrap(), "{e} deleted twice");
                }
                assert_eq!(list(&[1, 58]).unwrap(), []);
            })
            .unwrap();
        }
    }
}
