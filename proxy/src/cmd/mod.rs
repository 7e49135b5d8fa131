//! Subcommand implementations.

pub(crate) mod audit;
pub(crate) mod ca;
pub(crate) mod config;
pub(crate) mod lab;
pub(crate) mod node;
pub(crate) mod offline;
pub(crate) mod run;
pub(crate) mod signer;

/// Raises the soft open-file limit to the hard one: every relayed connection holds two
/// sockets and up to four pipe ends. `/metrics` reports the limit in force
/// (`netward_open_files_limit`) beside the descriptors open (`netward_open_files`).
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => {
                tracing::warn!(error = %e, limit = soft, "cannot raise the open-file limit")
            }
        }
    }
}
