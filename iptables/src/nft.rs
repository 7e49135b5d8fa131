//! The native nftables half: the prerouting chain that diverts TCP to the proxy.
//!
//! It hooks prerouting at `dstnat + 10`, after kube-proxy's DNAT, so the accepted
//! socket's local address is the Service backend, not the ClusterIP.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::Family;
use crate::config::NAME;
use crate::ruleset::Ruleset;

/// Name of the named set holding local IPv4 pods.
pub const SET_V4: &str = "local4";
/// Name of the named set holding local IPv6 pods.
pub const SET_V6: &str = "local6";

/// A full `nft -f` script that atomically replaces `table inet netward`.
///
/// Declaring the table first makes the following `delete` valid when it does not
/// exist yet, so the script is idempotent and never touches another table.
pub fn render_nft(r: &Ruleset) -> String {
    let c = &r.config;
    let m = &c.marks;
    let set_divert = format!(
        "meta mark set meta mark & {:#010x} | {:#010x}",
        !m.mask, m.divert
    );
    let mut s = String::new();
    let _ = writeln!(s, "table inet {NAME} {{}}");
    let _ = writeln!(s, "delete table inet {NAME}");
    let _ = writeln!(s, "table inet {NAME} {{");
    render_set(&mut s, SET_V4, "ipv4_addr", &r.local(Family::V4));
    if c.ipv6 {
        render_set(&mut s, SET_V6, "ipv6_addr", &r.local(Family::V6));
    }
    s.push_str("\tchain prerouting {\n");
    s.push_str("\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n");
    let _ = writeln!(
        s,
        "\t\tmeta mark & {:#010x} == {:#010x} return comment \"bypass: the proxy's own traffic\"",
        m.mask, m.bypass
    );
    let _ = writeln!(
        s,
        "\t\tmeta l4proto tcp socket transparent 1 {set_divert} accept comment \"packets of proxy sockets\""
    );
    // The node's own traffic is not a pod's, even from an address inside the pod CIDR
    // (a bridge's gateway address): only pods are diverted.
    s.push_str("\t\tfib saddr type local return comment \"the node's own traffic\"\n");
    let mut families = vec![("ip", SET_V4)];
    if c.ipv6 {
        families.push(("ip6", SET_V6));
    }
    for (fam, set) in families {
        for (dir, what) in [("saddr", "egress"), ("daddr", "ingress")] {
            let _ = writeln!(
                s,
                "\t\tmeta l4proto tcp ct state new {fam} {dir} @{set} {set_divert} tproxy {fam} to :{} accept comment \"{what}\"",
                c.tcp_port
            );
        }
    }
    s.push_str("\t}\n");
    // The proxy's upstream connections live in their own conntrack zone (see Config).
    // Before conntrack (priority raw): outgoing by the socket's SO_MARK, incoming by the
    // mark of the socket the packet is for.
    let _ = writeln!(
        s,
        "\tchain zone_prerouting {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tmeta l4proto tcp socket mark & {:#010x} == {:#010x} ct zone set {} comment \"replies to the proxy's upstream connections\"\n\t}}",
        m.mask, m.bypass, c.upstream_ct_zone
    );
    let _ = writeln!(
        s,
        "\tchain zone_output {{\n\t\ttype filter hook output priority raw; policy accept;\n\t\tmeta mark & {:#010x} == {:#010x} ct zone set {} comment \"the proxy's upstream connections\"\n\t}}",
        m.mask, m.bypass, c.upstream_ct_zone
    );
    s.push_str("}\n");
    s
}

fn render_set(s: &mut String, name: &str, ty: &str, nets: &[IpNet]) {
    let _ = writeln!(s, "\tset {name} {{");
    let _ = writeln!(s, "\t\ttype {ty}");
    s.push_str("\t\tflags interval\n");
    if !nets.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elements(nets));
    }
    s.push_str("\t}\n");
}

fn elements(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An `nft -f` script that only replaces the elements of the local pod sets,
/// in one transaction; used when pods come and go.
pub fn render_nft_local_update(r: &Ruleset) -> String {
    let mut s = String::new();
    let mut sets = vec![(SET_V4, Family::V4)];
    if r.config.ipv6 {
        sets.push((SET_V6, Family::V6));
    }
    for (set, fam) in sets {
        let _ = writeln!(s, "flush set inet {NAME} {set}");
        let nets = r.local(fam);
        if !nets.is_empty() {
            let _ = writeln!(s, "add element inet {NAME} {set} {{ {} }}", elements(&nets));
        }
    }
    s
}

/// An `nft -f` script that deletes netward's table, and succeeds when it is absent.
pub fn render_nft_remove() -> String {
    format!("table inet {NAME} {{}}\ndelete table inet {NAME}\n")
}
