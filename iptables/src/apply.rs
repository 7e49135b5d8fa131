//! Applying, reconciling, listing and removing netward's rules with the real tools.
//!
//! Each tool's change is one atomic transaction: `nft -f -` replaces the whole
//! `inet netward` table, and one `iptables-restore --noflush` per family rewrites
//! only the netward chains and jumps that differ. Routing is listed first and only
//! changed when it differs, so applying the same [`Ruleset`] twice changes nothing.

use std::fmt;
use std::io;

use thiserror::Error;

use crate::Family;
use crate::config::{self, CHAIN_PREFIX, Config, NAME};
use crate::nft::{self, SET_V4, SET_V6};
use crate::routing::{self, RouteEntry, RuleEntry};
use crate::ruleset::Ruleset;
use crate::runner::{Output, Runner};
use crate::xtables;

/// Errors from applying, listing or removing rules; each names the command.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration was refused before anything ran.
    #[error("refusing to install rules: {0}")]
    Config(#[from] config::Error),
    /// The command could not be started or did not finish in time.
    #[error("could not run `{command}`: {source}; check that it is installed and on PATH")]
    Run {
        /// The command line.
        command: String,
        /// Why it could not run.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed; nothing of its transaction was applied.
    #[error("`{command}` failed with exit code {code}: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit code, or `signal`.
        code: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The command's output was not what this version understands.
    #[error(
        "could not parse the output of `{command}`: {reason}; is iproute2 recent enough for `-j`?"
    )]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an [`apply`], [`update_local`] or [`remove`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The nftables table was written or deleted.
    pub nft: bool,
    /// Families whose xtables chains or jumps were rewritten.
    pub xtables: Vec<Family>,
    /// `ip rule`s added plus deleted.
    pub ip_rules: usize,
    /// Route tables flushed plus routes added.
    pub routes: usize,
}

impl Changes {
    /// Whether only the always-rewritten nft table was touched.
    pub fn xtables_and_routing_unchanged(&self) -> bool {
        self.xtables.is_empty() && self.ip_rules == 0 && self.routes == 0
    }
}

/// Which kernel features the rules rely on are available, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// nftables `tproxy` (nft_tproxy): required.
    pub nft_tproxy: bool,
    /// nftables `socket transparent` (nft_socket): required.
    pub nft_socket: bool,
    /// nftables `queue` (nft_queue): not used, reported for diagnosis.
    pub nft_queue: bool,
    /// xtables `NFQUEUE` (xt_NFQUEUE through nft_compat): required for verdicts.
    pub xt_nfqueue: bool,
}

impl Features {
    /// Whether everything netward needs is present.
    pub fn sufficient(&self) -> bool {
        self.nft_tproxy && self.nft_socket && self.xt_nfqueue
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nft_tproxy={} nft_socket={} nft_queue={} xt_nfqueue={}",
            self.nft_tproxy, self.nft_socket, self.nft_queue, self.xt_nfqueue
        )
    }
}

/// Everything netward has installed, as listed by the tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `nft list table inet netward`, when the table exists.
    pub nft: Option<String>,
    /// netward's lines of `iptables-save` (`*table`, `:CHAIN`, `-A ...`).
    pub xtables_v4: Vec<String>,
    /// netward's lines of `ip6tables-save`.
    pub xtables_v6: Vec<String>,
    /// `ip -4 rule`s that look up netward's table.
    pub ip_rules_v4: Vec<String>,
    /// `ip -6 rule`s that look up netward's table.
    pub ip_rules_v6: Vec<String>,
    /// Routes in netward's IPv4 table.
    pub routes_v4: Vec<String>,
    /// Routes in netward's IPv6 table.
    pub routes_v6: Vec<String>,
}

impl State {
    /// Whether nothing of netward is installed.
    pub fn is_empty(&self) -> bool {
        self.nft.is_none()
            && self.xtables_v4.is_empty()
            && self.xtables_v6.is_empty()
            && self.ip_rules_v4.is_empty()
            && self.ip_rules_v6.is_empty()
            && self.routes_v4.is_empty()
            && self.routes_v6.is_empty()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "nothing installed");
        }
        if let Some(t) = &self.nft {
            writeln!(f, "# nft")?;
            f.write_str(t)?;
            if !t.ends_with('\n') {
                writeln!(f)?;
            }
        }
        let sections = [
            ("iptables", &self.xtables_v4),
            ("ip6tables", &self.xtables_v6),
            ("ip -4 rule", &self.ip_rules_v4),
            ("ip -6 rule", &self.ip_rules_v6),
            ("ip -4 route", &self.routes_v4),
            ("ip -6 route", &self.routes_v6),
        ];
        for (title, lines) in sections {
            if !lines.is_empty() {
                writeln!(f, "# {title}")?;
                for l in lines {
                    writeln!(f, "{l}")?;
                }
            }
        }
        Ok(())
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command; only failing to run it at all is an error.
fn run_raw(r: &dyn Runner, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    r.run(program, args, stdin).map_err(|source| Error::Run {
        command: command_line(program, args),
        source,
    })
}

