//! Which nodes terminate the tunnel, and where: each node advertises its listener only
//! once it is up with a valid certificate, and withdraws it when it drains.
//!
//! Without a cluster (`netward run`, `netward lab`) the advertisements are files in a
//! directory every node can read: `<dir>/<node>.tunnel` holding `ip:port`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// The advertised tunnel listeners, by node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    by_node: HashMap<String, SocketAddr>,
}

impl Peers {
    /// The tunnel listener a node advertises.
    pub fn get(&self, node: &str) -> Option<SocketAddr> {
        self.by_node.get(node).copied()
    }

    /// How many nodes advertise.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether no node advertises.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Peers from explicit entries (tests).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, SocketAddr)>) -> Peers {
        Peers {
            by_node: entries.into_iter().collect(),
        }
    }
}

const SUFFIX: &str = ".tunnel";

fn file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}{SUFFIX}"))
}

/// Advertises this node's listener (written atomically).
pub fn advertise(dir: &Path, node: &str, addr: SocketAddr) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = file(dir, node);
    let tmp = dir.join(format!(".{node}{SUFFIX}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// Withdraws this node's advertisement (missing is fine).
pub fn withdraw(dir: &Path, node: &str) -> io::Result<()> {
    match std::fs::remove_file(file(dir, node)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads every advertisement in `dir`; unreadable entries are skipped with a warning.
pub fn read_dir(dir: &Path) -> Peers {
    let mut by_node = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Peers::default();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(node) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if node.starts_with('.') {
            continue;
        }
        match std::fs::read_to_string(entry.path()) {
            Ok(text) => match text.trim().parse::<SocketAddr>() {
                Ok(addr) => {
                    by_node.insert(node.to_owned(), addr);
                }
                Err(e) => warn!(
                    path = %entry.path().display(),
                    value = text.trim(),
                    error = %e,
                    "ignoring a tunnel advertisement: expected ip:port"
                ),
            },
            Err(e) => {
                warn!(path = %entry.path().display(), error = %e, "cannot read a tunnel advertisement")
            }
        }
    }
    Peers { by_node }
}

/// Follows `dir`, re-reading it every `every`; the receiver sees each change.
pub fn watch_dir(dir: PathBuf, every: Duration) -> watch::Receiver<Arc<Peers>> {
    let first = read_dir(&dir);
    info!(nodes = first.len(), "tunnel advertisements");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let next = read_dir(&dir);
            if **tx.borrow() != next {
                info!(nodes = next.len(), "tunnel advertisements");
                if tx.send(Arc::new(next)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn advertise_read_withdraw() {
        let dir = tempfile::tempdir().unwrap();
        let a: SocketAddr = "198.18.0.1:15008".parse().unwrap();
        advertise(dir.path(), "node-a", a).unwrap();
        std::fs::write(dir.path().join("junk.tunnel"), "not an address").unwrap();
        std::fs::write(dir.path().join("other.txt"), "198.18.0.9:1").unwrap();
        let p = read_dir(dir.path());
        assert_eq!(p.get("node-a"), Some(a));
        assert_eq!(p.len(), 1);
        withdraw(dir.path(), "node-a").unwrap();
        withdraw(dir.path(), "node-a").unwrap();
        assert!(read_dir(dir.path()).is_empty());
    }
}
