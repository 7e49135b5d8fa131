//! Pipes and splice(2) for the relay, through nix's safe wrappers.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};

/// A non-blocking, close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe2() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?)
}

/// Sets a pipe's capacity with `F_SETPIPE_SZ` and returns the capacity the kernel
/// actually chose (it rounds up to a power of two pages).
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let bytes = libc::c_int::try_from(bytes).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "pipe size does not fit an int")
    })?;
    let size = nix::fcntl::fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes))?;
    usize::try_from(size).map_err(|_| io::Error::other("F_SETPIPE_SZ returned a negative size"))
}

/// Moves up to `len` bytes from `from` to `to` without copying them through user
/// space. One of the two must be a pipe. `Ok(0)` means end of stream (or an empty pipe
/// whose writers are gone).
///
/// The flags are always `SPLICE_F_MOVE | SPLICE_F_NONBLOCK`: the relay never blocks in
/// the kernel, it waits on tokio readiness instead.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    Ok(nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )?)
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
    fn a_closed_descriptor_is_an_os_error() {
        let (r, w) = pipe2().unwrap();
        drop(w);
        // Reading an empty pipe whose writers are gone: end of stream.
        let (r2, w2) = pipe2().unwrap();
        assert_eq!(splice(r.as_fd(), w2.as_fd(), 16).unwrap(), 0);
        drop(r2);
        // Writing into a pipe whose readers are gone: EPIPE, with its errno kept.
        let (r3, w3) = pipe2().unwrap();
        std::fs::File::from(w3.try_clone().unwrap())
            .write_all(b"x")
            .unwrap();
        let err = splice(r3.as_fd(), w2.as_fd(), 16).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
