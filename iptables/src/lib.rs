//! Interception rules as data: rendered to nftables and iptables-restore text,
//! applied atomically in netward's own tables and chains, reconciled and removed.
//!
//! The split between the two rule languages follows what the kernel offers: TCP is
//! diverted by a native nftables chain at `dstnat + 10` (after kube-proxy's DNAT),
//! while the NFQUEUE verdict rules and the REJECT rules are xtables rules, because
//! `xt_NFQUEUE` is available where `nft_queue` may not be. See `README.md`.
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod nft;
pub mod routing;
pub mod ruleset;
pub mod runner;
pub mod xtables;

pub use apply::{Changes, Features, State, apply, installed_state, probe, remove, update_local};
pub use config::{Config, Marks};
pub use nft::{render_nft, render_nft_local_update, render_nft_remove};
pub use routing::{IpRule, LocalRoute, Routing, routing};
pub use ruleset::Ruleset;
pub use runner::{CommandRunner, Output, Runner};
pub use xtables::{render_iptables_remove, render_iptables_restore, render_iptables_update};

/// An IP family: selects `iptables` or `ip6tables`, `ip -4` or `ip -6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The `iptables-restore` binary for this family.
    pub fn restore_cmd(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The `iptables-save` binary for this family.
    pub fn save_cmd(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// The iproute2 family flag.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The all-addresses prefix.
    pub fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}