/// Runs a command that must succeed.
fn run(r: &dyn Runner, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let out = run_raw(r, program, args, stdin)?;
    if out.success() {
        return Ok(out);
    }
    if let Some(input) = stdin {
        tracing::debug!(command = %command_line(program, args), input, "failed input");
    }
    Err(failed(program, args, &out))
}

fn failed(program: &str, args: &[&str], out: &Output) -> Error {
    Error::Failed {
        command: command_line(program, args),
        code: out.code.map_or("signal".into(), |c| c.to_string()),
        stderr: out.stderr.trim().to_string(),
    }
}

fn families(c: &Config) -> &'static [Family] {
    if c.ipv6 {
        &Family::ALL
    } else {
        &Family::ALL[..1]
    }
}

/// Installs or reconciles everything `r` describes. Idempotent; touches only netward's objects.
pub fn apply(runner: &dyn Runner, r: &Ruleset) -> Result<Changes> {
    r.config.validate()?;
    let mut changes = Changes::default();
    run(runner, "nft", &["-f", "-"], Some(&nft::render_nft(r)))?;
    changes.nft = true;
    for &fam in families(&r.config) {
        if apply_xtables(runner, Some(r), fam)? {
            changes.xtables.push(fam);
        }
        let (rules, routes) = apply_routing(runner, &r.config, Some(r), fam)?;
        changes.ip_rules += rules;
        changes.routes += routes;
    }
    tracing::debug!(?changes, "netward rules applied");
    Ok(changes)
}

/// Updates only what depends on the local pod addresses: the nft set elements
/// (one transaction) and the per-pod queue chain. Falls back to [`apply`] when
/// the table is missing or incomplete.
pub fn update_local(runner: &dyn Runner, r: &Ruleset) -> Result<Changes> {
    r.config.validate()?;
    let listed = run_raw(runner, "nft", &["list", "table", "inet", NAME], None)?;
    let complete = listed.success()
        && listed.stdout.contains("chain prerouting")
        && listed.stdout.contains(&format!("set {SET_V4}"))
        && (!r.config.ipv6 || listed.stdout.contains(&format!("set {SET_V6}")));
    if !complete {
        return apply(runner, r);
    }
    run(
        runner,
        "nft",
        &["-f", "-"],
        Some(&nft::render_nft_local_update(r)),
    )?;
    let mut changes = Changes {
        nft: true,
        ..Changes::default()
    };
    for &fam in families(&r.config) {
        if apply_xtables(runner, Some(r), fam)? {
            changes.xtables.push(fam);
        }
    }
    Ok(changes)
}

/// Deletes everything netward installed; safe when nothing is. Keeps going after
/// an error so one broken tool does not leave the rest behind, and returns the first.
pub fn remove(runner: &dyn Runner, c: &Config) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut first_err = None;
    let mut keep = |res: Result<()>| {
        if let Err(e) = res {
            tracing::warn!(error = %e, "netward cleanup step failed");
            first_err.get_or_insert(e);
        }
    };
    keep((|| {
        if nft_table_exists(runner)? {
            run(runner, "nft", &["-f", "-"], Some(&nft::render_nft_remove()))?;
            changes.nft = true;
        }
        Ok(())
    })());
    for fam in Family::ALL {
        keep((|| {
            if apply_xtables(runner, None, fam)? {
                changes.xtables.push(fam);
            }
            Ok(())
        })());
        keep((|| {
            let (rules, routes) = apply_routing(runner, c, None, fam)?;
            changes.ip_rules += rules;
            changes.routes += routes;
            Ok(())
        })());
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(changes),
    }
}

