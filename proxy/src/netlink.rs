//! Netlink framing shared by the two nfnetlink subsystems netward speaks: the verdict
//! queue (`verdict`) and conntrack (`conntrack`). Pure functions over byte buffers; the
//! subsystems encode and decode their own attributes on top.

/// `NLMSG_ERROR`: an acknowledgement (errno 0) or an error.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;
/// A request.
pub(crate) const NLM_F_REQUEST: u16 = 1;
/// Ask for an acknowledgement.
pub(crate) const NLM_F_ACK: u16 = 4;
/// The netlink header's length.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// The nfgenmsg header that follows it in every nfnetlink message.
pub(crate) const NFGENMSG_LEN: usize = 4;
/// The attribute type bits (without the nested and byte-order flags).
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
/// The flag of a nested attribute.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// Starts a message: the netlink header (its length patched by [`finish`]) for
/// `subsystem`'s message `kind`, then the nfgenmsg header `nfgen` (family, version,
/// resource id in network order).
pub(crate) fn begin(
    out: &mut Vec<u8>,
    subsystem: u16,
    kind: u16,
    flags: u16,
    seq: u32,
    nfgen: [u8; 4],
) {
    out.clear();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&((subsystem << 8) | kind).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&nfgen);
}

/// Appends one attribute, padded to 4 bytes.
pub(crate) fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose contents `f` appends.
pub(crate) fn nest(out: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    f(out);
    let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Writes the message's length into its header.
pub(crate) fn finish(out: &mut [u8]) {
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX).to_ne_bytes();
    out[..4].copy_from_slice(&len);
}

/// One message of a datagram: its header fields and its body (after the netlink header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// `(subsystem << 8) | message`, or `NLMSG_ERROR` / `NLMSG_DONE`.
    pub(crate) kind: u16,
    /// The header's flags.
    pub(crate) flags: u16,
    /// The header's sequence number.
    pub(crate) seq: u32,
    /// Everything after the netlink header.
    pub(crate) body: &'a [u8],
}

impl Frame<'_> {
    /// For an `NLMSG_ERROR` message: the positive errno (0 for an acknowledgement) and
    /// the sequence number of the request it answers.
    pub(crate) fn error(&self) -> Result<(i32, u32), &'static str> {
        if self.body.len() < 4 + NLMSG_HDRLEN {
            return Err("short netlink error message");
        }
        let errno = ne_u32(self.body, 0).cast_signed().saturating_neg();
        Ok((errno, ne_u32(self.body, 4 + 8)))
    }
}

/// Splits a datagram into its messages; a length out of bounds ends it with an error.
pub(crate) fn frames(mut buf: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, &'static str>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = ne_u32(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err("netlink message length out of bounds"));
        }
        let (msg, rest) = buf.split_at(len);
        buf = rest.get(len.next_multiple_of(4) - len..).unwrap_or(&[]);
        Some(Ok(Frame {
            kind: ne_u16(msg, 4),
            flags: ne_u16(msg, 6),
            seq: ne_u32(msg, 8),
            body: &msg[NLMSG_HDRLEN..],
        }))
    })
}

/// Walks attributes: `(type without flags, value)`, or `bad_length` where a length is
/// wrong (and nothing after it).
pub(crate) fn attrs<'a>(
    mut buf: &'a [u8],
    bad_length: &'static str,
) -> impl Iterator<Item = Result<(u16, &'a [u8]), &'static str>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(ne_u16(buf, 0));
        let kind = ne_u16(buf, 2) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return Some(Err(bad_length));
        }
        let value = &buf[4..len];
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    })
}

/// A native-endian u16 at `at`, 0 when the buffer is too short.
pub(crate) fn ne_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x0, x1]) => u16::from_ne_bytes([x0, x1]),
        _ => 0,
    }
}

/// A native-endian u32 at `at`, 0 when the buffer is too short.
pub(crate) fn ne_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[x0, x1, x2, x3]) => u32::from_ne_bytes([x0, x1, x2, x3]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn a_message_round_trips_through_frames_and_attrs() {
        let mut out = Vec::new();
        begin(&mut out, 3, 2, NLM_F_REQUEST | NLM_F_ACK, 7, [0, 0, 0, 9]);
        put_attr(&mut out, 1, &[1, 2, 3]);
        nest(&mut out, 4, |out| put_attr(out, 5, &[6, 7, 8, 9]));
        finish(&mut out);
        let frames: Vec<_> = frames(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 1);
        let f = frames[0];
        assert_eq!((f.kind, f.flags, f.seq), ((3 << 8) | 2, 5, 7));
        assert_eq!(&f.body[..NFGENMSG_LEN], &[0, 0, 0, 9]);
        let got: Vec<_> = attrs(&f.body[NFGENMSG_LEN..], "bad")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got[0], (1, &[1u8, 2, 3][..]));
        assert_eq!(got[1].0, 4, "the nested flag is masked off");
        let inner: Vec<_> = attrs(got[1].1, "bad").collect::<Result<_, _>>().unwrap();
        assert_eq!(inner, vec![(5, &[6u8, 7, 8, 9][..])]);
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        assert_eq!(
            frames(&[255; 20]).collect::<Vec<_>>(),
            vec![Err("netlink message length out of bounds")]
        );
        assert_eq!(
            attrs(&[2, 0, 1, 0], "attribute too short").collect::<Vec<_>>(),
            vec![Err("attribute too short")]
        );
        let short_error = Frame {
            kind: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            body: &[0; 8],
        };
        assert_eq!(short_error.error(), Err("short netlink error message"));
    }
}
