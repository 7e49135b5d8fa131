//! The desired interception state as plain data.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::Config;

/// Everything netward installs, derived from the config and the node's local pod addresses.
///
/// The REJECT rules are always part of it: whether a denied connection is
/// rejected or dropped is the proxy's choice, made per verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Marks, ports and table numbers.
    pub config: Config,
    local_v4: BTreeSet<Ipv4Net>,
    local_v6: BTreeSet<Ipv6Net>,
}

impl Ruleset {
    /// An empty ruleset: rules installed, but no pod is local yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            local_v4: BTreeSet::new(),
            local_v6: BTreeSet::new(),
        }
    }

    /// Builder form of [`Ruleset::insert_local`].
    #[must_use]
    pub fn with_local<I, N>(mut self, nets: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<IpNet>,
    {
        for n in nets {
            self.insert_local(n);
        }
        self
    }

    /// Adds a local pod address or prefix; host bits are cleared.
    pub fn insert_local(&mut self, net: impl Into<IpNet>) {
        match net.into().trunc() {
            IpNet::V4(n) => {
                self.local_v4.insert(n);
            }
            IpNet::V6(n) => {
                self.local_v6.insert(n);
            }
        }
    }

    /// Replaces the local pod addresses and prefixes (pod IPs, the node's pod CIDRs).
    pub fn set_local<I, N>(&mut self, addrs: I)
    where
        I: IntoIterator<Item = N>,
        N: Into<IpNet>,
    {
        self.local_v4.clear();
        self.local_v6.clear();
        for a in addrs {
            self.insert_local(a);
        }
    }

    /// Local IPv4 pods, merged into the fewest prefixes (what gets rendered).
    pub fn local_v4(&self) -> Vec<Ipv4Net> {
        let v: Vec<_> = self.local_v4.iter().copied().collect();
        Ipv4Net::aggregate(&v)
    }

    /// Local IPv6 pods, merged into the fewest prefixes (what gets rendered).
    pub fn local_v6(&self) -> Vec<Ipv6Net> {
        let v: Vec<_> = self.local_v6.iter().copied().collect();
        Ipv6Net::aggregate(&v)
    }

    /// Local pods of one family, as generic prefixes.
    pub fn local(&self, family: crate::Family) -> Vec<IpNet> {
        match family {
            crate::Family::V4 => self.local_v4().into_iter().map(IpNet::V4).collect(),
            crate::Family::V6 => self.local_v6().into_iter().map(IpNet::V6).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_are_normalized_and_merged() {
        let r = Ruleset::default().with_local([
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
        ]);
        let v4: Vec<String> = r.local_v4().iter().map(ToString::to_string).collect();
        assert_eq!(v4, ["198.18.1.2/31"]);
        assert_eq!(r.local_v6().len(), 1);
        let mut r = r;
        r.insert_local("198.18.9.7/24".parse::<IpNet>().expect("valid net"));
        assert!(
            r.local_v4()
                .iter()
                .any(|n| n.to_string() == "198.18.9.0/24")
        );
        r.set_local(Vec::<IpAddr>::new());
        assert!(r.local_v4().is_empty() && r.local_v6().is_empty());
    }
}
