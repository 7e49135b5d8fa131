//! Golden files for every rendering. Run with `UPDATE_GOLDEN=1` to rewrite them,
//! then review the diff like any other change.
#![allow(missing_docs, reason = "test crate")]

use std::fmt::Write as _;
use std::path::PathBuf;

use netward_iptables::{
    Config, Family, Ruleset, render_iptables_remove, render_iptables_restore, render_nft,
    render_nft_local_update, render_nft_remove, routing,
};

fn ruleset() -> Ruleset {
    let nets = [
        "198.18.1.2/32",
        "198.18.2.2/32",
        "198.18.4.0/24",
        "fd00:1::2/128",
        "fd00:2::2/128",
    ];
    Ruleset::new(Config::default())
        .with_local(nets.map(|n| n.parse::<ipnet::IpNet>().expect("valid prefix")))
}

fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(format!("{name}.golden"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if want != got {
        let mut diff = String::new();
        for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            if w != g {
                let _ = writeln!(diff, "line {}:\n  want: {w}\n  got:  {g}", i + 1);
            }
        }
        let (wl, gl) = (want.lines().count(), got.lines().count());
        if wl != gl {
            let _ = writeln!(diff, "want {wl} lines, got {gl}");
        }
        panic!(
            "{} differs from the rendering:\n{diff}\nfull rendering:\n{got}\nrun with UPDATE_GOLDEN=1 if the change is intended",
            path.display()
        );
    }
}

#[test]
fn nft() {
    check("nft", &render_nft(&ruleset()));
}

#[test]
fn nft_local_update() {
    check("nft-local-update", &render_nft_local_update(&ruleset()));
}

#[test]
fn nft_remove() {
    check("nft-remove", &render_nft_remove());
}

#[test]
fn nft_ipv4_only_empty() {
    let r = Ruleset::new(Config {
        ipv6: false,
        ..Config::default()
    });
    check("nft-ipv4-only-empty", &render_nft(&r));
}

#[test]
fn iptables_v4() {
    check(
        "iptables-v4",
        &render_iptables_restore(&ruleset(), Family::V4),
    );
}

#[test]
fn ip6tables() {
    check(
        "ip6tables",
        &render_iptables_restore(&ruleset(), Family::V6),
    );
}

#[test]
fn iptables_v4_without_queue() {
    let mut r = ruleset();
    r.config.verdict_queue = false;
    check(
        "iptables-v4-no-queue",
        &render_iptables_restore(&r, Family::V4),
    );
}

#[test]
fn iptables_remove() {
    // Removing from a listing that holds netward's fresh install plus a foreign chain.
    let listing = "*mangle\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:NETWARD-INPUT - [0:0]\n:NETWARD-FORWARD - [0:0]\n:NETWARD-QUEUE - [0:0]\n\
        -A INPUT -j MARK --set-xmark 0x1/0x1\n\
        -A INPUT -m comment --comment netward -j NETWARD-INPUT\n\
        -A FORWARD -m comment --comment netward -j NETWARD-FORWARD\n\
        -A NETWARD-INPUT -j RETURN\nCOMMIT\n\
        *filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:USER - [0:0]\n:NETWARD-REJECT - [0:0]\n\
        -A INPUT -m comment --comment netward -j NETWARD-REJECT\n\
        -A FORWARD -m comment --comment netward -j NETWARD-REJECT\n\
        -A USER -j ACCEPT\nCOMMIT\n";
    check("iptables-remove", &render_iptables_remove(listing));
}

#[test]
fn routes() {
    let r = ruleset();
    let mut s = String::new();
    for fam in Family::ALL {
        let rt = routing(&r, fam);
        for rule in &rt.rules {
            let _ = writeln!(s, "ip {rule}");
        }
        for route in &rt.routes {
            let _ = writeln!(s, "ip {route}");
        }
    }
    check("routing", &s);
}
