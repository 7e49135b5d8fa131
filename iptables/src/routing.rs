//! Policy routing for diverted packets: `fwmark DIVERT/MASK lookup TABLE`, and in
//! that table a `local default dev lo` route, so a diverted packet is delivered to
//! the proxy's socket instead of being forwarded.

use std::fmt;

use serde::Deserialize;

use crate::Family;
use crate::config::hex;
use crate::ruleset::Ruleset;

/// One `ip rule` as netward installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRule {
    /// Address family (`ip -4` / `ip -6`).
    pub family: Family,
    /// Rule priority.
    pub priority: u32,
    /// Mark value to match.
    pub fwmark: u32,
    /// Mark mask to match under.
    pub fwmask: u32,
    /// Table to look up.
    pub table: u32,
}

impl IpRule {
    /// Arguments after `ip -4|-6 rule add|del`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "priority".into(),
            self.priority.to_string(),
            "fwmark".into(),
            format!("{}/{}", hex(self.fwmark), hex(self.fwmask)),
            "lookup".into(),
            self.table.to_string(),
        ]
    }
}

impl fmt::Display for IpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rule {}",
            self.family.ip_flag(),
            self.args().join(" ")
        )
    }
}

/// The `local default dev lo` route netward puts in its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRoute {
    /// Address family.
    pub family: Family,
    /// Routing table.
    pub table: u32,
}

impl LocalRoute {
    /// Arguments after `ip -4|-6 route add|replace`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "local".into(),
            self.family.any().into(),
            "dev".into(),
            "lo".into(),
            "table".into(),
            self.table.to_string(),
        ]
    }
}

impl fmt::Display for LocalRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} route {}",
            self.family.ip_flag(),
            self.args().join(" ")
        )
    }
}

/// The policy-routing state netward wants for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The `ip rule`s.
    pub rules: Vec<IpRule>,
    /// The routes in netward's table.
    pub routes: Vec<LocalRoute>,
}

/// The rules and routes `r` needs for `family`.
pub fn routing(r: &Ruleset, family: Family) -> Routing {
    let c = &r.config;
    Routing {
        rules: vec![IpRule {
            family,
            priority: c.rule_priority,
            fwmark: c.marks.divert,
            fwmask: c.marks.mask,
            table: c.route_table,
        }],
        routes: vec![LocalRoute {
            family,
            table: c.route_table,
        }],
    }
}

/// One entry of `ip -j rule show`.
#[derive(Debug, Deserialize)]
pub(crate) struct RuleEntry {
    pub(crate) priority: u32,
    #[serde(default)]
    pub(crate) table: Option<String>,
    #[serde(default)]
    pub(crate) fwmark: Option<String>,
    #[serde(default)]
    pub(crate) fwmask: Option<String>,
    #[serde(flatten)]
    pub(crate) rest: serde_json::Map<String, serde_json::Value>,
}

impl RuleEntry {
    /// The entry as an [`IpRule`], if it is nothing more than a fwmark lookup.
    pub(crate) fn as_ip_rule(&self, family: Family) -> Option<IpRule> {
        let extra = self.rest.keys().any(|k| k != "src");
        let src_all = self.rest.get("src").and_then(|v| v.as_str()) == Some("all");
        if extra || !src_all {
            return None;
        }
        let num = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        Some(IpRule {
            family,
            priority: self.priority,
            fwmark: num(self.fwmark.as_deref()?)?,
            fwmask: self.fwmask.as_deref().map_or(Some(u32::MAX), num)?,
            table: self.table.as_deref()?.parse().ok()?,
        })
    }

    /// A short human form for state listings.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("priority {}", self.priority);
        for (k, v) in &self.rest {
            s.push_str(&format!(
                " {k} {}",
                v.as_str().map_or(v.to_string(), String::from)
            ));
        }
        if let Some(m) = &self.fwmark {
            s.push_str(&format!(" fwmark {m}"));
            if let Some(mask) = &self.fwmask {
                s.push_str(&format!("/{mask}"));
            }
        }
        if let Some(t) = &self.table {
            s.push_str(&format!(" lookup {t}"));
        }
        s
    }
}

/// One entry of `ip -j route show table N`.
#[derive(Debug, Deserialize)]
pub(crate) struct RouteEntry {
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    pub(crate) dst: String,
    #[serde(default)]
    pub(crate) dev: Option<String>,
}

impl RouteEntry {
    pub(crate) fn is_local_default(&self) -> bool {
        self.kind.as_deref() == Some("local")
            && self.dst == "default"
            && self.dev.as_deref() == Some("lo")
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} {} dev {}",
            self.kind.as_deref().unwrap_or("unicast"),
            self.dst,
            self.dev.as_deref().unwrap_or("-")
        )
    }
}
