//! The unsafe calls the safe crates cannot make for us.
//!
//! socket2 covers `IP_TRANSPARENT`, `IPV6_TRANSPARENT`, `IP_FREEBIND`, `SO_MARK` and
//! `SO_LINGER`; nix covers `splice`, `pipe2`, `F_SETPIPE_SZ` and
//! `IP_BIND_ADDRESS_NO_PORT` (see `relay` and `net`). What is left here is registering
//! a shared descriptor with tokio's reactor, which tokio marks unsafe.

use std::io;
use std::os::fd::OwnedFd;

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
