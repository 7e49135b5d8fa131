//! Thin safe wrappers over the few syscalls the standard crates lack.
//!
//! socket2 already covers `IP_TRANSPARENT`, `IPV6_TRANSPARENT`, `IP_FREEBIND`,
//! `SO_MARK` and `SO_LINGER`; only what it does not have lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

/// Turns the C convention "-1 and errno" into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`cvt`] for the calls that return a byte count.
fn cvt_len(ret: libc::ssize_t) -> io::Result<usize> {
    // A negative value other than -1 never comes back from the kernel; if it
    // did, errno would describe it.
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe2() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a writable array of two ints, which is exactly what
    // pipe2(2) fills in; the flags are plain constants.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and nothing else
    // owns them; each is wrapped exactly once.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(pair)
}

/// Sets a pipe's capacity with `F_SETPIPE_SZ` and returns the capacity the
/// kernel actually chose (it rounds up to a power of two pages).
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "pipe size does not fit an int")
    })?;
    // SAFETY: F_SETPIPE_SZ takes an int by value and reads no memory; the
    // borrow keeps `fd` open for the duration of the call.
    let size = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) })?;
    usize::try_from(size).map_err(|_| io::Error::other("F_SETPIPE_SZ returned a negative size"))
}

/// Moves up to `len` bytes from `from` to `to` without copying them through
/// user space. One of the two must be a pipe. `Ok(0)` means end of stream
/// (or an empty pipe whose writers are gone).
///
/// The flags are always `SPLICE_F_MOVE | SPLICE_F_NONBLOCK`: the relay never
/// blocks in the kernel, it waits on tokio readiness instead.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are kept open by their borrows; the offsets are
    // null, as they must be for pipes and sockets, so no memory is read or
    // written by the kernel on our behalf.
    let moved = unsafe {
        libc::splice(
            from.as_raw_fd(),
            ptr::null_mut(),
            to.as_raw_fd(),
            ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt_len(moved)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: a `bind()` to `(ip, 0)` then reserves no
/// port, and `connect()` picks one that is unique for the full 4-tuple.
/// Without it every transparent bind to one client IP would share one
/// ephemeral range across all destinations. Works on IPv6 sockets too.
pub(crate) fn set_bind_address_no_port(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen_t overflow"))?;
    // SAFETY: the option value points at a live int on this stack frame and
    // `len` is its exact size; the borrow keeps `fd` open.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const value).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Registers a shared descriptor with the current tokio reactor for `interest`.
///
/// The registration holds its own clone of the `Arc`, so the descriptor stays open at
/// least as long as the registration does.
pub(crate) fn register_shared_fd(
    fd: std::sync::Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    // SAFETY: `AsyncFd` needs the descriptor to stay valid and open while it is
    // registered. It owns a clone of the `Arc<OwnedFd>`, and an `OwnedFd` closes its
    // descriptor only when the last clone is dropped, which cannot happen before the
    // `AsyncFd` (and its deregistration) drops its own clone.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn pipe_size_and_splice_between_pipes() {
        let (r1, w1) = pipe2().unwrap();
        let (r2, w2) = pipe2().unwrap();
        let size = set_pipe_size(w1.as_fd(), 128 * 1024).unwrap();
        assert!(size >= 128 * 1024, "kernel gave {size}");

        let mut w1 = std::fs::File::from(w1);
        w1.write_all(b"hello splice").unwrap();
        let moved = splice(r1.as_fd(), w2.as_fd(), 1024).unwrap();
        assert_eq!(moved, 12);

        // Empty non-blocking pipe: EAGAIN, reported as WouldBlock.
        let err = splice(r1.as_fd(), w2.as_fd(), 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        drop(w2);
        let mut out = String::new();
        std::fs::File::from(r2).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello splice");
    }

    #[test]
    fn cvt_maps_minus_one_to_errno() {
        // SAFETY: closing an fd that is certainly not open (-1) has no effect
        // besides setting errno to EBADF.
        let err = cvt(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(cvt(3).unwrap(), 3);
    }
}
