//! Transparent (TPROXY) sockets: listeners and upstream connections.
