//! Marks, table numbers, priorities and ports: every number netward's rules use.

use thiserror::Error;

/// Name of netward's nftables table (`table inet netward`) and of the comment on its xtables jumps.
pub const NAME: &str = "netward";
/// Prefix of every xtables chain netward owns; cleanup removes any chain with it.
pub const CHAIN_PREFIX: &str = "NETWARD-";
/// Default policy-routing table holding the `local default dev lo` route for diverted packets.
pub const ROUTE_TABLE: u32 = 4242;
/// Default `ip rule` priority: before `main` (32766), after `local` (0).
pub const RULE_PRIORITY: u32 = 4242;
/// Default NFQUEUE number the proxy reads verdict requests from.
pub const QUEUE_NUM: u16 = 4242;
/// Default conntrack zone of the proxy's upstream connections.
pub const CT_ZONE: u16 = 4242;
/// Default port of the proxy's transparent TCP listener.
pub const TPROXY_PORT: u16 = 15001;

/// Errors in a [`Config`]; each names the field, its value and why it is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// A value is out of range or conflicts with another one.
    #[error("invalid {field} {value}: {reason}")]
    Invalid {
        /// The configuration field.
        field: &'static str,
        /// The refused value, formatted.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Packet marks netward sets and matches; only the bits in `mask` are ever touched,
/// so other users of the mark (kube-proxy, CNI plugins) keep theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// The bits netward owns.
    pub mask: u32,
    /// Set on packets diverted to the proxy; selects the local routing table.
    pub divert: u32,
    /// Set by the proxy (SO_MARK) on its upstream sockets so its own traffic is never diverted or queued.
    pub bypass: u32,
    /// Set by the proxy in a verdict; a later filter rule rejects the packet.
    pub reject: u32,
}

impl Default for Marks {
    fn default() -> Self {
        Self {
            mask: 0x00f0_0000,
            divert: 0x0010_0000,
            bypass: 0x0020_0000,
            reject: 0x0030_0000,
        }
    }
}

impl Marks {
    /// Checks that the mask is non-empty and the three marks are distinct, non-zero and inside it.
    pub fn validate(&self) -> Result<()> {
        if self.mask == 0 {
            return Err(invalid("marks.mask", hex(self.mask), "must not be zero"));
        }
        for (field, mark) in [
            ("marks.divert", self.divert),
            ("marks.bypass", self.bypass),
            ("marks.reject", self.reject),
        ] {
            if mark == 0 {
                return Err(invalid(field, hex(mark), "must not be zero"));
            }
            if mark & !self.mask != 0 {
                return Err(invalid(
                    field,
                    hex(mark),
                    "must only use bits of marks.mask",
                ));
            }
        }
        if self.divert == self.bypass || self.divert == self.reject || self.bypass == self.reject {
            return Err(invalid(
                "marks",
                format!("{self:?}"),
                "divert, bypass and reject must differ",
            ));
        }
        Ok(())
    }

    /// `value/mask` as iptables and `ip rule` spell a masked mark.
    pub fn masked(&self, value: u32) -> String {
        format!("{}/{}", hex(value), hex(self.mask))
    }
}

/// Everything configurable about the interception rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Packet marks.
    pub marks: Marks,
    /// Policy-routing table for diverted packets; everything in it belongs to netward.
    pub route_table: u32,
    /// Priority of netward's `ip rule`.
    pub rule_priority: u32,
    /// NFQUEUE number for verdict requests.
    pub queue_num: u16,
    /// Port of the proxy's transparent TCP listener.
    pub tcp_port: u16,
    /// Install IPv6 rules and routes too.
    pub ipv6: bool,
    /// Install the NFQUEUE verdict rules. Turning this off lets every diverted
    /// connection through unchecked; it exists for tests and debugging only.
    pub verdict_queue: bool,
    /// Conntrack zone of the proxy's own upstream connections. They carry the client's
    /// address and may pick the very port of another intercepted client connection:
    /// their own zone keeps conntrack from merging the two flows.
    pub upstream_ct_zone: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            marks: Marks::default(),
            route_table: ROUTE_TABLE,
            rule_priority: RULE_PRIORITY,
            queue_num: QUEUE_NUM,
            tcp_port: TPROXY_PORT,
            ipv6: true,
            verdict_queue: true,
            upstream_ct_zone: CT_ZONE,
        }
    }
}

impl Config {
    /// Checks every field; call once after reading configuration.
    pub fn validate(&self) -> Result<()> {
        self.marks.validate()?;
        // 0 is unspec, 253..=255 are default/main/local; above 2^31 iproute2 gets confused.
        if self.route_table == 0 || (253..=255).contains(&self.route_table) {
            return Err(invalid(
                "route_table",
                self.route_table.to_string(),
                "must not be 0 or a reserved table (253 default, 254 main, 255 local)",
            ));
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return Err(invalid(
                "rule_priority",
                self.rule_priority.to_string(),
                "must be between 1 and 32765 so it runs after `local` and before `main`",
            ));
        }
        if self.tcp_port == 0 {
            return Err(invalid("tcp_port", "0".into(), "must not be zero"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, value: String, reason: &'static str) -> Error {
    Error::Invalid {
        field,
        value,
        reason,
    }
}

/// Formats a mark the way the kernel tools print it back (`0x100000`).
pub(crate) fn hex(v: u32) -> String {
    format!("{v:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn refuses_bad_values() {
        let mut c = Config::default();
        c.marks.reject = 0x0100_0000;
        let err = c.validate().expect_err("reject outside mask").to_string();
        assert!(err.contains("marks.reject"), "{err}");
        let mut c = Config::default();
        c.marks.bypass = c.marks.divert;
        assert!(c.validate().is_err());
        let bad = [
            Config {
                route_table: 254,
                ..Config::default()
            },
            Config {
                rule_priority: 32766,
                ..Config::default()
            },
            Config {
                tcp_port: 0,
                ..Config::default()
            },
        ];
        let errs: Vec<String> = bad
            .iter()
            .map(|c| c.validate().expect_err("invalid").to_string())
            .collect();
        assert_eq!(
            errs[0],
            "invalid route_table 254: must not be 0 or a reserved table (253 default, 254 main, 255 local)"
        );
        assert!(errs[1].starts_with("invalid rule_priority 32766"));
        assert!(errs[2].starts_with("invalid tcp_port 0"));
    }
}
