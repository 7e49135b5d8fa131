//! The headers of a queued packet: protocol, addresses and ports, nothing more.
//!
//! The verdict queue only needs the 5-tuple of a flow's first packet. Anything
//! this parser does not understand is an error, and the caller drops the
//! packet: a policy can only be checked on a flow it can name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netward_controller::Protocol;
use thiserror::Error;

/// IP protocol numbers this parser reads ports from, or skips over.
mod proto {
    pub(super) const HOP_BY_HOP: u8 = 0;
    pub(super) const ICMP: u8 = 1;
    pub(super) const ICMPV6: u8 = 58;
    pub(super) const TCP: u8 = 6;
    pub(super) const UDP: u8 = 17;
    pub(super) const ROUTING: u8 = 43;
    pub(super) const FRAGMENT: u8 = 44;
    pub(super) const AH: u8 = 51;
    pub(super) const DEST_OPTS: u8 = 60;
    pub(super) const SCTP: u8 = 132;
}

/// IPv6 extension headers skipped before giving up: more is not a real packet.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Why a packet's flow could not be read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// The packet ends inside a header.
    #[error(
        "truncated {header} header: needs {need} bytes at offset {offset}, the packet has {len}; \
         a valid packet this short means the queue copy range is too small"
    )]
    Truncated {
        /// The header being read.
        header: &'static str,
        /// Its offset in the packet.
        offset: usize,
        /// The bytes it needs.
        need: usize,
        /// The packet's length.
        len: usize,
    },
    /// Neither IPv4 nor IPv6.
    #[error("unknown ip version {0}")]
    Version(u8),
    /// An IPv4 header length below the minimum of 20 bytes.
    #[error("invalid ipv4 header length {0}")]
    HeaderLength(usize),
    /// A fragment after the first: it has no transport header to read ports from.
    #[error("non-first fragment at offset {0} has no transport header")]
    Fragment(u16),
    /// A chain of IPv6 extension headers longer than any real packet's.
    #[error("more than {MAX_EXTENSION_HEADERS} ipv6 extension headers")]
    TooManyExtensions,
}

/// Result type of this module.
pub type Result<T, E = ParseError> = std::result::Result<T, E>;

/// The 5-tuple of a queued packet: its own header addresses, so after any DNAT
/// (a Service's backend, not its ClusterIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The transport protocol.
    pub protocol: Protocol,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.src, self.dst)
    }
}

/// Reads the flow of an IPv4 or IPv6 packet: TCP, UDP or SCTP ports; ICMP/ICMPv6 with
/// the echo identifier as the source port; any other protocol without ports.
///
/// IPv6 hop-by-hop, routing, destination options, fragment (first fragment
/// only) and authentication headers are skipped. Everything else is an error.
pub fn parse_packet(packet: &[u8]) -> Result<FlowKey> {
    let first = *packet.first().ok_or(ParseError::Truncated {
        header: "ip",
        offset: 0,
        need: 1,
        len: 0,
    })?;
    match first >> 4 {
        4 => parse_v4(packet),
        6 => parse_v6(packet),
        v => Err(ParseError::Version(v)),
    }
}

fn parse_v4(p: &[u8]) -> Result<FlowKey> {
    let h: [u8; 20] = bytes(p, 0, "ipv4")?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::HeaderLength(header_len));
    }
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Err(ParseError::Fragment(fragment_offset * 8));
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    transport(p, header_len, h[9], src, dst)
}

fn parse_v6(p: &[u8]) -> Result<FlowKey> {
    let h: [u8; 40] = bytes(p, 0, "ipv6")?;
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src, dst) = (addr(8), addr(24));
    let mut next = h[6];
    let mut offset = 40;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match next {
            proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS => {
                let [nh, ext_len] = bytes(p, offset, "ipv6 extension")?;
                next = nh;
                (usize::from(ext_len) + 1) * 8
            }
            proto::FRAGMENT => {
                let f: [u8; 8] = bytes(p, offset, "ipv6 fragment")?;
                let fragment_offset = u16::from_be_bytes([f[2], f[3]]) & 0xfff8;
                if fragment_offset != 0 {
                    return Err(ParseError::Fragment(fragment_offset));
                }
                next = f[0];
                8
            }
            proto::AH => {
                let [nh, payload_len] = bytes(p, offset, "ipv6 authentication")?;
                next = nh;
                (usize::from(payload_len) + 2) * 4
            }
            _ => return transport(p, offset, next, src, dst),
        };
        if p.len() < offset + len {
            return Err(ParseError::Truncated {
                header: "ipv6 extension",
                offset,
                need: len,
                len: p.len(),
            });
        }
        offset += len;
    }
    Err(ParseError::TooManyExtensions)
}