/// Lists what netward has installed (for tests and `netward cleanup --dry-run`).
pub fn installed_state(runner: &dyn Runner, c: &Config) -> Result<State> {
    let mut s = State::default();
    if nft_table_exists(runner)? {
        s.nft = Some(run(runner, "nft", &["list", "table", "inet", NAME], None)?.stdout);
    }
    for fam in Family::ALL {
        let save = run(runner, fam.save_cmd(), &[], None)?.stdout;
        let rules: Vec<String> = list_rules(runner, fam)?
            .iter()
            .filter(|e| e.table.as_deref() == Some(&c.route_table.to_string()))
            .map(RuleEntry::describe)
            .collect();
        let routes: Vec<String> = list_routes(runner, fam, c.route_table)?
            .iter()
            .map(RouteEntry::describe)
            .collect();
        let lines = xtables::owned_lines(&save);
        match fam {
            Family::V4 => (s.xtables_v4, s.ip_rules_v4, s.routes_v4) = (lines, rules, routes),
            Family::V6 => (s.xtables_v6, s.ip_rules_v6, s.routes_v6) = (lines, rules, routes),
        }
    }
    Ok(s)
}

/// Checks which kernel features work, with dry-run nft transactions and a
/// throwaway `NETWARD-PROBE` xtables chain that is deleted again. Never fails:
/// a feature that cannot be checked is reported missing.
pub fn probe(runner: &dyn Runner, c: &Config) -> Features {
    let nft_check = |stmt: &str| {
        let script = format!(
            "table inet netward_probe {{\n\tchain p {{\n\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n\t\t{stmt}\n\t}}\n}}\n"
        );
        matches!(runner.run("nft", &["-c", "-f", "-"], Some(&script)), Ok(o) if o.success())
    };
    let probe_chain = format!("{CHAIN_PREFIX}PROBE");
    let create = format!(
        "*mangle\n:{probe_chain} - [0:0]\n-A {probe_chain} -j NFQUEUE --queue-num {}\nCOMMIT\n",
        c.queue_num
    );
    let xt_nfqueue = matches!(
        runner.run("iptables-restore", &["--noflush"], Some(&create)),
        Ok(o) if o.success()
    );
    if xt_nfqueue {
        let delete = format!("*mangle\n-F {probe_chain}\n-X {probe_chain}\nCOMMIT\n");
        if let Err(e) = run(runner, "iptables-restore", &["--noflush"], Some(&delete)) {
            tracing::warn!(error = %e, "could not delete the NFQUEUE probe chain; `netward cleanup` removes it");
        }
    }
    let f = Features {
        nft_tproxy: nft_check(&format!(
            "meta l4proto tcp tproxy ip to :{} accept",
            c.tcp_port
        )),
        nft_socket: nft_check("meta l4proto tcp socket transparent 1 accept"),
        nft_queue: nft_check(&format!("meta l4proto udp queue num {}", c.queue_num)),
        xt_nfqueue,
    };
    tracing::info!(features = %f, "kernel features probed");
    f
}

fn nft_table_exists(runner: &dyn Runner) -> Result<bool> {
    let out = run(runner, "nft", &["list", "tables"], None)?;
    let want = format!("table inet {NAME}");
    Ok(out.stdout.lines().any(|l| l.trim() == want))
}

/// Moves one family's xtables state to `want` (`None`: remove). Returns whether it ran a restore.
fn apply_xtables(runner: &dyn Runner, want: Option<&Ruleset>, fam: Family) -> Result<bool> {
    let current = run(runner, fam.save_cmd(), &[], None)?.stdout;
    let script = match want {
        Some(r) => xtables::render_iptables_update(r, fam, &current),
        None => xtables::render_iptables_remove(&current),
    };
    if script.is_empty() {
        return Ok(false);
    }
    run(runner, fam.restore_cmd(), &["--noflush"], Some(&script))?;
    Ok(true)
}

fn list_rules(runner: &dyn Runner, fam: Family) -> Result<Vec<RuleEntry>> {
    let args = ["-j", fam.ip_flag(), "rule", "show"];
    let out = run(runner, "ip", &args, None)?;
    parse_json(&out.stdout, &args)
}

fn list_routes(runner: &dyn Runner, fam: Family, table: u32) -> Result<Vec<RouteEntry>> {
    let table = table.to_string();
    let args = ["-j", fam.ip_flag(), "route", "show", "table", &table];
    let out = run_raw(runner, "ip", &args, None)?;
    if !out.success() {
        // The kernel has no empty tables: a missing table is an empty one.
        if out.stderr.contains("does not exist") {
            return Ok(Vec::new());
        }
        return Err(failed("ip", &args, &out));
    }
    parse_json(&out.stdout, &args)
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, args: &[&str]) -> Result<Vec<T>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| Error::Parse {
        command: command_line("ip", args),
        reason: e.to_string(),
    })
}

