//! The xtables half, rendered as `iptables-restore --noflush` input: the NFQUEUE
//! verdict rules and the REJECT rules.
//!
//! The queue lives here because kernels without `CONFIG_NFT_QUEUE` still have
//! `xt_NFQUEUE`, which iptables-nft reaches through `nft_compat`.
//!
//! netward owns every chain named `NETWARD-*` and every rule in another chain that
//! jumps to one or carries the comment `netward`. Nothing else is touched: builtin
//! chains are never flushed, only netward's jump rules are inserted or deleted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Family;
use crate::config::{CHAIN_PREFIX, NAME};
use crate::ruleset::Ruleset;

/// mangle chain jumped to from INPUT: queues new TCP connections diverted to the proxy.
pub const CHAIN_INPUT: &str = "NETWARD-INPUT";
/// mangle chain jumped to from FORWARD: sends new UDP and SCTP flows of local pods to the queue.
pub const CHAIN_FORWARD: &str = "NETWARD-FORWARD";
/// mangle chain jumped to from NETWARD-INPUT and NETWARD-FORWARD for new flows that are not
/// TCP: UDP, SCTP, ICMP echo and other IP protocols go on to NETWARD-QUEUE.
pub const CHAIN_NEW: &str = "NETWARD-NEW";
/// mangle chain with one rule per local pod prefix and direction, called from NETWARD-NEW.
pub const CHAIN_QUEUE: &str = "NETWARD-QUEUE";
/// filter chain jumped to from INPUT and FORWARD: rejects packets the proxy marked REJECT.
pub const CHAIN_REJECT: &str = "NETWARD-REJECT";

/// Tables netward uses, in the order they are rendered.
const TABLES: [&str; 2] = ["mangle", "filter"];

/// One table's worth of desired state: chains with their rules, and the jumps into them.
#[derive(Debug, Default)]
struct TableSpec {
    /// (chain, rule specs after `-A CHAIN `), in render order.
    chains: Vec<(String, Vec<String>)>,
    /// builtin chain -> jump rule specs, in order; they must be its first rules.
    jumps: BTreeMap<String, Vec<String>>,
}

fn jump(target: &str) -> String {
    format!("-m comment --comment {NAME} -j {target}")
}

/// The desired xtables state per table, written the way `iptables-save` prints it back,
/// so an unchanged chain can be recognised and left alone.
fn desired(r: &Ruleset, family: Family) -> BTreeMap<&'static str, TableSpec> {
    let c = &r.config;
    let m = &c.marks;
    let queue = format!("-j NFQUEUE --queue-num {}", c.queue_num);
    let bypass = format!("-m mark --mark {} -j RETURN", m.masked(m.bypass));
    let mut out = BTreeMap::new();

    let mut mangle = TableSpec::default();
    if c.verdict_queue {
        let icmp = match family {
            Family::V4 => "-p icmp -m icmp ! --icmp-type 8",
            Family::V6 => "-p ipv6-icmp -m icmp6 ! --icmpv6-type 128",
        };
        mangle.chains.push((
            CHAIN_INPUT.into(),
            vec![
                bypass.clone(),
                format!(
                    "-p tcp -m mark --mark {} -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW {queue}",
                    m.masked(m.divert)
                ),
                format!("-m conntrack --ctstate NEW -j {CHAIN_NEW}"),
            ],
        ));
        mangle.chains.push((
            CHAIN_FORWARD.into(),
            vec![bypass, format!("-m conntrack --ctstate NEW -j {CHAIN_NEW}")],
        ));
        // Every new flow that is not TCP (diverted to the proxy and queued above): UDP,
        // SCTP, ICMP echo requests and any other IP protocol, but not ICMP errors and
        // neighbour discovery, which are not flows.
        mangle.chains.push((
            CHAIN_NEW.into(),
            vec![
                "-p tcp -j RETURN".to_owned(),
                format!("{icmp} -j RETURN"),
                format!("-j {CHAIN_QUEUE}"),
            ],
        ));
        let mut per_pod = Vec::new();
        for net in r.local(family) {
            per_pod.push(format!("-s {net} {queue}"));
            per_pod.push(format!("-d {net} {queue}"));
        }
        mangle.chains.push((CHAIN_QUEUE.into(), per_pod));
        mangle.jumps.insert("INPUT".into(), vec![jump(CHAIN_INPUT)]);
        mangle
            .jumps
            .insert("FORWARD".into(), vec![jump(CHAIN_FORWARD)]);
    }
    out.insert("mangle", mangle);

    let (unreach, prohibited) = match family {
        Family::V4 => ("icmp-port-unreachable", "icmp-admin-prohibited"),
        Family::V6 => ("icmp6-port-unreachable", "icmp6-adm-prohibited"),
    };
    let reject = m.masked(m.reject);
    let mut filter = TableSpec::default();
    filter.chains.push((
        CHAIN_REJECT.into(),
        vec![
            format!("-p tcp -m mark --mark {reject} -j REJECT --reject-with tcp-reset"),
            format!("-p udp -m mark --mark {reject} -j REJECT --reject-with {unreach}"),
            format!("-m mark --mark {reject} -j REJECT --reject-with {prohibited}"),
        ],
    ));
    filter
        .jumps
        .insert("INPUT".into(), vec![jump(CHAIN_REJECT)]);
    filter
        .jumps
        .insert("FORWARD".into(), vec![jump(CHAIN_REJECT)]);
    out.insert("filter", filter);
    out
}