/// Reads the ports of the transport header at `offset`, which must be complete. ICMP and
/// ICMPv6 have no ports: the echo identifier stands for the source port (as conntrack
/// keys echo flows), and the destination port is 0. Other IP protocols have neither.
fn transport(p: &[u8], offset: usize, protocol: u8, src: IpAddr, dst: IpAddr) -> Result<FlowKey> {
    let (protocol, header, min_len) = match protocol {
        proto::TCP => (Protocol::Tcp, "tcp", 20),
        proto::UDP => (Protocol::Udp, "udp", 8),
        proto::SCTP => (Protocol::Sctp, "sctp", 12),
        proto::ICMP | proto::ICMPV6 => {
            let [_kind, _code, _c0, _c1, id0, id1] = bytes(p, offset, "icmp")?;
            return Ok(FlowKey {
                protocol: Protocol::Other(protocol),
                src: SocketAddr::new(src, u16::from_be_bytes([id0, id1])),
                dst: SocketAddr::new(dst, 0),
            });
        }
        other => {
            return Ok(FlowKey {
                protocol: Protocol::from_ip_number(other),
                src: SocketAddr::new(src, 0),
                dst: SocketAddr::new(dst, 0),
            });
        }
    };
    let need = offset + min_len;
    if p.len() < need {
        return Err(ParseError::Truncated {
            header,
            offset,
            need: min_len,
            len: p.len(),
        });
    }
    let [s0, s1, d0, d1] = bytes(p, offset, header)?;
    Ok(FlowKey {
        protocol,
        src: SocketAddr::new(src, u16::from_be_bytes([s0, s1])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([d0, d1])),
    })
}