/// Moves one family's rules and routes to `want` (`None`: remove).
/// Returns (ip rules changed, routes changed).
fn apply_routing(
    runner: &dyn Runner,
    c: &Config,
    want: Option<&Ruleset>,
    fam: Family,
) -> Result<(usize, usize)> {
    let desired = want.map(|r| routing::routing(r, fam));
    let table = c.route_table.to_string();
    let (mut n_rules, mut n_routes) = (0, 0);

    // Every rule that looks up netward's table is netward's.
    let ours: Vec<RuleEntry> = list_rules(runner, fam)?
        .into_iter()
        .filter(|e| e.table.as_deref() == Some(table.as_str()))
        .collect();
    let want_rules = desired.as_ref().map_or(&[][..], |d| &d.rules[..]);
    let matches = ours.len() == want_rules.len()
        && ours
            .iter()
            .zip(want_rules)
            .all(|(have, want)| have.as_ip_rule(fam).as_ref() == Some(want));
    if !matches {
        for e in &ours {
            let prio = e.priority.to_string();
            run(
                runner,
                "ip",
                &[
                    fam.ip_flag(),
                    "rule",
                    "del",
                    "priority",
                    &prio,
                    "table",
                    &table,
                ],
                None,
            )?;
            n_rules += 1;
        }
        for rule in want_rules {
            let args = rule.args();
            let mut argv = vec![fam.ip_flag(), "rule", "add"];
            argv.extend(args.iter().map(String::as_str));
            run(runner, "ip", &argv, None)?;
            n_rules += 1;
        }
    }

    let routes = list_routes(runner, fam, c.route_table)?;
    let want_routes = desired.as_ref().map_or(&[][..], |d| &d.routes[..]);
    let matches = routes.len() == want_routes.len() && routes.iter().all(|r| r.is_local_default());
    if !matches {
        if !routes.is_empty() {
            run(
                runner,
                "ip",
                &[fam.ip_flag(), "route", "flush", "table", &table],
                None,
            )?;
            n_routes += 1;
        }
        for route in want_routes {
            let args = route.args();
            let mut argv = vec![fam.ip_flag(), "route", "add"];
            argv.extend(args.iter().map(String::as_str));
            run(runner, "ip", &argv, None)?;
            n_routes += 1;
        }
    }
    Ok((n_rules, n_routes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Answers from a table keyed by command line (default: success, no output) and records calls.
    #[derive(Default)]
    struct Fake {
        answers: HashMap<String, Output>,
        calls: RefCell<Vec<(String, Option<String>)>>,
    }

    impl Fake {
        fn answer(mut self, cmd: &str, out: Output) -> Self {
            self.answers.insert(cmd.to_string(), out);
            self
        }
        fn ran(&self, cmd: &str) -> Vec<Option<String>> {
            self.calls
                .borrow()
                .iter()
                .filter(|(c, _)| c == cmd)
                .map(|(_, i)| i.clone())
                .collect()
        }
        fn changing(&self) -> Vec<String> {
            self.calls
                .borrow()
                .iter()
                .map(|(c, _)| c.clone())
                .filter(|c| {
                    c.contains("restore")
                        || c.contains(" add")
                        || c.contains(" del")
                        || c.contains("flush")
                        || c == "nft -f -"
                })
                .collect()
        }
    }

    impl Runner for Fake {
        fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
            let line = command_line(program, args);
            self.calls
                .borrow_mut()
                .push((line.clone(), stdin.map(String::from)));
            Ok(self
                .answers
                .get(&line)
                .cloned()
                .unwrap_or_else(|| Output::ok("")))
        }
    }

    fn no_table(fam: &str) -> Output {
        Output {
            code: Some(2),
            stdout: "[".into(),
            stderr: format!("Error: {fam}: FIB table does not exist.\nDump terminated\n"),
        }
    }

    fn v4_only() -> Ruleset {
        let c = Config {
            ipv6: false,
            ..Config::default()
        };
        Ruleset::new(c).with_local(["198.18.1.2/32".parse::<ipnet::IpNet>().expect("net")])
    }

    const RULES: &str = r#"[{"priority":0,"src":"all","table":"local"},{"priority":4242,"src":"all","fwmark":"0x100000","fwmask":"0xf00000","table":"4242"},{"priority":32766,"src":"all","table":"main"}]"#;
    const ROUTES: &str =
        r#"[{"type":"local","dst":"default","dev":"lo","scope":"host","flags":[]}]"#;

    #[test]
    fn fresh_apply_installs_everything() {
        let r = v4_only();
        let fake = Fake::default().answer("ip -j -4 route show table 4242", no_table("ipv4"));
        let changes = apply(&fake, &r).expect("apply");
        assert_eq!(fake.ran("nft -f -"), [Some(nft::render_nft(&r))]);
        assert_eq!(
            fake.ran("iptables-restore --noflush"),
            [Some(xtables::render_iptables_restore(&r, Family::V4))]
        );
        assert_eq!(
            fake.ran("ip -4 rule add priority 4242 fwmark 0x100000/0xf00000 lookup 4242")
                .len(),
            1
        );
        assert_eq!(
            fake.ran("ip -4 route add local 0.0.0.0/0 dev lo table 4242")
                .len(),
            1
        );
        assert!(fake.ran("ip6tables-save").is_empty(), "ipv6 disabled");
        assert_eq!(changes.xtables, [Family::V4]);
        assert_eq!((changes.ip_rules, changes.routes), (1, 1));
    }

    #[test]
    fn apply_over_matching_state_only_rewrites_the_nft_table() {
        let r = v4_only();
        // What iptables-save prints after the fresh script ran.
        let save = "*mangle\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:NETWARD-INPUT - [0:0]\n:NETWARD-FORWARD - [0:0]\n:NETWARD-NEW - [0:0]\n:NETWARD-QUEUE - [0:0]\n\
            -A INPUT -m comment --comment netward -j NETWARD-INPUT\n\
            -A FORWARD -m comment --comment netward -j NETWARD-FORWARD\n\
            -A NETWARD-INPUT -m mark --mark 0x200000/0xf00000 -j RETURN\n\
            -A NETWARD-INPUT -p tcp -m mark --mark 0x100000/0xf00000 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4242\n\
            -A NETWARD-FORWARD -m mark --mark 0x200000/0xf00000 -j RETURN\n\
            -A NETWARD-INPUT -m conntrack --ctstate NEW -j NETWARD-NEW\n\
            -A NETWARD-FORWARD -m conntrack --ctstate NEW -j NETWARD-NEW\n\
            -A NETWARD-NEW -p tcp -j RETURN\n\
            -A NETWARD-NEW -p icmp -m icmp ! --icmp-type 8 -j RETURN\n\
            -A NETWARD-NEW -j NETWARD-QUEUE\n\
            -A NETWARD-QUEUE -s 198.18.1.2/32 -j NFQUEUE --queue-num 4242\n\
            -A NETWARD-QUEUE -d 198.18.1.2/32 -j NFQUEUE --queue-num 4242\n\
            COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:NETWARD-REJECT - [0:0]\n\
            -A INPUT -m comment --comment netward -j NETWARD-REJECT\n\
            -A FORWARD -m comment --comment netward -j NETWARD-REJECT\n\
            -A NETWARD-REJECT -p tcp -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with tcp-reset\n\
            -A NETWARD-REJECT -p udp -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with icmp-port-unreachable\n\
            -A NETWARD-REJECT -m mark --mark 0x300000/0xf00000 -j REJECT --reject-with icmp-admin-prohibited\n\
            COMMIT\n";
        let fake = Fake::default()
            .answer("iptables-save", Output::ok(save))
            .answer("ip -j -4 rule show", Output::ok(RULES))
            .answer("ip -j -4 route show table 4242", Output::ok(ROUTES));
        let changes = apply(&fake, &r).expect("apply");
        assert!(changes.xtables_and_routing_unchanged(), "{changes:?}");
        assert_eq!(fake.changing(), ["nft -f -"]);
    }

    #[test]
    fn stale_rules_are_replaced_and_foreign_ones_kept() {
        let r = v4_only();
        let rules = r#"[{"priority":100,"src":"198.18.0.0/24","table":"100"},{"priority":4242,"src":"all","fwmark":"0x100000","fwmask":"0xf00000","table":"4242"},{"priority":4242,"src":"all","fwmark":"0x100000","fwmask":"0xf00000","table":"4242"},{"priority":4000,"src":"all","fwmark":"0x1","table":"4242"}]"#;
        let routes =
            r#"[{"type":"local","dst":"default","dev":"lo"},{"dst":"198.18.0.0/24","dev":"eth0"}]"#;
        let fake = Fake::default()
            .answer("ip -j -4 rule show", Output::ok(rules))
            .answer("ip -j -4 route show table 4242", Output::ok(routes));
        apply(&fake, &r).expect("apply");
        let ip: Vec<String> = fake
            .changing()
            .into_iter()
            .filter(|c| c.starts_with("ip "))
            .collect();
        assert_eq!(
            ip,
            [
                "ip -4 rule del priority 4242 table 4242",
                "ip -4 rule del priority 4242 table 4242",
                "ip -4 rule del priority 4000 table 4242",
                "ip -4 rule add priority 4242 fwmark 0x100000/0xf00000 lookup 4242",
                "ip -4 route flush table 4242",
                "ip -4 route add local 0.0.0.0/0 dev lo table 4242",
            ]
        );
    }

    #[test]
    fn remove_with_nothing_installed_changes_nothing() {
        let fake = Fake::default()
            .answer("ip -j -4 route show table 4242", no_table("ipv4"))
            .answer("ip -j -6 route show table 4242", no_table("ipv6"));
        let changes = remove(&fake, &Config::default()).expect("remove");
        assert_eq!(changes, Changes::default());
        assert!(fake.changing().is_empty(), "{:?}", fake.changing());
        let state = installed_state(&fake, &Config::default()).expect("state");
        assert!(state.is_empty());
        assert_eq!(state.to_string(), "nothing installed\n");
    }

    #[test]
    fn remove_keeps_going_and_reports_the_first_failure() {
        let fake = Fake::default()
            .answer("nft list tables", Output::ok("table inet netward\n"))
            .answer(
                "nft -f -",
                Output {
                    code: Some(1),
                    stdout: String::new(),
                    stderr: "Error: boom\n".into(),
                },
            )
            .answer("ip -j -6 rule show", Output::ok(RULES))
            .answer("ip -j -4 route show table 4242", no_table("ipv4"))
            .answer("ip -j -6 route show table 4242", Output::ok(ROUTES));
        let err = remove(&fake, &Config::default()).expect_err("nft fails");
        assert_eq!(
            err.to_string(),
            "`nft -f -` failed with exit code 1: Error: boom"
        );
        assert_eq!(fake.ran("ip -6 rule del priority 4242 table 4242").len(), 1);
        assert_eq!(fake.ran("ip -6 route flush table 4242").len(), 1);
    }

    #[test]
    fn update_local_falls_back_to_apply_without_a_table() {
        let r = v4_only();
        let fake = Fake::default().answer(
            "nft list table inet netward",
            Output {
                code: Some(1),
                ..Output::default()
            },
        );
        update_local(&fake, &r).expect("update");
        assert_eq!(fake.ran("nft -f -"), [Some(nft::render_nft(&r))]);

        let fake = Fake::default().answer(
            "nft list table inet netward",
            Output::ok("table inet netward {\n\tset local4 {\n\t}\n\tchain prerouting {\n\t}\n}\n"),
        );
        update_local(&fake, &r).expect("update");
        assert_eq!(
            fake.ran("nft -f -"),
            [Some(
                "flush set inet netward local4\nadd element inet netward local4 { 198.18.1.2 }\n"
                    .into()
            )]
        );
        assert!(
            fake.ran("ip -j -4 rule show").is_empty(),
            "routing is not touched"
        );
    }

    #[test]
    fn bad_config_runs_nothing() {
        let mut r = v4_only();
        r.config.marks.divert = 0;
        let fake = Fake::default();
        assert!(matches!(apply(&fake, &r), Err(Error::Config(_))));
        assert!(fake.calls.borrow().is_empty());
    }

    #[test]
    fn probe_reports_each_feature() {
        let fake = Fake::default();
        assert!(probe(&fake, &Config::default()).sufficient());
        let fail = Output {
            code: Some(1),
            ..Output::default()
        };
        let fake = Fake::default().answer("iptables-restore --noflush", fail);
        let f = probe(&fake, &Config::default());
        assert!(!f.xt_nfqueue && f.nft_tproxy);
        assert_eq!(
            f.to_string(),
            "nft_tproxy=true nft_socket=true nft_queue=true xt_nfqueue=false"
        );
    }
}
