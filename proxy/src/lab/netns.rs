//! Network namespaces that clean up after themselves.

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netward_iptables::{CommandRunner, Runner};

/// Errors while building or using namespaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        detail: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        /// The namespace.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A thread in the namespace panicked.
    #[error("a thread in network namespace {0} panicked")]
    Panicked(String),
}

/// Convenience alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The prefix of every namespace netward's lab and tests create: `nwl-<pid>-<n>-<tag>`.
pub const PREFIX: &str = "nwl-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static KEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Names the namespaces created from now on `nwl-kept-...`: they outlive this process
/// (`netward lab --keep`), so [`sweep_stale`] must leave them alone.
pub fn set_kept(kept: bool) {
    KEPT.store(kept, Ordering::Relaxed);
}

/// How long one `ip`/`sysctl` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a command on the host, failing with its stderr.
pub fn host(args: &[&str]) -> Result<String> {
    run(&CommandRunner::new().with_timeout(COMMAND_TIMEOUT), args)
}

fn run(runner: &CommandRunner, args: &[&str]) -> Result<String> {
    let command = args.join(" ");
    let out = runner
        .run(args[0], &args[1..], None)
        .map_err(|e| Error::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Command {
            command,
            detail: format!("exit {:?}: {}", out.code, out.stderr.trim()),
        })
    }
}

/// A network namespace, deleted on drop (also while unwinding from a panic).
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates `nwl-<pid>-<n>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let kept = if KEPT.load(Ordering::Relaxed) {
            "kept-"
        } else {
            ""
        };
        let name = format!("{PREFIX}{kept}{}-{n}-{tag}", std::process::id());
        host(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, keep: false };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves the namespace in place on drop (`netward lab --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Runs a command inside the namespace, failing with its stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(
            &CommandRunner::new()
                .in_netns(&self.name)
                .with_timeout(COMMAND_TIMEOUT),
            args,
        )
    }

    /// Runs `sh -c script` inside the namespace (each line a command; stops at the first failure).
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec(&["sh", "-ec", script])
    }

    /// Runs `f` on a new thread that has entered this namespace: every socket it
    /// creates lives here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let handle = self.spawn(f)?;
        match handle.join() {
            Ok(Some(v)) => Ok(v),
            _ => Err(Error::Panicked(self.name.clone())),
        }
    }

    /// Spawns a thread inside this namespace. Its result is `Some` unless entering the
    /// namespace failed, which this function already returns as an error.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Option<T>>> {
        let file =
            File::open(format!("/run/netns/{}", self.name)).map_err(|source| Error::Enter {
                name: self.name.clone(),
                source,
            })?;
        let name = self.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("ns-{}", self.name))
            .spawn(move || {
                if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = tx.send(Err(std::io::Error::from(e)));
                    // The caller gets the error; this thread must not run `f` outside the namespace.
                    return None;
                }
                drop(file);
                let _ = tx.send(Ok(()));
                Some(f())
            })
            .map_err(|source| Error::Enter {
                name: name.clone(),
                source,
            })?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(Error::Enter { name, source }),
            Err(_) => Err(Error::Panicked(name)),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = host(&["ip", "netns", "del", &self.name]);
        }
    }
}

/// Deletes namespaces left by lab runs and tests whose process is gone (killed with
/// SIGKILL, so their guards never ran). Returns how many were removed.
pub fn sweep_stale() -> usize {
    let Ok(list) = host(&["ip", "netns", "list"]) else {
        return 0;
    };
    let mut removed = 0;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && host(&["ip", "netns", "del", name]).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Deletes every lab namespace, of any process (`netward lab --cleanup`).
pub fn remove_all() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(list) = host(&["ip", "netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) && host(&["ip", "netns", "del", name]).is_ok() {
                removed.push(name.to_owned());
            }
        }
    }
    removed
}