/// `N` bytes of `p` at `offset`, or the error naming the header.
fn bytes<const N: usize>(p: &[u8], offset: usize, header: &'static str) -> Result<[u8; N]> {
    offset
        .checked_add(N)
        .and_then(|end| p.get(offset..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated {
            header,
            offset,
            need: N,
            len: p.len(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;

    /// An IPv4 header (no options) for `protocol`, followed by `l4`.
    fn v4(protocol: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + l4.len()).unwrap().to_be_bytes();
        let mut p = vec![
            0x45, 0, total[0], total[1], 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    /// An IPv6 header with `next` as its next header, followed by `rest`.
    fn v6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, rest: &[u8]) -> Vec<u8> {
        let len = u16::try_from(rest.len()).unwrap().to_be_bytes();
        let mut p = vec![0x60, 0, 0, 0, len[0], len[1], next, 64];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(rest);
        p
    }

    fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + data.len()).unwrap().to_be_bytes();
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[len[0], len[1], 0, 0]);
        u.extend_from_slice(data);
        u
    }

    fn sctp_init(sport: u16, dport: u16) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&[0; 8]); // verification tag 0, checksum
        // INIT chunk: type 1, flags, length 20, tag, a_rwnd, streams, initial TSN.
        s.extend_from_slice(&[
            1, 0, 0, 20, 0, 0, 0, 7, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1,
        ]);
        s
    }

    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);

    fn key(protocol: Protocol, src: &str, dst: &str) -> FlowKey {
        FlowKey {
            protocol,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn ipv4_tcp_syn() {
        let p = v4(6, [198, 18, 1, 2], [198, 18, 2, 2], &tcp_syn(40000, 80));
        let k = parse_packet(&p).unwrap();
        assert_eq!(k, key(Protocol::Tcp, "198.18.1.2:40000", "198.18.2.2:80"));
        assert_eq!(k.to_string(), "TCP 198.18.1.2:40000 -> 198.18.2.2:80");
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut p = v4(17, [198, 18, 1, 2], [198, 18, 2, 2], &[]);
        p[0] = 0x46; // 24-byte header: one 4-byte option (NOPs) before UDP
        p.extend_from_slice(&[1, 1, 1, 1]);
        p.extend_from_slice(&udp(5353, 53, b"q"));
        let k = parse_packet(&p).unwrap();
        assert_eq!(k, key(Protocol::Udp, "198.18.1.2:5353", "198.18.2.2:53"));
    }

    #[test]
    fn ipv6_udp() {
        let p = v6(17, A6, B6, &udp(12345, 53, b"query"));
        assert_eq!(
            parse_packet(&p).unwrap(),
            key(Protocol::Udp, "[fd00:1::2]:12345", "[fd00:2::2]:53")
        );
    }

    #[test]
    fn ipv4_sctp_init() {
        let p = v4(
            132,
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            &sctp_init(5000, 3868),
        );
        assert_eq!(
            parse_packet(&p).unwrap(),
            key(Protocol::Sctp, "198.18.1.2:5000", "198.18.2.2:3868")
        );
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // Hop-by-hop (8 bytes: router alert + padding) then TCP.
        let mut rest = vec![6, 0, 5, 2, 0, 0, 1, 0];
        rest.extend_from_slice(&tcp_syn(40000, 443));
        let k = parse_packet(&v6(0, A6, B6, &rest)).unwrap();
        assert_eq!(
            k,
            key(Protocol::Tcp, "[fd00:1::2]:40000", "[fd00:2::2]:443")
        );

        // Hop-by-hop -> destination options (16 bytes) -> first fragment -> UDP.
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[44, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[17, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]); // offset 0, M=1
        rest.extend_from_slice(&udp(1000, 2000, b""));
        let k = parse_packet(&v6(0, A6, B6, &rest)).unwrap();
        assert_eq!(
            k,
            key(Protocol::Udp, "[fd00:1::2]:1000", "[fd00:2::2]:2000")
        );

        // Routing header (type 0, no addresses) and AH (12 + 4 bytes ICV) before SCTP.
        let mut rest = vec![51, 0, 0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&[132, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        rest.extend_from_slice(&sctp_init(7, 9));
        let k = parse_packet(&v6(43, A6, B6, &rest)).unwrap();
        assert_eq!(k, key(Protocol::Sctp, "[fd00:1::2]:7", "[fd00:2::2]:9"));
    }

    #[test]
    fn truncated_packets_are_errors() {
        let full = v4(6, [198, 18, 1, 2], [198, 18, 2, 2], &tcp_syn(1, 2));
        for len in 0..full.len() {
            let err = parse_packet(&full[..len]).unwrap_err();
            assert!(
                matches!(err, ParseError::Truncated { .. }),
                "{len}: {err:?}"
            );
        }
        assert_eq!(
            parse_packet(&full[..30]).unwrap_err(),
            ParseError::Truncated {
                header: "tcp",
                offset: 20,
                need: 20,
                len: 30
            }
        );
        let v6_full = v6(0, A6, B6, &[17, 0, 5, 2, 0, 0, 1, 0]);
        let err = parse_packet(&v6_full[..44]).unwrap_err();
        assert!(matches!(
            err,
            ParseError::Truncated {
                header: "ipv6 extension",
                ..
            }
        ));
        let err = parse_packet(&v6_full).unwrap_err();
        assert!(matches!(err, ParseError::Truncated { header: "udp", .. }));
        assert!(err.to_string().contains("copy range"), "{err}");
    }

    #[test]
    fn non_first_fragments_are_errors() {
        let mut p = v4(17, [198, 18, 1, 2], [198, 18, 2, 2], &udp(1, 2, b""));
        p[6] = 0x20; // MF, offset 0: the first fragment has the ports
        p[7] = 0;
        assert!(parse_packet(&p).is_ok());
        p[7] = 0xb9; // offset 185 * 8
        assert_eq!(parse_packet(&p).unwrap_err(), ParseError::Fragment(1480));

        let mut rest = vec![17, 0, 0x05, 0xc8, 0, 0, 0, 1]; // offset 1480, M=0
        rest.extend_from_slice(&udp(1, 2, b""));
        assert_eq!(
            parse_packet(&v6(44, A6, B6, &rest)).unwrap_err(),
            ParseError::Fragment(1480)
        );
    }

    #[test]
    fn icmp_echo_and_other_protocols_are_flows_without_ports() {
        let icmp = v4(
            1,
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            &[8, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let k = parse_packet(&icmp).unwrap();
        assert_eq!(k.protocol, Protocol::Other(1));
        assert_eq!(
            (k.src.port(), k.dst.port()),
            (0x1234, 0),
            "echo id as the source port"
        );
        let icmp6 = v6(58, A6, B6, &[128, 0, 0, 0, 0, 7, 0, 1]);
        let k = parse_packet(&icmp6).unwrap();
        assert_eq!((k.protocol, k.src.port()), (Protocol::Other(58), 7));
        let truncated = v4(1, [198, 18, 1, 2], [198, 18, 2, 2], &[8, 0, 0]);
        assert!(matches!(
            parse_packet(&truncated).unwrap_err(),
            ParseError::Truncated { header: "icmp", .. }
        ));
        let esp = v6(50, A6, B6, &[0; 16]);
        let k = parse_packet(&esp).unwrap();
        assert_eq!(
            (k.protocol, k.src.port(), k.dst.port()),
            (Protocol::Other(50), 0, 0)
        );
        let no_next = v6(0, A6, B6, &[59, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(
            parse_packet(&no_next).unwrap().protocol,
            Protocol::Other(59)
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(
            parse_packet(&[0x50; 40]).unwrap_err(),
            ParseError::Version(5)
        );
        let mut p = v4(6, [198, 18, 1, 2], [198, 18, 2, 2], &tcp_syn(1, 2));
        p[0] = 0x44;
        assert_eq!(parse_packet(&p).unwrap_err(), ParseError::HeaderLength(16));
        // A loop of destination-options headers.
        let rest = [60u8, 0, 0, 0, 0, 0, 0, 0].repeat(MAX_EXTENSION_HEADERS + 2);
        assert_eq!(
            parse_packet(&v6(60, A6, B6, &rest)).unwrap_err(),
            ParseError::TooManyExtensions
        );
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[44, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 1]);
        rest.extend_from_slice(&tcp_syn(1, 2));
        let p = v6(0, A6, B6, &rest);
        for len in 0..p.len() {
            assert!(parse_packet(&p[..len]).is_err());
            let mut flipped = p.clone();
            flipped[len] ^= 0xff;
            let _ = parse_packet(&flipped);
        }
        assert!(parse_packet(&p).is_ok());
    }
}
