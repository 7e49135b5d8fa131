//! What /proc and `ss -m` say about a process and the kernel's memory.

use netward_proxy::lab::netns::Netns;

/// USER_HZ: the unit of /proc/<pid>/stat times, fixed at 100 by the Linux ABI.
const USER_HZ: f64 = 100.0;

/// utime + stime of a whole process (all threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), starting at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A field of /proc/<pid>/status in bytes (`VmRSS`, `RssAnon`, ...).
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, field)
}

/// A field of /proc/meminfo in bytes (`Slab`, ...).
pub(crate) fn meminfo_bytes(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = v.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// Open descriptors of a process: `(sockets, pipes, total)`.
pub(crate) fn fd_counts(pid: u32) -> Option<(u64, u64, u64)> {
    let mut counts = (0, 0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        counts.2 += 1;
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if t.starts_with("socket:") {
                counts.0 += 1;
            } else if t.starts_with("pipe:") {
                counts.1 += 1;
            }
        }
    }
    Some(counts)
}

/// TCP sockets in a namespace and the memory `ss -m` charges them (receive and send
/// queues, forward allocation, queued writes, options, backlog): `(sockets, bytes)`.
pub(crate) fn socket_memory(ns: &Netns) -> (u64, u64) {
    let Ok(text) = ns.exec(&["ss", "-Htnm", "state", "established"]) else {
        return (0, 0);
    };
    let (mut sockets, mut bytes) = (0u64, 0u64);
    for line in text.lines() {
        let Some(start) = line.find("skmem:(") else {
            continue;
        };
        sockets += 1;
        let inner = &line[start + 7..];
        let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
        for item in inner.split(',') {
            let digits = item.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let key = &item[..item.len() - digits.len()];
            // rb and tb are limits, not memory in use.
            if matches!(key, "r" | "t" | "f" | "w" | "o" | "bl" | "d")
                && let Ok(v) = digits.parse::<u64>()
            {
                bytes += v;
            }
        }
    }
    (sockets, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kib_fields() {
        let text = "Name:\tnetward\nVmRSS:\t   12345 kB\nRssAnon:\t  100 kB\n";
        assert_eq!(kib_field(text, "VmRSS"), Some(12345 * 1024));
        assert_eq!(kib_field(text, "RssAnon"), Some(100 * 1024));
        assert_eq!(kib_field(text, "Rss"), None);
    }
}
