//! Interception rules as data: rendered to nftables and iptables-restore text,
//! applied atomically in netward's own tables and chains, reconciled and removed.