/// One table of an `iptables-save` listing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// Table name (`mangle`).
    pub name: String,
    /// Chain names, builtin and user, in listing order.
    pub chains: Vec<String>,
    /// `(chain, spec)` for every `-A chain spec` line, in listing order.
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _)| c == chain)
            .map(|(_, s)| s.as_str())
    }
}

/// Parses `iptables-save` output into tables; comments and counters are ignored.
pub fn parse_save(text: &str) -> Vec<SavedTable> {
    let mut tables = Vec::new();
    let mut cur: Option<SavedTable> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            cur = Some(SavedTable {
                name: name.to_string(),
                ..SavedTable::default()
            });
        } else if line == "COMMIT" {
            if let Some(t) = cur.take() {
                tables.push(t);
            }
        } else if let (Some(t), Some(decl)) = (cur.as_mut(), line.strip_prefix(':')) {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.push(name.to_string());
            }
        } else if let (Some(t), Some(rest)) = (cur.as_mut(), line.strip_prefix("-A ")) {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            t.rules.push((chain.to_string(), spec.to_string()));
        }
    }
    tables
}

fn is_ours_chain(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

/// Whether a rule in a chain netward does not own is still netward's: it carries
/// netward's comment or jumps into a netward chain.
fn is_ours_rule(spec: &str) -> bool {
    let toks: Vec<&str> = spec.split_whitespace().collect();
    toks.windows(2).any(|w| {
        (w[0] == "--comment" && w[1].trim_matches('"') == NAME)
            || ((w[0] == "-j" || w[0] == "-g") && is_ours_chain(w[1]))
    })
}

/// The netward-owned parts of a listing, one line each (`*table`, `:CHAIN`, `-A ...`);
/// empty when nothing is installed.
pub fn owned_lines(save: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in parse_save(save) {
        let mut lines = Vec::new();
        for c in t.chains.iter().filter(|c| is_ours_chain(c)) {
            lines.push(format!(":{c}"));
        }
        for (c, s) in &t.rules {
            if is_ours_chain(c) || is_ours_rule(s) {
                lines.push(format!("-A {c} {s}"));
            }
        }
        if !lines.is_empty() {
            out.push(format!("*{}", t.name));
            out.extend(lines);
        }
    }
    out
}

/// The `--noflush` restore script that turns `current` (an `iptables-save` listing)
/// into `want`; `None` removes everything netward owns. Empty when nothing changes.
fn plan(want: Option<&Ruleset>, family: Family, current: &str) -> String {
    let desired = want.map(|r| desired(r, family)).unwrap_or_default();
    let current = parse_save(current);
    let mut names: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    for t in &current {
        if !names.contains(&t.name) {
            names.push(t.name.clone());
        }
    }
    let empty_spec = TableSpec::default();
    let mut out = String::new();
    for name in names {
        let spec = desired.get(name.as_str()).unwrap_or(&empty_spec);
        let cur = current
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .unwrap_or_default();
        let body = plan_table(spec, &cur);
        if !body.is_empty() {
            let _ = write!(out, "*{name}\n{body}COMMIT\n");
        }
    }
    out
}

fn plan_table(spec: &TableSpec, cur: &SavedTable) -> String {
    let mut decls = String::new();
    let mut deletes = String::new();
    let mut drops = String::new();
    let mut appends = String::new();
    let mut inserts = String::new();

    // netward chains: rewrite the ones whose rules differ, drop the ones no longer wanted.
    for (chain, rules) in &spec.chains {
        let exists = cur.chains.iter().any(|c| c == chain);
        let same = exists && cur.rules_of(chain).eq(rules.iter().map(String::as_str));
        if !same {
            // In --noflush mode a declaration creates the chain or flushes just it.
            let _ = writeln!(decls, ":{chain} - [0:0]");
            for r in rules {
                let _ = writeln!(appends, "-A {chain} {r}");
            }
        }
    }
    for chain in cur.chains.iter().filter(|c| is_ours_chain(c)) {
        if !spec.chains.iter().any(|(c, _)| c == chain) {
            let _ = writeln!(drops, "-F {chain}");
            let _ = writeln!(drops, "-X {chain}");
        }
    }

    // netward rules in chains netward does not own: the wanted jumps must be exactly
    // the first rules of their builtin chain; anything else of ours is stale.
    let mut others: Vec<&String> = cur.chains.iter().filter(|c| !is_ours_chain(c)).collect();
    for b in spec.jumps.keys() {
        if !others.contains(&b) {
            others.push(b);
        }
    }
    for chain in others {
        let all: Vec<&str> = cur.rules_of(chain).collect();
        let ours: Vec<&str> = all.iter().copied().filter(|s| is_ours_rule(s)).collect();
        let want: &[String] = spec.jumps.get(chain).map(Vec::as_slice).unwrap_or(&[]);
        let in_place = all.len() >= want.len()
            && ours.len() == want.len()
            && all.iter().zip(want).all(|(a, w)| a == w);
        if in_place {
            continue;
        }
        for s in ours {
            let _ = writeln!(deletes, "-D {chain} {s}");
        }
        for w in want.iter().rev() {
            let _ = writeln!(inserts, "-I {chain} 1 {w}");
        }
    }
    format!("{decls}{deletes}{drops}{appends}{inserts}")
}

/// The `iptables-restore --noflush` (or `ip6tables-restore`) script that installs
/// netward's chains and jumps on a host where none are present.
pub fn render_iptables_restore(r: &Ruleset, family: Family) -> String {
    plan(Some(r), family, "")
}

/// The script that moves the `current` listing to `r`, touching only netward's
/// chains and jumps; empty when the listing already matches.
pub fn render_iptables_update(r: &Ruleset, family: Family, current: &str) -> String {
    plan(Some(r), family, current)
}

/// The script that deletes every netward chain and rule in the `current` listing;
/// empty when there is none.
pub fn render_iptables_remove(current: &str) -> String {
    plan(None, Family::V4, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn save_of(script: &str) -> String {
        // Simulate the listing a fresh host shows after applying `script`.
        let mut tables: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let mut cur = String::new();
        for l in script.lines() {
            if let Some(t) = l.strip_prefix('*') {
                cur = t.to_string();
                let e = tables.entry(cur.clone()).or_default();
                if e.0.is_empty() {
                    e.0 = ["INPUT", "FORWARD"].map(String::from).to_vec();
                }
            } else if let Some(d) = l.strip_prefix(':') {
                let name = d.split_whitespace().next().unwrap_or_default().to_string();
                tables.entry(cur.clone()).or_default().0.push(name);
            } else if let Some(rest) = l.strip_prefix("-I ") {
                let (chain, spec) = rest.split_once(" 1 ").unwrap_or_default();
                tables
                    .entry(cur.clone())
                    .or_default()
                    .1
                    .insert(0, format!("-A {chain} {spec}"));
            } else if l.starts_with("-A ") {
                tables.entry(cur.clone()).or_default().1.push(l.to_string());
            }
        }
        let mut s = String::new();
        for (t, (chains, rules)) in tables {
            let _ = writeln!(s, "*{t}");
            for c in chains {
                let _ = writeln!(s, ":{c} - [0:0]");
            }
            for r in rules {
                let _ = writeln!(s, "{r}");
            }
            s.push_str("COMMIT\n");
        }
        s
    }

    fn ruleset() -> Ruleset {
        Ruleset::new(Config::default()).with_local([
            "198.18.1.2/32".parse::<ipnet::IpNet>().expect("net"),
            "198.18.2.2/32".parse().expect("net"),
        ])
    }

    #[test]
    fn update_of_matching_listing_is_empty() {
        let r = ruleset();
        let fresh = render_iptables_restore(&r, Family::V4);
        assert!(fresh.contains("-I INPUT 1 -m comment --comment netward -j NETWARD-INPUT"));
        let listing = save_of(&fresh);
        assert_eq!(render_iptables_update(&r, Family::V4, &listing), "");
        assert!(!render_iptables_remove(&listing).is_empty());
    }

    #[test]
    fn changed_pods_rewrite_only_the_queue_chain() {
        let listing = save_of(&render_iptables_restore(&ruleset(), Family::V4));
        let mut r = ruleset();
        r.insert_local("198.18.3.2/32".parse::<ipnet::IpNet>().expect("net"));
        let plan = render_iptables_update(&r, Family::V4, &listing);
        assert_eq!(
            plan,
            "*mangle\n:NETWARD-QUEUE - [0:0]\n\
             -A NETWARD-QUEUE -s 198.18.1.2/32 -j NFQUEUE --queue-num 4242\n\
             -A NETWARD-QUEUE -d 198.18.1.2/32 -j NFQUEUE --queue-num 4242\n\
             -A NETWARD-QUEUE -s 198.18.2.2/32 -j NFQUEUE --queue-num 4242\n\
             -A NETWARD-QUEUE -d 198.18.2.2/32 -j NFQUEUE --queue-num 4242\n\
             -A NETWARD-QUEUE -s 198.18.3.2/32 -j NFQUEUE --queue-num 4242\n\
             -A NETWARD-QUEUE -d 198.18.3.2/32 -j NFQUEUE --queue-num 4242\n\
             COMMIT\n"
        );
    }

    #[test]
    fn stale_and_misplaced_jumps_are_replaced() {
        let listing = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KUBE-FW - [0:0]\n:NETWARD-REJECT - [0:0]\n:NETWARD-OLD - [0:0]\n\
            -A INPUT -j KUBE-FW\n\
            -A INPUT -m comment --comment netward -j NETWARD-REJECT\n\
            -A INPUT -m comment --comment netward -j NETWARD-REJECT\n\
            -A KUBE-FW -j NETWARD-OLD\n\
            -A NETWARD-OLD -j ACCEPT\n\
            COMMIT\n";
        let plan = render_iptables_update(&ruleset(), Family::V4, listing);
        let filter = plan.split("*filter\n").nth(1).expect("filter section");
        assert_eq!(
            filter,
            ":NETWARD-REJECT - [0:0]\n\
             -D INPUT -m comment --comment netward -j NETWARD-REJECT\n\
             -D INPUT -m comment --comment netward -j NETWARD-REJECT\n\
             -D KUBE-FW -j NETWARD-OLD\n\
             -F NETWARD-OLD\n-X NETWARD-OLD\n\
             -A NETWARD-REJECT -p tcp -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with tcp-reset\n\
             -A NETWARD-REJECT -p udp -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with icmp-port-unreachable\n\
             -A NETWARD-REJECT -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with icmp-admin-prohibited\n\
             -I INPUT 1 -m comment --comment netward -j NETWARD-REJECT\n\
             -I FORWARD 1 -m comment --comment netward -j NETWARD-REJECT\n\
             COMMIT\n"
        );
        // Foreign chain KUBE-FW and its foreign rules are never mentioned.
        assert!(!plan.contains("KUBE-FW -j KUBE") && !plan.contains("-X KUBE-FW"));
    }

    #[test]
    fn remove_of_nothing_is_empty() {
        assert_eq!(render_iptables_remove(""), "");
        assert_eq!(
            render_iptables_remove("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"),
            ""
        );
    }

    #[test]
    fn owned_lines_ignore_foreign_rules() {
        let listing = save_of(&render_iptables_restore(&ruleset(), Family::V6));
        let foreign = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment \"not netward\" -j ACCEPT\nCOMMIT\n";
        let lines = owned_lines(&format!("{listing}{foreign}"));
        assert!(lines.iter().all(|l| !l.contains("not netward")));
        assert!(lines.contains(&"-A INPUT -m comment --comment netward -j NETWARD-REJECT".into()));
        assert!(owned_lines(foreign).is_empty());
    }
}
